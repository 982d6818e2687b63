//! Fixtures for tests that run the real `edgebox` binary on loopback.
//!
//! - [`Pki`]: a test CA and leaf certificates, written as PEM files.
//! - [`Edgebox`]: the binary started with a config whose listeners use port 0;
//!   the actual addresses come from its start-up banner. Its stderr (JSON logs)
//!   is kept and printed when a test fails. Dropping it kills it by PID.
//! - [`Backend`]: a small HTTP/1.1 server ("app container") that names itself
//!   in every response and echoes what it received, with a WebSocket echo.
//! - [`tls_client`]: a rustls client config that trusts the test CA.
#![allow(dead_code, clippy::unwrap_used)]

pub mod lan;
pub mod load;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `f` until it returns `Some`, or panics after `DEADLINE`.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- PKI

pub struct Pki {
    pub dir: tempfile::TempDir,
    ca_key: rcgen::KeyPair,
    ca_params: rcgen::CertificateParams,
    pub ca_der: CertificateDer<'static>,
    pub ca_pem: PathBuf,
}

/// A leaf certificate written to `<name>.pem` and `<name>.key`.
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "edgebox test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        Self {
            ca_der: ca.der().clone(),
            dir,
            ca_key,
            ca_params,
            ca_pem,
        }
    }

    pub fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        self.leaf_with(file, names, |_| {})
    }

    /// A leaf valid from yesterday for 90 days, as an ACME CA issues them.
    pub fn leaf_90_days(&self, file: &str, names: &[&str]) -> Leaf {
        self.leaf_with(file, names, |p| {
            let now = rcgen::date_time_ymd(1970, 1, 1)
                + std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
            let day = Duration::from_secs(86_400);
            p.not_before = now - day;
            p.not_after = now + 90 * day;
        })
    }

    fn leaf_with(
        &self,
        file: &str,
        names: &[&str],
        tweak: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        tweak(&mut params);
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let leaf = Leaf {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
            der: cert.der().clone(),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }
}

impl Leaf {
    /// The body of `PUT /v1/certificates/{name}` for this certificate.
    pub fn upload(&self) -> Value {
        json!({
            "cert": std::fs::read_to_string(&self.cert).unwrap(),
            "key": std::fs::read_to_string(&self.key).unwrap(),
        })
    }
}

/// Fetches `https://{host}/` from edgebox's HTTPS listener at `addr` with curl
/// verifying against the test CA; `stdout` is the status code.
pub fn status_as(pki: &Pki, host: &str, addr: SocketAddr) -> Curl {
    let r = resolve(host, addr);
    let url = format!("https://{host}:{}/", addr.port());
    curl(
        pki,
        &[
            "--resolve",
            &r,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ],
    )
}

