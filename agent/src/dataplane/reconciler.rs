//! The data-plane owner: one task that holds the kernel state weft programs.
//!
//! Inputs: this node's subnet (from the lease keeper), peer events (from the lease watch),
//! kicks from the kernel notification listener (someone changed or deleted something of
//! weft's), and a periodic resync. Each pass plans the wanted state (pure), compares it with
//! the kernel (read back when a kick, a resync or a failure says the last known state cannot
//! be trusted; otherwise the state the last pass left) and applies the difference.
//!
//! Nothing is programmed before the first full peer listing has arrived, so a restarted
//! weftd never removes a peer's entries just because it has not heard of the peer yet; and
//! nothing is torn down on exit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use weft_backends::backend::{Backend, Settings};
use weft_backends::dataplane::{ApplyReport, DataplaneError, Monitor, Netlink};
use weft_backends::plan::{diff, KernelState, LinkNames, Op, Plan};
use weft_backends::{IpFamily, Peer, PeerEvent};

use crate::backoff::Backoff;
use crate::health::Metrics;
use crate::supervisor::Progress;

/// How often the kernel is read back even when nothing was heard.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// A pass with at least this many operations is followed by giving free memory back.
const BIG_PASS: usize = 512;

/// Why a pass runs; decides whether the kernel is read back and how the result is logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Start,
    Peers,
    /// New backend settings (the underlay's MTU changed).
    Settings,
    Kernel,
    Resync,
    Retry,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::Start => "start",
            Trigger::Peers => "peer change",
            Trigger::Settings => "settings change",
            Trigger::Kernel => "kernel notification",
            Trigger::Resync => "resync",
            Trigger::Retry => "retry",
        })
    }
}

/// What a [`Reconciler`] listens to.
#[derive(Debug)]
pub struct Inputs {
    /// This node's subnet of the reconciler's family (from the lease keeper).
    pub own: watch::Receiver<Option<IpNetwork>>,
    /// Later backend settings, when they change (the underlay's MTU); the value the watch
    /// holds at start is the one given to [`Reconciler::new`].
    pub settings: watch::Receiver<Settings>,
    /// Peer events from the lease watch; the first batch is the full listing.
    pub peers: mpsc::Receiver<Vec<PeerEvent>>,
    /// Kicks from the kernel notification listener ([`spawn_monitor`]).
    pub kicks: mpsc::Receiver<()>,
    /// How often the kernel is read back anyway ([`RESYNC_INTERVAL`]).
    pub resync: Duration,
}

/// The reconciler's state. Pure bookkeeping plus one [`Netlink`].
#[derive(Debug)]
pub struct Reconciler<N> {
    nl: Option<N>,
    backend: Settings,
    /// How logs name the links operations refer to.
    names: LinkNames,
    own: Option<IpNetwork>,
    /// Peers by their identifying subnet ([`Peer::id`]).
    peers: BTreeMap<IpNetwork, Peer>,
    /// The first peer listing has arrived.
    listed: bool,
    /// What the kernel holds if the last pass fully succeeded.
    believed: Option<KernelState>,
    unreachable: BTreeSet<IpNetwork>,
    refused: BTreeSet<IpNetwork>,
    passes: u64,
    metrics: Metrics,
    /// Told at every turn of the loop (a pass, an input, the resync tick).
    progress: Option<Progress>,
}

