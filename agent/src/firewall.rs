//! weft's masquerade firewall: one nftables table, `ip weft`, that weft alone owns.
//!
//! Three layers, as everywhere in weft:
//! - [`MasqRules`] + [`render`]: a pure description and the nft script that replaces the whole
//!   table in one transaction (no moment without rules, no other table touched);
//! - [`Firewall`]: the side effect (apply a script, list the table, remove it), implemented by
//!   [`NftFirewall`] (the `nft` binary) and, for tests, `FakeFirewall`;
//! - [`run_firewall`]: the one task that owns the table — applies the rules when they change,
//!   re-checks the table on an interval and restores it when someone deleted or edited it.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ipnetwork::Ipv4Network;
use tokio::sync::watch;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tracing::{debug, error, info, info_span, warn, Instrument};

/// The name of weft's table (family `ip`).
pub const TABLE: &str = "weft";

/// The bit kube-proxy sets on packets it wants masqueraded (`--masquerade-bit` 14).
pub const KUBE_PROXY_MASQ_MARK: u32 = 0x4000;

/// Multicast destinations, never masqueraded.
const MULTICAST: &str = "224.0.0.0/4";

/// How long one `nft` call may take before it is killed.
pub const DEFAULT_NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// The masquerade rules of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MasqRules {
    /// The cluster network (all pod subnets), e.g. 10.244.0.0/16.
    pub network: Ipv4Network,
    /// This node's pod subnet, e.g. 10.244.1.0/24.
    pub own_subnet: Ipv4Network,
}

/// `a.b.c.d/len` with the host bits cleared, so a network given as `10.244.1.1/24` still
/// means the whole `10.244.1.0/24`.
fn cidr(n: Ipv4Network) -> String {
    format!("{}/{}", n.network(), n.prefix())
}

/// The nft script that atomically replaces table `ip weft` with `r`'s rules.
///
/// The first two lines make sure the table exists and then delete it, inside the same
/// transaction as the new definition, so `nft -f` swaps old for new in one commit.
pub fn render(r: &MasqRules) -> String {
    let net = cidr(r.network);
    let own = cidr(r.own_subnet);
    let mark = format!("{KUBE_PROXY_MASQ_MARK:#x}");
    let mut s = String::new();
    s.push_str(&format!(
        "# weft masquerade rules; replaces the whole table in one transaction\n\
         table ip {TABLE} {{}}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n"
    ));
    s.push_str(&format!(
        "\tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & {mark} == {mark} return comment \"marked by kube-proxy, which masquerades it itself\"\n\
         \t\tip saddr {net} ip daddr {net} return comment \"pod to pod inside the cluster network: keep the pod source\"\n\
         \t\tip saddr {net} ip daddr != {MULTICAST} masquerade fully-random comment \"pod to outside the cluster network: masquerade\"\n\
         \t\tip saddr != {net} ip daddr {own} return comment \"outside to this node's pods: keep the source\"\n\
         \t\tip saddr != {net} ip daddr {net} masquerade fully-random comment \"outside to other nodes' pods: masquerade\"\n\
         \t}}\n"
    ));
    s.push_str(&format!(
        "\tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip saddr {net} accept comment \"forward traffic from the cluster network\"\n\
         \t\tip daddr {net} accept comment \"forward traffic to the cluster network\"\n\
         \t}}\n\
         }}\n"
    ));
    s
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("nftables binary {} not found; install nftables (the `nft` command)", binary.display())]
    NftNotFound { binary: PathBuf },
    #[error("{action}: cannot run {program}: {source}")]
    Spawn {
        action: &'static str,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{action}: waiting for {program}: {source}")]
    Wait {
        action: &'static str,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{action}: {program} did not finish within {timeout:?} and was killed")]
    Timeout {
        action: &'static str,
        program: String,
        timeout: Duration,
    },
    #[error("{action}: `{program}` failed ({}): {}", exit_text(*code), stderr.trim())]
    Nft {
        action: &'static str,
        program: String,
        /// Exit code; `None` when nft was ended by a signal.
        code: Option<i32>,
        stderr: String,
    },
    #[error("table ip {TABLE} is missing right after it was applied")]
    MissingAfterApply,
    #[error("firewall call did not complete: {0}")]
    Join(#[from] tokio::task::JoinError),
}

fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_string(),
    }
}

/// The side effect: weft's one table in the kernel.
pub trait Firewall {
    /// Run `script` (from [`render`]) as one nftables transaction.
    fn apply(&mut self, script: &str) -> Result<(), FirewallError>;
    /// The table as nftables lists it; `None` when it does not exist.
    fn list(&mut self) -> Result<Option<String>, FirewallError>;
    /// Delete the table; `false` when there was none.
    fn remove(&mut self) -> Result<bool, FirewallError>;
}

/// Remove weft's table. `Ok(false)` when it was not there.
pub fn cleanup<F: Firewall>(fw: &mut F) -> Result<bool, FirewallError> {
    fw.remove()
}

/// [`Firewall`] through the `nft` binary. Every call is bounded by a timeout after which nft
/// is killed.
#[derive(Clone, Debug)]
pub struct NftFirewall {
    binary: PathBuf,
    netns: Option<String>,
    timeout: Duration,
}

