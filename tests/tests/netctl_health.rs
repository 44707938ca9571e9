//! `netctl health` on the lab: five vxlan hosts probing each other every second, one pair
//! broken the way a host firewall breaks it (h3 drops UDP 8472 from h1's address), and what
//! the operator sees: the local table on h1, the cluster matrix and its summary (exit 1),
//! and the HTML heat-map rendered in headless Chromium, checked on the rendered page (the
//! computed colour and place of each cell, and the screenshot's pixels there). And the
//! cluster matrix of a dual-stack lab, with a pair broken over IPv6 only. Every wait is
//! bounded.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use weft_agent::mesh::report::{FamilyName, HealthReport, PeerSetDigest, PeerState, PeersAnswer};
use weft_tests::lab::{Lab, LabOptions};

const READY: Duration = Duration::from_secs(60);
/// Probes every second; a state needs a round or two, so this is generous.
const SEEN_WITHIN: Duration = Duration::from_secs(30);
const CHROMIUM_BOUND: Duration = Duration::from_secs(60);

/// Drop VXLAN (UDP 8472) over `family` from `from`'s address of that family at host `at`'s
/// input hook (IPv6 VXLAN, weft-v6.1, uses the same port); [`undrop_vxlan`] removes it.
fn drop_vxlan(lab: &Lab, at: usize, from: usize, family: FamilyName) {
    let ns = lab.host_ns(at).to_string();
    let (match_family, src) = match family {
        FamilyName::Ipv4 => ("ip", lab.host_ip(from).to_string()),
        FamilyName::Ipv6 => ("ip6", lab.host_ip6(from).to_string()),
    };
    for rule in [
        vec!["add", "table", "inet", "healthtest"],
        vec![
            "add",
            "chain",
            "inet",
            "healthtest",
            "in",
            "{ type filter hook input priority 0; }",
        ],
        vec![
            "add",
            "rule",
            "inet",
            "healthtest",
            "in",
            match_family,
            "saddr",
            &src,
            "udp",
            "dport",
            "8472",
            "drop",
        ],
    ] {
        let st = Command::new("ip")
            .args(["netns", "exec", &ns, "nft"])
            .args(&rule)
            .status()
            .unwrap();
        assert!(st.success(), "nft {rule:?} in {ns}");
    }
}

/// Remove what [`drop_vxlan`] added at host `at`.
fn undrop_vxlan(lab: &Lab, at: usize) {
    let (code, _, err) = lab.host_exec(at, "nft", &["delete", "table", "inet", "healthtest"]);
    assert_eq!(code, 0, "nft delete table inet healthtest on h{at}: {err}");
}

