//! Benchmark (not a test): what `netctl health --cluster` costs at 5,000 nodes.
//!
//! A real etcd on loopback holds a network config and 5,000 vxlan leases, each node's public
//! IP in 198.18.0.0/16. A network namespace of this benchmark has that range as local
//! addresses (one `local` route on its loopback) and one listener on 0.0.0.0:8471 that
//! answers as every node's weftd would: it tells the node asked by the address connected to,
//! and serves that node's peer health report (the whole one, or with `?problems` only the
//! entries that are not ok, from `ProblemsReport`, the type weftd serves). A relay joins the
//! namespace's 127.0.0.1 to etcd's. The real release `netctl health --cluster` runs in the
//! namespace, with its defaults (`--parallel 64`, `--timeout 3s`), for each output (text,
//! json, html), against:
//!
//! - weftds that know `?problems` (this netctl asks for it above 200 nodes);
//! - weftds that do not (they ignore the query and answer the whole report);
//! - with `--before PATH`, the netctl of the previous version too (it asks whole reports).
//!
//! A few nodes have problems: one is down (its weftd resets the connection; every other
//! node finds it unreachable), one pair's overlay is broken both ways, one node loses packets
//! of the pod MTU towards five others, one has just restarted (every entry unknown), and one
//! has not seen two leases (its answer covers other peers than the leases give it, so netctl
//! asks it its whole report).
//!
//! Measured per run: wall time (spawn to exit) and peak RSS of netctl (getrusage of a helper
//! process whose only child it is), the bytes the stand-in weftds sent (HTTP headers
//! included) and the requests they answered, and the size of netctl's output. Results go to
//! docs/benchmarks.md.
//!
//!   cargo build --release -p weft-agent -p weft-tests --bins
//!   sudo target/release/bench-cluster [--nodes 5000] [--runs 3] [--before PATH]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{PutOptions, Txn, TxnOp};
use ipnetwork::Ipv4Network;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_agent::mesh::report::{
    asks_for_problems, FamilyName, HealthReport, MtuResult, PeerHealth, PeerSetDigest, PeerState,
    ProblemsReport, StateCounts,
};
use weft_agent::store::LeaseStore;
use weft_tests::bench::{machine, write_section};
use weft_tests::etcd::Etcd;
use weft_tests::netns::Netns;

const PREFIX: &str = "/coreos.com/network";
const CONFIG: &str = r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;
const HEALTH_PORT: u16 = 8471;
/// One netctl run may take this long before the benchmark gives up on it.
const RUN_BOUND: Duration = Duration::from_secs(600);
const NOW: u64 = 1_800_000_000;

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn node_name(i: usize) -> String {
    format!("node-{}", i + 1)
}

/// Node `i`'s subnet: 10.20.1.0/24 onwards.
fn subnet(i: usize) -> Ipv4Network {
    let n = i + 1 + 20 * 256;
    Ipv4Network::new(Ipv4Addr::new(10, (n / 256) as u8, (n % 256) as u8, 0), 24).unwrap()
}

fn public_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// The node whose public IP `ip` is.
fn node_of(ip: IpAddr, n: usize) -> Option<usize> {
    let IpAddr::V4(v4) = ip else { return None };
    let [a, b, c, d] = v4.octets();
    let i = (usize::from(c) * 250 + usize::from(d)).checked_sub(1)?;
    ((a, b) == (198, 18) && d >= 1 && i < n).then_some(i)
}

// --- the cluster's health, as each node's weftd would report it --------------------------

/// The nodes with a problem, by index.
#[derive(Clone, Copy, Debug)]
struct Scenario {
    /// Down: its weftd resets every connection; every other node finds it unreachable.
    down: usize,
    /// The overlay between these two is broken, both ways.
    pair: (usize, usize),
    /// Loses packets of the pod MTU towards the next five nodes.
    mtu: usize,
    /// Just restarted: every entry unknown.
    restarted: usize,
    /// Has not seen the leases of the next two nodes.
    stale: usize,
}

impl Scenario {
    fn for_nodes(n: usize) -> Scenario {
        Scenario {
            down: n / 50,
            pair: (n / 4, n * 3 / 4),
            mtu: n * 3 / 5,
            restarted: n * 4 / 5,
            stale: n / 2,
        }
    }

