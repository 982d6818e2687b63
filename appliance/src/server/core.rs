//! One data-plane core: its listeners, its connections, its backend pool, its
//! view of the current snapshot. Nothing here is shared with another core.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::CoreStats;
use crate::proxy::Services;
use crate::rt::{self, Either};
use crate::snapshot::{ListenerKey, Shared, Snapshot};
use crate::upstream::{CoreView, Registry};

/// How often a core looks at the shared state (shutdown flag, listener set).
/// Cores are never woken from another thread (see `docs/architecture.md`), so
/// they poll.
const POLL_SHARED: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct Core {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub stats: Arc<CoreStats>,
    /// What requests on this core use (passed in to the proxy).
    pub services: Rc<Services>,
    /// What this core knows of backends, across snapshots.
    registry: Registry,
    current: RefCell<Rc<CoreView>>,
    /// Connections open on this core by client address.
    pub per_address: super::admission::PerAddress,
}

impl Core {
    fn new(id: usize, shared: Arc<Shared>) -> Self {
        let snap = shared.snapshot.load_full();
        let stats = Arc::clone(&shared.stats[id]);
        let registry = Registry::new(id, shared.stats.len(), Arc::clone(&stats));
        let view = registry.view(snap);
        let seed = (id as u64) ^ crate::clock::now_us().rotate_left(17);
        Self {
            id,
            services: Rc::new(Services {
                core: id,
                stats: Arc::clone(&stats),
                conns: Rc::default(),
                cache: crate::static_files::cache::BlobCache::new(shared.blobs.clone()),
                rng: std::cell::RefCell::new(crate::balance::Rng::new(seed)),
                spare_heads: std::cell::RefCell::default(),
                listeners: std::cell::RefCell::default(),
                sites: std::cell::RefCell::default(),
            }),
            stats,
            registry,
            current: RefCell::new(Rc::new(view)),
            per_address: Default::default(),
            shared,
        }
    }

    /// The latest published snapshot, as this core serves it. A request
    /// keeps the view it started with; the check is a pointer comparison,
    /// with no lock and no shared reference-count traffic unless the
    /// snapshot changed.
    pub fn current(&self) -> Rc<CoreView> {
        let latest = self.shared.snapshot.load();
        let mut current = self.current.borrow_mut();
        if !Arc::ptr_eq(&current.snap, &latest) {
            *current = Rc::new(self.registry.view(arc_swap::Guard::into_inner(latest)));
        }
        Rc::clone(&current)
    }
}

/// What a core's tasks wait on to stop.
struct Signals {
    /// Closed when the core stops.
    stop: async_channel::Receiver<()>,
    /// Every connection holds a clone; the core's copy ends when all are gone.
    alive: async_channel::Sender<()>,
}

/// Runs one core until shutdown: accepts on its sockets, follows listener
/// changes, serves connections, then drains them for up to the grace period.
pub async fn run(id: usize, sockets: Vec<(ListenerKey, OwnedFd)>, shared: Arc<Shared>) {
    let core = Rc::new(Core::new(id, shared));
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let (alive_tx, alive_rx) = async_channel::bounded::<()>(1);
    let signals = Signals {
        stop: stop_rx,
        alive: alive_tx,
    };
    // Each listener's accept loop stops when its sender here is dropped.
    let mut listening: HashMap<ListenerKey, Listening> = HashMap::new();
    for (key, fd) in sockets {
        listening.insert(key.clone(), start_listener(&core, key, fd, &signals));
    }
    let mut seen = core.current().snap.generations;
    let mut held = false;
    while !core.shared.shutting_down.load(Ordering::Acquire) {
        // The failover's health tracking tells a stalled core by this.
        core.shared.stats[id].alive(crate::clock::now_ms());
        rt::sleep(POLL_SHARED).await;
        let current = core.current();
        if current.snap.generations != seen {
            seen = current.snap.generations;
            follow_listeners(&core, &current.snap, &mut listening, &signals);
            // New listeners start as the others are.
            held = !core.shared.hold_accepts.load(Ordering::Acquire);
        }
        let hold = core.shared.hold_accepts.load(Ordering::Acquire);
        if hold != held {
            held = hold;
            for l in listening.values() {
                l.hold(hold);
            }
        }
    }
    stop_tx.close();
    drop(listening);
    let Signals { alive, .. } = signals;
    drop(alive);
    let grace = core.current().snap.client.shutdown_grace;
    if rt::timeout(grace, alive_rx.recv()).await.is_none() {
        tracing::warn!(
            core = id,
            "connections still open after the shutdown grace period; closing them"
        );
    }
}

