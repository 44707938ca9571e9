//! The kernel WireGuard module's configuration protocol: generic netlink, family
//! `wireguard` (version 1), commands `WG_CMD_GET_DEVICE` and `WG_CMD_SET_DEVICE`, attributes
//! as in the kernel's `include/uapi/linux/wireguard.h`. It takes and gives the same
//! [`DeviceChange`] and [`DeviceState`] as the userspace protocol ([`super::uapi`]), so the
//! two are interchangeable for whoever configures a device.
//!
//! Two parts, kept apart:
//! - a pure codec: [`family_request`] and [`parse_family_answer`] resolve the family's id
//!   through the generic netlink controller; [`set_messages`] encodes a change, split into
//!   several messages when it is large; [`get_request`] asks for a device and
//!   [`parse_get_answers`] reads the kernel's answer back, however it was split;
//! - a thin blocking socket, [`GenlWireguard`], that sends those messages and checks the
//!   kernel's answers, in the style of [`crate::netlink::NlSocket`].
//!
//! The messages are built and read with the `netlink-packet-wireguard` and
//! `netlink-packet-generic` crates, which build on the same `netlink-packet-core` as the rest
//! of weft; only the controller's answer is read by hand, because that crate's parser refuses
//! any controller attribute it does not know (a newer kernel could add one).
//!
//! What the kernel does, and this module relies on (`drivers/net/wireguard/netlink.c`):
//! - GET_DEVICE is a dump (`NLM_F_DUMP`), answered by several `NLM_F_MULTI` messages and then
//!   `NLMSG_DONE`. Only the first message carries the device's own attributes. When the
//!   peers do not fit in one message they continue in the next; when one peer's allowed IPs do
//!   not fit, the same peer is sent again at the start of the next message with only its
//!   public key and the rest of its allowed IPs, and the reader joins adjacent entries with the
//!   same key. A device changed during the dump is flagged `NLM_F_DUMP_INTR`; it is read again.
//! - The entries of the peer and allowed-IP lists are nested attributes of type 0 (with
//!   `NLA_F_NESTED`); the kernel does not look at the type when reading them.
//! - SET_DEVICE takes one message at a time. A change too large for one message is sent as
//!   several, as `wg` does: every message names the device, only the first carries the
//!   device's settings and `WGDEVICE_F_REPLACE_PEERS`, and a peer split across two messages
//!   sends its settings and `WGPEER_F_REPLACE_ALLOWEDIPS` only in the first. `wg` limits each
//!   message to a page (at most 8 KiB); weft uses [`SET_MESSAGE_LIMIT`].
//!
//! One known limit of the crate: it reads a `WGALLOWEDIP_A_CIDR_MASK` attribute's byte without
//! checking that there is one, so an empty one (which the kernel never sends) panics instead
//! of being an error; every other malformed answer is a [`GenlError`].
//!
//! Sequence numbers: the codec builds messages with sequence number 0 and port id 0; the
//! socket stamps its own sequence number on each message as it sends it (the kernel fills
//! in the port id).

use std::fmt::Debug;
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use ipnetwork::IpNetwork;
use netlink_packet_core::{
    parse_u16, DecodeError, DoneBuffer, Emitable, ErrorBuffer, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NlasIterator, ParseableParametrized, NLA_HEADER_SIZE,
    NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_generic::constants::{CTRL_ATTR_FAMILY_ID, GENL_HDRLEN, GENL_ID_CTRL};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlMessage};
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardDeviceFlags, WireguardMessage, WireguardPeer, WireguardPeerAttribute,
    WireguardPeerFlags,
};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr as NlAddr};

use super::key::{Key, PrivateKey};
use super::uapi::{DeviceChange, DeviceState, PeerChange, PeerState};
use crate::netlink::NlError;

/// The generic netlink family the kernel's WireGuard module registers.
pub const FAMILY_NAME: &str = "wireguard";

/// The largest SET_DEVICE message [`set_messages`] builds, in bytes, headers included: a page,
/// as `wg` uses (the kernel itself takes more, up to the socket's send buffer).
pub const SET_MESSAGE_LIMIT: usize = 4096;

/// Longest interface name, without its terminating NUL (`IFNAMSIZ - 1`).
const IFNAME_MAX: usize = 15;

/// `struct nlmsghdr` and `struct genlmsghdr`.
const HEADERS_LEN: usize = 16 + GENL_HDRLEN;

/// The first netlink message type that is a family's own (below it: NOOP, ERROR, DONE, …).
const NLMSG_MIN_TYPE: u16 = 0x10;

/// Why a WireGuard generic netlink message cannot be built, or the kernel's answer not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GenlError {
    #[error(
        "WireGuard device name {name:?} is {} bytes long, more than the kernel's 15; use a shorter name",
        .name.len()
    )]
    InterfaceName { name: String },
    #[error("cannot read the kernel's WireGuard answer: {0}")]
    Malformed(String),
    #[error(
        "the kernel's WireGuard answer is netlink message type {kind}, not a generic netlink family's message"
    )]
    UnexpectedMessage { kind: u16 },
    #[error("the kernel's WireGuard answer is command {cmd}, not WG_CMD_GET_DEVICE (0)")]
    UnexpectedCommand { cmd: u8 },
    #[error("the kernel sent no WireGuard device message")]
    NoDeviceMessage,
    #[error(
        "the WireGuard device changed while it was being read (the kernel marked its answer interrupted); read it again"
    )]
    Interrupted,
    #[error("the kernel's WireGuard answer has a peer without a public key")]
    PeerWithoutKey,
    #[error(
        "the kernel's WireGuard answer has an allowed IP of address family {0}, neither IPv4 (2) nor IPv6 (10)"
    )]
    AllowedIpFamily(u16),
    #[error(
        "the kernel's WireGuard answer has an allowed IP {addr} whose address family says otherwise"
    )]
    AllowedIpMismatch { addr: IpAddr },
    #[error(
        "the kernel's WireGuard answer has an allowed IP without its address family, address or prefix length"
    )]
    AllowedIpIncomplete,
    #[error(
        "the kernel's WireGuard answer has an allowed IP {addr}/{cidr}, a prefix length too long for its family"
    )]
    AllowedIpPrefix { addr: IpAddr, cidr: u8 },
    #[error("the kernel's answer about the {FAMILY_NAME} generic netlink family has no family id")]
    NoFamilyId,
}

impl From<DecodeError> for GenlError {
    fn from(e: DecodeError) -> GenlError {
        GenlError::Malformed(e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// The codec: bytes in, bytes out, no socket.

/// The controller request (`CTRL_CMD_GETFAMILY`) for the id of the `wireguard` family.
pub fn family_request() -> Vec<u8> {
    let ctrl = GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY_NAME.into())],
    };
    serialize(GenlMessage::from_payload(ctrl), NLM_F_REQUEST | NLM_F_ACK)
}

