//! A small blocking rtnetlink client: one socket, each request answered by an ACK, one reply
//! or a dump. Blocking is deliberate: the CNI plugin makes a handful of requests per call and
//! gains nothing from an async runtime, and a netlink socket is bound to the network namespace
//! it was opened in, so a socket for a pod's namespace is opened on a short-lived thread that
//! entered it ([`NlSocket::open_in`]) and then used from anywhere without moving the caller.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;

use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::{is_link_local, IpFamily, MacAddr};

pub use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};

/// A netlink failure: the socket itself, a refusal by the kernel (with what was asked), or
/// an answer that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    // Each message carries its cause itself, so none is marked as a `source`: a chain
    // printer would print it twice.
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    #[error("{op}: {error}")]
    Kernel { op: String, error: io::Error },
    #[error("{op}: cannot decode the kernel's answer: {problem}")]
    Decode { op: String, problem: String },
    #[error("cannot enter network namespace {path}: {error}")]
    Namespace { path: String, error: io::Error },
}

impl NlError {
    /// The errno the kernel answered with, if this is a refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Kernel { error, .. } => error.raw_os_error(),
            _ => None,
        }
    }

    pub fn is(&self, errno: nix::errno::Errno) -> bool {
        self.errno() == Some(errno as i32)
    }

    /// Whether the kernel said that the object asked about does not exist (a deletion of
    /// something already gone counts as done).
    pub fn is_gone(&self) -> bool {
        use nix::errno::Errno;
        self.is(Errno::ENOENT) || self.is(Errno::ESRCH) || self.is(Errno::ENODEV)
    }
}

