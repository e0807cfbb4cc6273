//! What the clients of a forwarded query see, decided once for UDP and TCP: an answer from the
//! cache, a place on the same question's upstream query already under way, REFUSED over
//! `--max-concurrent`, or a new [`Exchange`]; then, when the exchange ends, the answer (relayed,
//! cut to the client's buffer, or stale) or SERVFAIL for every client waiting, what the cache
//! keeps, and the metrics of each.
//!
//! The [`Forwarder`] is one for the process. A reload replaces its upstream list or its cache
//! through its methods; exchanges under way finish with the list and the cache they started with.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};

use super::client::{self, Parked, ReplyTo, UdpAnswers};
use super::exchange::{Client, Exchange, Outcome, Start};
use super::in_flight::InFlight;
use super::upstreams::Upstreams;
use crate::cache::{Cache, CachePolicy, Found, Key, Landing, shareable};
use crate::dns::Transport;
use crate::dns::wire::{self, Edns, HEADER_LEN, rcode};
use crate::metrics::{CacheEvent, ForwardingGauges, Path, Refusal, Traffic};

/// A query `request::handle` chose to forward, as its driver received it.
#[derive(Debug, Clone, Copy)]
pub struct ClientQuery<'a> {
    pub packet: &'a [u8],
    pub question_end: usize,
    pub edns: Option<Edns>,
    pub transport: Transport,
    pub arrived: Instant,
}

/// What [`Forwarder::begin`] decided.
#[derive(Debug)]
pub enum Begin {
    /// The client's answer is in the output (from the cache, or REFUSED over capacity).
    Answered(Path),
    /// The query waits for the same question's upstream query already under way: whoever drives
    /// that one answers this client too.
    Parked,
    /// Ask the upstreams: the driver runs this exchange.
    Ask(Exchange),
    /// The client's answer (a fresh cache hit) is in the output, and this exchange refreshes it
    /// in the background (prefetch).
    AnsweredAndRefresh(Path, Exchange),
}

/// Forwarding for the whole process.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: ArcSwap<Upstreams>,
    /// `None` with `--cache-size 0`.
    cache: ArcSwapOption<Cache<Parked>>,
    in_flight: Arc<InFlight>,
    /// How long one upstream gets to answer before the next is tried.
    timeout: Duration,
    /// UDP workers: the cache's shard count follows them.
    workers: usize,
    /// Evictions of every cache so far: a reload's new cache goes on counting.
    evictions: Arc<AtomicU64>,
}

