//! `netctl check`: compare this host's kernel state and subnet.env with the leases.
//!
//! The comparison is pure ([`differences`]): it plans what weftd would program from the leases
//! (the same [`Backend::plan`] weftd uses), diffs it with what the kernel holds, and words
//! every operation the diff asks for as a difference an operator can act on. Beside the data
//! plane it checks what pods depend on locally: that weftd answers its health port, that
//! runtimes use weft's CNI config, and that the bridge and pod veths carry the pod MTU.
//! Reading etcd, the kernel, the files and the health port is in [`run`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde::Serialize;
use weft_backends::backend::Backend;
use weft_backends::dataplane::{KernelNetlink, Netlink};
use weft_backends::plan::{concerns, findings, Finding, KernelState, LinkNames};
use weft_backends::subnet_env::SubnetEnv;
use weft_backends::{BackendKind, IpFamily, MacAddr, Peer};

use crate::cli::Output;
use crate::config::NetConfig;
use crate::host::iface::ObservedIface;
use crate::host::install_cni::{runtime_choice, shadowed_message, RuntimeChoice, CONFLIST_NAME};
use crate::lease::watch::PeerSet;
use crate::lease::{validate, LeaseAttrs, LeaseRules, SubnetKey};
use crate::netctl::host_facts::{
    observe_bridge, probe_weftd, read_cni_facts, CniFacts, ObservedBridge, WeftdHealth,
    DEFAULT_BRIDGE,
};
use crate::netctl::{render_table, CommandOutput};
use crate::node::{
    backend_settings, device_name, dual_stack, families, own_subnet, pod_mtu, route_device_name,
    underlay_of, OwnData,
};
use crate::store::{LeaseStore, StoreError, StoredEntry};
use weft_backends::backend::vxlan::vtep_mac_in;
use weft_backends::backend::wireguard::kernel::{
    Implementation, SharedDevice, UserspaceFiles, WireguardKernel, USERSPACE_SOCKET_DIR,
};
use weft_backends::backend::wireguard::wireguard_data_in;
use weft_backends::backend::{BackendData, DataRules};

/// One way this host differs from what the leases say it should be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// `missing`, `extra`, `wrong` or `problem`.
    pub kind: &'static str,
    /// `route`, `neighbour`, `fdb`, `device`, `subnet.env`, `lease`, `peer`, `weftd`,
    /// `cni-config`, `bridge`, `veth`.
    pub object: &'static str,
    /// The peer node it concerns: its NodeName, or its public IP when the lease names none.
    pub peer: Option<String>,
    pub detail: String,
}

fn d(kind: &'static str, object: &'static str, detail: String) -> Difference {
    Difference {
        kind,
        object,
        peer: None,
        detail,
    }
}

impl Difference {
    fn with_peer(mut self, peer: Option<String>) -> Self {
        self.peer = peer;
        self
    }
}

/// What the check needs to know about this host, besides the kernel's data-plane state.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    pub env: Option<SubnetEnv>,
    pub underlay: Option<ObservedIface>,
    pub cni: CniFacts,
    /// The bridge weft's plugin attaches pods to, when it exists.
    pub bridge: Option<ObservedBridge>,
    pub weftd: WeftdHealth,
}

/// The differences that concern this host alone: weftd's health, which CNI config runtimes
/// use, and the bridge and pod MTUs.
fn local_differences(host: &HostFacts) -> Vec<Difference> {
    let mut out = Vec::new();
    match &host.weftd {
        WeftdHealth::NotChecked | WeftdHealth::Ready => {}
        WeftdHealth::NotAnswering { url, error } => out.push(d(
            "problem",
            "weftd",
            format!(
                "weftd does not answer {url} ({error}): it is not running on this host, or \
                 listens elsewhere (pass --healthz-ip and --healthz-port as given to weftd)"
            ),
        )),
        WeftdHealth::NotReady { url, why } => out.push(d(
            "problem",
            "weftd",
            format!("weftd is running but not ready ({url} says: {why})"),
        )),
    }
    if let RuntimeChoice::ShadowedBy(before) = runtime_choice(&host.cni.names, CONFLIST_NAME) {
        out.push(d(
            "problem",
            "cni-config",
            shadowed_message(&host.cni.dir, &before),
        ));
    }
    if let (Some(env), Some(bridge)) = (&host.env, &host.bridge) {
        let (want, from) = match host.cni.weft.as_ref().and_then(|w| w.mtu) {
            Some(m) => (m, format!("the mtu of {CONFLIST_NAME}")),
            None => (env.mtu, "FLANNEL_MTU".to_string()),
        };
        if bridge.mtu != want {
            out.push(d(
                "wrong",
                "bridge",
                format!(
                    "{} MTU {} (want {want}, {from}); set it with `ip link set {} mtu {want}`",
                    bridge.name, bridge.mtu, bridge.name
                ),
            ));
        }
        for (veth, mtu) in bridge.veths.iter().filter(|(_, m)| *m != want) {
            out.push(d(
                "wrong",
                "veth",
                format!(
                    "{veth} on {} MTU {mtu} (want {want}, {from}): its pod was set up with \
                     another MTU; recreate the pod",
                    bridge.name
                ),
            ));
        }
    }
    out
}

