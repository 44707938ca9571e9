//! The data plane as values: what the kernel should hold for this node ([`plan`]) and the
//! operations that take the observed state there ([`diff`]). Both are pure; applying the
//! operations through netlink is a separate step.
//!
//! Everything here is family-generic: the same code plans an IPv4 overlay (device
//! `weft.<VNI>`) and an IPv6 overlay (device `weft-v6.<VNI>`). The family of a plan is the
//! family of the own subnet it is given; each family is planned, diffed and applied on its
//! own, by its own reconciler.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::{BackendKind, IpFamily, MacAddr, Peer};

/// The route protocol number that marks weft's routes (`ip route ... proto 87`); routes with
/// it that no lease explains are weft's to remove.
pub const ROUTE_PROTOCOL: u8 = 87;

/// VXLAN overhead on an IPv4 underlay: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner
/// Ethernet (14) bytes.
pub const VXLAN_OVERHEAD_V4: u32 = 50;

/// VXLAN overhead on an IPv6 underlay: the outer IPv6 header is 20 bytes longer than IPv4's.
pub const VXLAN_OVERHEAD_V6: u32 = 70;

/// The VXLAN overhead on an underlay of `family`.
pub fn vxlan_overhead(family: IpFamily) -> u32 {
    match family {
        IpFamily::V4 => VXLAN_OVERHEAD_V4,
        IpFamily::V6 => VXLAN_OVERHEAD_V6,
    }
}

/// How this node reaches its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settings {
    Vxlan(VxlanSettings),
    HostGw(Underlay),
}

/// The interface weft's traffic leaves by, and the subnets directly connected to it. A data
/// plane of one family is given the underlay address of that family; `connected` may hold
/// networks of either family (only those of the plan's family are ever looked at).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Underlay {
    pub index: u32,
    pub ip: IpAddr,
    pub mtu: u32,
    pub connected: Vec<IpNetwork>,
}

impl Underlay {
    /// The family of the underlay address (the one VXLAN packets leave from).
    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.ip)
    }

    fn reaches_directly(&self, ip: IpAddr) -> bool {
        // `contains` is false across families.
        self.connected.iter().any(|n| n.contains(ip))
    }

    /// Why a route to `peer` must not be installed on this node, if it must not. Networks of
    /// different families never overlap.
    fn shadows(&self, own_subnet: IpNetwork, peer: IpNetwork) -> Option<String> {
        let overlap =
            |a: IpNetwork, b: IpNetwork| a.contains(b.network()) || b.contains(a.network());
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
    /// The device's MTU: an explicit `Backend.MTU`, else the underlay's minus the VXLAN
    /// overhead of the underlay's family (see [`VxlanSettings::mtu_for`]).
    pub mtu: u32,
    /// Its address is the device's local address: of the overlay's family.
    pub underlay: Underlay,
    pub direct_routing: bool,
}

impl VxlanSettings {
    /// The overlay MTU for an underlay MTU, unless the operator set one: the underlay's minus
    /// [`VXLAN_OVERHEAD_V4`] (IPv4 underlay) or [`VXLAN_OVERHEAD_V6`] (IPv6 underlay).
    pub fn mtu_for(underlay_mtu: u32, explicit: Option<u32>, underlay_family: IpFamily) -> u32 {
        explicit.unwrap_or(underlay_mtu.saturating_sub(vxlan_overhead(underlay_family)))
    }
}

/// The VXLAN device as weft wants it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VxlanDevice {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// The source address of the VXLAN packets (`IFLA_VXLAN_LOCAL` or `IFLA_VXLAN_LOCAL6`).
    pub local: IpAddr,
    pub underlay_index: u32,
    pub mac: MacAddr,
    pub mtu: u32,
    /// MAC learning from received packets; weft's device has it off (the FDB is programmed).
    pub learning: bool,
    /// Administratively up.
    pub up: bool,
    /// Addresses of the device's family on it (never the IPv6 link-local one the kernel adds
    /// by itself): weft wants exactly `<own subnet network address>/32` (or `/128`).
    pub addresses: Vec<IpNetwork>,
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

