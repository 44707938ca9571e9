//! The peer health mesh: every weftd answers small UDP probes on its probe port (on its
//! overlay address and its public IP alike), and probes every peer over both, so that each
//! node knows which peers it actually reaches, and why not.
//!
//! | module | what |
//! |---|---|
//! | [`wire`] | the probe datagram |
//! | [`responder`] | the UDP echo on the probe port |
//! | [`probe`] | the probing sockets; one probe, one round of a peer (overlay, underlay, MTU) |
//! | [`verdict`] | a peer's state and reason from its rounds (pure) |
//! | [`prober`] | the schedule, the records, the logs of state changes |
//! | [`report`] | the JSON `GET /health/peers` serves and `netctl health` reads |

pub mod probe;
pub mod prober;
pub mod report;
pub mod responder;
pub mod verdict;
pub mod wire;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use weft_backends::IpFamily;

pub use prober::{MeshSettings, MeshView, ProblemLabels};
use report::PeerState;
use verdict::{MtuRound, Round};

/// weft's default probe port (beside 8471 for health and 8472 for VXLAN).
pub const DEFAULT_PROBE_PORT: u16 = 8473;

type Labels2 = [(&'static str, &'static str); 2];

fn family_str(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "ipv4",
        IpFamily::V6 => "ipv6",
    }
}

fn rtt_histogram() -> Histogram {
    // 0.1 ms to about 1.6 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

/// The mesh's metrics. Bounded cardinality: counts per state and family, and a series of
/// its own only for each peer that is not ok.
#[derive(Clone, Debug)]
pub struct MeshMetrics {
    pub peers: Family<Labels2, Gauge<i64, std::sync::atomic::AtomicI64>>,
    pub probes: Family<Labels2, Counter<u64, AtomicU64>>,
    pub rtt: Family<Labels2, Histogram, fn() -> Histogram>,
    pub problems: Family<ProblemLabels, Gauge<i64, std::sync::atomic::AtomicI64>>,
    pub interval: Gauge<f64, AtomicU64>,
    pub answered: Counter<u64, AtomicU64>,
    pub dropped: Counter<u64, AtomicU64>,
}

impl Default for MeshMetrics {
    fn default() -> Self {
        MeshMetrics {
            peers: Family::default(),
            probes: Family::default(),
            rtt: Family::new_with_constructor(rtt_histogram),
            problems: Family::default(),
            interval: Gauge::default(),
            answered: Counter::default(),
            dropped: Counter::default(),
        }
    }
}

impl MeshMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "health_peers",
            "Peers by probe state (ok, overlay-broken, unreachable, agent-not-answering, mtu-below-pod-mtu, unknown) and family",
            self.peers.clone(),
        );
        r.register(
            "health_probes",
            "Probes sent, by path (overlay, underlay, mtu) and result (answered, refused, lost, unsent; passed, failed for mtu)",
            self.probes.clone(),
        );
        r.register(
            "health_rtt_seconds",
            "Round trips of answered probes, by path (overlay, underlay) and family",
            self.rtt.clone(),
        );
        r.register(
            "health_peer_problem",
            "1 for each peer (and family) that is not ok, labelled with its state; peers that are ok have no series",
            self.problems.clone(),
        );
        r.register(
            "health_probe_interval_seconds",
            "Seconds between two rounds of probes of one peer, as in effect (the configured interval, or longer when the probe rate bound stretches it)",
            self.interval.clone(),
        );
        r.register(
            "health_probes_answered",
            "Probe requests from other nodes this node answered",
            self.answered.clone(),
        );
        r.register(
            "health_probes_dropped",
            "Datagrams on the probe port that were not probe requests, or whose reply could not be sent",
            self.dropped.clone(),
        );
    }

    /// A new prober run: every count from zero, every state at zero.
    fn reset(&self) {
        self.problems.clear();
        for f in [IpFamily::V4, IpFamily::V6] {
            for s in PeerState::ALL {
                self.peers
                    .get_or_create(&[("family", family_str(f)), ("state", s.as_str())])
                    .set(0);
            }
        }
    }

    fn state_entered(&self, f: IpFamily, s: PeerState) {
        self.peers
            .get_or_create(&[("family", family_str(f)), ("state", s.as_str())])
            .inc();
    }

    fn state_left(&self, f: IpFamily, s: PeerState, labels: &ProblemLabels) {
        self.peers
            .get_or_create(&[("family", family_str(f)), ("state", s.as_str())])
            .dec();
        self.problems.remove(labels);
    }

    fn problem(&self, labels: &ProblemLabels, s: PeerState) {
        if !matches!(s, PeerState::Ok | PeerState::Unknown) {
            self.problems.get_or_create(labels).set(1);
        }
    }

    /// A round's probes counted, and its answered probes' round trips observed.
    fn round(&self, f: IpFamily, round: &Round) {
        let count = |path: &'static str, result: &'static str| {
            self.probes
                .get_or_create(&[("path", path), ("result", result)])
                .inc();
        };
        let rtt = |path: &'static str, d: &Duration| {
            self.rtt
                .get_or_create(&[("path", path), ("family", family_str(f))])
                .observe(d.as_secs_f64());
        };
        if let Some(o) = &round.overlay {
            count("overlay", o.label());
            if let verdict::Outcome::Answered(d) = o {
                rtt("overlay", d);
            }
        }
        count("underlay", round.underlay.label());
        if let verdict::Outcome::Answered(d) = &round.underlay {
            rtt("underlay", d);
        }
        match round.mtu {
            Some(MtuRound::Passed) => count("mtu", "passed"),
            Some(MtuRound::Failed { .. }) => count("mtu", "failed"),
            None => {}
        }
    }

    fn interval_seconds(&self, d: Duration) {
        self.interval.set(d.as_secs_f64());
    }
}

impl responder::ResponderCounts for MeshMetrics {
    fn answered(&self) {
        self.answered.inc();
    }

    fn dropped(&self) {
        self.dropped.inc();
    }
}
