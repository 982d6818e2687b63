//! What happens to one request, as a fixed order of phases (drawn in
//! `docs/architecture.md`):
//!
//! 1. **identify**: the Host, normalised; a missing or malformed one is a 400.
//! 2. **listener policy**: a redirecting `http` listener answers 308 here.
//! 3. **route**: Host and path select a route; none is a 404.
//! 4. **act**: a fixed response, a redirect, the welcome page, or for a pool:
//!    *prepare* the backend request (headers, URI), *connect* (pick a backend,
//!    reuse a pooled connection or open one, trying the next backend when a
//!    connect fails), *forward* (send, wait for the response headers under the
//!    pool's timeout), *respond* (strip hop-by-hop headers, start a tunnel for
//!    an accepted upgrade).
//! 5. **log**: the access-log line, written when the response body is done.
//!
//! Failures carry who caused them ([`Blame`]) and map to 502, 503 or 504.

mod body;
pub mod headers;
pub mod pool;
pub mod tunnel;

pub use body::{AccessRecord, Logged, ResBody};

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::router::normalize_host;
use crate::server::core::{Core, CoreSnapshot};
use crate::snapshot::{self, RouteAction};

/// How a client connection reached us.
#[derive(Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    pub listener: Rc<str>,
    pub scheme: &'static str,
    pub redirect_to_https_port: Option<u16>,
    /// The backend side of an upgrade this connection's request was granted.
    pub tunnel: tunnel::TunnelSlot,
}

/// Who caused a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Client,
    Backend,
    Edgebox,
}

/// Why a proxied request got no response from a backend.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The pool has no usable backend.
    #[error(
        "pool {0} has no backend to send to (none configured, or all draining or of weight 0)"
    )]
    NoBackend(Arc<str>),
    /// No backend could be connected to (the last error is kept).
    #[error("backend {backend}: {source}")]
    Connect {
        backend: Arc<str>,
        source: pool::ConnectError,
    },
    /// The backend accepted the request but sent no response headers in time.
    #[error("backend {0}: no response headers within the timeout")]
    ResponseTimeout(Arc<str>),
    /// The backend broke the exchange (closed, sent garbage, reset).
    #[error("backend {backend}: {source}")]
    Backend {
        backend: Arc<str>,
        source: hyper::Error,
    },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoBackend(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Connect {
                source: pool::ConnectError::Timeout,
                ..
            }
            | Self::ResponseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Connect { .. } | Self::Backend { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn blame(&self) -> Blame {
        match self {
            Self::NoBackend(_) => Blame::Edgebox,
            _ => Blame::Backend,
        }
    }
}

const WELCOME: &str = include_str!("welcome.html");

/// Serves one request through all phases.
pub async fn handle(
    core: Rc<Core>,
    conn: Rc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<Logged<ResBody>> {
    let start = Instant::now();
    let snap = core.current();
    let mut record = AccessRecord {
        start,
        core: Rc::clone(&core),
        snap: Rc::clone(&snap),
        conn: Rc::clone(&conn),
        version: req.version(),
        method: req.method().clone(),
        host: String::new(),
        uri: req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().to_string(), |p| p.as_str().to_owned()),
        status: 0,
        target: None,
        bytes: 0,
    };
    let response = respond(&core, &snap, &conn, req, &mut record).await;
    record.status = response.status().as_u16();
    response.map(|body| Logged::new(body, record))
}

/// What routing chose: a route's action, or a pool from the host map.
enum Chosen<'a> {
    Action(&'a RouteAction),
    HostMap(usize),
}

async fn respond(
    core: &Rc<Core>,
    snap: &CoreSnapshot,
    conn: &ConnInfo,
    req: Request<Incoming>,
    record: &mut AccessRecord,
) -> Response<ResBody> {
    // 0. framing: a transfer coding we would not decode is refused.
    if let Some(refusal) = unsupported_transfer_coding(req.headers()) {
        return refusal;
    }

    // 1. identify
    let Some(authority) = authority(&req) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: missing or invalid Host\n",
        );
    };
    let Some(host) = normalize_host(&authority) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: missing or invalid Host\n",
        );
    };
    record.host = host.clone().into_owned();

    // 2. listener policy
    if let Some(port) = conn.redirect_to_https_port {
        return redirect_to_https(&host, port, req.uri());
    }

    // 3. route: exact-host routes, then the host map, then wildcard and
    // catch-all routes.
    let router = &snap.snap.router;
    let path = req.uri().path();
    let chosen = match router.route_exact(&host, path) {
        Some(found) => found.map(Chosen::Action),
        None => match snap.snap.hostmap.get(&*host) {
            Some(&pool) => Some(Chosen::HostMap(pool as usize)),
            None => router.route_inexact(&host, path).map(Chosen::Action),
        },
    };
    let action = match chosen {
        None => {
            return plain(
                StatusCode::NOT_FOUND,
                "404 Not Found: no route for this host and path\n",
            )
        }
        // Boxed: a proxied request's state is large, and would otherwise
        // make every request's future (which hyper keeps allocated for each
        // open connection) as large.
        Some(Chosen::HostMap(pool)) => {
            return Box::pin(proxy_to(core, snap, pool, conn, &authority, req, record)).await
        }
        Some(Chosen::Action(action)) => action,
    };

    // 4. act
    match action {
        RouteAction::Proxy(index) => {
            Box::pin(proxy_to(core, snap, *index, conn, &authority, req, record)).await
        }
        RouteAction::Redirect { to, status } => {
            let mut r = Response::new(ResBody::empty());
            *r.status_mut() = *status;
            r.headers_mut().insert(header::LOCATION, to.clone());
            r
        }
        RouteAction::Respond {
            status,
            body,
            content_type,
        } => {
            let mut r = Response::new(ResBody::from(body.clone()));
            *r.status_mut() = *status;
            r.headers_mut()
                .insert(header::CONTENT_TYPE, content_type.clone());
            r
        }
        RouteAction::Static { served, .. } => crate::static_files::respond(
            &core.cache,
            served.as_deref(),
            req.method(),
            req.uri().path(),
            req.headers(),
        ),
        RouteAction::Welcome => {
            let mut r = Response::new(ResBody::from(WELCOME));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
    }
}

