//! Probing peers: UDP datagrams to their probe port, sent from a few long-lived sockets
//! (per family, one bound to any address for the underlay and one bound to this node's
//! overlay address for the overlay), each read by one task that hands every reply to the
//! probe waiting for it. A probe costs one send and one receive: no socket, bind or
//! connect of its own, which matters at thousands of peers. No raw socket.
//!
//! The sockets are not connected, so the kernel reports an ICMP error through the socket's
//! error queue (IP_RECVERR) instead of as a failed receive. "Port unreachable" from a peer
//! is read there as refused (its host is up, its weftd is not), and is matched to its probe
//! by the id in the datagram the ICMP message quotes, or, when the quote is cut short, by
//! the address probed. A reply counts only when it comes from the address probed and
//! carries the id of a probe waiting on that socket.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::SockaddrStorage;
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use weft_backends::IpFamily;

use super::verdict::{MtuRound, Outcome, Round};
use super::wire::{self, Probe};

/// The smallest probe: the header alone.
pub const SMALL: usize = wire::HEADER_LEN;

/// Where one round of probes goes, and from where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundPlan {
    pub family: IpFamily,
    pub port: u16,
    /// This node's overlay address and the peer's; None for host-gw.
    pub overlay: Option<(IpAddr, IpAddr)>,
    pub public_ip: IpAddr,
    /// Probe at the pod MTU this round (on the overlay, or the underlay for host-gw).
    pub mtu: Option<u32>,
    pub timeout: Duration,
}

/// Probe ids: unique within this process, from a random start so that a reply cannot be
/// guessed from the process's age.
static NEXT_ID: LazyLock<AtomicU64> = LazyLock::new(|| {
    use std::hash::{BuildHasher, Hasher};
    AtomicU64::new(std::hash::RandomState::new().build_hasher().finish())
});

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The smallest IP packet a family must carry: the MTU search's floor.
fn min_mtu(family: IpFamily) -> u32 {
    match family {
        IpFamily::V4 => 576,
        IpFamily::V6 => 1280,
    }
}