/// The family id (`CTRL_ATTR_FAMILY_ID`) in the controller's answer to [`family_request`].
/// Attributes other than the id are skipped, whatever they are.
pub fn parse_family_answer(message: &[u8]) -> Result<u16, GenlError> {
    let nl = NetlinkBuffer::new_checked(message)?;
    if nl.message_type() != GENL_ID_CTRL {
        return Err(GenlError::UnexpectedMessage {
            kind: nl.message_type(),
        });
    }
    let attributes = generic_attributes(nl.payload())?;
    for nla in NlasIterator::new(attributes) {
        let nla = nla?;
        if nla.kind() == CTRL_ATTR_FAMILY_ID {
            return Ok(parse_u16(nla.value())?);
        }
    }
    Err(GenlError::NoFamilyId)
}

/// The GET_DEVICE dump request for the device called `ifname`.
pub fn get_request(family_id: u16, ifname: &str) -> Result<Vec<u8>, GenlError> {
    check_ifname(ifname)?;
    let message = wireguard_message(
        family_id,
        WireguardCmd::GetDevice,
        vec![WireguardAttribute::IfName(ifname.into())],
    );
    Ok(serialize(message, NLM_F_REQUEST | NLM_F_DUMP))
}

/// The SET_DEVICE messages that make `change` to the device called `ifname`, in the order to
/// send them, each at most [`SET_MESSAGE_LIMIT`] bytes and each asking for an ACK. A change
/// without peers is one message; a large one is split as the module doc says. The kernel
/// applies each message on its own: when one is refused, the ones before it have been made.
pub fn set_messages(
    family_id: u16,
    ifname: &str,
    change: &DeviceChange,
) -> Result<Vec<Vec<u8>>, GenlError> {
    set_messages_within(family_id, ifname, change, SET_MESSAGE_LIMIT)
}

/// [`set_messages`] with another size limit. The limit must leave room for a device's
/// settings and one peer with one allowed IP (some 300 bytes); a smaller one is exceeded
/// rather than looping forever.
fn set_messages_within(
    family_id: u16,
    ifname: &str,
    change: &DeviceChange,
    limit: usize,
) -> Result<Vec<Vec<u8>>, GenlError> {
    check_ifname(ifname)?;
    let mut device = vec![WireguardAttribute::IfName(ifname.into())];
    if let Some(k) = &change.private_key {
        device.push(WireguardAttribute::PrivateKey(*k.as_bytes()));
    }
    if let Some(port) = change.listen_port {
        device.push(WireguardAttribute::ListenPort(port));
    }
    if change.replace_peers {
        device.push(WireguardAttribute::Flags(
            WireguardDeviceFlags::ReplacePeers,
        ));
    }
    let mut split = SetSplit::new(family_id, ifname, device, limit);
    for peer in &change.peers {
        // A removal sends the key and the flag only, as the userspace encoding does.
        let mut rest: &[IpNetwork] = if peer.remove { &[] } else { &peer.allowed_ips };
        let mut first_fragment = true;
        loop {
            let head = peer_head(peer, first_fragment);
            let head_len = NLA_HEADER_SIZE + head.as_slice().buffer_len();
            if head_len > split.room() && !split.is_fresh() {
                split.flush();
                continue;
            }
            let mut taken = Vec::new();
            if !rest.is_empty() {
                let mut left = split
                    .room()
                    .saturating_sub(head_len + NLA_HEADER_SIZE /* WGPEER_A_ALLOWEDIPS */);
                for net in rest {
                    let entry = allowed_ip(net);
                    let len = entry.buffer_len();
                    // A fresh message takes at least one, so that the split always ends.
                    if len > left && !(taken.is_empty() && split.is_fresh()) {
                        break;
                    }
                    left = left.saturating_sub(len);
                    taken.push(entry);
                }
                if taken.is_empty() {
                    // Only the peer's head would fit: start it in the next message instead.
                    split.flush();
                    continue;
                }
            }
            let n = taken.len();
            let mut attributes = head;
            if n > 0 {
                attributes.push(WireguardPeerAttribute::AllowedIps(taken));
            }
            split.push(WireguardPeer(attributes));
            rest = &rest[n..];
            if rest.is_empty() {
                break;
            }
            split.flush();
            first_fragment = false;
        }
    }
    Ok(split.finish())
}

/// The messages of one SET_DEVICE change as they fill up.
struct SetSplit<'a> {
    family_id: u16,
    ifname: &'a str,
    limit: usize,
    /// The current message's device attributes (the interface name at least).
    device: Vec<WireguardAttribute>,
    peers: Vec<WireguardPeer>,
    /// Bytes the current message has, counting the peer list's header.
    used: usize,
    done: Vec<Vec<u8>>,
}

impl<'a> SetSplit<'a> {
    fn new(
        family_id: u16,
        ifname: &'a str,
        device: Vec<WireguardAttribute>,
        limit: usize,
    ) -> SetSplit<'a> {
        let mut split = SetSplit {
            family_id,
            ifname,
            limit,
            device,
            peers: Vec::new(),
            used: 0,
            done: Vec::new(),
        };
        split.used = split.empty_len();
        split
    }

    fn empty_len(&self) -> usize {
        HEADERS_LEN + self.device.as_slice().buffer_len() + NLA_HEADER_SIZE
    }

    fn room(&self) -> usize {
        self.limit.saturating_sub(self.used)
    }

    /// Whether the current message has no peer yet.
    fn is_fresh(&self) -> bool {
        self.peers.is_empty()
    }

    fn push(&mut self, peer: WireguardPeer) {
        self.used += peer.buffer_len();
        self.peers.push(peer);
    }

    /// End the current message; the next one names the device only.
    fn flush(&mut self) {
        let mut attributes = std::mem::replace(
            &mut self.device,
            vec![WireguardAttribute::IfName(self.ifname.into())],
        );
        if !self.peers.is_empty() {
            attributes.push(WireguardAttribute::Peers(std::mem::take(&mut self.peers)));
        }
        let message = wireguard_message(self.family_id, WireguardCmd::SetDevice, attributes);
        self.done
            .push(serialize(message, NLM_F_REQUEST | NLM_F_ACK));
        self.used = self.empty_len();
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        if !self.peers.is_empty() || self.done.is_empty() {
            self.flush();
        }
        self.done
    }
}

/// A peer's attributes other than its allowed IPs; a later fragment has only the key.
fn peer_head(peer: &PeerChange, first_fragment: bool) -> Vec<WireguardPeerAttribute> {
    let mut out = vec![WireguardPeerAttribute::PublicKey(peer.public_key.0)];
    if peer.remove {
        out.push(WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe));
        return out;
    }
    if !first_fragment {
        return out;
    }
    if let Some(k) = &peer.preshared_key {
        out.push(WireguardPeerAttribute::PresharedKey(k.0));
    }
    if let Some(e) = peer.endpoint {
        out.push(WireguardPeerAttribute::Endpoint(e));
    }
    if let Some(k) = peer.persistent_keepalive {
        out.push(WireguardPeerAttribute::PersistentKeepalive(k));
    }
    if peer.replace_allowed_ips {
        out.push(WireguardPeerAttribute::Flags(
            WireguardPeerFlags::ReplaceAllowedIps,
        ));
    }
    out
}

