//! `cargo run -p bench --release --bin certs [-- --certs N --probe K]`:
//! edgebox holding N ACME certificates (default 100 000), against the same
//! edgebox holding none.
//!
//! N certificates for `shopI.test` are made under one intermediate (as an
//! ACME CA issues them: leaf, intermediate, root) and written into a data
//! directory as edgebox keeps them (`edgebox::acme::import::import`). Then,
//! alternating the empty directory and the full one, `--rounds` times each:
//!
//! - start-up: from spawning `edgebox serve` to its banner (serving);
//! - from spawning until every certificate is read (edgebox reads them in
//!   the background once it serves; `/metrics` counts them);
//! - resident memory then, so (full − empty) ÷ N is what one certificate
//!   costs while nobody asked for it;
//! - a config change (`PUT /v1/config` of the same document), end to end.
//!
//! On the full one, with one core: K full handshakes (no resumption) for K
//! names never asked for before, each the first for its name (cold: the
//! core reads and parses the certificate), then the same K again (warm:
//! from the core's cache), then K for the config's own certificate; the
//! medians and p99s, and the memory the K parsed certificates added.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bench::report::median;
use clap::Parser;
use edgebox::ctl::client::{Client, ReqBody, Trust};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

#[derive(Debug, Parser)]
struct Cli {
    /// Certificates held.
    #[arg(long, default_value_t = 100_000)]
    certs: usize,
    /// Names handshaken with, cold then warm.
    #[arg(long, default_value_t = 1_000)]
    probe: usize,
    /// Start-ups of each directory, alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The edgebox binary; default: built with cargo in this profile.
    #[arg(long)]
    edgebox: Option<PathBuf>,
}

const TOKEN: &str = "bench-certs-token-0123456789abc";

struct Running {
    child: bench::Server,
    admin: String,
    https: SocketAddr,
    started: Duration,
}

impl Running {
    fn start(bin: &Path, dir: &Path, t: Instant) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--data")
            .arg(dir.join("data"))
            .arg("--config")
            .arg(dir.join("edgebox.json"))
            .args(["--cores", "1"]);
        let (child, banner) = bench::Server::spawn(cmd, TOKEN)?;
        let started = t.elapsed();
        let admin = banner.admin.context("no admin address")?;
        let https = banner
            .listeners
            .iter()
            .find(|(s, _)| s == "https")
            .map(|(_, a)| *a)
            .context("no https listener")?;
        Ok(Self {
            child,
            admin,
            https,
            started,
        })
    }

    /// Waits until `/metrics` counts `n` ACME certificates; the time since
    /// the spawn.
    fn all_read(&self, n: usize, spawned: Instant) -> Result<Duration> {
        let client = Client::new(&self.admin, TOKEN.to_owned(), Trust::Insecure)?;
        let want = format!("edgebox_acme_certificates {n}\n");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = client.send(http::Method::GET, "/metrics", ReqBody::Empty, &[])?;
            if String::from_utf8_lossy(&text).contains(&want) {
                return Ok(spawned.elapsed());
            }
            if Instant::now() > deadline {
                bail!("edgebox never counted {n} certificates");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn rss(&self) -> u64 {
        bench::procfs::rss_bytes(self.child.id())
    }

    /// `PUT /v1/config` of the config as it is, end to end.
    fn config_change(&self) -> Result<Duration> {
        let client = Client::new(&self.admin, TOKEN.to_owned(), Trust::Insecure)?;
        let doc = client.send(http::Method::GET, "/v1/config", ReqBody::Empty, &[])?;
        let t = Instant::now();
        client.send(
            http::Method::PUT,
            "/v1/config",
            ReqBody::Bytes(doc),
            &[("content-type", "application/json")],
        )?;
        Ok(t.elapsed())
    }

    fn stop(self) -> Result<()> {
        self.child.stop()
    }
}

/// A root, an intermediate under it, and leaves under that.
struct Ca {
    root: rcgen::Certificate,
    inter: rcgen::Certificate,
    inter_key: rcgen::KeyPair,
    inter_params: rcgen::CertificateParams,
}

impl Ca {
    fn new() -> Result<Self> {
        let root_key = rcgen::KeyPair::generate()?;
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "bench root");
        let root = p.self_signed(&root_key)?;
        let root_issuer = rcgen::Issuer::from_params(&p, &root_key);
        let inter_key = rcgen::KeyPair::generate()?;
        let mut inter_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        inter_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        inter_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bench intermediate");
        let inter = inter_params.signed_by(&inter_key, &root_issuer)?;
        Ok(Self {
            root,
            inter,
            inter_key,
            inter_params,
        })
    }

    fn leaf(&self, name: &str) -> Result<edgebox::tls::managed::Entry> {
        let key = rcgen::KeyPair::generate()?;
        let issuer = rcgen::Issuer::from_params(&self.inter_params, &self.inter_key);
        let cert =
            rcgen::CertificateParams::new(vec![name.to_owned()])?.signed_by(&key, &issuer)?;
        edgebox::tls::managed::Entry::new(
            vec![cert.der().clone(), self.inter.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).map_err(anyhow::Error::msg)?,
        )
        .map_err(anyhow::Error::msg)
    }
}

