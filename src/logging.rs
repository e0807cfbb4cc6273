//! Logging through `tracing`: text or JSON on stderr, level from `RUST_LOG` (default `info`).
//! Per-query events are at `debug`, so they cost one disabled-callsite check on the hot path.
//!
//! The default quiets kube's client, which logs every failed API request at ERROR, and kube's
//! watcher, which logs every 403 again at WARN as a struct dump: our source logs each watch
//! failure itself, once per backoff step, as one readable line.
//!
//! Colours only on a terminal: in a pod stderr is a pipe to the container runtime, and escape
//! codes would end up verbatim in `kubectl logs` and every log collector. `NO_COLOR`
//! (<https://no-color.org>) turns them off on a terminal too.

use std::ffi::OsString;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::cli::LogFormat;

const DEFAULT_FILTER: &str = "info,kube_client=off,kube_runtime::watcher=error,hickory_server=warn";

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let ansi = colours(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether to colour the text log: stderr is a terminal and `NO_COLOR` is unset or empty.
fn colours(stderr_is_terminal: bool, no_color: Option<OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(colours(true, Some("".into())), "an empty NO_COLOR counts as unset");
        assert!(!colours(true, Some("1".into())));
        assert!(!colours(false, None), "a pipe, as in a pod");
        assert!(!colours(false, Some("1".into())));
    }
}
