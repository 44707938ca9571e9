//! Network namespaces for kernel tests, and a runner for the `weft` CNI binary.
//!
//! Every namespace gets a unique name (`wt-<tag>-<pid>-<n>`) and is deleted when its handle
//! drops, also when the test panics. Tests never touch the root namespace: commands are run
//! inside a namespace with `ip netns exec`, and the plugin's "host" is a test namespace too.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Panic with a clear message unless running as root (kernel tests need it).
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "kernel tests create network namespaces and need root: run `sudo bash tests/run.sh`"
    );
}

/// A network namespace owned by the test.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        require_root();
        let name = format!(
            "wt-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self::named(&name)
    }

    /// A namespace with exactly this name (the caller makes it unique); panics if it exists.
    pub fn named(name: &str) -> Netns {
        require_root();
        let (code, _, err) = run(Command::new("ip").args(["netns", "add", name]), None);
        assert_eq!(code, 0, "ip netns add {name}: {err}");
        Netns {
            name: name.to_string(),
        }
    }

    /// Leave the namespace in place: the handle is consumed without deleting it. Returns
    /// its name (for a later `ip netns del`).
    pub fn keep(self) -> String {
        let mut this = std::mem::ManuallyDrop::new(self);
        std::mem::take(&mut this.name)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// A command that runs `program` inside this namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Run `program args` inside the namespace: (exit code, stdout, stderr).
    pub fn exec(&self, program: &str, args: &[&str]) -> (i32, String, String) {
        run(self.cmd(program).args(args), None)
    }

    /// A namespace with loopback up and a veth pair `u0`/`u1` as a dual-stack test underlay,
    /// `u0` holding 10.9.0.1/24 and fd00:99::1/64 (without duplicate address detection, so
    /// it is usable at once); returns it and `u0`'s interface index.
    pub fn with_underlay(tag: &str) -> (Netns, u32) {
        let ns = Netns::new(tag);
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["link", "add", "u0", "type", "veth", "peer", "name", "u1"]);
        ns.ip(&["addr", "add", "10.9.0.1/24", "dev", "u0"]);
        ns.ip(&["addr", "add", "fd00:99::1/64", "dev", "u0", "nodad"]);
        ns.ip(&["link", "set", "u0", "up"]);
        ns.ip(&["link", "set", "u1", "up"]);
        let out = ns.ip(&["-o", "link", "show", "u0"]);
        let index = out
            .split(':')
            .next()
            .and_then(|i| i.trim().parse().ok())
            .unwrap_or_else(|| panic!("no index in {out:?}"));
        (ns, index)
    }

    /// `ip <args>` in this namespace; panics if it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let (code, out, err) = run(
            Command::new("ip").arg("-n").arg(&self.name).args(args),
            None,
        );
        assert_eq!(code, 0, "ip -n {} {}: {err}", self.name, args.join(" "));
        out
    }

    /// Names of the links in this namespace.
    pub fn links(&self) -> Vec<String> {
        let v: Value = serde_json::from_str(&self.ip(&["-j", "link", "show"])).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    /// The veths in this namespace (the host ends the CNI plugin makes are `veth…`).
    pub fn veths(&self) -> Vec<String> {
        self.links()
            .into_iter()
            .filter(|l| l.starts_with("veth"))
            .collect()
    }

    /// One ICMP echo to `dst` from inside the namespace, waiting at most 2 s.
    pub fn ping(&self, dst: &str) -> bool {
        self.exec("ping", &["-c", "1", "-W", "2", dst]).0 == 0
    }

    /// One ICMPv6 echo (`ping -6`) to `dst` from inside the namespace, waiting at most 2 s.
    pub fn ping6(&self, dst: &str) -> bool {
        self.exec("ping", &["-6", "-c", "1", "-W", "2", dst]).0 == 0
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]), None);
    }
}

/// Run a command to completion within 60 s, feeding `input` on stdin.
pub fn run(cmd: &mut Command, input: Option<&[u8]>) -> (i32, String, String) {
    crate::procs::run_input(cmd, input, Duration::from_secs(60))
}

/// What one plugin call returned.
#[derive(Debug)]
pub struct CniOut {
    pub exit: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CniOut {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// The error code of a failed call (panics on success).
    pub fn code(&self) -> u64 {
        assert_ne!(self.exit, 0, "expected a failure, got {}", self.stdout);
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {}", self.stdout))
    }

    pub fn ok(self) -> CniOut {
        assert_eq!(
            self.exit, 0,
            "plugin failed: {} {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Run the CNI plugin binary `plugin` inside `host` with `env` and `stdin`.
pub fn cni_call(plugin: &PathBuf, host: &Netns, env: &[(&str, &str)], stdin: &[u8]) -> CniOut {
    let mut cmd = host.cmd(plugin);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (exit, stdout, stderr) = run(&mut cmd, Some(stdin));
    CniOut {
        exit,
        stdout,
        stderr,
    }
}
