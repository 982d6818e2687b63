//! Holding a place under a concurrency limit: a [`Slot`] for a backend, a
//! [`PoolSlot`] for a pool, each given back when dropped (when the response
//! body is finished, or the tunnel closed). A request that finds its
//! backend at its limit waits in the backend's queue, on this core, until a
//! slot is handed to it or its queue timeout passes.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::{CoreBackend, PoolState};
use crate::balance::limit::Admit;

/// A request's place under its backend's limit.
#[derive(Debug)]
pub struct Slot(Rc<CoreBackend>);

impl Slot {
    pub fn backend(&self) -> &Rc<CoreBackend> {
        &self.0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let next = self.0.gate.borrow_mut().leave();
        if let Some(ticket) = next {
            wake(&self.0, ticket);
        }
        self.0.publish_load();
    }
}

fn wake(b: &CoreBackend, ticket: u64) {
    let mut waiters = b.waiters.borrow_mut();
    if let Some(k) = waiters.iter().position(|(t, _)| *t == ticket) {
        waiters.swap_remove(k).1.wake();
    }
}

/// Lets in those waiting for `b` while its limit has room (after a config
/// raised it).
pub(super) fn admit_waiting(b: &CoreBackend) {
    loop {
        let next = b.gate.borrow_mut().admit_waiting();
        match next {
            Some(ticket) => wake(b, ticket),
            None => break,
        }
    }
    b.publish_load();
}

/// Why no slot was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// The queue was full.
    Full,
    /// The queue timeout passed.
    Timeout,
}

impl CoreBackend {
    /// A slot if the backend has room, or else a place in its queue, waited
    /// in for at most `timeout`.
    pub async fn acquire(self: &Rc<Self>, timeout: Duration) -> Result<Slot, NoSlot> {
        let admit = self.gate.borrow_mut().try_enter();
        self.publish_load();
        let ticket = match admit {
            Admit::Now => return Ok(Slot(Rc::clone(self))),
            Admit::Full => return Err(NoSlot::Full),
            Admit::Queued(t) => t,
        };
        let waited = crate::rt::timeout(timeout, Granted { b: self, ticket }).await;
        if waited.is_some() {
            return Ok(Slot(Rc::clone(self)));
        }
        // Timed out; unless the slot came at the last moment.
        let still_waiting = self.gate.borrow_mut().cancel(ticket);
        self.waiters.borrow_mut().retain(|(t, _)| *t != ticket);
        self.publish_load();
        if still_waiting {
            Err(NoSlot::Timeout)
        } else {
            Ok(Slot(Rc::clone(self)))
        }
    }
}

/// Completes once `ticket` has been handed a slot.
struct Granted<'a> {
    b: &'a CoreBackend,
    ticket: u64,
}

impl Future for Granted<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.b.gate.borrow().is_waiting(self.ticket) {
            return Poll::Ready(());
        }
        let mut waiters = self.b.waiters.borrow_mut();
        match waiters.iter_mut().find(|(t, _)| *t == self.ticket) {
            Some((_, w)) => w.clone_from(cx.waker()),
            None => waiters.push((self.ticket, cx.waker().clone())),
        }
        Poll::Pending
    }
}

/// A request's place under its pool's limit.
#[derive(Debug)]
pub struct PoolSlot(Rc<PoolState>);

impl PoolState {
    /// A place under the pool's limit, or `None` when it is full (the pool
    /// limit has no queue: a full pool answers at once).
    pub fn enter(self: &Rc<Self>) -> Option<PoolSlot> {
        let admit = self.gate.borrow_mut().try_enter();
        match admit {
            Admit::Now => {
                self.stats.set_active(self.gate.borrow().active());
                Some(PoolSlot(Rc::clone(self)))
            }
            Admit::Queued(t) => {
                // No queue is configured for pools; never kept waiting.
                self.gate.borrow_mut().cancel(t);
                None
            }
            Admit::Full => None,
        }
    }
}

impl Drop for PoolSlot {
    fn drop(&mut self) {
        let mut g = self.0.gate.borrow_mut();
        g.leave();
        self.0.stats.set_active(g.active());
    }
}
