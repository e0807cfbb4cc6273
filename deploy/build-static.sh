#!/bin/sh
# Builds the release binary the container image ships: static (glibc, +crt-static), stripped,
# with the file capabilities the DaemonSet relies on. The ONE place that says how: the Dockerfile
# runs this script and deploy/check.sh runs this same script, so CI checks exactly what ships.
#
#   deploy/build-static.sh OUTDIR     -> OUTDIR/registry-dns
#
# Why file capabilities: Kubernetes puts `capabilities.add` of a non-root container in the
# bounding and permitted sets of the runtime's init process, but a non-root execve() keeps none of
# them (Kubernetes cannot set ambient capabilities). A binary carrying them as file capabilities
# (+ep) gets them at exec, also under allowPrivilegeEscalation: false (no_new_privs), because they
# are not *new*: the runtime's init already held them. The pod must therefore add both
# capabilities (deploy/base/daemonset.yaml); without them in the bounding set exec fails (EPERM).
set -eu

out=${1:?usage: deploy/build-static.sh OUTDIR}

# Kept as variables so that deploy/check.sh can print exactly what it ran.
TARGET=x86_64-unknown-linux-gnu
BUILD_RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols"
FILE_CAPS="cap_net_bind_service,cap_net_admin=+ep"

cd "$(dirname "$0")/.."
command -v setcap >/dev/null || { echo "build-static.sh: setcap missing (Debian package libcap2-bin)" >&2; exit 1; }

echo "+ RUSTFLAGS=\"$BUILD_RUSTFLAGS\" cargo build --release --locked --target $TARGET"
# --target is what keeps +crt-static off build scripts and proc macros (they must stay dynamic).
RUSTFLAGS="$BUILD_RUSTFLAGS" cargo build --release --locked --target "$TARGET"

mkdir -p "$out"
cp "${CARGO_TARGET_DIR:-target}/$TARGET/release/registry-dns" "$out/registry-dns"
echo "+ setcap $FILE_CAPS $out/registry-dns"
setcap "$FILE_CAPS" "$out/registry-dns"
