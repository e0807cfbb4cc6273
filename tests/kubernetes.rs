//! The Kubernetes source against a fake API server that speaks the real list/watch protocol
//! (`support/apiserver.rs`): the real binary, its real kube client, answers checked with dig.

mod support;

use std::time::{Duration, Instant};

use support::apiserver::{FakeApiServer, endpoint_slice, service};
use support::{Nsd, RegistryDns, TempDir, dig, healthy_upstream, http_get, run_to_exit, wait_until};

const NAME: &str = "knative-local-registry";

struct Cluster {
    api: FakeApiServer,
    kubeconfig: std::path::PathBuf,
    upstream: Nsd,
    _dir: TempDir,
}

impl Cluster {
    fn new() -> Self {
        let dir = TempDir::new("kube");
        let api = FakeApiServer::start();
        let kubeconfig = dir.path("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        Self { api, kubeconfig, upstream: healthy_upstream(), _dir: dir }
    }

    fn start(&self, extra: &[&str]) -> RegistryDns {
        let kubeconfig = self.kubeconfig.to_str().unwrap();
        let upstream = self.upstream.addr.to_string();
        let mut args = vec!["--kubeconfig", kubeconfig, "--upstream", &upstream];
        args.extend_from_slice(extra);
        RegistryDns::start(&args)
    }
}

fn sorted_a(s: &RegistryDns, name: &str) -> Vec<String> {
    let mut ips = dig(s.addr, &[name, "A"]).rdata("A");
    ips.sort();
    ips
}

fn ready(s: &RegistryDns) -> bool {
    http_get(s.ops.unwrap(), "/readyz").is_some_and(|(code, _)| code == 200)
}

fn knative_slice(slice: &str, endpoints: &[(&str, Option<bool>)]) -> serde_json::Value {
    endpoint_slice("registry", "knative", slice, "IPv4", endpoints)
}

#[test]
fn answers_the_ready_endpoints_and_follows_scaling_within_a_second() {
    let c = Cluster::new();
    c.api.apply(knative_slice(
        "knative-a",
        &[("10.244.1.5", Some(true)), ("10.244.2.7", None), ("10.244.3.9", Some(false))],
    ));
    let s = c.start(&["--service", &format!("{NAME}=registry/knative")]);
    assert!(wait_until(Duration::from_secs(10), || ready(&s)), "{:?}", s.logs());
    assert_eq!(sorted_a(&s, NAME), ["10.244.1.5", "10.244.2.7"], "not-ready endpoints are left out");

    c.api.apply(knative_slice(
        "knative-a",
        &[("10.244.1.5", Some(true)), ("10.244.2.7", Some(true)), ("10.244.3.9", Some(true))],
    ));
    let changed = Instant::now();
    assert!(wait_until(Duration::from_secs(3), || sorted_a(&s, NAME).len() == 3));
    assert!(changed.elapsed() < Duration::from_secs(1), "scale-up took {:?}", changed.elapsed());

    c.api.apply(knative_slice("knative-a", &[("10.244.3.9", Some(false))]));
    let changed = Instant::now();
    assert!(wait_until(Duration::from_secs(3), || dig(s.addr, &[NAME, "A"]).answer.is_empty()));
    assert!(changed.elapsed() < Duration::from_secs(1), "scale-down took {:?}", changed.elapsed());
    let empty = dig(s.addr, &[NAME, "A"]);
    assert_eq!(empty.status, "NOERROR", "no ready endpoint: NODATA, never NXDOMAIN");
    assert_eq!(empty.authority[0][1], "1", "short negative TTL: {:?}", empty.authority);
}

#[test]
fn slices_merge_ipv6_gives_aaaa_and_several_names_follow_one_service() {
    let c = Cluster::new();
    c.api.apply(knative_slice("knative-a", &[("10.244.1.5", Some(true))]));
    c.api.apply(knative_slice("knative-b", &[("10.244.2.6", Some(true)), ("10.244.1.5", Some(true))]));
    c.api.apply(endpoint_slice("registry", "knative", "knative-c", "IPv6", &[("fd00:244::5", Some(true))]));
    let s =
        c.start(&["--service", &format!("{NAME}=registry/knative"), "--service", "registry.local=registry/knative"]);
    assert!(wait_until(Duration::from_secs(10), || ready(&s)));
    assert_eq!(sorted_a(&s, NAME), ["10.244.1.5", "10.244.2.6"], "two slices merged, duplicates removed");
    assert_eq!(dig(s.addr, &[NAME, "AAAA"]).rdata("AAAA"), ["fd00:244::5"]);
    assert_eq!(sorted_a(&s, "registry.local"), ["10.244.1.5", "10.244.2.6"]);
    c.api.delete("discovery.k8s.io/v1", "EndpointSlice", "registry", "knative-b");
    assert!(wait_until(Duration::from_secs(3), || sorted_a(&s, NAME) == ["10.244.1.5"]));
}

#[test]
fn before_the_first_sync_names_are_servfail_and_not_ready_while_forwarding_works() {
    let c = Cluster::new();
    c.api.apply(knative_slice("knative-a", &[("10.244.1.5", Some(true))]));
    c.api.stop();
    let s = c.start(&["--service", &format!("{NAME}=registry/knative"), "--record", "static-name=10.1.1.1"]);
    assert_eq!(dig(s.addr, &[NAME, "A"]).status, "SERVFAIL", "never NXDOMAIN before sync");
    let (code, body) = http_get(s.ops.unwrap(), "/readyz").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("endpointslices registry/knative"), "{body}");
    assert_eq!(http_get(s.ops.unwrap(), "/healthz").unwrap().0, 200);
    assert_eq!(dig(s.addr, &["www.test"]).rdata("A"), ["192.0.2.1"], "forwarding works from the start");
    assert_eq!(dig(s.addr, &["static-name"]).rdata("A"), ["10.1.1.1"]);