/// A permanent neighbour entry on the VXLAN device: `<peer subnet network address> → peer
/// VTEP MAC`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: MacAddr,
}

/// A permanent FDB entry on the VXLAN device: `peer VTEP MAC → dst peer public IP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: MacAddr,
    pub dst: IpAddr,
}

/// How a peer subnet is routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    /// `via <peer subnet network address> dev <vxlan device> onlink`.
    Overlay { gateway: IpAddr },
    /// `via <peer public IP> dev <underlay>` (DirectRouting and host-gw).
    Direct { gateway: IpAddr, index: u32 },
}

impl Via {
    pub fn gateway(&self) -> IpAddr {
        match *self {
            Via::Overlay { gateway } | Via::Direct { gateway, .. } => gateway,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: IpNetwork,
    pub via: Via,
}

/// Kernel state weft owns in one family: what it wants, or what it observed (the family's
/// routes with [`ROUTE_PROTOCOL`], the family's entries on its device, the device itself).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    pub device: Option<VxlanDevice>,
    pub neighbours: BTreeSet<Neighbour>,
    pub fdb: BTreeSet<FdbEntry>,
    pub routes: BTreeSet<Route>,
}

/// The result of planning: the state to reach, and the peers it cannot serve (host-gw peers
/// not on a connected subnet, vxlan peers without a VTEP MAC, peers whose lease lacks the
/// plan's family), for logs, metrics and `netctl check`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub state: KernelState,
    /// Peers the backend cannot serve, by subnet (of the plan's family when the lease has
    /// one, else the peer's IPv4 subnet), with the reason.
    pub unreachable: Vec<(IpNetwork, String)>,
    /// Peers refused because their route would shadow this node's own networks (its
    /// underlay subnet, or its own pod subnet): programming them would cut the node off.
    /// Also this node's own subnet when the settings cannot serve its family at all (see
    /// [`Backend::plan`]).
    pub refused: Vec<(IpNetwork, String)>,
}

/// The network address of a subnet (`.0` in IPv4, `::` in IPv6): the overlay gateway of the
/// node that holds it.
pub fn subnet_zero(s: IpNetwork) -> IpAddr {
    s.network()
}

/// `<network address>/32` (or `/128`): the address a node's VXLAN device holds.
fn device_address(own_subnet: IpNetwork) -> IpNetwork {
    let family = IpFamily::of_network(own_subnet);
    IpNetwork::new(own_subnet.network(), family.host_prefix()).expect("a host prefix is valid")
}

/// A peer as a data plane of one family sees it.
struct PeerView {
    subnet: IpNetwork,
    public_ip: IpAddr,
    vtep_mac: Option<MacAddr>,
}

/// The peer's halves of `family`, or why a data plane of that family cannot serve it.
fn view(peer: &Peer, family: IpFamily) -> Result<PeerView, (IpNetwork, String)> {
    let Some(subnet) = peer.subnet_of(family) else {
        return Err((
            peer.subnet.into(),
            format!("its lease has no {family} subnet"),
        ));
    };
    let Some(public_ip) = peer.public_ip_of(family) else {
        let field = match family {
            IpFamily::V4 => "PublicIP",
            IpFamily::V6 => "PublicIPv6",
        };
        return Err((subnet, format!("its lease has no {field}")));
    };
    Ok(PeerView {
        subnet,
        public_ip,
        vtep_mac: peer.vtep_mac_of(family),
    })
}

/// A data-plane backend: turns this node's subnet and its peers into the kernel state it
/// wants. Pure; applying the result is [`diff`] plus a [`crate::dataplane::Netlink`].
pub trait Backend {
    fn kind(&self) -> BackendKind;
    /// What the kernel should hold, given this node's subnet and its peers (the own lease is
    /// not among `peers`).
    ///
    /// The plan is of `own_subnet`'s family: an IPv4 subnet plans from the peers' `subnet`,
    /// `public_ip` and `vtep_mac`, an IPv6 one from `subnet_v6`, `public_ip_v6` and
    /// `vtep_mac_v6`; a peer whose lease lacks a half the plan needs is `unreachable`.
    ///
    /// Precondition (vxlan): the underlay address is of the same family as `own_subnet`
    /// (VXLAN packets of an IPv6 overlay leave from an IPv6 address). Otherwise nothing is
    /// planned (no device, no entries), this node's subnet is `refused` and every peer is
    /// `unreachable`, each with the reason.
    fn plan<'a>(&self, own_subnet: IpNetwork, peers: impl IntoIterator<Item = &'a Peer>) -> Plan;
}

