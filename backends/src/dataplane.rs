//! Applying a [`diff`](crate::plan::diff) to the kernel, and reading back what is there.
//!
//! [`Netlink`] is the one side effect of the data plane: read weft's state
//! ([`Netlink::observe`]) and apply operations ([`Netlink::apply`]). [`KernelNetlink`] does it
//! through rtnetlink messages on a blocking socket, sending entries in batches;
//! [`FakeNetlink`] keeps the state in memory for the reconciler's unit tests. [`Monitor`]
//! listens to the kernel's notifications so that a hand-deleted route or device is noticed at
//! once, and [`Notification::concerns_weft`] decides which ones matter.
//!
//! A data plane serves one address family ([`IpFamily`]) through one VXLAN device: it sees
//! and changes only that family's addresses, neighbours and routes, so an IPv4 and an IPv6
//! data plane can run side by side in one namespace without undoing each other's work.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::netlink::{link_attr, NlError, NlSocket, Request, NLM_F_CREATE, NLM_F_EXCL};
use crate::plan::{FdbEntry, KernelState, Neighbour, Op, Route, Via, VxlanDevice, ROUTE_PROTOCOL};
use crate::{is_link_local, IpFamily, MacAddr};

pub use netlink_packet_core::NLM_F_REPLACE;

/// Operations turned into requests and sent per batch.
const BATCH_OPS: usize = 128;

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

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Netlink(#[from] NlError),
    #[error("a link named {name} exists but is not a VXLAN device ({kind}); weft will not touch it: rename or remove it, or pick another device name")]
    NotVxlan { name: String, kind: String },
    #[error("{op}: {reason}")]
    Refused { op: String, reason: String },
}

/// What an [`Netlink::apply`] did: how many operations succeeded, and each failure.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub applied: usize,
    pub failures: Vec<(Op, String)>,
}

impl ApplyReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The data plane's side effect, for one address family.
pub trait Netlink {
    /// weft's state of this family in the kernel: its VXLAN device (if present) with the
    /// family's addresses on it (never IPv6 link-local ones), the family's neighbour entries
    /// and every FDB entry on it, and every main-table route of the family carrying
    /// [`ROUTE_PROTOCOL`].
    fn observe(&mut self) -> Result<KernelState, DataplaneError>;
    /// Apply `ops` in order. Every operation is attempted; additions replace what is there,
    /// deletions of something already gone count as done. An operation of the other family
    /// is refused (reported as a failure, nothing changed).
    fn apply(&mut self, ops: &[Op]) -> ApplyReport;
}

/// Why an operation must not be applied by a data plane of `family`, if it must not.
fn wrong_family(op: &Op, family: IpFamily) -> Option<String> {
    (!op.is_of(family)).then(|| {
        format!(
            "it has {} addresses but this data plane serves {family}",
            family.other()
        )
    })
}

/// [`Netlink`] on the kernel of the namespace the socket was opened in.
#[derive(Debug)]
pub struct KernelNetlink {
    nl: NlSocket,
    device: String,
    family: IpFamily,
}

impl KernelNetlink {
    /// A data plane of `family` around the VXLAN device called `device` (looked for even by
    /// host-gw, so that a device left from an earlier vxlan configuration is removed).
    pub fn open(device: &str, family: IpFamily) -> Result<KernelNetlink, DataplaneError> {
        Ok(KernelNetlink {
            nl: NlSocket::open()?,
            device: device.to_string(),
            family,
        })
    }

    /// The same, in the network namespace `ns` (see [`NlSocket::open_in`]).
    pub fn open_in(
        ns: &std::fs::File,
        path: &str,
        device: &str,
        family: IpFamily,
    ) -> Result<KernelNetlink, DataplaneError> {
        Ok(KernelNetlink {
            nl: NlSocket::open_in(ns, path)?,
            device: device.to_string(),
            family,
        })
    }

    /// The family this data plane serves.
    pub fn family(&self) -> IpFamily {
        self.family
    }

    /// The device's link message, if it exists; an error if the name is taken by another kind.
    fn device_link(&mut self) -> Result<Option<LinkMessage>, DataplaneError> {
        let Some(link) = self.nl.link_by_name(&self.device)? else {
            return Ok(None);
        };
        match link_kind(&link) {
            Some(InfoKind::Vxlan) => Ok(Some(link)),
            other => Err(DataplaneError::NotVxlan {
                name: self.device.clone(),
                kind: other.map_or(
                    "a link without a kind, such as a physical NIC".into(),
                    |k| format!("kind {k}"),
                ),
            }),
        }
    }

    /// The device's index, if it exists.
    pub fn device_index(&mut self) -> Result<Option<u32>, DataplaneError> {
        Ok(self.device_link()?.map(|l| l.header.index))
    }

