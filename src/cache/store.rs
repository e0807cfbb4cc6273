//! Where entries live: a hash index over a slab, and SIEVE eviction (Zhang et al., NSDI 2024) in
//! two pools with byte budgets of their own.
//!
//! SIEVE because a hit only sets a bit (no list surgery, unlike LRU), and it keeps popular entries
//! at least as well as LRU under the skewed traffic a node resolver sees. Two pools because
//! negative answers and failures come in floods (random-subdomain attacks, a misconfigured search
//! list) that must never push out the positive answers a node relies on: negatives evict only
//! negatives, within a quarter of the budget (CoreDNS keeps success and denial caches apart too).
//!
//! The index maps the key's hash (the cache's keyed SipHash: no one can aim collisions) to a link
//! (an entry in its pool's SIEVE queue); the entry keeps the full key, and a lookup whose key
//! differs is a miss, never a wrong answer.

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::answer::{Kind, Stored};

/// What each entry costs besides its key and answer bytes, so that the budget bounds memory
/// rather than payload: its link and its index entry, twice (the slab and the index grow by
/// doubling), and the allocator's header on each of its three allocations.
const ENTRY_OVERHEAD: usize = 2 * (size_of::<Option<Link>>() + INDEX_ENTRY) + 3 * MALLOC_HEADER;
/// An index entry: hash, link, control byte, at the index's 7/8 load.
const INDEX_ENTRY: usize = (size_of::<(u64, usize)>() + 1) * 8 / 7;
/// glibc malloc's per-allocation header; sizes are rounded up to its 16-byte granule as well.
const MALLOC_HEADER: usize = 16;

/// One cached answer and what serving it needs.
#[derive(Debug)]
pub struct Cached {
    key: Box<[u8]>,
    answer: Stored,
    stored_at: Instant,
    /// Hits since it was stored: what makes it popular enough to prefetch.
    hits: u32,
    /// The last refresh failed then: stale answers are served without asking again for a while.
    failed: Option<Instant>,
}

impl Cached {
    /// `answer` for `key`, stored at `now`: no hits yet, no failed refresh.
    pub fn new(key: &[u8], answer: Stored, now: Instant) -> Self {
        Self { key: key.into(), answer, stored_at: now, hits: 0, failed: None }
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    pub fn answer(&self) -> &Stored {
        &self.answer
    }

    /// How long ago it was stored, at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
    }

    /// Counts a hit; returns the hits since it was stored.
    pub fn hit(&mut self) -> u32 {
        self.hits = self.hits.saturating_add(1);
        self.hits
    }

    /// Its refresh failed at `now`.
    pub fn refresh_failed(&mut self, now: Instant) {
        self.failed = Some(now);
    }

    /// When its last refresh failed, if one did since it was stored.
    pub fn failed_at(&self) -> Option<Instant> {
        self.failed
    }
}

/// An entry in its pool's SIEVE queue.
#[derive(Debug)]
struct Link {
    hash: u64,
    entry: Cached,
    visited: bool,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A SIEVE queue: newest at the head, the hand moving from the tail toward the head.
#[derive(Debug, Default)]
struct Pool {
    head: Option<usize>,
    tail: Option<usize>,
    hand: Option<usize>,
    bytes: usize,
    budget: usize,
}

/// Pool index of an entry kind.
fn pool_of(kind: Kind) -> usize {
    usize::from(kind != Kind::Positive)
}

#[derive(Debug)]
pub struct Store {
    index: FxHashMap<u64, usize>,
    links: Vec<Option<Link>>,
    free: Vec<usize>,
    pools: [Pool; 2],
}

impl Store {
    /// A store holding at most about `budget` bytes.
    pub fn new(budget: usize) -> Self {
        let negative = budget / 4;
        Self {
            index: FxHashMap::default(),
            links: Vec::new(),
            free: Vec::new(),
            pools: [
                Pool { budget: budget - negative, ..Pool::default() },
                Pool { budget: negative, ..Pool::default() },
            ],
        }
    }

    /// The entry under `key`, marked as used.
    pub fn get(&mut self, hash: u64, key: &[u8]) -> Option<&mut Cached> {
        let &index = self.index.get(&hash)?;
        let link = self.links[index].as_mut().expect("indexed link");
        if *link.entry.key != *key {
            return None;
        }
        link.visited = true;
        Some(&mut link.entry)
    }

