//! Least privilege: weftd keeps only the Linux capabilities its mode needs.
//!
//! Capabilities belong to threads, not to processes, and a new thread copies the sets of the
//! thread that starts it. So [`drop_privileges`] runs in the main thread before the tokio
//! runtime, or anything else, starts a thread, and refuses to run once a second thread exists.
//!
//! Two parts, as everywhere in weft: [`privileges_for`] decides from the mode and the settings
//! what to keep (pure, unit-tested), and [`drop_privileges`] changes the calling thread's sets
//! and reads them back.
//!
//! For uid 0 the sets end as: permitted = effective = bounding = the kept set; inheritable and
//! ambient empty; no_new_privs set. A program weftd starts (`nft`) is recomputed at exec: as uid
//! 0 it gets the bounding set, and no_new_privs caps that at weftd's permitted set, so it holds
//! the kept set and nothing more, even when the bounding set could not be narrowed (that takes
//! `CAP_SETPCAP`, which a container granted only `NET_ADMIN` does not have).

use caps::errors::CapsError;
use caps::{CapSet, CapsHashSet};

pub use caps::Capability;

use crate::settings::AgentSettings;

/// What a weftd process is about to do, as far as capabilities go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The agent: netlink and `nft` (kept on running), and the health server's port.
    Agent {
        /// `None` when the health server is off.
        healthz_port: Option<u16>,
    },
    /// `--cleanup`: netlink and `nft`, then exit.
    Cleanup,
    /// `weftd install-cni`: writes root-owned files into root-owned directories, which uid 0
    /// does as their owner, without any capability.
    InstallCni,
}

impl Mode {
    /// The agent's mode for these settings.
    pub fn agent(settings: &AgentSettings) -> Mode {
        Mode::Agent {
            healthz_port: settings.healthz.map(|a| a.port()),
        }
    }
}

/// The first port an unprivileged process may bind (the kernel's default
/// `net.ipv4.ip_unprivileged_port_start`); below it, binding takes `CAP_NET_BIND_SERVICE`.
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// The capabilities to end with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Privileges {
    /// Kept in the permitted, effective and bounding sets; in capability-number order.
    pub keep: Vec<Capability>,
    /// Keep them in the inheritable and ambient sets too. Only for a uid other than 0: such a
    /// process passes capabilities to the programs it runs (`nft`) only through the ambient
    /// set, whereas uid 0 passes them through the bounding set.
    pub ambient: bool,
}

/// What `mode` needs: `CAP_NET_ADMIN` for netlink (links, addresses, routes, neighbours, FDB,
/// the forced socket receive buffers) and for `nft`; `CAP_NET_BIND_SERVICE` only when the
/// health server listens on a port below 1024 (it binds after the drop); nothing for
/// installing the CNI files.
pub fn privileges_for(mode: Mode, euid_is_root: bool) -> Privileges {
    let mut keep = match mode {
        Mode::Agent { healthz_port } => {
            let mut keep = vec![Capability::CAP_NET_ADMIN];
            if healthz_port.is_some_and(|p| p < FIRST_UNPRIVILEGED_PORT) {
                keep.push(Capability::CAP_NET_BIND_SERVICE);
            }
            keep
        }
        Mode::Cleanup => vec![Capability::CAP_NET_ADMIN],
        Mode::InstallCni => Vec::new(),
    };
    keep.sort_by_key(|c| c.index());
    keep.dedup();
    Privileges {
        ambient: !euid_is_root && !keep.is_empty(),
        keep,
    }
}

/// Capability names for messages and logs: `CAP_NET_BIND_SERVICE, CAP_NET_ADMIN`, or `none`.
pub fn names(caps: &[Capability]) -> String {
    if caps.is_empty() {
        return "none".into();
    }
    caps.iter()
        .map(Capability::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The names Kubernetes uses in `securityContext.capabilities` (no `CAP_` prefix).
fn kubernetes_names(caps: &[Capability]) -> String {
    caps.iter()
        .map(|c| c.to_string().trim_start_matches("CAP_").to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "weftd needs {} and this process does not have it: run weftd as uid 0, or grant it \
         (in Kubernetes: securityContext.capabilities.add: [{}])",
        names(missing),
        kubernetes_names(missing)
    )]
    Missing { missing: Vec<Capability> },
    #[error(
        "capabilities belong to threads and must be dropped before a second thread starts, \
         but this process already has {0} threads"
    )]
    Threads(usize),
    #[error("cannot {action}: {source}")]
    Caps {
        action: &'static str,
        #[source]
        source: CapsError,
    },
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(#[source] nix::Error),
    #[error("after dropping capabilities the {set} set holds {actual}, not {expected}")]
    Unexpected {
        set: &'static str,
        actual: String,
        expected: String,
    },
}

