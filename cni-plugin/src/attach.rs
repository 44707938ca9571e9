//! What one attachment looks like, decided without touching anything: names, MACs, the
//! address and routes of the pod end, and the result JSON for each CNI version. The kernel
//! side ([`crate::kernel`]) only carries out an [`Attachment`].

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use serde_json::{json, Value};
use weft_backends::MacAddr;

use crate::error::{code, CniError};

/// The network an attachment lives in: from subnet.env, or an explicit `range`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    /// The host subnet (or range) pods get addresses from.
    pub subnet: Ipv4Network,
    /// The whole cluster network (the route target when the pod has no default route).
    pub cluster: Ipv4Network,
    pub mtu: u32,
}

impl PodNetwork {
    /// The bridge's address, `.1` of the subnet.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }
}

/// Everything one ADD creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub bridge: String,
    /// Used only when weft creates the bridge; an adopted bridge keeps its own.
    pub bridge_mac: MacAddr,
    pub gateway: Ipv4Network,
    pub mtu: u32,
    pub hairpin: bool,
    pub host_veth: String,
    pub host_mac: MacAddr,
    pub netns: PathBuf,
    pub ifname: String,
    pub pod_mac: MacAddr,
    pub address: Ipv4Network,
    /// Destinations routed via the gateway inside the pod.
    pub routes: Vec<Ipv4Network>,
}

/// The attachment's identity as a number: the host veth's name and the IPAM index come from
/// it, so DEL and GC find the host end again without any state, and a retried ADD replaces
/// the leftover of a killed one.
pub(crate) fn attachment_hash(container_id: &str, ifname: &str) -> u64 {
    weft_backends::stable_hash(&[container_id.as_bytes(), ifname.as_bytes()])
}

/// The host end's name: `veth` + 11 hex digits (44 bits), 15 bytes, the kernel's limit.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!(
        "veth{:011x}",
        attachment_hash(container_id, ifname) & ((1 << 44) - 1)
    )
}

/// The pod end's MAC: `0a:58` followed by the IPv4 address, unique within the cluster and
/// the same for the same address, so peers' ARP caches stay right across a pod restart.
pub fn pod_mac(ip: Ipv4Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr([0x0a, 0x58, o[0], o[1], o[2], o[3]])
}

/// The config knobs that shape an attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub bridge: String,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub default_route: bool,
}

impl From<&crate::NetConf> for Options {
    fn from(c: &crate::NetConf) -> Options {
        Options {
            bridge: c.bridge.clone(),
            mtu: c.mtu,
            hairpin: c.hairpin_mode,
            default_route: c.is_default_gateway,
        }
    }
}

/// Plan the attachment of (container, ifname) with address `ip`.
pub fn plan(
    net: &PodNetwork,
    opts: &Options,
    container_id: &str,
    ifname: &str,
    netns: &Path,
    ip: Ipv4Addr,
) -> Attachment {
    let prefix = net.subnet.prefix();
    let gw = net.gateway();
    let bridge = opts.bridge.as_str();
    let routes = if opts.default_route {
        vec![Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("0/0")]
    } else {
        vec![net.cluster]
    };
    Attachment {
        bridge: bridge.to_string(),
        bridge_mac: MacAddr::derive_from(&format!("weft-bridge/{bridge}/{}", net.subnet)),
        gateway: Ipv4Network::new(gw, prefix).expect("prefix from a network"),
        mtu: opts.mtu.unwrap_or(net.mtu),
        hairpin: opts.hairpin,
        host_veth: host_veth_name(container_id, ifname),
        host_mac: MacAddr::derive_from(&format!("weft-veth/{container_id}/{ifname}")),
        netns: netns.to_path_buf(),
        ifname: ifname.to_string(),
        pod_mac: pod_mac(ip),
        address: Ipv4Network::new(ip, prefix).expect("prefix from a network"),
        routes,
    }
}

