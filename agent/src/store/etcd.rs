//! [`LeaseStore`] on etcd's v3 API.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::StreamExt;

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
            return Err(StoreError::Config("no etcd endpoints given".into()));
        }
        if !self.prefix.trim_end_matches('/').starts_with('/') {
            return Err(StoreError::Config(format!(
                "etcd prefix {:?} must start with '/'",
                self.prefix
            )));
        }
        let tls_wanted = self.tls_wanted() || self.tls_pem.is_some();
        for ep in &self.endpoints {
            let scheme_ok = ep.starts_with("http://") || ep.starts_with("https://");
            if !scheme_ok {
                return Err(StoreError::Config(format!(
                    "etcd endpoint {ep:?} must start with http:// or https://"
                )));
            }
            if tls_wanted && ep.starts_with("http://") {
                return Err(StoreError::Config(format!(
                    "etcd endpoint {ep:?} is plain http but TLS files were given; use https://"
                )));
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(StoreError::Config(
                "--etcd-certfile and --etcd-keyfile must be given together".into(),
            ));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(StoreError::Config(
                "--etcd-username and --etcd-password must be given together".into(),
            ));
        }
        Ok(())
    }

    /// Read the TLS files into memory now, so that connecting later opens no file. weftd
    /// calls this at start, before it drops the capabilities that reading a file owned by
    /// another user could need (docs/security.md). Fails on invalid options first
    /// ([`EtcdOptions::validate`]), then naming the file that cannot be read.
    pub fn read_tls_files(&mut self) -> Result<(), StoreError> {
        self.validate()?;
        self.tls_pem = TlsPem::read(self)?;
        Ok(())
    }
}

