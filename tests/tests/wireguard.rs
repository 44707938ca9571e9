//! Multi-host tests of the wireguard backend on the lab: hosts as namespaces on a switch, a
//! real etcd, the real weftd on every host and the userspace `wireguard-go` it starts (this
//! machine's kernel has no WireGuard module). Faults are made by hand (`wg`, `etcdctl`,
//! signals, a deleted key file) and every wait is bounded.
//!
//! Probes to other *hosts'* addresses need `ip_masq` on wireguard (as on flannel): a host's
//! reply has the host's own address as inner source, which cryptokey routing drops. Labs that
//! check the whole connectivity matrix therefore run with `ip_masq: true`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_tests::lab::{Lab, LabBackend, LabOptions, LabWireguardMode, Probe, ETCD_PREFIX};

const READY: Duration = Duration::from_secs(60);
/// The bound for lease changes to reach every host's WireGuard device.
const WITHIN: Duration = Duration::from_secs(1);
const DEVICE: &str = "weft-wg";
const DEVICE_V6: &str = "weft-wg-v6";
const PORT: u16 = 51820;
const PORT_V6: u16 = 51821;

fn up(opts: LabOptions) -> Lab {
    Lab::up(
        LabOptions {
            backend: LabBackend::Wireguard,
            ..opts
        },
        READY,
    )
    .unwrap_or_else(|e| panic!("the wireguard lab did not come up: {e}"))
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

fn failed(probes: &[Probe]) -> Vec<&Probe> {
    probes.iter().filter(|p| !p.ok).collect()
}

fn subnet(lab: &Lab, h: usize) -> ipnetwork::Ipv4Network {
    let s = lab.subnet(h).expect("subnet.env");
    ipnetwork::Ipv4Network::new(s.network(), s.prefix()).unwrap()
}

fn lease_key(lab: &Lab, h: usize) -> String {
    let s = subnet(lab, h);
    format!("{ETCD_PREFIX}/subnets/{}-{}", s.network(), s.prefix())
}

fn pod_on(lab: &Lab, h: usize) -> (String, Ipv4Addr) {
    let p = lab
        .pods()
        .iter()
        .find(|p| p.host == h)
        .unwrap_or_else(|| panic!("no pod on h{h}"));
    (p.name.clone(), p.ip)
}

/// One series from host `h`'s /metrics.
fn metric(lab: &Lab, h: usize, name: &str) -> Option<f64> {
    weft_tests::procs::metric(&lab.metrics(h), name)
}

/// Every lease in etcd: key → JSON value.
fn leases(lab: &Lab) -> BTreeMap<String, serde_json::Value> {
    let prefix = format!("{ETCD_PREFIX}/subnets");
    let (code, out, err) = lab.etcdctl(&["get", "--prefix", &prefix]);
    assert_eq!(code, 0, "etcdctl get --prefix {prefix}: {err}");
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .map(|kv| {
            let value = serde_json::from_str(kv[1])
                .unwrap_or_else(|e| panic!("lease {} is no JSON ({e}): {}", kv[0], kv[1]));
            (kv[0].to_string(), value)
        })
        .collect()
}

/// Host `h`'s lease (its key names the IPv4 subnet, followed by `&<IPv6 subnet>` on a
/// dual-stack cluster).
fn lease_of(lab: &Lab, h: usize) -> serde_json::Value {
    let key = lease_key(lab, h);
    let dual = format!("{key}&");
    leases(lab)
        .into_iter()
        .find(|(k, _)| *k == key || k.starts_with(&dual))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no lease {key} for h{h}"))
}

/// The public key host `h`'s lease publishes (`BackendData.PublicKey`).
fn published_key(lab: &Lab, h: usize) -> String {
    let lease = lease_of(lab, h);
    assert_eq!(lease["BackendType"], "wireguard", "h{h}'s lease: {lease}");
    assert_eq!(lease["BackendData"]["Port"], PORT, "h{h}'s lease: {lease}");
    lease["BackendData"]["PublicKey"]
        .as_str()
        .unwrap_or_else(|| panic!("h{h}'s lease has no PublicKey: {lease}"))
        .to_string()
}

/// A peer line of `wg show <dev> dump`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct WgPeer {
    public_key: String,
    endpoint: String,
    allowed_ips: String,
}

