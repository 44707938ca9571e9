//! weftd's top level: the start-up steps, the tasks (each owned by the [`Supervisor`]), and
//! the loop that follows the lease, writes subnet.env and owns readiness.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::dataplane::wireguard::{self, WireguardError, WireguardNode};
use futures::FutureExt;
use ipnetwork::IpNetwork;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, info_span, warn, Instrument};
use weft_backends::backend::wireguard::kernel::{SharedDevice, WireguardKernel};
use weft_backends::backend::wireguard::Key;
use weft_backends::backend::Settings;
use weft_backends::dataplane::KernelNetlink;
use weft_backends::plan::{LinkNames, Underlay};
use weft_backends::{BackendKind, IpFamily};

use crate::backoff::Backoff;
use crate::config::{ConfigError, NetConfig};
use crate::dataplane::feed::PeerFeed;
use crate::dataplane::reconciler::{self, Reconciler, RESYNC_INTERVAL};
use crate::firewall::{run_firewall, MasqRules, NftFirewall};
use crate::health::{self, HealthState, Metrics, Readiness};
use crate::host::iface::{self, ChosenIface, Families, IfaceError, IfaceFacts};
use crate::lease::keeper::{sleep_or_shutdown, KeeperSettings, LeaseKeeper, LeaseStatus};
use crate::lease::pick::{Identity, Previous};
use crate::lease::watch::{run_peer_watch, WatchReport, WatchSettings};
use crate::lease::{LeaseRules, SubnetKey};
use crate::mesh::prober::{FamilySide, Inputs as ProberInputs, OwnSide, Prober, ThisNode};
use crate::mesh::{self, MeshSettings, MeshView};
use crate::node::{
    backend_settings, chosen_underlay, device_name, dual_stack, families, own_attrs, own_subnet,
    pod_mtu, route_device_name, vtep_mac, OwnData,
};
use crate::settings::{AgentSettings, PublicIpFlagError};
use crate::store::{EtcdStore, LeaseStore, Snapshot, StoreError};
use crate::subnet_env::SubnetEnv;
use crate::supervisor::{
    thread_ended, FatalTask, Progress, Supervisor, Task, TaskBoard, TaskName, ThreadEnd,
};

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
    #[error("peer health probe port {port}/udp ({family}): {source}; free the port or choose another with --health-probe-port (0 turns the probes off)")]
    ProbePort {
        port: u16,
        family: IpFamily,
        #[source]
        source: std::io::Error,
    },
    #[error("health server on {addr}")]
    Health {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Task(#[from] FatalTask),
    #[error(transparent)]
    Wireguard(#[from] WireguardError),
}

impl AgentError {
    /// Errors in what the operator gave (bad files, options): exit status 2.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            AgentError::Iface(_)
                | AgentError::Wireguard(_)
                | AgentError::Store(StoreError::Config(_))
                | AgentError::ConfigFile { .. }
                | AgentError::BadConfigFile { .. }
                | AgentError::PublicIp(_)
                | AgentError::ProbePort { .. }
        )
    }
}

