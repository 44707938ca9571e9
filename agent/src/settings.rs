//! Turning parsed flags into validated settings. Pure, so it is unit-tested without a process.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnetwork::IpNetwork;

use crate::cli::{EtcdArgs, WeftdCli, WireguardChoice};
use crate::config::NetConfig;
use crate::host::iface::IfaceRequest;
use crate::lease::{check_public_ip, PublicIpProblem};
use crate::store::EtcdOptions;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("{flag} {value:?}: expected a duration such as {example}")]
    NotADuration {
        flag: &'static str,
        value: String,
        example: &'static str,
    },
    #[error("{flag} {value:?} is too short: it must be {minimum}")]
    TooShort {
        flag: &'static str,
        value: String,
        minimum: &'static str,
    },
    #[error("--node-name: {0}")]
    NodeName(String),
    #[error("--etcd-prefix {0:?} must start with '/'")]
    Prefix(String),
    #[error("--iface-regex {0:?} is not a valid regular expression: {1}")]
    Regex(String, String),
    #[error(transparent)]
    PublicIp(#[from] PublicIpFlagError),
}

/// `--public-ip` or `--public-ipv6` breaks the rule every peer applies to a lease.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{flag} {ip} {problem}; every peer would refuse this node's lease: pass the address the other nodes reach this one at")]
pub struct PublicIpFlagError {
    pub flag: &'static str,
    pub ip: IpAddr,
    pub problem: PublicIpProblem,
}

/// Check the public address flags against the lease rule, with the cluster network of each
/// family when known (`None` before the config is read: the address itself is checked).
fn check_public_ip_flags(
    req: &IfaceRequest,
    network: Option<IpNetwork>,
    ipv6_network: Option<IpNetwork>,
) -> Result<(), PublicIpFlagError> {
    let flags = [
        ("--public-ip", req.public_ip.map(IpAddr::V4), network),
        (
            "--public-ipv6",
            req.public_ip_v6.map(IpAddr::V6),
            ipv6_network,
        ),
    ];
    for (flag, ip, network) in flags {
        if let Some(ip) = ip {
            check_public_ip(ip, network).map_err(|problem| PublicIpFlagError {
                flag,
                ip,
                problem,
            })?;
        }
    }
    Ok(())
}

/// A duration flag's value.
fn parse_duration(
    flag: &'static str,
    value: &str,
    example: &'static str,
) -> Result<Duration, SettingsError> {
    humantime::parse_duration(value).map_err(|_| SettingsError::NotADuration {
        flag,
        value: value.to_string(),
        example,
    })
}

/// Everything weftd needs to run.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub etcd: EtcdOptions,
    pub iface: IfaceRequest,
    pub subnet_file: PathBuf,
    pub net_config_file: Option<PathBuf>,
    pub node_name: String,
    pub ip_masq: bool,
    /// `None` disables the health server.
    pub healthz: Option<SocketAddr>,
    pub lease_ttl: Duration,
    pub wireguard: WireguardOptions,
    /// `None` turns the peer health probes off.
    pub health_probes: Option<crate::mesh::MeshSettings>,
}

/// The wireguard backend's flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireguardOptions {
    pub key_file: PathBuf,
    pub userspace: Option<PathBuf>,
    pub choice: WireguardChoice,
}

/// Minimum lease TTL: etcd refuses shorter ones, and renewals at TTL/2 must stay sane.
const MIN_TTL: Duration = Duration::from_secs(2);
const MIN_TTL_TEXT: &str = "at least 2s";

pub fn etcd_options(a: &EtcdArgs) -> Result<EtcdOptions, SettingsError> {
    if !a.etcd_prefix.starts_with('/') {
        return Err(SettingsError::Prefix(a.etcd_prefix.clone()));
    }
    let timeout = parse_duration("--etcd-request-timeout", &a.etcd_request_timeout, "5s")?;
    if timeout.is_zero() {
        return Err(SettingsError::TooShort {
            flag: "--etcd-request-timeout",
            value: a.etcd_request_timeout.clone(),
            minimum: "more than zero",
        });
    }
    let mut o = EtcdOptions::new(
        a.etcd_endpoints
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect(),
        a.etcd_prefix.clone(),
    );
    o.ca_file = a.etcd_cafile.clone();
    o.cert_file = a.etcd_certfile.clone();
    o.key_file = a.etcd_keyfile.clone();
    o.username = a.etcd_username.clone();
    o.password = a.etcd_password.clone();
    o.request_timeout = timeout;
    Ok(o)
}

