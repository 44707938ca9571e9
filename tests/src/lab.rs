//! The multi-host lab: hosts as network namespaces on one switch, a real etcd, the real
//! `weftd` on every host, and pods added through the real `weft` CNI plugin. Used by the
//! multi-host tests and by the `weft-lab` command (README command 1).
//!
//! ```text
//!  <lab>-sw     bridge br0 10.99.0.1/24; etcd on http://10.99.0.1:2379
//!   ├─ port h1 ─── eth0 of <lab>-h1    10.99.0.11/24, default via .254, weftd, cni0, pods
//!   ├─ port h2 ─── eth0 of <lab>-h2    10.99.0.12/24, …
//!   └─ port inet ─ eth0 of <lab>-inet  10.99.0.254/24, lo 198.51.100.1/32, no pod routes
//!  pods: <lab>-h1p1, <lab>-h1p2, … (eth0 made by the plugin, behind the host's cni0)
//! ```
//!
//! `<lab>` is the lab's name ([`LabOptions::name`]); without one it is `wl<pid>x<n>`, unique
//! per lab, so labs in parallel tests never meet. Nothing here touches the root namespace:
//! links are made with `ip -n <ns>`, sysctls, processes and probes run under
//! `ip netns exec <ns>`, and all traffic stays between the lab's namespaces.
//!
//! While a lab exists its state ([`LabState`]: namespaces, pids, hosts, pods, files) is in
//! `/run/weft-lab/<lab>/state.json`. Dropping the [`Lab`] stops its processes, deletes its
//! pods (CNI DEL) and namespaces and removes its files and the state ([`Lab::keep_logs`]
//! keeps its directory). With [`LabOptions::keep`] everything stays up; [`labs`] finds it
//! again by name, [`LabState::connectivity`] probes it and [`teardown_from_state`] ends it,
//! also after a run that was interrupted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipnetwork::{Ipv4Network, Ipv6Network};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tempfile::TempDir;
use weft_backends::subnet_env::SubnetEnv;

use crate::etcd::NetnsEtcd;
use crate::netns::{cni_call, Netns};
use crate::procs::{bin, run_bounded, Proc};

pub mod report;

pub use weft_lab_cli::{
    LabBackend, LabName, LabOptions, LabWireguardMode, OptionsError, DEFAULT_NAME, MAX_HOSTS,
};

/// etcd prefix of the lab's network config and leases (weft's default).
pub const ETCD_PREFIX: &str = "/coreos.com/network";
/// The switch's own address, where etcd listens.
pub const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// The "internet" namespace's address on the underlay: every host's default gateway.
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 254);
/// An address outside the cluster (on the internet namespace's lo).
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The switch's IPv6 address on the underlay (labs with IPv6).
pub const SWITCH_IP6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 1);
/// The internet namespace's IPv6 address on the underlay: every host's IPv6 gateway.
pub const ROUTER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 0xfe);
/// An IPv6 address outside the cluster (on the internet namespace's lo).
pub const OUTSIDE_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
/// weftd's health port on every host.
pub const HEALTHZ_PORT: u16 = 8471;
/// Where each lab keeps its state file while it exists.
pub const STATE_ROOT: &str = "/run/weft-lab";

const CNI_NETWORK: &str = "weft";
const CNI_VERSION: &str = "1.1.0";
const WEFTD_STOP_GRACE: Duration = Duration::from_secs(5);
/// The lab's directory is `<tmp>/<lab>-` and this many random letters and digits.
const DIR_SUFFIX_LEN: usize = 6;
/// What [`Lab::keep_logs`] removes from the kept directory: etcd's data (not a log, and the
/// largest part: etcd preallocates its write-ahead log).
const ETCD_DATA: &str = "etcd-data";
/// etcd's log in the lab's directory (where [`NetnsEtcd`] writes it).
const ETCD_LOG: &str = "etcd.log";

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Failures a caller may want to report rather than panic on.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("weftd on {host} not ready after {waited:.1?}: {why}\n--- weftd log, last lines ---\n{log_tail}")]
    NotReady {
        host: String,
        waited: Duration,
        why: String,
        log_tail: String,
    },
    #[error("CNI {verb} of pod {pod} on {host} failed (exit {exit}): {output}")]
    Cni {
        verb: &'static str,
        pod: String,
        host: String,
        exit: i32,
        output: String,
    },
    #[error("no pod named {0} in this lab")]
    NoSuchPod(String),
    #[error("lab state {path}: {msg}")]
    State { path: PathBuf, msg: String },
    #[error("teardown of lab {lab} left problems: {}", .problems.join("; "))]
    Teardown { lab: String, problems: Vec<String> },
    #[error("a lab named {name} is up already (its state is {})", .state.display())]
    NameTaken { name: LabName, state: PathBuf },
    #[error("namespaces of a lab named {name} are left over without a state file: {}", .namespaces.join(", "))]
    LeftoverNamespaces {
        name: LabName,
        namespaces: Vec<String>,
    },
    #[error("no lab named {name} is up{}", others_of(.others))]
    NoSuchLab { name: LabName, others: Vec<String> },
    #[error("no lab is up (nothing under {STATE_ROOT})")]
    NoLab,
    #[error("{} labs are up ({}): name one", .names.len(), .names.join(", "))]
    SeveralLabs { names: Vec<String> },
    #[error("lab {name} belongs to a run that is still going (pid {pid}): end that run, Ctrl-C on it tears its lab down")]
    InUse { name: String, pid: u32 },
}

fn others_of(others: &[String]) -> String {
    if others.is_empty() {
        String::new()
    } else {
        format!(" (labs that are: {})", others.join(", "))
    }
}

/// A pod: a namespace with `eth0` set up by the CNI plugin on its host.
#[derive(Debug)]
pub struct Pod {
    /// `h<host>p<n>`.
    pub name: String,
    /// Host number (1-based, as in `h1`).
    pub host: usize,
    /// The pod's IPv4 address; unspecified (0.0.0.0) in an IPv6-only lab.
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address, in a lab with IPv6.
    pub ip6: Option<Ipv6Addr>,
    pub container_id: String,
    pub netns: Netns,
    /// The plugin's ADD result.
    pub result: Value,
}

/// What a probe went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProbeKind {
    /// A pod on the same host.
    SameHost,
    /// A pod on another host.
    CrossHost,
    /// Another host's underlay address.
    OtherHost,
    /// [`OUTSIDE_IP`], outside the cluster (answers only masqueraded traffic).
    Outside,
}

/// One ping from a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Pod name.
    pub from: String,
    /// Pod name, host name (`h2`) or `outside`.
    pub to: String,
    pub dst: IpAddr,
    pub kind: ProbeKind,
    pub ok: bool,
}

#[derive(Debug)]
struct Host {
    /// `h<i>`.
    name: String,
    ip: Ipv4Addr,
    netns: Netns,
    /// `<lab dir>/h<i>`: subnet.env, weftd logs, CNI data and log.
    dir: PathBuf,
    weftd: Option<Proc>,
    /// weftd starts so far (one log file per start).
    starts: usize,
    /// Pods added so far (for names).
    pods_added: usize,
}

impl Host {
    fn subnet_file(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }

    /// The host's CNI config directory: the conflist its pods are added with, so that
    /// `netctl check --cni-conf-dir` judges the config this host's runtime would use.
    fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }
}

#[derive(Debug)]
struct Binaries {
    weftd: PathBuf,
    netctl: PathBuf,
    plugin: PathBuf,
}

/// A running lab. See the module docs for the layout; hosts are numbered from 1 (`h1`).
#[derive(Debug)]
pub struct Lab {
    name: LabName,
    opts: LabOptions,
    bins: Binaries,
    dir_path: PathBuf,
    dir: Option<TempDir>,
    state_dir: PathBuf,
    switch: Option<Netns>,
    internet: Option<Netns>,
    etcd: Option<NetnsEtcd>,
    hosts: Vec<Host>,
    pods: Vec<Pod>,
    /// Teardown leaves the directory (the logs) in place: [`Lab::keep_logs`].
    keep_logs: bool,
}

