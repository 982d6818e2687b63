//! The admin API: HTTPS + JSON on the control-plane thread.
//!
//! Every request needs `Authorization: Bearer <token>` ([`token`]). Every
//! error is a JSON body `{"error": "...", "field": "..."}` (`field` for
//! validation errors, as a path into the config). Changes go through
//! [`crate::control::Control`], which checks, persists and publishes them as
//! one step. The endpoints are described in `docs/admin-api.yaml` (OpenAPI
//! 3.1), which a test checks against the running server.

mod acme;
mod api;
mod body;
mod content;
mod pools;
mod status_page;
pub mod token;
pub mod update;

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;

use crate::control::Control;
pub use body::Body;

/// A request that could not be served, as its JSON error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
    /// For 405: the methods the resource allows.
    pub allow: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
            allow: None,
        }
    }

    /// 405, naming the methods the resource allows.
    pub fn method_not_allowed(method: &http::Method, allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed here; allowed: {allow}"),
            )
        }
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
            field: Some(field.into()),
            allow: None,
        }
    }

    fn into_response(self) -> Response<Body> {
        #[derive(Serialize)]
        struct Error<'a> {
            error: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            field: Option<&'a str>,
        }
        let body = Error {
            error: &self.message,
            field: self.field.as_deref(),
        };
        let mut r = json_response(self.status, &body);
        if let Some(allow) = self.allow {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"edgebox\""),
            );
        }
        r
    }
}

impl From<crate::control::ApplyError> for ApiError {
    fn from(e: crate::control::ApplyError) -> Self {
        match e {
            crate::control::ApplyError::Invalid(c) => Self::invalid(c.path, c.reason),
            crate::control::ApplyError::Persist(e) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("could not persist the change, nothing was applied: {e}"),
            ),
            crate::control::ApplyError::Site(e) => e.into(),
        }
    }
}

