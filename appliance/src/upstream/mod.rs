//! What one core knows of the backends it sends to, kept across snapshots.
//!
//! A config change, a host-map change or a publish makes a new
//! [`Snapshot`]; the backends in it are the same backends as before. Each
//! core therefore keeps a [`Registry`] keyed by backend identity (pool name
//! and address) whose [`CoreBackend`]s carry what the core has learned:
//! requests in flight and queued (its concurrency [`Gate`]), the latency
//! estimate, the metric handles. Per pool, a [`PoolState`] keeps the pool's
//! own gate and retry budget. When a snapshot is published, the core builds
//! a [`CoreView`] from it: the snapshot plus, for each of its pools, the
//! registry's entries for its backends (new ones start cold). Entries of
//! backends that left are dropped from the registry; requests still in
//! flight to them hold their own reference, so they finish undisturbed.
//!
//! Nothing here does IO, besides being woken (a queued request waits for a
//! slot on this core's executor).

pub mod slot;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use crate::balance::limit::Gate;
use crate::balance::retry::Budget;
use crate::balance::{
    slow_start, Algorithm, Balancer, Latency, LeastRequest, PeakEwma, Rng, View, WeightedRoundRobin,
};
use crate::metrics::{BackendCounters, BackendKey, CoreStats, PoolCounters};
use crate::snapshot::{self, Snapshot};

pub use slot::{NoSlot, PoolSlot, Slot};

/// One backend as one core keeps it.
#[derive(Debug)]
pub struct CoreBackend {
    pub pool: Arc<str>,
    pub addr: SocketAddr,
    pub name: Arc<str>,
    /// What every core knows of it (health, ejection, slow start, drain).
    pub shared: Arc<crate::balance::BackendShared>,
    pub stats: Arc<BackendCounters>,
    latency: Cell<Latency>,
    gate: RefCell<Gate>,
    /// Requests waiting in `gate`'s queue: ticket → waker.
    waiters: RefCell<Vec<(u64, std::task::Waker)>>,
    core_stats: Arc<CoreStats>,
}

impl Drop for CoreBackend {
    fn drop(&mut self) {
        self.core_stats.unregister_backend(&self.stats);
    }
}

impl CoreBackend {
    /// Requests in flight to it from this core.
    pub fn active(&self) -> u32 {
        self.gate.borrow().active()
    }

    /// Records a response's latency (time to its headers).
    pub fn observe_latency(&self, took: std::time::Duration, now_us: u64) {
        let mut l = self.latency.get();
        l.observe(took.as_micros() as f64, now_us);
        self.latency.set(l);
    }

    fn publish_load(&self) {
        let g = self.gate.borrow();
        self.stats.set_load(g.active(), g.queued());
    }
}

/// One pool as one core keeps it, across snapshots.
#[derive(Debug)]
pub struct PoolState {
    pub name: Arc<str>,
    gate: RefCell<Gate>,
    budget: RefCell<Budget>,
    pub stats: Arc<PoolCounters>,
    /// Requests that reached no backend (the pool was empty or down).
    pub unreached: Arc<BackendCounters>,
    core_stats: Arc<CoreStats>,
}

impl Drop for PoolState {
    fn drop(&mut self) {
        self.core_stats.unregister_pool(&self.stats);
        self.core_stats.unregister_backend(&self.unreached);
    }
}

impl PoolState {
    /// A request is sent to the pool (counted once, however many tries).
    pub fn record_request(&self, now_ms: u64) {
        self.budget.borrow_mut().record_request(now_ms);
    }

    /// Takes a retry from the pool's budget, if there is one left.
    pub fn withdraw_retry(&self, now_ms: u64) -> bool {
        let ok = self.budget.borrow_mut().try_withdraw(now_ms);
        if !ok {
            self.stats.budget_exhausted();
        }
        ok
    }
}

/// One pool of a snapshot, on one core.
#[derive(Debug)]
pub struct CorePool {
    pub state: Rc<PoolState>,
    /// Parallel to the snapshot pool's `backends`.
    pub backends: Vec<Rc<CoreBackend>>,
    algorithm: RefCell<Algorithm>,
}

/// What a pick found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// A backend with room for one more request.
    Ready(usize),
    /// Every usable backend is at its limit; this one's queue is the one to
    /// wait in.
    Busy(usize),
    /// No backend may get the request.
    None,
}

