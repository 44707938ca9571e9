//! What a node knows about reaching its peers, as weftd serves it on
//! `GET /health/peers` (JSON) and `netctl health` reads it: one row per peer and family,
//! with a state, the reason in words, the round-trip times and the MTU result.
//!
//! The JSON field names are part of the operator surface (`netctl health -o json` prints
//! this document); keep them stable.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use weft_backends::IpFamily;

/// The path weftd serves the report on (beside /healthz, /readyz and /metrics).
pub const PEERS_PATH: &str = "/health/peers";

/// The query that asks for the problems only: `GET /health/peers?problems` answers a
/// [`ProblemsReport`]. A weftd that does not know it ignores it and answers the whole report.
pub const PROBLEMS_QUERY: &str = "problems";

/// `/health/peers?problems`.
pub fn problems_path() -> String {
    format!("{PEERS_PATH}?{PROBLEMS_QUERY}")
}

/// Whether a request's query string (after the `?`) asks for the problems only.
pub fn asks_for_problems(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|part| part == PROBLEMS_QUERY))
}

/// How this node reaches one peer over one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerState {
    /// Probes over the overlay and the underlay answer, at the full pod MTU too.
    Ok,
    /// The underlay answers, the overlay does not: the encapsulation's port is blocked
    /// (UDP 8472 for VXLAN, the WireGuard port), or packets through the overlay device are
    /// lost (a checksum-offload bug, a missing route or peer on one side).
    OverlayBroken,
    /// Neither answers: the node or the network between is down.
    Unreachable,
    /// The node's kernel answers but no weftd does (its probe port is closed).
    AgentNotAnswering,
    /// Small probes answer, probes at the pod MTU do not: the path MTU is below it.
    MtuBelowPodMtu,
    /// No probe has finished yet.
    Unknown,
}

impl PeerState {
    pub const ALL: [PeerState; 6] = [
        PeerState::Ok,
        PeerState::OverlayBroken,
        PeerState::Unreachable,
        PeerState::AgentNotAnswering,
        PeerState::MtuBelowPodMtu,
        PeerState::Unknown,
    ];

    /// The name in JSON, tables and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            PeerState::Ok => "ok",
            PeerState::OverlayBroken => "overlay-broken",
            PeerState::Unreachable => "unreachable",
            PeerState::AgentNotAnswering => "agent-not-answering",
            PeerState::MtuBelowPodMtu => "mtu-below-pod-mtu",
            PeerState::Unknown => "unknown",
        }
    }

    pub fn is_ok(&self) -> bool {
        *self == PeerState::Ok
    }

    /// How bad it is, for picking the worst of several (a pair over two families): the
    /// higher, the worse. Unknown ranks between ok and every failure.
    pub fn severity(&self) -> u8 {
        match self {
            PeerState::Ok => 0,
            PeerState::Unknown => 1,
            PeerState::MtuBelowPodMtu => 2,
            PeerState::OverlayBroken => 3,
            PeerState::AgentNotAnswering => 4,
            PeerState::Unreachable => 5,
        }
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name weft does not know.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown peer state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for PeerState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PeerState::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// The MTU result of one peer and family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtuResult {
    /// The pod MTU probed for (this node's).
    #[serde(rename = "podMtu")]
    pub pod_mtu: u32,
    /// The largest IP packet size that passed over the overlay, when the pod MTU did not;
    /// None when the pod MTU passed or nothing is known yet.
    #[serde(rename = "largestOk", default, skip_serializing_if = "Option::is_none")]
    pub largest_ok: Option<u32>,
    /// A probe at the pod MTU answered.
    #[serde(rename = "podMtuOk", default, skip_serializing_if = "Option::is_none")]
    pub pod_mtu_ok: Option<bool>,
}

