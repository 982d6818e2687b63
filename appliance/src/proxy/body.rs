//! The access-log line, written when a response body is finished.

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::{ConnInfo, Services};
pub use crate::response::ResBody;
use crate::upstream::{CoreBackend, CoreView, PoolSlot, Slot};

/// One request, as the access log and the metrics record it. It also holds
/// the request's places under its pool's and backend's limits, given back
/// when it is dropped (after the log line is written).
#[derive(Debug)]
pub struct AccessRecord {
    pub start: Instant,
    pub svc: Rc<Services>,
    /// The view the request was served from (names of pools, backends).
    pub view: Rc<CoreView>,
    pub conn: Rc<ConnInfo>,
    pub version: http::Version,
    pub method: http::Method,
    pub host: String,
    pub uri: String,
    pub status: u16,
    /// The pool, by index into `view`, if the request was routed to one.
    pub pool: Option<usize>,
    /// The backend last tried, if one was reached.
    pub backend: Option<Rc<CoreBackend>>,
    pub bytes: u64,
    pub slot: Option<Slot>,
    pub pool_slot: Option<PoolSlot>,
    /// The site's counters, if a site answered.
    pub site: Option<std::sync::Arc<crate::metrics::NamedCounters>>,
}

impl AccessRecord {
    fn finish(&self) {
        let took = self.start.elapsed();
        self.svc.stats.all.record(self.status, self.bytes, took);
        self.conn
            .listener_stats
            .traffic
            .record(self.status, self.bytes, took);
        if let Some(site) = &self.site {
            site.traffic.record(self.status, self.bytes, took);
            if self.status == 304 {
                site.not_modified();
            }
        }
        let mut backend_name = "-";
        if let Some(pool) = self.pool {
            let counters = match &self.backend {
                Some(b) => {
                    backend_name = &b.name;
                    &b.stats
                }
                None => &self.view.pools[pool].state.unreached,
            };
            counters.traffic.record(self.status, self.bytes, took);
        }
        tracing::info!(
            target: "access",
            core = self.svc.core,
            listener = &*self.conn.listener,
            client = %self.conn.client,
            version = ?self.version,
            method = %self.method,
            host = %self.host,
            path = %self.uri,
            status = self.status,
            bytes = self.bytes,
            backend = backend_name,
            duration_ms = took.as_secs_f64() * 1e3,
        );
    }
}

/// A response body that writes the access-log line when it is dropped: after
/// the last byte is sent, or when the client went away.
#[derive(Debug)]
pub struct Logged<B> {
    inner: B,
    record: AccessRecord,
}

impl<B> Logged<B> {
    pub fn new(inner: B, record: AccessRecord) -> Self {
        Self { inner, record }
    }
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        self.record.finish();
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Logged<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.record.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
