//! The servers under test and the shared backend: generated configs, start
//! (pinned to a core), readiness and stop. Only processes started here are
//! ever signalled, by their PID.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The servers the issue compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Server {
    Nginx,
    H2o,
    Haproxy,
    Edgebox,
}

pub const ALL: [Server; 4] = [Server::Nginx, Server::H2o, Server::Haproxy, Server::Edgebox];

/// The shared HTTP/1.1 backend of the proxy scenarios (an nginx of its own).
pub const BACKEND_PORT: u16 = 18080;
const EDGEBOX_ADMIN_PORT: u16 = 18449;
const EDGEBOX_TOKEN: &str = "edgebox-bench-token";

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Nginx => "nginx",
            Server::H2o => "h2o",
            Server::Haproxy => "haproxy",
            Server::Edgebox => "edgebox",
        }
    }

    pub fn port(self) -> u16 {
        match self {
            Server::Nginx => 18443,
            Server::H2o => 18444,
            Server::Haproxy => 18445,
            Server::Edgebox => 18446,
        }
    }

    pub fn addr(self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port()))
    }

    /// HAProxy serves no files: it only proxies.
    pub fn serves_files(self) -> bool {
        self != Server::Haproxy
    }
}

/// The bench's working directory: certificate, files, configs, logs.
#[derive(Debug, Clone)]
pub struct Workdir {
    pub dir: PathBuf,
    pub edgebox: PathBuf,
    /// The open-file limit the servers inherit.
    pub open_files: u64,
}

