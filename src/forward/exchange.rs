//! One forwarded query's whole life, decided once for UDP and TCP: what the cache has for it
//! ([`Exchange::begin`]), its tries at the upstreams, when its client gets a stale answer instead,
//! and its end: the answer for its client and for every client parked on it, and what the cache
//! keeps.
//!
//! An [`Exchange`] is a state machine without sockets or a clock of its own: a driver (`udp`,
//! `tcp`) feeds it [`Event`]s with the time they happened, the passing of time included
//! ([`Event::Tick`] once [`Exchange::next_deadline`] is reached), and carries out the
//! [`Command`]s it returns. So UDP and TCP share every rule, and the tests drive it with a fake
//! clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::{Client, Parked, ReplyTo};
use super::concurrency_cap::Permit;
use super::forwarder::Forwarder;
use super::reply::{self, Fate};
use super::upstreams::Upstreams;
use crate::cache::{CLIENT_TIMER, FlightGuard, Found, Key, Landing, shareable};
use crate::dns::Transport;
use crate::dns::wire::{self, Edns, HEADER_LEN, rcode};
use crate::metrics::{CacheEvent, Path, Refusal, Traffic};

/// A query `request::handle` chose to forward, as its driver received it.
#[derive(Debug, Clone, Copy)]
pub struct ClientQuery<'a> {
    packet: &'a [u8],
    question_end: usize,
    edns: Option<Edns>,
    transport: Transport,
    arrived: Instant,
}

impl<'a> ClientQuery<'a> {
    /// `packet`, whose question ends at `question_end`, with its EDNS (as `request::handle`
    /// parsed them), received over `transport` at `arrived`.
    pub fn new(
        packet: &'a [u8],
        question_end: usize,
        edns: Option<Edns>,
        transport: Transport,
        arrived: Instant,
    ) -> Self {
        Self { packet, question_end, edns, transport, arrived }
    }

    pub fn arrived(&self) -> Instant {
        self.arrived
    }
}

/// What [`Exchange::begin`] decided for a client's query.
#[derive(Debug)]
pub enum Begin {
    /// The client's answer is in the output (from the cache, or REFUSED over capacity).
    Answered(Path),
    /// The query waits for the same question's upstream query already under way: whoever drives
    /// that one answers this client too.
    Parked,
    /// Ask the upstreams: the driver runs this exchange, from [`Event::Start`].
    Ask(Exchange),
    /// The client's answer (a fresh cache hit) is in the output, and this exchange refreshes it
    /// in the background (prefetch).
    AnsweredAndRefresh(Path, Exchange),
}

