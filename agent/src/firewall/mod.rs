//! weft's masquerade firewall: one nftables table per address family, `ip weft` for IPv4 and
//! `ip6 weft` for IPv6, that weft alone owns.
//!
//! Three layers, as everywhere in weft:
//! - [`MasqRules`] + [`render`]: a pure description of one family's rules and the nft script
//!   that replaces that family's table in one transaction (no moment without rules, no other
//!   table touched);
//! - [`Firewall`]: the side effect on one family's table (apply a script, list the table,
//!   remove it), implemented by [`NftFirewall`] (the `nft` binary) and, for tests,
//!   `FakeFirewall`;
//! - [`run_firewall`]: the one task that owns one family's table — applies the rules when they
//!   change, re-checks the table on an interval and restores it when someone deleted or edited
//!   it. A dual-stack node runs one such task per family, each with its own [`Firewall`].

use std::ffi::OsString;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use tokio::sync::watch;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tracing::{debug, error, info, info_span, warn, Instrument};

/// The name of weft's table, the same in both families (`ip weft`, `ip6 weft`).
pub const TABLE: &str = "weft";

/// The bit kube-proxy sets on packets it wants masqueraded (`--masquerade-bit` 14).
pub const KUBE_PROXY_MASQ_MARK: u32 = 0x4000;

/// How long one `nft` call may take before it is killed.
pub const DEFAULT_NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// The nftables family of one of weft's tables. The same word names the table's family and
/// the address match inside it (`ip saddr …`, `ip6 saddr …`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableFamily {
    /// IPv4: table `ip weft`.
    Ip,
    /// IPv6: table `ip6 weft`.
    Ip6,
}

impl TableFamily {
    /// Both families, IPv4 first.
    pub const ALL: [TableFamily; 2] = [TableFamily::Ip, TableFamily::Ip6];

    /// The nftables family keyword: `ip` or `ip6`.
    pub fn as_str(self) -> &'static str {
        match self {
            TableFamily::Ip => "ip",
            TableFamily::Ip6 => "ip6",
        }
    }

    /// The family whose table holds rules for `network`.
    pub fn of(network: IpNetwork) -> TableFamily {
        match network {
            IpNetwork::V4(_) => TableFamily::Ip,
            IpNetwork::V6(_) => TableFamily::Ip6,
        }
    }

    /// Multicast destinations of this family, never masqueraded.
    fn multicast(self) -> &'static str {
        match self {
            TableFamily::Ip => "224.0.0.0/4",
            TableFamily::Ip6 => "ff00::/8",
        }
    }

    fn other(self) -> TableFamily {
        match self {
            TableFamily::Ip => TableFamily::Ip6,
            TableFamily::Ip6 => TableFamily::Ip,
        }
    }
}

impl fmt::Display for TableFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The masquerade rules of one node for one address family.
///
/// Both networks are always of the same family: build the rules with [`MasqRules::v4`] or
/// [`MasqRules::v6`], or with [`MasqRules::new`], which refuses a mixed pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasqRules {
    network: IpNetwork,
    own_subnet: IpNetwork,
}

impl MasqRules {
    /// IPv4 rules: the cluster network (all pod subnets, e.g. 10.244.0.0/16) and this node's
    /// pod subnet (e.g. 10.244.1.0/24). Rendered into table `ip weft`.
    pub fn v4(network: Ipv4Network, own_subnet: Ipv4Network) -> MasqRules {
        MasqRules {
            network: network.into(),
            own_subnet: own_subnet.into(),
        }
    }

    /// IPv6 rules: the cluster network (e.g. fd00:10:244::/56) and this node's pod subnet
    /// (e.g. fd00:10:244:1::/64). Rendered into table `ip6 weft`.
    pub fn v6(network: Ipv6Network, own_subnet: Ipv6Network) -> MasqRules {
        MasqRules {
            network: network.into(),
            own_subnet: own_subnet.into(),
        }
    }

    /// Rules for two networks of either family; [`FirewallError::MixedFamilies`] when one is
    /// IPv4 and the other IPv6.
    pub fn new(network: IpNetwork, own_subnet: IpNetwork) -> Result<MasqRules, FirewallError> {
        match (network, own_subnet) {
            (IpNetwork::V4(n), IpNetwork::V4(o)) => Ok(MasqRules::v4(n, o)),
            (IpNetwork::V6(n), IpNetwork::V6(o)) => Ok(MasqRules::v6(n, o)),
            _ => Err(FirewallError::MixedFamilies {
                network,
                own_subnet,
            }),
        }
    }

    /// The cluster network (all pod subnets).
    pub fn network(&self) -> IpNetwork {
        self.network
    }

    /// This node's pod subnet.
    pub fn own_subnet(&self) -> IpNetwork {
        self.own_subnet
    }

    /// The family of both networks, and so of the table the rules go into.
    pub fn family(&self) -> TableFamily {
        TableFamily::of(self.network)
    }
}

/// `address/len` with the host bits cleared, so a network given as `10.244.1.1/24` still
/// means the whole `10.244.1.0/24` (and `fd00::5/64` the whole `fd00::/64`).
fn cidr(n: IpNetwork) -> String {
    format!("{}/{}", n.network(), n.prefix())
}

/// The nft script that atomically replaces weft's table of `r`'s family with `r`'s rules:
/// table `ip weft` with `ip saddr`/`ip daddr` matches for IPv4, table `ip6 weft` with
/// `ip6 saddr`/`ip6 daddr` matches for IPv6. The rules are the same in both; only the
/// multicast range that is never masqueraded differs (224.0.0.0/4, ff00::/8).
///
/// The first two lines make sure the table exists and then delete it, inside the same
/// transaction as the new definition, so `nft -f` swaps old for new in one commit.
pub fn render(r: &MasqRules) -> String {
    let family = r.family();
    let fam = family.as_str();
    let multicast = family.multicast();
    let net = cidr(r.network);
    let own = cidr(r.own_subnet);
    let mark = format!("{KUBE_PROXY_MASQ_MARK:#x}");
    let mut s = String::new();
    s.push_str(&format!(
        "# weft masquerade rules; replaces the whole table in one transaction\n\
         table {fam} {TABLE} {{}}\n\
         delete table {fam} {TABLE}\n\
         table {fam} {TABLE} {{\n"
    ));
    s.push_str(&format!(
        "\tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & {mark} == {mark} return comment \"marked by kube-proxy, which masquerades it itself\"\n\
         \t\t{fam} saddr {net} {fam} daddr {net} return comment \"pod to pod inside the cluster network: keep the pod source\"\n\
         \t\t{fam} saddr {net} {fam} daddr != {multicast} masquerade fully-random comment \"pod to outside the cluster network: masquerade\"\n\
         \t\t{fam} saddr != {net} {fam} daddr {own} return comment \"outside to this node's pods: keep the source\"\n\
         \t\t{fam} saddr != {net} {fam} daddr {net} masquerade fully-random comment \"outside to other nodes' pods: masquerade\"\n\
         \t}}\n"
    ));
    s.push_str(&format!(
        "\tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\t{fam} saddr {net} accept comment \"forward traffic from the cluster network\"\n\
         \t\t{fam} daddr {net} accept comment \"forward traffic to the cluster network\"\n\
         \t}}\n\
         }}\n"
    ));
    s
}

