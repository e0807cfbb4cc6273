#!/usr/bin/env python3
"""Runs the image's binary the way the DaemonSet's pod runs it, then queries it. Root only.

What a container runtime does for deploy/base/daemonset.yaml, re-enacted with plain syscalls:
  - a fresh network namespace (as hostNetwork would be the node's; here a scratch one, so nothing
    on this machine is touched), loopback up;
  - a root filesystem holding only what distroless-static has plus the binary (copied with its
    file capabilities), mounted read-only (readOnlyRootFilesystem: true);
  - capability bounding set = {NET_BIND_SERVICE, NET_ADMIN} (drop ALL, add those two), the same in
    permitted/effective of the runtime's init process, uid/gid 65532 (runAsUser), no_new_privs
    (allowPrivilegeEscalation: false), no ambient capabilities (Kubernetes sets none), then exec.

Then it asks the server for the local name over UDP and TCP and reads /healthz and /readyz.

  run_as_pod.py BINARY [--expect-bind-failure] -- ARGS...

With --expect-bind-failure it checks the opposite: the process must exit non-zero (a binary
without file capabilities cannot bind :53 as non-root, which is why the image sets them).
"""
import ctypes
import ctypes.util
import os
import shutil
import socket
import struct
import sys
import tempfile
import time
import urllib.request

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
PR_SET_KEEPCAPS, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 8, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP = {"NET_BIND_SERVICE": 10, "NET_ADMIN": 12}
UID = GID = 65532


def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def loopback_up():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    import fcntl

    ifreq = struct.pack("16sH14s", b"lo", 0, b"")
    flags = struct.unpack("16sH14s", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
    fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))
    s.close()


def make_rootfs(binary):
    """distroless/static-debian12:nonroot's relevant content, plus the binary and a resolv.conf."""
    root = tempfile.mkdtemp(prefix="registry-dns-pod-")
    os.chmod(root, 0o755)  # mkdtemp makes it 0700; it becomes "/" for uid 65532
    for d in ("etc/ssl/certs", "dev", "proc", "tmp", "host", "home/nonroot"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    with open(os.path.join(root, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
    with open(os.path.join(root, "etc/group"), "w") as f:
        f.write("root:x:0:\nnonroot:x:65532:\n")
    with open(os.path.join(root, "etc/nsswitch.conf"), "w") as f:
        f.write("hosts: files dns\n")
    with open(os.path.join(root, "host/resolv.conf"), "w") as f:  # the hostPath mount
        f.write("nameserver 127.0.0.9\n")  # unused: only the local name is asked
    for bundle in ("/etc/ssl/certs/ca-certificates.crt",):
        if os.path.exists(bundle):
            shutil.copy(bundle, os.path.join(root, bundle.lstrip("/")))
    # The file capabilities travel as the security.capability xattr, like COPY --from does.
    dest = os.path.join(root, "registry-dns")
    shutil.copyfile(binary, dest)
    os.chmod(dest, 0o755)
    try:
        os.setxattr(dest, "security.capability", os.getxattr(binary, "security.capability"))
    except OSError:
        pass  # no file capabilities: the --expect-bind-failure case
    return root


def child(root, argv):
    """In the forked child: become the pod's process and exec (never returns)."""
    # A mount namespace of its own (gone when it exits), nothing propagating back to the host.
    check(libc.unshare(CLONE_NEWNS), "unshare mount namespace")
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    # Read-only root filesystem, with /dev and /proc as a runtime provides them.
    check(libc.mount(root.encode(), root.encode(), None, MS_BIND | MS_REC, None), "bind rootfs")
    for node in ("null", "zero", "random", "urandom"):
        path = os.path.join(root, "dev", node)
        open(path, "a").close()
        check(libc.mount(f"/dev/{node}".encode(), path.encode(), None, MS_BIND, None), f"bind /dev/{node}")
    check(libc.mount(b"proc", os.path.join(root, "proc").encode(), b"proc", 0, None), "mount proc")
    check(libc.mount(b"tmpfs", os.path.join(root, "tmp").encode(), b"tmpfs", 0, None), "mount tmp")
    check(libc.mount(None, root.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY, None), "remount ro")
    os.chroot(root)
    os.chdir("/")
    # Capabilities: bounding set = the two added ones, keep them across setuid, then set them.
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    keep = set(CAP.values())
    for cap in range(last + 1):
        if cap not in keep:
            check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop cap {cap}")
    check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "keepcaps")
    os.setgroups([])
    os.setgid(GID)
    os.setuid(UID)
    mask = sum(1 << c for c in keep)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    data = (Data * 2)(Data(mask, mask, 0), Data(0, 0, 0))
    check(libc.capset(ctypes.byref(Header(0x20080522, 0)), data), "capset")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    os.execv("/registry-dns", ["/registry-dns"] + argv)


def dns_query(addr, name, tcp=False):
    """A minimal A query; returns (rcode, [IPv4 answers])."""
    qid = 0x5A5A
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".") if l) + b"\0" + struct.pack(">HH", 1, 1)
    if tcp:
        with socket.create_connection(addr, timeout=2) as s:
            s.sendall(struct.pack(">H", len(q)) + q)
            n = struct.unpack(">H", s.recv(2))[0]
            r = b""
            while len(r) < n:
                r += s.recv(n - len(r))
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(q, addr)
            r = s.recv(4096)
    rid, flags, qd, an = struct.unpack(">HHHH", r[:8])
    assert rid == qid, "reply id mismatch"
    i = 12
    for _ in range(qd):  # skip the question
        while r[i]:
            i += r[i] + 1
        i += 5
    ips = []
    for _ in range(an):
        if r[i] & 0xC0 == 0xC0:
            i += 2
        else:
            while r[i]:
                i += r[i] + 1
            i += 1
        rtype, _, _, rdlen = struct.unpack(">HHIH", r[i : i + 10])
        i += 10
        if rtype == 1:
            ips.append(socket.inet_ntoa(r[i : i + rdlen]))
        i += rdlen
    return flags & 0xF, ips


