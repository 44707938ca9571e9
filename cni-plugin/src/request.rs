//! One plugin invocation, parsed and validated before anything is touched: the `CNI_*`
//! environment, and the network config on stdin (read by [`crate::conf`]).

use std::fmt;
use std::path::PathBuf;

use crate::error::{code, CniError};
use crate::version;

pub use crate::conf::{Attachment, NetConf, MAX_STDIN};

/// Linux interface names are at most 15 bytes.
pub const MAX_IFNAME: usize = 15;

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
    /// The CNI_COMMAND word.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }

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

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

/// The Kubernetes pod a call is for, as the runtime names it in `CNI_ARGS` (`K8S_POD_NAME`,
/// `K8S_POD_NAMESPACE`). Shown as `namespace/name`, or the name alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodRef<'a> {
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

impl fmt::Display for PodRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The values come from the runtime's CNI_ARGS: escaped, so a log line stays one line.
        if let Some(ns) = self.namespace {
            write!(f, "{}/", ns.escape_debug())?;
        }
        write!(f, "{}", self.name.escape_debug())
    }
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

impl Request {
    /// The value of `key` in `CNI_ARGS`, if set and not empty.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The pod this call is for, when the runtime names it.
    pub fn pod(&self) -> Option<PodRef<'_>> {
        Some(PodRef {
            name: self.arg("K8S_POD_NAME")?,
            namespace: self.arg("K8S_POD_NAMESPACE"),
        })
    }

    /// Parse one invocation. `env` looks up an environment variable.
    pub fn parse(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Request, CniError> {
        let command = Command::parse(
            &env("CNI_COMMAND")
                .ok_or_else(|| invalid_env("CNI_COMMAND", "CNI_COMMAND is not set: a container runtime runs weft with it and the network config on stdin (weft --help says more)"))?,
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
        let conf = crate::conf::parse(stdin)?;
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
        assert_eq!(
            c.subnet_file,
            PathBuf::from(crate::conf::DEFAULT_SUBNET_FILE)
        );
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
                code::INVALID_CONFIG,
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
    fn the_pod_comes_from_cni_args() {
        let parse = |args: &str| {
            let mut e = add_env();
            e.push(("CNI_ARGS", args));
            Request::parse(&env(&e), CONF.as_bytes()).unwrap()
        };
        let r = parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-5d78c9869d-abcde;K8S_POD_INFRA_CONTAINER_ID=abc123");
        assert_eq!(
            r.pod().map(|p| p.to_string()).as_deref(),
            Some("kube-system/coredns-5d78c9869d-abcde")
        );
        // podman names the container only.
        let r = parse("IgnoreUnknown=1;K8S_POD_NAME=web");
        assert_eq!(r.pod().map(|p| p.to_string()).as_deref(), Some("web"));
        assert_eq!(parse("K8S_POD_NAMESPACE=default").pod(), None);
        assert_eq!(parse("K8S_POD_NAME=").pod(), None);
        assert_eq!(
            parse("K8S_POD_NAME=a\nb c")
                .pod()
                .map(|p| p.to_string())
                .as_deref(),
            Some("a\\nb c")
        );
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
