//! The Prometheus text exposition format (version 0.0.4) of all cores' stats.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{
    BackendKey, BackendValues, CoreValues, CounterValues, NamedValues, PoolValues, LATENCY_BUCKETS,
};

/// What the control plane knows of one backend (from its shared state),
/// beside what the cores counted.
#[derive(Debug, Clone)]
pub struct BackendHealth {
    pub key: BackendKey,
    /// Neither its active health check nor an ejection keeps it out.
    pub healthy: bool,
    pub ejected: bool,
    pub ejections: u64,
    pub draining: bool,
}

/// Renders every core's values, the backends' health, plus process-wide
/// gauges.
pub fn render_prometheus(
    cores: &[CoreValues],
    health: &[BackendHealth],
    config_generation: u64,
    uptime_s: f64,
) -> String {
    let mut out = String::with_capacity(4096);
    let o = &mut out;

    family(
        o,
        "edgebox_requests_total",
        "counter",
        "Requests answered, by core.",
    );
    for (i, c) in cores.iter().enumerate() {
        let _ = writeln!(
            o,
            "edgebox_requests_total{{core=\"{i}\"}} {}",
            c.all.requests
        );
    }
    let mut all = CounterValues::default();
    for c in cores {
        all.add(&c.all);
    }
    family(
        o,
        "edgebox_responses_total",
        "counter",
        "Responses by status class.",
    );
    for (i, n) in all.status.iter().enumerate() {
        let _ = writeln!(o, "edgebox_responses_total{{class=\"{}xx\"}} {n}", i + 1);
    }
    family(
        o,
        "edgebox_response_bytes_total",
        "counter",
        "Response body bytes sent.",
    );
    let _ = writeln!(o, "edgebox_response_bytes_total {}", all.response_bytes);
    family(
        o,
        "edgebox_request_duration_seconds",
        "histogram",
        "Time from request to the end of the response body.",
    );
    histogram(o, "edgebox_request_duration_seconds", "", &all);

    family(
        o,
        "edgebox_connections_active",
        "gauge",
        "Open client connections, by core.",
    );
    for (i, c) in cores.iter().enumerate() {
        let _ = writeln!(
            o,
            "edgebox_connections_active{{core=\"{i}\"}} {}",
            c.connections_active
        );
    }
    family(
        o,
        "edgebox_connections_total",
        "counter",
        "Client connections accepted, by core.",
    );
    for (i, c) in cores.iter().enumerate() {
        let _ = writeln!(
            o,
            "edgebox_connections_total{{core=\"{i}\"}} {}",
            c.connections_total
        );
    }
    family(
        o,
        "edgebox_connections_refused_total",
        "counter",
        "Client connections closed as they came: over client.max_connections, or over client.max_connections_per_address.",
    );
    let max: u64 = cores.iter().map(|c| c.refused_max).sum();
    let per: u64 = cores.iter().map(|c| c.refused_per_address).sum();
    let _ = writeln!(
        o,
        "edgebox_connections_refused_total{{reason=\"max_connections\"}} {max}"
    );
    let _ = writeln!(
        o,
        "edgebox_connections_refused_total{{reason=\"per_address\"}} {per}"
    );
    family(
        o,
        "edgebox_tls_handshakes_total",
        "counter",
        "Completed TLS handshakes, full or resumed, by protocol version.",
    );
    for (k, kind) in ["full", "resumed"].iter().enumerate() {
        for (v, version) in ["1.2", "1.3"].iter().enumerate() {
            let n: u64 = cores.iter().map(|c| c.handshakes[k][v]).sum();
            let _ = writeln!(
                o,
                "edgebox_tls_handshakes_total{{kind=\"{kind}\",version=\"{version}\"}} {n}"
            );
        }
    }
    family(
        o,
        "edgebox_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed or timed out.",
    );
    let failed: u64 = cores.iter().map(|c| c.handshake_failures).sum();
    let _ = writeln!(o, "edgebox_tls_handshake_failures_total {failed}");
    family(
        o,
        "edgebox_http2_floods_total",
        "counter",
        "HTTP/2 connections closed for sending too many frames of no use (PING, SETTINGS, PRIORITY, RST_STREAM, empty or unknown frames).",
    );
    let floods: u64 = cores.iter().map(|c| c.http2_floods).sum();
    let _ = writeln!(o, "edgebox_http2_floods_total {floods}");

    let mut all_backends: BTreeMap<&BackendKey, BackendValues> = BTreeMap::new();
    let mut pools: BTreeMap<&str, PoolValues> = BTreeMap::new();
    let mut listeners: BTreeMap<&str, NamedValues> = BTreeMap::new();
    let mut sites: BTreeMap<&str, NamedValues> = BTreeMap::new();
    for c in cores {
        for (k, v) in &c.listeners {
            listeners.entry(k).or_default().add(v);
        }
        for (k, v) in &c.sites {
            sites.entry(k).or_default().add(v);
        }
        for (k, v) in &c.backends {
            all_backends.entry(k).or_default().add(v);
        }
        for (k, v) in &c.pools {
            pools.entry(k).or_default().add(v);
        }
    }
    let backends: BTreeMap<&BackendKey, &CounterValues> =
        all_backends.iter().map(|(k, v)| (*k, &v.traffic)).collect();
    family(
        o,
        "edgebox_backend_requests_total",
        "counter",
        "Proxied requests, by pool and backend.",
    );
    for (k, v) in &backends {
        let _ = writeln!(
            o,
            "edgebox_backend_requests_total{{{}}} {}",
            labels(k),
            v.requests
        );
    }
    family(
        o,
        "edgebox_backend_responses_total",
        "counter",
        "Proxied responses by status class, by pool and backend.",
    );
    for (k, v) in &backends {
        for (i, n) in v.status.iter().enumerate() {
            let _ = writeln!(
                o,
                "edgebox_backend_responses_total{{{},class=\"{}xx\"}} {n}",
                labels(k),
                i + 1
            );
        }
    }
    family(
        o,
        "edgebox_backend_response_bytes_total",
        "counter",
        "Proxied response body bytes, by pool and backend.",
    );
    for (k, v) in &backends {
        let _ = writeln!(
            o,
            "edgebox_backend_response_bytes_total{{{}}} {}",
            labels(k),
            v.response_bytes
        );
    }
    family(
        o,
        "edgebox_backend_request_duration_seconds",
        "histogram",
        "Proxied request durations, by pool and backend.",
    );
    for (k, v) in &backends {
        histogram(o, "edgebox_backend_request_duration_seconds", &labels(k), v);
    }
    backend_state(o, health, &all_backends);
    pool_state(o, &pools);
    named_state(o, "listener", &LISTENER_STATE, &listeners);
    family(
        o,
        "edgebox_listener_responses_total",
        "counter",
        "Responses by listener and status class.",
    );
    for (l, v) in &listeners {
        for (i, n) in v.traffic.status.iter().enumerate() {
            let _ = writeln!(
                o,
                "edgebox_listener_responses_total{{listener=\"{}\",class=\"{}xx\"}} {n}",
                escape(l),
                i + 1
            );
        }
    }
    named_state(o, "site", &SITE_STATE, &sites);

    family(
        o,
        "edgebox_config_generation",
        "gauge",
        "Generation of the config being served.",
    );
    let _ = writeln!(o, "edgebox_config_generation {config_generation}");
    family(
        o,
        "edgebox_uptime_seconds",
        "gauge",
        "Seconds since edgebox started.",
    );
    let _ = writeln!(o, "edgebox_uptime_seconds {uptime_s:.3}");
    out
}

