//! Every input the fuzzer ever crashed on (tests/fuzz/crashes/<target>/) and every seed, run
//! through its target again: none may panic. Also checks that the fuzzer notices a panic.

use std::time::Duration;

use weft_tests::fuzz::{crash_dir, fuzz, run_one, Target, TARGETS};

#[test]
fn saved_crashes_and_seeds_no_longer_panic() {
    let mut replayed = 0;
    for t in TARGETS {
        for s in t.seeds {
            run_one(t, s.as_bytes()).unwrap_or_else(|e| panic!("seed of {}: {e}", t.name));
        }
        let Ok(dir) = std::fs::read_dir(crash_dir(t.name)) else {
            continue;
        };
        for entry in dir {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            run_one(t, &data)
                .unwrap_or_else(|e| panic!("{} still crashes {}: {e}", path.display(), t.name));
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} saved crash inputs");
}

#[test]
fn a_short_run_of_every_target_finds_no_crash_and_the_fuzzer_would_notice_one() {
    for t in TARGETS {
        let out = fuzz(t, Duration::from_millis(300), 7);
        assert!(out.execs > 0, "{} ran no input", t.name);
        assert!(
            out.crashes.is_empty(),
            "{} crashed: {:?}",
            t.name,
            out.crashes
        );
    }
    fn boom(data: &[u8]) {
        assert!(!data.contains(&b'!'), "found the bang");
    }
    let t = Target {
        name: "selftest",
        run: boom,
        seeds: &["abc"],
        dict: &["!"],
    };
    assert!(run_one(&t, b"a!").is_err());
    let out = fuzz(&t, Duration::from_millis(200), 1);
    assert!(!out.crashes.is_empty(), "the fuzzer finds an easy crash");
    for c in &out.crashes {
        std::fs::remove_file(c).unwrap();
    }
    let _ = std::fs::remove_dir(crash_dir("selftest"));
}
