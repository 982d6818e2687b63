//! The admin API's endpoints. Every change is an edit of a copy of the whole
//! config (or host map), applied through [`Control`] as one step.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{json_response, ApiError, Body};
use crate::config::{Certificate, Config, Listener, Route};
use crate::control::{ApplyError, Control};
use crate::hostmap::Importer;
use crate::snapshot::Generations;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The largest JSON body accepted (certificates included).
const MAX_JSON: usize = 1 << 20;
/// The largest host map import.
const MAX_HOSTMAP: u64 = 512 << 20;

pub async fn dispatch(
    control: &Rc<RefCell<Control>>,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let path = req.uri().path().to_owned();
    let segments: Vec<std::borrow::Cow<'_, str>> = path
        .trim_start_matches('/')
        .split('/')
        .map(crate::router::percent_decode)
        .collect::<Option<_>>()
        .ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad percent-encoding in the path")
        })?;
    let segs: Vec<&str> = segments.iter().map(|s| &**s).collect();
    let m = req.method().clone();
    match (segs.as_slice(), &m) {
        (["metrics"], &Method::GET) => Ok(metrics(control)),
        (["v1", "status"], &Method::GET) => Ok(status(control)),
        (["v1", "config"], &Method::GET) => Ok(get_config(control, |c| json!(c))),
        (["v1", "config"], &Method::PUT) => {
            let (headers, new): (_, Config) = read_json(req).await?;
            change(control, &headers, |c| {
                *c = new;
                Ok(())
            })
            .await?;
            Ok(get_config(control, |c| json!(c)))
        }
        (["v1", "listeners"], &Method::GET) => Ok(get_config(control, |c| json!(c.listeners))),
        (["v1", "listeners"], &Method::PUT) => {
            let (headers, new): (_, Vec<Listener>) = read_json(req).await?;
            change(control, &headers, |c| {
                c.listeners = new;
                Ok(())
            })
            .await?;
            Ok(get_config(control, |c| json!(c.listeners)))
        }
        (["v1", "routes"], &Method::GET) => Ok(get_config(control, |c| json!(c.routes))),
        (["v1", "routes"], &Method::PUT) => {
            let (headers, new): (_, Vec<Route>) = read_json(req).await?;
            change(control, &headers, |c| {
                c.routes = new;
                Ok(())
            })
            .await?;
            Ok(get_config(control, |c| json!(c.routes)))
        }
        (["v1", "pools"], &Method::GET) => Ok(get_config(control, |c| json!(c.pools))),
        (["v1", "pools", name], _) => super::pools::pool(control, req, name).await,
        (["v1", "pools", name, "status"], &Method::GET) => super::pools::status(control, name),
        (["v1", "pools", name, "backends"], &Method::POST) => {
            super::pools::add_backend(control, req, name).await
        }
        (["v1", "pools", name, "backends", address], _) => {
            super::pools::backend(control, req, name, address).await
        }
        (
            ["v1", "pools", name, "backends", address, action @ ("drain" | "enable")],
            &Method::POST,
        ) => super::pools::set_state(control, req, name, address, action == &"drain").await,
        (["v1", "certificates"], &Method::GET) => certificates(control),
        (["v1", "acme"], &Method::GET) => Ok(super::acme::get(control)),
        (["v1", "acme", name, "renew"], &Method::POST) => super::acme::renew(control, name),
        (["v1", "update"], &Method::GET) => Ok(super::update::get(&control.borrow())),
        (["v1", "update"], &Method::POST) => super::update::upload(control, req).await,
        (["v1", "certificates", name], _) => certificate(control, req, name).await,
        (["v1", "hostmap"], &Method::GET) => {
            let c = control.borrow();
            let mut r = Response::new(Body::hostmap(std::sync::Arc::clone(&c.hostmap)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            set_etag(&mut r, &hostmap_etag(c.gens));
            Ok(r)
        }
        (["v1", "hostmap"], &Method::PUT) => import_hostmap(control, req).await,
        (["v1", "hostmap", host], _) => hostmap_entry(control, req, host).await,
        (["v1", "blobs", hash], _) => super::content::blob(control, req, hash).await,
        (["v1", "sites"], &Method::GET) => super::content::sites(control),
        (["v1", "sites", site], _) => super::content::site(control, req, site).await,
        (["v1", "sites", site, "rollback"], &Method::POST) => {
            super::content::rollback(control, req, site).await
        }
        (["v1", "store", "gc"], &Method::POST) => {
            super::content::gc(control, query(&req, "grace_s")?).await
        }
        (["v1", "store", "scrub"], &Method::POST) => super::content::scrub(control).await,
        (["v1", "replication"], &Method::GET) => {
            let c = control.borrow();
            Ok(json_response(
                StatusCode::OK,
                &crate::replication::status::view(&c),
            ))
        }
        (["v1", "failover"], &Method::GET) => {
            let c = control.borrow();
            let status = c.shared.failover.status();
            Ok(json_response(
                StatusCode::OK,
                &status.map_or_else(|| json!({ "state": "disabled" }), |s| json!(s)),
            ))
        }
        (["v1", "failover", "release"], &Method::POST) => {
            let limit = query(&req, "wait_ms")?.unwrap_or(5000);
            if limit > 60_000 {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "wait_ms must be at most 60000",
                ));
            }
            let handed =
                crate::control::hand_over(control, std::time::Duration::from_millis(limit))
                    .await
                    .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
            let status = control.borrow().shared.failover.status();
            if !handed {
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("no peer took the virtual addresses within {limit} ms; this appliance still holds them, advertising priority 1 (edgebox ctl failover reclaim restores its priority)"),
                ));
            }
            Ok(json_response(StatusCode::OK, &json!(status)))
        }
        (["v1", "failover", "reclaim"], &Method::POST) => {
            let c = control.borrow();
            c.shared
                .failover
                .reclaim()
                .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
            Ok(json_response(
                StatusCode::OK,
                &json!(c.shared.failover.status()),
            ))
        }
        (["v1", "logs"], &Method::GET) => {
            let limit = query(&req, "limit")?.unwrap_or(100);
            if limit > crate::logging::RING_LINES as u64 {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("limit must be at most {}", crate::logging::RING_LINES),
                ));
            }
            let lines = control.borrow().logs.recent(limit as usize);
            Ok(json_response(StatusCode::OK, &lines))
        }
        (["v1", "token", "rotate"], &Method::POST) => {
            let token = control
                .borrow_mut()
                .token
                .rotate()
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            tracing::info!("admin token rotated");
            Ok(json_response(StatusCode::OK, &json!({ "token": token })))
        }
        (["v1", "system", action @ ("shutdown" | "reboot" | "poweroff")], &Method::POST) => {
            use crate::snapshot::Exit;
            let c = control.borrow();
            let exit = match (*action, c.shared.appliance) {
                ("reboot", true) => Exit::Reboot,
                // On the appliance there is nothing to do once stopped.
                (_, true) => Exit::PowerOff,
                ("shutdown", false) => Exit::Stopped,
                (_, false) => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!("{action} works on the appliance only; this edgebox runs under another init (use shutdown, or its service manager)"),
                    ))
                }
            };
            if !c.stopping {
                c.shared
                    .exit
                    .store(exit as u8, std::sync::atomic::Ordering::Release);
                drop(c);
                crate::control::begin_shutdown(control, &format!("admin API {action}"));
            }
            Ok(json_response(
                StatusCode::ACCEPTED,
                &json!({ "status": "shutting down" }),
            ))
        }
        _ => Err(not_here(&segs, &m)),
    }
}

