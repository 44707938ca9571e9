//! `FakeFirewall`: an in-memory [`Firewall`] for this crate's unit tests. Compiled only for
//! them (`cfg(test)`), so it never reaches a release binary.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::rules::check_script_family;
use super::{nft_family, Firewall, FirewallError, IpFamily, TABLE};

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
/// `fake.clone().for_family(IpFamily::V6)` is a handle on the same kernel's `ip6 weft`
/// table, which is separate from its `ip weft` table as in nftables. Listing returns the
/// applied script verbatim. Like [`NftFirewall`], it refuses a script that names the
/// other family's table.
#[derive(Clone, Debug)]
pub struct FakeFirewall {
    kernel: Arc<Mutex<BTreeMap<IpFamily, FakeTable>>>,
    family: IpFamily,
}

impl Default for FakeFirewall {
    fn default() -> FakeFirewall {
        FakeFirewall {
            kernel: Arc::default(),
            family: IpFamily::V4,
        }
    }
}

impl FakeFirewall {
    /// A fresh fake kernel with no tables; the handle owns `ip weft`.
    pub fn new() -> FakeFirewall {
        FakeFirewall::default()
    }

    /// This handle owns weft's table of `family` in the same fake kernel.
    pub fn for_family(mut self, family: IpFamily) -> FakeFirewall {
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
    fn family(&self) -> IpFamily {
        self.family
    }

    async fn apply(&mut self, script: &str) -> Result<(), FirewallError> {
        check_script_family(script, self.family)?;
        let family = self.family;
        self.with_table(|t| {
            if t.failing_applies > 0 {
                t.failing_applies -= 1;
                return Err(FirewallError::Nft {
                    action: format!(
                        "apply the ruleset of nftables table {} {TABLE}",
                        nft_family(family)
                    ),
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

    async fn list(&mut self) -> Result<Option<String>, FirewallError> {
        self.with_table(|t| {
            t.lists += 1;
            Ok(t.table.clone())
        })
    }

    async fn remove(&mut self) -> Result<bool, FirewallError> {
        self.with_table(|t| {
            t.removes += 1;
            Ok(t.table.take().is_some())
        })
    }
}

mod tests {
    use super::super::rules::testing::{rules, V6_NET, V6_OWN};
    use super::super::{cleanup, cleanup_all_families, render};
    use super::*;

    #[tokio::test]
    async fn the_fake_keeps_the_two_families_apart() {
        let v4 = FakeFirewall::new();
        let v6 = v4.clone().for_family(IpFamily::V6);
        assert_eq!((v4.family(), v6.family()), (IpFamily::V4, IpFamily::V6));
        let v4_script = render(&rules("10.244.0.0/16", "10.244.1.0/24"));
        let v6_script = render(&rules(V6_NET, V6_OWN));
        v4.clone().apply(&v4_script).await.unwrap();
        v6.clone().apply(&v6_script).await.unwrap();
        assert_eq!(v4.clone().list().await.unwrap(), Some(v4_script.clone()));
        assert_eq!(v6.clone().list().await.unwrap(), Some(v6_script.clone()));

        // Another family's script is refused and changes neither table.
        for (mut fw, script) in [(v4.clone(), &v6_script), (v6.clone(), &v4_script)] {
            let err = fw.apply(script).await.unwrap_err();
            assert!(
                matches!(err, FirewallError::FamilyMismatch { .. }),
                "{err:?}"
            );
        }
        assert_eq!(v4.applied(), vec![v4_script.clone()]);
        assert_eq!(v6.applied(), vec![v6_script.clone()]);

        // Removing one leaves the other.
        assert!(cleanup(&mut v6.clone()).await.unwrap());
        assert_eq!(v6.table(), None);
        assert_eq!(v4.table(), Some(v4_script));
        assert_eq!(v4.remove_calls(), 0);
        assert!(cleanup(&mut v4.clone()).await.unwrap());
        assert_eq!(v4.table(), None);
    }

    #[tokio::test]
    async fn cleanup_all_families_removes_both_tables() {
        let fake = FakeFirewall::new();
        fake.clone()
            .apply(&render(&rules("10.244.0.0/16", "10.244.1.0/24")))
            .await
            .unwrap();
        fake.clone()
            .for_family(IpFamily::V6)
            .apply(&render(&rules(V6_NET, V6_OWN)))
            .await
            .unwrap();
        let first = cleanup_all_families(|f| fake.clone().for_family(f)).await;
        assert_eq!(
            first.map(|(f, r)| (f, r.unwrap())),
            [(IpFamily::V4, true), (IpFamily::V6, true)]
        );
        let second = cleanup_all_families(|f| fake.clone().for_family(f)).await;
        assert_eq!(
            second.map(|(f, r)| (f, r.unwrap())),
            [(IpFamily::V4, false), (IpFamily::V6, false)]
        );
    }

    #[tokio::test]
    async fn cleanup_reports_whether_there_was_a_table() {
        let mut fake = FakeFirewall::new();
        assert!(!cleanup(&mut fake).await.unwrap());
        fake.apply(&render(&rules("10.244.0.0/16", "10.244.1.0/24")))
            .await
            .unwrap();
        assert!(cleanup(&mut fake).await.unwrap());
        assert!(!cleanup(&mut fake).await.unwrap());
        assert_eq!(fake.table(), None);
    }
}
