//! Query and response counters for one UDP worker (or for all TCP connections together).
//!
//! Why one set per worker rather than one `prometheus_client::Family` for the process: every
//! query touches these counters, and a shared counter is a cache line the two workers would pass
//! back and forth on every increment. Each worker owns a [`Traffic`] of its own (uncontended
//! relaxed atomics, a few nanoseconds each), and a scrape sums them all. Latency is observed per
//! batch for local answers (one clock read per batch of up to 64 queries), and per reply for
//! forwarded ones, whose start time the forwarder keeps anyway.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::dns::Transport;
use crate::dns::wire::types;

/// Which way a response was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// From the name table (including errors for malformed queries).
    Local = 0,
    /// Relayed from an upstream, or SERVFAIL when none answered.
    Forwarded = 1,
    /// REFUSED: a source outside `--allow-from`, or the in-flight cap reached.
    Refused = 2,
    /// From the cache: a fresh or stale answer, or a cached failure.
    Cache = 3,
}

impl Path {
    pub const ALL: [Path; 4] = [Path::Local, Path::Forwarded, Path::Refused, Path::Cache];

    pub fn label(self) -> &'static str {
        match self {
            Path::Local => "local",
            Path::Forwarded => "forwarded",
            Path::Refused => "refused",
            Path::Cache => "cache",
        }
    }
}

/// Why a query was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source is outside `--allow-from`.
    NotAllowed = 0,
    /// `--max-concurrent` forwarded queries were in flight already.
    OverCapacity = 1,
}

impl Refusal {
    pub const ALL: [Refusal; 2] = [Refusal::NotAllowed, Refusal::OverCapacity];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::NotAllowed => "not_allowed",
            Refusal::OverCapacity => "over_capacity",
        }
    }
}

/// What a cacheable forwarded query met in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEvent {
    /// A fresh answer was served.
    Hit = 0,
    /// Nothing servable: the query waited for the upstreams (its own query, or one under way).
    Miss = 1,
    /// An expired answer was served (RFC 8767).
    Stale = 2,
    /// A popular answer about to expire is refreshed ahead of time.
    Prefetch = 3,
    /// A miss parked on the same question's upstream query already under way (single flight).
    Coalesced = 4,
}

impl CacheEvent {
    pub const ALL: [CacheEvent; 5] =
        [CacheEvent::Hit, CacheEvent::Miss, CacheEvent::Stale, CacheEvent::Prefetch, CacheEvent::Coalesced];
}

/// The query types counted by name; everything else is `other`, so a client sending random
/// types cannot grow the label set.
pub const QTYPES: [(u16, &str); 12] = [
    (types::A, "A"),
    (types::AAAA, "AAAA"),
    (types::ANY, "ANY"),
    (5, "CNAME"),
    (65, "HTTPS"),
    (15, "MX"),
    (types::NS, "NS"),
    (12, "PTR"),
    (types::SOA, "SOA"),
    (33, "SRV"),
    (64, "SVCB"),
    (16, "TXT"),
];
/// Label index of a type not in [`QTYPES`].
pub const OTHER_QTYPE: usize = QTYPES.len();
/// Label index of a packet whose question could not be read.
pub const NO_QTYPE: usize = QTYPES.len() + 1;
const QTYPE_LABELS: usize = QTYPES.len() + 2;

/// Response codes counted by name (the header's four bits); any other is `other`.
pub const RCODES: [&str; 6] = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"];
const RCODE_LABELS: usize = RCODES.len() + 1;

