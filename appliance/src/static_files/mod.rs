//! Serving static sites from the content-addressed store.
//!
//! A route's `static` action names a site; the snapshot carries that site's
//! current manifest ([`ServedSite`]). [`plan`] decides the answer without IO
//! (file, index file, 404 page, precompressed variant, 304, 206, 416); the
//! core's [`cache::BlobCache`] supplies the verified bytes.

pub mod cache;
mod plan;

use std::sync::Arc;

use edgebox_storage::Manifest;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};

use crate::response::{FileRange, ResBody};
pub use plan::{plan, Plan};

/// A published site as the data plane serves it.
#[derive(Debug)]
pub struct ServedSite {
    pub name: Arc<str>,
    pub generation: u64,
    pub manifest: Manifest,
}

/// The response for a request to a site (`None`: not published).
pub fn respond(
    cache: &cache::BlobCache,
    site: Option<&ServedSite>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Response<ResBody> {
    let Some(site) = site else {
        return text(
            StatusCode::NOT_FOUND,
            "404 Not Found: this site is not published\n",
        );
    };
    let p = plan(&site.manifest, method, path, headers);
    let body = match p.blob {
        None => None,
        Some(hash) => match cache.get(&hash) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::error!(site = &*site.name, "{e}");
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "500 Internal Server Error: stored content is unavailable\n",
                );
            }
        },
    };
    if p.blob.is_none() && p.status == StatusCode::NOT_FOUND {
        return text(StatusCode::NOT_FOUND, "404 Not Found\n");
    }
    let mut r = Response::new(ResBody::empty());
    *r.status_mut() = p.status;
    for (name, value) in &p.headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            r.headers_mut().append(name.clone(), v);
        }
    }
    if let Some(blob) = body {
        let (start, end) = p.range;
        let end = end.min(blob.len());
        let start = start.min(end);
        if p.head_only {
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
        } else {
            *r.body_mut() = match blob {
                cache::Blob::Bytes(bytes) => {
                    ResBody::from(bytes.slice(start as usize..end as usize))
                }
                cache::Blob::File { file, .. } => ResBody::File(FileRange::new(file, start, end)),
            };
        }
    }
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<ResBody> {
    let mut r = Response::new(ResBody::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