impl Attachment {
    /// The ADD result for `cni_version`. `bridge_mac` is what the bridge really has (an
    /// adopted bridge keeps its own MAC).
    pub fn result(&self, cni_version: &str, bridge_mac: MacAddr) -> Value {
        let mut ip = json!({
            "address": self.address.to_string(),
            "gateway": self.gateway.ip().to_string(),
            "interface": 2,
        });
        if cni_version.starts_with("0.") {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": cni_version,
            "interfaces": [
                {"name": self.bridge, "mac": bridge_mac.to_string()},
                {"name": self.host_veth, "mac": self.host_mac.to_string()},
                {"name": self.ifname, "mac": self.pod_mac.to_string(),
                 "sandbox": self.netns.display().to_string()},
            ],
            "ips": [ip],
            "routes": self.routes.iter().map(|r| json!({
                "dst": r.to_string(),
                "gw": self.gateway.ip().to_string(),
            })).collect::<Vec<_>>(),
            "dns": {},
        })
    }
}

/// What CHECK compares the kernel against: the parts of a previous result that concern the
/// pod interface named `ifname`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub mac: Option<MacAddr>,
    pub addresses: Vec<Ipv4Network>,
    pub routes: Vec<(Ipv4Network, Option<Ipv4Addr>)>,
}

fn bad_prev(details: String) -> CniError {
    CniError::new(code::INVALID_CONFIG, "invalid prevResult", details)
}

