//! How a server is asked to stop: SIGTERM (Kubernetes, systemd) means a graceful stop with a lame
//! duck period first; SIGINT (a terminal's Ctrl-C) means now.

use tokio::signal::unix::{SignalKind, signal};

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Report not-ready, keep answering for the lame-duck period, then stop.
    Graceful,
    /// Stop at once (in-flight queries still finish).
    Now,
}

/// Completes at the first SIGTERM (graceful) or SIGINT (now).
pub async fn signal_shutdown() -> Shutdown {
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => Shutdown::Graceful,
        _ = int.recv() => Shutdown::Now,
    }
}
