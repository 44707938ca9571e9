//! `subnet.env`, flannel's hand-off file to the CNI plugin, written atomically.
//!
//! It holds one or both address families: IPv4 (`FLANNEL_NETWORK`, `FLANNEL_SUBNET`), IPv6
//! (`FLANNEL_IPV6_NETWORK`, `FLANNEL_IPV6_SUBNET`), or both (dual-stack); then the pod MTU and
//! whether the node masquerades. A subnet is written in its gateway form, the subnet's first
//! address plus one with the subnet's prefix (`10.5.52.1/24`, `fc00:0:0:1::1/64`), exactly as
//! flannel writes it, and read back as the subnet itself (`10.5.52.0/24`).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnetwork::{Ipv4Network, Ipv6Network};

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

/// The longest IPv4 subnet prefix that still holds a gateway and a pod (flannel's limit too).
pub const MAX_SUBNET_PREFIX_V4: u8 = 30;
/// The longest IPv6 subnet prefix that still holds a gateway and a pod.
pub const MAX_SUBNET_PREFIX_V6: u8 = 126;

/// The contents of subnet.env. Each family is present as a pair (network and this node's
/// subnet inside it) or absent as a pair; at least one family is present.
/// [`SubnetEnv::parse`] guarantees that, and [`SubnetEnv::write`] refuses a value that breaks
/// it, so a file weft writes is always one it reads back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The IPv4 cluster network, `FLANNEL_NETWORK`.
    pub network: Option<Ipv4Network>,
    /// This node's IPv4 subnet (the file holds the gateway form, `.1/len`), `FLANNEL_SUBNET`.
    pub subnet: Option<Ipv4Network>,
    /// The IPv6 cluster network, `FLANNEL_IPV6_NETWORK`.
    pub ipv6_network: Option<Ipv6Network>,
    /// This node's IPv6 subnet (the file holds the gateway form, `::1/len`),
    /// `FLANNEL_IPV6_SUBNET`.
    pub ipv6_subnet: Option<Ipv6Network>,
    pub mtu: u32,
    pub ip_masq: bool,
}

/// The gateway form of an IPv4 subnet: its first address plus one, with its prefix.
fn gateway_v4(subnet: Ipv4Network) -> String {
    let gw = Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1));
    format!("{gw}/{}", subnet.prefix())
}

/// The gateway form of an IPv6 subnet: its first address plus one, with its prefix.
fn gateway_v6(subnet: Ipv6Network) -> String {
    let gw = Ipv6Addr::from(u128::from(subnet.network()).wrapping_add(1));
    format!("{gw}/{}", subnet.prefix())
}

