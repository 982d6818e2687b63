//! Counters and histograms: written by one core each, read by the control plane.
//!
//! Every core owns its [`CoreStats`]; only that core writes to it, so an
//! increment is a relaxed load and store (no locked instruction, no cache line
//! shared with another writer). The control plane reads all cores' stats when
//! `/metrics` or `/v1/status` is asked for and adds them up
//! ([`render_prometheus`]). Per-backend counters are registered once per core
//! and (pool, backend) pair; the registry lock is taken on that first request
//! and on scrapes, never on the steady request path.
#![forbid(unsafe_code)]

mod process;
pub mod prometheus;
pub mod state;

pub use process::Process;
pub use prometheus::{escape, family, render_prometheus, BackendHealth};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Adds `n`; only the owning core calls this.
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

fn read(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Requests, responses by status class, bytes and latency.
#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU64,
    /// 1xx..5xx at index 0..4.
    status: [AtomicU64; 5],
    response_bytes: AtomicU64,
    /// One per bucket in `LATENCY_BUCKETS`, plus +Inf; not cumulative.
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
}

impl Counters {
    pub fn record(&self, status: u16, bytes: u64, took: Duration) {
        bump(&self.requests, 1);
        if let Some(class) = (status / 100).checked_sub(1).filter(|c| *c < 5) {
            bump(&self.status[usize::from(class)], 1);
        }
        bump(&self.response_bytes, bytes);
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        bump(&self.latency[bucket], 1);
        bump(
            &self.latency_sum_us,
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        );
    }

    fn snapshot(&self) -> CounterValues {
        CounterValues {
            requests: read(&self.requests),
            status: self.status.each_ref().map(read),
            response_bytes: read(&self.response_bytes),
            latency: self.latency.each_ref().map(read),
            latency_sum_us: read(&self.latency_sum_us),
        }
    }
}

/// A point-in-time copy of [`Counters`], which can be added up across cores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterValues {
    pub requests: u64,
    pub status: [u64; 5],
    pub response_bytes: u64,
    pub latency: [u64; LATENCY_BUCKETS.len() + 1],
    pub latency_sum_us: u64,
}

impl CounterValues {
    /// The upper bound (seconds) of the latency bucket holding the `q`-th
    /// quantile (0 < q ≤ 1): an estimate no finer than the buckets; `None`
    /// with no requests, infinity above the last bucket.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }

    pub fn add(&mut self, o: &CounterValues) {
        self.requests += o.requests;
        self.response_bytes += o.response_bytes;
        self.latency_sum_us += o.latency_sum_us;
        for (a, b) in self.status.iter_mut().zip(o.status) {
            *a += b;
        }
        for (a, b) in self.latency.iter_mut().zip(o.latency) {
            *a += b;
        }
    }
}

/// One backend's counters on one core: its traffic, and gauges the
/// balancer keeps (written by the core, read on scrape).
#[derive(Debug, Default)]
pub struct BackendCounters {
    pub traffic: Counters,
    /// Requests in flight.
    active: AtomicU64,
    /// Requests waiting for a slot under `limits.backend_max_connections`.
    queued: AtomicU64,
    /// Tunnels (WebSocket) open.
    tunnels: AtomicU64,
    /// Tries that failed: connect refused or timed out, reset or timed out
    /// before the response, and 5xx where they count.
    failures: AtomicU64,
    /// Tries that were retries (second and later tries of a request).
    retries: AtomicU64,
}

impl BackendCounters {
    pub fn set_load(&self, active: u32, queued: u32) {
        self.active.store(active.into(), Ordering::Relaxed);
        self.queued.store(queued.into(), Ordering::Relaxed);
    }

    pub fn tunnel_opened(&self) {
        bump(&self.tunnels, 1);
    }

    pub fn tunnel_closed(&self) {
        let c = &self.tunnels;
        c.store(read(c).saturating_sub(1), Ordering::Relaxed);
    }

    pub fn failed(&self) {
        bump(&self.failures, 1);
    }

    pub fn retried(&self) {
        bump(&self.retries, 1);
    }

