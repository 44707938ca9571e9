//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::mesh::report::{asks_for_problems, HealthReport, ProblemsReport};

/// This build's version (the workspace's), as `weft_build_info` and the start-up line show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The `family` label of per-family data-plane metrics.
pub type FamilyLabel = [(&'static str, &'static str); 1];

/// The label set for a family (`ipv4` or `ipv6`).
pub fn family_label(family: weft_backends::IpFamily) -> FamilyLabel {
    match family {
        weft_backends::IpFamily::V4 => [("family", "ipv4")],
        weft_backends::IpFamily::V6 => [("family", "ipv6")],
    }
}

/// The agent's metrics. Cheap to clone (every metric is an `Arc`).
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Always 1, labelled `version`: which build runs where.
    pub build_info: Family<[(&'static str, &'static str); 1], Gauge<i64, AtomicI64>>,
    /// 1 while `/readyz` answers 200. Set from the readiness `/readyz` reads, each time the
    /// metrics are served, so the two never disagree.
    pub ready: Gauge<i64, AtomicI64>,
    pub lease_held: Gauge<i64, AtomicI64>,
    pub lease_expiry_seconds: Gauge<i64, AtomicI64>,
    pub peers: Gauge<i64, AtomicI64>,
    pub invalid_leases: Gauge<i64, AtomicI64>,
    pub etcd_requests: Counter<u64, AtomicU64>,
    pub lease_changes: Counter<u64, AtomicU64>,
    pub subnet_env_writes: Counter<u64, AtomicU64>,
    pub reconciles: Counter<u64, AtomicU64>,
    pub reconcile_errors: Counter<u64, AtomicU64>,
    pub repairs: Counter<u64, AtomicU64>,
    /// Per address family (`family="ipv4"|"ipv6"`): each family has its own data plane.
    pub peers_programmed: Family<FamilyLabel, Gauge<i64, AtomicI64>>,
    pub peers_unreachable: Family<FamilyLabel, Gauge<i64, AtomicI64>>,
    pub peers_refused: Family<FamilyLabel, Gauge<i64, AtomicI64>>,
    pub reconcile_seconds: Histogram,
    pub netlink_errors: Counter<u64, AtomicU64>,
    pub watch_restarts: Counter<u64, AtomicU64>,
    pub firewall_repairs: Counter<u64, AtomicU64>,
    /// Restarts of supervised tasks, by task (`task="peer-watch"`, …).
    pub task_restarts: Family<crate::supervisor::TaskLabel, Counter<u64, AtomicU64>>,
    /// etcd contact (see [`crate::store::StoreMetrics`]).
    pub etcd_up: Gauge<i64, AtomicI64>,
    pub etcd_last_success_seconds: Gauge<i64, AtomicI64>,
    pub etcd_request_errors: Family<crate::store::ReasonLabel, Counter<u64, AtomicU64>>,
    /// 1, labelled `implementation="kernel"|"userspace"`, on a node running the wireguard
    /// backend: which WireGuard implementation carries its traffic.
    pub wireguard_implementation: Family<[(&'static str, &'static str); 1], Gauge<i64, AtomicI64>>,
    /// The peer health mesh's.
    pub mesh: crate::mesh::MeshMetrics,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            build_info: Family::default(),
            ready: Gauge::default(),
            lease_held: Gauge::default(),
            lease_expiry_seconds: Gauge::default(),
            peers: Gauge::default(),
            invalid_leases: Gauge::default(),
            etcd_requests: Counter::default(),
            lease_changes: Counter::default(),
            subnet_env_writes: Counter::default(),
            reconciles: Counter::default(),
            reconcile_errors: Counter::default(),
            repairs: Counter::default(),
            peers_programmed: Family::default(),
            peers_unreachable: Family::default(),
            peers_refused: Family::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            netlink_errors: Counter::default(),
            watch_restarts: Counter::default(),
            firewall_repairs: Counter::default(),
            task_restarts: Family::default(),
            etcd_up: Gauge::default(),
            etcd_last_success_seconds: Gauge::default(),
            etcd_request_errors: Family::default(),
            wireguard_implementation: Family::default(),
            mesh: crate::mesh::MeshMetrics::default(),
            registry: Arc::new(Registry::default()),
        };
        m.build_info.get_or_create(&[("version", VERSION)]).set(1);
        m.registry = Arc::new(m.build_registry());
        m
    }
}

