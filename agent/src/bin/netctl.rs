//! netctl: the operator's view of weft's etcd state.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use weft_agent::cli::{NetctlCli, NetctlCommand};
use weft_agent::netctl;
use weft_agent::settings::etcd_options;
use weft_agent::store::EtcdStore;

fn main() -> ExitCode {
    let cli = NetctlCli::parse();
    let opts = match etcd_options(&cli.etcd) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("netctl: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(async {
        // `config` with a config file needs no etcd at all.
        if let (NetctlCommand::Config { output }, Some(path)) = (&cli.command, &cli.net_config) {
            return config_from_file(path, *output);
        }
        let store = EtcdStore::connect(&opts).await.map_err(|e| e.to_string())?;
        match cli.command {
            NetctlCommand::Leases { output } => netctl::leases(&store, output)
                .await
                .map_err(|e| e.to_string()),
            NetctlCommand::Config { output } => {
                let key = format!("{}/config", opts.prefix.trim_end_matches('/'));
                netctl::config(&store, output, &key)
                    .await
                    .map_err(|e| e.to_string())
            }
            NetctlCommand::Check {
                subnet_file,
                iface,
                output,
            } => weft_agent::check::run(
                &store,
                &subnet_file,
                iface.as_deref(),
                cli.net_config.as_deref(),
                output,
            )
            .await
            .map_err(|e| e.to_string()),
        }
    });
    match result {
        Ok(out) => {
            eprint!("{}", out.stderr);
            // A closed pipe (netctl leases | head) is not an error worth a panic.
            let _ = std::io::stdout().write_all(out.stdout.as_bytes());
            ExitCode::from(out.code)
        }
        Err(e) => {
            eprintln!("netctl: {e}");
            ExitCode::from(2)
        }
    }
}

/// `netctl --net-config FILE config`: the file's config, checked as weftd checks it.
fn config_from_file(
    path: &std::path::Path,
    output: weft_agent::cli::Output,
) -> Result<netctl::CommandOutput, String> {
    let text =
        std::fs::read(path).map_err(|e| format!("network config file {}: {e}", path.display()))?;
    let mut out = netctl::CommandOutput::default();
    match weft_agent::config::NetConfig::parse(&text) {
        Ok(cfg) => out.stdout = netctl::render_config(&cfg, output),
        Err(e) => {
            out.stderr = format!("{}: {e}\n", path.display());
            out.code = 1;
        }
    }
    Ok(out)
}