fn wg_peers(lab: &Lab, h: usize, device: &str) -> Vec<WgPeer> {
    let mut peers: Vec<WgPeer> = lab
        .wg_peers(h, device)
        .iter()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert!(f.len() >= 4, "a wg dump peer line: {line:?}");
            WgPeer {
                public_key: f[0].to_string(),
                endpoint: f[2].to_string(),
                allowed_ips: f[3].to_string(),
            }
        })
        .collect();
    peers.sort();
    peers
}

/// The device's own public key (`wg show <dev> public-key`).
fn device_key(lab: &Lab, h: usize) -> String {
    let (code, out, err) = lab.host_exec(h, "wg", &["show", DEVICE, "public-key"]);
    assert_eq!(code, 0, "wg show {DEVICE} public-key on h{h}: {err}");
    out.trim().to_string()
}

/// wireguard-go's pid on host `h`, from the pid file weftd keeps.
fn wireguard_go_pid(lab: &Lab, h: usize) -> u32 {
    let file = lab.wireguard_dir(h).join(format!("{DEVICE}.pid"));
    let text =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", file.display()))
}

fn ping_until(lab: &Lab, from: &str, dst: Ipv4Addr, bound: Duration) {
    within(lab, bound, &format!("{from} reaches {dst}"), || {
        lab.ping(from, dst)
    });
}

