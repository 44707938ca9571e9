//! [`LeaseStore`] on etcd's v3 API.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::cause::{self, Context, Reason};
use super::tls::{TlsPem, TlsWarning};
use super::*;

/// How to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Bound on each unary request (watches are not bounded).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// How often an open watch asks etcd for a progress notification, so that an idle but
    /// healthy connection still counts as contact (`weft_etcd_last_success_timestamp_seconds`).
    pub watch_progress_interval: Duration,
    /// The TLS files' contents when they were read ahead ([`EtcdOptions::read_tls_files`]);
    /// `None`: [`EtcdStore::connect`] reads the files itself.
    pub tls_pem: Option<TlsPem>,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> Self {
        EtcdOptions {
            endpoints,
            prefix: prefix.into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            watch_progress_interval: Duration::from_secs(60),
            tls_pem: None,
        }
    }

    /// True when any TLS file is given.
    fn tls_wanted(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Check the options without touching anything: endpoints, prefix, TLS files against
    /// `http://`, and the flags that go in pairs.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.endpoints.is_empty() {
            return Err(ConfigError::NoEndpoints.into());
        }
        if !self.prefix.trim_end_matches('/').starts_with('/') {
            return Err(ConfigError::BadPrefix(self.prefix.clone()).into());
        }
        let tls_wanted = self.tls_wanted() || self.tls_pem.is_some();
        for ep in &self.endpoints {
            if probe::Target::parse(ep).is_none() {
                return Err(ConfigError::BadScheme(ep.clone()).into());
            }
            if tls_wanted && ep.starts_with("http://") {
                return Err(ConfigError::PlainHttpWithTls(ep.clone()).into());
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(ConfigError::Unpaired("--etcd-certfile", "--etcd-keyfile").into());
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(ConfigError::Unpaired("--etcd-username", "--etcd-password").into());
        }
        Ok(())
    }

    /// Read and check the TLS files now (see `store::tls` for what is checked), so that a
    /// wrong file is reported before anything else and connecting later opens no file.
    /// weftd calls this at start, before it drops the capabilities that reading a file owned
    /// by another user could need (docs/security.md). Fails on invalid options first
    /// ([`EtcdOptions::validate`]), then naming the flag and the file. Returns what is worth
    /// a warning.
    pub fn read_tls_files(&mut self) -> Result<Vec<TlsWarning>, StoreError> {
        self.validate()?;
        self.tls_pem = self.read_tls()?;
        Ok(self
            .tls_pem
            .as_ref()
            .map(|p| p.warnings().to_vec())
            .unwrap_or_default())
    }

    /// Read the files these (validated) options name; `None` when they name none.
    fn read_tls(&self) -> Result<Option<TlsPem>, StoreError> {
        if !self.tls_wanted() {
            return Ok(None);
        }
        let identity = self.cert_file.as_deref().zip(self.key_file.as_deref());
        Ok(Some(TlsPem::read(self.ca_file.as_deref(), identity)?))
    }
}

/// The `reason` label of `weft_etcd_request_errors_total`.
pub type ReasonLabel = [(&'static str, &'static str); 1];

/// What the store reports about its requests (the agent registers these).
#[derive(Clone, Debug, Default)]
pub struct StoreMetrics {
    /// Requests sent, one per member tried.
    pub requests: Counter<u64, AtomicU64>,
    /// 1 when the last request succeeded (or the watch delivered), 0 after one failed.
    pub up: Gauge<i64, AtomicI64>,
    /// Unix time of the last successful request or watch message.
    pub last_success_seconds: Gauge<i64, AtomicI64>,
    /// Requests that failed, by [`Reason`].
    pub errors: Family<ReasonLabel, Counter<u64, AtomicU64>>,
}

impl StoreMetrics {
    pub fn reason_label(reason: Reason) -> ReasonLabel {
        [("reason", reason.as_str())]
    }

    /// Create every `reason` series at 0, so that rates start from a known value.
    pub fn init_reasons(&self) {
        for r in Reason::ALL {
            let _ = self.errors.get_or_create(&Self::reason_label(r));
        }
    }

    fn contact(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.up.set(1);
        self.last_success_seconds.set(now);
    }

    fn failed(&self, cause: &EtcdCause) {
        self.errors
            .get_or_create(&Self::reason_label(cause.reason()))
            .inc();
    }
}

