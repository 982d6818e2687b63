//! The forwarding loop against a scripted transport: what is retried, where,
//! how the budget and the limits hold, and how failures eject a backend. No
//! sockets; the core's executor runs only for its timers.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::*;
use crate::balance::retry;
use crate::proxy::reqbody::Progress;
use crate::snapshot::Upstreams;
use crate::upstream::{CoreView, Registry};

/// What the scripted backend does with one try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Status(u16),
    Refused,
    Stale,
    Reset,
    Timeout,
}

#[derive(Debug)]
struct TestBody(Rc<Progress>);

impl RequestBody for TestBody {
    fn progress(&self) -> crate::proxy::reqbody::Tracker {
        crate::proxy::reqbody::Tracker::of(Rc::clone(&self.0))
    }
    fn empty() -> Self {
        Self(Progress::in_state(retry::Body::Empty))
    }
}

/// Each backend's outcomes in order (then 200s), and every try made.
#[derive(Debug, Default)]
struct Script {
    outcomes: RefCell<HashMap<SocketAddr, VecDeque<Outcome>>>,
    tries: RefCell<Vec<(SocketAddr, Method, bool)>>,
}

impl Script {
    fn on(self, addr: &str, outcomes: &[Outcome]) -> Self {
        self.outcomes
            .borrow_mut()
            .insert(addr.parse().unwrap(), outcomes.iter().copied().collect());
        self
    }

    fn tried(&self) -> Vec<String> {
        self.tries
            .borrow()
            .iter()
            .map(|(a, _, fresh)| format!("{a}{}", if *fresh { " fresh" } else { "" }))
            .collect()
    }
}

impl Transport for Script {
    type Body = TestBody;
    type Resp = ();

    async fn send(
        &self,
        backend: &snapshot::Backend,
        _pool: &snapshot::Pool,
        req: Request<TestBody>,
        fresh_only: bool,
        _header_timeout: Duration,
    ) -> Result<Response<()>, TryError<TestBody>> {
        self.tries
            .borrow_mut()
            .push((backend.addr, req.method().clone(), fresh_only));
        let outcome = self
            .outcomes
            .borrow_mut()
            .get_mut(&backend.addr)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Outcome::Status(200));
        match outcome {
            Outcome::Status(s) => {
                let mut r = Response::new(());
                *r.status_mut() = StatusCode::from_u16(s).unwrap();
                Ok(r)
            }
            Outcome::Refused => Err(TryError::Connect(
                ConnectError::Io(std::io::ErrorKind::ConnectionRefused.into()),
                req,
            )),
            Outcome::Stale => Err(TryError::Stale(req)),
            Outcome::Reset => Err(TryError::Broken("connection reset".into())),
            Outcome::Timeout => Err(TryError::Timeout),
        }
    }
}

/// A pool `app` of three backends, 10.0.0.1–3:80, with `extra` merged in.
fn view(extra: serde_json::Value) -> (Rc<CoreView>, Registry) {
    let mut pool = json!({
        "name": "app",
        "backends": [
            {"address": "10.0.0.1:80"}, {"address": "10.0.0.2:80"}, {"address": "10.0.0.3:80"}
        ],
    });
    for (k, v) in extra.as_object().unwrap() {
        pool[k] = v.clone();
    }
    let snap = crate::snapshot::for_test(json!([pool]), &mut Upstreams::default());
    let registry = Registry::new(0, 1, Arc::default());
    let v = registry.view(Arc::new(snap));
    (Rc::new(v), registry)
}

fn request(method: Method, body: retry::Body) -> Request<TestBody> {
    let mut r = Request::new(TestBody(Progress::in_state(body)));
    *r.method_mut() = method;
    *r.uri_mut() = "/x".parse().unwrap();
    r.headers_mut().insert("x-test", "1".parse().unwrap());
    r
}

/// Runs `f` on a core executor (for the timers the loop may set).
fn on_core<T>(f: impl std::future::Future<Output = T> + 'static) -> T
where
    T: 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .unwrap()
        .run(f)
}

