//! Carrying out an [`Attachment`] through netlink: the bridge in the host namespace, the veth
//! pair created with its pod end directly inside the pod's namespace (named, addressed with a
//! MAC and brought up in the same request), then the pod's address and routes over a socket
//! opened in the pod namespace. No thread of this process other than a scoped helper ever
//! enters the pod namespace (see [`NlSocket::open_in`]).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ipnetwork::IpNetwork;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;
use weft_backends::netlink::{address_of, link_attr, NlError, NlSocket, NLM_F_CREATE, NLM_F_EXCL};
use weft_backends::MacAddr;

use crate::attach::{Attachment, Expected};
use crate::error::{code, CniError};

fn datapath(e: NlError) -> CniError {
    CniError::new(
        code::DATAPATH,
        "cannot set up the pod's network",
        e.to_string(),
    )
}

/// The pod's network namespace, opened and checked: it must exist, be a network namespace
/// and not be the plugin's own (the host's).
#[derive(Debug)]
pub struct PodNs {
    pub file: File,
    pub nl: NlSocket,
}

impl PodNs {
    pub fn open(path: &Path) -> Result<PodNs, CniError> {
        let bad = |details: String| CniError::new(code::INVALID_ENV, "invalid CNI_NETNS", details);
        let file = File::open(path).map_err(|e| {
            bad(format!(
                "cannot open {}: {e} (has the runtime already removed the pod's namespace?)",
                path.display()
            ))
        })?;
        let own = std::fs::metadata("/proc/thread-self/ns/net")
            .map_err(|e| bad(format!("cannot read this process's namespace: {e}")))?;
        let theirs = file
            .metadata()
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
        if (own.dev(), own.ino()) == (theirs.dev(), theirs.ino()) {
            return Err(bad(format!(
                "{} is the host's own network namespace, not a pod's",
                path.display()
            )));
        }
        let nl = NlSocket::open_in(&file, &path.display().to_string()).map_err(|e| match e {
            NlError::Namespace { .. } => bad(format!(
                "{} is not a network namespace ({e})",
                path.display()
            )),
            other => datapath(other),
        })?;
        Ok(PodNs { file, nl })
    }
}

fn mac_of(link: &LinkMessage) -> Option<MacAddr> {
    link_attr(link, |a| match a {
        LinkAttribute::Address(b) if b.len() == 6 => {
            Some(MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]]))
        }
        _ => None,
    })
}

fn kind_of(link: &LinkMessage) -> Option<InfoKind> {
    link_attr(link, |a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    })
}

fn controller_of(link: &LinkMessage) -> Option<u32> {
    link_attr(link, |a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

fn is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

fn set_up(msg: &mut LinkMessage) {
    msg.header.flags |= LinkFlags::Up;
    msg.header.change_mask |= LinkFlags::Up;
}

/// The bridge as found or made: its index and MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bridge {
    pub index: u32,
    pub mac: MacAddr,
}

/// Find or create the bridge, make sure it is up and has the gateway address of each family.
pub fn ensure_bridge(host: &mut NlSocket, a: &Attachment) -> Result<Bridge, CniError> {
    let found = match host.link_by_name(&a.bridge).map_err(datapath)? {
        Some(l) => l,
        None => {
            let mut msg = LinkMessage::default();
            msg.attributes.push(LinkAttribute::IfName(a.bridge.clone()));
            msg.attributes.push(LinkAttribute::Mtu(a.mtu));
            msg.attributes
                .push(LinkAttribute::Address(a.bridge_mac.0.to_vec()));
            msg.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                    InfoKind::Bridge,
                )]));
            set_up(&mut msg);
            match host.ack(
                &format!("create bridge {}", a.bridge),
                RouteNetlinkMessage::NewLink(msg),
                NLM_F_CREATE | NLM_F_EXCL,
            ) {
                // Another ADD running at the same time made it first: adopt theirs.
                Err(e) if !e.is(Errno::EEXIST) => return Err(datapath(e)),
                _ => {}
            }
            host.link_by_name(&a.bridge)
                .map_err(datapath)?
                .ok_or_else(|| {
                    CniError::new(
                        code::DATAPATH,
                        "cannot set up the pod's network",
                        format!("bridge {} vanished right after it was created", a.bridge),
                    )
                })?
        }
    };
    if kind_of(&found) != Some(InfoKind::Bridge) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid network config",
            format!(
                "interface {} exists on the host and is not a bridge; pick another \"bridge\" name or remove it",
                a.bridge
            ),
        ));
    }
    let index = found.header.index;
    if !is_up(&found) {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        set_up(&mut msg);
        host.ack(
            &format!("bring bridge {} up", a.bridge),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
        .map_err(datapath)?;
    }
    for ip in &a.ips {
        add_address(
            host,
            index,
            ip.gateway,
            &format!("bridge {}", a.bridge),
            true,
        )?;
    }
    Ok(Bridge {
        index,
        mac: mac_of(&found).unwrap_or(a.bridge_mac),
    })
}

