//! CNI plugin benchmark: weft against the reference `bridge` + `host-local` plugins
//! (Debian's containernetworking-plugins), in the same run, on the same machine, in the same
//! kind of namespaces. Each plugin gets its own bridge and subnet in one test "host"
//! namespace; the benchmark process enters that namespace once, before it starts any thread,
//! so the plugins are spawned directly (no `ip netns exec` in the measured time).
//!
//! Measured per call: spawn → exit of the plugin process, stdin config included.
//! - 200 sequential ADD + DEL pairs (the two plugins interleaved, so both see the same noise);
//! - 16 ADDs in parallel then 16 DELs in parallel, for 10 rounds;
//! - VERSION.
//!
//!   cargo build --release --workspace --bins && sudo target/release/bench-cni [--seq 200]

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::Instant;

use serde_json::json;
use weft_tests::bench::{machine, quantile, write_section};
use weft_tests::netns::Netns;

const REF_DIR: &str = "/usr/lib/cni";

struct Plugin {
    label: &'static str,
    bin: PathBuf,
    conf: String,
}

impl Plugin {
    /// One call; returns milliseconds from spawn to exit. Panics on a failed call.
    fn call(&self, cmd: &str, cid: &str, netns: &Path) -> f64 {
        let start = Instant::now();
        let mut child = Command::new(&self.bin)
            .env_clear()
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", REF_DIR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plugin");
        // VERSION need not read its stdin; a plugin that exits first closes the pipe.
        let _ = child.stdin.take().unwrap().write_all(self.conf.as_bytes());
        let out = child.wait_with_output().expect("wait plugin");
        let ms = start.elapsed().as_secs_f64() * 1e3;
        assert!(
            out.status.success(),
            "{} {cmd} {cid} failed: {} {}",
            self.label,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ms
    }
}

#[derive(Default)]
struct Samples {
    add: Vec<f64>,
    del: Vec<f64>,
}

