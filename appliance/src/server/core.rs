//! One data-plane core: its listeners, its connections, its backend pool, its
//! view of the current snapshot. Nothing here is shared with another core.

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::balance::RoundRobin;
use crate::proxy::pool::ConnPool;
use crate::rt::{self, Either};
use crate::snapshot::{Shared, Snapshot};

/// How often a core looks at the shutdown flag. Cores are never woken from
/// another thread (see `docs/architecture.md`), so they poll.
const POLL_SHARED: Duration = Duration::from_millis(50);

/// A snapshot as one core uses it, with the core's own balancer state.
#[derive(Debug)]
pub struct CoreSnapshot {
    pub snap: Arc<Snapshot>,
    /// One balancer per pool, indexed like `snap.pools`.
    pub balancers: RefCell<Vec<RoundRobin>>,
}

impl CoreSnapshot {
    fn new(snap: Arc<Snapshot>, core: usize) -> Self {
        let balancers = (0..snap.pools.len())
            .map(|_| RoundRobin::starting_at(core))
            .collect();
        Self {
            snap,
            balancers: RefCell::new(balancers),
        }
    }
}

#[derive(Debug)]
pub struct Core {
    pub id: usize,
    pub shared: Arc<Shared>,
    current: RefCell<Rc<CoreSnapshot>>,
    pub pool: Rc<ConnPool>,
}

impl Core {
    fn new(id: usize, shared: Arc<Shared>) -> Self {
        let snap = shared.snapshot.load_full();
        Self {
            id,
            current: RefCell::new(Rc::new(CoreSnapshot::new(snap, id))),
            shared,
            pool: Rc::default(),
        }
    }

    /// The latest published snapshot. A request keeps the one it started
    /// with; the check is a pointer comparison, with no lock and no shared
    /// reference-count traffic unless the snapshot changed.
    pub fn current(&self) -> Rc<CoreSnapshot> {
        let latest = self.shared.snapshot.load();
        let mut current = self.current.borrow_mut();
        if !Arc::ptr_eq(&current.snap, &latest) {
            *current = Rc::new(CoreSnapshot::new(
                arc_swap::Guard::into_inner(latest),
                self.id,
            ));
        }
        Rc::clone(&current)
    }
}

/// Runs one core until shutdown: accepts on its sockets, serves connections,
/// then drains them for up to the configured grace period.
pub async fn run(id: usize, sockets: Vec<(usize, OwnedFd)>, shared: Arc<Shared>) {
    let core = Rc::new(Core::new(id, shared));
    // Closing `stop_tx` tells every task on this core to stop; every connection
    // holds an `alive_tx`, so `alive_rx` ends once the last one is gone.
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let (alive_tx, alive_rx) = async_channel::bounded::<()>(1);
    for (listener, fd) in sockets {
        let listener_socket = rt::adopt_listener(fd);
        rt::spawn(accept_loop(
            Rc::clone(&core),
            listener,
            listener_socket,
            stop_rx.clone(),
            alive_tx.clone(),
        ));
    }
    drop(alive_tx);
    while !core.shared.shutting_down.load(Ordering::Acquire) {
        rt::sleep(POLL_SHARED).await;
    }
    stop_tx.close();
    let grace = core.current().snap.client.shutdown_grace;
    if rt::timeout(grace, alive_rx.recv()).await.is_none() {
        tracing::warn!(
            core = id,
            "connections still open after the shutdown grace period; closing them"
        );
    }
}

async fn accept_loop(
    core: Rc<Core>,
    listener: usize,
    socket: rt::TcpListener,
    stop: async_channel::Receiver<()>,
    alive: async_channel::Sender<()>,
) {
    loop {
        match rt::race(socket.accept(), stop.recv()).await {
            Either::Right(_) => return,
            Either::Left(Ok(stream)) => rt::spawn(super::conn::serve(
                Rc::clone(&core),
                listener,
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
