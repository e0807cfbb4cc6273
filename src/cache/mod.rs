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
use answer::{Kind, Stored};
pub use flights::FlightGuard;
pub use key::{Key, wire_name};

use self::flights::Flights;
use self::store::{Cached, Store};
use crate::dns::Transport;

/// TTL of a stale answer (RFC 8767 section 4 suggests 30 s).
pub const STALE_TTL: u32 = 30;
/// After a failed refresh, stale answers are served without asking the upstreams again for this
/// long (RFC 8767 section 4 calls it the failure recheck timer).
pub const REFRESH_HOLD_OFF: Duration = Duration::from_secs(30);
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
    /// less than [`REFRESH_HOLD_OFF`] ago.
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
    stale: bool,
}

impl<'c, W> Missing<'c, W> {
    /// Whether an expired answer is held for the key, to be served if the upstreams fail or are
    /// slow (RFC 8767).
    pub fn holds_stale(&self) -> bool {
        self.stale
    }

    /// The clients parked on the key's flight over `transport`, if one is under way: a client
    /// pushed there waits for that flight's answer.
    pub fn parked(&mut self, transport: Transport) -> Option<&mut Vec<W>> {
        self.shard.flights.parked(self.hash, self.key.as_bytes(), transport)
    }

    /// Leads the key's flight over `transport`: the caller asks the upstreams, and lands it with
    /// [`Cache::land`].
    pub fn lead(mut self, transport: Transport) -> FlightGuard<W> {
        let registered = self.shard.flights.register(self.hash, self.key.as_bytes(), transport, self.stale);
        FlightGuard::new(self.cache.clone(), self.hash, transport, registered, self.stale)
    }

