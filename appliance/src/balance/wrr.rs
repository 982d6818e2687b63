//! Smooth weighted round robin, as in NGINX.

use super::{Balancer, Rng, View};

/// Over any window of `sum(weights)` picks each backend gets its weight's
/// share, interleaved rather than in runs. With equal weights it is plain
/// round robin. Unusable backends are skipped without disturbing the others'
/// order; weights may change between picks (slow start).
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
        let equal = super::AllUsable(n);
        let mut rng = Rng::new(0);
        for _ in 0..skip % n.max(1) {
            b.pick(&equal, None, &mut rng);
        }
        b
    }
}

impl Balancer for WeightedRoundRobin {
    fn pick(&mut self, view: &dyn View, _key: Option<u64>, _rng: &mut Rng) -> Option<usize> {
        let n = view.len();
        if self.current.len() != n {
            self.current = vec![0; n];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in 0..n {
            if !view.usable(i) {
                continue;
            }
            let w = i64::from(view.weight(i).max(1));
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
    use super::super::testing::{shares, Table};
    use super::*;

    fn picks(b: &mut WeightedRoundRobin, t: &Table, n: usize) -> Vec<usize> {
        let mut rng = Rng::new(0);
        (0..n).map(|_| b.pick(t, None, &mut rng).unwrap()).collect()
    }

    #[test]
    fn equal_weights_are_round_robin() {
        let t = Table::equal(3);
        let mut b = WeightedRoundRobin::new(3, 0);
        assert_eq!(picks(&mut b, &t, 6), [0, 1, 2, 0, 1, 2]);
        let mut shifted = WeightedRoundRobin::new(3, 1);
        assert_eq!(picks(&mut shifted, &t, 3), [1, 2, 0]);
    }

    #[test]
    fn weights_give_shares_smoothly() {
        let mut b = WeightedRoundRobin::new(3, 0);
        // NGINX's own example: weights 5, 1, 1.
        assert_eq!(
            picks(&mut b, &Table::weighted(&[5, 1, 1]), 7),
            [0, 0, 1, 0, 2, 0, 0]
        );
        let mut b = WeightedRoundRobin::new(2, 0);
        let many = picks(&mut b, &Table::weighted(&[3, 1]), 4000);
        assert_eq!(many.iter().filter(|&&i| i == 0).count(), 3000);
        assert!(
            many.windows(4).all(|w| w.contains(&0)),
            "no run of the light backend"
        );
    }

    #[test]
    fn zero_weight_and_unusable_backends_get_nothing() {
        let mut t = Table::weighted(&[1, 0, 1]);
        t.usable[2] = false;
        let mut b = WeightedRoundRobin::new(3, 0);
        assert_eq!(shares(&mut b, &t, 10, 0), [10, 0, 0]);
        assert_eq!(shares(&mut b, &Table::weighted(&[0, 0]), 1, 0), [0, 0]);
        assert_eq!(shares(&mut b, &Table::default(), 1, 0), Vec::<usize>::new());
        let mut none = Table::equal(2);
        none.usable = vec![false, false];
        assert_eq!(shares(&mut b, &none, 1, 0), [0, 0]);
    }

    #[test]
    fn a_changed_pool_size_starts_afresh() {
        let mut b = WeightedRoundRobin::new(2, 0);
        picks(&mut b, &Table::equal(2), 1);
        assert_eq!(picks(&mut b, &Table::equal(3), 3), [0, 1, 2]);
    }

    #[test]
    fn a_ramping_weight_gets_its_growing_share() {
        let mut b = WeightedRoundRobin::new(2, 0);
        let mut t = Table::weighted(&[10, 1]);
        let low = shares(&mut b, &t, 1100, 0)[1];
        t.weight[1] = 10;
        let full = shares(&mut b, &t, 1100, 0)[1];
        assert_eq!(low, 100);
        assert_eq!(full, 550);
    }
}
