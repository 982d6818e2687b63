//! The body of a response on a client connection: one edgebox made itself
//! (static files, errors, fixed responses), or a backend's streamed through.
//! Its own module so that the phases that make responses (`proxy`,
//! `static_files`) need not import each other for it.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// A body edgebox made itself, or a backend's body streamed through.
#[derive(Debug)]
pub enum ResBody {
    Full(Option<Bytes>),
    Backend(Incoming),
    File(FileRange),
}

/// Why a body ended before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Backend(#[from] hyper::Error),
    /// A stored file could not be read to its expected end (it was
    /// truncated, or the disk failed): the response is cut, never padded.
    #[error("reading a stored file: {0}")]
    File(io::Error),
}

/// Bytes `start..end` of an open file, read a chunk at a time as the
/// connection takes them. Reading a file, unlike touching a memory mapping
/// of it, cannot kill the process when something truncates the file: a
/// short read ends the body with [`BodyError::File`].
#[derive(Debug)]
pub struct FileRange {
    file: Rc<File>,
    pos: u64,
    end: u64,
}

impl FileRange {
    /// The most read for one frame.
    const CHUNK: u64 = 128 << 10;

    pub fn new(file: Rc<File>, start: u64, end: u64) -> Self {
        Self {
            file,
            pos: start,
            end: end.max(start),
        }
    }

    fn next_chunk(&mut self) -> Option<Result<Bytes, BodyError>> {
        let len = (self.end - self.pos).min(Self::CHUNK) as usize;
        if len == 0 {
            return None;
        }
        // From the page cache as a rule; a read from the disk blocks this
        // core for its duration, as a page fault of a mapping would.
        let mut buf = vec![0u8; len];
        Some(match self.file.read_exact_at(&mut buf, self.pos) {
            Ok(()) => {
                self.pos += len as u64;
                Ok(Bytes::from(buf))
            }
            Err(e) => {
                self.pos = self.end;
                Err(BodyError::File(e))
            }
        })
    }
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
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Backend(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BodyError::from))),
            Self::File(f) => Poll::Ready(f.next_chunk().map(|c| c.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_none(),
            Self::Backend(b) => b.is_end_stream(),
            Self::File(f) => f.pos >= f.end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Backend(b) => b.size_hint(),
            Self::File(f) => SizeHint::with_exact(f.end - f.pos),
        }
    }
}
