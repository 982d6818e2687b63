//! Which names to order a certificate for, and when: the ACME manager's
//! decisions, sans-IO. Time is wall-clock milliseconds passed in (a
//! certificate's validity is wall-clock time too).
//!
//! - A wanted name without a certificate is ordered at once; one with a
//!   certificate at two thirds of its lifetime (Caddy's and certbot's rule).
//! - A failed order is tried again after a back-off that doubles from one
//!   minute to six hours, or after the CA's `Retry-After` if that is later.
//! - At most `per_hour` orders start in any hour (the CA's rate limits
//!   are per account and per name; a burst of new shops must not spend
//!   them all, nor a failing CA be hammered).
//! - Names come due in order of their time: new names (due at 0) before
//!   renewals, renewals by how soon they are due. An index keeps that order,
//!   so finding the next name does not scan every name.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Serialize;

/// The first retry after a failure; each further failure doubles it.
pub const FIRST_RETRY_MS: u64 = 60_000;
/// The longest wait between attempts.
pub const MAX_RETRY_MS: u64 = 6 * 3600 * 1000;
const HOUR_MS: u64 = 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No certificate yet; waiting for its turn.
    Pending,
    /// An order is running.
    Ordering,
    /// A certificate is held and not yet due for renewal.
    Valid,
    /// The last order failed; tried again at `next_ms`. A certificate held
    /// before keeps being served until it expires.
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ordering => "ordering",
            Self::Valid => "valid",
            Self::Failed => "failed",
        }
    }
}

/// What is known of one name.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub state: State,
    /// The validity of the certificate held, in Unix milliseconds.
    pub not_before_ms: Option<u64>,
    pub not_after_ms: Option<u64>,
    /// When an order is next due (Unix ms; 0: now).
    pub next_ms: u64,
    /// Failed orders since the last success.
    pub attempts: u32,
    pub last_error: Option<String>,
}

#[derive(Debug)]
pub struct Schedule {
    entries: BTreeMap<String, Entry>,
    /// (due time, name) for every entry that is not ordering.
    queue: BTreeSet<(u64, String)>,
    /// When the orders of the last hour started.
    started: VecDeque<u64>,
    pub per_hour: u32,
}

/// When a certificate valid from `nb` to `na` is renewed.
pub fn renew_at(nb: u64, na: u64) -> u64 {
    nb + na.saturating_sub(nb) / 3 * 2
}

/// The wait after the `attempts`th failure in a row.
pub fn backoff(attempts: u32) -> u64 {
    FIRST_RETRY_MS
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(20))
        .min(MAX_RETRY_MS)
}

