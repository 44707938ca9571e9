//! Pure subnet choice: which lease is mine, which subnet is free. No I/O.
//!
//! Each enabled address family has its own pool; a node's key names one subnet per family
//! (`10.5.52.0-24`, `10.5.52.0-24&fc00::-64`, or `0.0.0.0-0&fc00::-64` when IPv6-only).
//! Taken subnets are kept as index ranges, so an IPv6 pool of billions of subnets is never
//! enumerated.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::config::pool::SubnetPool;
use crate::config::NetConfig;
use crate::lease::{LeaseAttrs, SubnetKey, NO_V4};
use crate::store::StoredEntry;

/// Who this node is, for recognising its own lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub node_name: String,
    pub public_ip: Option<Ipv4Addr>,
    pub public_ip_v6: Option<Ipv6Addr>,
}

/// How an existing entry was recognised as ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchedBy {
    NodeName,
    PublicIp,
}

impl std::fmt::Display for MatchedBy {
    /// The lease field that matched, as the lease JSON spells it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MatchedBy::NodeName => "NodeName",
            MatchedBy::PublicIp => "PublicIP",
        })
    }
}

/// The subnets a node had before (from subnet.env), tried before a random pick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Previous {
    pub v4: Option<Ipv4Network>,
    pub v6: Option<Ipv6Network>,
}

/// What the keeper should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// An existing entry is ours and fits the config: keep it (rewriting its value if it
    /// differs from ours).
    Adopt {
        entry: StoredEntry,
        key: SubnetKey,
        matched_by: MatchedBy,
    },
    /// Claim this free key.
    Claim {
        key: SubnetKey,
        /// True when every subnet in it is one this node had before.
        previous: bool,
        /// This node's lease for part of the key (a family was enabled or changed since it
        /// was written): it is deleted once the new key is held, and its subnets kept.
        replaces: Option<StoredEntry>,
    },
    /// No free subnet left in a pool.
    Exhausted { pool: SubnetPool, pool_size: u128 },
}

/// Does `attrs` describe this node? A NodeName, when the lease has one, decides alone;
/// a lease without one (written by flannel) is matched by PublicIP (or PublicIPv6).
pub fn is_mine(attrs: &LeaseAttrs, me: &Identity) -> Option<MatchedBy> {
    match &attrs.node_name {
        Some(n) if *n == me.node_name => Some(MatchedBy::NodeName),
        Some(_) => None,
        None if me.public_ip.is_some() && attrs.public_ip == me.public_ip => {
            Some(MatchedBy::PublicIp)
        }
        None if me.public_ip_v6.is_some() && attrs.public_ip_v6 == me.public_ip_v6 => {
            Some(MatchedBy::PublicIp)
        }
        None => None,
    }
}

/// Taken pool indices of one family, as disjoint inclusive ranges (start → end).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    ranges: BTreeMap<u128, u128>,
}

impl Taken {
    /// Mark `lo..=hi` taken, merging with neighbouring ranges.
    pub fn insert(&mut self, mut lo: u128, mut hi: u128) {
        // A range starting at or before hi+1 and ending at or after lo-1 touches ours.
        let touching: Vec<(u128, u128)> = self
            .ranges
            .range(..=hi.saturating_add(1))
            .rev()
            .take_while(|(_, &e)| e.saturating_add(1) >= lo)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            lo = lo.min(s);
            hi = hi.max(e);
        }
        self.ranges.insert(lo, hi);
    }

    pub fn contains(&self, i: u128) -> bool {
        self.ranges
            .range(..=i)
            .next_back()
            .is_some_and(|(_, &e)| e >= i)
    }

    pub fn count(&self) -> u128 {
        self.ranges.iter().map(|(s, e)| e - s + 1).sum()
    }

    /// The k-th (0-based) index not taken.
    fn nth_free(&self, mut k: u128) -> u128 {
        let mut idx = 0u128;
        for (&s, &e) in &self.ranges {
            if s > idx + k {
                break;
            }
            k -= s - idx;
            idx = e + 1;
        }
        idx + k
    }
}

