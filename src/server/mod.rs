//! The server: binds the sockets, runs the UDP workers and the TCP listener, and shuts down
//! cleanly. Data flows one way: sockets -> `request::handle` -> local answer or `forward`.
//!
//! - `socket`: SO_REUSEPORT listening sockets;
//! - `udp`: one worker thread per CPU;
//! - `tcp`: the TCP listener;
//! - `reload`: applying a new configuration, or a changed resolv.conf, while serving;
//! - `shutdown`: the signals that stop the server, and how.

mod reload;
pub mod shutdown;
mod socket;
mod tcp;
mod udp;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use hickory_proto::rr::Name;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{error, info, warn};

pub use self::reload::Reloader;
use self::shutdown::Shutdown;
use crate::access::AllowList;
use crate::config::Config;
use crate::forward::{Forwarder, LoopProbe, Upstreams};
use crate::metrics::{self, Collector, Metrics};
use crate::model::parse_local_name;
use crate::names::Names;
use crate::ops::{self, Readiness};
use crate::sources::kubernetes::{self, KubernetesSource};
use crate::sources::static_records;

/// What every worker and connection reads.
/// The swappable parts (`ArcSwap`) are the ones a reload replaces; each is loaded once per batch.
pub(crate) struct Shared {
    pub names: Arc<Names>,
    pub probe: ArcSwap<LoopProbe>,
    pub forwarder: Arc<Forwarder>,
    pub tcp_idle_timeout: Duration,
    pub allow: ArcSwap<AllowList>,
    pub metrics: Arc<Metrics>,
}

impl Shared {
    /// How long a forwarded query can still take once it has been started: every upstream's try.
    /// Shutdown waits this long (plus a margin) for the queries in flight.
    pub fn forwarding_bound(&self) -> Duration {
        self.forwarder.bound()
    }
}

/// A server with its sockets bound, ready to [`run`](Server::run).
pub struct Server {
    shared: Arc<Shared>,
    listeners: Listeners,
    max_tcp_connections: usize,
    readiness: Arc<Readiness>,
    kubernetes: Option<KubernetesSource>,
    ops: Option<std::net::TcpListener>,
    /// `--metrics-listen`: `/metrics` alone.
    metrics: Option<std::net::TcpListener>,
    registry: Arc<Registry>,
    reloader: Arc<Reloader>,
    lameduck: Duration,
}

