//! The lease keeper: policy on top of a [`LeaseStore`]. It acquires this node's subnet,
//! renews it before it expires, notices when it vanished or was taken, and re-acquires —
//! never sharing a subnet silently and never giving up.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::backoff::Backoff;
use crate::config::pool::SubnetPool;
use crate::config::NetConfig;
use crate::lease::pick::{
    create_guard, decide, is_mine, Decision, Identity, MatchedBy, Occupancy, Previous,
};
use crate::lease::{LeaseAttrs, SubnetKey};
use crate::store::{CreateOutcome, LeaseStore, ReplaceOutcome, Snapshot, StoreError, StoredEntry};
use crate::supervisor::Progress;

/// Lost races in a row after which the local view is refreshed with a new listing.
const RACES_BEFORE_RELIST: usize = 4;
/// Attempts in all before giving up this round (the run loop retries after a backoff).
const CLAIM_ATTEMPTS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("subnet pool exhausted: all {pool_size} {pool} are leased")]
    PoolExhausted { pool: SubnetPool, pool_size: u128 },
    #[error("lost {0} races for a free subnet in a row; will re-list and retry")]
    TooManyRaces(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Keeper settings.
#[derive(Clone, Debug)]
pub struct KeeperSettings {
    pub identity: Identity,
    /// The value this node publishes (PublicIP, backend, VTEP MAC, NodeName).
    pub attrs: LeaseAttrs,
    /// TTL of a new or renewed lease.
    pub ttl: Duration,
    /// The subnets this node had before (from subnet.env), tried second.
    pub previous: Previous,
}

/// The lease this node holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLease {
    /// The subnets held (one per enabled family), as the key names them.
    pub key: SubnetKey,
    pub entry: StoredEntry,
    /// When it expires; `None` for a reservation (no TTL).
    pub expires_at: Option<Instant>,
}

impl HeldLease {
    pub fn is_reservation(&self) -> bool {
        self.entry.ttl_lease.is_none()
    }
}

/// What the rest of the agent sees of the keeper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseStatus {
    Acquiring,
    Held(HeldLease),
    /// Could not acquire (pool exhausted, etcd down); retrying.
    Failed(String),
}

impl LeaseStatus {
    pub fn held(&self) -> Option<&HeldLease> {
        match self {
            LeaseStatus::Held(h) => Some(h),
            _ => None,
        }
    }
}

/// A change to this node's own key, seen by the peer watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnKeyNotice {
    Put { name: String, mod_revision: i64 },
    Deleted { name: String, revision: i64 },
}

impl std::fmt::Display for OwnKeyNotice {
    /// What the watch saw, for logs: `lease key 10.5.7.0-24 deleted at revision 42`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OwnKeyNotice::Put { name, mod_revision } => {
                write!(f, "lease key {name} rewritten at revision {mod_revision}")
            }
            OwnKeyNotice::Deleted { name, revision } => {
                write!(f, "lease key {name} deleted at revision {revision}")
            }
        }
    }
}

/// The lease keeper.
#[derive(Debug)]
pub struct LeaseKeeper<S> {
    store: Arc<S>,
    cfg: NetConfig,
    settings: KeeperSettings,
    rng: fastrand::Rng,
    /// Told before every acquisition and renewal attempt, with when the next is due.
    progress: Option<Progress>,
}

impl<S: LeaseStore> LeaseKeeper<S> {
    pub fn new(store: Arc<S>, cfg: NetConfig, settings: KeeperSettings) -> Self {
        LeaseKeeper {
            store,
            cfg,
            settings,
            rng: fastrand::Rng::new(),
            progress: None,
        }
    }

    /// The same keeper, telling `progress` when its next attempt (to acquire or renew) is
    /// due: the planned time plus [`LeaseKeeper::grace`].
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    /// How late an attempt may be before health calls the keeper stuck: half the lease TTL
    /// (its renewal period), at least one minute and at most five.
    pub fn grace(&self) -> Duration {
        (self.settings.ttl / 2).clamp(Duration::from_secs(60), Duration::from_secs(300))
    }

    /// The next attempt is planned for `at` (`None`: nothing is planned, a reservation).
    fn next_attempt(&self, at: Option<Instant>) {
        if let Some(p) = &self.progress {
            match at {
                Some(at) => p.expect_by(at + self.grace()),
                None => p.idle(),
            }
        }
    }