/// 405 for a known resource with another method, 404 otherwise.
fn not_here(segs: &[&str], m: &Method) -> ApiError {
    let allowed = match segs {
        ["metrics"]
        | ["status"]
        | ["v1", "status"]
        | ["v1", "logs"]
        | ["v1", "replication"]
        | ["v1", "failover"]
        | ["v1", "acme"]
        | ["v1", "certificates"]
        | ["v1", "pools"]
        | ["v1", "pools", _, "status"]
        | ["v1", "sites"] => "GET",
        ["v1", "sites", _, "rollback"] | ["v1", "store", "gc" | "scrub"] => "POST",
        ["v1", "failover", "release" | "reclaim"] => "POST",
        ["v1", "acme", _, "renew"] => "POST",
        ["v1", "config" | "listeners" | "routes" | "hostmap"] => "GET, PUT",
        ["v1", "update"] => "GET, POST",
        ["v1", "pools", _, "backends"] | ["v1", "token", "rotate"] => "POST",
        ["v1", "pools", _, "backends", _, "drain" | "enable"] => "POST",
        ["v1", "system", "shutdown" | "reboot" | "poweroff"] => "POST",
        _ => return ApiError::not_found(format!("no resource at /{}", segs.join("/"))),
    };
    ApiError::method_not_allowed(m, allowed)
}