def main():
    args = sys.argv[1:]
    expect_failure = "--expect-bind-failure" in args
    args = [a for a in args if a != "--expect-bind-failure"]
    sep = args.index("--")
    binary, argv = args[0], args[sep + 1 :]
    if os.geteuid() != 0:
        sys.exit("run_as_pod.py: needs root (CI runs as root)")
    listen = next(a.split("=", 1)[1] for a in argv if a.startswith("--listen="))
    ops = next(a.split("=", 1)[1] for a in argv if a.startswith("--ops-listen="))
    record = next(a.split("=", 1)[1] for a in argv if a.startswith("--record="))
    name, want_ip = record.split("=")
    host, port = listen.rsplit(":", 1)

    root = make_rootfs(binary)
    # The pod's network namespace, shared by this process (to query) and the server.
    check(libc.unshare(CLONE_NEWNET), "unshare network namespace")
    loopback_up()
    log = tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            child(root, argv)
        except BaseException as e:  # report and leave the child at once
            os.write(2, f"run_as_pod.py child: {e}\n".encode())
        os._exit(127)

    def output():
        log.seek(0)
        return log.read().decode(errors="replace")

    try:
        deadline = time.time() + 15
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                if expect_failure and code != 0 and "Permission denied" in output():
                    print(f"  as expected, exited {code}: {output().strip().splitlines()[-1]}")
                    return
                sys.exit(f"run_as_pod.py: the server exited ({code}):\n{output()}")
            if expect_failure and time.time() > deadline:
                sys.exit("run_as_pod.py: expected a failure to bind, but the server kept running")
            try:
                rcode, ips = dns_query((host, int(port)), name)
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit(f"run_as_pod.py: no DNS answer on {listen} within 15 s:\n{output()}")
                time.sleep(0.2)
        if expect_failure:
            sys.exit("run_as_pod.py: expected a failure to bind, but the server answered")
        assert rcode == 0 and ips == [want_ip], f"UDP {name}: rcode {rcode}, answers {ips}, want {want_ip}"
        rcode, ips = dns_query((host, int(port)), name, tcp=True)
        assert rcode == 0 and ips == [want_ip], f"TCP {name}: rcode {rcode}, answers {ips}, want {want_ip}"
        print(f"  {name} -> {ips[0]} over UDP and TCP on {listen}, as uid {UID} with file capabilities only")
        for path in ("/healthz", "/readyz"):
            with urllib.request.urlopen(f"http://{ops}{path}", timeout=2) as r:
                assert r.status == 200, f"{path}: {r.status}"
        print(f"  /healthz and /readyz 200 on {ops}")
        if "--interface-name=registry-dns0" in argv:
            index = socket.if_nametoindex("registry-dns0")  # this network namespace, unlike /sys
            print(f"  registry-dns0 (index {index}) created by the non-root process, serving {listen}")
    finally:
        try:
            os.kill(pid, 2)  # SIGINT: stop at once, no lame duck
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        except ProcessLookupError:
            pass
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
