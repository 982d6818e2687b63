//! The control-plane thread: one tokio current-thread runtime, apart from the
//! data-plane cores, so an overloaded data plane cannot starve it. It serves
//! the admin API ([`crate::admin`]), handles signals and rotates session-ticket
//! keys; health checks, replication and failover will live here too.

pub mod health;
pub mod maintenance;
pub mod state;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::snapshot::Shared;
pub use state::{ApplyError, Control};

/// What the control thread starts with.
#[derive(Debug)]
pub struct Start {
    pub control: Control,
    /// This appliance's replication identity.
    pub identity: Arc<crate::replication::Identity>,
    pub admin_listener: std::net::TcpListener,
    pub admin_tls: Arc<rustls::ServerConfig>,
    pub admin_rebind: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpListener>,
}

/// How often the content store is garbage collected, and the grace period a
/// new, not yet published blob gets.
const GC_EVERY: Duration = Duration::from_secs(3600);

/// Starts the thread and returns once its signal handlers are installed and
/// the admin listener is being served, so a SIGTERM from then on is a graceful
/// shutdown, never the default kill.
pub fn start(start: Start) -> std::io::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<std::io::Result<()>>(1);
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, control_loop(start, ready_tx));
        })?;
    ready_rx.recv().unwrap_or_else(|_| {
        Err(std::io::Error::other(
            "control thread exited during start-up",
        ))
    })
}

async fn control_loop(start: Start, ready: std::sync::mpsc::SyncSender<std::io::Result<()>>) {
    let signals =
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
    let (mut term, mut int) = match signals {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let shared = Arc::clone(&start.control.shared);
    let mut control = start.control;
    let first = shared.snapshot.load_full();
    control.health.follow(&first);
    let control = Rc::new(RefCell::new(control));
    let admin = crate::admin::serve(
        Rc::clone(&control),
        start.admin_listener,
        start.admin_tls,
        start.admin_rebind,
    );
    let admin = match admin {
        Ok(fut) => fut,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    tokio::task::spawn_local(admin);
    tokio::task::spawn_local(crate::discovery::watch(Rc::clone(&control)));
    crate::replication::net::start(Rc::clone(&control), start.identity);
    let _ = ready.send(Ok(()));
    // Ticket keys follow the clock (a new one each period, the same on
    // every appliance with the same secret).
    let mut rotate = tokio::time::interval(Duration::from_secs(1));
    rotate.tick().await;
    let mut collect = tokio::time::interval(GC_EVERY);
    collect.tick().await;
    // Failover's health tracking: a critical pool without a healthy backend
    // lowers the advertised priority.
    let mut track = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = track.tick() => track_health(&shared),
            _ = term.recv() => begin_shutdown(&shared, "SIGTERM"),
            _ = int.recv() => begin_shutdown(&shared, "SIGINT"),
            _ = rotate.tick() => {
                if let Err(e) = shared.tickets.tick_now() {
                    tracing::error!("{e}");
                }
            },
            _ = collect.tick() => {
                let control = Rc::clone(&control);
                tokio::task::spawn_local(async move {
                    match maintenance::collect_garbage(&control, GC_EVERY).await {
                        Ok(r) if r.removed > 0 => tracing::info!(removed = r.removed, bytes = r.removed_bytes, "garbage collected the store"),
                        Ok(_) | Err(maintenance::MaintenanceError::Busy) => {}
                        Err(e) => tracing::error!("garbage collection failed: {e}"),
                    }
                });
            },
        }
    }
}

/// Tells the failover which of its critical pools have no healthy backend.
fn track_health(shared: &Shared) {
    let critical = shared.failover.critical_pools();
    if critical.is_empty() {
        return;
    }
    let snap = shared.snapshot.load();
    let now = crate::clock::now_ms();
    let unhealthy = critical
        .iter()
        .filter(|name| {
            !snap
                .pools
                .iter()
                .filter(|p| *p.name == ***name)
                .any(|p| p.backends.iter().any(|b| b.shared.serves(now)))
        })
        .map(|name| format!("pool {name} has no healthy backend"))
        .collect();
    shared.failover.set_health(unhealthy);
}

/// Starts a graceful shutdown (signal or admin request); a second one exits
/// at once.
pub fn begin_shutdown(shared: &Shared, why: &str) {
    if shared.shutting_down.swap(true, Ordering::AcqRel) {
        tracing::warn!("{why} again: exiting now without waiting for requests in flight");
        std::process::exit(1);
    }
    let grace = shared.snapshot.load().client.shutdown_grace;
    tracing::info!(
        "{why}: shutting down; no new connections, requests in flight get up to {} ms",
        grace.as_millis()
    );
    // A master hands the virtual addresses over first (priority 0).
    shared.failover.stop();
}
