//! Loggers for transports, examples and the signaling server.
//!
//! Transports take a [`slog::Logger`] and log with structured fields
//! (`peer`, `rpc`, `duration`...). Pass [`discard`] to keep them silent,
//! as tests do.

use slog::{o, Logger};

/// A logger that drops everything.
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}

/// A logger writing to standard error at `level` and above, asynchronously
/// so that logging never blocks a transport (feature `terminal-log`).
#[cfg(feature = "terminal-log")]
pub fn terminal(level: slog::Level) -> Logger {
    use slog::Drain;
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = slog_term::CompactFormat::new(decorator).build().fuse();
    let drain = slog_async::Async::new(drain)
        .chan_size(4096)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .build()
        .fuse();
    Logger::root(drain.filter_level(level).fuse(), o!())
}

/// Parses a level name (`error`, `warn`, `info`, `debug`, `trace`).
pub fn parse_level(name: &str) -> Option<slog::Level> {
    match name.to_ascii_lowercase().as_str() {
        "critical" => Some(slog::Level::Critical),
        "error" => Some(slog::Level::Error),
        "warn" | "warning" => Some(slog::Level::Warning),
        "info" => Some(slog::Level::Info),
        "debug" => Some(slog::Level::Debug),
        "trace" => Some(slog::Level::Trace),
        _ => None,
    }
}