/// Backends already tried for one request; at most [`MAX_TRIES`].
#[derive(Debug, Default, Clone)]
pub struct Tried {
    list: [usize; MAX_TRIES],
    len: usize,
}

/// The most tries of one request (`retries.max` is at most 7).
pub const MAX_TRIES: usize = 8;

impl Tried {
    pub fn add(&mut self, i: usize) {
        if self.len < MAX_TRIES && !self.contains(i) {
            self.list[self.len] = i;
            self.len += 1;
        }
    }

    pub fn remove(&mut self, i: usize) {
        if let Some(k) = self.list[..self.len].iter().position(|&x| x == i) {
            self.list.copy_within(k + 1..self.len, k);
            self.len -= 1;
        }
    }

    pub fn contains(&self, i: usize) -> bool {
        self.list[..self.len].contains(&i)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The pool as the balancer sees it for one pick.
struct PickView<'a> {
    pool: &'a snapshot::Pool,
    backends: &'a [Rc<CoreBackend>],
    tried: &'a Tried,
    now_ms: u64,
    now_us: u64,
    /// Too few healthy backends: health and ejections are ignored.
    panic: bool,
    /// Only backends below their concurrency limit.
    need_room: bool,
}

impl View for PickView<'_> {
    fn len(&self) -> usize {
        self.backends.len()
    }

    fn usable(&self, i: usize) -> bool {
        let b = &self.pool.backends[i];
        b.weight > 0
            && !self.tried.contains(i)
            && (self.panic || b.shared.serves(self.now_ms))
            && (!self.need_room || self.backends[i].gate.borrow().has_room())
    }

    fn weight(&self, i: usize) -> u32 {
        let b = &self.pool.backends[i];
        slow_start::effective_weight(
            b.weight,
            b.shared.ramp_start_ms(),
            self.now_ms,
            self.pool.slow_start_ms,
        )
    }

    fn outstanding(&self, i: usize) -> u32 {
        self.backends[i].active()
    }

    fn latency_us(&self, i: usize) -> Option<f64> {
        self.backends[i].latency.get().get(self.now_us)
    }
}

impl CorePool {
    /// Chooses a backend of `pool` (this pool's snapshot side) that is not in
    /// `tried`. `key` is the request's hash key for consistent hashing.
    pub fn pick(
        &self,
        pool: &snapshot::Pool,
        tried: &Tried,
        key: Option<u64>,
        rng: &mut Rng,
        now_ms: u64,
    ) -> Pick {
        if self.backends.is_empty() {
            return Pick::None;
        }
        let now_us = now_ms.saturating_mul(1_000);
        let panic = pool.panic_threshold_percent > 0 && {
            let serving = pool
                .backends
                .iter()
                .filter(|b| b.weight > 0 && b.shared.serves(now_ms))
                .count();
            (serving as u64) * 100
                < u64::from(pool.panic_threshold_percent) * pool.backends.len() as u64
        };
        let mut view = PickView {
            pool,
            backends: &self.backends,
            tried,
            now_ms,
            now_us,
            panic,
            need_room: true,
        };
        // One backend (a pod of one container, often): no choice to make.
        if self.backends.len() == 1 {
            return if view.usable(0) {
                Pick::Ready(0)
            } else {
                view.need_room = false;
                if view.usable(0) {
                    Pick::Busy(0)
                } else {
                    Pick::None
                }
            };
        }
        let mut algorithm = self.algorithm.borrow_mut();
        if let Some(i) = algorithm.pick(&view, key, rng) {
            return Pick::Ready(i);
        }
        view.need_room = false;
        match algorithm.pick(&view, key, rng) {
            Some(i) => Pick::Busy(i),
            None => Pick::None,
        }
    }
}

/// The latest snapshot as one core serves it.
#[derive(Debug)]
pub struct CoreView {
    pub snap: Arc<Snapshot>,
    /// Parallel to `snap.pools`.
    pub pools: Vec<CorePool>,
}

/// One core's backends and pools, by identity.
#[derive(Debug)]
pub struct Registry {
    core: usize,
    cores: usize,
    stats: Arc<CoreStats>,
    backends: RefCell<HashMap<BackendId, Rc<CoreBackend>>>,
    pools: RefCell<HashMap<Arc<str>, Rc<PoolState>>>,
}

