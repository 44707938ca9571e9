//! The lab's command line (`tests/lab.sh`, `weft-lab`) and the options a lab is built from.
//!
//! A crate of its own, with no etcd client and so no protoc in its build, so that
//! `tests/lab.sh` can check its arguments, and answer `--help`, on a machine where nothing is
//! installed yet and before anything is installed or built (its `weft-lab-args` binary). The
//! lab itself (`weft_tests::lab`, the `weft-lab` binary) uses the same [`Cli`] and
//! [`LabOptions`]: one list of flags, one set of checks.

use std::fmt;
use std::str::FromStr;

use clap::Parser;
use ipnetwork::{Ipv4Network, Ipv6Network};

/// Hosts are 10.99.0.11 ..= 10.99.0.(10 + MAX_HOSTS), below the router's .254.
pub const MAX_HOSTS: usize = 200;
/// The name of a lab started without `--name`.
pub const DEFAULT_NAME: &str = "weft-lab";
/// The longest lab name (it prefixes every namespace of the lab).
pub const MAX_NAME_LEN: usize = 32;

/// A lab's name: the prefix of its namespaces (`<name>-sw`, `<name>-h1`, `<name>-h1p1`) and
/// of its directories. 1 to 32 lowercase letters, digits and dashes, starting with a letter
/// and not ending in a dash.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabName(String);

impl LabName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LabName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A lab name that breaks the rule of [`LabName`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "lab name '{0}' is not usable: give 1 to {MAX_NAME_LEN} lowercase letters, digits and \
     dashes, starting with a letter and not ending in a dash (e.g. lab2)"
)]
pub struct LabNameError(pub String);

impl FromStr for LabName {
    type Err = LabNameError;

    fn from_str(s: &str) -> Result<LabName, LabNameError> {
        let ok = (1..=MAX_NAME_LEN).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && !s.ends_with('-')
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if ok {
            Ok(LabName(s.to_string()))
        } else {
            Err(LabNameError(s.to_string()))
        }
    }
}

impl TryFrom<String> for LabName {
    type Error = LabNameError;

    fn try_from(s: String) -> Result<LabName, LabNameError> {
        s.parse()
    }
}

impl From<LabName> for String {
    fn from(n: LabName) -> String {
        n.0
    }
}

/// The backend written into the network config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LabBackend {
    Vxlan,
    HostGw,
    /// WireGuard through the userspace `wireguard-go` (this machine's kernel may have none).
    Wireguard,
}

impl LabBackend {
    /// The config's `Backend.Type`.
    pub fn as_str(self) -> &'static str {
        match self {
            LabBackend::Vxlan => "vxlan",
            LabBackend::HostGw => "host-gw",
            LabBackend::Wireguard => "wireguard",
        }
    }
}

/// The wireguard backend's `Backend.Mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LabWireguardMode {
    /// One device per family (the default).
    Separate,
    /// One device for both families; endpoints chosen per peer.
    Auto,
    /// One device; endpoints over IPv4.
    Ipv4,
    /// One device; endpoints over IPv6.
    Ipv6,
}

impl LabWireguardMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LabWireguardMode::Separate => "separate",
            LabWireguardMode::Auto => "auto",
            LabWireguardMode::Ipv4 => "ipv4",
            LabWireguardMode::Ipv6 => "ipv6",
        }
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// The lab's name; `None` picks one unique to this process (`wl<pid>x<n>`, for tests).
    pub name: Option<LabName>,
    /// Number of hosts, h1..hN (1..=200).
    pub hosts: usize,
    pub backend: LabBackend,
    /// `"DirectRouting": true` in the vxlan backend config.
    pub direct_routing: bool,
    /// `"Mode"` in the wireguard backend config (unset: flannel's default, separate).
    pub wireguard_mode: Option<LabWireguardMode>,
    /// Start weftd with `--ip-masq`; the connectivity check then also probes an address
    /// outside the cluster.
    pub ip_masq: bool,
    /// Pods added to every host.
    pub pods_per_host: usize,
    /// The cluster network (`Network`).
    pub network: String,
    /// `SubnetLen`.
    pub subnet_len: u8,
    /// `EnableIPv4` (false with `ipv6_network` makes an IPv6-only cluster).
    pub ipv4: bool,
    /// `EnableIPv6` with this `IPv6Network`; the underlay then carries IPv6 too (fd99::/64).
    pub ipv6_network: Option<String>,
    /// `IPv6SubnetLen`.
    pub ipv6_subnet_len: u8,
    /// Leave everything running when the lab is dropped.
    pub keep: bool,
    /// weftd's `--health-probe-interval` (unset: weftd's default, 10s); tests that wait for
    /// a peer state make it short.
    pub health_probe_interval: Option<String>,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            name: None,
            hosts: 3,
            backend: LabBackend::Vxlan,
            direct_routing: false,
            wireguard_mode: None,
            ip_masq: false,
            pods_per_host: 2,
            network: "10.244.0.0/16".into(),
            subnet_len: 24,
            ipv4: true,
            ipv6_network: None,
            ipv6_subnet_len: 64,
            keep: false,
            health_probe_interval: None,
        }
    }
}