/// Run weftd until `shutdown` turns true. The lease and the data plane are left in place on
/// exit so that a restart disturbs nothing. A task that must not fail (the keeper, the
/// health server) failing ends it with [`AgentError::Task`].
pub async fn run(
    settings: AgentSettings,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    info!(version = %health::VERSION, node = %settings.node_name, "weftd starting");
    let metrics = Metrics::default();
    let (ready_tx, ready_rx) = watch::channel(Readiness::NotReady("starting".into()));
    // A host without usable interfaces, or a --iface naming nothing here, is reported first.
    let facts = iface::probe::facts(&settings.iface).await?;
    iface::check_request(&settings.iface, &facts)?;
    let store = Arc::new(
        EtcdStore::connect(&settings.etcd)
            .await?
            .with_metrics(metrics.store_metrics()),
    );
    let board = TaskBoard::default();
    let mut sup = Supervisor::new(
        board.clone(),
        metrics.task_restarts.clone(),
        ready_rx.clone(),
        shutdown.clone(),
    );
    let mesh = MeshView::default();
    let health = HealthState {
        ready: ready_rx,
        metrics: metrics.clone(),
        tasks: board,
        mesh: mesh.clone(),
    };
    let result = async {
        start_health(&mut sup, &settings, health, &shutdown).await?;
        let net = tokio::select! {
            loaded = load_network(store.as_ref(), &settings, &facts, &ready_tx, shutdown.clone()) => loaded?,
            fatal = sup.watch() => return Err(fatal.into()),
        };
        let Some(net) = net else { return Ok(()) };
        if let Some(w) = &net.wireguard {
            metrics
                .wireguard_implementation
                .get_or_create(&[("implementation", w.implementation.label())])
                .set(1);
        }
        let lease = start_lease(&mut sup, &store, &settings, &net, &metrics, &shutdown);
        let planes = start_dataplanes(&mut sup, &settings, &net, &lease.feed, &metrics, &shutdown)?;
        let masq = start_firewalls(&mut sup, &settings, &net, &metrics, &shutdown);
        let mesh_own = match &settings.health_probes {
            Some(probes) => {
                let m = MeshStart { settings: probes, net: &net, node: &settings.node_name, view: &mesh };
                Some(start_mesh(&mut sup, m, &lease.feed, &metrics, &shutdown)?)
            }
            None => None,
        };
        let mut follower = Follower {
            net: &net,
            settings: &settings,
            metrics: &metrics,
            ready: &ready_tx,
            own: lease.own,
            planes,
            masq,
            mesh_own,
        };
        follower.run(lease.status, &mut sup, shutdown.clone()).await
    }
    .await;
    match &result {
        Ok(()) => {
            info!("shutting down; the lease and the data plane stay in place");
            sup.stop().await;
        }
        Err(_) => sup.abort(),
    }
    result
}

/// What start-up learned: the network config, the first listing and the interface.
struct Network {
    cfg: NetConfig,
    snapshot: Snapshot,
    chosen: ChosenIface,
    /// The pod MTU for the chosen interface's MTU.
    mtu: u32,
    /// The wireguard backend's key and implementation (only with that backend).
    wireguard: Option<WireguardNode>,
}

impl Network {
    fn wireguard_key(&self) -> Option<Key> {
        self.wireguard.as_ref().map(|w| w.public_key)
    }
}

/// The health server, on its own port (bound here, so a port clash is reported at start);
/// and the readiness log.
async fn start_health(
    sup: &mut Supervisor,
    settings: &AgentSettings,
    health: HealthState,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let (ready, stop) = (health.ready.clone(), shutdown.clone());
    sup.spawn(Task::restart("readiness-log", move || {
        health::log_readiness_changes(ready.clone(), stop.clone()).map(Ok)
    }));
    if let Some(addr) = settings.healthz {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Health { addr, source })?;
        let stop = shutdown.clone();
        sup.spawn(Task::fatal("health-server", async move {
            health::serve(listener, health, stop)
                .await
                .map_err(Into::into)
        }));
    }
    Ok(())
}

/// Read the config and the leases (waiting while the config is missing), choose the
/// interface and the public IPs, and say what was chosen and why. `None` on shutdown.
async fn load_network<S: LeaseStore>(
    store: &S,
    settings: &AgentSettings,
    facts: &IfaceFacts,
    ready: &watch::Sender<Readiness>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<Network>, AgentError> {
    let Some((cfg, snapshot)) =
        load_config_and_snapshot(store, settings, ready, &mut shutdown).await?
    else {
        return Ok(None);
    };
    for notice in &cfg.notices {
        warn!(key = %notice.path, kind = %notice.kind.as_str(), "{notice}");
    }
    settings.check_with_config(&cfg)?;
    let need = Families::of(families(&cfg));
    let chosen = iface::choose(&settings.iface, facts, need)?;
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
    let wireguard = match cfg.backend.kind {
        BackendKind::Wireguard => Some(wireguard::prepare(&settings.wireguard)?),
        _ => None,
    };
    info!(
        network = %show(cfg.v4_network().map(|n| n.to_string())),
        ipv6_network = %show(cfg.v6_network().map(|n| n.to_string())),
        backend = %cfg.backend.kind,
        mtu,
        leases = snapshot.entries.len(),
        "network config loaded"
    );
    Ok(Some(Network {
        cfg,
        snapshot,
        chosen,
        mtu,
        wireguard,
    }))
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
        let delay = backoff.next_delay();
        warn!(retry_in_ms = delay.as_millis() as u64, "{problem}");
        ready.send_replace(Readiness::NotReady(problem));
        if sleep_or_shutdown(delay, shutdown).await {
            return Ok(None);
        }
    }
}

