//! The TLS files weft is given for etcd (`--etcd-cafile`, `--etcd-certfile`,
//! `--etcd-keyfile`): read once and checked before anything else, so that a wrong file is
//! reported at start naming the flag, not as a handshake failure later.
//!
//! Checked: each file is PEM and holds the right kind of object (a certificate where a
//! certificate belongs, a private key where the key belongs), every certificate parses, the
//! key belongs to the client certificate (their public keys are compared with rustls, the
//! same library that makes the connection), the client certificate is allowed for TLS
//! clients (etcd refuses one whose extendedKeyUsage lacks clientAuth) and has not expired.
//! An expired client certificate is refused: etcd rejects it, so weftd could never work. A
//! CA file is refused only when every certificate in it has expired; an expired one among
//! others, and a certificate that is not valid *yet* (often a node clock that is behind), are
//! warnings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Certificate, Identity, TlsOptions};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ConfigError;

/// One of the three TLS files, named by its flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFile {
    Ca,
    Cert,
    Key,
}

impl TlsFile {
    pub fn flag(self) -> &'static str {
        match self {
            TlsFile::Ca => "--etcd-cafile",
            TlsFile::Cert => "--etcd-certfile",
            TlsFile::Key => "--etcd-keyfile",
        }
    }

    /// What belongs in this file.
    fn wants(self) -> &'static str {
        match self {
            TlsFile::Ca => "a CA certificate",
            TlsFile::Cert => "a certificate",
            TlsFile::Key => "a private key",
        }
    }

    /// How to put it right when the file holds the wrong kind of object.
    fn hint(self) -> &'static str {
        match self {
            TlsFile::Ca => "give the certificate of the CA that signed etcd's server certificate",
            TlsFile::Cert => {
                "give weft's client certificate here and its private key in --etcd-keyfile"
            }
            TlsFile::Key => {
                "give the client certificate's private key here and the certificate in --etcd-certfile"
            }
        }
    }
}

impl std::fmt::Display for TlsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.flag())
    }
}

/// The kind of a PEM block, as an operator would call it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PemKind {
    Certificate,
    PrivateKey,
    PublicKey,
    CertificateRequest,
    Crl,
    Other,
}

impl PemKind {
    fn of(kind: SectionKind) -> PemKind {
        match kind {
            SectionKind::Certificate => PemKind::Certificate,
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                PemKind::PrivateKey
            }
            SectionKind::PublicKey => PemKind::PublicKey,
            SectionKind::Csr => PemKind::CertificateRequest,
            SectionKind::Crl => PemKind::Crl,
            _ => PemKind::Other,
        }
    }
}

impl std::fmt::Display for PemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PemKind::Certificate => "a certificate",
            PemKind::PrivateKey => "a private key",
            PemKind::PublicKey => "a public key",
            PemKind::CertificateRequest => "a certificate signing request (not yet signed)",
            PemKind::Crl => "a certificate revocation list",
            PemKind::Other => "another kind of PEM block",
        })
    }
}

/// How a PEM file is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PemDamage {
    MissingEnd,
    BadBegin,
    BadBase64,
    Other,
}

