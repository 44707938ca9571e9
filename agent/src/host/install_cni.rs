//! Installing the CNI plugin on the node: the `weft` binary into the CNI bin directory and
//! the network list into the CNI config directory, both atomically.
//!
//! kubelet (through the runtime) reads every `*.conf`, `*.conflist` and `*.json` in the config
//! directory, at any moment, and execs whatever is in the bin directory. So each file is
//! written under a hidden temporary name in the same directory (never matching those
//! patterns), flushed, given its mode, and renamed over the target: a reader sees the old file
//! or the new one, never half of one. A file that already has the right content is left
//! alone, so running the installer again (every weftd start) changes nothing.
//!
//! containerd and CRI-O use the first of those files by name (byte order; CRI-O unless
//! `cni_default_network` names another network), so a foreign config that sorts before
//! weft's wins and pods never get weft networking. [`runtime_choice`] decides, from a
//! directory listing, which file a runtime would use; the installer warns about a shadowed
//! conflist and `netctl check` reports it.

use std::path::{Path, PathBuf};

/// The conflist weft installs when no other is given (the same as deploy/base/10-weft.conflist).
pub const DEFAULT_CONFLIST: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "weft",
  "plugins": [
    {
      "type": "weft",
      "subnetFile": "/run/weft/subnet.env",
      "dataDir": "/var/lib/cni/weft",
      "bridge": "cni0",
      "hairpinMode": true,
      "isDefaultGateway": true
    },
    {
      "type": "portmap",
      "capabilities": { "portMappings": true }
    }
  ]
}
"#;

/// The conflist's file name; the `10-` prefix puts it before most others.
pub const CONFLIST_NAME: &str = "10-weft.conflist";
/// The plugin's file name in the CNI bin directory (its `type`).
pub const PLUGIN_NAME: &str = "weft";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CNI config {path} is not usable: {problem}")]
    BadConflist { path: String, problem: String },
    #[error("no weft plugin binary found (looked at {looked}); pass --cni-plugin-source")]
    NoPlugin { looked: String },
}

impl InstallError {
    /// Errors in what the operator gave (a source that cannot be read or used, no plugin
    /// binary to install): exit status 2. Failing to write into the target directories is the
    /// host's problem, not the input's.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            InstallError::Read { .. }
                | InstallError::BadConflist { .. }
                | InstallError::NoPlugin { .. }
        )
    }
}

/// Where to install from and to.
#[derive(Clone, Debug)]
pub struct InstallCni {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// The conflist text's file; `None` for [`DEFAULT_CONFLIST`].
    pub conf_source: Option<PathBuf>,
    /// The plugin binary to copy; `None` to look next to the running executable, then at
    /// `/opt/weft/bin/weft` (the image's place for it).
    pub plugin_source: Option<PathBuf>,
}

/// What [`install`] did, for the log.
#[derive(Debug, PartialEq, Eq)]
pub struct Installed {
    pub plugin: PathBuf,
    pub plugin_written: bool,
    pub conflist: PathBuf,
    pub conflist_written: bool,
    /// Which file of the config directory a runtime would use after the install (`None`
    /// when the directory could not be listed; that is logged).
    pub choice: Option<RuntimeChoice>,
}

/// The extensions of the files libcni loads from a config directory (containerd and CRI-O
/// ask for all three).
pub const CONF_EXTENSIONS: [&str; 3] = [".conf", ".conflist", ".json"];

/// Which file of a CNI config directory a container runtime would use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeChoice {
    /// weft's conflist is the first config: pods get weft networking.
    Weft,
    /// These configs sort before weft's, in the order a runtime tries them; the first wins
    /// (or, when it is broken, the runtime fails or skips to the next one).
    ShadowedBy(Vec<String>),
    /// weft's conflist is not in the directory; a runtime would use `first`, if any.
    NoWeft { first: Option<String> },
}

/// Whether a file of this name is a CNI config to libcni: its extension (the text from the
/// last dot on, as Go's `filepath.Ext` takes it, so `.conflist` alone counts) is one of
/// [`CONF_EXTENSIONS`].
pub fn is_cni_config_name(name: &str) -> bool {
    name.rfind('.')
        .is_some_and(|i| CONF_EXTENSIONS.contains(&&name[i..]))
}

