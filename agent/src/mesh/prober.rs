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

use super::probe::{RoundPlan, Sockets};
use super::report::{FamilyName, HealthReport, MtuResult, PeerHealth, PeerState};
use super::verdict::{Context, PeerRecord, Round};
use super::MeshMetrics;

/// Every this many rounds a peer also gets an MTU probe (each round while its last one
/// failed): probes at the pod MTU are large, and the path MTU seldom changes.
pub const MTU_EVERY: u64 = 10;

/// Whether a round of `t` gets an MTU probe by the schedule: every MTU_EVERY-th of its
/// rounds, the targets staggered so that the large probes are spread over the passes
/// instead of all coming in one.
fn mtu_due(t: &Target) -> bool {
    (t.record.rounds + t.stagger) % MTU_EVERY == 0
}

/// Where in the MTU schedule a peer's rounds fall: from its subnet, so that it stays put
/// while the peer does, and spreads over consecutive subnets.
fn stagger(subnet: IpNetwork) -> u64 {
    let (n, bits) = match subnet.network() {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    };
    let host_bits = (bits - u32::from(subnet.prefix())).min(127);
    ((n >> host_bits) % u128::from(MTU_EVERY)) as u64
}

/// Rounds start in ticks at least this far apart. With many peers, rounds are due faster
/// than this and several start in each tick: fewer wake-ups for the same probes, still
/// spread over the interval (a few small datagrams per tick). With fewer peers each tick
/// has one round.
pub const MIN_TICK: Duration = Duration::from_millis(250);

