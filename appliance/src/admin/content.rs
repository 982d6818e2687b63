//! The admin API's content endpoints: blobs, sites, GC and scrub.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use edgebox_storage::{Hash, PutError};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::{json_response, ApiError, Body};
use crate::control::state::SiteOp;
use crate::control::{maintenance, ApplyError, Control};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The largest blob accepted.
const MAX_BLOB: u64 = 16 << 30;

fn parse_hash(s: &str) -> Result<Hash> {
    s.parse()
        .map_err(|e: edgebox_storage::BadHash| ApiError::invalid("hash", e.to_string()))
}

/// An IO failure of the store, said plainly: a full disk is 507.
fn store_io(e: std::io::Error) -> ApiError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("the data disk is full ({e}); nothing was stored and every site keeps serving its previous generation"),
        )
    } else {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("store: {e}"))
    }
}

/// `HEAD` (is it there?) and `PUT` (upload, verified) of `/v1/blobs/{hash}`.
pub async fn blob(
    control: &Rc<RefCell<Control>>,
    req: Request<Incoming>,
    hash: &str,
) -> Result<Response<Body>> {
    let hash = parse_hash(hash)?;
    match *req.method() {
        Method::HEAD => {
            let present = control.borrow().content.blobs().touch(&hash);
            let mut r = Response::new(Body::empty());
            *r.status_mut() = if present {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            Ok(r)
        }
        Method::PUT => {
            let blobs = control.borrow().content.blobs().clone();
            if blobs.touch(&hash) {
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({ "hash": hash, "stored": false }),
                ));
            }
            let mut writer = blobs.writer().map_err(store_io)?;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                // A cut upload drops `writer`, which removes its temporary file.
                let frame = frame.map_err(|e| {
                    ApiError::new(StatusCode::BAD_REQUEST, format!("upload cut: {e}"))
                })?;
                if let Some(data) = frame.data_ref() {
                    if writer.len() + data.len() as u64 > MAX_BLOB {
                        return Err(ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("a blob may be at most {MAX_BLOB} bytes"),
                        ));
                    }
                    if let Err(e) = writer.write(data) {
                        // Read the rest before answering: closing on a client
                        // still sending makes its kernel reset the connection,
                        // and a reset loses the answer (507) it has not read.
                        drop(writer);
                        drain(&mut body).await;
                        return Err(store_io(e));
                    }
                }
            }
            // The fsync and rename are made off the control thread.
            let finished = tokio::task::spawn_blocking(move || writer.finish(Some(hash)))
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            match finished {
                Ok((h, size)) => Ok(json_response(
                    StatusCode::CREATED,
                    &json!({ "hash": h, "size": size, "stored": true }),
                )),
                Err(PutError::Mismatch { expected, actual }) => Err(ApiError::invalid(
                    "hash",
                    format!("the body hashes to {actual}, not {expected}; nothing was stored"),
                )),
                Err(e @ PutError::Corrupt(_)) => Err(ApiError::invalid("hash", e.to_string())),
                Err(PutError::Io(e)) => Err(store_io(e)),
            }
        }
        ref m => Err(ApiError::method_not_allowed(m, "HEAD, PUT")),
    }
}

/// Reads and discards what is left of a request body: at most [`MAX_BLOB`]
/// bytes, for at most 10 s.
pub(super) async fn drain<B>(body: &mut B)
where
    B: hyper::body::Body + Unpin,
{
    let read_all = async {
        let mut left = MAX_BLOB;
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame
                .data_ref()
                .map_or(0, |d| bytes::Buf::remaining(d) as u64);
            match left.checked_sub(n) {
                Some(l) => left = l,
                None => return,
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), read_all).await;
}

fn site_json(c: &Control, name: &str, r: &edgebox_storage::SiteRef) -> serde_json::Value {
    let peers = crate::replication::status::site_on_peers(c, name);
    json!({ "site": name, "generation": r.generation, "manifest": r.manifest, "history": r.history, "peers": peers })
}

pub fn sites(control: &Rc<RefCell<Control>>) -> Result<Response<Body>> {
    let c = control.borrow();
    let list = c.content.sites()?;
    let out: Vec<_> = list.iter().map(|(n, r)| site_json(&c, n, r)).collect();
    Ok(json_response(StatusCode::OK, &out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Publish {
    manifest: Hash,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Rollback {
    generation: u64,
}

/// `GET`, `PUT` (publish a manifest) and `DELETE` of `/v1/sites/{site}`.
pub async fn site(
    control: &Rc<RefCell<Control>>,
    req: Request<Incoming>,
    name: &str,
) -> Result<Response<Body>> {
    match *req.method() {
        Method::GET => {
            let c = control.borrow();
            let r = c
                .content
                .site(name)?
                .ok_or_else(|| ApiError::not_found(format!("site {name}")))?;
            Ok(json_response(StatusCode::OK, &site_json(&c, name, &r)))
        }
        Method::PUT => {
            let (_, p): (_, Publish) = super::api::read_json(req).await?;
            publish_with(control, name, SiteOp::Publish(p.manifest))
        }
        Method::DELETE => {
            control
                .borrow_mut()
                .change_site(name, SiteOp::Delete)
                .map_err(site_error)?;
            tracing::info!(site = name, "deleted");
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            Ok(r)
        }
        ref m => Err(ApiError::method_not_allowed(m, "GET, PUT, DELETE")),
    }
}

pub async fn rollback(
    control: &Rc<RefCell<Control>>,
    req: Request<Incoming>,
    name: &str,
) -> Result<Response<Body>> {
    let (_, r): (_, Rollback) = super::api::read_json(req).await?;
    publish_with(control, name, SiteOp::Rollback(r.generation))
}

/// A site change's error, a full disk said plainly.
fn site_error(e: ApplyError) -> ApiError {
    match e {
        ApplyError::Site(edgebox_storage::SiteError::Io(io)) => store_io(io),
        other => other.into(),
    }
}

/// Moves a site's ref (every blob checked first), then serves it.
fn publish_with(control: &Rc<RefCell<Control>>, name: &str, op: SiteOp) -> Result<Response<Body>> {
    let r = control
        .borrow_mut()
        .change_site(name, op)
        .map_err(site_error)?
        .ok_or_else(|| ApiError::not_found(format!("site {name}")))?;
    tracing::info!(site = name, generation = r.generation, manifest = %r.manifest, "published");
    Ok(json_response(
        StatusCode::OK,
        &site_json(&control.borrow(), name, &r),
    ))
}

/// `POST /v1/store/gc?grace_s=N` (default an hour).
pub async fn gc(control: &Rc<RefCell<Control>>, grace_s: Option<u64>) -> Result<Response<Body>> {
    let grace = Duration::from_secs(grace_s.unwrap_or(3600));
    let report = maintenance::collect_garbage(control, grace).await?;
    tracing::info!(
        removed = report.removed,
        bytes = report.removed_bytes,
        "garbage collected the store"
    );
    Ok(json_response(StatusCode::OK, &report))
}

/// `POST /v1/store/scrub`.
pub async fn scrub(control: &Rc<RefCell<Control>>) -> Result<Response<Body>> {
    let report = maintenance::scrub(control).await?;
    Ok(json_response(StatusCode::OK, &report))
}