    /// The addresses of this family on link `index`, sorted, without IPv6 link-local ones.
    fn addresses(&mut self, index: u32) -> Result<Vec<IpNetwork>, NlError> {
        let mut q = AddressMessage::default();
        q.header.family = inet(self.family);
        let family = self.family;
        let mut out: Vec<IpNetwork> = self
            .nl
            .dump("list addresses", RouteNetlinkMessage::GetAddress(q))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a)
                    if a.header.index == index && a.header.family == inet(family) =>
                {
                    // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on a
                    // point-to-point link, and the only one IPv6 usually sends.
                    let local = a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let address = a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    });
                    let ip = local.or(address)?;
                    if IpFamily::of(ip) != family || is_link_local(ip) {
                        return None;
                    }
                    IpNetwork::new(ip, a.header.prefix_len).ok()
                }
                _ => None,
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn observe_device(&mut self) -> Result<Option<(u32, VxlanDevice)>, DataplaneError> {
        let Some(link) = self.device_link()? else {
            return Ok(None);
        };
        let index = link.header.index;
        let mut d = VxlanDevice {
            name: self.device.clone(),
            vni: 0,
            port: 0,
            local: self.family.unspecified(),
            underlay_index: 0,
            mac: MacAddr([0; 6]),
            mtu: 0,
            // The kernel's default; a dump that omits the attribute means "on".
            learning: true,
            up: link.header.flags.contains(LinkFlags::Up),
            addresses: self.addresses(index)?,
        };
        for a in &link.attributes {
            match a {
                LinkAttribute::Address(b) if b.len() == 6 => {
                    d.mac = MacAddr(b.as_slice().try_into().expect("6 bytes"))
                }
                LinkAttribute::Mtu(m) => d.mtu = *m,
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Data(InfoData::Vxlan(attrs)) = i {
                            for v in attrs {
                                match v {
                                    InfoVxlan::Id(id) => d.vni = *id,
                                    InfoVxlan::Port(p) => d.port = *p,
                                    InfoVxlan::Local(ip) => d.local = IpAddr::V4(*ip),
                                    InfoVxlan::Local6(ip) => d.local = IpAddr::V6(*ip),
                                    InfoVxlan::Link(l) => d.underlay_index = *l,
                                    InfoVxlan::Learning(l) => d.learning = *l,
                                    _ => {}
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Some((index, d)))
    }

    fn set_device(&mut self, want: &VxlanDevice) -> Result<(), DataplaneError> {
        let index = match self.observe_device()? {
            Some((index, have)) if !have.needs_recreate(want) => {
                if have.mac != want.mac || have.mtu != want.mtu || !have.up {
                    let mut msg = LinkMessage::default();
                    msg.header.index = index;
                    msg.header.flags = LinkFlags::Up;
                    msg.header.change_mask = LinkFlags::Up;
                    // Only what differs: setting the MAC, even to the same value, makes the
                    // kernel flush the device's neighbour entries.
                    if have.mac != want.mac {
                        msg.attributes
                            .push(LinkAttribute::Address(want.mac.0.to_vec()));
                    }
                    if have.mtu != want.mtu {
                        msg.attributes.push(LinkAttribute::Mtu(want.mtu));
                    }
                    self.nl.ack(
                        &format!("update VXLAN device {}", want.name),
                        RouteNetlinkMessage::SetLink(msg),
                        0,
                    )?;
                }
                index
            }
            Some(_) => {
                self.nl.delete_link_by_name(&want.name)?;
                self.create_device(want)?
            }
            None => self.create_device(want)?,
        };
        // Add before removing: when the last IPv4 address leaves a device, the kernel drops
        // every route through it.
        let have = self.addresses(index)?;
        for a in want.addresses.iter().filter(|a| !have.contains(a)) {
            self.nl.ack(
                &format!("add address {a} to {}", want.name),
                RouteNetlinkMessage::NewAddress(address_message(index, *a)),
                NLM_F_CREATE | NLM_F_REPLACE,
            )?;
        }
        for a in have.iter().filter(|a| !want.addresses.contains(a)) {
            self.nl.ack(
                &format!("remove address {a} from {}", want.name),
                RouteNetlinkMessage::DelAddress(address_message(index, *a)),
                0,
            )?;
        }
        Ok(())
    }

    fn create_device(&mut self, want: &VxlanDevice) -> Result<u32, DataplaneError> {
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes
            .push(LinkAttribute::IfName(want.name.clone()));
        msg.attributes
            .push(LinkAttribute::Address(want.mac.0.to_vec()));
        msg.attributes.push(LinkAttribute::Mtu(want.mtu));
        let local = match want.local {
            IpAddr::V4(ip) => InfoVxlan::Local(ip),
            IpAddr::V6(ip) => InfoVxlan::Local6(ip),
        };
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(want.vni),
                local,
                InfoVxlan::Link(want.underlay_index),
                InfoVxlan::Port(want.port),
                InfoVxlan::Learning(want.learning),
                InfoVxlan::L2Miss(false),
                InfoVxlan::L3Miss(false),
            ])),
        ]));
        self.nl.ack(
            &format!(
                "create VXLAN device {} (VNI {}, port {}, local {})",
                want.name, want.vni, want.port, want.local
            ),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
        let index = self
            .nl
            .link_by_name(&want.name)?
            .map(|l| l.header.index)
            .ok_or_else(|| NlError::Decode {
                op: format!("create VXLAN device {}", want.name),
                problem: "the device is missing right after creation".into(),
            })?;
        if !want.up {
            return Ok(index);
        }
        // Some kernels ignore IFF_UP on creation; make sure.
        let mut up = LinkMessage::default();
        up.header.index = index;
        up.header.flags = LinkFlags::Up;
        up.header.change_mask = LinkFlags::Up;
        self.nl.ack(
            &format!("bring up {}", want.name),
            RouteNetlinkMessage::SetLink(up),
            0,
        )?;
        Ok(index)
    }
}

/// Every main-table route of `family` carrying [`ROUTE_PROTOCOL`]. Routes out of
/// `device_index` are overlay routes, the others direct ones.
fn dump_routes(
    nl: &mut NlSocket,
    family: IpFamily,
    device_index: Option<u32>,
) -> Result<BTreeSet<Route>, NlError> {
    let mut q = RouteMessage::default();
    q.header.address_family = inet(family);
    let mut out = BTreeSet::new();
    for m in nl.dump(
        &format!("list {family} routes"),
        RouteNetlinkMessage::GetRoute(q),
    )? {
        if let RouteNetlinkMessage::NewRoute(r) = m {
            if let Some(route) = parse_route(&r, family, device_index) {
                out.insert(route);
            }
        }
    }
    Ok(out)
}

/// The netlink address family of an IP family.
fn inet(family: IpFamily) -> AddressFamily {
    match family {
        IpFamily::V4 => AddressFamily::Inet,
        IpFamily::V6 => AddressFamily::Inet6,
    }
}

