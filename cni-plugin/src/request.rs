//! One plugin invocation, parsed and validated before anything is touched: the `CNI_*`
//! environment and the network config on stdin.

use std::path::PathBuf;

use ipnetwork::Ipv4Network;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{code, CniError};
use crate::version;

/// Largest stdin accepted (a config with a big prevResult is a few KiB).
pub const MAX_STDIN: usize = 1024 * 1024;
/// Linux interface names are at most 15 bytes.
pub const MAX_IFNAME: usize = 15;
pub const DEFAULT_SUBNET_FILE: &str = "/run/weft/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/weft";
pub const DEFAULT_BRIDGE: &str = "cni0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    fn parse(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    "unknown CNI_COMMAND",
                    format!(
                        "{:?} is not one of ADD, DEL, CHECK, VERSION, GC, STATUS",
                        other.chars().take(32).collect::<String>()
                    ),
                ))
            }
        })
    }
}

/// An attachment named in `cni.dev/valid-attachments` (GC).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network config weft reads from stdin.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
    pub bridge: String,
    pub hairpin_mode: bool,
    pub is_default_gateway: bool,
    pub mtu: Option<u32>,
    pub log_file: Option<PathBuf>,
    /// An explicit pod range that replaces the host subnet from subnet.env.
    pub range: Option<Ipv4Network>,
    pub prev_result: Option<Value>,
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The raw config as JSON. Unknown keys are allowed: runtimes add their own (`runtimeConfig`,
/// `args`, capabilities) and conflists add plugin-specific ones.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    subnet_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    bridge: Option<String>,
    hairpin_mode: Option<bool>,
    is_default_gateway: Option<bool>,
    mtu: Option<u32>,
    log_file: Option<PathBuf>,
    range: Option<String>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

/// A validated invocation.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: Vec<(String, String)>,
    pub conf: Option<NetConf>,
}

fn invalid_env(var: &str, details: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_ENV, format!("invalid {var}"), details)
}

/// Names used in file paths (container ids, network names): letters, digits, `_ . -`,
/// starting with a letter or digit — so no `/`, no `..`, nothing hidden.
pub fn is_safe_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A Linux interface name: 1–15 bytes, not `.` or `..`, no `/`, `:`, whitespace or NUL.
pub fn is_valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_IFNAME
        && s != "."
        && s != ".."
        && !s
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0' || c.is_control())
}

fn parse_args(raw: &str) -> Result<Vec<(String, String)>, CniError> {
    let mut out = Vec::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| invalid_env("CNI_ARGS", format!("{pair:?} is not KEY=VALUE")))?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    if stdin.len() > MAX_STDIN {
        return Err(CniError::new(
            code::DECODE,
            "network config too large",
            format!("{} bytes on stdin, at most {MAX_STDIN}", stdin.len()),
        ));
    }
    let raw: RawConf = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE,
            "cannot decode the network config on stdin",
            e.to_string(),
        )
    })?;
    let cni_version = raw.cni_version.ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "invalid network config",
            "cniVersion is missing",
        )
    })?;
    if !version::is_supported(&cni_version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            format!(
                "cniVersion {:?} is not one of {}",
                cni_version.chars().take(32).collect::<String>(),
                version::SUPPORTED.join(", ")
            ),
        ));
    }
    let bad =
        |details: String| CniError::new(code::INVALID_CONFIG, "invalid network config", details);
    let name = raw.name.ok_or_else(|| bad("name is missing".into()))?;
    if !is_safe_name(&name, 128) {
        return Err(bad(format!("name {:?} must be letters, digits, '_', '.', '-' (at most 128), starting with a letter or digit", name.chars().take(64).collect::<String>())));
    }
    if raw.plugin_type.is_none() {
        return Err(bad("type is missing".into()));
    }
    let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
    if !is_valid_ifname(&bridge) {
        return Err(bad(format!(
            "bridge {:?} is not a valid interface name",
            bridge.chars().take(32).collect::<String>()
        )));
    }
    if let Some(mtu) = raw.mtu {
        if !(576..=65535).contains(&mtu) {
            return Err(bad(format!("mtu {mtu} is outside 576..=65535")));
        }
    }
    let data_dir = raw
        .data_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let subnet_file = raw
        .subnet_file
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SUBNET_FILE));
    for (key, p) in [("dataDir", &data_dir), ("subnetFile", &subnet_file)] {
        if !p.is_absolute() {
            return Err(bad(format!(
                "{key} {} must be an absolute path",
                p.display()
            )));
        }
    }
    let range = match raw.range {
        None => None,
        Some(r) => {
            let net: Ipv4Network = r.parse().map_err(|_| {
                bad(format!(
                    "range {:?} is not an IPv4 CIDR such as 10.244.3.0/24",
                    r.chars().take(64).collect::<String>()
                ))
            })?;
            if net.prefix() > 29 || net.ip() != net.network() {
                return Err(bad(format!(
                    "range {r} must be a network address with a prefix of /29 or shorter (it holds the gateway .1 and the pods)"
                )));
            }
            Some(net)
        }
    };
    Ok(NetConf {
        cni_version,
        name,
        subnet_file,
        data_dir,
        bridge,
        hairpin_mode: raw.hairpin_mode.unwrap_or(true),
        is_default_gateway: raw.is_default_gateway.unwrap_or(true),
        mtu: raw.mtu,
        log_file: raw.log_file,
        range,
        prev_result: raw.prev_result,
        valid_attachments: raw.valid_attachments,
    })
}

