//! The clients of a forwarded query: where each one's answer goes, the client whose query started
//! an exchange, and the clients parked on it (single flight).

use std::net::SocketAddr;
use std::time::Instant;

use tokio::sync::oneshot;

use super::concurrency_cap::Permit;
use crate::dns::Transport;
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

impl ReplyTo {
    /// The transport the client asked over.
    pub fn transport(&self) -> Transport {
        match self {
            ReplyTo::Udp { .. } => Transport::Udp,
            ReplyTo::Tcp(_) => Transport::Tcp,
        }
    }
}

/// The client whose query started an exchange: the exchange's query is its query, but for the ID.
#[derive(Debug)]
pub struct Client {
    reply_to: ReplyTo,
    id: u16,
}

impl Client {
    pub fn new(reply_to: ReplyTo, id: u16) -> Self {
        Self { reply_to, id }
    }

    /// The ID of its query, which its answer carries.
    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn into_reply_to(self) -> ReplyTo {
        self.reply_to
    }
}

/// A client parked on the upstream query already under way for its question (single flight),
/// holding its place under `--max-concurrent` until it is answered.
#[derive(Debug)]
pub struct Parked {
    reply_to: ReplyTo,
    /// Its query, for what its answer must carry: its ID, its question's letter case, and its
    /// buffer size.
    query: Box<[u8]>,
    edns: Option<Edns>,
    arrived: Instant,
    _permit: Permit,
}

impl Parked {
    pub fn new(reply_to: ReplyTo, query: &[u8], edns: Option<Edns>, arrived: Instant, permit: Permit) -> Self {
        Self { reply_to, query: query.into(), edns, arrived, _permit: permit }
    }

    pub fn query(&self) -> &[u8] {
        &self.query
    }

    pub fn edns(&self) -> Option<&Edns> {
        self.edns.as_ref()
    }

    pub fn arrived(&self) -> Instant {
        self.arrived
    }

    pub fn transport(&self) -> Transport {
        self.reply_to.transport()
    }

    /// Where its answer goes; its place under the cap is given back.
    pub fn into_reply_to(self) -> ReplyTo {
        self.reply_to
    }
}
