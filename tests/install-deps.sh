#!/usr/bin/env bash
# Installs what weft's build and tests need on a Debian machine, if it is missing:
# etcd (server + etcdctl), protoc (etcd-client's build script), iproute2, nftables, openssl,
# ping, curl and sysctl (the lab), the reference CNI plugins (portmap chaining, the benchmark
# baseline) with iptables for portmap, and podman + runc + a static busybox for the
# container-runtime end-to-end test (podman, runc and nftables also serve the image test,
# which builds deploy/image with podman build).
set -euo pipefail

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v sysctl >/dev/null 2>&1 || need+=(procps)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
[ -x /usr/lib/cni/portmap ] || need+=(containernetworking-plugins)
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
[ -x /bin/busybox ] || need+=(busybox-static)

if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing packages: ${need[*]}; run as root (sudo) to install them" >&2
    exit 1
  fi
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The Debian etcd-server package starts a system etcd on 127.0.0.1:2379; weft's tests use
# their own members on free ports, so that one is left alone.
for tool in cargo rustc; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool not found: install a Rust toolchain (rustup)" >&2; exit 1; }
done
