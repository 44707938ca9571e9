//! WireGuard data-plane benchmark (not a test): 5,000 peers programmed on a fresh
//! `weft-wg` device through the userspace implementation (`wireguard-go`; this machine's
//! kernel has no WireGuard), and the cost of reading them back (what every reconcile pass
//! pays). weft's own path: plan, observe, diff, apply through [`KernelNetlink`], against
//! `wg setconf` of the same peers from a file, each in a fresh namespace.
//!
//!   cargo build --release --workspace --bins && sudo target/release/bench-wireguard [--peers 5000] [--rounds 3]
//!
//! It runs itself inside each namespace (`ip netns exec`, with a private `/run/wireguard`
//! bound over a temporary directory), so that the `wireguard-go` weft starts is in it.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use ipnetwork::IpNetwork;
use weft_backends::backend::wireguard::kernel::{Implementation, WireguardKernel};
use weft_backends::backend::wireguard::{Endpoints, Key, PrivateKey, WireguardSettings};
use weft_backends::backend::{Backend, BackendData};
use weft_backends::dataplane::{KernelNetlink, Netlink};
use weft_backends::plan::{diff, Underlay};
use weft_backends::{BackendKind, IpFamily, Peer};
use weft_tests::bench::{flag_value, machine, quantile, write_section, PeerNumbering, PEERS};
use weft_tests::lab::wireguard_go;
use weft_tests::netns::Netns;

/// The peers' numbering: as the other benchmarks', but from 10.20.0.0/24 on.
const WG_PEERS: PeerNumbering = PeerNumbering {
    first_subnet: Ipv4Addr::new(10, 20, 0, 0),
    ..PEERS
};

fn key(i: usize) -> Key {
    let mut b = [0u8; 32];
    // Clamping changes the low bits of the first byte: the index goes after it.
    b[1..9].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    PrivateKey::from_bytes(b).public_key()
}

fn peers(n: usize) -> Vec<Peer> {
    (0..n)
        .map(|i| Peer {
            subnet: WG_PEERS.subnet(i),
            public_ip: WG_PEERS.public_ip(i),
            subnet_v6: None,
            public_ip_v6: None,
            backend: BackendKind::Wireguard,
            data: Some(BackendData::wireguard(key(i), 51820)),
            data_v6: None,
            node_name: None,
        })
        .collect()
}

fn settings(index: u32) -> WireguardSettings {
    WireguardSettings {
        device: "weft-wg".into(),
        listen_port: 51820,
        public_key: PrivateKey::from_bytes([7; 32]).public_key(),
        preshared_key: None,
        keepalive: 0,
        mtu: 1440,
        network: "10.0.0.0/8".parse().unwrap(),
        underlay: Underlay {
            index,
            ip: "10.9.0.1".parse().unwrap(),
            mtu: 1500,
            connected: vec!["10.9.0.0/24".parse().unwrap()],
        },
        endpoints: Endpoints::Family(IpFamily::V4),
    }
}

/// Inside a namespace: weft's path. Prints `program_ms read_back_ms peers`.
fn inside_weft(n: usize, index: u32) {
    let s = settings(index);
    let own: IpNetwork = "10.255.255.0/24".parse().unwrap();
    let peer_list = peers(n);
    let t = Instant::now();
    let plan = s.plan(own, &peer_list);
    let mut nl = KernelNetlink::open("weft.1", IpFamily::V4)
        .unwrap()
        .with_wireguard(WireguardKernel::configured(
            "weft-wg",
            IpFamily::V4,
            PrivateKey::from_bytes([7; 32]),
            Implementation::userspace(wireguard_go()),
        ));
    let observed = nl.observe().unwrap();
    let ops = diff(&observed, &plan.state);
    let report = nl.apply(&ops);
    assert!(report.ok(), "{:?}", report.failures.first());
    let program = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let again = nl.observe().unwrap();
    let read_back = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(again.wireguard.peers.len(), n);
    assert!(
        diff(&again, &plan.state).is_empty(),
        "the kernel holds the plan"
    );
    println!(
        "{program:.1} {read_back:.1} {}",
        again.wireguard.peers.len()
    );
}

