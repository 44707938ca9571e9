//! The cluster network configuration (flannel's `net-conf.json`), parsed and validated.
//!
//! The format is flannel's, not ours, so unknown keys are tolerated (and reported) rather than
//! rejected: a cluster moving from flannel keeps its config as it is.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde_json::{Map, Value};
use weft_backends::BackendKind;

use crate::pool::SubnetPool;

/// Default VXLAN network identifier (flannel's).
pub const DEFAULT_VNI: u32 = 1;
/// Default VXLAN UDP port (flannel's, the Linux default).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

/// Why a network config was rejected. Every variant names the offending key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("network config is not valid JSON: {0}")]
    Json(String),
    #[error("network config must be a JSON object")]
    NotAnObject,
    #[error("network config: missing required key {0:?}")]
    Missing(&'static str),
    #[error("network config: key {key:?}: {problem}")]
    Invalid { key: &'static str, problem: String },
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

/// Backend settings from the `Backend` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub kind: BackendKind,
    pub vni: u32,
    pub port: u16,
    pub direct_routing: bool,
    /// An explicit MTU for pod traffic; `None` derives it from the underlay.
    pub mtu: Option<u32>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            kind: BackendKind::Vxlan,
            vni: DEFAULT_VNI,
            port: DEFAULT_VXLAN_PORT,
            direct_routing: false,
            mtu: None,
        }
    }
}

/// A validated network config. At least one of `ipv4` and `ipv6` is present: IPv4-only
/// (flannel's default), dual-stack (`EnableIPv6`), or IPv6-only (`EnableIPv4: false`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// `Network`, `SubnetLen`, `SubnetMin`, `SubnetMax`, when `EnableIPv4` (the default).
    pub ipv4: Option<SubnetPool>,
    /// `IPv6Network`, `IPv6SubnetLen`, `IPv6SubnetMin`, `IPv6SubnetMax`, when `EnableIPv6`.
    pub ipv6: Option<SubnetPool>,
    pub backend: BackendConfig,
    /// Keys present in the JSON that weft does not know (reported, not fatal).
    pub unknown_keys: Vec<String>,
}

const KNOWN_KEYS: &[&str] = &[
    "Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "EnableIPv4",
    "EnableIPv6",
    "IPv6Network",
    "IPv6SubnetLen",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "Backend",
];

