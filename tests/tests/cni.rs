//! The `weft` CNI binary against the real kernel. Each test makes its own "host" namespace
//! (where the plugin runs, as kubelet would run it on a node) and pod namespaces, and removes
//! them when it ends, also on failure. IPv4-only, dual-stack and IPv6-only nodes are all
//! covered: the node's families come from the subnet.env each fixture writes.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{json, Value};
use weft_tests::netns::{cni_call, CniOut, Netns};
use weft_tests::procs::bin;

const VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

const V4_ENV: &str =
    "FLANNEL_NETWORK=10.77.0.0/16\nFLANNEL_SUBNET=10.77.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
const DUAL_STACK_ENV: &str = "FLANNEL_NETWORK=10.77.0.0/16\nFLANNEL_SUBNET=10.77.5.1/24\nFLANNEL_IPV6_NETWORK=fd77::/48\nFLANNEL_IPV6_SUBNET=fd77:0:0:5::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
const V6_ONLY_ENV: &str = "FLANNEL_IPV6_NETWORK=fd77::/48\nFLANNEL_IPV6_SUBNET=fd77:0:0:5::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
const GW4: &str = "10.77.5.1";
const GW6: &str = "fd77:0:0:5::1";

struct Fixture {
    host: Netns,
    dir: tempfile::TempDir,
    plugin: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        Fixture::with_env(tag, V4_ENV)
    }

    /// A fixture whose subnet.env holds `env` (the node's families).
    fn with_env(tag: &str, env: &str) -> Fixture {
        let f = Fixture {
            host: Netns::new(tag),
            dir: tempfile::tempdir().unwrap(),
            plugin: bin("weft"),
        };
        f.write_env(env);
        f
    }

    fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }

    fn write_subnet_env(&self) {
        self.write_env(V4_ENV);
    }

    fn write_env(&self, env: &str) {
        std::fs::write(self.subnet_file(), env).unwrap();
    }

    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "wtest",
            "type": "weft",
            "subnetFile": self.subnet_file(),
            "dataDir": self.dir.path().join("ipam"),
        })
    }

    fn call(&self, command: &str, cid: &str, pod: Option<&Netns>, conf: &Value) -> CniOut {
        let netns = pod.map(|p| p.path().display().to_string());
        let mut env = vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", cid),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ];
        if let Some(n) = &netns {
            env.push(("CNI_NETNS", n));
        }
        cni_call(&self.plugin, &self.host, &env, conf.to_string().as_bytes())
    }

    fn add(&self, cid: &str, pod: &Netns, version: &str) -> Value {
        self.call("ADD", cid, Some(pod), &self.conf(version))
            .ok()
            .json()
    }

    /// IPAM records on disk: "ip-<address>" names.
    fn records(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.dir.path().join("ipam/wtest"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("ip-"))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn host_veths(&self) -> Vec<String> {
        self.host.veths()
    }

    fn with_prev(&self, version: &str, prev: &Value) -> Value {
        let mut c = self.conf(version);
        c["prevResult"] = prev.clone();
        c
    }
}

fn pod_ip(result: &Value) -> String {
    let cidr = result["ips"][0]["address"].as_str().expect("an address");
    cidr.split('/').next().unwrap().to_string()
}

/// Every address of a result, without the prefix, in the result's order.
fn pod_ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|ip| {
            let cidr = ip["address"].as_str().expect("an address");
            cidr.split('/').next().unwrap().to_string()
        })
        .collect()
}

/// The result's IPv6 address (without prefix).
fn pod_ip6(result: &Value) -> String {
    pod_ips(result)
        .into_iter()
        .find(|a| a.contains(':'))
        .unwrap_or_else(|| panic!("no IPv6 address in {result}"))
}

/// `ping -6` with a bounded retry: the very first echo can be lost while neighbour discovery
/// resolves the peer.
fn ping6(ns: &Netns, dst: &str) -> bool {
    (0..3).any(|_| ns.ping6(dst))
}

#[test]
fn every_verb_in_every_version() {
    let f = Fixture::new("verbs");
    let v = cni_call(&f.plugin, &f.host, &[("CNI_COMMAND", "VERSION")], b"{}")
        .ok()
        .json();
    assert_eq!(v["supportedVersions"], json!(VERSIONS));

    for version in VERSIONS {
        let pod = Netns::new("verbs-pod");
        let cid = format!("ctr-{}", version.replace('.', ""));
        let r = f.add(&cid, &pod, version);
        assert_eq!(r["cniVersion"], version);
        let ip = &r["ips"][0];
        assert_eq!(ip["gateway"], "10.77.5.1");
        assert_eq!(ip["interface"], 2);
        assert_eq!(
            ip.get("version").is_some(),
            version.starts_with("0."),
            "{r}"
        );
        assert_eq!(r["interfaces"][2]["name"], "eth0");
        assert_eq!(
            r["interfaces"][2]["sandbox"],
            pod.path().display().to_string()
        );
        assert_eq!(r["interfaces"][0]["name"], "cni0");
        assert_eq!(
            r["routes"][0],
            json!({"dst": "0.0.0.0/0", "gw": "10.77.5.1"})
        );

        // The kernel agrees with the result.
        let addr = ip["address"].as_str().unwrap();
        let shown = pod.ip(&["-4", "addr", "show", "dev", "eth0"]);
        assert!(shown.contains(&format!("inet {addr}")), "{shown}");
        assert!(
            shown.contains("mtu 1450") || pod.ip(&["link", "show", "eth0"]).contains("mtu 1450")
        );
        let route = pod.ip(&["-4", "route", "show", "default"]);
        assert!(route.contains("via 10.77.5.1 dev eth0"), "{route}");
        let mac = r["interfaces"][2]["mac"].as_str().unwrap();
        assert!(pod.ip(&["link", "show", "eth0"]).contains(mac));
        assert!(f
            .host
            .ip(&["-4", "addr", "show", "dev", "cni0"])
            .contains("inet 10.77.5.1/24"));
        assert!(
            pod.ping("10.77.5.1"),
            "pod cannot reach its gateway ({version})"
        );

        if version != "0.3.1" {
            f.call("CHECK", &cid, Some(&pod), &f.with_prev(version, &r))
                .ok();
        }
        assert_eq!(f.records().len(), 1);
        f.call("DEL", &cid, Some(&pod), &f.with_prev(version, &r))
            .ok();
        assert!(f.records().is_empty(), "DEL released the address");
        assert!(
            f.host_veths().is_empty(),
            "DEL removed the veth: {:?}",
            f.host_veths()
        );
        assert_eq!(pod.links(), vec!["lo"]);
        // DEL is idempotent.
        f.call("DEL", &cid, Some(&pod), &f.conf(version)).ok();
    }
    // STATUS and GC exist from 1.1.0 on.
    f.call("STATUS", "", None, &f.conf("1.1.0")).ok();
    let mut gc = f.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    f.call("GC", "", None, &gc).ok();
    assert_eq!(f.call("GC", "", None, &f.conf("1.0.0")).code(), 1);
    assert_eq!(f.call("STATUS", "", None, &f.conf("1.0.0")).code(), 1);
}

