//! The data-plane contract: the same cases against the in-memory `FakeNetlink` and against the
//! kernel (`KernelNetlink` in a namespace of the test's own, over a dual-stack veth underlay),
//! for an IPv4 and an IPv6 overlay. After applying `diff(observed, desired)`, reading the
//! kernel back must give exactly `desired`, and a second diff must be empty.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;

use ipnetwork::{IpNetwork, Ipv4Network};
use weft_backends::backend::vxlan::VxlanSettings;
use weft_backends::backend::{Backend, BackendData, HostGwSettings, Settings};
use weft_backends::dataplane::{
    remove_weft_state, DataplaneError, FakeNetlink, KernelNetlink, Netlink,
};
use weft_backends::netlink::BATCH_SOCKET_RCVBUF;
use weft_backends::plan::{diff, KernelState, Underlay};
use weft_backends::route::Via;
use weft_backends::{BackendKind, IpFamily, MacAddr, Peer};
use weft_tests::netns::Netns;

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The addresses and names one family's cases use: pod subnets 10.244.<n>.0/24 and
/// fc00:0:0:<n>::/64, the underlay u0 (10.9.0.1/24 and fd00:99::1/64), remote public IPs
/// 172.16.0.<n> and 2001:db8::<n>.
#[derive(Clone, Copy, Debug)]
struct Fx(IpFamily);

impl Fx {
    fn device(self) -> &'static str {
        match self.0 {
            IpFamily::V4 => "weft.1",
            IpFamily::V6 => "weft-v6.1",
        }
    }

    fn subnet(self, n: u16) -> IpNetwork {
        match self.0 {
            IpFamily::V4 => net(&format!("10.244.{n}.0/24")),
            IpFamily::V6 => net(&format!("fc00:0:0:{n:x}::/64")),
        }
    }

    /// A public IP on the underlay's segment.
    fn on_segment(self, n: u16) -> IpAddr {
        match self.0 {
            IpFamily::V4 => ip(&format!("10.9.0.{n}")),
            IpFamily::V6 => ip(&format!("fd00:99::{n:x}")),
        }
    }

    /// A public IP behind a router.
    fn remote(self, n: u16) -> IpAddr {
        match self.0 {
            IpFamily::V4 => ip(&format!("172.16.0.{n}")),
            IpFamily::V6 => ip(&format!("2001:db8::{n:x}")),
        }
    }

    /// A dual-stack peer whose halves of this family are `public` and `mac` (the other
    /// family's halves are filled in too, and must not matter).
    fn peer(self, n: u16, public: IpAddr, mac: u8) -> Peer {
        let mut p = Peer {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: format!("172.31.0.{n}").parse().unwrap(),
            subnet_v6: Some(format!("fc00:0:0:{n:x}::/64").parse().unwrap()),
            public_ip_v6: Some(format!("2001:db8:ffff::{n:x}").parse().unwrap()),
            backend: BackendKind::Vxlan,
            data: Some(BackendData::vxlan(1, MacAddr([0x0e, 0, 0, 0, 0x44, mac]))),
            data_v6: Some(BackendData::vxlan(1, MacAddr([0x0e, 0, 0, 0, 0x66, mac]))),
            node_name: None,
        };
        self.set_public(&mut p, public);
        self.set_mac(&mut p, MacAddr([0x0e, 0, 0, 0, 0, mac]));
        p
    }

    fn set_public(self, p: &mut Peer, public: IpAddr) {
        match public {
            IpAddr::V4(v4) => p.public_ip = v4,
            IpAddr::V6(v6) => p.public_ip_v6 = Some(v6),
        }
    }

    fn set_mac(self, p: &mut Peer, mac: MacAddr) {
        match self.0 {
            IpFamily::V4 => p.data = Some(BackendData::vxlan(1, mac)),
            IpFamily::V6 => p.data_v6 = Some(BackendData::vxlan(1, mac)),
        }
    }

    fn underlay(self, index: u32) -> Underlay {
        Underlay {
            index,
            ip: match self.0 {
                IpFamily::V4 => ip("10.9.0.1"),
                IpFamily::V6 => ip("fd00:99::1"),
            },
            mtu: 1500,
            connected: vec![net("10.9.0.0/24"), net("fd00:99::/64")],
        }
    }

    fn vxlan(self, index: u32, direct: bool) -> Settings {
        Settings::Vxlan(VxlanSettings {
            device: self.device().into(),
            vni: 1,
            port: 8472,
            mac: MacAddr([0x0e, 1, 2, 3, 4, 5 + self.0 as u8]),
            mtu: VxlanSettings::mtu_for(1500, None, self.0),
            underlay: self.underlay(index),
            direct_routing: direct,
        })
    }
}