fn link_kind(link: &LinkMessage) -> Option<InfoKind> {
    link_attr(link, |a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    })
}

fn address_message(index: u32, a: IpNetwork) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = inet(IpFamily::of_network(a));
    msg.header.prefix_len = a.prefix();
    msg.header.index = index;
    if a.is_ipv6() {
        // No duplicate address detection: the address is usable at once (a /128 on weft's
        // own device cannot collide), instead of "tentative" for a second or two.
        msg.header.flags = AddressHeaderFlags::Nodad;
    }
    msg.attributes.push(AddressAttribute::Local(a.ip()));
    msg.attributes.push(AddressAttribute::Address(a.ip()));
    msg
}

fn neighbour_message(index: u32, n: &Neighbour) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = inet(IpFamily::of(n.ip));
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(
            n.ip,
        )));
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(n.mac.0.to_vec()));
    msg
}

fn fdb_message(index: u32, f: &FdbEntry) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec()));
    // 4 or 16 bytes: the VXLAN driver tells the remote's family by the length.
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(
            f.dst,
        )));
    msg
}

fn route_message(r: &Route, device_index: Option<u32>) -> Option<RouteMessage> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = inet(IpFamily::of_network(r.dst));
    msg.header.destination_prefix_length = r.dst.prefix();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(
            r.dst.network(),
        )));
    let (gateway, oif) = match r.via {
        Via::Overlay { gateway } => {
            // RTNH_F_ONLINK: the gateway is on the device even though no address of the
            // device covers it (both families).
            msg.header.flags = RouteFlags::Onlink;
            (gateway, device_index?)
        }
        Via::Direct { gateway, index } => (gateway, index),
    };
    msg.attributes
        .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
    msg.attributes.push(RouteAttribute::Oif(oif));
    Some(msg)
}

/// The request that deletes weft's route to `r.dst`: by destination, table and protocol,
/// so the device is not needed (and may be gone already).
fn route_delete_request(r: &Route) -> Request {
    let mut m = route_message(r, Some(0)).expect("an index is given");
    m.attributes
        .retain(|a| matches!(a, RouteAttribute::Destination(_)));
    m.header.flags = RouteFlags::empty();
    m.header.scope = RouteScope::NoWhere;
    Request {
        op: format!("delete route {}", r.dst),
        msg: RouteNetlinkMessage::DelRoute(m),
        flags: 0,
    }
}

fn neighbour_mac(attrs: &[NeighbourAttribute]) -> Option<MacAddr> {
    attrs.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
            Some(MacAddr(b.as_slice().try_into().expect("6 bytes")))
        }
        _ => None,
    })
}

/// The destination of a neighbour or FDB entry (FDB entries carry it as raw bytes).
fn neighbour_ip(attrs: &[NeighbourAttribute]) -> Option<IpAddr> {
    attrs.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => match b.len() {
            4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
            16 => {
                let bytes: [u8; 16] = b.as_slice().try_into().expect("16 bytes");
                Some(IpAddr::V6(Ipv6Addr::from(bytes)))
            }
            _ => None,
        },
        _ => None,
    })
}

/// Whether a neighbour entry is the kernel's own business, never weft's: IPv6 link-local and
/// multicast entries (neighbour discovery, MLD) and `NOARP` entries (multicast/broadcast
/// mappings the kernel makes by itself).
fn kernels_own_neighbour(ip: IpAddr, state: NeighbourState) -> bool {
    state == NeighbourState::Noarp || is_link_local(ip) || ip.is_multicast()
}

/// A main-table route of `family` carrying weft's protocol, as weft's model (None for
/// anything else).
fn parse_route(r: &RouteMessage, family: IpFamily, device_index: Option<u32>) -> Option<Route> {
    if r.header.address_family != inet(family)
        || r.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL)
    {
        return None;
    }
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let ip = |a: &RouteAddress| match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    };
    let mut dst = family.unspecified();
    let mut gateway = None;
    let mut oif = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ip(d).unwrap_or(dst),
            RouteAttribute::Gateway(g) => gateway = ip(g),
            RouteAttribute::Oif(o) => oif = Some(*o),
            _ => {}
        }
    }
    if IpFamily::of(dst) != family {
        return None;
    }
    let dst = IpNetwork::new(dst, r.header.destination_prefix_length).ok()?;
    // A route of ours without a gateway or device is not one weft makes; report it with an
    // unspecified gateway so that the diff replaces or removes it.
    let gateway = gateway.unwrap_or(family.unspecified());
    let oif = oif.unwrap_or(0);
    let via = if Some(oif) == device_index {
        Via::Overlay { gateway }
    } else {
        Via::Direct {
            gateway,
            index: oif,
        }
    };
    Some(Route { dst, via })
}

impl Netlink for KernelNetlink {
    fn observe(&mut self) -> Result<KernelState, DataplaneError> {
        let mut state = KernelState::default();
        let device = self.observe_device()?;
        let index = device.as_ref().map(|(i, _)| *i);
        state.device = device.map(|(_, d)| d);
        state.routes = dump_routes(&mut self.nl, self.family, index)?;
        let Some(index) = index else {
            return Ok(state);
        };

        let mut q = NeighbourMessage::default();
        q.header.family = inet(self.family);
        q.header.ifindex = index;
        for m in self
            .nl
            .dump("list neighbours", RouteNetlinkMessage::GetNeighbour(q))?
        {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != index {
                continue;
            }
            let Some(ip) = neighbour_ip(&n.attributes) else {
                continue;
            };
            if IpFamily::of(ip) != self.family || kernels_own_neighbour(ip, n.header.state) {
                continue;
            }
            // Only a permanent entry is weft's; anything else on the device is reported with
            // an all-zero MAC so that the diff replaces it with the permanent one.
            let mac = match n.header.state {
                NeighbourState::Permanent => neighbour_mac(&n.attributes),
                _ => None,
            };
            state.neighbours.insert(Neighbour {
                ip,
                mac: mac.unwrap_or(MacAddr([0; 6])),
            });
        }

        let mut q = NeighbourMessage::default();
        q.header.family = AddressFamily::Bridge;
        q.header.ifindex = index;
        for m in self
            .nl
            .dump("list FDB entries", RouteNetlinkMessage::GetNeighbour(q))?
        {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != index {
                continue;
            }
            if let (Some(mac), Some(dst)) =
                (neighbour_mac(&n.attributes), neighbour_ip(&n.attributes))
            {
                state.fdb.insert(FdbEntry { mac, dst });
            }
        }
        Ok(state)
    }

