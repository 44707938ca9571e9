//! The wireguard backend in the kernel: its device (a route netlink link of kind
//! `wireguard`, or the TUN device a userspace implementation makes), the device's address,
//! MTU and state, and its WireGuard configuration (key, port, peers) — read back into a
//! [`WireguardState`] and changed by [`WireguardOp`]s.
//!
//! Two implementations configure the device, chosen once per data plane
//! ([`Implementation`]): the kernel's, over generic netlink ([`super::genl`]), and a
//! userspace one such as `wireguard-go`, over its UAPI socket ([`super::uapi`]). weftd starts
//! the userspace program itself when the device is missing, in its own process group, so
//! that it outlives weftd: a restarted weftd finds the device and its peers as they were.
//!
//! In the single-device modes on a dual-stack cluster both families' data planes work on one
//! device ([`SharedDevice`]): each reads back and changes only its family's part of it, its
//! address and its allowed IPs on each peer, and both hold one lock around every change, so
//! that one family's change never drops the other's allowed IPs.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::LinkWireguard;

use super::key::{Key, PresharedKey, PrivateKey};
use super::uapi::{self, DeviceChange, DeviceState, PeerChange};
use super::{WireguardDevice, WireguardOp, WireguardPeerEntry, WireguardState};
use crate::dataplane::DataplaneError;
use crate::netlink::{
    link_addresses, link_kind, set_addresses, NlError, NlSocket, NLM_F_CREATE, NLM_F_EXCL,
};
use crate::IpFamily;
use ipnetwork::IpNetwork;

/// Where userspace implementations put their UAPI sockets (`<dir>/<device>.sock`); fixed by
/// `wireguard-go`.
pub const USERSPACE_SOCKET_DIR: &str = "/var/run/wireguard";

/// How long a started userspace implementation may take to make its device and socket.
const USERSPACE_START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one UAPI exchange may take.
const UAPI_TIMEOUT: Duration = Duration::from_secs(5);

/// The WireGuard implementation that configures the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Implementation {
    /// The kernel's: a link of kind `wireguard`, configured over generic netlink.
    Kernel,
    /// A userspace program (`wireguard-go`) started as `<binary> -f <device>`: it makes a
    /// TUN device and serves `<socket_dir>/<device>.sock`.
    Userspace {
        binary: PathBuf,
        socket_dir: PathBuf,
    },
}

impl Implementation {
    /// A userspace implementation from `binary`, with its sockets where `wireguard-go` puts
    /// them.
    pub fn userspace(binary: impl Into<PathBuf>) -> Implementation {
        Implementation::Userspace {
            binary: binary.into(),
            socket_dir: PathBuf::from(USERSPACE_SOCKET_DIR),
        }
    }

    /// `kernel` or `userspace`, in logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Implementation::Kernel => "kernel",
            Implementation::Userspace { .. } => "userspace",
        }
    }
}

/// The files a userspace implementation of `device` has in `socket_dir`: its socket, and the
/// pid and log weftd keeps beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserspaceFiles {
    pub socket: PathBuf,
    pub pid: PathBuf,
    pub log: PathBuf,
}

impl UserspaceFiles {
    pub fn of(socket_dir: &Path, device: &str) -> UserspaceFiles {
        UserspaceFiles {
            socket: socket_dir.join(format!("{device}.sock")),
            pid: socket_dir.join(format!("{device}.pid")),
            log: socket_dir.join(format!("{device}.log")),
        }
    }
}

/// The backend's objects of one family, around the device called `device`. Without
/// [`WireguardKernel::configured`] it only looks for the device (so that a device left by an
/// earlier wireguard configuration is removed) and reads no peers.
#[derive(Debug)]
pub struct WireguardKernel {
    pub device: String,
    pub family: IpFamily,
    configured: Option<Configured>,
    /// Set when the device also carries the other family's pod traffic.
    shared: Option<SharedDevice>,
}

/// One WireGuard device serving both families (a single-device mode on a dual-stack
/// cluster): the lock both families' data planes hold around each change of it. Clones share
/// the lock.
#[derive(Clone, Debug, Default)]
pub struct SharedDevice(Arc<Mutex<()>>);