/// How soon a round is tried again while this node's overlay address is not there yet.
const NOT_READY_RETRY: Duration = Duration::from_millis(100);

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
    /// Its place in the MTU schedule ([`stagger`]).
    stagger: u64,
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
                    stagger: stagger(subnet),
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
        let sockets = Arc::new(Sockets::default());
        // The last target probed: the next round goes to the one after it.
        let mut cursor: Option<TargetKey> = None;
        // Rounds due and not started yet (a fraction of one between ticks).
        let mut owed = 0.0f64;
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
                    let tick = spacing.max(MIN_TICK);
                    next = tokio::time::Instant::now() + tick;
                    owed = (owed + tick.as_secs_f64() / spacing.as_secs_f64()).min(targets as f64);
                    let mut rounds = Vec::new();
                    while owed >= 1.0 {
                        let Some((key, plan)) = self.plan_next(cursor.as_ref()) else { break };
                        match plan {
                            // This node's subnet of the family is not known yet.
                            None => cursor = Some(key),
                            // This node's overlay address is not on its device yet (at
                            // start): the same target again shortly rather than a whole
                            // tick later, so that the first probes (which also start
                            // WireGuard handshakes) go out as soon as the data plane is
                            // there.
                            Some((_, plan)) if !sockets.ready(&plan) => {
                                next = tokio::time::Instant::now() + tick.min(NOT_READY_RETRY);
                                owed = owed.min(1.0);
                                break;
                            }
                            Some((generation, plan)) => {
                                cursor = Some(key);
                                rounds.push((key, generation, plan));
                            }
                        }
                        owed -= 1.0;
                    }
                    if !rounds.is_empty() {
                        let (tx, sockets) = (done_tx.clone(), sockets.clone());
                        tokio::spawn(async move {
                            let rounds = rounds.into_iter().map(|(key, generation, plan)| {
                                let (tx, sockets) = (&tx, &sockets);
                                async move {
                                    // None: this node's overlay address went away meanwhile.
                                    if let Some(round) = sockets.round(&plan).await {
                                        let _ = tx.send(Finished { key, generation, round }).await;
                                    }
                                }
                            });
                            futures::future::join_all(rounds).await;
                        });
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() { return Ok(()) }
                }
            }
        }
    }

    /// The target after `after` (the first one after the last), and its round: None when
    /// it cannot be probed yet (this node's subnet of its family is not known).
    fn plan_next(
        &self,
        after: Option<&TargetKey>,
    ) -> Option<(TargetKey, Option<(u64, RoundPlan)>)> {
        use std::ops::Bound::{Excluded, Unbounded};
        let v = self.view.lock();
        let (key, t) = after
            .and_then(|k| v.targets.range((Excluded(k), Unbounded)).next())
            .or_else(|| v.targets.iter().next())?;
        let plan = || {
            let own = v.own.of(key.1)?;
            let overlay = match (own.overlay, t.overlay_ip) {
                (Some(src), Some(dst)) => Some((src, dst)),
                (None, None) => None,
                // The backend has an overlay but this node's address is not known yet.
                _ => return None,
            };
            // Every MTU_EVERY rounds; and each round while the last one failed or none
            // passed at this pod MTU yet.
            let mtu_due = mtu_due(t) || t.record.pod_mtu_ok != Some(true);
            Some((
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
        };
        Some((*key, plan()))
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
                    replaced => {
                        if let Some(old) = replaced {
                            let labels = problem_labels(&old, key.1);
                            self.metrics.state_left(key.1, old.record.state, &labels);
                        }
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
        self.metrics.round(f.key.1, &f.round);
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

    fn peer(n: u8, ip: u8, v6: bool) -> Peer {
        Peer {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: std::net::Ipv4Addr::new(192, 0, 2, ip),
            subnet_v6: v6.then(|| format!("fc00:0:0:{n}::/64").parse().unwrap()),
            public_ip_v6: v6.then(|| format!("2001:db8::{ip}").parse().unwrap()),
            backend: BackendKind::Vxlan,
            data: None,
            data_v6: None,
            node_name: Some(format!("h{n}")),
        }
    }

    fn prober(families: Vec<IpFamily>) -> Prober {
        let p = Prober {
            settings: s(1000, 50),
            identity: ThisNode {
                node: "h1".into(),
                backend: BackendKind::Vxlan,
                public_ips: vec![],
                encapsulation: ["UDP 8472 (VXLAN)".into(), "UDP 8472 (VXLAN)".into()],
                device: ["weft.1".into(), "weft-v6.1".into()],
            },
            families,
            view: MeshView::default(),
            metrics: MeshMetrics::default(),
        };
        p.metrics.reset();
        {
            let mut v = p.view.lock();
            v.identity = Some(p.identity.clone());
            v.settings = Some(p.settings.clone());
        }
        p
    }

    fn gauge(p: &Prober, family: &'static str, state: PeerState) -> i64 {
        p.metrics
            .peers
            .get_or_create(&[("family", family), ("state", state.as_str())])
            .get()
    }

    #[test]
    fn peers_become_one_target_per_family_and_keep_their_record_while_their_addresses_do() {
        let p = prober(vec![IpFamily::V4, IpFamily::V6]);
        p.take_peers(
            vec![
                PeerEvent::Added(peer(2, 12, true)),
                PeerEvent::Added(peer(3, 13, false)),
            ],
            true,
            1,
        );
        let r = p.view.report().unwrap();
        let rows: Vec<(Option<&str>, FamilyName, &str)> = r
            .peers
            .iter()
            .map(|h| (h.node.as_deref(), h.family, h.subnet.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                (Some("h2"), FamilyName::Ipv4, "10.244.2.0/24"),
                (Some("h2"), FamilyName::Ipv6, "fc00:0:0:2::/64"),
                (Some("h3"), FamilyName::Ipv4, "10.244.3.0/24"),
            ]
        );
        assert_eq!(r.peers[0].overlay_ip, Some("10.244.2.0".parse().unwrap()));
        assert_eq!(
            (
                gauge(&p, "ipv4", PeerState::Unknown),
                gauge(&p, "ipv6", PeerState::Unknown)
            ),
            (2, 1)
        );
        // A round makes h2 over IPv4 broken.
        let key = (peer(2, 12, true).id(), IpFamily::V4);
        let generation = p.view.lock().targets[&key].generation;
        p.take_round(Finished {
            key,
            generation,
            round: Round {
                overlay: Some(super::super::verdict::Outcome::Lost),
                underlay: super::super::verdict::Outcome::Answered(Duration::from_millis(1)),
                mtu: None,
            },
        });
        assert_eq!(gauge(&p, "ipv4", PeerState::OverlayBroken), 1);
        assert_eq!(gauge(&p, "ipv4", PeerState::Unknown), 1);
        assert_eq!(
            p.metrics
                .problems
                .get_or_create(&ProblemLabels {
                    node: "h2".into(),
                    subnet: "10.244.2.0/24".into(),
                    family: "ipv4".into(),
                    state: "overlay-broken".into(),
                })
                .get(),
            1
        );
        // The same addresses again (a renewed lease): the state stays.
        let (old, new) = (peer(2, 12, true), peer(2, 12, true));
        p.take_peers(vec![PeerEvent::Updated { old, new }], true, 2);
        assert_eq!(
            p.view.lock().targets[&key].record.state,
            PeerState::OverlayBroken
        );
        // A new public IP: a new peer as far as probing goes.
        p.take_peers(
            vec![PeerEvent::Updated {
                old: peer(2, 12, true),
                new: peer(2, 99, true),
            }],
            true,
            3,
        );
        assert_eq!(p.view.lock().targets[&key].record.state, PeerState::Unknown);
        assert_eq!(gauge(&p, "ipv4", PeerState::OverlayBroken), 0);
        // Gone: every gauge back to zero, no per-peer series left.
        p.take_peers(
            vec![
                PeerEvent::Removed(peer(2, 99, true)),
                PeerEvent::Removed(peer(3, 13, false)),
            ],
            true,
            4,
        );
        assert!(p.view.report().unwrap().peers.is_empty());
        for f in ["ipv4", "ipv6"] {
            for st in PeerState::ALL {
                assert_eq!(gauge(&p, f, st), 0, "{f} {st}");
            }
        }
        let mut text = String::new();
        let mut reg = prometheus_client::registry::Registry::default();
        p.metrics.register(&mut reg);
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(!text.contains("health_peer_problem{"), "{text}");
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

    #[test]
    fn rounds_go_round_the_targets_in_order_and_mtu_probes_are_staggered() {
        let p = prober(vec![IpFamily::V4]);
        p.view.lock().own.v4 = Some(FamilySide {
            subnet: "10.244.1.0/24".parse().unwrap(),
            overlay: Some("10.244.1.0".parse().unwrap()),
            pod_mtu: 1450,
        });
        p.take_peers(
            (2..=4)
                .map(|n| PeerEvent::Added(peer(n, n + 10, false)))
                .collect(),
            true,
            1,
        );
        let mut cursor = None;
        let mut order = Vec::new();
        for _ in 0..4 {
            let (key, plan) = p.plan_next(cursor.as_ref()).unwrap();
            let (_, plan) = plan.expect("this node's side is known");
            order.push(plan.public_ip.to_string());
            cursor = Some(key);
        }
        assert_eq!(
            order,
            ["192.0.2.12", "192.0.2.13", "192.0.2.14", "192.0.2.12"]
        );
        // Ten consecutive subnets take the ten places in the MTU schedule, once each.
        for net in ["10.244.{n}.0/24", "fc00:0:0:{n}::/64"] {
            let mut places: Vec<u64> = (30..40)
                .map(|n| stagger(net.replace("{n}", &n.to_string()).parse().unwrap()))
                .collect();
            places.sort();
            assert_eq!(places, (0..MTU_EVERY).collect::<Vec<_>>(), "{net}");
        }
    }
}
