//! An upgrade request (WebSocket) goes on a backend connection of its own,
//! driven here until the response: a 101 parks the backend side, with its
//! slot, in the client connection's tunnel slot; anything else is an
//! ordinary response. A connect failure moves on to another backend (within
//! the pool's retries and budget); once written, the request is not sent
//! again.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use http::header;
use http::{Request, Response, StatusCode};

use super::forward::Target;
use super::reqbody::ReqBody;
use super::{backend_response, pool, tunnel, AccessRecord, ConnInfo, ProxyError, ResBody};
use crate::upstream::Tried;

pub(super) async fn forward(
    target: &Target<'_>,
    conn: &ConnInfo,
    req: Request<ReqBody>,
    record: &mut AccessRecord,
) -> Result<Response<ResBody>, ProxyError> {
    let pool = target.pool;
    let mut tried = Tried::default();
    let mut last_error = None;
    loop {
        let now = crate::clock::now_ms();
        let (i, slot) = match super::forward::enter(target, &tried, &mut record.backend, now).await
        {
            Ok(entered) => entered,
            Err(None) => {
                return Err(
                    last_error.unwrap_or_else(|| ProxyError::NoBackend(Arc::clone(&pool.name)))
                )
            }
            Err(Some(overloaded)) => return Err(overloaded),
        };
        tried.add(i);
        let cb = &target.core.backends[i];
        let backend = &pool.backends[i];
        let ((mut sender, mut backend_conn), activity) = match pool::open(
            backend.addr,
            pool.connect_timeout,
            pool.proxy_protocol.then_some((conn.client, conn.local)),
        )
        .await
        {
            Ok(opened) => opened,
            Err(source) => {
                let now = crate::clock::now_ms();
                super::forward::failed(pool, cb, now);
                last_error = Some(ProxyError::Connect {
                    backend: Arc::clone(&backend.name),
                    source,
                });
                let more = tried.len() <= pool.retries.max as usize
                    && target.core.state.withdraw_retry(now);
                if !more {
                    return Err(
                        last_error.unwrap_or_else(|| ProxyError::NoBackend(Arc::clone(&pool.name)))
                    );
                }
                continue;
            }
        };
        let exchange = async {
            let result: Result<Response<ResBody>, hyper::Error> = async {
                let mut send = std::pin::pin!(sender.send_request(req));
                // Drive the connection while waiting for the response; if it ends
                // first, the response future reports why.
                let mut conn_done = false;
                let response = std::future::poll_fn(|cx| {
                    if let Poll::Ready(r) = send.as_mut().poll(cx) {
                        return Poll::Ready(r);
                    }
                    if !conn_done {
                        conn_done = backend_conn.poll_without_shutdown(cx).is_ready();
                    }
                    Poll::Pending
                })
                .await?;
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    std::future::poll_fn(|cx| backend_conn.poll_without_shutdown(cx)).await?;
                    let parts = backend_conn.into_parts();
                    *conn.tunnel.borrow_mut() = Some(tunnel::Parked {
                        io: tunnel::Prefixed::new(parts.read_buf, parts.io),
                        slot,
                        drain_timeout_ms: pool.drain_timeout_ms,
                    });
                    let upgrade = response.headers().get(header::UPGRADE).cloned();
                    Ok(backend_response(response, upgrade))
                } else {
                    record.slot = Some(slot);
                    let idle = pool.idle_timeout;
                    crate::rt::spawn(async move {
                        crate::rt::race(backend_conn, activity.idle_for(idle)).await;
                    });
                    Ok(backend_response(response, None))
                }
            }
            .await;
            result
        };
        return match crate::rt::timeout(pool.response_header_timeout, exchange).await {
            None => Err(ProxyError::ResponseTimeout(Arc::clone(&backend.name))),
            Some(Ok(response)) => {
                cb.shared
                    .ejection
                    .on_success(crate::clock::now_ms(), &pool.outlier);
                Ok(response)
            }
            Some(Err(source)) => Err(ProxyError::Backend {
                backend: Arc::clone(&backend.name),
                source: Box::new(source),
            }),
        };
    }
}
