//! A UDP worker's driver: carries its exchanges' tries to the upstreams over UDP and brings back
//! what happens to them, for one upstream list.
//!
//! Each worker thread owns one, so nothing here is shared or locked. Spoofing resistance follows
//! RFC 5452: each try leaves with a random ID on a short-lived connected socket on a random port
//! (`sockets`), and a reply reaches its exchange only when its socket and ID match a try in
//! flight. A datagram that matches none is counted against its upstream as a likely forgery, and
//! the replies still due on its socket are suspect: the exchange has them asked again over TCP.
//!
//! Every leg is batched, because system calls are most of forwarding's cost: tries are queued and
//! leave in one `sendmmsg` per upstream socket, replies are read with `recvmmsg` from every socket
//! one wakeup found ready, and answers go back to clients in one `sendmmsg` per listener. Callers
//! call [`UdpDriver::send_queued`] after each batch.
//!
//! What a client gets is not decided here: [`UdpDriver::query`] asks the [`Forwarder`], and every
//! exchange's end goes back to it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use rand::Rng;
use rand::rngs::ThreadRng;
use rustc_hash::FxHashMap;
use tokio::io::unix::AsyncFd;
use tracing::debug;

use super::sockets::{EpollSet, SocketKey, Sockets};
use crate::forward::{Begin, ClientQuery, Command, Event, Exchange, Forwarder, ReplyTo, UdpAnswers, Upstreams};
use crate::metrics::{Path, Traffic};
use crate::net::batch::{BATCH, RecvBatch, SendBatch};

/// Largest upstream reply we relay: any UDP DNS message.
const MAX_REPLY: usize = 65535;

/// A non-blocking UDP socket registered with the worker's runtime.
pub type Socket = Rc<AsyncFd<std::net::UdpSocket>>;

/// A try whose UDP answer is to be checked over TCP: the caller runs the exchange
/// ([`crate::forward::tcp::ask`]) and hands the result to [`UdpDriver::rechecked`].
pub struct Recheck {
    pub slot: usize,
    pub upstream: SocketAddr,
    /// The query as it went upstream.
    pub query: Vec<u8>,
}

/// An exchange under way, and the UDP try it has out: its socket and the ID it was sent with.
struct Running {
    exchange: Exchange,
    try_key: (SocketKey, u16),
}

pub struct UdpDriver {
    forwarder: Arc<Forwarder>,
    upstreams: Arc<Upstreams>,
    sockets: Sockets,
    /// Per upstream, its spoofing episodes this driver has replaced its sockets for.
    episodes_seen: Vec<u32>,
    slots: Vec<Option<Running>>,
    free: Vec<usize>,
    /// The tries out, by socket and ID.
    by_key: FxHashMap<(SocketKey, u16), usize>,
    /// Exchanges being checked over TCP, out of `by_key`.
    rechecking: usize,
    /// TCP checks decided since the caller last took them.
    rechecks: Vec<Recheck>,
    ready: Vec<SocketKey>,
    /// Tries waiting for [`UdpDriver::send_queued`]: (socket key, slot).
    queued: Vec<(SocketKey, usize)>,
    outgoing: SendBatch,
    answers: AnswerBatches,
    replies: Option<RecvBatch>,
    traffic: Arc<Traffic>,
    rng: ThreadRng,
}

/// The worker's answer batches, one per listener.
struct AnswerBatches {
    listeners: Vec<Socket>,
    batches: Vec<SendBatch>,
}

impl UdpAnswers for AnswerBatches {
    fn buffer(&mut self, listener: usize) -> Option<&mut Vec<u8>> {
        let batch = &mut self.batches[listener];
        if batch.is_full() {
            batch.send(self.listeners[listener].as_raw_fd());
        }
        Some(batch.buffer())
    }

    fn commit(&mut self, listener: usize, client: SocketAddr) {
        self.batches[listener].commit(Some(client));
    }
}

impl AnswerBatches {
    fn send(&mut self) {
        for (batch, listener) in self.batches.iter_mut().zip(&self.listeners) {
            batch.send(listener.as_raw_fd());
        }
    }
}

impl UdpDriver {
    /// A driver for `upstreams` answering clients on `listeners`, by index; must run inside the
    /// worker's runtime. The caller runs its receive loop on [`UdpDriver::epoll_set`].
    pub fn new(
        forwarder: Arc<Forwarder>,
        upstreams: Arc<Upstreams>,
        listeners: Vec<Socket>,
        traffic: Arc<Traffic>,
    ) -> io::Result<Self> {
        let sockets = Sockets::new((0..upstreams.len()).map(|i| upstreams.addr(i)).collect())?;
        Ok(Self {
            forwarder,
            episodes_seen: (0..upstreams.len()).map(|i| upstreams.episodes(i)).collect(),
            upstreams,
            sockets,
            slots: Vec::new(),
            free: Vec::new(),
            by_key: FxHashMap::default(),
            rechecking: 0,
            rechecks: Vec::new(),
            ready: Vec::new(),
            queued: Vec::new(),
            outgoing: SendBatch::default(),
            answers: AnswerBatches { batches: listeners.iter().map(|_| SendBatch::default()).collect(), listeners },
            replies: Some(RecvBatch::new(MAX_REPLY)),
            traffic,
            rng: rand::rng(),
        })
    }

