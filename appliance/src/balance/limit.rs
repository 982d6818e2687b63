//! Concurrency limits with a bounded queue (as HAProxy's server `maxconn`,
//! `maxqueue` and `timeout queue`): at most `limit` requests in flight; the
//! next ones wait in order, at most `max_queue` of them, and whoever waits
//! longer than the queue timeout (the caller's clock) gives up.

use std::collections::VecDeque;

/// The answer to a request that wants in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// In: it holds a slot until it calls [`Gate::leave`].
    Now,
    /// Waiting with this ticket, until [`Gate::leave`] hands it a slot or
    /// it gives up with [`Gate::cancel`].
    Queued(u64),
    /// The queue is full too.
    Full,
}

#[derive(Debug, Clone, Default)]
pub struct Gate {
    /// 0: no limit.
    limit: u32,
    max_queue: u32,
    active: u32,
    queue: VecDeque<u64>,
    next_ticket: u64,
}

impl Gate {
    pub fn new(limit: u32, max_queue: u32) -> Self {
        Self {
            limit,
            max_queue,
            ..Self::default()
        }
    }

    /// New limits from a config change; who is in stays in, who waits
    /// waits.
    pub fn set_limits(&mut self, limit: u32, max_queue: u32) {
        self.limit = limit;
        self.max_queue = max_queue;
    }

    pub fn active(&self) -> u32 {
        self.active
    }

    pub fn queued(&self) -> u32 {
        self.queue.len() as u32
    }

    /// Whether one more could come in without waiting.
    pub fn has_room(&self) -> bool {
        self.limit == 0 || (self.active < self.limit && self.queue.is_empty())
    }

    pub fn try_enter(&mut self) -> Admit {
        if self.has_room() {
            self.active += 1;
            return Admit::Now;
        }
        if self.queue.len() as u32 >= self.max_queue {
            return Admit::Full;
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.queue.push_back(ticket);
        Admit::Queued(ticket)
    }

    /// Gives a slot back. If someone waits (and the limit allows), the slot
    /// goes straight to the first in line, whose ticket is returned so the
    /// caller can wake it.
    pub fn leave(&mut self) -> Option<u64> {
        self.active = self.active.saturating_sub(1);
        self.admit_waiting()
    }

    /// The first in line, if the limit has room for it now (after a leave,
    /// or a raised limit); it holds a slot from here on.
    pub fn admit_waiting(&mut self) -> Option<u64> {
        if self.limit != 0 && self.active >= self.limit {
            return None;
        }
        let ticket = self.queue.pop_front()?;
        self.active += 1;
        Some(ticket)
    }

    /// Whether `ticket` is still in line (not yet handed a slot).
    pub fn is_waiting(&self, ticket: u64) -> bool {
        self.queue.contains(&ticket)
    }

    /// The holder of `ticket` gives up waiting. `true` if it was still in
    /// line; `false` if it had been handed a slot meanwhile, which it now
    /// holds (and must give back with [`Gate::leave`]).
    pub fn cancel(&mut self, ticket: u64) -> bool {
        match self.queue.iter().position(|&t| t == ticket) {
            Some(i) => {
                self.queue.remove(i);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_limit_lets_everyone_in() {
        let mut g = Gate::new(0, 0);
        for _ in 0..1_000 {
            assert_eq!(g.try_enter(), Admit::Now);
        }
        assert_eq!(g.active(), 1_000);
    }

    #[test]
    fn over_the_limit_waits_in_order_then_is_refused() {
        let mut g = Gate::new(2, 2);
        assert_eq!(g.try_enter(), Admit::Now);
        assert_eq!(g.try_enter(), Admit::Now);
        assert_eq!(g.try_enter(), Admit::Queued(0));
        assert_eq!(g.try_enter(), Admit::Queued(1));
        assert_eq!(g.try_enter(), Admit::Full);
        assert!(!g.has_room());
        // One leaves: the first in line gets its slot.
        assert_eq!(g.leave(), Some(0));
        assert!(!g.is_waiting(0) && g.is_waiting(1));
        assert_eq!((g.active(), g.queued()), (2, 1));
        assert_eq!(g.leave(), Some(1));
        assert_eq!(g.leave(), None);
        assert_eq!((g.active(), g.queued()), (1, 0));
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_the_line() {
        let mut g = Gate::new(1, 5);
        g.try_enter();
        let Admit::Queued(a) = g.try_enter() else {
            panic!()
        };
        let Admit::Queued(b) = g.try_enter() else {
            panic!()
        };
        assert!(g.cancel(a), "still waiting: removed");
        assert_eq!(g.leave(), Some(b), "the next in line, not the one gone");
        assert!(!g.cancel(b), "b holds a slot now");
        assert_eq!(g.active(), 1);
    }

    #[test]
    fn nobody_jumps_the_queue() {
        let mut g = Gate::new(1, 5);
        g.try_enter();
        assert_eq!(g.try_enter(), Admit::Queued(0));
        // A slot frees while someone waits: it goes to the waiter, and a
        // newcomer queues behind.
        assert_eq!(g.leave(), Some(0));
        assert_eq!(g.try_enter(), Admit::Queued(1));
    }

    #[test]
    fn a_raised_limit_admits_those_waiting() {
        let mut g = Gate::new(1, 5);
        g.try_enter();
        g.try_enter();
        g.try_enter();
        g.set_limits(3, 5);
        assert_eq!(g.admit_waiting(), Some(0));
        assert_eq!(g.admit_waiting(), Some(1));
        assert_eq!(g.admit_waiting(), None);
        assert_eq!(g.active(), 3);
    }
}
