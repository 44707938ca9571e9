//! weftd's top level: wires the interface choice, the store, the keeper, the peer watch,
//! subnet.env and the health server together, and owns readiness.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use ipnetwork::IpNetwork;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, info_span, warn, Instrument};
use weft_backends::dataplane::KernelNetlink;
use weft_backends::plan::{LinkNames, Settings, Underlay};
use weft_backends::{BackendKind, IpFamily, PeerEvent};

use crate::config::{ConfigError, NetConfig};
use crate::firewall::{run_firewall, MasqRules, NftFirewall};
use crate::health::{self, Metrics, Readiness};
use crate::host::iface::{self, ChosenIface, Families, IfaceError};
use crate::lease::keeper::{sleep_or_shutdown, Backoff, KeeperSettings, LeaseKeeper, LeaseStatus};
use crate::lease::pick::{Identity, Previous};
use crate::lease::{LeaseRules, SubnetKey};
use crate::node::{
    backend_settings, chosen_underlay, device_name, families, own_attrs, own_subnet, pod_mtu,
    vtep_mac,
};
use crate::settings::{AgentSettings, PublicIpFlagError};
use crate::store::{EtcdStore, LeaseStore, Snapshot, StoreError};
use crate::subnet_env::SubnetEnv;

/// Why weftd stopped. Each message gives the context only and its source the cause, so the
/// chain printed in full (`{:#}` of an `anyhow::Error`) says each cause once.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("choosing the interface")]
    Iface(#[from] IfaceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("--net-config {path}: cannot read the file")]
    ConfigFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--net-config {path}")]
    BadConfigFile {
        path: String,
        #[source]
        source: ConfigError,
    },
    #[error(transparent)]
    PublicIp(#[from] PublicIpFlagError),
    #[error("data plane")]
    Dataplane(#[from] weft_backends::dataplane::DataplaneError),
    #[error("kernel notification listener")]
    Monitor(#[from] weft_backends::netlink::NlError),
    #[error("health server on {addr}")]
    Health {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl AgentError {
    /// Errors in what the operator gave (bad files, options): exit status 2.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            AgentError::Iface(_)
                | AgentError::Store(StoreError::Config(_))
                | AgentError::ConfigFile { .. }
                | AgentError::BadConfigFile { .. }
                | AgentError::PublicIp(_)
        )
    }
}

/// Read the network config and the initial listing. Retries (unready) while the config is
/// absent or invalid in etcd; a bad config *file* is the operator's error and returned.
async fn load_config_and_snapshot<S: LeaseStore>(
    store: &S,
    settings: &AgentSettings,
    ready: &watch::Sender<Readiness>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<(NetConfig, Snapshot)>, AgentError> {
    let file_cfg = match &settings.net_config_file {
        None => None,
        Some(path) => {
            let text = std::fs::read(path).map_err(|source| AgentError::ConfigFile {
                path: path.display().to_string(),
                source,
            })?;
            Some(
                NetConfig::parse(&text).map_err(|source| AgentError::BadConfigFile {
                    path: path.display().to_string(),
                    source,
                })?,
            )
        }
    };
    let config_key = format!("{}/config", settings.etcd.prefix.trim_end_matches('/'));
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let problem = match store.snapshot(file_cfg.is_none()).await {
            Ok(snap) => match &file_cfg {
                Some(cfg) => return Ok(Some((cfg.clone(), snap))),
                None => match snap.config.as_deref().map(NetConfig::parse) {
                    Some(Ok(cfg)) => return Ok(Some((cfg, snap))),
                    Some(Err(e)) => format!("network config at {config_key} is invalid: {e}"),
                    None => format!(
                        "waiting for the network config at {config_key} (not present in etcd yet)"
                    ),
                },
            },
            Err(e) => format!("cannot read leases from etcd: {e}"),
        };
        let delay = backoff.next();
        warn!(retry_in_ms = delay.as_millis() as u64, "{problem}");
        ready.send_replace(Readiness::NotReady(problem));
        if sleep_or_shutdown(delay, shutdown).await {
            return Ok(None);
        }
    }
}

/// Run weftd until `shutdown` turns true. The lease and (later) the data plane are left in
/// place on exit so that a restart disturbs nothing.
pub async fn run(
    settings: AgentSettings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    info!(
        version = %health::VERSION,
        node = %settings.node_name,
        "weftd starting"
    );
    let metrics = Metrics::default();
    let (ready_tx, ready_rx) = watch::channel(Readiness::NotReady("starting".into()));

    // The interface facts are read first: a host without usable interfaces is reported
    // before anything else is attempted.
    let facts = iface::probe::facts(&settings.iface).await?;
    // A --iface naming nothing on this host is reported now, not once the config has come.
    iface::check_request(&settings.iface, &facts)?;

    let store = Arc::new(
        EtcdStore::connect(&settings.etcd)
            .await?
            .with_metrics(metrics.store_metrics()),
    );

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(health::log_readiness_changes(
        ready_rx.clone(),
        shutdown.clone(),
    ));
    if let Some(addr) = settings.healthz {
        // Bound here so a port clash is reported at start, not lost in a task.
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Health { addr, source })?;
        let (r, m, s) = (ready_rx.clone(), metrics.clone(), shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = health::serve(listener, r, m, s).await {
                error!(error = %e, "health server stopped");
            }
        });
    }

    let Some((cfg, snapshot)) =
        load_config_and_snapshot(store.as_ref(), &settings, &ready_tx, &mut shutdown).await?
    else {
        return Ok(());
    };
    for notice in &cfg.notices {
        warn!(key = %notice.path, kind = %notice.kind.as_str(), "{notice}");
    }
    settings.check_with_config(&cfg)?;
    // Interface and public IPs (one per enabled family), with one line saying what and why.
    let need = Families::of(families(&cfg));
    let chosen = iface::choose(&settings.iface, &facts, need)?;
    let show = |a: Option<String>| a.unwrap_or_else(|| "-".into());
    info!(
        iface = %chosen.name,
        iface_addr = %show(chosen.iface_addr.map(|a| a.to_string())),
        public_ip = %show(chosen.public_ip.map(|a| a.to_string())),
        iface_addr_v6 = %show(chosen.iface_addr_v6.map(|a| a.to_string())),
        public_ip_v6 = %show(chosen.public_ip_v6.map(|a| a.to_string())),
        mtu = chosen.mtu,
        node = %settings.node_name,
        "using interface {} because {}", chosen.name, chosen.reason
    );
    let mut mtu = pod_mtu(&cfg, chosen.mtu);
    info!(
        network = %show(cfg.v4_network().map(|n| n.to_string())),
        ipv6_network = %show(cfg.v6_network().map(|n| n.to_string())),
        backend = %cfg.backend.kind,
        mtu,
        leases = snapshot.entries.len(),
        "network config loaded"
    );

    let previous = match SubnetEnv::read(&settings.subnet_file) {
        Ok(Some(env)) => Previous {
            v4: env
                .subnet
                .filter(|_| env.network.is_some() && env.network == cfg.v4_network()),
            v6: env
                .ipv6_subnet
                .filter(|_| env.ipv6_network.is_some() && env.ipv6_network == cfg.v6_network()),
        },
        Ok(None) => Previous::default(),
        Err(e) => {
            warn!(error = %e, "ignoring unreadable subnet file");
            Previous::default()
        }
    };
    let attrs = own_attrs(&cfg, &settings.node_name, &chosen);
    let keeper = LeaseKeeper::new(
        store.clone(),
        cfg.clone(),
        KeeperSettings {
            identity: Identity {
                node_name: settings.node_name.clone(),
                public_ip: chosen.public_ip,
                public_ip_v6: chosen.public_ip_v6,
            },
            attrs,
            ttl: settings.lease_ttl,
            previous,
        },
    );

    let (status_tx, mut status_rx) = watch::channel(LeaseStatus::Acquiring);
    let (own_tx, own_rx) = watch::channel(None);
    let (notice_tx, notice_rx) = mpsc::channel(64);
    let (peer_tx, peer_rx) = mpsc::channel::<Vec<PeerEvent>>(64);

    tasks.spawn(
        keeper
            .run(
                Some(snapshot.clone()),
                status_tx,
                notice_rx,
                shutdown.clone(),
            )
            .instrument(info_span!("keeper")),
    );

    let rules = LeaseRules::from_config(&cfg).for_peers_of(chosen.public_ip, chosen.public_ip_v6);
    let m = metrics.clone();
    let my_name = settings.node_name.clone();
    tasks.spawn(
        crate::lease::watch::run_peer_watch(
            store.clone(),
            rules,
            Some(snapshot),
            Some(my_name),
            own_rx,
            peer_tx,
            notice_tx,
            move |peers, invalid, relisted| {
                m.peers.set(peers as i64);
                m.invalid_leases.set(invalid as i64);
                if relisted {
                    m.watch_restarts.inc();
                }
            },
            shutdown.clone(),
        )
        .instrument(info_span!("peer_watch")),
    );

    // The data plane: one owner task per address family (each with its own device and its
    // own routes), kicked by its kernel notification listener. Peer events go to each.
    let mut dp_inputs = Vec::new();
    let mut dp_owns = Vec::new();
    let mut dp_settings = Vec::new();
    for family in families(&cfg) {
        let backend = dataplane_settings(&cfg, &settings.node_name, &chosen, chosen.mtu, family);
        let device = device_name(cfg.backend.vni, family);
        let nl = KernelNetlink::open(&device, family)?;
        let (kick_tx, kick_rx) = mpsc::channel(1);
        crate::dataplane::reconciler::spawn_monitor(device.clone(), family, kick_tx)?;
        let (dp_own_tx, dp_own_rx) = watch::channel(None::<IpNetwork>);
        let (settings_tx, settings_rx) = watch::channel(backend.clone());
        let (events_tx, events_rx) = mpsc::channel::<Vec<PeerEvent>>(64);
        let names = LinkNames::new(device.clone()).with_link(chosen.index, chosen.name.clone());
        let inputs = crate::dataplane::reconciler::Inputs {
            own: dp_own_rx,
            settings: settings_rx,
            peers: events_rx,
            kicks: kick_rx,
            resync: crate::dataplane::reconciler::RESYNC_INTERVAL,
        };
        tasks.spawn(
            crate::dataplane::reconciler::Reconciler::new(nl, backend, names, metrics.clone())
                .run(inputs, shutdown.clone())
                .map(drop)
                .instrument(info_span!("dataplane", device = %device, family = %family)),
        );
        dp_inputs.push(events_tx);
        dp_owns.push((family, dp_own_tx));
        dp_settings.push((family, settings_tx));
    }
    tasks.spawn(fan_out(peer_rx, dp_inputs));
    // The underlay's MTU is followed: a change re-plans the data plane and rewrites
    // subnet.env (see `apply_underlay_mtu`).
    let (underlay_mtu_tx, mut underlay_mtu_rx) = watch::channel(chosen.mtu);
    crate::dataplane::reconciler::spawn_mtu_watch(
        chosen.index,
        chosen.name.clone(),
        underlay_mtu_tx,
    )?;
    let mut underlay_mtu = chosen.mtu;
    let mut mtu_open = true;

    // The masquerade tables: one owner task per family, fed the rules once the subnet is
    // known.
    let mut masq_txs = Vec::new();
    for family in families(&cfg) {
        let (masq_tx, masq_rx) = watch::channel(None::<MasqRules>);
        masq_txs.push((family, masq_tx));
        if settings.ip_masq {
            let m = metrics.clone();
            tasks.spawn(
                run_firewall(
                    NftFirewall::new(None).for_family(family),
                    masq_rx,
                    crate::dataplane::reconciler::RESYNC_INTERVAL,
                    shutdown.clone(),
                    move || {
                        m.firewall_repairs.inc();
                    },
                )
                .instrument(info_span!("firewall", family = %family)),
            );
        }
    }
    if !settings.ip_masq {
        // A table left by an earlier run with --ip-masq would keep masquerading.
        tasks.spawn(async move {
            let results =
                crate::firewall::cleanup_all_families(|f| NftFirewall::new(None).for_family(f))
                    .await;
            for (family, result) in results {
                match result {
                    Ok(true) => info!(table = %format!("{} {}", crate::firewall::nft_family(family), crate::firewall::TABLE), "removed an nftables table left by an earlier run with --ip-masq"),
                    Ok(false) => {}
                    Err(e) => debug!(family = crate::firewall::nft_family(family), error = %e, "cannot check for a leftover nftables table"),
                }
            }
        });
    }

    // This task owns readiness and subnet.env.
    let env_writer = EnvWriter {
        path: &settings.subnet_file,
        cfg: &cfg,
        ip_masq: settings.ip_masq,
        metrics: &metrics,
        ready: &ready_tx,
    };
    'status: loop {
        let status = status_rx.borrow_and_update().clone();
        match &status {
            LeaseStatus::Held(h) => {
                own_tx.send_replace(Some(h.key));
                for (family, tx) in &dp_owns {
                    tx.send_replace(own_subnet(&h.key, *family));
                }
                for (family, tx) in &masq_txs {
                    let network = match family {
                        IpFamily::V4 => cfg.v4_network().map(IpNetwork::V4),
                        IpFamily::V6 => cfg.v6_network().map(IpNetwork::V6),
                    };
                    let rules = network
                        .zip(own_subnet(&h.key, *family))
                        .and_then(|(network, own)| MasqRules::new(network, own).ok());
                    tx.send_replace(rules);
                }
                metrics.lease_held.set(1);
                metrics.lease_changes.inc();
                let expiry = h.expires_at.map(|e| {
                    let left = e.saturating_duration_since(Instant::now());
                    (SystemTime::now() + left)
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(0)
                });
                metrics.lease_expiry_seconds.set(expiry.unwrap_or(0));
                env_writer.write(&h.key, mtu);
            }
            LeaseStatus::Acquiring => {
                metrics.lease_held.set(0);
                ready_tx.send_replace(Readiness::NotReady("acquiring a subnet lease".into()));
            }
            LeaseStatus::Failed(why) => {
                metrics.lease_held.set(0);
                ready_tx.send_replace(Readiness::NotReady(why.clone()));
            }
        }
        // Wait for the next lease status; an MTU change is handled without touching the rest.
        loop {
            tokio::select! {
                changed = status_rx.changed() => {
                    if changed.is_err() { break 'status; }
                    continue 'status;
                }
                changed = underlay_mtu_rx.changed(), if mtu_open => {
                    if changed.is_err() {
                        mtu_open = false;
                        continue;
                    }
                    let new = *underlay_mtu_rx.borrow_and_update();
                    if new == underlay_mtu {
                        continue;
                    }
                    let change = MtuChange {
                        iface: &chosen.name,
                        old: underlay_mtu,
                        new,
                    };
                    let node = &settings.node_name;
                    mtu = apply_underlay_mtu(&cfg, node, &chosen, change, &dp_settings);
                    underlay_mtu = new;
                    if let LeaseStatus::Held(h) = &status {
                        env_writer.write(&h.key, mtu);
                    }
                }
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break 'status; }
                }
            }
        }
    }
    info!("shutting down; the lease and the data plane stay in place");
    drop(dp_owns);
    drop(dp_settings);
    drop(own_tx);
    // Give tasks a moment to finish their current request.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    Ok(())
}