/// The contents of the TLS files (PEM). `Debug` shows sizes only, never the key.
#[derive(Clone)]
pub struct TlsPem {
    ca: Option<Vec<u8>>,
    /// Client certificate and key.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem")
            .field("ca_bytes", &self.ca.as_ref().map(Vec::len))
            .field(
                "cert_bytes",
                &self.identity.as_ref().map(|(cert, _)| cert.len()),
            )
            .field("key", &self.identity.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl TlsPem {
    /// Read the files `opts` (validated) names; `None` when it names none.
    fn read(opts: &EtcdOptions) -> Result<Option<TlsPem>, StoreError> {
        if !opts.tls_wanted() {
            return Ok(None);
        }
        let ca = match &opts.ca_file {
            Some(path) => Some(read_file("CA file", "--etcd-cafile", path)?),
            None => None,
        };
        let identity = match (&opts.cert_file, &opts.key_file) {
            (Some(c), Some(k)) => Some((
                read_file("client certificate", "--etcd-certfile", c)?,
                read_file("client key", "--etcd-keyfile", k)?,
            )),
            _ => None,
        };
        Ok(Some(TlsPem { ca, identity }))
    }

    fn options(&self) -> TlsOptions {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.ca {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        tls
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
    requests: Counter<u64, AtomicU64>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("subnets_prefix", &self.subnets_prefix)
            .finish()
    }
}

fn read_file(what: &str, flag: &str, path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| {
        StoreError::Config(format!(
            "cannot read the etcd {what} {} ({flag}): {e}",
            path.display()
        ))
    })
}

/// Render an error with its whole source chain (tonic hides the useful part, such as
/// "invalid peer certificate: UnknownIssuer", several levels down).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
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
            None => TlsPem::read(opts)?,
        };
        if let Some(pem) = pem {
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
            requests: Counter::default(),
        })
    }

    /// Count requests in `counter` (the agent's `weft_etcd_requests_total`).
    pub fn with_request_counter(mut self, counter: Counter<u64, AtomicU64>) -> Self {
        self.requests = counter;
        self
    }

    /// The client for member `idx`, connecting on first use. With a username, connecting
    /// authenticates, so it is bounded like a request.
    async fn client(&self, idx: usize) -> Result<Client, StoreError> {
        let mut clients = self.clients.lock().await;
        if let Some(c) = &clients[idx] {
            return Ok(c.clone());
        }
        let ep = self.members[idx].clone();
        let bound = self.timeout + self.connect_timeout;
        let connect = Client::connect([ep.as_str()], Some(self.connect_options.clone()));
        let client = tokio::time::timeout(bound, connect)
            .await
            .map_err(|_| StoreError::Timeout {
                op: "connect",
                after: bound,
                endpoints: ep.clone(),
            })?
            .map_err(|e| StoreError::Unavailable {
                endpoints: ep.clone(),
                detail: chain(&e),
            })?;
        clients[idx] = Some(client.clone());
        Ok(client)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.subnets_prefix)
    }

    /// Run one request with the timeout and error mapping every request gets, moving on
    /// to the next member while the current one is unreachable.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.members.len();
        let mut last = None;
        for _ in 0..n {
            let idx = self.current.load(Ordering::Relaxed) % n;
            self.requests.inc();
            let err = match self.client(idx).await {
                Err(e) => e,
                Ok(c) => match tokio::time::timeout(self.timeout, f(c)).await {
                    Err(_) => StoreError::Timeout {
                        op,
                        after: self.timeout,
                        endpoints: self.members[idx].clone(),
                    },
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(e)) => self.map_err(op, idx, e),
                },
            };
            if !err.is_unreachable() {
                return Err(err);
            }
            tracing::debug!(member = %self.members[idx], error = %err, "etcd member unreachable; trying the next");
            let _ = self.current.compare_exchange(
                idx,
                (idx + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            last = Some(err);
        }
        Err(last.expect("at least one endpoint"))
    }

    fn map_err(&self, op: &'static str, idx: usize, e: etcd_client::Error) -> StoreError {
        match &e {
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
                StoreError::Unavailable {
                    endpoints: self.members[idx].clone(),
                    detail: chain(&e),
                }
            }
            etcd_client::Error::GRpcStatus(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded
                ) =>
            {
                StoreError::Unavailable {
                    endpoints: self.members[idx].clone(),
                    detail: chain(&e),
                }
            }
            _ => StoreError::Etcd { op, source: e },
        }
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
        match self
            .call("lease revoke", |mut c| async move {
                c.lease_revoke(lease.0).await
            })
            .await
        {
            Ok(_) => Ok(()),
            // Revoking a lease that already expired is success.
            Err(StoreError::Etcd {
                source: etcd_client::Error::GRpcStatus(s),
                ..
            }) if s.message().contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn watch(&self, from: Revision) -> Result<WatchStream, StoreError> {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from.0);
        let stream = self
            .call("watch", |mut c| {
                let (k, o) = (self.subnets_prefix.clone(), opts.clone());
                async move { c.watch(k, Some(o)).await }
            })
            .await?;
        let this = self.clone();
        let out = futures::stream::unfold(Some(stream), move |state| {
            let this = this.clone();
            async move {
                let mut stream = state?;
                loop {
                    match stream.message().await {
                        Ok(Some(resp)) => {
                            if resp.compact_revision() > 0 {
                                let err = StoreError::Compacted {
                                    requested: from.0,
                                    compacted: resp.compact_revision(),
                                };
                                return Some((Err(err), None));
                            }
                            if resp.canceled() {
                                let err = StoreError::WatchEnded(format!(
                                    "watch cancelled by etcd: {}",
                                    resp.cancel_reason()
                                ));
                                return Some((Err(err), None));
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
                            return Some((Ok(events), Some(stream)));
                        }
                        Ok(None) => {
                            return Some((
                                Err(StoreError::WatchEnded("stream closed by etcd".into())),
                                None,
                            ))
                        }
                        Err(e) => {
                            return Some((Err(StoreError::WatchEnded(chain(&e))), None));
                        }
                    }
                }
            }
        });
        Ok(out.boxed())
    }

    fn request_count(&self) -> u64 {
        self.requests.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> EtcdOptions {
        EtcdOptions::new(vec!["https://127.0.0.1:2379".into()], "/p")
    }

    #[test]
    fn tls_files_are_read_ahead_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = (
            dir.path().join("ca.pem"),
            dir.path().join("c.pem"),
            dir.path().join("k.pem"),
        );
        std::fs::write(&ca, "CA").unwrap();
        std::fs::write(&cert, "CERT").unwrap();
        std::fs::write(&key, "SECRET KEY").unwrap();

        let mut o = opts();
        o.read_tls_files().unwrap();
        assert!(o.tls_pem.is_none(), "no files, nothing read");

        o.ca_file = Some(ca.clone());
        o.cert_file = Some(cert.clone());
        o.key_file = Some(key.clone());
        o.read_tls_files().unwrap();
        let pem = o.tls_pem.clone().expect("read");
        assert_eq!(pem.ca.as_deref(), Some(&b"CA"[..]));
        let shown = format!("{pem:?}");
        assert!(!shown.contains("SECRET"), "the key is never shown: {shown}");

        let mut o = opts();
        o.ca_file = Some(dir.path().join("absent.pem"));
        let e = o.read_tls_files().unwrap_err().to_string();
        assert!(
            e.contains("CA file") && e.contains("absent.pem") && e.contains("--etcd-cafile"),
            "{e}"
        );
        // A directory is not a file either.
        o.ca_file = Some(dir.path().to_path_buf());
        assert!(o.read_tls_files().is_err());

        let mut o = opts();
        o.cert_file = Some(cert);
        let e = o.read_tls_files().unwrap_err().to_string();
        assert!(e.contains("--etcd-keyfile"), "{e}");

        // A mistake in the options is reported before any file is read.
        let mut o = EtcdOptions::new(vec!["http://127.0.0.1:2379".into()], "/p");
        o.ca_file = Some(dir.path().join("absent.pem"));
        let e = o.read_tls_files().unwrap_err().to_string();
        assert!(e.contains("plain http"), "{e}");
    }
}