/// One peer over one family, as this node sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerHealth {
    /// The peer's NodeName, when its lease carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The peer's pod subnet of this family.
    pub subnet: String,
    /// `ipv4` or `ipv6`: the family probed (overlay and underlay addresses of it).
    pub family: FamilyName,
    /// The peer's public IP of this family (the underlay probes' destination).
    #[serde(rename = "publicIp")]
    pub public_ip: IpAddr,
    /// The peer's overlay address probed (its subnet's network address, on its overlay
    /// device); None for host-gw, whose pod traffic is routed on the underlay itself.
    #[serde(rename = "overlayIp", default, skip_serializing_if = "Option::is_none")]
    pub overlay_ip: Option<IpAddr>,
    pub state: PeerState,
    /// The state in words, naming the cause and what was seen.
    pub reason: String,
    /// The last overlay round trip that answered, in milliseconds.
    #[serde(
        rename = "overlayRttMs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub overlay_rtt_ms: Option<f64>,
    /// The last underlay round trip that answered, in milliseconds.
    #[serde(
        rename = "underlayRttMs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub underlay_rtt_ms: Option<f64>,
    pub mtu: MtuResult,
    /// Since when the peer is in this state: seconds since the Unix epoch.
    #[serde(rename = "sinceUnix")]
    pub since_unix: u64,
}

impl PeerHealth {
    /// The node name, or the public IP when the lease names none.
    pub fn name(&self) -> String {
        self.node
            .clone()
            .unwrap_or_else(|| self.public_ip.to_string())
    }
}

/// `ipv4` or `ipv6` in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FamilyName {
    Ipv4,
    Ipv6,
}

impl From<IpFamily> for FamilyName {
    fn from(f: IpFamily) -> Self {
        match f {
            IpFamily::V4 => FamilyName::Ipv4,
            IpFamily::V6 => FamilyName::Ipv6,
        }
    }
}

impl From<FamilyName> for IpFamily {
    fn from(f: FamilyName) -> Self {
        match f {
            FamilyName::Ipv4 => IpFamily::V4,
            FamilyName::Ipv6 => IpFamily::V6,
        }
    }
}

impl fmt::Display for FamilyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FamilyName::Ipv4 => "ipv4",
            FamilyName::Ipv6 => "ipv6",
        })
    }
}

/// A node's whole view: what `GET /health/peers` answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// This node's name.
    pub node: String,
    /// This node's pod subnets (one per family).
    pub subnets: Vec<String>,
    /// This node's public IPs (one per family).
    #[serde(rename = "publicIps")]
    pub public_ips: Vec<IpAddr>,
    /// The backend probed through.
    pub backend: String,
    /// Seconds between two probes of one peer, as configured.
    #[serde(rename = "intervalSeconds")]
    pub interval_seconds: f64,
    /// The interval in effect: longer than the configured one when the probe rate bound
    /// cannot fit every peer into it.
    #[serde(rename = "effectiveIntervalSeconds")]
    pub effective_interval_seconds: f64,
    /// When the report was made: seconds since the Unix epoch.
    #[serde(rename = "generatedUnix")]
    pub generated_unix: u64,
    /// One entry per peer and family, ordered by node name (then subnet, then family).
    pub peers: Vec<PeerHealth>,
}

impl HealthReport {
    /// Every peer entry is ok.
    pub fn all_ok(&self) -> bool {
        self.peers.iter().all(|p| p.state.is_ok())
    }
}

/// Entries counted by family and state (`{"ipv4": {"ok": 4997, "unreachable": 2}}`).
pub type StateCounts = BTreeMap<FamilyName, BTreeMap<PeerState, usize>>;

/// What `GET /health/peers?problems` answers: the report with only the entries that are not
/// ok, every entry (the ok ones too) counted by family and state, and the digest of the
/// subnets of every entry. A reader that knows which peers the node should probe (from the
/// leases) computes the same digest: when the two agree, every peer left out is there, and
/// ok. Its size grows with the problems, not with the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProblemsReport {
    #[serde(flatten)]
    pub report: HealthReport,
    pub counts: StateCounts,
    #[serde(rename = "peersDigest")]
    pub peers_digest: PeerSetDigest,
}

impl ProblemsReport {
    /// The problems of a whole report.
    pub fn of(mut full: HealthReport) -> ProblemsReport {
        let mut counts = StateCounts::new();
        for p in &full.peers {
            *counts
                .entry(p.family)
                .or_default()
                .entry(p.state)
                .or_default() += 1;
        }
        let peers_digest = PeerSetDigest::of(full.peers.iter().map(|p| p.subnet.as_str()));
        full.peers.retain(|p| !p.state.is_ok());
        ProblemsReport {
            report: full,
            counts,
            peers_digest,
        }
    }
}