/// `netctl health --cluster -o json` every 200 ms until `check` holds on its exit code and
/// report: both, then; panics with `what` and the last output after [`SEEN_WITHIN`].
fn cluster_until(
    lab: &Lab,
    what: &str,
    mut check: impl FnMut(i32, &serde_json::Value) -> bool,
) -> (i32, serde_json::Value) {
    let start = Instant::now();
    loop {
        let (code, out, err) = lab.netctl(&["health", "--cluster", "-o", "json"]);
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) {
            if check(code, &v) {
                return (code, v);
            }
        }
        assert!(
            start.elapsed() < SEEN_WITHIN,
            "{what}: not within {SEEN_WITHIN:?}; last exit {code}: {out}{err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The matrix rows of a `--cluster -o json` report.
fn rows(report: &serde_json::Value) -> Vec<String> {
    report["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows: {report}"))
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

/// Host `h`'s own view, as `netctl health -o json` there prints it: its exit code and each
/// entry as (peer, family, state), sorted.
fn local_entries(lab: &Lab, h: usize) -> (i32, Vec<(String, FamilyName, PeerState)>) {
    let netctl = weft_tests::procs::bin("netctl").display().to_string();
    let (code, out, err) = lab.host_exec(h, &netctl, &["health", "-o", "json"]);
    let report: HealthReport = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("netctl health -o json on h{h} ({e}): {out}{err}"));
    let mut entries: Vec<_> = report
        .peers
        .iter()
        .map(|p| (p.name(), p.family, p.state))
        .collect();
    entries.sort();
    (code, entries)
}

/// Run chromium with `args` in a process group of its own, bounded; the group (chromium and
/// the helpers it forks, nothing else) is killed afterwards. Returns stdout.
fn chromium(args: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--allow-file-access-from-files",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("chromium (Debian's chromium; tests/install-deps.sh installs it)");
    let group = Pid::from_raw(child.id() as i32);
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > CHROMIUM_BOUND {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = killpg(group, Signal::SIGKILL);
    let _ = child.wait();
    let status = status
        .unwrap_or_else(|| panic!("chromium {args:?} did not finish within {CHROMIUM_BOUND:?}"));
    assert!(status.success(), "chromium {args:?}: {status}");
    std::fs::read_to_string(out.path()).unwrap()
}

/// One matrix cell as the browser laid it out and coloured it.
#[derive(Debug)]
struct Drawn {
    observer: String,
    target: String,
    background: String,
    left: u32,
    top: u32,
    width: u32,
}

/// Load `page` in an iframe of a wrapper page, and write each cell's computed background and
/// box into the wrapper's DOM; `--dump-dom` gives it back. The iframe is as wide as the
/// screenshot's window, so the boxes are where the screenshot draws the cells.
fn drawn_cells(page: &Path, dir: &Path, size: (u32, u32)) -> Vec<Drawn> {
    let wrapper = dir.join("wrapper.html");
    std::fs::write(
        &wrapper,
        format!(
            r#"<!DOCTYPE html><html><body style="margin:0">
<iframe id="f" src="file://{}" style="border:0;display:block;width:{}px;height:{}px" onload="measure()"></iframe>
<pre id="cells"></pre>
<script>
function measure() {{
  var d = document.getElementById('f').contentDocument, rows = [];
  d.querySelectorAll('#matrix td').forEach(function (td) {{
    var r = td.getBoundingClientRect();
    rows.push(['CELL', td.dataset.o, td.dataset.t, getComputedStyle(td).backgroundColor.replace(/ /g, ''),
               Math.round(r.left), Math.round(r.top), Math.round(r.width)].join(' '));
  }});
  document.getElementById('cells').textContent = rows.join('\n');
}}
</script></body></html>"#,
            page.display(),
            size.0,
            size.1
        ),
    )
    .unwrap();
    let dom = chromium(&[
        "--dump-dom".into(),
        "--virtual-time-budget=5000".into(),
        format!("file://{}", wrapper.display()),
    ]);
    dom.lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("CELL ")
                .or_else(|| l.split("CELL ").nth(1))
        })
        .filter(|l| !l.contains('\''))
        .map(|l| {
            let f: Vec<&str> = l.split("</pre>").next().unwrap().split(' ').collect();
            assert_eq!(f.len(), 6, "a cell line of the wrapper: {l}");
            Drawn {
                observer: f[0].into(),
                target: f[1].into(),
                background: f[2].into(),
                left: f[3].parse().unwrap_or_else(|e| panic!("{e}: {l}")),
                top: f[4].parse().unwrap_or_else(|e| panic!("{e}: {l}")),
                width: f[5].parse().unwrap_or_else(|e| panic!("{e}: {l}")),
            }
        })
        .collect()
}

fn pixel(png_path: &Path, x: u32, y: u32) -> (u8, u8, u8) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(
        info.bit_depth == png::BitDepth::Eight && channels >= 3,
        "{info:?}"
    );
    let at = (y as usize * info.width as usize + x as usize) * channels;
    (buf[at], buf[at + 1], buf[at + 2])
}

