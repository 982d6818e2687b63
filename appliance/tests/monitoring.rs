//! The monitoring kit against the real tools: `promtool check rules` and
//! `promtool test rules` on docs/monitoring/alerts.yml, and Debian's
//! Prometheus scraping a running edgebox (failover, replication, a pool, a
//! certificate) in a network namespace: every metric each alert rule uses
//! has data there, and every rule evaluates without error.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::lan::*;
use common::*;
use serde_json::{json, Value};

fn monitoring() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/monitoring")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(monitoring())
        .output()
        .expect("promtool (Debian's prometheus package; the test command installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {}: {text}", args.join(" "));
    text
}

#[test]
fn the_alert_rules_check_and_pass_their_unit_tests() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every rule has at least one unit test that expects it to fire.
    let rules = std::fs::read_to_string(monitoring().join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(monitoring().join("alerts_test.yml")).unwrap();
    for name in alert_names(&rules) {
        let fires = format!("alertname: {name}\n        exp_alerts:\n          -");
        assert!(
            tests.contains(&fires),
            "no unit test expects {name} to fire"
        );
    }
}

fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

/// The metric names an expression reads.
fn metrics_of(expr: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        if (rest.starts_with("edgebox_") || rest.starts_with("process_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.push(rest[..end].to_owned());
            i += end;
        } else {
            i += 1;
        }
    }
    out.sort();
    out.dedup();
    out
}

struct Prometheus {
    child: std::process::Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// `GET /api/v1/PATH`: Null until Prometheus listens.
    fn api(&self, path: &str) -> Value {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{}/api/v1/{path}", self.port))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The loaded rules, once each has been evaluated without error.
    fn evaluated_rules(&self) -> Vec<Value> {
        wait_for("every rule to be evaluated", || {
            let v = self.api("rules");
            let rules = v["data"]["groups"][0]["rules"].as_array()?.clone();
            if let Some(r) = rules.iter().find(|r| r["health"] == "err") {
                panic!("a rule fails to evaluate: {r}");
            }
            rules.iter().all(|r| r["health"] == "ok").then_some(rules)
        })
    }

    fn query(&self, q: &str) -> Value {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "--data-urlencode"])
            .arg(format!("query={q}"))
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .output()
            .unwrap();
        // Null until Prometheus listens.
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }
}

#[test]
fn prometheus_scrapes_edgebox_and_every_alert_has_its_metrics() {
    let lan = Lan::new(1);
    let pki = Pki::new();
    let leaf = pki.leaf("shop", &["shop.test"]);
    let backend = {
        let ns = lan.hosts[0].clone();
        std::thread::spawn(move || {
            enter(&ns);
            Backend::start("app1")
        })
        .join()
        .unwrap()
    };
    let mut c = appliance(1, 150);
    c["certificates"] = json!([{"cert": leaf.cert, "key": leaf.key}]);
    c["pools"] = json!([{
        "name": "app",
        "backends": [{"address": backend.addr.to_string()}],
        "health_check": {"path": "/healthz", "interval_ms": 200, "timeout_ms": 200},
    }]);
    c["replication"] = json!({
        "listen": "10.9.0.1:7443",
        "peers": [{"address": "10.9.0.2:7443", "fingerprint": "ab".repeat(32), "name": "peer"}],
    });
    let eb = lan.start(1, &c);
    // Some traffic, so the request series have samples.
    wait_for("the virtual address to answer", || {
        (ask().as_deref() == Some("node1")).then_some(())
    });
    let dir = tempfile::tempdir().unwrap();
    let port = 19090;
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [{rules}]\n\
             scrape_configs:\n\
             - job_name: edgebox\n  scheme: https\n  tls_config: {{insecure_skip_verify: true}}\n\
             \x20 authorization: {{credentials: {TOKEN}}}\n\
             \x20 static_configs: [{{targets: ['10.9.0.1:9443']}}]\n",
            rules = monitoring().join("alerts.yml").display()
        ),
    )
    .unwrap();
    // Started from this thread, in the namespace's own loopback.
    let prom = Prometheus {
        child: Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's prometheus package)"),
        port,
    };
    wait_for("Prometheus to scrape edgebox", || {
        let r = prom.query("up{job=\"edgebox\"}");
        (r["data"]["result"][0]["value"][1] == "1").then_some(())
    });
    for _ in 0..20 {
        let _ = ask();
    }
    std::thread::sleep(Duration::from_secs(3));
    let rules = std::fs::read_to_string(monitoring().join("alerts.yml")).unwrap();
    let loaded = prom.evaluated_rules();
    assert_eq!(loaded.len(), alert_names(&rules).len(), "every rule loaded");
    let exprs: Vec<String> = loaded
        .iter()
        .map(|r| r["query"].as_str().unwrap().to_owned())
        .collect();
    let mut checked = Vec::new();
    for expr in &exprs {
        for metric in metrics_of(expr) {
            let r = prom.query(&format!("count({metric})"));
            assert_eq!(r["status"], "success", "{metric}: {r}");
            let n = r["data"]["result"][0]["value"][1].as_str().unwrap_or("0");
            assert!(
                n != "0",
                "edgebox exports no {metric} (used by `{expr}`): {r}"
            );
            checked.push(metric);
        }
        let r = prom.query(expr);
        assert_eq!(r["status"], "success", "`{expr}` evaluates: {r}");
    }
    checked.sort();
    checked.dedup();
    println!(
        "{} alert rules evaluated by Prometheus, {} metrics they use all present: {}",
        exprs.len(),
        checked.len(),
        checked.join(", ")
    );
    // Every query of the dashboard returns data: no panel shows a metric
    // that does not exist.
    let dashboard: Value = serde_json::from_slice(
        &std::fs::read(monitoring().join("edgebox-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let r = prom.query(expr);
            assert_eq!(
                r["status"], "success",
                "panel {}: `{expr}`: {r}",
                panel["title"]
            );
            let series = r["data"]["result"].as_array().map_or(0, Vec::len);
            assert!(
                series > 0,
                "panel {} shows nothing: `{expr}`",
                panel["title"]
            );
            queries += 1;
        }
    }
    println!(
        "{} dashboard panels, {queries} queries, each with data",
        dashboard["panels"].as_array().unwrap().len()
    );
    // What a scrape holds, kept for docs/monitoring.md's table.
    let scrape = eb.api("GET", "/metrics", None, &[]).expect(200).body;
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/monitoring-scrape.txt");
    std::fs::write(&out, &scrape).unwrap();
    drop(eb);
}