impl SharedDevice {
    fn lock(&self) -> MutexGuard<'_, ()> {
        // A panic elsewhere while holding it leaves nothing half-done that the lock guards:
        // the next change reads the device back first.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Debug)]
struct Configured {
    /// None for a reader (`netctl check`), which changes nothing.
    private_key: Option<PrivateKey>,
    implementation: Implementation,
}

impl WireguardKernel {
    /// A kernel side that only finds a device called `device` (to delete it).
    pub fn leftover(device: impl Into<String>, family: IpFamily) -> WireguardKernel {
        WireguardKernel {
            device: device.into(),
            family,
            configured: None,
            shared: None,
        }
    }

    /// The kernel side of the configured backend: the device `device` with `private_key`,
    /// configured through `implementation`.
    pub fn configured(
        device: impl Into<String>,
        family: IpFamily,
        private_key: PrivateKey,
        implementation: Implementation,
    ) -> WireguardKernel {
        WireguardKernel {
            device: device.into(),
            family,
            configured: Some(Configured {
                private_key: Some(private_key),
                implementation,
            }),
            shared: None,
        }
    }

    /// A kernel side that reads the configured backend's device and peers without its
    /// private key (`netctl check`): it cannot set up the device.
    pub fn reader(
        device: impl Into<String>,
        family: IpFamily,
        implementation: Implementation,
    ) -> WireguardKernel {
        WireguardKernel {
            device: device.into(),
            family,
            configured: Some(Configured {
                private_key: None,
                implementation,
            }),
            shared: None,
        }
    }

    /// The device also carries the other family's pod traffic: this side reads back and
    /// changes only its family's allowed IPs on each peer, under `shared`'s lock.
    pub fn sharing(mut self, shared: SharedDevice) -> WireguardKernel {
        self.shared = Some(shared);
        self
    }

    /// Whether the device also carries the other family's pod traffic.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    fn hold(&self) -> Option<MutexGuard<'_, ()>> {
        self.shared.as_ref().map(SharedDevice::lock)
    }

    /// Whether this is the configured backend's (not only a look for a leftover device).
    pub fn is_configured(&self) -> bool {
        self.configured.is_some()
    }

    /// The implementation in use, when configured.
    pub fn implementation(&self) -> Option<&Implementation> {
        self.configured.as_ref().map(|c| &c.implementation)
    }

    /// The device's link message, if it exists; an error if the name is taken by a link
    /// that is neither a WireGuard device nor a TUN device.
    fn device_link(&self, nl: &mut NlSocket) -> Result<Option<LinkMessage>, DataplaneError> {
        let Some(link) = nl.link_by_name(&self.device)? else {
            return Ok(None);
        };
        match link_kind(&link) {
            Some(InfoKind::Wireguard) | Some(InfoKind::Tun) => Ok(Some(link)),
            other => Err(DataplaneError::NotWireguard {
                name: self.device.clone(),
                kind: other.map_or(
                    "a link without a kind, such as a physical NIC".into(),
                    |k| format!("kind {k}"),
                ),
            }),
        }
    }

    /// The device's index, if it exists.
    pub fn device_index(&self, nl: &mut NlSocket) -> Result<Option<u32>, DataplaneError> {
        Ok(self.device_link(nl)?.map(|l| l.header.index))
    }

    /// The device (if present) with its addresses of this family, its key, port and peers;
    /// and its index.
    pub fn observe(
        &self,
        nl: &mut NlSocket,
    ) -> Result<(Option<u32>, WireguardState), DataplaneError> {
        let mut state = WireguardState::default();
        let Some(link) = self.device_link(nl)? else {
            return Ok((None, state));
        };
        let index = link.header.index;
        let mut device = WireguardDevice {
            name: self.device.clone(),
            listen_port: 0,
            public_key: None,
            mtu: 0,
            up: link.header.flags.contains(LinkFlags::Up),
            addresses: link_addresses(nl, index, self.family)?,
        };
        for a in &link.attributes {
            if let LinkAttribute::Mtu(m) = a {
                device.mtu = *m;
            }
        }
        if let Some(c) = &self.configured {
            let st = get(&c.implementation, &self.device)?;
            device.listen_port = st.listen_port;
            device.public_key = st.public_key;
            for p in st.peers {
                let (mut allowed_ips, other): (Vec<IpNetwork>, Vec<IpNetwork>) = p
                    .allowed_ips
                    .into_iter()
                    .partition(|a| IpFamily::of_network(*a) == self.family);
                if self.shared.is_some() && allowed_ips.is_empty() && !other.is_empty() {
                    // Only the other family's data plane's business.
                    continue;
                }
                if self.shared.is_none() {
                    // A device of its own: every allowed IP is this side's to judge.
                    allowed_ips.extend(other);
                }
                allowed_ips.sort();
                allowed_ips.dedup();
                state.peers.insert(
                    p.public_key,
                    WireguardPeerEntry {
                        public_key: p.public_key,
                        endpoint: p.endpoint,
                        allowed_ips,
                        preshared_key: p.preshared_key.filter(|k| !k.is_zero()).map(PresharedKey),
                        keepalive: p.persistent_keepalive,
                    },
                );
            }
        }
        state.device = Some(device);
        Ok((Some(index), state))
    }