#[test]
fn check_catches_a_removed_route_address_or_interface() {
    let f = Fixture::new("check");
    let pod = Netns::new("check-pod");
    let breakages: [(&str, &[&str], &str); 3] = [
        ("route", &["route", "del", "default"], "route 0.0.0.0/0"),
        ("address", &["addr", "flush", "dev", "eth0"], "address"),
        ("interface", &["link", "set", "eth0", "down"], "down"),
    ];
    for (what, cmd, needle) in breakages {
        let r = f.add("ctr", &pod, "1.1.0");
        f.call("CHECK", "ctr", Some(&pod), &f.with_prev("1.1.0", &r))
            .ok();
        pod.ip(cmd);
        let out = f.call("CHECK", "ctr", Some(&pod), &f.with_prev("1.1.0", &r));
        assert_eq!(out.code(), 101, "{what}: {}", out.stdout);
        assert!(
            out.json()["details"].as_str().unwrap().contains(needle),
            "{what}: {}",
            out.stdout
        );
        f.call("DEL", "ctr", Some(&pod), &f.conf("1.1.0")).ok();
    }
    // The interface gone entirely (here: its host end deleted, which takes the pair).
    let r = f.add("ctr", &pod, "1.1.0");
    let veth = r["interfaces"][1]["name"].as_str().unwrap().to_string();
    f.host.ip(&["link", "del", &veth]);
    let out = f.call("CHECK", "ctr", Some(&pod), &f.with_prev("1.1.0", &r));
    assert_eq!(out.code(), 101, "{}", out.stdout);
    // A result for another address is caught too.
    let mut other = r.clone();
    other["ips"][0]["address"] = json!("10.77.5.200/24");
    let out = f.call("CHECK", "ctr", Some(&pod), &f.with_prev("1.1.0", &other));
    assert_eq!(out.code(), 101, "{}", out.stdout);
    // CHECK needs a prevResult, and a version that has CHECK.
    assert_eq!(
        f.call("CHECK", "ctr", Some(&pod), &f.conf("1.1.0")).code(),
        7
    );
    assert_eq!(
        f.call("CHECK", "ctr", Some(&pod), &f.with_prev("0.3.1", &r))
            .code(),
        1
    );
    f.call("DEL", "ctr", Some(&pod), &f.conf("1.1.0")).ok();
}

#[test]
fn del_succeeds_after_the_netns_is_gone() {
    let f = Fixture::new("delgone");
    let pod = Netns::new("delgone-pod");
    let path = pod.path().display().to_string();
    f.add("ctr", &pod, "1.0.0");
    drop(pod); // the runtime removed the pod's namespace first
    let conf = f.conf("1.0.0").to_string();
    let env = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "ctr"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", path.as_str()),
    ];
    cni_call(&f.plugin, &f.host, &env, conf.as_bytes()).ok();
    cni_call(&f.plugin, &f.host, &env, conf.as_bytes()).ok();
    assert!(f.records().is_empty());
    assert!(f.host_veths().is_empty());
}

#[test]
fn gc_releases_everything_not_in_valid_attachments() {
    let f = Fixture::new("gc");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("gc-pod")).collect();
    let results: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| f.add(&format!("c{i}"), p, "1.1.0"))
        .collect();
    assert_eq!(f.records().len(), 3);
    let mut gc = f.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    f.call("GC", "", None, &gc).ok();
    let kept = format!("ip-{}", pod_ip(&results[1]));
    assert_eq!(f.records(), BTreeSet::from([kept]));
    assert_eq!(f.host_veths().len(), 1);
    assert!(pods[1].ping("10.77.5.1"), "the kept pod still works");
    assert_eq!(pods[0].links(), vec!["lo"]);
    // Without the list GC refuses rather than releasing everything.
    assert_eq!(f.call("GC", "", None, &f.conf("1.1.0")).code(), 7);
    assert_eq!(f.records().len(), 1);
    f.call("DEL", "c1", Some(&pods[1]), &f.conf("1.1.0")).ok();
}

#[test]
fn status_and_add_wait_for_subnet_env() {
    let f = Fixture::new("status");
    std::fs::remove_file(f.subnet_file()).unwrap();
    let out = f.call("STATUS", "", None, &f.conf("1.1.0"));
    assert_eq!(out.code(), 50);
    let details = out.json()["details"].as_str().unwrap().to_string();
    assert!(
        details.contains(&f.subnet_file().display().to_string()) && details.contains("weftd"),
        "{details}"
    );
    let pod = Netns::new("status-pod");
    let out = f.call("ADD", "ctr", Some(&pod), &f.conf("1.1.0"));
    assert_eq!(out.code(), 50);
    assert!(
        out.json()["msg"]
            .as_str()
            .unwrap()
            .contains("has not written"),
        "{}",
        out.stdout
    );
    assert_eq!(f.host.links(), vec!["lo"], "nothing was created");
    f.write_subnet_env();
    f.call("STATUS", "", None, &f.conf("1.1.0")).ok();
    f.add("ctr", &pod, "1.1.0");
    f.call("DEL", "ctr", Some(&pod), &f.conf("1.1.0")).ok();
}

