//! `netctl health --cluster`: every node's peer health, asked of its weftd through its
//! public IP, folded into a node × node matrix (rows: the observing node, columns: the
//! observed one) and a summary that names the common factor. Building, folding, the summary
//! and the text and JSON renderings are pure; [`run`] only asks and feeds them.
//!
//! Up to [`WHOLE_REPORTS_LIMIT`] nodes every weftd is asked its whole report; above, only its
//! problems (`/health/peers?problems`): the entries that are not ok, with a digest of the
//! peers it probes, so what is left out is known to be ok. The matrix keeps only the cells
//! that are not ok, so its memory grows with the problems, not with the square of the nodes.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;

use crate::cli::HealthOutput;
use crate::mesh::report::{
    FamilyName, HealthReport, PeerHealth, PeerSetDigest, PeerState, PeersAnswer, ProblemsReport,
    StateCounts, PEERS_PATH,
};
use crate::netctl::weftd_http::{fetch_problems, fetch_report, GetError, ReportError};
use crate::netctl::{read_lease_rows, render_table, CommandOutput, LeaseRow, LeaseStatus};
use crate::store::{LeaseStore, StoreError};

/// Up to this many nodes the text matrix is printed whole; above, rows that are all ok are
/// folded and only the rows and columns with a problem are printed (at most this many
/// each). The text's lists (failing pairs by node, likely causes, failing pairs) stop at
/// this many entries too.
pub const TEXT_FULL_LIMIT: usize = 40;
/// Up to this many nodes the HTML heat-map is drawn whole; above, all-ok rows and columns
/// are folded.
pub const HTML_FULL_LIMIT: usize = 200;
/// Up to this many nodes every weftd is asked its whole report (ok cells keep their
/// round-trip time, for the HTML's hover); above, its problems only.
pub const WHOLE_REPORTS_LIMIT: usize = HTML_FULL_LIMIT;

/// One cell of the matrix: what the observer says of the target (the worst of its families).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cell {
    Ok,
    Unknown,
    MtuBelowPodMtu,
    OverlayBroken,
    AgentNotAnswering,
    Unreachable,
    /// The observer's report has no entry for the target: its weftd does not know the
    /// target's lease.
    NotInReport,
    /// The observer's weftd could not be asked.
    NotAsked,
    /// The node itself.
    SelfPair,
}

impl Cell {
    pub const LEGEND: [Cell; 9] = [
        Cell::Ok,
        Cell::Unknown,
        Cell::MtuBelowPodMtu,
        Cell::OverlayBroken,
        Cell::AgentNotAnswering,
        Cell::Unreachable,
        Cell::NotInReport,
        Cell::NotAsked,
        Cell::SelfPair,
    ];

    pub fn from_state(s: PeerState) -> Cell {
        match s {
            PeerState::Ok => Cell::Ok,
            PeerState::Unknown => Cell::Unknown,
            PeerState::MtuBelowPodMtu => Cell::MtuBelowPodMtu,
            PeerState::OverlayBroken => Cell::OverlayBroken,
            PeerState::AgentNotAnswering => Cell::AgentNotAnswering,
            PeerState::Unreachable => Cell::Unreachable,
        }
    }

    /// The one-character symbol of the text matrix and the HTML cells.
    pub fn symbol(self) -> char {
        match self {
            Cell::Ok => '.',
            Cell::Unknown => '?',
            Cell::MtuBelowPodMtu => 'M',
            Cell::OverlayBroken => 'O',
            Cell::AgentNotAnswering => 'A',
            Cell::Unreachable => 'X',
            Cell::NotInReport => '!',
            Cell::NotAsked => '~',
            Cell::SelfPair => '-',
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Cell::Ok => "ok",
            Cell::Unknown => "unknown",
            Cell::MtuBelowPodMtu => "mtu-below-pod-mtu",
            Cell::OverlayBroken => "overlay-broken",
            Cell::AgentNotAnswering => "agent-not-answering",
            Cell::Unreachable => "unreachable",
            Cell::NotInReport => "not-in-report",
            Cell::NotAsked => "not-asked",
            Cell::SelfPair => "self",
        }
    }

    /// The legend's words.
    pub fn meaning(self) -> &'static str {
        match self {
            Cell::Ok => "ok",
            Cell::Unknown => "unknown (no probe finished yet)",
            Cell::MtuBelowPodMtu => "path MTU below the pod MTU",
            Cell::OverlayBroken => "overlay broken (underlay answers)",
            Cell::AgentNotAnswering => "no weftd answers probes there",
            Cell::Unreachable => "unreachable",
            Cell::NotInReport => "the observer does not know this peer",
            Cell::NotAsked => "the observer's weftd could not be asked",
            Cell::SelfPair => "self",
        }
    }

    /// A failure of the pair (unknown is not ok, but not a failure either: it is counted
    /// apart; a row not asked is the observer's failure, counted once for the node).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Cell::MtuBelowPodMtu
                | Cell::OverlayBroken
                | Cell::AgentNotAnswering
                | Cell::Unreachable
                | Cell::NotInReport
        )
    }

    pub fn is_fine(self) -> bool {
        matches!(self, Cell::Ok | Cell::SelfPair)
    }
}

/// A node of the cluster, from its lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNode {
    /// NodeName, or the public IP for a lease without one.
    pub name: String,
    /// Where its weftd is asked (public IPv4, else IPv6).
    pub address: Option<IpAddr>,
    pub subnets: Vec<String>,
    /// `http://…/health/peers`, when it has an address.
    pub url: Option<String>,
    /// Why its weftd could not be asked.
    pub error: Option<String>,
}

/// One family of a pair that is not ok, as the observer's report says it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PairDetail {
    pub family: FamilyName,
    pub state: PeerState,
    pub reason: String,
    pub overlay_rtt_ms: Option<f64>,
    pub underlay_rtt_ms: Option<f64>,
}

/// The node × node matrix, sparse: a row read from a report is ok wherever it has no cell of
/// its own; a row not read is not asked.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub nodes: Vec<ClusterNode>,
    /// Rows read from an answer.
    read: Vec<bool>,
    /// The cells of the rows read that are not ok, by (observer, target); self left out.
    not_ok: BTreeMap<(usize, usize), Cell>,
    /// The families of every pair that is not ok.
    pub details: BTreeMap<(usize, usize), Vec<PairDetail>>,
    /// Overlay RTTs of ok pairs (ms; NaN unknown), kept up to [`WHOLE_REPORTS_LIMIT`] nodes.
    rtts: Vec<f32>,
    /// Each node's subnets, to match report entries to nodes.
    by_subnet: HashMap<String, usize>,
    /// Each node's subnets as a digest, and all of them: what a node's report should cover
    /// is everybody's but its own.
    digests: Vec<PeerSetDigest>,
    all_digest: PeerSetDigest,
    /// Every entry of the answers read, by family and state.
    pub entries: StateCounts,
}