    /// Stores `entry` under `hash`, replacing what was there (its own older answer, or another key
    /// that collided), then evicts from its pool until the pool fits its budget; returns how many
    /// entries it evicted. An entry larger than its whole pool is not stored.
    pub fn insert(&mut self, hash: u64, entry: Cached) -> u64 {
        let mut evicted = 0;
        self.remove(hash);
        let pool = pool_of(entry.answer.kind());
        let size = cost(&entry);
        if size > self.pools[pool].budget {
            return evicted;
        }
        while self.pools[pool].bytes + size > self.pools[pool].budget {
            self.evict(pool);
            evicted += 1;
        }
        let link = Link { hash, entry, visited: false, prev: None, next: self.pools[pool].head };
        let index = match self.free.pop() {
            Some(index) => {
                self.links[index] = Some(link);
                index
            }
            None => {
                self.links.push(Some(link));
                self.links.len() - 1
            }
        };
        if let Some(head) = self.pools[pool].head {
            self.link(head).prev = Some(index);
        }
        let p = &mut self.pools[pool];
        p.head = Some(index);
        p.tail.get_or_insert(index);
        p.bytes += size;
        self.index.insert(hash, index);
        evicted
    }

    /// Removes the entry under `hash`, if any.
    pub fn remove(&mut self, hash: u64) -> bool {
        match self.index.get(&hash) {
            Some(&index) => {
                self.unlink(index);
                true
            }
            None => false,
        }
    }

    /// Removes every entry `doomed` picks; returns how many.
    pub fn remove_where(&mut self, mut doomed: impl FnMut(&Cached) -> bool) -> usize {
        let picked: Vec<usize> =
            (0..self.links.len()).filter(|&i| self.links[i].as_ref().is_some_and(|link| doomed(&link.entry))).collect();
        for &index in &picked {
            self.unlink(index);
        }
        picked.len()
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn bytes(&self) -> usize {
        self.pools[0].bytes + self.pools[1].bytes
    }

    fn link(&mut self, index: usize) -> &mut Link {
        self.links[index].as_mut().expect("linked entry")
    }

    /// SIEVE: from the hand toward the head (wrapping to the tail), clear visited bits until an
    /// unvisited entry is found; that one goes.
    fn evict(&mut self, pool: usize) {
        let mut at = self.pools[pool].hand.or(self.pools[pool].tail).expect("a pool over budget has entries");
        loop {
            let link = self.link(at);
            if !link.visited {
                break;
            }
            link.visited = false;
            at = link.prev.or(self.pools[pool].tail).expect("non-empty pool");
        }
        self.pools[pool].hand = self.link(at).prev;
        self.unlink(at);
    }

    /// Takes link `index` out of its pool, the index and the slab.
    fn unlink(&mut self, index: usize) {
        let link = self.links[index].take().expect("linked entry");
        let pool = &mut self.pools[pool_of(link.entry.answer.kind())];
        if pool.hand == Some(index) {
            pool.hand = link.prev;
        }
        match link.prev {
            Some(prev) => self.links[prev].as_mut().expect("linked").next = link.next,
            None => pool.head = link.next,
        }
        match link.next {
            Some(next) => self.links[next].as_mut().expect("linked").prev = link.prev,
            None => pool.tail = link.prev,
        }
        pool.bytes -= cost(&link.entry);
        self.index.remove(&link.hash);
        self.free.push(index);
    }
}

/// What an entry counts against the budget.
fn cost(entry: &Cached) -> usize {
    let rounded = |bytes: usize| bytes.next_multiple_of(MALLOC_HEADER);
    let (wire, ttl_at) = entry.answer.heap_bytes();
    ENTRY_OVERHEAD + rounded(entry.key.len()) + rounded(wire) + rounded(ttl_at)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cache::CachePolicy;

    /// A positive answer for `name` (one label) A, one record, TTL 60.
    fn positive(name: u8) -> Stored {
        let mut reply = vec![0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 1, name, 0, 0, 1, 0, 1];
        let question_end = reply.len();
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, name]);
        Stored::answer(&reply, question_end, &CachePolicy::default()).expect("storable")
    }

    fn failure(name: u8) -> Stored {
        Stored::failure(&[0, 0, 0x81, 0x82, 0, 1, 0, 0, 0, 0, 0, 0, 1, name, 0, 0, 1, 0, 1], 19, Duration::from_secs(5))
    }

    fn entry(name: u8, answer: Stored) -> Cached {
        Cached::new(&[name], answer, Instant::now())
    }

    /// A store whose positive pool holds exactly `positives` entries like [`positive`].
    fn store_for(positives: usize) -> Store {
        let each = cost(&entry(b'a', positive(b'a')));
        let budget = (positives * each * 4).div_ceil(3);
        let store = Store::new(budget);
        assert!(store.pools[0].budget >= positives * each && store.pools[0].budget < (positives + 1) * each);
        store
    }

    fn insert(store: &mut Store, name: u8) -> u64 {
        store.insert(u64::from(name), entry(name, positive(name)))
    }

    fn held(store: &mut Store, names: &[u8]) -> Vec<u8> {
        names.iter().copied().filter(|&n| store.index.contains_key(&u64::from(n))).collect()
    }

