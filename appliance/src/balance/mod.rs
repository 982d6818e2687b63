//! Choosing a backend for a request. Pure logic, no IO.
//!
//! An algorithm is a small [`Balancer`]: it sees the pool's backend weights and
//! which backends it may use for this request, and names one. Each core keeps
//! its own balancer state per pool, so picking never crosses cores.
#![forbid(unsafe_code)]

/// Picks a backend by index; `weights[i]` is backend `i`'s weight, and a
/// backend whose weight is 0 or that `usable` rejects is never picked.
pub trait Balancer {
    fn pick(&mut self, weights: &[u32], usable: &dyn Fn(usize) -> bool) -> Option<usize>;
}

/// Smooth weighted round robin (as in NGINX): over any window of
/// `sum(weights)` picks each backend gets its weight's share, interleaved
/// rather than in runs. With equal weights it is plain round robin.
#[derive(Debug, Clone, Default)]
pub struct WeightedRoundRobin {
    current: Vec<i64>,
}

impl WeightedRoundRobin {
    /// A balancer for `n` backends that has already made `skip` picks over
    /// equal weights, so that cores do not all start with the same backend.
    pub fn new(n: usize, skip: usize) -> Self {
        let mut b = Self {
            current: vec![0; n],
        };
        let equal = vec![1; n];
        for _ in 0..skip % n.max(1) {
            b.pick(&equal, &|_| true);
        }
        b
    }
}

impl Balancer for WeightedRoundRobin {
    fn pick(&mut self, weights: &[u32], usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.current.len() != weights.len() {
            self.current = vec![0; weights.len()];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 || !usable(i) {
                continue;
            }
            let w = i64::from(w);
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.current[chosen] -= total;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(
        b: &mut WeightedRoundRobin,
        weights: &[u32],
        n: usize,
        usable: &dyn Fn(usize) -> bool,
    ) -> Vec<usize> {
        (0..n).map(|_| b.pick(weights, usable).unwrap()).collect()
    }

    #[test]
    fn equal_weights_are_round_robin() {
        let mut b = WeightedRoundRobin::new(3, 0);
        assert_eq!(picks(&mut b, &[1, 1, 1], 6, &|_| true), [0, 1, 2, 0, 1, 2]);
        let mut shifted = WeightedRoundRobin::new(3, 1);
        assert_eq!(picks(&mut shifted, &[1, 1, 1], 3, &|_| true), [1, 2, 0]);
    }

    #[test]
    fn weights_give_shares_smoothly() {
        let mut b = WeightedRoundRobin::new(3, 0);
        // NGINX's own example: weights 5, 1, 1.
        assert_eq!(
            picks(&mut b, &[5, 1, 1], 7, &|_| true),
            [0, 0, 1, 0, 2, 0, 0]
        );
        let mut b = WeightedRoundRobin::new(2, 0);
        let many = picks(&mut b, &[3, 1], 4000, &|_| true);
        assert_eq!(many.iter().filter(|&&i| i == 0).count(), 3000);
        assert!(
            many.windows(4).all(|w| w.contains(&0)),
            "no run of the light backend"
        );
    }

    #[test]
    fn zero_weight_and_unusable_backends_get_nothing() {
        let mut b = WeightedRoundRobin::new(3, 0);
        let got = picks(&mut b, &[1, 0, 1], 10, &|i| i != 2);
        assert!(got.iter().all(|&i| i == 0));
        assert_eq!(b.pick(&[0, 0], &|_| true), None);
        assert_eq!(b.pick(&[], &|_| true), None);
        assert_eq!(b.pick(&[1, 1], &|_| false), None);
    }

    #[test]
    fn a_changed_pool_size_starts_afresh() {
        let mut b = WeightedRoundRobin::new(2, 0);
        b.pick(&[1, 1], &|_| true);
        assert_eq!(picks(&mut b, &[1, 1, 1], 3, &|_| true), [0, 1, 2]);
    }
}
