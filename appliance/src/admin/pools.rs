//! Pools and backends in the admin API: the config side (create, replace,
//! delete, weights, drains) and the live side (`/v1/pools/{name}/status`:
//! health, ejections, load, what a drain is waiting for).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::api::{change, config_etag, no_content, read_json, set_etag};
use super::{json_response, ApiError, Body};
use crate::balance::health::Health;
use crate::config::{Backend, BackendState, Config, Pool};
use crate::control::Control;
use crate::metrics::{BackendHealth, BackendKey, BackendValues};
use crate::snapshot::Snapshot;

type Result<T, E = ApiError> = std::result::Result<T, E>;

fn find_pool<'a>(c: &'a mut Config, name: &str) -> Result<(usize, &'a mut Pool)> {
    c.pools
        .iter_mut()
        .enumerate()
        .find(|(_, p)| p.name == name)
        .ok_or_else(|| ApiError::not_found(format!("pool {name}")))
}

fn find_backend<'a>(c: &'a mut Config, pool: &str, address: &str) -> Result<&'a mut Backend> {
    let (_, p) = find_pool(c, pool)?;
    p.backends
        .iter_mut()
        .find(|b| b.address == address)
        .ok_or_else(|| ApiError::not_found(format!("backend {address} in pool {pool}")))
}

pub(super) async fn pool(
    control: &Rc<RefCell<Control>>,
    req: Request<Incoming>,
    name: &str,
) -> Result<Response<Body>> {
    match *req.method() {
        Method::GET => {
            let c = control.borrow();
            let p = c
                .config
                .pools
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| ApiError::not_found(format!("pool {name}")))?;
            let mut r = json_response(StatusCode::OK, p);
            set_etag(&mut r, &config_etag(c.gens));
            Ok(r)
        }
        Method::PUT => {
            let (headers, mut new): (_, serde_json::Value) = read_json(req).await?;
            // The name comes from the path; a body may repeat it.
            if let Some(obj) = new.as_object_mut() {
                match obj.get("name") {
                    Some(n) if n != name => {
                        return Err(ApiError::invalid(
                            "name",
                            "differs from the name in the path",
                        ))
                    }
                    _ => {
                        obj.insert("name".into(), json!(name));
                    }
                }
            }
            let new: Pool = serde_path_to_error::deserialize(new)
                .map_err(|e| ApiError::invalid(e.path().to_string(), e.into_inner().to_string()))?;
            let created = change(control, &headers, |c| {
                Ok(match c.pools.iter_mut().find(|p| p.name == name) {
                    Some(p) => {
                        *p = new;
                        false
                    }
                    None => {
                        c.pools.push(new);
                        true
                    }
                })
            })
            .await?;
            let c = control.borrow();
            let p = c.config.pools.iter().find(|p| p.name == name);
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut r = json_response(status, &p);
            set_etag(&mut r, &config_etag(c.gens));
            Ok(r)
        }
        Method::DELETE => {
            change(control, req.headers(), |c| {
                let (i, _) = find_pool(c, name)?;
                c.pools.remove(i);
                Ok(())
            })
            .await?;
            Ok(no_content())
        }
        ref m => Err(ApiError::method_not_allowed(m, "GET, PUT, DELETE")),
    }
}

fn get_backend(
    control: &Rc<RefCell<Control>>,
    pool: &str,
    address: &str,
) -> Result<Response<Body>> {
    let c = control.borrow();
    let p = c
        .config
        .pools
        .iter()
        .find(|p| p.name == pool)
        .ok_or_else(|| ApiError::not_found(format!("pool {pool}")))?;
    let b = p
        .backends
        .iter()
        .find(|b| b.address == address)
        .ok_or_else(|| ApiError::not_found(format!("backend {address} in pool {pool}")))?;
    let mut r = json_response(StatusCode::OK, &BackendView::of(b, pool, &c));
    set_etag(&mut r, &config_etag(c.gens));
    Ok(r)
}

/// A backend as the API shows it: its config (state always written out),
/// and what it is doing now, summed over its addresses and the cores.
#[derive(Serialize)]
struct BackendView<'a> {
    address: &'a str,
    weight: u32,
    state: BackendState,
    /// Requests in flight to it now.
    active: u64,
    /// Tunnels (WebSocket) open to it now.
    tunnels: u64,
    /// Draining, and nothing in flight or open: safe to stop.
    idle: bool,
    /// The addresses it stands for (one, or what its name resolved to).
    endpoints: Vec<Endpoint>,
}

