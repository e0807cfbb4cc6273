//! The packet cache in front of the relay: answers the relay accepted, kept as wire bytes and
//! served without parsing, with RFC 8767 serve-stale and prefetch.
//!
//! - `key`: what in a query makes its answer differ;
//! - `answer`: a stored answer and how a hit is written (ID, question case, aged TTLs);
//! - `store`: the index and SIEVE eviction in byte-bounded pools;
//! - `flush`: `POST /cache/flush`, delivered to every cache.
//!
//! One `Cache` per UDP worker, and one for TCP, each owned by its user: a hit never takes a lock
//! or waits on another worker, and contention can never turn a hit into a miss (PowerDNS
//! Recursor's packet cache is per thread in the same way). The price is that each worker warms
//! its own copy; `--cache-size` is shared out between them.

mod answer;
pub mod flush;
mod key;
mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use answer::{Kind, Lifetimes, Stored};
pub use flush::Flusher;
pub use key::{Key, wire_name};

use self::store::{Entry, Store};
use crate::metrics::CacheStats;

/// TTL of a stale answer (RFC 8767 section 4 suggests 30 s).
pub const STALE_TTL: u32 = 30;
/// After a failed refresh, stale answers are served without asking again for this long (RFC 8767
/// section 4's failure recheck timer); also the longest a refresh counts as under way.
pub const RECHECK: Duration = Duration::from_secs(30);
/// How long a query waits for the upstreams before a stale answer is served instead (RFC 8767's
/// client response timer).
pub const CLIENT_TIMER: Duration = Duration::from_millis(1800);
/// How long our SERVFAIL for a query no upstream answered is kept (RFC 9520: 1 s to 5 min; 5 s as
/// CoreDNS's `servfail` default).
pub const FAILURE_TTL: Duration = Duration::from_secs(5);
/// Prefetch: an entry hit at least this often since it was stored is popular...
pub const PREFETCH_HITS: u32 = 3;
/// ...and is refreshed once its remaining life falls to this fraction of its TTL (CoreDNS's
/// `prefetch` default: 10%), if its TTL is at least [`PREFETCH_MIN_TTL`] seconds.
pub const PREFETCH_PERCENT: u32 = 10;
pub const PREFETCH_MIN_TTL: u32 = 10;

/// The cache settings (`--cache-size`, `--cache-max-ttl`, `--cache-max-negative-ttl`,
/// `--serve-stale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Bytes of answers, keys and bookkeeping at most, for all caches together; 0 turns caching off.
    pub size: usize,
    pub max_ttl: Duration,
    pub max_negative_ttl: Duration,
    /// How long an expired answer is kept to be served when the upstreams fail; zero turns
    /// serve-stale off.
    pub serve_stale: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            size: 8 << 20,
            max_ttl: Duration::from_secs(3600),
            max_negative_ttl: Duration::from_secs(300),
            serve_stale: Duration::from_secs(86400),
        }
    }
}

/// What a lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A fresh answer is in the output; `prefetch` asks the caller to refresh it in the
    /// background (the entry is marked as refreshing).
    Fresh { prefetch: bool },
    /// An expired answer is kept for serve-stale and the upstreams should be asked: the entry is
    /// marked as refreshing; [`Cache::write_stale`] answers from it if they fail.
    Refresh,
    /// An expired answer was written (TTL [`STALE_TTL`]): a refresh is under way, or failed less
    /// than [`RECHECK`] ago.
    Stale,
    /// Nothing usable: ask the upstreams.
    Miss,
}

/// One cache: a worker's, or TCP's.
#[derive(Debug)]
pub struct Cache {
    store: Store,
    settings: Settings,
    stats: Arc<CacheStats>,
}

impl Cache {
    /// A cache with `share` of `settings.size` bytes, counting into `stats`.
    pub fn new(settings: Settings, share: usize, stats: Arc<CacheStats>) -> Self {
        Self { store: Store::new(share), settings, stats }
    }

    fn lifetimes(&self) -> Lifetimes {
        Lifetimes { max_ttl: self.settings.max_ttl, max_negative_ttl: self.settings.max_negative_ttl }
    }

