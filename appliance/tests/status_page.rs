//! The status page in a real headless browser (Debian's chromium, driven
//! over the DevTools protocol by tests/status_page.py): it signs in with the
//! token, shows a backend going down within its health-check interval, and
//! its drain button drains it; it counts the ACME certificates held; no
//! console error; a screenshot is saved.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use serde_json::json;

/// The pool's health-check interval: the page must show a backend going
/// down within it (it polls pools every 250 ms).
const CHECK_MS: u64 = 1000;

#[test]
fn the_status_page_shows_a_backend_going_down_and_drains_it() {
    let backend = Backend::start("app1");
    let pki = Pki::new();
    let leaf = pki.leaf_90_days("shop", &["shop.test"]);
    let mut c = config(
        &[&leaf],
        json!([{
            "name": "app",
            "backends": [{"address": backend.addr.to_string()}],
            "health_check": {"path": "/healthz", "interval_ms": CHECK_MS, "timeout_ms": 200, "rise": 1, "fall": 1},
        }]),
        json!([{"action": {"proxy": {"pool": "app"}}}]),
    );
    c["client"] = json!({});
    // Three certificates as ACME would have left them (no CA here).
    let dir = tempfile::tempdir().unwrap();
    let acme: Vec<_> = ["a.shop.test", "b.shop.test", "c.shop.test"]
        .iter()
        .map(|name| {
            use rustls_pki_types::pem::PemObject;
            let leaf = pki.leaf_90_days(name, &[name]);
            let chain = std::fs::read(&leaf.cert).unwrap();
            let chain = rustls_pki_types::CertificateDer::pem_slice_iter(&chain)
                .map(|c| c.unwrap())
                .collect();
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
            (
                name.to_string(),
                edgebox::tls::managed::Entry::new(chain, key).unwrap(),
            )
        })
        .collect();
    edgebox::acme::import::import(&dir.path().join("data"), acme).unwrap();
    let eb = Edgebox::start_in(dir, &c, 1);
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/status-page.png");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/status_page.py");
    let mut driver = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(format!("https://{}/status", eb.admin.unwrap()))
        .arg(&eb.token)
        .arg(backend.addr.to_string())
        .arg(&shot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 with python3-websockets, and chromium (the test command installs them)");
    let mut stdin = driver.stdin.take().unwrap();
    let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
    let mut next = || lines.next().map(|l| l.unwrap()).unwrap_or_default();
    // Traffic through the pool meanwhile, for the charts (bounded: 3 000
    // requests or 20 s).
    let http = eb.addr("http");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = std::sync::Arc::clone(&done);
    let load = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        for _ in 0..3000 {
            if started.elapsed() > Duration::from_secs(20) || stop.load(Ordering::Relaxed) {
                break;
            }
            if let Ok(mut s) = std::net::TcpStream::connect(http) {
                let _ =
                    s.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n");
                let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    assert_eq!(next(), "up", "the page showed the backend up");
    backend.healthy.store(false, Ordering::SeqCst);
    writeln!(stdin, "down").unwrap();
    let down = next();
    println!("{down} (health checks every {CHECK_MS} ms, the page polls pools every 250 ms)");
    let ms: u64 = down
        .strip_prefix("down shown after ")
        .and_then(|s| s.strip_suffix(" ms"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{down}"));
    // The check interval, the poll and a loaded machine's slack.
    assert!(ms < CHECK_MS + 750, "within the check interval: {down}");
    let drained = next();
    assert!(drained.starts_with("draining shown after "), "{drained}");
    println!("{drained}");
    let status = eb
        .api("GET", "/v1/pools/app/status", None, &[])
        .expect(200)
        .json();
    assert_eq!(status["backends"][0]["state"], "draining", "{status}");
    let acme = next();
    assert_eq!(
        acme, "acme: ACME3 served",
        "the row: three held, no state of a schedule"
    );
    println!("{acme}");
    let errors = next();
    assert_eq!(errors, "console errors: 0", "{errors} {}", next());
    let exit = wait_for("the driver to finish", || driver.try_wait().unwrap());
    assert!(exit.success(), "{exit}");
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(
        &png[..8],
        b"\x89PNG\r\n\x1a\n",
        "a PNG screenshot at {}",
        shot.display()
    );
    println!("screenshot: {} ({} KiB)", shot.display(), png.len() / 1024);
    done.store(true, Ordering::Relaxed);
    load.join().unwrap();
}
