//! Least outstanding requests, weighted (as HAProxy's `leastconn`).

use super::{Balancer, Rng, View};

/// Picks the usable backend with the fewest requests in flight per unit of
/// weight, `(outstanding + 1) / weight`; ties go round the pool from a
/// position that moves on with every pick, so equal backends share evenly
/// instead of the first one taking every tie.
#[derive(Debug, Clone, Default)]
pub struct LeastRequest {
    next: usize,
}

impl LeastRequest {
    pub fn new(start: usize) -> Self {
        Self { next: start }
    }
}

impl Balancer for LeastRequest {
    fn pick(&mut self, view: &dyn View, _key: Option<u64>, _rng: &mut Rng) -> Option<usize> {
        let n = view.len();
        if n == 0 {
            return None;
        }
        let start = self.next % n;
        let mut best: Option<(usize, u64, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !view.usable(i) {
                continue;
            }
            let load = u64::from(view.outstanding(i)) + 1;
            let weight = u64::from(view.weight(i).max(1));
            // Compare load/weight without division: a/b < c/d ⇔ a·d < c·b.
            let better = match best {
                None => true,
                Some((_, bl, bw)) => load * bw < bl * weight,
            };
            if better {
                best = Some((i, load, weight));
            }
        }
        let (chosen, ..) = best?;
        self.next = chosen + 1;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{shares, Table};
    use super::*;

    #[test]
    fn fewest_in_flight_wins() {
        let mut t = Table::equal(3);
        t.outstanding = vec![5, 1, 3];
        let mut b = LeastRequest::default();
        let mut rng = Rng::new(0);
        assert_eq!(b.pick(&t, None, &mut rng), Some(1));
        t.usable[1] = false;
        assert_eq!(b.pick(&t, None, &mut rng), Some(2));
    }

    #[test]
    fn ties_are_shared_evenly() {
        let t = Table::equal(4);
        let mut b = LeastRequest::default();
        assert_eq!(shares(&mut b, &t, 4000, 0), [1000; 4]);
    }

    #[test]
    fn weight_scales_the_load_it_takes() {
        // With the load each pick adds, weight 3 ends up with three times the
        // requests in flight of weight 1.
        let mut t = Table::weighted(&[3, 1]);
        let mut b = LeastRequest::default();
        let mut rng = Rng::new(0);
        for _ in 0..400 {
            let i = b.pick(&t, None, &mut rng).unwrap();
            t.outstanding[i] += 1;
        }
        assert_eq!(t.outstanding, [300, 100]);
    }

    #[test]
    fn a_slow_backend_accumulates_and_is_avoided() {
        // Backend 0 finishes nothing; 1 and 2 finish every request at once.
        let mut t = Table::equal(3);
        let mut b = LeastRequest::default();
        let mut rng = Rng::new(0);
        let mut got = [0; 3];
        for _ in 0..300 {
            let i = b.pick(&t, None, &mut rng).unwrap();
            got[i] += 1;
            if i == 0 {
                t.outstanding[0] += 1;
            }
        }
        assert!(got[0] <= 2, "the stuck backend got {got:?}");
    }

    #[test]
    fn nothing_usable_is_none() {
        let mut t = Table::equal(2);
        t.usable = vec![false, false];
        assert_eq!(
            LeastRequest::default().pick(&t, None, &mut Rng::new(0)),
            None
        );
        assert_eq!(
            LeastRequest::default().pick(&Table::default(), None, &mut Rng::new(0)),
            None
        );
    }
}
