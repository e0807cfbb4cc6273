//! Live reload: a new [`Config`] (from SIGHUP re-reading `--config`) or a changed resolv.conf
//! swaps in without a restart and without dropping a query.
//!
//! What can change live is what users change on a running node: the static records, the
//! upstreams (`--upstream`, or the resolv.conf's nameservers, which DHCP rewrites),
//! `--allow-from`, and the cache settings. Each is an atomic swap the hot path picks up at its
//! next query: the name table in one rebuild, the upstream list with its loop probe (UDP workers
//! open sockets for the new list and let the old ones finish their queries; the cache starts over
//! empty, since its answers came from the old list), the allow list, the cache (a new, empty one).
//! Everything else (listen addresses, workers, the Kubernetes sources, limits) is fixed for the
//! life of the sockets and tasks built from it: a change there is logged as needing a restart, and
//! the rest still applies. A config that fails validation, or whose upstreams cannot be resolved,
//! changes nothing.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tracing::{error, info, warn};

use super::{Shared, list};
use crate::config::Config;
use crate::forward::{LoopProbe, Upstreams};
use crate::sources::static_records;

/// How often the resolv.conf is checked for changes (CoreDNS's `reload` polls too: a file that
/// kubelet or DHCP replaces, bind-mounted or symlinked, is not reliably seen by inotify).
const RESOLV_CONF_POLL: Duration = Duration::from_secs(2);

/// What the log says of a resolv.conf that names no server but our own.
const NO_UPSTREAM: &str = "no upstream: the resolv.conf lists no nameserver but our own";

/// The upstreams to start with. Without any (a resolv.conf that is missing, or names only
/// registry-dns itself, as on a node whose resolver is still being set up) the server starts all
/// the same: its local names need none, forwarded queries get SERVFAIL (or a stale answer), and
/// the first upstreams the resolv.conf lists are taken up (`watch_resolv_conf`). Exiting instead
/// would crash-loop the pod and take the local names down with it.
pub(crate) fn initial_upstreams(config: &Config) -> Vec<SocketAddr> {
    match config.resolve_upstreams() {
        Ok(addrs) if addrs.is_empty() => {
            warn!(path = %config.resolv_conf.display(), "{NO_UPSTREAM}: serving the local names, SERVFAIL for the rest until it lists one");
            addrs
        }
        Ok(addrs) => addrs,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "{NO_UPSTREAM}: serving the local names, SERVFAIL for the rest until it lists one");
            Vec::new()
        }
    }
}

/// Applies new configurations to a running server.
pub struct Reloader {
    shared: Arc<Shared>,
    /// The configuration in effect (the fields that need a restart keep their running values).
    current: Mutex<Config>,
}

impl Reloader {
    pub(crate) fn new(shared: Arc<Shared>, config: Config) -> Arc<Self> {
        Arc::new(Self { shared, current: Mutex::new(config) })
    }

    /// Applies `new`, or changes nothing and returns why not (one line).
    pub async fn apply(&self, new: Config) -> anyhow::Result<()> {
        new.validate()?;
        let upstreams = new.resolve_upstreams()?;
        let mut current = self.current.lock().await;
        let fixed = needs_restart(&current, &new);
        if !fixed.is_empty() {
            warn!(settings = %fixed.join(","), "these settings changed and take effect at the next restart");
        }
        let mut changed = Vec::new();
        if current.records != new.records {
            static_records::replace(&self.shared.names, &current.records, &new.records).await?;
            current.records = new.records;
            changed.push("record");
        }
        if upstreams.is_empty() && !self.shared.forwarder.upstreams().is_empty() {
            warn!(path = %new.resolv_conf.display(), "{NO_UPSTREAM}: keeping the current upstreams");
        } else if self.swap_upstreams(&upstreams) {
            changed.push("upstream");
        }
        if current.cache != new.cache {
            // A new, empty cache of the new size and lifetimes.
            self.shared.forwarder.replace_cache(new.cache);
            current.cache = new.cache;
            changed.push("cache");
        }
        current.upstreams = new.upstreams;
        current.resolv_conf = new.resolv_conf;
        if current.allow_from != new.allow_from {
            self.shared.allow.store(Arc::new(new.allow_from.clone()));
            current.allow_from = new.allow_from;
            changed.push("allow-from");
        }
        let names = self.shared.names.describe().await;
        let changed = if changed.is_empty() { "nothing".to_string() } else { changed.join(",") };
        info!(
            %changed,
            %names,
            upstreams = %list(&upstreams),
            "configuration reloaded"
        );
        Ok(())
    }

