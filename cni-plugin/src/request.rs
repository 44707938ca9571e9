//! One plugin invocation, parsed and validated before anything is touched: the `CNI_*`
//! environment, and the network config on stdin (read by [`crate::conf`]).

use std::fmt;
use std::path::{Path, PathBuf};

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

/// The attachment a call is about: `CNI_CONTAINERID` and `CNI_IFNAME`, validated (a safe
/// name, a Linux interface name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub container_id: String,
    pub ifname: String,
}

/// What one verb needs, parsed and validated once: each verb's variant holds exactly the
/// inputs the spec requires of it, so the verbs never look for a missing one.
#[derive(Clone, Debug, PartialEq)]
pub enum Verb {
    /// `ADD`: the attachment, the pod's network namespace (an absolute path) and the config.
    Add {
        target: Target,
        netns: PathBuf,
        conf: NetConf,
    },
    /// `DEL`: the attachment and the config; the namespace may already be gone.
    Del {
        target: Target,
        netns: Option<PathBuf>,
        conf: NetConf,
    },
    /// `CHECK` (cniVersion 0.4.0 or later): as `ADD`.
    Check {
        target: Target,
        netns: PathBuf,
        conf: NetConf,
    },
    /// `STATUS` (cniVersion 1.1.0): the config only.
    Status { conf: NetConf },
    /// `GC` (cniVersion 1.1.0): the config, with the attachments to keep.
    Gc { conf: NetConf },
    /// `VERSION`: nothing.
    Version,
}