/// What `netctl check` looked at, for the first lines of its report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Checked {
    /// This node's name from its lease (its public IP when the lease names none).
    pub node: Option<String>,
    /// The subnets its subnet file names.
    pub subnets: Vec<String>,
    pub subnet_file: PathBuf,
    /// Whether the subnet file exists.
    pub subnet_file_found: bool,
    /// The peers' leases compared.
    pub peers: usize,
    /// The CNI config a runtime uses, when there is one.
    pub cni_config: Option<PathBuf>,
    pub cni_conf_dir: PathBuf,
}

impl Checked {
    /// "node h1, subnet 10.244.1.0/24 (from /run/weft/subnet.env)" and the CNI config line.
    fn header(&self) -> String {
        let node = self
            .node
            .as_ref()
            .map_or_else(|| "this host".to_string(), |n| format!("node {n}"));
        let file = self.subnet_file.display();
        let subnet = match (self.subnet_file_found, self.subnets.as_slice()) {
            (false, _) => format!("no subnet file at {file}"),
            (true, []) => format!("{file} names no subnet"),
            (true, s) => format!("subnet {} (from {file})", s.join(" ")),
        };
        let cni = match &self.cni_config {
            Some(p) => format!("CNI config runtimes use: {}", p.display()),
            None => format!(
                "CNI config runtimes use: none in {}",
                self.cni_conf_dir.display()
            ),
        };
        format!("checked {node}, {subnet}\n{cni}\n")
    }
}

/// Every difference between the host and the leases. `entries` are all lease entries;
/// `observed` is what the kernel holds for each enabled family.
pub fn differences(
    cfg: &NetConfig,
    entries: &[StoredEntry],
    host: &HostFacts,
    observed: &[(IpFamily, KernelState)],
) -> Vec<Difference> {
    let mut out = local_differences(host);
    let Some(env) = &host.env else {
        out.push(d(
            "missing",
            "subnet.env",
            "no subnet file: weftd has not written one on this host (is it running?)".into(),
        ));
        return out;
    };
    out.extend(network_differences(cfg, env));
    let Some(own_key) = SubnetKey::new(env.subnet, env.ipv6_subnet) else {
        out.push(d(
            "problem",
            "subnet.env",
            "the subnet file names no subnet".into(),
        ));
        return out;
    };
    let own_name = own_key.to_string();
    let Some(own) = entries.iter().find(|e| e.name == own_name) else {
        out.push(d(
            "missing",
            "lease",
            format!(
                "no lease in etcd for this host's subnet {} (key {own_name}; expired or deleted?)",
                own_key.cidrs()
            ),
        ));
        return out;
    };
    let own_attrs = match LeaseAttrs::decode(&own.value) {
        Ok(a) => a,
        Err(e) => {
            out.push(d(
                "problem",
                "lease",
                format!("this host's lease (key {own_name}) is unreadable: {e}"),
            ));
            return out;
        }
    };
    let Some(underlay) = &host.underlay else {
        out.push(d(
            "problem",
            "device",
            format!(
                "no interface on this host holds the lease's public IP {}; pass --iface",
                own_attrs
                    .public_ip
                    .filter(|ip| !ip.is_unspecified())
                    .map(|ip| ip.to_string())
                    .or(own_attrs.public_ip_v6.map(|ip| ip.to_string()))
                    .unwrap_or_else(|| "(none)".into())
            ),
        ));
        return out;
    };
    let want_mtu = pod_mtu(cfg, underlay.mtu);
    if env.mtu != want_mtu {
        out.push(d(
            "wrong",
            "subnet.env",
            format!(
                "FLANNEL_MTU is {}, want {want_mtu} ({} MTU {} with the {} backend)",
                env.mtu, underlay.name, underlay.mtu, cfg.backend.kind
            ),
        ));
    }

    let rules = LeaseRules::from_config(cfg).for_peers_of(
        own_attrs.public_ip.filter(|ip| !ip.is_unspecified()),
        own_attrs.public_ip_v6,
    );
    let peers = usable_peers(
        &rules,
        entries,
        own_key,
        own_attrs.node_name.clone(),
        &mut out,
    );
    for (family, observed) in observed {
        family_differences(
            cfg, *family, &own_key, &own_attrs, underlay, &peers, observed, &mut out,
        );
    }
    out
}

/// Whether the cluster networks in subnet.env are the config's.
fn network_differences(cfg: &NetConfig, env: &SubnetEnv) -> Vec<Difference> {
    let text = |n: Option<String>| n.unwrap_or_else(|| "(absent)".into());
    let v4 = |n: Option<ipnetwork::Ipv4Network>| n.map(|n| n.to_string());
    let v6 = |n: Option<ipnetwork::Ipv6Network>| n.map(|n| n.to_string());
    [
        ("FLANNEL_NETWORK", v4(env.network), v4(cfg.v4_network())),
        (
            "FLANNEL_IPV6_NETWORK",
            v6(env.ipv6_network),
            v6(cfg.v6_network()),
        ),
    ]
    .into_iter()
    .filter(|(_, have, want)| have != want)
    .map(|(key, have, want)| {
        d(
            "wrong",
            "subnet.env",
            format!(
                "{key} is {}, the network config says {}",
                text(have),
                text(want)
            ),
        )
    })
    .collect()
}

