//! The wireguard backend's plan, its part of the diff and its operator text.

use std::net::SocketAddr;

use ipnetwork::IpNetwork;

use super::*;
use crate::backend::{plan, BackendData, Settings};
use crate::plan::{diff, findings, KernelState, LinkNames, Op, Refused, Underlay, Unreachable};
use crate::route::{Route, Via};
use crate::{BackendKind, IpFamily, Peer};

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn key(n: u8) -> Key {
    Key([n; 32])
}

fn peer(subnet: &str, public: &str, k: Option<u8>, port: u16) -> Peer {
    Peer {
        subnet: subnet.parse().unwrap(),
        public_ip: public.parse().unwrap(),
        subnet_v6: None,
        public_ip_v6: None,
        backend: BackendKind::Wireguard,
        data: k.map(|n| BackendData::wireguard(key(n), port)),
        data_v6: None,
        node_name: None,
    }
}

fn settings(psk: Option<PresharedKey>, keepalive: u16) -> Settings {
    Settings::Wireguard(WireguardSettings {
        device: "weft-wg".into(),
        listen_port: 51820,
        public_key: key(1),
        preshared_key: psk,
        keepalive,
        mtu: WireguardSettings::mtu_for(1500, None, IpFamily::V4),
        network: net("10.244.0.0/16"),
        underlay: Underlay {
            index: 2,
            ip: "192.168.1.10".parse().unwrap(),
            mtu: 1500,
            connected: vec![net("192.168.1.0/24")],
        },
        endpoints: Endpoints::Family(IpFamily::V4),
    })
}

fn entry(k: u8, endpoint: &str, subnet: &str) -> WireguardPeerEntry {
    WireguardPeerEntry {
        public_key: key(k),
        endpoint: Some(endpoint.parse::<SocketAddr>().unwrap()),
        allowed_ips: vec![net(subnet)],
        preshared_key: None,
        keepalive: 0,
    }
}

fn peer_keys(state: &WireguardState) -> std::collections::BTreeSet<Key> {
    state.peers.keys().copied().collect()
}

#[test]
fn one_route_for_the_network_and_a_peer_per_lease_with_a_key() {
    let peers = [
        peer("10.244.2.0/24", "192.168.1.11", Some(2), 51820),
        // Port 0: older flannel, "the same as ours".
        peer("10.244.3.0/24", "10.0.9.9", Some(3), 0),
        peer("10.244.4.0/24", "10.0.9.10", Some(4), 4000),
        // No key: no peer, no plaintext path.
        peer("10.244.5.0/24", "10.0.9.11", None, 0),
    ];
    let p = plan(net("10.244.1.0/24"), &peers, &settings(None, 0));
    let d = p.state.wireguard.device.clone().unwrap();
    assert_eq!(
        (d.name.as_str(), d.listen_port, d.public_key, d.mtu, d.up),
        ("weft-wg", 51820, Some(key(1)), 1440, true)
    );
    assert_eq!(d.addresses, vec![net("10.244.1.0/32")]);
    assert_eq!(
        p.state.routes.iter().copied().collect::<Vec<_>>(),
        vec![Route {
            dst: net("10.244.0.0/16"),
            via: Via::Device
        }]
    );
    let peers_planned: Vec<&WireguardPeerEntry> = p.state.wireguard.peers.values().collect();
    assert_eq!(
        peers_planned,
        vec![
            &entry(2, "192.168.1.11:51820", "10.244.2.0/24"),
            &entry(3, "10.0.9.9:51820", "10.244.3.0/24"),
            &entry(4, "10.0.9.10:4000", "10.244.4.0/24"),
        ]
    );
    assert_eq!(
        p.unreachable,
        vec![(
            net("10.244.5.0/24"),
            Unreachable::NoBackendData {
                what: "WireGuard PublicKey"
            }
        )]
    );
    assert!(p.state.vxlan.device.is_none());
    // The cluster's preshared key and keepalive go to every peer.
    let psk = PresharedKey(key(9));
    let p = plan(net("10.244.1.0/24"), &peers, &settings(Some(psk), 25));
    assert!(p
        .state
        .wireguard
        .peers
        .values()
        .all(|e| e.preshared_key == Some(psk) && e.keepalive == 25));
}

