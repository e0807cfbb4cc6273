# Sourced by setup.sh: the NODE's systemd-resolved sends the local names (NAMES) to registry-dns,
# and only them, whatever gives the node its own upstreams (per-link DNS from DHCP or networkd, a
# global DNS= in resolved.conf, or only FallbackDNS=). docs/node-setup.md explains the choice:
#
# - The names are routing domains on the registry-dns0 *link*, whose only server is registry-dns
#   (ADDRESS), set through resolved's API (resolvectl) with DefaultRoute=no: resolved sends names
#   under those domains to that link, and nothing else. resolved keeps a link's settings across its
#   own restarts; registry-dns recreating the link (a new ifindex) or a reboot loses them, so
#   setup.sh re-applies them within seconds (resolved_link, between passes).
# - A drop-in (CONFIG, resolved.conf.d/registry-dns.conf) sets what that needs globally:
#   ResolveUnicastSingleLabel=yes (else resolved never sends a single-label name to DNS at all) and
#   LLMNR=no (LLMNR ranks equal to a one-label routing domain, so while registry-dns is down
#   resolved would wait about 3 s for LLMNR before failing the name).
# - resolved uses FallbackDNS= only while no DNS server is known, and a link's server counts: on a
#   node that has nothing but FallbackDNS=, the drop-in names those servers as DNS= too, so that the
#   node keeps the same upstreams; and drops them once the node has servers of its own.
# The node's global DNS=, Domains= and per-link settings are never touched, so that
# /run/systemd/resolve/resolv.conf (the route-only link is not in it) keeps listing the node's
# real upstreams: registry-dns reads its own from there.

NAMES=${NAMES:-knative-local-registry}
# registry-dns's own interface (the chart's node.interface); resolved routes the names to a link,
# and only a link of registry-dns's own may carry them.
LINK=${INTERFACE-registry-dns0}
DROPIN=/etc/systemd/resolved.conf.d/registry-dns.conf

# On the node (through `host`): the drop-in as it must be, from CONFIG's text and resolved's state.
# Prints the file's content.
resolved_dropin() {
    host sh -c '
        set -eu
        # resolved'\''s servers as "IFINDEX ADDRESS" lines (D-Bus a(iiay): ifindex, family, bytes).
        servers() {
            busctl get-property org.freedesktop.resolve1 /org/freedesktop/resolve1 org.freedesktop.resolve1.Manager "$1" |
            awk "{ i = 3; for (e = 0; e < \$2; e++) { ifx = \$i; fam = \$(i+1); n = \$(i+2); i += 3; a = \"\";
                if (fam == 2) a = \$i \".\" \$(i+1) \".\" \$(i+2) \".\" \$(i+3);
                else for (k = 0; k < 16; k += 2) a = a (k ? \":\" : \"\") sprintf(\"%x\", \$(i+k) * 256 + \$(i+k+1));
                i += n; print ifx, a } }"
        }
        ours=$(cat "/sys/class/net/$2/ifindex" 2>/dev/null || echo none)
        promoted=$(sed -n "s/^DNS=//p" "$3" 2>/dev/null | tr " " "\n")
        own=$(servers DNS | while read -r ifx addr; do
            [ "$ifx" = "$ours" ] && continue
            [ "$ifx" = 0 ] && printf "%s\n" "$promoted" | grep -qxF "$addr" && continue
            echo "$addr"
        done)
        printf "%s\n" "$1"
        if [ -z "$own" ]; then
            fallback=$(servers FallbackDNS | cut -d" " -f2 | tr "\n" " " | sed "s/ *$//")
            if [ -n "$fallback" ]; then
                echo "# This node has no DNS server but its FallbackDNS=, which resolved stops using once any"
                echo "# link has a server (registry-dns0 has one): the same servers, as DNS=."
                echo "DNS=$fallback"
            fi
        fi
    ' sh "$conf" "$LINK" "$DROPIN"
}

resolved_install() {
    if [ -z "$LINK" ]; then
        echo "systemd-resolved: registry-dns has no interface of its own (node.interface is empty), and resolved routes names only to a link: the names are not routed; give registry-dns its interface (registry-dns0)" >&2
        return
    fi
    host sh -c '[ -e "/sys/class/net/$1" ] || echo "$1 is not there yet: registry-dns creates it; the names are routed within 5 seconds of it"' sh "$LINK"
    want=$(resolved_dropin)
    host sh -c '
        set -eu
        if [ "$(cat "$1" 2>/dev/null)" = "$2" ]; then echo "$1 up to date"; exit 0; fi
        mkdir -p "$(dirname "$1")"
        printf "%s\n" "$2" > "$1.tmp" && mv "$1.tmp" "$1"
        systemctl restart systemd-resolved
        echo "wrote $1, restarted systemd-resolved"
    ' sh "$DROPIN" "$want"
    resolved_link
}

# registry-dns0's settings in resolved, when the link exists (registry-dns creates it) and they
# differ: the server, the names as routing domains, and nothing else routed there.
resolved_link() {
    [ -n "$LINK" ] || return 0
    # shellcheck disable=SC2086 # NAMES is a list
    host sh -c '
        link=$1 address=$2
        shift 2
        [ -e "/sys/class/net/$link" ] || exit 0
        domains=$(for n in "$@"; do printf "~%s " "$n"; done | sed "s/ *$//")
        [ "$(resolvectl dns "$link" 2>/dev/null | cut -d: -f2- | xargs)" = "$address" ] &&
            [ "$(resolvectl domain "$link" 2>/dev/null | cut -d: -f2- | xargs)" = "$domains" ] && exit 0
        # shellcheck disable=SC2086
        resolvectl dns "$link" "$address" && resolvectl domain "$link" $domains &&
            resolvectl default-route "$link" false && resolvectl llmnr "$link" no && resolvectl mdns "$link" no &&
            echo "$link (ifindex $(cat "/sys/class/net/$link/ifindex")): DNS server $address for $domains, nothing else"
    ' sh "$LINK" "$ADDRESS" $NAMES
}

resolved_remove() {
    host sh -c '
        if [ -n "$2" ] && [ -e "/sys/class/net/$2" ]; then resolvectl revert "$2" && echo "$2: resolved settings reverted"; fi
        if [ -e "$1" ]; then rm -f "$1"; systemctl restart systemd-resolved; echo "removed $1, restarted systemd-resolved"; fi
    ' sh "$DROPIN" "$LINK"
}
