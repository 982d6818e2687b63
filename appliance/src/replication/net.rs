//! The replicator: the protocol of `edgebox_storage::replication` carried
//! over QUIC, on the control thread.
//!
//! - One endpoint on `replication.listen` (UDP) serves peers and dials
//!   them. Every peer is dialled by its own link task, which syncs with it
//!   ([`Pull`]) when it connects, when it sends news, and every
//!   `sync_interval_ms`; a link that fails is dialled again with back-off.
//! - A request is one bidirectional stream (one request, one answer, a
//!   blob's outboard and bytes after its answer); a notice is one
//!   unidirectional stream. A change made here is pushed at once to every
//!   connected peer as a notice carrying the changed items.
//! - The blobs a newer item needs are fetched as the [`Node`] says, up to
//!   `max_streams_per_peer` at a time from one peer, each checked as it
//!   arrives ([`edgebox_storage::Partial`]); bytes both ways go through the
//!   peer's [`Bucket`]s (`max_bytes_per_s`).
//! - An item whose blobs are all here is applied through the control
//!   plane ([`super::apply`]) and only then joins the catalog.
//!
//! Disk work (blob reads, writes, hashing) runs on tokio's blocking pool,
//! so the admin API stays responsive while gigabytes move.
//!
//! [`Node`]: edgebox_storage::replication::Node

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgebox_storage::replication::wire::{self, Notice, Request, Response, PROTOCOL};
use edgebox_storage::replication::{Fetch, Fetched, Item, PeerId, Pull};
use edgebox_storage::verified::{self, Cv};
use edgebox_storage::{Hash, PutError};
use tokio::sync::Notify;

use super::bucket::Bucket;
use super::identity::{fingerprint_of, Identity, Pins, SERVER_NAME};
use super::replica::{acceptable, now_ms, sites_only, PeerStatus};
use crate::config::{PeerSettings, ReplicationSettings};
use crate::control::Control;

/// Bytes read from or written to a blob at a time.
const CHUNK: usize = 256 * 1024;
/// Application error codes a connection is closed with.
const CLOSE_BAD_MESSAGE: u32 = 1;
const CLOSE_REMOVED: u32 = 2;
const CLOSE_TIMED_OUT: u32 = 3;

/// Why talking to a peer failed.
#[derive(Debug, thiserror::Error)]
enum NetError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Link(String),
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
    #[error("the peer's bytes do not match the blob's hash")]
    Corrupt,
    #[error("the peer refused: {0}")]
    Refused(String),
    #[error("the disk: {0}")]
    Disk(String),
}

impl NetError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Link(_) => "connect",
            Self::Protocol(_) => "protocol",
            Self::Corrupt => "corrupt",
            Self::Refused(_) => "refused",
            Self::Disk(_) => "disk",
        }
    }
}

fn link_err(e: impl std::fmt::Display) -> NetError {
    NetError::Link(e.to_string())
}

async fn timed<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> Result<T, NetError> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| NetError::Timeout)
}

/// One configured peer.
#[derive(Debug)]
struct Link {
    id: PeerId,
    settings: PeerSettings,
    /// The connection this appliance dialled, when up.
    conn: RefCell<Option<quinn::Connection>>,
    /// Sync now (the peer sent news it did not carry).
    wake: Notify,
    /// The peer just connected to this appliance, so it is up: a dial that
    /// waits for an answer or a back-off is cut short and tried again.
    seen: Notify,
    stopped: Cell<bool>,
    /// What this appliance sends it and receives from it.
    send: RefCell<Bucket>,
    recv: RefCell<Bucket>,
}