impl Request {
    /// Parse one invocation. `env` looks up an environment variable.
    pub fn parse(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Request, CniError> {
        let command = Command::parse(
            &env("CNI_COMMAND")
                .ok_or_else(|| invalid_env("CNI_COMMAND", "CNI_COMMAND is not set"))?,
        )?;
        if command == Command::Version {
            return Ok(Request {
                command,
                container_id: None,
                netns: None,
                ifname: None,
                args: Vec::new(),
                conf: None,
            });
        }
        let conf = parse_conf(stdin)?;
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let require = |var: &str| {
            env(var)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| invalid_env(var, format!("{var} is required for this command")))
        };
        let container_id = if needs_container {
            let id = require("CNI_CONTAINERID")?;
            if !is_safe_name(&id, 256) {
                return Err(invalid_env("CNI_CONTAINERID", format!("{:?} must be letters, digits, '_', '.', '-' starting with a letter or digit", id.chars().take(64).collect::<String>())));
            }
            Some(id)
        } else {
            None
        };
        let ifname = if needs_container {
            let n = require("CNI_IFNAME")?;
            if !is_valid_ifname(&n) {
                return Err(invalid_env(
                    "CNI_IFNAME",
                    format!(
                        "{:?} is not a valid interface name (1-15 bytes, no '/', ':' or spaces)",
                        n.chars().take(32).collect::<String>()
                    ),
                ));
            }
            Some(n)
        } else {
            None
        };
        let netns = match command {
            Command::Add | Command::Check => {
                let p = PathBuf::from(require("CNI_NETNS")?);
                if !p.is_absolute() {
                    return Err(invalid_env(
                        "CNI_NETNS",
                        format!("{} must be an absolute path", p.display()),
                    ));
                }
                Some(p)
            }
            Command::Del => env("CNI_NETNS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            _ => None,
        };
        let args = parse_args(&env("CNI_ARGS").unwrap_or_default())?;
        if matches!(command, Command::Gc | Command::Status)
            && !version::has_gc_and_status(&conf.cni_version)
        {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                format!(
                    "{command:?} needs cniVersion 1.1.0, the config says {}",
                    conf.cni_version
                ),
            ));
        }
        if command == Command::Check && !version::has_check(&conf.cni_version) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                format!(
                    "CHECK needs cniVersion 0.4.0 or later, the config says {}",
                    conf.cni_version
                ),
            ));
        }
        Ok(Request {
            command,
            container_id,
            netns,
            ifname,
            args,
            conf: Some(conf),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const CONF: &str = r#"{"cniVersion":"1.1.0","name":"weft","type":"weft"}"#;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn add_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
    }

    #[test]
    fn add_parses_with_defaults() {
        let r = Request::parse(&env(&add_env()), CONF.as_bytes()).unwrap();
        assert_eq!(r.command, Command::Add);
        assert_eq!(r.ifname.as_deref(), Some("eth0"));
        let c = r.conf.unwrap();
        assert_eq!(
            (c.bridge.as_str(), c.hairpin_mode, c.is_default_gateway),
            ("cni0", true, true)
        );
        assert_eq!(c.subnet_file, PathBuf::from(DEFAULT_SUBNET_FILE));
    }

    #[test]
    fn version_needs_nothing_else() {
        let r = Request::parse(&env(&[("CNI_COMMAND", "VERSION")]), b"").unwrap();
        assert_eq!(r.command, Command::Version);
    }

    #[test]
    fn del_without_netns_is_fine() {
        let r = Request::parse(
            &env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "eth0"),
            ]),
            CONF.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.netns, None);
    }

    #[test]
    fn malformed_inputs_get_the_right_codes() {
        let big = format!(
            r#"{{"cniVersion":"1.1.0","name":"weft","type":"weft","pad":"{}"}}"#,
            "x".repeat(MAX_STDIN)
        );
        let with = |k: &'static str, v: &'static str| {
            let mut e = add_env();
            e.retain(|(n, _)| *n != k);
            if !v.is_empty() {
                e.push((k, v));
            }
            e
        };
        type Case = (Vec<(&'static str, &'static str)>, String, u32);
        let cases: Vec<Case> = vec![
            (vec![], CONF.into(), code::INVALID_ENV),
            (with("CNI_COMMAND", "FROB"), CONF.into(), code::INVALID_ENV),
            (with("CNI_CONTAINERID", ""), CONF.into(), code::INVALID_ENV),
            (
                with("CNI_CONTAINERID", "../../etc"),
                CONF.into(),
                code::INVALID_ENV,
            ),
            (
                with("CNI_CONTAINERID", "a/b"),
                CONF.into(),
                code::INVALID_ENV,
            ),
            (
                with("CNI_CONTAINERID", ".hidden"),
                CONF.into(),
                code::INVALID_ENV,
            ),
            (with("CNI_IFNAME", ""), CONF.into(), code::INVALID_ENV),
            (
                with("CNI_IFNAME", "averyveryverylongname"),
                CONF.into(),
                code::INVALID_ENV,
            ),
            (with("CNI_IFNAME", "eth/0"), CONF.into(), code::INVALID_ENV),
            (with("CNI_IFNAME", ".."), CONF.into(), code::INVALID_ENV),
            (with("CNI_IFNAME", "eth 0"), CONF.into(), code::INVALID_ENV),
            (with("CNI_NETNS", ""), CONF.into(), code::INVALID_ENV),
            (
                with("CNI_NETNS", "relative/ns"),
                CONF.into(),
                code::INVALID_ENV,
            ),
            (with("CNI_ARGS", "novalue"), CONF.into(), code::INVALID_ENV),
            (add_env(), "not json".into(), code::DECODE),
            (add_env(), "".into(), code::DECODE),
            (add_env(), big, code::DECODE),
            (
                add_env(),
                r#"{"name":"weft","type":"weft"}"#.into(),
                code::INVALID_CONFIG,
            ),
            (
                add_env(),
                r#"{"cniVersion":"9.9.9","name":"weft","type":"weft"}"#.into(),
                code::INCOMPATIBLE_VERSION,
            ),
            (
                add_env(),
                r#"{"cniVersion":"1.1.0","type":"weft"}"#.into(),
                code::INVALID_CONFIG,
            ),
            (
                add_env(),
                r#"{"cniVersion":"1.1.0","name":"../x","type":"weft"}"#.into(),
                code::INVALID_CONFIG,
            ),
            (
                add_env(),
                r#"{"cniVersion":"1.1.0","name":"weft"}"#.into(),
                code::INVALID_CONFIG,
            ),
            (
                add_env(),
                r#"{"cniVersion":"1.1.0","name":"weft","type":"weft","bridge":"br/0"}"#.into(),
                code::INVALID_CONFIG,
            ),
            (
                add_env(),
                r#"{"cniVersion":"1.1.0","name":"weft","type":"weft","mtu":10}"#.into(),
                code::INVALID_CONFIG,
            ),
            (
                add_env(),
                r#"{"cniVersion":"1.1.0","name":"weft","type":"weft","dataDir":"rel"}"#.into(),
                code::INVALID_CONFIG,
            ),
            (
                add_env(),
                r#"{"cniVersion":"1.1.0","name":"weft","type":"weft","hairpinMode":"yes"}"#.into(),
                code::DECODE,
            ),
            (
                vec![
                    ("CNI_COMMAND", "CHECK"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_NETNS", "/n"),
                    ("CNI_IFNAME", "eth0"),
                ],
                r#"{"cniVersion":"0.3.1","name":"weft","type":"weft"}"#.into(),
                code::INCOMPATIBLE_VERSION,
            ),
            (
                vec![("CNI_COMMAND", "GC")],
                r#"{"cniVersion":"1.0.0","name":"weft","type":"weft"}"#.into(),
                code::INCOMPATIBLE_VERSION,
            ),
        ];
        for (e, stdin, want) in cases {
            let err = Request::parse(&env(&e), stdin.as_bytes())
                .expect_err(&format!("{e:?} {stdin:.60}"));
            assert_eq!(err.code, want, "{e:?} {stdin:.60}: {err}");
            assert!(!err.msg.is_empty() && !err.details.is_empty());
        }
    }

    #[test]
    fn gc_reads_valid_attachments() {
        let conf = r#"{"cniVersion":"1.1.0","name":"weft","type":"weft","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#;
        let r = Request::parse(&env(&[("CNI_COMMAND", "GC")]), conf.as_bytes()).unwrap();
        assert_eq!(
            r.conf.unwrap().valid_attachments.unwrap(),
            vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        );
    }
}
