//! The probe responder: a UDP socket per family on the probe port, bound to every address,
//! that echoes each probe request back as a reply (see [`super::wire`]). No raw socket: a
//! plain UDP socket needs no capability.
//!
//! The reply leaves from the address the request was sent to (IP_PKTINFO), not from the
//! one the route back would pick: a prober takes a reply only from the address it probed.
//! With DirectRouting, for instance, the route back to a peer's pod subnet leaves from the
//! underlay address, while the probe came to the overlay one.

use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrStorage,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use weft_backends::IpFamily;

use super::wire;

/// What the responder counts.
pub trait ResponderCounts: Send + Sync {
    /// A request answered.
    fn answered(&self);
    /// A datagram that is not a probe request, or a reply that could not be sent.
    fn dropped(&self);
}

/// The responder's socket of `family` on `port`, bound to every address of the family.
/// Opened at start, so that a port in use is reported before anything else runs.
pub fn bind(family: IpFamily, port: u16) -> std::io::Result<UdpSocket> {
    let (domain, addr) = match family {
        IpFamily::V4 => (
            socket2::Domain::IPV4,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        ),
        IpFamily::V6 => (
            socket2::Domain::IPV6,
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
        ),
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if family == IpFamily::V6 {
        // The IPv4 socket serves IPv4.
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    match family {
        IpFamily::V4 => setsockopt(&s, sockopt::Ipv4PacketInfo, &true),
        IpFamily::V6 => setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true),
    }
    .map_err(std::io::Error::from)?;
    UdpSocket::from_std(s.into())
}

/// One datagram received: its source, the local address it was sent to, its length.
struct Received {
    from: SocketAddr,
    to: Option<IpAddr>,
    len: usize,
}

fn receive(fd: i32, buf: &mut [u8]) -> std::io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(nix::libc::in6_pktinfo);
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
        .map_err(std::io::Error::from)?;
    let mut to = None;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        match c {
            ControlMessageOwned::Ipv4PacketInfo(i) => {
                to = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr))));
            }
            ControlMessageOwned::Ipv6PacketInfo(i) => {
                to = Some(IpAddr::V6(Ipv6Addr::from(i.ipi6_addr.s6_addr)));
            }
            _ => {}
        }
    }
    let from = msg
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                })
        })
        .ok_or_else(|| std::io::Error::other("a datagram without a source address"))?;
    Ok(Received {
        from,
        to,
        len: msg.bytes,
    })
}

/// Send `reply` to `to`, from the local address `from` when known.
fn reply(fd: i32, reply: &[u8], to: SocketAddr, from: Option<IpAddr>) -> std::io::Result<()> {
    let iov = [IoSlice::new(reply)];
    let dst = SockaddrStorage::from(to);
    let v4;
    let v6;
    let mut cmsgs = Vec::new();
    match from {
        Some(IpAddr::V4(a)) => {
            v4 = nix::libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: nix::libc::in_addr {
                    s_addr: u32::from(a).to_be(),
                },
                ipi_addr: nix::libc::in_addr { s_addr: 0 },
            };
            cmsgs.push(ControlMessage::Ipv4PacketInfo(&v4));
        }
        Some(IpAddr::V6(a)) => {
            v6 = nix::libc::in6_pktinfo {
                ipi6_addr: nix::libc::in6_addr {
                    s6_addr: a.octets(),
                },
                ipi6_ifindex: 0,
            };
            cmsgs.push(ControlMessage::Ipv6PacketInfo(&v6));
        }
        None => {}
    }
    sendmsg(fd, &iov, &cmsgs, MsgFlags::MSG_DONTWAIT, Some(&dst))
        .map(drop)
        .map_err(std::io::Error::from)
}

/// Answer probes on `sock` until it fails.
pub async fn serve(sock: UdpSocket, counts: &dyn ResponderCounts) -> std::io::Result<()> {
    let fd = sock.as_raw_fd();
    let mut buf = vec![0u8; wire::MAX_LEN];
    loop {
        let got = sock
            .async_io(Interest::READABLE, || receive(fd, &mut buf))
            .await;
        let got = match got {
            Ok(g) => g,
            // An ICMP error for an earlier reply, reported on the socket: not ours to mind.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        };
        let Some(n) = wire::answer_in_place(&mut buf[..got.len]) else {
            counts.dropped();
            continue;
        };
        match reply(fd, &buf[..n], got.from, got.to) {
            Ok(()) => counts.answered(),
            // A full send queue or a vanished route: the prober retries.
            Err(_) => counts.dropped(),
        }
    }
}
