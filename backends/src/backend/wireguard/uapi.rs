//! The cross-platform WireGuard configuration protocol that userspace implementations (such
//! as `wireguard-go`) serve on `/var/run/wireguard/<device>.sock`: a `set=1` request of
//! `key=value` lines ending in an empty line, answered by `errno=N`; a `get=1` request
//! answered by the device's and its peers' settings, then `errno=N`. Keys are in hex there.
//! This module only encodes and parses; the socket is the caller's.

use std::fmt::Write as _;
use std::net::SocketAddr;

use ipnetwork::IpNetwork;

use super::key::{Key, PrivateKey};

/// A change to a device: its own settings and its peers'.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceChange {
    pub private_key: Option<PrivateKey>,
    pub listen_port: Option<u16>,
    /// Remove every peer not named in `peers` (`replace_peers=true`).
    pub replace_peers: bool,
    pub peers: Vec<PeerChange>,
}

/// A change to one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerChange {
    pub public_key: Key,
    /// Remove this peer (nothing else is sent for it).
    pub remove: bool,
    /// Set the preshared key (the all-zero key removes it).
    pub preshared_key: Option<Key>,
    pub endpoint: Option<SocketAddr>,
    /// Seconds; 0 turns keepalives off.
    pub persistent_keepalive: Option<u16>,
    /// Replace the peer's allowed IPs with `allowed_ips` (`replace_allowed_ips=true`).
    pub replace_allowed_ips: bool,
    pub allowed_ips: Vec<IpNetwork>,
}

impl PeerChange {
    /// A change that removes the peer with `public_key`.
    pub fn remove(public_key: Key) -> PeerChange {
        PeerChange {
            remove: true,
            ..PeerChange::keep(public_key)
        }
    }

