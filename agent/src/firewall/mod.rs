//! weft's masquerade firewall: one nftables table per address family, `ip weft` for IPv4 and
//! `ip6 weft` for IPv6, that weft alone owns.
//!
//! Three layers, as everywhere in weft, each in its own file:
//! - `rules.rs`: [`MasqRules`] + [`render`], a pure description of one family's rules and the
//!   nft script that replaces that family's table in one transaction (no moment without rules,
//!   no other table touched);
//! - [`Firewall`] (here): the side effect on one family's table (apply a script, list the
//!   table, remove it), implemented by [`NftFirewall`] in `nft.rs` (the `nft` binary, run as a
//!   child process with a timeout) and, in this crate's unit tests only, `FakeFirewall` in
//!   `fake.rs`;
//! - `owner.rs`: [`run_firewall`], the one task that owns one family's table — applies the
//!   rules when they change, re-checks the table on an interval and restores it when someone
//!   deleted or edited it. A dual-stack node runs one such task per family, each with its own
//!   [`Firewall`].

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use ipnetwork::IpNetwork;
use weft_backends::IpFamily;

#[cfg(test)]
mod fake;
mod nft;
mod owner;
mod rules;

#[cfg(test)]
pub use fake::FakeFirewall;
pub use nft::{NftFirewall, DEFAULT_NFT_TIMEOUT};
pub use owner::run_firewall;
pub use rules::{nft_family, render, MasqRules, KUBE_PROXY_MASQ_MARK, TABLE};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(
        "masquerade rules need one address family: cluster network {network} and own subnet \
         {own_subnet} are one IPv4 and one IPv6"
    )]
    MixedFamilies {
        network: IpNetwork,
        own_subnet: IpNetwork,
    },
    #[error(
        "rules for nftables table {} {TABLE} given to the owner of table {} {TABLE}; refused",
        nft_family(*rules),
        nft_family(*table)
    )]
    FamilyMismatch {
        /// The family of the table this firewall owns.
        table: IpFamily,
        /// The family the rules or script were for.
        rules: IpFamily,
    },
    #[error("nftables binary {} not found; install nftables (the `nft` command)", binary.display())]
    NftNotFound { binary: PathBuf },
    #[error("{action}: cannot run {program}: {source}")]
    Spawn {
        action: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{action}: waiting for {program}: {source}")]
    Wait {
        action: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{action}: {program} did not finish within {timeout:?} and was killed")]
    Timeout {
        action: String,
        program: String,
        timeout: Duration,
    },
    #[error("{action}: `{program}` failed ({}): {}", exit_text(*code), stderr.trim())]
    Nft {
        action: String,
        program: String,
        /// Exit code; `None` when nft was ended by a signal.
        code: Option<i32>,
        stderr: String,
    },
    #[error("table {} {TABLE} is missing right after it was applied", nft_family(*family))]
    MissingAfterApply { family: IpFamily },
}

fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_string(),
    }
}

/// The side effect: weft's table of one family in the kernel. An implementation owns exactly
/// one family's table and never reads or changes the other's.
pub trait Firewall: Send {
    /// The family of the table this firewall owns.
    fn family(&self) -> IpFamily;
    /// Run `script` (from [`render`], for rules of [`Firewall::family`]) as one nftables
    /// transaction. A script that names the other family's table is refused with
    /// [`FirewallError::FamilyMismatch`] before anything runs.
    fn apply(&mut self, script: &str) -> impl Future<Output = Result<(), FirewallError>> + Send;
    /// The table as nftables lists it; `None` when it does not exist.
    fn list(&mut self) -> impl Future<Output = Result<Option<String>, FirewallError>> + Send;
    /// Delete the table; `false` when there was none.
    fn remove(&mut self) -> impl Future<Output = Result<bool, FirewallError>> + Send;
}

/// Remove weft's table of `fw`'s family. `Ok(false)` when it was not there.
pub async fn cleanup<F: Firewall>(fw: &mut F) -> Result<bool, FirewallError> {
    fw.remove().await
}

/// Remove weft's tables of both families, `ip weft` and then `ip6 weft`, each through the
/// firewall `firewall_for` returns for that family (e.g.
/// `|family| NftFirewall::new(None).for_family(family)`). A failure for one family does not
/// stop the other; each family's result is returned (`Ok(false)`: there was no table).
pub async fn cleanup_all_families<F: Firewall>(
    mut firewall_for: impl FnMut(IpFamily) -> F,
) -> [(IpFamily, Result<bool, FirewallError>); 2] {
    let [first, second] = IpFamily::ALL;
    let first_result = cleanup(&mut firewall_for(first)).await;
    let second_result = cleanup(&mut firewall_for(second)).await;
    [(first, first_result), (second, second_result)]
}