/// Options that cannot make a lab.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("--hosts {0}: a lab has 1 to {MAX_HOSTS} hosts")]
    Hosts(usize),
    #[error("--direct-routing is an option of the vxlan backend; drop it or use --backend vxlan")]
    DirectRoutingNeedsVxlan,
    #[error("--wireguard-mode is an option of the wireguard backend; drop it or use --backend wireguard")]
    ModeNeedsWireguard,
    #[error("--health-probe-interval {0}: not a duration; give one such as 1s or 500ms")]
    ProbeInterval(String),
    #[error("an IPv6-only lab needs an IPv6 network: add --ipv6-network CIDR, e.g. fc00::/48")]
    Ipv6OnlyNeedsNetwork,
    #[error("--ipv6-network {value}: {problem}")]
    Ipv6Network { value: String, problem: String },
    #[error("IPv6 subnet length /{len} does not fit the IPv6 network: use /{min} to /120")]
    Ipv6SubnetLen { len: u8, min: u8 },
    #[error("network {value}: {problem}")]
    Network { value: String, problem: String },
    #[error("subnet length /{len} does not fit the network: use /{min} to /28")]
    SubnetLen { len: u8, min: u8 },
    #[error("{network} holds {subnets} /{len} subnets, fewer than {hosts} hosts: use fewer hosts")]
    TooFewSubnets {
        network: String,
        subnets: u64,
        len: u8,
        hosts: usize,
    },
    #[error("--pods-per-host {pods}: a /{len} subnet holds at most {max} pods")]
    TooManyPods { pods: usize, len: u8, max: u64 },
}

