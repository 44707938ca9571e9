//! Multi-host tests (tier d) on the lab harness: hosts as namespaces on a switch namespace, a
//! real etcd inside the switch, the real weftd on every host, pods through the real CNI
//! plugin. Needs root and the workspace binaries (`cargo build --workspace --bins`).
//!

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_tests::lab::{teardown_from_state, Lab, LabBackend, LabOptions, Probe, ProbeKind};
use weft_tests::procs::run_bounded;

const READY: Duration = Duration::from_secs(60);

fn up(opts: LabOptions) -> Lab {
    Lab::up(opts, READY).unwrap_or_else(|e| panic!("the lab did not come up: {e}"))
}

fn hosts(n: usize) -> LabOptions {
    LabOptions {
        hosts: n,
        ..LabOptions::default()
    }
}

/// Names from `ip netns list` (run in the root namespace, read-only).
fn netns_list() -> Vec<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "list"]);
    let (code, out, err) = run_bounded(cmd, Duration::from_secs(10));
    assert_eq!(code, 0, "ip netns list: {err}");
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// A live process (a zombie waiting to be reaped counts as ended).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let (_, rest) = s.rsplit_once(')')?;
            rest.split_whitespace().next().map(|st| st != "Z")
        })
        .unwrap_or(false)
}

fn assert_all_gone(namespaces: &[String], pids: &[u32], dir: &Path, state: &Path) {
    let left: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| namespaces.contains(n))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let alive: Vec<u32> = pids.iter().copied().filter(|p| running(*p)).collect();
    assert!(alive.is_empty(), "processes left running: {alive:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!state.exists(), "{} left behind", state.display());
}

#[test]
fn two_host_lab_comes_up_with_pods_and_leaves_nothing_behind() {
    let lab = up(hosts(2));
    let network: ipnetwork::Ipv4Network = "10.244.0.0/16".parse().unwrap();

    // Both hosts hold distinct /24s of the cluster network.
    let subnets: Vec<_> = (1..=2)
        .map(|i| lab.subnet(i).expect("subnet.env written"))
        .collect();
    for s in &subnets {
        assert_eq!(s.prefix(), 24, "{s}");
        assert!(network.contains(s.network()), "{s} outside {network}");
    }
    assert_ne!(subnets[0].network(), subnets[1].network());

    // Two pods per host, addressed from their host's subnet.
    assert_eq!(lab.pods().len(), 4);
    for i in 1..=2 {
        let gateway = subnets[i - 1].ip();
        let on_host: Vec<_> = lab.pods().iter().filter(|p| p.host == i).collect();
        assert_eq!(on_host.len(), 2, "pods on h{i}");
        for p in on_host {
            let sn = subnets[i - 1];
            assert!(
                sn.contains(p.ip) && p.ip != gateway && p.ip != sn.network(),
                "{} has {} in {sn}",
                p.name,
                p.ip
            );
            // Every pod reaches its own host's bridge gateway.
            assert!(
                lab.ping(&p.name, gateway),
                "{} -> gateway {gateway}",
                p.name
            );
        }
    }

    // Pods on one host reach each other.
    for a in lab.pods() {
        for b in lab
            .pods()
            .iter()
            .filter(|b| b.host == a.host && b.name != a.name)
        {
            assert!(
                lab.ping(&a.name, b.ip),
                "{} -> {} ({})",
                a.name,
                b.name,
                b.ip
            );
        }
    }
    let same_host = lab
        .connectivity()
        .into_iter()
        .filter(|p| p.kind == ProbeKind::SameHost)
        .collect::<Vec<_>>();
    assert_eq!(same_host.len(), 4);
    assert!(same_host.iter().all(|p| p.ok), "{same_host:?}");

    // netctl, run in the switch namespace, lists both hosts with their subnets.
    let (code, out, err) = lab.netctl(&["leases", "-o", "json"]);
    assert_eq!(code, 0, "netctl leases: {err}");
    let rows: Value = serde_json::from_str(&out).expect("netctl JSON");
    let by_node: BTreeMap<String, String> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["node"].as_str().unwrap_or_default().to_string(),
                r["subnet"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let expected: BTreeMap<String, String> = (1..=2)
        .map(|i| {
            (
                format!("h{i}"),
                subnets[i - 1].network().to_string() + "/24",
            )
        })
        .collect();
    assert_eq!(by_node, expected, "{out}");
    let (code, table, _) = lab.netctl(&["leases"]);
    assert_eq!(code, 0);
    assert!(table.contains("h1") && table.contains("h2"), "{table}");

    // Dropping the lab removes every namespace, process, file and its state.
    let namespaces = lab.namespaces();
    assert_eq!(namespaces.len(), 4 + 2 + 2, "{namespaces:?}");
    assert!(netns_list().iter().any(|n| n == lab.switch_ns()));
    let pids = lab.pids();
    assert_eq!(pids.len(), 3, "two weftd and etcd");
    let (dir, state) = (lab.dir().to_path_buf(), lab.state_file());
    assert!(state.exists());
    drop(lab);
    assert_all_gone(&namespaces, &pids, &dir, &state);
}

#[test]
fn weftd_restarted_or_killed_in_a_lab_keeps_its_subnet() {
    let mut lab = Lab::start(LabOptions {
        pods_per_host: 0,
        ..hosts(1)
    });
    lab.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e}"));
    let subnet = lab.subnet(1).unwrap();
    let first = lab.weftd_pid(1).unwrap();

    lab.restart(1);
    lab.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(lab.weftd_pid(1), Some(first));
    assert_eq!(lab.subnet(1), Some(subnet));

    lab.kill_weftd(1);
    assert_eq!(lab.weftd_pid(1), None);
    assert!(lab.wait_ready(1, Duration::from_millis(200)).is_err());
    lab.start_weftd(1);
    lab.wait_ready(1, READY).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lab.subnet(1), Some(subnet));
    let log = lab.weftd_log(1);
    assert_eq!(log.matches("--- weftd start").count(), 3, "{log}");

    // Pods come and go through CNI ADD and DEL.
    let pod = lab.add_pod(1).unwrap_or_else(|e| panic!("{e}"));
    let (name, ip, ns) = (pod.name.clone(), pod.ip, pod.netns.name.clone());
    assert!(subnet.contains(ip));
    assert!(lab.ping("h1", ip), "host -> its pod {ip}");
    lab.del_pod(&name).unwrap_or_else(|e| panic!("{e}"));
    assert!(lab.pod(&name).is_none());
    assert!(!netns_list().contains(&ns), "{ns} left behind");
    assert!(lab.del_pod(&name).is_err(), "no such pod any more");
}

