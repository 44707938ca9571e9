//! The data plane as values: what the kernel should hold for this node ([`plan`]) and the
//! operations that take the observed state there ([`diff`]). Both are pure; applying the
//! operations through netlink is a separate step.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::{BackendKind, MacAddr, Peer};

/// The route protocol number that marks weft's routes (`ip route ... proto 87`); routes with
/// it that no lease explains are weft's to remove.
pub const ROUTE_PROTOCOL: u8 = 87;

/// VXLAN header overhead on an IPv4 underlay.
pub const VXLAN_OVERHEAD_V4: u32 = 50;

/// How this node reaches its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settings {
    Vxlan(VxlanSettings),
    HostGw(Underlay),
}

/// The interface weft's traffic leaves by, and the subnets directly connected to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Underlay {
    pub index: u32,
    pub ip: Ipv4Addr,
    pub mtu: u32,
    pub connected: Vec<Ipv4Network>,
}

impl Underlay {
    fn reaches_directly(&self, ip: Ipv4Addr) -> bool {
        self.connected.iter().any(|n| n.contains(ip))
    }

    /// Why a route to `peer` must not be installed on this node, if it must not.
    fn shadows(&self, own_subnet: Ipv4Network, peer: Ipv4Network) -> Option<String> {
        let overlap =
            |a: Ipv4Network, b: Ipv4Network| a.contains(b.network()) || b.contains(a.network());
        if let Some(n) = self.connected.iter().find(|n| overlap(**n, peer)) {
            return Some(format!(
                "its subnet overlaps this node's underlay network {n}: the route would cut the node off"
            ));
        }
        if overlap(own_subnet, peer) {
            return Some(format!(
                "its subnet overlaps this node's own pod subnet {own_subnet}"
            ));
        }
        None
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSettings {
    pub device: String,
    pub vni: u32,
    pub port: u16,
    pub mac: MacAddr,
    /// The device's MTU: an explicit `Backend.MTU`, else the underlay's minus
    /// [`VXLAN_OVERHEAD_V4`] (see [`VxlanSettings::mtu_for`]).
    pub mtu: u32,
    pub underlay: Underlay,
    pub direct_routing: bool,
}

impl VxlanSettings {
    /// The overlay MTU for an underlay MTU, unless the operator set one.
    pub fn mtu_for(underlay_mtu: u32, explicit: Option<u32>) -> u32 {
        explicit.unwrap_or(underlay_mtu.saturating_sub(VXLAN_OVERHEAD_V4))
    }
}

/// The VXLAN device as weft wants it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VxlanDevice {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub underlay_index: u32,
    pub mac: MacAddr,
    pub mtu: u32,
    /// MAC learning from received packets; weft's device has it off (the FDB is programmed).
    pub learning: bool,
    /// Administratively up.
    pub up: bool,
    /// IPv4 addresses on the device: weft wants exactly `<own subnet>.0/32`.
    pub addresses: Vec<Ipv4Network>,
}

impl VxlanDevice {
    /// Attributes weft does not change on a live device: a difference means re-creating it.
    pub fn needs_recreate(&self, other: &VxlanDevice) -> bool {
        (
            self.vni,
            self.port,
            self.local,
            self.underlay_index,
            self.learning,
        ) != (
            other.vni,
            other.port,
            other.local,
            other.underlay_index,
            other.learning,
        )
    }
}

/// A permanent neighbour entry on the VXLAN device: `<peer subnet>.0 → peer VTEP MAC`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

/// A permanent FDB entry on the VXLAN device: `peer VTEP MAC → dst peer public IP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: MacAddr,
    pub dst: Ipv4Addr,
}

/// How a peer subnet is routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    /// `via <peer subnet>.0 dev <vxlan device> onlink`.
    Overlay { gateway: Ipv4Addr },
    /// `via <peer public IP> dev <underlay>` (DirectRouting and host-gw).
    Direct { gateway: Ipv4Addr, index: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: Ipv4Network,
    pub via: Via,
}

/// Kernel state weft owns: what it wants, or what it observed (routes with
/// [`ROUTE_PROTOCOL`], entries on its device, the device itself).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    pub device: Option<VxlanDevice>,
    pub neighbours: BTreeSet<Neighbour>,
    pub fdb: BTreeSet<FdbEntry>,
    pub routes: BTreeSet<Route>,
}

