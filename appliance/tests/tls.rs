//! TLS as clients see it: certificates by SNI, resumption across cores.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::sync::Arc;

use common::*;
use rustls::pki_types::CertificateDer;
use rustls::HandshakeKind;
use serde_json::json;

/// Handshakes with SNI `name` (or none) and returns the leaf the server sent.
fn presented_cert(addr: std::net::SocketAddr, name: Option<&str>) -> CertificateDer<'static> {
    let mut config = any_cert_client();
    config.enable_sni = name.is_some();
    let server = server_name(name.unwrap_or("no-sni.invalid"));
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    conn.peer_certificates().unwrap()[0].clone().into_owned()
}

#[test]
fn certificate_is_chosen_by_sni() {
    let pki = Pki::new();
    let default = pki.leaf("default", &["default.test"]);
    let shop = pki.leaf("shop", &["shop.test", "www.shop.test"]);
    let wild = pki.leaf("wild", &["*.wild.test"]);
    let cfg = config(
        &[&default, &shop, &wild],
        json!([]),
        json!([{"action": "welcome"}]),
    );
    let eb = Edgebox::start(&cfg, 2);
    let addr = eb.addr("https");
    assert_eq!(presented_cert(addr, Some("shop.test")), shop.der);
    assert_eq!(presented_cert(addr, Some("www.shop.test")), shop.der);
    assert_eq!(presented_cert(addr, Some("a.wild.test")), wild.der);
    assert_eq!(
        presented_cert(addr, Some("b.a.wild.test")),
        default.der,
        "a wildcard covers one label"
    );
    assert_eq!(presented_cert(addr, Some("other.test")), default.der);
    assert_eq!(presented_cert(addr, None), default.der);

    // And a fully verifying client (curl, OpenSSL) accepts each chain for its name.
    for host in ["shop.test", "a.wild.test", "default.test"] {
        let out = status_as(&pki, host, addr);
        assert_eq!(out.stdout, "200", "{host}: {}", out.stderr);
    }
}

/// Makes 16 connections with one client config (which keeps and offers the
/// tickets it gets), each with one request; returns each handshake's kind.
fn handshake_kinds(
    pki: &Pki,
    addr: std::net::SocketAddr,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Vec<HandshakeKind> {
    let config = resuming_client(pki, versions);
    (0..16)
        .map(|_| tls_request(&config, addr, "shop.test", b"HTTP/1.1 200"))
        .collect()
}

const VERSIONS: [&[&rustls::SupportedProtocolVersion]; 2] =
    [&[&rustls::version::TLS13], &[&rustls::version::TLS12]];

/// Sessions resume on whichever core the next connection lands on: the
/// ticket keys are shared. The access log says which core served each
/// connection, so the test can tell that both cores resumed tickets.
#[test]
fn sessions_resume_across_cores() {
    let pki = Pki::new();
    let leaf = pki.leaf("shop", &["shop.test"]);
    let cfg = config(
        &[&leaf],
        json!([]),
        json!([{"action": {"respond": {"body": "hi\n"}}}]),
    );
    let eb = Edgebox::start(&cfg, 2);
    let addr = eb.addr("https");
    for versions in VERSIONS {
        let before = eb.access_log().len();
        let kinds = handshake_kinds(&pki, addr, versions);
        assert_eq!(kinds[0], HandshakeKind::Full);
        assert!(
            kinds[1..].iter().all(|k| *k == HandshakeKind::Resumed),
            "{versions:?}: {kinds:?}"
        );
        let log = wait_for("16 access-log lines", || {
            let log = eb.access_log();
            (log.len() >= before + 16).then_some(log)
        });
        let cores: std::collections::HashSet<i64> = log[before + 1..]
            .iter()
            .map(|l| l["core"].as_i64().unwrap())
            .collect();
        assert_eq!(
            cores.len(),
            2,
            "resumed connections all landed on one core: {cores:?}"
        );
    }
}

/// `tls.session_tickets: false`: the same client, which would resume, gets a
/// full handshake every time.
#[test]
fn without_session_tickets_every_handshake_is_full() {
    let pki = Pki::new();
    let leaf = pki.leaf("shop", &["shop.test"]);
    let mut cfg = config(
        &[&leaf],
        json!([]),
        json!([{"action": {"respond": {"body": "hi\n"}}}]),
    );
    cfg["tls"] = json!({"session_tickets": false});
    let eb = Edgebox::start(&cfg, 1);
    for versions in VERSIONS {
        let kinds = handshake_kinds(&pki, eb.addr("https"), versions);
        assert!(
            kinds.iter().all(|k| *k == HandshakeKind::Full),
            "{versions:?}: {kinds:?}"
        );
    }
}

#[test]
fn a_stalled_handshake_is_cut_off() {
    let pki = Pki::new();
    let leaf = pki.leaf("shop", &["shop.test"]);
    let mut cfg = config(&[&leaf], json!([]), json!([{"action": "welcome"}]));
    cfg["tls"] = json!({"handshake_timeout_ms": 300});
    let eb = Edgebox::start(&cfg, 1);
    let mut tcp = TcpStream::connect(eb.addr("https")).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let start = std::time::Instant::now();
    let mut buf = [0u8; 16];
    // Send nothing: the server must close the connection on its own.
    let n = tcp.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}
