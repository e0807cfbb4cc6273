#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for tests/control_plane.rs and for poking at
# registry-dns by hand: etcd, kube-apiserver (TLS, Node,RBAC, ServiceAccount tokens, dual-stack
# service CIDRs) and kube-controller-manager (EndpointSlice controller, CSR signer with the cluster CA).
#
# The binaries are built from the Go modules pinned in tests/cluster/go (go.mod + go.sum, checksums
# verified, -mod=readonly), once per version, into a cache outside the repository:
# ${REGISTRY_DNS_TOOLS_CACHE:-/var/cache/registry-dns/tools}/{kubernetes-<v>,etcd-<v>}/ (and the Go
# toolchain there too, when the machine's Go is too old to fetch it itself).
#
# Usage:
#   control-plane.sh build               build (or find) the binaries; prints their two directories
#   control-plane.sh build-e2e           build (or find) CoreDNS and crane for tests/e2e.rs, from the
#                                        same go.mod (so the packages they share with Kubernetes,
#                                        client-go, grpc, protobuf..., compile once); prints their
#                                        two directories
#   control-plane.sh build-cri           build (or find) crictl (sigs.k8s.io/cri-tools) and containerd 2.x
#                                        (github.com/containerd/containerd/v2) for tests/containerd_cri.rs,
#                                        from their own go.mod in tests/cluster/containerd; prints their
#                                        two directories
#   control-plane.sh build-crio          build (or find) CRI-O (github.com/cri-o/cri-o) for
#                                        tests/runtimes_pull.rs, from its own go.mod in
#                                        tests/cluster/crio; prints its directory
#   control-plane.sh build-node          build (or find) what a real node adds, for tests/kubelet_cluster.rs:
#                                        kubelet, kube-proxy and kube-scheduler from the same go.mod, and the CNI
#                                        plugins (bridge, host-local, loopback, portmap) from
#                                        tests/cluster/cni/go.mod; prints their two directories
#   control-plane.sh start DIR           start everything, with its state (certs, etcd data, logs,
#                                        admin.kubeconfig, env) in DIR
#   control-plane.sh stop DIR            stop everything started in DIR
#   control-plane.sh start-apiserver DIR NAME PORT   a kube-apiserver named NAME on PORT against the
#                                        same etcd (NAME=apiserver PORT=its port: the main one again)
#   control-plane.sh stop-apiserver DIR NAME
#   control-plane.sh start-controller-manager DIR NAME PORT   a kube-controller-manager talking to
#                                        the kube-apiserver on PORT
#   control-plane.sh start-scheduler DIR  kube-scheduler (a kubelet's pods need one; the other tests
#                                        bind their Pods themselves)
#   control-plane.sh compact DIR         compact etcd's history up to its current revision
# Ports for start come from the environment (defaults for a by-hand run): ETCD_PORT (2379),
# ETCD_PEER_PORT (2380), APISERVER_PORT (6443); later commands read them from DIR/env. CONTROLLERS
# (start) replaces kube-controller-manager's --controllers list. APISERVER_ADDRESS (127.0.0.1) is
# where kube-apiserver listens and what it advertises: on the node network's 10.198.0.1 (node.sh
# makes it, `node.sh network`) the kubelets and kube-proxy of tests/cluster/node.sh reach it, and
# the `kubernetes` Service's endpoint is that address (the lease reconciler, as in any cluster;
# on loopback no endpoint is written, since several API servers of the tests share one etcd).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
gomod="$here/go"
cache="${REGISTRY_DNS_TOOLS_CACHE:-/var/cache/registry-dns/tools}"
k8s_version="$(awk '$1=="k8s.io/kubernetes"{print $2; exit}' "$gomod/go.mod")"
etcd_version="$(awk '$1=="go.etcd.io/etcd/server/v3"{print $2; exit}' "$gomod/go.mod")"
coredns_version="$(awk '$1=="github.com/coredns/coredns"{print $2; exit} $2=="github.com/coredns/coredns"{print $3; exit}' "$gomod/go.mod")"
crane_version="$(awk '$1=="github.com/google/go-containerregistry"{print $2; exit}' "$gomod/go.mod")"
cri_gomod="$here/containerd"
crictl_version="$(awk '$1=="sigs.k8s.io/cri-tools"{print $2; exit}' "$cri_gomod/go.mod")"
containerd2_version="$(awk '$1=="github.com/containerd/containerd/v2"{print $2; exit}' "$cri_gomod/go.mod")"
crictl_bin="$cache/crictl-$crictl_version"
crio_gomod="$here/crio"
crio_version="$(awk '$1=="require" && $2=="github.com/cri-o/cri-o"{print $3; exit}' "$crio_gomod/go.mod")"
crio_bin="$cache/crio-$crio_version"
containerd2_bin="$cache/containerd-$containerd2_version"
k8s_bin="$cache/kubernetes-$k8s_version"
etcd_bin="$cache/etcd-$etcd_version"
coredns_bin="$cache/coredns-$coredns_version"
crane_bin="$cache/crane-$crane_version"
cni_version="$(awk '$1=="github.com/containernetworking/plugins"{print $2; exit}' "$here/cni/go.mod")"
node_bin="$cache/kubernetes-node-$k8s_version"
cni_bin="$cache/cni-plugins-$cni_version"
etcd_port="${ETCD_PORT:-2379}"
etcd_peer_port="${ETCD_PEER_PORT:-2380}"
apiserver_port="${APISERVER_PORT:-6443}"
apiserver_address="${APISERVER_ADDRESS:-127.0.0.1}"
service_cidrs="10.96.0.0/16,fd00:10:96::/112"

