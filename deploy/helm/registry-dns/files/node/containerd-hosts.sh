# Sourced by setup.sh: the registry's containerd configuration on the NODE, so that the kubelet's
# pulls of knative-local-registry:5000/... go through containerd's CRI plugin without a hand edit.
#
# For each REGISTRIES entry (host:port) it writes <hosts dir>/<host:port>/hosts.toml: http:// for a
# plain registry, or https:// with `ca` naming the registry's CA (copied beside it) for TLS. The
# hosts directory is the first one of the CRI plugin's `config_path` in CONTAINERD_CONFIG:
#   containerd 1.x (version = 2): [plugins."io.containerd.grpc.v1.cri".registry] config_path
#   containerd 2.x (version = 3): [plugins."io.containerd.cri.v1.images".registry] config_path,
#                                 default /etc/containerd/certs.d:/etc/docker/certs.d
# config.toml itself is never edited (a restart of containerd is the operator's call): without
# config_path, containerd 1.x reads no hosts.toml, and this says which line to add.
# On k3s it writes /etc/rancher/k3s/registries.yaml (read when k3s starts) unless that file is
# someone else's, and the same hosts.toml into k3s's own certs.d, which containerd reads at once.
# Idempotent: a file is written only when its content changes (registries.sh: put, drop).

CONTAINERD_CONFIG=${CONTAINERD_CONFIG:-/etc/containerd/config.toml}
K3S_CONFIG_DIR=${K3S_CONFIG_DIR:-/etc/rancher/k3s}
K3S_DATA_DIR=${K3S_DATA_DIR:-/var/lib/rancher/k3s}

# Always: containerd_hosts_dir says why it skips a node without containerd.
containerd_present() { true; }

# The hosts directory containerd's CRI plugin reads, or nothing (with the reason on stderr).
containerd_hosts_dir() {
    host sh -c '
        cfg=$1
        if [ ! -e "$cfg" ]; then
            v=$(containerd --version 2>/dev/null | sed -n "s/.* v\{0,1\}\([0-9][0-9]*\)\.[0-9].*/\1/p")
            if [ -z "$v" ]; then echo "containerd: no $cfg and no containerd binary: skipped" >&2; exit 0; fi
            if [ "$v" -ge 2 ]; then echo /etc/containerd/certs.d; exit 0; fi
            echo "containerd $v.x without $cfg reads no hosts.toml: create it with" \
                "[plugins.\"io.containerd.grpc.v1.cri\".registry] config_path = \"/etc/containerd/certs.d\"" \
                "and restart containerd" >&2
            exit 0
        fi
        version=$(sed -n "s/^[[:space:]]*version[[:space:]]*=[[:space:]]*\([0-9]*\).*/\1/p" "$cfg" | head -n1)
        # config_path inside a section whose name ends in .registry (any quoting of the plugin name)
        path=$(awk "
            /^[[:space:]]*\\[/ { in_registry = (\$0 ~ /\\.registry\\][[:space:]]*(#.*)?\$/) }
            in_registry && /^[[:space:]]*config_path[[:space:]]*=/ {
                sub(/^[^=]*=[[:space:]]*/, \"\"); gsub(/[\"'\'']/, \"\"); sub(/[[:space:]]*(#.*)?\$/, \"\"); print; exit
            }" "$cfg")
        if [ -z "$path" ] && [ "${version:-1}" -ge 3 ]; then path=/etc/containerd/certs.d; fi
        if [ -z "$path" ]; then
            echo "containerd: $cfg sets no config_path, so its CRI plugin reads no hosts.toml: add" \
                "config_path = \"/etc/containerd/certs.d\" under [plugins.\"io.containerd.grpc.v1.cri\".registry]" \
                "and restart containerd (hosts.toml is written there meanwhile)" >&2
            echo /etc/containerd/certs.d
            exit 0
        fi
        echo "${path%%:*}"
    ' sh "$CONTAINERD_CONFIG"
}

hosts_toml() {  # REGISTRY SCHEME [CA PATH]
    printf '%s\nserver = "%s://%s"\n[host."%s://%s"]\n  capabilities = ["pull", "resolve", "push"]\n' \
        "$MARK" "$2" "$1" "$2" "$1"
    if [ -n "${3:-}" ]; then printf '  ca = "%s"\n' "$3"; fi
}

containerd_install() {
    scheme=$(registry_scheme)
    ca=$(registry_ca)
    if [ "$scheme" = https ] && [ -z "$ca" ]; then echo "containerd: https without a CA: the system's roots must trust the registry"; fi
    dirs=$(containerd_hosts_dir)
    if host test -d "$K3S_DATA_DIR/agent/etc/containerd"; then dirs="$dirs $K3S_DATA_DIR/agent/etc/containerd/certs.d"; fi
    for dir in $dirs; do
        for r in $REGISTRIES; do
            ca_path=
            if [ "$scheme" = https ] && [ -n "$ca" ]; then
                ca_path=$dir/$r/ca.crt
                put "$ca_path" "$(ca_file "$ca")"
            fi
            put "$dir/$r/hosts.toml" "$(hosts_toml "$r" "$scheme" "$ca_path")"
        done
    done
    if host test -d "$K3S_CONFIG_DIR"; then k3s_registries "$scheme" "$ca"; fi
}

# k3s: registries.yaml with one mirror (and, for TLS, its CA) per registry.
k3s_registries() {  # SCHEME CA
    file=$K3S_CONFIG_DIR/registries.yaml
    yaml="$MARK
# k3s reads this file when it starts: systemctl restart k3s (or k3s-agent).
mirrors:"
    for r in $REGISTRIES; do yaml="$yaml
  \"$r\":
    endpoint:
      - \"$1://$r\""; done
    if [ "$1" = https ] && [ -n "$2" ]; then
        yaml="$yaml
configs:"
        for r in $REGISTRIES; do
            put "$K3S_CONFIG_DIR/registry-dns-ca/$r.crt" "$(ca_file "$2")"
            yaml="$yaml
  \"$r\":
    tls:
      ca_file: $K3S_CONFIG_DIR/registry-dns-ca/$r.crt"
        done
    fi
    if host test -e "$file" && ! host head -n1 "$file" | grep -qF "$MARK"; then
        echo "k3s: $file is not registry-dns node setup's: left in place; merge this into it and restart k3s:"
        echo "$yaml" | sed 1d
        return
    fi
    put "$file" "$yaml"
}

containerd_remove() {
    dirs="$(containerd_hosts_dir 2>/dev/null) /etc/containerd/certs.d $K3S_DATA_DIR/agent/etc/containerd/certs.d"
    for dir in $dirs; do
        for r in $REGISTRIES; do
            drop "$dir/$r/ca.crt"
            drop "$dir/$r/hosts.toml"
            host rmdir "$dir/$r" 2>/dev/null || true    # only once empty: nothing of anyone else's
        done
    done
    for r in $REGISTRIES; do drop "$K3S_CONFIG_DIR/registry-dns-ca/$r.crt"; done
    host rmdir "$K3S_CONFIG_DIR/registry-dns-ca" 2>/dev/null || true
    drop "$K3S_CONFIG_DIR/registries.yaml"
}
