use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address (used for VXLAN VTEPs).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacError {
    #[error("MAC address {0:?} is not six colon-separated hex bytes")]
    Syntax(String),
}

impl MacAddr {
    /// True for an individual (not group/multicast) address that is not all zeros.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0 && self.0 != [0; 6]
    }

    /// A stable, locally administered unicast MAC derived from `seed` (the node name).
    ///
    /// The same node gets the same VTEP MAC across restarts and device re-creation, so peers'
    /// neighbour and FDB entries stay valid. FNV-1a is enough: this is not a security boundary,
    /// only a spread.
    pub fn derive_from(seed: &str) -> Self {
        let hash = stable_hash(&[seed.as_bytes()]);
        let b = hash.to_be_bytes();
        // Locally administered (bit 1 set), unicast (bit 0 clear).
        MacAddr([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }
}

/// A stable 64-bit hash of `parts` (FNV-1a over the parts joined by NUL, so ("ab","c") and
/// ("a","bc") differ, then murmur3's fmix64 so inputs differing in one byte differ
/// everywhere). Not a security boundary, only a spread that never changes between versions:
/// VTEP MACs and CNI host-veth names are derived from it.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        let sep: &[u8] = if i + 1 < parts.len() { &[0] } else { &[] };
        for byte in part.iter().chain(sep) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for slot in out.iter_mut() {
            let part = parts
                .next()
                .ok_or_else(|| MacError::Syntax(s.to_string()))?;
            if part.len() != 2 {
                return Err(MacError::Syntax(s.to_string()));
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| MacError::Syntax(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(MacError::Syntax(s.to_string()));
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let mac: MacAddr = "aa:bb:cc:dd:ee:0f".parse().unwrap();
        assert_eq!(mac.0, [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x0f]);
        assert_eq!(mac.to_string(), "aa:bb:cc:dd:ee:0f");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "aa:bb",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:fg",
            "aabb:cc:dd:ee:ff",
            "a:b:c:d:e:f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn unicast_check() {
        assert!(!"01:00:5e:00:00:01".parse::<MacAddr>().unwrap().is_unicast());
        assert!(!"ff:ff:ff:ff:ff:ff".parse::<MacAddr>().unwrap().is_unicast());
        assert!(!"00:00:00:00:00:00".parse::<MacAddr>().unwrap().is_unicast());
        assert!("02:00:00:00:00:01".parse::<MacAddr>().unwrap().is_unicast());
    }

    #[test]
    fn derived_mac_is_stable_local_unicast_and_spread() {
        let a = MacAddr::derive_from("node-a");
        assert_eq!(a, MacAddr::derive_from("node-a"));
        assert_ne!(a, MacAddr::derive_from("node-b"));
        assert!(a.is_unicast());
        assert_eq!(a.0[0] & 0x02, 0x02, "locally administered bit");
    }

    /// Golden values: VTEP MACs and the CNI plugin's host veth names come from `stable_hash`,
    /// and must come out the same in every weft version, or a rolling upgrade would change
    /// every node's MAC and leave the old plugin's veths unknown to the new one.
    #[test]
    fn stable_hash_and_derived_macs_never_change() {
        assert_eq!(stable_hash(&[b"abc", b"eth0"]), 7442768153672387841);
        assert_eq!(
            MacAddr::derive_from("node-a").to_string(),
            "4a:e8:66:29:c1:52"
        );
        for (seed, mac) in [
            ("node-b", "ce:03:1f:46:d5:0f"),
            ("node-b/ipv6", "3a:e6:74:20:1b:c2"),
            ("worker-1.example.com", "ee:8b:32:26:3b:35"),
            ("k8s-control-plane/ipv6", "be:7a:0a:a7:8c:71"),
        ] {
            assert_eq!(MacAddr::derive_from(seed).to_string(), mac, "{seed}");
        }
    }
}
