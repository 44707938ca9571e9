//! Installing weft on a node: `weftd install-cni` (the init container's job, also done at
//! start with `--install-cni`), `--cleanup` of the conflist, and weftd as PID 1 of a pid
//! namespace (signals, reaping). Files go to temp dirs; processes run in namespaces the test
//! creates.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_tests::netns::Netns;
use weft_tests::procs::{bin, run_bounded, thread_caps, Proc, ThreadCaps};

fn weftd(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(bin("weftd"));
    cmd.args(args).env("WEFT_LOG", "info");
    run_bounded(cmd, Duration::from_secs(30))
}

fn install_args<'a>(bin_dir: &'a str, conf_dir: &'a str, plugin: &'a str) -> Vec<&'a str> {
    vec![
        "install-cni",
        "--cni-bin-dir",
        bin_dir,
        "--cni-conf-dir",
        conf_dir,
        "--cni-plugin-source",
        plugin,
    ]
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

#[test]
fn install_cni_copies_the_plugin_writes_the_conflist_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let (b, c) = (dir.path().join("bin"), dir.path().join("net.d"));
    let (bs, cs) = (b.display().to_string(), c.display().to_string());
    let plugin = bin("weft").display().to_string();
    let (code, _, err) = weftd(&install_args(&bs, &cs, &plugin));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("CNI plugin installed"), "{err}");

    // The installed plugin is the plugin: it answers VERSION.
    let installed = b.join("weft");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(bin("weft")).unwrap()
    );
    let mut v = Command::new(&installed);
    v.env("CNI_COMMAND", "VERSION");
    let (code, out, _) = run_bounded(v, Duration::from_secs(10));
    assert_eq!(code, 0);
    assert!(out.contains("supportedVersions"), "{out}");
    let conf = c.join("10-weft.conflist");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&conf).unwrap()).unwrap();
    assert_eq!(json["plugins"][0]["type"], "weft");

    // Again: nothing rewritten.
    let (m1, m2) = (mtime(&installed), mtime(&conf));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(weftd(&install_args(&bs, &cs, &plugin)).0, 0);
    assert_eq!((mtime(&installed), mtime(&conf)), (m1, m2));
    let names: Vec<String> = std::fs::read_dir(&c)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        names,
        vec!["10-weft.conflist".to_string()],
        "no temp files left"
    );

    // A bad conflist source is refused and changes nothing.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}"#,
    )
    .unwrap();
    let mut args = install_args(&bs, &cs, &plugin);
    let bad_s = bad.display().to_string();
    args.extend(["--cni-conf-source", &bad_s]);
    let (code, _, err) = weftd(&args);
    assert_ne!(code, 0);
    assert!(
        err.contains("no plugin of type \"weft\"") && err.contains("bad.json"),
        "{err}"
    );
    assert_eq!(mtime(&conf), m2);

    // --cleanup removes the conflist (in a namespace of its own: it also clears the data plane).
    let ns = Netns::new("cln");
    let weftd_path = bin("weftd").display().to_string();
    let (code, _, err) = ns.exec(&weftd_path, &["--cleanup", "--cni-conf-dir", &cs]);
    assert_eq!(code, 0, "{err}");
    assert!(!conf.exists());
    assert!(
        installed.exists(),
        "the plugin binary stays for pods still being deleted"
    );
}

/// The warning weftd logs when a foreign CNI config sorts before weft's conflist.
const SHADOWED: &str =
    "sorts before 10-weft.conflist, and container runtimes use the first CNI config by name";

#[test]
fn install_cni_warns_about_a_dynamically_linked_plugin_and_not_about_the_static_one() {
    let dir = tempfile::tempdir().unwrap();
    let (b, c) = (dir.path().join("bin"), dir.path().join("net.d"));
    let (bs, cs) = (b.display().to_string(), c.display().to_string());
    // The workspace's own build links the shared C library.
    let dynamic = bin("weft").display().to_string();
    let (code, _, err) = weftd(&install_args(&bs, &cs, &dynamic));
    assert_eq!(code, 0, "a warning, not a failure: {err}");
    let warned: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("dynamically linked"))
        .collect();
    assert_eq!(warned.len(), 1, "{err}");
    assert!(
        warned[0].contains("cni-plugin/build-static.sh") && warned[0].contains(&dynamic),
        "{err}"
    );
    // What is shipped.
    let shipped = weft_tests::shipped::static_plugin(weft_tests::shipped::Profile::Debug);
    let (code, _, err) = weftd(&install_args(&bs, &cs, &shipped.display().to_string()));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("CNI plugin installed"), "{err}");
    assert!(!err.contains("dynamically linked"), "{err}");
    assert_eq!(
        std::fs::read(b.join("weft")).unwrap(),
        std::fs::read(&shipped).unwrap()
    );
}

