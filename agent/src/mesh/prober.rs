//! The prober: every peer over every enabled family, once per interval, the probes spread
//! evenly over it and bounded per second. It owns the peers' records (in the [`MeshView`]
//! the health server reads), logs each state change once, and keeps the metrics.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnetwork::IpNetwork;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use weft_backends::{BackendKind, IpFamily, Peer, PeerEvent};

use super::probe::{self, RoundPlan};
use super::report::{FamilyName, HealthReport, MtuResult, PeerHealth, PeerState};
use super::verdict::{Context, PeerRecord, Round};
use super::MeshMetrics;

/// Every this many rounds a peer also gets an MTU probe (each round while its last one
/// failed): probes at the pod MTU are large, and the path MTU seldom changes.
pub const MTU_EVERY: u64 = 10;

/// How the prober runs.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshSettings {
    /// The probe port: where every weftd answers, and where this one sends.
    pub port: u16,
    /// Between two rounds of one peer.
    pub interval: Duration,
    /// At most this many probes per second (the interval stretches when every peer does
    /// not fit in it).
    pub rate: u32,
}

impl MeshSettings {
    /// How long a probe waits for its answer: a quarter of the interval, from 100 ms to 1 s,
    /// so that a probe and its retry fit in half an interval.
    pub fn timeout(&self) -> Duration {
        (self.interval / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// The time between two rounds (of any peers) for `targets` rounds per interval of
    /// `probes` probes each on average.
    pub fn spacing(&self, targets: usize, probes: f64) -> Duration {
        if targets == 0 {
            return self.interval;
        }
        let even = self.interval / targets as u32;
        let bound = Duration::from_secs_f64(probes / f64::from(self.rate.max(1)));
        even.max(bound)
    }
}

/// What this node probes from, per family: its overlay address (None for host-gw, or
/// before its subnet is known) and its pod MTU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnSide {
    pub v4: Option<FamilySide>,
    pub v6: Option<FamilySide>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilySide {
    /// This node's subnet of the family.
    pub subnet: IpNetwork,
    /// Its overlay address: the subnet's network address, when the backend has an overlay
    /// device.
    pub overlay: Option<IpAddr>,
    pub pod_mtu: u32,
}

impl OwnSide {
    fn of(&self, family: IpFamily) -> Option<FamilySide> {
        match family {
            IpFamily::V4 => self.v4,
            IpFamily::V6 => self.v6,
        }
    }
}

/// What the reports name about this node and its backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThisNode {
    pub node: String,
    pub backend: BackendKind,
    pub public_ips: Vec<IpAddr>,
    /// What carries overlay packets (`UDP 8472 (VXLAN)`), per family.
    pub encapsulation: [String; 2],
    /// The overlay device per family (`weft.1`, `weft-v6.1`).
    pub device: [String; 2],
}

fn index(f: IpFamily) -> usize {
    match f {
        IpFamily::V4 => 0,
        IpFamily::V6 => 1,
    }
}

/// A peer over one family: the unit probed.
type TargetKey = (IpNetwork, IpFamily);

#[derive(Clone, Debug)]
struct Target {
    node: Option<String>,
    subnet: IpNetwork,
    public_ip: IpAddr,
    /// The peer's overlay address (its subnet's network address); None for host-gw.
    overlay_ip: Option<IpAddr>,
    record: PeerRecord,
    /// Changes when the target is replaced, so that a round in flight for the old one is
    /// dropped.
    generation: u64,
}

/// The prober's state, shared with the health server (which only reads it).
#[derive(Debug, Default)]
struct ViewState {
    identity: Option<ThisNode>,
    own: OwnSide,
    settings: Option<MeshSettings>,
    effective_interval: Duration,
    targets: BTreeMap<TargetKey, Target>,
}

/// The peers' health as the prober knows it. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct MeshView(Arc<Mutex<ViewState>>);

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl MeshView {
    fn lock(&self) -> std::sync::MutexGuard<'_, ViewState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The report `GET /health/peers` serves; None before the prober runs.
    pub fn report(&self) -> Option<HealthReport> {
        let v = self.lock();
        let (identity, settings) = (v.identity.as_ref()?, v.settings.as_ref()?);
        let mut peers: Vec<PeerHealth> = v
            .targets
            .iter()
            .map(|((_, family), t)| PeerHealth {
                node: t.node.clone(),
                subnet: t.subnet.to_string(),
                family: FamilyName::from(*family),
                public_ip: t.public_ip,
                overlay_ip: t.overlay_ip,
                state: t.record.state,
                reason: t.record.reason.clone(),
                overlay_rtt_ms: t.record.overlay_rtt.map(|d| d.as_secs_f64() * 1000.0),
                underlay_rtt_ms: t.record.underlay_rtt.map(|d| d.as_secs_f64() * 1000.0),
                mtu: MtuResult {
                    pod_mtu: t.record.pod_mtu,
                    largest_ok: t.record.largest_ok,
                    pod_mtu_ok: t.record.pod_mtu_ok,
                },
                since_unix: unix(t.record.since),
            })
            .collect();
        peers.sort_by(|a, b| {
            (a.node.as_deref(), &a.subnet, a.family).cmp(&(b.node.as_deref(), &b.subnet, b.family))
        });
        Some(HealthReport {
            node: identity.node.clone(),
            subnets: [v.own.v4, v.own.v6]
                .iter()
                .flatten()
                .map(|s| s.subnet.to_string())
                .collect(),
            public_ips: identity.public_ips.clone(),
            backend: identity.backend.to_string(),
            interval_seconds: settings.interval.as_secs_f64(),
            effective_interval_seconds: v.effective_interval.as_secs_f64(),
            generated_unix: unix(SystemTime::now()),
            peers,
        })
    }
}

/// The targets a peer gives: one per family this node runs that the peer's lease has a
/// subnet and a public IP of.
fn targets_of(peer: &Peer, families: &[IpFamily], overlay: bool) -> Vec<(TargetKey, Target)> {
    families
        .iter()
        .filter_map(|&f| {
            let subnet = peer.subnet_of(f)?;
            let public_ip = peer.public_ip_of(f)?;
            Some((
                (peer.id(), f),
                Target {
                    node: peer.node_name.clone(),
                    subnet,
                    public_ip,
                    overlay_ip: overlay.then(|| subnet.network()),
                    record: PeerRecord::new(overlay, 0, SystemTime::now()),
                    generation: 0,
                },
            ))
        })
        .collect()
}

/// The prober's inputs.
#[derive(Debug)]
pub struct Inputs {
    pub peers: mpsc::Receiver<Vec<PeerEvent>>,
    pub own: watch::Receiver<OwnSide>,
}

/// The prober. Runs until `shutdown`; the peer queue ending ends it too (with an error for
/// the supervisor).
#[derive(Debug)]
pub struct Prober {
    pub settings: MeshSettings,
    pub identity: ThisNode,
    pub families: Vec<IpFamily>,
    pub view: MeshView,
    pub metrics: MeshMetrics,
}

struct Finished {
    key: TargetKey,
    generation: u64,
    round: Round,
    sent: u32,
}

impl Prober {
    pub async fn run(
        self,
        mut inputs: Inputs,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), &'static str> {
        let overlay = self.identity.backend != BackendKind::HostGw;
        {
            let mut v = self.view.lock();
            v.identity = Some(self.identity.clone());
            v.settings = Some(self.settings.clone());
            v.own = inputs.own.borrow().clone();
            v.targets.clear();
        }
        self.metrics.reset();
        let (done_tx, mut done) = mpsc::channel::<Finished>(1024);
        let mut cursor = 0usize;
        let mut generation = 0u64;
        let mut next = tokio::time::Instant::now();
        let mut first_round_left: Option<usize> = None;
        loop {
            let targets = self.view.lock().targets.len();
            // Probes per round on average: overlay and underlay, and an MTU probe every
            // MTU_EVERY rounds.
            let per_round = if overlay { 2.0 } else { 1.0 } + 1.0 / MTU_EVERY as f64;
            let spacing = self.settings.spacing(targets, per_round);
            let effective = spacing * targets.max(1) as u32;
            self.view.lock().effective_interval = effective;
            self.metrics.interval_seconds(effective);
            tokio::select! {
                batch = inputs.peers.recv() => {
                    let Some(batch) = batch else { return Err("the peer feed ended") };
                    generation += 1;
                    self.take_peers(batch, overlay, generation);
                    let n = self.view.lock().targets.len();
                    if first_round_left.is_none() && n > 0 {
                        first_round_left = Some(n);
                    }
                }
                changed = inputs.own.changed() => {
                    if changed.is_err() { return Err("this node's subnet watch ended") }
                    let own = inputs.own.borrow_and_update().clone();
                    self.view.lock().own = own;
                }
                Some(f) = done.recv() => {
                    self.take_round(f);
                    if let Some(left) = first_round_left.as_mut().filter(|l| **l > 0) {
                        *left -= 1;
                        if *left == 0 {
                            self.log_summary();
                        }
                    }
                }
                _ = tokio::time::sleep_until(next), if targets > 0 => {
                    next = tokio::time::Instant::now() + spacing;
                    if let Some(plan) = self.plan_next(&mut cursor) {
                        let tx = done_tx.clone();
                        tokio::spawn(async move {
                            let (key, generation, plan) = plan;
                            // None: this node's overlay address is not on its device yet.
                            if let Some((round, sent)) = probe::round(&plan).await {
                                let _ = tx.send(Finished { key, generation, round, sent }).await;
                            }
                        });
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() { return Ok(()) }
                }
            }
        }
    }

