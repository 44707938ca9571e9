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
