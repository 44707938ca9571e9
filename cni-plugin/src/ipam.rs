//! Pod IP allocation from the host subnet, one address per family (IPv4, IPv6) per
//! attachment.
//!
//! The choice of an address is pure ([`choose_ip`]); the records live behind the small
//! [`IpamStore`] trait: [`FileIpam`] (one file per allocation under the data dir, a lock per
//! network) and `MemoryIpam` (compiled for tests only), both held to one contract suite.
//!
//! Record files are created atomically: the content is written to a temp file which is then
//! hard-linked to `att-<hash>-<address>` and `ip-<address>`; `link` fails if the name exists,
//! so two plugins can never claim one address and a killed ADD never leaves a half-written
//! record. A record left by a killed ADD holds a whole, valid (container, ifname) and is
//! released by DEL or GC. IPv4 and IPv6 records share the directory and the lock; an address
//! in a name is written in its canonical text form (`10.5.7.2`, `fc00:0:0:1::2`), so records
//! written before IPv6 support read back unchanged.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use nix::fcntl::{Flock, FlockArg};
use weft_backends::{addr_from_u128, addr_to_u128, IpFamily};

/// The slot of `family` in the per-family arrays (IPv4 first). Each attachment holds at most
/// one address of each family.
fn slot(family: IpFamily) -> usize {
    match family {
        IpFamily::V4 => 0,
        IpFamily::V6 => 1,
    }
}

/// One allocation: which attachment holds which address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Allocation {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {range}: all {capacity} pod addresses are allocated (GC releases those of deleted pods)")]
    Exhausted { range: IpNetwork, capacity: u128 },
    #[error("IPAM store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("IPAM record {path} is corrupt: {problem}")]
    Corrupt { path: PathBuf, problem: String },
}

/// The first and last pod address of `range`, as numbers: everything from the network
/// address + 2 (the network address and the gateway + 1 are never a pod's) up to the last
/// address, minus the broadcast address for IPv4 (IPv6 has none). `None` when no address is
/// left.
fn pod_bounds(range: IpNetwork) -> Option<(u128, u128)> {
    let first = addr_to_u128(range.network()).checked_add(2)?;
    let broadcast = addr_to_u128(range.broadcast());
    let last = match IpFamily::of_network(range) {
        IpFamily::V4 => broadcast.checked_sub(1)?,
        IpFamily::V6 => broadcast,
    };
    (first <= last).then_some((first, last))
}

/// How many pod addresses `range` has.
pub fn capacity(range: IpNetwork) -> u128 {
    pod_bounds(range).map_or(0, |(first, last)| last - first + 1)
}

/// Whether a pod may hold `ip` in `range` (same family, inside, not reserved).
pub fn is_pod_address(range: IpNetwork, ip: IpAddr) -> bool {
    IpFamily::of(ip) == IpFamily::of_network(range)
        && pod_bounds(range).is_some_and(|(first, last)| (first..=last).contains(&addr_to_u128(ip)))
}

/// The next free address of `range` after `last` (round-robin, so a freed address is not
/// handed out again at once), wrapping around; `None` when every address is used.
///
/// It never walks the whole range (an IPv6 /64 has 2^64 addresses): it probes consecutive
/// candidates, and among `k + 1` distinct candidates at most `k` can be used, where `k` is the
/// number of used addresses in the range. So it gives up only after probing every address
/// when the range really is full, which only a small range can be.
pub fn choose_ip(
    range: IpNetwork,
    used: &BTreeSet<IpAddr>,
    last: Option<IpAddr>,
) -> Option<IpAddr> {
    let family = IpFamily::of_network(range);
    let (first, end) = pod_bounds(range)?;
    let count = end - first + 1;
    let start = match last {
        Some(l) if is_pod_address(range, l) => {
            let next = addr_to_u128(l) - first + 1;
            if next == count {
                0
            } else {
                next
            }
        }
        _ => 0,
    };
    let used_here = used.iter().filter(|a| is_pod_address(range, **a)).count() as u128;
    let probes = count.min(used_here.saturating_add(1));
    (0..probes)
        .map(|i| {
            // (start + i) mod count, without overflowing near 2^128.
            let offset = if i < count - start {
                start + i
            } else {
                i - (count - start)
            };
            // Between the range's bounds, so always an address of its family.
            addr_from_u128(family, first + offset)
        })
        .find(|a| a.is_some_and(|a| !used.contains(&a)))
        .flatten()
}

