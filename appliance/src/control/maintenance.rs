//! Store maintenance (garbage collection, scrub) on tokio's blocking pool:
//! it reads and hashes every blob, which takes seconds to minutes, and the
//! control thread (admin API, health checks, replication) must go on
//! meanwhile. One runs at a time.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edgebox_storage::{GcReport, ScrubReport, SiteError};

use super::Control;

/// Set while a GC or a scrub runs.
static RUNNING: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("a garbage collection or scrub is running; try again when it has finished")]
    Busy,
    #[error(transparent)]
    Store(#[from] SiteError),
    #[error("the maintenance task failed: {0}")]
    Task(String),
}

async fn off_thread<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, SiteError> + Send + 'static,
) -> Result<T, MaintenanceError> {
    if RUNNING.swap(true, Ordering::AcqRel) {
        return Err(MaintenanceError::Busy);
    }
    let done = tokio::task::spawn_blocking(job).await;
    RUNNING.store(false, Ordering::Release);
    Ok(done.map_err(|e| MaintenanceError::Task(e.to_string()))??)
}

/// Removes what no ref, pending replication or young upload keeps.
pub async fn collect_garbage(
    control: &Rc<RefCell<Control>>,
    grace: Duration,
) -> Result<GcReport, MaintenanceError> {
    let (store, keep) = {
        let c = control.borrow();
        (c.content.clone(), c.replica.keep(&c.content))
    };
    off_thread(move || store.gc_keeping(grace, std::time::SystemTime::now(), &keep)).await
}

/// Re-hashes every blob; a corrupt one is quarantined and fetched again
/// from the peers.
pub async fn scrub(control: &Rc<RefCell<Control>>) -> Result<ScrubReport, MaintenanceError> {
    let store = control.borrow().content.clone();
    let report = off_thread(move || store.scrub()).await?;
    if !report.corrupt.is_empty() {
        tracing::error!(corrupt = report.corrupt.len(), lost = ?report.lost, "scrub found corrupt blobs and quarantined them; fetching them again from the peers");
        control.borrow_mut().replica.repair(&report.corrupt);
    }
    Ok(report)
}
