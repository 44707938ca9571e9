//! CNI plugin benchmark: weft as shipped (statically linked, built by
//! cni-plugin/build-static.sh) against the reference `bridge` + `host-local` plugins
//! (Debian's containernetworking-plugins), in the same run, on the same machine, in the same
//! kind of namespaces. Each plugin gets its own bridge and subnet in one test "host"
//! namespace; the benchmark process enters that namespace once, before it starts any thread,
//! so the plugins are spawned directly (no `ip netns exec` in the measured time).
//! `--dynamic PATH` also measures another build of weft (the workspace's dynamically linked
//! `target/release/weft`) in the same run.
//!
//! Measured per call: spawn → exit of the plugin process, stdin config included.
//! - 200 sequential ADD + DEL pairs (the plugins interleaved, so all see the same noise);
//! - 16 ADDs in parallel then 16 DELs in parallel, for 10 rounds;
//! - VERSION.
//!
//!   cargo build --release --workspace --bins
//!   sudo target/release/bench-cni [--seq 200] [--rounds 10] [--weft PATH] [--dynamic target/release/weft]

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::Instant;

use serde_json::json;
use weft_tests::bench::{machine, quantile, write_section};
use weft_tests::netns::Netns;
use weft_tests::shipped::{linkage, static_plugin, Profile};

const REF_DIR: &str = "/usr/lib/cni";

struct Plugin {
    label: String,
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

/// "static" or "dynamic", as the binary's ELF headers say.
fn linked(bin: &Path) -> &'static str {
    match linkage(bin) {
        Ok(l) if l.is_static() => "static",
        Ok(_) => "dynamic",
        Err(e) => panic!("{e}"),
    }
}

/// `p` relative to the workspace root, as the docs name files.
fn rel(p: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(|r| r.canonicalize().ok());
    let p = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    match root.as_deref().and_then(|r| p.strip_prefix(r).ok()) {
        Some(inside) => inside.display().to_string(),
        None => p.display().to_string(),
    }
}

/// The 1-minute load average, for reading the figures (other work on the machine shows in
/// every plugin's times alike, not in the ratios).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

fn size_mb(p: &Path) -> f64 {
    std::fs::metadata(p)
        .map(|m| m.len() as f64 / 1e6)
        .unwrap_or(0.0)
}