/// The subnets this node had before, from subnet.env, when it was written for this network.
fn previous_subnets(settings: &AgentSettings, cfg: &NetConfig) -> Previous {
    match SubnetEnv::read(&settings.subnet_file) {
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
    }
}

/// What the lease tasks give the rest of weftd.
struct LeaseLinks {
    /// The keeper's status.
    status: watch::Receiver<LeaseStatus>,
    /// This node's key, for the peer watch (set from the status).
    own: watch::Sender<Option<SubnetKey>>,
    /// The peers, for the data planes.
    feed: PeerFeed,
}

/// The lease keeper (its failure stops weftd: it holds the lease weftd's readiness is about,
/// and a new weftd finds and reuses the lease) and the peer watch (restarted: it re-lists).
fn start_lease(
    sup: &mut Supervisor,
    store: &Arc<EtcdStore>,
    settings: &AgentSettings,
    net: &Network,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
) -> LeaseLinks {
    let chosen = &net.chosen;
    let keeper = LeaseKeeper::new(
        store.clone(),
        net.cfg.clone(),
        KeeperSettings {
            identity: Identity {
                node_name: settings.node_name.clone(),
                public_ip: chosen.public_ip,
                public_ip_v6: chosen.public_ip_v6,
            },
            attrs: own_attrs(&net.cfg, &settings.node_name, chosen, net.wireguard_key()),
            ttl: settings.lease_ttl,
            previous: previous_subnets(settings, &net.cfg),
        },
    );
    let progress = Progress::default();
    let keeper = keeper.with_progress(progress.clone());
    let (status_tx, status) = watch::channel(LeaseStatus::Acquiring);
    let (own, _) = watch::channel(None);
    let (notice_tx, notice_rx) = mpsc::channel(64);
    let run = keeper
        .run(
            Some(net.snapshot.clone()),
            status_tx,
            notice_rx,
            shutdown.clone(),
        )
        .instrument(info_span!("keeper"));
    sup.spawn(Task::fatal("keeper", run.map(Ok)).with_progress(progress));

    let feed = PeerFeed::default();
    let rules =
        LeaseRules::from_config(&net.cfg).for_peers_of(chosen.public_ip, chosen.public_ip_v6);
    let mut initial = Some(net.snapshot.clone());
    let (store, me, m, f, o) = (
        store.clone(),
        settings.node_name.clone(),
        metrics.clone(),
        feed.clone(),
        own.clone(),
    );
    let stop = shutdown.clone();
    sup.spawn(Task::restart("peer-watch", move || {
        let (events, run) = mpsc::channel(64);
        let watch = WatchSettings {
            store: store.clone(),
            rules: rules.clone(),
            initial: initial.take(),
            me: Some(me.clone()),
            own: o.subscribe(),
            events,
            own_notices: notice_tx.clone(),
        };
        let (m, f, stop) = (m.clone(), f.clone(), stop.clone());
        async move {
            let watch = run_peer_watch(watch, move |r| record_watch_report(&m, r), stop);
            futures::join!(watch.instrument(info_span!("peer_watch")), f.forward(run));
            Ok(())
        }
    }));
    LeaseLinks { status, own, feed }
}

