//! weft's nftables tables (`ip weft`, `ip6 weft`) against the real kernel, each test in its
//! own namespaces (nft runs through `ip netns exec`, so the root namespace's ruleset is never
//! touched): the rules as nftables lists them, atomic replacement, the owner task restoring a
//! deleted table, the two families never touching each other's table, cleanup, clear errors,
//! and packets actually being masqueraded end to end over IPv4 and IPv6.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use weft_agent::firewall::{
    cleanup, cleanup_all_families, render, run_firewall, Firewall, FirewallError, MasqRules,
    NftFirewall,
};
use weft_backends::IpFamily;
use weft_tests::netns::Netns;
use weft_tests::procs::{bin, run_bounded, Proc};

/// Rules of either family (both networks of the same one).
fn rules(network: &str, own_subnet: &str) -> MasqRules {
    MasqRules::new(network.parse().unwrap(), own_subnet.parse().unwrap()).unwrap()
}

/// The IPv6 cluster network and this node's IPv6 pod subnet in these tests.
const V6_NET: &str = "fd00:10:244::/56";
const V6_OWN: &str = "fd00:10:244:1::/64";

/// Table `ip weft` in `ns`.
fn nft_in(ns: &Netns) -> NftFirewall {
    NftFirewall::new(Some(ns.name.clone()))
}

/// Table `ip6 weft` in `ns`.
fn nft6_in(ns: &Netns) -> NftFirewall {
    nft_in(ns).for_family(IpFamily::V6)
}

/// `nft <args>` in `ns`, by hand (as an operator would): (exit code, stdout, stderr).
fn nft(ns: &Netns, args: &[&str]) -> (i32, String, String) {
    ns.exec("nft", args)
}

/// `nft list table ip weft` in `ns`, `None` if it fails (no table).
fn listing(ns: &Netns) -> Option<String> {
    listing_in(&ns.name, "ip")
}

/// `nft list table ip6 weft` in `ns`, `None` if it fails (no table).
fn listing6(ns: &Netns) -> Option<String> {
    listing_in(&ns.name, "ip6")
}

/// `nft list table <family> weft` by namespace name (for a blocking task that cannot borrow
/// the handle).
fn listing_in(netns: &str, family: &str) -> Option<String> {
    let mut cmd = std::process::Command::new("ip");
    cmd.args([
        "netns", "exec", netns, "nft", "list", "table", family, "weft",
    ]);
    let (code, out, _) = run_bounded(cmd, Duration::from_secs(30));
    (code == 0).then_some(out)
}

/// All tables in `ns`, one `table <family> <name>` per entry.
fn tables(ns: &Netns) -> Vec<String> {
    let (code, out, err) = nft(ns, &["list", "tables"]);
    assert_eq!(code, 0, "nft list tables: {err}");
    out.lines().map(|l| l.trim().to_string()).collect()
}

