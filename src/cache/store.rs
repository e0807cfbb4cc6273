//! Where entries live: a hash index over a slab, and SIEVE eviction (Zhang et al., NSDI 2024) in
//! two pools with byte budgets of their own.
//!
//! SIEVE because a hit only sets a bit (no list surgery, unlike LRU), and it keeps popular entries
//! at least as well as LRU under the skewed traffic a node resolver sees. Two pools because
//! negative answers and failures come in floods (random-subdomain attacks, a misconfigured search
//! list) that must never push out the positive answers a node relies on: negatives evict only
//! negatives, within a quarter of the budget (CoreDNS keeps success and denial caches apart too).
//!
//! The index maps the key's hash (the cache's keyed SipHash: no one can aim collisions) to a slot;
//! the slot keeps the full key, and a lookup whose key differs is a miss, never a wrong answer.

use std::time::Instant;

use rustc_hash::FxHashMap;

use super::answer::{Kind, Stored};

/// What each entry costs besides its key and answer bytes, so that the budget bounds memory
/// rather than payload: its slot and its index entry, twice (the slab and the index grow by
/// doubling), and the allocator's header on each of its three allocations.
const ENTRY_OVERHEAD: usize = 2 * (size_of::<Option<Slot>>() + INDEX_ENTRY) + 3 * MALLOC_HEADER;
/// An index entry: hash, slot, control byte, at the index's 7/8 load.
const INDEX_ENTRY: usize = (size_of::<(u64, usize)>() + 1) * 8 / 7;
/// glibc malloc's per-allocation header; sizes are rounded up to its 16-byte granule as well.
const MALLOC_HEADER: usize = 16;

/// One cached answer and what serving it needs.
#[derive(Debug)]
pub struct Cached {
    pub key: Box<[u8]>,
    pub answer: Stored,
    pub stored_at: Instant,
    /// Hits since it was stored: what makes it popular enough to prefetch.
    pub hits: u32,
    /// The last refresh failed then: stale answers are served without asking again for a while.
    pub failed: Option<Instant>,
}

#[derive(Debug)]
struct Slot {
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

/// What an insert or removal did to the counts, for the metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Change {
    pub evicted: u64,
}

#[derive(Debug)]
pub struct Store {
    index: FxHashMap<u64, usize>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    pools: [Pool; 2],
}

impl Store {
    /// A store holding at most about `budget` bytes.
    pub fn new(budget: usize) -> Self {
        let negative = budget / 4;
        Self {
            index: FxHashMap::default(),
            slots: Vec::new(),
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
        let slot = self.slots[index].as_mut().expect("indexed slot");
        if *slot.entry.key != *key {
            return None;
        }
        slot.visited = true;
        Some(&mut slot.entry)
    }

    /// Stores `entry` under `hash`, replacing what was there (its own older answer, or another key
    /// that collided), then evicts from its pool until the pool fits its budget. An entry larger
    /// than its whole pool is not stored.
    pub fn insert(&mut self, hash: u64, entry: Cached) -> Change {
        let mut change = Change::default();
        self.remove(hash);
        let pool = pool_of(entry.answer.kind);
        let size = cost(&entry);
        if size > self.pools[pool].budget {
            return change;
        }
        while self.pools[pool].bytes + size > self.pools[pool].budget {
            self.evict(pool);
            change.evicted += 1;
        }
        let slot = Slot { hash, entry, visited: false, prev: None, next: self.pools[pool].head };
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index] = Some(slot);
                index
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        if let Some(head) = self.pools[pool].head {
            self.slot(head).prev = Some(index);
        }
        let p = &mut self.pools[pool];
        p.head = Some(index);
        p.tail.get_or_insert(index);
        p.bytes += size;
        self.index.insert(hash, index);
        change
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
            (0..self.slots.len()).filter(|&i| self.slots[i].as_ref().is_some_and(|slot| doomed(&slot.entry))).collect();
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

    fn slot(&mut self, index: usize) -> &mut Slot {
        self.slots[index].as_mut().expect("linked slot")
    }

    /// SIEVE: from the hand toward the head (wrapping to the tail), clear visited bits until an
    /// unvisited entry is found; that one goes.
    fn evict(&mut self, pool: usize) {
        let mut at = self.pools[pool].hand.or(self.pools[pool].tail).expect("a pool over budget has entries");
        loop {
            let slot = self.slot(at);
            if !slot.visited {
                break;
            }
            slot.visited = false;
            at = slot.prev.or(self.pools[pool].tail).expect("non-empty pool");
        }
        self.pools[pool].hand = self.slot(at).prev;
        self.unlink(at);
    }

    /// Takes slot `index` out of its pool, the index and the slab.
    fn unlink(&mut self, index: usize) {
        let slot = self.slots[index].take().expect("linked slot");
        let pool = &mut self.pools[pool_of(slot.entry.answer.kind)];
        if pool.hand == Some(index) {
            pool.hand = slot.prev;
        }
        match slot.prev {
            Some(prev) => self.slots[prev].as_mut().expect("linked").next = slot.next,
            None => pool.head = slot.next,
        }
        match slot.next {
            Some(next) => self.slots[next].as_mut().expect("linked").prev = slot.prev,
            None => pool.tail = slot.prev,
        }
        pool.bytes -= cost(&slot.entry);
        self.index.remove(&slot.hash);
        self.free.push(index);
    }
}

/// What an entry counts against the budget.
fn cost(entry: &Cached) -> usize {
    let rounded = |bytes: usize| bytes.next_multiple_of(MALLOC_HEADER);
    ENTRY_OVERHEAD
        + rounded(entry.key.len())
        + rounded(entry.answer.wire.len())
        + rounded(entry.answer.ttl_at.len() * 2)
}
