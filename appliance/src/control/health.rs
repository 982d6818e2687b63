//! Active health checks: one task per checked backend on the control
//! thread, each connecting (TCP) or sending one HTTP request per interval
//! and feeding the result to a [`Checker`]; a change of verdict is written to
//! the backend's shared state, which every core reads on its next pick. No
//! core ever waits on a check.
//!
//! After each published snapshot the set of tasks is brought in line with
//! it ([`HealthChecks::follow`]): a backend that stays keeps its task (and
//! its count of results), a changed check restarts it, a removed one stops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::balance::health::{Checker, Health, Start};
use crate::balance::BackendShared;
use crate::config::HealthCheck;
use crate::snapshot::Snapshot;

/// The last check of one backend, for the admin API.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LastCheck {
    /// What it found: `ok`, or why it failed.
    pub result: String,
    /// When, on the process clock (ms).
    pub at_ms: u64,
    pub passed: bool,
}

struct Task {
    /// The check, and whether it starts with a PROXY `LOCAL` header (for a
    /// pool whose backends expect PROXY headers).
    settings: (HealthCheck, bool),
    abort: tokio::task::AbortHandle,
    last: Arc<Mutex<LastCheck>>,
}

/// The running checks, by pool and backend.
#[derive(Default)]
pub struct HealthChecks {
    tasks: HashMap<(Arc<str>, SocketAddr), Task>,
}

impl std::fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecks")
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

impl HealthChecks {
    /// Starts, restarts and stops checks so that every backend of `snap`
    /// whose pool has a health check has exactly one, with its settings.
    pub fn follow(&mut self, snap: &Snapshot) {
        let mut wanted = HashMap::new();
        for p in &snap.pools {
            for b in &p.backends {
                match &p.health_check {
                    Some(h) => {
                        wanted.insert(
                            (Arc::clone(&p.name), b.addr),
                            ((h.clone(), p.proxy_protocol), b),
                        );
                    }
                    // Checks stopped: the verdict no longer applies.
                    None => b.shared.health.set(Health::Unchecked),
                }
            }
        }
        self.tasks.retain(|key, task| {
            let keep = wanted.get(key).is_some_and(|(h, _)| *h == task.settings);
            if !keep {
                task.abort.abort();
            }
            keep
        });
        for (key, (settings, backend)) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let last = Arc::new(Mutex::new(LastCheck::default()));
            let start = match backend.shared.health.get() {
                Health::Down => Start::DownUntilFirstPass,
                Health::Unchecked => {
                    // Checks just configured for a serving backend.
                    backend.shared.health.set(Health::Up);
                    Start::Up
                }
                Health::Up => Start::Up,
            };
            let abort = tokio::task::spawn_local(run(
                Arc::clone(&key.0),
                backend.addr,
                settings.0.clone(),
                settings.1,
                Arc::clone(&backend.shared),
                start,
                Arc::clone(&last),
            ))
            .abort_handle();
            self.tasks.insert(
                key,
                Task {
                    settings,
                    abort,
                    last,
                },
            );
        }
    }

    /// The last check of a backend, if it is checked.
    pub fn last(&self, pool: &str, addr: SocketAddr) -> Option<LastCheck> {
        self.tasks
            .get(&(Arc::from(pool), addr))
            .map(|t| lock(&t.last).clone())
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort.abort();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    pool: Arc<str>,
    addr: SocketAddr,
    settings: HealthCheck,
    proxy: bool,
    shared: Arc<BackendShared>,
    start: Start,
    last: Arc<Mutex<LastCheck>>,
) {
    let mut checker = Checker::new(settings.rise, settings.fall, start);
    let mut every = tokio::time::interval(Duration::from_millis(settings.interval_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let timeout = Duration::from_millis(settings.timeout_ms);
        let outcome = match tokio::time::timeout(timeout, check(addr, &settings, proxy)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} ms", settings.timeout_ms)),
        };
        let now = crate::clock::now_ms();
        let passed = outcome.is_ok();
        *lock(&last) = LastCheck {
            result: outcome.clone().err().unwrap_or_else(|| "ok".to_owned()),
            at_ms: now,
            passed,
        };
        if let Some(health) = checker.handle_result(passed) {
            shared.set_health(health, now);
            match health {
                Health::Down => tracing::warn!(
                    pool = &*pool,
                    backend = %addr,
                    "health check failed {} times in a row ({}): taken out",
                    settings.fall,
                    lock(&last).result
                ),
                _ => tracing::info!(pool = &*pool, backend = %addr, "health check passes: back in"),
            }
        }
    }
}

fn lock(m: &Mutex<LastCheck>) -> std::sync::MutexGuard<'_, LastCheck> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One check: `Ok` when it passes, else why not.
async fn check(addr: SocketAddr, settings: &HealthCheck, proxy: bool) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if proxy {
        stream
            .write_all(&crate::proxy_protocol::encode_v2_local())
            .await
            .map_err(|e| format!("send: {e}"))?;
    }
    if settings.tcp {
        return Ok(());
    }
    let host = settings.host.clone().unwrap_or_else(|| addr.to_string());
    let request = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: edgebox-health-check\r\nConnection: close\r\n\r\n",
        settings.method, settings.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            return Err("closed without a response".to_owned());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let status = parse_status(&head).ok_or_else(|| "not an HTTP response".to_owned())?;
    let [lo, hi] = settings.expect_status;
    if (lo..=hi).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// The status code of an HTTP/1.x response's first line.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\nx"),
            Some(503)
        );
        assert_eq!(parse_status(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 20 x\r\n"), None);
        assert_eq!(parse_status(b"HTTP/2 200\r\n"), None);
    }
}
