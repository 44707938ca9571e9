//! weftd's top level: wires the interface choice, the store, the keeper, the peer watch,
//! subnet.env and the health server together, and owns readiness.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use ipnetwork::Ipv4Network;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, info_span, warn, Instrument};
use weft_backends::dataplane::KernelNetlink;
use weft_backends::plan::{Settings, Underlay, VxlanSettings};
use weft_backends::{BackendKind, MacAddr, PeerEvent};

use crate::config::{ConfigError, NetConfig};
use crate::firewall::{run_firewall, MasqRules, NftFirewall};
use crate::health::{self, Metrics, Readiness};
use crate::iface::{self, ChosenIface, IfaceError};
use crate::keeper::{sleep_or_shutdown, Backoff, KeeperSettings, LeaseKeeper, LeaseStatus};
use crate::lease::{LeaseAttrs, LeaseRules, SubnetKey, VxlanData};
use crate::pick::Identity;
use crate::settings::AgentSettings;
use crate::store::{EtcdStore, LeaseStore, Snapshot, StoreError};
use crate::subnet_env::SubnetEnv;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("choosing the interface: {0}")]
    Iface(#[from] IfaceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("network config file {path}: {source}")]
    ConfigFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network config file {path}: {source}")]
    BadConfigFile {
        path: String,
        #[source]
        source: ConfigError,
    },
    #[error("data plane: {0}")]
    Dataplane(#[from] weft_backends::dataplane::DataplaneError),
    #[error("kernel notification listener: {0}")]
    Monitor(#[from] weft_backends::netlink::NlError),
    #[error("health server on {addr}: {source}")]
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
        )
    }
}

/// The MTU pods get: an explicit Backend.MTU, else the underlay's minus encapsulation.
pub fn pod_mtu(cfg: &NetConfig, underlay_mtu: u32) -> u32 {
    if let Some(m) = cfg.backend.mtu {
        return m;
    }
    match cfg.backend.kind {
        BackendKind::Vxlan => VxlanSettings::mtu_for(underlay_mtu, None),
        BackendKind::HostGw => underlay_mtu,
    }
}

/// The name of weft's VXLAN device for a VNI.
pub fn device_name(vni: u32) -> String {
    format!("weft.{vni}")
}

/// The backend settings for a node with VTEP MAC `mac` over `underlay` (weftd and
/// `netctl check` plan with the same ones).
pub fn backend_settings(cfg: &NetConfig, mac: MacAddr, underlay: Underlay) -> Settings {
    match cfg.backend.kind {
        BackendKind::Vxlan => Settings::Vxlan(VxlanSettings {
            device: device_name(cfg.backend.vni),
            vni: cfg.backend.vni,
            port: cfg.backend.port,
            mac,
            mtu: VxlanSettings::mtu_for(underlay.mtu, cfg.backend.mtu),
            underlay,
            direct_routing: cfg.backend.direct_routing,
        }),
        BackendKind::HostGw => Settings::HostGw(underlay),
    }
}

/// The underlay an interface gives: its index, MTU, first IPv4 address (VXLAN packets leave
/// from it; the published public IP may be a NAT address in front of it) and the subnets of
/// all its IPv4 addresses (directly reachable for DirectRouting and host-gw).
pub fn underlay_of(index: u32, mtu: u32, v4: &[Ipv4Network]) -> Option<Underlay> {
    let first = v4.first()?;
    Some(Underlay {
        index,
        ip: first.ip(),
        mtu,
        connected: v4
            .iter()
            .map(|n| Ipv4Network::new(n.network(), n.prefix()).expect("prefix of a valid network"))
            .collect(),
    })
}

