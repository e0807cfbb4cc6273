//! The exchange, from a client's query to its end, driven with a fake clock: each test feeds
//! events at chosen instants and checks the commands, what every client gets, and what the cache
//! serves next. No socket, no sleep: the rules of RFC 8767 (1.8 s client timer, 30 s hold-off
//! after a failed refresh, 30 s stale TTL) and of failover are checked at their exact boundaries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::cache::CachePolicy;
use crate::dns::wire::{self, HEADER_LEN, rcode};
use crate::forward::client::ReplyTo;
use crate::forward::upstreams::{SPOOF_THRESHOLD, Upstreams};
use crate::metrics::{CacheEvent, ForwardingGauges, Metrics, Path, Traffic};

const TIMEOUT: Duration = Duration::from_secs(2);
/// The values the README promises, written out rather than taken from `cache`'s constants, so that
/// changing one of those fails these tests.
const STALE_TTL: u32 = 30;
const HOLD_OFF_SECONDS: f64 = 30.0;

/// A forwarder over `upstreams` fake upstreams (nothing listens: the tests play them), with the
/// clock at `t0`.
struct Harness {
    forwarder: Forwarder,
    upstreams: Arc<Upstreams>,
    metrics: Metrics,
    traffic: Arc<Traffic>,
    t0: Instant,
    /// The answers clients got: (listener, client, bytes); a TCP client is listener `usize::MAX`.
    sent: Vec<(usize, SocketAddr, Vec<u8>)>,
}

/// What a driver was told to do last after an event, once the answers were sent.
#[derive(Debug, PartialEq, Eq)]
enum Did {
    Wait,
    Send(usize),
    Recheck(usize),
    Ignore,
    Done,
}

impl Harness {
    fn new(upstreams: usize) -> Self {
        Self::with(upstreams, CachePolicy::default(), 1000)
    }

    fn with(upstreams: usize, policy: CachePolicy, max_concurrent: usize) -> Self {
        let metrics = Metrics::default();
        let addrs: Vec<SocketAddr> = (0..upstreams).map(|i| SocketAddr::from(([192, 0, 2, 1 + i as u8], 53))).collect();
        let upstreams = Upstreams::new(&addrs, &metrics);
        let forwarder = Forwarder::new(upstreams.clone(), policy, max_concurrent, TIMEOUT, 4);
        Self { forwarder, upstreams, traffic: metrics.traffic(), metrics, t0: Instant::now(), sent: Vec::new() }
    }

    /// The fake clock at `seconds` (to the millisecond) after the start.
    fn at(&self, seconds: f64) -> Instant {
        self.t0 + Duration::from_millis((seconds * 1000.0).round() as u64)
    }

    /// Client `client` (port) asks `packet` over UDP at `seconds`.
    fn ask(&mut self, packet: &[u8], client: u16, seconds: f64) -> (Begin, Vec<u8>) {
        self.ask_over(packet, Transport::Udp, client, seconds)
    }

    fn ask_over(&mut self, packet: &[u8], transport: Transport, client: u16, seconds: f64) -> (Begin, Vec<u8>) {
        let question_end = question_end(packet);
        let query = ClientQuery::new(packet, question_end, None, transport, self.at(seconds));
        let reply_to = match transport {
            Transport::Udp => ReplyTo::Udp { listener: usize::from(client % 2), client: addr(client) },
            Transport::Tcp => ReplyTo::Tcp(tokio::sync::oneshot::channel().0),
        };
        let mut out = Vec::new();
        let begin = Exchange::begin(&self.forwarder, query, reply_to, &self.upstreams, &self.traffic, &mut out);
        (begin, out)
    }

    /// Asks, and expects an exchange to start with its first try, at upstream 0.
    fn start(&mut self, packet: &[u8], client: u16, seconds: f64) -> Option<Exchange> {
        let (begin, _) = self.ask(packet, client, seconds);
        let Begin::Ask(exchange) = begin else { panic!("expected an exchange, got {begin:?}") };
        let mut exchange = Some(exchange);
        assert_eq!(self.feed(&mut exchange, Event::Start, seconds), Did::Send(0));
        exchange
    }

    /// Asks, and expects an answer at once on `path`.
    fn answered(&mut self, packet: &[u8], client: u16, seconds: f64, path: Path) -> Vec<u8> {
        let (begin, out) = self.ask(packet, client, seconds);
        assert!(matches!(begin, Begin::Answered(p) if p == path), "expected an answer on {path:?}, got {begin:?}");
        out
    }