#[test]
fn malformed_input_gets_the_right_code_and_changes_nothing() {
    let f = Fixture::new("bad");
    let pod = Netns::new("bad-pod");
    let pod_path = pod.path().display().to_string();
    let regular_file = f.dir.path().join("not-a-netns");
    std::fs::write(&regular_file, "x").unwrap();
    let regular_file = regular_file.display().to_string();
    let good = f.conf("1.1.0");
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c.to_string().into_bytes()
    };
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(k);
        c.to_string().into_bytes()
    };
    let ok_conf = good.to_string().into_bytes();
    let env = |over: &[(&'static str, &str)], drop: &[&str]| -> Vec<(String, String)> {
        let mut e: Vec<(String, String)> = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "ctr-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", pod_path.as_str()),
            ("CNI_PATH", "/usr/lib/cni"),
        ]
        .iter()
        .filter(|(k, _)| !drop.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in over {
            e.retain(|(ek, _)| ek != k);
            e.push((k.to_string(), v.to_string()));
        }
        e
    };
    let std_env = env(&[], &[]);
    let mut huge =
        b"{\"cniVersion\":\"1.1.0\",\"name\":\"wtest\",\"type\":\"weft\",\"pad\":\"".to_vec();
    huge.resize(1024 * 1024 + 100, b'a');
    huge.extend_from_slice(b"\"}");

    type Env = Vec<(String, String)>;
    let cases: Vec<(&str, Env, Vec<u8>, u64)> = vec![
        ("not JSON", std_env.clone(), b"{nope".to_vec(), 6),
        ("empty stdin", std_env.clone(), Vec::new(), 6),
        ("JSON array", std_env.clone(), b"[]".to_vec(), 6),
        ("oversized stdin", std_env.clone(), huge, 6),
        ("no cniVersion", std_env.clone(), without("cniVersion"), 7),
        (
            "unknown cniVersion",
            std_env.clone(),
            with("cniVersion", json!("9.9.9")),
            1,
        ),
        (
            "pre-0.3 cniVersion",
            std_env.clone(),
            with("cniVersion", json!("0.2.0")),
            1,
        ),
        ("no name", std_env.clone(), without("name"), 7),
        (
            "name with ..",
            std_env.clone(),
            with("name", json!("../etc")),
            7,
        ),
        (
            "name with /",
            std_env.clone(),
            with("name", json!("a/b")),
            7,
        ),
        ("no type", std_env.clone(), without("type"), 7),
        (
            "bridge with /",
            std_env.clone(),
            with("bridge", json!("br/0")),
            7,
        ),
        (
            "bridge too long",
            std_env.clone(),
            with("bridge", json!("bridge-name-too-long")),
            7,
        ),
        ("mtu too small", std_env.clone(), with("mtu", json!(100)), 7),
        (
            "relative dataDir",
            std_env.clone(),
            with("dataDir", json!("ipam")),
            7,
        ),
        (
            "range not a CIDR",
            std_env.clone(),
            with("range", json!("ten.0.0.0/24")),
            7,
        ),
        (
            "range too small",
            std_env.clone(),
            with("range", json!("10.9.0.0/31")),
            7,
        ),
        (
            "no CNI_COMMAND",
            env(&[], &["CNI_COMMAND"]),
            ok_conf.clone(),
            4,
        ),
        (
            "unknown CNI_COMMAND",
            env(&[("CNI_COMMAND", "FROB")], &[]),
            ok_conf.clone(),
            4,
        ),
        (
            "no CNI_CONTAINERID",
            env(&[], &["CNI_CONTAINERID"]),
            ok_conf.clone(),
            4,
        ),
        (
            "container id with ../",
            env(&[("CNI_CONTAINERID", "../../etc/passwd")], &[]),
            ok_conf.clone(),
            4,
        ),
        (
            "hidden container id",
            env(&[("CNI_CONTAINERID", ".hidden")], &[]),
            ok_conf.clone(),
            4,
        ),
        (
            "no CNI_IFNAME",
            env(&[], &["CNI_IFNAME"]),
            ok_conf.clone(),
            4,
        ),
        (
            "ifname with /",
            env(&[("CNI_IFNAME", "eth0/../x")], &[]),
            ok_conf.clone(),
            4,
        ),
        (
            "ifname ..",
            env(&[("CNI_IFNAME", "..")], &[]),
            ok_conf.clone(),
            4,
        ),
        (
            "ifname too long",
            env(&[("CNI_IFNAME", "eth0123456789012")], &[]),
            ok_conf.clone(),
            4,
        ),
        ("no CNI_NETNS", env(&[], &["CNI_NETNS"]), ok_conf.clone(), 4),
        (
            "relative CNI_NETNS",
            env(&[("CNI_NETNS", "run/netns/x")], &[]),
            ok_conf.clone(),
            4,
        ),
        (
            "missing CNI_NETNS",
            env(&[("CNI_NETNS", "/run/netns/wt-no-such-ns")], &[]),
            ok_conf.clone(),
            4,
        ),
        (
            "CNI_NETNS a regular file",
            env(&[("CNI_NETNS", regular_file.as_str())], &[]),
            ok_conf.clone(),
            4,
        ),
        (
            "CNI_NETNS the host's own",
            env(&[("CNI_NETNS", "/proc/self/ns/net")], &[]),
            ok_conf.clone(),
            4,
        ),
        (
            "CNI_ARGS not KEY=VALUE",
            env(&[("CNI_ARGS", "garbage")], &[]),
            ok_conf.clone(),
            4,
        ),
        (
            "GC before 1.1.0",
            env(&[("CNI_COMMAND", "GC")], &[]),
            with("cniVersion", json!("1.0.0")),
            1,
        ),
        (
            "CHECK in 0.3.1",
            env(&[("CNI_COMMAND", "CHECK")], &[]),
            with("cniVersion", json!("0.3.1")),
            1,
        ),
    ];
    assert!(cases.len() >= 25);
    for (what, env, stdin, want) in &cases {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let out = cni_call(&f.plugin, &f.host, &pairs, stdin);
        assert_eq!(out.code(), *want, "{what}: {} / {}", out.stdout, out.stderr);
        let j = out.json();
        assert!(
            j["msg"].as_str().is_some_and(|m| !m.is_empty())
                && j["details"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: error without msg/details: {j}"
        );
        assert!(
            !out.stderr.is_empty(),
            "{what}: the error also goes to stderr"
        );
        assert_eq!(f.host.links(), vec!["lo"], "{what}: the host was changed");
        assert_eq!(pod.links(), vec!["lo"], "{what}: the pod was changed");
        assert!(f.records().is_empty(), "{what}: an address was allocated");
    }

    // An interface name already taken in the pod, and a bridge name taken by a non-bridge:
    // the ADD fails, and the address and any veth are gone again.
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    let out = f.call("ADD", "ctr-1", Some(&pod), &good);
    assert_eq!(out.code(), 4, "{}", out.stdout);
    assert!(out.stdout.contains("already exists"), "{}", out.stdout);
    assert!(f.records().is_empty());
    assert_eq!(f.host.links(), vec!["lo"], "not even the bridge was made");
    pod.ip(&["link", "del", "eth0"]);

    f.host.ip(&[
        "link", "add", "cni0", "type", "veth", "peer", "name", "cni0p",
    ]);
    let out = f.call("ADD", "ctr-1", Some(&pod), &good);
    assert_eq!(out.code(), 7, "{}", out.stdout);
    assert!(out.stdout.contains("not a bridge"), "{}", out.stdout);
    assert!(f.records().is_empty());
    assert_eq!(pod.links(), vec!["lo"]);
}

