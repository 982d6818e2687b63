//! Byte tunnels for upgraded connections (WebSocket and other HTTP/1.1
//! upgrades): both directions copied until each side has finished.
//!
//! hyper's own upgrade support needs `Send` IO, which glommio sockets are not,
//! so edgebox uses hyper's low-level path instead: the backend connection of an
//! upgrade request is driven in the request's task until its 101 response, then
//! taken apart (`into_parts`) and parked in the client connection's
//! [`TunnelSlot`]; when the client connection's hyper state machine finishes
//! after writing the 101, it is taken apart too and the two are joined here.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};

use super::pool::BackendIo;

const BUF: usize = 16 * 1024;

/// The backend half of an accepted upgrade, waiting for the client half.
pub type TunnelSlot = std::cell::RefCell<Option<Parked>>;

/// An upgraded backend connection, with the slot it holds under its
/// backend's limit for as long as the tunnel is open.
#[derive(Debug)]
pub struct Parked {
    pub io: Prefixed<BackendIo>,
    pub slot: crate::upstream::Slot,
    /// The pool's `drain_timeout_ms`: once its backend has been draining (or
    /// gone from the config) this long, the tunnel is closed.
    pub drain_timeout_ms: u64,
}

/// How often an open tunnel looks at whether its backend's drain deadline
/// has passed.
const DRAIN_CHECK: Duration = Duration::from_secs(1);

/// Runs the tunnel between `client` and a parked backend connection until
/// both sides close, `idle` passes without traffic, or the backend's drain
/// deadline passes.
pub async fn run_parked<A>(client: A, parked: Parked, idle: Duration) -> io::Result<()>
where
    A: Read + Write + Unpin,
{
    let backend = std::rc::Rc::clone(parked.slot.backend());
    backend.stats.tunnel_opened();
    let deadline = parked.drain_timeout_ms;
    let expired = async {
        loop {
            crate::rt::sleep(DRAIN_CHECK).await;
            if backend
                .shared
                .drain_expired(crate::clock::now_ms(), deadline)
            {
                return;
            }
        }
    };
    let result = match crate::rt::race(run(client, parked.io, idle), expired).await {
        crate::rt::Either::Left(result) => result,
        crate::rt::Either::Right(()) => {
            tracing::info!(
                backend = &*backend.name,
                "closing a tunnel: its backend has been draining for {deadline} ms"
            );
            Ok(())
        }
    };
    backend.stats.tunnel_closed();
    drop(parked.slot);
    result
}

/// IO with bytes that were already read from it (by hyper, past the 101
/// exchange) put back in front.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }
}

impl<T: Read + Unpin> Read for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One direction of a tunnel.
struct Pipe {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    read_done: bool,
    shut: bool,
    /// Bytes written so far.
    moved: u64,
}

impl Pipe {
    fn new() -> Self {
        Self {
            buf: vec![0; BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            read_done: false,
            shut: false,
            moved: 0,
        }
    }

    /// Moves bytes from `from` to `to`; `Ready` once `from` has ended and
    /// everything was written and `to` shut down for writing.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: Read + Unpin,
        W: Write + Unpin,
    {
        loop {
            if self.start == self.end && !self.read_done {
                let mut rb = ReadBuf::new(&mut self.buf);
                ready!(Pin::new(&mut *from).poll_read(cx, rb.unfilled()))?;
                let n = rb.filled().len();
                if n == 0 {
                    self.read_done = true;
                } else {
                    self.start = 0;
                    self.end = n;
                }
            }
            if self.start < self.end {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.moved += n as u64;
                if self.start == self.end {
                    ready!(Pin::new(&mut *to).poll_flush(cx))?;
                }
                continue;
            }
            if self.read_done && !self.shut {
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                self.shut = true;
            }
            return Poll::Ready(Ok(()));
        }
    }
}

/// Copies `a → b` and `b → a` until both directions end, or until neither moves
/// a byte for `idle`.
pub async fn run<A, B>(mut a: A, mut b: B, idle: Duration) -> io::Result<()>
where
    A: Read + Write + Unpin,
    B: Read + Write + Unpin,
{
    let activity = crate::rt::Activity::new();
    let mut up = Pipe::new();
    let mut down = Pipe::new();
    let copy = std::future::poll_fn(|cx| {
        let before = up.moved + down.moved;
        let a_to_b = up.poll_copy(cx, &mut a, &mut b)?;
        let b_to_a = down.poll_copy(cx, &mut b, &mut a)?;
        if up.moved + down.moved != before {
            activity.touch();
        }
        if a_to_b.is_ready() && b_to_a.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    });
    match crate::rt::race(copy, activity.idle_for(idle)).await {
        crate::rt::Either::Left(result) => result,
        crate::rt::Either::Right(()) => Err(io::ErrorKind::TimedOut.into()),
    }
}