// ------------------------------------------------------------- helpers

pub(super) fn config_etag(g: Generations) -> String {
    format!("\"c{}\"", g.config)
}

fn hostmap_etag(g: Generations) -> String {
    format!("\"h{}\"", g.hostmap)
}

pub(super) fn set_etag(r: &mut Response<Body>, etag: &str) {
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
}

/// 412 when `If-Match` is present and names neither `*` nor `etag`; 400 when
/// it is not `*` or a list of entity tags.
fn check_if_match(headers: &HeaderMap, etag: &str) -> Result<()> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(());
    };
    let v = v.to_str().unwrap_or("");
    let tags: Vec<&str> = v.split(',').map(str::trim).collect();
    let well_formed = |t: &&str| {
        let quoted = t.strip_prefix("W/").unwrap_or(t);
        *t == "*" || (quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"'))
    };
    if !tags.iter().all(well_formed) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "If-Match must be * or a list of quoted entity tags",
        ));
    }
    if tags.iter().any(|t| *t == "*" || *t == etag) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            format!("If-Match {v} does not match the current {etag}: the config changed meanwhile"),
        ))
    }
}

/// A view of the current config, with its ETag.
fn get_config(
    control: &Rc<RefCell<Control>>,
    view: impl FnOnce(&Config) -> serde_json::Value,
) -> Response<Body> {
    let c = control.borrow();
    let mut r = json_response(StatusCode::OK, &view(&c.config));
    set_etag(&mut r, &config_etag(c.gens));
    r
}

/// Applies `edit` to a copy of the config, then the copy as a whole.
///
/// `If-Match` is evaluated once the change is known to be possible and valid:
/// a request that would fail anyway (404, 409, 422) fails that way, and a
/// stale precondition is reported only for an otherwise good change
/// (RFC 9110, 13.2).
///
/// Backend names the change brings in are resolved first, without holding
/// the control state; a change made meanwhile makes this one a 409.
pub(super) async fn change<T>(
    control: &Rc<RefCell<Control>>,
    headers: &HeaderMap,
    edit: impl FnOnce(&mut Config) -> Result<T>,
) -> Result<T> {
    let (new, out, gens, unresolved) = {
        let c = control.borrow();
        let mut new = c.config.clone();
        let out = edit(&mut new)?;
        new.validate().map_err(ApplyError::from)?;
        let unresolved = crate::discovery::unresolved(&new, &c.upstreams);
        (new, out, c.gens, unresolved)
    };
    let mut resolved = crate::discovery::Resolved::new();
    if !unresolved.is_empty() {
        let resolver = control
            .borrow_mut()
            .resolver(&new.dns)
            .map_err(|e| ApiError::invalid("dns", e))?;
        resolved = crate::discovery::resolve_all(&resolver, unresolved)
            .await
            .map_err(ApplyError::from)?;
    }
    let mut c = control.borrow_mut();
    if c.gens != gens {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the config changed while this change's backend names were resolved; send it again",
        ));
    }
    let prepared = c.prepare_config(new, resolved)?;
    check_if_match(headers, &config_etag(c.gens))?;
    c.commit(prepared)?;
    Ok(out)
}

