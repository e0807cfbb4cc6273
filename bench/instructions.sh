#!/usr/bin/env bash
# Instructions per query of one or more registry-dns builds, counted by callgrind: what a code
# change costs per query, much steadier than dnsperf's figures on this shared VM (those move by 20%
# and more between runs, see bench/README.md), though not free of its timing: how many queries each
# recvmmsg finds, and the 20 ms tick's share, move a build's count by a few percent from one
# invocation to the next (docs/benchmarks.md, 2026-12-06): compare medians. User space only: the
# system calls per query, most of a query's cost, are what bench/run.sh measures; a change that
# keeps them keeps the kernel's share.
#
# For each build and job the server answers N, then 3N queries, each time under a fresh callgrind;
# the difference of the two totals over 2N is the count per query (start-up, the first pass's
# misses of job B and shutdown cancel out).
#
#   A    knative-local-registry A (a local answer)
#   B    h000..h999.bench.test A, looped (cache hits)
#   Bu   unique NNNNNNN.u.bench.test A (every query misses; the cache fills and evicts)
#   Bu0  the same with --cache-size 0 (the plain relay)
#
# With -w 2 the server runs 2 UDP workers (valgrind runs one thread at a time; the count is per
# query all the same).
#
# Usage: bench/instructions.sh [-n N] [-w WORKERS] BINARY...   (as root, on loopback; needs nsd,
# dnsperf, valgrind: installed from Debian when missing)
set -euo pipefail

n=3000
workers=1
while [ $# -gt 0 ]; do
  case "$1" in
    -n) n=$2; shift 2 ;;
    -w) workers=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: bench/instructions.sh [-n N] [-w WORKERS] BINARY..." >&2; exit 2; }
need=()
for pair in nsd:nsd dnsperf:dnsperf valgrind:valgrind; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

work=$(mktemp -d /tmp/registry-dns-instructions.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait; rm -rf "$work"; }
trap cleanup EXIT

# shellcheck source=bench/upstream.sh
. "$(dirname "$0")/upstream.sh"
up_port=15311
bench_zone "$work/bench.test.zone"
bench_nsd_conf 127.0.0.1 "$up_port" "$work" "$work" >"$work/nsd.conf"
nsd -d -c "$work/nsd.conf" >"$work/nsd.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do dig +short -p "$up_port" @127.0.0.1 h0001.bench.test >/dev/null 2>&1 && break; sleep 0.1; done

queries() {  # queries JOB COUNT START: a query file
  case "$1" in
    A) awk -v n="$2" 'BEGIN { for (i = 0; i < n; i++) print "knative-local-registry. A" }' ;;
    B) awk -v n="$2" 'BEGIN { for (i = 0; i < n; i++) printf "h%04d.bench.test. A\n", i % 1000 }' ;;
    Bu | Bu0) awk -v n="$2" -v s="$3" 'BEGIN { for (i = 0; i < n; i++) printf "%07d.u.bench.test. A\n", s + i }' ;;
  esac
}

# total BINARY JOB COUNT: callgrind's instruction total for COUNT queries of JOB
total() {
  local bin=$1 job=$2 count=$3 port=15312 extra=()
  [ "$job" = Bu0 ] && extra=(--cache-size 0)
  queries "$job" "$count" $((RANDOM * 100)) >"$work/q.txt"
  local out="$work/callgrind.out" log="$work/server.log"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --listen "127.0.0.1:$port" \
    --record knative-local-registry=10.0.0.10 --upstream "127.0.0.1:$up_port" --workers "$workers" \
    --ops-listen off "${extra[@]}" >"$log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 600); do grep -q "registry-dns serving" "$log" && break; sleep 0.1; done
  dnsperf -s 127.0.0.1 -p "$port" -d "$work/q.txt" -n 1 -c 1 -q 20 -t 10 >"$work/dnsperf.txt" 2>&1
  grep -q "Queries completed: *$count " "$work/dnsperf.txt" ||
    { echo "$bin $job: not every query answered: $(grep -E 'Queries (sent|completed|lost)' "$work/dnsperf.txt" | tr '\n' ' ')" >&2; }
  kill -INT "$pid"
  wait "$pid" || true
  awk '/^totals:/ { print $2 }' "$out"
}

printf '%-40s %-4s %12s   (%s worker(s))\n' build job "instr/query" "$workers"
for bin in "$@"; do
  for job in A B Bu Bu0; do
    small=$(total "$bin" "$job" "$n")
    large=$(total "$bin" "$job" $((3 * n)))
    printf '%-40s %-4s %12d\n' "$bin" "$job" $(((large - small) / (2 * n)))
  done
done