    /// What node `o`'s weftd says of node `t`; None: no entry (it has not seen the lease).
    fn state(&self, o: usize, t: usize) -> Option<PeerState> {
        if o == self.stale && (t == o + 1 || t == o + 2) {
            return None;
        }
        Some(if o == self.restarted {
            PeerState::Unknown
        } else if t == self.down {
            PeerState::Unreachable
        } else if (o, t) == self.pair || (t, o) == self.pair {
            PeerState::OverlayBroken
        } else if o == self.mtu && t > o && t <= o + 5 {
            PeerState::MtuBelowPodMtu
        } else {
            PeerState::Ok
        })
    }
}

fn entry(t: usize, state: PeerState) -> PeerHealth {
    let (ip, sub) = (public_ip(t), subnet(t));
    let overlay = sub.network();
    let reason = match state {
        PeerState::Ok => "overlay 0.2 ms, underlay 0.2 ms, 1450 bytes pass".to_string(),
        PeerState::Unknown => "no probe has finished yet".to_string(),
        PeerState::OverlayBroken => format!("{ip} (underlay) answers, {overlay} (overlay) does not answer: is UDP 8472 (VXLAN) blocked between the two nodes, or are packets through weft.1 lost (checksum offload)?"),
        PeerState::Unreachable => format!("{overlay} (overlay) does not answer and {ip} (underlay) does not answer: the node or the network between is down"),
        PeerState::MtuBelowPodMtu => "probes of 1450 bytes (the pod MTU) over the overlay get no answer, 1400 bytes pass: the path MTU to this node is below the pod MTU; lower Backend.MTU or raise the underlay's MTU".to_string(),
        PeerState::AgentNotAnswering => format!("{ip} refuses the probe port: no weftd answers probes there"),
    };
    let answers = matches!(state, PeerState::Ok | PeerState::MtuBelowPodMtu);
    PeerHealth {
        node: Some(node_name(t)),
        subnet: sub.to_string(),
        family: FamilyName::Ipv4,
        public_ip: IpAddr::V4(ip),
        overlay_ip: Some(IpAddr::V4(overlay)),
        state,
        reason,
        overlay_rtt_ms: answers.then_some(0.213),
        underlay_rtt_ms: (state != PeerState::Unreachable).then_some(0.187),
        mtu: MtuResult {
            pod_mtu: 1450,
            largest_ok: (state == PeerState::MtuBelowPodMtu).then_some(1400),
            pod_mtu_ok: match state {
                PeerState::Ok => Some(true),
                PeerState::MtuBelowPodMtu => Some(false),
                _ => None,
            },
        },
        since_unix: NOW - 600,
    }
}

/// Node `o`'s report without its peers.
fn header(o: usize) -> HealthReport {
    HealthReport {
        node: node_name(o),
        subnets: vec![subnet(o).to_string()],
        public_ips: vec![IpAddr::V4(public_ip(o))],
        backend: "vxlan".into(),
        interval_seconds: 10.0,
        effective_interval_seconds: 210.0,
        generated_unix: NOW,
        peers: Vec::new(),
    }
}

const HTTP_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";

/// Every node's answers, ready to send: the whole report is put together per request from
/// each peer's entry (made once), the problems answer is made once per node.
struct Answers {
    n: usize,
    scenario: Scenario,
    /// Each node's entry as a peer that is ok, as JSON.
    ok_entries: Vec<Vec<u8>>,
    /// Each node's report JSON up to its peers' `[`.
    heads: Vec<Vec<u8>>,
    /// Each node's HTTP answer to `?problems`.
    problems: Vec<Vec<u8>>,
}

impl Answers {
    fn new(n: usize, scenario: Scenario) -> Answers {
        let ok_entries = (0..n)
            .map(|t| serde_json::to_vec(&entry(t, PeerState::Ok)).unwrap())
            .collect();
        let heads = (0..n)
            .map(|o| {
                let mut v = serde_json::to_vec(&header(o)).unwrap();
                assert!(v.ends_with(b"[]}"), "peers come last in a report");
                v.truncate(v.len() - 2);
                v
            })
            .collect();
        let mut a = Answers {
            n,
            scenario,
            ok_entries,
            heads,
            problems: Vec::new(),
        };
        a.problems = (0..n).map(|o| a.problems_answer(o)).collect();
        a
    }