impl NetConfig {
    /// Parse and validate the JSON text of a network config.
    pub fn parse(text: &[u8]) -> Result<NetConfig, ConfigError> {
        let value: Value =
            serde_json::from_slice(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        let obj = value.as_object().ok_or(ConfigError::NotAnObject)?;
        Self::from_object(obj)
    }

    fn from_object(obj: &Map<String, Value>) -> Result<NetConfig, ConfigError> {
        let enable_v4 = opt_bool(obj, "EnableIPv4")?.unwrap_or(true);
        let enable_v6 = opt_bool(obj, "EnableIPv6")?.unwrap_or(false);
        if !enable_v4 && !enable_v6 {
            return Err(invalid(
                "EnableIPv4",
                "false with EnableIPv6 false too: at least one address family must be enabled",
            ));
        }
        let ipv4 = if enable_v4 {
            Some(parse_v4_pool(obj)?)
        } else {
            None
        };
        let ipv6 = if enable_v6 {
            Some(parse_v6_pool(obj)?)
        } else {
            None
        };

        let backend = match obj.get("Backend") {
            None | Some(Value::Null) => BackendConfig::default(),
            Some(Value::Object(b)) => parse_backend(b)?,
            Some(other) => {
                return Err(invalid(
                    "Backend",
                    format!("expected an object like {{\"Type\":\"vxlan\"}}, got {other}"),
                ))
            }
        };

        let unknown_keys = obj
            .keys()
            .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();

        Ok(NetConfig {
            ipv4,
            ipv6,
            backend,
            unknown_keys,
        })
    }

    /// The IPv4 cluster network, when IPv4 is enabled.
    pub fn v4_network(&self) -> Option<Ipv4Network> {
        self.ipv4.as_ref().and_then(SubnetPool::v4_network)
    }

    /// The IPv6 cluster network, when IPv6 is enabled.
    pub fn v6_network(&self) -> Option<Ipv6Network> {
        self.ipv6.as_ref().and_then(SubnetPool::v6_network)
    }

    /// Serialize back to flannel-style JSON (used by tests and `netctl config -o json`).
    pub fn to_json(&self) -> Value {
        let mut backend = Map::new();
        backend.insert("Type".into(), Value::from(self.backend.kind.as_str()));
        // Written for every backend: they are what was parsed (a host-gw config may carry
        // them; leases are still checked against the VNI), so the output reads back equal.
        backend.insert("VNI".into(), Value::from(self.backend.vni));
        backend.insert("Port".into(), Value::from(self.backend.port));
        backend.insert(
            "DirectRouting".into(),
            Value::from(self.backend.direct_routing),
        );
        if let Some(mtu) = self.backend.mtu {
            backend.insert("MTU".into(), Value::from(mtu));
        }
        let mut out = Map::new();
        if let Some(p) = &self.ipv4 {
            out.insert("Network".into(), Value::from(p.network.to_string()));
            out.insert("SubnetLen".into(), Value::from(p.subnet_len));
            out.insert("SubnetMin".into(), Value::from(p.min.to_string()));
            out.insert("SubnetMax".into(), Value::from(p.max.to_string()));
        }
        out.insert("EnableIPv4".into(), Value::from(self.ipv4.is_some()));
        out.insert("EnableIPv6".into(), Value::from(self.ipv6.is_some()));
        if let Some(p) = &self.ipv6 {
            out.insert("IPv6Network".into(), Value::from(p.network.to_string()));
            out.insert("IPv6SubnetLen".into(), Value::from(p.subnet_len));
            out.insert("IPv6SubnetMin".into(), Value::from(p.min.to_string()));
            out.insert("IPv6SubnetMax".into(), Value::from(p.max.to_string()));
        }
        out.insert("Backend".into(), Value::Object(backend));
        Value::Object(out)
    }
}

fn parse_v4_pool(obj: &Map<String, Value>) -> Result<SubnetPool, ConfigError> {
    let network = match obj.get("Network") {
        None | Some(Value::Null) => return Err(ConfigError::Missing("Network")),
        Some(v) => parse_v4_net("Network", v)?,
    };
    if network.ip() != network.network() {
        return Err(invalid(
            "Network",
            format!(
                "{network} has host bits set; did you mean {}/{}?",
                network.network(),
                network.prefix()
            ),
        ));
    }
    let subnet_len = match opt_u64(obj, "SubnetLen")? {
        None => {
            if network.prefix() <= 22 {
                24
            } else {
                network.prefix() + 2
            }
        }
        Some(n) => u8::try_from(n).map_err(|_| invalid("SubnetLen", "must be at most 30"))?,
    };
    if subnet_len > 30 {
        return Err(invalid(
            "SubnetLen",
            format!("/{subnet_len} leaves no room for pods; must be at most 30"),
        ));
    }
    if subnet_len <= network.prefix() {
        return Err(invalid(
            "SubnetLen",
            format!(
                "/{subnet_len} must be longer than the Network's /{} so the network holds more than one subnet",
                network.prefix()
            ),
        ));
    }
    let step = subnet_step(subnet_len);
    let first = u32::from(network.network());
    let last_subnet = u32::from(network.broadcast()) - (step - 1);
    let subnet_min = match opt_v4_addr(obj, "SubnetMin")? {
        // flannel skips the first subnet of the network by default.
        None => Ipv4Addr::from(first + step),
        Some(a) => check_subnet_bound("SubnetMin", a, network, subnet_len)?,
    };
    let subnet_max = match opt_v4_addr(obj, "SubnetMax")? {
        None => Ipv4Addr::from(last_subnet),
        Some(a) => check_subnet_bound("SubnetMax", a, network, subnet_len)?,
    };
    if u32::from(subnet_min) > u32::from(subnet_max) {
        return Err(invalid(
            "SubnetMin",
            format!("{subnet_min} is above SubnetMax {subnet_max}"),
        ));
    }
    Ok(SubnetPool {
        network: IpNetwork::V4(network),
        subnet_len,
        min: IpAddr::V4(subnet_min),
        max: IpAddr::V4(subnet_max),
    })
}

/// The longest IPv6 subnet a node may lease: the CNI plugin needs the network address, the
/// gateway and at least one pod address.
pub const MAX_IPV6_SUBNET_LEN: u8 = 126;

fn parse_v6_pool(obj: &Map<String, Value>) -> Result<SubnetPool, ConfigError> {
    let network = match obj.get("IPv6Network") {
        None | Some(Value::Null) => return Err(ConfigError::Missing("IPv6Network")),
        Some(Value::String(s)) if s.contains('/') => s
            .parse::<Ipv6Network>()
            .map_err(|e| invalid("IPv6Network", format!("{s:?} is not an IPv6 CIDR: {e}")))?,
        Some(Value::String(s)) => {
            return Err(invalid(
                "IPv6Network",
                format!("{s:?} has no prefix length (like /48)"),
            ))
        }
        Some(other) => {
            return Err(invalid(
                "IPv6Network",
                format!("expected a CIDR string like \"fc00::/48\", got {other}"),
            ))
        }
    };
    if network.ip() != network.network() {
        return Err(invalid(
            "IPv6Network",
            format!(
                "{network} has host bits set; did you mean {}/{}?",
                network.network(),
                network.prefix()
            ),
        ));
    }
    let subnet_len = match opt_u64(obj, "IPv6SubnetLen")? {
        None => 64u8.max(network.prefix() + 1),
        Some(n) => u8::try_from(n).unwrap_or(u8::MAX),
    };
    if subnet_len > MAX_IPV6_SUBNET_LEN || subnet_len <= network.prefix() {
        return Err(invalid(
            "IPv6SubnetLen",
            format!(
                "/{subnet_len} must be longer than the IPv6Network's /{} and at most /{MAX_IPV6_SUBNET_LEN}",
                network.prefix()
            ),
        ));
    }
    let step = crate::pool::step(128, subnet_len);
    let first = u128::from(network.network());
    let last_subnet = first + (((u128::MAX >> network.prefix()) >> (128 - subnet_len)) * step);
    let bound = |key: &'static str, default: u128| -> Result<Ipv6Addr, ConfigError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(Ipv6Addr::from(default)),
            Some(Value::String(s)) => {
                let a: Ipv6Addr = s
                    .parse()
                    .map_err(|_| invalid(key, format!("{s:?} is not an IPv6 address")))?;
                if !network.contains(a) {
                    return Err(invalid(
                        key,
                        format!("{a} is outside IPv6Network {network}"),
                    ));
                }
                if u128::from(a) % step != 0 {
                    return Err(invalid(
                        key,
                        format!("{a} is not the start of a /{subnet_len} subnet"),
                    ));
                }
                Ok(a)
            }
            Some(other) => Err(invalid(
                key,
                format!("expected an IPv6 address string, got {other}"),
            )),
        }
    };
    // As for IPv4, the first subnet of the network is skipped by default.
    let min = bound("IPv6SubnetMin", first + step)?;
    let max = bound("IPv6SubnetMax", last_subnet)?;
    if u128::from(min) > u128::from(max) {
        return Err(invalid(
            "IPv6SubnetMin",
            format!("{min} is above IPv6SubnetMax {max}"),
        ));
    }
    Ok(SubnetPool {
        network: IpNetwork::V6(network),
        subnet_len,
        min: IpAddr::V6(min),
        max: IpAddr::V6(max),
    })
}

