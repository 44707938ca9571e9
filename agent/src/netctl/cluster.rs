//! `netctl health --cluster`: every node's peer health report, asked of its weftd through
//! its public IP, folded into a node × node matrix (rows: the observing node, columns: the
//! observed one) and a summary that names the common factor. Building, folding, the summary
//! and the text and JSON renderings are pure; [`run`] only asks and feeds them.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;

use crate::cli::HealthOutput;
use crate::mesh::report::PEERS_PATH;
use crate::mesh::report::{FamilyName, HealthReport, PeerState};
use crate::netctl::weftd_http::{fetch_report, ReportError};
use crate::netctl::{read_lease_rows, render_table, CommandOutput, LeaseRow, LeaseStatus};
use crate::store::{LeaseStore, StoreError};

/// Up to this many nodes the text matrix is printed whole; above, rows that are all ok are
/// folded and only the columns with a problem are printed (at most this many).
pub const TEXT_FULL_LIMIT: usize = 40;
/// Up to this many nodes the HTML heat-map is drawn whole; above, all-ok rows and columns
/// are folded.
pub const HTML_FULL_LIMIT: usize = 200;
/// Ok cells keep their round-trip time (for the HTML's hover) up to this many nodes.
const RTT_LIMIT: usize = 500;

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

/// The node × node matrix.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub nodes: Vec<ClusterNode>,
    /// `cells[o * n + t]`: what node `o` says of node `t`.
    cells: Vec<Cell>,
    /// The families of every pair that is not ok.
    pub details: BTreeMap<(usize, usize), Vec<PairDetail>>,
    /// Overlay RTTs of ok pairs (ms; NaN unknown), kept up to [`RTT_LIMIT`] nodes.
    rtts: Vec<f32>,
    /// Each node's subnets, to match report entries to nodes.
    by_subnet: HashMap<String, usize>,
}

