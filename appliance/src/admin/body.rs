//! Admin response bodies: whole JSON documents, or the host map streamed.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::hostmap::HostMap;

/// Entries per chunk of a streamed host map.
const CHUNK: usize = 4096;

#[derive(Debug)]
pub enum Body {
    Full(Option<Bytes>),
    /// The host map as NDJSON sorted by host, a chunk at a time, from a
    /// copy of it (sorted when the first chunk is asked for).
    HostMap {
        map: Arc<HostMap>,
        sorted: Option<Vec<(Arc<str>, Arc<str>)>>,
        next: usize,
    },
}

impl Body {
    pub fn full(b: Bytes) -> Self {
        Self::Full((!b.is_empty()).then_some(b))
    }

    pub fn empty() -> Self {
        Self::Full(None)
    }

    pub fn hostmap(map: Arc<HostMap>) -> Self {
        Self::HostMap {
            map,
            sorted: None,
            next: 0,
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::HostMap { map, sorted, next } => {
                let all = sorted.get_or_insert_with(|| map.sorted());
                if *next >= all.len() {
                    return Poll::Ready(None);
                }
                let end = (*next + CHUNK).min(all.len());
                let mut out = Vec::with_capacity(CHUNK * 48);
                for (host, pool) in &all[*next..end] {
                    crate::hostmap::write_entry(&mut out, host, pool);
                }
                *next = end;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_none(),
            Self::HostMap { sorted, next, .. } => sorted.as_ref().is_some_and(|s| *next >= s.len()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::HostMap { .. } => SizeHint::default(),
        }
    }
}
