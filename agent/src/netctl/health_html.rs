//! `netctl health --cluster -o html`: the node × node matrix as one self-contained HTML page
//! (no script, no external fetch): a heat-map coloured by state with the state's letter in
//! each cell (the colours are Okabe–Ito's, told apart with colour-blindness too), the RTT
//! and the reason in each cell's title (on hover), the legend, and the problems below.

use crate::netctl::cluster::{
    fold, headline, Cell, FoldLimits, Folding, Matrix, Summary, HTML_FULL_LIMIT,
};
use crate::netctl::health::{rtt_text, shown_rtts};

/// What the page draws of a matrix above [`HTML_FULL_LIMIT`] nodes: at most this many rows
/// and columns with problems (the most first), so a 5,000-node cluster with problems
/// everywhere still gives a page of a few MB; the rest are counted, not drawn. The list of
/// problems below stops at [`MAX_ROWS`] entries of each kind too.
pub const LIMITS: FoldLimits = FoldLimits {
    full: HTML_FULL_LIMIT,
    rows: MAX_ROWS,
    columns: MAX_COLUMNS,
};
pub const MAX_ROWS: usize = 300;
pub const MAX_COLUMNS: usize = 100;

/// Background and text colour of a state's cells.
pub fn colours(c: Cell) -> (&'static str, &'static str) {
    match c {
        Cell::Ok => ("#d8eedf", "#d8eedf"),
        Cell::Unknown => ("#bbbbbb", "#000000"),
        Cell::MtuBelowPodMtu => ("#f0e442", "#000000"),
        Cell::OverlayBroken => ("#e69f00", "#000000"),
        Cell::AgentNotAnswering => ("#cc79a7", "#000000"),
        Cell::Unreachable => ("#d55e00", "#ffffff"),
        Cell::NotInReport => ("#56b4e9", "#000000"),
        Cell::NotAsked => ("#0072b2", "#ffffff"),
        Cell::SelfPair => ("#ffffff", "#999999"),
    }
}

fn class(c: Cell) -> String {
    format!("s-{}", c.name())
}

/// `&`, `<`, `>`, `"` escaped, for text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The hover text of a cell.
fn title(m: &Matrix, o: usize, t: usize) -> String {
    let (a, b) = (&m.nodes[o].name, &m.nodes[t].name);
    let c = m.cell(o, t);
    match c {
        Cell::SelfPair => a.clone(),
        Cell::NotAsked => format!(
            "{a} → {b}: {a}'s weftd could not be asked: {}",
            m.nodes[o].error.as_deref().unwrap_or_default()
        ),
        Cell::NotInReport => format!("{a} → {b}: {a}'s report has no entry for {b}"),
        Cell::Ok => match m.rtt(o, t) {
            Some(ms) => format!("{a} → {b}: ok, {}", rtt_text(Some(f64::from(ms)))),
            None => format!("{a} → {b}: ok"),
        },
        _ => {
            let mut s = format!("{a} → {b}: {}", c.name());
            for d in m.details.get(&(o, t)).into_iter().flatten() {
                let (over, under) = shown_rtts(d.state, d.overlay_rtt_ms, d.underlay_rtt_ms);
                s.push_str(&format!(
                    "\n{} {}: overlay {}, underlay {}\n{}",
                    d.family,
                    d.state,
                    rtt_text(over),
                    rtt_text(under),
                    d.reason
                ));
            }
            s
        }
    }
}

/// The page. `now_unix` is shown as the time it was made.
pub fn render_html(m: &Matrix, s: &Summary, now_unix: u64) -> String {
    let f = fold(m, LIMITS);
    let mut h = String::with_capacity(64 * (f.rows.len() * f.columns.len() + 100));
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>weft peer health</title>\n<style>\n");
    h.push_str(&style(cell_size(f.columns.len())));
    h.push_str("</style></head><body>\n");
    h.push_str(&format!(
        "<h1>weft peer health</h1>\n<p id=\"headline\">{}. Made by netctl health --cluster at {} (Unix {now_unix}).</p>\n",
        escape(&headline(s)),
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(now_unix))
    ));
    h.push_str(&legend());
    h.push_str("<p>Rows: the observing node; columns: the node it probes. Hover over a cell for the round-trip times and the reason.</p>\n");
    h.push_str(&folded_note(&f));
    h.push_str(&matrix_table(m, &f));
    h.push_str(&problems(s));
    h.push_str("</body></html>\n");
    h
}

/// Cell size by the columns drawn: letters stay legible to about 100 columns.
fn cell_size(columns: usize) -> usize {
    match columns {
        0..=30 => 22,
        31..=100 => 12,
        _ => 7,
    }
}

