//! `subnet.env`, flannel's hand-off file to the CNI plugin, written atomically.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;

#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

/// The contents of subnet.env.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Ipv4Network,
    /// This node's subnet (the file holds the gateway form, `.1/len`).
    pub subnet: Ipv4Network,
    pub mtu: u32,
    pub ip_masq: bool,
}

impl SubnetEnv {
    pub fn render(&self) -> String {
        let gw = Ipv4Addr::from(u32::from(self.subnet.network()) + 1);
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network,
            gw,
            self.subnet.prefix(),
            self.mtu,
            self.ip_masq
        )
    }

    pub fn parse(text: &str, path: &Path) -> Result<SubnetEnv, SubnetEnvError> {
        let bad = |problem: String| SubnetEnvError::Invalid {
            path: path.to_path_buf(),
            problem,
        };
        let (mut network, mut subnet, mut mtu, mut masq) = (None, None, None, None);
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(bad(format!("line {line:?} is not KEY=VALUE")));
            };
            match k {
                "FLANNEL_NETWORK" => {
                    network = Some(
                        v.parse::<Ipv4Network>()
                            .map_err(|e| bad(format!("FLANNEL_NETWORK {v:?}: {e}")))?,
                    )
                }
                "FLANNEL_SUBNET" => {
                    let n = v
                        .parse::<Ipv4Network>()
                        .map_err(|e| bad(format!("FLANNEL_SUBNET {v:?}: {e}")))?;
                    subnet = Some(
                        Ipv4Network::new(n.network(), n.prefix())
                            .map_err(|e| bad(format!("FLANNEL_SUBNET {v:?}: {e}")))?,
                    )
                }
                "FLANNEL_MTU" => {
                    mtu = Some(
                        v.parse::<u32>()
                            .map_err(|e| bad(format!("FLANNEL_MTU {v:?}: {e}")))?,
                    )
                }
                "FLANNEL_IPMASQ" => masq = Some(v == "true"),
                _ => {}
            }
        }
        Ok(SubnetEnv {
            network: network.ok_or_else(|| bad("FLANNEL_NETWORK missing".into()))?,
            subnet: subnet.ok_or_else(|| bad("FLANNEL_SUBNET missing".into()))?,
            mtu: mtu.ok_or_else(|| bad("FLANNEL_MTU missing".into()))?,
            ip_masq: masq.unwrap_or(false),
        })
    }

    /// Read a subnet.env; `Ok(None)` when there is none.
    pub fn read(path: &Path) -> Result<Option<SubnetEnv>, SubnetEnvError> {
        match std::fs::read_to_string(path) {
            Ok(t) => SubnetEnv::parse(&t, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SubnetEnvError::Read {
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }

    /// Write atomically: a temp file in the same directory, fsync, rename. Readers see the
    /// old file or the new one, never a half-written one. Unchanged content is not rewritten.
    pub fn write(&self, path: &Path) -> Result<bool, SubnetEnvError> {
        // Mode 0644 whatever the umask: it holds no secret and tools other than the (root)
        // CNI plugin read it.
        crate::files::write_atomically(path, self.render().as_bytes(), 0o644).map_err(|source| {
            SubnetEnvError::Write {
                path: path.to_path_buf(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SubnetEnv {
        SubnetEnv {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.7.0/24".parse().unwrap(),
            mtu: 1450,
            ip_masq: true,
        }
    }

    #[test]
    fn renders_flannel_format() {
        assert_eq!(
            sample().render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn write_then_read_round_trips_and_skips_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/weft/subnet.env");
        assert_eq!(SubnetEnv::read(&path).unwrap(), None);
        assert!(sample().write(&path).unwrap());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644,
            "a deliberate mode, not the umask's"
        );
        assert!(
            !sample().write(&path).unwrap(),
            "unchanged content is not rewritten"
        );
        assert_eq!(SubnetEnv::read(&path).unwrap(), Some(sample()));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
    }

    #[test]
    fn reads_flannel_written_file() {
        let t = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.9.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\nFLANNEL_IPV6_NETWORK=\n";
        let env = SubnetEnv::parse(t, Path::new("x")).unwrap();
        assert_eq!(env.subnet.to_string(), "10.1.9.0/24");
        assert!(!env.ip_masq);
    }

    #[test]
    fn rejects_broken_files_naming_the_problem() {
        for (t, needle) in [
            (
                "FLANNEL_SUBNET=10.1.9.1/24\nFLANNEL_MTU=1450\n",
                "FLANNEL_NETWORK missing",
            ),
            (
                "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_MTU=1450\n",
                "FLANNEL_SUBNET missing",
            ),
            (
                "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=bogus\nFLANNEL_MTU=1\n",
                "FLANNEL_SUBNET",
            ),
            ("garbage\n", "not KEY=VALUE"),
        ] {
            let e = SubnetEnv::parse(t, Path::new("/run/weft/subnet.env"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(needle) && e.contains("/run/weft/subnet.env"),
                "{e}"
            );
        }
    }
}
