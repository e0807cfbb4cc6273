//! Counters of one cache (a UDP worker's, or TCP's), summed at a scrape like [`super::Traffic`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct CacheStats {
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    prefetches: AtomicU64,
    evictions: AtomicU64,
    entries: AtomicU64,
    bytes: AtomicU64,
}

impl CacheStats {
    /// A fresh answer was served.
    pub fn hit(&self) {
        self.hits.fetch_add(1, Relaxed);
    }

    /// A cacheable query found nothing it could be answered with, and went upstream.
    pub fn miss(&self) {
        self.misses.fetch_add(1, Relaxed);
    }

    /// An expired answer was served (RFC 8767).
    pub fn stale(&self) {
        self.stale.fetch_add(1, Relaxed);
    }

    /// A popular entry about to expire was refreshed ahead of time.
    pub fn prefetch(&self) {
        self.prefetches.fetch_add(1, Relaxed);
    }

    pub fn evicted(&self, entries: u64) {
        if entries > 0 {
            self.evictions.fetch_add(entries, Relaxed);
        }
    }

    /// The cache now holds `entries` answers in `bytes`.
    pub fn set_size(&self, entries: usize, bytes: usize) {
        self.entries.store(entries as u64, Relaxed);
        self.bytes.store(bytes as u64, Relaxed);
    }

    /// (hits, misses, stale, prefetches, evictions, entries, bytes)
    pub fn read(&self) -> [u64; 7] {
        [&self.hits, &self.misses, &self.stale, &self.prefetches, &self.evictions, &self.entries, &self.bytes]
            .map(|a| a.load(Relaxed))
    }
}
