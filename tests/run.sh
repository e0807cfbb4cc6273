#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests drive (dig, nsd, ldns,
# dnsmasq, iproute2, setpriv, openssl, curl, containerd, runc, iptables, libcap2-bin,
# docker-registry, musl-tools, podman, docker.io, mmdebstrap, systemd-container) from Debian's
# packages when missing (their services are not started), builds the Kubernetes parts and other Go
# tools the tests run
# (tests/cluster/control-plane.sh: from pinned Go modules, cached outside the repository; it
# installs Go from Debian, and the pinned toolchain from the module proxy, when missing) and the
# nodes' Debian root filesystem (tests/cluster/rootfs.sh, cached beside them), then runs every
# test and fuzzes each target briefly.
# Usage: tests/run.sh [cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in dig:dnsutils nsd:nsd ldns-signzone:ldnsutils ldns-keygen:ldnsutils dnsmasq:dnsmasq-base ip:iproute2 setpriv:util-linux unshare:util-linux openssl:openssl curl:curl containerd:containerd ctr:containerd runc:runc iptables:iptables setcap:libcap2-bin docker-registry:docker-registry musl-gcc:musl-tools podman:podman dockerd:docker.io mmdebstrap:mmdebstrap systemd-nspawn:systemd-container; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: missing packages ${need[*]}: run as root, or install them" >&2
    exit 1
  fi
  # A DNS package's postinst would start its service on port 53; policy-rc.d forbids that.
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# Both Cargo.lock files must match their manifests: checked here, in seconds, rather than by the
# fuzz build at the end of a long run.
cargo metadata --locked --format-version 1 >/dev/null
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null

# The Prometheus project's Python client parses /metrics in tests/metrics.rs.
python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check prometheus-client==0.21.1

# The Kubernetes control plane of tests/control_plane.rs, CoreDNS and crane for tests/e2e.rs, and
# kubelet, kube-proxy and kube-scheduler for tests/kubelet_cluster.rs (from the same go.mod, so their shared
# packages compile once; the CNI plugins from their own), built once per version into a cache
# outside the repository (a cold build takes a while; docs/testing.md, "Against a real control
# plane"); crictl and containerd 2.x for tests/containerd_cri.rs (and crictl on the cluster's nodes)
# from their own go.mod, CRI-O for tests/runtimes_pull.rs from its own. Outside CI a
# failure here only makes those tests skip, loudly; under CI it fails the run.
if [ $# -eq 0 ] && ! { tests/cluster/control-plane.sh build >/dev/null && tests/cluster/control-plane.sh build-e2e >/dev/null &&
  tests/cluster/control-plane.sh build-cri >/dev/null && tests/cluster/control-plane.sh build-crio >/dev/null &&
  tests/cluster/control-plane.sh build-node >/dev/null && tests/cluster/rootfs.sh build >/dev/null; }; then
  [ -z "${CI:-}" ] || exit 1
fi

# registry-dns's static binary as the Dockerfile builds it, for tests/kubelet_cluster.rs's image: built
# here, not from inside `cargo test`, whose environment (rustup's toolchain first on PATH,
# RUSTUP_TOOLCHAIN) makes cargo rebuild the whole release, and deploy/check.sh's identical build
# after it start over again.
if [ $# -eq 0 ]; then
  static_out="${CARGO_TARGET_DIR:-target}/deploy-check/out"
  deploy/build-static.sh "$static_out" 2>&1 | grep -Ev '^\s+(Compiling|Downloaded|Downloading)'
  export REGISTRY_DNS_STATIC_BINARY="$(cd "$static_out" && pwd)/registry-dns"
fi

cargo test --locked "$@"

# Every fuzz target for a short while over its seeds (docs/fuzzing.md); not for a chosen few tests.
# A fixed libFuzzer seed, so that CI fails for a change, not for a lucky draw: from a fresh clone the
# run repeats, and a longer local run with the same seed covers it. Random search is for long runs,
# and so are optimized builds: an unoptimized one saves CI 6 of its minutes.
if [ $# -eq 0 ]; then
  fuzz/run.sh --dev --seconds "${FUZZ_SECONDS:-20}" --seed "${FUZZ_SEED:-1}"
fi