impl Lab {
    /// Build the underlay, start etcd in the switch, store the network config and start
    /// weftd on every host (without waiting for readiness). Panics if the options are
    /// invalid, a lab of the same name is up, or the machine refuses a step; whatever was
    /// built is removed again.
    pub fn start(opts: LabOptions) -> Lab {
        if let Err(e) = opts.validate() {
            panic!("invalid lab options: {e}");
        }
        crate::netns::require_root();
        let name = opts.name.clone().unwrap_or_else(|| {
            let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
            format!("wl{}x{n}", std::process::id())
                .parse()
                .expect("a generated lab name is valid")
        });
        let bins = Binaries {
            weftd: bin("weftd"),
            netctl: bin("netctl"),
            plugin: bin("weft"),
        };
        // The state directory is made first and must be new: it is what says a name is taken.
        let state_dir = Path::new(STATE_ROOT).join(name.as_str());
        std::fs::create_dir_all(STATE_ROOT)
            .and_then(|_| std::fs::create_dir(&state_dir))
            .unwrap_or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => panic!(
                    "{}",
                    LabError::NameTaken {
                        state: state_dir.join("state.json"),
                        name: name.clone(),
                    }
                ),
                _ => panic!("create {}: {e}", state_dir.display()),
            });
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .rand_bytes(DIR_SUFFIX_LEN)
            .tempdir()
            .expect("lab temp dir");
        let mut lab = Lab {
            dir_path: dir.path().to_path_buf(),
            dir: Some(dir),
            name,
            opts,
            bins,
            state_dir,
            switch: None,
            internet: None,
            etcd: None,
            hosts: Vec::new(),
            pods: Vec::new(),
            keep_logs: false,
        };
        lab.save_state();
        let started = Instant::now();
        lab.build_switch();
        lab.build_internet();
        lab.start_etcd();
        for i in 1..=lab.opts.hosts {
            lab.build_host(i);
        }
        tracing::info!(
            lab = %lab.name,
            "underlay up: {} hosts, switch, internet, etcd at {} ({:.1?})",
            lab.opts.hosts,
            lab.etcd_endpoint(),
            started.elapsed()
        );
        for i in 1..=lab.opts.hosts {
            lab.start_weftd(i);
        }
        lab
    }

    /// [`Lab::start`], wait until every weftd is ready (all within `ready_timeout`), and
    /// add `pods_per_host` pods to every host.
    pub fn up(opts: LabOptions, ready_timeout: Duration) -> Result<Lab, LabError> {
        let mut lab = Lab::start(opts);
        lab.wait_all_ready(ready_timeout)?;
        lab.add_pods()?;
        Ok(lab)
    }

    /// The lab's name (the options' or `wl<pid>x<n>`), the prefix of all its namespaces.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    pub fn options(&self) -> &LabOptions {
        &self.opts
    }

    /// The lab's working directory (etcd data, per-host subnet.env, logs, CNI state).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// The state file (`/run/weft-lab/<lab>/state.json`).
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    pub fn etcd_endpoint(&self) -> String {
        format!("http://{SWITCH_IP}:2379")
    }

    /// Number of hosts.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// `h<i>`.
    pub fn host_name(&self, i: usize) -> &str {
        &self.host(i).name
    }

    /// Host `i`'s namespace name.
    pub fn host_ns(&self, i: usize) -> &str {
        &self.host(i).netns.name
    }

    /// Host `i`'s IPv6 underlay address (fd99::(10+i)), in a lab with IPv6.
    pub fn host_ip6(&self, i: usize) -> Ipv6Addr {
        host_ip6(i)
    }

    /// Host `i`'s underlay address (10.99.0.(10+i)).
    pub fn host_ip(&self, i: usize) -> Ipv4Addr {
        self.host(i).ip
    }

    pub fn switch_ns(&self) -> &str {
        &self.switch().name
    }

    pub fn internet_ns(&self) -> &str {
        &self
            .internet
            .as_ref()
            .expect("the internet namespace exists")
            .name
    }

    pub fn subnet_file(&self, i: usize) -> PathBuf {
        self.host(i).subnet_file()
    }

    /// Host `i`'s subnet as written in its subnet.env: the gateway address with the subnet's
    /// prefix (`10.244.7.1/24`; `.network()` is the subnet, `.ip()` the bridge gateway).
    /// `None` until weftd wrote the file.
    pub fn subnet(&self, i: usize) -> Option<Ipv4Network> {
        let text = std::fs::read_to_string(self.subnet_file(i)).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Host `i`'s IPv6 subnet as written in its subnet.env (gateway form, `fc00:0:0:7::1/64`).
    pub fn subnet6(&self, i: usize) -> Option<Ipv6Network> {
        let text = std::fs::read_to_string(self.subnet_file(i)).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Every namespace of the lab, in teardown order (pods, hosts, internet, switch).
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.pods.iter().map(|p| p.netns.name.clone()).collect();
        v.extend(self.hosts.iter().map(|h| h.netns.name.clone()));
        v.extend(self.internet.iter().map(|n| n.name.clone()));
        v.extend(self.switch.iter().map(|n| n.name.clone()));
        v
    }

    /// Pids of the lab's running processes (weftd per host, then etcd).
    pub fn pids(&self) -> Vec<u32> {
        self.processes().into_iter().map(|(_, pid)| pid).collect()
    }

    fn processes(&self) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = self
            .hosts
            .iter()
            .filter_map(|h| {
                let pid = h.weftd.as_ref()?.pid()?;
                Some((format!("weftd-{}", h.name), pid))
            })
            .collect();
        if let Some(pid) = self.etcd.as_ref().and_then(NetnsEtcd::pid) {
            v.push(("etcd".into(), pid));
        }
        v
    }

    // --- building -------------------------------------------------------------------

    fn switch(&self) -> &Netns {
        self.switch.as_ref().expect("the switch namespace exists")
    }

    fn host(&self, i: usize) -> &Host {
        assert!(
            (1..=self.hosts.len()).contains(&i),
            "no host {i} in lab {} (hosts are 1..={})",
            self.name,
            self.hosts.len()
        );
        &self.hosts[i - 1]
    }

    fn host_mut(&mut self, i: usize) -> &mut Host {
        self.host(i);
        &mut self.hosts[i - 1]
    }

    fn build_switch(&mut self) {
        self.switch = Some(Netns::named(&format!("{}-sw", self.name)));
        self.save_state();
        let sw = self.switch();
        sw.ip(&["link", "set", "lo", "up"]);
        sw.ip(&["link", "add", "br0", "type", "bridge"]);
        sw.ip(&["addr", "add", &format!("{SWITCH_IP}/24"), "dev", "br0"]);
        if self.opts.ipv6() {
            sw.ip(&[
                "addr",
                "add",
                &format!("{SWITCH_IP6}/64"),
                "dev",
                "br0",
                "nodad",
            ]);
        }
        sw.ip(&["link", "set", "br0", "up"]);
    }

    /// A veth from the switch (`port`, enslaved to br0) to `ns` (`eth0` with `addr`/24, and
    /// `addr6`/64 in a lab with IPv6).
    fn attach(&self, ns: &Netns, port: &str, addr: Ipv4Addr, addr6: Ipv6Addr) {
        let sw = self.switch();
        sw.ip(&[
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        sw.ip(&["link", "set", port, "master", "br0", "up"]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        if self.opts.ipv6() {
            ns.ip(&[
                "addr",
                "add",
                &format!("{addr6}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
        }
        ns.ip(&["link", "set", "eth0", "up"]);
    }

    fn build_internet(&mut self) {
        self.internet = Some(Netns::named(&format!("{}-inet", self.name)));
        self.save_state();
        let inet = self.internet.as_ref().expect("just made");
        self.attach(inet, "inet", ROUTER_IP, ROUTER_IP6);
        inet.ip(&["addr", "add", &format!("{OUTSIDE_IP}/32"), "dev", "lo"]);
        if self.opts.ipv6() {
            inet.ip(&[
                "addr",
                "add",
                &format!("{OUTSIDE_IP6}/128"),
                "dev",
                "lo",
                "nodad",
            ]);
        }
    }

    fn start_etcd(&mut self) {
        self.start_etcd_again();
        let key = format!("{ETCD_PREFIX}/config");
        let config = self.opts.net_config();
        let (code, _, err) = self.etcdctl(&["put", &key, &config]);
        assert_eq!(code, 0, "etcdctl put {key}: {err}");
    }

    fn build_host(&mut self, i: usize) {
        let name = format!("h{i}");
        let netns = Netns::named(&format!("{}-{name}", self.name));
        let dir = self.dir_path.join(&name);
        std::fs::create_dir_all(&dir).expect("host dir");
        self.hosts.push(Host {
            ip: Ipv4Addr::new(10, 99, 0, 10 + i as u8),
            name: name.clone(),
            netns,
            dir,
            weftd: None,
            starts: 0,
            pods_added: 0,
        });
        self.write_conflist(i);
        self.save_state();
        let h = self.host(i);
        self.attach(&h.netns, &name, h.ip, host_ip6(i));
        h.netns
            .ip(&["route", "add", "default", "via", &ROUTER_IP.to_string()]);
        let (code, _, err) = h
            .netns
            .exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]);
        assert_eq!(code, 0, "sysctl ip_forward in {}: {err}", h.netns.name);
        if self.opts.ipv6() {
            h.netns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &ROUTER_IP6.to_string(),
            ]);
            let (code, _, err) = h
                .netns
                .exec("sysctl", &["-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
            assert_eq!(code, 0, "sysctl IPv6 forwarding in {}: {err}", h.netns.name);
        }
    }

    // --- weftd ----------------------------------------------------------------------

    /// Start weftd on host `i` (panics if it is already running there).
    pub fn start_weftd(&mut self, i: usize) {
        let endpoint = self.etcd_endpoint();
        let weftd = self.bins.weftd.clone();
        let (ip_masq, keep) = (self.opts.ip_masq, self.opts.keep);
        let probe_interval = self.opts.health_probe_interval.clone();
        let wireguard = self.opts.backend == LabBackend::Wireguard;
        let h = self.host_mut(i);
        if let Some(p) = &mut h.weftd {
            assert!(
                p.try_exit().is_some(),
                "weftd on {} is already running",
                h.name
            );
        }
        h.starts += 1;
        let mut cmd = host_command(&h.netns.name, &h.dir, wireguard, &weftd);
        cmd.args(["--node-name", &h.name, "--iface", "eth0"])
            .args(["--etcd-endpoints", &endpoint])
            .arg("--subnet-file")
            .arg(h.subnet_file())
            .args(["--healthz-port", &HEALTHZ_PORT.to_string()]);
        if ip_masq {
            cmd.arg("--ip-masq");
        }
        if let Some(interval) = &probe_interval {
            cmd.args(["--health-probe-interval", interval]);
        }
        if wireguard {
            cmd.arg("--wireguard-userspace")
                .arg(wireguard_go())
                .arg("--wireguard-key-file")
                .arg(h.dir.join("wireguard.key"));
        }
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("WEFT_LOG", "info")
            .env("RUST_BACKTRACE", "1");
        let log = h.dir.join(format!("weftd.{}.log", h.starts));
        let label = format!("weftd-{}", h.name);
        let proc = if keep {
            Proc::spawn_detached(&label, cmd, &log)
        } else {
            Proc::spawn(&label, cmd, &log)
        };
        tracing::info!(host = %h.name, pid = proc.pid(), "weftd started");
        h.weftd = Some(proc);
        self.save_state();
    }

    /// Stop weftd on host `i` (SIGTERM, SIGKILL after 5 s). Returns its exit status, `None`
    /// if it was not running.
    pub fn stop_weftd(&mut self, i: usize) -> Option<ExitStatus> {
        let st = self.host_mut(i).weftd.take()?.stop(WEFTD_STOP_GRACE);
        self.save_state();
        st
    }

    /// Kill weftd on host `i` at once (SIGKILL), as a crash would.
    pub fn kill_weftd(&mut self, i: usize) {
        if let Some(mut p) = self.host_mut(i).weftd.take() {
            p.kill_hard();
        }
        self.save_state();
    }

    /// Host `i`'s `/metrics` body (fetched inside its namespace; empty if unreachable).
    pub fn metrics(&self, i: usize) -> String {
        let (_, body, _) = self.exec_in(
            self.host_name(i),
            "curl",
            &["-s", "--max-time", "5", "http://127.0.0.1:8471/metrics"],
        );
        body
    }

    /// Host `i`'s weftd's view of its peers (`GET /health/peers`); None while it does not
    /// answer one (not started, or the probes not running yet).
    pub fn health_report(&self, i: usize) -> Option<weft_agent::mesh::report::HealthReport> {
        let (code, body, _) = self.exec_in(
            self.host_name(i),
            "curl",
            &[
                "-sf",
                "--max-time",
                "5",
                "http://127.0.0.1:8471/health/peers",
            ],
        );
        if code != 0 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// Stop the lab's etcd (SIGTERM by pid); its data stays for [`Lab::start_etcd_again`].
    pub fn stop_etcd(&mut self) {
        if let Some(e) = self.etcd.as_mut() {
            e.stop();
        }
        self.save_state();
    }

    /// Start the lab's etcd (again, on the same data directory); waits until it answers.
    pub fn start_etcd_again(&mut self) {
        let etcd = NetnsEtcd::start(
            &self.switch().name,
            SWITCH_IP,
            &self.dir_path,
            self.opts.keep,
        );
        self.etcd = Some(etcd);
        self.save_state();
    }

    /// Stop weftd on host `i` and start it again (same flags, subnet file and directory).
    pub fn restart(&mut self, i: usize) {
        self.stop_weftd(i);
        self.start_weftd(i);
    }

    /// weftd's pid on host `i`, if started.
    pub fn weftd_pid(&self, i: usize) -> Option<u32> {
        self.host(i).weftd.as_ref().and_then(Proc::pid)
    }

    /// Everything weftd on host `i` logged, over all its starts.
    pub fn weftd_log(&self, i: usize) -> String {
        let h = self.host(i);
        let mut text = String::new();
        for n in 1..=h.starts {
            if h.starts > 1 {
                text.push_str(&format!("--- weftd start {n} ---\n"));
            }
            let log = h.dir.join(format!("weftd.{n}.log"));
            text.push_str(&std::fs::read_to_string(log).unwrap_or_default());
        }
        text
    }

    /// `GET /readyz` of weftd on host `i` (curl inside the host): (status, body), `None`
    /// when nothing answers.
    pub fn readyz(&self, i: usize) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{HEALTHZ_PORT}/readyz");
        let (code, out, _) = self.exec_in(
            self.host_name(i),
            "curl",
            &["-s", "--max-time", "2", "-w", "\n%{http_code}", &url],
        );
        if code != 0 {
            return None;
        }
        let (body, status) = out.rsplit_once('\n')?;
        Some((status.trim().parse().ok()?, body.trim().to_string()))
    }

    /// Wait until host `i` is ready: its subnet.env exists and `/readyz` answers 200.
    /// Returns how long it took.
    pub fn wait_ready(&mut self, i: usize, timeout: Duration) -> Result<Duration, LabError> {
        let start = Instant::now();
        loop {
            let exited = match self.host_mut(i).weftd.as_mut() {
                None => Some("weftd is not running".to_string()),
                Some(p) => p.try_exit().map(|st| format!("weftd exited ({st})")),
            };
            if let Some(why) = exited {
                return Err(self.not_ready(i, start.elapsed(), why));
            }
            let file = self.subnet_file(i).exists();
            let readyz = self.readyz(i);
            if file && matches!(readyz, Some((200, _))) {
                let took = start.elapsed();
                tracing::info!(
                    host = self.host_name(i),
                    subnet = %self.subnet(i).map(|s| s.to_string()).unwrap_or_default(),
                    "weftd ready after {took:.1?}"
                );
                return Ok(took);
            }
            if start.elapsed() > timeout {
                let why = match (file, readyz) {
                    (_, None) => "/readyz does not answer".to_string(),
                    (false, Some(_)) => "subnet.env not written".to_string(),
                    (true, Some((code, body))) => format!("/readyz {code}: {body}"),
                };
                return Err(self.not_ready(i, start.elapsed(), why));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// [`Lab::wait_ready`] for every host, all within `timeout`.
    pub fn wait_all_ready(&mut self, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        for i in 1..=self.hosts.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_ready(i, left)?;
        }
        Ok(())
    }

    fn not_ready(&self, i: usize, waited: Duration, why: String) -> LabError {
        let log = self.weftd_log(i);
        let lines: Vec<&str> = log.lines().collect();
        LabError::NotReady {
            host: self.host_name(i).to_string(),
            waited,
            why,
            log_tail: lines[lines.len().saturating_sub(20)..].join("\n"),
        }
    }

    // --- pods -----------------------------------------------------------------------

    /// The plugin's config for host `host`'s pods.
    fn plugin_conf(&self, host: usize) -> Value {
        let h = self.host(host);
        json!({
            "type": "weft",
            "subnetFile": h.subnet_file(),
            "dataDir": h.dir.join("cni"),
            "logFile": h.dir.join("cni.log"),
        })
    }

    /// The network config on the plugin's stdin for host `host`.
    fn cni_conf(&self, host: usize) -> String {
        let mut conf = self.plugin_conf(host);
        conf["cniVersion"] = json!(CNI_VERSION);
        conf["name"] = json!(CNI_NETWORK);
        conf.to_string()
    }

    /// The same config as a conflist in the host's CNI config directory, as a node has it.
    fn write_conflist(&self, host: usize) {
        let dir = self.host(host).cni_conf_dir();
        std::fs::create_dir_all(&dir).expect("CNI config dir");
        let conflist = json!({
            "cniVersion": CNI_VERSION,
            "name": CNI_NETWORK,
            "plugins": [self.plugin_conf(host)],
        });
        std::fs::write(
            dir.join(weft_agent::host::install_cni::CONFLIST_NAME),
            serde_json::to_vec_pretty(&conflist).expect("json"),
        )
        .expect("write the lab's conflist");
    }

    fn cni(
        &self,
        verb: &'static str,
        host: usize,
        pod: &str,
        container_id: &str,
        netns: &Netns,
    ) -> Result<String, LabError> {
        let netns_path = netns.path().display().to_string();
        let cni_path = self
            .bins
            .plugin
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let env = [
            ("CNI_COMMAND", verb),
            ("CNI_CONTAINERID", container_id),
            ("CNI_NETNS", netns_path.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", cni_path.as_str()),
        ];
        let conf = self.cni_conf(host);
        let out = cni_call(
            &self.bins.plugin,
            &self.host(host).netns,
            &env,
            conf.as_bytes(),
        );
        if out.exit == 0 {
            Ok(out.stdout)
        } else {
            Err(LabError::Cni {
                verb,
                pod: pod.to_string(),
                host: self.host_name(host).to_string(),
                exit: out.exit,
                output: format!("{}{}", out.stdout.trim(), out.stderr.trim()),
            })
        }
    }

    /// Add a pod to `host` through the CNI plugin (ADD inside the host namespace).
    pub fn add_pod(&mut self, host: usize) -> Result<&Pod, LabError> {
        let h = self.host_mut(host);
        h.pods_added += 1;
        let name = format!("{}p{}", h.name, h.pods_added);
        let container_id = format!("{}-{name}", self.name);
        let netns = Netns::named(&container_id);
        let stdout = self.cni("ADD", host, &name, &container_id, &netns)?;
        let result: Value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        let addrs: Vec<IpAddr> = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str())
            .filter_map(|a| a.split('/').next()?.parse().ok())
            .collect();
        let ip = addrs.iter().find_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        });
        let ip6 = addrs.iter().find_map(|a| match a {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        });
        let missing = match (self.opts.ipv4, ip, self.opts.ipv6(), ip6) {
            (true, None, _, _) => Some("IPv4"),
            (_, _, true, None) => Some("IPv6"),
            _ => None,
        };
        if let Some(family) = missing {
            let _ = self.cni("DEL", host, &name, &container_id, &netns);
            return Err(LabError::Cni {
                verb: "ADD",
                pod: name,
                host: self.host_name(host).to_string(),
                exit: 0,
                output: format!("no {family} address in the result: {stdout}"),
            });
        }
        let ip = ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let shown: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
        tracing::info!(
            host = self.host_name(host),
            pod = %name,
            addresses = %shown.join(" "),
            "pod added"
        );
        self.pods.push(Pod {
            name,
            host,
            ip,
            ip6,
            container_id,
            netns,
            result,
        });
        self.save_state();
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Add `pods_per_host` pods to every host.
    pub fn add_pods(&mut self) -> Result<(), LabError> {
        for host in 1..=self.hosts.len() {
            for _ in 0..self.opts.pods_per_host {
                self.add_pod(host)?;
            }
        }
        Ok(())
    }

    /// Delete a pod: CNI DEL on its host, then its namespace (removed also when DEL fails).
    pub fn del_pod(&mut self, name: &str) -> Result<(), LabError> {
        let at = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| LabError::NoSuchPod(name.to_string()))?;
        let pod = self.pods.remove(at);
        let result = self
            .cni("DEL", pod.host, &pod.name, &pod.container_id, &pod.netns)
            .map(drop);
        drop(pod);
        self.save_state();
        result
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    // --- probes and commands ----------------------------------------------------------

    /// The namespace of a lab node: a pod name, `h<i>`, `sw`/`switch` or `inet`/`internet`.
    /// Anything else is taken as a namespace name as it is.
    pub fn ns_of<'a>(&'a self, node: &'a str) -> &'a str {
        match node {
            "sw" | "switch" => return self.switch_ns(),
            "inet" | "internet" => return self.internet_ns(),
            _ => {}
        }
        if let Some(h) = self.hosts.iter().find(|h| h.name == node) {
            return &h.netns.name;
        }
        if let Some(p) = self.pod(node) {
            return &p.netns.name;
        }
        node
    }

    /// `program args` inside a lab node (see [`Lab::ns_of`]), bounded to 60 s:
    /// (exit code, stdout, stderr).
    pub fn exec_in(&self, node: &str, program: &str, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns_of(node), program])
            .args(args);
        run_bounded(cmd, Duration::from_secs(60))
    }

    /// One ping (`ping -c1 -W1`) from a lab node to `dst`.
    pub fn ping(&self, from: &str, dst: impl Into<IpAddr>) -> bool {
        ping_from(self.ns_of(from), dst.into())
    }

    /// Ping from every pod to every other pod, to every other host's underlay address and,
    /// with `ip_masq`, to [`OUTSIDE_IP`], once per address family of the lab (see
    /// [`LabState::connectivity`]).
    pub fn connectivity(&self) -> Vec<Probe> {
        self.state().connectivity()
    }

    /// [`Lab::connectivity`] repeated until every probe answers or `timeout` has passed.
    pub fn connectivity_within(&self, timeout: Duration) -> Vec<Probe> {
        self.state().connectivity_within(timeout)
    }

    /// `etcdctl <args>` inside the switch against the lab's etcd: (exit code, stdout, stderr).
    pub fn etcdctl(&self, args: &[&str]) -> (i32, String, String) {
        self.etcd
            .as_ref()
            .expect("the lab's etcd is running")
            .etcdctl(args)
    }

    /// `netctl check` inside host `i`'s namespace against its subnet.env and the lab's etcd:
    /// (exit code, stdout, stderr).
    pub fn netctl_check(&self, i: usize) -> (i32, String, String) {
        let netctl = self.bins.netctl.display().to_string();
        let file = self.subnet_file(i).display().to_string();
        let conf_dir = self.host(i).cni_conf_dir().display().to_string();
        let endpoint = self.etcd_endpoint();
        self.host_exec(
            i,
            &netctl,
            &[
                "--etcd-endpoints",
                &endpoint,
                "--etcd-prefix",
                ETCD_PREFIX,
                "check",
                "--subnet-file",
                &file,
                "--cni-conf-dir",
                &conf_dir,
            ],
        )
    }

    /// `program args` on host `i` as its weftd sees the host: inside its namespace and, on a
    /// wireguard lab, with the host's own WireGuard socket directory (see [`host_command`]).
    /// Bounded to 60 s: (exit code, stdout, stderr).
    pub fn host_exec(&self, i: usize, program: &str, args: &[&str]) -> (i32, String, String) {
        let h = self.host(i);
        let wireguard = self.opts.backend == LabBackend::Wireguard;
        let mut cmd = host_command(&h.netns.name, &h.dir, wireguard, Path::new(program));
        cmd.args(args);
        run_bounded(cmd, Duration::from_secs(60))
    }

    /// Host `i`'s WireGuard peers as `wg show <device> dump` prints them, one line per peer
    /// (public key, preshared key, endpoint, allowed IPs, …), the device's own line dropped.
    pub fn wg_peers(&self, i: usize, device: &str) -> Vec<String> {
        let (code, out, err) = self.host_exec(i, "wg", &["show", device, "dump"]);
        assert_eq!(
            code,
            0,
            "wg show {device} dump on {}: {err}",
            self.host_name(i)
        );
        out.lines().skip(1).map(str::to_string).collect()
    }

    /// The directory that is `/run/wireguard` for host `i`'s processes on a wireguard lab.
    pub fn wireguard_dir(&self, i: usize) -> PathBuf {
        self.host(i).dir.join("wireguard")
    }

    /// `netctl <args>` inside the switch against the lab's etcd: (exit code, stdout, stderr).
    pub fn netctl(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.switch_ns()])
            .arg(&self.bins.netctl)
            .args(["--etcd-endpoints", &self.etcd_endpoint()])
            .args(["--etcd-prefix", ETCD_PREFIX])
            .args(args);
        run_bounded(cmd, Duration::from_secs(30))
    }

    // --- state and teardown ---------------------------------------------------------

    /// What the lab is now, as its state file holds it while this process runs it.
    pub fn state(&self) -> LabState {
        self.state_as(false)
    }

    fn state_as(&self, kept: bool) -> LabState {
        let hosts = self
            .hosts
            .iter()
            .enumerate()
            .map(|(n, h)| {
                let env = std::fs::read_to_string(h.subnet_file())
                    .ok()
                    .and_then(|t| SubnetEnv::parse(&t, &h.subnet_file()).ok());
                HostRecord {
                    name: h.name.clone(),
                    netns: h.netns.name.clone(),
                    ip: h.ip,
                    ip6: self.opts.ipv6().then(|| host_ip6(n + 1)),
                    subnet: env.as_ref().and_then(|e| e.subnet),
                    subnet6: env.as_ref().and_then(|e| e.ipv6_subnet),
                    subnet_file: h.subnet_file(),
                    cni_conf_dir: h.cni_conf_dir(),
                    weftd_log: h.dir.join(format!("weftd.{}.log", h.starts.max(1))),
                    cni_log: h.dir.join("cni.log"),
                }
            })
            .collect();
        let pods = self
            .pods
            .iter()
            .map(|p| PodRecord {
                name: p.name.clone(),
                netns: p.netns.name.clone(),
                host: p.host,
                ip: self.opts.ipv4.then_some(p.ip),
                ip6: p.ip6,
            })
            .collect();
        let processes = self
            .processes()
            .into_iter()
            .map(|(name, pid)| ProcessRecord { name, pid })
            .collect();
        LabState {
            lab: self.name.clone(),
            owner_pid: std::process::id(),
            kept,
            dir: self.dir_path.clone(),
            etcd_endpoint: self.etcd_endpoint(),
            netctl: self.bins.netctl.clone(),
            ipv4: self.opts.ipv4,
            ipv6: self.opts.ipv6(),
            ip_masq: self.opts.ip_masq,
            wireguard: self.opts.backend == LabBackend::Wireguard,
            namespaces: self.namespaces(),
            processes,
            hosts,
            pods,
        }
    }

    /// Write the state file atomically (temp file + rename).
    fn save_state_as(&self, kept: bool) {
        let path = self.state_file();
        let tmp = self.state_dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(&self.state_as(kept)).expect("state serializes");
        let written = std::fs::write(&tmp, text + "\n").and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!("write lab state {}: {e}", path.display());
        }
    }

    fn save_state(&self) {
        self.save_state_as(false);
    }

    /// Keep the lab's directory when it is torn down: weftd's logs (`h<i>/weftd.<n>.log`),
    /// the CNI log (`h<i>/cni.log`), subnet.env, etcd's log (`etcd.log`); etcd's data is
    /// removed. Returns the directory. (With `keep` nothing is removed anyway.)
    pub fn keep_logs(&mut self) -> PathBuf {
        self.keep_logs = true;
        self.dir_path.clone()
    }

    fn tear_down(&mut self) {
        let started = Instant::now();
        for h in &mut self.hosts {
            if let Some(mut p) = h.weftd.take() {
                p.stop(WEFTD_STOP_GRACE);
            }
            for problem in end_userspace_wireguard(&h.dir, &h.netns.name) {
                tracing::warn!("{problem}");
            }
        }
        tracing::debug!("weftd stopped ({:.1?})", started.elapsed());
        for pod in std::mem::take(&mut self.pods) {
            if let Err(e) = self.cni("DEL", pod.host, &pod.name, &pod.container_id, &pod.netns) {
                tracing::warn!("{e}");
            }
        }
        tracing::debug!("pods deleted ({:.1?})", started.elapsed());
        if let Some(mut etcd) = self.etcd.take() {
            etcd.stop();
        }
        tracing::debug!("etcd stopped ({:.1?})", started.elapsed());
        self.hosts.clear();
        self.internet.take();
        self.switch.take();
        tracing::debug!("namespaces deleted ({:.1?})", started.elapsed());
        if let Some(dir) = self.dir.take() {
            if self.keep_logs {
                let kept = dir.keep();
                let _ = std::fs::remove_dir_all(kept.join(ETCD_DATA));
                tracing::info!(lab = %self.name, "logs kept in {}", kept.display());
            }
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
        tracing::info!(lab = %self.name, "torn down in {:.1?}", started.elapsed());
    }

    fn leave_running(&mut self) {
        self.save_state_as(true);
        for h in &mut self.hosts {
            if let Some(p) = h.weftd.take() {
                p.release();
            }
        }
        if let Some(etcd) = self.etcd.take() {
            etcd.release();
        }
        for pod in std::mem::take(&mut self.pods) {
            pod.netns.keep();
        }
        for h in std::mem::take(&mut self.hosts) {
            h.netns.keep();
        }
        for ns in [self.internet.take(), self.switch.take()]
            .into_iter()
            .flatten()
        {
            ns.keep();
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        tracing::info!(
            lab = %self.name,
            "left running; state in {}",
            self.state_file().display()
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.opts.keep {
            self.leave_running();
        } else {
            self.tear_down();
        }
    }
}

/// Where `wireguard-go` lives (Debian's package).
pub fn wireguard_go() -> PathBuf {
    ["/usr/bin/wireguard-go", "/usr/sbin/wireguard-go"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/wireguard-go"))
}

/// The command that runs `program` inside host namespace `netns`. On a wireguard lab it
/// first binds the host's own directory `<host dir>/wireguard` over `/run/wireguard`, in the
/// private mount namespace `ip netns exec` gives each command: `wireguard-go`'s sockets are
/// files there, so hosts sharing one file system would otherwise collide. A bind of a fixed
/// directory also survives a restart of weftd, and `netctl` and `wg` see the same sockets.
fn host_command(netns: &str, host_dir: &Path, wireguard: bool, program: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]);
    if wireguard {
        let dir = host_dir.join("wireguard");
        std::fs::create_dir_all(&dir).expect("the host's WireGuard directory");
        // The mount point in the machine's file system: an empty directory.
        std::fs::create_dir_all("/run/wireguard").expect("/run/wireguard");
        cmd.args([
            "sh",
            "-ec",
            r#"mount --bind "$0" /run/wireguard; exec "$@""#,
        ])
        .arg(dir);
    }
    cmd.arg(program);
    cmd
}

/// End the userspace WireGuard processes weftd started on a host, by the pids weftd keeps
/// beside their sockets (`<host dir>/wireguard/<device>.pid`), when each is still
/// `wireguard-go` in the host's namespace. Problems, if any.
fn end_userspace_wireguard(host_dir: &Path, netns: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let Ok(entries) = std::fs::read_dir(host_dir.join("wireguard")) else {
        return problems;
    };
    let ns_inode = |path: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    };
    let host_ns = ns_inode(&Path::new("/run/netns").join(netns));
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("pid") {
            continue;
        }
        let Some(pid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let ours = || {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            comm.trim() == "wireguard-go"
                && host_ns.is_some()
                && ns_inode(Path::new(&format!("/proc/{pid}/ns/net"))) == host_ns
        };
        if !ours() {
            continue;
        }
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while ours() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if ours() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(100));
            if ours() {
                problems.push(format!(
                    "wireguard-go (pid {pid}) still running after SIGKILL"
                ));
            }
        }
    }
    problems
}

