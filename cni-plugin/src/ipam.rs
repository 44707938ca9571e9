//! Pod IP allocation from the host subnet.
//!
//! The choice of an address is pure ([`choose_ip`]); the records live behind the small
//! [`IpamStore`] trait: [`FileIpam`] (one file per allocation under the data dir, a lock per
//! network) and [`MemoryIpam`] for tests, both held to one contract suite.
//!
//! Record files are created atomically: the content is written to a temp file which is then
//! hard-linked to `ip-<address>`; `link` fails if the name exists, so two plugins can never
//! claim one address and a killed ADD never leaves a half-written record. A record left by a
//! killed ADD holds a whole, valid (container, ifname) and is released by DEL or GC.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
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
    /// Every allocation, sorted.
    fn list(&self) -> Result<Vec<Allocation>, IpamError>;
    /// Record `a` only if its address is free; false if it is taken.
    fn claim(&mut self, a: &Allocation) -> Result<bool, IpamError>;
    /// Remove the record of `ip`; false if there was none.
    fn remove(&mut self, ip: Ipv4Addr) -> Result<bool, IpamError>;
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
        let existing = self.list()?;
        if let Some(a) = existing
            .iter()
            .find(|a| a.container_id == container_id && a.ifname == ifname)
        {
            return Ok(a.ip);
        }
        let mut used: BTreeSet<Ipv4Addr> = existing.iter().map(|a| a.ip).collect();
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
        for a in self.list()? {
            if a.container_id == container_id && a.ifname == ifname && self.remove(a.ip)? {
                return Ok(Some(a.ip));
            }
        }
        Ok(None)
    }

    /// Release every allocation whose attachment is not in `keep`; returns what was released.
    fn gc(&mut self, keep: &[(String, String)]) -> Result<Vec<Allocation>, IpamError> {
        let mut released = Vec::new();
        for a in self.list()? {
            let kept = keep
                .iter()
                .any(|(c, i)| *c == a.container_id && *i == a.ifname);
            if !kept && self.remove(a.ip)? {
                released.push(a);
            }
        }
        Ok(released)
    }
}

/// In-memory store for tests.
#[derive(Debug, Default)]
pub struct MemoryIpam {
    allocations: Vec<Allocation>,
    last: Option<Ipv4Addr>,
}

impl IpamStore for MemoryIpam {
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

    fn remove(&mut self, ip: Ipv4Addr) -> Result<bool, IpamError> {
        let before = self.allocations.len();
        self.allocations.retain(|a| a.ip != ip);
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
#[derive(Debug)]
pub struct FileIpam {
    dir: PathBuf,
    _lock: Flock<File>,
}

const RECORD_PREFIX: &str = "ip-";
const LAST_FILE: &str = "last_reserved_ip";

impl FileIpam {
    /// Open (creating) the store of `network` and take its lock, waiting for other plugin
    /// invocations to finish. `network` must already be validated as a safe name.
    pub fn open(data_dir: &Path, network: &str) -> Result<FileIpam, IpamError> {
        let dir = data_dir.join(network);
        let io = |source| IpamError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let lock_path = dir.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| IpamError::Io {
                path: lock_path.clone(),
                source,
            })?;
        let lock = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| IpamError::Io {
            path: lock_path,
            source: e.into(),
        })?;
        let store = FileIpam { dir, _lock: lock };
        store.remove_temp_files();
        Ok(store)
    }

    /// Temp files can only be left by an invocation killed while holding the lock.
    fn remove_temp_files(&self) {
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    fn record_path(&self, ip: Ipv4Addr) -> PathBuf {
        self.dir.join(format!("{RECORD_PREFIX}{ip}"))
    }

    fn read_record(path: &Path, ip: Ipv4Addr) -> Result<Allocation, IpamError> {
        let text = std::fs::read_to_string(path).map_err(|source| IpamError::Io {
            path: path.into(),
            source,
        })?;
        let mut lines = text.lines();
        match (lines.next(), lines.next()) {
            (Some(c), Some(i)) if !c.is_empty() && !i.is_empty() => Ok(Allocation {
                ip,
                container_id: c.into(),
                ifname: i.into(),
            }),
            _ => Err(IpamError::Corrupt {
                path: path.into(),
                problem: "expected a container id line and an ifname line".into(),
            }),
        }
    }

    /// Create `ip-<ip>` holding the record, atomically; false if the address is taken.
    fn create_record(&self, a: &Allocation) -> Result<bool, IpamError> {
        let tmp = self.dir.join(format!(".tmp-{}", std::process::id()));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| IpamError::Io { path: p, source }
        };
        {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(format!("{}\n{}\n", a.container_id, a.ifname).as_bytes())
                .map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        let target = self.record_path(a.ip);
        let linked = std::fs::hard_link(&tmp, &target);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(IpamError::Io {
                path: target,
                source: e,
            }),
        }
    }
}

impl IpamStore for FileIpam {
    fn claim(&mut self, a: &Allocation) -> Result<bool, IpamError> {
        self.create_record(a)
    }

    fn remove(&mut self, ip: Ipv4Addr) -> Result<bool, IpamError> {
        let p = self.record_path(ip);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(IpamError::Io { path: p, source }),
        }
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        std::fs::read_to_string(self.dir.join(LAST_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn set_last_reserved(&mut self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let last = self.dir.join(LAST_FILE);
        std::fs::write(&last, ip.to_string()).map_err(|source| IpamError::Io { path: last, source })
    }

    fn list(&self) -> Result<Vec<Allocation>, IpamError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|source| IpamError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(ip) = name
                .strip_prefix(RECORD_PREFIX)
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            out.push(Self::read_record(&e.path(), ip)?);
        }
        out.sort();
        Ok(out)
    }
}

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
    fn contract(store: &mut dyn IpamStore) {
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
    fn a_leftover_temp_file_and_a_corrupt_record_are_handled() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("weft")).unwrap();
        std::fs::write(dir.path().join("weft/.tmp-999"), "half").unwrap();
        let s = FileIpam::open(dir.path(), "weft").unwrap();
        assert!(
            !dir.path().join("weft/.tmp-999").exists(),
            "temp files of killed invocations are removed"
        );
        std::fs::write(dir.path().join("weft/ip-10.9.0.7"), "").unwrap();
        let err = s.list().unwrap_err();
        assert!(err.to_string().contains("ip-10.9.0.7"), "{err}");
    }
}
