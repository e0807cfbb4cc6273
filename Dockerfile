# syntax=docker/dockerfile:1
#
# registry-dns container image: a static, stripped binary on distroless-static, run as non-root.
#
#   docker build -t ghcr.io/registry-dns/registry-dns:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/registry-dns/registry-dns:dev --push .
#
# The binary is built by deploy/build-static.sh, the same script deploy/check.sh runs in CI
# (CI cannot pull base images or run docker, so it checks that script's output instead:
# statically linked, size, file capabilities, and that it serves DNS as a non-root user).
#
# Several platforms: the build stage runs on the builder's own platform ($BUILDPLATFORM) and
# cross-compiles for $TARGETARCH with Debian's cross gcc as the linker. Running the build stage
# under QEMU instead would emulate a fat-LTO release build, ten times slower or worse; the final
# stage only copies a file, so it needs no emulation either.

ARG RUST_VERSION=1.95

FROM --platform=$BUILDPLATFORM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG TARGETARCH
ARG BUILDARCH
# libcap2-bin: setcap, for the file capabilities that let the non-root binary bind :53 and create
# its dummy interface (see deploy/build-static.sh); for another architecture, its cross gcc, static
# glibc and Rust standard library, here so that they stay in a cached layer. Unpinned on purpose:
# Debian's security updates.
# hadolint ignore=DL3008,SC2086
RUN case "$TARGETARCH" in \
        "$BUILDARCH") cross="" ;; \
        arm64) cross="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" target=aarch64-unknown-linux-gnu ;; \
        amd64) cross="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" target=x86_64-unknown-linux-gnu ;; \
        *) echo "unsupported TARGETARCH $TARGETARCH" >&2; exit 1 ;; \
    esac \
    && apt-get update \
    && apt-get install -y --no-install-recommends libcap2-bin $cross \
    && rm -rf /var/lib/apt/lists/* \
    && if [ -n "$cross" ]; then rustup target add "$target"; fi
WORKDIR /src
# Only what the build reads (see .dockerignore).
COPY Cargo.toml Cargo.lock ./
COPY deploy/build-static.sh deploy/build-static.sh
COPY src src
# Cache mounts keep the crates and compiled dependencies between builds (BuildKit); each target
# has its own directory under target/. The script picks the target from TARGETARCH (declared
# above, so it is in the environment).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    deploy/build-static.sh /out

# distroless static: CA certificates, /etc/passwd with nonroot (65532), tzdata; no shell, no libc.
FROM gcr.io/distroless/static-debian12:nonroot
# COPY keeps the security.capability xattr set by setcap (as CoreDNS's image relies on).
COPY --from=build /out/registry-dns /registry-dns
USER 65532:65532
EXPOSE 53/udp 53/tcp
ENTRYPOINT ["/registry-dns"]
