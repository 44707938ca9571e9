//! Why a request to one etcd member failed, in terms an operator can act on, classified from
//! the types in the error's source chain (rustls errors, `io::ErrorKind`, hyper errors, gRPC
//! status codes) rather than from its text.

use std::error::Error as StdError;
use std::time::Duration;

/// What went wrong talking to one etcd member. Rendered after "`etcd at <endpoint>:`" as the
/// cause in plain words and the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EtcdCause {
    /// TCP connect refused: nothing listens on that address and port.
    Refused,
    /// No route to the host or its network.
    NoRoute,
    /// The host name does not resolve.
    Dns,
    /// The connection was closed or reset and a second look found nothing more specific.
    ConnectionLost,
    /// The answer was cut off (gRPC's words: no final status, a damaged stream).
    CutOff(String),
    /// No answer within this long.
    Timeout(Duration),
    /// etcd's server certificate is not signed by a CA weft trusts.
    ServerCertUntrusted { ca_given: bool },
    /// etcd's server certificate does not name the endpoint's host.
    ServerCertWrongName,
    /// etcd's server certificate has expired or is not valid yet.
    ServerCertExpired,
    /// etcd's server certificate is unacceptable for another reason (rustls' words).
    ServerCertInvalid(String),
    /// etcd refused the client certificate we sent, or wanted one and got none.
    ClientCertRejected { cert_given: bool },
    /// An `http://` endpoint answered a TLS handshake: it wants `https://`.
    SpeaksTls,
    /// An `https://` endpoint does not speak TLS: it wants `http://`.
    NotTls,
    /// The endpoint closed the connection during the TLS handshake.
    HandshakeClosed,
    /// Another TLS failure (rustls' words).
    Tls(String),
    /// The member answered that the cluster has no leader.
    NoLeader,
    /// The member answered that it cannot serve now (etcd's words).
    Unhealthy(String),
    /// etcd refused the user name or password.
    AuthFailed,
    /// The etcd user may not do this.
    PermissionDenied,
    /// etcd refused the request for another reason (etcd's words).
    Rejected(String),
}

/// The `reason` label of `weft_etcd_request_errors_total`: a small fixed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Unreachable,
    Timeout,
    Tls,
    Unavailable,
    Auth,
    Rejected,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::Unreachable,
        Reason::Timeout,
        Reason::Tls,
        Reason::Unavailable,
        Reason::Auth,
        Reason::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unreachable => "unreachable",
            Reason::Timeout => "timeout",
            Reason::Tls => "tls",
            Reason::Unavailable => "unavailable",
            Reason::Auth => "auth",
            Reason::Rejected => "rejected",
        }
    }
}

impl EtcdCause {
    pub fn reason(&self) -> Reason {
        use EtcdCause::*;
        match self {
            Refused | NoRoute | Dns | ConnectionLost | CutOff(_) => Reason::Unreachable,
            Timeout(_) => Reason::Timeout,
            ServerCertUntrusted { .. }
            | ServerCertWrongName
            | ServerCertExpired
            | ServerCertInvalid(_)
            | ClientCertRejected { .. }
            | SpeaksTls
            | NotTls
            | HandshakeClosed
            | Tls(_) => Reason::Tls,
            NoLeader | Unhealthy(_) => Reason::Unavailable,
            AuthFailed | PermissionDenied => Reason::Auth,
            Rejected(_) => Reason::Rejected,
        }
    }

    /// True when this member failed but another may serve: the request moves on to it.
    /// Answers about the request itself (auth, permission, rejection) hold for every member.
    pub fn is_member_failure(&self) -> bool {
        !matches!(self.reason(), Reason::Auth | Reason::Rejected)
    }

    /// Worth a second look (`probe`): the error says only that the connection went away.
    pub(crate) fn is_vague(&self) -> bool {
        matches!(
            self,
            EtcdCause::ConnectionLost | EtcdCause::CutOff(_) | EtcdCause::HandshakeClosed
        )
    }
}

