//! The Kubernetes source against an API server that misbehaves (`support/apiserver.rs` with its
//! fault injections): malformed watch lines, objects of another kind or with fields of the wrong
//! type, 500s, 429s with Retry-After, a watch that streams filler forever, and a relist of
//! thousands of EndpointSlices. For each: the name keeps answering the last good addresses (dig),
//! the error is logged, retries are bounded (requests counted at the fake), memory stays bounded
//! (VmRSS), and a change applied once the fault is gone shows up.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use support::apiserver::{FakeApiServer, endpoint_slice, is_list_request, is_watch_request, service};
use support::{RegistryDns, TempDir, dig, http_get, wait_until};

const NAME: &str = "knative-local-registry";
const BEFORE: [&str; 2] = ["10.244.1.5", "10.244.2.6"];
/// The DaemonSet's memory limit (deploy/base/daemonset.yaml): the bound every fault must stay under.
const MEMORY_LIMIT_KIB: u64 = 64 * 1024;

struct Cluster {
    api: FakeApiServer,
    kubeconfig: PathBuf,
    _dir: TempDir,
}

impl Cluster {
    /// The fake with the Service's two usual endpoints in one slice.
    fn new() -> Self {
        let dir = TempDir::new("kube-faults");
        let api = FakeApiServer::start();
        let kubeconfig = dir.path("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        api.apply(knative_slice("knative-a", &BEFORE));
        Self { api, kubeconfig, _dir: dir }
    }

    /// registry-dns following the Service, synced and answering BEFORE.
    fn start(&self) -> RegistryDns {
        let s = self.start_unsynced();
        assert!(wait_until(Duration::from_secs(20), || ready(&s)), "{:?}", s.logs());
        assert_eq!(sorted_a(&s), BEFORE);
        s
    }

    fn start_unsynced(&self) -> RegistryDns {
        // No upstream is needed: only the local name is asked.
        RegistryDns::start(&[
            "--kubeconfig",
            self.kubeconfig.to_str().unwrap(),
            "--upstream",
            "127.0.0.1:9",
            "--service",
            &format!("{NAME}=registry/knative"),
        ])
    }
}

fn knative_slice(slice: &str, ips: &[&str]) -> serde_json::Value {
    let endpoints: Vec<(&str, Option<bool>)> = ips.iter().map(|ip| (*ip, Some(true))).collect();
    endpoint_slice("registry", "knative", slice, "IPv4", &endpoints)
}

fn sorted_a(s: &RegistryDns) -> Vec<String> {
    let mut ips = dig(s.addr, &[NAME, "A"]).rdata("A");
    ips.sort();
    ips
}

fn ready(s: &RegistryDns) -> bool {
    http_get(s.ops.unwrap(), "/readyz").is_some_and(|(code, _)| code == 200)
}

/// VmRSS of the process, in KiB.
fn rss_kib(s: &RegistryDns) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).expect("/proc/PID/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn count_logs(s: &RegistryDns, needle: &str) -> usize {
    s.logs().iter().filter(|l| l.contains(needle)).count()
}

/// For `duration`, checks every 200 ms that the name answers exactly `want`; returns the highest
/// VmRSS seen meanwhile.
fn steady_answers(s: &RegistryDns, want: &[&str], duration: Duration) -> u64 {
    let start = Instant::now();
    let mut peak = 0;
    while start.elapsed() < duration {
        let asked = Instant::now();
        let answer = dig(s.addr, &[NAME, "A"]);
        let mut ips = answer.rdata("A");
        ips.sort();
        assert_eq!(ips, want, "after {:?} of the fault, in {:?}: {}", start.elapsed(), asked.elapsed(), answer.raw);
        peak = peak.max(rss_kib(s));
        std::thread::sleep(Duration::from_millis(200));
    }
    peak
}

