//! No spurious failover under a saturated data plane: a pair at the
//! default 40 ms adverts, h2load keeping the master's one data-plane core
//! busy through the virtual address for `EDGEBOX_SOAK_S` seconds (default
//! 600, the ten minutes). The master must stay master, the backup
//! backup, and no advert may come late enough to be a near miss. A binary
//! of its own, so that the load does not share the machine with the other
//! failover tests' timings.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lan::*;
use common::*;
use serde_json::Value;

/// User plus system CPU time of process `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn a_saturated_master_keeps_advertising_and_nobody_fails_over() {
    let secs: u64 = std::env::var("EDGEBOX_SOAK_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let lan = Lan::new(2);
    let a = lan.start(1, &appliance(1, 150));
    let b = lan.start(2, &appliance(2, 100));
    wait_for("node1 to serve the virtual address", || {
        (ask().as_deref() == Some("node1")).then_some(())
    });
    let failover =
        |eb: &Edgebox| -> Value { eb.api("GET", "/v1/failover", None, &[]).expect(200).json() };
    wait_for("node2 to hear node1", || {
        (failover(&b)["master"] == "10.9.0.1").then_some(())
    });
    let (a0, b0) = (failover(&a), failover(&b));
    let ticks0 = cpu_ticks(a.pid());
    let started = Instant::now();
    // The test thread is in the client's namespace; h2load starts there.
    let load = Command::new("h2load")
        .args(["--h1", "-t", "1", "-c", "64", "-D", &secs.to_string()])
        .arg(format!("http://{VIP}:8080/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("h2load (nghttp2-client)");
    let pid = load.id();
    // Watched every second while it runs; bounded by its own duration.
    let mut samples = 0;
    while started.elapsed() < Duration::from_secs(secs + 30) {
        if std::fs::metadata(format!("/proc/{pid}")).is_err()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
        {
            break;
        }
        let (sa, sb) = (failover(&a), failover(&b));
        assert_eq!(
            (sa["state"].as_str(), sb["state"].as_str()),
            (Some("master"), Some("backup")),
            "after {} s under load: {sa} {sb}",
            started.elapsed().as_secs()
        );
        samples += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    let out = load.wait_with_output().unwrap();
    let ran = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "h2load: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let busy = (cpu_ticks(a.pid()) - ticks0) as f64 / 100.0 / ran.as_secs_f64();
    let (sa, sb) = (failover(&a), failover(&b));
    assert_eq!(
        sa["counts"]["transitions"], a0["counts"]["transitions"],
        "{sa}"
    );
    assert_eq!(
        sb["counts"]["transitions"], b0["counts"]["transitions"],
        "{sb}"
    );
    let adverts =
        sb["counts"]["adverts"].as_u64().unwrap() - b0["counts"]["adverts"].as_u64().unwrap();
    let gap_ms = sb["counts"]["longest_advert_gap_us"].as_u64().unwrap() as f64 / 1000.0;
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .unwrap_or("")
        .to_owned();
    let succeeded = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or("")
        .to_owned();
    println!(
        "soak: {:.0} s under h2load ({rps}; {succeeded}), node1 at {:.0} % of the CPU time (its core and the rest), \
         {adverts} adverts heard by node2 (one per 40 ms: {}), the longest gap between two {gap_ms:.1} ms, \
         {samples} checks, no transition",
        ran.as_secs_f64(),
        busy * 100.0,
        ran.as_millis() / 40
    );
    // A gap beyond the master-down interval (3 × 40 + 24 ms) would have been
    // a failover; beyond 100 ms (two and a half intervals) is already a
    // near miss.
    assert!(
        gap_ms < 100.0,
        "an advert came {gap_ms} ms after the one before"
    );
    assert!(busy > 0.5, "the load did not load node1: {busy}");
}