    /// Feeds `event` at `seconds` and carries out the commands as a driver would: the answers
    /// are sent (kept in `sent`), the exchange is dropped when it is done; returns the last
    /// command.
    fn feed(&mut self, exchange: &mut Option<Exchange>, event: Event<'_>, seconds: f64) -> Did {
        let now = self.at(seconds);
        let running = exchange.as_mut().expect("exchange under way");
        let mut out = Output::new(self.traffic.clone());
        let mut command = running.on(event, now, &mut out);
        let did = loop {
            match command {
                None => break Did::Wait,
                Some(Command::Answer { to, bytes }) => {
                    let (listener, client) = match to {
                        ReplyTo::Udp { listener, client } => (listener, client),
                        ReplyTo::Tcp(_) => (usize::MAX, addr(0)),
                    };
                    self.sent.push((listener, client, bytes.to_vec()));
                }
                Some(Command::Send(upstream)) => break Did::Send(upstream),
                Some(Command::Recheck(upstream)) => break Did::Recheck(upstream),
                Some(Command::Ignore) => break Did::Ignore,
                Some(Command::Done) => break Did::Done,
            }
            command = running.poll(&mut out);
        };
        assert!(running.poll(&mut out).is_none(), "nothing after {did:?}");
        if did == Did::Done {
            *exchange = None;
        }
        did
    }

    /// Ticks the exchange at its next deadline; returns that deadline and what the tick led to.
    fn tick(&mut self, exchange: &mut Option<Exchange>) -> (f64, Did) {
        let deadline = exchange.as_ref().unwrap().next_deadline().expect("a deadline");
        let seconds = deadline.duration_since(self.t0).as_secs_f64();
        (seconds, self.feed(exchange, Event::Tick, seconds))
    }

    /// The answers sent so far, taken.
    fn sent(&mut self) -> Vec<(usize, SocketAddr, Vec<u8>)> {
        std::mem::take(&mut self.sent)
    }

    fn requests(&self, upstream: usize) -> u64 {
        self.metrics.upstream(self.upstreams.addr(upstream)).requests_of(Transport::Udp)
    }
}

fn addr(client: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 40000 + client))
}

/// A query for `name` A with `id`, RD set.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn question_end(packet: &[u8]) -> usize {
    wire::parse_query(packet, &mut [0; wire::MAX_NAME_LEN]).expect("a query").question_end
}

/// The upstream's answer to `sent` (as it went upstream, our ID in it): `code`, and for NOERROR one
/// A record 192.0.2.`last` with `ttl`.
fn answer(sent: &[u8], code: u16, ttl: u32, last: u8) -> Vec<u8> {
    let mut a = sent[..question_end(sent)].to_vec();
    a[2] = 0x81;
    a[3] = 0x80 | code as u8;
    if code == rcode::NOERROR {
        a[7] = 1;
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        a.extend_from_slice(&ttl.to_be_bytes());
        a.extend_from_slice(&[0, 4, 192, 0, 2, last]);
    }
    a
}

/// The TTL and last address byte of a one-record answer.
fn ttl_and_address(answer: &[u8]) -> (u32, u8) {
    let end = question_end_of_answer(answer);
    let record = wire::Records::new(answer, end).next().expect("one record");
    (wire::get_u32(answer, record.ttl_at).unwrap(), answer[record.rdata.1 - 1])
}

fn question_end_of_answer(answer: &[u8]) -> usize {
    let mut copy = answer.to_vec();
    copy[2] &= 0x7f;
    copy[3] &= 0xf0;
    copy[6..12].fill(0);
    question_end(&copy)
}

/// Runs a miss for `packet` to its end with an answer of `ttl`, at `seconds`.
fn cache_answer(h: &mut Harness, packet: &[u8], ttl: u32, last: u8, seconds: f64) {
    let mut exchange = h.start(packet, 1, seconds);
    let reply = answer(exchange.as_ref().unwrap().query(), rcode::NOERROR, ttl, last);
    assert_eq!(h.feed(&mut exchange, Event::Reply(&reply), seconds), Did::Done);
    assert_eq!(h.sent().len(), 1, "the client got the answer");
}

/// `upstreams` fake upstreams, `a.example` answered at 0 s with a TTL of 10 s (192.0.2.1), and client 2
/// asking for it again at `seconds`, after it expired: the exchange refreshing it, its first try
/// out. Returns the harness, the query and the exchange.
fn refreshing(upstreams: usize, seconds: f64) -> (Harness, Vec<u8>, Option<Exchange>) {
    let mut h = Harness::new(upstreams);
    let packet = query(1, "a.example");
    cache_answer(&mut h, &packet, 10, 1, 0.0);
    let exchange = h.start(&packet, 2, seconds);
    (h, packet, exchange)
}