/// Seconds between consecutive instants, rounded to 0.1 s, for messages and the report.
fn gaps(times: &[Instant]) -> Vec<f64> {
    times.windows(2).map(|w| ((w[1] - w[0]).as_secs_f64() * 10.0).round() / 10.0).collect()
}

/// The fault is gone: a new endpoint applied now must show up within `within`.
fn recovers(c: &Cluster, s: &RegistryDns, within: Duration) {
    c.api.apply(knative_slice("knative-b", &["10.244.9.9"]));
    let want = ["10.244.1.5", "10.244.2.6", "10.244.9.9"];
    assert!(wait_until(within, || sorted_a(s) == want), "did not recover: {:?} {:?}", sorted_a(s), s.logs());
}

#[test]
fn malformed_lines_and_objects_of_another_kind_on_the_watch_keep_the_last_answers() {
    let c = Cluster::new();
    let s = c.start();
    assert!(c.api.wait_for_watches(1, Duration::from_secs(10)));
    let lists = c.api.list_requests().len();
    let watches = c.api.watch_requests().len();

    // Not JSON; cut short; an event for a Service on the EndpointSlice watch; an EndpointSlice
    // whose fields have the wrong types; an unknown event type; last, one without a
    // resourceVersion, after which kube cannot resume and relists. (A missing required field
    // is no fault to kube: k8s-openapi reads it as empty.)
    let mut wrong_types = knative_slice("knative-a", &["10.244.7.7"]);
    wrong_types["endpoints"] = json!("10.244.7.7");
    wrong_types["metadata"]["resourceVersion"] = json!("999999");
    let no_resource_version = knative_slice("knative-a", &["10.244.7.8"]);
    let mut other_kind = service("registry", "knative-a", &["10.96.7.7"]);
    other_kind["metadata"]["resourceVersion"] = json!("999999");
    // (line, what the log says about it; None: kube skips it without an error).
    let faults = [
        ("this is not json\n".to_string(), Some("expected ident")),
        ("{\"type\":\"MODIFIED\",\"object\":{\"apiVersion\":\"discovery.k8s.io/v1\",\"kind\":\"Endpoi\n".into(), None),
        (format!("{}\n", json!({"type": "MODIFIED", "object": other_kind})), Some("does not decode")),
        (format!("{}\n", json!({"type": "MODIFIED", "object": wrong_types})), Some("does not decode")),
        ("{\"type\":\"EXPLODED\",\"object\":{}}\n".into(), Some("does not decode")),
        (
            format!("{}\n", json!({"type": "MODIFIED", "object": no_resource_version})),
            Some("no metadata.resourceVersion"),
        ),
    ];
    let start = Instant::now();
    for (line, logged) in &faults {
        let failures = count_logs(&s, "watch failed");
        assert_eq!(c.api.inject_watch_line(line), 1, "one watch is open");
        match logged {
            // The stream pauses for the backoff after each error, so a later line is read late.
            Some(needle) => assert!(
                wait_until(Duration::from_secs(60), || s
                    .logs()
                    .iter()
                    .filter(|l| l.contains("watch failed"))
                    .nth(failures)
                    .is_some_and(|l| l.contains(needle))),
                "{line:?} logged with {needle:?}: {:?}",
                s.logs()
            ),
            None => std::thread::sleep(Duration::from_secs(1)),
        }
        steady_answers(&s, &BEFORE, Duration::from_secs(1));
    }
    let failures = count_logs(&s, "watch failed");
    assert_eq!(failures, 5, "{:?}", s.logs());
    // A bad line is skipped on the same stream; only the missing resourceVersion costs a relist.
    assert!(
        wait_until(Duration::from_secs(60), || c.api.list_requests().len() == lists + 1),
        "{:#?}",
        c.api.requests_since(start)
    );
    // The relist's watch follows its LIST at once, but not within the same instant.
    assert!(
        wait_until(Duration::from_secs(10), || c.api.watch_requests().len() == watches + 1),
        "{:#?}",
        c.api.requests_since(start)
    );
    eprintln!(
        "malformed lines: {} faults in {:.1} s, {failures} logged, 1 relist",
        faults.len(),
        start.elapsed().as_secs_f64()
    );
    recovers(&c, &s, Duration::from_secs(75));
}