/// A validated invocation: the verb with its inputs, and `CNI_ARGS`.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub verb: Verb,
    pub args: Vec<(String, String)>,
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
    /// The verb's `CNI_COMMAND`.
    pub fn command(&self) -> Command {
        match self.verb {
            Verb::Add { .. } => Command::Add,
            Verb::Del { .. } => Command::Del,
            Verb::Check { .. } => Command::Check,
            Verb::Status { .. } => Command::Status,
            Verb::Gc { .. } => Command::Gc,
            Verb::Version => Command::Version,
        }
    }

    /// The network config (every verb but `VERSION` has one).
    pub fn conf(&self) -> Option<&NetConf> {
        match &self.verb {
            Verb::Add { conf, .. }
            | Verb::Del { conf, .. }
            | Verb::Check { conf, .. }
            | Verb::Status { conf }
            | Verb::Gc { conf } => Some(conf),
            Verb::Version => None,
        }
    }

    /// The attachment (`ADD`, `DEL`, `CHECK`).
    pub fn target(&self) -> Option<&Target> {
        match &self.verb {
            Verb::Add { target, .. } | Verb::Del { target, .. } | Verb::Check { target, .. } => {
                Some(target)
            }
            _ => None,
        }
    }

    /// `CNI_CONTAINERID` of the attachment.
    pub fn container_id(&self) -> Option<&str> {
        self.target().map(|t| t.container_id.as_str())
    }

    /// `CNI_IFNAME` of the attachment.
    pub fn ifname(&self) -> Option<&str> {
        self.target().map(|t| t.ifname.as_str())
    }

    /// `CNI_NETNS`: always for `ADD` and `CHECK`, when given for `DEL`.
    pub fn netns(&self) -> Option<&Path> {
        match &self.verb {
            Verb::Add { netns, .. } | Verb::Check { netns, .. } => Some(netns),
            Verb::Del { netns, .. } => netns.as_deref(),
            _ => None,
        }
    }

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
                verb: Verb::Version,
                args: Vec::new(),
            });
        }
        let conf = crate::conf::parse(stdin)?;
        let require = |var: &str| {
            env(var)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| invalid_env(var, format!("{var} is required for this command")))
        };
        let target = || -> Result<Target, CniError> {
            let container_id = require("CNI_CONTAINERID")?;
            if !is_safe_name(&container_id, 256) {
                return Err(invalid_env("CNI_CONTAINERID", format!("{:?} must be letters, digits, '_', '.', '-' starting with a letter or digit", container_id.chars().take(64).collect::<String>())));
            }
            let ifname = require("CNI_IFNAME")?;
            if !is_valid_ifname(&ifname) {
                return Err(invalid_env(
                    "CNI_IFNAME",
                    format!(
                        "{:?} is not a valid interface name (1-15 bytes, no '/', ':' or spaces)",
                        ifname.chars().take(32).collect::<String>()
                    ),
                ));
            }
            Ok(Target {
                container_id,
                ifname,
            })
        };
        let netns = || -> Result<PathBuf, CniError> {
            let p = PathBuf::from(require("CNI_NETNS")?);
            if !p.is_absolute() {
                return Err(invalid_env(
                    "CNI_NETNS",
                    format!("{} must be an absolute path", p.display()),
                ));
            }
            Ok(p)
        };
        let verb = match command {
            Command::Add => Verb::Add {
                target: target()?,
                netns: netns()?,
                conf,
            },
            Command::Check => Verb::Check {
                target: target()?,
                netns: netns()?,
                conf,
            },
            Command::Del => Verb::Del {
                target: target()?,
                netns: env("CNI_NETNS")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from),
                conf,
            },
            Command::Status => Verb::Status { conf },
            Command::Gc => Verb::Gc { conf },
            // Answered above, before any config is read.
            Command::Version => Verb::Version,
        };
        let args = parse_args(&env("CNI_ARGS").unwrap_or_default())?;
        let request = Request { verb, args };
        let cni_version = request.conf().map_or("", |c| c.cni_version.as_str());
        if matches!(command, Command::Gc | Command::Status)
            && !version::has_gc_and_status(cni_version)
        {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                format!("{command:?} needs cniVersion 1.1.0, the config says {cni_version}"),
            ));
        }
        if command == Command::Check && !version::has_check(cni_version) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                format!("CHECK needs cniVersion 0.4.0 or later, the config says {cni_version}"),
            ));
        }
        Ok(request)
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
    fn each_verb_holds_exactly_its_inputs() {
        let target = Target {
            container_id: "abc123".into(),
            ifname: "eth0".into(),
        };
        let r = Request::parse(&env(&add_env()), CONF.as_bytes()).unwrap();
        let Verb::Add {
            target: t, netns, ..
        } = &r.verb
        else {
            panic!("ADD parsed as {:?}", r.command());
        };
        assert_eq!((t, netns.as_path()), (&target, Path::new("/run/netns/x")));

        let mut del = add_env();
        del[0] = ("CNI_COMMAND", "DEL");
        del.retain(|(k, _)| *k != "CNI_NETNS");
        let r = Request::parse(&env(&del), CONF.as_bytes()).unwrap();
        assert!(
            matches!(&r.verb, Verb::Del { target: t, netns: None, .. } if *t == target),
            "{r:?}"
        );

        let mut check = add_env();
        check[0] = ("CNI_COMMAND", "CHECK");
        let r = Request::parse(&env(&check), CONF.as_bytes()).unwrap();
        assert!(matches!(&r.verb, Verb::Check { .. }), "{r:?}");
        assert_eq!(r.netns(), Some(Path::new("/run/netns/x")));

        for (command, want) in [("STATUS", Command::Status), ("GC", Command::Gc)] {
            let r = Request::parse(&env(&[("CNI_COMMAND", command)]), CONF.as_bytes()).unwrap();
            assert_eq!(r.command(), want);
            assert!(r.target().is_none() && r.netns().is_none() && r.conf().is_some());
        }
        let r = Request::parse(&env(&[("CNI_COMMAND", "VERSION")]), b"").unwrap();
        assert_eq!((r.verb, r.args), (Verb::Version, Vec::new()));
    }

    #[test]
    fn add_parses_with_defaults() {
        let r = Request::parse(&env(&add_env()), CONF.as_bytes()).unwrap();
        assert_eq!(r.command(), Command::Add);
        assert_eq!(r.ifname(), Some("eth0"));
        let c = r.conf().unwrap();
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
        assert_eq!(r.command(), Command::Version);
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
        assert_eq!(r.netns(), None);
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
            r.conf().unwrap().valid_attachments.clone().unwrap(),
            vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        );
    }
}
