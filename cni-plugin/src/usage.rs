//! What `weft` answers when a person runs it. A container runtime always sets `CNI_COMMAND`
//! (the spec requires it, so a call without it is error 4); only without it are the command
//! line's `--version` and `--help` read.

use crate::conf::PLUGIN_KEYS;
use crate::version::SUPPORTED;

/// The plugin's own version (the workspace's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The text for `--version`/`-V` or `--help`/`-h` (the first of them given), or `None` when
/// the arguments ask for neither.
pub fn answer<S: AsRef<str>>(args: &[S]) -> Option<String> {
    args.iter().find_map(|a| match a.as_ref() {
        "--version" | "-V" => Some(version_text()),
        "--help" | "-h" => Some(help_text()),
        _ => None,
    })
}

fn version_text() -> String {
    format!(
        "weft {VERSION}\nCNI spec versions: {}",
        SUPPORTED.join(", ")
    )
}

fn help_text() -> String {
    format!(
        "weft {VERSION}: the weft CNI plugin. It gives each pod an address from this node's
subnet (IPv4, IPv6 or both), a veth pair and a bridge.
CNI spec versions: {versions} (ADD, DEL, CHECK, GC, STATUS, VERSION).

A container runtime runs it with CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME (and
CNI_ARGS, CNI_PATH) in the environment and the network config on stdin; the answer is JSON
on stdout, diagnostics go to stderr.

By hand:
  weft --version                the plugin's version and the CNI versions it speaks
  CNI_COMMAND=VERSION weft      the same as CNI JSON
  CNI_COMMAND=STATUS weft < conf.json
                                whether this node's subnet.env is ready (cniVersion 1.1.0)

Its own config keys, in the conflist entry with \"type\": \"weft\":
  {keys}.
It reads the node's subnets and MTU from weftd's subnet.env (/run/weft/subnet.env).",
        versions = SUPPORTED.join(", "),
        keys = PLUGIN_KEYS.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_and_help_name_the_plugin_and_its_versions() {
        let v = answer(&["--version"]).unwrap();
        assert_eq!(
            v,
            format!("weft {VERSION}\nCNI spec versions: 0.3.1, 0.4.0, 1.0.0, 1.1.0")
        );
        assert_eq!(answer(&["-V"]), Some(v));
        let h = answer(&["--help"]).unwrap();
        assert!(h.starts_with(&format!("weft {VERSION}: the weft CNI plugin")));
        assert!(h.contains("CNI spec versions: 0.3.1, 0.4.0, 1.0.0, 1.1.0"));
        assert!(h.contains("subnetFile, dataDir, bridge"), "{h}");
        assert_eq!(answer(&["-h"]), Some(h));
        assert_eq!(answer::<&str>(&[]), None);
        assert_eq!(answer(&["ADD", "--verbose"]), None);
    }
}