#[test]
fn a_stored_object_whose_field_changes_type_blocks_relists_with_backoff_and_answers_stay() {
    let c = Cluster::new();
    let s = c.start();
    // The object in the store itself is broken, so every LIST carries it: each relist fails to
    // decode. The compaction plus a dropped watch force a relist at once.
    let mut poisoned = knative_slice("knative-b", &["10.244.3.3"]);
    poisoned["endpoints"] = json!({"addresses": "10.244.3.3"});
    c.api.apply(poisoned);
    c.api.compact();
    let start = Instant::now();
    c.api.drop_watches();
    let rss = steady_answers(&s, &BEFORE, Duration::from_secs(40));
    let lists = c.api.request_times(is_list_request);
    let lists: Vec<Instant> = lists.into_iter().filter(|t| *t >= start).collect();
    eprintln!("poisoned list: {} LISTs in 40 s, gaps {:?} s, peak VmRSS {rss} KiB", lists.len(), gaps(&lists));
    assert!(count_logs(&s, "watch failed") >= 2, "{:?}", s.logs());
    assert!(s.logs().iter().any(|l| l.contains("watch failed") && l.contains("invalid type")), "{:?}", s.logs());
    assert!(lists.len() >= 2, "relists are retried: {:#?}", c.api.requests_since(start));
    // The backoff caps at 3 s, jittered down to 1.5 s: at most 40 LISTs a minute after the ramp.
    assert!(lists.len() <= 30, "relists back off, not a loop: {} in 40 s, gaps {:?}", lists.len(), gaps(&lists));
    assert!(gaps(&lists).iter().skip(2).all(|g| *g >= 1.4), "capped, never a hot loop: {:?}", gaps(&lists));
    assert!(rss < MEMORY_LIMIT_KIB, "{rss} KiB");
    // Fixed: the next relist succeeds, after at most the capped backoff (3 s).
    c.api.apply(knative_slice("knative-b", &["10.244.9.9"]));
    let want = ["10.244.1.5", "10.244.2.6", "10.244.9.9"];
    assert!(wait_until(Duration::from_secs(5), || sorted_a(&s) == want), "{:?}", s.logs());
}

#[test]
fn errors_500_are_retried_with_capped_backoff_and_answers_stay() {
    let c = Cluster::new();
    let s = c.start();
    c.api.fail_requests(Some(500));
    let start = Instant::now();
    c.api.drop_watches();
    let rss = steady_answers(&s, &BEFORE, Duration::from_secs(60));
    let tries: Vec<Instant> = c.api.request_times(|_| true).into_iter().filter(|t| *t >= start).collect();
    let logged = count_logs(&s, "watch failed");
    eprintln!(
        "500s: {} requests in 60 s, gaps {:?} s, {logged} logged, peak VmRSS {rss} KiB",
        tries.len(),
        gaps(&tries)
    );
    assert!(logged >= 3, "{:?}", s.logs());
    assert!(s.logs().iter().any(|l| l.contains("watch failed") && l.contains("500")), "{:?}", s.logs());
    // kube does not retry a 500 itself; the watch's backoff (0.8 s doubling to 3 s, jittered down
    // by up to half) spaces them: at most 40 a minute once capped.
    let g = gaps(&tries);
    assert!((10..=45).contains(&tries.len()), "{} requests in 60 s: gaps {g:?}", tries.len());
    assert!(g.iter().all(|g| *g >= 0.35), "never a hot loop: {g:?}");
    assert!(g.iter().skip(2).all(|g| (1.4..=3.5).contains(g)), "capped at 3 s: {g:?}");
    assert!(rss < MEMORY_LIMIT_KIB, "{rss} KiB");
    c.api.fail_requests(None);
    recovers(&c, &s, Duration::from_secs(10));
}