impl Schedule {
    pub fn new(per_hour: u32) -> Self {
        Self {
            entries: BTreeMap::new(),
            queue: BTreeSet::new(),
            started: VecDeque::new(),
            per_hour,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(n, e)| (n.as_str(), e))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn requeue(&mut self, name: &str, next_ms: u64) {
        if let Some(e) = self.entries.get_mut(name) {
            if e.state != State::Ordering {
                self.queue.remove(&(e.next_ms, name.to_owned()));
            }
            e.next_ms = next_ms;
            if e.state != State::Ordering {
                self.queue.insert((next_ms, name.to_owned()));
            }
        }
    }

    /// The names certificates are wanted for from now on: new ones are due
    /// at once, ones no longer wanted are forgotten (their certificates are
    /// not renewed). Returns the names added, and how many were removed.
    pub fn want(&mut self, names: &BTreeSet<String>) -> (Vec<String>, usize) {
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for n in &gone {
            self.remove(n);
        }
        let added = names.iter().filter(|n| self.add(n)).cloned().collect();
        (added, gone.len())
    }

    /// One name wanted from now on (due at once); false if it was already.
    pub fn add(&mut self, name: &str) -> bool {
        if self.entries.contains_key(name) {
            return false;
        }
        self.entries.insert(
            name.to_owned(),
            Entry {
                state: State::Pending,
                not_before_ms: None,
                not_after_ms: None,
                next_ms: 0,
                attempts: 0,
                last_error: None,
            },
        );
        self.queue.insert((0, name.to_owned()));
        true
    }

    /// One name no longer wanted; false if it was not. An order running
    /// for it finishes and is then forgotten.
    pub fn remove(&mut self, name: &str) -> bool {
        match self.entries.remove(name) {
            Some(e) => {
                self.queue.remove(&(e.next_ms, name.to_owned()));
                true
            }
            None => false,
        }
    }

    /// A certificate for `name` is held (found at start, issued here, or
    /// from a peer): it is renewed at two thirds of its lifetime. One older
    /// than the one held changes nothing.
    pub fn held(&mut self, name: &str, not_before_ms: u64, not_after_ms: u64) {
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        if e.not_after_ms.is_some_and(|na| na > not_after_ms) {
            return;
        }
        e.not_before_ms = Some(not_before_ms);
        e.not_after_ms = Some(not_after_ms);
        if e.state == State::Ordering {
            // The order in flight finishes and reports; a peer's certificate
            // arriving meanwhile only moves the renewal time.
            return;
        }
        e.state = State::Valid;
        e.attempts = 0;
        e.last_error = None;
        self.requeue(name, renew_at(not_before_ms, not_after_ms));
    }

    /// The next name to order at `now_ms`, if one is due and the hour's
    /// budget allows; it is marked as ordering.
    pub fn due(&mut self, now_ms: u64) -> Option<String> {
        while self.started.front().is_some_and(|&t| t + HOUR_MS <= now_ms) {
            self.started.pop_front();
        }
        if self.started.len() >= self.per_hour as usize {
            return None;
        }
        let (at, _) = self.queue.first()?;
        if *at > now_ms {
            return None;
        }
        let (_, name) = self.queue.pop_first()?;
        let e = self.entries.get_mut(&name)?;
        e.state = State::Ordering;
        self.started.push_back(now_ms);
        Some(name)
    }

    /// When something may next come due: the first queued time, or when
    /// the hour's budget frees a slot if it is spent.
    pub fn next_wakeup(&self) -> Option<u64> {
        let first = self.queue.first().map(|(t, _)| *t)?;
        if self.started.len() >= self.per_hour as usize {
            let freed = self.started.front().map_or(first, |t| t + HOUR_MS);
            return Some(first.max(freed));
        }
        Some(first)
    }

    /// An order for `name` ended: with the new certificate's validity, or
    /// with an error and, maybe, the CA's `Retry-After` (seconds).
    pub fn finished(
        &mut self,
        name: &str,
        result: Result<(u64, u64), (String, Option<u64>)>,
        now_ms: u64,
    ) {
        let Some(e) = self.entries.get_mut(name) else {
            return;
        };
        match result {
            Ok((nb, na)) => {
                e.state = State::Valid;
                e.attempts = 0;
                e.last_error = None;
                if e.not_after_ms.is_none_or(|held| held <= na) {
                    e.not_before_ms = Some(nb);
                    e.not_after_ms = Some(na);
                }
                let (nb, na) = (e.not_before_ms.unwrap_or(nb), e.not_after_ms.unwrap_or(na));
                self.queue.insert((renew_at(nb, na), name.to_owned()));
                e.next_ms = renew_at(nb, na);
            }
            Err((error, retry_after_s)) => {
                e.state = State::Failed;
                e.attempts += 1;
                e.last_error = Some(error);
                let wait = backoff(e.attempts).max(retry_after_s.unwrap_or(0).saturating_mul(1000));
                e.next_ms = now_ms + wait;
                self.queue.insert((e.next_ms, name.to_owned()));
            }
        }
    }

    /// The CA's renewal information (RFC 9773) says to renew `name` at
    /// `at_ms`: a name holding a certificate renews then instead of at two
    /// thirds of its lifetime, but never later than nine tenths of it. A
    /// name that is ordering, failing or without a certificate keeps its
    /// own time. True if the time moved.
    pub fn suggest(&mut self, name: &str, at_ms: u64) -> bool {
        let Some(e) = self.entries.get(name) else {
            return false;
        };
        let (State::Valid, Some(nb), Some(na)) = (e.state, e.not_before_ms, e.not_after_ms) else {
            return false;
        };
        let at = at_ms.min(nb + na.saturating_sub(nb) / 10 * 9);
        if at == e.next_ms {
            return false;
        }
        self.requeue(name, at);
        true
    }

    /// An operator asked for a new certificate now (`edgebox ctl certs
    /// renew`): due at once, back-off forgotten; the hour's budget still
    /// holds. False if the name is not managed.
    pub fn force(&mut self, name: &str, now_ms: u64) -> bool {
        match self.entries.get(name).map(|e| e.state) {
            None => false,
            Some(State::Ordering) => true,
            Some(_) => {
                self.requeue(name, now_ms);
                true
            }
        }
    }

    /// How many names are in each state.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut c: BTreeMap<&'static str, usize> =
            [State::Pending, State::Ordering, State::Valid, State::Failed]
                .iter()
                .map(|s| (s.as_str(), 0))
                .collect();
        for e in self.entries.values() {
            *c.entry(e.state.as_str()).or_default() += 1;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    const DAY: u64 = 24 * 3600 * 1000;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn new_names_are_ordered_at_once_and_renewed_at_two_thirds() {
        let mut s = Schedule::new(100);
        s.want(&names(&["a.test", "b.test"]));
        let t0 = 1_000 * DAY;
        assert_eq!(s.due(t0).as_deref(), Some("a.test"));
        assert_eq!(s.due(t0).as_deref(), Some("b.test"));
        assert_eq!(s.due(t0), None, "both are ordering");
        s.finished("a.test", Ok((t0, t0 + 90 * DAY)), t0);
        assert_eq!(s.get("a.test").unwrap().state, State::Valid);
        assert_eq!(s.get("a.test").unwrap().next_ms, t0 + 60 * DAY);
        assert_eq!(s.next_wakeup(), Some(t0 + 60 * DAY));
        assert_eq!(s.due(t0 + 60 * DAY - 1), None);
        assert_eq!(s.due(t0 + 60 * DAY).as_deref(), Some("a.test"));
    }

    #[test]
    fn failures_back_off_doubling_to_six_hours_or_as_the_ca_asks() {
        let mut s = Schedule::new(1000);
        s.want(&names(&["a.test"]));
        let mut now = 10 * DAY;
        let mut waits = Vec::new();
        for _ in 0..12 {
            assert_eq!(s.due(now).as_deref(), Some("a.test"));
            s.finished("a.test", Err(("connection refused".into(), None)), now);
            let e = s.get("a.test").unwrap().clone();
            assert_eq!(e.state, State::Failed);
            assert_eq!(e.last_error.as_deref(), Some("connection refused"));
            assert_eq!(s.due(e.next_ms - 1), None, "not before its time");
            waits.push(e.next_ms - now);
            now = e.next_ms;
        }
        assert_eq!(&waits[..4], &[MIN, 2 * MIN, 4 * MIN, 8 * MIN]);
        assert_eq!(*waits.last().unwrap(), 6 * 3600 * 1000);
        // Retry-After beyond the back-off wins.
        s.due(now);
        s.finished(
            "a.test",
            Err(("rateLimited".into(), Some(7 * 3600 * 2))),
            now,
        );
        assert_eq!(s.get("a.test").unwrap().next_ms, now + 7 * 3600 * 2000);
        // A success forgets the failures.
        let now = s.get("a.test").unwrap().next_ms;
        s.due(now);
        s.finished("a.test", Ok((now, now + 3 * MIN)), now);
        let e = s.get("a.test").unwrap();
        assert_eq!(
            (e.state, e.attempts, e.last_error.clone()),
            (State::Valid, 0, None)
        );
        assert_eq!(e.next_ms, now + 2 * MIN);
    }

    #[test]
    fn at_most_per_hour_orders_start_in_any_hour() {
        let mut s = Schedule::new(3);
        let many: Vec<String> = (0..10).map(|i| format!("s{i}.test")).collect();
        s.want(&many.iter().cloned().collect());
        let t = 5 * DAY;
        let first: Vec<String> = std::iter::from_fn(|| s.due(t)).collect();
        assert_eq!(first.len(), 3);
        assert_eq!(
            s.next_wakeup(),
            Some(t + 3600 * 1000),
            "the hour frees a slot"
        );
        assert_eq!(s.due(t + 3600 * 1000 - 1), None);
        assert!(s.due(t + 3600 * 1000).is_some());
        assert_eq!(s.counts()["ordering"], 4);
        assert_eq!(s.counts()["pending"], 6);
    }

    #[test]
    fn names_no_longer_wanted_are_forgotten_and_new_ones_come_first() {
        let mut s = Schedule::new(100);
        s.want(&names(&["a.test", "b.test"]));
        let t = 3 * DAY;
        s.due(t);
        s.finished("a.test", Ok((t, t + 90 * DAY)), t);
        assert_eq!(
            s.want(&names(&["a.test", "c.test"])),
            (vec!["c.test".to_owned()], 1)
        );
        assert!(s.get("b.test").is_none());
        assert_eq!(s.due(t).as_deref(), Some("c.test"));
        assert_eq!(s.due(t), None);
        // An operator's renewal comes due now, once.
        assert!(s.force("a.test", t));
        assert!(!s.force("zz.test", t));
        assert_eq!(s.due(t).as_deref(), Some("a.test"));
        assert_eq!(s.due(t), None);
    }

    #[test]
    fn the_cas_renewal_window_moves_the_renewal_within_the_lifetime() {
        let mut s = Schedule::new(100);
        s.want(&names(&["a.test", "b.test"]));
        let t = 9 * DAY;
        s.held("a.test", t, t + 90 * DAY);
        // Earlier than two thirds (a revocation coming): renewed then.
        assert!(s.suggest("a.test", t + 10 * DAY));
        assert_eq!(s.get("a.test").unwrap().next_ms, t + 10 * DAY);
        assert_eq!(
            s.due(t + 10 * DAY - 1).as_deref(),
            Some("b.test"),
            "b has none yet"
        );
        assert_eq!(s.due(t + 10 * DAY - 1), None);
        assert_eq!(s.due(t + 10 * DAY).as_deref(), Some("a.test"));
        s.finished("a.test", Ok((t + 10 * DAY, t + 100 * DAY)), t + 10 * DAY);
        // Later, but not past nine tenths of the lifetime.
        assert!(s.suggest("a.test", t + 99 * DAY));
        assert_eq!(s.get("a.test").unwrap().next_ms, t + 10 * DAY + 81 * DAY);
        assert!(!s.suggest("a.test", t + 99 * DAY), "no change");
        // Not for a name ordering or without a certificate.
        assert!(!s.suggest("b.test", t));
        assert!(!s.suggest("zz.test", t));
    }

    #[test]
    fn a_certificate_from_elsewhere_moves_the_renewal_unless_it_is_older() {
        let mut s = Schedule::new(100);
        s.want(&names(&["a.test"]));
        let t = 7 * DAY;
        s.held("a.test", t, t + 90 * DAY);
        assert_eq!(s.get("a.test").unwrap().state, State::Valid);
        assert_eq!(s.due(t), None, "held: not ordered");
        s.held("a.test", t - DAY, t + 30 * DAY);
        assert_eq!(s.get("a.test").unwrap().not_after_ms, Some(t + 90 * DAY));
        assert_eq!(s.next_wakeup(), Some(t + 60 * DAY));
        // During an order a peer's certificate moves only the dates.
        s.force("a.test", t);
        assert_eq!(s.due(t).as_deref(), Some("a.test"));
        s.held("a.test", t + DAY, t + 91 * DAY);
        assert_eq!(s.get("a.test").unwrap().state, State::Ordering);
        s.finished("a.test", Err(("x".into(), None)), t);
        assert_eq!(s.get("a.test").unwrap().state, State::Failed);
        assert_eq!(
            s.get("a.test").unwrap().not_after_ms,
            Some(t + 91 * DAY),
            "still served"
        );
    }
}
