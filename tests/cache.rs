//! The packet cache, against real upstreams (nsd, and the misbehaving upstream of
//! `support::bad_upstream` where an upstream must fail on demand or count what it is asked),
//! over real sockets and processes: what a hit looks like byte for byte, what shares an entry and
//! what never does, negative caching, serve-stale (RFC 8767) against a killed and a silent
//! upstream whichever worker a client lands on, flush, single flight across workers, reloads,
//! and memory under a flood of unique names. The rules' timing (TTL decay, the stale window, the
//! client timer, the 30 s hold-off, prefetch, failures kept 5 s and never hiding an answer) is
//! checked by the unit tests with a fake clock, in `src/cache/` and `src/forward/exchange/`.
//!
//! Clients ask as stub resolvers do: each query from a fresh socket (a new source port), so the
//! kernel spreads them over the server's UDP workers (four, unless a test says otherwise): one
//! cache must serve them all.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use registry_dns::dns::wire;
use support::bad_upstream::{BadUpstream, Behaviour, GENUINE};
use support::scrape::Scrape;
use support::{Nsd, RegistryDns, http_post, wait_until};

/// A zone with answers of known TTLs, and a negative TTL of 3 s (the SOA's MINIMUM, below its
/// own TTL of 60): `www` (300 s), `short` (2 s), `big` (too large for 512 bytes).
fn zone() -> String {
    let mut zone = String::from(
        "$ORIGIN cache.test.\n$TTL 300\n@ 60 IN SOA ns.cache.test. hostmaster.cache.test. 1 7200 1800 86400 3\n\
         @ IN NS ns.cache.test.\nns IN A 127.0.0.1\nwww IN A 192.0.2.10\nwww IN AAAA 2001:db8::10\n\
         short 2 IN A 192.0.2.11\nchaos IN TXT \"in\"\n",
    );
    for i in 0..60 {
        zone.push_str(&format!("big IN A 198.51.100.{i}\n"));
    }
    zone
}

/// Held by the test with timing bounds (RFC 8767's client timer) and by the flood, which loads
/// both cores: they never run at the same time.
static TIMED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn timed() -> std::sync::MutexGuard<'static, ()> {
    TIMED.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn nsd() -> Nsd {
    Nsd::start(&[("cache.test.", Some(&zone()))])
}

fn start(upstream: SocketAddr, extra: &[&str]) -> RegistryDns {
    let upstream = upstream.to_string();
    let mut args = vec!["--record", "knative-local-registry=10.0.0.10", "--upstream", &upstream];
    if !extra.contains(&"--workers") {
        args.extend(["--workers", "4"]);
    }
    args.extend_from_slice(extra);
    RegistryDns::start(&args)
}

/// A query for `name` `qtype` with `id`, RD set; `edns` adds an OPT record (with DO if asked).
fn query(id: u16, name: &str, qtype: RecordType, edns: Option<bool>) -> Message {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(dnssec_ok) = edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        e.set_dnssec_ok(dnssec_ok);
        m.set_edns(e);
    }
    m
}

/// A client socket on a port of the kernel's choosing.
fn client() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    socket
}

/// Sends `query` from a fresh socket, as a stub resolver does per lookup, and returns the raw
/// answer with its ID, and how long it took.
fn exchange(server: SocketAddr, query: &[u8]) -> (Vec<u8>, Duration) {
    let socket = client();
    let started = Instant::now();
    socket.send_to(query, server).unwrap();
    let mut buf = [0u8; 65535];
    loop {
        let (n, _) = socket.recv_from(&mut buf).unwrap_or_else(|e| panic!("no answer: {e}"));
        if buf[..2] == query[..2] {
            return (buf[..n].to_vec(), started.elapsed());
        }
    }
}

fn ask(server: SocketAddr, m: &Message) -> Message {
    Message::from_vec(&exchange(server, &m.to_vec().unwrap()).0).unwrap()
}

/// Where the question of `message` ends.
fn question_end(message: &[u8]) -> usize {
    wire::parse_query(message, &mut [0; wire::MAX_NAME_LEN]).map(|q| q.question_end).unwrap_or_else(|_| {
        let mut copy = message.to_vec();
        copy[2] &= !0x80;
        wire::parse_query(&copy, &mut [0; wire::MAX_NAME_LEN]).unwrap().question_end
    })
}

/// The TTL of every record but OPT.
fn ttls(message: &[u8]) -> Vec<u32> {
    let end = question_end(message);
    wire::Records::new(message, end)
        .filter(|r| r.rtype != 41)
        .map(|r| wire::get_u32(message, r.ttl_at).unwrap())
        .collect()
}