/// Proxies to pool `index`, turning a failure into its error response.
async fn proxy_to(
    core: &Rc<Core>,
    snap: &CoreSnapshot,
    index: usize,
    conn: &ConnInfo,
    authority: &str,
    req: Request<Incoming>,
    record: &mut AccessRecord,
) -> Response<ResBody> {
    record.target = Some((index, None));
    let pool = &snap.snap.pools[index];
    match proxy(core, snap, index, pool, conn, authority, req, record).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(pool = &*pool.name, blame = ?e.blame(), "{e}");
            let body = match e.status() {
                StatusCode::GATEWAY_TIMEOUT => "504 Gateway Timeout\n",
                StatusCode::SERVICE_UNAVAILABLE => "503 Service Unavailable\n",
                _ => "502 Bad Gateway\n",
            };
            plain(e.status(), body)
        }
    }
}

/// A transfer coding other than `chunked` (which hyper would pass through
/// undecoded) is a 501, and the connection is closed. A request with both
/// `Content-Length` and `Transfer-Encoding` never gets here as such: hyper
/// drops the length, reads the body as chunked and closes the connection
/// after the response (RFC 9112, 6.3), so a stale length is never forwarded.
fn unsupported_transfer_coding(headers: &http::HeaderMap) -> Option<Response<ResBody>> {
    let only_chunked = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .all(|c| c.trim().eq_ignore_ascii_case("chunked"));
    if only_chunked {
        return None;
    }
    let mut r = plain(
        StatusCode::NOT_IMPLEMENTED,
        "501 Not Implemented: transfer codings other than chunked\n",
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(r)
}

/// The authority the client asked for: the URI's (HTTP/2, absolute-form) or
/// the Host header.
fn authority(req: &Request<Incoming>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_owned());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next()?;
    if hosts.next().is_some() {
        return None;
    }
    host.to_str().ok().map(str::to_owned)
}