/// The replicator's state.
pub struct Net {
    control: Rc<RefCell<Control>>,
    identity: Arc<Identity>,
    pins: Arc<Pins>,
    endpoint: RefCell<Option<quinn::Endpoint>>,
    /// Configured peers by fingerprint.
    links: RefCell<HashMap<String, Rc<Link>>>,
    /// Peer numbers, stable for the process's life.
    ids: RefCell<HashMap<String, PeerId>>,
    settings: RefCell<ReplicationSettings>,
    working: Cell<bool>,
    again: Cell<bool>,
    started: Instant,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn clock_s(started: Instant) -> f64 {
    started.elapsed().as_secs_f64()
}

/// Starts the replicator on the control thread.
pub fn start(control: Rc<RefCell<Control>>, identity: Arc<Identity>) {
    let net = Rc::new(Net {
        control,
        identity,
        pins: Arc::default(),
        endpoint: RefCell::new(None),
        links: RefCell::default(),
        ids: RefCell::default(),
        settings: RefCell::new(ReplicationSettings {
            // Differs from any real setting, so the first pass configures.
            timeout_ms: 0,
            ..ReplicationSettings::default()
        }),
        working: Cell::new(false),
        again: Cell::new(false),
        started: Instant::now(),
    });
    tokio::task::spawn_local(run(net));
}

async fn run(net: Rc<Net>) {
    let changed = Arc::clone(&net.control.borrow().replica.changed);
    loop {
        reconfigure(&net);
        let dirty = {
            let c = net.control.borrow();
            !c.replica.dirty.is_empty() && !c.config.replication.peers.is_empty()
        };
        if dirty {
            // A burst of host-map changes makes one item per shard.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut c = net.control.borrow_mut();
            let c = &mut *c;
            if let Err(e) = c.replica.flush_shards(&c.hostmap, &c.content) {
                tracing::error!("replication: {e}");
            }
        }
        announce(&net);
        let probes = std::mem::take(&mut net.control.borrow_mut().replica.probes);
        if !probes.is_empty() {
            tokio::task::spawn_local(probe(Rc::clone(&net), probes));
        }
        let take_over = net.control.borrow_mut().replica.take_over.take();
        if let Some(vrid) = take_over {
            let notice = Notice::TakeOver {
                protocol: PROTOCOL,
                vrid,
            };
            send_notice(&net, &notice, None);
        }
        kick(&net);
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Follows `replication` in the config: the endpoint, the peers and their
/// limits.
fn reconfigure(net: &Rc<Net>) {
    let (settings, socket) = {
        let mut c = net.control.borrow_mut();
        (c.config.replication.clone(), c.replica.new_socket.take())
    };
    let timeout = Duration::from_millis(settings.timeout_ms.max(100));
    if socket.is_none() && *net.settings.borrow() == settings {
        return;
    }
    net.pins.set(
        settings
            .peers
            .iter()
            .map(|p| p.fingerprint.clone())
            .collect(),
    );
    if let Some(socket) = socket {
        let endpoint = net
            .identity
            .server_config(Arc::clone(&net.pins), timeout)
            .and_then(|server| {
                quinn::Endpoint::new(
                    quinn::EndpointConfig::default(),
                    Some(server),
                    socket,
                    Arc::new(quinn::TokioRuntime),
                )
                .map_err(|e| e.to_string())
            });
        match endpoint {
            Ok(endpoint) => {
                if let Some(old) = net.endpoint.replace(Some(endpoint.clone())) {
                    old.close(0u32.into(), b"moved");
                }
                if let Ok(addr) = endpoint.local_addr() {
                    tracing::info!(%addr, fingerprint = net.identity.fingerprint(), "replication listening");
                }
                tokio::task::spawn_local(accept(Rc::clone(net), endpoint));
            }
            Err(e) => tracing::error!("replication: could not start the endpoint: {e}"),
        }
    } else if settings.listen.is_none() {
        if let Some(old) = net.endpoint.take() {
            old.close(0u32.into(), b"replication off");
        }
    }
    // Peers gone, changed or new.
    let wanted: HashMap<&str, &PeerSettings> = settings
        .peers
        .iter()
        .map(|p| (p.fingerprint.as_str(), p))
        .collect();
    let mut links = net.links.borrow_mut();
    links.retain(|fp, link| {
        let keep = wanted.get(fp.as_str()) == Some(&&link.settings);
        if !keep {
            link.stopped.set(true);
            link.wake.notify_one();
            if let Some(conn) = link.conn.take() {
                conn.close(CLOSE_REMOVED.into(), b"peer removed");
            }
            let mut c = net.control.borrow_mut();
            c.replica.node.peer_lost(link.id);
            if let Some(slot) = c.replica.peers.get_mut(link.id) {
                *slot = None;
            }
        }
        keep
    });
    let now = clock_s(net.started);
    for p in &settings.peers {
        if let Some(link) = links.get(&p.fingerprint) {
            link.send.borrow_mut().set_rate(settings.max_bytes_per_s);
            link.recv.borrow_mut().set_rate(settings.max_bytes_per_s);
            continue;
        }
        let id = {
            let mut ids = net.ids.borrow_mut();
            let next = ids.len();
            *ids.entry(p.fingerprint.clone()).or_insert(next)
        };
        let link = Rc::new(Link {
            id,
            settings: p.clone(),
            conn: RefCell::new(None),
            wake: Notify::new(),
            seen: Notify::new(),
            stopped: Cell::new(false),
            send: RefCell::new(Bucket::new(settings.max_bytes_per_s, now)),
            recv: RefCell::new(Bucket::new(settings.max_bytes_per_s, now)),
        });
        {
            let mut c = net.control.borrow_mut();
            let peers = &mut c.replica.peers;
            if peers.len() <= id {
                peers.resize(id + 1, None);
            }
            peers[id] = Some(PeerStatus {
                name: p.label().to_owned(),
                address: p.address.clone(),
                fingerprint: p.fingerprint.clone(),
                state: "connecting",
                since_ms: now_ms(),
                ..PeerStatus::default()
            });
        }
        links.insert(p.fingerprint.clone(), Rc::clone(&link));
        tokio::task::spawn_local(link_loop(Rc::clone(net), link));
    }
    drop(links);
    {
        let mut c = net.control.borrow_mut();
        let limits = edgebox_storage::replication::Limits {
            fetches_per_peer: settings.max_streams_per_peer as usize,
            ..Default::default()
        };
        c.replica.node.set_limits(limits);
    }
    *net.settings.borrow_mut() = settings;
}

fn with_status(net: &Net, id: PeerId, f: impl FnOnce(&mut PeerStatus)) {
    let mut c = net.control.borrow_mut();
    if let Some(Some(s)) = c.replica.peers.get_mut(id) {
        f(s);
    }
}

fn count_error(net: &Net, id: PeerId, e: &NetError) {
    with_status(net, id, |s| {
        *s.errors.entry(e.kind()).or_default() += 1;
        s.last_error = Some(e.to_string());
    });
}

fn set_state(net: &Net, id: PeerId, state: &'static str) {
    with_status(net, id, |s| {
        if s.state != state {
            s.state = state;
            s.since_ms = now_ms();
        }
    });
}

fn timeout(net: &Net) -> Duration {
    Duration::from_millis(net.settings.borrow().timeout_ms.max(100))
}

/// Dials one peer and keeps syncing with it while it is configured.
async fn link_loop(net: Rc<Net>, link: Rc<Link>) {
    let mut backoff = Duration::from_millis(250);
    let mut logged = false;
    while !link.stopped.get() {
        match connect(&net, &link).await {
            Ok(None) => continue,
            Ok(Some(conn)) => {
                backoff = Duration::from_millis(250);
                logged = false;
                tracing::info!(peer = link.settings.label(), address = %conn.remote_address(), "replication peer connected");
                set_state(&net, link.id, "connected");
                *link.conn.borrow_mut() = Some(conn.clone());
                // Changes made here while this link was down were announced
                // to no one: the peer is asked to pull.
                let (root, clock) = {
                    let c = net.control.borrow();
                    (
                        c.replica.node.catalog.root(),
                        c.replica.node.catalog.clock(),
                    )
                };
                let news = Notice::Changed {
                    protocol: PROTOCOL,
                    root,
                    clock,
                    items: Vec::new(),
                };
                send_notice(&net, &news, Some(link.id));
                sync_while_up(&net, &link, &conn).await;
                link.conn.borrow_mut().take();
                net.control.borrow_mut().replica.node.peer_lost(link.id);
                if !link.stopped.get() {
                    set_state(&net, link.id, "unreachable");
                }
            }
            Err(e) => {
                let refused = e.to_string().contains("fingerprint");
                set_state(
                    &net,
                    link.id,
                    if refused { "refused" } else { "unreachable" },
                );
                count_error(
                    &net,
                    link.id,
                    &if refused {
                        NetError::Refused(e.to_string())
                    } else {
                        e
                    },
                );
                if !logged {
                    let err = net.control.borrow().replica.peers[link.id]
                        .as_ref()
                        .and_then(|s| s.last_error.clone())
                        .unwrap_or_default();
                    tracing::warn!(peer = link.settings.label(), address = %link.settings.address, fingerprint = %link.settings.fingerprint, "replication peer not reachable: {err}");
                    logged = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = link.wake.notified() => {}
                    _ = link.seen.notified() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// A connection to the peer, or `None` when it turned out to be up while
/// this dial waited: dial again at once.
async fn connect(net: &Rc<Net>, link: &Link) -> Result<Option<quinn::Connection>, NetError> {
    let endpoint = net
        .endpoint
        .borrow()
        .clone()
        .ok_or_else(|| NetError::Link("no endpoint (replication.listen)".into()))?;
    let limit = timeout(net);
    let addr: SocketAddr = timed(
        limit,
        tokio::net::lookup_host(link.settings.address.clone()),
    )
    .await?
    .map_err(link_err)?
    .next()
    .ok_or_else(|| NetError::Link(format!("{} resolves to nothing", link.settings.address)))?;
    let config = net
        .identity
        .client_config(&link.settings.fingerprint, limit)
        .map_err(NetError::Link)?;
    let connecting = endpoint
        .connect_with(config, addr, SERVER_NAME)
        .map_err(link_err)?;
    // A peer that starts after this one drops the first Initial packets
    // (nothing listens yet), and the dial would wait out the timeout; its
    // own dial to this appliance shows it is up, and the dial starts over.
    tokio::select! {
        r = timed(limit, connecting) => r?.map(Some).map_err(link_err),
        _ = link.seen.notified() => Ok(None),
    }
}

async fn sync_while_up(net: &Rc<Net>, link: &Rc<Link>, conn: &quinn::Connection) {
    // A peer that restarted never answers on the old connection (its
    // stateless resets are not recognised), and QUIC gives up on it only
    // after its probe timeouts have backed off several times (seen: more
    // than 20 s): two syncs in a row that time out end the connection, and
    // the link dials anew (at once when the peer dials in).
    let mut timeouts = 0;
    loop {
        match pull(net, link, conn).await {
            Ok(()) => {
                timeouts = 0;
                with_status(net, link.id, |s| s.last_sync_ms = Some(now_ms()));
                kick(net);
            }
            Err(e) => {
                tracing::warn!(peer = link.settings.label(), "replication sync failed: {e}");
                count_error(net, link.id, &e);
                if matches!(e, NetError::Protocol(_)) {
                    conn.close(CLOSE_BAD_MESSAGE.into(), b"protocol");
                }
                if matches!(e, NetError::Timeout) {
                    timeouts += 1;
                    if timeouts >= 2 {
                        tracing::warn!(
                            peer = link.settings.label(),
                            "replication: the peer did not answer twice in a row; dialling it again"
                        );
                        conn.close(CLOSE_TIMED_OUT.into(), b"timed out");
                    }
                } else {
                    timeouts = 0;
                }
                if conn.close_reason().is_some() {
                    return;
                }
            }
        }
        let interval = Duration::from_millis(net.settings.borrow().sync_interval_ms);
        tokio::select! {
            _ = link.wake.notified() => {}
            _ = tokio::time::sleep(interval) => {}
            _ = conn.closed() => return,
        }
        if link.stopped.get() {
            return;
        }
    }
}

/// One sync: what the peer has newer, adopted.
async fn pull(net: &Rc<Net>, link: &Link, conn: &quinn::Connection) -> Result<(), NetError> {
    let wanted = if net.settings.borrow().sync_config {
        |_: &str| true
    } else {
        sites_only
    };
    let (mut pull, first) = Pull::start_with(wanted);
    let mut next = Some(first);
    while let Some(request) = next.take() {
        let response: Response = ask(net, link, conn, &request).await?;
        let step = {
            let c = net.control.borrow();
            pull.handle(response, &c.replica.node.catalog)
        }
        .map_err(|e| match e {
            edgebox_storage::replication::SyncError::Refused(m) => NetError::Refused(m),
            other => NetError::Protocol(other.to_string()),
        })?;
        adopt(net, link.id, step.items);
        next = step.request;
    }
    if let Some(g) = pull.glimpse() {
        let mut c = net.control.borrow_mut();
        c.replica.node.synced(link.id, g.clone());
    }
    Ok(())
}

fn adopt(net: &Net, peer: PeerId, items: Vec<Item>) {
    let sync_config = net.settings.borrow().sync_config;
    let mut c = net.control.borrow_mut();
    for item in items {
        if !acceptable(&item) || (!sync_config && !sites_only(&item.key)) {
            tracing::debug!(
                key = item.key,
                "replication: ignored an item this appliance does not take"
            );
            continue;
        }
        c.replica.adopt(item, peer);
    }
}

/// Sends `request` on a stream of its own and reads the answer.
async fn ask(
    net: &Net,
    link: &Link,
    conn: &quinn::Connection,
    request: &Request,
) -> Result<Response, NetError> {
    let limit = timeout(net);
    let (mut send, mut recv) = timed(limit, conn.open_bi()).await?.map_err(link_err)?;
    let bytes = wire::encode(request);
    throttle(&link.send, bytes.len(), net.started).await;
    timed(limit, send.write_all(&bytes))
        .await?
        .map_err(link_err)?;
    let _ = send.finish();
    let body = read_message(&mut recv, limit).await?;
    throttle(&link.recv, body.len(), net.started).await;
    with_status(net, link.id, |s| {
        s.bytes_sent += bytes.len() as u64;
        s.bytes_received += body.len() as u64 + 4;
    });
    wire::decode(&body).map_err(|e| NetError::Protocol(e.to_string()))
}

async fn read_message(recv: &mut quinn::RecvStream, limit: Duration) -> Result<Vec<u8>, NetError> {
    let mut prefix = [0u8; 4];
    timed(limit, recv.read_exact(&mut prefix))
        .await?
        .map_err(link_err)?;
    let n = wire::length(prefix).map_err(|e| NetError::Protocol(e.to_string()))?;
    let mut body = vec![0u8; n];
    timed(limit, recv.read_exact(&mut body))
        .await?
        .map_err(link_err)?;
    Ok(body)
}

/// Waits until the bucket lets `n` bytes go.
async fn throttle(bucket: &RefCell<Bucket>, n: usize, started: Instant) {
    loop {
        let wait = bucket.borrow_mut().take(n, clock_s(started));
        match wait {
            None => return,
            Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
        }
    }
}

// ------------------------------------------------------------- serving

async fn accept(net: Rc<Net>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let net = Rc::clone(&net);
        tokio::task::spawn_local(async move {
            let addr = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve(net, conn).await,
                Err(e) => tracing::warn!(peer = %addr, "replication: refused a connection: {e}"),
            }
        });
    }
}

/// The peer a connection's client certificate names.
fn peer_of(net: &Net, conn: &quinn::Connection) -> Option<Rc<Link>> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()?;
    let fp = fingerprint_of(certs.first()?)?;
    net.links.borrow().get(&fp).cloned()
}

async fn serve(net: Rc<Net>, conn: quinn::Connection) {
    let Some(link) = peer_of(&net, &conn) else {
        tracing::warn!(peer = %conn.remote_address(), "replication: a connection from a peer no longer configured");
        conn.close(CLOSE_REMOVED.into(), b"not a peer");
        return;
    };
    if link.conn.borrow().is_none() {
        link.seen.notify_one();
    }
    loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let (net, link, conn) = (Rc::clone(&net), Rc::clone(&link), conn.clone());
                    tokio::task::spawn_local(async move {
                        if let Err(e) = answer(&net, &link, &conn, send, recv).await {
                            tracing::debug!(peer = link.settings.label(), "replication request: {e}");
                        }
                    });
                }
                Err(_) => return,
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    let (net, link, conn) = (Rc::clone(&net), Rc::clone(&link), conn.clone());
                    tokio::task::spawn_local(async move { notice(&net, &link, &conn, recv).await });
                }
                Err(_) => return,
            },
        }
    }
}

