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
            _ = term.recv() => begin_shutdown(&control, "SIGTERM"),
            _ = int.recv() => begin_shutdown(&control, "SIGINT"),
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
/// at once. A failover master first hands the virtual addresses over
/// (make-before-break, [`hand_over`]) and only then stops accepting.
pub fn begin_shutdown(control: &Rc<RefCell<Control>>, why: &str) {
    let shared = {
        let mut c = control.borrow_mut();
        if std::mem::replace(&mut c.stopping, true) {
            tracing::warn!("{why} again: exiting now without waiting for requests in flight");
            std::process::exit(1);
        }
        Arc::clone(&c.shared)
    };
    let master = shared
        .failover
        .status()
        .is_some_and(|s| s.state == crate::failover::machine::State::Master);
    if !master {
        stop_accepting(&shared, why);
        return;
    }
    let (control, why) = (Rc::clone(control), why.to_owned());
    tokio::task::spawn_local(async move {
        let limit = handover_limit(&shared);
        match hand_over(&control, limit).await {
            Ok(true) => tracing::info!("{why}: the peer holds the virtual addresses"),
            Ok(false) => tracing::warn!(
                "{why}: no peer took the virtual addresses within {} ms; releasing them anyway",
                limit.as_millis()
            ),
            Err(e) => tracing::warn!("{why}: no handover: {e}"),
        }
        stop_accepting(&shared, &why);
    });
}

fn stop_accepting(shared: &Shared, why: &str) {
    shared.shutting_down.store(true, Ordering::Release);
    let grace = shared.snapshot.load().client.shutdown_grace;
    tracing::info!(
        "{why}: shutting down; no new connections, requests in flight get up to {} ms",
        grace.as_millis()
    );
    // Whatever is still held goes now (priority 0 tells a backup at once).
    shared.failover.stop();
}

/// How long a shutdown waits for the peer to take over: enough for a
/// preempting backup that was not asked over the replication link (its
/// master-down interval, at most 3 adverts and a skew), plus a margin.
fn handover_limit(shared: &Shared) -> Duration {
    let advert = shared
        .snapshot
        .load()
        .config
        .failover
        .as_ref()
        .map_or(100, |f| u64::from(f.advert_ms));
    Duration::from_millis(5 * advert + 300).min(Duration::from_secs(10))
}

/// A planned handover, make-before-break: this appliance advertises
/// priority 1 (keeping the addresses), asks its replication peers to take
/// over, and waits until one's advert made it let go, or `limit` passes.
/// Whether it was handed over; on `false` this appliance still holds the
/// addresses (at priority 1, until reclaimed or a peer takes them).
pub async fn hand_over(control: &Rc<RefCell<Control>>, limit: Duration) -> Result<bool, String> {
    use crate::failover::machine::State;
    let shared = Arc::clone(&control.borrow().shared);
    let status = shared
        .failover
        .status()
        .ok_or("failover is not configured")?;
    if status.state != State::Master {
        return Err(format!(
            "this appliance is {}, not master",
            serde_json::to_value(status.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        ));
    }
    shared.failover.release()?;
    let until = tokio::time::Instant::now() + limit;
    let mut asked = false;
    loop {
        let Some(s) = shared.failover.status() else {
            return Err("failover stopped".into());
        };
        if s.state != State::Master {
            return Ok(true);
        }
        // The peer is asked once this appliance advertises priority 1, so
        // that its take-over is not undone by an advert of the old one.
        if !asked && s.priority == 1 {
            let mut c = control.borrow_mut();
            c.replica.take_over = Some(s.vrid);
            c.replica.changed.notify_one();
            asked = true;
        }
        if tokio::time::Instant::now() >= until {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
