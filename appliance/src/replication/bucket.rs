//! A token bucket: the bandwidth cap on what goes to and comes from one
//! peer. Pure: the caller says what time it is.

/// Bytes per second, with a burst of a twentieth of a second (at least
/// 64 KiB). A transfer larger than what is left may go once the bucket is
/// not in debt; the debt then delays what follows, so the average holds.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    /// Time of the last refill, in seconds on the caller's clock.
    at: f64,
}

impl Bucket {
    pub fn new(bytes_per_s: u64, now_s: f64) -> Self {
        let rate = bytes_per_s.max(1) as f64;
        let burst = (rate / 20.0).max(65_536.0);
        Self {
            rate,
            burst,
            tokens: burst,
            at: now_s,
        }
    }

    /// Takes `n` bytes at `now_s`: `None` if they may go now, or how many
    /// seconds to wait before asking again.
    pub fn take(&mut self, n: usize, now_s: f64) -> Option<f64> {
        self.tokens = (self.tokens + (now_s - self.at).max(0.0) * self.rate).min(self.burst);
        self.at = now_s.max(self.at);
        if self.tokens <= 0.0 {
            return Some(-self.tokens / self.rate + 1e-3);
        }
        self.tokens -= n as f64;
        None
    }

    /// A new rate from now on.
    pub fn set_rate(&mut self, bytes_per_s: u64) {
        let fresh = Self::new(bytes_per_s, self.at);
        self.rate = fresh.rate;
        self.burst = fresh.burst;
        self.tokens = self.tokens.min(self.burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `total` bytes in `chunk`s as fast as the bucket lets them go;
    /// returns the simulated seconds it took.
    fn send(bucket: &mut Bucket, total: usize, chunk: usize) -> f64 {
        let mut now = 0.0;
        let mut sent = 0;
        while sent < total {
            match bucket.take(chunk, now) {
                None => sent += chunk,
                Some(wait) => now += wait,
            }
        }
        now
    }

    #[test]
    fn the_average_rate_holds_whatever_the_chunk_size() {
        for chunk in [1_000, 64 * 1024, 1 << 20] {
            let mut b = Bucket::new(10_000_000, 0.0);
            let t = send(&mut b, 100_000_000, chunk);
            // 100 MB at 10 MB/s: 10 s, less the first burst.
            assert!((9.8..10.2).contains(&t), "{chunk}-byte chunks took {t} s");
        }
    }

    #[test]
    fn an_idle_bucket_fills_only_to_its_burst() {
        let mut b = Bucket::new(1_000_000, 0.0);
        assert_eq!(b.take(65_536, 0.0), None);
        assert!(b.take(1, 0.0).is_some(), "empty");
        // A long pause gives one burst, not the whole pause's worth.
        assert_eq!(b.take(65_536, 100.0), None);
        assert!(b.take(1, 100.0).is_some());
        b.set_rate(100_000_000);
        assert_eq!(b.take(1_000_000, 101.0), None);
    }
}
