//! A UDP worker's driver: carries its exchanges' tries to the upstreams over UDP, brings back what
//! happens to them, and sends the answers they give, for one upstream list.
//!
//! Each worker thread owns one, so nothing here is shared or locked. Spoofing resistance follows
//! RFC 5452: each try leaves with a random ID on a short-lived connected socket on a random port
//! (`sockets`), and a reply reaches its exchange only when its socket and ID match a try out. A
//! datagram that matches none is counted against its upstream as a likely forgery, and the
//! replies still due on its socket are suspect: the exchange has them asked again over TCP.
//!
//! Every leg is batched, because system calls are most of forwarding's cost: tries are queued and
//! leave in one `sendmmsg` per upstream socket, replies are read with `recvmmsg` from every socket
//! one wakeup found ready, and answers go back to clients in one `sendmmsg` per listener. Callers
//! call [`UdpDriver::send_queued`] after each batch.
//!
//! Nothing a client sees is decided here: the driver hands each query to [`Exchange::begin`],
//! feeds each exchange its [`Event`]s and carries out its [`Command`]s. Each exchange has a
//! ticket: its place in the driver's table.

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

use super::SharedDriver;
use super::sockets::{EpollSet, SocketRef, Sockets};
use crate::forward::{Begin, ClientQuery, Command, Event, Exchange, Forwarder, Output, ReplyTo, Upstreams, tcp};
use crate::metrics::{Path, Traffic};
use crate::net::batch::{BATCH, RecvBatch, SendBatch};

/// Largest upstream reply we relay: any UDP DNS message.
const MAX_REPLY: usize = 65535;

/// A non-blocking UDP socket registered with the worker's runtime.
pub type Socket = Rc<AsyncFd<std::net::UdpSocket>>;

/// A try whose UDP reply is to be checked over TCP; [`Recheck::run`] does it.
pub(super) struct Recheck {
    ticket: usize,
    upstream: SocketAddr,
    /// The query as it went upstream.
    query: Vec<u8>,
}

impl Recheck {
    /// Asks the upstream over TCP within `timeout`, and hands the outcome to `driver`'s exchange.
    pub(super) async fn run(self, driver: SharedDriver, timeout: Duration) {
        let answer = tcp::ask(self.upstream, &self.query, timeout).await.ok();
        let mut driver = driver.borrow_mut();
        driver.feed(self.ticket, Event::Rechecked(answer.as_deref()), Instant::now());
        driver.send_queued();
    }
}

/// An exchange under way, and the UDP try it has out: its socket and the ID it was sent with.
struct Running {
    exchange: Exchange,
    out: Option<(SocketRef, u16)>,
}

/// What an exchange said last after an event, once its answers are out.
enum Last {
    Wait,
    Ignore,
    Send(usize),
    Recheck(usize),
    Done,
}

pub struct UdpDriver {
    forwarder: Arc<Forwarder>,
    upstreams: Arc<Upstreams>,
    sockets: Sockets,
    /// Per upstream, its spoofing episodes this driver has replaced its sockets for.
    episodes_seen: Vec<u32>,
    /// The exchanges under way, by ticket.
    running: Vec<Option<Running>>,
    free: Vec<usize>,
    /// The tries out, by socket and ID.
    tries: FxHashMap<(SocketRef, u16), usize>,
    /// TCP checks asked for since the caller last took them.
    rechecks: Vec<Recheck>,
    ready: Vec<SocketRef>,
    /// Tries waiting for [`UdpDriver::send_queued`]: (socket, ticket).
    queued: Vec<(SocketRef, usize)>,
    outgoing: SendBatch,
    answers: AnswerBatches,
    replies: Option<RecvBatch>,
    /// Where exchanges write an answer before it joins its batch.
    output: Output,
    traffic: Arc<Traffic>,
    rng: ThreadRng,
}

/// The worker's answer batches, one per listener.
struct AnswerBatches {
    listeners: Vec<Socket>,
    batches: Vec<SendBatch>,
}

impl AnswerBatches {
    /// Queues the answer just written into `output` for the client at `to` (a UDP answer leaves
    /// without a copy).
    fn deliver(&mut self, to: ReplyTo, output: &mut Output) {
        match to {
            ReplyTo::Udp { listener, client } => {
                let batch = &mut self.batches[listener];
                if batch.is_full() {
                    batch.send(self.listeners[listener].as_raw_fd());
                }
                output.swap_answer(batch.buffer());
                batch.commit(Some(client));
            }
            // The connection is gone when its client hung up: nobody to answer.
            ReplyTo::Tcp(connection) => {
                let _ = connection.send(output.answer().to_vec());
            }
        }
    }

    fn send(&mut self) {
        for (batch, listener) in self.batches.iter_mut().zip(&self.listeners) {
            batch.send(listener.as_raw_fd());
        }
    }
}