/// One family's data plane, as the lease loop feeds it.
struct Dataplane {
    family: IpFamily,
    /// This node's subnet of the family.
    own: watch::Sender<Option<IpNetwork>>,
    /// The backend settings (they follow the underlay's MTU).
    settings: watch::Sender<Settings>,
}

/// The data planes, and the underlay MTU they follow.
struct Dataplanes {
    planes: Vec<Dataplane>,
    underlay_mtu: watch::Receiver<u32>,
}

/// The task name of a family's data-plane reconciler.
fn dataplane_task(family: IpFamily) -> TaskName {
    match family {
        IpFamily::V4 => "dataplane-ipv4",
        IpFamily::V6 => "dataplane-ipv6",
    }
}

/// The task name of a family's firewall owner.
fn firewall_task(family: IpFamily) -> TaskName {
    match family {
        IpFamily::V4 => "firewall-ipv4",
        IpFamily::V6 => "firewall-ipv6",
    }
}

/// The data plane: one reconciler per address family (each with its own device and routes),
/// kicked by its kernel notification listener, and the underlay MTU watch. Each is restarted
/// when it fails: a reconciler reads the kernel back and is told every peer again. The first
/// sockets are opened here, so that a host where they cannot be is reported at start.
fn start_dataplanes(
    sup: &mut Supervisor,
    settings: &AgentSettings,
    net: &Network,
    feed: &PeerFeed,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
) -> Result<Dataplanes, AgentError> {
    let chosen = &net.chosen;
    let mut planes = Vec::new();
    // In a single-device WireGuard mode on a dual-stack cluster both planes share a device.
    let shared = (net.cfg.backend.kind == BackendKind::Wireguard
        && net
            .cfg
            .backend
            .wireguard
            .mode
            .shares_device(dual_stack(&net.cfg)))
    .then(SharedDevice::default);
    for family in families(&net.cfg) {
        let backend = dataplane_settings(
            &net.cfg,
            &settings.node_name,
            net.wireguard_key(),
            chosen,
            chosen.mtu,
            family,
        );
        let vxlan_device = device_name(net.cfg.backend.vni, family);
        let device = route_device_name(&net.cfg, family);
        let kernel = KernelSide {
            vxlan_device,
            device: device.clone(),
            family,
            wireguard: net.wireguard.clone(),
            shared: shared.clone(),
        };
        let mut first = Some(kernel.open()?);
        let (own, _) = watch::channel(None::<IpNetwork>);
        let (settings_tx, _) = watch::channel(backend);
        let names = LinkNames::new(device.clone()).with_link(chosen.index, chosen.name.clone());
        let progress = Progress::default();
        let name = dataplane_task(family);
        let unit = DataplaneUnit {
            name,
            kernel,
            family,
            own: own.clone(),
            settings: settings_tx.clone(),
            names,
            feed: feed.clone(),
            metrics: metrics.clone(),
            progress: progress.clone(),
            shutdown: shutdown.clone(),
        };
        let unit = Arc::new(unit);
        sup.spawn(
            Task::restart(name, move || {
                let (unit, opened) = (unit.clone(), first.take());
                async move { unit.run(opened).await }
            })
            .with_progress(progress),
        );
        planes.push(Dataplane {
            family,
            own,
            settings: settings_tx,
        });
    }
    // The underlay's MTU is followed: a change re-plans the data plane and rewrites
    // subnet.env (see `apply_underlay_mtu`).
    let (mtu_tx, mtu_rx) = watch::channel(chosen.mtu);
    let (index, iface) = (chosen.index, chosen.name.clone());
    let mut first = Some(reconciler::spawn_mtu_watch(
        index,
        iface.clone(),
        mtu_tx.clone(),
    )?);
    sup.spawn(
        Task::restart("mtu-watch", move || {
            let started = first.take().map(Ok).unwrap_or_else(|| {
                reconciler::spawn_mtu_watch(index, iface.clone(), mtu_tx.clone())
            });
            async move {
                match thread_ended(started?, "MTU watch").await {
                    // It gave up by itself (and said so): done.
                    ThreadEnd::Returned(_) => Ok(()),
                    panicked => Err(panicked.into()),
                }
            }
        })
        .may_finish(),
    );
    Ok(Dataplanes {
        planes,
        underlay_mtu: mtu_rx,
    })
}

