//! `/metrics`: scraped from the real binary while real queries (dig, raw sockets) go through it.
//! Every check compares two scrapes, so a counter that does not move, or moves on the wrong
//! label, fails. The exposition is also fed to the Prometheus project's own Python parser
//! (`prometheus-client` from PyPI, installed by tests/run.sh) when it is there.

mod support;

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use support::apiserver::{FakeApiServer, endpoint_slice};
use support::scrape::Scrape;
use support::{RegistryDns, TempDir, dig, healthy_upstream, http_get, wait_until};

const NAME: &str = "knative-local-registry";

fn moved(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.get(name, labels) - before.get(name, labels)
}

#[test]
fn counters_move_with_local_forwarded_and_tcp_queries() {
    let upstream = healthy_upstream();
    let upstream_addr = upstream.addr.to_string();
    // One worker, so that one cache sees every forwarded query: the first is a miss, then hits.
    let s =
        RegistryDns::start(&["--record", &format!("{NAME}=10.0.0.10"), "--upstream", &upstream_addr, "--workers", "1"]);
    let before = Scrape::of(&s);

    for _ in 0..5 {
        assert_eq!(dig(s.addr, &[NAME, "A"]).rdata("A"), ["10.0.0.10"]);
    }
    assert!(dig(s.addr, &[&format!("x.{NAME}"), "AAAA", "+tcp"]).has_flag("aa"));
    for _ in 0..3 {
        assert_eq!(dig(s.addr, &["www.test", "A"]).rdata("A"), ["192.0.2.1"]);
    }
    let after = Scrape::of(&s);

    let udp_a = [("proto", "udp"), ("type", "A")];
    assert_eq!(moved(&before, &after, "registry_dns_queries_total", &udp_a), 8.0);
    assert_eq!(moved(&before, &after, "registry_dns_queries_total", &[("proto", "tcp"), ("type", "AAAA")]), 1.0);
    let local_ok = [("path", "local"), ("rcode", "NOERROR")];
    assert_eq!(moved(&before, &after, "registry_dns_responses_total", &local_ok), 5.0);
    let local_nx = [("path", "local"), ("rcode", "NXDOMAIN")];
    assert_eq!(moved(&before, &after, "registry_dns_responses_total", &local_nx), 1.0);
    let forwarded_ok = [("path", "forwarded"), ("rcode", "NOERROR")];
    assert_eq!(moved(&before, &after, "registry_dns_responses_total", &forwarded_ok), 1.0);
    let cached_ok = [("path", "cache"), ("rcode", "NOERROR")];
    assert_eq!(moved(&before, &after, "registry_dns_responses_total", &cached_ok), 2.0);
    assert_eq!(moved(&before, &after, "registry_dns_cache_misses_total", &[]), 1.0);
    assert_eq!(moved(&before, &after, "registry_dns_cache_hits_total", &[]), 2.0);
    assert_eq!(moved(&before, &after, "registry_dns_cache_entries", &[]), 1.0);
    assert!(after.get("registry_dns_cache_bytes", &[]) > 0.0);

    // Every response is in its path's latency histogram, and in no other.
    let count = "registry_dns_response_duration_seconds_count";
    assert_eq!(moved(&before, &after, count, &[("path", "local")]), 6.0);
    assert_eq!(moved(&before, &after, count, &[("path", "forwarded")]), 1.0);
    assert_eq!(moved(&before, &after, count, &[("path", "cache")]), 2.0);
    assert_eq!(moved(&before, &after, count, &[("path", "refused")]), 0.0);
    let bucket = "registry_dns_response_duration_seconds_bucket";
    let inf = moved(&before, &after, bucket, &[("path", "local"), ("le", "+Inf")]);
    assert_eq!(inf, 6.0, "the +Inf bucket holds every observation");
    let sum = after.get("registry_dns_response_duration_seconds_sum", &[("path", "forwarded")]);
    assert!(sum > 0.0 && sum < 3.0, "forwarded latency sum {sum} s");

    let up = [("upstream", upstream_addr.as_str()), ("proto", "udp")];
    assert_eq!(moved(&before, &after, "registry_dns_upstream_requests_total", &up), 1.0);
    assert_eq!(after.get("registry_dns_upstream_healthy", &[("upstream", &upstream_addr)]), 1.0);
    assert_eq!(after.get("registry_dns_name_synced", &[("name", &format!("{NAME}.")), ("source", "static")]), 1.0);
    assert_eq!(after.get("registry_dns_name_addresses", &[("name", &format!("{NAME}."))]), 1.0);
    assert_eq!(after.get("registry_dns_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
}

#[test]
fn garbage_is_counted_as_dropped_and_malformed_queries_as_formerr() {
    let upstream = healthy_upstream();
    let s = RegistryDns::start(&["--record", &format!("{NAME}=10.0.0.10"), "--upstream", &upstream.addr.to_string()]);
    let before = Scrape::of(&s);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // A response (QR set) is dropped; a header with QDCOUNT 2 and nothing after it is FORMERR.
    client.send_to(&[0x12, 0x34, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0], s.addr).unwrap();
    client.send_to(&[0x12, 0x35, 0x01, 0, 0, 2, 0, 0, 0, 0, 0, 0], s.addr).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = client.recv_from(&mut buf).expect("FORMERR answer");
    assert_eq!((buf[1], buf[3] & 0xf), (0x35, 1), "{:?}", &buf[..n]);
    let after = Scrape::of(&s);
    assert_eq!(moved(&before, &after, "registry_dns_dropped_total", &[]), 1.0);
    let formerr = [("path", "local"), ("rcode", "FORMERR")];
    assert_eq!(moved(&before, &after, "registry_dns_responses_total", &formerr), 1.0);
    assert_eq!(moved(&before, &after, "registry_dns_queries_total", &[("proto", "udp"), ("type", "none")]), 1.0);
}

#[test]
fn a_silent_upstream_shows_as_timeouts_then_unhealthy_and_the_cap_as_refusals() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let s = RegistryDns::start(&[
        "--record",
        &format!("{NAME}=10.0.0.10"),
        "--upstream",
        &silent_addr,
        "--upstream-timeout",
        "300ms",
        "--max-concurrent",
        "2",
    ]);
    let before = Scrape::of(&s);

    // Two queries fill the cap; while they wait, a third is refused at once.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    for (id, name) in [(1u16, "a.example.test"), (2, "b.example.test"), (3, "c.example.test")] {
        client.send_to(&query(id, name), s.addr).unwrap();
    }
    let mut rcodes = Vec::new();
    let mut buf = [0u8; 512];
    while rcodes.len() < 3 {
        let (n, _) = client.recv_from(&mut buf).expect("every query is answered");
        rcodes.push((u16::from_be_bytes([buf[0], buf[1]]), buf[3] & 0xf, n));
    }
    rcodes.sort();
    assert_eq!(rcodes.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), [(1, 2), (2, 2), (3, 5)]);

    let during = wait_until(Duration::from_secs(2), || {
        Scrape::of(&s).get("registry_dns_upstream_healthy", &[("upstream", &silent_addr)]) == 0.0
    });
    assert!(during, "two timeouts demote the upstream");
    let after = Scrape::of(&s);
    let up = [("upstream", silent_addr.as_str())];
    assert_eq!(moved(&before, &after, "registry_dns_upstream_timeouts_total", &up), 2.0);
    let servfail = [("path", "forwarded"), ("rcode", "SERVFAIL")];
    assert_eq!(moved(&before, &after, "registry_dns_responses_total", &servfail), 2.0);
    let over = [("reason", "over_capacity")];
    assert_eq!(moved(&before, &after, "registry_dns_refused_total", &over), 1.0);
    let refused = [("path", "refused"), ("rcode", "REFUSED")];
    assert_eq!(moved(&before, &after, "registry_dns_responses_total", &refused), 1.0);
    assert_eq!(after.get("registry_dns_forward_in_flight", &[]), 0.0);
    assert_eq!(after.get("registry_dns_forward_max_in_flight", &[]), 2.0);
    // The SERVFAILs came after the 300 ms timeout: none of them is in a bucket below it.
    let fast = [("path", "forwarded"), ("le", "0.25")];
    assert_eq!(moved(&before, &after, "registry_dns_response_duration_seconds_bucket", &fast), 0.0);
}

