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
use weft_backends::plan::{Settings, Underlay, VxlanSettings};
use weft_backends::{BackendKind, IpFamily, MacAddr, PeerEvent};

use crate::config::{ConfigError, NetConfig};
use crate::firewall::{run_firewall, MasqRules, NftFirewall, TableFamily};
use crate::health::{self, Metrics, Readiness};
use crate::iface::{self, ChosenIface, Families, IfaceError};
use crate::keeper::{sleep_or_shutdown, Backoff, KeeperSettings, LeaseKeeper, LeaseStatus};
use crate::lease::{Endpoint, LeaseAttrs, LeaseRules, SubnetKey, VxlanData};
use crate::pick::{Identity, Previous};
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

/// The MTU pods get: an explicit Backend.MTU, else the underlay's minus encapsulation
/// (50 bytes over IPv4, 70 over IPv6; the smaller when both families are on, since a pod
/// has one MTU for both).
pub fn pod_mtu(cfg: &NetConfig, underlay_mtu: u32) -> u32 {
    if let Some(m) = cfg.backend.mtu {
        return m;
    }
    match cfg.backend.kind {
        BackendKind::Vxlan => families(cfg)
            .map(|f| VxlanSettings::mtu_for(underlay_mtu, None, f))
            .min()
            .unwrap_or(underlay_mtu),
        BackendKind::HostGw => underlay_mtu,
    }
}

/// The address families the config enables.
pub fn families(cfg: &NetConfig) -> impl Iterator<Item = IpFamily> {
    cfg.ipv4
        .as_ref()
        .map(|_| IpFamily::V4)
        .into_iter()
        .chain(cfg.ipv6.as_ref().map(|_| IpFamily::V6))
}

/// The name of weft's VXLAN device for a VNI and family (`weft.1`, `weft-v6.1`).
pub fn device_name(vni: u32, family: IpFamily) -> String {
    weft_backends::dataplane::device_name(family, vni)
}

/// The VTEP MAC of a node's device of one family: stable across restarts, derived from the
/// node name (the IPv6 device gets its own).
pub fn vtep_mac(node_name: &str, family: IpFamily) -> MacAddr {
    match family {
        IpFamily::V4 => MacAddr::derive_from(node_name),
        IpFamily::V6 => MacAddr::derive_from(&format!("{node_name}/ipv6")),
    }
}

/// The backend settings for one family, for a node with VTEP MAC `mac` over `underlay`
/// (weftd and `netctl check` plan with the same ones).
pub fn backend_settings(
    cfg: &NetConfig,
    family: IpFamily,
    mac: MacAddr,
    underlay: Underlay,
) -> Settings {
    match cfg.backend.kind {
        BackendKind::Vxlan => Settings::Vxlan(VxlanSettings {
            device: device_name(cfg.backend.vni, family),
            vni: cfg.backend.vni,
            port: cfg.backend.port,
            mac,
            mtu: VxlanSettings::mtu_for(underlay.mtu, cfg.backend.mtu, family),
            underlay,
            direct_routing: cfg.backend.direct_routing,
        }),
        BackendKind::HostGw => Settings::HostGw(underlay),
    }
}

/// The underlay an interface gives for one family: its index, MTU, the address VXLAN
/// packets leave from (the published public IP may be a NAT address in front of it) and
/// the subnets of the given addresses (directly reachable for DirectRouting and host-gw).
pub fn underlay_of(index: u32, mtu: u32, addrs: &[IpNetwork]) -> Option<Underlay> {
    let first = addrs.first()?;
    Some(Underlay {
        index,
        ip: first.ip(),
        mtu,
        connected: addrs
            .iter()
            .filter(|n| n.is_ipv4() == first.is_ipv4())
            .map(|n| IpNetwork::new(n.network(), n.prefix()).expect("prefix of a valid network"))
            .collect(),
    })
}

/// The chosen interface's underlay for `family`.
pub fn chosen_underlay(chosen: &ChosenIface, family: IpFamily) -> Option<Underlay> {
    let addr = match family {
        IpFamily::V4 => chosen.iface_addr.map(IpNetwork::V4),
        IpFamily::V6 => chosen.iface_addr_v6.map(IpNetwork::V6),
    }?;
    underlay_of(chosen.index, chosen.mtu, &[addr])
}

