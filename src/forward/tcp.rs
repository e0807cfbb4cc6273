//! The TCP driver: a query that came over TCP goes upstream over TCP (RFC 7766), so that answers
//! too large for UDP arrive whole. One connection per try keeps this simple; TCP is the rare path.
//!
//! [`answer`] is the entry point for a TCP connection's query: [`Exchange::begin`] decides what
//! the client gets, exactly as for a UDP worker's, and the exchange it starts runs in a task of
//! its own (`drive`), so that it can go on (to refresh the cache) after its client got a stale
//! answer.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tracing::debug;

use super::{Begin, ClientQuery, Command, Event, Exchange, Forwarder, Output, ReplyTo};
use crate::dns::Transport;
use crate::dns::wire::Edns;
use crate::metrics::{Path, Traffic};

/// The client's answer to `query`, a query `request::handle` chose to forward, that arrived at
/// `arrived`; with the path it took when it was answered at once (the caller records that
/// latency; the exchange records the others). Empty when nobody answers it (the process is
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
    let client_query = ClientQuery::new(&query, question_end, edns, Transport::Tcp, arrived);
    let upstreams = forwarder.upstreams();
    let begin = Exchange::begin(&forwarder, client_query, ReplyTo::Tcp(reply_to), &upstreams, &traffic, &mut out);
    match begin {
        Begin::Answered(path) => return (out, Some(path)),
        Begin::AnsweredAndRefresh(path, exchange) => {
            tokio::spawn(drive(exchange, Output::new(traffic)));
            return (out, Some(path));
        }
        Begin::Ask(exchange) => {
            tokio::spawn(drive(exchange, Output::new(traffic)));
        }
        Begin::Parked => {}
    }
    (answer.await.unwrap_or_default(), None)
}

/// A try's connection: the upstream's reply, or why there is none.
type Connection = Pin<Box<dyn Future<Output = std::io::Result<Vec<u8>>> + Send>>;

/// Runs `exchange` over TCP to its end, its answers written into `output`: each try on a
/// connection of its own, and a tick at each of the exchange's deadlines.
async fn drive(mut exchange: Exchange, mut output: Output) {
    let mut connection: Option<(SocketAddr, Connection)> = None;
    let mut event = Event::Start;
    let mut reply;
    loop {
        let mut command = exchange.on(event, Instant::now(), &mut output);
        while let Some(next) = command {
            match next {
                Command::Send(upstream) => {
                    exchange.assign_id(rand::random());
                    let addr = exchange.upstreams().addr(upstream);
                    connection = Some((addr, Box::pin(ask_once(addr, exchange.query().to_vec()))));
                }
                Command::Answer { to: ReplyTo::Tcp(client), bytes } => {
                    // The connection is gone when its client hung up: nobody to answer.
                    let _ = client.send(bytes.to_vec());
                }
                Command::Done => return,
                // Only TCP clients wait for a TCP exchange, and over TCP a reply that is not the
                // answer fails the try: nothing is ignored or rechecked.
                Command::Answer { to: ReplyTo::Udp { .. }, .. } | Command::Ignore | Command::Recheck(_) => {}
            }
            command = exchange.poll(&mut output);
        }
        let deadline = exchange.next_deadline();
        event = tokio::select! {
            result = async { connection.as_mut().expect("a try is out").1.as_mut().await }, if connection.is_some() => {
                let (addr, _) = connection.take().expect("a try is out");
                match result {
                    Ok(bytes) => {
                        reply = bytes;
                        Event::Reply(&reply)
                    }
                    Err(e) => {
                        debug!(upstream = %addr, error = %e, "TCP upstream failed");
                        Event::Failed
                    }
                }
            }
            () = sleep_until(deadline) => Event::Tick,
        };
    }
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// One query and its answer over a new TCP connection to `addr`, within `timeout`.
pub async fn ask(addr: SocketAddr, query: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    tokio::time::timeout(timeout, ask_once(addr, query.to_vec()))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

async fn ask_once(addr: SocketAddr, query: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
    framed.extend_from_slice(&query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut answer = vec![0u8; usize::from(len)];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}