impl LabOptions {
    /// Check the options before anything is created.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.hosts == 0 || self.hosts > MAX_HOSTS {
            return Err(OptionsError::Hosts(self.hosts));
        }
        if self.direct_routing && self.backend != LabBackend::Vxlan {
            return Err(OptionsError::DirectRoutingNeedsVxlan);
        }
        if self.wireguard_mode.is_some() && self.backend != LabBackend::Wireguard {
            return Err(OptionsError::ModeNeedsWireguard);
        }
        if let Some(d) = &self.health_probe_interval {
            if humantime::parse_duration(d).is_err() {
                return Err(OptionsError::ProbeInterval(d.clone()));
            }
        }
        if let Some(n6) = &self.ipv6_network {
            let bad = |problem: String| OptionsError::Ipv6Network {
                value: n6.clone(),
                problem,
            };
            let net6: Ipv6Network = n6
                .parse()
                .map_err(|e| bad(format!("{e}; give an IPv6 network such as fc00::/48")))?;
            if net6.network() != net6.ip() {
                return Err(bad(format!(
                    "host bits are set; use {}/{}",
                    net6.network(),
                    net6.prefix()
                )));
            }
            if self.ipv6_subnet_len <= net6.prefix() || self.ipv6_subnet_len > 120 {
                return Err(OptionsError::Ipv6SubnetLen {
                    len: self.ipv6_subnet_len,
                    min: net6.prefix() + 1,
                });
            }
        } else if !self.ipv4 {
            return Err(OptionsError::Ipv6OnlyNeedsNetwork);
        }
        let bad = |problem: String| OptionsError::Network {
            value: self.network.clone(),
            problem,
        };
        let net: Ipv4Network = self.network.parse().map_err(|e| bad(format!("{e}")))?;
        if net.network() != net.ip() {
            return Err(bad(format!(
                "host bits are set; use {}/{}",
                net.network(),
                net.prefix()
            )));
        }
        if self.subnet_len < net.prefix() || self.subnet_len > 28 {
            return Err(OptionsError::SubnetLen {
                len: self.subnet_len,
                min: net.prefix(),
            });
        }
        let subnets = 1u64 << (self.subnet_len - net.prefix());
        if subnets < self.hosts as u64 {
            return Err(OptionsError::TooFewSubnets {
                network: self.network.clone(),
                subnets,
                len: self.subnet_len,
                hosts: self.hosts,
            });
        }
        // Network, gateway and broadcast are never given to pods.
        let per_subnet = (1u64 << (32 - self.subnet_len)) - 3;
        if self.pods_per_host as u64 > per_subnet {
            return Err(OptionsError::TooManyPods {
                pods: self.pods_per_host,
                len: self.subnet_len,
                max: per_subnet,
            });
        }
        Ok(())
    }

    /// The network config written to `<prefix>/config`.
    pub fn net_config(&self) -> String {
        let backend = if self.direct_routing {
            format!(
                r#"{{"Type":"{}","DirectRouting":true}}"#,
                self.backend.as_str()
            )
        } else if let Some(mode) = self.wireguard_mode {
            format!(
                r#"{{"Type":"{}","Mode":"{}"}}"#,
                self.backend.as_str(),
                mode.as_str()
            )
        } else {
            format!(r#"{{"Type":"{}"}}"#, self.backend.as_str())
        };
        let v6 = match &self.ipv6_network {
            Some(n6) => format!(
                r#","EnableIPv6":true,"IPv6Network":"{n6}","IPv6SubnetLen":{}"#,
                self.ipv6_subnet_len
            ),
            None => String::new(),
        };
        if self.ipv4 {
            format!(
                r#"{{"Network":"{}","SubnetLen":{}{v6},"Backend":{backend}}}"#,
                self.network, self.subnet_len
            )
        } else {
            format!(r#"{{"EnableIPv4":false{v6},"Backend":{backend}}}"#)
        }
    }

    /// The lab's underlay and pods carry IPv6.
    pub fn ipv6(&self) -> bool {
        self.ipv6_network.is_some()
    }
}

/// The flags that describe a lab to build (the ones --probe and --teardown refuse).
const BUILD_ARGS: [&str; 11] = [
    "health_probe_interval",
    "hosts",
    "backend",
    "direct_routing",
    "wireguard_mode",
    "ip_masq",
    "pods_per_host",
    "keep",
    "ipv6_network",
    "ipv6_only",
    "name",
];

/// weft's multi-host lab on this machine: hosts as network namespaces on a switch namespace,
/// a real etcd, weftd on every host, pods through the weft CNI plugin, and a ping from every
/// pod to every other pod and host.
#[derive(Parser, Debug)]
#[command(
    name = "weft-lab",
    bin_name = "tests/lab.sh",
    after_help = "Exit status: 0 when every probe answered, 1 when one did not or the lab did \
                  not come up, 2 for usage errors.\n\
                  Examples:\n  \
                  tests/lab.sh --hosts 2 --keep          # a lab named weft-lab, left up\n  \
                  tests/lab.sh --probe                   # ping matrix again\n  \
                  tests/lab.sh --teardown                # remove it\n  \
                  tests/lab.sh --name v6 --ipv6-network fc00::/48 --ipv6-only --keep"
)]
pub struct Cli {
    /// Number of hosts (h1..hN, at most 200).
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    /// Backend in the network config.
    #[arg(long, value_enum, default_value_t = LabBackend::Vxlan)]
    pub backend: LabBackend,
    /// vxlan with DirectRouting (peers on the same underlay subnet get direct routes).
    #[arg(long)]
    pub direct_routing: bool,
    /// The wireguard backend's Mode: one device per family (separate), or one device for
    /// both families with endpoints of one family (ipv4, ipv6) or chosen per peer (auto).
    #[arg(long, value_enum, value_name = "MODE")]
    pub wireguard_mode: Option<LabWireguardMode>,
    /// Run weftd with --ip-masq and also check that pods reach an address outside the cluster.
    #[arg(long)]
    pub ip_masq: bool,
    /// Pods per host.
    #[arg(long, default_value_t = 2)]
    pub pods_per_host: usize,
    /// Leave the lab running and print commands to look at it (--probe, --teardown later).
    #[arg(long)]
    pub keep: bool,
    /// Also run IPv6 (dual-stack) with this IPv6 cluster network, e.g. fc00::/48; the
    /// underlay then carries IPv6 too.
    #[arg(long, value_name = "CIDR")]
    pub ipv6_network: Option<String>,
    /// IPv6 only (`EnableIPv4: false`); needs --ipv6-network.
    #[arg(long, requires = "ipv6_network")]
    pub ipv6_only: bool,
    /// weftd's --health-probe-interval on every host, e.g. 1s (default: weftd's, 10s).
    #[arg(long, value_name = "DURATION")]
    pub health_probe_interval: Option<String>,
    /// The lab's name: the prefix of its namespaces (NAME-sw, NAME-h1, NAME-h1p1, …). Labs
    /// with different names run side by side.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_NAME)]
    pub name: LabName,
    /// Ping every pod pair of a running lab (one left up by --keep) again, print the
    /// matrix, then exit: 1 when a probe fails. Without NAME: the only lab there is.
    #[arg(long, value_name = "NAME", num_args = 0..=1, conflicts_with_all = BUILD_ARGS.iter().copied().chain(["teardown"]))]
    pub probe: Option<Option<LabName>>,
    /// Remove a lab left running by --keep (or by an interrupted run), then exit. Without
    /// NAME: the only lab there is (several are listed).
    #[arg(long, value_name = "NAME", num_args = 0..=1, conflicts_with_all = BUILD_ARGS)]
    pub teardown: Option<Option<LabName>>,
}

