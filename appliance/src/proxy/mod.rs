//! What happens to one request, as a fixed order of phases (drawn in
//! `docs/architecture.md`):
//!
//! 1. **identify**: the Host, normalised; a missing or malformed one is a 400.
//! 2. **listener policy**: a redirecting `http` listener answers 308 here.
//! 3. **route**: Host and path select a route; none is a 404.
//! 4. **act**: a fixed response, a redirect, the welcome page, static files,
//!    or for a pool: *admit* (the pool's concurrency limit), *prepare* the
//!    backend request (headers, URI), *forward* ([`forward`]: pick a
//!    backend, take a slot under its limit, send, retry elsewhere where that
//!    is safe), *respond* (strip hop-by-hop headers, start a tunnel for an
//!    accepted upgrade).
//! 5. **log**: the access-log line, written when the response body is done.
//!
//! Everything a request needs from its core comes in as [`Services`] and the
//! core's current [`CoreView`]; this module never reaches back into the
//! server that calls it. Failures carry who caused them ([`Blame`]) and map
//! to 502, 503 or 504.

mod body;
pub mod forward;
pub mod headers;
pub mod pool;
pub mod reqbody;
pub mod tunnel;
mod upgrade;

pub use body::{AccessRecord, Logged, ResBody};

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::balance::Rng;
use crate::metrics::CoreStats;
use crate::router::normalize_host;
use crate::snapshot::{self, RouteAction};
use crate::static_files::cache::BlobCache;
use crate::upstream::CoreView;

/// What a request needs from the core serving it; the server makes one per
/// core and hands it to every request.
#[derive(Debug)]
pub struct Services {
    pub core: usize,
    pub stats: Arc<CoreStats>,
    /// This core's keep-alive connections to backends.
    pub conns: Rc<pool::ConnPool>,
    /// This core's mapped, verified blobs.
    pub cache: BlobCache,
    /// This core's random numbers (balancing).
    pub rng: RefCell<Rng>,
    /// Emptied request-head copies, for reuse (see [`Head`]).
    pub spare_heads: RefCell<Vec<HeadCopy>>,
    /// This core's counters of each listener and site, kept here so that
    /// a request finds them without the registry's lock.
    pub listeners: RefCell<NamedStats>,
    pub sites: RefCell<NamedStats>,
}

impl Services {
    /// Listener `name`'s counters on this core.
    pub fn listener_stats(&self, name: &str) -> Arc<crate::metrics::NamedCounters> {
        self.named_stats(false, name)
    }

    /// Site `name`'s counters on this core.
    pub fn site_stats(&self, name: &str) -> Arc<crate::metrics::NamedCounters> {
        self.named_stats(true, name)
    }

    fn named_stats(&self, site: bool, name: &str) -> Arc<crate::metrics::NamedCounters> {
        let map = if site { &self.sites } else { &self.listeners };
        if let Some(c) = map.borrow().get(name) {
            return Arc::clone(c);
        }
        // First use on this core: registered once, then found without the
        // registry's lock or an allocation.
        let c = if site {
            self.stats.register_site(name)
        } else {
            self.stats.register_listener(name)
        };
        map.borrow_mut().insert(Arc::from(name), Arc::clone(&c));
        c
    }
}

/// A core's counters by listener or site name (looked up by `&str`).
pub type NamedStats = std::collections::HashMap<Arc<str>, Arc<crate::metrics::NamedCounters>>;

/// A copy of a request head's headers.
pub type HeadCopy = Vec<(http::HeaderName, HeaderValue)>;

/// A request's copied head, kept for sending it again; its vector goes back
/// to the core's spares when done, so that copying allocates nothing in the
/// steady state (the values are shared with the request, a reference count
/// each).
struct Head<'a> {
    headers: HeadCopy,
    spares: &'a RefCell<Vec<HeadCopy>>,
}

impl<'a> Head<'a> {
    fn of(headers: &http::HeaderMap, spares: &'a RefCell<Vec<HeadCopy>>) -> Self {
        let mut copy = spares.borrow_mut().pop().unwrap_or_default();
        copy.extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        Self {
            headers: copy,
            spares,
        }
    }
}

impl Drop for Head<'_> {
    fn drop(&mut self) {
        let mut copy = std::mem::take(&mut self.headers);
        copy.clear();
        let mut spares = self.spares.borrow_mut();
        if spares.len() < 256 {
            spares.push(copy);
        }
    }
}

