//! Leases as flannel writes them: the subnet key codec, the lease JSON, and validation of
//! everything read back from etcd before it is used.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use weft_backends::{BackendKind, MacAddr, Peer};

use crate::config::NetConfig;

/// Lease values larger than this are rejected unread (a lease is ~150 bytes).
pub const MAX_LEASE_VALUE: usize = 16 * 1024;
/// Longest node name accepted (a DNS name).
pub const MAX_NODE_NAME: usize = 253;

/// The subnet(s) a lease key names: `10.5.52.0-24`, or `10.5.52.0-24&fc00::-64` when
/// dual-stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubnetKey {
    pub v4: Ipv4Network,
    pub v6: Option<Ipv6Network>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("lease key {key:?} is not of the form a.b.c.d-len: {problem}")]
pub struct KeyError {
    pub key: String,
    pub problem: &'static str,
}

impl SubnetKey {
    pub fn v4(net: Ipv4Network) -> Self {
        SubnetKey { v4: net, v6: None }
    }
}

impl fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.v4.ip(), self.v4.prefix())?;
        if let Some(v6) = self.v6 {
            write!(f, "&{}-{}", v6.ip(), v6.prefix())?;
        }
        Ok(())
    }
}

impl FromStr for SubnetKey {
    type Err = KeyError;

    fn from_str(key: &str) -> Result<Self, Self::Err> {
        let err = |problem| KeyError {
            key: key.chars().take(80).collect(),
            problem,
        };
        let (v4part, v6part) = match key.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (key, None),
        };
        let (ip, len) = v4part.split_once('-').ok_or_else(|| err("missing '-'"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| err("bad IPv4 address"))?;
        let len: u8 = parse_len(len, 32).ok_or_else(|| err("bad prefix length"))?;
        let v4 = Ipv4Network::new(ip, len).map_err(|_| err("bad prefix length"))?;
        if v4.network() != ip {
            return Err(err("address is not the subnet's network address"));
        }
        let v6 = match v6part {
            None => None,
            Some(p) => {
                let (ip, len) = p
                    .split_once('-')
                    .ok_or_else(|| err("missing '-' in IPv6 part"))?;
                let ip: Ipv6Addr = ip.parse().map_err(|_| err("bad IPv6 address"))?;
                let len = parse_len(len, 128).ok_or_else(|| err("bad IPv6 prefix length"))?;
                let net = Ipv6Network::new(ip, len).map_err(|_| err("bad IPv6 prefix length"))?;
                if net.network() != ip {
                    return Err(err("IPv6 address is not the subnet's network address"));
                }
                Some(net)
            }
        };
        let parsed = SubnetKey { v4, v6 };
        // Only the canonical spelling is accepted, so one subnet has exactly one key.
        if parsed.to_string() != key {
            return Err(err("not in canonical form"));
        }
        Ok(parsed)
    }
}

fn parse_len(s: &str, max: u8) -> Option<u8> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u8>().ok().filter(|l| *l <= max)
}

/// The lease JSON, field names as flannel's. Unknown fields written by other software are
/// ignored; `NodeName` is weft's addition (flannel ignores it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP", default)]
    pub public_ip: Option<Ipv4Addr>,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ip_v6: Option<Ipv6Addr>,
    #[serde(rename = "BackendType")]
    pub backend_type: String,
    #[serde(rename = "BackendData", default)]
    pub backend_data: Option<serde_json::Value>,
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6_data: Option<serde_json::Value>,
    #[serde(rename = "NodeName", default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// `BackendData` of a vxlan lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanData {
    #[serde(rename = "VNI")]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: MacAddr,
}

