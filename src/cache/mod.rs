//! The packet cache: answers the upstreams gave, kept as wire bytes and served without parsing,
//! with RFC 8767 serve-stale, prefetch, and single flight.
//!
//! One cache for the whole process, shared by every UDP worker and TCP. Stub resolvers open a
//! fresh socket per lookup, and the kernel spreads source ports over the workers, so an answer
//! must be a hit (and a stale answer must be served) whichever worker a query lands on; and
//! `--cache-size` is then the node's total. The cache is split into shards (as dnsdist's and
//! unbound's are), each a mutex over its own entries and flights, picked by the key's hash: a hit
//! holds one shard's lock for the copy of one answer, so two workers wait on each other only when
//! they hit the same shard in the same instant.
//!
//! - `key`: what in a query makes its answer differ;
//! - `answer`: a stored answer and how a hit is written (ID, question case, aged TTLs);
//! - `store`: the index and SIEVE eviction in byte-bounded pools;
//! - `flights`: the upstream queries under way per key, and the clients parked on them.
//!
//! The cache is generic over what is parked on a flight (`W`): the forwarder parks its clients
//! there, and the cache only keeps them until the flight lands.

mod answer;
mod flights;
mod key;
mod store;

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use answer::shareable;
use answer::{Kind, Lifetimes, Stored};
pub use flights::FlightGuard;
pub use key::{Key, wire_name};

use self::flights::Flights;
use self::store::{Cached, Store};
use crate::dns::Transport;

/// TTL of a stale answer (RFC 8767 section 4 suggests 30 s).
pub const STALE_TTL: u32 = 30;
/// After a failed refresh, stale answers are served without asking again for this long (RFC 8767
/// section 4's failure recheck timer).
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
/// Each shard holds at least this much of `--cache-size`, so that large answers still fit a pool.
const MIN_SHARD_BYTES: usize = 256 << 10;
/// At most this many shards: beyond it, contention is already rare.
const MAX_SHARDS: usize = 64;

/// What the cache keeps and for how long (`--cache-size`, `--cache-max-ttl`,
/// `--cache-max-negative-ttl`, `--serve-stale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// Bytes of answers, keys and bookkeeping at most; 0 turns caching off.
    pub size: usize,
    pub max_ttl: Duration,
    pub max_negative_ttl: Duration,
    /// How long an expired answer is kept to be served when the upstreams fail; zero turns
    /// serve-stale off.
    pub serve_stale: Duration,
}

impl Default for CachePolicy {
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
#[derive(Debug)]
pub enum Found<'c, W> {
    /// A fresh answer is in the output. `prefetch` holds a flight just registered to refresh it:
    /// it is popular, near its end, and no refresh is under way.
    Fresh { prefetch: Option<FlightGuard<W>> },
    /// An expired answer is in the output (TTL [`STALE_TTL`]): a refresh is under way, or failed
    /// less than [`RECHECK`] ago.
    Stale,
    /// Nothing this client can be served now: the key's shard stays locked until the caller has
    /// parked the query on the flight under way, or led one.
    Missing(Missing<'c, W>),
}

/// A lookup that found nothing to serve, holding its shard's lock.
#[derive(Debug)]
pub struct Missing<'c, W> {
    cache: &'c Arc<Cache<W>>,
    shard: MutexGuard<'c, Shard<W>>,
    hash: u64,
    key: &'c Key,
    /// An expired answer is held for the key: served if the upstreams fail or are slow.
    pub stale: bool,
}

impl<'c, W> Missing<'c, W> {
    /// Whether an upstream query for the key is under way over `transport`.
    pub fn has_flight(&self, transport: Transport) -> bool {
        self.shard.flights.has(self.hash, self.key.as_bytes(), transport)
    }

    /// Parks `waiter` on the key's flight over `transport` if one is under way; gives it back
    /// otherwise.
    pub fn park(&mut self, transport: Transport, waiter: W) -> Result<(), W> {
        self.shard.flights.park(self.hash, self.key.as_bytes(), transport, waiter)
    }

    /// Leads the key's flight over `transport`: the caller asks the upstreams, and lands it with
    /// [`Cache::land`].
    pub fn lead(mut self, transport: Transport) -> FlightGuard<W> {
        let registered = self.shard.flights.register(self.hash, self.key.as_bytes(), transport, self.stale);
        FlightGuard { cache: self.cache.clone(), hash: self.hash, transport, registered, refresh: self.stale }
    }

    /// Writes the expired answer held for the key (see [`Missing::stale`]) for `query`; false when
    /// there is none.
    pub fn write_stale(mut self, query: &[u8], now: Instant, out: &mut Vec<u8>) -> bool {
        self.shard.write_stale(self.hash, self.key.as_bytes(), query, now, out)
    }
}

