//! A UDP worker: one thread, one current-thread runtime, one SO_REUSEPORT socket per listen
//! address, and its own forwarder. Workers share nothing but the name table (read without locks)
//! and the upstream health counters, so answers per second grow with cores.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::Guard;
use tokio::sync::watch;
use tokio::task::{JoinHandle, LocalSet};
use tracing::{debug, warn};

use super::Shared;
use crate::dns::wire::{self, rcode};
use crate::forward::Upstreams;
use crate::forward::udp::{Socket, Started, UdpForwarder};
use crate::metrics::{Path, Proto, Refusal, Traffic};
use crate::net::batch::{self, BATCH, RecvBatch, SendBatch};
use crate::request::{self, Action, Transport};

/// Largest query we read; a longer datagram is not a query anyone sends, and is dropped.
const QUERY_BUFFER: usize = 4096;

/// How often timed-out upstream tries are moved on; bounds the timeout's overshoot.
const TIMEOUT_TICK: Duration = Duration::from_millis(20);

/// Runs one worker until `shutdown` turns true, then lets its forwarded queries finish.
pub fn run(sockets: Vec<std::net::UdpSocket>, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    LocalSet::new().block_on(&runtime, async move {
        let listeners = sockets.into_iter().map(|s| batch::register(s).map(Rc::new)).collect::<io::Result<Vec<_>>>()?;
        let traffic = shared.metrics.traffic();
        let relay = Rc::new(RefCell::new(Relay::start(shared.clone(), listeners.clone(), traffic.clone())?));

        let mut tasks = Vec::new();
        for (index, socket) in listeners.into_iter().enumerate() {
            let task = listen(index, socket, shared.clone(), relay.clone(), traffic.clone(), shutdown.clone());
            tasks.push(tokio::task::spawn_local(task));
        }
        for task in tasks {
            if let Ok(Err(e)) = task.await {
                warn!(error = %e, "UDP listener failed");
            }
        }
        // Stopped accepting; give the queries already forwarded the time their tries can take.
        let deadline = Instant::now() + shared.forwarding_bound() + TIMEOUT_TICK * 2;
        while relay.borrow().pending() > 0 && Instant::now() < deadline {
            tokio::time::sleep(TIMEOUT_TICK).await;
        }
        Ok(())
    })
}

/// A forwarder as the worker's tasks share it (one thread: `Rc`, borrowed per batch).
type SharedForwarder = Rc<RefCell<UdpForwarder>>;

/// The worker's forwarder for the upstream list in effect. When a reload swaps the list, the
/// worker opens a new forwarder (new socket pools) for the queries that follow; the old one keeps
/// its sockets until its queries are answered or have timed out, so none is dropped.
struct Relay {
    shared: Arc<Shared>,
    listeners: Vec<Socket>,
    traffic: Arc<Traffic>,
    upstreams: Arc<Upstreams>,
    forwarder: SharedForwarder,
    /// The forwarder's receive and timeout tasks, which hold its sockets.
    tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    fn start(shared: Arc<Shared>, listeners: Vec<Socket>, traffic: Arc<Traffic>) -> io::Result<Self> {
        let upstreams = shared.upstreams.load_full();
        let (forwarder, tasks) = open(&shared, &upstreams, &listeners, &traffic)?;
        Ok(Self { shared, listeners, traffic, upstreams, forwarder, tasks })
    }

    /// The forwarder for the upstreams in effect now (one pointer comparison per batch).
    fn current(&mut self) -> SharedForwarder {
        let upstreams = self.shared.upstreams.load();
        if !Arc::ptr_eq(&upstreams, &self.upstreams) {
            self.upstreams = Guard::into_inner(upstreams);
            match open(&self.shared, &self.upstreams, &self.listeners, &self.traffic) {
                Ok((forwarder, tasks)) => {
                    let old = std::mem::replace(&mut self.forwarder, forwarder);
                    let old_tasks = std::mem::replace(&mut self.tasks, tasks);
                    tokio::task::spawn_local(retire(old, old_tasks, self.shared.forwarding_bound()));
                }
                Err(e) => warn!(error = %e, "cannot open sockets for the new upstreams: still using the previous ones"),
            }
        }
        self.forwarder.clone()
    }

    fn pending(&self) -> usize {
        self.forwarder.borrow().pending()
    }
}

/// A forwarder for `upstreams` with its receive and timeout tasks running.
fn open(
    shared: &Shared,
    upstreams: &Arc<Upstreams>,
    listeners: &[Socket],
    traffic: &Arc<Traffic>,
) -> io::Result<(SharedForwarder, Vec<JoinHandle<()>>)> {
    let (forwarder, upstream_sockets) = UdpForwarder::new(
        upstreams.clone(),
        shared.in_flight.clone(),
        shared.upstream_timeout,
        listeners.to_vec(),
        traffic.clone(),
    )?;
    let forwarder = Rc::new(RefCell::new(forwarder));
    let mut tasks: Vec<_> = upstream_sockets
        .into_iter()
        .map(|(key, socket)| tokio::task::spawn_local(receive_upstream(key, socket, forwarder.clone())))
        .collect();
    tasks.push(tokio::task::spawn_local(expire_timeouts(forwarder.clone())));
    Ok((forwarder, tasks))
}

