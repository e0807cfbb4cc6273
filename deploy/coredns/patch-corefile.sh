#!/bin/sh
# Adds or removes the registry-dns stanza (registry-dns.server, beside this script) in the Corefile
# of a CoreDNS ConfigMap: kube-system/coredns (kubeadm, kind, minikube) or, on clusters that run
# NodeLocal DNSCache, kube-system/node-local-dns (whose `.` block forwards straight to the node's
# upstreams and never reaches CoreDNS).
#
#   deploy/coredns/patch-corefile.sh add    [--configmap coredns|node-local-dns] [--namespace NS] [--dry-run]
#   deploy/coredns/patch-corefile.sh remove [--configmap coredns|node-local-dns] [--namespace NS] [--dry-run]
#
# Idempotent and reversible: the stanza sits between "# BEGIN registry-dns" and "# END registry-dns"
# comment lines, so `add` twice changes nothing, `add` after editing registry-dns.server replaces
# the block in place, and `remove` deletes exactly those lines (add then remove gives back the
# original Corefile). A hand-written `knative-local-registry` block outside the markers is an error,
# never a second block (CoreDNS refuses duplicate zones).
#
# For node-local-dns the block gets the `bind` line of the existing blocks (node-local-dns listens
# only on its own addresses, e.g. `bind 169.254.20.10 10.96.0.10`; without it CoreDNS would bind
# every address on the node, 169.254.20.25:53 included).
#
# Offline (what deploy/check.sh tests): --stdin reads a Corefile on stdin and writes the new one on
# stdout, touching no cluster:
#   deploy/coredns/patch-corefile.sh add --stdin --configmap node-local-dns < Corefile
set -eu

here=$(cd "$(dirname "$0")" && pwd)
STANZA_FILE=${STANZA_FILE:-$here/registry-dns.server}
BEGIN_MARK="# BEGIN registry-dns (added by deploy/coredns/patch-corefile.sh; undo: patch-corefile.sh remove)"
END_MARK="# END registry-dns"

usage() {
    sed -n '7,8p' "$0" | sed 's/^# *//' >&2
    echo "       ... add|remove --stdin [--configmap coredns|node-local-dns]  (Corefile on stdin, new one on stdout)" >&2
    exit 2
}