/// A message that does not decode ends the connection it came on (only).
fn bad_message(link: &Link, conn: &quinn::Connection, e: impl std::fmt::Display) -> NetError {
    tracing::warn!(peer = link.settings.label(), address = %conn.remote_address(), "replication: closing a connection over a bad message: {e}");
    conn.close(CLOSE_BAD_MESSAGE.into(), b"bad message");
    NetError::Protocol(e.to_string())
}

async fn answer(
    net: &Rc<Net>,
    link: &Link,
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), NetError> {
    let limit = timeout(net);
    let body = match read_message(&mut recv, limit).await {
        Err(NetError::Protocol(e)) => return Err(bad_message(link, conn, e)),
        other => other?,
    };
    throttle(&link.recv, body.len(), net.started).await;
    let request = match wire::decode_request(&body) {
        Ok(r) => r,
        Err(wire::DecodeError::Protocol(v)) => {
            let r = Response::Error {
                message: format!("protocol {v}; this appliance speaks {PROTOCOL}"),
            };
            return write_response(net, link, &mut send, &r).await;
        }
        Err(e) => return Err(bad_message(link, conn, e)),
    };
    let response = {
        let c = net.control.borrow();
        let index = c.replica.index(&c.content);
        let blobs = c.content.blobs();
        let size = |h: &Hash| std::fs::metadata(blobs.path(h)).ok().map(|m| m.len());
        c.replica.node.serve(&request, &index, &size)
    };
    match (request, response) {
        (Request::Blob { hash, offset, .. }, Response::Blob { total, .. }) => {
            send_blob(net, link, &mut send, hash, offset, total).await
        }
        (_, response) => write_response(net, link, &mut send, &response).await,
    }
}

