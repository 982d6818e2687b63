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
    let read = s.read_to_end(&mut out);
    let mut text = String::from_utf8_lossy(&out).into_owned();
    match read {
        Ok(_) => {}
        Err(e) if timed_out(&e) => {
            text.push_str("<the server did not close the connection within 10 s>");
        }
        Err(e) => text.push_str(&format!("<{e}>")),
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
    // A % that does not begin an escape: routed, it would be /%6admin; a
    // backend decoding twice would read /jdmin (found by fuzz/).
    for malformed in ["/%6%61dmin", "/%%361dmin", "/50%", "/%zz/admin"] {
        let reply = get(&shop, malformed, "shop.test");
        assert!(reply.starts_with("HTTP/1.1 400"), "{malformed}: {reply}");
        assert!(reply.contains("connection: close"), "{malformed}: {reply}");
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

/// A TCP connection to `addr` from the local address `from`.
fn connect_from(from: std::net::IpAddr, addr: std::net::SocketAddr) -> std::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::new(from, 0).into())
        .unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

/// A read that ran out of its timeout (the connection is still open).
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// A connection to `addr` from `from`; whether the server closed it at once
/// (it reads the end of the stream within `wait`).
fn closed_at_once(from: std::net::IpAddr, addr: std::net::SocketAddr, wait: Duration) -> bool {
    let mut s = connect_from(from, addr);
    s.set_read_timeout(Some(wait)).unwrap();
    match s.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        // Nothing within `wait`: it is open.
        Err(e) if timed_out(&e) => false,
        Err(_) => true,
    }
}

/// One request on an open connection; the reply until the server closes.
fn request_on(mut s: std::net::TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
}

/// Waits until the (one) core has `n` client connections open.
fn wait_open(shop: &Shop, n: u64) {
    wait_for(&format!("{n} connections open"), || {
        let status = shop.eb.api("GET", "/v1/status", None, &[]).json();
        (status["cores"][0]["connections_active"] == n).then_some(())
    });
}

fn refused(shop: &Shop, reason: &str) -> u64 {
    let metrics = shop.eb.api("GET", "/metrics", None, &[]).expect(200).body;
    let prefix = format!("edgebox_connections_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix}in {metrics}"))
        .parse()
        .unwrap()
}

#[test]
fn connections_over_the_caps_are_closed_as_they_come_and_counted() {
    let a = Backend::start("a");
    let shop = Shop::start(&[a.addr], 1, |c| {
        c["client"] = json!({"max_connections": 6, "max_connections_per_address": 3});
    });
    let addr = shop.eb.addr("http");
    let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let other: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let open = |from: std::net::IpAddr| connect_from(from, addr);
    // Three from one address are served; a fourth is closed at once.
    let mut held: Vec<_> = (0..3).map(|_| open(local)).collect();
    wait_open(&shop, 3);
    assert!(
        closed_at_once(local, addr, Duration::from_secs(2)),
        "the 4th from 127.0.0.1"
    );
    assert_eq!(refused(&shop, "per_address"), 1);
    // Another address still gets in, up to the global cap of 6.
    held.extend((0..3).map(|_| open(other)));
    wait_open(&shop, 6);
    let third: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    assert!(
        closed_at_once(third, addr, Duration::from_secs(2)),
        "the 7th"
    );
    assert_eq!(refused(&shop, "max_connections"), 1);
    // A held connection still works, and a closed one frees its place.
    let reply = request_on(held.pop().unwrap());
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    wait_open(&shop, 5);
    assert!(
        closed_at_once(local, addr, Duration::from_secs(2)),
        "127.0.0.1 has its 3"
    );
    let reply = request_on(open(third));
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "the freed place: {reply}"
    );
    assert_eq!(refused(&shop, "per_address"), 2);
}

/// Whether this process may raise its hard limits (CAP_SYS_RESOURCE).
fn may_raise_hard_limits() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    eff & (1 << 24) != 0
}

