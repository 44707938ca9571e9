//! Child processes: spawning with a parent-death signal, stopping by pid, and the weft
//! binaries built by cargo next to the test executable.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Spawn `cmd` with stdout+stderr going to `log`. The child also gets SIGKILL if the
    /// spawning thread dies, so a crashed test cannot leave it running.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        set_parent_death_signal(&mut cmd);
        Self::spawn_prepared(name, cmd, log)
    }

    /// Spawn `cmd` in a session of its own and without a parent-death signal, so it keeps
    /// running after this process exits (for a lab left up with `--keep`). Dropping the
    /// handle still stops it; [`Proc::release`] lets it go.
    pub fn spawn_detached(name: &str, mut cmd: Command, log: &Path) -> Proc {
        start_new_session(&mut cmd);
        Self::spawn_prepared(name, cmd, log)
    }

    fn spawn_prepared(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let out = std::fs::File::create(log).expect("create log file");
        let err = out.try_clone().expect("clone log handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Send a signal to this child (by its pid).
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// Exit status if it has exited.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Stop gracefully (SIGTERM), escalating to SIGKILL after `grace`. Returns the status.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Kill at once (SIGKILL), as a crash would.
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Let the process run on: the handle forgets it (no signal on drop). Returns its pid.
    pub fn release(mut self) -> Option<u32> {
        self.child.take().map(|c| c.id())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only makes one
    // async-signal-safe syscall (prctl), touching no locks or allocations.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

#[allow(unsafe_code)]
fn start_new_session(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only makes one
    // async-signal-safe syscall (setsid), touching no locks or allocations.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

/// Path of a binary built by cargo for this workspace (`weftd`, `netctl`, `weft`): in
/// `$WEFT_BIN_DIR` when that is set, else next to the running executable (`target/<profile>`,
/// also for test executables in `target/<profile>/deps`).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("WEFT_BIN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let exe = std::env::current_exe().expect("current exe");
            let mut dir = exe.parent().expect("exe dir").to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: build the workspace binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// Put a copy of the executable `from` at `to` without this process ever holding `to` open
/// for writing. A file open for writing here stays open in any child another test thread
/// forks at that moment, until the child execs; running the copy in that window fails with
/// ETXTBSY ("Text file busy"). A hard link where the filesystem allows one, else `cp` in a
/// child process of its own.
pub fn copy_executable(from: &Path, to: &Path) {
    if std::fs::hard_link(from, to).is_ok() {
        return;
    }
    let status = Command::new("cp")
        .arg("--")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp {} {}: {status}",
        from.display(),
        to.display()
    );
}

/// A plain HTTP/1.0 GET on loopback: (status, body). `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A metric's value from a Prometheus/OpenMetrics text body.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Run a command to completion with a time bound: (exit code, stdout, stderr).
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> (i32, String, String) {
    run_input(&mut cmd, None, timeout)
}

/// Run a command to completion within `timeout`, feeding `input` on stdin. Output goes to
/// temp files, so a chatty child can never block on a full pipe while we wait for it.
pub fn run_input(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (o, e) = (dir.path().join("out"), dir.path().join("err"));
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(std::fs::File::create(&o).unwrap())
    .stderr(std::fs::File::create(&e).unwrap());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|err| panic!("spawn {cmd:?}: {err}"));
    if let Some(data) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let data = data.to_vec();
        // A writer thread, so a child that exits without reading cannot block the caller.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command {cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(o).unwrap_or_default(),
        std::fs::read_to_string(e).unwrap_or_default(),
    )
}

/// A running weftd in a network namespace of its own (weftd programs the kernel of the
/// namespace it runs in, so it never runs in the machine's root namespace here), with
/// `--iface lo`, a test public IP, its own subnet file and health port. etcd on the root
/// namespace's loopback and the health port are joined to the namespace by TCP relays
/// ([`crate::forward`]), so tests use the same 127.0.0.1 addresses as before.
#[derive(Debug)]
pub struct Weftd {
    pub proc: Proc,
    pub port: u16,
    pub subnet_file: PathBuf,
    pub node: String,
    pub args: Vec<String>,
    /// A program (and its arguments) weftd runs under, e.g. `setpriv …`; empty for none.
    prefix: Vec<String>,
    _relays: Vec<crate::forward::Forward>,
    pub ns: crate::netns::Netns,
    _dir: tempfile::TempDir,
}

/// Who a [`Weftd`] is: its node name, the interface it uses and the public IP it publishes.
#[derive(Clone, Copy, Debug)]
pub struct WeftdHost<'a> {
    pub node: &'a str,
    pub iface: &'a str,
    pub public_ip: &'a str,
}

