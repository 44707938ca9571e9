//! Leases as flannel writes them: the subnet key codec, the lease JSON, and validation of
//! everything read back from etcd before it is used.

pub mod keeper;
pub mod pick;
pub mod watch;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use weft_backends::backend::{BackendData, BackendDataError, DataRules, VxlanData};
use weft_backends::{BackendKind, Peer};

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

/// The IPv4 part flannel writes into the key of an IPv6-only lease (`0.0.0.0-0&fc00::-64`).
pub const NO_V4: Ipv4Network = match Ipv4Network::new_checked(Ipv4Addr::UNSPECIFIED, 0) {
    Some(n) => n,
    None => panic!("0.0.0.0/0 is a valid network"),
};

impl SubnetKey {
    pub fn v4(net: Ipv4Network) -> Self {
        SubnetKey { v4: net, v6: None }
    }

    /// The key for a node's subnets: IPv4-only, dual-stack, or IPv6-only (flannel's form
    /// with `0.0.0.0-0` in front). `None` when both are missing.
    pub fn new(v4: Option<Ipv4Network>, v6: Option<Ipv6Network>) -> Option<Self> {
        match (v4, v6) {
            (None, None) => None,
            (v4, v6) => Some(SubnetKey {
                v4: v4.unwrap_or(NO_V4),
                v6,
            }),
        }
    }

    /// The IPv4 subnet, unless this is an IPv6-only key.
    pub fn v4_subnet(&self) -> Option<Ipv4Network> {
        (self.v4 != NO_V4 || self.v6.is_none()).then_some(self.v4)
    }

    /// The subnet that identifies the lease: IPv4 unless the key is IPv6-only.
    pub fn primary(&self) -> IpNetwork {
        match (self.v4_subnet(), self.v6) {
            (Some(v4), _) => IpNetwork::V4(v4),
            (None, Some(v6)) => IpNetwork::V6(v6),
            (None, None) => IpNetwork::V4(self.v4),
        }
    }
}

impl SubnetKey {
    /// The subnets in CIDR notation, for operator text: `10.5.7.0/24`,
    /// `10.5.7.0/24,fc00:0:0:7::/64` (dual-stack) or `fc00:0:0:7::/64` (IPv6-only). The
    /// key's own spelling (`10.5.7.0-24`, its `Display`) is for where the etcd key is meant.
    pub fn cidrs(&self) -> Cidrs {
        Cidrs(*self)
    }
}

/// [`SubnetKey::cidrs`].
#[derive(Clone, Copy, Debug)]
pub struct Cidrs(SubnetKey);

impl fmt::Display for Cidrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0.v4_subnet(), self.0.v6) {
            (Some(v4), Some(v6)) => write!(f, "{v4},{v6}"),
            (Some(v4), None) => write!(f, "{v4}"),
            (None, Some(v6)) => write!(f, "{v6}"),
            (None, None) => write!(f, "{}", self.0.v4),
        }
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

/// What a node publishes for one address family: its public address and its backend's data
/// for that family (for vxlan, the VTEP of that family's device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint<A> {
    pub public_ip: A,
    pub data: Option<BackendData>,
}

