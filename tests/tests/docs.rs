//! docs/configuration.md against the binaries: every flag `--help` shows is documented, with
//! its environment variable, and every documented flag exists. And every relative link in the
//! repository's Markdown leads to a file that exists, and to a heading there when it names one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use weft_tests::markdown;
use weft_tests::procs::{bin, run_bounded};

/// flag → environment variable (if any), from a clap `--help` text.
fn help_flags(program: &str, args: &[&str]) -> BTreeMap<String, Option<String>> {
    let mut cmd = Command::new(bin(program));
    cmd.args(args).arg("--help");
    let (code, out, err) = run_bounded(cmd, Duration::from_secs(10));
    assert_eq!(code, 0, "{program} {args:?} --help: {err}");
    // A flag's description (with its `[env: …]`) is on its line or on the lines after it.
    // A flag line starts with `--name` or `-x`; the `- value: …` lines clap writes under
    // "Possible values" belong to the flag above them.
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in out.lines() {
        let t = line.trim_start();
        let flag_line = t
            .strip_prefix('-')
            .is_some_and(|rest| rest.starts_with(|c: char| c == '-' || c.is_ascii_alphanumeric()));
        if flag_line {
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
    markdown::tables(&text[at..])
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// Backticked long flags in a cell.
fn flags_in(cell: &str) -> Vec<String> {
    markdown::code_spans(cell)
        .into_iter()
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
    for sub in ["leases", "config", "check", "health"] {
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

/// Every Markdown file of the repository (build output and hidden directories left out).
fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// The lines of a Markdown text outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// The anchors a Markdown renderer gives the headings of `text`: lower case, punctuation
/// dropped, spaces turned into hyphens, `-1`, `-2`, … after repeats.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeMap::<String, usize>::new();
    let mut out = BTreeSet::new();
    for line in prose_lines(text) {
        let Some(title) = line
            .strip_prefix('#')
            .map(|t| t.trim_start_matches('#'))
            .filter(|t| t.starts_with(' '))
        else {
            continue;
        };
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// `(line number, target)` of every inline link `[text](target)` outside code.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Inline code spans are not links.
        let prose: String = line
            .split('`')
            .enumerate()
            .filter(|(k, _)| k % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            out.push((i + 1, rest[..end].to_string()));
            rest = &rest[end..];
        }
    }
    out
}

/// Broken relative links in `file` (`target` missing, or no heading for its `#anchor`).
fn broken_links(file: &Path, text: &str) -> Vec<String> {
    let mut broken = Vec::new();
    for (line, target) in links(text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (target.as_str(), None),
        };
        let at = format!("{}:{line}: {target}", file.display());
        let dest = file.parent().unwrap().join(path);
        if !path.is_empty() && !dest.exists() {
            broken.push(format!("{at}: no such file"));
            continue;
        }
        if let Some(anchor) = anchor {
            let headings = if path.is_empty() {
                anchors(text)
            } else {
                anchors(&std::fs::read_to_string(&dest).unwrap_or_default())
            };
            if !headings.contains(anchor) {
                broken.push(format!("{at}: no heading with this anchor"));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_in_the_docs_leads_somewhere() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .canonicalize()
        .unwrap();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("docs/install.md")),
        "no Markdown found under {}",
        root.display()
    );
    let mut broken = Vec::new();
    for file in &files {
        broken.extend(broken_links(file, &std::fs::read_to_string(file).unwrap()));
    }
    let root = format!("{}/", root.display());
    let broken: Vec<String> = broken.iter().map(|b| b.replace(&root, "")).collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_check_sees_a_missing_file_and_a_missing_heading() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("b.md"),
        "# Title\n\n## Step 1: the `etcd` part\n\n## Twice\n\n## Twice\n\n```\n# not a heading\n```\n",
    )
    .unwrap();
    let a = dir.path().join("a.md");
    let text =
        "[ok](b.md#step-1-the-etcd-part) [ok](b.md#twice-1) [ok](#here) [ok](https://x.invalid/)\n\
        # Here\n\
        [gone](c.md) [no heading](b.md#not-a-heading) `[code](d.md)`\n\
        ```\n[fenced](e.md)\n```\n";
    let broken = broken_links(&a, text);
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(
        broken[0].ends_with("a.md:3: c.md: no such file"),
        "{broken:?}"
    );
    assert!(
        broken[1].ends_with("a.md:3: b.md#not-a-heading: no heading with this anchor"),
        "{broken:?}"
    );
}
