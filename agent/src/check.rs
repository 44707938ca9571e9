//! `netctl check`: compare this host's kernel state and subnet.env with the leases.
//!
//! The comparison is pure ([`differences`]): it plans what weftd would program from the leases
//! (the same [`Backend::plan`] weftd uses), diffs it with what the kernel holds, and words
//! every operation the diff asks for as a difference an operator can act on. Reading etcd,
//! the kernel and the file is in [`run`].

use std::collections::BTreeMap;
use std::path::Path;

use ipnetwork::IpNetwork;
use serde::Serialize;
use weft_backends::dataplane::{KernelNetlink, Netlink};
use weft_backends::plan::{diff, Backend, KernelState, Op, Route, Via};
use weft_backends::subnet_env::SubnetEnv;
use weft_backends::{BackendKind, IpFamily, MacAddr, Peer};

use crate::agent::{backend_settings, device_name, families, own_subnet, pod_mtu, underlay_of};
use crate::cli::Output;
use crate::config::NetConfig;
use crate::iface::ObservedIface;
use crate::lease::{validate, LeaseAttrs, LeaseRules, SubnetKey};
use crate::netctl::{render_table, CommandOutput};
use crate::store::{LeaseStore, StoreError, StoredEntry};

/// One way this host differs from what the leases say it should be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// `missing`, `extra`, `wrong` or `problem`.
    pub kind: &'static str,
    /// `route`, `neighbour`, `fdb`, `device`, `subnet.env`, `lease`, `peer`.
    pub object: &'static str,
    pub detail: String,
}

fn d(kind: &'static str, object: &'static str, detail: String) -> Difference {
    Difference {
        kind,
        object,
        detail,
    }
}

/// What the check needs to know about this host, besides the kernel's state.
#[derive(Clone, Debug)]
pub struct HostFacts {
    pub env: Option<SubnetEnv>,
    pub underlay: Option<ObservedIface>,
}