/// Forwards `req` through the view's pool with `script`; the result's status
/// (or the error's) and the backends tried.
async fn run(v: &CoreView, script: &Script, req: Request<TestBody>) -> (StatusCode, Vec<String>) {
    let rng = RefCell::new(crate::balance::Rng::new(1));
    let target = Target {
        pool: &v.snap.pools[0],
        core: &v.pools[0],
        key: None,
        rng: &rng,
    };
    let mut reached = None;
    // A bodiless idempotent request can be made again, as the proxy does.
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let mut again = move || {
        let mut r = Request::new(TestBody::empty());
        *r.method_mut() = method.clone();
        *r.uri_mut() = uri.clone();
        r
    };
    let again = (req.body().0.state() == retry::Body::Empty && retry::idempotent(req.method()))
        .then_some(&mut again as &mut dyn FnMut() -> Request<TestBody>);
    let status = match forward(script, &target, req, again, &mut reached).await {
        Ok(f) => f.response.status(),
        Err(e) => e.status(),
    };
    let tried = script.tried();
    script.tries.borrow_mut().clear();
    (status, tried)
}

const A: &str = "10.0.0.1:80";
const B: &str = "10.0.0.2:80";
const C: &str = "10.0.0.3:80";

#[test]
fn a_refused_connect_moves_on_whatever_the_method() {
    on_core(async {
        let (v, _r) = view(json!({}));
        let s = Script::default().on(A, &[Outcome::Refused]);
        let (status, tried) = run(&v, &s, request(Method::POST, retry::Body::Unsent)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            tried,
            [A, B],
            "nothing left edgebox, so a POST moves on too"
        );
        let stats = v.pools[0].backends[1].stats.snapshot();
        assert_eq!(stats.retries, 1);
        assert_eq!(v.pools[0].backends[0].stats.snapshot().failures, 1);
    });
}

#[test]
fn what_was_written_is_retried_only_if_idempotent_and_bodiless() {
    on_core(async {
        let (v, _r) = view(json!({"balance": "round_robin"}));
        // A GET without a body: tried again elsewhere, same head.
        let s = Script::default().on(A, &[Outcome::Reset]);
        let (status, tried) = run(&v, &s, request(Method::GET, retry::Body::Empty)).await;
        assert_eq!((status, tried.len()), (StatusCode::OK, 2), "{tried:?}");
        // A POST is not.
        let s = Script::default()
            .on(B, &[Outcome::Reset])
            .on(C, &[Outcome::Reset]);
        let (status, tried) = run(&v, &s, request(Method::POST, retry::Body::Empty)).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(tried.len(), 1);
        // Nor a PUT whose body went out.
        let s = Script::default()
            .on(A, &[Outcome::Reset])
            .on(B, &[Outcome::Reset])
            .on(C, &[Outcome::Reset]);
        let (status, tried) = run(&v, &s, request(Method::PUT, retry::Body::Sent)).await;
        assert_eq!((status, tried.len()), (StatusCode::BAD_GATEWAY, 1));
    });
}

#[test]
fn a_stale_pooled_connection_is_retried_fresh_and_not_counted() {
    on_core(async {
        let (v, _r) = view(json!({"retries": {"max": 0}}));
        let s = Script::default().on(A, &[Outcome::Stale]);
        let (status, tried) = run(&v, &s, request(Method::POST, retry::Body::Unsent)).await;
        assert_eq!(status, StatusCode::OK);
        // Even with retries off, the same request goes out once more on a
        // new connection.
        assert_eq!(tried.len(), 2, "{tried:?}");
        assert!(tried[1].ends_with(" fresh"), "{tried:?}");
        assert_eq!(v.pools[0].backends[0].stats.snapshot().failures, 0);
    });
}

#[test]
fn tries_stop_at_the_maximum() {
    on_core(async {
        let (v, _r) = view(json!({"retries": {"max": 1}}));
        let all = [Outcome::Refused];
        let s = Script::default().on(A, &all).on(B, &all).on(C, &all);
        let (status, tried) = run(&v, &s, request(Method::GET, retry::Body::Empty)).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(tried.len(), 2, "one try and one retry: {tried:?}");
    });
}

#[test]
fn the_budget_stops_retries_from_multiplying_an_outage() {
    on_core(async {
        // 0 % and no floor: not a single retry.
        let (v, _r) = view(json!({"retries": {"budget_percent": 0, "budget_min_per_s": 0}}));
        let s = Script::default().on(A, &[Outcome::Refused]);
        let (status, tried) = run(&v, &s, request(Method::GET, retry::Body::Empty)).await;
        assert_eq!((status, tried.len()), (StatusCode::BAD_GATEWAY, 1));
        assert_eq!(v.pools[0].state.stats.snapshot().budget_exhausted, 1);
        // 50 % and no floor: of 20 failing first tries, about 10 are retried.
        let (v, _r) = view(
            json!({"retries": {"budget_percent": 50, "budget_min_per_s": 0},
                                  "outlier_detection": {"consecutive_failures": 0}}),
        );
        let mut retried = 0;
        for _ in 0..20 {
            let s = Script::default()
                .on(A, &[Outcome::Refused])
                .on(B, &[Outcome::Refused])
                .on(C, &[Outcome::Refused]);
            let (_, tried) = run(&v, &s, request(Method::GET, retry::Body::Empty)).await;
            retried += tried.len() - 1;
        }
        assert_eq!(retried, 10);
    });
}