#[test]
fn a_kept_lab_stays_up_until_torn_down_from_its_state_file() {
    let lab = up(LabOptions {
        pods_per_host: 1,
        keep: true,
        ..hosts(1)
    });
    let namespaces = lab.namespaces();
    let pids = lab.pids();
    let (dir, state) = (lab.dir().to_path_buf(), lab.state_file());
    let pod_ip = lab.pods()[0].ip;
    let pod_ns = lab.pods()[0].netns.name.clone();
    drop(lab);

    // Still there: namespaces, weftd and etcd, files, and a state file saying so.
    let listed = netns_list();
    assert!(namespaces.iter().all(|n| listed.contains(n)), "{listed:?}");
    assert!(pids.iter().all(|p| running(*p)), "{pids:?}");
    assert!(dir.join("h1/subnet.env").exists());
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["kept"], true);
    let mut ping = Command::new("ip");
    ping.args(["netns", "exec", &namespaces[1], "ping", "-c1", "-W1"])
        .arg(pod_ip.to_string());
    assert_eq!(
        run_bounded(ping, Duration::from_secs(10)).0,
        0,
        "host -> pod in {pod_ns}"
    );

    let name = teardown_from_state(&state).unwrap_or_else(|e| panic!("{e}"));
    assert!(namespaces[0].starts_with(&name));
    assert_all_gone(&namespaces, &pids, &dir, &state);
}

