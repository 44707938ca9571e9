//! A real container runtime on a weft network: rootful podman (CNI backend, runc) runs two
//! busybox containers from a locally imported image, they reach each other, and removing them
//! frees their addresses.
//!
//! podman's "host" is a test network namespace (`nsenter --net=/run/netns/<ns>`), so the
//! bridge and the veths never touch the machine's root namespace. Everything podman keeps is
//! redirected into a temp dir: storage (`storage.conf`), its tmp dir, locks and events
//! (`containers.conf`), runc's state (`--root`, through a wrapper named in
//! `[engine.runtimes]`), and `/var/lib` — where podman 4.3 has no setting for the image blob
//! cache or libcni's result cache — through a bind mount that exists only in a private mount
//! namespace held by a helper process. The containers' cgroups go under a parent named after
//! the test, removed at the end. Cleanup runs from a Drop guard, also when the test fails.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use serde_json::{json, Value};
use weft_tests::netns::{run, Netns};
use weft_tests::procs::{bin, Proc};

const NETWORK: &str = "weftnet";
const IMAGE: &str = "localhost/weft-busybox:test";
const SUBNET_ENV: &str =
    "FLANNEL_NETWORK=10.79.0.0/16\nFLANNEL_SUBNET=10.79.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
const GATEWAY: &str = "10.79.5.1";
const POD_SUBNET: &str = "10.79.5.0/24";
const BUSYBOX: &str = "/bin/busybox";
const INSTALL_HINT: &str =
    "run `sudo bash tests/install-deps.sh` (it installs podman, runc and busybox-static)";

/// `name` as found on PATH (plus the sbin directories root normally has).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

fn require_program(name: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| panic!("{name} not found: {INSTALL_HINT}"))
}

/// podman with its state in a temp dir, its host side in a test namespace.
struct Podman {
    /// The private mount namespace (`/var/lib` bound to `dir/varlib` in it). Dropped before
    /// `dir` and `host`, so its namespace is gone before they are removed.
    helper: Proc,
    dir: tempfile::TempDir,
    host: Netns,
    /// Absolute cgroup path the containers (and conmon) are placed under.
    cgroup_parent: String,
}