fn allowed_ip(net: &IpNetwork) -> WireguardAllowedIp {
    let family = match net {
        IpNetwork::V4(_) => WireguardAddressFamily::Ipv4,
        IpNetwork::V6(_) => WireguardAddressFamily::Ipv6,
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(net.ip()),
        WireguardAllowedIpAttr::Cidr(net.prefix()),
    ])
}

/// The device as the kernel's GET_DEVICE answer describes it: `messages` are the answer's
/// data messages (each a whole netlink message, header included, without the final
/// `NLMSG_DONE`), in the order they came. Peers continued from one message to the next are
/// joined. The public key is derived from the private key, as [`super::uapi`] does; an
/// all-zero preshared key counts as none, and a last handshake at time 0 as none.
pub fn parse_get_answers(messages: &[&[u8]]) -> Result<DeviceState, GenlError> {
    if messages.is_empty() {
        return Err(GenlError::NoDeviceMessage);
    }
    let mut device = DeviceState::default();
    for bytes in messages {
        let nl = NetlinkBuffer::new_checked(*bytes)?;
        if nl.message_type() < NLMSG_MIN_TYPE {
            return Err(GenlError::UnexpectedMessage {
                kind: nl.message_type(),
            });
        }
        if nl.flags() & NLM_F_DUMP_INTR != 0 {
            return Err(GenlError::Interrupted);
        }
        let genl =
            GenlMessage::<WireguardMessage>::parse_with_param(nl.payload(), nl.message_type())?;
        if genl.payload.cmd != WireguardCmd::GetDevice {
            return Err(GenlError::UnexpectedCommand {
                cmd: genl.payload.cmd.into(),
            });
        }
        for attribute in genl.payload.attributes {
            match attribute {
                WireguardAttribute::PrivateKey(k) => {
                    device.public_key = Some(PrivateKey::from_bytes(k).public_key())
                }
                WireguardAttribute::ListenPort(port) => device.listen_port = port,
                WireguardAttribute::Peers(peers) => {
                    for peer in peers {
                        add_peer(&mut device.peers, peer)?;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(device)
}

/// Add one peer entry of an answer, joining it to the last peer when it has the same key
/// (the rest of that peer's allowed IPs).
fn add_peer(peers: &mut Vec<PeerState>, entry: WireguardPeer) -> Result<(), GenlError> {
    let key = entry
        .iter()
        .find_map(|a| match a {
            WireguardPeerAttribute::PublicKey(k) => Some(Key(*k)),
            _ => None,
        })
        .ok_or(GenlError::PeerWithoutKey)?;
    if peers.last().is_none_or(|last| last.public_key != key) {
        peers.push(PeerState::new(key));
    }
    let peer = peers.last_mut().expect("just pushed");
    for attribute in entry.0 {
        match attribute {
            WireguardPeerAttribute::PresharedKey(k) => {
                let k = Key(k);
                peer.preshared_key = (!k.is_zero()).then_some(k);
            }
            WireguardPeerAttribute::Endpoint(e) => peer.endpoint = Some(without_flowinfo(e)),
            WireguardPeerAttribute::PersistentKeepalive(k) => peer.persistent_keepalive = k,
            WireguardPeerAttribute::LastHandshake(t) => {
                peer.last_handshake_sec = u64::try_from(t.seconds).ok().filter(|s| *s != 0)
            }
            WireguardPeerAttribute::RxBytes(n) => peer.rx_bytes = n,
            WireguardPeerAttribute::TxBytes(n) => peer.tx_bytes = n,
            WireguardPeerAttribute::AllowedIps(ips) => {
                for ip in &ips {
                    peer.allowed_ips.push(allowed_ip_network(ip)?);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// An IPv6 endpoint without its flow label: weft never sets one, the userspace protocol does
/// not report one, and the crate reads that field in host byte order although the kernel
/// keeps it in network order.
fn without_flowinfo(e: SocketAddr) -> SocketAddr {
    match e {
        SocketAddr::V6(v6) => {
            SocketAddr::V6(SocketAddrV6::new(*v6.ip(), v6.port(), 0, v6.scope_id()))
        }
        v4 => v4,
    }
}

fn allowed_ip_network(entry: &WireguardAllowedIp) -> Result<IpNetwork, GenlError> {
    let (mut family, mut addr, mut cidr) = (None, None, None);
    for attribute in entry.iter() {
        match attribute {
            WireguardAllowedIpAttr::Family(f) => family = Some(*f),
            WireguardAllowedIpAttr::IpAddr(a) => addr = Some(*a),
            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(*c),
            _ => {}
        }
    }
    let (Some(family), Some(addr), Some(cidr)) = (family, addr, cidr) else {
        return Err(GenlError::AllowedIpIncomplete);
    };
    let matches = match family {
        WireguardAddressFamily::Ipv4 => addr.is_ipv4(),
        WireguardAddressFamily::Ipv6 => addr.is_ipv6(),
        other => return Err(GenlError::AllowedIpFamily(u16::from(other))),
    };
    if !matches {
        return Err(GenlError::AllowedIpMismatch { addr });
    }
    IpNetwork::new(addr, cidr).map_err(|_| GenlError::AllowedIpPrefix { addr, cidr })
}

fn check_ifname(ifname: &str) -> Result<(), GenlError> {
    if ifname.len() > IFNAME_MAX {
        return Err(GenlError::InterfaceName {
            name: ifname.into(),
        });
    }
    Ok(())
}

/// The attributes after a generic netlink message's `genlmsghdr`.
fn generic_attributes(payload: &[u8]) -> Result<&[u8], GenlError> {
    payload.get(GENL_HDRLEN..).ok_or_else(|| {
        GenlError::Malformed(format!(
            "the message is {} bytes, too short for a generic netlink header",
            payload.len()
        ))
    })
}

fn wireguard_message(
    family_id: u16,
    cmd: WireguardCmd,
    attributes: Vec<WireguardAttribute>,
) -> GenlMessage<WireguardMessage> {
    let mut message = GenlMessage::from_payload(WireguardMessage { cmd, attributes });
    message.set_resolved_family_id(family_id);
    message
}

/// A whole netlink message: header (sequence number and port id 0), generic netlink header,
/// attributes.
fn serialize<F>(message: GenlMessage<F>, flags: u16) -> Vec<u8>
where
    F: GenlFamily + Emitable + Debug,
{
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    packet.finalize();
    let mut out = vec![0; packet.buffer_len()];
    packet.serialize(&mut out);
    out
}

/// Put `seq` into a message built by this codec.
fn stamp_sequence(message: &mut [u8], seq: u32) {
    NetlinkBuffer::new(message).set_sequence_number(seq);
}

// ---------------------------------------------------------------------------------------------
// The socket.

/// A failure of [`GenlWireguard`]: of the socket or a refusal by the kernel (as
/// [`crate::netlink::NlSocket`] reports them), or a message that cannot be built or read.
#[derive(Debug, thiserror::Error)]
pub enum GenlWireguardError {
    #[error(transparent)]
    Netlink(#[from] NlError),
    #[error("{op}: {error}")]
    Message { op: String, error: GenlError },
}

impl GenlWireguardError {
    /// The errno the kernel answered with, if this is a refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            GenlWireguardError::Netlink(e) => e.errno(),
            GenlWireguardError::Message { .. } => None,
        }
    }

    /// Whether the kernel said that the device does not exist.
    pub fn is_gone(&self) -> bool {
        matches!(self, GenlWireguardError::Netlink(e) if e.is_gone())
    }
}

/// A generic netlink socket to the kernel's WireGuard module, in the network namespace it was
/// opened in, with the module's family id resolved.
#[derive(Debug)]
pub struct GenlWireguard {
    socket: Socket,
    family_id: u16,
    seq: u32,
    buf: Vec<u8>,
}

/// Receive buffer: a dump message is at most some 32 KiB.
const RECV_BUF: usize = 64 * 1024;

/// How long to wait for an answer before giving up; the kernel answers at once, so this only
/// turns a lost answer into an error instead of a hang.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads of a device that the kernel marks interrupted (it changed meanwhile) before giving up.
const GET_ATTEMPTS: usize = 5;

impl GenlWireguard {
    /// A socket in the calling thread's network namespace; `None` when the kernel has no
    /// `wireguard` generic netlink family (the module is not loaded or not built).
    pub fn open() -> Result<Option<GenlWireguard>, GenlWireguardError> {
        let mut socket = Socket::new(NETLINK_GENERIC).map_err(NlError::Socket)?;
        socket.bind_auto().map_err(NlError::Socket)?;
        socket
            .connect(&NlAddr::new(0, 0))
            .map_err(NlError::Socket)?;
        {
            use nix::sys::socket::{setsockopt, sockopt};
            let tv = nix::sys::time::TimeVal::new(ANSWER_TIMEOUT.as_secs() as i64, 0);
            setsockopt(&socket, sockopt::ReceiveTimeout, &tv)
                .map_err(|e| NlError::Socket(e.into()))?;
        }
        let mut wg = GenlWireguard {
            socket,
            family_id: 0,
            seq: 0,
            buf: vec![0; RECV_BUF],
        };
        let op = format!("look up the kernel's {FAMILY_NAME} generic netlink family");
        let answers = match wg.exchange(&op, family_request()) {
            Ok(answers) => answers,
            // The controller's answer when no module registered the family.
            Err(e) if e.is(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let first = answers.first().ok_or_else(|| GenlWireguardError::Message {
            op: op.clone(),
            error: GenlError::NoFamilyId,
        })?;
        wg.family_id = parse_family_answer(first)
            .map_err(|error| GenlWireguardError::Message { op, error })?;
        Ok(Some(wg))
    }

    /// The id the kernel gave the `wireguard` family.
    pub fn family_id(&self) -> u16 {
        self.family_id
    }

    /// The device called `ifname`, its peers and their allowed IPs. A device that is not
    /// there is an error for which [`GenlWireguardError::is_gone`] holds; a link that is not a
    /// WireGuard device is refused with `EOPNOTSUPP`.
    pub fn get(&mut self, ifname: &str) -> Result<DeviceState, GenlWireguardError> {
        let op = format!("read WireGuard device {ifname}");
        let message = |error| GenlWireguardError::Message {
            op: op.clone(),
            error,
        };
        let request = get_request(self.family_id, ifname).map_err(message)?;
        let mut attempt = 1;
        loop {
            let answers = self.exchange(&op, request.clone())?;
            let views: Vec<&[u8]> = answers.iter().map(Vec::as_slice).collect();
            match parse_get_answers(&views) {
                Err(GenlError::Interrupted) if attempt < GET_ATTEMPTS => attempt += 1,
                result => return result.map_err(message),
            }
        }
    }

    /// Make `change` to the device called `ifname`: every message of [`set_messages`] in
    /// turn, each acknowledged before the next is sent. On a refusal the messages before it
    /// have been applied; the error says which message was refused.
    pub fn set(&mut self, ifname: &str, change: &DeviceChange) -> Result<(), GenlWireguardError> {
        let messages = set_messages(self.family_id, ifname, change).map_err(|error| {
            GenlWireguardError::Message {
                op: format!("configure WireGuard device {ifname}"),
                error,
            }
        })?;
        let count = messages.len();
        for (i, message) in messages.into_iter().enumerate() {
            let op = if count == 1 {
                format!("configure WireGuard device {ifname}")
            } else {
                format!(
                    "configure WireGuard device {ifname} (message {} of {count})",
                    i + 1
                )
            };
            self.exchange(&op, message)?;
        }
        Ok(())
    }

    /// Send `message` with the next sequence number and collect the data messages answering
    /// it until the ACK (`NLMSG_ERROR` with code 0) or, for a dump, `NLMSG_DONE`. A refusal,
    /// in either, is [`NlError::Kernel`] with `op` and the errno.
    fn exchange(&mut self, op: &str, mut message: Vec<u8>) -> Result<Vec<Vec<u8>>, NlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        stamp_sequence(&mut message, seq);
        self.socket.send(&message, 0).map_err(NlError::Socket)?;
        let decode = |problem: String| NlError::Decode {
            op: op.into(),
            problem,
        };
        let refusal = |code: i32| NlError::Kernel {
            op: op.into(),
            error: io::Error::from_raw_os_error(code.wrapping_neg()),
        };
        let mut answers = Vec::new();
        loop {
            self.buf.clear();
            let n = self.socket.recv(&mut self.buf, 0).map_err(|e| {
                NlError::Socket(match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{op}: no answer from the kernel within {} s",
                            ANSWER_TIMEOUT.as_secs()
                        ),
                    ),
                    _ => e,
                })
            })?;
            let mut at = 0;
            while at < n {
                let frame = &self.buf[at..n];
                let nl = NetlinkBuffer::new_checked(frame).map_err(|e| decode(e.to_string()))?;
                let len = nl.length() as usize;
                at += (len + 3) & !3;
                if nl.sequence_number() != seq {
                    continue; // a late answer to an earlier request
                }
                match nl.message_type() {
                    NLMSG_ERROR => {
                        let error = ErrorBuffer::new_checked(nl.payload())
                            .map_err(|e| decode(e.to_string()))?;
                        return match error.code() {
                            None => Ok(answers),
                            Some(code) => Err(refusal(code.get())),
                        };
                    }
                    NLMSG_DONE => {
                        // A dump's final message carries its outcome.
                        let done = DoneBuffer::new_checked(nl.payload())
                            .map_err(|e| decode(e.to_string()))?;
                        return match done.code() {
                            0 => Ok(answers),
                            code => Err(refusal(code)),
                        };
                    }
                    kind if kind < NLMSG_MIN_TYPE => {} // NOOP, OVERRUN
                    _ => answers.push(frame[..len].to_vec()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAMILY: u16 = 0x1e;

    fn key(n: u8) -> Key {
        Key([n; 32])
    }

    /// The clamped bytes of `PrivateKey::from_bytes([0x10; 32])`.
    fn private_bytes() -> Vec<u8> {
        let mut b = vec![0x10; 31];
        b.push(0x50);
        b
    }

    /// A whole message: `header` (16 bytes, as written), then `rest`.
    fn message(header: &[u8], rest: &[&[u8]]) -> Vec<u8> {
        let mut out = header.to_vec();
        for part in rest {
            out.extend_from_slice(part);
        }
        out
    }

    fn parse_set(bytes: &[u8]) -> (u16, WireguardMessage) {
        let nl = NetlinkBuffer::new_checked(bytes).unwrap();
        assert_eq!(nl.length() as usize, bytes.len());
        let genl =
            GenlMessage::<WireguardMessage>::parse_with_param(nl.payload(), nl.message_type())
                .unwrap();
        (nl.flags(), genl.payload)
    }

    #[test]
    fn the_family_request_asks_the_controller_for_wireguard() {
        let mut bytes = family_request();
        stamp_sequence(&mut bytes, 7);
        #[rustfmt::skip]
        let expected: &[u8] = &[
            // nlmsghdr: length 36, type GENL_ID_CTRL, flags REQUEST|ACK, seq 7, port 0
            0x24, 0x00, 0x00, 0x00, 0x10, 0x00, 0x05, 0x00,
            0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            // genlmsghdr: CTRL_CMD_GETFAMILY, version 2
            0x03, 0x02, 0x00, 0x00,
            // CTRL_ATTR_FAMILY_NAME "wireguard\0", padded to 16
            0x0e, 0x00, 0x02, 0x00,
            b'w', b'i', b'r', b'e', b'g', b'u', b'a', b'r', b'd', 0x00, 0x00, 0x00,
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn the_family_id_is_read_from_the_controllers_answer() {
        #[rustfmt::skip]
        let answer: &[u8] = &[
            // nlmsghdr: length 64, type GENL_ID_CTRL, no flags, seq 1, port 99
            0x40, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00,
            0x01, 0x00, 0x00, 0x00, 0x63, 0x00, 0x00, 0x00,
            // genlmsghdr: CTRL_CMD_NEWFAMILY, version 2
            0x01, 0x02, 0x00, 0x00,
            // CTRL_ATTR_FAMILY_NAME "wireguard"
            0x0e, 0x00, 0x02, 0x00,
            b'w', b'i', b'r', b'e', b'g', b'u', b'a', b'r', b'd', 0x00, 0x00, 0x00,
            // CTRL_ATTR_FAMILY_ID 0x1e (u16, padded)
            0x06, 0x00, 0x01, 0x00, 0x1e, 0x00, 0x00, 0x00,
            // CTRL_ATTR_VERSION 1
            0x08, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00,
            // an attribute this code does not know (type 99), skipped
            0x08, 0x00, 0x63, 0x00, 0xff, 0xff, 0xff, 0xff,
            // CTRL_ATTR_MAXATTR 8
            0x08, 0x00, 0x05, 0x00, 0x08, 0x00, 0x00, 0x00,
        ];
        assert_eq!(parse_family_answer(answer), Ok(0x1e));
        // Without the id attribute.
        let mut without = answer[..36].to_vec();
        without[0] = 36;
        assert_eq!(parse_family_answer(&without), Err(GenlError::NoFamilyId));
    }

    #[test]
    fn a_get_request_is_a_dump_naming_the_device() {
        #[rustfmt::skip]
        let expected: &[u8] = &[
            // nlmsghdr: length 28, type FAMILY, flags REQUEST|DUMP (0x0301), seq 0, port 0
            0x1c, 0x00, 0x00, 0x00, 0x1e, 0x00, 0x01, 0x03,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            // genlmsghdr: WG_CMD_GET_DEVICE, version 1
            0x00, 0x01, 0x00, 0x00,
            // WGDEVICE_A_IFNAME "wg0\0"
            0x08, 0x00, 0x02, 0x00, b'w', b'g', b'0', 0x00,
        ];
        assert_eq!(get_request(FAMILY, "wg0").unwrap(), expected);
    }

    #[test]
    fn a_set_with_a_key_a_port_and_one_full_peer_is_one_message() {
        let change = DeviceChange {
            private_key: Some(PrivateKey::from_bytes([0x10; 32])),
            listen_port: Some(51820),
            replace_peers: true,
            peers: vec![PeerChange {
                public_key: key(0xab),
                remove: false,
                preshared_key: Some(key(0x01)),
                endpoint: Some("192.0.2.12:51820".parse().unwrap()),
                persistent_keepalive: Some(25),
                replace_allowed_ips: true,
                allowed_ips: vec![
                    "10.244.2.0/24".parse().unwrap(),
                    "fc00:0:0:2::/64".parse().unwrap(),
                ],
            }],
        };
        #[rustfmt::skip]
        let expected = message(
            // nlmsghdr: length 268, type FAMILY, flags REQUEST|ACK, seq 0, port 0
            &[0x0c, 0x01, 0x00, 0x00, 0x1e, 0x00, 0x05, 0x00,
              0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
            &[
                // genlmsghdr: WG_CMD_SET_DEVICE, version 1
                &[0x01, 0x01, 0x00, 0x00],
                // WGDEVICE_A_IFNAME "wg0"
                &[0x08, 0x00, 0x02, 0x00, b'w', b'g', b'0', 0x00],
                // WGDEVICE_A_PRIVATE_KEY (36 bytes)
                &[0x24, 0x00, 0x03, 0x00],
                &private_bytes(),
                // WGDEVICE_A_LISTEN_PORT 51820 (host order), padded
                &[0x06, 0x00, 0x06, 0x00, 0x6c, 0xca, 0x00, 0x00],
                // WGDEVICE_A_FLAGS REPLACE_PEERS
                &[0x08, 0x00, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00],
                // WGDEVICE_A_PEERS | NLA_F_NESTED, 188 bytes
                &[0xbc, 0x00, 0x08, 0x80],
                // peer 0 | NLA_F_NESTED, 184 bytes
                &[0xb8, 0x00, 0x00, 0x80],
                // WGPEER_A_PUBLIC_KEY
                &[0x24, 0x00, 0x01, 0x00],
                &[0xab; 32],
                // WGPEER_A_PRESHARED_KEY
                &[0x24, 0x00, 0x02, 0x00],
                &[0x01; 32],
                // WGPEER_A_ENDPOINT: sockaddr_in AF_INET, port 51820 (network order), 192.0.2.12
                &[0x14, 0x00, 0x04, 0x00,
                  0x02, 0x00, 0xca, 0x6c, 0xc0, 0x00, 0x02, 0x0c,
                  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
                // WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL 25, padded
                &[0x06, 0x00, 0x05, 0x00, 0x19, 0x00, 0x00, 0x00],
                // WGPEER_A_FLAGS REPLACE_ALLOWEDIPS
                &[0x08, 0x00, 0x03, 0x00, 0x02, 0x00, 0x00, 0x00],
                // WGPEER_A_ALLOWEDIPS | NLA_F_NESTED, 72 bytes
                &[0x48, 0x00, 0x09, 0x80],
                // allowed IP 0 | NLA_F_NESTED, 28 bytes: AF_INET, 10.244.2.0, /24
                &[0x1c, 0x00, 0x00, 0x80,
                  0x06, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00,
                  0x08, 0x00, 0x02, 0x00, 0x0a, 0xf4, 0x02, 0x00,
                  0x05, 0x00, 0x03, 0x00, 0x18, 0x00, 0x00, 0x00],
                // allowed IP 0 | NLA_F_NESTED, 40 bytes: AF_INET6, fc00:0:0:2::, /64
                &[0x28, 0x00, 0x00, 0x80,
                  0x06, 0x00, 0x01, 0x00, 0x0a, 0x00, 0x00, 0x00,
                  0x14, 0x00, 0x02, 0x00,
                  0xfc, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02,
                  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                  0x05, 0x00, 0x03, 0x00, 0x40, 0x00, 0x00, 0x00],
            ],
        );
        assert_eq!(expected.len(), 268);
        assert_eq!(
            set_messages(FAMILY, "wg0", &change).unwrap(),
            vec![expected]
        );
    }

    #[test]
    fn a_peer_removal_sends_only_the_key_and_the_flag() {
        let change = DeviceChange {
            peers: vec![PeerChange {
                // Everything but the key is left out of a removal.
                endpoint: Some("192.0.2.9:1".parse().unwrap()),
                allowed_ips: vec!["10.244.9.0/24".parse().unwrap()],
                ..PeerChange::remove(key(0xcd))
            }],
            ..DeviceChange::default()
        };
        #[rustfmt::skip]
        let expected = message(
            // nlmsghdr: length 80
            &[0x50, 0x00, 0x00, 0x00, 0x1e, 0x00, 0x05, 0x00,
              0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
            &[
                &[0x01, 0x01, 0x00, 0x00],
                &[0x08, 0x00, 0x02, 0x00, b'w', b'g', b'0', 0x00],
                // PEERS, 52 bytes; peer, 48 bytes
                &[0x34, 0x00, 0x08, 0x80, 0x30, 0x00, 0x00, 0x80],
                &[0x24, 0x00, 0x01, 0x00],
                &[0xcd; 32],
                // WGPEER_A_FLAGS REMOVE_ME
                &[0x08, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00],
            ],
        );
        assert_eq!(
            set_messages(FAMILY, "wg0", &change).unwrap(),
            vec![expected]
        );
    }

    #[test]
    fn an_ipv6_endpoint_is_a_sockaddr_in6() {
        let change = DeviceChange {
            peers: vec![PeerChange {
                public_key: key(0xab),
                remove: false,
                preshared_key: None,
                endpoint: Some("[2001:db8::3]:51821".parse().unwrap()),
                persistent_keepalive: None,
                replace_allowed_ips: false,
                allowed_ips: Vec::new(),
            }],
            ..DeviceChange::default()
        };
        #[rustfmt::skip]
        let expected = message(
            // nlmsghdr: length 104
            &[0x68, 0x00, 0x00, 0x00, 0x1e, 0x00, 0x05, 0x00,
              0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
            &[
                &[0x01, 0x01, 0x00, 0x00],
                &[0x08, 0x00, 0x02, 0x00, b'w', b'g', b'0', 0x00],
                // PEERS, 76 bytes; peer, 72 bytes
                &[0x4c, 0x00, 0x08, 0x80, 0x48, 0x00, 0x00, 0x80],
                &[0x24, 0x00, 0x01, 0x00],
                &[0xab; 32],
                // WGPEER_A_ENDPOINT, 32 bytes: sockaddr_in6 AF_INET6, port 51821 (network
                // order), flow info 0, 2001:db8::3, scope 0
                &[0x20, 0x00, 0x04, 0x00,
                  0x0a, 0x00, 0xca, 0x6d, 0x00, 0x00, 0x00, 0x00,
                  0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00,
                  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03,
                  0x00, 0x00, 0x00, 0x00],
            ],
        );
        assert_eq!(
            set_messages(FAMILY, "wg0", &change).unwrap(),
            vec![expected]
        );
    }

    /// A GET_DEVICE answer as the kernel sends it (attribute order of `wg_get_device_dump`
    /// and `get_peer`): peer 0xab's allowed IPs continue in the second message.
    fn kernel_answer() -> [Vec<u8>; 2] {
        let public = PrivateKey::from_bytes([0x10; 32]).public_key();
        #[rustfmt::skip]
        let first = message(
            // nlmsghdr: length 332, type FAMILY, flags MULTI, seq 7, port 1234
            &[0x4c, 0x01, 0x00, 0x00, 0x1e, 0x00, 0x02, 0x00,
              0x07, 0x00, 0x00, 0x00, 0xd2, 0x04, 0x00, 0x00],
            &[
                // genlmsghdr: WG_CMD_GET_DEVICE, version 1
                &[0x00, 0x01, 0x00, 0x00],
                // LISTEN_PORT 51820, FWMARK 0, IFINDEX 5, IFNAME "wg0"
                &[0x06, 0x00, 0x06, 0x00, 0x6c, 0xca, 0x00, 0x00],
                &[0x08, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00],
                &[0x08, 0x00, 0x01, 0x00, 0x05, 0x00, 0x00, 0x00],
                &[0x08, 0x00, 0x02, 0x00, b'w', b'g', b'0', 0x00],
                // PRIVATE_KEY, PUBLIC_KEY
                &[0x24, 0x00, 0x03, 0x00],
                &private_bytes(),
                &[0x24, 0x00, 0x04, 0x00],
                &public.0,
                // PEERS, 208 bytes; peer, 204 bytes
                &[0xd0, 0x00, 0x08, 0x80, 0xcc, 0x00, 0x00, 0x80],
                &[0x24, 0x00, 0x01, 0x00],
                &[0xab; 32],
                &[0x24, 0x00, 0x02, 0x00],
                &[0x01; 32],
                // LAST_HANDSHAKE_TIME: 1700000000 s, 5 ns
                &[0x14, 0x00, 0x06, 0x00,
                  0x00, 0xf1, 0x53, 0x65, 0x00, 0x00, 0x00, 0x00,
                  0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
                // PERSISTENT_KEEPALIVE_INTERVAL 25
                &[0x06, 0x00, 0x05, 0x00, 0x19, 0x00, 0x00, 0x00],
                // TX_BYTES 100
                &[0x0c, 0x00, 0x08, 0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
                // padding attribute (WGPEER_A_UNSPEC), as nla_put_u64_64bit puts on some
                // architectures
                &[0x04, 0x00, 0x00, 0x00],
                // RX_BYTES 200
                &[0x0c, 0x00, 0x07, 0x00, 0xc8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
                // PROTOCOL_VERSION 1
                &[0x08, 0x00, 0x0a, 0x00, 0x01, 0x00, 0x00, 0x00],
                // ENDPOINT [2001:db8::3]:51821
                &[0x20, 0x00, 0x04, 0x00,
                  0x0a, 0x00, 0xca, 0x6d, 0x00, 0x00, 0x00, 0x00,
                  0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00,
                  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03,
                  0x00, 0x00, 0x00, 0x00],
                // ALLOWEDIPS, 32 bytes; entry, 28: CIDR_MASK 24, FAMILY AF_INET, 10.244.3.0
                &[0x20, 0x00, 0x09, 0x80, 0x1c, 0x00, 0x00, 0x80,
                  0x05, 0x00, 0x03, 0x00, 0x18, 0x00, 0x00, 0x00,
                  0x06, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00,
                  0x08, 0x00, 0x02, 0x00, 0x0a, 0xf4, 0x03, 0x00],
            ],
        );
        #[rustfmt::skip]
        let second = message(
            // nlmsghdr: length 296, flags MULTI, seq 7, port 1234
            &[0x28, 0x01, 0x00, 0x00, 0x1e, 0x00, 0x02, 0x00,
              0x07, 0x00, 0x00, 0x00, 0xd2, 0x04, 0x00, 0x00],
            &[
                &[0x00, 0x01, 0x00, 0x00],
                // PEERS, 276 bytes
                &[0x14, 0x01, 0x08, 0x80],
                // peer 0xab continued, 84 bytes: its key and the rest of its allowed IPs
                &[0x54, 0x00, 0x00, 0x80, 0x24, 0x00, 0x01, 0x00],
                &[0xab; 32],
                // ALLOWEDIPS, 44 bytes; entry, 40: /64, AF_INET6, fc00:0:0:3::
                &[0x2c, 0x00, 0x09, 0x80, 0x28, 0x00, 0x00, 0x80,
                  0x05, 0x00, 0x03, 0x00, 0x40, 0x00, 0x00, 0x00,
                  0x06, 0x00, 0x01, 0x00, 0x0a, 0x00, 0x00, 0x00,
                  0x14, 0x00, 0x02, 0x00,
                  0xfc, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03,
                  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
                // peer 0xcd, 188 bytes
                &[0xbc, 0x00, 0x00, 0x80, 0x24, 0x00, 0x01, 0x00],
                &[0xcd; 32],
                // PRESHARED_KEY all zero: none
                &[0x24, 0x00, 0x02, 0x00],
                &[0x00; 32],
                // LAST_HANDSHAKE_TIME 0: never
                &[0x14, 0x00, 0x06, 0x00],
                &[0x00; 16],
                &[0x06, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00],
                &[0x0c, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
                &[0x0c, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
                &[0x08, 0x00, 0x0a, 0x00, 0x01, 0x00, 0x00, 0x00],
                // ENDPOINT 192.0.2.12:51820
                &[0x14, 0x00, 0x04, 0x00,
                  0x02, 0x00, 0xca, 0x6c, 0xc0, 0x00, 0x02, 0x0c,
                  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
                // ALLOWEDIPS: 10.244.4.0/24
                &[0x20, 0x00, 0x09, 0x80, 0x1c, 0x00, 0x00, 0x80,
                  0x05, 0x00, 0x03, 0x00, 0x18, 0x00, 0x00, 0x00,
                  0x06, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00,
                  0x08, 0x00, 0x02, 0x00, 0x0a, 0xf4, 0x04, 0x00],
            ],
        );
        assert_eq!((first.len(), second.len()), (332, 296));
        [first, second]
    }

    #[test]
    fn a_get_answer_split_over_two_messages_gives_each_peer_once() {
        let [first, second] = kernel_answer();
        let device = parse_get_answers(&[&first, &second]).unwrap();
        assert_eq!(
            device,
            DeviceState {
                public_key: Some(PrivateKey::from_bytes([0x10; 32]).public_key()),
                listen_port: 51820,
                peers: vec![
                    PeerState {
                        public_key: key(0xab),
                        preshared_key: Some(key(0x01)),
                        endpoint: Some("[2001:db8::3]:51821".parse().unwrap()),
                        persistent_keepalive: 25,
                        allowed_ips: vec![
                            "10.244.3.0/24".parse().unwrap(),
                            "fc00:0:0:3::/64".parse().unwrap(),
                        ],
                        last_handshake_sec: Some(1_700_000_000),
                        rx_bytes: 200,
                        tx_bytes: 100,
                    },
                    PeerState {
                        public_key: key(0xcd),
                        preshared_key: None,
                        endpoint: Some("192.0.2.12:51820".parse().unwrap()),
                        persistent_keepalive: 0,
                        allowed_ips: vec!["10.244.4.0/24".parse().unwrap()],
                        last_handshake_sec: None,
                        rx_bytes: 0,
                        tx_bytes: 0,
                    },
                ],
            }
        );
    }

    #[test]
    fn what_set_messages_write_the_answer_parser_reads() {
        // The two halves agree: a change's peers, re-labelled as a GET answer, read back.
        let change = many_peers(3);
        let messages = set_messages(FAMILY, "wg0", &change).unwrap();
        let mut answer = messages[0].clone();
        answer[16] = 0; // WG_CMD_GET_DEVICE
        let device = parse_get_answers(&[&answer]).unwrap();
        assert_eq!(
            device.public_key,
            Some(PrivateKey::from_bytes([7; 32]).public_key())
        );
        assert_eq!(device.listen_port, 51820);
        let got: Vec<_> = device
            .peers
            .iter()
            .map(|p| (p.public_key, p.allowed_ips.clone()))
            .collect();
        let want: Vec<_> = change
            .peers
            .iter()
            .map(|p| (p.public_key, p.allowed_ips.clone()))
            .collect();
        assert_eq!(got, want);
    }

    fn peer_key(i: usize) -> Key {
        let mut k = [0x5a; 32];
        k[..8].copy_from_slice(&(i as u64).to_be_bytes());
        Key(k)
    }

    fn many_peers(n: usize) -> DeviceChange {
        DeviceChange {
            private_key: Some(PrivateKey::from_bytes([7; 32])),
            listen_port: Some(51820),
            replace_peers: true,
            peers: (0..n)
                .map(|i| PeerChange {
                    public_key: peer_key(i),
                    remove: false,
                    preshared_key: None,
                    endpoint: Some(SocketAddr::from(([192, 0, 2, (i % 250) as u8], 51820))),
                    persistent_keepalive: Some(25),
                    replace_allowed_ips: true,
                    allowed_ips: vec![IpNetwork::new(
                        IpAddr::from([10, (i / 256) as u8, (i % 256) as u8, 0]),
                        24,
                    )
                    .unwrap()],
                })
                .collect(),
        }
    }

    #[test]
    fn many_peers_are_split_below_the_limit_with_replace_peers_only_first() {
        let change = many_peers(5_000);
        let messages = set_messages(FAMILY, "wg0", &change).unwrap();
        assert!(messages.len() > 1, "{} messages", messages.len());
        let mut seen = Vec::new();
        for (i, bytes) in messages.iter().enumerate() {
            assert!(
                bytes.len() <= SET_MESSAGE_LIMIT,
                "message {i}: {} bytes",
                bytes.len()
            );
            let (flags, m) = parse_set(bytes);
            assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK);
            assert_eq!(m.cmd, WireguardCmd::SetDevice);
            assert!(m
                .attributes
                .contains(&WireguardAttribute::IfName("wg0".into())));
            let replace = m.attributes.contains(&WireguardAttribute::Flags(
                WireguardDeviceFlags::ReplacePeers,
            ));
            let private = m
                .attributes
                .iter()
                .any(|a| matches!(a, WireguardAttribute::PrivateKey(_)));
            assert_eq!((replace, private), (i == 0, i == 0), "message {i}");
            for a in m.attributes {
                if let WireguardAttribute::Peers(peers) = a {
                    for p in peers {
                        let WireguardPeerAttribute::PublicKey(k) = p[0] else {
                            panic!("a peer starts with its key");
                        };
                        seen.push(Key(k));
                    }
                }
            }
        }
        let want: Vec<Key> = (0..5_000).map(peer_key).collect();
        assert_eq!(seen, want, "every peer once, in order");
    }

    #[test]
    fn a_peer_with_many_allowed_ips_continues_in_the_next_message() {
        let ips: Vec<IpNetwork> = (0..600u32)
            .map(|i| {
                let addr = std::net::Ipv6Addr::from((0xfc00u128 << 112) | (u128::from(i) << 64));
                IpNetwork::new(IpAddr::V6(addr), 64).unwrap()
            })
            .collect();
        let change = DeviceChange {
            peers: vec![
                PeerChange {
                    public_key: key(1),
                    remove: false,
                    preshared_key: Some(key(2)),
                    endpoint: None,
                    persistent_keepalive: Some(5),
                    replace_allowed_ips: true,
                    allowed_ips: ips.clone(),
                },
                PeerChange::remove(key(3)),
            ],
            ..DeviceChange::default()
        };
        let messages = set_messages(FAMILY, "wg0", &change).unwrap();
        assert!(messages.len() >= 3, "{} messages", messages.len());
        let mut got = Vec::new();
        let mut fragments = 0;
        for bytes in &messages {
            assert!(bytes.len() <= SET_MESSAGE_LIMIT);
            let (_, m) = parse_set(bytes);
            for a in m.attributes {
                let WireguardAttribute::Peers(peers) = a else {
                    continue;
                };
                for p in peers {
                    if p[0] != WireguardPeerAttribute::PublicKey(key(1).0) {
                        assert_eq!(p[0], WireguardPeerAttribute::PublicKey(key(3).0));
                        continue;
                    }
                    fragments += 1;
                    let first = fragments == 1;
                    let settings = p.iter().any(|a| {
                        matches!(
                            a,
                            WireguardPeerAttribute::Flags(_)
                                | WireguardPeerAttribute::PresharedKey(_)
                                | WireguardPeerAttribute::PersistentKeepalive(_)
                        )
                    });
                    assert_eq!(
                        settings, first,
                        "settings and flags only in the first fragment"
                    );
                    for a in p.iter() {
                        if let WireguardPeerAttribute::AllowedIps(list) = a {
                            for entry in list {
                                got.push(allowed_ip_network(entry).unwrap());
                            }
                        }
                    }
                }
            }
        }
        assert!(fragments >= 3, "{fragments} fragments");
        assert_eq!(got, ips, "every allowed IP once, in order");
        // A parse of the same fragments as a GET answer joins them into one peer.
        let answers: Vec<Vec<u8>> = messages
            .iter()
            .map(|m| {
                let mut m = m.clone();
                m[16] = 0;
                m
            })
            .collect();
        let views: Vec<&[u8]> = answers.iter().map(Vec::as_slice).collect();
        let device = parse_get_answers(&views).unwrap();
        assert_eq!(device.peers.len(), 2);
        assert_eq!(device.peers[0].allowed_ips, ips);
    }

    #[test]
    fn malformed_answers_are_errors() {
        let [first, second] = kernel_answer();

        // A truncated attribute: the message ends inside the peer list.
        let mut truncated = first[..first.len() - 20].to_vec();
        let len = truncated.len() as u32;
        truncated[..4].copy_from_slice(&len.to_ne_bytes());
        assert!(matches!(
            parse_get_answers(&[&truncated]),
            Err(GenlError::Malformed(_))
        ));

        // An endpoint of 12 bytes, neither sockaddr_in nor sockaddr_in6 (the attribute keeps
        // its place: its length field says 16 of its 20 bytes, the rest is a pad attribute).
        let mut bad_endpoint = second.clone();
        let at = find(&bad_endpoint, &[0x14, 0x00, 0x04, 0x00, 0x02, 0x00]);
        bad_endpoint[at] = 0x10;
        bad_endpoint[at + 16..at + 20].copy_from_slice(&[0x04, 0x00, 0x00, 0x00]);
        let e = parse_get_answers(&[&first, &bad_endpoint]).unwrap_err();
        assert!(matches!(e, GenlError::Malformed(_)), "{e:?}");
        assert!(e.to_string().contains("WGPEER_A_ENDPOINT"), "{e}");

        // An allowed IP of address family 7.
        let mut family = second.clone();
        let at = find(&family, &[0x06, 0x00, 0x01, 0x00, 0x02, 0x00]);
        family[at + 4] = 7;
        assert_eq!(
            parse_get_answers(&[&first, &family]),
            Err(GenlError::AllowedIpFamily(7))
        );

        // A peer without its key (the key attribute's type changed to an unknown one).
        let mut keyless = second.clone();
        let at = find(&keyless, &[0xbc, 0x00, 0x00, 0x80, 0x24, 0x00, 0x01, 0x00]);
        keyless[at + 6] = 0x63;
        assert_eq!(
            parse_get_answers(&[&first, &keyless]),
            Err(GenlError::PeerWithoutKey)
        );

        // A dump the kernel marked interrupted.
        let mut interrupted = second.clone();
        interrupted[6] |= NLM_F_DUMP_INTR as u8;
        assert_eq!(
            parse_get_answers(&[&first, &interrupted]),
            Err(GenlError::Interrupted)
        );

        // Not a family's message, and no message at all.
        let mut done = first.clone();
        done[4] = 3; // NLMSG_DONE
        assert_eq!(
            parse_get_answers(&[&done]),
            Err(GenlError::UnexpectedMessage { kind: 3 })
        );
        assert_eq!(parse_get_answers(&[]), Err(GenlError::NoDeviceMessage));

        // A controller answer that is cut short.
        assert!(matches!(
            parse_family_answer(&family_request()[..30]),
            Err(GenlError::Malformed(_))
        ));
    }

    fn find(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("test bytes contain the pattern")
    }

    #[test]
    fn an_overlong_device_name_is_refused_before_anything_is_sent() {
        let e = get_request(FAMILY, "weft-wireguard-0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "WireGuard device name \"weft-wireguard-0\" is 16 bytes long, more than the kernel's 15; use a shorter name"
        );
        assert!(set_messages(FAMILY, "weft-wireguard-0", &DeviceChange::default()).is_err());
        assert!(get_request(FAMILY, "weft-wg-0123456").is_ok());
    }

    #[test]
    fn open_finds_no_wireguard_family_on_a_kernel_without_the_module() {
        // Only a lookup: a controller request, which needs no privilege and changes nothing.
        match GenlWireguard::open() {
            Ok(None) => {}
            // A kernel with the module: the lookup worked; nothing more is done here.
            Ok(Some(wg)) => assert!(wg.family_id() >= NLMSG_MIN_TYPE),
            Err(e) => panic!("the family lookup failed: {e}"),
        }
        let has_module = std::path::Path::new("/sys/module/wireguard").exists();
        if !has_module {
            assert!(matches!(GenlWireguard::open(), Ok(None)));
        }
    }
}