/// etcd-backed lease store. Cheap to clone.
///
/// It keeps one client per member and sends each request to the current member; when that
/// member is unreachable the request moves on to the next, so one stopped member (leader or
/// not) costs at most one failed attempt instead of a stream of errors.
#[derive(Clone)]
pub struct EtcdStore {
    members: Arc<Vec<String>>,
    clients: Arc<tokio::sync::Mutex<Vec<Option<Client>>>>,
    current: Arc<AtomicUsize>,
    connect_options: ConnectOptions,
    connect_timeout: Duration,
    config_key: String,
    subnets_prefix: String,
    endpoints: String,
    timeout: Duration,
    progress_every: Duration,
    /// The TLS material, for the diagnostic second look (`probe`).
    tls: Option<TlsPem>,
    metrics: StoreMetrics,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("subnets_prefix", &self.subnets_prefix)
            .finish()
    }
}

impl EtcdStore {
    /// Connect to etcd. Fails on bad options (unreadable certificate files when they were not
    /// read ahead, bad URLs); an unreachable etcd shows up on the first request instead, with
    /// a clear error.
    pub async fn connect(opts: &EtcdOptions) -> Result<Self, StoreError> {
        opts.validate()?;
        let prefix = opts.prefix.trim_end_matches('/');
        let mut copts = ConnectOptions::new()
            .with_connect_timeout(opts.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let pem = match &opts.tls_pem {
            Some(pem) => Some(pem.clone()),
            None => opts.read_tls()?,
        };
        if let Some(pem) = &pem {
            copts = copts.with_tls(pem.options());
        }
        if let (Some(u), Some(p)) = (&opts.username, &opts.password) {
            copts = copts.with_user(u.clone(), p.clone());
        }
        Ok(EtcdStore {
            members: Arc::new(opts.endpoints.clone()),
            clients: Arc::new(tokio::sync::Mutex::new(vec![None; opts.endpoints.len()])),
            current: Arc::new(AtomicUsize::new(0)),
            connect_options: copts,
            connect_timeout: opts.connect_timeout,
            config_key: format!("{prefix}/config"),
            subnets_prefix: format!("{prefix}/subnets/"),
            endpoints: opts.endpoints.join(","),
            timeout: opts.request_timeout,
            progress_every: opts.watch_progress_interval,
            tls: pem,
            metrics: StoreMetrics::default(),
        })
    }

    /// Report requests, contact and failures in `metrics` (the agent's `weft_etcd_*`).
    pub fn with_metrics(mut self, metrics: StoreMetrics) -> Self {
        metrics.init_reasons();
        self.metrics = metrics;
        self
    }

    /// The client for member `idx`, connecting on first use. With a username, connecting
    /// authenticates, so it is bounded like a request.
    async fn client(&self, idx: usize) -> Result<Client, EtcdCause> {
        let mut clients = self.clients.lock().await;
        if let Some(c) = &clients[idx] {
            return Ok(c.clone());
        }
        let ep = self.members[idx].clone();
        let bound = self.timeout + self.connect_timeout;
        let connect = Client::connect([ep.as_str()], Some(self.connect_options.clone()));
        let client = tokio::time::timeout(bound, connect)
            .await
            .map_err(|_| EtcdCause::Timeout(bound))?
            .map_err(|e| cause::classify(&e, &self.context(idx)))?;
        clients[idx] = Some(client.clone());
        Ok(client)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.subnets_prefix)
    }

    /// What classifying an error of member `idx` needs to know.
    fn context(&self, idx: usize) -> Context {
        Context {
            tls: self.members[idx].starts_with("https://"),
            ca_given: self.tls.as_ref().is_some_and(TlsPem::has_ca),
            cert_given: self.tls.as_ref().is_some_and(TlsPem::has_client_cert),
            connect_timeout: self.connect_timeout,
        }
    }

    /// The cause of a failed request to member `idx`; when the error tells no more than
    /// "the connection was closed", a second look (`probe`) may tell more.
    async fn cause_of(&self, idx: usize, cause: EtcdCause) -> EtcdCause {
        if !cause.is_vague() {
            return cause;
        }
        let ctx = self.context(idx);
        let ep = &self.members[idx];
        match probe::diagnose(ep, &cause, self.tls.as_ref(), &ctx, self.connect_timeout).await {
            Some(better) => better,
            None => cause,
        }
    }