/// The style sheet for cells of `cell` pixels, and a class per state.
fn style(cell: usize) -> String {
    let font = (cell * 2 / 3).max(6);
    let mut css = format!(
        "body{{font-family:sans-serif;margin:16px;color:#222}}\
         table.m{{border-collapse:collapse;table-layout:fixed}}\
         table.m td{{width:{cell}px;height:{cell}px;min-width:{cell}px;padding:0;border:1px solid #fff;\
         text-align:center;font:{font}px/{cell}px monospace;overflow:hidden}}\
         table.m th{{font:{font}px monospace;white-space:nowrap;padding:0 4px 0 0;text-align:right}}\
         table.m th.c{{writing-mode:vertical-rl;transform:rotate(180deg);text-align:left;padding:4px 0 2px 0;height:auto}}\
         .legend .li{{white-space:nowrap;margin-right:18px;line-height:28px}}\
         .legend .sw{{display:inline-block;width:18px;height:18px;text-align:center;font:12px/18px monospace;margin-right:5px;border:1px solid #888;vertical-align:middle}}\
         ul.p li{{margin-bottom:6px}} .why{{color:#444;font-size:90%}}\n"
    );
    for c in Cell::LEGEND {
        let (bg, fg) = colours(c);
        css.push_str(&format!(".{}{{background:{bg};color:{fg}}}\n", class(c)));
    }
    css
}

/// Each state's swatch and meaning.
fn legend() -> String {
    let mut h = String::from("<p class=\"legend\">");
    for c in Cell::LEGEND {
        h.push_str(&format!(
            "<span class=\"li\"><span class=\"sw {}\">{}</span>{}</span> ",
            class(c),
            if c == Cell::Ok { ' ' } else { c.symbol() },
            escape(c.meaning())
        ));
    }
    h.push_str("</p>\n");
    h
}

/// What the page leaves out, when it leaves out anything.
fn folded_note(f: &Folding) -> String {
    if f.folded_rows == 0
        && f.folded_columns == 0
        && f.cut_rows == 0
        && f.cut_columns == 0
        && f.not_asked_rows == 0
    {
        return String::new();
    }
    let cut = match (f.cut_rows, f.cut_columns) {
        (0, 0) => String::new(),
        (r, 0) => format!("; {r} more rows"),
        (0, c) => format!("; {c} more columns"),
        (r, c) => format!("; {r} more rows and {c} more columns"),
    };
    let cut = if cut.is_empty() {
        cut
    } else {
        format!("{cut} with problems are left out to keep the page small (netctl health --cluster -o json has every pair)")
    };
    let not_asked = if f.not_asked_rows > 0 {
        format!(
            "; the rows of the {} nodes not asked are left out (they are listed under Problems)",
            f.not_asked_rows
        )
    } else {
        String::new()
    };
    format!(
        "<p id=\"folded\"><b>Folded:</b> {} rows and {} columns whose cells are all ok are not drawn (the whole matrix is drawn up to {HTML_FULL_LIMIT} nodes){cut}{not_asked}.</p>\n",
        f.folded_rows,
        f.folded_columns,
    )
}

