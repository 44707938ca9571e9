//! Choosing the underlay interface and the public IP. The choice is pure (given what the
//! kernel reported); reading the kernel is in [`probe`].

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::Ipv4Network;
use regex::Regex;

/// An interface as read from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedIface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    pub v4: Vec<Ipv4Network>,
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
}

/// What the kernel said that the choice depends on.
#[derive(Clone, Debug, Default)]
pub struct IfaceFacts {
    pub ifaces: Vec<ObservedIface>,
    /// Interface index of the default IPv4 route, if any.
    pub default_route_iface: Option<u32>,
    /// Source address the kernel picks for `can_reach`, if asked.
    pub can_reach_source: Option<Ipv4Addr>,
}

/// The choice, with the reason logged at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChosenIface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub iface_addr: Ipv4Network,
    pub public_ip: Ipv4Addr,
    pub reason: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IfaceError {
    #[error("--iface-regex {0:?} is not a valid regular expression: {1}")]
    BadRegex(String, String),
    #[error("none of --iface {0:?} names an interface with an IPv4 address")]
    NoIfaceMatch(Vec<String>),
    #[error("no interface name or address matches --iface-regex {0:?}")]
    NoRegexMatch(Vec<String>),
    #[error("no interface holds the source address for reaching {0}")]
    CannotReach(IpAddr),
    #[error("no default IPv4 route to pick an interface from; pass --iface, --iface-regex or --iface-can-reach")]
    NoDefaultRoute,
    #[error("interface {0} has no IPv4 address")]
    NoAddress(String),
    #[error("cannot read interfaces from the kernel: {0}")]
    Kernel(String),
}

fn first_addr(i: &ObservedIface) -> Option<Ipv4Network> {
    // Prefer a non-link-local address.
    i.v4.iter()
        .find(|a| !a.ip().is_link_local())
        .or_else(|| i.v4.first())
        .copied()
}

fn pick(
    i: &ObservedIface,
    addr: Option<Ipv4Network>,
    req: &IfaceRequest,
    reason: String,
) -> Result<ChosenIface, IfaceError> {
    let iface_addr = addr
        .or_else(|| first_addr(i))
        .ok_or_else(|| IfaceError::NoAddress(i.name.clone()))?;
    let public_ip = req.public_ip.unwrap_or(iface_addr.ip());
    let reason = match req.public_ip {
        Some(p) if p != iface_addr.ip() => format!("{reason}; public IP {p} from --public-ip"),
        _ => reason,
    };
    Ok(ChosenIface {
        index: i.index,
        name: i.name.clone(),
        mtu: i.mtu,
        iface_addr,
        public_ip,
        reason,
    })
}