/// The peers weftd programs from these leases: those that pass validation, with the oldest
/// lease keeping a subnet, public IP or WireGuard key that several claim (weftd's own
/// [`PeerSet`]). Each lease that is not used is reported, with why.
fn usable_peers(
    rules: &LeaseRules,
    entries: &[StoredEntry],
    own_key: SubnetKey,
    own_node: Option<String>,
    out: &mut Vec<Difference>,
) -> Vec<Peer> {
    let own_name = own_key.to_string();
    let node_of = |name: &str| {
        entries
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| LeaseAttrs::decode(&e.value).ok())
            .and_then(|a| a.node_name)
    };
    for e in entries.iter().filter(|e| e.name != own_name) {
        if let Err(err) = validate(rules, &e.name, &e.value) {
            out.push(
                d(
                    "problem",
                    "lease",
                    format!(
                        "lease key {} is invalid and ignored: {err}",
                        e.name.escape_debug()
                    ),
                )
                .with_peer(node_of(&e.name)),
            );
        }
    }
    let mut set = PeerSet::new(rules.clone(), own_node);
    set.set_own(Some(own_key));
    set.reset(entries);
    for (name, why) in set.refused() {
        out.push(
            d(
                "problem",
                "lease",
                format!(
                    "lease key {} is ignored, as weftd ignores it: {why}",
                    name.escape_debug()
                ),
            )
            .with_peer(node_of(name)),
        );
    }
    set.peers().cloned().collect()
}

/// The differences of one family's data plane.
#[allow(clippy::too_many_arguments)]
fn family_differences(
    cfg: &NetConfig,
    family: IpFamily,
    own_key: &SubnetKey,
    own_attrs: &LeaseAttrs,
    underlay: &ObservedIface,
    peers: &[Peer],
    observed: &KernelState,
    out: &mut Vec<Difference>,
) {
    let (addrs, field, raw) = match family {
        IpFamily::V4 => (
            underlay
                .v4
                .iter()
                .map(|n| IpNetwork::V4(*n))
                .collect::<Vec<_>>(),
            "BackendData",
            own_attrs.backend_data.as_ref(),
        ),
        IpFamily::V6 => (
            underlay.v6.iter().map(|n| IpNetwork::V6(*n)).collect(),
            "BackendV6Data",
            own_attrs.backend_v6_data.as_ref(),
        ),
    };
    let Some(own_subnet) = own_subnet(own_key, family) else {
        out.push(d(
            "problem",
            "lease",
            format!(
                "this host's lease has no {family} subnet, but the network config enables {family}"
            ),
        ));
        return;
    };
    let Some(base) = underlay_of(underlay.index, underlay.mtu, &addrs) else {
        out.push(d(
            "problem",
            "device",
            format!("{} has no {family} address", underlay.name),
        ));
        return;
    };
    let device = route_device_name(cfg, family);
    let names = LinkNames::new(device.clone()).with_link(underlay.index, underlay.name.clone());
    let rules = DataRules {
        vni: cfg.backend.vni,
    };
    let own = match BackendData::decode(cfg.backend.kind, field, raw, rules) {
        Ok(data) => OwnData {
            // host-gw uses neither.
            vtep_mac: data.and_then(vtep_mac_in).unwrap_or(MacAddr([0; 6])),
            wireguard_key: data.and_then(wireguard_data_in).map(|w| w.public_key),
            public_ip_v6: own_attrs.public_ip_v6,
        },
        Err(e) => {
            let what = match cfg.backend.kind {
                BackendKind::Wireguard => "WireGuard PublicKey",
                _ => "VtepMAC",
            };
            out.push(d(
                "problem",
                "lease",
                format!("this host's lease has no usable {family} {what}: {e}"),
            ));
            return;
        }
    };
    let settings = backend_settings(cfg, family, own, base);
    let plan = settings.plan(own_subnet, peers);
    let peer_at = |subnet: IpNetwork| {
        peers
            .iter()
            .find(|p| p.subnet_of(family) == Some(subnet))
            .map(|p| peer_label(p, family))
    };
    for (subnet, why) in &plan.refused {
        out.push(
            d("problem", "peer", format!("{subnet} is refused: {why}")).with_peer(peer_at(*subnet)),
        );
    }
    for (subnet, why) in &plan.unreachable {
        out.push(
            d(
                "problem",
                "peer",
                format!("{subnet} cannot be programmed: {why}"),
            )
            .with_peer(peer_at(*subnet)),
        );
    }

    for (op, finding) in findings(observed, &plan.state, &names, cfg.backend.kind) {
        let Finding {
            kind,
            object,
            detail,
        } = finding;
        let peer = peers
            .iter()
            .find(|p| concerns(&op, p, family))
            .map(|p| peer_label(p, family));
        out.push(d(kind, object, detail).with_peer(peer));
    }
}