impl Metrics {
    fn build_registry(&self) -> Registry {
        let mut r = Registry::with_prefix("weft");
        self.mesh.register(&mut r);
        r.register(
            "build_info",
            "Always 1; the version label is the version of weftd running",
            self.build_info.clone(),
        );
        r.register(
            "ready",
            "1 while /readyz answers 200 (ready), 0 while it answers 503",
            self.ready.clone(),
        );
        r.register(
            "lease_held",
            "1 while this node holds its subnet lease",
            self.lease_held.clone(),
        );
        r.register(
            "lease_expiry_timestamp_seconds",
            "Unix time at which the held lease expires (0 for a reservation)",
            self.lease_expiry_seconds.clone(),
        );
        r.register(
            "peers",
            "Valid peer leases currently known",
            self.peers.clone(),
        );
        r.register(
            "invalid_leases",
            "Leases present in etcd that are not used: invalid, or their subnet or PublicIP is held by an older lease",
            self.invalid_leases.clone(),
        );
        r.register(
            "etcd_requests",
            "Requests sent to etcd",
            self.etcd_requests.clone(),
        );
        r.register(
            "lease_changes",
            "Times the held lease was acquired, renewed or replaced",
            self.lease_changes.clone(),
        );
        r.register(
            "subnet_env_writes",
            "Times subnet.env was (re)written",
            self.subnet_env_writes.clone(),
        );
        r.register(
            "dataplane_reconciles",
            "Data-plane passes (compare the wanted state with the kernel, apply the difference)",
            self.reconciles.clone(),
        );
        r.register(
            "dataplane_reconcile_errors",
            "Data-plane passes that failed (kernel unreadable or an operation refused); retried",
            self.reconcile_errors.clone(),
        );
        r.register(
            "dataplane_repairs",
            "Passes that restored state someone else changed or removed",
            self.repairs.clone(),
        );
        r.register(
            "dataplane_peers_programmed",
            "Peers whose routes are in the kernel",
            self.peers_programmed.clone(),
        );
        r.register(
            "dataplane_peers_unreachable",
            "Peers the backend cannot serve (host-gw peer off the local segment, lease without a VTEP MAC or WireGuard key)",
            self.peers_unreachable.clone(),
        );
        r.register(
            "dataplane_peers_refused",
            "Peers refused because their route would shadow this node's underlay or pod subnet, or their WireGuard key is this node's or another peer's",
            self.peers_refused.clone(),
        );
        r.register(
            "dataplane_reconcile_duration_seconds",
            "Duration of data-plane passes",
            self.reconcile_seconds.clone(),
        );
        r.register(
            "netlink_errors",
            "Netlink operations the kernel refused, and failed reads of the kernel state",
            self.netlink_errors.clone(),
        );
        r.register(
            "etcd_watch_restarts",
            "Times the lease watch was re-established (compaction, broken stream, etcd outage)",
            self.watch_restarts.clone(),
        );
        r.register(
            "firewall_repairs",
            "Times weft's nftables table was found missing or changed and restored",
            self.firewall_repairs.clone(),
        );
        r.register(
            "wireguard_implementation",
            "1 on a wireguard node; the implementation label says which WireGuard carries its traffic (kernel or userspace)",
            self.wireguard_implementation.clone(),
        );
        r.register(
            "task_restarts",
            "Times a task of weftd stopped or panicked and was started again, by task",
            self.task_restarts.clone(),
        );
        self.register_etcd_contact(&mut r);
        r
    }

    /// The etcd contact series: whether etcd answers, when it last did, and why not.
    fn register_etcd_contact(&self, r: &mut Registry) {
        r.register(
            "etcd_up",
            "1 when the last etcd request (on any member) succeeded or the watch delivered, 0 after a request failed on every member",
            self.etcd_up.clone(),
        );
        r.register(
            "etcd_last_success_timestamp_seconds",
            "Unix time of the last successful etcd request or watch message (0: none yet)",
            self.etcd_last_success_seconds.clone(),
        );
        r.register(
            "etcd_request_errors",
            "etcd requests that failed, one per member tried, by reason",
            self.etcd_request_errors.clone(),
        );
    }