impl SubnetEnv {
    /// The file's text: flannel's keys in flannel's order, the keys of a family only when
    /// that family is on.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(n) = self.network {
            out += &format!("FLANNEL_NETWORK={n}\n");
        }
        if let Some(s) = self.subnet {
            out += &format!("FLANNEL_SUBNET={}\n", gateway_v4(s));
        }
        if let Some(n) = self.ipv6_network {
            out += &format!("FLANNEL_IPV6_NETWORK={n}\n");
        }
        if let Some(s) = self.ipv6_subnet {
            out += &format!("FLANNEL_IPV6_SUBNET={}\n", gateway_v6(s));
        }
        out += &format!(
            "FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.mtu, self.ip_masq
        );
        out
    }

    /// Whether the families are whole and consistent; the problem, naming the key, if not.
    pub fn validate(&self) -> Result<(), String> {
        let v4 = match (self.network, self.subnet) {
            (None, None) => false,
            (Some(_), None) => {
                return Err(
                    "FLANNEL_SUBNET missing (FLANNEL_NETWORK is set; an address family needs both)"
                        .into(),
                )
            }
            (None, Some(_)) => {
                return Err(
                    "FLANNEL_NETWORK missing (FLANNEL_SUBNET is set; an address family needs both)"
                        .into(),
                )
            }
            (Some(net), Some(sub)) => {
                if sub.prefix() > MAX_SUBNET_PREFIX_V4 {
                    return Err(format!(
                        "FLANNEL_SUBNET {}: a /{} leaves no room for pods (at most /{MAX_SUBNET_PREFIX_V4})",
                        gateway_v4(sub),
                        sub.prefix()
                    ));
                }
                if sub.prefix() < net.prefix() || !net.contains(sub.network()) {
                    return Err(format!(
                        "FLANNEL_SUBNET {} is not inside FLANNEL_NETWORK {net}",
                        gateway_v4(sub)
                    ));
                }
                true
            }
        };
        let v6 = match (self.ipv6_network, self.ipv6_subnet) {
            (None, None) => false,
            (Some(_), None) => {
                return Err("FLANNEL_IPV6_SUBNET missing (FLANNEL_IPV6_NETWORK is set; an address family needs both)".into())
            }
            (None, Some(_)) => {
                return Err("FLANNEL_IPV6_NETWORK missing (FLANNEL_IPV6_SUBNET is set; an address family needs both)".into())
            }
            (Some(net), Some(sub)) => {
                if sub.prefix() > MAX_SUBNET_PREFIX_V6 {
                    return Err(format!(
                        "FLANNEL_IPV6_SUBNET {}: a /{} leaves no room for pods (at most /{MAX_SUBNET_PREFIX_V6})",
                        gateway_v6(sub),
                        sub.prefix()
                    ));
                }
                if sub.prefix() < net.prefix() || !net.contains(sub.network()) {
                    return Err(format!(
                        "FLANNEL_IPV6_SUBNET {} is not inside FLANNEL_IPV6_NETWORK {net}",
                        gateway_v6(sub)
                    ));
                }
                true
            }
        };
        if !v4 && !v6 {
            return Err("FLANNEL_NETWORK missing: neither FLANNEL_NETWORK/FLANNEL_SUBNET (IPv4) nor FLANNEL_IPV6_NETWORK/FLANNEL_IPV6_SUBNET (IPv6) is set".into());
        }
        Ok(())
    }

    /// Parse the file's text. Comments (`#`) and blank lines are skipped, unknown keys
    /// ignored, and a key with an empty value (`FLANNEL_IPV6_NETWORK=`) counts as absent.
    pub fn parse(text: &str, path: &Path) -> Result<SubnetEnv, SubnetEnvError> {
        let bad = |problem: String| SubnetEnvError::Invalid {
            path: path.to_path_buf(),
            problem,
        };
        let mut env = SubnetEnv {
            network: None,
            subnet: None,
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 0,
            ip_masq: false,
        };
        let mut mtu = None;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(bad(format!("line {line:?} is not KEY=VALUE")));
            };
            let v = v.trim();
            if v.is_empty() {
                match k {
                    "FLANNEL_NETWORK" => env.network = None,
                    "FLANNEL_SUBNET" => env.subnet = None,
                    "FLANNEL_IPV6_NETWORK" => env.ipv6_network = None,
                    "FLANNEL_IPV6_SUBNET" => env.ipv6_subnet = None,
                    "FLANNEL_MTU" => mtu = None,
                    _ => {}
                }
                continue;
            }
            match k {
                "FLANNEL_NETWORK" => env.network = Some(parse_v4(k, v).map_err(bad)?),
                "FLANNEL_SUBNET" => {
                    let n = parse_v4(k, v).map_err(bad)?;
                    env.subnet = Some(
                        Ipv4Network::new(n.network(), n.prefix())
                            .map_err(|e| bad(format!("{k} {v:?}: {e}")))?,
                    )
                }
                "FLANNEL_IPV6_NETWORK" => env.ipv6_network = Some(parse_v6(k, v).map_err(bad)?),
                "FLANNEL_IPV6_SUBNET" => {
                    let n = parse_v6(k, v).map_err(bad)?;
                    env.ipv6_subnet = Some(
                        Ipv6Network::new(n.network(), n.prefix())
                            .map_err(|e| bad(format!("{k} {v:?}: {e}")))?,
                    )
                }
                "FLANNEL_MTU" => {
                    mtu = Some(
                        v.parse::<u32>()
                            .map_err(|e| bad(format!("FLANNEL_MTU {v:?}: {e}")))?,
                    )
                }
                "FLANNEL_IPMASQ" => env.ip_masq = v == "true",
                _ => {}
            }
        }
        env.validate().map_err(bad)?;
        env.mtu = mtu.ok_or_else(|| bad("FLANNEL_MTU missing".into()))?;
        Ok(env)
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
    /// A value that [`SubnetEnv::validate`] rejects is not written at all.
    pub fn write(&self, path: &Path) -> Result<bool, SubnetEnvError> {
        self.validate().map_err(|problem| SubnetEnvError::Invalid {
            path: path.to_path_buf(),
            problem,
        })?;
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

fn parse_v4(key: &str, v: &str) -> Result<Ipv4Network, String> {
    v.parse::<Ipv4Network>().map_err(|e| {
        let hint = if v.contains(':') {
            " (an IPv6 value; IPv6 goes in the FLANNEL_IPV6_* keys)"
        } else {
            ""
        };
        format!("{key} {v:?} is not an IPv4 CIDR: {e}{hint}")
    })
}

fn parse_v6(key: &str, v: &str) -> Result<Ipv6Network, String> {
    v.parse::<Ipv6Network>()
        .map_err(|e| format!("{key} {v:?} is not an IPv6 CIDR: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_only() -> SubnetEnv {
        SubnetEnv {
            network: Some("10.244.0.0/16".parse().unwrap()),
            subnet: Some("10.244.7.0/24".parse().unwrap()),
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 1450,
            ip_masq: true,
        }
    }

    fn dual_stack() -> SubnetEnv {
        SubnetEnv {
            network: Some("10.5.0.0/16".parse().unwrap()),
            subnet: Some("10.5.52.0/24".parse().unwrap()),
            ipv6_network: Some("fc00::/48".parse().unwrap()),
            ipv6_subnet: Some("fc00:0:0:1::/64".parse().unwrap()),
            mtu: 1430,
            ip_masq: false,
        }
    }

    fn v6_only() -> SubnetEnv {
        SubnetEnv {
            network: None,
            subnet: None,
            ..dual_stack()
        }
    }

    #[test]
    fn renders_flannel_format_for_each_form() {
        assert_eq!(
            v4_only().render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(
            dual_stack().render(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\n\
             FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\n\
             FLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(
            v6_only().render(),
            "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"
        );
    }

    #[test]
    fn every_form_round_trips_through_render_and_parse() {
        for env in [v4_only(), dual_stack(), v6_only()] {
            let again = SubnetEnv::parse(&env.render(), Path::new("x")).unwrap();
            assert_eq!(again, env);
            assert_eq!(again.render(), env.render());
        }
    }

    #[test]
    fn write_then_read_round_trips_and_skips_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/weft/subnet.env");
        assert_eq!(SubnetEnv::read(&path).unwrap(), None);
        assert!(v4_only().write(&path).unwrap());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644,
            "a deliberate mode, not the umask's"
        );
        assert!(
            !v4_only().write(&path).unwrap(),
            "unchanged content is not rewritten"
        );
        assert_eq!(SubnetEnv::read(&path).unwrap(), Some(v4_only()));
        assert!(dual_stack().write(&path).unwrap());
        assert_eq!(SubnetEnv::read(&path).unwrap(), Some(dual_stack()));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
    }

    #[test]
    fn an_inconsistent_value_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        let half = SubnetEnv {
            ipv6_subnet: None,
            ..dual_stack()
        };
        let e = half.write(&path).unwrap_err().to_string();
        assert!(e.contains("FLANNEL_IPV6_SUBNET missing"), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn reads_files_with_empty_keys_and_comments() {
        // An empty IPv6 key counts as absent.
        let t = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.9.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\nFLANNEL_IPV6_NETWORK=\n";
        let env = SubnetEnv::parse(t, Path::new("x")).unwrap();
        assert_eq!(env.subnet.unwrap().to_string(), "10.1.9.0/24");
        assert_eq!(env.ipv6_network, None);
        assert!(!env.ip_masq);
        // IPv6-only, with empty IPv4 keys and a comment.
        let t = "# written by flannel\nFLANNEL_NETWORK=\nFLANNEL_SUBNET=\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n";
        let env = SubnetEnv::parse(t, Path::new("x")).unwrap();
        assert_eq!(env, v6_only());
        assert_eq!(env.ipv6_subnet.unwrap().to_string(), "fc00:0:0:1::/64");
    }

    #[test]
    fn rejects_broken_files_naming_the_key() {
        let ok6 = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\n";
        for (t, needle) in [
            (
                "FLANNEL_SUBNET=10.1.9.1/24\nFLANNEL_MTU=1450\n".to_string(),
                "FLANNEL_NETWORK missing",
            ),
            (
                "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_MTU=1450\n".into(),
                "FLANNEL_SUBNET missing",
            ),
            (
                "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=bogus\nFLANNEL_MTU=1\n".into(),
                "FLANNEL_SUBNET \"bogus\"",
            ),
            (
                "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.2.0.1/24\nFLANNEL_MTU=1\n".into(),
                "FLANNEL_SUBNET 10.2.0.1/24 is not inside FLANNEL_NETWORK 10.1.0.0/16",
            ),
            (
                "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.0.0.1/8\nFLANNEL_MTU=1\n".into(),
                "not inside FLANNEL_NETWORK",
            ),
            (
                "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.0.1/31\nFLANNEL_MTU=1\n".into(),
                "leaves no room for pods",
            ),
            (
                "FLANNEL_NETWORK=fc00::/48\nFLANNEL_SUBNET=fc00::1/64\nFLANNEL_MTU=1\n".into(),
                "FLANNEL_NETWORK \"fc00::/48\" is not an IPv4 CIDR",
            ),
            ("FLANNEL_MTU=1450\n".into(), "neither FLANNEL_NETWORK"),
            (
                "FLANNEL_NETWORK=\nFLANNEL_SUBNET=\nFLANNEL_IPV6_NETWORK=\nFLANNEL_MTU=1450\n".into(),
                "neither FLANNEL_NETWORK",
            ),
            (
                "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_MTU=1450\n".into(),
                "FLANNEL_IPV6_SUBNET missing",
            ),
            (
                "FLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1450\n".into(),
                "FLANNEL_IPV6_NETWORK missing",
            ),
            (
                "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1:1/64\nFLANNEL_MTU=1450\n".into(),
                "FLANNEL_IPV6_SUBNET \"fc00:0:0:1:1/64\" is not an IPv6 CIDR",
            ),
            (
                "FLANNEL_IPV6_NETWORK=10.0.0.0/8\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1450\n".into(),
                "FLANNEL_IPV6_NETWORK \"10.0.0.0/8\" is not an IPv6 CIDR",
            ),
            (
                "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fd00::1/64\nFLANNEL_MTU=1450\n".into(),
                "FLANNEL_IPV6_SUBNET fd00::1/64 is not inside FLANNEL_IPV6_NETWORK fc00::/48",
            ),
            (
                "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/127\nFLANNEL_MTU=1450\n".into(),
                "FLANNEL_IPV6_SUBNET fc00::1/127: a /127 leaves no room for pods",
            ),
            (
                "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/129\nFLANNEL_MTU=1450\n".into(),
                "FLANNEL_IPV6_SUBNET",
            ),
            (format!("{ok6}FLANNEL_MTU=\n"), "FLANNEL_MTU missing"),
            (format!("{ok6}FLANNEL_MTU=big\n"), "FLANNEL_MTU \"big\""),
            ("garbage\n".into(), "not KEY=VALUE"),
        ] {
            let e = SubnetEnv::parse(&t, Path::new("/run/weft/subnet.env"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(needle) && e.contains("/run/weft/subnet.env"),
                "{t:?}: {needle:?} not in {e:?}"
            );
        }
    }
}
