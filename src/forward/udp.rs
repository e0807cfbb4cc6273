//! UDP forwarding for one worker: upstream sockets, the in-flight table, timeouts and failover.
//!
//! Each worker thread owns one of these, so nothing here is shared or locked. Spoofing resistance
//! follows RFC 5452: every upstream has a pool of connected sockets on kernel-chosen random ports
//! (a connected socket only receives from the address it was connected to), each query leaves on
//! a random socket of the pool with a random ID, and a reply is accepted only when its socket,
//! ID and question all match a query in flight. The client's bytes go upstream unchanged but for
//! the ID, and the upstream's answer comes back unchanged but for the ID.
//!
//! Every leg is batched, because system calls are most of a relay's cost: queries are queued and
//! leave in one `sendmmsg` per upstream socket (all queries of one batch share a socket picked at
//! random for that batch, each with its own random ID), replies are read with `recvmmsg`, and
//! answers go back to clients in one `sendmmsg` per listener. Callers `flush` after each batch.
//!
//! What a client gets is not decided here: [`UdpForwarder::query`] asks the worker's [`Front`]
//! first, and every upstream outcome goes back through it.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
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
use crate::dns::wire::{self, Edns};
use crate::metrics::{Path, Proto};
use crate::net::batch::{self, BATCH, RecvBatch, SendBatch};

/// Sockets per upstream and worker: the source-port spread of RFC 5452 section 9.2, multiplied by
/// the 16-bit ID.
pub const SOCKETS_PER_UPSTREAM: usize = 8;

/// Largest upstream reply we relay: any UDP DNS message.
const MAX_REPLY: usize = 65535;

/// A non-blocking UDP socket registered with the worker's runtime.
pub type Socket = Rc<AsyncFd<std::net::UdpSocket>>;

/// An upstream socket and the key that identifies it in the in-flight table.
pub type KeyedSocket = (u32, Socket);

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
    key: (u32, u16),
    /// When the current try times out.
    deadline: Instant,
}

pub struct UdpForwarder {
    upstreams: Arc<Upstreams>,
    /// `sockets[upstream][i]`, all connected to that upstream.
    sockets: Vec<Vec<Socket>>,
    /// The pool socket each upstream's queries leave on until the next flush.
    batch_socket: Vec<Option<usize>>,
    listeners: Vec<Socket>,
    slots: Vec<Option<Pending>>,
    free: Vec<usize>,
    by_key: FxHashMap<(u32, u16), usize>,
    front: Front,
    timeout: Duration,
    spare_buffers: Vec<Vec<u8>>,
    /// Queries waiting for [`UdpForwarder::flush`]: (socket key, slot).
    queued: Vec<(u32, usize)>,
    outgoing: SendBatch,
    /// Answers waiting for [`UdpForwarder::flush`], one batch per listener.
    answers: Vec<SendBatch>,
    replies: Option<RecvBatch>,
    rng: ThreadRng,
}

impl UdpForwarder {
    /// Opens the upstream socket pools. Returns the forwarder and every upstream socket with its
    /// key, for the caller to run a receive loop on each ([`UdpForwarder::receive`]).
    pub fn new(
        upstreams: Arc<Upstreams>,
        front: Front,
        timeout: Duration,
        listeners: Vec<Socket>,
    ) -> io::Result<(Self, Vec<KeyedSocket>)> {
        let mut sockets = Vec::with_capacity(upstreams.len());
        let mut all = Vec::new();
        for index in 0..upstreams.len() {
            let addr = upstreams.addr(index);
            let mut pool = Vec::with_capacity(SOCKETS_PER_UPSTREAM);
            for i in 0..SOCKETS_PER_UPSTREAM {
                let socket = Rc::new(connected_socket(addr)?);
                all.push(((index * SOCKETS_PER_UPSTREAM + i) as u32, socket.clone()));
                pool.push(socket);
            }
            sockets.push(pool);
        }
        let this = Self {
            batch_socket: vec![None; upstreams.len()],
            upstreams,
            sockets,
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
        };
        Ok((this, all))
    }