async fn write_response(
    net: &Net,
    link: &Link,
    send: &mut quinn::SendStream,
    response: &Response,
) -> Result<(), NetError> {
    let bytes = wire::encode(response);
    throttle(&link.send, bytes.len(), net.started).await;
    timed(timeout(net), send.write_all(&bytes))
        .await?
        .map_err(link_err)?;
    with_status(net, link.id, |s| s.bytes_sent += bytes.len() as u64);
    let _ = send.finish();
    Ok(())
}

/// Runs disk work off the control thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetError::Disk(e.to_string()))
}

/// The outboard of a blob on disk and whether its bytes match its name.
fn read_outboard(
    path: std::path::PathBuf,
    hash: Hash,
    total: u64,
) -> std::io::Result<(Vec<Cv>, bool)> {
    let file = std::fs::File::open(path)?;
    let cvs = verified::outboard(std::io::BufReader::with_capacity(CHUNK, file), total)?;
    let sound = verified::groups(total) == 0 || verified::check_outboard(&hash, total, &cvs);
    Ok((cvs, sound))
}

async fn send_blob(
    net: &Rc<Net>,
    link: &Link,
    send: &mut quinn::SendStream,
    hash: Hash,
    offset: u64,
    total: u64,
) -> Result<(), NetError> {
    let path = net.control.borrow().content.blobs().path(&hash);
    // A blob of more than one group is checked whole while its outboard is
    // made: a damaged one is not sent (it is put aside and repaired). A
    // smaller one is sent as it is; the receiver checks it.
    let (cvs, sound) = {
        let path = path.clone();
        blocking(move || read_outboard(path, hash, total))
            .await?
            .map_err(|e| NetError::Disk(e.to_string()))?
    };
    if !sound {
        tracing::error!(blob = %hash, "replication: this appliance's copy of a blob is damaged; putting it aside to fetch it again");
        lost(net, hash).await;
        let r = Response::Error {
            message: format!("blob {hash} is damaged here"),
        };
        return write_response(net, link, send, &r).await;
    }
    let limit = timeout(net);
    let mut head = wire::encode(&Response::Blob {
        size: total - offset,
        total,
    });
    for cv in &cvs {
        head.extend_from_slice(cv);
    }
    throttle(&link.send, head.len(), net.started).await;
    timed(limit, send.write_all(&head))
        .await?
        .map_err(link_err)?;
    let file = Arc::new(std::fs::File::open(&path).map_err(|e| NetError::Disk(e.to_string()))?);
    let mut at = offset;
    while at < total {
        let n = CHUNK.min((total - at) as usize);
        let chunk = {
            let file = Arc::clone(&file);
            blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; n];
                file.read_exact_at(&mut buf, at).map(|()| buf)
            })
            .await?
            .map_err(|e| NetError::Disk(e.to_string()))?
        };
        throttle(&link.send, n, net.started).await;
        timed(limit, send.write_all(&chunk))
            .await?
            .map_err(link_err)?;
        at += n as u64;
        with_status(net, link.id, |s| s.bytes_sent += n as u64);
    }
    let _ = send.finish();
    Ok(())
}

