//! The wireguard backend (flannel's `wireguard`): pod traffic between nodes encrypted by
//! WireGuard. One device per family (`weft-wg`, `weft-wg-v6`; one `weft-wg` in the
//! single-device modes) holding `<subnet network address>/32` (or `/128`), one route for the
//! whole cluster network through it, and per peer a WireGuard peer: its public key,
//! `Endpoint` = its public IP and port, `AllowedIPs` = its pod subnet, the cluster's
//! preshared key and keepalive when set.
//!
//! A peer whose lease publishes no usable key gets no WireGuard peer: its subnet stays
//! behind the device, where the kernel drops what no peer's allowed IPs cover, so traffic
//! to it is never sent unencrypted.
//!
//! This module owns the backend's settings, its kernel objects ([`WireguardState`]), its
//! plan, its part of the diff and its operator text. [`key`] is the node's key and its file,
//! [`lease`] the `BackendData` it publishes and accepts, [`kernel`] reads the device back and
//! applies the operations through one of two implementations: the kernel's (configured over
//! generic netlink, [`genl`]) or a userspace one such as `wireguard-go` (configured over its
//! UAPI socket, [`uapi`]).

pub mod genl;
pub mod kernel;
pub mod key;
pub mod lease;
#[cfg(test)]
mod tests;
pub mod uapi;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnetwork::IpNetwork;

use crate::backend::{Backend, BackendData, BackendKind};
use crate::plan::{
    device_address, refused_for_family, underlay_family_mismatch, BackendDiff, Finding, LinkNames,
    Named, Op, PeerView, Plan, Refused, Underlay, Unreachable,
};
use crate::route::{Route, Via};
use crate::{IpFamily, Peer};

pub use key::{Key, PresharedKey, PrivateKey};
pub use lease::{WireguardData, WireguardDataError, WireguardPeer};

/// WireGuard's overhead on an IPv4 underlay: outer IPv4 (20) + UDP (8) + WireGuard's header
/// (16) and authentication tag (16) bytes.
pub const WIREGUARD_OVERHEAD_V4: u32 = 60;

/// WireGuard's overhead on an IPv6 underlay: the outer IPv6 header is 20 bytes longer.
pub const WIREGUARD_OVERHEAD_V6: u32 = 80;

/// flannel's default listen port for the IPv4 device (and the single device).
pub const DEFAULT_LISTEN_PORT: u16 = 51820;

/// flannel's default listen port for the IPv6 device in `separate` mode.
pub const DEFAULT_LISTEN_PORT_V6: u16 = 51821;

/// The WireGuard overhead on an underlay of `family`.
pub fn wireguard_overhead(family: IpFamily) -> u32 {
    match family {
        IpFamily::V4 => WIREGUARD_OVERHEAD_V4,
        IpFamily::V6 => WIREGUARD_OVERHEAD_V6,
    }
}

/// `Backend.Mode`: how the devices are laid out (flannel's modes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// One device per family, each with its own port (the default).
    #[default]
    Separate,
    /// One device for both families; each peer's endpoint of the family both sides have.
    Auto,
    /// One device; endpoints over IPv4.
    Ipv4,
    /// One device; endpoints over IPv6.
    Ipv6,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Separate, Mode::Auto, Mode::Ipv4, Mode::Ipv6];

    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Separate => "separate",
            Mode::Auto => "auto",
            Mode::Ipv4 => "ipv4",
            Mode::Ipv6 => "ipv6",
        }
    }

    /// The family a single-device mode sends over, if it fixes one.
    pub fn endpoint_family(&self) -> Option<IpFamily> {
        match self {
            Mode::Ipv4 => Some(IpFamily::V4),
            Mode::Ipv6 => Some(IpFamily::V6),
            Mode::Separate | Mode::Auto => None,
        }
    }

    /// Whether both families' pod traffic goes through one device: a single-device mode on
    /// a dual-stack cluster. Each family's data plane then owns its family's part of that
    /// device (its address, its route, its allowed IPs on every peer).
    pub fn shares_device(&self, dual_stack: bool) -> bool {
        dual_stack && *self != Mode::Separate
    }

    /// How the device serving pod traffic of `family` picks a peer's endpoint (`own_v6`:
    /// this node's IPv6 underlay address, which `auto` looks at).
    pub fn endpoints(
        &self,
        family: IpFamily,
        dual_stack: bool,
        own_v6: Option<IpAddr>,
    ) -> Endpoints {
        match (self, dual_stack) {
            (Mode::Ipv4, _) => Endpoints::Family(IpFamily::V4),
            (Mode::Ipv6, _) => Endpoints::Family(IpFamily::V6),
            (Mode::Auto, true) => Endpoints::Auto {
                own_global_v6: matches!(own_v6, Some(IpAddr::V6(ip)) if is_global_v6(ip)),
            },
            (Mode::Separate, _) | (Mode::Auto, false) => Endpoints::Family(family),
        }
    }

    /// The underlay family whose overhead the device serving `family` pays: the family its
    /// endpoints are of, and IPv6's (the larger) when `auto` may use either.
    pub fn overhead_family(&self, family: IpFamily, dual_stack: bool) -> IpFamily {
        match self.endpoints(family, dual_stack, None) {
            Endpoints::Family(f) => f,
            Endpoints::Auto { .. } => IpFamily::V6,
        }
    }
}