/// Whether `script` names weft's table of `family` (`table ip6 weft …`,
/// `delete table ip6 weft`). A guard against handing one family's rendered script to the other
/// family's firewall, not a parser of nft's language.
fn names_table_of(script: &str, family: TableFamily) -> bool {
    let words: Vec<&str> = script.split_whitespace().collect();
    words.windows(3).any(|w| {
        w[0] == "table"
            && w[1] == family.as_str()
            && w[2].trim_end_matches(['{', '}', ';']) == TABLE
    })
}

/// [`FirewallError::FamilyMismatch`] if `script` names the other family's table than
/// `family`'s.
fn check_script_family(script: &str, family: TableFamily) -> Result<(), FirewallError> {
    let other = family.other();
    if names_table_of(script, other) {
        return Err(FirewallError::FamilyMismatch {
            table: family,
            rules: other,
        });
    }
    Ok(())
}

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
        "rules for nftables table {rules} {TABLE} given to the owner of table {table} {TABLE}; \
         refused"
    )]
    FamilyMismatch {
        /// The family of the table this firewall owns.
        table: TableFamily,
        /// The family the rules or script were for.
        rules: TableFamily,
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
    #[error("table {family} {TABLE} is missing right after it was applied")]
    MissingAfterApply { family: TableFamily },
    #[error("firewall call did not complete: {0}")]
    Join(#[from] tokio::task::JoinError),
}

fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_string(),
    }
}

/// The side effect: weft's table of one family in the kernel. An implementation owns exactly
/// one family's table and never reads or changes the other's.
pub trait Firewall {
    /// The family of the table this firewall owns.
    fn family(&self) -> TableFamily;
    /// Run `script` (from [`render`], for rules of [`Firewall::family`]) as one nftables
    /// transaction. A script that names the other family's table is refused with
    /// [`FirewallError::FamilyMismatch`] before anything runs.
    fn apply(&mut self, script: &str) -> Result<(), FirewallError>;
    /// The table as nftables lists it; `None` when it does not exist.
    fn list(&mut self) -> Result<Option<String>, FirewallError>;
    /// Delete the table; `false` when there was none.
    fn remove(&mut self) -> Result<bool, FirewallError>;
}

/// Remove weft's table of `fw`'s family. `Ok(false)` when it was not there.
pub fn cleanup<F: Firewall>(fw: &mut F) -> Result<bool, FirewallError> {
    fw.remove()
}

/// Remove weft's tables of both families, `ip weft` and then `ip6 weft`, each through the
/// firewall `firewall_for` returns for that family (e.g.
/// `|family| NftFirewall::new(None).for_family(family)`). A failure for one family does not
/// stop the other; each family's result is returned (`Ok(false)`: there was no table).
pub fn cleanup_all_families<F: Firewall>(
    mut firewall_for: impl FnMut(TableFamily) -> F,
) -> [(TableFamily, Result<bool, FirewallError>); 2] {
    TableFamily::ALL.map(|family| (family, cleanup(&mut firewall_for(family))))
}

/// [`Firewall`] through the `nft` binary, for the table of one family (`ip weft` unless
/// [`NftFirewall::for_family`] says otherwise). Every call is bounded by a timeout after which
/// nft is killed.
#[derive(Clone, Debug)]
pub struct NftFirewall {
    binary: PathBuf,
    netns: Option<String>,
    timeout: Duration,
    family: TableFamily,
}

/// What one finished nft call left behind.
struct NftOutput {
    action: String,
    program: String,
    success: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl NftOutput {
    fn into_error(self) -> FirewallError {
        FirewallError::Nft {
            action: self.action,
            program: self.program,
            code: self.code,
            stderr: self.stderr,
        }
    }
}

impl NftFirewall {
    /// Table `ip weft` (IPv4) through `nft` from `PATH`, in the current network namespace
    /// (`netns: None`) or inside the named one (`/run/netns/<name>`, run as
    /// `ip netns exec <name> nft …`), with [`DEFAULT_NFT_TIMEOUT`] per call.
    pub fn new(netns: Option<String>) -> NftFirewall {
        NftFirewall {
            binary: PathBuf::from("nft"),
            netns,
            timeout: DEFAULT_NFT_TIMEOUT,
            family: TableFamily::Ip,
        }
    }

    /// Own weft's table of `family` instead: `TableFamily::Ip6` for table `ip6 weft`.
    pub fn for_family(mut self, family: TableFamily) -> NftFirewall {
        self.family = family;
        self
    }

    /// Use this nft binary (a path, or a name looked up in `PATH`).
    pub fn with_binary(mut self, binary: impl Into<PathBuf>) -> NftFirewall {
        self.binary = binary.into();
        self
    }

    /// Bound each nft call by `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> NftFirewall {
        self.timeout = timeout;
        self
    }

