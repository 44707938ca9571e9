//! `netctl health`: the local weftd's peer health report as a table, one row per peer and
//! family, and below it the reason of every peer that is not ok. Rendering is pure.

use std::net::SocketAddr;
use std::time::Duration;

use crate::cli::HealthOutput;
use crate::mesh::report::{FamilyName, HealthReport, MtuResult, PeerHealth, PeerState};
use crate::netctl::weftd_http::{fetch_report, ReportError};
use crate::netctl::{render_table, short_duration, CommandOutput};

/// Why `netctl health` could not show a report (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(
        "--healthz-port 0: there is no health port to ask; pass the --healthz-port weftd runs with"
    )]
    NoPort,
    #[error("weftd does not answer {url} ({cause}): it is not running on this host, or listens elsewhere (pass --healthz-ip and --healthz-port as given to weftd)", url = .0.url(), cause = cause_of(.0))]
    NotAnswering(ReportError),
    #[error("{0}")]
    Report(ReportError),
    #[error("-o html draws the cluster's matrix: add --cluster")]
    HtmlNeedsCluster,
}

fn cause_of(e: &ReportError) -> String {
    match e {
        ReportError::NotAnswering { cause, .. } => cause.to_string(),
        other => other.to_string(),
    }
}

/// A round trip: "0.21ms", "3.4ms", "142ms"; "-" when none answered.
pub fn rtt_text(ms: Option<f64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1.0 => format!("{ms:.2}ms"),
        Some(ms) if ms < 10.0 => format!("{ms:.1}ms"),
        Some(ms) => format!("{ms:.0}ms"),
    }
}

/// The round trips worth showing beside a state: the last overlay one only while the
/// overlay answers, the underlay one while the underlay does (a stale time next to
/// "overlay-broken" reads as if it answered).
pub fn shown_rtts(
    state: PeerState,
    overlay: Option<f64>,
    underlay: Option<f64>,
) -> (Option<f64>, Option<f64>) {
    use PeerState::*;
    let over = matches!(state, Ok | MtuBelowPodMtu | Unknown);
    let under = matches!(state, Ok | MtuBelowPodMtu | Unknown | OverlayBroken);
    (overlay.filter(|_| over), underlay.filter(|_| under))
}

/// The MTU result: `ok`, `1354<1450` (largest that passed < pod MTU), `<1450`, or `-`.
pub fn mtu_text(m: &MtuResult) -> String {
    match (m.pod_mtu_ok, m.largest_ok) {
        (Some(true), _) => "ok".into(),
        (Some(false), Some(largest)) => format!("{largest}<{}", m.pod_mtu),
        (Some(false), None) => format!("<{}", m.pod_mtu),
        (None, _) => "-".into(),
    }
}

/// The report as a table and the reasons of the peers that are not ok, or as served
/// (`-o json`). Exit 1 when any peer is not ok, unknown included: a weftd that has not
/// finished a probe of a peer cannot say it reaches it.
pub fn render_health(report: &HealthReport, output: HealthOutput, now_unix: u64) -> CommandOutput {
    let not_ok: Vec<&PeerHealth> = report.peers.iter().filter(|p| !p.state.is_ok()).collect();
    let mut out = CommandOutput {
        code: u8::from(!not_ok.is_empty()),
        ..Default::default()
    };
    if output == HealthOutput::Json {
        out.stdout = serde_json::to_string_pretty(report).expect("serializable") + "\n";
        return out;
    }
    let interval = if report.effective_interval_seconds > report.interval_seconds {
        format!(
            "every {}s (stretched from {}s by the probe rate)",
            report.effective_interval_seconds, report.interval_seconds
        )
    } else {
        format!("every {}s", report.interval_seconds)
    };
    let peers = {
        let mut names: Vec<String> = report.peers.iter().map(PeerHealth::name).collect();
        names.dedup();
        names.len()
    };
    out.stdout = format!(
        "node {} ({}), {} peer{} probed over {} {interval}\n",
        report.node,
        report.subnets.join(", "),
        peers,
        if peers == 1 { "" } else { "s" },
        report.backend,
    );
    if report.peers.is_empty() {
        out.stdout
            .push_str("no peers: this node is alone in the cluster\n");
        return out;
    }
    let dual = report.peers.iter().any(|p| p.family == FamilyName::Ipv4)
        && report.peers.iter().any(|p| p.family == FamilyName::Ipv6);
    let mut header = vec!["NODE", "SUBNET", "PUBLIC-IP"];
    if dual {
        header.push("FAMILY");
    }
    header.extend(["STATE", "OVERLAY-RTT", "UNDERLAY-RTT", "MTU", "SINCE"]);
    let rows: Vec<Vec<String>> = report
        .peers
        .iter()
        .map(|p| {
            let mut r = vec![p.name(), p.subnet.clone(), p.public_ip.to_string()];
            if dual {
                r.push(p.family.to_string());
            }
            let (over, under) = shown_rtts(p.state, p.overlay_rtt_ms, p.underlay_rtt_ms);
            let overlay_answers = matches!(p.state, PeerState::Ok | PeerState::MtuBelowPodMtu);
            r.extend([
                p.state.to_string(),
                rtt_text(over),
                rtt_text(under),
                if overlay_answers {
                    mtu_text(&p.mtu)
                } else {
                    "-".into()
                },
                short_duration(now_unix.saturating_sub(p.since_unix)),
            ]);
            r
        })
        .collect();
    out.stdout.push_str(&render_table(&header, &rows));
    if !not_ok.is_empty() {
        out.stdout.push('\n');
        for p in &not_ok {
            let family = if dual {
                format!(" ({})", p.family)
            } else {
                String::new()
            };
            out.stdout.push_str(&format!(
                "{}{family}: {}, for {}\n    {}\n",
                p.name(),
                p.state,
                short_duration(now_unix.saturating_sub(p.since_unix)),
                p.reason
            ));
        }
        let unknown = not_ok
            .iter()
            .filter(|p| p.state == PeerState::Unknown)
            .count();
        out.stderr = format!(
            "{} of {} peer entries not ok{}\n",
            not_ok.len(),
            report.peers.len(),
            if unknown == not_ok.len() {
                format!(
                    " (all unknown: no probe has finished yet; weftd probes every {}s)",
                    report.effective_interval_seconds
                )
            } else {
                String::new()
            }
        );
    }
    out
}

