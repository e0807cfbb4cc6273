//! Counters for one upstream server, kept by address so that they survive a reload that keeps
//! the upstream (the upstream list itself is rebuilt).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::traffic::Proto;

#[derive(Debug, Default)]
pub struct UpstreamStats {
    requests: [AtomicU64; 2],
    timeouts: AtomicU64,
    failures: AtomicU64,
}

impl UpstreamStats {
    /// A try left for this upstream.
    pub fn request(&self, proto: Proto) {
        self.requests[proto as usize].fetch_add(1, Relaxed);
    }

    /// A try got no answer in time.
    pub fn timeout(&self) {
        self.timeouts.fetch_add(1, Relaxed);
    }

    /// A try failed otherwise: SERVFAIL or REFUSED, a send error, a broken TCP exchange.
    pub fn failure(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    pub fn requests_of(&self, proto: Proto) -> u64 {
        self.requests[proto as usize].load(Relaxed)
    }

    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }
}
