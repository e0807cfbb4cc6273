# Sourced by setup.sh: what every runtime's script (containerd-hosts.sh, containers-registries.sh,
# docker-daemon.sh) shares: the registries, the scheme they speak and their CA, and writing or
# deleting a file on the NODE. Every file node setup writes starts with $MARK; a file without it is
# someone else's: it is never overwritten (put says so) nor deleted (drop says so).
#
# Each runtime's script defines <runtime>_present (whether the node has it), <runtime>_install and
# <runtime>_remove; setup.sh calls them for every runtime whose setting is auto.
#
# REGISTRIES: host:port, as in image references, space-separated.
# REGISTRY_TLS: auto (https when a CA is mounted), true, false. The CA: REGISTRY_CA, else ca.crt
# of the ConfigMap or Secret registry-dns-registry-ca mounted at /registry-ca/{configmap,secret}.

REGISTRIES=${REGISTRIES:-knative-local-registry:5000}
REGISTRY_TLS=${REGISTRY_TLS:-auto}
MARK="# Written by registry-dns node setup (deploy/node); ACTION=remove deletes it."

registry_ca() {
    for f in "${REGISTRY_CA:-}" /registry-ca/configmap/ca.crt /registry-ca/secret/ca.crt; do
        if [ -n "$f" ] && [ -s "$f" ]; then echo "$f"; return; fi
    done
}

# The scheme the registry serves, from REGISTRY_TLS and the CA.
registry_scheme() {
    case "$REGISTRY_TLS" in
        true) echo https ;;
        false) echo http ;;
        auto) if [ -n "$(registry_ca)" ]; then echo https; else echo http; fi ;;
        *) echo "REGISTRY_TLS is auto, true or false, not '$REGISTRY_TLS'" >&2; exit 2 ;;
    esac
}

# Writes FILE with CONTENT on the node when it differs and is ours (or absent); prints what it did.
put() {
    host sh -c '
        if [ -e "$1" ] && [ "$(cat "$1")" = "$2" ]; then echo "$1 up to date"; exit 0; fi
        if [ -e "$1" ] && ! head -n1 "$1" | grep -qF "$3"; then
            echo "$1 is not registry-dns node setup'"'"'s: left in place (delete it to let node setup write it)"; exit 0
        fi
        mkdir -p "$(dirname "$1")" && printf "%s\n" "$2" > "$1.tmp" && mv "$1.tmp" "$1" && echo "wrote $1"
    ' sh "$1" "$2" "$MARK"
}

# Deletes FILE on the node if it is ours.
drop() {
    host sh -c '
        [ -e "$1" ] || exit 0
        if head -n1 "$1" | grep -qF "$2"; then rm -f "$1" && echo "removed $1"
        else echo "$1 is not registry-dns node setup'"'"'s: left in place"; fi
    ' sh "$1" "$MARK"
}

# The CA file as node setup writes it beside a runtime's configuration: the mark, then the PEM.
ca_file() {
    printf '%s\n%s' "$MARK" "$(cat "$1")"
}
