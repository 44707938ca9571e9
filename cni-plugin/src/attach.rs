//! What one attachment looks like, decided without touching anything: names, MACs, the
//! addresses and routes of the pod end (one address per address family), and the result JSON
//! for each CNI version. The kernel side ([`crate::kernel`]) only carries out an
//! [`Attachment`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde_json::{json, Value};
use weft_backends::subnet_env::SubnetEnv;
use weft_backends::{IpFamily, MacAddr};

use crate::error::{code, CniError};

/// One address family of the pod network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilyNetwork {
    /// The host subnet (or range) pods get addresses from.
    pub subnet: IpNetwork,
    /// The whole cluster network of this family (the route target when the pod has no
    /// default route).
    pub cluster: IpNetwork,
}

impl FamilyNetwork {
    /// The bridge's address in this family: the subnet's first address + 1, with the
    /// subnet's prefix (`10.5.7.1/24`, `fc00:0:0:7::1/64`).
    pub fn gateway(&self) -> IpNetwork {
        let network = self.subnet.network();
        // Past the family's last address it wraps to the first, as it always has.
        let gw = weft_backends::addr_offset(network, 1)
            .unwrap_or_else(|| IpFamily::of(network).unspecified());
        IpNetwork::new(gw, self.subnet.prefix()).expect("the prefix of a valid network")
    }

    /// The route that sends the pod's traffic of this family to the gateway: the default
    /// route, or only the cluster network.
    fn route_target(&self, default_route: bool) -> IpNetwork {
        match (default_route, self.subnet) {
            (false, _) => self.cluster,
            (true, IpNetwork::V4(_)) => {
                IpNetwork::V4(Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("0.0.0.0/0"))
            }
            (true, IpNetwork::V6(_)) => {
                IpNetwork::V6(Ipv6Network::new(Ipv6Addr::UNSPECIFIED, 0).expect("::/0"))
            }
        }
    }
}

/// The network an attachment lives in: from subnet.env (IPv4, IPv6 or both), or an
/// explicit IPv4 `range`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    pub ipv4: Option<FamilyNetwork>,
    pub ipv6: Option<FamilyNetwork>,
    pub mtu: u32,
}

impl PodNetwork {
    /// The families of a (validated) subnet.env.
    pub fn from_subnet_env(env: &SubnetEnv) -> PodNetwork {
        PodNetwork {
            ipv4: env.network.zip(env.subnet).map(|(n, s)| FamilyNetwork {
                subnet: IpNetwork::V4(s),
                cluster: IpNetwork::V4(n),
            }),
            ipv6: env
                .ipv6_network
                .zip(env.ipv6_subnet)
                .map(|(n, s)| FamilyNetwork {
                    subnet: IpNetwork::V6(s),
                    cluster: IpNetwork::V6(n),
                }),
            mtu: env.mtu,
        }
    }

    /// The families in use, IPv4 first.
    pub fn families(&self) -> impl Iterator<Item = &FamilyNetwork> {
        self.ipv4.iter().chain(self.ipv6.iter())
    }

    /// The ranges IPAM allocates from, one per family, IPv4 first.
    pub fn ranges(&self) -> Vec<IpNetwork> {
        self.families().map(|f| f.subnet).collect()
    }

    /// The family an address belongs to, if that family is in use.
    pub fn family_of(&self, ip: IpAddr) -> Option<&FamilyNetwork> {
        match ip {
            IpAddr::V4(_) => self.ipv4.as_ref(),
            IpAddr::V6(_) => self.ipv6.as_ref(),
        }
    }
}

/// One address of the pod end, with the gateway of its family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodIp {
    /// The address with the subnet's prefix.
    pub address: IpNetwork,
    /// The bridge's address in this family, with the same prefix.
    pub gateway: IpNetwork,
}

/// One route of the pod end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodRoute {
    pub dst: IpNetwork,
    pub gateway: IpAddr,
}

/// Everything one ADD creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub bridge: String,
    /// Used only when weft creates the bridge; an adopted bridge keeps its own.
    pub bridge_mac: MacAddr,
    pub mtu: u32,
    pub hairpin: bool,
    pub host_veth: String,
    pub host_mac: MacAddr,
    pub netns: PathBuf,
    pub ifname: String,
    pub pod_mac: MacAddr,
    /// The pod's addresses, one per family, IPv4 first; each family's gateway goes on the
    /// bridge.
    pub ips: Vec<PodIp>,
    /// Routes via the gateways inside the pod, IPv4 first.
    pub routes: Vec<PodRoute>,
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

