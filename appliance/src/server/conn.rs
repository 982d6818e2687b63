//! One client connection: TLS handshake, HTTP/1.1 or HTTP/2, graceful close.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};

use super::core::Core;
use super::frame_budget::Budgeted;
use crate::config::Protocol;
use crate::proxy::tunnel::{self, Prefixed};
use crate::proxy::{self, ConnInfo};
use crate::rt::{
    self, Activity, CoreTimer, CountPolls, Either, HyperIo, LocalExec, TcpStream, TrackedIo,
    WriteBuffer,
};

/// Serves `stream`, accepted on listener `listener`, until it closes, goes idle,
/// or the core stops (then in-flight requests finish first).
pub async fn serve(
    core: Rc<Core>,
    listener: Rc<str>,
    stream: TcpStream,
    stop: async_channel::Receiver<()>,
    _alive: async_channel::Sender<()>,
) {
    let snap = core.current();
    let Some(config) = snap
        .snap
        .config
        .listeners
        .iter()
        .find(|l| *l.name == *listener)
    else {
        return;
    };
    let limits = snap.snap.client.clone();
    let max = limits
        .max_connections
        .unwrap_or(core.shared.auto_max_connections);
    let Some(_slot) = super::admission::enter(&core.shared.open_connections, max) else {
        // Closed at once: a client sees the connection end before any byte.
        core.stats.connection_refused(false);
        tracing::debug!(
            listener = &*listener,
            "closing a connection: client.max_connections ({max}) are open"
        );
        return;
    };
    core.stats.connection_opened();
    let listener_stats = core.services.listener_stats(&listener);
    listener_stats.opened();
    let _open = OpenConnection(&core, std::sync::Arc::clone(&listener_stats));
    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let mut stream = stream;
    // A balancer in front says whom the connection is from.
    let (client, local, early) = if config.expects_proxy_header(peer.ip()) {
        match rt::timeout(limits.handshake_timeout, read_proxy_header(&mut stream)).await {
            Some(Ok((header, rest))) => {
                let (c, l) = header.addresses.unwrap_or((peer, local));
                (c, l, rest)
            }
            Some(Err(e)) => {
                tracing::debug!(%peer, "closing: {e}");
                return;
            }
            None => {
                tracing::debug!(%peer, "closing: no PROXY header in time");
                return;
            }
        }
    } else {
        (peer, local, Vec::new())
    };
    let _address_slot = match limits.max_connections_per_address {
        0 => None,
        max => {
            let share = super::admission::PerAddress::share(max, core.shared.stats.len());
            match core.per_address.enter(client.ip(), share) {
                Some(slot) => Some(slot),
                None => {
                    core.stats.connection_refused(true);
                    tracing::debug!(%client, "closing a connection: client.max_connections_per_address ({max}) are open from it");
                    return;
                }
            }
        }
    };
    let activity = Activity::new();
    let io = TrackedIo::with_early(stream, activity.clone(), early);
    let mut info = ConnInfo {
        client,
        local,
        trusted: config.trusts(client.ip()),
        listener,
        listener_stats,
        scheme: "http",
        redirect_to_https_port: config.redirect_to_https_port,
        tunnel: Default::default(),
    };
    let watch = Watch {
        stop,
        activity,
        idle: limits.idle_timeout,
    };
    match config.protocol {
        Protocol::Http => {
            let info = Rc::new(info);
            let conn = http1_builder(limits.header_timeout)
                .serve_connection(HyperIo::new(io), service(core.clone(), Rc::clone(&info)));
            serve_http1(Box::new(conn), &info, watch, limits.idle_timeout).await;
        }
        Protocol::Https => {
            let Some(tls) = snap.snap.tls.clone() else {
                return;
            };
            drop(snap);
            // The handshake and the connection live in allocations of their
            // own, each only while it is needed, instead of in this future,
            // which would be as large as all of them together for the
            // connection's whole life (see docs/benchmarks.md, idle memory).
            let handshake = Box::pin(futures_rustls::TlsAcceptor::from(tls).accept(io));
            let tls = match rt::race(
                rt::timeout(limits.handshake_timeout, handshake),
                watch.stop.recv(),
            )
            .await
            {
                Either::Left(Some(Ok(tls))) => tls,
                Either::Left(Some(Err(e))) => {
                    core.stats.handshake_failed();
                    tracing::debug!(%client, "TLS handshake failed: {e}");
                    return;
                }
                Either::Left(None) => {
                    core.stats.handshake_failed();
                    tracing::debug!(%client, "TLS handshake timed out");
                    return;
                }
                Either::Right(_) => return,
            };
            let session = tls.get_ref().1;
            core.stats.handshake(
                session.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
                session.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3),
            );
            if session.alpn_protocol() == Some(crate::tls::managed::ACME_TLS_ALPN) {
                // A CA validating a TLS-ALPN-01 challenge: the handshake was
                // the whole answer (RFC 8737 3).
                return;
            }
            info.scheme = "https";
            let h2 = session.alpn_protocol() == Some(b"h2");
            let polls = rt::Polls::default();
            let tls = WriteBuffer::new(tls, h2.then(|| polls.clone()));
            let info = Rc::new(info);
            let svc = service(core.clone(), Rc::clone(&info));
            if h2 {
                let flood = Rc::new(Cell::new(None));
                let io = Budgeted::new(tls, Rc::clone(&flood));
                let conn = Box::pin(
                    http2::Builder::new(LocalExec)
                        .timer(CoreTimer)
                        .max_header_list_size(MAX_HEAD as u32)
                        .serve_connection(HyperIo::new(io), svc),
                );
                let mut conn = CountPolls::new(conn, polls);
                watch.drive(Pin::new(&mut conn)).await;
                if let Some(flood) = flood.get() {
                    core.stats.http2_flood();
                    tracing::info!(client = %info.client, "closed an HTTP/2 connection: {flood}");
                }
            } else {
                let conn =
                    http1_builder(limits.header_timeout).serve_connection(HyperIo::new(tls), svc);
                serve_http1(Box::new(conn), &info, watch, limits.idle_timeout).await;
            }
        }
    }
}

