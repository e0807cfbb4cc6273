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
use tokio::sync::watch;

pub use readiness::Readiness;

/// Binds the ops listener (errors surface at startup, like the DNS sockets').
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
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