/// Every probe of [`Lab::connectivity`] answers, within 10 s of the pods being added.
fn assert_full_connectivity(opts: LabOptions) -> Lab {
    let lab = up(opts);
    let start = Instant::now();
    let failed = loop {
        let failed: Vec<Probe> = lab.connectivity().into_iter().filter(|p| !p.ok).collect();
        if failed.is_empty() {
            return lab;
        }
        if start.elapsed() > Duration::from_secs(10) {
            break failed;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let list: Vec<String> = failed
        .iter()
        .map(|p| format!("{} -> {} ({})", p.from, p.to, p.dst))
        .collect();
    let logs: Vec<String> = (1..=lab.host_count())
        .map(|i| format!("--- h{i} ---\n{}", lab.weftd_log(i)))
        .collect();
    panic!(
        "{} probes failed:\n{}\n{}",
        failed.len(),
        list.join("\n"),
        logs.join("\n")
    );
}

#[test]
fn pods_reach_pods_and_hosts_across_hosts_over_vxlan() {
    let lab = assert_full_connectivity(hosts(3));
    // Every host's /metrics, scraped as Prometheus would, has the series with sane values.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for h in 1..=3 {
        let (code, body, err) = lab.exec_in(
            lab.host_name(h),
            "curl",
            &[
                "-s",
                "--fail",
                "--max-time",
                "5",
                "http://127.0.0.1:8471/metrics",
            ],
        );
        assert_eq!(code, 0, "{err}");
        let m = |name: &str| {
            weft_tests::procs::metric(&body, name)
                .unwrap_or_else(|| panic!("h{h}: no {name} in:\n{body}"))
        };
        assert_eq!(m("weft_lease_held"), 1.0);
        let expiry = m("weft_lease_expiry_timestamp_seconds");
        assert!(
            expiry > now && expiry < now + 25.0 * 3600.0,
            "expiry {expiry}"
        );
        assert_eq!(m("weft_peers"), 2.0);
        assert_eq!(m("weft_invalid_leases"), 0.0);
        assert_eq!(m("weft_dataplane_peers_programmed{family=\"ipv4\"}"), 2.0);
        assert_eq!(m("weft_dataplane_peers_unreachable{family=\"ipv4\"}"), 0.0);
        assert!(m("weft_dataplane_reconciles_total") >= 1.0);
        assert_eq!(m("weft_dataplane_reconcile_errors_total"), 0.0);
        assert_eq!(m("weft_netlink_errors_total"), 0.0);
        assert_eq!(m("weft_etcd_watch_restarts_total"), 0.0);
        assert!(m("weft_etcd_requests_total") >= 3.0);
        assert!(m("weft_dataplane_reconcile_duration_seconds_count") >= 1.0);
        assert!(m("weft_dataplane_reconcile_duration_seconds_sum") > 0.0);
        assert!(m("weft_subnet_env_writes_total") >= 1.0);
        for series in [
            "weft_dataplane_repairs_total",
            "weft_firewall_repairs_total",
            "weft_lease_changes_total",
        ] {
            m(series);
        }
    }
}

#[test]
fn pods_reach_pods_and_hosts_across_hosts_with_direct_routing() {
    let lab = assert_full_connectivity(LabOptions {
        direct_routing: true,
        ..hosts(2)
    });
    assert_direct_routes(&lab);
}

/// Every peer is routed through its underlay address on eth0 (no overlay entries).
fn assert_direct_routes(lab: &Lab) {
    for h in 1..=lab.host_count() {
        let (_, routes, _) = lab.exec_in(lab.host_name(h), "ip", &["route", "show", "proto", "87"]);
        for p in (1..=lab.host_count()).filter(|p| *p != h) {
            let s = lab.subnet(p).unwrap();
            let want = format!(
                "{}/{} via {} dev eth0",
                s.network(),
                s.prefix(),
                lab.host_ip(p)
            );
            assert!(routes.contains(&want), "h{h} lacks `{want}`:\n{routes}");
        }
        assert!(!routes.contains("weft.1"), "{routes}");
    }
}

#[test]
fn pods_reach_pods_and_hosts_across_hosts_over_host_gw() {
    let lab = assert_full_connectivity(LabOptions {
        backend: LabBackend::HostGw,
        ..hosts(2)
    });
    assert_direct_routes(&lab);
    for h in 1..=lab.host_count() {
        let (_, links, _) = lab.exec_in(lab.host_name(h), "ip", &["link"]);
        assert!(!links.contains("weft.1"), "host-gw makes no VXLAN device");
    }
}

#[test]
fn pods_reach_outside_only_through_masquerade() {
    assert_full_connectivity(LabOptions {
        ip_masq: true,
        ..hosts(2)
    });
    // The outside sees the host's address, not the pod's.
    let lab = up(LabOptions {
        ip_masq: true,
        ..hosts(2)
    });
    let log = lab.dir().join("serve-peer.log");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", lab.internet_ns()])
        .arg(weft_tests::procs::bin("tcp-probe"))
        .args(["serve-peer", "18099"]);
    let _server = weft_tests::procs::Proc::spawn("serve-peer", cmd, &log);
    let outside = format!("{}:18099", weft_tests::lab::OUTSIDE_IP);
    let probe = weft_tests::procs::bin("tcp-probe").display().to_string();
    for pod in lab.pods() {
        let start = Instant::now();
        let seen = loop {
            let (code, out, _) = lab.exec_in(&pod.name, &probe, &["fetch", &outside]);
            if code == 0 {
                break out;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} never reached {outside}",
                pod.name
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(
            seen.trim(),
            lab.host_ip(pod.host).to_string(),
            "{} seen as",
            pod.name
        );
    }
    // Pod to pod keeps the pod's address (never masqueraded).
    let (a, b) = (
        &lab.pods()[0],
        lab.pods()
            .iter()
            .find(|p| p.host != lab.pods()[0].host)
            .unwrap(),
    );
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", lab.ns_of(&b.name)])
        .arg(weft_tests::procs::bin("tcp-probe"))
        .args(["serve-peer", "18098"]);
    let _pod_server =
        weft_tests::procs::Proc::spawn("serve-peer-pod", cmd, &lab.dir().join("pod-peer.log"));
    let target = format!("{}:18098", b.ip);
    let start = Instant::now();
    let seen = loop {
        let (code, out, _) = lab.exec_in(&a.name, &probe, &["fetch", &target]);
        if code == 0 {
            break out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pod never reached {target}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(seen.trim(), a.ip.to_string());
    drop(lab);
    // Without --ip-masq nothing outside the cluster answers a pod.
    let lab = up(hosts(1));
    let pod = &lab.pods()[0];
    let outside: Ipv4Addr = weft_tests::lab::OUTSIDE_IP;
    assert!(!lab.ping(&pod.name, outside));
}

/// The lease keys in the lab's etcd, one per line.
fn lease_keys(lab: &Lab) -> String {
    let prefix = format!("{}/subnets/", weft_tests::lab::ETCD_PREFIX);
    let (code, keys, err) = lab.etcdctl(&["get", "--prefix", "--keys-only", &prefix]);
    assert_eq!(code, 0, "{err}");
    keys
}

fn subnet_env(lab: &Lab, h: usize) -> String {
    std::fs::read_to_string(lab.subnet_file(h)).expect("subnet.env")
}

#[test]
fn dual_stack_pods_reach_each_other_over_ipv4_and_ipv6() {
    let lab = assert_full_connectivity(LabOptions {
        hosts: 3,
        ipv6_network: Some("fc00::/48".into()),
        ip_masq: true,
        ..LabOptions::default()
    });
    let probes = lab.connectivity();
    let v6 = probes.iter().filter(|p| p.dst.is_ipv6()).count();
    let v4 = probes.iter().filter(|p| p.dst.is_ipv4()).count();
    // 6 pods: 5 pods + 2 other hosts + outside, once per family.
    assert_eq!((v4, v6), (6 * 8, 6 * 8), "both families probed");

    let net6: ipnetwork::Ipv6Network = "fc00::/48".parse().unwrap();
    let leases = lease_keys(&lab);
    for h in 1..=3 {
        let s4 = lab.subnet(h).expect("FLANNEL_SUBNET");
        let s6 = lab.subnet6(h).expect("FLANNEL_IPV6_SUBNET");
        assert_eq!(s6.prefix(), 64);
        assert!(net6.contains(s6.network()), "{s6}");
        // flannel's dual-stack key form.
        let key = format!("{}-24&{}-64", s4.network(), s6.network());
        assert!(leases.contains(&key), "no key {key} in:\n{leases}");
        // Pods hold one address of each family from their host's subnets.
        for p in lab.pods().iter().filter(|p| p.host == h) {
            assert!(
                s4.contains(p.ip) && s6.contains(p.ip6.expect("IPv6 address")),
                "{p:?}"
            );
        }
        // One MTU for both: 1500 − 70 (IPv6 underlay), below the IPv4 device's 1450.
        let env = subnet_env(&lab, h);
        assert!(env.contains("FLANNEL_MTU=1430\n"), "{env}");
        assert!(env.contains("FLANNEL_IPV6_NETWORK=fc00::/48\n"), "{env}");
        let (_, links, _) = lab.exec_in(lab.host_name(h), "ip", &["-d", "link", "show"]);
        assert!(
            links.contains("weft.1:") && links.contains("weft-v6.1:"),
            "{links}"
        );
        let (_, v6dev, _) = lab.exec_in(lab.host_name(h), "ip", &["link", "show", "weft-v6.1"]);
        assert!(v6dev.contains("mtu 1430"), "{v6dev}");
        // IPv6 peers are routed through the IPv6 device, onlink, as flannel does.
        let (_, routes6, _) = lab.exec_in(
            lab.host_name(h),
            "ip",
            &["-6", "route", "show", "proto", "87"],
        );
        for p in (1..=3).filter(|p| *p != h) {
            let ps = lab.subnet6(p).unwrap();
            let want = format!("{}/64 via {} dev weft-v6.1", ps.network(), ps.network());
            assert!(routes6.contains(&want), "h{h} lacks `{want}`:\n{routes6}");
        }
        let (code, out, err) = lab.netctl_check(h);
        assert_eq!(code, 0, "netctl check on h{h}: {out}{err}");
        // Judged against the host's own conflist: cni0's and the pods' MTUs included.
        assert!(
            out.contains("CNI config runtimes use: ") && out.contains("/net.d/10-weft.conflist"),
            "{out}"
        );
    }
    let (code, table, err) = lab.netctl(&["leases"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("IPV6-SUBNET") && table.contains("PUBLIC-IPV6"),
        "{table}"
    );
    assert!(table.contains(&lab.host_ip6(2).to_string()), "{table}");
}

#[test]
fn ipv6_only_pods_reach_each_other_and_the_outside() {
    let lab = assert_full_connectivity(LabOptions {
        hosts: 3,
        ipv4: false,
        ipv6_network: Some("fd00:10::/56".into()),
        ipv6_subnet_len: 64,
        ip_masq: true,
        ..LabOptions::default()
    });
    assert!(lab.connectivity().iter().all(|p| p.dst.is_ipv6()));
    let leases = lease_keys(&lab);
    for h in 1..=3 {
        let s6 = lab.subnet6(h).expect("FLANNEL_IPV6_SUBNET");
        let key = format!("0.0.0.0-0&{}-64", s6.network());
        assert!(leases.contains(&key), "no key {key} in:\n{leases}");
        let env = subnet_env(&lab, h);
        assert!(
            !env.contains("FLANNEL_NETWORK") && !env.contains("FLANNEL_SUBNET="),
            "{env}"
        );
        for p in lab.pods().iter().filter(|p| p.host == h) {
            assert!(
                p.ip.is_unspecified(),
                "an IPv6-only pod has no IPv4 address: {p:?}"
            );
            assert!(s6.contains(p.ip6.unwrap()), "{p:?}");
        }
        let (_, links, _) = lab.exec_in(lab.host_name(h), "ip", &["link", "show"]);
        assert!(
            !links.contains("weft.1:") && links.contains("weft-v6.1:"),
            "{links}"
        );
        let (_, routes4, _) = lab.exec_in(
            lab.host_name(h),
            "ip",
            &["-4", "route", "show", "proto", "87"],
        );
        assert!(
            routes4.trim().is_empty(),
            "no IPv4 routes of weft: {routes4}"
        );
        let (code, out, err) = lab.netctl_check(h);
        assert_eq!(code, 0, "netctl check on h{h}: {out}{err}");
    }
}

#[test]
fn ipv6_only_over_host_gw() {
    let lab = assert_full_connectivity(LabOptions {
        hosts: 2,
        ipv4: false,
        backend: LabBackend::HostGw,
        ipv6_network: Some("fd00:20::/48".into()),
        ..LabOptions::default()
    });
    let (_, routes6, _) = lab.exec_in(
        lab.host_name(1),
        "ip",
        &["-6", "route", "show", "proto", "87"],
    );
    let s2 = lab.subnet6(2).unwrap();
    let want = format!("{}/64 via {} dev eth0", s2.network(), lab.host_ip6(2));
    assert!(routes6.contains(&want), "h1 lacks `{want}`:\n{routes6}");
}

// --- the lab command (tests/lab.sh, weft-lab) ------------------------------------------------

/// A lab started through the `weft-lab` binary, by a name unique to this test. Dropping it
/// stops a run still going (SIGTERM: weft-lab tears its lab down), ends the lab if it is
/// still up, deletes namespaces of its name that are left, and removes the directories the
/// test was told about.
struct CliLab {
    name: String,
    run: Option<std::process::Child>,
    dirs: Vec<std::path::PathBuf>,
}

impl CliLab {
    fn new(tag: &str) -> CliLab {
        CliLab {
            name: format!("cli{}-{tag}", std::process::id()),
            run: None,
            dirs: Vec::new(),
        }
    }

    fn state_file(&self) -> std::path::PathBuf {
        Path::new(weft_tests::lab::STATE_ROOT)
            .join(&self.name)
            .join("state.json")
    }

    fn state(&self) -> weft_tests::lab::LabState {
        weft_tests::lab::load_state(&self.state_file()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Drop VXLAN between the hosts (a firewall on the underlay): nothing crosses hosts.
    /// Waits for the switch's bridge first: a bridge-family chain made in a namespace before
    /// it has a bridge sees no frames at all (seen on this kernel).
    fn drop_vxlan_on_the_switch(&self) {
        let switch = format!("{}-sw", self.name);
        let start = Instant::now();
        loop {
            let mut cmd = Command::new("ip");
            cmd.args(["-n", &switch, "link", "show", "br0"]);
            if run_bounded(cmd, Duration::from_secs(10)).0 == 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no br0 in {switch}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let rules = "table bridge weft_lab_test {\n  chain drop_vxlan {\n    \
                     type filter hook forward priority 0; policy accept;\n    \
                     udp dport 8472 drop\n  }\n}\n";
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &switch, "nft", "-f", "-"]);
        let (code, _, err) =
            weft_tests::procs::run_input(&mut cmd, Some(rules.as_bytes()), Duration::from_secs(10));
        assert_eq!(code, 0, "nft in the switch: {err}");
    }
}

impl Drop for CliLab {
    fn drop(&mut self) {
        if let Some(mut child) = self.run.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.state_file().exists() {
            if let Err(e) = teardown_from_state(&self.state_file()) {
                eprintln!("{e}");
            }
        }
        let name: weft_tests::lab::LabName = self.name.parse().expect("a valid name");
        if let Err(weft_tests::lab::LabError::LeftoverNamespaces { namespaces, .. }) =
            weft_tests::lab::check_name_free(&name)
        {
            for ns in namespaces {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "del", &ns]);
                run_bounded(cmd, Duration::from_secs(30));
            }
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// `weft-lab <args>` to its end (bounded): (exit code, stdout, stderr).
fn weft_lab(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(weft_tests::procs::bin("weft-lab"));
    cmd.args(args).env_remove("WEFT_LAB_SCRIPT");
    run_bounded(cmd, Duration::from_secs(180))
}

/// The commands of a `--keep` run's "To look at it" block, each with what it shows.
fn pasteable_commands(stdout: &str, name: &str) -> Vec<(String, String)> {
    let heading = format!("The lab {name} is up. To look at it, as root:\n");
    let block = stdout
        .split_once(&heading)
        .unwrap_or_else(|| panic!("no commands in:\n{stdout}"))
        .1;
    let lines: Vec<&str> = block.lines().take_while(|l| l.starts_with("  ")).collect();
    lines
        .chunks(2)
        .map(|pair| {
            let what = pair[0].strip_prefix("  # ").expect("a comment line");
            (pair[1].trim().to_string(), what.to_string())
        })
        .collect()
}

/// `bash -c <line>`, as a root shell runs a pasted line: (exit code, stdout + stderr).
fn paste(line: &str) -> (i32, String) {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", line]).env_remove("WEFT_BIN_DIR");
    let (code, out, err) = run_bounded(cmd, Duration::from_secs(60));
    (code, out + &err)
}

#[test]
fn a_kept_lab_is_probed_and_torn_down_by_name_with_the_commands_it_prints() {
    let lab = CliLab::new("keep");
    let (code, out, err) = weft_lab(&[
        "--name",
        &lab.name,
        "--hosts",
        "2",
        "--pods-per-host",
        "1",
        "--ipv6-network",
        "fd00:41::/56",
        "--keep",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    // Dual-stack: one matrix per family, each with both pods and both hosts.
    let v4 = out
        .find("\nIPv4 ping from (rows) to (columns)")
        .expect(&out);
    let v6 = out
        .find("\nIPv6 ping from (rows) to (columns)")
        .expect(&out);
    assert!(v4 < v6, "{out}");
    assert!(out.contains("\nall 8 probes answered\n"), "{out}");
    let state = lab.state();
    assert!(state.kept);
    for p in &state.pods {
        assert!(out.contains(&p.ip.unwrap().to_string()), "{out}");
        assert!(out.contains(&p.ip6.unwrap().to_string()), "{out}");
    }

    // Every printed command works when pasted; the teardown one is kept for last.
    let commands = pasteable_commands(&out, &lab.name);
    assert_eq!(commands.len(), 8, "{out}");
    let teardown = commands
        .iter()
        .find(|(c, _)| c.ends_with(&format!("--teardown {}", lab.name)))
        .expect("a teardown command")
        .0
        .clone();
    let mut seen = Vec::new();
    for (line, what) in commands.iter().filter(|(c, _)| *c != teardown) {
        let (code, output) = paste(line);
        assert_eq!(code, 0, "`{line}` ({what}):\n{output}");
        seen.push(output);
    }
    let all = seen.join("\n");
    assert!(
        all.contains("10.99.0.11") && all.contains("10.99.0.12"),
        "leases: {all}"
    );
    assert!(
        all.contains("ok: kernel, subnet.env and CNI config match the leases"),
        "check: {all}"
    );
    assert!(all.contains("\nweft_lease_held 1\n"), "metrics: {all}");
    assert!(
        all.contains("ok: every node reaches every other"),
        "health: {all}"
    );
    assert!(
        out.contains("\n$ netctl health --cluster\n"),
        "the run prints the health matrix: {out}"
    );
    assert!(all.contains("1 received"), "ping: {all}");
    for log in [
        &state.hosts[0].weftd_log,
        &state.hosts[0].cni_log,
        &state.etcd_log(),
    ] {
        assert!(
            all.contains(&format!("==> {} <==", log.display())),
            "tail: {all}"
        );
    }
    assert!(all.contains("\nall 8 probes answered\n"), "probe: {all}");

    // A break in the underlay: --probe fails and says where the logs are.
    lab.drop_vxlan_on_the_switch();
    let (code, out, err) = weft_lab(&["--probe", &lab.name]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("pod -> pod, across hosts     0/2 ok"), "{out}");
    assert!(out.contains("FAILED: 8 of 8 probes:"), "{out}");
    let logs = format!("Logs of lab {}: {}: ", lab.name, state.dir.display());
    assert!(out.contains(&logs), "{out}");
    assert!(state.dir.join("h1/weftd.1.log").exists());

    // The printed teardown ends it: nothing is left.
    let pids: Vec<u32> = state.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids.len(), 3, "two weftd and etcd");
    let (code, output) = paste(&teardown);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains(&format!("lab {} torn down", lab.name)),
        "{output}"
    );
    assert_all_gone(&state.namespaces, &pids, &state.dir, &lab.state_file());
    // Again: already gone is fine.
    let (code, _, err) = weft_lab(&["--teardown", &lab.name]);
    assert_eq!(code, 0);
    assert!(
        err.contains(&format!("no lab named {} is up", lab.name)),
        "{err}"
    );
}

#[test]
fn a_lab_run_that_fails_keeps_its_logs_and_says_where() {
    let mut lab = CliLab::new("fail");
    let out_file = tempfile::NamedTempFile::new().unwrap();
    let err_file = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new(weft_tests::procs::bin("weft-lab"));
    cmd.args(["--name", &lab.name, "--hosts", "2", "--pods-per-host", "1"])
        .args(["--ipv6-network", "fd00:42::/56", "--ipv6-only"])
        .env_remove("WEFT_LAB_SCRIPT")
        .stdin(std::process::Stdio::null())
        .stdout(out_file.reopen().unwrap())
        .stderr(err_file.reopen().unwrap());
    lab.run = Some(cmd.spawn().expect("spawn weft-lab"));

    // The switch comes first (etcd, then the hosts follow): break it before any probe.
    lab.drop_vxlan_on_the_switch();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = lab.run.as_mut().unwrap().try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "weft-lab did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(out_file.path()).unwrap();
    let err = std::fs::read_to_string(err_file.path()).unwrap();
    assert_eq!(status.code(), Some(1), "{out}\n{err}");

    // The lab is gone, its logs are where the output says.
    let (_, rest) = out
        .split_once("The lab is torn down; its logs are kept in ")
        .unwrap_or_else(|| panic!("no kept logs in:\n{out}"));
    let dir = std::path::PathBuf::from(rest.split(": weftd's in ").next().unwrap());
    lab.dirs.push(dir.clone());
    assert!(dir.is_absolute() && dir.is_dir(), "{}", dir.display());
    for log in [
        "h1/weftd.1.log",
        "h2/weftd.1.log",
        "h1/cni.log",
        "h2/cni.log",
        "etcd.log",
    ] {
        let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
        assert!(
            !text.is_empty(),
            "{log} is empty or missing in {}",
            dir.display()
        );
    }
    let weftd = std::fs::read_to_string(dir.join("h1/weftd.1.log")).unwrap();
    assert!(
        weftd.contains("fd00:42:"),
        "h1's log names its IPv6 subnet:\n{weftd}"
    );
    assert!(!dir.join("etcd-data").exists(), "etcd's data is not a log");
    assert!(!lab.state_file().exists());
    let prefix = format!("{}-", lab.name);
    let left: Vec<String> = netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");

    // IPv6-only: the pods are shown with their IPv6 addresses, in one (IPv6) matrix.
    assert!(!out.contains("0.0.0.0"), "{out}");
    assert!(!out.contains("IPv4 ping from"), "{out}");
    assert_eq!(out.matches("IPv6 ping from (rows)").count(), 1, "{out}");
    let pods = out.split_once("pods:\n").unwrap().1;
    for pod in ["h1p1", "h2p1"] {
        let line = pods
            .lines()
            .find(|l| l.trim_start().starts_with(pod))
            .unwrap_or_else(|| panic!("{pod} not listed:\n{out}"));
        assert!(line.contains("fd00:42:"), "{line}");
    }
    assert!(out.contains("pod -> pod, across hosts     0/2 ok"), "{out}");
}

#[test]
fn lab_sh_checks_its_arguments_before_installing_or_building_anything() {
    // cargo and apt-get, as lab.sh finds them, note each call (cargo then runs as usual).
    let stubs = tempfile::tempdir().unwrap();
    let calls = stubs.path().join("calls");
    let real_cargo = {
        let (code, out, _) = run_bounded(
            {
                let mut c = Command::new("bash");
                c.args(["-c", "command -v cargo"]);
                c
            },
            Duration::from_secs(10),
        );
        assert_eq!(code, 0, "cargo on PATH");
        out.trim().to_string()
    };
    for (tool, then) in [
        ("cargo", format!("exec {real_cargo} \"$@\"")),
        ("apt-get", "exit 1".to_string()),
    ] {
        let path = stubs.path().join(tool);
        let script = format!(
            "#!/bin/sh\necho \"{tool} $*\" >> {}\n{then}\n",
            calls.display()
        );
        std::fs::write(&path, script).unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).unwrap();
    }
    let path = format!(
        "{}:{}",
        stubs.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab.sh");
    let lab_sh = |args: &[&str]| {
        let _ = std::fs::remove_file(&calls);
        let mut cmd = Command::new("bash");
        cmd.arg(&script).args(args).env("PATH", &path);
        let (code, out, err) = run_bounded(cmd, Duration::from_secs(300));
        let made = std::fs::read_to_string(&calls).unwrap_or_default();
        (code, out, err, made)
    };
    for (args, needle) in [
        (&["--host", "2"][..], "unexpected argument '--host'"),
        (&["--hosts", "0"][..], "--hosts 0: a lab has 1 to 200 hosts"),
        (
            &["--teardown", "--keep"][..],
            "cannot be used with '--keep'",
        ),
    ] {
        let (code, out, err, made) = lab_sh(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(
            made.trim(),
            format!(
                "cargo run -q -p weft-lab-cli --bin weft-lab-args -- {}",
                args.join(" ")
            ),
            "{args:?}: only the argument check runs"
        );
    }
    let (code, out, err, made) = lab_sh(&["--help"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Usage: tests/lab.sh [OPTIONS]"), "{out}");
    assert!(
        out.contains("--teardown [<NAME>]") && out.contains("--probe [<NAME>]"),
        "{out}"
    );
    assert_eq!(made.lines().count(), 1, "{made}");
}