    /// Run one request with the timeout and error mapping every request gets, moving on
    /// to the next member while the current one cannot serve.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_on(op, f).await.map(|(v, _)| v)
    }

    /// [`EtcdStore::call`], also telling which member answered.
    async fn call_on<T, F, Fut>(&self, op: &'static str, f: F) -> Result<(T, usize), StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.members.len();
        let mut last = None;
        for _ in 0..n {
            let idx = self.current.load(Ordering::Relaxed) % n;
            self.metrics.requests.inc();
            let cause = match self.client(idx).await {
                Err(c) => c,
                Ok(c) => match tokio::time::timeout(self.timeout, f(c)).await {
                    Err(_) => EtcdCause::Timeout(self.timeout),
                    Ok(Ok(v)) => {
                        self.metrics.contact();
                        return Ok((v, idx));
                    }
                    Ok(Err(e)) => cause::classify(&e, &self.context(idx)),
                },
            };
            let cause = self.cause_of(idx, cause).await;
            self.metrics.failed(&cause);
            let err = StoreError::Etcd {
                op,
                endpoint: self.members[idx].clone(),
                cause,
            };
            if !err.is_unreachable() {
                self.metrics.up.set(0);
                return Err(err);
            }
            tracing::debug!(member = %self.members[idx], op, error = %err, "etcd member cannot serve; trying the next");
            let _ = self.current.compare_exchange(
                idx,
                (idx + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            last = Some(err);
        }
        self.metrics.up.set(0);
        Err(last.expect("at least one endpoint"))
    }

    fn entry(&self, kv: &KeyValue) -> Option<StoredEntry> {
        let key = std::str::from_utf8(kv.key()).ok()?;
        let name = key.strip_prefix(&self.subnets_prefix)?;
        Some(StoredEntry {
            name: name.to_string(),
            value: kv.value().to_vec(),
            create_revision: Revision(kv.create_revision()),
            mod_revision: Revision(kv.mod_revision()),
            ttl_lease: (kv.lease() != 0).then_some(TtlLeaseId(kv.lease())),
        })
    }

    async fn grant(&self, ttl: Option<Duration>) -> Result<Option<TtlLeaseId>, StoreError> {
        let Some(ttl) = ttl else { return Ok(None) };
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let resp = self
            .call("lease grant", |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        Ok(Some(TtlLeaseId(resp.id())))
    }

    fn first_get(&self, resp: &etcd_client::TxnResponse) -> Option<StoredEntry> {
        resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().and_then(|kv| self.entry(kv)),
            _ => None,
        })
    }

    /// One transaction: if `compare` holds, put `value` (attached to a fresh TTL lease when
    /// `ttl` is given) and read it back; otherwise read what is there. `Ok(Ok(entry))` when
    /// written, `Ok(Err(current))` when the compare failed. A granted lease that ends up
    /// unused is revoked.
    async fn put_if(
        &self,
        op: &'static str,
        name: &str,
        value: &[u8],
        compare: Compare,
        ttl: Option<Duration>,
    ) -> Result<Result<StoredEntry, Option<StoredEntry>>, StoreError> {
        let lease = self.grant(ttl).await?;
        let key = self.key(name);
        let put_opts = lease.map(|l| PutOptions::new().with_lease(l.0));
        let txn = Txn::new()
            .when([compare])
            .and_then([
                TxnOp::put(key.clone(), value.to_vec(), put_opts),
                TxnOp::get(key.clone(), None),
            ])
            .or_else([TxnOp::get(key, None)]);
        let resp = match self
            .call(op, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.discard(lease).await;
                return Err(e);
            }
        };
        let current = self.first_get(&resp);
        if resp.succeeded() {
            current.map(Ok).ok_or_else(|| {
                StoreError::Protocol(format!("{op}: the written key was not read back"))
            })
        } else {
            self.discard(lease).await;
            Ok(Err(current))
        }
    }

    /// Revoke a TTL lease granted for a write that did not happen; best effort.
    async fn discard(&self, lease: Option<TtlLeaseId>) {
        if let Some(l) = lease {
            let _ = self.revoke(l).await;
        }
    }
}

impl LeaseStore for EtcdStore {
    async fn snapshot(&self, with_config: bool) -> Result<Snapshot, StoreError> {
        let mut ops = vec![TxnOp::get(
            self.subnets_prefix.clone(),
            Some(GetOptions::new().with_prefix()),
        )];
        if with_config {
            ops.push(TxnOp::get(self.config_key.clone(), None));
        }
        let resp = self
            .call("snapshot", |mut c| {
                let ops = ops.clone();
                async move { c.txn(Txn::new().and_then(ops)).await }
            })
            .await?;
        let revision = Revision(resp.header().map(|h| h.revision()).unwrap_or_default());
        let mut snap = Snapshot {
            revision,
            ..Default::default()
        };
        for (i, r) in resp.op_responses().into_iter().enumerate() {
            if let TxnOpResponse::Get(g) = r {
                if i == 0 {
                    snap.entries = g.kvs().iter().filter_map(|kv| self.entry(kv)).collect();
                } else {
                    snap.config = g.kvs().first().map(|kv| kv.value().to_vec());
                }
            }
        }
        Ok(snap)
    }