#[test]
fn each_timeout_moves_the_query_on_in_the_configured_order_then_it_fails() {
    let mut h = Harness::new(3);
    let mut exchange = h.start(&query(7, "a.example"), 1, 0.0);
    for (at, expected) in [(2.0, Did::Send(1)), (4.0, Did::Send(2)), (6.0, Did::Done)] {
        assert_eq!(h.tick(&mut exchange), (at, expected), "the deadline {at} s");
    }
    let sent = h.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(wire::rcode_of(&sent[0].2), rcode::SERVFAIL);
    assert_eq!(wire::id(&sent[0].2), 7, "the client's ID");
    assert_eq!((h.requests(0), h.requests(1), h.requests(2)), (1, 1, 1));
}

#[test]
fn a_tick_before_the_deadline_changes_nothing() {
    let mut h = Harness::new(2);
    let mut exchange = h.start(&query(7, "a.example"), 1, 0.0);
    assert_eq!(h.feed(&mut exchange, Event::Tick, 1.999), Did::Wait);
    assert_eq!(exchange.as_ref().unwrap().next_deadline(), Some(h.at(2.0)));
    assert_eq!(h.feed(&mut exchange, Event::Tick, 2.001), Did::Send(1), "a late tick times out the try");
    assert_eq!(exchange.as_ref().unwrap().next_deadline(), Some(h.at(4.001)), "the next try gets its full timeout");
    assert!(h.sent().is_empty());
}

/// The deadlines a driver ticks an exchange at, for a client whose expired answer is held and
/// upstreams that stay silent: the first try times out, the second upstream is asked, the client
/// gets the stale answer at 1.8 s, and the refresh fails at the last try's deadline.
#[test]
fn a_driver_ticking_at_each_deadline_sees_timeout_next_upstream_stale_then_the_end() {
    let (mut h, packet, mut exchange) = refreshing(2, 20.0);
    // With a 2 s timeout the client timer (1.8 s) comes first, then the try's timeout.
    assert_eq!(h.tick(&mut exchange), (21.8, Did::Wait));
    assert_eq!(ttl_and_address(&h.sent()[0].2), (STALE_TTL, 1), "stale at its due time");
    assert_eq!(h.tick(&mut exchange), (22.0, Did::Send(1)), "timeout, then the next upstream");
    assert_eq!(h.tick(&mut exchange), (24.0, Did::Done), "the last try's deadline ends the refresh");
    assert!(h.sent().is_empty(), "the client was answered already");
    assert_eq!(ttl_and_address(&h.answered(&packet, 3, 24.5, Path::Cache)), (STALE_TTL, 1), "the refresh failed");

    // Without an answer held: SERVFAIL at the client's deadline, the last try's timeout.
    let mut exchange = h.start(&query(4, "b.example"), 4, 30.0);
    assert_eq!(h.tick(&mut exchange), (32.0, Did::Send(1)));
    assert_eq!(h.tick(&mut exchange), (34.0, Did::Done));
    assert_eq!(wire::rcode_of(&h.sent()[0].2), rcode::SERVFAIL);
}

/// A stale answer and the try's timeout due at the same tick: the answer first, then the next
/// try.
#[test]
fn a_tick_late_for_both_deadlines_serves_the_stale_answer_then_moves_on() {
    let (mut h, _, mut exchange) = refreshing(2, 20.0);
    assert_eq!(h.feed(&mut exchange, Event::Tick, 22.5), Did::Send(1));
    assert_eq!(ttl_and_address(&h.sent()[0].2), (STALE_TTL, 1));
    assert_eq!(exchange.as_ref().unwrap().next_deadline(), Some(h.at(24.5)), "only the try's deadline is left");
}

#[test]
fn servfail_and_refused_move_on_other_answers_end_the_query() {
    // (rcode, what the first upstream's answer does)
    let table = [
        (rcode::SERVFAIL, Did::Send(1)),
        (rcode::REFUSED, Did::Send(1)),
        (rcode::NOERROR, Did::Done),
        (rcode::NXDOMAIN, Did::Done),
        (rcode::FORMERR, Did::Done),
        (rcode::NOTIMP, Did::Done),
    ];
    for (code, expected) in table {
        let mut h = Harness::new(2);
        let mut exchange = h.start(&query(1, "a.example"), 1, 0.0);
        let reply = answer(exchange.as_ref().unwrap().query(), code, 60, 1);
        assert_eq!(h.feed(&mut exchange, Event::Reply(&reply), 0.1), expected, "rcode {code}");
        let sent = h.sent();
        match expected {
            Did::Done => assert_eq!(wire::rcode_of(&sent[0].2), code, "rcode {code} relayed"),
            _ => assert!(sent.is_empty(), "rcode {code}: the next upstream is asked first"),
        }
    }
}

