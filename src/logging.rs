//! Logging through `tracing`: text or JSON on stderr, level from `RUST_LOG` (default `info`).
//! Per-query events are at `debug`, so they cost one disabled-callsite check on the hot path.
//!
//! The default quiets kube's client, which logs every failed API request at ERROR, and kube's
//! watcher, which logs every 403 again at WARN as a struct dump: our source logs each watch
//! failure itself, once per backoff step, as one readable line.

use tracing_subscriber::EnvFilter;

use crate::config::cli::LogFormat;

const DEFAULT_FILTER: &str = "info,kube_client=off,kube_runtime::watcher=error,hickory_server=warn";

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
