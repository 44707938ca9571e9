//! The peer watch: list once, watch from that revision, turn lease changes into peer events.
//! On compaction or a broken stream it re-lists and emits only the difference.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use weft_backends::backend::wireguard::Key;
use weft_backends::backend::BackendData;
use weft_backends::{IpFamily, Peer, PeerEvent};

use crate::backoff::Backoff;
use crate::lease::keeper::{sleep_or_shutdown, OwnKeyNotice};
use crate::lease::{validate, LeaseRules, SubnetKey};
use crate::store::{LeaseStore, Revision, Snapshot, StoredEntry, WatchEvent};

/// One entry as the watch knows it.
#[derive(Clone, Debug)]
struct Known {
    create_revision: Revision,
    mod_revision: Revision,
    peer: Option<Peer>,
}

/// Something a lease claims for its node alone: a subnet (of either family), a public
/// address or a WireGuard public key. Two live leases never share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Claim {
    Subnet(IpNetwork),
    PublicIp(IpAddr),
    /// A WireGuard key names one peer: a copy in a younger lease must not take the peer
    /// over, whichever subnet it claims.
    WireguardKey(IpFamily, Key),
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::Subnet(n) => write!(f, "subnet {n}"),
            Claim::PublicIp(a) => write!(f, "public IP {a}"),
            Claim::WireguardKey(family, key) => write!(f, "{family} WireGuard public key {key}"),
        }
    }
}

/// Everything `p` claims besides its identifying subnet ([`Peer::id`]).
fn claims(p: &Peer) -> Vec<Claim> {
    let mut out = Vec::with_capacity(3);
    if let (Some(v6), IpNetwork::V4(_)) = (p.subnet_v6, p.id()) {
        out.push(Claim::Subnet(IpNetwork::V6(v6)));
    }
    if !p.public_ip.is_unspecified() {
        out.push(Claim::PublicIp(IpAddr::V4(p.public_ip)));
    }
    if let Some(ip6) = p.public_ip_v6 {
        out.push(Claim::PublicIp(IpAddr::V6(ip6)));
    }
    for (family, data) in [(IpFamily::V4, &p.data), (IpFamily::V6, &p.data_v6)] {
        if let Some(BackendData::Wireguard(w)) = data {
            out.push(Claim::WireguardKey(family, w.public_key));
        }
    }
    out
}

/// The peer set and the bookkeeping to diff it. Pure: fed entries, returns events.
///
/// Peers are identified by their IPv4 subnet (their IPv6 subnet on an IPv6-only cluster).
/// Two keys naming one such subnet: the older wins. A lease whose other claims (its IPv6
/// subnet on a dual-stack cluster, its public addresses, its WireGuard keys) are already
/// held by an older lease for another subnet is refused, as is any lease claiming one of
/// this node's subnets.
#[derive(Debug)]
pub struct PeerSet {
    rules: LeaseRules,
    own: Option<SubnetKey>,
    /// This node's name: a lease carrying it is never a peer, whatever its subnet.
    me: Option<String>,
    entries: BTreeMap<String, Known>,
    by_subnet: BTreeMap<IpNetwork, BTreeSet<String>>,
    /// Valid entries by the other things they claim (a second claimant is refused).
    by_claim: BTreeMap<Claim, BTreeSet<String>>,
    /// Subnets whose winner may have changed because a claim's claimants changed.
    claim_touched: BTreeSet<IpNetwork>,
    /// Entries refused because an older lease holds their subnet or another claim (or they
    /// claim this node's subnet), with why.
    conflicts: BTreeMap<String, String>,
    /// What has been emitted: subnet → peer.
    emitted: BTreeMap<IpNetwork, Peer>,
    warned: HashSet<(String, i64)>,
    invalid: usize,
}