log() { echo "control-plane.sh: $*" >&2; }

# A Go that can build the go.mod: one >= 1.21 switches to the go.mod's toolchain by itself
# (GOTOOLCHAIN=auto); an older one (Debian 12's golang-go is 1.19), or none, gets that toolchain the
# way such a switch does: the module golang.org/toolchain from the module proxy, checksum-verified,
# kept in the cache.
ensure_go() {
  if command -v go >/dev/null 2>&1 && go env GOTOOLCHAIN >/dev/null 2>&1 && [ "$(go env GOTOOLCHAIN)" != "" ]; then
    return
  fi
  local toolchain arch dir
  toolchain="$(awk '$1=="toolchain"{print $2}' "$gomod/go.mod")"
  dir="$cache/$toolchain"
  if [ ! -x "$dir/bin/go" ]; then
    if ! command -v go >/dev/null 2>&1; then
      if [ "$(id -u)" != 0 ]; then
        log "no go command: install Go >= 1.21, or run as root"
        exit 1
      fi
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go ca-certificates >/dev/null
    fi
    arch="$(go env GOARCH)"
    local tmp module
    tmp="$(mktemp -d)"
    module="$(cd "$tmp" && GOPATH="$tmp" GOFLAGS=-modcacherw go mod download -json "golang.org/toolchain@v0.0.1-$toolchain.linux-$arch" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    mkdir -p "$cache"
    cp -r "$module" "$dir.tmp"
    chmod -R u+w,a+rX "$dir.tmp"
    chmod a+x "$dir.tmp"/bin/* "$dir.tmp"/pkg/tool/*/*
    mv "$dir.tmp" "$dir"
    rm -rf "$tmp"
  fi
  export PATH="$dir/bin:$PATH"
}

