//! Forwarding: everything that is not a local name goes to the upstream servers and their
//! answers come back byte for byte (a raw relay, not a resolver that re-synthesizes answers).
//!
//! - `upstream`: the upstream list, its order and health;
//! - `udp`: the per-worker UDP relay (socket pools, in-flight table, timeouts, failover);
//! - `tcp`: the TCP relay for TCP clients;
//! - `reply`: which upstream replies count, for both relays;
//! - `loop_probe`: detecting an upstream that forwards back to us.

mod loop_probe;
pub mod reply;
pub mod tcp;
pub mod udp;
mod upstream;

use std::sync::atomic::{AtomicUsize, Ordering};

pub use loop_probe::LoopProbe;
pub use upstream::{MAX_UPSTREAMS, Upstreams};

use crate::dns::wire::rcode;

/// Whether an upstream's answer with `code` counts as that upstream failing, so that the query
/// moves on to the next upstream: SERVFAIL and REFUSED say "not from me", not "no such name".
fn moves_on(code: u16) -> bool {
    code == rcode::SERVFAIL || code == rcode::REFUSED
}

/// The cap on forwarded queries in flight across all workers and transports (`--max-concurrent`):
/// beyond it clients get REFUSED at once, so memory stays bounded when upstreams stall.
#[derive(Debug)]
pub struct InFlight {
    count: AtomicUsize,
    max: usize,
}

impl InFlight {
    pub fn new(max: usize) -> Self {
        Self { count: AtomicUsize::new(0), max }
    }

    pub fn try_acquire(&self) -> bool {
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub fn release(&self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }

    /// Queries in flight now (for metrics).
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Relaxed).min(self.max)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}
