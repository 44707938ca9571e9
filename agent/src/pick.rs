//! Pure subnet choice: which lease is mine, which subnet is free. No I/O.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::config::NetConfig;
use crate::lease::{LeaseAttrs, SubnetKey};
use crate::store::StoredEntry;

/// Who this node is, for recognising its own lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub node_name: String,
    pub public_ip: Ipv4Addr,
}

/// How an existing entry was recognised as ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchedBy {
    NodeName,
    PublicIp,
}

/// What the keeper should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// An existing entry is ours: keep it (rewriting its value if it differs from ours).
    Adopt {
        entry: StoredEntry,
        subnet: Ipv4Network,
        matched_by: MatchedBy,
    },
    /// Claim this free subnet.
    Claim {
        subnet: Ipv4Network,
        /// True when it is the subnet this node had before (from subnet.env).
        previous: bool,
    },
    /// No free subnet left in the pool.
    Exhausted { pool_size: u64 },
}

/// Does `attrs` describe this node? A NodeName, when the lease has one, decides alone;
/// a lease without one (written by flannel) is matched by PublicIP.
pub fn is_mine(attrs: &LeaseAttrs, me: &Identity) -> Option<MatchedBy> {
    match &attrs.node_name {
        Some(n) if *n == me.node_name => Some(MatchedBy::NodeName),
        Some(_) => None,
        None if attrs.public_ip == Some(me.public_ip) => Some(MatchedBy::PublicIp),
        None => None,
    }
}

/// The set of pool indices taken by existing keys (any key overlapping a pool subnet,
/// valid or not: garbage under a subnet's key still blocks it).
#[derive(Clone, Debug, Default)]
pub struct Occupancy {
    taken: BTreeSet<u64>,
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
        // A key that does not parse canonically may still start with an address we can
        // read; be conservative and block what it seems to name.
        let net = match name.parse::<SubnetKey>() {
            Ok(k) => Some(k.v4),
            Err(_) => name
                .split(['&'])
                .next()
                .and_then(|p| p.split_once('-'))
                .and_then(|(ip, len)| Ipv4Network::new(ip.parse().ok()?, len.parse().ok()?).ok()),
        };
        if let Some(net) = net {
            self.mark(cfg, net);
        }
    }

    pub fn mark(&mut self, cfg: &NetConfig, net: Ipv4Network) {
        let step = u64::from(crate::config::subnet_step(cfg.subnet_len));
        let lo = u64::from(u32::from(cfg.subnet_min));
        let hi = u64::from(u32::from(cfg.subnet_max)) + step - 1;
        let a = u64::from(u32::from(net.network()));
        let b = u64::from(u32::from(net.broadcast()));
        if b < lo || a > hi {
            return;
        }
        let first = (a.max(lo) - lo) / step;
        let last = (b.min(hi) - lo) / step;
        for i in first..=last {
            self.taken.insert(i);
        }
    }

    pub fn is_taken(&self, index: u64) -> bool {
        self.taken.contains(&index)
    }

    pub fn taken_count(&self) -> u64 {
        self.taken.len() as u64
    }
}

