//! weft-lab: the multi-host lab on this machine (README command 1; run it through
//! `sudo bash tests/lab.sh`, which checks the arguments, installs what the lab needs and
//! builds the binaries first).
//!
//! Starts etcd and N hosts as network namespaces on a switch namespace, runs the real weftd
//! on every host, adds pods through the real CNI plugin, pings every pod pair (and every
//! other host), prints the result as a matrix per address family and `netctl leases`, and
//! tears everything down; after a failure the logs stay and the output says where. With
//! `--keep` the lab stays up and the output lists commands to look at it; `--probe NAME`
//! pings it again and `--teardown NAME` ends it. Exit status: 0 when every probe answered,
//! 1 when one did not or the lab did not come up, 2 for usage errors. Progress goes to
//! stderr, results to stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use weft_lab_cli::{Action, Cli, LabName, LabOptions};
use weft_tests::lab::{self, report, Lab, LabError, LabStatus};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_timer(tracing_subscriber::fmt::time::Uptime::default())
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(std::env::var("WEFT_LAB_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let action = match cli.action() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("weft-lab creates network namespaces and needs root: sudo bash tests/lab.sh");
        return ExitCode::from(2);
    }
    let again = LabCommand::of_this_run();
    match action {
        Action::Run(opts) => run(opts, &again),
        Action::Probe(name) => probe(name.as_ref(), &again),
        Action::Teardown(name) => teardown(name.as_ref(), &again),
    }
}

/// How to run the lab again, for the commands it prints: `bash <tests/lab.sh>` when started
/// through it (it says where it is in `WEFT_LAB_SCRIPT`), else this binary.
struct LabCommand(String);

impl LabCommand {
    fn of_this_run() -> LabCommand {
        if let Some(script) = std::env::var_os("WEFT_LAB_SCRIPT").filter(|s| !s.is_empty()) {
            return LabCommand(format!("bash {}", PathBuf::from(script).display()));
        }
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("weft-lab"));
        LabCommand(exe.display().to_string())
    }

    fn teardown(&self, name: &str) -> String {
        format!("{} --teardown {name}", self.0)
    }
}

fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Bring a lab up, check it, print the results, then tear it down (keeping the logs after a
/// failure) or, with `--keep`, leave it up and print how to look at it.
fn run(opts: LabOptions, again: &LabCommand) -> ExitCode {
    let name = opts.name.clone().expect("the command line names the lab");
    if let Err(e) = lab::check_name_free(&name) {
        let fix = match e {
            LabError::LeftoverNamespaces { .. } => {
                "delete them with `ip netns del NAMESPACE`, or choose another --name".to_string()
            }
            _ => format!(
                "tear it down with `{}`, or choose another --name",
                again.teardown(name.as_str())
            ),
        };
        eprintln!("weft-lab: {e}; {fix}");
        return ExitCode::from(2);
    }
    let keep = opts.keep;
    handle_signals(keep, again.teardown(name.as_str()));
    let started = Instant::now();
    tracing::info!(
        "starting lab {name}: {} hosts, backend {}{}{}, {} pods per host",
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
    let ok = check(&mut lab, started);
    let state = lab.state();
    let kept_logs = (!ok && !keep).then(|| lab.keep_logs());
    drop(lab);
    if keep {
        println!();
        print!("{}", report::commands(&state, &again.0));
        if !ok {
            print!("{}", report::logs_of(&state));
        }
    }
    if let Some(dir) = kept_logs {
        println!();
        print!("{}", report::logs_kept(&dir));
    }
    exit_code(ok)
}

/// Wait for every weftd, add the pods, probe, print the results and `netctl leases`.
fn check(lab: &mut Lab, started: Instant) -> bool {
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
    let probes = lab.connectivity_within(CONNECT_TIMEOUT);
    let ok = probes.iter().all(|p| p.ok);
    tracing::info!(
        "connectivity {} after {:.1?}",
        if ok { "complete" } else { "incomplete" },
        probe_start.elapsed()
    );
    println!();
    print!("{}", report::results(&lab.state(), &probes));
    println!("\n$ netctl leases");
    let (code, out, err) = lab.netctl(&["leases"]);
    print!("{out}");
    if code != 0 {
        println!("(netctl exit {code}: {})", err.trim());
    }
    print_health(|args| lab.netctl(args));
    ok
}

/// How long the lab waits for every weftd to have probed every peer before it prints
/// `netctl health --cluster` (its first probes go out within one probe interval of start).
const HEALTH_SETTLE: Duration = Duration::from_secs(25);

/// Whether a `netctl health --cluster -o json` answer still has a pair no probe has
/// finished for (`?` in its rows), or a node not asked yet (`~`).
fn still_settling(json: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return true;
    };
    v["rows"].as_array().is_none_or(|rows| {
        rows.iter()
            .filter_map(|r| r.as_str())
            .any(|r| r.contains('?') || r.contains('~'))
    })
}

/// `netctl health --cluster` beside the ping matrix: what weft's own probes see. Right
/// after start a pair may still be unknown: asked again while one is, up to
/// [`HEALTH_SETTLE`]; a real fault is printed at once.
fn print_health(netctl: impl Fn(&[&str]) -> (i32, String, String)) {
    let start = Instant::now();
    while start.elapsed() < HEALTH_SETTLE {
        let (_, json, _) = netctl(&["health", "--cluster", "-o", "json"]);
        if !still_settling(&json) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let (code, out, err) = netctl(&["health", "--cluster"]);
    println!("\n$ netctl health --cluster");
    print!("{out}");
    if code != 0 {
        println!(
            "(netctl exit {code}{})",
            match err.trim() {
                "" => String::new(),
                e => format!(": {e}"),
            }
        );
    }
}

/// Ping every pod pair of a running lab again and print the matrices.
fn probe(name: Option<&LabName>, again: &LabCommand) -> ExitCode {
    let labs = lab::labs();
    let entry = match lab::select(&labs, name) {
        Ok(e) => e,
        Err(e) => return lookup_failed("probe", e, &labs, again),
    };
    let mut state = match lab::load_state(&entry.state_file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("weft-lab: {e}");
            return ExitCode::from(1);
        }
    };
    if entry.status == LabStatus::Interrupted {
        tracing::warn!(
            "lab {} was left by a run that ended without tearing it down; its weftd and etcd \
             are not running",
            state.lab
        );
    }
    state.refresh_subnets();
    tracing::info!(
        "probing lab {}: {} hosts, {} pods (up to {CONNECT_TIMEOUT:?})",
        state.lab,
        state.hosts.len(),
        state.pods.len()
    );
    let probes = state.connectivity_within(CONNECT_TIMEOUT);
    let ok = probes.iter().all(|p| p.ok);
    println!();
    print!("{}", report::results(&state, &probes));
    print_health(|args| state.netctl(args));
    if !ok {
        println!();
        print!("{}", report::logs_of(&state));
    }
    exit_code(ok)
}

/// End a lab left running (the named one, or the only one).
fn teardown(name: Option<&LabName>, again: &LabCommand) -> ExitCode {
    let labs = lab::labs();
    let entry = match lab::select(&labs, name) {
        Ok(e) => e,
        Err(LabError::NoLab) => {
            eprintln!(
                "weft-lab: no lab to tear down (none under {})",
                lab::STATE_ROOT
            );
            return ExitCode::SUCCESS;
        }
        Err(e @ LabError::NoSuchLab { .. }) => {
            // Gone already is what a teardown wants.
            eprintln!("weft-lab: {e}; nothing to tear down");
            return ExitCode::SUCCESS;
        }
        Err(e) => return lookup_failed("teardown", e, &labs, again),
    };
    if let LabStatus::Running { pid } = entry.status {
        let e = LabError::InUse {
            name: entry.name.clone(),
            pid,
        };
        eprintln!("weft-lab: {e}");
        return ExitCode::from(1);
    }
    match lab::teardown_from_state(&entry.state_file) {
        Ok(name) => {
            println!("lab {name} torn down");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "weft-lab: {e}; run `{}` again once that is fixed",
                again.teardown(&entry.name)
            );
            ExitCode::from(1)
        }
    }
}

/// A lab lookup of `--probe` or `--teardown` that found none or several: say so and list the
/// labs with the command for each.
fn lookup_failed(flag: &str, e: LabError, labs: &[lab::LabEntry], again: &LabCommand) -> ExitCode {
    eprintln!("weft-lab: {e}");
    let listed: Vec<&lab::LabEntry> = labs
        .iter()
        .filter(|l| !matches!(l.status, LabStatus::Running { .. }))
        .collect();
    if !listed.is_empty() {
        let width = listed.iter().map(|l| l.name.len()).max().unwrap_or(0);
        eprintln!("labs:");
        for l in listed {
            eprintln!(
                "  {:<width$}  {:<11}  {} --{flag} {}",
                l.name,
                l.status.as_str(),
                again.0,
                l.name
            );
        }
    }
    ExitCode::from(2)
}

/// On SIGINT/SIGTERM/SIGHUP, tear down what this process built (from its state files) and
/// exit; with `--keep`, leave it and say how to remove it. The handlers are installed before
/// this returns (by tokio, which leaves the signal mask alone, so the processes the lab
/// starts get SIGTERM as usual); one thread waits for them.
fn handle_signals(keep: bool, teardown_hint: String) {
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
            eprintln!("weft-lab: {name}; leaving the lab up. Tear it down with: {teardown_hint}");
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