#[test]
fn a_failed_add_undoes_what_it_did() {
    let f = Fixture::new("undo");
    let pod = Netns::new("undo-pod");
    // The pod already has a default route, so adding weft's fails after the veth exists.
    pod.ip(&["link", "add", "x0", "type", "veth", "peer", "name", "x1"]);
    pod.ip(&["addr", "add", "192.0.2.1/24", "dev", "x0"]);
    pod.ip(&["link", "set", "x0", "up"]);
    pod.ip(&["link", "set", "x1", "up"]);
    pod.ip(&["route", "add", "default", "via", "192.0.2.254"]);
    let out = f.call("ADD", "ctr", Some(&pod), &f.conf("1.1.0"));
    assert_eq!(out.code(), 100, "{}", out.stdout);
    assert!(out.stdout.contains("add route 0.0.0.0/0"), "{}", out.stdout);
    assert!(f.records().is_empty(), "the address was released");
    assert!(f.host_veths().is_empty(), "the veth was removed");
    assert!(!pod.links().contains(&"eth0".to_string()));
}

#[test]
fn sixty_four_parallel_adds_get_distinct_working_addresses() {
    let f = Fixture::new("par");
    let pods: Vec<Netns> = (0..64).map(|_| Netns::new("par-pod")).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let f = &f;
                s.spawn(move || f.add(&format!("par-{i}"), p, "1.1.0"))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ips: Vec<String> = results.iter().map(pod_ip).collect();
    let distinct: BTreeSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), 64, "{ips:?}");
    assert_eq!(f.records().len(), 64);
    // Every pod reaches the gateway and its neighbour.
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let next = &ips[(i + 1) % 64];
            s.spawn(move || {
                assert!(p.ping("10.77.5.1"), "pod {i} cannot reach the gateway");
                assert!(p.ping(next), "pod {i} cannot reach {next}");
            });
        }
    });
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let f = &f;
            s.spawn(move || {
                f.call("DEL", &format!("par-{i}"), Some(p), &f.conf("1.1.0"))
                    .ok()
            });
        }
    });
    assert!(f.records().is_empty());
    assert!(f.host_veths().is_empty());
}

#[test]
fn a_full_range_is_a_clear_error() {
    let f = Fixture::new("full");
    let mut conf = f.conf("1.1.0");
    conf["range"] = json!("10.78.0.0/29"); // .2 to .6: five pods
    let pods: Vec<Netns> = (0..6).map(|_| Netns::new("full-pod")).collect();
    for (i, p) in pods.iter().take(5).enumerate() {
        f.call("ADD", &format!("c{i}"), Some(p), &conf).ok();
    }
    let out = f.call("ADD", "c5", Some(&pods[5]), &conf);
    assert_eq!(out.code(), 11, "{}", out.stdout);
    assert!(
        out.stdout.contains("no free address left in 10.78.0.0/29"),
        "{}",
        out.stdout
    );
    assert_eq!(pods[5].links(), vec!["lo"]);
    assert_eq!(f.records().len(), 5);
    assert_eq!(f.host_veths().len(), 5);
    // Freeing one makes room.
    f.call("DEL", "c2", Some(&pods[2]), &conf).ok();
    let r = f.call("ADD", "c5", Some(&pods[5]), &conf).ok().json();
    assert_eq!(pod_ip(&r), "10.78.0.4");
    assert!(pods[5].ping("10.78.0.1"));
}