/// A data-plane reconciler's kernel handles: netlink, and its notification listener with the
/// kicks it sends.
type Opened = (
    KernelNetlink,
    mpsc::Receiver<()>,
    std::thread::JoinHandle<()>,
);

/// What a data plane of one family opens in the kernel.
struct KernelSide {
    /// Looked for by every backend (a leftover one is removed).
    vxlan_device: String,
    /// The device overlay routes go through (the notification listener watches it).
    device: String,
    family: IpFamily,
    wireguard: Option<WireguardNode>,
    /// The WireGuard device the other family's plane also works on, when it is shared.
    shared: Option<SharedDevice>,
}

impl KernelSide {
    fn open(&self) -> Result<Opened, AgentError> {
        let mut nl = KernelNetlink::open(&self.vxlan_device, self.family)?;
        if let Some(w) = &self.wireguard {
            let mut wg = WireguardKernel::configured(
                self.device.clone(),
                self.family,
                w.private_key.clone(),
                w.implementation.clone(),
            );
            if let Some(shared) = &self.shared {
                wg = wg.sharing(shared.clone());
            }
            nl = nl.with_wireguard(wg);
        }
        let (kick_tx, kicks) = mpsc::channel(1);
        let monitor = reconciler::spawn_monitor(self.device.clone(), self.family, kick_tx)?;
        Ok((nl, kicks, monitor))
    }
}

/// What one family's reconciler task needs to (re)start.
struct DataplaneUnit {
    name: TaskName,
    kernel: KernelSide,
    family: IpFamily,
    own: watch::Sender<Option<IpNetwork>>,
    settings: watch::Sender<Settings>,
    names: LinkNames,
    feed: PeerFeed,
    metrics: Metrics,
    progress: Progress,
    shutdown: watch::Receiver<bool>,
}

impl DataplaneUnit {
    /// One run of the reconciler, with the handles opened at start (first run) or new ones.
    /// Ends with an error when its notification listener stops.
    async fn run(&self, opened: Option<Opened>) -> Result<(), crate::supervisor::TaskError> {
        let (nl, kicks, monitor) = match opened {
            Some(o) => o,
            None => self.kernel.open()?,
        };
        let inputs = reconciler::Inputs {
            own: self.own.subscribe(),
            settings: self.settings.subscribe(),
            peers: self.feed.subscribe(self.name).await,
            kicks,
            resync: RESYNC_INTERVAL,
        };
        let backend = self.settings.borrow().clone();
        let reconciler = Reconciler::new(nl, backend, self.names.clone(), self.metrics.clone())
            .with_progress(self.progress.clone());
        let span = info_span!("dataplane", device = %self.kernel.device, family = %self.family);
        tokio::select! {
            _ = reconciler.run(inputs, self.shutdown.clone()).instrument(span) => Ok(()),
            ended = thread_ended(monitor, "kernel notification listener") => Err(ended.into()),
        }
    }
}

/// The masquerade tables: one owner task per family (restarted when it fails: it reads its
/// table back), fed the rules once the subnet is known. Without --ip-masq, a table left by
/// an earlier run is removed once.
fn start_firewalls(
    sup: &mut Supervisor,
    settings: &AgentSettings,
    net: &Network,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
) -> Vec<(IpFamily, watch::Sender<Option<MasqRules>>)> {
    let mut masq = Vec::new();
    for family in families(&net.cfg) {
        let (tx, _) = watch::channel(None::<MasqRules>);
        masq.push((family, tx.clone()));
        if !settings.ip_masq {
            continue;
        }
        let (m, stop) = (metrics.clone(), shutdown.clone());
        sup.spawn(Task::restart(firewall_task(family), move || {
            let m = m.clone();
            run_firewall(
                NftFirewall::new(None).for_family(family),
                tx.subscribe(),
                RESYNC_INTERVAL,
                stop.clone(),
                move || {
                    m.firewall_repairs.inc();
                },
            )
            .instrument(info_span!("firewall", family = %family))
            .map(Ok)
        }));
    }
    if !settings.ip_masq {
        sup.spawn(
            Task::restart("leftover-table-check", || remove_leftover_tables().map(Ok)).may_finish(),
        );
    }
    masq
}

