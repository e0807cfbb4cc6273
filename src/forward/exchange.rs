//! One forwarded query's life with the upstreams: which upstream each try goes to, what each
//! reply, timeout or failure means, when the client's stale answer is due, and how it ends.
//!
//! A state machine without sockets or clocks of its own: a driver (`udp`, `tcp`) feeds it
//! [`Event`]s with the time they happened and carries out the [`Command`] each returns, so that
//! UDP and TCP share every rule, and tests drive it with a fake clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::ReplyTo;
use super::in_flight::Permit;
use super::upstreams::Upstreams;
use super::verdict::{self, Verdict};
use crate::cache::{CLIENT_TIMER, Cache, FlightGuard, Key};
use crate::dns::Transport;
use crate::dns::wire::{self, Edns};

use super::client::Parked;

/// What happened to the current try.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A reply from the try's upstream: over TCP, or over UDP on a socket that has received
    /// nothing suspicious.
    Reply(&'a [u8]),
    /// A UDP reply on a socket that received a datagram matching no query: someone who is not the
    /// upstream knows its port and may have guessed this ID, so only TCP can tell.
    SuspectReply(&'a [u8]),
    /// The try's deadline passed without an answer.
    Timeout,
    /// The try could not be sent, or the upstream refused it (ICMP port unreachable, a TCP
    /// connection refused or broken): no reason to wait out the timeout.
    Failed,
    /// The outcome of the TCP recheck asked for: the answer, or `None` when it failed.
    Rechecked(Option<&'a [u8]>),
}

/// What the driver does next.
#[derive(Debug, Clone, Copy)]
pub enum Command<'a> {
    /// Send [`Exchange::query`] to upstream `i` (with a fresh ID, see [`Exchange::set_id`]); the
    /// try times out at [`Exchange::deadline`].
    Send(usize),
    /// Ask upstream `i` the same query over TCP, and report [`Event::Rechecked`].
    Recheck(usize),
    /// The UDP reply is not the answer to this query: keep waiting; it counts as unexpected.
    Ignore,
    /// The exchange is over: hand it to `Forwarder::finish` with this outcome.
    Finish(Outcome<'a>),
}

/// How the upstreams dealt with a query.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The answer (accepted by `verdict::judge`), under our ID.
    Answer(&'a [u8]),
    /// An answer not to be cached: it came over UDP during a spoofing episode of its upstream.
    Uncached(&'a [u8]),
    /// No upstream answered: each timed out or failed ([`Exchange::last_refusal`] is the last
    /// SERVFAIL or REFUSED one of them sent, if any).
    Failed,
}

/// The client whose query started the exchange.
#[derive(Debug)]
pub struct Client {
    pub reply_to: ReplyTo,
    pub id: u16,
}

/// One forwarded query on its way through the upstreams.
#[derive(Debug)]
pub struct Exchange {
    /// The client's query as it goes upstream: our ID in it.
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
    /// An expired answer is held for the key: the client gets it at [`CLIENT_TIMER`] or on failure.
    stale_fallback: bool,
    upstreams: Arc<Upstreams>,
    timeout: Duration,
    /// Upstreams tried, as bits.
    tried: u32,
    /// The upstream of the current try, and when it times out.
    current: Option<(usize, Instant)>,
    /// The last SERVFAIL or REFUSED an upstream sent.
    last_refusal: Option<Vec<u8>>,
    _permit: Permit,
}

/// What an exchange starts from: the client's query and what the forwarder decided for it.
#[derive(Debug)]
pub struct Start<'a> {
    pub packet: &'a [u8],
    pub question_end: usize,
    pub edns: Option<Edns>,
    pub transport: Transport,
    pub started: Instant,
    pub client: Option<Client>,
    pub flight: Option<(Key, FlightGuard<Parked>)>,
    pub stale_fallback: bool,
    pub permit: Permit,
}

impl Exchange {
    /// An exchange for `start` over `upstreams`, each try lasting `timeout`.
    pub fn new(start: Start<'_>, upstreams: Arc<Upstreams>, timeout: Duration) -> Self {
        Self {
            query: start.packet.to_vec(),
            question_end: start.question_end,
            edns: start.edns,
            transport: start.transport,
            started: start.started,
            client: start.client,
            flight: start.flight.map(Box::new),
            stale_fallback: start.stale_fallback,
            upstreams,
            timeout,
            tried: 0,
            current: None,
            last_refusal: None,
            _permit: start.permit,
        }
    }

    /// The first try.
    pub fn start(&mut self, now: Instant) -> Command<'static> {
        self.next_try(now)
    }

    /// What `event`, at `now`, means for the current try.
    pub fn on<'a>(&mut self, event: Event<'a>, now: Instant) -> Command<'a> {
        let Some((upstream, _)) = self.current else { return Command::Ignore };
        let upstreams = self.upstreams.clone();
        match event {
            Event::Reply(reply) => match verdict::judge(&self.query, self.question_end, reply) {
                // Over UDP a forger may be guessing (RFC 5452 section 9.1): keep waiting. Over
                // TCP the connection carries no other reply: the try failed.
                Verdict::Ignore if self.transport == Transport::Udp => Command::Ignore,
                Verdict::Ignore => self.failed(upstream, now),
                Verdict::MoveOn => self.refused(upstream, reply, now),
                Verdict::Accept => {
                    upstreams.record_success(upstream);
                    if self.transport == Transport::Udp && upstreams.is_defending(upstream, now) {
                        Command::Finish(Outcome::Uncached(reply))
                    } else {
                        Command::Finish(Outcome::Answer(reply))
                    }
                }
            },
            Event::SuspectReply(reply) => match verdict::judge(&self.query, self.question_end, reply) {
                Verdict::Ignore => Command::Ignore,
                Verdict::MoveOn | Verdict::Accept => {
                    upstreams.record_recheck(upstream);
                    Command::Recheck(upstream)
                }
            },
            Event::Timeout => {
                upstreams.record_timeout(upstream, now);
                self.next_try(now)
            }
            Event::Failed => self.failed(upstream, now),
            Event::Rechecked(Some(answer)) => match verdict::judge(&self.query, self.question_end, answer) {
                // Over TCP: cacheable, whatever happens over UDP meanwhile.
                Verdict::Accept => {
                    upstreams.record_success(upstream);
                    Command::Finish(Outcome::Answer(answer))
                }
                Verdict::MoveOn => self.refused(upstream, answer, now),
                Verdict::Ignore => self.failed(upstream, now),
            },
            Event::Rechecked(None) => self.failed(upstream, now),
        }
    }

    fn failed(&mut self, upstream: usize, now: Instant) -> Command<'static> {
        self.upstreams.record_failure(upstream, now);
        self.next_try(now)
    }

    /// The upstream said SERVFAIL or REFUSED: the next one gets the query; the client gets
    /// `reply` if none answers.
    fn refused(&mut self, upstream: usize, reply: &[u8], now: Instant) -> Command<'static> {
        self.last_refusal = Some(reply.to_vec());
        self.failed(upstream, now)
    }

    /// The next upstream not tried yet, or the end when none is left.
    fn next_try(&mut self, now: Instant) -> Command<'static> {
        match self.upstreams.next(self.tried, now) {
            Some(upstream) => {
                self.tried |= 1 << upstream;
                self.current = Some((upstream, now + self.timeout));
                self.upstreams.record_request(upstream, self.transport);
                Command::Send(upstream)
            }
            None => {
                self.current = None;
                Command::Finish(Outcome::Failed)
            }
        }
    }

    /// The upstream list the tries go to.
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// The query to send, with the ID of the current try.
    pub fn query(&self) -> &[u8] {
        &self.query
    }

    /// Sets the ID the current try goes out with (random, and unique on its socket).
    pub fn set_id(&mut self, id: u16) {
        wire::set_id(&mut self.query, id);
    }

    /// When the current try times out.
    pub fn deadline(&self) -> Option<Instant> {
        self.current.map(|(_, deadline)| deadline)
    }

    /// When the client is due its stale answer (RFC 8767's client response timer), if it is to
    /// get one.
    pub fn stale_due(&self) -> Option<Instant> {
        (self.stale_fallback && self.client.is_some()).then_some(self.started + CLIENT_TIMER)
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    pub fn question_end(&self) -> usize {
        self.question_end
    }

    pub fn edns(&self) -> Option<&Edns> {
        self.edns.as_ref()
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn last_refusal(&self) -> Option<&[u8]> {
        self.last_refusal.as_deref()
    }

    pub fn stale_fallback(&self) -> bool {
        self.stale_fallback
    }

    /// The client stops waiting (it got a stale answer), or gets none after all (the expired
    /// answer is gone): either way no stale answer is due any more.
    pub fn end_stale_fallback(&mut self) {
        self.stale_fallback = false;
    }

    pub fn take_client(&mut self) -> Option<Client> {
        self.client.take()
    }

    pub fn put_client(&mut self, client: Client) {
        self.client = Some(client);
    }

    /// The cache key and flight, for the answer's way into the cache.
    pub fn take_flight(&mut self) -> Option<(Key, FlightGuard<Parked>)> {
        self.flight.take().map(|flight| *flight)
    }

    pub fn key(&self) -> Option<&Key> {
        self.flight.as_deref().map(|(key, _)| key)
    }

    /// The cache the flight is in, for a stale answer.
    pub fn cache(&self) -> Option<&Arc<Cache<Parked>>> {
        self.flight.as_deref().map(|(_, flight)| flight.cache())
    }
}

#[cfg(test)]
mod tests;