impl Backend for VxlanSettings {
    fn kind(&self) -> BackendKind {
        BackendKind::Vxlan
    }

    fn plan<'a>(&self, own_subnet: IpNetwork, peers: impl IntoIterator<Item = &'a Peer>) -> Plan {
        let v = self;
        let family = IpFamily::of_network(own_subnet);
        let mut p = Plan::default();
        if v.underlay.family() != family {
            let why = format!(
                "the VXLAN underlay address {} is {} but the overlay is {family}: an {family} overlay needs an {family} underlay address",
                v.underlay.ip,
                v.underlay.family()
            );
            p.refused.push((own_subnet, why.clone()));
            for peer in peers {
                let key = peer.subnet_of(family).unwrap_or(peer.subnet.into());
                p.unreachable.push((key, why.clone()));
            }
            return p;
        }
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
            addresses: vec![device_address(own_subnet)],
        });
        for peer in peers {
            let peer = match view(peer, family) {
                Ok(view) => view,
                Err(unreachable) => {
                    p.unreachable.push(unreachable);
                    continue;
                }
            };
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
                let why = match family {
                    IpFamily::V4 => "its lease has no VtepMAC",
                    IpFamily::V6 => "its lease has no IPv6 VtepMAC",
                };
                p.unreachable.push((peer.subnet, why.into()));
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

/// host-gw: every peer is routed through its public IP (of the plan's family) on the
/// underlay.
impl Backend for Underlay {
    fn kind(&self) -> BackendKind {
        BackendKind::HostGw
    }

    fn plan<'a>(&self, own_subnet: IpNetwork, peers: impl IntoIterator<Item = &'a Peer>) -> Plan {
        let family = IpFamily::of_network(own_subnet);
        let mut p = Plan::default();
        for peer in peers {
            let peer = match view(peer, family) {
                Ok(view) => view,
                Err(unreachable) => {
                    p.unreachable.push(unreachable);
                    continue;
                }
            };
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

    fn plan<'a>(&self, own_subnet: IpNetwork, peers: impl IntoIterator<Item = &'a Peer>) -> Plan {
        match self {
            Settings::Vxlan(v) => v.plan(own_subnet, peers),
            Settings::HostGw(u) => u.plan(own_subnet, peers),
        }
    }
}

/// What the kernel should hold for `settings` (shorthand for [`Backend::plan`]).
pub fn plan(own_subnet: IpNetwork, peers: &[Peer], settings: &Settings) -> Plan {
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

impl Op {
    /// Whether every address this operation programs is of `family` (a device: its local
    /// address, unless unspecified, and its addresses; a device deletion has none).
    pub fn is_of(&self, family: IpFamily) -> bool {
        let of = |ip: IpAddr| IpFamily::of(ip) == family;
        match self {
            Op::SetDevice(d) => {
                (d.local.is_unspecified() || of(d.local)) && d.addresses.iter().all(|a| of(a.ip()))
            }
            Op::DeleteDevice(_) => true,
            Op::DeleteRoute(r) | Op::SetRoute(r) => of(r.dst.ip()) && of(r.via.gateway()),
            Op::DeleteFdb(f) | Op::SetFdb(f) => of(f.dst),
            Op::DeleteNeighbour(n) | Op::SetNeighbour(n) => of(n.ip),
        }
    }
}

/// The names operator text gives the links the data plane refers to by index: weft's VXLAN
/// device, and the interfaces routes leave by (the underlay). An index nobody named is shown
/// as `interface index N` (a link that has gone since, or one someone else routed through).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkNames {
    device: String,
    links: BTreeMap<u32, String>,
}

impl LinkNames {
    /// Names for a data plane whose VXLAN device is `device`.
    pub fn new(device: impl Into<String>) -> Self {
        LinkNames {
            device: device.into(),
            links: BTreeMap::new(),
        }
    }

    /// The same, knowing link `index` as `name`.
    pub fn with_link(mut self, index: u32, name: impl Into<String>) -> Self {
        self.links.insert(index, name.into());
        self
    }

    /// The VXLAN device's name.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Link `index` in operator text.
    pub fn link(&self, index: u32) -> LinkName<'_> {
        LinkName(self.links.get(&index).map(String::as_str), index)
    }

    /// `value` in operator text, links named: an [`Op`], [`Route`], [`Neighbour`],
    /// [`FdbEntry`] or [`VxlanDevice`] (its `Display`, spelled like `ip` and `bridge` do).
    pub fn show<'a, T>(&'a self, value: &'a T) -> Named<'a, T> {
        Named { value, names: self }
    }
}

