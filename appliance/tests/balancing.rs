//! Load balancing for real: `edgebox serve` on loopback in front of backends
//! the tests start, kill, stall and bring back, under a bounded load (a
//! Rust client on keep-alive connections, see `common/load.rs`). Each test
//! prints its figures.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::load::{self, Load};
use common::*;
use serde_json::{json, Value};

/// The live status of pool `pool`.
fn status(eb: &Edgebox, pool: &str) -> Value {
    eb.api("GET", &format!("/v1/pools/{pool}/status"), None, &[])
        .expect(200)
        .json()
}

/// The live status of one backend address of `pool`.
fn endpoint(eb: &Edgebox, pool: &str, addr: std::net::SocketAddr) -> Value {
    status(eb, pool)["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("{addr} is not in pool {pool}"))
}

/// The tests of this file take turns: each measures latencies, which a
/// neighbour's load would blur.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn http_load(shop: &Shop, path: &str) -> Load {
    Load::new(shop.eb.addr("http"), "shop.test", path)
}

/// A backend killed in the middle of a load costs no idempotent request
/// (retries), is taken out by its health check within the check interval,
/// reported so in `/metrics`, and taken back when it returns.
#[test]
fn a_killed_backend_fails_no_request_and_is_taken_out_then_back() {
    let _turn = serial();
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let b_addr = b.addr;
    let shop = Shop::start(&[a.addr, b.addr, c.addr], 2, |cfg| {
        cfg["pools"][0]["health_check"] = json!({"path": "/healthz", "interval_ms": 200, "timeout_ms": 200, "rise": 2, "fall": 2});
    });
    let eb = &shop.eb;
    let mut l = http_load(&shop, "/");
    l.count = 4_000;
    l.pause = Duration::from_micros(500);
    let running = load::start(l);
    wait_for("the load to get going", || {
        (running.sent() > 500).then_some(())
    });
    b.kill();
    let killed = Instant::now();
    let down = wait_for("b to be taken out", || {
        (endpoint(eb, "app", b_addr)["health"] == "down").then(|| killed.elapsed())
    });
    let failures_then = endpoint(eb, "app", b_addr)["failures"].as_u64().unwrap();
    let report = running.join();
    println!("killed b: {}", report.summary());
    println!(
        "b taken out {:.0} ms after it was killed (checks every 200 ms, fall 2)",
        down.as_secs_f64() * 1e3
    );
    assert_eq!(report.failed(), 0, "failed requests: {:?}", report.errors);
    assert!(
        down < Duration::from_millis(200 * 2 + 200 + 500),
        "taken out after {down:?}"
    );
    let after = endpoint(eb, "app", b_addr);
    assert_eq!(
        after["failures"].as_u64().unwrap(),
        failures_then,
        "tried again after it was taken out: {after}"
    );
    let metrics = eb.api("GET", "/metrics", None, &[]).expect(200).body;
    let line = format!("edgebox_backend_healthy{{pool=\"app\",backend=\"{b_addr}\"}} 0");
    assert!(metrics.contains(&line), "no {line} in:\n{metrics}");
    // Back on the same address: two passed checks and it serves again.
    let back = Backend::start_on("b", b_addr);
    let returned = Instant::now();
    wait_for("b to be taken back", || {
        (endpoint(eb, "app", b_addr)["health"] == "up").then_some(())
    });
    println!(
        "b taken back {:.0} ms after it returned (rise 2)",
        returned.elapsed().as_secs_f64() * 1e3
    );
    let mut l = http_load(&shop, "/");
    l.count = 300;
    let report = load::run_blocking(l);
    assert_eq!(report.failed(), 0);
    assert!(back.hits.load(std::sync::atomic::Ordering::SeqCst) > 50);
}

/// A backend that accepts connections and never answers costs a few
/// requests a per-try timeout each (they are retried elsewhere), is ejected
/// after its failures in a row, and the load's latency stays what it was.
#[test]
fn a_backend_that_never_answers_is_ejected_and_latency_stays_normal() {
    let _turn = serial();
    let (a, b, silent) = (
        Backend::start("a"),
        Backend::start("b"),
        SilentBackend::start(),
    );
    let shop = Shop::start(&[a.addr, b.addr, silent.addr], 2, |cfg| {
        let p = &mut cfg["pools"][0];
        // A connect check passes: it accepts connections. Only the requests
        // that never get an answer tell.
        p["health_check"] = json!({"tcp": true, "interval_ms": 500});
        p["retries"] = json!({"per_try_timeout_ms": 300});
        p["outlier_detection"] = json!({"consecutive_failures": 3, "ejection_ms": 30000});
    });
    let eb = &shop.eb;
    let mut l = http_load(&shop, "/");
    l.count = 3_000;
    let report = load::run_blocking(l);
    println!("with a silent backend: {}", report.summary());
    let s = endpoint(eb, "app", silent.addr);
    println!(
        "silent backend: ejected {}, {} ejections, {} failed tries",
        s["ejected"], s["ejections"], s["failures"]
    );
    assert_eq!(report.failed(), 0, "{:?}", report.errors);
    assert_eq!(s["ejected"], true, "{s}");
    // Only the tries before the ejection waited (3 in a row; a few more in
    // flight at that moment on other connections).
    let slow = report
        .responses
        .iter()
        .filter(|r| r.1 >= Duration::from_millis(300))
        .count();
    assert!(slow <= 8, "{slow} requests waited for the silent backend");
    let p99 = report.quantile(0.99);
    assert!(
        p99 < Duration::from_millis(100),
        "p99 {p99:?}: the silent backend showed in the latency"
    );
}

