//! IO adapters: futures-io streams (glommio sockets, rustls streams) as hyper
//! IO, plus activity tracking for idle timeouts.

use std::cell::Cell;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncWrite};

/// A futures-io stream seen as hyper IO.
#[derive(Debug)]
pub struct HyperIo<T> {
    inner: T,
    /// How much the next read offers the stream below (see [`MIN_READ`]).
    read_size: usize,
}

impl<T> HyperIo<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            read_size: MIN_READ,
        }
    }
}

/// The most one read hands hyper. hyper checks its header-size limits only
/// between reads, and offers its buffer's whole spare capacity, so without a
/// cap one read could take in a whole oversized request head. 16 KiB is a
/// TLS record.
const MAX_READ: usize = 16 << 10;

/// The least one read offers. The memory offered must be zeroed first (the
/// streams below take initialised buffers), so the offer follows what reads
/// bring: it doubles after a read that filled it and halves after one that
/// brought less than half. A keep-alive connection of small requests zeroes
/// 2 KiB a read instead of 16.
const MIN_READ: usize = 2 << 10;

impl<T: AsyncRead + Unpin> hyper::rt::Read for HyperIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: we only write initialised bytes into the cursor's memory
        // (zeroes, then what the reader puts there) and never de-initialise it.
        let unfilled = unsafe { buf.as_mut() };
        let len = unfilled.len().min(self.read_size);
        let slice = init_zeroed(&mut unfilled[..len]);
        let n = ready!(Pin::new(&mut self.inner).poll_read(cx, slice))?;
        if n == len {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        } else if n < len / 2 {
            self.read_size = (self.read_size / 2).max(MIN_READ);
        }
        // SAFETY: the reader initialised (and filled) the first `n` bytes.
        unsafe { buf.advance(n) };
        Poll::Ready(Ok(()))
    }
}

