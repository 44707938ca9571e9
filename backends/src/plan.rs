//! The data plane as values: what the kernel should hold for this node ([`Plan`], made by a
//! backend's [`Backend::plan`](crate::backend::Backend::plan)) and the operations that take
//! the observed state there ([`diff`]). Both are pure; applying the operations through
//! netlink is [`crate::dataplane`]'s job.
//!
//! This is the layer every backend shares: the underlay, routes, the kernel state and
//! operation types (with one part per backend, registered in [`crate::backend`]), the diff
//! machinery that orders a backend's operations around the routes, and operator text.
//!
//! Everything here is family-generic: the same code plans an IPv4 overlay and an IPv6 one.
//! The family of a plan is the family of the own subnet it is given; each family is
//! planned, diffed and applied on its own, by its own reconciler.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::backend::vxlan::{self, VxlanOp, VxlanState};
use crate::backend::wireguard::{self, WireguardOp, WireguardState};
use crate::backend::BackendData;
use crate::route::{Route, Via};
use crate::{BackendKind, IpFamily, Peer};

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
    /// The family of the underlay address (the one encapsulated packets leave from).
    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.ip)
    }

    /// Whether `ip` is on a subnet connected to the underlay (one L2 segment away).
    pub fn reaches_directly(&self, ip: IpAddr) -> bool {
        // `contains` is false across families.
        self.connected.iter().any(|n| n.contains(ip))
    }

    /// Why a route to `peer` must not be installed on this node, if it must not. Networks of
    /// different families never overlap.
    pub fn shadows(&self, own_subnet: IpNetwork, peer: IpNetwork) -> Option<Refused> {
        let overlap =
            |a: IpNetwork, b: IpNetwork| a.contains(b.network()) || b.contains(a.network());
        if let Some(n) = self.connected.iter().find(|n| overlap(**n, peer)) {
            return Some(Refused::OverlapsUnderlay(*n));
        }
        if overlap(own_subnet, peer) {
            return Some(Refused::OverlapsOwnSubnet(own_subnet));
        }
        None
    }
}

/// Kernel state weft owns in one family: what it wants, or what it observed. The routes (the
/// family's main-table routes with [`crate::route::ROUTE_PROTOCOL`]) are shared by every
/// backend; each backend that keeps objects of its own has a part here, observed even when
/// another backend is configured so that a switch of backend removes what the old one left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    pub routes: BTreeSet<Route>,
    /// The vxlan backend's device and the entries on it.
    pub vxlan: VxlanState,
    /// The wireguard backend's device and its peers.
    pub wireguard: WireguardState,
}

/// One change to the kernel: a route, or an operation on a backend's own objects. Adds use
/// replace semantics, deletes treat "not found" as done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    SetRoute(Route),
    DeleteRoute(Route),
    Vxlan(VxlanOp),
    Wireguard(WireguardOp),
}

impl Op {
    /// Whether every address this operation programs is of `family`.
    pub fn is_of(&self, family: IpFamily) -> bool {
        match self {
            Op::SetRoute(r) | Op::DeleteRoute(r) => r.is_of(family),
            Op::Vxlan(op) => op.is_of(family),
            Op::Wireguard(op) => op.is_of(family),
        }
    }

    /// Whether the operation removes something (the others add or change).
    pub fn is_deletion(&self) -> bool {
        match self {
            Op::DeleteRoute(_) => true,
            Op::SetRoute(_) => false,
            Op::Vxlan(op) => op.is_deletion(),
            Op::Wireguard(op) => op.is_deletion(),
        }
    }
}

/// Why a backend cannot serve a peer. [`Unreachable::label`] names the reason in metrics and
/// structured logs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unreachable {
    #[error("its lease has no {0} subnet")]
    NoSubnet(IpFamily),
    /// `field` is `PublicIP` or `PublicIPv6`.
    #[error("its lease has no {field}")]
    NoPublicIp { field: &'static str },
    /// The lease has no backend data of the plan's family (`what` is what is missing, e.g.
    /// `VtepMAC` or `IPv6 VtepMAC`). For wireguard this means no WireGuard peer: its traffic
    /// is never sent unencrypted.
    #[error("its lease has no {what}")]
    NoBackendData { what: &'static str },
    #[error(
        "public IP {0} is not on a subnet connected to the underlay (host-gw needs one L2 segment)"
    )]
    OffSegment(IpAddr),
    /// This node's underlay address is of the other family (see [`Refused::UnderlayFamily`]).
    #[error("{0}")]
    UnderlayFamily(UnderlayFamily),
}

