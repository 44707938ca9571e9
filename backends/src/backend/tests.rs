//! Planning and diffing with both backends: what each plans for its peers, and the order
//! the shared diff puts their operations in.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::backend::vxlan::{
    vxlan_overhead, FdbEntry, Neighbour, VxlanOp, VxlanSettings, VXLAN_OVERHEAD_V6,
};
use crate::backend::{plan, BackendData, HostGwSettings, Settings};
use crate::plan::{diff, KernelState, LinkNames, Op, Refused, Underlay, Unreachable};
use crate::route::{Route, Via};
use crate::{BackendKind, IpFamily, MacAddr, Peer};

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac(n: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0, n])
}

fn peer(subnet: &str, public: &str, m: Option<u8>) -> Peer {
    Peer {
        subnet: subnet.parse().unwrap(),
        public_ip: public.parse().unwrap(),
        subnet_v6: None,
        public_ip_v6: None,
        backend: BackendKind::Vxlan,
        data: m.map(|n| BackendData::vxlan(1, mac(n))),
        data_v6: None,
        node_name: None,
    }
}

fn underlay() -> Underlay {
    Underlay {
        index: 2,
        ip: ip("192.168.1.10"),
        mtu: 1500,
        connected: vec![net("192.168.1.0/24")],
    }
}

fn vxlan(direct: bool) -> Settings {
    Settings::Vxlan(VxlanSettings {
        device: "weft.1".into(),
        vni: 1,
        port: 8472,
        mac: mac(1),
        mtu: VxlanSettings::mtu_for(1500, None, IpFamily::V4),
        underlay: underlay(),
        direct_routing: direct,
    })
}

#[test]
fn vxlan_plan_has_a_device_and_three_entries_per_peer() {
    let peers = [
        peer("10.244.2.0/24", "192.168.1.11", Some(2)),
        peer("10.244.3.0/24", "10.0.9.9", Some(3)),
        peer("10.244.4.0/24", "10.0.9.10", None),
    ];
    let p = plan(net("10.244.1.0/24"), &peers, &vxlan(false));
    let d = p.state.vxlan.device.clone().unwrap();
    assert_eq!(
        (
            d.mtu,
            d.addresses.clone(),
            d.local,
            d.vni,
            d.port,
            d.learning
        ),
        (
            1450,
            vec![net("10.244.1.0/32")],
            ip("192.168.1.10"),
            1,
            8472,
            false
        )
    );
    assert_eq!(
        p.state.vxlan.neighbours,
        BTreeSet::from([
            Neighbour {
                ip: ip("10.244.2.0"),
                mac: mac(2)
            },
            Neighbour {
                ip: ip("10.244.3.0"),
                mac: mac(3)
            },
        ])
    );
    assert!(p.state.vxlan.fdb.contains(&FdbEntry {
        mac: mac(3),
        dst: ip("10.0.9.9")
    }));
    assert!(p.state.routes.contains(&Route {
        dst: net("10.244.2.0/24"),
        via: Via::Overlay {
            gateway: ip("10.244.2.0")
        }
    }));
    assert_eq!(
        p.unreachable.len(),
        1,
        "a peer without a VTEP MAC is reported"
    );
}

#[test]
fn direct_routing_uses_the_underlay_for_peers_on_the_same_segment() {
    let peers = [
        peer("10.244.2.0/24", "192.168.1.11", Some(2)),
        peer("10.244.3.0/24", "10.0.9.9", Some(3)),
    ];
    let p = plan(net("10.244.1.0/24"), &peers, &vxlan(true));
    assert!(p.state.routes.contains(&Route {
        dst: net("10.244.2.0/24"),
        via: Via::Direct {
            gateway: ip("192.168.1.11"),
            index: 2
        }
    }));
    assert_eq!(
        p.state.vxlan.neighbours.len(),
        1,
        "only the remote peer goes over VXLAN"
    );
    assert_eq!(p.state.vxlan.fdb.len(), 1);
}

