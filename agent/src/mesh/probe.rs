//! One probe and one round of probes of a peer: UDP datagrams to its probe port, each from
//! a socket of its own connected to the address probed, so that the kernel reports an ICMP
//! "port unreachable" from the peer as a refused connection (its host is up, its weftd is
//! not) and takes answers from that address only. No raw socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
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

/// Probe ids: unique within this process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

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
    use std::os::fd::AsRawFd;
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

/// A socket from `src` (any address when None) connected to `dst`.
fn connected(src: Option<IpAddr>, dst: SocketAddr) -> std::io::Result<UdpSocket> {
    let family = IpFamily::of(dst.ip());
    let domain = match family {
        IpFamily::V4 => socket2::Domain::IPV4,
        IpFamily::V6 => socket2::Domain::IPV6,
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    s.set_nonblocking(true)?;
    set_dont_fragment(&s, family)?;
    let any = match family {
        IpFamily::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpFamily::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    s.bind(&SocketAddr::new(src.unwrap_or(any), 0).into())?;
    s.connect(&dst.into())?;
    UdpSocket::from_std(s.into())
}

/// The outcome of an error from sending or receiving.
fn outcome_of(e: &std::io::Error) -> Outcome {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
        // The kernel's own "host unreachable" (no neighbour answers), or the path's.
        std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
            Outcome::Lost
        }
        _ => Outcome::Unsent(e.to_string()),
    }
}

/// One probe of IP packet size `size` (at least the header) from `src` to `dst`, without
/// a retry.
pub async fn once(src: Option<IpAddr>, dst: SocketAddr, size: usize, timeout: Duration) -> Outcome {
    let family = IpFamily::of(dst.ip());
    let payload = size
        .saturating_sub(wire::ip_udp_overhead(family))
        .max(SMALL);
    let sock = match connected(src, dst) {
        Ok(s) => s,
        Err(e) => return Outcome::Unsent(e.to_string()),
    };
    let probe = Probe::request(next_id(), payload);
    let started = Instant::now();
    if let Err(e) = sock.send(&probe.encode()).await {
        return outcome_of(&e);
    }
    let mut buf = vec![0u8; payload.max(64)];
    let wait = async {
        loop {
            match sock.recv(&mut buf).await {
                Ok(n) => match Probe::decode(&buf[..n]) {
                    Ok(p) if p.kind == wire::Kind::Reply && p.id == probe.id => {
                        return Outcome::Answered(started.elapsed());
                    }
                    // A late answer to an earlier probe, or garbage: keep waiting.
                    _ => continue,
                },
                Err(e) => return outcome_of(&e),
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or(Outcome::Lost)
}

/// A probe with one retry when it goes unanswered: one lost datagram is not a fault.
pub async fn with_retry(
    src: Option<IpAddr>,
    dst: SocketAddr,
    size: usize,
    timeout: Duration,
) -> Outcome {
    match once(src, dst, size, timeout).await {
        Outcome::Lost => once(src, dst, size, timeout).await,
        other => other,
    }
}

/// Whether `src` is an address of this host (a socket can be bound to it).
fn is_local(src: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(src, 0)).is_ok()
}

/// One round: the overlay and the underlay at once, then, when asked and the path the pod
/// traffic takes answered, the MTU probe (and, when it fails, the search for the largest
/// size that passes). Also the number of probes sent, for the rate bound. None, with
/// nothing sent, while this node's overlay address is not on its device yet (at start).
pub async fn round(plan: &RoundPlan) -> Option<(Round, u32)> {
    if let Some((src, _)) = plan.overlay {
        if !is_local(src) {
            return None;
        }
    }
    let port = plan.port;
    let t = plan.timeout;
    let underlay_dst = SocketAddr::new(plan.public_ip, port);
    let (overlay, underlay) = match plan.overlay {
        Some((src, dst)) => {
            let (o, u) = tokio::join!(
                with_retry(Some(src), SocketAddr::new(dst, port), SMALL, t),
                with_retry(None, underlay_dst, SMALL, t)
            );
            (Some(o), u)
        }
        None => (None, with_retry(None, underlay_dst, SMALL, t).await),
    };
    let mut sent = 1 + u32::from(overlay.is_some());
    let (src, path_dst, path_ok) = match (plan.overlay, &overlay) {
        (Some((src, dst)), Some(o)) => (Some(src), dst, matches!(o, Outcome::Answered(_))),
        _ => (
            None,
            plan.public_ip,
            matches!(underlay, Outcome::Answered(_)),
        ),
    };
    let mtu = match (plan.mtu, path_ok) {
        (Some(pod_mtu), true) => {
            let dst = SocketAddr::new(path_dst, port);
            let (m, n) = mtu_round(src, dst, pod_mtu, plan.family, t).await;
            sent += n;
            Some(m)
        }
        _ => None,
    };
    Some((
        Round {
            overlay,
            underlay,
            mtu,
        },
        sent,
    ))
}

/// Whether a probe of IP packet size `size` passes.
async fn passes(src: Option<IpAddr>, dst: SocketAddr, size: u32, t: Duration) -> bool {
    matches!(
        with_retry(src, dst, size as usize, t).await,
        Outcome::Answered(_)
    )
}

/// The MTU probe at `pod_mtu`; when it fails, a binary search for the largest size that
/// passes, down to the family's minimum MTU. Also the number of probes sent.
async fn mtu_round(
    src: Option<IpAddr>,
    dst: SocketAddr,
    pod_mtu: u32,
    family: IpFamily,
    t: Duration,
) -> (MtuRound, u32) {
    let mut sent = 1;
    if passes(src, dst, pod_mtu, t).await {
        return (MtuRound::Passed, sent);
    }
    let (mut lo, mut hi) = (min_mtu(family).min(pod_mtu), pod_mtu);
    sent += 1;
    if !passes(src, dst, lo, t).await {
        return (MtuRound::Failed { largest_ok: None }, sent);
    }
    // lo passes, hi does not.
    while hi - lo > 8 {
        let mid = lo + (hi - lo) / 2;
        sent += 1;
        if passes(src, dst, mid, t).await {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // Exact to the byte in the last steps (a handful of probes).
    while lo + 1 < hi {
        sent += 1;
        if passes(src, dst, lo + 1, t).await {
            lo += 1;
        } else {
            break;
        }
    }
    (
        MtuRound::Failed {
            largest_ok: Some(lo),
        },
        sent,
    )
}