/// This appliance's copy of `hash` is damaged: put it aside and fetch it
/// again from the peers.
async fn lost(net: &Rc<Net>, hash: Hash) {
    let blobs = net.control.borrow().content.blobs().clone();
    let damaged = blocking(move || match blobs.rehash(&hash) {
        Ok(actual) if actual != hash => blobs.quarantine(&hash).map(|()| true),
        Ok(_) => Ok(false),
        Err(e) => Err(e),
    })
    .await;
    match damaged {
        Ok(Ok(true)) => {
            net.control.borrow_mut().replica.repair(&[hash]);
            kick(net);
        }
        Ok(Ok(false)) => {
            tracing::info!(blob = %hash, "replication: a peer reported this blob damaged, but it checks out here")
        }
        Ok(Err(e)) => tracing::error!(blob = %hash, "replication: could not check a blob: {e}"),
        Err(e) => tracing::error!(blob = %hash, "replication: could not check a blob: {e}"),
    }
}

async fn notice(
    net: &Rc<Net>,
    link: &Rc<Link>,
    conn: &quinn::Connection,
    mut recv: quinn::RecvStream,
) {
    let body = match read_message(&mut recv, timeout(net)).await {
        Ok(b) => b,
        Err(NetError::Protocol(e)) => {
            bad_message(link, conn, e);
            return;
        }
        Err(_) => return,
    };
    throttle(&link.recv, body.len(), net.started).await;
    with_status(net, link.id, |s| s.bytes_received += body.len() as u64 + 4);
    let notice: Notice = match wire::decode(&body) {
        Ok(n) => n,
        // A notice of a kind this version does not know (a newer peer,
        // mid-update) is skipped; anything else is a bad message.
        Err(_) if is_tagged(&body) => {
            tracing::debug!(
                peer = link.settings.label(),
                "replication: skipping a notice of an unknown kind"
            );
            return;
        }
        Err(e) => {
            bad_message(link, conn, e);
            return;
        }
    };
    if notice.protocol() != PROTOCOL {
        return;
    }
    match notice {
        Notice::Changed { items, .. } => {
            if items
                .iter()
                .any(|i| i.version.tiebreak != i.value.tiebreak())
            {
                bad_message(link, conn, "an item whose version does not fit its value");
                return;
            }
            let carried = !items.is_empty();
            adopt(net, link.id, items);
            if !carried {
                link.wake.notify_one();
            }
            kick(net);
        }
        Notice::TakeOver { vrid, .. } => {
            let ran = net.control.borrow().shared.failover.take_over(vrid);
            if !ran {
                tracing::warn!(peer = link.settings.label(), vrid, "replication: the peer asks this appliance to take over a virtual router it does not run");
            }
        }
        Notice::Damaged { hash, .. } => {
            tracing::warn!(peer = link.settings.label(), blob = %hash, "replication: a peer says this appliance sent it a damaged blob");
            lost(net, hash).await;
        }
    }
}