/// The result of planning: the state to reach, and the peers it cannot serve (host-gw peers
/// not on a connected subnet, vxlan peers without a VTEP MAC), for logs, metrics and
/// `netctl check`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub state: KernelState,
    pub unreachable: Vec<(Ipv4Network, String)>,
    /// Peers refused because their route would shadow this node's own networks (its
    /// underlay subnet, or its own pod subnet): programming them would cut the node off.
    pub refused: Vec<(Ipv4Network, String)>,
}

/// The `.0` address of a subnet: the overlay gateway of that node.
pub fn subnet_zero(s: Ipv4Network) -> Ipv4Addr {
    s.network()
}

/// A data-plane backend: turns this node's subnet and its peers into the kernel state it
/// wants. Pure; applying the result is [`diff`] plus a [`crate::dataplane::Netlink`].
pub trait Backend {
    fn kind(&self) -> BackendKind;
    /// What the kernel should hold, given this node's subnet and its peers (the own lease is
    /// not among `peers`).
    fn plan<'a>(&self, own_subnet: Ipv4Network, peers: impl IntoIterator<Item = &'a Peer>) -> Plan;
}

impl Backend for VxlanSettings {
    fn kind(&self) -> BackendKind {
        BackendKind::Vxlan
    }

    fn plan<'a>(&self, own_subnet: Ipv4Network, peers: impl IntoIterator<Item = &'a Peer>) -> Plan {
        let v = self;
        let mut p = Plan::default();
        p.state.device = Some(VxlanDevice {
            name: v.device.clone(),
            vni: v.vni,
            port: v.port,
            local: v.underlay.ip,
            underlay_index: v.underlay.index,
            mac: v.mac,
            mtu: v.mtu,
            learning: false,
            up: true,
            addresses: vec![Ipv4Network::new(subnet_zero(own_subnet), 32).expect("/32")],
        });
        for peer in peers {
            if let Some(why) = v.underlay.shadows(own_subnet, peer.subnet) {
                p.refused.push((peer.subnet, why));
                continue;
            }
            if v.direct_routing && v.underlay.reaches_directly(peer.public_ip) {
                p.state.routes.insert(Route {
                    dst: peer.subnet,
                    via: Via::Direct {
                        gateway: peer.public_ip,
                        index: v.underlay.index,
                    },
                });
                continue;
            }
            let Some(mac) = peer.vtep_mac else {
                p.unreachable
                    .push((peer.subnet, "its lease has no VtepMAC".into()));
                continue;
            };
            let gw = subnet_zero(peer.subnet);
            p.state.neighbours.insert(Neighbour { ip: gw, mac });
            p.state.fdb.insert(FdbEntry {
                mac,
                dst: peer.public_ip,
            });
            p.state.routes.insert(Route {
                dst: peer.subnet,
                via: Via::Overlay { gateway: gw },
            });
        }
        p
    }
}

/// host-gw: every peer is routed through its public IP on the underlay.
impl Backend for Underlay {
    fn kind(&self) -> BackendKind {
        BackendKind::HostGw
    }

    fn plan<'a>(&self, own_subnet: Ipv4Network, peers: impl IntoIterator<Item = &'a Peer>) -> Plan {
        let mut p = Plan::default();
        for peer in peers {
            if let Some(why) = self.shadows(own_subnet, peer.subnet) {
                p.refused.push((peer.subnet, why));
                continue;
            }
            if self.reaches_directly(peer.public_ip) {
                p.state.routes.insert(Route {
                    dst: peer.subnet,
                    via: Via::Direct {
                        gateway: peer.public_ip,
                        index: self.index,
                    },
                });
            } else {
                p.unreachable.push((
                    peer.subnet,
                    format!(
                        "public IP {} is not on a subnet connected to the underlay (host-gw needs one L2 segment)",
                        peer.public_ip
                    ),
                ));
            }
        }
        p
    }
}

impl Backend for Settings {
    fn kind(&self) -> BackendKind {
        match self {
            Settings::Vxlan(v) => v.kind(),
            Settings::HostGw(u) => u.kind(),
        }
    }

