//! Choosing the underlay interface and the public IP(s). The choice is pure (given what the
//! kernel reported); reading the kernel is in [`probe`].
//!
//! One interface carries both families on a dual-stack node: it must hold an address of
//! every enabled family (an IPv4 address, a global IPv6 address).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use regex::Regex;
use weft_backends::IpFamily;

/// An interface as read from the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedIface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    pub v4: Vec<Ipv4Network>,
    /// IPv6 addresses other than link-local ones.
    pub v6: Vec<Ipv6Network>,
}

/// What the operator asked for.
#[derive(Clone, Debug, Default)]
pub struct IfaceRequest {
    /// `--iface`: names or IP addresses, tried in order.
    pub ifaces: Vec<String>,
    /// `--iface-regex`: matched against names and addresses, tried in order.
    pub regexes: Vec<String>,
    /// `--iface-can-reach`: the interface the kernel would use to reach this address.
    pub can_reach: Option<IpAddr>,
    /// `--public-ip`: published instead of the interface address.
    pub public_ip: Option<Ipv4Addr>,
    /// `--public-ipv6`: likewise for IPv6.
    pub public_ip_v6: Option<Ipv6Addr>,
}

/// The address families the cluster network enables: a set of [`IpFamily`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Families {
    v4: bool,
    v6: bool,
}

impl Families {
    /// IPv4 alone.
    pub const V4: Families = Families {
        v4: true,
        v6: false,
    };

    /// The set of `families`.
    pub fn of(families: impl IntoIterator<Item = IpFamily>) -> Families {
        families.into_iter().fold(
            Families {
                v4: false,
                v6: false,
            },
            |set, family| match family {
                IpFamily::V4 => Families { v4: true, ..set },
                IpFamily::V6 => Families { v6: true, ..set },
            },
        )
    }

    /// Whether `family` is in the set.
    pub fn contains(self, family: IpFamily) -> bool {
        match family {
            IpFamily::V4 => self.v4,
            IpFamily::V6 => self.v6,
        }
    }
}

/// What the kernel said that the choice depends on.
#[derive(Clone, Debug, Default)]
pub struct IfaceFacts {
    pub ifaces: Vec<ObservedIface>,
    /// Interface index of the default IPv4 route, if any.
    pub default_route_iface: Option<u32>,
    /// Interface index of the default IPv6 route, if any.
    pub default_route_iface_v6: Option<u32>,
    /// Source address the kernel picks for `can_reach`, if asked.
    pub can_reach_source: Option<IpAddr>,
}

/// The choice, with the reason logged at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChosenIface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// The IPv4 address VXLAN packets leave from (IPv4 enabled).
    pub iface_addr: Option<Ipv4Network>,
    pub public_ip: Option<Ipv4Addr>,
    /// The IPv6 address the IPv6 VXLAN device sends from (IPv6 enabled).
    pub iface_addr_v6: Option<Ipv6Network>,
    pub public_ip_v6: Option<Ipv6Addr>,
    pub reason: String,
}

impl Families {
    /// What an interface must hold for these families, in words.
    fn describe(self) -> &'static str {
        match (self.v4, self.v6) {
            (true, true) => "both an IPv4 and a global IPv6 address",
            (false, true) => "a global IPv6 address",
            _ => "an IPv4 address",
        }
    }
}

/// An interface of this host as an error message lists it: its name and addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceSummary {
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

/// The interfaces of this host, for a message that has to say which ones there are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIfaces(pub Vec<IfaceSummary>);

impl HostIfaces {
    /// Interfaces listed by name before the rest is only counted.
    const SHOWN: usize = 16;

    pub fn of(facts: &IfaceFacts) -> HostIfaces {
        HostIfaces(
            facts
                .ifaces
                .iter()
                .map(|i| IfaceSummary {
                    name: i.name.clone(),
                    addrs: addresses(i).collect(),
                })
                .collect(),
        )
    }
}

impl fmt::Display for HostIfaces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (n, i) in self.0.iter().take(Self::SHOWN).enumerate() {
            if n > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} (", i.name.escape_debug())?;
            if i.addrs.is_empty() {
                f.write_str("no address")?;
            }
            for (k, a) in i.addrs.iter().enumerate() {
                if k > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{a}")?;
            }
            f.write_str(")")?;
        }
        if self.0.len() > Self::SHOWN {
            write!(f, ", and {} more", self.0.len() - Self::SHOWN)?;
        }
        Ok(())
    }
}