/// Serves HTTP/1.1 until the connection ends; if a request was granted an
/// upgrade, joins the client socket to the parked backend socket.
async fn serve_http1<I, S>(
    mut conn: Box<http1::Connection<I, S>>,
    info: &ConnInfo,
    watch: Watch,
    idle: Duration,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming> + Unpin,
    S::ResBody: 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if !watch.drive(Pin::new(&mut *conn)).await {
        return;
    }
    let Some(backend) = info.tunnel.borrow_mut().take() else {
        return;
    };
    let parts = conn.into_parts();
    let client = Prefixed::new(parts.read_buf, parts.io);
    if let Err(e) = Box::pin(tunnel::run_parked(client, backend, idle)).await {
        tracing::debug!(client = %info.client, "tunnel ended: {e}");
    }
}

/// Reads a PROXY protocol header off the start of `stream`; the header, and
/// the bytes read past it (the connection's own, to be read first).
async fn read_proxy_header(
    stream: &mut TcpStream,
) -> Result<(crate::proxy_protocol::Header, Vec<u8>), String> {
    use futures_lite::AsyncReadExt;
    let mut buf = vec![0u8; crate::proxy_protocol::MAX_HEADER];
    let mut len = 0;
    loop {
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a whole PROXY header".to_owned());
        }
        len += n;
        match crate::proxy_protocol::decode(&buf[..len]) {
            Ok(Some(h)) => return Ok((h, buf[h.len..len].to_vec())),
            Ok(None) if len < buf.len() => {}
            Ok(None) => return Err("PROXY header too long".to_owned()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Counts a connection as open while it lives.
struct OpenConnection<'a>(&'a Core, std::sync::Arc<crate::metrics::NamedCounters>);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.stats.connection_closed();
        self.1.closed();
    }
}

/// The largest request head (request line and headers) accepted; a larger
/// one is answered 431.
const MAX_HEAD: usize = 64 << 10;

fn http1_builder(header_timeout: Duration) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(CoreTimer)
        .header_read_timeout(header_timeout)
        .max_header_size(MAX_HEAD)
        .max_buf_size(MAX_HEAD);
    b
}

fn service(
    core: Rc<Core>,
    info: Rc<ConnInfo>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<proxy::Logged<proxy::ResBody>>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<proxy::Logged<proxy::ResBody>>, Infallible>>,
> {
    hyper::service::service_fn(move |req| {
        let services = Rc::clone(&core.services);
        let view = core.current();
        let info = Rc::clone(&info);
        async move { Ok::<_, Infallible>(proxy::handle(services, view, info, req).await) }
    })
}

/// A hyper server connection that can be asked to finish gracefully.
trait Graceful: Future {
    fn start_graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> Graceful for http1::Connection<I, S>
where
    Self: Future,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn start_graceful_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E, B> Graceful for http2::Connection<I, S, E>
where
    Self: Future,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn start_graceful_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<C: Graceful + ?Sized> Graceful for CountPolls<Pin<Box<C>>> {
    fn start_graceful_shutdown(mut self: Pin<&mut Self>) {
        self.inner.as_mut().start_graceful_shutdown();
    }
}

/// What ends a connection besides its own end: the core stopping, or idleness.
struct Watch {
    stop: async_channel::Receiver<()>,
    activity: Activity,
    idle: Duration,
}

impl Watch {
    /// Polls `conn` to its end; `true` when it ended cleanly (which for
    /// HTTP/1.1 includes handing over to an upgrade).
    async fn drive<C, E>(self, mut conn: Pin<&mut C>) -> bool
    where
        C: Graceful<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let interrupt = rt::race(self.stop.recv(), self.activity.idle_for(self.idle));
        match rt::race(conn.as_mut(), interrupt).await {
            Either::Left(result) => ended(result),
            Either::Right(Either::Left(_)) => {
                conn.as_mut().start_graceful_shutdown();
                match rt::race(conn.as_mut(), self.activity.idle_for(self.idle)).await {
                    Either::Left(result) => ended(result),
                    Either::Right(()) => false,
                }
            }
            Either::Right(Either::Right(())) => {
                tracing::debug!("closing idle connection");
                false
            }
        }
    }
}

fn ended<E: std::fmt::Display>(result: Result<(), E>) -> bool {
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("client connection ended: {e}");
            false
        }
    }
}
