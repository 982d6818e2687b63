//! Requests an attacker (or a broken client) sends, answered so that
//! nothing ambiguous reaches a backend: the logging test backend answers
//! with what it received, and counts it.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// One raw request on a new connection to `shop`'s HTTP listener; all the
/// server sent until it closed the connection.
fn send(shop: &Shop, raw: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(shop.eb.addr("http")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    // To the end: the server must close the connection itself.
    let closed = s.read_to_end(&mut out).is_ok();
    let mut text = String::from_utf8_lossy(&out).into_owned();
    if !closed {
        text.push_str("<the server did not close the connection within 10 s>");
    }
    text
}

fn get(shop: &Shop, target: &str, host: &str) -> String {
    send(
        shop,
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// The JSON the logging backend answered with.
fn seen(reply: &str) -> Value {
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not the backend's JSON: {reply}"))
}

#[test]
fn an_encoded_path_cannot_get_past_a_route_meant_to_stop_it() {
    let a = Backend::start("a");
    let shop = Shop::start(&[a.addr], 1, |c| {
        c["routes"] = json!([
            {"path_prefix": "/admin", "action": {"respond": {"status": 403, "body": "no\n"}}},
            {"action": {"proxy": {"pool": "app"}}},
        ]);
    });
    for sneaky in [
        "/admin",
        "/%61dmin",
        "/%41dmin/../admin",
        "/adm%69n/users",
        "/admin%2Fusers",
        "/admin;jsessionid=x",
        "/..;/admin",
        "/public/..;/admin",
        "/x/../admin",
        "/%2e%2e/admin",
    ] {
        let reply = get(&shop, sneaky, "shop.test");
        assert!(reply.starts_with("HTTP/1.1 403"), "{sneaky}: {reply}");
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), 0, "none reached the backend");
    // What is not under /admin goes on, as the client wrote it.
    let reply = get(&shop, "/administrator/%61;x", "shop.test");
    assert_eq!(seen(&reply)["uri"], "/administrator/%61;x", "{reply}");
    // A route that could never match is refused with its field.
    let bad = shop.eb.api(
        "PUT",
        "/v1/routes",
        Some(r#"[{"path_prefix": "/%61dmin", "action": "welcome"}]"#),
        &[],
    );
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(
        bad.body.contains("routes[0].path_prefix") && bad.body.contains("/admin"),
        "{}",
        bad.body
    );
}

#[test]
fn the_backend_gets_the_host_that_was_routed() {
    let (shop_be, other_be) = (Backend::start("shop"), Backend::start("secret"));
    let shop = Shop::start(&[shop_be.addr], 1, |c| {
        c["pools"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "secret", "backends": [{"address": other_be.addr.to_string()}]}));
        c["routes"] = json!([
            {"host": "secret.example", "action": {"proxy": {"pool": "secret"}}},
            {"action": {"proxy": {"pool": "app"}}},
        ]);
    });
    // Absolute form: the URI's authority wins over Host (RFC 9112, 3.2.2),
    // for routing and for what the backend is told.
    let reply = get(&shop, "http://localhost/x", "secret.example");
    let got = seen(&reply);
    assert_eq!(got["backend"], "shop", "{reply}");
    assert_eq!(got["headers"]["host"], "localhost", "{reply}");
    assert_eq!(got["uri"], "/x");
    let reply = get(&shop, "/x", "secret.example");
    assert_eq!(seen(&reply)["backend"], "secret");
    assert_eq!(other_be.hits.load(Ordering::SeqCst), 1);
}

#[test]
fn only_websocket_upgrades_reach_a_backend() {
    let a = Backend::start("a");
    let shop = Shop::start(&[a.addr], 1, |_| {});
    let reply = send(
        &shop,
        b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\nGET /second HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let first = seen(
        &reply
            .split("HTTP/1.1 ")
            .nth(1)
            .map(|r| format!("HTTP/1.1 {r}"))
            .unwrap(),
    );
    let headers = first["headers"].as_object().unwrap();
    for name in ["upgrade", "http2-settings", "connection"] {
        assert!(!headers.contains_key(name), "{name} was forwarded: {first}");
    }
    // The connection stayed HTTP/1.1: the second request was routed too.
    assert_eq!(reply.matches("HTTP/1.1 200").count(), 2, "{reply}");
    assert_eq!(a.hits.load(Ordering::SeqCst), 2);
}

#[test]
fn a_malformed_chunked_body_is_the_clients_400_not_the_backends_502() {
    let a = Backend::start("a");
    let shop = Shop::start(&[a.addr], 1, |_| {});
    let head = "POST /sink HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (what, body) in [
        ("a size that is not hex", "zz\r\nhello\r\n0\r\n\r\n"),
        (
            "a size that overflows",
            "FFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n",
        ),
        ("data past the chunk's size", "3\r\nhello\r\n0\r\n\r\n"),
        ("a bare LF after the size", "5\nhello\r\n0\r\n\r\n"),
        ("a bad extension", "5;\x01\r\nhello\r\n0\r\n\r\n"),
    ] {
        let reply = send(&shop, format!("{head}{body}").as_bytes());
        assert!(
            reply.starts_with("HTTP/1.1 400") && reply.contains("connection: close"),
            "{what}: {reply}"
        );
    }
    let twice = send(
        &shop,
        b"POST /sink HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert!(twice.starts_with("HTTP/1.1 400"), "{twice}");
    // Nothing was held against the backend: it is in rotation, no failure
    // counted, and a good body still goes through.
    let metrics = shop.eb.api("GET", "/metrics", None, &[]).expect(200).body;
    for line in metrics.lines().filter(|l| {
        l.starts_with("edgebox_backend_failures_total") || l.starts_with("edgebox_backend_ejected")
    }) {
        assert!(line.ends_with(" 0"), "{line}");
    }
    let good = send(
        &shop,
        b"POST /sink HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert!(
        good.starts_with("HTTP/1.1 200") && good.ends_with("5\n"),
        "{good}"
    );
}