    fn command(&self, nft: &Path) -> (Command, String) {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec"]).arg(ns).arg(nft);
                (c, format!("ip netns exec {ns} {}", nft.display()))
            }
            None => (Command::new(nft), nft.display().to_string()),
        }
    }

    /// Run nft with `args`, feeding `input` on stdin, within the timeout.
    fn run(
        &self,
        action: String,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<NftOutput, FirewallError> {
        let nft = find_binary(&self.binary).ok_or_else(|| FirewallError::NftNotFound {
            binary: self.binary.clone(),
        })?;
        let (mut cmd, program) = self.command(&nft);
        let program = format!("{program} {}", args.join(" "));
        cmd.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        debug!(command = %program, "running nft");
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(source) => {
                return Err(FirewallError::Spawn {
                    action,
                    program,
                    source,
                })
            }
        };
        // Separate threads for stdin and both outputs, so a full pipe can never block nft
        // while we wait for it.
        let writer = match (input, child.stdin.take()) {
            (Some(text), Some(mut stdin)) => {
                let data = text.as_bytes().to_vec();
                Some(std::thread::spawn(move || {
                    let _ = stdin.write_all(&data);
                }))
            }
            _ => None,
        };
        let out = child.stdout.take().map(read_to_end_in_thread);
        let err = child.stderr.take().map(read_to_end_in_thread);
        let deadline = std::time::Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(1);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(source) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(FirewallError::Wait {
                        action,
                        program,
                        source,
                    });
                }
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(FirewallError::Timeout {
                    action,
                    program,
                    timeout: self.timeout,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        };
        if let Some(w) = writer {
            let _ = w.join();
        }
        let collect = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
            h.and_then(|h| h.join().ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        Ok(NftOutput {
            action,
            program,
            success: status.success(),
            code: status.code(),
            stdout: collect(out),
            stderr: collect(err),
        })
    }

    /// Whether this firewall's table exists, from `nft list tables <family>` (no error text
    /// parsed).
    fn table_exists(&self) -> Result<bool, FirewallError> {
        let family = self.family.as_str();
        let out = self.run(
            format!("list nftables tables of family {family}"),
            &["list", "tables", family],
            None,
        )?;
        if !out.success {
            return Err(out.into_error());
        }
        let wanted = format!("table {family} {TABLE}");
        Ok(out.stdout.lines().any(|l| l.trim() == wanted))
    }
}

