//! `docs/admin-api.yaml` checked against the running server by schemathesis:
//! every documented operation is called with generated valid and invalid
//! input; every response must be documented (status, headers, body schema),
//! no response may be a server error, invalid input must be refused.
//!
//! schemathesis is installed by `scripts/test` into `target/schemathesis`
//! (or named by `EDGEBOX_SCHEMATHESIS`).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGEBOX_SCHEMATHESIS") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/schemathesis/bin/schemathesis");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test, which installs schemathesis, or set EDGEBOX_SCHEMATHESIS",
        p.display()
    );
    p
}

#[test]
fn the_openapi_spec_matches_the_server() {
    let a = Backend::start("a");
    let shop = Shop::start(&[a.addr], 1, |_| {});
    let eb = &shop.eb;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(schemathesis())
        .current_dir(root.join("tests/openapi"))
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", ".")
        .arg("run")
        .arg(root.join("../docs/admin-api.yaml"))
        .args(["--url", &format!("https://{}", eb.admin.unwrap())])
        .args(["-H", &format!("Authorization: Bearer {}", eb.token)])
        .arg("--tls-verify")
        .arg(eb.dir().join("data/tls/admin.crt"))
        // Schema-valid input may still be refused by checks the schema cannot
        // express (a pool that does not exist, an address that does not parse).
        .args(["--exclude-checks", "positive_data_acceptance"])
        // These would end the run: a new token, a shutdown. Tested in admin.rs.
        .args(["--exclude-path-regex", "^/v1/(token|system)"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args([
            "--max-examples",
            "20",
            "--seed",
            "1",
            "--workers",
            "1",
            "--no-color",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let summary = report.split("SUMMARY").last().unwrap_or_default();
    eprintln!("schemathesis:{summary}");
    assert!(
        out.status.success(),
        "schemathesis found mismatches:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        summary.contains("Tested: 47"),
        "every operation but the excluded ones was tested:\n{summary}"
    );
    // And the server is still whole afterwards.
    eb.api("GET", "/v1/status", None, &[]).expect(200);
}
