//! Applying a [`diff`](crate::plan::diff) to the kernel, and reading back what is there.
//!
//! [`Netlink`] is the one side effect of the data plane: read weft's state
//! ([`Netlink::observe`]) and apply operations ([`Netlink::apply`]). [`KernelNetlink`] does it
//! through rtnetlink messages on a blocking socket, sending entries in batches;
//! [`FakeNetlink`] keeps the state in memory for the reconciler's unit tests. [`Monitor`]
//! listens to the kernel's notifications so that a hand-deleted route or device is noticed at
//! once, and [`Notification::concerns_weft`] decides which ones matter.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::Ipv4Network;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
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
use crate::MacAddr;

pub use netlink_packet_core::NLM_F_REPLACE;

/// Operations turned into requests and sent per batch.
const BATCH_OPS: usize = 128;

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

/// The data plane's side effect.
pub trait Netlink {
    /// weft's state in the kernel: its VXLAN device (if present) with the neighbour and FDB
    /// entries on it, and every main-table route carrying [`ROUTE_PROTOCOL`].
    fn observe(&mut self) -> Result<KernelState, DataplaneError>;
    /// Apply `ops` in order. Every operation is attempted; additions replace what is there,
    /// deletions of something already gone count as done.
    fn apply(&mut self, ops: &[Op]) -> ApplyReport;
}

/// [`Netlink`] on the kernel of the namespace the socket was opened in.
#[derive(Debug)]
pub struct KernelNetlink {
    nl: NlSocket,
    device: String,
}

impl KernelNetlink {
    /// A data plane around the VXLAN device called `device` (looked for even by host-gw, so
    /// that a device left from an earlier vxlan configuration is removed).
    pub fn open(device: &str) -> Result<KernelNetlink, DataplaneError> {
        Ok(KernelNetlink {
            nl: NlSocket::open()?,
            device: device.to_string(),
        })
    }

    /// The same, in the network namespace `ns` (see [`NlSocket::open_in`]).
    pub fn open_in(
        ns: &std::fs::File,
        path: &str,
        device: &str,
    ) -> Result<KernelNetlink, DataplaneError> {
        Ok(KernelNetlink {
            nl: NlSocket::open_in(ns, path)?,
            device: device.to_string(),
        })
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
                kind: other.map_or("unknown kind".to_string(), |k| {
                    format!("{k:?}").to_lowercase()
                }),
            }),
        }
    }

    /// The device's index, if it exists.
    pub fn device_index(&mut self) -> Result<Option<u32>, DataplaneError> {
        Ok(self.device_link()?.map(|l| l.header.index))
    }

    fn addresses(&mut self, index: u32) -> Result<Vec<Ipv4Network>, NlError> {
        let mut q = AddressMessage::default();
        q.header.family = AddressFamily::Inet;
        let mut out: Vec<Ipv4Network> = self
            .nl
            .dump("list addresses", RouteNetlinkMessage::GetAddress(q))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let ip = a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    })?;
                    Ipv4Network::new(ip, a.header.prefix_len).ok()
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
            local: Ipv4Addr::UNSPECIFIED,
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
                                    InfoVxlan::Local(ip) => d.local = *ip,
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
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(want.vni),
                InfoVxlan::Local(want.local),
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

fn link_kind(link: &LinkMessage) -> Option<InfoKind> {
    link_attr(link, |a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    })
}

fn address_message(index: u32, a: Ipv4Network) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = a.prefix();
    msg.header.index = index;
    msg.attributes
        .push(AddressAttribute::Local(IpAddr::V4(a.ip())));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(a.ip())));
    msg
}

fn neighbour_message(index: u32, n: &Neighbour) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
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
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            f.dst,
        )));
    msg
}

fn route_message(r: &Route, device_index: Option<u32>) -> Option<RouteMessage> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = r.dst.prefix();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(
            r.dst.network(),
        )));
    let (gateway, oif) = match r.via {
        Via::Overlay { gateway } => {
            msg.header.flags = RouteFlags::Onlink;
            (gateway, device_index?)
        }
        Via::Direct { gateway, index } => (gateway, index),
    };
    msg.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
    msg.attributes.push(RouteAttribute::Oif(oif));
    Some(msg)
}

fn neighbour_mac(attrs: &[NeighbourAttribute]) -> Option<MacAddr> {
    attrs.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
            Some(MacAddr(b.as_slice().try_into().expect("6 bytes")))
        }
        _ => None,
    })
}

fn neighbour_ipv4(attrs: &[NeighbourAttribute]) -> Option<Ipv4Addr> {
    attrs.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
            Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        }
        _ => None,
    })
}