    /// A change of the peer with `public_key` that changes nothing yet (it adds the peer
    /// when there is none).
    pub fn keep(public_key: Key) -> PeerChange {
        PeerChange {
            public_key,
            remove: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

/// The `set=1` request for `change`, with its terminating empty line.
pub fn set_request(change: &DeviceChange) -> String {
    let mut out = String::from("set=1\n");
    if let Some(k) = &change.private_key {
        let _ = writeln!(out, "private_key={}", k.to_hex());
    }
    if let Some(p) = change.listen_port {
        let _ = writeln!(out, "listen_port={p}");
    }
    if change.replace_peers {
        out.push_str("replace_peers=true\n");
    }
    for p in &change.peers {
        let _ = writeln!(out, "public_key={}", p.public_key.to_hex());
        if p.remove {
            out.push_str("remove=true\n");
            continue;
        }
        if let Some(k) = &p.preshared_key {
            let _ = writeln!(out, "preshared_key={}", k.to_hex());
        }
        if let Some(e) = p.endpoint {
            let _ = writeln!(out, "endpoint={e}");
        }
        if let Some(k) = p.persistent_keepalive {
            let _ = writeln!(out, "persistent_keepalive_interval={k}");
        }
        if p.replace_allowed_ips {
            out.push_str("replace_allowed_ips=true\n");
        }
        for a in &p.allowed_ips {
            let _ = writeln!(out, "allowed_ip={a}");
        }
    }
    out.push('\n');
    out
}

/// The `get=1` request.
pub const GET_REQUEST: &str = "get=1\n\n";

/// A device as `get=1` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// The public key of the device's private key, when it has one.
    pub public_key: Option<Key>,
    pub listen_port: u16,
    pub peers: Vec<PeerState>,
}

/// A peer as `get=1` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    pub public_key: Key,
    pub preshared_key: Option<Key>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<IpNetwork>,
    /// Seconds since the Unix epoch of the last handshake; None if there was none.
    pub last_handshake_sec: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl PeerState {
    /// The peer with `public_key`, nothing else known yet.
    pub(super) fn new(public_key: Key) -> PeerState {
        PeerState {
            public_key,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: 0,
            allowed_ips: Vec::new(),
            last_handshake_sec: None,
            rx_bytes: 0,
            tx_bytes: 0,
        }
    }
}

/// Why an answer is not a success.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UapiError {
    #[error("the WireGuard device refused the request: {}", errno_text(*.0))]
    Errno(i32),
    #[error("cannot read the WireGuard device's answer: {0}")]
    Malformed(String),
}

fn errno_text(errno: i32) -> String {
    format!(
        "{} (errno {errno})",
        nix::errno::Errno::from_raw(errno).desc()
    )
}

/// Check a `set=1` answer: `errno=0` and an empty line.
pub fn parse_set_answer(text: &str) -> Result<(), UapiError> {
    let mut errno = None;
    for line in text.lines().take_while(|l| !l.is_empty()) {
        match line.split_once('=') {
            Some(("errno", n)) => errno = Some(parse_num::<i32>("errno", n)?),
            _ => return Err(UapiError::Malformed(format!("unexpected line {line:?}"))),
        }
    }
    match errno {
        Some(0) => Ok(()),
        Some(n) => Err(UapiError::Errno(n)),
        None => Err(UapiError::Malformed("no errno in the answer".into())),
    }
}

/// Parse a `get=1` answer. Unknown keys are skipped (newer implementations add some).
pub fn parse_get_answer(text: &str) -> Result<DeviceState, UapiError> {
    let mut dev = DeviceState::default();
    let mut errno = None;
    for line in text.lines().take_while(|l| !l.is_empty()) {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| UapiError::Malformed(format!("line {line:?} has no '='")))?;
        match key {
            "errno" => errno = Some(parse_num::<i32>(key, value)?),
            "private_key" => {
                dev.public_key = Some(PrivateKey::from_bytes(hex_key(key, value)?.0).public_key())
            }
            "listen_port" => dev.listen_port = parse_num(key, value)?,
            "public_key" => dev.peers.push(PeerState::new(hex_key(key, value)?)),
            _ => match dev.peers.last_mut() {
                Some(p) => {
                    peer_field(p, key, value)?;
                }
                // A peer's setting before any peer: known keys are an error, others skipped.
                None => {
                    if peer_field(&mut PeerState::new(Key([0; 32])), key, value)? {
                        return Err(UapiError::Malformed(format!("{key} before any public_key")));
                    }
                }
            },
        }
    }
    match errno {
        Some(0) => Ok(dev),
        Some(n) => Err(UapiError::Errno(n)),
        None => Err(UapiError::Malformed("no errno in the answer".into())),
    }
}

/// Take one of a peer's `key=value` lines; false for a key this parser does not know.
fn peer_field(p: &mut PeerState, key: &str, value: &str) -> Result<bool, UapiError> {
    match key {
        "preshared_key" => {
            let k = hex_key(key, value)?;
            p.preshared_key = (!k.is_zero()).then_some(k);
        }
        "endpoint" => {
            p.endpoint = Some(value.parse().map_err(|_| {
                UapiError::Malformed(format!("endpoint {value:?} is not an address:port"))
            })?)
        }
        "persistent_keepalive_interval" => p.persistent_keepalive = parse_num(key, value)?,
        "allowed_ip" => {
            p.allowed_ips.push(value.parse().map_err(|_| {
                UapiError::Malformed(format!("allowed_ip {value:?} is not a network"))
            })?)
        }
        "last_handshake_time_sec" => {
            let s: u64 = parse_num(key, value)?;
            p.last_handshake_sec = (s != 0).then_some(s);
        }
        "rx_bytes" => p.rx_bytes = parse_num(key, value)?,
        "tx_bytes" => p.tx_bytes = parse_num(key, value)?,
        _ => return Ok(false),
    }
    Ok(true)
}

fn hex_key(key: &str, value: &str) -> Result<Key, UapiError> {
    Key::from_hex(value).map_err(|e| UapiError::Malformed(format!("{key}: {e}")))
}

