#!/usr/bin/env bash
# The Debian root filesystem that tests/cluster/node.sh boots with systemd as PID 1: a node as most
# clusters run them (systemd, systemd-resolved with its stub on 127.0.0.53, systemd-networkd, D-Bus,
# containerd and runc, iptables), built by mmdebstrap from Debian's packages, the same source apt
# uses on this machine.
#
# Built once per package list (and per version of this script) as a tar in the cache of the Go
# tools, ${REGISTRY_DNS_TOOLS_CACHE:-/var/cache/registry-dns/tools}/rootfs-<hash>.tar (a tar keeps
# its owners and modes wherever the cache is restored), and unpacked by root into
# ${REGISTRY_DNS_NODES_DIR:-/var/lib/registry-dns}/rootfs-<hash>/. Nodes never write into the tree:
# node.sh mounts it as the lower layer of an overlay per node.
#
# Usage: rootfs.sh build     build (or find) the tree; prints its directory
set -euo pipefail

cache="${REGISTRY_DNS_TOOLS_CACHE:-/var/cache/registry-dns/tools}"
unpacked="${REGISTRY_DNS_NODES_DIR:-/var/lib/registry-dns}"
# What a node needs: systemd and its resolver and network manager, D-Bus for resolvectl and
# systemctl, the container runtime, and what the kubelet and kube-proxy call (iptables, conntrack,
# mount tools, nsenter in util-linux). procps and iproute2 for node setup (pgrep, ip).
packages=systemd,systemd-resolved,dbus,containerd,runc,iptables,conntrack,iproute2,procps,ca-certificates
# What makes the tree a node's rather than a chroot's, run by mmdebstrap on the finished tree
# ($1): /etc/resolv.conf is resolved's stub file (as Ubuntu and Fedora ship it); no console to log
# in on and no daily apt jobs; networkd and resolved start at boot; containerd only once node.sh
# has written its configuration.
customize='ln -sf ../run/systemd/resolve/stub-resolv.conf "$1/etc/resolv.conf";
  rm -f "$1"/etc/systemd/system/getty.target.wants/* "$1"/etc/systemd/system/timers.target.wants/*;
  systemctl --root="$1" --quiet enable systemd-networkd.service systemd-resolved.service;
  systemctl --root="$1" --quiet disable containerd.service'
key="$( { echo "$packages"; cat "$0"; } | sha256sum | cut -c1-12)"
tar="$cache/rootfs-$key.tar"
tree="$unpacked/rootfs-$key"

log() { echo "rootfs.sh: $*" >&2; }

build() {
  if [ -f "$tree/.complete" ]; then
    echo "$tree"
    return
  fi
  mkdir -p "$cache" "$unpacked"
  exec 9>"$cache/.rootfs.lock"
  flock 9
  if [ -f "$tree/.complete" ]; then
    echo "$tree"
    return
  fi
  if [ ! -f "$tar" ]; then
    command -v mmdebstrap >/dev/null || { log "mmdebstrap is missing (tests/run.sh installs it)"; exit 1; }
    log "building a Debian bookworm root filesystem into $tar (once; about a minute)"
    # The packages' services are the node's own, started by its systemd at boot: none runs on this
    # machine (mmdebstrap installs with a policy-rc.d that forbids it).
    mmdebstrap --quiet --variant=minbase --format=tar --include="$packages" --customize-hook="$customize" \
      bookworm "$tar.partial" >&2
    mv "$tar.partial" "$tar"
  fi
  local out
  out="$(mktemp -d "$unpacked/.rootfs.XXXXXX")"
  tar -C "$out" --numeric-owner -xf "$tar"
  touch "$out/.complete"
  rm -rf "$tree"
  mv "$out" "$tree"
  echo "$tree"
}

case "${1:-}" in
  build) build ;;
  *)
    sed -n '2,13p' "$0" >&2
    exit 2
    ;;
esac
