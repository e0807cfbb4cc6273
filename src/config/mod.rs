//! Configuration: what the server serves, where it listens and where it forwards.
//!
//! [`Config`] is the one description of a server; the command line (`cli`, with the config file
//! of `file`) is only one way to fill it, and a program embedding registry-dns fills it directly.

pub mod cli;
mod file;
pub mod memory;
mod nameservers;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure};
use tracing::warn;

pub use nameservers::from_resolv_conf;

use crate::access::AllowList;
use crate::forward::MAX_UPSTREAMS;
use crate::model::{AnswerMode, ServiceName, StaticRecord};

/// Everything a server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to serve on, UDP and TCP each.
    pub listen: Vec<SocketAddr>,
    /// Local names with fixed addresses.
    pub records: Vec<StaticRecord>,
    /// Local names that follow a Kubernetes Service.
    pub services: Vec<ServiceName>,
    /// What names that follow a Service answer with.
    pub answer: AnswerMode,
    /// Kubeconfig to use instead of kube's inference (in-cluster, `KUBECONFIG`, `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// Where `/healthz` and `/readyz` are served; `None` turns the endpoint off.
    pub ops_listen: Option<SocketAddr>,
    /// Where `/metrics` alone is served; `None` (the default) serves it on `ops_listen` only.
    pub metrics_listen: Option<SocketAddr>,
    /// Upstream servers; when empty, the nameservers of `resolv_conf`.
    pub upstreams: Vec<SocketAddr>,
    pub resolv_conf: PathBuf,
    /// TTL of local answers.
    pub ttl: u32,
    /// At most this many A (or AAAA) records in one local answer; more rotate across answers.
    pub max_answers: usize,
    /// How long one upstream gets to answer before the next is tried.
    pub upstream_timeout: Duration,
    /// Forwarded queries in flight at most; more get REFUSED.
    pub max_concurrent: usize,
    /// The packet cache in front of the upstreams.
    pub cache: crate::cache::CachePolicy,
    /// UDP worker threads; 0 means one per CPU this process may run on.
    pub workers: usize,
    /// A TCP connection with no complete query for this long is closed (RFC 7766 section 6.2.3).
    pub tcp_idle_timeout: Duration,
    /// Open TCP connections at most; more are closed at once.
    pub max_tcp_connections: usize,
    /// Sources allowed to query; others get REFUSED.
    pub allow_from: AllowList,
    /// After SIGTERM, how long to keep answering (with `/readyz` at 503) before stopping.
    pub lameduck: Duration,
    /// A dummy interface to create (or reuse) with `interface_addresses` before binding, so the
    /// node and its pods reach the server on one link-local address; `None` leaves the node's
    /// interfaces alone. Never removed on exit.
    pub interface_name: Option<String>,
    /// The addresses of `interface_name` (each /32 or /128); unused without it.
    pub interface_addresses: Vec<IpAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 5353))],
            records: Vec::new(),
            services: Vec::new(),
            answer: AnswerMode::default(),
            kubeconfig: None,
            ops_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8099))),
            metrics_listen: None,
            upstreams: Vec::new(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            ttl: 5,
            max_answers: 16,
            upstream_timeout: Duration::from_secs(2),
            max_concurrent: 1000,
            cache: crate::cache::CachePolicy::default(),
            workers: 0,
            tcp_idle_timeout: Duration::from_secs(10),
            max_tcp_connections: 512,
            allow_from: AllowList::default(),
            lameduck: Duration::from_secs(5),
            interface_name: None,
            interface_addresses: vec![crate::interface::DEFAULT_ADDRESS],
        }
    }
}