/// Add `addr` to the link `index`. An IPv6 address is added without duplicate address
/// detection (`nodad`): it is ours by IPAM, and a tentative address could not be used for
/// the first second or so of the pod's life.
fn add_address(
    nl: &mut NlSocket,
    index: u32,
    addr: IpNetwork,
    on: &str,
    exist_ok: bool,
) -> Result<(), CniError> {
    let mut msg = AddressMessage::default();
    msg.header.prefix_len = addr.prefix();
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(addr.ip()));
    msg.attributes.push(AddressAttribute::Address(addr.ip()));
    match addr {
        IpNetwork::V4(v4) => {
            msg.header.family = AddressFamily::Inet;
            msg.attributes
                .push(AddressAttribute::Broadcast(v4.broadcast()));
        }
        IpNetwork::V6(_) => {
            msg.header.family = AddressFamily::Inet6;
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
    }
    match nl.ack(
        &format!("add address {addr} to {on}"),
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Err(e) if exist_ok && e.is(Errno::EEXIST) => Ok(()),
        // The kernel's answer when IPv6 is switched off on the interface.
        Err(e) if addr.is_ipv6() && e.is(Errno::EACCES) => Err(CniError::new(
            code::DATAPATH,
            "cannot set up the pod's network",
            format!("{e} (is IPv6 disabled there? net.ipv6.conf.*.disable_ipv6)"),
        )),
        r => r.map_err(datapath),
    }
}

/// Turn on forwarding in the host namespace for the families in use (pods reach beyond the
/// bridge through it). IPv6 forwarding is the `all` switch, as for every router.
pub fn enable_forwarding(ipv4: bool, ipv6: bool) -> Result<(), CniError> {
    let switches = [
        (ipv4, "IPv4", "/proc/sys/net/ipv4/ip_forward"),
        (ipv6, "IPv6", "/proc/sys/net/ipv6/conf/all/forwarding"),
    ];
    for (_, family, path) in switches.into_iter().filter(|(on, _, _)| *on) {
        if std::fs::read_to_string(path).is_ok_and(|s| s.trim() == "1") {
            continue;
        }
        std::fs::write(path, "1").map_err(|e| {
            CniError::new(
                code::DATAPATH,
                "cannot set up the pod's network",
                format!("cannot enable {family} forwarding ({path}): {e}"),
            )
        })?;
    }
    Ok(())
}

fn veth_request(a: &Attachment, bridge: &Bridge, ns: &File) -> RouteNetlinkMessage {
    let mut peer = LinkMessage::default();
    peer.attributes
        .push(LinkAttribute::IfName(a.ifname.clone()));
    peer.attributes.push(LinkAttribute::Mtu(a.mtu));
    peer.attributes
        .push(LinkAttribute::Address(a.pod_mac.0.to_vec()));
    peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
    // The pod end cannot be created up in another namespace (the kernel answers ENOTCONN);
    // it is brought up from inside the pod namespace.
    let mut msg = LinkMessage::default();
    msg.attributes
        .push(LinkAttribute::IfName(a.host_veth.clone()));
    msg.attributes.push(LinkAttribute::Mtu(a.mtu));
    msg.attributes
        .push(LinkAttribute::Address(a.host_mac.0.to_vec()));
    msg.attributes.push(LinkAttribute::Controller(bridge.index));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    set_up(&mut msg);
    RouteNetlinkMessage::NewLink(msg)
}

