# Sourced by setup.sh: the registries for containers/image, the library that CRI-O, podman,
# buildah and skopeo pull through. It reads $CONTAINERS_DIR/registries.conf, then each
# registries.conf.d/*.conf in name order (a later [[registry]] for the same location wins), and
# trusts the *.crt files of certs.d/<host:port>/ for that registry besides the system's roots.
#
# Node setup writes registries.conf.d/50-registry-dns.conf, one [[registry]] per registry with
# `insecure = true` for plain HTTP (false for TLS), and, for TLS, certs.d/<host:port>/ca.crt.
# registries.conf itself is never edited. podman, buildah and skopeo read both files at every
# run; CRI-O reads certs.d at every pull but keeps registries.conf(.d) from its start until it is
# sent SIGHUP (crio.conf(5): SIGHUP reloads them, no restart), which node setup does when the
# drop-in changes.

CONTAINERS_DIR=${CONTAINERS_DIR:-/etc/containers}

# Every containers/image program ships /etc/containers (policy.json is mandatory there).
containers_image_present() { host test -d "$CONTAINERS_DIR"; }

containers_image_install() {
    scheme=$(registry_scheme)
    ca=$(registry_ca)
    insecure=false
    if [ "$scheme" = http ]; then insecure=true; fi
    registries_conf="$MARK
# containers-registries.conf(5) drop-in: how CRI-O, podman, buildah and skopeo reach the registries."
    for r in $REGISTRIES; do
        registries_conf="$registries_conf
[[registry]]
location = \"$r\"
insecure = $insecure"
        if [ "$scheme" = https ] && [ -n "$ca" ]; then put "$CONTAINERS_DIR/certs.d/$r/ca.crt" "$(ca_file "$ca")"; fi
    done
    out=$(put "$CONTAINERS_DIR/registries.conf.d/50-registry-dns.conf" "$registries_conf")
    echo "$out"
    case "$out" in wrote*) crio_reload ;; esac
}

containers_image_remove() {
    for r in $REGISTRIES; do
        drop "$CONTAINERS_DIR/certs.d/$r/ca.crt"
        host rmdir "$CONTAINERS_DIR/certs.d/$r" 2>/dev/null || true    # only once empty
    done
    out=$(drop "$CONTAINERS_DIR/registries.conf.d/50-registry-dns.conf")
    if [ -n "$out" ]; then echo "$out"; fi
    case "$out" in removed*) crio_reload ;; esac
}

# SIGHUP to every crio process on the node: CRI-O re-reads registries.conf(.d) then (its
# systemd unit's `reload` does the same). Reads /proc itself: the node may lack pgrep.
crio_reload() {
    host sh -c '
        for p in /proc/[0-9]*; do
            if [ "$(cat "$p/comm" 2>/dev/null)" = crio ] && kill -HUP "${p#/proc/}" 2>/dev/null; then
                echo "containers: sent SIGHUP to crio (pid ${p#/proc/}): it reloads registries.conf.d"
            fi
        done
    '
}