/// A table left by an earlier run with --ip-masq would keep masquerading: remove it.
async fn remove_leftover_tables() {
    let results =
        crate::firewall::cleanup_all_families(|f| NftFirewall::new(None).for_family(f)).await;
    for (family, result) in results {
        let family = crate::firewall::nft_family(family);
        match result {
            Ok(true) => {
                info!(table = %format!("{family} {}", crate::firewall::TABLE), "removed an nftables table left by an earlier run with --ip-masq")
            }
            Ok(false) => {}
            Err(e) => debug!(family, error = %e, "cannot check for a leftover nftables table"),
        }
    }
}

/// The loop that follows the lease: it hands the subnet to the watch, the data planes and
/// the firewalls, writes subnet.env, owns readiness, follows the underlay's MTU, and watches
/// the supervisor for a task whose failure stops weftd.
struct Follower<'a> {
    net: &'a Network,
    settings: &'a AgentSettings,
    metrics: &'a Metrics,
    ready: &'a watch::Sender<Readiness>,
    own: watch::Sender<Option<SubnetKey>>,
    planes: Dataplanes,
    masq: Vec<(IpFamily, watch::Sender<Option<MasqRules>>)>,
    /// What the peer health prober probes from (None with the probes off).
    mesh_own: Option<watch::Sender<OwnSide>>,
}

impl Follower<'_> {
    async fn run(
        &mut self,
        mut status: watch::Receiver<LeaseStatus>,
        sup: &mut Supervisor,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), AgentError> {
        let mut mtu = self.net.mtu;
        let mut underlay_mtu = self.net.chosen.mtu;
        let mut mtu_rx = self.planes.underlay_mtu.clone();
        let (mut mtu_open, mut status_open) = (true, true);
        loop {
            let now = status.borrow_and_update().clone();
            self.take_status(&now, mtu);
            // Wait for the next lease status; an MTU change is handled without touching the rest.
            loop {
                tokio::select! {
                    changed = status.changed(), if status_open => {
                        // The keeper is gone: the supervisor says why.
                        if changed.is_err() { status_open = false; continue; }
                        break;
                    }
                    changed = mtu_rx.changed(), if mtu_open => {
                        if changed.is_err() { mtu_open = false; continue; }
                        let new = *mtu_rx.borrow_and_update();
                        if new == underlay_mtu { continue; }
                        let change = MtuChange { iface: &self.net.chosen.name, old: underlay_mtu, new };
                        mtu = apply_underlay_mtu(self.net, &self.settings.node_name, change, &self.planes.planes);
                        underlay_mtu = new;
                        if let LeaseStatus::Held(h) = &now {
                            self.env_writer().write(&h.key, mtu);
                            self.tell_mesh(&h.key, mtu);
                        }
                    }
                    changed = shutdown.changed() => {
                        if changed.is_err() || *shutdown.borrow() { return Ok(()); }
                    }
                    fatal = sup.watch() => return Err(fatal.into()),
                }
            }
        }
    }

    fn env_writer(&self) -> EnvWriter<'_> {
        EnvWriter {
            path: &self.settings.subnet_file,
            cfg: &self.net.cfg,
            ip_masq: self.settings.ip_masq,
            metrics: self.metrics,
            ready: self.ready,
        }
    }

    /// The prober probes from this node's subnets with its pod MTU.
    fn tell_mesh(&self, key: &SubnetKey, pod_mtu: u32) {
        if let Some(tx) = &self.mesh_own {
            tx.send_replace(mesh_own_side(&self.net.cfg, key, pod_mtu));
        }
    }

    /// Hand a new lease status to everything that follows it.
    fn take_status(&self, status: &LeaseStatus, mtu: u32) {
        let cfg = &self.net.cfg;
        match status {
            LeaseStatus::Held(h) => {
                self.own.send_replace(Some(h.key));
                for plane in &self.planes.planes {
                    plane.own.send_replace(own_subnet(&h.key, plane.family));
                }
                for (family, tx) in &self.masq {
                    let network = match family {
                        IpFamily::V4 => cfg.v4_network().map(IpNetwork::V4),
                        IpFamily::V6 => cfg.v6_network().map(IpNetwork::V6),
                    };
                    let rules = network
                        .zip(own_subnet(&h.key, *family))
                        .and_then(|(network, own)| MasqRules::new(network, own).ok());
                    tx.send_replace(rules);
                }
                self.tell_mesh(&h.key, mtu);
                self.metrics.lease_held.set(1);
                self.metrics.lease_changes.inc();
                let expiry = h.expires_at.map(|e| {
                    let left = e.saturating_duration_since(Instant::now());
                    (SystemTime::now() + left)
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(0)
                });
                self.metrics.lease_expiry_seconds.set(expiry.unwrap_or(0));
                self.env_writer().write(&h.key, mtu);
            }
            LeaseStatus::Acquiring => {
                self.metrics.lease_held.set(0);
                self.ready
                    .send_replace(Readiness::NotReady("acquiring a subnet lease".into()));
            }
            LeaseStatus::Failed(why) => {
                self.metrics.lease_held.set(0);
                self.ready.send_replace(Readiness::NotReady(why.clone()));
            }
        }
    }
}

