//! The kernel's notifications, reduced to what decides whether weft must look again, and the
//! listener that receives them.

use std::io;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::route::{RouteHeader, RouteProtocol};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::netlink::{
    address_of, ip_family, kernels_own_neighbour, link_attr, neighbour_ip, NlError,
};
use crate::route::{route_table, ROUTE_PROTOCOL};
use crate::{is_link_local, IpFamily};

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
/// the namespace it was opened in. It receives every family's notifications;
/// [`Notification::concerns_weft`] picks those of one data plane. weftd gives each family's
/// data plane its own listener, so that a listener is restarted with its data plane.
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
                family: ip_family(n.header.family),
                deleted,
                permanent: n.header.state == NeighbourState::Permanent,
            }
        }
        M::NewAddress(a) | M::DelAddress(a) => {
            let family = ip_family(a.header.family)?;
            if address_of(&a).is_some_and(|n| is_link_local(n.ip())) {
                return None;
            }
            Notification::Address {
                index: a.header.index,
                family,
                deleted,
            }
        }
        M::NewRoute(r) | M::DelRoute(r) => Notification::Route {
            family: ip_family(r.header.address_family)?,
            protocol: u8::from(r.header.protocol),
            table: route_table(&r),
            deleted,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::address::{AddressAttribute, AddressMessage};
    use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
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
}