impl Matrix {
    /// An empty matrix of `nodes`: every row not asked yet.
    pub fn new(nodes: Vec<ClusterNode>) -> Matrix {
        let n = nodes.len();
        let by_subnet = nodes
            .iter()
            .enumerate()
            .flat_map(|(i, node)| node.subnets.iter().map(move |s| (s.clone(), i)))
            .collect();
        let digests: Vec<PeerSetDigest> = nodes
            .iter()
            .map(|x| PeerSetDigest::of(x.subnets.iter().map(String::as_str)))
            .collect();
        Matrix {
            by_subnet,
            all_digest: digests
                .iter()
                .fold(PeerSetDigest::default(), |a, d| a.plus(*d)),
            digests,
            read: vec![false; n],
            nodes,
            not_ok: BTreeMap::new(),
            details: BTreeMap::new(),
            rtts: if n <= WHOLE_REPORTS_LIMIT {
                vec![f32::NAN; n * n]
            } else {
                Vec::new()
            },
            entries: StateCounts::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn cell(&self, o: usize, t: usize) -> Cell {
        if o == t {
            Cell::SelfPair
        } else if !self.read[o] {
            Cell::NotAsked
        } else {
            self.not_ok.get(&(o, t)).copied().unwrap_or(Cell::Ok)
        }
    }

    /// The cells that are not ok (nor self, nor of rows not asked), by observer then target.
    pub fn problem_cells(&self) -> impl Iterator<Item = ((usize, usize), Cell)> + '_ {
        self.not_ok.iter().map(|(k, c)| (*k, *c))
    }

    /// The overlay RTT of an ok pair, when kept.
    pub fn rtt(&self, o: usize, t: usize) -> Option<f32> {
        self.rtts
            .get(o * self.len() + t)
            .copied()
            .filter(|r| !r.is_nan())
    }

    /// The peers node `o` should probe, as the digest its problems answer carries.
    pub fn expected_digest(&self, o: usize) -> PeerSetDigest {
        self.all_digest.minus(self.digests[o])
    }

    /// The node an entry is about: by subnet; by name for a subnet no lease has.
    fn target_of(&self, p: &PeerHealth) -> Option<usize> {
        self.by_subnet.get(p.subnet.as_str()).copied().or_else(|| {
            let name = p.node.as_ref()?;
            self.nodes.iter().position(|x| &x.name == name)
        })
    }

    /// Record node `o`'s answer.
    pub fn add_answer(&mut self, o: usize, answer: &PeersAnswer) {
        match answer {
            PeersAnswer::Whole(r) => self.add_report(o, r),
            PeersAnswer::Problems(p) => self.add_problems(o, p),
        }
    }

    /// Record node `o`'s whole report: its entries are matched to nodes by subnet (then by
    /// name), a pair's cell is the worst of its families, and a node its report lacks is
    /// [`Cell::NotInReport`].
    pub fn add_report(&mut self, o: usize, report: &HealthReport) {
        let n = self.len();
        self.read[o] = true;
        let mut worst: Vec<Option<PeerState>> = vec![None; n];
        for p in &report.peers {
            count_entry(&mut self.entries, p);
            let Some(t) = self.target_of(p).filter(|&t| t != o) else {
                continue;
            };
            if worst[t].is_none_or(|w| p.state.severity() > w.severity()) {
                worst[t] = Some(p.state);
            }
            if p.state.is_ok() {
                if let (Some(slot), Some(ms)) = (
                    self.rtts.get_mut(o * n + t),
                    p.overlay_rtt_ms.or(p.underlay_rtt_ms),
                ) {
                    *slot = ms as f32;
                }
            } else {
                self.add_detail(o, t, p);
            }
        }
        for (t, w) in worst.into_iter().enumerate().filter(|(t, _)| *t != o) {
            match w {
                None => self.not_ok.insert((o, t), Cell::NotInReport),
                Some(w) if !w.is_ok() => self.not_ok.insert((o, t), Cell::from_state(w)),
                Some(_) => None,
            };
        }
    }

    /// Record node `o`'s problems: the entries it lists, the rest of its row ok. That holds
    /// only when it probes exactly the peers the leases give it (its digest says so); when
    /// not, the row is not asked (ask its whole report to tell which peers it lacks).
    pub fn add_problems(&mut self, o: usize, p: &ProblemsReport) {
        if p.peers_digest != self.expected_digest(o) {
            self.set_not_asked(
                o,
                "its problems answer covers other peers than the leases give it".into(),
            );
            return;
        }
        self.read[o] = true;
        for (family, states) in &p.counts {
            for (state, k) in states {
                *self
                    .entries
                    .entry(*family)
                    .or_default()
                    .entry(*state)
                    .or_default() += k;
            }
        }
        for e in p.report.peers.iter().filter(|e| !e.state.is_ok()) {
            let Some(t) = self.target_of(e).filter(|&t| t != o) else {
                continue;
            };
            // The worst family: cells of peer states order as the states' severity.
            let cell = Cell::from_state(e.state);
            let slot = self.not_ok.entry((o, t)).or_insert(cell);
            if cell > *slot {
                *slot = cell;
            }
            self.add_detail(o, t, e);
        }
    }

    fn add_detail(&mut self, o: usize, t: usize, p: &PeerHealth) {
        self.details.entry((o, t)).or_default().push(PairDetail {
            family: p.family,
            state: p.state,
            reason: p.reason.clone(),
            overlay_rtt_ms: p.overlay_rtt_ms,
            underlay_rtt_ms: p.underlay_rtt_ms,
        });
    }

    /// Node `o`'s weftd could not be asked.
    pub fn set_not_asked(&mut self, o: usize, error: String) {
        self.nodes[o].error = Some(error);
    }

    /// Every cell of row `o` is ok (or self).
    pub fn row_fine(&self, o: usize) -> bool {
        if !self.read[o] {
            return self.len() == 1;
        }
        self.not_ok.range((o, 0)..(o + 1, 0)).next().is_none()
    }

    /// The rows as strings of symbols (the JSON form).
    pub fn symbol_rows(&self) -> Vec<String> {
        let n = self.len();
        let mut rows: Vec<Vec<u8>> = (0..n)
            .map(|o| {
                let fill = if self.read[o] {
                    Cell::Ok
                } else {
                    Cell::NotAsked
                };
                let mut row = vec![fill.symbol() as u8; n];
                row[o] = Cell::SelfPair.symbol() as u8;
                row
            })
            .collect();
        for (&(o, t), c) in &self.not_ok {
            rows[o][t] = c.symbol() as u8;
        }
        rows.into_iter()
            .map(|r| String::from_utf8(r).expect("ASCII symbols"))
            .collect()
    }

    pub fn all_fine(&self) -> bool {
        self.not_ok.is_empty() && (self.len() <= 1 || self.read.iter().all(|r| *r))
    }
}

/// One entry more, by family and state.
fn count_entry(counts: &mut StateCounts, p: &PeerHealth) {
    *counts
        .entry(p.family)
        .or_default()
        .entry(p.state)
        .or_default() += 1;
}

/// Which rows and columns a rendering shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Folding {
    pub rows: Vec<usize>,
    pub columns: Vec<usize>,
    /// All-ok rows left out.
    pub folded_rows: usize,
    /// All-ok columns left out.
    pub folded_columns: usize,
    /// Rows with a problem left out for room.
    pub cut_rows: usize,
    /// Columns with a problem left out for room.
    pub cut_columns: usize,
    /// Rows of nodes not asked left out (they have nothing to show; the nodes are listed
    /// with why).
    pub not_asked_rows: usize,
}

/// How much of a matrix a rendering shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FoldLimits {
    /// Up to this many nodes, everything.
    pub full: usize,
    /// Above, at most this many rows and columns.
    pub rows: usize,
    pub columns: usize,
}

/// Everything up to `limits.full` nodes. Above, only the rows with a problem, at most
/// `limits.rows` (rows of nodes not asked are left out: they hold nothing), and the columns
/// with a problem in those rows, at most `limits.columns`; both shown in node order. The rows
/// and columns kept are those with the most failures, then the most cells not ok (unknown):
/// a node that has just started, all unknown, does not push out the ones that fail.
pub fn fold(m: &Matrix, limits: FoldLimits) -> Folding {
    let n = m.len();
    if n <= limits.full {
        return Folding {
            rows: (0..n).collect(),
            columns: (0..n).collect(),
            folded_rows: 0,
            folded_columns: 0,
            cut_rows: 0,
            cut_columns: 0,
            not_asked_rows: 0,
        };
    }
    let mut row_problems = ProblemCounts::new();
    let mut column_problems = ProblemCounts::new();
    for ((o, t), c) in m.problem_cells() {
        count_problem(&mut row_problems, o, c);
        count_problem(&mut column_problems, t, c);
    }
    let rows = most_first(&row_problems, limits.rows);
    let mut shown_column_problems = ProblemCounts::new();
    for &o in &rows {
        for (&(_, t), &c) in m.not_ok.range((o, 0)..(o + 1, 0)) {
            count_problem(&mut shown_column_problems, t, c);
        }
    }
    let columns = most_first(&shown_column_problems, limits.columns);
    let not_asked_rows = m.read.iter().filter(|r| !**r).count();
    Folding {
        folded_rows: n - row_problems.len() - not_asked_rows,
        folded_columns: n - column_problems.len(),
        cut_rows: row_problems.len() - rows.len(),
        cut_columns: column_problems.len() - columns.len(),
        not_asked_rows,
        rows,
        columns,
    }
}

/// Per row or column: (failing cells, cells not ok).
type ProblemCounts = BTreeMap<usize, (usize, usize)>;

fn count_problem(counts: &mut ProblemCounts, i: usize, c: Cell) {
    let e = counts.entry(i).or_default();
    e.0 += usize::from(c.is_failure());
    e.1 += 1;
}