/// The pool subnets taken by existing keys, per family (any key overlapping a pool subnet,
/// valid or not: garbage under a subnet's key still blocks it).
#[derive(Clone, Debug, Default)]
pub struct Occupancy {
    pub v4: Taken,
    pub v6: Taken,
}

/// Read what a key names, leniently: a key that does not parse canonically may still start
/// with addresses we can read; be conservative and block what it seems to name.
fn key_parts(name: &str) -> (Option<Ipv4Network>, Option<Ipv6Network>) {
    if let Ok(k) = name.parse::<SubnetKey>() {
        return (k.v4_subnet(), k.v6);
    }
    let mut parts = name.splitn(2, '&');
    let v4 = parts
        .next()
        .and_then(|p| p.split_once('-'))
        .and_then(|(ip, len)| Ipv4Network::new(ip.parse().ok()?, len.parse().ok()?).ok())
        .filter(|n| *n != NO_V4);
    let v6 = parts
        .next()
        .and_then(|p| p.split_once('-'))
        .and_then(|(ip, len)| Ipv6Network::new(ip.parse().ok()?, len.parse().ok()?).ok());
    (v4, v6)
}

impl Occupancy {
    pub fn from_entries<'a>(cfg: &NetConfig, names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut occ = Occupancy::default();
        for name in names {
            occ.mark_name(cfg, name);
        }
        occ
    }

    /// Mark every pool subnet that the key `name` overlaps.
    pub fn mark_name(&mut self, cfg: &NetConfig, name: &str) {
        let (v4, v6) = key_parts(name);
        self.mark(cfg, v4.map(IpNetwork::V4));
        self.mark(cfg, v6.map(IpNetwork::V6));
    }

    /// Mark the pool subnets of every part of `key`.
    pub fn mark_key(&mut self, cfg: &NetConfig, key: &SubnetKey) {
        self.mark(cfg, key.v4_subnet().map(IpNetwork::V4));
        self.mark(cfg, key.v6.map(IpNetwork::V6));
    }

    fn mark(&mut self, cfg: &NetConfig, net: Option<IpNetwork>) {
        let Some(net) = net else { return };
        let (pool, taken) = match net {
            IpNetwork::V4(_) => (cfg.ipv4.as_ref(), &mut self.v4),
            IpNetwork::V6(_) => (cfg.ipv6.as_ref(), &mut self.v6),
        };
        if let Some((lo, hi)) = pool.and_then(|p| p.overlapped(net)) {
            taken.insert(lo, hi);
        }
    }
}

/// How much of an existing key still fits the config: each family's subnet if it fits.
fn fitting_parts(cfg: &NetConfig, key: &SubnetKey) -> (Option<Ipv4Network>, Option<Ipv6Network>) {
    let v4 = key
        .v4_subnet()
        .filter(|s| cfg.ipv4.as_ref().is_some_and(|p| p.fits(IpNetwork::V4(*s))));
    let v6 = key
        .v6
        .filter(|s| cfg.ipv6.as_ref().is_some_and(|p| p.fits(IpNetwork::V6(*s))));
    (v4, v6)
}

/// True when `key` has exactly the families the config enables, each fitting its pool.
fn key_fits(cfg: &NetConfig, key: &SubnetKey) -> bool {
    let (v4, v6) = fitting_parts(cfg, key);
    v4.is_some() == cfg.ipv4.is_some()
        && v6.is_some() == cfg.ipv6.is_some()
        && key.v4_subnet().is_some() == cfg.ipv4.is_some()
        && key.v6.is_some() == cfg.ipv6.is_some()
}

/// Choose a free subnet of `pool`: `preferred` if it is in the pool and free, else the
/// `random`-th free one. `None` when the pool is full.
fn choose(
    pool: &SubnetPool,
    taken: &Taken,
    preferred: Option<IpNetwork>,
    random: &mut dyn FnMut(u128) -> u128,
) -> Option<IpNetwork> {
    if let Some(idx) = preferred.and_then(|p| pool.index(p)) {
        if !taken.contains(idx) {
            return pool.subnet(idx);
        }
    }
    let size = pool.size();
    let free = size - taken.count().min(size);
    if free == 0 {
        return None;
    }
    let idx = taken.nth_free(random(free));
    Some(pool.subnet(idx).expect("index within pool"))
}

