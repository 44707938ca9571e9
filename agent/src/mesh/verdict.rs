//! Judging a peer from its probes (pure): what the last round of probes over the overlay
//! and the underlay came to, and the MTU result, become a [`PeerState`] with its reason in
//! words. The prober feeds rounds in; this decides, and says when the state changes.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::report::PeerState;

/// What one probe came to, after its one retry when it went unanswered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The peer's weftd answered, after this long.
    Answered(Duration),
    /// The peer's kernel answered that nothing listens on the probe port (ICMP port
    /// unreachable): the host is up, its weftd is not.
    Refused,
    /// No answer (probe and retry).
    Lost,
    /// It could not be sent from here, with the error (no route, for instance).
    Unsent(String),
}

impl Outcome {
    /// `answered`, `refused`, `lost` or `unsent`: the metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Answered(_) => "answered",
            Outcome::Refused => "refused",
            Outcome::Lost => "lost",
            Outcome::Unsent(_) => "unsent",
        }
    }

    fn rtt(&self) -> Option<Duration> {
        match self {
            Outcome::Answered(d) => Some(*d),
            _ => None,
        }
    }
}

/// The result of a round's MTU probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtuRound {
    /// A probe at the pod MTU answered.
    Passed,
    /// It did not (twice), while small probes on the same path did; the largest size that
    /// passed, when the search found one.
    Failed { largest_ok: Option<u32> },
}

/// One round of probes of a peer over one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round {
    /// None when the backend has no overlay device (host-gw).
    pub overlay: Option<Outcome>,
    pub underlay: Outcome,
    /// None when no MTU probe was made this round.
    pub mtu: Option<MtuRound>,
}

/// What the texts name: the addresses probed and how the overlay carries packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    /// The peer's overlay address; None for host-gw.
    pub overlay_ip: Option<IpAddr>,
    pub public_ip: IpAddr,
    /// The probe port (to name in "not answering").
    pub port: u16,
    /// What carries overlay packets between nodes, for "is it blocked?": `UDP 8472
    /// (VXLAN)`, `UDP 51820 (WireGuard)`.
    pub encapsulation: String,
    /// The overlay device (`weft.1`, `weft-wg`).
    pub device: String,
}

/// A state change, to log once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: PeerState,
    pub to: PeerState,
    pub reason: String,
}

/// What is known of one peer over one family.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerRecord {
    /// The backend has an overlay device to probe through.
    pub overlay_applies: bool,
    pub overlay: Option<Outcome>,
    pub underlay: Option<Outcome>,
    /// The last round trips that answered.
    pub overlay_rtt: Option<Duration>,
    pub underlay_rtt: Option<Duration>,
    /// This node's pod MTU, the size MTU probes are made at.
    pub pod_mtu: u32,
    /// Whether the last MTU probe passed; None before the first.
    pub pod_mtu_ok: Option<bool>,
    /// The largest size that passed when the pod MTU did not.
    pub largest_ok: Option<u32>,
    pub state: PeerState,
    pub reason: String,
    pub since: SystemTime,
    /// Rounds finished.
    pub rounds: u64,
}

impl PeerRecord {
    pub fn new(overlay_applies: bool, pod_mtu: u32, now: SystemTime) -> PeerRecord {
        PeerRecord {
            overlay_applies,
            overlay: None,
            underlay: None,
            overlay_rtt: None,
            underlay_rtt: None,
            pod_mtu,
            pod_mtu_ok: None,
            largest_ok: None,
            state: PeerState::Unknown,
            reason: "no probe has finished yet".into(),
            since: now,
            rounds: 0,
        }
    }

    /// The pod MTU changed (the underlay's did): what was learnt about the old one is void.
    pub fn set_pod_mtu(&mut self, pod_mtu: u32) {
        if pod_mtu != self.pod_mtu {
            self.pod_mtu = pod_mtu;
            self.pod_mtu_ok = None;
            self.largest_ok = None;
        }
    }