    /// The next target's round, moving the cursor; None when it cannot be probed yet (this
    /// node's subnet of its family is not known).
    fn plan_next(&self, cursor: &mut usize) -> Option<(TargetKey, u64, RoundPlan)> {
        let v = self.view.lock();
        let n = v.targets.len();
        if n == 0 {
            return None;
        }
        *cursor %= n;
        let (key, t) = v.targets.iter().nth(*cursor)?;
        *cursor += 1;
        let own = v.own.of(key.1)?;
        let overlay = match (own.overlay, t.overlay_ip) {
            (Some(src), Some(dst)) => Some((src, dst)),
            (None, None) => None,
            // The backend has an overlay but this node's address is not known yet.
            _ => return None,
        };
        let r = &t.record;
        // Every MTU_EVERY rounds; and each round while the last one failed or none passed
        // at this pod MTU yet.
        let mtu_due = r.rounds % MTU_EVERY == 0 || r.pod_mtu_ok != Some(true);
        Some((
            *key,
            t.generation,
            RoundPlan {
                family: key.1,
                port: self.settings.port,
                overlay,
                public_ip: t.public_ip,
                mtu: mtu_due.then_some(own.pod_mtu),
                timeout: self.settings.timeout(),
            },
        ))
    }

    fn take_peers(&self, batch: Vec<PeerEvent>, overlay: bool, generation: u64) {
        let mut v = self.view.lock();
        for ev in batch {
            let (gone, new) = match ev {
                PeerEvent::Added(p) => (None, Some(p)),
                PeerEvent::Removed(p) => (Some(p), None),
                PeerEvent::Updated { old, new } => (Some(old), Some(new)),
            };
            let mut kept: BTreeMap<TargetKey, Target> = BTreeMap::new();
            if let Some(old) = gone {
                for f in &self.families {
                    if let Some(t) = v.targets.remove(&(old.id(), *f)) {
                        kept.insert((old.id(), *f), t);
                    }
                }
            }
            for (key, mut t) in new
                .as_ref()
                .map(|p| targets_of(p, &self.families, overlay))
                .unwrap_or_default()
            {
                let pod_mtu = v.own.of(key.1).map_or(0, |o| o.pod_mtu);
                match kept.remove(&key) {
                    // The same addresses: what is known of it stays.
                    Some(old) if old.public_ip == t.public_ip && old.subnet == t.subnet => {
                        t.record = old.record;
                        t.generation = old.generation;
                    }
                    _ => {
                        t.record.set_pod_mtu(pod_mtu);
                        t.generation = generation;
                        self.metrics.state_entered(key.1, PeerState::Unknown);
                    }
                }
                v.targets.insert(key, t);
            }
            for ((_, family), t) in kept {
                self.metrics
                    .state_left(family, t.record.state, &problem_labels(&t, family));
            }
        }
    }