impl Server {
    /// Validates `config`, binds every socket and publishes the static names. Errors (a bad
    /// config, an address in use) surface here, before anything is served.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        // The node-local interface first: its addresses must exist before they can be bound.
        if let Some(name) = &config.interface_name {
            crate::interface::ensure(name, &config.interface_addresses).await?;
            for address in crate::interface::unserved(&config.interface_addresses, &config.listen) {
                warn!(interface = %name, %address, "no --listen address serves this interface address");
            }
        }
        let metrics = Arc::new(Metrics::default());
        let upstreams = Upstreams::new(&reload::initial_upstreams(&config), &metrics);
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };

        // In a rolling update another instance already serves our addresses. Joining its
        // SO_REUSEPORT group at once would hand us a share of its queries while our sources are
        // not synced yet, and those would get SERVFAIL: then we bind only once they have synced
        // (see `run`). Otherwise bind now, so that forwarding works from the first second.
        let peer_serving = config.listen.iter().any(|&addr| address_in_use(addr));
        let listeners = if peer_serving && !config.services.is_empty() {
            Listeners::Deferred { addrs: config.listen.clone(), workers }
        } else {
            Listeners::Bound(Bound::bind(&config.listen, workers)?)
        };

        let ops = match config.ops_listen {
            Some(addr) => Some(ops::bind(addr, "--ops-listen")?),
            None => None,
        };
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(ops::bind(addr, "--metrics-listen")?),
            None => None,
        };
        let readiness = Arc::new(Readiness::default());
        // Only names that follow a Service need Kubernetes; with static records alone no
        // connection is attempted at all.
        let kubernetes = match config.services.is_empty() {
            true => None,
            false => Some(
                KubernetesSource::new(&config.services, config.answer, config.kubeconfig.as_deref(), &readiness)
                    .await?,
            ),
        };
        let declared =
            config.records.iter().map(|r| r.name.clone()).chain(config.services.iter().map(|s| s.name.clone()));
        let names = Names::new(declared, config.ttl, server_name(), config.max_answers).await?;
        static_records::publish(&names, &config.records).await?;
        let shared = Arc::new(Shared {
            names,
            probe: ArcSwap::new(LoopProbe::new(upstreams.clone())),
            forwarder: Arc::new(Forwarder::new(
                upstreams,
                config.cache,
                config.max_concurrent,
                config.upstream_timeout,
                workers,
            )),
            tcp_idle_timeout: config.tcp_idle_timeout,
            allow: ArcSwap::from_pointee(config.allow_from.clone()),
            metrics,
        });
        let name_sources = config
            .records
            .iter()
            .map(|r| (r.name.to_string(), "static".to_string()))
            .chain(
                config
                    .services
                    .iter()
                    .map(|s| (s.name.to_string(), kubernetes::source_label(config.answer, &s.namespace, &s.service))),
            )
            .collect();
        let registry = Arc::new(metrics::registry(Collector {
            metrics: shared.metrics.clone(),
            names: shared.names.clone(),
            name_sources,
            forwarding: shared.forwarder.clone(),
            readiness: readiness.clone(),
        }));
        Ok(Self {
            listeners,
            max_tcp_connections: config.max_tcp_connections,
            readiness,
            kubernetes,
            ops,
            metrics: metrics_listener,
            registry,
            reloader: Reloader::new(shared.clone(), config.clone()),
            lameduck: config.lameduck,
            shared,
        })
    }

    /// The addresses listened on (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        match &self.listeners {
            Listeners::Bound(bound) => &bound.local_addrs,
            Listeners::Deferred { addrs, .. } => addrs,
        }
    }

    /// Applies new configurations while the server runs (see [`Reloader`]).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// The local names, for sources to publish into.
    pub fn names(&self) -> Arc<Names> {
        self.shared.names.clone()
    }

    /// Serves until `shutdown` completes. A graceful shutdown first turns `/readyz` to 503 and
    /// keeps answering for the lame-duck period, so that clients and CoreDNS move away; then the
    /// server stops reading new queries, lets the ones in flight finish (bounded by the upstream
    /// timeouts) and returns.
    pub async fn run(self, shutdown: impl Future<Output = Shutdown>) -> anyhow::Result<()> {
        if let Some(kubernetes) = self.kubernetes {
            kubernetes.spawn(self.shared.names.clone(), self.readiness.clone(), &self.shared.metrics);
        }
        let (stop, stopped) = watch::channel(false);
        let mut ops_addr = String::from("off");
        let ops_task = match self.ops {
            Some(listener) => {
                ops_addr = listener.local_addr()?.to_string();
                let router = ops::router(self.readiness.clone(), self.registry.clone(), self.shared.forwarder.clone());
                Some(tokio::spawn(ops::serve(listener, router, stopped.clone())))
            }
            None => None,
        };
        let mut metrics_addr = String::from("off");
        let metrics_task = match self.metrics {
            Some(listener) => {
                metrics_addr = listener.local_addr()?.to_string();
                let router = ops::metrics_router(self.registry.clone());
                Some(tokio::spawn(ops::serve(listener, router, stopped.clone())))
            }
            None => None,
        };

        let mut shutdown = std::pin::pin!(shutdown);
        let Bound { udp, tcp, local_addrs } = match self.listeners {
            Listeners::Bound(bound) => bound,
            Listeners::Deferred { addrs, workers } => {
                info!(
                    listen = %list(&addrs),
                    ops = %ops_addr,
                    "another instance serves these addresses: joining once our sources have synced"
                );
                tokio::select! {
                    () = joinable(&addrs, &self.readiness) => {}
                    _ = &mut shutdown => {
                        let _ = stop.send(true);
                        return Ok(());
                    }
                }
                Bound::bind(&addrs, workers)?
            }
        };
        let mut workers = Vec::new();
        for (index, sockets) in udp.into_iter().enumerate() {
            let shared = self.shared.clone();
            let stopped = stopped.clone();
            let worker = std::thread::Builder::new()
                .name(format!("udp-{index}"))
                .spawn(move || udp::run(sockets, shared, stopped))?;
            workers.push(worker);
        }
        let connections = Arc::new(Semaphore::new(self.max_tcp_connections));
        let tcp_traffic = self.shared.metrics.traffic();
        let mut listeners = Vec::new();
        for listener in tcp {
            let listener = TcpListener::from_std(listener)?;
            listeners.push(tokio::spawn(tcp::serve(
                listener,
                self.shared.clone(),
                connections.clone(),
                tcp_traffic.clone(),
                stopped.clone(),
            )));
        }

        let upstreams = self.shared.forwarder.upstreams();
        info!(
            listen = %list(&local_addrs),
            ops = %ops_addr,
            metrics = %metrics_addr,
            names = %self.shared.names.describe().await,
            upstreams = %list(&(0..upstreams.len()).map(|i| upstreams.addr(i)).collect::<Vec<_>>()),
            workers = workers.len(),
            "registry-dns serving"
        );
        tokio::spawn(self.shared.probe.load_full().send(self.shared.forwarder.timeout()));
        let resolv_conf_watch = tokio::spawn(self.reloader.clone().watch_resolv_conf());

        let how = shutdown.await;
        resolv_conf_watch.abort();
        self.readiness.set_shutting_down();
        if how == Shutdown::Graceful && !self.lameduck.is_zero() {
            info!(lameduck = ?self.lameduck, "shutting down: not ready, still answering for the lame-duck period");
            tokio::time::sleep(self.lameduck).await;
        }
        info!("shutting down: no new queries; finishing those in flight");
        let _ = stop.send(true);
        for task in ops_task.into_iter().chain(metrics_task) {
            let _ = task.await;
        }
        for listener in listeners {
            let _ = listener.await;
        }
        let drain = self.shared.forwarding_bound() + Duration::from_secs(1);
        let all = u32::try_from(self.max_tcp_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(drain, connections.acquire_many(all)).await;
        let joined = tokio::task::spawn_blocking(move || {
            for worker in workers {
                match worker.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => error!(error = %e, "UDP worker failed"),
                    Err(_) => error!("UDP worker panicked"),
                }
            }
        });
        joined.await?;
        info!("stopped");
        Ok(())
    }
}