    /// Acquire a subnet. `snapshot` saves a request when the caller already listed.
    pub async fn acquire(&mut self, snapshot: Option<Snapshot>) -> Result<HeldLease, KeeperError> {
        let span = info_span!("acquire_lease", node = %self.settings.identity.node_name);
        async {
            let snap = match snapshot {
                Some(s) => s,
                None => self.store.snapshot(false).await?,
            };
            self.acquire_from(snap).await
        }
        .instrument(span)
        .await
    }

    async fn acquire_from(&mut self, snap: Snapshot) -> Result<HeldLease, KeeperError> {
        let mut entries = snap.entries;
        let mut occupancy =
            Occupancy::from_entries(&self.cfg, entries.iter().map(|e| e.name.as_str()));
        let value = self.settings.attrs.encode();
        let mut lost_in_a_row = 0;
        for attempt in 0..CLAIM_ATTEMPTS {
            if lost_in_a_row == RACES_BEFORE_RELIST {
                // Many nodes are claiming at once: our view is stale; refresh it.
                lost_in_a_row = 0;
                entries = self.store.snapshot(false).await?.entries;
                occupancy =
                    Occupancy::from_entries(&self.cfg, entries.iter().map(|e| e.name.as_str()));
            }
            let rng = &mut self.rng;
            let decision = decide(
                &self.cfg,
                &self.settings.identity,
                &entries,
                &occupancy,
                self.settings.previous,
                &mut |n| rng.u128(0..n),
            );
            match decision {
                Decision::Exhausted { pool, pool_size } => {
                    return Err(KeeperError::PoolExhausted { pool, pool_size })
                }
                Decision::Adopt {
                    entry,
                    key,
                    matched_by,
                } => match self.adopt(entry.clone(), key, matched_by, &value).await? {
                    Some(held) => return Ok(held),
                    None => {
                        // It changed under us: forget it and decide again.
                        entries.retain(|e| e.name != entry.name);
                        occupancy.mark_key(&self.cfg, &key);
                    }
                },
                Decision::Claim {
                    key,
                    previous,
                    replaces,
                } => {
                    let name = key.to_string();
                    let guard = match &replaces {
                        // The old key holds the IPv4 subnet being kept; only the new key
                        // itself can conflict.
                        Some(old) if old.name == create_guard(&key) => name.clone(),
                        _ => create_guard(&key),
                    };
                    match self
                        .store
                        .create_unless_prefixed(&name, &guard, &value, Some(self.settings.ttl))
                        .await?
                    {
                        CreateOutcome::Created(entry) => {
                            info!(
                                subnet = %key.cidrs(),
                                previous,
                                attempt,
                                ttl_secs = self.settings.ttl.as_secs(),
                                "leased subnet"
                            );
                            if let Some(old) = replaces {
                                self.retire(old, &key).await;
                            }
                            return Ok(self.held(key, entry, Some(self.settings.ttl)));
                        }
                        CreateOutcome::Exists(current) => {
                            debug!(subnet = %key.cidrs(), "lost the race for a subnet; picking again");
                            lost_in_a_row += 1;
                            occupancy.mark_key(&self.cfg, &key);
                            // If the winner is us (a concurrent incarnation), the next
                            // decision adopts it.
                            if let Some(cur) = current {
                                entries.push(cur);
                            }
                        }
                    }
                }
            }
        }
        Err(KeeperError::TooManyRaces(CLAIM_ATTEMPTS))
    }

    /// Delete this node's previous key once a new one (for the same node, with a family
    /// added or changed) is held; best effort: left behind, it expires with its TTL.
    async fn retire(&self, old: StoredEntry, new: &SubnetKey) {
        match self.store.delete(&old.name, Some(old.mod_revision)).await {
            Ok(true) => {
                info!(old_key = %old.name, new_key = %new, "replaced this node's previous lease")
            }
            Ok(false) => debug!(old_key = %old.name, "previous lease already changed or gone"),
            Err(e) => {
                warn!(old_key = %old.name, error = %e, "could not delete the previous lease; it will expire")
            }
        }
    }

