//! The address family a data plane serves. Each family has its own VXLAN device, its own
//! addresses and its own routes; a data plane of one family never sees or changes the
//! other's.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum IpFamily {
    #[default]
    V4,
    V6,
}

impl IpFamily {
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
/// itself, so it is never weft's.
pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => false,
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
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
    }
}
