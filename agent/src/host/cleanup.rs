//! `weftd --cleanup`: remove what weft put on this host, then exit. The lease in etcd is left
//! to expire on its own (another node may take the subnet after its TTL).
//!
//! Like every teardown in weft, it is idempotent ("already gone" is success) and carries on
//! after a failed step, collecting every error.

use tracing::debug;

use weft_backends::dataplane::{DataplaneError, Removed};

use weft_backends::IpFamily;

use crate::firewall::{self, nft_family, Firewall, FirewallError, TABLE};

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Firewall(#[from] FirewallError),
    #[error("removing the data plane: {0}")]
    Dataplane(#[from] DataplaneError),
    #[error("removing the CNI config: {0}")]
    Cni(#[from] crate::host::install_cni::InstallError),
}

/// What [`cleanup_host`] did.
#[derive(Debug, Default)]
pub struct CleanupReport {
    /// Objects removed, named for the operator (`nftables table ip weft`,
    /// `nftables table ip6 weft`).
    pub removed: Vec<String>,
    /// Objects that were not there.
    pub absent: Vec<String>,
    /// Steps that failed; the others still ran.
    pub errors: Vec<CleanupError>,
}

impl CleanupReport {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Remove weft's host state.
///
/// Steps, in order; each records into the report and a failure does not stop the next:
/// 1. the nftables tables `ip weft` and `ip6 weft` (masquerade and forward rules of IPv4
///    and IPv6), each through the firewall `firewall_for` returns for its family (outside
///    tests `|family| NftFirewall::new(None).for_family(family)`);
/// 2. the data plane: weft's routes (route protocol 87) and its VXLAN devices with every
///    neighbour and FDB entry on them (`dataplane` is
///    [`weft_backends::dataplane::remove_weft_state`] outside tests).
pub async fn cleanup_host<F: Firewall>(
    firewall_for: impl FnMut(IpFamily) -> F,
    dataplane: impl FnOnce() -> Result<Removed, DataplaneError>,
) -> CleanupReport {
    let mut report = CleanupReport::default();
    for (family, result) in firewall::cleanup_all_families(firewall_for).await {
        let table = format!("nftables table {} {TABLE}", nft_family(family));
        match result {
            Ok(true) => report.removed.push(table),
            Ok(false) => report.absent.push(table),
            Err(e) => report.errors.push(e.into()),
        }
    }
    match dataplane() {
        Ok(r) => {
            for d in r.devices {
                report.removed.push(format!("VXLAN device {d}"));
            }
            if r.routes > 0 {
                report
                    .removed
                    .push(format!("{} route(s) with protocol 87", r.routes));
            } else {
                report.absent.push("routes with protocol 87".into());
            }
        }
        Err(e) => report.errors.push(e.into()),
    }
    debug!(
        removed = report.removed.len(),
        absent = report.absent.len(),
        errors = report.errors.len(),
        "host cleanup steps done"
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::{render, FakeFirewall, MasqRules};

    fn v4_rules() -> MasqRules {
        MasqRules::v4(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
        )
    }

    fn v6_rules() -> MasqRules {
        MasqRules::v6(
            "fd00:10:244::/56".parse().unwrap(),
            "fd00:10:244:1::/64".parse().unwrap(),
        )
    }

    #[tokio::test]
    async fn removes_both_tables_then_finds_nothing() {
        let fw = FakeFirewall::new();
        fw.clone().apply(&render(&v4_rules())).await.unwrap();
        fw.clone()
            .for_family(IpFamily::V6)
            .apply(&render(&v6_rules()))
            .await
            .unwrap();
        let first = cleanup_host(
            |family| fw.clone().for_family(family),
            || {
                Ok(Removed {
                    devices: vec!["weft.1".into()],
                    routes: 2,
                })
            },
        )
        .await;
        assert!(first.is_ok());
        assert_eq!(
            first.removed,
            vec![
                "nftables table ip weft".to_string(),
                "nftables table ip6 weft".to_string(),
                "VXLAN device weft.1".to_string(),
                "2 route(s) with protocol 87".to_string()
            ]
        );
        assert!(first.absent.is_empty());
        let second = cleanup_host(
            |family| fw.clone().for_family(family),
            || Ok(Removed::default()),
        )
        .await;
        assert!(second.is_ok());
        assert!(second.removed.is_empty());
        assert_eq!(
            second.absent,
            vec![
                "nftables table ip weft".to_string(),
                "nftables table ip6 weft".to_string(),
                "routes with protocol 87".to_string()
            ]
        );
        assert_eq!(fw.table(), None);
        assert_eq!(fw.clone().for_family(IpFamily::V6).table(), None);
    }

    #[tokio::test]
    async fn an_ipv6_only_node_has_only_the_ip6_table_to_remove() {
        let fw = FakeFirewall::new().for_family(IpFamily::V6);
        fw.clone().apply(&render(&v6_rules())).await.unwrap();
        let report = cleanup_host(
            |family| fw.clone().for_family(family),
            || Ok(Removed::default()),
        )
        .await;
        assert!(report.is_ok());
        assert_eq!(report.removed, vec!["nftables table ip6 weft".to_string()]);
        assert_eq!(
            report.absent,
            vec![
                "nftables table ip weft".to_string(),
                "routes with protocol 87".to_string()
            ]
        );
    }
}
