//! Pools of backends: who they are, how a backend is chosen, how health is
//! judged, what is retried, and the limits that keep one pool from taking
//! the appliance down. See `docs/load-balancing.md` for what each setting
//! does.

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{check_name, within, ConfigError, MAX_TIMEOUT_MS};

/// A pool of interchangeable backends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// A unique name that routes refer to.
    pub name: String,
    /// The backends; an empty pool answers 503.
    pub backends: Vec<Backend>,
    /// How a backend is chosen for each request.
    #[serde(default)]
    pub balance: Balance,
    /// Timeouts towards this pool's backends.
    #[serde(default)]
    pub timeouts: PoolTimeouts,
    /// Idle keep-alive connections kept per backend on each core.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_backend: usize,
    /// Active health checks; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive ejection of backends that fail requests in a row.
    #[serde(default)]
    pub outlier_detection: OutlierDetection,
    /// A backend that comes back or joins ramps up its share over this
    /// long; 0 is off.
    #[serde(default)]
    pub slow_start_ms: u64,
    /// When fewer than this share of the backends are healthy, health is
    /// ignored and all of them get requests (Envoy's panic mode); 0 is off:
    /// with no healthy backend the pool answers 503 at once.
    #[serde(default)]
    pub panic_threshold_percent: u32,
    /// Retrying failed tries on another backend.
    #[serde(default)]
    pub retries: Retries,
    /// Concurrency limits and queueing.
    #[serde(default)]
    pub limits: Limits,
    /// A draining or removed backend's WebSockets (and other tunnels) are
    /// closed this long after the drain began; 0 never.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_ms: u64,
    /// Send a PROXY protocol header on each new backend connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
}

fn default_max_idle() -> usize {
    64
}

fn default_drain_timeout() -> u64 {
    600_000
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// `host:port` or `ip:port`: a host name is resolved to all its A and
    /// AAAA addresses, each one a backend, and re-resolved while running.
    /// An SRV name (`_service._tcp.name`) gives targets and ports.
    pub address: String,
    /// Share of new requests relative to the pool's other backends; 0 sends
    /// none.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// `draining`: no new requests (those in flight finish, open connections
    /// stay); `enabled`: in rotation.
    #[serde(default, skip_serializing_if = "BackendState::is_enabled")]
    pub state: BackendState,
}

/// The largest backend weight.
pub const MAX_WEIGHT: u32 = 10_000;

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    #[default]
    Enabled,
    Draining,
}

impl BackendState {
    fn is_enabled(&self) -> bool {
        *self == Self::Enabled
    }
}

/// The balancing algorithm.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest requests in flight per weight.
    LeastRequest,
    /// Power of two random choices, the lower latency × load wins.
    PeakEwma,
    /// Consistent hashing (Maglev) on a request key.
    ConsistentHash(HashOn),
}

/// What consistent hashing hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashOn {
    pub on: HashKey,
    /// The header's or cookie's name (`header`, `cookie`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    /// The request's host, as routed.
    Host,
    Header,
    Cookie,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolTimeouts {
    /// Opening a TCP connection to a backend.
    pub connect_ms: u64,
    /// From the end of the request body being sent until the backend's
    /// response headers arrive.
    pub response_header_ms: u64,
    /// A backend connection that moves no byte for this long is closed, and an
    /// idle pooled connection is not reused after this long.
    pub idle_ms: u64,
}

impl Default for PoolTimeouts {
    fn default() -> Self {
        Self {
            connect_ms: 3_000,
            response_header_ms: 30_000,
            idle_ms: 60_000,
        }
    }
}

/// An active health check, run by the control plane for every backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// Only connect (TCP); otherwise an HTTP request.
    #[serde(skip_serializing_if = "is_false")]
    pub tcp: bool,
    /// The HTTP request's path.
    pub path: String,
    /// The HTTP request's method (`GET` or `HEAD`).
    pub method: String,
    /// The Host header; default: the backend's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The statuses that pass, inclusive.
    pub expect_status: [u16; 2],
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Passed checks in a row that bring a backend back.
    pub rise: u32,
    /// Failed checks in a row that take it out.
    pub fall: u32,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            tcp: false,
            path: "/".to_owned(),
            method: "GET".to_owned(),
            host: None,
            expect_status: [200, 399],
            interval_ms: 1_000,
            timeout_ms: 1_000,
            rise: 2,
            fall: 2,
        }
    }
}

