//! The process's monotonic clock as plain numbers, for state that cores and
//! the control plane share through atomics (ejection deadlines, slow-start
//! ramps) and for the sans-IO logic in [`crate::balance`], which takes time
//! as a parameter.
#![forbid(unsafe_code)]

use std::sync::OnceLock;
use std::time::Instant;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the clock's epoch (its first use); never 0, so that 0
/// can mean "never".
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// Microseconds since the clock's epoch.
pub fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64 + 1
}

/// `instant` on this clock, in milliseconds.
pub fn ms_of(instant: Instant) -> u64 {
    instant.saturating_duration_since(epoch()).as_millis() as u64 + 1
}