    /// Apply a device operation at once (peers need the device); None for a peer operation,
    /// which goes in a batch ([`WireguardKernel::apply_peers`]).
    pub(crate) fn apply_device_op(
        &self,
        nl: &mut NlSocket,
        op: &WireguardOp,
    ) -> Option<Result<(), DataplaneError>> {
        match op {
            WireguardOp::SetDevice(d) => {
                let _held = self.hold();
                Some(self.set_device(nl, d))
            }
            WireguardOp::DeleteDevice(name) => {
                let _held = self.hold();
                Some(
                    nl.delete_link_by_name(name)
                        .map(drop)
                        .map_err(DataplaneError::from),
                )
            }
            WireguardOp::SetPeer(_) | WireguardOp::DeletePeer(_) => None,
        }
    }

    /// Apply peer operations as one configuration change; when the implementation refuses
    /// it, one at a time, so that each failure is told apart. One result per operation.
    pub(crate) fn apply_peers(&self, ops: &[&WireguardOp]) -> Vec<Result<(), DataplaneError>> {
        let Some(c) = &self.configured else {
            // Not the configured backend: only its device is ever deleted, never its peers.
            return ops
                .iter()
                .map(|_| {
                    Err(DataplaneError::Refused {
                        op: "change WireGuard peers".into(),
                        reason: "the wireguard backend is not configured".into(),
                    })
                })
                .collect();
        };
        let _held = self.hold();
        // On a shared device, what the other family has on each peer (read under the lock).
        let others = match &self.shared {
            None => BTreeMap::new(),
            Some(_) => match get(&c.implementation, &self.device) {
                Ok(st) => other_family_allowed_ips(st, self.family),
                Err(e) => {
                    let e = e.to_string();
                    return ops
                        .iter()
                        .map(|_| {
                            Err(DataplaneError::Refused {
                                op: format!("change WireGuard peers on {}", self.device),
                                reason: format!("cannot read the device back first: {e}"),
                            })
                        })
                        .collect();
                }
            },
        };
        let change = |ops: &[&WireguardOp]| DeviceChange {
            peers: ops
                .iter()
                .filter_map(|op| peer_change(op, &others))
                .collect(),
            ..DeviceChange::default()
        };
        match set(&c.implementation, &self.device, &change(ops)) {
            Ok(()) => ops.iter().map(|_| Ok(())).collect(),
            Err(e) if ops.len() == 1 => vec![Err(e)],
            Err(_) => ops
                .iter()
                .map(|op| set(&c.implementation, &self.device, &change(&[op])))
                .collect(),
        }
    }

    fn set_device(&self, nl: &mut NlSocket, want: &WireguardDevice) -> Result<(), DataplaneError> {
        let (Some(c), Some(private_key)) = (
            &self.configured,
            self.configured
                .as_ref()
                .and_then(|c| c.private_key.as_ref()),
        ) else {
            return Err(DataplaneError::Refused {
                op: format!("set WireGuard device {}", want.name),
                reason: "this data plane has no WireGuard private key".into(),
            });
        };
        let index = match self.device_index(nl)? {
            Some(index) => index,
            None => create_device(nl, want, &c.implementation)?,
        };
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::Mtu(want.mtu));
        nl.ack(
            &format!("set MTU {} and bring up {}", want.mtu, want.name),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )?;
        set_addresses(nl, index, &want.name, self.family, &want.addresses)?;
        set(
            &c.implementation,
            &want.name,
            &DeviceChange {
                private_key: Some(private_key.clone()),
                listen_port: Some(want.listen_port),
                ..DeviceChange::default()
            },
        )
    }
}

