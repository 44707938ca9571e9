//! Benchmark (not a test): what the peer health probes cost one node with 5,000 peers.
//!
//! A real etcd on loopback holds a network config and 5,000 vxlan leases; the real release
//! `weftd` runs in a namespace of its own (the node), its underlay a veth to a second
//! namespace that plays the 5,000 peers:
//!
//! ```text
//!  node ns: weftd, u0 192.168.77.1/24 ── veth ── peers ns: 192.168.77.2/24,
//!           weft.1 (weftd's VXLAN)                 local 172.16.0.0/12 (every peer's PublicIP)
//!           172.16.0.0/12 via 192.168.77.2         UDP 8473: weft's probe responder
//!                                                  UDP 8472: a userspace VXLAN end (below)
//! ```
//!
//! The peers' side, in this program:
//! - the underlay probes are answered by weft's own responder (`mesh::responder`), bound to
//!   0.0.0.0:8473 in the peers' namespace, replying from the address probed;
//! - the overlay is a UDP socket on 8472 that decapsulates what the node's kernel VXLAN sends
//!   to any peer's public IP, answers each probe request inside it (the same
//!   `wire::answer_in_place`) with the inner Ethernet, IP and UDP addresses swapped, and
//!   encapsulates the answer back (a kernel VXLAN device cannot be used there: it would take
//!   only frames for its own MAC, and every peer has a VTEP MAC of its own);
//! - a load generator sends the node what its 5,000 peers would: each peer one round per
//!   effective interval (the interval the node's settings give for 5,000 peers, the same for
//!   every peer), an underlay and an overlay probe and, in one round of ten (staggered by peer,
//!   as independent peers would be), a probe at the pod MTU over the overlay.
//!
//! Measured on the node alone: weftd's CPU (user + system from /proc/<pid>/stat) and the
//! bytes of its underlay (u0) and overlay (weft.1) devices, over windows after the start-up,
//! for three settings in turn: probes off (`--health-probe-port 0`, no load: the baseline),
//! the defaults, and `--health-probe-rate 100`. weftd's own prober makes an MTU probe of
//! every peer in its first pass over the peers and after that in one round of ten of each
//! peer (staggered by subnet), so each probing run has two windows: one in the first pass
//! (every peer's MTU probed, once after a start) and one in the second (the long run).
//! Results go to docs/benchmarks.md.
//!
//!   cargo build --release -p weft-agent -p weft-tests --bins
//!   sudo target/release/bench-health [--peers 5000] [--runs 3] [--window 60] [--settle 15] [--rate 100]

use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etcd_client::{PutOptions, Txn, TxnOp};
use ipnetwork::Ipv4Network;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrStorage,
};
use weft_agent::mesh::prober::{MeshSettings, MTU_EVERY};
use weft_agent::mesh::responder::{self, ResponderCounts};
use weft_agent::mesh::wire::{self, Kind, Probe};
use weft_agent::store::LeaseStore;
use weft_backends::{IpFamily, MacAddr};
use weft_tests::bench::{flag_value, machine, quantile, write_section, PEERS};
use weft_tests::etcd::Etcd;
use weft_tests::netns::Netns;
use weft_tests::procs::{metric, Weftd, WeftdHost};

const PREFIX: &str = "/coreos.com/network";
const CONFIG: &str = r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const PEERS_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const PROBE_PORT: u16 = weft_agent::mesh::DEFAULT_PROBE_PORT;
const VXLAN_PORT: u16 = 8472;
/// The VNI of the peers' leases ([`weft_tests::bench::VxlanLease`]).
const VNI: u32 = 1;
/// The load generator's ports in the peers' namespace: underlay, and inner UDP of overlay.
const GEN_UNDERLAY_PORT: u16 = 40_000;
const GEN_OVERLAY_PORT: u16 = 40_001;
/// weftd's probe interval (its default).
const INTERVAL: Duration = Duration::from_secs(10);

// --- frames ---------------------------------------------------------------------------

const VXLAN_LEN: usize = 8;
const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const UDP_LEN: usize = 8;
const INNER_PAYLOAD_AT: usize = VXLAN_LEN + ETH_LEN + IP_LEN + UDP_LEN;

fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What the overlay end sends: VXLAN header, inner Ethernet, IPv4 (don't fragment) and UDP
/// (no checksum, which IPv4 allows) around `payload`.
struct InnerFrame {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
}

impl InnerFrame {
    fn encode(&self, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::with_capacity(INNER_PAYLOAD_AT + payload.len());
        b.extend_from_slice(&[0x08, 0, 0, 0]);
        b.extend_from_slice(&(VNI << 8).to_be_bytes());
        b.extend_from_slice(&self.dst_mac);
        b.extend_from_slice(&self.src_mac);
        b.extend_from_slice(&[0x08, 0x00]);
        let total = (IP_LEN + UDP_LEN + payload.len()) as u16;
        let mut ip = [0u8; IP_LEN];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        let c = ip_checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        b.extend_from_slice(&ip);
        b.extend_from_slice(&self.sport.to_be_bytes());
        b.extend_from_slice(&self.dport.to_be_bytes());
        b.extend_from_slice(&((UDP_LEN + payload.len()) as u16).to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(payload);
        b
    }
}

/// A VXLAN datagram carrying IPv4 UDP without IP options: (inner UDP source port, inner UDP
/// destination port, payload range).
fn inner_udp(b: &[u8]) -> Option<(u16, u16, std::ops::Range<usize>)> {
    if b.len() < INNER_PAYLOAD_AT || b[0] & 0x08 == 0 {
        return None;
    }
    let eth = VXLAN_LEN;
    let ip = eth + ETH_LEN;
    if b[eth + 12..eth + 14] != [0x08, 0x00] || b[ip] != 0x45 || b[ip + 9] != 17 {
        return None;
    }
    let udp = ip + IP_LEN;
    let sport = u16::from_be_bytes([b[udp], b[udp + 1]]);
    let dport = u16::from_be_bytes([b[udp + 2], b[udp + 3]]);
    let len = usize::from(u16::from_be_bytes([b[udp + 4], b[udp + 5]]));
    let end = (udp + len).min(b.len());
    Some((sport, dport, INNER_PAYLOAD_AT..end.max(INNER_PAYLOAD_AT)))
}

/// Turn a VXLAN datagram carrying a probe request into its answer in place: inner MACs,
/// addresses and ports swapped (the IP checksum does not change), the UDP checksum left out.
fn answer_frame(b: &mut [u8], payload: std::ops::Range<usize>) -> bool {
    if wire::answer_in_place(&mut b[payload]).is_none() {
        return false;
    }
    let eth = VXLAN_LEN;
    for k in 0..6 {
        b.swap(eth + k, eth + 6 + k);
    }
    let ip = eth + ETH_LEN;
    for k in 0..4 {
        b.swap(ip + 12 + k, ip + 16 + k);
    }
    let udp = ip + IP_LEN;
    for k in 0..2 {
        b.swap(udp + k, udp + 2 + k);
    }
    b[udp + 6] = 0;
    b[udp + 7] = 0;
    true
}

// --- sockets in the peers' namespace -----------------------------------------------------

/// Run `f` on a fresh thread inside `ns`, returning its result (sockets made there belong to
/// `ns` wherever they are used later).
fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(ns.path()).expect("open the peers' namespace");
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("enter the peers' namespace");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A UDP socket on 0.0.0.0:`port` that learns each datagram's local address (IP_PKTINFO).
fn pktinfo_socket(port: u16) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
        .unwrap_or_else(|e| panic!("bind 0.0.0.0:{port} in the peers' namespace: {e}"));
    setsockopt(&s, sockopt::Ipv4PacketInfo, &true).expect("IP_PKTINFO");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    s
}

/// One datagram: (source, local address it was sent to, length); None on a timeout.
fn recv_to(s: &UdpSocket, buf: &mut [u8]) -> Option<(SocketAddrV4, Ipv4Addr, usize)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(nix::libc::in_pktinfo);
    let msg =
        recvmsg::<SockaddrStorage>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
            .ok()?;
    let mut to = Ipv4Addr::UNSPECIFIED;
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::Ipv4PacketInfo(i) = c {
            to = Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr));
        }
    }
    let from = SocketAddrV4::from(*msg.address?.as_sockaddr_in()?);
    Some((from, to, msg.bytes))
}

/// Send `b` to `to` from the local address `from`.
fn send_from(s: &UdpSocket, b: &[u8], to: SocketAddrV4, from: Ipv4Addr) -> bool {
    let info = nix::libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: nix::libc::in_addr {
            s_addr: u32::from(from).to_be(),
        },
        ipi_addr: nix::libc::in_addr { s_addr: 0 },
    };
    let dst = SockaddrStorage::from(SocketAddr::V4(to));
    sendmsg(
        s.as_raw_fd(),
        &[IoSlice::new(b)],
        &[ControlMessage::Ipv4PacketInfo(&info)],
        MsgFlags::empty(),
        Some(&dst),
    )
    .is_ok()
}

// --- the peers -------------------------------------------------------------------------

