#!/usr/bin/env bash
# A real node for the tests (and for poking by hand): Debian with systemd as PID 1, booted by
# systemd-nspawn from tests/cluster/rootfs.sh's tree, with systemd-resolved's stub on 127.0.0.53
# and /etc/resolv.conf pointing at it (as Ubuntu and Fedora nodes have it), systemd-networkd
# managing the node's network, D-Bus, and containerd as a systemd unit. Given a control plane, the node joins it:
# the kubelet and kube-proxy (built by `control-plane.sh build-node`) run as systemd units, the
# kubelet over containerd's CRI plugin and runc with the CNI plugins bridge, host-local, loopback
# and portmap, kube-proxy in iptables mode (the `kubernetes` Service, kube-dns and every other
# Service by its ClusterIP). Both reach the API server on the control plane's own address (as
# kubeadm's kubeconfigs do), which must be on the node network (control-plane.sh start with
# APISERVER_ADDRESS=10.198.0.1); the kubelet gives pods 10.96.0.10 (kube-dns) as their DNS server.
#
#   network  the node's own netns, made by nspawn at each boot and named NETNS: host0 is a veth
#            whose host end is on the bridge rdns-nodes (10.198.0.1/24, the node network; the
#            host is its only router). Node N is
#            10.198.0.(N+1), with its pods on cni0 in 10.244.N.0/24; every node and the host have a
#            route to each running node's pod range through that node (host-gw, as kubenet or
#            flannel's host-gw set it up).
#   files    an overlay per node on the cached tree (upper layer DIR/upper: whatever the node or
#            node setup writes lands there); /var/lib/containerd is DIR/containerd.
#   pid, uts, ipc, cgroup   the node's own; systemd is PID 1 (what node setup's `nsenter --target
#            1` enters), the hostname is NODE_NAME, and the node's cgroup root is a cgroup of its
#            own on the host (removed on stop).
# What these machines lack, and what the node does instead (said on start): cgroup v1, whose
# controllers nspawn mounts read-only (a unit remounts them writable before containerd, as kind's
# entrypoint does); root without CAP_SYS_RESOURCE (containerd clamps the pods' oom_score_adj).
# And nspawn's own: the kubelet's kernel tunables are not namespaced, so the node sees files with
# the values it wants bound over them in /proc/sys (kernel-tunables.service).
#
# Usage:
#   node.sh start DIR [CONTROL_PLANE_DIR IMAGES_DIR]   boot the node with its state in DIR; with a
#                                  control plane, import IMAGES_DIR/*.tar into containerd (namespace
#                                  k8s.io) and start kube-proxy and the kubelet
#   node.sh exec DIR COMMAND...    COMMAND on the node (all its namespaces)
#   node.sh reboot DIR             power the node off and boot it again: /etc and /var kept; /run and
#                                  the network namespace (with every virtual link) fresh
#   node.sh stop DIR               power the node off, remove its network namespace, routes, cgroups
#   node.sh network                make the node network's bridge with the host's 10.198.0.1 (the
#                                  first start does it too): for an API server listening there
# Environment for start: NODE_INDEX (1), NODE_NAME (node-INDEX), NETNS (rdns-node-INDEX), and
# NODE_BIND_RO: space-separated HOST_PATH:NODE_PATH to mount read-only on the node at every boot,
# NODE_BIND the same read-write (a directory several nodes share stands in for network storage),
# NODE_DNS: the node's own DNS server on host0 (networkd's DNS=, as DHCP would give it); none if empty.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
bridge=rdns-nodes
host_ip=10.198.0.1
cluster_dns=10.96.0.10
cluster_cidr=10.244.0.0/16

log() { echo "node.sh: $*" >&2; }

node_ip() { echo "10.198.0.$(($1 + 1))"; }
pod_cidr() { echo "10.244.$1.0/24"; }

# What the kubelet writes into these files (pkg/kubelet/cm/container_manager_linux.go
# setupKernelTunables) unless they already hold it.
kernel_tunables="vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000"

