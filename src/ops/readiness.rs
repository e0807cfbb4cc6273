//! Readiness: which sources have completed their first sync, and whether we are shutting down.
//! `/readyz` is 200 only when every source has synced once and no shutdown has begun, so a
//! Service or probe moves traffic away before the process stops answering.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Readiness {
    unsynced: Mutex<BTreeSet<String>>,
    shutting_down: AtomicBool,
}

impl Readiness {
    /// Declares a source that must sync before the process is ready.
    pub fn register(&self, source: &str) {
        self.unsynced.lock().unwrap().insert(source.to_string());
    }

    pub fn mark_synced(&self, source: &str) {
        self.unsynced.lock().unwrap().remove(source);
    }

    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Whether `source` has synced once.
    pub fn is_synced(&self, source: &str) -> bool {
        !self.unsynced.lock().unwrap().contains(source)
    }

    /// Whether every source has synced once (whatever the shutdown state).
    pub fn sources_synced(&self) -> bool {
        self.unsynced.lock().unwrap().is_empty()
    }

    /// `Ok` when ready, else the reason, for the `/readyz` body.
    pub fn check(&self) -> Result<(), String> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        let unsynced = self.unsynced.lock().unwrap();
        if unsynced.is_empty() {
            Ok(())
        } else {
            Err(format!("not synced: {}", unsynced.iter().cloned().collect::<Vec<_>>().join(", ")))
        }
    }
}

impl crate::metrics::SourceSync for Readiness {
    fn is_synced(&self, source: &str) -> bool {
        Readiness::is_synced(self, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_source_synced_and_not_shutting_down() {
        let r = Readiness::default();
        assert!(r.check().is_ok());
        r.register("endpointslices registry/knative");
        r.register("service a/b");
        assert_eq!(r.check().unwrap_err(), "not synced: endpointslices registry/knative, service a/b");
        r.mark_synced("endpointslices registry/knative");
        r.mark_synced("service a/b");
        assert!(r.check().is_ok());
        r.set_shutting_down();
        assert_eq!(r.check().unwrap_err(), "shutting down");
    }
}