    async fn put_config(&self, value: &[u8]) -> Result<(), StoreError> {
        self.call("put config", |mut c| {
            let (k, v) = (self.config_key.clone(), value.to_vec());
            async move { c.put(k, v, None).await }
        })
        .await?;
        Ok(())
    }

    async fn get(&self, name: &str) -> Result<Option<StoredEntry>, StoreError> {
        let resp = self
            .call("get", |mut c| {
                let k = self.key(name);
                async move { c.get(k, None).await }
            })
            .await?;
        Ok(resp.kvs().first().and_then(|kv| self.entry(kv)))
    }

    async fn create_unless_prefixed(
        &self,
        name: &str,
        guard: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<CreateOutcome, StoreError> {
        debug_assert!(name.starts_with(guard));
        // A compare over a key range holds when every key in it holds; with no key at all it
        // compares against version 0, so "no key starts with guard" is one compare.
        let compare = if guard == name {
            Compare::version(self.key(name), CompareOp::Equal, 0)
        } else {
            Compare::version(self.key(guard), CompareOp::Equal, 0).with_prefix()
        };
        Ok(
            match self.put_if("create", name, value, compare, ttl).await? {
                Ok(entry) => CreateOutcome::Created(entry),
                Err(None) if guard != name => {
                    // The blocking key is another one under the guard: read one of them.
                    let k = self.key(guard);
                    let resp = self
                        .call("get", |mut c| {
                            let k = k.clone();
                            async move {
                                c.get(k, Some(GetOptions::new().with_prefix().with_limit(1)))
                                    .await
                            }
                        })
                        .await?;
                    CreateOutcome::Exists(resp.kvs().first().and_then(|kv| self.entry(kv)))
                }
                Err(current) => CreateOutcome::Exists(current),
            },
        )
    }

    async fn replace(
        &self,
        name: &str,
        value: &[u8],
        expected: Revision,
        ttl: Option<Duration>,
    ) -> Result<ReplaceOutcome, StoreError> {
        let compare = Compare::mod_revision(self.key(name), CompareOp::Equal, expected.0);
        Ok(
            match self.put_if("replace", name, value, compare, ttl).await? {
                Ok(entry) => ReplaceOutcome::Replaced(entry),
                Err(current) => ReplaceOutcome::Conflict(current),
            },
        )
    }

    async fn delete(&self, name: &str, expected: Option<Revision>) -> Result<bool, StoreError> {
        let key = self.key(name);
        match expected {
            None => {
                let resp = self
                    .call("delete", |mut c| {
                        let key = key.clone();
                        async move { c.delete(key, None).await }
                    })
                    .await?;
                Ok(resp.deleted() > 0)
            }
            Some(rev) => {
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev.0)])
                    .and_then([TxnOp::delete(key, None)]);
                let resp = self
                    .call("delete", |mut c| {
                        let txn = txn.clone();
                        async move { c.txn(txn).await }
                    })
                    .await?;
                Ok(resp.succeeded())
            }
        }
    }

    async fn time_to_live(&self, lease: TtlLeaseId) -> Result<Option<Duration>, StoreError> {
        let resp = self
            .call("lease ttl", |mut c| async move {
                c.lease_time_to_live(lease.0, None).await
            })
            .await?;
        Ok((resp.ttl() >= 0).then(|| Duration::from_secs(resp.ttl() as u64)))
    }

    async fn revoke(&self, lease: TtlLeaseId) -> Result<(), StoreError> {
        self.call("lease revoke", |mut c| async move {
            match c.lease_revoke(lease.0).await {
                Ok(_) => Ok(()),
                // Revoking a lease that already expired is success.
                Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn watch(&self, from: Revision) -> Result<WatchStream, StoreError> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from.0);
        let (stream, idx) = self
            .call_on("watch", |mut c| {
                let (k, o) = (self.subnets_prefix.clone(), opts.clone());
                async move { c.watch(k, Some(o)).await }
            })
            .await?;
        let this = self.clone();
        let mut progress = tokio::time::interval_at(
            tokio::time::Instant::now() + self.progress_every,
            self.progress_every,
        );
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let out = futures::stream::unfold(Some((stream, progress)), move |state| {
            let this = this.clone();
            async move {
                let (mut stream, mut progress) = state?;
                loop {
                    let message = tokio::select! {
                        m = stream.message() => m,
                        _ = progress.tick() => {
                            // The answer arrives on the stream as a progress notification.
                            // A failure to send shows up on the stream as well.
                            let _ = stream.request_progress().await;
                            continue;
                        }
                    };
                    let resp = match message {
                        Ok(Some(resp)) => resp,
                        Ok(None) => {
                            return Some((Err(StoreError::WatchEnded(WatchEnd::Closed)), None));
                        }
                        Err(e) => {
                            let cause = cause::classify(&e, &this.context(idx));
                            let cause = this.cause_of(idx, cause).await;
                            this.metrics.failed(&cause);
                            this.metrics.up.set(0);
                            let err = StoreError::Etcd {
                                op: "watch",
                                endpoint: this.members[idx].clone(),
                                cause,
                            };
                            return Some((Err(err), None));
                        }
                    };
                    // Events, progress notifications and cancellations are all etcd answering.
                    this.metrics.contact();
                    if resp.compact_revision() > 0 {
                        let err = StoreError::Compacted {
                            requested: from.0,
                            compacted: resp.compact_revision(),
                        };
                        return Some((Err(err), None));
                    }
                    if resp.canceled() {
                        let end = WatchEnd::Cancelled(resp.cancel_reason().to_string());
                        return Some((Err(StoreError::WatchEnded(end)), None));
                    }
                    let events: Vec<WatchEvent> = resp
                        .events()
                        .iter()
                        .filter_map(|ev| {
                            let kv = ev.kv()?;
                            match ev.event_type() {
                                EventType::Put => this.entry(kv).map(WatchEvent::Put),
                                EventType::Delete => {
                                    let e = this.entry(kv)?;
                                    Some(WatchEvent::Delete {
                                        name: e.name,
                                        revision: Revision(kv.mod_revision()),
                                    })
                                }
                            }
                        })
                        .collect();
                    if events.is_empty() {
                        continue; // created / progress notifications
                    }
                    return Some((Ok(events), Some((stream, progress))));
                }
            }
        });
        Ok(out.boxed())
    }

    fn request_count(&self) -> u64 {
        self.metrics.requests.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> EtcdOptions {
        EtcdOptions::new(vec!["https://127.0.0.1:2379".into()], "/p")
    }

    #[test]
    fn options_are_checked_before_anything_is_read() {
        let msg = |o: &EtcdOptions| o.validate().unwrap_err().to_string();
        let mut o = opts();
        o.endpoints.clear();
        assert_eq!(msg(&o), "no etcd endpoints given; set --etcd-endpoints");
        let mut o = opts();
        o.prefix = "p".into();
        assert_eq!(msg(&o), "--etcd-prefix \"p\" must start with '/'");
        let mut o = opts();
        o.endpoints = vec!["127.0.0.1:2379".into()];
        assert_eq!(
            msg(&o),
            "etcd endpoint \"127.0.0.1:2379\" must start with http:// or https://"
        );
        let mut o = opts();
        o.cert_file = Some("/c.pem".into());
        assert_eq!(
            msg(&o),
            "--etcd-certfile and --etcd-keyfile must be given together"
        );
        let mut o = opts();
        o.password = Some("pw".into());
        assert_eq!(
            msg(&o),
            "--etcd-username and --etcd-password must be given together"
        );
        // A mistake in the options is reported before any file is read.
        let mut o = EtcdOptions::new(vec!["http://127.0.0.1:2379".into()], "/p");
        o.ca_file = Some("/nonexistent/ca.pem".into());
        assert_eq!(
            o.read_tls_files().unwrap_err().to_string(),
            "etcd endpoint \"http://127.0.0.1:2379\" is plain http but TLS files were given; \
             use https://"
        );
    }

    #[test]
    fn tls_files_are_read_ahead_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts();
        assert!(o.read_tls_files().unwrap().is_empty());
        assert!(o.tls_pem.is_none(), "no files, nothing read");

        o.ca_file = Some(dir.path().join("absent.pem"));
        let e = o.read_tls_files().unwrap_err().to_string();
        let want = format!(
            "--etcd-cafile {}/absent.pem: cannot read it (No such file or directory (os error \
             2)); check the path and the file's permissions",
            dir.path().display()
        );
        assert_eq!(e, want);
        // A directory is not a file either.
        o.ca_file = Some(dir.path().to_path_buf());
        let e = o.read_tls_files().unwrap_err().to_string();
        assert!(e.starts_with("--etcd-cafile "), "{e}");
    }
}