/// Host `i`'s IPv6 underlay address.
fn host_ip6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 0x10 + i as u16)
}

fn ping_from(ns: &str, dst: IpAddr) -> bool {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "ping", "-c1", "-W1", "-q"])
        .arg(dst.to_string());
    run_bounded(cmd, Duration::from_secs(10)).0 == 0
}

// --- the state of a lab -------------------------------------------------------------------

/// A lab as its state file describes it: enough to probe it, show it and tear it down
/// without the process that built it. [`load_state`] checks it, so a file that names
/// something that is not the lab's (another namespace, a directory elsewhere) is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabState {
    #[serde(with = "lab_name_text")]
    pub lab: LabName,
    /// The process that built the lab.
    pub owner_pid: u32,
    /// Left up on purpose (`--keep`); otherwise the owner tears it down when it ends.
    pub kept: bool,
    /// The lab's working directory (etcd data and log, per-host subnet.env, logs, CNI state).
    pub dir: PathBuf,
    pub etcd_endpoint: String,
    /// The netctl binary the lab runs.
    pub netctl: PathBuf,
    pub ipv4: bool,
    pub ipv6: bool,
    pub ip_masq: bool,
    /// The overlay is WireGuard. Without `ip_masq` a pod's ping to another host is not
    /// probed: the host answers from its own address, which WireGuard accepts from a peer
    /// only inside that peer's subnet, so the answer is dropped (by design, as flannel's).
    #[serde(default)]
    pub wireguard: bool,
    /// Every namespace, in teardown order (pods, hosts, internet, switch).
    pub namespaces: Vec<String>,
    pub processes: Vec<ProcessRecord>,
    pub hosts: Vec<HostRecord>,
    pub pods: Vec<PodRecord>,
}

