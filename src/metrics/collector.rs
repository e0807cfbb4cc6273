//! The scrape: sums every recorder's counters and reads the gauges, then encodes them with
//! `prometheus-client`. Metric names follow Prometheus conventions: `registry_dns_` prefix,
//! `_total` on counters (added by the encoder), base units (seconds).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use super::Metrics;
use super::traffic::{self, CacheEvent, LATENCY_BUCKETS, Path, Refusal};
use crate::dns::Transport;
use crate::names::Names;

type Result = std::result::Result<(), std::fmt::Error>;

/// The readings a scrape takes from forwarding (`forward::Forwarder` has them): metrics needs
/// these, not the forwarding types, which record into metrics.
pub trait ForwardingGauges: Send + Sync + std::fmt::Debug {
    /// Clients waiting for an upstream, and the cap on them.
    fn in_flight(&self) -> (usize, usize);
    /// Each configured upstream, and whether it is tried in its turn (healthy).
    fn upstreams(&self) -> Vec<(SocketAddr, bool)>;
    /// Answers in the cache, and the bytes they count against `--cache-size`.
    fn cache_size(&self) -> (usize, usize);
    /// Answers evicted so far, by every cache the process had.
    fn cache_evictions(&self) -> u64;
}

/// Whether a source has synced (`ops::Readiness` records it, for `/readyz`).
pub trait SourceSync: Send + Sync + std::fmt::Debug {
    fn is_synced(&self, source: &str) -> bool;
}

/// What a scrape reads; registered once with the registry the ops endpoint encodes.
#[derive(Debug)]
pub struct Collector {
    pub metrics: Arc<Metrics>,
    pub names: Arc<Names>,
    /// Each local name's source, as a label: `static`, or the watched Service.
    pub name_sources: BTreeMap<String, String>,
    pub forwarding: Arc<dyn ForwardingGauges>,
    /// Which sources have synced.
    pub readiness: Arc<dyn SourceSync>,
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result {
        self.traffic(&mut encoder)?;
        self.forwarding(&mut encoder)?;
        self.cache(&mut encoder)?;
        self.names(&mut encoder)?;
        self.sources(&mut encoder)
    }
}

impl Collector {
    fn traffic(&self, encoder: &mut DescriptorEncoder) -> Result {
        let all = self.metrics.traffic.lock().unwrap().clone();
        let sum = |f: &dyn Fn(&traffic::Traffic) -> u64| all.iter().map(|t| f(t)).sum::<u64>();

        let queries = Transport::ALL.into_iter().flat_map(|proto| {
            (0..traffic::QTYPE_INDICES)
                .map(move |i| ([("proto", proto.label()), ("type", traffic::qtype_label(i))], proto, i))
        });
        let queries = queries.map(|(labels, proto, i)| (labels, sum(&|t| t.queries_of(proto, i))));
        counters(
            encoder,
            "registry_dns_queries",
            "DNS queries received, by transport and query type",
            queries.filter(|(_, n)| *n > 0),
        )?;

        let responses = Path::ALL.into_iter().flat_map(|path| {
            (0..traffic::RCODE_INDICES)
                .map(move |i| ([("path", path.label()), ("rcode", traffic::rcode_label(i))], path, i))
        });
        let responses = responses.map(|(labels, path, i)| (labels, sum(&|t| t.responses_of(path, i))));
        counters(
            encoder,
            "registry_dns_responses",
            "DNS responses sent, by path (local, forwarded, cache, refused) and rcode",
            responses.filter(|(_, n)| *n > 0),
        )?;

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

        counters(
            encoder,
            "registry_dns_refused",
            "Queries answered REFUSED, by reason (not_allowed: source outside --allow-from; over_capacity: \
             --max-concurrent forwarded queries already in flight)",
            Refusal::ALL.map(|why| ([("reason", why.label())], sum(&|t| t.refused_of(why)))),
        )?;
        single(
            encoder,
            "registry_dns_dropped",
            "Packets that got no answer: not a query, or too damaged to answer",
            ConstCounter::new(sum(&|t| t.dropped_count())),
        )
    }