fn init_zeroed(buf: &mut [MaybeUninit<u8>]) -> &mut [u8] {
    for byte in buf.iter_mut() {
        byte.write(0);
    }
    // SAFETY: every element was initialised by the loop above, and
    // `MaybeUninit<u8>` has the same layout as `u8`.
    unsafe { &mut *(buf as *mut [MaybeUninit<u8>] as *mut [u8]) }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// When a connection last moved a byte, shared between its IO and its watchdog.
#[derive(Clone, Debug)]
pub struct Activity(Rc<Cell<Instant>>);

impl Activity {
    pub fn new() -> Self {
        Self(Rc::new(Cell::new(Instant::now())))
    }

    pub fn touch(&self) {
        self.0.set(Instant::now());
    }

    /// Completes once no byte has moved for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let deadline = self.0.get() + limit;
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            super::sleep(deadline - now).await;
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// A stream that records its reads and writes in an [`Activity`].
#[derive(Debug)]
pub struct TrackedIo<T> {
    inner: T,
    activity: Activity,
    /// Bytes already read off the stream (past a PROXY header), to be read
    /// first; one pointer while there are none.
    early: Option<Box<Early>>,
}

#[derive(Debug)]
struct Early {
    bytes: Vec<u8>,
    at: usize,
}

impl<T> TrackedIo<T> {
    pub fn new(inner: T, activity: Activity) -> Self {
        Self {
            inner,
            activity,
            early: None,
        }
    }

    /// As [`TrackedIo::new`], with `early` read first.
    pub fn with_early(inner: T, activity: Activity, early: Vec<u8>) -> Self {
        Self {
            inner,
            activity,
            early: (!early.is_empty()).then(|| {
                Box::new(Early {
                    bytes: early,
                    at: 0,
                })
            }),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.early.as_mut() {
            let n = (e.bytes.len() - e.at).min(buf.len());
            buf[..n].copy_from_slice(&e.bytes[e.at..e.at + n]);
            e.at += n;
            if e.at == e.bytes.len() {
                self.early = None;
            }
            return Poll::Ready(Ok(n));
        }
        let n = ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.activity.touch();
        Poll::Ready(Ok(n))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.activity.touch();
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.activity.touch();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// How many times a connection's future has been polled (see
/// [`WriteBuffer`]); [`CountPolls`] counts.
#[derive(Debug, Clone, Default)]
pub struct Polls(Rc<Cell<u64>>);

/// A future that counts its polls in a [`Polls`].
#[derive(Debug)]
pub struct CountPolls<F> {
    pub inner: F,
    polls: Polls,
}

impl<F> CountPolls<F> {
    pub fn new(inner: F, polls: Polls) -> Self {
        Self { inner, polls }
    }
}

impl<F: std::future::Future + Unpin> std::future::Future for CountPolls<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.0.set(self.polls.0.get() + 1);
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// What one flush hands the TLS stream at most: a TLS record's payload.
const COALESCE: usize = 16 << 10;

/// Gathers hyper's small writes and hands them to the stream below on flush.
///
/// futures-rustls seals and sends every write at once, so an HTTP/1.1
/// response head and body, or a batch of HTTP/2 frames, would leave as a TLS
/// record and a `send` each. Gathered, they leave as one record and one
/// `send`. A write of a record's worth or more passes straight through when
/// nothing is waiting, so large bodies are not copied once more.
///
/// With a [`Polls`] count (for HTTP/2), flushes wait for the connection's next
/// poll. The h2 codec flushes after every frame with a body over 256 bytes, and
/// the connection's streams answer in tasks of their own, so flushing at once
/// would send a record per response. Instead, the first flush of a poll only
/// asks for another poll and reports success; every frame of this poll, and
/// of the stream tasks that run before the next, is gathered; the first
/// flush of the next poll sends them together (h2 flushes at the end of every
/// poll). Closing sends whatever waits.
#[derive(Debug)]
pub struct WriteBuffer<T> {
    inner: T,
    buf: Vec<u8>,
    /// How much of `buf` the stream below has taken.
    sent: usize,
    defer: Option<Polls>,
    /// The poll in which a flush was put off.
    put_off_in: Option<u64>,
}

impl<T> WriteBuffer<T> {
    pub fn new(inner: T, defer: Option<Polls>) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            sent: 0,
            defer,
            put_off_in: None,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> WriteBuffer<T> {
    /// Hands everything gathered to the stream below.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        // An idle connection keeps no buffer (one allocation per flush is
        // cheap next to the `send`).
        self.buf = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteBuffer<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteBuffer<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if this.buf.len() + total > COALESCE {
            ready!(this.poll_drain(cx))?;
            if total >= COALESCE {
                let first = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &b[..]);
                return Pin::new(&mut this.inner).poll_write(cx, first);
            }
        }
        for b in bufs {
            this.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(polls) = &self.defer {
            let now = polls.0.get();
            if self.sent < self.buf.len() && self.put_off_in.is_none_or(|p| p == now) {
                if self.put_off_in.is_none() {
                    self.put_off_in = Some(now);
                    cx.waker().wake_by_ref();
                }
                return Poll::Ready(Ok(()));
            }
        }
        self.put_off_in = None;
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures_lite::future::block_on;
    use futures_lite::io::AsyncWriteExt;

    /// Records each write it is given.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Gives each read as many bytes as it asks for, up to `per_read`.
    struct Source {
        per_read: usize,
        offered: Vec<usize>,
    }

    impl AsyncRead for Source {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            assert!(buf.iter().all(|b| *b == 0), "offered memory is zeroed");
            self.offered.push(buf.len());
            let n = buf.len().min(self.per_read);
            buf[..n].fill(1);
            Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn the_read_offer_follows_what_reads_bring() {
        let mut io = HyperIo::new(Source {
            per_read: usize::MAX,
            offered: Vec::new(),
        });
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut read = |io: &mut HyperIo<Source>| {
            let mut mem = vec![MaybeUninit::<u8>::uninit(); 64 << 10];
            let mut rb = hyper::rt::ReadBuf::uninit(&mut mem);
            assert!(hyper::rt::Read::poll_read(Pin::new(io), &mut cx, rb.unfilled()).is_ready());
        };
        for _ in 0..5 {
            read(&mut io);
        }
        // Full reads: 2, 4, 8, 16 KiB, then the cap.
        assert_eq!(
            io.inner.offered,
            [2 << 10, 4 << 10, 8 << 10, 16 << 10, 16 << 10]
        );
        io.inner.per_read = 100;
        io.inner.offered.clear();
        for _ in 0..5 {
            read(&mut io);
        }
        assert_eq!(
            io.inner.offered,
            [16 << 10, 8 << 10, 4 << 10, 2 << 10, 2 << 10]
        );
    }

    #[test]
    fn small_writes_leave_together_on_flush() {
        let mut w = WriteBuffer::new(Writes::default(), None);
        block_on(async {
            w.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            w.write_all(b"body").await.unwrap();
            assert!(w.inner.0.is_empty(), "nothing leaves before the flush");
            w.flush().await.unwrap();
        });
        assert_eq!(w.inner.0, vec![b"HTTP/1.1 200 OK\r\n\r\nbody".to_vec()]);
    }

    #[test]
    fn flushes_wait_for_the_next_poll() {
        let polls = Polls::default();
        let mut w = WriteBuffer::new(Writes::default(), Some(polls.clone()));
        let woken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let waker = std::task::Waker::from(std::sync::Arc::new(Counter(woken.clone())));
        let mut cx = Context::from_waker(&waker);
        let mut write = |w: &mut WriteBuffer<Writes>, b: &[u8]| {
            assert!(Pin::new(&mut *w).poll_write(&mut cx, b).is_ready());
            assert!(Pin::new(&mut *w).poll_flush(&mut cx).is_ready());
        };
        polls.0.set(1);
        write(&mut w, b"frame 1");
        write(&mut w, b", frame 2");
        assert!(w.inner.0.is_empty(), "nothing leaves within the poll");
        assert_eq!(
            woken.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "one more poll is asked for"
        );
        polls.0.set(2);
        write(&mut w, b", frame 3");
        assert_eq!(w.inner.0, vec![b"frame 1, frame 2, frame 3".to_vec()]);
        // Nothing waiting: nothing to put off.
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_ready());
        assert_eq!(woken.load(std::sync::atomic::Ordering::Relaxed), 1);
        // Closing sends what waits.
        assert!(Pin::new(&mut w).poll_write(&mut cx, b"goaway").is_ready());
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_ready());
        assert!(Pin::new(&mut w).poll_close(&mut cx).is_ready());
        assert_eq!(w.inner.0.last().unwrap(), b"goaway");
    }

    struct Counter(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl std::task::Wake for Counter {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn large_writes_pass_through_after_what_waits() {
        let mut w = WriteBuffer::new(Writes::default(), None);
        let big = vec![7u8; COALESCE * 2];
        block_on(async {
            w.write_all(b"head").await.unwrap();
            w.write_all(&big).await.unwrap();
            w.write_all(b"tail").await.unwrap();
            w.close().await.unwrap();
        });
        let writes = &w.inner.0;
        assert_eq!(writes[0], b"head");
        assert_eq!(
            writes[1], big,
            "the large write was not copied into the buffer"
        );
        assert_eq!(writes[2], b"tail");
        assert_eq!(writes.len(), 3);
    }

    #[test]
    fn gathered_bytes_never_exceed_a_record() {
        let mut w = WriteBuffer::new(Writes::default(), None);
        let chunk = vec![1u8; 5000];
        block_on(async {
            for _ in 0..10 {
                w.write_all(&chunk).await.unwrap();
            }
            w.flush().await.unwrap();
        });
        let writes = &w.inner.0;
        assert!(
            writes.iter().all(|b| b.len() <= COALESCE),
            "{:?}",
            writes.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert_eq!(writes.iter().map(Vec::len).sum::<usize>(), 50_000);
    }
}