/// Which file a runtime would use, given `names`: the names of the directory's entries that
/// are not directories (as libcni lists them; symlinks count), and `weft`, the name of weft's
/// conflist. Runtimes sort the configs by name, byte by byte, and use the first. Pure.
pub fn runtime_choice<S: AsRef<str>>(names: &[S], weft: &str) -> RuntimeChoice {
    let mut configs: Vec<&str> = names
        .iter()
        .map(AsRef::as_ref)
        .filter(|n| is_cni_config_name(n))
        .collect();
    configs.sort_unstable();
    configs.dedup();
    match configs.iter().position(|n| *n == weft) {
        Some(0) => RuntimeChoice::Weft,
        Some(i) => RuntimeChoice::ShadowedBy(configs[..i].iter().map(|n| n.to_string()).collect()),
        None => RuntimeChoice::NoWeft {
            first: configs.first().map(|n| n.to_string()),
        },
    }
}

/// The names of the entries of `dir` that are not directories (an absent directory has
/// none).
pub fn conf_dir_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

/// The operator's message for configs in `dir` that sort before weft's conflist: what wins,
/// why, and the fix.
pub fn shadowed_message(dir: &Path, before: &[String]) -> String {
    let paths: Vec<String> = before
        .iter()
        .map(|n| dir.join(n).display().to_string())
        .collect();
    let (them, sort) = if before.len() == 1 {
        ("it", "sorts")
    } else {
        ("them", "sort")
    };
    format!(
        "{} {sort} before {CONFLIST_NAME}, and container runtimes use the first CNI config by \
         name, so pods get the network of {} instead of weft's; remove {them}, or rename {them} \
         to sort after {CONFLIST_NAME} or to end in none of {}",
        paths.join(", "),
        before.first().map(String::as_str).unwrap_or_default(),
        CONF_EXTENSIONS.join(" "),
    )
}

/// Check that `text` is a network list whose plugins include `weft` (pure).
pub fn validate_conflist(text: &str, source: &str) -> Result<(), InstallError> {
    let bad = |problem: String| InstallError::BadConflist {
        path: source.to_string(),
        problem,
    };
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    if !v.get("name").is_some_and(|n| n.is_string()) {
        return Err(bad("no \"name\"".into()));
    }
    if !v.get("cniVersion").is_some_and(|n| n.is_string()) {
        return Err(bad("no \"cniVersion\"".into()));
    }
    let plugins = v
        .get("plugins")
        .and_then(|p| p.as_array())
        .ok_or_else(|| bad("no \"plugins\" list (a .conflist is needed)".into()))?;
    if !plugins
        .iter()
        .any(|p| p.get("type").and_then(|t| t.as_str()) == Some(PLUGIN_NAME))
    {
        return Err(bad(format!("no plugin of type \"{PLUGIN_NAME}\"")));
    }
    Ok(())
}

fn plugin_source(explicit: Option<&Path>) -> Result<PathBuf, InstallError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let mut looked = Vec::new();
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(PLUGIN_NAME)));
    for candidate in beside
        .into_iter()
        .chain([PathBuf::from("/opt/weft/bin").join(PLUGIN_NAME)])
    {
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked.push(candidate.display().to_string());
    }
    Err(InstallError::NoPlugin {
        looked: looked.join(", "),
    })
}

fn write_atomically(target: &Path, content: &[u8], mode: u32) -> Result<bool, InstallError> {
    weft_backends::files::write_atomically(target, content, mode).map_err(|source| {
        InstallError::Write {
            path: target.to_path_buf(),
            source,
        }
    })
}

/// The plugin runs on the node's own C library, so the one to ship is static; a dynamically
/// linked build (a plain `cargo build`) is installed, but with a loud warning saying why it
/// may not start and how to build the right one.
fn warn_unless_static(source: &Path, bytes: &[u8]) {
    match crate::host::linkage::Linkage::of_bytes(bytes) {
        Ok(l) if l.is_static() => {}
        Ok(l) => tracing::warn!(
            plugin = %source.display(),
            loader = %l.interpreter.as_deref().unwrap_or("-"),
            libraries = %l.needed.join(","),
            "the CNI plugin being installed is dynamically linked: it starts only on nodes whose \
             C library is at least as new as the build machine's; install the static build \
             (cni-plugin/build-static.sh) instead"
        ),
        Err(e) => tracing::warn!(
            plugin = %source.display(),
            "the CNI plugin being installed may not run on this node: {e}"
        ),
    }
}

