//! A real Prometheus scraping a three-host lab: /usr/bin/prometheus runs in the lab's switch
//! namespace (beside etcd) with a generated config (job "weft", every host's weftd, 1 s
//! interval, its own tsdb directory) and is queried over its HTTP API from inside that
//! namespace. Every series docs/metrics.md documents arrives from every host, with exactly
//! the labels the docs give it; a deleted route shows as exactly one repair on that host;
//! stopping etcd takes `weft_etcd_up` to 0 and restarting it brings it back to 1, both seen
//! through Prometheus. Every wait is bounded, and Prometheus is killed by its pid at the
//! end, even on failure.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_agent::mesh::report::PeerState;
use weft_agent::store::Reason;
use weft_tests::lab::{Lab, LabOptions, SWITCH_IP};
use weft_tests::markdown;
use weft_tests::procs::run_bounded;

const READY: Duration = Duration::from_secs(60);
const SEEN_WITHIN: Duration = Duration::from_secs(45);
const PROMETHEUS_PORT: u16 = 9090;
const WEFTD_PORT: u16 = 8471;

/// Documented series that a plain vxlan lab where every peer is healthy does not have.
const ABSENT_IN_THIS_LAB: &[(&str, &str)] = &[
    (
        "weft_wireguard_implementation",
        "exists only with the wireguard backend",
    ),
    (
        "weft_health_peer_problem",
        "exists only for a peer that is not ok",
    ),
];

