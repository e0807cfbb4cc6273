//! Everything that is not a local name is relayed faithfully to real upstream servers (nsd,
//! dnsmasq): the same answer as asking the upstream directly, failover, and loop protection.

mod support;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use support::bad_upstream::{BadUpstream, FORGED, Forgery, GENUINE};
use support::{Nsd, RegistryDns, dig, free_port, healthy_upstream, test_zone};

const LOCAL: &str = "knative-local-registry=10.0.0.10";

fn relay(upstream: &Nsd) -> RegistryDns {
    RegistryDns::start(&["--record", LOCAL, "--upstream", &upstream.addr.to_string()])
}

/// Asks the upstream directly and through registry-dns; everything but the ID and the timing
/// lines must match.
fn assert_same_answer(up: &Nsd, s: &RegistryDns, args: &[&str]) -> support::Dig {
    let direct = dig(up.addr, args);
    let relayed = dig(s.addr, args);
    assert_eq!(relayed.status, direct.status, "{args:?}");
    assert_eq!(relayed.flags, direct.flags, "{args:?}");
    assert_eq!(relayed.answer, direct.answer, "{args:?}");
    assert_eq!(relayed.authority, direct.authority, "{args:?}");
    assert_eq!(relayed.edns, direct.edns, "{args:?}");
    relayed
}

#[test]
fn forwarded_answers_match_the_upstream_exactly() {
    let up = healthy_upstream();
    let s = relay(&up);
    let www = assert_same_answer(&up, &s, &["www.test", "A"]);
    assert_eq!(www.rdata("A"), ["192.0.2.1"]);
    assert!(www.has_flag("aa"), "the upstream's AA survives the relay");
    let nx = assert_same_answer(&up, &s, &["missing.test", "A"]);
    assert_eq!(nx.status, "NXDOMAIN");
    assert_same_answer(&up, &s, &["www.test", "AAAA", "+norec"]);
    assert_same_answer(&up, &s, &["www.test", "A", "+cd", "+noedns"]);
    assert_same_answer(&up, &s, &["WwW.TeSt", "A"]);
}

#[test]
fn dnssec_records_pass_through_unchanged() {
    let up = healthy_upstream();
    let s = relay(&up);
    let signed = assert_same_answer(&up, &s, &["secure.signed.test", "A", "+dnssec"]);
    assert_eq!(signed.rdata("RRSIG").len(), 1, "{}", signed.raw);
    assert!(signed.edns.unwrap().contains("do"), "DO bit echoed by the upstream");
    let denial = assert_same_answer(&up, &s, &["nothing.signed.test", "A", "+dnssec"]);
    assert!(denial.authority.iter().any(|r| r[3] == "NSEC3"), "signed with NSEC3 (-n): {}", denial.raw);
}

#[test]
fn truncated_upstream_answers_reach_udp_clients_as_is_and_tcp_gets_it_whole() {
    let up = healthy_upstream();
    let s = relay(&up);
    let udp = dig(s.addr, &["+noedns", "+ignore", "big.test", "A"]);
    assert!(udp.has_flag("tc"), "{:?}", udp.flags);
    let direct = dig(up.addr, &["+noedns", "+ignore", "big.test", "A"]);
    assert_eq!(udp.answer, direct.answer);
    let tcp = dig(s.addr, &["+tcp", "big.test", "A"]);
    assert_eq!(tcp.rdata("A").len(), 40);
    let fallback = dig(s.addr, &["+noedns", "big.test", "A"]);
    assert_eq!(fallback.rdata("A").len(), 40, "dig falls back to TCP after TC");
}

