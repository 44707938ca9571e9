//! Multi-host data-plane tests on the lab: hosts as namespaces on a switch namespace, a real
//! etcd in the switch, the real weftd on every host, pods added through the real CNI plugin.
//! Faults are made by hand (`ip`, `bridge`, `etcdctl`, signals) and every wait is bounded;
//! nothing sleeps a fixed time to let weftd catch up.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_tests::lab::{Lab, LabOptions, ETCD_PREFIX};
use weft_tests::procs::bin;

const READY: Duration = Duration::from_secs(60);
/// The bound for repairs and lease changes to reach the kernel ("within a second").
const WITHIN: Duration = Duration::from_secs(1);

fn up(hosts: usize) -> Lab {
    Lab::up(
        LabOptions {
            hosts,
            ..LabOptions::default()
        },
        READY,
    )
    .unwrap_or_else(|e| panic!("the lab did not come up: {e}"))
}

/// `ip <args>` (or another tool) inside host `h`'s namespace; panics on failure.
fn on(lab: &Lab, h: usize, program: &str, args: &[&str]) -> String {
    let (code, out, err) = lab.exec_in(lab.host_name(h), program, args);
    assert_eq!(code, 0, "{program} {args:?} on h{h}: {err}");
    out
}

/// Poll `check` until it holds; panic with `what` and the weftd logs after `bound`.
fn within(lab: &Lab, bound: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        if start.elapsed() > bound {
            let logs: Vec<String> = (1..=lab.host_count())
                .map(|i| format!("--- h{i} ---\n{}", tail(&lab.weftd_log(i), 40)))
                .collect();
            panic!("not within {bound:?}: {what}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn subnet(lab: &Lab, h: usize) -> ipnetwork::Ipv4Network {
    let s = lab.subnet(h).expect("subnet.env");
    ipnetwork::Ipv4Network::new(s.network(), s.prefix()).unwrap()
}

fn pod_on(lab: &Lab, h: usize) -> (String, Ipv4Addr) {
    let p = lab
        .pods()
        .iter()
        .find(|p| p.host == h)
        .unwrap_or_else(|| panic!("no pod on h{h}"));
    (p.name.clone(), p.ip)
}

/// `ping -i 0.01 -c count` from a pod, in the background.
fn ping_stream(lab: &Lab, from: &str, dst: Ipv4Addr, count: u32) -> Child {
    Command::new("ip")
        .args(["netns", "exec", lab.ns_of(from), "ping", "-n", "-q"])
        .args(["-i", "0.01", "-W", "1", "-c", &count.to_string()])
        .arg(dst.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ping")
}

/// (transmitted, received) from a finished `ping -q`, waited for at most `bound`.
fn ping_result(mut child: Child, bound: Duration) -> (u32, u32, String) {
    let start = Instant::now();
    while child.try_wait().expect("wait ping").is_none() {
        if start.elapsed() > bound {
            let _ = child.kill();
            panic!("ping did not finish within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in: {text}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect();
    (nums[0], nums[1], text)
}

fn has_route(lab: &Lab, h: usize, dst: ipnetwork::Ipv4Network) -> bool {
    on(lab, h, "ip", &["route", "show", "proto", "87"])
        .lines()
        .any(|l| l.starts_with(&format!("{dst} ")))
}

fn neighbours(lab: &Lab, h: usize) -> String {
    let (_, out, _) = lab.exec_in(lab.host_name(h), "ip", &["neigh", "show", "dev", "weft.1"]);
    out
}

fn fdb(lab: &Lab, h: usize) -> String {
    let (_, out, _) = lab.exec_in(
        lab.host_name(h),
        "bridge",
        &["fdb", "show", "dev", "weft.1"],
    );
    out
}

/// One series from host `h`'s /metrics.
fn metric(lab: &Lab, h: usize, name: &str) -> Option<f64> {
    weft_tests::procs::metric(&lab.metrics(h), name)
}

#[test]
fn hand_deleted_routes_neighbours_fdb_entries_and_the_device_are_restored() {
    let lab = up(2);
    let peer = subnet(&lab, 2);
    let gw = peer.network().to_string();
    let (pod1, _) = pod_on(&lab, 1);
    let (_, ip2) = pod_on(&lab, 2);
    within(&lab, Duration::from_secs(10), "h1 reaches h2's pod", || {
        lab.ping(&pod1, ip2)
    });
    assert_eq!(
        lab.netctl_check(1).0,
        0,
        "netctl check is clean: {:?}",
        lab.netctl_check(1)
    );
    let mac = neighbours(&lab, 1)
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .expect("a neighbour entry for h2")
        .to_string();

    // The route.
    on(&lab, 1, "ip", &["route", "del", &peer.to_string()]);
    let took = within(&lab, WITHIN, "route restored", || has_route(&lab, 1, peer));
    eprintln!("route restored after {took:?}");

    // The neighbour entry.
    on(&lab, 1, "ip", &["neigh", "del", &gw, "dev", "weft.1"]);
    within(&lab, WITHIN, "neighbour restored", || {
        neighbours(&lab, 1).contains(&format!("{gw} lladdr {mac} PERMANENT"))
    });

    // The FDB entry.
    let h2 = lab.host_ip(2).to_string();
    on(
        &lab,
        1,
        "bridge",
        &["fdb", "del", &mac, "dev", "weft.1", "dst", &h2, "self"],
    );
    within(&lab, WITHIN, "FDB entry restored", || {
        fdb(&lab, 1).contains(&format!("{mac} dst {h2} self permanent"))
    });

    // A neighbour entry changed to the wrong MAC.
    on(
        &lab,
        1,
        "ip",
        &[
            "neigh",
            "replace",
            &gw,
            "lladdr",
            "0e:00:00:00:00:99",
            "dev",
            "weft.1",
            "nud",
            "reachable",
        ],
    );
    within(&lab, WITHIN, "neighbour corrected", || {
        neighbours(&lab, 1).contains(&format!("{gw} lladdr {mac} PERMANENT"))
    });

    // The whole device, with everything on it.
    on(&lab, 1, "ip", &["link", "del", "weft.1"]);
    within(&lab, WITHIN, "device and entries re-created", || {
        has_route(&lab, 1, peer)
            && fdb(&lab, 1).contains(&mac)
            && neighbours(&lab, 1).contains(&mac)
    });
    within(
        &lab,
        Duration::from_secs(5),
        "h1 reaches h2's pod again",
        || lab.ping(&pod1, ip2),
    );
    assert!(lab.weftd_log(1).contains("repaired the data plane"));
    let repairs = metric(&lab, 1, "weft_dataplane_repairs_total").unwrap();
    assert!(repairs >= 5.0, "each fault counted as a repair: {repairs}");
    assert_eq!(metric(&lab, 1, "weft_netlink_errors_total"), Some(0.0));

    // netctl check sees drift that weftd is not there to repair.
    let mut lab = lab;
    lab.stop_weftd(1);
    on(&lab, 1, "ip", &["route", "del", &peer.to_string()]);
    let (code, out, _) = lab.netctl_check(1);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("MISSING") && out.contains(&peer.to_string()),
        "{out}"
    );
    // weftd --cleanup removes the device and weft's routes.
    let (code, _, err) = lab.exec_in(
        lab.host_name(1),
        &bin("weftd").display().to_string(),
        &["--cleanup"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!on(&lab, 1, "ip", &["link"]).contains("weft.1"));
    assert!(on(&lab, 1, "ip", &["route", "show", "proto", "87"])
        .trim()
        .is_empty());
}

/// A lease of a node with no weftd behind it (so nothing re-creates it when deleted).
fn put_ghost(lab: &Lab, n: u8) -> (String, ipnetwork::Ipv4Network) {
    let subnet: ipnetwork::Ipv4Network = format!("10.244.{n}.0/24").parse().unwrap();
    let key = format!("{ETCD_PREFIX}/subnets/10.244.{n}.0-24");
    let value = format!(
        r#"{{"PublicIP":"10.99.0.{n}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:00:{n:02x}"}},"NodeName":"ghost-{n}"}}"#
    );
    let (code, _, err) = lab.etcdctl(&["put", &key, &value]);
    assert_eq!(code, 0, "{err}");
    (key, subnet)
}

#[test]
fn deleted_leases_leave_every_host_and_stale_state_goes_at_start() {
    let mut lab = up(3);
    let taken: Vec<u8> = (1..=3).map(|h| subnet(&lab, h).ip().octets()[2]).collect();
    let free: Vec<u8> = (200u8..=250)
        .filter(|n| !taken.contains(n))
        .take(2)
        .collect();

    // A lease appears and is deleted: every host follows within the bound.
    let (key, ghost) = put_ghost(&lab, free[0]);
    for h in 1..=3 {
        within(&lab, WITHIN, "ghost route added", || {
            has_route(&lab, h, ghost)
        });
    }
    let (code, _, err) = lab.etcdctl(&["del", &key]);
    assert_eq!(code, 0, "{err}");
    for h in 1..=3 {
        let mac = format!("0e:00:00:00:00:{:02x}", free[0]);
        within(&lab, WITHIN, "ghost entries removed", || {
            !has_route(&lab, h, ghost)
                && !fdb(&lab, h).contains(&mac)
                && !neighbours(&lab, h).contains(&mac)
        });
    }

    // A peer removed while weftd on h1 was stopped: gone once it starts again.
    let (key, ghost) = put_ghost(&lab, free[1]);
    within(&lab, WITHIN, "second ghost on h1", || {
        has_route(&lab, 1, ghost)
    });
    lab.stop_weftd(1);
    let (code, _, err) = lab.etcdctl(&["del", &key]);
    assert_eq!(code, 0, "{err}");
    assert!(
        has_route(&lab, 1, ghost),
        "nothing removes it while weftd is down"
    );
    lab.start_weftd(1);
    lab.wait_ready(1, READY).unwrap();
    within(
        &lab,
        Duration::from_secs(5),
        "stale state removed at start",
        || !has_route(&lab, 1, ghost),
    );
    assert!(lab
        .weftd_log(1)
        .contains("start-up: removing state no lease explains"));
    // The live peers were kept.
    for h in [2, 3] {
        assert!(has_route(&lab, 1, subnet(&lab, h)));
    }
}

#[test]
fn a_peer_with_a_new_vtep_mac_is_reachable_and_its_old_fdb_entry_is_gone() {
    let mut lab = up(3);
    let (pod1, _) = pod_on(&lab, 1);
    let (_, ip2) = pod_on(&lab, 2);
    within(&lab, Duration::from_secs(10), "h1 reaches h2's pod", || {
        lab.ping(&pod1, ip2)
    });
    let s2 = subnet(&lab, 2);
    let key = format!("{ETCD_PREFIX}/subnets/{}-{}", s2.network(), s2.prefix());
    let (_, value, _) = lab.etcdctl(&["get", "--print-value-only", &key]);
    let lease: serde_json::Value = serde_json::from_str(value.trim()).unwrap();
    let real = lease["BackendData"]["VtepMAC"]
        .as_str()
        .unwrap()
        .to_string();

    // h2 is replaced by a node whose device has another MAC (as after a move from flannel,
    // whose MACs are random): its lease and its device now say `old`.
    let old = "0e:aa:bb:cc:dd:01";
    lab.stop_weftd(2);
    let mut changed = lease.clone();
    changed["BackendData"]["VtepMAC"] = old.into();
    let (code, _, err) = lab.etcdctl(&["put", &key, &changed.to_string()]);
    assert_eq!(code, 0, "{err}");
    // Changing a device's MAC flushes its neighbour entries; put h2's back by hand (its
    // weftd is stopped) so that only the MAC differs.
    let saved = neighbours(&lab, 2);
    on(&lab, 2, "ip", &["link", "set", "weft.1", "address", old]);
    for line in saved.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if let [ip, "lladdr", mac, ..] = w.as_slice() {
            on(
                &lab,
                2,
                "ip",
                &[
                    "neigh",
                    "replace",
                    ip,
                    "lladdr",
                    mac,
                    "dev",
                    "weft.1",
                    "nud",
                    "permanent",
                ],
            );
        }
    }
    for h in [1, 3] {
        within(&lab, WITHIN, "peers follow the changed MAC", || {
            fdb(&lab, h).contains(old) && !fdb(&lab, h).contains(&real)
        });
    }
    within(
        &lab,
        Duration::from_secs(5),
        "reachable through the changed MAC",
        || lab.ping(&pod1, ip2),
    );

    // weftd starts on h2 again with its own (derived) MAC: peers replace the neighbour entry
    // and remove the FDB entry of the old MAC.
    lab.start_weftd(2);
    lab.wait_ready(2, READY).unwrap();
    for h in [1, 3] {
        within(
            &lab,
            Duration::from_secs(5),
            "old MAC gone, new MAC in",
            || {
                let (f, n) = (fdb(&lab, h), neighbours(&lab, h));
                !f.contains(old) && !n.contains(old) && f.contains(&real) && n.contains(&real)
            },
        );
    }
    within(&lab, Duration::from_secs(5), "reachable again", || {
        lab.ping(&pod1, ip2)
    });
}

#[test]
fn weftd_killed_and_restarted_under_traffic_loses_no_reply() {
    let mut lab = up(2);
    let (pod1, _) = pod_on(&lab, 1);
    let (_, ip2) = pod_on(&lab, 2);
    within(&lab, Duration::from_secs(10), "h1 reaches h2's pod", || {
        lab.ping(&pod1, ip2)
    });
    let before = (subnet(&lab, 1), subnet(&lab, 2));
    let ping = ping_stream(&lab, &pod1, ip2, 400);
    std::thread::sleep(Duration::from_millis(500));
    for h in [1, 2] {
        lab.kill_weftd(h);
        lab.start_weftd(h);
        lab.wait_ready(h, READY).unwrap();
    }
    let (sent, got, text) = ping_result(ping, Duration::from_secs(30));
    assert_eq!(sent, got, "replies lost while weftd restarted:\n{text}");
    assert_eq!((subnet(&lab, 1), subnet(&lab, 2)), before, "same subnets");
}

#[test]
fn an_etcd_outage_loses_no_reply_and_a_host_joining_after_it_is_reachable_at_once() {
    let mut lab = up(3);
    // h3 plays the host that joins after the outage: it leaves the cluster first.
    let s3 = subnet(&lab, 3);
    for p in lab
        .pods()
        .iter()
        .filter(|p| p.host == 3)
        .map(|p| p.name.clone())
        .collect::<Vec<_>>()
    {
        lab.del_pod(&p).unwrap();
    }
    lab.stop_weftd(3);
    let key = format!("{ETCD_PREFIX}/subnets/{}-{}", s3.network(), s3.prefix());
    assert_eq!(lab.etcdctl(&["del", &key]).0, 0);
    std::fs::remove_file(lab.subnet_file(3)).unwrap();
    within(&lab, WITHIN, "h3 gone from h1", || !has_route(&lab, 1, s3));

    let (pod1, _) = pod_on(&lab, 1);
    let (_, ip2) = pod_on(&lab, 2);
    within(&lab, Duration::from_secs(10), "h1 reaches h2's pod", || {
        lab.ping(&pod1, ip2)
    });
    // 32 s of pings every 10 ms across a 30 s etcd outage.
    let ping = ping_stream(&lab, &pod1, ip2, 3200);
    std::thread::sleep(Duration::from_millis(500));
    lab.stop_etcd();
    std::thread::sleep(Duration::from_secs(30));
    lab.start_etcd_again();
    let (sent, got, text) = ping_result(ping, Duration::from_secs(60));
    assert_eq!(sent, got, "replies lost during the etcd outage:\n{text}");
    within(
        &lab,
        Duration::from_secs(10),
        "the watch restarted after the outage",
        || metric(&lab, 1, "weft_etcd_watch_restarts_total").is_some_and(|n| n >= 1.0),
    );

    // A host joining now is reachable from h1's pod within a second of having a pod.
    lab.start_weftd(3);
    lab.wait_ready(3, READY).unwrap();
    let pod3 = lab.add_pod(3).unwrap().ip;
    within(&lab, WITHIN, "h1's pod reaches the new host's pod", || {
        lab.ping(&pod1, pod3)
    });
}