/// How a flight ended, as the cache needs to know it.
#[derive(Debug, Clone, Copy)]
pub enum Landing<'a> {
    /// An upstream's answer, stored unless it is truncated, an error other than NXDOMAIN,
    /// negative without an SOA, or has a TTL of 0.
    Answer { reply: &'a [u8], question_end: usize },
    /// An answer that is not to be stored (it came during a spoofing episode).
    Uncached,
    /// No upstream answered; `servfail` is the answer clients got, kept for [`FAILURE_TTL`]
    /// unless an answer is held for the key (a failure never hides it).
    Failed { servfail: &'a [u8], question_end: usize },
}

/// The process's cache.
#[derive(Debug)]
pub struct Cache<W> {
    shards: Box<[Mutex<Shard<W>>]>,
    hasher: RandomState,
    /// The shard of a hash is its top `shard_bits` bits.
    shard_bits: u32,
    policy: CachePolicy,
    evictions: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Shard<W> {
    store: Store,
    flights: Flights<W>,
}

impl<W> Cache<W> {
    /// A cache of `policy.size` bytes for `workers` UDP workers, counting evictions into
    /// `evictions` (which outlives a cache that a reload replaces).
    pub fn new(policy: CachePolicy, workers: usize, evictions: Arc<AtomicU64>) -> Arc<Self> {
        let shards = shard_count(policy.size, workers);
        let budget = policy.size / shards;
        Arc::new(Self {
            shards: (0..shards)
                .map(|_| Mutex::new(Shard { store: Store::new(budget), flights: Flights::default() }))
                .collect(),
            hasher: RandomState::new(),
            shard_bits: shards.trailing_zeros(),
            policy,
            evictions,
        })
    }

    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one(key.as_bytes())
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard<W>> {
        let index = if self.shard_bits == 0 { 0 } else { (hash >> (64 - self.shard_bits)) as usize };
        // A panic while a shard is locked leaves its entries whole (every change is a single
        // assignment or a completed unlink), so the data stays usable.
        self.shards[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Looks `key` up for `query` (the client's message, over `transport`) and writes the answer
    /// into `out` when one is served. An entry larger than `limit` (the client's buffer) is not
    /// served from.
    pub fn lookup<'c>(
        self: &'c Arc<Self>,
        key: &'c Key,
        transport: Transport,
        query: &[u8],
        limit: usize,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Found<'c, W> {
        let hash = self.hash(key);
        let mut shard = self.shard(hash);
        match shard.probe(hash, key.as_bytes(), transport, query, limit, now, self.policy.serve_stale, out) {
            Seen::Fresh { prefetch } => Found::Fresh {
                prefetch: prefetch.then(|| FlightGuard {
                    cache: self.clone(),
                    hash,
                    transport,
                    registered: true,
                    refresh: true,
                }),
            },
            Seen::Stale => Found::Stale,
            Seen::Missing { stale } => Found::Missing(Missing { cache: self, shard, hash, key, stale }),
        }
    }

    /// Writes the expired answer held for `key` for `query` (RFC 8767: the upstreams failed, or
    /// did not answer within [`CLIENT_TIMER`]) and marks its refresh failed; false when none is
    /// held any more (evicted, flushed).
    pub fn write_stale(&self, key: &Key, query: &[u8], now: Instant, out: &mut Vec<u8>) -> bool {
        let hash = self.hash(key);
        self.shard(hash).write_stale(hash, key.as_bytes(), query, now, out)
    }

    /// Lands `flight` for `key` with how it ended; returns the clients parked on it, for the
    /// caller to answer.
    pub fn land(&self, mut flight: FlightGuard<W>, key: &Key, landing: Landing<'_>, now: Instant) -> Vec<W> {
        let (refresh, parked) = flight.take();
        let hash = flight.hash;
        let lifetimes = Lifetimes { max_ttl: self.policy.max_ttl, max_negative_ttl: self.policy.max_negative_ttl };
        let mut shard = self.shard(hash);
        let stored = match landing {
            Landing::Answer { reply, question_end } => Stored::answer(reply, question_end, lifetimes),
            Landing::Uncached => return parked,
            Landing::Failed { servfail, question_end } => {
                if !shard.refresh_failed(hash, key.as_bytes(), now) {
                    shard.put(hash, key, Stored::failure(servfail, question_end, FAILURE_TTL), now, &self.evictions);
                }
                return parked;
            }
        };
        match stored {
            Some(answer) => shard.put(hash, key, answer, now, &self.evictions),
            // A refresh that brought nothing storable (truncated, TTL 0) counts as failed: the
            // answer held is served stale a while rather than asked for on every query.
            None if refresh => {
                shard.refresh_failed(hash, key.as_bytes(), now);
            }
            None => {}
        }
        parked
    }

    /// Empties the cache, or drops every entry for `name` (lower-cased wire form), all types;
    /// returns how many entries went.
    pub fn flush(&self, name: Option<&[u8]>) -> usize {
        (0..self.shards.len())
            .map(|i| {
                let mut shard = self.shards[i].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                match name {
                    None => shard.store.remove_where(|_| true),
                    Some(name) => shard.store.remove_where(|entry| key::name_of(&entry.key) == name),
                }
            })
            .sum()
    }

    /// Answers held, and the bytes they count against `--cache-size` (for the metrics).
    pub fn size(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(entries, bytes), shard| {
            let shard = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            (entries + shard.store.len(), bytes + shard.store.bytes())
        })
    }
}

/// What [`Shard::probe`] found.
enum Seen {
    Fresh { prefetch: bool },
    Stale,
    Missing { stale: bool },
}

impl<W> Shard<W> {
    /// The decision of [`Cache::lookup`], under the shard's lock. A prefetch that is due is
    /// registered as a flight over `transport` here, so that only one query leads it.
    #[allow(clippy::too_many_arguments)]
    fn probe(
        &mut self,
        hash: u64,
        key: &[u8],
        transport: Transport,
        query: &[u8],
        limit: usize,
        now: Instant,
        serve_stale: Duration,
        out: &mut Vec<u8>,
    ) -> Seen {
        let Some(entry) = self.store.get(hash, key) else { return Seen::Missing { stale: false } };
        if entry.answer.wire.len() > limit {
            return Seen::Missing { stale: false };
        }
        let age = now.saturating_duration_since(entry.stored_at);
        let age_secs = age.as_secs().min(u64::from(u32::MAX)) as u32;
        let ttl = entry.answer.ttl;
        if age_secs < ttl {
            entry.answer.write(query, age_secs, None, out);
            entry.hits = entry.hits.saturating_add(1);
            let left = ttl - age_secs;
            let due = entry.answer.kind != Kind::Failure
                && entry.hits >= PREFETCH_HITS
                && ttl >= PREFETCH_MIN_TTL
                && left * 100 <= ttl * PREFETCH_PERCENT
                && !recent(entry.failed, now);
            let prefetch = due && !self.flights.any(hash, key) && self.flights.register(hash, key, transport, true);
            return Seen::Fresh { prefetch };
        }
        let held = entry.answer.kind != Kind::Failure && age < Duration::from_secs(u64::from(ttl)) + serve_stale;
        if !held {
            self.store.remove(hash);
            return Seen::Missing { stale: false };
        }
        if recent(entry.failed, now) || self.flights.any(hash, key) {
            entry.answer.write(query, 0, Some(STALE_TTL), out);
            return Seen::Stale;
        }
        Seen::Missing { stale: true }
    }

    fn write_stale(&mut self, hash: u64, key: &[u8], query: &[u8], now: Instant, out: &mut Vec<u8>) -> bool {
        let Some(entry) = self.store.get(hash, key) else { return false };
        if entry.answer.kind == Kind::Failure {
            return false;
        }
        entry.failed = Some(now);
        entry.answer.write(query, 0, Some(STALE_TTL), out);
        true
    }

    /// Marks the refresh of `key` failed; returns whether an answer is held for it.
    fn refresh_failed(&mut self, hash: u64, key: &[u8], now: Instant) -> bool {
        match self.store.get(hash, key) {
            Some(entry) if entry.answer.kind != Kind::Failure => {
                entry.failed = Some(now);
                true
            }
            _ => false,
        }
    }

    fn put(&mut self, hash: u64, key: &Key, answer: Stored, now: Instant, evictions: &AtomicU64) {
        let entry = Cached { key: key.as_bytes().into(), answer, stored_at: now, hits: 0, failed: None };
        let change = self.store.insert(hash, entry);
        if change.evicted > 0 {
            evictions.fetch_add(change.evicted, Relaxed);
        }
    }
}

/// Shards for a cache of `size` bytes serving `workers` UDP workers (and TCP): a few per worker,
/// a power of two, each with at least [`MIN_SHARD_BYTES`].
fn shard_count(size: usize, workers: usize) -> usize {
    let mut shards = (workers.max(1) * 4).next_power_of_two().min(MAX_SHARDS);
    while shards > 1 && size / shards < MIN_SHARD_BYTES {
        shards /= 2;
    }
    shards
}

/// Whether something that failed at `since` still counts at `now`.
fn recent(since: Option<Instant>, now: Instant) -> bool {
    since.is_some_and(|at| now.saturating_duration_since(at) < RECHECK)
}