/// Passive ejection: what counts as a failure and what happens after how
/// many in a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetection {
    /// Failures in a row (connect refused or timed out, a reset or a timeout
    /// before the response) that eject; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// Whether a 5xx response counts as a failure.
    pub count_5xx: bool,
    /// The first ejection's length; the n-th in a row lasts n times as long.
    pub ejection_ms: u64,
    pub max_ejection_ms: u64,
    /// At most this share of the pool is ejected at once (one always may be).
    pub max_ejected_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            count_5xx: false,
            ejection_ms: 10_000,
            max_ejection_ms: 300_000,
            max_ejected_percent: 50,
        }
    }
}

/// Retries of failed tries on another backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retries {
    /// Retries per request at most (tries = 1 + this); 0 is none.
    pub max: u32,
    /// A try without response headers after this long (counted like
    /// `timeouts.response_header_ms`) is abandoned and, when it may be,
    /// retried; 0: only `timeouts.response_header_ms` applies.
    pub per_try_timeout_ms: u64,
    /// Retries may add this share of the pool's requests...
    pub budget_percent: u32,
    /// ...plus this many a second, on each core.
    pub budget_min_per_s: u32,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            max: 2,
            per_try_timeout_ms: 0,
            budget_percent: 20,
            budget_min_per_s: 10,
        }
    }
}

/// Concurrency limits. Each core enforces its share (the limit divided by
/// the number of cores, rounded up), so no request waits on another core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Requests in flight to one backend at most; 0 is no limit.
    pub backend_max_connections: u32,
    /// Requests waiting for a backend at its limit, at most; more get 503.
    pub backend_max_queue: u32,
    /// A waiting request gives up after this long (503).
    pub queue_timeout_ms: u64,
    /// Requests in flight to the whole pool at most; 0 is no limit.
    pub pool_max_requests: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            backend_max_connections: 0,
            backend_max_queue: 0,
            queue_timeout_ms: 1_000,
            pool_max_requests: 0,
        }
    }
}

/// The PROXY protocol version sent to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    V2,
}

/// An SRV name (`_service._proto.name`), which names its own ports.
pub fn is_srv_name(address: &str) -> bool {
    let mut labels = address.split('.');
    matches!(
        (labels.next(), labels.next()),
        (Some(s), Some(p)) if s.len() > 1 && s.starts_with('_') && p.len() > 1 && p.starts_with('_')
    )
}

