//! [`LeaseStore`] on etcd's v3 API.

use std::sync::atomic::{AtomicU64, Ordering};
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
        }
    }
}

/// etcd-backed lease store. Cheap to clone (the client multiplexes one channel).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    config_key: String,
    subnets_prefix: String,
    endpoints: String,
    timeout: Duration,
    requests: Arc<AtomicU64>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("subnets_prefix", &self.subnets_prefix)
            .finish()
    }
}

fn read_file(what: &str, path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| StoreError::Config(format!("cannot read {what} {}: {e}", path.display())))
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
    /// Connect to etcd. Fails on bad options (unreadable certificate files, bad URLs);
    /// an unreachable etcd shows up on the first request instead, with a clear error.
    pub async fn connect(opts: &EtcdOptions) -> Result<Self, StoreError> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::Config("no etcd endpoints given".into()));
        }
        let prefix = opts.prefix.trim_end_matches('/');
        if !prefix.starts_with('/') {
            return Err(StoreError::Config(format!(
                "etcd prefix {:?} must start with '/'",
                opts.prefix
            )));
        }
        let tls_wanted = opts.ca_file.is_some() || opts.cert_file.is_some() || opts.key_file.is_some();
        for ep in &opts.endpoints {
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
        let mut copts = ConnectOptions::new()
            .with_connect_timeout(opts.connect_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if tls_wanted {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &opts.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read_file("CA file", ca)?));
            }
            match (&opts.cert_file, &opts.key_file) {
                (Some(c), Some(k)) => {
                    tls = tls.identity(Identity::from_pem(
                        read_file("client certificate", c)?,
                        read_file("client key", k)?,
                    ))
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::Config(
                        "--etcd-certfile and --etcd-keyfile must be given together".into(),
                    ))
                }
            }
            copts = copts.with_tls(tls);
        }
        match (&opts.username, &opts.password) {
            (Some(u), Some(p)) => copts = copts.with_user(u.clone(), p.clone()),
            (None, None) => {}
            _ => {
                return Err(StoreError::Config(
                    "--etcd-username and --etcd-password must be given together".into(),
                ))
            }
        }
        let endpoints = opts.endpoints.join(",");
        let connect = Client::connect(opts.endpoints.clone(), Some(copts));
        // With a username, connecting authenticates (one request); bound it.
        let client = tokio::time::timeout(opts.request_timeout + opts.connect_timeout, connect)
            .await
            .map_err(|_| StoreError::Timeout {
                op: "connect",
                after: opts.request_timeout + opts.connect_timeout,
                endpoints: endpoints.clone(),
            })?
            .map_err(|e| StoreError::Unavailable {
                endpoints: endpoints.clone(),
                detail: chain(&e),
            })?;
        Ok(EtcdStore {
            client,
            config_key: format!("{prefix}/config"),
            subnets_prefix: format!("{prefix}/subnets/"),
            endpoints,
            timeout: opts.request_timeout,
            requests: Arc::new(AtomicU64::new(0)),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.subnets_prefix)
    }

    /// Run one unary request with the timeout and error mapping every request gets.
    async fn call<T, F>(&self, op: &'static str, fut: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(StoreError::Timeout {
                op,
                after: self.timeout,
                endpoints: self.endpoints.clone(),
            }),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.map_err(op, e)),
        }
    }

    fn map_err(&self, op: &'static str, e: etcd_client::Error) -> StoreError {
        match &e {
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
                StoreError::Unavailable {
                    endpoints: self.endpoints.clone(),
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
                    endpoints: self.endpoints.clone(),
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
        let mut c = self.client.clone();
        let resp = self.call("lease grant", c.lease_grant(secs, None)).await?;
        Ok(Some(TtlLeaseId(resp.id())))
    }

    fn first_get(&self, resp: &etcd_client::TxnResponse) -> Option<StoredEntry> {
        resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().and_then(|kv| self.entry(kv)),
            _ => None,
        })
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
        let mut c = self.client.clone();
        let resp = self.call("snapshot", c.txn(Txn::new().and_then(ops))).await?;
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
        let mut c = self.client.clone();
        self.call("put config", c.put(self.config_key.clone(), value.to_vec(), None))
            .await?;
        Ok(())
    }

    async fn get(&self, name: &str) -> Result<Option<StoredEntry>, StoreError> {
        let mut c = self.client.clone();
        let resp = self.call("get", c.get(self.key(name), None)).await?;
        Ok(resp.kvs().first().and_then(|kv| self.entry(kv)))
    }

    async fn create(&self, name: &str, value: &[u8], ttl: Option<Duration>) -> Result<CreateOutcome, StoreError> {
        let lease = self.grant(ttl).await?;
        let key = self.key(name);
        let put_opts = lease.map(|l| PutOptions::new().with_lease(l.0));
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value.to_vec(), put_opts), TxnOp::get(key.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        let mut c = self.client.clone();
        let resp = match self.call("create", c.txn(txn)).await {
            Ok(r) => r,
            Err(e) => {
                self.discard(lease).await;
                return Err(e);
            }
        };
        let current = self.first_get(&resp);
        if resp.succeeded() {
            let entry = current.ok_or_else(|| StoreError::WatchEnded("create: no entry read back".into()))?;
            Ok(CreateOutcome::Created(entry))
        } else {
            self.discard(lease).await;
            Ok(CreateOutcome::Exists(current))
        }
    }

    async fn replace(
        &self,
        name: &str,
        value: &[u8],
        expected: Revision,
        ttl: Option<Duration>,
    ) -> Result<ReplaceOutcome, StoreError> {
        let lease = self.grant(ttl).await?;
        let key = self.key(name);
        let put_opts = lease.map(|l| PutOptions::new().with_lease(l.0));
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, expected.0)])
            .and_then([TxnOp::put(key.clone(), value.to_vec(), put_opts), TxnOp::get(key.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        let mut c = self.client.clone();
        let resp = match self.call("replace", c.txn(txn)).await {
            Ok(r) => r,
            Err(e) => {
                self.discard(lease).await;
                return Err(e);
            }
        };
        let current = self.first_get(&resp);
        if resp.succeeded() {
            let entry = current.ok_or_else(|| StoreError::WatchEnded("replace: no entry read back".into()))?;
            Ok(ReplaceOutcome::Replaced(entry))
        } else {
            self.discard(lease).await;
            Ok(ReplaceOutcome::Conflict(current))
        }
    }

    async fn delete(&self, name: &str, expected: Option<Revision>) -> Result<bool, StoreError> {
        let key = self.key(name);
        let mut c = self.client.clone();
        match expected {
            None => {
                let resp = self.call("delete", c.delete(key, None)).await?;
                Ok(resp.deleted() > 0)
            }
            Some(rev) => {
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev.0)])
                    .and_then([TxnOp::delete(key, None)]);
                let resp = self.call("delete", c.txn(txn)).await?;
                Ok(resp.succeeded())
            }
        }
    }

    async fn time_to_live(&self, lease: TtlLeaseId) -> Result<Option<Duration>, StoreError> {
        let mut c = self.client.clone();
        let resp = self.call("lease ttl", c.lease_time_to_live(lease.0, None)).await?;
        Ok((resp.ttl() >= 0).then(|| Duration::from_secs(resp.ttl() as u64)))
    }

    async fn revoke(&self, lease: TtlLeaseId) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        match self.call("lease revoke", c.lease_revoke(lease.0)).await {
            Ok(_) => Ok(()),
            // Revoking a lease that already expired is success.
            Err(StoreError::Etcd { source: etcd_client::Error::GRpcStatus(s), .. })
                if s.message().contains("not found") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn watch(&self, from: Revision) -> Result<WatchStream, StoreError> {
        let mut c = self.client.clone();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from.0);
        let stream = self
            .call("watch", c.watch(self.subnets_prefix.clone(), Some(opts)))
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
                            return Some((Err(StoreError::WatchEnded("stream closed by etcd".into())), None))
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
        self.requests.load(Ordering::Relaxed)
    }
}