    /// The store's view of these metrics (requests, contact, errors).
    pub fn store_metrics(&self) -> crate::store::StoreMetrics {
        let m = crate::store::StoreMetrics {
            requests: self.etcd_requests.clone(),
            up: self.etcd_up.clone(),
            last_success_seconds: self.etcd_last_success_seconds.clone(),
            errors: self.etcd_request_errors.clone(),
        };
        m.init_reasons();
        m
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Readiness as the rest of the agent reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    NotReady(String),
    Ready,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready)
    }
}

/// Log each time readiness flips: one line when weftd turns ready, one (with the reason) when
/// it stops being ready. The same state sent again (every lease renewal does) logs nothing,
/// nor does a new reason while still not ready (whoever sends it logs it). Ends when the
/// sender is gone or `shutdown` turns true.
pub async fn log_readiness_changes(
    mut ready: watch::Receiver<Readiness>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut was_ready = ready.borrow_and_update().is_ready();
    loop {
        tokio::select! {
            changed = ready.changed() => if changed.is_err() { return },
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() { return }
                continue;
            }
        }
        let now = ready.borrow_and_update().clone();
        match (&now, was_ready) {
            (Readiness::Ready, false) => tracing::info!("weftd is ready (/readyz answers 200)"),
            (Readiness::NotReady(why), true) => {
                tracing::warn!("weftd is no longer ready (/readyz answers 503): {why}")
            }
            _ => {}
        }
        was_ready = now.is_ready();
    }
}

/// What the health server reports on.
#[derive(Clone, Debug)]
pub struct HealthState {
    /// Readiness, for `/readyz`.
    pub ready: watch::Receiver<Readiness>,
    pub metrics: Metrics,
    /// The supervised tasks, for `/healthz`.
    pub tasks: crate::supervisor::TaskBoard,
    /// The peers' probe states, for `/health/peers`.
    pub mesh: crate::mesh::MeshView,
}

/// Serve health and metrics on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HealthState,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz /readyz /metrics /health/peers");
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .route(crate::mesh::report::PEERS_PATH, get(peers_handler))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        })
        .await
}

/// The peers' probe states as JSON (with `?problems`, only the entries that are not ok and
/// the counts); 503 while the probes have not started (no network config yet, or
/// --health-probe-port 0).
async fn peers_handler(
    State(s): State<HealthState>,
    RawQuery(query): RawQuery,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match peers_answer(s.mesh.report(), query.as_deref()) {
        (StatusCode::OK, body) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        (status, text) => (status, text).into_response(),
    }
}

/// What `GET /health/peers` answers for `report` (None: the probes are not running) and the
/// request's query.
fn peers_answer(report: Option<HealthReport>, query: Option<&str>) -> (StatusCode, String) {
    let body = match report {
        Some(r) if asks_for_problems(query) => serde_json::to_string(&ProblemsReport::of(r)),
        Some(r) => serde_json::to_string(&r),
        None => return (
            StatusCode::SERVICE_UNAVAILABLE,
            "peer health probes are not running on this node (not started yet, or --health-probe-port 0)\n".into(),
        ),
    };
    (StatusCode::OK, body.unwrap_or_default())
}

/// 200 while every task that must be alive is, and has made progress in time; else 503
/// naming the task and what is wrong with it.
async fn healthz(State(s): State<HealthState>) -> (StatusCode, String) {
    match s.tasks.problem() {
        None => (StatusCode::OK, "ok\n".into()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        ),
    }
}

