#!/bin/sh
# Builds the release binary the container image ships: static (glibc, +crt-static), stripped,
# with the file capabilities the DaemonSet relies on. The ONE place that says how: the Dockerfile
# runs this script and deploy/check.sh runs this same script, so CI checks exactly what ships.
#
#   deploy/build-static.sh OUTDIR [TARGET]     -> OUTDIR/registry-dns
#
# TARGET is a Rust target triple; without it, the platform `docker buildx` builds for
# (TARGETARCH: amd64 or arm64), else this machine's own target. A target other than this
# machine's is cross-compiled with Debian's cross gcc as the linker (gcc-aarch64-linux-gnu and
# libc6-dev-arm64-cross for arm64, gcc-x86-64-linux-gnu and libc6-dev-amd64-cross for amd64),
# which also builds the C and assembly parts of ring (the cc crate finds it by its prefix).
#
# Why file capabilities: Kubernetes puts `capabilities.add` of a non-root container in the
# bounding and permitted sets of the runtime's init process, but a non-root execve() keeps none of
# them (Kubernetes cannot set ambient capabilities). A binary carrying them as file capabilities
# (+ep) gets them at exec, also under allowPrivilegeEscalation: false (no_new_privs), because they
# are not *new*: the runtime's init already held them. The pod must therefore add both
# capabilities (deploy/base/daemonset.yaml); without them in the bounding set exec fails (EPERM).
# setcap only writes an extended attribute, so it works on a binary of any architecture.
set -eu

out=${1:?usage: deploy/build-static.sh OUTDIR [TARGET]}
host=$(rustc -vV | sed -n 's/^host: //p')
case "${2:-}/${TARGETARCH:-}" in
    /amd64) TARGET=x86_64-unknown-linux-gnu ;;
    /arm64) TARGET=aarch64-unknown-linux-gnu ;;
    /) TARGET=$host ;;
    /*) echo "build-static.sh: unsupported TARGETARCH '$TARGETARCH' (amd64, arm64)" >&2; exit 1 ;;
    *) TARGET=$2 ;;
esac

# Kept as variables so that deploy/check.sh can print exactly what it ran.
BUILD_RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols"
FILE_CAPS="cap_net_bind_service,cap_net_admin=+ep"

cd "$(dirname "$0")/.."
command -v setcap >/dev/null || { echo "build-static.sh: setcap missing (Debian package libcap2-bin)" >&2; exit 1; }

if [ "$TARGET" != "$host" ]; then
    # CARGO_TARGET_<TRIPLE>_LINKER, unless the caller chose one: aarch64-unknown-linux-gnu -> aarch64-linux-gnu-gcc.
    linker_var=CARGO_TARGET_$(echo "$TARGET" | tr 'a-z-' 'A-Z_')_LINKER
    eval "linker=\${$linker_var:-$(echo "$TARGET" | sed 's/-unknown-/-/')-gcc}"
    command -v "$linker" >/dev/null || { echo "build-static.sh: cross linker $linker missing for $TARGET" >&2; exit 1; }
    export "$linker_var=$linker"
    if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$TARGET"; then
        rustup target add "$TARGET"
    fi
    echo "+ $linker_var=$linker"
fi
echo "+ RUSTFLAGS=\"$BUILD_RUSTFLAGS\" cargo build --release --locked --target $TARGET"
# --target is what keeps +crt-static off build scripts and proc macros (they must stay dynamic).
RUSTFLAGS="$BUILD_RUSTFLAGS" cargo build --release --locked --target "$TARGET"

mkdir -p "$out"
cp "${CARGO_TARGET_DIR:-target}/$TARGET/release/registry-dns" "$out/registry-dns"
echo "+ setcap $FILE_CAPS $out/registry-dns"
setcap "$FILE_CAPS" "$out/registry-dns"