impl PrivilegeError {
    /// The process lacks something it needs: the operator's to fix (weftd exits 2).
    pub fn is_missing(&self) -> bool {
        matches!(self, PrivilegeError::Missing { .. })
    }
}

/// What [`drop_privileges`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// Permitted and effective now hold exactly these.
    pub kept: Vec<Capability>,
    /// Left in the bounding set because this process lacked `CAP_SETPCAP` to remove them.
    /// no_new_privs keeps every program weftd runs from gaining them.
    pub bounding_left: Vec<Capability>,
}

fn sorted<'a>(caps: impl Iterator<Item = &'a Capability>) -> Vec<Capability> {
    let mut v: Vec<Capability> = caps.copied().collect();
    v.sort_by_key(|c| c.index());
    v
}

fn read(set: CapSet, action: &'static str) -> Result<CapsHashSet, PrivilegeError> {
    caps::read(None, set).map_err(|source| PrivilegeError::Caps { action, source })
}

fn caps_call(action: &'static str, r: Result<(), CapsError>) -> Result<(), PrivilegeError> {
    r.map_err(|source| PrivilegeError::Caps { action, source })
}

/// Threads of this process, when /proc tells.
fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(|d| d.filter(Result::is_ok).count())
}

/// Keep exactly `p` in the calling thread, which must be the process's only thread: check that
/// everything to keep is permitted (else [`PrivilegeError::Missing`], before anything changes),
/// narrow the bounding set (with `CAP_SETPCAP`, when the process has it), set no_new_privs,
/// set the permitted, effective, inheritable and ambient sets, and read all five back.
pub fn drop_privileges(p: &Privileges) -> Result<Dropped, PrivilegeError> {
    if let Some(n) = thread_count().filter(|n| *n > 1) {
        return Err(PrivilegeError::Threads(n));
    }
    let keep: CapsHashSet = p.keep.iter().copied().collect();
    let permitted = read(CapSet::Permitted, "read the permitted capabilities")?;
    let missing = sorted(keep.difference(&permitted));
    if !missing.is_empty() {
        return Err(PrivilegeError::Missing { missing });
    }

    let bounding = read(CapSet::Bounding, "read the bounding set")?;
    let surplus = sorted(bounding.difference(&keep));
    let mut bounding_left = Vec::new();
    if !surplus.is_empty() {
        if permitted.contains(&Capability::CAP_SETPCAP) {
            caps_call(
                "raise CAP_SETPCAP to narrow the bounding set",
                caps::raise(None, CapSet::Effective, Capability::CAP_SETPCAP),
            )?;
            for c in &surplus {
                caps_call(
                    "drop a capability from the bounding set",
                    caps::drop(None, CapSet::Bounding, *c),
                )?;
            }
        } else {
            bounding_left = surplus;
        }
    }

    nix::sys::prctl::set_no_new_privs().map_err(PrivilegeError::NoNewPrivs)?;
    caps_call("clear the ambient set", caps::clear(None, CapSet::Ambient))?;
    let inherited = if p.ambient {
        keep.clone()
    } else {
        CapsHashSet::new()
    };
    // Effective first: it must stay within permitted at every step.
    caps_call(
        "set the effective capabilities",
        caps::set(None, CapSet::Effective, &keep),
    )?;
    caps_call(
        "set the permitted capabilities",
        caps::set(None, CapSet::Permitted, &keep),
    )?;
    caps_call(
        "set the inheritable capabilities",
        caps::set(None, CapSet::Inheritable, &inherited),
    )?;
    if p.ambient {
        for c in &p.keep {
            caps_call(
                "raise an ambient capability",
                caps::raise(None, CapSet::Ambient, *c),
            )?;
        }
    }

    let mut bounding_expected = keep.clone();
    bounding_expected.extend(bounding_left.iter().copied());
    for (set, name, expected) in [
        (CapSet::Effective, "effective", &keep),
        (CapSet::Permitted, "permitted", &keep),
        (CapSet::Inheritable, "inheritable", &inherited),
        (CapSet::Ambient, "ambient", &inherited),
        (CapSet::Bounding, "bounding", &bounding_expected),
    ] {
        let actual = read(set, "read the capabilities back")?;
        if actual != *expected {
            return Err(PrivilegeError::Unexpected {
                set: name,
                actual: names(&sorted(actual.iter())),
                expected: names(&sorted(expected.iter())),
            });
        }
    }
    Ok(Dropped {
        kept: p.keep.clone(),
        bounding_left,
    })
}