/// The `k` keys with the most failures, then the most cells not ok (ties: the lower key),
/// in key order.
fn most_first(counts: &ProblemCounts, k: usize) -> Vec<usize> {
    let mut ranked: Vec<(usize, (usize, usize))> = counts.iter().map(|(i, c)| (*i, *c)).collect();
    ranked.sort_by_key(|(i, c)| (std::cmp::Reverse(*c), *i));
    let mut keep: Vec<usize> = ranked.into_iter().take(k).map(|(i, _)| i).collect();
    keep.sort_unstable();
    keep
}

/// A node's failing pairs: as target (observers that fail to reach it, of the observers
/// asked) and as observer (targets it fails to reach, of the others).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeTally {
    pub node: String,
    pub as_target: usize,
    pub observers: usize,
    pub as_observer: usize,
    pub targets: usize,
    /// The failing states, counted, with this node as target.
    #[serde(skip)]
    pub target_states: BTreeMap<Cell, usize>,
    #[serde(skip)]
    pub observer_states: BTreeMap<Cell, usize>,
}

/// A node named as the likely cause.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Culprit {
    pub node: String,
    /// The sentence the text and HTML print.
    pub message: String,
}

/// A pair that fails without a culprit to explain it; `both_ways` when the reverse fails too.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PairProblem {
    pub observer: String,
    pub target: String,
    pub state: Cell,
    pub both_ways: bool,
    /// The observer's reasons (one per family that is not ok), then the reverse's.
    pub reasons: Vec<String>,
}

/// What the matrix says, in words.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub nodes: usize,
    pub asked: usize,
    /// Pairs between nodes that were asked, self left out.
    pub pairs: usize,
    pub failing_pairs: usize,
    pub unknown_pairs: usize,
    /// Nodes with a failing pair, most failures first.
    pub by_node: Vec<NodeTally>,
    pub culprits: Vec<Culprit>,
    /// Failing pairs no culprit explains.
    pub lone_pairs: Vec<PairProblem>,
    /// Every entry of the answers read (each observer's, per peer and family), by family
    /// and state.
    pub entries: StateCounts,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.failing_pairs == 0 && self.unknown_pairs == 0 && self.asked == self.nodes
    }
}

fn dominant(states: &BTreeMap<Cell, usize>) -> Option<Cell> {
    states
        .iter()
        .max_by_key(|(c, n)| (**n, **c))
        .map(|(c, _)| *c)
}

fn target_words(c: Cell) -> &'static str {
    match c {
        Cell::OverlayBroken => "cannot reach it over the overlay (the underlay answers)",
        Cell::Unreachable => "cannot reach it at all (neither overlay nor underlay answers)",
        Cell::AgentNotAnswering => "find no weftd answering on it",
        Cell::MtuBelowPodMtu => "lose packets of the pod MTU on the way to it",
        _ => {
            "do not know it (no entry for it in their reports: their weftd has not seen its lease)"
        }
    }
}

fn observer_words(c: Cell) -> &'static str {
    match c {
        Cell::OverlayBroken => "over the overlay (the underlay answers)",
        Cell::Unreachable => "at all (neither overlay nor underlay answers)",
        Cell::AgentNotAnswering => "(no weftd answers its probes)",
        Cell::MtuBelowPodMtu => "with packets of the pod MTU",
        _ => "(they are missing from its report: its weftd has not seen their leases)",
    }
}

fn mix(states: &BTreeMap<Cell, usize>) -> String {
    if states.len() < 2 {
        return String::new();
    }
    let parts: Vec<String> = states
        .iter()
        .map(|(c, n)| format!("{} {n}", c.name()))
        .collect();
    format!(" [{}]", parts.join(", "))
}

/// The common factor: per node, its failing pairs as target and as observer. A node that
/// more than half (and at least two) of the others fail to reach, or that fails to reach
/// more than half (at least two) of them, is named; so is a node whose weftd could not be
/// asked. Failing pairs that no named node explains are listed as pairs.
pub fn summarize(m: &Matrix) -> Summary {
    let asked: Vec<bool> = m.nodes.iter().map(|x| x.error.is_none()).collect();
    let (tallies, counts) = tally_pairs(m, &asked);
    let culprits = name_culprits(m, &tallies);
    let lone_pairs = unexplained_pairs(m, &asked, &culprits);
    Summary {
        nodes: m.len(),
        asked: asked.iter().filter(|a| **a).count(),
        pairs: counts.pairs,
        failing_pairs: counts.failing,
        unknown_pairs: counts.unknown,
        by_node: most_failing_first(tallies),
        culprits: culprits.list,
        lone_pairs,
        entries: m.entries.clone(),
    }
}

/// The pairs between asked observers and the others, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PairCounts {
    pairs: usize,
    failing: usize,
    unknown: usize,
}

/// Every node's failing pairs as target and as observer, and the pairs counted.
fn tally_pairs(m: &Matrix, asked: &[bool]) -> (Vec<NodeTally>, PairCounts) {
    let n = m.len();
    let asked_count = asked.iter().filter(|a| **a).count();
    let mut tallies: Vec<NodeTally> = m
        .nodes
        .iter()
        .enumerate()
        .map(|(i, x)| NodeTally {
            node: x.name.clone(),
            as_target: 0,
            observers: asked_count - usize::from(asked[i]),
            as_observer: 0,
            targets: if asked[i] { n - 1 } else { 0 },
            target_states: BTreeMap::new(),
            observer_states: BTreeMap::new(),
        })
        .collect();
    let mut counts = PairCounts {
        pairs: asked_count * n.saturating_sub(1),
        ..PairCounts::default()
    };
    for ((o, t), c) in m.problem_cells().filter(|((o, _), _)| asked[*o]) {
        if c == Cell::Unknown {
            counts.unknown += 1;
        }
        if c.is_failure() {
            counts.failing += 1;
            tallies[t].as_target += 1;
            *tallies[t].target_states.entry(c).or_default() += 1;
            tallies[o].as_observer += 1;
            *tallies[o].observer_states.entry(c).or_default() += 1;
        }
    }
    (tallies, counts)
}

/// The nodes named as likely causes, and which of them explain the failures towards them
/// (as target) or from them (as observer).
#[derive(Clone, Debug)]
struct Culprits {
    list: Vec<Culprit>,
    as_target: Vec<bool>,
    as_observer: Vec<bool>,
}

impl Culprits {
    /// The failing pair is explained by a named node.
    fn explain(&self, o: usize, t: usize) -> bool {
        self.as_target[t] || self.as_observer[o]
    }
}

/// More than half of `of`, and at least two.
fn most_of(k: usize, of: usize) -> bool {
    k >= 2 && 2 * k > of
}

fn name_culprits(m: &Matrix, tallies: &[NodeTally]) -> Culprits {
    let mut c = Culprits {
        list: Vec::new(),
        as_target: vec![false; tallies.len()],
        as_observer: vec![false; tallies.len()],
    };
    for (i, t) in tallies.iter().enumerate() {
        c.as_target[i] = most_of(t.as_target, t.observers);
        c.as_observer[i] = most_of(t.as_observer, t.targets);
        let what = culprit_findings(t, c.as_target[i], c.as_observer[i], &m.nodes[i]);
        if !what.is_empty() {
            c.list.push(Culprit {
                node: t.node.clone(),
                message: format!("{}: {} — look at {}", t.node, what.join("; "), t.node),
            });
        }
    }
    c
}

/// What names a node: most others fail to reach it, it fails to reach most others, its
/// weftd could not be asked.
fn culprit_findings(
    t: &NodeTally,
    as_target: bool,
    as_observer: bool,
    node: &ClusterNode,
) -> Vec<String> {
    let mut what = Vec::new();
    if as_target {
        let c = dominant(&t.target_states).expect("failures counted");
        what.push(format!(
            "{} of {} nodes {}{}",
            t.as_target,
            t.observers,
            target_words(c),
            mix(&t.target_states)
        ));
    }
    if as_observer {
        let c = dominant(&t.observer_states).expect("failures counted");
        what.push(format!(
            "it cannot reach {} of {} nodes {}{}",
            t.as_observer,
            t.targets,
            observer_words(c),
            mix(&t.observer_states)
        ));
    }
    if let Some(e) = &node.error {
        what.push(format!("netctl could not ask its weftd: {e}"));
    }
    what
}