#[test]
fn install_cni_warns_when_another_config_sorts_first_and_still_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (b, c) = (dir.path().join("bin"), dir.path().join("net.d"));
    let (bs, cs) = (b.display().to_string(), c.display().to_string());
    let plugin = bin("weft").display().to_string();
    std::fs::create_dir_all(&c).unwrap();
    let foreign = c.join("10-containerd-net.conflist");
    std::fs::write(
        &foreign,
        r#"{"cniVersion":"1.0.0","name":"containerd-net","plugins":[{"type":"bridge"}]}"#,
    )
    .unwrap();

    let (code, _, err) = weftd(&install_args(&bs, &cs, &plugin));
    assert_eq!(
        code, 0,
        "a shadowed conflist is a warning, not a failure: {err}"
    );
    let warning = err
        .lines()
        .find(|l| l.contains(SHADOWED))
        .unwrap_or_else(|| panic!("no warning about the shadowing config in:\n{err}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&format!("{} sorts before", foreign.display())),
        "the warning names the file: {warning}"
    );
    assert!(warning.contains("remove it, or rename it"), "{warning}");
    assert!(
        c.join("10-weft.conflist").exists(),
        "installed all the same"
    );

    // Renamed to sort after weft's: no warning.
    std::fs::rename(&foreign, c.join("99-containerd-net.conflist")).unwrap();
    let (code, _, err) = weftd(&install_args(&bs, &cs, &plugin));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("sorts before"), "{err}");

    // The same warning from `weftd --install-cni`, which then goes on running the agent.
    std::fs::write(
        c.join("05-calico.conf"),
        r#"{"name":"k8s-pod-network","type":"calico"}"#,
    )
    .unwrap();
    let extra = [
        "--install-cni",
        "--cni-bin-dir",
        bs.as_str(),
        "--cni-conf-dir",
        cs.as_str(),
        "--cni-plugin-source",
        plugin.as_str(),
    ];
    // etcd is unreachable on purpose: weftd stays up, unready, retrying.
    let etcd = [
        "--etcd-endpoints".to_string(),
        "http://127.0.0.1:9".to_string(),
    ];
    let mut w = weft_tests::procs::Weftd::start("shadow", "192.0.2.45", &etcd, &extra);
    let start = Instant::now();
    while !w.proc.log_text().contains(SHADOWED) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no shadowing warning from weftd --install-cni:\n{}",
            w.proc.log_text()
        );
        assert!(
            w.proc.try_exit().is_none(),
            "weftd exited:\n{}",
            w.proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = w.proc.log_text();
    assert!(
        log.contains(&format!("{}/05-calico.conf sorts before", c.display())),
        "{log}"
    );
    // The agent runs on after the warning (it logs from its own module once it does).
    while !w.proc.log_text().contains("weft_agent::daemon") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the agent did not start after the warning:\n{}",
            w.proc.log_text()
        );
        assert!(
            w.proc.try_exit().is_none(),
            "a warning does not stop weftd:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = w
        .proc
        .stop(Duration::from_secs(5))
        .expect("weftd stops on SIGTERM");
    assert!(st.success(), "exit status {st}:\n{}", w.proc.log_text());
}

#[test]
fn a_reader_never_sees_a_half_written_conflist() {
    let dir = tempfile::tempdir().unwrap();
    let (b, c) = (dir.path().join("bin"), dir.path().join("net.d"));
    let (bs, cs) = (b.display().to_string(), c.display().to_string());
    let plugin = bin("weft").display().to_string();
    // Two sources that differ, so every install rewrites the file.
    let big = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "weft",
        "plugins": [{"type": "weft", "padding": "x".repeat(256 * 1024)}]
    })
    .to_string();
    let small = weft_agent::host::install_cni::DEFAULT_CONFLIST;
    let (fa, fb) = (dir.path().join("a.json"), dir.path().join("b.json"));
    std::fs::write(&fa, &big).unwrap();
    std::fs::write(&fb, small).unwrap();
    assert_eq!(weftd(&install_args(&bs, &cs, &plugin)).0, 0);

    let stop = Arc::new(AtomicBool::new(false));
    let conf = c.join("10-weft.conflist");
    let reader = {
        let (stop, conf) = (stop.clone(), conf.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let text = std::fs::read(&conf).expect("the conflist always exists");
                serde_json::from_slice::<serde_json::Value>(&text).unwrap_or_else(|e| {
                    panic!("partial conflist read ({} bytes): {e}", text.len())
                });
                reads += 1;
            }
            reads
        })
    };
    for i in 0..20 {
        let src = if i % 2 == 0 { &fa } else { &fb };
        let s = src.display().to_string();
        let mut args = install_args(&bs, &cs, &plugin);
        args.extend(["--cni-conf-source", &s]);
        let (code, _, err) = weftd(&args);
        assert_eq!(code, 0, "{err}");
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("reader saw only whole files");
    assert!(reads > 0);
}