/// What the mesh needs to start.
struct MeshStart<'a> {
    settings: &'a MeshSettings,
    net: &'a Network,
    node: &'a str,
    view: &'a MeshView,
}

/// What carries overlay packets between nodes and through which device, per family, for
/// the mesh's texts.
fn overlay_words(cfg: &NetConfig, family: IpFamily) -> (String, String) {
    let device = route_device_name(cfg, family);
    let carrier = match cfg.backend.kind {
        BackendKind::Vxlan => format!("UDP {} (VXLAN)", cfg.backend.port),
        BackendKind::Wireguard => {
            format!("UDP {} (WireGuard)", cfg.backend.wireguard.port_of(family))
        }
        BackendKind::HostGw => "routing on the underlay".to_string(),
    };
    (carrier, device)
}

/// This node's side of the probes for a held lease.
fn mesh_own_side(cfg: &NetConfig, key: &SubnetKey, pod_mtu: u32) -> OwnSide {
    let overlay = cfg.backend.kind != BackendKind::HostGw;
    let side = |family| {
        own_subnet(key, family).map(|subnet| FamilySide {
            subnet,
            overlay: overlay.then(|| subnet.network()),
            pod_mtu,
        })
    };
    OwnSide {
        v4: side(IpFamily::V4),
        v6: side(IpFamily::V6),
    }
}