    fn peers_of(&self, o: usize) -> impl Iterator<Item = (usize, PeerState)> + '_ {
        (0..self.n)
            .filter(move |&t| t != o)
            .filter_map(move |t| Some((t, self.scenario.state(o, t)?)))
    }

    /// What weftd serves on `?problems`, made as weftd makes it: the entries not ok, all of
    /// them counted, the digest of every entry's subnet.
    fn problems_answer(&self, o: usize) -> Vec<u8> {
        let mut counts = StateCounts::new();
        let mut peers = Vec::new();
        for (t, state) in self.peers_of(o) {
            *counts
                .entry(FamilyName::Ipv4)
                .or_default()
                .entry(state)
                .or_default() += 1;
            if !state.is_ok() {
                peers.push(entry(t, state));
            }
        }
        let subnets: Vec<String> = self
            .peers_of(o)
            .map(|(t, _)| subnet(t).to_string())
            .collect();
        let answer = ProblemsReport {
            report: HealthReport { peers, ..header(o) },
            counts,
            peers_digest: PeerSetDigest::of(subnets.iter().map(String::as_str)),
        };
        [HTTP_OK, &serde_json::to_vec(&answer).unwrap()].concat()
    }

    /// What weftd serves on `/health/peers`.
    fn whole_answer(&self, o: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(HTTP_OK.len() + 300 * self.n);
        out.extend_from_slice(HTTP_OK);
        out.extend_from_slice(&self.heads[o]);
        for (k, (t, state)) in self.peers_of(o).enumerate() {
            if k > 0 {
                out.push(b',');
            }
            if state.is_ok() {
                out.extend_from_slice(&self.ok_entries[t]);
            } else {
                out.extend_from_slice(&serde_json::to_vec(&entry(t, state)).unwrap());
            }
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// The problems answer is the one `ProblemsReport::of` makes of the whole report.
    fn check(&self, o: usize) {
        let whole = self.whole_answer(o);
        let report: HealthReport = serde_json::from_slice(&whole[HTTP_OK.len()..]).unwrap();
        let made = serde_json::to_vec(&ProblemsReport::of(report)).unwrap();
        assert_eq!(
            made,
            self.problems[o][HTTP_OK.len()..],
            "node {o}: the problems answer"
        );
    }
}

// --- the stand-in weftds --------------------------------------------------------------

/// What the stand-in weftds sent since the last [`Served::take`].
#[derive(Debug, Default)]
struct Served {
    bytes: AtomicU64,
    requests: AtomicU64,
    whole: AtomicU64,
}

impl Served {
    fn take(&self) -> (u64, u64, u64) {
        (
            self.bytes.swap(0, Ordering::SeqCst),
            self.requests.swap(0, Ordering::SeqCst),
            self.whole.swap(0, Ordering::SeqCst),
        )
    }
}

/// A listener on 0.0.0.0:`port` inside `ns`.
fn listener_in(ns: &Netns, port: u16) -> std::net::TcpListener {
    let file = std::fs::File::open(ns.path()).expect("open the namespace");
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("enter the namespace");
        let l = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind 8471");
        l.set_nonblocking(true).unwrap();
        l
    })
    .join()
    .expect("namespace thread")
}

