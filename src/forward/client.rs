//! The clients of a forwarded query: where each one's answer goes, and the clients parked on an
//! upstream query that another client's query started.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::sync::oneshot;

use super::in_flight::Permit;
use crate::dns::wire::Edns;

/// Where a client's answer goes.
#[derive(Debug)]
pub enum ReplyTo {
    /// A UDP client, answered from listen address number `listener`. Every UDP worker has one
    /// socket per listen address, in the same order, all bound to the same address: any worker
    /// can answer any worker's client, and the client sees the address it asked.
    Udp { listener: usize, client: SocketAddr },
    /// A TCP client: its connection waits for the answer here.
    Tcp(oneshot::Sender<Vec<u8>>),
}

/// A client parked on the upstream query already under way for its question (single flight).
#[derive(Debug)]
pub struct Parked {
    pub reply_to: ReplyTo,
    /// Its query, for what its answer must carry: its ID, its question's letter case, and its
    /// buffer size.
    pub query: Box<[u8]>,
    pub edns: Option<Edns>,
    pub arrived: Instant,
    pub permit: Permit,
}

/// The answers a UDP driver sends, batched per listen address.
pub trait UdpAnswers {
    /// A buffer for the next answer out of `listener`, sent by [`UdpAnswers::commit`]; `None`
    /// where there are no UDP listeners (a TCP connection's task), which never happens for a
    /// query that came over UDP.
    fn buffer(&mut self, listener: usize) -> Option<&mut Vec<u8>>;
    /// Sends the buffer's answer to `client`.
    fn commit(&mut self, listener: usize, client: SocketAddr);
}

/// What a TCP connection's task offers for UDP answers: nothing.
pub struct NoUdp;

impl UdpAnswers for NoUdp {
    fn buffer(&mut self, _listener: usize) -> Option<&mut Vec<u8>> {
        None
    }

    fn commit(&mut self, _listener: usize, _client: SocketAddr) {}
}

/// Delivers the answer `write` writes to `to`.
pub fn deliver(to: ReplyTo, answers: &mut impl UdpAnswers, write: impl FnOnce(&mut Vec<u8>)) {
    match to {
        ReplyTo::Udp { listener, client } => {
            if let Some(out) = answers.buffer(listener) {
                write(out);
                answers.commit(listener, client);
            }
        }
        ReplyTo::Tcp(connection) => {
            let mut out = Vec::new();
            write(&mut out);
            // The connection is gone when its client hung up: nobody to answer.
            let _ = connection.send(out);
        }
    }
}
