//! The backend side of a proxied request: pick a backend, take a slot under
//! its limit (waiting in its queue if it is full), send, and on a failure
//! decide whether to try again elsewhere. Every try's outcome feeds the
//! backend's passive health (ejection) and latency estimate.
//!
//! The sending itself is a [`Transport`], so that this loop is tested
//! without sockets against a scripted one (`forward_tests.rs`); [`Http`] is
//! the real one.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};

use super::pool::{self, ConnPool, ConnectError};
use super::reqbody::{ReqBody, RequestBody};
use super::ProxyError;
use crate::balance::retry::{self, Failure};
use crate::balance::Rng;
use crate::snapshot;
use crate::upstream::{CoreBackend, CorePool, NoSlot, Pick, Slot, Tried};

/// A boxed error from a backend exchange.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How one try failed.
#[derive(Debug)]
pub enum TryError<B> {
    /// No connection could be made; the request is handed back untouched.
    Connect(ConnectError, Request<B>),
    /// A pooled connection was found closed before the request was written;
    /// the request is handed back untouched.
    Stale(Request<B>),
    /// The request was written (perhaps partly), then the exchange broke
    /// before response headers came.
    Broken(BoxError),
    /// No response headers within the try's timeout (counted from the end
    /// of the request body).
    Timeout,
}

/// Sends one try of a request to one backend.
pub trait Transport {
    type Body: RequestBody;
    type Resp;

    /// Sends `req` to `backend` on a pooled connection (unless
    /// `fresh_only`) or a new one, and waits for the response headers for
    /// at most `header_timeout` after the body has been sent.
    fn send(
        &self,
        backend: &snapshot::Backend,
        pool: &snapshot::Pool,
        req: Request<Self::Body>,
        fresh_only: bool,
        header_timeout: Duration,
    ) -> impl Future<Output = Result<Response<Self::Resp>, TryError<Self::Body>>>;
}

/// What the loop works with: the pool (config side and this core's side),
/// the request's hash key, this core's random numbers.
#[derive(Debug)]
pub struct Target<'a> {
    pub pool: &'a snapshot::Pool,
    pub core: &'a CorePool,
    pub key: Option<u64>,
    pub rng: &'a RefCell<Rng>,
}

/// A backend's response, with the slot the request holds until it ends.
#[derive(Debug)]
pub struct Forwarded<R> {
    pub response: Response<R>,
    pub slot: Slot,
}

/// Sends `req` to the pool, trying again on another backend where that is
/// safe and the retry budget allows. `again` makes the request anew, for
/// sending once more after it was written (given only for bodiless
/// idempotent requests). `reached` is set to each backend tried (the last
/// one stays, for the access log).
pub async fn forward<T: Transport>(
    transport: &T,
    target: &Target<'_>,
    req: Request<T::Body>,
    mut again: Option<&mut dyn FnMut() -> Request<T::Body>>,
    reached: &mut Option<Rc<CoreBackend>>,
) -> Result<Forwarded<T::Resp>, ProxyError> {
    let pool = target.pool;
    let progress = req.body().progress();
    let method = req.method().clone();
    let (header_timeout, per_try) = match pool.retries.per_try_timeout_ms {
        0 => (pool.response_header_timeout, false),
        ms => {
            let t = Duration::from_millis(ms);
            (
                t.min(pool.response_header_timeout),
                t < pool.response_header_timeout,
            )
        }
    };
    let mut now = crate::clock::now_ms();
    target.core.state.record_request(now);
    // Only peak-EWMA uses the latency estimate; the others skip the clock.
    let timed = matches!(pool.balance, snapshot::Balance::PeakEwma);
    let mut req = Some(req);
    let mut tried = Tried::default();
    let mut tries = 0u32;
    let mut fresh_only = false;
    let mut last_error: Option<ProxyError> = None;
    loop {
        let (i, slot) = match enter(target, &tried, reached, now).await {
            Ok(entered) => entered,
            Err(None) => return Err(last_error.unwrap_or_else(|| no_backend(pool, now))),
            Err(Some(overloaded)) => return Err(overloaded),
        };
        let cb = &target.core.backends[i];
        let backend = &pool.backends[i];
        tried.add(i);
        if tries > 0 && !fresh_only {
            cb.stats.retried();
        }
        tries += 1;
        let Some(this_try) = req.take() else {
            return Err(last_error.unwrap_or_else(|| no_backend(pool, now)));
        };
        let started = timed.then(Instant::now);
        let sent = transport
            .send(backend, pool, this_try, fresh_only, header_timeout)
            .await;
        if sent.is_err() && progress.client_failed() {
            // The client's body broke the exchange: its fault, not the
            // backend's; nothing is counted against it and nothing retried.
            return Err(ProxyError::ClientBody);
        }
        let failure = match sent {
            Ok(response) => {
                if let Some(started) = started {
                    cb.observe_latency(started.elapsed(), crate::clock::now_us());
                }
                if pool.count_5xx && response.status().is_server_error() {
                    failed(pool, cb, now);
                } else {
                    cb.shared.ejection.on_success(now, &pool.outlier);
                }
                return Ok(Forwarded { response, slot });
            }
            Err(TryError::Stale(back)) => {
                // Says nothing of the backend: the same try again, on a new
                // connection, not counted.
                req = Some(back);
                tried.remove(i);
                tries -= 1;
                fresh_only = true;
                continue;
            }
            Err(TryError::Connect(source, back)) => {
                tracing::warn!(pool = &*pool.name, backend = &*backend.name, "{source}");
                req = Some(back);
                last_error = Some(ProxyError::Connect {
                    backend: Arc::clone(&backend.name),
                    source,
                });
                Failure::Connect
            }
            Err(TryError::Broken(source)) => {
                last_error = Some(ProxyError::Backend {
                    backend: Arc::clone(&backend.name),
                    source,
                });
                Failure::AfterWrite
            }
            Err(TryError::Timeout) => {
                last_error = Some(ProxyError::ResponseTimeout(Arc::clone(&backend.name)));
                if !per_try {
                    // The request's own timeout: no more tries.
                    failed(pool, cb, crate::clock::now_ms());
                    return Err(last_error.unwrap_or_else(|| no_backend(pool, now)));
                }
                Failure::AfterWrite
            }
        };
        fresh_only = false;
        now = crate::clock::now_ms();
        failed(pool, cb, now);
        drop(slot);
        let allowed = tries <= pool.retries.max
            && retry::may_retry(&method, progress.state(), failure)
            && (req.is_some() || again.is_some());
        if !allowed || !target.core.state.withdraw_retry(now) {
            return Err(last_error.unwrap_or_else(|| no_backend(pool, now)));
        }
        if req.is_none() {
            req = again.as_mut().map(|make| make());
        }
    }
}