/// Which of a peer's public IPs its WireGuard endpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// The peer's public IP of this family.
    Family(IpFamily),
    /// `auto` on a dual-stack cluster, as flannel chooses: the peer's IPv4 public IP, unless
    /// that is a private one (RFC 1918) while both its IPv6 public IP and this node's are
    /// global (neither unique-local nor link-local): then its IPv6 public IP.
    Auto { own_global_v6: bool },
}

impl Endpoints {
    /// The address of `peer` to send to, if its lease has one.
    pub fn address_of(&self, peer: &Peer) -> Result<IpAddr, Unreachable> {
        let of = |family: IpFamily| {
            peer.public_ip_of(family).ok_or(Unreachable::NoPublicIp {
                field: match family {
                    IpFamily::V4 => "PublicIP",
                    IpFamily::V6 => "PublicIPv6",
                },
            })
        };
        match self {
            Endpoints::Family(f) => of(*f),
            Endpoints::Auto { own_global_v6 } => match peer.public_ip_v6 {
                Some(v6) if peer.public_ip.is_private() && *own_global_v6 && is_global_v6(v6) => {
                    Ok(IpAddr::V6(v6))
                }
                _ => Ok(IpAddr::V4(peer.public_ip)),
            },
        }
    }
}

/// Neither unique-local (fc00::/7) nor link-local (fe80::/10) nor unspecified or loopback.
fn is_global_v6(ip: std::net::Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || first & 0xfe00 == 0xfc00
        || first & 0xffc0 == 0xfe80)
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `Backend.Mode` weft does not know.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown mode {0:?} (supported: \"separate\", \"auto\", \"ipv4\", \"ipv6\")")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMode(s.to_string()))
    }
}

/// The name of weft's WireGuard device of `family`: `weft-wg`, or `weft-wg-v6` for IPv6 in
/// `separate` mode (flannel's are `flannel-wg` and `flannel-wg-v6`).
pub fn device_name(mode: Mode, family: IpFamily) -> &'static str {
    match (mode, family) {
        (Mode::Separate, IpFamily::V6) => "weft-wg-v6",
        _ => "weft-wg",
    }
}

/// Every name weft gives a WireGuard device.
pub const DEVICE_NAMES: [&str; 2] = ["weft-wg", "weft-wg-v6"];

/// Whether `name` is one of weft's WireGuard device names.
pub fn is_weft_device_name(name: &str) -> bool {
    DEVICE_NAMES.contains(&name)
}

/// The public key a peer's backend data carries, with its port, if it is wireguard data.
pub fn wireguard_data_in(data: BackendData) -> Option<WireguardPeer> {
    match data {
        BackendData::Wireguard(w) => Some(w),
        BackendData::Vxlan(_) => None,
    }
}

/// The wireguard backend's settings for one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireguardSettings {
    pub device: String,
    pub listen_port: u16,
    /// This node's public key (the device's private key is the kernel side's).
    pub public_key: Key,
    pub preshared_key: Option<PresharedKey>,
    /// `PersistentKeepaliveInterval` in seconds; 0 sends none.
    pub keepalive: u16,
    /// The device's MTU: an explicit `Backend.MTU`, else the underlay's minus WireGuard's
    /// overhead on the underlay's family (see [`WireguardSettings::mtu_for`]).
    pub mtu: u32,
    /// The cluster network of the family: routed through the device as a whole.
    pub network: IpNetwork,
    /// The underlay of the device's family (what pod subnets must not shadow).
    pub underlay: Underlay,
    /// Which of a peer's public IPs is its endpoint.
    pub endpoints: Endpoints,
}