impl std::fmt::Display for EtcdCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use EtcdCause::*;
        match self {
            Refused => f.write_str(
                "unreachable: connection refused (nothing listens there); check --etcd-endpoints \
                 and that etcd is running",
            ),
            NoRoute => f.write_str(
                "unreachable: no route to the host; check --etcd-endpoints and the network \
                 between this node and etcd",
            ),
            Dns => f.write_str(
                "unreachable: the host name does not resolve; check --etcd-endpoints and this \
                 node's DNS",
            ),
            ConnectionLost => f.write_str(
                "unreachable: the connection was closed; check that etcd is running and healthy \
                 (etcdctl endpoint health)",
            ),
            CutOff(why) => write!(
                f,
                "unreachable: the answer was cut off ({why}); check that etcd is running and \
                 healthy (etcdctl endpoint health)"
            ),
            Timeout(d) => write!(
                f,
                "no answer within {}; check that etcd is running and reachable from this node \
                 (a firewall that drops packets looks like this), or raise \
                 --etcd-request-timeout",
                humantime::format_duration(*d)
            ),
            ServerCertUntrusted { ca_given: true } => f.write_str(
                "etcd's certificate is not signed by --etcd-cafile; give the CA that signed \
                 etcd's server certificate",
            ),
            ServerCertUntrusted { ca_given: false } => f.write_str(
                "etcd's certificate is not signed by --etcd-cafile, and none was given; give \
                 the CA that signed etcd's server certificate with --etcd-cafile",
            ),
            ServerCertWrongName => f.write_str(
                "etcd's certificate is not valid for this endpoint's host; use a host name or \
                 address its subjectAltName lists, or reissue it with this one",
            ),
            ServerCertExpired => f.write_str(
                "etcd's certificate has expired or is not valid yet; renew it, or check this \
                 node's clock",
            ),
            ServerCertInvalid(why) => write!(
                f,
                "etcd's certificate is not acceptable ({why}); reissue it (see docs/operations.md)"
            ),
            ClientCertRejected { cert_given: true } => f.write_str(
                "etcd rejected our client certificate; give one signed by a CA in etcd's \
                 --trusted-ca-file, with extendedKeyUsage=clientAuth, in --etcd-certfile and \
                 --etcd-keyfile",
            ),
            ClientCertRejected { cert_given: false } => f.write_str(
                "etcd rejected our client certificate: it requires one and none was given; \
                 give one with --etcd-certfile and --etcd-keyfile",
            ),
            SpeaksTls => f.write_str(
                "this endpoint speaks TLS; use https:// (with --etcd-cafile, and a client \
                 certificate if etcd asks for one)",
            ),
            NotTls => {
                f.write_str("this endpoint does not speak TLS; use http://, or turn TLS on in etcd")
            }
            HandshakeClosed => f.write_str(
                "the endpoint closed the connection during the TLS handshake; check that it is \
                 etcd's client URL and that etcd accepts TLS there",
            ),
            Tls(why) => write!(f, "TLS failed ({why}); check etcd's TLS settings"),
            NoLeader => {
                f.write_str("the etcd cluster has no leader (quorum lost); check the other members")
            }
            Unhealthy(why) => write!(
                f,
                "etcd cannot serve now ({why}); check the cluster's health (etcdctl endpoint \
                 health)"
            ),
            AuthFailed => f.write_str(
                "etcd refused the user name or password; check --etcd-username and \
                 --etcd-password",
            ),
            PermissionDenied => f.write_str(
                "etcd denied access; grant the etcd user read and write on --etcd-prefix",
            ),
            Rejected(why) => write!(f, "etcd refused the request ({why})"),
        }
    }
}

/// What the classification needs to know about the connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context {
    /// The endpoint is `https://`.
    pub tls: bool,
    pub ca_given: bool,
    pub cert_given: bool,
    /// What a connect timeout reported by the kernel is rendered as.
    pub connect_timeout: Duration,
}