impl<'a> BackendView<'a> {
    fn of(b: &'a Backend, pool: &str, c: &Control) -> Self {
        let snap = c.shared.snapshot.load();
        let live = live(c, pool);
        let endpoints: Vec<Endpoint> = snap
            .pools
            .iter()
            .find(|p| &*p.name == pool)
            .into_iter()
            .flat_map(|p| {
                p.backends
                    .iter()
                    .filter(|e| *e.config_address == *b.address)
                    .map(|e| Endpoint::of(p, e, live.get(&*e.name), c))
            })
            .collect();
        let active = endpoints.iter().map(|e| e.active).sum();
        let tunnels = endpoints.iter().map(|e| e.tunnels).sum();
        Self {
            address: &b.address,
            weight: b.weight,
            state: b.state,
            active,
            tunnels,
            idle: b.state == BackendState::Draining && active == 0 && tunnels == 0,
            endpoints,
        }
    }
}

/// One address of a backend, live.
#[derive(Serialize)]
struct Endpoint {
    address: String,
    /// The active health check's verdict (`unchecked` without one).
    health: Health,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_check: Option<crate::control::health::LastCheck>,
    ejected: bool,
    /// How much longer an ejection lasts.
    ejected_for_ms: u64,
    ejections: u64,
    /// Its share of new requests now, in per cent of its weight (below 100
    /// during slow start, 0 while draining).
    share_percent: u64,
    active: u64,
    queued: u64,
    tunnels: u64,
    requests: u64,
    failures: u64,
    retries: u64,
    responses: BTreeMap<String, u64>,
    /// Response time quantiles (ms), as fine as the histogram's buckets.
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

impl Endpoint {
    fn of(
        pool: &crate::snapshot::Pool,
        e: &crate::snapshot::Backend,
        live: Option<&BackendValues>,
        c: &Control,
    ) -> Self {
        let now = crate::clock::now_ms();
        let v = live.cloned().unwrap_or_default();
        let until = e.shared.ejection.until_ms();
        use crate::balance::slow_start::{effective_weight, SCALE};
        let ramp = effective_weight(1, e.shared.ramp_start_ms(), now, pool.slow_start_ms);
        let ms = |q: f64| {
            v.traffic
                .latency_quantile(q)
                .filter(|s| s.is_finite())
                .map(|s| s * 1e3)
        };
        Self {
            address: e.name.to_string(),
            health: e.shared.health.get(),
            last_check: c.health.last(&pool.name, e.addr),
            ejected: until > now,
            ejected_for_ms: until.saturating_sub(now),
            ejections: e.shared.ejection.total(),
            share_percent: if e.weight == 0 {
                0
            } else {
                u64::from(ramp) * 100 / u64::from(SCALE)
            },
            active: v.active,
            queued: v.queued,
            tunnels: v.tunnels,
            requests: v.traffic.requests,
            failures: v.failures,
            retries: v.retries,
            responses: v
                .traffic
                .status
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("{}xx", i + 1), *n))
                .collect(),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
        }
    }
}

/// Every core's counters for the backends of `pool`, summed by address.
fn live(c: &Control, pool: &str) -> BTreeMap<String, BackendValues> {
    let mut out: BTreeMap<String, BackendValues> = BTreeMap::new();
    for core in &c.shared.stats {
        for (k, v) in core.snapshot().backends {
            if &*k.pool == pool {
                out.entry(k.backend.to_string()).or_default().add(&v);
            }
        }
    }
    out
}