impl LeaseAttrs {
    /// The attributes this node publishes. On an IPv6-only node the IPv4 half is absent and
    /// `PublicIP` is written as `0.0.0.0`, as flannel does (flannel cannot read a null there).
    pub fn for_node(
        node_name: &str,
        backend: BackendKind,
        v4: Option<Endpoint<Ipv4Addr>>,
        v6: Option<Endpoint<Ipv6Addr>>,
    ) -> Self {
        let data = |d: Option<BackendData>| d.map(|d| d.to_json());
        LeaseAttrs {
            public_ip: Some(v4.map_or(Ipv4Addr::UNSPECIFIED, |e| e.public_ip)),
            public_ip_v6: v6.map(|e| e.public_ip),
            backend_type: backend.as_str().to_string(),
            backend_data: data(v4.and_then(|e| e.data)),
            backend_v6_data: data(v6.and_then(|e| e.data)),
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

    /// The vxlan data of the IPv6 device (`BackendV6Data`), if present and well-formed.
    pub fn vxlan_v6_data(&self) -> Result<VxlanData, LeaseError> {
        let data = self
            .backend_v6_data
            .as_ref()
            .ok_or(LeaseError::MissingField("BackendV6Data"))?;
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
    #[error("{field} {ip} {problem}")]
    PublicIp {
        /// `PublicIP` or `PublicIPv6`.
        field: &'static str,
        ip: IpAddr,
        problem: PublicIpProblem,
    },
    #[error("unknown BackendType {0:?}")]
    UnknownBackend(String),
    #[error("BackendData is not vxlan data: {0}")]
    BackendData(String),
    #[error(transparent)]
    Data(#[from] BackendDataError),
    #[error("NodeName is empty, too long or has control characters")]
    BadNodeName,
    #[error("PublicIP {0} is this node's own address: another lease cannot take it")]
    PublicIpIsOurs(Ipv4Addr),
    #[error("the key has no IPv6 subnet, and this cluster is IPv6-only")]
    MissingV6Subnet,
    #[error("IPv6 subnet {subnet} is not a /{subnet_len} inside the IPv6 network {network}")]
    OutsideV6Network {
        subnet: Ipv6Network,
        network: Ipv6Network,
        subnet_len: u8,
    },
    #[error("PublicIPv6 {0} is this node's own address: another lease cannot take it")]
    PublicIpV6IsOurs(Ipv6Addr),
}

/// The rules a lease must satisfy to be used, derived from the network config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRules {
    /// The IPv4 network and subnet length, when IPv4 is enabled.
    pub v4: Option<(Ipv4Network, u8)>,
    /// The IPv6 network and subnet length, when IPv6 is enabled.
    pub v6: Option<(Ipv6Network, u8)>,
    pub vni: u32,
    /// This node's public IP, when validating peers' leases: no peer may claim it.
    pub own_public_ip: Option<Ipv4Addr>,
    /// This node's public IPv6 address, likewise.
    pub own_public_ip_v6: Option<Ipv6Addr>,
}

impl LeaseRules {
    pub fn from_config(cfg: &NetConfig) -> Self {
        LeaseRules {
            v4: cfg
                .ipv4
                .as_ref()
                .and_then(|p| Some((p.v4_network()?, p.subnet_len))),
            v6: cfg
                .ipv6
                .as_ref()
                .and_then(|p| Some((p.v6_network()?, p.subnet_len))),
            vni: cfg.backend.vni,
            own_public_ip: None,
            own_public_ip_v6: None,
        }
    }

    /// The same rules, for peers of the node with these public addresses.
    pub fn for_peers_of(mut self, ip: Option<Ipv4Addr>, ip6: Option<Ipv6Addr>) -> Self {
        self.own_public_ip = ip;
        self.own_public_ip_v6 = ip6;
        self
    }

    /// The same rules for this node's own lease (which carries its own addresses).
    pub fn for_own_lease(&self) -> Self {
        LeaseRules {
            own_public_ip: None,
            own_public_ip_v6: None,
            ..self.clone()
        }
    }
}

/// Why an address cannot be a node's public IP. The one rule for it: peers apply it to every
/// lease they read, and weftd to `--public-ip` and `--public-ipv6` before it publishes one.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublicIpProblem {
    #[error("is not a unicast host address")]
    NotUnicast,
    #[error("is inside the cluster network {0}: its VXLAN traffic would be routed into the overlay itself")]
    InsideNetwork(IpNetwork),
}

/// Check `ip` as a node's public IP, given the cluster network of its family when known.
pub fn check_public_ip(ip: IpAddr, network: Option<IpNetwork>) -> Result<(), PublicIpProblem> {
    let unicast = match ip {
        IpAddr::V4(a) => is_unicast_host(a),
        IpAddr::V6(a) => is_unicast_host_v6(a),
    };
    if !unicast {
        return Err(PublicIpProblem::NotUnicast);
    }
    match network {
        Some(n) if n.contains(ip) => Err(PublicIpProblem::InsideNetwork(n)),
        _ => Ok(()),
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

/// The IPv6 counterpart: not unspecified, loopback, multicast, link-local (a VXLAN peer
/// must be routable, and a link-local address needs a scope a lease cannot carry) or an
/// IPv4-mapped address.
pub fn is_unicast_host_v6(ip: Ipv6Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || weft_backends::is_link_local(IpAddr::V6(ip))
        || ip.to_ipv4_mapped().is_some())
}

fn node_name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NODE_NAME && !name.chars().any(char::is_control)
}

/// Validate one lease (its key name under `<prefix>/subnets/` and its value) into a peer.
///
/// Only the enabled families are checked and used. On a dual-stack cluster a lease without
/// an IPv6 half (a node not yet moved to dual-stack) is still a peer over IPv4; on an
/// IPv6-only cluster the key's `0.0.0.0-0` part and `PublicIP` are ignored.
pub fn validate(rules: &LeaseRules, name: &str, value: &[u8]) -> Result<Peer, LeaseError> {
    let key: SubnetKey = name.parse()?;
    let subnet_v4 = match rules.v4 {
        None => None,
        Some((network, subnet_len)) => {
            if key.v4.prefix() != subnet_len || !network.contains(key.v4.ip()) {
                return Err(LeaseError::OutsideNetwork {
                    subnet: key.v4,
                    network,
                    subnet_len,
                });
            }
            Some(key.v4)
        }
    };
    let subnet_v6 = match (rules.v6, key.v6) {
        (None, _) => None,
        (Some(_), None) if subnet_v4.is_some() => None,
        (Some(_), None) => return Err(LeaseError::MissingV6Subnet),
        (Some((network, subnet_len)), Some(s)) => {
            if s.prefix() != subnet_len || !network.contains(s.ip()) {
                return Err(LeaseError::OutsideV6Network {
                    subnet: s,
                    network,
                    subnet_len,
                });
            }
            Some(s)
        }
    };
    let attrs = LeaseAttrs::decode(value)?;
    let public_ip = match (rules.v4, subnet_v4) {
        (Some((network, _)), Some(_)) => {
            let ip = attrs
                .public_ip
                .ok_or(LeaseError::MissingField("PublicIP"))?;
            check_public_ip(IpAddr::V4(ip), Some(IpNetwork::V4(network))).map_err(|problem| {
                LeaseError::PublicIp {
                    field: "PublicIP",
                    ip: IpAddr::V4(ip),
                    problem,
                }
            })?;
            if rules.own_public_ip == Some(ip) {
                return Err(LeaseError::PublicIpIsOurs(ip));
            }
            ip
        }
        _ => Ipv4Addr::UNSPECIFIED,
    };
    let public_ip_v6 = match (rules.v6, subnet_v6) {
        (Some((network, _)), Some(_)) => {
            let ip = attrs
                .public_ip_v6
                .ok_or(LeaseError::MissingField("PublicIPv6"))?;
            check_public_ip(IpAddr::V6(ip), Some(IpNetwork::V6(network))).map_err(|problem| {
                LeaseError::PublicIp {
                    field: "PublicIPv6",
                    ip: IpAddr::V6(ip),
                    problem,
                }
            })?;
            if rules.own_public_ip_v6 == Some(ip) {
                return Err(LeaseError::PublicIpV6IsOurs(ip));
            }
            Some(ip)
        }
        _ => None,
    };
    if let Some(name) = &attrs.node_name {
        if !node_name_ok(name) {
            return Err(LeaseError::BadNodeName);
        }
    }
    let backend: BackendKind = attrs
        .backend_type
        .parse()
        .map_err(|_| LeaseError::UnknownBackend(attrs.backend_type.chars().take(40).collect()))?;
    let data_rules = DataRules { vni: rules.vni };
    let data = match subnet_v4 {
        Some(_) => BackendData::decode(
            backend,
            "BackendData",
            attrs.backend_data.as_ref(),
            data_rules,
        )?,
        None => None,
    };
    let data_v6 = match subnet_v6 {
        Some(_) => BackendData::decode(
            backend,
            "BackendV6Data",
            attrs.backend_v6_data.as_ref(),
            data_rules,
        )?,
        None => None,
    };
    Ok(Peer {
        subnet: subnet_v4.unwrap_or(NO_V4),
        public_ip,
        subnet_v6,
        public_ip_v6,
        backend,
        data,
        data_v6,
        node_name: attrs.node_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_backends::backend::vxlan::vtep_mac_in;
    use weft_backends::MacAddr;

    fn vtep(data: Option<BackendData>) -> Option<MacAddr> {
        data.and_then(vtep_mac_in)
    }

    fn rules() -> LeaseRules {
        LeaseRules {
            v4: Some(("10.5.0.0/16".parse().unwrap(), 24)),
            v6: None,
            vni: 1,
            own_public_ip: None,
            own_public_ip_v6: None,
        }
    }

    fn dual() -> LeaseRules {
        LeaseRules {
            v6: Some(("fc00::/48".parse().unwrap(), 64)),
            ..rules()
        }
    }

    fn v6_only() -> LeaseRules {
        LeaseRules { v4: None, ..dual() }
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
    fn operator_text_spells_a_key_as_cidrs() {
        for (key, cidrs) in [
            ("10.5.7.0-24", "10.5.7.0/24"),
            ("10.5.7.0-24&fc00:0:0:7::-64", "10.5.7.0/24,fc00:0:0:7::/64"),
            ("0.0.0.0-0&fc00:0:0:7::-64", "fc00:0:0:7::/64"),
        ] {
            let k: SubnetKey = key.parse().unwrap();
            assert_eq!(k.cidrs().to_string(), cidrs);
        }
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
        assert_eq!(vtep(p.data).unwrap().to_string(), "aa:bb:cc:dd:ee:f0");
        assert_eq!(p.node_name, None);
        assert_eq!(p.backend, BackendKind::Vxlan);
    }

    #[test]
    fn our_json_has_flannel_shape() {
        let attrs = LeaseAttrs::for_node(
            "node-1",
            BackendKind::Vxlan,
            Some(Endpoint {
                public_ip: "192.0.2.1".parse().unwrap(),
                data: Some(BackendData::Vxlan(VxlanData {
                    vni: 1,
                    vtep_mac: "02:00:00:00:00:01".parse().unwrap(),
                })),
            }),
            None,
        );
        let json: serde_json::Value = serde_json::from_slice(&attrs.encode()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan",
                "BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"},"NodeName":"node-1"})
        );
        assert_eq!(LeaseAttrs::decode(&attrs.encode()).unwrap(), attrs);
    }

    const V4DATA: &str = r#""BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:f0"}"#;
    const V6DATA: &str = r#""BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:f6"}"#;

    #[test]
    fn flannel_dual_stack_and_ipv6_only_leases_are_read() {
        let v = format!(
            r#"{{"PublicIP":"192.0.2.11","PublicIPv6":"2001:db8::11","BackendType":"vxlan",{V4DATA},{V6DATA}}}"#
        );
        let p = validate(&dual(), "10.5.52.0-24&fc00:0:0:34::-64", v.as_bytes()).unwrap();
        assert_eq!(p.subnet.to_string(), "10.5.52.0/24");
        assert_eq!(p.subnet_v6.unwrap().to_string(), "fc00:0:0:34::/64");
        assert_eq!(p.public_ip_v6.unwrap().to_string(), "2001:db8::11");
        assert_eq!(vtep(p.data).unwrap().to_string(), "aa:bb:cc:dd:ee:f0");
        assert_eq!(vtep(p.data_v6).unwrap().to_string(), "aa:bb:cc:dd:ee:f6");
        assert_eq!(p.id().to_string(), "10.5.52.0/24");

        // The same lease on an IPv4-only cluster: the IPv6 half is not used.
        let p = validate(&rules(), "10.5.52.0-24&fc00:0:0:34::-64", v.as_bytes()).unwrap();
        assert_eq!(
            (p.subnet_v6, p.public_ip_v6, vtep(p.data_v6)),
            (None, None, None)
        );

        // A node not yet dual-stack stays a peer over IPv4 on a dual-stack cluster.
        let v4only = format!(r#"{{"PublicIP":"192.0.2.12","BackendType":"vxlan",{V4DATA}}}"#);
        let p = validate(&dual(), "10.5.53.0-24", v4only.as_bytes()).unwrap();
        assert_eq!(p.subnet_v6, None);

        // IPv6-only, as flannel writes it: PublicIP "0.0.0.0", no BackendData.
        let v6 = format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::13","BackendType":"vxlan",{V6DATA}}}"#
        );
        let p = validate(&v6_only(), "0.0.0.0-0&fc00:0:0:35::-64", v6.as_bytes()).unwrap();
        assert_eq!(p.id().to_string(), "fc00:0:0:35::/64");
        assert_eq!(vtep(p.data), None);
        assert_eq!(vtep(p.data_v6).unwrap().to_string(), "aa:bb:cc:dd:ee:f6");
    }

    #[test]
    fn our_ipv6_only_json_reads_back_in_flannel_shape() {
        let attrs = LeaseAttrs::for_node(
            "n6",
            BackendKind::Vxlan,
            None,
            Some(Endpoint {
                public_ip: "2001:db8::5".parse().unwrap(),
                data: Some(BackendData::Vxlan(VxlanData {
                    vni: 1,
                    vtep_mac: "02:00:00:00:00:06".parse().unwrap(),
                })),
            }),
        );
        let json: serde_json::Value = serde_json::from_slice(&attrs.encode()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::5","BackendType":"vxlan",
                "BackendData":null,"BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:00:06"},"NodeName":"n6"})
        );
        let key = SubnetKey::new(None, Some("fc00:0:0:7::/64".parse().unwrap())).unwrap();
        assert_eq!(key.to_string(), "0.0.0.0-0&fc00:0:0:7::-64");
        assert_eq!(key.v4_subnet(), None);
        let p = validate(&v6_only(), &key.to_string(), &attrs.encode()).unwrap();
        assert_eq!(p.public_ip_v6.unwrap().to_string(), "2001:db8::5");
    }

    #[test]
    fn hostile_ipv6_leases_are_rejected_with_reasons() {
        let ok6 = |ip: &str| {
            format!(
                r#"{{"PublicIP":"192.0.2.1","PublicIPv6":"{ip}","BackendType":"vxlan",{V4DATA},{V6DATA}}}"#
            )
        };
        let own = LeaseRules {
            own_public_ip_v6: Some("2001:db8::1".parse().unwrap()),
            ..dual()
        };
        let cases: Vec<(LeaseRules, &str, String, &str)> = vec![
            (dual(), "10.5.7.0-24&fc01::-64", ok6("2001:db8::2"), "inside the IPv6 network"),
            (dual(), "10.5.7.0-24&fc00::-80", ok6("2001:db8::2"), "inside the IPv6 network"),
            (v6_only(), "0.0.0.0-0", ok6("2001:db8::2"), "no IPv6 subnet"),
            (dual(), "10.5.7.0-24&fc00::-64", ok6("::1"), "PublicIPv6 ::1 is not a unicast"),
            (dual(), "10.5.7.0-24&fc00::-64", ok6("fe80::1"), "not a unicast"),
            (dual(), "10.5.7.0-24&fc00::-64", ok6("ff02::1"), "not a unicast"),
            (dual(), "10.5.7.0-24&fc00::-64", ok6("::ffff:192.0.2.1"), "not a unicast"),
            (dual(), "10.5.7.0-24&fc00::-64", ok6("fc00:0:0:9::1"), "inside the cluster network"),
            (own, "10.5.7.0-24&fc00::-64", ok6("2001:db8::1"), "this node's own"),
            (dual(), "10.5.7.0-24&fc00::-64", format!(r#"{{"PublicIP":"192.0.2.1","BackendType":"vxlan",{V4DATA},{V6DATA}}}"#), "missing PublicIPv6"),
            (dual(), "10.5.7.0-24&fc00::-64", format!(r#"{{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::2","BackendType":"vxlan",{V4DATA}}}"#), "missing BackendV6Data"),
            (dual(), "10.5.7.0-24&fc00::-64", format!(r#"{{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::2","BackendType":"vxlan",{V4DATA},"BackendV6Data":{{"VNI":9,"VtepMAC":"aa:bb:cc:dd:ee:f6"}}}}"#), "VNI 9"),
            (v6_only(), "0.0.0.0-0&fc00::-64", r#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::2","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}}"#.into(), "not a unicast MAC"),
        ];
        for (rules, key, value, needle) in cases {
            let err = validate(&rules, key, value.as_bytes())
                .expect_err(&format!("{key} {value:.80} accepted"))
                .to_string();
            assert!(
                err.contains(needle),
                "{key} {value:.80}: {err:?} lacks {needle:?}"
            );
        }
    }

    #[test]
    fn host_gw_lease_needs_no_backend_data() {
        let v = br#"{"PublicIP":"192.0.2.11","BackendType":"host-gw","BackendData":null}"#;
        let p = validate(&rules(), "10.5.7.0-24", v).unwrap();
        assert_eq!(p.backend, BackendKind::HostGw);
        assert_eq!(vtep(p.data), None);
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
            ("10.5.7.0-24", format!(r#"{{"PublicIP":"10.5.9.9",{good_data}}}"#), "PublicIP 10.5.9.9 is inside the cluster network 10.5.0.0/16"),
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

    #[test]
    fn the_public_ip_rule() {
        let net4: IpNetwork = "10.5.0.0/16".parse().unwrap();
        let net6: IpNetwork = "fc00::/48".parse().unwrap();
        for (ip, network, expected) in [
            ("192.0.2.1", Some(net4), Ok(())),
            ("192.0.2.1", None, Ok(())),
            ("10.5.3.4", None, Ok(())),
            (
                "10.5.3.4",
                Some(net4),
                Err(PublicIpProblem::InsideNetwork(net4)),
            ),
            ("127.0.0.1", None, Err(PublicIpProblem::NotUnicast)),
            ("0.0.0.0", None, Err(PublicIpProblem::NotUnicast)),
            ("0.1.2.3", None, Err(PublicIpProblem::NotUnicast)),
            ("224.0.0.1", None, Err(PublicIpProblem::NotUnicast)),
            ("255.255.255.255", None, Err(PublicIpProblem::NotUnicast)),
            ("240.0.0.1", None, Err(PublicIpProblem::NotUnicast)),
            ("2001:db8::1", Some(net6), Ok(())),
            (
                "fc00:0:0:7::1",
                Some(net6),
                Err(PublicIpProblem::InsideNetwork(net6)),
            ),
            ("::", None, Err(PublicIpProblem::NotUnicast)),
            ("::1", None, Err(PublicIpProblem::NotUnicast)),
            ("fe80::1", None, Err(PublicIpProblem::NotUnicast)),
            ("ff02::1", None, Err(PublicIpProblem::NotUnicast)),
            ("::ffff:192.0.2.1", None, Err(PublicIpProblem::NotUnicast)),
        ] {
            assert_eq!(
                check_public_ip(ip.parse().unwrap(), network),
                expected,
                "{ip} in {network:?}"
            );
        }
    }
}
