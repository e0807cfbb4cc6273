#!/usr/bin/env python3
"""Builds the images a test node runs, without a daemon or a registry: one-layer OCI archives that
`ctr -n k8s.io images import` loads under the names the manifests use, so that the manifests stay
as shipped (tests/kubelet_cluster.rs; no image can be pulled on these machines).

    build.py OUTDIR --pause BIN --registry-dns BIN --crane BIN --coredns BIN --coredns-version V
             --lookup-musl BIN --version V --revision R

writes OUTDIR/NAME.tar for each image below and prints `NAME REFERENCE` per line:
  pause         the pod sandbox (containerd's sandbox_image): our static pause binary
  registry-dns  deploy/build-static.sh's binary as the Dockerfile's final stage has it: /registry-dns
                with its file capabilities (the security.capability xattr, in the tar's PAX
                records, as BuildKit's COPY keeps it), USER 65532:65532, ENTRYPOINT, the release's
                OCI labels, and the few files of distroless/static-debian12:nonroot it relies on
  registry      docker.io/library/registry:2 (deploy/registry): Debian's distribution 2.8 binary and
                the libraries it links, with the official image's entrypoint (`registry serve
                CONFIG`)
  node-setup    docker.io/library/debian:bookworm-slim (deploy/node): what setup.sh runs inside
                the container (sh, cat, sleep, nsenter) and their libraries, from this host, which
                is Debian 12 (bookworm) too
  crane         a test-only image: crane and /app.tar, a docker-archive image (the pause binary as
                /app) that a pod pushes to the registry by name
  coredns       registry.k8s.io/coredns/coredns (kubeadm's): /coredns with cap_net_bind_service as
                a file capability, USER 65532 (nonroot), ENTRYPOINT /coredns, as CoreDNS's own
                image has it, on the same few distroless files
  resolvers     a test-only image: glibc's getent (this host's, with its libraries) and
                tests/resolvers/lookup.c linked static with musl (/lookup-musl)
"""

import argparse
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PAUSE_REF = "registry.k8s.io/pause:3.10"


class Layer:
    """A layer's files, written as an uncompressed tar with fixed owners and times, parents
    first, so that the same inputs give the same digest."""

    def __init__(self):
        self.entries = {}  # path -> (TarInfo, bytes or None)

    def _dirs(self, path):
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.entries:
                self.dir("/" + d)

    def dir(self, path, mode=0o755, uid=0):
        info = tarfile.TarInfo(path.strip("/"))
        info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, uid, uid
        self._dirs(path)
        self.entries[info.name] = (info, None)

    def file(self, path, data, mode=0o644, xattrs=None):
        info = tarfile.TarInfo(path.strip("/"))
        info.size, info.mode = len(data), mode
        for name, value in (xattrs or {}).items():
            # Go's archive/tar (containerd's unpacker) reads these PAX records as xattrs.
            info.pax_headers["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
        self._dirs(path)
        self.entries[info.name] = (info, data)

    def host_file(self, source, path=None, mode=None, xattrs=()):
        with open(source, "rb") as f:
            data = f.read()
        found = {}
        for name in xattrs:
            try:
                found[name] = os.getxattr(source, name)
            except OSError as e:
                sys.exit(f"build.py: {source} has no {name} xattr ({e})")
        self.file(path or source, data, mode if mode is not None else os.stat(source).st_mode & 0o7777, found)

    def host_binaries(self, binaries):
        """Host binaries (name -> path in the image) and every library `ldd` says they load."""
        libs = set()
        for source, path in binaries.items():
            self.host_file(source, path)
            out = subprocess.run(["ldd", source], capture_output=True, text=True).stdout
            for line in out.splitlines():
                words = line.split()
                if "=>" in words and len(words) > words.index("=>") + 1 and words[words.index("=>") + 1].startswith("/"):
                    libs.add(words[words.index("=>") + 1])
                elif words and words[0].startswith("/"):
                    libs.add(words[0])  # the dynamic loader
        for lib in sorted(libs):
            self.host_file(os.path.realpath(lib), lib, 0o755)

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(self.entries):
                info, data = self.entries[name]
                info.mtime = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_config(layer_tar, config):
    return json.dumps(
        {
            "architecture": ARCH,
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [blob(layer_tar)]},
            "history": [{"created_by": "tests/cluster/images/build.py"}],
        },
        sort_keys=True,
    ).encode()


def oci_archive(out, reference, layer, config):
    """An OCI image layout in a tar, the image named `reference` for containerd."""
    layer_tar = layer.tar()
    config_json = image_config(layer_tar, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config_json), "size": len(config_json)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blob(layer_tar), "size": len(layer_tar)}],
        },
        sort_keys=True,
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": blob(manifest),
                    "size": len(manifest),
                    "platform": {"architecture": ARCH, "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": reference,
                        "org.opencontainers.image.ref.name": reference.rsplit(":", 1)[1],
                    },
                }
            ],
        },
        sort_keys=True,
    ).encode()
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index}
    for data in (layer_tar, config_json, manifest):
        files["blobs/sha256/" + blob(data)[7:]] = data
    write_tar(out, files)


def docker_archive(reference, layer, config):
    """A `docker save` tarball (what `crane push FILE` reads) of one image, as bytes."""
    layer_tar = layer.tar()
    config_json = image_config(layer_tar, config)
    config_name = blob(config_json)[7:] + ".json"
    layer_name = blob(layer_tar)[7:] + "/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [reference], "Layers": [layer_name]}]).encode()
    buf = io.BytesIO()
    write_tar(buf, {"manifest.json": manifest, config_name: config_json, layer_name: layer_tar})
    return buf.getvalue()


