//! A misbehaving first upstream in front of a healthy second one (nsd): whatever the first does
//! (silence, slowness, SERVFAIL/REFUSED, forged or broken replies), the client gets the healthy
//! answer within the per-try timeout plus a margin, never a forged one; a TC answer and one too
//! large for the client reach it in a form it can retry over TCP; and a failing upstream is
//! skipped for later queries, then used again once it answers. The cache is off here
//! (`--cache-size 0`): these are the relay's rules, which a cache hit would hide.

mod support;

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use support::bad_upstream::{BIG_ANSWERS, BadUpstream, Behaviour, FORGED, Forgery, GENUINE};
use support::{Dig, Nsd, RegistryDns, dig, healthy_upstream};

/// The healthy upstream's answer to `www.test A`.
const HEALTHY: &str = "192.0.2.1";
/// The per-try timeout: long enough that a loaded CI box answers a healthy try well within it.
const TRY: Duration = Duration::from_millis(600);
/// What a failover may take beyond the timeout: the timeout tick, scheduling on a busy machine.
const MARGIN: Duration = Duration::from_millis(700);
/// dig's clock (whole milliseconds, started a little before the server's) may see a wait that
/// short of its full length.
const CLOCK: Duration = Duration::from_millis(10);

/// registry-dns with `bad` first and `healthy` second, once `bad` has seen the startup loop probe
/// (so that its query count is ours from here on).
fn relay(bad: &BadUpstream, healthy: &Nsd) -> RegistryDns {
    let s = RegistryDns::start(&[
        "--record",
        "knative-local-registry=10.0.0.10",
        "--upstream",
        &bad.addr.to_string(),
        "--upstream",
        &healthy.addr.to_string(),
        "--upstream-timeout",
        &format!("{}ms", TRY.as_millis()),
        "--cache-size",
        "0",
    ]);
    bad.wait_for_loop_probe();
    s
}

/// Asks and returns the answer with how long it took, as dig measured it (from its query to the
/// answer, without the start of the dig process, which a loaded machine can delay).
fn timed(s: &RegistryDns, args: &[&str]) -> (Dig, Duration) {
    let d = dig(s.addr, args);
    let line =
        d.raw.lines().find(|l| l.starts_with(";; Query time:")).unwrap_or_else(|| panic!("no answer:\n{}", d.raw));
    let ms = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    (d, Duration::from_millis(ms))
}

/// The size of the answer as dig received it.
fn received_size(d: &Dig) -> usize {
    let line = d.raw.lines().find(|l| l.contains("MSG SIZE")).unwrap_or_else(|| panic!("no answer:\n{}", d.raw));
    line.split_whitespace().last().unwrap().parse().unwrap()
}

#[test]
fn a_silent_or_too_slow_upstream_gives_way_to_the_healthy_one_after_one_timeout() {
    let healthy = healthy_upstream();
    for behaviour in [Behaviour::Silent, Behaviour::Slow(TRY * 2)] {
        let bad = BadUpstream::with(behaviour);
        let s = relay(&bad, &healthy);
        let (d, took) = timed(&s, &["www.test", "A"]);
        assert_eq!(d.rdata("A"), [HEALTHY], "{behaviour:?}");
        assert!(took >= TRY - CLOCK && took < TRY + MARGIN, "{behaviour:?}: took {took:?}");
        assert_eq!(bad.queries(), 2, "{behaviour:?}: one try at the bad upstream");
        // The slow upstream's late answer arrives now, for a query that has moved on: ignored.
        std::thread::sleep(TRY * 2);
        assert_eq!(dig(s.addr, &["www.test", "A"]).rdata("A"), [HEALTHY], "{behaviour:?}");
    }
}

#[test]
fn a_slow_upstream_within_the_timeout_is_waited_for() {
    let healthy = healthy_upstream();
    let delay = Duration::from_millis(250);
    let bad = BadUpstream::with(Behaviour::Slow(delay));
    let s = relay(&bad, &healthy);
    for _ in 0..3 {
        let (d, took) = timed(&s, &["www.test", "A"]);
        assert_eq!(d.rdata("A"), [GENUINE], "the first upstream's answer, late but in time");
        assert!(took >= delay - CLOCK && took < TRY, "took {took:?}");
    }
}

#[test]
fn servfail_and_refused_move_on_to_the_healthy_upstream_at_once() {
    let healthy = healthy_upstream();
    for code in [ResponseCode::ServFail, ResponseCode::Refused] {
        let bad = BadUpstream::with(Behaviour::Rcode(code));
        let s = relay(&bad, &healthy);
        for transport in ["+notcp", "+tcp"] {
            let (d, took) = timed(&s, &[transport, "www.test", "A"]);
            assert_eq!(d.status, "NOERROR", "{code:?} {transport}");
            assert_eq!(d.rdata("A"), [HEALTHY], "{code:?} {transport}");
            assert!(took < TRY / 2, "{code:?} {transport}: no timeout waited, took {took:?}");
        }
    }
}

