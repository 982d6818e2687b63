//! The control-plane thread: one tokio current-thread runtime, apart from the
//! data-plane cores, so an overloaded data plane cannot starve it. Today it
//! handles signals and rotates session-ticket keys; the admin API, health
//! checks, replication and failover will live here too.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::snapshot::Shared;

/// Starts the thread and returns once its signal handlers are installed, so a
/// SIGTERM from then on is a graceful shutdown, never the default kill.
pub fn start(shared: Arc<Shared>) -> std::io::Result<()> {
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
            runtime.block_on(control_loop(shared, ready_tx));
        })?;
    ready_rx.recv().unwrap_or_else(|_| {
        Err(std::io::Error::other(
            "control thread exited during start-up",
        ))
    })
}

async fn control_loop(
    shared: Arc<Shared>,
    ready: std::sync::mpsc::SyncSender<std::io::Result<()>>,
) {
    let signals =
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
    let (mut term, mut int) = match signals {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let rotation_s = shared.snapshot.load().config.tls.ticket_rotation_s;
    let mut rotate = tokio::time::interval(Duration::from_secs(rotation_s));
    rotate.tick().await;
    loop {
        tokio::select! {
            _ = term.recv() => on_signal(&shared, "SIGTERM"),
            _ = int.recv() => on_signal(&shared, "SIGINT"),
            _ = rotate.tick() => match shared.tickets.rotate() {
                Ok(()) => tracing::debug!("rotated session-ticket keys"),
                Err(e) => tracing::error!("{e}"),
            },
        }
    }
}

fn on_signal(shared: &Shared, name: &str) {
    if shared.shutting_down.swap(true, Ordering::AcqRel) {
        tracing::warn!("{name} again: exiting now without waiting for requests in flight");
        std::process::exit(1);
    }
    let grace = shared.snapshot.load().client.shutdown_grace;
    tracing::info!(
        "{name}: shutting down; no new connections, requests in flight get up to {} ms",
        grace.as_millis()
    );
}