impl Forwarder {
    pub fn new(
        upstreams: Arc<Upstreams>,
        policy: CachePolicy,
        max_concurrent: usize,
        timeout: Duration,
        workers: usize,
    ) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        Self {
            upstreams: ArcSwap::new(upstreams),
            cache: ArcSwapOption::new(new_cache(policy, workers, &evictions)),
            in_flight: InFlight::new(max_concurrent),
            timeout,
            workers,
            evictions,
        }
    }

    /// The upstream list in effect.
    pub fn upstreams(&self) -> Arc<Upstreams> {
        self.upstreams.load_full()
    }

    /// Sends new queries to `upstreams` from now on, with an empty cache: its answers came from
    /// the old list. Queries under way finish with the old list.
    pub fn replace_upstreams(&self, upstreams: Arc<Upstreams>) {
        self.upstreams.store(upstreams);
        if let Some(cache) = self.cache.load_full() {
            self.replace_cache(*cache.policy());
        }
    }

    /// Starts over with an empty cache under `policy` (no cache when its size is 0); answers of
    /// queries under way land in the cache they started with, and are lost with it.
    pub fn replace_cache(&self, policy: CachePolicy) {
        self.cache.store(new_cache(policy, self.workers, &self.evictions));
    }

    /// Empties the cache, or drops every answer for `name` (lower-cased wire form); returns how
    /// many answers went.
    pub fn flush(&self, name: Option<&[u8]>) -> usize {
        self.cache.load().as_ref().map_or(0, |cache| cache.flush(name))
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long a forwarded query can still take once it has been started: every upstream's try.
    pub fn bound(&self) -> Duration {
        self.timeout * self.upstreams.load().len().max(1) as u32
    }

    /// Decides what the client of `query` gets; `upstreams` are the ones its driver can reach (a
    /// UDP driver has sockets for one list). An answer given at once is written into `out`.
    pub fn begin(
        &self,
        query: ClientQuery<'_>,
        reply_to: ReplyTo,
        upstreams: &Arc<Upstreams>,
        traffic: &Traffic,
        out: &mut Vec<u8>,
    ) -> Begin {
        let ClientQuery { packet, question_end, edns, transport, arrived } = query;
        let client = |reply_to| Some(Client { reply_to, id: wire::id(packet) });
        let exchange = |client, flight, stale_fallback, permit| {
            let start = Start {
                packet,
                question_end,
                edns,
                transport,
                started: arrived,
                client,
                flight,
                stale_fallback,
                permit,
            };
            Exchange::new(start, upstreams.clone(), self.timeout)
        };
        let cache = self.cache.load();
        let cached = cache.as_ref().and_then(|cache| Some((cache, Key::of(packet, question_end, edns.as_ref())?)));
        let Some((cache, key)) = cached else {
            // Not cacheable: every query its own exchange.
            return match self.in_flight.try_acquire() {
                Some(permit) => Begin::Ask(exchange(client(reply_to), None, false, permit)),
                None => refuse(packet, question_end, edns.as_ref(), traffic, out),
            };
        };
        let limit = limit(transport, edns.as_ref());
        let found = cache.lookup(&key, transport, packet, limit, arrived, out);
        match found {
            Found::Fresh { prefetch } => {
                traffic.cache(CacheEvent::Hit);
                traffic.response(Path::Cache, wire::rcode_of(out));
                if let Some(flight) = prefetch
                    && let Some(permit) = self.in_flight.try_acquire()
                {
                    traffic.cache(CacheEvent::Prefetch);
                    return Begin::AnsweredAndRefresh(
                        Path::Cache,
                        exchange(None, Some((key.clone(), flight)), false, permit),
                    );
                }
                Begin::Answered(Path::Cache)
            }
            Found::Stale => {
                traffic.cache(CacheEvent::Stale);
                traffic.response(Path::Cache, wire::rcode_of(out));
                Begin::Answered(Path::Cache)
            }
            Found::Missing(mut missing) => {
                traffic.cache(CacheEvent::Miss);
                let Some(permit) = self.in_flight.try_acquire() else {
                    // Over capacity, a stale answer still beats REFUSED.
                    if missing.stale && missing.write_stale(packet, arrived, out) {
                        traffic.cache(CacheEvent::Stale);
                        traffic.response(Path::Cache, wire::rcode_of(out));
                        return Begin::Answered(Path::Cache);
                    }
                    return refuse(packet, question_end, edns.as_ref(), traffic, out);
                };
                let (reply_to, permit) = if missing.has_flight(transport) {
                    let parked = Parked { reply_to, query: packet.into(), edns, arrived, permit };
                    match missing.park(transport, parked) {
                        Ok(()) => {
                            traffic.cache(CacheEvent::Coalesced);
                            return Begin::Parked;
                        }
                        Err(parked) => (parked.reply_to, parked.permit),
                    }
                } else {
                    (reply_to, permit)
                };
                let stale = missing.stale;
                let flight = missing.lead(transport);
                Begin::Ask(exchange(client(reply_to), Some((key.clone(), flight)), stale, permit))
            }
        }
    }

    /// Ends `exchange` with `outcome`: the cache lands its flight, and its client and every client
    /// parked on it get their answers (UDP ones through `answers`).
    pub fn finish(
        &self,
        mut exchange: Exchange,
        outcome: Outcome<'_>,
        now: Instant,
        traffic: &Traffic,
        answers: &mut impl UdpAnswers,
    ) {
        let question_end = exchange.question_end();
        // What a client gets when no upstream answered, and what the cache keeps of it: the last
        // SERVFAIL or REFUSED an upstream sent, or our SERVFAIL.
        let mut failure = Vec::new();
        if let Outcome::Failed = outcome {
            match exchange.last_refusal() {
                Some(refusal) => failure = shareable(refusal, question_end),
                None => wire::write_empty_answer(
                    exchange.query(),
                    Some(question_end),
                    rcode::SERVFAIL,
                    exchange.edns(),
                    false,
                    &mut failure,
                ),
            }
        }
        if let Some(client) = exchange.take_client() {
            self.answer_client(&exchange, client, outcome, now, traffic, answers);
        }
        let Some((key, flight)) = exchange.take_flight() else { return };
        let landing = match outcome {
            Outcome::Answer(reply) => Landing::Answer { reply, question_end },
            Outcome::Uncached(_) => Landing::Uncached,
            Outcome::Failed => Landing::Failed { servfail: &failure, question_end },
        };
        let cache = flight.cache().clone();
        let parked = cache.land(flight, &key, landing, now);
        if parked.is_empty() {
            return;
        }
        let shared = match outcome {
            Outcome::Answer(reply) | Outcome::Uncached(reply) => shareable(reply, question_end),
            Outcome::Failed => failure,
        };
        let failed = matches!(outcome, Outcome::Failed) && exchange.last_refusal().is_none();
        for client in parked {
            let Parked { reply_to, query, edns, arrived, permit } = client;
            let limit = limit(reply_transport(&reply_to), edns.as_ref());
            client::deliver(reply_to, answers, |out| {
                if failed {
                    wire::write_empty_answer(&query, Some(question_end), rcode::SERVFAIL, edns.as_ref(), false, out);
                } else {
                    write_shared(&shared, &query, question_end, edns.as_ref(), limit, out);
                }
                answered(traffic, Path::Forwarded, out, now.saturating_duration_since(arrived));
            });
            drop(permit);
        }
    }

    /// The answer for the client whose query started `exchange`.
    fn answer_client(
        &self,
        exchange: &Exchange,
        client: Client,
        outcome: Outcome<'_>,
        now: Instant,
        traffic: &Traffic,
        answers: &mut impl UdpAnswers,
    ) {
        let question_end = exchange.question_end();
        let edns = exchange.edns();
        let limit = limit(exchange.transport(), edns);
        let waited = now.saturating_duration_since(exchange.started());
        let reply = match outcome {
            Outcome::Answer(reply) | Outcome::Uncached(reply) => reply,
            Outcome::Failed => {
                if let Some(stale) = stale_answer(exchange, client.id, now) {
                    traffic.cache(CacheEvent::Stale);
                    client::deliver(client.reply_to, answers, |out| {
                        out.clear();
                        out.extend_from_slice(&stale);
                        answered(traffic, Path::Cache, out, waited);
                    });
                    return;
                }
                match exchange.last_refusal() {
                    Some(refusal) => refusal,
                    None => {
                        client::deliver(client.reply_to, answers, |out| {
                            wire::write_empty_answer(
                                exchange.query(),
                                Some(question_end),
                                rcode::SERVFAIL,
                                edns,
                                false,
                                out,
                            );
                            wire::set_id(out, client.id);
                            answered(traffic, Path::Forwarded, out, waited);
                        });
                        return;
                    }
                }
            }
        };
        client::deliver(client.reply_to, answers, |out| {
            relay(reply, client.id, question_end, edns, limit, out);
            answered(traffic, Path::Forwarded, out, waited);
        });
    }

    /// The client of `exchange` has waited [`crate::cache::CLIENT_TIMER`] at `now` for a query
    /// whose expired answer is held: it gets that answer now (RFC 8767), and the exchange goes on
    /// to refresh the cache. A client whose answer is gone meanwhile (evicted, flushed) waits for
    /// the upstreams after all.
    pub fn serve_stale(&self, exchange: &mut Exchange, now: Instant, traffic: &Traffic, answers: &mut impl UdpAnswers) {
        if exchange.stale_due().is_none_or(|due| now < due) {
            return;
        }
        let Some(client) = exchange.take_client() else { return };
        let stale = stale_answer(exchange, client.id, now);
        exchange.end_stale_fallback();
        let Some(stale) = stale else {
            exchange.put_client(client);
            return;
        };
        traffic.cache(CacheEvent::Stale);
        let waited = now.saturating_duration_since(exchange.started());
        client::deliver(client.reply_to, answers, |out| {
            out.clear();
            out.extend_from_slice(&stale);
            answered(traffic, Path::Cache, out, waited);
        });
    }
}

