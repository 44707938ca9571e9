#!/usr/bin/env bash
# Runs weftd against a real local etcd: starts etcd on a free loopback port with a temporary
# data directory, stores a network config, starts N weftd agents (default 3) as simulated
# nodes on the loopback interface, waits until each is ready, prints `netctl leases` and each
# node's subnet.env, then stops everything it started. Nothing outside loopback is touched.
#
#   sudo bash tests/try-weftd.sh [--nodes N] [--keep]
#
# (The multi-host lab in network namespaces replaces this once the data plane lands.)
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=3
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "usage: $0 [--nodes N] [--keep]" >&2; exit 2 ;;
  esac
done

bash tests/install-deps.sh
cargo build --release -p weft-agent --bins >&2
bin=target/release

work=$(mktemp -d /tmp/weft-try.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
if [ "$keep" = 0 ]; then trap cleanup EXIT; fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

client_port=$(free_port); peer_port=$(free_port)
endpoint="http://127.0.0.1:$client_port"
etcd --name try --data-dir "$work/etcd" \
  --listen-client-urls "$endpoint" --advertise-client-urls "$endpoint" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "try=http://127.0.0.1:$peer_port" --log-level warn >"$work/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$endpoint" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done
ETCDCTL_API=3 etcdctl --endpoints "$endpoint" put /coreos.com/network/config \
  '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}' >/dev/null
echo "etcd on $endpoint, network config stored" >&2

ports=()
for i in $(seq "$nodes"); do
  port=$(free_port); ports+=("$port")
  "$bin/weftd" --etcd-endpoints "$endpoint" --node-name "node-$i" --iface lo \
    --public-ip "192.0.2.$i" --subnet-file "$work/node-$i/subnet.env" \
    --healthz-ip 127.0.0.1 --healthz-port "$port" >"$work/weftd-$i.log" 2>&1 &
  pids+=($!)
done
for i in $(seq "$nodes"); do
  port=${ports[$((i-1))]}
  for _ in $(seq 200); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.05
  done
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { echo "node-$i not ready; log:" >&2; cat "$work/weftd-$i.log" >&2; exit 1; }
done

echo
echo "\$ netctl leases"
"$bin/netctl" --etcd-endpoints "$endpoint" leases
echo
for i in $(seq "$nodes"); do
  echo "node-$i subnet.env:"; sed 's/^/  /' "$work/node-$i/subnet.env"
done
if [ "$keep" = 1 ]; then
  echo
  echo "left running (pids ${pids[*]}); etcd at $endpoint; files in $work"
  echo "stop with: kill ${pids[*]}; rm -rf $work"
fi