    pub fn snapshot(&self) -> BackendValues {
        BackendValues {
            traffic: self.traffic.snapshot(),
            active: read(&self.active),
            queued: read(&self.queued),
            tunnels: read(&self.tunnels),
            failures: read(&self.failures),
            retries: read(&self.retries),
        }
    }
}

/// A point-in-time copy of [`BackendCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendValues {
    pub traffic: CounterValues,
    pub active: u64,
    pub queued: u64,
    pub tunnels: u64,
    pub failures: u64,
    pub retries: u64,
}

impl BackendValues {
    pub fn add(&mut self, o: &BackendValues) {
        self.traffic.add(&o.traffic);
        self.active += o.active;
        self.queued += o.queued;
        self.tunnels += o.tunnels;
        self.failures += o.failures;
        self.retries += o.retries;
    }
}

/// One listener's or one site's counters on one core: its traffic, and
/// (listeners) connections or (sites) 304s.
#[derive(Debug, Default)]
pub struct NamedCounters {
    pub traffic: Counters,
    connections_total: AtomicU64,
    connections_active: AtomicU64,
    not_modified: AtomicU64,
}

impl NamedCounters {
    pub fn opened(&self) {
        bump(&self.connections_total, 1);
        bump(&self.connections_active, 1);
    }

    pub fn closed(&self) {
        let c = &self.connections_active;
        c.store(read(c).saturating_sub(1), Ordering::Relaxed);
    }

    pub fn not_modified(&self) {
        bump(&self.not_modified, 1);
    }

    pub fn snapshot(&self) -> NamedValues {
        NamedValues {
            traffic: self.traffic.snapshot(),
            connections_total: read(&self.connections_total),
            connections_active: read(&self.connections_active),
            not_modified: read(&self.not_modified),
        }
    }
}

/// A point-in-time copy of [`NamedCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamedValues {
    pub traffic: CounterValues,
    pub connections_total: u64,
    pub connections_active: u64,
    pub not_modified: u64,
}

impl NamedValues {
    pub fn add(&mut self, o: &NamedValues) {
        self.traffic.add(&o.traffic);
        self.connections_total += o.connections_total;
        self.connections_active += o.connections_active;
        self.not_modified += o.not_modified;
    }
}

/// One pool's counters on one core.
#[derive(Debug, Default)]
pub struct PoolCounters {
    /// Retries not made because the retry budget was spent.
    budget_exhausted: AtomicU64,
    /// Requests answered 503 by a limit: the pool's, or a full or timed-out
    /// queue.
    rejected: AtomicU64,
    /// Requests in flight to the pool.
    active: AtomicU64,
}

impl PoolCounters {
    pub fn budget_exhausted(&self) {
        bump(&self.budget_exhausted, 1);
    }

    pub fn rejected(&self) {
        bump(&self.rejected, 1);
    }

    pub fn set_active(&self, active: u32) {
        self.active.store(active.into(), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> PoolValues {
        PoolValues {
            budget_exhausted: read(&self.budget_exhausted),
            rejected: read(&self.rejected),
            active: read(&self.active),
        }
    }
}

/// A point-in-time copy of [`PoolCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolValues {
    pub budget_exhausted: u64,
    pub rejected: u64,
    pub active: u64,
}

impl PoolValues {
    pub fn add(&mut self, o: &PoolValues) {
        self.budget_exhausted += o.budget_exhausted;
        self.rejected += o.rejected;
        self.active += o.active;
    }
}

/// Where a proxied request went.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub pool: Arc<str>,
    /// `-` when no backend was reached (empty pool).
    pub backend: Arc<str>,
}

/// One core's statistics.
#[derive(Debug, Default)]
pub struct CoreStats {
    pub all: Counters,
    connections_active: AtomicU64,
    connections_total: AtomicU64,
    refused_max: AtomicU64,
    refused_per_address: AtomicU64,
    /// Completed handshakes by kind (full, resumed) and protocol version
    /// (TLS 1.2, TLS 1.3).
    handshakes: [[AtomicU64; 2]; 2],
    handshake_failures: AtomicU64,
    http2_floods: AtomicU64,
    /// When the core's executor last ran its housekeeping loop
    /// (milliseconds on [`crate::clock`]; 0: not yet).
    alive_ms: AtomicU64,
    backends: Mutex<Vec<(BackendKey, Arc<BackendCounters>)>>,
    pools: Mutex<Vec<(Arc<str>, Arc<PoolCounters>)>>,
    /// By listener name, and by site name: as many as the config ever
    /// named (a removed one keeps its series until restart).
    listeners: Mutex<Vec<(Arc<str>, Arc<NamedCounters>)>>,
    sites: Mutex<Vec<(Arc<str>, Arc<NamedCounters>)>>,
}

