//! What a node knows about reaching its peers, as weftd serves it on
//! `GET /health/peers` (JSON) and `netctl health` reads it: one row per peer and family,
//! with a state, the reason in words, the round-trip times and the MTU result.
//!
//! The JSON field names are part of the operator surface (`netctl health -o json` prints
//! this document); keep them stable.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use weft_backends::IpFamily;

/// The path weftd serves the report on (beside /healthz, /readyz and /metrics).
pub const PEERS_PATH: &str = "/health/peers";

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
}
