//! Forwarding: every query that is not for a local name goes to the upstream servers, and their
//! answer is relayed (passed on unchanged but for the ID) through the packet cache.
//!
//! An [`Exchange`] (`exchange.rs`) owns everything that happens to one forwarded query and
//! returns [`Command`]s; a driver (`udp/driver.rs` for a worker's datagrams, `tcp.rs` for a
//! connection's query) moves the bytes and keeps the sockets. Both lives below can be read in
//! `exchange.rs` and `udp/driver.rs` alone, in this order.
//!
//! **The life of a miss** (UDP):
//! 1. The worker hands the query to [`udp::UdpDriver::query`], which calls [`Exchange::begin`].
//! 2. `begin` computes the cache key and looks it up: nothing servable, no flight under way.
//! 3. It takes a place under `--max-concurrent`, leads the key's flight, and makes the exchange.
//! 4. The driver gives the exchange a ticket and feeds it [`Event::Start`].
//! 5. The exchange picks the first healthy upstream: [`Command::Send`].
//! 6. The driver picks a socket and an ID unique on it; the try leaves in the batch's `sendmmsg`.
//! 7. The reply comes back on that socket with that ID: the driver feeds [`Event::Reply`].
//! 8. The exchange judges it, relays it to its client ([`Command::Answer`]), lands the flight in
//!    the cache, answers each client parked on it meanwhile, and says [`Command::Done`].
//! 9. The driver queues each answer in its listener's batch, frees the ticket, sends the batch.
//! 10. Had no reply come, [`Event::Tick`] at [`Exchange::next_deadline`] would have moved on.
//!
//! **The life of a stale answer** (RFC 8767):
//! 1. A client asks for a name whose answer expired less than `--serve-stale` ago.
//! 2. `begin` finds it held, with no refresh under way and none failed in the last 30 s.
//! 3. The exchange leads the flight as for a miss, knowing an answer is held: its refresh.
//! 4. Meanwhile every other client of the name gets the held answer from `begin` at once.
//! 5. [`Exchange::next_deadline`] is the earlier of the try's timeout and 1.8 s after arrival.
//! 6. At 1.8 s the driver feeds [`Event::Tick`]: the exchange writes the held answer (TTL 30,
//!    the client's ID) and marks the refresh failed for now: [`Command::Answer`].
//! 7. The tries go on, with no client waiting; each timeout moves on to the next upstream.
//! 8. An answer lands in the cache, fresh again; if every upstream fails instead, the held answer
//!    stays, served at once for 30 s before the upstreams are asked again.
//! 9. Had every upstream failed before 1.8 s, the client would have got the held answer then.
//! 10. Had the answer been flushed meanwhile, the client would have waited for the upstreams.
//!
//! - `exchange`: one forwarded query's whole life, for both transports;
//! - `forwarder`: what every query shares: the upstream list, the cache, the cap, the timeout;
//! - `client`: where each client's answer goes, and the clients parked on a flight;
//! - `concurrency_cap`: the `--max-concurrent` cap;
//! - `reply`: which upstream replies count;
//! - `upstreams`: the upstream list, its order, health and spoofing episodes;
//! - `udp`: a worker's UDP driver and its short-lived upstream sockets;
//! - `tcp`: the TCP driver;
//! - `loop_probe`: detecting an upstream that forwards back to us.

mod client;
mod concurrency_cap;
mod exchange;
mod forwarder;
mod loop_probe;
pub mod reply;
pub mod tcp;
pub mod udp;
mod upstreams;

pub use client::ReplyTo;
pub use exchange::{Begin, ClientQuery, Command, Event, Exchange, Output};
pub use forwarder::Forwarder;
pub use loop_probe::LoopProbe;
pub use upstreams::{MAX_UPSTREAMS, Upstreams};