impl<N: Netlink + Send + 'static> Reconciler<N> {
    /// A reconciler programming `backend` through `nl`; `names` names the links in logs.
    pub fn new(nl: N, backend: Settings, names: LinkNames, metrics: Metrics) -> Self {
        Reconciler {
            nl: Some(nl),
            backend,
            names,
            own: None,
            peers: BTreeMap::new(),
            listed: false,
            believed: None,
            unreachable: BTreeSet::new(),
            refused: BTreeSet::new(),
            passes: 0,
            metrics,
            progress: None,
        }
    }

    /// The same reconciler, telling `progress` at every turn of its loop; it expects the
    /// next turn within three resync intervals (the tick alone turns it once per interval).
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    fn progressed(&self, resync: Duration) {
        if let Some(p) = &self.progress {
            p.expect_within(resync * 3);
        }
    }

    fn take_events(&mut self, batch: Vec<PeerEvent>) {
        self.listed = true;
        for ev in batch {
            match ev {
                PeerEvent::Added(p) => {
                    self.peers.insert(p.id(), p);
                }
                PeerEvent::Updated { old, new } => {
                    self.peers.remove(&old.id());
                    self.peers.insert(new.id(), new);
                }
                PeerEvent::Removed(p) => {
                    self.peers.remove(&p.id());
                }
            }
        }
    }

    /// The address family this reconciler programs (its underlay's).
    fn family(&self) -> IpFamily {
        self.backend.family()
    }

    fn ready(&self) -> bool {
        self.listed && self.own.is_some()
    }

    /// One pass. Returns whether it fully succeeded.
    async fn pass(&mut self, trigger: Trigger) -> bool {
        let Some(own) = self.own else { return true };
        let started = Instant::now();
        let plan = self.backend.plan(own, self.peers.values());
        let look =
            !matches!(trigger, Trigger::Peers | Trigger::Settings) || self.believed.is_none();
        let believed = if look { None } else { self.believed.take() };
        let mut nl = self
            .nl
            .take()
            .expect("the netlink handle is always returned");
        let Plan {
            state: desired,
            unreachable,
            refused,
        } = plan;
        let work = move || {
            let result = (|| -> Result<(Vec<Op>, ApplyReport), DataplaneError> {
                let observed = match believed {
                    Some(b) => b,
                    None => nl.observe()?,
                };
                let ops = diff(&observed, &desired);
                let report = nl.apply(&ops);
                Ok((ops, report))
            })();
            (nl, result, desired)
        };
        // The netlink calls block. On weftd's multi-thread runtime they run in place (other
        // tasks move to the other worker), which keeps their allocations in this thread's
        // malloc arena rather than a blocking-pool thread's; elsewhere (unit tests) they run
        // on the blocking pool.
        let (nl, result, desired) = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
            _ => match tokio::task::spawn_blocking(work).await {
                Ok(x) => x,
                Err(e) => panic!("data-plane worker failed: {e}"),
            },
        };
        self.nl = Some(nl);
        self.passes += 1;
        self.metrics.reconciles.inc();
        self.metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());

        let now_unreachable: BTreeSet<IpNetwork> = unreachable.iter().map(|(s, _)| *s).collect();
        for (subnet, why) in &unreachable {
            if !self.unreachable.contains(subnet) {
                warn!(peer_subnet = %subnet, backend = %self.backend.kind(), reason = why.label(), "cannot program this peer: {why}");
            }
        }
        self.unreachable = now_unreachable;
        let now_refused: BTreeSet<IpNetwork> = refused.iter().map(|(s, _)| *s).collect();
        for (subnet, why) in &refused {
            if !self.refused.contains(subnet) {
                warn!(peer_subnet = %subnet, reason = why.label(), "refusing to program this peer: {why}");
            }
        }
        self.refused = now_refused;
        let label = crate::health::family_label(self.family());
        self.metrics
            .peers_refused
            .get_or_create(&label)
            .set(self.refused.len() as i64);
        self.metrics
            .peers_unreachable
            .get_or_create(&label)
            .set(self.unreachable.len() as i64);

        let (ops, report) = match result {
            Ok(x) => x,
            Err(e) => {
                self.metrics.reconcile_errors.inc();
                self.metrics.netlink_errors.inc();
                warn!(error = %e, "cannot read the data plane from the kernel; retrying");
                return false;
            }
        };
        // A pass over a big peer set allocates its size again, even for one change; without
        // giving the free pages back, RSS would creep up to the allocator's high-water mark.
        if ops.len() >= BIG_PASS || self.peers.len() >= BIG_PASS {
            crate::host::memory::release_free_memory();
        }
        let programmed = desired.routes.len() as i64;
        self.metrics
            .peers_programmed
            .get_or_create(&label)
            .set(programmed);
        self.log_pass(trigger, &ops, &report, started.elapsed());
        if report.ok() {
            self.believed = Some(desired);
            true
        } else {
            self.metrics.reconcile_errors.inc();
            self.metrics
                .netlink_errors
                .inc_by(report.failures.len() as u64);
            for (op, why) in report.failures.iter().take(10) {
                warn!(op = %self.names.show(op), reason = why.label(), error = %why, "data-plane operation failed; retrying");
            }
            false
        }
    }

    fn log_pass(&self, trigger: Trigger, ops: &[Op], report: &ApplyReport, took: Duration) {
        if ops.is_empty() {
            debug!(
                %trigger,
                peers = self.peers.len(),
                "data plane already as wanted"
            );
            return;
        }
        let added = ops.iter().filter(|o| !o.is_deletion()).count();
        let summary = match trigger {
            Trigger::Kernel | Trigger::Resync if self.passes > 1 => {
                self.metrics.repairs.inc();
                for op in ops.iter().take(20) {
                    info!(op = %self.names.show(op), "repair: restoring the data plane");
                }
                "repaired the data plane"
            }
            Trigger::Start | Trigger::Kernel | Trigger::Resync => {
                for op in ops.iter().filter(|o| o.is_deletion()).take(20) {
                    info!(op = %self.names.show(op), "start-up: removing state no lease explains");
                }
                "data plane programmed"
            }
            Trigger::Settings => {
                for op in ops.iter().take(20) {
                    info!(op = %self.names.show(op), "applying the changed settings");
                }
                "data plane updated"
            }
            Trigger::Peers | Trigger::Retry => {
                for op in ops.iter().take(20) {
                    debug!(op = %self.names.show(op), "data-plane change");
                }
                "data plane updated"
            }
        };
        info!(
            set = added,
            removed = ops.len() - added,
            failed = report.failures.len(),
            peers = self.peers.len(),
            took_ms = millis(took),
            "{summary}"
        );
    }

    /// Run until `shutdown` turns true (or every input is gone). The kernel state stays.
    pub async fn run(mut self, inputs: Inputs, mut shutdown: watch::Receiver<bool>) -> Self {
        let Inputs {
            mut own,
            mut settings,
            mut peers,
            mut kicks,
            resync,
        } = inputs;
        settings.borrow_and_update();
        let mut settings_open = true;
        let mut tick = tokio::time::interval(resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut retry_backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut started = false;
        self.own = *own.borrow_and_update();
        let mut peers_open = true;
        let mut kicks_open = true;
        loop {
            self.progressed(resync);
            let retry = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let trigger = tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break; }
                    continue;
                }
                changed = own.changed() => {
                    if changed.is_err() { break; }
                    let new = *own.borrow_and_update();
                    if new.is_none() || new == self.own { continue; }
                    if let Some(subnet) = new {
                        info!(%subnet, "this node's subnet is known; planning the data plane");
                    }
                    self.own = new;
                    Trigger::Peers
                }
                batch = peers.recv(), if peers_open => {
                    match batch {
                        Some(b) => {
                            self.take_events(b);
                            // Drain what else is queued: one pass for a burst.
                            while let Ok(b) = peers.try_recv() {
                                self.take_events(b);
                            }
                            Trigger::Peers
                        }
                        None => { peers_open = false; continue; }
                    }
                }
                changed = settings.changed(), if settings_open => {
                    if changed.is_err() { settings_open = false; continue; }
                    let new = settings.borrow_and_update().clone();
                    if new == self.backend { continue; }
                    self.backend = new;
                    Trigger::Settings
                }
                kick = kicks.recv(), if kicks_open => {
                    if kick.is_none() { kicks_open = false; continue; }
                    Trigger::Kernel
                }
                _ = tick.tick() => Trigger::Resync,
                _ = retry => Trigger::Retry,
            };
            self.progressed(resync);
            if !self.ready() {
                continue;
            }
            let trigger = if started { trigger } else { Trigger::Start };
            started = true;
            retry_at = None;
            if self.pass(trigger).await {
                retry_backoff.reset();
            } else {
                // A failed pass leaves the believed state unknown: read it back next time.
                self.believed = None;
                retry_at = Some(tokio::time::Instant::now() + retry_backoff.next_delay());
            }
        }
        self
    }
}