/// The failing pairs no named node explains, a pair failing both ways once (at its first
/// observer), with the observers' reasons.
fn unexplained_pairs(m: &Matrix, asked: &[bool], culprits: &Culprits) -> Vec<PairProblem> {
    let mut pairs = Vec::new();
    for ((o, t), c) in m.problem_cells() {
        if !asked[o] || !c.is_failure() || culprits.explain(o, t) {
            continue;
        }
        let reverse = if asked[t] {
            m.cell(t, o)
        } else {
            Cell::NotAsked
        };
        let both_ways = reverse.is_failure() && !culprits.explain(t, o);
        if both_ways && t < o {
            continue; // listed with its reverse
        }
        let mut reasons = pair_reasons(m, o, t);
        if both_ways {
            reasons.extend(pair_reasons(m, t, o));
        }
        pairs.push(PairProblem {
            observer: m.nodes[o].name.clone(),
            target: m.nodes[t].name.clone(),
            state: c,
            both_ways,
            reasons,
        });
    }
    pairs
}

/// Observer `a`'s reasons about `b`, one per family that is not ok.
fn pair_reasons(m: &Matrix, a: usize, b: usize) -> Vec<String> {
    match m.details.get(&(a, b)) {
        Some(d) => d
            .iter()
            .map(|d| format!("{} ({}): {}", m.nodes[a].name, d.family, d.reason))
            .collect(),
        None => vec![format!(
            "{}: has no entry for {} in its report",
            m.nodes[a].name, m.nodes[b].name
        )],
    }
}

/// The nodes with a failing pair, most failures first (ties in node order).
fn most_failing_first(tallies: Vec<NodeTally>) -> Vec<NodeTally> {
    let mut by_node: Vec<NodeTally> = tallies
        .into_iter()
        .filter(|t| t.as_target + t.as_observer > 0)
        .collect();
    by_node.sort_by_key(|t| std::cmp::Reverse(t.as_target + t.as_observer));
    by_node
}

/// Column labels: the names when every one is short, else numbers (rows then carry theirs).
fn labels(m: &Matrix) -> (Vec<String>, bool) {
    let short = m.nodes.iter().all(|x| x.name.chars().count() <= 4);
    if short {
        (m.nodes.iter().map(|x| x.name.clone()).collect(), false)
    } else {
        ((1..=m.len()).map(|i| i.to_string()).collect(), true)
    }
}

/// The legend, three entries a line.
pub fn legend_line() -> String {
    let parts: Vec<String> = Cell::LEGEND
        .iter()
        .map(|c| format!("{} {}", c.symbol(), c.meaning()))
        .collect();
    let width = parts.iter().map(|p| p.chars().count()).max().unwrap_or(0) + 3;
    let mut out = String::from("legend:\n");
    for line in parts.chunks(3) {
        let cells: Vec<String> = line.iter().map(|p| format!("{p:width$}")).collect();
        out.push_str(&format!("  {}\n", cells.concat().trim_end()));
    }
    out
}

/// The headline: how many nodes, how many asked, how many pairs fail.
pub fn headline(s: &Summary) -> String {
    let mut line = format!(
        "{} nodes, {} asked; {} of {} pairs failing",
        s.nodes, s.asked, s.failing_pairs, s.pairs
    );
    if s.unknown_pairs > 0 {
        line.push_str(&format!(
            ", {} unknown (no probe finished yet)",
            s.unknown_pairs
        ));
    }
    line
}

/// The matrix, the legend and the summary as text.
pub fn render_text(m: &Matrix, s: &Summary) -> String {
    let mut out = format!("{}\n", headline(s));
    if m.is_empty() {
        out.push_str("no node to ask: there are no valid leases in etcd\n");
        return out;
    }
    let f = fold(m, TEXT_LIMITS);
    out.push_str("\nrows: the observing node; columns: the node it probes\n");
    out.push_str(&text_matrix(m, &f));
    out.push_str(&text_folded_note(&f));
    out.push_str(&legend_line());
    out.push_str(&text_not_asked(m));
    out.push_str(&text_by_node(s));
    out.push_str(&text_culprits(s));
    out.push_str(&text_lone_pairs(s));
    if s.ok() {
        out.push_str("\nok: every node reaches every other\n");
    }
    out
}

/// What the text shows of a matrix.
pub const TEXT_LIMITS: FoldLimits = FoldLimits {
    full: TEXT_FULL_LIMIT,
    rows: TEXT_FULL_LIMIT,
    columns: TEXT_FULL_LIMIT,
};

/// The rows and columns `f` keeps, one symbol a cell under right-aligned column labels;
/// numbered columns whose node has no row shown are named below.
fn text_matrix(m: &Matrix, f: &Folding) -> String {
    if f.rows.is_empty() {
        return if f.not_asked_rows > 0 {
            "(every row that was asked is all ok)\n".into()
        } else {
            "(every row is all ok)\n".into()
        };
    }
    let (labels, numbered) = labels(m);
    let width = f
        .columns
        .iter()
        .map(|&t| labels[t].len())
        .max()
        .unwrap_or(1)
        + 1;
    let row_label = |o: usize| {
        if numbered {
            format!(
                "{:>w$} {}",
                o + 1,
                m.nodes[o].name,
                w = m.len().to_string().len()
            )
        } else {
            m.nodes[o].name.clone()
        }
    };
    let label_w = f
        .rows
        .iter()
        .map(|&o| row_label(o).chars().count())
        .max()
        .unwrap_or(0)
        .max(8);
    let mut out = format!("{:label_w$}", "");
    for &t in &f.columns {
        out.push_str(&format!("{:>width$}", labels[t]));
    }
    out.push('\n');
    for &o in &f.rows {
        out.push_str(&format!("{:label_w$}", row_label(o)));
        for &t in &f.columns {
            out.push_str(&format!("{:>width$}", m.cell(o, t).symbol()));
        }
        out.push('\n');
    }
    let unnamed: Vec<String> = f
        .columns
        .iter()
        .filter(|t| numbered && f.rows.binary_search(t).is_err())
        .map(|&t| format!("{} {}", labels[t], m.nodes[t].name))
        .collect();
    if !unnamed.is_empty() {
        out.push_str(&format!("columns: {}\n", unnamed.join(", ")));
    }
    out
}

/// The line saying what the folding left out, when it left out anything.
fn text_folded_note(f: &Folding) -> String {
    if f.folded_rows == 0
        && f.folded_columns == 0
        && f.cut_rows == 0
        && f.cut_columns == 0
        && f.not_asked_rows == 0
    {
        return String::new();
    }
    let mut out = format!(
        "({} rows and {} columns that are all ok are not shown",
        f.folded_rows, f.folded_columns
    );
    let cut = match (f.cut_rows, f.cut_columns) {
        (0, 0) => None,
        (0, c) => Some(format!("{c} more columns")),
        (r, 0) => Some(format!("{r} more rows")),
        (r, c) => Some(format!("{r} more rows and {c} more columns")),
    };
    if let Some(cut) = cut {
        out.push_str(&format!(
            "; nor {cut} with problems, for room: -o json has every pair"
        ));
    }
    match f.not_asked_rows {
        0 => {}
        1 => out.push_str("; nor the row of the node not asked (listed below)"),
        k => out.push_str(&format!(
            "; nor the rows of the {k} nodes not asked (listed below)"
        )),
    }
    out.push_str(&format!(
        "; the whole matrix is printed up to {TEXT_FULL_LIMIT} nodes)\n"
    ));
    out
}

/// The line after a list cut at [`TEXT_FULL_LIMIT`] entries.
fn text_more(total: usize, what: &str) -> String {
    if total <= TEXT_FULL_LIMIT {
        return String::new();
    }
    format!(
        "  … and {} more {what} (-o json has them all)\n",
        total - TEXT_FULL_LIMIT
    )
}

/// The nodes whose weftd could not be asked, with why.
fn text_not_asked(m: &Matrix) -> String {
    let not_asked: Vec<&ClusterNode> = m.nodes.iter().filter(|x| x.error.is_some()).collect();
    if not_asked.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nNot asked:\n");
    for x in not_asked {
        out.push_str(&format!(
            "  {}: {}\n",
            x.name,
            x.error.as_deref().unwrap_or_default()
        ));
    }
    out
}

