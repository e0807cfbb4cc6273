# The benchmarks' upstream, sourced by bench/run.sh and bench/instructions.sh so that both measure
# against the same answers: nsd, authoritative for bench.test. with 1000 A records h0000..h0999
# (job B), the wildcard *.u (job Bu) and NXDOMAIN for every other name; RRL off (Debian enables it).

# bench_zone FILE: the zone file.
bench_zone() {
  # shellcheck disable=SC2016  # $ORIGIN and $TTL are zone-file directives
  {
    printf '$ORIGIN bench.test.\n$TTL 3600\n'
    printf '@ IN SOA ns.bench.test. hostmaster.bench.test. 1 3600 600 86400 3600\n'
    printf '@ IN NS ns.bench.test.\nns IN A 127.0.0.1\n'
    awk 'BEGIN { for (i = 0; i < 1000; i++) printf "h%04d IN A 10.1.%d.%d\n", i, int(i / 256), i % 256 }'
    printf '*.u IN A 10.9.9.9\n'
  } >"$1"
}

# bench_nsd_conf ADDR PORT ZONESDIR STATEDIR: nsd.conf on ADDR@PORT for ZONESDIR/bench.test.zone,
# its state in STATEDIR; on standard output.
bench_nsd_conf() {
  cat <<NSDEOF
server:
    ip-address: $1@$2
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    database: ""
    zonesdir: "$3"
    pidfile: "$4/nsd.pid"
    xfrdfile: "$4/xfrd.state"
    xfrdir: "$4"
    zonelistfile: "$4/zone.list"
    verbosity: 0
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: "bench.test."
    zonefile: "bench.test.zone"
NSDEOF
}
