//! The registry: what a core learned of a backend survives config changes;
//! new backends start cold, removed ones are forgotten (once their requests
//! are done); picks respect health, ejection, drains and limits.

use std::rc::Rc;
use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::balance::health::Health;
use crate::snapshot::Upstreams;

fn publish(upstreams: &mut Upstreams, pools: Value) -> Arc<Snapshot> {
    Arc::new(crate::snapshot::for_test(pools, upstreams))
}

fn pool(backends: &[&str]) -> Value {
    let b: Vec<Value> = backends.iter().map(|a| json!({"address": a})).collect();
    json!([{"name": "app", "backends": b,
            "health_check": {"path": "/healthz"},
            "limits": {"backend_max_connections": 4}}])
}

#[test]
fn what_a_core_learned_survives_a_config_change() {
    let mut up = Upstreams::default();
    let stats = Arc::new(CoreStats::default());
    let reg = Registry::new(0, 2, Arc::clone(&stats));
    let v1 = reg.view(publish(&mut up, pool(&["10.0.0.1:80", "10.0.0.2:80"])));
    let a = Rc::clone(&v1.pools[0].backends[0]);
    let held = futures_lite::future::block_on(a.acquire(std::time::Duration::ZERO)).unwrap();
    assert_eq!(a.active(), 1);
    // A change that keeps 10.0.0.1, drops 10.0.0.2 and adds 10.0.0.3.
    let v2 = reg.view(publish(&mut up, pool(&["10.0.0.3:80", "10.0.0.1:80"])));
    let kept = &v2.pools[0].backends[1];
    assert!(Rc::ptr_eq(kept, &a), "the same backend state");
    assert_eq!(kept.active(), 1, "its request in flight is still counted");
    assert!(Arc::ptr_eq(
        &kept.shared,
        &v1.snap.pools[0].backends[0].shared
    ));
    // The new one joins in slow start and waits for its first passed check.
    let new = &v2.snap.pools[0].backends[0];
    assert_eq!(new.shared.health.get(), Health::Down);
    assert!(new.shared.ramp_start_ms() > 0);
    // The first ones were up from the start.
    assert_eq!(v1.snap.pools[0].backends[0].shared.health.get(), Health::Up);
    // The removed one is marked as draining and its metrics go once the
    // last view holding it is gone.
    let gone = &v1.snap.pools[0].backends[1].shared;
    assert!(gone.drain_expired(u64::MAX, 1));
    let series = |s: &CoreStats| s.snapshot().backends.len();
    assert_eq!(
        series(&stats),
        4,
        "two old views' worth, plus the pool's \"-\""
    );
    drop(v1);
    assert_eq!(series(&stats), 3);
    drop(held);
    assert_eq!(kept.active(), 0);
}

#[test]
fn limits_are_shared_out_between_cores() {
    assert_eq!(share(0, 4), 0, "no limit stays no limit");
    assert_eq!(share(10, 4), 3);
    assert_eq!(share(1, 4), 1);
    let mut up = Upstreams::default();
    let reg = Registry::new(0, 2, Arc::default());
    let v = reg.view(publish(&mut up, pool(&["10.0.0.1:80"])));
    let b = &v.pools[0].backends[0];
    let slots: Vec<_> = (0..2)
        .map(|_| futures_lite::future::block_on(b.acquire(std::time::Duration::ZERO)).unwrap())
        .collect();
    assert!(!b.gate.borrow().has_room(), "4 across 2 cores: 2 here");
    drop(slots);
}

#[test]
fn picks_skip_what_is_down_ejected_draining_tried_or_full() {
    let mut up = Upstreams::default();
    let reg = Registry::new(0, 1, Arc::default());
    let pools = json!([{"name": "app", "backends": [
        {"address": "10.0.0.1:80"}, {"address": "10.0.0.2:80", "state": "draining"},
        {"address": "10.0.0.3:80"}, {"address": "10.0.0.4:80"}],
        "limits": {"backend_max_connections": 1}}]);
    let v = reg.view(publish(&mut up, pools));
    let (snap, core) = (&v.snap.pools[0], &v.pools[0]);
    let now = crate::clock::now_ms();
    snap.backends[0].shared.set_health(Health::Down, now);
    let policy = crate::balance::outlier::Policy {
        consecutive: 1,
        base_ms: 60_000,
        max_ms: 60_000,
        max_percent: 100,
    };
    snap.backends[2]
        .shared
        .ejection
        .on_failure(now, &policy, || (0, 4));
    let mut rng = Rng::new(0);
    let mut tried = Tried::default();
    assert_eq!(core.pick(snap, &tried, None, &mut rng, now), Pick::Ready(3));
    let _busy = futures_lite::future::block_on(core.backends[3].acquire(std::time::Duration::ZERO))
        .unwrap();
    assert_eq!(core.pick(snap, &tried, None, &mut rng, now), Pick::Busy(3));
    tried.add(3);
    assert_eq!(core.pick(snap, &tried, None, &mut rng, now), Pick::None);
}