    /// Number of queries waiting for an upstream.
    pub fn pending(&self) -> usize {
        self.by_key.len() + self.queued.len()
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
        let Some(upstream) = self.upstreams.next(pending.tried) else {
            self.finish(slot, Outcome::Failed { last: None }, now);
            return;
        };
        pending.tried |= 1 << upstream;
        let socket_index =
            *self.batch_socket[upstream].get_or_insert_with(|| self.rng.random_range(0..SOCKETS_PER_UPSTREAM));
        let key_socket = (upstream * SOCKETS_PER_UPSTREAM + socket_index) as u32;
        let id = loop {
            let id: u16 = self.rng.random();
            if !self.by_key.contains_key(&(key_socket, id)) {
                break id;
            }
        };
        wire::set_id(&mut pending.query, id);
        pending.upstream = upstream;
        pending.key = (key_socket, id);
        pending.deadline = now + self.timeout;
        self.by_key.insert(pending.key, slot);
        self.upstreams.record_request(upstream, Proto::Udp);
        self.queued.push((key_socket, slot));
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
                let key = group[0].0;
                let fd = self.socket_fd(key);
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
        self.batch_socket.fill(None);
        for (answers, listener) in self.answers.iter_mut().zip(&self.listeners) {
            answers.flush(listener.as_raw_fd());
        }
    }

    fn socket_fd(&self, key: u32) -> RawFd {
        let key = key as usize;
        self.sockets[key / SOCKETS_PER_UPSTREAM][key % SOCKETS_PER_UPSTREAM].as_raw_fd()
    }

    fn send_failed(&mut self, slot: usize) {
        let pending = self.slots[slot].as_ref().expect("live slot");
        debug!(upstream = %self.upstreams.addr(pending.upstream), "upstream send failed");
        self.by_key.remove(&pending.key);
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

    /// Reads one batch of replies from upstream socket `key` and handles each; returns how many
    /// datagrams were read (`WouldBlock` when there were none).
    pub fn receive(&mut self, key: u32, fd: RawFd) -> io::Result<usize> {
        let mut replies = self.replies.take().expect("not re-entered");
        let result = replies.recv(fd);
        if let Ok(n) = result {
            let now = Instant::now();
            for i in 0..n {
                if let Some(reply) = replies.message(i) {
                    self.on_reply(key, reply, now);
                }
            }
        }
        self.replies = Some(replies);
        result
    }

    /// Handles a datagram from upstream socket `key`. Anything that is not the answer to a
    /// query in flight on that socket, with its ID and question, is ignored (RFC 5452).
    fn on_reply(&mut self, key: u32, reply: &[u8], now: Instant) {
        if !wire::is_response(reply) {
            return;
        }
        let Some(&slot) = self.by_key.get(&(key, wire::id(reply))) else {
            debug!("ignoring an upstream reply with an unknown ID");
            return;
        };
        let pending = self.slots[slot].as_ref().expect("live slot");
        let verdict = reply::judge(&pending.query, pending.ticket.question_end, reply);
        if verdict == Verdict::Ignore {
            debug!("ignoring an upstream reply for another question, or a cut-off one");
            return;
        }
        self.by_key.remove(&(key, wire::id(reply)));
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
        self.finish(slot, Outcome::Answer(reply), now);
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
            if pending.deadline > now || !self.by_key.contains_key(&pending.key) {
                continue;
            }
            self.by_key.remove(&pending.key);
            self.upstreams.record_timeout(pending.upstream);
            self.queue_next(slot, now);
        }
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

/// A UDP socket on a random port, connected to `upstream`.
fn connected_socket(upstream: SocketAddr) -> io::Result<AsyncFd<std::net::UdpSocket>> {
    let local: SocketAddr =
        if upstream.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = std::net::UdpSocket::bind(local)?;
    socket.connect(upstream)?;
    batch::register(socket)
}
