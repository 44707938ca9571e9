//! Least privilege: the real weftd, in a network namespace of its own against a real etcd,
//! keeps only CAP_NET_ADMIN on every thread and still does all its work (leases, routes,
//! nftables through `nft`, /metrics); it reads the etcd TLS files before it drops the rest;
//! and without CAP_NET_ADMIN it stops at once, naming it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use weft_agent::lease::LeaseAttrs;
use weft_agent::store::{CreateOutcome, LeaseStore};
use weft_backends::backend::{BackendData, VxlanData};
use weft_backends::{BackendKind, MacAddr};
use weft_tests::etcd::Etcd;
use weft_tests::netns::Netns;
use weft_tests::procs::{bin, metric, run_bounded, thread_caps, Proc, ThreadCaps, Weftd};
use weft_tests::wait_for;

const PREFIX: &str = "/coreos.com/network";
const CONFIG: &[u8] = br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const READY: Duration = Duration::from_secs(30);
/// Capability numbers (linux/capability.h) as bits of the /proc status masks.
const NET_ADMIN: u64 = 1 << 12;
const NET_RAW: u64 = 1 << 13;
/// An unprivileged uid and gid (`nobody`).
const NOBODY: u32 = 65534;

/// Every thread of weftd holds `expected`; returns how many threads there are.
fn assert_every_thread(w: &Weftd, expected: ThreadCaps) -> usize {
    let pid = w.proc.pid().expect("running");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "weftd", "pid {pid} is weftd itself");
    let threads = thread_caps(pid);
    assert!(!threads.is_empty(), "no threads of {pid}");
    for (tid, caps) in &threads {
        assert_eq!(
            *caps,
            expected,
            "thread {tid} of weftd {pid}: {caps:#x?}\nlog:\n{}",
            w.proc.log_text()
        );
    }
    threads.len()
}

/// A peer's lease for a subnet other than `own` (`10.244.X.1/24` as in subnet.env);
/// returns the peer subnet.
async fn put_peer_lease(etcd: &Etcd, own_env: &str) -> String {
    let third = if own_env.contains("FLANNEL_SUBNET=10.244.200.") {
        201
    } else {
        200
    };
    let name = format!("10.244.{third}.0-24");
    let value = LeaseAttrs::for_node(
        "peer-caps",
        BackendKind::Vxlan,
        Some(weft_agent::lease::Endpoint {
            public_ip: "192.0.2.77".parse().unwrap(),
            data: Some(BackendData::Vxlan(VxlanData {
                vni: 1,
                vtep_mac: MacAddr::derive_from("peer-caps"),
            })),
        }),
        None,
    )
    .encode();
    let store = etcd.store(PREFIX).await;
    let created = store
        .create(&name, &value, Some(Duration::from_secs(120)))
        .await
        .unwrap();
    assert!(matches!(created, CreateOutcome::Created(_)), "{created:?}");
    format!("10.244.{third}.0/24")
}