    fn forwarding(&self, encoder: &mut DescriptorEncoder) -> Result {
        single(
            encoder,
            "registry_dns_forward_in_flight",
            "Forwarded queries waiting for an upstream",
            ConstGauge::new(self.forwarding.in_flight().0 as i64),
        )?;
        single(
            encoder,
            "registry_dns_forward_max_in_flight",
            "The cap on forwarded queries in flight (--max-concurrent)",
            ConstGauge::new(self.forwarding.in_flight().1 as i64),
        )?;

        let stats = self.metrics.upstreams.lock().unwrap().clone();
        let upstream = |addr: &SocketAddr| [("upstream", addr.to_string())];
        let requests = stats.iter().flat_map(|(addr, s)| {
            Transport::ALL.map(|proto| {
                ([("upstream", addr.to_string()), ("proto", proto.label().to_string())], s.requests_of(proto))
            })
        });
        counters(encoder, "registry_dns_upstream_requests", "Tries sent to an upstream, by transport", requests)?;
        counters(
            encoder,
            "registry_dns_upstream_timeouts",
            "Tries that got no answer within --upstream-timeout",
            stats.iter().map(|(addr, s)| (upstream(addr), s.timeouts())),
        )?;
        counters(
            encoder,
            "registry_dns_upstream_failures",
            "Tries that failed otherwise: SERVFAIL or REFUSED answers, closed ports, send errors, broken TCP connections",
            stats.iter().map(|(addr, s)| (upstream(addr), s.failures())),
        )?;
        counters(
            encoder,
            "registry_dns_upstream_unexpected_replies",
            "Datagrams from an upstream's address that matched no query in flight (another ID or \
             question, or no query at all): forgeries, as far as anyone can tell",
            stats.iter().map(|(addr, s)| (upstream(addr), s.unexpected_replies())),
        )?;
        counters(
            encoder,
            "registry_dns_upstream_tcp_rechecks",
            "UDP answers asked again over TCP because their socket had received an unexpected reply",
            stats.iter().map(|(addr, s)| (upstream(addr), s.rechecks())),
        )?;
        counters(
            encoder,
            "registry_dns_upstream_spoofing_episodes",
            "Times an upstream's unexpected replies crossed the threshold: its sockets were replaced and \
             its UDP answers went uncached for a while",
            stats.iter().map(|(addr, s)| (upstream(addr), s.episodes())),
        )?;
        let current = self.forwarding.upstreams();
        single(
            encoder,
            "registry_dns_upstreams",
            "Upstreams forwarded queries go to; 0 while the resolv.conf names none but ourselves, when \
             every forwarded query gets SERVFAIL (or a stale answer)",
            ConstGauge::new(current.len() as i64),
        )?;
        gauges(
            encoder,
            "registry_dns_upstream_healthy",
            "1 when a configured upstream is tried in its turn, 0 while it is demoted after failures or \
             dropped as a forwarding loop",
            current.iter().map(|(addr, healthy)| (upstream(addr), i64::from(*healthy))),
        )
    }

    fn cache(&self, encoder: &mut DescriptorEncoder) -> Result {
        let all = self.metrics.traffic.lock().unwrap().clone();
        let sum = |event| all.iter().map(|t| t.cache_of(event)).sum::<u64>();
        let counters = [
            (
                CacheEvent::Hit,
                "registry_dns_cache_hits",
                "Forwarded queries answered from the cache with a fresh answer",
            ),
            (
                CacheEvent::Miss,
                "registry_dns_cache_misses",
                "Cacheable forwarded queries that had to wait for the upstreams (their own query, or one under way)",
            ),
            (
                CacheEvent::Stale,
                "registry_dns_cache_stale_answers",
                "Expired answers served because the upstreams failed or were slow (RFC 8767)",
            ),
            (CacheEvent::Prefetch, "registry_dns_cache_prefetches", "Popular answers refreshed before they expired"),
            (
                CacheEvent::Coalesced,
                "registry_dns_cache_coalesced",
                "Misses that waited for the same question's upstream query already under way instead of asking again",
            ),
        ];
        for (event, name, help) in counters {
            single(encoder, name, help, ConstCounter::new(sum(event)))?;
        }
        single(
            encoder,
            "registry_dns_cache_evictions",
            "Answers evicted to stay within --cache-size",
            ConstCounter::new(self.forwarding.cache_evictions()),
        )?;
        let (entries, bytes) = self.forwarding.cache_size();
        single(encoder, "registry_dns_cache_entries", "Answers held in the cache", ConstGauge::new(entries as i64))?;
        single(
            encoder,
            "registry_dns_cache_bytes",
            "Bytes the cached answers take, bookkeeping included (bounded by --cache-size)",
            ConstGauge::new(bytes as i64),
        )
    }

    fn names(&self, encoder: &mut DescriptorEncoder) -> Result {
        let table = self.names.load();
        let labels = |name: &str| {
            let source = self.name_sources.get(name).map_or("unknown", String::as_str);
            [("name", name.to_string()), ("source", source.to_string())]
        };
        gauges(
            encoder,
            "registry_dns_name_synced",
            "1 when a local name's source has published it, 0 while it answers SERVFAIL waiting for its first sync",
            table.summary().iter().map(|(name, addresses)| (labels(name), i64::from(addresses.is_some()))),
        )?;
        gauges(
            encoder,
            "registry_dns_name_addresses",
            "Addresses a local name answers with (before --max-answers caps each answer)",
            table.summary().iter().map(|(name, addresses)| (labels(name), addresses.unwrap_or(0) as i64)),
        )
    }

    fn sources(&self, encoder: &mut DescriptorEncoder) -> Result {
        let sources = self.metrics.sources.lock().unwrap().clone();
        if sources.is_empty() {
            return Ok(());
        }
        let source = |label: &str| [("source", label.to_string())];
        gauges(
            encoder,
            "registry_dns_source_synced",
            "1 once a watched Service has been listed completely",
            sources.keys().map(|label| (source(label), i64::from(self.readiness.is_synced(label)))),
        )?;
        let mut family = encoder.encode_descriptor(
            "registry_dns_source_last_event_age",
            "Time since the API server last sent anything for a watched Service (absent before the first event)",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for (label, s) in &sources {
            if let Some(age) = s.since_last_event() {
                ConstGauge::new(age.as_secs_f64()).encode(family.encode_family(&source(label))?)?;
            }
        }
        counters(
            encoder,
            "registry_dns_watch_restarts",
            "Watches of a Service that failed and were restarted with backoff",
            sources.iter().map(|(label, s)| (source(label), s.restarts())),
        )
    }
}

/// One metric without labels.
fn single(encoder: &mut DescriptorEncoder, name: &str, help: &str, metric: impl EncodeMetric) -> Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One counter family: a descriptor, then a sample per label set.
fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One gauge family: a descriptor, then a sample per label set.
fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, i64)>,
) -> Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}
