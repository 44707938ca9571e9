//! Pod IP allocation from the host subnet.
//!
//! The choice of an address is pure ([`choose_ip`]); the records live behind the small
//! [`IpamStore`] trait: [`FileIpam`] (one file per allocation under the data dir, a lock per
//! network) and `MemoryIpam` (compiled for tests only), both held to one contract suite.
//!
//! Record files are created atomically: the content is written to a temp file which is then
//! hard-linked to `att-<hash>-<address>` and `ip-<address>`; `link` fails if the name exists, so two plugins can never
//! claim one address and a killed ADD never leaves a half-written record. A record left by a
//! killed ADD holds a whole, valid (container, ifname) and is released by DEL or GC.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use nix::fcntl::{Flock, FlockArg};

/// One allocation: which attachment holds which address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {range}: all {capacity} pod addresses are allocated (GC releases those of deleted pods)")]
    Exhausted { range: Ipv4Network, capacity: u32 },
    #[error("IPAM store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("IPAM record {path} is corrupt: {problem}")]
    Corrupt { path: PathBuf, problem: String },
}

/// The addresses pods may get in `range`: all but network, gateway (`.1`) and broadcast.
pub fn pod_addresses(range: Ipv4Network) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(range.network()).saturating_add(2);
    let last = u32::from(range.broadcast()).saturating_sub(1);
    (first..=last).map(Ipv4Addr::from)
}

/// The next free address after `last` (round-robin, so a freed address is not handed out
/// again at once), wrapping around; `None` when every address is used.
pub fn choose_ip(
    range: Ipv4Network,
    used: &BTreeSet<Ipv4Addr>,
    last: Option<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let all: Vec<Ipv4Addr> = pod_addresses(range).collect();
    if all.is_empty() {
        return None;
    }
    let start = last
        .and_then(|l| all.iter().position(|a| *a == l))
        .map(|p| p + 1)
        .unwrap_or(0);
    (0..all.len())
        .map(|i| all[(start + i) % all.len()])
        .find(|a| !used.contains(a))
}

/// Where allocations are kept: a few primitive operations per medium, and the allocation
/// policy (reuse, round-robin choice, lost-claim retry, release, GC) written once on top.
/// Callers hold one store per invocation; implementations serialise concurrent invocations
/// themselves (a file lock for [`FileIpam`]).
pub trait IpamStore {
    /// The addresses in use. Cheap: ADD calls it every time.
    fn used(&self) -> Result<BTreeSet<Ipv4Addr>, IpamError>;
    /// The address (container, ifname) holds, if any. Cheap: ADD and DEL call it.
    fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, IpamError>;
    /// Every allocation with its holder, sorted. May read every record (GC, CHECK). A record
    /// whose holder cannot be read is listed with an empty container id, so GC frees it.
    fn list(&self) -> Result<Vec<Allocation>, IpamError>;
    /// Record `a` only if its address is free; false if it is taken.
    fn claim(&mut self, a: &Allocation) -> Result<bool, IpamError>;
    /// Remove the record of `a`; false if there was none.
    fn remove(&mut self, a: &Allocation) -> Result<bool, IpamError>;
    /// The address handed out last (the round-robin position).
    fn last_reserved(&self) -> Option<Ipv4Addr>;
    fn set_last_reserved(&mut self, ip: Ipv4Addr) -> Result<(), IpamError>;