/// The heat-map: a header of column names, then a row of cells per observer.
fn matrix_table(m: &Matrix, l: &Folding) -> String {
    if l.rows.is_empty() {
        return "<p>Every pair is ok.</p>\n".into();
    }
    let mut h = String::from("<table class=\"m\" id=\"matrix\">\n<tr><th></th>");
    for &t in &l.columns {
        h.push_str(&format!(
            "<th class=\"c\">{}</th>",
            escape(&m.nodes[t].name)
        ));
    }
    h.push_str("</tr>\n");
    for &o in &l.rows {
        h.push_str(&format!("<tr><th>{}</th>", escape(&m.nodes[o].name)));
        for &t in &l.columns {
            h.push_str(&matrix_cell(m, o, t));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
    h
}

/// One cell: its state's class and letter, the pair, and the hover text.
fn matrix_cell(m: &Matrix, o: usize, t: usize) -> String {
    let c = m.cell(o, t);
    let letter = if c == Cell::Ok {
        String::new()
    } else {
        c.symbol().to_string()
    };
    format!(
        "<td class=\"{}\" data-o=\"{}\" data-t=\"{}\" title=\"{}\">{letter}</td>",
        class(c),
        escape(&m.nodes[o].name),
        escape(&m.nodes[t].name),
        escape(&title(m, o, t))
    )
}

/// The named nodes, then the pairs, with their reasons; or that all is ok.
fn problems(s: &Summary) -> String {
    if s.culprits.is_empty() && s.lone_pairs.is_empty() && s.asked >= s.nodes {
        return if s.ok() {
            "<p id=\"ok\">ok: every node reaches every other.</p>\n".into()
        } else {
            String::new()
        };
    }
    let mut h = String::from("<h2>Problems</h2>\n<ul class=\"p\" id=\"problems\">\n");
    for c in s.culprits.iter().take(MAX_ROWS) {
        h.push_str(&format!("<li><b>{}</b></li>\n", escape(&c.message)));
    }
    h.push_str(&more_item(s.culprits.len(), "nodes named"));
    for p in s.lone_pairs.iter().take(MAX_ROWS) {
        let arrow = if p.both_ways { "↔" } else { "→" };
        h.push_str(&format!(
            "<li>{} {arrow} {}: {}{}",
            escape(&p.observer),
            escape(&p.target),
            p.state.name(),
            if p.both_ways { ", both ways" } else { "" }
        ));
        for r in &p.reasons {
            h.push_str(&format!("<br><span class=\"why\">{}</span>", escape(r)));
        }
        h.push_str("</li>\n");
    }
    h.push_str(&more_item(s.lone_pairs.len(), "failing pairs"));
    h.push_str("</ul>\n");
    h
}

/// The item after a list cut at [`MAX_ROWS`] entries.
fn more_item(total: usize, what: &str) -> String {
    if total <= MAX_ROWS {
        return String::new();
    }
    format!(
        "<li>… and {} more {what} (netctl health --cluster -o json has them all)</li>\n",
        total - MAX_ROWS
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::report::PeerState;
    use crate::netctl::cluster::summarize;
    use crate::netctl::cluster::tests::matrix;

    fn cells_of(html: &str) -> Vec<(String, String, String)> {
        html.split("<td class=\"")
            .skip(1)
            .map(|c| {
                let class = c.split('"').next().unwrap().to_string();
                let attr = |k: &str| {
                    c.split(&format!("{k}=\""))
                        .nth(1)
                        .unwrap()
                        .split('"')
                        .next()
                        .unwrap()
                        .to_string()
                };
                (class, attr("data-o"), attr("data-t"))
            })
            .collect()
    }

    #[test]
    fn every_cell_carries_its_state_and_the_broken_pair_its_reason() {
        let m = matrix(5, |o, t| {
            if (o, t) == (1, 3) {
                PeerState::OverlayBroken
            } else {
                PeerState::Ok
            }
        });
        let s = summarize(&m);
        let html = render_html(&m, &s, 1_800_000_000);
        assert!(!html.contains("<script"), "no script");
        assert!(
            !html.contains("http://") || !html.contains("src="),
            "nothing fetched"
        );
        let cells = cells_of(&html);
        assert_eq!(cells.len(), 25);
        for (class, o, t) in &cells {
            let want = match (o.as_str(), t.as_str()) {
                ("h1", "h3") => "s-overlay-broken",
                (a, b) if a == b => "s-self",
                _ => "s-ok",
            };
            assert_eq!(class, want, "{o} → {t}");
        }
        assert!(html.contains("title=\"h1 → h3: overlay-broken\nipv4 overlay-broken: overlay -, underlay 0.15ms\n10.99.0.13 (underlay) answers"), "{html}");
        assert!(
            html.contains("title=\"h1 → h2: ok, 0.21ms\""),
            "ok cells show the RTT"
        );
        assert!(
            html.contains("<li>h1 → h3: overlay-broken<br>"),
            "the problem is listed"
        );
        assert!(!html.contains("id=\"folded\""));
    }

    #[test]
    fn large_matrices_are_folded_and_say_so() {
        let m = matrix(260, |o, t| {
            if t == 9 && o != 9 {
                PeerState::Unreachable
            } else {
                PeerState::Ok
            }
        });
        let s = summarize(&m);
        let html = render_html(&m, &s, 0);
        // Every row but h9's own has the problem; one column does.
        assert_eq!(cells_of(&html).len(), 259);
        assert!(
            html.contains("1 rows and 259 columns whose cells are all ok are not drawn"),
            "folded note"
        );
        assert!(html.len() < 400_000, "{} bytes", html.len());
        // Problems everywhere: at most 300 rows and 100 columns are drawn, and counted.
        let m = matrix(400, |_, _| PeerState::Unknown);
        let html = render_html(&m, &summarize(&m), 0);
        assert_eq!(cells_of(&html).len(), 300 * 100);
        assert!(
            html.contains("; 100 more rows and 300 more columns with problems are left out"),
            "cut note"
        );
        assert!(html.len() < 6_000_000, "{} bytes", html.len());
        // 200 nodes are drawn whole, and stay a few MB.
        let m = matrix(200, |_, _| PeerState::Ok);
        let html = render_html(&m, &summarize(&m), 0);
        assert_eq!(cells_of(&html).len(), 40_000);
        assert!(html.len() < 8_000_000, "{} bytes", html.len());
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