    fn take_round(&self, f: Finished) {
        let mut v = self.view.lock();
        let own = v.own.of(f.key.1);
        let identity = &self.identity;
        let Some(t) = v
            .targets
            .get_mut(&f.key)
            .filter(|t| t.generation == f.generation)
        else {
            return;
        };
        self.metrics.probes(&f.round, f.sent);
        self.metrics.rtts(f.key.1, &f.round);
        if let Some(own) = own {
            t.record.set_pod_mtu(own.pod_mtu);
        }
        let family = f.key.1;
        let ctx = Context {
            overlay_ip: t.overlay_ip,
            public_ip: t.public_ip,
            port: self.settings.port,
            encapsulation: identity.encapsulation[index(family)].clone(),
            device: identity.device[index(family)].clone(),
        };
        let before = problem_labels(t, family);
        let Some(tr) = t.record.record(f.round, &ctx, SystemTime::now()) else {
            return;
        };
        self.metrics.state_left(family, tr.from, &before);
        self.metrics.state_entered(family, tr.to);
        self.metrics.problem(&problem_labels(t, family), tr.to);
        let node = t.node.as_deref().unwrap_or("-");
        let (subnet, public_ip) = (t.subnet, t.public_ip);
        match (tr.from, tr.to) {
            (PeerState::Unknown, PeerState::Ok) => {
                debug!(peer = node, %subnet, %public_ip, %family, "peer reachable")
            }
            (_, PeerState::Ok) => info!(
                peer = node, %subnet, %public_ip, %family, was = %tr.from,
                "peer reachable again: {}", tr.reason
            ),
            (_, to) => warn!(
                peer = node, %subnet, %public_ip, %family, state = %to, was = %tr.from,
                "peer {to}: {}", tr.reason
            ),
        }
    }