impl Config {
    /// Checks everything that does not need the network; each error is one line.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.listen.is_empty(), "no --listen address");
        ensure!(
            !self.records.is_empty() || !self.services.is_empty(),
            "no local names: give at least one --record NAME=IP or --service NAME=NAMESPACE/SERVICE"
        );
        let mut seen = HashSet::new();
        for name in self.records.iter().map(|r| &r.name).chain(self.services.iter().map(|s| &s.name)) {
            ensure!(seen.insert(name.to_lowercase()), "{name} is configured twice");
        }
        ensure!(self.upstreams.len() <= MAX_UPSTREAMS, "at most {MAX_UPSTREAMS} upstreams");
        ensure!(self.ttl > 0, "--ttl must be at least 1");
        ensure!(self.max_answers > 0, "--max-answers must be at least 1");
        ensure!(!self.upstream_timeout.is_zero(), "--upstream-timeout must be positive");
        ensure!(self.max_concurrent > 0, "--max-concurrent must be at least 1");
        ensure!(self.max_tcp_connections > 0, "--max-tcp-connections must be at least 1");
        ensure!(!self.allow_from.networks().is_empty(), "--allow-from needs at least one network");
        // A cache larger than the container allows ends in an OOM kill once it fills.
        memory::check_cache_fits(self.cache.size, memory::own_limit().as_ref())?;
        if let Some(name) = &self.interface_name {
            crate::interface::validate_name(name).map_err(anyhow::Error::msg)?;
            crate::interface::validate_addresses(&self.interface_addresses).map_err(anyhow::Error::msg)?;
        }
        for upstream in &self.upstreams {
            if let Some(listen) = self.own_address(*upstream) {
                bail!("upstream {upstream} is this server's own listen address {listen}: that is a forwarding loop");
            }
        }
        Ok(())
    }

    /// The upstreams to use: the configured ones, or the resolv.conf's minus any address of our
    /// own (a node whose resolv.conf already points at registry-dns must not loop). The list is
    /// empty when the resolv.conf names no other server: the local names are still served.
    pub fn resolve_upstreams(&self) -> anyhow::Result<Vec<SocketAddr>> {
        if !self.upstreams.is_empty() {
            return Ok(self.upstreams.clone());
        }
        let mut upstreams = from_resolv_conf(&self.resolv_conf)?;
        upstreams.retain(|upstream| match self.own_address(*upstream) {
            Some(listen) => {
                warn!(%upstream, %listen, "ignoring a resolv.conf nameserver that is our own listen address");
                false
            }
            None => true,
        });
        upstreams.truncate(MAX_UPSTREAMS);
        Ok(upstreams)
    }

    /// The listen address that `upstream` would reach, if it is one of ours.
    fn own_address(&self, upstream: SocketAddr) -> Option<SocketAddr> {
        self.listen.iter().copied().find(|listen| {
            listen.port() == upstream.port()
                && (listen.ip() == upstream.ip()
                    || (listen.ip().is_unspecified()
                        && (upstream.ip().is_loopback() || upstream.ip().is_unspecified())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config { records: vec!["knative-local-registry=10.0.0.10".parse().unwrap()], ..Config::default() }
    }

    #[test]
    fn rejects_an_upstream_that_is_our_own_address() {
        let mut c = config();
        c.upstreams = vec!["127.0.0.1:5353".parse().unwrap()];
        assert!(c.validate().unwrap_err().to_string().contains("forwarding loop"));
        c.listen = vec!["0.0.0.0:5353".parse().unwrap()];
        assert!(c.validate().is_err());
        c.upstreams = vec!["127.0.0.1:53".parse().unwrap()];
        assert!(c.validate().is_ok());
    }

    #[test]
    fn rejects_a_name_configured_twice_in_any_case_and_any_source() {
        let mut c = config();
        c.records.push("Knative-Local-Registry=10.0.0.11".parse().unwrap());
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
        let mut c = config();
        c.services.push("KNATIVE-local-registry=registry/knative".parse().unwrap());
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn checks_the_interface_only_when_one_is_managed() {
        let mut c = config();
        c.interface_addresses = vec![];
        assert!(c.validate().is_ok(), "no --interface-name: the addresses are unused");
        c.interface_name = Some("registry-dns0".into());
        assert!(c.validate().unwrap_err().to_string().contains("at least one --interface-address"));
        c.interface_addresses = vec!["169.254.20.25".parse().unwrap()];
        assert!(c.validate().is_ok());
        c.interface_name = Some("a-name-far-too-long".into());
        assert!(c.validate().unwrap_err().to_string().contains("interface name"));
    }
}
