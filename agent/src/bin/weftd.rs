//! weftd: the weft node agent.

use std::process::ExitCode;

use clap::Parser;
use tokio::sync::watch;
use weft_agent::cli::{flannel_env_aliases, WeftdCli, WeftdCommand};
use weft_agent::firewall::NftFirewall;
use weft_agent::host::cleanup::cleanup_host;
use weft_agent::host::privileges::{self, Mode};
use weft_agent::settings::AgentSettings;
use weft_agent::{daemon, logging};

pub fn main() -> ExitCode {
    weft_agent::host::init::unblock_inherited_signals();
    if weft_agent::host::init::should_be_init() {
        // PID 1 of a container: become a minimal init around the real agent, holding no
        // effective capability (forwarding signals and reaping need none).
        if let Err(e) = privileges::clear_effective() {
            eprintln!("weftd: {e}");
        }
        return match weft_agent::host::init::run_as_init() {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(e) => {
                eprintln!("weftd: cannot start the agent under PID 1: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // flannel's FLANNELD_* names, for clusters moving over; applied before any thread runs.
    let env: Vec<(String, String)> = std::env::vars().collect();
    for (k, v) in flannel_env_aliases(&env) {
        std::env::set_var(k, v);
    }
    let cli = WeftdCli::parse();
    logging::init(cli.log_format);
    log_panics();
    // Every mode drops the capabilities it does not need here, while this is the only thread.
    if cli.cleanup {
        if let Err(code) = drop_privileges(Mode::Cleanup) {
            return code;
        }
        return cleanup(&cli);
    }
    if let Some(WeftdCommand::InstallCni) = cli.command {
        if let Err(code) = drop_privileges(Mode::InstallCni) {
            return code;
        }
        return match install_cni(&cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(code) => code,
        };
    }
    let hostname = hostname::get().ok().and_then(|h| h.into_string().ok());
    let mut settings =
        match AgentSettings::from_cli(&cli, std::env::var("NODE_NAME").ok(), hostname) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(2);
            }
        };
    // Read into memory now: after the drop, a file only root's DAC override could read (a key
    // owned by another user, mode 0600) would be out of reach.
    match settings.etcd.read_tls_files() {
        Ok(warnings) => {
            for w in warnings {
                tracing::warn!("{w}");
            }
        }
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    }
    if let Err(code) = drop_privileges(Mode::agent(&settings)) {
        return code;
    }
    if cli.install_cni {
        if let Err(code) = install_cni(&cli) {
            return code;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        // The handlers are in place before anything else runs: a SIGTERM during start-up
        // stops weftd as one later does, instead of killing it.
        let signals = Signals::install();
        tokio::spawn(async move {
            signals.wait().await;
            tracing::info!("signal received; stopping");
            stop_tx.send_replace(true);
        });
        daemon::run(settings, stop_rx).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if e.is_usage() { 2 } else { 1 };
            // The whole chain: each message holds its context, its source the cause.
            tracing::error!("{:#}", anyhow::Error::from(e));
            ExitCode::from(code)
        }
    }
}

/// A panic is logged as one line (where, and its message) instead of the default report; the
/// supervisor then says what follows for the task.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("no message");
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), at = %at, "panic: {message}");
    }));
}

/// `--cleanup`: remove weft's host state and exit (1 if any step failed). Needs neither etcd
/// nor the interface, so it works on a node whose configuration is gone.
fn cleanup(cli: &WeftdCli) -> ExitCode {
    // nft runs as a child process of tokio's; one thread is plenty for the few calls.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut report = runtime.block_on(cleanup_host(
        |family| NftFirewall::new(None).for_family(family),
        weft_backends::dataplane::remove_weft_state,
    ));
    let conflist = cli
        .cni_conf_dir
        .join(weft_agent::host::install_cni::CONFLIST_NAME);
    match weft_agent::host::install_cni::uninstall(&cli.cni_conf_dir) {
        Ok(true) => report
            .removed
            .push(format!("CNI config {}", conflist.display())),
        Ok(false) => report
            .absent
            .push(format!("CNI config {}", conflist.display())),
        Err(e) => report.errors.push(e.into()),
    }
    for object in &report.removed {
        tracing::info!(%object, "removed");
    }
    for object in &report.absent {
        tracing::info!(%object, "not present; nothing to remove");
    }
    for e in &report.errors {
        tracing::error!(error = %e, "cleanup step failed");
    }
    if report.is_ok() {
        tracing::info!("host cleanup done; the lease in etcd is left to expire");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Keep only the capabilities `mode` needs, in every set (see `privileges`); the kept set is
/// logged once. Must run before any other thread starts. Errors are logged; the exit code is 2
/// when a needed capability is missing (the deployment's to fix), else 1.
fn drop_privileges(mode: Mode) -> Result<(), ExitCode> {
    let wanted = privileges::privileges_for(mode, nix::unistd::geteuid().is_root());
    match privileges::drop_privileges(&wanted) {
        Ok(dropped) => {
            tracing::info!(
                capabilities = %privileges::names(&dropped.kept),
                "keeping only these capabilities; every other one dropped"
            );
            if !dropped.bounding_left.is_empty() {
                tracing::warn!(
                    bounding = %privileges::names(&dropped.bounding_left),
                    "without CAP_SETPCAP these stay in the bounding set (no_new_privs keeps the \
                     programs weftd runs from gaining them); grant the container only what weftd keeps"
                );
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!("{e}");
            Err(if e.is_missing() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// The signals that stop weftd.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
        }
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Install the CNI plugin and conflist; errors are logged, and give exit status 2 when the
/// input is at fault, else 1.
fn install_cni(cli: &WeftdCli) -> Result<(), ExitCode> {
    match weft_agent::host::install_cni::install(&cli.install_cni_settings()) {
        Ok(done) => {
            tracing::info!(
                plugin = %done.plugin.display(),
                plugin_written = done.plugin_written,
                conflist = %done.conflist.display(),
                conflist_written = done.conflist_written,
                "CNI plugin installed"
            );
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot install the CNI plugin");
            Err(if e.is_usage() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
