//! What every forwarded query shares, one for the process: the upstream list and its health, the
//! cache, the `--max-concurrent` cap and the per-try timeout. A reload replaces the upstream list
//! or the cache through its methods; exchanges under way finish with the list and the cache they
//! started with.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption, Guard};

use super::client::Parked;
use super::concurrency_cap::{ConcurrencyCap, Permit};
use super::upstreams::Upstreams;
use crate::cache::{Cache, CachePolicy};
use crate::metrics::ForwardingGauges;

/// Forwarding's shared state.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: ArcSwap<Upstreams>,
    /// `None` with `--cache-size 0`.
    cache: ArcSwapOption<Cache<Parked>>,
    cap: Arc<ConcurrencyCap>,
    timeout: Duration,
    /// UDP workers, which the cache's shard count follows.
    workers: usize,
    /// Evictions of every cache so far (a reload replaces the cache, not the count).
    evictions: Arc<AtomicU64>,
}

impl Forwarder {
    /// Forwarding to `upstreams`, with a cache under `policy` shared by `workers` UDP workers, at
    /// most `max_concurrent` clients waiting for an upstream, each try lasting `timeout`.
    pub fn new(
        upstreams: Arc<Upstreams>,
        policy: CachePolicy,
        max_concurrent: usize,
        timeout: Duration,
        workers: usize,
    ) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        Self {
            upstreams: ArcSwap::new(upstreams),
            cache: ArcSwapOption::new(new_cache(policy, workers, &evictions)),
            cap: ConcurrencyCap::new(max_concurrent),
            timeout,
            workers,
            evictions,
        }
    }

    /// The upstream list in effect.
    pub fn upstreams(&self) -> Arc<Upstreams> {
        self.upstreams.load_full()
    }

    /// Sends new queries to `upstreams` from now on, with an empty cache: its answers came from
    /// the old list. Queries under way finish with the old list.
    pub fn replace_upstreams(&self, upstreams: Arc<Upstreams>) {
        self.upstreams.store(upstreams);
        if let Some(cache) = self.cache.load_full() {
            self.replace_cache(*cache.policy());
        }
    }

    /// Starts over with an empty cache under `policy` (no cache when its size is 0); answers of
    /// queries under way land in the cache they started with, and are lost with it.
    pub fn replace_cache(&self, policy: CachePolicy) {
        self.cache.store(new_cache(policy, self.workers, &self.evictions));
    }

    /// Empties the cache, or drops every answer for `name` (lower-cased wire form); returns how
    /// many answers went.
    pub fn flush(&self, name: Option<&[u8]>) -> usize {
        self.cache.load().as_ref().map_or(0, |cache| cache.flush(name))
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long a forwarded query can still take once it has been started: every upstream's try.
    pub fn bound(&self) -> Duration {
        self.timeout * self.upstreams.load().len().max(1) as u32
    }

    /// The cache in effect, if there is one.
    pub(super) fn cache(&self) -> Guard<Option<Arc<Cache<Parked>>>> {
        self.cache.load()
    }

    /// A place under `--max-concurrent`, if one is free.
    pub(super) fn try_acquire(&self) -> Option<Permit> {
        self.cap.try_acquire()
    }
}

impl ForwardingGauges for Forwarder {
    fn in_flight(&self) -> (usize, usize) {
        (self.cap.current(), self.cap.max())
    }

    fn upstreams(&self) -> Vec<(std::net::SocketAddr, bool)> {
        let upstreams = self.upstreams.load();
        let now = Instant::now();
        (0..upstreams.len()).map(|i| (upstreams.addr(i), upstreams.is_healthy(i, now))).collect()
    }

    fn cache_size(&self) -> (usize, usize) {
        self.cache.load().as_ref().map_or((0, 0), |cache| cache.size())
    }

    fn cache_evictions(&self) -> u64 {
        self.evictions.load(Relaxed)
    }
}

fn new_cache(policy: CachePolicy, workers: usize, evictions: &Arc<AtomicU64>) -> Option<Arc<Cache<Parked>>> {
    (policy.size > 0).then(|| Cache::new(policy, workers, evictions.clone()))
}