/// The allowed IPs of the family other than `family` on each peer that has some.
fn other_family_allowed_ips(st: DeviceState, family: IpFamily) -> BTreeMap<Key, Vec<IpNetwork>> {
    st.peers
        .into_iter()
        .filter_map(|p| {
            let other: Vec<IpNetwork> = p
                .allowed_ips
                .into_iter()
                .filter(|a| IpFamily::of_network(*a) != family)
                .collect();
            (!other.is_empty()).then_some((p.public_key, other))
        })
        .collect()
}

/// The configuration change for a peer operation (None for a device operation). `others`:
/// on a shared device, the other family's allowed IPs on each peer, which stay: a peer that
/// keeps some loses only this family's, and a set peer keeps them beside the new ones.
fn peer_change(op: &WireguardOp, others: &BTreeMap<Key, Vec<IpNetwork>>) -> Option<PeerChange> {
    match op {
        WireguardOp::DeletePeer(k) => Some(match others.get(k) {
            None => PeerChange::remove(*k),
            Some(kept) => PeerChange {
                replace_allowed_ips: true,
                allowed_ips: kept.clone(),
                ..PeerChange::keep(*k)
            },
        }),
        WireguardOp::SetPeer(p) => Some(PeerChange {
            // The all-zero key removes one that is there.
            preshared_key: Some(p.preshared_key.map_or(Key([0; 32]), |k| k.0)),
            endpoint: p.endpoint,
            persistent_keepalive: Some(p.keepalive),
            replace_allowed_ips: true,
            allowed_ips: p
                .allowed_ips
                .iter()
                .chain(others.get(&p.public_key).into_iter().flatten())
                .copied()
                .collect(),
            ..PeerChange::keep(p.public_key)
        }),
        WireguardOp::SetDevice(_) | WireguardOp::DeleteDevice(_) => None,
    }
}

/// Create the device through `implementation`; its index.
fn create_device(
    nl: &mut NlSocket,
    want: &WireguardDevice,
    implementation: &Implementation,
) -> Result<u32, DataplaneError> {
    let op = format!("create WireGuard device {}", want.name);
    match implementation {
        Implementation::Kernel => {
            let msg = LinkWireguard::new(&want.name).mtu(want.mtu).up().build();
            nl.ack(&op, RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
                .map_err(|e| {
                    if e.is(nix::errno::Errno::EOPNOTSUPP) {
                        DataplaneError::Refused {
                            op: op.clone(),
                            reason: "the kernel has no WireGuard: load the module (modprobe wireguard), or run weftd with --wireguard-userspace PATH".into(),
                        }
                    } else {
                        e.into()
                    }
                })?;
            nl.link_by_name(&want.name)?
                .map(|l| l.header.index)
                .ok_or_else(|| {
                    NlError::Decode {
                        op,
                        problem: "the device is missing right after creation".into(),
                    }
                    .into()
                })
        }
        Implementation::Userspace { binary, socket_dir } => {
            start_userspace(nl, binary, socket_dir, &want.name)
        }
    }
}

/// Start `binary -f <device>` in its own process group (so that it outlives weftd and no
/// terminal signal meant for weftd reaches it), with its output in the log beside its
/// socket and its pid in the pid file; wait until its device exists and its socket answers.
fn start_userspace(
    nl: &mut NlSocket,
    binary: &Path,
    socket_dir: &Path,
    device: &str,
) -> Result<u32, DataplaneError> {
    let op = format!("start {} for WireGuard device {device}", binary.display());
    let fail = |reason: String| DataplaneError::Refused {
        op: op.clone(),
        reason,
    };
    let files = UserspaceFiles::of(socket_dir, device);
    std::fs::create_dir_all(socket_dir)
        .map_err(|e| fail(format!("cannot create {}: {e}", socket_dir.display())))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&files.log)
        .map_err(|e| fail(format!("cannot open {}: {e}", files.log.display())))?;
    let log2 = log
        .try_clone()
        .map_err(|e| fail(format!("cannot open {}: {e}", files.log.display())))?;
    let mut child = Command::new(binary)
        .arg("-f")
        .arg(device)
        .env("LOG_LEVEL", "error")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|e| {
            fail(format!(
                "{e}: install it (Debian: apt-get install wireguard-go) or fix --wireguard-userspace"
            ))
        })?;
    let pid = child.id();
    std::fs::write(&files.pid, format!("{pid}\n"))
        .map_err(|e| fail(format!("cannot write {}: {e}", files.pid.display())))?;
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(fail(format!(
                "it exited ({status}) before its device was up; its log {} ends with: {}",
                files.log.display(),
                log_tail(&files.log)
            )));
        }
        if let Some(link) = nl.link_by_name(device)? {
            if uapi_exchange(&files.socket, uapi::GET_REQUEST).is_ok() {
                // Reap it when it ends, so that it leaves no zombie while weftd runs.
                std::thread::Builder::new()
                    .name("wireguard-go".into())
                    .spawn(move || {
                        let _ = child.wait();
                    })
                    .map_err(|e| fail(format!("cannot start a thread: {e}")))?;
                return Ok(link.header.index);
            }
        }
        if started.elapsed() > USERSPACE_START_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "its device and socket {} were not up after {USERSPACE_START_TIMEOUT:?} (stopped it); its log {} ends with: {}",
                files.socket.display(),
                files.log.display(),
                log_tail(&files.log)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last line of a log, for error text.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(nothing)")
        .to_string()
}

