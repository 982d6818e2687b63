//! Certificates from a real ACME server: Let's Encrypt's test CA `pebble`
//! (Debian's package), started on loopback with its own root, its names
//! resolved to 127.0.0.1 by `pebble-challtestsrv`, validating HTTP-01 and
//! TLS-ALPN-01 against the edgebox under test. Each certificate is then
//! checked the way a browser would: curl verifying it against pebble's root.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// pebble and its DNS, for one test.
struct Pebble {
    ca: Child,
    dns: Child,
    dir: tempfile::TempDir,
    pub directory: String,
    listen: u16,
    mgmt: SocketAddr,
    dns_port: u16,
    /// pebble's issuing root, fetched from its management interface.
    pub root: PathBuf,
}

impl Pebble {
    /// pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// `tls_port` of 127.0.0.1, issuing certificates valid `validity_s`.
    fn start(pki: &Pki, http_port: u16, tls_port: u16, validity_s: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let leaf = pki.leaf("pebble", &["127.0.0.1"]);
        let (listen, mgmt, dns) = (free_tcp_port(), free_tcp_port(), free_udp_port());
        let config = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": leaf.cert,
            "privateKey": leaf.key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_s,
        }});
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();
        let dns_child = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{}", free_tcp_port())])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(std::fs::File::create(dir.path().join("dns.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian's pebble package; the test command installs it)");
        let ca = Self::spawn_ca(dir.path(), dns);
        let mut me = Self {
            ca,
            dns: dns_child,
            root: dir.path().join("pebble-root.pem"),
            dir,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            listen,
            mgmt: format!("127.0.0.1:{mgmt}").parse().unwrap(),
            dns_port: dns,
        };
        me.ready(pki);
        me
    }

    fn spawn_ca(dir: &std::path::Path, dns: u16) -> Child {
        let log = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .unwrap()
        };
        Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random waits before validating; every order gets its own
            // authorizations, so each one proves its challenge again.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("pebble (the test command installs it)")
    }

    /// Waits until pebble listens, and fetches its root.
    fn ready(&mut self, pki: &Pki) {
        let listen = self.listen;
        wait_for("pebble to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", listen)).ok()
        });
        let root = curl(pki, &[&format!("https://{}/roots/0", self.mgmt)]);
        assert!(root.status.success(), "pebble's root: {}", root.stderr);
        assert!(root.stdout.contains("BEGIN CERTIFICATE"));
        std::fs::write(&self.root, &root.stdout).unwrap();
        self.check_alive();
    }

    /// Starts the CA again after [`Pebble::kill`]: on the same addresses,
    /// with none of its state (accounts, root), as pebble always does.
    fn restart(&mut self, pki: &Pki) {
        self.ca = Self::spawn_ca(self.dir.path(), self.dns_port);
        self.ready(pki);
    }

    fn check_alive(&mut self) {
        assert!(
            self.ca.try_wait().unwrap().is_none(),
            "pebble exited: {}",
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// How many orders pebble was asked for.
    fn orders(&self) -> usize {
        self.log().matches("There are now").count()
    }

    /// Stops the CA (its DNS goes on).
    fn kill(&mut self) {
        let _ = self.ca.kill();
        let _ = self.ca.wait();
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in [&mut self.ca, &mut self.dns] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An edgebox on fixed ports (pebble must know them first) whose only
/// certificates come from ACME.
fn config(pebble: &Pebble, pki: &Pki, https: u16, http: u16, acme: Value) -> Value {
    let mut acme_section = json!({
        "directory_url": pebble.directory,
        "ca_file": pki.ca_pem,
        "email": "ops@shop.test",
    });
    acme_section
        .as_object_mut()
        .unwrap()
        .extend(acme.as_object().unwrap().clone());
    json!({
        "listeners": [
            {"name": "https", "address": format!("127.0.0.1:{https}"), "protocol": "https"},
            {"name": "http", "address": format!("127.0.0.1:{http}"), "protocol": "http", "redirect_to_https_port": https},
        ],
        "routes": [{"action": {"respond": {"status": 200, "body": "served by edgebox\n"}}}],
        "admin": {"address": "127.0.0.1:0"},
        "acme": acme_section,
    })
}

fn acme_state(eb: &Edgebox) -> Value {
    eb.api("GET", "/v1/acme", None, &[]).expect(200).json()
}

/// Waits (up to `limit`) until `name`'s row satisfies `f`.
fn wait_row(eb: &Edgebox, name: &str, limit: Duration, f: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = acme_state(eb);
        if let Some(row) = v["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name && f(r))
        {
            return row.clone();
        }
        assert!(
            start.elapsed() < limit,
            "{name} did not get there in {limit:?}: {v:#}\n{}",
            eb.logs().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// curl to `name` on edgebox's HTTPS listener, verifying against pebble's
/// root only.
fn verified_get(pebble: &Pebble, name: &str, addr: SocketAddr) -> Curl {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .arg("--cacert")
        .arg(&pebble.root)
        .args(["--resolve", &resolve(name, addr)])
        .arg(format!("https://{name}:{}/", addr.port()))
        .output()
        .unwrap();
    Curl {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The serial number of the certificate served for `name`.
fn served_serial(name: &str, addr: SocketAddr) -> Vec<u8> {
    let mut conn =
        rustls::ClientConnection::new(Arc::new(any_cert_client()), server_name(name)).unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    conn.complete_io(&mut tcp).unwrap();
    let leaf = &conn.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    cert.raw_serial().to_vec()
}

fn challenge_requests(eb: &Edgebox) -> usize {
    eb.access_log()
        .iter()
        .filter(|l| {
            l["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/.well-known/acme-challenge/"))
                && l["status"] == 200
        })
        .count()
}

const ISSUE: Duration = Duration::from_secs(30);

#[test]
fn names_listed_and_hosts_of_the_map_get_certificates_by_http01_and_tls_alpn01_and_no_other_name_does(
) {
    let pki = Pki::new();
    let (https, http) = (free_tcp_port(), free_tcp_port());
    let pebble = Pebble::start(&pki, http, https, 7_776_000);
    let backend = Backend::start("pod-a");
    let mut cfg = config(
        &pebble,
        &pki,
        https,
        http,
        json!({"names": ["listed.test"], "challenges": ["http-01"]}),
    );
    cfg["pools"] = json!([{"name": "shop", "backends": [{"address": backend.addr.to_string()}]}]);
    let eb = Edgebox::start(&cfg, 2);
    let tls_addr = eb.addr("https");

    // HTTP-01: pebble fetched the key authorization over plain HTTP, ahead
    // of the listener's redirect to HTTPS.
    let row = wait_row(&eb, "listed.test", ISSUE, |r| r["state"] == "valid");
    assert!(row["issuer"].as_str().unwrap().contains("Pebble"), "{row}");
    let lifetime = row["not_after"].as_i64().unwrap() - row["not_before"].as_i64().unwrap();
    assert!((7_775_990..=7_776_000).contains(&lifetime), "{row}");
    let got = verified_get(&pebble, "listed.test", tls_addr);
    assert!(got.status.success(), "curl: {}", got.stderr);
    assert_eq!(got.stdout, "served by edgebox\n");
    assert!(challenge_requests(&eb) >= 1, "pebble asked over HTTP");
    let plain = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!(
            "http://127.0.0.1:{http}/.well-known/acme-challenge/made-up"
        ))
        .output()
        .unwrap();
    assert_eq!(
        plain.stdout, b"308",
        "an unknown token is no answer, just the redirect"
    );

    // TLS-ALPN-01 only, and a shop added to the host map: it gets its
    // certificate with no other call.
    let mut current = eb.api("GET", "/v1/config", None, &[]).expect(200).json();
    current["acme"]["challenges"] = json!(["tls-alpn-01"]);
    eb.api("PUT", "/v1/config", Some(&current.to_string()), &[])
        .expect(200);
    let http_challenges = challenge_requests(&eb);
    eb.api(
        "PUT",
        "/v1/hostmap/shop.test",
        Some(r#"{"pool": "shop"}"#),
        &[],
    )
    .expect(201);
    let added = Instant::now();
    wait_row(&eb, "shop.test", ISSUE, |r| r["state"] == "valid");
    println!(
        "shop.test served with its own certificate {:?} after its host-map entry",
        added.elapsed()
    );
    let got = verified_get(&pebble, "shop.test", tls_addr);
    assert!(got.status.success(), "curl: {}", got.stderr);
    assert!(
        got.stdout.contains("pod-a"),
        "routed to the shop's pod: {}",
        got.stdout
    );
    assert_eq!(
        challenge_requests(&eb),
        http_challenges,
        "validated by TLS-ALPN-01, not HTTP"
    );

    // A name that is neither listed nor mapped: no certificate is served
    // (there is no default) and no order is placed for it.
    let orders = pebble.orders();
    let stranger = verified_get(&pebble, "stranger.test", tls_addr);
    assert!(!stranger.status.success());
    std::thread::sleep(Duration::from_secs(3));
    let v = acme_state(&eb);
    assert!(
        !v["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "stranger.test"),
        "{v:#}"
    );
    assert_eq!(
        pebble.orders(),
        orders,
        "no order for a name an attacker sent"
    );
    assert_eq!(v["orders"]["issued"], 2);
    assert_eq!(v["orders"]["failed"], 0);

    // A shop taken out of the map is no longer renewed; its certificate
    // stays served until it expires.
    eb.api("DELETE", "/v1/hostmap/shop.test", None, &[])
        .expect(204);
    wait_row(&eb, "shop.test", ISSUE, |r| r["state"] == "served");

    let listing = ok(eb.ctl(&["acme"]));
    assert!(
        listing.contains("listed.test") && listing.contains("valid"),
        "{listing}"
    );
    let metrics = eb.api("GET", "/metrics", None, &[]).expect(200).body;
    assert!(
        metrics.contains("edgebox_acme_names{state=\"valid\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("edgebox_acme_certificates 2"));
    assert!(metrics.contains("edgebox_acme_orders_total{result=\"issued\"} 2"));
}

#[test]
fn a_short_lived_certificate_is_renewed_while_a_client_keeps_its_connection() {
    let pki = Pki::new();
    let (https, http) = (free_tcp_port(), free_tcp_port());
    // 15 s certificates: renewed 10 s after they start.
    let pebble = Pebble::start(&pki, http, https, 15);
    let cfg = config(&pebble, &pki, https, http, json!({"names": ["renew.test"]}));
    let eb = Edgebox::start(&cfg, 2);
    let addr = eb.addr("https");
    let first = wait_row(&eb, "renew.test", ISSUE, |r| r["state"] == "valid");
    let serial = served_serial("renew.test", addr);

    // A client connected now, verifying against pebble's root, keeps its
    // connection open across the renewal.
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&pebble.root).unwrap();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(client), server_name("renew.test")).unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let ask = |tls: &mut rustls::Stream<'_, rustls::ClientConnection, std::net::TcpStream>| {
        tls.write_all(b"GET / HTTP/1.1\r\nHost: renew.test\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = tls.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(ask(&mut tls).starts_with("HTTP/1.1 200"));

    let renewed = wait_row(&eb, "renew.test", Duration::from_secs(40), |r| {
        r["not_before"].as_i64() > first["not_before"].as_i64()
    });
    let new_serial = served_serial("renew.test", addr);
    assert_ne!(
        serial, new_serial,
        "new handshakes get the renewed certificate"
    );
    println!(
        "renewed: not_before {} -> {} (lifetime 15 s, due at 10 s)",
        first["not_before"], renewed["not_before"]
    );
    let due = first["not_before"].as_i64().unwrap() + 9;
    assert!(
        renewed["not_before"].as_i64().unwrap() >= due,
        "not renewed before two thirds of its lifetime: {first} -> {renewed}"
    );
    // The connection opened under the old certificate still answers.
    assert!(
        ask(&mut tls).starts_with("HTTP/1.1 200"),
        "the open connection survived"
    );
}

#[test]
fn with_the_ca_down_the_old_certificate_keeps_serving_and_the_failure_shows() {
    let pki = Pki::new();
    let (https, http) = (free_tcp_port(), free_tcp_port());
    let mut pebble = Pebble::start(&pki, http, https, 7_776_000);
    let cfg = config(
        &pebble,
        &pki,
        https,
        http,
        json!({"names": ["steady.test"]}),
    );
    let eb = Edgebox::start(&cfg, 1);
    let addr = eb.addr("https");
    wait_row(&eb, "steady.test", ISSUE, |r| r["state"] == "valid");
    let serial = served_serial("steady.test", addr);

    pebble.kill();
    let out = ok(eb.ctl(&["acme", "renew", "steady.test"]));
    assert!(out.contains("renewal due now"), "{out}");
    let row = wait_row(&eb, "steady.test", ISSUE, |r| r["state"] == "failed");
    let error = row["last_error"].as_str().unwrap();
    assert!(error.starts_with("connection:"), "{row}");
    assert_eq!(row["attempts"], 1);
    assert!(row["next_attempt"].as_u64().unwrap() > row["not_before"].as_u64().unwrap());

    // Still served, still valid for a client.
    assert_eq!(served_serial("steady.test", addr), serial);
    let got = verified_get(&pebble, "steady.test", addr);
    assert!(got.status.success(), "curl: {}", got.stderr);

    let listing = ok(eb.ctl(&["acme"]));
    assert!(
        listing.contains("failed") && listing.contains("connection"),
        "{listing}"
    );
    let metrics = eb.api("GET", "/metrics", None, &[]).expect(200).body;
    assert!(
        metrics.contains("edgebox_acme_names{state=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("edgebox_acme_orders_total{result=\"failed\"} 1"));
    assert!(metrics.contains("edgebox_acme_certificates_expired 0"));

    // A name nobody manages is refused by its name.
    let refused = eb.api("POST", "/v1/acme/other.test/renew", None, &[]);
    assert_eq!(refused.status, 404, "{}", refused.body);

    // The CA comes back having forgotten everything (pebble keeps no
    // state): the account is registered again and the renewal goes through.
    pebble.restart(&pki);
    ok(eb.ctl(&["acme", "renew", "steady.test"]));
    let renewed = wait_row(&eb, "steady.test", ISSUE, |r| r["state"] == "valid");
    assert_eq!(renewed["attempts"], 0);
    let serial = served_serial("steady.test", addr);
    let got = verified_get(&pebble, "steady.test", addr);
    assert!(
        got.status.success(),
        "curl against the new root: {}",
        got.stderr
    );
    pebble.kill();

    // A restart (the CA down again) serves the certificate it kept.
    let eb = Edgebox::restart(eb.stop(), 1);
    assert_eq!(served_serial("steady.test", eb.addr("https")), serial);
    let row = wait_row(&eb, "steady.test", ISSUE, |r| r["not_after"].is_i64());
    assert!(row["issuer"].as_str().unwrap().contains("Pebble"), "{row}");
}

#[test]
fn a_certificate_obtained_by_one_appliance_is_served_by_its_peer() {
    let pki = Pki::new();
    let (https, http) = (free_tcp_port(), free_tcp_port());
    let pebble = Pebble::start(&pki, http, https, 7_776_000);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let prints = [identity(dirs[0].path()), identity(dirs[1].path())];
    let udp = [free_udp_port(), free_udp_port()];
    let replication = |i: usize| {
        let j = 1 - i;
        json!({
            "listen": format!("127.0.0.1:{}", udp[i]),
            "peers": [{"address": format!("127.0.0.1:{}", udp[j]), "fingerprint": prints[j], "name": format!("node{j}")}],
            "sync_interval_ms": 1000,
            "timeout_ms": 3000,
        })
    };
    // node0 orders (no failover section: it is on its own as far as VRRP
    // goes); node1 has no acme section at all and serves what replicates.
    let mut c0 = config(&pebble, &pki, https, http, json!({"names": ["pair.test"]}));
    c0["replication"] = replication(0);
    let mut c1 = config(&pebble, &pki, free_tcp_port(), free_tcp_port(), json!({}));
    c1.as_object_mut().unwrap().remove("acme");
    c1["replication"] = replication(1);
    let fallback = pki.leaf("fallback", &["fallback.test"]);
    c1["certificates"] = json!([{"cert": fallback.cert, "key": fallback.key}]);
    let [d0, d1] = dirs;
    let n0 = Edgebox::start_in(d0, &c0, 1);
    let n1 = Edgebox::start_in(d1, &c1, 1);
    wait_row(&n0, "pair.test", ISSUE, |r| r["state"] == "valid");
    let row = wait_row(&n1, "pair.test", ISSUE, |r| r["state"] == "served");
    assert!(row["issuer"].as_str().unwrap().contains("Pebble"));
    let got = verified_get(&pebble, "pair.test", n1.addr("https"));
    assert!(got.status.success(), "curl on the peer: {}", got.stderr);
    assert_eq!(
        served_serial("pair.test", n0.addr("https")),
        served_serial("pair.test", n1.addr("https"))
    );
    let v = acme_state(&n1);
    assert_eq!(v["enabled"], false);
    assert_eq!(v["orders"]["issued"], 0, "the peer ordered nothing");
    // The account replicated too: the peer would order with it.
    let metrics = n1.api("GET", "/metrics", None, &[]).expect(200).body;
    for kind in ["certs", "acme-account"] {
        assert!(
            metrics.contains(&format!(
                "edgebox_replication_applied_total{{kind=\"{kind}\"}} "
            )),
            "{kind}: {metrics}"
        );
    }
}

/// A directory that is pebble's plus `renewalInfo` (RFC 9773), which
/// pebble 2.4 does not offer: every other URL in it is pebble's own, so the
/// orders go to pebble; the renewal windows come from here. The first
/// certificate asked about is told its window has passed (a CA revoking
/// it, say); every other gets one years away.
struct RenewalInfo {
    pub directory: String,
    /// The certificate IDs asked about, in order.
    pub asked: Arc<std::sync::Mutex<Vec<String>>>,
}

impl RenewalInfo {
    fn start(pki: &Pki, pebble: &Pebble) -> Self {
        let dir = curl(pki, &[&pebble.directory]);
        assert!(dir.status.success(), "pebble's directory: {}", dir.stderr);
        let leaf = pki.leaf("renewal-info", &["127.0.0.1"]);
        let chain = rustls_pki_types::CertificateDer::pem_file_iter(&leaf.cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut directory: Value = serde_json::from_str(&dir.stdout).unwrap();
        directory["renewalInfo"] = json!(format!("https://127.0.0.1:{port}/ari"));
        let directory = directory.to_string();
        let asked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = Arc::clone(&asked);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let (acceptor, directory, seen) =
                        (acceptor.clone(), directory.clone(), Arc::clone(&seen));
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let svc = hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| {
                                let path = req.uri().path().to_owned();
                                let body = match path.strip_prefix("/ari/") {
                                    None => directory.clone(),
                                    Some(id) => {
                                        let mut seen = seen.lock().unwrap();
                                        let first = seen.first().is_none_or(|f| f == id);
                                        seen.push(id.to_owned());
                                        let (start, end) = if first {
                                            ("2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z")
                                        } else {
                                            ("2099-01-01T00:00:00Z", "2099-01-02T00:00:00Z")
                                        };
                                        json!({"suggestedWindow": {"start": start, "end": end}})
                                            .to_string()
                                    }
                                };
                                async move {
                                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                        http_body_util::Full::new(bytes::Bytes::from(body)),
                                    ))
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                            .await;
                    });
                }
            });
        });
        Self {
            directory: format!("https://127.0.0.1:{port}/dir"),
            asked,
        }
    }
}

#[test]
fn a_ca_renewal_window_that_has_passed_renews_at_once_and_a_later_one_waits() {
    let pki = Pki::new();
    let (https, http) = (free_tcp_port(), free_tcp_port());
    let pebble = Pebble::start(&pki, http, https, 7_776_000);
    let ari = RenewalInfo::start(&pki, &pebble);
    let mut cfg = config(
        &pebble,
        &pki,
        https,
        http,
        json!({"names": ["window.test"]}),
    );
    cfg["acme"]["directory_url"] = json!(ari.directory);
    let eb = Edgebox::start(&cfg, 1);
    let first = wait_row(&eb, "window.test", ISSUE, |r| r["state"] == "valid");
    // The first certificate's window has passed: renewed at once, well
    // before two thirds of its 90 days.
    let second = wait_row(&eb, "window.test", ISSUE, |r| {
        r["state"] == "valid" && r["not_before"].as_i64() > first["not_before"].as_i64()
    });
    let v = wait_for("the renewed certificate's window to be asked for", || {
        let v = acme_state(&eb);
        (ari.asked.lock().unwrap().len() >= 2).then_some(v)
    });
    assert_eq!(v["orders"]["issued"], 2, "{v:#}");
    let asked = ari.asked.lock().unwrap().clone();
    assert_ne!(
        asked[0], asked[1],
        "asked about each certificate by its own ID"
    );
    // The second one's window is in 2099; capped at nine tenths of its
    // lifetime, which is still far off: no third order.
    std::thread::sleep(Duration::from_secs(3));
    let v = acme_state(&eb);
    assert_eq!(v["orders"]["issued"], 2, "{v:#}");
    let row = &v["certificates"][0];
    let lifetime = row["not_after"].as_u64().unwrap() - row["not_before"].as_u64().unwrap();
    let due = row["next_attempt"].as_u64().unwrap() - row["not_before"].as_u64().unwrap();
    assert_eq!(
        due,
        lifetime * 1000 / 10 * 9 / 1000,
        "{row} (second: {second})"
    );
    // The ID is RFC 9773's for the certificate served.
    let served = served_serial("window.test", eb.addr("https"));
    let serial = edgebox::acme::jws::b64(&served);
    assert!(asked[1].ends_with(&format!(".{serial}")), "{asked:?}");
}
