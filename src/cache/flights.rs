//! The upstream queries under way, one per key and transport at most (single flight), and the
//! clients parked on each until it lands.
//!
//! A flight is registered in the shard of its key, under the same lock as the key's answer, so
//! that a query either finds the answer or finds the flight that will bring it: none falls between
//! the two and asks again. A TCP query never parks on a UDP flight (a UDP answer may come back
//! truncated, which a TCP client cannot use), so each transport has flights of its own.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::Cache;
use crate::dns::Transport;

/// One upstream query under way for a key.
#[derive(Debug)]
struct Flight<W> {
    key: Box<[u8]>,
    /// A refresh of an answer held (prefetch, or an expired answer): if it fails, that answer is
    /// served stale without asking again for a while.
    refresh: bool,
    /// The clients that asked for the key while it was under way.
    parked: Vec<W>,
}

/// A shard's flights, by key hash and transport.
#[derive(Debug)]
pub(super) struct Flights<W> {
    by_hash: FxHashMap<(u64, Transport), Flight<W>>,
}

impl<W> Default for Flights<W> {
    fn default() -> Self {
        Self { by_hash: FxHashMap::default() }
    }
}

impl<W> Flights<W> {
    /// Whether a flight for `key` is under way over `transport`.
    pub fn has(&self, hash: u64, key: &[u8], transport: Transport) -> bool {
        self.by_hash.get(&(hash, transport)).is_some_and(|f| *f.key == *key)
    }

    /// Whether a flight for `key` is under way over either transport.
    pub fn any(&self, hash: u64, key: &[u8]) -> bool {
        Transport::ALL.into_iter().any(|t| self.has(hash, key, t))
    }

    /// The clients parked on the flight for `key` over `transport`, if one is under way: a client
    /// pushed there is parked on it.
    pub fn parked(&mut self, hash: u64, key: &[u8], transport: Transport) -> Option<&mut Vec<W>> {
        self.by_hash.get_mut(&(hash, transport)).filter(|flight| *flight.key == *key).map(|flight| &mut flight.parked)
    }

    /// Registers a flight for `key` over `transport`; false when its hash has a flight already (of
    /// the same key, or of another key with the same hash, which then simply goes without single
    /// flight).
    pub fn register(&mut self, hash: u64, key: &[u8], transport: Transport, refresh: bool) -> bool {
        if self.by_hash.contains_key(&(hash, transport)) {
            return false;
        }
        self.by_hash.insert((hash, transport), Flight { key: key.into(), refresh, parked: Vec::new() });
        true
    }

    /// Ends the flight registered for `hash` and `transport`: whether it was a refresh, and the
    /// clients parked on it.
    pub fn land(&mut self, hash: u64, transport: Transport) -> Option<(bool, Vec<W>)> {
        self.by_hash.remove(&(hash, transport)).map(|f| (f.refresh, f.parked))
    }
}

/// The right to land a flight: held by the exchange that leads it. Dropped without landing (the
/// exchange was abandoned: a reload retired its sockets, the process stops), it removes the
/// flight, so that the key's next query leads a new one instead of parking forever; the clients
/// parked on it get no answer, as if the datagram had been lost, and ask again.
#[derive(Debug)]
pub struct FlightGuard<W> {
    cache: Arc<Cache<W>>,
    hash: u64,
    transport: Transport,
    /// Whether the flight is in the registry (false: another key's flight has its hash).
    registered: bool,
    /// A refresh of an answer held, when not registered (a registered flight knows it itself).
    refresh: bool,
}

impl<W> FlightGuard<W> {
    /// The guard of the flight for the key of `hash` over `transport` in `cache`; `registered`
    /// says whether [`Flights::register`] took it (see there), `refresh` whether it refreshes an
    /// answer held.
    pub(super) fn new(cache: Arc<Cache<W>>, hash: u64, transport: Transport, registered: bool, refresh: bool) -> Self {
        Self { cache, hash, transport, registered, refresh }
    }

    /// The hash of the flight's key.
    pub(super) fn hash(&self) -> u64 {
        self.hash
    }

    /// The cache the flight is registered in (a reload may have replaced the current one since).
    pub fn cache(&self) -> &Arc<Cache<W>> {
        &self.cache
    }

    /// Takes the flight out of the registry: whether it was a refresh, and its parked clients.
    pub(super) fn take(&mut self) -> (bool, Vec<W>) {
        if !std::mem::take(&mut self.registered) {
            return (self.refresh, Vec::new());
        }
        self.cache.shard(self.hash).flights.land(self.hash, self.transport).unwrap_or((self.refresh, Vec::new()))
    }
}