/// Set don't-fragment on `s` (IP_PMTUDISC_DO / IPV6_PMTUDISC_DO): a probe larger than the
/// path MTU is dropped or refused, never fragmented on the way, so that an MTU probe tests
/// the path MTU. socket2 and nix have no call for this option.
#[allow(unsafe_code)]
fn set_dont_fragment(s: &socket2::Socket, family: IpFamily) -> std::io::Result<()> {
    use nix::libc;
    let (level, name, value) = match family {
        IpFamily::V4 => (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        ),
        IpFamily::V6 => (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        ),
    };
    // SAFETY: the descriptor is open (owned by `s`), and the option value is a c_int that
    // lives for the call, with its size passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of_val(&value) as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A probing socket of `family` bound to `src` (any address when None): don't-fragment,
/// ICMP errors on the error queue.
fn open_socket(family: IpFamily, src: Option<IpAddr>) -> std::io::Result<UdpSocket> {
    let (domain, any) = match family {
        IpFamily::V4 => (socket2::Domain::IPV4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        IpFamily::V6 => (socket2::Domain::IPV6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if family == IpFamily::V6 {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    set_dont_fragment(&s, family)?;
    match family {
        IpFamily::V4 => setsockopt(&s, sockopt::Ipv4RecvErr, &true),
        IpFamily::V6 => setsockopt(&s, sockopt::Ipv6RecvErr, &true),
    }
    .map_err(std::io::Error::from)?;
    s.bind(&SocketAddr::new(src.unwrap_or(any), 0).into())?;
    UdpSocket::from_std(s.into())
}

/// The outcome of an error from sending, or from an ICMP message about a probe.
fn outcome_of(e: &std::io::Error) -> Outcome {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
        // The kernel's own "host unreachable" (no neighbour answers), or the path's; a
        // router's "fragmentation needed" for an MTU probe.
        std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
            Outcome::Lost
        }
        _ if e.raw_os_error() == Some(nix::libc::EMSGSIZE) => Outcome::Lost,
        _ => Outcome::Unsent(e.to_string()),
    }
}

/// A probe waiting for its answer.
struct Waiting {
    dst: IpAddr,
    sent: Instant,
    answer: oneshot::Sender<Outcome>,
}

/// One probing socket and the probes waiting on it.
struct Channel {
    sock: UdpSocket,
    waiting: Mutex<HashMap<u64, Waiting>>,
    /// A send failed because the address the socket is bound to is no longer this
    /// host's.
    source_gone: AtomicBool,
}

/// What the socket's reader took off it.
enum Arrival {
    /// A datagram from `from`.
    Datagram { from: IpAddr, len: usize },
    /// An ICMP error about a datagram this socket sent to `dst`, quoting `len` bytes of it.
    Error {
        dst: Option<IpAddr>,
        error: std::io::Error,
        local: bool,
        len: usize,
    },
}

fn ip_of(a: &SockaddrStorage) -> Option<IpAddr> {
    a.as_sockaddr_in()
        .map(|v4| IpAddr::V4(v4.ip()))
        .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
}

impl Channel {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take one datagram or one queued error off the socket, without waiting.
    fn take(&self, buf: &mut [u8], errors: bool) -> std::io::Result<Arrival> {
        let fd = self.sock.as_raw_fd();
        let mut iov = [IoSliceMut::new(buf)];
        let mut cmsg = nix::cmsg_space!(nix::libc::sock_extended_err, nix::libc::sockaddr_in6);
        let flags = if errors {
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_ERRQUEUE
        } else {
            MsgFlags::MSG_DONTWAIT
        };
        let cmsg_buf = if errors { Some(&mut cmsg[..]) } else { None };
        let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, cmsg_buf, flags)
            .map_err(std::io::Error::from)?;
        let addr = msg.address.as_ref().and_then(ip_of);
        if !errors {
            let from = addr.ok_or_else(|| std::io::Error::other("a datagram without a source"))?;
            return Ok(Arrival::Datagram {
                from,
                len: msg.bytes,
            });
        }
        let ee = msg
            .cmsgs()
            .map_err(std::io::Error::from)?
            .find_map(|c| match c {
                ControlMessageOwned::Ipv4RecvErr(ee, _)
                | ControlMessageOwned::Ipv6RecvErr(ee, _) => Some(ee),
                _ => None,
            })
            .ok_or_else(|| std::io::Error::other("an error-queue entry without its error"))?;
        Ok(Arrival::Error {
            dst: addr,
            error: std::io::Error::from_raw_os_error(ee.ee_errno as i32),
            local: ee.ee_origin == nix::libc::SO_EE_ORIGIN_LOCAL,
            len: msg.bytes,
        })
    }

    /// Everything the socket holds now: replies to their probes, errors to theirs.
    /// Ends with WouldBlock, for the readiness to be cleared.
    fn drain(&self, buf: &mut [u8]) -> std::io::Result<()> {
        for errors in [false, true] {
            loop {
                match self.take(buf, errors) {
                    Ok(Arrival::Datagram { from, len }) => self.reply(from, &buf[..len]),
                    Ok(Arrival::Error {
                        dst,
                        error,
                        local,
                        len,
                    }) => {
                        // A local error (a probe too large for the route) was the send's
                        // own failure, already reported.
                        if !local {
                            self.error(dst, &buf[..len], &error);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    // An ICMP error also leaves its errno for the next receive; it is read
                    // from the error queue, with its probe.
                    Err(e) if !errors && e.raw_os_error().is_some_and(is_async_errno) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Err(std::io::ErrorKind::WouldBlock.into())
    }

    fn reply(&self, from: IpAddr, datagram: &[u8]) {
        let Ok(p) = Probe::decode(datagram) else {
            return;
        };
        if p.kind != wire::Kind::Reply {
            return;
        }
        let mut waiting = self.lock();
        if waiting.get(&p.id).is_some_and(|w| w.dst == from) {
            let w = waiting.remove(&p.id).expect("looked up");
            let _ = w.answer.send(Outcome::Answered(w.sent.elapsed()));
        }
    }

    fn error(&self, dst: Option<IpAddr>, quoted: &[u8], error: &std::io::Error) {
        let mut waiting = self.lock();
        let ids: Vec<u64> = match Probe::decode(quoted) {
            Ok(p) => vec![p.id],
            // The quote is too short to name the probe: every probe to that address.
            Err(_) => waiting
                .iter()
                .filter(|(_, w)| Some(w.dst) == dst)
                .map(|(id, _)| *id)
                .collect(),
        };
        for id in ids {
            if waiting.get(&id).is_some_and(|w| Some(w.dst) == dst) {
                let w = waiting.remove(&id).expect("looked up");
                let _ = w.answer.send(outcome_of(error));
            }
        }
    }

    /// Send `datagram` to `dst`. An errno an ICMP message left on the socket fails the next
    /// send too; that one is sent again (the message itself is on the error queue).
    async fn send(&self, datagram: &[u8], dst: SocketAddr) -> std::io::Result<()> {
        let r = match self.sock.send_to(datagram, dst).await {
            Err(e) if e.raw_os_error().is_some_and(is_async_errno) => {
                self.sock.send_to(datagram, dst).await
            }
            r => r,
        };
        if let Err(e) = &r {
            let errno = e.raw_os_error();
            if errno == Some(nix::libc::EADDRNOTAVAIL) || errno == Some(nix::libc::EINVAL) {
                self.source_gone.store(true, Ordering::Relaxed);
            }
        }
        r.map(drop)
    }

    /// One probe of IP packet size `size` (at least the header) to `dst`, without a retry.
    async fn once(&self, dst: SocketAddr, size: usize, timeout: Duration) -> Outcome {
        let family = IpFamily::of(dst.ip());
        let payload = size
            .saturating_sub(wire::ip_udp_overhead(family))
            .max(SMALL);
        let id = next_id();
        let (answer, answered) = oneshot::channel();
        self.lock().insert(
            id,
            Waiting {
                dst: dst.ip(),
                sent: Instant::now(),
                answer,
            },
        );
        let outcome = match self.send(&Probe::request(id, payload).encode(), dst).await {
            Err(e) => outcome_of(&e),
            Ok(()) => match tokio::time::timeout(timeout, answered).await {
                Ok(Ok(o)) => o,
                _ => Outcome::Lost,
            },
        };
        self.lock().remove(&id);
        outcome
    }

    /// A probe with one retry when it goes unanswered: one lost datagram is not a fault.
    async fn with_retry(&self, dst: SocketAddr, size: usize, timeout: Duration) -> Outcome {
        match self.once(dst, size, timeout).await {
            Outcome::Lost => self.once(dst, size, timeout).await,
            other => other,
        }
    }

    /// Whether a probe of IP packet size `size` passes.
    async fn passes(&self, dst: SocketAddr, size: u32, t: Duration) -> bool {
        matches!(
            self.with_retry(dst, size as usize, t).await,
            Outcome::Answered(_)
        )
    }

    /// The MTU probe at `pod_mtu`; when it fails, a binary search for the largest size
    /// that passes, down to the family's minimum MTU.
    async fn mtu_round(
        &self,
        dst: SocketAddr,
        pod_mtu: u32,
        family: IpFamily,
        t: Duration,
    ) -> MtuRound {
        if self.passes(dst, pod_mtu, t).await {
            return MtuRound::Passed;
        }
        let (mut lo, mut hi) = (min_mtu(family).min(pod_mtu), pod_mtu);
        if !self.passes(dst, lo, t).await {
            return MtuRound::Failed { largest_ok: None };
        }
        // lo passes, hi does not.
        while hi - lo > 8 {
            let mid = lo + (hi - lo) / 2;
            if self.passes(dst, mid, t).await {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        // Exact to the byte in the last steps (a handful of probes).
        while lo + 1 < hi {
            if self.passes(dst, lo + 1, t).await {
                lo += 1;
            } else {
                break;
            }
        }
        MtuRound::Failed {
            largest_ok: Some(lo),
        }
    }
}

/// Errnos an ICMP message leaves on a socket for its next call.
fn is_async_errno(errno: i32) -> bool {
    [
        nix::libc::ECONNREFUSED,
        nix::libc::EHOSTUNREACH,
        nix::libc::ENETUNREACH,
        nix::libc::EMSGSIZE,
        nix::libc::EACCES,
        nix::libc::EPROTO,
    ]
    .contains(&errno)
}

/// Read `ch`'s socket for as long as it is open.
async fn read(ch: Arc<Channel>) {
    // Replies are matched by their header; the rest of a large one is not needed.
    let mut buf = [0u8; 256];
    loop {
        let r = ch
            .sock
            .async_io(Interest::READABLE | Interest::ERROR, || ch.drain(&mut buf))
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "reading the health probes' socket failed; trying again in 1s");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// A channel and the task reading it (ended with the channel).
struct Open {
    channel: Arc<Channel>,
    reader: JoinHandle<()>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The prober's sockets: per family, the underlay's (bound to any address) and the
/// overlay's (bound to this node's overlay address, opened once that address is on its
/// device). Cheap to share.
#[derive(Default)]
pub struct Sockets {
    open: Mutex<HashMap<(IpFamily, Option<IpAddr>), Open>>,
}

impl std::fmt::Debug for Sockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("Sockets")
            .field("open", &open.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Sockets {
    /// The socket of `family` bound to `src` (any address when None), opened on first use;
    /// an overlay socket replaces the family's one from another address. Fails while `src`
    /// is not an address of this host.
    fn channel(&self, family: IpFamily, src: Option<IpAddr>) -> std::io::Result<Arc<Channel>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = open.get(&(family, src)) {
            return Ok(o.channel.clone());
        }
        let channel = Arc::new(Channel {
            sock: open_socket(family, src)?,
            source_gone: AtomicBool::new(false),
            waiting: Mutex::default(),
        });
        if src.is_some() {
            open.retain(|(f, s), _| *f != family || s.is_none());
        }
        let reader = tokio::spawn(read(channel.clone()));
        open.insert(
            (family, src),
            Open {
                channel: channel.clone(),
                reader,
            },
        );
        Ok(channel)
    }

    /// Forget the socket bound to `src` (its address went away), to bind afresh next time.
    fn forget(&self, family: IpFamily, src: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&(family, Some(src)));
    }

    /// Whether the round can go out: this node's overlay address, the overlay probes'
    /// source, is on its device (it is not at start, until the data plane has set it).
    /// Always true without an overlay.
    pub fn ready(&self, plan: &RoundPlan) -> bool {
        plan.overlay
            .is_none_or(|(src, _)| self.channel(plan.family, Some(src)).is_ok())
    }

    /// One round: the overlay and the underlay at once, then, when asked and the path the
    /// pod traffic takes answered, the MTU probe (and, when it fails, the search for the
    /// largest size that passes). None, with nothing sent, while this node's overlay
    /// address is not on its device.
    pub async fn round(&self, plan: &RoundPlan) -> Option<Round> {
        let (port, t) = (plan.port, plan.timeout);
        let overlay = match plan.overlay {
            Some((src, dst)) => Some((self.channel(plan.family, Some(src)).ok()?, src, dst)),
            None => None,
        };
        let underlay_dst = SocketAddr::new(plan.public_ip, port);
        let underlay_probe = async {
            match self.channel(plan.family, None) {
                Ok(ch) => ch.with_retry(underlay_dst, SMALL, t).await,
                Err(e) => Outcome::Unsent(e.to_string()),
            }
        };
        let (overlay_outcome, underlay) = match &overlay {
            Some((ch, src, dst)) => {
                let (o, u) = tokio::join!(
                    ch.with_retry(SocketAddr::new(*dst, port), SMALL, t),
                    underlay_probe
                );
                if ch.source_gone.load(Ordering::Relaxed) {
                    // This node's overlay address went away under the socket: bind again
                    // once it is back.
                    self.forget(plan.family, *src);
                    return None;
                }
                (Some(o), u)
            }
            None => (None, underlay_probe.await),
        };
        let mtu = match (plan.mtu, &overlay, &overlay_outcome) {
            (Some(pod_mtu), Some((ch, _, dst)), Some(Outcome::Answered(_))) => Some(
                ch.mtu_round(SocketAddr::new(*dst, port), pod_mtu, plan.family, t)
                    .await,
            ),
            (Some(pod_mtu), None, None) if matches!(underlay, Outcome::Answered(_)) => {
                match self.channel(plan.family, None) {
                    Ok(ch) => Some(ch.mtu_round(underlay_dst, pod_mtu, plan.family, t).await),
                    Err(_) => None,
                }
            }
            _ => None,
        };
        Some(Round {
            overlay: overlay_outcome,
            underlay,
            mtu,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoCounts;

    impl super::super::responder::ResponderCounts for NoCounts {
        fn answered(&self) {}
        fn dropped(&self) {}
    }

    /// A responder on loopback (`addr`, any port); its port.
    fn responder(addr: IpAddr) -> u16 {
        let family = IpFamily::of(addr);
        let sock = std::net::UdpSocket::bind(SocketAddr::new(addr, 0)).unwrap();
        let port = sock.local_addr().unwrap().port();
        drop(sock);
        let s = super::super::responder::bind(family, port).unwrap();
        tokio::spawn(async move { super::super::responder::serve(s, &NoCounts).await });
        port
    }

    /// A port on loopback nothing listens on.
    fn closed_port(addr: IpAddr) -> u16 {
        let sock = std::net::UdpSocket::bind(SocketAddr::new(addr, 0)).unwrap();
        sock.local_addr().unwrap().port()
        // Closed when `sock` drops here.
    }

    fn plan(family: IpFamily, port: u16, public_ip: IpAddr, mtu: Option<u32>) -> RoundPlan {
        RoundPlan {
            family,
            port,
            overlay: None,
            public_ip,
            mtu,
            timeout: Duration::from_millis(500),
        }
    }

    #[tokio::test]
    async fn answers_refusals_and_silence_come_back_to_the_probe_they_belong_to() {
        for lo in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let family = IpFamily::of(lo);
            let open = responder(lo);
            let closed = closed_port(lo);
            let sockets = Sockets::default();
            let ch = sockets.channel(family, None).unwrap();
            // Many probes at once through the one socket, to a responder and to a closed
            // port (the kernel's "port unreachable" comes through the error queue).
            let probes = (0..200).map(|i| {
                let port = if i % 2 == 0 { open } else { closed };
                let ch = ch.clone();
                async move {
                    (
                        i,
                        ch.once(SocketAddr::new(lo, port), SMALL, Duration::from_secs(2))
                            .await,
                    )
                }
            });
            let got = futures::future::join_all(probes).await;
            for (i, o) in got {
                if i % 2 == 0 {
                    assert!(matches!(o, Outcome::Answered(_)), "{lo} probe {i}: {o:?}");
                } else {
                    assert_eq!(o, Outcome::Refused, "{lo} probe {i}");
                }
            }
            assert!(
                ch.lock().is_empty(),
                "every probe is forgotten once it has its outcome"
            );
            // A round at the pod MTU with don't-fragment passes on loopback.
            let r = sockets
                .round(&plan(family, open, lo, Some(1450)))
                .await
                .unwrap();
            assert!(matches!(r.underlay, Outcome::Answered(_)), "{r:?}");
            assert_eq!(r.mtu, Some(MtuRound::Passed));
            // Nothing listening: refused, and no MTU probe after it.
            let r = sockets
                .round(&plan(family, closed, lo, Some(1450)))
                .await
                .unwrap();
            assert_eq!((r.underlay, r.mtu), (Outcome::Refused, None));
        }
    }

    #[tokio::test]
    async fn a_reply_counts_only_from_the_address_probed_and_an_unnamed_error_by_address() {
        let sockets = Sockets::default();
        let ch = sockets.channel(IpFamily::V4, None).unwrap();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let wait = |id: u64, dst: IpAddr| {
            let (answer, rx) = oneshot::channel();
            ch.lock().insert(
                id,
                Waiting {
                    dst,
                    sent: Instant::now(),
                    answer,
                },
            );
            rx
        };
        let mut first = wait(1, a);
        let reply = |id| {
            let mut b = Probe::request(id, SMALL).encode();
            b[5] = wire::Kind::Reply as u8;
            b
        };
        ch.reply(b, &reply(1));
        assert!(
            first.try_recv().is_err(),
            "a reply from another address is not the answer"
        );
        ch.reply(a, &Probe::request(1, SMALL).encode());
        assert!(first.try_recv().is_err(), "a request is not an answer");
        ch.reply(a, &reply(1));
        assert!(matches!(first.try_recv(), Ok(Outcome::Answered(_))));
        // An ICMP error quoting too little to name its probe ends every probe to that
        // address, and only those.
        let (mut to_a, mut also_to_a, mut to_b) = (wait(2, a), wait(3, a), wait(4, b));
        let refused = std::io::Error::from_raw_os_error(nix::libc::ECONNREFUSED);
        ch.error(Some(a), &[0u8; 4], &refused);
        assert_eq!(to_a.try_recv(), Ok(Outcome::Refused));
        assert_eq!(also_to_a.try_recv(), Ok(Outcome::Refused));
        assert!(to_b.try_recv().is_err());
        // One that names its probe ends that one alone.
        let (mut five, mut six) = (wait(5, b), wait(6, b));
        ch.error(Some(b), &Probe::request(5, SMALL).encode(), &refused);
        assert_eq!(five.try_recv(), Ok(Outcome::Refused));
        assert!(six.try_recv().is_err());
    }

    #[tokio::test]
    async fn the_overlay_socket_waits_for_its_address_and_moves_with_it() {
        let sockets = Sockets::default();
        // 192.0.2.1 (TEST-NET-1) is no address of this host.
        let mut p = plan(IpFamily::V4, 9, "127.0.0.1".parse().unwrap(), None);
        p.overlay = Some(("192.0.2.1".parse().unwrap(), "127.0.0.1".parse().unwrap()));
        assert!(!sockets.ready(&p));
        assert_eq!(
            sockets.round(&p).await,
            None,
            "nothing is sent from a missing address"
        );
        p.overlay = Some(("127.0.0.5".parse().unwrap(), "127.0.0.1".parse().unwrap()));
        assert!(sockets.ready(&p));
        p.overlay = Some(("127.0.0.6".parse().unwrap(), "127.0.0.1".parse().unwrap()));
        assert!(sockets.ready(&p));
        let open = sockets.open.lock().unwrap();
        let mut keys: Vec<_> = open.keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [&(IpFamily::V4, Some("127.0.0.6".parse().unwrap()))],
            "one overlay socket per family, from the current address"
        );
    }
}