    /// Allocate an address for (container, ifname) in `range`, or return the one it has.
    fn allocate(
        &mut self,
        range: Ipv4Network,
        container_id: &str,
        ifname: &str,
    ) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.find(container_id, ifname)? {
            return Ok(ip);
        }
        let mut used = self.used()?;
        let capacity = pod_addresses(range).count() as u32;
        loop {
            let ip = choose_ip(range, &used, self.last_reserved())
                .ok_or(IpamError::Exhausted { range, capacity })?;
            let record = Allocation {
                ip,
                container_id: container_id.into(),
                ifname: ifname.into(),
            };
            if self.claim(&record)? {
                self.set_last_reserved(ip)?;
                return Ok(ip);
            }
            used.insert(ip);
        }
    }

    /// Release what (container, ifname) holds; `None` if nothing (not an error).
    fn release(&mut self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let Some(ip) = self.find(container_id, ifname)? else {
            return Ok(None);
        };
        let a = Allocation {
            ip,
            container_id: container_id.into(),
            ifname: ifname.into(),
        };
        Ok(self.remove(&a)?.then_some(ip))
    }

    /// Release every allocation whose attachment is not in `keep`; returns what was released.
    fn gc(&mut self, keep: &[(String, String)]) -> Result<Vec<Allocation>, IpamError>
    where
        Self: Sized,
    {
        self.gc_with(keep, |_| Ok::<(), IpamError>(()))
    }

    /// [`IpamStore::gc`], calling `before_release` for each allocation before its record goes
    /// (the plugin removes the attachment's interfaces there, so an address is never freed
    /// while still in use). The first error stops the sweep.
    fn gc_with<E: From<IpamError>>(
        &mut self,
        keep: &[(String, String)],
        mut before_release: impl FnMut(&Allocation) -> Result<(), E>,
    ) -> Result<Vec<Allocation>, E>
    where
        Self: Sized,
    {
        let mut released = Vec::new();
        for a in self.list()? {
            let kept = keep
                .iter()
                .any(|(c, i)| *c == a.container_id && *i == a.ifname);
            if kept {
                continue;
            }
            before_release(&a)?;
            if self.remove(&a)? {
                released.push(a);
            }
        }
        Ok(released)
    }
}

/// In-memory store: the fake the contract suite runs next to [`FileIpam`]. Test-only, so it
/// never ships in the plugin binary.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemoryIpam {
    allocations: Vec<Allocation>,
    last: Option<Ipv4Addr>,
}

#[cfg(test)]
impl IpamStore for MemoryIpam {
    fn used(&self) -> Result<BTreeSet<Ipv4Addr>, IpamError> {
        Ok(self.allocations.iter().map(|a| a.ip).collect())
    }

    fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        Ok(self
            .allocations
            .iter()
            .find(|a| a.container_id == container_id && a.ifname == ifname)
            .map(|a| a.ip))
    }

    fn list(&self) -> Result<Vec<Allocation>, IpamError> {
        let mut v = self.allocations.clone();
        v.sort();
        Ok(v)
    }

    fn claim(&mut self, a: &Allocation) -> Result<bool, IpamError> {
        if self.allocations.iter().any(|x| x.ip == a.ip) {
            return Ok(false);
        }
        self.allocations.push(a.clone());
        Ok(true)
    }

    fn remove(&mut self, a: &Allocation) -> Result<bool, IpamError> {
        let before = self.allocations.len();
        self.allocations.retain(|x| x.ip != a.ip);
        Ok(self.allocations.len() < before)
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        self.last
    }

    fn set_last_reserved(&mut self, ip: Ipv4Addr) -> Result<(), IpamError> {
        self.last = Some(ip);
        Ok(())
    }
}

/// Allocations as files under `<data_dir>/<network>/`, guarded by an exclusive lock on
/// `<data_dir>/<network>/lock` for as long as this value lives.
///
/// Each allocation is one inode with two names: `ip-<address>` (the claim: creating it is
/// what reserves the address) and `att-<hash>-<address>` (the index: the attachment's hash,
/// so finding what a container holds takes one directory listing, not a read per record).
/// The content is `<container id>\n<ifname>\n`. The index name is linked before the claim, so
/// every claim has its index; an index left without a claim (a killed ADD) is ignored and
/// swept by GC. Nothing is fsynced: pod IPAM state does not outlive a reboot's pods, and a
/// record emptied by a power cut is listed with no holder and freed by GC.
#[derive(Debug)]
pub struct FileIpam {
    dir: PathBuf,
    _lock: Flock<File>,
    /// The directory as listed once at open; kept current by this store's own changes
    /// (nobody else can change it while the lock is held).
    listing: Listing,
}

const RECORD_PREFIX: &str = "ip-";
const INDEX_PREFIX: &str = "att-";
const TEMP_PREFIX: &str = ".tmp-";
/// The round-robin position is a name too, `last-<address>`, moved by one rename.
const LAST_PREFIX: &str = "last-";

/// What one directory listing says: claimed addresses, index entries (hash, address) and
/// the round-robin position.
#[derive(Debug, Default)]
struct Listing {
    claimed: BTreeSet<Ipv4Addr>,
    index: Vec<(u64, Ipv4Addr)>,
    last: Option<Ipv4Addr>,
}