/// Answer every connection as the weftd of the node connected to. `knows_problems`: answer
/// `?problems` with the problems (else with the whole report, as an older weftd does).
async fn serve(
    listener: tokio::net::TcpListener,
    answers: Arc<Answers>,
    served: Arc<Served>,
    knows_problems: Arc<AtomicBool>,
) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let (answers, served, knows) = (answers.clone(), served.clone(), knows_problems.clone());
        tokio::spawn(async move {
            let Some(o) = s.local_addr().ok().and_then(|a| node_of(a.ip(), answers.n)) else {
                return;
            };
            if o == answers.scenario.down {
                let _ = s.set_zero_linger();
                return; // dropped: a reset, as from a node whose weftd is gone
            }
            let mut head = Vec::new();
            let mut buf = [0u8; 2048];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => head.extend_from_slice(&buf[..k]),
                }
            }
            let target = String::from_utf8_lossy(&head)
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let query = target.split_once('?').map(|(_, q)| q);
            let whole;
            let reply: &[u8] = if knows.load(Ordering::SeqCst) && asks_for_problems(query) {
                &answers.problems[o]
            } else {
                served.whole.fetch_add(1, Ordering::SeqCst);
                whole = answers.whole_answer(o);
                &whole
            };
            if s.write_all(reply).await.is_ok() {
                served.bytes.fetch_add(reply.len() as u64, Ordering::SeqCst);
                served.requests.fetch_add(1, Ordering::SeqCst);
            }
            let _ = s.shutdown().await;
        });
    }
}

// --- measuring one netctl run -----------------------------------------------------------

/// `bench-cluster --measure OUT PROGRAM ARGS…`: run PROGRAM, its stdout to OUT, stderr to
/// OUT.err, bounded; print "exit-code wall-ms peak-rss-kb". This process's only child is
/// PROGRAM, so the children's peak RSS is PROGRAM's.
fn measure(args: &[String]) -> ! {
    let (out, program, rest) = (&args[0], &args[1], &args[2..]);
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(format!("{out}.err")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > RUN_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} did not finish within {RUN_BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall = started.elapsed();
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage");
    println!(
        "{} {:.1} {}",
        status.code().unwrap_or(-1),
        wall.as_secs_f64() * 1e3,
        usage.max_rss()
    );
    std::process::exit(0);
}

/// One run's figures.
#[derive(Clone, Debug, Default)]
struct Sample {
    wall_ms: f64,
    rss_kb: f64,
    fetched: f64,
    requests: f64,
    whole: f64,
    output: f64,
    code: i32,
    asked: usize,
}

/// Which netctl against which weftds, and the output asked.
#[derive(Clone, Debug)]
struct Case {
    netctl: PathBuf,
    /// The weftds know `?problems`.
    problems: bool,
    output: &'static str,
}

/// What the benchmark runs in and against.
struct Bench {
    ns: Netns,
    etcd_endpoint: String,
    served: Arc<Served>,
    knows_problems: Arc<AtomicBool>,
    dir: tempfile::TempDir,
    nodes: usize,
}

impl Bench {
    /// Run `case` once; its output goes to [`Bench::output`]`(c, k)`.
    fn run(&self, case: &Case, c: usize, k: usize) -> Sample {
        self.knows_problems.store(case.problems, Ordering::SeqCst);
        self.served.take();
        let out = self.output(c, k);
        let me = std::env::current_exe().unwrap();
        let mut cmd = self.ns.cmd(&me);
        cmd.arg("--measure").arg(&out).arg(&case.netctl).args([
            "--etcd-endpoints",
            &self.etcd_endpoint,
            "health",
            "--cluster",
            "-o",
            case.output,
        ]);
        let (code, stdout, stderr) = weft_tests::procs::run_bounded(cmd, RUN_BOUND * 2);
        assert_eq!(code, 0, "measure helper: {stderr}");
        let f: Vec<&str> = stdout.split_whitespace().collect();
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let (bytes, requests, whole) = self.served.take();
        let sample = Sample {
            code: f[0].parse().unwrap(),
            wall_ms: f[1].parse().unwrap(),
            rss_kb: f[2].parse().unwrap(),
            fetched: bytes as f64,
            requests: requests as f64,
            whole: whole as f64,
            output: text.len() as f64,
            asked: asked_of(&text, case.output),
        };
        let err = std::fs::read_to_string(format!("{}.err", out.display())).unwrap_or_default();
        eprintln!(
            "{} {:?} problems={}: {sample:?}; stderr: {}",
            case.netctl.display(),
            case.output,
            case.problems,
            err.lines().next().unwrap_or_default()
        );
        assert_eq!(sample.code, 1, "problems found is exit 1: {err}");
        if sample.asked != self.nodes - 1 {
            eprintln!(
                "warning: {} nodes asked, not {} (every node but the one down)",
                sample.asked,
                self.nodes - 1
            );
        }
        sample
    }
}

impl Bench {
    /// Where the `k`th run of case `c` writes its output.
    fn output(&self, c: usize, k: usize) -> PathBuf {
        self.dir.path().join(format!("out-{c}-{k}"))
    }
}

/// "N asked" from the output.
fn asked_of(text: &str, output: &str) -> usize {
    if output == "json" {
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        return v["summary"]["asked"].as_u64().unwrap_or(0) as usize;
    }
    text.split(" asked;")
        .next()
        .and_then(|h| h.rsplit(' ').next())
        .and_then(|k| k.parse().ok())
        .unwrap_or(0)
}

fn median(v: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    let mut x: Vec<f64> = v.iter().map(f).collect();
    x.sort_by(f64::total_cmp);
    x[x.len() / 2]
}

async fn write_leases(etcd: &Etcd, n: usize) {
    let store = etcd.store(PREFIX).await;
    store.put_config(CONFIG.as_bytes()).await.unwrap();
    let mut raw = etcd.raw_client().await;
    let grant = raw.lease_grant(7200, None).await.unwrap().id();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|&i| {
                let s = subnet(i);
                let key = format!("{PREFIX}/subnets/{}-{}", s.network(), s.prefix());
                let value = format!(
                    r#"{{"PublicIP":"{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:{:02x}:{:02x}"}},"NodeName":"{}"}}"#,
                    public_ip(i),
                    i / 256,
                    i % 256,
                    node_name(i)
                );
                TxnOp::put(key, value, Some(PutOptions::new().with_lease(grant)))
            })
            .collect();
        raw.txn(Txn::new().and_then(ops)).await.unwrap();
    }
}