/// `"eth0", "10.0.0.1"`.
fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `with an IPv4 address `, or nothing when the families are not known yet.
fn with_need(need: &Option<Families>) -> String {
    need.map(|n| format!("with {} ", n.describe()))
        .unwrap_or_default()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IfaceError {
    #[error("--iface-regex {0:?} is not a valid regular expression: {1}")]
    BadRegex(String, String),
    #[error(
        "--iface {}: no such interface or address on this host; the interfaces here are {here}",
        quoted(wanted)
    )]
    NoSuchIface {
        wanted: Vec<String>,
        here: HostIfaces,
    },
    #[error("--iface {}: no interface named so or holding that address has {}; the interfaces here are {here}", quoted(wanted), need.describe())]
    NoIfaceMatch {
        wanted: Vec<String>,
        need: Families,
        here: HostIfaces,
    },
    #[error("--iface-regex {}: no interface {}has a name or address that matches; the interfaces here are {here}", quoted(patterns), with_need(need))]
    NoRegexMatch {
        patterns: Vec<String>,
        /// `None` when checked before the network config is known.
        need: Option<Families>,
        here: HostIfaces,
    },
    #[error("no interface holds the source address for reaching {0}")]
    CannotReach(IpAddr),
    #[error("no default {0} route to pick an interface from; pass --iface, --iface-regex or --iface-can-reach")]
    NoDefaultRoute(&'static str),
    #[error("interface {0} has no {1} address")]
    NoAddress(String, &'static str),
    #[error("cannot read interfaces from the kernel: {0}")]
    Kernel(String),
}

/// Why a regular expression does not compile, on one line (the parser's own message draws the
/// pattern and a caret over several).
pub fn regex_problem(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(text) => text
            .lines()
            .last()
            .map(|l| l.trim_start_matches("error: ").to_string())
            .unwrap_or_default(),
        other => other.to_string(),
    }
}

/// What can be checked before the network config is known: that `--iface` names an interface
/// (or an address of one) on this host, and that `--iface-regex` matches one. Of several
/// `--iface` entries one is enough: the others may be fallbacks meant for other hosts.
pub fn check_request(req: &IfaceRequest, facts: &IfaceFacts) -> Result<(), IfaceError> {
    if !req.ifaces.is_empty() {
        let exists = |want: &String| match want.parse::<IpAddr>() {
            Ok(ip) => facts.ifaces.iter().any(|i| addresses(i).any(|a| a == ip)),
            Err(_) => facts.ifaces.iter().any(|i| i.name == *want),
        };
        if !req.ifaces.iter().any(exists) {
            return Err(IfaceError::NoSuchIface {
                wanted: req.ifaces.clone(),
                here: HostIfaces::of(facts),
            });
        }
        // --iface wins over --iface-regex: the regexes are not used.
        return Ok(());
    }
    if !req.regexes.is_empty() {
        let mut regexes = Vec::new();
        for pattern in &req.regexes {
            regexes.push(
                Regex::new(pattern)
                    .map_err(|e| IfaceError::BadRegex(pattern.clone(), regex_problem(&e)))?,
            );
        }
        let matches = |i: &ObservedIface| {
            regexes
                .iter()
                .any(|re| re.is_match(&i.name) || addresses(i).any(|a| re.is_match(&a.to_string())))
        };
        if !facts.ifaces.iter().any(matches) {
            return Err(IfaceError::NoRegexMatch {
                patterns: req.regexes.clone(),
                need: None,
                here: HostIfaces::of(facts),
            });
        }
    }
    Ok(())
}

fn first_v4(i: &ObservedIface) -> Option<Ipv4Network> {
    // Prefer a non-link-local address.
    i.v4.iter()
        .find(|a| !weft_backends::is_link_local_v4(a.ip()))
        .or_else(|| i.v4.first())
        .copied()
}

fn first_v6(i: &ObservedIface) -> Option<Ipv6Network> {
    i.v6.first().copied()
}

/// True when `i` has an address of every family in `need`.
fn usable(i: &ObservedIface, need: Families) -> bool {
    (!need.contains(IpFamily::V4) || first_v4(i).is_some())
        && (!need.contains(IpFamily::V6) || first_v6(i).is_some())
}

