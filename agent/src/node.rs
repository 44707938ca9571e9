//! This node's policy, shared by weftd and `netctl check` so both plan with the same
//! settings: the pod MTU, the enabled families, the backend settings per family, the VTEP
//! MACs derived from the node name, the underlay an interface gives, and the lease value the
//! node publishes.

use std::net::{IpAddr, Ipv6Addr};

use ipnetwork::IpNetwork;
use weft_backends::backend::vxlan::{self, VxlanSettings};
use weft_backends::backend::wireguard::{self, Key, WireguardSettings};
use weft_backends::backend::{BackendData, HostGwSettings, Settings};
use weft_backends::plan::Underlay;
use weft_backends::{BackendKind, IpFamily, MacAddr};

use crate::config::NetConfig;
use crate::host::iface::ChosenIface;
use crate::lease::{Endpoint, LeaseAttrs, SubnetKey};

/// The MTU pods get: an explicit Backend.MTU, else the underlay's minus encapsulation
/// (vxlan: 50 bytes over IPv4, 70 over IPv6; wireguard: 60 and 80; the smaller when both
/// families are on, since a pod has one MTU for both).
pub fn pod_mtu(cfg: &NetConfig, underlay_mtu: u32) -> u32 {
    if let Some(m) = cfg.backend.mtu {
        return m;
    }
    match cfg.backend.kind {
        BackendKind::Vxlan => families(cfg)
            .map(|f| VxlanSettings::mtu_for(underlay_mtu, None, f))
            .min()
            .unwrap_or(underlay_mtu),
        BackendKind::Wireguard => families(cfg)
            .map(|f| {
                let over = cfg
                    .backend
                    .wireguard
                    .mode
                    .overhead_family(f, dual_stack(cfg));
                WireguardSettings::mtu_for(underlay_mtu, None, over)
            })
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

/// Both families are on.
pub fn dual_stack(cfg: &NetConfig) -> bool {
    cfg.ipv4.is_some() && cfg.ipv6.is_some()
}

/// The name of weft's VXLAN device for a VNI and family (`weft.1`, `weft-v6.1`): looked for
/// by every backend, so that one left by an earlier vxlan configuration is removed.
pub fn device_name(vni: u32, family: IpFamily) -> String {
    vxlan::device_name(family, vni)
}

/// The device overlay routes of `family` go through, as operator text names it: the
/// WireGuard device for wireguard, else the VXLAN device.
pub fn route_device_name(cfg: &NetConfig, family: IpFamily) -> String {
    match cfg.backend.kind {
        BackendKind::Wireguard => {
            wireguard::device_name(cfg.backend.wireguard.mode, family).to_string()
        }
        BackendKind::Vxlan | BackendKind::HostGw => device_name(cfg.backend.vni, family),
    }
}

pub use vxlan::vtep_mac;

/// What this node publishes about itself that its own data plane needs: the VTEP MAC of
/// its VXLAN device of the family, its WireGuard public key, and its public IPv6 address
/// (which WireGuard's `auto` mode looks at to choose endpoints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnData {
    pub vtep_mac: MacAddr,
    pub wireguard_key: Option<Key>,
    pub public_ip_v6: Option<Ipv6Addr>,
}

/// The backend settings for one family, for a node with `own` data over `underlay` (weftd
/// and `netctl check` plan with the same ones).
pub fn backend_settings(
    cfg: &NetConfig,
    family: IpFamily,
    own: OwnData,
    underlay: Underlay,
) -> Settings {
    let mac = own.vtep_mac;
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
        BackendKind::HostGw => Settings::HostGw(HostGwSettings { underlay }),
        BackendKind::Wireguard => {
            let wg = &cfg.backend.wireguard;
            let network = match family {
                IpFamily::V4 => cfg.v4_network().map(IpNetwork::V4),
                IpFamily::V6 => cfg.v6_network().map(IpNetwork::V6),
            }
            .expect("only enabled families are planned");
            let dual = dual_stack(cfg);
            Settings::Wireguard(WireguardSettings {
                device: route_device_name(cfg, family),
                listen_port: wg.port_of(family),
                public_key: own.wireguard_key.unwrap_or(Key([0; 32])),
                preshared_key: wg.psk,
                keepalive: wg.keepalive,
                mtu: WireguardSettings::mtu_for(
                    underlay.mtu,
                    cfg.backend.mtu,
                    wg.mode.overhead_family(family, dual),
                ),
                network,
                underlay,
                endpoints: wg
                    .mode
                    .endpoints(family, dual, own.public_ip_v6.map(IpAddr::V6)),
            })
        }
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

/// The lease value this node publishes (`wireguard_key`: its WireGuard public key, for the
/// wireguard backend).
pub fn own_attrs(
    cfg: &NetConfig,
    node_name: &str,
    chosen: &ChosenIface,
    wireguard_key: Option<Key>,
) -> LeaseAttrs {
    let data = |family| match cfg.backend.kind {
        BackendKind::Vxlan => Some(BackendData::vxlan(
            cfg.backend.vni,
            vtep_mac(node_name, family),
        )),
        BackendKind::HostGw => None,
        BackendKind::Wireguard => {
            wireguard_key.map(|k| BackendData::wireguard(k, cfg.backend.wireguard.port_of(family)))
        }
    };
    let v4 = cfg.ipv4.as_ref().and(chosen.public_ip).map(|ip| Endpoint {
        public_ip: ip,
        data: data(IpFamily::V4),
    });
    let v6 = cfg
        .ipv6
        .as_ref()
        .and(chosen.public_ip_v6)
        .map(|ip| Endpoint {
            public_ip: ip,
            data: data(IpFamily::V6),
        });
    LeaseAttrs::for_node(node_name, cfg.backend.kind, v4, v6)
}

/// This node's subnet of `family` in its key.
pub fn own_subnet(key: &SubnetKey, family: IpFamily) -> Option<IpNetwork> {
    match family {
        IpFamily::V4 => key.v4_subnet().map(IpNetwork::V4),
        IpFamily::V6 => key.v6.map(IpNetwork::V6),
    }
}
