//! docs/configuration.md against the binaries: every flag `--help` shows is documented, with
//! its environment variable, and every documented flag exists.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use weft_tests::procs::{bin, run_bounded};

/// flag → environment variable (if any), from a clap `--help` text.
fn help_flags(program: &str, args: &[&str]) -> BTreeMap<String, Option<String>> {
    let mut cmd = Command::new(bin(program));
    cmd.args(args).arg("--help");
    let (code, out, err) = run_bounded(cmd, Duration::from_secs(10));
    assert_eq!(code, 0, "{program} {args:?} --help: {err}");
    // A flag's description (with its `[env: …]`) is on its line or on the lines after it.
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in out.lines() {
        let t = line.trim_start();
        if t.starts_with('-') {
            current = t
                .split([',', ' '])
                .map(str::trim)
                .find(|w| w.starts_with("--"))
                .map(|w| w.trim_end_matches(',').to_string());
            if let Some(f) = &current {
                flags.insert(f.clone(), None);
            }
        }
        if let (Some(f), Some((_, rest))) = (&current, line.split_once("[env: ")) {
            let env = rest.split(['=', ']']).next().unwrap().to_string();
            flags.insert(f.clone(), Some(env));
        }
    }
    assert!(!flags.is_empty(), "no flags parsed from:\n{out}");
    flags
}

/// The rows of the first table after `heading` in docs/configuration.md, split into cells.
fn doc_rows(heading: &str) -> Vec<Vec<String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    let text = std::fs::read_to_string(path).unwrap();
    let at = text
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in docs/configuration.md"));
    text[at..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// Backticked long flags in a cell.
fn flags_in(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| w.starts_with("--"))
        .map(str::to_string)
        .collect()
}

fn env_in(cell: &str) -> Option<String> {
    cell.split('`').nth(1).map(str::to_string)
}

fn compare(
    what: &str,
    help: &BTreeMap<String, Option<String>>,
    rows: &[Vec<String>],
    flag_col: usize,
) {
    let mut documented = BTreeMap::new();
    for row in rows {
        for f in flags_in(&row[flag_col]) {
            documented.insert(f, env_in(&row[flag_col + 1]));
        }
    }
    let missing: Vec<&String> = help
        .keys()
        .filter(|f| !documented.contains_key(*f))
        .collect();
    let extra: Vec<&String> = documented
        .keys()
        .filter(|f| !help.contains_key(*f))
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: flags in --help but not in docs/configuration.md: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "{what}: flags in docs/configuration.md that {what} does not have: {extra:?}"
    );
    for (flag, env) in help {
        assert_eq!(
            &documented[flag], env,
            "{what} {flag}: the documented environment variable differs from --help"
        );
    }
}

#[test]
fn every_weftd_flag_is_documented_and_every_documented_flag_exists() {
    compare(
        "weftd",
        &help_flags("weftd", &[]),
        &doc_rows("## weftd flags"),
        0,
    );
}

#[test]
fn every_netctl_flag_is_documented_and_every_documented_flag_exists() {
    let top = help_flags("netctl", &[]);
    compare("netctl", &top, &doc_rows("## netctl flags"), 0);
    // Subcommands: the second table under the same heading.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    let text = std::fs::read_to_string(path).unwrap();
    let sub_at = text.find("| subcommand |").expect("subcommand table");
    let rows: Vec<Vec<String>> = text[sub_at..]
        .lines()
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    for sub in ["leases", "config", "check"] {
        let mut help = help_flags("netctl", &[sub]);
        // Global flags are shown again under each subcommand; they are documented above.
        help.retain(|f, _| !top.contains_key(f));
        let mine: Vec<Vec<String>> = rows
            .iter()
            .filter(|r| r[0] == format!("`{sub}`"))
            .cloned()
            .collect();
        compare(&format!("netctl {sub}"), &help, &mine, 1);
    }
}

#[test]
fn the_flag_parser_of_this_test_sees_a_missing_flag() {
    // The comparison must be able to fail: drop one documented row and it complains.
    let help = help_flags("weftd", &[]);
    let mut rows = doc_rows("## weftd flags");
    rows.retain(|r| !r[0].contains("--ip-masq"));
    let result = std::panic::catch_unwind(|| compare("weftd", &help, &rows, 0));
    let msg = *result.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.contains("--ip-masq"), "{msg}");
}