fn pick(
    i: &ObservedIface,
    addr: Option<IpAddr>,
    req: &IfaceRequest,
    need: Families,
    reason: String,
) -> Result<ChosenIface, IfaceError> {
    let chosen_v4 = match addr {
        Some(IpAddr::V4(a)) => i.v4.iter().find(|n| n.ip() == a).copied(),
        _ => None,
    };
    let chosen_v6 = match addr {
        Some(IpAddr::V6(a)) => i.v6.iter().find(|n| n.ip() == a).copied(),
        _ => None,
    };
    let iface_addr = if need.contains(IpFamily::V4) {
        Some(
            chosen_v4
                .or_else(|| first_v4(i))
                .ok_or_else(|| IfaceError::NoAddress(i.name.clone(), "IPv4"))?,
        )
    } else {
        None
    };
    let iface_addr_v6 = if need.contains(IpFamily::V6) {
        Some(
            chosen_v6
                .or_else(|| first_v6(i))
                .ok_or_else(|| IfaceError::NoAddress(i.name.clone(), "global IPv6"))?,
        )
    } else {
        None
    };
    let public_ip = iface_addr.map(|a| req.public_ip.unwrap_or(a.ip()));
    let public_ip_v6 = iface_addr_v6.map(|a| req.public_ip_v6.unwrap_or(a.ip()));
    let mut reason = reason;
    if let (Some(p), Some(a)) = (req.public_ip, iface_addr) {
        if p != a.ip() {
            reason = format!("{reason}; public IP {p} from --public-ip");
        }
    }
    if let (Some(p), Some(a)) = (req.public_ip_v6, iface_addr_v6) {
        if p != a.ip() {
            reason = format!("{reason}; public IPv6 {p} from --public-ipv6");
        }
    }
    Ok(ChosenIface {
        index: i.index,
        name: i.name.clone(),
        mtu: i.mtu,
        iface_addr,
        public_ip,
        iface_addr_v6,
        public_ip_v6,
        reason,
    })
}

fn addresses(i: &ObservedIface) -> impl Iterator<Item = IpAddr> + '_ {
    i.v4.iter()
        .map(|n| IpAddr::V4(n.ip()))
        .chain(i.v6.iter().map(|n| IpAddr::V6(n.ip())))
}

/// Choose the interface, in flannel's order: `--iface` entries, then `--iface-regex`, then
/// `--iface-can-reach`, then the default route's interface (the IPv4 one, or the IPv6 one
/// on an IPv6-only cluster). The interface must hold an address of every family in `need`.
pub fn choose(
    req: &IfaceRequest,
    facts: &IfaceFacts,
    need: Families,
) -> Result<ChosenIface, IfaceError> {
    if !req.ifaces.is_empty() {
        for want in &req.ifaces {
            if let Ok(ip) = want.parse::<IpAddr>() {
                for i in &facts.ifaces {
                    if addresses(i).any(|a| a == ip) && usable(i, need) {
                        return pick(
                            i,
                            Some(ip),
                            req,
                            need,
                            format!("--iface {want} is an address of {}", i.name),
                        );
                    }
                }
            } else if let Some(i) = facts.ifaces.iter().find(|i| i.name == *want) {
                if usable(i, need) {
                    return pick(i, None, req, need, format!("--iface {want}"));
                }
            }
        }
        return Err(IfaceError::NoIfaceMatch {
            wanted: req.ifaces.clone(),
            need,
            here: HostIfaces::of(facts),
        });
    }
    if !req.regexes.is_empty() {
        for pattern in &req.regexes {
            let re = Regex::new(pattern)
                .map_err(|e| IfaceError::BadRegex(pattern.clone(), regex_problem(&e)))?;
            for i in facts.ifaces.iter().filter(|i| usable(i, need)) {
                if let Some(a) = addresses(i).find(|a| re.is_match(&a.to_string())) {
                    return pick(
                        i,
                        Some(a),
                        req,
                        need,
                        format!(
                            "address {a} of {} matches --iface-regex {pattern:?}",
                            i.name
                        ),
                    );
                }
            }
            for i in facts.ifaces.iter().filter(|i| usable(i, need)) {
                if re.is_match(&i.name) {
                    return pick(
                        i,
                        None,
                        req,
                        need,
                        format!("name {} matches --iface-regex {pattern:?}", i.name),
                    );
                }
            }
        }
        return Err(IfaceError::NoRegexMatch {
            patterns: req.regexes.clone(),
            need: Some(need),
            here: HostIfaces::of(facts),
        });
    }
    if let Some(target) = req.can_reach {
        let src = facts
            .can_reach_source
            .ok_or(IfaceError::CannotReach(target))?;
        for i in &facts.ifaces {
            if addresses(i).any(|a| a == src) {
                return pick(
                    i,
                    Some(src),
                    req,
                    need,
                    format!("{} is the route to --iface-can-reach {target}", i.name),
                );
            }
        }
        return Err(IfaceError::CannotReach(target));
    }
    let (idx, family) = if need.contains(IpFamily::V4) {
        (facts.default_route_iface, "IPv4")
    } else {
        (facts.default_route_iface_v6, "IPv6")
    };
    let idx = idx.ok_or(IfaceError::NoDefaultRoute(family))?;
    let i = facts
        .ifaces
        .iter()
        .find(|i| i.index == idx)
        .ok_or(IfaceError::NoDefaultRoute(family))?;
    pick(
        i,
        None,
        req,
        need,
        format!("{} carries the default {family} route", i.name),
    )
}