/// The device's configuration, through `implementation`.
fn get(implementation: &Implementation, device: &str) -> Result<DeviceState, DataplaneError> {
    let op = format!("read WireGuard device {device}");
    match implementation {
        Implementation::Kernel => {
            kernel_control::get(device).map_err(|reason| DataplaneError::Refused { op, reason })
        }
        Implementation::Userspace { socket_dir, .. } => {
            let files = UserspaceFiles::of(socket_dir, device);
            let answer = uapi_exchange(&files.socket, uapi::GET_REQUEST).map_err(|reason| {
                DataplaneError::Refused {
                    op: op.clone(),
                    reason,
                }
            })?;
            uapi::parse_get_answer(&answer).map_err(|e| DataplaneError::Refused {
                op,
                reason: e.to_string(),
            })
        }
    }
}

/// Apply `change` to the device, through `implementation`.
fn set(
    implementation: &Implementation,
    device: &str,
    change: &DeviceChange,
) -> Result<(), DataplaneError> {
    let op = format!("configure WireGuard device {device}");
    match implementation {
        Implementation::Kernel => kernel_control::set(device, change)
            .map_err(|reason| DataplaneError::Refused { op, reason }),
        Implementation::Userspace { socket_dir, .. } => {
            let files = UserspaceFiles::of(socket_dir, device);
            let answer =
                uapi_exchange(&files.socket, &uapi::set_request(change)).map_err(|reason| {
                    DataplaneError::Refused {
                        op: op.clone(),
                        reason,
                    }
                })?;
            uapi::parse_set_answer(&answer).map_err(|e| DataplaneError::Refused {
                op,
                reason: e.to_string(),
            })
        }
    }
}

/// One request on a UAPI socket and its answer (up to the empty line that ends it).
fn uapi_exchange(socket: &Path, request: &str) -> Result<String, String> {
    let what = |e: std::io::Error| {
        format!(
            "{}: {e} (the userspace WireGuard process serves it; weftd starts it again when its device is gone)",
            socket.display()
        )
    };
    let mut s = UnixStream::connect(socket).map_err(what)?;
    s.set_read_timeout(Some(UAPI_TIMEOUT)).map_err(what)?;
    s.set_write_timeout(Some(UAPI_TIMEOUT)).map_err(what)?;
    s.write_all(request.as_bytes()).map_err(what)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf).map_err(what)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(b"\n\n") {
            break;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{}: the answer is not text", socket.display()))
}

/// The kernel implementation's configuration channel: generic netlink, a socket per
/// exchange (opened in the calling thread's namespace, as the data plane's own socket is).
mod kernel_control {
    use super::super::genl::GenlWireguard;
    use super::{DeviceChange, DeviceState};

    fn open() -> Result<GenlWireguard, String> {
        GenlWireguard::open()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the kernel has no WireGuard (module wireguard not loaded): load it (modprobe wireguard), or run weftd with --wireguard-userspace PATH".to_string())
    }