/// Decide what to do, in the order of the design: my lease (by NodeName, else PublicIP),
/// then my previous subnets if free, then random free subnets. `random` maps a bound `n`
/// to a value in `0..n`.
pub fn decide(
    cfg: &NetConfig,
    me: &Identity,
    entries: &[StoredEntry],
    occupancy: &Occupancy,
    previous: Previous,
    random: &mut dyn FnMut(u128) -> u128,
) -> Decision {
    // The best entry of mine: by NodeName before PublicIP, a full fit before a partial one.
    let mut best: Option<(u8, StoredEntry, SubnetKey, MatchedBy)> = None;
    for e in entries {
        let Ok(key) = e.name.parse::<SubnetKey>() else {
            continue;
        };
        let (v4, v6) = fitting_parts(cfg, &key);
        if v4.is_none() && v6.is_none() {
            continue;
        }
        let Ok(attrs) = LeaseAttrs::decode(&e.value) else {
            continue;
        };
        let Some(by) = is_mine(&attrs, me) else {
            continue;
        };
        let rank = match (by, key_fits(cfg, &key)) {
            (MatchedBy::NodeName, true) => 0,
            (MatchedBy::NodeName, false) => 1,
            (MatchedBy::PublicIp, true) => 2,
            (MatchedBy::PublicIp, false) => 3,
        };
        if best.as_ref().is_none_or(|(r, ..)| rank < *r) {
            best = Some((rank, e.clone(), key, by));
        }
    }
    let mut replaces = None;
    let mut keep = Previous::default();
    if let Some((rank, entry, key, matched_by)) = best {
        if rank % 2 == 0 {
            return Decision::Adopt {
                entry,
                key,
                matched_by,
            };
        }
        let (v4, v6) = fitting_parts(cfg, &key);
        keep = Previous { v4, v6 };
        replaces = Some(entry);
    }

    let mut pick = |pool: Option<&SubnetPool>,
                    taken: &Taken,
                    kept: Option<IpNetwork>,
                    prev: Option<IpNetwork>|
     -> Result<Option<IpNetwork>, Decision> {
        let Some(pool) = pool else { return Ok(None) };
        if let Some(k) = kept {
            return Ok(Some(k));
        }
        match choose(pool, taken, prev, random) {
            Some(net) => Ok(Some(net)),
            None => Err(Decision::Exhausted {
                pool: *pool,
                pool_size: pool.size(),
            }),
        }
    };
    let v4 = match pick(
        cfg.ipv4.as_ref(),
        &occupancy.v4,
        keep.v4.map(IpNetwork::V4),
        previous.v4.map(IpNetwork::V4),
    ) {
        Ok(n) => n,
        Err(d) => return d,
    };
    // The IPv6 subnet paired with the IPv4 one (same pool index) is preferred after the
    // previous one: the claim's guard covers only the IPv4 part of a dual-stack key, and this
    // pairing makes two nodes that hold different IPv4 subnets pick different IPv6 subnets
    // too, even when hundreds join at once from the same listing.
    let paired = match (&cfg.ipv4, &cfg.ipv6, v4) {
        (Some(p4), Some(p6), Some(n4)) => p4.index(n4).and_then(|i| p6.subnet(i)),
        _ => None,
    };
    let prefer6 = previous.v6.map(IpNetwork::V6).or(paired);
    let v6 = match pick(
        cfg.ipv6.as_ref(),
        &occupancy.v6,
        keep.v6.map(IpNetwork::V6),
        prefer6,
    ) {
        Ok(n) => n,
        Err(d) => return d,
    };
    let as_v4 = |n: IpNetwork| match n {
        IpNetwork::V4(n) => Some(n),
        IpNetwork::V6(_) => None,
    };
    let as_v6 = |n: IpNetwork| match n {
        IpNetwork::V6(n) => Some(n),
        IpNetwork::V4(_) => None,
    };
    let (v4, v6) = (v4.and_then(as_v4), v6.and_then(as_v6));
    // Every subnet is one this node had: kept from its own key, or its previous one.
    let previous =
        (keep.v4.is_some() || v4 == previous.v4) && (keep.v6.is_some() || v6 == previous.v6);
    let key = SubnetKey::new(v4, v6).expect("the config enables at least one family");
    Decision::Claim {
        key,
        previous,
        replaces,
    }
}