/// Classify an etcd-client error.
pub fn classify(e: &etcd_client::Error, ctx: &Context) -> EtcdCause {
    match e {
        etcd_client::Error::GRpcStatus(s) => classify_status(s, ctx),
        etcd_client::Error::TransportError(t) => {
            classify_chain(t, ctx).unwrap_or(EtcdCause::ConnectionLost)
        }
        etcd_client::Error::IoError(io) => {
            classify_chain(io, ctx).unwrap_or(EtcdCause::ConnectionLost)
        }
        other => EtcdCause::Rejected(other.to_string()),
    }
}

/// Classify a gRPC status: a transport failure carried inside it by what its source chain
/// holds, an answer from etcd by its code.
pub fn classify_status(s: &tonic::Status, ctx: &Context) -> EtcdCause {
    if let Some(src) = StdError::source(s) {
        if let Some(c) = classify_chain(src, ctx) {
            return c;
        }
        return EtcdCause::ConnectionLost;
    }
    match s.code() {
        tonic::Code::Unavailable => {
            // etcd tells "no leader" apart from other Unavailable answers only by its text
            // ("etcdserver: no leader"), as its own Go client does.
            if s.message().contains("no leader") {
                EtcdCause::NoLeader
            } else {
                EtcdCause::Unhealthy(s.message().to_string())
            }
        }
        tonic::Code::DeadlineExceeded => EtcdCause::Unhealthy(s.message().to_string()),
        tonic::Code::Unauthenticated => EtcdCause::AuthFailed,
        tonic::Code::PermissionDenied => EtcdCause::PermissionDenied,
        tonic::Code::Cancelled => EtcdCause::ConnectionLost,
        // gRPC reports a stream that ended without a final status, or a damaged one, with
        // these codes and no source; etcd does not answer with them itself.
        tonic::Code::Unknown | tonic::Code::Internal => EtcdCause::CutOff(s.message().to_string()),
        _ => EtcdCause::Rejected(s.message().to_string()),
    }
}

/// The most specific cause any error in the chain names (`None`: none names one).
pub fn classify_chain(e: &(dyn StdError + 'static), ctx: &Context) -> Option<EtcdCause> {
    let mut cur = Some(e);
    let mut vague = None;
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(from_rustls(r, ctx));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            // `io::Error::source` skips the error it wraps: look at it directly.
            if let Some(inner) = io.get_ref() {
                if let Some(c) = classify_chain(inner, ctx) {
                    return Some(c);
                }
            }
            if let Some(c) = from_io_kind(io.kind(), ctx) {
                if !c.is_vague() {
                    return Some(c);
                }
                vague.get_or_insert(c);
            }
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_canceled() || h.is_closed() || h.is_incomplete_message() {
                vague.get_or_insert(EtcdCause::ConnectionLost);
            }
        }
        cur = err.source();
    }
    vague
}

fn from_io_kind(kind: std::io::ErrorKind, ctx: &Context) -> Option<EtcdCause> {
    use std::io::ErrorKind::*;
    Some(match kind {
        ConnectionRefused => EtcdCause::Refused,
        HostUnreachable | NetworkUnreachable | AddrNotAvailable => EtcdCause::NoRoute,
        TimedOut => EtcdCause::Timeout(ctx.connect_timeout),
        UnexpectedEof if ctx.tls => EtcdCause::HandshakeClosed,
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected => {
            EtcdCause::ConnectionLost
        }
        _ => return None,
    })
}