    fn log_summary(&self) {
        let v = self.view.lock();
        let ok = v
            .targets
            .values()
            .filter(|t| t.record.state.is_ok())
            .count();
        let total = v.targets.len();
        info!(
            ok,
            not_ok = total - ok,
            "every peer probed once: {ok} of {total} ok"
        );
    }
}

/// The labels of a peer's own series while it is not ok.
fn problem_labels(t: &Target, family: IpFamily) -> ProblemLabels {
    ProblemLabels {
        node: t.node.clone().unwrap_or_default(),
        subnet: t.subnet.to_string(),
        family: FamilyName::from(family).to_string(),
        state: t.record.state.as_str().to_string(),
    }
}

/// A not-ok peer's series' labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ProblemLabels {
    pub node: String,
    pub subnet: String,
    pub family: String,
    pub state: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(interval_ms: u64, rate: u32) -> MeshSettings {
        MeshSettings {
            port: 8473,
            interval: Duration::from_millis(interval_ms),
            rate,
        }
    }

    #[test]
    fn probes_spread_over_the_interval_until_the_rate_bound_stretches_it() {
        // 4 peers in 10 s: one every 2.5 s.
        assert_eq!(s(10_000, 50).spacing(4, 2.1), Duration::from_millis(2500));
        // 5,000 peers at 2.1 probes each, 50 probes/s: 42 ms apart, 210 s per round.
        let sp = s(10_000, 50).spacing(5000, 2.1);
        assert_eq!(sp, Duration::from_secs_f64(0.042));
        assert_eq!(s(10_000, 50).timeout(), Duration::from_secs(1));
        assert_eq!(s(200, 50).timeout(), Duration::from_millis(100));
    }
}
