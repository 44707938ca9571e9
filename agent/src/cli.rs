//! Command-line surfaces (clap). Only declarations live here; turning them into settings is
//! in `settings.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
pub const DEFAULT_ENDPOINTS: &str = "http://127.0.0.1:2379";
pub const DEFAULT_SUBNET_FILE: &str = "/run/weft/subnet.env";
pub const DEFAULT_HEALTHZ_IP: &str = "0.0.0.0";
pub const DEFAULT_HEALTHZ_PORT: u16 = 8471;
pub const DEFAULT_HEALTH_PROBE_PORT: u16 = 8473;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// etcd connection flags, shared by weftd and netctl (same `WEFTD_*` environment, so netctl
/// run inside the weft pod finds etcd the way weftd does).
#[derive(Args, Clone, Debug)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated URLs.
    #[arg(long, env = "WEFTD_ETCD_ENDPOINTS", default_value = DEFAULT_ENDPOINTS, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix holding `config` and `subnets/`.
    #[arg(long, env = "WEFTD_ETCD_PREFIX", default_value = DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// CA certificate (PEM) to verify etcd's server certificate.
    #[arg(long, env = "WEFTD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd client-cert auth.
    #[arg(long, env = "WEFTD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// Client key (PEM) for etcd client-cert auth.
    #[arg(long, env = "WEFTD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// etcd username (with --etcd-password).
    #[arg(long, env = "WEFTD_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// etcd password (with --etcd-username).
    #[arg(long, env = "WEFTD_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// Bound on each etcd request, e.g. "5s".
    #[arg(long, env = "WEFTD_ETCD_REQUEST_TIMEOUT", default_value = "5s")]
    pub etcd_request_timeout: String,
}

