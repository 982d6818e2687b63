//! `edgebox serve` on loopback, driven by curl and a rustls client, proxying to
//! backends the tests start.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

fn bodies(out: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(out)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect()
}

/// One curl process, several requests: they share one keep-alive connection,
/// so they land on one core, whose round robin must alternate.
#[test]
fn curl_http1_and_http2_round_robin_over_two_backends() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let shop = Shop::start(&[a.addr, b.addr], 2, |_| {});
    let (pki, eb) = (&shop.pki, &shop.eb);
    let https = eb.addr("https");
    for version in ["--http1.1", "--http2"] {
        let urls: Vec<String> = (0..6)
            .map(|i| format!("https://shop.test:{}/r{i}?q=1", https.port()))
            .collect();
        let mut args = vec![version, "--resolve"];
        let r = resolve("shop.test", https);
        args.push(&r);
        args.extend(urls.iter().map(String::as_str));
        let out = curl(pki, &args);
        assert!(out.status.success(), "{}", out.stderr);
        let replies = bodies(&out.stdout);
        assert_eq!(replies.len(), 6);
        let order: Vec<&str> = replies
            .iter()
            .map(|r| r["backend"].as_str().unwrap())
            .collect();
        for pair in order.windows(2) {
            assert_ne!(pair[0], pair[1], "not round robin: {order:?}");
        }
        for (i, r) in replies.iter().enumerate() {
            assert_eq!(r["uri"], format!("/r{i}?q=1"));
            assert_eq!(r["version"], "HTTP/1.1", "backends always get HTTP/1.1");
            let h = &r["headers"];
            assert_eq!(h["host"], format!("shop.test:{}", https.port()));
            assert_eq!(h["x-forwarded-for"], "127.0.0.1");
            assert_eq!(h["x-forwarded-proto"], "https");
            assert_eq!(h["x-forwarded-host"], format!("shop.test:{}", https.port()));
            assert_eq!(
                h["forwarded"],
                format!(
                    "for=127.0.0.1;proto=https;host=\"shop.test:{}\"",
                    https.port()
                )
            );
        }
    }
    // Keep-alive to the backends: 12 requests did not need 12 connections.
    let peers: std::collections::HashSet<String> = eb
        .access_log()
        .iter()
        .map(|l| l["backend"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(peers.len(), 2);
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 6);
}

#[test]
fn client_headers_are_extended_and_hop_by_hop_ones_removed() {
    let a = Backend::start("a");
    let shop = Shop::start(&[a.addr], 1, |_| {});
    let out = shop.curl(&[
        "--http1.1",
        "-H",
        "X-Forwarded-For: 203.0.113.9",
        "-H",
        "X-Forwarded-Proto: http",
        "-H",
        "Connection: keep-alive, X-Drop-Me",
        "-H",
        "X-Drop-Me: secret",
        "-H",
        "Keep-Alive: timeout=5",
        &shop.url("/"),
    ]);
    let reply: Value = serde_json::from_str(&out.stdout).unwrap();
    let h = &reply["headers"];
    // Not from a trusted proxy: what it claimed is replaced, not appended
    // to (client_address.rs has the trusted case).
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert!(h.get("x-drop-me").is_none(), "{h}");
    assert!(h.get("keep-alive").is_none(), "{h}");
}

#[test]
fn rustls_client_over_http1_and_h2() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let shop = Shop::start(&[a.addr, b.addr], 2, |_| {});
    let (pki, eb) = (&shop.pki, &shop.eb);
    let addr = eb.addr("https");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for alpn in [&b"http/1.1"[..], b"h2"] {
            let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_client(pki, &[alpn])));
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let stream = tls.connect(server_name("shop.test"), tcp).await.unwrap();
            assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
            let io = TokioIo::new(stream);
            let mut seen = Vec::new();
            if alpn == b"h2" {
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                        .await
                        .unwrap();
                tokio::spawn(conn);
                for _ in 0..4 {
                    let req = hyper::Request::get(format!("https://shop.test:{}/h2", addr.port()))
                        .body(Empty::<bytes::Bytes>::new())
                        .unwrap();
                    let resp = send.send_request(req).await.unwrap();
                    assert_eq!(resp.status(), 200);
                    seen.push(resp.headers()["x-backend"].to_str().unwrap().to_owned());
                }
            } else {
                let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                for _ in 0..4 {
                    let req = hyper::Request::get("/h1")
                        .header("host", "shop.test")
                        .body(Empty::<bytes::Bytes>::new())
                        .unwrap();
                    let resp = send.send_request(req).await.unwrap();
                    assert_eq!(resp.status(), 200);
                    seen.push(resp.headers()["x-backend"].to_str().unwrap().to_owned());
                    resp.into_body().collect().await.unwrap();
                }
            }
            seen.sort();
            assert_eq!(
                seen,
                ["a", "a", "b", "b"],
                "over {:?}",
                std::str::from_utf8(alpn)
            );
        }
    });
}