/// Writes subnet.env for the held lease; readiness follows whether it could be written.
struct EnvWriter<'a> {
    path: &'a std::path::Path,
    cfg: &'a NetConfig,
    ip_masq: bool,
    metrics: &'a Metrics,
    ready: &'a watch::Sender<Readiness>,
}

impl EnvWriter<'_> {
    fn write(&self, key: &SubnetKey, mtu: u32) {
        let env = SubnetEnv {
            network: self.cfg.v4_network(),
            subnet: key.v4_subnet(),
            ipv6_network: self.cfg.v6_network(),
            ipv6_subnet: key.v6,
            mtu,
            ip_masq: self.ip_masq,
        };
        match env.write(self.path) {
            Ok(written) => {
                if written {
                    self.metrics.subnet_env_writes.inc();
                    info!(path = %self.path.display(), subnet = %key.cidrs(), mtu, "wrote subnet file");
                }
                self.ready.send_replace(Readiness::Ready);
            }
            Err(e) => {
                error!(error = %e, "cannot write subnet file");
                self.ready.send_replace(Readiness::NotReady(e.to_string()));
            }
        }
    }
}

/// The data-plane settings of `family` over the chosen interface with `underlay_mtu`.
fn dataplane_settings(
    cfg: &NetConfig,
    node_name: &str,
    chosen: &ChosenIface,
    underlay_mtu: u32,
    family: IpFamily,
) -> Settings {
    let underlay = chosen_underlay(chosen, family).expect("the chosen interface has one");
    let underlay = Underlay {
        mtu: underlay_mtu,
        ..underlay
    };
    backend_settings(cfg, family, vtep_mac(node_name, family), underlay)
}

