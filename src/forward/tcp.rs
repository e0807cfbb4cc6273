//! TCP forwarding: a query that came over TCP goes upstream over TCP (RFC 7766), so answers too
//! large for UDP arrive whole. One connection per query keeps this simple; TCP is the rare path.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::Upstreams;
use super::reply::{self, Verdict};
use crate::dns::wire;
use crate::metrics::Proto;

/// Relays `packet` to the upstreams in turn; returns the first acceptable answer with the
/// client's ID, or the last SERVFAIL/REFUSED when every upstream gave one, or `None` when none
/// answered at all.
pub async fn forward(upstreams: &Upstreams, packet: &[u8], question_end: usize, timeout: Duration) -> Option<Vec<u8>> {
    let client_id = wire::id(packet);
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
            Ok(Ok(mut answer)) => match reply::judge(&query, question_end, &answer) {
                Verdict::Accept => {
                    wire::set_id(&mut answer, client_id);
                    upstreams.record_success(upstream);
                    return Some(answer);
                }
                Verdict::MoveOn => {
                    wire::set_id(&mut answer, client_id);
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
    last_refusal
}

async fn exchange(addr: std::net::SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
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
