//! UDP forwarding for one worker: the in-flight table, timeouts, failover, and what a reply that
//! matches no query means.
//!
//! Each worker thread owns one of these, so nothing here is shared or locked. Spoofing resistance
//! follows RFC 5452: each query leaves with a random ID on a short-lived connected socket on a
//! random port (`sockets`), and a reply is accepted only when its socket, ID and question all
//! match a query in flight. A datagram that matches none is counted against its upstream as a
//! likely forgery, and the answers still due on its socket are asked again over TCP before they
//! are relayed or cached: a forger who learned the port may be guessing their IDs. The client's
//! bytes go upstream unchanged but for the ID, and the upstream's answer comes back unchanged but
//! for the ID.
//!
//! Every leg is batched, because system calls are most of a relay's cost: queries are queued and
//! leave in one `sendmmsg` per upstream socket, replies are read with `recvmmsg` from every socket
//! one wakeup found ready, and answers go back to clients in one `sendmmsg` per listener. Callers
//! `flush` after each batch.
//!
//! What a client gets is not decided here: [`UdpForwarder::query`] asks the worker's [`Front`]
//! first, and every upstream outcome goes back through it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::ThreadRng;
use rustc_hash::FxHashMap;
use tokio::io::unix::AsyncFd;
use tracing::debug;

use super::Upstreams;
use super::front::{Begin, Front, Outcome, Ticket};
use super::reply::{self, Verdict};
use super::sockets::{Readiness, SocketKey, Sockets};
use crate::dns::wire::{self, Edns};
use crate::metrics::{Path, Proto};
use crate::net::batch::{BATCH, RecvBatch, SendBatch};

/// Largest upstream reply we relay: any UDP DNS message.
const MAX_REPLY: usize = 65535;

/// A non-blocking UDP socket registered with the worker's runtime.
pub type Socket = Rc<AsyncFd<std::net::UdpSocket>>;

/// A query whose UDP answer is to be checked over TCP: the caller runs the exchange
/// ([`super::tcp::exchange`]) and hands the result to [`UdpForwarder::rechecked`].
pub struct Recheck {
    pub slot: usize,
    pub upstream: SocketAddr,
    /// The query as it went upstream.
    pub query: Vec<u8>,
}

/// One forwarded query waiting for an answer.
struct Pending {
    client: SocketAddr,
    /// Index of the listener the query came in on (and its answer goes out of).
    listener: usize,
    client_id: u16,
    ticket: Ticket,
    /// The client's query as it goes upstream (our ID in it).
    query: Vec<u8>,
    /// Upstreams already tried, as bits.
    tried: u32,
    /// The upstream and socket of the current try, and the ID it was sent with.
    upstream: usize,
    key: (SocketKey, u16),
    /// When the current try times out.
    deadline: Instant,
}

pub struct UdpForwarder {
    upstreams: Arc<Upstreams>,
    sockets: Sockets,
    /// Per upstream, its spoofing episodes this forwarder has replaced its sockets for.
    episodes_seen: Vec<u32>,
    listeners: Vec<Socket>,
    slots: Vec<Option<Pending>>,
    free: Vec<usize>,
    by_key: FxHashMap<(SocketKey, u16), usize>,
    /// Queries being checked over TCP, out of `by_key`.
    rechecking: usize,
    /// TCP checks decided since the caller last took them.
    rechecks: Vec<Recheck>,
    ready: Vec<SocketKey>,
    front: Front,
    timeout: Duration,
    spare_buffers: Vec<Vec<u8>>,
    /// Queries waiting for [`UdpForwarder::flush`]: (socket key, slot).
    queued: Vec<(SocketKey, usize)>,
    outgoing: SendBatch,
    /// Answers waiting for [`UdpForwarder::flush`], one batch per listener.
    answers: Vec<SendBatch>,
    replies: Option<RecvBatch>,
    rng: ThreadRng,
}

