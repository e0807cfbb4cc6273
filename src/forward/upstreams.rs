//! The upstream servers and their health: which one a query tries next.
//!
//! Order is the configured one (resolv.conf order is meaningful), except that an upstream that
//! just failed is tried after the healthy ones until its penalty runs out, and one found to send
//! our queries back to us is never tried again.
//!
//! It also keeps each upstream's spoofing state: replies that matched no query in flight are
//! counted, and enough of them in a short time start an episode (unbound's
//! `unwanted-reply-threshold`), during which every worker replaces its sockets to that upstream
//! and its UDP answers are relayed but not cached.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tracing::{error, warn};

use crate::dns::Transport;
use crate::metrics::{Metrics, UpstreamStats};

/// Consecutive failures after which an upstream is tried last (CoreDNS's `max_fails`).
const MAX_FAILS: u32 = 2;
/// How long an upstream that reached `MAX_FAILS` stays at the back of the line.
const PENALTY: Duration = Duration::from_secs(5);
/// At most this many upstreams, so a query's tries fit a bit set (CoreDNS allows 15).
pub const MAX_UPSTREAMS: usize = 16;
/// Unexpected replies from one upstream within [`SPOOF_WINDOW`] that start a spoofing episode. A
/// healthy upstream sends none (late answers to timed-out queries are not counted), so a handful
/// is already a forger at work.
pub const SPOOF_THRESHOLD: u32 = 10;
/// The window [`SPOOF_THRESHOLD`] is counted in.
pub const SPOOF_WINDOW: Duration = Duration::from_secs(10);
/// How long an episode lasts after its latest unexpected reply.
pub const SPOOF_DEFENSE: Duration = Duration::from_secs(60);

/// One upstream server.
#[derive(Debug)]
struct Upstream {
    addr: SocketAddr,
    failures: AtomicU32,
    /// Milliseconds since [`Upstreams::epoch`] until which this upstream is penalized.
    penalized_until: AtomicU64,
    looped: AtomicBool,
    /// Start of the current [`SPOOF_WINDOW`] (ms since the epoch) and the unexpected replies in it.
    unexpected_since: AtomicU64,
    unexpected: AtomicU32,
    /// Until when (ms since the epoch) a spoofing episode lasts; 0 when there has been none.
    defended_until: AtomicU64,
    /// Spoofing episodes so far: a worker that sees this change replaces its sockets.
    episodes: AtomicU32,
    stats: Arc<UpstreamStats>,
}

/// The upstream list shared by every worker.
#[derive(Debug)]
pub struct Upstreams {
    list: Vec<Upstream>,
    epoch: Instant,
}

