//! Logs: tracing to stderr through a background writer, so a core never
//! blocks on the terminal or a pipe. The access log is the `access` target.
#![forbid(unsafe_code)]

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. Keep the guard until exit: dropping it
/// flushes what is still buffered. The filter comes from `EDGEBOX_LOG`
/// (`tracing` syntax, e.g. `info,access=off`), `info` by default.
pub fn init(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let filter = EnvFilter::try_from_env("EDGEBOX_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter)
        .with_thread_names(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}