/// What is wrong with one TLS file. Rendered after "`<flag> <path>:`".
#[derive(Debug, thiserror::Error)]
pub enum TlsFileProblem {
    #[error("cannot read it ({0}); check the path and the file's permissions")]
    Unreadable(std::io::Error),
    #[error(
        "it is not a PEM file (no -----BEGIN ...----- block); convert a DER file with \
         `openssl x509 -inform der` (a certificate) or `openssl pkey -inform der` (a key)"
    )]
    NotPem,
    #[error("it is damaged PEM ({}); write the file again", damage_text(*.0))]
    BadPem(PemDamage),
    #[error(
        "it holds an encrypted private key and weft cannot ask for a passphrase; decrypt it \
         (`openssl pkey -in KEY -out KEY.plain`) and let only root read the result"
    )]
    EncryptedKey,
    #[error("it holds {found}, not {}; {}", .file.wants(), .file.hint())]
    WrongKind { file: TlsFile, found: PemKind },
    /// The message of the X.509 parser (only its text is available to show).
    #[error("it holds a certificate that cannot be parsed ({0}); issue it again")]
    BadCertificate(String),
    #[error("it holds a private key that cannot be used ({0}); give an RSA, ECDSA or Ed25519 key")]
    BadKey(rustls::Error),
    #[error("the certificate for {subject} expired on {}; issue a new one", date(*.not_after))]
    Expired { subject: String, not_after: i64 },
    #[error(
        "it is not the key of the certificate in --etcd-certfile (their public keys differ); \
         give the key the certificate was issued for"
    )]
    KeyMismatch,
    #[error(
        "the certificate for {subject} is not for TLS clients (its extendedKeyUsage lacks \
         clientAuth), so etcd would reject it; issue it with extendedKeyUsage=clientAuth"
    )]
    NotForClients { subject: String },
}

fn damage_text(d: PemDamage) -> &'static str {
    match d {
        PemDamage::MissingEnd => "a block has no -----END ...----- line",
        PemDamage::BadBegin => "a -----BEGIN ...----- line is malformed",
        PemDamage::BadBase64 => "the base64 text of a block is damaged",
        PemDamage::Other => "it cannot be decoded",
    }
}

/// A unix time as an RFC 3339 date (UTC).
fn date(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Something worth telling the operator that does not stop weft.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsWarning {
    #[error(
        "{file} {path}: the certificate for {subject} is valid only from {}; check this \
         node's clock (etcd refuses it until then)", date(*.not_before)
    )]
    NotYetValid {
        file: TlsFile,
        path: String,
        subject: String,
        not_before: i64,
    },
    #[error(
        "{file} {path}: the CA certificate for {subject} expired on {}; it verifies nothing \
         any more, remove or replace it", date(*.not_after)
    )]
    CaExpired {
        file: TlsFile,
        path: String,
        subject: String,
        not_after: i64,
    },
}