/// weftd: the weft node agent.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "weftd",
    version,
    about = "weft node agent: leases this node's pod subnet and keeps the network programmed"
)]
pub struct WeftdCli {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Interface to use (name or IP address); repeat to give fallbacks in order.
    #[arg(long, env = "WEFTD_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,
    /// Regular expression matched against interface names and addresses; repeatable.
    #[arg(long, env = "WEFTD_IFACE_REGEX", value_delimiter = ',')]
    pub iface_regex: Vec<String>,
    /// Use the interface the kernel routes this address through.
    #[arg(long, env = "WEFTD_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<IpAddr>,
    /// IP address published to other nodes (default: the interface's address).
    #[arg(long, env = "WEFTD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// IPv6 address published to other nodes when IPv6 is enabled (default: the
    /// interface's global IPv6 address).
    #[arg(long, env = "WEFTD_PUBLIC_IPV6")]
    pub public_ipv6: Option<Ipv6Addr>,
    /// Where to write the subnet file the CNI plugin reads.
    #[arg(long, env = "WEFTD_SUBNET_FILE", default_value = DEFAULT_SUBNET_FILE)]
    pub subnet_file: PathBuf,
    /// Read the network config from this file instead of `<prefix>/config` in etcd.
    #[arg(long, env = "WEFTD_NET_CONFIG")]
    pub net_config: Option<PathBuf>,
    /// This node's name (default: $NODE_NAME, then the hostname).
    #[arg(long, env = "WEFTD_NODE_NAME")]
    pub node_name: Option<String>,
    /// Masquerade pod traffic leaving the cluster network.
    #[arg(long, env = "WEFTD_IP_MASQ")]
    pub ip_masq: bool,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "WEFTD_HEALTHZ_IP", default_value = DEFAULT_HEALTHZ_IP)]
    pub healthz_ip: IpAddr,
    /// Port for /healthz, /readyz and /metrics (0 disables the server).
    #[arg(long, env = "WEFTD_HEALTHZ_PORT", default_value_t = DEFAULT_HEALTHZ_PORT)]
    pub healthz_port: u16,
    /// UDP port of the peer health probes: weftd answers probes on it (on its overlay
    /// address and its public IP) and sends its own to the same port of every peer; 0
    /// turns the probes off.
    #[arg(long, env = "WEFTD_HEALTH_PROBE_PORT", default_value_t = DEFAULT_HEALTH_PROBE_PORT)]
    pub health_probe_port: u16,
    /// Time between two rounds of probes of one peer, e.g. "10s"; stretched when the peers
    /// do not fit in it at --health-probe-rate.
    #[arg(long, env = "WEFTD_HEALTH_PROBE_INTERVAL", default_value = "10s")]
    pub health_probe_interval: String,
    /// At most this many probes sent per second, spread evenly.
    #[arg(long, env = "WEFTD_HEALTH_PROBE_RATE", default_value_t = 50)]
    pub health_probe_rate: u32,
    /// The wireguard backend's private key file: made once (mode 0600) and reused, so the
    /// node keeps its public key across restarts and reboots.
    #[arg(long, env = "WEFTD_WIREGUARD_KEY_FILE", default_value = DEFAULT_WIREGUARD_KEY_FILE)]
    pub wireguard_key_file: PathBuf,
    /// A userspace WireGuard program (such as /usr/bin/wireguard-go), used when the kernel
    /// has no WireGuard or --wireguard-implementation is userspace.
    #[arg(long, env = "WEFTD_WIREGUARD_USERSPACE")]
    pub wireguard_userspace: Option<PathBuf>,
    /// Which WireGuard the wireguard backend uses: the kernel's when it has one (auto), or
    /// always one of the two.
    #[arg(long, env = "WEFTD_WIREGUARD_IMPLEMENTATION", value_enum, default_value_t = WireguardChoice::Auto)]
    pub wireguard_implementation: WireguardChoice,
    /// Lease TTL, e.g. "24h" or "90s"; renewed when half has passed.
    #[arg(long, env = "WEFTD_SUBNET_LEASE_TTL", default_value = "24h")]
    pub subnet_lease_ttl: String,
    /// Log format.
    #[arg(long, env = "WEFTD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Remove weft's nftables table, its VXLAN and WireGuard devices, its routes (protocol
    /// 87) and the CNI conflist it installed from this host, then exit; the lease in etcd is
    /// left to expire.
    #[arg(long, env = "WEFTD_CLEANUP")]
    pub cleanup: bool,
    /// At start, install the CNI plugin and conflist (as `weftd install-cni` does).
    #[arg(long, env = "WEFTD_INSTALL_CNI")]
    pub install_cni: bool,
    /// Where the CNI plugin binary is installed.
    #[arg(long, env = "WEFTD_CNI_BIN_DIR", default_value = DEFAULT_CNI_BIN_DIR, global = true)]
    pub cni_bin_dir: PathBuf,
    /// Where the CNI conflist is installed (and removed by --cleanup).
    #[arg(long, env = "WEFTD_CNI_CONF_DIR", default_value = DEFAULT_CNI_CONF_DIR, global = true)]
    pub cni_conf_dir: PathBuf,
    /// The conflist to install (default: a built-in one for the weft plugin plus portmap).
    #[arg(long, env = "WEFTD_CNI_CONF_SOURCE", global = true)]
    pub cni_conf_source: Option<PathBuf>,
    /// The plugin binary to install (default: `weft` next to weftd, then /opt/weft/bin/weft).
    #[arg(long, env = "WEFTD_CNI_PLUGIN_SOURCE", global = true)]
    pub cni_plugin_source: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<WeftdCommand>,
}

pub const DEFAULT_CNI_BIN_DIR: &str = "/opt/cni/bin";
pub const DEFAULT_WIREGUARD_KEY_FILE: &str = "/var/lib/weft/wireguard.key";

/// `--wireguard-implementation`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WireguardChoice {
    /// The kernel's WireGuard when the kernel has it, else --wireguard-userspace.
    #[default]
    Auto,
    /// Only the kernel's.
    Kernel,
    /// Only --wireguard-userspace.
    Userspace,
}
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";

#[derive(Subcommand, Clone, Debug)]
pub enum WeftdCommand {
    /// Install the `weft` CNI plugin into --cni-bin-dir and its conflist into --cni-conf-dir
    /// (each written to a temporary file and renamed), then exit. For an init container.
    InstallCni,
}