/// Choose the interface, in flannel's order: `--iface` entries, then `--iface-regex`, then
/// `--iface-can-reach`, then the default route's interface.
pub fn choose(req: &IfaceRequest, facts: &IfaceFacts) -> Result<ChosenIface, IfaceError> {
    if !req.ifaces.is_empty() {
        for want in &req.ifaces {
            if let Ok(ip) = want.parse::<Ipv4Addr>() {
                for i in &facts.ifaces {
                    if let Some(a) = i.v4.iter().find(|a| a.ip() == ip) {
                        return pick(
                            i,
                            Some(*a),
                            req,
                            format!("--iface {want} is an address of {}", i.name),
                        );
                    }
                }
            } else if let Some(i) = facts.ifaces.iter().find(|i| i.name == *want) {
                if first_addr(i).is_some() {
                    return pick(i, None, req, format!("--iface {want}"));
                }
            }
        }
        return Err(IfaceError::NoIfaceMatch(req.ifaces.clone()));
    }
    if !req.regexes.is_empty() {
        for pattern in &req.regexes {
            let re = Regex::new(pattern)
                .map_err(|e| IfaceError::BadRegex(pattern.clone(), e.to_string()))?;
            for i in &facts.ifaces {
                if let Some(a) = i.v4.iter().find(|a| re.is_match(&a.ip().to_string())) {
                    return pick(
                        i,
                        Some(*a),
                        req,
                        format!(
                            "address {} of {} matches --iface-regex {pattern:?}",
                            a.ip(),
                            i.name
                        ),
                    );
                }
            }
            for i in &facts.ifaces {
                if re.is_match(&i.name) && first_addr(i).is_some() {
                    return pick(
                        i,
                        None,
                        req,
                        format!("name {} matches --iface-regex {pattern:?}", i.name),
                    );
                }
            }
        }
        return Err(IfaceError::NoRegexMatch(req.regexes.clone()));
    }
    if let Some(target) = req.can_reach {
        let src = facts
            .can_reach_source
            .ok_or(IfaceError::CannotReach(target))?;
        for i in &facts.ifaces {
            if let Some(a) = i.v4.iter().find(|a| a.ip() == src) {
                return pick(
                    i,
                    Some(*a),
                    req,
                    format!("{} is the route to --iface-can-reach {target}", i.name),
                );
            }
        }
        return Err(IfaceError::CannotReach(target));
    }
    let idx = facts
        .default_route_iface
        .ok_or(IfaceError::NoDefaultRoute)?;
    let i = facts
        .ifaces
        .iter()
        .find(|i| i.index == idx)
        .ok_or(IfaceError::NoDefaultRoute)?;
    pick(
        i,
        None,
        req,
        format!("{} carries the default route", i.name),
    )
}

/// Reading interfaces, addresses and the default route through netlink.
pub mod probe {
    use std::net::{IpAddr, SocketAddr, UdpSocket};

    use futures::TryStreamExt;
    use netlink_packet_route::address::AddressAttribute;
    use netlink_packet_route::link::{LinkAttribute, LinkFlags};
    use netlink_packet_route::route::{RouteAttribute, RouteMessage};
    use netlink_packet_route::AddressFamily;

    use super::*;

    fn kernel(e: impl std::fmt::Display) -> IfaceError {
        IfaceError::Kernel(e.to_string())
    }

