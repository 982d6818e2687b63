//! Consistent hashing with a Maglev table (Eisenbud et al., NSDI 2016), so
//! that a key (a shop's Host, a header, a cookie) keeps landing on the same
//! backend while the pool changes around it.

use super::{hash_key, splitmix, Balancer, Rng, View};

/// Table sizes: primes, the first at least 100 × the number of backends is
/// used, which keeps the keys that move when a backend leaves close to the
/// ideal 1/n.
const SIZES: [usize; 9] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521];

/// A lookup table from key hashes to backend indices, built from the
/// backends' identities (their addresses) and weights only: health, drains
/// and ejections do not change it. A key whose backend is unusable is
/// rehashed onto the usable ones, so only that backend's keys move, and they
/// come back when it does.
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    /// A table for backends named `names` (stable identities) with `weights`
    /// (0 counts as 1: a backend of weight 0 is kept out by [`View::usable`]
    /// instead, so that taking it out moves nobody else's keys).
    pub fn new(names: &[&str], weights: &[u32]) -> Self {
        let n = names.len();
        if n == 0 {
            return Self { table: Vec::new() };
        }
        let m = SIZES
            .iter()
            .copied()
            .find(|&s| s >= 100 * n)
            .unwrap_or(SIZES[SIZES.len() - 1]);
        let weights: Vec<u64> = (0..n)
            .map(|i| u64::from(weights.get(i).copied().unwrap_or(1).max(1)))
            .collect();
        let max_weight = weights.iter().copied().max().unwrap_or(1);
        // Each backend's permutation of the table: offset + j·skip (mod m).
        let perm: Vec<(usize, usize)> = names
            .iter()
            .map(|name| {
                let h = hash_key(name.as_bytes());
                let offset = (h % m as u64) as usize;
                let skip = (splitmix(h ^ 0x5bd1_e995) % (m as u64 - 1)) as usize + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0usize; n];
        let mut target = vec![0u64; n];
        let mut table = vec![u32::MAX; m];
        let mut filled = 0;
        let mut round = 1u64;
        while filled < m {
            for i in 0..n {
                if filled == m {
                    break;
                }
                // A backend of the largest weight takes a slot every round;
                // one of a third of it every third round.
                if round * weights[i] < target[i] {
                    continue;
                }
                target[i] += max_weight;
                let (offset, skip) = perm[i];
                loop {
                    let c = (offset + next[i] * skip) % m;
                    next[i] += 1;
                    if table[c] == u32::MAX {
                        table[c] = i as u32;
                        filled += 1;
                        break;
                    }
                }
            }
            round += 1;
        }
        Self { table }
    }

    /// The backend `key` maps to, whether usable or not.
    pub fn owner(&self, key: u64) -> Option<usize> {
        let m = self.table.len() as u64;
        (m > 0).then(|| self.table[(key % m) as usize] as usize)
    }
}

impl Balancer for Maglev {
    fn pick(&mut self, view: &dyn View, key: Option<u64>, rng: &mut Rng) -> Option<usize> {
        self.lookup(view, key.unwrap_or_else(|| rng.next_u64()))
    }
}

impl Maglev {
    /// The usable backend for `key`: its owner, or while the owner is out,
    /// the same stand-in every time.
    pub fn lookup(&self, view: &dyn View, key: u64) -> Option<usize> {
        let m = self.table.len() as u64;
        if m == 0 {
            return None;
        }
        let usable = |i: u32| (i as usize) < view.len() && view.usable(i as usize);
        let first = self.table[(key % m) as usize];
        if usable(first) {
            return Some(first as usize);
        }
        // The owner is out: the same rehashes every time, so the key keeps
        // landing on one stand-in while the owner is away.
        for attempt in 1..=8u64 {
            let i = self.table[(splitmix(key ^ attempt) % m) as usize];
            if usable(i) {
                return Some(i as usize);
            }
        }
        let start = (splitmix(key) % m) as usize;
        (0..self.table.len())
            .map(|k| self.table[(start + k) % self.table.len()])
            .find(|&i| usable(i))
            .map(|i| i as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Table;
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn table(names: &[String], weights: &[u32]) -> Maglev {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        Maglev::new(&refs, weights)
    }

    /// Where each of `keys` lands.
    fn placement(m: &mut Maglev, t: &Table, keys: usize) -> Vec<usize> {
        let mut rng = Rng::new(0);
        (0..keys)
            .map(|k| {
                let key = hash_key(format!("shop{k}.example.com").as_bytes());
                m.pick(t, Some(key), &mut rng).unwrap()
            })
            .collect()
    }

    #[test]
    fn keys_spread_evenly_and_by_weight() {
        let n = names(5);
        let mut m = table(&n, &[1; 5]);
        let got = placement(&mut m, &Table::equal(5), 50_000);
        for b in 0..5 {
            let share = got.iter().filter(|&&x| x == b).count();
            assert!((9_000..11_000).contains(&share), "backend {b}: {share}");
        }
        let mut heavy = table(&n[..2], &[3, 1]);
        let got = placement(&mut heavy, &Table::weighted(&[3, 1]), 40_000);
        let first = got.iter().filter(|&&x| x == 0).count();
        assert!((28_000..32_000).contains(&first), "weight 3 of 4: {first}");
    }

    #[test]
    fn the_same_key_lands_on_the_same_backend() {
        let n = names(4);
        let t = Table::equal(4);
        let a = placement(&mut table(&n, &[1; 4]), &t, 1_000);
        let b = placement(&mut table(&n, &[1; 4]), &t, 1_000);
        assert_eq!(a, b, "the table depends only on names and weights");
    }

    #[test]
    fn a_backend_that_is_down_moves_only_its_own_keys() {
        let n = names(5);
        let mut m = table(&n, &[1; 5]);
        let mut t = Table::equal(5);
        let before = placement(&mut m, &t, 20_000);
        t.usable[2] = false;
        let during = placement(&mut m, &t, 20_000);
        for (b, d) in before.iter().zip(&during) {
            if *b != 2 {
                assert_eq!(b, d, "a key of a healthy backend moved");
            } else {
                assert_ne!(*d, 2);
            }
        }
        t.usable[2] = true;
        assert_eq!(placement(&mut m, &t, 20_000), before, "they come back");
    }

    #[test]
    fn a_backend_that_leaves_moves_about_its_share() {
        let n = names(10);
        let before = placement(&mut table(&n, &[1; 10]), &Table::equal(10), 50_000);
        // Backend 9 leaves the config: the table is built without it.
        let after = placement(&mut table(&n[..9], &[1; 9]), &Table::equal(9), 50_000);
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != 9 && b != a)
            .count();
        let own = before.iter().filter(|&&b| b == 9).count();
        // Its own tenth must move; of the others, only a few per cent do.
        assert!(own > 4_000);
        assert!(
            moved < 50_000 * 4 / 100,
            "{moved} keys of staying backends moved"
        );
    }

    #[test]
    fn nothing_usable_or_no_backends_is_none() {
        let mut m = table(&names(3), &[1; 3]);
        let mut t = Table::equal(3);
        t.usable = vec![false; 3];
        assert_eq!(m.pick(&t, Some(1), &mut Rng::new(0)), None);
        let mut empty = Maglev::new(&[], &[]);
        assert_eq!(
            empty.pick(&Table::default(), Some(1), &mut Rng::new(0)),
            None
        );
        assert_eq!(empty.owner(5), None);
    }
}
