#!/usr/bin/env python3
"""query.py HOST:PORT NAME WANT_IP: waits up to 10 s for the server, then asks NAME over UDP and
TCP and fails unless both answer exactly WANT_IP (no dig needed on a bare CI machine)."""
import sys
import time

from run_as_pod import dns_query

addr, name, want = sys.argv[1], sys.argv[2], sys.argv[3]
host, port = addr.rsplit(":", 1)
deadline = time.time() + 10
while True:
    try:
        rcode, ips = dns_query((host, int(port)), name)
        break
    except OSError:
        if time.time() > deadline:
            sys.exit(f"query.py: no answer from {addr}")
        time.sleep(0.1)
assert (rcode, ips) == (0, [want]), f"UDP: rcode {rcode}, answers {ips}"
rcode, ips = dns_query((host, int(port)), name, tcp=True)
assert (rcode, ips) == (0, [want]), f"TCP: rcode {rcode}, answers {ips}"
print(f"  {name} -> {want} over UDP and TCP on {addr}")