/// How long a peer gets to answer a probe.
const PROBE_LIMIT: Duration = Duration::from_millis(500);

/// Asks the connected peers for their digest, one after the other; whether
/// one answered within [`PROBE_LIMIT`], told to each of `probes`.
async fn probe(net: Rc<Net>, probes: Vec<tokio::sync::oneshot::Sender<bool>>) {
    let links: Vec<(Rc<Link>, quinn::Connection)> = net
        .links
        .borrow()
        .values()
        .filter_map(|l| Some((Rc::clone(l), l.conn.borrow().clone()?)))
        .collect();
    let mut alive = false;
    for (link, conn) in &links {
        let digest = Request::Digest { protocol: PROTOCOL };
        if matches!(
            timed(PROBE_LIMIT, ask(&net, link, conn, &digest)).await,
            Ok(Ok(_))
        ) {
            alive = true;
            break;
        }
    }
    for p in probes {
        let _ = p.send(alive);
    }
}

/// Whether `body` is a JSON object with a string `type` (a message of some
/// kind, known or not).
fn is_tagged(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v.get("type").is_some_and(serde_json::Value::is_string))
}

/// Pushes the changes made here to every connected peer.
fn announce(net: &Rc<Net>) {
    let (items, root, clock) = {
        let mut c = net.control.borrow_mut();
        let items = std::mem::take(&mut c.replica.announce);
        (
            items,
            c.replica.node.catalog.root(),
            c.replica.node.catalog.clock(),
        )
    };
    if items.is_empty() {
        return;
    }
    let notice = Notice::Changed {
        protocol: PROTOCOL,
        root,
        clock,
        items,
    };
    send_notice(net, &notice, None);
}