/// Reading interfaces, addresses and the default route through netlink (the project's one
/// blocking socket; a handful of dumps at start).
pub mod probe {
    use std::net::{IpAddr, SocketAddr, UdpSocket};

    use ipnetwork::IpNetwork;
    use netlink_packet_route::address::AddressMessage;
    use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
    use netlink_packet_route::route::{RouteAttribute, RouteMessage};
    use netlink_packet_route::RouteNetlinkMessage;
    use weft_backends::netlink::{address_family, address_of, NlSocket};
    use weft_backends::IpFamily;

    use super::*;

    fn kernel(e: impl std::fmt::Display) -> IfaceError {
        IfaceError::Kernel(e.to_string())
    }

    /// Gather the facts for [`choose`].
    pub async fn facts(req: &IfaceRequest) -> Result<IfaceFacts, IfaceError> {
        let mut nl = NlSocket::open().map_err(kernel)?;
        let mut ifaces = Vec::new();
        for m in nl
            .dump(
                "list links",
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
            )
            .map_err(kernel)?
        {
            let RouteNetlinkMessage::NewLink(msg) = m else {
                continue;
            };
            let mut name = String::new();
            let mut mtu = 0;
            for attr in &msg.attributes {
                match attr {
                    LinkAttribute::IfName(n) => name = n.clone(),
                    LinkAttribute::Mtu(m) => mtu = *m,
                    _ => {}
                }
            }
            ifaces.push(ObservedIface {
                index: msg.header.index,
                name,
                mtu,
                up: msg.header.flags.contains(LinkFlags::Up),
                v4: Vec::new(),
                v6: Vec::new(),
            });
        }
        for m in nl
            .dump(
                "list addresses",
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            )
            .map_err(kernel)?
        {
            let RouteNetlinkMessage::NewAddress(msg) = m else {
                continue;
            };
            let Some(i) = ifaces.iter_mut().find(|i| i.index == msg.header.index) else {
                continue;
            };
            match address_of(&msg) {
                Some(IpNetwork::V4(n)) => i.v4.push(n),
                Some(IpNetwork::V6(n))
                    if !weft_backends::is_link_local(IpAddr::V6(n.ip()))
                        && !n.ip().is_loopback() =>
                {
                    i.v6.push(n)
                }
                _ => {}
            }
        }
        let mut defaults = [None, None];
        for (slot, family) in [IpFamily::V4, IpFamily::V6].into_iter().enumerate() {
            let mut q = RouteMessage::default();
            q.header.address_family = address_family(family);
            for m in nl
                .dump(
                    &format!("list {family} routes"),
                    RouteNetlinkMessage::GetRoute(q),
                )
                .map_err(kernel)?
            {
                let RouteNetlinkMessage::NewRoute(r) = m else {
                    continue;
                };
                if defaults[slot].is_some()
                    || r.header.destination_prefix_length != 0
                    || r.header.table != 254
                {
                    continue;
                }
                defaults[slot] = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
            }
        }
        let can_reach_source = req.can_reach.and_then(source_for);
        Ok(IfaceFacts {
            ifaces,
            default_route_iface: defaults[0],
            default_route_iface_v6: defaults[1],
            can_reach_source,
        })
    }