fn plain(status: StatusCode, body: &'static str) -> Response<ResBody> {
    let mut r = Response::new(ResBody::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn redirect_to_https(host: &str, port: u16, uri: &Uri) -> Response<ResBody> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            let mut r = Response::new(ResBody::empty());
            *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        Err(_) => plain(StatusCode::BAD_REQUEST, "400 Bad Request\n"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn proxy(
    core: &Rc<Core>,
    snap: &CoreSnapshot,
    pool_index: usize,
    pool: &snapshot::Pool,
    conn: &ConnInfo,
    authority: &str,
    req: Request<Incoming>,
    record: &mut AccessRecord,
) -> Result<Response<ResBody>, ProxyError> {
    if pool.backends.is_empty() {
        return Err(ProxyError::NoBackend(Arc::clone(&pool.name)));
    }

    // prepare
    let (mut parts, body) = req.into_parts();
    let upgrade = match parts.version {
        Version::HTTP_11 => headers::requested_upgrade(&parts.headers),
        _ => None,
    };
    headers::strip_hop_by_hop(&mut parts.headers, upgrade.clone());
    headers::add_forwarded(
        &mut parts.headers,
        headers::Origin {
            client: conn.client.ip(),
            scheme: conn.scheme,
            host: authority,
        },
    );
    if !parts.headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(authority) {
            parts.headers.insert(header::HOST, v);
        }
    }
    parts.uri = match parts.uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    };
    parts.version = Version::HTTP_11;
    let req = Request::from_parts(parts, body);
    if upgrade.is_some() {
        return forward_upgrade(snap, pool_index, pool, conn, req, record).await;
    }
    forward(core, snap, pool_index, pool, req, record).await
}

/// Sends `req` on a pooled or new connection and returns the backend's
/// response, retrying once on a fresh connection when a pooled one turned out
/// to be closed before the request was written.
async fn forward(
    core: &Rc<Core>,
    snap: &CoreSnapshot,
    pool_index: usize,
    pool: &snapshot::Pool,
    mut req: Request<Incoming>,
    record: &mut AccessRecord,
) -> Result<Response<ResBody>, ProxyError> {
    let mut fresh_only = false;
    loop {
        let (index, mut sender, reused) =
            connect(core, snap, pool_index, pool, fresh_only, record).await?;
        let backend = &pool.backends[index];
        let sent =
            crate::rt::timeout(pool.response_header_timeout, sender.try_send_request(req)).await;
        let response = match sent {
            None => return Err(ProxyError::ResponseTimeout(Arc::clone(&backend.name))),
            Some(Ok(response)) => response,
            Some(Err(mut e)) => match e.take_message() {
                Some(unsent) if reused => {
                    req = unsent;
                    fresh_only = true;
                    continue;
                }
                _ => {
                    return Err(ProxyError::Backend {
                        backend: Arc::clone(&backend.name),
                        source: e.into_error(),
                    })
                }
            },
        };
        core.pool
            .checkin_when_ready(backend.addr, sender, pool.max_idle_per_backend);
        return Ok(backend_response(response, None));
    }
}

/// The response as the client gets it: hop-by-hop headers removed, except the
/// upgrade pair of a granted upgrade.
fn backend_response(
    response: Response<Incoming>,
    upgrade: Option<HeaderValue>,
) -> Response<ResBody> {
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    // The response on the client's connection is edgebox's, in edgebox's
    // version: an HTTP/1.0 backend must not make it answer in HTTP/1.0.
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, ResBody::Backend(body))
}