/// Sends `notice` to `only` that peer, or to every connected one.
fn send_notice(net: &Rc<Net>, notice: &Notice, only: Option<PeerId>) {
    let bytes = Rc::new(wire::encode(notice));
    for link in net.links.borrow().values() {
        if only.is_some_and(|id| id != link.id) {
            continue;
        }
        let Some(conn) = link.conn.borrow().clone() else {
            continue;
        };
        let (net, link, bytes) = (Rc::clone(net), Rc::clone(link), Rc::clone(&bytes));
        tokio::task::spawn_local(async move {
            let limit = timeout(&net);
            let sent = async {
                let mut send = timed(limit, conn.open_uni()).await?.map_err(link_err)?;
                throttle(&link.send, bytes.len(), net.started).await;
                timed(limit, send.write_all(&bytes))
                    .await?
                    .map_err(link_err)?;
                let _ = send.finish();
                Ok::<_, NetError>(())
            };
            match sent.await {
                Ok(()) => with_status(&net, link.id, |s| s.bytes_sent += bytes.len() as u64),
                Err(e) => count_error(&net, link.id, &e),
            }
        });
    }
}

// ------------------------------------------------------------- fetching

/// Starts the work the node asks for (fetches, applying what is ready),
/// unless it is under way already (then it goes round once more).
pub fn kick(net: &Rc<Net>) {
    if net.working.replace(true) {
        net.again.set(true);
        return;
    }
    tokio::task::spawn_local(work(Rc::clone(net)));
}

async fn work(net: Rc<Net>) {
    loop {
        net.again.set(false);
        let fetches: Vec<Fetch> = {
            let mut c = net.control.borrow_mut();
            let c = &mut *c;
            let (node, index) = c.replica.node_and_index(&c.content);
            let mut out = Vec::new();
            while let Some(f) = node.poll_fetch(now_ms(), &index) {
                out.push(f);
            }
            out
        };
        for f in fetches {
            tokio::task::spawn_local(fetch(Rc::clone(&net), f));
        }
        let event = {
            let mut c = net.control.borrow_mut();
            let c = &mut *c;
            let (node, index) = c.replica.node_and_index(&c.content);
            node.poll_event(&index)
        };
        use edgebox_storage::replication::Event;
        match event {
            Some(Event::Ready(item)) => super::apply::apply(&net.control, item).await,
            // Two appliances' first values of a key (their own ticket
            // secrets) meeting is no one's change lost.
            Some(Event::Conflict { key, winner, .. }) if winner.lamport == 0 => {
                tracing::info!(key, "replication: took the peers' initial value");
            }
            Some(Event::Conflict { key, winner, loser }) => {
                tracing::warn!(key, generation = winner.lamport, winner = winner.tiebreak, loser = loser.tiebreak, "replication: two changes of one key at once; the same one wins on every appliance, the other is dropped");
                net.control.borrow_mut().replica.counters.conflicts += 1;
            }
            Some(Event::Corrupt { peer, hash }) => {
                tracing::warn!(peer, blob = %hash, "replication: refused a blob whose bytes do not match its hash; asking another peer");
                let notice = Notice::Damaged {
                    protocol: PROTOCOL,
                    hash,
                };
                send_notice(&net, &notice, Some(peer));
            }
            None if net.again.get() => {}
            None => break,
        }
    }
    net.working.set(false);
}

