#!/bin/sh
# Runs in the registry-dns-node-setup pod (privileged, hostPID) and changes the NODE through
# nsenter into PID 1's namespaces. ACTION=install (default) or remove; MODE=auto (default),
# resolved (resolved.sh), resolv-conf or none (the node's resolver is wired some other way). Then
# each container runtime's configuration for the registries (registries.sh; one script per
# runtime: containerd-hosts.sh, containers-registries.sh for CRI-O and podman, docker-daemon.sh),
# for every runtime the node has whose setting (CONTAINERD, CONTAINERS_IMAGE, DOCKER) is auto.
# Idempotent: re-run every 5 minutes, so a DHCP client that rewrites /etc/resolv.conf is
# corrected, a CA that changed reaches the nodes, and systemd-resolved restarts only when the
# drop-in changed; in between, every 5 seconds, registry-dns0's routing in resolved is checked.
# ONCE=1 runs one pass and exits (by hand, and the tests).
set -eu
ACTION=${ACTION:-install}
MODE=${MODE:-auto}
# The runtimes, each with its setting: auto (configure it if the node has it) or off.
RUNTIMES="containerd:${CONTAINERD:-auto} containers_image:${CONTAINERS_IMAGE:-auto} docker:${DOCKER:-auto}"
ADDRESS=${ADDRESS:-169.254.20.25}
conf=$(cat "${CONFIG:-/config/registry-dns.conf}")

host() { nsenter --target 1 --mount --uts --ipc --net --pid -- "$@"; }
# deploy/check.sh and tests/containerd_cri.rs run this script against scratch files, in place.
if [ -n "${SETUP_TEST:-}" ]; then host() { "$@"; }; fi
for f in resolved.sh registries.sh containerd-hosts.sh containers-registries.sh docker-daemon.sh; do
    . "$(dirname "$0")/$f"
done

if [ "$MODE" = auto ]; then
    if host sh -c 'command -v systemctl >/dev/null && systemctl is-active --quiet systemd-resolved'; then
        MODE=resolved
    else
        MODE=resolv-conf
    fi
fi
echo "node $(host hostname): $ACTION, mode $MODE"

# In place (cat >, not mv): in kind and other containers /etc/resolv.conf is a bind mount.
resolvconf_install() {
    host sh -c '
        set -eu
        first=$(grep -m1 "^nameserver" /etc/resolv.conf | tr -s " \t" " " | cut -d" " -f2 || true)
        if [ "$first" = "$1" ]; then echo "/etc/resolv.conf: $1 already first"; exit 0; fi
        new=$( { echo "nameserver $1 # registry-dns"; grep -v "^nameserver $1\( \|\$\)" /etc/resolv.conf; } )
        printf "%s\n" "$new" > /etc/resolv.conf
        echo "/etc/resolv.conf: $1 added as first nameserver"
    ' sh "$ADDRESS"
}

resolvconf_remove() {
    host sh -c '
        if grep -q "^nameserver $1\( \|\$\)" /etc/resolv.conf; then
            new=$(grep -v "^nameserver $1\( \|\$\)" /etc/resolv.conf)
            printf "%s\n" "$new" > /etc/resolv.conf
            echo "/etc/resolv.conf: $1 removed"
        fi
    ' sh "$ADDRESS"
}

link=true
case "$ACTION/$MODE" in
    install/resolved) apply=resolved_install link=resolved_link ;;
    install/resolv-conf) apply=resolvconf_install ;;
    install/none) apply=true ;;
    remove/*) apply=remove_all ;;
    *) echo "ACTION is install or remove; MODE is auto, resolved, resolv-conf or none" >&2; exit 2 ;;
esac
for runtime in $RUNTIMES; do
    case "${runtime#*:}" in
        auto | off) ;;
        *) echo "CONTAINERD, CONTAINERS_IMAGE and DOCKER are auto or off" >&2; exit 2 ;;
    esac
done

# Install for each runtime the node has; remove for each, had or not (its files may outlive it).
runtimes() {
    for runtime in $RUNTIMES; do
        [ "${runtime#*:}" = auto ] || continue
        if [ "$ACTION" = remove ] || "${runtime%%:*}_present"; then "${runtime%%:*}_$ACTION"; fi
    done
}

remove_all() {
    if [ "$MODE" != none ]; then
        resolved_remove
        resolvconf_remove
    fi
    # The dummy interface that registry-dns keeps across restarts: only once registry-dns is gone
    # from this node (delete its DaemonSet first; this loop comes back every 5 minutes).
    if host ip link show registry-dns0 >/dev/null 2>&1; then
        if host sh -c 'command -v pgrep >/dev/null && ! pgrep -x registry-dns >/dev/null'; then
            host ip link del registry-dns0 && echo "deleted registry-dns0"
        else
            echo "registry-dns still runs here (or the node has no pgrep): registry-dns0 left in place"
        fi
    fi
}

while :; do
    $apply
    runtimes
    [ -z "${SETUP_TEST:-}${ONCE:-}" ] || exit 0
    i=0
    while [ $i -lt 60 ]; do
        sleep 5
        $link
        i=$((i + 1))
    done
done