/// One of the lab's long-lived processes (weftd per host, etcd).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessRecord {
    pub name: String,
    pub pid: u32,
}

/// A host of the lab, `h<i>` (the i-th entry, from 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRecord {
    pub name: String,
    pub netns: String,
    /// The underlay address.
    pub ip: Ipv4Addr,
    /// The IPv6 underlay address, in a lab with IPv6.
    pub ip6: Option<Ipv6Addr>,
    /// The host's IPv4 subnet (network form), once weftd wrote subnet.env.
    pub subnet: Option<Ipv4Network>,
    /// The host's IPv6 subnet (network form), once weftd wrote subnet.env.
    pub subnet6: Option<Ipv6Network>,
    pub subnet_file: PathBuf,
    /// The CNI config directory holding the host's conflist.
    pub cni_conf_dir: PathBuf,
    /// The log of weftd's latest start.
    pub weftd_log: PathBuf,
    /// The CNI plugin's log (there once a pod was added).
    pub cni_log: PathBuf,
}

/// A pod of the lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRecord {
    pub name: String,
    pub netns: String,
    /// Host number (1-based, as in `h1`).
    pub host: usize,
    /// The pod's IPv4 address (none in an IPv6-only lab).
    pub ip: Option<Ipv4Addr>,
    /// The pod's IPv6 address, in a lab with IPv6.
    pub ip6: Option<Ipv6Addr>,
}

