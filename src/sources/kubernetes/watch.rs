//! One watch: a kube-runtime watcher feeding a reflector store, and the store's state published
//! into the name table whenever it changes.
//!
//! What keeps answers steady through API trouble is the reflector: during a relist (after a
//! 410 Gone or a reconnect) it buffers the new objects and swaps them in at `InitDone`, so the
//! store, and with it the published addresses, stays at the last known state until the new one
//! is complete. Errors only delay the next retry; nothing is ever unpublished because the API
//! server is unreachable or sends something we cannot read.
//!
//! The retry delay is [`Backoff`] (0.8 s doubling to 3 s, jittered; a 410 Gone relists at once),
//! applied here rather than with kube's `.default_backoff()` adaptor: that one resets the backoff
//! on every item the watcher yields, and the watcher yields `Init` before each attempt to list, so
//! a LIST that keeps failing (an object that does not decode, a 500 on lists only) was retried
//! every 0.8 to 1.6 s forever, a full list each time. Here nothing resets it but its own timer.

use std::fmt::Debug;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use hickory_proto::rr::Name;
use kube::runtime::reflector::{self, Lookup};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::backoff::Backoff;
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
    /// Drops the parts of an object that `addresses` does not read, before it is stored.
    pub trim: fn(&mut K),
    /// Last event and restarts, for metrics.
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
        let stream = reflector::reflector(writer, watch_stream(self.api, self.config).modify(self.trim));
        let mut stream = std::pin::pin!(stream);
        let mut backoff = Backoff::default();
        let mut synced = false;
        let mut failing = false;
        while let Some(event) = stream.next().await {
            if event.is_ok() {
                self.stats.event();
            }
            let mut newly_synced = false;
            match event {
                Ok(Event::InitDone) => {
                    newly_synced = !synced;
                    synced = true;
                }
                Ok(Event::Apply(_) | Event::Delete(_)) if synced => {}
                Ok(_) => continue,
                Err(e) => {
                    let delay = backoff.next(Instant::now(), is_gone(&e));
                    let error = describe(&e);
                    warn!(source = %self.source, %error, retry_in = ?delay, "watch failed: serving the last known addresses");
                    self.stats.restart();
                    failing = true;
                    tokio::time::sleep(delay).await;
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
                    Ok(true) => {
                        let shown = Shown(&addresses);
                        info!(name = %name, source = %self.source, count = addresses.len(), addresses = %shown, "addresses changed");
                    }
                    Ok(false) => {}
                    Err(e) => warn!(name = %name, error = %e, "cannot publish addresses"),
                }
            }
            // Ready only once the names answer: before, /readyz said 200 (and a restarting
            // instance joined the listeners) while a large Service's names still gave SERVFAIL.
            if newly_synced {
                info!(source = %self.source, "synced");
                readiness.mark_synced(&self.source);
            }
        }
    }
}

/// A 410 Gone in the watch stream: the watcher has dropped its resourceVersion and relists next.
fn is_gone(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(status) if status.code == 410)
}

/// The error as logged. kube takes a watch line that is JSON but not a readable event (an object
/// of another kind, a field of the wrong type) for a Status and reports an empty one
/// (`ApiError: : (Status { code: 0, .. })`); say what it was instead. A 403 is the API server's
/// own sentence (who may not do what, where) with what to do about it, instead of kube's rendering,
/// which repeats it inside a struct dump. A starting API server answers 403 to everyone for a few
/// seconds, until its RBAC caches are loaded: the line says so, lest it send anyone to the Role.
fn describe(e: &watcher::Error) -> String {
    let status = match e {
        watcher::Error::WatchFailed(kube::Error::Api(status)) if status.code == 0 => {
            return "watch stream failed: an event that does not decode as the watched kind".into();
        }
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status,
        watcher::Error::WatchError(status) => status,
        e => return e.to_string(),
    };
    match status.code {
        403 => format!(
            "forbidden: {}; grant get, list and watch on it in a Role there (docs/kubernetes.md, RBAC), unless the API server is \
             still starting",
            status.message
        ),
        _ => e.to_string(),
    }
}

/// How many addresses a log line lists; a Service with thousands of endpoints made each change a
/// line of hundreds of kilobytes.
const LOGGED_ADDRESSES: usize = 16;

/// The first [`LOGGED_ADDRESSES`] addresses, and how many more there are.
struct Shown<'a>(&'a [IpAddr]);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self.0.iter().take(LOGGED_ADDRESSES).map(IpAddr::to_string).collect();
        write!(f, "[{}", shown.join(", "))?;
        match self.0.len().saturating_sub(LOGGED_ADDRESSES) {
            0 => write!(f, "]"),
            more => write!(f, ", ... {more} more]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_403_is_logged_as_the_api_servers_sentence_and_the_fix() {
        let message = r#"endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:a:b" cannot list resource "endpointslices" in API group "discovery.k8s.io" in the namespace "c""#;
        let status =
            kube::core::Status { code: 403, message: message.into(), reason: "Forbidden".into(), ..Default::default() };
        let line = describe(&watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status))));
        assert_eq!(
            line,
            format!(
                "forbidden: {message}; grant get, list and watch on it in a Role there (docs/kubernetes.md, RBAC), unless the \
                 API server is still starting"
            )
        );
    }

    #[test]
    fn logs_at_most_16_addresses() {
        let ips: Vec<IpAddr> = (1..=20).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        assert_eq!(Shown(&ips[..2]).to_string(), "[10.0.0.1, 10.0.0.2]");
        assert_eq!(Shown(&[]).to_string(), "[]");
        let long = Shown(&ips).to_string();
        assert!(long.starts_with("[10.0.0.1, ") && long.ends_with("10.0.0.16, ... 4 more]"), "{long}");
    }
}