impl UdpForwarder {
    /// A forwarder answering clients on `listeners`, by index; must run inside the worker's
    /// runtime. The caller runs its receive loop on [`UdpForwarder::readiness`].
    pub fn new(upstreams: Arc<Upstreams>, front: Front, timeout: Duration, listeners: Vec<Socket>) -> io::Result<Self> {
        let sockets = Sockets::new((0..upstreams.len()).map(|i| upstreams.addr(i)).collect())?;
        Ok(Self {
            episodes_seen: (0..upstreams.len()).map(|i| upstreams.episodes(i)).collect(),
            upstreams,
            sockets,
            rechecking: 0,
            rechecks: Vec::new(),
            ready: Vec::new(),
            answers: listeners.iter().map(|_| SendBatch::default()).collect(),
            listeners,
            slots: Vec::new(),
            free: Vec::new(),
            by_key: FxHashMap::default(),
            front,
            timeout,
            spare_buffers: Vec::new(),
            queued: Vec::new(),
            outgoing: SendBatch::default(),
            replies: Some(RecvBatch::new(MAX_REPLY)),
            rng: rand::rng(),
        })
    }

    /// What the receive loop waits on: any upstream socket readable.
    pub fn readiness(&self) -> Rc<AsyncFd<Readiness>> {
        self.sockets.readiness()
    }

    /// Number of queries waiting for an upstream.
    pub fn pending(&self) -> usize {
        self.by_key.len() + self.queued.len() + self.rechecking
    }

    /// The worker's entry point for a query `request::handle` chose to forward: the front decides
    /// whether it is answered now (from the cache, or REFUSED over capacity; the answer is then in
    /// `out` and its path returned) or goes upstream (its answer leaves with a later `flush`).
    #[allow(clippy::too_many_arguments)]
    pub fn query(
        &mut self,
        packet: &[u8],
        question_end: usize,
        edns: Option<Edns>,
        client: SocketAddr,
        listener: usize,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Option<Path> {
        match self.front.begin(packet, question_end, edns, now, out) {
            Begin::Answered(path) => Some(path),
            Begin::Ask(ticket) => {
                self.start(packet, ticket, client, listener, now);
                None
            }
            Begin::AnsweredAndRefresh(path, ticket) => {
                self.start(packet, ticket, client, listener, now);
                Some(path)
            }
        }
    }

    /// Queues a query for its first upstream.
    fn start(&mut self, packet: &[u8], ticket: Ticket, client: SocketAddr, listener: usize, now: Instant) {
        let mut query = self.spare_buffers.pop().unwrap_or_default();
        query.clear();
        query.extend_from_slice(packet);
        let pending = Pending {
            client,
            listener,
            client_id: wire::id(packet),
            ticket,
            query,
            tried: 0,
            upstream: 0,
            key: (0, 0),
            deadline: now,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(pending);
                slot
            }
            None => {
                self.slots.push(Some(pending));
                self.slots.len() - 1
            }
        };
        self.queue_next(slot, now);
    }

    /// Queues the query in `slot` for the next upstream it has not tried. When none is left the
    /// query has failed (see [`Outcome::Failed`]) and the slot is freed. The try times out
    /// `timeout` after `now` (a time the caller read anyway: one clock read per batch).
    fn queue_next(&mut self, slot: usize, now: Instant) {
        let pending = self.slots[slot].as_mut().expect("live slot");
        let (upstream, socket) = loop {
            let Some(upstream) = self.upstreams.next(pending.tried) else {
                self.finish(slot, Outcome::Failed { last: None }, now);
                return;
            };
            pending.tried |= 1 << upstream;
            let episodes = self.upstreams.episodes(upstream);
            if self.episodes_seen[upstream] != episodes {
                self.episodes_seen[upstream] = episodes;
                self.sockets.replace_all(upstream);
            }
            match self.sockets.take(upstream, now) {
                Ok(socket) => break (upstream, socket),
                Err(e) => {
                    debug!(upstream = %self.upstreams.addr(upstream), error = %e, "cannot open an upstream socket");
                    self.upstreams.record_failure(upstream);
                }
            }
        };
        let id = loop {
            let id: u16 = self.rng.random();
            if !self.by_key.contains_key(&(socket, id)) {
                break id;
            }
        };
        wire::set_id(&mut pending.query, id);
        pending.upstream = upstream;
        pending.key = (socket, id);
        pending.deadline = now + self.timeout;
        self.by_key.insert(pending.key, slot);
        self.upstreams.record_request(upstream, Proto::Udp);
        self.queued.push((socket, slot));
    }

    /// Empties this forwarder's cache, or drops every entry of `name` (`POST /cache/flush`).
    pub fn flush_cache(&mut self, name: Option<&[u8]>) {
        self.front.flush(name);
    }