impl PeerSet {
    pub fn new(rules: LeaseRules, me: Option<String>) -> Self {
        PeerSet {
            rules,
            own: None,
            me,
            entries: BTreeMap::new(),
            by_subnet: BTreeMap::new(),
            by_claim: BTreeMap::new(),
            claim_touched: BTreeSet::new(),
            conflicts: BTreeMap::new(),
            emitted: BTreeMap::new(),
            warned: HashSet::new(),
            invalid: 0,
        }
    }

    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.emitted.values()
    }

    pub fn len(&self) -> usize {
        self.emitted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.emitted.is_empty()
    }

    /// Entries present that are not used: they failed validation, or an older lease holds
    /// their subnet or public IP.
    pub fn invalid_count(&self) -> usize {
        self.invalid + self.conflicts.len()
    }

    /// The valid entries not used because of another lease, by key, with why (what
    /// `netctl check` reports next to the plan weftd makes from the same leases).
    pub fn refused(&self) -> impl Iterator<Item = (&str, &str)> {
        self.conflicts
            .iter()
            .map(|(n, why)| (n.as_str(), why.as_str()))
    }

    /// The identifying subnet of every valid entry making `claim`.
    fn subnets_claiming(&self, claim: &Claim) -> Vec<IpNetwork> {
        self.by_claim
            .get(claim)
            .into_iter()
            .flatten()
            .filter_map(|n| self.entries.get(n)?.peer.as_ref().map(Peer::id))
            .collect()
    }

    fn own_subnets(&self) -> Vec<IpNetwork> {
        let Some(own) = self.own else { return vec![] };
        own.v4_subnet()
            .map(IpNetwork::V4)
            .into_iter()
            .chain(own.v6.map(IpNetwork::V6))
            .collect()
    }

    /// Set this node's own key (its subnets are never a peer's). Returns the resulting
    /// events.
    pub fn set_own(&mut self, own: Option<SubnetKey>) -> Vec<PeerEvent> {
        let mut touched: BTreeSet<IpNetwork> = self.own_subnets().into_iter().collect();
        self.own = own;
        for s in self.own_subnets() {
            touched.insert(s);
            let claim = Claim::Subnet(s);
            touched.extend(self.subnets_claiming(&claim));
        }
        self.settle(touched)
    }

    /// Replace everything with a fresh listing; emit the difference.
    pub fn reset(&mut self, entries: &[StoredEntry]) -> Vec<PeerEvent> {
        let mut touched: BTreeSet<IpNetwork> = self.emitted.keys().copied().collect();
        let fresh: BTreeSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|n| !fresh.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(s) = self.forget(&name) {
                touched.insert(s);
            }
        }
        for e in entries {
            let unchanged = self
                .entries
                .get(&e.name)
                .is_some_and(|k| k.mod_revision == e.mod_revision);
            if !unchanged {
                if let Some(s) = self.learn(e) {
                    touched.insert(s);
                }
            }
        }
        self.settle(touched)
    }

    /// Apply a batch of watch events; emit the difference.
    pub fn apply(&mut self, events: &[WatchEvent]) -> Vec<PeerEvent> {
        let mut touched = BTreeSet::new();
        for ev in events {
            match ev {
                WatchEvent::Put(e) => {
                    if self
                        .entries
                        .get(&e.name)
                        .is_some_and(|k| k.mod_revision >= e.mod_revision)
                    {
                        continue; // replayed
                    }
                    if let Some(old) = self.forget(&e.name) {
                        touched.insert(old);
                    }
                    if let Some(s) = self.learn(e) {
                        touched.insert(s);
                    }
                }
                WatchEvent::Delete { name, .. } => {
                    if let Some(s) = self.forget(name) {
                        touched.insert(s);
                    }
                }
            }
        }
        self.settle(touched)
    }

    /// Record an entry; returns its identifying subnet if it is valid.
    fn learn(&mut self, e: &StoredEntry) -> Option<IpNetwork> {
        self.forget(&e.name);
        // This node's own lease carries its own public IP; only peers may not.
        let own_key = self.own.is_some_and(|own| own.to_string() == e.name);
        let rules = if own_key {
            self.rules.for_own_lease()
        } else {
            self.rules.clone()
        };
        let peer = match validate(&rules, &e.name, &e.value) {
            Ok(p) => Some(p),
            Err(err) => {
                self.invalid += 1;
                if self.warned.insert((e.name.clone(), e.mod_revision.0)) {
                    warn!(key = %e.name.escape_debug(), revision = e.mod_revision.0, error = %err, "skipping invalid lease");
                }
                None
            }
        };
        let id = peer.as_ref().map(Peer::id);
        let peer_claims = peer.as_ref().map(claims).unwrap_or_default();
        self.entries.insert(
            e.name.clone(),
            Known {
                create_revision: e.create_revision,
                mod_revision: e.mod_revision,
                peer,
            },
        );
        if let Some(s) = id {
            self.by_subnet.entry(s).or_default().insert(e.name.clone());
        }
        for c in peer_claims {
            self.by_claim.entry(c).or_default().insert(e.name.clone());
            let others = self.subnets_claiming(&c);
            self.claim_touched.extend(others);
        }
        id
    }

    fn forget(&mut self, name: &str) -> Option<IpNetwork> {
        let known = self.entries.remove(name)?;
        match known.peer {
            None => {
                self.invalid = self.invalid.saturating_sub(1);
                None
            }
            Some(p) => {
                let id = p.id();
                if let Some(set) = self.by_subnet.get_mut(&id) {
                    set.remove(name);
                    if set.is_empty() {
                        self.by_subnet.remove(&id);
                    }
                }
                for c in claims(&p) {
                    if let Some(set) = self.by_claim.get_mut(&c) {
                        set.remove(name);
                        if set.is_empty() {
                            self.by_claim.remove(&c);
                        }
                    }
                    let others = self.subnets_claiming(&c);
                    self.claim_touched.extend(others);
                }
                self.conflicts.remove(name);
                Some(id)
            }
        }
    }

    /// Recompute the winner for each touched subnet and emit what changed.
    fn settle(&mut self, mut touched: BTreeSet<IpNetwork>) -> Vec<PeerEvent> {
        touched.append(&mut self.claim_touched);
        let own_subnets = self.own_subnets();
        let own_name = self.own.map(|k| k.to_string());
        let mut out = Vec::new();
        for subnet in touched {
            let winner = if own_subnets.contains(&subnet) {
                // Any other key for this node's own subnet is somebody else's claim on it.
                let intruders: Vec<String> = self
                    .by_subnet
                    .get(&subnet)
                    .into_iter()
                    .flatten()
                    .filter(|n| Some(*n) != own_name.as_ref())
                    .cloned()
                    .collect();
                for n in intruders {
                    let rev = self.entries.get(&n).map_or(0, |k| k.mod_revision.0);
                    if self.warned.insert((format!("own:{n}"), rev)) {
                        warn!(key = %n.escape_debug(), subnet = %subnet, "refusing a lease that claims this node's own subnet");
                    }
                    self.conflicts
                        .insert(n, format!("it claims this node's own subnet {subnet}"));
                }
                None
            } else {
                self.winner(subnet, &own_subnets)
                    .filter(|p| p.node_name.is_none() || p.node_name != self.me)
            };
            match (self.emitted.get(&subnet).cloned(), winner) {
                (None, None) => {}
                (None, Some(p)) => {
                    self.emitted.insert(subnet, p.clone());
                    out.push(PeerEvent::Added(p));
                }
                (Some(old), None) => {
                    self.emitted.remove(&subnet);
                    out.push(PeerEvent::Removed(old));
                }
                (Some(old), Some(new)) if old != new => {
                    self.emitted.insert(subnet, new.clone());
                    out.push(PeerEvent::Updated { old, new });
                }
                _ => {}
            }
        }
        out
    }

    /// Two keys claiming one subnet (e.g. a single-stack and a dual-stack key): the one
    /// created first wins, the other is reported.
    fn winner(&mut self, subnet: IpNetwork, own_subnets: &[IpNetwork]) -> Option<Peer> {
        let names = self.by_subnet.get(&subnet)?;
        let mut best: Option<(&String, &Known)> = None;
        for n in names {
            let k = &self.entries[n];
            if best.is_none_or(|(_, b)| k.create_revision < b.create_revision) {
                best = Some((n, k));
            }
        }
        let (name, known) = best?;
        if names.len() > 1 {
            let others: Vec<&String> = names.iter().filter(|n| *n != name).collect();
            let key = (format!("dup:{subnet}"), known.mod_revision.0);
            if self.warned.insert(key) {
                let ignored = others
                    .iter()
                    .map(|n| n.escape_debug().to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                warn!(subnet = %subnet, chosen_key = %name.escape_debug(), ignored_keys = %ignored, "several leases claim one subnet; using the oldest");
            }
        }
        let name = name.clone();
        let peer = known.peer.clone()?;
        let created = known.create_revision;
        for n in names.iter().filter(|n| **n != name) {
            self.conflicts.insert(
                n.clone(),
                format!(
                    "the older lease {} holds its subnet {subnet}",
                    name.escape_debug()
                ),
            );
        }
        self.conflicts.remove(&name);
        // Another claim (an IPv6 subnet, a public address) held by an older lease for
        // another subnet, or one of this node's own subnets: this lease is refused, so that
        // a copied or mistyped value cannot pull a live node's traffic elsewhere.
        for claim in claims(&peer) {
            let own = matches!(claim, Claim::Subnet(s) if own_subnets.contains(&s));
            let older = self.by_claim.get(&claim).and_then(|holders| {
                holders
                    .iter()
                    .filter(|n| **n != name)
                    .filter_map(|n| Some((n, self.entries.get(n)?)))
                    .filter(|(_, k)| k.peer.as_ref().is_some_and(|p| p.id() != subnet))
                    .filter(|(n, k)| (k.create_revision, n.as_str()) < (created, name.as_str()))
                    .map(|(n, _)| n.clone())
                    .next()
            });
            let holder = match (own, older) {
                (true, _) => "this node".to_string(),
                (false, Some(h)) => h,
                (false, None) => continue,
            };
            self.conflicts.insert(
                name.clone(),
                match own {
                    true => format!("it claims this node's own {claim}"),
                    false => format!(
                        "the older lease {} already holds its {claim}",
                        holder.escape_debug()
                    ),
                },
            );
            let key = (format!("claim:{name}"), known.mod_revision.0);
            if self.warned.insert(key) {
                warn!(key = %name.escape_debug(), claim = %claim, held_by = %holder.escape_debug(), "refusing a lease whose {claim} an older lease already holds");
            }
            return None;
        }
        Some(peer)
    }
}