#[test]
fn when_every_upstream_refuses_the_client_gets_the_last_refusal_byte_for_byte() {
    let mut h = Harness::new(2);
    let mut exchange = h.start(&query(0x4242, "a.example"), 1, 0.0);
    let first = answer(exchange.as_ref().unwrap().query(), rcode::SERVFAIL, 0, 0);
    assert_eq!(h.feed(&mut exchange, Event::Reply(&first), 0.1), Did::Send(1));
    exchange.as_mut().unwrap().assign_id(0x1111);
    let mut last = answer(exchange.as_ref().unwrap().query(), rcode::REFUSED, 0, 0);
    last.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
    last[11] = 1;
    assert_eq!(h.feed(&mut exchange, Event::Reply(&last), 0.2), Did::Done);
    let sent = h.sent();
    let mut expected = last.clone();
    wire::set_id(&mut expected, 0x4242);
    assert_eq!(sent[0].2, expected, "the second upstream's REFUSED, under the client's ID");
}

#[test]
fn a_reply_under_another_id_than_the_try_s_is_no_answer() {
    let mut h = Harness::new(1);
    let mut exchange = h.start(&query(1, "a.example"), 1, 0.0);
    exchange.as_mut().unwrap().assign_id(0x1111);
    let mut reply = answer(exchange.as_ref().unwrap().query(), rcode::NOERROR, 60, 1);
    wire::set_id(&mut reply, 0x2222);
    assert_eq!(h.feed(&mut exchange, Event::Reply(&reply), 0.1), Did::Ignore);
    wire::set_id(&mut reply, 0x1111);
    assert_eq!(h.feed(&mut exchange, Event::Reply(&reply), 0.2), Did::Done);
    assert_eq!(wire::id(&h.sent()[0].2), 1, "under the client's ID");
}

#[test]
fn a_reply_that_is_not_the_answer_is_ignored_over_udp_and_fails_the_try_over_tcp() {
    let mut h = Harness::new(2);
    let packet = query(9, "a.example");
    let mut exchange = h.start(&packet, 1, 0.0);
    let mut other_question = answer(exchange.as_ref().unwrap().query(), rcode::NOERROR, 60, 1);
    other_question[HEADER_LEN + 1] = b'b';
    assert_eq!(h.feed(&mut exchange, Event::Reply(&other_question), 0.1), Did::Ignore);
    assert_eq!(exchange.as_ref().unwrap().next_deadline(), Some(h.at(2.0)), "the try keeps waiting");

    let (begin, _) = h.ask_over(&query(10, "c.example"), Transport::Tcp, 2, 0.0);
    let Begin::Ask(tcp) = begin else { panic!("{begin:?}") };
    let mut tcp = Some(tcp);
    assert_eq!(h.feed(&mut tcp, Event::Start, 0.0), Did::Send(0));
    let wrong = answer(&query(11, "c.example"), rcode::NOERROR, 60, 1);
    assert_eq!(h.feed(&mut tcp, Event::Reply(&wrong), 0.1), Did::Send(1), "over TCP the next upstream");
}

#[test]
fn a_tcp_client_gets_the_whole_answer_however_large() {
    let mut h = Harness::new(1);
    let (begin, _) = h.ask_over(&query(10, "big.example"), Transport::Tcp, 2, 0.0);
    let Begin::Ask(tcp) = begin else { panic!("{begin:?}") };
    let mut tcp = Some(tcp);
    assert_eq!(h.feed(&mut tcp, Event::Start, 0.0), Did::Send(0));
    let mut big = answer(tcp.as_ref().unwrap().query(), rcode::NOERROR, 60, 1);
    for last in 2..=60 {
        big[7] += 1;
        big.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, last]);
    }
    assert!(big.len() > 512);
    assert_eq!(h.feed(&mut tcp, Event::Reply(&big), 0.1), Did::Done);
    let sent = h.sent();
    assert_eq!((sent[0].0, sent[0].2.len()), (usize::MAX, big.len()), "over TCP, whole");

    // The same answer for a UDP client without EDNS: header and question, with TC.
    let mut udp = h.start(&query(11, "big.example"), 3, 1.0);
    let mut big = answer(udp.as_ref().unwrap().query(), rcode::NOERROR, 60, 1);
    for last in 2..=60 {
        big[7] += 1;
        big.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, last]);
    }
    assert_eq!(h.feed(&mut udp, Event::Reply(&big), 1.1), Did::Done);
    let cut = &h.sent()[0].2;
    assert!(wire::is_truncated(cut) && cut.len() == question_end_of_answer(cut), "TC, nothing but the question");
}