/// A rustls client that trusts the test CA and offers `alpn`.
pub fn tls_client(pki: &Pki, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A rustls client that accepts any certificate (still checking handshake
/// signatures): `edgebox ctl --insecure`'s own, for asking which certificate
/// a server chose, or reaching the admin API without pinning.
pub fn any_cert_client() -> rustls::ClientConfig {
    edgebox::ctl::client::tls_config(edgebox::ctl::client::Trust::Insecure).unwrap()
}

pub fn server_name(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).unwrap()
}

/// A client trusting the test CA with only `versions`, which keeps the
/// session tickets it gets and offers them again.
pub fn resuming_client(
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One connection to `addr` as `host` with `config`, with one request whose
/// answer must start with `expect`; how its handshake went (full or
/// resumed).
pub fn tls_request(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    host: &str,
    expect: &[u8],
) -> rustls::HandshakeKind {
    use std::io::{Read, Write};
    let mut conn = rustls::ClientConnection::new(Arc::clone(config), server_name(host)).unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply);
    assert!(
        reply.starts_with(expect),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    conn.handshake_kind().unwrap()
}

// ---------------------------------------------------------------- edgebox

pub struct Edgebox {
    child: Child,
    /// Holds the config, the data directory (`data/`) and scratch files.
    dir: Option<tempfile::TempDir>,
    /// Listener name → actual address.
    pub addrs: HashMap<String, SocketAddr>,
    /// The admin API's address.
    pub admin: Option<SocketAddr>,
    /// The admin token (preset through `EDGEBOX_ADMIN_TOKEN`).
    pub token: String,
    /// What edgebox printed on stdout at start.
    pub banner: Vec<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// The admin token every test edgebox starts with.
pub const TOKEN: &str = "test-admin-token-0123456789abcdef";

impl Edgebox {
    /// Starts `edgebox serve` with `config` on `cores` cores and waits until it
    /// prints its listening addresses.
    pub fn start(config: &Value, cores: usize) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), config, cores)
    }

    /// [`Edgebox::start`] in a directory prepared beforehand (its `data/`
    /// holding an identity made with [`identity`], say).
    pub fn start_in(dir: tempfile::TempDir, config: &Value, cores: usize) -> Self {
        let path = dir.path().join("edgebox.json");
        std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        let args = [
            "serve".to_owned(),
            "--config".to_owned(),
            path.display().to_string(),
            "--cores".to_owned(),
            cores.to_string(),
        ];
        Self::spawn(dir, &args)
    }

    /// Starts `edgebox` with `args` (plus `--data <dir>/data` unless given).
    pub fn spawn(dir: tempfile::TempDir, args: &[String]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgebox"));
        cmd.args(args);
        if !args.iter().any(|a| a == "--data") {
            cmd.arg("--data").arg(dir.path().join("data"));
        }
        let mut child = cmd
            .arg("--log-format")
            .arg("json")
            .env("EDGEBOX_LOG", "info,edgebox=debug")
            .env("EDGEBOX_ADMIN_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr);
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut addrs = HashMap::new();
        let start = Instant::now();
        let mut me = Self {
            child,
            dir: Some(dir),
            addrs: HashMap::new(),
            admin: None,
            token: TOKEN.to_owned(),
            banner: Vec::new(),
            stderr,
        };
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            let line = rx.recv_timeout(left);
            if let Ok(l) = &line {
                me.banner.push(l.clone());
            }
            match line {
                Ok(line) if line.starts_with("admin: https://") => {
                    let addr = line["admin: https://".len()..].split('/').next().unwrap();
                    me.admin = Some(addr.parse().unwrap());
                }
                Ok(line) if line.starts_with("listening: ") => {
                    // listening: https://127.0.0.1:1234/ (name, …)
                    let rest = &line["listening: ".len()..];
                    let (url, tail) = rest.split_once(' ').unwrap();
                    let addr = url.split("://").nth(1).unwrap().trim_end_matches('/');
                    let name = tail
                        .trim_start_matches('(')
                        .split([',', ')'])
                        .next()
                        .unwrap();
                    addrs.insert(name.to_owned(), addr.parse().unwrap());
                }
                Ok(line) if line.starts_with("data: ") => break,
                Ok(_) => {}
                Err(_) => panic!("edgebox did not start:\n{}", me.logs().join("\n")),
            }
        }
        me.addrs = addrs;
        me
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.addrs[listener]
    }

    /// The test's own directory (config, `data/`, scratch files).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// Stops edgebox gracefully (SIGTERM) and hands back its directory, to
    /// start it again on the same data.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.signal(rustix::process::Signal::TERM);
        assert!(self.wait_exit().success(), "edgebox did not exit cleanly");
        self.dir.take().unwrap()
    }

    /// Kills edgebox at once (SIGKILL: a crash or power cut) and hands back
    /// its directory.
    pub fn kill(mut self) -> tempfile::TempDir {
        self.signal(rustix::process::Signal::KILL);
        self.wait_exit();
        self.dir.take().unwrap()
    }

    /// `edgebox publish DIR --site SITE` against this edgebox.
    pub fn publish(&self, dir: &Path, site: &str) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_edgebox"))
            .args(["publish", "--site", site])
            .arg(dir)
            .env("EDGEBOX_ADMIN", format!("https://{}", self.admin.unwrap()))
            .env("EDGEBOX_TOKEN", &self.token)
            .env("EDGEBOX_DATA", self.dir().join("data"))
            .output()
            .unwrap()
    }

    /// `edgebox ctl ARGS` against this edgebox.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        self.ctl_command(args).output().unwrap()
    }

    /// `edgebox ctl ARGS` for this edgebox, to start and wait for later.
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_edgebox"));
        c.arg("ctl")
            .args(args)
            .env("EDGEBOX_ADMIN", format!("https://{}", self.admin.unwrap()))
            .env("EDGEBOX_TOKEN", &self.token)
            .env("EDGEBOX_DATA", self.dir().join("data"));
        c
    }

    /// Starts `edgebox serve` again on a directory from [`Edgebox::stop`],
    /// without `--config`: it serves what it persisted.
    pub fn restart(dir: tempfile::TempDir, cores: usize) -> Self {
        Self::spawn(
            dir,
            &["serve".to_owned(), "--cores".to_owned(), cores.to_string()],
        )
    }

    /// Calls the admin API with curl (admin certificate pinned as the CA,
    /// bearer token): `method path [json body] [extra curl args]`.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>, extra: &[&str]) -> ApiReply {
        let admin = self.admin.expect("edgebox printed its admin address");
        let headers = self.dir().join(format!("api-headers-{}", unique()));
        let body_file = self.dir().join(format!("api-body-{}", unique()));
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "60", "-X", method])
            .arg("--cacert")
            .arg(self.dir().join("data/tls/admin.crt"))
            .arg("-D")
            .arg(&headers)
            .arg("-o")
            .arg(&body_file)
            .args(["-w", "%{http_code}"]);
        if !extra.iter().any(|a| a.starts_with("Authorization")) {
            cmd.args(["-H", &format!("Authorization: Bearer {}", self.token)]);
        }
        let request_file = self.dir().join(format!("api-request-{}", unique()));
        if let Some(b) = body {
            std::fs::write(&request_file, b).unwrap();
            cmd.args(["-H", "content-type: application/json", "--data-binary"])
                .arg(format!("@{}", request_file.display()));
        }
        let out = cmd
            .args(extra)
            .arg(format!("https://{admin}{path}"))
            .output()
            .unwrap();
        let status = String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0);
        let head = std::fs::read_to_string(&headers).unwrap_or_default();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let reply = ApiReply {
            status,
            etag: header("etag"),
            www_authenticate: header("www-authenticate"),
            body: std::fs::read_to_string(&body_file).unwrap_or_default(),
        };
        for f in [headers, body_file, request_file] {
            let _ = std::fs::remove_file(f);
        }
        reply
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn logs(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// The JSON log lines with target `access`.
    pub fn access_log(&self) -> Vec<Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "access")
            .collect()
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid()).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Waits for the process to exit and returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        wait_for("edgebox to exit", || self.child.try_wait().unwrap())
    }
}

