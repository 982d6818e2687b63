//! Logs: tracing to stderr through a background writer, so a core never
//! blocks on the terminal or a pipe. The access log is the `access` target.
//! The last [`RING_LINES`] other events are also kept in memory for the admin
//! API's `/v1/logs`.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How many recent events `/v1/logs` can show.
pub const RING_LINES: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// One event as `/v1/logs` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub level: String,
    pub target: String,
    pub message: String,
}

/// The most recent events (not access-log lines), oldest first.
#[derive(Debug, Default)]
pub struct LogRing {
    lines: Mutex<VecDeque<LogLine>>,
}

impl LogRing {
    /// The last `n` lines, oldest first.
    pub fn recent(&self, n: usize) -> Vec<LogLine> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    fn push(&self, line: LogLine) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == RING_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }
}

struct RingLayer(Arc<LogRing>);

impl<S: tracing::Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() == "access" {
            return;
        }
        let mut message = Message::default();
        event.record(&mut message);
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.0.push(LogLine {
            time_ms,
            level: meta.level().to_string(),
            target: meta.target().to_owned(),
            message: message.0,
        });
    }
}

/// The event's message followed by its other fields as `name=value`.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}{rest}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

/// Installs the global subscriber. Keep the guard until exit: dropping it
/// flushes what is still buffered. The filter comes from `EDGEBOX_LOG`
/// (`tracing` syntax, e.g. `info,access=off`), `info` by default.
pub fn init(format: LogFormat) -> (tracing_appender::non_blocking::WorkerGuard, Arc<LogRing>) {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let filter = EnvFilter::try_from_env("EDGEBOX_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ring = Arc::new(LogRing::default());
    // Colours only for a person at a terminal (not for files, pipes, or the
    // appliance's serial console, where PID 1 sets NO_COLOR).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(RingLayer(Arc::clone(&ring)))
        .init();
    (guard, ring)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_without_access_log() {
        let ring = Arc::new(LogRing::default());
        let subscriber = tracing_subscriber::registry().with(RingLayer(Arc::clone(&ring)));
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..RING_LINES + 5 {
                tracing::warn!(backend = "b1", "event {i}");
                tracing::info!(target: "access", status = 200);
            }
        });
        let all = ring.recent(usize::MAX);
        assert_eq!(all.len(), RING_LINES);
        assert_eq!(all[0].message, "event 5 backend=b1");
        assert_eq!(
            all.last().unwrap().message,
            format!("event {} backend=b1", RING_LINES + 4)
        );
        assert_eq!(ring.recent(2).len(), 2);
        assert_eq!(all[0].level, "WARN");
    }
}