/// Install the plugin and the conflist. Everything is read and checked before anything is
/// written, so bad input changes nothing on the node.
pub fn install(opts: &InstallCni) -> Result<Installed, InstallError> {
    let (conflist_text, conf_source) = match &opts.conf_source {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|source| InstallError::Read {
                what: "the CNI config",
                path: p.clone(),
                source,
            })?,
            p.display().to_string(),
        ),
        None => (DEFAULT_CONFLIST.to_string(), "(built-in)".to_string()),
    };
    validate_conflist(&conflist_text, &conf_source)?;
    let source = plugin_source(opts.plugin_source.as_deref())?;
    let plugin_bytes = std::fs::read(&source).map_err(|source_err| InstallError::Read {
        what: "the plugin binary",
        path: source.clone(),
        source: source_err,
    })?;
    warn_unless_static(&source, &plugin_bytes);
    let plugin = opts.bin_dir.join(PLUGIN_NAME);
    let conflist = opts.conf_dir.join(CONFLIST_NAME);
    // The binary first: a conflist naming a plugin that is not there yet would fail pods.
    let plugin_written = write_atomically(&plugin, &plugin_bytes, 0o755)?;
    let conflist_written = write_atomically(&conflist, conflist_text.as_bytes(), 0o644)?;
    // Installing is done; a conflist that runtimes will not use is worth a loud warning, not
    // a failure (the operator may be moving a node over and remove the other file next).
    let choice = match conf_dir_names(&opts.conf_dir) {
        Ok(names) => Some(runtime_choice(&names, CONFLIST_NAME)),
        Err(e) => {
            tracing::warn!(
                conf_dir = %opts.conf_dir.display(),
                "cannot list the CNI config directory to see whether another config sorts \
                 before {CONFLIST_NAME}: {e}"
            );
            None
        }
    };
    if let Some(RuntimeChoice::ShadowedBy(before)) = &choice {
        tracing::warn!(
            conf_dir = %opts.conf_dir.display(),
            shadowed_by = %before.join(","),
            "{}",
            shadowed_message(&opts.conf_dir, before)
        );
    }
    Ok(Installed {
        plugin,
        plugin_written,
        conflist,
        conflist_written,
        choice,
    })
}