#[test]
fn a_closed_port_or_failed_send_moves_on_at_once_not_at_the_timeout() {
    let mut h = Harness::new(2);
    let mut exchange = h.start(&query(1, "a.example"), 1, 0.0);
    assert_eq!(h.feed(&mut exchange, Event::Failed, 0.001), Did::Send(1));
    assert_eq!(exchange.as_ref().unwrap().next_deadline(), Some(h.at(2.001)), "the next try gets its full timeout");
    assert_eq!(h.feed(&mut exchange, Event::Failed, 0.002), Did::Done);
    assert_eq!(wire::rcode_of(&h.sent()[0].2), rcode::SERVFAIL, "SERVFAIL within milliseconds");
}

#[test]
fn an_upstream_that_failed_twice_is_tried_last_until_its_penalty_runs_out() {
    let mut h = Harness::new(2);
    for i in 0..2 {
        let mut exchange = h.start(&query(i, &format!("n{i}.example")), 1, 0.0);
        assert_eq!(h.tick(&mut exchange), (2.0, Did::Send(1)));
    }
    let (begin, _) = h.ask(&query(5, "later.example"), 1, 2.5);
    let Begin::Ask(exchange) = begin else { panic!() };
    assert_eq!(h.feed(&mut Some(exchange), Event::Start, 2.5), Did::Send(1), "the healthy one first");
    let (begin, _) = h.ask(&query(6, "much-later.example"), 1, 7.1);
    let Begin::Ask(exchange) = begin else { panic!() };
    assert_eq!(h.feed(&mut Some(exchange), Event::Start, 7.1), Did::Send(0), "5 s later, the configured order again");
}

#[test]
fn without_an_upstream_to_try_the_client_gets_servfail_at_once() {
    let mut h = Harness::new(1);
    h.upstreams.disable_looped(0);
    let (begin, _) = h.ask(&query(5, "a.example"), 1, 0.0);
    let Begin::Ask(exchange) = begin else { panic!() };
    assert_eq!(h.feed(&mut Some(exchange), Event::Start, 0.0), Did::Done);
    assert_eq!(wire::rcode_of(&h.sent()[0].2), rcode::SERVFAIL);
}

#[test]
fn a_suspect_reply_is_asked_again_over_tcp_and_the_tcp_answer_counts() {
    let mut h = Harness::new(2);
    let packet = query(3, "a.example");
    let mut exchange = h.start(&packet, 1, 0.0);
    let reply = answer(exchange.as_ref().unwrap().query(), rcode::NOERROR, 60, 66);
    assert_eq!(h.feed(&mut exchange, Event::SuspectReply(&reply), 0.1), Did::Recheck(0));
    assert_eq!(exchange.as_ref().unwrap().next_deadline(), None, "the TCP check has a timeout of its own");
    assert_eq!(h.feed(&mut exchange, Event::Tick, 5.0), Did::Wait, "no timeout while rechecking");
    let genuine = answer(exchange.as_ref().unwrap().query(), rcode::NOERROR, 60, 1);
    assert_eq!(h.feed(&mut exchange, Event::Rechecked(Some(&genuine)), 5.1), Did::Done);
    assert_eq!(ttl_and_address(&h.sent()[0].2).1, 1, "the TCP answer, not the suspect one");
    assert_eq!(ttl_and_address(&h.answered(&query(4, "a.example"), 2, 5.2, Path::Cache)).1, 1, "and it is cached");
    assert_eq!(h.metrics.upstream(h.upstreams.addr(0)).rechecks(), 1);

    let mut exchange = h.start(&query(5, "b.example"), 1, 6.0);
    let reply = answer(exchange.as_ref().unwrap().query(), rcode::NOERROR, 60, 66);
    h.feed(&mut exchange, Event::SuspectReply(&reply), 6.1);
    assert_eq!(h.feed(&mut exchange, Event::Rechecked(None), 6.2), Did::Send(1), "a failed check moves on");
}

#[test]
fn a_suspect_reply_that_is_no_answer_is_ignored_and_asks_nothing_over_tcp() {
    let mut h = Harness::new(1);
    let mut exchange = h.start(&query(3, "a.example"), 1, 0.0);
    let mut other = answer(exchange.as_ref().unwrap().query(), rcode::NOERROR, 60, 66);
    other[HEADER_LEN + 1] = b'z';
    assert_eq!(h.feed(&mut exchange, Event::SuspectReply(&other), 0.1), Did::Ignore);
    assert_eq!(exchange.as_ref().unwrap().next_deadline(), Some(h.at(2.0)));
    assert_eq!(h.metrics.upstream(h.upstreams.addr(0)).rechecks(), 0);
}

