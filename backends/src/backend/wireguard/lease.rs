//! What a WireGuard node publishes in its lease, per family: `BackendData` (IPv4) and
//! `BackendV6Data` (IPv6), `{"PublicKey": "<base64>", "Port": 51820}` as flannel's wireguard
//! backend writes them.

use serde::{Deserialize, Serialize};

use super::key::{Key, KeyError};

/// `BackendData` / `BackendV6Data` of a wireguard lease, as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardData {
    #[serde(rename = "PublicKey")]
    pub public_key: String,
    /// The peer's listen port; 0 (or absent, as older flannel writes it) means "the same as
    /// ours".
    #[serde(rename = "Port", default)]
    pub port: u16,
}

/// A peer's checked WireGuard data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WireguardPeer {
    pub public_key: Key,
    /// The port to send to: the published one, or ours when it published 0.
    pub port: u16,
}

/// Why a peer's wireguard data cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireguardDataError {
    #[error("PublicKey is {0}")]
    BadKey(KeyError),
    #[error("PublicKey is all zeros, which is no key")]
    ZeroKey,
}

impl WireguardData {
    /// What this node publishes: its public key and listen port.
    pub fn ours(public_key: Key, port: u16) -> WireguardData {
        WireguardData {
            public_key: public_key.to_base64(),
            port,
        }
    }

    /// The peer's key and port, `our_port` standing in for a published 0.
    pub fn check(&self, our_port: u16) -> Result<WireguardPeer, WireguardDataError> {
        let public_key = Key::from_base64(&self.public_key).map_err(WireguardDataError::BadKey)?;
        if public_key.is_zero() {
            return Err(WireguardDataError::ZeroKey);
        }
        Ok(WireguardPeer {
            public_key,
            port: if self.port == 0 { our_port } else { self.port },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    #[test]
    fn flannels_json_reads_and_writes_the_same() {
        let text = format!(r#"{{"PublicKey":"{KEY}","Port":51820}}"#);
        let d: WireguardData = serde_json::from_str(&text).unwrap();
        assert_eq!(
            d,
            WireguardData::ours(Key::from_base64(KEY).unwrap(), 51820)
        );
        assert_eq!(serde_json::to_string(&d).unwrap(), text);
        let v6 = format!(r#"{{"PublicKey":"{KEY}","Port":51821}}"#);
        let d6: WireguardData = serde_json::from_str(&v6).unwrap();
        assert_eq!(d6.check(51821).unwrap().port, 51821);
    }

    #[test]
    fn a_missing_or_zero_port_is_ours_and_a_bad_key_is_refused() {
        let old: WireguardData =
            serde_json::from_str(&format!(r#"{{"PublicKey":"{KEY}"}}"#)).unwrap();
        assert_eq!(old.check(51820).unwrap().port, 51820);
        let zero: WireguardData =
            serde_json::from_str(&format!(r#"{{"PublicKey":"{KEY}","Port":0}}"#)).unwrap();
        assert_eq!(zero.check(40000).unwrap().port, 40000);
        let bad = WireguardData {
            public_key: "nope".into(),
            port: 1,
        };
        assert_eq!(
            bad.check(1),
            Err(WireguardDataError::BadKey(KeyError::NotBase64))
        );
        let zeros = WireguardData::ours(Key([0; 32]), 51820);
        assert_eq!(zeros.check(1), Err(WireguardDataError::ZeroKey));
    }
}