impl AgentSettings {
    /// `env_node_name` is `$NODE_NAME`; `hostname` the machine's hostname.
    pub fn from_cli(
        cli: &WeftdCli,
        env_node_name: Option<String>,
        hostname: Option<String>,
    ) -> Result<Self, SettingsError> {
        let ttl = parse_duration("--subnet-lease-ttl", &cli.subnet_lease_ttl, "24h or 90s")?;
        if ttl < MIN_TTL {
            return Err(SettingsError::TooShort {
                flag: "--subnet-lease-ttl",
                value: cli.subnet_lease_ttl.clone(),
                minimum: MIN_TTL_TEXT,
            });
        }
        let node_name = cli
            .node_name
            .clone()
            .or(env_node_name)
            .or(hostname)
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                SettingsError::NodeName("not given, $NODE_NAME unset and no hostname".into())
            })?;
        if node_name.len() > crate::lease::MAX_NODE_NAME || node_name.chars().any(char::is_control)
        {
            return Err(SettingsError::NodeName(format!(
                "{node_name:?} is not a valid node name"
            )));
        }
        for pattern in &cli.iface_regex {
            regex::Regex::new(pattern).map_err(|e| {
                SettingsError::Regex(pattern.clone(), crate::host::iface::regex_problem(&e))
            })?;
        }
        let iface = IfaceRequest {
            ifaces: cli.iface.clone(),
            regexes: cli.iface_regex.clone(),
            can_reach: cli.iface_can_reach,
            public_ip: cli.public_ip,
            public_ip_v6: cli.public_ipv6,
        };
        check_public_ip_flags(&iface, None, None)?;
        let interval =
            parse_duration("--health-probe-interval", &cli.health_probe_interval, "10s")?;
        if interval < Duration::from_millis(200) {
            return Err(SettingsError::TooShort {
                flag: "--health-probe-interval",
                value: cli.health_probe_interval.clone(),
                minimum: "at least 200ms",
            });
        }
        if cli.health_probe_rate == 0 {
            return Err(SettingsError::TooShort {
                flag: "--health-probe-rate",
                value: "0".into(),
                minimum:
                    "at least 1 probe per second (turn the probes off with --health-probe-port 0)",
            });
        }
        let health_probes = (cli.health_probe_port != 0).then_some(crate::mesh::MeshSettings {
            port: cli.health_probe_port,
            interval,
            rate: cli.health_probe_rate,
        });
        Ok(AgentSettings {
            etcd: etcd_options(&cli.etcd)?,
            iface,
            subnet_file: cli.subnet_file.clone(),
            net_config_file: cli.net_config.clone(),
            node_name,
            ip_masq: cli.ip_masq,
            healthz: (cli.healthz_port != 0)
                .then(|| SocketAddr::new(cli.healthz_ip, cli.healthz_port)),
            lease_ttl: ttl,
            wireguard: WireguardOptions {
                key_file: cli.wireguard_key_file.clone(),
                userspace: cli.wireguard_userspace.clone(),
                choice: cli.wireguard_implementation,
            },
            health_probes,
        })
    }
}

