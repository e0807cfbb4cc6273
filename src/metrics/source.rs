//! The state of one source (a watched Service), as the watch loop sees it. Whether it has synced
//! is `Readiness`'s to say.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct SourceStats {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last event from the API server, plus one (0: none yet).
    last_event_ms: AtomicU64,
    restarts: AtomicU64,
}

impl SourceStats {
    pub fn new(epoch: Instant) -> Self {
        Self { epoch, last_event_ms: AtomicU64::new(0), restarts: AtomicU64::new(0) }
    }

    /// Something arrived from the API server (an object, a list page, the end of a list).
    pub fn event(&self) {
        self.last_event_ms.store(self.epoch.elapsed().as_millis() as u64 + 1, Relaxed);
    }

    /// The watch failed and will be restarted after its backoff.
    pub fn restart(&self) {
        self.restarts.fetch_add(1, Relaxed);
    }

    /// Time since the last event, or `None` before the first.
    pub fn since_last_event(&self) -> Option<Duration> {
        match self.last_event_ms.load(Relaxed) {
            0 => None,
            ms => Some(self.epoch.elapsed().saturating_sub(Duration::from_millis(ms - 1))),
        }
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Relaxed)
    }
}