#[test]
fn host_gw_routes_direct_and_reports_unreachable_peers() {
    let peers = [
        peer("10.244.2.0/24", "192.168.1.11", None),
        peer("10.244.3.0/24", "10.0.9.9", None),
    ];
    let p = plan(
        net("10.244.1.0/24"),
        &peers,
        &Settings::HostGw(HostGwSettings {
            underlay: underlay(),
        }),
    );
    assert!(p.state.vxlan.device.is_none());
    assert_eq!(p.state.routes.len(), 1);
    assert_eq!(p.unreachable.len(), 1);
    assert_eq!(p.unreachable[0].1, Unreachable::OffSegment(ip("10.0.9.9")));
    assert_eq!(p.unreachable[0].1.label(), "off-segment");
    assert!(p.unreachable[0].1.to_string().contains("10.0.9.9"));
}

#[test]
fn peers_whose_route_would_shadow_the_node_are_refused_by_both_backends() {
    let peers = [
        peer("192.168.1.0/24", "10.0.9.9", Some(2)),
        peer("192.168.0.0/16", "10.0.9.8", Some(3)),
        peer("10.244.1.0/25", "10.0.9.7", Some(4)),
        peer("10.244.2.0/24", "192.168.1.11", Some(5)),
    ];
    for settings in [
        vxlan(false),
        vxlan(true),
        Settings::HostGw(HostGwSettings {
            underlay: underlay(),
        }),
    ] {
        let p = plan(net("10.244.1.0/24"), &peers, &settings);
        let refused: Vec<String> = p.refused.iter().map(|(s, _)| s.to_string()).collect();
        assert_eq!(
            refused,
            ["192.168.1.0/24", "192.168.0.0/16", "10.244.1.0/25"],
            "{settings:?}"
        );
        assert!(p.refused[0]
            .1
            .to_string()
            .contains("underlay network 192.168.1.0/24"));
        assert_eq!(
            p.refused[0].1,
            Refused::OverlapsUnderlay(net("192.168.1.0/24"))
        );
        assert_eq!(p.refused[2].1.label(), "overlaps-own-subnet");
        assert!(p.state.routes.iter().all(|r| r.dst == net("10.244.2.0/24")));
        assert!(p.state.vxlan.neighbours.iter().all(|n| n.mac == mac(5)));
    }
}