fn parse_num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, UapiError> {
    value
        .parse()
        .map_err(|_| UapiError::Malformed(format!("{key} {value:?} is not a number")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        Key([n; 32])
    }

    #[test]
    fn a_set_request_is_lines_of_hex_keys_ending_in_an_empty_line() {
        let change = DeviceChange {
            private_key: Some(PrivateKey::from_bytes([0x10; 32])),
            listen_port: Some(51820),
            replace_peers: true,
            peers: vec![
                PeerChange {
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
                },
                PeerChange {
                    endpoint: Some("[2001:db8::3]:51821".parse().unwrap()),
                    ..PeerChange::remove(key(0xcd))
                },
            ],
        };
        let ab = "ab".repeat(32);
        let cd = "cd".repeat(32);
        let psk = "01".repeat(32);
        let private = format!("10{}50", "10".repeat(30));
        assert_eq!(
            set_request(&change),
            format!(
                "set=1\nprivate_key={private}\nlisten_port=51820\nreplace_peers=true\n\
                 public_key={ab}\npreshared_key={psk}\nendpoint=192.0.2.12:51820\n\
                 persistent_keepalive_interval=25\nreplace_allowed_ips=true\n\
                 allowed_ip=10.244.2.0/24\nallowed_ip=fc00:0:0:2::/64\n\
                 public_key={cd}\nremove=true\n\n"
            )
        );
    }

    #[test]
    fn a_get_answer_gives_the_device_and_its_peers() {
        let private = PrivateKey::from_bytes([0x10; 32]);
        let text = format!(
            "private_key={}\nlisten_port=51820\n\
             public_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=[2001:db8::3]:51821\n\
             last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\ntx_bytes=100\nrx_bytes=200\n\
             persistent_keepalive_interval=0\nallowed_ip=10.244.3.0/24\nallowed_ip=fc00:0:0:3::/64\n\
             public_key={}\npreshared_key={}\nlast_handshake_time_sec=0\nallowed_ip=10.244.4.0/24\n\
             errno=0\n\n",
            private.to_hex(),
            key(0xab).to_hex(),
            key(0x01).to_hex(),
            key(0xcd).to_hex(),
            Key([0; 32]).to_hex(),
        );
        let dev = parse_get_answer(&text).unwrap();
        assert_eq!(dev.public_key, Some(private.public_key()));
        assert_eq!(dev.listen_port, 51820);
        assert_eq!(dev.peers.len(), 2);
        let p = &dev.peers[0];
        assert_eq!(p.public_key, key(0xab));
        assert_eq!(p.preshared_key, Some(key(0x01)));
        assert_eq!(p.endpoint, Some("[2001:db8::3]:51821".parse().unwrap()));
        assert_eq!(p.last_handshake_sec, Some(1_700_000_000));
        assert_eq!((p.rx_bytes, p.tx_bytes), (200, 100));
        assert_eq!(
            p.allowed_ips,
            vec![
                "10.244.3.0/24".parse::<IpNetwork>().unwrap(),
                "fc00:0:0:3::/64".parse().unwrap()
            ]
        );
        let q = &dev.peers[1];
        assert_eq!(
            (q.preshared_key, q.last_handshake_sec, q.endpoint),
            (None, None, None)
        );
    }

    #[test]
    fn errors_are_named_and_malformed_answers_refused() {
        assert_eq!(parse_set_answer("errno=0\n\n"), Ok(()));
        let e = parse_set_answer("errno=22\n\n").unwrap_err();
        assert_eq!(e, UapiError::Errno(22));
        assert_eq!(
            e.to_string(),
            "the WireGuard device refused the request: Invalid argument (errno 22)"
        );
        assert!(matches!(
            parse_set_answer("\n"),
            Err(UapiError::Malformed(_))
        ));
        assert_eq!(parse_get_answer("errno=2\n\n"), Err(UapiError::Errno(2)));
        for bad in [
            "allowed_ip=10.0.0.0/8\nerrno=0\n\n",
            "public_key=zz\nerrno=0\n\n",
            "listen_port=x\nerrno=0\n\n",
            &format!(
                "public_key={}\nendpoint=nowhere\nerrno=0\n\n",
                key(1).to_hex()
            ),
            "listen_port=1\n\n",
        ] {
            assert!(
                matches!(parse_get_answer(bad), Err(UapiError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
