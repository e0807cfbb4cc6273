//! The signals that stop a server: SIGTERM (Kubernetes, systemd) and SIGINT (a terminal).

use tokio::signal::unix::{SignalKind, signal};

/// Completes at the first SIGTERM or SIGINT.
pub async fn terminate_signal() {
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
