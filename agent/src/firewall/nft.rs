//! [`NftFirewall`]: weft's table of one family through the `nft` binary, each call a child
//! process (tokio's) bounded by a timeout after which nft is killed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tracing::debug;

use super::rules::check_script_family;
use super::{nft_family, Firewall, FirewallError, IpFamily, TABLE};

/// How long one `nft` call may take before it is killed.
pub const DEFAULT_NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// [`Firewall`] through the `nft` binary, for the table of one family (`ip weft` unless
/// [`NftFirewall::for_family`] says otherwise). Every call is bounded by a timeout after which
#[derive(Clone, Debug)]
pub struct NftFirewall {
    binary: PathBuf,
    netns: Option<String>,
    timeout: Duration,
    family: IpFamily,
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
            family: IpFamily::V4,
        }
    }

    /// Own weft's table of `family` instead: `IpFamily::V6` for table `ip6 weft`.
    pub fn for_family(mut self, family: IpFamily) -> NftFirewall {
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

    /// Run nft with `args`, feeding `input` on stdin, within the timeout. A call that takes
    /// longer is killed (and reaped) before [`FirewallError::Timeout`] is returned.
    async fn run(
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
            .stderr(Stdio::piped())
            // Should this future be dropped half-way (weftd stopping), nft goes with it.
            .kill_on_drop(true);
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
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // Feed stdin and drain both outputs while waiting, so a full pipe can never block
        // nft.
        let finished = tokio::time::timeout(self.timeout, async {
            let feed = async {
                if let (Some(mut stdin), Some(text)) = (stdin, input) {
                    let _ = stdin.write_all(text.as_bytes()).await;
                    // Dropping stdin here closes it: nft sees the end of its script.
                }
            };
            let ((), out, err, status) =
                tokio::join!(feed, read_all(stdout), read_all(stderr), child.wait());
            (status, out, err)
        })
        .await;
        let (status, out, err) = match finished {
            Ok((Ok(status), out, err)) => (status, out, err),
            Ok((Err(source), _, _)) => {
                let _ = child.kill().await;
                return Err(FirewallError::Wait {
                    action,
                    program,
                    source,
                });
            }
            Err(_elapsed) => {
                // kill() also waits for the child, so no zombie is left behind.
                let _ = child.kill().await;
                return Err(FirewallError::Timeout {
                    action,
                    program,
                    timeout: self.timeout,
                });
            }
        };
        Ok(NftOutput {
            action,
            program,
            success: status.success(),
            code: status.code(),
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
        })
    }

    /// Whether this firewall's table exists, from `nft list tables <family>` (no error text
    /// parsed).
    async fn table_exists(&self) -> Result<bool, FirewallError> {
        let family = nft_family(self.family);
        let out = self
            .run(
                format!("list nftables tables of family {family}"),
                &["list", "tables", family],
                None,
            )
            .await?;
        if !out.success {
            return Err(out.into_error());
        }
        let wanted = format!("table {family} {TABLE}");
        Ok(out.stdout.lines().any(|l| l.trim() == wanted))
    }
}

/// Everything `r` yields until its end (nothing when there is no pipe); read errors end it
/// early, as an nft that dies mid-write leaves its exit status to tell.
async fn read_all<R: AsyncRead + Unpin>(r: Option<R>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut r) = r {
        let _ = r.read_to_end(&mut buf).await;
    }
    buf
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
    fn family(&self) -> IpFamily {
        self.family
    }

    async fn apply(&mut self, script: &str) -> Result<(), FirewallError> {
        check_script_family(script, self.family)?;
        let action = format!(
            "apply the ruleset of nftables table {} {TABLE}",
            nft_family(self.family)
        );
        let out = self.run(action, &["-f", "-"], Some(script)).await?;
        if out.success {
            Ok(())
        } else {
            Err(out.into_error())
        }
    }

    async fn list(&mut self) -> Result<Option<String>, FirewallError> {
        let family = nft_family(self.family);
        let action = format!("list nftables table {family} {TABLE}");
        let out = self
            .run(action, &["list", "table", family, TABLE], None)
            .await?;
        if out.success {
            return Ok(Some(out.stdout));
        }
        // nft reports a missing table only as text; ask for the table list instead of
        // parsing it.
        if !self.table_exists().await? {
            return Ok(None);
        }
        Err(out.into_error())
    }

    async fn remove(&mut self) -> Result<bool, FirewallError> {
        let family = nft_family(self.family);
        let action = format!("delete nftables table {family} {TABLE}");
        let out = self
            .run(action, &["delete", "table", family, TABLE], None)
            .await?;
        if out.success {
            return Ok(true);
        }
        if !self.table_exists().await? {
            return Ok(false);
        }
        Err(out.into_error())
    }
}