fn upstream_queries(s: &RegistryDns) -> f64 {
    let scrape = Scrape::of(s);
    scrape.get("registry_dns_upstream_requests_total", &[("proto", "udp")])
        + scrape.get("registry_dns_upstream_requests_total", &[("proto", "tcp")])
}

#[test]
fn a_miss_is_the_upstreams_answer_and_a_hit_differs_only_in_id_case_and_aged_ttls() {
    let upstream = nsd();
    let s = start(upstream.addr, &[]);
    let first = query(0x1111, "www.cache.test.", RecordType::A, Some(true)).to_vec().unwrap();
    let (direct, _) = exchange(upstream.addr, &first);
    let (miss, _) = exchange(s.addr, &first);
    assert_eq!(miss, direct, "a miss is relayed byte for byte");

    let second = query(0x2222, "WwW.CaChE.tEsT.", RecordType::A, Some(true)).to_vec().unwrap();
    let before = upstream_queries(&s);
    let (hit, _) = exchange(s.addr, &second);
    assert_eq!(upstream_queries(&s), before, "a hit asks no upstream");
    assert_eq!(hit.len(), direct.len());
    assert_eq!(hit[..2], second[..2], "the client's ID");
    let end = question_end(&second);
    assert_eq!(hit[12..end], second[12..end], "the client's question bytes, in its case");
    let aged: Vec<u32> = ttls(&hit);
    let original = ttls(&direct);
    assert!(!original.is_empty());
    // How TTLs age is the unit tests' (src/cache): here they may only have aged by the second
    // that may have begun since the miss.
    for (a, o) in aged.iter().zip(&original) {
        assert!(o - a <= 1, "TTL aged by the elapsed seconds: {o} -> {a}");
    }
    // Everything else is the upstream's answer: patch the differences back and compare.
    let mut restored = hit.clone();
    restored[..2].copy_from_slice(&direct[..2]);
    restored[12..end].copy_from_slice(&direct[12..end]);
    let records: Vec<usize> = wire::Records::new(&direct, end).filter(|r| r.rtype != 41).map(|r| r.ttl_at).collect();
    for at in records {
        restored[at..at + 4].copy_from_slice(&direct[at..at + 4]);
    }
    assert_eq!(restored, direct);
}

/// Forty clients ask for `name` A one after another, each from a fresh socket: the answers.
fn forty_clients(server: SocketAddr, name: &str) -> Vec<Message> {
    (0..40).map(|i| ask(server, &query(1000 + i, name, RecordType::A, None))).collect()
}

#[test]
fn a_name_answered_once_is_a_hit_for_every_client_whichever_worker_takes_its_query() {
    let upstream = nsd();
    // Four workers, and the default (one per CPU).
    for workers in ["4", "0"] {
        let s = start(upstream.addr, &["--workers", workers]);
        assert_eq!(ask(s.addr, &query(1, "www.cache.test.", RecordType::A, None)).answers.len(), 1);
        let before = upstream_queries(&s);
        let answers = forty_clients(s.addr, "www.cache.test.");
        assert_eq!(upstream_queries(&s), before, "--workers {workers}: no more upstream queries");
        let ttls: Vec<u32> = answers.iter().map(|m| m.answers[0].ttl).collect();
        assert!(ttls.windows(2).all(|w| w[1] <= w[0]), "--workers {workers}: the TTL never jumps back: {ttls:?}");
        assert_eq!(Scrape::of(&s).get("registry_dns_cache_hits_total", &[]), 40.0);
    }
}