    /// SIEVE: the hand moves from the oldest entry toward the newest, sparing (once) each entry hit
    /// since it last passed, and stays where it evicted.
    #[test]
    fn sieve_evicts_the_oldest_entry_not_hit_since_the_hand_last_passed() {
        let mut store = store_for(4);
        for name in *b"abcd" {
            assert_eq!(insert(&mut store, name), 0);
        }
        assert!(store.get(u64::from(b'b'), b"b").is_some());
        assert!(store.get(u64::from(b'd'), b"d").is_some());
        assert_eq!(insert(&mut store, b'e'), 1);
        assert_eq!(held(&mut store, b"abcde"), b"bcde", "a: the oldest, not hit");
        assert_eq!(insert(&mut store, b'f'), 1);
        assert_eq!(held(&mut store, b"abcdef"), b"bdef", "b was hit: spared; c goes");
        assert_eq!(insert(&mut store, b'g'), 1);
        assert_eq!(held(&mut store, b"abcdefg"), b"bdfg", "d was hit: spared; e goes");
        assert_eq!(insert(&mut store, b'h'), 1);
        assert_eq!(held(&mut store, b"abcdefgh"), b"bdgh", "the hand stays where it was: f goes, not b");
        assert!(store.get(u64::from(b'g'), b"g").is_some());
        assert_eq!(insert(&mut store, b'i'), 1);
        assert_eq!(held(&mut store, b"abcdefghi"), b"bdgi", "g spared; h, the newest, goes");
        assert_eq!(insert(&mut store, b'j'), 1);
        assert_eq!(held(&mut store, b"abcdefghij"), b"dgij", "past the newest the hand wraps to the oldest: b");
        assert_eq!(store.len(), 4);
    }

    #[test]
    fn negative_answers_and_failures_live_in_a_quarter_of_the_budget_and_evict_only_each_other() {
        let mut store = store_for(4);
        let negative_budget = store.pools[1].budget;
        assert_eq!(negative_budget, (store.pools[0].budget + negative_budget) / 4);
        for name in *b"abcd" {
            insert(&mut store, name);
        }
        let positive_bytes = store.bytes();
        let mut evicted = 0;
        for name in b'A'..=b'Z' {
            evicted += store.insert(u64::from(name) << 8, entry(name, failure(name)));
        }
        assert!(evicted > 0, "the flood evicts");
        assert_eq!(held(&mut store, b"abcd"), b"abcd", "never a positive answer");
        assert!(store.bytes() - positive_bytes <= negative_budget, "negatives stay within their quarter");
        assert!(store.get(u64::from(b'Z') << 8, b"Z").is_some(), "the newest negative is held");
    }

    #[test]
    fn an_entry_larger_than_its_pool_is_not_stored() {
        let mut store = Store::new(600);
        assert!(cost(&entry(b'a', failure(b'a'))) > 150, "larger than the negative quarter");
        assert_eq!(store.insert(1, entry(b'a', failure(b'a'))), 0);
        assert_eq!((store.len(), store.bytes()), (0, 0));
    }

    #[test]
    fn remove_where_drops_the_picked_entries_and_their_bytes_and_their_places_are_reused() {
        let mut store = store_for(4);
        for name in *b"abcd" {
            insert(&mut store, name);
        }
        let each = store.bytes() / 4;
        assert_eq!(store.remove_where(|entry| entry.key() == b"b" || entry.key() == b"d"), 2);
        assert_eq!((store.len(), store.bytes()), (2, 2 * each));
        assert_eq!(held(&mut store, b"abcd"), b"ac");
        for name in *b"ef" {
            assert_eq!(insert(&mut store, name), 0, "room again: nothing evicted");
        }
        assert_eq!(store.links.len(), 4, "the freed links were reused");
        assert_eq!(store.remove_where(|_| true), 4);
        assert_eq!((store.len(), store.bytes()), (0, 0));
    }

    #[test]
    fn a_key_that_shares_a_hash_replaces_the_entry_and_is_never_served_for_the_other() {
        let mut store = store_for(4);
        store.insert(7, entry(b'a', positive(b'a')));
        assert!(store.get(7, b"b").is_none(), "the full key is compared");
        store.insert(7, entry(b'b', positive(b'b')));
        assert!(store.get(7, b"a").is_none());
        assert!(store.get(7, b"b").is_some());
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn an_entry_counts_its_hits_and_its_failed_refresh() {
        let now = Instant::now();
        let mut cached = Cached::new(b"a", positive(b'a'), now);
        assert_eq!((cached.hit(), cached.hit()), (1, 2));
        assert_eq!(cached.failed_at(), None);
        cached.refresh_failed(now + Duration::from_secs(3));
        assert_eq!(cached.failed_at(), Some(now + Duration::from_secs(3)));
        assert_eq!(cached.age(now + Duration::from_millis(1500)), Duration::from_millis(1500));
        assert_eq!(cached.age(now - Duration::from_secs(1)), Duration::ZERO, "a clock read earlier is no age");
    }
}