/// How a peer is named in the report: its NodeName, else its public IP of `family`.
fn peer_label(p: &Peer, family: IpFamily) -> String {
    p.node_name.clone().unwrap_or_else(|| {
        p.public_ip_of(family)
            .map_or_else(|| "-".into(), |ip| ip.to_string())
    })
}

/// Render the result; exit 1 when anything differs.
pub fn render(checked: &Checked, diffs: &[Difference], output: Output) -> CommandOutput {
    let mut out = CommandOutput {
        code: u8::from(!diffs.is_empty()),
        ..Default::default()
    };
    match output {
        Output::Json => {
            out.stdout = serde_json::to_string_pretty(&serde_json::json!({
                "ok": diffs.is_empty(),
                "checked": checked,
                "differences": diffs,
            }))
            .expect("serializable")
                + "\n";
        }
        Output::Table | Output::Wide => {
            out.stdout = checked.header();
            if diffs.is_empty() {
                out.stdout.push_str(&format!(
                    "ok: kernel, subnet.env and CNI config match the leases ({} peer{})\n",
                    checked.peers,
                    if checked.peers == 1 { "" } else { "s" }
                ));
            } else {
                let rows: Vec<Vec<String>> = diffs
                    .iter()
                    .map(|x| {
                        vec![
                            x.kind.to_uppercase(),
                            x.object.to_string(),
                            x.peer.clone().unwrap_or_else(|| "-".into()),
                            x.detail.clone(),
                        ]
                    })
                    .collect();
                out.stdout
                    .push_str(&render_table(&["DIFF", "OBJECT", "PEER", "DETAIL"], &rows));
                out.stderr = format!("{} difference(s) found\n", diffs.len());
            }
        }
    }
    out
}

/// Where `netctl check` looks.
#[derive(Clone, Copy, Debug)]
pub struct CheckOptions<'a> {
    pub subnet_file: &'a Path,
    /// `--iface`; default: the interface holding this host's public IP.
    pub iface: Option<&'a str>,
    /// `--net-config`; default: the config in etcd.
    pub net_config: Option<&'a Path>,
    pub cni_conf_dir: &'a Path,
    /// weftd's `--healthz-ip` and `--healthz-port`; `None` when the port is 0.
    pub healthz: Option<SocketAddr>,
    pub output: Output,
}

/// `netctl check` on this host.
/// The network config: from `--net-config` when given, else etcd's.
fn load_config(net_config: Option<&Path>, in_etcd: Option<&[u8]>) -> Result<NetConfig, CheckError> {
    let file_cfg =
        match net_config {
            None => None,
            Some(p) => Some(std::fs::read(p).map_err(|e| {
                CheckError::Other(format!("network config file {}: {e}", p.display()))
            })?),
        };
    let text = file_cfg.as_deref().or(in_etcd);
    match text.map(NetConfig::parse) {
        Some(Ok(c)) => Ok(c),
        Some(Err(e)) => Err(CheckError::Other(format!(
            "the network config in etcd is invalid: {e}"
        ))),
        None => Err(CheckError::Other("no network config in etcd".into())),
    }
}

/// The WireGuard implementation whose device `netctl check` reads: a userspace one when its
/// socket for `device` is there (weftd may use one even where the kernel has WireGuard),
/// else the kernel's when the kernel has WireGuard.
fn observed_implementation(device: &str) -> Implementation {
    let socket_dir = std::path::Path::new(USERSPACE_SOCKET_DIR);
    let userspace = UserspaceFiles::of(socket_dir, device).socket.exists();
    if !userspace && crate::dataplane::wireguard::kernel_has_wireguard() {
        Implementation::Kernel
    } else {
        Implementation::userspace("wireguard-go")
    }
}

/// The WireGuard device of a family's data plane, as `netctl check` reads it.
struct WireguardDeviceOf {
    name: String,
    /// It serves both families (a single-device mode on a dual-stack cluster): each family
    /// is checked against its part of it.
    shared: bool,
}