#[test]
fn during_a_spoofing_episode_udp_answers_reach_the_client_but_not_the_cache() {
    let mut h = Harness::new(1);
    for _ in 0..SPOOF_THRESHOLD {
        h.upstreams.record_unexpected(0, h.at(0.0));
    }
    let packet = query(1, "a.example");
    let mut exchange = h.start(&packet, 1, 0.1);
    let reply = answer(exchange.as_ref().unwrap().query(), rcode::NOERROR, 60, 1);
    assert_eq!(h.feed(&mut exchange, Event::Reply(&reply), 0.2), Did::Done);
    assert_eq!(h.sent().len(), 1, "relayed");
    h.start(&packet, 2, 0.3);
}

#[test]
fn an_answer_is_a_hit_for_a_client_of_any_worker_with_its_ttl_aged() {
    let mut h = Harness::new(1);
    cache_answer(&mut h, &query(1, "a.example"), 300, 1, 0.0);
    for (client, at, ttl) in [(2, 1.0, 299), (3, 2.5, 298), (4, 100.0, 200)] {
        let hit = h.answered(&query(client, "A.Example"), client, at, Path::Cache);
        assert_eq!(wire::id(&hit), client, "the client's ID");
        assert_eq!(&hit[HEADER_LEN..HEADER_LEN + 3], b"\x01A\x07", "the client's case");
        assert_eq!(ttl_and_address(&hit), (ttl, 1), "at {at} s");
    }
    assert_eq!(h.requests(0), 1);
    assert_eq!(h.traffic.cache_of(CacheEvent::Hit), 3);
}

#[test]
fn clients_asking_while_the_question_is_under_way_park_and_each_gets_its_own_copy() {
    let mut h = Harness::new(1);
    let first = query(101, "a.example");
    let mut exchange = h.start(&first, 1, 0.0);
    for client in 2..=5u16 {
        let (begin, _) = h.ask(&query(100 + client, ["a.example", "A.EXAMPLE"][usize::from(client % 2)]), client, 0.1);
        assert!(matches!(begin, Begin::Parked), "client {client}: {begin:?}");
    }
    let (begin, _) = h.ask_over(&query(200, "a.example"), Transport::Tcp, 9, 0.1);
    assert!(matches!(begin, Begin::Ask(_)), "a TCP client never waits for a UDP answer");
    let mut reply = answer(exchange.as_ref().unwrap().query(), rcode::NOERROR, 60, 1);
    // The upstream's COOKIE answers the first client's: the parked ones must not get it.
    reply.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 12, 0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
    reply[11] = 1;
    assert_eq!(h.feed(&mut exchange, Event::Reply(&reply), 0.5), Did::Done);
    let sent = h.sent();
    assert_eq!(sent.len(), 5, "the client and the four parked ones");
    assert_eq!(h.requests(0), 1, "one upstream query");
    for (i, (listener, client, bytes)) in sent.iter().enumerate() {
        let port = client.port() - 40000;
        assert_eq!(*listener, usize::from(port % 2), "answered from the listen address it asked");
        assert_eq!(wire::id(bytes), 100 + port, "answer {i}: the client's ID");
        let case = if port == 1 || port % 2 == 0 { b"\x01a" } else { b"\x01A" };
        assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + 2], case, "answer {i}: the client's case");
        let cookie = bytes.windows(2).any(|w| w == [0, 10]);
        assert_eq!(cookie, i == 0, "answer {i}: only the first client gets the upstream's cookie");
    }
    assert_eq!(h.traffic.cache_of(CacheEvent::Coalesced), 4);
    assert_eq!(h.forwarder.in_flight().0, 1, "only the TCP query still waits");
}

#[test]
fn a_refresh_answered_within_1_8_s_gives_its_client_the_fresh_answer() {
    // Expired: client 2 leads the refresh; the next one gets the stale answer at once.
    let (mut h, packet, mut refresh) = refreshing(1, 11.0);
    let stale = h.answered(&query(3, "a.example"), 3, 11.1, Path::Cache);
    assert_eq!(ttl_and_address(&stale), (STALE_TTL, 1));
    let fresh = answer(refresh.as_ref().unwrap().query(), rcode::NOERROR, 10, 2);
    assert_eq!(h.feed(&mut refresh, Event::Reply(&fresh), 11.2), Did::Done);
    assert_eq!(h.sent().len(), 1, "the refresh's own client");
    assert_eq!(ttl_and_address(&h.answered(&packet, 4, 11.3, Path::Cache)), (10, 2));
}

