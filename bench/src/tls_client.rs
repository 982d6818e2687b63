//! The rustls client for the handshake and idle-memory scenarios.
//!
//! OpenSSL 3 clients spend more CPU on a handshake than the servers do, so
//! they cannot saturate a server on the other core. This one uses blocking
//! I/O with one thread per connection in flight, X25519 (what every peer and
//! client here uses; rustls would otherwise offer a post-quantum hybrid that
//! the OpenSSL peers lack), pins the server's certificate and verifies the
//! handshake signature of every `VERIFY_EVERY`th connection.
//!
//! It keeps and offers session tickets like any client, and counts how each
//! handshake went: a resumed one means the server allowed resumption, which
//! the handshake scenario must not measure.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{aws_lc_rs, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, SignatureScheme,
};

const VERIFY_EVERY: u64 = 16;

/// Accepts exactly one certificate and checks a sample of signatures.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
    seen: AtomicU64,
    verified: AtomicU64,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() != self.cert.as_ref() {
            return Err(rustls::Error::General(
                "not the benchmark's certificate".into(),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not benchmarked".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if self.seen.fetch_add(1, Ordering::Relaxed) % VERIFY_EVERY != 0 {
            return Ok(HandshakeSignatureValid::assertion());
        }
        self.verified.fetch_add(1, Ordering::Relaxed);
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Client settings shared by the threads.
#[derive(Debug, Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
    verifier: Arc<Pinned>,
    addr: SocketAddr,
    request: Arc<[u8]>,
}

impl Client {
    /// A client of `addr` that asks for `path` on each connection.
    pub fn new(addr: SocketAddr, cert: CertificateDer<'static>, path: &str) -> Result<Self> {
        let mut provider = aws_lc_rs::default_provider();
        provider.kx_groups = vec![aws_lc_rs::kx_group::X25519];
        let algorithms = provider.signature_verification_algorithms;
        let verifier = Arc::new(Pinned {
            cert,
            algorithms,
            seen: AtomicU64::new(0),
            verified: AtomicU64::new(0),
        });
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(&verifier) as Arc<dyn ServerCertVerifier>)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            verifier,
            addr,
            request: format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .into_bytes()
                .into(),
        })
    }

    /// Signatures verified so far.
    pub fn verified(&self) -> u64 {
        self.verifier.verified.load(Ordering::Relaxed)
    }

    /// Connects, handshakes and gets one response; returns the connection,
    /// still open, and how the handshake went.
    fn connect_and_get(
        &self,
    ) -> Result<(
        rustls::StreamOwned<ClientConnection, TcpStream>,
        HandshakeKind,
    )> {
        let tcp = TcpStream::connect(self.addr).context("connect")?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost")?;
        let conn = ClientConnection::new(Arc::clone(&self.config), name)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(&self.request)
            .context("sending the request")?;
        read_response(&mut tls)?;
        let kind = tls.conn.handshake_kind().context("no handshake")?;
        Ok((tls, kind))
    }
}

/// Reads one `200` response with a Content-Length body.
fn read_response(tls: &mut impl Read) -> Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = tls.read(&mut chunk).context("reading the response")?;
        if n == 0 {
            bail!("the connection closed before the response was whole");
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..end]).context("response head")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("the answer was {:?}", head.lines().next().unwrap_or(""));
        }
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .context("no Content-Length")?;
        if buf.len() >= end + 4 + length {
            return Ok(());
        }
    }
}

/// What the handshake load measured.
#[derive(Debug, Clone)]
pub struct Handshakes {
    pub full: u64,
    pub resumed: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub verified: u64,
}

/// `threads` threads each make connection after connection (handshake, one
/// request, close) for `duration`.
pub fn handshake_load(client: &Client, threads: usize, duration: Duration) -> Result<Handshakes> {
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::<u32>::new()));
    let (full, resumed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (client, stop, latencies) =
                (client.clone(), Arc::clone(&stop), Arc::clone(&latencies));
            let (full, resumed) = (Arc::clone(&full), Arc::clone(&resumed));
            std::thread::spawn(move || -> Result<()> {
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let (_conn, kind) = client.connect_and_get()?;
                    mine.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                    match kind {
                        HandshakeKind::Resumed => &resumed,
                        _ => &full,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                }
                latencies
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .extend(mine);
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    let mut lat = std::mem::take(&mut *latencies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    if lat.is_empty() {
        bail!("no connection was made");
    }
    lat.sort_unstable();
    let pct = |p: f64| f64::from(lat[((lat.len() - 1) as f64 * p).round() as usize]) / 1e3;
    Ok(Handshakes {
        full: full.load(Ordering::Relaxed),
        resumed: resumed.load(Ordering::Relaxed),
        seconds,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        verified: client.verified(),
    })
}

/// Connections held open, idle, after one request each.
#[derive(Debug)]
pub struct Idle {
    conns: Vec<rustls::StreamOwned<ClientConnection, TcpStream>>,
}

impl Idle {
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// How many are still open: a closed one reads EOF (or an error) at once.
    pub fn still_open(&mut self) -> usize {
        self.conns
            .iter_mut()
            .filter(|c| {
                let tcp = &c.sock;
                if tcp.set_nonblocking(true).is_err() {
                    return false;
                }
                let mut byte = [0u8; 1];
                let open = matches!(tcp.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
                let _ = tcp.set_nonblocking(false);
                open
            })
            .count()
    }
}

/// Opens `count` connections on `threads` threads, one request each, and
/// keeps them.
pub fn open_idle(client: &Client, count: usize, threads: usize) -> Result<Idle> {
    let per = count.div_ceil(threads);
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let client = client.clone();
            let n = per.min(count.saturating_sub(t * per));
            std::thread::spawn(move || -> Result<Vec<_>> {
                (0..n).map(|_| Ok(client.connect_and_get()?.0)).collect()
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(count);
    for w in workers {
        conns.extend(
            w.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
        );
    }
    Ok(Idle { conns })
}