fn link_by_id(net: &Net, id: PeerId) -> Option<Rc<Link>> {
    net.links.borrow().values().find(|l| l.id == id).cloned()
}

async fn fetch(net: Rc<Net>, f: Fetch) {
    let link = link_by_id(&net, f.peer);
    let conn = link.as_ref().and_then(|l| l.conn.borrow().clone());
    let outcome = match link {
        None => Err(NetError::Link("peer removed".into())),
        Some(link) => match conn {
            None => Err(NetError::Link("not connected".into())),
            Some(conn) => {
                let r = fetch_blob(&net, &link, &conn, f).await;
                if let Err(e) = &r {
                    count_error(&net, link.id, e);
                } else {
                    with_status(&net, link.id, |s| s.blobs_received += 1);
                }
                r
            }
        },
    };
    let fetched = match outcome {
        Ok(()) => Fetched::Done,
        Err(NetError::Corrupt) => Fetched::Corrupt,
        Err(e) => {
            tracing::debug!(blob = %f.hash, peer = f.peer, "replication fetch failed: {e}");
            Fetched::Failed
        }
    };
    net.control
        .borrow_mut()
        .replica
        .node
        .fetched(f, fetched, now_ms());
    kick(&net);
}

fn put_error(e: PutError) -> NetError {
    match e {
        PutError::Corrupt(_) | PutError::Mismatch { .. } => NetError::Corrupt,
        PutError::Io(e) => NetError::Disk(e.to_string()),
    }
}

async fn fetch_blob(
    net: &Rc<Net>,
    link: &Link,
    conn: &quinn::Connection,
    f: Fetch,
) -> Result<(), NetError> {
    let limit = timeout(net);
    let request = Request::Blob {
        protocol: PROTOCOL,
        hash: f.hash,
        offset: f.offset,
    };
    let (mut send, mut recv) = timed(limit, conn.open_bi()).await?.map_err(link_err)?;
    let bytes = wire::encode(&request);
    timed(limit, send.write_all(&bytes))
        .await?
        .map_err(link_err)?;
    let _ = send.finish();
    let body = read_message(&mut recv, limit).await?;
    let (size, total) = match wire::decode(&body).map_err(|e| NetError::Protocol(e.to_string()))? {
        Response::Blob { size, total } => (size, total),
        Response::Error { message } => return Err(NetError::Refused(message)),
        _ => return Err(NetError::Protocol("not a blob".into())),
    };
    if f.offset > total || size != total - f.offset {
        return Err(NetError::Protocol(format!(
            "{size} bytes from {} of a blob of {total}",
            f.offset
        )));
    }
    let mut outboard = vec![0u8; 32 * verified::groups(total) as usize];
    timed(limit, recv.read_exact(&mut outboard))
        .await?
        .map_err(link_err)?;
    let cvs: Vec<Cv> = outboard
        .chunks_exact(32)
        .map(|c| {
            let mut cv = [0u8; 32];
            cv.copy_from_slice(c);
            cv
        })
        .collect();
    let blobs = net.control.borrow().content.blobs().clone();
    let hash = f.hash;
    let mut partial = blocking(move || blobs.resume(hash, total, cvs))
        .await?
        .map_err(put_error)?;
    if partial.offset() != f.offset {
        // What was kept changed since the request was made (checked again,
        // or moved on by another transfer): ask again from there.
        return Err(NetError::Link(format!(
            "resumable from {}, not {}",
            partial.offset(),
            f.offset
        )));
    }
    let mut pending: Vec<u8> = Vec::with_capacity(CHUNK * 4);
    let mut received = 0u64;
    while received < size {
        let chunk = timed(limit, recv.read_chunk(CHUNK, true))
            .await?
            .map_err(link_err)?
            .ok_or_else(|| {
                NetError::Link(format!("the stream ended after {received} of {size} bytes"))
            })?;
        throttle(&link.recv, chunk.bytes.len(), net.started).await;
        received += chunk.bytes.len() as u64;
        with_status(net, link.id, |s| {
            s.bytes_received += chunk.bytes.len() as u64
        });
        pending.extend_from_slice(&chunk.bytes);
        if pending.len() >= CHUNK * 4 || received >= size {
            let data = std::mem::take(&mut pending);
            let (p, r) = blocking(move || {
                let r = partial.write(&data);
                (partial, r)
            })
            .await?;
            partial = p;
            r.map_err(put_error)?;
            pending = Vec::with_capacity(CHUNK * 4);
        }
    }
    blocking(move || partial.finish()).await?.map_err(put_error)
}