impl WireguardSettings {
    /// The overlay MTU for an underlay MTU, unless the operator set one: the underlay's minus
    /// [`WIREGUARD_OVERHEAD_V4`] or [`WIREGUARD_OVERHEAD_V6`].
    pub fn mtu_for(underlay_mtu: u32, explicit: Option<u32>, underlay_family: IpFamily) -> u32 {
        explicit.unwrap_or(underlay_mtu.saturating_sub(wireguard_overhead(underlay_family)))
    }
}

/// The WireGuard device as weft wants it (or found it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WireguardDevice {
    pub name: String,
    pub listen_port: u16,
    /// The public key of the device's private key; None when it has none yet.
    pub public_key: Option<Key>,
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Addresses of the device's family on it (never IPv6 link-local ones): weft wants
    /// exactly `<own subnet network address>/32` (or `/128`).
    pub addresses: Vec<IpNetwork>,
}

/// A peer on the WireGuard device.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WireguardPeerEntry {
    pub public_key: Key,
    /// Where its packets go; None when none is set (only ever observed).
    pub endpoint: Option<SocketAddr>,
    /// Sorted.
    pub allowed_ips: Vec<IpNetwork>,
    pub preshared_key: Option<PresharedKey>,
    /// Seconds; 0 is off.
    pub keepalive: u16,
}

/// The kernel objects of the wireguard backend in one family: its device and its peers by
/// public key. Routes are the shared layer's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WireguardState {
    pub device: Option<WireguardDevice>,
    pub peers: BTreeMap<Key, WireguardPeerEntry>,
}

/// One change to the wireguard backend's objects. Sets replace what is there, deletes treat
/// "not found" as done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireguardOp {
    /// Create the device, or set its key, port, MTU or address in place.
    SetDevice(Box<WireguardDevice>),
    /// Delete the device (the backend no longer uses it).
    DeleteDevice(String),
    DeletePeer(Key),
    SetPeer(Box<WireguardPeerEntry>),
}

impl WireguardOp {
    /// Whether every address this operation programs is of `family`.
    pub fn is_of(&self, family: IpFamily) -> bool {
        let of = |ip: IpAddr| IpFamily::of(ip) == family;
        match self {
            WireguardOp::SetDevice(d) => d.addresses.iter().all(|a| of(a.ip())),
            WireguardOp::DeleteDevice(_) | WireguardOp::DeletePeer(_) => true,
            // The endpoint may be of the other family (the single-device modes).
            WireguardOp::SetPeer(p) => p.allowed_ips.iter().all(|a| of(a.ip())),
        }
    }

    pub fn is_deletion(&self) -> bool {
        matches!(
            self,
            WireguardOp::DeleteDevice(_) | WireguardOp::DeletePeer(_)
        )
    }
}

impl From<WireguardOp> for Op {
    fn from(op: WireguardOp) -> Op {
        Op::Wireguard(op)
    }
}

impl Backend for WireguardSettings {
    fn kind(&self) -> BackendKind {
        BackendKind::Wireguard
    }

    fn family(&self) -> IpFamily {
        self.underlay.family()
    }