/// The peer health mesh: a responder per family on the probe port (bound here, so that a
/// port in use is reported at start) and the prober, each restarted when it fails. Returns
/// the sender of this node's side of the probes.
fn start_mesh(
    sup: &mut Supervisor,
    m: MeshStart<'_>,
    feed: &PeerFeed,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
) -> Result<watch::Sender<OwnSide>, AgentError> {
    let port = m.settings.port;
    let fams: Vec<IpFamily> = families(&m.net.cfg).collect();
    for &family in &fams {
        let bind = move || {
            mesh::responder::bind(family, port).map_err(|source| AgentError::ProbePort {
                port,
                family,
                source,
            })
        };
        let mut first = Some(bind()?);
        let counts = metrics.mesh.clone();
        let name: TaskName = match family {
            IpFamily::V4 => "health-responder-ipv4",
            IpFamily::V6 => "health-responder-ipv6",
        };
        let stop = shutdown.clone();
        sup.spawn(Task::restart(name, move || {
            let sock = first.take().map(Ok).unwrap_or_else(bind);
            let (counts, mut stop) = (counts.clone(), stop.clone());
            async move {
                let sock = sock.map_err(|e| crate::supervisor::TaskError::from(e.to_string()))?;
                tokio::select! {
                    served = mesh::responder::serve(sock, &counts) => {
                        served.map_err(|e| crate::supervisor::TaskError::from(format!("probe responder: {e}")))
                    }
                    _ = async { while !*stop.borrow() { if stop.changed().await.is_err() { break } } } => Ok(()),
                }
            }
        }));
    }
    let cfg = &m.net.cfg;
    let words = [
        overlay_words(cfg, IpFamily::V4),
        overlay_words(cfg, IpFamily::V6),
    ];
    let identity = ThisNode {
        node: m.node.to_string(),
        backend: cfg.backend.kind,
        public_ips: [
            m.net.chosen.public_ip.map(IpAddr::V4),
            m.net.chosen.public_ip_v6.map(IpAddr::V6),
        ]
        .into_iter()
        .flatten()
        .collect(),
        encapsulation: [words[0].0.clone(), words[1].0.clone()],
        device: [words[0].1.clone(), words[1].1.clone()],
    };
    let (own_tx, _) = watch::channel(OwnSide::default());
    let (settings, view, feed) = (m.settings.clone(), m.view.clone(), feed.clone());
    let (tx, metrics, stop) = (own_tx.clone(), metrics.mesh.clone(), shutdown.clone());
    sup.spawn(Task::restart("health-prober", move || {
        let prober = Prober {
            settings: settings.clone(),
            identity: identity.clone(),
            families: fams.clone(),
            view: view.clone(),
            metrics: metrics.clone(),
        };
        let (feed, own, stop) = (feed.clone(), tx.subscribe(), stop.clone());
        async move {
            let inputs = ProberInputs {
                peers: feed.subscribe("health-prober").await,
                own,
            };
            prober
                .run(inputs, stop)
                .await
                .map_err(crate::supervisor::TaskError::from)
        }
    }));
    Ok(own_tx)
}

/// The peer gauges follow every report; only a re-established watch counts as a restart.
fn record_watch_report(m: &Metrics, report: WatchReport) {
    let counts = match report {
        WatchReport::Listed(c) | WatchReport::Changed(c) => c,
        WatchReport::Relisted { counts, .. } => {
            m.watch_restarts.inc();
            counts
        }
    };
    m.peers.set(counts.peers as i64);
    m.invalid_leases.set(counts.invalid as i64);
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
    wireguard_key: Option<Key>,
    chosen: &ChosenIface,
    underlay_mtu: u32,
    family: IpFamily,
) -> Settings {
    let underlay = chosen_underlay(chosen, family).expect("the chosen interface has one");
    let underlay = Underlay {
        mtu: underlay_mtu,
        ..underlay
    };
    let own = OwnData {
        vtep_mac: vtep_mac(node_name, family),
        wireguard_key,
        public_ip_v6: chosen.public_ip_v6,
    };
    backend_settings(cfg, family, own, underlay)
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
    net: &Network,
    node_name: &str,
    change: MtuChange<'_>,
    dataplanes: &[Dataplane],
) -> u32 {
    let MtuChange { iface, old, new } = change;
    let cfg = &net.cfg;
    let (before, after) = (pod_mtu(cfg, old), pod_mtu(cfg, new));
    for plane in dataplanes {
        let settings = dataplane_settings(
            cfg,
            node_name,
            net.wireguard_key(),
            &net.chosen,
            new,
            plane.family,
        );
        plane.settings.send_replace(settings);
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
            (BackendKind::Wireguard, 1) => " and the WireGuard device follows",
            (BackendKind::Wireguard, _) => " and the WireGuard devices follow",
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