#[cfg(test)]
mod tests {
    use super::super::cleanup_all_families;
    use super::super::render;
    use super::super::rules::testing::{rules, V6_NET, V6_OWN};
    use super::*;

    #[tokio::test]
    async fn missing_nft_binary_is_named_in_the_error() {
        let mut fw = NftFirewall::new(None).with_binary("/nonexistent/weft-test/nft");
        let err = fw.list().await.unwrap_err();
        assert!(matches!(err, FirewallError::NftNotFound { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/weft-test/nft"),
            "{err}"
        );
        let mut fw = NftFirewall::new(None).with_binary("weft-no-such-nft-binary");
        let err = fw.apply("").await.unwrap_err();
        assert!(err.to_string().contains("weft-no-such-nft-binary"), "{err}");
    }

    #[tokio::test]
    async fn a_hanging_nft_is_killed_at_the_timeout() {
        // `sleep` stands in for an nft that never finishes; nothing touches the firewall.
        let dir = tempfile::tempdir().unwrap();
        let fake_nft = dir.path().join("nft");
        write_script(&fake_nft, "#!/bin/sh\nexec sleep 30\n");
        let mut fw = NftFirewall::new(None)
            .with_binary(&fake_nft)
            .with_timeout(Duration::from_millis(200));
        let start = std::time::Instant::now();
        let err = fw.list().await.unwrap_err();
        assert!(matches!(err, FirewallError::Timeout { .. }), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    /// Write an executable script without this process ever holding it open for writing: a
    /// file open for writing here stays open in any child another test thread forks at that
    /// moment, until the child execs, and running the script in that window fails with
    /// ETXTBSY ("Text file busy"). A shell of its own writes it.
    fn write_script(path: &Path, text: &str) {
        use std::io::Write;
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
            .arg(path)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("run sh");
        sh.stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write the script");
        assert!(sh.wait().expect("wait for sh").success());
    }

    /// A stand-in `nft` that appends its arguments to `log` and succeeds, except that
    /// `delete` fails and `list tables` lists nothing (so removal finds no table).
    fn recording_nft(dir: &Path) -> (PathBuf, PathBuf) {
        let log = dir.join("calls");
        let nft = dir.join("nft");
        write_script(
            &nft,
            &format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\ncat > /dev/null\n\
                 [ \"$1\" = delete ] && exit 1\nexit 0\n",
                log.display()
            ),
        );
        (nft, log)
    }

    #[tokio::test]
    async fn nft_firewall_runs_nft_on_its_own_family_only() {
        let dir = tempfile::tempdir().unwrap();
        let (nft, log) = recording_nft(dir.path());
        let v4 = render(&rules("10.244.0.0/16", "10.244.1.0/24"));
        let v6 = render(&rules(V6_NET, V6_OWN));
        assert_eq!(NftFirewall::new(None).family(), IpFamily::V4);
        for (family, own, other) in [(IpFamily::V4, &v4, &v6), (IpFamily::V6, &v6, &v4)] {
            let mut fw = NftFirewall::new(None).for_family(family).with_binary(&nft);
            assert_eq!(fw.family(), family);
            let _ = std::fs::remove_file(&log);
            fw.apply(own).await.unwrap();
            assert!(fw.list().await.unwrap().is_some());
            assert!(!fw.remove().await.unwrap());
            assert_eq!(
                std::fs::read_to_string(&log).unwrap(),
                format!(
                    "-f -\nlist table {family} weft\ndelete table {family} weft\n\
                     list tables {family}\n",
                    family = nft_family(family)
                )
            );

            let _ = std::fs::remove_file(&log);
            let err = fw.apply(other).await.unwrap_err();
            assert!(
                matches!(err, FirewallError::FamilyMismatch { .. }),
                "{err:?}"
            );
            assert!(
                err.to_string()
                    .contains(&format!("owner of table {} weft", nft_family(family))),
                "{err}"
            );
            assert!(!log.exists(), "nft ran for the other family's script");
        }
    }

    #[tokio::test]
    async fn cleanup_all_families_carries_on_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (nft, log) = recording_nft(dir.path());
        let results = cleanup_all_families(|family| match family {
            IpFamily::V4 => NftFirewall::new(None).with_binary("/nonexistent/weft-test/nft"),
            IpFamily::V6 => NftFirewall::new(None)
                .for_family(IpFamily::V6)
                .with_binary(&nft),
        })
        .await;
        let [(f4, r4), (f6, r6)] = results;
        assert_eq!((f4, f6), (IpFamily::V4, IpFamily::V6));
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