impl LeaseAttrs {
    /// The attributes this node publishes.
    pub fn for_node(
        node_name: &str,
        public_ip: Ipv4Addr,
        backend: BackendKind,
        vxlan: Option<VxlanData>,
    ) -> Self {
        LeaseAttrs {
            public_ip: Some(public_ip),
            public_ip_v6: None,
            backend_type: backend.as_str().to_string(),
            backend_data: vxlan.map(|d| serde_json::to_value(d).expect("plain struct")),
            backend_v6_data: None,
            node_name: Some(node_name.to_string()),
        }
    }

    pub fn decode(value: &[u8]) -> Result<Self, LeaseError> {
        if value.len() > MAX_LEASE_VALUE {
            return Err(LeaseError::TooLarge(value.len()));
        }
        serde_json::from_slice(value).map_err(|e| LeaseError::Json(e.to_string()))
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("lease attrs always serialize")
    }

    /// The vxlan backend data, if present and well-formed.
    pub fn vxlan_data(&self) -> Result<VxlanData, LeaseError> {
        let data = self
            .backend_data
            .as_ref()
            .ok_or(LeaseError::MissingField("BackendData"))?;
        serde_json::from_value(data.clone()).map_err(|e| LeaseError::BackendData(e.to_string()))
    }
}

/// Why a lease read from etcd is not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("subnet {subnet} is not a /{subnet_len} inside the network {network}")]
    OutsideNetwork {
        subnet: Ipv4Network,
        network: Ipv4Network,
        subnet_len: u8,
    },
    #[error("value is {0} bytes, more than a lease can be")]
    TooLarge(usize),
    #[error("value is not lease JSON: {0}")]
    Json(String),
    #[error("missing {0}")]
    MissingField(&'static str),
    #[error("PublicIP {0} is not a unicast host address")]
    BadPublicIp(Ipv4Addr),
    #[error("unknown BackendType {0:?}")]
    UnknownBackend(String),
    #[error("BackendData is not vxlan data: {0}")]
    BackendData(String),
    #[error("VNI {theirs} does not match this cluster's VNI {ours}")]
    VniMismatch { theirs: u32, ours: u32 },
    #[error("VtepMAC {0} is not a unicast MAC address")]
    BadMac(MacAddr),
    #[error("NodeName is empty, too long or has control characters")]
    BadNodeName,
    #[error("PublicIP {ip} is inside the cluster network {network}: its VXLAN traffic would be routed into the overlay itself")]
    PublicIpInNetwork { ip: Ipv4Addr, network: Ipv4Network },
    #[error("PublicIP {0} is this node's own address: another lease cannot take it")]
    PublicIpIsOurs(Ipv4Addr),
}

/// The rules a lease must satisfy to be used, derived from the network config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRules {
    pub network: Ipv4Network,
    pub subnet_len: u8,
    pub vni: u32,
    /// This node's public IP, when validating peers' leases: no peer may claim it.
    pub own_public_ip: Option<Ipv4Addr>,
}

impl LeaseRules {
    pub fn from_config(cfg: &NetConfig) -> Self {
        LeaseRules {
            network: cfg.network,
            subnet_len: cfg.subnet_len,
            vni: cfg.backend.vni,
            own_public_ip: None,
        }
    }

    /// The same rules, for peers of the node with `ip`.
    pub fn for_peers_of(mut self, ip: Ipv4Addr) -> Self {
        self.own_public_ip = Some(ip);
        self
    }
}

/// True for an address a peer can be reached at: not unspecified, loopback, multicast,
/// broadcast or in 0.0.0.0/8.
pub fn is_unicast_host(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.octets()[0] == 0
        || ip.octets()[0] >= 240)
}

fn node_name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NODE_NAME && !name.chars().any(char::is_control)
}

