//! TCP forwarding: a query that came over TCP goes upstream over TCP (RFC 7766), so answers too
//! large for UDP arrive whole. One connection per query keeps this simple; TCP is the rare path.
//!
//! [`answer`] is the TCP entry point: TCP's front decides what the client gets, exactly as a UDP
//! worker's does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::front::{Begin, Outcome, Ticket};
use super::reply::{self, Verdict};
use super::{Forwarding, Upstreams};
use crate::cache::CLIENT_TIMER;
use crate::dns::wire::{self, Edns};
use crate::metrics::{Path, Proto};

/// The client's answer to `query`, a query `request::handle` chose to forward, that arrived at
/// `arrived`; with the path it took when it was answered at once (the caller records that
/// latency; the front records the others).
pub async fn answer(
    forwarding: Arc<Forwarding>,
    query: Vec<u8>,
    question_end: usize,
    edns: Option<Edns>,
    arrived: Instant,
) -> (Vec<u8>, Option<Path>) {
    let mut out = Vec::new();
    let begin = forwarding.with_tcp(|front| front.begin(&query, question_end, edns, arrived, &mut out));
    let ticket = match begin {
        Begin::Answered(path) => return (out, Some(path)),
        Begin::AnsweredAndRefresh(path, ticket) => {
            let exchange = ask(&forwarding, query.clone(), question_end);
            tokio::spawn(async move {
                let relayed = exchange.await;
                conclude(&forwarding, &query, ticket, relayed);
            });
            return (out, Some(path));
        }
        Begin::Ask(ticket) => ticket,
    };
    let mut exchange = Box::pin(ask(&forwarding, query.clone(), question_end));
    if ticket.stale_fallback {
        // An expired answer is held: the client gets it if the upstreams take longer than the
        // client timer, and the exchange goes on in the background to refresh the cache.
        tokio::select! {
            relayed = &mut exchange => return (conclude(&forwarding, &query, ticket, relayed), None),
            () = tokio::time::sleep_until((ticket.started + CLIENT_TIMER).into()) => {}
        }
        let now = Instant::now();
        if forwarding.with_tcp(|front| front.client_timer(&query, wire::id(&query), ticket, now, &mut out)) {
            let mut ticket = ticket;
            ticket.client_waits = false;
            tokio::spawn(async move {
                let relayed = exchange.await;
                conclude(&forwarding, &query, ticket, relayed);
            });
            return (out, None);
        }
    }
    let relayed = exchange.await;
    (conclude(&forwarding, &query, ticket, relayed), None)
}

/// The upstreams' exchange for `query`, owning what it needs so that it can outlive the client.
fn ask(forwarding: &Forwarding, query: Vec<u8>, question_end: usize) -> impl Future<Output = Relayed> + 'static {
    let upstreams = forwarding.upstreams.load_full();
    let timeout = forwarding.timeout;
    async move { forward(&upstreams, &query, question_end, timeout).await }
}

/// Hands the upstreams' outcome for `query` to TCP's front; returns the client's answer (empty
/// when no client waits for it).
fn conclude(forwarding: &Forwarding, query: &[u8], ticket: Ticket, relayed: Relayed) -> Vec<u8> {
    let outcome = match &relayed {
        Relayed::Answer(answer) => Outcome::Answer(answer),
        Relayed::Failed(last) => Outcome::Failed { last: last.as_deref() },
    };
    let mut out = Vec::new();
    let now = Instant::now();
    forwarding.with_tcp(|front| front.finish(query, wire::id(query), ticket, outcome, now, &mut out));
    out
}

/// What the upstreams made of a query.
enum Relayed {
    Answer(Vec<u8>),
    /// None answered; the last SERVFAIL or REFUSED, if one came.
    Failed(Option<Vec<u8>>),
}

/// Relays `packet` to the upstreams in turn, under a random ID of ours.
async fn forward(upstreams: &Upstreams, packet: &[u8], question_end: usize, timeout: Duration) -> Relayed {
    let mut query = packet.to_vec();
    let mut tried = 0u32;
    let mut last_refusal = None;
    while let Some(upstream) = upstreams.next(tried) {
        tried |= 1 << upstream;
        let id: u16 = rand::random();
        wire::set_id(&mut query, id);
        let addr = upstreams.addr(upstream);
        upstreams.record_request(upstream, Proto::Tcp);
        match tokio::time::timeout(timeout, exchange(addr, &query)).await {
            Ok(Ok(answer)) => match reply::judge(&query, question_end, &answer) {
                Verdict::Accept => {
                    upstreams.record_success(upstream);
                    return Relayed::Answer(answer);
                }
                Verdict::MoveOn => {
                    upstreams.record_failure(upstream);
                    last_refusal = Some(answer);
                }
                Verdict::Ignore => {
                    debug!(upstream = %addr, "ignoring a TCP answer that is not for this query, or a cut-off one");
                    upstreams.record_failure(upstream);
                }
            },
            Ok(Err(e)) => {
                debug!(upstream = %addr, error = %e, "TCP upstream failed");
                upstreams.record_failure(upstream);
            }
            Err(_) => {
                debug!(upstream = %addr, "TCP upstream timed out");
                upstreams.record_timeout(upstream);
            }
        }
    }
    Relayed::Failed(last_refusal)
}

/// One query and its answer over a new TCP connection to `addr`.
pub(super) async fn exchange(addr: std::net::SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
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