impl CoreStats {
    /// The core's executor runs (every 50 ms while it is not stalled).
    pub fn alive(&self, now_ms: u64) {
        self.alive_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn alive_ms(&self) -> u64 {
        read(&self.alive_ms)
    }

    pub fn connection_opened(&self) {
        bump(&self.connections_active, 1);
        bump(&self.connections_total, 1);
    }

    /// A connection closed as it came, over `client.max_connections`
    /// (`per_address` false) or `client.max_connections_per_address`.
    pub fn connection_refused(&self, per_address: bool) {
        bump(
            if per_address {
                &self.refused_per_address
            } else {
                &self.refused_max
            },
            1,
        );
    }

    pub fn connection_closed(&self) {
        let c = &self.connections_active;
        c.store(read(c).saturating_sub(1), Ordering::Relaxed);
    }

    pub fn handshake(&self, resumed: bool, tls13: bool) {
        bump(
            &self.handshakes[usize::from(resumed)][usize::from(tls13)],
            1,
        );
    }

    pub fn handshake_failed(&self) {
        bump(&self.handshake_failures, 1);
    }

    /// An HTTP/2 connection closed for spending its frame budget.
    pub fn http2_flood(&self) {
        bump(&self.http2_floods, 1);
    }

    /// Registers the counters of a (pool, backend) pair; the core keeps the
    /// result for as long as the backend is in its pool, so this runs once
    /// per pair per core.
    pub fn register_backend(&self, key: BackendKey) -> Arc<BackendCounters> {
        let mut backends = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = backends.iter().find(|(k, _)| *k == key) {
            return Arc::clone(c);
        }
        let c = Arc::new(BackendCounters::default());
        backends.push((key, Arc::clone(&c)));
        c
    }

    /// Forgets a backend that left its pool (its series leave the metrics).
    pub fn unregister_backend(&self, counters: &Arc<BackendCounters>) {
        let mut backends = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        backends.retain(|(_, c)| !Arc::ptr_eq(c, counters));
    }

    /// Registers a pool's counters, once per pool per core.
    pub fn register_pool(&self, name: Arc<str>) -> Arc<PoolCounters> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = pools.iter().find(|(k, _)| *k == name) {
            return Arc::clone(c);
        }
        let c = Arc::new(PoolCounters::default());
        pools.push((name, Arc::clone(&c)));
        c
    }

    /// The counters of listener `name` (made on first use).
    pub fn register_listener(&self, name: &str) -> Arc<NamedCounters> {
        register_named(&self.listeners, name)
    }

    /// The counters of site `name` (made on first use).
    pub fn register_site(&self, name: &str) -> Arc<NamedCounters> {
        register_named(&self.sites, name)
    }

    /// Forgets a pool that left the config.
    pub fn unregister_pool(&self, counters: &Arc<PoolCounters>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|(_, c)| !Arc::ptr_eq(c, counters));
    }

    pub fn snapshot(&self) -> CoreValues {
        let backends = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        CoreValues {
            all: self.all.snapshot(),
            connections_active: read(&self.connections_active),
            connections_total: read(&self.connections_total),
            refused_max: read(&self.refused_max),
            refused_per_address: read(&self.refused_per_address),
            handshakes: self.handshakes.each_ref().map(|k| k.each_ref().map(read)),
            handshake_failures: read(&self.handshake_failures),
            http2_floods: read(&self.http2_floods),
            backends: backends
                .iter()
                .map(|(k, c)| (k.clone(), c.snapshot()))
                .collect(),
            pools: pools
                .iter()
                .map(|(k, c)| (Arc::clone(k), c.snapshot()))
                .collect(),
            listeners: snapshot_named(&self.listeners),
            sites: snapshot_named(&self.sites),
        }
    }
}

