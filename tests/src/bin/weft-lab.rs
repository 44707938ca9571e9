//! weft-lab: the multi-host lab on this machine (README command 1; run it through
//! `sudo bash tests/lab.sh`, which builds the binaries first).
//!
//! Starts etcd and N hosts as network namespaces on a switch namespace, runs the real weftd
//! on every host, adds pods through the real CNI plugin, pings every pod pair (and every
//! other host), prints the result as a matrix and `netctl leases`, and tears everything down
//! unless `--keep`. Exit status: 0 when every probe answered, 1 when one did not or the lab
//! did not come up, 2 for usage errors. Progress goes to stderr, results to stdout.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use weft_tests::lab::{self, Lab, LabBackend, LabOptions, Probe, ProbeKind};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const TEARDOWN_HINT: &str = "sudo bash tests/lab.sh --teardown";

/// weft's multi-host lab: hosts as network namespaces, a real etcd, weftd and the CNI plugin.
#[derive(Parser, Debug)]
#[command(name = "weft-lab")]
struct Cli {
    /// Number of hosts (h1..hN).
    #[arg(long, default_value_t = 3)]
    hosts: usize,
    /// Backend in the network config.
    #[arg(long, value_enum, default_value_t = LabBackend::Vxlan)]
    backend: LabBackend,
    /// vxlan with DirectRouting (peers on the same underlay subnet get direct routes).
    #[arg(long)]
    direct_routing: bool,
    /// Run weftd with --ip-masq and also check that pods reach an address outside the cluster.
    #[arg(long)]
    ip_masq: bool,
    /// Pods per host.
    #[arg(long, default_value_t = 2)]
    pods_per_host: usize,
    /// Leave the lab running (tear it down later with --teardown).
    #[arg(long)]
    keep: bool,
    /// Also run IPv6 (dual-stack) with this IPv6 cluster network, e.g. fc00::/48; the
    /// underlay then carries IPv6 too.
    #[arg(long, value_name = "CIDR")]
    ipv6_network: Option<String>,
    /// IPv6 only (`EnableIPv4: false`); needs --ipv6-network.
    #[arg(long, requires = "ipv6_network")]
    ipv6_only: bool,
    /// Tear down labs left running by --keep (or by an interrupted run), then exit.
    #[arg(long, conflicts_with_all = ["hosts", "backend", "direct_routing", "ip_masq", "pods_per_host", "keep", "ipv6_network", "ipv6_only"])]
    teardown: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_timer(tracing_subscriber::fmt::time::Uptime::default())
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(std::env::var("WEFT_LAB_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("weft-lab creates network namespaces and needs root: sudo bash tests/lab.sh");
        return ExitCode::from(2);
    }
    if cli.teardown {
        return teardown_kept();
    }
    let opts = LabOptions {
        hosts: cli.hosts,
        backend: cli.backend,
        direct_routing: cli.direct_routing,
        ip_masq: cli.ip_masq,
        pods_per_host: cli.pods_per_host,
        keep: cli.keep,
        ipv4: !cli.ipv6_only,
        ipv6_network: cli.ipv6_network.clone(),
        ..LabOptions::default()
    };
    if let Err(e) = opts.validate() {
        eprintln!("weft-lab: {e}");
        return ExitCode::from(2);
    }
    handle_signals(cli.keep);
    let ok = run(opts);
    if cli.keep {
        println!("\nThe lab is still running. Tear it down with:\n  {TEARDOWN_HINT}");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Bring the lab up, check it, print the results. The lab is dropped (torn down, or left
/// running with `keep`) before this returns.
fn run(opts: LabOptions) -> bool {
    let started = Instant::now();
    tracing::info!(
        "starting a lab: {} hosts, backend {}{}{}, {} pods per host",
        opts.hosts,
        opts.backend.as_str(),
        if opts.direct_routing {
            " + DirectRouting"
        } else {
            ""
        },
        if opts.ip_masq { ", ip-masq" } else { "" },
        opts.pods_per_host
    );
    let mut lab = Lab::start(opts);
    if let Err(e) = lab.wait_all_ready(READY_TIMEOUT) {
        tracing::error!("{e}");
        return false;
    }
    if let Err(e) = lab.add_pods() {
        tracing::error!("{e}");
        return false;
    }
    tracing::info!(
        "lab {} up in {:.1?}: {} hosts ready, {} pods; probing connectivity (up to {:?})",
        lab.name(),
        started.elapsed(),
        lab.host_count(),
        lab.pods().len(),
        CONNECT_TIMEOUT
    );
    let probe_start = Instant::now();
    let probes = loop {
        let probes = lab.connectivity();
        if probes.iter().all(|p| p.ok) || probe_start.elapsed() > CONNECT_TIMEOUT {
            break probes;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let ok = probes.iter().all(|p| p.ok);
    tracing::info!(
        "connectivity {} after {:.1?}",
        if ok { "complete" } else { "incomplete" },
        probe_start.elapsed()
    );
    print_results(&lab, &probes);
    println!("\n$ netctl leases");
    let (code, out, err) = lab.netctl(&["leases"]);
    print!("{out}");
    if code != 0 {
        println!("(netctl exit {code}: {})", err.trim());
    }
    if !ok {
        println!("\nweftd logs: {}/h*/weftd.*.log", lab.dir().display());
    }
    if lab.options().keep {
        println!("\nlab {} namespaces:", lab.name());
        for ns in lab.namespaces() {
            println!("  {ns}");
        }
        if let Some(p) = lab.pods().first() {
            println!(
                "e.g. sudo ip netns exec {} ping {}",
                p.netns.name,
                lab.host_ip(p.host)
            );
        }
        println!("state: {}", lab.state_file().display());
    }
    ok
}

fn print_results(lab: &Lab, probes: &[Probe]) {
    println!("\nhosts:");
    for i in 1..=lab.host_count() {
        let subnet = lab
            .subnet(i)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into());
        let subnet6 = lab
            .subnet6(i)
            .map(|s| format!("  IPv6 subnet {s}"))
            .unwrap_or_default();
        println!(
            "  {:<5} {:<15} subnet {subnet}{subnet6}",
            lab.host_name(i),
            lab.host_ip(i).to_string()
        );
    }
    println!("pods:");
    for p in lab.pods() {
        let ip6 = p.ip6.map(|a| format!(" {a}")).unwrap_or_default();
        println!(
            "  {:<5} {:<15}{ip6} on h{}",
            p.name,
            p.ip.to_string(),
            p.host
        );
    }
    // Columns: pods, then hosts, then the outside address (when probed).
    let mut columns: Vec<&str> = lab.pods().iter().map(|p| p.name.as_str()).collect();
    columns.extend((1..=lab.host_count()).map(|i| lab.host_name(i)));
    if probes.iter().any(|p| p.kind == ProbeKind::Outside) {
        columns.push("outside");
    }
    let width = columns.iter().map(|c| c.len()).max().unwrap_or(4).max(4) + 2;
    println!("\nping from (rows) to (columns): ok, FAIL, or - (not probed)");
    let mut header = format!("{:<8}", "");
    for c in &columns {
        header.push_str(&format!("{c:<width$}"));
    }
    println!("{}", header.trim_end());
    for pod in lab.pods() {
        let mut row = format!("{:<8}", pod.name);
        for c in &columns {
            // One cell per pair: "ok" when every family's probe answered.
            let pair: Vec<&Probe> = probes
                .iter()
                .filter(|p| p.from == pod.name && p.to == *c)
                .collect();
            let cell = match (pair.is_empty(), pair.iter().all(|p| p.ok)) {
                (true, _) => "-",
                (false, true) => "ok",
                (false, false) => "FAIL",
            };
            row.push_str(&format!("{cell:<width$}"));
        }
        println!("{}", row.trim_end());
    }
    println!();
    for (kind, label) in [
        (ProbeKind::SameHost, "pod -> pod, same host"),
        (ProbeKind::CrossHost, "pod -> pod, across hosts"),
        (ProbeKind::OtherHost, "pod -> other host"),
        (ProbeKind::Outside, "pod -> outside (masquerade)"),
    ] {
        let of_kind: Vec<&Probe> = probes.iter().filter(|p| p.kind == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        let good = of_kind.iter().filter(|p| p.ok).count();
        println!("{label:<28} {good}/{} ok", of_kind.len());
    }
    let failed: Vec<String> = probes
        .iter()
        .filter(|p| !p.ok)
        .map(|p| format!("{} -> {} ({})", p.from, p.to, p.dst))
        .collect();
    if failed.is_empty() {
        println!("all {} probes answered", probes.len());
    } else {
        println!("FAILED: {} of {} probes:", failed.len(), probes.len());
        const LISTED: usize = 12;
        for f in failed.iter().take(LISTED) {
            println!("  {f}");
        }
        if failed.len() > LISTED {
            println!("  … and {} more (see the matrix)", failed.len() - LISTED);
        }
    }
}

fn teardown_kept() -> ExitCode {
    let labs = lab::kept_labs();
    if labs.is_empty() {
        eprintln!("no lab to tear down under {}", lab::STATE_ROOT);
        return ExitCode::SUCCESS;
    }
    let mut ok = true;
    for path in labs {
        match lab::teardown_from_state(&path) {
            Ok(name) => println!("lab {name} torn down"),
            Err(e) => {
                ok = false;
                eprintln!("weft-lab: {e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// On SIGINT/SIGTERM/SIGHUP, tear down what this process built (from its state files) and
/// exit; with `--keep`, leave it and say how to remove it. The handlers are installed before
/// this returns (by tokio, which leaves the signal mask alone, so the processes the lab
/// starts get SIGTERM as usual); one thread waits for them.
fn handle_signals(keep: bool) {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("no signal handling ({e}); an interrupted lab needs --teardown");
            return;
        }
    };
    let streams = runtime.block_on(async {
        [
            (SignalKind::interrupt(), "SIGINT"),
            (SignalKind::terminate(), "SIGTERM"),
            (SignalKind::hangup(), "SIGHUP"),
        ]
        .into_iter()
        .map(|(kind, name)| signal(kind).map(|s| (s, name)))
        .collect::<Result<Vec<_>, _>>()
    });
    let streams = match streams {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("no signal handling ({e}); an interrupted lab needs --teardown");
            return;
        }
    };
    std::thread::spawn(move || {
        let name = runtime.block_on(async move {
            let waits = streams.into_iter().map(|(mut s, name)| {
                Box::pin(async move {
                    s.recv().await;
                    name
                })
            });
            futures::future::select_all(waits).await.0
        });
        if keep {
            eprintln!("weft-lab: {name}; leaving the lab up. Tear it down with: {TEARDOWN_HINT}");
        } else {
            eprintln!("weft-lab: {name}; tearing down");
            for path in lab::labs_of_this_process() {
                if let Err(e) = lab::teardown_from_state(&path) {
                    eprintln!("weft-lab: {e}");
                }
            }
        }
        std::process::exit(130);
    });
}