    /// Take over an existing entry that is ours. `None` when it changed under us.
    async fn adopt(
        &mut self,
        entry: StoredEntry,
        subnet: SubnetKey,
        matched_by: MatchedBy,
        value: &[u8],
    ) -> Result<Option<HeldLease>, KeeperError> {
        let reservation = entry.ttl_lease.is_none();
        let current = LeaseAttrs::decode(&entry.value).ok();
        if current.as_ref() == Some(&self.settings.attrs) {
            let remaining = match entry.ttl_lease {
                None => None,
                Some(l) => match self.store.time_to_live(l).await? {
                    Some(left) => Some(left),
                    None => return Ok(None), // expired just now
                },
            };
            info!(subnet = %subnet.cidrs(), matched_by = %matched_by, reservation, "reusing this node's existing lease");
            return Ok(Some(self.held(subnet, entry, remaining)));
        }
        // Ours, but the published attributes differ (new public IP or VTEP MAC, or a
        // flannel lease gaining a NodeName): rewrite it with a compare-and-swap.
        let ttl = (!reservation).then_some(self.settings.ttl);
        match self
            .store
            .replace(&entry.name, value, entry.mod_revision, ttl)
            .await?
        {
            ReplaceOutcome::Replaced(new) => {
                if let Some(old) = entry.ttl_lease {
                    if let Err(e) = self.store.revoke(old).await {
                        debug!(error = %e, "could not revoke the replaced TTL lease (it will expire)");
                    }
                }
                info!(subnet = %subnet.cidrs(), matched_by = %matched_by, reservation, "reusing this node's lease with updated attributes");
                Ok(Some(self.held(subnet, new, ttl)))
            }
            ReplaceOutcome::Conflict(_) => Ok(None),
        }
    }

    fn held(&self, key: SubnetKey, entry: StoredEntry, ttl: Option<Duration>) -> HeldLease {
        let expires_at = match entry.ttl_lease {
            None => None,
            Some(_) => ttl.map(|t| Instant::now() + t),
        };
        HeldLease {
            key,
            entry,
            expires_at,
        }
    }

    /// Hold an entry someone else wrote for us, with its expiry read from the store. A TTL
    /// lease that already expired counts as expiring now, so the next renewal finds out.
    async fn hold_existing(
        &self,
        subnet: SubnetKey,
        entry: StoredEntry,
    ) -> Result<HeldLease, KeeperError> {
        let remaining = match entry.ttl_lease {
            Some(l) => Some(self.store.time_to_live(l).await?.unwrap_or(Duration::ZERO)),
            None => None,
        };
        Ok(self.held(subnet, entry, remaining))
    }

    /// When the lease should be renewed: once half the TTL has passed, measured as
    /// "remaining ≤ TTL/2". `None` for a reservation.
    pub fn renew_at(&self, held: &HeldLease) -> Option<Instant> {
        held.expires_at.map(|exp| exp - self.settings.ttl / 2)
    }

    /// Renew with a compare-and-swap on the entry's mod_revision. `Ok(None)` means the lease
    /// is no longer ours (vanished or taken) and must be re-acquired.
    pub async fn renew(&mut self, held: &HeldLease) -> Result<Option<HeldLease>, KeeperError> {
        let value = self.settings.attrs.encode();
        match self
            .store
            .replace(
                &held.entry.name,
                &value,
                held.entry.mod_revision,
                Some(self.settings.ttl),
            )
            .await?
        {
            ReplaceOutcome::Replaced(new) => {
                if let Some(old) = held.entry.ttl_lease {
                    if let Err(e) = self.store.revoke(old).await {
                        debug!(error = %e, "could not revoke the old TTL lease (it will expire)");
                    }
                }
                debug!(subnet = %held.key.cidrs(), "renewed lease");
                Ok(Some(self.held(held.key, new, Some(self.settings.ttl))))
            }
            ReplaceOutcome::Conflict(current) => match current {
                // Still ours by identity (rewritten by an operator, say): adopt it.
                Some(cur) if self.still_mine(&cur) => {
                    warn!(subnet = %held.key.cidrs(), "own lease was rewritten by someone else; adopting it");
                    Ok(Some(self.hold_existing(held.key, cur).await?))
                }
                _ => Ok(None),
            },
        }
    }

    fn still_mine(&self, entry: &StoredEntry) -> bool {
        LeaseAttrs::decode(&entry.value)
            .ok()
            .and_then(|a| is_mine(&a, &self.settings.identity))
            .is_some()
    }