/// Peer changes of one batch logged one per line at info; the rest go to debug, with a count.
const PEER_LINES_PER_BATCH: usize = 20;

/// Where a batch of peer events comes from, which decides how it is logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Batch {
    /// The first listing: every peer is new to this process, which is no news; one summary
    /// line at info (the caller's), each peer at debug.
    FirstListing,
    /// A change seen by the watch, a re-list or a new own subnet: each peer at info.
    Change,
}

/// Log who joined, left or changed. Peers are named by node name (when their lease carries
/// one), subnet and public IP.
fn log_peer_events(events: &[PeerEvent], batch: Batch) {
    for (i, ev) in events.iter().enumerate() {
        let loud = batch == Batch::Change && i < PEER_LINES_PER_BATCH;
        match ev {
            PeerEvent::Added(p) if batch == Batch::FirstListing => log_peer(loud, p, "peer known"),
            PeerEvent::Added(p) => log_peer(loud, p, "peer joined"),
            PeerEvent::Removed(p) => log_peer(loud, p, "peer left"),
            PeerEvent::Updated { old, new } => log_peer(
                loud,
                new,
                &format!("peer changed: {}", peer_changes(old, new)),
            ),
        }
    }
    if batch == Batch::Change && events.len() > PEER_LINES_PER_BATCH {
        info!(
            "{} more peer changes in this batch (logged at debug level)",
            events.len() - PEER_LINES_PER_BATCH
        );
    }
}