#[test]
fn a_client_with_an_expired_answer_gets_it_stale_at_1_8_s_and_the_refresh_goes_on() {
    let (mut h, packet, mut exchange) = refreshing(1, 11.0);
    assert_eq!(exchange.as_ref().unwrap().next_deadline(), Some(h.at(12.8)));
    assert_eq!(h.feed(&mut exchange, Event::Tick, 12.79), Did::Wait);
    assert!(h.sent().is_empty(), "not before 1.8 s");
    assert_eq!(h.feed(&mut exchange, Event::Tick, 12.8), Did::Wait);
    let stale = h.sent();
    assert_eq!(stale.len(), 1);
    assert_eq!(ttl_and_address(&stale[0].2), (STALE_TTL, 1));
    assert_eq!(exchange.as_ref().unwrap().next_deadline(), Some(h.at(13.0)), "served once: the try's deadline is left");
    let fresh = answer(exchange.as_ref().unwrap().query(), rcode::NOERROR, 10, 2);
    assert_eq!(h.feed(&mut exchange, Event::Reply(&fresh), 12.9), Did::Done);
    assert!(h.sent().is_empty(), "the client was answered already");
    assert_eq!(ttl_and_address(&h.answered(&packet, 3, 14.0, Path::Cache)), (9, 2), "the refreshed answer");
}

#[test]
fn a_client_whose_stale_answer_was_flushed_waits_for_the_upstreams_after_all() {
    let (mut h, _, mut exchange) = refreshing(1, 11.0);
    assert_eq!(h.forwarder.flush(None), 1);
    assert_eq!(h.feed(&mut exchange, Event::Tick, 12.8), Did::Wait);
    assert!(h.sent().is_empty(), "nothing to serve");
    assert_eq!(exchange.as_ref().unwrap().next_deadline(), Some(h.at(13.0)), "no stale answer is due any more");
    let fresh = answer(exchange.as_ref().unwrap().query(), rcode::NOERROR, 10, 2);
    assert_eq!(h.feed(&mut exchange, Event::Reply(&fresh), 12.9), Did::Done);
    assert_eq!(ttl_and_address(&h.sent()[0].2), (10, 2), "the upstream's answer");
}

#[test]
fn while_a_refresh_is_under_way_other_clients_get_the_stale_answer_at_once() {
    let (mut h, packet, _refresh) = refreshing(1, 11.0);
    for client in 3..10 {
        let stale = h.answered(&packet, client, 11.5, Path::Cache);
        assert_eq!(ttl_and_address(&stale), (STALE_TTL, 1));
    }
    assert_eq!(h.requests(0), 2, "one refresh");
}

#[test]
fn after_a_failed_refresh_stale_answers_are_served_without_asking_for_30_s() {
    let (mut h, packet, mut exchange) = refreshing(1, 11.0);
    assert_eq!(h.feed(&mut exchange, Event::Failed, 11.5), Did::Done);
    let sent = h.sent();
    assert_eq!(ttl_and_address(&sent[0].2), (STALE_TTL, 1), "the failed refresh's client gets the stale answer");
    let failed_at = 11.5;
    for at in [failed_at + 1.0, failed_at + HOLD_OFF_SECONDS - 0.01] {
        h.answered(&packet, 3, at, Path::Cache);
    }
    h.start(&packet, 4, failed_at + HOLD_OFF_SECONDS);
    assert_eq!(h.requests(0), 3, "asked again only after 30 s");
}

#[test]
fn a_never_seen_name_gets_servfail_for_its_client_and_every_parked_one_and_it_is_kept_5_s() {
    let mut h = Harness::new(1);
    let packet = query(1, "never.example");
    let mut exchange = h.start(&packet, 1, 0.0);
    let (begin, _) = h.ask(&query(2, "NEVER.example"), 2, 0.5);
    assert!(matches!(begin, Begin::Parked));
    assert_eq!(h.tick(&mut exchange), (2.0, Did::Done));
    let sent = h.sent();
    assert_eq!(sent.len(), 2);
    for (_, client, bytes) in &sent {
        assert_eq!(wire::rcode_of(bytes), rcode::SERVFAIL);
        assert_eq!(wire::id(bytes), client.port() - 40000, "each its own ID");
    }
    assert_eq!(&sent[1].2[HEADER_LEN..HEADER_LEN + 2], b"\x05N", "and its own case");
    let cached = h.answered(&packet, 3, 6.9, Path::Cache);
    assert_eq!(wire::rcode_of(&cached), rcode::SERVFAIL, "kept 5 s");
    h.start(&packet, 4, 7.0);
}

#[test]
fn parked_clients_get_the_upstreams_last_refusal_under_their_own_ids() {
    let mut h = Harness::new(1);
    let mut exchange = h.start(&query(1, "a.example"), 1, 0.0);
    assert!(matches!(h.ask(&query(2, "A.example"), 2, 0.1).0, Begin::Parked));
    let refused = answer(exchange.as_ref().unwrap().query(), rcode::REFUSED, 0, 0);
    assert_eq!(h.feed(&mut exchange, Event::Reply(&refused), 0.2), Did::Done);
    let sent = h.sent();
    assert_eq!(sent.len(), 2);
    for (i, (_, client, bytes)) in sent.iter().enumerate() {
        assert_eq!((wire::rcode_of(bytes), wire::id(bytes)), (rcode::REFUSED, client.port() - 40000), "client {i}");
    }
    assert_eq!(wire::rcode_of(&h.answered(&query(3, "a.example"), 3, 1.0, Path::Cache)), rcode::REFUSED, "kept 5 s");
}