impl Matrix {
    /// An empty matrix of `nodes`: self on the diagonal, every row not asked yet.
    pub fn new(nodes: Vec<ClusterNode>) -> Matrix {
        let n = nodes.len();
        let mut cells = vec![Cell::NotAsked; n * n];
        for i in 0..n {
            cells[i * n + i] = Cell::SelfPair;
        }
        let by_subnet = nodes
            .iter()
            .enumerate()
            .flat_map(|(i, node)| node.subnets.iter().map(move |s| (s.clone(), i)))
            .collect();
        Matrix {
            by_subnet,
            nodes,
            cells,
            details: BTreeMap::new(),
            rtts: if n <= RTT_LIMIT {
                vec![f32::NAN; n * n]
            } else {
                Vec::new()
            },
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn cell(&self, o: usize, t: usize) -> Cell {
        self.cells[o * self.len() + t]
    }

    /// The overlay RTT of an ok pair, when kept.
    pub fn rtt(&self, o: usize, t: usize) -> Option<f32> {
        self.rtts
            .get(o * self.len() + t)
            .copied()
            .filter(|r| !r.is_nan())
    }

    /// Record node `o`'s report: its entries are matched to nodes by subnet (then by name),
    /// a pair's cell is the worst of its families, and a node its report lacks is
    /// [`Cell::NotInReport`].
    pub fn add_report(&mut self, o: usize, report: &HealthReport) {
        let n = self.len();
        for t in 0..n {
            if t != o {
                self.cells[o * n + t] = Cell::NotInReport;
            }
        }
        let mut seen = vec![false; n];
        let mut worst: Vec<Option<PeerState>> = vec![None; n];
        for p in &report.peers {
            // By subnet; by name for an entry whose subnet no lease has.
            let Some(t) = self.by_subnet.get(p.subnet.as_str()).copied().or_else(|| {
                let name = p.node.as_ref()?;
                self.nodes.iter().position(|x| &x.name == name)
            }) else {
                continue;
            };
            if t == o {
                continue;
            }
            seen[t] = true;
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
                self.details.entry((o, t)).or_default().push(PairDetail {
                    family: p.family,
                    state: p.state,
                    reason: p.reason.clone(),
                    overlay_rtt_ms: p.overlay_rtt_ms,
                    underlay_rtt_ms: p.underlay_rtt_ms,
                });
            }
        }
        for t in 0..n {
            if let (true, Some(w)) = (seen[t], worst[t]) {
                self.cells[o * n + t] = Cell::from_state(w);
            }
        }
    }

    /// Node `o`'s weftd could not be asked.
    pub fn set_not_asked(&mut self, o: usize, error: String) {
        self.nodes[o].error = Some(error);
    }

    /// Every cell of row `o` is ok (or self).
    pub fn row_fine(&self, o: usize) -> bool {
        (0..self.len()).all(|t| self.cell(o, t).is_fine())
    }

    /// Every cell of column `t` is ok (or self).
    pub fn column_fine(&self, t: usize) -> bool {
        (0..self.len()).all(|o| self.cell(o, t).is_fine())
    }

    /// The rows as strings of symbols (the JSON form).
    pub fn symbol_rows(&self) -> Vec<String> {
        (0..self.len())
            .map(|o| (0..self.len()).map(|t| self.cell(o, t).symbol()).collect())
            .collect()
    }

    pub fn all_fine(&self) -> bool {
        self.cells.iter().all(|c| c.is_fine())
    }
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
    /// Columns with a problem left out for room.
    pub cut_columns: usize,
}

/// Everything up to `full_limit` nodes; above, only rows and columns with a problem, and at
/// most `max_columns` columns.
pub fn fold(m: &Matrix, full_limit: usize, max_columns: usize) -> Folding {
    let all: Vec<usize> = (0..m.len()).collect();
    if m.len() <= full_limit {
        return Folding {
            rows: all.clone(),
            columns: all,
            folded_rows: 0,
            folded_columns: 0,
            cut_columns: 0,
        };
    }
    let rows: Vec<usize> = all.iter().copied().filter(|&o| !m.row_fine(o)).collect();
    let mut columns: Vec<usize> = all.iter().copied().filter(|&t| !m.column_fine(t)).collect();
    let problem_columns = columns.len();
    columns.truncate(max_columns);
    Folding {
        folded_rows: m.len() - rows.len(),
        folded_columns: m.len() - problem_columns,
        cut_columns: problem_columns - columns.len(),
        rows,
        columns,
    }
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
    let mut counts = PairCounts::default();
    for o in (0..n).filter(|&o| asked[o]) {
        for t in (0..n).filter(|&t| t != o) {
            counts.pairs += 1;
            let c = m.cell(o, t);
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
    let n = m.len();
    let mut pairs = Vec::new();
    for o in (0..n).filter(|&o| asked[o]) {
        for t in (0..n).filter(|&t| t != o) {
            let c = m.cell(o, t);
            if !c.is_failure() || culprits.explain(o, t) {
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
    let f = fold(m, TEXT_FULL_LIMIT, TEXT_FULL_LIMIT);
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

/// The rows and columns `f` keeps, one symbol a cell under right-aligned column labels.
fn text_matrix(m: &Matrix, f: &Folding) -> String {
    if f.rows.is_empty() {
        return "(every row is all ok)\n".into();
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
    out
}

/// The line saying what the folding left out, when it left out anything.
fn text_folded_note(f: &Folding) -> String {
    if f.folded_rows == 0 && f.folded_columns == 0 {
        return String::new();
    }
    let mut out = format!(
        "({} rows and {} columns that are all ok are not shown",
        f.folded_rows, f.folded_columns
    );
    if f.cut_columns > 0 {
        out.push_str(&format!(
            "; nor {} more columns with problems, for room: -o json has every pair",
            f.cut_columns
        ));
    }
    out.push_str(&format!(
        "; the whole matrix is printed up to {TEXT_FULL_LIMIT} nodes)\n"
    ));
    out
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
        "\nFailing pairs by node:\n{}",
        render_table(&["  NODE", "CANNOT-BE-REACHED-BY", "CANNOT-REACH"], &rows)
    )
}

fn text_culprits(s: &Summary) -> String {
    if s.culprits.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nLikely cause:\n");
    for c in &s.culprits {
        out.push_str(&format!("  {}\n", c.message));
    }
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
    for p in &s.lone_pairs {
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
    serde_json::to_string_pretty(&serde_json::json!({
        "ok": s.ok(),
        "legend": legend,
        "nodes": m.nodes,
        "rows": m.symbol_rows(),
        "problems": problems,
        "summary": s,
    }))
    .expect("serializable")
        + "\n"
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

/// Ask every node's weftd, `parallel` at a time, folding each report into the matrix as it
/// comes (reports are not kept).
pub async fn gather(nodes: Vec<ClusterNode>, opts: &ClusterOptions) -> Matrix {
    let mut m = Matrix::new(nodes);
    let targets: Vec<(usize, Option<IpAddr>)> =
        m.nodes.iter().map(|x| x.address).enumerate().collect();
    let (port, timeout) = (opts.port, opts.timeout);
    let mut answers = futures::stream::iter(targets)
        .map(|(i, addr)| async move {
            let r = match addr {
                Some(a) => fetch_report(SocketAddr::new(a, port), timeout)
                    .await
                    .map_err(|e| short_error(&e)),
                None => Err("its lease has no public IP to ask it on".to_string()),
            };
            (i, r)
        })
        .buffer_unordered(opts.parallel.max(1));
    while let Some((i, r)) = answers.next().await {
        match r {
            Ok(report) => m.add_report(i, &report),
            Err(e) => m.set_not_asked(i, e),
        }
    }
    m
}

fn short_error(e: &ReportError) -> String {
    e.to_string()
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
        let f = fold(&m, TEXT_FULL_LIMIT, TEXT_FULL_LIMIT);
        assert_eq!(f.rows, vec![6]);
        assert_eq!(f.columns, vec![41]);
        assert_eq!((f.folded_rows, f.folded_columns), (59, 59));
        let s = summarize(&m);
        let text = render_text(&m, &s);
        assert!(text.contains("(59 rows and 59 columns that are all ok are not shown; the whole matrix is printed up to 40 nodes)"), "{text}");
        // Column labels are numbers once names are long; here they are short.
        assert!(text.contains("\nh7  "), "{text}");
        // Small clusters are never folded.
        let f = fold(
            &matrix(5, one_pair_broken),
            TEXT_FULL_LIMIT,
            TEXT_FULL_LIMIT,
        );
        assert_eq!(f.rows.len(), 5);
        // Too many problem columns: cut, and counted.
        let m = matrix(50, |o, t| {
            if o == 1 && t > 1 {
                PeerState::Unknown
            } else {
                PeerState::Ok
            }
        });
        let f = fold(&m, TEXT_FULL_LIMIT, TEXT_FULL_LIMIT);
        assert_eq!((f.columns.len(), f.cut_columns), (40, 9));
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

    impl FakeWeftds {
        async fn start(answers: &[Answer]) -> FakeWeftds {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let n = answers.len();
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
            let start = tokio::time::Instant::now();
            let mut tasks = Vec::new();
            for (i, (listener, answer)) in listeners.into_iter().zip(answers).enumerate() {
                let peers = (1..=n)
                    .filter(|&t| t != i + 1)
                    .map(|t| peer(&format!("h{t}"), t, FamilyName::Ipv4, PeerState::Ok))
                    .collect();
                let body = serde_json::to_string(&report(&format!("h{}", i + 1), peers)).unwrap();
                let reply = format!("HTTP/1.0 200 OK\r\n\r\n{body}").into_bytes();
                let (in_flight, max_in_flight, answered, answer) = (
                    in_flight.clone(),
                    max_in_flight.clone(),
                    answered.clone(),
                    *answer,
                );
                tasks.push(tokio::spawn(async move {
                    loop {
                        let Ok((mut s, _)) = listener.accept().await else {
                            return;
                        };
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        max_in_flight.fetch_max(now, Ordering::SeqCst);
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf).await;
                        match answer {
                            Answer::After(delay) => {
                                tokio::time::sleep(delay).await;
                                answered.lock().unwrap().push((i, start.elapsed()));
                                // Out of flight before netctl can see the answer end.
                                in_flight.fetch_sub(1, Ordering::SeqCst);
                                let _ = s.write_all(&reply).await;
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

    #[test]
    fn names_sort_naturally() {
        let mut v = vec!["h10", "h2", "a", "h1"];
        v.sort_by_key(|s| natural_key(s));
        assert_eq!(v, ["a", "h1", "h2", "h10"]);
    }
}