/// One line about `p`: its node name, subnet(s) and public IP(s) as fields.
fn log_peer(loud: bool, p: &Peer, what: &str) {
    let id = p.id();
    let dual = matches!(id, IpNetwork::V4(_));
    let node = p.node_name.as_deref().map(tracing::field::display);
    let public_ip = p
        .public_ip_of(IpFamily::of_network(id))
        .map(tracing::field::display);
    let subnet_v6 = p.subnet_v6.filter(|_| dual).map(tracing::field::display);
    let public_ip_v6 = p.public_ip_v6.filter(|_| dual).map(tracing::field::display);
    if loud {
        info!(node, subnet = %id, public_ip, subnet_v6, public_ip_v6, "{what}");
    } else {
        debug!(node, subnet = %id, public_ip, subnet_v6, public_ip_v6, "{what}");
    }
}

/// What differs between two versions of a peer, in words: `public IP from 192.0.2.12 to
/// 192.0.2.99`.
fn peer_changes(old: &Peer, new: &Peer) -> String {
    fn text<T: std::fmt::Display>(v: Option<T>) -> String {
        v.map_or_else(|| "none".into(), |v| v.to_string())
    }
    let mut out = Vec::new();
    let mut differs = |what: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{what} from {a} to {b}"));
        }
    };
    differs(
        "node name",
        text(old.node_name.as_deref()),
        text(new.node_name.as_deref()),
    );
    differs(
        "public IP",
        old.public_ip.to_string(),
        new.public_ip.to_string(),
    );
    differs(
        "IPv6 public IP",
        text(old.public_ip_v6),
        text(new.public_ip_v6),
    );
    differs("IPv6 subnet", text(old.subnet_v6), text(new.subnet_v6));
    differs("backend", old.backend.to_string(), new.backend.to_string());
    for (family, old, new) in [
        ("", &old.data, &new.data),
        ("IPv6 ", &old.data_v6, &new.data_v6),
    ] {
        let what = old.or(*new).map_or("backend data", |d| d.describe().0);
        let value = |d: &Option<BackendData>| d.map_or_else(|| "none".into(), |d| d.describe().1);
        differs(&format!("{family}{what}"), value(old), value(new));
    }
    if out.is_empty() {
        "lease rewritten".into()
    } else {
        out.join(", ")
    }
}

/// What the peer watch works with.
#[derive(Debug)]
pub struct WatchSettings<S> {
    pub store: Arc<S>,
    /// How peer leases are validated.
    pub rules: LeaseRules,
    /// A listing already read (saves the first request).
    pub initial: Option<Snapshot>,
    /// This node's name: a lease carrying it is never a peer, whatever its subnet.
    pub me: Option<String>,
    /// This node's own key, once the keeper holds one; the watch starts then.
    pub own: watch::Receiver<Option<SubnetKey>>,
    /// Where peer events go. The first batch of a run is the full listing (sent even when
    /// empty: it tells the data plane that the peer set is known).
    pub events: mpsc::Sender<Vec<PeerEvent>>,
    /// Changes to the key named by `own` (the keeper decides what they mean).
    pub own_notices: mpsc::Sender<OwnKeyNotice>,
}

/// How many leases the watch uses and refuses, after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCounts {
    /// Valid peers.
    pub peers: usize,
    /// Leases present but not used ([`PeerSet::invalid_count`]).
    pub invalid: usize,
}

/// What the watch reports, one per event, so that each metric counts what its name says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchReport {
    /// The first listing of this run.
    Listed(PeerCounts),
    /// A listing after the watch broke (compaction, a broken stream, an etcd outage): the
    /// watch was re-established. `changes` peer events came of it.
    Relisted { counts: PeerCounts, changes: usize },
    /// A change seen by the watch, or a new own subnet.
    Changed(PeerCounts),
}

/// How one watch stream ended.
enum StreamEnd {
    /// Shutdown, or nobody listens any more: the watch stops.
    Stop,
    /// The stream broke: re-list and watch again.
    Relist,
}

/// The running watch: the peer set and where its results go.
struct Watcher<S, R> {
    settings: WatchSettings<S>,
    set: PeerSet,
    own_key: Option<SubnetKey>,
    report: R,
    shutdown: watch::Receiver<bool>,
    backoff: Backoff,
}

/// Run the watch until shutdown: list once, watch from that revision, and on compaction or
/// a broken stream re-list and emit only the difference. Each listing and change is told to
/// `report`.
pub async fn run_peer_watch<S: LeaseStore>(
    settings: WatchSettings<S>,
    report: impl Fn(WatchReport) + Send,
    shutdown: watch::Receiver<bool>,
) {
    let set = PeerSet::new(settings.rules.clone(), settings.me.clone());
    let mut w = Watcher {
        settings,
        set,
        own_key: None,
        report,
        shutdown,
        backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
    };
    if !w.wait_for_own_key().await {
        return;
    }
    let mut snapshot = w.settings.initial.take();
    let mut first = true;
    loop {
        if *w.shutdown.borrow() {
            return;
        }
        let snap = match snapshot.take() {
            Some(s) => s,
            None => match w.settings.store.snapshot(false).await {
                Ok(s) => s,
                Err(e) => {
                    let d = w.backoff.next_delay();
                    warn!(error = %e, retry_in_ms = d.as_millis() as u64, "cannot list leases");
                    if sleep_or_shutdown(d, &mut w.shutdown).await {
                        return;
                    }
                    continue;
                }
            },
        };
        let revision = snap.revision;
        if !w.take_listing(snap, first).await {
            return;
        }
        first = false;
        let stream = match w.settings.store.watch(Revision(revision.0 + 1)).await {
            Ok(s) => s,
            Err(e) => {
                let d = w.backoff.next_delay();
                warn!(error = %e, retry_in_ms = d.as_millis() as u64, "cannot start lease watch");
                if sleep_or_shutdown(d, &mut w.shutdown).await {
                    return;
                }
                continue;
            }
        };
        w.backoff.reset();
        if let StreamEnd::Stop = w.follow(stream).await {
            return;
        }
        if sleep_or_shutdown(w.backoff.next_delay(), &mut w.shutdown).await {
            return;
        }
    }
}