/// A duration in milliseconds, rounded to a tenth, for logs (`took_ms=0.9`).
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Listen to the kernel's notifications on a thread of its own and send a kick whenever one
/// concerns weft's device, entries or routes. Kicks coalesce (the channel holds one). The
/// thread ends when the receiving side is dropped.
pub fn spawn_monitor(
    device: String,
    family: IpFamily,
    kicks: mpsc::Sender<()>,
) -> Result<std::thread::JoinHandle<()>, weft_backends::netlink::NlError> {
    let mut monitor = Monitor::open(Duration::from_millis(500))?;
    let mut index = weft_backends::netlink::NlSocket::open()?
        .link_by_name(&device)?
        .map(|l| l.header.index);
    std::thread::Builder::new()
        .name("weft-monitor".into())
        .spawn(move || loop {
            if kicks.is_closed() {
                return;
            }
            let notes = match monitor.recv() {
                Ok(n) => n,
                Err(e) => {
                    warn!(error = %e, "kernel notification listener failed; relying on resync");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let mut kick = false;
            for n in &notes {
                if let weft_backends::dataplane::Notification::Link {
                    name: Some(name),
                    index: i,
                    deleted,
                    ..
                } = n
                {
                    if *name == device {
                        index = (!deleted).then_some(*i);
                        kick = true;
                        continue;
                    }
                }
                if n.concerns_weft(family, &device, index) {
                    debug!(notification = %n, "kernel change concerning weft");
                    kick = true;
                }
            }
            if kick {
                match kicks.try_send(()) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(())) => {}
                    Err(mpsc::error::TrySendError::Closed(())) => return,
                }
            }
        })
        .map_err(weft_backends::netlink::NlError::Socket)
}