/// Address distance between two consecutive subnets of length `len`.
pub fn subnet_step(len: u8) -> u32 {
    1u32 << (32 - u32::from(len))
}

fn parse_backend(b: &Map<String, Value>) -> Result<BackendConfig, ConfigError> {
    let mut cfg = BackendConfig::default();
    match b.get("Type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) => {
            cfg.kind = t.parse().map_err(|e: weft_backends::UnknownBackend| {
                invalid("Backend.Type", e.to_string())
            })?
        }
        Some(other) => {
            return Err(invalid(
                "Backend.Type",
                format!("expected a string, got {other}"),
            ))
        }
    }
    if let Some(vni) = opt_u64(b, "VNI").map_err(|e| rename(e, "Backend.VNI"))? {
        if vni == 0 || vni > 0x00ff_ffff {
            return Err(invalid(
                "Backend.VNI",
                format!("{vni} is outside 1..=16777215"),
            ));
        }
        cfg.vni = vni as u32;
    }
    if let Some(port) = opt_u64(b, "Port").map_err(|e| rename(e, "Backend.Port"))? {
        match port {
            // flannel treats 0 as "the kernel default", which is 8472 on Linux.
            0 => cfg.port = DEFAULT_VXLAN_PORT,
            1..=65535 => cfg.port = port as u16,
            _ => return Err(invalid("Backend.Port", format!("{port} is not a UDP port"))),
        }
    }
    if let Some(dr) =
        opt_bool(b, "DirectRouting").map_err(|e| rename(e, "Backend.DirectRouting"))?
    {
        cfg.direct_routing = dr;
    }
    if let Some(mtu) = opt_u64(b, "MTU").map_err(|e| rename(e, "Backend.MTU"))? {
        if !(576..=65535).contains(&mtu) {
            return Err(invalid(
                "Backend.MTU",
                format!("{mtu} is outside 576..=65535"),
            ));
        }
        cfg.mtu = Some(mtu as u32);
    }
    Ok(cfg)
}