async fn readyz(State(s): State<HealthState>) -> (StatusCode, String) {
    match &*s.ready.borrow() {
        Readiness::Ready => (StatusCode::OK, "ready\n".into()),
        Readiness::NotReady(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics_handler(
    State(s): State<HealthState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    s.metrics.ready.set(i64::from(s.ready.borrow().is_ready()));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn scrape(state: &HealthState) -> String {
        metrics_handler(State(state.clone())).await.1
    }

    #[tokio::test]
    async fn build_info_and_ready_follow_readiness_both_ways() {
        let (tx, rx) = watch::channel(Readiness::NotReady("starting".into()));
        let state = HealthState {
            ready: rx,
            metrics: Metrics::default(),
            tasks: Default::default(),
            mesh: Default::default(),
        };
        let text = scrape(&state).await;
        assert!(
            text.contains(&format!("weft_build_info{{version=\"{VERSION}\"}} 1\n")),
            "{text}"
        );
        assert!(text.contains("\nweft_ready 0\n"), "{text}");
        tx.send_replace(Readiness::Ready);
        assert!(scrape(&state).await.contains("\nweft_ready 1\n"));
        assert_eq!(readyz(State(state.clone())).await.0, StatusCode::OK);
        tx.send_replace(Readiness::NotReady("acquiring a subnet lease".into()));
        assert!(scrape(&state).await.contains("\nweft_ready 0\n"));
        assert_eq!(
            readyz(State(state.clone())).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn peers_answers_the_whole_report_or_with_problems_only_those_not_ok() {
        use crate::mesh::report::{FamilyName, MtuResult, PeerHealth, PeerState, PeersAnswer};
        let entry = |node: &str, state| PeerHealth {
            node: Some(node.into()),
            subnet: format!("10.244.{}.0/24", &node[1..]),
            family: FamilyName::Ipv4,
            public_ip: "10.99.0.12".parse().unwrap(),
            overlay_ip: None,
            state,
            reason: format!("state {state}"),
            overlay_rtt_ms: None,
            underlay_rtt_ms: None,
            mtu: MtuResult {
                pod_mtu: 1450,
                largest_ok: None,
                pod_mtu_ok: None,
            },
            since_unix: 0,
        };
        let report = HealthReport {
            node: "h1".into(),
            subnets: vec!["10.244.1.0/24".into()],
            public_ips: vec!["10.99.0.11".parse().unwrap()],
            backend: "vxlan".into(),
            interval_seconds: 10.0,
            effective_interval_seconds: 10.0,
            generated_unix: 1_800_000_000,
            peers: vec![
                entry("h2", PeerState::Ok),
                entry("h3", PeerState::OverlayBroken),
            ],
        };
        let (status, body) = peers_answer(Some(report.clone()), None);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(serde_json::from_str::<HealthReport>(&body).unwrap(), report);
        let (status, body) = peers_answer(Some(report.clone()), Some("problems"));
        assert_eq!(status, StatusCode::OK);
        match PeersAnswer::from_json(&body).unwrap() {
            PeersAnswer::Problems(p) => {
                assert_eq!(p.report.peers, vec![report.peers[1].clone()]);
                assert_eq!(p.counts[&FamilyName::Ipv4][&PeerState::Ok], 1);
            }
            other => panic!("not the problems answer: {other:?}"),
        }
        // A query it does not know: the whole report, as an older weftd answers.
        let (_, body) = peers_answer(Some(report.clone()), Some("everything"));
        assert_eq!(serde_json::from_str::<HealthReport>(&body).unwrap(), report);
        let (status, text) = peers_answer(None, Some("problems"));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            text.starts_with("peer health probes are not running"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn readiness_changes_are_logged_once_each() {
        let logs = crate::logging::Captured::start();
        let (tx, rx) = watch::channel(Readiness::NotReady("starting".into()));
        let (_stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(log_readiness_changes(rx, stop_rx));
        let states = [
            Readiness::NotReady("waiting for the network config".into()),
            Readiness::Ready,
            // Lease renewals send Ready again.
            Readiness::Ready,
            Readiness::Ready,
            Readiness::NotReady("acquiring a subnet lease".into()),
            Readiness::NotReady("cannot lease a subnet: pool exhausted".into()),
            Readiness::Ready,
        ];
        for r in states {
            tx.send_replace(r);
            tokio::task::yield_now().await;
        }
        drop(tx);
        task.await.unwrap();
        let text = logs.text();
        assert_eq!(text.matches("weftd is ready").count(), 2, "{text}");
        assert_eq!(
            text.matches("weftd is no longer ready").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("no longer ready (/readyz answers 503): acquiring a subnet lease"),
            "{text}"
        );
    }
}
