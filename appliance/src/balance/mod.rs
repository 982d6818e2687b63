//! Choosing a backend for a request. Pure logic, no IO.
//!
//! An algorithm is a small [`Balancer`]: it sees how many backends a pool has and
//! which of them it may use, and names one. Each core keeps its own balancer
//! state per pool, so picking never crosses cores.
#![forbid(unsafe_code)]

/// Picks a backend by index among `n` backends, skipping those `usable` rejects.
pub trait Balancer {
    fn pick(&mut self, n: usize, usable: &dyn Fn(usize) -> bool) -> Option<usize>;
}

/// Each backend in turn.
#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    /// Starts at `offset`, so that cores do not all begin with the same backend.
    pub fn starting_at(offset: usize) -> Self {
        Self { next: offset }
    }
}

impl Balancer for RoundRobin {
    fn pick(&mut self, n: usize, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        for _ in 0..n {
            let i = self.next % n;
            self.next = self.next.wrapping_add(1);
            if usable(i) {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_spreads_evenly() {
        let mut rr = RoundRobin::default();
        let mut hits = [0; 3];
        for _ in 0..300 {
            hits[rr.pick(3, &|_| true).unwrap()] += 1;
        }
        assert_eq!(hits, [100, 100, 100]);
    }

    #[test]
    fn round_robin_skips_unusable_and_stays_fair() {
        let mut rr = RoundRobin::starting_at(1);
        let picks: Vec<_> = (0..6).map(|_| rr.pick(3, &|i| i != 1).unwrap()).collect();
        assert_eq!(picks, [2, 0, 2, 0, 2, 0]);
        assert_eq!(rr.pick(3, &|_| false), None);
        assert_eq!(rr.pick(0, &|_| true), None);
    }
}