/// What happened to an exchange.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// The driver took the exchange on: its first try.
    Start,
    /// A reply from the try's upstream: over TCP, or over UDP on a socket that has received
    /// nothing suspicious.
    Reply(&'a [u8]),
    /// A UDP reply on a socket that received a datagram matching no query: someone who is not the
    /// upstream knows its port and may have guessed this ID, so only TCP can tell.
    SuspectReply(&'a [u8]),
    /// The try could not be sent, or its upstream cannot take it (ICMP port unreachable, a TCP
    /// connection that cannot be opened or breaks): no reason to wait out the timeout.
    Failed,
    /// The outcome of the TCP recheck asked for: the answer, or `None` when it failed.
    Rechecked(Option<&'a [u8]>),
    /// Time passed: whatever [`Exchange::next_deadline`] announced is due now.
    Tick,
}

/// What the driver does next. After an event, the driver takes commands until there are none.
#[derive(Debug)]
pub enum Command<'b> {
    /// Send [`Exchange::query`] to upstream `i`, with an ID of the driver's choosing
    /// ([`Exchange::assign_id`]). Any try out before is over.
    Send(usize),
    /// Ask upstream `i` the same query over TCP, and report [`Event::Rechecked`]. The UDP try is
    /// over; its reply may still come.
    Recheck(usize),
    /// The reply was not the answer to this query: the try keeps waiting; the datagram counts as
    /// unexpected.
    Ignore,
    /// Send `bytes` to the client at `to`.
    Answer { to: ReplyTo, bytes: &'b [u8] },
    /// The exchange is over: any try out is over, and the driver drops it.
    Done,
}

/// Where exchanges write the answers they give, and count them: one per driver, lent to each
/// exchange with each event.
#[derive(Debug)]
pub struct Output {
    traffic: Arc<Traffic>,
    buf: Vec<u8>,
}

impl Output {
    /// Answers counted into `traffic`.
    pub fn new(traffic: Arc<Traffic>) -> Self {
        Self { traffic, buf: Vec::new() }
    }

    /// The answer just given: the bytes of the last [`Command::Answer`].
    pub fn answer(&self) -> &[u8] {
        &self.buf
    }

    /// Swaps the answer just given (the bytes of the last [`Command::Answer`]) into `buffer`, a
    /// send batch's: it leaves without a copy, and the next answer is written into `buffer`'s
    /// old allocation.
    pub fn swap_answer(&mut self, buffer: &mut Vec<u8>) {
        std::mem::swap(&mut self.buf, buffer);
    }
}

/// One forwarded query on its way through the upstreams.
#[derive(Debug)]
pub struct Exchange {
    /// The client's query as it goes upstream: the current try's ID in it.
    query: Vec<u8>,
    question_end: usize,
    /// The client's EDNS: its buffer size, and what a SERVFAIL echoes.
    edns: Option<Edns>,
    transport: Transport,
    started: Instant,
    /// Who waits for the answer; `None` for a prefetch, and once a stale answer was served.
    client: Option<Client>,
    /// The cache key and the flight this exchange leads, when the answer is cacheable (boxed: a
    /// key is 260 bytes, and the driver keeps up to `--max-concurrent` exchanges).
    flight: Option<Box<(Key, FlightGuard<Parked>)>>,
    /// An expired answer is held for the key: the client gets it at [`CLIENT_TIMER`] or on
    /// failure, whichever comes first, if it is still held then.
    stale_fallback: bool,
    upstreams: Arc<Upstreams>,
    timeout: Duration,
    /// Upstreams tried, as bits.
    tried: u32,
    /// The try out, if any.
    current: Option<Try>,
    /// The last SERVFAIL or REFUSED an upstream sent: the client gets it when no upstream answers.
    last_error: Option<Vec<u8>>,
    /// What the driver is told after the answer it was just given.
    then: Then,
    _permit: Permit,
}

/// One try: an upstream asked, and until when.
#[derive(Debug, Clone, Copy)]
struct Try {
    upstream: usize,
    /// When it times out; `None` while its UDP reply is being checked over TCP (that check has a
    /// timeout of its own).
    deadline: Option<Instant>,
}

/// The commands still owed after an answer.
#[derive(Debug)]
enum Then {
    /// None: the exchange waits for its next event.
    Wait,
    /// A stale answer went out at a tick at this instant; the try's own deadline is checked next.
    Tick(Instant),
    /// The exchange ended: the parked clients still to answer (if any), then [`Command::Done`].
    End(Option<Box<Ending>>),
}

/// What the parked clients of an ended exchange get.
#[derive(Debug)]
struct Ending {
    parked: std::vec::IntoIter<Parked>,
    /// The answer in the form any client of the question may get, or SERVFAIL when `None`.
    shared: Option<Vec<u8>>,
    at: Instant,
}

/// How the upstreams dealt with a query.
#[derive(Debug, Clone, Copy)]
enum Outcome<'a> {
    /// The answer (accepted by `reply::judge`), under our ID.
    Answer(&'a [u8]),
    /// An answer not to be cached: it came over UDP during a spoofing episode of its upstream.
    Uncached(&'a [u8]),
    /// No upstream answered: each timed out or failed ([`Exchange::last_error`] is the last
    /// SERVFAIL or REFUSED one of them sent, if any).
    Failed,
}

impl Exchange {
    /// Decides what the client of `query`, answered at `reply_to`, gets: an answer from the cache
    /// (written into `out`), a place on the same question's exchange under way, REFUSED over
    /// `--max-concurrent`, or an exchange of its own over `upstreams` (those its driver can
    /// reach: a UDP driver has sockets for one list).
    pub fn begin(
        forwarder: &Forwarder,
        query: ClientQuery<'_>,
        reply_to: ReplyTo,
        upstreams: &Arc<Upstreams>,
        traffic: &Traffic,
        out: &mut Vec<u8>,
    ) -> Begin {
        let ClientQuery { packet, question_end, edns, transport, arrived } = query;
        let cache = forwarder.cache();
        let key = cache.as_ref().and_then(|_| Key::of(packet, question_end, edns.as_ref()));
        // What the exchange, if there is one, is made of: whom it answers (no one for a
        // prefetch), its flight, whether an answer is held, its place under the cap, and the path
        // of the answer its client got already.
        let (reply_to, flight, stale_fallback, permit, answered) = match (cache.as_ref(), &key) {
            (Some(cache), Some(key)) => {
                match cache.lookup(key, transport, packet, limit(transport, edns.as_ref()), arrived, out) {
                    Found::Fresh { prefetch } => {
                        traffic.cache(CacheEvent::Hit);
                        traffic.response(Path::Cache, wire::rcode_of(out));
                        let Some((flight, permit)) =
                            prefetch.and_then(|flight| Some((flight, forwarder.try_acquire()?)))
                        else {
                            return Begin::Answered(Path::Cache);
                        };
                        traffic.cache(CacheEvent::Prefetch);
                        (None, Some((key.clone(), flight)), false, permit, Some(Path::Cache))
                    }
                    Found::Stale => {
                        traffic.cache(CacheEvent::Stale);
                        traffic.response(Path::Cache, wire::rcode_of(out));
                        return Begin::Answered(Path::Cache);
                    }
                    Found::Missing(mut missing) => {
                        traffic.cache(CacheEvent::Miss);
                        let Some(permit) = forwarder.try_acquire() else {
                            // Over capacity, a stale answer still beats REFUSED.
                            if missing.holds_stale() && missing.write_stale(packet, arrived, out) {
                                traffic.cache(CacheEvent::Stale);
                                traffic.response(Path::Cache, wire::rcode_of(out));
                                return Begin::Answered(Path::Cache);
                            }
                            return refuse(packet, question_end, edns.as_ref(), traffic, out);
                        };
                        if let Some(parked) = missing.parked(transport) {
                            parked.push(Parked::new(reply_to, packet, edns, arrived, permit));
                            traffic.cache(CacheEvent::Coalesced);
                            return Begin::Parked;
                        }
                        let stale_fallback = missing.holds_stale();
                        (Some(reply_to), Some((key.clone(), missing.lead(transport))), stale_fallback, permit, None)
                    }
                }
            }
            // Not cacheable: every query its own exchange.
            _ => match forwarder.try_acquire() {
                Some(permit) => (Some(reply_to), None, false, permit, None),
                None => return refuse(packet, question_end, edns.as_ref(), traffic, out),
            },
        };
        let client = reply_to.map(|reply_to| Client::new(reply_to, wire::id(packet)));
        let exchange = Exchange::new(query, client, flight, stale_fallback, permit, upstreams, forwarder.timeout());
        match answered {
            None => Begin::Ask(exchange),
            Some(path) => Begin::AnsweredAndRefresh(path, exchange),
        }
    }

    #[inline(always)]
    fn new(
        query: ClientQuery<'_>,
        client: Option<Client>,
        flight: Option<(Key, FlightGuard<Parked>)>,
        stale_fallback: bool,
        permit: Permit,
        upstreams: &Arc<Upstreams>,
        timeout: Duration,
    ) -> Self {
        Exchange {
            query: query.packet.to_vec(),
            question_end: query.question_end,
            edns: query.edns,
            transport: query.transport,
            started: query.arrived,
            client,
            flight: flight.map(Box::new),
            stale_fallback,
            upstreams: upstreams.clone(),
            timeout,
            tried: 0,
            current: None,
            last_error: None,
            then: Then::Wait,
            _permit: permit,
        }
    }

    /// What `event`, at `now`, leads to: the first command, then those [`Exchange::poll`] gives.
    /// Answers are written into `out`.
    pub fn on<'o>(&mut self, event: Event<'_>, now: Instant, out: &'o mut Output) -> Option<Command<'o>> {
        match event {
            Event::Start => self.next_try(now, out),
            Event::Tick => {
                if self.stale_due().is_some_and(|due| due <= now)
                    && let Some(to) = self.serve_stale(now, out)
                {
                    self.then = Then::Tick(now);
                    return Some(Command::Answer { to, bytes: &out.buf });
                }
                self.tick(now, out)
            }
            Event::Reply(reply) => self.judge(reply, now, out),
            Event::SuspectReply(reply) => {
                let Some(Try { upstream, deadline: Some(_) }) = self.current else { return None };
                match reply::judge(&self.query, self.question_end, reply) {
                    Fate::Ignore => Some(Command::Ignore),
                    Fate::MoveOn | Fate::Accept => {
                        self.upstreams.record_recheck(upstream);
                        self.current = Some(Try { upstream, deadline: None });
                        Some(Command::Recheck(upstream))
                    }
                }
            }
            Event::Failed => {
                let Try { upstream, .. } = self.current?;
                self.failed(upstream, now, out)
            }
            Event::Rechecked(answer) => {
                let Some(Try { upstream, deadline: None }) = self.current else { return None };
                let Some(answer) = answer else { return self.failed(upstream, now, out) };
                match reply::judge(&self.query, self.question_end, answer) {
                    // Over TCP: cacheable, whatever happens over UDP meanwhile.
                    Fate::Accept => {
                        self.upstreams.record_success(upstream);
                        self.end(Outcome::Answer(answer), now, out)
                    }
                    Fate::MoveOn => self.moved_on(upstream, answer, now, out),
                    Fate::Ignore => self.failed(upstream, now, out),
                }
            }
        }
    }

    /// The next command owed after an answer, if any.
    pub fn poll<'o>(&mut self, out: &'o mut Output) -> Option<Command<'o>> {
        match std::mem::replace(&mut self.then, Then::Wait) {
            Then::Wait => None,
            Then::Tick(now) => self.tick(now, out),
            Then::End(None) => Some(Command::Done),
            Then::End(Some(mut ending)) => {
                let Some(parked) = ending.parked.next() else { return Some(Command::Done) };
                let limit = limit(parked.transport(), parked.edns());
                let buf = &mut out.buf;
                match &ending.shared {
                    Some(shared) => write_shared(shared, parked.query(), self.question_end, parked.edns(), limit, buf),
                    None => servfail(parked.query(), self.question_end, parked.edns(), buf),
                }
                answered(&out.traffic, Path::Forwarded, buf, ending.at.saturating_duration_since(parked.arrived()));
                self.then = Then::End(Some(ending));
                Some(Command::Answer { to: parked.into_reply_to(), bytes: &out.buf })
            }
        }
    }

    /// When the exchange next needs an [`Event::Tick`]: its try times out, or its client is due
    /// a stale answer. `None` while it waits for nothing but a reply (or a TCP recheck).
    pub fn next_deadline(&self) -> Option<Instant> {
        let timeout = self.current.and_then(|t| t.deadline);
        match (timeout, self.stale_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The query to send, with the ID of the current try.
    pub fn query(&self) -> &[u8] {
        &self.query
    }

    /// The current try leaves with `id`: random, and unique among the tries out on its socket
    /// (which the driver knows). Only a reply with that ID can be its answer.
    pub fn assign_id(&mut self, id: u16) {
        wire::set_id(&mut self.query, id);
    }

    /// The upstream list the tries go to.
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// When the client is due its stale answer (RFC 8767's client response timer), if it is to
    /// get one.
    fn stale_due(&self) -> Option<Instant> {
        (self.stale_fallback && self.client.is_some()).then_some(self.started + CLIENT_TIMER)
    }

    fn judge<'o>(&mut self, reply: &[u8], now: Instant, out: &'o mut Output) -> Option<Command<'o>> {
        let Some(Try { upstream, deadline: Some(_) }) = self.current else { return None };
        match reply::judge(&self.query, self.question_end, reply) {
            // Over UDP a forger may be guessing (RFC 5452 section 9.1): keep waiting. Over TCP
            // the connection carries no other reply: the try failed.
            Fate::Ignore if self.transport == Transport::Udp => Some(Command::Ignore),
            Fate::Ignore => self.failed(upstream, now, out),
            Fate::MoveOn => self.moved_on(upstream, reply, now, out),
            Fate::Accept => {
                self.upstreams.record_success(upstream);
                if self.transport == Transport::Udp && self.upstreams.is_defending(upstream, now) {
                    self.end(Outcome::Uncached(reply), now, out)
                } else {
                    self.end(Outcome::Answer(reply), now, out)
                }
            }
        }
    }

    /// The try times out at `now` if its deadline has come.
    fn tick<'o>(&mut self, now: Instant, out: &'o mut Output) -> Option<Command<'o>> {
        match self.current {
            Some(Try { upstream, deadline: Some(deadline) }) if deadline <= now => {
                self.upstreams.record_timeout(upstream, now);
                self.next_try(now, out)
            }
            _ => None,
        }
    }

    fn failed<'o>(&mut self, upstream: usize, now: Instant, out: &'o mut Output) -> Option<Command<'o>> {
        self.upstreams.record_failure(upstream, now);
        self.next_try(now, out)
    }

    /// The upstream said SERVFAIL or REFUSED: the next one gets the query; the client gets
    /// `reply` if none answers.
    fn moved_on<'o>(
        &mut self,
        upstream: usize,
        reply: &[u8],
        now: Instant,
        out: &'o mut Output,
    ) -> Option<Command<'o>> {
        self.last_error = Some(reply.to_vec());
        self.failed(upstream, now, out)
    }

    /// The next upstream not tried yet, or the end when none is left.
    fn next_try<'o>(&mut self, now: Instant, out: &'o mut Output) -> Option<Command<'o>> {
        match self.upstreams.next(self.tried, now) {
            Some(upstream) => {
                self.tried |= 1 << upstream;
                self.current = Some(Try { upstream, deadline: Some(now + self.timeout) });
                self.upstreams.record_request(upstream, self.transport);
                Some(Command::Send(upstream))
            }
            None => self.end(Outcome::Failed, now, out),
        }
    }

    /// The client has waited [`CLIENT_TIMER`] at `now` for a query whose expired answer is held:
    /// it gets that answer now (RFC 8767), and the exchange goes on to refresh the cache. A
    /// client whose answer is gone meanwhile (evicted, flushed) waits for the upstreams after all.
    fn serve_stale(&mut self, now: Instant, out: &mut Output) -> Option<ReplyTo> {
        let id = self.client.as_ref()?.id();
        if !self.write_stale(id, now, &mut out.buf) {
            return None;
        }
        let client = self.client.take()?;
        out.traffic.cache(CacheEvent::Stale);
        answered(&out.traffic, Path::Cache, &out.buf, now.saturating_duration_since(self.started));
        Some(client.into_reply_to())
    }

    /// Writes the expired answer held for the key for client `id` into `buf`, and marks its
    /// refresh failed; false when none is held (any more). Either way the fallback is spent.
    fn write_stale(&mut self, id: u16, now: Instant, buf: &mut Vec<u8>) -> bool {
        if !std::mem::take(&mut self.stale_fallback) {
            return false;
        }
        let Some((key, flight)) = self.flight.as_deref() else { return false };
        if !flight.cache().write_stale(key, &self.query, now, buf) {
            return false;
        }
        wire::set_id(buf, id);
        true
    }

    /// The end, at `now`: the client's answer (its own, stale, the last error or SERVFAIL), the
    /// flight landed in the cache, and the parked clients' answers owed.
    fn end<'o>(&mut self, outcome: Outcome<'_>, now: Instant, out: &'o mut Output) -> Option<Command<'o>> {
        self.current = None;
        let to = self.client.take().map(|client| {
            self.write_answer(&client, outcome, now, out);
            client.into_reply_to()
        });
        let mut ending = None;
        if let Some(flight) = self.flight.take() {
            let (key, guard) = *flight;
            let question_end = self.question_end;
            // What the cache keeps of a failure: the last SERVFAIL or REFUSED an upstream sent
            // (which parked clients get too), or our SERVFAIL (parked clients get their own).
            let error = self.last_error.as_deref().map(|error| shareable(error, question_end));
            let ours = (matches!(outcome, Outcome::Failed) && error.is_none()).then(|| {
                let mut ours = Vec::new();
                servfail(&self.query, question_end, self.edns.as_ref(), &mut ours);
                ours
            });
            let landing = match outcome {
                Outcome::Answer(reply) => Landing::Answer { reply, question_end },
                Outcome::Uncached(_) => Landing::Uncached,
                Outcome::Failed => {
                    let servfail = error.as_deref().or(ours.as_deref()).unwrap_or_default();
                    Landing::Failed { servfail, question_end }
                }
            };
            let parked = guard.cache().clone().land(guard, &key, landing, now);
            if !parked.is_empty() {
                let shared = match outcome {
                    Outcome::Answer(reply) | Outcome::Uncached(reply) => Some(shareable(reply, question_end)),
                    Outcome::Failed => error,
                };
                ending = Some(Box::new(Ending { parked: parked.into_iter(), shared, at: now }));
            }
        }
        self.then = Then::End(ending);
        match to {
            Some(to) => Some(Command::Answer { to, bytes: &out.buf }),
            None => self.poll(out),
        }
    }

    /// Writes the answer of the client whose query started the exchange: the upstream's answer
    /// relayed, or on failure the stale answer held, the last error an upstream sent, or SERVFAIL.
    fn write_answer(&mut self, client: &Client, outcome: Outcome<'_>, now: Instant, out: &mut Output) {
        let waited = now.saturating_duration_since(self.started);
        let limit = limit(self.transport, self.edns.as_ref());
        let buf = &mut out.buf;
        let reply = match outcome {
            Outcome::Answer(reply) | Outcome::Uncached(reply) => reply,
            Outcome::Failed if self.write_stale(client.id(), now, buf) => {
                out.traffic.cache(CacheEvent::Stale);
                return answered(&out.traffic, Path::Cache, buf, waited);
            }
            Outcome::Failed => match &self.last_error {
                Some(error) => error,
                None => {
                    servfail(&self.query, self.question_end, self.edns.as_ref(), buf);
                    wire::set_id(buf, client.id());
                    return answered(&out.traffic, Path::Forwarded, buf, waited);
                }
            },
        };
        relay(reply, client.id(), self.question_end, self.edns.as_ref(), limit, buf);
        answered(&out.traffic, Path::Forwarded, buf, waited);
    }
}

