//! The scrape: sums every recorder's counters and reads the gauges, then encodes them with
//! `prometheus-client`. Metric names follow Prometheus conventions: `registry_dns_` prefix,
//! `_total` on counters (added by the encoder), base units (seconds).

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use super::Metrics;
use super::traffic::{self, LATENCY_BUCKETS, Path, Proto, Refusal};
use crate::forward::{InFlight, Upstreams};
use crate::names::Names;

type Result = std::result::Result<(), std::fmt::Error>;

/// What a scrape reads; registered once with the registry the ops endpoint encodes.
#[derive(Debug)]
pub struct Collector {
    pub metrics: Arc<Metrics>,
    pub names: Arc<Names>,
    /// Each local name's source, as a label: `static`, or the watched Service.
    pub name_sources: BTreeMap<String, String>,
    pub upstreams: Arc<ArcSwap<Upstreams>>,
    pub in_flight: Arc<InFlight>,
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result {
        self.traffic(&mut encoder)?;
        self.forwarding(&mut encoder)?;
        self.names(&mut encoder)?;
        self.sources(&mut encoder)
    }
}

impl Collector {
    fn traffic(&self, encoder: &mut DescriptorEncoder) -> Result {
        let all = self.metrics.traffic.lock().unwrap().clone();
        let sum = |f: &dyn Fn(&traffic::Traffic) -> u64| all.iter().map(|t| f(t)).sum::<u64>();

        let mut family = encoder.encode_descriptor(
            "registry_dns_queries",
            "DNS queries received, by transport and query type",
            None,
            MetricType::Counter,
        )?;
        for proto in Proto::ALL {
            for i in 0..traffic::QTYPE_INDICES {
                let count = sum(&|t| t.queries_of(proto, i));
                if count > 0 {
                    let labels = [("proto", proto.label()), ("type", traffic::qtype_label(i))];
                    ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "registry_dns_responses",
            "DNS responses sent, by path (local, forwarded, refused) and rcode",
            None,
            MetricType::Counter,
        )?;
        for path in Path::ALL {
            for i in 0..traffic::RCODE_INDICES {
                let count = sum(&|t| t.responses_of(path, i));
                if count > 0 {
                    let labels = [("path", path.label()), ("rcode", traffic::rcode_label(i))];
                    ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "registry_dns_response_duration",
            "Time from a query's arrival to its response's send, by path",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for path in Path::ALL {
            let mut counts = [0u64; LATENCY_BUCKETS.len() + 1];
            let sum_ns: u64 = all.iter().map(|t| t.latency_of(path).add_to(&mut counts)).sum();
            // The encoder takes per-bucket counts and accumulates them itself.
            let total: u64 = counts.iter().sum();
            let bounds = LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]);
            let buckets: Vec<(f64, u64)> = bounds.zip(counts).collect();
            family.encode_family(&[("path", path.label())])?.encode_histogram::<NoLabelSet>(
                sum_ns as f64 / 1e9,
                total,
                &buckets,
                None,
            )?;
        }

        let mut family = encoder.encode_descriptor(
            "registry_dns_refused",
            "Queries answered REFUSED, by reason (not_allowed: source outside --allow-from; over_capacity: \
             --max-concurrent forwarded queries already in flight)",
            None,
            MetricType::Counter,
        )?;
        for why in Refusal::ALL {
            ConstCounter::new(sum(&|t| t.refused_of(why))).encode(family.encode_family(&[("reason", why.label())])?)?;
        }

        let dropped = ConstCounter::new(sum(&|t| t.dropped_count()));
        dropped.encode(encoder.encode_descriptor(
            "registry_dns_dropped",
            "Packets that got no answer: not a query, or too damaged to answer",
            None,
            dropped.metric_type(),
        )?)
    }

    fn forwarding(&self, encoder: &mut DescriptorEncoder) -> Result {
        let in_flight = ConstGauge::new(self.in_flight.current() as i64);
        in_flight.encode(encoder.encode_descriptor(
            "registry_dns_forward_in_flight",
            "Forwarded queries waiting for an upstream",
            None,
            in_flight.metric_type(),
        )?)?;
        let max = ConstGauge::new(self.in_flight.max() as i64);
        max.encode(encoder.encode_descriptor(
            "registry_dns_forward_max_in_flight",
            "The cap on forwarded queries in flight (--max-concurrent)",
            None,
            max.metric_type(),
        )?)?;

        let stats = self.metrics.upstreams.lock().unwrap().clone();
        let mut family = encoder.encode_descriptor(
            "registry_dns_upstream_requests",
            "Tries sent to an upstream, by transport",
            None,
            MetricType::Counter,
        )?;
        for (addr, s) in &stats {
            for proto in Proto::ALL {
                let labels = [("upstream", addr.to_string()), ("proto", proto.label().to_string())];
                ConstCounter::new(s.requests_of(proto)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "registry_dns_upstream_timeouts",
            "Tries that got no answer within --upstream-timeout",
            None,
            MetricType::Counter,
        )?;
        for (addr, s) in &stats {
            ConstCounter::new(s.timeouts()).encode(family.encode_family(&[("upstream", addr.to_string())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "registry_dns_upstream_failures",
            "Tries that failed otherwise: SERVFAIL or REFUSED answers, send errors, broken TCP exchanges",
            None,
            MetricType::Counter,
        )?;
        for (addr, s) in &stats {
            ConstCounter::new(s.failures()).encode(family.encode_family(&[("upstream", addr.to_string())])?)?;
        }
        let upstreams = self.upstreams.load();
        let mut family = encoder.encode_descriptor(
            "registry_dns_upstream_healthy",
            "1 when a configured upstream is tried in its turn, 0 while it is demoted after failures or \
             dropped as a forwarding loop",
            None,
            MetricType::Gauge,
        )?;
        for i in 0..upstreams.len() {
            let healthy = ConstGauge::new(i64::from(upstreams.is_healthy(i)));
            healthy.encode(family.encode_family(&[("upstream", upstreams.addr(i).to_string())])?)?;
        }
        Ok(())
    }

    fn names(&self, encoder: &mut DescriptorEncoder) -> Result {
        let table = self.names.load();
        let source_of = |name: &str| self.name_sources.get(name).map_or("unknown", String::as_str);
        let mut family = encoder.encode_descriptor(
            "registry_dns_name_synced",
            "1 when a local name's source has published it, 0 while it answers SERVFAIL waiting for its first sync",
            None,
            MetricType::Gauge,
        )?;
        for (name, addresses) in table.summary() {
            let labels = [("name", name.as_str()), ("source", source_of(name))];
            ConstGauge::new(i64::from(addresses.is_some())).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "registry_dns_name_addresses",
            "Addresses a local name answers with (before --max-answers caps each answer)",
            None,
            MetricType::Gauge,
        )?;
        for (name, addresses) in table.summary() {
            let labels = [("name", name.as_str()), ("source", source_of(name))];
            ConstGauge::new(addresses.unwrap_or(0) as i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn sources(&self, encoder: &mut DescriptorEncoder) -> Result {
        let sources = self.metrics.sources.lock().unwrap().clone();
        if sources.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "registry_dns_source_synced",
            "1 once a watched Service has been listed completely",
            None,
            MetricType::Gauge,
        )?;
        for (label, s) in &sources {
            ConstGauge::new(i64::from(s.is_synced())).encode(family.encode_family(&[("source", label.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "registry_dns_source_last_event_age",
            "Time since the API server last sent anything for a watched Service (absent before the first event)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for (label, s) in &sources {
            if let Some(age) = s.since_last_event() {
                ConstGauge::new(age.as_secs_f64()).encode(family.encode_family(&[("source", label.as_str())])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "registry_dns_watch_restarts",
            "Watches of a Service that failed and were restarted with backoff",
            None,
            MetricType::Counter,
        )?;
        for (label, s) in &sources {
            ConstCounter::new(s.restarts()).encode(family.encode_family(&[("source", label.as_str())])?)?;
        }
        Ok(())
    }
}