/// Upper bounds of the latency buckets, in seconds: from a local answer (tens of microseconds) to
/// a forwarded query that went through every upstream's timeout.
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
const LATENCY_BUCKET_NS: [u64; 16] = {
    let mut ns = [0u64; 16];
    let mut i = 0;
    while i < 16 {
        ns[i] = (LATENCY_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// A latency histogram: per-bucket (not cumulative) counts, the last one for +Inf.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration, times: u64) {
        let ns = elapsed.as_nanos() as u64;
        let bucket = LATENCY_BUCKET_NS.iter().position(|&bound| ns <= bound).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(times, Relaxed);
        self.sum_ns.fetch_add(ns * times, Relaxed);
    }

    /// Adds this histogram's counts into `buckets` (non-cumulative) and returns the sum in ns.
    pub fn add_to(&self, buckets: &mut [u64; LATENCY_BUCKETS.len() + 1]) -> u64 {
        for (total, count) in buckets.iter_mut().zip(&self.buckets) {
            *total += count.load(Relaxed);
        }
        self.sum_ns.load(Relaxed)
    }
}

/// One worker's counters.
#[derive(Debug, Default)]
pub struct Traffic {
    queries: [[AtomicU64; QTYPE_LABELS]; 2],
    responses: [[AtomicU64; RCODE_LABELS]; 4],
    latency: [Histogram; 4],
    refused: [AtomicU64; 2],
    dropped: AtomicU64,
    cache: [AtomicU64; CacheEvent::ALL.len()],
}

impl Traffic {
    /// A query arrived; `qtype` is `None` when its question could not be read.
    pub fn query(&self, transport: Transport, qtype: Option<u16>) {
        let index = match qtype {
            None => NO_QTYPE,
            Some(t) => QTYPES.iter().position(|&(known, _)| known == t).unwrap_or(OTHER_QTYPE),
        };
        self.queries[transport as usize][index].fetch_add(1, Relaxed);
    }

    /// A response left on `path`, with the rcode in its header (low four bits).
    pub fn response(&self, path: Path, rcode: u16) {
        let index = usize::from(rcode).min(RCODES.len());
        self.responses[path as usize][index].fetch_add(1, Relaxed);
    }

    /// `times` responses on `path` took `elapsed` from the query's arrival to the answer's send.
    pub fn latency(&self, path: Path, elapsed: Duration, times: u64) {
        if times > 0 {
            self.latency[path as usize].observe(elapsed, times);
        }
    }

    /// A REFUSED response left on the refused path, for `why` (one call counts both).
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
        self.response(Path::Refused, crate::dns::wire::rcode::REFUSED);
    }

    /// A cacheable forwarded query met `event` in the cache.
    pub fn cache(&self, event: CacheEvent) {
        self.cache[event as usize].fetch_add(1, Relaxed);
    }

    /// A packet got no answer at all (not a query, or unreadable).
    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Relaxed);
    }

    pub fn queries_of(&self, transport: Transport, qtype_index: usize) -> u64 {
        self.queries[transport as usize][qtype_index].load(Relaxed)
    }

    pub fn responses_of(&self, path: Path, rcode_index: usize) -> u64 {
        self.responses[path as usize][rcode_index].load(Relaxed)
    }

    pub fn latency_of(&self, path: Path) -> &Histogram {
        &self.latency[path as usize]
    }

    pub fn refused_of(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Relaxed)
    }

    pub fn cache_of(&self, event: CacheEvent) -> u64 {
        self.cache[event as usize].load(Relaxed)
    }

    pub fn dropped_count(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

/// The label of qtype index `i` (see [`Traffic::queries_of`]).
pub fn qtype_label(i: usize) -> &'static str {
    match i {
        OTHER_QTYPE => "other",
        NO_QTYPE => "none",
        i => QTYPES[i].1,
    }
}

/// The label of rcode index `i` (see [`Traffic::responses_of`]).
pub fn rcode_label(i: usize) -> &'static str {
    RCODES.get(i).copied().unwrap_or("other")
}

/// Number of qtype and rcode label indices, for iterating.
pub const QTYPE_INDICES: usize = QTYPE_LABELS;
pub const RCODE_INDICES: usize = RCODE_LABELS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_first_bucket_that_holds_it() {
        let t = Traffic::default();
        t.latency(Path::Local, Duration::from_micros(50), 3);
        t.latency(Path::Local, Duration::from_micros(51), 1);
        t.latency(Path::Local, Duration::from_secs(10), 1);
        let mut buckets = [0; LATENCY_BUCKETS.len() + 1];
        let sum = t.latency_of(Path::Local).add_to(&mut buckets);
        assert_eq!(buckets[0], 3);
        assert_eq!(buckets[1], 1);
        assert_eq!(buckets[LATENCY_BUCKETS.len()], 1);
        assert_eq!(sum, 150_000 + 51_000 + 10_000_000_000);
    }

    #[test]
    fn unknown_types_and_rcodes_fold_into_bounded_labels() {
        let t = Traffic::default();
        t.query(Transport::Udp, Some(types::A));
        t.query(Transport::Udp, Some(4242));
        t.query(Transport::Tcp, None);
        assert_eq!(t.queries_of(Transport::Udp, 0), 1);
        assert_eq!(qtype_label(OTHER_QTYPE), "other");
        assert_eq!(t.queries_of(Transport::Udp, OTHER_QTYPE), 1);
        assert_eq!(t.queries_of(Transport::Tcp, NO_QTYPE), 1);
        t.response(Path::Forwarded, 9);
        assert_eq!(rcode_label(RCODES.len()), "other");
        assert_eq!(t.responses_of(Path::Forwarded, RCODES.len()), 1);
    }
}
