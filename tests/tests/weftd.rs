//! The real weftd and netctl binaries against real etcd processes (single member, a
//! three-member cluster, TLS with client certificates).

use std::time::Duration;

use weft_agent::lease::LeaseAttrs;
use weft_agent::store::{EtcdStore, LeaseStore};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weftd_rejects_bad_input_with_a_clear_error_and_changes_nothing() {
    let etcd = Etcd::start().await;
    let store = etcd.store(PREFIX).await;
    store.put_config(CONFIG).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad_conf = dir.path().join("net-conf.json");
    std::fs::write(&bad_conf, r#"{"Network":"10.244.0.0/16","SubnetLen":40}"#).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--net-config".into(), bad_conf.display().to_string()],
            "\"SubnetLen\"",
        ),
        (
            vec![
                "--net-config".into(),
                dir.path().join("missing.json").display().to_string(),
            ],
            "missing.json",
        ),
        (
            vec!["--iface".into(), "no-such-iface0".into()],
            "no-such-iface0",
        ), // replaces --iface lo
        (
            vec!["--subnet-lease-ttl".into(), "forever".into()],
            "--subnet-lease-ttl",
        ),
        (vec!["--iface-regex".into(), "(".into()], "--iface-regex"),
        (
            vec!["--etcd-cafile".into(), "/nonexistent/ca.pem".into()],
            "plain http",
        ),
        (
            vec![
                "--etcd-endpoints".into(),
                "https://127.0.0.1:1".into(),
                "--etcd-cafile".into(),
                "/nonexistent/ca.pem".into(),
            ],
            "/nonexistent/ca.pem",
        ),
        (
            vec!["--etcd-endpoints".into(), "127.0.0.1:2379".into()],
            "must start with http",
        ),
    ];
    for (extra, needle) in cases {
        let mut cmd = std::process::Command::new(weft_tests::procs::bin("weftd"));
        cmd.args([
            "--node-name",
            "bad",
            "--public-ip",
            "192.0.2.99",
            "--healthz-port",
            "0",
        ]);
        if !extra.iter().any(|a| a == "--iface") {
            cmd.args(["--iface", "lo"]);
        }
        if !extra.iter().any(|a| a == "--etcd-endpoints") {
            cmd.args(etcd.cli_args());
        }
        cmd.args(["--subnet-file"])
            .arg(dir.path().join("subnet.env"));
        cmd.args(&extra);
        let (code, _out, err) = weft_tests::procs::run_bounded(cmd, Duration::from_secs(30));
        assert_eq!(code, 2, "{extra:?}: exit {code}\n{err}");
        assert!(
            err.contains(needle),
            "{extra:?}: stderr lacks {needle:?}:\n{err}"
        );
    }
    assert!(
        store.snapshot(false).await.unwrap().entries.is_empty(),
        "no lease was written"
    );
    assert!(
        !dir.path().join("subnet.env").exists(),
        "no subnet.env was written"
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
        let mut k = weft_agent::keeper::LeaseKeeper::new(
            std::sync::Arc::new(peer_store),
            weft_agent::config::NetConfig::parse(CONFIG).unwrap(),
            weft_agent::keeper::KeeperSettings {
                identity: weft_agent::pick::Identity {
                    node_name: peer.clone(),
                    public_ip: Some(format!("192.0.2.{}", 100 + round).parse().unwrap()),
                    public_ip_v6: None,
                },
                attrs: LeaseAttrs::for_node(
                    &peer,
                    weft_backends::BackendKind::Vxlan,
                    Some(weft_agent::lease::Endpoint {
                        public_ip: format!("192.0.2.{}", 100 + round).parse().unwrap(),
                        vxlan: Some(weft_agent::lease::VxlanData {
                            vni: 1,
                            vtep_mac: MacAddr::derive_from(&peer),
                        }),
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

    let (code, out, err) = netctl(&args_with(&etcd, &["leases"]));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    let cols = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        cols(lines[0]),
        ["SUBNET", "NODE", "PUBLIC-IP", "BACKEND", "VTEP-MAC", "TTL"]
    );
    assert_eq!(
        cols(lines[1]),
        [
            "10.244.2.0/24",
            "gw-node",
            "192.0.2.2",
            "host-gw",
            "-",
            "reserved"
        ]
    );
    assert_eq!(
        cols(lines[2]),
        ["10.244.3.0/24", "-", "-", "-", "-", "reserved"]
    );
    assert_eq!(
        cols(lines[3]),
        [
            "10.244.9.0/24",
            "reserved-node",
            "192.0.2.9",
            "vxlan",
            "02:00:00:00:00:09",
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
    assert!(
        err.contains("lease 10.244.3.0-24 is invalid"),
        "invalid leases are reported on stderr: {err}"
    );

    let (code, out, _) = netctl(&args_with(&etcd, &["leases", "-o", "json"]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 4);
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

    let (code, out, _) = netctl(&args_with(&etcd, &["leases", "-o", "wide"]));
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().contains("EXPIRES"));
    assert!(out.contains("invalid: value is not lease JSON"), "{out}");

    let (code, out, _) = netctl(&args_with(&etcd, &["config"]));
    assert_eq!(code, 0);
    assert!(
        out.contains("Network") && out.contains("10.244.0.0/16") && out.contains("SubnetLen"),
        "{out}"
    );
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
    // Usage errors: exit 2 too.
    let (code, _, _) = netctl(&["leases".into(), "-o".into(), "yaml".into()]);
    assert_eq!(code, 2);
}
