//! `/metrics` scraped from the real binary, as `(series, value)` samples.

use super::{RegistryDns, http_get};

/// One scrape, as `(series, value)` lines, e.g. `registry_dns_queries_total{proto="udp",type="A"}`.
pub struct Scrape(Vec<(String, f64)>);

impl Scrape {
    pub fn of(s: &RegistryDns) -> Self {
        let (code, body) = http_get(s.ops.expect("ops endpoint"), "/metrics").expect("scrape");
        assert_eq!(code, 200, "{body}");
        assert!(body.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF: {body}");
        let samples = body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("sample line");
                (series.to_string(), value.parse().unwrap_or_else(|_| panic!("bad value in {l}")))
            })
            .collect();
        Self(samples)
    }

    /// The value of the series `name` with every label in `labels` (0 when absent, as Prometheus
    /// treats a counter that has not been seen yet).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<f64> = self
            .0
            .iter()
            .filter(|(series, _)| {
                let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
                series_name == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| *v)
            .collect();
        assert!(matching.len() <= 1, "{name} {labels:?} matches several series");
        matching.first().copied().unwrap_or(0.0)
    }
}