# The node's own files, written into the upper layer of its root before it boots.
write_node_files() {
  local dir=$1 index=$2 name=$3 dns=$4 root=$1/upper
  mkdir -p "$root/etc/systemd/network" "$root/etc/systemd/system/multi-user.target.wants" "$root/etc/containerd"
  echo "$name" >"$root/etc/hostname"
  printf '127.0.0.1 localhost\n%s %s\n' "$(node_ip "$index")" "$name" >"$root/etc/hosts"
  # host0 (nspawn's name for the node's end of its veth) by networkd, with the host as its
  # default gateway (a node's processes reach Service addresses such as 10.96.0.1 only through a
  # route, before kube-proxy's DNAT rewrites them) and NODE_DNS or no DNS server: the node's
  # upstream is each test's choice (per link, global DNS= or FallbackDNS=), as it is each
  # distribution's.
  cat >"$root/etc/systemd/network/10-host0.network" <<EOF
[Match]
Name=host0
[Network]
Address=$(node_ip "$index")/24
Gateway=$host_ip
LinkLocalAddressing=no
IPv6AcceptRA=no
${dns:+DNS=$dns}
EOF
  # nspawn mounts cgroup v1 controllers read-only; containerd and the kubelet create cgroups in
  # them. On cgroup v2 nspawn delegates the node's subtree and this unit does nothing.
  cat >"$root/etc/systemd/system/cgroups-writable.service" <<'EOF'
[Unit]
Description=Make the cgroup v1 controllers writable for containerd and the kubelet (tests/cluster/node.sh)
DefaultDependencies=no
Before=containerd.service kubelet.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for m in /sys/fs/cgroup/*/; do [ "$(stat -f -c %%T "$m")" = cgroupfs ] && mount -o remount,bind,rw "$m"; done; true'
[Install]
WantedBy=multi-user.target
EOF
  ln -sf ../cgroups-writable.service "$root/etc/systemd/system/multi-user.target.wants/cgroups-writable.service"
  local restrict_oom=false
  can_lower_oom_score || restrict_oom=true
  # containerd 1.6's CRI plugin: runc without systemd cgroups, CNI from the tools cache, registries
  # from certs.d (the hosts.toml files node setup writes), our pause image as the sandbox.
  cat >"$root/etc/containerd/config.toml" <<EOF
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
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "/etc/containerd/certs.d"
EOF
  ln -sf /lib/systemd/system/containerd.service "$root/etc/systemd/system/multi-user.target.wants/containerd.service"
}

# The kubelet's part of the node: its identity, configuration and unit, and the pods' network.
write_kubelet_files() {
  local dir=$1 index=$2 name=$3 cp_dir=$4 root=$1/upper
  mkdir -p "$root/etc/kubernetes/pki" "$root/etc/kubernetes/sysctl" "$root/etc/cni/net.d"
  local server
  server="https://$(sed -n 's/^APISERVER_ADDRESS=//p' "$cp_dir/env"):$(sed -n 's/^APISERVER_PORT=//p' "$cp_dir/env")"
  cp "$cp_dir/ca.crt" "$root/etc/kubernetes/pki/ca.crt"
  # The kubelet's identity is a node's, which the Node authorizer and the NodeRestriction
  # admission plugin check; kube-proxy's is the user the API server's bootstrap policy binds to
  # system:node-proxier.
  client_identity "$root" "$cp_dir" kubelet "/O=system:nodes/CN=system:node:$name" "$server"
  client_identity "$root" "$cp_dir" kube-proxy "/CN=system:kube-proxy" "$server"
  # Anonymous requests with AlwaysAllow: the kubelet's port is reachable from the node network
  # only, and `kubectl logs` or `exec` by hand (the API server has no kubelet client certificate)
  # need it. The tests read pod logs from the node's files instead. resolvConf is the file kubeadm
  # gives the kubelet on a systemd-resolved node: the real upstreams, never the 127.0.0.53 stub,
  # which a pod cannot reach.
  cat >"$root/etc/kubernetes/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
address: $(node_ip "$index")
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
clusterDomain: cluster.local
resolvConf: /run/systemd/resolve/resolv.conf
clusterDNS: [$cluster_dns]
# Never collect the imported images (nothing could pull them again) nor evict on a busy disk: the
# node's disk is this shared machine's, which other work fills (at 1% free, a kubelet evicted the
# registry in a loop). kind turns disk eviction off the same way.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 1Mi, nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%"}
serializeImagePulls: false
EOF
  cat >"$root/etc/systemd/system/kubelet.service" <<EOF
[Unit]
Description=kubelet
Wants=containerd.service
After=containerd.service network-online.target
[Service]
ExecStart=/usr/local/bin/kubelet --config=/etc/kubernetes/kubelet.yaml --kubeconfig=/etc/kubernetes/kubelet.kubeconfig --node-ip=$(node_ip "$index") --v=2
Restart=always
RestartSec=2
[Install]
WantedBy=multi-user.target
EOF
  # kube-proxy in iptables mode, the default on Linux and what kubeadm installs: the Services'
  # rules in the node's own netfilter tables. conntrack.maxPerCore 0 leaves the conntrack table's
  # size alone (its hashsize is a module parameter of the host's kernel, read-only here), as kind
  # does.
  cat >"$root/etc/kubernetes/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: /etc/kubernetes/kube-proxy.kubeconfig}
mode: iptables
hostnameOverride: $name
clusterCIDR: $cluster_cidr
conntrack: {maxPerCore: 0}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
EOF
  cat >"$root/etc/systemd/system/kube-proxy.service" <<EOF
[Unit]
Description=kube-proxy
After=network-online.target
[Service]
ExecStart=/usr/local/bin/kube-proxy --config=/etc/kubernetes/kube-proxy.yaml --v=1
Restart=always
RestartSec=2
[Install]
WantedBy=multi-user.target
EOF
  cat >"$root/etc/cni/net.d/10-pods.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "pods",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$(pod_cidr "$index")"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  # The kernel tunables the kubelet insists on are not namespaced: the node sees files holding
  # the values it wants bound over them, so that it leaves the host's alone.
  local t
  for t in $kernel_tunables; do
    echo "${t#*=}" >"$root/etc/kubernetes/sysctl/$(echo "${t%%=*}" | tr / .)"
  done
  cat >"$root/etc/systemd/system/kernel-tunables.service" <<'EOF'
[Unit]
Description=The kubelet's kernel tunables as files over /proc/sys (tests/cluster/node.sh)
DefaultDependencies=no
Before=kubelet.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for f in /etc/kubernetes/sysctl/*; do mount --bind -o ro "$f" "/proc/sys/$(basename "$f" | tr . /)"; done'
[Install]
WantedBy=multi-user.target
EOF
  ln -sf ../kernel-tunables.service "$root/etc/systemd/system/multi-user.target.wants/kernel-tunables.service"
}

# A client certificate for NAME with SUBJECT, signed by the cluster CA, and its kubeconfig
# (/etc/kubernetes/NAME.kubeconfig) for SERVER.
client_identity() {
  local root=$1 cp_dir=$2 name=$3 subject=$4 server=$5 pki=$1/etc/kubernetes/pki
  openssl req -newkey rsa:2048 -nodes -subj "$subject" -keyout "$pki/$name.key" -out "$pki/$name.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$cp_dir/ca.crt" -CAkey "$cp_dir/ca.key" -CAcreateserial \
    -days 2 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  cat >"$root/etc/kubernetes/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "$server", certificate-authority: /etc/kubernetes/pki/ca.crt}
users:
- name: $name
  user: {client-certificate: /etc/kubernetes/pki/$name.crt, client-key: /etc/kubernetes/pki/$name.key}
contexts:
- name: test
  context: {cluster: test, user: $name}
current-context: test
EOF
}

# Whether this process may lower an oom_score_adj (CAP_SYS_RESOURCE, bit 24 of CapEff).
can_lower_oom_score() {
  local eff
  eff="$(awk '$1=="CapEff:"{print $2}' /proc/self/status)"
  (( (16#$eff >> 24) & 1 ))
}

# The node's cgroup root on the host (one per DIR, so that a leftover never collides with a new node).
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

# Moves the calling shell into the node's cgroup in every hierarchy: nspawn makes it the node's
# cgroup namespace root.
enter_cgroups() {
  local root=$1 m
  for m in $(cgroup_mounts); do
    echo "$BASHPID" >"$m/$root/cgroup.procs"
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

# The node network's bridge, with the host's address on it; made by the first node.
ensure_bridge() {
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
    ip addr add "$host_ip/24" dev "$bridge"
    ip link set "$bridge" up
  fi
}

# A node netns with no process left was left behind by a run killed before its `stop`, and is
# removed (with its routes); one with processes is a live node. Node N's address is taken by a live
# node with the same index: an error.
clear_leftover_nodes() {
  local index=$1 ns
  for ns in $(ip netns list | awk '$1 ~ /^rdns-node-/ {print $1}'); do
    [ -n "$(ip netns pids "$ns")" ] && continue
    log "removing netns $ns, left behind by a node that was never stopped"
    ip netns del "$ns"
  done
  if ip -4 neigh show "$(node_ip "$index")" dev "$bridge" 2>/dev/null | grep -q REACHABLE; then
    log "$(node_ip "$index") answers on $bridge: a node with index $index is still running (node.sh stop ITS_DIR)"
    exit 1
  fi
}

# Routes between this node's pods and every other running node's (host-gw, as kubenet or
# flannel's host-gw set them up), both ways, and from the host. /run/registry-dns-nodes holds each
# running node's env.
add_pod_routes() {
  local index=$1 netns=$2 env other_index other_netns
  ip route replace "$(pod_cidr "$index")" via "$(node_ip "$index")" dev "$bridge"
  for env in /run/registry-dns-nodes/*.env; do
    other_index="$(sed -n 's/^NODE_INDEX=//p' "$env")"
    other_netns="$(sed -n 's/^NETNS=//p' "$env")"
    [ "$other_index" = "$index" ] && continue
    ip -n "$netns" route replace "$(pod_cidr "$other_index")" via "$(node_ip "$other_index")"
    ip -n "$other_netns" route replace "$(pod_cidr "$index")" via "$(node_ip "$index")"
  done
}

# The node's network, once nspawn has made its namespace (at each boot: a reboot loses every
# virtual link, as a real one does): a name for the namespace (`ip netns attach`), forwarding,
# and the routes to and from the other nodes' pods.
attach_network() {
  local dir=$1 netns index
  netns="$(sed -n 's/^NETNS=//p' "$dir/env")"
  index="$(sed -n 's/^NODE_INDEX=//p' "$dir/env")"
  ip netns attach "$netns" "$(node_pid "$dir")"
  ip netns exec "$netns" sysctl -qw net.ipv4.ip_forward=1
  mkdir -p /run/registry-dns-nodes
  cp "$dir/env" "/run/registry-dns-nodes/$netns.env"
  add_pod_routes "$index" "$netns"
}

detach_network() {
  local dir=$1 netns index
  netns="$(sed -n 's/^NETNS=//p' "$dir/env")"
  index="$(sed -n 's/^NODE_INDEX=//p' "$dir/env")"
  ip route del "$(pod_cidr "$index")" 2>/dev/null || true
  ip netns del "$netns" 2>/dev/null || true
  rm -f "/run/registry-dns-nodes/$netns.env"
}

boot() {
  local dir=$1 name root lower
  name="$(sed -n 's/^NODE_NAME=//p' "$dir/env")"
  root="$(sed -n 's/^CGROUP_ROOT=//p' "$dir/env")"
  lower="$(sed -n 's/^ROOTFS=//p' "$dir/env")"
  mkdir -p "$dir/root" "$dir/work" "$dir/containerd"
  mountpoint -q "$dir/root" || mount -t overlay overlay -o "lowerdir=$lower,upperdir=$dir/upper,workdir=$dir/work" "$dir/root"
  local binds=(--bind="$dir/containerd:/var/lib/containerd")
  if [ -f "$dir/node-bin" ]; then
    local node_bin
    node_bin="$(cat "$dir/node-bin")"
    binds+=(--bind-ro="$node_bin/kubelet:/usr/local/bin/kubelet" --bind-ro="$node_bin/kube-proxy:/usr/local/bin/kube-proxy"
      --bind-ro="$(cat "$dir/cni-bin"):/opt/cni/bin" --bind=/dev/kmsg)
  fi
  local extra
  for extra in $(sed -n 's/^NODE_BIND_RO=//p' "$dir/env"); do binds+=(--bind-ro="$extra"); done
  for extra in $(sed -n 's/^NODE_BIND=//p' "$dir/env"); do binds+=(--bind="$extra"); done
  make_cgroups "$root"
  # --keep-unit --register=no: no systemd on this machine to register with. SYSTEMD_SECCOMP=0 and
  # every capability: containerd and runc create namespaces, mounts and keyrings, as in any node.
  (
    enter_cgroups "$root"
    exec env SYSTEMD_SECCOMP=0 systemd-nspawn --quiet --directory="$dir/root" --boot --machine="$name" \
      --register=no --keep-unit --network-bridge="$bridge" --capability=all \
      --console=read-only --link-journal=no "${binds[@]}"
  ) >>"$dir/node.log" 2>&1 &
  echo $! >"$dir/node.pid"
  local state=""
  for _ in $(seq 600); do
    state="$(node_exec "$dir" systemctl is-system-running 2>/dev/null || true)"
    case "$state" in
      running)
        attach_network "$dir"
        return ;;
      degraded)
        log "$name booted degraded: $(node_exec "$dir" systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
        attach_network "$dir"
        return ;;
    esac
    if ! kill -0 "$(cat "$dir/node.pid")" 2>/dev/null; then
      log "the node's nspawn exited; its log:"
      tail -n 30 "$dir/node.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  log "$name did not finish booting in 60 s (state: $state); its log:"
  tail -n 30 "$dir/node.log" >&2
  exit 1
}

start() {
  local dir=$1 cp_dir=${2:-} images=${3:-}
  local index=${NODE_INDEX:-1}
  local name=${NODE_NAME:-node-$index} netns=${NETNS:-rdns-node-$index}
  local rootfs
  rootfs="$("$here/rootfs.sh" build)"
  ensure_bridge
  clear_leftover_nodes "$index"
  mkdir -p "$dir/upper"
  dir="$(cd "$dir" && pwd)"
  printf 'NETNS=%s\nNODE_NAME=%s\nNODE_INDEX=%s\nCGROUP_ROOT=%s\nROOTFS=%s\nNODE_BIND_RO=%s\nNODE_BIND=%s\n' \
    "$netns" "$name" "$index" "$(cgroup_root "$dir")" "$rootfs" "${NODE_BIND_RO:-}" "${NODE_BIND:-}" >"$dir/env"
  write_node_files "$dir" "$index" "$name" "${NODE_DNS:-}"
  [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ] || log "cgroup v1 here: the node remounts its controllers writable (cgroups-writable.service)"
  can_lower_oom_score || log "root lacks CAP_SYS_RESOURCE here: containerd clamps the pods' oom_score_adj at its own (restrict_oom_score_adj)"
  if [ -n "$cp_dir" ]; then
    local k8s_bin node_bin cni_bin
    read -r k8s_bin _ < <("$here/control-plane.sh" build)
    read -r node_bin cni_bin < <("$here/control-plane.sh" build-node)
    write_kubelet_files "$dir" "$index" "$name" "$(cd "$cp_dir" && pwd)"
    echo "$node_bin" >"$dir/node-bin"
    echo "$cni_bin" >"$dir/cni-bin"
    echo "KUBECTL=$k8s_bin/kubectl" >>"$dir/env"
  fi

  boot "$dir"

  if [ -n "$cp_dir" ]; then
    local image
    for image in "$images"/*.tar; do
      node_exec "$dir" ctr -n k8s.io images import --snapshotter overlayfs - <"$image" >/dev/null
    done
    log "images: $(node_exec "$dir" ctr -n k8s.io images ls -q | tr '\n' ' ')"
    node_exec "$dir" systemctl enable --quiet --now kube-proxy.service kubelet.service
  fi
  log "up: $name ($(node_ip "$index")) in $netns, state in $dir"
}

# systemd of the node: the child of nspawn's inner child, which runs it as PID 1 of the node.
node_pid() {
  local dir=$1 nspawn
  nspawn="$(cat "$dir/node.pid")"
  pgrep -x systemd -P "$(pgrep -P "$nspawn" | head -1)" 2>/dev/null || pgrep -x systemd -P "$nspawn"
}

node_exec() {
  local dir=$1
  shift
  nsenter --target "$(node_pid "$dir")" --all -- "$@"
}

poweroff() {
  local dir=$1 pid
  [ -f "$dir/node.pid" ] || return 0
  pid="$(cat "$dir/node.pid")"
  # nspawn asks the node's systemd to power off on SIGTERM; a node that hangs is killed.
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/node.pid"
  umount "$dir/root" 2>/dev/null || umount -l "$dir/root" 2>/dev/null || true
}

stop() {
  local dir=$1
  [ -f "$dir/env" ] || return 0
  poweroff "$dir"
  remove_cgroups "$(sed -n 's/^CGROUP_ROOT=//p' "$dir/env")"
  detach_network "$dir"
  # The last node takes the node network with it.
  if [ -z "$(ls /run/registry-dns-nodes 2>/dev/null)" ]; then
    ip link del "$bridge" 2>/dev/null || true
  fi
}

case "${1:-}" in
  start) start "$2" "${3:-}" "${4:-}" ;;
  exec) shift && node_exec "$@" ;;
  reboot) poweroff "$2" && detach_network "$2" && boot "$2" ;;
  stop) stop "$2" ;;
  network) ensure_bridge ;;
  *)
    sed -n '2,43p' "$0" >&2
    exit 2
    ;;
esac
