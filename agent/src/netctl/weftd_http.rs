//! netctl's one way to ask a weftd's health server something: an HTTP/1.0 GET with a bound
//! on the time and on the size of the answer. `netctl check` asks /healthz and /readyz with
//! it, `netctl health` asks /health/peers, of the local weftd or of every node's (on a large
//! cluster /health/peers?problems).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::mesh::report::{problems_path, HealthReport, PeersAnswer, PEERS_PATH};

/// What a GET may take: the whole exchange within `timeout`, at most `max_bytes` read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetLimits {
    pub timeout: Duration,
    pub max_bytes: usize,
}

impl GetLimits {
    /// For /healthz and /readyz: a line of text.
    pub const PROBE: GetLimits = GetLimits {
        timeout: Duration::from_secs(3),
        max_bytes: 64 * 1024,
    };

    /// For /health/peers: a report of 5,000 dual-stack peers is about 4 MB.
    pub fn report(timeout: Duration) -> GetLimits {
        GetLimits {
            timeout,
            max_bytes: 32 * 1024 * 1024,
        }
    }
}

/// An HTTP answer: its status and its whole body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

impl HttpReply {
    /// The body's first line, trimmed (weftd's text answers are one line).
    pub fn first_line(&self) -> String {
        self.body
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

/// Why a GET got no HTTP answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GetError {
    /// Connecting, sending or reading failed: the cause in plain words ("connection refused").
    #[error("{0}")]
    Io(String),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the answer is not HTTP")]
    NotHttp,
}

/// GET `path` from `addr`.
pub async fn get(addr: SocketAddr, path: &str, limits: GetLimits) -> Result<HttpReply, GetError> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut reply = Vec::new();
        // One byte more than allowed tells "too large" from "exactly at the limit".
        s.take(limits.max_bytes as u64 + 1)
            .read_to_end(&mut reply)
            .await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = tokio::time::timeout(limits.timeout, exchange)
        .await
        .map_err(|_| GetError::TimedOut(limits.timeout))?
        .map_err(|e| GetError::Io(io_cause(&e)))?;
    if reply.len() > limits.max_bytes {
        return Err(GetError::TooLarge(limits.max_bytes));
    }
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(GetError::NotHttp)?;
    let head = String::from_utf8_lossy(&reply[..split]);
    let status = head
        .strip_prefix("HTTP/")
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or(GetError::NotHttp)?;
    Ok(HttpReply {
        status,
        body: String::from_utf8_lossy(&reply[split + 4..]).into_owned(),
    })
}

/// An I/O error in plain words: "connection refused", not "Connection refused (os error 111)".
pub fn io_cause(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(_) => e.kind().to_string(),
        None => e.to_string(),
    }
}

/// `http://<addr><path>`.
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// Why a weftd's peer health report could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Nothing (HTTP) answered.
    #[error("no answer from {url} ({cause})")]
    NotAnswering { url: String, cause: GetError },
    /// weftd answered 503: its probes are off or have not started.
    #[error("{url} answers: {text}")]
    NotRunning { url: String, text: String },
    /// Another status (an older weftd without /health/peers answers 404).
    #[error("{url} answers status {status}{}", hint_of(*.status, .text))]
    Status {
        url: String,
        status: u16,
        text: String,
    },
    /// 200, but not a report.
    #[error("{url} answers, but not with a peer health report ({error})")]
    NotAReport {
        url: String,
        error: serde_json::Error,
    },
}

fn hint_of(status: u16, text: &str) -> String {
    match (status, text.is_empty()) {
        (404, _) => ": that weftd is older than the peer health mesh (upgrade it)".into(),
        (_, true) => String::new(),
        (_, false) => format!(": {text}"),
    }
}

impl ReportError {
    /// The URL asked.
    pub fn url(&self) -> &str {
        match self {
            ReportError::NotAnswering { url, .. }
            | ReportError::NotRunning { url, .. }
            | ReportError::Status { url, .. }
            | ReportError::NotAReport { url, .. } => url,
        }
    }
}

/// The peer health report of the weftd whose health server is at `addr`.
pub async fn fetch_report(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<HealthReport, ReportError> {
    fetch_peers(addr, PEERS_PATH, timeout, |body| serde_json::from_str(body)).await
}

/// The problems of the weftd at `addr` (`/health/peers?problems`), or its whole report when
/// it is a weftd that does not know the query.
pub async fn fetch_problems(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<PeersAnswer, ReportError> {
    fetch_peers(addr, &problems_path(), timeout, PeersAnswer::from_json).await
}

async fn fetch_peers<T>(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    parse: impl FnOnce(&str) -> serde_json::Result<T>,
) -> Result<T, ReportError> {
    let url = url(addr, path);
    let reply = get(addr, path, GetLimits::report(timeout))
        .await
        .map_err(|cause| ReportError::NotAnswering {
            url: url.clone(),
            cause,
        })?;
    match reply.status {
        200 => parse(&reply.body).map_err(|error| ReportError::NotAReport { url, error }),
        503 => Err(ReportError::NotRunning {
            url,
            text: reply.first_line(),
        }),
        status => Err(ReportError::Status {
            url,
            status,
            text: reply.first_line(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server answering every connection with `reply` (read after the request).
    async fn serve(reply: Vec<u8>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(&reply).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn the_whole_body_comes_back_within_its_bounds() {
        let body = "line one\nline two\n".repeat(1000);
        let addr = serve(
            format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{body}").into_bytes(),
        )
        .await;
        let r = get(addr, "/x", GetLimits::PROBE).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, body);
        assert_eq!(r.first_line(), "line one");
        let small = GetLimits {
            timeout: Duration::from_secs(3),
            max_bytes: 1000,
        };
        assert_eq!(get(addr, "/x", small).await, Err(GetError::TooLarge(1000)));
        let junk = serve(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()).await;
        assert_eq!(
            get(junk, "/", GetLimits::PROBE).await,
            Err(GetError::NotHttp)
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        // Accepts (the kernel does, from the backlog) and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = GetLimits {
            timeout: Duration::from_millis(200),
            max_bytes: 100,
        };
        assert_eq!(
            get(addr, "/", limits).await,
            Err(GetError::TimedOut(Duration::from_millis(200)))
        );
        drop(listener);
    }

    #[tokio::test]
    async fn a_report_a_503_and_a_404_are_told_apart() {
        let report = r#"{"node":"h1","subnets":["10.244.1.0/24"],"publicIps":["10.99.0.11"],"backend":"vxlan","intervalSeconds":10.0,"effectiveIntervalSeconds":10.0,"generatedUnix":1800000000,"peers":[]}"#;
        let ok = serve(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{report}",
                report.len()
            )
            .into_bytes(),
        )
        .await;
        let r = fetch_report(ok, Duration::from_secs(3)).await.unwrap();
        assert_eq!(r.node, "h1");
        let off = serve(b"HTTP/1.1 503 Service Unavailable\r\n\r\npeer health probes are not running on this node\n".to_vec()).await;
        let e = fetch_report(off, Duration::from_secs(3)).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("http://{off}/health/peers answers: peer health probes are not running on this node")
        );
        let old = serve(b"HTTP/1.1 404 Not Found\r\n\r\n".to_vec()).await;
        let e = fetch_report(old, Duration::from_secs(3)).await.unwrap_err();
        assert!(
            e.to_string().ends_with(
                "answers status 404: that weftd is older than the peer health mesh (upgrade it)"
            ),
            "{e}"
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = fetch_report(closed, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("no answer from http://{closed}/health/peers (connection refused)")
        );
    }
}