/// How a client connection reached us.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client: the connection's peer, or whom a PROXY header named.
    pub client: SocketAddr,
    /// The address it connected to (likewise).
    pub local: SocketAddr,
    /// The client is a trusted proxy: its forwarding headers are kept.
    pub trusted: bool,
    pub listener: Rc<str>,
    /// The listener's counters on this core.
    pub listener_stats: Arc<crate::metrics::NamedCounters>,
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
    /// The pool has no backend in rotation.
    #[error(
        "pool {0} has no backend to send to (none configured, or all draining or of weight 0)"
    )]
    NoBackend(Arc<str>),
    /// Every backend in rotation is taken out by its health check or by
    /// ejection.
    #[error("pool {0}: every backend is down")]
    AllDown(Arc<str>),
    /// A concurrency limit is reached.
    #[error("pool {pool} is overloaded: {why}")]
    Overloaded { pool: Arc<str>, why: &'static str },
    /// No backend could be connected to (the last error is kept).
    #[error("backend {backend}: {source}")]
    Connect {
        backend: Arc<str>,
        source: pool::ConnectError,
    },
    /// The backend accepted the request but sent no response headers in time.
    #[error("backend {0}: no response headers within the timeout")]
    ResponseTimeout(Arc<str>),
    /// The client's request body could not be read (malformed chunked
    /// framing, a body shorter than its length, a reset).
    #[error("the client's request body is malformed or was cut off")]
    ClientBody,
    /// The backend broke the exchange (closed, sent garbage, reset).
    #[error("backend {backend}: {source}")]
    Backend {
        backend: Arc<str>,
        source: forward::BoxError,
    },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoBackend(_) | Self::AllDown(_) | Self::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Connect {
                source: pool::ConnectError::Timeout,
                ..
            }
            | Self::ResponseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Connect { .. } | Self::Backend { .. } => StatusCode::BAD_GATEWAY,
            Self::ClientBody => StatusCode::BAD_REQUEST,
        }
    }

    pub fn blame(&self) -> Blame {
        match self {
            Self::NoBackend(_) | Self::Overloaded { .. } => Blame::Edgebox,
            Self::ClientBody => Blame::Client,
            _ => Blame::Backend,
        }
    }
}

const WELCOME: &str = include_str!("welcome.html");

/// Serves one request through all phases.
pub async fn handle(
    svc: Rc<Services>,
    view: Rc<CoreView>,
    conn: Rc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<Logged<ResBody>> {
    let start = Instant::now();
    let mut record = AccessRecord {
        start,
        svc: Rc::clone(&svc),
        view: Rc::clone(&view),
        conn: Rc::clone(&conn),
        version: req.version(),
        method: req.method().clone(),
        host: String::new(),
        uri: req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().to_string(), |p| p.as_str().to_owned()),
        status: 0,
        pool: None,
        backend: None,
        bytes: 0,
        slot: None,
        pool_slot: None,
        site: None,
    };
    let response = respond(&svc, &view, &conn, req, &mut record).await;
    record.status = response.status().as_u16();
    response.map(|body| Logged::new(body, record))
}