impl<W> Drop for FlightGuard<W> {
    fn drop(&mut self) {
        // The parked clients are dropped after the shard's lock is released.
        let abandoned = self.take();
        drop(abandoned);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::FlightGuard;
    use crate::cache::tests::{answer, cache, keyed};
    use crate::cache::{Cache, CachePolicy, Found, Key, Landing, Missing};
    use crate::dns::Transport;

    /// A lookup of `name` that misses, holding its shard until dropped.
    fn miss<'c>(cache: &'c Arc<Cache<u32>>, key: &'c Key, q: &[u8], transport: Transport) -> Missing<'c, u32> {
        match cache.lookup(key, transport, q, 512, Instant::now(), &mut Vec::new()) {
            Found::Missing(missing) => missing,
            other => panic!("expected a miss, got {other:?}"),
        }
    }

    /// A flight led for `key` over UDP, with client 7 parked on it.
    fn led_with_a_follower(cache: &Arc<Cache<u32>>, key: &Key, q: &[u8]) -> FlightGuard<u32> {
        let leader = miss(cache, key, q, Transport::Udp).lead(Transport::Udp);
        miss(cache, key, q, Transport::Udp).parked(Transport::Udp).expect("the leader's flight").push(7);
        leader
    }

    #[test]
    fn the_first_miss_leads_the_flight_the_next_ones_park_and_the_landing_hands_them_back() {
        let cache = cache(CachePolicy::default());
        let (q, end, key) = keyed("a.example");
        let mut first = miss(&cache, &key, &q, Transport::Udp);
        assert!(first.parked(Transport::Udp).is_none(), "no flight yet");
        let leader = first.lead(Transport::Udp);
        for follower in 1..=3 {
            let mut missing = miss(&cache, &key, &q, Transport::Udp);
            missing.parked(Transport::Udp).expect("the leader's flight").push(follower);
        }
        let parked =
            cache.land(leader, &key, Landing::Answer { reply: &answer(&q, 60), question_end: end }, Instant::now());
        assert_eq!(parked, [1, 2, 3], "in the order they came");
        assert!(matches!(
            cache.lookup(&key, Transport::Udp, &q, 512, Instant::now(), &mut Vec::new()),
            Found::Fresh { .. }
        ));
    }

    #[test]
    fn a_tcp_miss_never_parks_on_a_udp_flight() {
        let cache = cache(CachePolicy::default());
        let (q, _, key) = keyed("a.example");
        let _udp = miss(&cache, &key, &q, Transport::Udp).lead(Transport::Udp);
        let mut tcp = miss(&cache, &key, &q, Transport::Tcp);
        assert!(tcp.parked(Transport::Tcp).is_none());
        let _tcp = tcp.lead(Transport::Tcp);
        assert!(miss(&cache, &key, &q, Transport::Tcp).parked(Transport::Tcp).is_some(), "a TCP flight of its own");
    }

    #[test]
    fn a_failed_leader_hands_back_its_followers_and_its_failure_is_kept() {
        let cache = cache(CachePolicy::default());
        let (q, end, key) = keyed("a.example");
        let leader = led_with_a_follower(&cache, &key, &q);
        let mut servfail = q.clone();
        servfail[2] = 0x81;
        servfail[3] = 0x82;
        let parked =
            cache.land(leader, &key, Landing::Failed { servfail: &servfail, question_end: end }, Instant::now());
        assert_eq!(parked, [7]);
        let mut out = Vec::new();
        assert!(matches!(cache.lookup(&key, Transport::Udp, &q, 512, Instant::now(), &mut out), Found::Fresh { .. }));
        assert_eq!(out[3] & 0x0f, 2, "SERVFAIL, kept a few seconds");
    }

    #[test]
    fn a_leader_dropped_without_landing_frees_the_key_and_drops_its_followers() {
        let cache = cache(CachePolicy::default());
        let (q, _, key) = keyed("a.example");
        let leader = led_with_a_follower(&cache, &key, &q);
        drop(leader);
        let mut next = miss(&cache, &key, &q, Transport::Udp);
        assert!(next.parked(Transport::Udp).is_none(), "the next miss leads a new flight");
        let leader = next.lead(Transport::Udp);
        let parked = cache.land(leader, &key, Landing::Uncached, Instant::now());
        assert!(parked.is_empty(), "the abandoned flight's followers are not the new one's");
    }

    #[test]
    fn an_uncached_landing_answers_the_followers_and_stores_nothing() {
        let cache = cache(CachePolicy::default());
        let (q, _, key) = keyed("a.example");
        let leader = led_with_a_follower(&cache, &key, &q);
        assert_eq!(cache.land(leader, &key, Landing::Uncached, Instant::now()), [7]);
        assert_eq!(cache.size().0, 0);
    }

    /// Two keys whose hashes collide share a place for a flight: the second goes without single
    /// flight, and never gets the first's answer or followers.
    #[test]
    fn a_key_whose_hash_has_a_flight_already_goes_without_single_flight() {
        let mut flights = super::Flights::<u32>::default();
        assert!(flights.register(7, b"a", Transport::Udp, false));
        assert!(!flights.register(7, b"b", Transport::Udp, false), "the hash is taken");
        assert!(flights.parked(7, b"b", Transport::Udp).is_none(), "b never parks on a's flight");
        flights.parked(7, b"a", Transport::Udp).unwrap().push(1);
        assert!(flights.any(7, b"a") && !flights.any(7, b"b"));
        assert_eq!(flights.land(7, Transport::Udp), Some((false, vec![1])));
        assert_eq!(flights.land(7, Transport::Udp), None);
    }
}
