//! What the client of a forwarded query sees, decided in one place for UDP and TCP: the cache
//! (lookup, insert, stale answers, prefetch), the in-flight cap (REFUSED), SERVFAIL when no
//! upstream answered, truncation for a UDP client's buffer, and the metrics of each outcome.
//!
//! The relays (`udp`, `tcp`) only move bytes to and from the upstreams: a socket layer calls
//! [`Front::begin`] with the client's query, and either has its answer at once or asks the
//! upstreams with the [`Ticket`] it got, then hands their outcome to [`Front::finish`], which
//! writes the client's answer. A prefetch is a ticket without a waiting client.

use std::sync::Arc;
use std::time::Instant;

use super::InFlight;
use crate::cache::{self, Cache, Key, Lookup};
use crate::dns::Transport;
use crate::dns::wire::{self, Edns, rcode};
use crate::metrics::{Path, Refusal, Traffic};

/// A forwarded query on its way to the upstreams, as [`Front::begin`] hands it out.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    pub question_end: usize,
    pub edns: Option<Edns>,
    /// When the client's query arrived.
    pub started: Instant,
    /// Whether the answer goes into the cache.
    cacheable: bool,
    /// An expired answer is held for this query: served if the upstreams fail or are slow.
    pub stale_fallback: bool,
    /// A client waits for the answer: false for a prefetch, and once a stale answer was served.
    pub client_waits: bool,
}

/// What [`Front::begin`] decided.
#[derive(Debug, Clone, Copy)]
pub enum Begin {
    /// The client's answer is in the output (from the cache, or REFUSED over capacity).
    Answered(Path),
    /// Ask the upstreams; give the ticket back to [`Front::finish`].
    Ask(Ticket),
    /// The client's answer (a fresh cache hit) is in the output, and the upstreams are to be asked
    /// in the background to refresh it (prefetch).
    AnsweredAndRefresh(Path, Ticket),
}