/// The lease value this node publishes.
pub fn own_attrs(cfg: &NetConfig, node_name: &str, chosen: &ChosenIface) -> LeaseAttrs {
    let vxlan = |family| {
        (cfg.backend.kind == BackendKind::Vxlan).then(|| VxlanData {
            vni: cfg.backend.vni,
            vtep_mac: vtep_mac(node_name, family),
        })
    };
    let v4 = cfg.ipv4.as_ref().and(chosen.public_ip).map(|ip| Endpoint {
        public_ip: ip,
        vxlan: vxlan(IpFamily::V4),
    });
    let v6 = cfg
        .ipv6
        .as_ref()
        .and(chosen.public_ip_v6)
        .map(|ip| Endpoint {
            public_ip: ip,
            vxlan: vxlan(IpFamily::V6),
        });
    LeaseAttrs::for_node(node_name, cfg.backend.kind, v4, v6)
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

    // The interface facts are read first: a host without usable interfaces is reported
    // before anything else is attempted.
    let facts = iface::probe::facts(&settings.iface).await?;

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
    // Interface and public IPs (one per enabled family), with one line saying what and why.
    let need = Families {
        v4: cfg.ipv4.is_some(),
        v6: cfg.ipv6.is_some(),
    };
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
    let mtu = pod_mtu(&cfg, chosen.mtu);
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

    // The data plane: one owner task per address family (each with its own device and its
    // own routes), kicked by its kernel notification listener. Peer events go to each.
    let mut dp_inputs = Vec::new();
    let mut dp_owns = Vec::new();
    for family in families(&cfg) {
        let underlay = chosen_underlay(&chosen, family).expect("the chosen interface has one");
        let backend = backend_settings(
            &cfg,
            family,
            vtep_mac(&settings.node_name, family),
            underlay,
        );
        let device = device_name(cfg.backend.vni, family);
        let nl = KernelNetlink::open(&device, family)?;
        let (kick_tx, kick_rx) = mpsc::channel(1);
        crate::reconcile::spawn_monitor(device.clone(), family, kick_tx)?;
        let (dp_own_tx, dp_own_rx) = watch::channel(None::<IpNetwork>);
        let (events_tx, events_rx) = mpsc::channel::<Vec<PeerEvent>>(64);
        tasks.spawn(
            crate::reconcile::Reconciler::new(nl, backend, metrics.clone())
                .run(
                    dp_own_rx,
                    events_rx,
                    kick_rx,
                    crate::reconcile::RESYNC_INTERVAL,
                    shutdown.clone(),
                )
                .map(drop)
                .instrument(info_span!("dataplane", device = %device, family = %family)),
        );
        dp_inputs.push(events_tx);
        dp_owns.push((family, dp_own_tx));
    }
    tasks.spawn(fan_out(peer_rx, dp_inputs));

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
                    NftFirewall::new(None).for_family(table_family(family)),
                    masq_rx,
                    crate::reconcile::RESYNC_INTERVAL,
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
            let removed = tokio::task::spawn_blocking(|| {
                crate::firewall::cleanup_all_families(|f| NftFirewall::new(None).for_family(f))
            })
            .await;
            match removed {
                Ok(results) => {
                    for (family, result) in results {
                        match result {
                            Ok(true) => info!(table = %format!("{family} {}", crate::firewall::TABLE), "removed an nftables table left by an earlier run with --ip-masq"),
                            Ok(false) => {}
                            Err(e) => debug!(%family, error = %e, "cannot check for a leftover nftables table"),
                        }
                    }
                }
                Err(e) => debug!(error = %e, "leftover table check failed"),
            }
        });
    }

    // This task owns readiness and subnet.env.
    loop {
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
                let env = SubnetEnv {
                    network: cfg.v4_network(),
                    subnet: h.key.v4_subnet(),
                    ipv6_network: cfg.v6_network(),
                    ipv6_subnet: h.key.v6,
                    mtu,
                    ip_masq: settings.ip_masq,
                };
                match env.write(&settings.subnet_file) {
                    Ok(written) => {
                        if written {
                            metrics.subnet_env_writes.inc();
                            info!(path = %settings.subnet_file.display(), subnet = %h.key, mtu, "wrote subnet file");
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
    drop(dp_owns);
    drop(own_tx);
    // Give tasks a moment to finish their current request.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    Ok(())
}

/// This node's subnet of `family` in its key.
pub fn own_subnet(key: &SubnetKey, family: IpFamily) -> Option<IpNetwork> {
    match family {
        IpFamily::V4 => key.v4_subnet().map(IpNetwork::V4),
        IpFamily::V6 => key.v6.map(IpNetwork::V6),
    }
}

/// The firewall table family of an address family.
fn table_family(family: IpFamily) -> TableFamily {
    match family {
        IpFamily::V4 => TableFamily::Ip,
        IpFamily::V6 => TableFamily::Ip6,
    }
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