    /// Writes the expired answer held for the key (see [`Missing::holds_stale`]) for `query`; false
    /// when there is none.
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
        match shard.find(hash, key.as_bytes(), transport, query, limit, now, self.policy.serve_stale, out) {
            Seen::Fresh { prefetch } => {
                Found::Fresh { prefetch: prefetch.then(|| FlightGuard::new(self.clone(), hash, transport, true, true)) }
            }
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
        let hash = flight.hash();
        let mut shard = self.shard(hash);
        let stored = match landing {
            Landing::Answer { reply, question_end } => Stored::answer(reply, question_end, &self.policy),
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
                    Some(name) => shard.store.remove_where(|entry| key::name_of(entry.key()) == name),
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

/// What [`Shard::find`] found.
enum Seen {
    Fresh { prefetch: bool },
    Stale,
    Missing { stale: bool },
}

impl<W> Shard<W> {
    /// The decision of [`Cache::lookup`], under the shard's lock. A prefetch that is due is
    /// registered as a flight over `transport` here, so that only one query leads it.
    #[allow(clippy::too_many_arguments)]
    fn find(
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
        if entry.answer().size() > limit {
            return Seen::Missing { stale: false };
        }
        let age = entry.age(now);
        let age_secs = age.as_secs().min(u64::from(u32::MAX)) as u32;
        let ttl = entry.answer().ttl();
        if age_secs < ttl {
            entry.answer().write(query, age_secs, None, out);
            let hits = entry.hit();
            let left = ttl - age_secs;
            let due = entry.answer().kind() != Kind::Failure
                && hits >= PREFETCH_HITS
                && ttl >= PREFETCH_MIN_TTL
                && left * 100 <= ttl * PREFETCH_PERCENT
                && !recent(entry.failed_at(), now);
            let prefetch = due && !self.flights.any(hash, key) && self.flights.register(hash, key, transport, true);
            return Seen::Fresh { prefetch };
        }
        let held = entry.answer().kind() != Kind::Failure && age < Duration::from_secs(u64::from(ttl)) + serve_stale;
        if !held {
            self.store.remove(hash);
            return Seen::Missing { stale: false };
        }
        if recent(entry.failed_at(), now) || self.flights.any(hash, key) {
            entry.answer().write(query, 0, Some(STALE_TTL), out);
            return Seen::Stale;
        }
        Seen::Missing { stale: true }
    }

    fn write_stale(&mut self, hash: u64, key: &[u8], query: &[u8], now: Instant, out: &mut Vec<u8>) -> bool {
        let Some(entry) = self.store.get(hash, key) else { return false };
        if entry.answer().kind() == Kind::Failure {
            return false;
        }
        entry.refresh_failed(now);
        entry.answer().write(query, 0, Some(STALE_TTL), out);
        true
    }

    /// Marks the refresh of `key` failed; returns whether an answer is held for it.
    fn refresh_failed(&mut self, hash: u64, key: &[u8], now: Instant) -> bool {
        match self.store.get(hash, key) {
            Some(entry) if entry.answer().kind() != Kind::Failure => {
                entry.refresh_failed(now);
                true
            }
            _ => false,
        }
    }

    fn put(&mut self, hash: u64, key: &Key, answer: Stored, now: Instant, evictions: &AtomicU64) {
        let evicted = self.store.insert(hash, Cached::new(key.as_bytes(), answer, now));
        if evicted > 0 {
            evictions.fetch_add(evicted, Relaxed);
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
    since.is_some_and(|at| now.saturating_duration_since(at) < REFRESH_HOLD_OFF)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dns::wire;

    /// A query for `name` A with ID 0x0101, RD set, and where its question ends.
    pub fn query(name: &str) -> (Vec<u8>, usize) {
        let mut q = vec![1, 1, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let end = q.len();
        (q, end)
    }

    /// The upstream's answer to `query`: one A record with `ttl`.
    pub fn answer(query: &[u8], ttl: u32) -> Vec<u8> {
        let mut a = query.to_vec();
        a[2] = 0x81;
        a[3] = 0x80;
        a[7] = 1;
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        a.extend_from_slice(&ttl.to_be_bytes());
        a.extend_from_slice(&[0, 4, 192, 0, 2, 1]);
        a
    }

    /// [`query`] and its cache key.
    pub fn keyed(name: &str) -> (Vec<u8>, usize, Key) {
        let (q, end) = query(name);
        let key = Key::of(&q, end, None).expect("cacheable");
        (q, end, key)
    }

    pub fn cache(policy: CachePolicy) -> Arc<Cache<u32>> {
        Cache::new(policy, 1, Arc::new(AtomicU64::new(0)))
    }

    /// The first record's TTL.
    fn ttl(answer: &[u8], question_end: usize) -> u32 {
        let record = wire::Records::new(answer, question_end).next().expect("a record");
        wire::get_u32(answer, record.ttl_at).unwrap()
    }

    /// What a UDP client asking `name` at `t0 + seconds` finds in `cache`: a fresh answer's TTL
    /// and whether it is to be prefetched, or "stale" with its TTL, or a miss ("stale held" when
    /// an expired answer is held). A flight led here is abandoned at once.
    fn find(cache: &Arc<Cache<u32>>, name: &str, t0: Instant, seconds: f64) -> String {
        let (q, end, key) = keyed(name);
        let mut out = Vec::new();
        let now = t0 + Duration::from_secs_f64(seconds);
        match cache.lookup(&key, Transport::Udp, &q, 512, now, &mut out) {
            Found::Fresh { prefetch: None } => format!("fresh {}", ttl(&out, end)),
            Found::Fresh { prefetch: Some(_) } => format!("fresh {}, prefetch", ttl(&out, end)),
            Found::Stale => format!("stale {}", ttl(&out, end)),
            Found::Missing(missing) if missing.holds_stale() => "miss, stale held".into(),
            Found::Missing(_) => "miss".into(),
        }
    }

    /// Stores `name`'s answer with `ttl` at `t0`, as a miss does.
    fn store(cache: &Arc<Cache<u32>>, name: &str, ttl: u32, t0: Instant) {
        let (q, end, key) = keyed(name);
        let Found::Missing(missing) = cache.lookup(&key, Transport::Udp, &q, 512, t0, &mut Vec::new()) else {
            panic!("{name} is cached already")
        };
        let flight = missing.lead(Transport::Udp);
        cache.land(flight, &key, Landing::Answer { reply: &answer(&q, ttl), question_end: end }, t0);
    }

    /// A cache under the default policy holding `name`'s answer with `ttl`, stored at the instant
    /// returned.
    fn holding(name: &str, ttl: u32) -> (Arc<Cache<u32>>, Instant) {
        let cache = cache(CachePolicy::default());
        let t0 = Instant::now();
        store(&cache, name, ttl, t0);
        (cache, t0)
    }

    #[test]
    fn a_hit_s_ttls_fall_by_the_whole_seconds_it_was_held() {
        let (cache, t0) = holding("a.example", 300);
        let seen: Vec<String> =
            [0.0, 0.999, 1.0, 1.5, 299.999].iter().map(|&at| find(&cache, "a.example", t0, at)).collect();
        assert_eq!(seen, ["fresh 300", "fresh 300", "fresh 299", "fresh 299", "fresh 1, prefetch"]);
    }

    #[test]
    fn ttls_are_capped_by_the_policy_when_stored() {
        let cache = cache(CachePolicy { max_ttl: Duration::from_secs(60), ..CachePolicy::default() });
        let t0 = Instant::now();
        store(&cache, "a.example", 300, t0);
        assert_eq!(find(&cache, "a.example", t0, 0.0), "fresh 60");
        assert_eq!(find(&cache, "a.example", t0, 60.0), "miss, stale held", "expired at the cap");
    }

    /// RFC 8767: an answer is fresh for its TTL, then held for `--serve-stale`, then gone.
    #[test]
    fn an_expired_answer_is_held_for_the_stale_window_and_not_a_moment_longer() {
        let policy = CachePolicy { serve_stale: Duration::from_secs(20), ..CachePolicy::default() };
        let cache = cache(policy);
        let t0 = Instant::now();
        store(&cache, "a.example", 10, t0);
        assert_eq!(find(&cache, "a.example", t0, 9.999), "fresh 1");
        assert_eq!(find(&cache, "a.example", t0, 10.0), "miss, stale held", "expired at its TTL");
        assert_eq!(find(&cache, "a.example", t0, 29.999), "miss, stale held", "held to the window's last moment");
        assert_eq!(find(&cache, "a.example", t0, 30.0), "miss", "TTL + 20 s: gone");
        assert_eq!(cache.size().0, 0, "and removed");
    }

    #[test]
    fn with_serve_stale_off_an_expired_answer_is_gone_at_its_ttl() {
        let cache = cache(CachePolicy { serve_stale: Duration::ZERO, ..CachePolicy::default() });
        let t0 = Instant::now();
        store(&cache, "a.example", 10, t0);
        assert_eq!(find(&cache, "a.example", t0, 10.0), "miss");
    }

    #[test]
    fn a_stale_answer_is_served_at_once_for_30_s_after_a_failed_refresh() {
        let (cache, t0) = holding("a.example", 10);
        let (q, end, key) = keyed("a.example");
        let mut out = Vec::new();
        assert!(cache.write_stale(&key, &q, t0 + Duration::from_secs(12), &mut out), "the refresh failed at 12 s");
        assert_eq!(ttl(&out, end), STALE_TTL);
        assert_eq!(find(&cache, "a.example", t0, 12.5), "stale 30");
        assert_eq!(find(&cache, "a.example", t0, 41.999), "stale 30");
        assert_eq!(find(&cache, "a.example", t0, 42.0), "miss, stale held", "30 s on, the upstreams are asked again");
    }

    /// Prefetch: hit at least 3 times since stored, a TTL of at least 10 s, and at most 10% of it
    /// left.
    #[test]
    fn a_popular_answer_is_prefetched_once_at_10_percent_of_its_ttl_left() {
        let (cache, t0) = holding("a.example", 100);
        assert_eq!(find(&cache, "a.example", t0, 1.0), "fresh 99");
        assert_eq!(find(&cache, "a.example", t0, 2.0), "fresh 98");
        assert_eq!(find(&cache, "a.example", t0, 89.0), "fresh 11", "11% left: not yet, though hit thrice");
        assert_eq!(find(&cache, "a.example", t0, 90.0), "fresh 10, prefetch", "10% left");
        // The prefetch's flight was dropped with its guard: the next hit may lead another.
        assert_eq!(find(&cache, "a.example", t0, 90.5), "fresh 10, prefetch");

        store(&cache, "b.example", 100, t0);
        assert_eq!(find(&cache, "b.example", t0, 95.0), "fresh 5", "hit once: not popular");
        assert_eq!(find(&cache, "b.example", t0, 96.0), "fresh 4");
        assert_eq!(find(&cache, "b.example", t0, 97.0), "fresh 3, prefetch", "the third hit");

        store(&cache, "c.example", 9, t0);
        for at in [1.0, 2.0, 3.0, 8.5] {
            assert!(!find(&cache, "c.example", t0, at).contains("prefetch"), "a TTL under 10 s is never prefetched");
        }
    }

    #[test]
    fn a_prefetch_under_way_is_led_once() {
        let (cache, t0) = holding("a.example", 100);
        for at in [1.0, 2.0] {
            find(&cache, "a.example", t0, at);
        }
        let (q, _, key) = keyed("a.example");
        let at = t0 + Duration::from_secs(95);
        let Found::Fresh { prefetch: Some(_leading) } =
            cache.lookup(&key, Transport::Udp, &q, 512, at, &mut Vec::new())
        else {
            panic!("a prefetch")
        };
        assert_eq!(find(&cache, "a.example", t0, 95.5), "fresh 5", "while it is under way, no other");
    }

    #[test]
    fn an_answer_larger_than_the_client_s_buffer_is_not_served_to_it() {
        let (cache, t0) = holding("a.example", 100);
        let (q, _, key) = keyed("a.example");
        let size = answer(&q, 100).len();
        let found = cache.lookup(&key, Transport::Udp, &q, size - 1, t0, &mut Vec::new());
        assert!(matches!(found, Found::Missing(ref m) if !m.holds_stale()), "{found:?}");
        drop(found);
        assert!(matches!(cache.lookup(&key, Transport::Udp, &q, size, t0, &mut Vec::new()), Found::Fresh { .. }));
    }

    #[test]
    fn a_few_shards_per_worker_each_with_at_least_256_kib() {
        assert_eq!(shard_count(8 << 20, 1), 4);
        assert_eq!(shard_count(8 << 20, 2), 8);
        assert_eq!(shard_count(8 << 20, 3), 16, "a power of two");
        assert_eq!(shard_count(8 << 20, 64), 32, "8 MiB: at most 32 shards of 256 KiB");
        assert_eq!(shard_count(1 << 30, 64), 64, "at most 64");
        assert_eq!(shard_count(300 << 10, 4), 1, "a small cache is one shard");
    }
}
