//! `netctl health` on the lab: five vxlan hosts probing each other every second, one pair
//! broken the way a host firewall breaks it (h3 drops UDP 8472 from h1's address), and what
//! the operator sees: the local table on h1, the cluster matrix and its summary (exit 1),
//! and the HTML heat-map rendered in headless Chromium, checked on the rendered page (the
//! computed colour and place of each cell, and the screenshot's pixels there).

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

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Drop VXLAN (UDP 8472) from `from`'s address at host `at`'s input hook.
fn drop_vxlan(lab: &Lab, at: usize, from: usize) {
    let ns = lab.host_ns(at).to_string();
    let src = lab.host_ip(from).to_string();
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
            "ip",
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
    let start = Instant::now();
    loop {
        let (code, out, err) = lab.netctl(&["health", "--cluster", "-o", "json"]);
        if code == 0 {
            assert!(json(&out)["ok"].as_bool().unwrap());
            break;
        }
        assert!(
            start.elapsed() < SEEN_WITHIN,
            "the lab's mesh is not all ok within {SEEN_WITHIN:?}: {out}{err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    drop_vxlan(&lab, 3, 1);
    // Bounded: until the reports show the pair broken both ways.
    let start = Instant::now();
    let report = loop {
        let (code, out, err) = lab.netctl(&["health", "--cluster", "-o", "json"]);
        let v = json(&out);
        let rows: Vec<String> = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        if rows == ["-.O..", ".-...", "O.-..", "...-.", "....-"] {
            assert_eq!(code, 1, "a failing pair is exit 1: {err}");
            break v;
        }
        assert!(
            start.elapsed() < SEEN_WITHIN,
            "h1 ↔ h3 not overlay-broken within {SEEN_WITHIN:?}: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
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