#[test]
fn the_open_files_limit_is_raised_at_start() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let a = Backend::start("a");
    // Started with a soft limit of 1 024, as PID 1 and many shells give.
    let before = getrlimit(Resource::Nofile);
    let low = Rlimit {
        current: Some(1024),
        maximum: before.maximum,
    };
    setrlimit(Resource::Nofile, low).unwrap();
    let shop = Shop::start(&[a.addr], 1, |_| {});
    setrlimit(Resource::Nofile, before).unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", shop.eb.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    println!("edgebox, started with a soft limit of 1024: {line}");
    assert_eq!(numbers[0], numbers[1], "soft raised to hard: {line}");
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if may_raise_hard_limits() {
        assert_eq!(
            numbers[1],
            nr_open.min(1 << 20),
            "the hard limit raised: {line}"
        );
    } else {
        assert_eq!(Some(numbers[1]), before.maximum, "{line}");
    }
}

#[test]
fn the_admin_api_answers_while_a_scrub_runs_and_one_scrub_runs_at_a_time() {
    let shop = Shop::start(&[closed_port()], 1, |c| {
        c["routes"] = json!([{"action": {"static": {"site": "big"}}}]);
    });
    let site = tempfile::tempdir().unwrap();
    for i in 0..4 {
        std::fs::write(
            site.path().join(format!("{i}.bin")),
            noise(2 * i + 1, 16 << 20),
        )
        .unwrap();
    }
    ok(shop.eb.publish(site.path(), "big"));
    // The scrub hashes blobs in order; the last "blob" is a FIFO, so it
    // stops there until the test writes to it: a scrub as long as the test
    // wants, whatever the disk's speed.
    let last = "f".repeat(64);
    let dir = shop.eb.dir().join("data/store/blobs").join(&last[..2]);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join(&last);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let eb = &shop.eb;
    std::thread::scope(|s| {
        let scrub = s.spawn(move || {
            eb.api("POST", "/v1/store/scrub", None, &[])
                .expect(200)
                .json()
        });
        // Admin requests go on while it waits on the FIFO (without the
        // scrub off the control thread, each would wait until --max-time).
        let mut slowest = Duration::ZERO;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            eb.api("GET", "/v1/status", None, &["--max-time", "5"])
                .expect(200);
            slowest = slowest.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!scrub.is_finished(), "the scrub passed the FIFO");
        let busy = eb.api("POST", "/v1/store/gc", None, &["--max-time", "5"]);
        assert_eq!(busy.status, 409, "a GC while the scrub runs: {}", busy.body);
        println!(
            "5 status requests answered while a scrub ran, slowest {:.1} ms",
            slowest.as_secs_f64() * 1e3
        );
        std::fs::write(&fifo, b"not what its name says").unwrap();
        let report = scrub.join().unwrap();
        assert_eq!(report["corrupt"], json!([last]), "{report}");
        assert!(
            report["checked_bytes"].as_u64().unwrap() >= 4 * (16 << 20),
            "{report}"
        );
    });
    eb.api("POST", "/v1/store/gc", None, &[]).expect(200);
}

#[test]
fn silent_admin_connections_are_capped_per_address() {
    let shop = Shop::start(&[closed_port()], 1, |_| {});
    let admin = shop.eb.admin.unwrap();
    let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let silent: Vec<_> = (0..8).map(|_| connect_from(local, admin)).collect();
    // Eight handshakes in progress from 127.0.0.1: a ninth from it is closed
    // at once, one from another address is not, and its request is served.
    wait_for("the ninth to be closed", || {
        closed_at_once(local, admin, Duration::from_millis(500)).then_some(())
    });
    let other: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    assert!(!closed_at_once(other, admin, Duration::from_millis(500)));
    shop.eb
        .api("GET", "/v1/status", None, &["--interface", "127.0.0.2"])
        .expect(200);
    drop(silent);
    wait_for("127.0.0.1 let in again", || {
        (shop.eb.api("GET", "/v1/status", None, &[]).status == 200).then_some(())
    });
}