#[test]
fn errors_429_honour_retry_after_and_answers_stay() {
    let c = Cluster::new();
    let s = c.start();
    c.api.fail_requests_with(429, Some(3), None);
    let start = Instant::now();
    c.api.drop_watches();
    let rss = steady_answers(&s, &BEFORE, Duration::from_secs(45));
    let tries: Vec<Instant> = c.api.request_times(|_| true).into_iter().filter(|t| *t >= start).collect();
    let logged = count_logs(&s, "watch failed");
    eprintln!(
        "429s: {} requests in 45 s, gaps {:?} s, {logged} logged, peak VmRSS {rss} KiB",
        tries.len(),
        gaps(&tries)
    );
    // kube's client retries a 429 three times (our policy), each after Retry-After; then the
    // watch logs it and backs off on its own (0.8 s doubling to 3 s), which knows no Retry-After.
    let g = gaps(&tries);
    assert!(tries.len() >= 4, "retried: {g:?}");
    assert!(g.iter().all(|g| *g >= 0.35), "never a hot loop: {g:?}");
    assert!(g.iter().filter(|g| **g >= 2.9).count() * 3 >= g.len() * 2, "Retry-After: 3 honoured by the client: {g:?}");
    assert!(tries.len() <= 24, "{} requests in 45 s", tries.len());
    assert!(logged >= 2, "each round of retries is logged: {:?}", s.logs());
    assert!(s.logs().iter().any(|l| l.contains("watch failed") && l.contains("Too many requests")), "{:?}", s.logs());
    assert!(rss < MEMORY_LIMIT_KIB, "{rss} KiB");
    c.api.fail_requests(None);
    recovers(&c, &s, Duration::from_secs(15));
}

#[test]
fn a_watch_that_streams_filler_without_newlines_does_not_grow_memory() {
    let c = Cluster::new();
    let s = c.start();
    let base = rss_kib(&s);
    // 64 KiB of spaces every millisecond on every new watch: no newline, so no line ever ends.
    c.api.stall_watches(Some((" ".repeat(64 * 1024), Duration::from_millis(1))));
    let start = Instant::now();
    c.api.drop_watches();
    let rss = steady_answers(&s, &BEFORE, Duration::from_secs(30));
    let watches: Vec<Instant> = c.api.request_times(is_watch_request).into_iter().filter(|t| *t >= start).collect();
    eprintln!(
        "filler without newlines: VmRSS {base} KiB before, peak {rss} KiB; {} watches in 30 s, gaps {:?} s",
        watches.len(),
        gaps(&watches)
    );
    assert!(rss < MEMORY_LIMIT_KIB, "VmRSS {rss} KiB while the watch streams filler");
    assert!(count_logs(&s, "watch failed") >= 1, "{:?}", s.logs());
    assert!(watches.len() <= 22, "reconnects back off (at most 40 a minute): {:?}", gaps(&watches));
    // A watch the filler was still streaming into stays open, silent (the fake never ends it):
    // cut it, as the proxy that streamed the filler would on its way out.
    c.api.stall_watches(None);
    c.api.drop_watches();
    recovers(&c, &s, Duration::from_secs(10));
}

#[test]
fn a_watch_that_only_keeps_alive_is_abandoned_at_kubes_idle_timeout() {
    let c = Cluster::new();
    let s = c.start();
    // Empty lines, as a proxy keeping the connection alive: kube skips them, and only its idle
    // timeout (our watch timeout, 60 s, plus 5 s) ends such a watch.
    c.api.stall_watches(Some(("\n".into(), Duration::from_millis(100))));
    let start = Instant::now();
    c.api.drop_watches();
    let rss = steady_answers(&s, &BEFORE, Duration::from_secs(30));
    assert!(rss < MEMORY_LIMIT_KIB, "{rss} KiB");
    assert!(c.api.requests_since(start).len() <= 2, "one reconnect, then quiet: {:?}", c.api.requests_since(start));
    c.api.stall_watches(None);
    // The stalled stream stays open and silent; a change is seen once kube gives up on it.
    recovers(&c, &s, Duration::from_secs(65 + 60 - 30));
    let watches: Vec<Instant> = c.api.request_times(is_watch_request).into_iter().filter(|t| *t >= start).collect();
    eprintln!(
        "keep-alive only: watch requests at {:?} s",
        watches.iter().map(|t| (*t - start).as_secs()).collect::<Vec<_>>()
    );
    assert!(watches.len() >= 2 && watches[1] - watches[0] >= Duration::from_secs(60), "{:?}", gaps(&watches));
}

