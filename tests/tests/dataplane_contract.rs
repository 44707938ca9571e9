//! The data-plane contract: the same cases against the in-memory `FakeNetlink` and against the
//! kernel (`KernelNetlink` in a namespace of the test's own, over a veth underlay). After
//! applying `diff(observed, desired)`, reading the kernel back must give exactly `desired`,
//! and a second diff must be empty.

use std::fs::File;

use ipnetwork::Ipv4Network;
use weft_backends::dataplane::{DataplaneError, FakeNetlink, KernelNetlink, Netlink};
use weft_backends::plan::{diff, Backend, KernelState, Settings, Underlay, Via, VxlanSettings};
use weft_backends::{BackendKind, MacAddr, Peer};
use weft_tests::netns::Netns;

fn net(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

fn peer(n: u8, public: &str, mac: u8) -> Peer {
    Peer {
        subnet: net(&format!("10.244.{n}.0/24")),
        public_ip: public.parse().unwrap(),
        subnet_v6: None,
        public_ip_v6: None,
        backend: BackendKind::Vxlan,
        vtep_mac: Some(MacAddr([0x0e, 0, 0, 0, 0, mac])),
        node_name: None,
    }
}

fn underlay(index: u32) -> Underlay {
    Underlay {
        index,
        ip: "10.9.0.1".parse().unwrap(),
        mtu: 1500,
        connected: vec![net("10.9.0.0/24")],
    }
}

fn vxlan(index: u32, direct: bool) -> Settings {
    Settings::Vxlan(VxlanSettings {
        device: "weft.1".into(),
        vni: 1,
        port: 8472,
        mac: MacAddr([0x0e, 1, 2, 3, 4, 5]),
        mtu: VxlanSettings::mtu_for(1500, None),
        underlay: underlay(index),
        direct_routing: direct,
    })
}

/// Take `nl` to `want`; return the number of operations it took.
fn converge<N: Netlink>(nl: &mut N, want: &KernelState, case: &str) -> usize {
    let before = nl.observe().unwrap();
    let ops = diff(&before, want);
    let report = nl.apply(&ops);
    assert!(report.ok(), "{case}: {:?}", report.failures);
    let after = nl.observe().unwrap();
    assert_eq!(
        &after, want,
        "{case}: read back differs from the wanted state"
    );
    assert!(diff(&after, want).is_empty(), "{case}: not idempotent");
    ops.len()
}

fn contract<N: Netlink>(nl: &mut N, index: u32) {
    let own = net("10.244.1.0/24");
    let peers = vec![
        peer(2, "10.9.0.2", 2),
        peer(3, "172.16.0.3", 3),
        peer(4, "172.16.0.4", 4),
    ];

    // A fresh node gets the device and three entries per peer.
    let want = vxlan(index, false).plan(own, &peers).state;
    assert_eq!(converge(nl, &want, "fresh"), 1 + 3 * 3);
    assert_eq!(converge(nl, &want, "again"), 0);

    // A peer's VTEP MAC changes: neighbour replaced, old FDB entry removed.
    let mut changed = peers.clone();
    changed[1].vtep_mac = Some(MacAddr([0x0e, 0, 0, 0, 0, 0x33]));
    let want2 = vxlan(index, false).plan(own, &changed).state;
    assert_eq!(converge(nl, &want2, "MAC change"), 3);
    assert!(!nl
        .observe()
        .unwrap()
        .fdb
        .iter()
        .any(|f| f.mac == MacAddr([0x0e, 0, 0, 0, 0, 3])));

    // A peer leaves.
    let want3 = vxlan(index, false).plan(own, &changed[..2]).state;
    assert_eq!(converge(nl, &want3, "peer removed"), 3);

    // A new own subnet moves the device address; a new MTU is set in place.
    let mut s = vxlan(index, false);
    if let Settings::Vxlan(v) = &mut s {
        v.mtu = 1400;
    }
    let want4 = s.plan(net("10.244.9.0/24"), &changed[..2]).state;
    assert_eq!(converge(nl, &want4, "address and MTU"), 1);

    // DirectRouting: the peer on the underlay's subnet is routed directly.
    let want5 = vxlan(index, true).plan(own, &changed[..2]).state;
    assert!(want5
        .routes
        .iter()
        .any(|r| matches!(r.via, Via::Direct { .. })));
    converge(nl, &want5, "direct routing");

    // host-gw: the device goes, only direct routes remain (the off-segment peer is reported).
    let hg = Settings::HostGw(underlay(index)).plan(own, &changed);
    assert_eq!(hg.unreachable.len(), 2);
    converge(nl, &hg.state, "host-gw");
    assert!(nl.observe().unwrap().device.is_none());

    // Back to vxlan, then nothing at all.
    converge(nl, &want, "vxlan again");
    converge(nl, &KernelState::default(), "empty");
}

#[test]
fn the_fake_meets_the_contract() {
    contract(&mut FakeNetlink::default(), 7);
}

/// A namespace with a veth underlay `u0` (10.9.0.1/24) and a kernel data plane in it.
fn kernel_ns(tag: &str) -> (Netns, KernelNetlink, u32) {
    let (ns, index) = Netns::with_underlay(tag);
    let file = File::open(ns.path()).unwrap();
    let nl = KernelNetlink::open_in(&file, &ns.path().display().to_string(), "weft.1").unwrap();
    (ns, nl, index)
}

#[test]
fn the_kernel_meets_the_contract() {
    let (ns, mut nl, index) = kernel_ns("dpc");
    contract(&mut nl, index);
    // What the kernel shows with ip(8): nothing of weft's is left.
    assert!(!ns.links().iter().any(|l| l == "weft.1"));
    assert!(!ns.ip(&["route", "show", "proto", "87"]).contains("10.244."));
}

#[test]
fn kernel_entries_look_like_flannels() {
    let (ns, mut nl, index) = kernel_ns("dpf");
    let peers = [peer(2, "172.16.0.2", 2)];
    let want = vxlan(index, false).plan(net("10.244.1.0/24"), &peers).state;
    converge(&mut nl, &want, "fresh");
    let link = ns.ip(&["-d", "link", "show", "weft.1"]);
    for part in [
        "vxlan id 1 ",
        "local 10.9.0.1",
        "dev u0",
        "dstport 8472",
        "nolearning",
        "mtu 1450",
        "0e:01:02:03:04:05",
    ] {
        assert!(link.contains(part), "missing {part:?} in:\n{link}");
    }
    assert!(ns
        .ip(&["addr", "show", "dev", "weft.1"])
        .contains("inet 10.244.1.0/32"));
    let neigh = ns.ip(&["neigh", "show", "dev", "weft.1"]);
    assert!(
        neigh.contains("10.244.2.0 lladdr 0e:00:00:00:00:02 PERMANENT"),
        "{neigh}"
    );
    let (_, fdb, _) = ns.exec("bridge", &["fdb", "show", "dev", "weft.1"]);
    assert!(
        fdb.contains("0e:00:00:00:00:02 dst 172.16.0.2 self permanent"),
        "{fdb}"
    );
    let route = ns.ip(&["route", "show", "10.244.2.0/24"]);
    assert!(
        route.contains("via 10.244.2.0 dev weft.1 proto 87 onlink"),
        "{route}"
    );
}

#[test]
fn kernel_state_of_others_is_left_alone_and_unexplained_state_of_ours_is_removed() {
    let (ns, mut nl, index) = kernel_ns("dpo");
    // Someone else's route, and a stale route of weft's from an earlier run.
    ns.ip(&["route", "add", "10.50.0.0/16", "via", "10.9.0.254"]);
    ns.ip(&[
        "route",
        "add",
        "10.244.77.0/24",
        "via",
        "10.9.0.77",
        "proto",
        "87",
    ]);
    let want = vxlan(index, false)
        .plan(net("10.244.1.0/24"), &[peer(2, "172.16.0.2", 2)])
        .state;
    converge(&mut nl, &want, "start");
    let routes = ns.ip(&["route"]);
    assert!(routes.contains("10.50.0.0/16 via 10.9.0.254"), "{routes}");
    assert!(!routes.contains("10.244.77.0"), "{routes}");
    // A stale permanent neighbour on weft's device is removed too.
    ns.ip(&[
        "neigh",
        "add",
        "10.244.88.0",
        "lladdr",
        "0e:00:00:00:00:88",
        "dev",
        "weft.1",
        "nud",
        "permanent",
    ]);
    converge(&mut nl, &want, "stale neighbour");
    assert!(!ns
        .ip(&["neigh", "show", "dev", "weft.1"])
        .contains("10.244.88.0"));
}

#[test]
fn kernel_refuses_a_foreign_link_with_the_device_name_and_changes_nothing() {
    let (ns, mut nl, index) = kernel_ns("dpn");
    ns.ip(&["link", "add", "weft.1", "type", "bridge"]);
    let want = vxlan(index, false)
        .plan(net("10.244.1.0/24"), &[peer(2, "172.16.0.2", 2)])
        .state;
    match nl.observe() {
        Err(e @ DataplaneError::NotVxlan { .. }) => {
            assert!(e.to_string().contains("weft.1"), "{e}");
            assert!(e.to_string().contains("bridge"), "{e}");
        }
        other => panic!("expected NotVxlan, got {other:?}"),
    }
    let report = nl.apply(&diff(&KernelState::default(), &want));
    assert!(!report.ok());
    assert!(
        ns.ip(&["-d", "link", "show", "weft.1"]).contains("bridge"),
        "the bridge is untouched"
    );
    assert!(
        !ns.ip(&["route"]).contains("10.244.2.0"),
        "no route without the device"
    );
}

#[test]
fn kernel_reports_exactly_the_refused_operations_of_a_batch() {
    use weft_backends::plan::{Op, Route};
    let (ns, mut nl, index) = kernel_ns("dpb");
    // 300 routes (more than one batch), three of them through a device that does not exist.
    let bad = [7u32, 150, 299];
    let ops: Vec<Op> = (0..300u32)
        .map(|i| {
            let dst = Ipv4Network::new(
                std::net::Ipv4Addr::new(10, 200, (i / 256) as u8, (i % 256) as u8),
                32,
            )
            .unwrap();
            Op::SetRoute(Route {
                dst,
                via: Via::Direct {
                    gateway: "10.9.0.2".parse().unwrap(),
                    index: if bad.contains(&i) { 999_999 } else { index },
                },
            })
        })
        .collect();
    let report = nl.apply(&ops);
    assert_eq!(report.applied, 297);
    let failed: Vec<&Op> = report.failures.iter().map(|(op, _)| op).collect();
    let want: Vec<&Op> = bad.iter().map(|&i| &ops[i as usize]).collect();
    assert_eq!(failed, want);
    assert!(
        report.failures[0].1.contains("set route 10.200.0.7/32"),
        "{:?}",
        report.failures[0]
    );
    assert_eq!(
        ns.ip(&["route", "show", "proto", "87"]).lines().count(),
        297
    );
}