    /// Take a round's results; the transition when the state changed.
    pub fn record(&mut self, round: Round, ctx: &Context, now: SystemTime) -> Option<Transition> {
        self.rounds += 1;
        if let Some(rtt) = round.overlay.as_ref().and_then(Outcome::rtt) {
            self.overlay_rtt = Some(rtt);
        }
        if let Some(rtt) = round.underlay.rtt() {
            self.underlay_rtt = Some(rtt);
        }
        self.overlay = round.overlay;
        self.underlay = Some(round.underlay);
        match round.mtu {
            None => {}
            Some(MtuRound::Passed) => {
                self.pod_mtu_ok = Some(true);
                self.largest_ok = None;
            }
            Some(MtuRound::Failed { largest_ok }) => {
                self.pod_mtu_ok = Some(false);
                self.largest_ok = largest_ok;
            }
        }
        let (state, reason) = judge(self, ctx);
        self.reason = reason.clone();
        if state == self.state {
            return None;
        }
        let from = self.state;
        self.state = state;
        self.since = now;
        Some(Transition {
            from,
            to: state,
            reason,
        })
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn failure(o: &Outcome) -> String {
    match o {
        Outcome::Answered(_) => "answers".into(),
        Outcome::Refused => "refuses the probe port".into(),
        Outcome::Lost => "does not answer".into(),
        Outcome::Unsent(e) => format!("cannot be sent to ({e})"),
    }
}

/// The state the record's last round means, and why.
fn judge(r: &PeerRecord, ctx: &Context) -> (PeerState, String) {
    let unknown = || (PeerState::Unknown, "no probe has finished yet".to_string());
    let Some(under) = &r.underlay else {
        return unknown();
    };
    let over = match (r.overlay_applies, &r.overlay) {
        (true, None) => return unknown(),
        (true, Some(o)) => Some(o),
        (false, _) => None,
    };
    let oip = ctx
        .overlay_ip
        .map_or_else(|| "the overlay".to_string(), |ip| ip.to_string());
    let uip = ctx.public_ip;
    match (over, under) {
        (None, Outcome::Answered(_)) | (Some(Outcome::Answered(_)), _) => mtu_verdict(r, ctx),
        (Some(Outcome::Refused), Outcome::Answered(_)) => (
            PeerState::OverlayBroken,
            format!(
                "{uip} (underlay) answers, but {oip} (overlay) is answered by a host with nothing on port {}: the overlay route leads to another node",
                ctx.port
            ),
        ),
        (Some(o), Outcome::Answered(_)) => (
            PeerState::OverlayBroken,
            format!(
                "{uip} (underlay) answers, {oip} (overlay) {}: is {} blocked between the two nodes, or are packets through {} lost (checksum offload)?",
                failure(o),
                ctx.encapsulation,
                ctx.device
            ),
        ),
        (o, u) if *u == Outcome::Refused || o == Some(&Outcome::Refused) => (
            PeerState::AgentNotAnswering,
            format!(
                "the node answers, but nothing listens on probe port {}: weftd is not running there (or runs with another --health-probe-port)",
                ctx.port
            ),
        ),
        (Some(o), u) => (
            PeerState::Unreachable,
            format!(
                "{oip} (overlay) {} and {uip} (underlay) {}: the node or the network between is down",
                failure(o),
                failure(u)
            ),
        ),
        (None, u) => (
            PeerState::Unreachable,
            format!(
                "{uip} {}: the node or the network between is down",
                failure(u)
            ),
        ),
    }
}

/// Ok, or the MTU below the pod MTU, for a peer whose pod-traffic path answers.
fn mtu_verdict(r: &PeerRecord, ctx: &Context) -> (PeerState, String) {
    let path = match r.overlay_applies {
        true => "overlay",
        false => "underlay",
    };
    if r.pod_mtu_ok == Some(false) {
        let found = match r.largest_ok {
            Some(n) => format!("{n} bytes pass"),
            None => "no size tried passes yet".into(),
        };
        return (
            PeerState::MtuBelowPodMtu,
            format!(
                "probes of {} bytes (the pod MTU) over the {path} get no answer, {found}: the path MTU to this node is below the pod MTU; lower Backend.MTU or raise the underlay's MTU",
                r.pod_mtu
            ),
        );
    }
    let mut parts = Vec::new();
    if let Some(d) = r.overlay_rtt.filter(|_| r.overlay_applies) {
        parts.push(format!("overlay {}", ms(d)));
    }
    match (&r.underlay, r.underlay_rtt) {
        (Some(Outcome::Answered(_)), Some(d)) => parts.push(format!("underlay {}", ms(d))),
        (Some(u), _) => parts.push(format!(
            "{} (underlay) {}, the overlay answers",
            ctx.public_ip,
            failure(u)
        )),
        (None, _) => {}
    }
    if r.pod_mtu_ok == Some(true) {
        parts.push(format!("{} bytes pass", r.pod_mtu));
    }
    (PeerState::Ok, parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            overlay_ip: Some("10.244.2.0".parse().unwrap()),
            public_ip: "10.99.0.12".parse().unwrap(),
            port: 8473,
            encapsulation: "UDP 8472 (VXLAN)".into(),
            device: "weft.1".into(),
        }
    }

    fn ok() -> Outcome {
        Outcome::Answered(Duration::from_micros(400))
    }

    fn round(overlay: Option<Outcome>, underlay: Outcome) -> Round {
        Round {
            overlay,
            underlay,
            mtu: None,
        }
    }

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn each_combination_of_outcomes_gets_its_state() {
        use Outcome::*;
        use PeerState::*;
        let cases = [
            (Some(ok()), ok(), Ok),
            // The overlay carries pods; an underlay probe that fails alone is only noted.
            (Some(ok()), Lost, Ok),
            (Some(Lost), ok(), OverlayBroken),
            (Some(Unsent("no route".into())), ok(), OverlayBroken),
            (Some(Refused), ok(), OverlayBroken),
            (Some(Refused), Refused, AgentNotAnswering),
            (Some(Lost), Refused, AgentNotAnswering),
            (Some(Refused), Lost, AgentNotAnswering),
            (Some(Lost), Lost, Unreachable),
            (
                Some(Lost),
                Unsent("network unreachable".into()),
                Unreachable,
            ),
            // host-gw: the underlay alone.
            (None, ok(), Ok),
            (None, Refused, AgentNotAnswering),
            (None, Lost, Unreachable),
        ];
        for (overlay, underlay, want) in cases {
            let mut r = PeerRecord::new(overlay.is_some(), 1450, t(0));
            let what = format!("{overlay:?} / {underlay:?}");
            let tr = r.record(round(overlay, underlay), &ctx(), t(5)).unwrap();
            assert_eq!(
                (tr.from, tr.to, r.state),
                (PeerState::Unknown, want, want),
                "{what}"
            );
            assert_eq!(r.since, t(5));
            assert!(!r.reason.is_empty());
        }
    }

    #[test]
    fn reasons_name_the_addresses_the_port_and_the_cause() {
        let mut r = PeerRecord::new(true, 1450, t(0));
        r.record(round(Some(Outcome::Lost), ok()), &ctx(), t(1));
        assert_eq!(
            r.reason,
            "10.99.0.12 (underlay) answers, 10.244.2.0 (overlay) does not answer: is UDP 8472 (VXLAN) blocked between the two nodes, or are packets through weft.1 lost (checksum offload)?"
        );
        r.record(
            round(Some(Outcome::Refused), Outcome::Refused),
            &ctx(),
            t(2),
        );
        assert!(r.reason.contains("probe port 8473"), "{}", r.reason);
        r.record(round(Some(Outcome::Lost), Outcome::Lost), &ctx(), t(3));
        assert_eq!(
            r.reason,
            "10.244.2.0 (overlay) does not answer and 10.99.0.12 (underlay) does not answer: the node or the network between is down"
        );
        r.record(round(Some(ok()), ok()), &ctx(), t(4));
        assert_eq!(r.reason, "overlay 0.4 ms, underlay 0.4 ms");
    }

    #[test]
    fn a_state_is_reported_once_and_since_moves_only_on_a_change() {
        let mut r = PeerRecord::new(true, 1450, t(0));
        assert!(r.record(round(Some(ok()), ok()), &ctx(), t(1)).is_some());
        assert!(r.record(round(Some(ok()), ok()), &ctx(), t(2)).is_none());
        assert_eq!((r.state, r.since, r.rounds), (PeerState::Ok, t(1), 2));
        let tr = r
            .record(round(Some(Outcome::Lost), ok()), &ctx(), t(3))
            .unwrap();
        assert_eq!((tr.from, tr.to), (PeerState::Ok, PeerState::OverlayBroken));
        assert!(r
            .record(round(Some(Outcome::Lost), ok()), &ctx(), t(4))
            .is_none());
        let tr = r.record(round(Some(ok()), ok()), &ctx(), t(5)).unwrap();
        assert_eq!((tr.to, r.since), (PeerState::Ok, t(5)));
        // The last answered round trips stay through a failed round.
        assert_eq!(r.underlay_rtt, Some(Duration::from_micros(400)));
    }

    #[test]
    fn an_mtu_below_the_pod_mtu_is_named_with_the_size_that_passed() {
        let mut r = PeerRecord::new(true, 1450, t(0));
        let with = |mtu| Round {
            overlay: Some(ok()),
            underlay: ok(),
            mtu: Some(mtu),
        };
        r.record(with(MtuRound::Passed), &ctx(), t(1));
        assert_eq!(r.state, PeerState::Ok);
        assert!(r.reason.ends_with("1450 bytes pass"), "{}", r.reason);
        r.record(
            with(MtuRound::Failed {
                largest_ok: Some(1350),
            }),
            &ctx(),
            t(2),
        );
        assert_eq!(r.state, PeerState::MtuBelowPodMtu);
        assert!(
            r.reason
                .starts_with("probes of 1450 bytes (the pod MTU) over the overlay get no answer, 1350 bytes pass"),
            "{}",
            r.reason
        );
        // Rounds without an MTU probe keep what is known.
        r.record(round(Some(ok()), ok()), &ctx(), t(3));
        assert_eq!(
            (r.state, r.largest_ok),
            (PeerState::MtuBelowPodMtu, Some(1350))
        );
        // A new pod MTU voids it.
        r.set_pod_mtu(1350);
        r.record(round(Some(ok()), ok()), &ctx(), t(4));
        assert_eq!((r.state, r.pod_mtu_ok), (PeerState::Ok, None));
        // A broken overlay outranks the MTU.
        r.record(
            Round {
                overlay: Some(Outcome::Lost),
                underlay: ok(),
                mtu: Some(MtuRound::Failed { largest_ok: None }),
            },
            &ctx(),
            t(5),
        );
        assert_eq!(r.state, PeerState::OverlayBroken);
    }
}
