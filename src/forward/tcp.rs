//! The TCP driver: a query that came over TCP goes upstream over TCP (RFC 7766), so that answers
//! too large for UDP arrive whole. One connection per try keeps this simple; TCP is the rare path.
//!
//! [`answer`] is the entry point for a TCP connection's query: the [`Forwarder`] decides what the
//! client gets, exactly as for a UDP worker's, and the exchange it starts runs in a task of its
//! own, so that it can go on (to refresh the cache) after its client got a stale answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tracing::debug;

use super::{Begin, ClientQuery, Command, Event, Exchange, Forwarder, NoUdp, ReplyTo};
use crate::dns::Transport;
use crate::dns::wire::Edns;
use crate::metrics::{Path, Traffic};

/// The client's answer to `query`, a query `request::handle` chose to forward, that arrived at
/// `arrived`; with the path it took when it was answered at once (the caller records that
/// latency; the forwarder records the others). Empty when nobody answers it (the process is
/// stopping): nothing is sent, as for a lost datagram.
pub async fn answer(
    forwarder: Arc<Forwarder>,
    query: Vec<u8>,
    question_end: usize,
    edns: Option<Edns>,
    arrived: Instant,
    traffic: Arc<Traffic>,
) -> (Vec<u8>, Option<Path>) {
    let mut out = Vec::new();
    let (reply_to, answer) = oneshot::channel();
    let client_query = ClientQuery { packet: &query, question_end, edns, transport: Transport::Tcp, arrived };
    let upstreams = forwarder.upstreams();
    let begin = forwarder.begin(client_query, ReplyTo::Tcp(reply_to), &upstreams, &traffic, &mut out);
    match begin {
        Begin::Answered(path) => return (out, Some(path)),
        Begin::AnsweredAndRefresh(path, exchange) => {
            tokio::spawn(drive(forwarder, exchange, traffic));
            return (out, Some(path));
        }
        Begin::Ask(exchange) => {
            tokio::spawn(drive(forwarder, exchange, traffic));
        }
        Begin::Parked => {}
    }
    (answer.await.unwrap_or_default(), None)
}

/// Runs `exchange` over TCP to its end, serving its client a stale answer if one is due first.
async fn drive(forwarder: Arc<Forwarder>, mut exchange: Exchange, traffic: Arc<Traffic>) {
    let now = Instant::now();
    let mut upstream = match exchange.start(now) {
        Command::Send(upstream) => upstream,
        other => return end(&forwarder, exchange, other, now, &traffic),
    };
    loop {
        exchange.set_id(rand::random());
        let addr = exchange.upstreams().addr(upstream);
        let deadline = exchange.deadline().expect("a try is out");
        let query = exchange.query().to_vec();
        let mut try_ = std::pin::pin!(tokio::time::timeout_at(deadline.into(), ask_once(addr, &query)));
        let result = loop {
            let stale_due = exchange.stale_due();
            tokio::select! {
                result = &mut try_ => break result,
                () = sleep_until(stale_due), if stale_due.is_some() => {
                    forwarder.serve_stale(&mut exchange, Instant::now(), &traffic, &mut NoUdp);
                }
            }
        };
        let now = Instant::now();
        let reply;
        let event = match result {
            Ok(Ok(bytes)) => {
                reply = bytes;
                Event::Reply(&reply)
            }
            Ok(Err(e)) => {
                debug!(upstream = %addr, error = %e, "TCP upstream failed");
                Event::Failed
            }
            Err(_elapsed) => {
                debug!(upstream = %addr, "TCP upstream timed out");
                Event::Timeout
            }
        };
        upstream = match exchange.on(event, now) {
            Command::Send(next) => next,
            other => return end(&forwarder, exchange, other, now, &traffic),
        };
    }
}

/// Carries out the last command of a TCP exchange: its end.
fn end(forwarder: &Forwarder, exchange: Exchange, command: Command<'_>, now: Instant, traffic: &Traffic) {
    match command {
        Command::Finish(outcome) => forwarder.finish(exchange, outcome, now, traffic, &mut NoUdp),
        // Over TCP a reply that is not the answer fails the try, and nothing is rechecked.
        Command::Send(_) | Command::Ignore | Command::Recheck(_) => {
            unreachable!("a TCP exchange ends, or sends its next try")
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// One query and its answer over a new TCP connection to `addr`, within `timeout`.
pub async fn ask(addr: SocketAddr, query: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    tokio::time::timeout(timeout, ask_once(addr, query))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

async fn ask_once(addr: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut answer = vec![0u8; usize::from(len)];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}