    fn plan<'a>(&self, own_subnet: Ipv4Network, peers: impl IntoIterator<Item = &'a Peer>) -> Plan {
        match self {
            Settings::Vxlan(v) => v.plan(own_subnet, peers),
            Settings::HostGw(u) => u.plan(own_subnet, peers),
        }
    }
}

/// What the kernel should hold for `settings` (shorthand for [`Backend::plan`]).
pub fn plan(own_subnet: Ipv4Network, peers: &[Peer], settings: &Settings) -> Plan {
    settings.plan(own_subnet, peers)
}

/// One change to the kernel. Adds use replace semantics, deletes treat "not found" as done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create the device, or change its MAC/MTU/address in place.
    SetDevice(Box<VxlanDevice>),
    /// Delete the device (it must be re-created, or the backend no longer uses one).
    DeleteDevice(String),
    DeleteRoute(Route),
    DeleteFdb(FdbEntry),
    DeleteNeighbour(Neighbour),
    SetNeighbour(Neighbour),
    SetFdb(FdbEntry),
    SetRoute(Route),
}

/// The operations that take `observed` to `desired`, in a safe order: the device first;
/// removals route → FDB → neighbour; additions neighbour → FDB → route, so a route never
/// points at a gateway the kernel cannot resolve yet.
pub fn diff(observed: &KernelState, desired: &KernelState) -> Vec<Op> {
    let mut ops = Vec::new();
    // A device that is deleted (to be re-created or for good) loses every entry on it and
    // every route through it; only then is the observed state copied.
    let wiped = |o: &KernelState| KernelState {
        device: None,
        neighbours: BTreeSet::new(),
        fdb: BTreeSet::new(),
        routes: o
            .routes
            .iter()
            .filter(|r| matches!(r.via, Via::Direct { .. }))
            .copied()
            .collect(),
    };
    let after_delete;
    let observed = match (&observed.device, &desired.device) {
        (None, Some(d)) => {
            ops.push(Op::SetDevice(Box::new(d.clone())));
            observed
        }
        (Some(o), Some(d)) if o.needs_recreate(d) => {
            ops.push(Op::DeleteDevice(o.name.clone()));
            ops.push(Op::SetDevice(Box::new(d.clone())));
            after_delete = wiped(observed);
            &after_delete
        }
        (Some(o), Some(d)) if o != d => {
            ops.push(Op::SetDevice(Box::new(d.clone())));
            observed
        }
        (Some(o), None) => {
            ops.push(Op::DeleteDevice(o.name.clone()));
            after_delete = wiped(observed);
            &after_delete
        }
        _ => observed,
    };

    // Routes and neighbours are keyed by destination: a changed one is replaced, not deleted.
    let want_routes: BTreeMap<Ipv4Network, Via> =
        desired.routes.iter().map(|r| (r.dst, r.via)).collect();
    for r in &observed.routes {
        if !want_routes.contains_key(&r.dst) {
            ops.push(Op::DeleteRoute(*r));
        }
    }
    // FDB entries are keyed by MAC and destination: an old MAC's entry must go.
    for f in observed.fdb.difference(&desired.fdb) {
        ops.push(Op::DeleteFdb(*f));
    }
    let want_neigh: BTreeSet<Ipv4Addr> = desired.neighbours.iter().map(|n| n.ip).collect();
    for n in &observed.neighbours {
        if !want_neigh.contains(&n.ip) {
            ops.push(Op::DeleteNeighbour(*n));
        }
    }
    for n in desired.neighbours.difference(&observed.neighbours) {
        ops.push(Op::SetNeighbour(*n));
    }
    for f in desired.fdb.difference(&observed.fdb) {
        ops.push(Op::SetFdb(*f));
    }
    for r in desired.routes.difference(&observed.routes) {
        ops.push(Op::SetRoute(*r));
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x02, 0, 0, 0, 0, n])
    }

    fn peer(subnet: &str, public: &str, m: Option<u8>) -> Peer {
        Peer {
            subnet: net(subnet),
            public_ip: ip(public),
            subnet_v6: None,
            public_ip_v6: None,
            backend: BackendKind::Vxlan,
            vtep_mac: m.map(mac),
            node_name: None,
        }
    }

    fn underlay() -> Underlay {
        Underlay {
            index: 2,
            ip: ip("192.168.1.10"),
            mtu: 1500,
            connected: vec![net("192.168.1.0/24")],
        }
    }

    fn vxlan(direct: bool) -> Settings {
        Settings::Vxlan(VxlanSettings {
            device: "weft.1".into(),
            vni: 1,
            port: 8472,
            mac: mac(1),
            mtu: VxlanSettings::mtu_for(1500, None),
            underlay: underlay(),
            direct_routing: direct,
        })
    }

    #[test]
    fn vxlan_plan_has_a_device_and_three_entries_per_peer() {
        let peers = [
            peer("10.244.2.0/24", "192.168.1.11", Some(2)),
            peer("10.244.3.0/24", "10.0.9.9", Some(3)),
            peer("10.244.4.0/24", "10.0.9.10", None),
        ];
        let p = plan(net("10.244.1.0/24"), &peers, &vxlan(false));
        let d = p.state.device.clone().unwrap();
        assert_eq!(
            (
                d.mtu,
                d.addresses.clone(),
                d.local,
                d.vni,
                d.port,
                d.learning
            ),
            (
                1450,
                vec![net("10.244.1.0/32")],
                ip("192.168.1.10"),
                1,
                8472,
                false
            )
        );
        assert_eq!(
            p.state.neighbours,
            BTreeSet::from([
                Neighbour {
                    ip: ip("10.244.2.0"),
                    mac: mac(2)
                },
                Neighbour {
                    ip: ip("10.244.3.0"),
                    mac: mac(3)
                },
            ])
        );
        assert!(p.state.fdb.contains(&FdbEntry {
            mac: mac(3),
            dst: ip("10.0.9.9")
        }));
        assert!(p.state.routes.contains(&Route {
            dst: net("10.244.2.0/24"),
            via: Via::Overlay {
                gateway: ip("10.244.2.0")
            }
        }));
        assert_eq!(
            p.unreachable.len(),
            1,
            "a peer without a VTEP MAC is reported"
        );
    }

    #[test]
    fn direct_routing_uses_the_underlay_for_peers_on_the_same_segment() {
        let peers = [
            peer("10.244.2.0/24", "192.168.1.11", Some(2)),
            peer("10.244.3.0/24", "10.0.9.9", Some(3)),
        ];
        let p = plan(net("10.244.1.0/24"), &peers, &vxlan(true));
        assert!(p.state.routes.contains(&Route {
            dst: net("10.244.2.0/24"),
            via: Via::Direct {
                gateway: ip("192.168.1.11"),
                index: 2
            }
        }));
        assert_eq!(
            p.state.neighbours.len(),
            1,
            "only the remote peer goes over VXLAN"
        );
        assert_eq!(p.state.fdb.len(), 1);
    }

    #[test]
    fn host_gw_routes_direct_and_reports_unreachable_peers() {
        let peers = [
            peer("10.244.2.0/24", "192.168.1.11", None),
            peer("10.244.3.0/24", "10.0.9.9", None),
        ];
        let p = plan(net("10.244.1.0/24"), &peers, &Settings::HostGw(underlay()));
        assert!(p.state.device.is_none());
        assert_eq!(p.state.routes.len(), 1);
        assert_eq!(p.unreachable.len(), 1);
        assert!(p.unreachable[0].1.contains("10.0.9.9"));
    }

    #[test]
    fn peers_whose_route_would_shadow_the_node_are_refused_by_both_backends() {
        let peers = [
            peer("192.168.1.0/24", "10.0.9.9", Some(2)),
            peer("192.168.0.0/16", "10.0.9.8", Some(3)),
            peer("10.244.1.0/25", "10.0.9.7", Some(4)),
            peer("10.244.2.0/24", "192.168.1.11", Some(5)),
        ];
        for settings in [vxlan(false), vxlan(true), Settings::HostGw(underlay())] {
            let p = plan(net("10.244.1.0/24"), &peers, &settings);
            let refused: Vec<String> = p.refused.iter().map(|(s, _)| s.to_string()).collect();
            assert_eq!(
                refused,
                ["192.168.1.0/24", "192.168.0.0/16", "10.244.1.0/25"],
                "{settings:?}"
            );
            assert!(p.refused[0].1.contains("underlay network 192.168.1.0/24"));
            assert!(p.state.routes.iter().all(|r| r.dst == net("10.244.2.0/24")));
            assert!(p.state.neighbours.iter().all(|n| n.mac == mac(5)));
        }
    }

    #[test]
    fn diff_of_equal_states_is_empty_and_a_fresh_node_gets_everything_in_order() {
        let peers = [peer("10.244.2.0/24", "192.168.1.11", Some(2))];
        let want = plan(net("10.244.1.0/24"), &peers, &vxlan(false)).state;
        assert!(diff(&want, &want).is_empty());
        let ops = diff(&KernelState::default(), &want);
        let kinds: Vec<&str> = ops
            .iter()
            .map(|o| match o {
                Op::SetDevice(_) => "device",
                Op::SetNeighbour(_) => "neigh",
                Op::SetFdb(_) => "fdb",
                Op::SetRoute(_) => "route",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["device", "neigh", "fdb", "route"]);
    }

    #[test]
    fn a_changed_vtep_mac_replaces_the_neighbour_and_removes_the_old_fdb_entry() {
        let own = net("10.244.1.0/24");
        let before = plan(
            own,
            &[peer("10.244.2.0/24", "192.168.1.11", Some(2))],
            &vxlan(false),
        )
        .state;
        let after = plan(
            own,
            &[peer("10.244.2.0/24", "192.168.1.11", Some(9))],
            &vxlan(false),
        )
        .state;
        let ops = diff(&before, &after);
        assert_eq!(
            ops,
            vec![
                Op::DeleteFdb(FdbEntry {
                    mac: mac(2),
                    dst: ip("192.168.1.11")
                }),
                Op::SetNeighbour(Neighbour {
                    ip: ip("10.244.2.0"),
                    mac: mac(9)
                }),
                Op::SetFdb(FdbEntry {
                    mac: mac(9),
                    dst: ip("192.168.1.11")
                }),
            ]
        );
    }

    #[test]
    fn a_removed_peer_goes_in_reverse_order_and_a_recreated_device_gets_everything_back() {
        let own = net("10.244.1.0/24");
        let one = plan(
            own,
            &[peer("10.244.2.0/24", "10.0.9.9", Some(2))],
            &vxlan(false),
        )
        .state;
        let none = plan(own, &[], &vxlan(false)).state;
        let ops = diff(&one, &none);
        assert!(matches!(
            ops.as_slice(),
            [Op::DeleteRoute(_), Op::DeleteFdb(_), Op::DeleteNeighbour(_)]
        ));
        // The device came back with another local IP: delete, create, re-add every entry.
        let mut moved = one.clone();
        moved.device.as_mut().unwrap().local = ip("192.168.1.99");
        let ops = diff(&moved, &one);
        assert!(matches!(ops[0], Op::DeleteDevice(_)));
        assert!(matches!(ops[1], Op::SetDevice(_)));
        assert_eq!(ops.len(), 5, "{ops:?}");
        // A changed MTU is changed in place.
        let mut mtu = one.clone();
        mtu.device.as_mut().unwrap().mtu = 1400;
        assert_eq!(
            diff(&mtu, &one),
            vec![Op::SetDevice(Box::new(one.device.clone().unwrap()))]
        );
    }

    #[test]
    fn switching_to_host_gw_deletes_the_device_and_keeps_direct_routes_consistent() {
        let own = net("10.244.1.0/24");
        let peers = [peer("10.244.2.0/24", "192.168.1.11", Some(2))];
        let vx = plan(own, &peers, &vxlan(false)).state;
        let hg = plan(own, &peers, &Settings::HostGw(underlay())).state;
        let ops = diff(&vx, &hg);
        assert_eq!(ops[0], Op::DeleteDevice("weft.1".into()));
        assert_eq!(
            ops.last(),
            Some(&Op::SetRoute(*hg.routes.iter().next().unwrap()))
        );
        assert_eq!(ops.len(), 2, "{ops:?}");
    }
}