def write_tar(out, files):
    with tarfile.open(fileobj=out if hasattr(out, "write") else None, name=None if hasattr(out, "write") else out, mode="w") as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            tar.addfile(info, io.BytesIO(files[name]))


def distroless_nonroot(layer):
    """The files of distroless/static-debian12:nonroot that a static binary may read."""
    layer.file("/etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
    layer.file("/etc/group", b"root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n")
    layer.file("/etc/nsswitch.conf", b"hosts: files dns\n")
    layer.host_file("/etc/ssl/certs/ca-certificates.crt", mode=0o644)
    layer.dir("/tmp", 0o1777)
    layer.dir("/home/nonroot", 0o700, uid=65532)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--pause", required=True)
    p.add_argument("--registry-dns", required=True)
    p.add_argument("--crane", required=True)
    p.add_argument("--coredns", required=True, help="the CoreDNS binary, with cap_net_bind_service+ep")
    p.add_argument("--coredns-version", required=True)
    p.add_argument("--lookup-musl", required=True)
    p.add_argument("--version", required=True, help="registry-dns's version: the image tag (the chart's appVersion)")
    p.add_argument("--revision", required=True, help="the git commit, for the OCI revision label")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    images = {}

    pause = Layer()
    pause.host_file(a.pause, "/pause", 0o755)
    images["pause"] = (PAUSE_REF, pause, {"Entrypoint": ["/pause"], "User": "65535:65535", "Env": ["PATH=" + PATH]})

    rdns = Layer()
    distroless_nonroot(rdns)
    rdns.host_file(a.registry_dns, "/registry-dns", 0o755, xattrs=["security.capability"])
    images["registry-dns"] = (
        f"ghcr.io/registry-dns/registry-dns:{a.version}",
        rdns,
        {
            "User": "65532:65532",
            "Entrypoint": ["/registry-dns"],
            "Env": ["PATH=" + PATH, "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
            "WorkingDir": "/home/nonroot",
            "ExposedPorts": {"53/udp": {}, "53/tcp": {}},
            # What the release's docker/metadata-action writes.
            "Labels": {
                "org.opencontainers.image.title": "registry-dns",
                "org.opencontainers.image.version": a.version,
                "org.opencontainers.image.revision": a.revision,
                "org.opencontainers.image.source": "https://github.com/registry-dns/registry-dns",
            },
        },
    )

    registry = Layer()
    registry.host_binaries({"/usr/bin/docker-registry": "/bin/registry"})
    registry.dir("/var/lib/registry")
    registry.dir("/etc/docker/registry")
    images["registry"] = (
        "docker.io/library/registry:2",
        registry,
        {"Entrypoint": ["/bin/registry", "serve"], "Cmd": ["/etc/docker/registry/config.yml"], "Env": ["PATH=" + PATH], "ExposedPorts": {"5000/tcp": {}}},
    )

    setup = Layer()
    # What deploy/node's scripts run in their own container (the rest runs on the node, through nsenter).
    setup.host_binaries({
        "/bin/dash": "/bin/sh", "/bin/cat": "/bin/cat", "/bin/sleep": "/bin/sleep", "/usr/bin/nsenter": "/usr/bin/nsenter",
        "/usr/bin/dirname": "/usr/bin/dirname", "/bin/grep": "/bin/grep", "/bin/sed": "/bin/sed", "/usr/bin/head": "/usr/bin/head",
    })
    setup.dir("/tmp", 0o1777)
    images["node-setup"] = ("docker.io/library/debian:bookworm-slim", setup, {"Cmd": ["sh"], "Env": ["PATH=" + PATH]})

    app = Layer()
    app.host_file(a.pause, "/app", 0o755)
    crane = Layer()
    crane.host_file(a.crane, "/crane", 0o755)
    crane.file("/app.tar", docker_archive("knative-local-registry:5000/app:1", app, {"Entrypoint": ["/app"], "Env": ["PATH=" + PATH]}))
    crane.dir("/tmp", 0o1777)
    images["crane"] = ("registry-dns.test/crane:1", crane, {"Entrypoint": ["/crane"], "Env": ["PATH=" + PATH, "HOME=/tmp"]})

    coredns = Layer()
    distroless_nonroot(coredns)
    coredns.host_file(a.coredns, "/coredns", 0o755, xattrs=["security.capability"])
    images["coredns"] = (
        f"registry.k8s.io/coredns/coredns:{a.coredns_version}",
        coredns,
        {"User": "65532:65532", "Entrypoint": ["/coredns"], "Env": ["PATH=" + PATH], "ExposedPorts": {"53/udp": {}, "53/tcp": {}}},
    )

    resolvers = Layer()
    resolvers.host_binaries({"/usr/bin/getent": "/usr/bin/getent"})
    resolvers.host_file(a.lookup_musl, "/lookup-musl", 0o755)
    resolvers.file("/etc/nsswitch.conf", b"hosts: files dns\n")
    images["resolvers"] = ("registry-dns.test/resolvers:1", resolvers, {"Env": ["PATH=" + PATH]})

    for name, (reference, layer, config) in images.items():
        oci_archive(os.path.join(a.out, name + ".tar"), reference, layer, config)
        print(name, reference)


if __name__ == "__main__":
    main()