impl Unreachable {
    pub fn label(&self) -> &'static str {
        match self {
            Unreachable::NoSubnet(_) => "no-subnet",
            Unreachable::NoPublicIp { .. } => "no-public-ip",
            Unreachable::NoBackendData { .. } => "no-backend-data",
            Unreachable::OffSegment(_) => "off-segment",
            Unreachable::UnderlayFamily(_) => "underlay-family",
        }
    }
}

/// Why a peer (or this node's own subnet) is refused: programming it would cut the node off
/// or cannot work at all. [`Refused::label`] names the reason in metrics and structured logs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "its subnet overlaps this node's underlay network {0}: the route would cut the node off"
    )]
    OverlapsUnderlay(IpNetwork),
    #[error("its subnet overlaps this node's own pod subnet {0}")]
    OverlapsOwnSubnet(IpNetwork),
    /// Only ever this node's own subnet: the settings cannot serve its family.
    #[error("{0}")]
    UnderlayFamily(UnderlayFamily),
    #[error("it publishes this node's own WireGuard public key")]
    OwnKey,
    /// Another peer (by its subnet) publishes the same WireGuard public key.
    #[error("it publishes the WireGuard public key of the peer with subnet {0}")]
    KeyInUse(IpNetwork),
}

impl Refused {
    pub fn label(&self) -> &'static str {
        match self {
            Refused::OverlapsUnderlay(_) => "overlaps-underlay",
            Refused::OverlapsOwnSubnet(_) => "overlaps-own-subnet",
            Refused::UnderlayFamily(_) => "underlay-family",
            Refused::OwnKey => "own-key",
            Refused::KeyInUse(_) => "key-in-use",
        }
    }
}

/// An overlay of one family over an underlay address of the other: encapsulated packets of
/// an IPv6 overlay must leave from an IPv6 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the {backend} underlay address {underlay} is {} but the overlay is {overlay}: an {overlay} overlay needs an {overlay} underlay address", IpFamily::of(*.underlay))]
pub struct UnderlayFamily {
    /// How the backend is named in the text (`VXLAN`).
    pub backend: &'static str,
    pub underlay: IpAddr,
    pub overlay: IpFamily,
}

/// The result of planning: the state to reach, and the peers it cannot serve (host-gw peers
/// not on a connected subnet, vxlan peers without a VTEP MAC, peers whose lease lacks the
/// plan's family), for logs, metrics and `netctl check`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub state: KernelState,
    /// Peers the backend cannot serve, by subnet (of the plan's family when the lease has
    /// one, else the peer's IPv4 subnet), with the reason.
    pub unreachable: Vec<(IpNetwork, Unreachable)>,
    /// Peers refused because their route would shadow this node's own networks (its
    /// underlay subnet, or its own pod subnet): programming them would cut the node off.
    /// Also this node's own subnet when the settings cannot serve its family at all.
    pub refused: Vec<(IpNetwork, Refused)>,
}

/// The network address of a subnet (`.0` in IPv4, `::` in IPv6): the overlay gateway of the
/// node that holds it.
pub fn subnet_zero(s: IpNetwork) -> IpAddr {
    s.network()
}

/// `<network address>/32` (or `/128`): the address a node's overlay device holds.
pub(crate) fn device_address(own_subnet: IpNetwork) -> IpNetwork {
    let family = IpFamily::of_network(own_subnet);
    IpNetwork::new(own_subnet.network(), family.host_prefix()).expect("a host prefix is valid")
}

