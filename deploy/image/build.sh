#!/usr/bin/env bash
# Builds weft's container image (deploy/image/Containerfile) without pulling anything:
#   1. builds the release binaries, unless --no-build or --bin-dir says where they already
#      are: weftd and netctl with `cargo build --release -p weft-agent`, the CNI plugin
#      statically linked with cni-plugin/build-static.sh (the node runs it with its own libc);
#   2. checks that the plugin is statically linked (it refuses to ship one that is not), and
#      prepares a build context in a temp dir: the binaries (debug info stripped from the
#      copies), /usr/sbin/nft, /usr/bin/wireguard-go (the userspace WireGuard weftd starts with
#      --wireguard-implementation userspace), and every shared library `ldd` lists for weftd,
#      netctl, nft and wireguard-go (the dynamic loader included) copied from this machine at
#      the path ldd reports;
#   3. runs `podman build --pull=never` on it, prints the image's size, and with --save writes
#      it to an OCI archive for `podman load` / `ctr images import` on the nodes.
#
# podman runs with whatever configuration its environment gives it: by default the machine's
# storage (/var/lib/containers for root). Point CONTAINERS_STORAGE_CONF (and CONTAINERS_CONF)
# at other files to build elsewhere, as tests/tests/image.rs does. Set PODMAN to use another
# podman binary.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: deploy/image/build.sh [--tag NAME] [--no-build] [--bin-dir DIR] [--cni-plugin FILE]
                             [--save FILE]

  --tag NAME         image name (default localhost/weft:<workspace version>)
  --no-build         do not run cargo; use the release binaries already built (weftd and
                     netctl in target/release, the plugin where cni-plugin/build-static.sh
                     puts it: target/<arch>-unknown-linux-gnu/release/weft)
  --bin-dir DIR      take weftd and netctl (and weft, unless --cni-plugin) from DIR (e.g.
                     target/debug); implies --no-build
  --cni-plugin FILE  the statically linked plugin to ship (cni-plugin/build-static.sh prints
                     its path); implies --no-build
  --save FILE        also write the image to FILE as an OCI archive (podman save --format
                     oci-archive)
EOF
}

