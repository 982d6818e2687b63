//! Keep-alive connections to backends, one pool per core.
//!
//! A connection is checked out for one request and checked back in once its
//! response has been read to the end (hyper's `ready()`), most recently used
//! first. Connections idle for longer than the pool's idle timeout are not
//! reused, and every backend connection closes itself after that long without
//! a byte moving.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;

use super::reqbody::ReqBody;
use crate::rt::{self, Activity, HyperIo, TrackedIo};

pub type Sender = SendRequest<ReqBody>;

/// Why no connection to a backend could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The backend did not accept within the connect timeout.
    #[error("connect timed out")]
    Timeout,
    /// The backend refused or the network failed.
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP/1.1 handshake on the new connection failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
    /// The new connection closed before the request could be written.
    #[error("the connection closed before the request was sent")]
    Closed,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// Which connections may be reused for a request: those to the same
/// backend, and for a pool that sends PROXY headers, only those made for the
/// same client connection (client and local address), whose header named it.
pub type PoolKey = (SocketAddr, Option<(SocketAddr, SocketAddr)>);

/// A [`PoolKey`] as a connection waiting to go back to the pool holds it
/// (small: the client pair is boxed, and there only for PROXY pools).
type HeldKey = (SocketAddr, Option<Box<(SocketAddr, SocketAddr)>>);

/// The idle connections, by backend; those made for one client connection
/// (PROXY headers) apart, so that the common case hashes one address.
#[derive(Default)]
pub struct ConnPool {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
    private: RefCell<HashMap<PoolKey, Vec<Idle>>>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: usize = self.idle.borrow().values().map(Vec::len).sum();
        let private: usize = self.private.borrow().values().map(Vec::len).sum();
        f.debug_struct("ConnPool")
            .field("idle", &idle)
            .field("private", &private)
            .finish()
    }
}

/// The most recently used connection of `list` that is still open and
/// younger than `max_age`.
fn newest_ready(list: &mut Vec<Idle>, max_age: Duration) -> Option<Sender> {
    while let Some(entry) = list.pop() {
        if entry.since.elapsed() < max_age && entry.sender.is_ready() {
            return Some(entry.sender);
        }
    }
    None
}

/// Keeps `sender` in `list` unless it holds `max_idle` already.
fn keep(list: &mut Vec<Idle>, sender: Sender, max_idle: usize) {
    list.retain(|e| !e.sender.is_closed());
    if list.len() < max_idle {
        list.push(Idle {
            sender,
            since: Instant::now(),
        });
    }
}

impl ConnPool {
    /// An idle connection for `key` that is still open and younger than
    /// `max_age`, if there is one.
    pub fn checkout(&self, key: PoolKey, max_age: Duration) -> Option<Sender> {
        match key {
            (addr, None) => newest_ready(self.idle.borrow_mut().get_mut(&addr)?, max_age),
            key => newest_ready(self.private.borrow_mut().get_mut(&key)?, max_age),
        }
    }

    /// Waits until `sender`'s current exchange is finished, then keeps it for
    /// reuse unless the pool for `addr` already holds `max_idle`.
    pub fn checkin_when_ready(self: &Rc<Self>, key: PoolKey, mut sender: Sender, max_idle: usize) {
        let pool = Rc::clone(self);
        let key: HeldKey = (key.0, key.1.map(Box::new));
        rt::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            match key {
                (addr, None) => keep(
                    pool.idle.borrow_mut().entry(addr).or_default(),
                    sender,
                    max_idle,
                ),
                (addr, Some(pair)) => {
                    let mut private = pool.private.borrow_mut();
                    keep(
                        private.entry((addr, Some(*pair))).or_default(),
                        sender,
                        max_idle,
                    );
                    // The client connection's own: forgotten once unusable.
                    private.retain(|_, l| l.iter().any(|e| !e.sender.is_closed()));
                }
            }
        });
    }
}

/// A backend socket as hyper's client uses it.
pub type BackendIo = HyperIo<TrackedIo<rt::TcpStream>>;

/// A new connection's request half and its not yet running connection half.
pub type Handshaken = (
    Sender,
    hyper::client::conn::http1::Connection<BackendIo, ReqBody>,
);

/// Opens a new HTTP/1.1 connection to a backend, leaving the caller to drive
/// its connection half. With `proxy` (client, local), a PROXY protocol v2
/// header naming them goes first.
pub async fn open(
    addr: SocketAddr,
    connect_timeout: Duration,
    proxy: Option<(SocketAddr, SocketAddr)>,
) -> Result<(Handshaken, Activity), ConnectError> {
    let mut stream = rt::timeout(connect_timeout, rt::connect(addr, connect_timeout))
        .await
        .ok_or(ConnectError::Timeout)?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut => ConnectError::Timeout,
            _ => ConnectError::Io(e),
        })?;
    stream.set_nodelay(true).map_err(std::io::Error::from)?;
    if let Some((client, local)) = proxy {
        use futures_lite::AsyncWriteExt;
        let header = crate::proxy_protocol::encode_v2(client, local);
        stream.write_all(&header).await?;
    }
    let activity = Activity::new();
    let io = HyperIo::new(TrackedIo::new(stream, activity.clone()));
    let handshaken = hyper::client::conn::http1::Builder::new()
        .handshake(io)
        .await?;
    Ok((handshaken, activity))
}

/// Opens a new HTTP/1.1 connection to a backend and runs it as its own task,
/// closed after `idle_timeout` without a byte moving.
pub async fn connect(
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    proxy: Option<(SocketAddr, SocketAddr)>,
) -> Result<Sender, ConnectError> {
    let ((sender, conn), activity) = open(addr, connect_timeout, proxy).await?;
    rt::spawn(async move {
        if let rt::Either::Left(Err(e)) = rt::race(conn, activity.idle_for(idle_timeout)).await {
            tracing::debug!(backend = %addr, "backend connection ended: {e}");
        }
    });
    Ok(sender)
}