/// A listener being accepted on: its accept loop stops when `stop` is
/// dropped; `socket` is a second descriptor of the same socket, for its
/// options.
struct Listening {
    _stop: async_channel::Sender<()>,
    socket: Option<socket2::Socket>,
}

impl Listening {
    /// Drops (`true`) or again takes (`false`) new connections' SYNs: a
    /// socket filter that accepts nothing, checked by the kernel before a
    /// SYN makes a connection. The client hears nothing and sends its SYN
    /// again about a second later, by then to the failover's new master.
    fn hold(&self, hold: bool) {
        let Some(socket) = &self.socket else {
            return;
        };
        const DROP_ALL: [libc::sock_filter; 1] = [libc::sock_filter {
            code: 0x06, // BPF_RET | BPF_K
            jt: 0,
            jf: 0,
            k: 0,
        }];
        let done = if hold {
            socket.attach_filter(&DROP_ALL)
        } else {
            socket.detach_filter()
        };
        if let Err(e) = done {
            // ENOENT: no filter to detach (a listener added while holding).
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::warn!("holding new connections: {e}");
            }
        }
    }
}

/// Stops accepting on listeners the snapshot no longer has and starts
/// accepting on new ones, with the sockets the control plane bound for them.
fn follow_listeners(
    core: &Rc<Core>,
    snap: &Snapshot,
    listening: &mut HashMap<ListenerKey, Listening>,
    signals: &Signals,
) {
    let wanted: Vec<ListenerKey> = snap.config.listeners.iter().map(ListenerKey::of).collect();
    listening.retain(|key, _| wanted.contains(key));
    for key in wanted {
        if listening.contains_key(&key) {
            continue;
        }
        let socket = core
            .shared
            .new_sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(core.id, key.clone()));
        match socket {
            Some(fd) => {
                let stop = start_listener(core, key.clone(), fd, signals);
                listening.insert(key, stop);
            }
            None => tracing::error!(
                core = core.id,
                listener = key.name,
                "no socket was bound for this listener"
            ),
        }
    }
}

fn start_listener(core: &Rc<Core>, key: ListenerKey, fd: OwnedFd, signals: &Signals) -> Listening {
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let options = fd
        .try_clone()
        .map(socket2::Socket::from)
        .map_err(|e| tracing::error!(core = core.id, "a listener's second descriptor: {e}"))
        .ok();
    let socket = rt::adopt_listener(fd);
    rt::spawn(accept_loop(
        Rc::clone(core),
        Rc::from(key.name),
        socket,
        stop_rx,
        signals.stop.clone(),
        signals.alive.clone(),
    ));
    Listening {
        _stop: stop_tx,
        socket: options,
    }
}

async fn accept_loop(
    core: Rc<Core>,
    listener: Rc<str>,
    socket: rt::TcpListener,
    removed: async_channel::Receiver<()>,
    stop: async_channel::Receiver<()>,
    alive: async_channel::Sender<()>,
) {
    loop {
        let ended = rt::race(removed.recv(), stop.recv());
        match rt::race(socket.accept(), ended).await {
            Either::Right(_) => return,
            Either::Left(Ok(stream)) => rt::spawn(super::conn::serve(
                Rc::clone(&core),
                Rc::clone(&listener),
                stream,
                stop.clone(),
                alive.clone(),
            )),
            Either::Left(Err(e)) => {
                // Out of file descriptors or memory: back off instead of spinning.
                tracing::error!(core = core.id, "accept failed: {e}");
                rt::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