#[test]
fn a_popular_answer_is_prefetched_once_when_less_than_10_percent_of_its_ttl_is_left() {
    let mut h = Harness::new(1);
    let packet = query(1, "a.example");
    cache_answer(&mut h, &packet, 100, 1, 0.0);
    for at in [1.0, 2.0, 89.0] {
        h.answered(&packet, 2, at, Path::Cache);
    }
    let (begin, hit) = h.ask(&packet, 3, 91.0);
    let Begin::AnsweredAndRefresh(Path::Cache, prefetch) = begin else { panic!("{begin:?}") };
    assert_eq!(ttl_and_address(&hit).0, 9, "the client got its hit");
    let mut prefetch = Some(prefetch);
    assert_eq!(h.feed(&mut prefetch, Event::Start, 91.0), Did::Send(0));
    assert_eq!(prefetch.as_ref().unwrap().next_deadline(), Some(h.at(93.0)), "no client, no client timer");
    h.answered(&packet, 4, 92.0, Path::Cache);
    let fresh = answer(prefetch.as_ref().unwrap().query(), rcode::NOERROR, 100, 2);
    assert_eq!(h.feed(&mut prefetch, Event::Reply(&fresh), 92.5), Did::Done);
    assert!(h.sent().is_empty(), "a prefetch answers nobody");
    assert_eq!(ttl_and_address(&h.answered(&packet, 5, 101.0, Path::Cache)).1, 2, "never expired");
    assert_eq!(h.requests(0), 2);
    assert_eq!(h.traffic.cache_of(CacheEvent::Prefetch), 1);
}

#[test]
fn over_capacity_a_held_stale_answer_beats_refused() {
    let mut h = Harness::with(1, CachePolicy::default(), 1);
    let packet = query(1, "a.example");
    cache_answer(&mut h, &packet, 10, 1, 0.0);
    let _busy = h.start(&query(2, "b.example"), 1, 11.0);
    let stale = h.answered(&packet, 2, 11.0, Path::Cache);
    assert_eq!(ttl_and_address(&stale), (STALE_TTL, 1));
    let refused = h.answered(&query(3, "c.example"), 3, 11.0, Path::Refused);
    assert_eq!(wire::rcode_of(&refused), rcode::REFUSED);
}

#[test]
fn a_failure_never_hides_a_held_answer() {
    let (mut h, packet, mut exchange) = refreshing(1, 20.0);
    let servfail = answer(exchange.as_ref().unwrap().query(), rcode::SERVFAIL, 0, 0);
    assert_eq!(h.feed(&mut exchange, Event::Reply(&servfail), 20.1), Did::Done);
    assert_eq!(ttl_and_address(&h.sent()[0].2), (STALE_TTL, 1), "the stale answer, not the SERVFAIL");
    assert_eq!(ttl_and_address(&h.answered(&packet, 3, 21.0, Path::Cache)), (STALE_TTL, 1));
}

#[test]
fn an_abandoned_exchange_frees_its_question_and_its_clients_places() {
    let mut h = Harness::new(1);
    let packet = query(1, "a.example");
    let exchange = h.start(&packet, 1, 0.0);
    assert!(matches!(h.ask(&packet, 2, 0.1).0, Begin::Parked));
    assert_eq!(h.forwarder.in_flight().0, 2);
    drop(exchange);
    assert_eq!(h.forwarder.in_flight().0, 0, "the parked client's place too");
    h.start(&packet, 3, 0.2);
}

#[test]
fn without_a_cache_every_query_is_its_own_exchange() {
    let mut h = Harness::with(1, CachePolicy { size: 0, ..CachePolicy::default() }, 100);
    let packet = query(1, "a.example");
    let mut first = h.start(&packet, 1, 0.0);
    h.start(&packet, 2, 0.1);
    let reply = answer(first.as_ref().unwrap().query(), rcode::NOERROR, 60, 1);
    assert_eq!(h.feed(&mut first, Event::Reply(&reply), 0.2), Did::Done);
    let relayed = &h.sent()[0].2;
    let mut expected = reply.clone();
    wire::set_id(&mut expected, 1);
    assert_eq!(*relayed, expected, "relayed byte for byte but for the ID");
    h.start(&packet, 3, 0.3);
}