/// One full handshake as `name`; how long from connect to finished.
fn handshake(config: &Arc<rustls::ClientConfig>, addr: SocketAddr, name: &str) -> Result<Duration> {
    let t = Instant::now();
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    let mut conn =
        rustls::ClientConnection::new(Arc::clone(config), ServerName::try_from(name.to_owned())?)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .with_context(|| format!("handshake as {name}"))?;
    }
    let took = t.elapsed();
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    Ok(took)
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.probe > cli.certs {
        bail!("--probe must be at most --certs");
    }
    let bin = match cli.edgebox.clone() {
        Some(b) => b,
        None => bench::build_edgebox()?,
    };
    let ca = Ca::new()?;
    let empty = tempfile::tempdir()?;
    let full = tempfile::tempdir()?;
    // The config's own certificate (the default), the same in both.
    let own_key = rcgen::KeyPair::generate()?;
    let own = rcgen::CertificateParams::new(vec!["own.test".to_owned()])?.self_signed(&own_key)?;
    for dir in [empty.path(), full.path()] {
        std::fs::write(dir.join("own.crt"), own.pem())?;
        std::fs::write(dir.join("own.key"), own_key.serialize_pem())?;
        std::fs::write(
            dir.join("edgebox.json"),
            serde_json::to_vec(&serde_json::json!({
                "listeners": [{"name": "https", "address": "127.0.0.1:0", "protocol": "https"}],
                "certificates": [{"cert": dir.join("own.crt"), "key": dir.join("own.key")}],
                "routes": [{"action": "welcome"}],
                "admin": {"address": "127.0.0.1:0"},
                "tls": {"session_tickets": false},
            }))?,
        )?;
        std::fs::create_dir_all(dir.join("data"))?;
    }
    let t = Instant::now();
    let certs = (0..cli.certs)
        .map(|i| Ok((format!("shop{i}.test"), ca.leaf(&format!("shop{i}.test"))?)))
        .collect::<Result<Vec<_>>>()?;
    let made = t.elapsed();
    let t = Instant::now();
    let shards = edgebox::acme::import::import(&full.path().join("data"), certs)
        .map_err(anyhow::Error::msg)?;
    println!(
        "{} certificates made in {:.1} s, written into {shards} shards in {:.1} s ({:.0} MiB of shards)",
        cli.certs,
        made.as_secs_f64(),
        t.elapsed().as_secs_f64(),
        dir_bytes(&full.path().join("data/store")) as f64 / f64::from(1 << 20),
    );

    let mut starts = [Vec::new(), Vec::new()];
    let mut read = [Vec::new(), Vec::new()];
    let mut rss = [Vec::new(), Vec::new()];
    let mut changes = [Vec::new(), Vec::new()];
    for round in 0..cli.rounds {
        for (i, dir) in [empty.path(), full.path()].iter().enumerate() {
            let spawned = Instant::now();
            let eb = Running::start(&bin, dir, spawned)?;
            starts[i].push(ms(eb.started));
            read[i].push(ms(eb.all_read([0, cli.certs][i], spawned)?));
            std::thread::sleep(Duration::from_millis(200));
            rss[i].push(eb.rss() as f64);
            changes[i].push(ms(eb.config_change()?));
            println!(
                "round {round} {}: serving after {:.0} ms, all read after {:.0} ms, {:.1} MiB resident, config change {:.1} ms",
                ["empty", "full"][i],
                ms(eb.started),
                read[i].last().copied().unwrap_or_default(),
                eb.rss() as f64 / f64::from(1 << 20),
                changes[i].last().copied().unwrap_or_default()
            );
            eb.stop()?;
        }
    }

    // Handshakes on the full one, once it has read everything (the cold
    // handshakes measure the parse, not a shard's first read).
    let spawned = Instant::now();
    let eb = Running::start(&bin, full.path(), spawned)?;
    eb.all_read(cli.certs, spawned)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.root.der().to_vec()))?;
    roots.add(CertificateDer::from(own.der().to_vec()))?;
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.resumption = rustls::client::Resumption::disabled();
    let client = Arc::new(client);
    let step = cli.certs / cli.probe;
    let names: Vec<String> = (0..cli.probe)
        .map(|i| format!("shop{}.test", i * step))
        .collect();
    let before = eb.rss();
    let cold: Vec<f64> = names
        .iter()
        .map(|n| handshake(&client, eb.https, n).map(ms))
        .collect::<Result<_>>()?;
    let after = eb.rss();
    let warm: Vec<f64> = names
        .iter()
        .map(|n| handshake(&client, eb.https, n).map(ms))
        .collect::<Result<_>>()?;
    let own_hs: Vec<f64> = (0..cli.probe)
        .map(|_| handshake(&client, eb.https, "own.test").map(ms))
        .collect::<Result<_>>()?;
    eb.stop()?;

    let mib = |b: f64| b / f64::from(1 << 20);
    let (r0, r1) = (median(&rss[0]), median(&rss[1]));
    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    writeln!(
        out,
        "| {} ACME certificates, one core | edgebox | with none |",
        cli.certs
    )?;
    writeln!(out, "|---|---|---|")?;
    writeln!(
        out,
        "| start-up until serving, median of {} | {:.0} ms | {:.0} ms |",
        cli.rounds,
        median(&starts[1]),
        median(&starts[0])
    )?;
    writeln!(
        out,
        "| every certificate read (in the background, while serving), median | {:.0} ms | |",
        median(&read[1])
    )?;
    writeln!(
        out,
        "| resident memory then | {:.1} MiB ({:.0} bytes a certificate) | {:.1} MiB |",
        mib(r1),
        (r1 - r0) / cli.certs as f64,
        mib(r0)
    )?;
    writeln!(
        out,
        "| config change (`PUT /v1/config`), median of {} | {:.1} ms | {:.1} ms |",
        cli.rounds,
        median(&changes[1]),
        median(&changes[0])
    )?;
    writeln!(
        out,
        "| first handshake for a name (cold: parsed on the core), median / p99 of {} | {:.2} / {:.2} ms | |",
        cli.probe,
        median(&cold),
        p99(cold.clone())
    )?;
    writeln!(
        out,
        "| next handshake for it (warm: the core's cache), median / p99 | {:.2} / {:.2} ms | |",
        median(&warm),
        p99(warm.clone())
    )?;
    writeln!(
        out,
        "| handshake with the config's own certificate, median / p99 | {:.2} / {:.2} ms | |",
        median(&own_hs),
        p99(own_hs.clone())
    )?;
    writeln!(
        out,
        "| memory the {} parsed certificates added | {:.0} bytes each | |",
        cli.probe,
        after.saturating_sub(before) as f64 / cli.probe as f64
    )?;
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    walk(dir).unwrap_or(0)
}

fn walk(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            walk(&e.path())?
        } else {
            m.len()
        };
    }
    Ok(total)
}
