//! `cargo run -p bench --release --bin replication [-- --mib N]`: two
//! edgebox processes replicating on loopback, measured end to end.
//!
//! - **propagation**: 20 publishes of a small site to A, each timed from
//!   the moment `edgebox publish` returns until B serves the new page;
//! - **throughput**: a site of N MiB (default 1024) of new blobs published
//!   to A, timed until B serves it (every blob fetched, verified, stored),
//!   without a bandwidth cap;
//! - **client p99**: wrk against A (where the publish was made, the
//!   appliance clients use) for a few seconds: idle, while A sends N MiB
//!   without a cap, and while it sends them under the default cap.
//!
//! Every scenario starts a fresh pair. All three processes share this
//! machine's cores; nothing is pinned.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use edgebox::ctl::client::{Client, ReqBody, Trust};

#[derive(Debug, Parser)]
struct Cli {
    /// MiB of blobs for the throughput and p99 scenarios.
    #[arg(long, default_value_t = 1024)]
    mib: usize,
    /// Small publishes timed for propagation.
    #[arg(long, default_value_t = 20)]
    publishes: usize,
    /// The edgebox binary; default: built with cargo in this profile.
    #[arg(long)]
    edgebox: Option<PathBuf>,
}

const TOKEN: &str = "bench-replication-token-0123456789";
/// The default `replication.max_bytes_per_s`.
const DEFAULT_CAP: u64 = 50_000_000;
/// Without a cap: the largest the config allows.
const NO_CAP: u64 = 100_000_000_000;

struct Node {
    /// Killed when the node is dropped.
    _server: bench::Server,
    admin: String,
    http: SocketAddr,
}