/// The table of failing pairs by node.
fn text_by_node(s: &Summary) -> String {
    if s.by_node.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = s
        .by_node
        .iter()
        .take(TEXT_FULL_LIMIT)
        .map(|t| {
            vec![
                format!("  {}", t.node),
                format!("{} of {}", t.as_target, t.observers),
                if t.targets == 0 {
                    "not asked".to_string()
                } else {
                    format!("{} of {}", t.as_observer, t.targets)
                },
            ]
        })
        .collect();
    format!(
        "\nFailing pairs by node:\n{}{}",
        render_table(&["  NODE", "CANNOT-BE-REACHED-BY", "CANNOT-REACH"], &rows),
        text_more(s.by_node.len(), "nodes with a failing pair")
    )
}

fn text_culprits(s: &Summary) -> String {
    if s.culprits.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nLikely cause:\n");
    for c in s.culprits.iter().take(TEXT_FULL_LIMIT) {
        out.push_str(&format!("  {}\n", c.message));
    }
    out.push_str(&text_more(s.culprits.len(), "nodes named"));
    out
}

/// The failing pairs no named node explains, each with its reasons indented below.
fn text_lone_pairs(s: &Summary) -> String {
    if s.lone_pairs.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n{}:\n",
        if s.culprits.is_empty() {
            "Failing pairs"
        } else {
            "Other failing pairs"
        }
    );
    for p in s.lone_pairs.iter().take(TEXT_FULL_LIMIT) {
        let arrow = if p.both_ways { "↔" } else { "→" };
        let ways = if p.both_ways { ", both ways" } else { "" };
        out.push_str(&format!(
            "  {} {arrow} {}: {}{ways}\n",
            p.observer,
            p.target,
            p.state.name()
        ));
        for r in &p.reasons {
            out.push_str(&format!("      {r}\n"));
        }
    }
    out.push_str(&text_more(s.lone_pairs.len(), "failing pairs"));
    out
}

/// `-o json`: `{ok, legend, nodes, rows, problems, summary}` (see docs/operations.md).
pub fn render_json(m: &Matrix, s: &Summary) -> String {
    let legend: BTreeMap<String, &str> = Cell::LEGEND
        .iter()
        .map(|c| (c.symbol().to_string(), c.name()))
        .collect();
    let problems: Vec<serde_json::Value> = m
        .details
        .iter()
        .flat_map(|((o, t), ds)| {
            ds.iter().map(move |d| {
                serde_json::json!({
                    "observer": m.nodes[*o].name,
                    "target": m.nodes[*t].name,
                    "family": d.family,
                    "state": d.state,
                    "reason": d.reason,
                    "overlayRttMs": d.overlay_rtt_ms,
                    "underlayRttMs": d.underlay_rtt_ms,
                })
            })
        })
        .collect();
    // Built by moving the rows in (at 5,000 nodes they are 25 MB), and written into a buffer
    // of about the final size.
    let value = |v: serde_json::Result<serde_json::Value>| v.expect("serializable");
    let mut doc = serde_json::Map::new();
    doc.insert("ok".into(), s.ok().into());
    doc.insert("legend".into(), value(serde_json::to_value(legend)));
    doc.insert("nodes".into(), value(serde_json::to_value(&m.nodes)));
    let rows = m.symbol_rows();
    let size = rows.iter().map(|r| r.len() + 8).sum::<usize>() + 256 * (m.len() + problems.len());
    doc.insert(
        "rows".into(),
        serde_json::Value::Array(rows.into_iter().map(serde_json::Value::String).collect()),
    );
    doc.insert("problems".into(), serde_json::Value::Array(problems));
    doc.insert("summary".into(), value(serde_json::to_value(s)));
    let mut out = Vec::with_capacity(size);
    serde_json::to_writer_pretty(&mut out, &serde_json::Value::Object(doc)).expect("serializable");
    out.push(b'\n');
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// The nodes to ask, from the leases: valid ones, ordered by name (h2 before h10).
pub fn cluster_nodes(rows: &[LeaseRow], port: u16) -> Vec<ClusterNode> {
    let mut nodes: Vec<ClusterNode> = rows
        .iter()
        .filter(|r| matches!(r.status, LeaseStatus::Ok | LeaseStatus::Reserved))
        .map(|r| {
            let v4 = r
                .public_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok());
            let v6 = r
                .public_ip_v6
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok());
            let address = v4.or(v6);
            let subnets: Vec<String> = [
                Some(r.subnet.clone()).filter(|s| s != "-"),
                r.subnet_v6.clone(),
            ]
            .into_iter()
            .flatten()
            .collect();
            ClusterNode {
                name: r
                    .node
                    .clone()
                    .or_else(|| address.map(|a| a.to_string()))
                    .unwrap_or_else(|| r.subnet.clone()),
                url: address
                    .map(|a| crate::netctl::weftd_http::url(SocketAddr::new(a, port), PEERS_PATH)),
                address,
                subnets,
                error: None,
            }
        })
        .collect();
    nodes.sort_by_cached_key(|n| natural_key(&n.name));
    nodes
}

/// Digits compare as numbers: h2 < h10.
fn natural_key(s: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut num: Option<u64> = None;
    for c in s.chars() {
        match (c.to_digit(10), num) {
            (Some(d), n) => {
                num = Some(
                    n.unwrap_or(0)
                        .saturating_mul(10)
                        .saturating_add(u64::from(d)),
                )
            }
            (None, Some(n)) => {
                out.push((std::mem::take(&mut text), n));
                num = None;
                text.push(c);
            }
            (None, None) => text.push(c),
        }
    }
    out.push((text, num.unwrap_or(0)));
    out
}

/// How `--cluster` asks.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub port: u16,
    /// Per node.
    pub timeout: Duration,
    /// At most this many nodes asked at once.
    pub parallel: usize,
    pub output: HealthOutput,
}

/// What each weftd is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// Its whole report (`/health/peers`).
    WholeReport,
    /// Its problems (`/health/peers?problems`); its whole report when its answer covers
    /// other peers than the leases give it, to tell which it lacks.
    Problems,
}

impl Ask {
    /// Whole reports up to [`WHOLE_REPORTS_LIMIT`] nodes, problems above.
    pub fn for_nodes(n: usize) -> Ask {
        if n <= WHOLE_REPORTS_LIMIT {
            Ask::WholeReport
        } else {
            Ask::Problems
        }
    }
}

/// Ask every node's weftd, `parallel` at a time, folding each answer into the matrix as it
/// comes (answers are not kept).
pub async fn gather(nodes: Vec<ClusterNode>, opts: &ClusterOptions) -> Matrix {
    let ask = Ask::for_nodes(nodes.len());
    gather_by(nodes, opts, ask).await
}

/// [`gather`], asking what `ask` says.
pub async fn gather_by(nodes: Vec<ClusterNode>, opts: &ClusterOptions, ask: Ask) -> Matrix {
    let mut m = Matrix::new(nodes);
    let targets: Vec<(usize, Option<IpAddr>, PeerSetDigest)> = m
        .nodes
        .iter()
        .enumerate()
        .map(|(i, x)| (i, x.address, m.expected_digest(i)))
        .collect();
    let (port, timeout) = (opts.port, opts.timeout);
    let mut answers = futures::stream::iter(targets)
        .map(|(i, addr, expected)| async move {
            let r = match addr {
                Some(a) => ask_node(SocketAddr::new(a, port), timeout, ask, expected)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("its lease has no public IP to ask it on".to_string()),
            };
            (i, r)
        })
        .buffer_unordered(opts.parallel.max(1));
    while let Some((i, r)) = answers.next().await {
        match r {
            Ok(answer) => m.add_answer(i, &answer),
            Err(e) => m.set_not_asked(i, e),
        }
    }
    m
}

/// Ask the weftd at `addr`, all within `timeout`. A problems answer whose peers are not
/// `expected` is followed by the whole report.
async fn ask_node(
    addr: SocketAddr,
    timeout: Duration,
    ask: Ask,
    expected: PeerSetDigest,
) -> Result<PeersAnswer, ReportError> {
    let deadline = tokio::time::Instant::now() + timeout;
    if ask == Ask::Problems {
        match fetch_problems(addr, timeout).await? {
            PeersAnswer::Problems(p) if p.peers_digest != expected => {}
            answer => return Ok(answer),
        }
    }
    tokio::time::timeout_at(deadline, fetch_report(addr, timeout))
        .await
        .unwrap_or_else(|_| {
            Err(ReportError::NotAnswering {
                url: crate::netctl::weftd_http::url(addr, PEERS_PATH),
                cause: GetError::TimedOut(timeout),
            })
        })
        .map(PeersAnswer::Whole)
}