fn rename(e: ConfigError, key: &'static str) -> ConfigError {
    match e {
        ConfigError::Invalid { problem, .. } => ConfigError::Invalid { key, problem },
        other => other,
    }
}

fn opt_u64(obj: &Map<String, Value>, key: &'static str) -> Result<Option<u64>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(key, format!("expected a non-negative integer, got {n}"))),
        Some(other) => Err(invalid(
            key,
            format!("expected a non-negative integer, got {other}"),
        )),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &'static str) -> Result<Option<bool>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid(key, format!("expected true or false, got {other}"))),
    }
}

fn opt_v4_addr(
    obj: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<Ipv4Addr>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s
            .parse::<Ipv4Addr>()
            .map(Some)
            .map_err(|_| invalid(key, format!("{s:?} is not an IPv4 address"))),
        Some(other) => Err(invalid(
            key,
            format!("expected an IPv4 address string, got {other}"),
        )),
    }
}

fn parse_v4_net(key: &'static str, v: &Value) -> Result<Ipv4Network, ConfigError> {
    match v {
        Value::String(s) => {
            if !s.contains('/') {
                return Err(invalid(
                    key,
                    format!("{s:?} has no prefix length (like /16)"),
                ));
            }
            s.parse::<Ipv4Network>()
                .map_err(|e| invalid(key, format!("{s:?} is not an IPv4 CIDR: {e}")))
        }
        other => Err(invalid(
            key,
            format!("expected a CIDR string like \"10.244.0.0/16\", got {other}"),
        )),
    }
}

