//! The operations endpoint (`--ops-listen`, default `127.0.0.1:8080`): `/healthz` says the
//! process is alive, `/readyz` whether it should get traffic (see `readiness`). Plain HTTP/1.1
//! through axum; later endpoints (metrics) are routes added to [`router`].

mod readiness;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

pub use readiness::Readiness;

/// Binds the ops listener (errors surface at startup, like the DNS sockets'). With SO_REUSEPORT,
/// as the DNS sockets: on `hostNetwork` an old and a new pod overlap on one node during a rolling
/// update, and both need the port. While they overlap, a probe may reach either instance.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

pub fn router(readiness: Arc<Readiness>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(ready)).with_state(readiness)
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
    readiness: Arc<Readiness>,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, router(readiness))
        .with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await
}
