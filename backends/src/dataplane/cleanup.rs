//! Removing weft's data plane from a node (`weftd --cleanup`).

use netlink_packet_route::link::{InfoKind, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use crate::backend::vxlan::is_weft_device_name;
use crate::backend::wireguard;
use crate::dataplane::DataplaneError;
use crate::netlink::{link_kind, link_name, NlSocket, Request};
use crate::route::{delete_request, dump_routes};
use crate::IpFamily;

/// What [`remove_weft_state`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub devices: Vec<String>,
    pub routes: usize,
}

/// Remove weft's data plane, both families, from the calling thread's namespace whatever its
/// configuration was: every main-table route carrying [`ROUTE_PROTOCOL`](crate::route::ROUTE_PROTOCOL) (IPv4 and IPv6),
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
        if let Some(name) = link_name(&l) {
            let kind = link_kind(&l);
            let vxlan = is_weft_device_name(&name) && kind == Some(InfoKind::Vxlan);
            // A userspace implementation's device is a TUN device; deleting it ends the
            // program serving it.
            let wireguard = wireguard::is_weft_device_name(&name)
                && matches!(kind, Some(InfoKind::Wireguard) | Some(InfoKind::Tun));
            if vxlan || wireguard {
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
        let reqs: Vec<Request> = routes.iter().map(delete_request).collect();
        for (req, result) in reqs.iter().zip(nl.ack_batch(&reqs)) {
            match result {
                Ok(()) => removed.routes += 1,
                Err(e) if e.is_gone() => {}
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
