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
//! `<lab>` is `wl<pid>x<n>`, unique per lab, so labs in parallel tests never meet. Nothing
//! here touches the root namespace: links are made with `ip -n <ns>`, sysctls, processes and
//! probes run under `ip netns exec <ns>`, and all traffic stays between the lab's namespaces.
//!
//! While a lab exists its state (namespaces, pids, files) is in
//! `/run/weft-lab/<lab>/state.json`. Dropping the [`Lab`] stops its processes, deletes its
//! pods (CNI DEL) and namespaces and removes its files and the state. With
//! [`LabOptions::keep`] everything stays up; [`teardown_from_state`] ends it later, also
//! after a run that was interrupted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipnetwork::{Ipv4Network, Ipv6Network};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::etcd::NetnsEtcd;
use crate::netns::{cni_call, Netns};
use crate::procs::{bin, run_bounded, Proc};

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

/// Hosts are 10.99.0.11 ..= 10.99.0.(10 + MAX_HOSTS), below the router's .254.
const MAX_HOSTS: usize = 200;
const CNI_NETWORK: &str = "weft";
const CNI_VERSION: &str = "1.1.0";
const WEFTD_STOP_GRACE: Duration = Duration::from_secs(5);

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// The backend written into the network config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LabBackend {
    Vxlan,
    HostGw,
}

impl LabBackend {
    /// The config's `Backend.Type`.
    pub fn as_str(self) -> &'static str {
        match self {
            LabBackend::Vxlan => "vxlan",
            LabBackend::HostGw => "host-gw",
        }
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Number of hosts, h1..hN (1..=200).
    pub hosts: usize,
    pub backend: LabBackend,
    /// `"DirectRouting": true` in the vxlan backend config.
    pub direct_routing: bool,
    /// Start weftd with `--ip-masq`; [`Lab::connectivity`] then also probes [`OUTSIDE_IP`].
    pub ip_masq: bool,
    /// Pods [`Lab::add_pods`] adds to every host.
    pub pods_per_host: usize,
    /// The cluster network (`Network`).
    pub network: String,
    /// `SubnetLen`.
    pub subnet_len: u8,
    /// `EnableIPv4` (false with `ipv6_network` makes an IPv6-only cluster).
    pub ipv4: bool,
    /// `EnableIPv6` with this `IPv6Network`; the underlay then carries IPv6 too (fd99::/64).
    pub ipv6_network: Option<String>,
    /// `IPv6SubnetLen`.
    pub ipv6_subnet_len: u8,
    /// Leave everything running when the `Lab` is dropped (see [`teardown_from_state`]).
    pub keep: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            hosts: 3,
            backend: LabBackend::Vxlan,
            direct_routing: false,
            ip_masq: false,
            pods_per_host: 2,
            network: "10.244.0.0/16".into(),
            subnet_len: 24,
            ipv4: true,
            ipv6_network: None,
            ipv6_subnet_len: 64,
            keep: false,
        }
    }
}

impl LabOptions {
    /// Check the options before anything is created.
    pub fn validate(&self) -> Result<(), String> {
        if self.hosts == 0 || self.hosts > MAX_HOSTS {
            return Err(format!("hosts must be 1..={MAX_HOSTS}, not {}", self.hosts));
        }
        if self.direct_routing && self.backend != LabBackend::Vxlan {
            return Err("direct routing is a vxlan backend option".into());
        }
        if let Some(n6) = &self.ipv6_network {
            let net6: Ipv6Network = n6
                .parse()
                .map_err(|e| format!("IPv6 network {n6:?}: {e}"))?;
            if net6.network() != net6.ip() {
                return Err(format!("IPv6 network {n6} has host bits set"));
            }
            if self.ipv6_subnet_len <= net6.prefix() || self.ipv6_subnet_len > 120 {
                return Err(format!(
                    "IPv6 subnet length /{} must be between /{} and /120",
                    self.ipv6_subnet_len,
                    net6.prefix() + 1
                ));
            }
        } else if !self.ipv4 {
            return Err("an IPv6-only lab needs an IPv6 network".into());
        }
        let net: Ipv4Network = self
            .network
            .parse()
            .map_err(|e| format!("network {:?}: {e}", self.network))?;
        if net.network() != net.ip() {
            return Err(format!("network {} has host bits set", self.network));
        }
        if self.subnet_len < net.prefix() || self.subnet_len > 28 {
            return Err(format!(
                "subnet length /{} must be between /{} and /28",
                self.subnet_len,
                net.prefix()
            ));
        }
        let subnets = 1u64 << (self.subnet_len - net.prefix());
        if subnets < self.hosts as u64 {
            return Err(format!(
                "{} holds {subnets} /{} subnets, fewer than {} hosts",
                self.network, self.subnet_len, self.hosts
            ));
        }
        // Network, gateway and broadcast are never given to pods.
        let per_subnet = (1u64 << (32 - self.subnet_len)) - 3;
        if self.pods_per_host as u64 > per_subnet {
            return Err(format!(
                "a /{} subnet holds {per_subnet} pods, not {}",
                self.subnet_len, self.pods_per_host
            ));
        }
        Ok(())
    }