#[test]
fn after_expiry_every_client_gets_the_stale_answer_whichever_worker_takes_its_query() {
    let _timed = timed();
    // Dead: nsd stopped, its port closed (every try is refused at once).
    let mut upstream = nsd();
    let s = start(upstream.addr, &["--cache-max-ttl", "1s", "--upstream-timeout", "2s"]);
    assert_eq!(ask(s.addr, &query(1, "www.cache.test.", RecordType::A, None)).answers.len(), 1);
    upstream.stop();
    std::thread::sleep(Duration::from_millis(1100));
    let started = Instant::now();
    for (i, m) in forty_clients(s.addr, "www.cache.test.").iter().enumerate() {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "client {i}");
        assert_eq!((m.answers[0].data.to_string().as_str(), m.answers[0].ttl), ("192.0.2.10", 30), "client {i}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a refused upstream is not waited for: {:?}",
        started.elapsed()
    );
    let never_seen = ask(s.addr, &query(2, "never.cache.test.", RecordType::A, None));
    assert_eq!(never_seen.metadata.response_code, ResponseCode::ServFail, "nothing to serve stale");

    // Silent: the first client waits the client timer (1.8 s); its refresh is under way (then
    // failed) for every other one, which gets the stale answer at once; one upstream query.
    let silent = BadUpstream::with(Behaviour::Genuine);
    let s = start(silent.addr, &["--cache-max-ttl", "1s", "--upstream-timeout", "5s"]);
    assert_eq!(ask(s.addr, &query(3, "silent.example.", RecordType::A, None)).answers.len(), 1);
    silent.set(Behaviour::Silent);
    std::thread::sleep(Duration::from_millis(1100));
    let asked = silent.queries();
    let (first, took) = exchange(s.addr, &query(4, "silent.example.", RecordType::A, None).to_vec().unwrap());
    let first = Message::from_vec(&first).unwrap();
    assert_eq!((first.answers[0].data.to_string().as_str(), first.answers[0].ttl), (GENUINE, 30));
    assert!(
        took >= Duration::from_millis(1700) && took < Duration::from_secs(2) + Duration::from_millis(300),
        "the client timer, 1.8 s, and not the upstream's 5 s: {took:?}"
    );
    for (i, m) in forty_clients(s.addr, "silent.example.").iter().enumerate() {
        assert_eq!((m.answers[0].data.to_string().as_str(), m.answers[0].ttl), (GENUINE, 30), "client {i}");
    }
    assert_eq!(silent.queries(), asked + 1, "one refresh for forty-one clients");
}

#[test]
fn clients_asking_at_once_for_one_name_cost_one_upstream_query() {
    let upstream = BadUpstream::with(Behaviour::Slow(Duration::from_millis(500)));
    let s = start(upstream.addr, &[]);
    upstream.wait_for_loop_probe();
    std::thread::sleep(Duration::from_millis(600));
    let asked = upstream.queries();
    let server = s.addr;
    let clients: Vec<_> = (0..20u16)
        .map(|i| std::thread::spawn(move || ask(server, &query(100 + i, "once.example.", RecordType::A, None))))
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let m = client.join().unwrap();
        assert_eq!(m.metadata.id, 100 + i as u16, "each client its own ID");
        assert_eq!(m.answers[0].data.to_string(), GENUINE, "client {i}");
    }
    assert_eq!(upstream.queries(), asked + 1, "one upstream query for twenty clients on four workers");
    assert_eq!(Scrape::of(&s).get("registry_dns_cache_coalesced_total", &[]), 19.0);
}

#[test]
fn do_cd_type_and_class_never_share_an_entry_and_tc_answers_are_not_cached() {
    let upstream = BadUpstream::with(Behaviour::Genuine);
    let s = start(upstream.addr, &[]);
    upstream.wait_for_loop_probe();
    let mut variants = vec![
        query(1, "a.example.", RecordType::A, None),
        query(2, "a.example.", RecordType::A, Some(false)),
        query(3, "a.example.", RecordType::A, Some(true)),
        query(4, "a.example.", RecordType::AAAA, None),
        query(5, "a.example.", RecordType::TXT, None),
    ];
    let mut cd = query(6, "a.example.", RecordType::A, None);
    cd.metadata.checking_disabled = true;
    variants.push(cd);
    let mut chaos = query(7, "a.example.", RecordType::A, None);
    chaos.queries[0].set_query_class(DNSClass::CH);
    variants.push(chaos);
    for (i, m) in variants.iter().enumerate() {
        let asked = upstream.queries();
        ask(s.addr, m);
        assert_eq!(upstream.queries(), asked + 1, "variant {i} is a miss");
    }
    let asked = upstream.queries();
    for m in &variants {
        let mut again = m.clone();
        again.metadata.id += 100;
        let answer = ask(s.addr, &again);
        assert_eq!(answer.metadata.id, again.metadata.id);
        assert_eq!(answer.queries, again.queries, "each variant gets its own answer back");
    }
    assert_eq!(upstream.queries(), asked, "every variant is a hit the second time");

    upstream.set(Behaviour::Truncated);
    for id in [20, 21] {
        let asked = upstream.queries();
        let answer = ask(s.addr, &query(id, "tc.example.", RecordType::A, None));
        assert!(answer.metadata.truncation);
        assert_eq!(upstream.queries(), asked + 1, "a TC answer is relayed, never cached");
    }
}

