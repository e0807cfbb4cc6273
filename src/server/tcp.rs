//! The TCP listener (RFC 7766): length-prefixed queries, several per connection and answered as
//! they complete (pipelining), an idle timeout (for reads and for writes), and a cap on open
//! connections.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::debug;

use super::Shared;
use crate::dns::{Transport, wire};
use crate::forward::tcp;
use crate::metrics::{Path, Refusal, Traffic};
use crate::request::{self, Action};

/// Answers waiting to be written on one connection.
const WRITE_QUEUE: usize = 32;

/// Forwarded queries one connection may have in progress at once (Knot Resolver's default
/// pipelining limit). Past it the connection is not read until one completes, so TCP flow control
/// slows the client down instead of one client taking every `--max-concurrent` slot from the
/// others. Stub resolvers and CoreDNS send one query at a time per connection, far below it.
const MAX_PIPELINED: usize = 100;

/// Accepts connections until `shutdown`; the returned semaphore has every permit back once all
/// connections are done.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    connections: Arc<Semaphore>,
    traffic: Arc<Traffic>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    debug!(error = %e, "TCP accept failed");
                    continue;
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        // Over the cap the connection is closed at once: the client falls back or retries.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!("TCP connection cap reached");
            continue;
        };
        let allowed = shared.allow.load().allows(peer.ip());
        tokio::spawn(connection(stream, allowed, shared.clone(), traffic.clone(), permit, shutdown.clone()));
    }
}

/// Serves one connection; a client outside `--allow-from` gets REFUSED to each query.
async fn connection(
    stream: TcpStream,
    allowed: bool,
    shared: Arc<Shared>,
    traffic: Arc<Traffic>,
    _permit: OwnedSemaphorePermit,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (answers, mut queue) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let idle_timeout = shared.tcp_idle_timeout;
    let write_loop = tokio::spawn(async move {
        while let Some(answer) = queue.recv().await {
            let mut framed = Vec::with_capacity(answer.len() + 2);
            framed.extend_from_slice(&(answer.len() as u16).to_be_bytes());
            framed.extend_from_slice(&answer);
            // A client that stops reading its answers is as idle as one that stops sending: once
            // a write has stalled this long the connection ends (the reader's next answer finds
            // the queue closed), so that it cannot hold a connection slot for good.
            if !matches!(tokio::time::timeout(idle_timeout, writer.write_all(&framed)).await, Ok(Ok(()))) {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    let pipeline = Arc::new(Semaphore::new(MAX_PIPELINED));
    loop {
        let query = tokio::select! {
            read = tokio::time::timeout(shared.tcp_idle_timeout, read_message(&mut reader)) => match read {
                Ok(Ok(query)) => query,
                Ok(Err(_)) | Err(_) => break,
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let arrived = Instant::now();
        let mut out = Vec::new();
        let action = match allowed {
            true => request::handle(&query, Transport::Tcp, &shared.names.load(), &shared.probe.load(), &mut out),
            false => request::refuse(&query, &mut out),
        };
        match action {
            Action::Reply { qtype } => {
                traffic.query(Transport::Tcp, qtype);
                let path = match allowed {
                    true => {
                        traffic.response(Path::Local, wire::rcode_of(&out));
                        Path::Local
                    }
                    false => {
                        traffic.refused(Refusal::NotAllowed);
                        Path::Refused
                    }
                };
                traffic.latency(path, arrived.elapsed(), 1);
                if answers.send(out).await.is_err() {
                    break;
                }
            }
            Action::LoopedBack { upstream, qtype } => {
                shared.probe.load().drop_upstream(upstream);
                traffic.query(Transport::Tcp, Some(qtype));
                traffic.response(Path::Local, wire::rcode_of(&out));
                traffic.latency(Path::Local, arrived.elapsed(), 1);
                if answers.send(out).await.is_err() {
                    break;
                }
            }
            Action::Forward { question_end, edns, qtype } => {
                traffic.query(Transport::Tcp, Some(qtype));
                let Ok(pipelined) = pipeline.clone().acquire_owned().await else { break };
                let forwarder = shared.forwarder.clone();
                let answers = answers.clone();
                let traffic = traffic.clone();
                tokio::spawn(async move {
                    let (answer, path) =
                        tcp::answer(forwarder, query, question_end, edns, arrived, traffic.clone()).await;
                    if let Some(path) = path {
                        traffic.latency(path, arrived.elapsed(), 1);
                    }
                    if !answer.is_empty() {
                        let _ = answers.send(answer).await;
                    }
                    drop(pipelined);
                });
            }
            // Not a query at all: whatever is on the other end is not a DNS client.
            Action::Drop => {
                traffic.dropped();
                break;
            }
        }
    }
    // Forwards still running hold clones of `answers`; the writer ends after their answers.
    drop(answers);
    let _ = write_loop.await;
}

/// Reads one length-prefixed message. A zero length cannot be a DNS message: the connection ends.
async fn read_message(reader: &mut tokio::net::tcp::OwnedReadHalf) -> io::Result<Vec<u8>> {
    let len = reader.read_u16().await?;
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "zero-length TCP message"));
    }
    let mut message = vec![0u8; usize::from(len)];
    reader.read_exact(&mut message).await?;
    Ok(message)
}
