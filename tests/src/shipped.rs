//! The CNI plugin as it ships: built statically by `cni-plugin/build-static.sh` (the one place
//! that says how), and what its ELF headers say about how it is linked.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::procs::run_input;
use crate::repo_root;

/// Which cargo profile to build the plugin with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Quick to build; what the tests use.
    Debug,
    /// What is shipped and benchmarked.
    Release,
}

/// The build script.
pub fn build_script() -> PathBuf {
    repo_root().join("cni-plugin/build-static.sh")
}

/// Build the static plugin for this machine's architecture through the build script (cargo
/// does nothing when it is up to date) and return its path.
pub fn static_plugin(profile: Profile) -> PathBuf {
    let mut cmd = Command::new("bash");
    cmd.arg(build_script());
    if profile == Profile::Debug {
        cmd.arg("--debug");
    }
    // The first build compiles the plugin's dependencies for the explicit target: minutes on
    // a busy 2-core machine, well under this bound.
    let (code, out, err) = run_input(&mut cmd, None, Duration::from_secs(1800));
    assert_eq!(
        code, 0,
        "cni-plugin/build-static.sh failed ({code}):\n{err}"
    );
    let path = PathBuf::from(out.trim());
    assert!(
        path.is_file(),
        "build-static.sh printed {out:?}, not a file"
    );
    path
}

pub use weft_agent::host::linkage::{Linkage, EM_AARCH64, EM_X86_64};

/// This machine's `e_machine`.
pub fn this_machine() -> u16 {
    match std::env::consts::ARCH {
        "x86_64" => EM_X86_64,
        "aarch64" => EM_AARCH64,
        other => panic!("weft builds for x86_64 and aarch64, not {other}"),
    }
}

/// The linkage of the executable at `path` (its ELF headers, not `ldd`, which runs the
/// loader).
pub fn linkage(path: &Path) -> Result<Linkage, String> {
    Linkage::of_file(path).map_err(|e| format!("{}: {e}", path.display()))
}