impl WeftdCli {
    /// The install-cni settings these flags give.
    pub fn install_cni_settings(&self) -> crate::host::install_cni::InstallCni {
        crate::host::install_cni::InstallCni {
            bin_dir: self.cni_bin_dir.clone(),
            conf_dir: self.cni_conf_dir.clone(),
            conf_source: self.cni_conf_source.clone(),
            plugin_source: self.cni_plugin_source.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Table,
    Wide,
    Json,
}

/// `netctl config` output: the table already shows everything, so there is no `wide`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum ConfigOutput {
    #[default]
    Table,
    Json,
}

/// `netctl health` output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum HealthOutput {
    /// A table (one node), or the matrix and the summary (--cluster).
    #[default]
    Table,
    /// The report as weftd serves it (one node), or the matrix and the summary (--cluster).
    Json,
    /// A self-contained HTML heat-map of the matrix (--cluster only).
    Html,
}

/// netctl: inspect weft's leases and network config.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "netctl",
    version,
    about = "Inspect weft's subnet leases and network config"
)]
pub struct NetctlCli {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Read the network config from this file instead of `<prefix>/config` in etcd (as weftd
    /// run with --net-config does).
    #[arg(long, env = "WEFTD_NET_CONFIG", global = true)]
    pub net_config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: NetctlCommand,
}

#[derive(Subcommand, Clone, Debug)]
pub enum NetctlCommand {
    /// List every subnet lease: subnet, node, public IP, backend, VTEP MAC, TTL, status.
    Leases {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Only the leases of this node: its name (NodeName), or a public IP for leases
        /// without one.
        #[arg(long)]
        node: Option<String>,
        /// This host's subnet file: the lease it names is marked `*` (none when absent).
        #[arg(long, env = "WEFTD_SUBNET_FILE", default_value = DEFAULT_SUBNET_FILE)]
        subnet_file: PathBuf,
    },
    /// Show the cluster network config, where it came from, and how many subnets are leased.
    Config {
        #[arg(short = 'o', long, value_enum, default_value_t = ConfigOutput::Table)]
        output: ConfigOutput,
    },
    /// Compare this host's kernel state (VXLAN device, routes, neighbour and FDB entries,
    /// bridge and pod MTUs), subnet.env, CNI config and weftd's health with the leases; list
    /// every difference, exit 1 on drift.
    Check {
        /// The subnet file weftd writes on this host.
        #[arg(long, env = "WEFTD_SUBNET_FILE", default_value = DEFAULT_SUBNET_FILE)]
        subnet_file: PathBuf,
        /// The underlay interface (default: the one holding this host's public IP).
        #[arg(long)]
        iface: Option<String>,
        /// The CNI config directory weftd installs its conflist into.
        #[arg(long, env = "WEFTD_CNI_CONF_DIR", default_value = DEFAULT_CNI_CONF_DIR)]
        cni_conf_dir: PathBuf,
        /// Address of the local weftd's /healthz (as weftd's flag; 0.0.0.0 and :: mean
        /// loopback).
        #[arg(long, env = "WEFTD_HEALTHZ_IP", default_value = DEFAULT_HEALTHZ_IP)]
        healthz_ip: IpAddr,
        /// Port of the local weftd's /healthz (as weftd's flag; 0 skips the check).
        #[arg(long, env = "WEFTD_HEALTHZ_PORT", default_value_t = DEFAULT_HEALTHZ_PORT)]
        healthz_port: u16,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// How this node's weftd reaches every peer (its /health/peers): one row per peer and
    /// family, the reasons of those not ok; exit 1 when any is not ok (unknown too). With
    /// --cluster: every node's weftd asked, a node x node matrix and the likely cause.
    Health(HealthArgs),
}

/// `netctl health`'s flags.
#[derive(Args, Clone, Debug)]
pub struct HealthArgs {
    /// Ask every node's weftd (the nodes of the leases in etcd, through their public
    /// IP and --healthz-port) and show the matrix.
    #[arg(long)]
    pub cluster: bool,
    /// Address of the local weftd's health server (as weftd's flag; 0.0.0.0 and :: mean
    /// loopback).
    #[arg(long, env = "WEFTD_HEALTHZ_IP", default_value = DEFAULT_HEALTHZ_IP)]
    pub healthz_ip: IpAddr,
    /// Port of weftd's health server (as weftd's flag), on this node or, with
    /// --cluster, on every node.
    #[arg(long, env = "WEFTD_HEALTHZ_PORT", default_value_t = DEFAULT_HEALTHZ_PORT)]
    pub healthz_port: u16,
    /// Bound on asking one weftd, e.g. "3s".
    #[arg(long, default_value = "3s")]
    pub timeout: String,
    /// With --cluster: at most this many nodes asked at once.
    #[arg(long, default_value_t = 64)]
    pub parallel: usize,
    #[arg(short = 'o', long, value_enum, default_value_t = HealthOutput::Table)]
    pub output: HealthOutput,
    /// Write the output to this file (replaced whole) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// flannel's `FLANNELD_*` environment names, for the flags weft shares with flannel.
const FLANNEL_ALIASES: &[(&str, &str)] = &[
    ("FLANNELD_ETCD_ENDPOINTS", "WEFTD_ETCD_ENDPOINTS"),
    ("FLANNELD_ETCD_PREFIX", "WEFTD_ETCD_PREFIX"),
    ("FLANNELD_ETCD_CAFILE", "WEFTD_ETCD_CAFILE"),
    ("FLANNELD_ETCD_CERTFILE", "WEFTD_ETCD_CERTFILE"),
    ("FLANNELD_ETCD_KEYFILE", "WEFTD_ETCD_KEYFILE"),
    ("FLANNELD_ETCD_USERNAME", "WEFTD_ETCD_USERNAME"),
    ("FLANNELD_ETCD_PASSWORD", "WEFTD_ETCD_PASSWORD"),
    ("FLANNELD_IFACE", "WEFTD_IFACE"),
    ("FLANNELD_IFACE_REGEX", "WEFTD_IFACE_REGEX"),
    ("FLANNELD_IFACE_CAN_REACH", "WEFTD_IFACE_CAN_REACH"),
    ("FLANNELD_PUBLIC_IP", "WEFTD_PUBLIC_IP"),
    ("FLANNELD_SUBNET_FILE", "WEFTD_SUBNET_FILE"),
    ("FLANNELD_NET_CONFIG_PATH", "WEFTD_NET_CONFIG"),
    ("FLANNELD_IP_MASQ", "WEFTD_IP_MASQ"),
    ("FLANNELD_HEALTHZ_IP", "WEFTD_HEALTHZ_IP"),
    ("FLANNELD_HEALTHZ_PORT", "WEFTD_HEALTHZ_PORT"),
];

/// The `WEFTD_*` variables to set from `FLANNELD_*` ones (a `WEFTD_*` already set wins).
/// Pure: the caller applies the result before parsing.
pub fn flannel_env_aliases(env: &[(String, String)]) -> Vec<(String, String)> {
    let has = |k: &str| env.iter().any(|(n, _)| n == k);
    FLANNEL_ALIASES
        .iter()
        .filter(|(_, ours)| !has(ours))
        .filter_map(|(theirs, ours)| {
            env.iter()
                .find(|(n, _)| n == theirs)
                .map(|(_, v)| (ours.to_string(), v.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definitions_are_consistent() {
        use clap::CommandFactory;
        WeftdCli::command().debug_assert();
        NetctlCli::command().debug_assert();
    }

    #[test]
    fn flannel_env_names_map_unless_ours_is_set() {
        let env = vec![
            ("FLANNELD_IFACE".to_string(), "eth1".to_string()),
            ("FLANNELD_PUBLIC_IP".to_string(), "192.0.2.1".to_string()),
            ("WEFTD_PUBLIC_IP".to_string(), "192.0.2.2".to_string()),
        ];
        assert_eq!(
            flannel_env_aliases(&env),
            vec![("WEFTD_IFACE".to_string(), "eth1".to_string())]
        );
    }

    #[test]
    fn repeatable_iface_and_defaults() {
        let cli =
            WeftdCli::try_parse_from(["weftd", "--iface", "eth0", "--iface", "10.0.0.1"]).unwrap();
        assert_eq!(cli.iface, vec!["eth0", "10.0.0.1"]);
        assert_eq!(cli.etcd.etcd_prefix, DEFAULT_PREFIX);
        assert_eq!(cli.subnet_lease_ttl, "24h");
        assert!(WeftdCli::try_parse_from(["weftd", "--public-ip", "not-an-ip"]).is_err());
        assert!(!cli.cleanup);
        assert!(
            WeftdCli::try_parse_from(["weftd", "--cleanup"])
                .unwrap()
                .cleanup
        );
    }
}
