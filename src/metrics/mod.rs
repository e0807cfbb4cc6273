//! Metrics: what `/metrics` on the ops listener exposes, in the Prometheus/OpenMetrics text
//! format through `prometheus-client`.
//!
//! The hot path only bumps relaxed atomics in structures it owns: a [`Traffic`] per UDP worker
//! (one more for TCP), an [`UpstreamStats`] per upstream address, a [`SourceStats`] per watched
//! Service. Nothing is formatted, labelled or locked until a scrape, when the `collector` sums
//! them and reads the gauges (in flight, upstream health, name table) at that moment.
//!
//! - `traffic`: queries by transport and type, responses by path and rcode, latency per path,
//!   what cacheable queries met in the cache;
//! - `upstream_stats`: tries, timeouts, failures and spoofing counts per upstream;
//! - `source`: sync state, last event and restarts per watched Service;
//! - `collector`: the scrape, and the metric names.

mod collector;
mod source;
mod traffic;
mod upstream_stats;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use collector::{Collector, ForwardingGauges, SourceSync};
pub use source::SourceStats;
pub use traffic::{CacheEvent, Path, Refusal, Traffic};
pub use upstream_stats::UpstreamStats;

/// Every counter set of the process, handed out to whoever records and summed at each scrape.
#[derive(Debug)]
pub struct Metrics {
    epoch: Instant,
    traffic: Mutex<Vec<Arc<Traffic>>>,
    upstreams: Mutex<BTreeMap<SocketAddr, Arc<UpstreamStats>>>,
    sources: Mutex<BTreeMap<String, Arc<SourceStats>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            traffic: Mutex::default(),
            upstreams: Mutex::default(),
            sources: Mutex::default(),
        }
    }
}

impl Metrics {
    /// A new set of traffic counters for one recorder (a UDP worker, the TCP listener).
    pub fn traffic(&self) -> Arc<Traffic> {
        let traffic = Arc::new(Traffic::default());
        self.traffic.lock().unwrap().push(traffic.clone());
        traffic
    }

    /// The counters of the upstream at `addr` (the same ones across reloads).
    pub fn upstream(&self, addr: SocketAddr) -> Arc<UpstreamStats> {
        self.upstreams.lock().unwrap().entry(addr).or_default().clone()
    }

    /// The state of the source called `label` (as in logs and `/readyz`).
    pub fn source(&self, label: &str) -> Arc<SourceStats> {
        let mut sources = self.sources.lock().unwrap();
        sources.entry(label.to_string()).or_insert_with(|| Arc::new(SourceStats::new(self.epoch))).clone()
    }
}

/// The registry `/metrics` encodes: build info and the [`Collector`].
pub fn registry(collector: Collector) -> prometheus_client::registry::Registry {
    let mut registry = prometheus_client::registry::Registry::default();
    let version = vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())];
    registry.register(
        "registry_dns_build",
        "The running binary's version",
        prometheus_client::metrics::info::Info::new(version),
    );
    registry.register_collector(Box::new(collector));
    registry
}

/// The text exposition of `registry`.
pub fn render(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("writing to a String cannot fail");
    text
}