/// Poll `f` every 20 ms until it holds; panic after `timeout`.
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn applied_table_lists_the_masquerade_and_forward_rules() {
    let ns = Netns::new("fw-list");
    let mut fw = nft_in(&ns);
    assert_eq!(
        fw.list().await.unwrap(),
        None,
        "a fresh namespace has no table"
    );
    fw.apply(&render(&rules("10.244.0.0/16", "10.244.1.0/24")))
        .await
        .unwrap();
    let text = listing(&ns).expect("nft list table ip weft");
    for want in [
        "type nat hook postrouting priority srcnat; policy accept;",
        "meta mark & 0x00004000 == 0x00004000 return comment \"marked by kube-proxy",
        "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return comment \"pod to pod",
        "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment",
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return comment",
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random comment",
        "type filter hook forward priority filter; policy accept;",
        "ip saddr 10.244.0.0/16 accept comment",
        "ip daddr 10.244.0.0/16 accept comment",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // The trait's listing is what nft shows.
    assert_eq!(fw.list().await.unwrap().as_deref(), Some(text.as_str()));
}

#[tokio::test]
async fn applying_again_replaces_the_table_and_leaves_other_tables_alone() {
    let ns = Netns::new("fw-replace");
    // Someone else's table in the same namespace.
    let (code, _, err) = nft(&ns, &["add", "table", "inet", "other"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = nft(
        &ns,
        &[
            "add",
            "chain",
            "inet",
            "other",
            "input",
            "{ type filter hook input priority 0; policy accept; }",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let other_before = nft(&ns, &["list", "table", "inet", "other"]).1;

    let mut fw = nft_in(&ns);
    fw.apply(&render(&rules("10.244.0.0/16", "10.244.1.0/24")))
        .await
        .unwrap();
    fw.apply(&render(&rules("10.244.0.0/16", "10.244.7.0/24")))
        .await
        .unwrap();
    let all = tables(&ns);
    assert_eq!(
        all.iter().filter(|t| *t == "table ip weft").count(),
        1,
        "{all:?}"
    );
    let text = listing(&ns).unwrap();
    assert!(text.contains("ip daddr 10.244.7.0/24 return"), "{text}");
    assert!(!text.contains("10.244.1.0/24"), "old rules left:\n{text}");
    assert_eq!(text.matches("chain postrouting").count(), 1, "{text}");
    assert_eq!(
        nft(&ns, &["list", "table", "inet", "other"]).1,
        other_before
    );

    // A script nft rejects changes nothing: the transaction is all or nothing.
    let broken = format!(
        "{}\ntable ip weft {{ chain broken {{ this is not a rule }} }}\n",
        render(&rules("10.244.0.0/16", "10.244.9.0/24"))
    );
    let err = fw.apply(&broken).await.unwrap_err();
    assert!(matches!(err, FirewallError::Nft { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("apply") && msg.contains("Error"),
        "error names the action and carries nft's stderr: {msg}"
    );
    assert_eq!(listing(&ns).unwrap(), text, "a failed apply left a change");
}

#[tokio::test]
async fn owner_task_restores_a_table_deleted_by_hand() {
    let ns = Netns::new("fw-owner");
    let (rules_tx, rules_rx) = watch::channel(Some(rules("10.244.0.0/16", "10.244.1.0/24")));
    let (stop_tx, stop_rx) = watch::channel(false);
    let repairs = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&repairs);
    let task = tokio::spawn(run_firewall(
        nft_in(&ns),
        rules_rx,
        Duration::from_millis(100),
        stop_rx,
        move || {
            count.fetch_add(1, Ordering::SeqCst);
        },
    ));
    let name = ns.name.clone();
    let probe = move || {
        let name = name.clone();
        move || listing_in(&name, "ip")
    };
    let original = weft_tests::wait_for("the first apply", Duration::from_secs(10), || {
        let probe = probe();
        async move { tokio::task::spawn_blocking(probe).await.unwrap() }
    })
    .await;

    let (code, _, err) = nft(&ns, &["delete", "table", "ip", "weft"]);
    assert_eq!(code, 0, "{err}");
    let restored =
        weft_tests::wait_for("the table to be restored", Duration::from_secs(10), || {
            let probe = probe();
            async move { tokio::task::spawn_blocking(probe).await.unwrap() }
        })
        .await;
    assert_eq!(restored, original);
    weft_tests::wait_for("the repair to be counted", Duration::from_secs(5), || {
        let n = repairs.load(Ordering::SeqCst);
        async move { (n == 1).then_some(()) }
    })
    .await;
    // Unchanged from here on: no further repairs over several checks.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(repairs.load(Ordering::SeqCst), 1);

    stop_tx.send_replace(true);
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("the owner stops")
        .unwrap();
    drop(rules_tx);
    assert!(listing(&ns).is_some(), "stopping leaves the table in place");
}

#[tokio::test]
async fn cleanup_removes_the_table_and_a_second_cleanup_finds_nothing() {
    let ns = Netns::new("fw-clean");
    let mut fw = nft_in(&ns);
    fw.apply(&render(&rules("10.244.0.0/16", "10.244.1.0/24")))
        .await
        .unwrap();
    assert!(cleanup(&mut fw).await.unwrap());
    assert!(!tables(&ns).contains(&"table ip weft".to_string()));
    assert_eq!(listing(&ns), None);
    assert!(!cleanup(&mut fw).await.unwrap());
    assert_eq!(fw.list().await.unwrap(), None);
}

#[tokio::test]
async fn weftd_cleanup_flag_removes_both_tables() {
    let ns = Netns::new("fw-weftd");
    nft_in(&ns)
        .apply(&render(&rules("10.244.0.0/16", "10.244.1.0/24")))
        .await
        .unwrap();
    nft6_in(&ns)
        .apply(&render(&rules(V6_NET, V6_OWN)))
        .await
        .unwrap();
    let weftd = bin("weftd");
    let run = || {
        let mut cmd = ns.cmd(&weftd);
        cmd.arg("--cleanup").env("WEFT_LOG", "info");
        run_bounded(cmd, Duration::from_secs(30))
    };
    let (code, _, err) = run();
    assert_eq!(code, 0, "weftd --cleanup: {err}");
    assert!(err.contains("nftables table ip weft"), "{err}");
    assert!(err.contains("nftables table ip6 weft"), "{err}");
    assert_eq!(listing(&ns), None);
    assert_eq!(listing6(&ns), None);
    let (code, _, err) = run();
    assert_eq!(code, 0, "second weftd --cleanup: {err}");
    assert!(err.contains("not present"), "{err}");
}

#[tokio::test]
async fn missing_nft_or_namespace_gives_a_clear_error() {
    let ns = Netns::new("fw-bad");
    let missing = "/nonexistent/weft-test/nft";
    let mut fw = nft_in(&ns).with_binary(missing);
    for err in [
        fw.apply(&render(&rules("10.244.0.0/16", "10.244.1.0/24")))
            .await
            .unwrap_err(),
        fw.list().await.unwrap_err(),
        cleanup(&mut fw).await.unwrap_err(),
    ] {
        assert!(matches!(err, FirewallError::NftNotFound { .. }), "{err:?}");
        assert!(err.to_string().contains(missing), "{err}");
    }

    let gone = format!("{}-does-not-exist", ns.name);
    let err = NftFirewall::new(Some(gone.clone()))
        .list()
        .await
        .unwrap_err();
    assert!(matches!(err, FirewallError::Nft { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&gone),
        "names the namespace: {err}"
    );
}

/// Three namespaces: a pod (10.244.1.2) behind a node ("host", 10.244.1.1 towards the pod,
/// 192.0.2.10 upstream, forwarding on) and an "internet" host (192.0.2.1) with no route back
/// to 10.244.0.0/16.
struct Topology {
    pod: Netns,
    host: Netns,
    internet: Netns,
}

fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
}

fn address(ns: &Netns, dev: &str, cidr: &str) {
    ns.ip(&["addr", "add", cidr, "dev", dev]);
    ns.ip(&["link", "set", dev, "up"]);
}

fn topology(tag: &str) -> Topology {
    let t = Topology {
        pod: Netns::new(&format!("{tag}-pod")),
        host: Netns::new(&format!("{tag}-host")),
        internet: Netns::new(&format!("{tag}-net")),
    };
    for ns in [&t.pod, &t.host, &t.internet] {
        ns.ip(&["link", "set", "lo", "up"]);
    }
    veth(&t.pod, "eth0", &t.host, "vpod");
    veth(&t.host, "uplink", &t.internet, "eth0");
    address(&t.pod, "eth0", "10.244.1.2/24");
    t.pod.ip(&["route", "add", "default", "via", "10.244.1.1"]);
    address(&t.host, "vpod", "10.244.1.1/24");
    address(&t.host, "uplink", "192.0.2.10/24");
    address(&t.internet, "eth0", "192.0.2.1/24");
    let (code, _, err) = t.host.exec("sysctl", &["-w", "net.ipv4.ip_forward=1"]);
    assert_eq!(code, 0, "ip_forward in the host namespace: {err}");
    t
}

/// Start `tcp-probe serve-peer <port>` (IPv4) in `ns` and wait (10 s at most) until `client`
/// reaches it on `addr`.
fn serve_peer(
    ns: &Netns,
    port: u16,
    client: &Netns,
    addr: &str,
    log_dir: &std::path::Path,
) -> Proc {
    serve_peer_on(ns, "0.0.0.0", port, client, addr, log_dir)
}

/// [`serve_peer`] listening on `bind` (`::` for IPv6).
fn serve_peer_on(
    ns: &Netns,
    bind: &str,
    port: u16,
    client: &Netns,
    addr: &str,
    log_dir: &std::path::Path,
) -> Proc {
    let mut cmd = ns.cmd(bin("tcp-probe"));
    cmd.args(["serve-peer", &port.to_string(), bind]);
    let proc = Proc::spawn(
        &format!("tcp-probe-{}", ns.name),
        cmd,
        &log_dir.join(format!("{}.log", ns.name)),
    );
    wait_until(
        &format!("tcp-probe in {} to answer", ns.name),
        Duration::from_secs(10),
        || fetch(client, addr).is_some(),
    );
    proc
}

/// What the server at `addr` saw as our address, fetched from inside `ns`; `None` when the
/// connection failed (tcp-probe gives up after 3 s).
fn fetch(ns: &Netns, addr: &str) -> Option<String> {
    let (code, out, _) = ns.exec(bin("tcp-probe").to_str().unwrap(), &["fetch", addr]);
    (code == 0).then_some(out)
}

#[tokio::test]
async fn masquerade_hides_pods_behind_the_node_address() {
    let t = topology("fw-masq");
    let dir = tempfile::tempdir().unwrap();
    // The server is up (reached from the node itself, which needs no NAT).
    let _server = serve_peer(&t.internet, 8080, &t.host, "192.0.2.1:8080", dir.path());
    assert!(t.pod.ping("10.244.1.1"), "the pod reaches its gateway");

    // Without the rules the reply has no way back to 10.244.1.2.
    assert_eq!(
        fetch(&t.pod, "192.0.2.1:8080"),
        None,
        "reached without NAT?"
    );

    let mut fw = nft_in(&t.host);
    fw.apply(&render(&rules("10.244.0.0/16", "10.244.1.0/24")))
        .await
        .unwrap();
    assert_eq!(
        fetch(&t.pod, "192.0.2.1:8080").as_deref(),
        Some("192.0.2.10"),
        "the pod's connection must arrive from the node's address"
    );

    assert!(cleanup(&mut fw).await.unwrap());
    assert_eq!(
        fetch(&t.pod, "192.0.2.1:8080"),
        None,
        "still masqueraded after cleanup"
    );
}

#[tokio::test]
async fn pod_to_pod_and_inbound_to_own_pods_keep_their_source() {
    let t = topology("fw-keep");
    // A second pod in another node's subnet (10.244.2.0/24), routed through the same host.
    let pod2 = Netns::new("fw-keep-pod2");
    pod2.ip(&["link", "set", "lo", "up"]);
    veth(&pod2, "eth0", &t.host, "vpod2");
    address(&pod2, "eth0", "10.244.2.2/24");
    pod2.ip(&["route", "add", "default", "via", "10.244.2.1"]);
    address(&t.host, "vpod2", "10.244.2.1/24");
    // Here the outside does know the way to the pods (as a router in front of the nodes
    // would), so what arrives shows what the rules did.
    t.internet
        .ip(&["route", "add", "10.244.0.0/16", "via", "192.0.2.10"]);

    let dir = tempfile::tempdir().unwrap();
    let _s_pod = serve_peer(&t.pod, 8080, &t.host, "10.244.1.2:8080", dir.path());
    let _s_pod2 = serve_peer(&pod2, 8080, &t.host, "10.244.2.2:8080", dir.path());
    let _s_net = serve_peer(&t.internet, 8080, &t.host, "192.0.2.1:8080", dir.path());

    nft_in(&t.host)
        .apply(&render(&rules("10.244.0.0/16", "10.244.1.0/24")))
        .await
        .unwrap();

    let cases = [
        (
            &t.pod,
            "10.244.2.2:8080",
            "10.244.1.2",
            "pod to pod keeps the pod source",
        ),
        (
            &t.pod,
            "192.0.2.1:8080",
            "192.0.2.10",
            "pod to outside is masqueraded",
        ),
        (
            &t.internet,
            "10.244.1.2:8080",
            "192.0.2.1",
            "outside to this node's pods keeps its source",
        ),
        (
            &t.internet,
            "10.244.2.2:8080",
            "10.244.2.1",
            "outside to other nodes' pods is masqueraded",
        ),
    ];
    for (client, addr, want, what) in cases {
        assert_eq!(fetch(client, addr).as_deref(), Some(want), "{what}");
    }
}

#[tokio::test]
async fn ipv6_table_lists_the_masquerade_and_forward_rules() {
    let ns = Netns::new("fw6-list");
    let mut fw = nft6_in(&ns);
    assert_eq!(
        fw.list().await.unwrap(),
        None,
        "a fresh namespace has no table"
    );
    fw.apply(&render(&rules(V6_NET, V6_OWN))).await.unwrap();
    let text = listing6(&ns).expect("nft list table ip6 weft");
    for want in [
        "type nat hook postrouting priority srcnat; policy accept;",
        "meta mark & 0x00004000 == 0x00004000 return comment \"marked by kube-proxy",
        "ip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244::/56 return comment \"pod to pod",
        "ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random comment",
        "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:1::/64 return comment",
        "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade fully-random comment",
        "type filter hook forward priority filter; policy accept;",
        "ip6 saddr fd00:10:244::/56 accept comment",
        "ip6 daddr fd00:10:244::/56 accept comment",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert_eq!(fw.list().await.unwrap().as_deref(), Some(text.as_str()));
    assert_eq!(tables(&ns), vec!["table ip6 weft".to_string()]);
}

#[tokio::test]
async fn the_ip_and_ip6_tables_never_touch_each_other() {
    let ns = Netns::new("fw-fams");
    let mut fw4 = nft_in(&ns);
    let mut fw6 = nft6_in(&ns);
    fw4.apply(&render(&rules("10.244.0.0/16", "10.244.1.0/24")))
        .await
        .unwrap();
    assert_eq!(fw6.list().await.unwrap(), None, "applying ip created ip6");
    fw6.apply(&render(&rules(V6_NET, V6_OWN))).await.unwrap();
    let v4 = listing(&ns).unwrap();
    let v6 = listing6(&ns).unwrap();
    assert!(
        !v4.contains("ip6 ") && !v6.contains("ip saddr"),
        "{v4}\n{v6}"
    );

    // Replacing one family's rules leaves the other table as it was.
    fw4.apply(&render(&rules("10.244.0.0/16", "10.244.7.0/24")))
        .await
        .unwrap();
    assert_eq!(listing6(&ns).unwrap(), v6);
    let v4 = listing(&ns).unwrap();
    fw6.apply(&render(&rules(V6_NET, "fd00:10:244:7::/64")))
        .await
        .unwrap();
    assert_eq!(listing(&ns).unwrap(), v4);
    let v6 = listing6(&ns).unwrap();

    // Another family's script is refused before nft runs.
    let err = fw6
        .apply(&render(&rules("10.244.0.0/16", "10.244.9.0/24")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, FirewallError::FamilyMismatch { .. }),
        "{err:?}"
    );
    let err = fw4
        .apply(&render(&rules(V6_NET, V6_OWN)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, FirewallError::FamilyMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(
        (listing(&ns).unwrap(), listing6(&ns).unwrap()),
        (v4.clone(), v6.clone())
    );

    // Removing one leaves the other, and each sees only its own.
    assert!(cleanup(&mut fw6).await.unwrap());
    assert_eq!(listing6(&ns), None);
    assert_eq!(listing(&ns).unwrap(), v4);
    assert!(
        !cleanup(&mut fw6).await.unwrap(),
        "the ip table is not the ip6 table"
    );
    assert_eq!(fw6.list().await.unwrap(), None);
    assert_eq!(fw4.list().await.unwrap().as_deref(), Some(v4.as_str()));

    fw6.apply(&render(&rules(V6_NET, "fd00:10:244:7::/64")))
        .await
        .unwrap();
    assert!(cleanup(&mut fw4).await.unwrap());
    assert_eq!(listing(&ns), None);
    assert_eq!(listing6(&ns).unwrap(), v6);
    assert!(
        !cleanup(&mut fw4).await.unwrap(),
        "the ip6 table is not the ip table"
    );
    assert_eq!(tables(&ns), vec!["table ip6 weft".to_string()]);
}

#[tokio::test]
async fn cleanup_all_families_removes_both_tables_and_nothing_else() {
    let ns = Netns::new("fw-cleanall");
    let (code, _, err) = nft(&ns, &["add", "table", "inet", "other"]);
    assert_eq!(code, 0, "{err}");
    nft_in(&ns)
        .apply(&render(&rules("10.244.0.0/16", "10.244.1.0/24")))
        .await
        .unwrap();
    nft6_in(&ns)
        .apply(&render(&rules(V6_NET, V6_OWN)))
        .await
        .unwrap();
    let removed = cleanup_all_families(|family| nft_in(&ns).for_family(family)).await;
    assert_eq!(
        removed.map(|(f, r)| (f, r.unwrap())),
        [(IpFamily::V4, true), (IpFamily::V6, true)]
    );
    assert_eq!(tables(&ns), vec!["table inet other".to_string()]);
    let again = cleanup_all_families(|family| nft_in(&ns).for_family(family)).await;
    assert_eq!(
        again.map(|(f, r)| (f, r.unwrap())),
        [(IpFamily::V4, false), (IpFamily::V6, false)]
    );
}

#[tokio::test]
async fn ipv6_owner_task_restores_its_table_and_leaves_the_ip_table_alone() {
    let ns = Netns::new("fw6-owner");
    nft_in(&ns)
        .apply(&render(&rules("10.244.0.0/16", "10.244.1.0/24")))
        .await
        .unwrap();
    let v4 = listing(&ns).unwrap();
    let (rules_tx, rules_rx) = watch::channel(Some(rules(V6_NET, V6_OWN)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let repairs = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&repairs);
    let task = tokio::spawn(run_firewall(
        nft6_in(&ns),
        rules_rx,
        Duration::from_millis(100),
        stop_rx,
        move || {
            count.fetch_add(1, Ordering::SeqCst);
        },
    ));
    let name = ns.name.clone();
    let probe = move || {
        let name = name.clone();
        move || listing_in(&name, "ip6")
    };
    let original = weft_tests::wait_for("the first apply", Duration::from_secs(10), || {
        let probe = probe();
        async move { tokio::task::spawn_blocking(probe).await.unwrap() }
    })
    .await;
    assert!(original.contains("ip6 daddr != ff00::/8"), "{original}");

    let (code, _, err) = nft(&ns, &["delete", "table", "ip6", "weft"]);
    assert_eq!(code, 0, "{err}");
    let restored =
        weft_tests::wait_for("the table to be restored", Duration::from_secs(10), || {
            let probe = probe();
            async move { tokio::task::spawn_blocking(probe).await.unwrap() }
        })
        .await;
    assert_eq!(restored, original);
    weft_tests::wait_for("the repair to be counted", Duration::from_secs(5), || {
        let n = repairs.load(Ordering::SeqCst);
        async move { (n == 1).then_some(()) }
    })
    .await;
    assert_eq!(
        listing(&ns).unwrap(),
        v4,
        "the ip6 owner changed table ip weft"
    );

    // Deleting the ip table is not the ip6 owner's business: it stays deleted, and the ip6
    // table stays as it is, over several checks.
    let (code, _, err) = nft(&ns, &["delete", "table", "ip", "weft"]);
    assert_eq!(code, 0, "{err}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(listing(&ns), None);
    assert_eq!(listing6(&ns).unwrap(), original);
    assert_eq!(repairs.load(Ordering::SeqCst), 1);

    stop_tx.send_replace(true);
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("the owner stops")
        .unwrap();
    drop(rules_tx);
    assert!(
        listing6(&ns).is_some(),
        "stopping leaves the table in place"
    );
}

fn address6(ns: &Netns, dev: &str, cidr: &str) {
    // nodad: usable at once, no duplicate address detection to wait for.
    ns.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"]);
    ns.ip(&["link", "set", dev, "up"]);
}

/// [`topology`] over IPv6: a pod (fd00:10:244:1::2) behind a node (fd00:10:244:1::1 towards
/// the pod, 2001:db8::10 upstream, IPv6 forwarding on) and an "internet" host (2001:db8::1)
/// with no route back to fd00:10:244::/56.
fn topology6(tag: &str) -> Topology {
    let t = Topology {
        pod: Netns::new(&format!("{tag}-pod")),
        host: Netns::new(&format!("{tag}-host")),
        internet: Netns::new(&format!("{tag}-net")),
    };
    for ns in [&t.pod, &t.host, &t.internet] {
        ns.ip(&["link", "set", "lo", "up"]);
    }
    let (code, _, err) = t
        .host
        .exec("sysctl", &["-w", "net.ipv6.conf.all.forwarding=1"]);
    assert_eq!(code, 0, "IPv6 forwarding in the host namespace: {err}");
    veth(&t.pod, "eth0", &t.host, "vpod");
    veth(&t.host, "uplink", &t.internet, "eth0");
    address6(&t.pod, "eth0", "fd00:10:244:1::2/64");
    t.pod
        .ip(&["-6", "route", "add", "default", "via", "fd00:10:244:1::1"]);
    address6(&t.host, "vpod", "fd00:10:244:1::1/64");
    address6(&t.host, "uplink", "2001:db8::10/64");
    address6(&t.internet, "eth0", "2001:db8::1/64");
    t
}

#[tokio::test]
async fn ipv6_masquerade_hides_pods_behind_the_node_address() {
    let t = topology6("fw6-masq");
    let dir = tempfile::tempdir().unwrap();
    let _server = serve_peer_on(
        &t.internet,
        "::",
        8080,
        &t.host,
        "[2001:db8::1]:8080",
        dir.path(),
    );
    assert!(
        t.pod.ping("fd00:10:244:1::1"),
        "the pod reaches its gateway"
    );

    // Without the rules the reply has no way back to fd00:10:244:1::2.
    assert_eq!(
        fetch(&t.pod, "[2001:db8::1]:8080"),
        None,
        "reached without NAT?"
    );

    let mut fw = nft6_in(&t.host);
    fw.apply(&render(&rules(V6_NET, V6_OWN))).await.unwrap();
    assert_eq!(
        fetch(&t.pod, "[2001:db8::1]:8080").as_deref(),
        Some("2001:db8::10"),
        "the pod's connection must arrive from the node's address"
    );

    // The ip table has no say over IPv6: removing it (absent here) changes nothing.
    assert!(!cleanup(&mut nft_in(&t.host)).await.unwrap());
    assert_eq!(
        fetch(&t.pod, "[2001:db8::1]:8080").as_deref(),
        Some("2001:db8::10")
    );

    assert!(cleanup(&mut fw).await.unwrap());
    assert_eq!(
        fetch(&t.pod, "[2001:db8::1]:8080"),
        None,
        "still masqueraded after cleanup"
    );
}

#[tokio::test]
async fn ipv6_pod_to_pod_and_inbound_to_own_pods_keep_their_source() {
    let t = topology6("fw6-keep");
    // A second pod in another node's subnet (fd00:10:244:2::/64), routed through the same
    // host.
    let pod2 = Netns::new("fw6-keep-pod2");
    pod2.ip(&["link", "set", "lo", "up"]);
    veth(&pod2, "eth0", &t.host, "vpod2");
    address6(&pod2, "eth0", "fd00:10:244:2::2/64");
    pod2.ip(&["-6", "route", "add", "default", "via", "fd00:10:244:2::1"]);
    address6(&t.host, "vpod2", "fd00:10:244:2::1/64");
    // The outside knows the way to the pods here, so what arrives shows what the rules did.
    t.internet
        .ip(&["-6", "route", "add", V6_NET, "via", "2001:db8::10"]);

    let dir = tempfile::tempdir().unwrap();
    let _s_pod = serve_peer_on(
        &t.pod,
        "::",
        8080,
        &t.host,
        "[fd00:10:244:1::2]:8080",
        dir.path(),
    );
    let _s_pod2 = serve_peer_on(
        &pod2,
        "::",
        8080,
        &t.host,
        "[fd00:10:244:2::2]:8080",
        dir.path(),
    );
    let _s_net = serve_peer_on(
        &t.internet,
        "::",
        8080,
        &t.host,
        "[2001:db8::1]:8080",
        dir.path(),
    );

    nft6_in(&t.host)
        .apply(&render(&rules(V6_NET, V6_OWN)))
        .await
        .unwrap();

    let cases = [
        (
            &t.pod,
            "[fd00:10:244:2::2]:8080",
            "fd00:10:244:1::2",
            "pod to pod keeps the pod source",
        ),
        (
            &t.pod,
            "[2001:db8::1]:8080",
            "2001:db8::10",
            "pod to outside is masqueraded",
        ),
        (
            &t.internet,
            "[fd00:10:244:1::2]:8080",
            "2001:db8::1",
            "outside to this node's pods keeps its source",
        ),
        (
            &t.internet,
            "[fd00:10:244:2::2]:8080",
            "fd00:10:244:2::1",
            "outside to other nodes' pods is masqueraded",
        ),
    ];
    for (client, addr, want, what) in cases {
        assert_eq!(fetch(client, addr).as_deref(), Some(want), "{what}");
    }
}
