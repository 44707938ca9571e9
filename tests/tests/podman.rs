//! A real container runtime on a weft network: rootful podman (CNI backend, runc) runs two
//! busybox containers from a locally imported image, they reach each other, and removing them
//! frees their addresses.
//!
//! podman runs in the environment of `weft_tests::podman`: its "host" is a test network
//! namespace (`nsenter --net=/run/netns/<ns>`), so the bridge and the veths never touch the
//! machine's root namespace, and everything it keeps (storage, runc state, locks, events,
//! `/var/lib` and `/var/tmp` through a private mount namespace) is in a temp dir. The
//! containers' cgroups go under a parent named after the test, removed at the end. Cleanup
//! runs from a Drop guard, also when the test fails.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use serde_json::{json, Value};
use weft_tests::netns::run;
use weft_tests::podman::{eventually, require_program, Podman, INSTALL_HINT};
use weft_tests::procs::bin;

const NETWORK: &str = "weftnet";
const IMAGE: &str = "localhost/weft-busybox:test";
const SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.79.0.0/16\nFLANNEL_SUBNET=10.79.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
const GATEWAY: &str = "10.79.5.1";
const POD_SUBNET: &str = "10.79.5.0/24";
const BUSYBOX: &str = "/bin/busybox";

/// The podman environment of `weft_tests::podman` with a weft network in it.
struct WeftNet {
    p: Podman,
}

impl WeftNet {
    fn new(tag: &str) -> WeftNet {
        require_program("tar");
        assert!(
            Path::new(BUSYBOX).is_file(),
            "{BUSYBOX} not found: {INSTALL_HINT}"
        );
        let plugin = bin("weft");
        let p = Podman::new(tag);
        std::fs::create_dir_all(p.path("rootfs/bin")).unwrap();
        std::fs::write(p.path("subnet.env"), SUBNET_ENV).unwrap();
        std::os::unix::fs::symlink(&plugin, p.path("cni-bin/weft")).unwrap();
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [{
                "type": "weft",
                "subnetFile": p.path("subnet.env"),
                "dataDir": p.path("ipam"),
                "bridge": "cni0",
                "logFile": p.path("weft.log"),
            }],
        });
        std::fs::write(
            p.path(&format!("net.d/{NETWORK}.conflist")),
            serde_json::to_string_pretty(&conflist).unwrap(),
        )
        .unwrap();
        WeftNet { p }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.p.path(rel)
    }

    /// `podman <args>`: (exit code, stdout, stderr), bounded to 60 s.
    fn podman(&self, args: &[&str]) -> (i32, String, String) {
        self.p.podman(args)
    }

    /// `podman <args>`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.podman(args);
        assert_eq!(
            code,
            0,
            "podman {} failed ({code}): {err}\n{out}\nweft log:\n{}",
            args.join(" "),
            self.weft_log()
        );
        out
    }

    fn weft_log(&self) -> String {
        std::fs::read_to_string(self.path("weft.log")).unwrap_or_default()
    }

    /// A tar of a busybox-static rootfs (`/bin/busybox` and a relative symlink per applet),
    /// imported as IMAGE. Nothing is pulled.
    fn import_busybox(&self) {
        let bin_dir = self.path("rootfs/bin");
        std::fs::copy(BUSYBOX, bin_dir.join("busybox")).unwrap();
        let (code, list, err) = run(Command::new(BUSYBOX).arg("--list"), None);
        assert_eq!(code, 0, "busybox --list: {err}");
        let applets: Vec<&str> = list
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && *a != "busybox")
            .collect();
        for needed in ["sh", "sleep", "ip", "ping"] {
            assert!(applets.contains(&needed), "busybox has no {needed} applet");
        }
        for applet in applets {
            std::os::unix::fs::symlink("busybox", bin_dir.join(applet)).unwrap();
        }
        let tar = self.path("rootfs.tar");
        let (code, _, err) = run(
            Command::new("tar")
                .arg("-C")
                .arg(self.path("rootfs"))
                .arg("-cf")
                .arg(&tar)
                .arg("."),
            None,
        );
        assert_eq!(code, 0, "tar: {err}");
        self.ok(&["import", &tar.display().to_string(), IMAGE]);
        let images = self.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        assert!(
            images.lines().any(|l| l.trim() == IMAGE),
            "imported image missing: {images}"
        );
    }

    /// Start a container on the weft network running `sleep`; its full id.
    fn start(&self, name: &str) -> String {
        let id = self.ok(&[
            "run",
            "-d",
            "--pull=never",
            "--name",
            name,
            "--network",
            NETWORK,
            "--cgroup-parent",
            &self.p.cgroup_parent,
            IMAGE,
            "sleep",
            "600",
        ]);
        id.trim().to_string()
    }

    fn inspect(&self, name: &str) -> Value {
        let out = self.ok(&["inspect", name]);
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("podman inspect {name} is not JSON ({e}): {out}"));
        v[0].clone()
    }

    /// `<program> <args>` inside a running container: (exit code, stdout, stderr).
    fn exec(&self, name: &str, cmd: &[&str]) -> (i32, String, String) {
        let mut args = vec!["exec", name];
        args.extend_from_slice(cmd);
        self.podman(&args)
    }

    /// weft's IPAM records for the network: "ip-<address>" names.
    fn records(&self) -> BTreeSet<String> {
        names_in(&self.path(&format!("ipam/{NETWORK}")), "ip-")
    }

    /// libcni's cached results (podman hands them to DEL as prevResult).
    fn cached_results(&self) -> BTreeSet<String> {
        names_in(&self.path("varlib/cni/results"), NETWORK)
    }

    fn host_veths(&self) -> Vec<String> {
        self.p.host.veths()
    }
}