/// One rtnetlink socket in the namespace it was opened in.
#[derive(Debug)]
pub struct NlSocket {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

const RECV_BUF: usize = 64 * 1024;

/// Requests sent per `send` in [`NlSocket::ack_batch`]. Larger batches gain little and risk
/// ENOBUFS on the ACKs (each ACK is its own socket buffer).
pub const BATCH: usize = 128;

/// Kernel socket receive buffer asked for on sockets that send batches (the kernel doubles it);
/// a smaller one (a process without the right to force it) only means that a large batch may
/// be refused.
pub const BATCH_SOCKET_RCVBUF: usize = 4 * 1024 * 1024;

/// One request of a batch: what it is for (used in errors), the message, extra header flags.
#[derive(Debug, Clone)]
pub struct Request {
    pub op: String,
    pub msg: RouteNetlinkMessage,
    pub flags: u16,
}

impl NlSocket {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<NlSocket, NlError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NlError::Socket)?;
        socket.bind_auto().map_err(NlError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NlError::Socket)?;
        Ok(NlSocket {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// The receive buffer the kernel gave the socket, in bytes.
    pub fn receive_buffer(&self) -> Result<usize, NlError> {
        use nix::sys::socket::{getsockopt, sockopt};
        getsockopt(&self.socket, sockopt::RcvBuf).map_err(|e| NlError::Socket(e.into()))
    }

    /// Ask for a large receive buffer (needed for batches and for event listeners, whose
    /// notifications arrive faster than they are read). `SO_RCVBUFFORCE` works as root and
    /// ignores `rmem_max`; otherwise the ordinary, capped option is used.
    pub fn set_receive_buffer(&self, bytes: usize) -> Result<(), NlError> {
        set_receive_buffer(&self.socket, bytes)
    }

    /// A socket in the network namespace `ns` (an open nsfs file such as
    /// `/proc/<pid>/ns/net` or `/run/netns/<name>`). Only a scoped helper thread enters the
    /// namespace; the caller's thread never changes namespace.
    pub fn open_in(ns: &File, path: &str) -> Result<NlSocket, NlError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                    |e| NlError::Namespace {
                        path: path.to_string(),
                        error: e.into(),
                    },
                )?;
                NlSocket::open()
            })
            .join()
            .unwrap_or_else(|_| {
                Err(NlError::Socket(io::Error::other(
                    "namespace helper thread panicked",
                )))
            })
        })
    }

    /// Send `msg` and wait for the kernel's ACK.
    pub fn ack(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<(), NlError> {
        self.exchange(op, msg, flags | NLM_F_ACK).map(drop)
    }

    /// Send many requests, [`BATCH`] per `send`, and collect one result per request, in order.
    /// The kernel processes them in order; a refusal does not stop the ones after it. A socket
    /// failure fails every request whose outcome was not known yet.
    pub fn ack_batch(&mut self, reqs: &[Request]) -> Vec<Result<(), NlError>> {
        let mut results = Vec::with_capacity(reqs.len());
        for chunk in reqs.chunks(BATCH) {
            results.extend(self.ack_chunk(chunk));
        }
        results
    }

    /// One send for the whole chunk. Only the last request asks for an ACK: the kernel
    /// answers the others only if they fail, and it handles a send in order, so the last
    /// ACK means every request before it is done. That saves one message and one `recv` per
    /// request.
    fn ack_chunk(&mut self, chunk: &[Request]) -> Vec<Result<(), NlError>> {
        let first = self.seq.wrapping_add(1);
        let mut out = Vec::new();
        for (i, r) in chunk.iter().enumerate() {
            self.seq = self.seq.wrapping_add(1);
            let mut header = NetlinkHeader::default();
            let ack = if i + 1 == chunk.len() { NLM_F_ACK } else { 0 };
            header.flags = NLM_F_REQUEST | ack | r.flags;
            header.sequence_number = self.seq;
            let mut packet =
                NetlinkMessage::new(header, NetlinkPayload::InnerMessage(r.msg.clone()));
            packet.finalize();
            let at = out.len();
            out.resize(at + packet.buffer_len(), 0);
            packet.serialize(&mut out[at..]);
        }
        let last = chunk.len() - 1;
        let mut results: Vec<Option<Result<(), NlError>>> =
            (0..chunk.len()).map(|_| None).collect();
        let fail_rest = |results: &mut Vec<Option<Result<(), NlError>>>, e: &io::Error| {
            for (i, slot) in results.iter_mut().enumerate() {
                if slot.is_none() {
                    *slot = Some(Err(NlError::Kernel {
                        op: chunk[i].op.clone(),
                        error: io::Error::new(e.kind(), e.to_string()),
                    }));
                }
            }
        };
        if let Err(e) = self.socket.send(&out, 0) {
            fail_rest(&mut results, &e);
            return results.into_iter().flatten().collect();
        }
        while results[last].is_none() {
            self.buf.clear();
            let n = match self.socket.recv(&mut self.buf, 0) {
                Ok(n) => n,
                Err(e) => {
                    fail_rest(&mut results, &e);
                    break;
                }
            };
            let mut at = 0;
            while at < n {
                let Ok(parsed) =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[at..n])
                else {
                    break;
                };
                let len = parsed.header.length as usize;
                if len == 0 {
                    break;
                }
                at += (len + 3) & !3;
                let i = parsed.header.sequence_number.wrapping_sub(first) as usize;
                if i >= chunk.len() || results[i].is_some() {
                    continue; // not an answer to this chunk
                }
                if let NetlinkPayload::Error(e) = parsed.payload {
                    results[i] = Some(match e.code {
                        None => Ok(()),
                        Some(_) => Err(NlError::Kernel {
                            op: chunk[i].op.clone(),
                            error: e.to_io(),
                        }),
                    });
                }
            }
        }
        // Everything the kernel did not complain about before the last ACK succeeded.
        results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
    }

    /// Send a non-dump GET and return the one reply.
    pub fn get(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<RouteNetlinkMessage, NlError> {
        self.exchange(op, msg, NLM_F_ACK)?
            .into_iter()
            .next()
            .ok_or_else(|| NlError::Decode {
                op: op.into(),
                problem: "no reply".into(),
            })
    }

    /// Send a dump request and collect every reply until `NLMSG_DONE`.
    pub fn dump(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        self.exchange(op, msg, NLM_F_DUMP)
    }

    fn exchange(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0).map_err(NlError::Socket)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            let n = self
                .socket
                .recv(&mut self.buf, 0)
                .map_err(NlError::Socket)?;
            let mut at = 0;
            while at < n {
                let frame = &self.buf[at..n];
                let parsed =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(frame).map_err(|e| {
                        NlError::Decode {
                            op: op.into(),
                            problem: e.to_string(),
                        }
                    })?;
                let len = parsed.header.length as usize;
                if len == 0 {
                    break;
                }
                at += (len + 3) & !3;
                if parsed.header.sequence_number != seq {
                    continue; // a late answer to an earlier request
                }
                match parsed.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(_) => Err(NlError::Kernel {
                                op: op.into(),
                                error: e.to_io(),
                            }),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The link called `name`, or `None` if there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<LinkMessage>, NlError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        match self.get(
            &format!("look up link {name}"),
            RouteNetlinkMessage::GetLink(msg),
        ) {
            Ok(RouteNetlinkMessage::NewLink(l)) => Ok(Some(l)),
            Ok(_) => Ok(None),
            Err(e) if e.is(nix::errno::Errno::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Delete the link called `name`; false if there was none.
    pub fn delete_link_by_name(&mut self, name: &str) -> Result<bool, NlError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        match self.ack(
            &format!("delete link {name}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.is(nix::errno::Errno::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

pub(crate) fn set_receive_buffer(socket: &Socket, bytes: usize) -> Result<(), NlError> {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &bytes).is_ok() {
        return Ok(());
    }
    socket.set_rx_buf_sz(bytes).map_err(NlError::Socket)
}

/// The netlink address family of an IP family.
pub fn address_family(family: IpFamily) -> AddressFamily {
    match family {
        IpFamily::V4 => AddressFamily::Inet,
        IpFamily::V6 => AddressFamily::Inet6,
    }
}

/// The IP family of a netlink address family (None for the others).
pub fn ip_family(f: AddressFamily) -> Option<IpFamily> {
    match f {
        AddressFamily::Inet => Some(IpFamily::V4),
        AddressFamily::Inet6 => Some(IpFamily::V6),
        _ => None,
    }
}

/// The address an address message carries, with its prefix. `IFA_LOCAL` is the address
/// itself; `IFA_ADDRESS` is the peer on a point-to-point link, and the only one IPv6 usually
/// sends.
pub fn address_of(a: &AddressMessage) -> Option<IpNetwork> {
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    IpNetwork::new(local.or(address)?, a.header.prefix_len).ok()
}

/// The kind of a link (`vxlan`, `bridge`, …); None for a link without one, such as a NIC.
pub fn link_kind(link: &LinkMessage) -> Option<InfoKind> {
    link_attr(link, |a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    })
}

/// The link's name.
pub fn link_name(link: &LinkMessage) -> Option<String> {
    link_attr(link, |a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// The link-layer address of a neighbour or FDB entry, when it is a MAC.
pub fn neighbour_mac(attrs: &[NeighbourAttribute]) -> Option<MacAddr> {
    attrs.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
            Some(MacAddr(b.as_slice().try_into().expect("6 bytes")))
        }
        _ => None,
    })
}

/// The destination of a neighbour or FDB entry (FDB entries carry it as raw bytes).
pub fn neighbour_ip(attrs: &[NeighbourAttribute]) -> Option<IpAddr> {
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
pub fn kernels_own_neighbour(ip: IpAddr, state: NeighbourState) -> bool {
    state == NeighbourState::Noarp || is_link_local(ip) || ip.is_multicast()
}

/// Read one attribute of a link.
pub fn link_attr<T>(link: &LinkMessage, pick: impl Fn(&LinkAttribute) -> Option<T>) -> Option<T> {
    link.attributes.iter().find_map(pick)
}

/// The addresses of `family` on link `index`, sorted, without IPv6 link-local ones.
pub(crate) fn link_addresses(
    nl: &mut NlSocket,
    index: u32,
    family: IpFamily,
) -> Result<Vec<IpNetwork>, NlError> {
    let mut q = AddressMessage::default();
    q.header.family = address_family(family);
    let mut out: Vec<IpNetwork> = nl
        .dump("list addresses", RouteNetlinkMessage::GetAddress(q))?
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a)
                if a.header.index == index && a.header.family == address_family(family) =>
            {
                address_of(&a).filter(|n| IpFamily::of(n.ip()) == family && !is_link_local(n.ip()))
            }
            _ => None,
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Make `want` the addresses of `family` on link `index` (called `name` in errors). New ones
/// are added before old ones go: when the last IPv4 address leaves a device, the kernel
/// drops every route through it.
pub(crate) fn set_addresses(
    nl: &mut NlSocket,
    index: u32,
    name: &str,
    family: IpFamily,
    want: &[IpNetwork],
) -> Result<(), NlError> {
    let have = link_addresses(nl, index, family)?;
    for a in want.iter().filter(|a| !have.contains(a)) {
        nl.ack(
            &format!("add address {a} to {name}"),
            RouteNetlinkMessage::NewAddress(address_message(index, *a)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
    }
    for a in have.iter().filter(|a| !want.contains(a)) {
        nl.ack(
            &format!("remove address {a} from {name}"),
            RouteNetlinkMessage::DelAddress(address_message(index, *a)),
            0,
        )?;
    }
    Ok(())
}

/// The message that adds (or deletes) address `a` on link `index`.
fn address_message(index: u32, a: IpNetwork) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = address_family(IpFamily::of_network(a));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v6_device_address_skips_duplicate_address_detection() {
        let a = address_message(9, "fc00:0:0:1::/128".parse().unwrap());
        assert_eq!(a.header.family, AddressFamily::Inet6);
        assert!(a.header.flags.contains(AddressHeaderFlags::Nodad));
        let a = address_message(9, "10.244.1.0/32".parse().unwrap());
        assert!(!a.header.flags.contains(AddressHeaderFlags::Nodad));
    }

    #[test]
    fn loopback_is_found_and_a_missing_link_is_none() {
        // Reading links changes nothing, so this runs in whatever namespace the tests run in.
        let mut nl = NlSocket::open().unwrap();
        let lo = nl
            .link_by_name("lo")
            .unwrap()
            .expect("every namespace has lo");
        assert_eq!(
            link_attr(&lo, |a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
            .as_deref(),
            Some("lo")
        );
        assert!(nl.link_by_name("weft-nosuch0").unwrap().is_none());
    }

    #[test]
    fn a_refusal_names_the_operation_and_the_errno() {
        let mut nl = NlSocket::open().unwrap();
        let mut msg = LinkMessage::default();
        msg.header.index = 999_999_999; // no such link; a GET changes nothing
        let err = nl
            .get("look up link 999999999", RouteNetlinkMessage::GetLink(msg))
            .unwrap_err();
        assert!(err.is(nix::errno::Errno::ENODEV), "{err:?}");
        assert!(
            err.to_string().starts_with("look up link 999999999: "),
            "{err}"
        );
    }

    #[test]
    fn a_dump_returns_every_link() {
        let mut nl = NlSocket::open().unwrap();
        let links = nl
            .dump(
                "list links",
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
            )
            .unwrap();
        assert!(!links.is_empty());
        assert!(links
            .iter()
            .all(|m| matches!(m, RouteNetlinkMessage::NewLink(_))));
    }
}