/// A link by name, or by index when no name is known.
#[derive(Clone, Copy, Debug)]
pub struct LinkName<'a>(Option<&'a str>, u32);

impl fmt::Display for LinkName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(name) => f.write_str(name),
            None => write!(f, "interface index {}", self.1),
        }
    }
}

/// A data-plane value with the names of the links it mentions (see [`LinkNames::show`]).
#[derive(Clone, Copy, Debug)]
pub struct Named<'a, T> {
    value: &'a T,
    names: &'a LinkNames,
}

impl fmt::Display for Named<'_, Route> {
    /// `10.244.2.0/24 via 10.244.2.0 dev weft.1 onlink`, `10.244.2.0/24 via 192.0.2.12 dev eth0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.value;
        match r.via {
            Via::Overlay { gateway } => {
                write!(
                    f,
                    "{} via {gateway} dev {} onlink",
                    r.dst, self.names.device
                )
            }
            Via::Direct { gateway, index } => {
                write!(f, "{} via {gateway} dev {}", r.dst, self.names.link(index))
            }
        }
    }
}

impl fmt::Display for Named<'_, Neighbour> {
    /// `10.244.2.0 lladdr 02:00:00:00:00:02 dev weft.1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.value;
        write!(f, "{} lladdr {} dev {}", n.ip, n.mac, self.names.device)
    }
}

impl fmt::Display for Named<'_, FdbEntry> {
    /// `02:00:00:00:00:02 dst 192.0.2.12 dev weft.1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.value;
        write!(f, "{} dst {} dev {}", e.mac, e.dst, self.names.device)
    }
}

impl fmt::Display for Named<'_, VxlanDevice> {
    /// `weft.1 (vxlan id 1 port 8472 local 192.0.2.11 dev eth0, mac …, mtu 1450)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.value;
        write!(
            f,
            "{} (vxlan id {} port {} local {} dev {}, mac {}, mtu {})",
            d.name,
            d.vni,
            d.port,
            d.local,
            self.names.link(d.underlay_index),
            d.mac,
            d.mtu
        )
    }
}

impl fmt::Display for Named<'_, Op> {
    /// The operation as a verb and its object: `set route …`, `delete fdb …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.names;
        match self.value {
            Op::SetDevice(d) => write!(f, "set device {}", n.show(d.as_ref())),
            Op::DeleteDevice(name) => write!(f, "delete device {name}"),
            Op::SetRoute(r) => write!(f, "set route {}", n.show(r)),
            Op::DeleteRoute(r) => write!(f, "delete route {}", n.show(r)),
            Op::SetNeighbour(e) => write!(f, "set neighbour {}", n.show(e)),
            Op::DeleteNeighbour(e) => write!(f, "delete neighbour {}", n.show(e)),
            Op::SetFdb(e) => write!(f, "set fdb {}", n.show(e)),
            Op::DeleteFdb(e) => write!(f, "delete fdb {}", n.show(e)),
        }
    }
}

