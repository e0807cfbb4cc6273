#!/usr/bin/env bash
# Builds a Go tool pinned by deploy/check/go/NAME/go.mod (its `tool` line; go.sum verified,
# -mod=readonly), once per version, into a cache outside the repository that later runs and other
# worktrees reuse, and prints the binary's path. deploy/check.sh builds helm and actionlint with
# it; tests/kubelet_cluster.rs runs the same helm.
#
#   deploy/check/go/build.sh NAME     -> ${REGISTRY_DNS_TOOLS_CACHE:-/var/cache/registry-dns/tools}/NAME-VERSION/NAME
set -euo pipefail
name=${1:?usage: deploy/check/go/build.sh NAME}
dir="$(cd "$(dirname "$0")/$name" && pwd)"
cache=${REGISTRY_DNS_TOOLS_CACHE:-/var/cache/registry-dns/tools}
command -v go >/dev/null || { echo "build.sh: go is needed to build $name (https://go.dev/dl)" >&2; exit 1; }
pkg=$(awk '$1=="tool"{print $2; exit}' "$dir/go.mod")
version=$(cd "$dir" && go list -mod=readonly -f '{{.Module.Version}}' "$pkg")
bin=$cache/$name-$version/$name
if [ ! -x "$bin" ]; then
    mkdir -p "$(dirname "$bin")"
    # One build per tool at a time: deploy/check.sh and a test may both want it first.
    exec 9>"$cache/.build-$name.lock"
    flock 9
    if [ ! -x "$bin" ]; then
        t0=$(date +%s)
        (cd "$dir" && nice -n 10 go build -mod=readonly -buildvcs=false -trimpath -ldflags='-s -w' -o "$bin.tmp" "$pkg")
        mv "$bin.tmp" "$bin"
        echo "  built $name $version in $(( $(date +%s) - t0 ))s: $bin" >&2
    fi
fi
echo "$bin"