    pub(super) fn get(device: &str) -> Result<DeviceState, String> {
        open()?.get(device).map_err(|e| e.to_string())
    }

    pub(super) fn set(device: &str, change: &DeviceChange) -> Result<(), String> {
        open()?.set(device, change).map_err(|e| e.to_string())
    }
}

/// Whether the kernel has WireGuard: its module is loaded (or built in), or its generic
/// netlink family answers (asking may load the module, as `wg` does).
pub fn kernel_has_wireguard() -> bool {
    Path::new("/sys/module/wireguard").exists()
        || matches!(super::genl::GenlWireguard::open(), Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::wireguard::Key;

    #[test]
    fn a_peer_without_a_preshared_key_clears_one_and_replaces_its_allowed_ips() {
        let p = WireguardPeerEntry {
            public_key: Key([7; 32]),
            endpoint: Some("192.0.2.12:51820".parse().unwrap()),
            allowed_ips: vec!["10.244.2.0/24".parse().unwrap()],
            preshared_key: None,
            keepalive: 0,
        };
        let c = peer_change(&WireguardOp::SetPeer(Box::new(p.clone())), &BTreeMap::new()).unwrap();
        assert_eq!(c.preshared_key, Some(Key([0; 32])));
        assert!(c.replace_allowed_ips && !c.remove);
        assert_eq!(c.persistent_keepalive, Some(0));
        let with = WireguardPeerEntry {
            preshared_key: Some(PresharedKey(Key([9; 32]))),
            keepalive: 25,
            ..p
        };
        let c = peer_change(&WireguardOp::SetPeer(Box::new(with)), &BTreeMap::new()).unwrap();
        assert_eq!(c.preshared_key, Some(Key([9; 32])));
        assert_eq!(c.persistent_keepalive, Some(25));
        assert!(
            peer_change(&WireguardOp::DeletePeer(Key([7; 32])), &BTreeMap::new())
                .unwrap()
                .remove
        );
        assert_eq!(
            UserspaceFiles::of(Path::new("/var/run/wireguard"), "weft-wg").socket,
            PathBuf::from("/var/run/wireguard/weft-wg.sock")
        );
    }

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn on_a_shared_device_a_change_keeps_the_other_familys_allowed_ips() {
        let (a, b) = (Key([1; 32]), Key([2; 32]));
        let device = DeviceState {
            peers: vec![
                uapi::PeerState {
                    allowed_ips: vec![net("10.244.2.0/24"), net("fc00:0:0:2::/64")],
                    ..uapi::PeerState::new(a)
                },
                uapi::PeerState {
                    allowed_ips: vec![net("10.244.3.0/24")],
                    ..uapi::PeerState::new(b)
                },
            ],
            ..DeviceState::default()
        };
        // The IPv4 data plane's view of the IPv6 parts.
        let others = other_family_allowed_ips(device, IpFamily::V4);
        assert_eq!(others.len(), 1, "{others:?}");
        assert_eq!(others[&a], vec![net("fc00:0:0:2::/64")]);
        // Setting a's IPv4 part sends both families' allowed IPs.
        let set = WireguardPeerEntry {
            public_key: a,
            endpoint: Some("192.0.2.12:51820".parse().unwrap()),
            allowed_ips: vec![net("10.244.9.0/24")],
            preshared_key: None,
            keepalive: 0,
        };
        let c = peer_change(&WireguardOp::SetPeer(Box::new(set)), &others).unwrap();
        assert!(c.replace_allowed_ips && !c.remove);
        assert_eq!(
            c.allowed_ips,
            vec![net("10.244.9.0/24"), net("fc00:0:0:2::/64")]
        );
        // Deleting a's IPv4 part leaves the peer with its IPv6 allowed IPs and nothing else
        // changed; deleting b (no IPv6 part) removes it.
        let c = peer_change(&WireguardOp::DeletePeer(a), &others).unwrap();
        assert!(!c.remove && c.replace_allowed_ips);
        assert_eq!(c.allowed_ips, vec![net("fc00:0:0:2::/64")]);
        assert_eq!(
            (c.endpoint, c.preshared_key, c.persistent_keepalive),
            (None, None, None)
        );
        assert!(
            peer_change(&WireguardOp::DeletePeer(b), &others)
                .unwrap()
                .remove
        );
    }
}