/// A file as read: its path (for messages) and its bytes.
#[derive(Clone, Debug)]
pub struct FileContent {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

impl FileContent {
    fn read(file: TlsFile, path: &Path) -> Result<FileContent, ConfigError> {
        std::fs::read(path)
            .map(|bytes| FileContent {
                path: path.to_path_buf(),
                bytes,
            })
            .map_err(|e| problem(file, path, TlsFileProblem::Unreadable(e)))
    }
}

/// The TLS files' contents, checked. `Debug` shows sizes only, never the key.
pub struct TlsPem {
    ca_pem: Option<Vec<u8>>,
    /// Client certificate and key as given (PEM), for etcd-client.
    identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    roots: Vec<CertificateDer<'static>>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    warnings: Vec<TlsWarning>,
}

impl Clone for TlsPem {
    fn clone(&self) -> Self {
        TlsPem {
            ca_pem: self.ca_pem.clone(),
            identity_pem: self.identity_pem.clone(),
            roots: self.roots.clone(),
            client: self
                .client
                .as_ref()
                .map(|(chain, key)| (chain.clone(), key.clone_key())),
            warnings: self.warnings.clone(),
        }
    }
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem")
            .field("ca_bytes", &self.ca_pem.as_ref().map(Vec::len))
            .field(
                "cert_bytes",
                &self.identity_pem.as_ref().map(|(cert, _)| cert.len()),
            )
            .field("key", &self.identity_pem.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl TlsPem {
    /// Read and check the files. `ca`, `cert`, `key`: the paths given (cert and key are
    /// either both given or both absent; [`super::EtcdOptions::validate`] sees to that).
    pub(crate) fn read(
        ca: Option<&Path>,
        identity: Option<(&Path, &Path)>,
    ) -> Result<TlsPem, ConfigError> {
        let ca = ca.map(|p| FileContent::read(TlsFile::Ca, p)).transpose()?;
        let identity = match identity {
            Some((c, k)) => Some((
                FileContent::read(TlsFile::Cert, c)?,
                FileContent::read(TlsFile::Key, k)?,
            )),
            None => None,
        };
        TlsPem::check(ca, identity, unix_now())
    }

    /// Check file contents (the CA file; the client certificate and key) at unix time
    /// `now`. Pure.
    pub fn check(
        ca: Option<FileContent>,
        identity: Option<(FileContent, FileContent)>,
        now: i64,
    ) -> Result<TlsPem, ConfigError> {
        let mut warnings = Vec::new();
        let roots = match &ca {
            Some(f) => check_ca(&f.path, &f.bytes, now, &mut warnings)?,
            None => Vec::new(),
        };
        let client = match &identity {
            Some((cert, key)) => {
                let chain = check_client_cert(&cert.path, &cert.bytes, now, &mut warnings)?;
                let key = check_key(&key.path, &key.bytes, &chain)?;
                Some((chain, key))
            }
            None => None,
        };
        Ok(TlsPem {
            ca_pem: ca.map(|f| f.bytes),
            identity_pem: identity.map(|(c, k)| (c.bytes, k.bytes)),
            roots,
            client,
            warnings,
        })
    }

    /// What the checks found worth a warning (weftd logs these at start).
    pub fn warnings(&self) -> &[TlsWarning] {
        &self.warnings
    }

    pub(crate) fn has_ca(&self) -> bool {
        self.ca_pem.is_some()
    }

    pub(crate) fn has_client_cert(&self) -> bool {
        self.client.is_some()
    }

    /// The options etcd-client connects with.
    pub(crate) fn options(&self) -> TlsOptions {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity_pem {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        tls
    }

    /// A rustls client config trusting what etcd-client trusts and presenting the same
    /// client certificate, for the diagnostic handshake (`probe`).
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(self.roots.iter().cloned());
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match &self.client {
            Some((chain, key)) => builder.with_client_auth_cert(chain.clone(), key.clone_key())?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols.push(b"h2".to_vec());
        Ok(config)
    }
}

/// The crypto provider etcd-client's tonic uses (ring).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn problem(file: TlsFile, path: &Path, problem: TlsFileProblem) -> ConfigError {
    ConfigError::TlsFile {
        file,
        path: path.display().to_string(),
        problem,
    }
}

/// Every PEM block of a known kind, in order.
fn pem_blocks(bytes: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, TlsFileProblem> {
    let mut rd = bytes;
    let mut out = Vec::new();
    loop {
        match pem::from_buf(&mut rd) {
            Ok(Some(block)) => out.push(block),
            Ok(None) => break,
            Err(e) => {
                return Err(TlsFileProblem::BadPem(match e {
                    pem::Error::MissingSectionEnd { .. } => PemDamage::MissingEnd,
                    pem::Error::IllegalSectionStart { .. } => PemDamage::BadBegin,
                    pem::Error::Base64Decode(_) => PemDamage::BadBase64,
                    _ => PemDamage::Other,
                }))
            }
        }
    }
    if out.is_empty() {
        // The PEM reader skips labels it does not know; an encrypted key is one of them.
        let has = |label: &[u8]| bytes.windows(label.len()).any(|w| w == label);
        return Err(if has(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            TlsFileProblem::EncryptedKey
        } else {
            TlsFileProblem::NotPem
        });
    }
    Ok(out)
}

/// The certificates of a file that should hold only certificates.
fn certificates(
    file: TlsFile,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let blocks = pem_blocks(bytes).map_err(|p| problem(file, path, p))?;
    let certs: Vec<CertificateDer<'static>> = blocks
        .iter()
        .filter(|(k, _)| *k == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.clone()))
        .collect();
    if certs.is_empty() {
        let found = PemKind::of(blocks[0].0);
        return Err(problem(
            file,
            path,
            TlsFileProblem::WrongKind { file, found },
        ));
    }
    Ok(certs)
}

/// The facts of one certificate the checks need.
struct CertFacts {
    subject: String,
    not_before: i64,
    not_after: i64,
    /// `Some(false)`: an extendedKeyUsage that does not allow TLS clients.
    client_auth: Option<bool>,
}

fn facts(file: TlsFile, path: &Path, der: &CertificateDer<'_>) -> Result<CertFacts, ConfigError> {
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| problem(file, path, TlsFileProblem::BadCertificate(e.to_string())))?;
    let client_auth = match cert.extended_key_usage() {
        Ok(Some(eku)) => Some(eku.value.any || eku.value.client_auth),
        Ok(None) => None,
        Err(e) => {
            return Err(problem(
                file,
                path,
                TlsFileProblem::BadCertificate(e.to_string()),
            ))
        }
    };
    let subject = cert.subject().to_string();
    Ok(CertFacts {
        subject: if subject.is_empty() {
            "(no subject)".into()
        } else {
            subject
        },
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        client_auth,
    })
}

fn check_ca(
    path: &Path,
    bytes: &[u8],
    now: i64,
    warnings: &mut Vec<TlsWarning>,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let file = TlsFile::Ca;
    let certs = certificates(file, path, bytes)?;
    let mut expired = Vec::new();
    for der in &certs {
        let f = facts(file, path, der)?;
        if f.not_after < now {
            expired.push(f);
        } else if f.not_before > now {
            warnings.push(TlsWarning::NotYetValid {
                file,
                path: path.display().to_string(),
                subject: f.subject,
                not_before: f.not_before,
            });
        }
    }
    if expired.len() == certs.len() {
        let f = expired.swap_remove(0);
        return Err(problem(
            file,
            path,
            TlsFileProblem::Expired {
                subject: f.subject,
                not_after: f.not_after,
            },
        ));
    }
    warnings.extend(expired.into_iter().map(|f| TlsWarning::CaExpired {
        file,
        path: path.display().to_string(),
        subject: f.subject,
        not_after: f.not_after,
    }));
    Ok(certs)
}

fn check_client_cert(
    path: &Path,
    bytes: &[u8],
    now: i64,
    warnings: &mut Vec<TlsWarning>,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let file = TlsFile::Cert;
    let chain = certificates(file, path, bytes)?;
    for der in &chain {
        facts(file, path, der)?;
    }
    let leaf = facts(file, path, &chain[0])?;
    if leaf.client_auth == Some(false) {
        return Err(problem(
            file,
            path,
            TlsFileProblem::NotForClients {
                subject: leaf.subject,
            },
        ));
    }
    if leaf.not_after < now {
        return Err(problem(
            file,
            path,
            TlsFileProblem::Expired {
                subject: leaf.subject,
                not_after: leaf.not_after,
            },
        ));
    }
    if leaf.not_before > now {
        warnings.push(TlsWarning::NotYetValid {
            file,
            path: path.display().to_string(),
            subject: leaf.subject,
            not_before: leaf.not_before,
        });
    }
    Ok(chain)
}

fn check_key(
    path: &Path,
    bytes: &[u8],
    chain: &[CertificateDer<'static>],
) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let file = TlsFile::Key;
    let blocks = pem_blocks(bytes).map_err(|p| problem(file, path, p))?;
    let key = blocks
        .iter()
        .find_map(|(kind, der)| PrivateKeyDer::from_pem(*kind, der.clone()));
    let Some(key) = key else {
        let found = PemKind::of(blocks[0].0);
        return Err(problem(
            file,
            path,
            TlsFileProblem::WrongKind { file, found },
        ));
    };
    match rustls::sign::CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &provider()) {
        Ok(_) => Ok(key),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(problem(file, path, TlsFileProblem::KeyMismatch))
        }
        Err(e) => Err(problem(file, path, TlsFileProblem::BadKey(e))),
    }
}