/// The operations that take `observed` to `desired`, in a safe order: the device first;
/// removals route → FDB → neighbour; additions neighbour → FDB → route, so a route never
/// points at a gateway the kernel cannot resolve yet. A changed route is replaced in place,
/// except an IPv6 route moving from the underlay to the overlay, which is deleted first.
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
    let want_routes: BTreeMap<IpNetwork, Via> =
        desired.routes.iter().map(|r| (r.dst, r.via)).collect();
    for r in &observed.routes {
        match (want_routes.get(&r.dst), r.via) {
            (None, _) => ops.push(Op::DeleteRoute(*r)),
            // The kernel checks an IPv6 onlink gateway against the routing table, where the
            // old direct route to the same prefix sends it out of another device: replacing
            // it is refused (EINVAL), so the old route goes first.
            (Some(Via::Overlay { .. }), Via::Direct { .. }) if r.dst.is_ipv6() => {
                ops.push(Op::DeleteRoute(*r))
            }
            _ => {}
        }
    }
    // FDB entries are keyed by MAC and destination: an old MAC's entry must go.
    for f in observed.fdb.difference(&desired.fdb) {
        ops.push(Op::DeleteFdb(*f));
    }
    let want_neigh: BTreeSet<IpAddr> = desired.neighbours.iter().map(|n| n.ip).collect();
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

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x02, 0, 0, 0, 0, n])
    }

    fn peer(subnet: &str, public: &str, m: Option<u8>) -> Peer {
        Peer {
            subnet: subnet.parse().unwrap(),
            public_ip: public.parse().unwrap(),
            subnet_v6: None,
            public_ip_v6: None,
            backend: BackendKind::Vxlan,
            vtep_mac: m.map(mac),
            vtep_mac_v6: None,
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
            mtu: VxlanSettings::mtu_for(1500, None, IpFamily::V4),
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

    // IPv6: the same plan over the peers' IPv6 halves.

    fn peer6(n: u16, public6: Option<&str>, m6: Option<u8>) -> Peer {
        Peer {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: format!("10.0.9.{n}").parse().unwrap(),
            subnet_v6: Some(format!("fc00:0:0:{n:x}::/64").parse().unwrap()),
            public_ip_v6: public6.map(|p| p.parse().unwrap()),
            backend: BackendKind::Vxlan,
            vtep_mac: Some(mac(0x40 + n as u8)),
            vtep_mac_v6: m6.map(mac),
            node_name: None,
        }
    }

    fn underlay6() -> Underlay {
        Underlay {
            index: 3,
            ip: ip("fd00:99::1"),
            mtu: 1500,
            connected: vec![net("fd00:99::/64"), net("192.168.1.0/24")],
        }
    }

    fn vxlan6(direct: bool) -> Settings {
        Settings::Vxlan(VxlanSettings {
            device: "weft-v6.1".into(),
            vni: 1,
            port: 8472,
            mac: mac(0x61),
            mtu: VxlanSettings::mtu_for(1500, None, IpFamily::V6),
            underlay: underlay6(),
            direct_routing: direct,
        })
    }

    fn own6() -> IpNetwork {
        net("fc00:0:0:1::/64")
    }

    #[test]
    fn the_vxlan_overhead_is_50_over_ipv4_and_70_over_ipv6() {
        let cases = [
            (1500, None, IpFamily::V4, 1450),
            (1500, None, IpFamily::V6, 1430),
            (9000, None, IpFamily::V6, 8930),
            (1500, Some(1400), IpFamily::V6, 1400),
            (1500, Some(1400), IpFamily::V4, 1400),
            (60, None, IpFamily::V6, 0),
        ];
        for (underlay, explicit, family, want) in cases {
            assert_eq!(
                VxlanSettings::mtu_for(underlay, explicit, family),
                want,
                "{underlay} {explicit:?} {family}"
            );
        }
        assert_eq!(vxlan_overhead(IpFamily::V6), VXLAN_OVERHEAD_V6);
    }

    #[test]
    fn a_v6_vxlan_plan_uses_the_peers_ipv6_halves() {
        let peers = [
            peer6(2, Some("fd00:99::2"), Some(2)),
            peer6(3, Some("2001:db8::3"), Some(3)),
        ];
        let p = plan(own6(), &peers, &vxlan6(false));
        assert!(p.unreachable.is_empty() && p.refused.is_empty(), "{p:?}");
        let d = p.state.device.clone().unwrap();
        assert_eq!(
            (d.name.as_str(), d.mtu, d.local, d.addresses.clone(), d.mac),
            (
                "weft-v6.1",
                1430,
                ip("fd00:99::1"),
                vec![net("fc00:0:0:1::/128")],
                mac(0x61)
            )
        );
        assert_eq!(
            p.state.neighbours,
            BTreeSet::from([
                Neighbour {
                    ip: ip("fc00:0:0:2::"),
                    mac: mac(2)
                },
                Neighbour {
                    ip: ip("fc00:0:0:3::"),
                    mac: mac(3)
                },
            ])
        );
        assert_eq!(
            p.state.fdb,
            BTreeSet::from([
                FdbEntry {
                    mac: mac(2),
                    dst: ip("fd00:99::2")
                },
                FdbEntry {
                    mac: mac(3),
                    dst: ip("2001:db8::3")
                },
            ])
        );
        assert!(p.state.routes.contains(&Route {
            dst: net("fc00:0:0:2::/64"),
            via: Via::Overlay {
                gateway: ip("fc00:0:0:2::")
            }
        }));
        assert_eq!(p.state.routes.len(), 2);
        // The IPv4 plan of the same dual-stack peers uses their IPv4 halves only.
        let p4 = plan(net("10.244.1.0/24"), &peers, &vxlan(false));
        assert!(p4
            .state
            .routes
            .iter()
            .all(|r| IpFamily::of_network(r.dst) == IpFamily::V4));
        assert!(p4.state.fdb.contains(&FdbEntry {
            mac: mac(0x42),
            dst: ip("10.0.9.2")
        }));
    }

    #[test]
    fn a_peer_lacking_an_ipv6_half_is_unreachable_with_the_reason() {
        let mut no_subnet = peer6(4, Some("fd00:99::4"), Some(4));
        no_subnet.subnet_v6 = None;
        let peers = [
            peer6(2, Some("fd00:99::2"), Some(2)),
            peer6(3, None, Some(3)),
            no_subnet,
            peer6(5, Some("2001:db8::5"), None),
        ];
        let p = plan(own6(), &peers, &vxlan6(false));
        let got: Vec<(String, &str)> = p
            .unreachable
            .iter()
            .map(|(s, why)| (s.to_string(), why.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("fc00:0:0:3::/64".to_string(), "its lease has no PublicIPv6"),
                ("10.244.4.0/24".to_string(), "its lease has no IPv6 subnet"),
                (
                    "fc00:0:0:5::/64".to_string(),
                    "its lease has no IPv6 VtepMAC"
                ),
            ]
        );
        assert_eq!(p.state.routes.len(), 1);
        // DirectRouting needs no MAC for a peer on the underlay's IPv6 segment.
        let direct = peer6(6, Some("fd00:99::6"), None);
        let p = plan(own6(), &[direct], &vxlan6(true));
        assert!(p.unreachable.is_empty(), "{p:?}");
        assert_eq!(
            p.state.routes.iter().next().unwrap(),
            &Route {
                dst: net("fc00:0:0:6::/64"),
                via: Via::Direct {
                    gateway: ip("fd00:99::6"),
                    index: 3
                }
            }
        );
        assert!(p.state.neighbours.is_empty() && p.state.fdb.is_empty());
    }

    #[test]
    fn host_gw_v6_routes_via_the_peers_ipv6_address() {
        let peers = [
            peer6(2, Some("fd00:99::2"), None),
            peer6(3, Some("2001:db8::3"), None),
            peer6(4, None, None),
        ];
        let p = plan(own6(), &peers, &Settings::HostGw(underlay6()));
        assert!(p.state.device.is_none());
        assert_eq!(
            p.state.routes,
            BTreeSet::from([Route {
                dst: net("fc00:0:0:2::/64"),
                via: Via::Direct {
                    gateway: ip("fd00:99::2"),
                    index: 3
                }
            }])
        );
        assert_eq!(p.unreachable.len(), 2);
        assert!(p.unreachable[0].1.contains("2001:db8::3"), "{p:?}");
        assert_eq!(p.unreachable[1].1, "its lease has no PublicIPv6");
        // An IPv4-only connected list reaches no IPv6 peer.
        let p = plan(own6(), &peers[..1], &Settings::HostGw(underlay()));
        assert_eq!(p.unreachable.len(), 1);
        assert!(p.state.routes.is_empty());
    }

    #[test]
    fn v6_peers_whose_route_would_shadow_the_node_are_refused() {
        let mut on_underlay = peer6(2, Some("2001:db8::2"), Some(2));
        on_underlay.subnet_v6 = Some("fd00:99::/64".parse().unwrap());
        let mut covering = peer6(3, Some("2001:db8::3"), Some(3));
        covering.subnet_v6 = Some("fd00::/16".parse().unwrap());
        let mut in_own = peer6(4, Some("2001:db8::4"), Some(4));
        in_own.subnet_v6 = Some("fc00:0:0:1:8000::/65".parse().unwrap());
        // Its IPv4 subnet would shadow the IPv4 underlay, which does not matter in IPv6.
        let mut v4_clash = peer6(5, Some("2001:db8::5"), Some(5));
        v4_clash.subnet = "192.168.1.0/24".parse().unwrap();
        let peers = [on_underlay, covering, in_own, v4_clash];
        for settings in [vxlan6(false), vxlan6(true), Settings::HostGw(underlay6())] {
            let p = plan(own6(), &peers, &settings);
            let refused: Vec<String> = p.refused.iter().map(|(s, _)| s.to_string()).collect();
            assert_eq!(
                refused,
                ["fd00:99::/64", "fd00::/16", "fc00:0:0:1:8000::/65"],
                "{settings:?}"
            );
            assert!(p.refused[0].1.contains("underlay network fd00:99::/64"));
            assert!(p.refused[2].1.contains("own pod subnet fc00:0:0:1::/64"));
        }
        let p = plan(own6(), &peers, &vxlan6(false));
        assert_eq!(
            p.state.routes.iter().map(|r| r.dst).collect::<Vec<_>>(),
            [net("fc00:0:0:5::/64")]
        );
    }

    #[test]
    fn a_vxlan_underlay_of_the_other_family_plans_nothing_and_says_why() {
        let mut s = vxlan6(false);
        if let Settings::Vxlan(v) = &mut s {
            v.underlay = underlay(); // IPv4 underlay for an IPv6 overlay
        }
        let peers = [peer6(2, Some("fd00:99::2"), Some(2))];
        let p = plan(own6(), &peers, &s);
        assert_eq!(p.state, KernelState::default());
        assert_eq!(p.refused.len(), 1);
        assert_eq!(p.refused[0].0, own6());
        assert!(
            p.refused[0]
                .1
                .contains("192.168.1.10 is IPv4 but the overlay is IPv6"),
            "{}",
            p.refused[0].1
        );
        assert_eq!(p.unreachable.len(), 1);
        assert_eq!(p.unreachable[0].0, net("fc00:0:0:2::/64"));
        // And the other way round.
        let p = plan(net("10.244.1.0/24"), &peers, &vxlan6(false));
        assert!(p.state.device.is_none());
        assert!(p.refused[0].1.contains("is IPv6 but the overlay is IPv4"));
        assert_eq!(p.unreachable[0].0, net("10.244.2.0/24"));
    }

    #[test]
    fn v6_diffs_replace_a_changed_mac_and_remove_a_peer_in_reverse_order() {
        let before = plan(
            own6(),
            &[peer6(2, Some("fd00:99::2"), Some(2))],
            &vxlan6(false),
        )
        .state;
        let after = plan(
            own6(),
            &[peer6(2, Some("fd00:99::2"), Some(9))],
            &vxlan6(false),
        )
        .state;
        assert_eq!(
            diff(&before, &after),
            vec![
                Op::DeleteFdb(FdbEntry {
                    mac: mac(2),
                    dst: ip("fd00:99::2")
                }),
                Op::SetNeighbour(Neighbour {
                    ip: ip("fc00:0:0:2::"),
                    mac: mac(9)
                }),
                Op::SetFdb(FdbEntry {
                    mac: mac(9),
                    dst: ip("fd00:99::2")
                }),
            ]
        );
        let none = plan(own6(), &[], &vxlan6(false)).state;
        assert!(matches!(
            diff(&after, &none).as_slice(),
            [Op::DeleteRoute(_), Op::DeleteFdb(_), Op::DeleteNeighbour(_)]
        ));
        let fresh = diff(&KernelState::default(), &after);
        assert_eq!(fresh.len(), 4);
        assert!(fresh.iter().all(|op| op.is_of(IpFamily::V6)));
        assert!(!fresh.iter().any(|op| op.is_of(IpFamily::V4)));
    }

    #[test]
    fn a_v6_route_moving_from_the_underlay_to_the_overlay_is_deleted_first() {
        let peers = [peer6(2, Some("fd00:99::2"), Some(2))];
        let direct = plan(own6(), &peers, &vxlan6(true)).state;
        let overlay = plan(own6(), &peers, &vxlan6(false)).state;
        let old = *direct.routes.iter().next().unwrap();
        let new = *overlay.routes.iter().next().unwrap();
        let ops = diff(&direct, &overlay);
        assert_eq!(ops.first(), Some(&Op::DeleteRoute(old)), "{ops:?}");
        assert_eq!(ops.last(), Some(&Op::SetRoute(new)), "{ops:?}");
        assert_eq!(ops.len(), 4, "delete, neighbour, FDB, route: {ops:?}");
        // The other way is a replacement, and so is every IPv4 change.
        assert_eq!(diff(&overlay, &direct).len(), 3, "route, FDB, neighbour");
        let peers4 = [peer("10.244.2.0/24", "192.168.1.11", Some(2))];
        let own4 = net("10.244.1.0/24");
        let ops = diff(
            &plan(own4, &peers4, &vxlan(true)).state,
            &plan(own4, &peers4, &vxlan(false)).state,
        );
        assert!(
            !ops.iter().any(|o| matches!(o, Op::DeleteRoute(_))),
            "{ops:?}"
        );
    }
    #[test]
    fn operations_name_their_links_in_ip_route_words() {
        let own = net("10.244.1.0/24");
        let peers = [
            peer("10.244.2.0/24", "192.168.1.11", Some(2)),
            peer("10.244.3.0/24", "10.0.9.9", Some(3)),
        ];
        let ops = diff(
            &KernelState::default(),
            &plan(own, &peers, &vxlan(true)).state,
        );
        let names = LinkNames::new("weft.1").with_link(2, "eth0");
        let text: Vec<String> = ops.iter().map(|o| names.show(o).to_string()).collect();
        assert_eq!(
            text,
            [
                "set device weft.1 (vxlan id 1 port 8472 local 192.168.1.10 dev eth0, mac 02:00:00:00:00:01, mtu 1450)",
                "set neighbour 10.244.3.0 lladdr 02:00:00:00:00:03 dev weft.1",
                "set fdb 02:00:00:00:00:03 dst 10.0.9.9 dev weft.1",
                "set route 10.244.2.0/24 via 192.168.1.11 dev eth0",
                "set route 10.244.3.0/24 via 10.244.3.0 dev weft.1 onlink",
            ]
        );
        let removed = diff(
            &plan(own, &peers, &vxlan(true)).state,
            &KernelState::default(),
        );
        let text: Vec<String> = removed.iter().map(|o| names.show(o).to_string()).collect();
        assert_eq!(text[0], "delete device weft.1");
        assert_eq!(
            text[1],
            "delete route 10.244.2.0/24 via 192.168.1.11 dev eth0"
        );
        // A link nobody named is still not shown as `#7`.
        let stray = Op::DeleteRoute(Route {
            dst: net("10.244.9.0/24"),
            via: Via::Direct {
                gateway: ip("192.168.1.99"),
                index: 7,
            },
        });
        assert_eq!(
            names.show(&stray).to_string(),
            "delete route 10.244.9.0/24 via 192.168.1.99 dev interface index 7"
        );
    }
}
