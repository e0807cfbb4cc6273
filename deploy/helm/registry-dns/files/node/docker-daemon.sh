# Sourced by setup.sh: the registries for Docker Engine (dockerd: pods through cri-dockerd, a
# developer's or CI runner's pushes). For TLS, dockerd trusts $DOCKER_DIR/certs.d/<host:port>/*.crt
# besides the system's roots, read at every pull: node setup writes ca.crt there. For plain HTTP,
# the registry must be in daemon.json's insecure-registries: the registry-dns binary (copied into
# this pod by its init container; the image has no JSON tool) merges it in, keeping every other key,
# and gives daemon.json back byte for byte on removal (`registry-dns node-setup docker-daemon-json`,
# src/node_setup/daemon_json.rs). A daemon.json that someone edited after the merge is left alone.
# dockerd reloads insecure-registries on SIGHUP (no restart): sent through its pidfile when
# daemon.json changed.

DOCKER_DIR=${DOCKER_DIR:-/etc/docker}
DOCKER_PIDFILE=${DOCKER_PIDFILE:-/var/run/docker.pid}
# The static registry-dns binary in this container.
REGISTRY_DNS=${REGISTRY_DNS:-/node-setup/registry-dns}

# dockerd installed, or a daemon.json (which /etc/docker alone is not: Debian's docker-registry
# keeps its configuration there).
docker_present() {
    host sh -c 'command -v dockerd >/dev/null || [ -e "$1/daemon.json" ]' sh "$DOCKER_DIR"
}

docker_install() {
    scheme=$(registry_scheme)
    ca=$(registry_ca)
    plain=
    for r in $REGISTRIES; do
        if [ "$scheme" = http ]; then plain="$plain $r"
        elif [ -n "$ca" ]; then put "$DOCKER_DIR/certs.d/$r/ca.crt" "$(ca_file "$ca")"
        fi
    done
    # shellcheck disable=SC2086 # one argument per registry
    daemon_json install $plain
}

docker_remove() {
    for r in $REGISTRIES; do
        drop "$DOCKER_DIR/certs.d/$r/ca.crt"
        host rmdir "$DOCKER_DIR/certs.d/$r" 2>/dev/null || true    # only once empty
    done
    # shellcheck disable=SC2086
    daemon_json remove $REGISTRIES
}

# `registry-dns node-setup docker-daemon-json ACTION REGISTRY...` on the node's files. With
# hostPID, /proc/<this shell>/root is this container's root as seen from the node: the binary
# runs there under the node's paths.
daemon_json() {
    binary=/proc/$$/root$REGISTRY_DNS
    if ! host test -x "$binary"; then
        echo "docker: no registry-dns binary at $REGISTRY_DNS in this pod (its init container copies it): $DOCKER_DIR/daemon.json not changed"
        return 0
    fi
    action=$1
    shift
    if ! out=$(host "$binary" node-setup docker-daemon-json "$action" --file "$DOCKER_DIR/daemon.json" "$@" 2>&1); then
        echo "docker: $out"
        return 0
    fi
    echo "$out"
    case "$out" in wrote* | restored* | removed*) docker_reload ;; esac
}

docker_reload() {
    host sh -c '
        pid=$(cat "$1" 2>/dev/null) || true
        if [ -n "$pid" ] && kill -HUP "$pid" 2>/dev/null; then
            echo "docker: sent SIGHUP to dockerd (pid $pid): it reloads insecure-registries"
        else
            echo "docker: no dockerd runs ($1): it reads daemon.json when it starts"
        fi
    ' sh "$DOCKER_PIDFILE"
}
