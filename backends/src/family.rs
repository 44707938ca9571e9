//! The address family a data plane serves. Each family has its own VXLAN device, its own
//! addresses and its own routes; a data plane of one family never sees or changes the
//! other's.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum IpFamily {
    #[default]
    V4,
    V6,
}

impl IpFamily {
    /// Both families, IPv4 first.
    pub const ALL: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

    /// The family of an address.
    pub fn of(ip: IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The family of a network.
    pub fn of_network(net: IpNetwork) -> IpFamily {
        IpFamily::of(net.ip())
    }

    /// The prefix length of a single address: 32 or 128.
    pub fn host_prefix(self) -> u8 {
        match self {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        }
    }

    /// The unspecified address (`0.0.0.0` or `::`).
    pub fn unspecified(self) -> IpAddr {
        match self {
            IpFamily::V4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpFamily::V6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        }
    }

    /// The other family.
    pub fn other(self) -> IpFamily {
        match self {
            IpFamily::V4 => IpFamily::V6,
            IpFamily::V6 => IpFamily::V4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IPv6 link-local address (fe80::/10): the kernel puts one on every IPv6-capable link by
/// itself, so it is never weft's. IPv4 addresses are never counted as link-local here: weft
/// excludes 169.254.0.0/16 nowhere but in the underlay choice, which asks
/// [`is_link_local_v4`].
pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => false,
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// An IPv4 link-local address (169.254.0.0/16, RFC 3927), which an interface may hold next
/// to its routable one.
pub fn is_link_local_v4(ip: Ipv4Addr) -> bool {
    ip.octets()[..2] == [169, 254]
}

/// An address as a number: an IPv4 address in the low 32 bits, an IPv6 address in all 128.
/// With [`addr_from_u128`] and [`addr_offset`] the one address arithmetic of the workspace
/// (subnet pools, pod addresses), the same code for both families.
pub fn addr_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of `family` whose number is `n`; `None` when `n` is beyond the family's last
/// address (more than 32 bits for IPv4).
pub fn addr_from_u128(family: IpFamily, n: u128) -> Option<IpAddr> {
    match family {
        IpFamily::V4 => u32::try_from(n).ok().map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        IpFamily::V6 => Some(IpAddr::V6(Ipv6Addr::from(n))),
    }
}

/// The address `offset` after `base`, in `base`'s family; `None` past the family's last
/// address.
pub fn addr_offset(base: IpAddr, offset: u128) -> Option<IpAddr> {
    addr_from_u128(IpFamily::of(base), addr_to_u128(base).checked_add(offset)?)
}

/// The `n`-th address of `net` (0 is the network address); `None` when `net` has fewer.
pub fn nth_address(net: IpNetwork, n: u128) -> Option<IpAddr> {
    let bits = u32::from(IpFamily::of_network(net).host_prefix() - net.prefix());
    if bits < 128 && n >> bits != 0 {
        return None;
    }
    addr_offset(net.network(), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_of_addresses_and_networks() {
        assert_eq!(IpFamily::of("10.0.0.1".parse().unwrap()), IpFamily::V4);
        assert_eq!(IpFamily::of("fc00::1".parse().unwrap()), IpFamily::V6);
        assert_eq!(
            IpFamily::of_network("fc00:0:0:1::/64".parse().unwrap()),
            IpFamily::V6
        );
        assert_eq!(IpFamily::V6.to_string(), "IPv6");
        assert_eq!(IpFamily::V4.to_string(), "IPv4");
        assert_eq!(IpFamily::V6.host_prefix(), 128);
        assert!(is_link_local("fe80::1".parse().unwrap()));
        assert!(is_link_local("febf::1".parse().unwrap()));
        assert!(!is_link_local("fec0::1".parse().unwrap()));
        assert!(!is_link_local("fc00::1".parse().unwrap()));
        assert!(!is_link_local("169.254.0.1".parse().unwrap()));
        assert!(is_link_local_v4("169.254.0.1".parse().unwrap()));
        assert!(is_link_local_v4("169.254.255.254".parse().unwrap()));
        assert!(!is_link_local_v4("169.253.0.1".parse().unwrap()));
        assert!(!is_link_local_v4("10.254.0.1".parse().unwrap()));
    }

    #[test]
    fn address_arithmetic_serves_both_families() {
        let v4: IpAddr = "10.5.7.0".parse().unwrap();
        assert_eq!(addr_to_u128(v4), 0x0a05_0700);
        assert_eq!(
            addr_from_u128(IpFamily::V4, 0x0a05_0702),
            Some("10.5.7.2".parse().unwrap())
        );
        assert_eq!(addr_from_u128(IpFamily::V4, 1 << 32), None);
        assert_eq!(addr_offset(v4, 258), Some("10.5.8.2".parse().unwrap()));
        assert_eq!(addr_offset("255.255.255.255".parse().unwrap(), 1), None);
        let v6: IpAddr = "fc00::ffff".parse().unwrap();
        assert_eq!(addr_offset(v6, 1), Some("fc00::1:0".parse().unwrap()));
        assert_eq!(
            addr_from_u128(IpFamily::V6, u128::MAX),
            Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap())
        );
        assert_eq!(
            addr_offset(
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
                1
            ),
            None
        );

        let net: IpNetwork = "10.5.7.9/24".parse().unwrap();
        assert_eq!(nth_address(net, 0), Some("10.5.7.0".parse().unwrap()));
        assert_eq!(nth_address(net, 2), Some("10.5.7.2".parse().unwrap()));
        assert_eq!(nth_address(net, 255), Some("10.5.7.255".parse().unwrap()));
        assert_eq!(nth_address(net, 256), None);
        let net6: IpNetwork = "fc00:0:0:1::/64".parse().unwrap();
        assert_eq!(nth_address(net6, 2), Some("fc00:0:0:1::2".parse().unwrap()));
        assert_eq!(nth_address(net6, 1 << 64), None);
        assert_eq!(
            nth_address("::/0".parse().unwrap(), u128::MAX),
            Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap())
        );
    }
}