impl Drop for Edgebox {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- edgebox stderr ----\n{}", self.logs().join("\n"));
        }
    }
}

pub struct ApiReply {
    pub status: u16,
    pub etag: Option<String>,
    pub www_authenticate: Option<String>,
    pub body: String,
}

impl ApiReply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(self.status, status, "body: {}", self.body);
        self
    }
}

fn unique() -> usize {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// A config with an https listener (all leaf certs given, the first default)
/// and the given pools and routes.
pub fn config(certs: &[&Leaf], pools: Value, routes: Value) -> Value {
    let certificates: Vec<Value> = certs
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"cert": c.cert, "key": c.key, "default": i == 0}))
        .collect();
    json!({
        "listeners": [
            {"name": "https", "address": "127.0.0.1:0", "protocol": "https"},
            {"name": "http", "address": "127.0.0.1:0", "protocol": "http"}
        ],
        "certificates": certificates,
        "pools": pools,
        "routes": routes,
        "admin": {"address": "127.0.0.1:0"},
    })
}

/// A small tmpfs mounted for the test's life (unmounted even when it fails).
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    pub fn mount(at: &Path, size: &str) -> Option<Self> {
        if !rustix::process::geteuid().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run this test as root (it mounts a tmpfs)"
            );
            eprintln!("SKIPPED: mounting a small tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs failed");
        Some(Self(at.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `edgebox identity --data <dir>/data`: the fingerprint its peers pin.
pub fn identity(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_edgebox"))
        .arg("identity")
        .arg("--data")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------- backends

/// A test backend on its own thread and tokio runtime.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    /// Requests received so far.
    pub hits: Arc<AtomicUsize>,
    /// While false, `/healthz` answers 503.
    pub healthy: Arc<std::sync::atomic::AtomicBool>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    /// Routes: `/slow?ms=N` answers after N ms; `/echo` streams the request
    /// body back; `/sink` reads the body, then answers its length; `/stream?chunks=N&ms=M` sends N chunks M ms apart; `/ws`
    /// is a WebSocket echo; `/healthz` is 200 or, while not `healthy`, 503;
    /// anything else answers a JSON description of the request, naming this
    /// backend.
    pub fn start(name: &str) -> Self {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap())
    }

    /// As [`Backend::start`], on `addr` (a stopped backend's, to bring it
    /// back).
    pub fn start_on(name: &str, addr: SocketAddr) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let hits = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let name_owned = name.to_owned();
        let (hits2, healthy2) = (Arc::clone(&hits), Arc::clone(&healthy));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind(addr).await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let serve = async {
                    loop {
                        let (stream, peer) = listener.accept().await.unwrap();
                        let name = name_owned.clone();
                        let hits = Arc::clone(&hits2);
                        let healthy = Arc::clone(&healthy2);
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                hits.fetch_add(1, Ordering::SeqCst);
                                let up = healthy.load(Ordering::SeqCst);
                                backend_reply(name.clone(), peer, up, req)
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stop_rx => {}
                }
            });
            // The runtime goes here, with every connection it served: as a
            // killed process's would.
        });
        Self {
            addr: addr_rx.recv().unwrap(),
            name: name.to_owned(),
            hits,
            healthy,
            shutdown: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Stops it at once: its listener and every connection close.
    pub fn kill(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop_now();
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn backend_reply(
    name: String,
    peer: SocketAddr,
    healthy: bool,
    mut req: Request<Incoming>,
) -> Result<Response<BoxBody>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        let status = if healthy { 200 } else { 503 };
        return Ok(Response::builder()
            .status(status)
            .header("x-backend", &name)
            .body(full(if healthy { "ok\n" } else { "sick\n" }))
            .unwrap());
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(query(&req, "ms").unwrap_or(1000))).await;
    }
    if path == "/sink" {
        // Reads the whole body first, then says how long it was.
        let len = match req.into_body().collect().await {
            Ok(b) => b.to_bytes().len(),
            Err(_) => return Ok(Response::builder().status(499).body(full("")).unwrap()),
        };
        return Ok(Response::new(full(format!("{len}\n"))));
    }
    if path == "/echo" {
        let body = req.into_body().map_err(std::io::Error::other).boxed();
        return Ok(Response::new(body));
    }
    if path == "/stream" {
        let chunks = query(&req, "chunks").unwrap_or(10);
        let ms = query(&req, "ms").unwrap_or(100);
        let stream = futures_util::stream::unfold(0, move |i| async move {
            if i == chunks {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Some((Ok(Frame::data(Bytes::from(format!("chunk {i}\n")))), i + 1))
        });
        return Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))));
    }
    if path == "/ws" {
        let key = req.headers().get("sec-websocket-key").cloned();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            use futures_util::{SinkExt, StreamExt};
            let upgraded = on_upgrade.await.unwrap();
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() {
                    break;
                }
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
            key.as_ref().map_or(&b""[..], |k| k.as_bytes()),
        );
        let resp = Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(full(""))
            .unwrap();
        return Ok(resp);
    }
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("?"))))
        .collect();
    let body = json!({
        "backend": name,
        "peer": peer.to_string(),
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("x-backend", &name)
        .body(full(body.to_string()))
        .unwrap())
}

