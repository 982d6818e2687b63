//! Retries: which failed tries may be tried again on another backend, and a
//! budget that keeps retries from multiplying an outage (as Linkerd's and
//! Finagle's retry budgets: retries may add at most a share of the requests,
//! plus a small floor per second so that a quiet pool can still retry).

use http::Method;

/// How far a try got before it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection was made: nothing of the request left edgebox.
    Connect,
    /// A pooled connection turned out to be closed before the request was
    /// written: nothing left edgebox, and it says nothing of the backend.
    StaleConnection,
    /// The request was written (or partly), then the connection broke or
    /// the try timed out before any byte of a response came back.
    AfterWrite,
}

/// What the request carries, as far as retrying it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body at all.
    Empty,
    /// A body that has not been read from the client yet.
    Unsent,
    /// A body that has been (partly) read from the client and sent on: it
    /// cannot be sent again.
    Sent,
}

/// Methods whose repetition is harmless (RFC 9110, 9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether a try that failed so may be tried again (budget aside). Nothing
/// that was written is tried again unless the method is idempotent and the
/// request had no body.
pub fn may_retry(method: &Method, body: Body, failure: Failure) -> bool {
    match failure {
        Failure::Connect | Failure::StaleConnection => body != Body::Sent,
        Failure::AfterWrite => body == Body::Empty && idempotent(method),
    }
}

/// Requests and retries over the last [`WINDOW_S`] seconds, in one-second
/// buckets, for one pool on one core.
#[derive(Debug, Clone)]
pub struct Budget {
    percent: u64,
    min_per_s: u64,
    /// The second each bucket holds (a bucket of an older second is empty).
    second: [u64; WINDOW_S],
    requests: [u64; WINDOW_S],
    retries: [u64; WINDOW_S],
}

/// The budget's window.
pub const WINDOW_S: usize = 10;

impl Budget {
    /// Retries may be `percent` % of requests, and `min_per_s` a second
    /// whatever the traffic.
    pub fn new(percent: u32, min_per_s: u32) -> Self {
        Self {
            percent: u64::from(percent),
            min_per_s: u64::from(min_per_s),
            second: [u64::MAX; WINDOW_S],
            requests: [0; WINDOW_S],
            retries: [0; WINDOW_S],
        }
    }

    /// Takes `other`'s rates (a config change), keeping what was counted.
    pub fn set_rates(&mut self, other: &Budget) {
        self.percent = other.percent;
        self.min_per_s = other.min_per_s;
    }

    fn bucket(&mut self, now_ms: u64) -> usize {
        let s = now_ms / 1_000;
        let i = (s % WINDOW_S as u64) as usize;
        if self.second[i] != s {
            self.second[i] = s;
            self.requests[i] = 0;
            self.retries[i] = 0;
        }
        i
    }

    fn sums(&self, now_ms: u64) -> (u64, u64) {
        let s = now_ms / 1_000;
        let live = |i: usize| {
            self.second[i] != u64::MAX && s.saturating_sub(self.second[i]) < WINDOW_S as u64
        };
        (0..WINDOW_S)
            .filter(|&i| live(i))
            .fold((0, 0), |(q, r), i| {
                (q + self.requests[i], r + self.retries[i])
            })
    }

    /// A request (first tries only) was sent to the pool.
    pub fn record_request(&mut self, now_ms: u64) {
        let i = self.bucket(now_ms);
        self.requests[i] += 1;
    }

    /// Takes one retry from the budget if it has one left.
    pub fn try_withdraw(&mut self, now_ms: u64) -> bool {
        let (requests, retries) = self.sums(now_ms);
        let allowed = self.min_per_s * WINDOW_S as u64 + requests * self.percent / 100;
        if retries >= allowed {
            return false;
        }
        let i = self.bucket(now_ms);
        self.retries[i] += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_written_is_retried_only_when_harmless() {
        use Body::*;
        use Failure::*;
        let get = Method::GET;
        let post = Method::POST;
        assert!(may_retry(&post, Unsent, Connect), "nothing left edgebox");
        assert!(may_retry(&post, Empty, StaleConnection));
        assert!(!may_retry(&post, Sent, Connect), "the body is gone");
        assert!(may_retry(&get, Empty, AfterWrite));
        assert!(!may_retry(&post, Empty, AfterWrite), "not idempotent");
        assert!(!may_retry(&Method::PUT, Sent, AfterWrite), "body sent");
        assert!(!may_retry(&Method::PUT, Unsent, AfterWrite));
        assert!(may_retry(&Method::DELETE, Empty, AfterWrite));
        assert!(!may_retry(&Method::PATCH, Empty, AfterWrite));
    }

    #[test]
    fn retries_are_a_share_of_requests_plus_a_floor() {
        let mut b = Budget::new(20, 1);
        // 100 requests in one second: 20 % of them, plus 1/s over 10 s.
        for _ in 0..100 {
            b.record_request(0);
        }
        let granted = (0..100).filter(|_| b.try_withdraw(500)).count();
        assert_eq!(granted, 20 + 10);
    }

    #[test]
    fn an_idle_pool_still_has_its_floor_and_the_window_slides() {
        let mut b = Budget::new(20, 2);
        let granted = (0..50).filter(|_| b.try_withdraw(0)).count();
        assert_eq!(granted, 20, "2/s over 10 s");
        assert!(!b.try_withdraw(9_999), "still inside the window");
        // Ten seconds on, the old retries have left the window.
        assert!(b.try_withdraw(10_000));
        let zero = Budget::new(0, 0);
        assert!(!zero.clone().try_withdraw(0), "a zero budget never retries");
    }
}
