//! What an operator sees of a running weftd: its log lines (once per event, in operator
//! words) and the metrics that sum it up. The real weftd binary in a test namespace, against
//! a real etcd.

use std::time::Duration;

use weft_agent::lease::{Endpoint, LeaseAttrs};
use weft_agent::store::{CreateOutcome, LeaseStore};
use weft_backends::backend::{BackendData, VxlanData};
use weft_backends::{BackendKind, MacAddr};
use weft_tests::etcd::Etcd;
use weft_tests::procs::{metric, Weftd};
use weft_tests::wait_for;

const PREFIX: &str = "/coreos.com/network";
const CONFIG: &[u8] = br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const WAIT: Duration = Duration::from_secs(30);

/// Runs before weftd in its namespace: a veth underlay with a default route through it and
/// 2,000 more routes after it, as a busy node has (the interface probe reads the routing
/// table and finds the default first), then execs weftd.
const WITH_ROUTES: &[&str] = &[
    "sh",
    "-ec",
    "ip link add u0 type veth peer name u1; ip addr add 10.9.0.1/24 dev u0; \
     ip link set u0 up; ip link set u1 up; ip route add default via 10.9.0.2; \
     for i in $(seq 0 1999); do \
       echo \"route add 10.$((100 + i / 250)).$((i % 250)).0/24 via 10.9.0.2\"; \
     done | ip -batch -; \
     exec \"$@\"",
    "sh",
];

fn peer_lease(node: &str, ip: &str) -> Vec<u8> {
    LeaseAttrs::for_node(
        node,
        BackendKind::Vxlan,
        Some(Endpoint {
            public_ip: ip.parse().unwrap(),
            data: Some(BackendData::Vxlan(VxlanData {
                vni: 1,
                vtep_mac: MacAddr::derive_from(node),
            })),
        }),
        None,
    )
    .encode()
}

fn lines<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_logs_each_event_once_in_operator_words_and_its_metrics_follow() {
    let etcd = Etcd::start().await;
    let store = etcd.store(PREFIX).await;
    // A short TTL so that several renewals happen during the test.
    let w = Weftd::start_under(
        WITH_ROUTES,
        "node-o",
        "192.0.2.10",
        &etcd.cli_args(),
        &["--subnet-lease-ttl", "4s"],
    );

    // Not ready until the network config exists: /readyz and weft_ready agree.
    wait_for("an unready answer", WAIT, || async {
        matches!(w.readyz(), Some((503, _))).then_some(())
    })
    .await;
    let m = w.metrics();
    assert_eq!(metric(&m, "weft_ready"), Some(0.0), "{m}");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        m.contains(&format!("weft_build_info{{version=\"{version}\"}} 1\n")),
        "{m}"
    );

    store.put_config(CONFIG).await.unwrap();
    w.wait_ready(WAIT).await;
    assert_eq!(metric(&w.metrics(), "weft_ready"), Some(1.0));

    // A peer joins; the lease is renewed several times (every 2 s).
    store
        .create("10.244.77.0-24", &peer_lease("node-p", "192.0.2.77"), None)
        .await
        .unwrap();
    wait_for("three lease renewals", WAIT, || async {
        metric(&w.metrics(), "weft_lease_changes_total").filter(|n| *n >= 4.0)
    })
    .await;

    // The underlay's MTU changes (lo is weftd's interface here): applied live.
    w.ns.ip(&["link", "set", "lo", "mtu", "9000"]);
    wait_for("FLANNEL_MTU to follow the new MTU", WAIT, || async {
        w.subnet_env().contains("FLANNEL_MTU=8950\n").then_some(())
    })
    .await;
    wait_for("the VXLAN device to follow the new MTU", WAIT, || async {
        w.ns.ip(&["link", "show", "weft.1"])
            .contains(" mtu 8950 ")
            .then_some(())
    })
    .await;
    assert_eq!(metric(&w.metrics(), "weft_ready"), Some(1.0));

    let log = w.proc.log_text();
    let starting = lines(&log, "weftd starting");
    assert_eq!(starting.len(), 1, "{log}");
    assert!(
        starting[0].contains(&format!("version={version}")) && starting[0].contains("node=node-o"),
        "{log}"
    );
    assert_eq!(
        lines(&log, "weftd is ready").len(),
        1,
        "ready once, not at every renewal:\n{log}"
    );
    let joined = lines(&log, "peer joined");
    assert_eq!(joined.len(), 1, "{log}");
    assert!(
        joined[0].contains("node=node-p subnet=10.244.77.0/24 public_ip=192.0.2.77"),
        "{log}"
    );
    let mtu = lines(&log, "changed from 65536 to 9000");
    assert_eq!(mtu.len(), 1, "{log}");
    assert!(
        mtu[0].contains("WARN")
            && mtu[0].contains(
                "new pods get MTU 8950 (was 65486) and the VXLAN device follows; \
                 running pods keep MTU 65486 until they are re-created"
            ),
        "{log}"
    );
    assert!(
        lines(&log, "wrote subnet file")
            .iter()
            .all(|l| l.contains("subnet=10.244.") && l.contains(".0/24")),
        "subnets as CIDRs:\n{log}"
    );
    // The interface probe leaves no dangling netlink responses behind.
    assert!(!log.contains("netlink_proto"), "{log}");
    for debug_form in ["Some(", "None", " #", "Deleted {", "Put {"] {
        assert!(
            !log.contains(debug_form),
            "{debug_form:?} in the log:\n{log}"
        );
    }
    for took in log.split("took_ms=").skip(1) {
        let value = took.split_whitespace().next().unwrap_or_default();
        let decimals = value.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 1, "took_ms={value} in:\n{log}");
    }
}