    fn apply(&mut self, ops: &[Op]) -> ApplyReport {
        let mut report = ApplyReport::default();
        // Device operations first, one at a time: the entries need the device's index.
        let mut rest = Vec::new();
        for op in ops {
            if let Some(why) = wrong_family(op, self.family) {
                report.failures.push((op.clone(), why));
                continue;
            }
            let r = match op {
                Op::SetDevice(d) => self.set_device(d),
                Op::DeleteDevice(name) => self
                    .nl
                    .delete_link_by_name(name)
                    .map(drop)
                    .map_err(DataplaneError::from),
                _ => {
                    rest.push(op);
                    continue;
                }
            };
            match r {
                Ok(()) => report.applied += 1,
                Err(e) => report.failures.push((op.clone(), e.to_string())),
            }
        }
        if rest.is_empty() {
            return report;
        }
        let index = match self.device_index() {
            Ok(i) => i,
            Err(e) => {
                for op in rest {
                    report.failures.push((op.clone(), e.to_string()));
                }
                return report;
            }
        };
        let no_device = |op: &Op| {
            (
                op.clone(),
                "the VXLAN device does not exist (it will be re-created on the next pass)"
                    .to_string(),
            )
        };
        // Requests are built a batch at a time: 15,000 of them at once would cost megabytes
        // that the allocator keeps afterwards.
        for chunk in rest.chunks(BATCH_OPS) {
            let mut reqs = Vec::with_capacity(chunk.len());
            let mut sent = Vec::with_capacity(chunk.len());
            for &op in chunk {
                let req = match (op, index) {
                    (Op::SetNeighbour(n), Some(i)) => Request {
                        op: format!("set neighbour {} lladdr {}", n.ip, n.mac),
                        msg: RouteNetlinkMessage::NewNeighbour(neighbour_message(i, n)),
                        flags: NLM_F_CREATE | NLM_F_REPLACE,
                    },
                    (Op::DeleteNeighbour(n), Some(i)) => Request {
                        op: format!("delete neighbour {}", n.ip),
                        msg: RouteNetlinkMessage::DelNeighbour(neighbour_message(i, n)),
                        flags: 0,
                    },
                    (Op::SetFdb(f), Some(i)) => Request {
                        op: format!("set FDB entry {} dst {}", f.mac, f.dst),
                        msg: RouteNetlinkMessage::NewNeighbour(fdb_message(i, f)),
                        flags: NLM_F_CREATE | NLM_F_REPLACE,
                    },
                    (Op::DeleteFdb(f), Some(i)) => Request {
                        op: format!("delete FDB entry {} dst {}", f.mac, f.dst),
                        msg: RouteNetlinkMessage::DelNeighbour(fdb_message(i, f)),
                        flags: 0,
                    },
                    (Op::SetRoute(r), _) => match route_message(r, index) {
                        Some(m) => Request {
                            op: format!("set route {}", r.dst),
                            msg: RouteNetlinkMessage::NewRoute(m),
                            flags: NLM_F_CREATE | NLM_F_REPLACE,
                        },
                        None => {
                            report.failures.push(no_device(op));
                            continue;
                        }
                    },
                    (Op::DeleteRoute(r), _) => route_delete_request(r),
                    // Entries on a device that does not exist: there is nothing to delete,
                    // and nothing to add until the device is back.
                    (Op::DeleteNeighbour(_) | Op::DeleteFdb(_), None) => {
                        report.applied += 1;
                        continue;
                    }
                    (_, None) => {
                        report.failures.push(no_device(op));
                        continue;
                    }
                    (Op::SetDevice(_) | Op::DeleteDevice(_), _) => {
                        unreachable!("handled above")
                    }
                };
                reqs.push(req);
                sent.push(op);
            }
            for (op, result) in sent.into_iter().zip(self.nl.ack_batch(&reqs)) {
                match result {
                    Ok(()) => report.applied += 1,
                    Err(e) if is_delete(op) && gone(&e) => report.applied += 1,
                    Err(e) => report.failures.push((op.clone(), e.to_string())),
                }
            }
        }
        report
    }
}

fn is_delete(op: &Op) -> bool {
    matches!(
        op,
        Op::DeleteRoute(_) | Op::DeleteNeighbour(_) | Op::DeleteFdb(_) | Op::DeleteDevice(_)
    )
}

fn gone(e: &NlError) -> bool {
    use nix::errno::Errno;
    e.is(Errno::ENOENT) || e.is(Errno::ESRCH) || e.is(Errno::ENODEV)
}

/// [`Netlink`] in memory, for unit tests of whatever drives the data plane. Someone else's
/// changes to the kernel are simulated by editing `state` directly.
///
/// It models [`KernelNetlink`]'s family scoping: `state` stands for the namespace as this
/// data plane's device sees it and may hold routes, neighbours and device addresses of the
/// other family (the other data plane's, or someone else's) and IPv6 link-local addresses;
/// [`Netlink::observe`] never shows them, so a diff never deletes them, and operations of the
/// other family are refused.
#[derive(Debug, Default)]
pub struct FakeNetlink {
    /// The family served; IPv4 unless set.
    pub family: IpFamily,
    pub state: KernelState,
    /// Every operation applied, in order.
    pub applied: Vec<Op>,
    /// Number of `observe` calls.
    pub observed: usize,
    /// Operations matching this predicate fail (to test retries).
    pub fail_if: Option<fn(&Op) -> bool>,
}