#[test]
fn the_admin_api_answers_while_the_data_plane_is_saturated() {
    // Both cores serving a bounded h2load run (a respond route, so the
    // cores themselves are the bottleneck), the admin API asked meanwhile.
    let shop = Shop::start(&[closed_port()], 2, |c| {
        c["routes"] = json!([{"action": {"respond": {"status": 200, "body": "ok\n"}}}]);
    });
    let url = format!("https://127.0.0.1:{}/", shop.eb.addr("https").port());
    let mut load = std::process::Command::new("h2load")
        .args([
            "-n", "300000", "-c", "64", "-m", "16", "-t", "2", "-D", "8", &url,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("h2load must be installed (the test command installs nghttp2-client)");
    std::thread::sleep(Duration::from_millis(500));
    let mut times = Vec::new();
    while load.try_wait().unwrap().is_none() && times.len() < 40 {
        let t = std::time::Instant::now();
        shop.eb
            .api("GET", "/v1/status", None, &["--max-time", "5"])
            .expect(200);
        times.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = load.kill();
    let out = load.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("finished in"))
        .unwrap_or("h2load was stopped");
    times.sort();
    assert!(times.len() >= 5, "too few answered under load: {times:?}");
    println!(
        "under load ({line}): {} admin requests answered, median {:.1} ms, slowest {:.1} ms",
        times.len(),
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
}

#[test]
fn malformed_http1_requests_are_refused_and_none_reaches_the_backend() {
    let a = Backend::start("a");
    let shop = Shop::start(&[a.addr], 1, |_| {});
    let long_uri = format!(
        "GET /{} HTTP/1.1\r\nHost: shop.test\r\n\r\n",
        "a".repeat(70_000)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: shop.test\r\n{}\r\n",
        (0..120)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("conflicting lengths", "POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".into(), &["400"]),
        ("a list of lengths", "POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5, 6\r\n\r\nhello!".into(), &["400"]),
        ("a signed length", "POST / HTTP/1.1\r\nHost: shop.test\r\nContent-Length: +5\r\n\r\nhello".into(), &["400"]),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: shop.test\r\nX-A: a\r\n b\r\n\r\n".into(), &["400"]),
        ("a bare CR in a value", "GET / HTTP/1.1\r\nHost: shop.test\r\nX-A: a\rb\r\n\r\n".into(), &["400"]),
        ("bare LF line ends", "GET / HTTP/1.1\nHost: shop.test\n\n".into(), &["400"]),
        ("a NUL in a value", "GET / HTTP/1.1\r\nHost: shop.test\r\nX-A: a\0b\r\n\r\n".into(), &["400"]),
        ("a control byte in a value", "GET / HTTP/1.1\r\nHost: shop.test\r\nX-A: a\x01b\r\n\r\n".into(), &["400"]),
        ("a space before the colon", "GET / HTTP/1.1\r\nHost : shop.test\r\n\r\n".into(), &["400"]),
        ("a bad header name", "GET / HTTP/1.1\r\nHost: shop.test\r\nX@Y: 1\r\n\r\n".into(), &["400"]),
        ("a bad method", "G@T / HTTP/1.1\r\nHost: shop.test\r\n\r\n".into(), &["400"]),
        ("no Host", "GET / HTTP/1.1\r\n\r\n".into(), &["400"]),
        ("two Hosts", "GET / HTTP/1.1\r\nHost: shop.test\r\nHost: other.test\r\n\r\n".into(), &["400"]),
        ("a request line of 70 kB", long_uri, &["414", "431"]),
        ("120 headers", many_headers, &["431"]),
        ("chunked in HTTP/1.0", "POST / HTTP/1.0\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into(), &["400"]),
        ("a bad version", "GET / HTTP/1.7\r\nHost: shop.test\r\n\r\n".into(), &["400", "505"]),
        ("a TLS hello on the plain port", "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03".into(), &["400"]),
    ];
    let mut wrong = Vec::new();
    for (what, raw, want) in &cases {
        let reply = send(&shop, raw.as_bytes());
        let status = reply.get(9..12).unwrap_or("none");
        let closed = !reply.contains("<the server did not close");
        if !want.contains(&status) || !closed {
            wrong.push(format!(
                "{what}: {}",
                reply.lines().next().unwrap_or("(nothing)")
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(
        a.hits.load(Ordering::SeqCst),
        0,
        "something reached the backend"
    );
}

/// A backend that misbehaves by path: `/reset` resets the connection after
/// reading the request, `/garbage` answers what is not HTTP, `/stall`
/// sends a head and 10 of 100 body bytes, then nothing; anything else is a
/// proper `200 fine`.
fn faulty_backend() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let line = String::from_utf8_lossy(&head).into_owned();
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                match path.as_str() {
                    "/reset" => {
                        let s = socket2::SockRef::from(&conn);
                        s.set_linger(Some(Duration::ZERO)).unwrap();
                    }
                    "/garbage" => {
                        let _ = conn.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n");
                    }
                    "/stall" => {
                        let _ = conn
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
                        std::thread::sleep(Duration::from_secs(30));
                    }
                    _ => {
                        let _ = conn.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfine\n",
                        );
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_broken_backend_costs_only_its_own_request() {
    let backend = faulty_backend();
    let shop = Shop::start(&[backend], 1, |c| {
        c["pools"][0]["timeouts"] = json!({"idle_ms": 1000});
        // No retries, and no ejection: each request meets the fault itself.
        c["pools"][0]["retries"] = json!({"max": 0});
        c["pools"][0]["outlier_detection"] = json!({"consecutive_failures": 1000});
    });
    let reset = get(&shop, "/reset", "shop.test");
    assert!(reset.starts_with("HTTP/1.1 502"), "reset: {reset}");
    let garbage = get(&shop, "/garbage", "shop.test");
    assert!(garbage.starts_with("HTTP/1.1 502"), "garbage: {garbage}");
    // A response cut mid-body cannot become a 502 (its head is out): the
    // client's connection is closed after the backend's idle time, so the
    // client sees a short body, not a complete one.
    let started = std::time::Instant::now();
    let stalled = send(&shop, b"GET /stall HTTP/1.1\r\nHost: shop.test\r\n\r\n");
    assert!(
        stalled.starts_with("HTTP/1.1 200") && stalled.ends_with("0123456789"),
        "stalled: {stalled}"
    );
    println!(
        "a response stalled mid-body was cut after {:.1} s (idle_ms 1000)",
        started.elapsed().as_secs_f64()
    );
    // Meanwhile and after, the same backend's good answers get through.
    let fine = get(&shop, "/", "shop.test");
    assert!(
        fine.starts_with("HTTP/1.1 200") && fine.ends_with("fine\n"),
        "{fine}"
    );
    // Over HTTP/2 a stalled stream ends alone; the connection's other
    // streams are answered.
    let out = shop.curl(&[
        "--http2",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}:%{num_connects} ",
        "--max-time",
        "10",
        &shop.url("/stall"),
        "-o",
        "/dev/null",
        &shop.url("/"),
        "-o",
        "/dev/null",
        &shop.url("/garbage"),
    ]);
    // The second and third on the first's connection (no new connect).
    assert!(out.stdout.ends_with("200:0 502:0 "), "h2: {:?}", out.stdout);
}

#[test]
fn hsts_is_sent_on_https_only_by_route_or_by_default() {
    let a = Backend::start("a");
    let shop = Shop::start(&[a.addr], 1, |c| {
        c["tls"]["hsts"] = json!({"max_age_s": 300});
        c["routes"] = json!([
            {"path_prefix": "/shop", "action": {"proxy": {"pool": "app"}},
             "hsts": {"max_age_s": 31536000, "include_subdomains": true, "preload": true}},
            {"path_prefix": "/off", "action": "welcome", "hsts": {"max_age_s": 0}},
            {"action": "welcome"},
        ]);
    });
    let sts = |path: &str| {
        let out = shop
            .curl(&["-s", "-D", "-", "-o", "/dev/null", &shop.url(path)])
            .stdout;
        out.lines()
            .find_map(|l| l.strip_prefix("strict-transport-security: "))
            .map(|v| v.trim().to_owned())
    };
    assert_eq!(
        sts("/shop/cart").as_deref(),
        Some("max-age=31536000; includeSubDomains; preload")
    );
    assert_eq!(sts("/").as_deref(), Some("max-age=300"));
    assert_eq!(sts("/off").as_deref(), Some("max-age=0"));
    assert_eq!(sts("/nowhere-special").as_deref(), Some("max-age=300"));
    // Never over plain HTTP (RFC 6797, 7.2).
    let plain = get(&shop, "/shop/cart", "shop.test");
    assert!(
        !plain
            .to_ascii_lowercase()
            .contains("strict-transport-security"),
        "{plain}"
    );
    // Preload without its conditions is refused, naming the field.
    let bad = shop.eb.api(
        "PUT",
        "/v1/routes",
        Some(r#"[{"action": "welcome", "hsts": {"max_age_s": 60, "preload": true}}]"#),
        &[],
    );
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(bad.body.contains("routes[0].hsts.preload"), "{}", bad.body);
}

/// The p50 and p99 of `n` requests for `/` on new connections, and how many
/// failed.
fn latencies(shop: &Shop, n: usize) -> (Duration, Duration, usize) {
    let mut times = Vec::new();
    let mut failed = 0;
    for _ in 0..n {
        let t = std::time::Instant::now();
        let reply = get(shop, "/", "shop.test");
        times.push(t.elapsed());
        if !reply.starts_with("HTTP/1.1 200") {
            failed += 1;
        }
    }
    times.sort();
    (times[n / 2], times[n * 99 / 100], failed)
}

#[test]
fn two_thousand_slowloris_connections_do_not_stop_normal_clients() {
    let shop = Shop::start(&[closed_port()], 1, |c| {
        c["client"] = json!({"header_timeout_ms": 3000});
        c["routes"] = json!([{"action": {"respond": {"status": 200, "body": "ok\n"}}}]);
    });
    let addr = shop.eb.addr("http");
    let (base50, base99, _) = latencies(&shop, 200);
    // 2 000 connections that send half a head and then a byte a second.
    let started = std::time::Instant::now();
    let mut slow: Vec<std::net::TcpStream> = (0..2000)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    let opened = started.elapsed();
    let (p50, p99, failed) = latencies(&shop, 200);
    for s in &mut slow {
        let _ = s.write_all(b"a");
    }
    println!(
        "2000 slowloris connections opened in {:.2} s; 200 normal requests meanwhile: p50 {:.2} ms, p99 {:.2} ms, {failed} failed (before: p50 {:.2} ms, p99 {:.2} ms)",
        opened.as_secs_f64(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        base50.as_secs_f64() * 1e3,
        base99.as_secs_f64() * 1e3,
    );
    assert_eq!(failed, 0);
    // The header timeout ends them, trickle or not (timed from the
    // connection's start).
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let mut closed = 0;
    for s in &mut slow {
        let mut buf = [0u8; 512];
        // A 408 or nothing, then the end (a read timeout is no end).
        loop {
            match s.read(&mut buf) {
                Ok(0) => break closed += 1,
                Ok(_) => {}
                Err(e) if timed_out(&e) => break,
                Err(_) => break closed += 1,
            }
        }
    }
    let took = started.elapsed();
    println!(
        "all 2000 closed by the server {:.1} s after they opened (header_timeout_ms 3000)",
        took.as_secs_f64()
    );
    assert_eq!(closed, 2000);
    assert!(
        took < Duration::from_secs(12),
        "not cut by the header timeout: {took:?}"
    );
}
