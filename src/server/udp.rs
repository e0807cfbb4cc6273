//! A UDP worker: one thread, one current-thread runtime, one SO_REUSEPORT socket per listen
//! address, and its own UDP driver for forwarding. Workers share the name table (read without
//! locks), the cache (sharded) and the upstream health counters, so answers per second grow with
//! cores.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::LocalSet;
use tracing::{debug, warn};

use super::Shared;
use crate::dns::Transport;
use crate::dns::wire;
use crate::forward::ClientQuery;
use crate::forward::udp::{CurrentDriver, Socket, TIMEOUT_TICK};
use crate::metrics::{Path, Refusal, Traffic};
use crate::net::batch::{self, BATCH, RecvBatch, SendBatch};
use crate::request::{self, Action};

/// Largest query we read; a longer datagram is not a query anyone sends, and is dropped.
const QUERY_BUFFER: usize = 4096;

/// Runs one worker until `shutdown` turns true, then lets its forwarded queries finish.
pub fn run(sockets: Vec<std::net::UdpSocket>, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    LocalSet::new().block_on(&runtime, async move {
        let listeners = sockets.into_iter().map(|s| batch::register(s).map(Rc::new)).collect::<io::Result<Vec<_>>>()?;
        let traffic = shared.metrics.traffic();
        let forwarding =
            Rc::new(RefCell::new(CurrentDriver::start(shared.forwarder.clone(), listeners.clone(), traffic.clone())?));

        let mut tasks = Vec::new();
        for (index, socket) in listeners.into_iter().enumerate() {
            let task = listen(index, socket, shared.clone(), forwarding.clone(), traffic.clone(), shutdown.clone());
            tasks.push(tokio::task::spawn_local(task));
        }
        for task in tasks {
            if let Ok(Err(e)) = task.await {
                warn!(error = %e, "UDP listener failed");
            }
        }
        // Stopped accepting; give the queries already forwarded the time their tries can take.
        let deadline = Instant::now() + shared.forwarding_bound() + TIMEOUT_TICK * 2;
        while forwarding.borrow().pending() > 0 && Instant::now() < deadline {
            tokio::time::sleep(TIMEOUT_TICK).await;
        }
        Ok(())
    })
}

/// Reads queries in batches, answers local ones in batches, hands the rest to the forwarder.
async fn listen(
    index: usize,
    socket: Socket,
    shared: Arc<Shared>,
    forwarding: Rc<RefCell<CurrentDriver>>,
    traffic: Arc<Traffic>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut received = RecvBatch::new(QUERY_BUFFER);
    let mut answers = SendBatch::default();
    let mut read_batch = |fd| {
        let n = received.recv(fd)?;
        // One clock read per batch: every answer of the batch leaves with the final sendmmsg.
        let arrived = Instant::now();
        // Answers sent with this batch, by path, for the latency histogram.
        let mut sent = [0u64; Path::ALL.len()];
        let table = shared.names.load();
        let allow = shared.allow.load();
        let probe = shared.probe.load();
        let driver = forwarding.borrow_mut().current();
        let mut driver = driver.borrow_mut();
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
                    traffic.query(Transport::Udp, qtype);
                    let path = if allowed {
                        traffic.response(Path::Local, wire::rcode_of(out));
                        Path::Local
                    } else {
                        traffic.refused(Refusal::NotAllowed);
                        Path::Refused
                    };
                    sent[path as usize] += 1;
                    answers.commit(Some(client));
                }
                Action::LoopedBack { upstream, qtype } => {
                    probe.drop_upstream(upstream);
                    traffic.query(Transport::Udp, Some(qtype));
                    traffic.response(Path::Local, wire::rcode_of(out));
                    sent[Path::Local as usize] += 1;
                    answers.commit(Some(client));
                }
                Action::Forward { question_end, edns, qtype } => {
                    traffic.query(Transport::Udp, Some(qtype));
                    let query = ClientQuery::new(packet, question_end, edns, Transport::Udp, arrived);
                    if let Some(path) = driver.query(query, client, index, out) {
                        sent[path as usize] += 1;
                        answers.commit(Some(client));
                    }
                }
                Action::Drop => traffic.dropped(),
            }
        }
        driver.send_queued();
        answers.send(fd);
        let elapsed = arrived.elapsed();
        for path in Path::ALL {
            traffic.latency(path, elapsed, sent[path as usize]);
        }
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
    while forwarding.borrow().pending() > 0 && Instant::now() < deadline {
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
