//! WireGuard keys: 32-byte Curve25519 keys, written in base64 in leases and key files (as
//! `wg` and flannel write them) and in hex on the userspace configuration socket; and the
//! node's private key file, made once and kept across restarts and reboots.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// A public or preshared key. Shown in base64, as in leases.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub [u8; 32]);

/// The cluster's preshared key (`Backend.PSK`), mixed into every peer's handshake. A secret:
/// its `Debug` says only that it is one, and it has no `Display`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PresharedKey(pub Key);

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(…)")
    }
}

/// A private key. Never shown: its `Debug` says only that it is one.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

/// Why text is not a key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not base64 of 32 bytes (a WireGuard key is 44 characters ending in '=')")]
    NotBase64,
    #[error("not 64 hexadecimal digits")]
    NotHex,
}

impl Key {
    /// From base64 (44 characters), as `wg` and leases write keys.
    pub fn from_base64(s: &str) -> Result<Key, KeyError> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| KeyError::NotBase64)?;
        Ok(Key(bytes.try_into().map_err(|_| KeyError::NotBase64)?))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// From 64 hex digits, as the userspace configuration socket writes keys.
    pub fn from_hex(s: &str) -> Result<Key, KeyError> {
        if s.len() != 64 {
            return Err(KeyError::NotHex);
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or(KeyError::NotHex)?, 16)
                .map_err(|_| KeyError::NotHex)?;
        }
        Ok(Key(out))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The all-zero key, which no real key is (a peer publishing it has no key).
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.to_base64())
    }
}

impl PrivateKey {
    /// A new private key from the system's random source, clamped as `wg genkey` does.
    pub fn generate() -> std::io::Result<PrivateKey> {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(PrivateKey::from_bytes(bytes))
    }

    /// The key with these bytes, clamped (a Curve25519 private key has its low three bits
    /// clear, the top bit clear and the next one set).
    pub fn from_bytes(mut bytes: [u8; 32]) -> PrivateKey {
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        PrivateKey(bytes)
    }

    /// The public key that goes with it.
    pub fn public_key(&self) -> Key {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        Key(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The raw bytes, for the kernel's generic netlink configuration messages.
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Hex, for the userspace configuration socket.
    pub fn to_hex(&self) -> String {
        Key(self.0).to_hex()
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(…)")
    }
}

/// Why the node's key file cannot be used. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("WireGuard key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("WireGuard key file {path} can be read by others (mode {mode:04o}): run chmod 600 {path}, or remove it to have weftd make a new key (peers then see a new public key)", path = .path.display())]
    Exposed { path: PathBuf, mode: u32 },
    #[error("WireGuard key file {path} does not hold a private key ({problem}): remove it to have weftd make a new key (peers then see a new public key)", path = .path.display())]
    Corrupt { path: PathBuf, problem: KeyError },
}

/// The node's private key in `path`: the one there, or a new one written there first (mode
/// 0600 from the start, complete before it has its name). A file others can read is
/// refused rather than used or changed.
pub fn load_or_create(path: &Path) -> Result<(PrivateKey, bool), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Exposed {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            let text = std::fs::read_to_string(path).map_err(io)?;
            let key = Key::from_base64(&text).map_err(|problem| KeyFileError::Corrupt {
                path: path.to_path_buf(),
                problem,
            })?;
            Ok((PrivateKey::from_bytes(key.0), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = PrivateKey::generate().map_err(io)?;
            write_new(path, &format!("{}\n", key.to_base64())).map_err(io)?;
            Ok((key, true))
        }
        Err(e) => Err(io(e)),
    }
}

/// Write the key file: its directory made 0700 when missing, the file 0600 from the start
/// ([`crate::files::write_atomically`]).
fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    crate::files::write_atomically(path, text.as_bytes(), 0o600).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> [u8; 32] {
        Key::from_hex(s).unwrap().0
    }

    /// RFC 7748, section 6.1: Alice's key pair.
    #[test]
    fn the_public_key_is_curve25519s() {
        let private = PrivateKey::from_bytes(hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        assert_eq!(
            private.public_key().to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn keys_read_and_print_in_base64_and_hex() {
        let k = Key::from_base64("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=").unwrap();
        assert_eq!(
            k.to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        assert_eq!(Key::from_hex(&k.to_hex()), Ok(k));
        assert_eq!(
            k.to_string(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
        for bad in [
            "",
            "not a key",
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066Sp",
            "AAAA",
        ] {
            assert_eq!(Key::from_base64(bad), Err(KeyError::NotBase64), "{bad}");
        }
        for bad in ["", "zz", &"g".repeat(64), &"0".repeat(63)] {
            assert_eq!(Key::from_hex(bad), Err(KeyError::NotHex), "{bad}");
        }
        assert!(Key([0; 32]).is_zero() && !k.is_zero());
    }

    #[test]
    fn a_private_key_is_never_shown_and_is_clamped() {
        let k = PrivateKey::from_bytes([0xff; 32]);
        assert_eq!(format!("{k:?}"), "PrivateKey(…)");
        let b = Key::from_base64(&k.to_base64()).unwrap().0;
        assert_eq!((b[0] & 7, b[31] & 0xc0), (0, 0x40));
    }

    #[test]
    fn the_key_file_is_made_once_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib/wireguard.key");
        let (first, created) = load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        let (again, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again, first, "the same key after a restart");
        assert_ne!(PrivateKey::generate().unwrap(), first);
        // `wg`'s format: base64 and a newline.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", first.to_base64()));
    }

    #[test]
    fn an_exposed_or_corrupt_key_file_is_refused_with_the_fix_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wireguard.key");
        let (key, _) = load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(&path).unwrap_err();
        assert!(
            matches!(e, KeyFileError::Exposed { mode: 0o644, .. }),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("mode 0644") && text.contains(&format!("chmod 600 {}", path.display())),
            "{text}"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            key.to_base64(),
            "unchanged"
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "garbage\n").unwrap();
        let e = load_or_create(&path).unwrap_err();
        assert!(matches!(e, KeyFileError::Corrupt { .. }), "{e:?}");
        assert!(e.to_string().contains("does not hold a private key"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "garbage\n");
    }
}
