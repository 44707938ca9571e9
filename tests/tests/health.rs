//! Multi-host tests of the peer health mesh on the lab: real etcd, the real weftd on every
//! host probing every other over the overlay and the underlay, faults made by hand inside
//! the hosts' namespaces (nftables, an interface's MTU, a stopped weftd, a link down) and
//! the states read back from `/health/peers`, the metrics and the logs. Every wait is
//! bounded.

use std::time::{Duration, Instant};

use weft_agent::mesh::report::{FamilyName, HealthReport, PeerState};
use weft_tests::lab::{Lab, LabBackend, LabOptions};

const READY: Duration = Duration::from_secs(60);
/// The probe interval the fault tests run weftd with.
const INTERVAL: Duration = Duration::from_secs(1);
/// What "within two probe intervals" allows here: two intervals, a probe and its retry
/// (a quarter interval each) and a second for the report to be read.
const TWO_INTERVALS: Duration = Duration::from_millis(2 * 1000 + 500 + 1000);

fn up(opts: LabOptions) -> Lab {
    Lab::up(opts, READY).unwrap_or_else(|e| panic!("the lab did not come up: {e}"))
}

fn fast(opts: LabOptions) -> LabOptions {
    LabOptions {
        health_probe_interval: Some(format!("{}ms", INTERVAL.as_millis())),
        pods_per_host: 0,
        ..opts
    }
}