/// Validate one lease (its key name under `<prefix>/subnets/` and its value) into a peer.
pub fn validate(rules: &LeaseRules, name: &str, value: &[u8]) -> Result<Peer, LeaseError> {
    let key: SubnetKey = name.parse()?;
    if key.v4.prefix() != rules.subnet_len || !rules.network.contains(key.v4.ip()) {
        return Err(LeaseError::OutsideNetwork {
            subnet: key.v4,
            network: rules.network,
            subnet_len: rules.subnet_len,
        });
    }
    let attrs = LeaseAttrs::decode(value)?;
    let public_ip = attrs
        .public_ip
        .ok_or(LeaseError::MissingField("PublicIP"))?;
    if !is_unicast_host(public_ip) {
        return Err(LeaseError::BadPublicIp(public_ip));
    }
    if rules.network.contains(public_ip) {
        return Err(LeaseError::PublicIpInNetwork {
            ip: public_ip,
            network: rules.network,
        });
    }
    if rules.own_public_ip == Some(public_ip) {
        return Err(LeaseError::PublicIpIsOurs(public_ip));
    }
    if let Some(name) = &attrs.node_name {
        if !node_name_ok(name) {
            return Err(LeaseError::BadNodeName);
        }
    }
    let backend: BackendKind = attrs
        .backend_type
        .parse()
        .map_err(|_| LeaseError::UnknownBackend(attrs.backend_type.chars().take(40).collect()))?;
    let vtep_mac = match backend {
        BackendKind::Vxlan => {
            let data = attrs.vxlan_data()?;
            if data.vni != rules.vni {
                return Err(LeaseError::VniMismatch {
                    theirs: data.vni,
                    ours: rules.vni,
                });
            }
            if !data.vtep_mac.is_unicast() {
                return Err(LeaseError::BadMac(data.vtep_mac));
            }
            Some(data.vtep_mac)
        }
        BackendKind::HostGw => None,
    };
    Ok(Peer {
        subnet: key.v4,
        public_ip,
        subnet_v6: key.v6,
        public_ip_v6: attrs.public_ip_v6,
        backend,
        vtep_mac,
        vtep_mac_v6: None,
        node_name: attrs.node_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> LeaseRules {
        LeaseRules {
            network: "10.5.0.0/16".parse().unwrap(),
            subnet_len: 24,
            vni: 1,
            own_public_ip: None,
        }
    }

    #[test]
    fn key_codec_round_trips() {
        for k in ["10.5.52.0-24", "10.5.52.0-24&fc00::-64", "0.0.0.0-0"] {
            let parsed: SubnetKey = k.parse().unwrap();
            assert_eq!(parsed.to_string(), k);
        }
        let k: SubnetKey = "10.5.52.0-24".parse().unwrap();
        assert_eq!(k.v4.to_string(), "10.5.52.0/24");
    }

    #[test]
    fn key_codec_rejects_non_canonical_and_garbage() {
        for k in [
            "",
            "10.5.52.0",
            "10.5.52.0/24",
            "10.5.52.1-24",
            "10.5.052.0-24",
            "10.5.52.0-024",
            "10.5.52.0-33",
            "10.5.52.0-",
            "10.5.52.0-+4",
            "10.5.52.0-24&",
            "10.5.52.0-24&fc00::1-64",
            "10.5.52.0-24&fc00:0::-64",
            "../../etc-24",
        ] {
            assert!(k.parse::<SubnetKey>().is_err(), "{k:?} accepted");
        }
    }

    #[test]
    fn flannel_lease_json_is_read() {
        let v = br#"{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:f0"},"SomeFutureField":true}"#;
        let p = validate(&rules(), "10.5.7.0-24", v).unwrap();
        assert_eq!(p.public_ip.to_string(), "192.0.2.11");
        assert_eq!(p.vtep_mac.unwrap().to_string(), "aa:bb:cc:dd:ee:f0");
        assert_eq!(p.node_name, None);
        assert_eq!(p.backend, BackendKind::Vxlan);
    }

    #[test]
    fn our_json_has_flannel_shape() {
        let attrs = LeaseAttrs::for_node(
            "node-1",
            "192.0.2.1".parse().unwrap(),
            BackendKind::Vxlan,
            Some(VxlanData {
                vni: 1,
                vtep_mac: "02:00:00:00:00:01".parse().unwrap(),
            }),
        );
        let json: serde_json::Value = serde_json::from_slice(&attrs.encode()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan",
                "BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"},"NodeName":"node-1"})
        );
        assert_eq!(LeaseAttrs::decode(&attrs.encode()).unwrap(), attrs);
    }

    #[test]
    fn host_gw_lease_needs_no_backend_data() {
        let v = br#"{"PublicIP":"192.0.2.11","BackendType":"host-gw","BackendData":null}"#;
        let p = validate(&rules(), "10.5.7.0-24", v).unwrap();
        assert_eq!(p.backend, BackendKind::HostGw);
        assert_eq!(p.vtep_mac, None);
    }

    #[test]
    fn hostile_leases_are_rejected_with_reasons() {
        let good_data =
            r#""BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:f0"}"#;
        let big = format!(
            r#"{{"PublicIP":"192.0.2.1","Pad":"{}",{good_data}}}"#,
            "x".repeat(20_000)
        );
        let cases: Vec<(&str, String, &str)> = vec![
            ("10.5.7.0-24", "not json".into(), "not lease JSON"),
            ("10.5.7.0-24", "".into(), "not lease JSON"),
            ("10.5.7.0-24", "[]".into(), "not lease JSON"),
            ("10.5.7.0-24", big, "more than a lease"),
            ("10.6.7.0-24", format!(r#"{{"PublicIP":"192.0.2.1",{good_data}}}"#), "inside the network"),
            ("10.5.7.0-25", format!(r#"{{"PublicIP":"192.0.2.1",{good_data}}}"#), "inside the network"),
            ("10.5.7.9-24", format!(r#"{{"PublicIP":"192.0.2.1",{good_data}}}"#), "network address"),
            ("10.5.7.0-24", format!(r#"{{{good_data}}}"#), "missing PublicIP"),
            ("10.5.7.0-24", format!(r#"{{"PublicIP":"127.0.0.1",{good_data}}}"#), "not a unicast"),
            ("10.5.7.0-24", format!(r#"{{"PublicIP":"224.0.0.1",{good_data}}}"#), "not a unicast"),
            ("10.5.7.0-24", format!(r#"{{"PublicIP":"0.0.0.0",{good_data}}}"#), "not a unicast"),
            ("10.5.7.0-24", format!(r#"{{"PublicIP":"255.255.255.255",{good_data}}}"#), "not a unicast"),
            ("10.5.7.0-24", format!(r#"{{"PublicIP":"::1",{good_data}}}"#), "not lease JSON"),
            ("10.5.7.0-24", r#"{"PublicIP":"192.0.2.1","BackendType":"udp"}"#.into(), "unknown BackendType"),
            ("10.5.7.0-24", r#"{"PublicIP":"192.0.2.1","BackendType":"vxlan"}"#.into(), "missing BackendData"),
            ("10.5.7.0-24", r#"{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VNI":2,"VtepMAC":"aa:bb:cc:dd:ee:f0"}}"#.into(), "VNI 2"),
            ("10.5.7.0-24", r#"{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}}"#.into(), "not a unicast MAC"),
            ("10.5.7.0-24", r#"{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"zz"}}"#.into(), "not vxlan data"),
            ("10.5.7.0-24", format!(r#"{{"PublicIP":"192.0.2.1","NodeName":"",{good_data}}}"#), "NodeName"),
            ("10.5.7.0-24", format!(r#"{{"PublicIP":"192.0.2.1","NodeName":"a\nb",{good_data}}}"#), "NodeName"),
        ];
        for (key, value, needle) in cases {
            let err = validate(&rules(), key, value.as_bytes())
                .expect_err(&format!("{key} {value:.60} accepted"))
                .to_string();
            assert!(
                err.contains(needle),
                "{key} {value:.60}: {err:?} lacks {needle:?}"
            );
        }
    }
}