/// A backend that accepts connections and never answers.
pub struct SilentBackend {
    pub addr: SocketAddr,
    _listener: std::net::TcpListener,
    _held: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl SilentBackend {
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        let accept = listener.try_clone().unwrap();
        let h = Arc::clone(&held);
        std::thread::spawn(move || {
            for s in accept.incoming().map_while(Result::ok) {
                h.lock().unwrap().push(s);
            }
        });
        Self {
            addr,
            _listener: listener,
            _held: held,
        }
    }
}

/// An address nothing listens on.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The stdout of a command that must have succeeded.
#[track_caller]
pub fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

// ---------------------------------------------------------------- curl

pub struct Curl {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs curl with `args`; `--cacert` for the test CA is added.
pub fn curl(pki: &Pki, args: &[&str]) -> Curl {
    let out = Command::new("curl")
        .arg("--silent")
        .arg("--show-error")
        .arg("--max-time")
        .arg("20")
        .arg("--cacert")
        .arg(&pki.ca_pem)
        .args(args)
        .output()
        .expect("curl must be installed (the test command installs it)");
    Curl {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `--resolve` argument mapping `host` to edgebox's address.
pub fn resolve(host: &str, addr: SocketAddr) -> String {
    format!("{host}:{}:{}", addr.port(), addr.ip())
}

pub fn path_of(p: &Path) -> String {
    p.display().to_string()
}

// ---------------------------------------------------------------- shop fixture

/// edgebox serving `shop.test` (a certificate from the test CA), every request
/// routed to the pool `app`.
pub struct Shop {
    pub pki: Pki,
    pub eb: Edgebox,
}

impl Shop {
    /// `app` has `backends`; `tweak` may change the config before start.
    pub fn start(backends: &[SocketAddr], cores: usize, tweak: impl FnOnce(&mut Value)) -> Self {
        let pki = Pki::new();
        let leaf = pki.leaf("shop", &["shop.test"]);
        let b: Vec<Value> = backends
            .iter()
            .map(|a| json!({"address": a.to_string()}))
            .collect();
        let mut cfg = config(
            &[&leaf],
            json!([{"name": "app", "backends": b}]),
            json!([{"action": {"proxy": {"pool": "app"}}}]),
        );
        tweak(&mut cfg);
        let eb = Edgebox::start(&cfg, cores);
        Self { pki, eb }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://shop.test:{}{path}", self.eb.addr("https").port())
    }

    /// curl with `shop.test` resolved to edgebox.
    pub fn curl(&self, args: &[&str]) -> Curl {
        let r = resolve("shop.test", self.eb.addr("https"));
        let mut all = vec!["--resolve", &r];
        all.extend_from_slice(args);
        curl(&self.pki, &all)
    }

    /// Only the status code of a curl request.
    pub fn status(&self, args: &[&str]) -> String {
        let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(args);
        self.curl(&all).stdout
    }
}

/// Bytes with no structure (xorshift64), reproducible from `seed`.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