/// Inside a namespace: `wireguard-go` started by hand and `wg setconf` with the same peers.
fn inside_wg(n: usize) {
    let t = Instant::now();
    // In the foreground, output to nowhere: nothing of it holds the caller's pipe open. It
    // outlives this process (as weft's does) and is ended by the caller, in its namespace.
    #[allow(clippy::zombie_processes)]
    let _child = Command::new(wireguard_go())
        .args(["-f", "weft-wg"])
        .env("LOG_LEVEL", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let socket = Path::new("/run/wireguard/weft-wg.sock");
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "wireguard-go did not start");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut conf = String::from("[Interface]\nListenPort = 51820\nPrivateKey = ");
    conf.push_str(&PrivateKey::from_bytes([7; 32]).to_base64());
    conf.push('\n');
    for p in peers(n) {
        let Some(BackendData::Wireguard(w)) = p.data else {
            unreachable!()
        };
        conf.push_str(&format!(
            "[Peer]\nPublicKey = {}\nEndpoint = {}:51820\nAllowedIPs = {}\n",
            w.public_key, p.public_ip, p.subnet
        ));
    }
    let file = std::env::temp_dir().join(format!("bench-wg-{}.conf", std::process::id()));
    std::fs::write(&file, conf).unwrap();
    let ok = Command::new("wg")
        .arg("setconf")
        .arg("weft-wg")
        .arg(&file)
        .status()
        .unwrap();
    assert!(ok.success());
    for args in [
        vec!["addr", "add", "10.255.255.0/32", "dev", "weft-wg"],
        vec!["link", "set", "weft-wg", "mtu", "1440", "up"],
        vec!["route", "add", "10.0.0.0/8", "dev", "weft-wg"],
    ] {
        assert!(Command::new("ip").args(&args).status().unwrap().success());
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let _ = std::fs::remove_file(file);
    println!("{ms:.1} 0 {n}");
}

/// Run this binary inside a fresh namespace with its own /run/wireguard; its output line.
fn in_fresh_namespace(mode: &str, n: usize) -> Vec<f64> {
    let (ns, index) = Netns::with_underlay("bwg");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all("/run/wireguard").unwrap();
    let me = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "sh",
            "-ec",
            r#"mount --bind "$0" /run/wireguard; exec "$@""#,
        ])
        .arg(dir.path())
        .arg(&me)
        .args([
            "--inside",
            mode,
            "--peers",
            &n.to_string(),
            "--index",
            &index.to_string(),
        ])
        .output()
        .unwrap();
    end_wireguard_go(&ns.path());
    assert!(
        out.status.success(),
        "{mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

/// End the wireguard-go of a run: the processes of that name in the run's namespace (weft's
/// is also named in its pid file; the hand-started one writes none).
fn end_wireguard_go(ns: &Path) {
    use std::os::unix::fs::MetadataExt;
    let inode = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let Some(want) = inode(ns) else { return };
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "wireguard-go"
            && inode(Path::new(&format!("/proc/{pid}/ns/net"))) == Some(want)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

fn main() {
    let n: usize = flag_value("--peers").unwrap_or(5000);
    if let Some(mode) = flag_value::<String>("--inside") {
        match mode.as_str() {
            "weft" => inside_weft(n, flag_value("--index").unwrap_or(0)),
            _ => inside_wg(n),
        }
        return;
    }
    weft_tests::netns::require_root();
    let rounds: u64 = flag_value("--rounds").unwrap_or(3);
    let (mut weft, mut wg, mut read) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let w = in_fresh_namespace("weft", n);
        let g = in_fresh_namespace("wg", n);
        eprintln!(
            "round {r}: weft {:.1} ms (read back {:.1} ms), wg setconf {:.1} ms",
            w[0], w[1], g[0]
        );
        weft.push(w[0]);
        read.push(w[1]);
        wg.push(g[0]);
    }
    let (mw, mg, mr) = (
        quantile(&weft, 0.5),
        quantile(&wg, 0.5),
        quantile(&read, 0.5),
    );
    let table = format!(
        "| path | {n} peers programmed (ms, median) |\n|---|---|\n| weft: plan, read back, diff, apply through wireguard-go's socket | {mw:.0} |\n| `wireguard-go` + `wg setconf` of the same peers + `ip` for address, MTU and route | {mg:.0} |\n| weft / wg | {:.2}× |\n| weft: reading the {n} peers back (every reconcile pass) | {mr:.0} |",
        mw / mg
    );
    println!("{table}");
    let section = format!(
        "<!-- bench-wireguard:begin -->\n## WireGuard: {n} peers programmed\n\nMeasured by `target/release/bench-wireguard --peers {n} --rounds {rounds}` (tests/src/bin/bench-wireguard.rs) on {}: each run in a fresh namespace with the userspace implementation (`wireguard-go` from Debian; this machine's kernel has no WireGuard), from nothing to a device with {n} peers (one allowed /24 and an endpoint each), the cluster route and the address. Both paths include starting `wireguard-go`. Median of {rounds} rounds.\n\n{table}\n\nThe read-back is what weft pays on every reconcile pass of a wireguard node (the periodic resync and every change): the whole peer list over the configuration socket.\n<!-- bench-wireguard:end -->\n",
        machine()
    );
    write_section("bench-wireguard", &section);
}