#[test]
fn a_peer_with_our_key_or_another_peers_key_is_refused() {
    let peers = [
        peer("10.244.2.0/24", "192.168.1.11", Some(2), 0),
        peer("10.244.3.0/24", "192.168.1.12", Some(1), 0),
        peer("10.244.4.0/24", "192.168.1.13", Some(2), 0),
        // A vxlan lease on a wireguard cluster has no key: never a plaintext path.
        Peer {
            backend: BackendKind::Vxlan,
            data: Some(BackendData::vxlan(1, crate::MacAddr([2, 0, 0, 0, 0, 5]))),
            ..peer("10.244.5.0/24", "192.168.1.14", None, 0)
        },
    ];
    let p = plan(net("10.244.1.0/24"), &peers, &settings(None, 0));
    assert_eq!(peer_keys(&p.state.wireguard), [key(2)].into());
    assert_eq!(
        p.refused,
        vec![
            (net("10.244.3.0/24"), Refused::OwnKey),
            (
                net("10.244.4.0/24"),
                Refused::KeyInUse(net("10.244.2.0/24"))
            ),
        ]
    );
    assert_eq!(p.unreachable.len(), 1);
    assert_eq!(p.refused[1].1.label(), "key-in-use");
}

#[test]
fn the_diff_removes_stale_and_rekeyed_peers_and_fixes_changed_ones() {
    let s = settings(None, 0);
    let own = net("10.244.1.0/24");
    let want = plan(
        own,
        &[
            peer("10.244.2.0/24", "192.168.1.11", Some(2), 0),
            peer("10.244.3.0/24", "192.168.1.12", Some(7), 0),
        ],
        &s,
    )
    .state;
    // The kernel: the device as wanted, peer 2 with a wrong endpoint, peer 3 under its old
    // key 3, and a peer of a node that is gone.
    let mut have = KernelState {
        routes: want.routes.clone(),
        ..KernelState::default()
    };
    have.wireguard.device = want.wireguard.device.clone();
    for e in [
        entry(2, "192.168.1.99:51820", "10.244.2.0/24"),
        entry(3, "192.168.1.12:51820", "10.244.3.0/24"),
        entry(8, "192.168.1.50:51820", "10.244.8.0/24"),
    ] {
        have.wireguard.peers.insert(e.public_key, e);
    }
    let ops = diff(&have, &want);
    assert_eq!(
        ops,
        vec![
            Op::Wireguard(WireguardOp::DeletePeer(key(3))),
            Op::Wireguard(WireguardOp::DeletePeer(key(8))),
            Op::Wireguard(WireguardOp::SetPeer(Box::new(entry(
                2,
                "192.168.1.11:51820",
                "10.244.2.0/24"
            )))),
            Op::Wireguard(WireguardOp::SetPeer(Box::new(entry(
                7,
                "192.168.1.12:51820",
                "10.244.3.0/24"
            )))),
        ]
    );
    // Applied, nothing is left to do.
    let mut after = have.clone();
    after.wireguard.peers = want.wireguard.peers.clone();
    assert!(diff(&after, &want).is_empty());

    // What netctl check says of each.
    let names = LinkNames::new("weft-wg");
    let text: Vec<String> = findings(&have, &want, &names, BackendKind::Wireguard)
        .into_iter()
        .map(|(_, f)| format!("{} {}: {}", f.kind, f.object, f.detail))
        .collect();
    assert_eq!(text.len(), 4);
    assert!(text[0].starts_with("extra peer: peer"), "{}", text[0]);
    assert!(
        text[0].ends_with("(stale: no lease has this public key)"),
        "{}",
        text[0]
    );
    assert!(
        text[2].contains("endpoint 192.168.1.99:51820 (want 192.168.1.11:51820)"),
        "{}",
        text[2]
    );
    assert!(text[3].starts_with("missing peer: peer"), "{}", text[3]);
}

#[test]
fn a_missing_device_comes_first_and_a_leftover_one_goes() {
    let s = settings(None, 0);
    let want = plan(
        net("10.244.1.0/24"),
        &[peer("10.244.2.0/24", "192.168.1.11", Some(2), 0)],
        &s,
    )
    .state;
    let ops = diff(&KernelState::default(), &want);
    assert!(matches!(&ops[0], Op::Wireguard(WireguardOp::SetDevice(_))));
    assert!(matches!(&ops[1], Op::Wireguard(WireguardOp::SetPeer(_))));
    assert_eq!(
        ops[2],
        Op::SetRoute(Route {
            dst: net("10.244.0.0/16"),
            via: Via::Device
        })
    );
    // Another backend configured: the device (and the route through it) go.
    let mut left = want.clone();
    left.wireguard.peers.clear();
    let ops = diff(&left, &KernelState::default());
    assert_eq!(
        ops,
        vec![Op::Wireguard(WireguardOp::DeleteDevice("weft-wg".into()))]
    );
    // The device's key differs (a new key file): set in place.
    let mut rekeyed = want.clone();
    rekeyed.wireguard.device.as_mut().unwrap().public_key = Some(key(5));
    let ops = diff(&rekeyed, &want);
    assert_eq!(ops.len(), 1);
    let names = LinkNames::new("weft-wg");
    let f = findings(&rekeyed, &want, &names, BackendKind::Wireguard);
    assert!(f[0].1.detail.contains("public key"), "{:?}", f[0].1);
}