impl FileIpam {
    /// Open (creating) the store of `network` and take its lock, waiting for other plugin
    /// invocations to finish. `network` must already be validated as a safe name.
    pub fn open(data_dir: &Path, network: &str) -> Result<FileIpam, IpamError> {
        let dir = data_dir.join(network);
        let lock_path = dir.join("lock");
        let open_lock = || {
            File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
        };
        let f = match open_lock() {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Only root reads the records (container IDs and interface names).
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(RECORD_DIR_MODE)
                    .create(&dir)
                    .map_err(|source| IpamError::Io {
                        path: dir.clone(),
                        source,
                    })?;
                open_lock().map_err(|source| IpamError::Io {
                    path: lock_path.clone(),
                    source,
                })?
            }
            Err(source) => {
                return Err(IpamError::Io {
                    path: lock_path,
                    source,
                })
            }
        };
        let lock = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| IpamError::Io {
            path: lock_path,
            source: e.into(),
        })?;
        let mut store = FileIpam {
            dir,
            _lock: lock,
            listing: Listing::default(),
        };
        store.listing = store.scan()?;
        Ok(store)
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> IpamError {
        let path = path.to_path_buf();
        move |source| IpamError::Io { path, source }
    }

    /// One pass over the directory. Temp files found here can only belong to an invocation
    /// killed while holding the lock (which this one holds now), so they are removed.
    fn scan(&self) -> Result<Listing, IpamError> {
        let rd = std::fs::read_dir(&self.dir).map_err(self.io(&self.dir))?;
        let mut l = Listing::default();
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(ip) = name.strip_prefix(RECORD_PREFIX) {
                if let Ok(ip) = ip.parse() {
                    l.claimed.insert(ip);
                }
            } else if let Some(rest) = name.strip_prefix(INDEX_PREFIX) {
                if let Some((h, ip)) = rest.split_once('-') {
                    if let (Ok(h), Ok(ip)) = (u64::from_str_radix(h, 16), ip.parse()) {
                        l.index.push((h, ip));
                    }
                }
            } else if let Some(ip) = name.strip_prefix(LAST_PREFIX) {
                l.last = ip.parse().ok();
            } else if name.starts_with(TEMP_PREFIX) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(l)
    }

    fn record_path(&self, ip: Ipv4Addr) -> PathBuf {
        self.dir.join(format!("{RECORD_PREFIX}{ip}"))
    }

    fn index_path(&self, container_id: &str, ifname: &str, ip: Ipv4Addr) -> PathBuf {
        let h = crate::attach::attachment_hash(container_id, ifname);
        self.dir.join(format!("{INDEX_PREFIX}{h:016x}-{ip}"))
    }

    /// The holder written in `ip-<ip>`; `None` if the record is gone.
    fn read_record(&self, ip: Ipv4Addr) -> Result<Option<(String, String)>, IpamError> {
        let path = self.record_path(ip);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(IpamError::Io { path, source }),
        };
        let mut lines = text.lines();
        Ok(match (lines.next(), lines.next()) {
            (Some(c), Some(i)) if !c.is_empty() && !i.is_empty() => Some((c.into(), i.into())),
            _ => Some((String::new(), String::new())),
        })
    }

    /// Create the allocation's two names; false if the address is taken.
    fn create_record(&self, a: &Allocation) -> Result<bool, IpamError> {
        let tmp = self
            .dir
            .join(format!("{TEMP_PREFIX}{}", std::process::id()));
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(RECORD_MODE)
                .open(&tmp)
                .map_err(self.io(&tmp))?;
            f.write_all(format!("{}\n{}\n", a.container_id, a.ifname).as_bytes())
                .map_err(self.io(&tmp))?;
        }
        let index = self.index_path(&a.container_id, &a.ifname, a.ip);
        let result = (|| {
            if let Err(e) = std::fs::hard_link(&tmp, &index) {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(IpamError::Io {
                        path: index.clone(),
                        source: e,
                    });
                }
                // A stale index of an earlier, killed ADD: replace it.
                std::fs::remove_file(&index).map_err(self.io(&index))?;
                std::fs::hard_link(&tmp, &index).map_err(self.io(&index))?;
            }
            let target = self.record_path(a.ip);
            match std::fs::hard_link(&tmp, &target) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let _ = std::fs::remove_file(&index);
                    Ok(false)
                }
                Err(source) => {
                    let _ = std::fs::remove_file(&index);
                    Err(IpamError::Io {
                        path: target,
                        source,
                    })
                }
            }
        })();
        let _ = std::fs::remove_file(&tmp);
        result
    }
}

