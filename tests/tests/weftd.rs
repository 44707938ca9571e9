//! The real weftd and netctl binaries against real etcd processes (single member, a
//! three-member cluster, TLS with client certificates).

use std::time::Duration;

use weft_agent::lease::LeaseAttrs;
use weft_agent::store::{EtcdStore, LeaseStore};
use weft_backends::backend::{BackendData, VxlanData};
use weft_backends::MacAddr;
use weft_tests::etcd::Etcd;
use weft_tests::procs::{metric, netctl, Weftd};
use weft_tests::wait_for;

const PREFIX: &str = "/coreos.com/network";
const CONFIG: &[u8] = br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
const READY: Duration = Duration::from_secs(30);

fn args_with(etcd: &Etcd, more: &[&str]) -> Vec<String> {
    let mut v = etcd.cli_args();
    v.extend(more.iter().map(|s| s.to_string()));
    v
}

async fn lease_of(store: &EtcdStore, node: &str) -> Option<(String, LeaseAttrs)> {
    store
        .snapshot(false)
        .await
        .ok()?
        .entries
        .into_iter()
        .find_map(|e| {
            let a = LeaseAttrs::decode(&e.value).ok()?;
            (a.node_name.as_deref() == Some(node)).then_some((e.name, a))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_leases_writes_subnet_env_is_ready_and_keeps_its_subnet_across_restarts() {
    let etcd = Etcd::start().await;
    let store = etcd.store(PREFIX).await;
    store.put_config(CONFIG).await.unwrap();
    let w = Weftd::start("node-a", "192.0.2.10", &etcd.cli_args(), &[]);
    w.wait_ready(READY).await;
    let (name, attrs) = lease_of(&store, "node-a")
        .await
        .expect("a lease with our NodeName");
    assert_eq!(attrs.public_ip, Some("192.0.2.10".parse().unwrap()));
    assert_eq!(attrs.backend_type, "vxlan");
    let vx = attrs.vxlan_data().unwrap();
    assert_eq!((vx.vni, vx.vtep_mac), (1, MacAddr::derive_from("node-a")));
    let subnet = name.replace('-', "/");
    let gw = subnet.replace(".0/", ".1/");
    // lo's MTU is 65536; vxlan takes 50.
    assert_eq!(w.subnet_env(), format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={gw}\nFLANNEL_MTU=65486\nFLANNEL_IPMASQ=false\n"));
    assert_eq!(
        weft_tests::procs::http_get(w.port, "/healthz").map(|r| r.0),
        Some(200)
    );
    let m = w.metrics();
    assert_eq!(metric(&m, "weft_lease_held"), Some(1.0), "{m}");
    assert!(
        metric(&m, "weft_etcd_requests_total").unwrap() >= 2.0,
        "{m}"
    );

    // SIGTERM: exits 0, the lease stays.
    let mut w = w;
    let st = w.proc.stop(Duration::from_secs(10)).expect("exited");
    assert!(
        st.success(),
        "weftd exit status {st:?}\n{}",
        w.proc.log_text()
    );
    assert!(
        store.get(&name).await.unwrap().is_some(),
        "the lease outlives the process"
    );

    // Started again: same subnet.
    let w = w.restart();
    w.wait_ready(READY).await;
    assert_eq!(lease_of(&store, "node-a").await.unwrap().0, name);

    // Lease deleted while running: re-created, same subnet.
    assert!(store.delete(&name, None).await.unwrap());
    wait_for(
        "weftd to re-acquire its deleted lease",
        Duration::from_secs(20),
        || async {
            lease_of(&store, "node-a")
                .await
                .filter(|(n, _)| *n == name)
                .map(|_| ())
        },
    )
    .await;
    assert!(
        w.proc.log_text().contains("own lease vanished"),
        "the loss is logged loudly"
    );

    // Lease gone while stopped: the subnet from subnet.env is taken again.
    let mut w = w;
    w.proc.stop(Duration::from_secs(10));
    assert!(store.delete(&name, None).await.unwrap());
    let w = w.restart();
    w.wait_ready(READY).await;
    assert_eq!(
        lease_of(&store, "node-a").await.unwrap().0,
        name,
        "previous subnet from subnet.env"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_is_unready_until_the_network_config_appears() {
    let etcd = Etcd::start().await;
    let store = etcd.store(PREFIX).await;
    let w = Weftd::start("node-b", "192.0.2.11", &etcd.cli_args(), &[]);
    let body = wait_for("an unready answer", READY, || async {
        match w.readyz() {
            Some((503, b)) if b.contains("waiting for the network config") => Some(b),
            _ => None,
        }
    })
    .await;
    assert!(body.contains("/coreos.com/network/config"), "{body}");
    assert!(!w.subnet_file.exists(), "no subnet.env before a lease");
    store.put_config(CONFIG).await.unwrap();
    w.wait_ready(READY).await;
    assert!(w.subnet_env().contains("FLANNEL_NETWORK=10.244.0.0/16"));
}

/// One bad start: the flags that differ from a good start, the exit status, the cause that
/// must be printed exactly once, and other text the message must hold.
struct BadStart {
    flags: Vec<String>,
    code: i32,
    cause: String,
    also: Vec<String>,
}

fn bad(flags: &[&str], code: i32, cause: &str, also: &[&str]) -> BadStart {
    BadStart {
        flags: flags.iter().map(|s| s.to_string()).collect(),
        code,
        cause: cause.into(),
        also: also.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_rejects_bad_input_with_a_clear_error_that_says_each_cause_once_and_changes_nothing()
{
    let etcd = Etcd::start().await;
    let store = etcd.store(PREFIX).await;
    store.put_config(CONFIG).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let long_subnet = file("long.json", r#"{"Network":"10.244.0.0/16","SubnetLen":40}"#);
    let no_network = file("no-network.json", r#"{"SubnetLen":24}"#);
    let twice = file(
        "twice.json",
        r#"{"Network":"10.244.0.0/16","network":"10.245.0.0/16"}"#,
    );
    let missing = dir.path().join("missing.json").display().to_string();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port().to_string();
    let cases = vec![
        bad(
            &["--net-config", &long_subnet],
            2,
            r#"key "SubnetLen": /40 leaves no room for pods"#,
            &[&long_subnet],
        ),
        bad(
            &["--net-config", &no_network],
            2,
            r#"missing required key "Network""#,
            &[&no_network],
        ),
        bad(
            &["--net-config", &twice],
            2,
            r#"key "Network" is given 2 times (as "Network", "network")"#,
            &[],
        ),
        bad(
            &["--net-config", &missing],
            2,
            "No such file or directory",
            &[&missing],
        ),
        // Before any config exists (none under this prefix), and with the interfaces listed.
        bad(
            &[
                "--iface",
                "no-such-iface0",
                "--etcd-prefix",
                "/no-config-here",
            ],
            2,
            r#"--iface "no-such-iface0": no such interface or address on this host"#,
            &["the interfaces here are lo (127.0.0.1)"],
        ),
        bad(
            &["--subnet-lease-ttl", "forever"],
            2,
            r#"--subnet-lease-ttl "forever": expected a duration such as 24h or 90s"#,
            &[],
        ),
        bad(
            &["--iface-regex", "("],
            2,
            r#"--iface-regex "(" is not a valid regular expression: unclosed group"#,
            &[],
        ),
        bad(
            &["--public-ip", "127.0.0.1"],
            2,
            "--public-ip 127.0.0.1 is not a unicast host address",
            &["every peer would refuse this node's lease"],
        ),
        bad(
            &["--public-ipv6", "ff02::1"],
            2,
            "--public-ipv6 ff02::1 is not a unicast host address",
            &[],
        ),
        bad(
            &["--public-ip", "10.244.7.7"],
            2,
            "--public-ip 10.244.7.7 is inside the cluster network 10.244.0.0/16",
            &[],
        ),
        bad(
            &["--healthz-ip", "127.0.0.1", "--healthz-port", &taken_port],
            1,
            "Address already in use",
            &[&format!("health server on 127.0.0.1:{taken_port}")],
        ),
        bad(
            &["--etcd-cafile", "/nonexistent/ca.pem"],
            2,
            "plain http",
            &[],
        ),
        bad(
            &[
                "--etcd-endpoints",
                "https://127.0.0.1:1",
                "--etcd-cafile",
                "/nonexistent/ca.pem",
            ],
            2,
            "/nonexistent/ca.pem",
            &[],
        ),
        bad(
            &["--etcd-endpoints", "127.0.0.1:2379"],
            2,
            "must start with http",
            &[],
        ),
    ];
    let subnet_file = dir.path().join("subnet.env").display().to_string();
    let mut defaults: Vec<(String, String)> = [
        ("--node-name", "bad"),
        ("--public-ip", "192.0.2.99"),
        ("--healthz-port", "0"),
        ("--iface", "lo"),
        ("--subnet-file", &subnet_file),
    ]
    .iter()
    .map(|(f, v)| (f.to_string(), v.to_string()))
    .collect();
    defaults.extend(
        etcd.cli_args()
            .chunks(2)
            .map(|fv| (fv[0].clone(), fv[1].clone())),
    );
    for case in cases {
        let mut cmd = std::process::Command::new(weft_tests::procs::bin("weftd"));
        for (flag, value) in &defaults {
            if !case.flags.contains(flag) {
                cmd.args([flag, value]);
            }
        }
        cmd.args(&case.flags).env("WEFT_LOG", "info");
        let flags = &case.flags;
        let (code, _out, err) = weft_tests::procs::run_bounded(cmd, Duration::from_secs(30));
        assert_eq!(code, case.code, "{flags:?}: exit {code}\n{err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{flags:?}: one error line:\n{err}");
        assert_eq!(
            errors[0].matches(case.cause.as_str()).count(),
            1,
            "{flags:?}: the cause {:?} once in {:?}",
            case.cause,
            errors[0]
        );
        assert_eq!(
            err.matches(case.cause.as_str()).count(),
            1,
            "{flags:?}:\n{err}"
        );
        for text in &case.also {
            assert!(
                errors[0].contains(text.as_str()),
                "{flags:?}: {text:?} in {:?}",
                errors[0]
            );
        }
    }
    drop(taken);
    assert!(
        store.snapshot(false).await.unwrap().entries.is_empty(),
        "no lease was written"
    );
    assert!(
        !dir.path().join("subnet.env").exists(),
        "no subnet.env was written"
    );
}

#[test]
fn install_cni_exits_2_on_bad_input_and_1_when_the_host_refuses_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let plugin = write("weft-plugin", "\x7fELF not really");
    let no_weft = write(
        "other.conflist",
        r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}"#,
    );
    let not_a_dir = write("not-a-dir", "");
    let bin_dir = dir.path().join("bin").display().to_string();
    let conf_dir = dir.path().join("net.d").display().to_string();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["--cni-conf-source", "/nonexistent/x.conflist"],
            2,
            "/nonexistent/x.conflist",
        ),
        (vec!["--cni-conf-source", &no_weft], 2, "no plugin of type"),
        (
            vec!["--cni-plugin-source", "/nonexistent/weft"],
            2,
            "/nonexistent/weft",
        ),
        (vec!["--cni-conf-dir", &not_a_dir], 1, "not-a-dir"),
    ];
    for (flags, want, needle) in cases {
        let mut cmd = std::process::Command::new(weft_tests::procs::bin("weftd"));
        cmd.arg("install-cni");
        for (flag, value) in [
            ("--cni-plugin-source", plugin.as_str()),
            ("--cni-bin-dir", bin_dir.as_str()),
            ("--cni-conf-dir", conf_dir.as_str()),
        ] {
            if !flags.contains(&flag) {
                cmd.args([flag, value]);
            }
        }
        cmd.args(&flags);
        let (code, _out, err) = weft_tests::procs::run_bounded(cmd, Duration::from_secs(30));
        assert_eq!(code, want, "{flags:?}: exit {code}\n{err}");
        assert!(err.contains(needle), "{flags:?}: {needle:?} in\n{err}");
    }
    assert!(
        !dir.path().join("net.d").exists(),
        "no conflist was installed by a failed run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flannel_spellings_are_read_as_flannel_reads_them_and_each_notice_is_reported_once() {
    let etcd = Etcd::start().await;
    let store = etcd.store(PREFIX).await;
    // flannel (Go's encoding/json) reads this as host-gw on 10.244.0.0/16.
    store
        .put_config(br#"{"network":"10.244.0.0/16","backend":{"Type":"Host-GW","Prot":8472}}"#)
        .await
        .unwrap();
    let w = Weftd::start("node-f", "192.0.2.15", &etcd.cli_args(), &[]);
    w.wait_ready(READY).await;
    let (_, attrs) = lease_of(&store, "node-f")
        .await
        .expect("a lease with our NodeName");
    assert_eq!(
        attrs.backend_type, "host-gw",
        "the backend flannel would use"
    );
    assert!(
        w.subnet_env().contains("FLANNEL_NETWORK=10.244.0.0/16\n"),
        "{}",
        w.subnet_env()
    );
    let notices = [
        r#"network config key "network" is read as "Network" (keys match case-insensitively, as in flannel); spell it "Network""#,
        r#"network config key "backend" is read as "Backend""#,
        r#"network config key "Backend.Type" has the value "Host-GW", read as "host-gw""#,
        r#"network config key "Backend.Prot" is not one weft knows, so it is ignored; did you mean "Backend.Port"?"#,
    ];
    let log = w.proc.log_text();
    for n in notices {
        assert_eq!(
            log.matches(n).count(),
            1,
            "{n:?} once in weftd's log:\n{log}"
        );
    }
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("key=Backend.Prot")
            && l.contains("kind=unknown-key")),
        "structured fields:\n{log}"
    );

    for output in ["table", "json"] {
        let (code, out, err) = netctl(&args_with(&etcd, &["config", "-o", output]));
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("host-gw"), "{out}");
        for n in notices {
            assert_eq!(
                err.matches(n).count(),
                1,
                "{n:?} once in netctl's stderr:\n{err}"
            );
        }
        assert_eq!(err.lines().count(), notices.len(), "{err}");
        assert!(err.lines().all(|l| l.starts_with("warning: ")), "{err}");
    }
    let (_, out, _) = netctl(&args_with(&etcd, &["config", "-o", "json"]));
    let cfg: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cfg["Network"], "10.244.0.0/16");
    assert_eq!(
        cfg["Backend"]["Type"], "host-gw",
        "written back as documented"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_and_netctl_keep_working_when_any_one_of_three_members_stops() {
    let mut etcd = Etcd::start_cluster(3, false).await;
    let store = etcd.store(PREFIX).await;
    store.put_config(CONFIG).await.unwrap();
    let w = Weftd::start(
        "node-c",
        "192.0.2.12",
        &etcd.cli_args(),
        &["--subnet-lease-ttl", "3s", "--etcd-request-timeout", "2s"],
    );
    w.wait_ready(READY).await;
    let leader = etcd.leader().await;
    let order: Vec<usize> = std::iter::once(leader)
        .chain((0..3).filter(|i| *i != leader))
        .collect();
    for (round, member) in order.into_iter().enumerate() {
        etcd.stop_member(member);
        // A new peer appears: weftd's watch still delivers.
        let peer_store = etcd.store(PREFIX).await;
        let peer = format!("peer-{round}");
        let mut k = weft_agent::lease::keeper::LeaseKeeper::new(
            std::sync::Arc::new(peer_store),
            weft_agent::config::NetConfig::parse(CONFIG).unwrap(),
            weft_agent::lease::keeper::KeeperSettings {
                identity: weft_agent::lease::pick::Identity {
                    node_name: peer.clone(),
                    public_ip: Some(format!("192.0.2.{}", 100 + round).parse().unwrap()),
                    public_ip_v6: None,
                },
                attrs: LeaseAttrs::for_node(
                    &peer,
                    weft_backends::BackendKind::Vxlan,
                    Some(weft_agent::lease::Endpoint {
                        public_ip: format!("192.0.2.{}", 100 + round).parse().unwrap(),
                        data: Some(BackendData::Vxlan(VxlanData {
                            vni: 1,
                            vtep_mac: MacAddr::derive_from(&peer),
                        })),
                    }),
                    None,
                ),
                ttl: Duration::from_secs(3600),
                previous: Default::default(),
            },
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while let Err(e) = k.acquire(None).await {
            assert!(
                std::time::Instant::now() < deadline,
                "peer lease not written with member {member} down: {e}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let want = (round + 1) as f64;
        wait_for(
            &format!("weftd to see {want} peers with member {member} down"),
            Duration::from_secs(30),
            || async { (metric(&w.metrics(), "weft_peers") == Some(want)).then_some(()) },
        )
        .await;
        // Longer than the TTL: renewals kept the lease.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let lease = wait_for(
            "weftd's lease to be readable",
            Duration::from_secs(20),
            || async { lease_of(&store, "node-c").await },
        )
        .await;
        assert!(lease.1.node_name.is_some());
        assert_eq!(
            w.readyz().map(|r| r.0),
            Some(200),
            "weftd stayed ready (member {member} down)\n{}",
            w.proc.log_text()
        );
        let (code, out, err) = netctl(&args_with(&etcd, &["leases"]));
        assert_eq!(code, 0, "netctl with member {member} down: {err}");
        assert!(out.contains("node-c") && out.contains(&peer), "{out}");
        etcd.restart_member(member).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_works_and_a_wrong_ca_is_a_clear_error() {
    let etcd = Etcd::start_tls().await;
    let store = etcd.store(PREFIX).await;
    store.put_config(CONFIG).await.unwrap();
    let w = Weftd::start("node-tls", "192.0.2.13", &etcd.cli_args(), &[]);
    w.wait_ready(READY).await;
    let (code, out, err) = netctl(&args_with(&etcd, &["leases"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("node-tls"), "{out}");

    let tls = etcd.tls().unwrap();
    let wrong: Vec<String> = vec![
        "--etcd-endpoints".into(),
        etcd.endpoint(0),
        "--etcd-cafile".into(),
        tls.other_ca.display().to_string(),
        "--etcd-certfile".into(),
        tls.client_cert.display().to_string(),
        "--etcd-keyfile".into(),
        tls.client_key.display().to_string(),
        "--etcd-request-timeout".into(),
        "3s".into(),
    ];
    let (code, _, err) = netctl(&args_with_raw(&wrong, &["leases"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "the error names the certificate problem:\n{err}"
    );

    let bad = Weftd::start("node-badca", "192.0.2.14", &wrong, &[]);
    let body = wait_for("weftd to report the TLS problem", READY, || async {
        match bad.readyz() {
            Some((503, b)) if b.contains("certificate") || b.contains("UnknownIssuer") => Some(b),
            _ => None,
        }
    })
    .await;
    assert!(body.contains("etcd"), "{body}");

    // Plain http against a TLS etcd, and no client certificate: clear errors too.
    let (code, _, err) = netctl(&args_with_raw(
        &[
            "--etcd-endpoints".into(),
            etcd.endpoint(0).replace("https", "http"),
            "--etcd-request-timeout".into(),
            "3s".into(),
        ],
        &["leases"],
    ));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("etcd"), "{err}");
}

fn args_with_raw(base: &[String], more: &[&str]) -> Vec<String> {
    let mut v = base.to_vec();
    v.extend(more.iter().map(|s| s.to_string()));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netctl_leases_and_config_show_known_leases() {
    let etcd = Etcd::start().await;
    let store = etcd.store(PREFIX).await;
    store.put_config(CONFIG).await.unwrap();
    let mut raw = etcd.raw_client().await;
    let base = "/coreos.com/network/subnets";
    raw.put(format!("{base}/10.244.9.0-24"), r#"{"PublicIP":"192.0.2.9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:09"},"NodeName":"reserved-node"}"#, None).await.unwrap();
    let g = raw.lease_grant(7200, None).await.unwrap();
    raw.put(format!("{base}/10.244.10.0-24"), r#"{"PublicIP":"192.0.2.10","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:0a"}}"#, Some(etcd_client::PutOptions::new().with_lease(g.id()))).await.unwrap();
    raw.put(format!("{base}/10.244.2.0-24"), r#"{"PublicIP":"192.0.2.2","BackendType":"host-gw","BackendData":null,"NodeName":"gw-node"}"#, None).await.unwrap();
    raw.put(format!("{base}/10.244.3.0-24"), "not json", None)
        .await
        .unwrap();

    // No subnet file here: no row is this host's.
    let dir = tempfile::tempdir().unwrap();
    let no_file = dir.path().join("absent.env").display().to_string();
    let leases = |more: &[&str]| {
        let mut a = vec!["leases", "--subnet-file", no_file.as_str()];
        a.extend(more);
        netctl(&args_with(&etcd, &a))
    };
    let (code, out, err) = leases(&[]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    let cols = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        cols(lines[0]),
        [
            "SUBNET",
            "NODE",
            "PUBLIC-IP",
            "BACKEND",
            "VTEP-MAC",
            "TTL",
            "STATUS"
        ]
    );
    assert_eq!(
        cols(lines[1]),
        [
            "10.244.2.0/24",
            "gw-node",
            "192.0.2.2",
            "host-gw",
            "-",
            "-",
            "reserved"
        ]
    );
    // Garbage under a subnet key is invalid, not a reservation.
    assert_eq!(
        cols(lines[2]),
        [
            "10.244.3.0/24",
            "-",
            "-",
            "-",
            "-",
            "-",
            "invalid:",
            "value",
            "is",
            "not",
            "lease",
            "JSON"
        ]
    );
    assert_eq!(
        cols(lines[3]),
        [
            "10.244.9.0/24",
            "reserved-node",
            "192.0.2.9",
            "vxlan",
            "02:00:00:00:00:09",
            "-",
            "reserved"
        ]
    );
    let row = cols(lines[4]);
    assert_eq!(
        row[..5],
        [
            "10.244.10.0/24",
            "-",
            "192.0.2.10",
            "vxlan",
            "02:00:00:00:00:0a"
        ]
    );
    assert!(
        row[5] == "2h00m" || row[5] == "1h59m",
        "TTL cell {}",
        row[5]
    );
    assert_eq!(row[6], "ok");
    assert!(
        err.contains("lease 10.244.3.0-24 is invalid"),
        "invalid leases are reported on stderr: {err}"
    );

    // The lease of the host netctl runs on (its subnet.env) is marked.
    let env = dir.path().join("subnet.env");
    std::fs::write(
        &env,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.9.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    let env_s = env.display().to_string();
    let (code, out, err) = netctl(&args_with(&etcd, &["leases", "--subnet-file", &env_s]));
    assert_eq!(code, 0, "{err}");
    let marked: Vec<&str> = out.lines().filter(|l| l.starts_with('*')).collect();
    assert_eq!(marked.len(), 1, "{out}");
    assert!(marked[0].contains("10.244.9.0/24"), "{out}");

    // --node: by NodeName, or by public IP for a lease that names no node.
    let (code, out, err) = leases(&["--node", "gw-node"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("10.244.2.0/24"), "{out}");
    let (code, out, _) = leases(&["--node", "192.0.2.10", "-o", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{out}");
    assert_eq!(v[0]["subnet"], "10.244.10.0/24");
    let (code, out, err) = leases(&["--node", "nosuch"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("no lease of node nosuch"), "{err}");

    let (code, out, _) = leases(&["-o", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows.iter()
            .map(|r| r["status"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["reserved", "invalid", "reserved", "ok"]
    );
    assert_eq!(rows[0]["subnet"], "10.244.2.0/24");
    assert_eq!(rows[0]["reserved"], true);
    assert_eq!(rows[0]["ttlSeconds"], serde_json::Value::Null);
    assert_eq!(rows[1]["valid"], false);
    assert!(rows[1]["problem"]
        .as_str()
        .unwrap()
        .contains("not lease JSON"));
    assert_eq!(
        rows[3]["node"],
        serde_json::Value::Null,
        "flannel leases carry no node name"
    );
    let ttl = rows[3]["ttlSeconds"].as_u64().unwrap();
    assert!((7000..=7200).contains(&ttl), "{ttl}");
    assert!(rows[3]["expires"].as_str().unwrap().ends_with('Z'));

    let (code, out, _) = leases(&["-o", "wide"]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().contains("EXPIRES"));
    assert!(out.contains("invalid: value is not lease JSON: "), "{out}");

    let (code, out, _) = netctl(&args_with(&etcd, &["config"]));
    assert_eq!(code, 0);
    assert!(
        out.contains("Network") && out.contains("10.244.0.0/16") && out.contains("SubnetLen"),
        "{out}"
    );
    assert!(
        out.starts_with(&format!(
            "network config from etcd key {PREFIX}/config at {}\n",
            etcd.endpoints().join(",")
        )),
        "{out}"
    );
    let value = |out: &str, key: &str| {
        out.lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(key)).then(|| w.collect::<Vec<_>>().join(" "))
            })
            .unwrap_or_else(|| panic!("no {key} in {out}"))
    };
    // 10.244.0.0/16 in /24s without the first: 255; four keys take a subnet (garbage too).
    assert_eq!(value(&out, "Subnets"), "255");
    assert_eq!(value(&out, "Leased"), "4");
    assert_eq!(value(&out, "Free"), "251");
    // The same from a config file, the leases counted from etcd.
    let file = dir.path().join("net-conf.json");
    std::fs::write(&file, CONFIG).unwrap();
    let file_s = file.display().to_string();
    let (code, out, err) = netctl(&args_with(&etcd, &["--net-config", &file_s, "config"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!(
            "network config from the file {file_s} (--net-config)\n"
        )),
        "{out}"
    );
    assert_eq!(value(&out, "Leased"), "4");
    // wide adds nothing to config, so it is not offered.
    let (code, _, err) = netctl(&args_with(&etcd, &["config", "-o", "wide"]));
    assert_eq!(code, 2, "{err}");
    let (code, out, _) = netctl(&args_with(&etcd, &["config", "-o", "json"]));
    assert_eq!(code, 0);
    let cfg: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cfg["Network"], "10.244.0.0/16");
    assert_eq!(cfg["Backend"]["VNI"], 1);

    // No config under another prefix: exit 1 with the key named.
    let (code, _, err) = netctl(&args_with(
        &etcd,
        &["--etcd-prefix", "/elsewhere", "config"],
    ));
    assert_eq!(code, 1);
    assert!(err.contains("/elsewhere/config"), "{err}");

    // Unreachable etcd: exit 2 and a message naming the endpoint.
    let port = weft_tests::free_port();
    let (code, _, err) = netctl(&[
        "--etcd-endpoints".into(),
        format!("http://127.0.0.1:{port}"),
        "--etcd-request-timeout".into(),
        "2s".into(),
        "leases".into(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    // A config file is shown without etcd; only the counts are missing then.
    let (code, out, err) = netctl(&[
        "--etcd-endpoints".into(),
        format!("http://127.0.0.1:{port}"),
        "--etcd-request-timeout".into(),
        "2s".into(),
        "--net-config".into(),
        file_s.clone(),
        "config".into(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("10.244.0.0/16") && !out.contains("Leased"),
        "{out}"
    );
    assert!(
        err.starts_with("warning: leased and free subnets not counted: "),
        "{err}"
    );
    // Usage errors: exit 2 too.
    let (code, _, _) = netctl(&["leases".into(), "-o".into(), "yaml".into()]);
    assert_eq!(code, 2);
}
