//! Who the backend is told the client is: PROXY protocol v2 headers sent to
//! a pool's backends, PROXY headers accepted from a listener's trusted
//! balancers only, and forwarding headers believed only from
//! `trusted_proxies`.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A backend that expects a PROXY header on each connection, then answers
/// every request with the addresses the header named.
fn proxy_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let header = loop {
                    let n = s.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    match edgebox::proxy_protocol::decode(&buf) {
                        Ok(Some(h)) => break h,
                        Ok(None) => continue,
                        Err(_) => return,
                    }
                };
                buf.drain(..header.len);
                let said = match header.addresses {
                    Some((c, l)) => json!({"client": c.to_string(), "local": l.to_string()}),
                    None => json!({"local_command": true}),
                };
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = s.read(&mut chunk).unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let body = said.to_string();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One HTTP/1.1 request over `s`, the response's body.
fn get(s: &mut TcpStream, host: &str, extra: &str) -> String {
    write!(s, "GET / HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return body[..len].to_owned();
            }
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn backends_get_a_proxy_v2_header_naming_the_client_per_client_connection() {
    let backend = proxy_backend();
    let shop = Shop::start(&[backend], 1, |cfg| {
        cfg["pools"][0]["proxy_protocol"] = json!("v2");
    });
    let listener = shop.eb.addr("http");
    let mut a = connect(listener);
    let a_addr = a.local_addr().unwrap();
    let first: Value = serde_json::from_str(&get(&mut a, "shop.test", "")).unwrap();
    assert_eq!(first["client"], a_addr.to_string());
    assert_eq!(first["local"], listener.to_string());
    // The same client connection may reuse its backend connection; another
    // client's requests never travel under its header.
    let again: Value = serde_json::from_str(&get(&mut a, "shop.test", "")).unwrap();
    assert_eq!(again["client"], a_addr.to_string());
    let mut b = connect(listener);
    let b_addr = b.local_addr().unwrap();
    let other: Value = serde_json::from_str(&get(&mut b, "shop.test", "")).unwrap();
    assert_eq!(other["client"], b_addr.to_string());
    println!("backend told: {first} then {other}");
}

#[test]
fn proxy_headers_are_read_from_trusted_balancers_only() {
    let echo = Backend::start("a");
    let shop = Shop::start(&[echo.addr], 1, |cfg| {
        cfg["listeners"] = json!([
            {"name": "behind-lb", "address": "127.0.0.1:0", "protocol": "http",
             "proxy_protocol": {"from": ["127.0.0.0/8"]}},
            {"name": "direct", "address": "127.0.0.1:0", "protocol": "http",
             "proxy_protocol": {"from": ["10.0.0.0/8"]}}
        ]);
        cfg["certificates"] = json!([]);
    });
    let (behind, direct) = (shop.eb.addr("behind-lb"), shop.eb.addr("direct"));
    // A balancer at 127.0.0.1 says the client is 203.0.113.7.
    let mut s = connect(behind);
    let real: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    s.write_all(&edgebox::proxy_protocol::encode_v2(
        real,
        "198.51.100.1:80".parse().unwrap(),
    ))
    .unwrap();
    let seen: Value = serde_json::from_str(&get(&mut s, "shop.test", "")).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-for"], "203.0.113.7");
    // From a trusted balancer the header is required: plain HTTP is cut off.
    let mut s = connect(behind);
    write!(s, "GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    // From anyone else a PROXY header is not read: it is a bad request.
    let mut s = connect(direct);
    s.write_all(&edgebox::proxy_protocol::encode_v2(real, direct))
        .unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n").unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(echo.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let echo = Backend::start("a");
    let shop = Shop::start(&[echo.addr], 1, |cfg| {
        cfg["listeners"] = json!([
            {"name": "from-cdn", "address": "127.0.0.1:0", "protocol": "http",
             "trusted_proxies": ["127.0.0.1/32"]},
            {"name": "public", "address": "127.0.0.1:0", "protocol": "http"}
        ]);
        cfg["certificates"] = json!([]);
    });
    let forged = "X-Forwarded-For: 198.51.100.23\r\nX-Forwarded-Proto: https\r\nForwarded: for=198.51.100.23\r\n";
    let via_cdn: Value = serde_json::from_str(&get(
        &mut connect(shop.eb.addr("from-cdn")),
        "shop.test",
        forged,
    ))
    .unwrap();
    let h = &via_cdn["headers"];
    assert_eq!(h["x-forwarded-for"], "198.51.100.23, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https", "the CDN saw TLS");
    assert!(h["forwarded"]
        .as_str()
        .unwrap()
        .starts_with("for=198.51.100.23, for=127.0.0.1;"));
    let direct: Value = serde_json::from_str(&get(
        &mut connect(shop.eb.addr("public")),
        "shop.test",
        forged,
    ))
    .unwrap();
    let h = &direct["headers"];
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "the forged entry is gone"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["forwarded"], "for=127.0.0.1;proto=http;host=shop.test");
}
