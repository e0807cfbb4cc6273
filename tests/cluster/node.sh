#!/usr/bin/env bash
# A real Kubernetes node for tests/kubelet_node.rs (and for poking by hand): kubelet (built by
# `control-plane.sh build-node`), Debian's containerd with its CRI plugin and runc, and the CNI
# plugins bridge, host-local, loopback and portmap, joined to a control plane that
# control-plane.sh started. The node lives in namespaces of its own, so that the host is untouched
# and what node setup changes on "the node" can be looked at and undone:
#   network  its own netns NETNS: a veth to the host (node IP 10.198.0.2, host end 10.198.0.1, no
#            default route: pods and the node reach nothing beyond the host's end), `kube-ipvs0`
#            carrying the `kubernetes` Service's 10.96.0.1 (the caller relays 10.96.0.1:443 to the
#            API server: there is no kube-proxy), and cni0 with the pods (10.244.0.0/24).
#   mount    /etc is an overlay on the host's /etc whose upper layer is DIR/etc (the node's own
#            resolv.conf, containerd and CNI configuration; whatever node setup writes lands
#            there); /var/lib, /var/log and /run are DIR's; /proc and /sys are the node's.
#   pid, uts the node's init is PID 1 (what node setup's `nsenter --target 1` enters), hostname
#            NODE_NAME.
#   cgroups  v1 or v2 as the host has them, under a cgroup root of the node's own (kubelet's
#            --cgroup-root, cgroupfs driver), removed on stop.
# The kernel tunables the kubelet insists on setting (vm.overcommit_memory, kernel.panic...) are
# not namespaced: the node sees files with the values it wants bound over them in /proc/sys, so
# that it leaves the host's alone.
#
# Usage:
#   node.sh start DIR CONTROL_PLANE_DIR IMAGES_DIR   start the node with its state in DIR; imports
#                                        IMAGES_DIR/*.tar into containerd (namespace k8s.io) first;
#                                        removes the netns of a node whose run was killed
#   node.sh exec DIR COMMAND...          COMMAND on the node (its namespaces)
#   node.sh stop DIR                     stop the node (its init and every process under it), remove
#                                        its network namespace and cgroups
# Environment for start: NODE_NAME (node-1), NETNS (rdns-node-<pid>); the binaries come from
# control-plane.sh build and build-node.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
node_ip=10.198.0.2
host_ip=10.198.0.1
kubernetes_service=10.96.0.1
pod_cidr=10.244.0.0/24

log() { echo "node.sh: $*" >&2; }

# What the kubelet writes into these files (pkg/kubelet/cm/container_manager_linux.go
# setupKernelTunables) unless they already hold it.
kernel_tunables="vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000"

# The node's configuration files, in DIR/etc (the upper layer of its /etc).
write_config() {
  local dir=$1 cp_dir=$2 cni_bin=$3 name=$4
  mkdir -p "$dir/etc/kubernetes/pki" "$dir/etc/containerd/certs.d" "$dir/etc/cni/net.d" \
    "$dir/var/lib/kubelet" "$dir/var/log" "$dir/run" "$dir/overlay-work" "$dir/sysctl"
  # The node's own resolver configuration, before node setup: a resolver on the node.
  printf 'nameserver 127.0.0.1\noptions timeout:2 attempts:2\n' >"$dir/etc/resolv.conf"
  printf '127.0.0.1 localhost\n%s %s\n' "$node_ip" "$name" >"$dir/etc/hosts"
  echo "$name" >"$dir/etc/hostname"

  # The kubelet's client certificate: a node identity, which the Node authorizer and the
  # NodeRestriction admission plugin check.
  local pki=$dir/etc/kubernetes/pki
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:nodes/CN=system:node:$name" \
    -keyout "$pki/kubelet.key" -out "$pki/kubelet.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$pki/kubelet.ext"
  openssl x509 -req -in "$pki/kubelet.csr" -CA "$cp_dir/ca.crt" -CAkey "$cp_dir/ca.key" -CAcreateserial \
    -days 2 -extfile "$pki/kubelet.ext" -out "$pki/kubelet.crt" 2>/dev/null
  cp "$cp_dir/ca.crt" "$pki/ca.crt"
  cat >"$dir/etc/kubernetes/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "https://$kubernetes_service:443", certificate-authority: /etc/kubernetes/pki/ca.crt}
users:
- name: kubelet
  user: {client-certificate: /etc/kubernetes/pki/kubelet.crt, client-key: /etc/kubernetes/pki/kubelet.key}
contexts:
- name: test
  context: {cluster: test, user: kubelet}
current-context: test
EOF
  # Anonymous requests with AlwaysAllow: the kubelet's port is reachable from the host's end of the
  # veth only, and `kubectl logs` or `exec` by hand (the API server has no kubelet client
  # certificate) need it. The test reads pod logs from the node's files instead.
  cat >"$dir/etc/kubernetes/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /$(cgroup_root "$dir")
failCgroupV1: false
failSwapOn: false
address: $node_ip
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
# Never collect the imported images (nothing could pull them again) nor evict on a busy disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 1Mi, nodefs.available: 1%, imagefs.available: 1%}
serializeImagePulls: false
EOF
  # containerd 1.6's CRI plugin: runc without systemd, CNI from the cache, registries from certs.d
  # (the hosts.toml files that node setup writes), our pause image as the sandbox. Where root lacks
  # CAP_SYS_RESOURCE (these test machines), no process may lower its oom_score_adj, and runc would
  # fail every sandbox (-998) and critical pod (-997): containerd then clamps them at its own.
  local restrict_oom=false
  if ! can_lower_oom_score; then
    restrict_oom=true
    log "root lacks CAP_SYS_RESOURCE here: containerd clamps the pods' oom_score_adj at its own (restrict_oom_score_adj)"
  fi
  if [ "$(stat -f -c %T /sys/fs/cgroup)" != cgroup2fs ]; then
    log "cgroup v1 here: the kubelet runs with failCgroupV1: false"
  fi
  cat >"$dir/etc/containerd/config.toml" <<EOF
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  restrict_oom_score_adj = $restrict_oom
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni_bin"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "/etc/containerd/certs.d"
EOF
  cat >"$dir/etc/cni/net.d/10-pods.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "pods",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  local t
  for t in $kernel_tunables; do
    echo "${t#*=}" >"$dir/sysctl/$(echo "${t%%=*}" | tr / .)"
  done
}