/// The 127.0.0.1 ports named in `--etcd-endpoints` values.
fn etcd_ports(args: &[String]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = match a.strip_prefix("--etcd-endpoints=") {
            Some(v) => Some(v.to_string()),
            None if a == "--etcd-endpoints" => it.next().cloned(),
            None => None,
        };
        for url in value.iter().flat_map(|v| v.split(',')) {
            if let Some(port) = url
                .rsplit_once(':')
                .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
            {
                out.push(port);
            }
        }
    }
    out
}

impl Weftd {
    /// Start weftd for `node` with `public_ip`; `etcd_args` from `Etcd::cli_args`, `extra`
    /// appended last.
    pub fn start(node: &str, public_ip: &str, etcd_args: &[String], extra: &[&str]) -> Weftd {
        Self::start_under(&[], node, public_ip, etcd_args, extra)
    }

    /// As [`Weftd::start`], with weftd started through `prefix`: a program and its arguments
    /// that exec the command following them (such as `setpriv --no-new-privs`), so the pid is
    /// still weftd's.
    pub fn start_under(
        prefix: &[&str],
        node: &str,
        public_ip: &str,
        etcd_args: &[String],
        extra: &[&str],
    ) -> Weftd {
        let dir = tempfile::Builder::new().prefix("weftd-").tempdir().unwrap();
        let subnet_file = dir.path().join("run/subnet.env");
        let ns = crate::netns::Netns::new("wd");
        ns.ip(&["link", "set", "lo", "up"]);
        let (relays, port) = Self::relays(&ns, etcd_args);
        Self::start_in(
            dir,
            subnet_file,
            ns,
            relays,
            port,
            prefix.iter().map(|s| s.to_string()).collect(),
            WeftdHost {
                node,
                iface: "lo",
                public_ip,
            },
            etcd_args,
            extra,
        )
    }

    /// As [`Weftd::start`], in `ns`, prepared by the caller (an underlay link, routes),
    /// with `--iface iface`. The namespace is deleted when the handle drops.
    pub fn start_in_namespace(
        ns: crate::netns::Netns,
        host: WeftdHost<'_>,
        etcd_args: &[String],
        extra: &[&str],
    ) -> Weftd {
        let dir = tempfile::Builder::new().prefix("weftd-").tempdir().unwrap();
        let subnet_file = dir.path().join("run/subnet.env");
        ns.ip(&["link", "set", "lo", "up"]);
        let relays = Self::relays(&ns, etcd_args);
        let port = relays.1;
        Self::start_in(
            dir,
            subnet_file,
            ns,
            relays.0,
            port,
            Vec::new(),
            host,
            etcd_args,
            extra,
        )
    }

