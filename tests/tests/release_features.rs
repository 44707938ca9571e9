//! The fakes stay out of the shipped binaries. The README builds them with
//! `cargo build --release --workspace --bins`; in that build no test-only feature may be
//! switched on by another workspace member (cargo unifies the features of a normal
//! dependency across the workspace, not those of a dev-dependency), and weftd and netctl as
//! built for these tests — the same command without `--release` — carry none of the fakes'
//! code.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use weft_tests::procs::{bin, run_bounded};

/// Features that only tests may enable, by crate.
const TEST_ONLY_FEATURES: &[(&str, &str)] =
    &[("weft-agent", "memory-store"), ("weft-backends", "fake")];

/// Types that exist for tests only; none may be linked into a shipped binary.
const FAKES: &[&str] = &["MemoryStore", "FakeFirewall", "FakeNetlink"];

#[test]
fn a_workspace_build_enables_no_test_only_feature() {
    for (krate, feature) in TEST_ONLY_FEATURES {
        workspace_build_leaves_off(krate, feature);
    }
}

fn workspace_build_leaves_off(krate: &str, feature: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new(cargo);
    // `no-dev`: the features as the README's build resolves them (dev-dependencies are only
    // built for tests).
    cmd.current_dir(&workspace).args([
        "tree",
        "--workspace",
        "--offline",
        "--edges",
        "features,no-dev",
        "--invert",
        krate,
        "--prefix",
        "none",
    ]);
    let (code, out, err) = run_bounded(cmd, Duration::from_secs(120));
    assert_eq!(code, 0, "cargo tree: {err}");
    assert!(
        out.contains(&format!("{krate} v")),
        "unexpected cargo tree output:\n{out}"
    );
    assert!(
        !out.contains(&format!("{krate} feature \"{feature}\"")),
        "a normal workspace build enables {krate}'s test-only feature {feature}:\n{out}"
    );
}

#[test]
fn the_built_binaries_carry_no_fake() {
    for program in ["weftd", "netctl"] {
        let path = bin(program);
        let image = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "read {}: {e} (build with cargo build --workspace --bins)",
                path.display()
            )
        });
        for fake in FAKES {
            assert!(
                !image.windows(fake.len()).any(|w| w == fake.as_bytes()),
                "{} contains {fake}",
                path.display()
            );
        }
    }
}