#[test]
fn several_queries_on_one_tcp_connection() {
    let up = healthy_upstream();
    let s = relay(&up);
    let out = std::process::Command::new("dig")
        .arg(format!("@{}", s.addr.ip()))
        .args(["-p", &s.addr.port().to_string(), "+tcp", "+keepopen", "+short"])
        .args(["www.test", "A", "knative-local-registry", "A", "www.test", "AAAA"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, ["192.0.2.1", "10.0.0.10", "2001:db8::1"]);
}

#[test]
fn a_silent_first_upstream_fails_over_to_the_second_within_the_timeout() {
    let up = healthy_upstream();
    // A bound socket that never answers: the upstream is there but silent.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let s = RegistryDns::start(&[
        "--record",
        LOCAL,
        "--upstream",
        &silent_addr,
        "--upstream",
        &up.addr.to_string(),
        "--upstream-timeout",
        "400ms",
    ]);
    let d = dig(s.addr, &["www.test", "A"]);
    let took = d.query_time();
    assert_eq!(d.rdata("A"), ["192.0.2.1"]);
    assert!(took >= Duration::from_millis(350) && took < Duration::from_millis(1500), "took {took:?}");
    // After two failures the silent upstream is tried last: the next answers come at once (a
    // name not cached yet, so that it is forwarded).
    dig(s.addr, &["www.test", "AAAA"]);
    let d = dig(s.addr, &["www.test", "TXT"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(d.query_time() < Duration::from_millis(300), "healthy upstream preferred: {:?}", d.query_time());
}

#[test]
fn servfail_and_refused_upstreams_are_skipped() {
    let good = healthy_upstream();
    // nsd answers SERVFAIL for a zone it cannot load and REFUSED for a zone it does not serve.
    let servfail = Nsd::start(&[("test.", None)]);
    let refused = Nsd::start(&[("other.", Some(&test_zone().replace("test.", "other.")))]);
    assert_eq!(dig(servfail.addr, &["www.test"]).status, "SERVFAIL");
    assert_eq!(dig(refused.addr, &["www.test"]).status, "REFUSED");
    let s = RegistryDns::start(&[
        "--record",
        LOCAL,
        "--upstream",
        &servfail.addr.to_string(),
        "--upstream",
        &refused.addr.to_string(),
        "--upstream",
        &good.addr.to_string(),
    ]);
    assert_eq!(dig(s.addr, &["www.test", "A"]).rdata("A"), ["192.0.2.1"]);
    assert_eq!(dig(s.addr, &["+tcp", "www.test", "A"]).rdata("A"), ["192.0.2.1"]);
}

#[test]
fn every_upstream_down_gives_servfail_within_a_bounded_time() {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let s = RegistryDns::start(&[
        "--record",
        LOCAL,
        "--upstream",
        &a.local_addr().unwrap().to_string(),
        "--upstream",
        &b.local_addr().unwrap().to_string(),
        "--upstream-timeout",
        "300ms",
    ]);
    let started = Instant::now();
    let d = dig(s.addr, &["www.test", "A"]);
    assert_eq!(d.status, "SERVFAIL");
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
    assert_eq!(dig(s.addr, &["knative-local-registry"]).rdata("A"), ["10.0.0.10"], "local names unaffected");
}

#[test]
fn a_closed_upstream_port_is_not_waited_for() {
    let up = healthy_upstream();
    // A port nothing listens on: the kernel answers each try with ICMP port unreachable.
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    for cache_size in ["8MiB", "0"] {
        let alone = RegistryDns::start(&[
            "--record",
            LOCAL,
            "--upstream",
            &closed,
            "--upstream-timeout",
            "2s",
            "--cache-size",
            cache_size,
        ]);
        let d = dig(alone.addr, &["www.test", "A"]);
        assert_eq!(d.status, "SERVFAIL", "{}", d.raw);
        assert!(d.query_time() < Duration::from_millis(500), "--cache-size {cache_size}: {:?}", d.query_time());
        let first = RegistryDns::start(&[
            "--record",
            LOCAL,
            "--upstream",
            &closed,
            "--upstream",
            &up.addr.to_string(),
            "--upstream-timeout",
            "2s",
            "--cache-size",
            cache_size,
        ]);
        let d = dig(first.addr, &["www.test", "A"]);
        assert_eq!(d.rdata("A"), ["192.0.2.1"], "the next upstream's answer");
        assert!(d.query_time() < Duration::from_millis(500), "--cache-size {cache_size}: {:?}", d.query_time());
    }
}

#[test]
fn queries_beyond_max_concurrent_are_refused() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let s = RegistryDns::start(&[
        "--record",
        LOCAL,
        "--upstream",
        &silent.local_addr().unwrap().to_string(),
        "--max-concurrent",
        "3",
        "--upstream-timeout",
        "3s",
    ]);
    let waiting: Vec<_> = (0..3)
        .map(|i| {
            let addr = s.addr;
            std::thread::spawn(move || dig(addr, &[&format!("q{i}.test"), "+time=5"]))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let over = dig(s.addr, &["q9.test"]);
    assert_eq!(over.status, "REFUSED");
    assert_eq!(dig(s.addr, &["knative-local-registry"]).rdata("A"), ["10.0.0.10"]);
    for w in waiting {
        assert_eq!(w.join().unwrap().status, "SERVFAIL");
    }
}

#[test]
fn an_upstream_that_is_our_own_address_is_rejected_at_startup() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (code, stderr) = support::run_to_exit(&["--listen", &listen, "--record", LOCAL, "--upstream", &listen]);
    assert_eq!(code, Some(2));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("forwarding loop"), "{stderr}");
}

#[test]
fn a_forwarding_loop_through_another_resolver_is_detected_and_dropped() {
    // dnsmasq forwards everything back to registry-dns: the startup probe comes back to us.
    let our_port = free_port();
    let dnsmasq_port = free_port();
    let mut dnsmasq = std::process::Command::new(if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
        "/usr/sbin/dnsmasq"
    } else {
        "dnsmasq"
    })
    .args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--cache-size=0",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
    ])
    .arg(format!("--port={dnsmasq_port}"))
    .arg(format!("--server=127.0.0.1#{our_port}"))
    .arg("--pid-file=")
    .arg("--user=root")
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("starting dnsmasq (tests/run.sh installs it)");
    std::thread::sleep(Duration::from_millis(300));
    let s = RegistryDns::start(&[
        "--listen",
        &format!("127.0.0.1:{our_port}"),
        "--record",
        LOCAL,
        "--upstream",
        &format!("127.0.0.1:{dnsmasq_port}"),
        "--upstream-timeout",
        "500ms",
    ]);
    assert!(s.wait_for_log("forwarding loop", Duration::from_secs(5)), "{:?}", s.logs());
    let started = Instant::now();
    assert_eq!(dig(s.addr, &["www.test"]).status, "SERVFAIL");
    assert!(started.elapsed() < Duration::from_millis(400), "no upstream left: answered at once");
    assert_eq!(dig(s.addr, &["knative-local-registry"]).rdata("A"), ["10.0.0.10"]);
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
}

#[test]
fn only_genuine_replies_are_accepted() {
    for forgery in [Forgery::WrongId, Forgery::WrongQuestion, Forgery::OtherSource, Forgery::Garbage] {
        // The forged reply arrives first; the genuine one 100 ms later.
        let bad = BadUpstream::start(forgery, Duration::from_millis(100));
        let s = RegistryDns::start(&["--record", LOCAL, "--upstream", &bad.addr.to_string()]);
        for transport in ["+notcp", "+notcp"] {
            let d = dig(s.addr, &[transport, "www.test", "A"]);
            assert_eq!(d.rdata("A"), [GENUINE], "{forgery:?}: a forged reply must not be relayed ({FORGED})");
        }
    }
}
