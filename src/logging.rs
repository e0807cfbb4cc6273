//! Logging through `tracing`: text or JSON on stderr, level from `RUST_LOG` (default `info`).
//! Per-query events are at `debug`, so they cost one disabled-callsite check on the hot path.

use tracing_subscriber::EnvFilter;

use crate::config::cli::LogFormat;

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
