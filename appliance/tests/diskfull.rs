//! A full disk during a publish, and uploads cut half-way: the previous
//! generation keeps serving, the error says why, nothing half-written stays.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::Command;

use common::*;
use serde_json::json;

fn start_on(dir: tempfile::TempDir) -> Edgebox {
    let config = json!({
        "listeners": [{"name": "http", "address": "127.0.0.1:0", "protocol": "http"}],
        "routes": [{"action": {"static": {"site": "www"}}}],
        "admin": {"address": "127.0.0.1:0"},
    });
    let path = dir.path().join("edgebox.json");
    std::fs::write(&path, config.to_string()).unwrap();
    Edgebox::spawn(
        dir,
        &[
            "serve".into(),
            "--config".into(),
            path.display().to_string(),
            "--cores".into(),
            "1".into(),
        ],
    )
}

fn get(eb: &Edgebox, path: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            &format!("http://{}{path}", eb.addr("http")),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_full_disk_leaves_the_previous_generation_serving_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_disk) = SmallDisk::mount(&dir.path().join("data"), "24m") else {
        return;
    };
    let eb = start_on(dir);
    let site = eb.dir().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "version 1\n").unwrap();
    assert!(eb.publish(&site, "www").status.success());
    assert_eq!(get(&eb, "/"), "version 1\n");

    std::fs::write(site.join("index.html"), "version 2\n").unwrap();
    std::fs::write(site.join("video.bin"), noise(7, 40 << 20)).unwrap();
    let out = eb.publish(&site, "www");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("507") && err.contains("disk is full") && err.contains("previous generation"),
        "{err}"
    );
    assert_eq!(
        get(&eb, "/"),
        "version 1\n",
        "the previous generation still serves"
    );
    let tmp = std::fs::read_dir(eb.dir().join("data/store/tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "the failed upload's temporary file is gone");
    // Space freed, the same publish goes through.
    std::fs::write(site.join("video.bin"), noise(7, 4 << 20)).unwrap();
    assert!(eb.publish(&site, "www").status.success());
    assert_eq!(get(&eb, "/"), "version 2\n");
}

#[test]
fn an_upload_cut_half_way_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let eb = start_on(dir);
    let admin = eb.admin.unwrap();
    let hash = blake3::hash(&noise(3, 1 << 20)).to_hex().to_string();
    // Promise a megabyte, send a little, and hang up.
    let tls = std::sync::Arc::new(any_cert_client());
    let mut conn = rustls::ClientConnection::new(tls, server_name("localhost")).unwrap();
    let mut tcp = std::net::TcpStream::connect(admin).unwrap();
    let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
    let head = format!(
        "PUT /v1/blobs/{hash} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        1 << 20
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&noise(3, 64 << 10)).unwrap();
    stream.flush().unwrap();
    wait_for("the upload to start", || {
        (std::fs::read_dir(eb.dir().join("data/store/tmp"))
            .unwrap()
            .count()
            == 1)
            .then_some(())
    });
    drop(tcp);
    wait_for("the cut upload's temporary file to go", || {
        (std::fs::read_dir(eb.dir().join("data/store/tmp"))
            .unwrap()
            .count()
            == 0)
            .then_some(())
    });
    eb.api("HEAD", &format!("/v1/blobs/{hash}"), None, &["-I"])
        .expect(404);
}
