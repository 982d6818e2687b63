//! The seam between edgebox and its data-plane runtime (glommio on io_uring).
//!
//! Everything the data plane needs from the runtime goes through here: spawning
//! core-local tasks, timers, TCP sockets, and the adapters that let hyper run on
//! glommio (IO, executor, timer). glommio is slow-moving upstream; keeping it
//! behind this module means it could be swapped without touching the proxy.
//!
//! This is also the only data-plane module allowed `unsafe`; each block says why
//! it is sound.
#![allow(unsafe_code)]

mod io;
pub mod packet;

pub use io::{Activity, CountPolls, HyperIo, Polls, TrackedIo, WriteBuffer};

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub use glommio::net::{TcpListener, TcpStream};

/// Spawns a task on the current core; it runs to completion on its own.
pub fn spawn<F>(future: F)
where
    F: Future + 'static,
    F::Output: 'static,
{
    glommio::spawn_local(future).detach();
}

/// Completes after `duration` on the current core's timer.
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

/// Runs `future` for at most `duration`; `None` when the time ran out first.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Option<F::Output> {
    match race(future, sleep(duration)).await {
        Either::Left(out) => Some(out),
        Either::Right(()) => None,
    }
}

/// Which of two raced futures finished first.
#[derive(Debug)]
pub enum Either<L, R> {
    Left(L),
    Right(R),
}

/// Polls both futures until one finishes (`left` first on each wake-up) and
/// drops the other.
pub async fn race<L: Future, R: Future>(left: L, right: R) -> Either<L::Output, R::Output> {
    let mut left = std::pin::pin!(left);
    let mut right = std::pin::pin!(right);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = left.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(out));
        }
        right.as_mut().poll(cx).map(Either::Right)
    })
    .await
}

/// Connects to `addr`, giving up after `limit`.
pub async fn connect(addr: SocketAddr, limit: Duration) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(addr, limit)
        .await
        .map_err(std::io::Error::from)
}

/// Adopts a socket that the main thread bound and put in the listening state
/// into the current core's reactor.
pub fn adopt_listener(socket: OwnedFd) -> TcpListener {
    // SAFETY: `socket` is an owned, bound, listening TCP socket (made by
    // `server::listeners::bind`); `into_raw_fd` gives up our ownership, so the
    // listener below becomes its only owner and closes it exactly once.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(socket.into_raw_fd()) }
}

/// Runs hyper's spawned work (HTTP/2 streams, client connections) as core-local
/// tasks, so nothing hyper spawns needs to be `Send`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
    F::Output: 'static,
{
    fn execute(&self, future: F) {
        spawn(future);
    }
}

/// hyper's timer (header-read timeout, HTTP/2 keep-alive) on glommio's timers.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoreTimer;

impl hyper::rt::Timer for CoreTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CoreSleep(glommio::timer::Timer::new(duration)))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        *sleep = self.sleep_until(new_deadline);
    }
}

/// A glommio timer that hyper may hold: hyper requires `Send + Sync` sleeps.
struct CoreSleep(glommio::timer::Timer);

// SAFETY: a `CoreSleep` is only ever created by `CoreTimer` for a hyper
// connection that runs on the current core, and it lives inside that
// connection's state. Those connections own a glommio socket, which is `!Send`,
// so the connection (and with it this timer) can never be moved to, polled on,
// or dropped on another thread. The `Send`/`Sync` markers only satisfy hyper's
// trait bound; no cross-thread access can happen.
unsafe impl Send for CoreSleep {}
// SAFETY: as above; no `&CoreSleep` is ever shared with another thread.
unsafe impl Sync for CoreSleep {}

impl Future for CoreSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

impl hyper::rt::Sleep for CoreSleep {}