    /// The source address the kernel would use towards `target`. A connected UDP socket
    /// asks the routing table without sending anything.
    fn source_for(target: IpAddr) -> Option<IpAddr> {
        let bind = match target {
            IpAddr::V4(_) => "0.0.0.0:0",
            IpAddr::V6(_) => "[::]:0",
        };
        let sock = UdpSocket::bind(bind).ok()?;
        sock.connect(SocketAddr::new(target, 9)).ok()?;
        Some(sock.local_addr().ok()?.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> IfaceFacts {
        IfaceFacts {
            ifaces: vec![
                ObservedIface {
                    index: 1,
                    name: "lo".into(),
                    mtu: 65536,
                    up: true,
                    v4: vec!["127.0.0.1/8".parse().unwrap()],
                    v6: vec![],
                },
                ObservedIface {
                    index: 2,
                    name: "eth0".into(),
                    mtu: 1500,
                    up: true,
                    v4: vec![
                        "169.254.1.1/16".parse().unwrap(),
                        "192.0.2.10/24".parse().unwrap(),
                    ],
                    v6: vec!["2001:db8::10/64".parse().unwrap()],
                },
                ObservedIface {
                    index: 3,
                    name: "eth1".into(),
                    mtu: 9000,
                    up: true,
                    v4: vec!["198.51.100.7/24".parse().unwrap()],
                    v6: vec![],
                },
                ObservedIface {
                    index: 4,
                    name: "bond0".into(),
                    mtu: 1500,
                    up: true,
                    v4: vec![],
                    v6: vec!["2001:db8:4::4/64".parse().unwrap()],
                },
            ],
            default_route_iface: Some(2),
            default_route_iface_v6: Some(4),
            can_reach_source: None,
        }
    }

    #[test]
    fn default_route_interface_by_default() {
        let c = choose(&IfaceRequest::default(), &facts(), Families::V4).unwrap();
        assert_eq!(
            (
                c.name.as_str(),
                c.public_ip.unwrap().to_string().as_str(),
                c.mtu
            ),
            ("eth0", "192.0.2.10", 1500)
        );
        assert!(c.reason.contains("default IPv4 route"), "{}", c.reason);
    }

    #[test]
    fn iface_by_name_or_address_in_order() {
        let req = IfaceRequest {
            ifaces: vec!["bond0".into(), "eth1".into()],
            ..Default::default()
        };
        let c = choose(&req, &facts(), Families::V4).unwrap();
        assert_eq!(c.name, "eth1", "bond0 has no address, eth1 is next");
        let req = IfaceRequest {
            ifaces: vec!["192.0.2.10".into()],
            ..Default::default()
        };
        assert_eq!(choose(&req, &facts(), Families::V4).unwrap().name, "eth0");
        let req = IfaceRequest {
            ifaces: vec!["wlan9".into()],
            ..Default::default()
        };
        assert_eq!(
            choose(&req, &facts(), Families::V4),
            Err(IfaceError::NoIfaceMatch {
                wanted: vec!["wlan9".into()],
                need: Families::V4,
                here: HostIfaces::of(&facts())
            })
        );
        let req = IfaceRequest {
            ifaces: vec!["bond0".into()],
            ..Default::default()
        };
        assert_eq!(
            choose(&req, &facts(), Families::V4)
                .unwrap_err()
                .to_string(),
            "--iface \"bond0\": no interface named so or holding that address has an IPv4 \
             address; the interfaces here are lo (127.0.0.1), eth0 (169.254.1.1, 192.0.2.10, \
             2001:db8::10), eth1 (198.51.100.7), bond0 (2001:db8:4::4)"
        );
    }

    #[test]
    fn regex_matches_addresses_then_names() {
        let req = IfaceRequest {
            regexes: vec![r"^198\.51\.".into()],
            ..Default::default()
        };
        assert_eq!(choose(&req, &facts(), Families::V4).unwrap().name, "eth1");
        let req = IfaceRequest {
            regexes: vec!["^eth[0-9]$".into()],
            ..Default::default()
        };
        assert_eq!(choose(&req, &facts(), Families::V4).unwrap().name, "eth0");
        let req = IfaceRequest {
            regexes: vec!["(".into()],
            ..Default::default()
        };
        assert_eq!(
            choose(&req, &facts(), Families::V4),
            Err(IfaceError::BadRegex("(".into(), "unclosed group".into()))
        );
    }

    #[test]
    fn can_reach_uses_source_address() {
        let mut f = facts();
        f.can_reach_source = Some("198.51.100.7".parse().unwrap());
        let req = IfaceRequest {
            can_reach: Some("198.51.100.1".parse().unwrap()),
            ..Default::default()
        };
        let c = choose(&req, &f, Families::V4).unwrap();
        assert_eq!(c.name, "eth1");
        assert!(c.reason.contains("--iface-can-reach"));
    }

    #[test]
    fn public_ip_overrides_and_is_explained() {
        let req = IfaceRequest {
            public_ip: Some("203.0.113.5".parse().unwrap()),
            ..Default::default()
        };
        let c = choose(&req, &facts(), Families::V4).unwrap();
        assert_eq!(c.public_ip.unwrap().to_string(), "203.0.113.5");
        assert_eq!(c.iface_addr.unwrap().ip().to_string(), "192.0.2.10");
        assert_eq!(c.iface_addr_v6, None, "IPv6 is not enabled");
        assert!(c.reason.contains("--public-ip"));
    }

    #[test]
    fn no_default_route_is_a_clear_error() {
        let mut f = facts();
        f.default_route_iface = None;
        assert_eq!(
            choose(&IfaceRequest::default(), &f, Families::V4),
            Err(IfaceError::NoDefaultRoute("IPv4"))
        );
    }

    #[test]
    fn dual_stack_needs_both_families_on_one_interface() {
        let both = Families::of([IpFamily::V4, IpFamily::V6]);
        let c = choose(&IfaceRequest::default(), &facts(), both).unwrap();
        assert_eq!(c.name, "eth0");
        assert_eq!(c.public_ip_v6.unwrap().to_string(), "2001:db8::10");
        // eth1 has no IPv6 address: skipped for a dual-stack cluster.
        let req = IfaceRequest {
            ifaces: vec!["eth1".into(), "2001:db8::10".into()],
            public_ip_v6: Some("2001:db8:ff::1".parse().unwrap()),
            ..Default::default()
        };
        let c = choose(&req, &facts(), both).unwrap();
        assert_eq!(c.name, "eth0");
        assert_eq!(c.iface_addr_v6.unwrap().ip().to_string(), "2001:db8::10");
        assert_eq!(c.public_ip_v6.unwrap().to_string(), "2001:db8:ff::1");
        assert!(c.reason.contains("--public-ipv6"));
    }

    #[test]
    fn ipv6_only_uses_the_ipv6_default_route() {
        let v6 = Families::of([IpFamily::V6]);
        let c = choose(&IfaceRequest::default(), &facts(), v6).unwrap();
        assert_eq!((c.name.as_str(), c.iface_addr), ("bond0", None));
        assert_eq!(c.public_ip, None);
        let mut f = facts();
        f.default_route_iface_v6 = None;
        assert_eq!(
            choose(&IfaceRequest::default(), &f, v6),
            Err(IfaceError::NoDefaultRoute("IPv6"))
        );
    }

    #[test]
    fn a_missing_interface_is_named_at_start_with_the_ones_there_are() {
        let req = |ifaces: &[&str], regexes: &[&str]| IfaceRequest {
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
            regexes: regexes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let e = check_request(&req(&["wlan9", "10.9.9.9"], &[]), &facts()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--iface \"wlan9\", \"10.9.9.9\": no such interface or address on this host; the \
             interfaces here are lo (127.0.0.1), eth0 (169.254.1.1, 192.0.2.10, 2001:db8::10), \
             eth1 (198.51.100.7), bond0 (2001:db8:4::4)"
        );
        // One existing entry is enough (the others are fallbacks for other hosts), by name or
        // by address; whether it has the families needed is decided once the config is known.
        check_request(&req(&["wlan9", "bond0"], &[]), &facts()).unwrap();
        check_request(&req(&["wlan9", "198.51.100.7"], &[]), &facts()).unwrap();
        check_request(&req(&["2001:db8::10"], &[]), &facts()).unwrap();
        // --iface wins: the regexes are not looked at.
        check_request(&req(&["eth1"], &["nomatch"]), &facts()).unwrap();
        check_request(&req(&[], &["^bond"]), &facts()).unwrap();
        check_request(&req(&[], &[r"^198\.51\."]), &facts()).unwrap();
        let e = check_request(&req(&[], &["^wlan"]), &facts()).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "--iface-regex \"^wlan\": no interface has a name or address that matches; the \
                 interfaces here are lo"
            ),
            "{e}"
        );
        check_request(&req(&[], &[]), &facts()).unwrap();

        // Many interfaces: the first ones are named, the rest counted.
        let mut many = facts();
        many.ifaces = (0..20)
            .map(|n| ObservedIface {
                index: n,
                name: format!("veth{n}"),
                ..Default::default()
            })
            .collect();
        let e = check_request(&req(&["eth0"], &[]), &many).unwrap_err();
        assert!(
            e.to_string().ends_with("veth15 (no address), and 4 more"),
            "{e}"
        );
    }
}