    /// Replaces the upstreams when the list differs; returns whether it did.
    fn swap_upstreams(&self, addrs: &[SocketAddr]) -> bool {
        let running = self.shared.forwarder.upstreams();
        if (0..running.len()).map(|i| running.addr(i)).eq(addrs.iter().copied()) {
            return false;
        }
        let upstreams = Upstreams::new(addrs, &self.shared.metrics);
        let probe = LoopProbe::new(upstreams.clone());
        // The probe first: a probe name of the new list coming back must be recognized as soon
        // as queries go to that list.
        self.shared.probe.store(probe.clone());
        self.shared.forwarder.replace_upstreams(upstreams);
        tokio::spawn(probe.send(self.shared.forwarder.timeout()));
        true
    }

    /// Re-reads the resolv.conf whenever its content changes, while the upstreams come from it.
    /// A resolv.conf that lists no usable nameserver (a half-written file) keeps the old ones; a
    /// server that had none takes the first it lists.
    pub async fn watch_resolv_conf(self: Arc<Self>) {
        let mut last = None;
        let mut tick = tokio::time::interval(RESOLV_CONF_POLL);
        loop {
            tick.tick().await;
            let current = self.current.lock().await;
            if !current.upstreams.is_empty() {
                last = None;
                continue;
            }
            let content = std::fs::read(&current.resolv_conf).ok();
            if last.is_none() {
                last = Some(content);
                continue;
            }
            if last.as_ref() == Some(&content) {
                continue;
            }
            last = Some(content);
            match current.resolve_upstreams() {
                Ok(addrs) if addrs.is_empty() => {
                    warn!(path = %current.resolv_conf.display(), "resolv.conf changed: {NO_UPSTREAM}: keeping the current upstreams")
                }
                Ok(addrs) => {
                    if self.swap_upstreams(&addrs) {
                        info!(path = %current.resolv_conf.display(), upstreams = %list(&addrs), "resolv.conf changed: new upstreams");
                    }
                }
                Err(e) => warn!(error = %e, "resolv.conf changed but is unusable: keeping the current upstreams"),
            }
        }
    }

    /// Applies a configuration from `load` at every SIGHUP; a failure is logged and the running
    /// configuration stays.
    pub async fn on_sighup<F, Fut>(self: Arc<Self>, load: F) -> std::io::Result<()>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = anyhow::Result<Config>>,
    {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        while hangups.recv().await.is_some() {
            info!("SIGHUP: reloading the configuration");
            let result = match load().await {
                Ok(config) => self.apply(config).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                error!(error = %format!("{e:#}"), "reload rejected: still serving the previous configuration");
            }
        }
        Ok(())
    }
}

/// The settings that differ between `a` and `b` and cannot change without a restart.
fn needs_restart(a: &Config, b: &Config) -> Vec<&'static str> {
    let mut fixed = Vec::new();
    let mut check = |differs: bool, name| {
        if differs {
            fixed.push(name);
        }
    };
    check(a.listen != b.listen, "listen");
    check(a.services != b.services, "service");
    check(a.answer != b.answer, "answer");
    check(a.kubeconfig != b.kubeconfig, "kubeconfig");
    check(a.ops_listen != b.ops_listen, "ops-listen");
    check(a.metrics_listen != b.metrics_listen, "metrics-listen");
    check(a.ttl != b.ttl, "ttl");
    check(a.max_answers != b.max_answers, "max-answers");
    check(a.upstream_timeout != b.upstream_timeout, "upstream-timeout");
    check(a.max_concurrent != b.max_concurrent, "max-concurrent");
    check(a.workers != b.workers, "workers");
    check(a.tcp_idle_timeout != b.tcp_idle_timeout, "tcp-idle-timeout");
    check(a.max_tcp_connections != b.max_tcp_connections, "max-tcp-connections");
    check(a.lameduck != b.lameduck, "lameduck");
    check(a.interface_name != b.interface_name, "interface-name");
    check(a.interface_addresses != b.interface_addresses, "interface-address");
    fixed
}