/// The peer's route is programmed, the masquerade table is in place, /metrics answers.
async fn assert_weftd_works(etcd: &Etcd, w: &Weftd) {
    let peer = put_peer_lease(etcd, &w.subnet_env()).await;
    wait_for(
        "the peer's route (protocol 87)",
        Duration::from_secs(20),
        || async {
            w.ns.ip(&["route", "show", "proto", "87"])
                .contains(&peer)
                .then_some(())
        },
    )
    .await;
    wait_for(
        "the nftables table ip weft (--ip-masq, applied by nft)",
        Duration::from_secs(20),
        || async { (w.ns.exec("nft", &["list", "table", "ip", "weft"]).0 == 0).then_some(()) },
    )
    .await;
    let m = w.metrics();
    assert_eq!(metric(&m, "weft_lease_held"), Some(1.0), "{m}");
    assert_eq!(
        metric(&m, "weft_dataplane_peers_programmed{family=\"ipv4\"}"),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_keeps_only_net_admin_on_every_thread_and_keeps_working() {
    let etcd = Etcd::start().await;
    etcd.store(PREFIX).await.put_config(CONFIG).await.unwrap();
    let w = Weftd::start("node-caps", "192.0.2.20", &etcd.cli_args(), &["--ip-masq"]);
    w.wait_ready(READY).await;
    // Work first, so the threads started for it (the blocking pool that runs nft) exist.
    assert_weftd_works(&etcd, &w).await;
    let threads = assert_every_thread(&w, ThreadCaps::only(NET_ADMIN));
    assert!(
        threads >= 3,
        "the main thread and the runtime's workers: {threads}"
    );
    let log = w.proc.log_text();
    assert_eq!(
        log.matches("capabilities=CAP_NET_ADMIN").count(),
        1,
        "the kept set is logged once:\n{log}"
    );
    assert!(!log.contains("bounding set"), "{log}");
}

/// As the DaemonSet starts it: uid 0, bounding set `NET_ADMIN` (capabilities drop ALL, add
/// NET_ADMIN), so no CAP_SETPCAP, and no_new_privs (allowPrivilegeEscalation: false). That
/// is all weftd needs: NET_RAW is not, so the manifests no longer grant it. A container
/// that still grants NET_RAW gets a warning, and nft still cannot gain it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_as_the_daemonset_starts_it_needs_net_admin_only() {
    let etcd = Etcd::start().await;
    etcd.store(PREFIX).await.put_config(CONFIG).await.unwrap();
    let daemonset = [
        "setpriv",
        "--bounding-set",
        "-all,+net_admin",
        "--inh-caps",
        "-all",
        "--no-new-privs",
    ];
    let w = Weftd::start_under(
        &daemonset,
        "node-ds",
        "192.0.2.22",
        &etcd.cli_args(),
        &["--ip-masq"],
    );
    w.wait_ready(READY).await;
    assert_weftd_works(&etcd, &w).await;
    assert_every_thread(&w, ThreadCaps::only(NET_ADMIN));
    drop(w);

    let old_manifest = [
        "setpriv",
        "--bounding-set",
        "-all,+net_admin,+net_raw",
        "--inh-caps",
        "-all",
        "--no-new-privs",
    ];
    let w = Weftd::start_under(
        &old_manifest,
        "node-raw",
        "192.0.2.23",
        &etcd.cli_args(),
        &[],
    );
    w.wait_ready(READY).await;
    assert_every_thread(
        &w,
        ThreadCaps {
            bounding: NET_ADMIN | NET_RAW,
            ..ThreadCaps::only(NET_ADMIN)
        },
    );
    let log = w.proc.log_text();
    assert!(
        log.contains("WARN") && log.contains("bounding=CAP_NET_RAW"),
        "{log}"
    );
}

/// Copy `from` to `dir/name`, owned by `nobody`, mode 0400.
fn copy_for_nobody(from: &Path, dir: &Path, name: &str) -> String {
    let to = dir.join(name);
    std::fs::copy(from, &to).unwrap();
    std::os::unix::fs::chown(&to, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o400)).unwrap();
    to.display().to_string()
}

/// The TLS files sit in a directory only `nobody` may enter: uid 0 reads them only through
/// CAP_DAC_READ_SEARCH or CAP_DAC_OVERRIDE, which weftd drops. It works because weftd
/// reads them at start, before the drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_are_read_before_the_drop() {
    let etcd = Etcd::start_tls().await;
    etcd.store(PREFIX).await.put_config(CONFIG).await.unwrap();
    let tls = etcd.tls().unwrap();
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("secret");
    std::fs::create_dir(&dir).unwrap();
    let ca = copy_for_nobody(&tls.ca, &dir, "ca.pem");
    let cert = copy_for_nobody(&tls.client_cert, &dir, "client.pem");
    let key = copy_for_nobody(&tls.client_key, &dir, "client.key");
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    // The control: uid 0 holding only CAP_NET_ADMIN cannot read the key.
    let mut cat = Command::new("setpriv");
    cat.args(["--bounding-set", "-all,+net_admin", "--inh-caps", "-all"])
        .args(["cat", &key]);
    let (code, _, err) = run_bounded(cat, Duration::from_secs(10));
    assert_ne!(code, 0, "uid 0 without DAC capabilities read {key}");
    assert!(err.contains("Permission denied"), "{err}");

    let args: Vec<String> = [
        "--etcd-endpoints",
        &etcd.endpoint(0),
        "--etcd-cafile",
        &ca,
        "--etcd-certfile",
        &cert,
        "--etcd-keyfile",
        &key,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let w = Weftd::start("node-tlscaps", "192.0.2.21", &args, &[]);
    w.wait_ready(READY).await;
    assert_every_thread(&w, ThreadCaps::only(NET_ADMIN));
}

/// weftd in a fresh namespace of its own, through `prefix` (may be empty), bounded.
fn run_weftd(prefix: &[&str], args: &[&str]) -> (i32, String, String) {
    let ns = Netns::new("cap");
    let mut cmd = match prefix.split_first() {
        None => ns.cmd(bin("weftd")),
        Some((program, rest)) => {
            let mut c = ns.cmd(program);
            c.args(rest).arg(bin("weftd"));
            c
        }
    };
    cmd.args(["--iface", "lo", "--healthz-port", "0"])
        .args(args)
        .env("WEFT_LOG", "info");
    run_bounded(cmd, Duration::from_secs(30))
}