impl FakeNetlink {
    /// An empty fake of `family`.
    pub fn new(family: IpFamily) -> FakeNetlink {
        FakeNetlink {
            family,
            ..Default::default()
        }
    }

    /// Whether `ip` is something [`Netlink::observe`] shows.
    fn visible(&self, ip: IpAddr) -> bool {
        IpFamily::of(ip) == self.family && !is_link_local(ip) && !ip.is_multicast()
    }

    /// Routes that survive the device's deletion: direct ones, and the other family's (their
    /// overlay routes go through the other family's device).
    fn drop_device(&mut self) {
        let family = self.family;
        let s = &mut self.state;
        s.neighbours.clear();
        s.fdb.clear();
        s.routes.retain(|r| {
            matches!(r.via, Via::Direct { .. }) || IpFamily::of_network(r.dst) != family
        });
    }
}

impl Netlink for FakeNetlink {
    fn observe(&mut self) -> Result<KernelState, DataplaneError> {
        self.observed += 1;
        let s = &self.state;
        Ok(KernelState {
            device: s.device.clone().map(|mut d| {
                d.addresses.retain(|a| self.visible(a.ip()));
                d
            }),
            neighbours: s
                .neighbours
                .iter()
                .filter(|n| self.visible(n.ip))
                .copied()
                .collect(),
            fdb: s.fdb.clone(),
            routes: s
                .routes
                .iter()
                .filter(|r| IpFamily::of_network(r.dst) == self.family)
                .copied()
                .collect(),
        })
    }

    fn apply(&mut self, ops: &[Op]) -> ApplyReport {
        let mut report = ApplyReport::default();
        for op in ops {
            if let Some(why) = wrong_family(op, self.family) {
                report.failures.push((op.clone(), why));
                continue;
            }
            if self.fail_if.is_some_and(|f| f(op)) {
                report
                    .failures
                    .push((op.clone(), "injected failure".into()));
                continue;
            }
            match op {
                Op::SetDevice(d) => {
                    if self
                        .state
                        .device
                        .as_ref()
                        .is_some_and(|o| o.needs_recreate(d))
                    {
                        self.drop_device();
                    }
                    // Addresses observe does not show stay, as in the kernel.
                    let mut want = (**d).clone();
                    if let Some(old) = &self.state.device {
                        want.addresses.extend(
                            old.addresses
                                .iter()
                                .filter(|a| !self.visible(a.ip()))
                                .copied(),
                        );
                        want.addresses.sort();
                    }
                    self.state.device = Some(want);
                }
                Op::DeleteDevice(_) => {
                    self.state.device = None;
                    self.drop_device();
                }
                Op::SetNeighbour(n) => {
                    let s = &mut self.state;
                    if s.device.is_none() {
                        report.failures.push((op.clone(), "no device".into()));
                        continue;
                    }
                    s.neighbours.retain(|o| o.ip != n.ip);
                    s.neighbours.insert(*n);
                }
                Op::DeleteNeighbour(n) => {
                    self.state.neighbours.retain(|o| o.ip != n.ip);
                }
                Op::SetFdb(f) => {
                    let s = &mut self.state;
                    if s.device.is_none() {
                        report.failures.push((op.clone(), "no device".into()));
                        continue;
                    }
                    s.fdb.retain(|o| o.mac != f.mac);
                    s.fdb.insert(*f);
                }
                Op::DeleteFdb(f) => {
                    self.state.fdb.remove(f);
                }
                Op::SetRoute(r) => {
                    let s = &mut self.state;
                    if matches!(r.via, Via::Overlay { .. }) && s.device.is_none() {
                        report.failures.push((op.clone(), "no device".into()));
                        continue;
                    }
                    s.routes.retain(|o| o.dst != r.dst);
                    s.routes.insert(*r);
                }
                Op::DeleteRoute(r) => {
                    self.state.routes.retain(|o| o.dst != r.dst);
                }
            }
            self.applied.push(op.clone());
            report.applied += 1;
        }
        report
    }
}

/// A kernel notification, reduced to what decides whether weft must look again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// A link was added/changed (`deleted == false`) or deleted; `mtu` as the message
    /// carries it.
    Link {
        name: Option<String>,
        index: u32,
        mtu: Option<u32>,
        deleted: bool,
    },
    /// A neighbour or FDB entry changed or was deleted on the link `index`. `family` is the
    /// neighbour's (None for FDB entries). The kernel's own entries (IPv6 link-local and
    /// multicast ones, `NOARP` mappings) are not reported at all.
    Neighbour {
        index: u32,
        fdb: bool,
        family: Option<IpFamily>,
        deleted: bool,
        permanent: bool,
    },
    /// An address was added or removed on the link `index` (IPv6 link-local addresses,
    /// which the kernel manages by itself, are not reported).
    Address {
        index: u32,
        family: IpFamily,
        deleted: bool,
    },
    /// A route changed or was deleted.
    Route {
        family: IpFamily,
        protocol: u8,
        table: u32,
        deleted: bool,
    },
    /// The socket lost notifications (its buffer overran): only a full look is safe.
    Overrun,
}