/// `GET /v1/pools/{name}/status`: every backend address, live.
pub(super) fn status(control: &Rc<RefCell<Control>>, name: &str) -> Result<Response<Body>> {
    let c = control.borrow();
    let snap = c.shared.snapshot.load();
    let pool = snap
        .pools
        .iter()
        .find(|p| &*p.name == name)
        .ok_or_else(|| ApiError::not_found(format!("pool {name}")))?;
    let live = live(&c, name);
    let mut totals = crate::metrics::PoolValues::default();
    for core in &c.shared.stats {
        for (k, v) in core.snapshot().pools {
            if &*k == name {
                totals.add(&v);
            }
        }
    }
    let backends: Vec<serde_json::Value> = pool
        .backends
        .iter()
        .map(|e| {
            let mut v = json!(Endpoint::of(pool, e, live.get(&*e.name), &c));
            v["config_address"] = json!(&*e.config_address);
            v["state"] = json!(if e.draining { "draining" } else { "enabled" });
            v["weight"] = json!(e.weight);
            v
        })
        .collect();
    let now = crate::clock::now_ms();
    let healthy = pool
        .backends
        .iter()
        .filter(|b| b.weight > 0 && b.shared.serves(now))
        .count();
    let mut r = json_response(
        StatusCode::OK,
        &json!({
            "pool": name,
            "healthy": healthy,
            "active": totals.active,
            "rejected": totals.rejected,
            "retry_budget_exhausted": totals.budget_exhausted,
            "backends": backends,
        }),
    );
    set_etag(&mut r, &config_etag(c.gens));
    Ok(r)
}

/// The backends' health for `/metrics`.
pub(super) fn health_rows(snap: &Snapshot) -> Vec<BackendHealth> {
    let now = crate::clock::now_ms();
    snap.pools
        .iter()
        .flat_map(|p| {
            p.backends.iter().map(move |b| BackendHealth {
                key: BackendKey {
                    pool: std::sync::Arc::clone(&p.name),
                    backend: std::sync::Arc::clone(&b.name),
                },
                healthy: b.shared.serves(now),
                ejected: b.shared.ejection.is_ejected(now),
                ejections: b.shared.ejection.total(),
                draining: b.draining,
            })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackendPatch {
    weight: Option<u32>,
    state: Option<BackendState>,
}

pub(super) async fn backend(
    control: &Rc<RefCell<Control>>,
    req: Request<Incoming>,
    pool: &str,
    address: &str,
) -> Result<Response<Body>> {
    match *req.method() {
        Method::GET => get_backend(control, pool, address),
        Method::PATCH => {
            let (headers, patch): (_, BackendPatch) = read_json(req).await?;
            change(control, &headers, |c| {
                let b = find_backend(c, pool, address)?;
                if let Some(w) = patch.weight {
                    b.weight = w;
                }
                if let Some(s) = patch.state {
                    b.state = s;
                }
                Ok(())
            })
            .await?;
            get_backend(control, pool, address)
        }
        Method::DELETE => {
            change(control, req.headers(), |c| {
                let (_, p) = find_pool(c, pool)?;
                let before = p.backends.len();
                p.backends.retain(|b| b.address != address);
                if p.backends.len() == before {
                    return Err(ApiError::not_found(format!(
                        "backend {address} in pool {pool}"
                    )));
                }
                Ok(())
            })
            .await?;
            Ok(no_content())
        }
        ref m => Err(ApiError::method_not_allowed(m, "GET, PATCH, DELETE")),
    }
}

pub(super) async fn add_backend(
    control: &Rc<RefCell<Control>>,
    req: Request<Incoming>,
    name: &str,
) -> Result<Response<Body>> {
    let (headers, backend): (_, Backend) = read_json(req).await?;
    let address = backend.address.clone();
    change(control, &headers, |c| {
        let (i, pool) = find_pool(c, name)?;
        if pool.backends.iter().any(|b| b.address == address) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("pool {name} already has backend {address}"),
            ));
        }
        c.pools[i].backends.push(backend);
        Ok(())
    })
    .await?;
    let mut r = get_backend(control, name, &address)?;
    *r.status_mut() = StatusCode::CREATED;
    Ok(r)
}

/// `drain` (no new requests) or `enable` (back in rotation).
pub(super) async fn set_state(
    control: &Rc<RefCell<Control>>,
    req: Request<Incoming>,
    pool: &str,
    address: &str,
    drain: bool,
) -> Result<Response<Body>> {
    let state = if drain {
        BackendState::Draining
    } else {
        BackendState::Enabled
    };
    change(control, req.headers(), |c| {
        find_backend(c, pool, address)?.state = state;
        Ok(())
    })
    .await?;
    get_backend(control, pool, address)
}