/// An upgrade request (WebSocket) goes on a connection of its own, driven here
/// until the response; a 101 parks the backend side in the client connection's
/// tunnel slot, anything else is an ordinary response.
async fn forward_upgrade(
    snap: &CoreSnapshot,
    pool_index: usize,
    pool: &snapshot::Pool,
    conn: &ConnInfo,
    req: Request<Incoming>,
    record: &mut AccessRecord,
) -> Result<Response<ResBody>, ProxyError> {
    let mut last_error = None;
    let mut tried = Tried::default();
    while let Some(i) = snap.pick(pool_index, &tried) {
        tried.add(i);
        let backend = &pool.backends[i];
        record.target = Some((pool_index, Some(i)));
        let ((mut sender, mut backend_conn), activity) =
            match pool::open(backend.addr, pool.connect_timeout).await {
                Ok(opened) => opened,
                Err(source) => {
                    last_error = Some(ProxyError::Connect {
                        backend: Arc::clone(&backend.name),
                        source,
                    });
                    continue;
                }
            };
        let exchange = async {
            let mut send = std::pin::pin!(sender.send_request(req));
            // Drive the connection while waiting for the response; if it ends
            // first, the response future reports why.
            let mut conn_done = false;
            let response = std::future::poll_fn(|cx| {
                if let std::task::Poll::Ready(r) = send.as_mut().poll(cx) {
                    return std::task::Poll::Ready(r);
                }
                if !conn_done {
                    conn_done = backend_conn.poll_without_shutdown(cx).is_ready();
                }
                std::task::Poll::Pending
            })
            .await?;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                std::future::poll_fn(|cx| backend_conn.poll_without_shutdown(cx)).await?;
                let parts = backend_conn.into_parts();
                *conn.tunnel.borrow_mut() = Some(tunnel::Prefixed::new(parts.read_buf, parts.io));
                let upgrade = response.headers().get(header::UPGRADE).cloned();
                Ok(backend_response(response, upgrade))
            } else {
                let idle = pool.idle_timeout;
                crate::rt::spawn(async move {
                    crate::rt::race(backend_conn, activity.idle_for(idle)).await;
                });
                Ok(backend_response(response, None))
            }
        };
        return match crate::rt::timeout(pool.response_header_timeout, exchange).await {
            None => Err(ProxyError::ResponseTimeout(Arc::clone(&backend.name))),
            Some(Ok(response)) => Ok(response),
            Some(Err(source)) => Err(ProxyError::Backend {
                backend: Arc::clone(&backend.name),
                source,
            }),
        };
    }
    Err(last_error.unwrap_or_else(|| ProxyError::NoBackend(Arc::clone(&pool.name))))
}

/// Backends already tried for one request; at most [`MAX_ATTEMPTS`].
#[derive(Debug, Default)]
pub struct Tried {
    list: [usize; MAX_ATTEMPTS],
    len: usize,
}

/// The most backends one request tries to connect to.
pub const MAX_ATTEMPTS: usize = 8;

impl Tried {
    fn add(&mut self, i: usize) {
        if self.len < MAX_ATTEMPTS {
            self.list[self.len] = i;
            self.len += 1;
        }
    }

    pub fn contains(&self, i: usize) -> bool {
        self.list[..self.len].contains(&i)
    }

    /// No more attempts allowed.
    pub fn exhausted(&self) -> bool {
        self.len == MAX_ATTEMPTS
    }
}

/// Picks a backend and a connection to it: a pooled one unless `fresh_only`,
/// otherwise a new one. A failed connect moves on to another backend, each
/// backend at most once, [`MAX_ATTEMPTS`] in all.
async fn connect(
    core: &Rc<Core>,
    snap: &CoreSnapshot,
    pool_index: usize,
    pool: &snapshot::Pool,
    fresh_only: bool,
    record: &mut AccessRecord,
) -> Result<(usize, pool::Sender, bool), ProxyError> {
    let mut last_error = None;
    let mut tried = Tried::default();
    while let Some(i) = snap.pick(pool_index, &tried) {
        tried.add(i);
        record.target = Some((pool_index, Some(i)));
        let backend = &pool.backends[i];
        if !fresh_only {
            if let Some(sender) = core.pool.checkout(backend.addr, pool.idle_timeout) {
                return Ok((i, sender, true));
            }
        }
        match pool::connect(backend.addr, pool.connect_timeout, pool.idle_timeout).await {
            Ok(sender) => return Ok((i, sender, false)),
            Err(source) => {
                tracing::warn!(
                    pool = &*pool.name,
                    backend = &*backend.name,
                    "{source}; trying the next backend"
                );
                last_error = Some(ProxyError::Connect {
                    backend: Arc::clone(&backend.name),
                    source,
                });
            }
        }
    }
    Err(last_error.unwrap_or_else(|| ProxyError::NoBackend(Arc::clone(&pool.name))))
}