/// Picks a backend not in `tried` (noting it in `reached`) and takes a slot
/// under its limit, waiting in its queue when it is full. `Err(None)`: no
/// backend may be picked; `Err(Some(_))`: the one picked is overloaded.
pub(super) async fn enter(
    target: &Target<'_>,
    tried: &Tried,
    reached: &mut Option<Rc<CoreBackend>>,
    now: u64,
) -> Result<(usize, Slot), Option<ProxyError>> {
    let pool = target.pool;
    let pick = target
        .core
        .pick(pool, tried, target.key, &mut target.rng.borrow_mut(), now);
    let i = match pick {
        Pick::Ready(i) | Pick::Busy(i) => i,
        Pick::None => return Err(None),
    };
    let cb = &target.core.backends[i];
    *reached = Some(Rc::clone(cb));
    match cb
        .acquire(Duration::from_millis(pool.limits.queue_timeout_ms))
        .await
    {
        Ok(slot) => Ok((i, slot)),
        Err(why) => {
            target.core.state.stats.rejected();
            Err(Some(ProxyError::Overloaded {
                pool: Arc::clone(&pool.name),
                why: match why {
                    NoSlot::Full => "its queue is full",
                    NoSlot::Timeout => "no slot within the queue timeout",
                },
            }))
        }
    }
}

/// A try failed on `cb`: counted, and perhaps the backend is ejected.
pub(super) fn failed(pool: &snapshot::Pool, cb: &CoreBackend, now: u64) {
    cb.stats.failed();
    let ejected = cb.shared.ejection.on_failure(now, &pool.outlier, || {
        let out = pool
            .backends
            .iter()
            .filter(|b| b.shared.ejection.is_ejected(now))
            .count();
        (out, pool.backends.len())
    });
    if let Some(ms) = ejected {
        tracing::warn!(
            pool = &*pool.name,
            backend = &*cb.name,
            "ejected for {ms} ms after {} failures in a row",
            pool.outlier.consecutive
        );
    }
}

/// Why no backend could be picked at all.
fn no_backend(pool: &snapshot::Pool, now: u64) -> ProxyError {
    let in_rotation = pool.backends.iter().any(|b| b.weight > 0);
    if in_rotation
        && !pool
            .backends
            .iter()
            .any(|b| b.weight > 0 && b.shared.serves(now))
    {
        ProxyError::AllDown(Arc::clone(&pool.name))
    } else {
        ProxyError::NoBackend(Arc::clone(&pool.name))
    }
}

/// The real transport: HTTP/1.1 keep-alive connections from this core's
/// pool, or new ones.
#[derive(Debug)]
pub struct Http<'a> {
    pub conns: &'a Rc<ConnPool>,
    /// For a pool that sends PROXY headers: the client and local address of
    /// the client's connection.
    pub proxy_header: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
}

impl Transport for Http<'_> {
    type Body = ReqBody;
    type Resp = hyper::body::Incoming;

    async fn send(
        &self,
        backend: &snapshot::Backend,
        pool: &snapshot::Pool,
        req: Request<ReqBody>,
        fresh_only: bool,
        header_timeout: Duration,
    ) -> Result<Response<Self::Resp>, TryError<ReqBody>> {
        let key = (backend.addr, self.proxy_header);
        let pooled = if fresh_only {
            None
        } else {
            self.conns.checkout(key, pool.idle_timeout)
        };
        let reused = pooled.is_some();
        let mut sender = match pooled {
            Some(s) => s,
            None => {
                let opened = pool::connect(
                    backend.addr,
                    pool.connect_timeout,
                    pool.idle_timeout,
                    self.proxy_header,
                );
                match opened.await {
                    Ok(s) => s,
                    Err(e) => return Err(TryError::Connect(e, req)),
                }
            }
        };
        let progress = req.body().progress();
        let exchange = sender.try_send_request(req);
        let deadline = async {
            progress.finished().await;
            crate::rt::sleep(header_timeout).await;
        };
        match crate::rt::race(exchange, deadline).await {
            crate::rt::Either::Left(Ok(response)) => {
                self.conns
                    .checkin_when_ready(key, sender, pool.max_idle_per_backend);
                Ok(response)
            }
            crate::rt::Either::Left(Err(mut e)) => match e.take_message() {
                Some(back) if reused => Err(TryError::Stale(back)),
                Some(back) => Err(TryError::Connect(ConnectError::Closed, back)),
                None => Err(TryError::Broken(Box::new(e.into_error()))),
            },
            crate::rt::Either::Right(()) => Err(TryError::Timeout),
        }
    }
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