#[test]
fn a_relist_of_thousands_of_slices_is_paginated_answers_capped_and_memory_bounded() {
    let c = Cluster::new();
    // 3000 slices of 10 endpoints for the Service, and as many of another Service in the same
    // namespace (the label selector is applied by the server, so those never reach us).
    let ip = |n: usize| format!("10.{}.{}.{}", 100 + n / 65025, (n / 255) % 255, n % 255 + 1);
    for n in 0..3000 {
        let ips: Vec<String> = (0..10).map(|i| ip(n * 10 + i)).collect();
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        c.api.apply(knative_slice(&format!("knative-{n:04}"), &ips));
        let other: Vec<(&str, Option<bool>)> = ips.iter().map(|ip| (*ip, Some(true))).collect();
        c.api.apply(endpoint_slice("registry", "other", &format!("other-{n:04}"), "IPv4", &other));
    }
    // What the same process weighs with the usual two endpoints: the growth above it is what the
    // 30000 endpoints cost (a debug build starts some 20 MiB heavier than a release build).
    let small = Cluster::new();
    let baseline = rss_kib(&small.start());
    let start = Instant::now();
    let s = c.start_unsynced();
    assert!(wait_until(Duration::from_secs(60), || ready(&s)), "{:?}", s.logs());
    let synced = start.elapsed();
    let first = rss_kib(&s);
    let lists = c.api.list_requests();
    assert!(lists.len() >= 7, "3002 slices in pages of at most 500: {lists:#?}");
    assert!(lists.iter().all(|r| r.contains("limit=500")), "{lists:#?}");
    assert!(lists.iter().skip(1).all(|r| r.contains("continue=")), "{lists:#?}");
    let check_answers = || {
        let d = dig(s.addr, &["+noedns", NAME, "A"]);
        assert_eq!(d.rdata("A").len(), 16, "--max-answers 16: {}", d.raw);
        assert!(!d.has_flag("tc"));
        assert!(d.rdata("A").iter().all(|a| a.starts_with("10.")), "{:?}", d.answer);
    };
    check_answers();

    // Five forced relists (compaction, dropped watch, 410, LIST again): answers never gap, and
    // memory does not grow from one to the next.
    let mut after = Vec::new();
    for round in 0..5 {
        let lists_before = c.api.list_requests().len();
        c.api.compact();
        c.api.drop_watches();
        let relisted = wait_until(Duration::from_secs(60), || {
            check_answers();
            c.api.list_requests().len() >= lists_before + 7 && c.api.active_watches() == 1
        });
        assert!(relisted, "round {round}: {:?}", s.logs());
        after.push(rss_kib(&s));
    }
    check_answers();
    eprintln!(
        "big relist: 30000 endpoints in 3000 slices (+3000 filtered by the server), synced in {:.1} s, \
         VmRSS {baseline} KiB with 2 endpoints, {first} KiB after sync, after each of 5 relists {after:?} KiB",
        synced.as_secs_f64()
    );
    let peak = *after.iter().max().unwrap();
    assert!(peak - baseline < 48 * 1024, "30000 endpoints (two copies during a relist) cost {} KiB", peak - baseline);
    assert!(after[4] <= after[0] + 4 * 1024, "no growth across relists: {after:?}");
}
