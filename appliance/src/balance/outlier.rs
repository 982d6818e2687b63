//! Passive ejection ("outlier detection", as Envoy calls it): a backend that
//! fails several requests in a row (refused or timed-out connects, resets,
//! response timeouts, and 5xx if so configured) is taken out for a while,
//! longer each time it happens again.
//!
//! The state is shared by every core (atomics), so a backend that fails on
//! one core is avoided by all. Only failures write to it, and a success
//! writes only when it has something to reset, so on a healthy backend the
//! request path just reads it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// When to eject, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures in a row that eject; 0 turns ejection off.
    pub consecutive: u32,
    /// The first ejection's length; the n-th lasts n times as long...
    pub base_ms: u64,
    /// ...but never longer than this.
    pub max_ms: u64,
    /// At most this share of a pool is ejected at once (the first one
    /// always may be).
    pub max_percent: u32,
}

/// One backend's ejection state, shared by the cores.
#[derive(Debug, Default)]
pub struct Ejection {
    /// Failures in a row, across cores.
    streak: AtomicU32,
    /// Ejected until this time (ms); 0 when never ejected.
    until_ms: AtomicU64,
    /// Ejections in a row without a long enough healthy spell between them.
    times: AtomicU32,
    /// Every ejection so far, for the metrics.
    total: AtomicU64,
}

impl Ejection {
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.until_ms.load(Ordering::Relaxed)
    }

    /// When the current or last ejection ends (0: never ejected).
    pub fn until_ms(&self) -> u64 {
        self.until_ms.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Ends an ejection now (the active health check passed again, as
    /// Envoy's `successful_active_health_check_uneject_host`).
    pub fn lift(&self, now_ms: u64) {
        if self.is_ejected(now_ms) {
            self.until_ms.store(now_ms, Ordering::Relaxed);
        }
        self.streak.store(0, Ordering::Relaxed);
    }

    /// A request succeeded: the streak ends, and after a healthy spell as
    /// long as its last ejection, the backoff starts over.
    pub fn on_success(&self, now_ms: u64, policy: &Policy) {
        if self.streak.load(Ordering::Relaxed) != 0 {
            self.streak.store(0, Ordering::Relaxed);
        }
        let times = self.times.load(Ordering::Relaxed);
        if times != 0 {
            let last = ejection_ms(policy, times);
            if now_ms >= self.until_ms().saturating_add(last) {
                self.times.store(0, Ordering::Relaxed);
            }
        }
    }

    /// A request failed; `pool` tells how many of the backend's pool are
    /// ejected now and how many it has. Returns the ejection's length when
    /// this failure ejected the backend.
    pub fn on_failure(
        &self,
        now_ms: u64,
        policy: &Policy,
        pool: impl FnOnce() -> (usize, usize),
    ) -> Option<u64> {
        if policy.consecutive == 0 {
            return None;
        }
        let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        if streak < policy.consecutive || self.is_ejected(now_ms) {
            return None;
        }
        let (ejected, size) = pool();
        if ejected > 0 && ejected as u64 * 100 >= u64::from(policy.max_percent) * size as u64 {
            return None;
        }
        let times = self.times.load(Ordering::Relaxed) + 1;
        let length = ejection_ms(policy, times);
        let old = self.until_ms.load(Ordering::Relaxed);
        // Another core may be ejecting it at this moment: one of them wins.
        if old > now_ms
            || self
                .until_ms
                .compare_exchange(old, now_ms + length, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        self.times.store(times, Ordering::Relaxed);
        self.streak.store(0, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(length)
    }
}

/// The length of the `times`-th ejection in a row.
fn ejection_ms(policy: &Policy, times: u32) -> u64 {
    policy
        .base_ms
        .saturating_mul(u64::from(times.max(1)))
        .min(policy.max_ms.max(policy.base_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        consecutive: 3,
        base_ms: 1_000,
        max_ms: 5_000,
        max_percent: 50,
    };

    fn fail(e: &Ejection, now: u64, n: usize) -> Vec<Option<u64>> {
        (0..n)
            .map(|_| e.on_failure(now, &POLICY, || (0, 4)))
            .collect()
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let e = Ejection::default();
        assert_eq!(fail(&e, 0, 2), [None, None]);
        e.on_success(0, &POLICY);
        assert_eq!(fail(&e, 0, 3), [None, None, Some(1_000)]);
        assert!(e.is_ejected(999));
        assert!(!e.is_ejected(1_000));
        assert_eq!(e.total(), 1);
    }

    #[test]
    fn ejections_grow_on_repeat_up_to_the_maximum() {
        let e = Ejection::default();
        let mut now = 0;
        let mut lengths = Vec::new();
        for _ in 0..7 {
            let got = fail(&e, now, 3);
            let length = got[2].expect("ejected");
            lengths.push(length);
            now += length;
        }
        assert_eq!(lengths, [1_000, 2_000, 3_000, 4_000, 5_000, 5_000, 5_000]);
    }

    #[test]
    fn a_healthy_spell_starts_the_backoff_over() {
        let e = Ejection::default();
        fail(&e, 0, 3);
        fail(&e, 1_000, 3);
        assert_eq!(e.until_ms(), 3_000, "the second lasted 2 s");
        // Healthy for less than the last ejection's length: the count stays.
        e.on_success(4_000, &POLICY);
        assert_eq!(fail(&e, 4_000, 3)[2], Some(3_000));
        // Healthy for as long as the last one (3 s after 7 s): back to 1 s.
        e.on_success(10_000, &POLICY);
        assert_eq!(fail(&e, 10_000, 3)[2], Some(1_000));
    }

    #[test]
    fn at_most_the_configured_share_of_a_pool_is_ejected() {
        let e = Ejection::default();
        // 2 of 4 ejected already: 50 %, no more.
        for _ in 0..5 {
            assert_eq!(e.on_failure(0, &POLICY, || (2, 4)), None);
        }
        // 1 of 4: below 50 %, this one may go.
        assert_eq!(e.on_failure(0, &POLICY, || (1, 4)), Some(1_000));
        // The first of a pool of one always may.
        let alone = Ejection::default();
        let got: Vec<_> = (0..3)
            .map(|_| alone.on_failure(0, &POLICY, || (0, 1)))
            .collect();
        assert_eq!(got[2], Some(1_000));
    }

    #[test]
    fn failures_while_ejected_do_not_extend_it_and_zero_turns_it_off() {
        let e = Ejection::default();
        fail(&e, 0, 3);
        assert_eq!(fail(&e, 500, 10), vec![None; 10]);
        assert_eq!(e.until_ms(), 1_000);
        let off = Policy {
            consecutive: 0,
            ..POLICY
        };
        let e = Ejection::default();
        for _ in 0..100 {
            assert_eq!(e.on_failure(0, &off, || (0, 1)), None);
        }
    }
}
