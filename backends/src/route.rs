//! Routes to peer subnets: the one kind of kernel object every backend programs. The model
//! ([`Route`], [`Via`]), the protocol number that marks weft's routes, and the rtnetlink
//! messages that add, delete and read them back.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::netlink::{address_family, NlError, NlSocket, Request};
use crate::IpFamily;

/// The route protocol number that marks weft's routes (`ip route ... proto 87`); routes with
/// it that no lease explains are weft's to remove.
pub const ROUTE_PROTOCOL: u8 = 87;

/// How a peer subnet is routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    /// `via <peer subnet network address> dev <the backend's device> onlink`.
    Overlay { gateway: IpAddr },
    /// `via <peer public IP> dev <underlay>` (DirectRouting and host-gw).
    Direct { gateway: IpAddr, index: u32 },
    /// `dev <the backend's device> scope link`, no gateway: the device takes every packet
    /// for the destination (wireguard's route for the whole cluster network).
    Device,
}

impl Via {
    /// The next hop, for the routes that have one.
    pub fn gateway(&self) -> Option<IpAddr> {
        match *self {
            Via::Overlay { gateway } | Via::Direct { gateway, .. } => Some(gateway),
            Via::Device => None,
        }
    }

    /// Whether the route goes through the backend's device (and so needs it).
    pub fn through_device(&self) -> bool {
        matches!(self, Via::Overlay { .. } | Via::Device)
    }
}

/// A main-table route to a peer's subnet, carrying [`ROUTE_PROTOCOL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub dst: IpNetwork,
    pub via: Via,
}

impl Route {
    /// Whether the route and its gateway are of `family`.
    pub fn is_of(&self, family: IpFamily) -> bool {
        IpFamily::of(self.dst.ip()) == family
            && self.via.gateway().is_none_or(|g| IpFamily::of(g) == family)
    }
}

/// Every main-table route of `family` carrying [`ROUTE_PROTOCOL`]. Routes out of
/// `device_index` (the backend's device) are overlay routes, the others direct ones.
pub(crate) fn dump_routes(
    nl: &mut NlSocket,
    family: IpFamily,
    device_index: Option<u32>,
) -> Result<BTreeSet<Route>, NlError> {
    let mut q = RouteMessage::default();
    q.header.address_family = address_family(family);
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

/// The message that installs `r`; None for an overlay route while the device is missing.
pub(crate) fn route_message(r: &Route, device_index: Option<u32>) -> Option<RouteMessage> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = address_family(IpFamily::of_network(r.dst));
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
            (Some(gateway), device_index?)
        }
        Via::Direct { gateway, index } => (Some(gateway), index),
        Via::Device => {
            msg.header.scope = RouteScope::Link;
            (None, device_index?)
        }
    };
    if let Some(gateway) = gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
    }
    msg.attributes.push(RouteAttribute::Oif(oif));
    Some(msg)
}

/// The request that installs `r` (replacing what is there); None for an overlay route while
/// the device is missing.
pub(crate) fn set_request(r: &Route, device_index: Option<u32>) -> Option<Request> {
    Some(Request {
        op: format!("set route {}", r.dst),
        msg: RouteNetlinkMessage::NewRoute(route_message(r, device_index)?),
        flags: crate::netlink::NLM_F_CREATE | crate::netlink::NLM_F_REPLACE,
    })
}

/// The request that deletes weft's route to `r.dst`: by destination, table and protocol,
/// so the device is not needed (and may be gone already).
pub(crate) fn delete_request(r: &Route) -> Request {
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

/// A main-table route of `family` carrying weft's protocol, as weft's model (None for
/// anything else).
pub(crate) fn parse_route(
    r: &RouteMessage,
    family: IpFamily,
    device_index: Option<u32>,
) -> Option<Route> {
    if r.header.address_family != address_family(family)
        || r.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL)
    {
        return None;
    }
    if route_table(r) != u32::from(RouteHeader::RT_TABLE_MAIN) {
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
    // A route of ours without a device, or without a gateway off the backend's device, is
    // not one weft makes; report it with an unspecified gateway so that the diff replaces or
    // removes it.
    let oif = oif.unwrap_or(0);
    let on_device = device_index.is_some() && Some(oif) == device_index;
    let via = match (gateway, on_device) {
        (None, true) => Via::Device,
        (Some(gateway), true) => Via::Overlay { gateway },
        (gateway, false) => Via::Direct {
            gateway: gateway.unwrap_or(family.unspecified()),
            index: oif,
        },
    };
    Some(Route { dst, via })
}

/// The table a route message is in (the attribute wins over the 8-bit header field).
pub(crate) fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::AddressFamily;
    use IpFamily::{V4, V6};

    #[test]
    fn a_v6_route_is_encoded_for_the_kernel_and_read_back() {
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
    }

    #[test]
    fn a_route_through_the_device_has_no_gateway_and_link_scope() {
        let r = Route {
            dst: "10.244.0.0/16".parse().unwrap(),
            via: Via::Device,
        };
        assert_eq!(route_message(&r, None), None, "it needs the device");
        let m = route_message(&r, Some(4)).unwrap();
        assert_eq!(m.header.scope, RouteScope::Link);
        assert!(!m.header.flags.contains(RouteFlags::Onlink));
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Gateway(_))));
        assert!(m.attributes.contains(&RouteAttribute::Oif(4)));
        assert_eq!(parse_route(&m, V4, Some(4)), Some(r));
        // The same route out of another link is not through the device: replaced by the diff.
        assert_eq!(
            parse_route(&m, V4, Some(5)).map(|r| r.via),
            Some(Via::Direct {
                gateway: "0.0.0.0".parse().unwrap(),
                index: 4
            })
        );
    }
}