/// What the kernel holds for each family's data plane (the VXLAN device name per family,
/// and the WireGuard device's with that backend).
async fn observe_data_planes(
    wanted: Vec<(IpFamily, String, Option<WireguardDeviceOf>)>,
) -> Result<Vec<(IpFamily, KernelState)>, CheckError> {
    tokio::task::spawn_blocking(move || {
        wanted
            .into_iter()
            .map(|(family, device, wireguard)| {
                KernelNetlink::open(&device, family)
                    .map(|nl| match wireguard {
                        Some(wg) => {
                            let implementation = observed_implementation(&wg.name);
                            let reader = WireguardKernel::reader(wg.name, family, implementation);
                            nl.with_wireguard(match wg.shared {
                                true => reader.sharing(SharedDevice::default()),
                                false => reader,
                            })
                        }
                        None => nl,
                    })
                    .and_then(|mut nl| nl.observe())
                    .map(|state| (family, state))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| CheckError::Other(e.to_string()))?
    .map_err(|e| CheckError::Other(format!("reading the kernel: {e}")))
}

pub async fn run<S: LeaseStore>(
    store: &S,
    opts: CheckOptions<'_>,
) -> Result<CommandOutput, CheckError> {
    let CheckOptions {
        subnet_file,
        iface,
        net_config,
        cni_conf_dir,
        healthz,
        output,
    } = opts;
    let env = SubnetEnv::read(subnet_file).map_err(|e| CheckError::Other(e.to_string()))?;
    let snap = store.snapshot(net_config.is_none()).await?;
    let cfg = load_config(net_config, snap.config.as_deref())?;
    let facts = crate::host::iface::probe::facts(&Default::default())
        .await
        .map_err(|e| CheckError::Other(e.to_string()))?;
    let own_attrs = env.as_ref().and_then(|env| {
        let key = SubnetKey::new(env.subnet, env.ipv6_subnet)?.to_string();
        let e = snap.entries.iter().find(|e| e.name == key)?;
        LeaseAttrs::decode(&e.value).ok()
    });
    let public_ip = own_attrs
        .as_ref()
        .and_then(|a| a.public_ip)
        .filter(|ip| !ip.is_unspecified());
    let public_ip_v6 = own_attrs.as_ref().and_then(|a| a.public_ip_v6);
    let underlay = facts
        .ifaces
        .iter()
        .find(|i| match iface {
            Some(name) => i.name == name,
            None => {
                public_ip.is_some_and(|ip| i.v4.iter().any(|n| n.ip() == ip))
                    || public_ip_v6.is_some_and(|ip| i.v6.iter().any(|n| n.ip() == ip))
            }
        })
        .cloned();
    if let (Some(name), None) = (iface, &underlay) {
        return Err(CheckError::Other(format!(
            "--iface {name}: no such interface"
        )));
    }
    let shared = cfg.backend.wireguard.mode.shares_device(dual_stack(&cfg));
    let wanted: Vec<(IpFamily, String, Option<WireguardDeviceOf>)> = families(&cfg)
        .map(|f| {
            let wireguard =
                (cfg.backend.kind == BackendKind::Wireguard).then(|| WireguardDeviceOf {
                    name: route_device_name(&cfg, f),
                    shared,
                });
            (f, device_name(cfg.backend.vni, f), wireguard)
        })
        .collect();
    let cni = read_cni_facts(cni_conf_dir).map_err(|e| {
        CheckError::Other(format!(
            "cannot list the CNI config directory {}: {e}",
            cni_conf_dir.display()
        ))
    })?;
    let bridge_name = cni
        .weft
        .as_ref()
        .map_or_else(|| DEFAULT_BRIDGE.to_string(), |w| w.bridge.clone());
    let observed = observe_data_planes(wanted).await?;
    let bridge = tokio::task::spawn_blocking(move || observe_bridge(&bridge_name))
        .await
        .map_err(|e| CheckError::Other(e.to_string()))?
        .map_err(|e| CheckError::Other(format!("reading the kernel: {e}")))?;
    let weftd = probe_weftd(healthz).await;

    let own_key = env
        .as_ref()
        .and_then(|env| SubnetKey::new(env.subnet, env.ipv6_subnet));
    let checked = Checked {
        node: own_attrs.as_ref().and_then(|a| {
            a.node_name
                .clone()
                .or(public_ip.map(|ip| ip.to_string()))
                .or(public_ip_v6.map(|ip| ip.to_string()))
        }),
        subnets: own_key
            .iter()
            .flat_map(|k| {
                [
                    k.v4_subnet().map(|s| s.to_string()),
                    k.v6.map(|s| s.to_string()),
                ]
            })
            .flatten()
            .collect(),
        subnet_file: subnet_file.to_path_buf(),
        subnet_file_found: env.is_some(),
        peers: snap.entries.len().saturating_sub(1),
        cni_config: match runtime_choice(&cni.names, CONFLIST_NAME) {
            RuntimeChoice::Weft => Some(CONFLIST_NAME.to_string()),
            RuntimeChoice::ShadowedBy(before) => before.into_iter().next(),
            RuntimeChoice::NoWeft { first } => first,
        }
        .map(|n| cni_conf_dir.join(n)),
        cni_conf_dir: cni_conf_dir.to_path_buf(),
    };
    let host = HostFacts {
        env,
        underlay,
        cni,
        bridge,
        weftd,
    };
    let diffs = differences(&cfg, &snap.entries, &host, &observed);
    Ok(render(&checked, &diffs, output))
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netctl::host_facts::WeftPluginConf;
    use crate::store::Revision;
    use weft_backends::backend::vxlan::VxlanSettings;
    use weft_backends::backend::Settings;
    use weft_backends::backend::{BackendData, VxlanData};
    use weft_backends::plan::Underlay;

    fn cfg() -> NetConfig {
        NetConfig::parse(
            br#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap()
    }

    fn entry(subnet: &str, node: &str, ip: &str, mac: u8) -> StoredEntry {
        let net: ipnetwork::Ipv4Network = subnet.parse().unwrap();
        let attrs = LeaseAttrs::for_node(
            node,
            BackendKind::Vxlan,
            Some(crate::lease::Endpoint {
                public_ip: ip.parse().unwrap(),
                data: Some(BackendData::Vxlan(VxlanData {
                    vni: 1,
                    vtep_mac: MacAddr([2, 0, 0, 0, 0, mac]),
                })),
            }),
            None,
        );
        StoredEntry {
            name: SubnetKey::v4(net).to_string(),
            value: attrs.encode(),
            create_revision: Revision(1),
            mod_revision: Revision(1),
            ttl_lease: None,
        }
    }

    fn host() -> HostFacts {
        HostFacts {
            env: Some(SubnetEnv {
                network: Some("10.244.0.0/16".parse().unwrap()),
                subnet: Some("10.244.1.0/24".parse().unwrap()),
                ipv6_network: None,
                ipv6_subnet: None,
                mtu: 1450,
                ip_masq: false,
            }),
            underlay: Some(ObservedIface {
                index: 2,
                name: "eth0".into(),
                mtu: 1500,
                up: true,
                v4: vec!["10.99.0.11/24".parse().unwrap()],
                v6: vec![],
            }),
            ..Default::default()
        }
    }

    fn entries() -> Vec<StoredEntry> {
        vec![
            entry("10.244.1.0/24", "h1", "10.99.0.11", 1),
            entry("10.244.2.0/24", "h2", "10.99.0.12", 2),
        ]
    }

    /// What weftd would program: the plan for these leases.
    fn v4(state: KernelState) -> Vec<(IpFamily, KernelState)> {
        vec![(IpFamily::V4, state)]
    }

    fn programmed(cfg: &NetConfig, entries: &[StoredEntry]) -> KernelState {
        let diffs_against_empty = differences(cfg, entries, &host(), &v4(KernelState::default()));
        assert!(diffs_against_empty
            .iter()
            .any(|d| d.kind == "missing" && d.object == "device"));
        let rules = LeaseRules::from_config(cfg);
        let peers: Vec<Peer> = entries[1..]
            .iter()
            .map(|e| validate(&rules, &e.name, &e.value).unwrap())
            .collect();
        Settings::Vxlan(VxlanSettings {
            device: "weft.1".into(),
            vni: 1,
            port: 8472,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            mtu: 1450,
            underlay: Underlay {
                index: 2,
                ip: "10.99.0.11".parse().unwrap(),
                mtu: 1500,
                connected: vec!["10.99.0.0/24".parse().unwrap()],
            },
            direct_routing: false,
        })
        .plan("10.244.1.0/24".parse().unwrap(), &peers)
        .state
    }

    #[test]
    fn a_host_as_programmed_has_no_differences() {
        let state = programmed(&cfg(), &entries());
        assert_eq!(differences(&cfg(), &entries(), &host(), &v4(state)), vec![]);
        let out = render(&Checked::default(), &[], Output::Table);
        assert_eq!(out.code, 0);
    }

    #[test]
    fn a_younger_lease_copying_a_claim_is_reported_and_not_expected_in_the_kernel() {
        let state = programmed(&cfg(), &entries());
        // h2's public IP again, in a lease created later: weftd ignores it.
        let mut copy = entry("10.244.7.0/24", "h7", "10.99.0.12", 7);
        copy.create_revision = Revision(5);
        let mut all = entries();
        all.push(copy);
        let diffs = differences(&cfg(), &all, &host(), &v4(state));
        assert_eq!(diffs.len(), 1, "{diffs:#?}");
        assert_eq!((diffs[0].kind, diffs[0].object), ("problem", "lease"));
        assert_eq!(diffs[0].peer.as_deref(), Some("h7"));
        assert_eq!(
            diffs[0].detail,
            "lease key 10.244.7.0-24 is ignored, as weftd ignores it: the older lease 10.244.2.0-24 already holds its public IP 10.99.0.12"
        );
    }

    #[test]
    fn every_kind_of_drift_is_listed() {
        let mut state = programmed(&cfg(), &entries());
        state.routes.clear();
        state
            .vxlan
            .fdb
            .insert(weft_backends::backend::vxlan::FdbEntry {
                mac: MacAddr([2, 0, 0, 0, 0, 9]),
                dst: "10.99.0.99".parse().unwrap(),
            });
        state.vxlan.device.as_mut().unwrap().mtu = 1400;
        let mut h = host();
        h.env.as_mut().unwrap().mtu = 1500;
        let diffs = differences(&cfg(), &entries(), &h, &v4(state));
        let has = |kind: &str, object: &str, text: &str| {
            diffs
                .iter()
                .any(|x| x.kind == kind && x.object == object && x.detail.contains(text))
        };
        assert!(
            has(
                "missing",
                "route",
                "10.244.2.0/24 via 10.244.2.0 dev weft.1 onlink"
            ),
            "{diffs:?}"
        );
        assert!(
            has("extra", "fdb", "02:00:00:00:00:09 dst 10.99.0.99"),
            "{diffs:?}"
        );
        assert!(has("wrong", "device", "MTU 1400 (want 1450)"), "{diffs:?}");
        assert!(
            has("wrong", "subnet.env", "FLANNEL_MTU is 1500, want 1450"),
            "{diffs:?}"
        );
        let out = render(&Checked::default(), &diffs, Output::Table);
        assert_eq!(out.code, 1);
        assert!(out.stdout.contains("MISSING"));
        let json: serde_json::Value =
            serde_json::from_str(&render(&Checked::default(), &diffs, Output::Json).stdout)
                .unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["differences"].as_array().unwrap().len(), diffs.len());
    }

    #[test]
    fn a_missing_subnet_file_or_lease_is_reported_not_guessed() {
        let mut h = host();
        h.env = None;
        let diffs = differences(&cfg(), &entries(), &h, &v4(KernelState::default()));
        assert_eq!(diffs.len(), 1);
        assert_eq!(diffs[0].object, "subnet.env");
        let diffs = differences(
            &cfg(),
            &entries()[1..],
            &host(),
            &v4(KernelState::default()),
        );
        assert_eq!((diffs[0].kind, diffs[0].object), ("missing", "lease"));
    }

    #[test]
    fn differences_name_interfaces_and_print_no_debug_values() {
        let hostgw = NetConfig::parse(
            br#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#,
        )
        .unwrap();
        let diffs = differences(&hostgw, &entries(), &host(), &v4(KernelState::default()));
        assert!(
            diffs.iter().any(|x| x.kind == "missing"
                && x.object == "route"
                && x.detail == "10.244.2.0/24 via 10.99.0.12 dev eth0"),
            "{diffs:?}"
        );

        let mut state = programmed(&cfg(), &entries());
        let dev = state.vxlan.device.as_mut().unwrap();
        dev.addresses.clear();
        let mut moved = state.clone();
        moved.vxlan.device.as_mut().unwrap().underlay_index = 5;
        let mut all = differences(&cfg(), &entries(), &host(), &v4(state));
        assert!(
            all.iter()
                .any(|x| x.detail == "weft.1: addresses none (want 10.244.1.0/32)"),
            "{all:?}"
        );
        let recreate = differences(&cfg(), &entries(), &host(), &v4(moved));
        assert!(
            recreate.iter().any(|x| x.detail.starts_with(
                "weft.1 must be re-created: it is weft.1 (vxlan id 1 port 8472 local 10.99.0.11 dev interface index 5"
            ) && x.detail.ends_with("dev eth0, learning off)")),
            "{recreate:?}"
        );
        all.extend(recreate);
        all.extend(diffs);
        for x in &all {
            for debug_form in ["#", "Some(", "None", "[", "\""] {
                assert!(!x.detail.contains(debug_form), "{debug_form} in {x:?}");
            }
        }
    }

    #[test]
    fn each_row_names_the_peer_it_concerns() {
        let mut state = programmed(&cfg(), &entries());
        state.routes.clear();
        state.vxlan.neighbours.clear();
        state
            .vxlan
            .fdb
            .insert(weft_backends::backend::vxlan::FdbEntry {
                mac: MacAddr([2, 0, 0, 0, 0, 9]),
                dst: "10.99.0.99".parse().unwrap(),
            });
        let mut with_junk = entries();
        with_junk.push(StoredEntry {
            name: "10.244.7.0-24".into(),
            value: br#"{"PublicIP":"10.99.0.17","BackendType":"vxlan","NodeName":"h7"}"#.to_vec(),
            create_revision: Revision(1),
            mod_revision: Revision(1),
            ttl_lease: None,
        });
        let diffs = differences(&cfg(), &with_junk, &host(), &v4(state));
        let peer_of = |object: &str| {
            diffs
                .iter()
                .find(|x| x.object == object)
                .unwrap_or_else(|| panic!("no {object} in {diffs:?}"))
                .peer
                .clone()
        };
        assert_eq!(peer_of("route").as_deref(), Some("h2"));
        assert_eq!(peer_of("neighbour").as_deref(), Some("h2"));
        assert_eq!(peer_of("fdb"), None, "a stale entry no lease explains");
        assert_eq!(
            peer_of("lease").as_deref(),
            Some("h7"),
            "an invalid lease's node"
        );
        let out = render(&Checked::default(), &diffs, Output::Table);
        let header = out.stdout.lines().nth(2).unwrap();
        assert!(header.starts_with("DIFF"), "{}", out.stdout);
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            ["DIFF", "OBJECT", "PEER", "DETAIL"]
        );
        let route = out.stdout.lines().find(|l| l.contains(" route ")).unwrap();
        assert_eq!(route.split_whitespace().nth(2), Some("h2"), "{route}");
    }

    #[test]
    fn the_report_starts_with_the_node_subnet_and_file_checked() {
        let checked = Checked {
            node: Some("h1".into()),
            subnets: vec!["10.244.1.0/24".into(), "fc00:0:0:1::/64".into()],
            subnet_file: "/run/weft/subnet.env".into(),
            subnet_file_found: true,
            peers: 2,
            cni_config: Some("/etc/cni/net.d/10-weft.conflist".into()),
            cni_conf_dir: "/etc/cni/net.d".into(),
        };
        let out = render(&checked, &[], Output::Table);
        assert_eq!(
            out.stdout,
            "checked node h1, subnet 10.244.1.0/24 fc00:0:0:1::/64 (from /run/weft/subnet.env)\n\
             CNI config runtimes use: /etc/cni/net.d/10-weft.conflist\n\
             ok: kernel, subnet.env and CNI config match the leases (2 peers)\n"
        );
        let missing = Checked {
            subnet_file_found: false,
            node: None,
            subnets: vec![],
            cni_config: None,
            ..checked.clone()
        };
        let text = render(&missing, &[], Output::Table).stdout;
        assert!(
            text.starts_with(
                "checked this host, no subnet file at /run/weft/subnet.env\n\
                 CNI config runtimes use: none in /etc/cni/net.d\n"
            ),
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&checked, &[], Output::Json).stdout).unwrap();
        assert_eq!(json["checked"]["node"], "h1");
        assert_eq!(json["checked"]["subnetFile"], "/run/weft/subnet.env");
    }

    #[test]
    fn a_silent_weftd_a_shadowed_conflist_and_wrong_pod_mtus_are_problems() {
        let state = programmed(&cfg(), &entries());
        let mut h = host();
        h.weftd = WeftdHealth::NotAnswering {
            url: "http://127.0.0.1:8471/healthz".into(),
            error: "connection refused".into(),
        };
        h.cni = CniFacts {
            dir: "/etc/cni/net.d".into(),
            names: vec![
                "10-weft.conflist".into(),
                "10-containerd-net.conflist".into(),
            ],
            weft: None,
        };
        h.bridge = Some(ObservedBridge {
            name: "cni0".into(),
            mtu: 1500,
            veths: vec![("veth0a".into(), 1450), ("veth0b".into(), 1500)],
        });
        let diffs = differences(&cfg(), &entries(), &h, &v4(state.clone()));
        let details = |object: &str| -> Vec<String> {
            diffs
                .iter()
                .filter(|x| x.object == object)
                .map(|x| format!("{} {}", x.kind, x.detail))
                .collect()
        };
        assert_eq!(details("weftd").len(), 1, "{diffs:?}");
        assert!(details("weftd")[0].starts_with(
            "problem weftd does not answer http://127.0.0.1:8471/healthz (connection refused)"
        ));
        let cni = details("cni-config");
        assert_eq!(cni.len(), 1, "{diffs:?}");
        assert!(
            cni[0].starts_with(
                "problem /etc/cni/net.d/10-containerd-net.conflist sorts before 10-weft.conflist"
            ),
            "{cni:?}"
        );
        assert_eq!(
            details("bridge"),
            ["wrong cni0 MTU 1500 (want 1450, FLANNEL_MTU); set it with `ip link set cni0 mtu 1450`"]
        );
        let veths = details("veth");
        assert_eq!(veths.len(), 1, "only the veth with another MTU: {veths:?}");
        assert!(veths[0].starts_with("wrong veth0b on cni0 MTU 1500 (want 1450, FLANNEL_MTU)"));

        // The conflist's own mtu is what pods get when it sets one.
        h.cni.weft = Some(WeftPluginConf {
            bridge: "cni0".into(),
            mtu: Some(1500),
        });
        let diffs = differences(&cfg(), &entries(), &h, &v4(state.clone()));
        let bridge: Vec<&Difference> = diffs
            .iter()
            .filter(|x| x.object == "bridge" || x.object == "veth")
            .collect();
        assert_eq!(bridge.len(), 1, "{bridge:?}");
        assert!(bridge[0]
            .detail
            .starts_with("veth0a on cni0 MTU 1450 (want 1500, the mtu of 10-weft.conflist)"));

        // All well: weft's conflist first, weftd ready, MTUs right.
        h.weftd = WeftdHealth::Ready;
        h.cni.names = vec!["10-weft.conflist".into(), "99-loopback.conf".into()];
        h.cni.weft = None;
        h.bridge = Some(ObservedBridge {
            name: "cni0".into(),
            mtu: 1450,
            veths: vec![("veth0a".into(), 1450)],
        });
        assert_eq!(
            differences(&cfg(), &entries(), &h, &v4(state.clone())),
            vec![]
        );
        // No weft conflist at all (a podman host, say): nothing to say about the directory.
        h.cni.names = vec!["87-podman-bridge.conflist".into()];
        assert_eq!(differences(&cfg(), &entries(), &h, &v4(state)), vec![]);
    }
}