impl Workdir {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The files every server serves: `/1k.bin` and `/1m.bin`; the backend
    /// serves `/proxy/1k.bin`. Pseudo-random bytes, so no one compresses
    /// them.
    pub fn write_files(&self) -> Result<()> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut bytes = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        };
        let www = self.path("www");
        let backend = self.path("backend/proxy");
        std::fs::create_dir_all(&www)?;
        std::fs::create_dir_all(&backend)?;
        std::fs::write(www.join("1k.bin"), bytes(1024))?;
        std::fs::write(www.join("1m.bin"), bytes(1024 * 1024))?;
        std::fs::write(backend.join("1k.bin"), bytes(1024))?;
        Ok(())
    }

    /// An ECDSA P-256 certificate for `localhost` and 127.0.0.1, used by
    /// every server; returns its DER, which the handshake client pins.
    pub fn write_certificate(&self) -> Result<rustls::pki_types::CertificateDer<'static>> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        let cert = params.self_signed(&key)?;
        std::fs::write(self.path("cert.pem"), cert.pem())?;
        std::fs::write(self.path("key.pem"), key.serialize_pem())?;
        std::fs::write(self.path("haproxy.pem"), cert.pem() + &key.serialize_pem())?;
        Ok(cert.der().clone())
    }

    fn write_configs(&self) -> Result<()> {
        let dir = self.dir.display();
        let www = self.path("www");
        let www = www.display();
        let backend_root = self.path("backend");
        let nginx_common = format!(
            "worker_processes 1;\ndaemon off;\npid {dir}/PREFIX.pid;\nerror_log {dir}/PREFIX-error.log warn;\n\
             worker_rlimit_nofile 20000;\nevents {{ worker_connections 15000; }}\n"
        );
        let temp_paths = |p: &str| {
            format!(
                "client_body_temp_path {dir}/{p}-tmp/body; proxy_temp_path {dir}/{p}-tmp/proxy;\n\
                 fastcgi_temp_path {dir}/{p}-tmp/fcgi; uwsgi_temp_path {dir}/{p}-tmp/uwsgi; scgi_temp_path {dir}/{p}-tmp/scgi;\n"
            )
        };
        for p in ["nginx", "backend"] {
            std::fs::create_dir_all(self.path(&format!("{p}-tmp")))?;
        }
        std::fs::write(
            self.path("backend.conf"),
            nginx_common.replace("PREFIX", "backend")
                + &format!(
                    "http {{\n  access_log off;\n  {}  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n\
                     server {{\n    listen 127.0.0.1:{BACKEND_PORT} reuseport;\n    root {};\n  }}\n}}\n",
                    temp_paths("backend"),
                    backend_root.display()
                ),
        )?;
        std::fs::write(
            self.path("nginx.conf"),
            nginx_common.replace("PREFIX", "nginx")
                + &format!(
                    "http {{\n  access_log off;\n  {}  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n\
                     upstream backend {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 64; }}\n\
                     server {{\n    listen 127.0.0.1:{port} ssl http2;\n    ssl_certificate {dir}/cert.pem;\n    ssl_certificate_key {dir}/key.pem;\n\
                     ssl_protocols TLSv1.3;\n    ssl_session_cache off;\n    ssl_session_tickets off;\n    root {www};\n\
                     location /proxy/ {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
                    temp_paths("nginx"),
                    port = Server::Nginx.port()
                ),
        )?;
        std::fs::write(
            self.path("h2o.conf"),
            format!(
                "num-threads: 1\nmax-connections: 15000\nhttp1-request-timeout: 300\nhttp2-idle-timeout: 300\n\
                 error-log: {dir}/h2o-error.log\nssl-session-resumption:\n  mode: off\n\
                 listen:\n  host: 127.0.0.1\n  port: {port}\n  ssl:\n    certificate-file: {dir}/cert.pem\n    key-file: {dir}/key.pem\n    min-version: TLSv1.3\n    ocsp-update-interval: 0\n\
                 hosts:\n  default:\n    paths:\n      /proxy:\n        proxy.reverse.url: http://127.0.0.1:{BACKEND_PORT}/proxy\n      /:\n        file.dir: {www}\n",
                port = Server::H2o.port()
            ),
        )?;
        std::fs::write(
            self.path("haproxy.cfg"),
            format!(
                "global\n  nbthread 1\n  maxconn {maxconn}\n  tune.ssl.cachesize 0\n  ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets\n\
                 defaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n  timeout http-keep-alive 300s\n  option http-keep-alive\n  http-reuse always\n\
                 frontend fe\n  bind 127.0.0.1:{port} ssl crt {dir}/haproxy.pem alpn http/1.1\n  default_backend be\n\
                 backend be\n  server b1 127.0.0.1:{BACKEND_PORT}\n",
                port = Server::Haproxy.port(),
                // HAProxy reserves two descriptors a connection.
                maxconn = self.open_files.saturating_sub(100) / 2,
            ),
        )?;
        let edgebox = serde_json::json!({
            "listeners": [{ "name": "https", "address": Server::Edgebox.addr().to_string(), "protocol": "https" }],
            "certificates": [{ "cert": self.path("cert.pem"), "key": self.path("key.pem") }],
            "tls": { "session_tickets": false },
            "client": { "idle_timeout_ms": 300_000 },
            "pools": [{ "name": "backend", "backends": [{ "address": format!("127.0.0.1:{BACKEND_PORT}") }] }],
            "routes": [
                { "path_prefix": "/proxy", "action": { "proxy": { "pool": "backend" } } },
                { "action": { "static": { "site": "bench" } } }
            ],
            "admin": { "address": format!("127.0.0.1:{EDGEBOX_ADMIN_PORT}") }
        });
        std::fs::write(
            self.path("edgebox.json"),
            serde_json::to_vec_pretty(&edgebox)?,
        )?;
        Ok(())
    }

    /// Writes the certificate, files and configs.
    pub fn prepare(&self) -> Result<rustls::pki_types::CertificateDer<'static>> {
        std::fs::create_dir_all(&self.dir)?;
        self.write_files()?;
        let cert = self.write_certificate()?;
        self.write_configs()?;
        Ok(cert)
    }
}