/// Why a backend (named `backend` in the text) cannot plan `own_subnet` over `underlay`:
/// the underlay address is of the other family. None when the families match.
pub(crate) fn underlay_family_mismatch(
    backend: &'static str,
    underlay: &Underlay,
    own_subnet: IpNetwork,
) -> Option<UnderlayFamily> {
    let overlay = IpFamily::of_network(own_subnet);
    (underlay.family() != overlay).then_some(UnderlayFamily {
        backend,
        underlay: underlay.ip,
        overlay,
    })
}

/// The plan for such a mismatch: this node's subnet refused and every peer unreachable,
/// each with the reason.
pub(crate) fn refused_for_family<'a>(
    why: UnderlayFamily,
    own_subnet: IpNetwork,
    peers: impl IntoIterator<Item = &'a Peer>,
) -> Plan {
    let mut p = Plan::default();
    p.refused.push((own_subnet, Refused::UnderlayFamily(why)));
    for peer in peers {
        let key = peer.subnet_of(why.overlay).unwrap_or(peer.subnet.into());
        p.unreachable.push((key, Unreachable::UnderlayFamily(why)));
    }
    p
}

/// A peer as a data plane of one family sees it.
pub(crate) struct PeerView {
    pub subnet: IpNetwork,
    pub public_ip: IpAddr,
    pub data: Option<BackendData>,
}

/// The peer's halves of `family`, or why a data plane of that family cannot serve it.
pub(crate) fn view(peer: &Peer, family: IpFamily) -> Result<PeerView, (IpNetwork, Unreachable)> {
    let Some(subnet) = peer.subnet_of(family) else {
        return Err((peer.subnet.into(), Unreachable::NoSubnet(family)));
    };
    let Some(public_ip) = peer.public_ip_of(family) else {
        let field = match family {
            IpFamily::V4 => "PublicIP",
            IpFamily::V6 => "PublicIPv6",
        };
        return Err((subnet, Unreachable::NoPublicIp { field }));
    };
    Ok(PeerView {
        subnet,
        public_ip,
        data: peer.data_of(family).copied(),
    })
}

/// A backend's part of a [`diff`], in the phases the routes are ordered around.
#[derive(Debug, Default)]
pub(crate) struct BackendDiff {
    /// Operations on the backend's device, applied before anything else.
    pub device: Vec<Op>,
    /// Removals of the backend's entries, after stale routes are gone.
    pub remove: Vec<Op>,
    /// Additions of the backend's entries, before new routes point at them.
    pub add: Vec<Op>,
    /// The device is deleted (to be re-created or for good): every route through it goes
    /// with it.
    pub device_gone: bool,
}

/// The operations that take `observed` to `desired`, in a safe order: the backends' devices
/// first; then stale routes; then the backends' removals and additions; new routes last, so
/// a route never points at a gateway the kernel cannot resolve yet. A changed route is
/// replaced in place, except an IPv6 route moving from the underlay to the overlay, which is
/// deleted first.
pub fn diff(observed: &KernelState, desired: &KernelState) -> Vec<Op> {
    let mut backends = [
        vxlan::diff(&observed.vxlan, &desired.vxlan),
        wireguard::diff(&observed.wireguard, &desired.wireguard),
    ];
    let device_gone = backends.iter().any(|b| b.device_gone);
    let mut ops: Vec<Op> = backends
        .iter_mut()
        .flat_map(|b| std::mem::take(&mut b.device))
        .collect();

    // A deleted device takes the routes through it along (the copy only then).
    let kept;
    let observed_routes = if device_gone {
        kept = observed
            .routes
            .iter()
            .filter(|r| !r.via.through_device())
            .copied()
            .collect::<BTreeSet<Route>>();
        &kept
    } else {
        &observed.routes
    };
    // Routes are keyed by destination: a changed one is replaced, not deleted.
    let want_routes: BTreeMap<IpNetwork, Via> =
        desired.routes.iter().map(|r| (r.dst, r.via)).collect();
    for r in observed_routes {
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
    for b in &mut backends {
        ops.append(&mut b.remove);
    }
    for b in backends {
        ops.extend(b.add);
    }
    for r in desired.routes.difference(observed_routes) {
        ops.push(Op::SetRoute(*r));
    }
    ops
}

/// A difference between what the kernel holds and the plan, in operator words: what
/// `netctl check` reports for one operation the diff would apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// `missing`, `wrong` or `extra`.
    pub kind: &'static str,
    /// `route`, or a backend's object (`device`, `neighbour`, `fdb`).
    pub object: &'static str,
    pub detail: String,
}