/// The pod end's MAC: `0a:58` followed by the IPv4 address (or, without one, the last four
/// bytes of the IPv6 address), unique on the node's bridge and the same for the same address,
/// so neighbours' caches stay right across a pod restart.
pub fn pod_mac(ip: IpAddr) -> MacAddr {
    let o = match ip {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let b = a.octets();
            [b[12], b[13], b[14], b[15]]
        }
    };
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

/// Plan the attachment of (container, ifname) with the addresses `ips` (at most one per
/// family, as IPAM handed them out). An address of a family `net` does not have is left out;
/// callers pass addresses of `net`'s families.
pub fn plan(
    net: &PodNetwork,
    opts: &Options,
    container_id: &str,
    ifname: &str,
    netns: &Path,
    ips: &[IpAddr],
) -> Attachment {
    let mut ips: Vec<IpAddr> = ips.to_vec();
    ips.sort(); // IPv4 first
    let mut pod_ips = Vec::new();
    let mut routes = Vec::new();
    for ip in ips {
        let Some(family) = net.family_of(ip) else {
            continue;
        };
        let gateway = family.gateway();
        pod_ips.push(PodIp {
            address: IpNetwork::new(ip, family.subnet.prefix()).expect("prefix of a network"),
            gateway,
        });
        routes.push(PodRoute {
            dst: family.route_target(opts.default_route),
            gateway: gateway.ip(),
        });
    }
    let bridge = opts.bridge.as_str();
    // Keyed by the first family's subnet (the IPv4 one when there is one, as before IPv6).
    let keyed_by = net
        .families()
        .next()
        .map(|f| f.subnet.to_string())
        .unwrap_or_default();
    Attachment {
        bridge: bridge.to_string(),
        bridge_mac: MacAddr::derive_from(&format!("weft-bridge/{bridge}/{keyed_by}")),
        mtu: opts.mtu.unwrap_or(net.mtu),
        hairpin: opts.hairpin,
        host_veth: host_veth_name(container_id, ifname),
        host_mac: MacAddr::derive_from(&format!("weft-veth/{container_id}/{ifname}")),
        netns: netns.to_path_buf(),
        ifname: ifname.to_string(),
        pod_mac: pod_ips
            .first()
            .map(|p| pod_mac(p.address.ip()))
            .unwrap_or(MacAddr([0x0a, 0x58, 0, 0, 0, 0])),
        ips: pod_ips,
        routes,
    }
}

/// The index of the pod interface in a result's `interfaces` (bridge, host veth, pod).
const POD_INTERFACE: u64 = 2;

impl Attachment {
    pub fn has_ipv4(&self) -> bool {
        self.ips.iter().any(|i| i.address.is_ipv4())
    }

    pub fn has_ipv6(&self) -> bool {
        self.ips.iter().any(|i| i.address.is_ipv6())
    }

    /// The ADD result for `cni_version`. `bridge_mac` is what the bridge really has (an
    /// adopted bridge keeps its own MAC).
    pub fn result(&self, cni_version: &str, bridge_mac: MacAddr) -> Value {
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|p| {
                let mut ip = json!({
                    "address": p.address.to_string(),
                    "gateway": p.gateway.ip().to_string(),
                    "interface": POD_INTERFACE,
                });
                if cni_version.starts_with("0.") {
                    ip["version"] = json!(if p.address.is_ipv4() { "4" } else { "6" });
                }
                ip
            })
            .collect();
        json!({
            "cniVersion": cni_version,
            "interfaces": [
                {"name": self.bridge, "mac": bridge_mac.to_string()},
                {"name": self.host_veth, "mac": self.host_mac.to_string()},
                {"name": self.ifname, "mac": self.pod_mac.to_string(),
                 "sandbox": self.netns.display().to_string()},
            ],
            "ips": ips,
            "routes": self.routes.iter().map(|r| json!({
                "dst": r.dst.to_string(),
                "gw": r.gateway.to_string(),
            })).collect::<Vec<_>>(),
            "dns": {},
        })
    }
}