    /// The upstream list this driver has sockets for.
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// What the receive loop waits on: any upstream socket readable.
    pub fn epoll_set(&self) -> Rc<AsyncFd<EpollSet>> {
        self.sockets.epoll_set()
    }

    /// Exchanges under way.
    pub fn pending(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The worker's entry point for a query `request::handle` chose to forward, from `client` on
    /// listener number `listener`: answered now (the answer is in `out` and its path returned),
    /// or later (it leaves with a later [`UdpDriver::send_queued`], from this worker or from the
    /// one that leads the same question's query).
    pub fn query(
        &mut self,
        query: ClientQuery<'_>,
        client: SocketAddr,
        listener: usize,
        out: &mut Vec<u8>,
    ) -> Option<Path> {
        let reply_to = ReplyTo::Udp { listener, client };
        match self.forwarder.begin(query, reply_to, &self.upstreams, &self.traffic, out) {
            Begin::Answered(path) => Some(path),
            Begin::Parked => None,
            Begin::Ask(exchange) => {
                self.start(exchange, query.arrived);
                None
            }
            Begin::AnsweredAndRefresh(path, exchange) => {
                self.start(exchange, query.arrived);
                Some(path)
            }
        }
    }

    fn start(&mut self, mut exchange: Exchange, now: Instant) {
        let command = exchange.start(now);
        let slot = Running { exchange, try_key: (0, 0) };
        let slot = match self.free.pop() {
            Some(index) => {
                self.slots[index] = Some(slot);
                index
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.carry_out(slot, command, now);
    }

    /// Does what the exchange in `slot` asked for.
    fn carry_out(&mut self, slot: usize, mut command: Command<'_>, now: Instant) {
        loop {
            match command {
                Command::Send(upstream) => match self.queue(slot, upstream, now) {
                    Ok(()) => return,
                    Err(e) => {
                        debug!(upstream = %self.upstreams.addr(upstream), error = %e, "cannot open an upstream socket");
                        command = self.exchange(slot).on(Event::Failed, now);
                    }
                },
                Command::Recheck(upstream) => {
                    let query = self.exchange(slot).query().to_vec();
                    self.rechecks.push(Recheck { slot, upstream: self.upstreams.addr(upstream), query });
                    self.rechecking += 1;
                    return;
                }
                Command::Ignore => return,
                Command::Finish(outcome) => {
                    let exchange = self.slots[slot].take().expect("live slot").exchange;
                    self.free.push(slot);
                    self.forwarder.finish(exchange, outcome, now, &self.traffic, &mut self.answers);
                    return;
                }
            }
        }
    }

    fn exchange(&mut self, slot: usize) -> &mut Exchange {
        &mut self.slots[slot].as_mut().expect("live slot").exchange
    }

    /// Queues the try of the exchange in `slot` for `upstream`, on a socket and with an ID that no
    /// other try on that socket has.
    fn queue(&mut self, slot: usize, upstream: usize, now: Instant) -> io::Result<()> {
        let episodes = self.upstreams.episodes(upstream);
        if self.episodes_seen[upstream] != episodes {
            self.episodes_seen[upstream] = episodes;
            self.sockets.replace_all(upstream);
        }
        let socket = self.sockets.take(upstream, now)?;
        let id = loop {
            let id: u16 = self.rng.random();
            if !self.by_key.contains_key(&(socket, id)) {
                break id;
            }
        };
        let entry = self.slots[slot].as_mut().expect("live slot");
        entry.exchange.set_id(id);
        entry.try_key = (socket, id);
        self.by_key.insert((socket, id), slot);
        self.queued.push((socket, slot));
        Ok(())
    }

    /// Sends every queued try (one `sendmmsg` per socket; a try the socket refuses has failed)
    /// and every answer waiting (one `sendmmsg` per listener).
    pub fn send_queued(&mut self) {
        while !self.queued.is_empty() {
            let mut queued = std::mem::take(&mut self.queued);
            queued.sort_unstable_by_key(|&(key, _)| key);
            for group in queued.chunk_by(|a, b| a.0 == b.0) {
                let fd = self.sockets.fd(group[0].0);
                for chunk in group.chunks(BATCH) {
                    for &(_, slot) in chunk {
                        self.outgoing.push(self.slots[slot].as_ref().expect("live slot").exchange.query(), None);
                    }
                    let failed = self.outgoing.send(fd);
                    for (i, &(_, slot)) in chunk.iter().enumerate() {
                        if failed & (1 << i) != 0 {
                            self.try_failed(slot, Instant::now());
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
        self.answers.send();
    }

    /// The try of the exchange in `slot` failed before any reply (its send failed, or its
    /// upstream's port is closed): it moves on at once.
    fn try_failed(&mut self, slot: usize, now: Instant) {
        let try_key = self.slots[slot].as_ref().expect("live slot").try_key;
        self.by_key.remove(&try_key);
        self.sockets.release(try_key.0, None);
        let command = self.exchange(slot).on(Event::Failed, now);
        self.carry_out(slot, command, now);
    }

    /// Reads every upstream socket with replies waiting and handles each reply; returns whether
    /// more sockets may be waiting (false: all drained, the caller may wait for readiness again).
    pub fn receive(&mut self) -> io::Result<bool> {
        self.ready.clear();
        let mut ready = std::mem::take(&mut self.ready);
        let more = self.sockets.ready(&mut ready)?;
        let mut replies = self.replies.take().expect("not re-entered");
        for &key in &ready {
            // Readiness is edge-triggered: read until a short batch proves the queue empty.
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
                    // ICMP port unreachable for a try on this connected socket: the upstream is
                    // not listening, and every try waiting on the socket moves on now rather
                    // than at its timeout. The read consumed the error.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => self.refused(key),
                    Err(e) => debug!(error = %e, "upstream socket error"),
                }
            }
        }
        self.replies = Some(replies);
        self.ready = ready;
        Ok(more)
    }

    /// The upstream of socket `key` refused a datagram: every try out on that socket failed.
    fn refused(&mut self, key: SocketKey) {
        let now = Instant::now();
        let slots: Vec<usize> =
            self.by_key.iter().filter(|((socket, _), _)| *socket == key).map(|(_, &slot)| slot).collect();
        for slot in slots {
            self.try_failed(slot, now);
        }
    }

    /// Handles a datagram from upstream socket `key`. Anything that is not the answer to a try on
    /// that socket, with its ID and question, is ignored (RFC 5452) and counted.
    fn on_reply(&mut self, key: SocketKey, reply: &[u8], now: Instant) {
        let id = crate::dns::wire::id(reply);
        let Some(&slot) = self.by_key.get(&(key, id)) else {
            if !self.sockets.is_late(key, id) {
                self.unexpected(key, now);
            }
            return;
        };
        let event = if self.sockets.is_suspect(key) { Event::SuspectReply(reply) } else { Event::Reply(reply) };
        let command = self.exchange(slot).on(event, now);
        match command {
            Command::Ignore => {
                self.unexpected(key, now);
                return;
            }
            // A forger knows this port and may have guessed this ID: its reply may still come.
            Command::Recheck(_) => {
                self.by_key.remove(&(key, id));
                self.sockets.release(key, Some(id));
            }
            _ => {
                self.by_key.remove(&(key, id));
                self.sockets.release(key, None);
            }
        }
        self.carry_out(slot, command, now);
    }

    /// A datagram on `key` matched no try in flight.
    fn unexpected(&mut self, key: SocketKey, now: Instant) {
        debug!("ignoring an upstream reply that matches no query in flight");
        if let Some(upstream) = self.sockets.upstream(key) {
            self.upstreams.record_unexpected(upstream, now);
        }
        self.sockets.suspect(key);
    }

    /// The TCP checks decided since the last call, for the caller to run.
    pub fn take_rechecks(&mut self) -> Vec<Recheck> {
        std::mem::take(&mut self.rechecks)
    }

    /// The outcome of the TCP check of [`Recheck`] `slot`.
    pub fn rechecked(&mut self, slot: usize, answer: Option<&[u8]>, now: Instant) {
        self.rechecking -= 1;
        let command = self.exchange(slot).on(Event::Rechecked(answer), now);
        self.carry_out(slot, command, now);
    }

    /// Moves every try that timed out on (to its next upstream, or to its end), and gives each
    /// client that has waited [`crate::cache::CLIENT_TIMER`] for an expired answer that answer
    /// (RFC 8767; its exchange goes on, to refresh the cache). A scan of the live slots, which
    /// `--max-concurrent` bounds: memory stays proportional to the queries in flight, whatever
    /// the query rate and the timeout.
    pub fn expire(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            let Some(entry) = self.slots[slot].as_mut() else { continue };
            if entry.exchange.stale_due().is_some_and(|due| due <= now) {
                self.forwarder.serve_stale(&mut entry.exchange, now, &self.traffic, &mut self.answers);
            }
            let try_key = entry.try_key;
            // Not in the table: being checked over TCP (its TCP exchange has a timeout of its own).
            if entry.exchange.deadline().is_none_or(|deadline| deadline > now)
                || self.by_key.get(&try_key) != Some(&slot)
            {
                continue;
            }
            self.by_key.remove(&try_key);
            self.sockets.release(try_key.0, Some(try_key.1));
            let command = self.exchange(slot).on(Event::Timeout, now);
            self.carry_out(slot, command, now);
        }
        self.sockets.sweep(now);
    }
}