#[test]
fn options_hairpin_routes_mtu_bridge_adoption_and_log_file() {
    let f = Fixture::new("opts");
    // A bridge made by someone else is adopted with its MAC.
    f.host.ip(&[
        "link",
        "add",
        "br-weft",
        "address",
        "02:aa:bb:cc:dd:ee",
        "type",
        "bridge",
    ]);
    let log = f.dir.path().join("weft.log");
    let mut conf = f.conf("1.1.0");
    conf["bridge"] = json!("br-weft");
    conf["hairpinMode"] = json!(false);
    conf["isDefaultGateway"] = json!(false);
    conf["mtu"] = json!(1400);
    conf["logFile"] = json!(log);
    let pod = Netns::new("opts-pod");
    let r = f.call("ADD", "ctr", Some(&pod), &conf).ok().json();
    assert_eq!(r["interfaces"][0]["mac"], "02:aa:bb:cc:dd:ee");
    let routes = pod.ip(&["-4", "route", "show"]);
    assert!(routes.contains("10.77.0.0/16 via 10.77.5.1"), "{routes}");
    assert!(!routes.contains("default"), "{routes}");
    assert!(pod.ip(&["link", "show", "eth0"]).contains("mtu 1400"));
    let veth = r["interfaces"][1]["name"].as_str().unwrap();
    let hairpin = |ns: &Netns, veth: &str| {
        ns.exec(
            "cat",
            &[&format!("/sys/class/net/{veth}/brport/hairpin_mode")],
        )
        .1
        .trim()
        .to_string()
    };
    assert_eq!(hairpin(&f.host, veth), "0");
    assert!(f.host.ip(&["link", "show", "br-weft"]).contains("state UP"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("ADD container=ctr ifname=eth0") && text.contains("ok ip=10.77.5."),
        "{text}"
    );

    // Defaults: hairpin on, default route, MTU from subnet.env.
    let pod2 = Netns::new("opts-pod");
    let r2 = f.add("ctr2", &pod2, "1.1.0");
    let veth2 = r2["interfaces"][1]["name"].as_str().unwrap();
    assert_eq!(hairpin(&f.host, veth2), "1");
    assert!(pod2.ip(&["link", "show", "eth0"]).contains("mtu 1450"));
}

/// The addresses `ip -6` shows on `dev` in `ns` ("inet6 <cidr> …" lines), global ones only.
fn global_v6(ns: &Netns, dev: &str) -> String {
    ns.ip(&["-6", "addr", "show", "dev", dev, "scope", "global"])
}

#[test]
fn dual_stack_pods_get_both_families_reach_each_other_and_release_both() {
    let f = Fixture::with_env("dual", DUAL_STACK_ENV);
    let pods = [Netns::new("dual-pod"), Netns::new("dual-pod")];
    let results: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| f.add(&format!("d{i}"), p, "1.1.0"))
        .collect();
    for (r, pod) in results.iter().zip(&pods) {
        let ips = r["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "one address per family: {r}");
        assert_eq!(ips[0]["gateway"], GW4);
        assert!(ips[0]["address"].as_str().unwrap().ends_with("/24"));
        assert_eq!(ips[1]["gateway"], GW6);
        let v6 = ips[1]["address"].as_str().unwrap();
        assert!(v6.starts_with("fd77:0:0:5::") && v6.ends_with("/64"), "{r}");
        assert!(ips.iter().all(|ip| ip["interface"] == 2), "{r}");
        assert_eq!(
            r["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": GW4}, {"dst": "::/0", "gw": GW6}])
        );
        // The kernel agrees: both addresses, the IPv6 one usable at once, both defaults.
        assert!(pod
            .ip(&["-4", "addr", "show", "dev", "eth0"])
            .contains(&format!("inet {}", ips[0]["address"].as_str().unwrap())));
        let shown6 = global_v6(pod, "eth0");
        assert!(shown6.contains(&format!("inet6 {v6}")), "{shown6}");
        assert!(!shown6.contains("tentative"), "{shown6}");
        let default6 = pod.ip(&["-6", "route", "show", "default"]);
        assert!(
            default6.contains(&format!("via {GW6} dev eth0")),
            "{default6}"
        );
        let default4 = pod.ip(&["-4", "route", "show", "default"]);
        assert!(
            default4.contains(&format!("via {GW4} dev eth0")),
            "{default4}"
        );
    }
    let bridge6 = global_v6(&f.host, "cni0");
    assert!(bridge6.contains(&format!("inet6 {GW6}/64")), "{bridge6}");
    assert!(!bridge6.contains("tentative"), "{bridge6}");
    assert!(f
        .host
        .ip(&["-4", "addr", "show", "dev", "cni0"])
        .contains(&format!("inet {GW4}/24")));
    assert_eq!(
        f.host
            .exec("cat", &["/proc/sys/net/ipv6/conf/all/forwarding"])
            .1
            .trim(),
        "1",
        "IPv6 forwarding is on in the host namespace"
    );

    // Pod to pod and pod to gateway, both families.
    let (a6, b6) = (pod_ip6(&results[0]), pod_ip6(&results[1]));
    assert!(ping6(&pods[0], GW6), "pod 0 cannot reach the IPv6 gateway");
    assert!(ping6(&pods[0], &b6), "pod 0 cannot reach pod 1 over IPv6");
    assert!(ping6(&pods[1], &a6), "pod 1 cannot reach pod 0 over IPv6");
    assert!(pods[0].ping(GW4), "pod 0 cannot reach the IPv4 gateway");
    assert!(
        pods[1].ping(&pod_ip(&results[0])),
        "pod 1 cannot reach pod 0 over IPv4"
    );

    // CHECK passes, and sees a family break.
    for (i, (r, pod)) in results.iter().zip(&pods).enumerate() {
        f.call(
            "CHECK",
            &format!("d{i}"),
            Some(pod),
            &f.with_prev("1.1.0", r),
        )
        .ok();
    }
    let breakages: [(&[&str], &str); 2] = [
        (&["-6", "route", "del", "default"], "route ::/0"),
        (
            &["-6", "addr", "del", &format!("{a6}/64"), "dev", "eth0"],
            "address fd77",
        ),
    ];
    for (cmd, needle) in breakages {
        pods[0].ip(cmd);
        let out = f.call(
            "CHECK",
            "d0",
            Some(&pods[0]),
            &f.with_prev("1.1.0", &results[0]),
        );
        assert_eq!(out.code(), 101, "{needle}: {}", out.stdout);
        assert!(out.stdout.contains(needle), "{needle}: {}", out.stdout);
    }
    // A result that leaves out the IPv6 address does not match the allocations.
    let mut v4_only = results[1].clone();
    v4_only["ips"].as_array_mut().unwrap().truncate(1);
    let out = f.call(
        "CHECK",
        "d1",
        Some(&pods[1]),
        &f.with_prev("1.1.0", &v4_only),
    );
    assert_eq!(out.code(), 101, "{}", out.stdout);

    // Four records, two per pod; DEL releases both of a pod, and again is fine.
    let records = f.records();
    assert_eq!(records.len(), 4, "{records:?}");
    for r in &results {
        for ip in pod_ips(r) {
            assert!(records.contains(&format!("ip-{ip}")), "{ip}: {records:?}");
        }
    }
    f.call("DEL", "d0", Some(&pods[0]), &f.conf("1.1.0")).ok();
    f.call("DEL", "d0", Some(&pods[0]), &f.conf("1.1.0")).ok();
    let left = f.records();
    assert_eq!(
        left,
        pod_ips(&results[1])
            .iter()
            .map(|ip| format!("ip-{ip}"))
            .collect::<BTreeSet<_>>()
    );
    assert_eq!(pods[0].links(), vec!["lo"]);
    assert!(ping6(&pods[1], GW6), "the other pod still works");
    // The released pair can be handed out again: a new pod gets addresses and works.
    let again = f.add("d2", &pods[0], "1.1.0");
    assert_eq!(pod_ips(&again).len(), 2);
    assert!(ping6(&pods[0], &b6));
    // GC releases both families of the attachments it is not told to keep.
    let mut gc = f.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "d1", "ifname": "eth0"}]);
    f.call("GC", "", None, &gc).ok();
    assert_eq!(f.records(), left);
    assert_eq!(pods[0].links(), vec!["lo"]);
    f.call("DEL", "d1", Some(&pods[1]), &f.conf("1.1.0")).ok();
    assert!(f.records().is_empty());
    assert!(f.host_veths().is_empty());
}