    /// Gather the facts for [`choose`].
    pub async fn facts(req: &IfaceRequest) -> Result<IfaceFacts, IfaceError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(kernel)?;
        let task = tokio::spawn(conn);
        let result = async {
            let mut ifaces = Vec::new();
            let mut links = handle.link().get().execute();
            while let Some(msg) = links.try_next().await.map_err(kernel)? {
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
                });
            }
            let mut addrs = handle.address().get().execute();
            while let Some(msg) = addrs.try_next().await.map_err(kernel)? {
                if msg.header.family != AddressFamily::Inet {
                    continue;
                }
                let ip = msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                });
                let ip = ip.or_else(|| {
                    msg.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    })
                });
                if let (Some(ip), Some(i)) =
                    (ip, ifaces.iter_mut().find(|i| i.index == msg.header.index))
                {
                    if let Ok(n) = Ipv4Network::new(ip, msg.header.prefix_len) {
                        i.v4.push(n);
                    }
                }
            }
            let mut default_route_iface = None;
            let mut route_msg = RouteMessage::default();
            route_msg.header.address_family = AddressFamily::Inet;
            let mut routes = handle.route().get(route_msg).execute();
            while let Some(r) = routes.try_next().await.map_err(kernel)? {
                if r.header.destination_prefix_length != 0 || r.header.table != 254 {
                    continue;
                }
                if let Some(oif) = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                }) {
                    default_route_iface = Some(oif);
                    break;
                }
            }
            let can_reach_source = req.can_reach.and_then(source_for);
            Ok(IfaceFacts {
                ifaces,
                default_route_iface,
                can_reach_source,
            })
        }
        .await;
        task.abort();
        result
    }

    /// The source address the kernel would use towards `target`. A connected UDP socket
    /// asks the routing table without sending anything.
    fn source_for(target: IpAddr) -> Option<Ipv4Addr> {
        let IpAddr::V4(t) = target else { return None };
        let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
        sock.connect(SocketAddr::new(IpAddr::V4(t), 9)).ok()?;
        match sock.local_addr().ok()? {
            SocketAddr::V4(a) => Some(*a.ip()),
            SocketAddr::V6(_) => None,
        }
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
                },
                ObservedIface {
                    index: 3,
                    name: "eth1".into(),
                    mtu: 9000,
                    up: true,
                    v4: vec!["198.51.100.7/24".parse().unwrap()],
                },
                ObservedIface {
                    index: 4,
                    name: "bond0".into(),
                    mtu: 1500,
                    up: true,
                    v4: vec![],
                },
            ],
            default_route_iface: Some(2),
            can_reach_source: None,
        }
    }

    #[test]
    fn default_route_interface_by_default() {
        let c = choose(&IfaceRequest::default(), &facts()).unwrap();
        assert_eq!(
            (c.name.as_str(), c.public_ip.to_string().as_str(), c.mtu),
            ("eth0", "192.0.2.10", 1500)
        );
        assert!(c.reason.contains("default route"));
    }

    #[test]
    fn iface_by_name_or_address_in_order() {
        let req = IfaceRequest {
            ifaces: vec!["bond0".into(), "eth1".into()],
            ..Default::default()
        };
        let c = choose(&req, &facts()).unwrap();
        assert_eq!(c.name, "eth1", "bond0 has no address, eth1 is next");
        let req = IfaceRequest {
            ifaces: vec!["192.0.2.10".into()],
            ..Default::default()
        };
        assert_eq!(choose(&req, &facts()).unwrap().name, "eth0");
        let req = IfaceRequest {
            ifaces: vec!["wlan9".into()],
            ..Default::default()
        };
        assert_eq!(
            choose(&req, &facts()),
            Err(IfaceError::NoIfaceMatch(vec!["wlan9".into()]))
        );
    }

    #[test]
    fn regex_matches_addresses_then_names() {
        let req = IfaceRequest {
            regexes: vec![r"^198\.51\.".into()],
            ..Default::default()
        };
        assert_eq!(choose(&req, &facts()).unwrap().name, "eth1");
        let req = IfaceRequest {
            regexes: vec!["^eth[0-9]$".into()],
            ..Default::default()
        };
        assert_eq!(choose(&req, &facts()).unwrap().name, "eth0");
        let req = IfaceRequest {
            regexes: vec!["(".into()],
            ..Default::default()
        };
        assert!(matches!(
            choose(&req, &facts()),
            Err(IfaceError::BadRegex(..))
        ));
    }

    #[test]
    fn can_reach_uses_source_address() {
        let mut f = facts();
        f.can_reach_source = Some("198.51.100.7".parse().unwrap());
        let req = IfaceRequest {
            can_reach: Some("198.51.100.1".parse().unwrap()),
            ..Default::default()
        };
        let c = choose(&req, &f).unwrap();
        assert_eq!(c.name, "eth1");
        assert!(c.reason.contains("--iface-can-reach"));
    }

    #[test]
    fn public_ip_overrides_and_is_explained() {
        let req = IfaceRequest {
            public_ip: Some("203.0.113.5".parse().unwrap()),
            ..Default::default()
        };
        let c = choose(&req, &facts()).unwrap();
        assert_eq!(c.public_ip.to_string(), "203.0.113.5");
        assert_eq!(c.iface_addr.ip().to_string(), "192.0.2.10");
        assert!(c.reason.contains("--public-ip"));
    }

    #[test]
    fn no_default_route_is_a_clear_error() {
        let mut f = facts();
        f.default_route_iface = None;
        assert_eq!(
            choose(&IfaceRequest::default(), &f),
            Err(IfaceError::NoDefaultRoute)
        );
    }
}