/// Follow the MTU of the underlay (the link `index`, called `name`) on a thread of its own,
/// from link notifications; after lost notifications the link is read again. Each new value
/// goes to `mtu`. The thread ends when every receiver is gone.
pub fn spawn_mtu_watch(
    index: u32,
    name: String,
    mtu: watch::Sender<u32>,
) -> Result<std::thread::JoinHandle<()>, weft_backends::netlink::NlError> {
    use weft_backends::dataplane::Notification;
    let mut monitor = Monitor::open_links(Duration::from_millis(500))?;
    let mut nl = weft_backends::netlink::NlSocket::open()?;
    std::thread::Builder::new()
        .name("weft-mtu-watch".into())
        .spawn(move || loop {
            if mtu.is_closed() {
                return;
            }
            let notes = match monitor.recv() {
                Ok(n) => n,
                Err(e) => {
                    warn!(error = %e, iface = %name, "cannot follow the interface's MTU; a change takes effect at the next restart");
                    return;
                }
            };
            for n in notes {
                let seen = match n {
                    Notification::Link {
                        index: i,
                        mtu: Some(m),
                        deleted: false,
                        ..
                    } if i == index => Some(m),
                    Notification::Overrun => nl
                        .link_by_name(&name)
                        .ok()
                        .flatten()
                        .filter(|l| l.header.index == index)
                        .and_then(|l| {
                            weft_backends::netlink::link_attr(&l, |a| match a {
                                netlink_packet_route::link::LinkAttribute::Mtu(m) => Some(*m),
                                _ => None,
                            })
                        }),
                    _ => None,
                };
                if let Some(m) = seen {
                    mtu.send_if_modified(|now| std::mem::replace(now, m) != m);
                }
            }
        })
        .map_err(weft_backends::netlink::NlError::Socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_backends::backend::vxlan::{VxlanOp, VxlanSettings};
    use weft_backends::backend::BackendData;
    use weft_backends::dataplane::FakeNetlink;
    use weft_backends::plan::Underlay;
    use weft_backends::route::Via;
    use weft_backends::{BackendKind, MacAddr};

    fn net(s: &str) -> ipnetwork::Ipv4Network {
        s.parse().unwrap()
    }

    fn settings() -> Settings {
        Settings::Vxlan(VxlanSettings {
            device: "weft.1".into(),
            vni: 1,
            port: 8472,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            mtu: 1450,
            underlay: Underlay {
                index: 2,
                ip: "192.168.1.10".parse().unwrap(),
                mtu: 1500,
                connected: vec!["192.168.1.0/24".parse().unwrap()],
            },
            direct_routing: false,
        })
    }

    fn peer(n: u8, mac: u8) -> Peer {
        Peer {
            subnet: net(&format!("10.244.{n}.0/24")),
            public_ip: format!("10.9.0.{n}").parse().unwrap(),
            subnet_v6: None,
            public_ip_v6: None,
            backend: BackendKind::Vxlan,
            data: Some(BackendData::vxlan(1, MacAddr([2, 0, 0, 0, 9, mac]))),
            data_v6: None,
            node_name: None,
        }
    }

    struct Harness {
        own: watch::Sender<Option<IpNetwork>>,
        settings: watch::Sender<Settings>,
        peers: mpsc::Sender<Vec<PeerEvent>>,
        kicks: mpsc::Sender<()>,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<Reconciler<FakeNetlink>>,
    }

    fn start(fake: FakeNetlink) -> Harness {
        let (own, own_rx) = watch::channel(Some(net("10.244.1.0/24").into()));
        let (peers, peers_rx) = mpsc::channel(16);
        let (kicks, kicks_rx) = mpsc::channel(1);
        let (stop, stop_rx) = watch::channel(false);
        let (settings_tx, settings_rx) = watch::channel(settings());
        let names = LinkNames::new("weft.1").with_link(2, "eth0");
        let r = Reconciler::new(fake, settings(), names, Metrics::default());
        let inputs = Inputs {
            own: own_rx,
            settings: settings_rx,
            peers: peers_rx,
            kicks: kicks_rx,
            resync: Duration::from_secs(30),
        };
        let task = tokio::spawn(r.run(inputs, stop_rx));
        Harness {
            own,
            settings: settings_tx,
            peers,
            kicks,
            stop,
            task,
        }
    }

    impl Harness {
        async fn finish(self) -> FakeNetlink {
            // Let queued inputs be handled, then stop.
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.stop.send_replace(true);
            drop(self.own);
            drop(self.settings);
            let r = self.task.await.unwrap();
            let Reconciler { nl, .. } = r;
            nl.unwrap()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_shows_progress_every_resync_and_is_overdue_three_resyncs_after_its_last_turn()
    {
        let progress = Progress::default();
        let (_own, own_rx) = watch::channel(None);
        let (_peers, peers_rx) = mpsc::channel(16);
        let (_kicks, kicks_rx) = mpsc::channel(1);
        let (stop, stop_rx) = watch::channel(false);
        let (_settings, settings_rx) = watch::channel(settings());
        let names = LinkNames::new("weft.1").with_link(2, "eth0");
        let r = Reconciler::new(
            FakeNetlink::default(),
            settings(),
            names,
            Metrics::default(),
        )
        .with_progress(progress.clone());
        let inputs = Inputs {
            own: own_rx,
            settings: settings_rx,
            peers: peers_rx,
            kicks: kicks_rx,
            resync: Duration::from_secs(30),
        };
        let task = tokio::spawn(r.run(inputs, stop_rx));
        // Nothing to program (no subnet, no listing): the resync tick still turns the loop.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(30)).await;
            assert_eq!(progress.overdue(), None);
        }
        // Let the loop take the tick that fell due with the last sleep (both wake at the same
        // instant, in either order), so its last turn is at that tick.
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The loop stops turning: overdue once three resync intervals have passed.
        stop.send_replace(true);
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(88)).await;
        assert_eq!(progress.overdue(), None);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(progress.overdue().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_touched_before_the_first_listing_then_stale_state_is_removed() {
        // State left by a previous run: a peer that no longer exists, and one that still does.
        let mut fake = FakeNetlink::default();
        let own = net("10.244.1.0/24");
        let old = settings().plan(own.into(), &[peer(2, 2), peer(3, 3)]).state;
        fake.state = old.clone();
        let h = start(fake);
        tokio::time::sleep(Duration::from_secs(60)).await; // resyncs pass; no listing yet
        h.peers
            .send(vec![PeerEvent::Added(peer(2, 2))])
            .await
            .unwrap();
        let fake = h.finish().await;
        let want = settings().plan(own.into(), &[peer(2, 2)]).state;
        assert_eq!(fake.state, want);
        assert!(
            fake.applied
                .iter()
                .all(|o| !matches!(o, Op::Vxlan(VxlanOp::SetDevice(_)) | Op::SetRoute(_))),
            "the surviving peer's entries were left alone: {:?}",
            fake.applied
        );
        assert_eq!(
            fake.applied.len(),
            3,
            "route, FDB entry, neighbour of peer 3"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn peer_events_are_applied_without_reading_the_kernel_each_time() {
        let h = start(FakeNetlink::default());
        h.peers.send(vec![]).await.unwrap(); // an empty first listing
        tokio::time::sleep(Duration::from_millis(10)).await;
        for n in 2..6 {
            h.peers
                .send(vec![PeerEvent::Added(peer(n, n))])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        h.peers
            .send(vec![PeerEvent::Updated {
                old: peer(2, 2),
                new: peer(2, 7),
            }])
            .await
            .unwrap();
        h.peers
            .send(vec![PeerEvent::Removed(peer(3, 3))])
            .await
            .unwrap();
        let fake = h.finish().await;
        let want = settings()
            .plan(
                "10.244.1.0/24".parse().unwrap(),
                &[peer(2, 7), peer(4, 4), peer(5, 5)],
            )
            .state;
        assert_eq!(fake.state, want);
        assert_eq!(fake.observed, 1, "only the first pass reads the kernel");
        assert!(
            !fake.state.vxlan.fdb.iter().any(|f| f.mac.0[5] == 2),
            "old MAC gone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_kick_reads_the_kernel_and_repairs_what_someone_removed() {
        let h = start(FakeNetlink::default());
        h.peers
            .send(vec![
                PeerEvent::Added(peer(2, 2)),
                PeerEvent::Added(peer(3, 3)),
            ])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let fake = h.finish().await;
        let want = fake.state.clone();
        assert!(want.vxlan.device.is_some());

        // Someone deletes the device (and with it the entries and overlay routes).
        let mut broken = FakeNetlink {
            state: want.clone(),
            ..Default::default()
        };
        broken.state.vxlan.device = None;
        broken.state.vxlan.neighbours.clear();
        broken.state.vxlan.fdb.clear();
        broken
            .state
            .routes
            .retain(|r| matches!(r.via, Via::Direct { .. }));
        let h = start(broken);
        h.peers
            .send(vec![
                PeerEvent::Added(peer(2, 2)),
                PeerEvent::Added(peer(3, 3)),
            ])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        h.kicks.send(()).await.unwrap();
        let fake = h.finish().await;
        assert_eq!(fake.state, want);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_operation_is_retried_until_it_succeeds() {
        use std::sync::atomic::{AtomicBool, Ordering};
        static FAIL: AtomicBool = AtomicBool::new(true);
        let fake = FakeNetlink {
            fail_if: Some(|op| matches!(op, Op::SetRoute(_)) && FAIL.load(Ordering::SeqCst)),
            ..Default::default()
        };
        let h = start(fake);
        h.peers
            .send(vec![PeerEvent::Added(peer(2, 2))])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await; // several failed retries
        FAIL.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(15)).await; // longer than the longest backoff
        let fake = h.finish().await;
        assert_eq!(
            fake.state.routes.len(),
            1,
            "the route arrived once the kernel accepted it"
        );
        assert!(
            fake.observed >= 3,
            "every failed pass makes the next one read the kernel: {}",
            fake.observed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_own_subnet_moves_the_device_address() {
        let h = start(FakeNetlink::default());
        h.peers
            .send(vec![PeerEvent::Added(peer(2, 2))])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        h.own.send_replace(Some(net("10.244.9.0/24").into()));
        let fake = h.finish().await;
        assert_eq!(
            fake.state.vxlan.device.unwrap().addresses,
            vec!["10.244.9.0/32".parse::<IpNetwork>().unwrap()]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_underlay_mtu_changes_the_device_in_place() {
        let h = start(FakeNetlink::default());
        h.peers
            .send(vec![PeerEvent::Added(peer(2, 2))])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let Settings::Vxlan(mut v) = settings() else {
            unreachable!("the test settings are vxlan")
        };
        v.underlay.mtu = 9000;
        v.mtu = VxlanSettings::mtu_for(9000, None, IpFamily::V4);
        h.settings.send_replace(Settings::Vxlan(v));
        let fake = h.finish().await;
        assert_eq!(fake.state.vxlan.device.as_ref().unwrap().mtu, 8950);
        assert_eq!(
            fake.observed, 1,
            "the new MTU is applied without reading the kernel"
        );
        assert!(
            !fake
                .applied
                .iter()
                .any(|o| matches!(o, Op::Vxlan(VxlanOp::DeleteDevice(_)))),
            "the device is changed, not re-created: {:?}",
            fake.applied
        );
        assert_eq!(fake.state.routes.len(), 1, "the peer's route stays");
    }

    #[tokio::test(start_paused = true)]
    async fn logs_name_links_and_print_no_debug_values() {
        let logs = crate::logging::Captured::start();
        // Left by an earlier run: a route through the underlay that no lease explains.
        let mut fake = FakeNetlink::default();
        fake.state.routes.insert(weft_backends::route::Route {
            dst: "10.244.9.0/24".parse().unwrap(),
            via: Via::Direct {
                gateway: "192.168.1.99".parse().unwrap(),
                index: 2,
            },
        });
        let h = start(fake);
        h.peers
            .send(vec![PeerEvent::Added(peer(2, 2))])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        h.peers
            .send(vec![PeerEvent::Added(peer(3, 3))])
            .await
            .unwrap();
        h.finish().await;
        let text = logs.text();
        assert!(
            text.contains("delete route 10.244.9.0/24 via 192.168.1.99 dev eth0"),
            "{text}"
        );
        assert!(
            text.contains("set route 10.244.3.0/24 via 10.244.3.0 dev weft.1 onlink"),
            "{text}"
        );
        for debug_form in ["#", "Some(", "None", "Peers", "Kernel"] {
            assert!(!text.contains(debug_form), "{debug_form:?} in:\n{text}");
        }
        // Durations are rounded to a tenth of a millisecond.
        for took in text.split("took_ms=").skip(1) {
            let value = took.split_whitespace().next().unwrap();
            let decimals = value.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(decimals <= 1, "took_ms={value}");
        }
    }
}