    /// TCP relays from `ns`'s loopback to etcd's ports on the root namespace's, and from a
    /// free port on the root namespace's loopback to the same port in `ns` (weftd's health
    /// port): the relays and that port.
    fn relays(
        ns: &crate::netns::Netns,
        etcd_args: &[String],
    ) -> (Vec<crate::forward::Forward>, u16) {
        let port = crate::free_port();
        let local = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut relays = Vec::new();
        for p in etcd_ports(etcd_args) {
            relays.push(
                crate::forward::into_ns(&ns.path(), local(p), local(p)).expect("relay to etcd"),
            );
        }
        relays.push(
            crate::forward::out_of_ns(&ns.path(), local(port), local(port))
                .expect("relay to the health port"),
        );
        (relays, port)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_in(
        dir: tempfile::TempDir,
        subnet_file: PathBuf,
        ns: crate::netns::Netns,
        relays: Vec<crate::forward::Forward>,
        port: u16,
        prefix: Vec<String>,
        host: WeftdHost<'_>,
        etcd_args: &[String],
        extra: &[&str],
    ) -> Weftd {
        let WeftdHost {
            node,
            iface,
            public_ip,
        } = host;
        let mut args: Vec<String> = vec![
            "--node-name".into(),
            node.into(),
            "--iface".into(),
            iface.into(),
            "--public-ip".into(),
            public_ip.into(),
            "--subnet-file".into(),
            subnet_file.display().to_string(),
            "--healthz-ip".into(),
            "127.0.0.1".into(),
            "--healthz-port".into(),
            port.to_string(),
        ];
        args.extend(etcd_args.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = match prefix.split_first() {
            None => ns.cmd(bin("weftd")),
            Some((program, rest)) => {
                let mut c = ns.cmd(program);
                c.args(rest).arg(bin("weftd"));
                c
            }
        };
        cmd.args(&args)
            .env("WEFT_LOG", "info")
            .env_remove("NODE_NAME");
        let log = dir.path().join(format!("weftd-{node}.log"));
        let proc = Proc::spawn(&format!("weftd-{node}"), cmd, &log);
        Weftd {
            proc,
            port,
            subnet_file,
            node: node.into(),
            args,
            prefix,
            _relays: relays,
            ns,
            _dir: dir,
        }
    }

    /// Stop (SIGTERM) and start again with the same flags, subnet file, directory and
    /// namespace.
    pub fn restart(self) -> Weftd {
        let Weftd {
            mut proc,
            subnet_file,
            node,
            args,
            prefix,
            _relays,
            ns,
            port,
            _dir,
        } = self;
        proc.stop(Duration::from_secs(5));
        // args: --node-name N --iface IF --public-ip IP --subnet-file F --healthz-ip I
        // --healthz-port P, then the etcd and extra flags.
        let (iface, public_ip) = (args[3].clone(), args[5].clone());
        Self::start_in(
            _dir,
            subnet_file,
            ns,
            _relays,
            port,
            prefix,
            WeftdHost {
                node: &node,
                iface: &iface,
                public_ip: &public_ip,
            },
            &args[12..],
            &[],
        )
    }

    pub fn readyz(&self) -> Option<(u16, String)> {
        http_get(self.port, "/readyz")
    }

    pub fn metrics(&self) -> String {
        http_get(self.port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Wait until /readyz says ready; panics with the log on timeout.
    pub async fn wait_ready(&self, timeout: Duration) {
        let start = std::time::Instant::now();
        loop {
            if let Some((200, _)) = self.readyz() {
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "weftd {} not ready after {timeout:?}; readyz={:?}\nlog:\n{}",
                    self.node,
                    self.readyz(),
                    self.proc.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn subnet_env(&self) -> String {
        std::fs::read_to_string(&self.subnet_file).unwrap_or_default()
    }
}

/// The capability sets and no_new_privs of one thread, from its `/proc/…/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadCaps {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

impl ThreadCaps {
    /// Permitted, effective and bounding `set`, inheritable and ambient empty, no_new_privs.
    pub fn only(set: u64) -> ThreadCaps {
        ThreadCaps {
            inheritable: 0,
            permitted: set,
            effective: set,
            bounding: set,
            ambient: 0,
            no_new_privs: true,
        }
    }

    /// Parse the `Cap*:` and `NoNewPrivs:` lines of a status file.
    pub fn parse(status: &str) -> Option<ThreadCaps> {
        let field = |name: &str| {
            status.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.strip_prefix(':'))
                    .map(str::trim)
            })
        };
        let hex = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
        Some(ThreadCaps {
            inheritable: hex("CapInh")?,
            permitted: hex("CapPrm")?,
            effective: hex("CapEff")?,
            bounding: hex("CapBnd")?,
            ambient: hex("CapAmb")?,
            no_new_privs: field("NoNewPrivs")? == "1",
        })
    }
}

/// Every thread of process `pid` with its capabilities: (thread id, sets).
pub fn thread_caps(pid: u32) -> Vec<(u32, ThreadCaps)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if let Some(caps) = ThreadCaps::parse(&status) {
            out.push((tid, caps));
        }
    }
    out.sort_by_key(|(tid, _)| *tid);
    out
}

/// Run netctl with `args` (bounded): (exit code, stdout, stderr).
pub fn netctl(args: &[String]) -> (i32, String, String) {
    let mut cmd = Command::new(bin("netctl"));
    cmd.args(args);
    run_bounded(cmd, Duration::from_secs(30))
}