impl AgentSettings {
    /// The checks of the flags that need the network config: `--public-ip` and
    /// `--public-ipv6` must lie outside the cluster network of their family.
    pub fn check_with_config(&self, cfg: &NetConfig) -> Result<(), PublicIpFlagError> {
        check_public_ip_flags(
            &self.iface,
            cfg.v4_network().map(IpNetwork::V4),
            cfg.v6_network().map(IpNetwork::V6),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> WeftdCli {
        WeftdCli::try_parse_from(std::iter::once("weftd").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn node_name_precedence() {
        let s = AgentSettings::from_cli(
            &parse(&["--node-name", "a"]),
            Some("b".into()),
            Some("c".into()),
        )
        .unwrap();
        assert_eq!(s.node_name, "a");
        let s = AgentSettings::from_cli(&parse(&[]), Some("b".into()), Some("c".into())).unwrap();
        assert_eq!(s.node_name, "b");
        let s = AgentSettings::from_cli(&parse(&[]), None, Some("c".into())).unwrap();
        assert_eq!(s.node_name, "c");
        assert!(AgentSettings::from_cli(&parse(&[]), None, None).is_err());
    }

    #[test]
    fn ttl_and_timeouts_parse_with_clear_errors() {
        let s = AgentSettings::from_cli(
            &parse(&["--subnet-lease-ttl", "90s"]),
            None,
            Some("h".into()),
        )
        .unwrap();
        assert_eq!(s.lease_ttl, Duration::from_secs(90));
        assert_eq!(s.healthz.unwrap().port(), 8471);
        let e = AgentSettings::from_cli(
            &parse(&["--subnet-lease-ttl", "soon"]),
            None,
            Some("h".into()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--subnet-lease-ttl \"soon\""), "{e}");
        let e = AgentSettings::from_cli(
            &parse(&["--subnet-lease-ttl", "1s"]),
            None,
            Some("h".into()),
        )
        .unwrap_err();
        assert!(e.to_string().contains("at least"), "{e}");
        let e = AgentSettings::from_cli(&parse(&["--etcd-prefix", "x"]), None, Some("h".into()))
            .unwrap_err();
        assert_eq!(e, SettingsError::Prefix("x".into()));
        let s = AgentSettings::from_cli(&parse(&["--healthz-port", "0"]), None, Some("h".into()))
            .unwrap();
        assert!(s.healthz.is_none());
    }

    #[test]
    fn endpoints_are_split_and_trimmed() {
        let s = AgentSettings::from_cli(
            &parse(&["--etcd-endpoints", "http://a:1, http://b:2,"]),
            None,
            Some("h".into()),
        )
        .unwrap();
        assert_eq!(s.etcd.endpoints, vec!["http://a:1", "http://b:2"]);
    }

    #[test]
    fn a_duration_flag_says_what_it_expects() {
        let e = AgentSettings::from_cli(
            &parse(&["--subnet-lease-ttl", "forever"]),
            None,
            Some("h".into()),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--subnet-lease-ttl \"forever\": expected a duration such as 24h or 90s"
        );
        let e = AgentSettings::from_cli(
            &parse(&["--subnet-lease-ttl", "1s"]),
            None,
            Some("h".into()),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--subnet-lease-ttl \"1s\" is too short: it must be at least 2s"
        );
        let e = AgentSettings::from_cli(
            &parse(&["--etcd-request-timeout", "soon"]),
            None,
            Some("h".into()),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--etcd-request-timeout \"soon\": expected a duration such as 5s"
        );
        let e = AgentSettings::from_cli(
            &parse(&["--etcd-request-timeout", "0s"]),
            None,
            Some("h".into()),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--etcd-request-timeout \"0s\" is too short: it must be more than zero"
        );
    }

    #[test]
    fn public_ip_flags_follow_the_lease_rule() {
        let settings =
            |args: &[&str]| AgentSettings::from_cli(&parse(args), None, Some("h".into()));
        for (args, message) in [
            (
                &["--public-ip", "127.0.0.1"][..],
                "--public-ip 127.0.0.1 is not a unicast host address; every peer would refuse \
                 this node's lease: pass the address the other nodes reach this one at",
            ),
            (
                &["--public-ip", "0.0.0.0"],
                "--public-ip 0.0.0.0 is not a unicast host address",
            ),
            (
                &["--public-ip", "224.0.0.5"],
                "--public-ip 224.0.0.5 is not a unicast host address",
            ),
            (
                &["--public-ip", "192.0.2.1", "--public-ipv6", "fe80::1"],
                "--public-ipv6 fe80::1 is not a unicast host address",
            ),
            (
                &["--public-ipv6", "::1"],
                "--public-ipv6 ::1 is not a unicast host address",
            ),
        ] {
            let e = settings(args).unwrap_err();
            assert!(matches!(e, SettingsError::PublicIp(_)), "{args:?}: {e:?}");
            assert!(e.to_string().starts_with(message), "{args:?}: {e}");
        }
        let s = settings(&["--public-ip", "10.244.3.3", "--public-ipv6", "fc00::3"]).unwrap();
        let cfg = |text: &str| NetConfig::parse(text.as_bytes()).unwrap();
        // Outside the network of its family, or that family not enabled: fine.
        s.check_with_config(&cfg(r#"{"Network":"10.5.0.0/16"}"#))
            .unwrap();
        let e = s
            .check_with_config(&cfg(r#"{"Network":"10.244.0.0/16"}"#))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--public-ip 10.244.3.3 is inside the cluster network 10.244.0.0/16: its VXLAN traffic \
             would be routed into the overlay itself; every peer would refuse this node's lease: \
             pass the address the other nodes reach this one at"
        );
        let e = s
            .check_with_config(&cfg(
                r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#,
            ))
            .unwrap_err();
        assert_eq!(e.flag, "--public-ipv6");
    }

    #[test]
    fn a_bad_regex_is_explained_on_one_line() {
        let e = AgentSettings::from_cli(&parse(&["--iface-regex", "("]), None, Some("h".into()))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--iface-regex \"(\" is not a valid regular expression: unclosed group"
        );
    }
}
