//! The vxlan backend (flannel's `vxlan`, VNI 1 and UDP 8472 by default): one VXLAN device
//! per family (`weft.<VNI>`, `weft-v6.<VNI>`) holding `<subnet network address>/32` (or
//! `/128`), and per peer a permanent neighbour entry (its gateway → its VTEP MAC), a
//! permanent FDB entry (its VTEP MAC → its public IP) and an onlink route through the
//! device. With DirectRouting, peers on the same L2 segment get a direct route instead.
//!
//! This module owns the backend's settings, the objects it keeps in the kernel
//! ([`VxlanState`]), its plan, its part of the diff and how its operations read in operator
//! text; [`kernel`] reads those objects back and applies the operations; [`lease`] is the
//! `BackendData` it publishes and accepts.

pub mod kernel;
pub mod lease;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::backend::{Backend, BackendData, BackendKind};
use crate::plan::{
    addresses_text, device_address, refused_for_family, subnet_zero, underlay_family_mismatch,
    view, BackendDiff, Finding, LinkNames, Named, Op, Plan, Underlay, Unreachable,
};
use crate::route::{Route, Via};
use crate::{IpFamily, MacAddr, Peer};

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

/// The name of weft's VXLAN device of `family` for a VNI: `weft.<VNI>` (IPv4) or
/// `weft-v6.<VNI>` (IPv6; flannel's is `flannel-v6.<VNI>`).
pub fn device_name(family: IpFamily, vni: u32) -> String {
    match family {
        IpFamily::V4 => format!("weft.{vni}"),
        IpFamily::V6 => format!("weft-v6.{vni}"),
    }
}

