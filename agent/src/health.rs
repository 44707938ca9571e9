//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;

use axum::extract::State;
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
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
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
            registry: Arc::new(Registry::default()),
        };
        m.registry = Arc::new(m.build_registry());
        m
    }
}

impl Metrics {
    fn build_registry(&self) -> Registry {
        let mut r = Registry::with_prefix("weft");
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
            "Peers the backend cannot serve (host-gw peer off the local segment, lease without a VTEP MAC)",
            self.peers_unreachable.clone(),
        );
        r.register(
            "dataplane_peers_refused",
            "Peers refused because their route would shadow this node's underlay or pod subnet",
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
        r
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

#[derive(Clone, Debug)]
struct HealthState {
    ready: watch::Receiver<Readiness>,
    metrics: Metrics,
}

/// Serve health and metrics on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ready: watch::Receiver<Readiness>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz /readyz /metrics");
    let state = HealthState { ready, metrics };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
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
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}