/// A lab name in the state file: its text, checked when read.
mod lab_name_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use weft_lab_cli::LabName;

    pub fn serialize<S: Serializer>(name: &LabName, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(name.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LabName, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl LabState {
    /// etcd's log in the lab's directory.
    pub fn etcd_log(&self) -> PathBuf {
        self.dir.join(ETCD_LOG)
    }

    /// Read every host's subnets from its subnet.env again (weftd may have written it since
    /// the state was saved).
    pub fn refresh_subnets(&mut self) {
        for h in &mut self.hosts {
            let env = std::fs::read_to_string(&h.subnet_file)
                .ok()
                .and_then(|t| SubnetEnv::parse(&t, &h.subnet_file).ok());
            h.subnet = env.as_ref().and_then(|e| e.subnet);
            h.subnet6 = env.as_ref().and_then(|e| e.ipv6_subnet);
        }
    }

    /// Whether pods' pings to other hosts are probed (see [`LabState::wireguard`]).
    pub fn probes_other_hosts(&self) -> bool {
        !self.wireguard || self.ip_masq
    }

    /// The probes [`LabState::connectivity`] sends (not sent yet, `ok` false), each with the
    /// namespace it is sent from: from every pod, for every address family of the lab, to
    /// every other pod, to every other host's underlay address and, with `ip_masq`, to the
    /// outside address.
    pub fn probe_plan(&self) -> Vec<(Probe, &str)> {
        let mut plan: Vec<(Probe, &str)> = Vec::new();
        for a in &self.pods {
            let mut add = |to: &str, dst: IpAddr, kind: ProbeKind| {
                let probe = Probe {
                    from: a.name.clone(),
                    to: to.to_string(),
                    dst,
                    kind,
                    ok: false,
                };
                plan.push((probe, a.netns.as_str()));
            };
            for b in self.pods.iter().filter(|b| b.name != a.name) {
                let kind = if a.host == b.host {
                    ProbeKind::SameHost
                } else {
                    ProbeKind::CrossHost
                };
                if let Some(ip) = b.ip.filter(|_| self.ipv4) {
                    add(&b.name, IpAddr::V4(ip), kind);
                }
                if let Some(ip6) = b.ip6.filter(|_| self.ipv6) {
                    add(&b.name, IpAddr::V6(ip6), kind);
                }
            }
            for (n, h) in self.hosts.iter().enumerate() {
                if n + 1 == a.host || !self.probes_other_hosts() {
                    continue;
                }
                if self.ipv4 {
                    add(&h.name, IpAddr::V4(h.ip), ProbeKind::OtherHost);
                }
                if let Some(ip6) = h.ip6.filter(|_| self.ipv6) {
                    add(&h.name, IpAddr::V6(ip6), ProbeKind::OtherHost);
                }
            }
            if self.ip_masq {
                if self.ipv4 {
                    add("outside", IpAddr::V4(OUTSIDE_IP), ProbeKind::Outside);
                }
                if self.ipv6 {
                    add("outside", IpAddr::V6(OUTSIDE_IP6), ProbeKind::Outside);
                }
            }
        }
        plan
    }

    /// Send every probe of [`LabState::probe_plan`] once (`ping -c1 -W1`, 16 at a time); one
    /// round takes about a second when some fail.
    pub fn connectivity(&self) -> Vec<Probe> {
        let mut plan = self.probe_plan();
        std::thread::scope(|s| {
            for chunk in plan.chunks_mut(16) {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|(p, ns)| {
                        let (ns, dst) = (*ns, p.dst);
                        s.spawn(move || ping_from(ns, dst))
                    })
                    .collect();
                for ((p, _), h) in chunk.iter_mut().zip(handles) {
                    p.ok = h.join().unwrap_or(false);
                }
            }
        });
        plan.into_iter().map(|(p, _)| p).collect()
    }

    /// `netctl <args>` inside the switch against the lab's etcd: (exit code, stdout,
    /// stderr).
    pub fn netctl(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = Command::new("ip");
        let sw = self
            .namespaces
            .iter()
            .find(|n| n.ends_with("-sw"))
            .cloned()
            .unwrap_or_default();
        cmd.args(["netns", "exec", &sw])
            .arg(&self.netctl)
            .args(["--etcd-endpoints", &self.etcd_endpoint])
            .args(["--etcd-prefix", ETCD_PREFIX])
            .args(args);
        run_bounded(cmd, Duration::from_secs(60))
    }

    /// [`LabState::connectivity`] again every half second until every probe answers or
    /// `timeout` has passed; the last round's result.
    pub fn connectivity_within(&self, timeout: Duration) -> Vec<Probe> {
        let start = Instant::now();
        loop {
            let probes = self.connectivity();
            if probes.iter().all(|p| p.ok) || start.elapsed() > timeout {
                return probes;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Whether `ns` is one of the names lab `lab` gives its namespaces: `<lab>-sw`,
/// `<lab>-inet`, `<lab>-h<i>` or `<lab>-h<i>p<n>`. (No name of one lab is another lab's:
/// the part after the lab's name has no dash.)
fn lab_owns_namespace(lab: &str, ns: &str) -> bool {
    let Some(node) = ns.strip_prefix(lab).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    match node {
        "sw" | "inet" => true,
        _ => node
            .strip_prefix('h')
            .is_some_and(|rest| match rest.split_once('p') {
                Some((host, pod)) => digits(host) && digits(pod),
                None => digits(rest),
            }),
    }
}

/// Read and check a state file.
pub fn load_state(path: &Path) -> Result<LabState, LabError> {
    let bad = |msg: String| LabError::State {
        path: path.to_path_buf(),
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let state: LabState = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let lab = state.lab.as_str();
    let dir_ok = state.dir.is_absolute()
        && state
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(&format!("{lab}-")))
            .is_some_and(|rest| {
                rest.len() == DIR_SUFFIX_LEN && rest.bytes().all(|c| c.is_ascii_alphanumeric())
            });
    if !dir_ok {
        return Err(bad(format!(
            "directory {} is not this lab's",
            state.dir.display()
        )));
    }
    let named = state
        .namespaces
        .iter()
        .chain(state.hosts.iter().map(|h| &h.netns))
        .chain(state.pods.iter().map(|p| &p.netns));
    for ns in named {
        if !lab_owns_namespace(lab, ns) {
            return Err(bad(format!("namespace {ns} is not this lab's")));
        }
    }
    Ok(state)
}

/// How a lab under [`STATE_ROOT`] stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabStatus {
    /// Left up on purpose (`--keep`).
    Kept,
    /// Its run ended without tearing it down (killed outright): what is left of it.
    Interrupted,
    /// Its run is still going (and tears it down when it ends).
    Running { pid: u32 },
    /// The state file cannot be used: why.
    Unreadable(String),
}

impl LabStatus {
    /// One word for a listing.
    pub fn as_str(&self) -> &'static str {
        match self {
            LabStatus::Kept => "kept",
            LabStatus::Interrupted => "interrupted",
            LabStatus::Running { .. } => "running",
            LabStatus::Unreadable(_) => "unreadable",
        }
    }
}

/// A lab found under [`STATE_ROOT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabEntry {
    /// The name of its state directory (the lab's name).
    pub name: String,
    pub state_file: PathBuf,
    pub status: LabStatus,
}

/// Every lab under [`STATE_ROOT`], by name.
pub fn labs() -> Vec<LabEntry> {
    let mut v: Vec<LabEntry> = std::fs::read_dir(STATE_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let state_file = e.path().join("state.json");
            let status = match load_state(&state_file) {
                Ok(s) if s.kept => LabStatus::Kept,
                Ok(s) if alive(s.owner_pid) => LabStatus::Running { pid: s.owner_pid },
                Ok(_) => LabStatus::Interrupted,
                Err(e) => LabStatus::Unreadable(e.to_string()),
            };
            LabEntry {
                name: e.file_name().to_string_lossy().into_owned(),
                state_file,
                status,
            }
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// The lab a command means: the one named, or without a name the only one that is not
/// [`LabStatus::Running`].
pub fn select<'a>(labs: &'a [LabEntry], name: Option<&LabName>) -> Result<&'a LabEntry, LabError> {
    match name {
        Some(name) => labs
            .iter()
            .find(|l| l.name == name.as_str())
            .ok_or_else(|| LabError::NoSuchLab {
                name: name.clone(),
                others: labs.iter().map(|l| l.name.clone()).collect(),
            }),
        None => {
            let left: Vec<&LabEntry> = labs
                .iter()
                .filter(|l| !matches!(l.status, LabStatus::Running { .. }))
                .collect();
            match left[..] {
                [] => Err(LabError::NoLab),
                [one] => Ok(one),
                _ => Err(LabError::SeveralLabs {
                    names: left.iter().map(|l| l.name.clone()).collect(),
                }),
            }
        }
    }
}

/// Whether a new lab may take `name`: no lab of that name is up and no namespace of that
/// name is left over.
pub fn check_name_free(name: &LabName) -> Result<(), LabError> {
    let state_dir = Path::new(STATE_ROOT).join(name.as_str());
    if state_dir.exists() {
        return Err(LabError::NameTaken {
            name: name.clone(),
            state: state_dir.join("state.json"),
        });
    }
    let mut left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|ns| lab_owns_namespace(name.as_str(), ns))
        .collect();
    left.sort();
    if left.is_empty() {
        Ok(())
    } else {
        Err(LabError::LeftoverNamespaces {
            name: name.clone(),
            namespaces: left,
        })
    }
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// State files of the labs this process made (for cleaning up after a signal).
pub fn labs_of_this_process() -> Vec<PathBuf> {
    labs()
        .into_iter()
        .map(|l| l.state_file)
        .filter(|p| load_state(p).is_ok_and(|s| s.owner_pid == std::process::id()))
        .collect()
}

/// Whether `pid` is this lab's weftd or etcd: its program is `weftd` or `etcd` and one of
/// its arguments lies in the lab's directory (the subnet file, the data dir). Guards against
/// a pid that was reused since the state was written.
fn is_lab_process(pid: u32, dir: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let program = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str());
    matches!(program, Some("weftd" | "etcd")) && args.iter().any(|a| Path::new(a).starts_with(dir))
}

/// End one lab process by pid: SIGTERM, then SIGKILL after 5 s; gone (or a zombie) counts.
fn end_lab_process(name: &str, pid: u32, dir: &Path) -> Result<(), String> {
    let running = || alive(pid) && is_lab_process(pid, dir);
    if !running() {
        return Ok(());
    }
    for (sig, wait) in [
        (Signal::SIGTERM, Duration::from_secs(5)),
        (Signal::SIGKILL, Duration::from_secs(2)),
    ] {
        let _ = kill(Pid::from_raw(pid as i32), sig);
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if !running() {
                tracing::info!("{name} (pid {pid}) stopped");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Err(format!("{name} (pid {pid}) still running after SIGKILL"))
}

/// End a lab described by a state file: stop its weftd and etcd processes (only pids whose
/// command line is still this lab's weftd/etcd), delete its namespaces, remove its directory
/// and the state. Returns the lab's name.
pub fn teardown_from_state(path: &Path) -> Result<String, LabError> {
    if !path.exists() {
        // A lab that ended before its first state was written: only the directory is left.
        let dir = path
            .parent()
            .filter(|d| d.parent() == Some(Path::new(STATE_ROOT)));
        if let Some(dir) = dir {
            let _ = std::fs::remove_file(dir.join("state.json.tmp"));
            let _ = std::fs::remove_dir(dir);
            if !dir.exists() {
                return Ok(dir.file_name().unwrap_or_default().to_string_lossy().into());
            }
        }
    }
    let state = load_state(path)?;
    let mut problems = Vec::new();
    for p in &state.processes {
        if let Err(e) = end_lab_process(&p.name, p.pid, &state.dir) {
            problems.push(e);
        }
    }
    for h in &state.hosts {
        problems.extend(end_userspace_wireguard(&state.dir.join(&h.name), &h.netns));
    }
    for ns in &state.namespaces {
        if !Path::new("/run/netns").join(ns).exists() {
            continue;
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "del", ns]);
        let (code, _, err) = run_bounded(cmd, Duration::from_secs(60));
        if code != 0 {
            problems.push(format!("ip netns del {ns}: {}", err.trim()));
        }
    }
    if state.dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&state.dir) {
            problems.push(format!("remove {}: {e}", state.dir.display()));
        }
    }
    let _ = std::fs::remove_file(path);
    if let Some(parent) = path.parent() {
        let _ = std::fs::remove_file(parent.join("state.json.tmp"));
        let _ = std::fs::remove_dir(parent);
    }
    if problems.is_empty() {
        tracing::info!(lab = %state.lab, "torn down from {}", path.display());
        Ok(state.lab.to_string())
    } else {
        Err(LabError::Teardown {
            lab: state.lab.to_string(),
            problems,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A state of lab `lab1` with `hosts` hosts and one pod each, as [`Lab`] would save it.
    pub(crate) fn sample(ipv4: bool, ipv6: bool, hosts: usize) -> LabState {
        let dir = PathBuf::from("/tmp/lab1-abc123");
        let hosts_v: Vec<HostRecord> = (1..=hosts)
            .map(|i| HostRecord {
                name: format!("h{i}"),
                netns: format!("lab1-h{i}"),
                ip: Ipv4Addr::new(10, 99, 0, 10 + i as u8),
                ip6: ipv6.then(|| host_ip6(i)),
                subnet: ipv4.then(|| format!("10.244.{i}.0/24").parse().unwrap()),
                subnet6: ipv6.then(|| format!("fc00:0:0:{i}::/64").parse().unwrap()),
                subnet_file: dir.join(format!("h{i}/subnet.env")),
                cni_conf_dir: dir.join(format!("h{i}/net.d")),
                weftd_log: dir.join(format!("h{i}/weftd.1.log")),
                cni_log: dir.join(format!("h{i}/cni.log")),
            })
            .collect();
        let pods: Vec<PodRecord> = (1..=hosts)
            .map(|i| PodRecord {
                name: format!("h{i}p1"),
                netns: format!("lab1-h{i}p1"),
                host: i,
                ip: ipv4.then(|| Ipv4Addr::new(10, 244, i as u8, 2)),
                ip6: ipv6.then(|| format!("fc00:0:0:{i}::2").parse().unwrap()),
            })
            .collect();
        let mut namespaces: Vec<String> = pods.iter().map(|p| p.netns.clone()).collect();
        namespaces.extend(hosts_v.iter().map(|h| h.netns.clone()));
        namespaces.extend(["lab1-inet".to_string(), "lab1-sw".to_string()]);
        LabState {
            lab: "lab1".parse().unwrap(),
            owner_pid: 1,
            kept: true,
            dir,
            etcd_endpoint: format!("http://{SWITCH_IP}:2379"),
            netctl: PathBuf::from("/bin/netctl"),
            ipv4,
            ipv6,
            ip_masq: false,
            wireguard: false,
            namespaces,
            processes: vec![ProcessRecord {
                name: "etcd".into(),
                pid: 5,
            }],
            hosts: hosts_v,
            pods,
        }
    }

    #[test]
    fn state_files_that_name_foreign_things_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.json");
        let good = serde_json::to_value(sample(true, true, 2)).unwrap();
        std::fs::write(&path, good.to_string()).unwrap();
        assert_eq!(load_state(&path).unwrap(), sample(true, true, 2));
        let cases: [(&str, &[&str], Value); 8] = [
            ("lab", &[], json!("root/..")),
            ("dir", &[], json!("/")),
            ("dir", &[], json!("/tmp/lab2-abc123")),
            ("dir", &[], json!("/tmp/lab1-h1-abc123")),
            ("dir", &[], json!("tmp/lab1-abc123")),
            ("namespaces", &[], json!(["lab1-sw", "other-ns"])),
            ("namespaces", &[], json!(["lab1-h1-sw"])),
            ("netns", &["pods", "0"], json!("lab1x-h1p1")),
        ];
        for (key, at, value) in cases {
            let mut v = good.clone();
            let mut node = &mut v;
            for step in at {
                node = match step.parse::<usize>() {
                    Ok(i) => &mut node[i],
                    Err(_) => &mut node[*step],
                };
            }
            node[key] = value.clone();
            std::fs::write(&path, v.to_string()).unwrap();
            assert!(load_state(&path).is_err(), "{key} = {value}");
        }
        let mut v = good.clone();
        v["extra"] = json!(1);
        std::fs::write(&path, v.to_string()).unwrap();
        assert!(load_state(&path).is_err(), "unknown field");
    }

    #[test]
    fn a_lab_owns_only_its_own_namespace_names() {
        for ns in ["a-sw", "a-inet", "a-h1", "a-h12", "a-h1p1", "a-h3p20"] {
            assert!(lab_owns_namespace("a", ns), "{ns}");
        }
        for ns in [
            "a", "a-", "a-h", "a-hp1", "a-h1p", "a-h1-sw", "a-h1-h1", "ab-sw", "b-sw", "a-swx",
            "a-h1x",
        ] {
            assert!(!lab_owns_namespace("a", ns), "{ns}");
        }
        // Lab a-h1's namespaces are not lab a's, and the other way round.
        assert!(!lab_owns_namespace("a-h1", "a-h1"));
        assert!(!lab_owns_namespace("a-h1", "a-h1p1"));
    }

    #[test]
    fn a_command_finds_the_named_lab_or_the_only_one() {
        let entry = |name: &str, status: LabStatus| LabEntry {
            name: name.into(),
            state_file: PathBuf::from(format!("{STATE_ROOT}/{name}/state.json")),
            status,
        };
        let name = |n: &str| n.parse::<LabName>().unwrap();
        let labs = vec![
            entry("a", LabStatus::Kept),
            entry("b", LabStatus::Running { pid: 7 }),
        ];
        assert_eq!(select(&labs, None).unwrap().name, "a");
        assert_eq!(select(&labs, Some(&name("b"))).unwrap().name, "b");
        let e = select(&labs, Some(&name("c"))).unwrap_err();
        assert_eq!(e.to_string(), "no lab named c is up (labs that are: a, b)");
        assert!(matches!(select(&[], None), Err(LabError::NoLab)));
        let e = select(&[], Some(&name("c"))).unwrap_err();
        assert_eq!(e.to_string(), "no lab named c is up");
        let several = vec![
            entry("a", LabStatus::Kept),
            entry("c", LabStatus::Interrupted),
            entry("b", LabStatus::Running { pid: 7 }),
        ];
        let e = select(&several, None).unwrap_err();
        assert_eq!(e.to_string(), "2 labs are up (a, c): name one");
    }

    #[test]
    fn probes_go_once_per_family_to_every_other_pod_and_host() {
        let count = |s: &LabState, v6: bool, kind: ProbeKind| {
            s.probe_plan()
                .iter()
                .filter(|(p, _)| p.dst.is_ipv6() == v6 && p.kind == kind)
                .count()
        };
        let mut dual = sample(true, true, 3);
        dual.ip_masq = true;
        for v6 in [false, true] {
            assert_eq!(count(&dual, v6, ProbeKind::CrossHost), 6);
            assert_eq!(count(&dual, v6, ProbeKind::OtherHost), 6);
            assert_eq!(count(&dual, v6, ProbeKind::Outside), 3);
            assert_eq!(count(&dual, v6, ProbeKind::SameHost), 0);
        }
        let v6 = sample(false, true, 3);
        assert!(v6.probe_plan().iter().all(|(p, _)| p.dst.is_ipv6()));
        assert_eq!(v6.probe_plan().len(), 12);
        // Every probe leaves from its pod's namespace.
        for (p, ns) in dual.probe_plan() {
            assert_eq!(ns, format!("lab1-{}", p.from));
        }
    }
}
