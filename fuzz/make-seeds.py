#!/usr/bin/env python3
"""Regenerates the committed seed corpora in fuzz/seeds/ from real DNS clients.

Every client's queries go through a recording proxy in front of nsd, so each capture gives a
query seed (fuzz/seeds/query/) and a query/answer pair (fuzz/seeds/upstream_response/, as the
target reads them: the query's length as two bytes, the query, the answer with the relay's ID). The clients: dig with
its usual flags, glibc (getent, with resolv.conf options), musl (getaddrinfo) and Go's own
resolver (net.Resolver with PreferGo) when musl-gcc and go are installed. Then two real queries
are mutated into the malformed shapes the server must survive.

Run as root (it uses a private network and mount namespace, so that glibc, musl and Go, which
only talk to port 53 of the resolv.conf address, reach the proxy): fuzz/make-seeds.py
Needs dig, nsd (tests/run.sh installs both), getent; musl-tools and golang-go are optional.
"""

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
NSD_PORT = 5300

ZONE = """$ORIGIN test.
$TTL 300
@ IN SOA ns.test. hostmaster.test. 1 7200 1800 86400 300
@ IN NS ns.test.
@ IN MX 10 mail.test.
ns IN A 127.0.0.1
www IN A 192.0.2.1
www IN AAAA 2001:db8::1
www IN TXT "v=spf1 -all"
alias IN CNAME www.test.
""" + "".join(f"big IN A 198.51.100.{i}\nbig IN AAAA 2001:db8::{i:x}\n" for i in range(40))


def main():
    if os.environ.get("SEEDS_IN_NAMESPACE") != "1":
        env = dict(os.environ, SEEDS_IN_NAMESPACE="1")
        sys.exit(subprocess.call(["unshare", "--net", "--mount", sys.executable, __file__], env=env))
    subprocess.check_call(["ip", "link", "set", "lo", "up"])
    work = tempfile.mkdtemp(prefix="registry-dns-seeds-")
    nsd = start_nsd(work)
    proxy = Proxy()
    try:
        capture_all(work, proxy)
    finally:
        nsd.kill()
        nsd.wait()
        shutil.rmtree(work, ignore_errors=True)
    write_seeds(proxy.captures)


def start_nsd(work):
    with open(os.path.join(work, "test.zone"), "w") as f:
        f.write(ZONE)
    with open(os.path.join(work, "nsd.conf"), "w") as f:
        f.write(
            f'server:\n  ip-address: 127.0.0.1@{NSD_PORT}\n  username: ""\n  chroot: ""\n  zonesdir: "{work}"\n'
            f'  pidfile: "{work}/nsd.pid"\n  database: ""\n  xfrdfile: "{work}/xfrd"\n'
            f'  zonelistfile: "{work}/zone.list"\n  server-count: 1\nremote-control:\n  control-enable: no\n'
            'zone:\n  name: "test."\n  zonefile: "test.zone"\n'
        )
    nsd = shutil.which("nsd") or "/usr/sbin/nsd"
    child = subprocess.Popen([nsd, "-d", "-c", os.path.join(work, "nsd.conf")], stderr=subprocess.DEVNULL)
    time.sleep(1)
    return child


class Proxy:
    """Relays UDP and TCP on 127.0.0.1:53 to nsd and records every (label, transport, query, answer)."""

    def __init__(self):
        self.label = "none"
        self.captures = []
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 53))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 53))
        self.tcp.listen(16)
        threading.Thread(target=self.serve_udp, daemon=True).start()
        threading.Thread(target=self.serve_tcp, daemon=True).start()

    def serve_udp(self):
        while True:
            query, client = self.udp.recvfrom(65535)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
                up.settimeout(2)
                up.sendto(query, ("127.0.0.1", NSD_PORT))
                try:
                    answer = up.recv(65535)
                except OSError:
                    continue
            self.captures.append((self.label, "udp", query, answer))
            self.udp.sendto(answer, client)

    def serve_tcp(self):
        while True:
            conn, _ = self.tcp.accept()
            threading.Thread(target=self.serve_connection, args=(conn,), daemon=True).start()

    def serve_connection(self, conn):
        with conn:
            while True:
                query = read_framed(conn)
                if query is None:
                    return
                with socket.create_connection(("127.0.0.1", NSD_PORT), timeout=2) as up:
                    up.sendall(struct.pack("!H", len(query)) + query)
                    answer = read_framed(up)
                self.captures.append((self.label, "tcp", query, answer))
                conn.sendall(struct.pack("!H", len(answer)) + answer)