/// The pid of the only child of `parent`.
fn child_of(parent: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn state_of(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim().chars().next()
}

#[test]
fn weftd_as_pid_1_reaps_orphans_and_stops_promptly_on_sigterm() {
    let ns = Netns::new("pid1");
    ns.ip(&["link", "set", "lo", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let subnet_file = dir.path().join("subnet.env").display().to_string();
    // etcd is unreachable on purpose: weftd stays up, unready, retrying.
    let mut cmd = ns.cmd("unshare");
    // --kill-child: if the test fails and unshare is killed, the namespace goes with it.
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(bin("weftd"))
        .args(["--etcd-endpoints", "http://127.0.0.1:9", "--iface", "lo"])
        .args(["--subnet-file", &subnet_file, "--healthz-port", "0"]);
    let mut unshare = Proc::spawn("unshare-weftd", cmd, &dir.path().join("weftd.log"));
    let outer = unshare.pid().unwrap();

    // PID 1 of the namespace is weftd's init half; its child is the agent.
    let start = Instant::now();
    let (init, agent) = loop {
        if let Some(init) = child_of(outer) {
            if let Some(agent) = child_of(init) {
                break (init, agent);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "weftd did not start:\n{}",
            unshare.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        nspid.trim_end().ends_with("\t1"),
        "init half is PID 1 in its namespace: {nspid}"
    );
    assert!(std::fs::read_to_string(format!("/proc/{agent}/cmdline"))
        .unwrap()
        .contains("weftd"));
    // The agent keeps CAP_NET_ADMIN alone, on every thread; the init half holds no effective
    // capability, and keeps its permitted set for the agent it started.
    let net_admin = ThreadCaps::only(1 << 12);
    let start = Instant::now();
    while !thread_caps(agent).iter().all(|(_, c)| *c == net_admin) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "agent capabilities {:#x?}\n{}",
            thread_caps(agent),
            unshare.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let init_caps = thread_caps(init);
    assert_eq!(init_caps.len(), 1, "the init half has one thread");
    let (_, init_caps) = init_caps[0];
    assert_eq!(init_caps.effective, 0, "{init_caps:#x?}");
    assert_ne!(init_caps.permitted & (1 << 12), 0, "{init_caps:#x?}");

    // An orphan in the namespace: `sh` starts a short sleep and exits, so the sleep is
    // re-parented to PID 1. Without reaping it would stay a zombie.
    let mut orphan = Command::new("nsenter");
    orphan
        .args(["--target", &init.to_string(), "--pid", "--mount", "--"])
        .args(["sh", "-c", "sleep 0.2 & echo $!"]);
    let (code, out, err) = run_bounded(orphan, Duration::from_secs(10));
    assert_eq!(code, 0, "{err}");
    let inner: u32 = out.trim().parse().unwrap();
    // Find its outer pid among PID 1's children while it runs, or see it already reaped.
    let start = Instant::now();
    loop {
        let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
            .unwrap_or_default();
        let zombies: Vec<u32> = children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| state_of(*p) == Some('Z'))
            .collect();
        let sleeping = children.split_whitespace().count() > 1;
        if !sleeping && zombies.is_empty() && start.elapsed() > Duration::from_millis(400) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "orphan {inner} not reaped: children of PID 1 {children:?}, zombies {zombies:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // SIGTERM to PID 1 reaches the agent; everything is gone within 2 s.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let start = Instant::now();
    let st = loop {
        if let Some(st) = unshare.try_exit() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "weftd as PID 1 still running 2 s after SIGTERM:\n{}",
            unshare.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(st.success(), "exit status {st}:\n{}", unshare.log_text());
    assert!(unshare.log_text().contains("signal received; stopping"));
    for p in [init, agent] {
        assert!(state_of(p).is_none(), "process {p} left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_interface_choice_as_fields() {
    // The interface is chosen once the network config says which families it must carry.
    let etcd = weft_tests::etcd::Etcd::start().await;
    let store = etcd.store("/coreos.com/network").await;
    weft_agent::store::LeaseStore::put_config(
        &store,
        br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
    .await
    .unwrap();
    let mut w = weft_tests::procs::Weftd::start(
        "jlog",
        "192.0.2.44",
        &etcd.cli_args(),
        &["--log-format", "json"],
    );
    w.wait_ready(Duration::from_secs(30)).await;
    w.proc.stop(Duration::from_secs(5));
    let text = w.proc.log_text();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let choice = lines
        .iter()
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("using interface lo because"))
        })
        .unwrap_or_else(|| panic!("no interface line in:\n{text}"));
    assert_eq!(choice["level"], "INFO");
    assert_eq!(choice["fields"]["iface"], "lo");
    assert_eq!(choice["fields"]["public_ip"], "192.0.2.44");
    assert_eq!(choice["fields"]["public_ip_v6"], "-", "IPv6 is not enabled");
    assert!(lines
        .iter()
        .any(|v| v["fields"]["message"] == "wrote subnet file"));
}