/// Read `prevResult` (any supported version's layout) for the interface `ifname`.
pub fn expected_from_prev(prev: &Value, ifname: &str) -> Result<Expected, CniError> {
    let interfaces = prev
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let index = interfaces
        .iter()
        .position(|i| i.get("name").and_then(Value::as_str) == Some(ifname));
    let mac = match index
        .and_then(|i| interfaces[i].get("mac"))
        .and_then(Value::as_str)
    {
        None => None,
        Some(m) => Some(
            m.parse::<MacAddr>()
                .map_err(|e| bad_prev(format!("interface {ifname}: {e}")))?,
        ),
    };
    let mut addresses = Vec::new();
    for ip in prev
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        // An entry names its interface by index; one without an index belongs to all.
        let on_ours = match ip.get("interface").and_then(Value::as_u64) {
            Some(i) => Some(i as usize) == index,
            None => true,
        };
        let Some(addr) = ip.get("address").and_then(Value::as_str) else {
            return Err(bad_prev("an ips entry has no address".into()));
        };
        if addr.contains(':') {
            continue; // IPv6 is not weft's to check yet
        }
        let net: Ipv4Network = addr
            .parse()
            .map_err(|_| bad_prev(format!("ips address {addr:?} is not an IPv4 CIDR")))?;
        if on_ours {
            addresses.push(net);
        }
    }
    let mut routes = Vec::new();
    for r in prev
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(dst) = r.get("dst").and_then(Value::as_str) else {
            return Err(bad_prev("a routes entry has no dst".into()));
        };
        if dst.contains(':') {
            continue;
        }
        let dst: Ipv4Network = dst
            .parse()
            .map_err(|_| bad_prev(format!("route dst {dst:?} is not an IPv4 CIDR")))?;
        let gw = match r.get("gw").and_then(Value::as_str) {
            None => None,
            Some(g) => Some(
                g.parse::<Ipv4Addr>()
                    .map_err(|_| bad_prev(format!("route gw {g:?} is not an IPv4 address")))?,
            ),
        };
        routes.push((dst, gw));
    }
    if addresses.is_empty() {
        return Err(bad_prev(format!(
            "prevResult has no IPv4 address for interface {ifname}"
        )));
    }
    Ok(Expected {
        mac,
        addresses,
        routes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> PodNetwork {
        PodNetwork {
            subnet: "10.5.7.0/24".parse().unwrap(),
            cluster: "10.5.0.0/16".parse().unwrap(),
            mtu: 1450,
        }
    }

    fn opts(default_route: bool, mtu: Option<u32>) -> Options {
        Options {
            bridge: "cni0".into(),
            mtu,
            hairpin: true,
            default_route,
        }
    }

    fn one(default_route: bool) -> Attachment {
        plan(
            &net(),
            &opts(default_route, None),
            "abc123",
            "eth0",
            Path::new("/run/netns/p"),
            "10.5.7.9".parse().unwrap(),
        )
    }

    #[test]
    fn plan_uses_the_subnet_gateway_and_mtu() {
        let a = one(true);
        assert_eq!(a.gateway.to_string(), "10.5.7.1/24");
        assert_eq!(a.address.to_string(), "10.5.7.9/24");
        assert_eq!(a.mtu, 1450);
        assert_eq!(a.routes, vec!["0.0.0.0/0".parse().unwrap()]);
        assert_eq!(a.pod_mac.to_string(), "0a:58:0a:05:07:09");
        assert!(a.host_mac.is_unicast() && a.host_mac.0[0] & 2 == 2);
        let b = one(false);
        assert_eq!(b.routes, vec!["10.5.0.0/16".parse().unwrap()]);
        let c = plan(
            &net(),
            &opts(true, Some(1400)),
            "abc123",
            "eth0",
            Path::new("/x"),
            "10.5.7.9".parse().unwrap(),
        );
        assert_eq!(c.mtu, 1400);
    }

    #[test]
    fn host_veth_names_are_stable_valid_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(crate::request::is_valid_ifname(&a));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
        // The separator keeps ("ab","ceth0") apart from ("abc","eth0").
        assert_ne!(host_veth_name("ab", "ceth0"), host_veth_name("abc", "eth0"));
        let names: std::collections::BTreeSet<String> = (0..10_000)
            .map(|i| host_veth_name(&format!("container-{i}"), "eth0"))
            .collect();
        assert_eq!(names.len(), 10_000);
    }

    #[test]
    fn results_follow_the_requested_version() {
        let a = one(true);
        let mac: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        let old = a.result("0.3.1", mac);
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["cniVersion"], "0.3.1");
        let new = a.result("1.1.0", mac);
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["ips"][0]["address"], "10.5.7.9/24");
        assert_eq!(new["ips"][0]["gateway"], "10.5.7.1");
        assert_eq!(new["ips"][0]["interface"], 2);
        assert_eq!(new["interfaces"][2]["name"], "eth0");
        assert_eq!(new["interfaces"][2]["sandbox"], "/run/netns/p");
        assert_eq!(new["interfaces"][0]["mac"], "02:00:00:00:00:01");
        assert_eq!(new["routes"][0]["dst"], "0.0.0.0/0");
    }

    #[test]
    fn prev_results_of_every_version_read_back() {
        let a = one(true);
        for v in crate::version::SUPPORTED {
            let r = a.result(v, a.bridge_mac);
            let e = expected_from_prev(&r, "eth0").unwrap();
            assert_eq!(e.addresses, vec![a.address]);
            assert_eq!(e.mac, Some(a.pod_mac));
            assert_eq!(
                e.routes,
                vec![("0.0.0.0/0".parse().unwrap(), Some(a.gateway.ip()))]
            );
        }
    }

    #[test]
    fn broken_prev_results_are_named() {
        for (prev, needle) in [
            (json!({}), "no IPv4 address"),
            (json!({"ips":[{"gateway":"10.0.0.1"}]}), "no address"),
            (json!({"ips":[{"address":"nope"}]}), "\"nope\""),
            (
                json!({"ips":[{"address":"10.0.0.2/24"}],"routes":[{"gw":"10.0.0.1"}]}),
                "no dst",
            ),
            (
                json!({"interfaces":[{"name":"eth0","mac":"zz"}],"ips":[{"address":"10.0.0.2/24","interface":0}]}),
                "eth0",
            ),
        ] {
            let e = expected_from_prev(&prev, "eth0").unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG);
            assert!(e.details.contains(needle), "{needle}: {e}");
        }
    }
}