    fn plan<'a>(&self, own_subnet: IpNetwork, peers: impl IntoIterator<Item = &'a Peer>) -> Plan {
        let w = self;
        let family = IpFamily::of_network(own_subnet);
        let mut p = Plan::default();
        if let Some(why) = underlay_family_mismatch("WireGuard", &w.underlay, own_subnet) {
            return refused_for_family(why, own_subnet, peers);
        }
        p.state.wireguard.device = Some(WireguardDevice {
            name: w.device.clone(),
            listen_port: w.listen_port,
            public_key: Some(w.public_key),
            mtu: w.mtu,
            up: true,
            addresses: vec![device_address(own_subnet)],
        });
        p.state.routes.insert(Route {
            dst: w.network,
            via: Via::Device,
        });
        // Which subnet holds each key so far: a key names one peer only.
        let mut holders: BTreeMap<Key, IpNetwork> = BTreeMap::new();
        for peer in peers {
            let Some(subnet) = peer.subnet_of(family) else {
                p.unreachable
                    .push((peer.subnet.into(), Unreachable::NoSubnet(family)));
                continue;
            };
            let public_ip = match w.endpoints.address_of(peer) {
                Ok(ip) => ip,
                Err(why) => {
                    p.unreachable.push((subnet, why));
                    continue;
                }
            };
            let peer = PeerView {
                subnet,
                public_ip,
                data: peer.data_of(family).copied(),
            };
            if let Some(why) = w.underlay.shadows(own_subnet, peer.subnet) {
                p.refused.push((peer.subnet, why));
                continue;
            }
            let Some(data) = peer.data.and_then(wireguard_data_in) else {
                let what = match family {
                    IpFamily::V4 => "WireGuard PublicKey",
                    IpFamily::V6 => "IPv6 WireGuard PublicKey",
                };
                p.unreachable
                    .push((peer.subnet, Unreachable::NoBackendData { what }));
                continue;
            };
            if data.public_key == w.public_key {
                p.refused.push((peer.subnet, Refused::OwnKey));
                continue;
            }
            if let Some(holder) = holders.get(&data.public_key) {
                p.refused.push((peer.subnet, Refused::KeyInUse(*holder)));
                continue;
            }
            holders.insert(data.public_key, peer.subnet);
            let port = if data.port == 0 {
                w.listen_port
            } else {
                data.port
            };
            p.state.wireguard.peers.insert(
                data.public_key,
                WireguardPeerEntry {
                    public_key: data.public_key,
                    endpoint: Some(SocketAddr::new(peer.public_ip, port)),
                    allowed_ips: vec![peer.subnet],
                    preshared_key: w.preshared_key,
                    keepalive: w.keepalive,
                },
            );
        }
        p
    }
}

/// The wireguard part of a diff: the device first (a deleted device takes its peers and the
/// route through it along); then removals of peers no lease explains (or whose key
/// changed), then peers added or changed.
pub(crate) fn diff(observed: &WireguardState, desired: &WireguardState) -> BackendDiff {
    let mut d = BackendDiff::default();
    let wiped = WireguardState::default();
    let observed = match (&observed.device, &desired.device) {
        (have, Some(want)) if have.as_ref() != Some(want) => {
            d.device
                .push(WireguardOp::SetDevice(Box::new(want.clone())).into());
            observed
        }
        (Some(have), None) => {
            d.device
                .push(WireguardOp::DeleteDevice(have.name.clone()).into());
            d.device_gone = true;
            &wiped
        }
        _ => observed,
    };
    for key in observed.peers.keys() {
        if !desired.peers.contains_key(key) {
            d.remove.push(WireguardOp::DeletePeer(*key).into());
        }
    }
    for (key, want) in &desired.peers {
        if observed.peers.get(key) != Some(want) {
            d.add
                .push(WireguardOp::SetPeer(Box::new(want.clone())).into());
        }
    }
    d
}

/// What `netctl check` reports for a wireguard operation the diff would apply.
pub(crate) fn explain(
    op: &WireguardOp,
    observed: &WireguardState,
    names: &LinkNames,
    backend: BackendKind,
) -> Finding {
    match op {
        WireguardOp::SetDevice(want) => match &observed.device {
            None => Finding::missing("device", names.show(want.as_ref()).to_string()),
            Some(have) => {
                let mut what = Vec::new();
                if have.public_key != want.public_key {
                    what.push(format!(
                        "public key {} (the lease says {})",
                        key_text(have.public_key.as_ref()),
                        key_text(want.public_key.as_ref())
                    ));
                }
                if have.listen_port != want.listen_port {
                    what.push(format!(
                        "listen port {} (want {})",
                        have.listen_port, want.listen_port
                    ));
                }
                if have.mtu != want.mtu {
                    what.push(format!("MTU {} (want {})", have.mtu, want.mtu));
                }
                if !have.up {
                    what.push("down".to_string());
                }
                if have.addresses != want.addresses {
                    what.push(format!(
                        "addresses {} (want {})",
                        crate::plan::addresses_text(&have.addresses),
                        crate::plan::addresses_text(&want.addresses)
                    ));
                }
                Finding::wrong("device", format!("{}: {}", want.name, what.join(", ")))
            }
        },
        WireguardOp::DeleteDevice(name) => Finding::extra(
            "device",
            format!("{name} exists but the backend is {backend}"),
        ),
        WireguardOp::SetPeer(want) => match observed.peers.get(&want.public_key) {
            None => Finding::missing("peer", names.show(want.as_ref()).to_string()),
            Some(have) => {
                let mut what = Vec::new();
                if have.endpoint != want.endpoint {
                    what.push(format!(
                        "endpoint {} (want {})",
                        endpoint_text(have.endpoint),
                        endpoint_text(want.endpoint)
                    ));
                }
                if have.allowed_ips != want.allowed_ips {
                    what.push(format!(
                        "allowed IPs {} (want {})",
                        crate::plan::addresses_text(&have.allowed_ips),
                        crate::plan::addresses_text(&want.allowed_ips)
                    ));
                }
                if have.preshared_key != want.preshared_key {
                    what.push(match want.preshared_key {
                        Some(_) if have.preshared_key.is_some() => {
                            "another preshared key than the cluster's".to_string()
                        }
                        Some(_) => "no preshared key (the cluster has one)".to_string(),
                        None => "a preshared key (the cluster has none)".to_string(),
                    });
                }
                if have.keepalive != want.keepalive {
                    what.push(format!(
                        "keepalive {} (want {})",
                        keepalive_text(have.keepalive),
                        keepalive_text(want.keepalive)
                    ));
                }
                Finding::wrong(
                    "peer",
                    format!(
                        "{} on {}: {}",
                        want.public_key,
                        names.device(),
                        what.join(", ")
                    ),
                )
            }
        },
        WireguardOp::DeletePeer(key) => {
            let detail = match observed.peers.get(key) {
                Some(have) => names.show(have).to_string(),
                None => format!("peer {key} dev {}", names.device()),
            };
            Finding::extra(
                "peer",
                format!("{detail} (stale: no lease has this public key)"),
            )
        }
    }
}

