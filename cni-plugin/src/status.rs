//! Whether the node agent has handed this node its subnet yet (STATUS, and the first check
//! of ADD).

use std::path::Path;

use weft_backends::subnet_env::{SubnetEnv, SubnetEnvError};

use crate::error::{code, CniError};

/// Read subnet.env, turning "missing" and "broken" into error 50 with a message that says
/// what is wrong and the likely cause.
pub fn read_subnet(path: &Path) -> Result<SubnetEnv, CniError> {
    match SubnetEnv::read(path) {
        Ok(Some(env)) => Ok(env),
        Ok(None) => Err(CniError::new(
            code::NOT_AVAILABLE,
            "weft is not ready: the node agent has not written this node's subnet yet",
            format!("{} does not exist; weftd writes it once it holds a subnet lease (is the weft DaemonSet pod running and ready on this node?)", path.display()),
        )),
        Err(e) => {
            let what = match e {
                SubnetEnvError::Invalid { .. } => "invalid",
                _ => "unreadable",
            };
            Err(CniError::new(
                code::NOT_AVAILABLE,
                format!("weft is not ready: this node's subnet file is {what}"),
                format!("{e}; weftd rewrites it when it holds a lease"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_broken_files_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("subnet.env");
        let e = read_subnet(&p).unwrap_err();
        assert_eq!(e.code, code::NOT_AVAILABLE);
        assert!(
            e.details.contains(&p.display().to_string()) && e.details.contains("weftd"),
            "{e}"
        );
        std::fs::write(&p, "FLANNEL_NETWORK=10.0.0.0/16\n").unwrap();
        let e = read_subnet(&p).unwrap_err();
        assert_eq!(e.code, code::NOT_AVAILABLE);
        assert!(e.details.contains("FLANNEL_SUBNET missing"), "{e}");
        std::fs::write(
            &p,
            "FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=10.0.3.1/24\nFLANNEL_MTU=1450\n",
        )
        .unwrap();
        assert_eq!(
            read_subnet(&p).unwrap().subnet.unwrap().to_string(),
            "10.0.3.0/24"
        );
        // A malformed IPv6 subnet is named, key and value.
        std::fs::write(
            &p,
            "FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=10.0.3.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::zz/64\nFLANNEL_MTU=1450\n",
        )
        .unwrap();
        let e = read_subnet(&p).unwrap_err();
        assert_eq!(e.code, code::NOT_AVAILABLE);
        assert!(e.msg.contains("invalid"), "{e}");
        assert!(
            e.details.contains("FLANNEL_IPV6_SUBNET \"fc00::zz/64\""),
            "{e}"
        );
    }
}