#[test]
fn the_response_timeout_ends_a_request_and_a_per_try_timeout_retries_it() {
    on_core(async {
        let (v, _r) = view(json!({}));
        let s = Script::default().on(A, &[Outcome::Timeout]);
        let (status, tried) = run(&v, &s, request(Method::GET, retry::Body::Empty)).await;
        assert_eq!((status, tried.len()), (StatusCode::GATEWAY_TIMEOUT, 1));
        let (v, _r) = view(json!({"retries": {"per_try_timeout_ms": 200}}));
        let s = Script::default().on(A, &[Outcome::Timeout]);
        let (status, tried) = run(&v, &s, request(Method::GET, retry::Body::Empty)).await;
        assert_eq!((status, tried.len()), (StatusCode::OK, 2));
    });
}

#[test]
fn consecutive_failures_eject_a_backend_for_every_request() {
    on_core(async {
        let (v, _r) = view(json!({"outlier_detection": {"consecutive_failures": 3}}));
        let s = Script::default().on(A, &[Outcome::Refused; 3]);
        for _ in 0..9 {
            let (status, _) = run(&v, &s, request(Method::GET, retry::Body::Empty)).await;
            assert_eq!(status, StatusCode::OK);
        }
        assert!(v.snap.pools[0].backends[0]
            .shared
            .ejection
            .is_ejected(crate::clock::now_ms()));
        // From now on A is not tried at all.
        for _ in 0..10 {
            let (_, tried) = run(&v, &s, request(Method::GET, retry::Body::Empty)).await;
            assert!(!tried.contains(&A.to_owned()), "{tried:?}");
        }
    });
}

#[test]
fn a_pool_that_is_all_down_answers_503_at_once_unless_in_panic_mode() {
    on_core(async {
        use crate::balance::health::Health;
        let (v, _r) = view(json!({"health_check": {"path": "/healthz"}}));
        for b in &v.snap.pools[0].backends {
            b.shared.set_health(Health::Down, 1);
        }
        let s = Script::default();
        let (status, tried) = run(&v, &s, request(Method::GET, retry::Body::Empty)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(tried.is_empty(), "no backend was tried: {tried:?}");
        let (v, _r) = view(json!({"health_check": {"path": "/healthz"},
                                  "panic_threshold_percent": 50}));
        for b in &v.snap.pools[0].backends {
            b.shared.set_health(Health::Down, 1);
        }
        let (status, tried) = run(&v, &s, request(Method::GET, retry::Body::Empty)).await;
        assert_eq!(
            (status, tried.len()),
            (StatusCode::OK, 1),
            "panic: all of them"
        );
    });
}

#[test]
fn a_full_backend_queues_then_refuses() {
    on_core(async {
        let (v, _r) = view(json!({
            "backends": [{"address": "10.0.0.1:80"}],
            "limits": {"backend_max_connections": 1, "backend_max_queue": 1, "queue_timeout_ms": 50}
        }));
        let held = v.pools[0].backends[0]
            .acquire(Duration::from_secs(1))
            .await
            .unwrap();
        // The one place in the queue, for 50 ms: then 503.
        let s = Script::default();
        let (status, tried) = run(&v, &s, request(Method::GET, retry::Body::Empty)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(tried.is_empty());
        // While one waits, the next finds the queue full at once.
        let waiting = {
            let v = Rc::clone(&v);
            glommio::spawn_local(async move {
                let s = Script::default();
                run(&v, &s, request(Method::GET, retry::Body::Empty)).await
            })
        };
        crate::rt::sleep(Duration::from_millis(5)).await;
        let s = Script::default();
        let (status, _) = run(&v, &s, request(Method::GET, retry::Body::Empty)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v.pools[0].state.stats.snapshot().rejected, 2);
        // The slot is given back: the waiting request gets it and is sent.
        drop(held);
        let (status, tried) = waiting.await;
        assert_eq!((status, tried.len()), (StatusCode::OK, 1));
    });
}