#[test]
fn diff_of_equal_states_is_empty_and_a_fresh_node_gets_everything_in_order() {
    let peers = [peer("10.244.2.0/24", "192.168.1.11", Some(2))];
    let want = plan(net("10.244.1.0/24"), &peers, &vxlan(false)).state;
    assert!(diff(&want, &want).is_empty());
    let ops = diff(&KernelState::default(), &want);
    let kinds: Vec<&str> = ops
        .iter()
        .map(|o| match o {
            Op::Vxlan(VxlanOp::SetDevice(_)) => "device",
            Op::Vxlan(VxlanOp::SetNeighbour(_)) => "neigh",
            Op::Vxlan(VxlanOp::SetFdb(_)) => "fdb",
            Op::SetRoute(_) => "route",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["device", "neigh", "fdb", "route"]);
}

#[test]
fn a_changed_vtep_mac_replaces_the_neighbour_and_removes_the_old_fdb_entry() {
    let own = net("10.244.1.0/24");
    let before = plan(
        own,
        &[peer("10.244.2.0/24", "192.168.1.11", Some(2))],
        &vxlan(false),
    )
    .state;
    let after = plan(
        own,
        &[peer("10.244.2.0/24", "192.168.1.11", Some(9))],
        &vxlan(false),
    )
    .state;
    let ops = diff(&before, &after);
    assert_eq!(
        ops,
        vec![
            Op::Vxlan(VxlanOp::DeleteFdb(FdbEntry {
                mac: mac(2),
                dst: ip("192.168.1.11")
            })),
            Op::Vxlan(VxlanOp::SetNeighbour(Neighbour {
                ip: ip("10.244.2.0"),
                mac: mac(9)
            })),
            Op::Vxlan(VxlanOp::SetFdb(FdbEntry {
                mac: mac(9),
                dst: ip("192.168.1.11")
            })),
        ]
    );
}

#[test]
fn a_removed_peer_goes_in_reverse_order_and_a_recreated_device_gets_everything_back() {
    let own = net("10.244.1.0/24");
    let one = plan(
        own,
        &[peer("10.244.2.0/24", "10.0.9.9", Some(2))],
        &vxlan(false),
    )
    .state;
    let none = plan(own, &[], &vxlan(false)).state;
    let ops = diff(&one, &none);
    assert!(matches!(
        ops.as_slice(),
        [
            Op::DeleteRoute(_),
            Op::Vxlan(VxlanOp::DeleteFdb(_)),
            Op::Vxlan(VxlanOp::DeleteNeighbour(_))
        ]
    ));
    // The device came back with another local IP: delete, create, re-add every entry.
    let mut moved = one.clone();
    moved.vxlan.device.as_mut().unwrap().local = ip("192.168.1.99");
    let ops = diff(&moved, &one);
    assert!(matches!(ops[0], Op::Vxlan(VxlanOp::DeleteDevice(_))));
    assert!(matches!(ops[1], Op::Vxlan(VxlanOp::SetDevice(_))));
    assert_eq!(ops.len(), 5, "{ops:?}");
    // A changed MTU is changed in place.
    let mut mtu = one.clone();
    mtu.vxlan.device.as_mut().unwrap().mtu = 1400;
    assert_eq!(
        diff(&mtu, &one),
        vec![Op::Vxlan(VxlanOp::SetDevice(Box::new(
            one.vxlan.device.clone().unwrap()
        )))]
    );
}

#[test]
fn switching_to_host_gw_deletes_the_device_and_keeps_direct_routes_consistent() {
    let own = net("10.244.1.0/24");
    let peers = [peer("10.244.2.0/24", "192.168.1.11", Some(2))];
    let vx = plan(own, &peers, &vxlan(false)).state;
    let hg = plan(
        own,
        &peers,
        &Settings::HostGw(HostGwSettings {
            underlay: underlay(),
        }),
    )
    .state;
    let ops = diff(&vx, &hg);
    assert_eq!(ops[0], Op::Vxlan(VxlanOp::DeleteDevice("weft.1".into())));
    assert_eq!(
        ops.last(),
        Some(&Op::SetRoute(*hg.routes.iter().next().unwrap()))
    );
    assert_eq!(ops.len(), 2, "{ops:?}");
}

// IPv6: the same plan over the peers' IPv6 halves.

fn peer6(n: u16, public6: Option<&str>, m6: Option<u8>) -> Peer {
    Peer {
        subnet: format!("10.244.{n}.0/24").parse().unwrap(),
        public_ip: format!("10.0.9.{n}").parse().unwrap(),
        subnet_v6: Some(format!("fc00:0:0:{n:x}::/64").parse().unwrap()),
        public_ip_v6: public6.map(|p| p.parse().unwrap()),
        backend: BackendKind::Vxlan,
        data: Some(BackendData::vxlan(1, mac(0x40 + n as u8))),
        data_v6: m6.map(|n| BackendData::vxlan(1, mac(n))),
        node_name: None,
    }
}

fn underlay6() -> Underlay {
    Underlay {
        index: 3,
        ip: ip("fd00:99::1"),
        mtu: 1500,
        connected: vec![net("fd00:99::/64"), net("192.168.1.0/24")],
    }
}

fn vxlan6(direct: bool) -> Settings {
    Settings::Vxlan(VxlanSettings {
        device: "weft-v6.1".into(),
        vni: 1,
        port: 8472,
        mac: mac(0x61),
        mtu: VxlanSettings::mtu_for(1500, None, IpFamily::V6),
        underlay: underlay6(),
        direct_routing: direct,
    })
}

fn own6() -> IpNetwork {
    net("fc00:0:0:1::/64")
}

#[test]
fn the_vxlan_overhead_is_50_over_ipv4_and_70_over_ipv6() {
    let cases = [
        (1500, None, IpFamily::V4, 1450),
        (1500, None, IpFamily::V6, 1430),
        (9000, None, IpFamily::V6, 8930),
        (1500, Some(1400), IpFamily::V6, 1400),
        (1500, Some(1400), IpFamily::V4, 1400),
        (60, None, IpFamily::V6, 0),
    ];
    for (underlay, explicit, family, want) in cases {
        assert_eq!(
            VxlanSettings::mtu_for(underlay, explicit, family),
            want,
            "{underlay} {explicit:?} {family}"
        );
    }
    assert_eq!(vxlan_overhead(IpFamily::V6), VXLAN_OVERHEAD_V6);
}

#[test]
fn a_v6_vxlan_plan_uses_the_peers_ipv6_halves() {
    let peers = [
        peer6(2, Some("fd00:99::2"), Some(2)),
        peer6(3, Some("2001:db8::3"), Some(3)),
    ];
    let p = plan(own6(), &peers, &vxlan6(false));
    assert!(p.unreachable.is_empty() && p.refused.is_empty(), "{p:?}");
    let d = p.state.vxlan.device.clone().unwrap();
    assert_eq!(
        (d.name.as_str(), d.mtu, d.local, d.addresses.clone(), d.mac),
        (
            "weft-v6.1",
            1430,
            ip("fd00:99::1"),
            vec![net("fc00:0:0:1::/128")],
            mac(0x61)
        )
    );
    assert_eq!(
        p.state.vxlan.neighbours,
        BTreeSet::from([
            Neighbour {
                ip: ip("fc00:0:0:2::"),
                mac: mac(2)
            },
            Neighbour {
                ip: ip("fc00:0:0:3::"),
                mac: mac(3)
            },
        ])
    );
    assert_eq!(
        p.state.vxlan.fdb,
        BTreeSet::from([
            FdbEntry {
                mac: mac(2),
                dst: ip("fd00:99::2")
            },
            FdbEntry {
                mac: mac(3),
                dst: ip("2001:db8::3")
            },
        ])
    );
    assert!(p.state.routes.contains(&Route {
        dst: net("fc00:0:0:2::/64"),
        via: Via::Overlay {
            gateway: ip("fc00:0:0:2::")
        }
    }));
    assert_eq!(p.state.routes.len(), 2);
    // The IPv4 plan of the same dual-stack peers uses their IPv4 halves only.
    let p4 = plan(net("10.244.1.0/24"), &peers, &vxlan(false));
    assert!(p4
        .state
        .routes
        .iter()
        .all(|r| IpFamily::of_network(r.dst) == IpFamily::V4));
    assert!(p4.state.vxlan.fdb.contains(&FdbEntry {
        mac: mac(0x42),
        dst: ip("10.0.9.2")
    }));
}

#[test]
fn a_peer_lacking_an_ipv6_half_is_unreachable_with_the_reason() {
    let mut no_subnet = peer6(4, Some("fd00:99::4"), Some(4));
    no_subnet.subnet_v6 = None;
    let peers = [
        peer6(2, Some("fd00:99::2"), Some(2)),
        peer6(3, None, Some(3)),
        no_subnet,
        peer6(5, Some("2001:db8::5"), None),
    ];
    let p = plan(own6(), &peers, &vxlan6(false));
    let texts: Vec<(String, String)> = p
        .unreachable
        .iter()
        .map(|(s, why)| (s.to_string(), why.to_string()))
        .collect();
    let got: Vec<(String, &str)> = texts.iter().map(|(s, w)| (s.clone(), w.as_str())).collect();
    assert_eq!(
        got,
        [
            ("fc00:0:0:3::/64".to_string(), "its lease has no PublicIPv6"),
            ("10.244.4.0/24".to_string(), "its lease has no IPv6 subnet"),
            (
                "fc00:0:0:5::/64".to_string(),
                "its lease has no IPv6 VtepMAC"
            ),
        ]
    );
    assert_eq!(p.state.routes.len(), 1);
    // DirectRouting needs no MAC for a peer on the underlay's IPv6 segment.
    let direct = peer6(6, Some("fd00:99::6"), None);
    let p = plan(own6(), &[direct], &vxlan6(true));
    assert!(p.unreachable.is_empty(), "{p:?}");
    assert_eq!(
        p.state.routes.iter().next().unwrap(),
        &Route {
            dst: net("fc00:0:0:6::/64"),
            via: Via::Direct {
                gateway: ip("fd00:99::6"),
                index: 3
            }
        }
    );
    assert!(p.state.vxlan.neighbours.is_empty() && p.state.vxlan.fdb.is_empty());
}

#[test]
fn host_gw_v6_routes_via_the_peers_ipv6_address() {
    let peers = [
        peer6(2, Some("fd00:99::2"), None),
        peer6(3, Some("2001:db8::3"), None),
        peer6(4, None, None),
    ];
    let p = plan(
        own6(),
        &peers,
        &Settings::HostGw(HostGwSettings {
            underlay: underlay6(),
        }),
    );
    assert!(p.state.vxlan.device.is_none());
    assert_eq!(
        p.state.routes,
        BTreeSet::from([Route {
            dst: net("fc00:0:0:2::/64"),
            via: Via::Direct {
                gateway: ip("fd00:99::2"),
                index: 3
            }
        }])
    );
    assert_eq!(p.unreachable.len(), 2);
    assert!(
        p.unreachable[0].1.to_string().contains("2001:db8::3"),
        "{p:?}"
    );
    assert_eq!(
        p.unreachable[1].1,
        Unreachable::NoPublicIp {
            field: "PublicIPv6"
        }
    );
    assert_eq!(
        p.unreachable[1].1.to_string(),
        "its lease has no PublicIPv6"
    );
    // An IPv4-only connected list reaches no IPv6 peer.
    let p = plan(
        own6(),
        &peers[..1],
        &Settings::HostGw(HostGwSettings {
            underlay: underlay(),
        }),
    );
    assert_eq!(p.unreachable.len(), 1);
    assert!(p.state.routes.is_empty());
}

#[test]
fn v6_peers_whose_route_would_shadow_the_node_are_refused() {
    let mut on_underlay = peer6(2, Some("2001:db8::2"), Some(2));
    on_underlay.subnet_v6 = Some("fd00:99::/64".parse().unwrap());
    let mut covering = peer6(3, Some("2001:db8::3"), Some(3));
    covering.subnet_v6 = Some("fd00::/16".parse().unwrap());
    let mut in_own = peer6(4, Some("2001:db8::4"), Some(4));
    in_own.subnet_v6 = Some("fc00:0:0:1:8000::/65".parse().unwrap());
    // Its IPv4 subnet would shadow the IPv4 underlay, which does not matter in IPv6.
    let mut v4_clash = peer6(5, Some("2001:db8::5"), Some(5));
    v4_clash.subnet = "192.168.1.0/24".parse().unwrap();
    let peers = [on_underlay, covering, in_own, v4_clash];
    for settings in [
        vxlan6(false),
        vxlan6(true),
        Settings::HostGw(HostGwSettings {
            underlay: underlay6(),
        }),
    ] {
        let p = plan(own6(), &peers, &settings);
        let refused: Vec<String> = p.refused.iter().map(|(s, _)| s.to_string()).collect();
        assert_eq!(
            refused,
            ["fd00:99::/64", "fd00::/16", "fc00:0:0:1:8000::/65"],
            "{settings:?}"
        );
        assert!(p.refused[0]
            .1
            .to_string()
            .contains("underlay network fd00:99::/64"));
        assert!(p.refused[2]
            .1
            .to_string()
            .contains("own pod subnet fc00:0:0:1::/64"));
    }
    let p = plan(own6(), &peers, &vxlan6(false));
    assert_eq!(
        p.state.routes.iter().map(|r| r.dst).collect::<Vec<_>>(),
        [net("fc00:0:0:5::/64")]
    );
}

#[test]
fn a_vxlan_underlay_of_the_other_family_plans_nothing_and_says_why() {
    let mut s = vxlan6(false);
    if let Settings::Vxlan(v) = &mut s {
        v.underlay = underlay(); // IPv4 underlay for an IPv6 overlay
    }
    let peers = [peer6(2, Some("fd00:99::2"), Some(2))];
    let p = plan(own6(), &peers, &s);
    assert_eq!(p.state, KernelState::default());
    assert_eq!(p.refused.len(), 1);
    assert_eq!(p.refused[0].0, own6());
    assert!(
        p.refused[0]
            .1
            .to_string()
            .contains("192.168.1.10 is IPv4 but the overlay is IPv6"),
        "{}",
        p.refused[0].1
    );
    assert_eq!(p.unreachable.len(), 1);
    assert_eq!(p.unreachable[0].0, net("fc00:0:0:2::/64"));
    // And the other way round.
    let p = plan(net("10.244.1.0/24"), &peers, &vxlan6(false));
    assert!(p.state.vxlan.device.is_none());
    assert!(p.refused[0]
        .1
        .to_string()
        .contains("is IPv6 but the overlay is IPv4"));
    assert_eq!(p.unreachable[0].0, net("10.244.2.0/24"));
}

#[test]
fn v6_diffs_replace_a_changed_mac_and_remove_a_peer_in_reverse_order() {
    let before = plan(
        own6(),
        &[peer6(2, Some("fd00:99::2"), Some(2))],
        &vxlan6(false),
    )
    .state;
    let after = plan(
        own6(),
        &[peer6(2, Some("fd00:99::2"), Some(9))],
        &vxlan6(false),
    )
    .state;
    assert_eq!(
        diff(&before, &after),
        vec![
            Op::Vxlan(VxlanOp::DeleteFdb(FdbEntry {
                mac: mac(2),
                dst: ip("fd00:99::2")
            })),
            Op::Vxlan(VxlanOp::SetNeighbour(Neighbour {
                ip: ip("fc00:0:0:2::"),
                mac: mac(9)
            })),
            Op::Vxlan(VxlanOp::SetFdb(FdbEntry {
                mac: mac(9),
                dst: ip("fd00:99::2")
            })),
        ]
    );
    let none = plan(own6(), &[], &vxlan6(false)).state;
    assert!(matches!(
        diff(&after, &none).as_slice(),
        [
            Op::DeleteRoute(_),
            Op::Vxlan(VxlanOp::DeleteFdb(_)),
            Op::Vxlan(VxlanOp::DeleteNeighbour(_))
        ]
    ));
    let fresh = diff(&KernelState::default(), &after);
    assert_eq!(fresh.len(), 4);
    assert!(fresh.iter().all(|op| op.is_of(IpFamily::V6)));
    assert!(!fresh.iter().any(|op| op.is_of(IpFamily::V4)));
}

#[test]
fn a_v6_route_moving_from_the_underlay_to_the_overlay_is_deleted_first() {
    let peers = [peer6(2, Some("fd00:99::2"), Some(2))];
    let direct = plan(own6(), &peers, &vxlan6(true)).state;
    let overlay = plan(own6(), &peers, &vxlan6(false)).state;
    let old = *direct.routes.iter().next().unwrap();
    let new = *overlay.routes.iter().next().unwrap();
    let ops = diff(&direct, &overlay);
    assert_eq!(ops.first(), Some(&Op::DeleteRoute(old)), "{ops:?}");
    assert_eq!(ops.last(), Some(&Op::SetRoute(new)), "{ops:?}");
    assert_eq!(ops.len(), 4, "delete, neighbour, FDB, route: {ops:?}");
    // The other way is a replacement, and so is every IPv4 change.
    assert_eq!(diff(&overlay, &direct).len(), 3, "route, FDB, neighbour");
    let peers4 = [peer("10.244.2.0/24", "192.168.1.11", Some(2))];
    let own4 = net("10.244.1.0/24");
    let ops = diff(
        &plan(own4, &peers4, &vxlan(true)).state,
        &plan(own4, &peers4, &vxlan(false)).state,
    );
    assert!(
        !ops.iter().any(|o| matches!(o, Op::DeleteRoute(_))),
        "{ops:?}"
    );
}
#[test]
fn operations_name_their_links_in_ip_route_words() {
    let own = net("10.244.1.0/24");
    let peers = [
        peer("10.244.2.0/24", "192.168.1.11", Some(2)),
        peer("10.244.3.0/24", "10.0.9.9", Some(3)),
    ];
    let ops = diff(
        &KernelState::default(),
        &plan(own, &peers, &vxlan(true)).state,
    );
    let names = LinkNames::new("weft.1").with_link(2, "eth0");
    let text: Vec<String> = ops.iter().map(|o| names.show(o).to_string()).collect();
    assert_eq!(
        text,
        [
            "set device weft.1 (vxlan id 1 port 8472 local 192.168.1.10 dev eth0, mac 02:00:00:00:00:01, mtu 1450)",
            "set neighbour 10.244.3.0 lladdr 02:00:00:00:00:03 dev weft.1",
            "set fdb 02:00:00:00:00:03 dst 10.0.9.9 dev weft.1",
            "set route 10.244.2.0/24 via 192.168.1.11 dev eth0",
            "set route 10.244.3.0/24 via 10.244.3.0 dev weft.1 onlink",
        ]
    );
    let removed = diff(
        &plan(own, &peers, &vxlan(true)).state,
        &KernelState::default(),
    );
    let text: Vec<String> = removed.iter().map(|o| names.show(o).to_string()).collect();
    assert_eq!(text[0], "delete device weft.1");
    assert_eq!(
        text[1],
        "delete route 10.244.2.0/24 via 192.168.1.11 dev eth0"
    );
    // A link nobody named is still not shown as `#7`.
    let stray = Op::DeleteRoute(Route {
        dst: net("10.244.9.0/24"),
        via: Via::Direct {
            gateway: ip("192.168.1.99"),
            index: 7,
        },
    });
    assert_eq!(
        names.show(&stray).to_string(),
        "delete route 10.244.9.0/24 via 192.168.1.99 dev interface index 7"
    );
}

#[test]
fn every_registered_backend_round_trips_its_name_and_the_error_lists_them_all() {
    for kind in BackendKind::ALL {
        assert_eq!(kind.as_str().parse::<BackendKind>(), Ok(kind));
    }
    let err = "udp".parse::<BackendKind>().unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"unknown backend type "udp" (supported: "vxlan", "host-gw", "wireguard")"#
    );
}