# corefile_transform add|remove CONFIGMAP: Corefile on stdin, new Corefile on stdout.
# Exit status 3 (with a message on stderr) when the Corefile cannot be changed safely.
corefile_transform() {
    [ -r "$STANZA_FILE" ] || { echo "patch-corefile.sh: cannot read $STANZA_FILE" >&2; return 3; }
    awk -v action="$1" -v configmap="$2" -v stanza_file="$STANZA_FILE" \
        -v begin_mark="$BEGIN_MARK" -v end_mark="$END_MARK" '
        function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t\r]+$/, "", s); return s }
        function fail(msg) { print "patch-corefile.sh: " msg > "/dev/stderr"; failed = 1; exit 3 }
        { line[++n] = $0 }
        END {
            if (failed) exit 3
            b = 0; e = 0
            for (i = 1; i <= n; i++) {
                t = trim(line[i])
                if (index(t, "# BEGIN registry-dns") == 1) { if (b) fail("two BEGIN registry-dns markers"); b = i }
                else if (index(t, "# END registry-dns") == 1) { if (!b || e) fail("END registry-dns marker without its BEGIN"); e = i }
            }
            if (b && !e) fail("BEGIN registry-dns marker without its END: fix the Corefile by hand")
            bind = ""
            for (i = 1; i <= n; i++) {
                if (b && i >= b && i <= e) continue
                t = trim(line[i])
                if (t ~ /^#/) continue
                if (t ~ /^knative-local-registry\.?(:[0-9]+)?([ \t{]|$)/ || t ~ /[ \t]knative-local-registry\.?(:[0-9]+)?([ \t{]|$)/ && t ~ /\{$/)
                    fail("line " i " already serves knative-local-registry outside the registry-dns markers: \"" t "\"")
                if (bind == "" && t ~ /^bind[ \t]/) bind = t
            }
            if (action == "remove") {
                for (i = 1; i <= n; i++) if (!(b && i >= b && i <= e)) print line[i]
                exit 0
            }
            # action == "add": the block, then the Corefile with it in place of the old one (or at the end).
            m = 0
            block[++m] = begin_mark
            first = 1
            while ((getline s < stanza_file) > 0) {
                block[++m] = s
                if (first && configmap == "node-local-dns") {
                    if (bind != "") block[++m] = "    " bind
                    else print "patch-corefile.sh: warning: no bind line in this Corefile; the block will bind every address" > "/dev/stderr"
                }
                first = 0
            }
            close(stanza_file)
            block[++m] = end_mark
            if (b) {
                for (i = 1; i < b; i++) print line[i]
                for (j = 1; j <= m; j++) print block[j]
                for (i = e + 1; i <= n; i++) print line[i]
            } else {
                for (i = 1; i <= n; i++) print line[i]
                for (j = 1; j <= m; j++) print block[j]
            }
        }'
}

# JSON string body (no quotes) of a text file, for the merge patch.
json_string() {
    awk 'BEGIN { ORS = "" } { gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); gsub(/\t/, "\\t"); gsub(/\r/, "\\r"); print $0 "\\n" }' "$1"
}

[ $# -ge 1 ] || usage
action=$1; shift
case "$action" in add|remove) ;; *) usage ;; esac
configmap=coredns; namespace=kube-system; stdin=0; dry_run=0
while [ $# -gt 0 ]; do
    case "$1" in
        --configmap) [ $# -ge 2 ] || usage; configmap=$2; shift 2 ;;
        --configmap=*) configmap=${1#*=}; shift ;;
        --namespace|-n) [ $# -ge 2 ] || usage; namespace=$2; shift 2 ;;
        --namespace=*) namespace=${1#*=}; shift ;;
        --stdin) stdin=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage ;;
        *) echo "patch-corefile.sh: unknown argument $1" >&2; usage ;;
    esac
done
case "$configmap" in coredns|node-local-dns) ;; *) echo "patch-corefile.sh: --configmap is coredns or node-local-dns" >&2; exit 2 ;; esac

if [ "$stdin" = 1 ]; then
    corefile_transform "$action" "$configmap"
    exit
fi

command -v kubectl >/dev/null || { echo "patch-corefile.sh: kubectl not found" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rv=$(kubectl -n "$namespace" get configmap "$configmap" -o 'jsonpath={.metadata.resourceVersion}')
kubectl -n "$namespace" get configmap "$configmap" -o 'jsonpath={.data.Corefile}' | awk '{ print }' > "$tmp/old"
[ -s "$tmp/old" ] || { echo "patch-corefile.sh: $namespace/$configmap has no Corefile key" >&2; exit 1; }
corefile_transform "$action" "$configmap" < "$tmp/old" > "$tmp/new"

if cmp -s "$tmp/old" "$tmp/new"; then
    echo "$namespace/$configmap: unchanged (registry-dns stanza already $( [ "$action" = add ] && echo present || echo absent ))"
    exit 0
fi
diff -u "$tmp/old" "$tmp/new" | sed '1,2d' || true
if [ "$dry_run" = 1 ]; then
    echo "(dry run: $namespace/$configmap not changed)"
    exit 0
fi
# The resourceVersion makes the patch fail instead of overwriting a concurrent edit.
printf '{"metadata":{"resourceVersion":"%s"},"data":{"Corefile":"%s"}}' "$rv" "$(json_string "$tmp/new")" > "$tmp/patch.json"
kubectl -n "$namespace" patch configmap "$configmap" --type merge --patch-file "$tmp/patch.json"
echo "$namespace/$configmap: registry-dns stanza $( [ "$action" = add ] && echo added || echo removed )."
echo "CoreDNS's reload plugin applies it within about a minute; to apply it now:"
if [ "$configmap" = node-local-dns ]; then
    echo "  kubectl -n $namespace rollout restart daemonset node-local-dns"
else
    echo "  kubectl -n $namespace rollout restart deployment coredns"
fi