#[test]
fn a_missing_or_unreadable_tls_file_stops_weftd_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let subnet_file = dir.path().join("subnet.env").display().to_string();
    let absent = dir.path().join("absent-ca.pem").display().to_string();
    let endpoints = "https://127.0.0.1:9";
    let (code, _, err) = run_weftd(
        &[],
        &[
            "--etcd-endpoints",
            endpoints,
            "--subnet-file",
            &subnet_file,
            "--etcd-cafile",
            &absent,
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&absent) && err.contains("--etcd-cafile") && err.contains("No such file"),
        "{err}"
    );
    // Before the drop and before anything else started.
    assert!(
        !err.contains("capabilities=") && !err.contains("using interface"),
        "{err}"
    );

    // A directory where the key should be.
    let cert = dir.path().join("client.pem");
    std::fs::write(&cert, "PEM").unwrap();
    let (cert, key) = (cert.display().to_string(), dir.path().display().to_string());
    let (code, _, err) = run_weftd(
        &[],
        &[
            "--etcd-endpoints",
            endpoints,
            "--subnet-file",
            &subnet_file,
            "--etcd-certfile",
            &cert,
            "--etcd-keyfile",
            &key,
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--etcd-keyfile") && err.contains(&key) && err.contains("cannot read it"),
        "{err}"
    );
    assert!(!dir.path().join("subnet.env").exists());
}

#[test]
fn without_net_admin_weftd_stops_at_once_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let subnet_file = dir.path().join("subnet.env").display().to_string();
    let common = [
        "--etcd-endpoints",
        "http://127.0.0.1:9",
        "--subnet-file",
        &subnet_file,
    ];
    let nobody = NOBODY.to_string();
    for prefix in [
        // Not root.
        vec![
            "setpriv",
            "--reuid",
            &nobody,
            "--regid",
            &nobody,
            "--clear-groups",
        ],
        // Root, but NET_ADMIN taken away.
        vec![
            "setpriv",
            "--bounding-set",
            "-net_admin",
            "--inh-caps",
            "-all",
        ],
    ] {
        let (code, _, err) = run_weftd(&prefix, &common);
        assert_eq!(code, 2, "{prefix:?}: {err}");
        assert!(
            err.contains("needs CAP_NET_ADMIN") && err.contains("add: [NET_ADMIN]"),
            "{prefix:?}: {err}"
        );
        assert!(!err.contains("using interface"), "{prefix:?}: {err}");
    }
}

/// A health port below 1024 is bound after the drop, so weftd keeps CAP_NET_BIND_SERVICE
/// for it (and only then).
#[test]
fn a_health_port_below_1024_keeps_net_bind_service() {
    let ns = Netns::new("low");
    ns.ip(&["link", "set", "lo", "up"]);
    let (code, start, _) = ns.exec("sysctl", &["-n", "net.ipv4.ip_unprivileged_port_start"]);
    assert_eq!((code, start.trim()), (0, "1024"), "the kernel's default");
    let dir = tempfile::tempdir().unwrap();
    let subnet_file = dir.path().join("subnet.env").display().to_string();
    let mut cmd = ns.cmd(bin("weftd"));
    // etcd unreachable on purpose: the health server runs while weftd retries.
    cmd.args(["--etcd-endpoints", "http://127.0.0.1:9", "--iface", "lo"])
        .args(["--subnet-file", &subnet_file])
        .args(["--healthz-ip", "127.0.0.1", "--healthz-port", "80"])
        .env("WEFT_LOG", "info");
    let mut p = Proc::spawn("weftd-port-80", cmd, &dir.path().join("weftd.log"));
    let pid = p.pid().unwrap();
    // 127.0.0.1:80 listening (state 0A), in weftd's own namespace.
    let listening = || {
        std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("0100007F:0050 00000000:0000 0A"))
    };
    let start = Instant::now();
    while !listening() {
        assert!(
            p.try_exit().is_none() && start.elapsed() < Duration::from_secs(20),
            "weftd does not listen on port 80:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let bind_and_admin = (1 << 10) | NET_ADMIN;
    for (tid, caps) in thread_caps(pid) {
        assert_eq!(caps, ThreadCaps::only(bind_and_admin), "thread {tid}");
    }
    assert!(p
        .log_text()
        .contains("capabilities=CAP_NET_BIND_SERVICE, CAP_NET_ADMIN"));
    p.stop(Duration::from_secs(5));
}

#[test]
fn install_cni_keeps_no_capability_and_cleanup_net_admin_only() {
    // The modes that run and exit log what they keep; install-cni needs none at all.
    let dir = tempfile::tempdir().unwrap();
    let (b, c) = (dir.path().join("bin"), dir.path().join("net.d"));
    let plugin = bin("weft").display().to_string();
    let mut cmd = Command::new(bin("weftd"));
    cmd.args(["install-cni", "--cni-bin-dir"])
        .arg(&b)
        .arg("--cni-conf-dir")
        .arg(&c)
        .args(["--cni-plugin-source", &plugin])
        .env("WEFT_LOG", "info");
    let (code, _, err) = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("capabilities=none"), "{err}");
    assert!(c.join("10-weft.conflist").exists());

    let c = c.display().to_string();
    let (code, _, err) = run_weftd(&[], &["--cleanup", "--cni-conf-dir", &c]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("capabilities=CAP_NET_ADMIN"), "{err}");
    assert!(!dir.path().join("net.d/10-weft.conflist").exists());
}
