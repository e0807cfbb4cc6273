//! One watch: a kube-runtime watcher feeding a reflector store, and the store's state published
//! into the name table whenever it changes.
//!
//! What keeps answers steady through API trouble is the reflector: during a relist (after a
//! 410 Gone or a reconnect) it buffers the new objects and swaps them in at `InitDone`, so the
//! store, and with it the published addresses, stays at the last known state until the new one
//! is complete. Errors only delay the next retry (kube's default backoff, 0.8 s growing to 30 s);
//! nothing is ever unpublished because the API server is unreachable.

use std::fmt::Debug;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use futures::StreamExt;
use hickory_proto::rr::Name;
use kube::runtime::reflector::{self, Lookup};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::metrics::SourceStats;
use crate::names::{NameState, Names};
use crate::ops::Readiness;

/// What to watch and where its addresses go.
pub struct Watch<K: Resource> {
    pub api: Api<K>,
    pub config: watcher::Config,
    /// How the source is named in logs and `/readyz`, e.g. `endpointslices registry/knative`.
    pub source: String,
    /// The local names that answer with these addresses.
    pub names: Vec<Name>,
    /// The addresses of the current objects.
    pub addresses: fn(&[Arc<K>]) -> Vec<IpAddr>,
    /// Sync state, last event and restarts, for metrics.
    pub stats: Arc<SourceStats>,
}

impl<K> Watch<K>
where
    K: Resource + Lookup + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    <K as Lookup>::DynamicType: Eq + Hash + Clone + Default,
{
    /// Runs until the process ends: the watcher retries forever.
    pub async fn run(self, table: Arc<Names>, readiness: Arc<Readiness>) {
        let (store, writer) = reflector::store::<K>();
        let stream = reflector::reflector(writer, watch_stream(self.api, self.config)).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut synced = false;
        let mut failing = false;
        while let Some(event) = stream.next().await {
            if event.is_ok() {
                self.stats.event();
            }
            match event {
                Ok(Event::InitDone) => {
                    self.stats.synced();
                    if !synced {
                        info!(source = %self.source, "synced");
                        readiness.mark_synced(&self.source);
                    }
                    synced = true;
                }
                Ok(Event::Apply(_) | Event::Delete(_)) if synced => {}
                Ok(_) => continue,
                Err(e) => {
                    warn!(source = %self.source, error = %e, "watch failed: serving the last known addresses; retrying with backoff");
                    self.stats.restart();
                    failing = true;
                    continue;
                }
            }
            if failing {
                info!(source = %self.source, "watch recovered");
                failing = false;
            }
            let addresses = (self.addresses)(&store.state());
            for name in &self.names {
                match table.publish(name, NameState::Addresses(addresses.clone())).await {
                    Ok(true) => info!(name = %name, source = %self.source, ?addresses, "addresses changed"),
                    Ok(false) => {}
                    Err(e) => warn!(name = %name, error = %e, "cannot publish addresses"),
                }
            }
        }
    }
}