impl Podman {
    fn new(tag: &str) -> Podman {
        weft_tests::netns::require_root();
        for prog in [
            "podman", "conmon", "runc", "nsenter", "unshare", "mount", "tar",
        ] {
            require_program(prog);
        }
        assert!(
            Path::new(BUSYBOX).is_file(),
            "{BUSYBOX} not found: {INSTALL_HINT}"
        );
        let runc = require_program("runc");
        let plugin = bin("weft");
        let host = Netns::new(tag);
        let dir = tempfile::Builder::new()
            .prefix("wt-podman-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for sub in ["cni-bin", "net.d", "runtime", "tmp", "varlib", "rootfs/bin"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(d.join("subnet.env"), SUBNET_ENV).unwrap();
        std::os::unix::fs::symlink(&plugin, d.join("cni-bin/weft")).unwrap();
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [{
                "type": "weft",
                "subnetFile": d.join("subnet.env"),
                "dataDir": d.join("ipam"),
                "bridge": "cni0",
                "logFile": d.join("weft.log"),
            }],
        });
        std::fs::write(
            d.join(format!("net.d/{NETWORK}.conflist")),
            serde_json::to_string_pretty(&conflist).unwrap(),
        )
        .unwrap();
        // runc keeps container state in /run/runc unless told otherwise; a wrapper named in
        // containers.conf reaches every runc call, also those of podman's cleanup process.
        let wrapper = d.join("runtime/runc");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec {} --root {} \"$@\"\n",
                runc.display(),
                d.join("runc-state").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        std::fs::write(
            d.join("containers.conf"),
            format!(
                r#"[containers]
# The defaults raise nofile/nproc above this machine's hard limits, which is refused.
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[network]
network_backend = "cni"
cni_plugin_dirs = [{bin}]
network_config_dir = {net}

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
tmp_dir = {tmp}
image_copy_tmp_dir = {tmp}

[engine.runtimes]
runc = [{wrapper}]
"#,
                bin = q(&d.join("cni-bin")),
                net = q(&d.join("net.d")),
                tmp = q(&d.join("tmp")),
                wrapper = q(&wrapper),
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = {}\nrunroot = {}\n",
                q(&d.join("storage")),
                q(&d.join("runroot"))
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .unwrap();

        let helper = Self::mount_namespace(d);
        let cgroup_parent = format!("/{}", host.name);
        Podman {
            helper,
            dir,
            host,
            cgroup_parent,
        }
    }

    /// A process that sits in a new mount namespace (a slave of the machine's, so nothing
    /// mounted in it propagates out) where `/var/lib` is `dir/varlib`.
    fn mount_namespace(d: &Path) -> Proc {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "slave", "sh", "-c"])
            .arg("mount -n --bind \"$1\" /var/lib && exec sleep 600")
            .arg("sh")
            .arg(d.join("varlib"));
        let mut helper = Proc::spawn("mount-ns", cmd, &d.join("mount-ns.log"));
        let pid = helper.pid().expect("helper pid");
        let own = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            // `sleep` runs only after the bind mount succeeded.
            if ns.is_some_and(|n| n != own) && comm.trim() == "sleep" {
                return helper;
            }
            if let Some(st) = helper.try_exit() {
                panic!(
                    "the mount namespace helper exited ({st}): {}",
                    helper.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the mount namespace helper did not start: {}",
                helper.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `podman <args>` in the private mount namespace with the test namespace as its host:
    /// (exit code, stdout, stderr), bounded to 60 s.
    fn podman(&self, args: &[&str]) -> (i32, String, String) {
        let pid = self.helper.pid().expect("helper pid");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{pid}/ns/mnt"))
            .arg(format!("--net={}", self.host.path().display()))
            .arg("podman")
            .args(args)
            .env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("TMPDIR", self.path("tmp"));
        run(&mut cmd, None)
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
            &self.cgroup_parent,
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
        self.host.veths()
    }

    /// The cgroup directories under `cgroup_parent`, one per mounted hierarchy.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let rel = self.cgroup_parent.trim_start_matches('/');
        let root = Path::new("/sys/fs/cgroup");
        let mut dirs = vec![root.join(rel)];
        if let Ok(rd) = std::fs::read_dir(root) {
            dirs.extend(rd.flatten().map(|e| e.path().join(rel)));
        }
        dirs.into_iter().filter(|d| d.is_dir()).collect()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let (code, _, err) = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        if code != 0 {
            eprintln!("cleanup: podman rm --all failed: {err}");
        }
        // conmon exits after its container, and runs `podman container cleanup` first: give
        // them time. Whatever is still in the test's cgroups after that was started by this
        // test (its containers, their conmon); stop it by pid so the cgroups can go.
        let dirs = self.cgroup_dirs();
        eventually(Duration::from_secs(10), || {
            dirs.iter().all(|d| pids_below(d).is_empty())
        });
        for dir in self.cgroup_dirs() {
            for pid in pids_below(&dir) {
                eprintln!("cleanup: killing leftover pid {pid} in {}", dir.display());
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for dir in self.cgroup_dirs() {
            while let Err(e) = remove_cgroup(&dir) {
                if Instant::now() > deadline {
                    eprintln!("cleanup: cannot remove cgroup {}: {e}", dir.display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Then the helper (its mount namespace), the temp dir, and the host namespace.
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

/// Pids in a cgroup directory and the ones below it.
fn pids_below(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(pids_below(&e.path()));
            }
        }
    }
    pids
}

/// rmdir a cgroup and its children, deepest first (their control files go with them).
fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup(&e.path())?;
        }
    }
    std::fs::remove_dir(dir)
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

/// Poll `f` until it holds, for at most `timeout`.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn podman_containers_on_a_weft_network_reach_each_other_and_free_their_addresses() {
    let started = Instant::now();
    let root_had_cni0 = root_links().contains("cni0");
    let p = Podman::new("podman");
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
            log.contains(&format!("Add container={id} ifname=eth0"))
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
    assert_eq!(veths.len(), 2, "{:?}", p.host.links());
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
            log.contains(&format!("Del container={id} ifname=eth0")),
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