/// What the peers' side counted.
#[derive(Debug, Default)]
struct PeerCounts {
    /// Node probes answered by the peers: underlay (weft's responder), overlay.
    answered_underlay: AtomicU64,
    answered_overlay: AtomicU64,
    dropped: AtomicU64,
    /// The load generator's probes sent, and the node's replies to them.
    sent_underlay: AtomicU64,
    sent_overlay: AtomicU64,
    sent_mtu: AtomicU64,
    replies_underlay: AtomicU64,
    replies_overlay: AtomicU64,
}

impl ResponderCounts for PeerCounts {
    fn answered(&self) {
        self.answered_underlay.fetch_add(1, Ordering::Relaxed);
    }

    fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

fn count(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Threads that stop and are joined when this drops.
struct Threads {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Threads {
    fn new() -> Threads {
        Threads {
            stop: Arc::new(AtomicBool::new(false)),
            handles: Vec::new(),
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// The 5,000 peers' answering side: weft's responder on 8473 and the userspace VXLAN end on
/// 8472, both in the peers' namespace, for the whole benchmark.
struct Peers {
    counts: Arc<PeerCounts>,
    vxlan: Arc<UdpSocket>,
    _threads: Threads,
}

impl Peers {
    fn start(ns: &Netns) -> Peers {
        let counts = Arc::new(PeerCounts::default());
        let mut threads = Threads::new();
        let file = std::fs::File::open(ns.path()).expect("open the peers' namespace");
        let (c, stop) = (counts.clone(), threads.stop.clone());
        threads.handles.push(std::thread::spawn(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("enter the peers' namespace");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let sock = responder::bind(IpFamily::V4, PROBE_PORT).expect("bind 8473");
                tokio::select! {
                    r = responder::serve(sock, c.as_ref()) => panic!("the peers' responder ended: {r:?}"),
                    _ = async { while !stop.load(Ordering::Relaxed) { tokio::time::sleep(Duration::from_millis(100)).await } } => {}
                }
            });
        }));
        let vxlan = Arc::new(in_ns(ns, || pktinfo_socket(VXLAN_PORT)));
        let (s, c, stop) = (vxlan.clone(), counts.clone(), threads.stop.clone());
        threads.handles.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                let Some((from, to, n)) = recv_to(&s, &mut buf) else {
                    continue;
                };
                let b = &mut buf[..n];
                match inner_udp(b) {
                    Some((_, PROBE_PORT, payload)) => {
                        let ok = answer_frame(b, payload)
                            && send_from(&s, b, SocketAddrV4::new(*from.ip(), VXLAN_PORT), to);
                        let which = if ok { &c.answered_overlay } else { &c.dropped };
                        which.fetch_add(1, Ordering::Relaxed);
                    }
                    Some((PROBE_PORT, GEN_OVERLAY_PORT, payload)) => {
                        if matches!(Probe::decode(&b[payload]), Ok(p) if p.kind == Kind::Reply) {
                            c.replies_overlay.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        c.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
        Peers {
            counts,
            vxlan,
            _threads: threads,
        }
    }
}

/// What the load generator needs of the node.
#[derive(Clone, Copy, Debug)]
struct NodeSide {
    overlay_ip: Ipv4Addr,
    vtep_mac: [u8; 6],
    pod_mtu: usize,
}

/// The probes 5,000 peers send the node: one round of peer `i` every `spacing`, peers in
/// turn, until dropped.
fn start_load(ns: &Netns, peers: &Peers, node: NodeSide, n: usize, spacing: Duration) -> Threads {
    let underlay = Arc::new(in_ns(ns, || {
        let s = pktinfo_socket(GEN_UNDERLAY_PORT);
        s.set_nonblocking(true).expect("nonblocking");
        s
    }));
    let mut threads = Threads::new();
    let (vx, c, stop) = (
        peers.vxlan.clone(),
        peers.counts.clone(),
        threads.stop.clone(),
    );
    threads.handles.push(std::thread::spawn(move || {
        let small = Probe::request(0, wire::HEADER_LEN);
        let big_payload = node.pod_mtu - IP_LEN - UDP_LEN;
        let node_underlay = SocketAddrV4::new(NODE_IP, PROBE_PORT);
        let node_vxlan = SocketAddrV4::new(NODE_IP, VXLAN_PORT);
        let mut buf = [0u8; 256];
        let mut next = Instant::now();
        let mut k: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            let i = (k % n as u64) as usize;
            let pass = k / n as u64;
            let (pub_ip, net) = (PEERS.public_ip(i), PEERS.subnet(i).network());
            let frame = InnerFrame {
                dst_mac: node.vtep_mac,
                src_mac: PEERS.vtep_mac(i).0,
                src: net,
                dst: node.overlay_ip,
                sport: GEN_OVERLAY_PORT,
                dport: PROBE_PORT,
            };
            let id = k << 2;
            let p = Probe { id, ..small }.encode();
            if send_from(&underlay, &p, node_underlay, pub_ip) {
                c.sent_underlay.fetch_add(1, Ordering::Relaxed);
            }
            let p = Probe {
                id: id + 1,
                ..small
            }
            .encode();
            if send_from(&vx, &frame.encode(&p), node_vxlan, pub_ip) {
                c.sent_overlay.fetch_add(1, Ordering::Relaxed);
            }
            if (pass + i as u64) % MTU_EVERY == 0 {
                let p = Probe::request(id + 2, big_payload).encode();
                if send_from(&vx, &frame.encode(&p), node_vxlan, pub_ip) {
                    c.sent_mtu.fetch_add(1, Ordering::Relaxed);
                }
            }
            while let Ok(m) = underlay.recv(&mut buf) {
                if matches!(Probe::decode(&buf[..m]), Ok(p) if p.kind == Kind::Reply) {
                    c.replies_underlay.fetch_add(1, Ordering::Relaxed);
                }
            }
            k += 1;
            next += spacing;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
        }
    }));
    threads
}

// --- the node --------------------------------------------------------------------------

/// weftd in a fresh namespace whose underlay u0 is a veth into the peers' namespace.
fn start_node(peers_ns: &Netns, etcd: &Etcd, run: usize, extra: &[&str]) -> Weftd {
    let ns = Netns::new("hn");
    let peer_end = format!("hp{run}");
    ns.ip(&[
        "link",
        "add",
        "u0",
        "type",
        "veth",
        "peer",
        "name",
        &peer_end,
        "netns",
        &peers_ns.name,
    ]);
    ns.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "u0"]);
    ns.ip(&["link", "set", "u0", "up"]);
    ns.ip(&[
        "route",
        "add",
        "172.16.0.0/12",
        "via",
        &PEERS_IP.to_string(),
    ]);
    peers_ns.ip(&["addr", "add", &format!("{PEERS_IP}/24"), "dev", &peer_end]);
    peers_ns.ip(&["link", "set", &peer_end, "up"]);
    let node = format!("bench-health-{run}");
    let host = WeftdHost {
        node: &node,
        iface: "u0",
        public_ip: &NODE_IP.to_string(),
    };
    Weftd::start_in_namespace(ns, host, &etcd.cli_args(), extra)
}

/// Wait until weftd is ready and knows every peer; bounded.
async fn wait_peers(w: &Weftd, n: usize) {
    w.wait_ready(Duration::from_secs(60)).await;
    let t = Instant::now();
    while metric(&w.metrics(), "weft_peers") != Some(n as f64) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "weftd never knew {n} peers:\n{}",
            w.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the data plane programmed: the VXLAN device and a route per peer.
    loop {
        let (code, out, _) = w.ns.exec("ip", &["route", "show", "proto", "87"]);
        if code == 0 && out.lines().count() >= n {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "weftd never programmed {n} routes:\n{}",
            w.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node_side(w: &Weftd) -> NodeSide {
    let env = w.subnet_env();
    let field = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {k} in subnet.env: {env}"))
            .to_string()
    };
    let subnet: Ipv4Network = field("FLANNEL_SUBNET").parse().expect("FLANNEL_SUBNET");
    let pod_mtu = field("FLANNEL_MTU").parse().expect("FLANNEL_MTU");
    let link: serde_json::Value =
        serde_json::from_str(&w.ns.ip(&["-j", "link", "show", "dev", "weft.1"])).unwrap();
    let text = link[0]["address"].as_str().expect("weft.1's MAC");
    let vtep_mac: MacAddr = text.parse().expect("weft.1's MAC");
    NodeSide {
        overlay_ip: subnet.network(),
        vtep_mac: vtep_mac.0,
        pod_mtu,
    }
}

/// (rx, tx) bytes of `dev` in weftd's namespace.
fn if_bytes(w: &Weftd, dev: &str) -> (u64, u64) {
    let v: serde_json::Value =
        serde_json::from_str(&w.ns.ip(&["-j", "-s", "link", "show", "dev", dev])).unwrap();
    let s = &v[0]["stats64"];
    (
        s["rx"]["bytes"].as_u64().unwrap_or(0),
        s["tx"]["bytes"].as_u64().unwrap_or(0),
    )
}

/// User + system CPU of `pid` in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("weftd's stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    // Fields 14 (utime) and 15 (stime); `rest` starts at field 3.
    (f[11] + f[12]) as f64 / tck
}

/// The sum of `name{…}` series whose labels include every one of `labels`.
fn sum_series(body: &str, name: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let ok = rest.starts_with('{') && labels.iter().all(|x| rest.contains(x));
            ok.then(|| v.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Rounds of peers weftd finished (one underlay probe each).
fn rounds(body: &str) -> f64 {
    sum_series(body, "weft_health_probes_total", &[r#"path="underlay""#])
}

struct Counters {
    at: Instant,
    cpu: f64,
    underlay: (u64, u64),
    overlay: (u64, u64),
    metrics: String,
}

fn read_counters(w: &Weftd) -> Counters {
    Counters {
        at: Instant::now(),
        cpu: cpu_seconds(w.proc.pid().expect("weftd's pid")),
        underlay: if_bytes(w, "u0"),
        overlay: if_bytes(w, "weft.1"),
        metrics: w.metrics(),
    }
}

/// One window's rates.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    cpu_pct: f64,
    u_rx: f64,
    u_tx: f64,
    o_rx: f64,
    o_tx: f64,
    /// weftd's probes per second by weft_health_probes_total (each probe's outcome once,
    /// retries not counted): overlay, underlay, mtu.
    probes: [f64; 3],
    /// Probe requests weftd answered per second.
    answered: f64,
}

impl Sample {
    fn minus(&self, b: &Sample) -> Sample {
        Sample {
            cpu_pct: self.cpu_pct - b.cpu_pct,
            u_rx: self.u_rx - b.u_rx,
            u_tx: self.u_tx - b.u_tx,
            o_rx: self.o_rx - b.o_rx,
            o_tx: self.o_tx - b.o_tx,
            probes: self.probes,
            answered: self.answered,
        }
    }
}

async fn window(w: &Weftd, secs: u64) -> Sample {
    let a = read_counters(w);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let b = read_counters(w);
    let dt = b.at.duration_since(a.at).as_secs_f64();
    let per_s = |x: u64, y: u64| y.saturating_sub(x) as f64 / dt;
    let probes = |path: &str| {
        let l = format!("path=\"{path}\"");
        (sum_series(&b.metrics, "weft_health_probes_total", &[&l])
            - sum_series(&a.metrics, "weft_health_probes_total", &[&l]))
            / dt
    };
    let answered = |m: &str| metric(m, "weft_health_probes_answered_total").unwrap_or(0.0);
    Sample {
        cpu_pct: (b.cpu - a.cpu) / dt * 100.0,
        u_rx: per_s(a.underlay.0, b.underlay.0),
        u_tx: per_s(a.underlay.1, b.underlay.1),
        o_rx: per_s(a.overlay.0, b.overlay.0),
        o_tx: per_s(a.overlay.1, b.overlay.1),
        probes: [probes("overlay"), probes("underlay"), probes("mtu")],
        answered: (answered(&b.metrics) - answered(&a.metrics)) / dt,
    }
}

/// What one probing run found besides its two windows.
#[derive(Clone, Debug, Default)]
struct RunFacts {
    effective_interval: f64,
    ok_peers: f64,
    lost: f64,
    probes_total: f64,
    gen_sent: u64,
    gen_replies: u64,
    peers_answered: u64,
}

struct Setting {
    name: &'static str,
    flags: Vec<String>,
    rate: u32,
}

/// The benchmark's shape.
#[derive(Clone, Copy, Debug)]
struct Plan {
    peers: usize,
    window: u64,
    settle: u64,
}

async fn probing_run(
    etcd: &Etcd,
    peers_ns: &Netns,
    peers: &Peers,
    plan: Plan,
    setting: &Setting,
    run: usize,
) -> (Sample, Sample, RunFacts) {
    let flags: Vec<&str> = setting.flags.iter().map(String::as_str).collect();
    let w = start_node(peers_ns, etcd, run, &flags);
    wait_peers(&w, plan.peers).await;
    let settings = MeshSettings {
        port: PROBE_PORT,
        interval: INTERVAL,
        rate: setting.rate,
    };
    let per_round = 2.0 + 1.0 / MTU_EVERY as f64;
    let spacing = settings.spacing(plan.peers, per_round);
    let before = (
        count(&peers.counts.sent_underlay)
            + count(&peers.counts.sent_overlay)
            + count(&peers.counts.sent_mtu),
        count(&peers.counts.replies_underlay) + count(&peers.counts.replies_overlay),
        count(&peers.counts.answered_underlay) + count(&peers.counts.answered_overlay),
    );
    let load = start_load(peers_ns, peers, node_side(&w), plan.peers, spacing);
    tokio::time::sleep(Duration::from_secs(plan.settle)).await;
    let in_first = window(&w, plan.window).await;
    let r = rounds(&w.metrics());
    if r >= plan.peers as f64 {
        eprintln!("note: the first pass ended inside its window ({r} rounds)");
    }
    let n = plan.peers as f64;
    let eff = spacing.as_secs_f64() * n;
    let t = Instant::now();
    while rounds(&w.metrics()) < n + n / 50.0 {
        assert!(
            t.elapsed().as_secs_f64() < eff + 120.0,
            "weftd's first pass over the peers did not end:\n{}",
            w.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let in_second = window(&w, plan.window).await;
    if rounds(&w.metrics()) >= 2.0 * n {
        eprintln!("note: the second pass ended inside its window");
    }
    drop(load);
    // Replies in flight.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = w.metrics();
    let facts = RunFacts {
        effective_interval: metric(&m, "weft_health_probe_interval_seconds").unwrap_or(f64::NAN),
        ok_peers: sum_series(&m, "weft_health_peers", &[r#"state="ok""#]),
        lost: sum_series(&m, "weft_health_probes_total", &[r#"result="lost""#]) + 0.0,
        probes_total: sum_series(&m, "weft_health_probes_total", &[]),
        gen_sent: count(&peers.counts.sent_underlay)
            + count(&peers.counts.sent_overlay)
            + count(&peers.counts.sent_mtu)
            - before.0,
        gen_replies: count(&peers.counts.replies_underlay) + count(&peers.counts.replies_overlay)
            - before.1,
        peers_answered: count(&peers.counts.answered_underlay)
            + count(&peers.counts.answered_overlay)
            - before.2,
    };
    eprintln!(
        "{} run {run}: first pass {in_first:?}\n  second pass {in_second:?}\n  {facts:?}",
        setting.name
    );
    drop(w);
    (in_first, in_second, facts)
}

async fn baseline_run(etcd: &Etcd, peers_ns: &Netns, plan: Plan, run: usize) -> Sample {
    let w = start_node(peers_ns, etcd, run, &["--health-probe-port", "0"]);
    wait_peers(&w, plan.peers).await;
    tokio::time::sleep(Duration::from_secs(plan.settle)).await;
    let s = window(&w, plan.window).await;
    eprintln!("baseline run {run}: {s:?}");
    s
}

/// Remove the lease of the node of `run`, so that the next run joins afresh and does not
/// see it as a peer.
async fn forget_node(store: &weft_agent::store::EtcdStore, run: usize) {
    let node = format!("\"bench-health-{run}\"");
    let snap = store.snapshot(false).await.unwrap();
    for e in snap
        .entries
        .iter()
        .filter(|e| String::from_utf8_lossy(&e.value).contains(&node))
    {
        store.delete(&e.name, None).await.unwrap();
    }
}

fn med(v: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    quantile(&v.iter().map(f).collect::<Vec<_>>(), 0.5)
}

fn medf(v: &[RunFacts], f: impl Fn(&RunFacts) -> f64) -> f64 {
    quantile(&v.iter().map(f).collect::<Vec<_>>(), 0.5)
}

fn raw_row(name: &str, v: &[Sample]) -> String {
    format!(
        "| {name} | {:.2} | {:.0} / {:.0} | {:.0} / {:.0} | {:.1} / {:.1} / {:.1} | {:.1} |",
        med(v, |s| s.cpu_pct),
        med(v, |s| s.u_tx),
        med(v, |s| s.u_rx),
        med(v, |s| s.o_tx),
        med(v, |s| s.o_rx),
        med(v, |s| s.probes[0]),
        med(v, |s| s.probes[1]),
        med(v, |s| s.probes[2]),
        med(v, |s| s.answered),
    )
}

fn verdict(cpu: f64, kb: f64) -> &'static str {
    match (cpu < 1.0, kb < 50.0) {
        (true, true) => "meets both",
        (false, true) => "misses CPU",
        (true, false) => "misses bytes",
        (false, false) => "misses both",
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    weft_tests::netns::require_root();
    let plan = Plan {
        peers: flag_value("--peers").unwrap_or(5000),
        window: flag_value("--window").unwrap_or(60),
        settle: flag_value("--settle").unwrap_or(15),
    };
    let runs: usize = flag_value("--runs").unwrap_or(3);
    let alt_rate: u32 = flag_value("--rate").unwrap_or(100);
    let load_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let etcd = Etcd::start().await;
    let store = etcd.store(PREFIX).await;
    store.put_config(CONFIG.as_bytes()).await.unwrap();
    let mut raw = etcd.raw_client().await;
    let grant = raw.lease_grant(7200, None).await.unwrap().id();
    for chunk in (0..plan.peers).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|&i| {
                let node = format!("peer-{i}");
                let lease = PEERS.vxlan_lease(i, &node);
                TxnOp::put(
                    lease.key(PREFIX),
                    lease.value(),
                    Some(PutOptions::new().with_lease(grant)),
                )
            })
            .collect();
        raw.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    eprintln!("wrote {} leases", plan.peers);

    let peers_ns = Netns::new("hpeers");
    peers_ns.ip(&["link", "set", "lo", "up"]);
    peers_ns.ip(&["route", "add", "local", "172.16.0.0/12", "dev", "lo"]);
    let peers = Peers::start(&peers_ns);

    let settings = [
        Setting {
            name: "defaults",
            flags: Vec::new(),
            rate: 50,
        },
        Setting {
            name: "rate",
            flags: vec!["--health-probe-rate".into(), alt_rate.to_string()],
            rate: alt_rate,
        },
    ];
    let mut base = Vec::new();
    let mut got: Vec<(Vec<Sample>, Vec<Sample>, Vec<RunFacts>)> =
        settings.iter().map(|_| Default::default()).collect();
    let mut run_id = 0;
    for _ in 0..runs {
        base.push(baseline_run(&etcd, &peers_ns, plan, run_id).await);
        forget_node(&store, run_id).await;
        run_id += 1;
        for (k, s) in settings.iter().enumerate() {
            let (a, b, f) = probing_run(&etcd, &peers_ns, &peers, plan, s, run_id).await;
            forget_node(&store, run_id).await;
            run_id += 1;
            got[k].0.push(a);
            got[k].1.push(b);
            got[k].2.push(f);
        }
    }
    drop(peers);
    let load_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load1 = |s: &str| s.split_whitespace().next().unwrap_or("?").to_string();

    let label = |s: &Setting| match s.name {
        "defaults" => "defaults (rate 50/s)".to_string(),
        _ => format!("`--health-probe-rate {}`", s.rate),
    };
    let mut raw_table = vec![
        "| run, window | weftd CPU (% of a core) | underlay u0 tx / rx (B/s) | overlay weft.1 tx / rx (B/s) | weftd's probes/s (overlay / underlay / mtu) | requests answered/s |".to_string(),
        "|---|---|---|---|---|---|".to_string(),
        raw_row("probes off (`--health-probe-port 0`), no load: baseline", &base),
    ];
    let mut cost_table = vec![
        "| setting | effective interval (s) | CPU (% of a core) | underlay tx / rx (B/s) | underlay total (KB/s) | overlay tx / rx (B/s) | target (< 1 %, < 50 KB/s) |".to_string(),
        "|---|---|---|---|---|---|---|".to_string(),
    ];
    let mut facts_text = Vec::new();
    let b = Sample {
        cpu_pct: med(&base, |s| s.cpu_pct),
        u_rx: med(&base, |s| s.u_rx),
        u_tx: med(&base, |s| s.u_tx),
        o_rx: med(&base, |s| s.o_rx),
        o_tx: med(&base, |s| s.o_tx),
        ..Sample::default()
    };
    for (s, (first, second, facts)) in settings.iter().zip(&got) {
        raw_table.push(raw_row(
            &format!("{}, first pass (every peer's MTU probed)", label(s)),
            first,
        ));
        raw_table.push(raw_row(
            &format!("{}, second pass (the long run)", label(s)),
            second,
        ));
        // Past the first pass, every round of one in MTU_EVERY has an MTU probe (staggered
        // by peer): the second pass is the long run.
        let m = Sample {
            cpu_pct: med(second, |s| s.cpu_pct),
            u_rx: med(second, |s| s.u_rx),
            u_tx: med(second, |s| s.u_tx),
            o_rx: med(second, |s| s.o_rx),
            o_tx: med(second, |s| s.o_tx),
            ..Sample::default()
        }
        .minus(&b);
        let first_cost = Sample {
            cpu_pct: med(first, |s| s.cpu_pct),
            u_rx: med(first, |s| s.u_rx),
            u_tx: med(first, |s| s.u_tx),
            ..Sample::default()
        }
        .minus(&b);
        let kb = (m.u_rx + m.u_tx) / 1000.0;
        let eff = medf(facts, |f| f.effective_interval);
        cost_table.push(format!(
            "| {} | {eff:.0} | {:.2} | {:.0} / {:.0} | {kb:.1} | {:.0} / {:.0} | {} |",
            label(s),
            m.cpu_pct,
            m.u_tx,
            m.u_rx,
            m.o_tx,
            m.o_rx,
            verdict(m.cpu_pct, kb)
        ));
        cost_table.push(format!(
            "| {}, during the first pass after a start | {eff:.0} | {:.2} | {:.0} / {:.0} | {:.1} | — | {} |",
            label(s),
            first_cost.cpu_pct,
            first_cost.u_tx,
            first_cost.u_rx,
            (first_cost.u_rx + first_cost.u_tx) / 1000.0,
            verdict(
                first_cost.cpu_pct,
                (first_cost.u_rx + first_cost.u_tx) / 1000.0
            )
        ));
        facts_text.push(format!(
            "{}: effective interval {eff:.1} s (weft_health_probe_interval_seconds); at the end of the run weft_health_probes_total counted {:.0} probes (median), {:.0} of them lost, and {:.0} of {} peers were ok; the load generator sent {:.0} probes and got {:.0} replies, and the peers answered {:.0} of weftd's probe requests (medians).",
            label(s),
            medf(facts, |f| f.probes_total),
            medf(facts, |f| f.lost),
            medf(facts, |f| f.ok_peers),
            plan.peers,
            medf(facts, |f| f.gen_sent as f64),
            medf(facts, |f| f.gen_replies as f64),
            medf(facts, |f| f.peers_answered as f64),
        ));
    }
    let raw_table = raw_table.join("\n");
    let cost_table = cost_table.join("\n");
    println!("{raw_table}\n\n{cost_table}\n\n{}", facts_text.join("\n"));
    let section = format!(
        "<!-- bench-health:begin -->\n## Peer health probes at {peers} peers\n\nMeasured by `target/release/bench-health --peers {peers} --runs {runs} --window {window} --settle {settle} --rate {alt_rate}` (tests/src/bin/bench-health.rs) on {machine}, shared with other work (load average 1 min {l0} at the start, {l1} at the end): a real etcd 3.4 on loopback holding {peers} vxlan leases; the real release `weftd` in a namespace of its own, its underlay a veth (u0) into a second namespace that holds every peer's public IP (a local route for 172.16.0.0/12) and answers for all of them: weft's own probe responder on UDP 8473 for the underlay, and a userspace VXLAN end on UDP 8472 that answers the probes inside the node's VXLAN packets (decapsulated, answered with `wire::answer_in_place`, the inner addresses swapped, encapsulated back). A load generator in that namespace sends the node what its {peers} peers would: each peer one round per effective interval (an underlay and an overlay probe, and in one round of {MTU_EVERY}, staggered by peer, an overlay probe at the pod MTU). CPU is weftd's user + system time from /proc/<pid>/stat; bytes are the node's device counters (`ip -s link` in its namespace; the underlay's include the overlay's, encapsulated, and every Ethernet header). Each window is {window} s, after {settle} s of settling once weftd knew every peer; median of {runs} runs, the three settings interleaved in each.\n\nweftd's prober makes an MTU probe of every peer in its first pass over them, and after that in one of every {MTU_EVERY} rounds of each peer, the peers staggered by subnet; so each probing run has a window in the first pass (every peer's MTU probed, once after a start) and one in the second (the long run: a tenth of the rounds with an MTU probe); the long-run cost is the second window's, minus the baseline.\n\nWhat was measured (medians):\n\n{raw_table}\n\nThe probes' cost (long run, baseline subtracted; KB = 1,000 bytes, tx + rx on the underlay, which carries everything the node sends and receives):\n\n{cost_table}\n\n{facts}\n\nWhich way the simplifications lean: the peers answer at once from one namespace on the same two CPUs (no real network delay, so no probe waits long; real losses would add retries, and more cost); the generator's peers all share one effective interval and send from one socket (the node's side, a responder that answers each request, does the same work either way); its overlay probes are sent whether or not the peer's underlay probe answered (a real peer sends its MTU probe only when the overlay answered: equal here, as all answer). The baseline has no probe load at all, so the figures are the whole cost of the mesh, both of this node's own probes and of answering its peers'.\n<!-- bench-health:end -->\n",
        peers = plan.peers,
        window = plan.window,
        settle = plan.settle,
        machine = machine(),
        l0 = load1(&load_start),
        l1 = load1(&load_end),
        facts = facts_text.join("\n\n"),
    );
    write_section("bench-health", &section);
}