/// A set of peer subnets in 16 hex digits: the wrapping sum of each subnet's FNV-1a 64-bit
/// hash (of its text, `10.244.1.0/24`). The order does not count, and a reader can take one
/// node's subnets out of a cluster's sum. Pinned: weftd and netctl of different versions
/// compute it alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerSetDigest(u64);

impl PeerSetDigest {
    pub fn of<'a>(subnets: impl IntoIterator<Item = &'a str>) -> PeerSetDigest {
        subnets.into_iter().fold(PeerSetDigest::default(), |d, s| {
            d.plus(PeerSetDigest(fnv1a(s)))
        })
    }

    pub fn plus(self, other: PeerSetDigest) -> PeerSetDigest {
        PeerSetDigest(self.0.wrapping_add(other.0))
    }

    pub fn minus(self, other: PeerSetDigest) -> PeerSetDigest {
        PeerSetDigest(self.0.wrapping_sub(other.0))
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl fmt::Display for PeerSetDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for PeerSetDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerSetDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        u64::from_str_radix(&text, 16)
            .ok()
            .filter(|_| text.len() == 16)
            .map(PeerSetDigest)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not 16 hex digits")))
    }
}

/// What a weftd answers to `?problems`: the problems, or (from a weftd that does not know
/// the query and ignores it) its whole report.
#[derive(Clone, Debug, PartialEq)]
pub enum PeersAnswer {
    Problems(ProblemsReport),
    Whole(HealthReport),
}