/// `ping -i 0.01 -c count` from a pod, in the background.
fn ping_stream(lab: &Lab, from: &str, dst: Ipv4Addr, interval: &str, count: u32) -> Child {
    Command::new("ip")
        .args(["netns", "exec", lab.ns_of(from), "ping", "-n", "-q"])
        .args(["-i", interval, "-W", "1", "-c", &count.to_string()])
        .arg(dst.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ping")
}

/// Wait for `ping` to end, for at most `bound`: past it, end it (by its own pid) and panic.
fn ping_finished(ping: &mut Child, bound: Duration) {
    let start = Instant::now();
    while ping.try_wait().expect("wait ping").is_none() {
        if start.elapsed() > bound {
            let _ = ping.kill();
            let _ = ping.wait();
            panic!("ping did not finish within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (transmitted, received) from a finished `ping -q`, waited for at most `bound`.
fn ping_result(mut child: Child, bound: Duration) -> (u32, u32, String) {
    ping_finished(&mut child, bound);
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

#[test]
fn three_hosts_reach_each_other_through_one_wireguard_peer_per_lease() {
    let lab = up(LabOptions {
        hosts: 3,
        ip_masq: true,
        ..LabOptions::default()
    });
    let probes = lab.connectivity_within(Duration::from_secs(20));
    assert!(
        failed(&probes).is_empty(),
        "probes failed: {:#?}",
        failed(&probes)
    );
    let keys: Vec<String> = (1..=3).map(|h| published_key(&lab, h)).collect();
    for h in 1..=3 {
        assert_eq!(device_key(&lab, h), keys[h - 1], "h{h}'s device key");
        let mut expected: Vec<WgPeer> = (1..=3)
            .filter(|&o| o != h)
            .map(|o| WgPeer {
                public_key: keys[o - 1].clone(),
                endpoint: format!("{}:{PORT}", lab.host_ip(o)),
                allowed_ips: subnet(&lab, o).to_string(),
            })
            .collect();
        expected.sort();
        assert_eq!(wg_peers(&lab, h, DEVICE), expected, "h{h}'s peers");

        let (code, routes, err) =
            lab.exec_in(lab.host_name(h), "ip", &["route", "show", "proto", "87"]);
        assert_eq!(code, 0, "{err}");
        let routes: Vec<&str> = routes.lines().map(str::trim).collect();
        assert_eq!(
            routes,
            vec![format!("10.244.0.0/16 dev {DEVICE} scope link")],
            "h{h}'s weft routes"
        );
        let (code, out, err) = lab.netctl_check(h);
        assert_eq!(code, 0, "netctl check on h{h}:\n{out}{err}");
        assert_eq!(
            metric(
                &lab,
                h,
                r#"weft_wireguard_implementation{implementation="userspace"}"#
            ),
            Some(1.0),
            "h{h}'s metrics:\n{}",
            lab.metrics(h)
        );
    }
}

/// One line of `tcpdump -n -tt` output: (source address, source port, destination address,
/// destination port, the rest) for IPv4 packets.
fn parse_ip_line(line: &str) -> Option<(String, String, String, String, String)> {
    let (_, after) = line.split_once(" IP ")?;
    let mut words = after.splitn(4, ' ');
    let src = words.next()?;
    let _arrow = words.next()?;
    let dst = words.next()?.trim_end_matches(':');
    let rest = words.next().unwrap_or("").to_string();
    // `10.99.0.11.51820`: the address is the first four dot-separated parts.
    let split = |a: &str| -> (String, String) {
        let parts: Vec<&str> = a.split('.').collect();
        let ip = parts.iter().take(4).copied().collect::<Vec<_>>().join(".");
        let port = parts.get(4).copied().unwrap_or("").to_string();
        (ip, port)
    };
    let (s, sp) = split(src);
    let (d, dp) = split(dst);
    Some((s, sp, d, dp, rest))
}

#[test]
fn pod_traffic_between_hosts_is_only_wireguard_udp_on_the_wire() {
    let lab = up(LabOptions {
        hosts: 2,
        pods_per_host: 1,
        ..LabOptions::default()
    });
    let (pod1, ip1) = pod_on(&lab, 1);
    let (pod2, ip2) = pod_on(&lab, 2);
    ping_until(&lab, &pod1, ip2, Duration::from_secs(10));

    // tcpdump on h1's switch port (the bridge itself sees only frames to the switch).
    let out = lab.dir().join("capture.txt");
    let file = std::fs::File::create(&out).expect("capture file");
    let mut tcpdump = Command::new("ip")
        .args(["netns", "exec", lab.switch_ns()])
        .args(["timeout", "30", "tcpdump", "-i", "h1", "-n", "-l", "-U"])
        .args(["-c", "5000", "ip"])
        .stdout(file)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tcpdump");
    // Wait (bounded) for tcpdump to listen: it says so on stderr only at exit, so probe by
    // sending pings until one is captured.
    let started = Instant::now();
    loop {
        lab.ping(&pod1, ip2);
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.contains(&format!(".{PORT}")) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "tcpdump captured nothing"
        );
    }
    let a = ping_stream(&lab, &pod1, ip2, "0.02", 50);
    let b = ping_stream(&lab, &pod2, ip1, "0.02", 50);
    let (sa, ga, ta) = ping_result(a, Duration::from_secs(20));
    let (sb, gb, tb) = ping_result(b, Duration::from_secs(20));
    assert_eq!((sa, sb), (ga, gb), "pings lost:\n{ta}\n{tb}");
    std::thread::sleep(Duration::from_millis(200));
    // `timeout` runs tcpdump as its child: end it (and so tcpdump) by its own pid.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tcpdump.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal tcpdump");
    let start = Instant::now();
    while tcpdump.try_wait().expect("wait tcpdump").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "tcpdump did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&out).expect("capture");
    let hosts = [lab.host_ip(1).to_string(), lab.host_ip(2).to_string()];
    let mut wireguard = 0;
    let mut other_between_hosts = Vec::new();
    let mut plaintext = Vec::new();
    for line in text.lines() {
        if line.contains("10.244.") {
            plaintext.push(line);
        }
        let Some((s, sp, d, dp, rest)) = parse_ip_line(line) else {
            continue;
        };
        if !(hosts.contains(&s) && hosts.contains(&d)) {
            continue;
        }
        if sp == PORT.to_string() && dp == PORT.to_string() && rest.starts_with("UDP") {
            wireguard += 1;
        } else {
            other_between_hosts.push(line);
        }
    }
    assert!(
        plaintext.is_empty(),
        "pod addresses on the wire: {plaintext:#?}"
    );
    assert!(
        other_between_hosts.is_empty(),
        "host-to-host packets that are not WireGuard: {other_between_hosts:#?}"
    );
    // 100 requests and 100 replies, each crossing h1's port once.
    assert!(
        wireguard >= 200,
        "only {wireguard} WireGuard packets captured:\n{text}"
    );
}

#[test]
fn a_new_key_replaces_the_old_peer_on_every_host() {
    let mut lab = up(LabOptions {
        hosts: 3,
        pods_per_host: 1,
        ..LabOptions::default()
    });
    let old = published_key(&lab, 1);
    let (pod2, _) = pod_on(&lab, 2);
    let (_, ip1) = pod_on(&lab, 1);
    ping_until(&lab, &pod2, ip1, Duration::from_secs(10));

    lab.stop_weftd(1);
    let key_file = lab.dir().join("h1").join("wireguard.key");
    std::fs::remove_file(&key_file)
        .unwrap_or_else(|e| panic!("remove {}: {e}", key_file.display()));
    lab.start_weftd(1);
    lab.wait_ready(1, READY).unwrap();
    let mut new = old.clone();
    within(
        &lab,
        Duration::from_secs(5),
        "h1's lease has a new key",
        || {
            new = published_key(&lab, 1);
            new != old
        },
    );
    assert_eq!(device_key(&lab, 1), new, "h1's device has the new key");
    let endpoint = format!("{}:{PORT}", lab.host_ip(1));
    for h in [2, 3] {
        within(&lab, WITHIN, "peers follow h1's new key", || {
            let peers = wg_peers(&lab, h, DEVICE);
            let of_h1: Vec<&WgPeer> = peers.iter().filter(|p| p.endpoint == endpoint).collect();
            of_h1.len() == 1
                && of_h1[0].public_key == new
                && peers.iter().all(|p| p.public_key != old)
        });
        assert_eq!(wg_peers(&lab, h, DEVICE).len(), 2, "h{h} has two peers");
    }
    for h in [2, 3] {
        let (pod, _) = pod_on(&lab, h);
        ping_until(&lab, &pod, ip1, Duration::from_secs(10));
    }
}

#[test]
fn a_deleted_lease_leaves_every_other_host_within_a_second() {
    let mut lab = up(LabOptions {
        hosts: 3,
        pods_per_host: 0,
        ..LabOptions::default()
    });
    let key3 = published_key(&lab, 3);
    for h in [1, 2] {
        assert!(
            wg_peers(&lab, h, DEVICE)
                .iter()
                .any(|p| p.public_key == key3),
            "h{h} has h3's peer"
        );
    }
    lab.stop_weftd(3);
    let (code, _, err) = lab.etcdctl(&["del", &lease_key(&lab, 3)]);
    assert_eq!(code, 0, "{err}");
    for h in [1, 2] {
        let took = within(&lab, WITHIN, "h3's peer gone", || {
            wg_peers(&lab, h, DEVICE)
                .iter()
                .all(|p| p.public_key != key3)
        });
        assert_eq!(
            wg_peers(&lab, h, DEVICE).len(),
            1,
            "h{h} keeps its other peer"
        );
        eprintln!("h{h}: h3's peer gone after {took:?}");
    }
}

/// Where the restart tests start: a 2-host lab with a pod on each host, h2's pod reaching
/// h1's, and h1's tunnel as it is before the restart.
struct RestartLab {
    lab: Lab,
    /// h2's pod, the one that pings.
    pod2: String,
    /// The address of h1's pod, the one pinged.
    ip1: Ipv4Addr,
    /// h1's wireguard-go.
    tunnel: u32,
    /// h1's peers.
    peers: Vec<WgPeer>,
}

impl RestartLab {
    fn up() -> RestartLab {
        let lab = up(LabOptions {
            hosts: 2,
            pods_per_host: 1,
            ..LabOptions::default()
        });
        let (pod2, _) = pod_on(&lab, 2);
        let (_, ip1) = pod_on(&lab, 1);
        ping_until(&lab, &pod2, ip1, Duration::from_secs(10));
        let tunnel = wireguard_go_pid(&lab, 1);
        let peers = wg_peers(&lab, 1, DEVICE);
        RestartLab {
            lab,
            pod2,
            ip1,
            tunnel,
            peers,
        }
    }
}

#[test]
fn weftd_killed_and_restarted_under_pings_loses_no_reply_and_keeps_the_tunnel() {
    let RestartLab {
        mut lab,
        pod2,
        ip1,
        tunnel,
        peers,
    } = RestartLab::up();
    let ping = ping_stream(&lab, &pod2, ip1, "0.01", 400);
    std::thread::sleep(Duration::from_millis(500));
    lab.kill_weftd(1);
    lab.start_weftd(1);
    lab.wait_ready(1, READY).unwrap();
    let (sent, got, text) = ping_result(ping, Duration::from_secs(30));
    assert_eq!(sent, got, "replies lost while weftd restarted:\n{text}");
    assert_eq!(
        wireguard_go_pid(&lab, 1),
        tunnel,
        "wireguard-go was replaced"
    );
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(tunnel as i32), None).is_ok(),
        "wireguard-go {tunnel} is gone"
    );
    assert_eq!(wg_peers(&lab, 1, DEVICE), peers, "h1's peers unchanged");
}

/// The replies of a finished `ping -n` (not `-q`) from its output: (sent, received, the
/// longest run of consecutive sequence numbers with no reply).
fn ping_replies(text: &str) -> (u32, u32, u32) {
    let replied: std::collections::BTreeSet<u32> = text
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in: {text}"));
    let nums: Vec<u32> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|t| t.parse().ok())
        .collect();
    let sent = nums[0];
    let (mut longest, mut run) = (0, 0);
    for seq in 1..=sent {
        if replied.contains(&seq) {
            run = 0;
        } else {
            run += 1;
            longest = longest.max(run);
        }
    }
    (sent, nums[1], longest)
}

/// What a restart of the weftd container does on Kubernetes with the userspace
/// implementation: the runtime ends weftd and the wireguard-go it started together, the TUN
/// device goes with wireguard-go, and only the next weftd brings the tunnel back, with a new
/// wireguard-go and the same key. Here weftd and wireguard-go on h1 are killed (SIGKILL, by
/// pid: weftd's, and wireguard-go's from the pid file beside its socket), weftd is started
/// again at once, and h2's pod pings h1's pod every 10 ms throughout. The longest run of
/// unanswered pings is the outage (docs/benchmarks.md, "WireGuard userspace: restart gap").
#[test]
fn weftd_and_wireguard_go_killed_together_drop_the_tunnel_until_the_new_weftd_restores_it() {
    let RestartLab {
        mut lab,
        pod2,
        ip1,
        tunnel,
        peers,
    } = RestartLab::up();
    let key = device_key(&lab, 1);
    // 30 s of pings: room for WireGuard's own retry timers after the tunnel is back. One
    // line per reply is more than a pipe holds: into a file.
    let ping_log = lab.dir().join("ping-restart.log");
    let mut ping = Command::new("ip")
        .args(["netns", "exec", lab.ns_of(&pod2), "ping", "-n"])
        .args(["-i", "0.01", "-W", "1", "-c", "3000"])
        .arg(ip1.to_string())
        .stdout(std::fs::File::create(&ping_log).expect("ping log"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ping");
    std::thread::sleep(Duration::from_millis(500));
    lab.kill_weftd(1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tunnel as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill wireguard-go");
    let gone = within(&lab, Duration::from_secs(5), "h1's device is gone", || {
        lab.host_exec(1, "ip", &["link", "show", DEVICE]).0 != 0
    });
    let started = Instant::now();
    lab.start_weftd(1);
    lab.wait_ready(1, READY).unwrap();
    let ready = started.elapsed();
    ping_finished(&mut ping, Duration::from_secs(60));
    let out = std::fs::read_to_string(&ping_log).expect("read the ping log");
    let (sent, got, outage) = ping_replies(&out);
    eprintln!(
        "h2p1 -> h1p1 every 10 ms: {sent} sent, {got} answered, {} lost; longest run without \
         a reply {outage} pings ({:.2} s); h1's device gone {gone:?} after the kill, h1's new \
         weftd ready {ready:?} after its start",
        sent - got,
        f64::from(outage) * 0.01
    );
    assert!(outage > 0, "no reply was lost: the tunnel did not go");
    let summary: Vec<&str> = out.lines().rev().take(3).collect();
    assert!(
        out.lines()
            .rev()
            .find_map(|l| l.split("icmp_seq=").nth(1))
            .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
            .is_some_and(|last| last + 100 > sent),
        "the pings were not answered again at the end: {summary:?}"
    );
    let new_tunnel = wireguard_go_pid(&lab, 1);
    assert_ne!(
        new_tunnel, tunnel,
        "the new weftd started a new wireguard-go"
    );
    assert_eq!(device_key(&lab, 1), key, "h1 kept its key");
    assert_eq!(wg_peers(&lab, 1, DEVICE), peers, "h1's peers set up again");
}

fn put_lease(lab: &Lab, subnet: &str, public_ip: &str, key: &str) {
    let value = format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{key}","Port":{PORT}}},"NodeName":"intruder"}}"#
    );
    let (code, _, err) =
        lab.etcdctl(&["put", &format!("{ETCD_PREFIX}/subnets/{subnet}-24"), &value]);
    assert_eq!(code, 0, "{err}");
}

/// Wait (bounded) until host `h`'s log has `text`.
fn logged(lab: &Lab, h: usize, text: &str) {
    within(
        lab,
        Duration::from_secs(5),
        &format!("h{h} logs {text:?}"),
        || lab.weftd_log(h).contains(text),
    );
}

/// Where the hostile leases' subnets lie against the real hosts' subnets.
#[derive(Clone, Copy, Debug)]
enum Placement {
    Above,
    Below,
}

#[test]
fn hostile_wireguard_leases_are_refused_and_program_nothing() {
    hostile_leases(Placement::Above);
}

/// The same with the hostile subnets below the real ones: the key stays with the oldest
/// lease, not with the lowest subnet. (Before the lease watch claimed keys, the plan gave a
/// key to the first peer by subnet, and a copy of h2's key in a lower subnet took h2's peer
/// over on every host.)
#[test]
fn hostile_wireguard_leases_below_the_real_subnets_program_nothing() {
    hostile_leases(Placement::Below);
}

fn hostile_leases(placement: Placement) {
    let lab = up(LabOptions {
        hosts: 2,
        pods_per_host: 1,
        ..LabOptions::default()
    });
    let (pod1, _) = pod_on(&lab, 1);
    let (_, ip2) = pod_on(&lab, 2);
    ping_until(&lab, &pod1, ip2, Duration::from_secs(10));
    let before = wg_peers(&lab, 1, DEVICE);
    assert_eq!(before.len(), 1, "h1 has h2's peer");
    let (k1, k2) = (published_key(&lab, 1), published_key(&lab, 2));
    // Free subnets above (or below) both hosts', and public IPs of no host.
    let taken: Vec<u8> = (1..=2).map(|h| subnet(&lab, h).ip().octets()[2]).collect();
    let (low, top) = (*taken.iter().min().unwrap(), *taken.iter().max().unwrap());
    let free: Vec<u8> = match placement {
        Placement::Above => (top.saturating_add(1)..=254).take(3).collect(),
        Placement::Below => (1..low).rev().take(3).collect(),
    };
    if free.len() < 3 {
        // The lab's subnets are picked at random: too close to the edge for this placement.
        eprintln!("no 3 free subnets {placement:?} {taken:?}; nothing to check");
        return;
    }
    let sub = |n: u8| format!("10.244.{n}.0");

    // 1. A key that is no key: an invalid lease.
    put_lease(&lab, &sub(free[0]), "10.99.0.61", "not-a-key!");
    // 2. h1's own key, another subnet and public IP.
    put_lease(&lab, &sub(free[1]), "10.99.0.62", &k1);
    // 3. h2's key copied.
    put_lease(&lab, &sub(free[2]), "10.99.0.63", &k2);

    // h1 has taken all three in: none is a peer (the copies are refused by the lease watch,
    // whose older lease holds each key, h1's own for its key), all three count as invalid ...
    within(
        &lab,
        Duration::from_secs(5),
        "h1 has seen the leases",
        || {
            metric(&lab, 1, "weft_peers") == Some(1.0)
                && metric(&lab, 1, "weft_invalid_leases") == Some(3.0)
        },
    );
    // ... and a while later (every lease change has been applied) its device is as before.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(wg_peers(&lab, 1, DEVICE), before, "h1's peers changed");
    assert_eq!(metric(&lab, 1, "weft_invalid_leases"), Some(3.0));
    // Nothing reached the plan for it to refuse (its OwnKey / KeyInUse checks stay as a
    // second line).
    assert_eq!(
        metric(&lab, 1, r#"weft_dataplane_peers_refused{family="ipv4"}"#),
        Some(0.0)
    );
    for key in [&k1, &k2] {
        logged(
            &lab,
            1,
            &format!("refusing a lease whose IPv4 WireGuard public key {key} an older lease already holds"),
        );
    }
    // The invalid lease is named with its cause.
    let log = lab.weftd_log(1);
    assert!(
        log.lines()
            .any(|l| l.contains(&sub(free[0])) && l.contains("PublicKey")),
        "h1 names the lease with the malformed key:\n{}",
        tail(&log, 30)
    );
    assert!(lab.ping(&pod1, ip2), "pods still reach each other");
}

#[test]
fn dual_stack_runs_one_device_per_family() {
    let lab = up(LabOptions {
        hosts: 2,
        ip_masq: true,
        ipv6_network: Some("fc00::/48".into()),
        ..LabOptions::default()
    });
    let probes = lab.connectivity_within(Duration::from_secs(20));
    assert!(
        probes.iter().any(|p| p.dst.is_ipv6()) && probes.iter().any(|p| p.dst.is_ipv4()),
        "both families probed"
    );
    assert!(
        failed(&probes).is_empty(),
        "probes failed: {:#?}",
        failed(&probes)
    );
    for h in 1..=2 {
        let other = 3 - h;
        let v4 = wg_peers(&lab, h, DEVICE);
        assert_eq!(v4.len(), 1, "h{h}: {v4:?}");
        assert_eq!(v4[0].endpoint, format!("{}:{PORT}", lab.host_ip(other)));
        let v6 = wg_peers(&lab, h, DEVICE_V6);
        assert_eq!(v6.len(), 1, "h{h}: {v6:?}");
        assert_eq!(
            v6[0].endpoint,
            format!("[{}]:{PORT_V6}", lab.host_ip6(other)),
            "h{h}'s IPv6 peer"
        );
        let s6 = lab.subnet6(other).expect("IPv6 subnet");
        let s6 = ipnetwork::Ipv6Network::new(s6.network(), s6.prefix()).unwrap();
        assert_eq!(v6[0].allowed_ips, s6.to_string());
        let (code, out, err) = lab.netctl_check(h);
        assert_eq!(code, 0, "netctl check on h{h}:\n{out}{err}");
    }
}

/// Host `h`'s proto-87 routes (`ip -<family> route show proto 87`), one per line.
fn weft_routes(lab: &Lab, h: usize, family: &str) -> Vec<String> {
    let (code, out, err) = lab.host_exec(h, "ip", &[family, "route", "show", "proto", "87"]);
    assert_eq!(code, 0, "ip {family} route on h{h}: {err}");
    out.lines().map(|l| l.trim().to_string()).collect()
}

#[test]
fn dual_stack_single_device_modes_carry_both_families_on_one_device() {
    // ipv6: IPv4 pods over IPv6 endpoints; auto on this underlay (private IPv4, unique-local
    // IPv6): IPv4 endpoints, as flannel chooses.
    for (mode, v6_endpoints) in [
        (LabWireguardMode::Ipv6, true),
        (LabWireguardMode::Auto, false),
    ] {
        let mut lab = up(LabOptions {
            hosts: 2,
            ip_masq: true,
            ipv6_network: Some("fc00::/48".into()),
            wireguard_mode: Some(mode),
            ..LabOptions::default()
        });
        let probes = lab.connectivity_within(Duration::from_secs(20));
        assert!(
            probes.iter().any(|p| p.dst.is_ipv6()) && probes.iter().any(|p| p.dst.is_ipv4()),
            "{mode:?}: both families probed"
        );
        assert!(
            failed(&probes).is_empty(),
            "{mode:?}: probes failed: {:#?}",
            failed(&probes)
        );
        // Allowed IPs in any order.
        let sorted = |ips: &str| {
            let mut v: Vec<String> = ips.split(',').map(str::to_string).collect();
            v.sort();
            v
        };
        let both = |lab: &Lab, other: usize| {
            let s6 = lab.subnet6(other).expect("IPv6 subnet");
            let s6 = ipnetwork::Ipv6Network::new(s6.network(), s6.prefix()).unwrap();
            sorted(&format!("{},{s6}", subnet(lab, other)))
        };
        for h in 1..=2 {
            let other = 3 - h;
            let peers = wg_peers(&lab, h, DEVICE);
            assert_eq!(peers.len(), 1, "{mode:?} h{h}: {peers:?}");
            let endpoint = if v6_endpoints {
                format!("[{}]:{PORT}", lab.host_ip6(other))
            } else {
                format!("{}:{PORT}", lab.host_ip(other))
            };
            assert_eq!(peers[0].endpoint, endpoint, "{mode:?} h{h}");
            assert_eq!(
                sorted(&peers[0].allowed_ips),
                both(&lab, other),
                "{mode:?} h{h}"
            );
            let (code, _, _) = lab.host_exec(h, "ip", &["link", "show", DEVICE_V6]);
            assert_ne!(
                code, 0,
                "{mode:?} h{h}: no {DEVICE_V6} in a single-device mode"
            );
            assert_eq!(
                weft_routes(&lab, h, "-4"),
                ["10.244.0.0/16 dev weft-wg scope link"],
                "{mode:?} h{h}"
            );
            let r6 = weft_routes(&lab, h, "-6");
            assert!(
                r6.len() == 1 && r6[0].starts_with("fc00::/48 dev weft-wg "),
                "{mode:?} h{h}: {r6:?}"
            );
            let (code, out, err) = lab.netctl_check(h);
            assert_eq!(code, 0, "{mode:?}: netctl check on h{h}:\n{out}{err}");
            // One key and one port in both halves of the lease.
            let lease = &lease_of(&lab, h);
            assert_eq!(
                lease["BackendData"], lease["BackendV6Data"],
                "{mode:?} h{h}'s lease: {lease}"
            );
            assert_eq!(
                lease["BackendV6Data"]["Port"], PORT,
                "{mode:?} h{h}: {lease}"
            );
        }
        // Each family owns its part of the shared peer: the IPv6 half removed by hand is
        // missing for netctl check (the IPv4 half is intact), and put back at restart
        // beside the IPv4 half.
        let k2 = published_key(&lab, 2);
        let (code, _, err) = lab.host_exec(
            1,
            "wg",
            &[
                "set",
                DEVICE,
                "peer",
                &k2,
                "allowed-ips",
                &subnet(&lab, 2).to_string(),
            ],
        );
        assert_eq!(code, 0, "wg set: {err}");
        let (code, out, err) = lab.netctl_check(1);
        assert_eq!(code, 1, "{mode:?}: netctl check on h1:\n{out}{err}");
        let missing: Vec<&str> = out
            .lines()
            .filter(|l| l.split_whitespace().take(2).eq(["MISSING", "peer"]))
            .collect();
        assert!(
            missing.len() == 1 && missing[0].contains("fc00:"),
            "{mode:?}: netctl check names the IPv6 half as missing, only it:\n{out}"
        );
        lab.restart(1);
        lab.wait_ready(1, READY).unwrap();
        within(&lab, Duration::from_secs(5), "both halves are back", || {
            wg_peers(&lab, 1, DEVICE)
                .first()
                .map(|p| sorted(&p.allowed_ips))
                == Some(both(&lab, 2))
        });
        let (code, out, err) = lab.netctl_check(1);
        assert_eq!(code, 0, "{mode:?}: netctl check on h1:\n{out}{err}");
    }
}

#[test]
fn a_peer_removed_by_hand_is_reported_by_netctl_and_restored_at_restart() {
    let mut lab = up(LabOptions {
        hosts: 2,
        pods_per_host: 0,
        ..LabOptions::default()
    });
    let before = wg_peers(&lab, 1, DEVICE);
    assert_eq!(before.len(), 1, "h1 has h2's peer");
    let k2 = published_key(&lab, 2);
    let (code, _, err) = lab.host_exec(1, "wg", &["set", DEVICE, "peer", &k2, "remove"]);
    assert_eq!(code, 0, "wg set peer remove: {err}");
    assert!(wg_peers(&lab, 1, DEVICE).is_empty(), "the peer is gone");
    let (code, out, err) = lab.netctl_check(1);
    assert_eq!(code, 1, "netctl check on h1:\n{out}{err}");
    // `MISSING  peer  h2  peer <key> endpoint … allowed-ips …`: the peer, named.
    let missing: Vec<&str> = out
        .lines()
        .filter(|l| l.split_whitespace().take(2).eq(["MISSING", "peer"]))
        .collect();
    assert_eq!(
        missing.len(),
        1,
        "netctl check names one missing peer:\n{out}"
    );
    assert!(
        missing[0].contains(&k2) && missing[0].contains(&subnet(&lab, 2).to_string()),
        "netctl check names h2's key and subnet:\n{out}"
    );
    lab.restart(1);
    lab.wait_ready(1, READY).unwrap();
    within(&lab, Duration::from_secs(5), "the peer is back", || {
        wg_peers(&lab, 1, DEVICE) == before
    });
    let (code, out, err) = lab.netctl_check(1);
    assert_eq!(code, 0, "netctl check on h1:\n{out}{err}");
}

#[test]
fn tcpdump_lines_parse() {
    let line = "14:00:00.000000 IP 10.99.0.11.51820 > 10.99.0.12.51820: UDP, length 128";
    assert_eq!(
        parse_ip_line(line),
        Some((
            "10.99.0.11".into(),
            "51820".into(),
            "10.99.0.12".into(),
            "51820".into(),
            "UDP, length 128".into()
        ))
    );
    let icmp = "14:00:00.000000 IP 10.244.3.2 > 10.244.7.2: ICMP echo request, id 1, seq 1";
    let (s, sp, d, _, rest) = parse_ip_line(icmp).unwrap();
    assert_eq!(
        (s.as_str(), sp.as_str(), d.as_str()),
        ("10.244.3.2", "", "10.244.7.2")
    );
    assert!(rest.starts_with("ICMP"));
}