/// The DNS sockets: bound, or waiting to be bound (see `Server::bind`).
enum Listeners {
    Bound(Bound),
    Deferred { addrs: Vec<SocketAddr>, workers: usize },
}

/// Bound DNS sockets.
struct Bound {
    /// One socket per listen address for each UDP worker.
    udp: Vec<Vec<std::net::UdpSocket>>,
    tcp: Vec<std::net::TcpListener>,
    local_addrs: Vec<SocketAddr>,
}

impl Bound {
    fn bind(addrs: &[SocketAddr], workers: usize) -> anyhow::Result<Self> {
        let mut udp: Vec<Vec<std::net::UdpSocket>> = (0..workers).map(|_| Vec::new()).collect();
        let mut tcp = Vec::new();
        let mut local_addrs = Vec::new();
        for &addr in addrs {
            let (first, listener) = bind_udp_and_tcp(addr)?;
            // With port 0 the kernel picks one; every other socket of this address shares it.
            let actual = first.local_addr()?;
            udp[0].push(first);
            for sockets in udp.iter_mut().skip(1) {
                sockets.push(socket::udp(actual).with_context(|| format!("cannot listen on {actual}/udp"))?);
            }
            tcp.push(listener);
            local_addrs.push(actual);
        }
        Ok(Self { udp, tcp, local_addrs })
    }
}

/// Whether some socket is bound to `addr` already (a plain bind, without SO_REUSEPORT, fails).
fn address_in_use(addr: SocketAddr) -> bool {
    addr.port() != 0 && matches!(std::net::UdpSocket::bind(addr), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

/// Completes once every source has synced, or once no other instance holds `addrs` any more (it
/// stopped, or died: then serving with unsynced names beats not serving at all).
async fn joinable(addrs: &[SocketAddr], readiness: &Readiness) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        if readiness.sources_synced() || !addrs.iter().any(|&addr| address_in_use(addr)) {
            return;
        }
    }
}

/// Binds UDP and TCP on one address. With port 0 the UDP port the kernel picks may be taken for
/// TCP (outgoing connections use the same ephemeral range), so a few picks are tried.
fn bind_udp_and_tcp(addr: SocketAddr) -> anyhow::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let attempts = if addr.port() == 0 { 16 } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        let pick = match addr.port() {
            0 => unshared_port(addr).with_context(|| format!("cannot listen on {addr}/udp"))?,
            _ => addr,
        };
        let udp = socket::udp(pick).with_context(|| format!("cannot listen on {addr}/udp"))?;
        let actual = udp.local_addr()?;
        match socket::tcp(actual) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_error = Some(anyhow::Error::new(e).context(format!("cannot listen on {actual}/tcp"))),
        }
    }
    Err(last_error.expect("at least one attempt"))
}

/// For port 0, an address with a port no socket holds. Linux gives a SO_REUSEPORT socket bound to
/// port 0 a port that another SO_REUSEPORT socket of the same user may already hold (the two are
/// compatible), and the kernel would then split the clients between that program and us; a plain
/// socket's pick never collides. It is let go just before ours binds it.
fn unshared_port(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    std::net::UdpSocket::bind(addr)?.local_addr()
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(",")
}

/// The server's own name, used as the NS of every local zone: the host name (on a
/// `hostNetwork` DaemonSet, the node's), or `registry-dns.` when that is not a usable name.
fn server_name() -> Name {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    parse_local_name(host.trim()).unwrap_or_else(|_| Name::from_ascii("registry-dns.").expect("valid name"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::SocketAddr;

    use super::{bind_udp_and_tcp, socket};

    #[test]
    fn a_port_picked_for_us_is_never_one_another_reuseport_socket_holds() {
        // Other programs' SO_REUSEPORT sockets on kernel-picked ports (as parallel tests start
        // registry-dns on port 0): ours must land on none of them, or clients would be split.
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let held: Vec<_> = (0..800).map(|_| socket::udp(any).unwrap()).collect();
        let ports: HashSet<u16> = held.iter().map(|s| s.local_addr().unwrap().port()).collect();
        for _ in 0..300 {
            let (udp, tcp) = bind_udp_and_tcp(any).unwrap();
            let port = udp.local_addr().unwrap().port();
            assert!(!ports.contains(&port), "port {port} is shared with another SO_REUSEPORT socket");
            assert_eq!(tcp.local_addr().unwrap().port(), port);
        }
    }
}
