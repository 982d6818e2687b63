//! What every core knows of one backend: written rarely (by the control
//! plane's health check, by a core that ejects it), read on every pick.

use std::sync::atomic::{AtomicU64, Ordering};

use super::health::SharedHealth;
use super::outlier::Ejection;

/// One backend's shared state. It belongs to the backend's identity (pool
/// name and address), not to a config: it lives on across config changes
/// for as long as the backend stays in its pool.
#[derive(Debug, Default)]
pub struct BackendShared {
    /// The active health check's verdict.
    pub health: SharedHealth,
    /// Passive ejection.
    pub ejection: Ejection,
    /// When it last came (back) into service (ms): joined the pool while
    /// running, or its health check passed again. 0: from the start.
    pub ramp_since_ms: AtomicU64,
    /// When its drain began (ms); 0 while it is not draining.
    pub draining_since_ms: AtomicU64,
}

impl BackendShared {
    /// A backend that joins a running pool: slow start from `now_ms`.
    pub fn joining(now_ms: u64) -> Self {
        let s = Self::default();
        s.ramp_since_ms.store(now_ms, Ordering::Relaxed);
        s
    }

    /// Neither its health check nor an ejection keeps it out.
    pub fn serves(&self, now_ms: u64) -> bool {
        self.health.get().serves() && !self.ejection.is_ejected(now_ms)
    }

    /// Where its slow-start ramp begins: its return to service, or the end
    /// of its last ejection, whichever is later.
    pub fn ramp_start_ms(&self) -> u64 {
        self.ramp_since_ms
            .load(Ordering::Relaxed)
            .max(self.ejection.until_ms())
    }

    /// Records the health check's verdict. A return to service ends an
    /// ejection (the check has just seen it work) and starts a slow-start
    /// ramp.
    pub fn set_health(&self, health: super::health::Health, now_ms: u64) {
        let was = self.health.get();
        self.health.set(health);
        if health == super::health::Health::Up && was == super::health::Health::Down {
            self.ejection.lift(now_ms);
            self.ramp_since_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Marks the start or the end of a drain.
    pub fn set_draining(&self, draining: bool, now_ms: u64) {
        let since = self.draining_since_ms.load(Ordering::Relaxed);
        match (draining, since) {
            (true, 0) => self.draining_since_ms.store(now_ms, Ordering::Relaxed),
            (false, s) if s != 0 => self.draining_since_ms.store(0, Ordering::Relaxed),
            _ => {}
        }
    }

    /// Whether a drain began more than `deadline_ms` ago (0: no deadline).
    pub fn drain_expired(&self, now_ms: u64, deadline_ms: u64) -> bool {
        let since = self.draining_since_ms.load(Ordering::Relaxed);
        deadline_ms != 0 && since != 0 && now_ms >= since.saturating_add(deadline_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::super::health::Health;
    use super::super::outlier::Policy;
    use super::*;

    #[test]
    fn health_and_ejection_both_keep_it_out() {
        let s = BackendShared::default();
        assert!(s.serves(0));
        s.set_health(Health::Down, 10);
        assert!(!s.serves(10));
        s.set_health(Health::Up, 20);
        assert!(s.serves(20));
        assert_eq!(s.ramp_start_ms(), 20, "back up: the ramp starts");
        let p = Policy {
            consecutive: 1,
            base_ms: 100,
            max_ms: 100,
            max_percent: 100,
        };
        s.ejection.on_failure(30, &p, || (0, 1));
        assert!(!s.serves(129));
        assert!(s.serves(130));
        assert_eq!(s.ramp_start_ms(), 130, "ejection over: the ramp starts");
        // Ejected, then down and back up by its check: in service at once.
        s.ejection.on_failure(200, &p, || (0, 1));
        s.set_health(Health::Down, 210);
        s.set_health(Health::Up, 220);
        assert!(s.serves(221), "the passed check lifted the ejection");
        assert_eq!(s.ramp_start_ms(), 220);
    }

    #[test]
    fn a_drain_has_a_start_and_a_deadline() {
        let s = BackendShared::joining(5);
        assert_eq!(s.ramp_start_ms(), 5);
        assert!(!s.drain_expired(1_000, 100));
        s.set_draining(true, 100);
        s.set_draining(true, 150);
        assert!(!s.drain_expired(199, 100));
        assert!(s.drain_expired(200, 100), "counted from the first call");
        assert!(!s.drain_expired(10_000, 0), "0: no deadline");
        s.set_draining(false, 300);
        assert!(!s.drain_expired(10_000, 100));
    }
}
