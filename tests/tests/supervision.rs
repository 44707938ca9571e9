//! Nothing in weftd dies silently: with the test-only fault hook (`weftd-fault`, built with
//! the `fault-injection` feature; `WEFT_FAULT` names the tasks that panic once weftd is
//! ready), a panicking task is logged and restarted, counted in `weft_task_restarts_total`
//! and named by `/healthz` while it is down; a task that cannot be restarted stops weftd with
//! a non-zero exit. The real binary in a test namespace, against a real etcd.

use std::time::Duration;

use weft_agent::lease::{Endpoint, LeaseAttrs};
use weft_agent::store::LeaseStore;
use weft_backends::backend::{BackendData, VxlanData};
use weft_backends::{BackendKind, MacAddr};
use weft_tests::etcd::Etcd;
use weft_tests::procs::{bin, http_get, metric, Weftd};
use weft_tests::wait_for;

const PREFIX: &str = "/coreos.com/network";
const CONFIG: &[u8] = br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const WAIT: Duration = Duration::from_secs(30);

/// Start `weftd-fault` with `WEFT_FAULT=faults` (through a shell that drops the weftd path
/// the harness appends and execs the fault binary in its place).
fn start(etcd: &Etcd, node: &str, ip: &str, faults: &str, extra: &[&str]) -> Weftd {
    let fault_bin = bin("weftd-fault");
    let script = format!(
        "shift; exec env WEFT_FAULT={faults} {} \"$@\"",
        fault_bin.display()
    );
    let prefix = ["sh", "-ec", script.as_str(), "sh"];
    Weftd::start_under(&prefix, node, ip, &etcd.cli_args(), extra)
}

fn restarts(w: &Weftd, task: &str) -> Option<f64> {
    metric(
        &w.metrics(),
        &format!("weft_task_restarts_total{{task=\"{task}\"}}"),
    )
}

fn healthz(w: &Weftd) -> Option<(u16, String)> {
    http_get(w.port, "/healthz")
}

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

const RESTARTED: [&str; 3] = ["peer-watch", "dataplane-ipv4", "firewall-ipv4"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_watch_reconciler_or_firewall_is_logged_restarted_once_and_keeps_working() {
    let etcd = Etcd::start().await;
    let store = etcd.store(PREFIX).await;
    store.put_config(CONFIG).await.unwrap();
    let w = start(
        &etcd,
        "node-s",
        "192.0.2.30",
        &RESTARTED.join(","),
        &["--ip-masq"],
    );
    w.wait_ready(WAIT).await;
    for task in RESTARTED {
        wait_for(&format!("{task} to be restarted"), WAIT, || async {
            (restarts(&w, task) == Some(1.0)).then_some(())
        })
        .await;
    }
    wait_for("/healthz to answer 200 again", WAIT, || async {
        matches!(healthz(&w), Some((200, _))).then_some(())
    })
    .await;
    // The restarted watch and reconciler still do their work: a new peer is programmed.
    store
        .create("10.244.90.0-24", &peer_lease("node-p", "192.0.2.90"), None)
        .await
        .unwrap();
    wait_for("the new peer's route", WAIT, || async {
        w.ns.ip(&["route", "show", "10.244.90.0/24"])
            .contains("weft.1")
            .then_some(())
    })
    .await;
    let m = w.metrics();
    for task in RESTARTED {
        assert_eq!(restarts(&w, task), Some(1.0), "{task}:\n{m}");
    }
    assert_eq!(restarts(&w, "mtu-watch"), Some(0.0), "{m}");
    assert_eq!(metric(&m, "weft_ready"), Some(1.0), "{m}");
    let log = w.proc.log_text();
    for task in RESTARTED {
        let line = format!("task {task} panicked: injected fault in task {task}; restarting it in");
        assert_eq!(log.matches(&line).count(), 1, "{line}:\n{log}");
    }
    assert!(w.proc.pid().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_names_a_task_that_keeps_failing() {
    let etcd = Etcd::start().await;
    let store = etcd.store(PREFIX).await;
    store.put_config(CONFIG).await.unwrap();
    for (i, task) in RESTARTED.iter().enumerate() {
        let w = start(
            &etcd,
            &format!("node-h{i}"),
            &format!("192.0.2.{}", 40 + i),
            &format!("{task}:always"),
            &["--ip-masq"],
        );
        w.wait_ready(WAIT).await;
        let expected = format!(
            "unhealthy: task {task} is not running (panicked: injected fault in task {task}); restarting it in"
        );
        let body = wait_for(&format!("/healthz to name {task}"), WAIT, || async {
            match healthz(&w) {
                Some((503, body)) if body.starts_with(&expected) => Some(body),
                _ => None,
            }
        })
        .await;
        assert!(body.ends_with(" s\n"), "{body}");
        assert!(restarts(&w, task).is_some_and(|n| n >= 1.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_keeper_or_health_server_stops_weftd_with_status_1() {
    let etcd = Etcd::start().await;
    let store = etcd.store(PREFIX).await;
    store.put_config(CONFIG).await.unwrap();
    for (i, task) in ["keeper", "health-server"].iter().enumerate() {
        let mut w = start(
            &etcd,
            &format!("node-f{i}"),
            &format!("192.0.2.{}", 50 + i),
            task,
            &[],
        );
        let status = wait_for(&format!("weftd to stop after {task} failed"), WAIT, || {
            let st = w.proc.try_exit();
            async move { st }
        })
        .await;
        let log = w.proc.log_text();
        assert_eq!(status.code(), Some(1), "{log}");
        let line = format!("task {task} panicked: injected fault in task {task}; weftd stops");
        assert_eq!(log.matches(&line).count(), 1, "{line}:\n{log}");
    }
}