/// What CHECK compares the kernel against: the parts of a previous result that concern the
/// pod interface named `ifname`, both families.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub mac: Option<MacAddr>,
    pub addresses: Vec<IpNetwork>,
    pub routes: Vec<(IpNetwork, Option<IpAddr>)>,
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
        let net: IpNetwork = addr
            .parse()
            .map_err(|_| bad_prev(format!("ips address {addr:?} is not an IPv4 or IPv6 CIDR")))?;
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
        let dst: IpNetwork = dst
            .parse()
            .map_err(|_| bad_prev(format!("route dst {dst:?} is not an IPv4 or IPv6 CIDR")))?;
        let gw = match r.get("gw").and_then(Value::as_str) {
            None => None,
            Some(g) => {
                let gw = g
                    .parse::<IpAddr>()
                    .map_err(|_| bad_prev(format!("route gw {g:?} is not an IP address")))?;
                if gw.is_ipv4() != dst.is_ipv4() {
                    return Err(bad_prev(format!(
                        "route {dst} has a gw {gw} of the other address family"
                    )));
                }
                Some(gw)
            }
        };
        routes.push((dst, gw));
    }
    if addresses.is_empty() {
        return Err(bad_prev(format!(
            "prevResult has no address for interface {ifname}"
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

    /// Golden values: the host end of a pod's veth is found again by name on DEL, CHECK and
    /// GC, by every plugin version. A new version that named them differently would leave the
    /// pods attached by the old one unknown (and their veths leaked) after an upgrade.
    #[test]
    fn host_veth_names_never_change() {
        let long_id = "0123456789abcdef".repeat(4);
        for (container_id, ifname, want) in [
            ("abc", "eth0", "veth633c93b8d01"),
            (long_id.as_str(), "eth0", "veth5fb7eb4d37b"),
            ("c1", "net1", "veth314cd78b90d"),
            ("podman-7f", "eth1", "veth5dbaa7b4d36"),
        ] {
            assert_eq!(
                host_veth_name(container_id, ifname),
                want,
                "container {container_id}, interface {ifname}"
            );
        }
    }

    fn fam(subnet: &str, cluster: &str) -> FamilyNetwork {
        FamilyNetwork {
            subnet: subnet.parse().unwrap(),
            cluster: cluster.parse().unwrap(),
        }
    }

    fn net() -> PodNetwork {
        PodNetwork {
            ipv4: Some(fam("10.5.7.0/24", "10.5.0.0/16")),
            ipv6: None,
            mtu: 1450,
        }
    }

    fn dual() -> PodNetwork {
        PodNetwork {
            ipv6: Some(fam("fc00:0:0:7::/64", "fc00::/48")),
            ..net()
        }
    }

    fn v6_only() -> PodNetwork {
        PodNetwork {
            ipv4: None,
            ..dual()
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

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn one(default_route: bool) -> Attachment {
        plan(
            &net(),
            &opts(default_route, None),
            "abc123",
            "eth0",
            Path::new("/run/netns/p"),
            &ips(&["10.5.7.9"]),
        )
    }

    fn both(default_route: bool) -> Attachment {
        plan(
            &dual(),
            &opts(default_route, None),
            "abc123",
            "eth0",
            Path::new("/run/netns/p"),
            // In any order: the plan puts IPv4 first.
            &ips(&["fc00:0:0:7::9", "10.5.7.9"]),
        )
    }

    fn route(dst: &str, gw: &str) -> PodRoute {
        PodRoute {
            dst: dst.parse().unwrap(),
            gateway: gw.parse().unwrap(),
        }
    }

    #[test]
    fn pod_network_follows_subnet_env() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.7.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:7::1/64\nFLANNEL_MTU=1450\n",
            Path::new("x"),
        )
        .unwrap();
        let n = PodNetwork::from_subnet_env(&env);
        assert_eq!(n, dual());
        assert_eq!(
            n.ranges(),
            vec![
                "10.5.7.0/24".parse::<IpNetwork>().unwrap(),
                "fc00:0:0:7::/64".parse().unwrap()
            ]
        );
        assert_eq!(n.ipv6.unwrap().gateway().to_string(), "fc00:0:0:7::1/64");
        let v6 = SubnetEnv {
            network: None,
            subnet: None,
            ..env
        };
        assert_eq!(PodNetwork::from_subnet_env(&v6), v6_only());
    }

    #[test]
    fn plan_uses_the_subnet_gateway_and_mtu() {
        let a = one(true);
        assert_eq!(
            a.ips,
            vec![PodIp {
                address: "10.5.7.9/24".parse().unwrap(),
                gateway: "10.5.7.1/24".parse().unwrap(),
            }]
        );
        assert_eq!(a.mtu, 1450);
        assert_eq!(a.routes, vec![route("0.0.0.0/0", "10.5.7.1")]);
        assert_eq!(a.pod_mac.to_string(), "0a:58:0a:05:07:09");
        assert!(a.host_mac.is_unicast() && a.host_mac.0[0] & 2 == 2);
        assert!(a.has_ipv4() && !a.has_ipv6());
        let b = one(false);
        assert_eq!(b.routes, vec![route("10.5.0.0/16", "10.5.7.1")]);
        let c = plan(
            &net(),
            &opts(true, Some(1400)),
            "abc123",
            "eth0",
            Path::new("/x"),
            &ips(&["10.5.7.9"]),
        );
        assert_eq!(c.mtu, 1400);
    }

    #[test]
    fn a_dual_stack_plan_has_one_address_and_route_per_family() {
        let a = both(true);
        assert_eq!(
            a.ips,
            vec![
                PodIp {
                    address: "10.5.7.9/24".parse().unwrap(),
                    gateway: "10.5.7.1/24".parse().unwrap(),
                },
                PodIp {
                    address: "fc00:0:0:7::9/64".parse().unwrap(),
                    gateway: "fc00:0:0:7::1/64".parse().unwrap(),
                },
            ]
        );
        assert_eq!(
            a.routes,
            vec![
                route("0.0.0.0/0", "10.5.7.1"),
                route("::/0", "fc00:0:0:7::1")
            ]
        );
        assert_eq!(
            a.pod_mac.to_string(),
            "0a:58:0a:05:07:09",
            "from the IPv4 address"
        );
        assert_eq!(
            a.bridge_mac,
            one(true).bridge_mac,
            "the same bridge MAC as before IPv6"
        );
        assert_eq!(
            both(false).routes,
            vec![
                route("10.5.0.0/16", "10.5.7.1"),
                route("fc00::/48", "fc00:0:0:7::1")
            ]
        );
        let six = plan(
            &v6_only(),
            &opts(true, None),
            "abc123",
            "eth0",
            Path::new("/x"),
            &ips(&["fc00:0:0:7::a:b0c"]),
        );
        assert_eq!(six.ips.len(), 1);
        assert_eq!(six.routes, vec![route("::/0", "fc00:0:0:7::1")]);
        assert_eq!(
            six.pod_mac.to_string(),
            "0a:58:00:0a:0b:0c",
            "from the IPv6 address"
        );
        assert!(six.has_ipv6() && !six.has_ipv4());
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
    fn a_dual_stack_result_lists_both_families() {
        let a = both(true);
        let mac: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        let r = a.result("1.1.0", mac);
        assert_eq!(
            r["ips"],
            json!([
                {"address": "10.5.7.9/24", "gateway": "10.5.7.1", "interface": 2},
                {"address": "fc00:0:0:7::9/64", "gateway": "fc00:0:0:7::1", "interface": 2},
            ])
        );
        assert_eq!(
            r["routes"],
            json!([
                {"dst": "0.0.0.0/0", "gw": "10.5.7.1"},
                {"dst": "::/0", "gw": "fc00:0:0:7::1"},
            ])
        );
        let old = a.result("0.4.0", mac);
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
    }

    #[test]
    fn prev_results_of_every_version_read_back() {
        for a in [one(true), both(true), both(false)] {
            for v in crate::version::SUPPORTED {
                let r = a.result(v, a.bridge_mac);
                let e = expected_from_prev(&r, "eth0").unwrap();
                assert_eq!(
                    e.addresses,
                    a.ips.iter().map(|p| p.address).collect::<Vec<_>>()
                );
                assert_eq!(e.mac, Some(a.pod_mac));
                assert_eq!(
                    e.routes,
                    a.routes
                        .iter()
                        .map(|r| (r.dst, Some(r.gateway)))
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn broken_prev_results_are_named() {
        for (prev, needle) in [
            (json!({}), "no address"),
            (json!({"ips":[{"gateway":"10.0.0.1"}]}), "no address"),
            (json!({"ips":[{"address":"nope"}]}), "\"nope\""),
            (json!({"ips":[{"address":"fc00:::1/64"}]}), "fc00:::1/64"),
            (
                json!({"ips":[{"address":"10.0.0.2/24"}],"routes":[{"gw":"10.0.0.1"}]}),
                "no dst",
            ),
            (
                json!({"ips":[{"address":"10.0.0.2/24"}],"routes":[{"dst":"::/0","gw":"10.0.0.1"}]}),
                "other address family",
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
