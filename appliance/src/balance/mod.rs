//! Choosing a backend, and keeping track of which backends deserve requests.
//! Pure logic, no IO: time is a parameter (milliseconds or microseconds on a
//! monotonic clock), randomness comes from a seeded [`Rng`].
//!
//! - An algorithm is a small [`Balancer`]: it sees a [`View`] of the pool
//!   (which backends are usable for this request, their effective weights,
//!   requests in flight, latency) and names one. Four of them:
//!   [`WeightedRoundRobin`] (smooth, as NGINX), [`LeastRequest`] (fewest in
//!   flight per weight, as HAProxy's `leastconn`), [`PeakEwma`] (power of two
//!   choices over a peak-EWMA of latency, as Finagle and Linkerd) and
//!   [`Maglev`] (consistent hashing on a request key, as Envoy's).
//! - [`health`]: the active health check's rise/fall state machine.
//! - [`outlier`]: passive ejection after consecutive failures, with a
//!   backoff that grows on repeat and a cap on the share of a pool ejected.
//! - [`slow_start`]: a returning or new backend's weight ramps up.
//! - [`retry`]: which failures may be retried, and a budget per pool so that
//!   retries cannot multiply an outage.
//! - [`limit`]: per-backend concurrency with a bounded queue.
#![forbid(unsafe_code)]

pub mod health;
pub mod least;
pub mod limit;
pub mod maglev;
pub mod outlier;
pub mod p2c;
pub mod retry;
pub mod shared;
pub mod slow_start;
pub mod wrr;

pub use least::LeastRequest;
pub use maglev::Maglev;
pub use p2c::{Latency, PeakEwma};
pub use shared::BackendShared;
pub use wrr::WeightedRoundRobin;

/// What an algorithm may know of a pool's backends for one pick.
pub trait View {
    /// How many backends the pool has (usable or not).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether backend `i` may get this request: in rotation (not draining,
    /// weight above 0), not taken out by its health check or by ejection, not
    /// already tried for this request, and below its concurrency limit.
    fn usable(&self, i: usize) -> bool;
    /// Its share of requests relative to the others: the configured weight,
    /// scaled down during slow start; at least 1 while usable.
    fn weight(&self, i: usize) -> u32;
    /// Requests in flight to it from this core.
    fn outstanding(&self, i: usize) -> u32;
    /// Its peak-EWMA response latency in microseconds; `None` before the
    /// first response.
    fn latency_us(&self, i: usize) -> Option<f64>;
}

/// Picks a backend by index, or none when no backend is usable.
pub trait Balancer {
    /// `key` is the request's hash key, for algorithms that use one.
    fn pick(&mut self, view: &dyn View, key: Option<u64>, rng: &mut Rng) -> Option<usize>;
}

/// `n` backends, all usable, of weight 1, idle.
#[derive(Debug, Clone, Copy)]
pub struct AllUsable(pub usize);

impl View for AllUsable {
    fn len(&self) -> usize {
        self.0
    }
    fn usable(&self, _: usize) -> bool {
        true
    }
    fn weight(&self, _: usize) -> u32 {
        1
    }
    fn outstanding(&self, _: usize) -> u32 {
        0
    }
    fn latency_us(&self, _: usize) -> Option<f64> {
        None
    }
}

/// A small, fast pseudo-random generator (xorshift64*), seeded per core, so
/// that tests can replay a sequence exactly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // xorshift must not start at 0; mix the seed so that nearby seeds
        // (core numbers) give unrelated sequences.
        Self(splitmix(seed) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        // Lemire's multiply-shift: unbiased enough for picking backends.
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// SplitMix64's finaliser: a good 64-bit mix of one number.
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a over `bytes`, mixed: the hash of a request key (a Host, a header
/// or a cookie value). The same on every core, every run and every build.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix(h)
}

/// The algorithm a pool uses, with its state on one core.
#[derive(Debug, Clone)]
pub enum Algorithm {
    RoundRobin(WeightedRoundRobin),
    LeastRequest(LeastRequest),
    PeakEwma(PeakEwma),
    /// Consistent hashing; requests without a key fall back to round robin.
    Hash(std::sync::Arc<Maglev>, WeightedRoundRobin),
}

impl Balancer for Algorithm {
    fn pick(&mut self, view: &dyn View, key: Option<u64>, rng: &mut Rng) -> Option<usize> {
        match self {
            Self::RoundRobin(b) => b.pick(view, key, rng),
            Self::LeastRequest(b) => b.pick(view, key, rng),
            Self::PeakEwma(b) => b.pick(view, key, rng),
            Self::Hash(table, fallback) => match key {
                Some(key) => table.lookup(view, key),
                None => fallback.pick(view, key, rng),
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A pool as a plain table, for the algorithms' tests.

    use super::View;

    #[derive(Debug, Clone, Default)]
    pub struct Table {
        pub usable: Vec<bool>,
        pub weight: Vec<u32>,
        pub outstanding: Vec<u32>,
        pub latency_us: Vec<Option<f64>>,
    }

    impl Table {
        /// `n` usable backends of weight 1, idle, with no latency yet.
        pub fn equal(n: usize) -> Self {
            Self::weighted(&vec![1; n])
        }

        pub fn weighted(weights: &[u32]) -> Self {
            let n = weights.len();
            Self {
                usable: vec![true; n],
                weight: weights.to_vec(),
                outstanding: vec![0; n],
                latency_us: vec![None; n],
            }
        }
    }

    impl View for Table {
        fn len(&self) -> usize {
            self.usable.len()
        }
        fn usable(&self, i: usize) -> bool {
            self.usable[i] && self.weight[i] > 0
        }
        fn weight(&self, i: usize) -> u32 {
            self.weight[i]
        }
        fn outstanding(&self, i: usize) -> u32 {
            self.outstanding[i]
        }
        fn latency_us(&self, i: usize) -> Option<f64> {
            self.latency_us[i]
        }
    }

    /// How many of `n` picks each backend got.
    pub fn shares(b: &mut dyn super::Balancer, t: &Table, n: usize, seed: u64) -> Vec<usize> {
        let mut rng = super::Rng::new(seed);
        let mut counts = vec![0; t.len()];
        for _ in 0..n {
            if let Some(i) = b.pick(t, None, &mut rng) {
                counts[i] += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible_and_spread() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(Rng::new(0).next_u64(), Rng::new(1).next_u64());
        let mut r = Rng::new(3);
        let mut counts = [0usize; 4];
        for _ in 0..40_000 {
            counts[r.below(4)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn key_hash_is_stable() {
        // Fixed values: a change here moves every shop to another container.
        assert_eq!(hash_key(b""), 0xc381_7c01_6ba4_ff30);
        assert_eq!(hash_key(b"shop.example.com"), 0xff40_2017_1e59_f785);
        assert_ne!(hash_key(b"a"), hash_key(b"b"));
    }
}