#[test]
fn ipv6_only_pods_work_without_any_ipv4() {
    let f = Fixture::with_env("v6only", V6_ONLY_ENV);
    let pods = [Netns::new("v6only-pod"), Netns::new("v6only-pod")];
    // The second pod routes only the cluster network, as isDefaultGateway false does for IPv4.
    let mut cluster_only = f.conf("1.0.0");
    cluster_only["isDefaultGateway"] = json!(false);
    let results = [
        f.add("s0", &pods[0], "1.0.0"),
        f.call("ADD", "s1", Some(&pods[1]), &cluster_only)
            .ok()
            .json(),
    ];
    for r in &results {
        let ips = r["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 1, "{r}");
        assert_eq!(ips[0]["gateway"], GW6);
        // The pod MAC comes from the IPv6 address when there is no IPv4 one.
        let mac = r["interfaces"][2]["mac"].as_str().unwrap();
        assert!(mac.starts_with("0a:58:"), "{mac}");
    }
    assert_eq!(results[0]["routes"], json!([{"dst": "::/0", "gw": GW6}]));
    assert_eq!(
        results[1]["routes"],
        json!([{"dst": "fd77::/48", "gw": GW6}])
    );
    let routes1 = pods[1].ip(&["-6", "route", "show"]);
    assert!(
        routes1.contains(&format!("fd77::/48 via {GW6} dev eth0")),
        "{routes1}"
    );
    assert!(!routes1.contains("default"), "{routes1}");
    for pod in &pods {
        assert_eq!(pod.ip(&["-4", "addr", "show", "dev", "eth0"]).trim(), "");
        assert_eq!(pod.ip(&["-4", "route", "show"]).trim(), "");
    }
    assert_eq!(
        f.host.ip(&["-4", "addr", "show", "dev", "cni0"]).trim(),
        "",
        "no IPv4 address on the bridge"
    );
    assert!(global_v6(&f.host, "cni0").contains(&format!("inet6 {GW6}/64")));
    let (a6, b6) = (pod_ip6(&results[0]), pod_ip6(&results[1]));
    assert!(ping6(&pods[0], GW6));
    assert!(ping6(&pods[0], &b6));
    assert!(ping6(&pods[1], &a6));
    f.call(
        "CHECK",
        "s0",
        Some(&pods[0]),
        &f.with_prev("1.0.0", &results[0]),
    )
    .ok();
    let mut prev1 = cluster_only.clone();
    prev1["prevResult"] = results[1].clone();
    f.call("CHECK", "s1", Some(&pods[1]), &prev1).ok();
    f.call("STATUS", "", None, &f.conf("1.1.0")).ok();
    assert_eq!(f.records().len(), 2);
    for (i, pod) in pods.iter().enumerate() {
        f.call("DEL", &format!("s{i}"), Some(pod), &f.conf("1.0.0"))
            .ok();
    }
    assert!(f.records().is_empty());
    assert!(f.host_veths().is_empty());
}

#[test]
fn a_failing_ipv6_step_rolls_back_the_ipv4_side_too() {
    let f = Fixture::with_env("undo6", DUAL_STACK_ENV);
    // 1. The kernel refuses the IPv6 default route (the pod already has one), after the IPv4
    // address, IPv4 route and IPv6 address are in place.
    let pod = Netns::new("undo6-pod");
    pod.ip(&["link", "add", "x0", "type", "veth", "peer", "name", "x1"]);
    pod.ip(&["link", "set", "x0", "up"]);
    pod.ip(&["link", "set", "x1", "up"]);
    pod.ip(&["-6", "addr", "add", "fd99::1/64", "dev", "x0", "nodad"]);
    pod.ip(&["-6", "route", "add", "default", "via", "fd99::fe"]);
    let out = f.call("ADD", "ctr", Some(&pod), &f.conf("1.1.0"));
    assert_eq!(out.code(), 100, "{}", out.stdout);
    assert!(out.stdout.contains("add route ::/0"), "{}", out.stdout);
    assert!(f.records().is_empty(), "both addresses were released");
    assert!(f.host_veths().is_empty(), "the veth was removed");
    assert!(!pod.links().contains(&"eth0".to_string()));

    // 2. The IPv6 range is exhausted after the IPv4 address was allocated: nothing stays.
    f.write_env(&DUAL_STACK_ENV.replace("fd77:0:0:5::1/64", "fd77:0:0:5::1/126"));
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("undo6-full")).collect();
    let r0 = f.add("c0", &pods[0], "1.1.0");
    f.add("c1", &pods[1], "1.1.0");
    let out = f.call("ADD", "c2", Some(&pods[2]), &f.conf("1.1.0"));
    assert_eq!(out.code(), 11, "{}", out.stdout);
    assert!(
        out.stdout
            .contains("no free address left in fd77:0:0:5::/126"),
        "{}",
        out.stdout
    );
    assert_eq!(
        f.records().len(),
        4,
        "only the two pods' records: {:?}",
        f.records()
    );
    assert_eq!(f.host_veths().len(), 2);
    assert_eq!(pods[2].links(), vec!["lo"]);
    // Freeing a pod makes its IPv6 address usable again, at once.
    f.call("DEL", "c0", Some(&pods[0]), &f.conf("1.1.0")).ok();
    let r2 = f.add("c2", &pods[2], "1.1.0");
    assert_eq!(
        pod_ip6(&r2),
        pod_ip6(&r0),
        "the freed IPv6 address is reused"
    );
    assert!(ping6(&pods[2], GW6));
    for (cid, pod) in [("c1", &pods[1]), ("c2", &pods[2])] {
        f.call("DEL", cid, Some(pod), &f.conf("1.1.0")).ok();
    }
    assert!(f.records().is_empty());
}

