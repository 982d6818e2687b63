//! A hostile HTTP/2 client (`tests/h2/abuse.py`: Python's h2 driving raw
//! frames) against the HTTPS listener: each flood is ended or bounded per
//! connection, malformed requests are never answered as requests, and the
//! appliance serves a normal client after each. Its CPU and memory during
//! each flood are printed.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

/// CPU seconds (user + system) and resident bytes of process `pid`.
fn usage(pid: i32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    (ticks / 100.0, rss_kb * 1024)
}

/// The status a normal HTTP/2 client (curl) gets for `/`.
fn normal_client(shop: &Shop) -> String {
    let args = ["--http2", "-s", "-o", "/dev/null", "-w", "%{http_code}"];
    let url = shop.url("/");
    let mut all = args.to_vec();
    all.push(&url);
    shop.curl(&all).stdout
}

fn attack(shop: &Shop, scenario: &str, seconds: f64) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2/abuse.py");
    let port = shop.eb.addr("https").port();
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(script)
        .args([
            "127.0.0.1",
            &port.to_string(),
            scenario,
            &seconds.to_string(),
        ])
        .output()
        .expect("/usr/bin/python3 with python3-h2 (the test command installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "{scenario}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn http2_floods_are_bounded_and_bad_requests_refused() {
    let a = Backend::start("a");
    let shop = Shop::start(&[a.addr], 1, |_| {});
    let pid = shop.eb.pid();
    let (_, rss_start) = usage(pid);
    let mut report = Vec::new();
    for scenario in [
        "rapid_reset",
        "continuation_flood",
        "ping_flood",
        "settings_flood",
        "priority_flood",
        "empty_data_flood",
    ] {
        let (cpu0, _) = usage(pid);
        let started = std::time::Instant::now();
        let end = attack(&shop, scenario, 3.0);
        let took = started.elapsed().as_secs_f64();
        let (cpu1, rss) = usage(pid);
        report.push(format!(
            "{scenario}: {} frames, ended {} after {took:.1} s; edgebox {:.0} % of a core, {:.1} MiB resident",
            end["sent"],
            end["how"].as_str().unwrap_or("?").to_owned()
                + &end["code"].as_str().map(|c| format!(" {c}")).unwrap_or_default(),
            (cpu1 - cpu0) / took * 100.0,
            rss as f64 / 1048576.0
        ));
        assert!(
            rss < rss_start + (64 << 20),
            "{scenario}: memory grew from {rss_start} to {rss}"
        );
        assert_eq!(normal_client(&shop), "200", "after {scenario}");
        assert_ne!(end["how"], "open", "{scenario} was not cut off: {end}");
    }
    // PING, SETTINGS and PRIORITY spent the frame budget (h2 itself ends
    // the rapid resets, the CONTINUATION and the empty DATA sooner).
    let metrics = shop.eb.api("GET", "/metrics", None, &[]).expect(200).body;
    assert!(
        metrics.lines().any(|l| l == "edgebox_http2_floods_total 3"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("http2"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Duplicate or missing pseudo-headers, a connection-specific header, a
    // response pseudo-header, a pseudo-header after a regular one, an empty
    // :path, an uppercase name: each on a connection of its own.
    let hits = a.hits.load(std::sync::atomic::Ordering::SeqCst);
    for case in 0..7 {
        let bad = attack(&shop, &format!("bad_pseudo_headers:{case}"), 2.0);
        assert_eq!(
            bad["responses"], 0,
            "malformed request {case} was answered: {bad}"
        );
        report.push(format!("malformed request {case}: {}", bad["how"]));
    }
    assert_eq!(
        a.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits,
        "a malformed request reached the backend"
    );
    println!("{}", report.join("\n"));
}

#[test]
fn split_cookie_fields_reach_an_http1_backend_as_one() {
    let a = Backend::start("a");
    let shop = Shop::start(&[a.addr], 1, |_| {});
    let end = attack(&shop, "cookies", 5.0);
    let seen: Value = serde_json::from_str(end["body"].as_str().unwrap()).unwrap_or(json!({}));
    assert_eq!(seen["headers"]["cookie"], "a=1; b=2", "{end}");
}

#[test]
fn a_zero_window_client_holds_only_a_bounded_buffer_and_is_given_up_as_idle() {
    let a = Backend::start("a");
    let shop = Shop::start(&[a.addr], 1, |c| {
        c["client"] = json!({"idle_timeout_ms": 2000});
    });
    let pid = shop.eb.pid();
    let (_, before) = usage(pid);
    let started = std::time::Instant::now();
    let end = attack(&shop, "zero_window", 15.0);
    let took = started.elapsed();
    let (_, after) = usage(pid);
    println!(
        "zero window on a streamed response: ended {} after {:.1} s (idle_timeout_ms 2000); resident {:.1} → {:.1} MiB",
        end["how"],
        took.as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    assert_eq!(
        end["responses"], 1,
        "its response began (head only: no window for DATA): {end}"
    );
    assert_ne!(end["how"], "open", "the stalled connection was kept: {end}");
    assert!(
        after < before + (32 << 20),
        "it buffered the response: {before} → {after}"
    );
    assert_eq!(normal_client(&shop), "200");
}