#[test]
fn an_ipv6_plan_uses_the_ipv6_halves_and_an_ipv4_underlay_refuses_it() {
    let mut p6 = peer("10.244.2.0/24", "192.168.1.11", None, 0);
    p6.subnet_v6 = Some("fc00:0:0:2::/64".parse().unwrap());
    p6.public_ip_v6 = Some("fd99::12".parse().unwrap());
    p6.data_v6 = Some(BackendData::wireguard(key(2), 51821));
    let s6 = Settings::Wireguard(WireguardSettings {
        device: "weft-wg-v6".into(),
        listen_port: 51821,
        public_key: key(1),
        preshared_key: None,
        keepalive: 0,
        mtu: WireguardSettings::mtu_for(1500, None, IpFamily::V6),
        network: net("fc00::/48"),
        underlay: Underlay {
            index: 2,
            ip: "fd99::11".parse().unwrap(),
            mtu: 1500,
            connected: vec![net("fd99::/64")],
        },
        endpoints: Endpoints::Family(IpFamily::V6),
    });
    let p = plan(net("fc00:0:0:1::/64"), std::slice::from_ref(&p6), &s6);
    let d = p.state.wireguard.device.clone().unwrap();
    assert_eq!(
        (d.mtu, d.addresses.clone()),
        (1420, vec![net("fc00:0:0:1::/128")])
    );
    assert_eq!(
        p.state.wireguard.peers.values().next().unwrap(),
        &entry(2, "[fd99::12]:51821", "fc00:0:0:2::/64")
    );
    // The IPv4 settings cannot plan an IPv6 subnet.
    let p = plan(net("fc00:0:0:1::/64"), &[p6], &settings(None, 0));
    assert!(p.state.wireguard.device.is_none());
    assert!(matches!(p.refused[0].1, Refused::UnderlayFamily(_)));
}

#[test]
fn operations_read_like_wg_and_never_show_the_preshared_key() {
    let names = LinkNames::new("weft-wg");
    let e = WireguardPeerEntry {
        preshared_key: Some(PresharedKey(key(9))),
        keepalive: 25,
        ..entry(2, "192.168.1.11:51820", "10.244.2.0/24")
    };
    let text = names
        .show(&Op::Wireguard(WireguardOp::SetPeer(Box::new(e.clone()))))
        .to_string();
    assert_eq!(
        text,
        format!(
            "set peer {} endpoint 192.168.1.11:51820 allowed-ips 10.244.2.0/24 preshared-key (set) persistent-keepalive 25 dev weft-wg",
            key(2)
        )
    );
    assert!(!text.contains(&key(9).to_base64()));
    assert!(!format!("{e:?}").contains(&key(9).to_base64()));
    assert_eq!(
        names
            .show(&Route {
                dst: net("10.244.0.0/16"),
                via: Via::Device
            })
            .to_string(),
        "10.244.0.0/16 dev weft-wg scope link"
    );
}

#[test]
fn device_names_per_mode_and_family() {
    assert_eq!(device_name(Mode::Separate, IpFamily::V4), "weft-wg");
    assert_eq!(device_name(Mode::Separate, IpFamily::V6), "weft-wg-v6");
    assert_eq!(device_name(Mode::Auto, IpFamily::V6), "weft-wg");
    assert!(is_weft_device_name("weft-wg-v6") && !is_weft_device_name("flannel-wg"));
    assert_eq!("ipv6".parse::<Mode>().unwrap(), Mode::Ipv6);
    assert!("both".parse::<Mode>().is_err());
}

/// A dual-stack peer with one key for both families (as every node publishes it).
fn dual_peer(n: u8, public: &str, public6: &str) -> Peer {
    let mut p = peer(&format!("10.244.{n}.0/24"), public, Some(n), 51820);
    p.subnet_v6 = Some(format!("fc00:0:0:{n}::/64").parse().unwrap());
    p.public_ip_v6 = Some(public6.parse().unwrap());
    p.data_v6 = Some(BackendData::wireguard(key(n), 51820));
    p
}