fn mb(bytes: f64) -> String {
    if bytes >= 1e9 {
        format!("{:.2} GB", bytes / 1e9)
    } else if bytes >= 1e6 {
        format!("{:.1} MB", bytes / 1e6)
    } else {
        format!("{:.0} KB", bytes / 1e3)
    }
}

/// The first lines of the text output at this size, as an operator sees them.
fn text_excerpt(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<String> = Vec::new();
    for l in text.lines() {
        let l: String = if l.chars().count() > 100 {
            format!("{}…", l.chars().take(100).collect::<String>())
        } else {
            l.to_string()
        };
        lines.push(l);
    }
    // The headline and the matrix's first rows, then the notes and the summary.
    let folded = lines.iter().position(|l| l.starts_with("(")).unwrap_or(12);
    let mut keep: Vec<String> = lines.iter().take(8).cloned().collect();
    keep.push("…".into());
    keep.extend(lines.iter().skip(folded.saturating_sub(2)).take(8).cloned());
    keep.push("…".into());
    let cause = lines
        .iter()
        .position(|l| l == "Likely cause:")
        .unwrap_or(lines.len());
    keep.extend(lines.iter().skip(cause).cloned());
    keep.join("\n")
}

/// A case's runs.
#[derive(Clone, Debug)]
struct CaseResult {
    label: &'static str,
    case: Case,
    samples: Vec<Sample>,
}

/// Each output, asked by this netctl of weftds that know `?problems`, then of older ones,
/// then (with `before`) by the previous netctl.
fn cases(netctl: &Path, before: Option<&Path>) -> Vec<(&'static str, Case)> {
    let mut kinds = vec![
        ("this netctl, weftds that know `?problems`", netctl, true),
        ("this netctl, older weftds (whole reports)", netctl, false),
    ];
    if let Some(b) = before {
        kinds.push((
            "the previous netctl (whole reports, dense matrix)",
            b,
            false,
        ));
    }
    kinds
        .into_iter()
        .flat_map(|(label, netctl, problems)| {
            ["table", "json", "html"].map(|output| {
                let case = Case {
                    netctl: netctl.to_path_buf(),
                    problems,
                    output,
                };
                (label, case)
            })
        })
        .collect()
}

/// The stand-in weftds: the namespace, the relay to etcd, the listener and its task.
struct StandIns {
    bench: Bench,
    server: tokio::task::JoinHandle<()>,
    _relay: weft_tests::forward::Forward,
    /// One node's whole report, in bytes.
    whole_size: usize,
}