/// A point-in-time copy of one core's [`CoreStats`].
#[derive(Debug, Clone, Default)]
pub struct CoreValues {
    pub all: CounterValues,
    pub connections_active: u64,
    pub connections_total: u64,
    /// Refused over `client.max_connections`.
    pub refused_max: u64,
    /// Refused over `client.max_connections_per_address`.
    pub refused_per_address: u64,
    /// By kind (full, resumed), then version (TLS 1.2, 1.3).
    pub handshakes: [[u64; 2]; 2],
    pub handshake_failures: u64,
    /// HTTP/2 connections closed for spending their frame budget.
    pub http2_floods: u64,
    pub backends: Vec<(BackendKey, BackendValues)>,
    pub pools: Vec<(Arc<str>, PoolValues)>,
    pub listeners: Vec<(Arc<str>, NamedValues)>,
    pub sites: Vec<(Arc<str>, NamedValues)>,
}

fn register_named(
    list: &Mutex<Vec<(Arc<str>, Arc<NamedCounters>)>>,
    name: &str,
) -> Arc<NamedCounters> {
    let mut list = list.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = list.iter().find(|(k, _)| &**k == name) {
        return Arc::clone(c);
    }
    let c = Arc::new(NamedCounters::default());
    list.push((Arc::from(name), Arc::clone(&c)));
    c
}

fn snapshot_named(
    list: &Mutex<Vec<(Arc<str>, Arc<NamedCounters>)>>,
) -> Vec<(Arc<str>, NamedValues)> {
    list.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, c)| (Arc::clone(k), c.snapshot()))
        .collect()
}

/// Every core's stats, indexed by core.
pub type AllStats = Vec<Arc<CoreStats>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_counts_classes_buckets_and_sums() {
        let c = Counters::default();
        c.record(200, 10, Duration::from_micros(800));
        c.record(204, 0, Duration::from_millis(3));
        c.record(502, 20, Duration::from_secs(30));
        c.record(99, 0, Duration::ZERO);
        let v = c.snapshot();
        assert_eq!(v.requests, 4);
        assert_eq!(v.status, [0, 2, 0, 0, 1]);
        assert_eq!(v.response_bytes, 30);
        assert_eq!(v.latency[0], 2, "0.8 ms and 0 s in the first bucket");
        assert_eq!(v.latency[2], 1, "3 ms in the 5 ms bucket");
        assert_eq!(v.latency[LATENCY_BUCKETS.len()], 1, "30 s in +Inf");
        assert_eq!(v.latency_sum_us, 30_003_800);
    }

    #[test]
    fn quantiles_come_from_the_buckets() {
        let c = Counters::default();
        assert_eq!(c.snapshot().latency_quantile(0.5), None);
        for _ in 0..98 {
            c.record(200, 0, Duration::from_micros(700));
        }
        c.record(200, 0, Duration::from_millis(40));
        c.record(200, 0, Duration::from_secs(60));
        let v = c.snapshot();
        assert_eq!(v.latency_quantile(0.5), Some(0.001));
        assert_eq!(v.latency_quantile(0.99), Some(0.05));
        assert_eq!(v.latency_quantile(1.0), Some(f64::INFINITY));
    }

    #[test]
    fn backend_counters_are_registered_once() {
        let s = CoreStats::default();
        let key = BackendKey {
            pool: "app".into(),
            backend: "10.0.0.1:80".into(),
        };
        let a = s.register_backend(key.clone());
        let b = s.register_backend(key);
        assert!(Arc::ptr_eq(&a, &b));
        a.traffic.record(200, 1, Duration::ZERO);
        a.set_load(3, 1);
        let v = s.snapshot();
        assert_eq!(v.backends[0].1.traffic.requests, 1);
        assert_eq!((v.backends[0].1.active, v.backends[0].1.queued), (3, 1));
        s.unregister_backend(&a);
        assert!(s.snapshot().backends.is_empty());
    }

    #[test]
    fn connection_gauge_never_underflows() {
        let s = CoreStats::default();
        s.connection_opened();
        s.connection_closed();
        s.connection_closed();
        let v = s.snapshot();
        assert_eq!((v.connections_active, v.connections_total), (0, 1));
    }
}
