//! Rootful podman for tests, kept away from the machine's podman state and network.
//!
//! [`Podman`] gives podman a "host" that is a test network namespace (every call runs under
//! `nsenter --net=/run/netns/<ns>`, never `ip netns exec`, which remounts /sys and hides the
//! cgroup mount from runc), and redirects everything podman keeps into a temp dir: storage
//! (`storage.conf`: driver vfs, graph root, run root), its tmp dir, locks and events
//! (`containers.conf`), runc's state (`--root`, through a wrapper named in
//! `[engine.runtimes]`), and `/var/lib` and `/var/tmp` — where podman 4.3 writes the image
//! blob-info cache, libcni's result cache and build temp files with no setting to move them —
//! through bind mounts that exist only in a private mount namespace held by a helper process.
//! Containers started with `--cgroup-parent` [`Podman::cgroup_parent`] have their cgroups
//! under a parent named after the test namespace, removed on drop.
//!
//! containers.conf selects the CNI network backend with a plugin directory (`cni-bin`) and a
//! config directory (`net.d`) in the temp dir, both empty: a test that wants a network puts
//! its plugin and conflist there.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::netns::{self, Netns};
use crate::procs::{self, Proc};

/// What to run when a program the podman tests need is missing.
pub const INSTALL_HINT: &str =
    "run `sudo bash tests/install-deps.sh` (it installs podman, runc and busybox-static)";

/// How long one podman call may take.
pub const PODMAN_TIMEOUT: Duration = Duration::from_secs(60);

/// `name` as found on PATH (plus the sbin directories root normally has).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// [`find_program`], failing the test with [`INSTALL_HINT`] when it is missing.
pub fn require_program(name: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| panic!("{name} not found: {INSTALL_HINT}"))
}

/// Poll `f` until it holds, for at most `timeout`.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
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

/// podman with its state in a temp dir, its host side in a test namespace.
#[derive(Debug)]
pub struct Podman {
    /// The private mount namespace (`/var/lib` and `/var/tmp` bound into `dir` in it).
    /// Dropped before `dir` and `host`, so its namespace is gone before they are removed.
    helper: Proc,
    dir: tempfile::TempDir,
    /// The network namespace podman treats as its host.
    pub host: Netns,
    /// Absolute cgroup path containers (and their conmon) are placed under when started
    /// with `--cgroup-parent` this.
    pub cgroup_parent: String,
}

impl Podman {
    /// A fresh podman environment; `tag` names the test namespace (and the cgroup parent).
    pub fn new(tag: &str) -> Podman {
        netns::require_root();
        for prog in ["podman", "conmon", "runc", "nsenter", "unshare", "mount"] {
            require_program(prog);
        }
        let runc = require_program("runc");
        let host = Netns::new(tag);
        let dir = tempfile::Builder::new()
            .prefix("wt-podman-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for sub in ["cni-bin", "net.d", "runtime", "tmp", "varlib", "vartmp"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
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
    /// mounted in it propagates out) where `/var/lib` is `dir/varlib` and `/var/tmp` is
    /// `dir/vartmp`.
    fn mount_namespace(d: &Path) -> Proc {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "slave", "sh", "-c"])
            .arg("mount -n --bind \"$1\" /var/lib && mount -n --bind \"$2\" /var/tmp && exec sleep 600")
            .arg("sh")
            .arg(d.join("varlib"))
            .arg(d.join("vartmp"));
        let mut helper = Proc::spawn("mount-ns", cmd, &d.join("mount-ns.log"));
        let pid = helper.pid().expect("helper pid");
        let own = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            // `sleep` runs only after the bind mounts succeeded.
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

    /// `rel` inside the temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A command running `program` where podman runs: in the private mount namespace, with
    /// the test namespace as its network, and the environment that points podman at the
    /// temp dir (`CONTAINERS_CONF`, `CONTAINERS_STORAGE_CONF`, `CONTAINERS_REGISTRIES_CONF`,
    /// `TMPDIR`). For scripts that call podman themselves.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let pid = self.helper.pid().expect("helper pid");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{pid}/ns/mnt"))
            .arg(format!("--net={}", self.host.path().display()))
            .arg(program)
            .env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("TMPDIR", self.path("tmp"));
        cmd
    }

    /// `podman <args>`: (exit code, stdout, stderr), bounded by [`PODMAN_TIMEOUT`].
    pub fn podman(&self, args: &[&str]) -> (i32, String, String) {
        procs::run_input(self.command("podman").args(args), None, PODMAN_TIMEOUT)
    }

    /// `podman <args>` with `input` on its stdin.
    pub fn podman_input(&self, args: &[&str], input: &[u8]) -> (i32, String, String) {
        procs::run_input(
            self.command("podman").args(args),
            Some(input),
            PODMAN_TIMEOUT,
        )
    }

    /// `podman <args>`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.podman(args);
        assert_eq!(
            code,
            0,
            "podman {} failed ({code}): {err}\n{out}",
            args.join(" ")
        );
        out
    }

    /// The cgroup directories under `cgroup_parent`, one per mounted hierarchy.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
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