    /// The network config written to `<prefix>/config`.
    pub fn net_config(&self) -> String {
        let backend = if self.direct_routing {
            format!(
                r#"{{"Type":"{}","DirectRouting":true}}"#,
                self.backend.as_str()
            )
        } else {
            format!(r#"{{"Type":"{}"}}"#, self.backend.as_str())
        };
        let v6 = match &self.ipv6_network {
            Some(n6) => format!(
                r#","EnableIPv6":true,"IPv6Network":"{n6}","IPv6SubnetLen":{}"#,
                self.ipv6_subnet_len
            ),
            None => String::new(),
        };
        if self.ipv4 {
            format!(
                r#"{{"Network":"{}","SubnetLen":{}{v6},"Backend":{backend}}}"#,
                self.network, self.subnet_len
            )
        } else {
            format!(r#"{{"EnableIPv4":false{v6},"Backend":{backend}}}"#)
        }
    }

    /// The lab's underlay and pods carry IPv6.
    pub fn ipv6(&self) -> bool {
        self.ipv6_network.is_some()
    }
}

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
    name: String,
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
}

impl Lab {
    /// Build the underlay, start etcd in the switch, store the network config and start
    /// weftd on every host (without waiting for readiness). Panics if the options are
    /// invalid or the machine refuses a step; whatever was built is removed again.
    pub fn start(opts: LabOptions) -> Lab {
        if let Err(e) = opts.validate() {
            panic!("invalid lab options: {e}");
        }
        crate::netns::require_root();
        let name = format!(
            "wl{}x{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let bins = Binaries {
            weftd: bin("weftd"),
            netctl: bin("netctl"),
            plugin: bin("weft"),
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("weft-lab-{name}-"))
            .tempdir()
            .expect("lab temp dir");
        let state_dir = Path::new(STATE_ROOT).join(&name);
        std::fs::create_dir_all(&state_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", state_dir.display()));
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
        };
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

    /// The lab's name (`wl<pid>x<n>`), the prefix of all its namespaces.
    pub fn name(&self) -> &str {
        &self.name
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
        let h = self.host_mut(i);
        if let Some(p) = &mut h.weftd {
            assert!(
                p.try_exit().is_some(),
                "weftd on {} is already running",
                h.name
            );
        }
        h.starts += 1;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h.netns.name])
            .arg(&weftd)
            .args(["--node-name", &h.name, "--iface", "eth0"])
            .args(["--etcd-endpoints", &endpoint])
            .arg("--subnet-file")
            .arg(h.subnet_file())
            .args(["--healthz-port", &HEALTHZ_PORT.to_string()]);
        if ip_masq {
            cmd.arg("--ip-masq");
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

    fn cni_conf(&self, host: usize) -> String {
        let h = self.host(host);
        json!({
            "cniVersion": CNI_VERSION,
            "name": CNI_NETWORK,
            "type": "weft",
            "subnetFile": h.subnet_file(),
            "dataDir": h.dir.join("cni"),
            "logFile": h.dir.join("cni.log"),
        })
        .to_string()
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
        tracing::info!(host = self.host_name(host), pod = %name, %ip, ip6 = ?ip6, "pod added");
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
    /// with `ip_masq`, to [`OUTSIDE_IP`]. Pings run in parallel; one round takes about a
    /// second when some fail.
    pub fn connectivity(&self) -> Vec<Probe> {
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
                plan.push((probe, a.netns.name.as_str()));
            };
            for b in self.pods.iter().filter(|b| b.name != a.name) {
                let kind = if a.host == b.host {
                    ProbeKind::SameHost
                } else {
                    ProbeKind::CrossHost
                };
                if self.opts.ipv4 {
                    add(&b.name, IpAddr::V4(b.ip), kind);
                }
                if let Some(ip6) = b.ip6 {
                    add(&b.name, IpAddr::V6(ip6), kind);
                }
            }
            for (n, h) in self.hosts.iter().enumerate() {
                if h.name == format!("h{}", a.host) {
                    continue;
                }
                if self.opts.ipv4 {
                    add(&h.name, IpAddr::V4(h.ip), ProbeKind::OtherHost);
                }
                if self.opts.ipv6() {
                    add(&h.name, IpAddr::V6(host_ip6(n + 1)), ProbeKind::OtherHost);
                }
            }
            if self.opts.ip_masq {
                if self.opts.ipv4 {
                    add("outside", IpAddr::V4(OUTSIDE_IP), ProbeKind::Outside);
                }
                if self.opts.ipv6() {
                    add("outside", IpAddr::V6(OUTSIDE_IP6), ProbeKind::Outside);
                }
            }
        }
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
        let endpoint = self.etcd_endpoint();
        self.exec_in(
            self.host_name(i),
            &netctl,
            &[
                "--etcd-endpoints",
                &endpoint,
                "--etcd-prefix",
                ETCD_PREFIX,
                "check",
                "--subnet-file",
                &file,
            ],
        )
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

    fn state(&self, kept: bool) -> Value {
        let hosts: Vec<Value> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(n, h)| {
                json!({
                    "name": h.name,
                    "netns": h.netns.name,
                    "ip": h.ip.to_string(),
                    "subnet": self.subnet(n + 1).map(|s| s.to_string()),
                    "weftd_log": h.dir.join(format!("weftd.{}.log", h.starts)),
                })
            })
            .collect();
        let pods: Vec<Value> = self
            .pods
            .iter()
            .map(|p| json!({"name": p.name, "netns": p.netns.name, "host": p.host, "ip": p.ip.to_string()}))
            .collect();
        let processes: Vec<Value> = self
            .processes()
            .into_iter()
            .map(|(name, pid)| json!({"name": name, "pid": pid}))
            .collect();
        json!({
            "lab": self.name,
            "owner_pid": std::process::id(),
            "kept": kept,
            "dir": self.dir_path,
            "etcd_endpoint": self.etcd_endpoint(),
            "namespaces": self.namespaces(),
            "processes": processes,
            "hosts": hosts,
            "pods": pods,
        })
    }