# What Kubernetes' own build stamps in (hack/lib/version.sh): without it the binaries say
# v0.0.0-master, which kubectl version cannot even parse.
version_ldflags() {
  local v=${k8s_version#v} pkg
  local minor=${v#*.}
  minor=${minor%%.*}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    printf -- '-X %s.gitVersion=%s -X %s.gitMajor=%s -X %s.gitMinor=%s -X %s.gitTreeState=clean ' \
      "$pkg" "$k8s_version" "$pkg" "${v%%.*}" "$pkg" "$minor" "$pkg"
  done
}

# Runs BUILD (a function that builds into the temporary directory it is given, then moves what it
# built into the cache) unless CHECK says it is built: once per machine, under the cache's build
# lock (a run that waited finds the binaries built), the temporary directory removed whatever
# happens, so an interrupted build leaves no half cache.
build_once() {
  local check=$1 what=$2 build=$3
  "$check" && return
  mkdir -p "$cache"
  exec 9>"$cache/.build.lock"
  flock 9
  "$check" && return
  ensure_go
  local out
  out="$(mktemp -d "$cache/.build.XXXXXX")"
  trap "rm -rf '$out'" EXIT
  log "building $what into $cache (once; minutes)"
  local start=$SECONDS
  "$build" "$out"
  trap - EXIT
  rmdir "$out"
  log "built in $((SECONDS - start)) s"
}

# go_build MODULE_DIR OUT LDFLAGS [BUILD FLAGS...] PACKAGE...: one `go build` of the packages of the
# go.mod in MODULE_DIR into OUT, with the flags every build here has (the go.mod as it is,
# no paths of this machine in the binaries; static unless GO_CGO=1).
go_build() {
  local dir=$1 out=$2 ldflags=$3
  shift 3
  (cd "$dir" && GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED="${GO_CGO:-0}" nice -n 10 \
    go build -trimpath -ldflags="$ldflags" -o "$out/" "$@")
}

# install_each OUT NAME DIR [NAME DIR]...: moves each binary NAME built into OUT to a directory DIR
# of its own in the cache, in place of any older one.
install_each() {
  local out=$1
  shift
  while [ $# -gt 0 ]; do
    mkdir -p "$out/$1-dir"
    mv "$out/$1" "$out/$1-dir/$1"
    rm -rf "$2"
    mv "$out/$1-dir" "$2"
    shift 2
  done
}

built() {
  [ -x "$k8s_bin/kube-apiserver" ] && [ -x "$k8s_bin/kube-controller-manager" ] &&
    [ -x "$k8s_bin/kubectl" ] && [ -x "$etcd_bin/etcd" ]
}

# One `go build` for all four binaries, so the packages they share compile once.
build_control_plane() {
  local out=$1
  go_build "$gomod" "$out" "-s -w $(version_ldflags)" k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3
  mkdir -p "$out/k8s" "$out/etcd"
  mv "$out/kube-apiserver" "$out/kube-controller-manager" "$out/kubectl" "$out/k8s/"
  mv "$out/server" "$out/etcd/etcd" # go names a main package ending in /v3 after the element before it
  rm -rf "$k8s_bin" "$etcd_bin"
  mv "$out/k8s" "$k8s_bin"
  mv "$out/etcd" "$etcd_bin"
}

build() {
  build_once built "kubernetes $k8s_version and etcd $etcd_version" build_control_plane
}

e2e_built() {
  [ -x "$coredns_bin/coredns" ] && [ -x "$crane_bin/crane" ]
}

# CoreDNS (tests/cluster/go/coredns: coremain with the plugins kubeadm's and NodeLocal DNSCache's
# Corefiles use) and go-containerregistry's crane, in one `go build` from the control plane's go.mod.
build_e2e_tools() {
  local out=$1
  go_build "$gomod" "$out" "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$coredns_version" \
    ./coredns github.com/google/go-containerregistry/cmd/crane
  install_each "$out" coredns "$coredns_bin" crane "$crane_bin"
}

build_e2e() {
  build_once e2e_built "coredns $coredns_version and crane $crane_version" build_e2e_tools
}

cri_built() {
  [ -x "$crictl_bin/crictl" ] && [ -x "$containerd2_bin/containerd" ]
}

# crictl and containerd 2.x, from tests/cluster/containerd/go.mod (their own module: MVS would move
# the control plane's dependencies otherwise). containerd without cgo and without the btrfs,
# devmapper and zfs snapshotters, which need C headers (the tests use the native snapshotter).
build_cri_tools() {
  local out=$1
  go_build "$cri_gomod" "$out" \
    "-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd2_version -X sigs.k8s.io/cri-tools/pkg/version.Version=$crictl_version" \
    -tags "no_btrfs no_devmapper no_zfs" sigs.k8s.io/cri-tools/cmd/crictl github.com/containerd/containerd/v2/cmd/containerd
  install_each "$out" crictl "$crictl_bin" containerd "$containerd2_bin"
}

build_cri() {
  build_once cri_built "crictl $crictl_version and containerd $containerd2_version" build_cri_tools
}

crio_built() {
  [ -x "$crio_bin/crio" ] && [ -x "$crio_bin/pinns" ]
}

# CRI-O (and its pinns) with cgo but none of the C libraries it can use: containers/image's own OpenPGP instead of
# gpgme, no btrfs or devicemapper graph drivers, no seccomp (a CRI pull needs none of them).
build_crio_tools() {
  local out=$1
  GO_CGO=1 go_build "$crio_gomod" "$out" "-s -w" \
    -tags "containers_image_openpgp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper" github.com/cri-o/cri-o/cmd/crio
  # pinns, CRI-O's C helper that pins a pod's namespaces (its startup checks that it exists), from
  # the same module's source, as its Makefile builds it.
  local src
  src="$(cd "$crio_gomod" && GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' github.com/cri-o/cri-o)/pinns/src"
  cc -std=c99 -Os -static -s -o "$out/pinns" "$src"/*.c
  mkdir -p "$out/crio-dir"
  mv "$out/crio" "$out/pinns" "$out/crio-dir/"
  rm -rf "$crio_bin"
  mv "$out/crio-dir" "$crio_bin"
}

build_crio() {
  build_once crio_built "CRI-O $crio_version" build_crio_tools
}

node_built() {
  [ -x "$node_bin/kubelet" ] && [ -x "$node_bin/kube-proxy" ] && [ -x "$node_bin/kube-scheduler" ] && [ -x "$cni_bin/bridge" ] &&
    [ -x "$cni_bin/host-local" ] && [ -x "$cni_bin/loopback" ] && [ -x "$cni_bin/portmap" ]
}

# kubelet, kube-proxy and kube-scheduler in one `go build` from the control plane's go.mod (most of their
# packages are already in Go's build cache from it); the CNI plugins from their own go.mod, so that
# MVS cannot move a module the Kubernetes binaries use.
build_node_tools() {
  local out=$1
  mkdir -p "$out/node" "$out/cni"
  go_build "$gomod" "$out/node" "-s -w $(version_ldflags)" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kube-scheduler
  local plugins=github.com/containernetworking/plugins/plugins
  go_build "$here/cni" "$out/cni" "-s -w" \
    $plugins/main/bridge $plugins/ipam/host-local $plugins/main/loopback $plugins/meta/portmap
  rm -rf "$node_bin" "$cni_bin"
  mv "$out/node" "$node_bin"
  mv "$out/cni" "$cni_bin"
}

build_node() {
  build_once node_built "kubelet, kube-proxy, kube-scheduler $k8s_version and CNI plugins $cni_version" build_node_tools
}

# The ports start chose, for the commands that follow it.
load_env() {
  local dir=$1
  etcd_port="$(sed -n 's/^ETCD_PORT=//p' "$dir/env")"
  apiserver_port="$(sed -n 's/^APISERVER_PORT=//p' "$dir/env")"
  apiserver_address="$(sed -n 's/^APISERVER_ADDRESS=//p' "$dir/env")"
  apiserver_address="${apiserver_address:-127.0.0.1}"
}

# A CA, the API server's serving cert (loopback names, its address and the first service IP), the admin client
# cert, and the ServiceAccount signing key.
make_certs() {
  local dir=$1
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=registry-dns-test-ca" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$dir/apiserver.key" -out "$dir/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:::1,IP:%s,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' "$apiserver_address" >"$dir/apiserver.ext"
  openssl x509 -req -in "$dir/apiserver.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 2 -extfile "$dir/apiserver.ext" -out "$dir/apiserver.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=admin" \
    -keyout "$dir/admin.key" -out "$dir/admin.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$dir/admin.ext"
  openssl x509 -req -in "$dir/admin.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 2 -extfile "$dir/admin.ext" -out "$dir/admin.crt" 2>/dev/null
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
}

kubeconfig() {
  local dir=$1 port=$2
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://$apiserver_address:$port
    certificate-authority: $dir/ca.crt
users:
- name: admin
  user:
    client-certificate: $dir/admin.crt
    client-key: $dir/admin.key
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
EOF
}

# Waits until URL answers 200 (with the admin cert), or fails after 60 s.
wait_healthy() {
  local dir=$1 url=$2 name=$3 pid=$4
  for _ in $(seq 600); do
    if curl -fsS --cacert "$dir/ca.crt" --cert "$dir/admin.crt" --key "$dir/admin.key" "$url" >/dev/null 2>&1; then
      return
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited; its log:"
      tail -n 30 "$dir/$name.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  log "$name not healthy after 60 s; its log:"
  tail -n 30 "$dir/$name.log" >&2
  exit 1
}

# kubeadm's --kubelet-preferred-address-types: a kubelet (tests/cluster/node.sh) is reached by its
# node IP for `kubectl logs`, not by a hostname no resolver knows.
start_apiserver() {
  local dir=$1 name=$2 port=$3 reconciler=lease
  [ "$apiserver_address" = 127.0.0.1 ] && reconciler=none
  "$k8s_bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address="$apiserver_address" --advertise-address="$apiserver_address" --secure-port="$port" \
    --tls-cert-file="$dir/apiserver.crt" --tls-private-key-file="$dir/apiserver.key" \
    --client-ca-file="$dir/ca.crt" \
    --authorization-mode=Node,RBAC \
    --service-account-key-file="$dir/sa.pub" --service-account-signing-key-file="$dir/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range="$service_cidrs" \
    --endpoint-reconciler-type="$reconciler" --allow-privileged=true --profiling=false \
    --kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname \
    >"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
  wait_healthy "$dir" "https://$apiserver_address:$port/readyz" "$name" "$(cat "$dir/$name.pid")"
}

stop_pid() {
  local file=$1
  [ -f "$file" ] || return 0
  local pid
  pid="$(cat "$file")"
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

default_controllers=endpointslice-controller,serviceaccount-controller,namespace-controller,garbage-collector-controller,certificatesigningrequest-signing-controller,certificatesigningrequest-approving-controller

# kube-scheduler, with the admin's credentials (its own RBAC role would do; this is a test cluster).
start_scheduler() {
  local dir=$1
  kubeconfig "$dir" "$apiserver_port" >"$dir/scheduler.kubeconfig"
  "$node_bin/kube-scheduler" \
    --kubeconfig="$dir/scheduler.kubeconfig" --authentication-kubeconfig="$dir/scheduler.kubeconfig" \
    --authorization-kubeconfig="$dir/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false \
    >"$dir/scheduler.log" 2>&1 &
  echo $! >"$dir/scheduler.pid"
}

# The EndpointSlice controller (what the tests need), the ServiceAccount and namespace
# controllers and the garbage collector (what a namespace's lifecycle needs), and the CSR signer and
# approver with the cluster CA.
start_controller_manager() {
  local dir=$1 name=$2 port=$3 controllers
  controllers="$(sed -n 's/^CONTROLLERS=//p' "$dir/env" 2>/dev/null || true)"
  controllers="${controllers:-${CONTROLLERS:-$default_controllers}}"
  kubeconfig "$dir" "$port" >"$dir/$name.kubeconfig"
  "$k8s_bin/kube-controller-manager" \
    --kubeconfig="$dir/$name.kubeconfig" --authentication-kubeconfig="$dir/$name.kubeconfig" \
    --authorization-kubeconfig="$dir/$name.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false \
    --controllers="$controllers" \
    --service-account-private-key-file="$dir/sa.key" --root-ca-file="$dir/ca.crt" \
    --cluster-signing-cert-file="$dir/ca.crt" --cluster-signing-key-file="$dir/ca.key" \
    --service-cluster-ip-range="$service_cidrs" \
    >"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
}

# Compacts etcd up to its current revision through its JSON gateway (no etcdctl needed).
compact() {
  local dir=$1 revision
  revision="$(curl -fsS -X POST "http://127.0.0.1:$etcd_port/v3/kv/range" -d '{"key":"AA==","limit":1}' |
    sed -n 's/.*"revision":"\([0-9]*\)".*/\1/p')"
  curl -fsS -X POST "http://127.0.0.1:$etcd_port/v3/kv/compaction" -d "{\"revision\":\"$revision\",\"physical\":true}" >/dev/null
  log "compacted etcd to revision $revision"
}

start() {
  local dir=$1
  build
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  make_certs "$dir"
  kubeconfig "$dir" "$apiserver_port" >"$dir/admin.kubeconfig"
  "$etcd_bin/etcd" --data-dir="$dir/etcd-data" --name=test \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster="test=http://127.0.0.1:$etcd_peer_port" \
    --unsafe-no-fsync --log-level=warn \
    >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  wait_healthy "$dir" "http://127.0.0.1:$etcd_port/health" etcd "$(cat "$dir/etcd.pid")"
  start_apiserver "$dir" apiserver "$apiserver_port"
  start_controller_manager "$dir" controller-manager "$apiserver_port"
  cat >"$dir/env" <<EOF
CONTROLLERS=${CONTROLLERS:-$default_controllers}
KUBECONFIG=$dir/admin.kubeconfig
BIN=$k8s_bin
ETCD_BIN=$etcd_bin
ETCD_PORT=$etcd_port
ETCD_PEER_PORT=$etcd_peer_port
APISERVER_PORT=$apiserver_port
APISERVER_ADDRESS=$apiserver_address
EOF
  log "up: export KUBECONFIG=$dir/admin.kubeconfig; kubectl is $k8s_bin/kubectl"
}

stop() {
  local dir=$1
  for f in "$dir"/*.pid; do
    [ "$(basename "$f")" = etcd.pid ] || stop_pid "$f"
  done
  stop_pid "$dir/etcd.pid"
}

case "${1:-}" in
  build)
    build
    echo "$k8s_bin $etcd_bin"
    ;;
  build-e2e)
    build_e2e
    echo "$coredns_bin $crane_bin"
    ;;
  build-cri)
    build_cri
    echo "$crictl_bin $containerd2_bin"
    ;;
  build-crio)
    build_crio
    echo "$crio_bin"
    ;;
  build-node)
    build_node
    echo "$node_bin $cni_bin"
    ;;
  start) start "$2" ;;
  stop) stop "$2" ;;
  start-apiserver) load_env "$2" && start_apiserver "$(cd "$2" && pwd)" "$3" "$4" ;;
  stop-apiserver | stop-controller-manager) stop_pid "$2/$3.pid" ;;
  start-controller-manager) load_env "$2" && start_controller_manager "$(cd "$2" && pwd)" "$3" "$4" ;;
  start-scheduler) load_env "$2" && start_scheduler "$(cd "$2" && pwd)" ;;
  compact) load_env "$2" && compact "$2" ;;
  *)
    sed -n '2,45p' "$0" >&2
    exit 2
    ;;
esac