/// Reads a JSON body of at most [`MAX_JSON`] bytes: 413 when larger, 400 when
/// not JSON, 422 (with the field) when JSON of the wrong shape.
pub(super) async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<(HeaderMap, T)> {
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, MAX_JSON).await?;
    Ok((parts.headers, decode_json(&bytes)?))
}

/// A body as JSON of type `T`: 400 when not JSON, 422 (with the field) when
/// JSON of the wrong shape.
pub(super) fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => ApiError::invalid(path, inner.to_string()),
            _ => ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {inner}")),
        }
    })
}

async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes> {
    let mut read = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(unreadable_body)?;
        if let Some(data) = frame.data_ref() {
            if read.len() + data.len() > limit {
                // Read the rest first: a client still sending to a closed
                // connection gets a reset, which loses the 413.
                super::content::drain(&mut body).await;
                return Err(too_large(limit as u64));
            }
            read.extend_from_slice(data);
        }
    }
    Ok(read.freeze())
}

fn unreadable_body(e: hyper::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("cannot read the body: {e}"),
    )
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {limit} bytes"),
    )
}

/// A whole-number query parameter; 400 when present but not a number.
fn query(req: &Request<Incoming>, key: &str) -> Result<Option<u64>> {
    let Some(q) = req.uri().query() else {
        return Ok(None);
    };
    let Some(v) = q
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    else {
        return Ok(None);
    };
    v.parse().map(Some).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{key} must be a whole number"),
        )
    })
}

// ------------------------------------------------------------- resources

fn metrics(control: &Rc<RefCell<Control>>) -> Response<Body> {
    let c = control.borrow();
    let cores: Vec<_> = c.shared.stats.iter().map(|s| s.snapshot()).collect();
    let health = super::pools::health_rows(&c.shared.snapshot.load());
    let mut text = crate::metrics::render_prometheus(
        &cores,
        &health,
        c.gens.config,
        c.started.elapsed().as_secs_f64(),
    );
    crate::replication::status::render_prometheus(&crate::replication::status::view(&c), &mut text);
    if let Some(f) = c.shared.failover.status() {
        crate::failover::io::render_prometheus(&f, &mut text);
    }
    crate::update::render_prometheus(&super::update::view(&c), &mut text);
    crate::metrics::Process::read().render(&mut text);
    let not_after = {
        let mut cache = c.cert_expiry.borrow_mut();
        match &*cache {
            Some((generation, list)) if *generation == c.gens.config => list.clone(),
            _ => {
                let list: Vec<Option<i64>> = c
                    .config
                    .certificates
                    .iter()
                    .map(|cert| crate::tls::not_after(&cert.cert))
                    .collect();
                *cache = Some((c.gens.config, list.clone()));
                list
            }
        }
    };
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    crate::metrics::state::State {
        not_after,
        disk: crate::metrics::state::disk(&c.data),
        hostmap_generation: c.gens.hostmap,
        sites_generation: c.gens.sites,
    }
    .render(now_s, &mut text);
    c.acme
        .render_prometheus(&c.shared.managed, now_s, &mut text);
    let mut r = Response::new(Body::full(Bytes::from(text)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn status(control: &Rc<RefCell<Control>>) -> Response<Body> {
    let c = control.borrow();
    let cores: Vec<_> = c
        .shared
        .stats
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let v = s.snapshot();
            json!({
                "core": i,
                "connections_active": v.connections_active,
                "connections_total": v.connections_total,
                "requests_total": v.all.requests,
            })
        })
        .collect();
    let update = super::update::view(&c);
    let body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "image_version": update.version,
        "slot": update.running,
        "uptime_s": c.started.elapsed().as_secs_f64(),
        "generations": c.gens,
        "hostmap_entries": c.hostmap.len(),
        "shutting_down": c.shared.shutting_down.load(std::sync::atomic::Ordering::Acquire),
        "listeners": c.config.listeners,
        "admin_address": c.config.admin.address,
        "cores": cores,
    });
    json_response(StatusCode::OK, &body)
}