    /// Sends every queued query (one `sendmmsg` per socket; a query the socket refuses moves on
    /// to its next upstream) and every queued answer (one `sendmmsg` per listener).
    pub fn flush(&mut self) {
        while !self.queued.is_empty() {
            let mut queued = std::mem::take(&mut self.queued);
            queued.sort_unstable_by_key(|&(key, _)| key);
            for group in queued.chunk_by(|a, b| a.0 == b.0) {
                let fd = self.sockets.fd(group[0].0);
                for chunk in group.chunks(BATCH) {
                    for &(_, slot) in chunk {
                        self.outgoing.push(&self.slots[slot].as_ref().expect("live slot").query, None);
                    }
                    let failed = self.outgoing.flush(fd);
                    for (i, &(_, slot)) in chunk.iter().enumerate() {
                        if failed & (1 << i) != 0 {
                            self.send_failed(slot);
                        }
                    }
                }
            }
            queued.clear();
            if self.queued.is_empty() {
                self.queued = queued;
            }
        }
        self.sockets.end_batch();
        for (answers, listener) in self.answers.iter_mut().zip(&self.listeners) {
            answers.flush(listener.as_raw_fd());
        }
    }

    fn send_failed(&mut self, slot: usize) {
        let pending = self.slots[slot].as_ref().expect("live slot");
        debug!(upstream = %self.upstreams.addr(pending.upstream), "upstream send failed");
        self.by_key.remove(&pending.key);
        self.sockets.release(pending.key.0, None);
        self.upstreams.record_failure(pending.upstream);
        self.queue_next(slot, Instant::now());
    }

    /// Ends the query in `slot` with `outcome`: the front writes the client's answer, if one
    /// waits, into the answer batch of its listener.
    fn finish(&mut self, slot: usize, outcome: Outcome<'_>, now: Instant) {
        let pending = self.slots[slot].take().expect("live slot");
        let answers = answer_batch(&mut self.answers, &self.listeners, pending.listener);
        let out = answers.buffer();
        if self.front.finish(&pending.query, pending.client_id, pending.ticket, outcome, now, out) {
            answers.commit(Some(pending.client));
        }
        self.spare_buffers.push(pending.query);
        self.free.push(slot);
    }