    /// Write the state file atomically (temp file + rename).
    fn save_state_as(&self, kept: bool) {
        let path = self.state_file();
        let tmp = self.state_dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(&self.state(kept)).expect("state serializes");
        let written = std::fs::write(&tmp, text + "\n").and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!("write lab state {}: {e}", path.display());
        }
    }

    fn save_state(&self) {
        self.save_state_as(false);
    }

    fn tear_down(&mut self) {
        let started = Instant::now();
        for h in &mut self.hosts {
            if let Some(mut p) = h.weftd.take() {
                p.stop(WEFTD_STOP_GRACE);
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
        self.dir.take();
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

// --- kept labs ----------------------------------------------------------------------------

/// What a state file says, checked before anything acts on it.
#[derive(Debug)]
struct LabState {
    lab: String,
    owner_pid: u32,
    kept: bool,
    dir: PathBuf,
    namespaces: Vec<String>,
    processes: Vec<(String, u32)>,
}

fn read_state(path: &Path) -> Result<LabState, LabError> {
    let bad = |msg: String| LabError::State {
        path: path.to_path_buf(),
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let lab = v["lab"].as_str().unwrap_or_default().to_string();
    let well_formed = lab
        .strip_prefix("wl")
        .and_then(|r| r.split_once('x'))
        .is_some_and(|(a, b)| {
            [a, b]
                .iter()
                .all(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
        });
    if !well_formed {
        return Err(bad(format!("lab name {lab:?} is not wl<pid>x<n>")));
    }
    let dir = PathBuf::from(v["dir"].as_str().unwrap_or_default());
    let dir_ok = dir.is_absolute()
        && dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("weft-lab-{lab}-")));
    if !dir_ok {
        return Err(bad(format!(
            "directory {} is not this lab's",
            dir.display()
        )));
    }
    let mut namespaces = Vec::new();
    for ns in v["namespaces"].as_array().into_iter().flatten() {
        let ns = ns.as_str().unwrap_or_default();
        if !ns.starts_with(&format!("{lab}-")) || ns.contains('/') {
            return Err(bad(format!("namespace {ns:?} is not this lab's")));
        }
        namespaces.push(ns.to_string());
    }
    let processes = v["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let pid = u32::try_from(p["pid"].as_u64()?).ok()?;
            Some((p["name"].as_str()?.to_string(), pid))
        })
        .collect();
    Ok(LabState {
        owner_pid: v["owner_pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0),
        kept: v["kept"].as_bool().unwrap_or(false),
        lab,
        dir,
        namespaces,
        processes,
    })
}

fn state_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(STATE_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("state.json"))
        .filter(|p| p.exists())
        .collect();
    v.sort();
    v
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

/// State files of labs nobody runs any more: left up with `keep`, or whose owning process
/// is gone (an interrupted run). Labs of running processes are skipped.
pub fn kept_labs() -> Vec<PathBuf> {
    state_files()
        .into_iter()
        .filter(|p| match read_state(p) {
            Ok(s) if !s.kept && s.owner_pid != std::process::id() && alive(s.owner_pid) => {
                tracing::info!(
                    "lab {} is in use by running process {}; left alone",
                    s.lab,
                    s.owner_pid
                );
                false
            }
            _ => true,
        })
        .collect()
}

/// State files of the labs this process made (for cleaning up after a signal).
pub fn labs_of_this_process() -> Vec<PathBuf> {
    state_files()
        .into_iter()
        .filter(|p| read_state(p).is_ok_and(|s| s.owner_pid == std::process::id()))
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
    let state = read_state(path)?;
    let mut problems = Vec::new();
    for (name, pid) in &state.processes {
        if let Err(e) = end_lab_process(name, *pid, &state.dir) {
            problems.push(e);
        }
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
        Ok(state.lab)
    } else {
        Err(LabError::Teardown {
            lab: state.lab,
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_config_per_backend() {
        let vx = LabOptions::default();
        assert_eq!(
            vx.net_config(),
            r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#
        );
        let dr = LabOptions {
            direct_routing: true,
            ..LabOptions::default()
        };
        assert!(dr
            .net_config()
            .ends_with(r#""Backend":{"Type":"vxlan","DirectRouting":true}}"#));
        let gw = LabOptions {
            backend: LabBackend::HostGw,
            ..LabOptions::default()
        };
        assert!(gw
            .net_config()
            .ends_with(r#""Backend":{"Type":"host-gw"}}"#));
        for c in [vx, dr, gw] {
            serde_json::from_str::<Value>(&c.net_config()).expect("valid JSON");
        }
    }

    #[test]
    fn options_are_checked() {
        let ok = LabOptions::default();
        assert_eq!(ok.validate(), Ok(()));
        let cases = [
            LabOptions {
                hosts: 0,
                ..ok.clone()
            },
            LabOptions {
                hosts: 201,
                ..ok.clone()
            },
            LabOptions {
                backend: LabBackend::HostGw,
                direct_routing: true,
                ..ok.clone()
            },
            LabOptions {
                network: "10.244.0.1/16".into(),
                ..ok.clone()
            },
            LabOptions {
                subnet_len: 12,
                ..ok.clone()
            },
            LabOptions {
                network: "10.244.0.0/23".into(),
                hosts: 3,
                ..ok.clone()
            },
            LabOptions {
                pods_per_host: 254,
                ..ok.clone()
            },
        ];
        for c in cases {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }

    #[test]
    fn state_files_that_name_foreign_things_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let write = |v: Value| std::fs::write(&path, v.to_string()).unwrap();
        let good = json!({"lab": "wl12x0", "owner_pid": 1, "kept": true,
            "dir": "/tmp/weft-lab-wl12x0-abc", "namespaces": ["wl12x0-sw"],
            "processes": [{"name": "etcd", "pid": 5}]});
        write(good.clone());
        let s = read_state(&path).unwrap();
        assert_eq!(s.namespaces, vec!["wl12x0-sw"]);
        assert_eq!(s.processes, vec![("etcd".to_string(), 5)]);
        for (key, value) in [
            ("lab", json!("root")),
            ("dir", json!("/")),
            ("dir", json!("/tmp/weft-lab-wl99x0-abc")),
            ("namespaces", json!(["other-ns"])),
        ] {
            let mut v = good.clone();
            v[key] = value;
            write(v);
            assert!(read_state(&path).is_err(), "{key}");
        }
    }
}
