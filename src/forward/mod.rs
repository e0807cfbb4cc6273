//! Forwarding: every query that is not for a local name goes to the upstream servers, and their
//! answer is relayed (passed on unchanged but for the ID) through the packet cache.
//!
//! The life of one forwarded query:
//! 1. A driver (`udp` for a worker's datagrams, `tcp` for a connection) hands it to [`Forwarder::begin`].
//! 2. The forwarder answers it from the cache, parks it on the same question's query under way,
//!    refuses it over `--max-concurrent`, or starts an [`Exchange`] for it.
//! 3. The driver sends the exchange's query where it says and reports back: reply, timeout, error.
//! 4. The exchange judges each reply (`verdict`), moves on to the next upstream (`upstreams`) on
//!    silence, errors, SERVFAIL or REFUSED, and says when the client is due a stale answer.
//! 5. At its end, [`Forwarder::finish`] lets the cache keep the answer and answers every client.
//!
//! - `forwarder`: what clients see, for both transports (cache, cap, single flight, SERVFAIL,
//!   truncation, metrics), and the upstreams and cache a reload replaces;
//! - `exchange`: one query's tries, failover, client timer and verdict, driven by events;
//! - `client`: where each client's answer goes, and the clients parked on a query under way;
//! - `in_flight`: the `--max-concurrent` cap;
//! - `verdict`: which upstream replies count;
//! - `upstreams`: the upstream list, its order, health and spoofing episodes;
//! - `udp`: a worker's UDP driver and its short-lived upstream sockets;
//! - `tcp`: the TCP driver;
//! - `loop_probe`: detecting an upstream that forwards back to us.

mod client;
mod exchange;
mod forwarder;
mod in_flight;
mod loop_probe;
pub mod tcp;
pub mod udp;
mod upstreams;
pub mod verdict;

pub use client::{NoUdp, Parked, ReplyTo, UdpAnswers};
pub use exchange::{Client, Command, Event, Exchange, Outcome};
pub use forwarder::{Begin, ClientQuery, Forwarder};
pub use loop_probe::LoopProbe;
pub use upstreams::{MAX_UPSTREAMS, Upstreams};