    c.api.restart();
    assert!(wait_until(Duration::from_secs(10), || ready(&s)), "{:?}", s.logs());
    assert_eq!(sorted_a(&s, NAME), ["10.244.1.5"]);
}

#[test]
fn an_api_outage_keeps_the_answers_and_a_compacted_restart_converges_without_a_gap() {
    let c = Cluster::new();
    c.api.apply(knative_slice("knative-a", &[("10.244.1.5", Some(true)), ("10.244.2.6", Some(true))]));
    let s = c.start(&["--service", &format!("{NAME}=registry/knative")]);
    assert!(wait_until(Duration::from_secs(10), || ready(&s)));
    let before = vec!["10.244.1.5".to_string(), "10.244.2.6".to_string()];
    assert_eq!(sorted_a(&s, NAME), before);

    // 60 s of outage: every answer stays exactly the last known one.
    c.api.stop();
    let outage = Instant::now();
    let mut checks = 0;
    while outage.elapsed() < Duration::from_secs(60) {
        assert_eq!(sorted_a(&s, NAME), before, "during the outage, after {:?}", outage.elapsed());
        checks += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(checks > 100);
    assert!(s.logs().iter().any(|l| l.contains("watch failed")), "the outage is logged");
    let failures = s.logs().iter().filter(|l| l.contains("watch failed")).count();
    // The backoff caps at 3 s jittered down to 1.5 s: at most 40 tries a minute, plus the ramp.
    assert!((10..=45).contains(&failures), "each try logged once, at a bounded rate: {failures}");

    // The API server comes back with its history compacted and the Service changed meanwhile:
    // the watch gets 410 Gone, relists at once, and the answer flips from the old set to the new
    // one, within the capped backoff (3 s) plus the relist.
    c.api.compact();
    c.api.apply(knative_slice("knative-a", &[("10.244.1.5", Some(true)), ("10.244.4.8", Some(true))]));
    c.api.restart();
    let back = Instant::now();
    let after = vec!["10.244.1.5".to_string(), "10.244.4.8".to_string()];
    loop {
        let got = sorted_a(&s, NAME);
        assert!(got == before || got == after, "no gap or mix while converging: {got:?}");
        if got == after {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(5), "did not converge within 5 s: {:?}", s.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(c.api.requests().iter().any(|r| r.contains("watch") && r.contains("resourceVersion")));
    assert!(s.logs().iter().any(|l| l.contains("Expired") || l.contains("410")), "the relist came from a 410");
}

#[test]
fn cluster_ip_mode_answers_the_service_cluster_ips() {
    let c = Cluster::new();
    c.api.apply(service("registry", "knative", &["10.96.0.20", "fd00:96::20"]));
    c.api.apply(service("registry", "other", &["10.96.0.99"]));
    c.api.apply(knative_slice("knative-a", &[("10.244.1.5", Some(true))]));
    let s = c.start(&["--service", &format!("{NAME}=registry/knative"), "--answer", "cluster-ip"]);
    assert!(wait_until(Duration::from_secs(10), || ready(&s)));
    assert_eq!(sorted_a(&s, NAME), ["10.96.0.20"]);
    assert_eq!(dig(s.addr, &[NAME, "AAAA"]).rdata("AAAA"), ["fd00:96::20"]);
    c.api.apply(service("registry", "knative", &["10.96.0.21"]));
    assert!(wait_until(Duration::from_secs(3), || sorted_a(&s, NAME) == ["10.96.0.21"]));
}

#[test]
fn a_missing_kubeconfig_is_a_one_line_error_unless_only_static_records_are_configured() {
    let (code, stderr) = run_to_exit(&[
        "--service",
        &format!("{NAME}=registry/knative"),
        "--kubeconfig",
        "/nonexistent/kubeconfig",
        "--upstream",
        "127.0.0.1:53",
        "--ops-listen",
        "off",
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/kubeconfig"), "{stderr}");

    // Static records only: no Kubernetes connection is attempted, whatever KUBECONFIG says.
    let c = Cluster::new();
    let mut command = std::process::Command::new(RegistryDns::BIN);
    command.env("KUBECONFIG", &c.kubeconfig);
    let s = RegistryDns::start_with(
        command,
        &["--record", &format!("{NAME}=10.0.0.10"), "--upstream", &c.upstream.addr.to_string()],
    );
    assert_eq!(sorted_a(&s, NAME), ["10.0.0.10"]);
    assert!(ready(&s));
    assert!(c.api.requests().is_empty(), "{:?}", c.api.requests());
}

#[test]
fn a_service_with_thousands_of_endpoints_gets_small_rotating_answers() {
    let c = Cluster::new();
    // 30 slices of 100 endpoints, as the EndpointSlice controller would split 3000.
    let all: Vec<String> =
        (0..3000).map(|i| format!("10.{}.{}.{}", 100 + i / 65025, (i / 255) % 255, i % 255 + 1)).collect();
    for (n, chunk) in all.chunks(100).enumerate() {
        let endpoints: Vec<(&str, Option<bool>)> = chunk.iter().map(|ip| (ip.as_str(), Some(true))).collect();
        c.api.apply(knative_slice(&format!("knative-{n:02}"), &endpoints));
    }
    let s = c.start(&["--service", &format!("{NAME}=registry/knative")]);
    assert!(wait_until(Duration::from_secs(20), || ready(&s)), "{:?}", s.logs());
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let d = dig(s.addr, &["+noedns", NAME, "A"]);
        assert!(!d.has_flag("tc"), "{:?}", d.flags);
        assert_eq!(d.rdata("A").len(), 16);
        seen.extend(d.rdata("A"));
    }
    assert_eq!(seen.len(), 20 * 16, "20 queries, 20 different windows");
    assert!(seen.iter().all(|ip| all.contains(ip)));
    // A change in one slice still shows at once.
    c.api.apply(knative_slice("knative-00", &[("10.250.0.1", Some(true))]));
    assert!(wait_until(Duration::from_secs(3), || {
        (0..200).any(|_| dig(s.addr, &[NAME, "A"]).rdata("A").contains(&"10.250.0.1".to_string()))
    }));
}
