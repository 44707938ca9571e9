//! Hostile or mistaken leases in a running cluster: each is refused with a warning
//! naming it and a metric, and nothing in any host's kernel changes. (A lease whose route would
//! shadow a host's own underlay needs a cluster network that overlaps the hosts' network, in
//! which the hosts' own public IPs would be refused too; that case is covered by the plan's
//! table test, `peers_whose_route_would_shadow_the_node_are_refused_by_both_backends`.)

use std::time::{Duration, Instant};

use weft_tests::lab::{Lab, LabOptions, ETCD_PREFIX};

fn kernel_state(lab: &Lab, h: usize) -> String {
    let mut all = String::new();
    for (prog, args) in [
        ("ip", vec!["route"]),
        ("ip", vec!["neigh", "show", "dev", "weft.1"]),
        ("bridge", vec!["fdb", "show", "dev", "weft.1"]),
    ] {
        let (code, out, err) = lab.exec_in(lab.host_name(h), prog, &args);
        assert_eq!(code, 0, "{prog} {args:?}: {err}");
        all.push_str(&out);
    }
    all
}

fn metric(lab: &Lab, h: usize, name: &str) -> f64 {
    weft_tests::procs::metric(&lab.metrics(h), name).unwrap_or_else(|| panic!("no {name}"))
}

fn put(lab: &Lab, key: &str, ip: &str, mac: &str) {
    let value = format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}},"NodeName":"intruder"}}"#
    );
    let (code, _, err) = lab.etcdctl(&["put", &format!("{ETCD_PREFIX}/subnets/{key}"), &value]);
    assert_eq!(code, 0, "{err}");
}

/// Wait (bounded) until host `h`'s log has `text`.
fn logged(lab: &Lab, h: usize, text: &str) {
    let start = Instant::now();
    while !lab.weftd_log(h).contains(text) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "h{h} did not log {text:?}:\n{}",
            lab.weftd_log(h)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hostile_leases_are_refused_with_a_warning_and_a_metric_and_change_no_kernel() {
    let lab = Lab::up(
        LabOptions {
            hosts: 2,
            pods_per_host: 1,
            ..LabOptions::default()
        },
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("lab: {e}"));
    let (p1, ip2) = (lab.pods()[0].name.clone(), lab.pods()[1].ip);
    let start = Instant::now();
    while !lab.ping(&p1, ip2) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pods never reached each other"
        );
    }
    let before: Vec<String> = (1..=2).map(|h| kernel_state(&lab, h)).collect();
    let s2 = lab.subnet(2).unwrap();
    let h2_ip = lab.host_ip(2).to_string();
    // Three subnets no host holds (the hosts lease at random), so no put overwrites a real
    // lease.
    let free: Vec<String> = (200u8..=255)
        .map(|n| format!("10.244.{n}.0"))
        .filter(|s| (1..=2).all(|h| lab.subnet(h).unwrap().network().to_string() != *s))
        .take(3)
        .collect();

    // 1. A second key for h2's subnet, pointing elsewhere.
    put(
        &lab,
        &format!("{}-24&fc00::-64", s2.network()),
        "10.250.0.66",
        "0e:66:00:00:00:01",
    );
    // 2. Another subnet claiming h2's public IP.
    put(
        &lab,
        &format!("{}-24", free[0]),
        &h2_ip,
        "0e:66:00:00:00:02",
    );
    // 3. A public IP inside the cluster network.
    put(
        &lab,
        &format!("{}-24", free[1]),
        "10.244.7.7",
        "0e:66:00:00:00:03",
    );
    // 4. A public IP equal to the receiving host's own.
    let h1_ip = lab.host_ip(1).to_string();
    put(
        &lab,
        &format!("{}-24", free[2]),
        &h1_ip,
        "0e:66:00:00:00:04",
    );

    // Every host says why, in its own terms: h2 sees the duplicate of its own subnet as its
    // own key and a copy of its own address; h1 sees a duplicate and a copied address.
    for (h, texts) in [
        (
            1,
            vec![
                "several leases claim one subnet; using the oldest",
                "refusing a lease whose public IP",
                "is inside the cluster network 10.244.0.0/16",
                "is this node's own address",
            ],
        ),
        (
            2,
            vec![
                "refusing a lease that claims this node's own subnet",
                "refusing a lease whose public IP",
                "is inside the cluster network 10.244.0.0/16",
                "is this node's own address",
            ],
        ),
    ] {
        for text in texts {
            logged(&lab, h, text);
        }
    }
    for h in 1..=2 {
        let invalid = metric(&lab, h, "weft_invalid_leases");
        assert!(invalid >= 4.0, "h{h}: weft_invalid_leases {invalid}");
        assert_eq!(
            metric(&lab, h, "weft_peers"),
            1.0,
            "h{h}: only the real peer"
        );
    }
    // A resync later (the reconciler has applied everything it was going to), the kernel of
    // each host is exactly as before and traffic still flows.
    std::thread::sleep(Duration::from_millis(300));
    for h in 1..=2 {
        let now = kernel_state(&lab, h);
        assert_eq!(now, before[h - 1], "h{h}'s kernel changed");
        assert!(
            !now.contains("0e:66:00:00"),
            "an intruder MAC was programmed on h{h}"
        );
    }
    assert!(lab.ping(&p1, ip2), "pods still reach each other");
}