impl std::fmt::Display for Notification {
    /// For debug logs: `link weft.1 (index 7) changed`, `ipv4 route (protocol 4, table 254)
    /// deleted`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = |deleted: bool| {
            if deleted {
                "deleted"
            } else {
                "added or changed"
            }
        };
        match self {
            Notification::Link {
                name,
                index,
                deleted,
                ..
            } => match name {
                Some(name) => write!(f, "link {name} (index {index}) {}", what(*deleted)),
                None => write!(f, "link with index {index} {}", what(*deleted)),
            },
            Notification::Neighbour {
                index,
                fdb,
                deleted,
                permanent,
                ..
            } => write!(
                f,
                "{}{} on link index {index} {}",
                if *permanent { "permanent " } else { "" },
                if *fdb { "FDB entry" } else { "neighbour" },
                what(*deleted)
            ),
            Notification::Address {
                index,
                family,
                deleted,
            } => write!(
                f,
                "{family} address on link index {index} {}",
                what(*deleted)
            ),
            Notification::Route {
                family,
                protocol,
                table,
                deleted,
            } => write!(
                f,
                "{family} route (protocol {protocol}, table {table}) {}",
                what(*deleted)
            ),
            Notification::Overrun => f.write_str("notifications lost (buffer overrun)"),
        }
    }
}

impl Notification {
    /// Whether this may have changed the state of weft's data plane of `family`, given its
    /// device's name and index. Deletions of anything of weft's, any change to its device,
    /// non-permanent neighbour entries on its device, and main-table routes of the family
    /// installed by someone else (which may replace one of weft's) matter; weft's own
    /// additions, and everything of the other family, do not.
    pub fn concerns_weft(&self, family: IpFamily, device: &str, device_index: Option<u32>) -> bool {
        match self {
            Notification::Overrun => true,
            Notification::Link { name, index, .. } => {
                name.as_deref() == Some(device) || Some(*index) == device_index
            }
            Notification::Neighbour {
                index,
                family: of,
                deleted,
                permanent,
                ..
            } => {
                Some(*index) == device_index
                    && of.is_none_or(|f| f == family)
                    && (*deleted || !*permanent)
            }
            Notification::Address {
                index,
                family: of,
                deleted,
            } => Some(*index) == device_index && *of == family && *deleted,
            Notification::Route {
                family: of,
                protocol,
                table,
                deleted,
            } => {
                *of == family
                    && *table == u32::from(RouteHeader::RT_TABLE_MAIN)
                    && if *protocol == ROUTE_PROTOCOL {
                        *deleted
                    } else {
                        // The kernel's own routes (addresses coming and going) and boot/static
                        // routes removed by someone are not weft's business.
                        !*deleted && *protocol != u8::from(RouteProtocol::Kernel)
                    }
            }
        }
    }
}

/// rtnetlink multicast groups (linux/rtnetlink.h).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

/// Receive buffer for the listener: a burst of 15,000 notifications fits in 8 MB.
const MONITOR_RCVBUF: usize = 8 * 1024 * 1024;

/// A listener for link, neighbour/FDB, address and route notifications of both families in
/// the namespace it was opened in (one listener can serve both data planes:
/// [`Notification::concerns_weft`] tells them apart).
#[derive(Debug)]
pub struct Monitor {
    socket: Socket,
    buf: Vec<u8>,
}

impl Monitor {
    /// Subscribe, with a large buffer and a receive timeout so that the owner can stop it.
    pub fn open(timeout: std::time::Duration) -> Result<Monitor, NlError> {
        Self::open_groups(
            &[
                RTNLGRP_LINK,
                RTNLGRP_NEIGH,
                RTNLGRP_IPV4_IFADDR,
                RTNLGRP_IPV4_ROUTE,
                RTNLGRP_IPV6_IFADDR,
                RTNLGRP_IPV6_ROUTE,
            ],
            timeout,
        )
    }

    /// A listener for link notifications only ([`Notification::Link`] and
    /// [`Notification::Overrun`]): enough to follow an interface's MTU.
    pub fn open_links(timeout: std::time::Duration) -> Result<Monitor, NlError> {
        Self::open_groups(&[RTNLGRP_LINK], timeout)
    }

    fn open_groups(groups: &[u32], timeout: std::time::Duration) -> Result<Monitor, NlError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NlError::Socket)?;
        socket
            .bind(&SocketAddr::new(0, 0))
            .map_err(NlError::Socket)?;
        for &g in groups {
            socket.add_membership(g).map_err(NlError::Socket)?;
        }
        {
            use nix::sys::socket::{setsockopt, sockopt};
            crate::netlink::set_receive_buffer(&socket, MONITOR_RCVBUF)?;
            let tv = nix::sys::time::TimeVal::new(
                timeout.as_secs() as i64,
                timeout.subsec_micros() as i64,
            );
            setsockopt(&socket, sockopt::ReceiveTimeout, &tv)
                .map_err(|e| NlError::Socket(e.into()))?;
        }
        Ok(Monitor {
            socket,
            buf: Vec::with_capacity(256 * 1024),
        })
    }

    /// The next notifications (possibly none when the timeout passed). An overrun is reported
    /// as [`Notification::Overrun`], not as an error.
    pub fn recv(&mut self) -> Result<Vec<Notification>, NlError> {
        self.buf.clear();
        let n = match self.socket.recv(&mut self.buf, 0) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc_enobufs()) => {
                return Ok(vec![Notification::Overrun])
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(Vec::new())
            }
            Err(e) => return Err(NlError::Socket(e)),
        };
        let mut out = Vec::new();
        let mut at = 0;
        while at < n {
            let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[at..n])
            else {
                // Something this crate cannot decode: look again to be safe.
                out.push(Notification::Overrun);
                break;
            };
            let len = msg.header.length as usize;
            if len == 0 {
                break;
            }
            at += (len + 3) & !3;
            if let NetlinkPayload::InnerMessage(m) = msg.payload {
                if let Some(n) = reduce(m) {
                    out.push(n);
                }
            }
        }
        Ok(out)
    }
}

fn libc_enobufs() -> i32 {
    nix::errno::Errno::ENOBUFS as i32
}

/// The IP family of a netlink address family (None for the others).
fn family_of(f: AddressFamily) -> Option<IpFamily> {
    match f {
        AddressFamily::Inet => Some(IpFamily::V4),
        AddressFamily::Inet6 => Some(IpFamily::V6),
        _ => None,
    }
}