pub(super) fn no_content() -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

// ------------------------------------------------------------- certificates

#[derive(Serialize)]
struct CertView {
    name: Option<String>,
    cert: String,
    /// The names it is chosen for: configured, or the certificate's own.
    names: Vec<String>,
    default: bool,
    /// SHA-256 of the leaf certificate (DER), hex.
    sha256: String,
    /// When the leaf expires, seconds since the epoch.
    not_after: Option<i64>,
}

fn cert_view(c: &Certificate) -> CertView {
    let info = crate::tls::certificate_info(&c.cert);
    let (own, sha256) = info.unwrap_or_default();
    CertView {
        name: c.name.clone(),
        cert: c.cert.display().to_string(),
        names: if c.names.is_empty() {
            own
        } else {
            c.names.clone()
        },
        default: c.default,
        sha256,
        not_after: crate::tls::not_after(&c.cert),
    }
}

fn certificates(control: &Rc<RefCell<Control>>) -> Result<Response<Body>> {
    let c = control.borrow();
    let list: Vec<CertView> = c.config.certificates.iter().map(cert_view).collect();
    let mut r = json_response(StatusCode::OK, &list);
    set_etag(&mut r, &config_etag(c.gens));
    Ok(r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CertUpload {
    /// PEM chain, leaf first.
    cert: String,
    /// PEM private key.
    key: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    default: bool,
}

async fn certificate(
    control: &Rc<RefCell<Control>>,
    req: Request<Incoming>,
    name: &str,
) -> Result<Response<Body>> {
    let find = |c: &Config| {
        c.certificates
            .iter()
            .position(|x| x.name.as_deref() == Some(name))
    };
    match *req.method() {
        Method::GET => {
            let c = control.borrow();
            let i = find(&c.config)
                .ok_or_else(|| ApiError::not_found(format!("certificate {name}")))?;
            let mut r = json_response(StatusCode::OK, &cert_view(&c.config.certificates[i]));
            set_etag(&mut r, &config_etag(c.gens));
            Ok(r)
        }
        Method::PUT => {
            let (headers, upload): (_, CertUpload) = read_json(req).await?;
            let data = control.borrow().data.clone();
            let (cert, key) = crate::tls::store_uploaded(&data, name, &upload.cert, &upload.key)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let entry = Certificate {
                name: Some(name.to_owned()),
                cert,
                key,
                names: upload.names,
                default: upload.default,
            };
            let created = change(control, &headers, |c| {
                if entry.default {
                    for other in &mut c.certificates {
                        other.default = false;
                    }
                }
                Ok(match find(c) {
                    Some(i) => {
                        c.certificates[i] = entry;
                        false
                    }
                    None => {
                        c.certificates.push(entry);
                        true
                    }
                })
            })
            .await;
            let c = control.borrow();
            crate::tls::prune_uploaded(&data, &c.config);
            let created = created?;
            let i = find(&c.config).unwrap_or_default();
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut r = json_response(status, &cert_view(&c.config.certificates[i]));
            set_etag(&mut r, &config_etag(c.gens));
            Ok(r)
        }
        Method::DELETE => {
            change(control, req.headers(), |c| {
                let i =
                    find(c).ok_or_else(|| ApiError::not_found(format!("certificate {name}")))?;
                c.certificates.remove(i);
                Ok(())
            })
            .await?;
            let c = control.borrow();
            crate::tls::prune_uploaded(&c.data, &c.config);
            Ok(no_content())
        }
        ref m => Err(ApiError::method_not_allowed(m, "GET, PUT, DELETE")),
    }
}

// ------------------------------------------------------------- host map

async fn import_hostmap(
    control: &Rc<RefCell<Control>>,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let (parts, mut body) = req.into_parts();
    let mut importer = Importer::new();
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(unreadable_body)?;
        if let Some(data) = frame.data_ref() {
            size += data.len() as u64;
            if size > MAX_HOSTMAP {
                return Err(too_large(MAX_HOSTMAP));
            }
            importer
                .push(data)
                .map_err(|e| ApiError::invalid(format!("line {}", e.line), e.reason))?;
        }
    }
    let map = importer
        .finish()
        .map_err(|e| ApiError::invalid(format!("line {}", e.line), e.reason))?;
    let mut c = control.borrow_mut();
    let prepared = c.prepare_hostmap(map)?;
    check_if_match(&parts.headers, &hostmap_etag(c.gens))?;
    c.commit(prepared)?;
    let mut r = json_response(
        StatusCode::OK,
        &json!({ "generation": c.gens.hostmap, "entries": c.hostmap.len() }),
    );
    set_etag(&mut r, &hostmap_etag(c.gens));
    Ok(r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PoolRef {
    pool: String,
}

async fn hostmap_entry(
    control: &Rc<RefCell<Control>>,
    req: Request<Incoming>,
    host: &str,
) -> Result<Response<Body>> {
    let entry = |c: &Control| {
        let h = host.to_ascii_lowercase();
        c.hostmap
            .get(&h)
            .map(|p| json!({ "host": h, "pool": p }))
            .ok_or_else(|| ApiError::not_found(format!("host map entry {host}")))
    };
    match *req.method() {
        Method::GET => {
            let c = control.borrow();
            let mut r = json_response(StatusCode::OK, &entry(&c)?);
            set_etag(&mut r, &hostmap_etag(c.gens));
            Ok(r)
        }
        Method::PUT | Method::DELETE => {
            let put = *req.method() == Method::PUT;
            let (headers, pool) = if put {
                let (h, p): (_, PoolRef) = read_json(req).await?;
                (h, Some(p.pool))
            } else {
                (req.headers().clone(), None)
            };
            let mut c = control.borrow_mut();
            let h = host.to_ascii_lowercase();
            let existed = c.hostmap.get(&h).is_some();
            let change = match pool {
                Some(pool) => crate::hostmap::Change::Set { host: h, pool },
                None if existed => crate::hostmap::Change::Delete { host: h },
                None => return Err(ApiError::not_found(format!("host map entry {host}"))),
            };
            let prepared = c.prepare_hostmap_entry(change)?;
            check_if_match(&headers, &hostmap_etag(c.gens))?;
            c.commit(prepared)?;
            let created = put && !existed;
            let mut r = if put {
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                json_response(status, &entry(&c)?)
            } else {
                no_content()
            };
            set_etag(&mut r, &hostmap_etag(c.gens));
            Ok(r)
        }
        ref m => Err(ApiError::method_not_allowed(m, "GET, PUT, DELETE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match() {
        let mut h = HeaderMap::new();
        check_if_match(&h, "\"c3\"").unwrap();
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"c3\""));
        check_if_match(&h, "\"c3\"").unwrap();
        let e = check_if_match(&h, "\"c4\"").unwrap_err();
        assert_eq!(e.status, StatusCode::PRECONDITION_FAILED);
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"c1\", *"));
        check_if_match(&h, "\"c4\"").unwrap();
        for bad in ["", "c4", "\"c4", "\"c4\", x"] {
            h.insert(header::IF_MATCH, HeaderValue::from_str(bad).unwrap());
            assert_eq!(
                check_if_match(&h, "\"c4\"").unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
    }
}