/// Remove the conflist weft installed (the plugin binary stays: pods still being deleted may
/// need it). Returns whether there was one.
pub fn uninstall(conf_dir: &Path) -> Result<bool, InstallError> {
    let path = conf_dir.join(CONFLIST_NAME);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(InstallError::Write { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn setup() -> (tempfile::TempDir, InstallCni) {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("src-weft");
        std::fs::write(&plugin, b"\x7fELF fake plugin").unwrap();
        let opts = InstallCni {
            bin_dir: dir.path().join("bin"),
            conf_dir: dir.path().join("net.d"),
            conf_source: None,
            plugin_source: Some(plugin),
        };
        (dir, opts)
    }

    #[test]
    fn installs_both_files_with_modes_and_is_idempotent() {
        let (_dir, opts) = setup();
        let first = install(&opts).unwrap();
        assert!(first.plugin_written && first.conflist_written);
        assert_eq!(
            std::fs::read(&first.plugin).unwrap(),
            b"\x7fELF fake plugin"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&first.plugin), 0o755);
        assert_eq!(mode(&first.conflist), 0o644);
        assert_eq!(
            std::fs::read_to_string(&first.conflist).unwrap(),
            DEFAULT_CONFLIST
        );
        let again = install(&opts).unwrap();
        assert!(!again.plugin_written && !again.conflist_written);
        // Nothing but the two files is left in the directories.
        for d in [&opts.bin_dir, &opts.conf_dir] {
            assert_eq!(std::fs::read_dir(d).unwrap().count(), 1);
        }
        assert!(uninstall(&opts.conf_dir).unwrap());
        assert!(!uninstall(&opts.conf_dir).unwrap());
        assert!(opts.bin_dir.join(PLUGIN_NAME).exists(), "the plugin stays");
    }

    #[test]
    fn a_changed_source_replaces_the_installed_file() {
        let (dir, mut opts) = setup();
        install(&opts).unwrap();
        let custom = dir.path().join("custom.conflist");
        let text = DEFAULT_CONFLIST.replace("cni0", "weft0");
        std::fs::write(&custom, &text).unwrap();
        opts.conf_source = Some(custom);
        let r = install(&opts).unwrap();
        assert!(r.conflist_written && !r.plugin_written);
        assert_eq!(std::fs::read_to_string(r.conflist).unwrap(), text);
    }

    #[test]
    fn bad_input_is_refused_before_anything_is_written() {
        let (dir, mut opts) = setup();
        for (text, want) in [
            ("not json", "not JSON"),
            (
                r#"{"cniVersion":"1.0.0","name":"x","type":"weft"}"#,
                "plugins",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}"#,
                "no plugin of type \"weft\"",
            ),
        ] {
            let f = dir.path().join("bad.conflist");
            std::fs::write(&f, text).unwrap();
            opts.conf_source = Some(f);
            let e = install(&opts).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            assert!(e.contains("bad.conflist"), "{e}");
            assert!(!opts.bin_dir.exists() && !opts.conf_dir.exists());
        }
        opts.conf_source = None;
        opts.plugin_source = Some(dir.path().join("missing"));
        let e = install(&opts).unwrap_err().to_string();
        assert!(e.contains("plugin binary") && e.contains("missing"), "{e}");
        assert!(!opts.conf_dir.exists());
    }

    #[test]
    fn the_runtime_uses_the_first_config_by_name() {
        use RuntimeChoice::*;
        let shadowed = |v: &[&str]| ShadowedBy(v.iter().map(|s| s.to_string()).collect());
        let none = |f: Option<&str>| NoWeft {
            first: f.map(String::from),
        };
        let cases: Vec<(&[&str], RuntimeChoice)> = vec![
            (&[], none(None)),
            (&["10-weft.conflist"], Weft),
            (&["99-loopback.conf", "10-weft.conflist"], Weft),
            // 'c' < 'w': the names operators meet most often.
            (
                &["10-weft.conflist", "10-containerd-net.conflist"],
                shadowed(&["10-containerd-net.conflist"]),
            ),
            (
                &[
                    "10-flannel.conflist",
                    "10-calico.conflist",
                    "10-weft.conflist",
                ],
                shadowed(&["10-calico.conflist", "10-flannel.conflist"]),
            ),
            // .conf and .json count as much as .conflist.
            (
                &["05-bridge.conf", "10-weft.conflist"],
                shadowed(&["05-bridge.conf"]),
            ),
            (&["00-x.json", "10-weft.conflist"], shadowed(&["00-x.json"])),
            // Other extensions, weft's own temporary files and near misses do not.
            (
                &[
                    "00-old.conflist.bak",
                    ".10-weft.conflist.42.tmp",
                    "00-notes.txt",
                    "00-conflist",
                    "10-weft.conflist",
                ],
                Weft,
            ),
            // A hidden file with a config extension is read (Go's Ext of ".conflist").
            (&[".conflist", "10-weft.conflist"], shadowed(&[".conflist"])),
            // Byte order: upper case and digits before lower case.
            (
                &["10-Weft.conflist", "10-weft.conflist"],
                shadowed(&["10-Weft.conflist"]),
            ),
            (
                &["87-podman-bridge.conflist", "99-loopback.conf"],
                none(Some("87-podman-bridge.conflist")),
            ),
        ];
        for (names, want) in cases {
            assert_eq!(runtime_choice(names, CONFLIST_NAME), want, "{names:?}");
        }
    }

    #[test]
    fn install_reports_a_config_that_sorts_first_and_writes_anyway() {
        let (_dir, opts) = setup();
        std::fs::create_dir_all(&opts.conf_dir).unwrap();
        std::fs::write(opts.conf_dir.join("10-calico.conflist"), "{}").unwrap();
        std::fs::create_dir(opts.conf_dir.join("00-a-directory.conf")).unwrap();
        let done = install(&opts).unwrap();
        assert!(done.conflist_written);
        assert_eq!(
            done.choice,
            Some(RuntimeChoice::ShadowedBy(vec!["10-calico.conflist".into()]))
        );
        let msg = shadowed_message(&opts.conf_dir, &["10-calico.conflist".to_string()]);
        assert!(
            msg.starts_with(&format!(
                "{}/10-calico.conflist sorts before 10-weft.conflist",
                opts.conf_dir.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("remove it, or rename it"), "{msg}");
        std::fs::remove_file(opts.conf_dir.join("10-calico.conflist")).unwrap();
        assert_eq!(install(&opts).unwrap().choice, Some(RuntimeChoice::Weft));
    }

    #[test]
    fn the_built_in_conflist_matches_the_shipped_example() {
        let shipped = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/base/10-weft.conflist"
        ))
        .unwrap();
        let a: serde_json::Value = serde_json::from_str(&shipped).unwrap();
        let b: serde_json::Value = serde_json::from_str(DEFAULT_CONFLIST).unwrap();
        assert_eq!(a, b);
    }
}