impl ForwardingGauges for Forwarder {
    fn in_flight(&self) -> (usize, usize) {
        (self.in_flight.current(), self.in_flight.max())
    }

    fn upstreams(&self) -> Vec<(std::net::SocketAddr, bool)> {
        let upstreams = self.upstreams.load();
        let now = Instant::now();
        (0..upstreams.len()).map(|i| (upstreams.addr(i), upstreams.is_healthy(i, now))).collect()
    }

    fn cache_size(&self) -> (usize, usize) {
        self.cache.load().as_ref().map_or((0, 0), |cache| cache.size())
    }

    fn cache_evictions(&self) -> u64 {
        self.evictions.load(Relaxed)
    }
}

fn new_cache(policy: CachePolicy, workers: usize, evictions: &Arc<AtomicU64>) -> Option<Arc<Cache<Parked>>> {
    (policy.size > 0).then(|| Cache::new(policy, workers, evictions.clone()))
}

/// The expired answer held for `exchange`'s key, for client `id`; marks its refresh failed.
fn stale_answer(exchange: &Exchange, id: u16, now: Instant) -> Option<Vec<u8>> {
    if !exchange.stale_fallback() {
        return None;
    }
    let (cache, key) = (exchange.cache()?, exchange.key()?);
    let mut stale = Vec::new();
    cache.write_stale(key, exchange.query(), now, &mut stale).then(|| {
        wire::set_id(&mut stale, id);
        stale
    })
}

/// REFUSED at once: `--max-concurrent` queries are waiting for the upstreams already.
fn refuse(packet: &[u8], question_end: usize, edns: Option<&Edns>, traffic: &Traffic, out: &mut Vec<u8>) -> Begin {
    wire::write_empty_answer(packet, Some(question_end), rcode::REFUSED, edns, false, out);
    traffic.refused(Refusal::OverCapacity);
    Begin::Answered(Path::Refused)
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

fn reply_transport(reply_to: &ReplyTo) -> Transport {
    match reply_to {
        ReplyTo::Udp { .. } => Transport::Udp,
        ReplyTo::Tcp(_) => Transport::Tcp,
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