fn main() {
    let mut seq = 200usize;
    let mut rounds = 10usize;
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--seq" => seq = args[i + 1].parse().expect("--seq N"),
            "--rounds" => rounds = args[i + 1].parse().expect("--rounds N"),
            other => panic!("unknown argument {other}; usage: bench-cni [--seq N] [--rounds N]"),
        }
        i += 2;
    }
    const PAR: usize = 16;
    for p in ["bridge", "host-local"] {
        assert!(
            Path::new(REF_DIR).join(p).exists(),
            "{REF_DIR}/{p} missing: run tests/install-deps.sh"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let host = Netns::new("bench-host");
    let seq_pod = Netns::new("bench-pod");
    let pods: Vec<Netns> = (0..PAR).map(|_| Netns::new("bench-pod")).collect();
    // Enter the host namespace now, while this process has one thread; every thread and
    // child made from here on starts in it.
    let ns = File::open(host.path()).unwrap();
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter host namespace");

    let subnet_file = dir.path().join("subnet.env");
    std::fs::write(
        &subnet_file,
        "FLANNEL_NETWORK=10.90.0.0/16\nFLANNEL_SUBNET=10.90.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    let weft_bin = {
        let exe = std::env::current_exe().unwrap();
        exe.parent().unwrap().join("weft")
    };
    let weft = Plugin {
        label: "weft",
        bin: weft_bin,
        conf: json!({"cniVersion": "1.0.0", "name": "bw", "type": "weft",
            "subnetFile": subnet_file, "dataDir": dir.path().join("weft-ipam"),
            "bridge": "cni-w", "hairpinMode": true})
        .to_string(),
    };
    let reference = Plugin {
        label: "bridge+host-local",
        bin: Path::new(REF_DIR).join("bridge"),
        conf: json!({"cniVersion": "1.0.0", "name": "br", "type": "bridge",
            "bridge": "cni-r", "isGateway": true, "hairpinMode": true, "mtu": 1450,
            "ipam": {"type": "host-local", "subnet": "10.91.1.0/24",
                     "dataDir": dir.path().join("host-local"),
                     "routes": [{"dst": "0.0.0.0/0"}]}})
        .to_string(),
    };
    let plugins = [&weft, &reference];

    // Warm-up: each plugin makes its bridge once (the reference plugin races on a fresh
    // bridge otherwise) and the page cache holds both binaries.
    for p in plugins {
        p.call("ADD", "warm", &seq_pod.path());
        p.call("DEL", "warm", &seq_pod.path());
    }

    let mut sequential: [Samples; 2] = Default::default();
    for i in 0..seq {
        for (k, p) in plugins.iter().enumerate() {
            let cid = format!("seq-{i}");
            sequential[k].add.push(p.call("ADD", &cid, &seq_pod.path()));
            sequential[k].del.push(p.call("DEL", &cid, &seq_pod.path()));
        }
    }

    let mut parallel: [Samples; 2] = Default::default();
    let mut par_rates: [Vec<f64>; 2] = Default::default();
    for r in 0..rounds {
        for (k, p) in plugins.iter().enumerate() {
            for cmd in ["ADD", "DEL"] {
                let barrier = Barrier::new(PAR);
                let start = Instant::now();
                let times: Vec<f64> = std::thread::scope(|s| {
                    let hs: Vec<_> = pods
                        .iter()
                        .enumerate()
                        .map(|(j, pod)| {
                            let barrier = &barrier;
                            s.spawn(move || {
                                barrier.wait();
                                p.call(cmd, &format!("par-{r}-{j}"), &pod.path())
                            })
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap()).collect()
                });
                let wall = start.elapsed().as_secs_f64();
                if cmd == "ADD" {
                    parallel[k].add.extend(&times);
                    par_rates[k].push(PAR as f64 / wall);
                } else {
                    parallel[k].del.extend(&times);
                }
            }
        }
    }

    let mut version: [Vec<f64>; 2] = Default::default();
    for _ in 0..seq {
        for (k, p) in plugins.iter().enumerate() {
            version[k].push(p.call("VERSION", "v", &seq_pod.path()));
        }
    }

    let med = |v: &[f64]| quantile(v, 0.5);
    let p99 = |v: &[f64]| quantile(v, 0.99);
    let mut rows = Vec::new();
    let mut row = |case: &str, w: &[f64], r: &[f64]| {
        rows.push(format!(
            "| {case} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}× |",
            med(w),
            p99(w),
            med(r),
            p99(r),
            med(w) / med(r)
        ));
    };
    let pair = |s: &Samples| -> Vec<f64> { s.add.iter().zip(&s.del).map(|(a, d)| a + d).collect() };
    row(
        &format!("ADD, {seq} sequential"),
        &sequential[0].add,
        &sequential[1].add,
    );
    row(
        &format!("DEL, {seq} sequential"),
        &sequential[0].del,
        &sequential[1].del,
    );
    row(
        &format!("ADD+DEL pair, {seq} sequential"),
        &pair(&sequential[0]),
        &pair(&sequential[1]),
    );
    row(
        &format!("ADD, {PAR} in parallel ×{rounds}"),
        &parallel[0].add,
        &parallel[1].add,
    );
    row(
        &format!("DEL, {PAR} in parallel ×{rounds}"),
        &parallel[0].del,
        &parallel[1].del,
    );
    row(&format!("VERSION ×{seq}"), &version[0], &version[1]);
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len() as f64 / 1e6)
            .unwrap_or(0.0)
    };
    let table = format!(
        "| case | weft median (ms) | weft p99 (ms) | reference median (ms) | reference p99 (ms) | weft / reference (median) |\n|---|---|---|---|---|---|\n{}",
        rows.join("\n")
    );
    let section = format!(
        "<!-- bench-cni:begin -->\n## CNI plugin: weft vs bridge + host-local\n\nMeasured by `target/release/bench-cni --seq {seq} --rounds {rounds}` (tests/src/bin/bench-cni.rs) on {}: the release `weft` binary against Debian's reference `bridge` plugin with `host-local` IPAM (containernetworking-plugins, /usr/lib/cni), both in one test host namespace with their own bridge and a /24, pods in test namespaces, hairpin on, MTU 1450. A sample is one plugin process from spawn to exit. Sequential pairs interleave the two plugins; the parallel rounds start {PAR} calls at once behind a barrier.\n\n{table}\n\nParallel ADD throughput: weft {:.0} ADD/s, reference {:.0} ADD/s (median of the rounds). Binary size: weft {:.1} MB; bridge {:.1} MB + host-local {:.1} MB.\n\nWhy weft is cheaper per call: one binary with no plugin-to-plugin exec for IPAM, a blocking netlink socket instead of a runtime, the pod end of the veth created directly inside the pod namespace with its name, MAC and MTU in the creating request, and the host veth name derived from the attachment so DEL is one netlink request plus one file removal.\n\nDEL is kernel-bound for both plugins: removing any network device on this machine takes the kernel 15–40 ms (it waits for RCU grace periods; `ip link del` of an idle bridge measures the same), which is why the DEL rows and the ADD+DEL pair stay close to 1×. The targets: weft's ADD median against the reference's, p99 under 20 ms with 16 in parallel, VERSION under 2 ms.\n<!-- bench-cni:end -->\n",
        machine(),
        med(&par_rates[0]),
        med(&par_rates[1]),
        size(&weft.bin),
        size(&reference.bin),
        size(&Path::new(REF_DIR).join("host-local")),
    );
    println!("{table}");
    write_section("bench-cni", &section);
    drop(pods);
    drop(seq_pod);
    drop(host);
}