impl StandIns {
    async fn start(etcd: &Etcd, n: usize) -> StandIns {
        let ns = Netns::new("cluster");
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["route", "add", "local", "198.18.0.0/16", "dev", "lo"]);
        let etcd_endpoint = etcd.endpoints()[0].clone();
        let etcd_addr: SocketAddr = etcd_endpoint
            .trim_start_matches("http://")
            .parse()
            .expect("etcd endpoint");
        let relay = weft_tests::forward::into_ns(&ns.path(), etcd_addr, etcd_addr).expect("relay");
        let scenario = Scenario::for_nodes(n);
        let answers = Arc::new(Answers::new(n, scenario));
        for o in [
            0,
            scenario.pair.0,
            scenario.mtu,
            scenario.restarted,
            scenario.stale,
        ] {
            answers.check(o);
        }
        let served = Arc::new(Served::default());
        let knows_problems = Arc::new(AtomicBool::new(true));
        let listener = tokio::net::TcpListener::from_std(listener_in(&ns, HEALTH_PORT)).unwrap();
        let server = tokio::spawn(serve(
            listener,
            answers.clone(),
            served.clone(),
            knows_problems.clone(),
        ));
        StandIns {
            whole_size: answers.whole_answer(1).len(),
            bench: Bench {
                ns,
                etcd_endpoint,
                served,
                knows_problems,
                dir: tempfile::tempdir().unwrap(),
                nodes: n,
            },
            server,
            _relay: relay,
        }
    }
}

/// The pairs not ok, from a JSON output.
fn not_ok_pairs(json: &Path) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap_or_default())
            .unwrap_or_default();
    v["summary"]["failingPairs"].as_u64().unwrap_or(0)
        + v["summary"]["unknownPairs"].as_u64().unwrap_or(0)
}

fn load_average() -> String {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split_whitespace().next().unwrap_or("?").to_string()
}

/// What the section says besides the results.
struct Setting {
    n: usize,
    runs: usize,
    before: bool,
    load_start: String,
    load_end: String,
    whole_size: usize,
    not_ok_pairs: u64,
    excerpt: String,
    netctl: PathBuf,
}

fn results_table(results: &[CaseResult], n: usize) -> String {
    let mut table = vec![
        "| netctl and weftds | output | wall time (s) | peak RSS of netctl (MiB) | fetched | requests (of them whole reports) | nodes asked | output size |".to_string(),
        "|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for r in results {
        let s = &r.samples;
        table.push(format!(
            "| {} | {} | {:.2} | {:.1} | {} | {:.0} ({:.0}) | {:.0} of {n} | {} |",
            r.label,
            r.case.output,
            median(s, |x| x.wall_ms) / 1e3,
            median(s, |x| x.rss_kb) / 1024.0,
            mb(median(s, |x| x.fetched)),
            median(s, |x| x.requests),
            median(s, |x| x.whole),
            median(s, |x| x.asked as f64),
            mb(median(s, |x| x.output)),
        ));
    }
    table.join("\n")
}

/// The findings, with the ratios of this netctl's text runs (problems against whole
/// reports).
fn findings(results: &[CaseResult], set: &Setting) -> String {
    let of = |problems: bool, f: &dyn Fn(&Sample) -> f64| {
        results
            .iter()
            .find(|r| {
                r.case.problems == problems
                    && r.case.output == "table"
                    && r.case.netctl == set.netctl
            })
            .map_or(f64::NAN, |r| median(&r.samples, f))
    };
    let wall = |x: &Sample| x.wall_ms;
    let bytes = |x: &Sample| x.fetched;
    let n = set.n;
    format!(
        "Asking for the problems, netctl takes {:.0}× less time and fetches {:.0}× fewer bytes than asking for the whole reports, and its memory no longer grows with the square of the nodes (the matrix keeps only the pairs that are not ok: {} of the {} here); the whole reports are what the previous netctl always asked, and what an older weftd answers still, which this netctl reads as before. The previous netctl's text printed every row with a problem, here every row (one node is down, so each row has a cell that fails), and its page drew up to 250,000 cells; this one prints the 40 rows and columns with the most failures and counts the rest, and draws at most 300 × 100 cells. The JSON keeps a symbol for every pair (`rows`: {n} strings of {n}), so its size and netctl's memory for it grow with the square of the nodes.",
        of(false, &wall) / of(true, &wall),
        of(false, &bytes) / of(true, &bytes),
        set.not_ok_pairs,
        n * (n - 1),
    )
}