impl IpamStore for FileIpam {
    fn used(&self) -> Result<BTreeSet<Ipv4Addr>, IpamError> {
        Ok(self.listing.claimed.clone())
    }

    fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let h = crate::attach::attachment_hash(container_id, ifname);
        let l = &self.listing;
        for (_, ip) in l.index.iter().filter(|(ih, _)| *ih == h) {
            if !l.claimed.contains(ip) {
                continue;
            }
            // The hash only narrows the search; the record says who really holds it.
            if let Some((c, i)) = self.read_record(*ip)? {
                if c == container_id && i == ifname {
                    return Ok(Some(*ip));
                }
            }
        }
        Ok(None)
    }

    fn list(&self) -> Result<Vec<Allocation>, IpamError> {
        let l = &self.listing;
        let mut out = Vec::new();
        for &ip in &l.claimed {
            if let Some((container_id, ifname)) = self.read_record(ip)? {
                out.push(Allocation {
                    ip,
                    container_id,
                    ifname,
                });
            }
        }
        // Index entries without a claim are leftovers of killed ADDs.
        for &(h, ip) in &l.index {
            if !l.claimed.contains(&ip) {
                let _ = std::fs::remove_file(self.dir.join(format!("{INDEX_PREFIX}{h:016x}-{ip}")));
            }
        }
        out.sort();
        Ok(out)
    }

    fn claim(&mut self, a: &Allocation) -> Result<bool, IpamError> {
        let made = self.create_record(a)?;
        if made {
            self.listing.claimed.insert(a.ip);
            let h = crate::attach::attachment_hash(&a.container_id, &a.ifname);
            self.listing.index.push((h, a.ip));
        }
        Ok(made)
    }

    fn remove(&mut self, a: &Allocation) -> Result<bool, IpamError> {
        let p = self.record_path(a.ip);
        let removed = match std::fs::remove_file(&p) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(source) => return Err(IpamError::Io { path: p, source }),
        };
        let _ = std::fs::remove_file(self.index_path(&a.container_id, &a.ifname, a.ip));
        self.listing.claimed.remove(&a.ip);
        let h = crate::attach::attachment_hash(&a.container_id, &a.ifname);
        self.listing.index.retain(|e| *e != (h, a.ip));
        Ok(removed)
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        self.listing.last
    }

    fn set_last_reserved(&mut self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let new = self.dir.join(format!("{LAST_PREFIX}{ip}"));
        let moved = match self.listing.last {
            Some(old) => std::fs::rename(self.dir.join(format!("{LAST_PREFIX}{old}")), &new),
            None => Err(std::io::ErrorKind::NotFound.into()),
        };
        if moved.is_err() {
            File::create(&new).map_err(self.io(&new))?;
        }
        self.listing.last = Some(ip);
        Ok(())
    }
}

