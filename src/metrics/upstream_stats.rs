//! Counters for one upstream server, kept by address so that they survive a reload that keeps
//! the upstream (the upstream list itself is rebuilt).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::dns::Transport;

#[derive(Debug, Default)]
pub struct UpstreamStats {
    requests: [AtomicU64; 2],
    timeouts: AtomicU64,
    failures: AtomicU64,
    unexpected: AtomicU64,
    rechecks: AtomicU64,
    episodes: AtomicU64,
}

impl UpstreamStats {
    /// A try left for this upstream.
    pub fn request(&self, transport: Transport) {
        self.requests[transport as usize].fetch_add(1, Relaxed);
    }

    /// A try got no answer in time.
    pub fn timeout(&self) {
        self.timeouts.fetch_add(1, Relaxed);
    }

    /// A try failed otherwise: SERVFAIL or REFUSED, port unreachable, a send error, a TCP
    /// connection that could not be opened or broke.
    pub fn failure(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    /// A datagram from the upstream's address matched no query in flight.
    pub fn unexpected_reply(&self) {
        self.unexpected.fetch_add(1, Relaxed);
    }

    /// A UDP answer was asked again over TCP because its socket had seen an unexpected reply.
    pub fn recheck(&self) {
        self.rechecks.fetch_add(1, Relaxed);
    }

    /// A spoofing episode began.
    pub fn episode(&self) {
        self.episodes.fetch_add(1, Relaxed);
    }

    pub fn unexpected_replies(&self) -> u64 {
        self.unexpected.load(Relaxed)
    }

    pub fn rechecks(&self) -> u64 {
        self.rechecks.load(Relaxed)
    }

    pub fn episodes(&self) -> u64 {
        self.episodes.load(Relaxed)
    }

    pub fn requests_of(&self, transport: Transport) -> u64 {
        self.requests[transport as usize].load(Relaxed)
    }

    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }
}
