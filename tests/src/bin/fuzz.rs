//! Runs the fuzz targets of `weft_tests::fuzz` for a bounded time each.
//!
//!   target/debug/fuzz [--seconds 15] [--seed N] [--target NAME]
//!
//! Exit 0 when no target crashed; 1 with the saved crash inputs listed otherwise. CI runs it
//! from tests/run.sh; crashes land in tests/fuzz/crashes/<target>/ and are replayed by
//! tests/tests/fuzz_regressions.rs once checked in.

use std::time::Duration;

use weft_tests::bench::flag_value;
use weft_tests::fuzz::{fuzz, TARGETS};

fn main() {
    let seconds: u64 = flag_value("--seconds").unwrap_or(15);
    let seed: u64 = flag_value("--seed").unwrap_or_else(|| fastrand::u64(..));
    let only: Option<String> = flag_value("--target");
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