    /// Looks `key` up for `query` (the client's message) and writes the answer into `out` when
    /// one is served. An entry larger than `limit` (the client's buffer) is not served from.
    pub fn lookup(&mut self, key: &Key, query: &[u8], limit: usize, now: Instant, out: &mut Vec<u8>) -> Lookup {
        let serve_stale = self.settings.serve_stale;
        let hash = self.store.hash(key.as_bytes());
        let Some(entry) = self.store.get(hash, key.as_bytes()) else {
            self.stats.miss();
            return Lookup::Miss;
        };
        let age = now.saturating_duration_since(entry.stored_at);
        let ttl = entry.answer.ttl;
        if entry.answer.wire.len() > limit {
            self.stats.miss();
            return Lookup::Miss;
        }
        let age_secs = age.as_secs().min(u64::from(u32::MAX)) as u32;
        if age_secs < ttl {
            entry.answer.write(query, age_secs, None, out);
            entry.hits = entry.hits.saturating_add(1);
            let left = ttl - age_secs;
            let prefetch = entry.answer.kind != Kind::Failure
                && entry.hits >= PREFETCH_HITS
                && ttl >= PREFETCH_MIN_TTL
                && left * 100 <= ttl * PREFETCH_PERCENT
                && !busy(entry.refreshing, now)
                && !busy(entry.failed, now);
            if prefetch {
                entry.refreshing = Some(now);
                self.stats.prefetch();
            }
            self.stats.hit();
            return Lookup::Fresh { prefetch };
        }
        let stale = entry.answer.kind != Kind::Failure && age < Duration::from_secs(u64::from(ttl)) + serve_stale;
        if !stale {
            self.store.remove(hash);
            self.stats.set_size(self.store.len(), self.store.bytes());
            self.stats.miss();
            return Lookup::Miss;
        }
        if busy(entry.refreshing, now) || busy(entry.failed, now) {
            entry.answer.write(query, 0, Some(STALE_TTL), out);
            self.stats.stale();
            return Lookup::Stale;
        }
        entry.refreshing = Some(now);
        self.stats.miss();
        Lookup::Refresh
    }

    /// Answers `query` from the expired entry for `key`, if it is still held (RFC 8767): the
    /// upstreams failed, or did not answer within [`CLIENT_TIMER`]. Marks the refresh failed.
    pub fn write_stale(&mut self, key: &Key, query: &[u8], now: Instant, out: &mut Vec<u8>) -> bool {
        let hash = self.store.hash(key.as_bytes());
        let Some(entry) = self.store.get(hash, key.as_bytes()) else { return false };
        if entry.answer.kind == Kind::Failure {
            return false;
        }
        entry.failed = Some(now);
        entry.answer.write(query, 0, Some(STALE_TTL), out);
        self.stats.stale();
        true
    }

    /// Stores an answer the relay accepted for `key` (see [`Stored::answer`] for what is kept).
    /// A refresh that brought no storable answer (a truncated one, say) ends the refresh.
    pub fn insert(&mut self, key: &Key, reply: &[u8], question_end: usize, now: Instant) {
        match Stored::answer(reply, question_end, self.lifetimes()) {
            Some(answer) => self.put(key, answer, now),
            None => {
                self.refresh_failed(key, now);
            }
        }
    }

    /// Records that no upstream answered `key`: an expired answer still held is kept, to be
    /// served stale (a failure never hides it); otherwise `servfail`, the client's answer, is kept
    /// for [`FAILURE_TTL`].
    pub fn insert_failure(&mut self, key: &Key, servfail: &[u8], question_end: usize, now: Instant) {
        if self.refresh_failed(key, now) {
            return;
        }
        self.put(key, Stored::failure(servfail, question_end, FAILURE_TTL), now);
    }

    /// Marks the refresh of `key` failed; returns whether an answer is held for it.
    fn refresh_failed(&mut self, key: &Key, now: Instant) -> bool {
        let hash = self.store.hash(key.as_bytes());
        match self.store.get(hash, key.as_bytes()) {
            Some(entry) if entry.answer.kind != Kind::Failure => {
                entry.refreshing = None;
                entry.failed = Some(now);
                true
            }
            _ => false,
        }
    }

    fn put(&mut self, key: &Key, answer: Stored, now: Instant) {
        let hash = self.store.hash(key.as_bytes());
        let entry =
            Entry { key: key.as_bytes().into(), answer, stored_at: now, hits: 0, refreshing: None, failed: None };
        let change = self.store.insert(hash, entry);
        self.stats.evicted(change.evicted);
        self.stats.set_size(self.store.len(), self.store.bytes());
    }

    /// Empties the cache, or drops every entry for `name` (lower-cased wire form), all types.
    pub fn flush(&mut self, name: Option<&[u8]>) {
        match name {
            None => {
                self.store.remove_where(|_| true);
            }
            Some(name) => {
                self.store.remove_where(|entry| key::name_of(&entry.key) == name);
            }
        }
        self.stats.set_size(self.store.len(), self.store.bytes());
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.store.remove_where(|_| true);
        self.stats.set_size(self.store.len(), self.store.bytes());
    }
}

/// Whether something that started (or failed) at `since` still counts at `now`.
fn busy(since: Option<Instant>, now: Instant) -> bool {
    since.is_some_and(|at| now.saturating_duration_since(at) < RECHECK)
}
