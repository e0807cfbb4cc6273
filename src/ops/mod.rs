//! The operations endpoint (`--ops-listen`, default `127.0.0.1:8099`): `/healthz` says the
//! process is alive, `/readyz` whether it should get traffic (see `readiness`). Plain HTTP/1.1
//! through axum; `/metrics` serves the Prometheus metrics (see `crate::metrics`), and
//! `POST /cache/flush` empties the cache (see `flush`).
//!
//! `--metrics-listen` serves `/metrics` alone, so that Prometheus can scrape the node's address
//! while the probes' endpoints stay on loopback. The DaemonSet's port is 9353, next to CoreDNS's
//! 9153 and NodeLocal DNSCache's 9253 and used by neither: on `hostNetwork` every node agent
//! shares the node's ports, and whichever of two binds second cannot serve.

mod flush;
mod readiness;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::forward::Forwarder;
use crate::metrics;

/// The content type of prometheus-client's text encoding (OpenMetrics 1.0).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub use readiness::Readiness;

/// Binds the ops or metrics listener given by `flag` (errors surface at startup, like the DNS
/// sockets', as one line naming the port and the flag). With SO_REUSEPORT, as the DNS sockets: on
/// `hostNetwork` an old and a new pod overlap on one node during a rolling update, and both need
/// the port. While they overlap, a probe may reach either instance. Another program on the port
/// (one that does not set SO_REUSEPORT, as CoreDNS's `prometheus` and `health` do not) makes the
/// bind fail, whichever of the two started first.
pub fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<std::net::TcpListener> {
    bind_shared(addr).map_err(|e| {
        let port = addr.port();
        match e.kind() {
            ErrorKind::AddrInUse => anyhow::anyhow!(
                "{flag} {addr}: port {port} is already in use by another program on this host (`ss -ltnp 'sport = :{port}'` \
                 names it); give {flag} a free port"
            ),
            ErrorKind::AddrNotAvailable => {
                anyhow::anyhow!("{flag} {addr}: {} is not an address of this host; give {flag} one of its addresses", addr.ip())
            }
            ErrorKind::PermissionDenied => {
                anyhow::anyhow!("{flag} {addr}: port {port} needs CAP_NET_BIND_SERVICE; give {flag} a port above 1023")
            }
            _ => anyhow::anyhow!("{flag} {addr}: {e}"),
        }
    })
}

fn bind_shared(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// `/healthz`, `/readyz`, `/metrics` (the text exposition of `registry`) and `/cache/flush`.
pub fn router(readiness: Arc<Readiness>, registry: Arc<Registry>, forwarder: Arc<Forwarder>) -> Router {
    let health = Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(ready));
    let cache = Router::new().route("/cache/flush", post(flush::flush));
    health.with_state(readiness).merge(metrics_router(registry)).merge(cache.with_state(forwarder))
}

/// `/metrics` only; any other path is 404.
pub fn metrics_router(registry: Arc<Registry>) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(registry)
}

async fn scrape(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], metrics::render(&registry))
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> (StatusCode, String) {
    match readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

/// Serves until `stopped` turns true.
pub async fn serve(
    listener: std::net::TcpListener,
    router: Router,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await
}