#[cfg(test)]
mod tests {
    //! Fixtures in `testdata/`: `deploy/etcd-certs.sh` with DAYS=36500 (ca.pem, client.*,
    //! server.key), plus from the same CA a certificate with only serverAuth
    //! (server-only.pem), an RSA client certificate (client-rsa.*), the client certificate
    //! as DER (client.der), its key encrypted (client-enc.key) and a certificate request
    //! (client.csr). Times are passed in, so validity is tested at chosen instants.
    use super::*;

    fn fixture(name: &str) -> FileContent {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/store/testdata")
            .join(name);
        text(name, std::fs::read(&path).unwrap())
    }

    /// `bytes` as if read from /etc/weft/`name`.
    fn text(name: &str, bytes: impl Into<Vec<u8>>) -> FileContent {
        FileContent {
            path: PathBuf::from(format!("/etc/weft/{name}")),
            bytes: bytes.into(),
        }
    }

    /// 2030-01-01, inside every fixture's validity.
    const NOW: i64 = 1_893_456_000;

    fn check(ca: &str, cert: &str, key: &str, now: i64) -> Result<TlsPem, String> {
        TlsPem::check(Some(fixture(ca)), Some((fixture(cert), fixture(key))), now)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn good_files_pass_with_no_warning_ec_and_rsa() {
        for (cert, key) in [
            ("client.pem", "client.key"),
            ("client-rsa.pem", "client-rsa.key"),
        ] {
            let pem = check("ca.pem", cert, key, NOW).unwrap();
            assert!(pem.warnings().is_empty(), "{:?}", pem.warnings());
            assert!(pem.has_ca() && pem.has_client_cert());
            pem.client_config().expect("a usable rustls config");
            let shown = format!("{pem:?}");
            assert!(
                !shown.contains("PRIVATE"),
                "the key is never shown: {shown}"
            );
        }
        // A CA alone (etcd without client certificates) is fine too.
        let pem = TlsPem::check(Some(fixture("ca.pem")), None, NOW).unwrap();
        assert!(!pem.has_client_cert());
    }

    #[test]
    fn each_problem_is_one_sentence_naming_flag_file_and_fix() {
        let cases: Vec<(Result<TlsPem, String>, &str)> = vec![
            (
                check("client.key", "client.pem", "client.key", NOW),
                "--etcd-cafile /etc/weft/client.key: it holds a private key, not a CA \
                 certificate; give the certificate of the CA that signed etcd's server \
                 certificate",
            ),
            (
                check("ca.pem", "client.key", "client.key", NOW),
                "--etcd-certfile /etc/weft/client.key: it holds a private key, not a \
                 certificate; give weft's client certificate here and its private key in \
                 --etcd-keyfile",
            ),
            (
                check("ca.pem", "client.pem", "client.pem", NOW),
                "--etcd-keyfile /etc/weft/client.pem: it holds a certificate, not a private \
                 key; give the client certificate's private key here and the certificate in \
                 --etcd-certfile",
            ),
            (
                check("ca.pem", "client.csr", "client-rsa.key", NOW),
                "--etcd-certfile /etc/weft/client.csr: it holds a certificate signing request \
                 (not yet signed), not a certificate; give weft's client certificate here and \
                 its private key in --etcd-keyfile",
            ),
            (
                check("client.der", "client.pem", "client.key", NOW),
                "--etcd-cafile /etc/weft/client.der: it is not a PEM file (no -----BEGIN \
                 ...----- block); convert a DER file with `openssl x509 -inform der` (a \
                 certificate) or `openssl pkey -inform der` (a key)",
            ),
            (
                check("ca.pem", "client.pem", "client-enc.key", NOW),
                "--etcd-keyfile /etc/weft/client-enc.key: it holds an encrypted private key and \
                 weft cannot ask for a passphrase; decrypt it (`openssl pkey -in KEY -out \
                 KEY.plain`) and let only root read the result",
            ),
            (
                check("ca.pem", "client.pem", "server.key", NOW),
                "--etcd-keyfile /etc/weft/server.key: it is not the key of the certificate in \
                 --etcd-certfile (their public keys differ); give the key the certificate was \
                 issued for",
            ),
            (
                check("ca.pem", "client-rsa.pem", "client.key", NOW),
                "--etcd-keyfile /etc/weft/client.key: it is not the key of the certificate in \
                 --etcd-certfile (their public keys differ); give the key the certificate was \
                 issued for",
            ),
            (
                check("ca.pem", "server-only.pem", "client.key", NOW),
                "--etcd-certfile /etc/weft/server-only.pem: the certificate for CN=weft is not \
                 for TLS clients (its extendedKeyUsage lacks clientAuth), so etcd would reject \
                 it; issue it with extendedKeyUsage=clientAuth",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got.err().as_deref(), Some(want));
        }
    }

    #[test]
    fn text_that_is_not_pem_or_damaged_pem_is_named() {
        let (cert, key) = (fixture("client.pem"), fixture("client.key"));
        let not_pem = TlsPem::check(
            Some(text("ca.pem", "hello\n")),
            Some((cert.clone(), key.clone())),
            NOW,
        );
        assert!(not_pem
            .unwrap_err()
            .to_string()
            .starts_with("--etcd-cafile /etc/weft/ca.pem: it is not a PEM file (no -----BEGIN"),);
        // The END line cut off.
        let ca = String::from_utf8(fixture("ca.pem").bytes).unwrap();
        let cut = &ca[..ca.find("-----END").unwrap()];
        let damaged = TlsPem::check(Some(text("ca.pem", cut)), Some((cert, key)), NOW);
        assert_eq!(
            damaged.unwrap_err().to_string(),
            "--etcd-cafile /etc/weft/ca.pem: it is damaged PEM (a block has no -----END \
             ...----- line); write the file again"
        );
    }

    #[test]
    fn an_expired_client_certificate_is_refused_one_not_valid_yet_is_a_warning() {
        let late = i64::MAX / 2;
        let e = TlsPem::check(
            None,
            Some((fixture("client.pem"), fixture("client.key"))),
            late,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "--etcd-certfile /etc/weft/client.pem: the certificate for CN=weft expired on "
            ) && e.ends_with("; issue a new one"),
            "{e}"
        );
        // Long before: valid files, but not yet: warnings for the CA and the client cert.
        let pem = check("ca.pem", "client.pem", "client.key", 0).unwrap();
        let warnings: Vec<String> = pem.warnings().iter().map(|w| w.to_string()).collect();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with(
            "--etcd-cafile /etc/weft/ca.pem: the certificate for CN=etcd CA for weft is valid only from "
        ), "{warnings:?}");
        assert!(warnings[1].starts_with(
            "--etcd-certfile /etc/weft/client.pem: the certificate for CN=weft is valid only from "
        ) && warnings[1].ends_with("; check this node's clock (etcd refuses it until then)"), "{warnings:?}");
    }

    fn not_after(name: &str) -> i64 {
        let der = CertificateDer::from_pem_slice(&fixture(name).bytes).unwrap();
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
        cert.validity().not_after.timestamp()
    }

    #[test]
    fn a_ca_file_is_refused_only_when_every_certificate_in_it_expired() {
        let late = i64::MAX / 2;
        let e = TlsPem::check(Some(fixture("ca.pem")), None, late)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "--etcd-cafile /etc/weft/ca.pem: the certificate for CN=etcd CA for weft \
                 expired on "
            ),
            "{e}"
        );
        // A bundle with an expired certificate next to a valid one: a warning only. (The RSA
        // fixture was made after the CA, so it expires later.)
        let (ca_end, rsa_end) = (not_after("ca.pem"), not_after("client-rsa.pem"));
        assert!(ca_end < rsa_end);
        let mut bundle = fixture("ca.pem").bytes;
        bundle.extend(fixture("client-rsa.pem").bytes);
        let pem = TlsPem::check(Some(text("bundle.pem", bundle)), None, ca_end + 1).unwrap();
        let warnings: Vec<String> = pem.warnings().iter().map(|w| w.to_string()).collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(
                "--etcd-cafile /etc/weft/bundle.pem: the CA certificate for CN=etcd CA for weft \
                 expired on "
            ),
            "{warnings:?}"
        );
    }
}