fn main() {
    let mut seq = 200usize;
    let mut rounds = 10usize;
    let mut weft_bin: Option<PathBuf> = None;
    let mut dynamic_bin: Option<PathBuf> = None;
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench-cni [--seq N] [--rounds N] [--weft PATH] [--dynamic PATH]";
    let mut i = 1;
    while i < args.len() {
        let value = args.get(i + 1).unwrap_or_else(|| panic!("{usage}"));
        match args[i].as_str() {
            "--seq" => seq = value.parse().expect("--seq N"),
            "--rounds" => rounds = value.parse().expect("--rounds N"),
            "--weft" => weft_bin = Some(PathBuf::from(value)),
            "--dynamic" => dynamic_bin = Some(PathBuf::from(value)),
            other => panic!("unknown argument {other}; {usage}"),
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
    // The plugin as shipped, unless told otherwise; built before any namespace exists.
    let weft_bin = weft_bin.unwrap_or_else(|| static_plugin(Profile::Release));
    let load_before = load_average();
    let dir = tempfile::tempdir().unwrap();
    let host = Netns::new("bench-host");
    let seq_pod = Netns::new("bench-pod");
    let pods: Vec<Netns> = (0..PAR).map(|_| Netns::new("bench-pod")).collect();
    // Enter the host namespace now, while this process has one thread; every thread and
    // child made from here on starts in it.
    let ns = File::open(host.path()).unwrap();
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter host namespace");

    // Each weft build gets its own subnet file (its own /24), IPAM directory and bridge.
    let weft_plugin = |label: String, bin: PathBuf, tag: &str, third_octet: u8| {
        let subnet_file = dir.path().join(format!("subnet-{tag}.env"));
        std::fs::write(
            &subnet_file,
            format!("FLANNEL_NETWORK=10.90.0.0/16\nFLANNEL_SUBNET=10.90.{third_octet}.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"),
        )
        .unwrap();
        Plugin {
            label,
            bin,
            conf: json!({"cniVersion": "1.0.0", "name": format!("bw-{tag}"), "type": "weft",
                "subnetFile": subnet_file, "dataDir": dir.path().join(format!("weft-ipam-{tag}")),
                "bridge": format!("cni-w{tag}"), "hairpinMode": true})
            .to_string(),
        }
    };
    let mut plugins = vec![weft_plugin(
        format!("weft ({})", linked(&weft_bin)),
        weft_bin,
        "s",
        1,
    )];
    if let Some(bin) = dynamic_bin {
        plugins.push(weft_plugin(format!("weft ({})", linked(&bin)), bin, "d", 2));
    }
    plugins.push(Plugin {
        label: "reference".into(),
        bin: Path::new(REF_DIR).join("bridge"),
        conf: json!({"cniVersion": "1.0.0", "name": "br", "type": "bridge",
            "bridge": "cni-r", "isGateway": true, "hairpinMode": true, "mtu": 1450,
            "ipam": {"type": "host-local", "subnet": "10.91.1.0/24",
                     "dataDir": dir.path().join("host-local"),
                     "routes": [{"dst": "0.0.0.0/0"}]}})
        .to_string(),
    });
    let n = plugins.len();

    // Warm-up: each plugin makes its bridge once (the reference plugin races on a fresh
    // bridge otherwise) and the page cache holds every binary.
    for p in &plugins {
        p.call("ADD", "warm", &seq_pod.path());
        p.call("DEL", "warm", &seq_pod.path());
    }

    let mut sequential: Vec<Samples> = (0..n).map(|_| Samples::default()).collect();
    for i in 0..seq {
        for (k, p) in plugins.iter().enumerate() {
            let cid = format!("seq-{i}");
            sequential[k].add.push(p.call("ADD", &cid, &seq_pod.path()));
            sequential[k].del.push(p.call("DEL", &cid, &seq_pod.path()));
        }
    }

    let mut parallel: Vec<Samples> = (0..n).map(|_| Samples::default()).collect();
    let mut par_rates: Vec<Vec<f64>> = vec![Vec::new(); n];
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

    let mut version: Vec<Vec<f64>> = vec![Vec::new(); n];
    for _ in 0..seq {
        for (k, p) in plugins.iter().enumerate() {
            version[k].push(p.call("VERSION", "v", &seq_pod.path()));
        }
    }

    let load_after = load_average();
    let med = |v: &[f64]| quantile(v, 0.5);
    let p99 = |v: &[f64]| quantile(v, 0.99);
    let reference = n - 1;
    let mut rows = Vec::new();
    let mut row = |case: &str, samples: &[&[f64]]| {
        let mut cells: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.2} / {:.2}", med(s), p99(s)))
            .collect();
        cells.extend(
            samples[..reference]
                .iter()
                .map(|s| format!("{:.2}×", med(s) / med(samples[reference]))),
        );
        rows.push(format!("| {case} | {} |", cells.join(" | ")));
    };
    let pair = |s: &Samples| -> Vec<f64> { s.add.iter().zip(&s.del).map(|(a, d)| a + d).collect() };
    let pairs: Vec<Vec<f64>> = sequential.iter().map(pair).collect();
    let cases: [(String, Vec<&[f64]>); 6] = [
        (
            format!("ADD, {seq} sequential"),
            sequential.iter().map(|s| s.add.as_slice()).collect(),
        ),
        (
            format!("DEL, {seq} sequential"),
            sequential.iter().map(|s| s.del.as_slice()).collect(),
        ),
        (
            format!("ADD+DEL pair, {seq} sequential"),
            pairs.iter().map(Vec::as_slice).collect(),
        ),
        (
            format!("ADD, {PAR} in parallel ×{rounds}"),
            parallel.iter().map(|s| s.add.as_slice()).collect(),
        ),
        (
            format!("DEL, {PAR} in parallel ×{rounds}"),
            parallel.iter().map(|s| s.del.as_slice()).collect(),
        ),
        (
            format!("VERSION ×{seq}"),
            version.iter().map(Vec::as_slice).collect(),
        ),
    ];
    for (case, samples) in &cases {
        row(case, samples);
    }
    let headers: Vec<String> = plugins
        .iter()
        .map(|p| format!("{} median / p99 (ms)", p.label))
        .chain(
            plugins[..reference]
                .iter()
                .map(|p| format!("{} / reference (median)", p.label)),
        )
        .collect();
    let table = format!(
        "| case | {} |\n|---|{}\n{}",
        headers.join(" | "),
        "---|".repeat(headers.len()),
        rows.join("\n")
    );
    let weft_sizes: Vec<String> = plugins[..reference]
        .iter()
        .map(|p| format!("{} {:.1} MB", p.label, size_mb(&p.bin)))
        .collect();
    let rates: Vec<String> = plugins
        .iter()
        .zip(&par_rates)
        .map(|(p, r)| format!("{} {:.0} ADD/s", p.label, med(r)))
        .collect();
    let compared = if n > 2 {
        format!(
            " and, in the same run, the workspace's dynamically linked release build (`{}`)",
            rel(&plugins[1].bin)
        )
    } else {
        String::new()
    };
    // With two weft builds in the run: what linking statically changed, from this run's
    // medians.
    let static_vs_dynamic = if n > 2 {
        let (s, d) = (&plugins[0], &plugins[1]);
        format!(
            "{} against {}: ADD median {:.2} vs {:.2} ms, VERSION (start-up and one answer) {:.2} vs {:.2} ms, size {:.1} vs {:.1} MB. The code is the same; the static build maps no loader and no shared library before it runs.\n\n",
            s.label,
            d.label,
            med(&sequential[0].add),
            med(&sequential[1].add),
            med(&version[0]),
            med(&version[1]),
            size_mb(&s.bin),
            size_mb(&d.bin),
        )
    } else {
        String::new()
    };
    let section = format!(
        "<!-- bench-cni:begin -->\n## CNI plugin: weft vs bridge + host-local\n\nMeasured by `{} --seq {seq} --rounds {rounds}{}` (tests/src/bin/bench-cni.rs) on {}: the `weft` plugin as shipped (`{}`, release){compared}, against Debian's reference `bridge` plugin with `host-local` IPAM (containernetworking-plugins, /usr/lib/cni), all in one test host namespace with their own bridge and a /24, pods in test namespaces, hairpin on, MTU 1450. A sample is one plugin process from spawn to exit. Sequential pairs interleave the plugins; the parallel rounds start {PAR} calls at once behind a barrier. Load average of the machine (1 min) at the start {load_before}, at the end {load_after}.\n\n{table}\n\nParallel ADD throughput (median of the rounds): {}. Binary size: {}; bridge {:.1} MB + host-local {:.1} MB.\n\nWhy weft is cheaper per call: one binary with no plugin-to-plugin exec for IPAM, a blocking netlink socket instead of a runtime, the pod end of the veth created directly inside the pod namespace with its name, MAC and MTU in the creating request, and the host veth name derived from the attachment so DEL is one netlink request plus one file removal.\n\n{static_vs_dynamic}DEL is kernel-bound for every plugin: removing any network device on this machine takes the kernel 15–40 ms (it waits for RCU grace periods; `ip link del` of an idle bridge measures the same), so the DEL rows and the ADD+DEL pair say little about the plugins' own work (on an idle machine they come close to 1×; under load the reference's extra exec of host-local shows). The targets: weft's ADD median against the reference's, p99 under 20 ms with 16 in parallel, VERSION under 2 ms.\n<!-- bench-cni:end -->\n",
        rel(&std::env::current_exe().expect("this executable")),
        if n > 2 {
            format!(" --dynamic {}", rel(&plugins[1].bin))
        } else {
            String::new()
        },
        machine(),
        rel(&plugins[0].bin),
        rates.join(", "),
        weft_sizes.join(", "),
        size_mb(&plugins[reference].bin),
        size_mb(&Path::new(REF_DIR).join("host-local")),
    );
    println!("{table}");
    write_section("bench-cni", &section);
    drop(pods);
    drop(seq_pod);
    drop(host);
}
