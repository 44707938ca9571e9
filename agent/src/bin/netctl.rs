//! netctl: the operator's view of weft's etcd state.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use weft_agent::cli::{NetctlCli, NetctlCommand};
use weft_agent::lease::SubnetKey;
use weft_agent::netctl::{self, ConfigSource};
use weft_agent::settings::etcd_options;
use weft_agent::store::EtcdStore;
use weft_backends::subnet_env::SubnetEnv;

fn main() -> ExitCode {
    let cli = NetctlCli::parse();
    let mut opts = match etcd_options(&cli.etcd) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("netctl: {e}");
            return ExitCode::from(2);
        }
    };
    // The TLS files are checked before anything else; a wrong one is a usage error.
    match opts.read_tls_files() {
        Ok(warnings) => {
            for w in warnings {
                eprintln!("netctl: warning: {w}");
            }
        }
        Err(e) => {
            eprintln!("netctl: {e}");
            return ExitCode::from(2);
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(async {
        let connect = || async { EtcdStore::connect(&opts).await.map_err(|e| e.to_string()) };
        match cli.command {
            NetctlCommand::Leases {
                output,
                node,
                subnet_file,
            } => {
                let store = connect().await?;
                let (own, warning) = own_key(&subnet_file);
                let query = netctl::LeasesQuery { output, node, own };
                netctl::leases(&store, &query)
                    .await
                    .map(|mut out| {
                        out.stderr.insert_str(0, &warning);
                        out
                    })
                    .map_err(|e| e.to_string())
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
                let store = connect().await;
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
            } => weft_agent::netctl::check::run(
                &connect().await?,
                weft_agent::netctl::check::CheckOptions {
                    subnet_file: &subnet_file,
                    iface: iface.as_deref(),
                    net_config: cli.net_config.as_deref(),
                    cni_conf_dir: &cni_conf_dir,
                    healthz: weft_agent::netctl::host_facts::healthz_target(
                        healthz_ip,
                        healthz_port,
                    ),
                    output,
                },
            )
            .await
            .map_err(|e| e.to_string()),
            NetctlCommand::Health {
                cluster,
                healthz_ip,
                healthz_port,
                timeout,
                parallel,
                output,
                file,
            } => {
                let timeout = humantime::parse_duration(&timeout).map_err(|e| {
                    format!("--timeout {timeout:?}: {e}; give a duration such as 3s")
                })?;
                let mut out = if cluster {
                    let opts = netctl::cluster::ClusterOptions {
                        port: healthz_port,
                        timeout,
                        parallel,
                        output,
                    };
                    netctl::cluster::run(&connect().await?, &opts)
                        .await
                        .map_err(|e| e.to_string())?
                } else {
                    netctl::health::run(
                        netctl::host_facts::healthz_target(healthz_ip, healthz_port),
                        timeout,
                        output,
                    )
                    .await
                    .map_err(|e| e.to_string())?
                };
                if let Some(path) = file {
                    write_replacing(&path, &out.stdout)
                        .map_err(|e| format!("write {}: {e}", path.display()))?;
                    out.stderr.push_str(&format!("wrote {}\n", path.display()));
                    out.stdout.clear();
                }
                Ok(out)
            }
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
