//! The alert rules in deploy/chart/weft/files/prometheus-rules.yaml: promtool accepts them,
//! their unit tests in tests/alerts/ pass, every alert has a unit test that fires it and one
//! where it stays quiet, and docs/metrics.md names exactly the alerts the file holds.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use weft_tests::markdown;
use weft_tests::procs::run_bounded;
use weft_tests::{repo_file as read, repo_root};

const RULES: &str = "deploy/chart/weft/files/prometheus-rules.yaml";
const UNIT_TESTS: &str = "tests/alerts/weft-rules.test.yaml";
const PROMTOOL_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<Group>,
}

#[derive(Debug, Deserialize)]
struct Group {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct UnitTestFile {
    rule_files: Vec<String>,
    tests: Vec<UnitTest>,
}

#[derive(Debug, Deserialize)]
struct UnitTest {
    #[serde(default)]
    alert_rule_test: Vec<AlertCheck>,
}

#[derive(Debug, Deserialize)]
struct AlertCheck {
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<serde_norway::Value>,
}

fn rules() -> Vec<(String, Rule)> {
    let file: RuleFile = serde_norway::from_str(&read(RULES)).expect("the rules file parses");
    file.groups
        .into_iter()
        .flat_map(|g| {
            let name = g.name;
            g.rules.into_iter().map(move |r| (name.clone(), r))
        })
        .collect()
}

fn promtool(args: &[&str], dir: &Path) {
    let mut cmd = Command::new("promtool");
    cmd.args(args).current_dir(dir);
    let (code, out, err) = run_bounded(cmd, PROMTOOL_TIMEOUT);
    assert_eq!(
        code,
        0,
        "promtool {} failed (install it with tests/install-deps.sh):\n{out}\n{err}",
        args.join(" ")
    );
}

#[test]
fn promtool_accepts_the_rules_file() {
    promtool(&["check", "rules", RULES], &repo_root());
}

#[test]
fn the_unit_tests_of_the_rules_pass() {
    promtool(&["test", "rules", UNIT_TESTS], &repo_root());
}

#[test]
fn the_rules_file_has_the_two_groups_and_every_rule_is_complete() {
    let rules = rules();
    let groups: BTreeSet<&str> = rules.iter().map(|(g, _)| g.as_str()).collect();
    assert_eq!(groups, BTreeSet::from(["weft", "weft-etcd"]));
    let mut names = BTreeSet::new();
    for (_, r) in &rules {
        assert!(names.insert(r.alert.as_str()), "{} twice", r.alert);
        assert!(r.for_.is_some(), "{} has no `for`", r.alert);
        assert!(
            ["critical", "warning", "info"].contains(&r.labels.get("severity").map_or("", |s| s)),
            "{} has no severity critical, warning or info",
            r.alert
        );
        for key in ["summary", "description"] {
            assert!(
                r.annotations.get(key).is_some_and(|s| !s.is_empty()),
                "{} has no {key}",
                r.alert
            );
        }
        assert!(
            r.expr.contains("job=\"weft\""),
            "{} does not select job=\"weft\": {}",
            r.alert,
            r.expr
        );
    }
    assert_eq!(rules.len(), 21, "alerts: {names:?}");
}

#[test]
fn every_alert_has_a_unit_test_that_fires_it_and_one_that_keeps_it_quiet() {
    let tests: UnitTestFile =
        serde_norway::from_str(&read(UNIT_TESTS)).expect("the unit tests parse");
    assert_eq!(
        tests.rule_files,
        vec![format!("../../{RULES}")],
        "the unit tests load the rules file"
    );
    let checks: Vec<&AlertCheck> = tests
        .tests
        .iter()
        .flat_map(|t| &t.alert_rule_test)
        .collect();
    let fired: BTreeSet<&str> = checks
        .iter()
        .filter(|c| !c.exp_alerts.is_empty())
        .map(|c| c.alertname.as_str())
        .collect();
    let quiet: BTreeSet<&str> = checks
        .iter()
        .filter(|c| c.exp_alerts.is_empty())
        .map(|c| c.alertname.as_str())
        .collect();
    let rules = rules();
    let alerts: BTreeSet<&str> = rules.iter().map(|(_, r)| r.alert.as_str()).collect();
    let never_fired: Vec<_> = alerts.difference(&fired).collect();
    let never_quiet: Vec<_> = alerts.difference(&quiet).collect();
    let unknown: Vec<_> = fired
        .union(&quiet)
        .filter(|a| !alerts.contains(*a))
        .collect();
    assert!(never_fired.is_empty(), "no test fires: {never_fired:?}");
    assert!(never_quiet.is_empty(), "no quiet case: {never_quiet:?}");
    assert!(
        unknown.is_empty(),
        "tests of alerts not in the rules: {unknown:?}"
    );
}

/// Alert names in the first column of docs/metrics.md's tables (`| \`WeftX\` | …`).
fn documented_alerts(text: &str) -> BTreeSet<String> {
    markdown::table_rows(text)
        .iter()
        .filter_map(|row| markdown::code_spans(&row[0]).first().map(|s| s.to_string()))
        .filter(|name| name.starts_with("Weft"))
        .collect()
}

#[test]
fn docs_metrics_md_names_every_alert_and_no_other() {
    let docs = read("docs/metrics.md");
    let documented = documented_alerts(&docs);
    let rules = rules();
    let alerts: BTreeSet<String> = rules.iter().map(|(_, r)| r.alert.clone()).collect();
    assert_eq!(
        documented, alerts,
        "docs/metrics.md's alert tables against {RULES}"
    );
    assert!(
        !docs.contains("expr:"),
        "docs/metrics.md repeats rule expressions; the rules file is their one home"
    );
}

#[test]
fn the_docs_parser_of_this_test_sees_a_missing_alert() {
    let text = "| alert | a | b |\n|---|---|---|\n| `WeftDown` | x | y |\n";
    assert_eq!(
        documented_alerts(text),
        BTreeSet::from(["WeftDown".to_string()])
    );
}
