# syntax=docker/dockerfile:1
#
# registry-dns container image: a static, stripped binary on distroless-static, run as non-root.
#
#   docker build -t ghcr.io/example/registry-dns:dev .
#
# The binary is built by deploy/build-static.sh, the same script deploy/check.sh runs in CI
# (CI cannot pull base images or run docker, so it checks that script's output instead:
# statically linked, size, file capabilities, and that it serves DNS as a non-root user).

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# libcap2-bin: setcap, for the file capabilities that let the non-root binary bind :53 and create
# its dummy interface (see deploy/build-static.sh). Unpinned on purpose: Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcap2-bin \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the build reads (see .dockerignore).
COPY Cargo.toml Cargo.lock ./
COPY deploy/build-static.sh deploy/build-static.sh
COPY src src
# Cache mounts keep the crates and compiled dependencies between builds (BuildKit).
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