/// `netctl health`: ask the local weftd at `addr`.
pub async fn run(
    addr: Option<SocketAddr>,
    timeout: Duration,
    output: HealthOutput,
) -> Result<CommandOutput, HealthError> {
    if output == HealthOutput::Html {
        return Err(HealthError::HtmlNeedsCluster);
    }
    let addr = addr.ok_or(HealthError::NoPort)?;
    let report = fetch_report(addr, timeout).await.map_err(|e| match e {
        e @ ReportError::NotAnswering { .. } => HealthError::NotAnswering(e),
        e => HealthError::Report(e),
    })?;
    Ok(render_health(&report, output, now_unix()))
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::mesh::report::MtuResult;
    use crate::netctl::parse_table;

    /// Host `i`'s subnet, public IP and overlay address of a family (h1: 10.244.1.0/24,
    /// 10.99.0.11, 10.244.1.0; numbers past 255 go on in the next /16).
    pub(crate) fn host_addresses(i: usize, family: FamilyName) -> (String, String, String) {
        match family {
            FamilyName::Ipv4 => (
                format!("10.{}.{}.0/24", 244 + i / 256, i % 256),
                format!("10.99.{}.{}", i / 200, 10 + i % 200),
                format!("10.{}.{}.0", 244 + i / 256, i % 256),
            ),
            FamilyName::Ipv6 => (
                format!("fc00:0:0:{i:x}::/64"),
                format!("fd99::1{i:x}"),
                format!("fc00:0:0:{i:x}::"),
            ),
        }
    }

    pub(crate) fn peer(node: &str, i: usize, family: FamilyName, state: PeerState) -> PeerHealth {
        let (subnet, public_ip, overlay) = match family {
            FamilyName::Ipv4 => host_addresses(i, family),
            FamilyName::Ipv6 => host_addresses(i, family),
        };
        PeerHealth {
            node: Some(node.into()),
            subnet,
            family,
            public_ip: public_ip.parse().unwrap(),
            overlay_ip: Some(overlay.parse().unwrap()),
            state,
            reason: match state {
                PeerState::Ok => "overlay and underlay answer".into(),
                PeerState::OverlayBroken => format!("{public_ip} (underlay) answers, {overlay} (overlay) got no answer within 1 s: is UDP 8472 blocked between the two nodes, or are packets through weft.1 lost (checksum offload)?"),
                s => format!("state {s}"),
            },
            // A stale overlay time, as weftd keeps the last that answered.
            overlay_rtt_ms: Some(0.213),
            underlay_rtt_ms: (state != PeerState::Unreachable).then_some(0.15),
            mtu: MtuResult {
                pod_mtu: 1450,
                largest_ok: (state == PeerState::MtuBelowPodMtu).then_some(1354),
                pod_mtu_ok: match state {
                    PeerState::Ok => Some(true),
                    PeerState::MtuBelowPodMtu => Some(false),
                    _ => None,
                },
            },
            since_unix: 1_800_000_000 - 192,
        }
    }

    pub(crate) fn report(node: &str, peers: Vec<PeerHealth>) -> HealthReport {
        HealthReport {
            node: node.into(),
            subnets: vec!["10.244.1.0/24".into()],
            public_ips: vec!["10.99.0.11".parse().unwrap()],
            backend: "vxlan".into(),
            interval_seconds: 10.0,
            effective_interval_seconds: 10.0,
            generated_unix: 1_800_000_000,
            peers,
        }
    }

    #[test]
    fn the_table_has_a_row_per_peer_and_the_reasons_below() {
        let r = report(
            "h1",
            vec![
                peer("h2", 2, FamilyName::Ipv4, PeerState::Ok),
                peer("h3", 3, FamilyName::Ipv4, PeerState::OverlayBroken),
                peer("h4", 4, FamilyName::Ipv4, PeerState::MtuBelowPodMtu),
            ],
        );
        let out = render_health(&r, HealthOutput::Table, 1_800_000_000);
        assert_eq!(out.code, 1);
        let mut lines = out.stdout.lines();
        assert_eq!(
            lines.next().unwrap(),
            "node h1 (10.244.1.0/24), 3 peers probed over vxlan every 10s"
        );
        let table: String = lines.map(|l| format!("{l}\n")).collect();
        let t = parse_table(&table);
        assert!(!table.contains("FAMILY"), "one family: no FAMILY column");
        assert_eq!(t.len(), 3);
        assert_eq!(t[0]["NODE"], "h2");
        assert_eq!(t[0]["STATE"], "ok");
        assert_eq!(t[0]["OVERLAY-RTT"], "0.21ms");
        assert_eq!(t[0]["MTU"], "ok");
        assert_eq!(t[0]["SINCE"], "3m12s");
        assert_eq!(t[1]["STATE"], "overlay-broken");
        assert_eq!(t[1]["OVERLAY-RTT"], "-");
        assert_eq!(t[1]["MTU"], "-");
        assert_eq!(t[2]["MTU"], "1354<1450");
        // The reasons: each not-ok peer once, on its own indented line; not ok peers only.
        assert!(
            out.stdout
                .contains("\nh3: overlay-broken, for 3m12s\n    10.99.0.13 (underlay) answers"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains("\nh4: mtu-below-pod-mtu, for 3m12s\n"),
            "{}",
            out.stdout
        );
        assert!(!out.stdout.contains("h2: "), "{}", out.stdout);
        assert_eq!(out.stderr, "2 of 3 peer entries not ok\n");
    }

    #[test]
    fn dual_stack_shows_the_family_and_all_ok_exits_0() {
        let r = report(
            "h1",
            vec![
                peer("h2", 2, FamilyName::Ipv4, PeerState::Ok),
                peer("h2", 2, FamilyName::Ipv6, PeerState::Ok),
            ],
        );
        let out = render_health(&r, HealthOutput::Table, 1_800_000_000);
        assert_eq!(out.code, 0);
        assert!(out.stdout.contains("1 peer probed"), "{}", out.stdout);
        let table: String = out
            .stdout
            .lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect();
        let t = parse_table(&table);
        assert_eq!(t[1]["FAMILY"], "ipv6");
        assert_eq!(t[1]["PUBLIC-IP"], "fd99::12");
        assert_eq!(out.stderr, "");
    }

    #[test]
    fn a_fresh_weftd_with_every_peer_unknown_is_not_ok() {
        let r = report(
            "h1",
            vec![peer("h2", 2, FamilyName::Ipv4, PeerState::Unknown)],
        );
        let out = render_health(&r, HealthOutput::Table, 1_800_000_000);
        assert_eq!(out.code, 1);
        assert!(
            out.stderr
                .contains("all unknown: no probe has finished yet"),
            "{}",
            out.stderr
        );
        let json = render_health(&r, HealthOutput::Json, 0);
        assert_eq!(json.code, 1);
        let back: HealthReport = serde_json::from_str(&json.stdout).unwrap();
        assert_eq!(back, r, "-o json is the report as served");
    }

    #[tokio::test]
    async fn a_closed_port_names_the_url_and_the_fix() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = run(Some(closed), Duration::from_secs(3), HealthOutput::Table)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("weftd does not answer http://{closed}/health/peers (connection refused): it is not running on this host, or listens elsewhere (pass --healthz-ip and --healthz-port as given to weftd)")
        );
    }
}