# Whether this process may lower an oom_score_adj (CAP_SYS_RESOURCE, bit 24 of CapEff).
can_lower_oom_score() {
  local eff
  eff="$(awk '$1=="CapEff:"{print $2}' /proc/self/status)"
  (( (16#$eff >> 24) & 1 ))
}

# The node's cgroup root (one per DIR, so that a leftover never collides with a new node).
cgroup_root() {
  echo "registry-dns-node-$(echo "$1" | md5sum | cut -c1-8)"
}

# Every cgroup hierarchy mounted on the host (v1 controllers, v1 named ones, v2).
cgroup_mounts() {
  awk '$3=="cgroup" || $3=="cgroup2" {print $2}' /proc/self/mounts
}

make_cgroups() {
  local root=$1 m
  for m in $(cgroup_mounts); do
    mkdir -p "$m/$root"
    # A v1 cpuset takes no task until it has cpus and mems; give it its parent's.
    if [ -f "$m/$root/cpuset.cpus" ] && [ -z "$(cat "$m/$root/cpuset.cpus")" ]; then
      cat "$m/cpuset.cpus" >"$m/$root/cpuset.cpus"
      cat "$m/cpuset.mems" >"$m/$root/cpuset.mems"
    fi
  done
}

# Deepest first; a cgroup whose processes are still exiting is tried again for 10 s.
remove_cgroups() {
  local root=$1 m
  for _ in $(seq 100); do
    local left=0
    for m in $(cgroup_mounts); do
      [ -d "$m/$root" ] || continue
      find "$m/$root" -depth -type d -exec rmdir {} \; 2>/dev/null || left=1
    done
    [ "$left" = 0 ] && return
    sleep 0.1
  done
  log "cgroups under $root not removed"
}

veth_name() {
  echo "rdn$(echo "$1" | md5sum | cut -c1-8)"
}

# Every node uses the same addresses, so a node left behind by a run that was killed before its
# `stop` (its veth still holds host_ip) would take the new node's traffic: the API server would
# reach the dead node's netns and `kubectl logs` get "connection refused". A node netns with no
# process left is such a leftover and is removed; one with processes is a live node, and an error.
clear_leftover_nodes() {
  local ns
  for ns in $(ip netns list | awk '$1 ~ /^rdns-node-/ {print $1}'); do
    if [ -n "$(ip netns pids "$ns")" ]; then
      log "a node is still running in netns $ns and holds $host_ip: stop it first (node.sh stop ITS_DIR)"
      exit 1
    fi
    log "removing netns $ns, left behind by a node that was never stopped"
    ip netns del "$ns"
  done
  # The kernel removes a deleted netns's veth (and its host end's address) asynchronously.
  local holder
  for _ in $(seq 50); do
    holder=$(ip -br addr show | awk -v ip="$host_ip/" '{ for (i = 3; i <= NF; i++) if (index($i, ip) == 1) print $1 }')
    [ -z "$holder" ] && return
    sleep 0.1
  done
  log "$host_ip is already on a host interface ($holder): remove it first"
  exit 1
}

start() {
  local dir=$1 cp_dir=$2 images=$3
  local name=${NODE_NAME:-node-1} netns=${NETNS:-rdns-node-$$}
  local bins k8s_bin node_bin cni_bin
  clear_leftover_nodes
  read -r k8s_bin _ < <("$here/control-plane.sh" build)
  read -r node_bin cni_bin < <("$here/control-plane.sh" build-node)
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  cp_dir="$(cd "$cp_dir" && pwd)"
  images="$(cd "$images" && pwd)"
  write_config "$dir" "$cp_dir" "$cni_bin" "$name"
  printf 'NETNS=%s\nNODE_NAME=%s\nCGROUP_ROOT=%s\nKUBELET=%s\nKUBECTL=%s\n' \
    "$netns" "$name" "$(cgroup_root "$dir")" "$node_bin/kubelet" "$k8s_bin/kubectl" >"$dir/env"

  local veth
  veth="$(veth_name "$dir")"
  ip netns add "$netns"
  ip link add "$veth" type veth peer name eth0 netns "$netns"
  ip addr add "$host_ip/30" dev "$veth"
  ip link set "$veth" up
  ip -n "$netns" link set lo up
  ip -n "$netns" addr add "$node_ip/30" dev eth0
  ip -n "$netns" link set eth0 up
  # kube-proxy's IPVS dummy device; an ifb where the kernel has no dummy interfaces.
  if ! ip -n "$netns" link add kube-ipvs0 type dummy 2>/dev/null; then
    log "no dummy interfaces in this kernel (CONFIG_DUMMY): kube-ipvs0 is an ifb, as registry-dns0 will be"
    ip -n "$netns" link add kube-ipvs0 type ifb
  fi
  ip -n "$netns" addr add "$kubernetes_service/32" dev kube-ipvs0
  ip -n "$netns" link set kube-ipvs0 up
  ip netns exec "$netns" sysctl -qw net.ipv4.ip_forward=1
  make_cgroups "$(cgroup_root "$dir")"

  # --kill-child: when unshare dies, so does the node's init, and with it every process of the node.
  nsenter --net="/run/netns/$netns" unshare --mount --pid --uts --ipc --fork --kill-child \
    --propagation private --mount-proc \
    bash "$here/node.sh" init "$dir" "$images" "$node_bin/kubelet" >"$dir/node.log" 2>&1 &
  echo $! >"$dir/node.pid"
  for _ in $(seq 600); do
    [ -e "$dir/kubelet.started" ] && { log "up: $name in $netns, state in $dir"; return; }
    if ! kill -0 "$(cat "$dir/node.pid")" 2>/dev/null; then
      log "the node's init exited; its log:"
      tail -n 30 "$dir/node.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  log "kubelet not started after 60 s; the node's log:"
  tail -n 30 "$dir/node.log" >&2
  exit 1
}

# PID 1 of the node: its mounts, then containerd (with the images) and the kubelet.
init() {
  local dir=$1 images=$2 kubelet=$3 t
  hostname "$(cat "$dir/etc/hostname")"
  mount --make-rprivate /
  # This netns's /sys (its interfaces), with the host's cgroup hierarchies moved over to it.
  mkdir -p "$dir/.cgroup"
  mount --rbind /sys/fs/cgroup "$dir/.cgroup"
  mount -t sysfs sysfs /sys
  mount --move "$dir/.cgroup" /sys/fs/cgroup
  mount -t overlay overlay -o "lowerdir=/etc,upperdir=$dir/etc,workdir=$dir/overlay-work" /etc
  mount --bind "$dir/var/lib" /var/lib
  mount --bind "$dir/var/log" /var/log
  mount --bind "$dir/run" /run
  mount --make-rshared /
  for t in $kernel_tunables; do
    mount --bind "$dir/sysctl/$(echo "${t%%=*}" | tr / .)" "/proc/sys/${t%%=*}"
  done
  log "mounts ready"

  containerd >"$dir/containerd.log" 2>&1 &
  for _ in $(seq 300); do
    ctr version >/dev/null 2>&1 && break
    sleep 0.1
  done
  local image
  for image in "$images"/*.tar; do
    ctr -n k8s.io images import --snapshotter overlayfs "$image" >/dev/null
  done
  log "images: $(ctr -n k8s.io images ls -q | tr '\n' ' ')"
  "$kubelet" --config=/etc/kubernetes/kubelet.yaml --kubeconfig=/etc/kubernetes/kubelet.kubeconfig \
    --node-ip="$node_ip" --v=2 >"$dir/kubelet.log" 2>&1 &
  touch "$dir/kubelet.started"
  wait -n
  log "a node process exited; stopping the node"
  exit 1
}

node_exec() {
  local dir=$1
  shift
  local pid
  # The node's init: the child of unshare.
  pid="$(cat "/proc/$(cat "$dir/node.pid")/task/$(cat "$dir/node.pid")/children" | awk '{print $1}')"
  nsenter --target "$pid" --mount --uts --ipc --net --pid -- "$@"
}

stop() {
  local dir=$1 netns root
  [ -f "$dir/env" ] || return 0
  netns="$(sed -n 's/^NETNS=//p' "$dir/env")"
  root="$(sed -n 's/^CGROUP_ROOT=//p' "$dir/env")"
  if [ -f "$dir/node.pid" ]; then
    local pid
    pid="$(cat "$dir/node.pid")"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    rm -f "$dir/node.pid"
  fi
  remove_cgroups "$root"
  ip netns del "$netns" 2>/dev/null || true
}

case "${1:-}" in
  start) start "$2" "$3" "$4" ;;
  init) init "$2" "$3" "$4" ;;
  exec) shift && node_exec "$@" ;;
  stop) stop "$2" ;;
  *)
    sed -n '2,30p' "$0" >&2
    exit 2
    ;;
esac