fn section(results: &[CaseResult], set: &Setting) -> String {
    let table = results_table(results, set.n);
    println!("{table}");
    let per_run: Vec<String> = results
        .iter()
        .map(|r| {
            let walls: Vec<String> = r
                .samples
                .iter()
                .map(|x| format!("{:.2}", x.wall_ms / 1e3))
                .collect();
            format!("{}, {}: {}", r.label, r.case.output, walls.join(", "))
        })
        .collect();
    let (n, runs) = (set.n, set.runs);
    let before_flag = if set.before {
        " --before <previous netctl>"
    } else {
        ""
    };
    format!(
        "<!-- bench-cluster:begin -->\n## netctl health --cluster at {n} nodes\n\nMeasured by `target/release/bench-cluster --nodes {n} --runs {runs}{before_flag}` (tests/src/bin/bench-cluster.rs) on {machine}, shared with other work (load average 1 min {l0} at the start, {l1} at the end): a real etcd 3.4 on loopback holding {n} vxlan leases, their public IPs in 198.18.0.0/16; a namespace with that range local on its loopback and one listener on port 8471 that answers as the weftd of the node connected to (the problems answer made with weftd's own `ProblemsReport`, the whole report of {n_1} entries, {whole} per node); the real release netctl in the namespace with its defaults (`--parallel 64`, `--timeout 3s`), etcd reached through a relay. Problems: one node down (its weftd resets the connection, every other node finds it unreachable), one pair's overlay broken both ways, one node losing pod-MTU packets towards five others, one just restarted (all {n_1} of its entries unknown), and one that has not seen two leases (so netctl asks it its whole report too). Wall time is from spawn to exit, peak RSS from getrusage, bytes are what the stand-in weftds sent (HTTP headers included); median of {runs} runs.\n\n{table}\n\n{findings}\n\nWall times of each run (s): {per_run}.\n\nWhat the text shows at this size (lines cut at 100 characters):\n\n```\n{excerpt}\n```\n<!-- bench-cluster:end -->\n",
        machine = machine(),
        l0 = set.load_start,
        l1 = set.load_end,
        n_1 = n - 1,
        whole = mb(set.whole_size as f64),
        findings = findings(results, set),
        per_run = per_run.join("; "),
        excerpt = set.excerpt,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--measure") {
        measure(&args[2..]);
    }
    weft_tests::netns::require_root();
    let n: usize = arg("--nodes").and_then(|v| v.parse().ok()).unwrap_or(5000);
    let runs: usize = arg("--runs").and_then(|v| v.parse().ok()).unwrap_or(3);
    let before = arg("--before").map(PathBuf::from);
    let netctl = weft_tests::procs::bin("netctl");
    let load_start = load_average();

    let etcd = Etcd::start().await;
    let t = Instant::now();
    write_leases(&etcd, n).await;
    eprintln!("wrote {n} leases in {:?}", t.elapsed());
    let stand_ins = StandIns::start(&etcd, n).await;
    let bench = &stand_ins.bench;
    let results: Vec<CaseResult> = cases(&netctl, before.as_deref())
        .into_iter()
        .enumerate()
        .map(|(c, (label, case))| CaseResult {
            label,
            samples: (0..runs).map(|k| bench.run(&case, c, k)).collect(),
            case,
        })
        .collect();
    stand_ins.server.abort();
    let set = Setting {
        n,
        runs,
        before: before.is_some(),
        load_start,
        load_end: load_average(),
        whole_size: stand_ins.whole_size,
        // This netctl asking weftds that know `?problems`: the text (case 0), the JSON (1).
        not_ok_pairs: not_ok_pairs(&bench.output(1, 0)),
        excerpt: text_excerpt(&bench.output(0, 0)),
        netctl,
    };
    write_section("bench-cluster", &section(&results, &set));
}
