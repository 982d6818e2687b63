//! Power of two choices over a peak-EWMA of latency (Finagle's and
//! Linkerd's `p2c` + `PeakEwma`).

use super::{Balancer, Rng, View};

/// Latency assumed for a backend that has not answered yet, in microseconds.
/// Low enough that a new backend is tried soon, high enough that the
/// requests in flight to it still count against it.
pub const UNKNOWN_LATENCY_US: f64 = 1_000.0;

/// How fast a latency estimate forgets: the weight of an old sample halves
/// about every 7 s (τ = 10 s, as Linkerd).
pub const DECAY_US: f64 = 10_000_000.0;

/// Two usable backends at random; the one with the lower cost wins, where
/// cost = latency × (requests in flight + 1) / weight. A backend that gets
/// slow is avoided at once (the estimate jumps to a peak), and tried again as
/// the estimate decays.
#[derive(Debug, Clone, Default)]
pub struct PeakEwma;

impl PeakEwma {
    fn cost(view: &dyn View, i: usize) -> f64 {
        let latency = view.latency_us(i).unwrap_or(UNKNOWN_LATENCY_US);
        latency * f64::from(view.outstanding(i) + 1) / f64::from(view.weight(i).max(1))
    }
}

/// A random usable backend other than `not`, or `None`.
fn random_usable(view: &dyn View, not: Option<usize>, rng: &mut Rng) -> Option<usize> {
    let n = view.len();
    let ok = |i: usize| view.usable(i) && Some(i) != not;
    // Mostly one draw; a mostly unusable pool falls back to a scan from a
    // random start, so the time per pick stays bounded.
    for _ in 0..4 {
        let i = rng.below(n);
        if ok(i) {
            return Some(i);
        }
    }
    let start = rng.below(n);
    (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
}

impl Balancer for PeakEwma {
    fn pick(&mut self, view: &dyn View, _key: Option<u64>, rng: &mut Rng) -> Option<usize> {
        if view.is_empty() {
            return None;
        }
        let a = random_usable(view, None, rng)?;
        let Some(b) = random_usable(view, Some(a), rng) else {
            return Some(a);
        };
        Some(if Self::cost(view, b) < Self::cost(view, a) {
            b
        } else {
            a
        })
    }
}

/// One backend's latency estimate on one core.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    ewma_us: f64,
    stamp_us: u64,
    sampled: bool,
}

impl Latency {
    /// Records a response that took `rtt_us`, seen at `now_us`: a latency
    /// above the estimate replaces it (the peak), one below it is averaged in
    /// with a weight that grows with the time since the last sample.
    pub fn observe(&mut self, rtt_us: f64, now_us: u64) {
        let decayed = self.decayed(now_us);
        self.ewma_us = if !self.sampled || rtt_us > decayed {
            rtt_us
        } else {
            let w = self.weight(now_us);
            decayed * w + rtt_us * (1.0 - w)
        };
        self.stamp_us = now_us;
        self.sampled = true;
    }

    /// The estimate at `now_us`, or `None` before the first sample. Between
    /// samples it decays towards zero, so that a backend that was slow once
    /// is tried again in time.
    pub fn get(&self, now_us: u64) -> Option<f64> {
        self.sampled.then(|| self.decayed(now_us))
    }

    fn weight(&self, now_us: u64) -> f64 {
        let elapsed = now_us.saturating_sub(self.stamp_us) as f64;
        (-elapsed / DECAY_US).exp()
    }

    fn decayed(&self, now_us: u64) -> f64 {
        self.ewma_us * self.weight(now_us)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{shares, Table};
    use super::*;

    #[test]
    fn the_slow_backend_gets_little() {
        let mut t = Table::equal(4);
        t.latency_us = vec![Some(1_000.0), Some(1_000.0), Some(50_000.0), Some(1_000.0)];
        let got = shares(&mut PeakEwma, &t, 10_000, 1);
        // Backend 2 wins only when both choices fall on it, which they cannot
        // (the two are distinct): it gets nothing while the others are idle.
        assert_eq!(got[2], 0, "{got:?}");
        for i in [0, 1, 3] {
            assert!((3_000..3_700).contains(&got[i]), "{got:?}");
        }
    }

    #[test]
    fn requests_in_flight_count_against_a_fast_backend() {
        let mut t = Table::equal(2);
        t.latency_us = vec![Some(1_000.0), Some(3_000.0)];
        t.outstanding = vec![5, 0];
        // 1 000 × 6 > 3 000 × 1: the idle slower one wins.
        assert_eq!(PeakEwma.pick(&t, None, &mut Rng::new(0)), Some(1));
    }

    #[test]
    fn one_usable_backend_is_always_chosen() {
        let mut t = Table::equal(5);
        t.usable = vec![false, false, false, true, false];
        assert_eq!(shares(&mut PeakEwma, &t, 100, 2), [0, 0, 0, 100, 0]);
        t.usable[3] = false;
        assert_eq!(PeakEwma.pick(&t, None, &mut Rng::new(0)), None);
    }

    #[test]
    fn the_estimate_jumps_to_peaks_and_decays() {
        let mut l = Latency::default();
        assert_eq!(l.get(0), None);
        l.observe(1_000.0, 0);
        assert_eq!(l.get(0), Some(1_000.0));
        // A slow response: the estimate is its latency at once.
        l.observe(40_000.0, 1_000);
        assert!(l.get(1_000).unwrap() == 40_000.0);
        // Fast ones soon after are averaged in slowly...
        l.observe(1_000.0, 2_000);
        assert!(l.get(2_000).unwrap() > 39_000.0);
        // ...and with no samples for a minute the estimate has all but gone.
        assert!(l.get(62_000_000).unwrap() < 100.0);
        // A sample much later is almost all of the new estimate.
        l.observe(2_000.0, 62_000_000);
        assert!((l.get(62_000_000).unwrap() - 2_000.0).abs() < 100.0);
    }
}