fn key_text(k: Option<&Key>) -> String {
    k.map_or("none".into(), Key::to_base64)
}

fn endpoint_text(e: Option<SocketAddr>) -> String {
    e.map_or("none".into(), |e| e.to_string())
}

fn keepalive_text(seconds: u16) -> String {
    match seconds {
        0 => "off".into(),
        s => format!("every {s}s"),
    }
}

/// Whether a wireguard operation concerns `peer`: a WireGuard peer with its key or allowed
/// IPs in its subnet. The device concerns no peer.
pub(crate) fn concerns(op: &WireguardOp, peer: &Peer, family: IpFamily) -> bool {
    let its_key = |key: &Key| {
        peer.data_of(family)
            .copied()
            .and_then(wireguard_data_in)
            .is_some_and(|d| d.public_key == *key)
    };
    match op {
        WireguardOp::SetPeer(p) => {
            its_key(&p.public_key)
                || peer
                    .subnet_of(family)
                    .is_some_and(|s| p.allowed_ips.contains(&s))
        }
        WireguardOp::DeletePeer(key) => its_key(key),
        WireguardOp::SetDevice(_) | WireguardOp::DeleteDevice(_) => false,
    }
}

impl fmt::Display for Named<'_, WireguardDevice> {
    /// `weft-wg (wireguard listen-port 51820, public key …, mtu 1440)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.value;
        write!(
            f,
            "{} (wireguard listen-port {}, public key {}, mtu {})",
            d.name,
            d.listen_port,
            key_text(d.public_key.as_ref()),
            d.mtu
        )
    }
}

impl fmt::Display for Named<'_, WireguardPeerEntry> {
    /// `peer <key> endpoint 192.0.2.12:51820 allowed-ips 10.244.2.0/24 dev weft-wg`, as `wg`
    /// spells them (the preshared key is never shown, only whether there is one).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.value;
        write!(
            f,
            "peer {} endpoint {} allowed-ips {}",
            p.public_key,
            endpoint_text(p.endpoint),
            crate::plan::addresses_text(&p.allowed_ips)
        )?;
        if p.preshared_key.is_some() {
            f.write_str(" preshared-key (set)")?;
        }
        if p.keepalive != 0 {
            write!(f, " persistent-keepalive {}", p.keepalive)?;
        }
        write!(f, " dev {}", self.names.device())
    }
}

impl fmt::Display for Named<'_, WireguardOp> {
    /// The operation as a verb and its object: `set peer …`, `delete peer …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.names;
        match self.value {
            WireguardOp::SetDevice(d) => write!(f, "set device {}", n.show(d.as_ref())),
            WireguardOp::DeleteDevice(name) => write!(f, "delete device {name}"),
            WireguardOp::SetPeer(p) => write!(f, "set {}", n.show(p.as_ref())),
            WireguardOp::DeletePeer(k) => write!(f, "delete peer {k} dev {}", n.device()),
        }
    }
}
