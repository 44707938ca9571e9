//! Thin storage for leases: keys, values, revisions, TTLs and watches. Nothing here knows
//! which subnet to pick; that is the keeper's job.
//!
//! Keys are addressed by their *name* below `<prefix>/subnets/` (for example `10.5.7.0-24`);
//! the network config lives at `<prefix>/config`.

use std::future::Future;
use std::time::Duration;

use futures::stream::BoxStream;

mod cause;
mod etcd;
#[cfg(any(test, feature = "memory-store"))]
mod memory;
mod probe;
mod tls;

pub use cause::{EtcdCause, Reason};
pub use etcd::{EtcdOptions, EtcdStore, ReasonLabel, StoreMetrics};
#[cfg(any(test, feature = "memory-store"))]
pub use memory::MemoryStore;
pub use tls::{FileContent, PemDamage, PemKind, TlsFile, TlsFileProblem, TlsPem, TlsWarning};

/// An etcd store revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision(pub i64);

/// An etcd lease id (the TTL holder a key is attached to).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TtlLeaseId(pub i64);

/// One stored subnet entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEntry {
    pub name: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// `None`: the key has no TTL (a reservation).
    pub ttl_lease: Option<TtlLeaseId>,
}

/// Everything under the prefix at one revision.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub revision: Revision,
    /// The raw config value, when it was asked for and exists.
    pub config: Option<Vec<u8>>,
    pub entries: Vec<StoredEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put(StoredEntry),
    Delete { name: String, revision: Revision },
}

/// Result of a create-if-absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateOutcome {
    Created(StoredEntry),
    /// Somebody holds the key; what they hold, when the store could tell.
    Exists(Option<StoredEntry>),
}

/// Result of a compare-and-swap on mod_revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplaceOutcome {
    Replaced(StoredEntry),
    /// The key changed or vanished since `expected`; what is there now, if anything.
    Conflict(Option<StoredEntry>),
}

/// A failed store operation. Displayed as one sentence: what failed, the cause in plain
/// words, and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A request to etcd failed (on every member, when the cause was one another member
    /// might not have); `endpoint` is the member that failed last.
    #[error("etcd at {endpoint}: {cause}")]
    Etcd {
        op: &'static str,
        endpoint: String,
        cause: EtcdCause,
    },
    #[error("watch from revision {requested} is no longer possible: compacted up to {compacted}")]
    Compacted { requested: i64, compacted: i64 },
    #[error("the lease watch ended: {0}")]
    WatchEnded(WatchEnd),
    #[error("unexpected answer from etcd: {0}")]
    Protocol(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Why a watch ended that is no failure of etcd's (the caller re-lists).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchEnd {
    /// etcd cancelled the watch, for the reason it gives.
    #[error("etcd cancelled it ({0})")]
    Cancelled(String),
    #[error("etcd closed the stream")]
    Closed,
    /// The watcher fell behind (in-memory store).
    #[error("the watcher fell behind")]
    Lagged,
}

/// What is wrong with the store options; found before anything is connected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no etcd endpoints given; set --etcd-endpoints")]
    NoEndpoints,
    #[error("--etcd-prefix {0:?} must start with '/'")]
    BadPrefix(String),
    #[error("etcd endpoint {0:?} must start with http:// or https://")]
    BadScheme(String),
    #[error("etcd endpoint {0:?} is plain http but TLS files were given; use https://")]
    PlainHttpWithTls(String),
    #[error("{0} and {1} must be given together")]
    Unpaired(&'static str, &'static str),
    /// One TLS file is wrong.
    #[error("{file} {path}: {problem}")]
    TlsFile {
        file: TlsFile,
        path: String,
        problem: TlsFileProblem,
    },
}

impl StoreError {
    /// True when the member could not serve (another member may).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, StoreError::Etcd { cause, .. } if cause.is_member_failure())
    }

    /// True when the caller should re-list instead of resuming a watch.
    pub fn needs_relist(&self) -> bool {
        matches!(
            self,
            StoreError::Compacted { .. } | StoreError::WatchEnded(_)
        )
    }

    /// The cause, when etcd could not be used.
    pub fn cause(&self) -> Option<&EtcdCause> {
        match self {
            StoreError::Etcd { cause, .. } => Some(cause),
            _ => None,
        }
    }
}

pub type WatchStream = BoxStream<'static, Result<Vec<WatchEvent>, StoreError>>;

/// The lease storage boundary. Implemented by [`EtcdStore`] and, for tests, `MemoryStore`.
pub trait LeaseStore: Send + Sync + 'static {
    /// Config (when `with_config`) and every subnet entry, at one revision, in one request.
    fn snapshot(
        &self,
        with_config: bool,
    ) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;

    fn put_config(&self, value: &[u8]) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn get(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<StoredEntry>, StoreError>> + Send;

    /// Create `name` only if it does not exist. `ttl: None` creates a reservation.
    fn create(
        &self,
        name: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<CreateOutcome, StoreError>> + Send {
        self.create_unless_prefixed(name, name, value, ttl)
    }

    /// Create `name` only if no key starting with `guard` exists (`guard` is a prefix of
    /// `name`), in one transaction. The lease keeper guards a dual-stack key
    /// `10.5.52.0-24&fc00::-64` with `10.5.52.0-24`, so two nodes can never hold one IPv4
    /// subnet under two keys. `Exists` carries one of the blocking entries.
    fn create_unless_prefixed(
        &self,
        name: &str,
        guard: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<CreateOutcome, StoreError>> + Send;

    /// Replace `name` only if its mod_revision is still `expected`, attaching a fresh TTL
    /// (`None`: no TTL). The previous TTL lease is left alone; see [`LeaseStore::revoke`].
    fn replace(
        &self,
        name: &str,
        value: &[u8],
        expected: Revision,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<ReplaceOutcome, StoreError>> + Send;

    /// Delete `name` (only if its mod_revision is `expected`, when given). True if deleted.
    fn delete(
        &self,
        name: &str,
        expected: Option<Revision>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Time left on a TTL lease; `None` if it expired or never existed.
    fn time_to_live(
        &self,
        lease: TtlLeaseId,
    ) -> impl Future<Output = Result<Option<Duration>, StoreError>> + Send;

    /// Revoke a TTL lease (deleting any key still attached to it). Unknown leases are fine.
    fn revoke(&self, lease: TtlLeaseId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Watch every subnet entry from `from` (inclusive). The stream yields batches of events;
    /// an `Err` ends it (re-list on [`StoreError::needs_relist`], or on any error).
    fn watch(&self, from: Revision)
        -> impl Future<Output = Result<WatchStream, StoreError>> + Send;

    /// Number of requests sent to the backing store so far.
    fn request_count(&self) -> u64;
}