fn check_subnet_bound(
    key: &'static str,
    a: Ipv4Addr,
    network: Ipv4Network,
    subnet_len: u8,
) -> Result<Ipv4Addr, ConfigError> {
    if !network.contains(a) {
        return Err(invalid(key, format!("{a} is outside Network {network}")));
    }
    if u32::from(a) % subnet_step(subnet_len) != 0 {
        return Err(invalid(
            key,
            format!("{a} is not the start of a /{subnet_len} subnet"),
        ));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConfig, ConfigError> {
        NetConfig::parse(s.as_bytes())
    }

    #[test]
    fn flannel_defaults() {
        let c = parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        assert!(c.ipv6.is_none());
        let p = c.ipv4.unwrap();
        assert_eq!(p.subnet_len, 24);
        assert_eq!(p.min, "10.244.1.0".parse::<IpAddr>().unwrap());
        assert_eq!(p.max, "10.244.255.0".parse::<IpAddr>().unwrap());
        assert_eq!(p.size(), 255);
        assert_eq!(c.backend, BackendConfig::default());
        assert_eq!(c.backend.kind, BackendKind::Vxlan);
    }

    #[test]
    fn small_network_default_subnet_len() {
        let c = parse(r#"{"Network":"10.1.0.0/24"}"#).unwrap().ipv4.unwrap();
        assert_eq!(c.subnet_len, 26);
        assert_eq!(c.size(), 3);
        let c = parse(r#"{"Network":"10.1.0.0/22"}"#).unwrap().ipv4.unwrap();
        assert_eq!(c.subnet_len, 24);
    }

    #[test]
    fn explicit_values() {
        let c = parse(
            r#"{"Network":"10.5.0.0/16","SubnetLen":26,"SubnetMin":"10.5.0.64","SubnetMax":"10.5.3.192",
               "Backend":{"Type":"host-gw"},"SomethingNew":1}"#,
        )
        .unwrap();
        let p = c.ipv4.unwrap();
        assert_eq!(p.subnet_len, 26);
        assert_eq!(p.size(), 15);
        assert_eq!(p.subnet(0).unwrap().to_string(), "10.5.0.64/26");
        assert_eq!(c.backend.kind, BackendKind::HostGw);
        assert_eq!(c.unknown_keys, vec!["SomethingNew".to_string()]);
    }

    #[test]
    fn vxlan_backend_fields() {
        let c = parse(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":42,"Port":4789,"DirectRouting":true,"MTU":9000}}"#,
        )
        .unwrap();
        assert_eq!(
            c.backend,
            BackendConfig {
                kind: BackendKind::Vxlan,
                vni: 42,
                port: 4789,
                direct_routing: true,
                mtu: Some(9000)
            }
        );
        let c = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Port":0}}"#).unwrap();
        assert_eq!(c.backend.port, 8472);
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("not json", "not valid JSON"),
            ("[1,2]", "must be a JSON object"),
            ("{}", "\"Network\""),
            (r#"{"Network":42}"#, "\"Network\""),
            (r#"{"Network":"10.0.0.0"}"#, "no prefix length"),
            (r#"{"Network":"10.0.0.1/16"}"#, "host bits"),
            (r#"{"Network":"fc00::/64"}"#, "\"Network\""),
            (
                r#"{"Network":"10.0.0.0/16","SubnetLen":16}"#,
                "\"SubnetLen\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#,
                "\"SubnetLen\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetLen":-1}"#,
                "\"SubnetLen\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetLen":"24"}"#,
                "\"SubnetLen\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}"#,
                "\"SubnetMin\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.0.5"}"#,
                "\"SubnetMin\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMax":"nope"}"#,
                "\"SubnetMax\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.3.0"}"#,
                "above SubnetMax",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"udp"}}"#,
                "\"Backend.Type\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":"vxlan"}"#,
                "\"Backend\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"VNI":0}}"#,
                "\"Backend.VNI\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"VNI":16777216}}"#,
                "\"Backend.VNI\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Port":70000}}"#,
                "\"Backend.Port\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"MTU":100}}"#,
                "\"Backend.MTU\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"DirectRouting":"yes"}}"#,
                "\"Backend.DirectRouting\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv4":false}"#,
                "\"EnableIPv4\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true}"#,
                "\"IPv6Network\"",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":"yes","IPv6Network":"fc00::/48"}"#,
                "\"EnableIPv6\"",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::"}"#,
                "no prefix length",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"10.0.0.0/16"}"#,
                "\"IPv6Network\"",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::1/48"}"#,
                "host bits",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":48}"#,
                "\"IPv6SubnetLen\"",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127}"#,
                "\"IPv6SubnetLen\"",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc01::"}"#,
                "\"IPv6SubnetMin\"",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMax":"fc00:0:0:1::5"}"#,
                "\"IPv6SubnetMax\"",
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:9::","IPv6SubnetMax":"fc00:0:0:3::"}"#,
                "above IPv6SubnetMax",
            ),
        ];
        for (input, needle) in cases {
            let err = parse(input).expect_err(input).to_string();
            assert!(
                err.contains(needle),
                "{input}: error {err:?} lacks {needle:?}"
            );
        }
    }

    #[test]
    fn dual_stack_and_ipv6_only() {
        let c = parse(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#)
            .unwrap();
        assert_eq!(c.v4_network().unwrap().to_string(), "10.244.0.0/16");
        let p6 = c.ipv6.unwrap();
        assert_eq!(p6.subnet_len, 64);
        assert_eq!(p6.min.to_string(), "fc00:0:0:1::");
        assert_eq!(p6.max.to_string(), "fc00:0:0:ffff::");
        assert_eq!(p6.size(), 65535);

        let c = parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/56","IPv6SubnetLen":60,
                "IPv6SubnetMin":"fd00:10:0:20::","IPv6SubnetMax":"fd00:10:0:40::","Network":"ignored"}"#,
        )
        .unwrap();
        assert!(c.ipv4.is_none(), "IPv4 off: Network is not read");
        let p6 = c.ipv6.unwrap();
        assert_eq!(p6.size(), 3);
        assert_eq!(p6.subnet(2).unwrap().to_string(), "fd00:10:0:40::/60");

        // A /64 network cannot hold /64 subnets; the default length follows the network.
        let c =
            parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/120"}"#).unwrap();
        assert_eq!(c.ipv6.unwrap().subnet_len, 121);
    }

    #[test]
    fn fits_checks_network_and_length() {
        let c = parse(r#"{"Network":"10.244.0.0/16"}"#)
            .unwrap()
            .ipv4
            .unwrap();
        assert!(
            c.fits("10.244.0.0/24".parse().unwrap()),
            "first subnet still fits"
        );
        assert!(!c.fits("10.245.0.0/24".parse().unwrap()));
        assert!(!c.fits("10.244.0.0/25".parse().unwrap()));
    }

    #[test]
    fn round_trips_through_json() {
        for text in [
            r#"{"Network":"10.5.0.0/16","SubnetLen":25,"Backend":{"Type":"vxlan","VNI":7}}"#,
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":80}"#,
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"host-gw"}}"#,
            // Found by the fuzzer: vxlan options on a host-gw backend were not written back.
            r#"{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw","VNI":7,"DirectRouting":true}}"#,
        ] {
            let c = parse(text).unwrap();
            let again = NetConfig::parse(c.to_json().to_string().as_bytes()).unwrap();
            assert_eq!(c, again, "{text}");
        }
    }
}
