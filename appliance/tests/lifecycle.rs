//! Starting, refusing bad configs, the embedded default, and shutdown.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use rustix::process::Signal;
use serde_json::json;

fn run_edgebox(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edgebox"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn an_invalid_config_is_refused_whole_naming_the_field() {
    let pki = Pki::new();
    let leaf = pki.leaf("shop", &["shop.test"]);
    let dir = tempfile::tempdir().unwrap();
    let bad_pool = config(
        &[&leaf],
        json!([]),
        json!([{"action": {"proxy": {"pool": "nope"}}}]),
    );
    let garbage_pem = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage_pem,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let mut bad_pem = config(&[&leaf], json!([]), json!([]));
    bad_pem["certificates"][0]["cert"] = json!(garbage_pem);
    let mut wrong_key = config(&[&leaf], json!([]), json!([]));
    let other = pki.leaf("other", &["other.test"]);
    wrong_key["certificates"][0]["key"] = json!(other.key);
    let mut typo = config(&[&leaf], json!([]), json!([]));
    typo["listeners"][0]["adress"] = json!("127.0.0.1:0");

    for (cfg, expected) in [
        (bad_pool, "routes[0].action.proxy.pool".to_owned()),
        (
            bad_pem,
            format!("certificates[0].cert: {}", garbage_pem.display()),
        ),
        (wrong_key, "certificates[0].key".to_owned()),
        (typo, "listeners[0].adress".to_owned()),
    ] {
        let path = dir.path().join("bad.json");
        std::fs::write(&path, cfg.to_string()).unwrap();
        for args in [
            vec!["check-config", path.to_str().unwrap()],
            vec![
                "serve",
                "--config",
                path.to_str().unwrap(),
                "--data",
                dir.path().to_str().unwrap(),
            ],
        ] {
            let out = run_edgebox(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} accepted {cfg}");
            assert!(
                stderr.contains(&expected),
                "{args:?}: {stderr:?} does not name {expected:?}"
            );
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains("listening"),
                "started half-way"
            );
        }
    }
}

#[test]
fn an_address_in_use_is_refused_before_serving() {
    let pki = Pki::new();
    let leaf = pki.leaf("shop", &["shop.test"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = config(&[&leaf], json!([]), json!([{"action": "welcome"}]));
    cfg["listeners"][1]["address"] = json!(taken.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let out = run_edgebox(&[
        "serve",
        "--config",
        path.to_str().unwrap(),
        "--data",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listeners[1] (http): cannot listen on"),
        "{stderr}"
    );
}

#[test]
fn sigterm_stops_accepting_and_lets_requests_in_flight_finish() {
    let pki = Pki::new();
    let leaf = pki.leaf("shop", &["shop.test"]);
    let a = Backend::start("a");
    let cfg = config(
        &[&leaf],
        json!([{"name": "app", "backends": [{"address": a.addr.to_string()}]}]),
        json!([{"action": {"proxy": {"pool": "app"}}}]),
    );
    let mut eb = Edgebox::start(&cfg, 2);
    let https = eb.addr("https");
    let r = resolve("shop.test", https);
    let url = format!("https://shop.test:{}/slow?ms=2000", https.port());
    let ca = pki.ca_pem.clone();
    let in_flight = std::thread::spawn(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(ca)
            .args(["--resolve", &r, "-w", "\n%{http_code}", &url])
            .output()
            .unwrap()
    });
    wait_for("the request to reach the backend", || {
        (a.hits.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    });
    eb.signal(Signal::TERM);
    // New connections are refused once the cores have seen the signal...
    wait_for("new connections to be refused", || {
        std::net::TcpStream::connect_timeout(&https, Duration::from_millis(200))
            .is_err()
            .then_some(())
    });
    // ...while the request in flight completes normally.
    let out = in_flight.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.ends_with("\n200"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(eb.wait_exit().success());
}

/// The embedded default binds fixed ports 8443, 8080 and 9443 (admin); this is
/// the only test that uses them.
#[test]
fn embedded_default_serves_the_welcome_page_with_a_kept_certificate() {
    for port in [8443, 8080, 9443] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is busy; this test needs it for the embedded default"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut first_cert = None;
    for round in 0..2 {
        let mut eb = Edgebox::spawn(
            tempfile::tempdir_in(dir.path()).unwrap(),
            &[
                "serve".into(),
                "--cores".into(),
                "2".into(),
                "--data".into(),
                data.display().to_string(),
            ],
        );
        assert_eq!(eb.addr("https").port(), 8443);
        let cert = std::fs::read(data.join("tls/localhost.crt")).unwrap();
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(data.join("tls/localhost.crt"))
            .args(["https://localhost:8443/"])
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            body.contains("edgebox is running"),
            "{body} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let redirect = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
                "http://localhost:8080/x?y",
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&redirect.stdout),
            "308 https://localhost:8443/x?y"
        );
        match &first_cert {
            None => first_cert = Some(cert),
            Some(c) => assert_eq!(c, &cert, "round {round}: the certificate was not reused"),
        }
        eb.signal(Signal::INT);
        assert!(eb.wait_exit().success());
    }
}