/// Prometheus in the switch namespace; killed by pid when dropped.
struct Prometheus {
    child: Child,
    ns: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(lab: &Lab, dir: &Path) -> Prometheus {
        let targets: Vec<String> = (1..=lab.host_count())
            .map(|i| format!("\"{}:{WEFTD_PORT}\"", lab.host_ip(i)))
            .collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
                 scrape_configs:\n\
                 - job_name: weft\n  static_configs:\n  - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", lab.switch_ns(), "/usr/bin/prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!(
                "--web.listen-address={SWITCH_IP}:{PROMETHEUS_PORT}"
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start /usr/bin/prometheus (tests/install-deps.sh installs it)");
        Prometheus {
            child,
            ns: lab.switch_ns().to_string(),
        }
    }

    /// GET `path` with `args` URL-encoded, from inside the switch namespace.
    fn api(&self, path: &str, args: &[(&str, &str)]) -> Option<Value> {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ns,
            "curl",
            "-sf",
            "--max-time",
            "5",
            "-G",
        ]);
        for (k, v) in args {
            cmd.args(["--data-urlencode", &format!("{k}={v}")]);
        }
        cmd.arg(format!("http://{SWITCH_IP}:{PROMETHEUS_PORT}{path}"));
        let (code, out, _) = run_bounded(cmd, Duration::from_secs(10));
        if code != 0 {
            return None;
        }
        let v: Value = serde_json::from_str(&out).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// Instant query: instance → value.
    fn query(&self, q: &str) -> Vec<(String, f64)> {
        let Some(data) = self.api("/api/v1/query", &[("query", q)]) else {
            return Vec::new();
        };
        data["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let inst = r["metric"]["instance"].as_str()?.to_string();
                let v = r["value"][1].as_str()?.parse().ok()?;
                Some((inst, v))
            })
            .collect()
    }

    /// Label sets of the series matching `selector`.
    fn series(&self, selector: &str) -> Vec<serde_json::Map<String, Value>> {
        self.api("/api/v1/series", &[("match[]", selector)])
            .and_then(|d| d.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_object().cloned())
            .collect()
    }

    /// The values `label` takes in the series of `name`.
    fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.series(&format!("{name}{{job=\"weft\"}}"))
            .iter()
            .filter_map(|s| s.get(label)?.as_str().map(str::to_string))
            .collect()
    }

    /// Wait until `check` holds on the result of `q`; panics with the last result after
    /// `bound`.
    fn wait_for(
        &self,
        q: &str,
        bound: Duration,
        check: impl Fn(&[(String, f64)]) -> bool,
    ) -> Vec<(String, f64)> {
        let start = Instant::now();
        loop {
            let r = self.query(q);
            if check(&r) {
                return r;
            }
            assert!(
                start.elapsed() < bound,
                "{q} within {bound:?}: last result {r:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The series of docs/metrics.md's series tables: each name (first column) with the label
/// names its type column gives (`gauge, labels \`family\`, \`state\` (\`ok\`, …)`: the
/// backticked words outside parentheses).
fn documented_series() -> Vec<(String, BTreeSet<String>)> {
    let text = weft_tests::repo_file("docs/metrics.md");
    markdown::table_rows(&text)
        .iter()
        .filter_map(|row| {
            let name = *markdown::code_spans(&row[0]).first()?;
            let kind = row.get(1)?;
            if !name.starts_with("weft_") {
                return None;
            }
            let mut outside = String::new();
            let mut depth = 0;
            for c in kind.chars() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    c if depth == 0 => outside.push(c),
                    _ => {}
                }
            }
            let labels = markdown::code_spans(&outside)
                .into_iter()
                .map(str::to_string)
                .collect();
            Some((name.to_string(), labels))
        })
        .collect()
}

/// The documented series not seen from every host in `all`, and those whose labels are not
/// exactly the documented ones.
fn check_series(
    prom: &Prometheus,
    documented: &[(String, BTreeSet<String>)],
    all: &BTreeSet<String>,
) -> (Vec<String>, Vec<String>) {
    let mut missing = Vec::new();
    let mut mislabelled = Vec::new();
    for (name, labels) in documented {
        if ABSENT_IN_THIS_LAB.iter().any(|(n, _)| n == name) {
            continue;
        }
        let selector = format!("{{__name__=~\"{name}|{name}_bucket\",job=\"weft\"}}");
        let series = prom.series(&selector);
        let seen: BTreeSet<String> = series
            .iter()
            .filter_map(|s| s.get("instance")?.as_str().map(str::to_string))
            .collect();
        if seen != *all {
            missing.push(format!("{name}: from {seen:?}"));
        }
        // Exactly the documented labels, plus what Prometheus adds (and `le` on buckets).
        for s in &series {
            let mut expected: BTreeSet<&str> = labels.iter().map(String::as_str).collect();
            expected.extend(["__name__", "instance", "job"]);
            if s.get("__name__").and_then(|n| n.as_str()) == Some(&format!("{name}_bucket")) {
                expected.insert("le");
            }
            let got: BTreeSet<&str> = s.keys().map(String::as_str).collect();
            if got != expected {
                mislabelled.push(format!("{name}: labels {got:?}, documented {expected:?}"));
            }
        }
    }
    (missing, mislabelled)
}

/// A check for [`Prometheus::wait_for`]: the query has a value from each of the three hosts,
/// and every one is `v`.
fn every_host_at(v: f64) -> impl Fn(&[(String, f64)]) -> bool {
    move |r| r.len() == 3 && r.iter().all(|(_, x)| *x == v)
}

fn instance(lab: &Lab, i: usize) -> String {
    format!("{}:{WEFTD_PORT}", lab.host_ip(i))
}

#[test]
fn a_real_prometheus_sees_every_series_a_repair_and_an_etcd_outage() {
    let mut lab = Lab::up(
        LabOptions {
            hosts: 3,
            pods_per_host: 0,
            ..LabOptions::default()
        },
        READY,
    )
    .unwrap_or_else(|e| panic!("the lab did not come up: {e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let prom = Prometheus::start(&lab, dir.path());
    let all: BTreeSet<String> = (1..=3).map(|i| instance(&lab, i)).collect();

    // Every host scraped.
    prom.wait_for("up{job=\"weft\"} == 1", SEEN_WITHIN, |r| r.len() == 3);

    // Every documented series from every host (histograms as their _bucket series).
    let documented = documented_series();
    assert!(documented.len() >= 30, "series tables: {documented:?}");
    // A series appears with its host's first event of that kind (the first probe, the first
    // answer), which may come after the first scrape: look again until all are there.
    let start = Instant::now();
    let (missing, mislabelled) = loop {
        let (missing, mislabelled) = check_series(&prom, &documented, &all);
        if missing.is_empty() || start.elapsed() > SEEN_WITHIN {
            break (missing, mislabelled);
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        missing.is_empty(),
        "documented series not from every host: {missing:#?}"
    );
    assert!(
        mislabelled.is_empty(),
        "series whose labels differ from docs/metrics.md: {mislabelled:#?}"
    );
    let labelled = documented.iter().filter(|(_, l)| !l.is_empty()).count();
    assert!(labelled >= 10, "labels read from the docs: {documented:?}");
    // Label values, where weft names them: every one has its series from the start.
    assert_eq!(
        prom.label_values("weft_health_peers", "state"),
        PeerState::ALL
            .iter()
            .map(|s| s.as_str().to_string())
            .collect()
    );
    assert_eq!(
        prom.label_values("weft_etcd_request_errors_total", "reason"),
        Reason::ALL.iter().map(|r| r.as_str().to_string()).collect()
    );

    // A deleted peer route on h1: exactly one repair there, none elsewhere.
    prom.wait_for(
        "weft_dataplane_repairs_total",
        SEEN_WITHIN,
        every_host_at(0.0),
    );
    let (_, routes, _) = lab.host_exec(1, "ip", &["route", "show", "proto", "87"]);
    let dst = routes
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("h1 has no weft route: {routes}"))
        .to_string();
    let (code, _, err) = lab.host_exec(1, "ip", &["route", "del", &dst, "proto", "87"]);
    assert_eq!(code, 0, "delete {dst} on h1: {err}");
    let h1 = instance(&lab, 1);
    prom.wait_for("weft_dataplane_repairs_total", SEEN_WITHIN, |r| {
        r.iter().any(|(i, v)| *i == h1 && *v >= 1.0)
    });
    // A few more scrapes: still exactly one.
    std::thread::sleep(Duration::from_secs(4));
    let r = prom.query("weft_dataplane_repairs_total");
    let expected: Vec<(String, f64)> = all
        .iter()
        .map(|i| (i.clone(), if *i == h1 { 1.0 } else { 0.0 }))
        .collect();
    let mut got = r.clone();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, expected, "repairs after deleting {dst} on h1");

    // etcd stopped: weft_etcd_up goes to 0 on every host; back to 1 once etcd is back.
    prom.wait_for("weft_etcd_up", SEEN_WITHIN, every_host_at(1.0));
    lab.stop_etcd();
    prom.wait_for("weft_etcd_up", Duration::from_secs(90), every_host_at(0.0));
    lab.start_etcd_again();
    prom.wait_for("weft_etcd_up", Duration::from_secs(90), every_host_at(1.0));
    drop(prom);
}
