//! Benchmark (not a test): what an agent start costs against a cluster of 5,000 leases.
//!
//! Starts a real etcd on loopback, writes a network config and 5,000 leases, then measures
//! the real `weftd` binary (release build next to this one): time from spawn to /readyz,
//! time until all 5,000 peers are known, and the etcd requests it sent (its own
//! `weft_etcd_requests_total`). Two cases: a new node joining, and a node restarting onto
//! its existing lease. For comparison, the same etcd is read the way flannel does at start
//! (one range plus one TimeToLive per lease). Results go to docs/benchmarks.md.
//!
//!   cargo build --release --workspace --bins && target/release/bench-startup [--runs 5]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use weft_tests::bench::{flag_value, machine, write_section, PeerNumbering, VxlanLease};

use etcd_client::{PutOptions, Txn, TxnOp};
use weft_agent::store::LeaseStore;
use weft_tests::etcd::Etcd;
use weft_tests::procs::{metric, Weftd};

const LEASES: usize = 5000;
const PREFIX: &str = "/coreos.com/network";
/// The leases' numbering: lease `i` has subnet and public IP number `i + 1` of it (the first
/// 10.0.1.0/24 and 198.18.0.2) and VTEP MAC number `i` (02:00:00:00:00:00).
const PEERS: PeerNumbering = PeerNumbering {
    first_subnet: Ipv4Addr::new(10, 0, 0, 0),
    public_ips: Ipv4Addr::new(198, 18, 0, 0),
    mac_first_byte: 0x02,
};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Sample {
    ready_ms: f64,
    peers_ms: f64,
    requests: f64,
}

async fn measure(w: &Weftd, started: Instant) -> Sample {
    loop {
        if let Some((200, _)) = w.readyz() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "weftd not ready:\n{}",
            w.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ready_ms = started.elapsed().as_secs_f64() * 1e3;
    loop {
        let m = w.metrics();
        if metric(&m, "weft_peers") == Some(LEASES as f64) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "peers never reached {LEASES}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let peers_ms = started.elapsed().as_secs_f64() * 1e3;
    // Let the watch start; then read the count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests = metric(&w.metrics(), "weft_etcd_requests_total").unwrap_or(f64::NAN);
    Sample {
        ready_ms,
        peers_ms,
        requests,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = flag_value("--runs").unwrap_or(5);
    let etcd = Etcd::start().await;
    let store = etcd.store(PREFIX).await;
    store
        .put_config(br#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#)
        .await
        .unwrap();
    let mut raw = etcd.raw_client().await;
    let grant = raw.lease_grant(7200, None).await.unwrap().id();
    let t = Instant::now();
    for chunk in (0..LEASES).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|&i| {
                let node = format!("bench-{i}");
                let lease = VxlanLease {
                    subnet: PEERS.subnet(i + 1),
                    public_ip: PEERS.public_ip(i + 1),
                    vtep_mac: PEERS.vtep_mac(i),
                    node: &node,
                };
                TxnOp::put(
                    lease.key(PREFIX),
                    lease.value(),
                    Some(PutOptions::new().with_lease(grant)),
                )
            })
            .collect();
        raw.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    eprintln!("wrote {LEASES} leases in {:?}", t.elapsed());

    let mut new_node = Vec::new();
    let mut restart = Vec::new();
    for run in 0..runs {
        let node = format!("joiner-{run}");
        let started = Instant::now();
        let w = Weftd::start(&node, "192.0.2.200", &etcd.cli_args(), &[]);
        new_node.push(measure(&w, started).await);
        let w = {
            let mut w = w;
            w.proc.stop(Duration::from_secs(10));
            let started = Instant::now();
            let w = w.restart();
            restart.push(measure(&w, started).await);
            w
        };
        drop(w);
        // Remove the joiner's lease so the next run joins afresh.
        let snap = store.snapshot(false).await.unwrap();
        for e in snap
            .entries
            .iter()
            .filter(|e| String::from_utf8_lossy(&e.value).contains(&format!("\"{node}\"")))
        {
            store.delete(&e.name, None).await.unwrap();
        }
    }

    // flannel's start: one range, then a TimeToLive per lease.
    let mut flannel_ms = Vec::new();
    let mut flannel_requests = 0;
    for _ in 0..runs {
        let before = store.request_count();
        let t = Instant::now();
        let snap = store.snapshot(false).await.unwrap();
        for e in &snap.entries {
            if let Some(l) = e.ttl_lease {
                store.time_to_live(l).await.unwrap();
            }
        }
        flannel_ms.push(t.elapsed().as_secs_f64() * 1e3);
        flannel_requests = store.request_count() - before;
    }

    let row = |name: &str, s: &[Sample]| {
        format!(
            "| {name} | {:.0} | {:.0} | {:.0} |",
            median(s.iter().map(|x| x.requests).collect()),
            median(s.iter().map(|x| x.ready_ms).collect()),
            median(s.iter().map(|x| x.peers_ms).collect()),
        )
    };
    let table = [
        "| case | etcd requests | spawn → /readyz (ms, median) | spawn → all 5,000 peers known (ms, median) |".to_string(),
        "|---|---|---|---|".to_string(),
        row("weftd, new node joining", &new_node),
        row("weftd, restart onto its existing lease", &restart),
        format!("| flannel-style read (1 range + 1 TimeToLive per lease), same etcd | {flannel_requests} | {:.0} (reading only) | — |", median(flannel_ms)),
    ]
    .join("\n");
    println!("{table}");
    let section = format!(
        "<!-- bench-startup:begin -->\n## Agent start against 5,000 leases\n\nMeasured by `target/release/bench-startup --runs {runs}` (tests/src/bin/bench-startup.rs) on {}: a real etcd 3.4 on loopback holding a network config and {LEASES} leases; the real release `weftd` binary; median of {runs} runs. \"etcd requests\" is weftd's own `weft_etcd_requests_total`, which counts every request it sends, the watch included.\n\n{table}\n\nWhat the requests are: a new node sends one transaction that reads the config and every lease at one revision, one lease grant and one create-if-absent transaction, then opens the watch from the listing's revision (4). A restarting node reads the same transaction, asks the TimeToLive of its own lease and opens the watch (3). Neither depends on the number of leases. The grant cannot be folded into the create transaction (etcd's v3 API has no lease grant inside a transaction), which is why a joining node needs one request more than the target of 3.\n<!-- bench-startup:end -->\n",
        machine()
    );
    write_section("bench-startup", &section);
}