/// A main-table IPv4 route carrying weft's protocol, as weft's model (None for anything else).
fn parse_route(r: &RouteMessage, device_index: Option<u32>) -> Option<Route> {
    if r.header.address_family != AddressFamily::Inet
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
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
            RouteAttribute::Oif(o) => oif = Some(*o),
            _ => {}
        }
    }
    let dst = Ipv4Network::new(dst, r.header.destination_prefix_length).ok()?;
    // A route of ours without a gateway or device is not one weft makes; report it with an
    // unspecified gateway so that the diff replaces or removes it.
    let gateway = gateway.unwrap_or(Ipv4Addr::UNSPECIFIED);
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

        let mut q = RouteMessage::default();
        q.header.address_family = AddressFamily::Inet;
        for m in self
            .nl
            .dump("list routes", RouteNetlinkMessage::GetRoute(q))?
        {
            if let RouteNetlinkMessage::NewRoute(r) = m {
                if let Some(route) = parse_route(&r, index) {
                    state.routes.insert(route);
                }
            }
        }
        let Some(index) = index else {
            return Ok(state);
        };

        let mut q = NeighbourMessage::default();
        q.header.family = AddressFamily::Inet;
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
            let Some(ip) = neighbour_ipv4(&n.attributes) else {
                continue;
            };
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
                (neighbour_mac(&n.attributes), neighbour_ipv4(&n.attributes))
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
                    (Op::DeleteRoute(r), _) => {
                        // Deleting by destination, table and protocol: the device is not
                        // needed (and may be gone already).
                        let mut m = route_message(r, index.or(Some(0))).expect("index given");
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
#[derive(Debug, Default)]
pub struct FakeNetlink {
    pub state: KernelState,
    /// Every operation applied, in order.
    pub applied: Vec<Op>,
    /// Number of `observe` calls.
    pub observed: usize,
    /// Operations matching this predicate fail (to test retries).
    pub fail_if: Option<fn(&Op) -> bool>,
}

impl Netlink for FakeNetlink {
    fn observe(&mut self) -> Result<KernelState, DataplaneError> {
        self.observed += 1;
        Ok(self.state.clone())
    }

    fn apply(&mut self, ops: &[Op]) -> ApplyReport {
        let mut report = ApplyReport::default();
        for op in ops {
            if self.fail_if.is_some_and(|f| f(op)) {
                report
                    .failures
                    .push((op.clone(), "injected failure".into()));
                continue;
            }
            let s = &mut self.state;
            match op {
                Op::SetDevice(d) => {
                    if s.device.as_ref().is_some_and(|o| o.needs_recreate(d)) {
                        s.neighbours.clear();
                        s.fdb.clear();
                        s.routes.retain(|r| matches!(r.via, Via::Direct { .. }));
                    }
                    s.device = Some((**d).clone());
                }
                Op::DeleteDevice(_) => {
                    s.device = None;
                    s.neighbours.clear();
                    s.fdb.clear();
                    s.routes.retain(|r| matches!(r.via, Via::Direct { .. }));
                }
                Op::SetNeighbour(n) => {
                    if s.device.is_none() {
                        report.failures.push((op.clone(), "no device".into()));
                        continue;
                    }
                    s.neighbours.retain(|o| o.ip != n.ip);
                    s.neighbours.insert(*n);
                }
                Op::DeleteNeighbour(n) => {
                    s.neighbours.retain(|o| o.ip != n.ip);
                }
                Op::SetFdb(f) => {
                    if s.device.is_none() {
                        report.failures.push((op.clone(), "no device".into()));
                        continue;
                    }
                    s.fdb.retain(|o| o.mac != f.mac);
                    s.fdb.insert(*f);
                }
                Op::DeleteFdb(f) => {
                    s.fdb.remove(f);
                }
                Op::SetRoute(r) => {
                    if matches!(r.via, Via::Overlay { .. }) && s.device.is_none() {
                        report.failures.push((op.clone(), "no device".into()));
                        continue;
                    }
                    s.routes.retain(|o| o.dst != r.dst);
                    s.routes.insert(*r);
                }
                Op::DeleteRoute(r) => {
                    s.routes.retain(|o| o.dst != r.dst);
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
    /// A link was added/changed (`deleted == false`) or deleted.
    Link {
        name: Option<String>,
        index: u32,
        deleted: bool,
    },
    /// A neighbour or FDB entry changed or was deleted on the link `index`.
    Neighbour {
        index: u32,
        fdb: bool,
        deleted: bool,
        permanent: bool,
    },
    /// A route changed or was deleted.
    Route {
        protocol: u8,
        table: u32,
        deleted: bool,
    },
    /// The socket lost notifications (its buffer overran): only a full look is safe.
    Overrun,
}

impl Notification {
    /// Whether this may have changed weft's state, given its device's name and index.
    /// Deletions of anything of weft's, any change to its device, non-permanent neighbour
    /// entries on its device, and main-table routes installed by someone else (which may
    /// replace one of weft's) matter; weft's own additions do not.
    pub fn concerns_weft(&self, device: &str, device_index: Option<u32>) -> bool {
        match self {
            Notification::Overrun => true,
            Notification::Link { name, index, .. } => {
                name.as_deref() == Some(device) || Some(*index) == device_index
            }
            Notification::Neighbour {
                index,
                deleted,
                permanent,
                ..
            } => Some(*index) == device_index && (*deleted || !*permanent),
            Notification::Route {
                protocol,
                table,
                deleted,
            } => {
                *table == u32::from(RouteHeader::RT_TABLE_MAIN)
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
const RTNLGRP_IPV4_ROUTE: u32 = 7;

/// Receive buffer for the listener: a burst of 15,000 notifications fits in 8 MB.
const MONITOR_RCVBUF: usize = 8 * 1024 * 1024;

/// A listener for link, neighbour/FDB and IPv4 route notifications in the namespace it was
/// opened in.
#[derive(Debug)]
pub struct Monitor {
    socket: Socket,
    buf: Vec<u8>,
}

impl Monitor {
    /// Subscribe, with a large buffer and a receive timeout so that the owner can stop it.
    pub fn open(timeout: std::time::Duration) -> Result<Monitor, NlError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NlError::Socket)?;
        socket
            .bind(&SocketAddr::new(0, 0))
            .map_err(NlError::Socket)?;
        for g in [RTNLGRP_LINK, RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE] {
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

fn reduce(m: RouteNetlinkMessage) -> Option<Notification> {
    use RouteNetlinkMessage as M;
    let (deleted, m) = match m {
        M::DelLink(_) | M::DelNeighbour(_) | M::DelRoute(_) => (true, m),
        _ => (false, m),
    };
    Some(match m {
        M::NewLink(l) | M::DelLink(l) => Notification::Link {
            name: link_attr(&l, |a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }),
            index: l.header.index,
            deleted,
        },
        M::NewNeighbour(n) | M::DelNeighbour(n) => Notification::Neighbour {
            index: n.header.ifindex,
            fdb: n.header.family == AddressFamily::Bridge,
            deleted,
            permanent: n.header.state == NeighbourState::Permanent,
        },
        M::NewRoute(r) | M::DelRoute(r) => Notification::Route {
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

/// Remove weft's data plane from the calling thread's namespace whatever its configuration
/// was: every VXLAN link named `weft.<number>` (with every entry on it) and every main-table
/// route carrying [`ROUTE_PROTOCOL`]. Links of other kinds with such names are left alone.
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
            let ours = name
                .strip_prefix("weft.")
                .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
            if ours && link_kind(&l) == Some(InfoKind::Vxlan) {
                devices.push(name);
            }
        }
    }
    let mut removed = Removed::default();
    // Routes first (as a peer's removal does), then the devices.
    let mut kernel = KernelNetlink {
        nl,
        device: devices.first().cloned().unwrap_or_else(|| "weft.1".into()),
    };
    let routes: Vec<Op> = kernel
        .observe()?
        .routes
        .into_iter()
        .map(Op::DeleteRoute)
        .collect();
    let report = kernel.apply(&routes);
    if let Some((op, why)) = report.failures.into_iter().next() {
        return Err(DataplaneError::Refused {
            op: format!("{op:?}"),
            reason: why,
        });
    }
    removed.routes = routes.len();
    for d in devices {
        if kernel.nl.delete_link_by_name(&d)? {
            removed.devices.push(d);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_notifications_about_weft_state_kick_a_pass() {
        let dev = "weft.1";
        let idx = Some(7);
        let cases = [
            (Notification::Overrun, true),
            (
                Notification::Link {
                    name: Some(dev.into()),
                    index: 7,
                    deleted: true,
                },
                true,
            ),
            (
                Notification::Link {
                    name: Some("eth0".into()),
                    index: 2,
                    deleted: false,
                },
                false,
            ),
            // weft's own permanent entries appearing: no pass.
            (
                Notification::Neighbour {
                    index: 7,
                    fdb: false,
                    deleted: false,
                    permanent: true,
                },
                false,
            ),
            (
                Notification::Neighbour {
                    index: 7,
                    fdb: true,
                    deleted: true,
                    permanent: true,
                },
                true,
            ),
            (
                Notification::Neighbour {
                    index: 7,
                    fdb: false,
                    deleted: false,
                    permanent: false,
                },
                true,
            ),
            (
                Notification::Neighbour {
                    index: 3,
                    fdb: false,
                    deleted: true,
                    permanent: true,
                },
                false,
            ),
            (
                Notification::Route {
                    protocol: ROUTE_PROTOCOL,
                    table: 254,
                    deleted: true,
                },
                true,
            ),
            (
                Notification::Route {
                    protocol: ROUTE_PROTOCOL,
                    table: 254,
                    deleted: false,
                },
                false,
            ),
            // Someone else's route in the main table may shadow one of weft's.
            (
                Notification::Route {
                    protocol: 4,
                    table: 254,
                    deleted: false,
                },
                true,
            ),
            (
                Notification::Route {
                    protocol: 4,
                    table: 254,
                    deleted: true,
                },
                false,
            ),
            (
                Notification::Route {
                    protocol: 2,
                    table: 254,
                    deleted: false,
                },
                false,
            ),
            (
                Notification::Route {
                    protocol: 4,
                    table: 100,
                    deleted: false,
                },
                false,
            ),
        ];
        for (n, want) in cases {
            assert_eq!(n.concerns_weft(dev, idx), want, "{n:?}");
        }
        // Before the device exists, entries on index 7 are someone else's.
        let n = Notification::Neighbour {
            index: 7,
            fdb: true,
            deleted: true,
            permanent: true,
        };
        assert!(!n.concerns_weft(dev, None));
    }
}