repo=$(cd "$(dirname "$0")/../.." && pwd)
podman=${PODMAN:-podman}
tag=""
build=1
bin_dir=""
plugin=""
save=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) [ $# -ge 2 ] || { usage >&2; exit 2; }; tag=$2; shift 2 ;;
    --tag=*) tag=${1#--tag=}; shift ;;
    --no-build) build=0; shift ;;
    --bin-dir) [ $# -ge 2 ] || { usage >&2; exit 2; }; bin_dir=$2; build=0; shift 2 ;;
    --bin-dir=*) bin_dir=${1#--bin-dir=}; build=0; shift ;;
    --cni-plugin) [ $# -ge 2 ] || { usage >&2; exit 2; }; plugin=$2; build=0; shift 2 ;;
    --cni-plugin=*) plugin=${1#--cni-plugin=}; build=0; shift ;;
    --save) [ $# -ge 2 ] || { usage >&2; exit 2; }; save=$2; shift 2 ;;
    --save=*) save=${1#--save=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

# `key = "value"` from the [workspace.package] table of the workspace Cargo.toml.
workspace_field() {
  awk -v key="$1" '
    /^\[/ { in_pkg = ($0 == "[workspace.package]") }
    in_pkg && $1 == key && $2 == "=" { gsub(/"/, "", $3); print $3; exit }
  ' "$repo/Cargo.toml"
}
version=$(workspace_field version)
source_url=$(workspace_field repository)
[ -n "$version" ] || { echo "build.sh: no version in $repo/Cargo.toml [workspace.package]" >&2; exit 1; }
tag=${tag:-localhost/weft:$version}

command -v "$podman" >/dev/null 2>&1 || { echo "build.sh: $podman not found (apt-get install podman)" >&2; exit 1; }
nft=/usr/sbin/nft
[ -x "$nft" ] || { echo "build.sh: $nft not found (apt-get install nftables)" >&2; exit 1; }
# Shipped as it is, at the same path: the deploy/overlays/wireguard-userspace overlay starts it.
wireguard_go=/usr/bin/wireguard-go
[ -f "$wireguard_go" ] && [ -x "$wireguard_go" ] || { echo "build.sh: $wireguard_go not found: the image ships it for --wireguard-implementation userspace (apt-get install wireguard-go)" >&2; exit 1; }

static_build="$repo/cni-plugin/build-static.sh"
if [ "$build" = 1 ]; then
  command -v cargo >/dev/null 2>&1 || { echo "build.sh: cargo not found: build as the user who has it (cargo build --release -p weft-agent, then cni-plugin/build-static.sh), then rerun with --no-build" >&2; exit 1; }
  (cd "$repo" && cargo build --release -p weft-agent) >&2
  plugin=$(bash "$static_build")
fi
if [ -z "$bin_dir" ]; then
  bin_dir=${CARGO_TARGET_DIR:-$repo/target}/release
  [ -n "$plugin" ] || plugin=$(bash "$static_build" --print-path)
fi
[ -n "$plugin" ] || plugin=$bin_dir/weft
for b in "$bin_dir/weftd" "$bin_dir/netctl" "$plugin"; do
  [ -x "$b" ] || { echo "build.sh: $b not found: build the binaries first" >&2; exit 1; }
done
# The plugin leaves the image: weftd install-cni copies it to the node, whose own libc would
# have to match a dynamic build. Only a static one is shipped.
bash "$static_build" --check "$plugin" || { echo "build.sh: not building an image with $plugin: pass --cni-plugin with the output of cni-plugin/build-static.sh" >&2; exit 1; }

ctx=$(mktemp -d "${TMPDIR:-/tmp}/weft-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT

# The shared objects a binary loads, as absolute paths, the dynamic loader included; fails if
# one is missing. Nothing for a static binary.
shared_libs() {
  local out
  if ! out=$(LC_ALL=C ldd "$1" 2>&1); then
    case $out in
      *"not a dynamic executable"*) return 0 ;;
      *) echo "build.sh: ldd $1: $out" >&2; return 1 ;;
    esac
  fi
  if grep -q "not found" <<<"$out"; then
    echo "build.sh: $1 needs libraries this machine lacks:" >&2
    grep "not found" <<<"$out" >&2
    return 1
  fi
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out"
}

# weft/: the three binaries and the empty directories. Debug info is stripped from the copies
# (a no-op for release binaries, whose profile already strips it; symbols stay for backtraces).
install -D -m 0755 "$bin_dir/weftd" "$ctx/weft/usr/local/bin/weftd"
install -D -m 0755 "$bin_dir/netctl" "$ctx/weft/usr/local/bin/netctl"
install -D -m 0755 "$plugin" "$ctx/weft/opt/weft/bin/weft"
if command -v strip >/dev/null 2>&1; then
  strip --strip-debug "$ctx/weft/usr/local/bin/weftd" "$ctx/weft/usr/local/bin/netctl" \
    "$ctx/weft/opt/weft/bin/weft"
else
  echo "build.sh: strip not found (binutils); the binaries keep their debug info" >&2
fi
mkdir -p "$ctx/weft/etc/weft" "$ctx/weft/run/weft"

# runtime/: nft, wireguard-go (both Debian's binaries, unchanged) and every library weftd,
# netctl, nft and wireguard-go load (the plugin loads none; wireguard-go, a Go program, loads
# only libc, and none at all when it is built static), at the paths ldd reports (on a merged-/usr Debian, /lib/x86_64-linux-gnu/… and
# /lib64/ld-linux-x86-64.so.2, the loader path written in each binary), symlinks resolved to
# the files they name.
install -D -m 0755 "$nft" "$ctx/runtime$nft"
install -D -m 0755 "$wireguard_go" "$ctx/runtime$wireguard_go"
libs=$(for b in "$ctx/weft/usr/local/bin/weftd" "$ctx/weft/usr/local/bin/netctl" "$nft" "$wireguard_go"; do
  shared_libs "$b" || exit 1
done | sort -u)
for lib in $libs; do
  mkdir -p "$ctx/runtime$(dirname "$lib")"
  cp -L -p "$lib" "$ctx/runtime$lib"
done

# One timestamp on every file and directory, so the same files give the same layer digests in
# every build (nodes then keep the runtime layer across weft upgrades).
find "$ctx/runtime" "$ctx/weft" -exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} +

cp "$repo/deploy/image/Containerfile" "$ctx/Containerfile"
echo "build.sh: building $tag from $bin_dir and $plugin with $(wc -w <<<"$libs") shared libraries" >&2
"$podman" build --pull=never --file "$ctx/Containerfile" --tag "$tag" \
  --build-arg "VERSION=$version" --build-arg "SOURCE=$source_url" "$ctx" >&2

size=$("$podman" image inspect --format '{{.Size}}' "$tag")
echo "build.sh: $tag is $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e6 }') MB)" >&2
if [ -n "$save" ]; then
  rm -f "$save"
  "$podman" save --format oci-archive --output "$save" "$tag" >&2
  echo "build.sh: saved $tag to $save" >&2
fi
echo "$tag"