impl Node {
    fn start(bin: &Path, dir: &Path, config: &Path) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--data")
            .arg(dir)
            .arg("--config")
            .arg(config)
            .args(["--cores", "1"]);
        let (server, banner) = bench::Server::spawn(cmd, TOKEN)?;
        let http = banner
            .listeners
            .iter()
            .find(|(scheme, _)| scheme == "http")
            .map(|(_, a)| *a);
        Ok(Self {
            _server: server,
            admin: banner.admin.context("edgebox printed no admin address")?,
            http: http.context("edgebox printed no HTTP listener")?,
        })
    }

    /// One HTTP/1.1 GET on a new connection; the body if the status is 200.
    fn get(&self, path: &str) -> Option<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&self.http, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).ok()?;
        let end = reply.windows(4).position(|w| w == b"\r\n\r\n")?;
        reply
            .starts_with(b"HTTP/1.1 200")
            .then(|| reply[end + 4..].to_vec())
    }

    /// Waits until it serves `body` at `path`; how long that took.
    fn wait_serves(&self, path: &str, body: &[u8], deadline: Duration) -> Result<Duration> {
        let start = Instant::now();
        while self.get(path).as_deref() != Some(body) {
            if start.elapsed() > deadline {
                bail!("{path} not served within {deadline:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(start.elapsed())
    }
}

/// A fresh pair, A and B, replicating with `cap` bytes per second each.
struct Pair {
    a: Node,
    b: Node,
    _dir: tempfile::TempDir,
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Pair {
    fn start(bin: &Path, cap: u64) -> Result<Self> {
        let dir = tempfile::tempdir_in(bench_dir()?)?;
        let names = ["a", "b"];
        let mut fingerprints = Vec::new();
        let mut ports = Vec::new();
        for n in names {
            let out = Command::new(bin)
                .arg("identity")
                .arg("--data")
                .arg(dir.path().join(n))
                .output()?;
            if !out.status.success() {
                bail!("edgebox identity: {}", String::from_utf8_lossy(&out.stderr));
            }
            fingerprints.push(String::from_utf8(out.stdout)?.trim().to_owned());
            ports.push(free_udp_port()?);
        }
        let mut nodes = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let j = 1 - i;
            let config = dir.path().join(format!("{n}.json"));
            std::fs::write(
                &config,
                serde_json::to_vec(&serde_json::json!({
                    "listeners": [{"name": "http", "address": "127.0.0.1:0", "protocol": "http"}],
                    "routes": [{"action": {"static": {"site": "shop"}}}],
                    "admin": {"address": "127.0.0.1:0"},
                    "replication": {
                        "listen": format!("127.0.0.1:{}", ports[i]),
                        "peers": [{"address": format!("127.0.0.1:{}", ports[j]),
                                   "fingerprint": fingerprints[j]}],
                        "max_bytes_per_s": cap,
                    },
                }))?,
            )?;
            nodes.push(Node::start(bin, &dir.path().join(n), &config)?);
        }
        // Measured once both links are up, as a pair runs.
        for n in &nodes {
            let client = Client::new(&n.admin, TOKEN.to_owned(), Trust::Insecure)?;
            let start = Instant::now();
            loop {
                let r = client.send(http::Method::GET, "/v1/replication", ReqBody::Empty, &[])?;
                let r: serde_json::Value = serde_json::from_slice(&r)?;
                if r["peers"][0]["state"] == "connected" {
                    break;
                }
                if start.elapsed() > Duration::from_secs(30) {
                    bail!("the pair did not connect: {r}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let b = nodes.pop().context("b")?;
        let a = nodes.pop().context("a")?;
        Ok(Self { a, b, _dir: dir })
    }
}

/// Where the stores and sites go: beside the target directory (on disk,
/// not a tmpfs).
fn bench_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .ancestors()
        .find(|p| p.ends_with("target"))
        .map_or_else(std::env::temp_dir, |t| t.join("bench-replication"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `edgebox publish DIR --site shop` to `node`; how long it took.
fn publish(bin: &Path, node: &Node, dir: &Path) -> Result<Duration> {
    let start = Instant::now();
    let out = Command::new(bin)
        .arg("publish")
        .arg(dir)
        .args(["--site", "shop", "--insecure", "--token", TOKEN, "--admin"])
        .arg(&node.admin)
        .output()?;
    if !out.status.success() {
        bail!("publish: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(start.elapsed())
}

/// Pseudo-random bytes that do not compress or repeat.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A site of `mib` MiB in 64 MiB files (new bytes for each `seed`), an
/// index naming the seed and a small page for wrk.
fn big_site(root: &Path, seed: u64, mib: usize) -> Result<Vec<u8>> {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root)?;
    let mut left = mib << 20;
    let mut i = 0;
    while left > 0 {
        let len = left.min(64 << 20);
        std::fs::write(
            root.join(format!("blob{i}.bin")),
            noise(seed * 1000 + i, len),
        )?;
        left -= len;
        i += 1;
    }
    std::fs::write(root.join("small.html"), "a small page for clients\n")?;
    let index = format!("site {seed}\n").into_bytes();
    std::fs::write(root.join("index.html"), &index)?;
    Ok(index)
}

/// wrk against `node`'s small page for `secs` seconds, 16 connections.
fn wrk(node: &Node, secs: u64) -> Result<bench::load::LoadResult> {
    bench::load::wrk(
        &format!("http://{}/small.html", node.http),
        16,
        Duration::from_secs(secs),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let bin = match cli.edgebox {
        Some(b) => b,
        None => bench::build_edgebox()?,
    };
    let work = tempfile::tempdir_in(bench_dir()?)?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;

    // Propagation of a small publish.
    let pair = Pair::start(&bin, DEFAULT_CAP)?;
    let small = work.path().join("small");
    std::fs::create_dir_all(&small)?;
    let mut times = Vec::new();
    for i in 0..cli.publishes {
        let page = format!("small publish {i}\n{}\n", "x".repeat(1000));
        std::fs::write(small.join("index.html"), &page)?;
        publish(&bin, &pair.a, &small)?;
        times.push(
            pair.b
                .wait_serves("/", page.as_bytes(), Duration::from_secs(30))?,
        );
    }
    drop(pair);
    times.sort();
    println!("| replication on loopback | figure |");
    println!("|---|---|");
    println!(
        "| a small publish (1 KiB page) served by the peer, after `edgebox publish` returned: median / p90 / max of {} | {:.1} / {:.1} / {:.1} ms |",
        times.len(),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.9)),
        ms(times[times.len() - 1]),
    );

    // Throughput, without a cap.
    let site = work.path().join("big");
    let pair = Pair::start(&bin, NO_CAP)?;
    let index = big_site(&site, 1, cli.mib)?;
    let uploaded = publish(&bin, &pair.a, &site)?;
    let replicated = pair.b.wait_serves("/", &index, Duration::from_secs(600))?;
    let bytes = (cli.mib << 20) as f64;
    println!(
        "| {} MiB of new blobs: `edgebox publish` to A (upload, verify, store) | {:.1} s ({:.0} MB/s) |",
        cli.mib,
        uploaded.as_secs_f64(),
        bytes / uploaded.as_secs_f64() / 1e6
    );
    println!(
        "| the same replicated to B, no cap (fetch, verify, store, serve) | {:.1} s ({:.0} MB/s) |",
        replicated.as_secs_f64(),
        bytes / replicated.as_secs_f64() / 1e6
    );
    // Idle p99 on the same pair, once it is done.
    let idle = wrk(&pair.a, 5)?;
    drop(pair);

    // Client p99 on A while it sends, without and with the default cap.
    let mut during = Vec::new();
    for (seed, cap) in [(2, NO_CAP), (3, DEFAULT_CAP)] {
        let pair = Pair::start(&bin, cap)?;
        let index = big_site(&site, seed, cli.mib)?;
        publish(&bin, &pair.a, &site)?;
        let started = Instant::now();
        // The load runs while B fetches: a little shorter than the
        // uncapped transfer took above.
        let secs = (replicated.as_secs_f64() * 0.8).floor().max(1.0) as u64;
        let load = wrk(&pair.a, secs.min(10))?;
        pair.b.wait_serves("/", &index, Duration::from_secs(600))?;
        let took = started.elapsed();
        during.push((cap, load, took));
    }
    println!(
        "| clients of A (wrk, 16 connections, a small page), idle: requests/s, p50 / p99 | {:.0}/s, {:.2} / {:.2} ms |",
        idle.requests_per_s(),
        idle.p50_ms,
        idle.p99_ms
    );
    for (cap, load, took) in during {
        let label = if cap == NO_CAP {
            "no cap".to_owned()
        } else {
            format!("capped at {} MB/s", cap / 1_000_000)
        };
        println!(
            "| … while A sends {} MiB to B, {label} (replicated in {:.1} s) | {:.0}/s, {:.2} / {:.2} ms |",
            cli.mib,
            took.as_secs_f64(),
            load.requests_per_s(),
            load.p50_ms,
            load.p99_ms
        );
    }
    Ok(())
}
