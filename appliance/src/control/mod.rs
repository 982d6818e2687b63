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
    tokio::task::spawn_local(crate::acme::run::run(Rc::clone(&control)));
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
    let disk = Rc::new(RefCell::new(DiskProbe::default()));
    let data = control.borrow().data.clone();
    let transitions = std::cell::Cell::new(0);
    // For PID 1's trial of a new boot slot: whether this server is healthy.
    let health_file = std::env::var_os(crate::update::HEALTH_ENV).map(std::path::PathBuf::from);
    let mut reported = (0u32, String::new());
    loop {
        tokio::select! {
            _ = track.tick() => {
                track_health(&shared, &disk, &data);
                tell_dead_peer_from_lost_path(&control, &transitions);
                if let Some(path) = &health_file {
                    reported.0 += 1;
                    if reported.0 % 10 == 1 {
                        report_health(&control.borrow(), path, &mut reported.1);
                    }
                }
            },
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

/// Whether this server is what a new boot slot must be before it is kept:
/// running (so its config loaded and its listeners are up), not stopping,
/// and, in a pair, in touch with the peer: failover master or backup, and
/// replication connected to a peer.
pub fn health(c: &Control) -> Result<(), String> {
    use crate::failover::machine::State;
    if c.stopping {
        return Err("shutting down".into());
    }
    let mut missing = Vec::new();
    if let Some(f) = c.shared.failover.status() {
        if let Some(e) = &f.error {
            missing.push(format!("failover stopped: {e}"));
        } else if !matches!(f.state, State::Master | State::Backup) {
            missing.push(format!(
                "failover is {}",
                serde_json::to_value(f.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ));
        }
    }
    let peers: Vec<_> = c.replica.peers.iter().flatten().collect();
    if !peers.is_empty() && !peers.iter().any(|p| p.state == "connected") {
        missing.push("replication: no peer connected".into());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

/// Writes [`health`] to `path` (`ok`, or `waiting: why`) when it changed.
fn report_health(c: &Control, path: &std::path::Path, last: &mut String) {
    let now = match health(c) {
        Ok(()) => "ok\n".to_owned(),
        Err(why) => format!("waiting: {why}\n"),
    };
    if now != *last {
        if let Err(e) = crate::fsutil::write_atomic(path, now.as_bytes(), 0o644) {
            tracing::warn!("{}: {e}", path.display());
        }
        *last = now;
    }
}

/// Failover's health tracking, every 100 ms: whatever keeps this appliance
/// from serving lowers the priority it advertises (docs/failover.md).
fn track_health(shared: &Shared, disk: &Rc<RefCell<DiskProbe>>, data: &std::path::Path) {
    if shared.failover.status().is_none() {
        return;
    }
    let now = crate::clock::now_ms();
    let snap = shared.snapshot.load();
    let mut unhealthy: Vec<String> = shared
        .failover
        .critical_pools()
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
    let beats: Vec<u64> = shared.stats.iter().map(|s| s.alive_ms()).collect();
    unhealthy.extend(stalled_cores(&beats, now, STALLED_MS));
    unhealthy.extend(disk.borrow().problem(now));
    DiskProbe::start(disk, data, now);
    shared.failover.set_health(unhealthy);
}

/// After a takeover because the master's adverts stopped: does the old
/// master still answer over the replication link (a second path between
/// the two)? Then it is alive and only the VRRP path is lost: both may hold
/// the addresses until it heals (settled then by the RFC's rules). Logged
/// and counted; the takeover stands, since a master the LAN cannot reach
/// cannot serve it either.
fn tell_dead_peer_from_lost_path(control: &Rc<RefCell<Control>>, seen: &std::cell::Cell<u64>) {
    use crate::failover::machine::{Reason, State};
    let shared = Arc::clone(&control.borrow().shared);
    let Some(status) = shared.failover.status() else {
        return;
    };
    let count = status.counts.transitions;
    if seen.replace(count) == count {
        return;
    }
    let took_over = status
        .transitions
        .last()
        .is_some_and(|t| t.to == State::Master && t.why == Reason::MasterDown);
    let replicating = !control.borrow().config.replication.peers.is_empty();
    if !took_over || !replicating {
        return;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    {
        let mut c = control.borrow_mut();
        c.replica.probes.push(tx);
        c.replica.changed.notify_one();
    }
    tokio::task::spawn_local(async move {
        match tokio::time::timeout(Duration::from_secs(2), rx).await {
            Ok(Ok(true)) => {
                tracing::warn!("failover: took over because the master's adverts stopped, but it answers over the replication link: the VRRP path between the two is lost, not the peer; both may hold the virtual addresses until it heals");
                shared.failover.vrrp_path_lost();
            }
            _ => tracing::info!(
                "failover: took over; the old master does not answer over the replication link either (down)"
            ),
        }
    });
}

/// A core whose executor has not run its 50 ms housekeeping for this long
/// is stalled (a blocking call, a livelock): it cannot serve.
const STALLED_MS: u64 = 1000;

/// The cores whose last sign of life (`beats`, 0 before the first) is
/// older than `limit_ms`, as reasons.
pub fn stalled_cores(beats: &[u64], now_ms: u64, limit_ms: u64) -> Vec<String> {
    beats
        .iter()
        .enumerate()
        .filter(|&(_, &at)| at != 0 && now_ms.saturating_sub(at) > limit_ms)
        .map(|(core, &at)| format!("core {core} stalled for {} ms", now_ms - at))
        .collect()
}

/// The data disk's health: a small file written, synced and read back
/// about once a second, off the control thread. An I/O error or a file
/// system turned read-only fails it; so does a probe that has not come
/// back for 5 s (a disk that hangs). A full disk does not: serving does not
/// need space, and it has its own alerts.
#[derive(Debug, Default)]
pub struct DiskProbe {
    /// When the probe under way started.
    running_since: Option<u64>,
    last_started: u64,
    /// The last probe's failure.
    failed: Option<String>,
}

const PROBE_EVERY_MS: u64 = 1000;
const PROBE_HANG_MS: u64 = 5000;

impl DiskProbe {
    /// Why the disk fails, if it does.
    pub fn problem(&self, now_ms: u64) -> Option<String> {
        if let Some(since) = self.running_since {
            if now_ms.saturating_sub(since) > PROBE_HANG_MS {
                return Some(format!("data disk not answering for {} ms", now_ms - since));
            }
        }
        self.failed
            .as_ref()
            .map(|e| format!("data disk failing: {e}"))
    }

    fn start(probe: &Rc<RefCell<Self>>, data: &std::path::Path, now_ms: u64) {
        {
            let mut p = probe.borrow_mut();
            if p.running_since.is_some() || now_ms < p.last_started + PROBE_EVERY_MS {
                return;
            }
            p.running_since = Some(now_ms);
            p.last_started = now_ms;
        }
        let (probe, path) = (Rc::clone(probe), data.join(".health-probe"));
        tokio::task::spawn_local(async move {
            let result = tokio::task::spawn_blocking(move || write_and_read(&path))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            let mut p = probe.borrow_mut();
            p.running_since = None;
            p.failed = match result {
                Ok(()) => None,
                Err(e) if e.contains("No space left") => None,
                Err(e) => Some(e),
            };
        });
    }
}

fn write_and_read(path: &std::path::Path) -> Result<(), String> {
    use std::io::Write;
    let stamp = crate::clock::now_ms().to_string();
    let describe = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::fs::File::create(path).map_err(describe)?;
    f.write_all(stamp.as_bytes()).map_err(describe)?;
    f.sync_all().map_err(describe)?;
    let back = std::fs::read_to_string(path).map_err(describe)?;
    if back != stamp {
        return Err(format!(
            "{}: read back other bytes than written",
            path.display()
        ));
    }
    Ok(())
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
    // Held new connections (if configured) are let in again however this
    // ends: handed over, timed out or failed.
    struct Release<'a>(&'a Shared);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.hold_accepts.store(false, Ordering::Release);
        }
    }
    let _release = Release(&shared);
    let hold = shared
        .snapshot
        .load()
        .config
        .failover
        .as_ref()
        .map_or(0, |f| f.handover_hold_ms);
    if hold > 0 {
        // No new connection from now on, and those in their handshake or
        // first request finish with this appliance before the address moves.
        shared.hold_accepts.store(true, Ordering::Release);
        tokio::time::sleep(Duration::from_millis(hold)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_silent_for_longer_than_the_limit_is_stalled() {
        // Core 0 ran 50 ms ago, core 1 1.2 s ago, core 2 never yet.
        let beats = [9_950, 8_800, 0];
        assert_eq!(
            stalled_cores(&beats, 10_000, 1000),
            ["core 1 stalled for 1200 ms"]
        );
        assert!(stalled_cores(&beats, 9_000, 1000).is_empty());
    }

    #[test]
    fn the_disk_probe_reports_errors_and_hangs_but_not_a_full_disk() {
        let mut p = DiskProbe::default();
        assert_eq!(p.problem(0), None);
        p.running_since = Some(1000);
        assert_eq!(p.problem(6000), None, "5 s is still patience");
        assert_eq!(
            p.problem(6001).as_deref(),
            Some("data disk not answering for 5001 ms")
        );
        p.running_since = None;
        p.failed = Some("x: Read-only file system (os error 30)".into());
        assert_eq!(
            p.problem(7000).as_deref(),
            Some("data disk failing: x: Read-only file system (os error 30)")
        );
        let dir = tempfile::tempdir().unwrap();
        write_and_read(&dir.path().join("probe")).unwrap();
        let err = write_and_read(&dir.path().join("missing/probe")).unwrap_err();
        assert!(err.contains("missing/probe"), "{err}");
    }
}
