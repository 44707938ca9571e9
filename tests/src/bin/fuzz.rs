//! Runs the fuzz targets of `weft_tests::fuzz` for a bounded time each.
//!
//!   target/debug/fuzz [--seconds 15] [--seed N] [--target NAME]
//!
//! Exit 0 when no target crashed; 1 with the saved crash inputs listed otherwise. CI runs it
//! from tests/run.sh; crashes land in tests/fuzz/crashes/<target>/ and are replayed by
//! tests/tests/fuzz_regressions.rs once checked in.

use std::time::Duration;

use weft_tests::fuzz::{fuzz, TARGETS};

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn main() {
    let seconds: u64 = arg("--seconds").and_then(|v| v.parse().ok()).unwrap_or(15);
    let seed: u64 = arg("--seed")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let only = arg("--target");
    // A panic in a target is caught and recorded; keep the default hook quiet about it.
    std::panic::set_hook(Box::new(|_| {}));
    let mut crashed = false;
    for t in TARGETS
        .iter()
        .filter(|t| only.as_deref().is_none_or(|o| o == t.name))
    {
        let out = fuzz(t, Duration::from_secs(seconds), seed);
        println!(
            "fuzz {:<11} {:>8} inputs in {seconds} s, seed {seed}: {}",
            t.name,
            out.execs,
            if out.crashes.is_empty() {
                "no crash".to_string()
            } else {
                format!("{} CRASHES", out.crashes.len())
            }
        );
        for c in &out.crashes {
            println!("  saved {}", c.display());
        }
        crashed |= !out.crashes.is_empty();
    }
    std::process::exit(i32::from(crashed));
}