#[test]
fn dead_backend_gives_502_and_the_connection_survives() {
    let shop = Shop::start(&[closed_port()], 1, |_| {});
    let url = shop.url("/");
    let out = shop.curl(&[
        "--http1.1",
        "-w",
        "%{http_code} %{num_connects}\n",
        &url,
        &url,
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        out.stdout, "502 Bad Gateway\n502 1\n502 Bad Gateway\n502 0\n",
        "two 502s on one connection"
    );
}

#[test]
fn a_failed_backend_is_skipped_for_the_next_one() {
    let a = Backend::start("a");
    let shop = Shop::start(&[closed_port(), a.addr], 1, |_| {});
    for _ in 0..4 {
        assert_eq!(shop.status(&["-X", "POST", &shop.url("/")]), "200");
    }
}

#[test]
fn silent_backend_gives_504_after_the_response_timeout() {
    let silent = SilentBackend::start();
    let shop = Shop::start(&[silent.addr], 1, |cfg| {
        cfg["pools"][0]["timeouts"] = json!({"response_header_ms": 700});
    });
    let start = Instant::now();
    let out = shop.curl(&["-w", "%{http_code}", &shop.url("/")]);
    let took = start.elapsed();
    assert_eq!(out.stdout, "504 Gateway Timeout\n504");
    assert!(
        took >= Duration::from_millis(700),
        "answered before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn bodies_stream_both_ways() {
    let a = Backend::start("a");
    let shop = Shop::start(&[a.addr], 2, |_| {});

    // 24 MiB up and back down, HTTP/1.1 and HTTP/2.
    let upload = shop.eb.dir().join("upload.bin");
    let data: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(&upload, &data).unwrap();
    for version in ["--http1.1", "--http2"] {
        let down = shop.eb.dir().join("down.bin");
        let out = shop.curl(&[
            version,
            "--data-binary",
            &format!("@{}", upload.display()),
            "-o",
            &path_of(&down),
            &shop.url("/echo"),
        ]);
        assert!(out.status.success(), "{}", out.stderr);
        assert!(
            std::fs::read(&down).unwrap() == data,
            "echo differs over {version}"
        );
    }

    // A slow stream arrives chunk by chunk, not all at the end.
    let out = shop.curl(&[
        "-N",
        "-w",
        "\n%{time_starttransfer} %{time_total}",
        &shop.url("/stream?chunks=5&ms=300"),
    ]);
    let (body, times) = out.stdout.rsplit_once('\n').unwrap();
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");
    let t: Vec<f64> = times.split(' ').map(|x| x.parse().unwrap()).collect();
    assert!(
        t[1] - t[0] > 0.9,
        "first byte at {}s, last at {}s: the body was buffered",
        t[0],
        t[1]
    );
}

#[test]
fn websocket_echo_passes_through() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let a = Backend::start("a");
    let shop = Shop::start(&[a.addr], 2, |_| {});
    let (pki, eb) = (&shop.pki, &shop.eb);
    let addr = eb.addr("https");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_client(pki, &[b"http/1.1"])));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let stream = tls.connect(server_name("shop.test"), tcp).await.unwrap();
        let url = format!("wss://shop.test:{}/ws", addr.port());
        let (mut ws, resp) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        assert_eq!(resp.status(), 101);
        for i in 0..20 {
            ws.send(Message::text(format!("hello {i}"))).await.unwrap();
            assert_eq!(
                ws.next().await.unwrap().unwrap(),
                Message::text(format!("hello {i}"))
            );
        }
        let big = vec![7u8; 1 << 20];
        ws.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
        ws.close(None).await.unwrap();
    });
}

#[test]
fn no_route_is_404_and_a_bad_host_is_400() {
    let shop = Shop::start(&[], 1, |cfg| {
        cfg["routes"] = json!([{"host": "shop.test", "path_prefix": "/only", "action": {"respond": {"body": "only\n"}}}]);
    });
    assert_eq!(shop.status(&[&shop.url("/only/x")]), "200");
    assert_eq!(shop.status(&[&shop.url("/other")]), "404");
    assert_eq!(
        shop.status(&["--path-as-is", &shop.url("/only/../other")]),
        "404"
    );
    let bad_host = ["-H", "Host: bad host!", &shop.url("/only")];
    assert_eq!(
        shop.status(&[&["--http1.1"][..], &bad_host].concat()),
        "400"
    );
    // Over HTTP/2 a malformed :authority is a stream error in the h2 layer.
    assert_eq!(shop.status(&[&["--http2"][..], &bad_host].concat()), "000");
}

/// Many multiplexed HTTP/2 streams (h2load: 4 connections × 16 streams) all
/// reach the backends and come back, none failing.
#[test]
fn h2load_multiplexed_streams_all_succeed() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let shop = Shop::start(&[a.addr, b.addr], 2, |_| {});
    let eb = &shop.eb;
    let url = format!("https://127.0.0.1:{}/", eb.addr("https").port());
    let out = std::process::Command::new("h2load")
        .args(["-n", "2000", "-c", "4", "-m", "16", "-N", "10s", &url])
        .output()
        .expect("h2load must be installed (the test command installs nghttp2-client)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("2000 succeeded, 0 failed, 0 errored"),
        "{stdout}"
    );
    assert!(stdout.contains("Application protocol: h2"), "{stdout}");
    let total = a.hits.load(std::sync::atomic::Ordering::SeqCst)
        + b.hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(total, 2000);
}