/// A rustls error in the client's words.
pub fn from_rustls(e: &rustls::Error, ctx: &Context) -> EtcdCause {
    use rustls::{AlertDescription as A, CertificateError as C};
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer | C::BadSignature | C::UnknownRevocationStatus => {
                EtcdCause::ServerCertUntrusted {
                    ca_given: ctx.ca_given,
                }
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => EtcdCause::ServerCertWrongName,
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => EtcdCause::ServerCertExpired,
            other => EtcdCause::ServerCertInvalid(other.to_string()),
        },
        rustls::Error::AlertReceived(
            A::BadCertificate
            | A::CertificateRequired
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::AccessDenied,
        ) => EtcdCause::ClientCertRejected {
            cert_given: ctx.cert_given,
        },
        // The peer's first bytes are not a TLS record: it speaks something else.
        rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType
            | rustls::InvalidMessage::UnknownProtocolVersion
            | rustls::InvalidMessage::MessageTooLarge,
        ) => EtcdCause::NotTls,
        other => EtcdCause::Tls(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// An error whose source is `inner`, as the layers of tonic and hyper wrap errors.
    #[derive(Debug)]
    struct Layer(Box<dyn StdError + Send + Sync>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }
    impl StdError for Layer {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.0)
        }
    }

    fn io_with(kind: io::ErrorKind, inner: impl StdError + Send + Sync + 'static) -> io::Error {
        io::Error::new(kind, inner)
    }

    fn status_with(src: impl StdError + Send + Sync + 'static) -> etcd_client::Error {
        let mut s = tonic::Status::unavailable("transport");
        s.set_source(std::sync::Arc::new(Layer(Box::new(src))));
        etcd_client::Error::GRpcStatus(s)
    }

    fn render(endpoint: &str, e: &etcd_client::Error, ctx: Context) -> String {
        crate::store::StoreError::Etcd {
            op: "get",
            endpoint: endpoint.into(),
            cause: classify(e, &ctx),
        }
        .to_string()
    }

    const HTTPS: &str = "https://10.0.0.5:2379";
    const HTTP: &str = "http://10.0.0.5:2379";

    #[test]
    fn common_failures_render_as_one_sentence_with_endpoint_cause_and_fix() {
        let tls = Context {
            tls: true,
            ca_given: true,
            cert_given: true,
            connect_timeout: Duration::from_secs(3),
        };
        let plain = Context {
            tls: false,
            connect_timeout: Duration::from_secs(3),
            ..Default::default()
        };
        let refused = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let rustls_io = |e: rustls::Error| io_with(io::ErrorKind::InvalidData, e);
        let cases: Vec<(&str, etcd_client::Error, Context, &str)> = vec![
            (
                HTTP,
                status_with(Layer(Box::new(refused()))),
                plain,
                "etcd at http://10.0.0.5:2379: unreachable: connection refused (nothing listens \
                 there); check --etcd-endpoints and that etcd is running",
            ),
            (
                HTTP,
                etcd_client::Error::IoError(io::Error::from(io::ErrorKind::HostUnreachable)),
                plain,
                "etcd at http://10.0.0.5:2379: unreachable: no route to the host; check \
                 --etcd-endpoints and the network between this node and etcd",
            ),
            (
                HTTP,
                etcd_client::Error::IoError(io::Error::from(io::ErrorKind::TimedOut)),
                plain,
                "etcd at http://10.0.0.5:2379: no answer within 3s; check that etcd is running \
                 and reachable from this node (a firewall that drops packets looks like this), \
                 or raise --etcd-request-timeout",
            ),
            (
                HTTPS,
                status_with(rustls_io(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                ))),
                tls,
                "etcd at https://10.0.0.5:2379: etcd's certificate is not signed by \
                 --etcd-cafile; give the CA that signed etcd's server certificate",
            ),
            (
                HTTPS,
                status_with(rustls_io(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                ))),
                Context {
                    ca_given: false,
                    ..tls
                },
                "etcd at https://10.0.0.5:2379: etcd's certificate is not signed by \
                 --etcd-cafile, and none was given; give the CA that signed etcd's server \
                 certificate with --etcd-cafile",
            ),
            (
                HTTPS,
                status_with(rustls_io(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                ))),
                tls,
                "etcd at https://10.0.0.5:2379: etcd's certificate is not valid for this \
                 endpoint's host; use a host name or address its subjectAltName lists, or \
                 reissue it with this one",
            ),
            (
                HTTPS,
                status_with(rustls_io(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Expired,
                ))),
                tls,
                "etcd at https://10.0.0.5:2379: etcd's certificate has expired or is not valid \
                 yet; renew it, or check this node's clock",
            ),
            (
                HTTPS,
                etcd_client::Error::IoError(rustls_io(rustls::Error::AlertReceived(
                    rustls::AlertDescription::BadCertificate,
                ))),
                tls,
                "etcd at https://10.0.0.5:2379: etcd rejected our client certificate; give one \
                 signed by a CA in etcd's --trusted-ca-file, with extendedKeyUsage=clientAuth, \
                 in --etcd-certfile and --etcd-keyfile",
            ),
            (
                HTTPS,
                etcd_client::Error::IoError(rustls_io(rustls::Error::AlertReceived(
                    rustls::AlertDescription::CertificateRequired,
                ))),
                Context {
                    cert_given: false,
                    ..tls
                },
                "etcd at https://10.0.0.5:2379: etcd rejected our client certificate: it \
                 requires one and none was given; give one with --etcd-certfile and \
                 --etcd-keyfile",
            ),
            (
                HTTPS,
                status_with(rustls_io(rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                ))),
                tls,
                "etcd at https://10.0.0.5:2379: this endpoint does not speak TLS; use http://, \
                 or turn TLS on in etcd",
            ),
            (
                HTTPS,
                status_with(io_with(io::ErrorKind::UnexpectedEof, Layer("eof".into()))),
                tls,
                "etcd at https://10.0.0.5:2379: the endpoint closed the connection during the \
                 TLS handshake; check that it is etcd's client URL and that etcd accepts TLS \
                 there",
            ),
            (
                HTTP,
                etcd_client::Error::GRpcStatus(tonic::Status::cancelled("operation was canceled")),
                plain,
                "etcd at http://10.0.0.5:2379: unreachable: the connection was closed; check \
                 that etcd is running and healthy (etcdctl endpoint health)",
            ),
            (
                HTTP,
                etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader")),
                plain,
                "etcd at http://10.0.0.5:2379: the etcd cluster has no leader (quorum lost); \
                 check the other members",
            ),
            (
                HTTP,
                etcd_client::Error::GRpcStatus(tonic::Status::unauthenticated(
                    "etcdserver: authentication failed, invalid user ID or password",
                )),
                plain,
                "etcd at http://10.0.0.5:2379: etcd refused the user name or password; check \
                 --etcd-username and --etcd-password",
            ),
            (
                HTTP,
                etcd_client::Error::GRpcStatus(tonic::Status::permission_denied(
                    "etcdserver: permission denied",
                )),
                plain,
                "etcd at http://10.0.0.5:2379: etcd denied access; grant the etcd user read \
                 and write on --etcd-prefix",
            ),
            (
                HTTP,
                etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument(
                    "etcdserver: request is too large",
                )),
                plain,
                "etcd at http://10.0.0.5:2379: etcd refused the request (etcdserver: request is \
                 too large)",
            ),
        ];
        for (endpoint, err, ctx, want) in cases {
            let got = render(endpoint, &err, ctx);
            assert_eq!(got, want, "for {err:?}");
            assert!(
                !got.contains("Error(") && !got.contains("Some(") && !got.contains("Status {"),
                "{got}"
            );
        }
    }

    #[test]
    fn reasons_are_a_small_fixed_set_and_member_failures_move_on() {
        assert_eq!(EtcdCause::Refused.reason(), Reason::Unreachable);
        assert_eq!(EtcdCause::SpeaksTls.reason(), Reason::Tls);
        assert_eq!(
            EtcdCause::Timeout(Duration::from_secs(1)).reason(),
            Reason::Timeout
        );
        assert_eq!(EtcdCause::NoLeader.reason(), Reason::Unavailable);
        assert!(EtcdCause::NoLeader.is_member_failure());
        assert!(EtcdCause::ClientCertRejected { cert_given: true }.is_member_failure());
        assert!(!EtcdCause::AuthFailed.is_member_failure());
        assert!(!EtcdCause::Rejected("x".into()).is_member_failure());
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "unreachable",
                "timeout",
                "tls",
                "unavailable",
                "auth",
                "rejected"
            ]
        );
    }
}