impl PeersAnswer {
    /// Read an answer to `?problems`. The report is read as such (a whole report's peers
    /// straight into their structs), then, when the text names it at all, the two fields only
    /// the problems answer has.
    pub fn from_json(text: &str) -> serde_json::Result<PeersAnswer> {
        #[derive(Deserialize)]
        struct ProblemsFields {
            #[serde(default)]
            counts: Option<StateCounts>,
            #[serde(rename = "peersDigest", default)]
            peers_digest: Option<PeerSetDigest>,
        }
        let report: HealthReport = serde_json::from_str(text)?;
        if !text.contains("\"peersDigest\"") {
            return Ok(PeersAnswer::Whole(report));
        }
        let extra: ProblemsFields = serde_json::from_str(text)?;
        Ok(match (extra.counts, extra.peers_digest) {
            (Some(counts), Some(peers_digest)) => PeersAnswer::Problems(ProblemsReport {
                report,
                counts,
                peers_digest,
            }),
            _ => PeersAnswer::Whole(report),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for s in PeerState::ALL {
            assert_eq!(s.as_str().parse::<PeerState>().unwrap(), s);
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!("broken".parse::<PeerState>().is_err());
        let mut by_severity = PeerState::ALL.to_vec();
        by_severity.sort_by_key(PeerState::severity);
        assert_eq!(by_severity[0], PeerState::Ok);
        assert_eq!(by_severity[5], PeerState::Unreachable);
    }

    #[test]
    fn a_report_reads_back_as_written() {
        let r = HealthReport {
            node: "h1".into(),
            subnets: vec!["10.244.1.0/24".into()],
            public_ips: vec!["10.99.0.11".parse().unwrap()],
            backend: "vxlan".into(),
            interval_seconds: 5.0,
            effective_interval_seconds: 5.0,
            generated_unix: 1_800_000_000,
            peers: vec![PeerHealth {
                node: Some("h2".into()),
                subnet: "10.244.2.0/24".into(),
                family: FamilyName::Ipv4,
                public_ip: "10.99.0.12".parse().unwrap(),
                overlay_ip: Some("10.244.2.0".parse().unwrap()),
                state: PeerState::MtuBelowPodMtu,
                reason: "probes of 1450 bytes get no answer; 1400 bytes pass".into(),
                overlay_rtt_ms: Some(0.4),
                underlay_rtt_ms: Some(0.3),
                mtu: MtuResult {
                    pod_mtu: 1450,
                    largest_ok: Some(1400),
                    pod_mtu_ok: Some(false),
                },
                since_unix: 1_799_999_990,
            }],
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""state":"mtu-below-pod-mtu""#), "{text}");
        assert!(text.contains(r#""largestOk":1400"#), "{text}");
        assert_eq!(serde_json::from_str::<HealthReport>(&text).unwrap(), r);
        assert!(!r.all_ok());
    }

    fn entry(node: &str, subnet: &str, family: FamilyName, state: PeerState) -> PeerHealth {
        PeerHealth {
            node: Some(node.into()),
            subnet: subnet.into(),
            family,
            public_ip: "10.99.0.12".parse().unwrap(),
            overlay_ip: None,
            state,
            reason: format!("state {state}"),
            overlay_rtt_ms: None,
            underlay_rtt_ms: Some(0.3),
            mtu: MtuResult {
                pod_mtu: 1450,
                largest_ok: None,
                pod_mtu_ok: None,
            },
            since_unix: 1_799_999_990,
        }
    }

    fn whole(peers: Vec<PeerHealth>) -> HealthReport {
        HealthReport {
            node: "h1".into(),
            subnets: vec!["10.244.1.0/24".into(), "fc00:0:0:1::/64".into()],
            public_ips: vec!["10.99.0.11".parse().unwrap()],
            backend: "vxlan".into(),
            interval_seconds: 10.0,
            effective_interval_seconds: 10.0,
            generated_unix: 1_800_000_000,
            peers,
        }
    }

    #[test]
    fn the_peer_set_digest_is_pinned_and_order_free() {
        assert_eq!(PeerSetDigest::of([]).to_string(), "0000000000000000");
        assert_eq!(
            PeerSetDigest::of(["10.244.1.0/24"]).to_string(),
            "73716c7acd015f22"
        );
        let both = PeerSetDigest::of(["10.244.1.0/24", "fc00:0:0:1::/64"]);
        assert_eq!(both.to_string(), "ce80f6e02a0052ac");
        assert_eq!(
            both,
            PeerSetDigest::of(["fc00:0:0:1::/64", "10.244.1.0/24"])
        );
        assert_eq!(
            both.minus(PeerSetDigest::of(["fc00:0:0:1::/64"])),
            PeerSetDigest::of(["10.244.1.0/24"])
        );
        let text = serde_json::to_string(&both).unwrap();
        assert_eq!(text, "\"ce80f6e02a0052ac\"");
        assert_eq!(serde_json::from_str::<PeerSetDigest>(&text).unwrap(), both);
        assert!(serde_json::from_str::<PeerSetDigest>("\"ce80\"").is_err());
    }

    #[test]
    fn the_problems_answer_lists_what_is_not_ok_and_counts_everything() {
        use FamilyName::{Ipv4, Ipv6};
        let full = whole(vec![
            entry("h2", "10.244.2.0/24", Ipv4, PeerState::Ok),
            entry("h2", "fc00:0:0:2::/64", Ipv6, PeerState::Unreachable),
            entry("h3", "10.244.3.0/24", Ipv4, PeerState::Ok),
            entry("h3", "fc00:0:0:3::/64", Ipv6, PeerState::Unknown),
        ]);
        let p = ProblemsReport::of(full.clone());
        assert_eq!(p.report.peers.len(), 2);
        assert!(p.report.peers.iter().all(|e| e.family == Ipv6));
        assert_eq!(p.counts[&Ipv4][&PeerState::Ok], 2);
        assert_eq!(p.counts[&Ipv6][&PeerState::Unreachable], 1);
        assert_eq!(p.counts[&Ipv6][&PeerState::Unknown], 1);
        assert_eq!(
            p.peers_digest,
            PeerSetDigest::of(full.peers.iter().map(|e| e.subnet.as_str()))
        );
        let text = serde_json::to_string(&p).unwrap();
        assert!(
            text.contains(r#""counts":{"ipv4":{"ok":2},"ipv6":{"unreachable":1,"unknown":1}}"#),
            "{text}"
        );
        // Read back as the problems answer; a whole report (an older weftd's) as itself.
        assert_eq!(
            PeersAnswer::from_json(&text).unwrap(),
            PeersAnswer::Problems(p)
        );
        let old = serde_json::to_string(&full).unwrap();
        assert_eq!(
            PeersAnswer::from_json(&old).unwrap(),
            PeersAnswer::Whole(full)
        );
    }

    #[test]
    fn only_the_problems_query_asks_for_the_problems() {
        assert!(asks_for_problems(Some("problems")));
        assert!(asks_for_problems(Some("x=1&problems")));
        assert!(!asks_for_problems(Some("problems=no-such")));
        assert!(!asks_for_problems(Some("")));
        assert!(!asks_for_problems(None));
        assert_eq!(problems_path(), "/health/peers?problems");
    }
}
