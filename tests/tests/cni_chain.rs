//! weft as the first plugin of a conflist, followed by the reference `portmap` plugin
//! (Debian's containernetworking-plugins): a client outside the node reaches a pod through a
//! host port, and DEL through the chain removes the mapping and the attachment.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_tests::netns::{cni_call, Netns};
use weft_tests::procs::{bin, Proc};

const PORTMAP: &str = "/usr/lib/cni/portmap";

fn fetch(client: &Netns, target: &str) -> Option<String> {
    let (code, out, _) = client.exec(bin("tcp-probe").to_str().unwrap(), &["fetch", target]);
    (code == 0).then_some(out)
}

#[test]
fn weft_then_portmap_forwards_a_host_port_to_the_pod() {
    assert!(
        Path::new(PORTMAP).exists(),
        "{PORTMAP} is missing: run tests/install-deps.sh (containernetworking-plugins)"
    );
    let dir = tempfile::tempdir().unwrap();
    let host = Netns::new("chain");
    let pod = Netns::new("chain-pod");
    let client = Netns::new("chain-cli");
    // The node's uplink: a veth between the host namespace and a client namespace.
    let (h_if, c_if) = ("up0", "up1");
    host.ip(&[
        "link",
        "add",
        h_if,
        "type",
        "veth",
        "peer",
        "name",
        c_if,
        "netns",
        &client.name,
    ]);
    host.ip(&["addr", "add", "192.0.2.1/24", "dev", h_if]);
    host.ip(&["link", "set", h_if, "up"]);
    client.ip(&["addr", "add", "192.0.2.2/24", "dev", c_if]);
    client.ip(&["link", "set", c_if, "up"]);

    let subnet_file = dir.path().join("subnet.env");
    std::fs::write(
        &subnet_file,
        "FLANNEL_NETWORK=10.81.0.0/16\nFLANNEL_SUBNET=10.81.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    // The conflist as a runtime holds it; the runtime hands each plugin its own entry plus
    // the list's name and cniVersion, and portmap its runtimeConfig.
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "wchain",
        "plugins": [
            {"type": "weft", "subnetFile": subnet_file, "dataDir": dir.path().join("ipam")},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ]
    });
    let plugin_conf = |i: usize, prev: Option<&Value>| {
        let mut c = conflist["plugins"][i].clone();
        c["cniVersion"] = conflist["cniVersion"].clone();
        c["name"] = conflist["name"].clone();
        if i == 1 {
            c["runtimeConfig"] = json!({"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]});
        }
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c.to_string()
    };
    let netns = pod.path().display().to_string();
    let env = |cmd: &'static str| {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "chain-ctr"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_PATH", "/usr/lib/cni"),
        ]
    };
    let weft = bin("weft");
    let portmap = Path::new(PORTMAP).to_path_buf();

    let r1 = cni_call(&weft, &host, &env("ADD"), plugin_conf(0, None).as_bytes())
        .ok()
        .json();
    let r2 = cni_call(
        &portmap,
        &host,
        &env("ADD"),
        plugin_conf(1, Some(&r1)).as_bytes(),
    )
    .ok()
    .json();
    // portmap passes weft's result through.
    assert_eq!(r2["ips"], r1["ips"], "{r2}");
    let pod_ip = r1["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();

    let mut server = pod.cmd(bin("tcp-probe"));
    server.args(["serve", "8080", "hello-from-the-pod"]);
    let _server = Proc::spawn("tcp-probe", server, &dir.path().join("server.log"));
    // The server is up once the pod answers on its own address.
    let start = Instant::now();
    while fetch(&host, &format!("{pod_ip}:8080")).is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the pod's server never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The client reaches the pod only through the node's host port.
    assert_eq!(
        fetch(&client, "192.0.2.1:18080").as_deref(),
        Some("hello-from-the-pod"),
        "host port 18080 does not reach the pod"
    );

    // CHECK through the chain, then DEL in reverse order.
    cni_call(
        &weft,
        &host,
        &env("CHECK"),
        plugin_conf(0, Some(&r2)).as_bytes(),
    )
    .ok();
    cni_call(
        &portmap,
        &host,
        &env("DEL"),
        plugin_conf(1, Some(&r2)).as_bytes(),
    )
    .ok();
    cni_call(
        &weft,
        &host,
        &env("DEL"),
        plugin_conf(0, Some(&r2)).as_bytes(),
    )
    .ok();
    assert_eq!(
        fetch(&client, "192.0.2.1:18080"),
        None,
        "the mapping survived DEL"
    );
    assert_eq!(pod.links(), vec!["lo"]);
    let records = std::fs::read_dir(dir.path().join("ipam/wchain"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("ip-"))
        .count();
    assert_eq!(records, 0);
}