/// The lease value this node publishes.
pub fn own_attrs(cfg: &NetConfig, node_name: &str, chosen: &ChosenIface) -> LeaseAttrs {
    let vxlan = (cfg.backend.kind == BackendKind::Vxlan).then(|| VxlanData {
        vni: cfg.backend.vni,
        vtep_mac: MacAddr::derive_from(node_name),
    });
    LeaseAttrs::for_node(node_name, chosen.public_ip, cfg.backend.kind, vxlan)
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
    let metrics = Metrics::default();
    let (ready_tx, ready_rx) = watch::channel(Readiness::NotReady("starting".into()));

    // Interface and public IP, with one line saying what and why.
    let facts = iface::probe::facts(&settings.iface).await?;
    let chosen = iface::choose(&settings.iface, &facts)?;
    info!(
        iface = %chosen.name,
        iface_addr = %chosen.iface_addr,
        public_ip = %chosen.public_ip,
        mtu = chosen.mtu,
        node = %settings.node_name,
        "using interface {} because {}", chosen.name, chosen.reason
    );

    let store = Arc::new(
        EtcdStore::connect(&settings.etcd)
            .await?
            .with_request_counter(metrics.etcd_requests.clone()),
    );

    let mut tasks = tokio::task::JoinSet::new();
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
    if !cfg.unknown_keys.is_empty() {
        warn!(keys = ?cfg.unknown_keys, "network config has keys weft does not know; ignoring them");
    }
    let mtu = pod_mtu(&cfg, chosen.mtu);
    info!(network = %cfg.network, subnet_len = cfg.subnet_len, backend = %cfg.backend.kind, mtu, leases = snapshot.entries.len(), "network config loaded");

    let previous = match SubnetEnv::read(&settings.subnet_file) {
        Ok(Some(env)) if env.network == cfg.network => Some(env.subnet),
        Ok(_) => None,
        Err(e) => {
            warn!(error = %e, "ignoring unreadable subnet file");
            None
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

    let rules = LeaseRules::from_config(&cfg).for_peers_of(chosen.public_ip);
    let m = metrics.clone();
    let my_name = settings.node_name.clone();
    tasks.spawn(
        crate::watch::run_peer_watch(
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

    // The data plane: one owner task, kicked by the kernel notification listener.
    let underlay =
        underlay_of(chosen.index, chosen.mtu, &[chosen.iface_addr]).expect("one address given");
    let backend = backend_settings(&cfg, MacAddr::derive_from(&settings.node_name), underlay);
    let device = device_name(cfg.backend.vni);
    let nl = KernelNetlink::open(&device)?;
    let (kick_tx, kick_rx) = mpsc::channel(1);
    crate::reconcile::spawn_monitor(device.clone(), kick_tx)?;
    let (dp_own_tx, dp_own_rx) = watch::channel(None::<Ipv4Network>);
    tasks.spawn(
        crate::reconcile::Reconciler::new(nl, backend, metrics.clone())
            .run(
                dp_own_rx,
                peer_rx,
                kick_rx,
                crate::reconcile::RESYNC_INTERVAL,
                shutdown.clone(),
            )
            .map(drop)
            .instrument(info_span!("dataplane", device = %device)),
    );

    // The masquerade table: its own owner task, fed the rules once the subnet is known.
    let (masq_tx, masq_rx) = watch::channel(None::<MasqRules>);
    if settings.ip_masq {
        let m = metrics.clone();
        tasks.spawn(
            run_firewall(
                NftFirewall::new(None),
                masq_rx,
                crate::reconcile::RESYNC_INTERVAL,
                shutdown.clone(),
                move || {
                    m.firewall_repairs.inc();
                },
            )
            .instrument(info_span!("firewall")),
        );
    } else {
        // A table left by an earlier run with --ip-masq would keep masquerading.
        tasks.spawn(async move {
            let removed = tokio::task::spawn_blocking(|| {
                crate::firewall::cleanup(&mut NftFirewall::new(None))
            })
            .await;
            match removed {
                Ok(Ok(true)) => info!(
                    "removed the nftables table ip weft left by an earlier run with --ip-masq"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => debug!(error = %e, "cannot check for a leftover nftables table"),
                Err(e) => debug!(error = %e, "leftover table check failed"),
            }
        });
    }

    // This task owns readiness and subnet.env.
    loop {
        let status = status_rx.borrow_and_update().clone();
        match &status {
            LeaseStatus::Held(h) => {
                own_tx.send_replace(Some((SubnetKey::v4(h.subnet).to_string(), h.subnet)));
                dp_own_tx.send_replace(Some(h.subnet));
                masq_tx.send_replace(Some(MasqRules::v4(cfg.network, h.subnet)));
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
                let env = SubnetEnv {
                    network: cfg.network,
                    subnet: h.subnet,
                    mtu,
                    ip_masq: settings.ip_masq,
                };
                match env.write(&settings.subnet_file) {
                    Ok(written) => {
                        if written {
                            metrics.subnet_env_writes.inc();
                            info!(path = %settings.subnet_file.display(), subnet = %h.subnet, mtu, "wrote subnet file");
                        }
                        ready_tx.send_replace(Readiness::Ready);
                    }
                    Err(e) => {
                        error!(error = %e, "cannot write subnet file");
                        ready_tx.send_replace(Readiness::NotReady(e.to_string()));
                    }
                }
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
        tokio::select! {
            changed = status_rx.changed() => {
                if changed.is_err() { break; }
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
        }
    }
    info!("shutting down; the lease and the data plane stay in place");
    drop(own_tx);
    // Give tasks a moment to finish their current request.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    Ok(())
}
