//! The request body as it goes to a backend, with a record of how far it
//! got: whether any of it was sent (then the request cannot be sent again),
//! and when all of it was (the response timeout starts there, so a long
//! upload is not cut off by `timeouts.response_header_ms`).

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::balance::retry;

/// How far a request body got, shared between the body (which hyper polls)
/// and the proxy (which decides on timeouts and retries).
#[derive(Debug, Default)]
pub struct Progress {
    /// A frame of it was handed on.
    sent: Cell<bool>,
    /// All of it was handed on (or there was none).
    done: Cell<bool>,
    /// Who waits for `done`.
    waker: RefCell<Option<Waker>>,
    /// It had no body at all.
    empty: Cell<bool>,
    /// Reading it from the client failed (bad chunked framing, a length
    /// not kept, a reset): the client's fault, not the backend's.
    client_failed: Cell<bool>,
}

impl Progress {
    fn finish(&self) {
        if !self.done.replace(true) {
            if let Some(w) = self.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// What the body means for retrying the request.
    pub fn state(&self) -> retry::Body {
        if self.empty.get() {
            retry::Body::Empty
        } else if self.sent.get() {
            retry::Body::Sent
        } else {
            retry::Body::Unsent
        }
    }

    /// A record in the given state, for tests of what is retried.
    #[cfg(test)]
    pub fn in_state(state: retry::Body) -> Rc<Self> {
        let p = Self::default();
        match state {
            retry::Body::Empty => {
                p.empty.set(true);
                p.done.set(true);
            }
            retry::Body::Unsent => {}
            retry::Body::Sent => {
                p.sent.set(true);
                p.done.set(true);
            }
        }
        Rc::new(p)
    }

    /// Whether reading the body from the client failed.
    pub fn client_failed(&self) -> bool {
        self.client_failed.get()
    }

    /// Completes once the whole body has been handed on.
    pub fn finished(&self) -> Finished<'_> {
        Finished(self)
    }
}

/// See [`Progress::finished`].
#[derive(Debug)]
pub struct Finished<'a>(&'a Progress);

impl std::future::Future for Finished<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.done.get() {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A handle on a body's [`Progress`]; a body that has none (the usual
/// GET) needs no record at all, and costs no allocation.
#[derive(Debug, Clone, Default)]
pub struct Tracker(Option<Rc<Progress>>);

impl Tracker {
    pub fn of(progress: Rc<Progress>) -> Self {
        Self(Some(progress))
    }

    pub fn state(&self) -> retry::Body {
        self.0.as_ref().map_or(retry::Body::Empty, |p| p.state())
    }

    /// Whether reading the body from the client failed.
    pub fn client_failed(&self) -> bool {
        self.0.as_ref().is_some_and(|p| p.client_failed())
    }

    /// Completes once the whole body has been handed on.
    pub async fn finished(&self) {
        if let Some(p) = &self.0 {
            p.finished().await;
        }
    }
}

/// What a request body must offer the forwarding loop.
pub trait RequestBody {
    /// Its progress (the same record every time).
    fn progress(&self) -> Tracker;
    /// An empty body, for sending a bodiless request again.
    fn empty() -> Self;
}

/// A client's request body on its way to a backend.
#[derive(Debug)]
pub struct ReqBody {
    inner: Option<Incoming>,
    /// `None` for an empty body: nothing to record.
    progress: Option<Rc<Progress>>,
}

impl ReqBody {
    pub fn new(inner: Incoming) -> Self {
        if inner.is_end_stream() {
            return Self {
                inner: None,
                progress: None,
            };
        }
        Self {
            inner: Some(inner),
            progress: Some(Rc::default()),
        }
    }
}

impl RequestBody for ReqBody {
    fn progress(&self) -> Tracker {
        Tracker(self.progress.clone())
    }

    fn empty() -> Self {
        Self {
            inner: None,
            progress: None,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Some(p) = &this.progress {
            match &polled {
                Poll::Ready(Some(Ok(_))) => {
                    p.sent.set(true);
                    if this.inner.as_ref().is_some_and(Incoming::is_end_stream) {
                        p.finish();
                    }
                }
                Poll::Ready(None) => p.finish(),
                Poll::Ready(Some(Err(_))) => p.client_failed.set(true),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.as_ref().is_none_or(Incoming::is_end_stream);
        if let (true, Some(p)) = (end, &self.progress) {
            p.finish();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_body_is_done_from_the_start() {
        let b = ReqBody::empty();
        let p = b.progress();
        assert_eq!(p.state(), retry::Body::Empty);
        assert!(b.is_end_stream());
        let waker = futures_lite::future::block_on(futures_lite::future::poll_once(
            std::pin::pin!(p.finished()),
        ));
        assert_eq!(waker, Some(()), "finished at once");
    }

    #[test]
    fn finishing_wakes_the_waiter_once() {
        let p = Progress::default();
        assert_eq!(p.state(), retry::Body::Unsent);
        p.sent.set(true);
        assert_eq!(p.state(), retry::Body::Sent);
        p.finish();
        p.finish();
        assert!(p.done.get());
    }
}