/// Create the veth pair. A host end left by a killed ADD of the same attachment (same
/// derived name) is replaced; an `ifname` already taken inside the pod is an error.
fn create_veth(
    host: &mut NlSocket,
    a: &Attachment,
    bridge: &Bridge,
    ns: &File,
) -> Result<(), CniError> {
    let op = format!(
        "create veth {} with {} in {}",
        a.host_veth,
        a.ifname,
        a.netns.display()
    );
    for attempt in 0..2 {
        match host.ack(&op, veth_request(a, bridge, ns), NLM_F_CREATE | NLM_F_EXCL) {
            Ok(()) => return Ok(()),
            Err(e) if e.is(Errno::EEXIST) => {
                if attempt == 0 && host.delete_link_by_name(&a.host_veth).map_err(datapath)? {
                    continue; // a leftover of this very attachment
                }
                return Err(ifname_taken(a));
            }
            Err(e) => return Err(datapath(e)),
        }
    }
    unreachable!("the loop returns on its second attempt")
}

fn ifname_taken(a: &Attachment) -> CniError {
    CniError::new(
        code::INVALID_ENV,
        "invalid CNI_IFNAME",
        format!(
            "interface {} already exists in {}",
            a.ifname,
            a.netns.display()
        ),
    )
}

fn hairpin(host: &mut NlSocket, a: &Attachment) -> Result<(), CniError> {
    let mut msg = LinkMessage::default();
    msg.attributes
        .push(LinkAttribute::IfName(a.host_veth.clone()));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::PortKind(InfoPortKind::Bridge),
        LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
            true,
        )])),
    ]));
    host.ack(
        &format!("turn on hairpin mode on {}", a.host_veth),
        RouteNetlinkMessage::NewLink(msg),
        0,
    )
    .map_err(datapath)
}

fn family_of(net: IpNetwork) -> AddressFamily {
    match net {
        IpNetwork::V4(_) => AddressFamily::Inet,
        IpNetwork::V6(_) => AddressFamily::Inet6,
    }
}

fn route_message(dst: IpNetwork, gw: Option<IpAddr>, oif: u32) -> RouteMessage {
    let mut r = RouteMessage::default();
    r.header.address_family = family_of(dst);
    r.header.destination_prefix_length = dst.prefix();
    r.header.table = RouteHeader::RT_TABLE_MAIN;
    r.header.protocol = RouteProtocol::Boot;
    r.header.scope = RouteScope::Universe;
    r.header.kind = RouteType::Unicast;
    if dst.prefix() > 0 {
        r.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                dst.network(),
            )));
    }
    if let Some(gw) = gw {
        r.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    r.attributes.push(RouteAttribute::Oif(oif));
    r
}