/// `netctl health --cluster`.
pub async fn run<S: LeaseStore>(
    store: &S,
    opts: &ClusterOptions,
) -> Result<CommandOutput, StoreError> {
    let (rows, warnings) = read_lease_rows(store, None).await?;
    let m = gather(cluster_nodes(&rows, opts.port), opts).await;
    let s = summarize(&m);
    let mut out = CommandOutput {
        stderr: warnings,
        code: u8::from(!s.ok() || m.is_empty()),
        ..Default::default()
    };
    out.stdout = match opts.output {
        HealthOutput::Table => render_text(&m, &s),
        HealthOutput::Json => render_json(&m, &s),
        HealthOutput::Html => {
            crate::netctl::health_html::render_html(&m, &s, crate::netctl::health::now_unix())
        }
    };
    if opts.output != HealthOutput::Table && !s.ok() {
        out.stderr.push_str(&format!("{}\n", headline(&s)));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::netctl::health::tests::{host_addresses, peer, report};

    pub(crate) fn node(i: usize) -> ClusterNode {
        let (subnet, ip, _) = host_addresses(i, FamilyName::Ipv4);
        ClusterNode {
            name: format!("h{i}"),
            address: Some(ip.parse().unwrap()),
            url: Some(format!("http://{ip}:8471/health/peers")),
            subnets: vec![subnet],
            error: None,
        }
    }

    /// A matrix of `n` nodes (h1..hn) where `state(o, t)` (1-based) is what o says of t.
    pub(crate) fn matrix(n: usize, state: impl Fn(usize, usize) -> PeerState) -> Matrix {
        let mut m = Matrix::new((1..=n).map(node).collect());
        for o in 1..=n {
            let peers = (1..=n)
                .filter(|&t| t != o)
                .map(|t| peer(&format!("h{t}"), t, FamilyName::Ipv4, state(o, t)))
                .collect();
            m.add_report(o - 1, &report(&format!("h{o}"), peers));
        }
        m
    }

    /// Row `o` of `m` as node `o`'s whole report (an entry per other node, in its cell's
    /// state; ok for cells that are not peer states).
    pub(crate) fn row_report(m: &Matrix, o: usize) -> HealthReport {
        let state = |c: Cell| {
            PeerState::ALL
                .into_iter()
                .find(|s| Cell::from_state(*s) == c)
                .unwrap_or(PeerState::Ok)
        };
        let peers = (0..m.len())
            .filter(|&t| t != o)
            .map(|t| {
                peer(
                    &m.nodes[t].name,
                    t + 1,
                    FamilyName::Ipv4,
                    state(m.cell(o, t)),
                )
            })
            .collect();
        report(&m.nodes[o].name, peers)
    }

    fn one_pair_broken(o: usize, t: usize) -> PeerState {
        if (o, t) == (1, 3) || (o, t) == (3, 1) {
            PeerState::OverlayBroken
        } else {
            PeerState::Ok
        }
    }

    #[test]
    fn a_cell_is_the_worst_family_and_a_missing_peer_is_marked() {
        let mut m = Matrix::new((1..=3).map(node).collect());
        let mut v6 = peer("h2", 2, FamilyName::Ipv6, PeerState::Unreachable);
        v6.subnet = "10.244.2.0/24".into(); // same node, other family
        m.add_report(
            0,
            &report(
                "h1",
                vec![peer("h2", 2, FamilyName::Ipv4, PeerState::Ok), v6],
            ),
        );
        assert_eq!(m.cell(0, 0), Cell::SelfPair);
        assert_eq!(m.cell(0, 1), Cell::Unreachable);
        assert_eq!(m.cell(0, 2), Cell::NotInReport, "h1's report lacks h3");
        assert_eq!(m.cell(1, 0), Cell::NotAsked);
        assert_eq!(
            m.details[&(0, 1)].len(),
            1,
            "only the family that is not ok"
        );
        assert_eq!(m.symbol_rows()[0], "-X!");
    }

    #[test]
    fn one_broken_pair_is_listed_as_a_pair_both_ways() {
        let m = matrix(5, one_pair_broken);
        let s = summarize(&m);
        assert_eq!((s.pairs, s.failing_pairs), (20, 2));
        assert!(s.culprits.is_empty(), "{:?}", s.culprits);
        assert_eq!(s.lone_pairs.len(), 1);
        let p = &s.lone_pairs[0];
        assert_eq!(
            (p.observer.as_str(), p.target.as_str(), p.both_ways),
            ("h1", "h3", true)
        );
        assert_eq!(p.reasons.len(), 2);
        assert!(!s.ok());
        let text = render_text(&m, &s);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "5 nodes, 5 asked; 2 of 20 pairs failing");
        let header = lines
            .iter()
            .position(|l| l.trim_start().starts_with("h1 h2"))
            .unwrap();
        assert_eq!(lines[header], "         h1 h2 h3 h4 h5");
        assert_eq!(lines[header + 1], "h1        -  .  O  .  .");
        assert_eq!(lines[header + 3], "h3        O  .  -  .  .");
        assert!(text.contains("  h1 ↔ h3: overlay-broken, both ways\n      h1 (ipv4): 10.99.0.13 (underlay) answers"), "{text}");
        assert!(text.contains("legend:\n  . ok  "), "{text}");
    }

    #[test]
    fn a_node_nobody_reaches_is_named_and_its_pairs_are_not_listed_one_by_one() {
        let m = matrix(5, |_, t| {
            if t == 3 {
                PeerState::OverlayBroken
            } else {
                PeerState::Ok
            }
        });
        let s = summarize(&m);
        assert_eq!(s.culprits.len(), 1, "{:?}", s.culprits);
        assert_eq!(
            s.culprits[0].message,
            "h3: 4 of 4 nodes cannot reach it over the overlay (the underlay answers) — look at h3"
        );
        assert!(s.lone_pairs.is_empty(), "{:?}", s.lone_pairs);
        let t = s.by_node.iter().find(|t| t.node == "h3").unwrap();
        assert_eq!((t.as_target, t.observers, t.as_observer), (4, 4, 0));
        // An observer that reaches nobody.
        let m = matrix(4, |o, _| {
            if o == 2 {
                PeerState::Unreachable
            } else {
                PeerState::Ok
            }
        });
        let s = summarize(&m);
        assert_eq!(s.culprits.len(), 1);
        assert_eq!(
            s.culprits[0].message,
            "h2: it cannot reach 3 of 3 nodes at all (neither overlay nor underlay answers) — look at h2"
        );
    }

    #[test]
    fn a_node_not_asked_is_named_with_its_error_and_marked() {
        let mut m = matrix(3, |_, t| {
            if t == 2 {
                PeerState::AgentNotAnswering
            } else {
                PeerState::Ok
            }
        });
        m = {
            let mut fresh = Matrix::new(m.nodes.clone());
            for o in [0usize, 2] {
                let peers = (1..=3)
                    .filter(|&t| t != o + 1)
                    .map(|t| {
                        peer(
                            &format!("h{t}"),
                            t,
                            FamilyName::Ipv4,
                            if t == 2 {
                                PeerState::AgentNotAnswering
                            } else {
                                PeerState::Ok
                            },
                        )
                    })
                    .collect();
                fresh.add_report(o, &report(&format!("h{}", o + 1), peers));
            }
            fresh.set_not_asked(
                1,
                "no answer from http://10.99.0.12:8471/health/peers (connection refused)".into(),
            );
            fresh
        };
        let s = summarize(&m);
        assert_eq!(s.asked, 2);
        assert_eq!(
            s.culprits[0].message,
            "h2: 2 of 2 nodes find no weftd answering on it; netctl could not ask its weftd: no answer from http://10.99.0.12:8471/health/peers (connection refused) — look at h2"
        );
        let text = render_text(&m, &s);
        assert!(
            text.contains("\nh2        ~  -  ~\n")
                && text.contains("\n  h2    2 of 2                not asked\n"),
            "{text}"
        );
        assert!(
            text.contains("\nNot asked:\n  h2: no answer from"),
            "{text}"
        );
    }

    #[test]
    fn large_clusters_fold_all_ok_rows_and_columns() {
        let m = matrix(60, |o, t| {
            if (o, t) == (7, 42) {
                PeerState::MtuBelowPodMtu
            } else {
                PeerState::Ok
            }
        });
        let f = fold(&m, TEXT_LIMITS);
        assert_eq!(f.rows, vec![6]);
        assert_eq!(f.columns, vec![41]);
        assert_eq!((f.folded_rows, f.folded_columns), (59, 59));
        let s = summarize(&m);
        let text = render_text(&m, &s);
        assert!(text.contains("(59 rows and 59 columns that are all ok are not shown; the whole matrix is printed up to 40 nodes)"), "{text}");
        // Column labels are numbers once names are long; here they are short.
        assert!(text.contains("\nh7  "), "{text}");
        // Small clusters are never folded.
        let f = fold(&matrix(5, one_pair_broken), TEXT_LIMITS);
        assert_eq!(f.rows.len(), 5);
        // Too many problem columns: cut, and counted.
        let m = matrix(50, |o, t| {
            if o == 1 && t > 1 {
                PeerState::Unknown
            } else {
                PeerState::Ok
            }
        });
        let f = fold(&m, TEXT_LIMITS);
        assert_eq!((f.columns.len(), f.cut_columns), (40, 9));
    }

    #[test]
    fn a_large_cluster_shows_the_most_failing_rows_names_its_columns_and_counts_the_rest() {
        // 100 nodes: nobody reaches node-50, node-90 reaches none of node-1..10 either,
        // node-95 has just started (all unknown), and node-80's weftd could not be asked.
        let mut m = matrix(100, |o, t| match (o, t) {
            (95, _) => PeerState::Unknown,
            (_, 50) => PeerState::Unreachable,
            (90, t) if t <= 10 => PeerState::OverlayBroken,
            _ => PeerState::Ok,
        });
        for (i, x) in m.nodes.iter_mut().enumerate() {
            x.name = format!("node-{}", i + 1);
        }
        let mut fresh = Matrix::new(m.nodes.clone());
        for o in (0..100).filter(|&o| o != 79) {
            fresh.add_report(o, &crate::netctl::cluster::tests::row_report(&m, o));
        }
        fresh.set_not_asked(79, "no answer".into());
        let m = fresh;
        let f = fold(&m, TEXT_LIMITS);
        assert_eq!(f.rows.len(), 40);
        assert!(
            f.rows.contains(&89),
            "the row with the most problems: {:?}",
            f.rows
        );
        assert!(!f.rows.contains(&79), "not asked: nothing to show");
        assert!(
            !f.rows.contains(&94),
            "all unknown: after every row that fails"
        );
        assert_eq!((f.cut_rows, f.folded_rows, f.not_asked_rows), (58, 1, 1));
        assert_eq!(f.columns, (0..10).chain([49]).collect::<Vec<_>>());
        let text = render_text(&m, &summarize(&m));
        assert!(text.contains("\ncolumns: 50 node-50\n"), "{text}");
        assert!(
            text.contains("(1 rows and 1 columns that are all ok are not shown; nor 58 more rows and 88 more columns with problems, for room: -o json has every pair; nor the row of the node not asked (listed below); "),
            "{text}"
        );
        assert!(
            text.contains("\n  … and 58 more nodes with a failing pair (-o json has them all)\n"),
            "{text}"
        );
        assert!(
            text.contains("\nNot asked:\n  node-80: no answer\n"),
            "{text}"
        );
        // The page draws the whole matrix up to 200 nodes.
        let html = crate::netctl::health_html::render_html(&m, &summarize(&m), 0);
        assert_eq!(html.matches("<tr><th>node-").count(), 100);
    }

    #[test]
    fn json_has_the_matrix_the_problems_and_the_summary() {
        let m = matrix(3, |o, t| {
            if (o, t) == (1, 2) {
                PeerState::OverlayBroken
            } else {
                PeerState::Ok
            }
        });
        let s = summarize(&m);
        let v: serde_json::Value = serde_json::from_str(&render_json(&m, &s)).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["rows"], serde_json::json!(["-O.", ".-.", "..-"]));
        assert_eq!(v["legend"]["O"], "overlay-broken");
        assert_eq!(v["nodes"][1]["name"], "h2");
        assert_eq!(v["problems"][0]["observer"], "h1");
        assert_eq!(v["problems"][0]["target"], "h2");
        assert_eq!(v["problems"][0]["state"], "overlay-broken");
        assert_eq!(v["summary"]["failingPairs"], 1);
        assert_eq!(v["summary"]["lonePairs"][0]["bothWays"], false);
    }

    #[test]
    fn unknown_pairs_are_not_ok_but_not_failures() {
        let m = matrix(3, |_, _| PeerState::Unknown);
        let s = summarize(&m);
        assert_eq!((s.failing_pairs, s.unknown_pairs), (0, 6));
        assert!(!s.ok());
        assert!(s.culprits.is_empty());
        let m = matrix(3, |_, _| PeerState::Ok);
        let s = summarize(&m);
        assert!(s.ok());
        assert!(render_text(&m, &s).ends_with("\nok: every node reaches every other\n"));
    }

    /// How a stand-in weftd answers.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        /// Its report, after this long.
        After(Duration),
        /// Nothing: it reads the request and waits until netctl hangs up.
        Never,
    }

    /// Stand-in weftds on loopback, node `i` (0-based) on 127.0.0.`i + 2`, all on one port
    /// (as every weftd listens on one --healthz-port), serving each node a report of every
    /// other as ok. They count the requests in flight at once (from accepting a connection
    /// until answering, or until netctl hangs up) and note when each node was answered.
    struct FakeWeftds {
        port: u16,
        nodes: Vec<ClusterNode>,
        max_in_flight: Arc<AtomicUsize>,
        /// (node, time since the start) of every answer.
        answered: Arc<Mutex<Vec<(usize, Duration)>>>,
        /// (node, path asked) of every request.
        requests: Arc<Mutex<Vec<(usize, String)>>>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }

    impl Drop for FakeWeftds {
        fn drop(&mut self) {
            for t in &self.tasks {
                t.abort();
            }
        }
    }

    /// Listeners for `n` addresses on one port that was free on all of them.
    async fn bind_one_port(n: usize) -> (u16, Vec<tokio::net::TcpListener>) {
        for _ in 0..20 {
            let first = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
            let port = first.local_addr().unwrap().port();
            let mut all = vec![first];
            for i in 1..n {
                match tokio::net::TcpListener::bind((format!("127.0.0.{}", i + 2), port)).await {
                    Ok(l) => all.push(l),
                    Err(_) => break,
                }
            }
            if all.len() == n {
                return (port, all);
            }
        }
        panic!("no port free on 127.0.0.2 to 127.0.0.{}", n + 1);
    }

    /// Node `i`'s (0-based) report of a cluster of `n`: every other node, in the state
    /// `state(o, t)` (1-based) gives.
    fn report_of(i: usize, n: usize, state: impl Fn(usize, usize) -> PeerState) -> HealthReport {
        let peers = (1..=n)
            .filter(|&t| t != i + 1)
            .map(|t| peer(&format!("h{t}"), t, FamilyName::Ipv4, state(i + 1, t)))
            .collect();
        report(&format!("h{}", i + 1), peers)
    }

    /// What a stand-in weftd serves.
    #[derive(Clone, Debug)]
    struct Serves {
        answer: Answer,
        report: HealthReport,
        /// It knows `?problems` (an older weftd ignores the query).
        problems: bool,
    }

    impl FakeWeftds {
        async fn start(answers: &[Answer]) -> FakeWeftds {
            let n = answers.len();
            let serves = answers
                .iter()
                .enumerate()
                .map(|(i, a)| Serves {
                    answer: *a,
                    report: report_of(i, n, |_, _| PeerState::Ok),
                    problems: true,
                })
                .collect();
            Self::serving(serves).await
        }

        async fn serving(serves: Vec<Serves>) -> FakeWeftds {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let n = serves.len();
            let (port, listeners) = bind_one_port(n).await;
            let nodes: Vec<ClusterNode> = (0..n)
                .map(|i| {
                    let address: IpAddr = format!("127.0.0.{}", i + 2).parse().unwrap();
                    ClusterNode {
                        address: Some(address),
                        url: Some(crate::netctl::weftd_http::url(
                            SocketAddr::new(address, port),
                            PEERS_PATH,
                        )),
                        ..node(i + 1)
                    }
                })
                .collect();
            let in_flight = Arc::new(AtomicUsize::new(0));
            let max_in_flight = Arc::new(AtomicUsize::new(0));
            let answered = Arc::new(Mutex::new(Vec::new()));
            let requests = Arc::new(Mutex::new(Vec::new()));
            let start = tokio::time::Instant::now();
            let mut tasks = Vec::new();
            for (i, (listener, serves)) in listeners.into_iter().zip(serves).enumerate() {
                let whole = serde_json::to_string(&serves.report).unwrap();
                let problems = if serves.problems {
                    serde_json::to_string(&ProblemsReport::of(serves.report.clone())).unwrap()
                } else {
                    whole.clone()
                };
                let reply = |body: &str| format!("HTTP/1.0 200 OK\r\n\r\n{body}").into_bytes();
                let (whole, problems) = (reply(&whole), reply(&problems));
                let (in_flight, max_in_flight, answered, requests, answer) = (
                    in_flight.clone(),
                    max_in_flight.clone(),
                    answered.clone(),
                    requests.clone(),
                    serves.answer,
                );
                tasks.push(tokio::spawn(async move {
                    loop {
                        let Ok((mut s, _)) = listener.accept().await else {
                            return;
                        };
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        max_in_flight.fetch_max(now, Ordering::SeqCst);
                        let mut buf = [0u8; 1024];
                        let k = s.read(&mut buf).await.unwrap_or(0);
                        let path = String::from_utf8_lossy(&buf[..k])
                            .split_whitespace()
                            .nth(1)
                            .unwrap_or_default()
                            .to_string();
                        let reply = if path.ends_with("?problems") {
                            &problems
                        } else {
                            &whole
                        };
                        requests.lock().unwrap().push((i, path));
                        match answer {
                            Answer::After(delay) => {
                                tokio::time::sleep(delay).await;
                                answered.lock().unwrap().push((i, start.elapsed()));
                                // Out of flight before netctl can see the answer end.
                                in_flight.fetch_sub(1, Ordering::SeqCst);
                                let _ = s.write_all(reply).await;
                            }
                            Answer::Never => {
                                // Until netctl hangs up.
                                while matches!(s.read(&mut buf).await, Ok(k) if k > 0) {}
                                in_flight.fetch_sub(1, Ordering::SeqCst);
                            }
                        }
                    }
                }));
            }
            FakeWeftds {
                port,
                nodes,
                max_in_flight,
                answered,
                requests,
                tasks,
            }
        }

        fn options(&self, parallel: usize, timeout: Duration) -> ClusterOptions {
            ClusterOptions {
                port: self.port,
                timeout,
                parallel,
                output: HealthOutput::Table,
            }
        }
    }

    #[tokio::test]
    async fn parallel_bounds_the_requests_in_flight() {
        for parallel in [1, 3] {
            let weftds = FakeWeftds::start(&[Answer::After(Duration::from_millis(60)); 10]).await;
            let opts = weftds.options(parallel, Duration::from_secs(5));
            let m = gather(weftds.nodes.clone(), &opts).await;
            assert!(
                m.all_fine(),
                "every node asked, every pair ok: {:?}",
                m.symbol_rows()
            );
            assert_eq!(
                weftds.max_in_flight.load(Ordering::SeqCst),
                parallel,
                "requests in flight at once with --parallel {parallel}"
            );
            assert_eq!(weftds.answered.lock().unwrap().len(), 10);
        }
    }

    #[tokio::test]
    async fn a_silent_weftd_is_not_asked_after_the_timeout_and_holds_up_nobody_else() {
        let timeout = Duration::from_secs(1);
        // The silent node first: an ask that waited for it would start nothing else meanwhile.
        let mut answers = vec![Answer::Never];
        answers.extend([Answer::After(Duration::from_millis(150)); 8]);
        let weftds = FakeWeftds::start(&answers).await;
        let started = tokio::time::Instant::now();
        let m = gather(weftds.nodes.clone(), &weftds.options(3, timeout)).await;
        let took = started.elapsed();
        assert_eq!(
            m.nodes[0].error.as_deref(),
            Some(
                format!(
                    "no answer from http://127.0.0.2:{}/health/peers (no answer within 1s)",
                    weftds.port
                )
                .as_str()
            )
        );
        assert_eq!(m.symbol_rows()[0], "-~~~~~~~~", "its row is not asked");
        for o in 1..9 {
            assert!(m.row_fine(o), "h{} asked: {:?}", o + 1, m.symbol_rows()[o]);
        }
        // 8 answers of 150 ms, 2 at a time beside the silent one: 600 ms, within its 1 s.
        let answered = weftds.answered.lock().unwrap().clone();
        assert_eq!(answered.len(), 8);
        let last = answered.iter().map(|(_, at)| *at).max().unwrap();
        assert!(
            last < timeout,
            "the others were answered by {last:?}, held up past the silent one's {timeout:?}"
        );
        assert!(
            took < timeout + Duration::from_millis(500),
            "gather took {took:?}"
        );
        assert_eq!(weftds.max_in_flight.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn problems_answers_and_older_weftds_whole_reports_give_one_matrix() {
        use PeerState::*;
        let n = 6;
        let serve = |i: usize, state: &dyn Fn(usize, usize) -> PeerState, problems: bool| Serves {
            answer: Answer::After(Duration::ZERO),
            report: report_of(i, n, state),
            problems,
        };
        let mut serves: Vec<Serves> = (0..n).map(|i| serve(i, &|_, _| Ok, true)).collect();
        // h2 finds h4's overlay broken; h3, an older weftd, finds h5 unreachable.
        serves[1] = serve(1, &|_, t| if t == 4 { OverlayBroken } else { Ok }, true);
        serves[2] = serve(2, &|_, t| if t == 5 { Unreachable } else { Ok }, false);
        // h4's weftd has not seen h6's lease: its problems answer covers other peers.
        serves[3]
            .report
            .peers
            .retain(|p| p.node.as_deref() != Some("h6"));
        let weftds = FakeWeftds::serving(serves).await;
        let opts = weftds.options(4, Duration::from_secs(5));
        let m = gather_by(weftds.nodes.clone(), &opts, Ask::Problems).await;
        let rows = ["-.....", ".-.O..", "..-.X.", "...-.!", "....-.", ".....-"];
        assert_eq!(m.symbol_rows(), rows);
        let mut asked = weftds.requests.lock().unwrap().clone();
        asked.sort();
        let path = |i: usize, p: &str| (i, p.to_string());
        let mut want: Vec<(usize, String)> =
            (0..n).map(|i| path(i, "/health/peers?problems")).collect();
        // h4's whole report, to tell which peer it lacks.
        want.push(path(3, "/health/peers"));
        want.sort();
        assert_eq!(asked, want);
        assert_eq!(m.details[&(1, 3)][0].state, OverlayBroken);
        assert_eq!(
            m.entries[&FamilyName::Ipv4][&Ok],
            27,
            "29 entries (h4 lacks one)"
        );
        assert_eq!(m.entries[&FamilyName::Ipv4][&OverlayBroken], 1);
        assert_eq!(m.entries[&FamilyName::Ipv4][&Unreachable], 1);
        // The same cluster asked for whole reports: the same matrix and summary.
        let whole = gather_by(weftds.nodes.clone(), &opts, Ask::WholeReport).await;
        assert_eq!(whole.symbol_rows(), rows);
        assert_eq!(summarize(&whole), summarize(&m));
    }

    #[test]
    fn a_problems_answer_for_other_peers_is_not_taken_as_all_ok() {
        let mut m = Matrix::new((1..=3).map(node).collect());
        let lacking = report("h1", vec![peer("h2", 2, FamilyName::Ipv4, PeerState::Ok)]);
        m.add_problems(0, &ProblemsReport::of(lacking));
        assert_eq!(m.cell(0, 2), Cell::NotAsked);
        assert!(m.nodes[0].error.as_deref().unwrap().contains("other peers"));
        let whole = report(
            "h2",
            vec![
                peer("h1", 1, FamilyName::Ipv4, PeerState::Ok),
                peer("h3", 3, FamilyName::Ipv4, PeerState::Unknown),
            ],
        );
        m.add_problems(1, &ProblemsReport::of(whole));
        assert_eq!(m.symbol_rows()[1], ".-?");
    }

    #[test]
    fn names_sort_naturally() {
        let mut v = vec!["h10", "h2", "a", "h1"];
        v.sort_by_key(|s| natural_key(s));
        assert_eq!(v, ["a", "h1", "h2", "h10"]);
    }
}
