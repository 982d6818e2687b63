//! The side-by-side bench in `--quick` mode, as a smoke test: every server
//! starts, every scenario runs on each, and the table, CSV and chart are
//! written. Its numbers are not asserted. Needs root (it installs the peers
//! with apt-get when they are missing).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn quick_bench_runs_every_scenario_on_every_server() {
    let out = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bench"));
    cmd.arg("--quick").arg("--out").arg(out.path());
    // `cargo test --workspace` has built edgebox beside the bench; alone,
    // the bench builds it.
    let edgebox = Path::new(env!("CARGO_BIN_EXE_bench")).with_file_name("edgebox");
    if edgebox.is_file() {
        cmd.arg("--edgebox").arg(&edgebox);
    }
    let run = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let table = String::from_utf8(run.stdout).unwrap();
    let csv = std::fs::read_to_string(out.path().join("results.csv")).unwrap();
    let expected = [
        ("idle-memory", &["nginx", "h2o", "haproxy", "edgebox"][..]),
        ("static-1k-https", &["nginx", "h2o", "edgebox"]),
        ("static-1m-https", &["nginx", "h2o", "edgebox"]),
        ("proxy-https", &["nginx", "h2o", "haproxy", "edgebox"]),
        ("handshake", &["nginx", "h2o", "haproxy", "edgebox"]),
        ("h2-static-1k", &["nginx", "h2o", "edgebox"]),
    ];
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 21, "{csv}");
    for (scenario, servers) in expected {
        for server in servers {
            let row = rows
                .iter()
                .find(|r| r.starts_with(&format!("{scenario},{server},")))
                .unwrap_or_else(|| panic!("no {scenario} row for {server}:\n{csv}"));
            let median: f64 = row.split(',').nth(4).unwrap().parse().unwrap();
            assert!(median > 0.0, "{row}");
            assert!(
                table.contains(&format!("| {scenario} | {server} |")),
                "{table}"
            );
        }
    }
    assert!(stderr.contains("0 resumed"), "{stderr}");
    let svg = std::fs::read_to_string(out.path().join("results.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("h2-static-1k"),
        "{svg}"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("runs.csv"))
            .unwrap()
            .lines()
            .count(),
        22
    );
}