impl From<crate::control::maintenance::MaintenanceError> for ApiError {
    fn from(e: crate::control::maintenance::MaintenanceError) -> Self {
        use crate::control::maintenance::MaintenanceError as E;
        match e {
            E::Busy => Self::new(StatusCode::CONFLICT, e.to_string()),
            E::Store(e) => e.into(),
            E::Task(_) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

impl From<edgebox_storage::SiteError> for ApiError {
    fn from(e: edgebox_storage::SiteError) -> Self {
        use edgebox_storage::SiteError as E;
        let status = match &e {
            E::BadName | E::BadManifest { .. } | E::MissingBlobs(_) | E::ManifestMissing(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            E::NoSuchSite(_) | E::NoSuchGeneration { .. } => StatusCode::NOT_FOUND,
            // A peer's publish of the site got in first.
            E::Stale { .. } => StatusCode::CONFLICT,
            E::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let field = match &e {
            E::BadName => Some("site".to_owned()),
            E::BadManifest { source, .. } => Some(format!("manifest.{}", source.field)),
            E::MissingBlobs(_) | E::ManifestMissing(_) => Some("manifest".to_owned()),
            _ => None,
        };
        Self {
            status,
            message: e.to_string(),
            field,
            allow: None,
        }
    }
}

pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    let mut r = Response::new(Body::full(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Admin connections open at once, at most; more are closed as they come.
const MAX_CONNECTIONS: usize = 256;
/// From one client address.
const MAX_PER_ADDRESS: usize = 32;
/// TLS handshakes in progress at once, and from one address (each costs
/// the control thread a signature, and a silent one holds its place for the
/// handshake timeout): more connections are closed as they come.
const MAX_HANDSHAKES: usize = 64;
const MAX_HANDSHAKES_PER_ADDRESS: usize = 8;

/// What admin connections hold, so that a flood of them (or of handshakes)
/// cannot take the control thread, which also applies config, runs health
/// checks and replicates.
#[derive(Debug, Default)]
struct Gate {
    open: usize,
    handshakes: usize,
    /// Connections and handshakes open, by client address.
    by_address: std::collections::HashMap<std::net::IpAddr, (usize, usize)>,
}

/// An admitted connection's place; while `handshaking`, also a handshake's.
struct Admitted {
    gate: Rc<RefCell<Gate>>,
    ip: std::net::IpAddr,
    handshaking: bool,
}

impl Gate {
    fn admit(gate: &Rc<RefCell<Gate>>, ip: std::net::IpAddr) -> Option<Admitted> {
        let mut g = gate.borrow_mut();
        let (open, shaking) = g.by_address.get(&ip).copied().unwrap_or((0, 0));
        if g.open >= MAX_CONNECTIONS
            || open >= MAX_PER_ADDRESS
            || g.handshakes >= MAX_HANDSHAKES
            || shaking >= MAX_HANDSHAKES_PER_ADDRESS
        {
            return None;
        }
        g.open += 1;
        g.handshakes += 1;
        g.by_address.insert(ip, (open + 1, shaking + 1));
        Some(Admitted {
            gate: Rc::clone(gate),
            ip,
            handshaking: true,
        })
    }
}

impl Admitted {
    fn handshake_over(&mut self) {
        if std::mem::replace(&mut self.handshaking, false) {
            let mut g = self.gate.borrow_mut();
            g.handshakes -= 1;
            if let Some(e) = g.by_address.get_mut(&self.ip) {
                e.1 -= 1;
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.handshake_over();
        let mut g = self.gate.borrow_mut();
        g.open -= 1;
        if let Some(e) = g.by_address.get_mut(&self.ip) {
            e.0 -= 1;
            if e.0 == 0 {
                g.by_address.remove(&self.ip);
            }
        }
    }
}

/// Serves the admin API on `listener` (and on the listeners sent through
/// `rebind` when the admin address changes) until the process exits.
pub fn serve(
    control: Rc<RefCell<Control>>,
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut rebind: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpListener>,
) -> std::io::Result<impl Future<Output = ()>> {
    let mut listener = tokio::net::TcpListener::from_std(listener)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let gate = Rc::new(RefCell::new(Gate::default()));
    Ok(async move {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Some(admitted) = Gate::admit(&gate, peer.ip()) else {
                            tracing::debug!(%peer, "closing an admin connection: too many open ({MAX_CONNECTIONS}, {MAX_PER_ADDRESS} from one address) or in their TLS handshake ({MAX_HANDSHAKES}, {MAX_HANDSHAKES_PER_ADDRESS})");
                            continue;
                        };
                        let control = Rc::clone(&control);
                        let acceptor = acceptor.clone();
                        tokio::task::spawn_local(async move {
                            let mut admitted = admitted;
                            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                            let Ok(Ok(tls)) = handshake.await else {
                                tracing::debug!(%peer, "admin TLS handshake failed");
                                return;
                            };
                            admitted.handshake_over();
                            let svc = hyper::service::service_fn(move |req| {
                                let control = Rc::clone(&control);
                                async move { Ok::<_, std::convert::Infallible>(handle(control, req).await) }
                            });
                            let conn = hyper::server::conn::http1::Builder::new()
                                .timer(TokioTimer::new())
                                .header_read_timeout(Duration::from_secs(10))
                                .serve_connection(TokioIo::new(tls), svc);
                            if let Err(e) = conn.await {
                                tracing::debug!(%peer, "admin connection ended: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::error!("admin accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(new) = rebind.recv() => match tokio::net::TcpListener::from_std(new) {
                    Ok(new) => {
                        tracing::info!(address = ?new.local_addr().ok(), "admin API moved");
                        listener = new;
                    }
                    Err(e) => tracing::error!("cannot use the new admin listener: {e}"),
                },
            }
        }
    })
}

async fn handle(
    control: Rc<RefCell<Control>>,
    req: http::Request<hyper::body::Incoming>,
) -> Response<Body> {
    let authorized = {
        let c = control.borrow();
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| c.token.verify(t.trim()))
    };
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if method == http::Method::GET && path == "/status" {
        // The page holds no data; what it shows it fetches with the token.
        return status_page::response();
    }
    let result = if authorized {
        api::dispatch(&control, req).await
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ))
    };
    let response = result.unwrap_or_else(ApiError::into_response);
    tracing::debug!(%method, path, status = response.status().as_u16(), "admin request");
    response
}

/// For `fuzz/`: decodes `body` as the JSON body of one admin endpoint
/// (`kind` picks which) the way its handler does, and checks what the
/// handler checks without IO. A body is either taken or refused with 400 or
/// 422; this never panics.
pub fn fuzz_body(kind: u8, body: &[u8]) -> Result<(), ApiError> {
    use crate::config::{Backend, Config, Listener, Pool, Route};
    use std::path::Path;
    // The embedded default, with a pool for routes and backends to name.
    let mut config = crate::config::embedded_default(Path::new("c.pem"), Path::new("k.pem"));
    config.pools.push(
        serde_json::from_str(r#"{"name": "app", "backends": [{"address": "127.0.0.1:3000"}]}"#)
            .expect("a valid pool"),
    );
    let validate = |c: &Config| {
        c.validate()
            .map_err(|e| ApiError::invalid(e.path, e.reason))
    };
    let decoded = match kind % 10 {
        0 => validate(&api::decode_json::<Config>(body)?),
        1 => {
            config.listeners = api::decode_json::<Vec<Listener>>(body)?;
            validate(&config)
        }
        2 => {
            config.routes = api::decode_json::<Vec<Route>>(body)?;
            validate(&config)
        }
        3 => {
            config.pools.push(api::decode_json::<Pool>(body)?);
            validate(&config)
        }
        4 => {
            let backend = api::decode_json::<Backend>(body)?;
            if let Some(pool) = config.pools.first_mut() {
                pool.backends.push(backend);
            }
            validate(&config)
        }
        5 => api::decode_json::<api::CertUpload>(body).map(drop),
        6 => api::decode_json::<api::PoolRef>(body).map(drop),
        7 => api::decode_json::<content::Publish>(body).map(drop),
        8 => api::decode_json::<content::Rollback>(body).map(drop),
        _ => api::decode_json::<pools::BackendPatch>(body).map(drop),
    };
    if let Err(e) = &decoded {
        assert!(
            matches!(e.status.as_u16(), 400 | 422),
            "a bad body must be refused with 400 or 422, not {}",
            e.status
        );
    }
    decoded
}