/// Blue/green: green backends added, blue ones drained until idle, then
/// removed, all with `edgebox ctl` while a load runs: no request fails.
#[test]
fn a_blue_green_switch_under_load_fails_nothing() {
    let _turn = serial();
    let (blue1, blue2) = (Backend::start("blue1"), Backend::start("blue2"));
    let (green1, green2) = (Backend::start("green1"), Backend::start("green2"));
    let shop = Shop::start(&[blue1.addr, blue2.addr], 2, |cfg| {
        cfg["pools"][0]["health_check"] = json!({"path": "/healthz", "interval_ms": 100});
    });
    let eb = &shop.eb;
    let mut l = http_load(&shop, "/slow?ms=5");
    l.count = 100_000;
    l.deadline = Duration::from_secs(60);
    let running = load::start(l);
    wait_for("the load to get going", || {
        (running.sent() > 200).then_some(())
    });
    for g in [&green1, &green2] {
        ok(eb.ctl(&["backend", "add", "app", &g.addr.to_string()]));
    }
    // New backends wait for their first passed check, then ramp up.
    wait_for("green to serve", || {
        let s = status(eb, "app");
        let up = s["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["health"] == "up")
            .count();
        (up == 4).then_some(())
    });
    for b in [&blue1, &blue2] {
        let out = ok(eb.ctl(&["backend", "drain", "app", &b.addr.to_string(), "--wait"]));
        assert!(out.contains("idle"), "{out}");
    }
    for b in [&blue1, &blue2] {
        ok(eb.ctl(&["backend", "remove", "app", &b.addr.to_string()]));
    }
    let hits_blue = blue1.hits.load(std::sync::atomic::Ordering::SeqCst)
        + blue2.hits.load(std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    let report = running.stop();
    println!("blue/green under load: {}", report.summary());
    assert_eq!(report.failed(), 0, "{:?}", report.errors);
    assert_eq!(
        blue1.hits.load(std::sync::atomic::Ordering::SeqCst)
            + blue2.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits_blue,
        "blue got requests after it was removed"
    );
    assert!(green1.hits.load(std::sync::atomic::Ordering::SeqCst) > 0);
    assert!(green2.hits.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

/// A drained backend gets no new request, and reports itself idle when
/// (and only when) its last one ends.
#[test]
fn a_drained_backend_gets_nothing_new_and_is_idle_after_its_last_request() {
    let _turn = serial();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let shop = Shop::start(&[a.addr, b.addr], 1, |_| {});
    let eb = &shop.eb;
    let a_path = format!("/v1/pools/app/backends/{}", a.addr);
    // One core, round robin: the first request goes to a.
    let slow = {
        let url = shop.url("/slow?ms=1500");
        let r = resolve("shop.test", eb.addr("https"));
        let ca = shop.pki.ca_pem.clone();
        std::thread::spawn(move || {
            std::process::Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--resolve",
                    &r,
                ])
                .arg("--cacert")
                .arg(ca)
                .arg(url)
                .output()
                .unwrap()
        })
    };
    wait_for("the slow request to reach a", || {
        (a.hits.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    });
    let drained = eb
        .api("POST", &format!("{a_path}/drain"), None, &[])
        .expect(200)
        .json();
    assert_eq!(drained["active"], 1, "{drained}");
    assert_eq!(drained["idle"], false);
    let mut l = http_load(&shop, "/");
    l.count = 20;
    let report = load::run_blocking(l);
    assert_eq!(
        report.by_backend().get("b"),
        Some(&20),
        "{}",
        report.summary()
    );
    assert_eq!(
        eb.api("GET", &a_path, None, &[]).expect(200).json()["idle"],
        false,
        "its request is still in flight"
    );
    let done = slow.join().unwrap();
    assert_eq!(String::from_utf8_lossy(&done.stdout), "200");
    let idle = wait_for("a to be idle", || {
        let v = eb.api("GET", &a_path, None, &[]).expect(200).json();
        (v["idle"] == true).then_some(v)
    });
    assert_eq!(idle["active"], 0);
}

/// One pod overloaded (a slow backend at its connection limit) gets 503s
/// with Retry-After; another pod's latency stays within twice what it was
/// unloaded.
#[test]
fn an_overloaded_pod_gets_503s_while_another_keeps_its_latency() {
    let _turn = serial();
    let (p1, p2) = (Backend::start("pod1"), Backend::start("pod2"));
    let shop = Shop::start(&[], 2, |cfg| {
        cfg["pools"] = json!([
            {"name": "pod1", "backends": [{"address": p1.addr.to_string()}],
             "limits": {"backend_max_connections": 8, "backend_max_queue": 0}},
            {"name": "pod2", "backends": [{"address": p2.addr.to_string()}]}
        ]);
        cfg["routes"] = json!([
            {"host": "pod1.test", "action": {"proxy": {"pool": "pod1"}}},
            {"host": "pod2.test", "action": {"proxy": {"pool": "pod2"}}}
        ]);
    });
    let eb = &shop.eb;
    let pod2 = |count| {
        let mut l = Load::new(eb.addr("http"), "pod2.test", "/");
        l.workers = 2;
        l.count = count;
        load::run_blocking(l)
    };
    pod2(200);
    let unloaded = pod2(2_000);
    let mut flood = Load::new(eb.addr("http"), "pod1.test", "/slow?ms=2000");
    flood.workers = 40;
    flood.count = 100_000;
    flood.pause = Duration::from_millis(100);
    flood.deadline = Duration::from_secs(20);
    let flooding = load::start(flood);
    wait_for("pod1 to be full", || {
        (status(eb, "pod1")["rejected"].as_u64().unwrap() > 40).then_some(())
    });
    let reply = shop.curl(&[
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-H",
        "host: pod1.test",
        &format!("http://{}/slow?ms=1", eb.addr("http")),
    ]);
    let loaded = pod2(2_000);
    let flood = flooding.stop();
    println!("pod1 flood: {}", flood.summary());
    println!("pod2 unloaded: {}", unloaded.summary());
    println!("pod2 while pod1 is flooded: {}", loaded.summary());
    assert!(reply.stdout.starts_with("HTTP/1.1 503"), "{}", reply.stdout);
    assert!(
        reply.stdout.to_ascii_lowercase().contains("retry-after: 1"),
        "{}",
        reply.stdout
    );
    assert!(flood.count(503) > 40, "{}", flood.summary());
    assert!(
        flood.count(200) <= 8 * 12,
        "more than 8 at a time got through: {}",
        flood.summary()
    );
    assert_eq!(loaded.failed(), 0);
    // Sub-millisecond figures are all noise: 1 ms is the least baseline.
    let base = unloaded.quantile(0.99).max(Duration::from_millis(1));
    assert!(
        loaded.quantile(0.99) <= base * 2,
        "pod2 p99 {:?} against {:?} unloaded",
        loaded.quantile(0.99),
        unloaded.quantile(0.99)
    );
}

/// A draining backend's WebSocket goes on until the pool's drain deadline,
/// then edgebox closes it, and the backend is reported idle.
#[test]
fn a_draining_backend_s_websocket_is_closed_at_the_drain_deadline() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let _turn = serial();
    let a = Backend::start("a");
    let shop = Shop::start(&[a.addr], 1, |cfg| {
        cfg["pools"][0]["drain_timeout_ms"] = json!(1500);
    });
    let eb = &shop.eb;
    let a_path = format!("/v1/pools/app/backends/{}", a.addr);
    let addr = eb.addr("http");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let url = format!("ws://shop.test:{}/ws", addr.port());
        let (mut ws, resp) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
        assert_eq!(resp.status(), 101);
        let open = eb.api("GET", &a_path, None, &[]).expect(200).json();
        assert_eq!(open["tunnels"], 1, "{open}");
        let drained = Instant::now();
        eb.api("POST", &format!("{a_path}/drain"), None, &[])
            .expect(200);
        // Still open, and working, during the drain.
        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("still here"));
        assert_eq!(
            eb.api("GET", &a_path, None, &[]).expect(200).json()["idle"],
            false
        );
        // Then closed by edgebox (the end of the stream, or a reset).
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) => return,
                    Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the tunnel was never closed");
        let after = drained.elapsed();
        println!("a draining backend's WebSocket closed {after:?} after the drain (deadline 1.5 s, checked every 1 s)");
        assert!(after >= Duration::from_millis(1500), "closed early: {after:?}");
    });
    let idle = wait_for("a to be idle", || {
        let v = eb.api("GET", &a_path, None, &[]).expect(200).json();
        (v["idle"] == true).then_some(v)
    });
    assert_eq!(idle["tunnels"], 0);
}