/// How the upstreams dealt with a query.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// An answer the relay accepted (`reply::judge`), under any ID.
    Answer(&'a [u8]),
    /// An accepted answer not to be cached: it came over UDP during a spoofing episode of its
    /// upstream (`Upstreams::is_defending`).
    Uncached(&'a [u8]),
    /// No upstream answered: every one timed out or failed; `last` is the last SERVFAIL or
    /// REFUSED one of them sent, if any, which the client gets (byte for byte, as any answer)
    /// when no stale answer is held.
    Failed { last: Option<&'a [u8]> },
}

/// The client-facing side of forwarding for one worker (or for TCP).
#[derive(Debug)]
pub struct Front {
    transport: Transport,
    cache: Option<Cache>,
    in_flight: Arc<InFlight>,
    traffic: Arc<Traffic>,
    /// Room for a SERVFAIL no client waits for, to cache it.
    scratch: Vec<u8>,
}

impl Front {
    pub fn new(transport: Transport, cache: Option<Cache>, in_flight: Arc<InFlight>, traffic: Arc<Traffic>) -> Self {
        Self { transport, cache, in_flight, traffic, scratch: Vec::new() }
    }

    /// Decides what the client of `packet` (a query `request::handle` chose to forward) gets.
    pub fn begin(
        &mut self,
        packet: &[u8],
        question_end: usize,
        edns: Option<Edns>,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Begin {
        let mut ticket =
            Ticket { question_end, edns, started: now, cacheable: false, stale_fallback: false, client_waits: true };
        let key = match &self.cache {
            Some(_) => Key::of(packet, question_end, edns.as_ref()),
            None => None,
        };
        let limit = self.limit(edns.as_ref());
        if let (Some(cache), Some(key)) = (&mut self.cache, &key) {
            ticket.cacheable = true;
            match cache.lookup(key, packet, limit, now, out) {
                Lookup::Fresh { prefetch } => {
                    self.traffic.response(Path::Cache, wire::rcode_of(out));
                    if prefetch && self.in_flight.try_acquire() {
                        return Begin::AnsweredAndRefresh(Path::Cache, Ticket { client_waits: false, ..ticket });
                    }
                    return Begin::Answered(Path::Cache);
                }
                Lookup::Stale => {
                    self.traffic.response(Path::Cache, wire::rcode_of(out));
                    return Begin::Answered(Path::Cache);
                }
                Lookup::Refresh => ticket.stale_fallback = true,
                Lookup::Miss => {}
            }
        }
        if !self.in_flight.try_acquire() {
            // Over capacity, a stale answer still beats REFUSED.
            if let (Some(cache), Some(key), true) = (&mut self.cache, &key, ticket.stale_fallback)
                && cache.write_stale(key, packet, now, out)
            {
                self.traffic.response(Path::Cache, wire::rcode_of(out));
                return Begin::Answered(Path::Cache);
            }
            wire::write_empty_answer(packet, Some(question_end), rcode::REFUSED, edns.as_ref(), false, out);
            self.traffic.refused(Refusal::OverCapacity);
            return Begin::Answered(Path::Refused);
        }
        Begin::Ask(ticket)
    }

    /// Takes the upstreams' `outcome` for the query of `ticket` (`query`, under any ID) and writes
    /// the answer for the client `client_id` into `out`; returns whether there is one to send.
    pub fn finish(
        &mut self,
        query: &[u8],
        client_id: u16,
        ticket: Ticket,
        outcome: Outcome<'_>,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> bool {
        self.in_flight.release();
        let limit = self.limit(ticket.edns.as_ref());
        let key = if ticket.cacheable { Key::of(query, ticket.question_end, ticket.edns.as_ref()) } else { None };
        let mut cache = self.cache.as_mut().zip(key.as_ref());
        match outcome {
            Outcome::Answer(reply) | Outcome::Uncached(reply) => {
                if let Some((cache, key)) = cache
                    && matches!(outcome, Outcome::Answer(_))
                    && reply.len() <= limit
                {
                    cache.insert(key, reply, ticket.question_end, now);
                }
                if !ticket.client_waits {
                    return false;
                }
                relay(reply, client_id, &ticket, limit, out);
                self.answered(Path::Forwarded, ticket, now, out);
                true
            }
            Outcome::Failed { last } => {
                if let Some((cache, key)) = &mut cache
                    && ticket.client_waits
                    && ticket.stale_fallback
                    && cache.write_stale(key, query, now, out)
                {
                    wire::set_id(out, client_id);
                    self.answered(Path::Cache, ticket, now, out);
                    return true;
                }
                let answer = if ticket.client_waits { &mut *out } else { &mut self.scratch };
                match last {
                    Some(refusal) => relay(refusal, client_id, &ticket, limit, answer),
                    None => {
                        wire::write_empty_answer(
                            query,
                            Some(ticket.question_end),
                            rcode::SERVFAIL,
                            ticket.edns.as_ref(),
                            false,
                            answer,
                        );
                        wire::set_id(answer, client_id);
                    }
                }
                if let Some((cache, key)) = cache {
                    cache.insert_failure(key, answer, ticket.question_end, now);
                }
                if ticket.client_waits {
                    self.answered(Path::Forwarded, ticket, now, out);
                }
                ticket.client_waits
            }
        }
    }

    /// The client `client_id` of `ticket` has waited [`cache::CLIENT_TIMER`]: writes the stale
    /// answer held for it into `out`, if it still is; returns whether it did (then the client
    /// waits no more, and the upstreams' answer only refreshes the cache).
    pub fn client_timer(
        &mut self,
        query: &[u8],
        client_id: u16,
        ticket: Ticket,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> bool {
        let Some(cache) = &mut self.cache else { return false };
        let Some(key) = Key::of(query, ticket.question_end, ticket.edns.as_ref()) else { return false };
        if !cache.write_stale(&key, query, now, out) {
            return false;
        }
        wire::set_id(out, client_id);
        self.answered(Path::Cache, ticket, now, out);
        true
    }

    /// Whether `ticket`'s client should get a stale answer by now.
    pub fn timer_due(ticket: &Ticket, now: Instant) -> bool {
        ticket.client_waits
            && ticket.stale_fallback
            && now.saturating_duration_since(ticket.started) >= cache::CLIENT_TIMER
    }

    /// Empties the cache, or drops every entry of `name` (lower-cased wire form).
    pub fn flush(&mut self, name: Option<&[u8]>) {
        if let Some(cache) = &mut self.cache {
            cache.flush(name);
        }
    }

    fn answered(&self, path: Path, ticket: Ticket, now: Instant, out: &[u8]) {
        self.traffic.response(path, wire::rcode_of(out));
        self.traffic.latency(path, now.saturating_duration_since(ticket.started), 1);
    }

    /// The largest answer this front's client takes: over UDP its advertised buffer (512 without
    /// EDNS), over TCP any message.
    fn limit(&self, edns: Option<&Edns>) -> usize {
        match self.transport {
            Transport::Udp => wire::relay_udp_limit(edns),
            Transport::Tcp => usize::from(u16::MAX),
        }
    }
}

/// Writes an upstream's `reply` for the client `client_id`: as it is but for the ID, or cut to
/// header and question with TC when it exceeds the client's `limit`, so that it retries over TCP.
fn relay(reply: &[u8], client_id: u16, ticket: &Ticket, limit: usize, out: &mut Vec<u8>) {
    if reply.len() <= limit {
        out.clear();
        out.extend_from_slice(reply);
    } else {
        wire::write_truncated(reply, ticket.question_end, ticket.edns.as_ref(), out);
    }
    wire::set_id(out, client_id);
}
