//! Turning parsed flags into validated settings. Pure, so it is unit-tested without a process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{EtcdArgs, WeftdCli};
use crate::iface::IfaceRequest;
use crate::store::EtcdOptions;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("--subnet-lease-ttl {0:?}: {1}")]
    Ttl(String, String),
    #[error("--etcd-request-timeout {0:?}: {1}")]
    Timeout(String, String),
    #[error("--node-name: {0}")]
    NodeName(String),
    #[error("--etcd-prefix {0:?} must start with '/'")]
    Prefix(String),
    #[error("--iface-regex {0:?} is not a valid regular expression: {1}")]
    Regex(String, String),
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
}

/// Minimum lease TTL: etcd refuses shorter ones, and renewals at TTL/2 must stay sane.
const MIN_TTL: Duration = Duration::from_secs(2);

pub fn etcd_options(a: &EtcdArgs) -> Result<EtcdOptions, SettingsError> {
    if !a.etcd_prefix.starts_with('/') {
        return Err(SettingsError::Prefix(a.etcd_prefix.clone()));
    }
    let timeout = humantime::parse_duration(&a.etcd_request_timeout)
        .map_err(|e| SettingsError::Timeout(a.etcd_request_timeout.clone(), e.to_string()))?;
    if timeout.is_zero() {
        return Err(SettingsError::Timeout(
            a.etcd_request_timeout.clone(),
            "must be more than zero".into(),
        ));
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
        let ttl = humantime::parse_duration(&cli.subnet_lease_ttl)
            .map_err(|e| SettingsError::Ttl(cli.subnet_lease_ttl.clone(), e.to_string()))?;
        if ttl < MIN_TTL {
            return Err(SettingsError::Ttl(
                cli.subnet_lease_ttl.clone(),
                format!("must be at least {}s", MIN_TTL.as_secs()),
            ));
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
            regex::Regex::new(pattern)
                .map_err(|e| SettingsError::Regex(pattern.clone(), e.to_string()))?;
        }
        Ok(AgentSettings {
            etcd: etcd_options(&cli.etcd)?,
            iface: IfaceRequest {
                ifaces: cli.iface.clone(),
                regexes: cli.iface_regex.clone(),
                can_reach: cli.iface_can_reach,
                public_ip: cli.public_ip,
                public_ip_v6: cli.public_ipv6,
            },
            subnet_file: cli.subnet_file.clone(),
            net_config_file: cli.net_config.clone(),
            node_name,
            ip_masq: cli.ip_masq,
            healthz: (cli.healthz_port != 0)
                .then(|| SocketAddr::new(cli.healthz_ip, cli.healthz_port)),
            lease_ttl: ttl,
        })
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
}