#[test]
fn a_broken_ipv6_subnet_env_is_a_clear_error_and_changes_nothing() {
    let f = Fixture::new("bad6");
    let pod = Netns::new("bad6-pod");
    let cases: [(String, u64, &str); 4] = [
        (
            DUAL_STACK_ENV.replace("fd77:0:0:5::1/64", "fd77:0:0:5::zz/64"),
            50,
            "FLANNEL_IPV6_SUBNET \"fd77:0:0:5::zz/64\"",
        ),
        (
            DUAL_STACK_ENV.replace("fd77:0:0:5::1/64", "fd78::1/64"),
            50,
            "FLANNEL_IPV6_SUBNET fd78::1/64 is not inside FLANNEL_IPV6_NETWORK fd77::/48",
        ),
        (
            V6_ONLY_ENV.replace("FLANNEL_IPV6_NETWORK=fd77::/48\n", ""),
            50,
            "FLANNEL_IPV6_NETWORK missing",
        ),
        (
            DUAL_STACK_ENV.replace("FLANNEL_MTU=1450", "FLANNEL_MTU=1200"),
            7,
            "below 1280",
        ),
    ];
    for (env, want, needle) in &cases {
        f.write_env(env);
        for command in ["ADD", "STATUS"] {
            let out = f.call(command, "ctr", Some(&pod), &f.conf("1.1.0"));
            assert_eq!(out.code(), *want, "{command} {needle}: {}", out.stdout);
            let details = out.json()["details"].as_str().unwrap().to_string();
            assert!(
                details.contains(needle),
                "{command}: {needle:?} not in {details}"
            );
        }
        assert_eq!(f.host.links(), vec!["lo"], "{needle}: the host was changed");
        assert_eq!(pod.links(), vec!["lo"], "{needle}: the pod was changed");
        assert!(f.records().is_empty(), "{needle}: an address was allocated");
    }
}

#[test]
fn parallel_dual_stack_adds_never_share_an_ipv6_address() {
    const N: usize = 24;
    let f = Fixture::with_env("par6", DUAL_STACK_ENV);
    let pods: Vec<Netns> = (0..N).map(|_| Netns::new("par6-pod")).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let f = &f;
                s.spawn(move || f.add(&format!("p6-{i}"), p, "1.1.0"))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let v6: Vec<String> = results.iter().map(pod_ip6).collect();
    let v4: BTreeSet<String> = results.iter().map(pod_ip).collect();
    assert_eq!(v6.iter().collect::<BTreeSet<_>>().len(), N, "{v6:?}");
    assert_eq!(v4.len(), N);
    assert_eq!(f.records().len(), 2 * N);
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let next = &v6[(i + 1) % N];
            s.spawn(move || {
                assert!(ping6(p, next), "pod {i} cannot reach {next}");
            });
        }
    });
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let f = &f;
            s.spawn(move || {
                f.call("DEL", &format!("p6-{i}"), Some(p), &f.conf("1.1.0"))
                    .ok()
            });
        }
    });
    assert!(f.records().is_empty());
    assert!(f.host_veths().is_empty());
}