/// REFUSED at once: `--max-concurrent` clients are waiting for the upstreams already.
fn refuse(packet: &[u8], question_end: usize, edns: Option<&Edns>, traffic: &Traffic, out: &mut Vec<u8>) -> Begin {
    wire::write_empty_answer(packet, Some(question_end), rcode::REFUSED, edns, false, out);
    traffic.refused(Refusal::OverCapacity);
    Begin::Answered(Path::Refused)
}

/// Our SERVFAIL for `query`: no upstream answered.
fn servfail(query: &[u8], question_end: usize, edns: Option<&Edns>, out: &mut Vec<u8>) {
    wire::write_empty_answer(query, Some(question_end), rcode::SERVFAIL, edns, false, out);
}

fn answered(traffic: &Traffic, path: Path, answer: &[u8], waited: Duration) {
    traffic.response(path, wire::rcode_of(answer));
    traffic.latency(path, waited, 1);
}

/// The largest answer a client takes: over UDP its advertised buffer (512 without EDNS), over TCP
/// any message.
fn limit(transport: Transport, edns: Option<&Edns>) -> usize {
    match transport {
        Transport::Udp => wire::relay_udp_limit(edns),
        Transport::Tcp => usize::from(u16::MAX),
    }
}

/// Relays an upstream's `reply` to client `id`: as it is but for the ID, or cut to header and
/// question with TC when it exceeds the client's `limit`, so that it retries over TCP.
fn relay(reply: &[u8], id: u16, question_end: usize, edns: Option<&Edns>, limit: usize, out: &mut Vec<u8>) {
    if reply.len() <= limit {
        out.clear();
        out.extend_from_slice(reply);
    } else {
        wire::write_truncated(reply, question_end, edns, out);
    }
    wire::set_id(out, id);
}

/// Writes `shared` (an answer in the form any client of the question may get) for a parked
/// client's `query`: its ID and its question's letter case, cut to its buffer.
fn write_shared(
    shared: &[u8],
    query: &[u8],
    question_end: usize,
    edns: Option<&Edns>,
    limit: usize,
    out: &mut Vec<u8>,
) {
    relay(shared, wire::id(query), question_end, edns, limit, out);
    out[HEADER_LEN..question_end].copy_from_slice(&query[HEADER_LEN..question_end]);
}

#[cfg(test)]
mod tests;
