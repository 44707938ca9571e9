//! The vxlan backend in the kernel: its device (route netlink link messages with the
//! `vxlan` kind), the device's address, and the permanent neighbour and FDB entries on it —
//! read back into a [`VxlanState`] and changed by [`VxlanOp`]s.

use std::net::IpAddr;

use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::LinkVxlan;

use super::{FdbEntry, Neighbour, VxlanDevice, VxlanOp, VxlanState};
use crate::dataplane::DataplaneError;
use crate::netlink::{
    address_family, kernels_own_neighbour, link_addresses, link_kind, neighbour_ip, neighbour_mac,
    set_addresses, NlError, NlSocket, Request, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE,
};
use crate::{IpFamily, MacAddr};

/// The vxlan backend's objects of one family, around the device called `device`.
#[derive(Debug, Clone)]
pub struct VxlanKernel {
    pub device: String,
    pub family: IpFamily,
}

/// What becomes of an entry operation.
pub(crate) enum EntryRequest {
    /// Send this request (in a batch).
    Send(Request),
    /// Nothing to do: a deletion from a device that does not exist.
    Done,
    /// It cannot be applied until the device exists again.
    NoDevice,
}

impl VxlanKernel {
    /// The device's link message, if it exists; an error if the name is taken by another kind.
    fn device_link(&self, nl: &mut NlSocket) -> Result<Option<LinkMessage>, DataplaneError> {
        let Some(link) = nl.link_by_name(&self.device)? else {
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
    pub fn device_index(&self, nl: &mut NlSocket) -> Result<Option<u32>, DataplaneError> {
        Ok(self.device_link(nl)?.map(|l| l.header.index))
    }

    fn observe_device(
        &self,
        nl: &mut NlSocket,
    ) -> Result<Option<(u32, VxlanDevice)>, DataplaneError> {
        let Some(link) = self.device_link(nl)? else {
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
            addresses: link_addresses(nl, index, self.family)?,
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

    /// The backend's objects of this family: the device (if present) with the family's
    /// addresses on it (never IPv6 link-local ones), the family's neighbour entries and every
    /// FDB entry on it; and the device's index (routes out of it are overlay routes).
    pub fn observe(&self, nl: &mut NlSocket) -> Result<(Option<u32>, VxlanState), DataplaneError> {
        let mut state = VxlanState::default();
        let Some((index, device)) = self.observe_device(nl)? else {
            return Ok((None, state));
        };
        state.device = Some(device);

        let mut q = NeighbourMessage::default();
        q.header.family = address_family(self.family);
        q.header.ifindex = index;
        for m in nl.dump("list neighbours", RouteNetlinkMessage::GetNeighbour(q))? {
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
        for m in nl.dump("list FDB entries", RouteNetlinkMessage::GetNeighbour(q))? {
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
        Ok((Some(index), state))
    }

    /// Apply a device operation at once (the entries need the device's index); None for an
    /// entry operation, which goes in a batch ([`VxlanKernel::entry_request`]).
    pub(crate) fn apply_device_op(
        &self,
        nl: &mut NlSocket,
        op: &VxlanOp,
    ) -> Option<Result<(), DataplaneError>> {
        match op {
            VxlanOp::SetDevice(d) => Some(self.set_device(nl, d)),
            VxlanOp::DeleteDevice(name) => Some(
                nl.delete_link_by_name(name)
                    .map(drop)
                    .map_err(DataplaneError::from),
            ),
            _ => None,
        }
    }

    /// The request for an entry operation on the device with index `index` (None: the
    /// device does not exist).
    pub(crate) fn entry_request(op: &VxlanOp, index: Option<u32>) -> EntryRequest {
        let Some(i) = index else {
            // Entries on a device that does not exist: there is nothing to delete, and
            // nothing to add until the device is back.
            return if op.is_deletion() {
                EntryRequest::Done
            } else {
                EntryRequest::NoDevice
            };
        };
        EntryRequest::Send(match op {
            VxlanOp::SetNeighbour(n) => Request {
                op: format!("set neighbour {} lladdr {}", n.ip, n.mac),
                msg: RouteNetlinkMessage::NewNeighbour(neighbour_message(i, n)),
                flags: NLM_F_CREATE | NLM_F_REPLACE,
            },
            VxlanOp::DeleteNeighbour(n) => Request {
                op: format!("delete neighbour {}", n.ip),
                msg: RouteNetlinkMessage::DelNeighbour(neighbour_message(i, n)),
                flags: 0,
            },
            VxlanOp::SetFdb(f) => Request {
                op: format!("set FDB entry {} dst {}", f.mac, f.dst),
                msg: RouteNetlinkMessage::NewNeighbour(fdb_message(i, f)),
                flags: NLM_F_CREATE | NLM_F_REPLACE,
            },
            VxlanOp::DeleteFdb(f) => Request {
                op: format!("delete FDB entry {} dst {}", f.mac, f.dst),
                msg: RouteNetlinkMessage::DelNeighbour(fdb_message(i, f)),
                flags: 0,
            },
            VxlanOp::SetDevice(_) | VxlanOp::DeleteDevice(_) => {
                unreachable!("device operations are applied at once")
            }
        })
    }

    fn set_device(&self, nl: &mut NlSocket, want: &VxlanDevice) -> Result<(), DataplaneError> {
        let index = match self.observe_device(nl)? {
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
                    nl.ack(
                        &format!("update VXLAN device {}", want.name),
                        RouteNetlinkMessage::SetLink(msg),
                        0,
                    )?;
                }
                index
            }
            Some(_) => {
                nl.delete_link_by_name(&want.name)?;
                create_device(nl, want)?
            }
            None => create_device(nl, want)?,
        };
        set_addresses(nl, index, &want.name, self.family, &want.addresses)?;
        Ok(())
    }
}

fn create_device(nl: &mut NlSocket, want: &VxlanDevice) -> Result<u32, DataplaneError> {
    nl.ack(
        &format!(
            "create VXLAN device {} (VNI {}, port {}, local {})",
            want.name, want.vni, want.port, want.local
        ),
        RouteNetlinkMessage::NewLink(new_device_message(want)),
        NLM_F_CREATE | NLM_F_EXCL,
    )?;
    let index = nl
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
    nl.ack(
        &format!("bring up {}", want.name),
        RouteNetlinkMessage::SetLink(up),
        0,
    )?;
    Ok(index)
}

/// The message that creates the device as wanted (up, learning and miss notifications off).
fn new_device_message(want: &VxlanDevice) -> LinkMessage {
    let b = LinkVxlan::new(&want.name, want.vni)
        .dev(want.underlay_index)
        .port(want.port)
        .learning(want.learning)
        .l2miss(false)
        .l3miss(false)
        .mtu(want.mtu)
        .address(want.mac.0.to_vec())
        .up();
    match want.local {
        IpAddr::V4(ip) => b.local(ip),
        IpAddr::V6(ip) => b.local6(ip),
    }
    .build()
}

fn neighbour_message(index: u32, n: &Neighbour) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = address_family(IpFamily::of(n.ip));
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