/// Host `h`'s report, waiting until `check` holds on it; panics after `bound` with the
/// report and the weftd logs' tails.
fn report_until(
    lab: &Lab,
    h: usize,
    bound: Duration,
    what: &str,
    mut check: impl FnMut(&HealthReport) -> bool,
) -> (HealthReport, Duration) {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < bound {
        if let Some(r) = lab.health_report(h) {
            if check(&r) {
                return (r, start.elapsed());
            }
            last = Some(r);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "h{h}: {what} not within {bound:?}; last report: {last:#?}\nweftd logs:\n{}",
        (1..=lab.host_count())
            .map(|i| {
                let log = lab.weftd_log(i);
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "--- h{i} ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The state host `h` gives the peer named `peer` over `family`.
fn state_of(r: &HealthReport, peer: &str, family: FamilyName) -> Option<PeerState> {
    r.peers
        .iter()
        .find(|p| p.node.as_deref() == Some(peer) && p.family == family)
        .map(|p| p.state)
}

fn metric(lab: &Lab, h: usize, series: &str) -> Option<f64> {
    weft_tests::procs::metric(&lab.metrics(h), series)
}

/// Every host's report lists every other host once per family, all ok, with the overlay
/// probed unless the backend is host-gw; and the per-state gauges say the same.
fn all_ok(lab: &Lab, families: &[FamilyName], overlay: bool) {
    let n = lab.host_count();
    for h in 1..=n {
        let (r, _) = report_until(lab, h, Duration::from_secs(30), "every peer ok", |r| {
            r.peers.len() == (n - 1) * families.len() && r.all_ok()
        });
        for p in &r.peers {
            assert!(families.contains(&p.family), "h{h}: {p:?}");
            assert_eq!(p.overlay_ip.is_some(), overlay, "h{h}: {p:?}");
            assert_eq!(p.overlay_rtt_ms.is_some(), overlay, "h{h}: {p:?}");
            assert!(p.underlay_rtt_ms.is_some(), "h{h}: {p:?}");
        }
        for f in families {
            let ok = metric(
                lab,
                h,
                &format!("weft_health_peers{{family=\"{f}\",state=\"ok\"}}"),
            );
            assert_eq!(ok, Some((n - 1) as f64), "h{h} {f}");
            for s in PeerState::ALL.iter().filter(|s| !s.is_ok()) {
                let series = format!("weft_health_peers{{family=\"{f}\",state=\"{s}\"}}");
                assert_eq!(metric(lab, h, &series), Some(0.0), "h{h}: {series}");
            }
        }
        assert!(
            !lab.metrics(h).contains("weft_health_peer_problem{"),
            "h{h}: no per-peer series while every peer is ok"
        );
    }
}

#[test]
fn every_peer_is_ok_on_healthy_vxlan_host_gw_dual_stack_and_wireguard_labs() {
    let v4 = [FamilyName::Ipv4];
    let vxlan = up(fast(LabOptions::default()));
    all_ok(&vxlan, &v4, true);
    drop(vxlan);
    let gw = up(fast(LabOptions {
        backend: LabBackend::HostGw,
        ..LabOptions::default()
    }));
    all_ok(&gw, &v4, false);
    drop(gw);
    // Dual-stack, with --ip-masq: probes between nodes are never masqueraded.
    let dual = up(fast(LabOptions {
        hosts: 2,
        ip_masq: true,
        ipv6_network: Some("fc00::/48".into()),
        ..LabOptions::default()
    }));
    all_ok(&dual, &[FamilyName::Ipv4, FamilyName::Ipv6], true);
    drop(dual);
    // WireGuard (userspace here): the overlay probes go from this node's address on weft-wg
    // to the peer's, inside the peer's allowed IPs.
    let wg = up(fast(LabOptions {
        hosts: 2,
        backend: LabBackend::Wireguard,
        ..LabOptions::default()
    }));
    all_ok(&wg, &[FamilyName::Ipv4], true);
}

#[test]
fn a_blocked_vxlan_port_is_overlay_broken_on_both_ends_within_two_intervals_and_clears() {
    let lab = up(fast(LabOptions::default()));
    all_ok(&lab, &[FamilyName::Ipv4], true);
    let v4 = FamilyName::Ipv4;
    // h2 drops VXLAN from h1 (only): h1's probes to h2 and h2's replies' way back both
    // cross it.
    let rule = format!(
        "table inet wtest {{ chain in {{ type filter hook input priority 0; ip saddr {} udp dport 8472 drop; }}; }}",
        lab.host_ip(1)
    );
    let (code, _, err) = lab.host_exec(2, "nft", &[&rule]);
    assert_eq!(code, 0, "nft: {err}");
    for (h, peer) in [(1, "h2"), (2, "h1")] {
        let (r, _) = report_until(&lab, h, TWO_INTERVALS, "overlay broken", |r| {
            state_of(r, peer, v4) == Some(PeerState::OverlayBroken)
        });
        let p = r
            .peers
            .iter()
            .find(|p| p.node.as_deref() == Some(peer))
            .unwrap();
        assert!(
            p.reason.contains("UDP 8472 (VXLAN)") && p.reason.contains("(underlay) answers"),
            "h{h}: {}",
            p.reason
        );
        assert_eq!(state_of(&r, "h3", v4), Some(PeerState::Ok), "h{h}");
        let series = format!(
            "weft_health_peer_problem{{node=\"{peer}\",subnet=\"{}\",family=\"ipv4\",state=\"overlay-broken\"}}",
            p.subnet
        );
        assert_eq!(metric(&lab, h, &series), Some(1.0), "h{h}: {series}");
        assert_eq!(
            metric(
                &lab,
                h,
                "weft_health_peers{family=\"ipv4\",state=\"overlay-broken\"}"
            ),
            Some(1.0)
        );
        let log = lab.weftd_log(h);
        let warned = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("peer overlay-broken"))
            .count();
        assert_eq!(warned, 1, "h{h} logs the change once:\n{log}");
    }
    // h3 sees nothing wrong.
    let r3 = lab.health_report(3).expect("h3's report");
    assert!(r3.all_ok(), "{r3:#?}");
    let (code, _, err) = lab.host_exec(2, "nft", &["delete", "table", "inet", "wtest"]);
    assert_eq!(code, 0, "nft: {err}");
    for (h, peer) in [(1, "h2"), (2, "h1")] {
        report_until(&lab, h, TWO_INTERVALS, "ok again", |r| {
            state_of(r, peer, v4) == Some(PeerState::Ok)
        });
        assert!(
            !lab.metrics(h).contains("weft_health_peer_problem{"),
            "h{h}: the problem series is gone"
        );
        assert!(
            lab.weftd_log(h).contains("peer reachable again"),
            "h{h} logs the recovery"
        );
    }
}

#[test]
fn a_lowered_underlay_mtu_is_reported_with_the_size_that_passed() {
    let lab = up(fast(LabOptions {
        hosts: 2,
        ..LabOptions::default()
    }));
    all_ok(&lab, &[FamilyName::Ipv4], true);
    let (code, _, err) = lab.host_exec(2, "ip", &["link", "set", "eth0", "mtu", "1400"]);
    assert_eq!(code, 0, "ip link: {err}");
    // h1 still sends at its pod MTU (1450: 1500 - 50); h2's link drops what exceeds 1400.
    // MTU probes come every tenth round.
    let (r, _) = report_until(&lab, 1, Duration::from_secs(30), "mtu below pod mtu", |r| {
        r.peers
            .first()
            .is_some_and(|p| p.state == PeerState::MtuBelowPodMtu && p.mtu.largest_ok.is_some())
    });
    let p = &r.peers[0];
    let largest = p.mtu.largest_ok.unwrap();
    // 1400 - 50 bytes of VXLAN; veth accepts up to 4 bytes beyond the MTU (a VLAN tag).
    assert!((1350..=1354).contains(&largest), "{p:?}");
    assert_eq!(p.mtu.pod_mtu, 1450);
    assert!(
        p.reason.contains(&format!("{largest} bytes pass")) && p.reason.contains("1450 bytes"),
        "{}",
        p.reason
    );
    // h2 follows its own link: its pod MTU is 1350, which passes.
    let (r2, _) = report_until(&lab, 2, Duration::from_secs(30), "h1 ok at 1350", |r| {
        r.peers.first().is_some_and(|p| {
            p.state == PeerState::Ok && p.mtu.pod_mtu == 1350 && p.mtu.pod_mtu_ok == Some(true)
        })
    });
    assert_eq!(r2.peers.len(), 1);
}

#[test]
fn a_stopped_weftd_is_agent_not_answering_and_a_downed_link_unreachable() {
    let mut lab = up(fast(LabOptions::default()));
    all_ok(&lab, &[FamilyName::Ipv4], true);
    let v4 = FamilyName::Ipv4;
    lab.stop_weftd(3);
    for h in [1, 2] {
        let (r, _) = report_until(&lab, h, TWO_INTERVALS, "agent not answering", |r| {
            state_of(r, "h3", v4) == Some(PeerState::AgentNotAnswering)
        });
        assert_eq!(
            state_of(&r, if h == 1 { "h2" } else { "h1" }, v4),
            Some(PeerState::Ok)
        );
    }
    let (code, _, err) = lab.host_exec(3, "ip", &["link", "set", "eth0", "down"]);
    assert_eq!(code, 0, "ip link: {err}");
    for h in [1, 2] {
        let (r, _) = report_until(&lab, h, TWO_INTERVALS, "unreachable", |r| {
            state_of(r, "h3", v4) == Some(PeerState::Unreachable)
        });
        let p = r
            .peers
            .iter()
            .find(|p| p.node.as_deref() == Some("h3"))
            .unwrap();
        assert!(
            p.reason.contains("the node or the network between is down"),
            "{}",
            p.reason
        );
    }
}