const V4: Fx = Fx(IpFamily::V4);
const V6: Fx = Fx(IpFamily::V6);

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

fn contract<N: Netlink>(nl: &mut N, index: u32, fx: Fx) {
    let own = fx.subnet(1);
    let peers = vec![
        fx.peer(2, fx.on_segment(2), 2),
        fx.peer(3, fx.remote(3), 3),
        fx.peer(4, fx.remote(4), 4),
    ];

    // A fresh node gets the device and three entries per peer.
    let want = fx.vxlan(index, false).plan(own, &peers).state;
    assert_eq!(want.routes.len(), 3, "{fx:?}");
    assert_eq!(converge(nl, &want, "fresh"), 1 + 3 * 3);
    assert_eq!(converge(nl, &want, "again"), 0);

    // A peer's VTEP MAC changes: neighbour replaced, old FDB entry removed.
    let mut changed = peers.clone();
    fx.set_mac(&mut changed[1], MacAddr([0x0e, 0, 0, 0, 0, 0x33]));
    let want2 = fx.vxlan(index, false).plan(own, &changed).state;
    assert_eq!(converge(nl, &want2, "MAC change"), 3);
    assert!(!nl
        .observe()
        .unwrap()
        .vxlan
        .fdb
        .iter()
        .any(|f| f.mac == MacAddr([0x0e, 0, 0, 0, 0, 3])));

    // A peer leaves.
    let want3 = fx.vxlan(index, false).plan(own, &changed[..2]).state;
    assert_eq!(converge(nl, &want3, "peer removed"), 3);

    // A new own subnet moves the device address; a new MTU is set in place.
    let mut s = fx.vxlan(index, false);
    if let Settings::Vxlan(v) = &mut s {
        v.mtu = 1400;
    }
    let want4 = s.plan(fx.subnet(9), &changed[..2]).state;
    assert_eq!(converge(nl, &want4, "address and MTU"), 1);

    // DirectRouting: the peer on the underlay's subnet is routed directly.
    let want5 = fx.vxlan(index, true).plan(own, &changed[..2]).state;
    assert!(want5
        .routes
        .iter()
        .any(|r| matches!(r.via, Via::Direct { .. })));
    converge(nl, &want5, "direct routing");

    // host-gw: the device goes, only direct routes remain (the off-segment peer is reported).
    let hg = Settings::HostGw(HostGwSettings {
        underlay: fx.underlay(index),
    })
    .plan(own, &changed);
    assert_eq!(hg.unreachable.len(), 2);
    converge(nl, &hg.state, "host-gw");
    assert!(nl.observe().unwrap().vxlan.device.is_none());

    // Back to vxlan, then nothing at all.
    converge(nl, &want, "vxlan again");
    converge(nl, &KernelState::default(), "empty");
}

#[test]
fn the_fake_meets_the_contract() {
    contract(&mut FakeNetlink::new(IpFamily::V4), 7, V4);
    contract(&mut FakeNetlink::new(IpFamily::V6), 7, V6);
}

/// A namespace with a dual-stack veth underlay `u0` (10.9.0.1/24, fd00:99::1/64) and a
/// kernel data plane of `fx`'s family in it.
fn kernel_ns(tag: &str, fx: Fx) -> (Netns, KernelNetlink, u32) {
    let (ns, index) = Netns::with_underlay(tag);
    let nl = open(&ns, fx);
    (ns, nl, index)
}

/// A kernel data plane of `fx`'s family in `ns`.
fn open(ns: &Netns, fx: Fx) -> KernelNetlink {
    let file = File::open(ns.path()).unwrap();
    KernelNetlink::open_in(&file, &ns.path().display().to_string(), fx.device(), fx.0).unwrap()
}

/// Run `f` on a short-lived thread inside `ns` (the test's own thread never moves).
fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let file = File::open(ns.path()).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("enter the test namespace");
            f()
        })
        .join()
        .expect("namespace thread")
    })
}