/// For weftd's init half (PID 1 of a container), which forwards signals and reaps children,
/// neither of which needs a capability: hold no effective capability. The permitted and
/// bounding sets stay, because the agent it starts gets its capabilities from them at exec
/// (under no_new_privs, at most the permitted set) and then narrows them itself.
pub fn clear_effective() -> Result<(), PrivilegeError> {
    caps_call(
        "clear the effective capabilities",
        caps::clear(None, CapSet::Effective),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use Capability::{CAP_NET_ADMIN, CAP_NET_BIND_SERVICE};

    #[test]
    fn each_mode_keeps_only_what_it_uses() {
        let cases = [
            (
                Mode::Agent {
                    healthz_port: Some(8471),
                },
                vec![CAP_NET_ADMIN],
            ),
            (Mode::Agent { healthz_port: None }, vec![CAP_NET_ADMIN]),
            (
                Mode::Agent {
                    healthz_port: Some(1024),
                },
                vec![CAP_NET_ADMIN],
            ),
            (
                Mode::Agent {
                    healthz_port: Some(1023),
                },
                vec![CAP_NET_BIND_SERVICE, CAP_NET_ADMIN],
            ),
            (
                Mode::Agent {
                    healthz_port: Some(80),
                },
                vec![CAP_NET_BIND_SERVICE, CAP_NET_ADMIN],
            ),
            (Mode::Cleanup, vec![CAP_NET_ADMIN]),
            (Mode::InstallCni, vec![]),
        ];
        for (mode, keep) in cases {
            assert_eq!(
                privileges_for(mode, true),
                Privileges {
                    keep,
                    ambient: false
                },
                "{mode:?}"
            );
        }
    }

    #[test]
    fn only_a_non_root_uid_passes_capabilities_on_through_the_ambient_set() {
        assert!(privileges_for(Mode::Cleanup, false).ambient);
        assert!(privileges_for(Mode::Agent { healthz_port: None }, false).ambient);
        assert!(!privileges_for(Mode::Cleanup, true).ambient);
        // Nothing kept, nothing to pass on.
        assert!(!privileges_for(Mode::InstallCni, false).ambient);
    }

    #[test]
    fn the_agent_mode_follows_the_health_server_settings() {
        use clap::Parser;
        let cli = |args: &[&str]| {
            crate::cli::WeftdCli::try_parse_from(
                std::iter::once("weftd").chain(args.iter().copied()),
            )
            .unwrap()
        };
        let mode = |args: &[&str]| {
            Mode::agent(&AgentSettings::from_cli(&cli(args), None, Some("h".into())).unwrap())
        };
        assert_eq!(
            mode(&[]),
            Mode::Agent {
                healthz_port: Some(8471)
            }
        );
        assert_eq!(
            mode(&["--healthz-port", "0"]),
            Mode::Agent { healthz_port: None }
        );
        assert_eq!(
            mode(&["--healthz-port", "443"]),
            Mode::Agent {
                healthz_port: Some(443)
            }
        );
    }

    #[test]
    fn refuses_to_drop_in_a_process_that_already_runs_threads() {
        // The test harness runs this test in a thread of its own, so there are at least two;
        // the check comes first, so this process's capabilities are left alone.
        let before = caps::read(None, CapSet::Effective).unwrap();
        let e = drop_privileges(&privileges_for(Mode::Cleanup, true)).unwrap_err();
        assert!(matches!(e, PrivilegeError::Threads(n) if n >= 2), "{e}");
        assert_eq!(caps::read(None, CapSet::Effective).unwrap(), before);
    }

    #[test]
    fn a_missing_capability_is_named_with_the_kubernetes_spelling() {
        let e = PrivilegeError::Missing {
            missing: vec![CAP_NET_ADMIN, CAP_NET_BIND_SERVICE],
        };
        let text = e.to_string();
        assert!(
            text.contains("CAP_NET_ADMIN, CAP_NET_BIND_SERVICE")
                && text.contains("add: [NET_ADMIN, NET_BIND_SERVICE]"),
            "{text}"
        );
        assert!(e.is_missing());
        assert_eq!(names(&[]), "none");
    }
}