pub(super) fn validate_pools(pools: &[Pool]) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, p) in pools.iter().enumerate() {
        let at = |field: &str| format!("pools[{i}].{field}");
        check_name(&at("name"), &p.name)?;
        if !names.insert(&p.name) {
            return Err(ConfigError::new(at("name"), "duplicate pool name"));
        }
        let mut seen = HashSet::new();
        for (j, b) in p.backends.iter().enumerate() {
            let path = format!("pools[{i}].backends[{j}].address");
            if is_srv_name(&b.address) {
                check_dns_name(&path, b.address.trim_start_matches('_'))?;
            } else {
                check_host_port(&path, &b.address)?;
            }
            if !seen.insert(&b.address) {
                return Err(ConfigError::new(path, "backend listed twice in this pool"));
            }
            if b.weight > MAX_WEIGHT {
                return Err(ConfigError::new(
                    format!("pools[{i}].backends[{j}].weight"),
                    format_args!("must be from 0 to {MAX_WEIGHT}"),
                ));
            }
        }
        let t = &p.timeouts;
        within(&at("timeouts.connect_ms"), t.connect_ms, 1, MAX_TIMEOUT_MS)?;
        within(
            &at("timeouts.response_header_ms"),
            t.response_header_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        within(&at("timeouts.idle_ms"), t.idle_ms, 1, MAX_TIMEOUT_MS)?;
        if let Balance::ConsistentHash(h) = &p.balance {
            let needs_name = h.on != HashKey::Host;
            match &h.name {
                None if needs_name => {
                    return Err(ConfigError::new(
                        at("balance.consistent_hash.name"),
                        "the header's or cookie's name is needed",
                    ))
                }
                Some(_) if !needs_name => {
                    return Err(ConfigError::new(
                        at("balance.consistent_hash.name"),
                        "only for \"header\" or \"cookie\"",
                    ))
                }
                Some(n) if http::HeaderName::from_bytes(n.as_bytes()).is_err() || n.is_empty() => {
                    return Err(ConfigError::new(
                        at("balance.consistent_hash.name"),
                        "not a valid header or cookie name",
                    ))
                }
                _ => {}
            }
        }
        if let Some(h) = &p.health_check {
            validate_health_check(&|f| at(&format!("health_check.{f}")), h)?;
        }
        let o = &p.outlier_detection;
        within(
            &at("outlier_detection.consecutive_failures"),
            o.consecutive_failures.into(),
            0,
            1_000,
        )?;
        within(
            &at("outlier_detection.ejection_ms"),
            o.ejection_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        within(
            &at("outlier_detection.max_ejection_ms"),
            o.max_ejection_ms,
            o.ejection_ms,
            MAX_TIMEOUT_MS,
        )?;
        within(
            &at("outlier_detection.max_ejected_percent"),
            o.max_ejected_percent.into(),
            0,
            100,
        )?;
        within(&at("slow_start_ms"), p.slow_start_ms, 0, MAX_TIMEOUT_MS)?;
        within(
            &at("panic_threshold_percent"),
            p.panic_threshold_percent.into(),
            0,
            100,
        )?;
        let r = &p.retries;
        within(&at("retries.max"), r.max.into(), 0, 7)?;
        within(
            &at("retries.per_try_timeout_ms"),
            r.per_try_timeout_ms,
            0,
            MAX_TIMEOUT_MS,
        )?;
        within(
            &at("retries.budget_percent"),
            r.budget_percent.into(),
            0,
            100,
        )?;
        within(
            &at("retries.budget_min_per_s"),
            r.budget_min_per_s.into(),
            0,
            1_000_000,
        )?;
        let l = &p.limits;
        within(
            &at("limits.queue_timeout_ms"),
            l.queue_timeout_ms,
            1,
            MAX_TIMEOUT_MS,
        )?;
        within(
            &at("drain_timeout_ms"),
            p.drain_timeout_ms,
            0,
            MAX_TIMEOUT_MS,
        )?;
    }
    Ok(())
}

fn validate_health_check(at: &dyn Fn(&str) -> String, h: &HealthCheck) -> Result<(), ConfigError> {
    if !h.tcp {
        if !h.path.starts_with('/') || http::uri::PathAndQuery::try_from(h.path.as_str()).is_err() {
            return Err(ConfigError::new(
                at("path"),
                "must be a path starting with '/'",
            ));
        }
        if !matches!(h.method.as_str(), "GET" | "HEAD") {
            return Err(ConfigError::new(at("method"), "must be GET or HEAD"));
        }
        let [lo, hi] = h.expect_status;
        if !(100..=599).contains(&lo) || !(lo..=599).contains(&hi) {
            return Err(ConfigError::new(
                at("expect_status"),
                "must be [FROM, TO] with 100 <= FROM <= TO <= 599",
            ));
        }
        if let Some(host) = &h.host {
            if http::HeaderValue::from_str(host).is_err() || host.is_empty() {
                return Err(ConfigError::new(at("host"), "not a valid Host header"));
            }
        }
    }
    within(&at("interval_ms"), h.interval_ms, 10, MAX_TIMEOUT_MS)?;
    within(&at("timeout_ms"), h.timeout_ms, 1, MAX_TIMEOUT_MS)?;
    within(&at("rise"), h.rise.into(), 1, 100)?;
    within(&at("fall"), h.fall.into(), 1, 100)?;
    Ok(())
}

/// `host:port` where host is an IP literal (IPv6 in brackets) or a DNS name.
pub(super) fn check_host_port(path: &str, value: &str) -> Result<(), ConfigError> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(ConfigError::new(path, "port must be from 1 to 65535"));
        }
        return Ok(());
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(ConfigError::new(
            path,
            "expected host:port (or an SRV name, _service._tcp.name)",
        ));
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => return Err(ConfigError::new(path, "port must be from 1 to 65535")),
    }
    check_dns_name(path, host)
}

fn check_dns_name(path: &str, host: &str) -> Result<(), ConfigError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(ConfigError::new(
            path,
            "host must be an IP address or a DNS name",
        ));
    }
    Ok(())
}