fn read_to_end_in_thread<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// `binary` itself if it names a path, else the first match in `PATH`.
fn find_binary(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 || binary.is_absolute() {
        return binary.is_file().then(|| binary.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| {
        OsString::from("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    });
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
}

impl Firewall for NftFirewall {
    fn family(&self) -> TableFamily {
        self.family
    }

    fn apply(&mut self, script: &str) -> Result<(), FirewallError> {
        check_script_family(script, self.family)?;
        let action = format!(
            "apply the ruleset of nftables table {} {TABLE}",
            self.family
        );
        let out = self.run(action, &["-f", "-"], Some(script))?;
        if out.success {
            Ok(())
        } else {
            Err(out.into_error())
        }
    }

    fn list(&mut self) -> Result<Option<String>, FirewallError> {
        let family = self.family.as_str();
        let action = format!("list nftables table {family} {TABLE}");
        let out = self.run(action, &["list", "table", family, TABLE], None)?;
        if out.success {
            return Ok(Some(out.stdout));
        }
        // nft reports a missing table only as text; ask for the table list instead of
        // parsing it.
        if !self.table_exists()? {
            return Ok(None);
        }
        Err(out.into_error())
    }

    fn remove(&mut self) -> Result<bool, FirewallError> {
        let family = self.family.as_str();
        let action = format!("delete nftables table {family} {TABLE}");
        let out = self.run(action, &["delete", "table", family, TABLE], None)?;
        if out.success {
            return Ok(true);
        }
        if !self.table_exists()? {
            return Ok(false);
        }
        Err(out.into_error())
    }
}

#[cfg(any(test, feature = "fake-firewall"))]
pub use fake::FakeFirewall;

#[cfg(any(test, feature = "fake-firewall"))]
mod fake {
    use std::collections::BTreeMap;

    use super::*;

    /// One family's table in the fake kernel, and what was done to it.
    #[derive(Debug, Default)]
    struct FakeTable {
        /// The "kernel" table: the last applied script, or whatever a test put there.
        table: Option<String>,
        applied: Vec<String>,
        lists: usize,
        removes: usize,
        /// Fail this many coming `apply` calls.
        failing_applies: usize,
        /// Someone deletes the table right after the next successful apply.
        vanish_after_apply: bool,
    }

    /// An in-memory [`Firewall`] for one family's table. Clones share the same fake kernel,
    /// so a test keeps one handle while the code under test owns another;
    /// `fake.clone().for_family(TableFamily::Ip6)` is a handle on the same kernel's `ip6 weft`
    /// table, which is separate from its `ip weft` table as in nftables. Listing returns the
    /// applied script verbatim. Like [`NftFirewall`], it refuses a script that names the
    /// other family's table.
    #[derive(Clone, Debug)]
    pub struct FakeFirewall {
        kernel: Arc<Mutex<BTreeMap<TableFamily, FakeTable>>>,
        family: TableFamily,
    }

    impl Default for FakeFirewall {
        fn default() -> FakeFirewall {
            FakeFirewall {
                kernel: Arc::default(),
                family: TableFamily::Ip,
            }
        }
    }

    impl FakeFirewall {
        /// A fresh fake kernel with no tables; the handle owns `ip weft`.
        pub fn new() -> FakeFirewall {
            FakeFirewall::default()
        }

        /// This handle owns weft's table of `family` in the same fake kernel.
        pub fn for_family(mut self, family: TableFamily) -> FakeFirewall {
            self.family = family;
            self
        }

        fn with_table<T>(&self, f: impl FnOnce(&mut FakeTable) -> T) -> T {
            let mut kernel = self.kernel.lock().unwrap_or_else(PoisonError::into_inner);
            f(kernel.entry(self.family).or_default())
        }

        /// Every script applied successfully to this family's table, in order.
        pub fn applied(&self) -> Vec<String> {
            self.with_table(|t| t.applied.clone())
        }

        /// What this family's table holds now (`None`: absent).
        pub fn table(&self) -> Option<String> {
            self.with_table(|t| t.table.clone())
        }

        /// How many times this family's table was listed.
        pub fn list_calls(&self) -> usize {
            self.with_table(|t| t.lists)
        }

        /// How many times removal of this family's table was asked for.
        pub fn remove_calls(&self) -> usize {
            self.with_table(|t| t.removes)
        }

        /// Someone else deletes this family's table (or, with `Some`, replaces its content).
        pub fn set_table(&self, table: Option<&str>) {
            self.with_table(|t| t.table = table.map(str::to_string));
        }

        /// The next `n` applies to this family's table fail as nft would on a bad ruleset.
        pub fn fail_applies(&self, n: usize) {
            self.with_table(|t| t.failing_applies = n);
        }

        /// Someone deletes this family's table right after the next successful apply,
        /// before it can be listed.
        pub fn vanish_after_next_apply(&self) {
            self.with_table(|t| t.vanish_after_apply = true);
        }
    }

    impl Firewall for FakeFirewall {
        fn family(&self) -> TableFamily {
            self.family
        }

        fn apply(&mut self, script: &str) -> Result<(), FirewallError> {
            check_script_family(script, self.family)?;
            let family = self.family;
            self.with_table(|t| {
                if t.failing_applies > 0 {
                    t.failing_applies -= 1;
                    return Err(FirewallError::Nft {
                        action: format!("apply the ruleset of nftables table {family} {TABLE}"),
                        program: "nft -f -".to_string(),
                        code: Some(1),
                        stderr: "Error: simulated failure".to_string(),
                    });
                }
                t.table = Some(script.to_string());
                t.applied.push(script.to_string());
                if std::mem::take(&mut t.vanish_after_apply) {
                    t.table = None;
                }
                Ok(())
            })
        }

        fn list(&mut self) -> Result<Option<String>, FirewallError> {
            self.with_table(|t| {
                t.lists += 1;
                Ok(t.table.clone())
            })
        }

        fn remove(&mut self) -> Result<bool, FirewallError> {
            self.with_table(|t| {
                t.removes += 1;
                Ok(t.table.take().is_some())
            })
        }
    }
}

/// Run `f` on the firewall in the blocking pool, so nft never stalls the runtime.
async fn call<F, T>(
    fw: &Arc<Mutex<F>>,
    f: impl FnOnce(&mut F) -> Result<T, FirewallError> + Send + 'static,
) -> Result<T, FirewallError>
where
    F: Firewall + Send + 'static,
    T: Send + 'static,
{
    let fw = Arc::clone(fw);
    tokio::task::spawn_blocking(move || {
        let mut guard = fw.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    })
    .await?
}

/// Why the owner applies the script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ApplyReason {
    /// First rules, or new rules.
    Changed,
    /// The last apply failed.
    Retry,
    /// The table was missing or differed from what was applied.
    Repair,
}

/// The state of the owner task.
struct Owner<F> {
    fw: Arc<Mutex<F>>,
    /// The family of `fw`'s table; rules of the other family are refused.
    family: TableFamily,
    /// The rules being enforced and their script.
    desired: Option<(MasqRules, String)>,
    /// The listing recorded right after the last successful apply of `desired`; `None` while
    /// it still has to be applied.
    recorded: Option<String>,
    /// The pending apply is a repair (counted and logged as one when it succeeds).
    repairing: bool,
}

impl<F: Firewall + Send + 'static> Owner<F> {
    /// Take new rules; applies at once if their script differs from the current one.
    async fn set_rules(&mut self, rules: Option<MasqRules>) {
        let Some(rules) = rules else {
            if self.desired.take().is_some() {
                info!(
                    table = TABLE,
                    "no masquerade rules to enforce; leaving the table as it is"
                );
            }
            self.recorded = None;
            self.repairing = false;
            return;
        };
        if rules.family() != self.family {
            let e = FirewallError::FamilyMismatch {
                table: self.family,
                rules: rules.family(),
            };
            error!(
                table = TABLE,
                network = %rules.network(),
                own_subnet = %rules.own_subnet(),
                error = %e,
                "ignoring masquerade rules of the wrong address family"
            );
            return;
        }
        let script = render(&rules);
        if self.desired.as_ref().is_some_and(|(_, s)| *s == script) {
            return;
        }
        self.desired = Some((rules, script));
        self.recorded = None;
        self.repairing = false;
        self.apply(ApplyReason::Changed).await;
    }

    /// Apply the desired script and record the listing. Returns `true` when this completed a
    /// repair (the caller counts it); errors are logged here.
    async fn apply(&mut self, reason: ApplyReason) -> bool {
        let Some((rules, script)) = self.desired.clone() else {
            return false;
        };
        let result = call(&self.fw, move |fw| {
            fw.apply(&script)?;
            let family = fw.family();
            fw.list()?
                .ok_or(FirewallError::MissingAfterApply { family })
        })
        .await;
        match result {
            Ok(listing) => {
                self.recorded = Some(listing);
                if reason == ApplyReason::Repair || self.repairing {
                    self.repairing = false;
                    info!(table = TABLE, "nftables table changed or missing; restored");
                    true
                } else {
                    info!(
                        table = TABLE,
                        network = %rules.network(),
                        own_subnet = %rules.own_subnet(),
                        "nftables masquerade rules applied"
                    );
                    false
                }
            }
            Err(e) => {
                self.recorded = None;
                // A table gone right after it was applied was removed by someone else:
                // putting it back is a repair, whatever the apply was for.
                self.repairing |= reason == ApplyReason::Repair
                    || matches!(e, FirewallError::MissingAfterApply { .. });
                error!(
                    table = TABLE,
                    network = %rules.network(),
                    own_subnet = %rules.own_subnet(),
                    error = %e,
                    "cannot apply the nftables masquerade rules; retrying at the next check"
                );
                false
            }
        }
    }

    /// One periodic check: retry a failed apply, or compare the table with the recorded
    /// listing and restore it if it differs. Returns whether a repair was completed.
    async fn check(&mut self) -> bool {
        if self.desired.is_none() {
            return false;
        }
        let Some(recorded) = self.recorded.clone() else {
            return self.apply(ApplyReason::Retry).await;
        };
        match call(&self.fw, |fw| fw.list()).await {
            Ok(Some(current)) if current == recorded => {
                debug!(table = TABLE, "nftables table unchanged");
                false
            }
            Ok(current) => {
                let cause = if current.is_some() {
                    "changed"
                } else {
                    "missing"
                };
                debug!(
                    table = TABLE,
                    cause, "nftables table differs from what was applied"
                );
                self.apply(ApplyReason::Repair).await
            }
            Err(e) => {
                warn!(table = TABLE, error = %e, "cannot list the nftables table; will check again");
                false
            }
        }
    }
}

/// The owner of `fw`'s table: `ip weft` or `ip6 weft`, whichever family `fw` owns. A
/// dual-stack node runs one owner per family, each with its own firewall and rules channel.
///
/// - Applies the rendered rules whenever `rules` changes to a different `Some`. `None` means
///   there is nothing to enforce (yet): the table is left as it is, never removed. Rules of
///   the other family than `fw`'s are refused (logged at error) and change nothing.
/// - Every `recheck`, lists the table and compares it with the listing recorded right after
///   the last apply; a missing or different table is re-applied, logged at info, and
///   `repairs()` is called. An unchanged table is left alone (no rule churn).
/// - A failed apply is logged at error and retried at the next check.
/// - Returns when `shutdown` becomes `true` (or its sender is dropped), leaving the table in
///   place; `weftd --cleanup` removes it.
///
/// The nft calls are blocking and run in tokio's blocking pool.
pub async fn run_firewall<F, R>(
    fw: F,
    mut rules: watch::Receiver<Option<MasqRules>>,
    recheck: Duration,
    mut shutdown: watch::Receiver<bool>,
    repairs: R,
) where
    F: Firewall + Send + 'static,
    R: Fn() + Send,
{
    let family = fw.family();
    let span = info_span!("firewall", family = %family, table = TABLE);
    async move {
        let mut owner = Owner {
            family,
            fw: Arc::new(Mutex::new(fw)),
            desired: None,
            recorded: None,
            repairing: false,
        };
        if *shutdown.borrow_and_update() {
            return;
        }
        let recheck = recheck.max(Duration::from_millis(1));
        let mut tick = interval_at(Instant::now() + recheck, recheck);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let initial = *rules.borrow_and_update();
        owner.set_rules(initial).await;
        let mut rules_open = true;
        loop {
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow_and_update() {
                        debug!("firewall owner stopping; the table stays");
                        return;
                    }
                }
                changed = rules.changed(), if rules_open => {
                    if changed.is_err() {
                        // The sender is gone: keep enforcing the last rules.
                        rules_open = false;
                        continue;
                    }
                    let new = *rules.borrow_and_update();
                    owner.set_rules(new).await;
                }
                _ = tick.tick() => {
                    if owner.check().await {
                        repairs();
                    }
                }
            }
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn rules(net: &str, own: &str) -> MasqRules {
        MasqRules::new(net.parse().unwrap(), own.parse().unwrap()).unwrap()
    }

    /// The non-comment, non-empty lines of a script, trimmed.
    fn lines(script: &str) -> Vec<String> {
        script
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    /// The rule text of a line, without its comment.
    fn rule_of(line: &str) -> &str {
        line.split(" comment ").next().unwrap_or(line)
    }

    /// The IPv4 script, byte for byte as weft has always rendered it: existing nodes see no
    /// change in their table.
    const IPV4_SCRIPT: &str = "\
# weft masquerade rules; replaces the whole table in one transaction
table ip weft {}
delete table ip weft
table ip weft {
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x4000 == 0x4000 return comment \"marked by kube-proxy, which masquerades it itself\"
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return comment \"pod to pod inside the cluster network: keep the pod source\"
\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment \"pod to outside the cluster network: masquerade\"
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return comment \"outside to this node's pods: keep the source\"
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random comment \"outside to other nodes' pods: masquerade\"
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.244.0.0/16 accept comment \"forward traffic from the cluster network\"
\t\tip daddr 10.244.0.0/16 accept comment \"forward traffic to the cluster network\"
\t}
}
";

    #[test]
    fn render_ipv4_is_byte_for_byte_the_script_of_earlier_releases() {
        assert_eq!(
            render(&rules("10.244.0.0/16", "10.244.1.0/24")),
            IPV4_SCRIPT
        );
    }

    #[test]
    fn render_replaces_the_table_in_one_script() {
        let l = lines(&render(&rules("10.244.0.0/16", "10.244.1.0/24")));
        assert_eq!(l[0], "table ip weft {}");
        assert_eq!(l[1], "delete table ip weft");
        assert_eq!(l[2], "table ip weft {");
        assert_eq!(l.last().unwrap(), "}");
        // Exactly one definition of the table, nothing about any other table.
        assert_eq!(l.iter().filter(|x| x.starts_with("table ")).count(), 2);
        assert!(l.iter().all(|x| !x.contains("flush ruleset")));
    }

    #[test]
    fn render_has_the_masquerade_rules_in_order() {
        let l = lines(&render(&rules("10.244.0.0/16", "10.244.1.0/24")));
        let rules: Vec<&str> = l.iter().map(|x| rule_of(x)).collect();
        let want = [
            "chain postrouting {",
            "type nat hook postrouting priority srcnat; policy accept;",
            "meta mark & 0x4000 == 0x4000 return",
            "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return",
            "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return",
            "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
            "}",
            "chain forward {",
            "type filter hook forward priority filter; policy accept;",
            "ip saddr 10.244.0.0/16 accept",
            "ip daddr 10.244.0.0/16 accept",
            "}",
        ];
        assert_eq!(&rules[3..rules.len() - 1], &want[..]);
    }

    #[test]
    fn render_excludes_pod_to_pod_before_any_masquerade() {
        let l = lines(&render(&rules("10.244.0.0/16", "10.244.1.0/24")));
        let pod_to_pod = l
            .iter()
            .position(|x| rule_of(x) == "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return")
            .expect("pod-to-pod return rule");
        let kube_proxy = l
            .iter()
            .position(|x| x.starts_with("meta mark & 0x4000 == 0x4000 return"))
            .expect("kube-proxy mark rule");
        let first_masq = l
            .iter()
            .position(|x| rule_of(x).contains("masquerade"))
            .unwrap();
        assert!(kube_proxy < first_masq && pod_to_pod < first_masq);
        // No masquerade rule matches pod source and pod destination.
        assert!(!l.iter().any(|x| rule_of(x)
            .starts_with("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16")
            && x.contains("masquerade")));
    }

    #[test]
    fn render_comments_every_rule_and_normalises_networks() {
        let script = render(&rules("10.244.7.9/16", "10.244.1.1/24"));
        for line in lines(&script) {
            let is_rule = line.starts_with("ip ") || line.starts_with("meta ");
            if is_rule {
                assert!(line.contains(" comment \""), "rule without comment: {line}");
            }
        }
        assert!(script.contains("ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return"));
        assert!(!script.contains("10.244.7.9"));
        // A different subnet gives a different script.
        assert_ne!(
            script,
            render(&rules("10.244.0.0/16", "10.244.2.0/24")),
            "own subnet must be in the script"
        );
    }

    const V6_NET: &str = "fd00:10:244::/56";
    const V6_OWN: &str = "fd00:10:244:1::/64";

    #[test]
    fn render_ipv6_is_the_ipv4_script_in_table_ip6_weft() {
        // Same rules, same order, same comments: only the family word, the networks and the
        // multicast range differ.
        let want = IPV4_SCRIPT
            .replace("table ip weft", "table ip6 weft")
            .replace("ip saddr", "ip6 saddr")
            .replace("ip daddr", "ip6 daddr")
            .replace("10.244.0.0/16", V6_NET)
            .replace("10.244.1.0/24", V6_OWN)
            .replace("224.0.0.0/4", "ff00::/8");
        assert_eq!(render(&rules(V6_NET, V6_OWN)), want);
    }

    #[test]
    fn render_ipv6_has_no_ipv4_match_and_normalises_networks() {
        let script = render(&rules("fd00:10:244::7/56", "fd00:10:244:1::1/64"));
        let l = lines(&script);
        assert_eq!(l[0], "table ip6 weft {}");
        assert_eq!(l[1], "delete table ip6 weft");
        assert_eq!(l[2], "table ip6 weft {");
        assert!(!names_table_of(&script, TableFamily::Ip), "{script}");
        for word in ["ip saddr", "ip daddr", "224.0.0.0/4", "::7", "::1/"] {
            assert!(!script.contains(word), "{word:?} in:\n{script}");
        }
        assert!(script
            .contains("ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random"));
        assert!(
            script.contains("ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:1::/64 return")
        );
        for line in l {
            if line.starts_with("ip6 ") || line.starts_with("meta ") {
                assert!(line.contains(" comment \""), "rule without comment: {line}");
            }
        }
    }

    #[test]
    fn masq_rules_refuse_a_mixed_pair() {
        for (net, own) in [("10.244.0.0/16", V6_OWN), (V6_NET, "10.244.1.0/24")] {
            let err = MasqRules::new(net.parse().unwrap(), own.parse().unwrap()).unwrap_err();
            assert!(
                matches!(err, FirewallError::MixedFamilies { .. }),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains(net) && msg.contains(own), "names both: {msg}");
        }
    }

    #[test]
    fn masq_rules_know_their_family() {
        let v4 = rules("10.244.0.0/16", "10.244.1.0/24");
        assert_eq!(v4.family(), TableFamily::Ip);
        assert_eq!(
            v4,
            MasqRules::v4(
                "10.244.0.0/16".parse().unwrap(),
                "10.244.1.0/24".parse().unwrap()
            )
        );
        let v6 = rules(V6_NET, V6_OWN);
        assert_eq!(v6.family(), TableFamily::Ip6);
        assert_eq!(v6.network().to_string(), V6_NET);
        assert_eq!(v6.own_subnet().to_string(), V6_OWN);
        assert_eq!(
            v6,
            MasqRules::v6(V6_NET.parse().unwrap(), V6_OWN.parse().unwrap())
        );
        assert_eq!(TableFamily::Ip.to_string(), "ip");
        assert_eq!(TableFamily::Ip6.to_string(), "ip6");
        assert_eq!(TableFamily::ALL, [TableFamily::Ip, TableFamily::Ip6]);
    }

    #[test]
    fn scripts_are_told_apart_by_the_table_they_name() {
        let v4 = render(&rules("10.244.0.0/16", "10.244.1.0/24"));
        let v6 = render(&rules(V6_NET, V6_OWN));
        assert!(names_table_of(&v4, TableFamily::Ip) && !names_table_of(&v4, TableFamily::Ip6));
        assert!(names_table_of(&v6, TableFamily::Ip6) && !names_table_of(&v6, TableFamily::Ip));
        assert!(names_table_of("delete table ip6 weft;", TableFamily::Ip6));
        assert!(names_table_of("table ip weft{}", TableFamily::Ip));
        assert!(!names_table_of("table ip other {}", TableFamily::Ip));
    }

    #[test]
    fn the_fake_keeps_the_two_families_apart() {
        let v4 = FakeFirewall::new();
        let v6 = v4.clone().for_family(TableFamily::Ip6);
        assert_eq!(
            (v4.family(), v6.family()),
            (TableFamily::Ip, TableFamily::Ip6)
        );
        let v4_script = render(&rules("10.244.0.0/16", "10.244.1.0/24"));
        let v6_script = render(&rules(V6_NET, V6_OWN));
        v4.clone().apply(&v4_script).unwrap();
        v6.clone().apply(&v6_script).unwrap();
        assert_eq!(v4.clone().list().unwrap(), Some(v4_script.clone()));
        assert_eq!(v6.clone().list().unwrap(), Some(v6_script.clone()));

        // Another family's script is refused and changes neither table.
        for (mut fw, script) in [(v4.clone(), &v6_script), (v6.clone(), &v4_script)] {
            let err = fw.apply(script).unwrap_err();
            assert!(
                matches!(err, FirewallError::FamilyMismatch { .. }),
                "{err:?}"
            );
        }
        assert_eq!(v4.applied(), vec![v4_script.clone()]);
        assert_eq!(v6.applied(), vec![v6_script.clone()]);

        // Removing one leaves the other.
        assert!(cleanup(&mut v6.clone()).unwrap());
        assert_eq!(v6.table(), None);
        assert_eq!(v4.table(), Some(v4_script));
        assert_eq!(v4.remove_calls(), 0);
        assert!(cleanup(&mut v4.clone()).unwrap());
        assert_eq!(v4.table(), None);
    }

    #[test]
    fn cleanup_all_families_removes_both_tables() {
        let fake = FakeFirewall::new();
        fake.clone()
            .apply(&render(&rules("10.244.0.0/16", "10.244.1.0/24")))
            .unwrap();
        fake.clone()
            .for_family(TableFamily::Ip6)
            .apply(&render(&rules(V6_NET, V6_OWN)))
            .unwrap();
        let first = cleanup_all_families(|f| fake.clone().for_family(f));
        assert_eq!(
            first.map(|(f, r)| (f, r.unwrap())),
            [(TableFamily::Ip, true), (TableFamily::Ip6, true)]
        );
        let second = cleanup_all_families(|f| fake.clone().for_family(f));
        assert_eq!(
            second.map(|(f, r)| (f, r.unwrap())),
            [(TableFamily::Ip, false), (TableFamily::Ip6, false)]
        );
    }

    struct Harness {
        fake: FakeFirewall,
        rules_tx: watch::Sender<Option<MasqRules>>,
        stop_tx: watch::Sender<bool>,
        repairs: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    const RECHECK: Duration = Duration::from_secs(10);

    fn start(initial: Option<MasqRules>, fake: FakeFirewall) -> Harness {
        let (rules_tx, rules_rx) = watch::channel(initial);
        let (stop_tx, stop_rx) = watch::channel(false);
        let repairs = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&repairs);
        let task = tokio::spawn(run_firewall(
            fake.clone(),
            rules_rx,
            RECHECK,
            stop_rx,
            move || {
                count.fetch_add(1, Ordering::SeqCst);
            },
        ));
        Harness {
            fake,
            rules_tx,
            stop_tx,
            repairs,
            task,
        }
    }

    impl Harness {
        fn repairs(&self) -> usize {
            self.repairs.load(Ordering::SeqCst)
        }

        async fn stop(self) {
            self.stop_tx.send_replace(true);
            tokio::time::timeout(Duration::from_secs(5), self.task)
                .await
                .expect("owner stops within 5 s")
                .expect("owner task did not panic");
        }
    }

    /// Let `n` recheck intervals pass (paused time: advances instantly).
    async fn ticks(n: u32) {
        tokio::time::sleep(RECHECK * n + Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn applies_once_and_leaves_an_unchanged_table_alone() {
        let r = rules("10.244.0.0/16", "10.244.1.0/24");
        let h = start(Some(r), FakeFirewall::new());
        ticks(5).await;
        assert_eq!(h.fake.applied(), vec![render(&r)]);
        assert!(h.fake.list_calls() >= 5, "lists: {}", h.fake.list_calls());
        assert_eq!(h.repairs(), 0);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn restores_a_deleted_or_edited_table() {
        let r = rules("10.244.0.0/16", "10.244.1.0/24");
        let h = start(Some(r), FakeFirewall::new());
        ticks(1).await;
        assert_eq!(h.fake.applied().len(), 1);

        h.fake.set_table(None);
        ticks(1).await;
        assert_eq!(h.fake.applied().len(), 2);
        assert_eq!(h.fake.table(), Some(render(&r)));
        assert_eq!(h.repairs(), 1);

        h.fake.set_table(Some("table ip weft {\n}\n"));
        ticks(1).await;
        assert_eq!(h.fake.applied().len(), 3);
        assert_eq!(h.fake.table(), Some(render(&r)));
        assert_eq!(h.repairs(), 2);

        // And then it is quiet again.
        ticks(3).await;
        assert_eq!(h.fake.applied().len(), 3);
        assert_eq!(h.repairs(), 2);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn applies_new_rules_at_once_and_ignores_identical_ones() {
        let first = rules("10.244.0.0/16", "10.244.1.0/24");
        let second = rules("10.244.0.0/16", "10.244.9.0/24");
        let h = start(Some(first), FakeFirewall::new());
        ticks(1).await;
        h.rules_tx.send_replace(Some(second));
        // Well before the next check.
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(h.fake.applied(), vec![render(&first), render(&second)]);
        h.rules_tx.send_replace(Some(second));
        ticks(2).await;
        assert_eq!(h.fake.applied().len(), 2);
        assert_eq!(h.repairs(), 0);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn no_rules_at_start_touches_nothing() {
        let fake = FakeFirewall::new();
        fake.set_table(Some("table ip weft { from a previous run }"));
        let h = start(None, fake);
        ticks(3).await;
        assert!(h.fake.applied().is_empty());
        assert_eq!(h.fake.remove_calls(), 0);
        assert_eq!(
            h.fake.table().as_deref(),
            Some("table ip weft { from a previous run }")
        );
        // Rules arrive later: applied then.
        let r = rules("10.244.0.0/16", "10.244.1.0/24");
        h.rules_tx.send_replace(Some(r));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(h.fake.applied(), vec![render(&r)]);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_apply_is_retried_at_the_next_check() {
        let fake = FakeFirewall::new();
        fake.fail_applies(2);
        let r = rules("10.244.0.0/16", "10.244.1.0/24");
        let h = start(Some(r), fake);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(h.fake.applied().is_empty());
        ticks(1).await;
        assert!(h.fake.applied().is_empty(), "second attempt fails too");
        ticks(1).await;
        assert_eq!(h.fake.applied(), vec![render(&r)]);
        assert_eq!(h.repairs(), 0, "a retried first apply is not a repair");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_repair_counts_once_it_succeeds() {
        let r = rules("10.244.0.0/16", "10.244.1.0/24");
        let h = start(Some(r), FakeFirewall::new());
        ticks(1).await;
        h.fake.set_table(None);
        h.fake.fail_applies(1);
        ticks(1).await;
        assert_eq!(h.fake.table(), None);
        assert_eq!(h.repairs(), 0);
        ticks(1).await;
        assert_eq!(h.fake.table(), Some(render(&r)));
        assert_eq!(h.repairs(), 1);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_table_deleted_right_after_the_first_apply_is_restored_as_a_repair() {
        // Found as a flake of the kernel test under load: the table vanished between the
        // apply and the listing that records it; restoring it is a repair like any other.
        let r = rules("10.244.0.0/16", "10.244.1.0/24");
        let fake = FakeFirewall::new();
        fake.vanish_after_next_apply();
        let h = start(Some(r), fake);
        ticks(1).await;
        ticks(1).await;
        assert_eq!(h.fake.table(), Some(render(&r)));
        assert_eq!(h.repairs(), 1);
        ticks(3).await;
        assert_eq!(h.repairs(), 1, "no repair while the table is unchanged");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn stops_on_shutdown_and_leaves_the_table() {
        let r = rules("10.244.0.0/16", "10.244.1.0/24");
        let h = start(Some(r), FakeFirewall::new());
        ticks(1).await;
        let fake = h.fake.clone();
        h.stop().await;
        assert_eq!(fake.table(), Some(render(&r)));
        assert_eq!(fake.remove_calls(), 0);
    }

    #[test]
    fn the_owner_future_is_send_even_with_a_non_sync_callback() {
        fn assert_send<T: Send>(_: &T) {}
        let (_rules_tx, rules_rx) = watch::channel(None);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let count = std::cell::Cell::new(0u32);
        let fut = run_firewall(FakeFirewall::new(), rules_rx, RECHECK, stop_rx, move || {
            count.set(count.get() + 1)
        });
        assert_send(&fut);
    }

    #[test]
    fn cleanup_reports_whether_there_was_a_table() {
        let mut fake = FakeFirewall::new();
        assert!(!cleanup(&mut fake).unwrap());
        fake.apply(&render(&rules("10.244.0.0/16", "10.244.1.0/24")))
            .unwrap();
        assert!(cleanup(&mut fake).unwrap());
        assert!(!cleanup(&mut fake).unwrap());
        assert_eq!(fake.table(), None);
    }

    #[test]
    fn missing_nft_binary_is_named_in_the_error() {
        let mut fw = NftFirewall::new(None).with_binary("/nonexistent/weft-test/nft");
        let err = fw.list().unwrap_err();
        assert!(matches!(err, FirewallError::NftNotFound { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/weft-test/nft"),
            "{err}"
        );
        let mut fw = NftFirewall::new(None).with_binary("weft-no-such-nft-binary");
        let err = fw.apply("").unwrap_err();
        assert!(err.to_string().contains("weft-no-such-nft-binary"), "{err}");
    }

    #[test]
    fn a_hanging_nft_is_killed_at_the_timeout() {
        // `sleep` stands in for an nft that never finishes; nothing touches the firewall.
        let dir = std::env::temp_dir().join(format!("weft-fw-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake_nft = dir.join("nft");
        std::fs::write(&fake_nft, "#!/bin/sh\nexec sleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake_nft, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut fw = NftFirewall::new(None)
            .with_binary(&fake_nft)
            .with_timeout(Duration::from_millis(200));
        let start = std::time::Instant::now();
        let err = fw.list().unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(err, FirewallError::Timeout { .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ip6_owner_restores_its_table_and_never_touches_the_ip_table() {
        let fake = FakeFirewall::new();
        fake.set_table(Some("table ip weft { someone's IPv4 table }"));
        let r = rules(V6_NET, V6_OWN);
        let h = start(Some(r), fake.clone().for_family(TableFamily::Ip6));
        ticks(1).await;
        assert_eq!(h.fake.applied(), vec![render(&r)]);

        h.fake.set_table(None);
        ticks(1).await;
        assert_eq!(h.fake.table(), Some(render(&r)));
        assert_eq!(h.repairs(), 1);
        h.stop().await;

        assert_eq!(
            fake.table().as_deref(),
            Some("table ip weft { someone's IPv4 table }")
        );
        assert!(fake.applied().is_empty());
        assert_eq!((fake.list_calls(), fake.remove_calls()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_owner_refuses_rules_of_the_other_family() {
        let v6 = FakeFirewall::new().for_family(TableFamily::Ip6);
        let v4 = v6.clone().for_family(TableFamily::Ip);
        let h = start(Some(rules("10.244.0.0/16", "10.244.1.0/24")), v6);
        ticks(2).await;
        assert!(h.fake.applied().is_empty());
        assert!(v4.applied().is_empty());
        assert_eq!((h.fake.table(), v4.table()), (None, None));

        // The right family is applied at once, and a wrong one later changes nothing.
        let r = rules(V6_NET, V6_OWN);
        h.rules_tx.send_replace(Some(r));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(h.fake.applied(), vec![render(&r)]);
        h.rules_tx
            .send_replace(Some(rules("10.244.0.0/16", "10.244.2.0/24")));
        ticks(2).await;
        assert_eq!(h.fake.applied(), vec![render(&r)]);
        assert_eq!(h.fake.table(), Some(render(&r)));
        assert!(v4.applied().is_empty());
        h.stop().await;
    }

    /// A stand-in `nft` that appends its arguments to `log` and succeeds, except that
    /// `delete` fails and `list tables` lists nothing (so removal finds no table).
    fn recording_nft(dir: &Path) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let log = dir.join("calls");
        let nft = dir.join("nft");
        std::fs::write(
            &nft,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\ncat > /dev/null\n\
                 [ \"$1\" = delete ] && exit 1\nexit 0\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&nft, std::fs::Permissions::from_mode(0o755)).unwrap();
        (nft, log)
    }

    #[test]
    fn nft_firewall_runs_nft_on_its_own_family_only() {
        let dir = tempfile::tempdir().unwrap();
        let (nft, log) = recording_nft(dir.path());
        let v4 = render(&rules("10.244.0.0/16", "10.244.1.0/24"));
        let v6 = render(&rules(V6_NET, V6_OWN));
        assert_eq!(NftFirewall::new(None).family(), TableFamily::Ip);
        for (family, own, other) in [(TableFamily::Ip, &v4, &v6), (TableFamily::Ip6, &v6, &v4)] {
            let mut fw = NftFirewall::new(None).for_family(family).with_binary(&nft);
            assert_eq!(fw.family(), family);
            let _ = std::fs::remove_file(&log);
            fw.apply(own).unwrap();
            assert!(fw.list().unwrap().is_some());
            assert!(!fw.remove().unwrap());
            assert_eq!(
                std::fs::read_to_string(&log).unwrap(),
                format!(
                    "-f -\nlist table {family} weft\ndelete table {family} weft\n\
                     list tables {family}\n"
                )
            );

            let _ = std::fs::remove_file(&log);
            let err = fw.apply(other).unwrap_err();
            assert!(
                matches!(err, FirewallError::FamilyMismatch { .. }),
                "{err:?}"
            );
            assert!(
                err.to_string()
                    .contains(&format!("owner of table {family} weft")),
                "{err}"
            );
            assert!(!log.exists(), "nft ran for the other family's script");
        }
    }

    #[test]
    fn cleanup_all_families_carries_on_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (nft, log) = recording_nft(dir.path());
        let results = cleanup_all_families(|family| match family {
            TableFamily::Ip => NftFirewall::new(None).with_binary("/nonexistent/weft-test/nft"),
            TableFamily::Ip6 => NftFirewall::new(None)
                .for_family(TableFamily::Ip6)
                .with_binary(&nft),
        });
        let [(f4, r4), (f6, r6)] = results;
        assert_eq!((f4, f6), (TableFamily::Ip, TableFamily::Ip6));
        assert!(
            matches!(r4, Err(FirewallError::NftNotFound { .. })),
            "{r4:?}"
        );
        assert!(!r6.unwrap());
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "delete table ip6 weft\nlist tables ip6\n"
        );
    }
}