#[test]
fn the_kernel_meets_the_contract() {
    let (ns, mut nl, index) = kernel_ns("dpc", V4);
    contract(&mut nl, index, V4);
    // What the kernel shows with ip(8): nothing of weft's is left.
    assert!(!ns.links().iter().any(|l| l == "weft.1"));
    assert!(!ns.ip(&["route", "show", "proto", "87"]).contains("10.244."));
}

#[test]
fn the_kernel_meets_the_contract_in_ipv6() {
    let (ns, mut nl, index) = kernel_ns("dpc6", V6);
    contract(&mut nl, index, V6);
    assert!(!ns.links().iter().any(|l| l == "weft-v6.1"));
    assert!(ns
        .ip(&["-6", "route", "show", "proto", "87"])
        .trim()
        .is_empty());
}

#[test]
fn kernel_entries_look_like_flannels() {
    let (ns, mut nl, index) = kernel_ns("dpf", V4);
    let peers = [V4.peer(2, ip("172.16.0.2"), 2)];
    let want = V4
        .vxlan(index, false)
        .plan(net("10.244.1.0/24"), &peers)
        .state;
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

/// Someone else's route is left alone, a stale route and a stale neighbour of weft's are
/// removed, in the family of `fx`.
fn others_left_alone_and_stale_state_removed(tag: &str, fx: Fx) {
    let (ns, mut nl, index) = kernel_ns(tag, fx);
    let (theirs, stale, stale_gw, stale_neigh, family) = match fx.0 {
        IpFamily::V4 => (
            ["10.50.0.0/16", "via", "10.9.0.254"],
            "10.244.77.0/24",
            "10.9.0.77",
            "10.244.88.0",
            "-4",
        ),
        IpFamily::V6 => (
            ["fd50::/16", "via", "fd00:99::fe"],
            "fc00:0:0:77::/64",
            "fd00:99::77",
            "fc00:0:0:88::",
            "-6",
        ),
    };
    // Someone else's route, and a stale route of weft's from an earlier run.
    ns.ip(&[family, "route", "add", theirs[0], theirs[1], theirs[2]]);
    ns.ip(&[
        family, "route", "add", stale, "via", stale_gw, "proto", "87",
    ]);
    let want = fx
        .vxlan(index, false)
        .plan(fx.subnet(1), &[fx.peer(2, fx.remote(2), 2)])
        .state;
    converge(&mut nl, &want, "start");
    let routes = ns.ip(&[family, "route"]);
    assert!(routes.contains(&theirs.join(" ")), "{routes}");
    assert!(!routes.contains(stale), "{routes}");
    // A stale permanent neighbour on weft's device is removed too.
    ns.ip(&[
        family,
        "neigh",
        "add",
        stale_neigh,
        "lladdr",
        "0e:00:00:00:00:88",
        "dev",
        fx.device(),
        "nud",
        "permanent",
    ]);
    converge(&mut nl, &want, "stale neighbour");
    assert!(!ns
        .ip(&[family, "neigh", "show", "dev", fx.device()])
        .contains(stale_neigh));
}

#[test]
fn kernel_state_of_others_is_left_alone_and_unexplained_state_of_ours_is_removed() {
    others_left_alone_and_stale_state_removed("dpo", V4);
}

#[test]
fn kernel_v6_state_of_others_is_left_alone_and_unexplained_state_of_ours_is_removed() {
    others_left_alone_and_stale_state_removed("dpo6", V6);
}

#[test]
fn kernel_refuses_a_foreign_link_with_the_device_name_and_changes_nothing() {
    for fx in [V4, V6] {
        let (ns, mut nl, index) = kernel_ns("dpn", fx);
        ns.ip(&["link", "add", fx.device(), "type", "bridge"]);
        let want = fx
            .vxlan(index, false)
            .plan(fx.subnet(1), &[fx.peer(2, fx.remote(2), 2)])
            .state;
        match nl.observe() {
            Err(e @ DataplaneError::NotVxlan { .. }) => {
                assert!(e.to_string().contains(fx.device()), "{e}");
                assert!(e.to_string().contains("bridge"), "{e}");
            }
            other => panic!("expected NotVxlan, got {other:?}"),
        }
        let report = nl.apply(&diff(&KernelState::default(), &want));
        assert!(!report.ok());
        assert!(
            ns.ip(&["-d", "link", "show", fx.device()])
                .contains("bridge"),
            "the bridge is untouched"
        );
        let routes = ns.ip(&["-4", "route"]) + &ns.ip(&["-6", "route"]);
        assert!(
            !routes.contains("10.244.2.0") && !routes.contains("fc00:0:0:2::"),
            "no route without the device: {routes}"
        );
    }
}

#[test]
fn kernel_v6_entries_look_like_flannels() {
    let (ns, mut nl, index) = kernel_ns("dpf6", V6);
    let peers = [
        V6.peer(2, ip("fd00:99::2"), 2),
        V6.peer(3, ip("2001:db8::3"), 3),
    ];
    let want = V6
        .vxlan(index, false)
        .plan(net("fc00:0:0:1::/64"), &peers)
        .state;
    converge(&mut nl, &want, "fresh");
    let link = ns.ip(&["-d", "link", "show", "weft-v6.1"]);
    for part in [
        "vxlan id 1 ",
        "local fd00:99::1",
        "dev u0",
        "dstport 8472",
        "nolearning",
        // 1500 - 70: an IPv6 underlay costs 20 bytes more than IPv4's.
        "mtu 1430",
        "0e:01:02:03:04:06",
    ] {
        assert!(link.contains(part), "missing {part:?} in:\n{link}");
    }
    // The address is usable at once (no duplicate address detection), and the kernel's own
    // link-local address is there too but not weft's concern.
    let addr = ns.ip(&["-6", "addr", "show", "dev", "weft-v6.1"]);
    let line = addr
        .lines()
        .find(|l| l.contains("inet6 fc00:0:0:1::/128"))
        .unwrap_or_else(|| panic!("no device address in:\n{addr}"));
    assert!(!line.contains("tentative"), "{line}");
    assert!(addr.contains("inet6 fe80::"), "{addr}");
    // The kernel's own neighbour entries (multicast NOARP mappings from router solicitation
    // and MLD, link-local ones from neighbour discovery) are not weft's: made here by hand so
    // as not to wait for the kernel, they are neither seen nor removed.
    for (dst, mac, nud) in [
        ("ff02::2", "33:33:00:00:00:02", "noarp"),
        ("fe80::99", "0e:00:00:00:00:99", "stale"),
    ] {
        ns.ip(&[
            "-6",
            "neigh",
            "replace",
            dst,
            "lladdr",
            mac,
            "dev",
            "weft-v6.1",
            "nud",
            nud,
        ]);
    }
    assert_eq!(nl.observe().unwrap(), want);
    let all = ns.ip(&["-6", "neigh", "show", "nud", "all", "dev", "weft-v6.1"]);
    assert!(
        all.contains("ff02::2 ") && all.contains("fe80::99 "),
        "{all}"
    );
    let neigh = ns.ip(&["-6", "neigh", "show", "dev", "weft-v6.1"]);
    for n in [
        "fc00:0:0:2:: lladdr 0e:00:00:00:00:02 PERMANENT",
        "fc00:0:0:3:: lladdr 0e:00:00:00:00:03 PERMANENT",
    ] {
        assert!(neigh.contains(n), "missing {n:?} in:\n{neigh}");
    }
    let (_, fdb, _) = ns.exec("bridge", &["fdb", "show", "dev", "weft-v6.1"]);
    for f in [
        "0e:00:00:00:00:02 dst fd00:99::2 self permanent",
        "0e:00:00:00:00:03 dst 2001:db8::3 self permanent",
    ] {
        assert!(fdb.contains(f), "missing {f:?} in:\n{fdb}");
    }
    let routes = ns.ip(&["-6", "route", "show", "proto", "87"]);
    for (dst, gw) in [
        ("fc00:0:0:2::/64", "fc00:0:0:2::"),
        ("fc00:0:0:3::/64", "fc00:0:0:3::"),
    ] {
        let line = routes
            .lines()
            .find(|l| l.starts_with(dst))
            .unwrap_or_else(|| panic!("no route to {dst} in:\n{routes}"));
        assert!(
            line.starts_with(&format!("{dst} via {gw} dev weft-v6.1 ")) && line.contains("onlink"),
            "{line}"
        );
    }
    assert_eq!(routes.lines().count(), 2, "{routes}");
    assert!(ns
        .ip(&["-6", "route", "show", "fc00:0:0:2::/64"])
        .contains("proto 87"));
    // No IPv4 state comes with an IPv6 overlay.
    assert!(ns
        .ip(&["-4", "route", "show", "proto", "87"])
        .trim()
        .is_empty());
    assert!(!ns.links().iter().any(|l| l == "weft.1"));

    // A peer's MAC changes, another leaves: as flannel would leave it.
    let mut moved = peers[0].clone();
    moved.data_v6 = Some(BackendData::vxlan(1, MacAddr([0x0e, 0, 0, 0, 0, 0x22])));
    let want = V6
        .vxlan(index, false)
        .plan(net("fc00:0:0:1::/64"), &[moved])
        .state;
    converge(&mut nl, &want, "MAC change and removal");
    let neigh = ns.ip(&["-6", "neigh", "show", "dev", "weft-v6.1"]);
    assert!(
        neigh.contains("fc00:0:0:2:: lladdr 0e:00:00:00:00:22 PERMANENT"),
        "{neigh}"
    );
    assert!(!neigh.contains("fc00:0:0:3::"), "{neigh}");
    let (_, fdb, _) = ns.exec("bridge", &["fdb", "show", "dev", "weft-v6.1"]);
    assert!(
        fdb.contains("0e:00:00:00:00:22 dst fd00:99::2 self permanent"),
        "{fdb}"
    );
    assert!(
        !fdb.contains("0e:00:00:00:00:02 ") && !fdb.contains("2001:db8::3"),
        "{fdb}"
    );
    let routes = ns.ip(&["-6", "route", "show", "proto", "87"]);
    assert_eq!(routes.lines().count(), 1, "{routes}");
}

#[test]
fn kernel_host_gw_v6_routes_directly_over_the_underlay() {
    let (ns, mut nl, index) = kernel_ns("dph6", V6);
    let peers = [
        V6.peer(2, ip("fd00:99::2"), 2),
        V6.peer(3, ip("2001:db8::3"), 3),
    ];
    let plan = Settings::HostGw(HostGwSettings {
        underlay: V6.underlay(index),
    })
    .plan(net("fc00:0:0:1::/64"), &peers);
    assert_eq!(plan.unreachable.len(), 1, "the peer behind a router");
    converge(&mut nl, &plan.state, "host-gw");
    let routes = ns.ip(&["-6", "route", "show", "proto", "87"]);
    assert!(
        routes.starts_with("fc00:0:0:2::/64 via fd00:99::2 dev u0 "),
        "{routes}"
    );
    assert_eq!(routes.lines().count(), 1, "{routes}");
    assert!(!ns.links().iter().any(|l| l.starts_with("weft")));
}

#[test]
fn both_families_share_a_namespace_without_touching_each_other() {
    let (ns, mut nl4, index) = kernel_ns("dp46", V4);
    let mut nl6 = open(&ns, V6);
    let peers4 = [V4.peer(2, V4.remote(2), 2), V4.peer(3, V4.on_segment(3), 3)];
    let peers6 = [V6.peer(2, V6.remote(2), 2), V6.peer(3, V6.on_segment(3), 3)];
    let want4 = V4.vxlan(index, false).plan(V4.subnet(1), &peers4).state;
    let want6 = V6.vxlan(index, false).plan(V6.subnet(1), &peers6).state;
    converge(&mut nl4, &want4, "v4");
    converge(&mut nl6, &want6, "v6");
    // Each sees exactly its own state.
    assert_eq!(nl4.observe().unwrap(), want4);
    assert_eq!(nl6.observe().unwrap(), want6);
    assert_eq!(nl4.family(), IpFamily::V4);

    // An operation of the other family is refused, not applied.
    let report = nl4.apply(&diff(&KernelState::default(), &want6));
    assert!(!report.ok());
    assert_eq!(report.applied, 0);
    assert!(report
        .failures
        .iter()
        .all(|(_, why)| why.to_string().contains("IPv6")));

    // IPv4 goes to host-gw and then away entirely: the IPv6 overlay is untouched.
    let hg4 = Settings::HostGw(HostGwSettings {
        underlay: V4.underlay(index),
    })
    .plan(V4.subnet(1), &peers4)
    .state;
    converge(&mut nl4, &hg4, "v4 host-gw");
    assert_eq!(nl6.observe().unwrap(), want6, "after the IPv4 device went");
    converge(&mut nl4, &KernelState::default(), "v4 empty");
    assert_eq!(nl6.observe().unwrap(), want6, "after every IPv4 route went");
    assert!(ns.links().iter().any(|l| l == "weft-v6.1"));
    assert_eq!(
        ns.ip(&["-6", "route", "show", "proto", "87"])
            .lines()
            .count(),
        2
    );

    // And the other way round.
    converge(&mut nl4, &want4, "v4 back");
    converge(&mut nl6, &KernelState::default(), "v6 empty");
    assert_eq!(nl4.observe().unwrap(), want4, "after the IPv6 overlay went");
    assert!(!ns.links().iter().any(|l| l == "weft-v6.1"));
}

/// weftd's data-plane socket asks for a receive buffer big enough for the answers to a batch
/// (the kernel reports twice what was asked); the default (about 200 KiB) is not.
#[test]
fn the_data_plane_socket_has_a_batch_sized_receive_buffer() {
    let (ns, _) = Netns::with_underlay("dprb");
    let nl = in_ns(&ns, || KernelNetlink::open("weft.1", IpFamily::V4).unwrap());
    let got = nl.receive_buffer().unwrap();
    assert!(got >= BATCH_SOCKET_RCVBUF, "receive buffer {got} bytes");
}

#[test]
fn removing_weft_state_takes_both_families_and_nothing_else() {
    let (ns, mut nl4, index) = kernel_ns("dprm", V4);
    let mut nl6 = open(&ns, V6);
    let want4 = V4
        .vxlan(index, true)
        .plan(
            V4.subnet(1),
            &[V4.peer(2, V4.remote(2), 2), V4.peer(3, V4.on_segment(3), 3)],
        )
        .state;
    let want6 = V6
        .vxlan(index, true)
        .plan(
            V6.subnet(1),
            &[V6.peer(2, V6.remote(2), 2), V6.peer(3, V6.on_segment(3), 3)],
        )
        .state;
    converge(&mut nl4, &want4, "v4");
    converge(&mut nl6, &want6, "v6");
    // Someone else's things with weft-like names or routes.
    ns.ip(&["link", "add", "weft-v6.2", "type", "bridge"]);
    ns.ip(&["-6", "route", "add", "fd50::/16", "via", "fd00:99::fe"]);
    ns.ip(&["-4", "route", "add", "10.50.0.0/16", "via", "10.9.0.254"]);

    let removed = in_ns(&ns, remove_weft_state).unwrap();
    let mut devices = removed.devices.clone();
    devices.sort();
    assert_eq!(devices, ["weft-v6.1", "weft.1"]);
    assert_eq!(removed.routes, 4, "two per family");
    let links = ns.links();
    assert!(
        !links.iter().any(|l| l == "weft.1" || l == "weft-v6.1"),
        "{links:?}"
    );
    assert!(links.iter().any(|l| l == "weft-v6.2"), "the bridge stays");
    assert!(ns
        .ip(&["-4", "route", "show", "proto", "87"])
        .trim()
        .is_empty());
    assert!(ns
        .ip(&["-6", "route", "show", "proto", "87"])
        .trim()
        .is_empty());
    assert!(ns
        .ip(&["-6", "route"])
        .contains("fd50::/16 via fd00:99::fe"));
    assert!(ns
        .ip(&["-4", "route"])
        .contains("10.50.0.0/16 via 10.9.0.254"));
    // A second run finds nothing.
    let again = in_ns(&ns, remove_weft_state).unwrap();
    assert_eq!((again.devices.len(), again.routes), (0, 0));
}

#[test]
fn kernel_reports_exactly_the_refused_operations_of_a_batch() {
    use weft_backends::plan::Op;
    use weft_backends::route::Route;
    let (ns, mut nl, index) = kernel_ns("dpb", V4);
    // 300 routes (more than one batch), three of them through a device that does not exist.
    let bad = [7u32, 150, 299];
    let ops: Vec<Op> = (0..300u32)
        .map(|i| {
            let dst = Ipv4Network::new(
                std::net::Ipv4Addr::new(10, 200, (i / 256) as u8, (i % 256) as u8),
                32,
            )
            .unwrap()
            .into();
            Op::SetRoute(Route {
                dst,
                via: Via::Direct {
                    gateway: ip("10.9.0.2"),
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
        report.failures[0]
            .1
            .to_string()
            .contains("set route 10.200.0.7/32"),
        "{:?}",
        report.failures[0]
    );
    assert_eq!(
        ns.ip(&["route", "show", "proto", "87"]).lines().count(),
        297
    );
}
