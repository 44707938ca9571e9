//! An in-memory [`LeaseStore`] with etcd's semantics (revisions, TTL leases, compaction,
//! watches from a revision), for fast tests of policy code under paused tokio time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::*;

#[derive(Debug)]
struct Inner {
    revision: i64,
    compacted: i64,
    config: Option<Vec<u8>>,
    entries: BTreeMap<String, StoredEntry>,
    leases: BTreeMap<i64, Instant>,
    next_lease: i64,
    /// Every change with its revision, for watches from the past.
    history: Vec<(i64, WatchEvent)>,
    down: bool,
}

/// In-memory store; clones share state.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<(i64, WatchEvent)>,
    requests: Arc<AtomicU64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore {
            inner: Arc::new(Mutex::new(Inner {
                revision: 1,
                compacted: 0,
                config: None,
                entries: BTreeMap::new(),
                leases: BTreeMap::new(),
                next_lease: 1000,
                history: Vec::new(),
                down: false,
            })),
            events: broadcast::channel(65536).0,
            requests: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Drop history up to `revision`, as `etcdctl compact` does.
    pub fn compact(&self, revision: Revision) {
        let mut inner = self.inner.lock().unwrap();
        inner.compacted = revision.0;
        inner.history.retain(|(rev, _)| *rev > revision.0);
    }

    /// Current revision.
    pub fn revision(&self) -> Revision {
        Revision(self.inner.lock().unwrap().revision)
    }

    /// Simulate an outage: every request fails and watch streams end until `set_down(false)`.
    pub fn set_down(&self, down: bool) {
        self.inner.lock().unwrap().down = down;
        if down {
            // A sentinel breaks open watch streams.
            let _ = self.events.send((
                -1,
                WatchEvent::Delete {
                    name: String::new(),
                    revision: Revision(-1),
                },
            ));
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner.lock().unwrap();
        if inner.down {
            return Err(StoreError::Etcd {
                op: "request",
                endpoint: "memory".into(),
                cause: super::EtcdCause::Refused,
            });
        }
        self.expire(&mut inner);
        Ok(inner)
    }

    /// Lazily delete keys whose TTL lease ran out (checked on every request).
    fn expire(&self, inner: &mut Inner) {
        let now = Instant::now();
        let expired: Vec<i64> = inner
            .leases
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.drop_lease(inner, id);
        }
    }

    fn drop_lease(&self, inner: &mut Inner, id: i64) {
        inner.leases.remove(&id);
        let doomed: Vec<String> = inner
            .entries
            .values()
            .filter(|e| e.ttl_lease == Some(TtlLeaseId(id)))
            .map(|e| e.name.clone())
            .collect();
        for name in doomed {
            self.remove(inner, &name);
        }
    }

    fn remove(&self, inner: &mut Inner, name: &str) {
        if inner.entries.remove(name).is_some() {
            inner.revision += 1;
            let ev = WatchEvent::Delete {
                name: name.to_string(),
                revision: Revision(inner.revision),
            };
            self.record(inner, ev);
        }
    }

    fn record(&self, inner: &mut Inner, ev: WatchEvent) {
        inner.history.push((inner.revision, ev.clone()));
        let _ = self.events.send((inner.revision, ev));
    }

    fn grant(inner: &mut Inner, ttl: Option<Duration>) -> Option<TtlLeaseId> {
        ttl.map(|ttl| {
            inner.next_lease += 1;
            let id = inner.next_lease;
            inner.leases.insert(id, Instant::now() + ttl);
            TtlLeaseId(id)
        })
    }

    fn put(
        &self,
        inner: &mut Inner,
        name: &str,
        value: &[u8],
        lease: Option<TtlLeaseId>,
    ) -> StoredEntry {
        inner.revision += 1;
        let rev = Revision(inner.revision);
        let create_revision = inner
            .entries
            .get(name)
            .map(|e| e.create_revision)
            .unwrap_or(rev);
        let entry = StoredEntry {
            name: name.to_string(),
            value: value.to_vec(),
            create_revision,
            mod_revision: rev,
            ttl_lease: lease,
        };
        inner.entries.insert(name.to_string(), entry.clone());
        self.record(inner, WatchEvent::Put(entry.clone()));
        entry
    }
}