/// What the command line asks for.
#[derive(Clone, Debug)]
pub enum Action {
    /// Build a lab, check it, tear it down (or leave it up with `keep`).
    Run(LabOptions),
    /// Ping matrix of a running lab (the only one when no name is given).
    Probe(Option<LabName>),
    /// Remove a lab (the only one when no name is given).
    Teardown(Option<LabName>),
}

impl Action {
    /// One word for `tests/lab.sh`: `run`, `probe` or `teardown`.
    pub fn verb(&self) -> &'static str {
        match self {
            Action::Run(_) => "run",
            Action::Probe(_) => "probe",
            Action::Teardown(_) => "teardown",
        }
    }
}

impl Cli {
    /// The action, with the lab's options checked.
    pub fn action(self) -> Result<Action, OptionsError> {
        if let Some(name) = self.teardown {
            return Ok(Action::Teardown(name));
        }
        if let Some(name) = self.probe {
            return Ok(Action::Probe(name));
        }
        let opts = LabOptions {
            name: Some(self.name),
            hosts: self.hosts,
            backend: self.backend,
            direct_routing: self.direct_routing,
            wireguard_mode: self.wireguard_mode,
            ip_masq: self.ip_masq,
            pods_per_host: self.pods_per_host,
            keep: self.keep,
            ipv4: !self.ipv6_only,
            ipv6_network: self.ipv6_network,
            health_probe_interval: self.health_probe_interval,
            ..LabOptions::default()
        };
        opts.validate()?;
        Ok(Action::Run(opts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Action, String> {
        let cli = Cli::try_parse_from(std::iter::once("lab.sh").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.action().map_err(|e| e.to_string())
    }

    #[test]
    fn net_config_per_backend() {
        let vx = LabOptions::default();
        assert_eq!(
            vx.net_config(),
            r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#
        );
        let dr = LabOptions {
            direct_routing: true,
            ..LabOptions::default()
        };
        assert!(dr
            .net_config()
            .ends_with(r#""Backend":{"Type":"vxlan","DirectRouting":true}}"#));
        let gw = LabOptions {
            backend: LabBackend::HostGw,
            ..LabOptions::default()
        };
        assert!(gw
            .net_config()
            .ends_with(r#""Backend":{"Type":"host-gw"}}"#));
        let wg = LabOptions {
            backend: LabBackend::Wireguard,
            wireguard_mode: Some(LabWireguardMode::Auto),
            ..LabOptions::default()
        };
        assert!(wg
            .net_config()
            .ends_with(r#""Backend":{"Type":"wireguard","Mode":"auto"}}"#));
        let v6 = LabOptions {
            ipv4: false,
            ipv6_network: Some("fc00::/48".into()),
            ..LabOptions::default()
        };
        assert_eq!(
            v6.net_config(),
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}"#
        );
    }

    #[test]
    fn options_are_checked() {
        let ok = LabOptions::default();
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(
            LabOptions {
                health_probe_interval: Some("soon".into()),
                ..ok.clone()
            }
            .validate(),
            Err(OptionsError::ProbeInterval("soon".into()))
        );
        let cases = [
            LabOptions {
                hosts: 0,
                ..ok.clone()
            },
            LabOptions {
                hosts: 201,
                ..ok.clone()
            },
            LabOptions {
                backend: LabBackend::HostGw,
                direct_routing: true,
                ..ok.clone()
            },
            LabOptions {
                wireguard_mode: Some(LabWireguardMode::Auto),
                ..ok.clone()
            },
            LabOptions {
                network: "10.244.0.1/16".into(),
                ..ok.clone()
            },
            LabOptions {
                subnet_len: 12,
                ..ok.clone()
            },
            LabOptions {
                network: "10.244.0.0/23".into(),
                hosts: 3,
                ..ok.clone()
            },
            LabOptions {
                pods_per_host: 254,
                ..ok.clone()
            },
            LabOptions {
                ipv4: false,
                ..ok.clone()
            },
            LabOptions {
                ipv6_network: Some("fc00::1/48".into()),
                ..ok.clone()
            },
        ];
        for c in cases {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }

    #[test]
    fn lab_names_are_checked() {
        for good in ["weft-lab", "a", "wl123x0", "lab-2", &"a".repeat(32)] {
            assert_eq!(good.parse::<LabName>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            "2lab",
            "Lab",
            "lab-",
            "-lab",
            "la b",
            "lab/x",
            "lab.x",
            &"a".repeat(33),
        ] {
            let e = bad.parse::<LabName>().unwrap_err();
            assert!(e.to_string().contains("lowercase letters"), "{e}");
        }
    }

    #[test]
    fn the_command_line_becomes_one_action() {
        match parse(&[]).unwrap() {
            Action::Run(o) => {
                assert_eq!(o.name.unwrap().as_str(), DEFAULT_NAME);
                assert_eq!((o.hosts, o.pods_per_host, o.keep), (3, 2, false));
            }
            a => panic!("{a:?}"),
        }
        match parse(&[
            "--hosts",
            "2",
            "--name",
            "b",
            "--keep",
            "--ipv6-network",
            "fc00::/48",
            "--ipv6-only",
        ])
        .unwrap()
        {
            Action::Run(o) => {
                assert_eq!(o.name.as_ref().unwrap().as_str(), "b");
                assert!(o.keep && !o.ipv4 && o.ipv6());
            }
            a => panic!("{a:?}"),
        }
        assert!(matches!(
            parse(&["--teardown"]).unwrap(),
            Action::Teardown(None)
        ));
        match parse(&["--teardown", "b"]).unwrap() {
            Action::Teardown(Some(n)) => assert_eq!(n.as_str(), "b"),
            a => panic!("{a:?}"),
        }
        match parse(&["--probe", "b"]).unwrap() {
            Action::Probe(Some(n)) => assert_eq!(n.as_str(), "b"),
            a => panic!("{a:?}"),
        }
        assert!(matches!(parse(&["--probe"]).unwrap(), Action::Probe(None)));
        assert_eq!(parse(&["--probe"]).unwrap().verb(), "probe");
    }

    #[test]
    fn bad_command_lines_name_the_problem() {
        for (args, needle) in [
            (&["--hosts", "0"][..], "--hosts 0: a lab has 1 to 200 hosts"),
            (&["--host", "2"][..], "--host"),
            (&["--teardown", "--hosts", "2"][..], "cannot be used with"),
            (&["--probe", "a", "--teardown"][..], "cannot be used with"),
            (&["--teardown", "Bad"][..], "lab name 'Bad' is not usable"),
            (&["--name", "x/y"][..], "lab name 'x/y' is not usable"),
            (&["--ipv6-only"][..], "--ipv6-network"),
            (
                &["--ipv6-network", "10.0.0.0/8"][..],
                "--ipv6-network 10.0.0.0/8: ",
            ),
            (
                &["--backend", "host-gw", "--direct-routing"][..],
                "drop it or use --backend vxlan",
            ),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}