def read_framed(conn):
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    prefix = exactly(2)
    return prefix and exactly(struct.unpack("!H", prefix)[0])


def capture_all(work, proxy):
    def run(label, argv, env=None):
        proxy.label = label
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20)
        time.sleep(0.2)

    dig = ["dig", "@127.0.0.1", "+tries=1", "+time=2"]
    for label, args in [
        ("dig-a", ["www.test"]),
        ("dig-aaaa", ["www.test", "AAAA"]),
        ("dig-any", ["test", "ANY"]),
        ("dig-mx", ["test", "MX"]),
        ("dig-soa", ["test", "SOA"]),
        ("dig-txt", ["www.test", "TXT"]),
        ("dig-cname", ["alias.test"]),
        ("dig-nxdomain", ["nothing.test"]),
        ("dig-refused", ["knative-local-registry"]),
        ("dig-0x20", ["WwW.TeSt"]),
        ("dig-dnssec", ["www.test", "+dnssec"]),
        ("dig-cookie", ["www.test", "+cookie"]),
        ("dig-nocookie", ["www.test", "+nocookie"]),
        ("dig-nsid", ["www.test", "+nsid"]),
        ("dig-bufsize512", ["www.test", "+bufsize=512"]),
        ("dig-bufsize4096", ["www.test", "+bufsize=4096"]),
        ("dig-noedns", ["www.test", "+noedns"]),
        ("dig-norec", ["www.test", "+norec"]),
        ("dig-cd-ad", ["www.test", "+cd", "+adflag"]),
        ("dig-subnet", ["www.test", "+subnet=192.0.2.0/24"]),
        ("dig-padding", ["www.test", "+padding=128"]),
        ("dig-truncated", ["big.test", "+noedns", "+ignore"]),
        ("dig-tcp", ["www.test", "+tcp"]),
        ("dig-tcp-big", ["big.test", "ANY", "+tcp"]),
    ]:
        run(label, dig + args)

    resolv = os.path.join(work, "resolv.conf")
    subprocess.check_call(["mount", "--bind", resolv_file(resolv, ""), "/etc/resolv.conf"])
    hosts = os.path.join(work, "hosts")
    with open(hosts, "w") as f:
        f.write("127.0.0.1 localhost\n")
    subprocess.check_call(["mount", "--bind", hosts, "/etc/hosts"])
    for label, options, name in [
        ("glibc-ahosts", "", "www.test"),
        ("glibc-edns0-trust-ad", "options edns0 trust-ad", "www.test"),
        ("glibc-single-request", "options single-request", "www.test"),
        ("glibc-use-vc", "options use-vc", "www.test"),
        ("glibc-search", "search test", "www"),
        ("glibc-tld-less", "", "knative-local-registry"),
    ]:
        resolv_file(resolv, options)
        run(label, ["getent", "ahosts", name])
    resolv_file(resolv, "")

    if shutil.which("musl-gcc"):
        binary = build_c(work, "gai", GETADDRINFO_C)
        run("musl-getaddrinfo", [binary, "www.test"])
        run("musl-tld-less", [binary, "knative-local-registry"])
    else:
        print("musl-gcc not found: no musl seeds", file=sys.stderr)
    if shutil.which("go"):
        binary = build_go(work)
        run("go-lookuphost", [binary, "www.test"])
        resolv_file(resolv, "options trust-ad")
        run("go-trust-ad", [binary, "www.test"])
        resolv_file(resolv, "")
    else:
        print("go not found: no seeds from Go's resolver", file=sys.stderr)


def resolv_file(path, options):
    with open(path, "w") as f:
        f.write(f"nameserver 127.0.0.1\n{options}\n")
    return path