/// The workspace version (weft-tests shares it with the plugin).
const WEFT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Run `plugin` directly (no namespace, no CNI_* variables unless given) with `args`, stdin
/// left open: a plugin that waited for a config there would hit the bound and fail the test.
fn run_by_hand(plugin: &PathBuf, env: &[(&str, &str)], args: &[&str]) -> CniOut {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let mut child = Command::new(plugin)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the plugin");
    let stdin = child.stdin.take();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("weft {args:?} did not exit with stdin open: it waits for input");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    CniOut {
        exit: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn run_by_hand_it_answers_version_and_help_and_otherwise_wants_cni_command() {
    let weft = bin("weft");
    let versions = format!("CNI spec versions: {}", VERSIONS.join(", "));
    let out = run_by_hand(&weft, &[], &["--version"]);
    assert_eq!(out.exit, 0, "{out:?}");
    assert_eq!(out.stdout, format!("weft {WEFT_VERSION}\n{versions}\n"));
    assert_eq!(out.stderr, "");
    let out = run_by_hand(&weft, &[], &["--help"]);
    assert_eq!(out.exit, 0, "{out:?}");
    assert!(
        out.stdout
            .starts_with(&format!("weft {WEFT_VERSION}: the weft CNI plugin"))
            && out.stdout.contains(&versions)
            && out.stdout.contains("subnetFile"),
        "{}",
        out.stdout
    );
    // Anything else without CNI_COMMAND is the spec's invalid-environment error, at once.
    for args in [&[][..], &["ADD"][..], &["--verbose"][..]] {
        let out = run_by_hand(&weft, &[], args);
        assert_eq!(out.code(), 4, "{args:?}: {out:?}");
        let j = out.json();
        assert_eq!(j["msg"], "invalid CNI_COMMAND", "{j}");
        assert!(
            j["details"].as_str().is_some_and(
                |d| d.starts_with("CNI_COMMAND is not set") && d.contains("weft --help")
            ),
            "{j}"
        );
        assert!(out.stderr.contains("CNI_COMMAND is not set"), "{out:?}");
    }
    // With CNI_COMMAND set (a runtime), the command line is not read.
    let out = cni_call(
        &weft,
        &Netns::new("byhand"),
        &[("CNI_COMMAND", "VERSION")],
        b"{}",
    );
    let answer = out.ok().json();
    assert_eq!(answer["supportedVersions"], json!(VERSIONS));
}

#[test]
fn config_type_errors_name_the_key_and_unknown_keys_are_warned_on_stderr_and_in_the_log() {
    let f = Fixture::new("keys");
    let pod = Netns::new("keys-pod");
    let pod_path = pod.path().display().to_string();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "ctr-keys"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", pod_path.as_str()),
        ("CNI_PATH", "/usr/lib/cni"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_INFRA_CONTAINER_ID=ctr-keys",
        ),
    ];
    for (key, value, want) in [
        (
            "mtu",
            json!("1400"),
            "mtu must be a whole number between 576 and 65535, not the string \"1400\"; write it without quotes",
        ),
        (
            "hairpinMode",
            json!("yes"),
            "hairpinMode must be true or false, not the string \"yes\"",
        ),
        (
            "subnetFile",
            json!(7),
            "subnetFile must be a path (a string), not the number 7",
        ),
    ] {
        let mut conf = f.conf("1.1.0");
        conf[key] = value;
        let out = cni_call(&f.plugin, &f.host, &env, conf.to_string().as_bytes());
        assert_eq!(out.code(), 7, "{key}: {out:?}");
        assert_eq!(out.json()["details"], want, "{key}");
        assert!(out.stderr.contains(want), "{key}: {}", out.stderr);
        assert_eq!(f.host.links(), vec!["lo"], "{key}: the host was changed");
        assert!(f.records().is_empty(), "{key}: an address was allocated");
    }

    // A misspelled key and a well-known one weft does not implement: the ADD goes on with the
    // defaults, stdout holds only the result, and stderr and the log file say what was ignored.
    let log = f.dir.path().join("weft.log");
    let mut conf = f.conf("1.1.0");
    conf["logFile"] = json!(log);
    conf["hairpinmode"] = json!(false);
    conf["ipam"] = json!({"type": "host-local", "subnet": "10.1.0.0/16"});
    conf["runtimeConfig"] = json!({"portMappings": []});
    conf["capabilities"] = json!({"portMappings": true});
    conf["args"] = json!({"cni": {"labels": []}});
    let out = cni_call(&f.plugin, &f.host, &env, conf.to_string().as_bytes()).ok();
    let result = out.json();
    assert_eq!(result["cniVersion"], "1.1.0", "stdout is the result alone");
    assert!(!out.stdout.contains("warning"), "{}", out.stdout);
    let hairpin = f
        .host
        .exec(
            "cat",
            &[&format!(
                "/sys/class/net/{}/brport/hairpin_mode",
                result["interfaces"][1]["name"].as_str().unwrap()
            )],
        )
        .1;
    assert_eq!(hairpin.trim(), "1", "the misspelled key changed nothing");
    let misspelled = "config key \"hairpinmode\" is not one weft knows and is ignored; did you mean \"hairpinMode\"?";
    let ipam = "config key \"ipam\" has no effect: weft assigns pod addresses itself, from subnet.env or the range key";
    assert_eq!(
        out.stderr,
        format!("weft: warning: {misspelled}\nweft: warning: {ipam}\n"),
        "one line per ignored key, nothing about the protocol's keys"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let context = format!("ADD container=ctr-keys ifname=eth0 netns={pod_path} pod=shop/cart-0");
    assert!(
        lines[0].ends_with(&format!("{context} warning: {misspelled}")),
        "{text}"
    );
    assert!(
        lines[1].ends_with(&format!("{context} warning: {ipam}")),
        "{text}"
    );
    assert!(
        lines[2].contains(&format!("{context} took="))
            && lines[2].contains(&format!(
                " ok ip={}",
                result["ips"][0]["address"].as_str().unwrap()
            )),
        "{text}"
    );

    // A failure names the pod on stderr and in the log too.
    let out = cni_call(&f.plugin, &f.host, &env, conf.to_string().as_bytes());
    assert_eq!(
        out.code(),
        4,
        "a second ADD of the same attachment: {out:?}"
    );
    assert!(
        out.stderr
            .lines()
            .last()
            .is_some_and(|l| l.starts_with(&format!("weft: {context}: "))),
        "{}",
        out.stderr
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().last().is_some_and(
            |l| l.contains(&format!("{context} took=")) && l.contains(" error code=4 ")
        ),
        "{text}"
    );
    let mut del_env = env.to_vec();
    del_env[0] = ("CNI_COMMAND", "DEL");
    cni_call(&f.plugin, &f.host, &del_env, conf.to_string().as_bytes()).ok();
    assert!(f.records().is_empty());
}

#[test]
fn the_shipped_plugin_is_static_runs_with_no_libraries_at_all_and_sets_up_a_pod() {
    use weft_tests::shipped::{linkage, static_plugin, this_machine, Profile};
    let shipped = static_plugin(Profile::Debug);
    let linked = linkage(&shipped).unwrap();
    assert_eq!(linked.machine, this_machine());
    assert!(
        linked.is_static(),
        "{} is dynamically linked: {linked:?}",
        shipped.display()
    );
    // The reader sees the difference: the workspace's own build is dynamic.
    let dynamic = linkage(&bin("weft")).unwrap();
    assert!(
        dynamic.interpreter.is_some() && dynamic.needed.iter().any(|n| n == "libc.so.6"),
        "{dynamic:?}"
    );

    // A root file system holding nothing but the plugin stands for a node whose libc is
    // older than the build machine's (or absent): the static plugin answers there, the
    // dynamic build cannot even start.
    let versions_json = cni_call(
        &bin("weft"),
        &Netns::new("static"),
        &[("CNI_COMMAND", "VERSION")],
        b"{}",
    )
    .ok()
    .json();
    let in_empty_root = |plugin: &PathBuf, env: &[(&str, &str)], args: &[&str]| {
        let root = tempfile::tempdir().unwrap();
        weft_tests::procs::copy_executable(plugin, &root.path().join("weft"));
        let mut cmd = std::process::Command::new("chroot");
        cmd.arg(root.path())
            .arg("/weft")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied());
        weft_tests::procs::run_input(&mut cmd, Some(b"{}"), std::time::Duration::from_secs(20))
    };
    let (code, out, err) = in_empty_root(&shipped, &[], &["--version"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("weft {WEFT_VERSION}\nCNI spec versions: ")),
        "{out}"
    );
    let (code, out, err) = in_empty_root(&shipped, &[("CNI_COMMAND", "VERSION")], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), versions_json);
    let (code, _, err) = in_empty_root(&bin("weft"), &[("CNI_COMMAND", "VERSION")], &[]);
    assert_ne!(code, 0, "the dynamic build ran without its loader: {err}");

    // And it does a plugin's work: a pod gets its address, reaches its gateway, and DEL
    // takes everything away again.
    let mut f = Fixture::new("static");
    f.plugin = shipped;
    let pod = Netns::new("static-pod");
    let r = f.add("ctr-static", &pod, "1.1.0");
    assert!(pod_ip(&r).starts_with("10.77.5."), "{r}");
    assert!(pod.ping(GW4), "the pod cannot reach its gateway");
    f.call("DEL", "ctr-static", Some(&pod), &f.conf("1.1.0"))
        .ok();
    assert!(f.records().is_empty());
    assert!(f.host_veths().is_empty());
}