/// One metric family of rows: name, type, help, and the value of a row.
type Family<T> = (&'static str, &'static str, &'static str, fn(&T) -> u64);

/// What the scrape knows of one backend: its health, and its counters.
type BackendRow = (BackendHealth, BackendValues);

const BACKEND_STATE: [Family<BackendRow>; 9] = [
    (
        "edgebox_backend_healthy",
        "gauge",
        "1 while neither the backend's health check nor an ejection keeps it out, else 0.",
        |(h, _)| u64::from(h.healthy),
    ),
    (
        "edgebox_backend_ejected",
        "gauge",
        "1 while the backend is ejected after failing requests in a row.",
        |(h, _)| u64::from(h.ejected),
    ),
    (
        "edgebox_backend_ejections_total",
        "counter",
        "Times the backend was ejected after failing requests in a row.",
        |(h, _)| h.ejections,
    ),
    (
        "edgebox_backend_draining",
        "gauge",
        "1 while the backend is draining (no new requests).",
        |(h, _)| u64::from(h.draining),
    ),
    (
        "edgebox_backend_active_requests",
        "gauge",
        "Requests in flight to the backend.",
        |(_, v)| v.active,
    ),
    (
        "edgebox_backend_queue_depth",
        "gauge",
        "Requests waiting for the backend (at its connection limit).",
        |(_, v)| v.queued,
    ),
    (
        "edgebox_backend_tunnels",
        "gauge",
        "Open tunnels (WebSocket) to the backend.",
        |(_, v)| v.tunnels,
    ),
    (
        "edgebox_backend_failures_total",
        "counter",
        "Tries that failed: connect refused or timed out, reset or timed out before the response, counted 5xx.",
        |(_, v)| v.failures,
    ),
    (
        "edgebox_backend_retries_total",
        "counter",
        "Tries sent to the backend as retries of a request that failed elsewhere.",
        |(_, v)| v.retries,
    ),
];

const POOL_STATE: [Family<PoolValues>; 3] = [
    (
        "edgebox_pool_active_requests",
        "gauge",
        "Requests in flight to the pool.",
        |v| v.active,
    ),
    (
        "edgebox_pool_rejected_total",
        "counter",
        "Requests answered 503 by a limit (the pool's, or a full or timed-out backend queue).",
        |v| v.rejected,
    ),
    (
        "edgebox_pool_retry_budget_exhausted_total",
        "counter",
        "Retries not made because the pool's retry budget was spent.",
        |v| v.budget_exhausted,
    ),
];

/// Health, ejections and load, per backend.
fn backend_state(
    o: &mut String,
    health: &[BackendHealth],
    values: &BTreeMap<&BackendKey, BackendValues>,
) {
    let rows: Vec<BackendRow> = health
        .iter()
        .map(|h| (h.clone(), values.get(&h.key).cloned().unwrap_or_default()))
        .collect();
    for (name, kind, help, get) in BACKEND_STATE {
        family(o, name, kind, help);
        for row in &rows {
            let _ = writeln!(o, "{name}{{{}}} {}", labels(&row.0.key), get(row));
        }
    }
}

const LISTENER_STATE: [Family<NamedValues>; 3] = [
    (
        "edgebox_listener_connections_total",
        "counter",
        "Client connections accepted, by listener.",
        |v| v.connections_total,
    ),
    (
        "edgebox_listener_connections_active",
        "gauge",
        "Open client connections, by listener.",
        |v| v.connections_active,
    ),
    (
        "edgebox_listener_requests_total",
        "counter",
        "Requests answered, by listener.",
        |v| v.traffic.requests,
    ),
];

const SITE_STATE: [Family<NamedValues>; 3] = [
    (
        "edgebox_site_requests_total",
        "counter",
        "Requests a static site answered, by site.",
        |v| v.traffic.requests,
    ),
    (
        "edgebox_site_response_bytes_total",
        "counter",
        "Response body bytes a static site sent, by site.",
        |v| v.traffic.response_bytes,
    ),
    (
        "edgebox_site_not_modified_total",
        "counter",
        "304 Not Modified answers of a static site (the client's copy was current), by site.",
        |v| v.not_modified,
    ),
];

/// Families of rows labelled `label` (a listener's or site's name).
fn named_state(
    o: &mut String,
    label: &str,
    families: &[Family<NamedValues>],
    rows: &BTreeMap<&str, NamedValues>,
) {
    for (name, kind, help, get) in families {
        family(o, name, kind, help);
        for (n, v) in rows {
            let _ = writeln!(o, "{name}{{{label}=\"{}\"}} {}", escape(n), get(v));
        }
    }
}

/// Per pool: in flight, refused by a limit, retries refused by the budget.
fn pool_state(o: &mut String, pools: &BTreeMap<&str, PoolValues>) {
    for (name, kind, help, get) in POOL_STATE {
        family(o, name, kind, help);
        for (pool, v) in pools {
            let _ = writeln!(o, "{name}{{pool=\"{}\"}} {}", escape(pool), get(v));
        }
    }
}

/// A metric family's `# HELP` and `# TYPE` lines.
pub fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

fn histogram(o: &mut String, name: &str, labels: &str, v: &CounterValues) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += v.latency[i];
        let _ = writeln!(
            o,
            "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += v.latency[LATENCY_BUCKETS.len()];
    let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
    let braces = |s: &str| {
        if s.is_empty() {
            String::new()
        } else {
            format!("{{{s}}}")
        }
    };
    let _ = writeln!(
        o,
        "{name}_sum{} {}",
        braces(labels),
        v.latency_sum_us as f64 / 1e6
    );
    let _ = writeln!(o, "{name}_count{} {cumulative}", braces(labels));
}

fn labels(k: &BackendKey) -> String {
    format!(
        "pool=\"{}\",backend=\"{}\"",
        escape(&k.pool),
        escape(&k.backend)
    )
}

/// A label value as the exposition format quotes it.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{BackendKey, CoreStats};
    use super::*;

    #[test]
    fn sums_cores_and_makes_cumulative_buckets() {
        let cores = [CoreStats::default(), CoreStats::default()];
        cores[0].all.record(200, 100, Duration::from_millis(2));
        cores[1].all.record(503, 5, Duration::from_millis(20));
        cores[1].connection_opened();
        cores[0].handshake(true, true);
        let web = cores[1].register_listener("web");
        web.opened();
        web.traffic.record(503, 5, Duration::from_millis(20));
        let www = cores[0].register_site("www");
        www.traffic.record(304, 0, Duration::from_millis(1));
        www.not_modified();
        let key = BackendKey {
            pool: "app".into(),
            backend: "a\"b".into(),
        };
        cores[0]
            .register_backend(key.clone())
            .traffic
            .record(200, 100, Duration::from_millis(2));
        cores[1]
            .register_backend(key)
            .traffic
            .record(200, 1, Duration::from_millis(2));
        let values: Vec<_> = cores.iter().map(CoreStats::snapshot).collect();
        let text = render_prometheus(&values, &[], 7, 1.5);
        for line in [
            "edgebox_requests_total{core=\"0\"} 1",
            "edgebox_requests_total{core=\"1\"} 1",
            "edgebox_responses_total{class=\"2xx\"} 1",
            "edgebox_responses_total{class=\"5xx\"} 1",
            "edgebox_response_bytes_total 105",
            "edgebox_request_duration_seconds_bucket{le=\"0.001\"} 0",
            "edgebox_request_duration_seconds_bucket{le=\"0.0025\"} 1",
            "edgebox_request_duration_seconds_bucket{le=\"0.025\"} 2",
            "edgebox_request_duration_seconds_bucket{le=\"+Inf\"} 2",
            "edgebox_request_duration_seconds_count 2",
            "edgebox_request_duration_seconds_sum 0.022",
            "edgebox_connections_active{core=\"1\"} 1",
            "edgebox_tls_handshakes_total{kind=\"resumed\",version=\"1.3\"} 1",
            "edgebox_tls_handshakes_total{kind=\"full\",version=\"1.2\"} 0",
            "edgebox_listener_requests_total{listener=\"web\"} 1",
            "edgebox_listener_connections_active{listener=\"web\"} 1",
            "edgebox_listener_responses_total{listener=\"web\",class=\"5xx\"} 1",
            "edgebox_site_requests_total{site=\"www\"} 1",
            "edgebox_site_not_modified_total{site=\"www\"} 1",
            "edgebox_backend_requests_total{pool=\"app\",backend=\"a\\\"b\"} 2",
            "edgebox_backend_responses_total{pool=\"app\",backend=\"a\\\"b\",class=\"2xx\"} 2",
            "edgebox_backend_request_duration_seconds_count{pool=\"app\",backend=\"a\\\"b\"} 2",
            "edgebox_config_generation 7",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line belongs to a declared family.
        let declared: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| declared.contains(b)))
                .unwrap_or(name);
            assert!(declared.contains(&base), "{name} is not declared");
        }
    }
}