/// A 400 after which nothing more is read from the connection.
fn refused_and_closed(message: &'static str) -> Response<ResBody> {
    let mut r = plain(StatusCode::BAD_REQUEST, message);
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// What routing chose: a route's action, or a pool from the host map.
enum Chosen<'a> {
    Action(&'a snapshot::CompiledRoute),
    HostMap(usize),
}

async fn respond(
    svc: &Services,
    view: &CoreView,
    conn: &ConnInfo,
    req: Request<Incoming>,
    record: &mut AccessRecord,
) -> Response<ResBody> {
    // 0. framing: a transfer coding we would not decode is refused.
    if let Some(refusal) = unsupported_transfer_coding(req.headers()) {
        return refusal;
    }

    // 1. identify
    let authority = authority(&req);
    let Some(host) = authority.as_deref().and_then(normalize_host) else {
        // A request with no clear target: nothing more is read from this
        // connection.
        return refused_and_closed("400 Bad Request: missing or invalid Host\n");
    };
    let authority = authority.as_deref().unwrap_or_default();
    record.host = host.clone().into_owned();

    // 2. listener policy: an ACME HTTP-01 challenge this appliance is
    // answering comes before the redirect (the CA asks over plain HTTP).
    if conn.scheme == "http" {
        if let Some(answer) = view.snap.managed.http_challenge(req.uri().path()) {
            return plain(StatusCode::OK, bytes::Bytes::from(answer));
        }
    }
    if let Some(port) = conn.redirect_to_https_port {
        return redirect_to_https(&host, port, req.uri());
    }

    // 3. route: exact-host routes, then the host map, then wildcard and
    // catch-all routes.
    let router = &view.snap.router;
    let path = req.uri().path();
    if !crate::router::valid_escapes(path) {
        // Routing and the backend could read such a path differently.
        return refused_and_closed(
            "400 Bad Request: a % in the path not followed by two hex digits\n",
        );
    }
    let chosen = match router.route_exact(&host, path) {
        Some(found) => found.map(Chosen::Action),
        None => match view.snap.hostmap.get(&host) {
            Some(pool) => Some(Chosen::HostMap(pool)),
            None => router.route_inexact(&host, path).map(Chosen::Action),
        },
    };
    let hsts = match chosen {
        Some(Chosen::Action(route)) => route.hsts.as_ref(),
        _ => None,
    }
    .or(view.snap.hsts.as_ref())
    .filter(|_| conn.scheme == "https")
    .cloned();
    let mut response = match chosen {
        None => plain(
            StatusCode::NOT_FOUND,
            "404 Not Found: no route for this host and path\n",
        ),
        // Boxed: a proxied request's state is large, and would otherwise
        // make every request's future (which hyper keeps allocated for each
        // open connection) as large.
        Some(Chosen::HostMap(pool)) => {
            Box::pin(proxy_to(
                svc, view, pool, conn, authority, &host, req, record,
            ))
            .await
        }
        Some(Chosen::Action(route)) => {
            act(
                svc,
                view,
                conn,
                authority,
                &host,
                &route.action,
                req,
                record,
            )
            .await
        }
    };
    if let Some(v) = hsts {
        response
            .headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, v);
    }
    response
}