#[test]
fn backend_data_is_decoded_by_the_peers_backend_and_checked() {
    use crate::backend::{BackendDataError, DataRules, VxlanDataError};
    let rules = DataRules { vni: 1 };
    let good = serde_json::json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:02"});
    assert_eq!(
        BackendData::decode(BackendKind::Vxlan, "BackendData", Some(&good), rules),
        Ok(Some(BackendData::vxlan(1, MacAddr([0x0e, 0, 0, 0, 0, 2]))))
    );
    // host-gw publishes nothing, whatever the lease carries.
    assert_eq!(
        BackendData::decode(BackendKind::HostGw, "BackendData", Some(&good), rules),
        Ok(None)
    );
    assert_eq!(
        BackendData::decode(BackendKind::Vxlan, "BackendV6Data", None, rules),
        Err(BackendDataError::Missing("BackendV6Data"))
    );
    let other_vni = serde_json::json!({"VNI": 2, "VtepMAC": "0e:00:00:00:00:02"});
    assert_eq!(
        BackendData::decode(BackendKind::Vxlan, "BackendData", Some(&other_vni), rules),
        Err(BackendDataError::Vxlan(VxlanDataError::VniMismatch {
            theirs: 2,
            ours: 1
        }))
    );
    let bad = serde_json::json!({"VNI": 1, "VtepMAC": "zz"});
    let e = BackendData::decode(BackendKind::Vxlan, "BackendV6Data", Some(&bad), rules)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("BackendV6Data is not vxlan data: "), "{e}");
    // Published as flannel writes it.
    assert_eq!(
        BackendData::vxlan(1, MacAddr([0x0e, 0, 0, 0, 0, 2])).to_json(),
        good
    );
}
