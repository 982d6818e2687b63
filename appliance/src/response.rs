//! The body of a response on a client connection: one edgebox made itself
//! (static files, errors, fixed responses), or a backend's streamed through.
//! Its own module so that the phases that make responses (`proxy`,
//! `static_files`) need not import each other for it.
#![forbid(unsafe_code)]

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// A body edgebox made itself, or a backend's body streamed through.
#[derive(Debug)]
pub enum ResBody {
    Full(Option<Bytes>),
    Backend(Incoming),
}

impl ResBody {
    pub fn empty() -> Self {
        Self::Full(None)
    }
}

impl From<Bytes> for ResBody {
    fn from(b: Bytes) -> Self {
        Self::Full((!b.is_empty()).then_some(b))
    }
}

impl From<&'static str> for ResBody {
    fn from(s: &'static str) -> Self {
        Bytes::from_static(s.as_bytes()).into()
    }
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Backend(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_none(),
            Self::Backend(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Backend(b) => b.size_hint(),
        }
    }
}