fn reduce(m: RouteNetlinkMessage) -> Option<Notification> {
    use RouteNetlinkMessage as M;
    let (deleted, m) = match m {
        M::DelLink(_) | M::DelNeighbour(_) | M::DelRoute(_) | M::DelAddress(_) => (true, m),
        _ => (false, m),
    };
    Some(match m {
        M::NewLink(l) | M::DelLink(l) => Notification::Link {
            name: link_attr(&l, |a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }),
            index: l.header.index,
            mtu: link_attr(&l, |a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            }),
            deleted,
        },
        M::NewNeighbour(n) | M::DelNeighbour(n) => {
            let fdb = n.header.family == AddressFamily::Bridge;
            if !fdb {
                if let Some(ip) = neighbour_ip(&n.attributes) {
                    if kernels_own_neighbour(ip, n.header.state) {
                        return None;
                    }
                }
            }
            Notification::Neighbour {
                index: n.header.ifindex,
                fdb,
                family: family_of(n.header.family),
                deleted,
                permanent: n.header.state == NeighbourState::Permanent,
            }
        }
        M::NewAddress(a) | M::DelAddress(a) => {
            let family = family_of(a.header.family)?;
            let link_local = a.attributes.iter().any(|x| {
                matches!(x, AddressAttribute::Address(ip) | AddressAttribute::Local(ip) if is_link_local(*ip))
            });
            if link_local {
                return None;
            }
            Notification::Address {
                index: a.header.index,
                family,
                deleted,
            }
        }
        M::NewRoute(r) | M::DelRoute(r) => Notification::Route {
            family: family_of(r.header.address_family)?,
            protocol: u8::from(r.header.protocol),
            table: r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table)),
            deleted,
        },
        _ => return None,
    })
}

/// What [`remove_weft_state`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub devices: Vec<String>,
    pub routes: usize,
}