/// A keep-alive connection that moves no byte for `client.idle_timeout_ms` is
/// closed by edgebox; one that keeps talking is not.
#[test]
fn idle_client_connections_are_closed() {
    use std::io::{Read, Write};
    let shop = Shop::start(&[], 1, |cfg| {
        cfg["client"] = json!({"idle_timeout_ms": 400});
        cfg["routes"] = json!([{"action": {"respond": {"body": "ok\n"}}}]);
    });
    let mut tcp = std::net::TcpStream::connect(shop.eb.addr("http")).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Busy for longer than the idle timeout: still served.
    let mut buf = [0u8; 4096];
    for _ in 0..6 {
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            .unwrap();
        let n = tcp.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        std::thread::sleep(Duration::from_millis(150));
    }
    // Then quiet: closed by the server.
    let start = Instant::now();
    assert_eq!(
        tcp.read(&mut buf).unwrap(),
        0,
        "expected the server to close"
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "closed too late: {waited:?}"
    );
}

/// A keep-alive connection waiting for its next request is governed by
/// `client.idle_timeout_ms`, not by `client.header_timeout_ms`; the header
/// timeout starts with the next request's first byte.
#[test]
fn keep_alive_waits_the_idle_timeout_not_the_header_timeout() {
    use std::io::{Read, Write};
    let header_timeout = Duration::from_millis(300);
    let shop = Shop::start(&[], 1, |cfg| {
        cfg["client"] = json!({"header_timeout_ms": 300, "idle_timeout_ms": 20_000});
        cfg["routes"] = json!([{"action": {"respond": {"body": "ok\n"}}}]);
    });
    let mut tcp = std::net::TcpStream::connect(shop.eb.addr("http")).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    let get = b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n";
    tcp.write_all(get).unwrap();
    let n = tcp.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Between requests for four header timeouts: still open.
    std::thread::sleep(header_timeout * 4);
    tcp.write_all(get).unwrap();
    let n = tcp.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "the keep-alive connection was closed after the header timeout: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // A request begun but not finished is still cut off by the header
    // timeout (counted from its first byte), long before the idle timeout.
    std::thread::sleep(header_timeout * 2);
    let start = Instant::now();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: sh").unwrap();
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    let waited = start.elapsed();
    assert!(
        waited >= header_timeout - Duration::from_millis(50) && waited < Duration::from_secs(5),
        "a partial head was cut off after {waited:?}"
    );
}

/// Requests that could be framed two ways cannot smuggle a second request,
/// and unsupported codings and oversized heads are refused.
#[test]
fn ambiguous_or_oversized_requests_are_refused() {
    use std::io::{Read, Write};
    let a = Backend::start("a");
    let shop = Shop::start(&[a.addr], 1, |_| {});
    let send = |raw: &[u8]| {
        let mut s = std::net::TcpStream::connect(shop.eb.addr("http")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).unwrap();
        let mut out = Vec::new();
        // Read to the end: the server must close the connection itself.
        s.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    // Both lengths: the chunked body wins, the stale Content-Length is not
    // forwarded, and the connection closes, so what follows is never read as
    // a request.
    let both = send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(
        both.starts_with("HTTP/1.1 200") && both.contains("connection: close"),
        "{both}"
    );
    assert_eq!(
        both.matches("HTTP/1.1 ").count(),
        1,
        "nothing after it is served: {both}"
    );
    assert!(
        !both.contains("\"content-length\""),
        "a length reached the backend: {both}"
    );
    assert!(!both.contains("smuggled"), "{both}");
    let gzip =
        send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n");
    assert!(
        gzip.starts_with("HTTP/1.1 501") && gzip.contains("connection: close"),
        "{gzip}"
    );
    let mut huge = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
    huge.extend(vec![b'y'; 100 << 10]);
    huge.extend(b"\r\n\r\n");
    let big = send(&huge);
    assert!(
        big.starts_with("HTTP/1.1 431"),
        "{}",
        &big[..big.len().min(200)]
    );
    assert_eq!(
        a.hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the first reached the backend"
    );
    // Plain chunked is fine.
    let echoed = send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    assert!(
        echoed.starts_with("HTTP/1.1 200") && echoed.ends_with("hello\r\n0\r\n\r\n"),
        "{echoed}"
    );
}

/// A backend that answers every connection with one HTTP/1.0 response and
/// closes it (as Python's http.server does).
fn http10_backend() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten().take(8) {
            let mut head = Vec::new();
            let mut byte = [0u8];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold\n");
        }
    });
    addr
}

#[test]
fn an_http10_backend_is_answered_for_in_http11() {
    let shop = Shop::start(&[http10_backend()], 1, |_| {});
    let url = shop.url("/");
    let out = shop.curl(&["--http1.1", "-sS", "-i", &url, &url]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        out.stdout.matches("HTTP/1.1 200 OK").count(),
        2,
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("HTTP/1.0"), "{}", out.stdout);
    assert_eq!(out.stdout.matches("old\n").count(), 2);
}
