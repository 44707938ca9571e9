//! This node's policy, shared by weftd and `netctl check` so both plan with the same
//! settings: the pod MTU, the enabled families, the backend settings per family, the VTEP
//! MACs derived from the node name, the underlay an interface gives, and the lease value the
//! node publishes.

use ipnetwork::IpNetwork;
use weft_backends::plan::{Settings, Underlay, VxlanSettings};
use weft_backends::{BackendKind, IpFamily, MacAddr};

use crate::config::NetConfig;
use crate::host::iface::ChosenIface;
use crate::lease::{Endpoint, LeaseAttrs, SubnetKey, VxlanData};

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

/// This node's subnet of `family` in its key.
pub fn own_subnet(key: &SubnetKey, family: IpFamily) -> Option<IpNetwork> {
    match family {
        IpFamily::V4 => key.v4_subnet().map(IpNetwork::V4),
        IpFamily::V6 => key.v6.map(IpNetwork::V6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values: the VTEP MAC of each family's device is derived from the node name the
    /// same way in every weft version, so nodes on two versions during a rolling upgrade (and
    /// a node rebuilt under its old name) publish the MACs their peers already have.
    #[test]
    fn vtep_macs_never_change() {
        assert_eq!(
            vtep_mac("node-a", IpFamily::V4).to_string(),
            "4a:e8:66:29:c1:52"
        );
        assert_eq!(
            vtep_mac("node-a", IpFamily::V6).to_string(),
            "16:8c:82:87:20:44"
        );
        for (node, v4, v6) in [
            ("node-b", "ce:03:1f:46:d5:0f", "3a:e6:74:20:1b:c2"),
            (
                "worker-1.example.com",
                "ee:8b:32:26:3b:35",
                "36:18:83:fa:55:2c",
            ),
            (
                "k8s-control-plane",
                "92:a8:49:0c:01:ed",
                "be:7a:0a:a7:8c:71",
            ),
        ] {
            assert_eq!(vtep_mac(node, IpFamily::V4).to_string(), v4, "{node} IPv4");
            assert_eq!(vtep_mac(node, IpFamily::V6).to_string(), v6, "{node} IPv6");
        }
    }
}