/// Whether `name` has the form of one of weft's VXLAN devices (`weft.<digits>` or
/// `weft-v6.<digits>`).
pub fn is_weft_device_name(name: &str) -> bool {
    ["weft.", "weft-v6."].iter().any(|prefix| {
        name.strip_prefix(prefix)
            .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The VTEP MAC of a node's device of one family: stable across restarts and versions,
/// derived from the node name (the IPv6 device gets its own).
pub fn vtep_mac(node_name: &str, family: IpFamily) -> MacAddr {
    match family {
        IpFamily::V4 => MacAddr::derive_from(node_name),
        IpFamily::V6 => MacAddr::derive_from(&format!("{node_name}/ipv6")),
    }
}

/// The VTEP MAC a peer's backend data carries, if it is vxlan data.
pub fn vtep_mac_in(data: BackendData) -> Option<MacAddr> {
    match data {
        BackendData::Vxlan(d) => Some(d.vtep_mac),
        BackendData::Wireguard(_) => None,
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

/// The kernel objects of the vxlan backend in one family: its device and the entries on it.
/// Routes are the shared layer's ([`crate::plan::KernelState::routes`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VxlanState {
    pub device: Option<VxlanDevice>,
    pub neighbours: BTreeSet<Neighbour>,
    pub fdb: BTreeSet<FdbEntry>,
}

/// One change to the vxlan backend's objects. Adds use replace semantics, deletes treat
/// "not found" as done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VxlanOp {
    /// Create the device, or change its MAC/MTU/address in place.
    SetDevice(Box<VxlanDevice>),
    /// Delete the device (it must be re-created, or the backend no longer uses one).
    DeleteDevice(String),
    DeleteFdb(FdbEntry),
    DeleteNeighbour(Neighbour),
    SetNeighbour(Neighbour),
    SetFdb(FdbEntry),
}

impl VxlanOp {
    /// Whether every address this operation programs is of `family` (a device: its local
    /// address, unless unspecified, and its addresses; a device deletion has none).
    pub fn is_of(&self, family: IpFamily) -> bool {
        let of = |ip: IpAddr| IpFamily::of(ip) == family;
        match self {
            VxlanOp::SetDevice(d) => {
                (d.local.is_unspecified() || of(d.local)) && d.addresses.iter().all(|a| of(a.ip()))
            }
            VxlanOp::DeleteDevice(_) => true,
            VxlanOp::DeleteFdb(f) | VxlanOp::SetFdb(f) => of(f.dst),
            VxlanOp::DeleteNeighbour(n) | VxlanOp::SetNeighbour(n) => of(n.ip),
        }
    }

    pub fn is_deletion(&self) -> bool {
        matches!(
            self,
            VxlanOp::DeleteDevice(_) | VxlanOp::DeleteFdb(_) | VxlanOp::DeleteNeighbour(_)
        )
    }
}

impl From<VxlanOp> for Op {
    fn from(op: VxlanOp) -> Op {
        Op::Vxlan(op)
    }
}

impl Backend for VxlanSettings {
    fn kind(&self) -> BackendKind {
        BackendKind::Vxlan
    }

    fn family(&self) -> IpFamily {
        self.underlay.family()
    }

    fn plan<'a>(&self, own_subnet: IpNetwork, peers: impl IntoIterator<Item = &'a Peer>) -> Plan {
        let v = self;
        let family = IpFamily::of_network(own_subnet);
        let mut p = Plan::default();
        if let Some(why) = underlay_family_mismatch("VXLAN", &v.underlay, own_subnet) {
            return refused_for_family(why, own_subnet, peers);
        }
        let vx = &mut p.state.vxlan;
        vx.device = Some(VxlanDevice {
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
            let Some(mac) = peer.data.and_then(vtep_mac_in) else {
                let what = match family {
                    IpFamily::V4 => "VtepMAC",
                    IpFamily::V6 => "IPv6 VtepMAC",
                };
                p.unreachable
                    .push((peer.subnet, Unreachable::NoBackendData { what }));
                continue;
            };
            let gw = subnet_zero(peer.subnet);
            vx.neighbours.insert(Neighbour { ip: gw, mac });
            vx.fdb.insert(FdbEntry {
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

/// The vxlan part of a diff: the device first (a device deleted, to be re-created or for
/// good, loses every entry on it and every route through it); then removals FDB →
/// neighbour, additions neighbour → FDB, so a route added after them never points at a
/// gateway the kernel cannot resolve yet.
pub(crate) fn diff(observed: &VxlanState, desired: &VxlanState) -> BackendDiff {
    let mut d = BackendDiff::default();
    let wiped = VxlanState::default();
    let observed = match (&observed.device, &desired.device) {
        (None, Some(want)) => {
            d.device
                .push(VxlanOp::SetDevice(Box::new(want.clone())).into());
            observed
        }
        (Some(have), Some(want)) if have.needs_recreate(want) => {
            d.device
                .push(VxlanOp::DeleteDevice(have.name.clone()).into());
            d.device
                .push(VxlanOp::SetDevice(Box::new(want.clone())).into());
            d.device_gone = true;
            &wiped
        }
        (Some(have), Some(want)) if have != want => {
            d.device
                .push(VxlanOp::SetDevice(Box::new(want.clone())).into());
            observed
        }
        (Some(have), None) => {
            d.device
                .push(VxlanOp::DeleteDevice(have.name.clone()).into());
            d.device_gone = true;
            &wiped
        }
        _ => observed,
    };
    // FDB entries are keyed by MAC and destination: an old MAC's entry must go.
    for f in observed.fdb.difference(&desired.fdb) {
        d.remove.push(VxlanOp::DeleteFdb(*f).into());
    }
    // Neighbours are keyed by address: a changed one is replaced, not deleted.
    let want_neigh: BTreeSet<IpAddr> = desired.neighbours.iter().map(|n| n.ip).collect();
    for n in &observed.neighbours {
        if !want_neigh.contains(&n.ip) {
            d.remove.push(VxlanOp::DeleteNeighbour(*n).into());
        }
    }
    for n in desired.neighbours.difference(&observed.neighbours) {
        d.add.push(VxlanOp::SetNeighbour(*n).into());
    }
    for f in desired.fdb.difference(&observed.fdb) {
        d.add.push(VxlanOp::SetFdb(*f).into());
    }
    d
}

/// The observed vxlan objects, with the neighbours by address, for
/// [`crate::plan::findings`].
pub(crate) struct Observed<'a> {
    state: &'a VxlanState,
    neighbours: BTreeMap<IpAddr, &'a Neighbour>,
}

impl<'a> Observed<'a> {
    pub(crate) fn of(state: &'a VxlanState) -> Self {
        Observed {
            state,
            neighbours: state.neighbours.iter().map(|n| (n.ip, n)).collect(),
        }
    }

    /// What `netctl check` reports for a vxlan operation the diff would apply.
    pub(crate) fn explain(
        &self,
        op: &VxlanOp,
        desired: &VxlanState,
        names: &LinkNames,
        backend: BackendKind,
    ) -> Finding {
        explain(op, self.state, &self.neighbours, desired, names, backend)
    }
}

fn explain(
    op: &VxlanOp,
    observed: &VxlanState,
    neighbours: &BTreeMap<IpAddr, &Neighbour>,
    desired: &VxlanState,
    names: &LinkNames,
    backend: BackendKind,
) -> Finding {
    match op {
        VxlanOp::SetDevice(want) => match &observed.device {
            None => Finding::missing("device", names.show(want.as_ref()).to_string()),
            Some(have) => {
                let mut what = Vec::new();
                if have.mtu != want.mtu {
                    what.push(format!("MTU {} (want {})", have.mtu, want.mtu));
                }
                if have.mac != want.mac {
                    what.push(format!("MAC {} (the lease says {})", have.mac, want.mac));
                }
                if !have.up {
                    what.push("down".to_string());
                }
                if have.addresses != want.addresses {
                    what.push(format!(
                        "addresses {} (want {})",
                        addresses_text(&have.addresses),
                        addresses_text(&want.addresses)
                    ));
                }
                Finding::wrong("device", format!("{}: {}", want.name, what.join(", ")))
            }
        },
        VxlanOp::DeleteDevice(name) => match (&observed.device, &desired.device) {
            (Some(have), Some(want)) => Finding::wrong(
                "device",
                format!(
                    "{name} must be re-created: it is {}, learning {} (want vxlan id {} port {} local {} dev {}, learning off)",
                    names.show(have),
                    if have.learning { "on" } else { "off" },
                    want.vni,
                    want.port,
                    want.local,
                    names.link(want.underlay_index)
                ),
            ),
            _ => Finding::extra("device", format!("{name} exists but the backend is {backend}")),
        },
        VxlanOp::SetNeighbour(n) => match neighbours.get(&n.ip) {
            Some(h) => Finding::wrong(
                "neighbour",
                format!("{} (want lladdr {} permanent)", names.show(*h), n.mac),
            ),
            None => Finding::missing("neighbour", names.show(n).to_string()),
        },
        VxlanOp::DeleteNeighbour(n) => Finding::extra("neighbour", names.show(n).to_string()),
        VxlanOp::SetFdb(f) => Finding::missing("fdb", names.show(f).to_string()),
        VxlanOp::DeleteFdb(f) => Finding::extra(
            "fdb",
            format!("{} (stale: no lease has this MAC and address)", names.show(f)),
        ),
    }
}

/// Whether a vxlan operation concerns `peer`: a neighbour in its subnet, an FDB entry with
/// its MAC or address. A device concerns no peer.
pub(crate) fn concerns(op: &VxlanOp, peer: &Peer, family: IpFamily) -> bool {
    match op {
        VxlanOp::SetNeighbour(n) | VxlanOp::DeleteNeighbour(n) => {
            peer.subnet_of(family).is_some_and(|s| s.contains(n.ip))
        }
        VxlanOp::SetFdb(f) | VxlanOp::DeleteFdb(f) => {
            peer.data_of(family).copied().and_then(vtep_mac_in) == Some(f.mac)
                || peer.public_ip_of(family) == Some(f.dst)
        }
        VxlanOp::SetDevice(_) | VxlanOp::DeleteDevice(_) => false,
    }
}

impl fmt::Display for Named<'_, Neighbour> {
    /// `10.244.2.0 lladdr 02:00:00:00:00:02 dev weft.1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.value;
        write!(f, "{} lladdr {} dev {}", n.ip, n.mac, self.names.device())
    }
}

impl fmt::Display for Named<'_, FdbEntry> {
    /// `02:00:00:00:00:02 dst 192.0.2.12 dev weft.1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.value;
        write!(f, "{} dst {} dev {}", e.mac, e.dst, self.names.device())
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

impl fmt::Display for Named<'_, VxlanOp> {
    /// The operation as a verb and its object: `set neighbour …`, `delete fdb …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.names;
        match self.value {
            VxlanOp::SetDevice(d) => write!(f, "set device {}", n.show(d.as_ref())),
            VxlanOp::DeleteDevice(name) => write!(f, "delete device {name}"),
            VxlanOp::SetNeighbour(e) => write!(f, "set neighbour {}", n.show(e)),
            VxlanOp::DeleteNeighbour(e) => write!(f, "delete neighbour {}", n.show(e)),
            VxlanOp::SetFdb(e) => write!(f, "set fdb {}", n.show(e)),
            VxlanOp::DeleteFdb(e) => write!(f, "delete fdb {}", n.show(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_of_both_families_are_recognised() {
        use IpFamily::{V4, V6};
        assert_eq!(device_name(V4, 1), "weft.1");
        assert_eq!(device_name(V6, 4096), "weft-v6.4096");
        for name in ["weft.1", "weft.4096", "weft-v6.1", "weft-v6.77"] {
            assert!(is_weft_device_name(name), "{name}");
        }
        for name in [
            "weft.",
            "weft-v6.",
            "weft.1a",
            "weft-v6.x",
            "flannel.1",
            "weft0",
        ] {
            assert!(!is_weft_device_name(name), "{name}");
        }
    }

    /// Golden values: the VTEP MAC of each family's device is derived from the node name the
    /// same way in every weft version, so nodes on two versions during a rolling upgrade (and
    /// a node rebuilt under its old name) publish the MACs their peers already have.
    #[test]
    fn vtep_macs_never_change() {
        assert_eq!(
            vtep_mac("node-a", IpFamily::V4).to_string(),
            "4a:e8:66:29:c1:52"
        );
        assert_eq!(
            vtep_mac("node-a", IpFamily::V6).to_string(),
            "16:8c:82:87:20:44"
        );
        for (node, v4, v6) in [
            ("node-b", "ce:03:1f:46:d5:0f", "3a:e6:74:20:1b:c2"),
            (
                "worker-1.example.com",
                "ee:8b:32:26:3b:35",
                "36:18:83:fa:55:2c",
            ),
            (
                "k8s-control-plane",
                "92:a8:49:0c:01:ed",
                "be:7a:0a:a7:8c:71",
            ),
        ] {
            assert_eq!(vtep_mac(node, IpFamily::V4).to_string(), v4, "{node} IPv4");
            assert_eq!(vtep_mac(node, IpFamily::V6).to_string(), v6, "{node} IPv6");
        }
    }
}