impl<S: LeaseStore, R: Fn(WatchReport) + Send> Watcher<S, R> {
    fn counts(&self) -> PeerCounts {
        PeerCounts {
            peers: self.set.len(),
            invalid: self.set.invalid_count(),
        }
    }

    /// Wait until this node holds a lease, so its own subnet is never taken for a peer.
    /// False on shutdown.
    async fn wait_for_own_key(&mut self) -> bool {
        let own = &mut self.settings.own;
        while own.borrow_and_update().is_none() {
            tokio::select! {
                r = own.changed() => if r.is_err() { return false },
                _ = self.shutdown.changed() => if *self.shutdown.borrow() { return false },
            }
        }
        self.own_key = *own.borrow();
        // Nothing is known yet, so setting the own subnet emits nothing.
        self.set.set_own(self.own_key);
        true
    }

    /// Take a (re-)listing: emit the difference, tell the keeper when its key is missing.
    /// False when nobody listens any more.
    async fn take_listing(&mut self, snap: Snapshot, first: bool) -> bool {
        let diff = self.set.reset(&snap.entries);
        if first {
            info!(
                revision = snap.revision.0,
                peers = self.set.len(),
                invalid = self.set.invalid_count(),
                "listed leases"
            );
            log_peer_events(&diff, Batch::FirstListing);
            (self.report)(WatchReport::Listed(self.counts()));
        } else {
            info!(
                revision = snap.revision.0,
                changes = diff.len(),
                "re-listed leases"
            );
            log_peer_events(&diff, Batch::Change);
            (self.report)(WatchReport::Relisted {
                counts: self.counts(),
                changes: diff.len(),
            });
        }
        if let Some(name) = self.own_key.map(|k| k.to_string()) {
            if !snap.entries.iter().any(|e| e.name == name) {
                let _ = self
                    .settings
                    .own_notices
                    .send(OwnKeyNotice::Deleted {
                        name,
                        revision: snap.revision.0,
                    })
                    .await;
            }
        }
        // The listing is not needed any more; holding it while watching would keep every
        // lease value twice.
        drop(snap);
        // The first listing is always sent, even empty.
        (diff.is_empty() && !first) || self.settings.events.send(diff).await.is_ok()
    }

    /// Follow one watch stream until it breaks or the watch stops.
    async fn follow(&mut self, mut stream: crate::store::WatchStream) -> StreamEnd {
        loop {
            tokio::select! {
                _ = self.shutdown.changed() => {
                    if *self.shutdown.borrow() { return StreamEnd::Stop; }
                }
                changed = self.settings.own.changed() => {
                    if changed.is_err() { return StreamEnd::Stop; }
                    self.own_key = *self.settings.own.borrow();
                    let diff = self.set.set_own(self.own_key);
                    if !self.emit_change(diff).await { return StreamEnd::Stop; }
                }
                item = stream.next() => match item {
                    Some(Ok(batch)) => {
                        self.tell_keeper(&batch).await;
                        let diff = self.set.apply(&batch);
                        if !self.emit_change(diff).await { return StreamEnd::Stop; }
                    }
                    Some(Err(e)) => {
                        if e.needs_relist() {
                            info!(error = %e, "lease watch interrupted; re-listing");
                        } else {
                            warn!(error = %e, "lease watch failed; re-listing");
                        }
                        return StreamEnd::Relist;
                    }
                    None => {
                        debug!("lease watch stream ended; re-listing");
                        return StreamEnd::Relist;
                    }
                },
            }
        }
    }

    /// Log, report and send the events of one change. False when nobody listens any more.
    async fn emit_change(&mut self, diff: Vec<PeerEvent>) -> bool {
        log_peer_events(&diff, Batch::Change);
        (self.report)(WatchReport::Changed(self.counts()));
        diff.is_empty() || self.settings.events.send(diff).await.is_ok()
    }