GETADDRINFO_C = r"""
#include <netdb.h>
#include <stddef.h>
int main(int argc, char **argv) {
    struct addrinfo *res = NULL;
    return getaddrinfo(argv[1], NULL, NULL, &res) != 0;
}
"""

GO_LOOKUP = """package main

import (
	"context"
	"net"
	"os"
)

func main() {
	r := &net.Resolver{PreferGo: true}
	r.LookupHost(context.Background(), os.Args[1])
}
"""


def build_c(work, name, source):
    path = os.path.join(work, name)
    with open(path + ".c", "w") as f:
        f.write(source)
    subprocess.check_call(["musl-gcc", "-static", "-O2", "-o", path, path + ".c"])
    return path


def build_go(work):
    src = os.path.join(work, "golookup")
    os.makedirs(src)
    with open(os.path.join(src, "main.go"), "w") as f:
        f.write(GO_LOOKUP)
    env = dict(os.environ, GOCACHE=os.path.join(work, "gocache"), GO111MODULE="off", CGO_ENABLED="0")
    subprocess.check_call(["go", "build", "-o", os.path.join(work, "golookup-bin"), "."], cwd=src, env=env)
    return os.path.join(work, "golookup-bin")


def wire_name(name):
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".") if label) + b"\x00"


def mutations(query):
    """The malformed shapes every query is turned into, by name."""
    end = 12 + len(query[12:].split(b"\x00", 1)[0]) + 1 + 4
    header, question, records = query[:12], query[12:end], query[end:]

    def counts(qd, an, ns, ar):
        return header[:4] + struct.pack("!HHHH", qd, an, ns, ar)

    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    ar = struct.unpack("!H", header[10:12])[0]
    yield "cut-header", query[:7]
    yield "cut-question", query[: end - 3]
    yield "qdcount0", counts(0, 0, 0, ar) + question + records
    yield "qdcount2", counts(2, 0, 0, ar) + question + question + records
    yield "response", header[:2] + bytes([header[2] | 0x80]) + header[3:] + question + records
    yield "opcode-notify", header[:2] + bytes([header[2] | 0x20]) + header[3:] + question + records
    yield "pointer-loop", counts(1, 0, 0, 0) + b"\xc0\x0c" + question[-4:]
    yield "pointer-past-end", counts(1, 0, 0, 1) + question + b"\xc0\xff" + opt[1:]
    yield "label64", counts(1, 0, 0, 0) + b"\x40" + b"a" * 64 + question[-5:]
    yield "name256", counts(1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 4 + question[-5:]
    yield "opt-in-answer", counts(1, 1, 0, 0) + question + opt
    yield "two-opts", counts(1, 0, 0, 2) + question + opt + opt
    yield "opt-version1", counts(1, 0, 0, 1) + question + opt[:5] + b"\x00\x01" + opt[7:]
    yield "rdlength-past-end", counts(1, 0, 0, 1) + question + opt[:-2] + b"\x00\x10"


def write_seeds(captures):
    for sub in ("query", "upstream_response"):
        shutil.rmtree(os.path.join(SEEDS, sub), ignore_errors=True)
        os.makedirs(os.path.join(SEEDS, sub))
    seen = {}
    for label, transport, query, answer in captures:
        n = seen[label] = seen.get(label, 0) + 1
        name = f"{label}-{transport}-{n}"
        put("query", name, query)
        # The target sends the query upstream with the client's ID bit-flipped, as the relay's own.
        relayed = struct.pack("!H", ~struct.unpack("!H", query[:2])[0] & 0xFFFF) + answer[2:]
        put("upstream_response", name, struct.pack("!H", len(query)) + query + relayed)
    firsts = {label: query for label, _, query, _ in reversed(captures)}
    for label in ("dig-dnssec", "glibc-ahosts"):
        if label in firsts:
            for what, packet in mutations(firsts[label]):
                put("query", f"{label}-{what}", packet)
    print(f"{len(captures)} captures written to {SEEDS}")


def put(target, name, data):
    with open(os.path.join(SEEDS, target, name), "wb") as f:
        f.write(data)


if __name__ == "__main__":
    main()