/// A server process this bench started.
#[derive(Debug)]
pub struct Running {
    pub name: &'static str,
    child: Child,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL after 10 s; waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

fn port_free(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_err()
}

/// Starts `program args` pinned to `core`, logging to `<dir>/<name>.log`,
/// and waits until `port` accepts connections.
fn start(
    work: &Workdir,
    name: &'static str,
    core: usize,
    port: u16,
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<Running> {
    if !port_free(port) {
        bail!("127.0.0.1:{port}, which {name} is to use, is taken by another program");
    }
    let log = std::fs::File::create(work.path(&format!("{name}.log")))?;
    let child = Command::new("taskset")
        .arg("-c")
        .arg(core.to_string())
        .arg(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let mut running = Running { name, child };
    wait_listening(port, name, || {
        if let Some(status) = running.child.try_wait()? {
            let log =
                std::fs::read_to_string(work.path(&format!("{name}.log"))).unwrap_or_default();
            bail!("{name} exited ({status}) before it listened:\n{log}");
        }
        Ok(())
    })?;
    Ok(running)
}

/// Waits up to 30 s for 127.0.0.1:`port` to accept connections, asking
/// `alive` between tries (an error from it ends the wait).
fn wait_listening(port: u16, what: &str, mut alive: impl FnMut() -> Result<()>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while port_free(port) {
        alive()?;
        if Instant::now() > deadline {
            bail!("{what} did not listen on port {port} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The shared backend, on the load core.
pub fn start_backend(work: &Workdir, core: usize) -> Result<Running> {
    let conf = work.path("backend.conf");
    start(
        work,
        "backend",
        core,
        BACKEND_PORT,
        Path::new("nginx"),
        &["-e", "stderr", "-c", &conf.display().to_string()],
        &[],
    )
}

/// Starts `server` on `core`; edgebox also gets its site published.
pub fn start_server(work: &Workdir, server: Server, core: usize) -> Result<Running> {
    let conf = |f: &str| work.path(f).display().to_string();
    let port = server.port();
    match server {
        Server::Nginx => start(
            work,
            "nginx",
            core,
            port,
            Path::new("nginx"),
            &["-e", "stderr", "-c", &conf("nginx.conf")],
            &[],
        ),
        Server::H2o => start(
            work,
            "h2o",
            core,
            port,
            Path::new("h2o"),
            &["-c", &conf("h2o.conf")],
            &[],
        ),
        Server::Haproxy => start(
            work,
            "haproxy",
            core,
            port,
            Path::new("haproxy"),
            &["-db", "-f", &conf("haproxy.cfg")],
            &[],
        ),
        Server::Edgebox => {
            let data = conf("edgebox-data");
            let running = start(
                work,
                "edgebox",
                core,
                port,
                &work.edgebox,
                &[
                    "serve",
                    "--config",
                    &conf("edgebox.json"),
                    "--data",
                    &data,
                    "--cores",
                    "1",
                ],
                &[
                    ("EDGEBOX_ADMIN_TOKEN", EDGEBOX_TOKEN),
                    ("EDGEBOX_LOG", "warn,access=off"),
                    ("NO_COLOR", "1"),
                ],
            )?;
            publish(work, &data)?;
            Ok(running)
        }
    }
}

/// `edgebox publish www --site bench` (only the first start uploads).
fn publish(work: &Workdir, data: &str) -> Result<()> {
    wait_listening(EDGEBOX_ADMIN_PORT, "edgebox's admin API", || Ok(()))?;
    let out = Command::new(&work.edgebox)
        .arg("publish")
        .arg(work.path("www"))
        .args(["--site", "bench"])
        .env(
            "EDGEBOX_ADMIN",
            format!("https://127.0.0.1:{EDGEBOX_ADMIN_PORT}"),
        )
        .env("EDGEBOX_TOKEN", EDGEBOX_TOKEN)
        .env("EDGEBOX_DATA", data)
        .output()
        .context("cannot run edgebox publish")?;
    if !out.status.success() {
        bail!(
            "edgebox publish failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
