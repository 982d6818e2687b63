//! The scrape bench, one short round, as a smoke test: edgebox starts
//! pinned, wrk loads it, the kept-alive scraper gets `/metrics` (a body
//! that is not the exposition format fails the bench), and the summary is
//! printed. Its numbers are not asserted.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn scrape_bench_loads_and_scrapes_a_pinned_edgebox() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scrape"));
    cmd.args(["--rounds", "1", "--seconds", "1", "--interval-ms", "100"]);
    let edgebox = Path::new(env!("CARGO_BIN_EXE_scrape")).with_file_name("edgebox");
    if edgebox.is_file() {
        cmd.arg("--edgebox").arg(&edgebox);
    }
    let run = cmd.output().unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let scraped = out
        .lines()
        .find(|l| l.starts_with("scraped "))
        .unwrap_or_else(|| panic!("no scraped run:\n{out}"));
    let scrapes: u64 = scraped
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no scrape count in {scraped:?}"));
    assert!(scrapes >= 5, "{out}");
    for line in ["scraped ÷ quiet (medians)", "run by run", "one scrape:"] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
}