fn via_text(v: &Via, device: &str) -> String {
    match v {
        Via::Overlay { gateway } => format!("via {gateway} dev {device} onlink"),
        Via::Direct { gateway, index } => format!("via {gateway} dev #{index}"),
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
    let mut out = Vec::new();
    let Some(env) = &host.env else {
        out.push(d(
            "missing",
            "subnet.env",
            "no subnet file: weftd has not written one on this host (is it running?)".into(),
        ));
        return out;
    };
    let show = |n: Option<String>| n.unwrap_or_else(|| "(absent)".into());
    if env.network != cfg.v4_network() {
        out.push(d(
            "wrong",
            "subnet.env",
            format!(
                "FLANNEL_NETWORK is {}, the network config says {}",
                show(env.network.map(|n| n.to_string())),
                show(cfg.v4_network().map(|n| n.to_string()))
            ),
        ));
    }
    if env.ipv6_network != cfg.v6_network() {
        out.push(d(
            "wrong",
            "subnet.env",
            format!(
                "FLANNEL_IPV6_NETWORK is {}, the network config says {}",
                show(env.ipv6_network.map(|n| n.to_string())),
                show(cfg.v6_network().map(|n| n.to_string()))
            ),
        ));
    }
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
            format!("no lease {own_name} in etcd for this host's subnet (expired or deleted?)"),
        ));
        return out;
    };
    let own_attrs = match LeaseAttrs::decode(&own.value) {
        Ok(a) => a,
        Err(e) => {
            out.push(d(
                "problem",
                "lease",
                format!("this host's lease {own_name} is unreadable: {e}"),
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
    let mut peers: Vec<Peer> = Vec::new();
    for e in entries.iter().filter(|e| e.name != own_name) {
        match validate(&rules, &e.name, &e.value) {
            Ok(p) => peers.push(p),
            Err(err) => out.push(d(
                "problem",
                "lease",
                format!(
                    "lease {} is invalid and ignored: {err}",
                    e.name.escape_debug()
                ),
            )),
        }
    }
    for (family, observed) in observed {
        family_differences(
            cfg, *family, &own_key, &own_attrs, underlay, &peers, observed, &mut out,
        );
    }
    out
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
    let (addrs, vxlan) = match family {
        IpFamily::V4 => (
            underlay
                .v4
                .iter()
                .map(|n| IpNetwork::V4(*n))
                .collect::<Vec<_>>(),
            own_attrs.vxlan_data(),
        ),
        IpFamily::V6 => (
            underlay.v6.iter().map(|n| IpNetwork::V6(*n)).collect(),
            own_attrs.vxlan_v6_data(),
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
    let device = device_name(cfg.backend.vni, family);
    let mac = match (cfg.backend.kind, vxlan) {
        (BackendKind::HostGw, _) => MacAddr([0; 6]), // unused by host-gw
        (BackendKind::Vxlan, Ok(v)) => v.vtep_mac,
        (BackendKind::Vxlan, Err(e)) => {
            out.push(d(
                "problem",
                "lease",
                format!("this host's lease has no usable {family} VtepMAC: {e}"),
            ));
            return;
        }
    };
    let settings = backend_settings(cfg, family, mac, base);
    let plan = settings.plan(own_subnet, peers);
    for (subnet, why) in &plan.refused {
        out.push(d("problem", "peer", format!("{subnet} is refused: {why}")));
    }
    for (subnet, why) in &plan.unreachable {
        out.push(d(
            "problem",
            "peer",
            format!("{subnet} cannot be programmed: {why}"),
        ));
    }

    let have_routes: BTreeMap<IpNetwork, &Route> =
        observed.routes.iter().map(|r| (r.dst, r)).collect();
    let have_neigh: BTreeMap<_, _> = observed.neighbours.iter().map(|n| (n.ip, n)).collect();
    for op in diff(observed, &plan.state) {
        out.push(match op {
            Op::SetDevice(want) => match &observed.device {
                None => d("missing", "device", format!("{} (VXLAN id {}, port {}, local {})", want.name, want.vni, want.port, want.local)),
                Some(have) => {
                    let mut what = Vec::new();
                    if have.mtu != want.mtu {
                        what.push(format!("MTU {} (want {})", have.mtu, want.mtu));
                    }
                    if have.mac != want.mac {
                        what.push(format!("MAC {} (the lease says {})", have.mac, want.mac));
                    }
                    if !have.up {
                        what.push("down".to_string());
                    }
                    if have.addresses != want.addresses {
                        what.push(format!("addresses {:?} (want {:?})", have.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(), want.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>()));
                    }
                    d("wrong", "device", format!("{}: {}", want.name, what.join(", ")))
                }
            },
            Op::DeleteDevice(name) => match (&observed.device, &plan.state.device) {
                (Some(have), Some(want)) => d(
                    "wrong",
                    "device",
                    format!(
                        "{name} must be re-created: VXLAN id {} port {} local {} dev #{} learning {} (want id {} port {} local {} dev #{} learning off)",
                        have.vni, have.port, have.local, have.underlay_index, if have.learning { "on" } else { "off" },
                        want.vni, want.port, want.local, want.underlay_index
                    ),
                ),
                _ => d("extra", "device", format!("{name} exists but the backend is {}", cfg.backend.kind)),
            },
            Op::SetRoute(r) => match have_routes.get(&r.dst) {
                Some(h) => d("wrong", "route", format!("{} {} (want {})", r.dst, via_text(&h.via, &device), via_text(&r.via, &device))),
                None => d("missing", "route", format!("{} {}", r.dst, via_text(&r.via, &device))),
            },
            Op::DeleteRoute(r) => d("extra", "route", format!("{} {} (no lease explains it)", r.dst, via_text(&r.via, &device))),
            Op::SetNeighbour(n) => match have_neigh.get(&n.ip) {
                Some(h) => d("wrong", "neighbour", format!("{} lladdr {} (want {} permanent)", n.ip, h.mac, n.mac)),
                None => d("missing", "neighbour", format!("{} lladdr {} dev {device}", n.ip, n.mac)),
            },
            Op::DeleteNeighbour(n) => d("extra", "neighbour", format!("{} lladdr {} dev {device}", n.ip, n.mac)),
            Op::SetFdb(f) => d("missing", "fdb", format!("{} dst {} dev {device}", f.mac, f.dst)),
            Op::DeleteFdb(f) => d("extra", "fdb", format!("{} dst {} dev {device} (stale: no lease has this MAC and address)", f.mac, f.dst)),
        });
    }
}

/// Render the result; exit 1 when anything differs.
pub fn render(diffs: &[Difference], peers: usize, output: Output) -> CommandOutput {
    let mut out = CommandOutput {
        code: u8::from(!diffs.is_empty()),
        ..Default::default()
    };
    match output {
        Output::Json => {
            out.stdout = serde_json::to_string_pretty(&serde_json::json!({
                "ok": diffs.is_empty(),
                "differences": diffs,
            }))
            .expect("serializable")
                + "\n";
        }
        Output::Table | Output::Wide => {
            if diffs.is_empty() {
                out.stdout =
                    format!("ok: kernel and subnet.env match the leases ({peers} peers)\n");
            } else {
                let rows: Vec<Vec<String>> = diffs
                    .iter()
                    .map(|x| {
                        vec![
                            x.kind.to_uppercase(),
                            x.object.to_string(),
                            x.detail.clone(),
                        ]
                    })
                    .collect();
                out.stdout = render_table(&["DIFF", "OBJECT", "DETAIL"], &rows);
                out.stderr = format!("{} difference(s) found\n", diffs.len());
            }
        }
    }
    out
}

/// `netctl check` on this host.
pub async fn run<S: LeaseStore>(
    store: &S,
    subnet_file: &Path,
    iface: Option<&str>,
    net_config: Option<&Path>,
    output: Output,
) -> Result<CommandOutput, CheckError> {
    let env = SubnetEnv::read(subnet_file).map_err(|e| CheckError::Other(e.to_string()))?;
    let snap = store.snapshot(net_config.is_none()).await?;
    let file_cfg =
        match net_config {
            None => None,
            Some(p) => Some(std::fs::read(p).map_err(|e| {
                CheckError::Other(format!("network config file {}: {e}", p.display()))
            })?),
        };
    let text = file_cfg.as_deref().or(snap.config.as_deref());
    let cfg = match text.map(NetConfig::parse) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            return Err(CheckError::Other(format!(
                "the network config in etcd is invalid: {e}"
            )))
        }
        None => return Err(CheckError::Other("no network config in etcd".into())),
    };
    let facts = crate::iface::probe::facts(&Default::default())
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
    let wanted: Vec<(IpFamily, String)> = families(&cfg)
        .map(|f| (f, device_name(cfg.backend.vni, f)))
        .collect();
    let observed = tokio::task::spawn_blocking(move || {
        wanted
            .into_iter()
            .map(|(family, device)| {
                KernelNetlink::open(&device, family)
                    .and_then(|mut nl| nl.observe())
                    .map(|state| (family, state))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| CheckError::Other(e.to_string()))?
    .map_err(|e| CheckError::Other(format!("reading the kernel: {e}")))?;
    let peers = snap.entries.len().saturating_sub(1);
    let diffs = differences(&cfg, &snap.entries, &HostFacts { env, underlay }, &observed);
    Ok(render(&diffs, peers, output))
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
    use crate::lease::VxlanData;
    use crate::store::Revision;
    use weft_backends::plan::{Settings, Underlay, VxlanSettings};

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
                vxlan: Some(VxlanData {
                    vni: 1,
                    vtep_mac: MacAddr([2, 0, 0, 0, 0, mac]),
                }),
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
        let out = render(&[], 1, Output::Table);
        assert_eq!(out.code, 0);
    }

    #[test]
    fn every_kind_of_drift_is_listed() {
        let mut state = programmed(&cfg(), &entries());
        state.routes.clear();
        state.fdb.insert(weft_backends::plan::FdbEntry {
            mac: MacAddr([2, 0, 0, 0, 0, 9]),
            dst: "10.99.0.99".parse().unwrap(),
        });
        state.device.as_mut().unwrap().mtu = 1400;
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
        let out = render(&diffs, 1, Output::Table);
        assert_eq!(out.code, 1);
        assert!(out.stdout.contains("MISSING"));
        let json: serde_json::Value =
            serde_json::from_str(&render(&diffs, 1, Output::Json).stdout).unwrap();
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
}