/// A backend's identity: its pool and its address.
type BackendId = (Arc<str>, SocketAddr);

/// This core's share of a limit that all cores enforce together: the limit
/// divided by the cores, rounded up (0 stays "no limit").
fn share(limit: u32, cores: usize) -> u32 {
    limit.div_ceil(cores.max(1) as u32)
}

impl Registry {
    pub fn new(core: usize, cores: usize, stats: Arc<CoreStats>) -> Self {
        Self {
            core,
            cores,
            stats,
            backends: RefCell::default(),
            pools: RefCell::default(),
        }
    }

    /// The view of `snap` for this core: every backend and pool it names,
    /// with what this core already knows of them. Backends and pools it
    /// does not name are forgotten.
    pub fn view(&self, snap: Arc<Snapshot>) -> CoreView {
        let mut backends = self.backends.borrow_mut();
        let mut pools = self.pools.borrow_mut();
        let mut kept_backends = HashMap::with_capacity(backends.len());
        let mut kept_pools = HashMap::with_capacity(pools.len());
        let mut views = Vec::with_capacity(snap.pools.len());
        for p in &snap.pools {
            let limits = &p.limits;
            let state = pools.remove(&p.name).unwrap_or_else(|| {
                Rc::new(PoolState {
                    name: Arc::clone(&p.name),
                    gate: RefCell::default(),
                    budget: RefCell::new(Budget::new(0, 0)),
                    stats: self.stats.register_pool(Arc::clone(&p.name)),
                    unreached: self.stats.register_backend(BackendKey {
                        pool: Arc::clone(&p.name),
                        backend: Arc::from("-"),
                    }),
                    core_stats: Arc::clone(&self.stats),
                })
            });
            state
                .gate
                .borrow_mut()
                .set_limits(share(limits.pool_max_requests, self.cores), 0);
            {
                let mut budget = state.budget.borrow_mut();
                let fresh = Budget::new(p.retries.budget_percent, p.retries.budget_min_per_s);
                budget.set_rates(&fresh);
            }
            let mut members = Vec::with_capacity(p.backends.len());
            for b in &p.backends {
                let key = (Arc::clone(&p.name), b.addr);
                let cb = match kept_backends.get(&key) {
                    Some(cb) => Rc::clone(cb),
                    None => backends.remove(&key).unwrap_or_else(|| {
                        Rc::new(CoreBackend {
                            pool: Arc::clone(&p.name),
                            addr: b.addr,
                            name: Arc::clone(&b.name),
                            shared: Arc::clone(&b.shared),
                            stats: self.stats.register_backend(BackendKey {
                                pool: Arc::clone(&p.name),
                                backend: Arc::clone(&b.name),
                            }),
                            latency: Cell::default(),
                            gate: RefCell::default(),
                            waiters: RefCell::default(),
                            core_stats: Arc::clone(&self.stats),
                        })
                    }),
                };
                cb.gate.borrow_mut().set_limits(
                    share(limits.backend_max_connections, self.cores),
                    share(limits.backend_max_queue, self.cores),
                );
                // A raised limit lets those waiting in.
                slot::admit_waiting(&cb);
                kept_backends.insert(key, Rc::clone(&cb));
                members.push(cb);
            }
            let n = members.len();
            let algorithm = match &p.balance {
                snapshot::Balance::RoundRobin => {
                    Algorithm::RoundRobin(WeightedRoundRobin::new(n, self.core))
                }
                snapshot::Balance::LeastRequest => {
                    Algorithm::LeastRequest(LeastRequest::new(self.core))
                }
                snapshot::Balance::PeakEwma => Algorithm::PeakEwma(PeakEwma),
                snapshot::Balance::Hash { table, .. } => {
                    Algorithm::Hash(Arc::clone(table), WeightedRoundRobin::new(n, self.core))
                }
            };
            kept_pools.insert(Arc::clone(&p.name), Rc::clone(&state));
            views.push(CorePool {
                state,
                backends: members,
                algorithm: RefCell::new(algorithm),
            });
        }
        *backends = kept_backends;
        *pools = kept_pools;
        CoreView { snap, pools: views }
    }
}

#[cfg(test)]
mod tests;