/// 4. act: what the route's action makes of the request.
#[allow(clippy::too_many_arguments)]
async fn act(
    svc: &Services,
    view: &CoreView,
    conn: &ConnInfo,
    authority: &str,
    host: &str,
    action: &RouteAction,
    req: Request<Incoming>,
    record: &mut AccessRecord,
) -> Response<ResBody> {
    match action {
        RouteAction::Proxy(index) => {
            Box::pin(proxy_to(
                svc, view, *index, conn, authority, host, req, record,
            ))
            .await
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
        RouteAction::Static { served, site } => {
            record.site = Some(svc.site_stats(site));
            crate::static_files::respond(
                &svc.cache,
                served.as_deref(),
                req.method(),
                req.uri().path(),
                req.headers(),
            )
        }
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
#[allow(clippy::too_many_arguments)]
async fn proxy_to(
    svc: &Services,
    view: &CoreView,
    index: usize,
    conn: &ConnInfo,
    authority: &str,
    host: &str,
    req: Request<Incoming>,
    record: &mut AccessRecord,
) -> Response<ResBody> {
    record.pool = Some(index);
    let pool = &view.snap.pools[index];
    match proxy(svc, view, index, conn, authority, host, req, record).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(pool = &*pool.name, blame = ?e.blame(), "{e}");
            let body = match e.status() {
                StatusCode::GATEWAY_TIMEOUT => "504 Gateway Timeout\n",
                StatusCode::SERVICE_UNAVAILABLE => "503 Service Unavailable\n",
                StatusCode::BAD_REQUEST => "400 Bad Request: malformed request body\n",
                _ => "502 Bad Gateway\n",
            };
            let mut r = plain(e.status(), body);
            if let ProxyError::ClientBody = e {
                // Not the backend's response: counted under no backend.
                record.backend = None;
                // Where the body ended is not known: nothing more is read
                // from this connection.
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            if let ProxyError::Overloaded { .. } = e {
                // As HAProxy and Envoy: come back in a moment.
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            r
        }
    }
}

/// A transfer coding other than `chunked` (which hyper would pass through
/// undecoded) is a 501, and the connection is closed. A request with both
/// `Content-Length` and `Transfer-Encoding` never gets here as such: hyper
/// drops the length, reads the body as chunked and closes the connection
/// after the response (RFC 9112, 6.3), so a stale length is never forwarded.
fn unsupported_transfer_coding(headers: &http::HeaderMap) -> Option<Response<ResBody>> {
    let (mut chunked, mut other) = (0, false);
    for coding in headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
    {
        if coding.trim().eq_ignore_ascii_case("chunked") {
            chunked += 1;
        } else {
            other = true;
        }
    }
    let mut r = if other {
        plain(
            StatusCode::NOT_IMPLEMENTED,
            "501 Not Implemented: transfer codings other than chunked\n",
        )
    } else if chunked > 1 {
        // RFC 9112, 6.1: chunked is applied once; twice is a framing a
        // server behind could read another way.
        plain(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: chunked more than once\n",
        )
    } else {
        return None;
    };
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

fn plain(status: StatusCode, body: impl Into<ResBody>) -> Response<ResBody> {
    let mut r = Response::new(body.into());
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
    svc: &Services,
    view: &CoreView,
    pool_index: usize,
    conn: &ConnInfo,
    authority: &str,
    host: &str,
    req: Request<Incoming>,
    record: &mut AccessRecord,
) -> Result<Response<ResBody>, ProxyError> {
    let pool = &view.snap.pools[pool_index];
    let core_pool = &view.pools[pool_index];
    if pool.backends.is_empty() {
        return Err(ProxyError::NoBackend(Arc::clone(&pool.name)));
    }
    // admit
    let Some(pool_slot) = core_pool.state.enter() else {
        core_pool.state.stats.rejected();
        return Err(ProxyError::Overloaded {
            pool: Arc::clone(&pool.name),
            why: "limits.pool_max_requests reached",
        });
    };
    record.pool_slot = Some(pool_slot);

    // prepare
    let (mut parts, body) = req.into_parts();
    let key = match &pool.balance {
        snapshot::Balance::Hash { key, .. } => headers::hash_key(key, host, &parts.headers),
        _ => None,
    };
    let upgrade = match parts.version {
        Version::HTTP_11 => headers::requested_upgrade(&parts.headers),
        _ => None,
    };
    let origin = headers::Origin {
        client: conn.client.ip(),
        scheme: conn.scheme,
        host: authority,
        trusted: conn.trusted,
    };
    // A bodiless idempotent request may be sent again after being written
    // (a reset before the response): keep the client's head for that. Its
    // values are shared with the request's (a reference count each); the
    // backend's head is made again from it only if a retry happens.
    // (A pool of one backend has nowhere else to send it.)
    let again = (upgrade.is_none()
        && pool.retries.max > 0
        && pool.backends.len() > 1
        && http_body::Body::is_end_stream(&body)
        && crate::balance::retry::idempotent(&parts.method))
    .then(|| Head::of(&parts.headers, &svc.spare_heads));
    backend_head(&mut parts, upgrade.clone(), origin);
    let req = Request::from_parts(parts, reqbody::ReqBody::new(body));
    let target = forward::Target {
        pool,
        core: core_pool,
        key,
        rng: &svc.rng,
    };
    if upgrade.is_some() {
        return upgrade::forward(&target, conn, req, record).await;
    }

    // forward
    let transport = forward::Http {
        conns: &svc.conns,
        proxy_header: pool.proxy_protocol.then_some((conn.client, conn.local)),
    };
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let mut again = again.map(|head| {
        move || {
            let mut parts = Request::new(()).into_parts().0;
            parts.method = method.clone();
            parts.uri = uri.clone();
            parts.headers = head.headers.iter().cloned().collect();
            backend_head(&mut parts, None, origin);
            Request::from_parts(parts, <reqbody::ReqBody as reqbody::RequestBody>::empty())
        }
    });
    let again = again
        .as_mut()
        .map(|f| f as &mut dyn FnMut() -> Request<reqbody::ReqBody>);
    let forwarded = forward::forward(&transport, &target, req, again, &mut record.backend).await?;
    record.slot = Some(forwarded.slot);
    Ok(backend_response(forwarded.response, None))
}

/// The request head as a backend gets it: hop-by-hop headers removed (but
/// the upgrade pair of an upgrade), forwarding headers set, a Host, the
/// origin-form URI, HTTP/1.1.
fn backend_head(
    parts: &mut http::request::Parts,
    upgrade: Option<HeaderValue>,
    origin: headers::Origin<'_>,
) {
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    headers::merge_cookies(&mut parts.headers);
    headers::add_forwarded(&mut parts.headers, origin);
    // The authority the request was routed by, whatever Host said: an
    // absolute-form URI's authority replaces Host (RFC 9112, 3.2.2), and a
    // backend doing its own virtual hosting must see the host edgebox
    // routed, not another.
    // (The usual request's Host is that authority already, and is kept.)
    let same = parts
        .headers
        .get(header::HOST)
        .is_some_and(|h| h.as_bytes() == origin.host.as_bytes());
    if !same {
        if let Ok(v) = HeaderValue::from_str(origin.host) {
            parts.headers.insert(header::HOST, v);
        }
    }
    parts.uri = match parts.uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    };
    parts.version = Version::HTTP_11;
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