impl Upstreams {
    /// The upstreams at `addrs`, in order, counting into `metrics`.
    pub fn new(addrs: &[SocketAddr], metrics: &Metrics) -> Arc<Self> {
        assert!(addrs.len() <= MAX_UPSTREAMS, "config validation caps the upstream count");
        let list = addrs
            .iter()
            .map(|&addr| Upstream {
                addr,
                failures: AtomicU32::new(0),
                penalized_until: AtomicU64::new(0),
                looped: AtomicBool::new(false),
                unexpected_since: AtomicU64::new(0),
                unexpected: AtomicU32::new(0),
                defended_until: AtomicU64::new(0),
                episodes: AtomicU32::new(0),
                stats: metrics.upstream(addr),
            })
            .collect();
        Arc::new(Self { list, epoch: Instant::now() })
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn addr(&self, index: usize) -> SocketAddr {
        self.list[index].addr
    }

    /// `at` in milliseconds since [`Upstreams::epoch`], as the deadlines above are kept.
    fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The next upstream to try at `now` for a query that already tried the set bits of `tried`:
    /// healthy upstreams in order, then penalized ones; never looped ones.
    pub fn next(&self, tried: u32, now: Instant) -> Option<usize> {
        let now = self.ms_at(now);
        let untried = |&(i, u): &(usize, &Upstream)| tried & (1 << i) == 0 && !u.looped.load(Relaxed);
        let mut candidates = self.list.iter().enumerate().filter(untried);
        let mut fallback = None;
        for (i, u) in &mut candidates {
            if u.penalized_until.load(Relaxed) <= now {
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }

    /// Whether upstream `index` is tried in its turn at `now`: not demoted after failures, not
    /// looped.
    pub fn is_healthy(&self, index: usize, now: Instant) -> bool {
        let u = &self.list[index];
        !u.looped.load(Relaxed) && u.penalized_until.load(Relaxed) <= self.ms_at(now)
    }

    /// A try leaves for upstream `index` over `transport`.
    pub fn record_request(&self, index: usize, transport: Transport) {
        self.list[index].stats.request(transport);
    }

    /// A try at upstream `index` got no answer in time.
    pub fn record_timeout(&self, index: usize, now: Instant) {
        self.list[index].stats.timeout();
        self.demote_on_repeat(index, now);
    }

    /// A try at upstream `index` failed otherwise (SERVFAIL, REFUSED, port unreachable, a send or
    /// TCP error).
    pub fn record_failure(&self, index: usize, now: Instant) {
        self.list[index].stats.failure();
        self.demote_on_repeat(index, now);
    }

    pub fn record_success(&self, index: usize) {
        let u = &self.list[index];
        if u.failures.swap(0, Relaxed) >= MAX_FAILS {
            warn!(upstream = %u.addr, "upstream answers again");
        }
        u.penalized_until.store(0, Relaxed);
    }

    fn demote_on_repeat(&self, index: usize, now: Instant) {
        let u = &self.list[index];
        let failures = u.failures.fetch_add(1, Relaxed) + 1;
        if failures >= MAX_FAILS {
            if failures == MAX_FAILS {
                warn!(upstream = %u.addr, "upstream failing; trying the others first");
            }
            u.penalized_until.store(self.ms_at(now) + PENALTY.as_millis() as u64, Relaxed);
        }
    }

    /// A datagram from upstream `index`'s address matched no query in flight: a forgery, as far as
    /// anyone can tell. Enough of them start an episode, logged once.
    pub fn record_unexpected(&self, index: usize, now: Instant) {
        let u = &self.list[index];
        u.stats.unexpected_reply();
        let now = self.ms_at(now);
        if u.defended_until.load(Relaxed) > now {
            u.defended_until.store(now + SPOOF_DEFENSE.as_millis() as u64, Relaxed);
            return;
        }
        let count = if now.saturating_sub(u.unexpected_since.load(Relaxed)) > SPOOF_WINDOW.as_millis() as u64 {
            u.unexpected_since.store(now, Relaxed);
            u.unexpected.store(1, Relaxed);
            1
        } else {
            u.unexpected.fetch_add(1, Relaxed) + 1
        };
        if count < SPOOF_THRESHOLD {
            return;
        }
        let until = u.defended_until.load(Relaxed);
        if until <= now
            && u.defended_until
                .compare_exchange(until, now + SPOOF_DEFENSE.as_millis() as u64, Relaxed, Relaxed)
                .is_ok()
        {
            u.unexpected.store(0, Relaxed);
            u.episodes.fetch_add(1, Relaxed);
            u.stats.episode();
            warn!(
                upstream = %u.addr,
                unexpected = count,
                "replies from this upstream's address match no query: someone may be forging them to poison \
                 the cache; its sockets are replaced and its UDP answers are not cached while it goes on"
            );
        }
    }

    /// Spoofing episodes of upstream `index` so far.
    pub fn episodes(&self, index: usize) -> u32 {
        self.list[index].episodes.load(Relaxed)
    }

    /// Whether a spoofing episode of upstream `index` lasts at `now` (its UDP answers are not cached).
    pub fn is_defending(&self, index: usize, now: Instant) -> bool {
        self.list[index].defended_until.load(Relaxed) > self.ms_at(now)
    }

    /// A UDP answer of upstream `index` is checked over TCP, its socket having seen a forgery.
    pub fn record_recheck(&self, index: usize) {
        self.list[index].stats.recheck();
    }

    /// Takes an upstream out for good: it sent our own query back to us.
    pub fn disable_looped(&self, index: usize) {
        let u = &self.list[index];
        if !u.looped.swap(true, Relaxed) {
            error!(
                upstream = %u.addr,
                "forwarding loop: this upstream sends queries back to registry-dns; dropped it \
                 (point --upstream or the resolv.conf at the real upstream servers)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_healthy_upstreams_and_skips_looped_ones() {
        let metrics = Metrics::default();
        let ups = Upstreams::new(&["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()], &metrics);
        let now = Instant::now();
        assert_eq!(ups.next(0, now), Some(0));
        assert_eq!(ups.next(0b01, now), Some(1));
        assert_eq!(ups.next(0b11, now), None);
        ups.record_failure(0, now);
        assert_eq!(ups.next(0, now), Some(0), "one failure is not enough to demote");
        ups.record_timeout(0, now);
        assert_eq!(ups.next(0, now), Some(1));
        assert!(!ups.is_healthy(0, now) && ups.is_healthy(1, now));
        assert_eq!((metrics.upstream(ups.addr(0)).failures(), metrics.upstream(ups.addr(0)).timeouts()), (1, 1));
        assert_eq!(ups.next(0b10, now), Some(0), "a penalized upstream is still tried last");
        ups.record_success(0);
        assert_eq!(ups.next(0, now), Some(0));
        ups.disable_looped(1);
        assert_eq!(ups.next(0b01, now), None);
    }

    /// The documented numbers, written out: 10 unexpected replies within 10 s start an episode,
    /// which lasts until 60 s pass without another.
    #[test]
    fn an_episode_starts_at_the_tenth_unexpected_reply_within_10_s_and_lasts_60_s() {
        let metrics = Metrics::default();
        let ups = Upstreams::new(&["127.0.0.1:1".parse().unwrap()], &metrics);
        let now = Instant::now();
        let at = |seconds: f64| now + Duration::from_secs_f64(seconds);
        for i in 0..9 {
            ups.record_unexpected(0, at(f64::from(i)));
        }
        assert_eq!(ups.episodes(0), 0);
        assert!(!ups.is_defending(0, at(9.0)));
        ups.record_unexpected(0, at(9.5));
        assert_eq!(ups.episodes(0), 1, "the tenth within 10 s");
        assert!(ups.is_defending(0, at(69.0)));
        assert!(!ups.is_defending(0, at(70.0)), "60 s after the last one");
        for _ in 0..30 {
            ups.record_unexpected(0, at(20.0));
        }
        assert_eq!(ups.episodes(0), 1, "more forgeries extend the episode");
        assert!(ups.is_defending(0, at(79.0)));
        let stats = metrics.upstream(ups.addr(0));
        assert_eq!((stats.unexpected_replies(), stats.episodes()), (40, 1));
    }

    #[test]
    fn unexpected_replies_spread_wider_than_10_s_start_no_episode() {
        let metrics = Metrics::default();
        let ups = Upstreams::new(&["127.0.0.1:1".parse().unwrap()], &metrics);
        let now = Instant::now();
        for i in 0..20 {
            ups.record_unexpected(0, now + Duration::from_millis(1_200 * i));
        }
        assert_eq!(ups.episodes(0), 0, "one every 1.2 s: never 10 within 10 s");
    }
}