/// Remove weft's data plane, both families, from the calling thread's namespace whatever its
/// configuration was: every main-table route carrying [`ROUTE_PROTOCOL`] (IPv4 and IPv6),
/// then every VXLAN link named `weft.<number>` or `weft-v6.<number>` (with every entry on
/// it). Links of other kinds with such names are left alone. Every step is attempted; the
/// first failure is returned after all of them.
pub fn remove_weft_state() -> Result<Removed, DataplaneError> {
    let mut nl = NlSocket::open()?;
    let links = nl.dump(
        "list links",
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )?;
    let mut devices = Vec::new();
    for m in links {
        let RouteNetlinkMessage::NewLink(l) = m else {
            continue;
        };
        let name = link_attr(&l, |a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        if let Some(name) = name {
            if is_weft_device_name(&name) && link_kind(&l) == Some(InfoKind::Vxlan) {
                devices.push(name);
            }
        }
    }
    let mut removed = Removed::default();
    let mut first_failure: Option<DataplaneError> = None;
    // Routes first (as a peer's removal does), then the devices.
    for family in [IpFamily::V4, IpFamily::V6] {
        let routes = match dump_routes(&mut nl, family, None) {
            Ok(r) => r,
            Err(e) => {
                first_failure.get_or_insert(e.into());
                continue;
            }
        };
        let reqs: Vec<Request> = routes.iter().map(route_delete_request).collect();
        for (req, result) in reqs.iter().zip(nl.ack_batch(&reqs)) {
            match result {
                Ok(()) => removed.routes += 1,
                Err(e) if gone(&e) => {}
                Err(e) => {
                    first_failure.get_or_insert(DataplaneError::Refused {
                        op: req.op.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
    for d in devices {
        match nl.delete_link_by_name(&d) {
            Ok(true) => removed.devices.push(d),
            Ok(false) => {}
            Err(e) => {
                first_failure.get_or_insert(e.into());
            }
        }
    }
    match first_failure {
        None => Ok(removed),
        Some(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use IpFamily::{V4, V6};

    fn neigh(index: u32, family: Option<IpFamily>, deleted: bool, permanent: bool) -> Notification {
        Notification::Neighbour {
            index,
            fdb: family.is_none(),
            family,
            deleted,
            permanent,
        }
    }

    fn route(family: IpFamily, protocol: u8, table: u32, deleted: bool) -> Notification {
        Notification::Route {
            family,
            protocol,
            table,
            deleted,
        }
    }

    #[test]
    fn only_notifications_about_weft_state_kick_a_pass() {
        let dev = "weft.1";
        let idx = Some(7);
        let link = |name: &str, index, deleted| Notification::Link {
            name: Some(name.into()),
            index,
            mtu: Some(1450),
            deleted,
        };
        let addr = |index, family, deleted| Notification::Address {
            index,
            family,
            deleted,
        };
        let cases = [
            (Notification::Overrun, true),
            (link(dev, 7, true), true),
            (link("eth0", 2, false), false),
            // weft's own permanent entries appearing: no pass.
            (neigh(7, Some(V4), false, true), false),
            (neigh(7, None, true, true), true),
            (neigh(7, Some(V4), false, false), true),
            (neigh(3, Some(V4), true, true), false),
            // The other family's neighbours on the device are not this data plane's.
            (neigh(7, Some(V6), true, true), false),
            (route(V4, ROUTE_PROTOCOL, 254, true), true),
            (route(V4, ROUTE_PROTOCOL, 254, false), false),
            // Someone else's route in the main table may shadow one of weft's.
            (route(V4, 4, 254, false), true),
            (route(V4, 4, 254, true), false),
            (route(V4, 2, 254, false), false),
            (route(V4, 4, 100, false), false),
            // The other family's routes, weft's or not, never concern this data plane.
            (route(V6, ROUTE_PROTOCOL, 254, true), false),
            (route(V6, 4, 254, false), false),
            // An address removed from the device (an IPv6 one leaves the routes in place,
            // so nothing else would tell).
            (addr(7, V4, true), true),
            (addr(7, V4, false), false),
            (addr(7, V6, true), false),
            (addr(2, V4, true), false),
        ];
        for (n, want) in cases {
            assert_eq!(n.concerns_weft(V4, dev, idx), want, "{n:?}");
        }
        // Before the device exists, entries on index 7 are someone else's.
        assert!(!neigh(7, None, true, true).concerns_weft(V4, dev, None));
    }

    #[test]
    fn an_ipv6_data_plane_reacts_to_ipv6_changes_only() {
        let dev = "weft-v6.1";
        let idx = Some(9);
        let cases = [
            (route(V6, ROUTE_PROTOCOL, 254, true), true),
            (route(V6, ROUTE_PROTOCOL, 254, false), false),
            (route(V6, 4, 254, false), true),
            (route(V6, 2, 254, false), false),
            (route(V6, 4, 255, false), false),
            (route(V4, ROUTE_PROTOCOL, 254, true), false),
            (neigh(9, Some(V6), true, true), true),
            (neigh(9, Some(V6), false, false), true),
            (neigh(9, Some(V6), false, true), false),
            (neigh(9, Some(V4), true, true), false),
            (neigh(9, None, true, true), true),
            (
                Notification::Address {
                    index: 9,
                    family: V6,
                    deleted: true,
                },
                true,
            ),
            (
                Notification::Link {
                    name: Some(dev.into()),
                    index: 9,
                    mtu: Some(1450),
                    deleted: true,
                },
                true,
            ),
            (
                Notification::Link {
                    name: Some("weft.1".into()),
                    index: 7,
                    mtu: Some(1450),
                    deleted: true,
                },
                false,
            ),
        ];
        for (n, want) in cases {
            assert_eq!(n.concerns_weft(V6, dev, idx), want, "{n:?}");
        }
    }

    #[test]
    fn the_kernels_own_neighbours_and_link_local_addresses_are_not_reported() {
        let mut n = NeighbourMessage::default();
        n.header.family = AddressFamily::Inet6;
        n.header.ifindex = 9;
        n.header.state = NeighbourState::Noarp;
        n.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(
                "ff02::2".parse().unwrap(),
            )));
        assert_eq!(reduce(RouteNetlinkMessage::NewNeighbour(n.clone())), None);
        n.header.state = NeighbourState::Stale;
        n.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet6(
            "fe80::1".parse().unwrap(),
        ))];
        assert_eq!(reduce(RouteNetlinkMessage::NewNeighbour(n.clone())), None);
        n.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet6(
            "fc00:0:0:2::".parse().unwrap(),
        ))];
        assert_eq!(
            reduce(RouteNetlinkMessage::DelNeighbour(n)),
            Some(neigh(9, Some(V6), true, false))
        );

        let mut a = AddressMessage::default();
        a.header.family = AddressFamily::Inet6;
        a.header.index = 9;
        a.attributes
            .push(AddressAttribute::Address("fe80::1".parse().unwrap()));
        assert_eq!(reduce(RouteNetlinkMessage::DelAddress(a.clone())), None);
        a.attributes = vec![AddressAttribute::Address("fc00:0:0:1::".parse().unwrap())];
        assert_eq!(
            reduce(RouteNetlinkMessage::DelAddress(a)),
            Some(Notification::Address {
                index: 9,
                family: V6,
                deleted: true
            })
        );
    }

    #[test]
    fn device_names_of_both_families_are_recognised() {
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

    #[test]
    fn a_v6_route_and_address_are_encoded_for_the_kernel() {
        let r = Route {
            dst: "fc00:0:0:2::/64".parse().unwrap(),
            via: Via::Overlay {
                gateway: "fc00:0:0:2::".parse().unwrap(),
            },
        };
        let m = route_message(&r, Some(9)).unwrap();
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
        assert_eq!(m.header.destination_prefix_length, 64);
        assert!(m.header.flags.contains(RouteFlags::Onlink));
        assert!(m
            .attributes
            .contains(&RouteAttribute::Gateway(RouteAddress::Inet6(
                "fc00:0:0:2::".parse().unwrap()
            ))));
        assert_eq!(parse_route(&m, V6, Some(9)), Some(r));
        assert_eq!(parse_route(&m, V4, Some(9)), None, "the other family's");
        let mut boot = m;
        boot.header.protocol = RouteProtocol::Boot;
        assert_eq!(parse_route(&boot, V6, Some(9)), None, "someone else's");

        let a = address_message(9, "fc00:0:0:1::/128".parse().unwrap());
        assert_eq!(a.header.family, AddressFamily::Inet6);
        assert!(a.header.flags.contains(AddressHeaderFlags::Nodad));
        let a = address_message(9, "10.244.1.0/32".parse().unwrap());
        assert!(!a.header.flags.contains(AddressHeaderFlags::Nodad));
    }

    #[test]
    fn the_fake_sees_only_its_family_and_refuses_the_other() {
        let v6_route = Route {
            dst: "fc00:0:0:2::/64".parse().unwrap(),
            via: Via::Direct {
                gateway: "fd00::2".parse().unwrap(),
                index: 2,
            },
        };
        let mut fake = FakeNetlink::default();
        fake.state.routes.insert(v6_route);
        assert!(fake.observe().unwrap().routes.is_empty());
        let report = fake.apply(&[Op::DeleteRoute(v6_route)]);
        assert_eq!(report.failures.len(), 1);
        assert!(
            report.failures[0].1.contains("IPv6") && report.failures[0].1.contains("IPv4"),
            "{:?}",
            report.failures
        );
        assert!(fake.state.routes.contains(&v6_route), "nothing changed");
        let mut fake6 = FakeNetlink::new(V6);
        fake6.state.routes.insert(v6_route);
        assert_eq!(fake6.observe().unwrap().routes.len(), 1);
    }
}