#[test]
fn one_broken_pair_shows_in_the_local_table_the_cluster_matrix_and_the_html() {
    let lab = Lab::up(
        LabOptions {
            hosts: 5,
            pods_per_host: 0,
            health_probe_interval: Some("1s".into()),
            ..LabOptions::default()
        },
        READY,
    )
    .unwrap_or_else(|e| panic!("the lab did not come up: {e}"));
    // All ok first (bounded): every cell of the matrix '.' or '-'.
    let (_, report) = cluster_until(&lab, "the lab's mesh is all ok", |code, _| code == 0);
    assert!(report["ok"].as_bool().unwrap());

    drop_vxlan(&lab, 3, 1, FamilyName::Ipv4);
    // Bounded: until the reports show the pair broken both ways.
    let (code, report) = cluster_until(&lab, "h1 ↔ h3 overlay-broken", |_, v| {
        rows(v) == ["-.O..", ".-...", "O.-..", "...-.", "....-"]
    });
    assert_eq!(code, 1, "a failing pair is exit 1: {report}");
    assert_eq!(report["ok"], false);
    assert_eq!(report["summary"]["lonePairs"][0]["observer"], "h1");
    assert_eq!(report["summary"]["lonePairs"][0]["target"], "h3");
    assert_eq!(report["summary"]["lonePairs"][0]["bothWays"], true);
    assert!(
        report["summary"]["culprits"].as_array().unwrap().is_empty(),
        "{report}"
    );

    // The text an operator reads.
    let (code, text, _) = lab.netctl(&["health", "--cluster"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.starts_with("5 nodes, 5 asked; 2 of 20 pairs failing\n"),
        "{text}"
    );
    assert!(text.contains("\nh1        -  .  O  .  .\n"), "{text}");
    assert!(text.contains("\nh3        O  .  -  .  .\n"), "{text}");
    assert!(
        text.contains("\n  h1 ↔ h3: overlay-broken, both ways\n"),
        "{text}"
    );
    assert!(
        text.contains("is UDP 8472 (VXLAN) blocked between the two nodes"),
        "{text}"
    );

    // The local view on h1: h3's row says overlay-broken, the others ok; the reason below.
    let netctl = weft_tests::procs::bin("netctl").display().to_string();
    let (code, local, err) = lab.host_exec(1, &netctl, &["health"]);
    assert_eq!(code, 1, "{local}{err}");
    let state_of = |node: &str| {
        local
            .lines()
            .find(|l| l.starts_with(&format!("{node} ")))
            .and_then(|l| l.split_whitespace().nth(3))
            .unwrap_or_else(|| panic!("no row for {node}: {local}"))
            .to_string()
    };
    assert_eq!(state_of("h3"), "overlay-broken", "{local}");
    for n in ["h2", "h4", "h5"] {
        assert_eq!(state_of(n), "ok", "{local}");
    }
    assert!(local.contains("\nh3: overlay-broken, for "), "{local}");
    assert_eq!(err, "1 of 4 peer entries not ok\n");

    // What `--cluster` asks on a large cluster, of a real weftd: h1's problems only, with
    // every entry counted and the digest of the peers it probes.
    let ask = |path: &str| {
        let url = format!("http://127.0.0.1:8471{path}");
        let (code, body, err) = lab.host_exec(1, "curl", &["-sf", "--max-time", "5", &url]);
        assert_eq!(code, 0, "curl {url}: {err}");
        body
    };
    let whole: HealthReport = serde_json::from_str(&ask("/health/peers")).unwrap();
    match PeersAnswer::from_json(&ask("/health/peers?problems")).unwrap() {
        PeersAnswer::Problems(p) => {
            let listed: Vec<(Option<&str>, PeerState)> = p
                .report
                .peers
                .iter()
                .map(|e| (e.node.as_deref(), e.state))
                .collect();
            assert_eq!(listed, [(Some("h3"), PeerState::OverlayBroken)]);
            let v4 = &p.counts[&FamilyName::Ipv4];
            assert_eq!((v4[&PeerState::Ok], v4[&PeerState::OverlayBroken]), (3, 1));
            assert_eq!(
                p.peers_digest,
                PeerSetDigest::of(whole.peers.iter().map(|e| e.subnet.as_str()))
            );
        }
        other => panic!("not the problems answer: {other:?}"),
    }

    // The HTML, rendered for real.
    let dir = tempfile::tempdir().unwrap();
    let page = lab.dir().join("health.html");
    let (code, out, err) = lab.netctl(&[
        "health",
        "--cluster",
        "-o",
        "html",
        "--file",
        page.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "--file writes the page, not stdout");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("<script") && !html.contains(" src="),
        "self-contained, no script"
    );
    let size = (1000, 1400);
    let cells = drawn_cells(&page, dir.path(), size);
    assert_eq!(cells.len(), 25, "{cells:?}");
    let shot = dir.path().join("shot.png");
    chromium(&[
        format!("--screenshot={}", shot.display()),
        format!("--window-size={},{}", size.0, size.1),
        format!("file://{}", page.display()),
    ]);
    for c in &cells {
        let broken = matches!(
            (c.observer.as_str(), c.target.as_str()),
            ("h1", "h3") | ("h3", "h1")
        );
        let want = match () {
            _ if c.observer == c.target => (255, 255, 255),
            _ if broken => (0xe6, 0x9f, 0x00),
            _ => (0xd8, 0xee, 0xdf),
        };
        assert_eq!(
            c.background,
            format!("rgb({},{},{})", want.0, want.1, want.2),
            "{} → {}",
            c.observer,
            c.target
        );
        assert!(c.width >= 10, "cells are drawn: {c:?}");
        // Inside the cell, clear of its border and of the letter in its middle.
        let got = pixel(&shot, c.left + 3, c.top + 3);
        assert_eq!(
            got, want,
            "screenshot at {} → {} ({c:?})",
            c.observer, c.target
        );
    }
    // The broken cells sit where the matrix puts them: h1's row above h3's, h3's column
    // right of h1's.
    let at = |o: &str, t: &str| {
        cells
            .iter()
            .find(|c| c.observer == o && c.target == t)
            .unwrap()
    };
    assert!(at("h1", "h3").top < at("h3", "h1").top);
    assert!(at("h1", "h3").left > at("h3", "h1").left);
}

/// What host `h` of a 3-host dual-stack lab lists when all is as `state_of` says: both
/// other hosts in both families, sorted as [`local_entries`] sorts them.
fn expected_entries(
    h: usize,
    state_of: impl Fn(&str, FamilyName) -> PeerState,
) -> Vec<(String, FamilyName, PeerState)> {
    let mut want: Vec<_> = (1..=3)
        .filter(|&o| o != h)
        .flat_map(|o| [FamilyName::Ipv4, FamilyName::Ipv6].map(|f| (format!("h{o}"), f)))
        .map(|(peer, f)| {
            let state = state_of(&peer, f);
            (peer, f, state)
        })
        .collect();
    want.sort();
    want
}

/// A dual-stack vxlan lab (IPv4 and IPv6): every pair ok in both families, then h1 ↔ h2
/// broken over IPv6 only (h2 drops IPv6 VXLAN from h1). The pair's cell is the worst of its
/// families, so it shows broken (exit 1) while its IPv4 half stays ok; and it clears once
/// the rule is gone.
#[test]
fn a_pair_broken_over_ipv6_only_shows_in_the_dual_stack_cluster_matrix_and_clears() {
    let lab = Lab::up(
        LabOptions {
            hosts: 3,
            pods_per_host: 0,
            ipv6_network: Some("fc00::/48".into()),
            health_probe_interval: Some("1s".into()),
            ..LabOptions::default()
        },
        READY,
    )
    .unwrap_or_else(|e| panic!("the dual-stack lab did not come up: {e}"));
    let all_ok = |_: &str, _: FamilyName| PeerState::Ok;
    // All ok (bounded), in both families.
    let (code, report) = cluster_until(&lab, "the dual-stack mesh is all ok", |code, _| code == 0);
    assert_eq!(code, 0);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(rows(&report), ["-..", ".-.", "..-"], "{report}");
    // No family of any pair is not ok.
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    let summary = &report["summary"];
    for (field, want) in [
        ("nodes", 3),
        ("asked", 3),
        ("pairs", 6),
        ("failingPairs", 0),
        ("unknownPairs", 0),
    ] {
        assert_eq!(summary[field], want, "summary.{field}: {report}");
    }
    for field in ["byNode", "culprits", "lonePairs"] {
        assert_eq!(
            summary[field],
            serde_json::json!([]),
            "summary.{field}: {report}"
        );
    }
    // Each node is asked through its IPv4 address and known by both its subnets.
    let nodes = report["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{report}");
    for (i, node) in nodes.iter().enumerate() {
        let h = i + 1;
        assert_eq!(node["name"], format!("h{h}"), "{report}");
        assert_eq!(node["address"], lab.host_ip(h).to_string(), "{report}");
        let subnets = node["subnets"].as_array().expect("subnets");
        assert_eq!(subnets.len(), 2, "h{h}: {report}");
        // subnet.env has the host's first address in each: the subnets are their networks.
        let v4 = lab.subnet(h).expect("IPv4 subnet");
        let v6 = lab.subnet6(h).expect("IPv6 subnet");
        assert_eq!(subnets[0], format!("{}/{}", v4.network(), v4.prefix()));
        assert_eq!(subnets[1], format!("{}/{}", v6.network(), v6.prefix()));
    }
    // Each cell is ok for both families: each host's own report has both others in both.
    for h in 1..=3 {
        assert_eq!(
            local_entries(&lab, h),
            (0, expected_entries(h, all_ok)),
            "h{h}"
        );
    }
    let (code, text, err) = lab.netctl(&["health", "--cluster"]);
    assert_eq!(code, 0, "{text}{err}");
    assert!(
        text.starts_with("3 nodes, 3 asked; 0 of 6 pairs failing\n"),
        "{text}"
    );
    for line in [
        "h1        -  .  .",
        "h2        .  -  .",
        "h3        .  .  -",
    ] {
        assert!(text.contains(&format!("\n{line}\n")), "{text}");
    }
    assert!(
        text.ends_with("\nok: every node reaches every other\n"),
        "{text}"
    );

    // The IPv6 VXLAN device's port, which the rule drops.
    let (code, link, err) = lab.host_exec(2, "ip", &["-d", "link", "show", "weft-v6.1"]);
    assert_eq!(code, 0, "{err}");
    assert!(link.contains(" dstport 8472 "), "{link}");
    drop_vxlan(&lab, 2, 1, FamilyName::Ipv6);
    let (code, report) = cluster_until(&lab, "h1 ↔ h2 overlay-broken", |_, v| {
        rows(v) == ["-O.", "O-.", "..-"]
    });
    assert_eq!(code, 1, "a failing pair is exit 1: {report}");
    assert_eq!(report["ok"], false, "{report}");
    // Only the IPv6 half of the pair, both ways.
    let problems: Vec<(&str, &str, &str, &str)> = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| {
            let field = |k: &str| p[k].as_str().unwrap_or_else(|| panic!("{k}: {p}"));
            (
                field("observer"),
                field("target"),
                field("family"),
                field("state"),
            )
        })
        .collect();
    assert_eq!(
        problems,
        [
            ("h1", "h2", "ipv6", "overlay-broken"),
            ("h2", "h1", "ipv6", "overlay-broken")
        ],
        "{report}"
    );
    for p in report["problems"].as_array().unwrap() {
        let reason = p["reason"].as_str().unwrap();
        assert!(reason.contains("UDP 8472 (VXLAN)"), "{reason}");
    }
    let summary = &report["summary"];
    assert_eq!(summary["pairs"], 6, "{report}");
    assert_eq!(summary["failingPairs"], 2, "{report}");
    assert_eq!(summary["unknownPairs"], 0, "{report}");
    assert_eq!(summary["culprits"], serde_json::json!([]), "{report}");
    let lone = summary["lonePairs"].as_array().expect("lonePairs");
    assert_eq!(lone.len(), 1, "{report}");
    assert_eq!(lone[0]["observer"], "h1");
    assert_eq!(lone[0]["target"], "h2");
    assert_eq!(lone[0]["state"], "overlay-broken");
    assert_eq!(lone[0]["bothWays"], true);
    let reasons: Vec<&str> = lone[0]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 2, "{report}");
    assert!(reasons[0].starts_with("h1 (ipv6): "), "{reasons:?}");
    assert!(reasons[1].starts_with("h2 (ipv6): "), "{reasons:?}");
    // The IPv4 half stays ok: h1 and h2 each see the other broken over IPv6 alone.
    let over_ipv6_broken = |broken: &'static str| {
        move |peer: &str, f: FamilyName| match (peer == broken, f) {
            (true, FamilyName::Ipv6) => PeerState::OverlayBroken,
            _ => PeerState::Ok,
        }
    };
    assert_eq!(
        local_entries(&lab, 1),
        (1, expected_entries(1, over_ipv6_broken("h2"))),
        "h1"
    );
    assert_eq!(
        local_entries(&lab, 2),
        (1, expected_entries(2, over_ipv6_broken("h1"))),
        "h2"
    );
    assert_eq!(
        local_entries(&lab, 3),
        (0, expected_entries(3, all_ok)),
        "h3"
    );
    let (code, text, err) = lab.netctl(&["health", "--cluster"]);
    assert_eq!(code, 1, "{text}{err}");
    assert!(
        text.starts_with("3 nodes, 3 asked; 2 of 6 pairs failing\n"),
        "{text}"
    );
    for line in [
        "h1        -  O  .",
        "h2        O  -  .",
        "h3        .  .  -",
    ] {
        assert!(text.contains(&format!("\n{line}\n")), "{text}");
    }
    assert!(
        text.contains("\n  h1 ↔ h2: overlay-broken, both ways\n      h1 (ipv6): "),
        "{text}"
    );
    assert!(text.contains("\n      h2 (ipv6): "), "{text}");

    // The rule gone, the pair clears (bounded).
    undrop_vxlan(&lab, 2);
    let (_, report) = cluster_until(&lab, "h1 ↔ h2 ok again", |code, _| code == 0);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(rows(&report), ["-..", ".-.", "..-"], "{report}");
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert_eq!(report["summary"]["failingPairs"], 0, "{report}");
    for h in 1..=3 {
        assert_eq!(
            local_entries(&lab, h),
            (0, expected_entries(h, all_ok)),
            "h{h}"
        );
    }
}
