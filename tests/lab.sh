#!/usr/bin/env bash
# The multi-host lab (README command 1): builds the binaries, installs missing runtime tools,
# then runs weft-lab, which starts a real etcd and N hosts (default 3) as network namespaces
# joined by a switch namespace, runs weftd on each host, adds two pods per host through the
# real CNI plugin, pings every pod pair (and every other host), prints the result and
# `netctl leases`, and tears everything down. All addresses live only inside the lab's
# namespaces; the machine's own network is not touched.
#
#   sudo bash tests/lab.sh [--hosts N] [--backend vxlan|host-gw] [--direct-routing]
#                          [--ip-masq] [--pods-per-host N] [--keep]
#                          [--ipv6-network CIDR [--ipv6-only]]   # dual-stack / IPv6-only
#   sudo bash tests/lab.sh --teardown      # end a lab left running by --keep
#
# Exit status: 0 when every probe answered, 1 when one did not, 2 for usage errors.
# Set WEFT_LAB_LOG=debug for more progress detail.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "the lab creates network namespaces and needs root: sudo bash tests/lab.sh $*" >&2
  exit 2
fi

# Debug binaries: the same build tests/run.sh uses, so the two share one compile.
bin_dir="${CARGO_TARGET_DIR:-$PWD/target}/debug"
export WEFT_BIN_DIR="$bin_dir"

for arg in "$@"; do
  if [ "$arg" = --teardown ] && [ -x "$bin_dir/weft-lab" ]; then
    exec "$bin_dir/weft-lab" "$@"
  fi
done

bash tests/install-deps.sh
cargo build --workspace --bins >&2
exec "$bin_dir/weft-lab" "$@"