impl LeaseStore for MemoryStore {
    async fn snapshot(&self, with_config: bool) -> Result<Snapshot, StoreError> {
        let inner = self.lock()?;
        Ok(Snapshot {
            revision: Revision(inner.revision),
            config: if with_config {
                inner.config.clone()
            } else {
                None
            },
            entries: inner.entries.values().cloned().collect(),
        })
    }

    async fn put_config(&self, value: &[u8]) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        inner.revision += 1;
        inner.config = Some(value.to_vec());
        Ok(())
    }

    async fn get(&self, name: &str) -> Result<Option<StoredEntry>, StoreError> {
        Ok(self.lock()?.entries.get(name).cloned())
    }

    async fn create_unless_prefixed(
        &self,
        name: &str,
        guard: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<CreateOutcome, StoreError> {
        debug_assert!(name.starts_with(guard));
        let mut inner = self.lock()?;
        if let Some((_, existing)) = inner
            .entries
            .range::<str, _>((std::ops::Bound::Included(guard), std::ops::Bound::Unbounded))
            .next()
            .filter(|(k, _)| k.starts_with(guard))
        {
            return Ok(CreateOutcome::Exists(Some(existing.clone())));
        }
        let lease = Self::grant(&mut inner, ttl);
        Ok(CreateOutcome::Created(
            self.put(&mut inner, name, value, lease),
        ))
    }

    async fn replace(
        &self,
        name: &str,
        value: &[u8],
        expected: Revision,
        ttl: Option<Duration>,
    ) -> Result<ReplaceOutcome, StoreError> {
        let mut inner = self.lock()?;
        match inner.entries.get(name) {
            Some(e) if e.mod_revision == expected => {
                let lease = Self::grant(&mut inner, ttl);
                Ok(ReplaceOutcome::Replaced(
                    self.put(&mut inner, name, value, lease),
                ))
            }
            other => Ok(ReplaceOutcome::Conflict(other.cloned())),
        }
    }

    async fn delete(&self, name: &str, expected: Option<Revision>) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        match inner.entries.get(name) {
            Some(e) if expected.is_none_or(|r| r == e.mod_revision) => {
                self.remove(&mut inner, name);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn time_to_live(&self, lease: TtlLeaseId) -> Result<Option<Duration>, StoreError> {
        let inner = self.lock()?;
        Ok(inner
            .leases
            .get(&lease.0)
            .map(|deadline| deadline.saturating_duration_since(Instant::now())))
    }

    async fn revoke(&self, lease: TtlLeaseId) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        self.drop_lease(&mut inner, lease.0);
        Ok(())
    }

    async fn watch(&self, from: Revision) -> Result<WatchStream, StoreError> {
        let inner = self.lock()?;
        if from.0 <= inner.compacted {
            return Err(StoreError::Compacted {
                requested: from.0,
                compacted: inner.compacted,
            });
        }
        // Subscribe before reading history so nothing falls between the two.
        let rx = self.events.subscribe();
        let backlog: Vec<WatchEvent> = inner
            .history
            .iter()
            .filter(|(rev, _)| *rev >= from.0)
            .map(|(_, ev)| ev.clone())
            .collect();
        let seen_up_to = inner.revision;
        drop(inner);
        let first = futures::stream::iter((!backlog.is_empty()).then_some(Ok(backlog)));
        let live = futures::stream::unfold((rx, false), move |(mut rx, done)| async move {
            if done {
                return None;
            }
            loop {
                match rx.recv().await {
                    Ok((-1, _)) => {
                        return Some((
                            Err(StoreError::WatchEnded(super::WatchEnd::Closed)),
                            (rx, true),
                        ))
                    }
                    Ok((rev, _)) if rev <= seen_up_to => continue,
                    Ok((_, ev)) => return Some((Ok(vec![ev]), (rx, false))),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Some((
                            Err(StoreError::WatchEnded(super::WatchEnd::Lagged)),
                            (rx, true),
                        ))
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(first.chain(live).boxed())
    }

    fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}