impl Finding {
    pub fn missing(object: &'static str, detail: String) -> Finding {
        Finding {
            kind: "missing",
            object,
            detail,
        }
    }

    pub fn wrong(object: &'static str, detail: String) -> Finding {
        Finding {
            kind: "wrong",
            object,
            detail,
        }
    }

    pub fn extra(object: &'static str, detail: String) -> Finding {
        Finding {
            kind: "extra",
            object,
            detail,
        }
    }
}

/// What is wrong with the kernel, in operator words: each operation that takes `observed`
/// to `desired`, with what it says is missing, wrong or extra. `backend` is the configured
/// one (named when another backend's object is left over). The observed objects are looked
/// up by key, once per operation.
pub fn findings(
    observed: &KernelState,
    desired: &KernelState,
    names: &LinkNames,
    backend: BackendKind,
) -> Vec<(Op, Finding)> {
    let routes: BTreeMap<IpNetwork, &Route> = observed.routes.iter().map(|r| (r.dst, r)).collect();
    let vx = vxlan::Observed::of(&observed.vxlan);
    diff(observed, desired)
        .into_iter()
        .map(|op| {
            let finding = match &op {
                Op::SetRoute(r) => match routes.get(&r.dst) {
                    Some(h) => Finding::wrong(
                        "route",
                        format!("{} (want {})", names.show(*h), names.show(r)),
                    ),
                    None => Finding::missing("route", names.show(r).to_string()),
                },
                Op::DeleteRoute(r) => {
                    Finding::extra("route", format!("{} (no lease explains it)", names.show(r)))
                }
                Op::Vxlan(v) => vx.explain(v, &desired.vxlan, names, backend),
                Op::Wireguard(w) => wireguard::explain(w, &observed.wireguard, names, backend),
            };
            (op, finding)
        })
        .collect()
}

/// Whether `op` concerns `peer`: a route to its subnet of `family`, or a backend's entry
/// that serves it.
pub fn concerns(op: &Op, peer: &Peer, family: IpFamily) -> bool {
    match op {
        Op::SetRoute(r) | Op::DeleteRoute(r) => peer.subnet_of(family) == Some(r.dst),
        Op::Vxlan(v) => vxlan::concerns(v, peer, family),
        Op::Wireguard(w) => wireguard::concerns(w, peer, family),
    }
}

/// `10.244.1.0/32, fc00::/128`, or `none`.
pub(crate) fn addresses_text(addrs: &[IpNetwork]) -> String {
    if addrs.is_empty() {
        return "none".into();
    }
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The names operator text gives the links the data plane refers to by index: the
/// backend's device, and the interfaces routes leave by (the underlay). An index nobody
/// named is shown as `interface index N` (a link that has gone since, or one someone else
/// routed through).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkNames {
    device: String,
    links: BTreeMap<u32, String>,
}

impl LinkNames {
    /// Names for a data plane whose device (the one overlay routes go through) is `device`.
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

    /// The device's name.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Link `index` in operator text.
    pub fn link(&self, index: u32) -> LinkName<'_> {
        LinkName(self.links.get(&index).map(String::as_str), index)
    }

    /// `value` in operator text, links named: an [`Op`], a [`Route`] or a backend's object
    /// (its `Display`, spelled like `ip` and `bridge` do).
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
    pub(crate) value: &'a T,
    pub(crate) names: &'a LinkNames,
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
            Via::Device => write!(f, "{} dev {} scope link", r.dst, self.names.device),
        }
    }
}

impl fmt::Display for Named<'_, Op> {
    /// The operation as a verb and its object: `set route …`, `delete fdb …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.names;
        match self.value {
            Op::SetRoute(r) => write!(f, "set route {}", n.show(r)),
            Op::DeleteRoute(r) => write!(f, "delete route {}", n.show(r)),
            Op::Vxlan(op) => n.show(op).fmt(f),
            Op::Wireguard(op) => n.show(op).fmt(f),
        }
    }
}