#[test]
fn forged_and_broken_replies_are_ignored_and_the_healthy_upstream_answers() {
    let healthy = healthy_upstream();
    for forgery in Forgery::ALL {
        let bad = BadUpstream::with(Behaviour::Forged(forgery));
        let s = relay(&bad, &healthy);
        let (d, took) = timed(&s, &["www.test", "A"]);
        assert_eq!(d.status, "NOERROR", "{forgery:?}: {}", d.raw);
        assert_eq!(d.rdata("A"), [HEALTHY], "{forgery:?}: never the forged reply ({FORGED})");
        assert!(took >= TRY - CLOCK && took < TRY + MARGIN, "{forgery:?}: took {took:?}");
        if forgery == Forgery::Cut {
            // Over TCP the cut answer is the whole exchange: the next upstream is asked at once.
            let (d, took) = timed(&s, &["+tcp", "www.test", "A"]);
            assert_eq!(d.rdata("A"), [HEALTHY], "{forgery:?} over TCP: {}", d.raw);
            assert!(took < TRY, "{forgery:?} over TCP: took {took:?}");
        }
    }
}

#[test]
fn an_answer_for_a_type_that_differs_only_in_case_bit_is_not_relayed() {
    // HTTPS (TYPE65, 0x0041) answered as TYPE97 (0x0061): the same bytes but for bit 0x20.
    let healthy = healthy_upstream();
    let bad = BadUpstream::with(Behaviour::Forged(Forgery::WrongType));
    let s = relay(&bad, &healthy);
    let d = dig(s.addr, &["www.test", "TYPE65"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(!d.raw.contains("mismatch"), "dig saw another question:\n{}", d.raw);
    assert!(d.answer.is_empty(), "the healthy upstream's NODATA, never the forged reply ({FORGED}): {}", d.raw);
    assert_eq!(bad.queries(), 2, "the forgery was seen (probe + query), and ignored");
}

#[test]
fn a_tc_answer_reaches_udp_clients_as_is_and_the_tcp_retry_gets_the_whole_answer() {
    let healthy = healthy_upstream();
    let bad = BadUpstream::with(Behaviour::Truncated);
    let s = relay(&bad, &healthy);
    let udp = dig(s.addr, &["+notcp", "+ignore", "www.test", "A"]);
    assert!(udp.has_flag("tc"), "{:?}", udp.flags);
    assert!(udp.answer.is_empty());
    let retried = dig(s.addr, &["www.test", "A"]);
    assert_eq!(retried.rdata("A").len(), BIG_ANSWERS, "dig retries over TCP, relayed over TCP:\n{}", retried.raw);
    assert!(retried.raw.contains("(TCP)"));
}

#[test]
fn an_answer_larger_than_the_clients_buffer_reaches_it_truncated() {
    let healthy = healthy_upstream();
    let bad = BadUpstream::with(Behaviour::Oversized);
    let s = relay(&bad, &healthy);
    for (args, limit) in [(&["+noedns"][..], 512), (&["+bufsize=512"], 512), (&["+bufsize=1232"], 1232)] {
        let d = dig(s.addr, &[args, &["+notcp", "+ignore", "www.test", "A"]].concat());
        assert!(received_size(&d) <= limit, "{args:?}: {} bytes over a {limit}-byte buffer", received_size(&d));
        assert!(d.has_flag("tc"), "{args:?}: {:?}", d.flags);
        assert_eq!(d.status, "NOERROR", "{args:?}");
        assert_eq!(d.edns.is_some(), args != ["+noedns"], "{args:?}: OPT only when the query had one");
        let retried = dig(s.addr, &[args, &["www.test", "A"]].concat());
        assert_eq!(retried.rdata("A").len(), BIG_ANSWERS, "{args:?}: the TCP retry gets it whole");
    }
    let roomy = dig(s.addr, &["+bufsize=4096", "+notcp", "www.test", "A"]);
    assert!(!roomy.has_flag("tc"), "a client with room gets the answer as the upstream sent it");
    assert_eq!(roomy.rdata("A").len(), BIG_ANSWERS);
}

#[test]
fn a_failing_upstream_is_skipped_for_later_queries_and_used_again_once_it_answers() {
    let healthy = healthy_upstream();
    let bad = BadUpstream::with(Behaviour::Silent);
    let s = relay(&bad, &healthy);
    // Two failures in a row, each costing its client one timeout.
    for _ in 0..2 {
        let (d, took) = timed(&s, &["www.test", "A"]);
        assert_eq!(d.rdata("A"), [HEALTHY]);
        assert!(took >= TRY - CLOCK, "took {took:?}");
    }
    let failed_at = Instant::now();
    let seen = bad.queries();
    // From now on the healthy upstream goes first: no wait, and the bad one is not asked at all.
    bad.set(Behaviour::Genuine);
    let mut answered_by_bad_again = None;
    while failed_at.elapsed() < Duration::from_secs(10) {
        let (d, took) = timed(&s, &["www.test", "A"]);
        if d.rdata("A") == [GENUINE] {
            answered_by_bad_again = Some(failed_at.elapsed());
            break;
        }
        assert_eq!(d.rdata("A"), [HEALTHY]);
        assert!(took < TRY / 2, "the penalized upstream is not waited for: took {took:?}");
        assert_eq!(bad.queries(), seen, "the penalized upstream gets no queries");
        std::thread::sleep(Duration::from_millis(200));
    }
    let back = answered_by_bad_again.expect("the upstream is used again once its penalty is over");
    assert!(back >= Duration::from_millis(4500), "not before the 5 s penalty: {back:?}");
    for _ in 0..3 {
        assert_eq!(dig(s.addr, &["www.test", "A"]).rdata("A"), [GENUINE], "first in line again");
    }
}