/// The plan of `family` on the one device of a single-device mode on a dual-stack cluster.
fn shared_plan(mode: Mode, family: IpFamily, own_v6: &str, peers: &[Peer]) -> Plan {
    let (own, network, underlay) = match family {
        IpFamily::V4 => (
            "10.244.1.0/24",
            "10.244.0.0/16",
            ("192.168.1.10", "192.168.1.0/24"),
        ),
        IpFamily::V6 => ("fc00:0:0:1::/64", "fc00::/48", (own_v6, "fd99::/64")),
    };
    let s = Settings::Wireguard(WireguardSettings {
        device: device_name(mode, family).into(),
        listen_port: 51820,
        public_key: key(1),
        preshared_key: None,
        keepalive: 0,
        mtu: WireguardSettings::mtu_for(1500, None, mode.overhead_family(family, true)),
        network: net(network),
        underlay: Underlay {
            index: 2,
            ip: underlay.0.parse().unwrap(),
            mtu: 1500,
            connected: vec![net(underlay.1)],
        },
        endpoints: mode.endpoints(family, true, own_v6.parse().ok()),
    });
    plan(net(own), peers, &s)
}

#[test]
fn single_device_modes_put_each_familys_half_on_the_one_device() {
    let peers = [dual_peer(2, "192.168.1.11", "fd99::12")];
    for (mode, endpoint, mtu) in [
        (Mode::Ipv4, "192.168.1.11:51820", 1440),
        (Mode::Ipv6, "[fd99::12]:51820", 1420),
        // Both addresses private: auto keeps IPv4, and pays IPv6's overhead (it may use
        // either).
        (Mode::Auto, "192.168.1.11:51820", 1420),
    ] {
        let v4 = shared_plan(mode, IpFamily::V4, "fd99::11", &peers);
        let v6 = shared_plan(mode, IpFamily::V6, "fd99::11", &peers);
        for (p, subnet, own, route) in [
            (&v4, "10.244.2.0/24", "10.244.1.0/32", "10.244.0.0/16"),
            (&v6, "fc00:0:0:2::/64", "fc00:0:0:1::/128", "fc00::/48"),
        ] {
            let d = p.state.wireguard.device.clone().unwrap();
            assert_eq!(
                (d.name.as_str(), d.listen_port, d.mtu, d.addresses.clone()),
                ("weft-wg", 51820, mtu, vec![net(own)]),
                "{mode}"
            );
            assert_eq!(
                p.state.wireguard.peers.values().collect::<Vec<_>>(),
                vec![&entry(2, endpoint, subnet)],
                "{mode}: one peer, its endpoint by the mode, this family's subnet"
            );
            assert_eq!(
                p.state.routes.iter().map(|r| r.dst).collect::<Vec<_>>(),
                vec![net(route)]
            );
            assert!(p.unreachable.is_empty() && p.refused.is_empty(), "{p:?}");
        }
        // Both halves want the same device and the same peer but for the allowed IPs.
        let (d4, d6) = (
            v4.state.wireguard.device.unwrap(),
            v6.state.wireguard.device.unwrap(),
        );
        assert_eq!(
            (d4.listen_port, d4.mtu, d4.public_key),
            (d6.listen_port, d6.mtu, d6.public_key)
        );
    }
}

#[test]
fn auto_prefers_ipv4_unless_it_is_private_and_both_ipv6_addresses_are_global() {
    let public = dual_peer(2, "198.51.100.12", "2001:db8::12");
    let private_v4 = dual_peer(3, "10.0.0.13", "2001:db8::13");
    let private_both = dual_peer(4, "10.0.0.14", "fd99::14");
    let endpoints = |own_v6: &str| {
        let p = shared_plan(
            Mode::Auto,
            IpFamily::V4,
            own_v6,
            &[public.clone(), private_v4.clone(), private_both.clone()],
        );
        p.state
            .wireguard
            .peers
            .values()
            .map(|e| e.endpoint.unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        endpoints("2001:db8::11"),
        [
            "198.51.100.12:51820",
            "[2001:db8::13]:51820",
            "10.0.0.14:51820"
        ]
    );
    // This node's own IPv6 is unique-local: IPv4 everywhere.
    assert_eq!(
        endpoints("fd99::11"),
        ["198.51.100.12:51820", "10.0.0.13:51820", "10.0.0.14:51820"]
    );
}

#[test]
fn a_peer_without_the_endpoint_family_is_unreachable_not_sent_elsewhere() {
    // ipv6 mode, a peer that published no IPv6 public IP: no peer for its IPv4 half.
    let mut p = dual_peer(2, "192.168.1.11", "fd99::12");
    p.public_ip_v6 = None;
    let v4 = shared_plan(Mode::Ipv6, IpFamily::V4, "fd99::11", &[p]);
    assert!(v4.state.wireguard.peers.is_empty());
    assert_eq!(
        v4.unreachable,
        vec![(
            net("10.244.2.0/24"),
            Unreachable::NoPublicIp {
                field: "PublicIPv6"
            }
        )]
    );
}
