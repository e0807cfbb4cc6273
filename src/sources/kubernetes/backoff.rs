//! How long a failed watch waits before its next try.
//!
//! kube's default (0.8 s doubling to 30 s, jittered, starting over after 120 s without an error,
//! as client-go's reflector) made a returning API server wait for the next try up to 30 s after a
//! long outage, and a 410 Gone met on that try cost a second delay before the relist: up to a
//! minute or two of stale answers after the API server was back. Here the delay doubles from
//! 0.8 s to a cap of 3 s, each one jittered down by up to half so a fleet of nodes does not retry
//! in step: while the API server stays down each watch tries at most 40 times a minute, and once it
//! answers again it is seen within 3 s. A 410 Gone proves the API server is up and only our
//! resourceVersion too old, so the relist it calls for runs at once, as client-go's does; at most
//! once per backoff period, so a server answering 410 to every watch cannot make it loop hot.

use std::time::{Duration, Instant};

/// The first delay.
const FIRST: Duration = Duration::from_millis(800);
/// The longest delay, before jitter.
pub const CAP: Duration = Duration::from_secs(3);
/// After this long without an error, the next error starts over at [`FIRST`].
const RESET_AFTER: Duration = Duration::from_secs(120);

/// The retry delays of one watch.
#[derive(Debug, Default)]
pub struct Backoff {
    /// Errors since the backoff last started over.
    attempt: u32,
    last_error: Option<Instant>,
    /// Whether a 410 Gone was already retried at once since the backoff last started over.
    relisted_at_once: bool,
}

impl Backoff {
    /// The delay after an error at `now`; `gone` says the error was a 410 Gone.
    pub fn next(&mut self, now: Instant, gone: bool) -> Duration {
        if self.last_error.is_none_or(|last| now.duration_since(last) >= RESET_AFTER) {
            self.attempt = 0;
            self.relisted_at_once = false;
        }
        self.last_error = Some(now);
        if gone && !self.relisted_at_once {
            self.relisted_at_once = true;
            return Duration::ZERO;
        }
        let base = FIRST.saturating_mul(1 << self.attempt.min(8)).min(CAP);
        self.attempt += 1;
        base.mul_f64(rand::random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter_and_starts_over_after_a_quiet_period() {
        let mut b = Backoff::default();
        let t = Instant::now();
        let delays: Vec<Duration> = (0..10).map(|i| b.next(t + Duration::from_secs(i), false)).collect();
        let within = |d: Duration, base: Duration| d >= base / 2 && d <= base;
        assert!(within(delays[0], FIRST) && within(delays[1], FIRST * 2), "{delays:?}");
        assert!(delays[2..].iter().all(|d| within(*d, CAP)), "{delays:?}");
        assert!(within(b.next(t + Duration::from_secs(200), false), FIRST), "quiet for 120 s: starts over");
    }

    #[test]
    fn a_410_relists_at_once_only_once_per_backoff_period() {
        let mut b = Backoff::default();
        let t = Instant::now();
        assert!(b.next(t, false) > Duration::ZERO);
        assert_eq!(b.next(t, true), Duration::ZERO);
        assert!(b.next(t, true) > Duration::ZERO, "a server answering 410 to every watch");
        assert_eq!(b.next(t + Duration::from_secs(300), true), Duration::ZERO);
    }
}