#[test]
fn a_hit_never_carries_another_clients_cookie() {
    let upstream = BadUpstream::with(Behaviour::CookieEcho);
    let s = start(upstream.addr, &[]);
    upstream.wait_for_loop_probe();
    let port = s.addr.port().to_string();
    let dig = || {
        let out = std::process::Command::new("dig")
            .args(["@127.0.0.1", "-p", &port, "+cookie", "+norecurse", "cookie.example", "A"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let miss = dig();
    assert!(miss.contains("COOKIE:") && miss.contains("(good)"), "the upstream's answer to this client: {miss}");
    let asked = upstream.queries();
    let hit = dig();
    assert_eq!(upstream.queries(), asked, "a hit: {hit}");
    assert!(hit.contains(GENUINE), "{hit}");
    assert!(!hit.contains("COOKIE"), "no server cookie meant for the first dig: {hit}");
}

#[test]
fn negative_answers_are_cached_for_the_soas_minimum() {
    let upstream = nsd();
    let s = start(upstream.addr, &[]);
    let nx = query(1, "nothing.cache.test.", RecordType::A, None);
    let nodata = query(2, "www.cache.test.", RecordType::MX, None);
    for m in [&nx, &nodata] {
        let first = ask(s.addr, m);
        assert!(first.answers.is_empty() && first.authorities.len() == 1, "{first:?}");
        let before = upstream_queries(&s);
        let again = ask(s.addr, m);
        assert_eq!(again.metadata.response_code, first.metadata.response_code);
        assert_eq!(upstream_queries(&s), before, "cached");
        assert!(again.authorities[0].ttl <= 3, "the SOA says for how long: {}", again.authorities[0].ttl);
    }
}

#[test]
fn answers_larger_than_the_clients_buffer_are_neither_cached_nor_served_to_it() {
    let upstream = nsd();
    let s = start(upstream.addr, &[]);
    let small = query(1, "big.cache.test.", RecordType::A, None);
    let truncated = ask(s.addr, &small);
    assert!(truncated.metadata.truncation && truncated.answers.is_empty());
    let large = query(2, "big.cache.test.", RecordType::A, Some(false));
    assert_eq!(ask(s.addr, &large).answers.len(), 60);
    assert_eq!(ask(s.addr, &large).answers.len(), 60, "a hit for the client with the large buffer");
    let before = upstream_queries(&s);
    let mut again = small.clone();
    again.metadata.id = 3;
    assert!(ask(s.addr, &again).metadata.truncation, "never an oversized datagram from the cache");
    assert_eq!(upstream_queries(&s), before + 1.0, "the small client's query went upstream");
}

#[test]
fn flush_empties_the_cache_or_one_name() {
    let upstream = BadUpstream::with(Behaviour::Genuine);
    let s = start(upstream.addr, &[]);
    upstream.wait_for_loop_probe();
    let a = query(1, "a.example.", RecordType::A, None);
    let b = query(2, "b.example.", RecordType::AAAA, None);
    let tcp_asked = |name: &str| {
        let out = std::process::Command::new("dig")
            .args(["@127.0.0.1", "-p", &s.addr.port().to_string(), "+tcp", "+short", name])
            .output()
            .unwrap();
        assert!(out.status.success());
    };
    ask(s.addr, &a);
    ask(s.addr, &b);
    tcp_asked("a.example");
    let asked = upstream.queries();
    ask(s.addr, &a);
    tcp_asked("a.example");
    assert_eq!(upstream.queries(), asked, "cached over UDP and TCP");

    let (code, body) = http_post(s.ops.unwrap(), "/cache/flush?name=A.Example").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("flushed A.Example: "), "{body}");
    ask(s.addr, &b);
    assert_eq!(upstream.queries(), asked, "another name stays");
    ask(s.addr, &a);
    tcp_asked("a.example");
    assert_eq!(upstream.queries(), asked + 2, "the flushed name is asked again, over UDP and TCP");

    assert_eq!(http_post(s.ops.unwrap(), "/cache/flush").unwrap().0, 200);
    ask(s.addr, &b);
    assert_eq!(upstream.queries(), asked + 3, "everything flushed");
    assert_eq!(http_post(s.ops.unwrap(), "/cache/flush?name=a%20b").unwrap().0, 400);
    assert_eq!(Scrape::of(&s).get("registry_dns_cache_entries", &[]), 1.0, "b, asked again");
}

#[test]
fn a_reload_that_changes_the_upstreams_or_the_cache_settings_empties_the_cache() {
    let (first, second) = (BadUpstream::with(Behaviour::Genuine), BadUpstream::with(Behaviour::Genuine));
    let dir = support::TempDir::new("cache-reload");
    let config = dir.path("config.yaml");
    let write = |upstream: SocketAddr, max_ttl: &str| {
        let text = format!("upstream: [\"{upstream}\"]\ncache-max-ttl: {max_ttl}\nworkers: 1\n");
        std::fs::write(&config, text).unwrap();
    };
    write(first.addr, "1h");
    let s = RegistryDns::start(&["--record", "knative-local-registry=10.0.0.10", "--config", config.to_str().unwrap()]);
    first.wait_for_loop_probe();
    let a = |id| query(id, "a.example.", RecordType::A, None);
    ask(s.addr, &a(1));
    let asked = first.queries();
    ask(s.addr, &a(2));
    assert_eq!(first.queries(), asked, "cached");

    let reload = |log: &str| {
        let before = s.logs().iter().filter(|l| l.contains(log)).count();
        assert!(std::process::Command::new("kill").args(["-HUP", &s.pid().to_string()]).status().unwrap().success());
        assert!(wait_until(Duration::from_secs(5), || s.logs().iter().filter(|l| l.contains(log)).count() > before));
    };
    write(second.addr, "1h");
    reload("configuration reloaded");
    second.wait_for_loop_probe();
    let asked = second.queries();
    ask(s.addr, &a(3));
    assert_eq!(second.queries(), asked + 1, "new upstreams, empty cache");
    ask(s.addr, &a(4));
    assert_eq!(second.queries(), asked + 1, "cached again");

    write(second.addr, "30m");
    reload("configuration reloaded");
    ask(s.addr, &a(5));
    assert_eq!(second.queries(), asked + 2, "new cache settings, empty cache");
    let logged = s.logs().iter().any(|l| l.contains("configuration reloaded") && l.contains("cache"));
    assert!(logged, "the reload names what changed: {:?}", s.logs());
}

#[test]
fn with_cache_size_zero_every_query_is_relayed() {
    let upstream = BadUpstream::with(Behaviour::Genuine);
    let s = start(upstream.addr, &["--cache-size", "0"]);
    upstream.wait_for_loop_probe();
    for id in 1..4 {
        let asked = upstream.queries();
        ask(s.addr, &query(id, "a.example.", RecordType::A, None));
        assert_eq!(upstream.queries(), asked + 1);
    }
    assert_eq!(Scrape::of(&s).get("registry_dns_cache_misses_total", &[]), 0.0, "no cache, no lookups");
}

/// Peak and current resident memory of a process, in bytes (VmHWM, VmRSS).
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Asks `count` unique names, 64 at a time.
fn flood(s: &RegistryDns, count: usize, tag: &str) {
    let socket = client();
    socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 4096];
    for chunk in 0..count.div_ceil(64) {
        for i in 0..64 {
            let name = format!("n{}-{tag}.flood.example.", chunk * 64 + i);
            socket.send_to(&query(i as u16, &name, RecordType::A, None).to_vec().unwrap(), s.addr).unwrap();
        }
        for _ in 0..64 {
            if socket.recv_from(&mut buf).is_err() {
                break;
            }
        }
    }
}

#[test]
fn a_flood_of_unique_names_ten_times_the_cache_stays_within_its_size() {
    let _timed = timed();
    // Large enough that the run-to-run spread of RSS (a few hundred KiB) cannot decide the test.
    const SIZE: u64 = 4 << 20;
    // An entry here counts about 530 bytes (answer, key, bookkeeping): 10x the cache is ~80,000.
    const NAMES: usize = 80_000;
    let upstream = BadUpstream::with(Behaviour::Genuine);
    let peak = |cache_size: &str| {
        let s = start(upstream.addr, &["--cache-size", cache_size]);
        flood(&s, NAMES, cache_size);
        let scrape = Scrape::of(&s);
        (
            rss(s.pid()).0,
            scrape.get("registry_dns_cache_bytes", &[]),
            scrape.get("registry_dns_cache_evictions_total", &[]),
        )
    };
    let (without, _, _) = peak("0");
    let (with, bytes, evictions) = peak(&SIZE.to_string());
    eprintln!(
        "peak RSS without a cache {without}, with a {SIZE}-byte cache {with}; cache bytes {bytes}, evictions {evictions}"
    );
    assert!(bytes <= SIZE as f64 && bytes > SIZE as f64 / 4.0, "the cache is full and within its size: {bytes}");
    assert!(evictions > NAMES as f64 / 2.0, "entries were evicted: {evictions}");
    assert!(with <= without + SIZE, "peak RSS {with} exceeds {without} + the cache's {SIZE}");
}