/// Lets a replaced forwarder finish its queries (bounded by their tries), then closes its sockets.
async fn retire(forwarder: SharedForwarder, tasks: Vec<JoinHandle<()>>, bound: Duration) {
    let deadline = Instant::now() + bound + TIMEOUT_TICK * 2;
    while forwarder.borrow().pending() > 0 && Instant::now() < deadline {
        tokio::time::sleep(TIMEOUT_TICK).await;
    }
    for task in tasks {
        task.abort();
    }
}

/// Reads queries in batches, answers local ones in batches, hands the rest to the forwarder.
async fn listen(
    index: usize,
    socket: Socket,
    shared: Arc<Shared>,
    relay: Rc<RefCell<Relay>>,
    traffic: Arc<Traffic>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut received = RecvBatch::new(QUERY_BUFFER);
    let mut answers = SendBatch::default();
    let mut read_batch = |fd| {
        let n = received.recv(fd)?;
        // One clock read per batch: every answer of the batch leaves with the final sendmmsg.
        let arrived = Instant::now();
        let (mut local, mut refused) = (0, 0);
        let table = shared.names.load();
        let allow = shared.allow.load();
        let probe = shared.probe.load();
        let forwarder = relay.borrow_mut().current();
        let mut forwarder = forwarder.borrow_mut();
        for i in 0..n {
            let Some((packet, client)) = received.get(i) else { continue };
            let out = answers.buffer();
            let allowed = allow.allows(client.ip());
            let action = match allowed {
                true => request::handle(packet, Transport::Udp, &table, &probe, out),
                false => request::refuse(packet, out),
            };
            match action {
                Action::Reply { qtype } => {
                    traffic.query(Proto::Udp, qtype);
                    if allowed {
                        traffic.response(Path::Local, wire::rcode_of(out));
                        local += 1;
                    } else {
                        traffic.refused(Refusal::NotAllowed);
                        refused += 1;
                    }
                    answers.commit(Some(client));
                }
                Action::Forward { question_end, edns, qtype } => {
                    traffic.query(Proto::Udp, Some(qtype));
                    if forwarder.start(packet, question_end, edns, client, index) == Started::OverCapacity {
                        wire::write_empty_answer(packet, Some(question_end), rcode::REFUSED, edns.as_ref(), false, out);
                        answers.commit(Some(client));
                        traffic.refused(Refusal::OverCapacity);
                        refused += 1;
                    }
                }
                Action::Drop => traffic.dropped(),
            }
        }
        forwarder.flush();
        answers.flush(fd);
        let elapsed = arrived.elapsed();
        traffic.latency(Path::Local, elapsed, local);
        traffic.latency(Path::Refused, elapsed, refused);
        Ok(n)
    };
    loop {
        tokio::select! {
            drained = batch::drain(&socket, &mut read_batch) => {
                if let Err(e) = drained {
                    debug!(error = %e, "UDP receive failed");
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    // Until this socket is dropped it stays in the SO_REUSEPORT group and the kernel keeps giving
    // it a share of the queries, so stopping to read would lose them. Keep answering while the
    // forwarded queries finish (bounded by their tries), then answer what is still queued: the
    // kernel discards that with the socket. A restart that overlaps a new instance on the same
    // address then loses nothing.
    let deadline = Instant::now() + shared.forwarding_bound() + TIMEOUT_TICK * 2;
    while relay.borrow().pending() > 0 && Instant::now() < deadline {
        let _ = tokio::time::timeout(TIMEOUT_TICK, batch::drain(&socket, &mut read_batch)).await;
    }
    let fd = socket.get_ref().as_raw_fd();
    while let Ok(n) = read_batch(fd) {
        if n < BATCH {
            break;
        }
    }
    Ok(())
}

async fn receive_upstream(key: u32, socket: Socket, forwarder: SharedForwarder) {
    loop {
        // ECONNREFUSED and the like: an upstream is down; the query's timeout moves it on. The
        // error is consumed by the read that reported it, so the next read goes on.
        if let Err(e) = batch::drain(&socket, |fd| forwarder.borrow_mut().receive(key, fd)).await {
            debug!(error = %e, "upstream socket error");
        }
        forwarder.borrow_mut().flush();
    }
}

async fn expire_timeouts(forwarder: SharedForwarder) {
    let mut tick = tokio::time::interval(TIMEOUT_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut forwarder = forwarder.borrow_mut();
        forwarder.expire(Instant::now());
        forwarder.flush();
    }
}
