//! The wireguard backend's node side: the private key (from its file, made once) and the
//! choice of WireGuard implementation, both settled at start, before any data plane opens.

use std::path::PathBuf;

use tracing::info;
use weft_backends::backend::wireguard::kernel::Implementation;
use weft_backends::backend::wireguard::key::{load_or_create, KeyFileError};
use weft_backends::backend::wireguard::{Key, PrivateKey};

use crate::cli::WireguardChoice;
use crate::settings::WireguardOptions;

/// This node's WireGuard identity and implementation.
#[derive(Clone, Debug)]
pub struct WireguardNode {
    pub private_key: PrivateKey,
    pub public_key: Key,
    pub implementation: Implementation,
}

/// Why the wireguard backend cannot start on this node. Each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum WireguardError {
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error("the wireguard backend needs WireGuard, and the kernel has none (module wireguard not loaded) and no --wireguard-userspace program was given: load the module (modprobe wireguard), or install a userspace WireGuard (Debian: apt-get install wireguard-go) and pass --wireguard-userspace /usr/bin/wireguard-go")]
    NoImplementation,
    #[error("--wireguard-implementation kernel: the kernel has no WireGuard (module wireguard not loaded): load it (modprobe wireguard), or use --wireguard-implementation auto with --wireguard-userspace PATH")]
    NoKernel,
    #[error("--wireguard-implementation userspace needs --wireguard-userspace PATH (such as /usr/bin/wireguard-go)")]
    NoUserspace,
    #[error("--wireguard-userspace {}: not an executable file; install it (Debian: apt-get install wireguard-go) or fix the path", .0.display())]
    NotExecutable(PathBuf),
}

pub use weft_backends::backend::wireguard::kernel::kernel_has_wireguard;

/// The implementation `opts` ask for, given whether the kernel has WireGuard.
pub fn choose(opts: &WireguardOptions, kernel: bool) -> Result<Implementation, WireguardError> {
    let userspace = || -> Result<Implementation, WireguardError> {
        let path = opts.userspace.clone().ok_or(WireguardError::NoUserspace)?;
        if !is_executable(&path) {
            return Err(WireguardError::NotExecutable(path));
        }
        Ok(Implementation::userspace(path))
    };
    match (opts.choice, kernel) {
        (WireguardChoice::Kernel, true) | (WireguardChoice::Auto, true) => {
            Ok(Implementation::Kernel)
        }
        (WireguardChoice::Kernel, false) => Err(WireguardError::NoKernel),
        (WireguardChoice::Userspace, _) => userspace(),
        (WireguardChoice::Auto, false) => match userspace() {
            Err(WireguardError::NoUserspace) => Err(WireguardError::NoImplementation),
            other => other,
        },
    }
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Load (or make) the key and choose the implementation, saying which in one log line.
pub fn prepare(opts: &WireguardOptions) -> Result<WireguardNode, WireguardError> {
    let implementation = choose(opts, kernel_has_wireguard())?;
    let (private_key, created) = load_or_create(&opts.key_file)?;
    let public_key = private_key.public_key();
    let (program, why) = match &implementation {
        Implementation::Kernel => (String::new(), "the kernel has WireGuard"),
        Implementation::Userspace { binary, .. } => (
            binary.display().to_string(),
            match opts.choice {
                WireguardChoice::Userspace => "--wireguard-implementation userspace",
                _ => "the kernel has no WireGuard",
            },
        ),
    };
    info!(
        implementation = implementation.label(),
        program = %program,
        public_key = %public_key,
        key_file = %opts.key_file.display(),
        new_key = created,
        "WireGuard: {} implementation ({why}); {} key",
        implementation.label(),
        if created { "made a new" } else { "reusing the" }
    );
    Ok(WireguardNode {
        private_key,
        public_key,
        implementation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(choice: WireguardChoice, userspace: Option<&str>) -> WireguardOptions {
        WireguardOptions {
            key_file: "/nonexistent/key".into(),
            userspace: userspace.map(PathBuf::from),
            choice,
        }
    }

    #[test]
    fn the_kernel_is_preferred_and_userspace_needs_a_program() {
        use WireguardChoice::*;
        let sh = Some("/bin/sh");
        assert_eq!(
            choose(&opts(Auto, sh), true).unwrap(),
            Implementation::Kernel
        );
        assert_eq!(
            choose(&opts(Auto, sh), false).unwrap(),
            Implementation::userspace("/bin/sh")
        );
        assert_eq!(
            choose(&opts(Userspace, sh), true).unwrap(),
            Implementation::userspace("/bin/sh")
        );
        let e = choose(&opts(Auto, None), false).unwrap_err();
        assert!(
            e.to_string()
                .contains("--wireguard-userspace /usr/bin/wireguard-go"),
            "{e}"
        );
        assert!(matches!(
            choose(&opts(Kernel, sh), false),
            Err(WireguardError::NoKernel)
        ));
        assert!(matches!(
            choose(&opts(Userspace, None), true),
            Err(WireguardError::NoUserspace)
        ));
        let e = choose(&opts(Auto, Some("/nonexistent/wireguard-go")), false).unwrap_err();
        assert!(e.to_string().contains("not an executable file"), "{e}");
    }
}