#[test]
fn sources_outside_the_allow_list_are_counted_as_refused() {
    // Loopback is not in this list, so the test's own queries are the outsiders.
    let s = RegistryDns::start(&["--record", &format!("{NAME}=10.0.0.10"), "--allow-from", "10.0.0.0/8"]);
    let before = Scrape::of(&s);
    assert_eq!(dig(s.addr, &[NAME, "A"]).status, "REFUSED");
    assert_eq!(dig(s.addr, &[NAME, "A", "+tcp"]).status, "REFUSED");
    let after = Scrape::of(&s);
    assert_eq!(moved(&before, &after, "registry_dns_refused_total", &[("reason", "not_allowed")]), 2.0);
    assert_eq!(moved(&before, &after, "registry_dns_response_duration_seconds_count", &[("path", "refused")]), 2.0);
    assert_eq!(moved(&before, &after, "registry_dns_responses_total", &[("path", "local")]), 0.0);
}

#[test]
fn kubernetes_sources_report_sync_addresses_event_age_and_restarts() {
    let dir = TempDir::new("metrics-kube");
    let api = FakeApiServer::start();
    let kubeconfig = dir.path("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    // 500, not 503: kube's client retries 429/503/504 itself before the watcher sees an error.
    api.fail_requests(Some(500));
    let s = RegistryDns::start(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--service",
        &format!("{NAME}=registry/knative"),
        "--upstream",
        "127.0.0.1:9",
    ]);
    let name = format!("{NAME}.");
    let source = "endpointslices registry/knative";
    let labels = [("name", name.as_str()), ("source", source)];
    let scrape = Scrape::of(&s);
    assert_eq!(scrape.get("registry_dns_name_synced", &labels), 0.0);
    assert_eq!(scrape.get("registry_dns_source_synced", &[("source", source)]), 0.0);
    let restarted = wait_until(Duration::from_secs(10), || {
        Scrape::of(&s).get("registry_dns_watch_restarts_total", &[("source", source)]) >= 1.0
    });
    assert!(restarted, "a failing list counts as a watch restart");

    api.apply(endpoint_slice(
        "registry",
        "knative",
        "knative-a",
        "IPv4",
        &[("10.244.1.5", None), ("10.244.2.7", None)],
    ));
    api.fail_requests(None);
    let synced = wait_until(Duration::from_secs(40), || {
        Scrape::of(&s).get("registry_dns_name_addresses", &[("name", name.as_str())]) == 2.0
    });
    assert!(synced, "{:?}", s.logs());
    let scrape = Scrape::of(&s);
    assert_eq!(scrape.get("registry_dns_name_synced", &labels), 1.0);
    assert_eq!(scrape.get("registry_dns_source_synced", &[("source", source)]), 1.0);
    let age = scrape.get("registry_dns_source_last_event_age_seconds", &[("source", source)]);
    assert!((0.0..5.0).contains(&age), "last event {age} s ago");
    std::thread::sleep(Duration::from_millis(1500));
    let older = Scrape::of(&s).get("registry_dns_source_last_event_age_seconds", &[("source", source)]);
    assert!(older >= age + 1.0, "the age grows while nothing happens: {age} then {older}");
}

#[test]
fn the_exposition_parses_with_the_prometheus_python_client() {
    let probe = Command::new("python3").args(["-c", "import prometheus_client"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        panic!("python3 with prometheus_client is needed (tests/run.sh installs it)");
    }
    let s = RegistryDns::start(&["--record", &format!("{NAME}=10.0.0.10"), "--upstream", "127.0.0.1:9"]);
    dig(s.addr, &[NAME, "A"]);
    let (_, body) = http_get(s.ops.unwrap(), "/metrics").unwrap();
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}
for name in ["registry_dns_queries", "registry_dns_responses", "registry_dns_response_duration_seconds",
             "registry_dns_upstream_requests", "registry_dns_forward_in_flight", "registry_dns_build"]:
    assert name in families, (name, sorted(families))
assert families["registry_dns_queries"].type == "counter"
assert families["registry_dns_response_duration_seconds"].type == "histogram"
print(len(families))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{body}", String::from_utf8_lossy(&out.stderr));
}

/// A minimal A query with RD set.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}
