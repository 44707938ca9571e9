#!/usr/bin/env bash
# Builds the weft CNI plugin as it ships: statically linked. The plugin is copied to the
# node's /opt/cni/bin and run there by the node's own loader, so it must not depend on the
# node's glibc (a dynamic build from Debian 12 needs glibc 2.34 and does not start on
# Ubuntu 20.04, Debian 11, RHEL 8 or Amazon Linux 2). This script is the one place that says
# how; deploy/image/build.sh, the tests and the CNI benchmark all build through it.
#
# What it runs (release, this machine's architecture):
#   RUSTFLAGS="-C target-feature=+crt-static" \
#     cargo build --release -p weft-cni --target x86_64-unknown-linux-gnu
# glibc's static libraries (libc6-dev) make a static-pie executable. The explicit --target
# is what keeps the flag off build scripts and proc macros, which must stay dynamic; it also
# puts the binary under target/<triple>/, apart from the workspace's dynamic build.
#
# It prints the binary's path on stdout (everything else goes to stderr), after checking that
# the file has no program interpreter and needs no shared library.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: cni-plugin/build-static.sh [--debug] [--target TRIPLE] [--print-path]
       cni-plugin/build-static.sh --check FILE

  --debug         the dev profile (quicker to build; what the tests use) instead of release
  --target TRIPLE x86_64-unknown-linux-gnu or aarch64-unknown-linux-gnu (default: this
                  machine's architecture). aarch64 needs `rustup target add
                  aarch64-unknown-linux-gnu` and Debian's gcc-aarch64-linux-gnu and
                  libc6-dev-arm64-cross; the linker defaults to aarch64-linux-gnu-gcc.
  --print-path    print where the binary is (or would be) and build nothing
  --check FILE    only check that FILE is statically linked (exit 1, saying why, if not)
EOF
}

# A static executable has no PT_INTERP (the loader a dynamic one names) and no DT_NEEDED.
# (A static-pie keeps a dynamic section for relocating itself; that is fine.)
check_static() {
  command -v readelf >/dev/null 2>&1 || { echo "build-static.sh: readelf not found (apt-get install binutils): cannot check that $1 is statically linked" >&2; return 1; }
  local headers
  headers=$(LC_ALL=C readelf --file-header --program-headers --dynamic --wide "$1" 2>&1) || { echo "build-static.sh: $1 is not an ELF executable: $headers" >&2; return 1; }
  if grep -qE '^ +INTERP ' <<<"$headers" || grep -q '(NEEDED)' <<<"$headers"; then
    echo "build-static.sh: $1 is dynamically linked (it names a loader or shared libraries), so it runs only on nodes with a compatible glibc: build it with cni-plugin/build-static.sh" >&2
    return 1
  fi
}

repo=$(cd "$(dirname "$0")/.." && pwd)
profile=release
triple="$(uname -m)-unknown-linux-gnu"
print_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --check) [ $# -eq 2 ] || { usage >&2; exit 2; }; check_static "$2"; exit ;;
    --debug) profile=debug; shift ;;
    --target) [ $# -ge 2 ] || { usage >&2; exit 2; }; triple=$2; shift 2 ;;
    --target=*) triple=${1#--target=}; shift ;;
    --print-path) print_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-static.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$triple" in
  x86_64-unknown-linux-gnu|aarch64-unknown-linux-gnu) ;;
  *) echo "build-static.sh: target $triple is not one weft builds (x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu)" >&2; exit 2 ;;
esac

target_dir=${CARGO_TARGET_DIR:-$repo/target}
bin="$target_dir/$triple/$profile/weft"
if [ "$print_only" = 1 ]; then
  echo "$bin"
  exit 0
fi

cargo=${CARGO:-cargo}
command -v "$cargo" >/dev/null 2>&1 || { echo "build-static.sh: cargo not found: run it as the user who has the Rust toolchain" >&2; exit 1; }
profile_flag=()
[ "$profile" = release ] && profile_flag=(--release)
if [ "$triple" != "$(uname -m)-unknown-linux-gnu" ]; then
  # A cross build: cargo needs a linker for the target; Debian's cross gcc is the default.
  var="CARGO_TARGET_$(tr 'a-z-' 'A-Z_' <<<"$triple")_LINKER"
  if [ -z "${!var:-}" ]; then
    linker="${triple%%-*}-linux-gnu-gcc"
    command -v "$linker" >/dev/null 2>&1 || { echo "build-static.sh: $linker not found: apt-get install gcc-${triple%%-*}-linux-gnu libc6-dev-arm64-cross (or set $var)" >&2; exit 1; }
    export "$var=$linker"
  fi
fi
# RUSTFLAGS rather than a config file: it overrides any [target] rustflags, which would
# otherwise decide, and with --target it reaches only the plugin and its dependencies.
(cd "$repo" && RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
  "$cargo" build "${profile_flag[@]}" -p weft-cni --target "$triple" >&2)

[ -x "$bin" ] || { echo "build-static.sh: cargo finished but $bin is not there" >&2; exit 1; }
check_static "$bin"
echo "$bin"