/// The guard for creating `key`: the part of the key that must not appear in any other key.
/// The IPv4 part when there is one (so a dual-stack key and a single-stack key can never
/// share an IPv4 subnet), else the whole key.
pub fn create_guard(key: &SubnetKey) -> String {
    match key.v4_subnet() {
        Some(v4) => SubnetKey::v4(v4).to_string(),
        None => key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Revision;
    use std::collections::BTreeSet;
    use weft_backends::BackendKind;

    fn cfg(s: &str) -> NetConfig {
        NetConfig::parse(s.as_bytes()).unwrap()
    }

    fn me() -> Identity {
        Identity {
            node_name: "n1".into(),
            public_ip: Some("192.0.2.1".parse().unwrap()),
            public_ip_v6: Some("2001:db8::1".parse().unwrap()),
        }
    }

    fn entry(name: &str, node: Option<&str>, ip: &str) -> StoredEntry {
        let ep = crate::lease::Endpoint {
            public_ip: ip.parse().unwrap(),
            data: None,
        };
        let mut a = LeaseAttrs::for_node("x", BackendKind::HostGw, Some(ep), None);
        a.node_name = node.map(str::to_string);
        StoredEntry {
            name: name.into(),
            value: a.encode(),
            create_revision: Revision(1),
            mod_revision: Revision(1),
            ttl_lease: None,
        }
    }

    fn run(c: &NetConfig, entries: &[StoredEntry], prev: Option<&str>, r: u128) -> Decision {
        let occ = Occupancy::from_entries(c, entries.iter().map(|e| e.name.as_str()));
        let previous = Previous {
            v4: prev.map(|p| p.parse().unwrap()),
            v6: None,
        };
        decide(c, &me(), entries, &occ, previous, &mut |n| r.min(n - 1))
    }

    fn claimed(d: Decision) -> String {
        match d {
            Decision::Claim { key, .. } => key.to_string(),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn node_name_beats_public_ip() {
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let es = [
            entry("10.5.3.0-24", None, "192.0.2.1"),
            entry("10.5.4.0-24", Some("n1"), "192.0.2.99"),
        ];
        match run(&c, &es, None, 0) {
            Decision::Adopt {
                key, matched_by, ..
            } => {
                assert_eq!(key.to_string(), "10.5.4.0-24");
                assert_eq!(matched_by, MatchedBy::NodeName);
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn flannel_lease_matched_by_public_ip_but_not_someone_elses() {
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let es = [entry("10.5.3.0-24", None, "192.0.2.1")];
        assert!(matches!(
            run(&c, &es, None, 0),
            Decision::Adopt {
                matched_by: MatchedBy::PublicIp,
                ..
            }
        ));
        // Same IP but another node's name: not mine.
        let es = [entry("10.5.3.0-24", Some("other"), "192.0.2.1")];
        assert!(matches!(run(&c, &es, None, 0), Decision::Claim { .. }));
    }

    #[test]
    fn my_lease_that_no_longer_fits_is_not_adopted() {
        let c = cfg(r#"{"Network":"10.5.0.0/16","SubnetLen":25}"#);
        let es = [entry("10.5.3.0-24", Some("n1"), "192.0.2.1")];
        assert!(matches!(run(&c, &es, None, 0), Decision::Claim { .. }));
    }

    #[test]
    fn previous_subnet_if_free() {
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        assert_eq!(
            run(&c, &[], Some("10.5.77.0/24"), 0),
            Decision::Claim {
                key: "10.5.77.0-24".parse().unwrap(),
                previous: true,
                replaces: None,
            }
        );
        let es = [entry("10.5.77.0-24", Some("other"), "192.0.2.2")];
        assert!(matches!(
            run(&c, &es, Some("10.5.77.0/24"), 0),
            Decision::Claim {
                previous: false,
                ..
            }
        ));
        // A previous subnet outside the pool (config changed) is ignored.
        assert!(matches!(
            run(&c, &[], Some("10.6.77.0/24"), 0),
            Decision::Claim {
                previous: false,
                ..
            }
        ));
    }

    #[test]
    fn random_pick_skips_taken_and_first_subnet() {
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let es = [
            entry("10.5.1.0-24", Some("a"), "192.0.2.2"),
            entry("10.5.2.0-24", Some("b"), "192.0.2.3"),
        ];
        // The first free is 10.5.3.0 (10.5.0.0 is below SubnetMin).
        assert_eq!(claimed(run(&c, &es, None, 0)), "10.5.3.0-24");
        assert_eq!(claimed(run(&c, &es, None, 1)), "10.5.4.0-24");
        assert_eq!(claimed(run(&c, &es, None, 1000)), "10.5.255.0-24");
    }

    #[test]
    fn every_free_subnet_is_reachable_and_taken_never_is() {
        let c = cfg(r#"{"Network":"10.5.0.0/24","SubnetLen":28}"#);
        let es: Vec<_> = ["10.5.0.32-28", "10.5.0.48-28", "10.5.0.160-28"]
            .iter()
            .map(|n| entry(n, Some("z"), "192.0.2.9"))
            .collect();
        let occ = Occupancy::from_entries(&c, es.iter().map(|e| e.name.as_str()));
        let mut seen = BTreeSet::new();
        for r in 0..12 {
            let d = decide(&c, &me(), &es, &occ, Previous::default(), &mut |_| r);
            let subnet: Ipv4Network = claimed(d).replace('-', "/").parse().unwrap();
            assert!(seen.insert(subnet), "{subnet} twice");
        }
        assert_eq!(seen.len(), 12, "15 subnets in pool minus 3 taken");
        for taken in ["10.5.0.32/28", "10.5.0.48/28", "10.5.0.160/28"] {
            assert!(!seen.contains(&taken.parse().unwrap()));
        }
    }

    #[test]
    fn garbage_and_overlapping_keys_block_subnets() {
        let c = cfg(r#"{"Network":"10.5.0.0/16"}"#);
        let mut es = vec![entry("10.5.1.0-24", None, "192.0.2.50")];
        es[0].value = b"garbage".to_vec();
        es.push(entry("10.5.2.0-23", Some("wide"), "192.0.2.51")); // covers .2 and .3
        es.push(entry("10.5.8.0-24&fc00::-64", Some("ds"), "192.0.2.52"));
        let occ = Occupancy::from_entries(&c, es.iter().map(|e| e.name.as_str()));
        for i in [0u128, 1, 2, 7] {
            assert!(occ.v4.contains(i), "index {i}");
        }
        assert_eq!(occ.v4.count(), 4);
        assert_eq!(
            occ.v6.count(),
            0,
            "IPv6 is off: the key's IPv6 part blocks nothing"
        );
    }

    #[test]
    fn exhausted_when_everything_is_taken() {
        let c = cfg(r#"{"Network":"10.5.0.0/24","SubnetLen":26}"#);
        let es: Vec<_> = ["10.5.0.64-26", "10.5.0.128-26", "10.5.0.192-26"]
            .iter()
            .map(|n| entry(n, Some("z"), "192.0.2.9"))
            .collect();
        assert!(matches!(
            run(&c, &es, None, 0),
            Decision::Exhausted { pool_size: 3, .. }
        ));
    }

    #[test]
    fn taken_ranges_merge_and_count() {
        let mut t = Taken::default();
        t.insert(5, 9);
        t.insert(20, 20);
        t.insert(10, 12); // touches 5..=9
        t.insert(0, 0);
        assert_eq!(t.count(), 10);
        assert_eq!(t.ranges.len(), 3, "{:?}", t.ranges);
        assert!(t.contains(12) && t.contains(0) && !t.contains(13) && !t.contains(1));
        assert_eq!(t.nth_free(0), 1);
        assert_eq!(t.nth_free(3), 4);
        assert_eq!(t.nth_free(4), 13);
        t.insert(3, 30);
        assert_eq!(t.ranges.len(), 2, "{:?}", t.ranges);
        assert_eq!(t.count(), 29);
        t.insert(0, u128::MAX - 1);
        assert_eq!(t.count(), u128::MAX);
    }

    #[test]
    fn dual_stack_claims_one_subnet_per_family() {
        let c = cfg(r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#);
        let es = [
            entry("10.5.1.0-24&fc00:0:0:1::-64", Some("a"), "192.0.2.2"),
            entry("10.5.2.0-24&fc00:0:0:2::-64", Some("b"), "192.0.2.3"),
        ];
        // The IPv6 subnet paired with the IPv4 one: same index in its pool.
        assert_eq!(
            claimed(run(&c, &es, None, 0)),
            "10.5.3.0-24&fc00:0:0:3::-64"
        );
        assert_eq!(
            claimed(run(&c, &es, Some("10.5.77.0/24"), 5)),
            "10.5.77.0-24&fc00:0:0:4d::-64"
        );
        // The paired one is taken (a flannel node chose it at random): a random free one.
        let mut es2 = es.to_vec();
        es2.push(entry("10.5.9.0-24&fc00:0:0:3::-64", Some("f"), "192.0.2.4"));
        assert_eq!(
            claimed(run(&c, &es2, None, 0)),
            "10.5.3.0-24&fc00:0:0:4::-64"
        );
    }

    #[test]
    fn dual_stack_nodes_joining_from_one_listing_never_share_an_ipv6_subnet() {
        // 200 nodes decide from the same (empty) listing with different random draws; the
        // IPv4 guard makes the store accept one claim per IPv4 subnet, and the pairing makes
        // distinct IPv4 subnets mean distinct IPv6 ones.
        let c = cfg(r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#);
        let occ = Occupancy::default();
        let mut by_v4 = std::collections::BTreeMap::new();
        for r in 0..200u128 {
            let d = decide(&c, &me(), &[], &occ, Previous::default(), &mut |n| {
                (r * 7919) % n
            });
            let Decision::Claim { key, .. } = d else {
                panic!("{d:?}")
            };
            by_v4.entry(key.v4).or_insert(key.v6.unwrap());
        }
        let v6: BTreeSet<_> = by_v4.values().collect();
        assert!(by_v4.len() > 100, "draws spread over the pool");
        assert_eq!(v6.len(), by_v4.len(), "one IPv6 subnet per IPv4 subnet");
    }

    #[test]
    fn ipv6_only_keys_have_flannels_form() {
        let c = cfg(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/32"}"#);
        let es = [entry("0.0.0.0-0&fc00:0:0:1::-64", Some("a"), "192.0.2.2")];
        let occ = Occupancy::from_entries(&c, es.iter().map(|e| e.name.as_str()));
        assert_eq!(occ.v4.count(), 0, "0.0.0.0-0 is no IPv4 subnet");
        let key = claimed(run(&c, &es, None, u128::MAX));
        assert_eq!(key, "0.0.0.0-0&fc00:0:ffff:ffff::-64");
        assert_eq!(create_guard(&key.parse().unwrap()), key);
    }

    #[test]
    fn enabling_ipv6_keeps_the_ipv4_subnet_and_replaces_the_old_key() {
        let c = cfg(r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#);
        let es = [
            entry("10.5.9.0-24", Some("n1"), "192.0.2.1"),
            entry("10.5.1.0-24&fc00:0:0:1::-64", Some("a"), "192.0.2.2"),
        ];
        match run(&c, &es, None, 0) {
            Decision::Claim {
                key,
                replaces: Some(old),
                ..
            } => {
                assert_eq!(key.to_string(), "10.5.9.0-24&fc00:0:0:9::-64");
                assert_eq!(old.name, "10.5.9.0-24");
                assert_eq!(create_guard(&key), "10.5.9.0-24");
            }
            d => panic!("{d:?}"),
        }
        // A key that fits exactly is adopted as it is.
        let es = [entry(
            "10.5.9.0-24&fc00:0:0:9::-64",
            Some("n1"),
            "192.0.2.1",
        )];
        assert!(matches!(run(&c, &es, None, 0), Decision::Adopt { .. }));
    }
}