/// `weft_etcd_watch_restarts_total` counts the times the lease watch was re-established, not
/// the lease changes it sees: one etcd restart among many changes is one restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_etcd_restart_among_many_lease_changes_is_one_watch_restart() {
    let mut etcd = Etcd::start().await;
    let store = etcd.store(PREFIX).await;
    // weftd leases below 10.244.100.0, so the peers' subnets above it are always free.
    store
        .put_config(
            br#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.99.0","Backend":{"Type":"vxlan"}}"#,
        )
        .await
        .unwrap();
    let w = Weftd::start("node-r", "192.0.2.20", &etcd.cli_args(), &[]);
    w.wait_ready(WAIT).await;
    let restarts = |w: &Weftd| metric(&w.metrics(), "weft_etcd_watch_restarts_total");
    let peers_are = |n: f64| {
        let w = &w;
        move || async move { (metric(&w.metrics(), "weft_peers") == Some(n)).then_some(()) }
    };
    let key = |n: u8| format!("10.244.{}.0-24", 100 + n);
    let lease = |n: u8| peer_lease(&format!("node-{n}"), &format!("192.0.2.{}", 100 + n));

    // Changes before the restart: ten peers join.
    for n in 1..=10 {
        let created = store.create(&key(n), &lease(n), None).await.unwrap();
        assert!(matches!(created, CreateOutcome::Created(_)), "{created:?}");
    }
    wait_for("ten peers", WAIT, peers_are(10.0)).await;
    assert_eq!(restarts(&w), Some(0.0));

    // etcd goes away and comes back: the watch is re-established once.
    etcd.stop_member(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.restart_member(0).await;
    wait_for("the watch to be re-established", WAIT, || async {
        restarts(&w).filter(|n| *n >= 1.0)
    })
    .await;

    // Many changes after it: ten more join, five leave.
    let store = etcd.store(PREFIX).await;
    for n in 11..=20 {
        let created = store.create(&key(n), &lease(n), None).await.unwrap();
        assert!(matches!(created, CreateOutcome::Created(_)), "{created:?}");
    }
    for n in 1..=5 {
        store.delete(&key(n), None).await.unwrap();
    }
    wait_for("fifteen peers", WAIT, peers_are(15.0)).await;
    assert_eq!(restarts(&w), Some(1.0), "{}", w.proc.log_text());
}
