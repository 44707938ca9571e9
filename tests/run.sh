#!/usr/bin/env bash
# The whole weft test suite: unit tests, the LeaseStore contract suite (in-memory and a real
# etcd), keeper/watch tests against etcd, and weftd/netctl process tests (single member,
# three-member cluster, TLS). Extra arguments go to `cargo test`, e.g. a test-name filter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh
# The process tests run the real binaries; build them first.
cargo build --workspace --bins
# The supervision tests run weftd-fault: weftd with the test-only fault hook, a feature no
# workspace or release build enables.
cargo build -p weft-agent --features fault-injection --bin weftd-fault
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --all-targets "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(awk '/^test result:/ {s += $4} END {print s + 0}' "$log")
failed=$(awk '/^test result:/ {s += $6} END {print s + 0}' "$log")
# Fuzzing, bounded: every parser of outside input for WEFT_FUZZ_SECONDS (default 20) each.
# A crash fails the run and leaves its input in tests/fuzz/crashes/ (commit it: it becomes a
# regression test).
fuzz_status=0
if [ -z "${WEFT_NO_FUZZ:-}" ] && [ "$#" -eq 0 ]; then
  "${CARGO_TARGET_DIR:-target}/debug/fuzz" --seconds "${WEFT_FUZZ_SECONDS:-20}" || fuzz_status=$?
fi
echo
echo "weft: $passed passed, $failed failed"
if [ "$status" -eq 0 ] && [ "$fuzz_status" -ne 0 ]; then
  echo "weft: the fuzzer found a crash (see above)"
  exit "$fuzz_status"
fi
exit "$status"