fn names_in(dir: &Path, prefix: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Names of the links in the machine's own network namespace (read only).
fn root_links() -> BTreeSet<String> {
    let (code, out, err) = run(Command::new("ip").args(["-j", "link", "show"]), None);
    assert_eq!(code, 0, "ip link show: {err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn podman_containers_on_a_weft_network_reach_each_other_and_free_their_addresses() {
    let started = Instant::now();
    let root_had_cni0 = root_links().contains("cni0");
    let p = WeftNet::new("podman");
    p.import_busybox();
    let networks = p.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(
        networks.lines().any(|l| l.trim() == NETWORK),
        "podman does not list {NETWORK}: {networks}"
    );

    let ids = [p.start("a"), p.start("b")];
    let subnet: Ipv4Network = POD_SUBNET.parse().unwrap();
    let mut ips = Vec::new();
    for (name, id) in ["a", "b"].iter().zip(&ids) {
        let info = p.inspect(name);
        assert_eq!(info["Id"], id.as_str());
        assert_eq!(info["State"]["Running"], true, "{name}: {}", info["State"]);
        let net = &info["NetworkSettings"]["Networks"][NETWORK];
        let ip: Ipv4Addr = net["IPAddress"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name} has no {NETWORK} address: {net}"));
        assert!(subnet.contains(ip), "{name}: {ip} is not in {subnet}");
        assert_ne!(ip.to_string(), GATEWAY, "{name} got the gateway address");
        assert_eq!(net["IPPrefixLen"], 24, "{name}: {net}");
        assert_eq!(net["Gateway"], GATEWAY, "{name}: {net}");
        // podman's attachment went through weft: its log names the container and address.
        let log = p.weft_log();
        assert!(
            log.contains(&format!("ADD container={id} ifname=eth0"))
                && log.contains(&format!("ok ip={ip}/24")),
            "weft log lacks the ADD of {name} ({id}, {ip}):\n{log}"
        );
        ips.push(ip.to_string());
    }
    assert_ne!(ips[0], ips[1], "both containers got {}", ips[0]);
    assert_eq!(
        p.records(),
        ips.iter()
            .map(|ip| format!("ip-{ip}"))
            .collect::<BTreeSet<_>>(),
        "one IPAM record per container"
    );
    assert_eq!(
        p.cached_results(),
        ids.iter()
            .map(|id| format!("{NETWORK}-{id}-eth0"))
            .collect::<BTreeSet<_>>(),
        "podman cached each ADD result"
    );
    let veths = p.host_veths();
    assert_eq!(veths.len(), 2, "{:?}", p.p.host.links());
    // The bridge and the veths are in the test namespace, not the machine's.
    let root = root_links();
    assert!(
        veths.iter().all(|v| !root.contains(v)),
        "veths {veths:?} in the root namespace"
    );
    assert_eq!(
        root.contains("cni0"),
        root_had_cni0,
        "cni0 in the root namespace"
    );

    // Inside each container: eth0 has the address, weft's MTU and default route.
    for (name, ip) in ["a", "b"].iter().zip(&ips) {
        let (code, addr, err) = p.exec(name, &["ip", "-4", "addr", "show", "dev", "eth0"]);
        assert_eq!(code, 0, "{name}: ip addr: {err}");
        assert!(addr.contains(&format!("inet {ip}/24")), "{name}: {addr}");
        assert!(addr.contains("mtu 1450"), "{name}: {addr}");
        let (code, routes, err) = p.exec(name, &["ip", "-4", "route", "show"]);
        assert_eq!(code, 0, "{name}: ip route: {err}");
        assert!(
            routes.contains(&format!("default via {GATEWAY} dev eth0")),
            "{name}: {routes}"
        );
    }
    // Container to container, both ways, by address.
    for (from, to) in [("a", &ips[1]), ("b", &ips[0])] {
        let (code, out, err) = p.exec(from, &["ping", "-c", "1", "-W", "2", to]);
        assert_eq!(code, 0, "{from} cannot ping {to}: {out} {err}");
        assert!(out.contains("1 packets received"), "{from} -> {to}: {out}");
    }

    // Removing the containers releases their addresses and veths (DEL ran for each).
    p.ok(&["rm", "--force", "--time", "0", "a", "b"]);
    assert!(
        eventually(Duration::from_secs(10), || p.records().is_empty()),
        "IPAM records left after podman rm: {:?}\nweft log:\n{}",
        p.records(),
        p.weft_log()
    );
    assert!(
        eventually(Duration::from_secs(10), || p.host_veths().is_empty()),
        "veths left in the host namespace: {:?}",
        p.host_veths()
    );
    let log = p.weft_log();
    for id in &ids {
        assert!(
            log.contains(&format!("DEL container={id} ifname=eth0")),
            "no DEL for {id}:\n{log}"
        );
    }
    assert!(
        p.cached_results().is_empty(),
        "podman's cached results remain: {:?}",
        p.cached_results()
    );
    let left = p.ok(&["ps", "--all", "--quiet"]);
    assert!(left.trim().is_empty(), "containers remain: {left}");
    eprintln!("podman end-to-end took {:?}", started.elapsed());
}