    /// Pass on what a batch did to this node's own key.
    async fn tell_keeper(&self, batch: &[WatchEvent]) {
        let Some(name) = self.own_key.map(|k| k.to_string()) else {
            return;
        };
        for ev in batch {
            let notice = match ev {
                WatchEvent::Put(e) if e.name == name => Some(OwnKeyNotice::Put {
                    name: e.name.clone(),
                    mod_revision: e.mod_revision.0,
                }),
                WatchEvent::Delete { name: n, revision } if *n == name => {
                    Some(OwnKeyNotice::Deleted {
                        name: n.clone(),
                        revision: revision.0,
                    })
                }
                _ => None,
            };
            if let Some(n) = notice {
                let _ = self.settings.own_notices.send(n).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Revision;

    fn rules() -> LeaseRules {
        LeaseRules {
            v4: Some(("10.244.0.0/16".parse().unwrap(), 24)),
            v6: None,
            vni: 1,
            own_public_ip: Some("192.0.2.1".parse().unwrap()),
            own_public_ip_v6: None,
        }
    }

    fn entry(key: &str, ip: &str, rev: i64) -> StoredEntry {
        StoredEntry {
            name: key.into(),
            value: format!(
                r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:00:{rev:02x}"}}}}"#
            )
            .into_bytes(),
            create_revision: Revision(rev),
            mod_revision: Revision(rev),
            ttl_lease: None,
        }
    }

    fn subnets(events: &[PeerEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                PeerEvent::Added(p) => format!("+{}", p.id()),
                PeerEvent::Removed(p) => format!("-{}", p.id()),
                PeerEvent::Updated { new, .. } => format!("~{}", new.id()),
            })
            .collect()
    }

    #[test]
    fn a_second_lease_with_a_taken_public_ip_is_refused_until_the_first_goes() {
        let mut set = PeerSet::new(rules(), None);
        let a = entry("10.244.1.0-24", "192.0.2.10", 5);
        let b = entry("10.244.2.0-24", "192.0.2.10", 7);
        let c = entry("10.244.3.0-24", "192.0.2.11", 8);
        let ev = set.reset(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(subnets(&ev), ["+10.244.1.0/24", "+10.244.3.0/24"]);
        assert_eq!(set.invalid_count(), 1, "the refused lease is counted");
        // The holder leaves: the other claimant is used from now on.
        let ev = set.apply(&[WatchEvent::Delete {
            name: a.name.clone(),
            revision: Revision(9),
        }]);
        assert_eq!(subnets(&ev), ["-10.244.1.0/24", "+10.244.2.0/24"]);
        assert_eq!(set.invalid_count(), 0);
        // A newcomer copying a live node's IP changes nothing.
        let d = entry("10.244.4.0-24", "192.0.2.11", 10);
        assert!(set.apply(&[WatchEvent::Put(d)]).is_empty());
        assert_eq!(set.invalid_count(), 1);
    }

    fn wireguard_entry(key: &str, ip: &str, public_key: &str, rev: i64) -> StoredEntry {
        StoredEntry {
            name: key.into(),
            value: format!(
                r#"{{"PublicIP":"{ip}","BackendType":"wireguard","BackendData":{{"PublicKey":"{public_key}","Port":51820}}}}"#
            )
            .into_bytes(),
            create_revision: Revision(rev),
            mod_revision: Revision(rev),
            ttl_lease: None,
        }
    }

    #[test]
    fn a_copied_wireguard_key_stays_with_the_oldest_lease_whatever_its_subnet() {
        const KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
        let mut set = PeerSet::new(rules(), None);
        let real = wireguard_entry("10.244.5.0-24", "192.0.2.10", KEY, 5);
        // Younger, and in a subnet that sorts first.
        let copy = wireguard_entry("10.244.2.0-24", "192.0.2.66", KEY, 7);
        let ev = set.reset(&[real.clone(), copy.clone()]);
        assert_eq!(subnets(&ev), ["+10.244.5.0/24"]);
        assert_eq!(set.invalid_count(), 1, "the copy is counted");
        // The holder leaves: the other claimant is used from now on.
        let ev = set.apply(&[WatchEvent::Delete {
            name: real.name.clone(),
            revision: Revision(9),
        }]);
        assert_eq!(subnets(&ev), ["+10.244.2.0/24", "-10.244.5.0/24"]);
        assert_eq!(set.invalid_count(), 0);
    }

    #[test]
    fn leases_claiming_this_node_or_the_cluster_network_as_public_ip_are_refused() {
        let mut set = PeerSet::new(rules(), None);
        let ev = set.reset(&[
            entry("10.244.1.0-24", "192.0.2.1", 3),
            entry("10.244.2.0-24", "10.244.9.9", 4),
            entry("10.244.3.0-24", "192.0.2.30", 5),
        ]);
        assert_eq!(subnets(&ev), ["+10.244.3.0/24"]);
        assert_eq!(set.invalid_count(), 2);
    }

    #[test]
    fn a_second_key_for_a_held_subnet_is_refused_and_counted() {
        let mut set = PeerSet::new(rules(), None);
        let ev = set.reset(&[
            entry("10.244.1.0-24", "192.0.2.10", 3),
            entry("10.244.1.0-24&fc00::-64", "192.0.2.66", 9),
        ]);
        assert_eq!(ev.len(), 1);
        match &ev[0] {
            PeerEvent::Added(p) => assert_eq!(p.public_ip.to_string(), "192.0.2.10"),
            other => panic!("{other:?}"),
        }
        assert_eq!(set.invalid_count(), 1);
    }

    fn dual_rules() -> LeaseRules {
        LeaseRules {
            v6: Some(("fc00::/48".parse().unwrap(), 64)),
            own_public_ip_v6: Some("2001:db8::1".parse().unwrap()),
            ..rules()
        }
    }

    fn dual_entry(key: &str, ip: &str, ip6: &str, rev: i64) -> StoredEntry {
        StoredEntry {
            name: key.into(),
            value: format!(
                r#"{{"PublicIP":"{ip}","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:00:{rev:02x}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"0e:00:00:00:06:{rev:02x}"}}}}"#
            )
            .into_bytes(),
            create_revision: Revision(rev),
            mod_revision: Revision(rev),
            ttl_lease: None,
        }
    }

    #[test]
    fn ipv6_claims_held_by_an_older_lease_or_this_node_are_refused() {
        let mut set = PeerSet::new(dual_rules(), None);
        set.set_own(Some("10.244.1.0-24&fc00:0:0:1::-64".parse().unwrap()));
        let ev = set.reset(&[
            dual_entry(
                "10.244.2.0-24&fc00:0:0:2::-64",
                "192.0.2.2",
                "2001:db8::2",
                3,
            ),
            // The same IPv6 subnet under another IPv4 subnet, newer: refused.
            dual_entry(
                "10.244.3.0-24&fc00:0:0:2::-64",
                "192.0.2.3",
                "2001:db8::3",
                4,
            ),
            // The same PublicIPv6 as an older lease: refused.
            dual_entry(
                "10.244.4.0-24&fc00:0:0:4::-64",
                "192.0.2.4",
                "2001:db8::2",
                5,
            ),
            // This node's own IPv6 subnet: refused.
            dual_entry(
                "10.244.5.0-24&fc00:0:0:1::-64",
                "192.0.2.5",
                "2001:db8::5",
                6,
            ),
            // This node's own PublicIPv6: invalid.
            dual_entry(
                "10.244.6.0-24&fc00:0:0:6::-64",
                "192.0.2.6",
                "2001:db8::1",
                7,
            ),
            dual_entry(
                "10.244.7.0-24&fc00:0:0:7::-64",
                "192.0.2.7",
                "2001:db8::7",
                8,
            ),
        ]);
        assert_eq!(subnets(&ev), ["+10.244.2.0/24", "+10.244.7.0/24"]);
        assert_eq!(set.invalid_count(), 4);
        // The holder of the IPv6 subnet and address leaves: the next claimant in line is used.
        let ev = set.apply(&[WatchEvent::Delete {
            name: "10.244.2.0-24&fc00:0:0:2::-64".into(),
            revision: Revision(9),
        }]);
        assert_eq!(
            subnets(&ev),
            ["-10.244.2.0/24", "+10.244.3.0/24", "+10.244.4.0/24"]
        );
    }

    #[test]
    fn ipv6_only_peers_are_keyed_by_their_ipv6_subnet() {
        let rules = LeaseRules {
            v4: None,
            ..dual_rules()
        };
        let mut set = PeerSet::new(rules, None);
        set.set_own(Some("0.0.0.0-0&fc00:0:0:1::-64".parse().unwrap()));
        let v = |ip6: &str| {
            format!(
                r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"0e:00:00:00:06:01"}}}}"#
            )
        };
        let e = |key: &str, ip6: &str, rev: i64| StoredEntry {
            name: key.into(),
            value: v(ip6).into_bytes(),
            create_revision: Revision(rev),
            mod_revision: Revision(rev),
            ttl_lease: None,
        };
        let ev = set.reset(&[
            e("0.0.0.0-0&fc00:0:0:1::-64", "2001:db8::1", 2),
            e("0.0.0.0-0&fc00:0:0:2::-64", "2001:db8::2", 3),
            e("0.0.0.0-0&fc00:0:0:3::-64", "2001:db8::3", 4),
        ]);
        assert_eq!(subnets(&ev), ["+fc00:0:0:2::/64", "+fc00:0:0:3::/64"]);
        assert_eq!(
            set.invalid_count(),
            0,
            "the own lease is neither a peer nor invalid"
        );
    }

    fn named_entry(n: u8, node: &str, ip: &str) -> Vec<u8> {
        format!(
            r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:00:{n:02x}"}},"NodeName":"{node}"}}"#
        )
        .into_bytes()
    }

    #[tokio::test(start_paused = true)]
    async fn peers_are_named_once_per_change_and_the_first_listing_is_summarised() {
        use crate::store::MemoryStore;
        let logs = crate::logging::Captured::start();
        let store = Arc::new(MemoryStore::new());
        for n in 2..=60u8 {
            let value = named_entry(n, &format!("node-{n}"), &format!("192.0.2.{n}"));
            store
                .create(&format!("10.244.{n}.0-24"), &value, None)
                .await
                .unwrap();
        }
        let (own_tx, own_rx) = watch::channel(Some("10.244.1.0-24".parse().unwrap()));
        let (events_tx, mut events_rx) = mpsc::channel(64);
        let (notice_tx, _notice_rx) = mpsc::channel(64);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_peer_watch(
            WatchSettings {
                store: store.clone(),
                rules: rules(),
                initial: None,
                me: None,
                own: own_rx,
                events: events_tx,
                own_notices: notice_tx,
            },
            |_| {},
            stop_rx,
        ));
        let first = events_rx.recv().await.unwrap();
        assert_eq!(first.len(), 59);
        // An outage ends the watch; the re-list finds nothing new.
        store.set_down(true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        store.set_down(false);
        tokio::time::sleep(Duration::from_secs(10)).await;
        // One node changes its public IP, one leaves, one joins.
        let changed = store.get("10.244.2.0-24").await.unwrap().unwrap();
        store
            .replace(
                "10.244.2.0-24",
                &named_entry(2, "node-2", "192.0.2.200"),
                changed.mod_revision,
                None,
            )
            .await
            .unwrap();
        store.delete("10.244.3.0-24", None).await.unwrap();
        store
            .create(
                "10.244.99.0-24",
                &named_entry(99, "node-99", "192.0.2.99"),
                None,
            )
            .await
            .unwrap();
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(5), events_rx.recv())
                .await
                .expect("a peer event")
                .unwrap();
        }
        stop_tx.send_replace(true);
        drop(own_tx);
        task.await.unwrap();
        let text = logs.text();
        let info: Vec<&str> = text.lines().filter(|l| l.contains(" INFO ")).collect();
        assert!(
            info.iter()
                .any(|l| l.contains("listed leases") && l.contains("peers=59")),
            "{text}"
        );
        assert!(
            info.iter()
                .any(|l| l.contains("re-listed leases") && l.contains("changes=0")),
            "{text}"
        );
        let peer_lines: Vec<&&str> = info.iter().filter(|l| l.contains("peer ")).collect();
        assert_eq!(
            peer_lines.len(),
            3,
            "one line per change, none per listing:\n{text}"
        );
        assert!(info.iter().any(|l| l.contains(
            "peer changed: public IP from 192.0.2.2 to 192.0.2.200 node=node-2 subnet=10.244.2.0/24 public_ip=192.0.2.200"
        )), "{text}");
        assert!(
            info.iter()
                .any(|l| l
                    .contains("peer left node=node-3 subnet=10.244.3.0/24 public_ip=192.0.2.3")),
            "{text}"
        );
        assert!(
            info.iter().any(|l| l
                .contains("peer joined node=node-99 subnet=10.244.99.0/24 public_ip=192.0.2.99")),
            "{text}"
        );
        // Every peer of the first listing is at debug only.
        assert_eq!(text.matches("peer known").count(), 59);
        assert!(
            !text.contains("10.244.2.0-24"),
            "subnets are spelled as CIDRs:\n{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_reported_as_one_relisting_and_changes_as_changes() {
        use crate::store::MemoryStore;
        use std::sync::Mutex;
        let store = Arc::new(MemoryStore::new());
        let (_own_tx, own_rx) = watch::channel(Some("10.244.1.0-24".parse().unwrap()));
        let (events_tx, mut events_rx) = mpsc::channel(64);
        let (notice_tx, _notice_rx) = mpsc::channel(64);
        let (stop_tx, stop_rx) = watch::channel(false);
        let reports = Arc::new(Mutex::new(Vec::new()));
        let seen = reports.clone();
        let task = tokio::spawn(run_peer_watch(
            WatchSettings {
                store: store.clone(),
                rules: rules(),
                initial: None,
                me: None,
                own: own_rx,
                events: events_tx,
                own_notices: notice_tx,
            },
            move |r| seen.lock().unwrap().push(r),
            stop_rx,
        ));
        let join = |n: u8| {
            let store = store.clone();
            async move {
                let value = named_entry(n, &format!("node-{n}"), &format!("192.0.2.{n}"));
                store
                    .create(&format!("10.244.{n}.0-24"), &value, None)
                    .await
                    .unwrap();
            }
        };
        events_rx.recv().await.unwrap();
        for n in 2..=6 {
            join(n).await;
            events_rx.recv().await.unwrap();
        }
        store.set_down(true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        store.set_down(false);
        tokio::time::sleep(Duration::from_secs(10)).await;
        for n in 7..=12 {
            join(n).await;
            events_rx.recv().await.unwrap();
        }
        stop_tx.send_replace(true);
        task.await.unwrap();
        let reports = reports.lock().unwrap();
        let count = |f: fn(&WatchReport) -> bool| reports.iter().filter(|r| f(r)).count();
        assert_eq!(
            count(|r| matches!(r, WatchReport::Listed(_))),
            1,
            "{reports:?}"
        );
        assert_eq!(
            count(|r| matches!(r, WatchReport::Relisted { .. })),
            1,
            "{reports:?}"
        );
        assert_eq!(
            count(|r| matches!(r, WatchReport::Changed(_))),
            11,
            "{reports:?}"
        );
        assert_eq!(
            reports.last(),
            Some(&WatchReport::Changed(PeerCounts {
                peers: 11,
                invalid: 0
            }))
        );
    }

    #[test]
    fn a_big_batch_of_changes_is_capped_at_info() {
        let logs = crate::logging::Captured::start();
        let mut set = PeerSet::new(rules(), None);
        let entries: Vec<StoredEntry> = (2..=40)
            .map(|n| {
                entry(
                    &format!("10.244.{n}.0-24"),
                    &format!("192.0.2.{n}"),
                    i64::from(n),
                )
            })
            .collect();
        let events = set.reset(&entries);
        log_peer_events(&events, Batch::Change);
        let text = logs.text();
        let info = |needle: &str| {
            text.lines()
                .filter(|l| l.contains(" INFO ") && l.contains(needle))
                .count()
        };
        assert_eq!(info("peer joined"), PEER_LINES_PER_BATCH, "{text}");
        assert_eq!(info("19 more peer changes in this batch"), 1, "{text}");
        assert_eq!(text.matches("peer joined").count(), 39, "the rest at debug");
    }
}