/// Modes of the IPAM directory and of each record: root only (the umask can narrow them).
const RECORD_DIR_MODE: u32 = 0o700;
const RECORD_MODE: u32 = 0o600;

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn pod_addresses_skip_network_gateway_broadcast() {
        let v: Vec<String> = pod_addresses(net("10.1.2.0/29"))
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            v,
            ["10.1.2.2", "10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"]
        );
        assert_eq!(pod_addresses(net("10.1.2.0/30")).count(), 1);
    }

    #[test]
    fn choose_is_round_robin_and_wraps() {
        let r = net("10.1.2.0/29");
        let used: BTreeSet<Ipv4Addr> = ["10.1.2.2", "10.1.2.6"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(choose_ip(r, &used, None), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(
            choose_ip(r, &used, Some("10.1.2.4".parse().unwrap())),
            Some("10.1.2.5".parse().unwrap())
        );
        assert_eq!(
            choose_ip(r, &used, Some("10.1.2.5".parse().unwrap())),
            Some("10.1.2.3".parse().unwrap()),
            "wraps past the used end"
        );
        let full: BTreeSet<Ipv4Addr> = pod_addresses(r).collect();
        assert_eq!(choose_ip(r, &full, None), None);
    }

    /// The contract both stores keep.
    fn contract(store: &mut impl IpamStore) {
        let r = net("10.9.0.0/29"); // 5 pod addresses
        let a = store.allocate(r, "c1", "eth0").unwrap();
        assert_eq!(a.to_string(), "10.9.0.2");
        assert_eq!(
            store.allocate(r, "c1", "eth0").unwrap(),
            a,
            "same attachment, same address"
        );
        let b = store.allocate(r, "c1", "eth1").unwrap();
        assert_ne!(a, b, "another ifname is another attachment");
        assert_eq!(store.release("c1", "eth0").unwrap(), Some(a));
        assert_eq!(
            store.release("c1", "eth0").unwrap(),
            None,
            "releasing twice is fine"
        );
        let c = store.allocate(r, "c2", "eth0").unwrap();
        assert_ne!(c, a, "a freed address is not reused at once");
        for i in 3..6 {
            store.allocate(r, &format!("c{i}"), "eth0").unwrap();
        }
        let err = store.allocate(r, "c9", "eth0").unwrap_err();
        assert!(
            matches!(err, IpamError::Exhausted { capacity: 5, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("10.9.0.0/29"));
        let released = store
            .gc(&[("c2".into(), "eth0".into()), ("c3".into(), "eth0".into())])
            .unwrap();
        assert_eq!(released.len(), 3);
        let left: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|a| a.container_id)
            .collect();
        assert_eq!(left, ["c2", "c3"]);
    }

    #[test]
    fn memory_store_keeps_the_contract() {
        contract(&mut MemoryIpam::default());
    }

    #[test]
    fn file_store_keeps_the_contract_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileIpam::open(dir.path(), "weft").unwrap();
        contract(&mut s);
        let names: Vec<String> = std::fs::read_dir(dir.path().join("weft"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".tmp-")), "{names:?}");
    }

    #[test]
    fn records_are_readable_by_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileIpam::open(dir.path(), "weft").unwrap();
        s.allocate(net("10.9.0.0/29"), "c1", "eth0").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let d = dir.path().join("weft");
        assert_eq!(mode(&d), RECORD_DIR_MODE);
        let records: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("ip-") || n.starts_with("att-")
            })
            .collect();
        assert_eq!(records.len(), 2, "claim and index");
        for r in records {
            assert_eq!(mode(&r.path()), RECORD_MODE, "{:?}", r.file_name());
        }
    }

    #[test]
    fn file_store_serialises_parallel_allocations() {
        let dir = tempfile::tempdir().unwrap();
        let r = net("10.9.0.0/24");
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let d = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    FileIpam::open(&d, "weft")
                        .unwrap()
                        .allocate(r, &format!("c{i}"), "eth0")
                        .unwrap()
                })
            })
            .collect();
        let ips: BTreeSet<Ipv4Addr> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(ips.len(), 32, "32 parallel allocations, 32 addresses");
    }

    #[test]
    fn leftovers_of_killed_adds_never_block_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let r = net("10.9.0.0/29");
        std::fs::create_dir_all(dir.path().join("weft")).unwrap();
        std::fs::write(dir.path().join("weft/.tmp-999"), "half").unwrap();
        // A record emptied by a power cut, and an index whose claim was never made.
        std::fs::write(dir.path().join("weft/ip-10.9.0.7"), "").unwrap();
        std::fs::write(
            dir.path().join("weft/att-00000000000000aa-10.9.0.3"),
            "x\neth0\n",
        )
        .unwrap();
        let mut s = FileIpam::open(dir.path(), "weft").unwrap();
        assert!(s.used().unwrap().contains(&"10.9.0.7".parse().unwrap()));
        assert!(
            !dir.path().join("weft/.tmp-999").exists(),
            "temp files of killed invocations are removed"
        );
        let listed = s.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].container_id, "",
            "an unreadable holder is listed as nobody"
        );
        assert!(!dir
            .path()
            .join("weft/att-00000000000000aa-10.9.0.3")
            .exists());
        let released = s.gc(&[]).unwrap();
        assert_eq!(released.len(), 1);
        assert!(s.used().unwrap().is_empty());
        assert_eq!(s.allocate(r, "c1", "eth0").unwrap().to_string(), "10.9.0.2");
    }

    #[test]
    fn a_hash_collision_cannot_hand_over_someone_elses_address() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileIpam::open(dir.path(), "weft").unwrap();
        let ip = s.allocate(net("10.9.0.0/29"), "c1", "eth0").unwrap();
        // Forge an index entry for c2 pointing at c1's record, as a colliding hash would.
        let forged = s.index_path("c2", "eth0", ip);
        std::fs::write(&forged, "c1\neth0\n").unwrap();
        assert_eq!(s.find("c2", "eth0").unwrap(), None);
        assert_eq!(s.find("c1", "eth0").unwrap(), Some(ip));
    }
}
