//! The cap on clients waiting for an upstream, across all workers and transports
//! (`--max-concurrent`): beyond it clients get REFUSED at once, so memory stays bounded when
//! upstreams stall. Every client waiting for an upstream holds a [`Permit`]: the one whose query
//! went upstream, each one parked on that query, and a prefetch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct ConcurrencyCap {
    count: AtomicUsize,
    max: usize,
}

/// One place under the cap, given back when dropped (whatever ends the wait: an answer, a
/// failure, an abandoned query).
#[derive(Debug)]
pub struct Permit(Arc<ConcurrencyCap>);

impl ConcurrencyCap {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { count: AtomicUsize::new(0), max })
    }

    /// A place under the cap, if one is free.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Permit(self.clone()))
    }

    /// Clients waiting for an upstream now (for metrics).
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Relaxed).min(self.max)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permit_holds_its_place_until_dropped() {
        let cap = ConcurrencyCap::new(2);
        let a = cap.try_acquire().unwrap();
        let b = cap.try_acquire().unwrap();
        assert!(cap.try_acquire().is_none(), "over the cap");
        assert_eq!(cap.current(), 2);
        drop(a);
        let c = cap.try_acquire().expect("a place came free");
        drop((b, c));
        assert_eq!(cap.current(), 0);
    }
}