/// Decide what to do, in the order of the design: my lease (by NodeName, else PublicIP),
/// then my previous subnet if free, then a random free subnet. `random` maps a bound `n`
/// to a value in `0..n`.
pub fn decide(
    cfg: &NetConfig,
    me: &Identity,
    entries: &[StoredEntry],
    occupancy: &Occupancy,
    previous: Option<Ipv4Network>,
    random: &mut dyn FnMut(u64) -> u64,
) -> Decision {
    let mut by_ip = None;
    for e in entries {
        let Ok(key) = e.name.parse::<SubnetKey>() else {
            continue;
        };
        if !cfg.fits(key.v4) {
            continue;
        }
        let Ok(attrs) = LeaseAttrs::decode(&e.value) else {
            continue;
        };
        match is_mine(&attrs, me) {
            Some(MatchedBy::NodeName) => {
                return Decision::Adopt {
                    entry: e.clone(),
                    subnet: key.v4,
                    matched_by: MatchedBy::NodeName,
                }
            }
            Some(MatchedBy::PublicIp) if by_ip.is_none() => by_ip = Some((e.clone(), key.v4)),
            _ => {}
        }
    }
    if let Some((entry, subnet)) = by_ip {
        return Decision::Adopt {
            entry,
            subnet,
            matched_by: MatchedBy::PublicIp,
        };
    }
    if let Some(prev) = previous {
        if let Some(idx) = cfg.pool_index(prev) {
            if !occupancy.is_taken(idx) {
                return Decision::Claim {
                    subnet: prev,
                    previous: true,
                };
            }
        }
    }
    let size = cfg.pool_size();
    let free = size - occupancy.taken_count().min(size);
    if free == 0 {
        return Decision::Exhausted { pool_size: size };
    }
    // The k-th free index, skipping taken ones (taken is sorted).
    let mut k = random(free);
    let mut idx = 0u64;
    for &t in &occupancy.taken {
        if t > idx + k {
            break;
        }
        k -= t - idx;
        idx = t + 1;
    }
    idx += k;
    Decision::Claim {
        subnet: cfg.pool_subnet(idx).expect("index within pool"),
        previous: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Revision;
    use weft_backends::BackendKind;

    fn cfg(s: &str) -> NetConfig {
        NetConfig::parse(s.as_bytes()).unwrap()
    }

    fn me() -> Identity {
        Identity {
            node_name: "n1".into(),
            public_ip: "192.0.2.1".parse().unwrap(),
        }
    }

    fn entry(name: &str, node: Option<&str>, ip: &str) -> StoredEntry {
        let mut a = LeaseAttrs::for_node("x", ip.parse().unwrap(), BackendKind::HostGw, None);
        a.node_name = node.map(str::to_string);
        StoredEntry {
            name: name.into(),
            value: a.encode(),
            create_revision: Revision(1),
            mod_revision: Revision(1),
            ttl_lease: None,
        }
    }

    fn run(c: &NetConfig, entries: &[StoredEntry], prev: Option<&str>, r: u64) -> Decision {
        let occ = Occupancy::from_entries(c, entries.iter().map(|e| e.name.as_str()));
        decide(
            c,
            &me(),
            entries,
            &occ,
            prev.map(|p| p.parse().unwrap()),
            &mut |n| r.min(n - 1),
        )
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
                subnet, matched_by, ..
            } => {
                assert_eq!(subnet.to_string(), "10.5.4.0/24");
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
                subnet: "10.5.77.0/24".parse().unwrap(),
                previous: true
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
        assert_eq!(
            run(&c, &es, None, 0),
            Decision::Claim {
                subnet: "10.5.3.0/24".parse().unwrap(),
                previous: false
            }
        );
        assert_eq!(
            run(&c, &es, None, 1),
            Decision::Claim {
                subnet: "10.5.4.0/24".parse().unwrap(),
                previous: false
            }
        );
        assert_eq!(
            run(&c, &es, None, 1000),
            Decision::Claim {
                subnet: "10.5.255.0/24".parse().unwrap(),
                previous: false
            }
        );
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
            match decide(&c, &me(), &es, &occ, None, &mut |_| r) {
                Decision::Claim { subnet, .. } => assert!(seen.insert(subnet), "{subnet} twice"),
                d => panic!("{d:?}"),
            }
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
        for i in [0u64, 1, 2, 7] {
            assert!(occ.is_taken(i), "index {i}");
        }
        assert_eq!(occ.taken_count(), 4);
    }

    #[test]
    fn exhausted_when_everything_is_taken() {
        let c = cfg(r#"{"Network":"10.5.0.0/24","SubnetLen":26}"#);
        let es: Vec<_> = ["10.5.0.64-26", "10.5.0.128-26", "10.5.0.192-26"]
            .iter()
            .map(|n| entry(n, Some("z"), "192.0.2.9"))
            .collect();
        assert_eq!(run(&c, &es, None, 0), Decision::Exhausted { pool_size: 3 });
    }
}
