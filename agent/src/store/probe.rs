//! A second look at a member whose request failed with no more than "the connection was
//! closed". That is all the gRPC stack reports in three common cases, because the real error
//! ends on its connection task, out of the request's reach:
//!
//! - etcd rejected our client certificate: with TLS 1.3 the server checks it after the
//!   client's side of the handshake is done, and its alert arrives on the first read;
//! - an `http://` endpoint speaks TLS: the server drops the plain-text request;
//! - etcd went away (then the probe's own connect says "refused").
//!
//! So the probe connects once more by itself (TCP, then TLS with the same trust and client
//! certificate as the store, then the HTTP/2 preface) and classifies what its own types say.
//! It sends no etcd request and is bounded by the connect timeout.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::cause::{classify_chain, from_rustls, Context, EtcdCause};
use super::tls::{provider, TlsPem};

/// The HTTP/2 connection preface a client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The frame type of HTTP/2 SETTINGS, which a server sends first.
const H2_SETTINGS: u8 = 0x4;

/// An endpoint URL taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Target {
    /// `http[s]://host[:port][/...]`; `None` for anything else (validated before use).
    pub fn parse(endpoint: &str) -> Option<Target> {
        let (tls, rest) = if let Some(r) = endpoint.strip_prefix("https://") {
            (true, r)
        } else {
            (false, endpoint.strip_prefix("http://")?)
        };
        let authority = rest.split('/').next()?;
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p.parse().ok()?,
            None if tls => 443,
            None => 80,
        };
        (!host.is_empty()).then(|| Target {
            tls,
            host: host.to_string(),
            port,
        })
    }

    fn server_name(&self) -> Option<ServerName<'static>> {
        match self.host.parse::<IpAddr>() {
            Ok(ip) => Some(ServerName::IpAddress(ip.into())),
            Err(_) => ServerName::try_from(self.host.clone()).ok(),
        }
    }
}

/// A better cause than `vague` for `endpoint`, when a fresh connection shows one.
pub(crate) async fn diagnose(
    endpoint: &str,
    vague: &EtcdCause,
    tls: Option<&TlsPem>,
    ctx: &Context,
    bound: Duration,
) -> Option<EtcdCause> {
    let target = Target::parse(endpoint)?;
    match tokio::time::timeout(bound, look(&target, tls, ctx)).await {
        Ok(Some(c)) if c != *vague => Some(c),
        _ => None,
    }
}

async fn look(target: &Target, tls: Option<&TlsPem>, ctx: &Context) -> Option<EtcdCause> {
    let tcp = match connect(target).await {
        Ok(s) => s,
        Err(c) => return c,
    };
    if target.tls {
        let config = match tls {
            Some(pem) => pem.client_config().ok()?,
            None => no_trust_config()?,
        };
        match handshake(tcp, target, config).await {
            Err(HandshakeEnd::Rustls(e)) => Some(from_rustls(&e, ctx)),
            Err(HandshakeEnd::Closed) => {
                // Closed before the handshake ended: a plain-text endpoint, or one that
                // closes every connection whatever it is sent (no TLS problem then).
                let tcp = connect(target).await.ok()?;
                Some(if speaks_h2(tcp).await {
                    EtcdCause::NotTls
                } else {
                    EtcdCause::ConnectionLost
                })
            }
            Ok(mut stream) => {
                // Connected; a rejected client certificate shows on the first read.
                let sent = stream.write_all(H2_PREFACE).await;
                let mut first = [0u8; 9];
                let read = match sent {
                    Ok(()) => stream.read_exact(&mut first).await.map(|_| ()),
                    Err(e) => Err(e),
                };
                match read {
                    Ok(()) => None,
                    Err(e) => classify_chain(&e, ctx).filter(|c| !c.is_vague()),
                }
            }
        }
    } else {
        if speaks_h2(tcp).await {
            return None;
        }
        // Plain HTTP/2 was dropped: does the endpoint answer a TLS handshake instead? Any
        // server certificate (trusted or not) proves that it does.
        let tcp = connect(target).await.ok()?;
        match handshake(tcp, target, no_trust_config()?).await {
            Ok(_) | Err(HandshakeEnd::Rustls(rustls::Error::InvalidCertificate(_))) => {
                Some(EtcdCause::SpeaksTls)
            }
            Err(_) => None,
        }
    }
}

/// Connect by TCP; `Err(cause)` when that alone fails (`Err(None)`: nothing to tell).
async fn connect(target: &Target) -> Result<TcpStream, Option<EtcdCause>> {
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
            Ok(a) => a.collect(),
            Err(_) => return Err(Some(EtcdCause::Dns)),
        };
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    let ctx = Context::default();
    Err(last.and_then(|e| classify_chain(&e, &ctx)))
}

/// True when the peer answers the HTTP/2 preface with a SETTINGS frame (plain-text HTTP/2).
async fn speaks_h2(mut tcp: TcpStream) -> bool {
    if tcp.write_all(H2_PREFACE).await.is_err() {
        return false;
    }
    let mut header = [0u8; 9];
    tcp.read_exact(&mut header).await.is_ok() && header[3] == H2_SETTINGS
}

enum HandshakeEnd {
    Rustls(rustls::Error),
    /// The peer closed the connection (or another I/O error ended it).
    Closed,
}

async fn handshake(
    tcp: TcpStream,
    target: &Target,
    config: rustls::ClientConfig,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, HandshakeEnd> {
    let name = target.server_name().ok_or(HandshakeEnd::Closed)?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| {
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(r) => HandshakeEnd::Rustls(r.clone()),
                None => HandshakeEnd::Closed,
            }
        })
}

/// A config that trusts no server: the handshake gets as far as the server's certificate.
fn no_trust_config() -> Option<rustls::ClientConfig> {
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    c.alpn_protocols.push(b"h2".to_vec());
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_taken_apart() {
        let t = |tls, host: &str, port| {
            Some(Target {
                tls,
                host: host.into(),
                port,
            })
        };
        assert_eq!(
            Target::parse("https://127.0.0.1:2379"),
            t(true, "127.0.0.1", 2379)
        );
        assert_eq!(
            Target::parse("http://etcd.example:2379/"),
            t(false, "etcd.example", 2379)
        );
        assert_eq!(Target::parse("https://[::1]:2379"), t(true, "::1", 2379));
        assert_eq!(Target::parse("https://etcd"), t(true, "etcd", 443));
        assert_eq!(Target::parse("etcd:2379"), None);
        assert_eq!(Target::parse("http://:2379"), None);
    }
}
