#!/usr/bin/env bash
# The multi-host lab (README command 1): checks its arguments, installs what the lab needs if
# it is missing, builds the binaries, then runs weft-lab, which starts a real etcd and N hosts
# (default 3) as network namespaces joined by a switch namespace, runs weftd on each host,
# adds two pods per host through the real CNI plugin, pings every pod pair (and every other
# host) per address family, prints the result and `netctl leases`, and tears everything down
# (after a failure it keeps the logs and says where). All addresses live only inside the
# lab's namespaces; the machine's own network is not touched.
#
#   sudo bash tests/lab.sh [--hosts N] [--backend vxlan|host-gw|wireguard] [--direct-routing]
#                          [--ip-masq] [--pods-per-host N] [--keep] [--name NAME]
#                          [--ipv6-network CIDR [--ipv6-only]]   # dual-stack / IPv6-only
#   sudo bash tests/lab.sh --probe [NAME]      # ping a lab left running by --keep again
#   sudo bash tests/lab.sh --teardown [NAME]   # end it
#   bash tests/lab.sh --help                   # every flag; needs neither root nor packages
#
# The arguments are checked first by weft-lab-args (tests/lab-cli: the same flags as
# weft-lab, in a crate that builds without protoc), so --help and a mistyped flag install and
# build nothing. Then, as root: `tests/install-deps.sh --lab` (etcd, protoc for the build,
# iproute2, nftables, ping, curl, sysctl, wireguard-go and wg), the workspace binaries, weft-lab.
#
# Exit status: 0 when every probe answered, 1 when one did not, 2 for usage errors.
# Set WEFT_LAB_LOG=debug for more progress detail.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a Rust toolchain (rustup), then run tests/lab.sh again" >&2
  exit 1
fi
# Prints the help (then there is nothing more to do), a usage error (exit 2), or the action.
action=$(cargo run -q -p weft-lab-cli --bin weft-lab-args -- "$@") || exit $?
case "$action" in
  run | probe | teardown) ;;
  *) printf '%s\n' "$action"; exit 0 ;;
esac

if [ "$(id -u)" != 0 ]; then
  echo "the lab creates network namespaces and needs root: sudo bash tests/lab.sh $*" >&2
  exit 2
fi

# Debug binaries: the same build tests/run.sh uses, so the two share one compile.
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
bin_dir="$target_dir/debug"
# weft-lab finds the other binaries here, and prints commands that call this script again.
export WEFT_BIN_DIR="$bin_dir" WEFT_LAB_SCRIPT="$PWD/tests/lab.sh"

# --probe and --teardown act on a lab that an earlier run built, with its binaries.
if [ "$action" != run ] && [ -x "$bin_dir/weft-lab" ]; then
  exec "$bin_dir/weft-lab" "$@"
fi

bash tests/install-deps.sh --lab
cargo build --workspace --bins >&2
exec "$bin_dir/weft-lab" "$@"
