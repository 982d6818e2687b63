//! Slow start: a backend that comes back (its health check passes again, its
//! ejection ends) or joins the pool gets a share that grows linearly over
//! the pool's `slow_start_ms`, from a tenth of its weight to all of it, so a
//! cold container (empty caches, a JIT still warming) is not handed a full
//! share at once. As HAProxy's `slowstart`; Envoy's default aggression.

/// Weights are scaled by this much before slow start divides them, so that
/// a weight of 1 can still ramp in steps.
pub const SCALE: u32 = 100;

/// The smallest share a ramping backend gets, in per cent of its weight.
pub const MIN_PERCENT: u64 = 10;

/// `weight` (as configured) scaled by [`SCALE`] and by how far `now_ms` is
/// into the ramp that began at `since_ms`; `window_ms` 0 is no slow start.
pub fn effective_weight(weight: u32, since_ms: u64, now_ms: u64, window_ms: u64) -> u32 {
    let full = weight.saturating_mul(SCALE);
    let elapsed = now_ms.saturating_sub(since_ms);
    if full == 0 || window_ms == 0 || elapsed >= window_ms {
        return full;
    }
    let percent = (elapsed * 100 / window_ms).max(MIN_PERCENT);
    ((u64::from(full) * percent / 100) as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_linearly_from_a_tenth() {
        let w = |now| effective_weight(2, 1_000, now, 10_000);
        assert_eq!(w(1_000), 20, "a tenth at the start");
        assert_eq!(w(2_000), 20);
        assert_eq!(w(6_000), 100, "half way");
        assert_eq!(w(10_999), 198);
        assert_eq!(w(11_000), 200, "all of it at the end");
        assert_eq!(w(500_000), 200);
    }

    #[test]
    fn no_window_or_an_old_start_is_the_full_weight() {
        assert_eq!(effective_weight(3, 1_000, 1_000, 0), 300);
        assert_eq!(effective_weight(3, 0, 50_000, 10_000), 300);
        assert_eq!(effective_weight(0, 0, 0, 10_000), 0, "weight 0 stays 0");
    }

    #[test]
    fn a_ramping_backend_gets_its_share_of_round_robin() {
        use super::super::testing::{shares, Table};
        use super::super::WeightedRoundRobin;
        // Two backends of weight 1; the second joined 2.5 s into a 10 s ramp.
        let t = Table::weighted(&[
            effective_weight(1, 0, 100_000, 10_000),
            effective_weight(1, 97_500, 100_000, 10_000),
        ]);
        let got = shares(&mut WeightedRoundRobin::new(2, 0), &t, 1_250, 0);
        assert_eq!(got, [1_000, 250]);
    }
}