/// The underlay's MTU went from `old` to `new`.
#[derive(Clone, Copy, Debug)]
struct MtuChange<'a> {
    iface: &'a str,
    old: u32,
    new: u32,
}

/// Take a new underlay MTU into use: the data planes re-plan with it (the VXLAN device's MTU
/// is changed in place), and the returned pod MTU goes into subnet.env for new pods. Running
/// pods keep the MTU they were created with; the warning says so.
fn apply_underlay_mtu(
    cfg: &NetConfig,
    node_name: &str,
    chosen: &ChosenIface,
    change: MtuChange<'_>,
    dataplanes: &[(IpFamily, watch::Sender<Settings>)],
) -> u32 {
    let MtuChange { iface, old, new } = change;
    let (before, after) = (pod_mtu(cfg, old), pod_mtu(cfg, new));
    for (family, tx) in dataplanes {
        tx.send_replace(dataplane_settings(cfg, node_name, chosen, new, *family));
    }
    if before == after {
        warn!(
            iface = %iface,
            old_mtu = old,
            new_mtu = new,
            pod_mtu = after,
            "the MTU of {iface} changed from {old} to {new}; pods keep MTU {after}, which Backend.MTU in the network config sets"
        );
    } else {
        let devices = match (cfg.backend.kind, dataplanes.len()) {
            (BackendKind::HostGw, _) => "",
            (BackendKind::Vxlan, 1) => " and the VXLAN device follows",
            (BackendKind::Vxlan, _) => " and the VXLAN devices follow",
        };
        warn!(
            iface = %iface,
            old_mtu = old,
            new_mtu = new,
            pod_mtu = after,
            "the MTU of {iface} changed from {old} to {new}: new pods get MTU {after} (was {before}){devices}; running pods keep MTU {before} until they are re-created"
        );
    }
    after
}

/// Hand every batch of peer events to each data-plane owner (one per family).
async fn fan_out(
    mut events: mpsc::Receiver<Vec<PeerEvent>>,
    to: Vec<mpsc::Sender<Vec<PeerEvent>>>,
) {
    while let Some(batch) = events.recv().await {
        let Some((last, rest)) = to.split_last() else {
            continue;
        };
        for tx in rest {
            if tx.send(batch.clone()).await.is_err() {
                return;
            }
        }
        if last.send(batch).await.is_err() {
            return;
        }
    }
}