    /// Check the held lease against the store; `Ok(None)` if it is no longer ours.
    pub async fn verify(&mut self, held: &HeldLease) -> Result<Option<HeldLease>, KeeperError> {
        match self.store.get(&held.entry.name).await? {
            None => Ok(None),
            Some(cur) if cur.mod_revision == held.entry.mod_revision => Ok(Some(held.clone())),
            Some(cur) if self.still_mine(&cur) => {
                Ok(Some(self.hold_existing(held.key, cur).await?))
            }
            Some(_) => Ok(None),
        }
    }

    /// Keep a lease for as long as `shutdown` is false: acquire (retrying with backoff on
    /// exhaustion or etcd errors), renew, re-acquire when lost. Publishes every change on
    /// `status`. Returns only on shutdown.
    pub async fn run(
        mut self,
        initial: Option<Snapshot>,
        status: watch::Sender<LeaseStatus>,
        mut own_events: mpsc::Receiver<OwnKeyNotice>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut snapshot = initial;
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut notices_open = true;
        'outer: loop {
            // Acquire.
            let mut held = loop {
                if *shutdown.borrow() {
                    return;
                }
                self.next_attempt(Some(Instant::now()));
                match self.acquire(snapshot.take()).await {
                    Ok(h) => {
                        backoff.reset();
                        break h;
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        match &e {
                            KeeperError::PoolExhausted { .. } => {
                                error!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot lease a subnet")
                            }
                            _ => {
                                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot lease a subnet")
                            }
                        }
                        status.send_replace(LeaseStatus::Failed(e.to_string()));
                        self.next_attempt(Some(Instant::now() + delay));
                        if sleep_or_shutdown(delay, &mut shutdown).await {
                            return;
                        }
                    }
                }
            };
            self.settings.previous = Previous {
                v4: held.key.v4_subnet(),
                v6: held.key.v6,
            };
            status.send_replace(LeaseStatus::Held(held.clone()));

            // Hold: renew on time, verify on notices.
            let mut renew_backoff =
                Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
            let mut next_renew = self.renew_at(&held);
            loop {
                self.next_attempt(next_renew);
                let sleep_until =
                    next_renew.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    _ = shutdown.changed() => {
                        if *shutdown.borrow() { return; }
                    }
                    notice = own_events.recv(), if notices_open => {
                        let Some(notice) = notice else {
                            notices_open = false;
                            continue;
                        };
                        if !self.notice_matters(&held, &notice) { continue; }
                        match self.verify(&held).await {
                            Ok(Some(h)) => {
                                if h != held {
                                    held = h;
                                    next_renew = self.renew_at(&held);
                                    status.send_replace(LeaseStatus::Held(held.clone()));
                                }
                            }
                            Ok(None) => {
                                error!(subnet = %held.key.cidrs(), seen = %notice, "own lease vanished or was taken by another node; re-acquiring");
                                status.send_replace(LeaseStatus::Acquiring);
                                continue 'outer;
                            }
                            Err(e) => warn!(error = %e, "could not verify own lease; will check again"),
                        }
                    }
                    _ = tokio::time::sleep_until(sleep_until) => {
                        if next_renew.is_none() { continue; }
                        match self.renew(&held).await {
                            Ok(Some(h)) => {
                                renew_backoff.reset();
                                held = h;
                                next_renew = self.renew_at(&held);
                                status.send_replace(LeaseStatus::Held(held.clone()));
                            }
                            Ok(None) => {
                                error!(subnet = %held.key.cidrs(), "own lease vanished or was taken by another node at renewal; re-acquiring");
                                status.send_replace(LeaseStatus::Acquiring);
                                continue 'outer;
                            }
                            Err(e) => {
                                let delay = renew_backoff.next_delay();
                                warn!(subnet = %held.key.cidrs(), error = %e, retry_in_ms = delay.as_millis() as u64, "lease renewal failed");
                                next_renew = Some(Instant::now() + delay);
                            }
                        }
                    }
                }
            }
        }
    }

    fn notice_matters(&self, held: &HeldLease, notice: &OwnKeyNotice) -> bool {
        match notice {
            OwnKeyNotice::Put { name, mod_revision } => {
                *name == held.entry.name && *mod_revision > held.entry.mod_revision.0
            }
            OwnKeyNotice::Deleted { name, revision } => {
                *name == held.entry.name && *revision > held.entry.mod_revision.0
            }
        }
    }
}

/// Sleep, returning early (true) when shutdown is signalled.
pub(crate) async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        r = shutdown.changed() => r.is_err() || *shutdown.borrow(),
    }
}