fn configure_pod(pod: &mut NlSocket, a: &Attachment) -> Result<(), CniError> {
    let link = pod
        .link_by_name(&a.ifname)
        .map_err(datapath)?
        .ok_or_else(|| {
            CniError::new(
                code::DATAPATH,
                "cannot set up the pod's network",
                format!("{} did not appear in {}", a.ifname, a.netns.display()),
            )
        })?;
    let index = link.header.index;
    let mut up = LinkMessage::default();
    up.header.index = index;
    set_up(&mut up);
    pod.ack(
        &format!("bring {} up in the pod", a.ifname),
        RouteNetlinkMessage::SetLink(up),
        0,
    )
    .map_err(datapath)?;
    for ip in &a.ips {
        add_address(pod, index, ip.address, &a.ifname, false)?;
    }
    for r in &a.routes {
        pod.ack(
            &format!("add route {} via {} in the pod", r.dst, r.gateway),
            RouteNetlinkMessage::NewRoute(route_message(r.dst, Some(r.gateway), index)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(datapath)?;
    }
    Ok(())
}

/// Build the attachment, every family of it. On any failure after the veth exists, the veth
/// (both ends, with every address and route on the pod end) is removed again; the bridge,
/// shared by every pod, stays.
pub fn add(host: &mut NlSocket, pod: &mut PodNs, a: &Attachment) -> Result<Bridge, CniError> {
    // A name already taken in the pod is refused before the host is touched at all.
    if pod.nl.link_by_name(&a.ifname).map_err(datapath)?.is_some() {
        return Err(ifname_taken(a));
    }
    let bridge = ensure_bridge(host, a)?;
    enable_forwarding(a.has_ipv4(), a.has_ipv6())?;
    create_veth(host, a, &bridge, &pod.file)?;
    let rest = (|| {
        if a.hairpin {
            hairpin(host, a)?;
        }
        configure_pod(&mut pod.nl, a)
    })();
    if let Err(e) = rest {
        let _ = host.delete_link_by_name(&a.host_veth);
        return Err(e);
    }
    Ok(bridge)
}

/// Remove the attachment's veth pair (deleting the host end takes the pod end with it).
/// Absent is fine: the pod namespace may be gone and the pair with it.
pub fn delete(host: &mut NlSocket, host_veth: &str) -> Result<bool, CniError> {
    host.delete_link_by_name(host_veth).map_err(datapath)
}

fn check_failed(details: String) -> CniError {
    CniError::new(
        code::CHECK_FAILED,
        "the pod's network is not as set up",
        details,
    )
}

/// Compare the kernel with what ADD made and what the previous result says.
pub fn check(
    host: &mut NlSocket,
    pod: &mut PodNs,
    a: &Attachment,
    want: &Expected,
) -> Result<(), CniError> {
    let bridge = host
        .link_by_name(&a.bridge)
        .map_err(datapath)?
        .ok_or_else(|| check_failed(format!("bridge {} is missing", a.bridge)))?;
    let veth = host
        .link_by_name(&a.host_veth)
        .map_err(datapath)?
        .ok_or_else(|| check_failed(format!("host interface {} is missing", a.host_veth)))?;
    if controller_of(&veth) != Some(bridge.header.index) {
        return Err(check_failed(format!(
            "host interface {} is not attached to bridge {}",
            a.host_veth, a.bridge
        )));
    }
    let link = pod
        .nl
        .link_by_name(&a.ifname)
        .map_err(datapath)?
        .ok_or_else(|| {
            check_failed(format!(
                "interface {} is missing from {}",
                a.ifname,
                a.netns.display()
            ))
        })?;
    if !is_up(&link) {
        return Err(check_failed(format!("interface {} is down", a.ifname)));
    }
    if let (Some(want_mac), Some(have)) = (want.mac, mac_of(&link)) {
        if want_mac != have {
            return Err(check_failed(format!(
                "interface {} has MAC {have}, the result says {want_mac}",
                a.ifname
            )));
        }
    }
    let index = link.header.index;
    // Both families in one dump.
    let have: Vec<IpNetwork> = pod
        .nl
        .dump(
            "list pod addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        )
        .map_err(datapath)?
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(m) if m.header.index == index => address_of(&m),
            _ => None,
        })
        .collect();
    for addr in &want.addresses {
        if !have.contains(addr) {
            return Err(check_failed(format!(
                "address {addr} is missing from {}",
                a.ifname
            )));
        }
    }
    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        if !want.routes.iter().any(|(dst, _)| family_of(*dst) == family) {
            continue;
        }
        let mut q = RouteMessage::default();
        q.header.address_family = family;
        routes.extend(
            pod.nl
                .dump("list pod routes", RouteNetlinkMessage::GetRoute(q))
                .map_err(datapath)?,
        );
    }
    let ip_of = |a: &RouteAddress| match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    for (dst, gw) in &want.routes {
        let unspecified = match dst {
            IpNetwork::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpNetwork::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let found = routes.iter().any(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => {
                let r_dst = r.attributes.iter().find_map(|at| match at {
                    RouteAttribute::Destination(d) => ip_of(d),
                    _ => None,
                });
                let r_gw = r.attributes.iter().find_map(|at| match at {
                    RouteAttribute::Gateway(g) => ip_of(g),
                    _ => None,
                });
                r.header.address_family == family_of(*dst)
                    && r.header.table == RouteHeader::RT_TABLE_MAIN
                    && r.header.destination_prefix_length == dst.prefix()
                    && r_dst.unwrap_or(unspecified) == dst.network()
                    && (gw.is_none() || r_gw == *gw)
            }
            _ => false,
        });
        if !found {
            let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return Err(check_failed(format!(
                "route {dst}{via} is missing from the pod"
            )));
        }
    }
    Ok(())
}