    /// Reads every upstream socket with replies waiting and handles each reply; returns whether
    /// more sockets may be waiting (false: all drained, the caller may wait for readiness again).
    pub fn receive(&mut self) -> io::Result<bool> {
        self.ready.clear();
        let mut ready = std::mem::take(&mut self.ready);
        let more = self.sockets.ready(&mut ready)?;
        let mut replies = self.replies.take().expect("not re-entered");
        for &key in &ready {
            // Readiness is edge-triggered: read until a short batch proves the queue empty. An
            // error (ECONNREFUSED: the upstream is down) is consumed by the read that reports it;
            // the query's timeout moves it on.
            while self.sockets.is_open(key) {
                match replies.recv(self.sockets.fd(key)) {
                    Ok(n) => {
                        let now = Instant::now();
                        for i in 0..n {
                            if let Some(reply) = replies.message(i) {
                                self.on_reply(key, reply, now);
                            }
                        }
                        if n < BATCH {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => debug!(error = %e, "upstream socket error"),
                }
            }
        }
        self.replies = Some(replies);
        self.ready = ready;
        Ok(more)
    }

    /// Handles a datagram from upstream socket `key`. Anything that is not the answer to a query
    /// in flight on that socket, with its ID and question, is ignored (RFC 5452) and counted.
    fn on_reply(&mut self, key: SocketKey, reply: &[u8], now: Instant) {
        let id = wire::id(reply);
        let slot = match self.by_key.get(&(key, id)) {
            Some(&slot) if wire::is_response(reply) => slot,
            _ => {
                if !self.sockets.is_late(key, id) {
                    self.unexpected(key);
                }
                return;
            }
        };
        let pending = self.slots[slot].as_ref().expect("live slot");
        let verdict = reply::judge(&pending.query, pending.ticket.question_end, reply);
        if verdict == Verdict::Ignore {
            self.unexpected(key);
            return;
        }
        self.by_key.remove(&(key, id));
        let upstream = pending.upstream;
        if self.sockets.is_suspect(key) {
            // A forger knows this port and may have guessed this ID: only TCP can tell.
            self.upstreams.record_recheck(upstream);
            self.rechecks.push(Recheck { slot, upstream: self.upstreams.addr(upstream), query: pending.query.clone() });
            self.rechecking += 1;
            self.sockets.release(key, Some(id));
            return;
        }
        self.sockets.release(key, None);
        self.accept(slot, verdict, reply, now);
    }

    /// A datagram on `key` matched no query in flight.
    fn unexpected(&mut self, key: SocketKey) {
        debug!("ignoring an upstream reply that matches no query in flight");
        if let Some(upstream) = self.sockets.upstream(key) {
            self.upstreams.record_unexpected(upstream);
        }
        self.sockets.suspect(key);
    }

    /// Ends the try of the query in `slot` with a reply `reply::judge` did not ignore.
    fn accept(&mut self, slot: usize, verdict: Verdict, reply: &[u8], now: Instant) {
        let pending = self.slots[slot].as_ref().expect("live slot");
        let upstream = pending.upstream;
        if verdict == Verdict::MoveOn {
            self.upstreams.record_failure(upstream);
            if self.upstreams.next(pending.tried).is_some() {
                self.queue_next(slot, now);
            } else {
                self.finish(slot, Outcome::Failed { last: Some(reply) }, now);
            }
            return;
        }
        self.upstreams.record_success(upstream);
        if self.upstreams.is_defending(upstream, now) {
            self.finish(slot, Outcome::Uncached(reply), now);
        } else {
            self.finish(slot, Outcome::Answer(reply), now);
        }
    }

    /// The TCP checks decided since the last call, for the caller to run.
    pub fn take_rechecks(&mut self) -> Vec<Recheck> {
        std::mem::take(&mut self.rechecks)
    }

    /// The outcome of the TCP check of [`Recheck`] `slot`: its answer counts as the upstream's
    /// (and is cached as any TCP answer); a failed check moves the query on.
    pub fn rechecked(&mut self, slot: usize, result: io::Result<Vec<u8>>, now: Instant) {
        self.rechecking -= 1;
        let pending = self.slots[slot].as_ref().expect("a query being checked keeps its slot");
        let upstream = pending.upstream;
        let verdict = match &result {
            Ok(answer) => reply::judge(&pending.query, pending.ticket.question_end, answer),
            Err(e) => {
                debug!(error = %e, "TCP check of a UDP answer failed");
                Verdict::Ignore
            }
        };
        match (verdict, result) {
            (Verdict::Accept, Ok(answer)) => {
                self.upstreams.record_success(upstream);
                self.finish(slot, Outcome::Answer(&answer), now);
            }
            (Verdict::MoveOn, Ok(answer)) => self.accept(slot, Verdict::MoveOn, &answer, now),
            _ => {
                self.upstreams.record_failure(upstream);
                self.queue_next(slot, now);
            }
        }
    }

    /// Moves every query whose try timed out to its next upstream (or SERVFAIL). A scan of the
    /// live slots, which `--max-concurrent` bounds: memory stays proportional to the queries in
    /// flight, whatever the query rate and the timeout.
    ///
    /// A client that has waited [`crate::cache::CLIENT_TIMER`] for a query whose expired answer
    /// is held gets that answer now (RFC 8767); the query goes on, to refresh the cache.
    pub fn expire(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            let Some(pending) = self.slots[slot].as_mut() else { continue };
            if Front::timer_due(&pending.ticket, now) {
                let answers = answer_batch(&mut self.answers, &self.listeners, pending.listener);
                if self.front.client_timer(&pending.query, pending.client_id, pending.ticket, now, answers.buffer()) {
                    answers.commit(Some(pending.client));
                    pending.ticket.client_waits = false;
                } else {
                    // Evicted or flushed meanwhile: the client waits for the upstreams after all.
                    pending.ticket.stale_fallback = false;
                }
            }
            // Not in the table: queued for TCP's check, or the key is now another query's.
            if pending.deadline > now || self.by_key.get(&pending.key) != Some(&slot) {
                continue;
            }
            self.by_key.remove(&pending.key);
            self.sockets.release(pending.key.0, Some(pending.key.1));
            self.upstreams.record_timeout(pending.upstream);
            self.queue_next(slot, now);
        }
        self.sockets.sweep(now);
    }
}

/// The answer batch of `listener`, with room for one more answer.
fn answer_batch<'a>(answers: &'a mut [SendBatch], listeners: &[Socket], listener: usize) -> &'a mut SendBatch {
    let batch = &mut answers[listener];
    if batch.is_full() {
        batch.flush(listeners[listener].as_raw_fd());
    }
    batch
}