/// What one finished nft call left behind.
struct NftOutput {
    program: String,
    success: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl NftOutput {
    fn into_error(self, action: &'static str) -> FirewallError {
        FirewallError::Nft {
            action,
            program: self.program,
            code: self.code,
            stderr: self.stderr,
        }
    }
}

impl NftFirewall {
    /// `nft` from `PATH`, in the current network namespace (`netns: None`) or inside the
    /// named one (`/run/netns/<name>`, run as `ip netns exec <name> nft …`), with
    /// [`DEFAULT_NFT_TIMEOUT`] per call.
    pub fn new(netns: Option<String>) -> NftFirewall {
        NftFirewall {
            binary: PathBuf::from("nft"),
            netns,
            timeout: DEFAULT_NFT_TIMEOUT,
        }
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
        action: &'static str,
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
        let mut child = cmd.spawn().map_err(|source| FirewallError::Spawn {
            action,
            program: program.clone(),
            source,
        })?;
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
            program,
            success: status.success(),
            code: status.code(),
            stdout: collect(out),
            stderr: collect(err),
        })
    }

    /// Whether table `ip weft` exists, from `nft list tables ip` (no error text parsed).
    fn table_exists(&self) -> Result<bool, FirewallError> {
        const ACTION: &str = "list nftables tables of family ip";
        let out = self.run(ACTION, &["list", "tables", "ip"], None)?;
        if !out.success {
            return Err(out.into_error(ACTION));
        }
        let wanted = format!("table ip {TABLE}");
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
    fn apply(&mut self, script: &str) -> Result<(), FirewallError> {
        const ACTION: &str = "apply the ruleset of nftables table ip weft";
        let out = self.run(ACTION, &["-f", "-"], Some(script))?;
        if out.success {
            Ok(())
        } else {
            Err(out.into_error(ACTION))
        }
    }

    fn list(&mut self) -> Result<Option<String>, FirewallError> {
        const ACTION: &str = "list nftables table ip weft";
        let out = self.run(ACTION, &["list", "table", "ip", TABLE], None)?;
        if out.success {
            return Ok(Some(out.stdout));
        }
        // nft reports a missing table only as text; ask for the table list instead of
        // parsing it.
        if !self.table_exists()? {
            return Ok(None);
        }
        Err(out.into_error(ACTION))
    }

    fn remove(&mut self) -> Result<bool, FirewallError> {
        const ACTION: &str = "delete nftables table ip weft";
        let out = self.run(ACTION, &["delete", "table", "ip", TABLE], None)?;
        if out.success {
            return Ok(true);
        }
        if !self.table_exists()? {
            return Ok(false);
        }
        Err(out.into_error(ACTION))
    }
}

#[cfg(any(test, feature = "fake-firewall"))]
pub use fake::FakeFirewall;

#[cfg(any(test, feature = "fake-firewall"))]
mod fake {
    use super::*;

    #[derive(Debug, Default)]
    struct FakeState {
        /// The "kernel" table: the last applied script, or whatever a test put there.
        table: Option<String>,
        applied: Vec<String>,
        lists: usize,
        removes: usize,
        /// Fail this many coming `apply` calls.
        failing_applies: usize,
    }

    /// An in-memory [`Firewall`]. Clones share the same state, so a test keeps one handle
    /// while the code under test owns another. Listing returns the applied script verbatim.
    #[derive(Clone, Debug, Default)]
    pub struct FakeFirewall {
        state: Arc<Mutex<FakeState>>,
    }

    impl FakeFirewall {
        pub fn new() -> FakeFirewall {
            FakeFirewall::default()
        }

        fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
            self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// Every script applied successfully, in order.
        pub fn applied(&self) -> Vec<String> {
            self.state().applied.clone()
        }

        /// What the table holds now (`None`: absent).
        pub fn table(&self) -> Option<String> {
            self.state().table.clone()
        }

        /// How many times the table was listed.
        pub fn list_calls(&self) -> usize {
            self.state().lists
        }

        /// How many times removal was asked for.
        pub fn remove_calls(&self) -> usize {
            self.state().removes
        }

        /// Someone else deletes the table (or, with `Some`, replaces its content).
        pub fn set_table(&self, table: Option<&str>) {
            self.state().table = table.map(str::to_string);
        }

        /// The next `n` applies fail as nft would on a bad ruleset.
        pub fn fail_applies(&self, n: usize) {
            self.state().failing_applies = n;
        }
    }

    impl Firewall for FakeFirewall {
        fn apply(&mut self, script: &str) -> Result<(), FirewallError> {
            let mut s = self.state();
            if s.failing_applies > 0 {
                s.failing_applies -= 1;
                return Err(FirewallError::Nft {
                    action: "apply the ruleset of nftables table ip weft",
                    program: "nft -f -".to_string(),
                    code: Some(1),
                    stderr: "Error: simulated failure".to_string(),
                });
            }
            s.table = Some(script.to_string());
            s.applied.push(script.to_string());
            Ok(())
        }

        fn list(&mut self) -> Result<Option<String>, FirewallError> {
            let mut s = self.state();
            s.lists += 1;
            Ok(s.table.clone())
        }

        fn remove(&mut self) -> Result<bool, FirewallError> {
            let mut s = self.state();
            s.removes += 1;
            Ok(s.table.take().is_some())
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
            fw.list()?.ok_or(FirewallError::MissingAfterApply)
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
                        network = %rules.network,
                        own_subnet = %rules.own_subnet,
                        "nftables masquerade rules applied"
                    );
                    false
                }
            }
            Err(e) => {
                self.recorded = None;
                self.repairing |= reason == ApplyReason::Repair;
                error!(
                    table = TABLE,
                    network = %rules.network,
                    own_subnet = %rules.own_subnet,
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

/// The owner of table `ip weft`.
///
/// - Applies the rendered rules whenever `rules` changes to a different `Some`. `None` means
///   there is nothing to enforce (yet): the table is left as it is, never removed.
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
    let span = info_span!("firewall", table = TABLE);
    async move {
        let mut owner = Owner {
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
        MasqRules {
            network: net.parse().unwrap(),
            own_subnet: own.parse().unwrap(),
        }
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
        assert_eq!(render(&rules("10.244.0.0/16", "10.244.1.0/24")), IPV4_SCRIPT);
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
}
