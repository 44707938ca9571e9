//! The userspace WireGuard configuration protocol (`backends/src/backend/wireguard/uapi.rs`)
//! against a real implementation: Debian's `wireguard-go`, run in the foreground inside a test
//! namespace. Our `set=1` requests are taken as meant, and our parser reads its `get=1`
//! answers.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use weft_backends::backend::wireguard::key::{Key, PrivateKey};
use weft_backends::backend::wireguard::uapi::{
    parse_get_answer, parse_set_answer, set_request, DeviceChange, PeerChange, UapiError,
    GET_REQUEST,
};
use weft_tests::netns::Netns;
use weft_tests::procs::Proc;

/// Send one request and read the answer up to its terminating empty line.
fn exchange(sock: &Path, request: &str) -> String {
    let mut s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.ends_with(b"\n\n") {
        let n = s.read(&mut buf).expect("read the answer");
        assert!(
            n > 0,
            "the socket closed after {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(answer).unwrap()
}

/// Removes the device's socket if wireguard-go did not (it does on a clean exit).
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

#[test]
fn wireguard_go_takes_our_requests_and_we_read_its_answers() {
    let ns = Netns::new("wguapi");
    let dir = tempfile::tempdir().unwrap();
    // Unique per test process: the socket lives in the shared /var/run/wireguard.
    let dev = format!("wgt{}", std::process::id() % 1_000_000);
    let sock = SocketFile(PathBuf::from(format!("/var/run/wireguard/{dev}.sock")));
    let mut cmd = ns.cmd("wireguard-go");
    cmd.args(["-f", &dev]);
    let wg = Proc::spawn("wireguard-go", cmd, &dir.path().join("wireguard-go.log"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.0.exists() {
        assert!(
            Instant::now() < deadline,
            "no socket {} after 10 s: {}",
            sock.0.display(),
            wg.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let private = PrivateKey::generate().unwrap();
    let (a, b) = (
        PrivateKey::generate().unwrap().public_key(),
        PrivateKey::generate().unwrap().public_key(),
    );
    let psk = Key([7; 32]);
    let change = DeviceChange {
        private_key: Some(private.clone()),
        listen_port: Some(51820),
        replace_peers: true,
        peers: vec![
            PeerChange {
                public_key: a,
                remove: false,
                preshared_key: Some(psk),
                endpoint: Some("192.0.2.12:51820".parse().unwrap()),
                persistent_keepalive: Some(25),
                replace_allowed_ips: true,
                allowed_ips: vec![net("10.244.2.0/24"), net("fc00:0:0:2::/64")],
            },
            PeerChange {
                public_key: b,
                remove: false,
                preshared_key: None,
                endpoint: Some("[2001:db8::3]:51821".parse().unwrap()),
                persistent_keepalive: None,
                replace_allowed_ips: true,
                allowed_ips: vec![net("10.244.3.0/24")],
            },
        ],
    };
    parse_set_answer(&exchange(&sock.0, &set_request(&change))).expect("set accepted");
    let dev_state = parse_get_answer(&exchange(&sock.0, GET_REQUEST)).expect("get answered");
    assert_eq!(dev_state.public_key, Some(private.public_key()));
    assert_eq!(dev_state.listen_port, 51820);
    let mut peers = dev_state.peers.clone();
    peers.sort_by_key(|p| p.public_key);
    let pa = peers.iter().find(|p| p.public_key == a).expect("peer a");
    assert_eq!(pa.preshared_key, Some(psk));
    assert_eq!(pa.endpoint, Some("192.0.2.12:51820".parse().unwrap()));
    assert_eq!(pa.persistent_keepalive, 25);
    let mut ips = pa.allowed_ips.clone();
    ips.sort();
    assert_eq!(ips, vec![net("10.244.2.0/24"), net("fc00:0:0:2::/64")]);
    let pb = peers.iter().find(|p| p.public_key == b).expect("peer b");
    assert_eq!(
        (pb.preshared_key, pb.endpoint, pb.last_handshake_sec),
        (None, Some("[2001:db8::3]:51821".parse().unwrap()), None)
    );
    assert_eq!(peers.len(), 2);

    // A peer removed, the other's allowed IPs replaced.
    let change = DeviceChange {
        peers: vec![
            PeerChange::remove(b),
            PeerChange {
                public_key: a,
                remove: false,
                preshared_key: None,
                endpoint: None,
                persistent_keepalive: None,
                replace_allowed_ips: true,
                allowed_ips: vec![net("10.244.9.0/24")],
            },
        ],
        ..Default::default()
    };
    parse_set_answer(&exchange(&sock.0, &set_request(&change))).expect("set accepted");
    let after = parse_get_answer(&exchange(&sock.0, GET_REQUEST)).unwrap();
    assert_eq!(after.peers.len(), 1, "{after:?}");
    assert_eq!(after.peers[0].public_key, a);
    assert_eq!(after.peers[0].allowed_ips, vec![net("10.244.9.0/24")]);
    assert_eq!(after.peers[0].preshared_key, Some(psk), "untouched");

    // A request it cannot take is refused with an errno, and changes nothing.
    let refused = parse_set_answer(&exchange(&sock.0, "set=1\nlisten_port=notaport\n\n"));
    assert!(
        matches!(refused, Err(UapiError::Errno(n)) if n != 0),
        "{refused:?}"
    );
    let same = parse_get_answer(&exchange(&sock.0, GET_REQUEST)).unwrap();
    assert_eq!(same, after);
    drop(wg);
}
