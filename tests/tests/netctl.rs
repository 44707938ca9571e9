//! `netctl check` on a real host: weftd running in a namespace the test creates, a real
//! etcd, and the host-local things pods depend on (the CNI config directory, the bridge and
//! the pod veths, weftd's health port).

use std::path::Path;
use std::time::Duration;

use weft_agent::store::LeaseStore;
use weft_tests::etcd::Etcd;
use weft_tests::procs::{bin, run_bounded, Weftd};

const PREFIX: &str = "/coreos.com/network";
const CONFIG: &[u8] = br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":1400}}"#;

/// `netctl check` inside weftd's namespace: (exit code, stdout, stderr).
fn check(w: &Weftd, etcd: &Etcd, conf_dir: &Path) -> (i32, String, String) {
    let mut cmd = w.ns.cmd(bin("netctl"));
    cmd.args(etcd.cli_args())
        .args(["--etcd-prefix", PREFIX, "check", "--iface", "lo"])
        .arg("--subnet-file")
        .arg(&w.subnet_file)
        .arg("--cni-conf-dir")
        .arg(conf_dir)
        .args(["--healthz-ip", "127.0.0.1", "--healthz-port"])
        .arg(w.port.to_string());
    run_bounded(cmd, Duration::from_secs(30))
}

/// The report's rows whose OBJECT column is `object`.
fn rows<'a>(out: &'a str, object: &str) -> Vec<&'a str> {
    out.lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(object))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_shadowed_conflist_wrong_pod_mtus_and_a_silent_weftd() {
    let etcd = Etcd::start().await;
    let store = etcd.store(PREFIX).await;
    store.put_config(CONFIG).await.unwrap();
    // A peer with no weftd behind it, so a route of weft's is there to lose.
    let mut raw = etcd.raw_client().await;
    raw.put(
        format!("{PREFIX}/subnets/10.244.77.0-24"),
        r#"{"PublicIP":"192.0.2.77","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:77"},"NodeName":"ghost"}"#,
        None,
    )
    .await
    .unwrap();
    let mut w = Weftd::start("chk", "192.0.2.61", &etcd.cli_args(), &[]);
    w.wait_ready(Duration::from_secs(30)).await;
    let env = w.subnet_env();
    let subnet = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .unwrap_or_else(|| panic!("no FLANNEL_SUBNET in {env}"))
        .replace(".1/24", ".0/24");
    let conf = tempfile::tempdir().unwrap();

    // As weftd programmed it: clean, and the report says what it checked.
    let (code, out, err) = check(&w, &etcd, conf.path());
    assert_eq!(code, 0, "{out}{err}");
    let first = out.lines().next().unwrap();
    assert_eq!(
        first,
        format!(
            "checked node chk, subnet {subnet} (from {})",
            w.subnet_file.display()
        )
    );
    assert!(out.contains("ok: "), "{out}");

    // A foreign config that sorts first shadows weft's conflist.
    std::fs::write(
        conf.path().join("10-weft.conflist"),
        weft_agent::host::install_cni::DEFAULT_CONFLIST,
    )
    .unwrap();
    let foreign = conf.path().join("10-containerd-net.conflist");
    std::fs::write(
        &foreign,
        r#"{"cniVersion":"1.0.0","name":"containerd-net","plugins":[{"type":"bridge"}]}"#,
    )
    .unwrap();
    let (code, out, err) = check(&w, &etcd, conf.path());
    assert_eq!(code, 1, "a shadowed conflist is a problem: {out}{err}");
    let cni = rows(&out, "cni-config");
    assert_eq!(cni.len(), 1, "{out}");
    assert!(
        cni[0].starts_with("PROBLEM")
            && cni[0].contains(&format!(
                "{} sorts before 10-weft.conflist",
                foreign.display()
            )),
        "{out}"
    );
    assert!(cni[0].contains("remove it, or rename it"), "{out}");
    assert!(
        out.contains(&format!("CNI config runtimes use: {}", foreign.display())),
        "{out}"
    );
    std::fs::rename(&foreign, conf.path().join("99-containerd-net.conflist")).unwrap();
    let (code, out, err) = check(&w, &etcd, conf.path());
    assert_eq!(code, 0, "renamed to sort after weft's: {out}{err}");

    // A bridge and a pod veth with another MTU than FLANNEL_MTU (1400).
    w.ns.ip(&["link", "add", "cni0", "mtu", "1500", "type", "bridge"]);
    w.ns.ip(&[
        "link",
        "add",
        "vethtest0",
        "mtu",
        "1500",
        "type",
        "veth",
        "peer",
        "name",
        "vethtest1",
    ]);
    w.ns.ip(&["link", "set", "vethtest0", "master", "cni0"]);
    let (code, out, err) = check(&w, &etcd, conf.path());
    assert_eq!(code, 1, "{out}{err}");
    let bridge = rows(&out, "bridge");
    assert_eq!(bridge.len(), 1, "{out}");
    assert!(
        bridge[0].contains("cni0 MTU 1500 (want 1400, FLANNEL_MTU)"),
        "{out}"
    );
    let veths = rows(&out, "veth");
    assert_eq!(veths.len(), 1, "only the veth on cni0: {out}");
    assert!(
        veths[0].contains("vethtest0 on cni0 MTU 1500 (want 1400"),
        "{out}"
    );
    w.ns.ip(&["link", "set", "vethtest0", "mtu", "1400"]);
    w.ns.ip(&["link", "set", "cni0", "mtu", "1400"]);
    let (code, out, err) = check(&w, &etcd, conf.path());
    assert_eq!(code, 0, "MTUs right: {out}{err}");

    // weftd stopped: its health port is silent, and a route it would restore is missing;
    // the row names the peer it belongs to.
    w.proc.stop(Duration::from_secs(5));
    w.ns.ip(&["route", "del", "10.244.77.0/24"]);
    let (code, out, err) = check(&w, &etcd, conf.path());
    assert_eq!(code, 1, "{out}{err}");
    let weftd = rows(&out, "weftd");
    assert_eq!(weftd.len(), 1, "{out}");
    assert!(
        weftd[0].contains(&format!(
            "weftd does not answer http://127.0.0.1:{}/healthz (connection refused)",
            w.port
        )),
        "{out}"
    );
    let route = rows(&out, "route");
    assert_eq!(route.len(), 1, "{out}");
    assert_eq!(
        route[0].split_whitespace().take(4).collect::<Vec<_>>(),
        ["MISSING", "route", "ghost", "10.244.77.0/24"],
        "{out}"
    );
}

#[test]
fn check_looks_for_the_bridge_the_plugin_makes_by_default() {
    assert_eq!(
        weft_agent::netctl::host_facts::DEFAULT_BRIDGE,
        weft_cni::conf::DEFAULT_BRIDGE
    );
}
