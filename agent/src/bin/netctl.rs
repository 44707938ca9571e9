//! netctl: the operator's view of weft's etcd state.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use weft_agent::cli::{HealthArgs, NetctlCli, NetctlCommand};
use weft_agent::lease::SubnetKey;
use weft_agent::netctl::{self, CommandOutput, ConfigSource};
use weft_agent::settings::etcd_options;
use weft_agent::store::{EtcdOptions, EtcdStore};
use weft_backends::subnet_env::SubnetEnv;

fn main() -> ExitCode {
    let cli = NetctlCli::parse();
    let opts = match etcd_settings(&cli) {
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
    print_outcome(runtime.block_on(run(cli, &opts)))
}

/// The etcd options of the flags, with the TLS files read and their warnings printed: they
/// are checked before anything else, and a wrong one is a usage error.
fn etcd_settings(cli: &NetctlCli) -> Result<EtcdOptions, String> {
    let mut opts = etcd_options(&cli.etcd).map_err(|e| e.to_string())?;
    for w in opts.read_tls_files().map_err(|e| e.to_string())? {
        eprintln!("netctl: warning: {w}");
    }
    Ok(opts)
}

async fn connect(opts: &EtcdOptions) -> Result<EtcdStore, String> {
    EtcdStore::connect(opts).await.map_err(|e| e.to_string())
}

/// Run the command; an error is one sentence for stderr (exit 2).
async fn run(cli: NetctlCli, opts: &EtcdOptions) -> Result<CommandOutput, String> {
    match cli.command {
        NetctlCommand::Leases {
            output,
            node,
            subnet_file,
        } => {
            let store = connect(opts).await?;
            let (own, warning) = own_key(&subnet_file);
            let query = netctl::LeasesQuery { output, node, own };
            let mut out = netctl::leases(&store, &query)
                .await
                .map_err(|e| e.to_string())?;
            out.stderr.insert_str(0, &warning);
            Ok(out)
        }
        NetctlCommand::Config { output } => {
            let source = match &cli.net_config {
                Some(path) => ConfigSource::File(path.clone()),
                None => ConfigSource::Etcd {
                    key: format!("{}/config", opts.prefix.trim_end_matches('/')),
                    endpoints: opts.endpoints.clone(),
                },
            };
            // A config file needs etcd only to count the leases.
            let store = connect(opts).await;
            netctl::config(store.as_ref().map_err(Clone::clone), &source, output)
                .await
                .map_err(|e| e.to_string())
        }
        NetctlCommand::Check {
            subnet_file,
            iface,
            cni_conf_dir,
            healthz_ip,
            healthz_port,
            output,
        } => {
            let check = netctl::check::CheckOptions {
                subnet_file: &subnet_file,
                iface: iface.as_deref(),
                net_config: cli.net_config.as_deref(),
                cni_conf_dir: &cni_conf_dir,
                healthz: netctl::host_facts::healthz_target(healthz_ip, healthz_port),
                output,
            };
            netctl::check::run(&connect(opts).await?, check)
                .await
                .map_err(|e| e.to_string())
        }
        NetctlCommand::Health(args) => health(args, opts).await,
    }
}

/// `netctl health`: the local weftd's report, or with --cluster every node's; with --file
/// the output goes to that file instead of stdout.
async fn health(args: HealthArgs, opts: &EtcdOptions) -> Result<CommandOutput, String> {
    let timeout = humantime::parse_duration(&args.timeout).map_err(|e| {
        format!(
            "--timeout {:?}: {e}; give a duration such as 3s",
            args.timeout
        )
    })?;
    let mut out = if args.cluster {
        let cluster = netctl::cluster::ClusterOptions {
            port: args.healthz_port,
            timeout,
            parallel: args.parallel,
            output: args.output,
        };
        netctl::cluster::run(&connect(opts).await?, &cluster)
            .await
            .map_err(|e| e.to_string())?
    } else {
        let local = netctl::host_facts::healthz_target(args.healthz_ip, args.healthz_port);
        netctl::health::run(local, timeout, args.output)
            .await
            .map_err(|e| e.to_string())?
    };
    if let Some(path) = args.file {
        write_replacing(&path, &out.stdout)
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        out.stderr.push_str(&format!("wrote {}\n", path.display()));
        out.stdout.clear();
    }
    Ok(out)
}

/// Print what the command produced and give its exit code; an error is exit 2.
fn print_outcome(result: Result<CommandOutput, String>) -> ExitCode {
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

/// Write `text` to `path` through a temporary file beside it and a rename, so a reader never
/// sees half a page.
fn write_replacing(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// This host's lease key, from the subnet file weftd writes (none when the file is absent;
/// a warning when it cannot be read).
fn own_key(path: &std::path::Path) -> (Option<SubnetKey>, String) {
    match SubnetEnv::read(path) {
        Ok(env) => (
            env.and_then(|env| SubnetKey::new(env.subnet, env.ipv6_subnet)),
            String::new(),
        ),
        Err(e) => (
            None,
            format!("warning: this node's lease is not marked: {e}\n"),
        ),
    }
}
