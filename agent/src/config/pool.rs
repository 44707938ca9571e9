//! A pool of equal-length subnets inside a cluster network, for either address family.
//! Arithmetic is on `u128` so the same code serves a /16 of IPv4 /24s and an IPv6 /32 of /64s
//! (four billion subnets, never enumerated).

use std::fmt;
use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use weft_backends::{addr_from_u128, addr_to_u128, IpFamily};

/// Subnets of `subnet_len` inside `network`, from `min` to `max` (network addresses of the
/// first and last subnet that may be handed out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubnetPool {
    pub network: IpNetwork,
    pub subnet_len: u8,
    pub min: IpAddr,
    pub max: IpAddr,
}

/// An address as a number ([`weft_backends::addr_to_u128`]), and the width of its family.
pub fn addr_bits(a: IpAddr) -> (u128, u8) {
    (addr_to_u128(a), IpFamily::of(a).host_prefix())
}

/// The address with numeric value `n` in the family `like` belongs to.
pub fn addr_from(like: IpAddr, n: u128) -> Option<IpAddr> {
    addr_from_u128(IpFamily::of(like), n)
}

/// Address distance between two consecutive subnets of length `len` in a family `bits` wide.
pub fn step(bits: u8, len: u8) -> u128 {
    1u128 << (bits - len)
}

impl SubnetPool {
    fn bits(&self) -> u8 {
        addr_bits(self.network.ip()).1
    }

    fn step(&self) -> u128 {
        step(self.bits(), self.subnet_len)
    }

    /// Number of subnets between `min` and `max` inclusive.
    pub fn size(&self) -> u128 {
        let (lo, _) = addr_bits(self.min);
        let (hi, _) = addr_bits(self.max);
        (hi - lo) / self.step() + 1
    }

    /// The n-th subnet of the pool (0-based), if `n < size()`.
    pub fn subnet(&self, n: u128) -> Option<IpNetwork> {
        if n >= self.size() {
            return None;
        }
        let addr = addr_bits(self.min)
            .0
            .checked_add(n.checked_mul(self.step())?)?;
        IpNetwork::new(addr_from(self.min, addr)?, self.subnet_len).ok()
    }

    /// Index of `subnet` in the pool, if it is one of the pool's subnets.
    pub fn index(&self, subnet: IpNetwork) -> Option<u128> {
        if !self.same_family(subnet) || subnet.prefix() != self.subnet_len {
            return None;
        }
        let (a, _) = addr_bits(subnet.ip());
        if subnet.ip() != subnet.network() {
            return None;
        }
        let (lo, hi) = (addr_bits(self.min).0, addr_bits(self.max).0);
        if a < lo || a > hi {
            return None;
        }
        Some((a - lo) / self.step())
    }

    /// The pool indices a network overlaps (any length), if it overlaps the pool at all.
    pub fn overlapped(&self, net: IpNetwork) -> Option<(u128, u128)> {
        if !self.same_family(net) {
            return None;
        }
        let (a, bits) = addr_bits(net.network());
        let size = if net.prefix() == 0 {
            u128::MAX >> (128 - u32::from(bits))
        } else {
            (1u128 << (bits - net.prefix())) - 1
        };
        let b = a + size;
        let lo = addr_bits(self.min).0;
        let hi = addr_bits(self.max).0 + (self.step() - 1);
        if b < lo || a > hi {
            return None;
        }
        Some((
            (a.max(lo) - lo) / self.step(),
            (b.min(hi) - lo) / self.step(),
        ))
    }

    /// True when `subnet` is a subnet of the right length inside the network (whether or not
    /// it lies between min and max: a config change must not orphan leases).
    pub fn fits(&self, subnet: IpNetwork) -> bool {
        self.same_family(subnet)
            && subnet.prefix() == self.subnet_len
            && subnet.ip() == subnet.network()
            && self.network.contains(subnet.ip())
    }

    fn same_family(&self, n: IpNetwork) -> bool {
        IpFamily::of_network(self.network) == IpFamily::of_network(n)
    }

    /// The IPv4 network, for an IPv4 pool.
    pub fn v4_network(&self) -> Option<Ipv4Network> {
        match self.network {
            IpNetwork::V4(n) => Some(n),
            IpNetwork::V6(_) => None,
        }
    }

    /// The IPv6 network, for an IPv6 pool.
    pub fn v6_network(&self) -> Option<Ipv6Network> {
        match self.network {
            IpNetwork::V6(n) => Some(n),
            IpNetwork::V4(_) => None,
        }
    }
}

impl fmt::Display for SubnetPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/{} subnets of {} from {} to {}",
            self.subnet_len, self.network, self.min, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(net: &str, len: u8, min: &str, max: &str) -> SubnetPool {
        SubnetPool {
            network: net.parse().unwrap(),
            subnet_len: len,
            min: min.parse().unwrap(),
            max: max.parse().unwrap(),
        }
    }

    #[test]
    fn v4_pool_arithmetic() {
        let p = pool("10.5.0.0/16", 26, "10.5.0.64", "10.5.3.192");
        assert_eq!(p.size(), 15);
        assert_eq!(p.subnet(0).unwrap().to_string(), "10.5.0.64/26");
        assert_eq!(p.subnet(14).unwrap().to_string(), "10.5.3.192/26");
        assert!(p.subnet(15).is_none());
        assert_eq!(p.index("10.5.3.192/26".parse().unwrap()), Some(14));
        assert_eq!(p.index("10.5.0.0/26".parse().unwrap()), None);
        assert_eq!(p.index("10.5.0.65/26".parse().unwrap()), None);
        assert_eq!(p.index("fc00::/26".parse().unwrap()), None);
        assert_eq!(p.overlapped("10.5.0.0/24".parse().unwrap()), Some((0, 2)));
        assert_eq!(p.overlapped("10.5.0.0/26".parse().unwrap()), None);
        assert_eq!(p.overlapped("0.0.0.0/0".parse().unwrap()), Some((0, 14)));
        assert_eq!(p.overlapped("10.6.0.0/16".parse().unwrap()), None);
        assert!(p.fits("10.5.0.0/26".parse().unwrap()));
        assert!(!p.fits("10.5.0.0/24".parse().unwrap()));
    }

    #[test]
    fn v6_pool_is_never_enumerated() {
        let p = pool("fc00::/32", 64, "fc00:0:0:1::", "fc00:0:ffff:ffff::");
        assert_eq!(p.size(), (1u128 << 32) - 1);
        assert_eq!(p.subnet(0).unwrap().to_string(), "fc00:0:0:1::/64");
        assert_eq!(
            p.subnet(p.size() - 1).unwrap().to_string(),
            "fc00:0:ffff:ffff::/64"
        );
        assert_eq!(p.index("fc00:0:0:2::/64".parse().unwrap()), Some(1));
        assert_eq!(p.index("10.0.0.0/24".parse().unwrap()), None);
        assert_eq!(
            p.overlapped("fc00::/48".parse().unwrap()),
            Some((0, 65534)),
            "a /48 covers 65,536 /64s, the first of which is below min"
        );
        assert_eq!(
            p.overlapped("::/0".parse().unwrap()),
            Some((0, p.size() - 1))
        );
        assert!(p.fits("fc00:0:0:2::/64".parse().unwrap()));
        assert!(!p.fits("fc01::/64".parse().unwrap()));
    }
}