impl UdpDriver {
    /// A driver for `upstreams` answering clients on `listeners`, by index; must run inside the
    /// worker's runtime. The caller runs its receive loop on [`UdpDriver::epoll_set`].
    pub(super) fn new(
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
            running: Vec::new(),
            free: Vec::new(),
            tries: FxHashMap::default(),
            rechecks: Vec::new(),
            ready: Vec::new(),
            queued: Vec::new(),
            outgoing: SendBatch::default(),
            answers: AnswerBatches { batches: listeners.iter().map(|_| SendBatch::default()).collect(), listeners },
            replies: Some(RecvBatch::new(MAX_REPLY)),
            output: Output::new(traffic.clone()),
            traffic,
            rng: rand::rng(),
        })
    }

    /// The upstream list this driver has sockets for.
    pub(super) fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// What the receive loop waits on: any upstream socket readable.
    pub(super) fn epoll_set(&self) -> Rc<AsyncFd<EpollSet>> {
        self.sockets.epoll_set()
    }

    /// Exchanges under way.
    pub fn pending(&self) -> usize {
        self.running.len() - self.free.len()
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
        match Exchange::begin(&self.forwarder, query, reply_to, &self.upstreams, &self.traffic, out) {
            Begin::Answered(path) => Some(path),
            Begin::Parked => None,
            Begin::Ask(exchange) => {
                self.start(exchange, query.arrived());
                None
            }
            Begin::AnsweredAndRefresh(path, exchange) => {
                self.start(exchange, query.arrived());
                Some(path)
            }
        }
    }

    fn start(&mut self, exchange: Exchange, now: Instant) {
        let running = Some(Running { exchange, out: None });
        let ticket = match self.free.pop() {
            Some(ticket) => {
                self.running[ticket] = running;
                ticket
            }
            None => {
                self.running.push(running);
                self.running.len() - 1
            }
        };
        self.feed(ticket, Event::Start, now);
    }

    /// Feeds `event` to the exchange of `ticket` and carries out what it says.
    fn feed(&mut self, ticket: usize, event: Event<'_>, now: Instant) {
        let timed_out = matches!(event, Event::Tick);
        let running = self.running[ticket].as_mut().expect("live ticket");
        let mut command = running.exchange.on(event, now, &mut self.output);
        let last = loop {
            match command {
                None => break Last::Wait,
                Some(Command::Answer { to, .. }) => self.answers.deliver(to, &mut self.output),
                Some(Command::Ignore) => break Last::Ignore,
                Some(Command::Send(upstream)) => break Last::Send(upstream),
                Some(Command::Recheck(upstream)) => break Last::Recheck(upstream),
                Some(Command::Done) => break Last::Done,
            }
            command = running.exchange.poll(&mut self.output);
        };
        match last {
            Last::Wait => {}
            // Its try keeps waiting on its socket, which has now seen a datagram that is no answer.
            Last::Ignore => {
                if let Some((socket, _)) = running.out {
                    self.unexpected(socket, now);
                }
            }
            Last::Send(upstream) => {
                self.end_try(ticket, timed_out);
                if let Err(e) = self.queue(ticket, upstream, now) {
                    debug!(upstream = %self.upstreams.addr(upstream), error = %e, "cannot open an upstream socket");
                    self.feed(ticket, Event::Failed, now);
                }
            }
            Last::Recheck(upstream) => {
                // A forger knows this port and may have guessed this ID: its reply may still come.
                self.end_try(ticket, true);
                let query = self.exchange(ticket).query().to_vec();
                self.rechecks.push(Recheck { ticket, upstream: self.upstreams.addr(upstream), query });
            }
            Last::Done => {
                self.end_try(ticket, timed_out);
                self.running[ticket] = None;
                self.free.push(ticket);
            }
        }
    }

    fn exchange(&mut self, ticket: usize) -> &mut Exchange {
        &mut self.running[ticket].as_mut().expect("live ticket").exchange
    }

    /// The UDP try of `ticket` is over; with `late` its reply may still come (it timed out, or is
    /// checked over TCP) and is no forgery then.
    #[inline]
    fn end_try(&mut self, ticket: usize, late: bool) {
        let running = self.running[ticket].as_mut().expect("live ticket");
        if let Some((socket, id)) = running.out.take() {
            self.tries.remove(&(socket, id));
            self.sockets.release(socket, late.then_some(id));
        }
    }

    /// Queues the try of `ticket` for `upstream`, on a socket and with an ID that no other try on
    /// that socket has.
    fn queue(&mut self, ticket: usize, upstream: usize, now: Instant) -> io::Result<()> {
        let episodes = self.upstreams.episodes(upstream);
        if self.episodes_seen[upstream] != episodes {
            self.episodes_seen[upstream] = episodes;
            self.sockets.replace_all(upstream);
        }
        let socket = self.sockets.take(upstream, now)?;
        let id = loop {
            let id: u16 = self.rng.random();
            if !self.tries.contains_key(&(socket, id)) {
                break id;
            }
        };
        let running = self.running[ticket].as_mut().expect("live ticket");
        running.exchange.assign_id(id);
        running.out = Some((socket, id));
        self.tries.insert((socket, id), ticket);
        self.queued.push((socket, ticket));
        Ok(())
    }

    /// Sends every queued try (one `sendmmsg` per socket; a try the kernel does not take has
    /// failed)
    /// and every answer waiting (one `sendmmsg` per listener).
    pub fn send_queued(&mut self) {
        while !self.queued.is_empty() {
            let mut queued = std::mem::take(&mut self.queued);
            queued.sort_unstable_by_key(|&(socket, _)| socket);
            for group in queued.chunk_by(|a, b| a.0 == b.0) {
                let fd = self.sockets.fd(group[0].0);
                for chunk in group.chunks(BATCH) {
                    for &(_, ticket) in chunk {
                        self.outgoing.push(self.running[ticket].as_ref().expect("live ticket").exchange.query(), None);
                    }
                    let failed = self.outgoing.send(fd);
                    for (i, &(_, ticket)) in chunk.iter().enumerate() {
                        if failed & (1 << i) != 0 {
                            self.feed(ticket, Event::Failed, Instant::now());
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

    /// Reads every upstream socket with replies waiting and handles each reply; returns whether
    /// more sockets may be waiting (false: all drained, the caller may wait for readiness again).
    pub(super) fn receive(&mut self) -> io::Result<bool> {
        self.ready.clear();
        let mut ready = std::mem::take(&mut self.ready);
        let more = self.sockets.ready(&mut ready)?;
        let mut replies = self.replies.take().expect("not re-entered");
        for &socket in &ready {
            // Readiness is edge-triggered: read until a short batch proves the queue empty.
            while self.sockets.is_open(socket) {
                match replies.recv(self.sockets.fd(socket)) {
                    Ok(n) => {
                        let now = Instant::now();
                        for i in 0..n {
                            if let Some(reply) = replies.message(i) {
                                self.on_reply(socket, reply, now);
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
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => self.port_unreachable(socket),
                    Err(e) => debug!(error = %e, "upstream socket error"),
                }
            }
        }
        self.replies = Some(replies);
        self.ready = ready;
        Ok(more)
    }

    /// The upstream of `socket` has no one listening on its port: every try out on that socket
    /// failed.
    fn port_unreachable(&mut self, socket: SocketRef) {
        let now = Instant::now();
        let tickets: Vec<usize> =
            self.tries.iter().filter(|((on, _), _)| *on == socket).map(|(_, &ticket)| ticket).collect();
        for ticket in tickets {
            self.feed(ticket, Event::Failed, now);
        }
    }

    /// Handles a datagram from upstream `socket`. Anything that is not the answer to a try on
    /// that socket, with its ID and question, is ignored (RFC 5452) and counted.
    fn on_reply(&mut self, socket: SocketRef, reply: &[u8], now: Instant) {
        let id = crate::dns::wire::id(reply);
        let Some(&ticket) = self.tries.get(&(socket, id)) else {
            if !self.sockets.is_late(socket, id) {
                self.unexpected(socket, now);
            }
            return;
        };
        let event = if self.sockets.is_suspect(socket) { Event::SuspectReply(reply) } else { Event::Reply(reply) };
        self.feed(ticket, event, now);
    }

    /// A datagram on `socket` matched no try out.
    fn unexpected(&mut self, socket: SocketRef, now: Instant) {
        debug!("ignoring an upstream reply that matches no query in flight");
        if let Some(upstream) = self.sockets.upstream(socket) {
            self.upstreams.record_unexpected(upstream, now);
        }
        self.sockets.suspect(socket);
    }

    /// The TCP checks asked for since the last call, for the caller to run.
    pub(super) fn take_rechecks(&mut self) -> Vec<Recheck> {
        std::mem::take(&mut self.rechecks)
    }

    /// Ticks every exchange whose [`Exchange::next_deadline`] has come at `now`: tries time out,
    /// clients get stale answers. A scan of the exchanges under way, which `--max-concurrent`
    /// bounds: memory stays proportional to the queries in flight, whatever the query rate and
    /// the timeout.
    pub(super) fn tick(&mut self, now: Instant) {
        for ticket in 0..self.running.len() {
            let due = self.running[ticket].as_ref().and_then(|r| r.exchange.next_deadline());
            if due.is_some_and(|due| due <= now) {
                self.feed(ticket, Event::Tick, now);
            }
        }
        self.sockets.sweep(now);
    }
}