/// Where allocations are kept: a few primitive operations per medium, and the allocation
/// policy (one address per family, reuse, round-robin choice, lost-claim retry, release, GC)
/// written once on top. Callers hold one store per invocation; implementations serialise
/// concurrent invocations themselves (a file lock for [`FileIpam`]).
pub trait IpamStore {
    /// The addresses in use, of both families. Cheap: ADD calls it every time.
    fn used(&self) -> Result<BTreeSet<IpAddr>, IpamError>;
    /// The addresses (container, ifname) holds, sorted (IPv4 first). Cheap: ADD and DEL call
    /// it.
    fn find(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError>;
    /// Every allocation with its holder, sorted. May read every record (GC, CHECK). A record
    /// whose holder cannot be read is listed with an empty container id, so GC frees it.
    fn list(&self) -> Result<Vec<Allocation>, IpamError>;
    /// Record `a` only if its address is free; false if it is taken.
    fn claim(&mut self, a: &Allocation) -> Result<bool, IpamError>;
    /// Remove the record of `a`; false if there was none.
    fn remove(&mut self, a: &Allocation) -> Result<bool, IpamError>;
    /// The address of `family` handed out last (that family's round-robin position).
    fn last_reserved(&self, family: IpFamily) -> Option<IpAddr>;
    /// Move the round-robin position of `ip`'s family to `ip`.
    fn set_last_reserved(&mut self, ip: IpAddr) -> Result<(), IpamError>;

    /// Allocate an address of `range` for (container, ifname), or return the one of that
    /// family it already holds in `range`. One it holds of that family outside `range` (the
    /// node's subnet changed) is released first: an attachment holds one address per family.
    fn allocate(
        &mut self,
        range: IpNetwork,
        container_id: &str,
        ifname: &str,
    ) -> Result<IpAddr, IpamError> {
        let family = IpFamily::of_network(range);
        for held in self.find(container_id, ifname)? {
            if IpFamily::of(held) != family {
                continue;
            }
            if is_pod_address(range, held) {
                return Ok(held);
            }
            self.remove(&Allocation {
                ip: held,
                container_id: container_id.into(),
                ifname: ifname.into(),
            })?;
        }
        let mut used = self.used()?;
        loop {
            let ip = choose_ip(range, &used, self.last_reserved(family)).ok_or(
                IpamError::Exhausted {
                    range,
                    capacity: capacity(range),
                },
            )?;
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

    /// Allocate one address in each of `ranges` (one range per family) for (container,
    /// ifname), all or nothing: if one fails, the addresses this call allocated are released
    /// again before the error is returned.
    fn allocate_all(
        &mut self,
        ranges: &[IpNetwork],
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let before = self.find(container_id, ifname)?;
        let mut got = Vec::with_capacity(ranges.len());
        for range in ranges {
            match self.allocate(*range, container_id, ifname) {
                Ok(ip) => got.push(ip),
                Err(e) => {
                    for ip in got.into_iter().filter(|ip| !before.contains(ip)) {
                        let _ = self.remove(&Allocation {
                            ip,
                            container_id: container_id.into(),
                            ifname: ifname.into(),
                        });
                    }
                    return Err(e);
                }
            }
        }
        Ok(got)
    }

    /// Release everything (container, ifname) holds; returns what was released (empty if
    /// nothing was held, which is not an error).
    fn release(&mut self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let mut released = Vec::new();
        for ip in self.find(container_id, ifname)? {
            let a = Allocation {
                ip,
                container_id: container_id.into(),
                ifname: ifname.into(),
            };
            if self.remove(&a)? {
                released.push(ip);
            }
        }
        Ok(released)
    }

    /// Release every allocation whose attachment is not in `keep`; returns what was released.
    fn gc(&mut self, keep: &[(String, String)]) -> Result<Vec<Allocation>, IpamError>
    where
        Self: Sized,
    {
        self.gc_with(keep, |_, _| Ok::<(), IpamError>(()))
    }

    /// [`IpamStore::gc`], calling `before_release(container_id, ifname)` once per attachment
    /// before its records go (the plugin removes the attachment's interfaces there, so an
    /// address is never freed while still in use). The first error stops the sweep.
    fn gc_with<E: From<IpamError>>(
        &mut self,
        keep: &[(String, String)],
        mut before_release: impl FnMut(&str, &str) -> Result<(), E>,
    ) -> Result<Vec<Allocation>, E>
    where
        Self: Sized,
    {
        let mut released = Vec::new();
        let mut unplugged = BTreeSet::new();
        for a in self.list()? {
            let kept = keep
                .iter()
                .any(|(c, i)| *c == a.container_id && *i == a.ifname);
            if kept {
                continue;
            }
            if unplugged.insert((a.container_id.clone(), a.ifname.clone())) {
                before_release(&a.container_id, &a.ifname)?;
            }
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
    last: [Option<IpAddr>; 2],
}

#[cfg(test)]
impl IpamStore for MemoryIpam {
    fn used(&self) -> Result<BTreeSet<IpAddr>, IpamError> {
        Ok(self.allocations.iter().map(|a| a.ip).collect())
    }

    fn find(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let mut v: Vec<IpAddr> = self
            .allocations
            .iter()
            .filter(|a| a.container_id == container_id && a.ifname == ifname)
            .map(|a| a.ip)
            .collect();
        v.sort();
        Ok(v)
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

    fn last_reserved(&self, family: IpFamily) -> Option<IpAddr> {
        self.last[slot(family)]
    }

    fn set_last_reserved(&mut self, ip: IpAddr) -> Result<(), IpamError> {
        self.last[slot(IpFamily::of(ip))] = Some(ip);
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
/// record emptied by a power cut is listed with no holder and freed by GC. A dual-stack
/// attachment has two allocations, one per family.
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
/// The round-robin position of a family is a name too, `last-<address>`, moved by one
/// rename; there is one per family.
const LAST_PREFIX: &str = "last-";

/// What one directory listing says: claimed addresses, index entries (hash, address) and
/// the round-robin position of each family.
#[derive(Debug, Default)]
struct Listing {
    claimed: BTreeSet<IpAddr>,
    index: Vec<(u64, IpAddr)>,
    last: [Option<IpAddr>; 2],
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
                if let Ok(ip) = ip.parse::<IpAddr>() {
                    l.last[slot(IpFamily::of(ip))] = Some(ip);
                }
            } else if name.starts_with(TEMP_PREFIX) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(l)
    }

    fn record_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(format!("{RECORD_PREFIX}{ip}"))
    }

    fn index_path(&self, container_id: &str, ifname: &str, ip: IpAddr) -> PathBuf {
        let h = crate::attach::attachment_hash(container_id, ifname);
        self.dir.join(format!("{INDEX_PREFIX}{h:016x}-{ip}"))
    }

    /// The holder written in `ip-<ip>`; `None` if the record is gone.
    fn read_record(&self, ip: IpAddr) -> Result<Option<(String, String)>, IpamError> {
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
    fn used(&self) -> Result<BTreeSet<IpAddr>, IpamError> {
        Ok(self.listing.claimed.clone())
    }

    fn find(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
        let h = crate::attach::attachment_hash(container_id, ifname);
        let l = &self.listing;
        let mut held = Vec::new();
        for (_, ip) in l.index.iter().filter(|(ih, _)| *ih == h) {
            if !l.claimed.contains(ip) || held.contains(ip) {
                continue;
            }
            // The hash only narrows the search; the record says who really holds it.
            if let Some((c, i)) = self.read_record(*ip)? {
                if c == container_id && i == ifname {
                    held.push(*ip);
                }
            }
        }
        held.sort();
        Ok(held)
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

    fn last_reserved(&self, family: IpFamily) -> Option<IpAddr> {
        self.listing.last[slot(family)]
    }

    fn set_last_reserved(&mut self, ip: IpAddr) -> Result<(), IpamError> {
        let slot = slot(IpFamily::of(ip));
        let new = self.dir.join(format!("{LAST_PREFIX}{ip}"));
        let moved = match self.listing.last[slot] {
            Some(old) => std::fs::rename(self.dir.join(format!("{LAST_PREFIX}{old}")), &new),
            None => Err(std::io::ErrorKind::NotFound.into()),
        };
        if moved.is_err() {
            File::create(&new).map_err(self.io(&new))?;
        }
        self.listing.last[slot] = Some(ip);
        Ok(())
    }
}

/// Modes of the IPAM directory and of each record: root only (the umask can narrow them).
const RECORD_DIR_MODE: u32 = 0o700;
const RECORD_MODE: u32 = 0o600;

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(v: &[&str]) -> BTreeSet<IpAddr> {
        v.iter().map(|s| ip(s)).collect()
    }

    #[test]
    fn pod_addresses_skip_network_gateway_and_broadcast() {
        assert_eq!(capacity(net("10.1.2.0/29")), 5);
        assert_eq!(capacity(net("10.1.2.0/30")), 1);
        assert_eq!(capacity(net("10.1.2.0/31")), 0);
        for (a, pod) in [
            ("10.1.2.0", false),
            ("10.1.2.1", false),
            ("10.1.2.2", true),
            ("10.1.2.6", true),
            ("10.1.2.7", false),
            ("10.1.3.2", false),
            ("fc00::2", false),
        ] {
            assert_eq!(is_pod_address(net("10.1.2.0/29"), ip(a)), pod, "{a}");
        }
        // IPv6 has no broadcast address: the last one is a pod's too.
        assert_eq!(capacity(net("fc00::/126")), 2);
        assert_eq!(capacity(net("fc00::/127")), 0);
        assert_eq!(capacity(net("fc00:0:0:1::/64")), (1u128 << 64) - 2);
        assert_eq!(capacity(net("::/0")), u128::MAX - 1);
        for (a, pod) in [
            ("fc00:0:0:1::", false),
            ("fc00:0:0:1::1", false),
            ("fc00:0:0:1::2", true),
            ("fc00:0:0:1:ffff:ffff:ffff:ffff", true),
            ("fc00:0:0:2::2", false),
            ("10.0.0.2", false),
        ] {
            assert_eq!(is_pod_address(net("fc00:0:0:1::/64"), ip(a)), pod, "{a}");
        }
    }

    #[test]
    fn choose_is_round_robin_and_wraps() {
        let r = net("10.1.2.0/29");
        let used = set(&["10.1.2.2", "10.1.2.6"]);
        assert_eq!(choose_ip(r, &used, None), Some(ip("10.1.2.3")));
        assert_eq!(
            choose_ip(r, &used, Some(ip("10.1.2.4"))),
            Some(ip("10.1.2.5"))
        );
        assert_eq!(
            choose_ip(r, &used, Some(ip("10.1.2.5"))),
            Some(ip("10.1.2.3")),
            "wraps past the used end"
        );
        assert_eq!(
            choose_ip(r, &used, Some(ip("fc00::9"))),
            Some(ip("10.1.2.3")),
            "another family's position means: start at the beginning"
        );
        let full = set(&["10.1.2.2", "10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"]);
        assert_eq!(choose_ip(r, &full, None), None);
        assert_eq!(choose_ip(net("10.1.2.0/31"), &BTreeSet::new(), None), None);
    }

    #[test]
    fn choose_in_a_huge_ipv6_range_is_round_robin_and_bounded() {
        let r = net("fc00:0:0:1::/64");
        let none = BTreeSet::new();
        assert_eq!(choose_ip(r, &none, None), Some(ip("fc00:0:0:1::2")));
        assert_eq!(
            choose_ip(r, &none, Some(ip("fc00:0:0:1::2"))),
            Some(ip("fc00:0:0:1::3"))
        );
        assert_eq!(
            choose_ip(r, &none, Some(ip("fc00:0:0:1:ffff:ffff:ffff:ffff"))),
            Some(ip("fc00:0:0:1::2")),
            "wraps after the last address"
        );
        // Ten thousand used addresses in a row: found right after them, without walking
        // the 2^64 addresses of the range.
        let dense: BTreeSet<IpAddr> = (2u128..10_002)
            .map(|n| IpAddr::V6(Ipv6Addr::from(u128::from(ip6("fc00:0:0:1::")) + n)))
            .collect();
        let started = std::time::Instant::now();
        assert_eq!(
            choose_ip(r, &dense, Some(ip("fc00:0:0:1:ffff:ffff:ffff:ffff"))),
            Some(ip("fc00:0:0:1::2712"))
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // The whole IPv6 space as a range does not overflow either.
        assert_eq!(
            choose_ip(
                net("::/0"),
                &none,
                Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
            ),
            Some(ip("::2"))
        );
        // A small IPv6 range fills up.
        let small = net("fc00::/126");
        assert_eq!(choose_ip(small, &set(&["fc00::2", "fc00::3"]), None), None);
        assert_eq!(
            choose_ip(small, &set(&["fc00::2"]), Some(ip("fc00::3"))),
            Some(ip("fc00::3"))
        );
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// The single-family contract both stores keep, for a small range of either family.
    fn contract(store: &mut impl IpamStore, r: IpNetwork) {
        let a = store.allocate(r, "c1", "eth0").unwrap();
        assert_eq!(
            a,
            weft_backends::nth_address(r, 2).unwrap(),
            "the first pod address is the network address + 2"
        );
        assert_eq!(
            store.allocate(r, "c1", "eth0").unwrap(),
            a,
            "same attachment, same address"
        );
        let b = store.allocate(r, "c1", "eth1").unwrap();
        assert_ne!(a, b, "another ifname is another attachment");
        assert_eq!(store.release("c1", "eth0").unwrap(), vec![a]);
        assert_eq!(
            store.release("c1", "eth0").unwrap(),
            Vec::<IpAddr>::new(),
            "releasing twice is fine"
        );
        let c = store.allocate(r, "c2", "eth0").unwrap();
        assert_ne!(c, a, "a freed address is not reused at once");
        let cap = capacity(r);
        for i in 3..=cap {
            store.allocate(r, &format!("c{i}"), "eth0").unwrap();
        }
        let err = store.allocate(r, "c99", "eth0").unwrap_err();
        assert!(
            matches!(err, IpamError::Exhausted { capacity, .. } if capacity == cap),
            "{err}"
        );
        assert!(err.to_string().contains(&r.to_string()), "{err}");
        let released = store
            .gc(&[("c2".into(), "eth0".into()), ("c3".into(), "eth0".into())])
            .unwrap();
        assert_eq!(released.len() as u128, cap - 2);
        let left: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|a| a.container_id)
            .collect();
        assert_eq!(left, ["c2", "c3"]);
    }

    /// The dual-stack contract: one address per family per attachment, all or nothing.
    fn dual_stack_contract(store: &mut impl IpamStore) {
        let v4 = net("10.9.0.0/24");
        let v6 = net("fc00:0:0:9::/125"); // six pod addresses, ::2 to ::7
        let both = [v4, v6];
        let got = store.allocate_all(&both, "c1", "eth0").unwrap();
        assert_eq!(got, vec![ip("10.9.0.2"), ip("fc00:0:0:9::2")]);
        assert_eq!(store.find("c1", "eth0").unwrap(), got);
        assert_eq!(
            store.allocate_all(&both, "c1", "eth0").unwrap(),
            got,
            "a retried ADD gets the same pair"
        );
        let c2 = store.allocate_all(&both, "c2", "eth0").unwrap();
        assert_eq!(c2, vec![ip("10.9.0.3"), ip("fc00:0:0:9::3")]);
        // The IPv6 range runs out first: the IPv4 address of that attempt is given back.
        for i in 3..7 {
            store.allocate_all(&both, &format!("c{i}"), "eth0").unwrap();
        }
        let err = store.allocate_all(&both, "c7", "eth0").unwrap_err();
        assert!(
            matches!(err, IpamError::Exhausted { capacity: 6, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("fc00:0:0:9::/125"), "{err}");
        assert_eq!(store.find("c7", "eth0").unwrap(), Vec::<IpAddr>::new());
        assert!(!store.used().unwrap().contains(&ip("10.9.0.8")));
        // DEL releases both families.
        assert_eq!(
            store.release("c2", "eth0").unwrap(),
            vec![ip("10.9.0.3"), ip("fc00:0:0:9::3")]
        );
        assert_eq!(store.release("c2", "eth0").unwrap(), Vec::<IpAddr>::new());
        // Round-robin per family: the freed pair is not reused at once.
        let c7 = store.allocate_all(&both, "c7", "eth0").unwrap();
        assert!(c7[0].is_ipv4() && c7[0] != ip("10.9.0.3"), "{c7:?}");
        assert_eq!(
            c7[1],
            ip("fc00:0:0:9::3"),
            "IPv6 wrapped to the only free one"
        );
        // A node whose IPv6 subnet changed: the attachment's old IPv6 address is replaced.
        let moved = net("fc00:0:0:a::/64");
        let again = store.allocate_all(&[v4, moved], "c1", "eth0").unwrap();
        assert_eq!(again, vec![ip("10.9.0.2"), ip("fc00:0:0:a::2")]);
        assert!(!store.used().unwrap().contains(&ip("fc00:0:0:9::2")));
        // GC: each attachment's interfaces are removed once, then both its records go.
        let mut unplugged = Vec::new();
        let released = store
            .gc_with(&[("c3".into(), "eth0".into())], |c, i| {
                unplugged.push(format!("{c}/{i}"));
                Ok::<(), IpamError>(())
            })
            .unwrap();
        unplugged.sort();
        assert_eq!(
            unplugged,
            ["c1/eth0", "c4/eth0", "c5/eth0", "c6/eth0", "c7/eth0"]
        );
        assert_eq!(released.len(), 10);
        assert_eq!(store.used().unwrap().len(), 2);
        // IPv6 only.
        assert_eq!(store.allocate_all(&[v6], "c8", "eth0").unwrap().len(), 1);
    }

    #[test]
    fn memory_store_keeps_the_contract() {
        contract(&mut MemoryIpam::default(), net("10.9.0.0/29"));
        contract(&mut MemoryIpam::default(), net("fc00:0:0:9::/125"));
        dual_stack_contract(&mut MemoryIpam::default());
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn file_store_keeps_the_contract_and_leaves_no_temp_files() {
        for (range, sub) in [(net("10.9.0.0/29"), "v4"), (net("fc00:0:0:9::/125"), "v6")] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = FileIpam::open(dir.path(), sub).unwrap();
            contract(&mut s, range);
            let names = names(&dir.path().join(sub));
            assert!(names.iter().all(|n| !n.starts_with(".tmp-")), "{names:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileIpam::open(dir.path(), "weft").unwrap();
        dual_stack_contract(&mut s);
        drop(s);
        let names = names(&dir.path().join("weft"));
        assert!(names.iter().all(|n| !n.starts_with(".tmp-")), "{names:?}");
        // A fresh open reads the IPv6 names back.
        let s = FileIpam::open(dir.path(), "weft").unwrap();
        assert_eq!(s.find("c8", "eth0").unwrap().len(), 1);
        assert!(s.last_reserved(IpFamily::V4).is_some_and(|a| a.is_ipv4()));
        assert!(s.last_reserved(IpFamily::V6).is_some_and(|a| a.is_ipv6()));
    }

    #[test]
    fn records_written_before_ipv6_support_are_still_read() {
        // The layout of the IPv4-only plugin, written by hand: a claim and its index (hard
        // links of one file) and the round-robin position.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("weft");
        std::fs::create_dir_all(&d).unwrap();
        let h = crate::attach::attachment_hash("old", "eth0");
        std::fs::write(d.join("ip-10.9.0.2"), "old\neth0\n").unwrap();
        std::fs::hard_link(
            d.join("ip-10.9.0.2"),
            d.join(format!("att-{h:016x}-10.9.0.2")),
        )
        .unwrap();
        std::fs::write(d.join("last-10.9.0.2"), "").unwrap();
        let mut s = FileIpam::open(dir.path(), "weft").unwrap();
        assert_eq!(s.find("old", "eth0").unwrap(), vec![ip("10.9.0.2")]);
        assert_eq!(s.last_reserved(IpFamily::V4), Some(ip("10.9.0.2")));
        assert_eq!(s.last_reserved(IpFamily::V6), None);
        let both = [net("10.9.0.0/24"), net("fc00::/64")];
        assert_eq!(
            s.allocate_all(&both, "new", "eth0").unwrap(),
            vec![ip("10.9.0.3"), ip("fc00::2")],
            "the IPv4 position carries on"
        );
        assert_eq!(s.release("old", "eth0").unwrap(), vec![ip("10.9.0.2")]);
        drop(s);
        let n = names(&d);
        assert!(n.contains(&"last-10.9.0.3".to_string()), "{n:?}");
        assert!(n.contains(&"last-fc00::2".to_string()), "{n:?}");
        assert!(n.contains(&"ip-fc00::2".to_string()), "{n:?}");
    }

    #[test]
    fn records_are_readable_by_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileIpam::open(dir.path(), "weft").unwrap();
        s.allocate_all(&[net("10.9.0.0/29"), net("fc00::/64")], "c1", "eth0")
            .unwrap();
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
        assert_eq!(records.len(), 4, "claim and index, per family");
        for r in records {
            assert_eq!(mode(&r.path()), RECORD_MODE, "{:?}", r.file_name());
        }
    }

    #[test]
    fn file_store_serialises_parallel_allocations() {
        let dir = tempfile::tempdir().unwrap();
        let both = [net("10.9.0.0/24"), net("fc00:0:0:9::/64")];
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let d = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    FileIpam::open(&d, "weft")
                        .unwrap()
                        .allocate_all(&both, &format!("c{i}"), "eth0")
                        .unwrap()
                })
            })
            .collect();
        let ips: BTreeSet<IpAddr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(ips.iter().filter(|a| a.is_ipv4()).count(), 32);
        assert_eq!(
            ips.iter().filter(|a| a.is_ipv6()).count(),
            32,
            "32 parallel dual-stack allocations, 32 distinct IPv6 addresses"
        );
    }

    #[test]
    fn leftovers_of_killed_adds_never_block_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let r = net("10.9.0.0/29");
        std::fs::create_dir_all(dir.path().join("weft")).unwrap();
        std::fs::write(dir.path().join("weft/.tmp-999"), "half").unwrap();
        // A record emptied by a power cut, and an index whose claim was never made.
        std::fs::write(dir.path().join("weft/ip-10.9.0.7"), "").unwrap();
        std::fs::write(dir.path().join("weft/ip-fc00::9"), "").unwrap();
        std::fs::write(
            dir.path().join("weft/att-00000000000000aa-10.9.0.3"),
            "x\neth0\n",
        )
        .unwrap();
        let mut s = FileIpam::open(dir.path(), "weft").unwrap();
        assert!(s.used().unwrap().contains(&ip("10.9.0.7")));
        assert!(s.used().unwrap().contains(&ip("fc00::9")));
        assert!(
            !dir.path().join("weft/.tmp-999").exists(),
            "temp files of killed invocations are removed"
        );
        let listed = s.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert!(
            listed.iter().all(|a| a.container_id.is_empty()),
            "an unreadable holder is listed as nobody"
        );
        assert!(!dir
            .path()
            .join("weft/att-00000000000000aa-10.9.0.3")
            .exists());
        let released = s.gc(&[]).unwrap();
        assert_eq!(released.len(), 2);
        assert!(s.used().unwrap().is_empty());
        assert_eq!(s.allocate(r, "c1", "eth0").unwrap(), ip("10.9.0.2"));
    }

    #[test]
    fn a_hash_collision_cannot_hand_over_someone_elses_address() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileIpam::open(dir.path(), "weft").unwrap();
        let ips = s
            .allocate_all(&[net("10.9.0.0/29"), net("fc00::/64")], "c1", "eth0")
            .unwrap();
        // Forge index entries for c2 pointing at c1's records, as a colliding hash would.
        for ip in &ips {
            let forged = s.index_path("c2", "eth0", *ip);
            std::fs::write(&forged, "c1\neth0\n").unwrap();
        }
        drop(s);
        let s = FileIpam::open(dir.path(), "weft").unwrap();
        assert_eq!(s.find("c2", "eth0").unwrap(), Vec::<IpAddr>::new());
        assert_eq!(s.find("c1", "eth0").unwrap(), ips);
    }
}
