//! `cargo run -p bench --release --bin hostmap [-- --entries N]`: a host map
//! of a million shops on a running edgebox, measured end to end. It starts
//! edgebox with 1 000 pods, then
//!
//! - imports N entries (`edgebox ctl hostmap import`), timed, with the
//!   resident memory before and after (bytes per entry);
//! - sets 200 entries one at a time through the admin API, and as many
//!   `GET /v1/status` calls with the same client (a new TLS connection
//!   each), so that the difference is what one change costs the server;
//! - restarts edgebox on the same data and times it until it serves (the
//!   map and its journal loaded back).
//!
//! Lookups are measured by `cargo bench -p bench --bench micro --
//! host_to_pod` (criterion), on the same code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use edgebox::ctl::client::{Client, ReqBody, Trust};

#[derive(Debug, Parser)]
struct Cli {
    /// Host-map entries.
    #[arg(long, default_value_t = 1_000_000)]
    entries: usize,
    /// Pods (pools) they are spread over.
    #[arg(long, default_value_t = 1_000)]
    pods: usize,
    /// The edgebox binary; default: built with cargo in this profile.
    #[arg(long)]
    edgebox: Option<PathBuf>,
}

const TOKEN: &str = "bench-hostmap-token-0123456789";

struct Edgebox {
    child: bench::Server,
    admin: String,
}

impl Edgebox {
    fn start(bin: &Path, dir: &Path, config: Option<&Path>) -> Result<(Self, Duration)> {
        let started = Instant::now();
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg("--data").arg(dir.join("data"));
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(["--cores", "2"]);
        let (child, banner) = bench::Server::spawn(cmd, TOKEN)?;
        let admin = banner.admin.context("edgebox printed no admin address")?;
        Ok((Self { child, admin }, started.elapsed()))
    }

    fn rss_bytes(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS")?;
        Ok(kb * 1024)
    }

    fn stop(self) -> Result<()> {
        self.child.stop()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let bin = match cli.edgebox {
        Some(b) => b,
        None => bench::build_edgebox()?,
    };
    let dir = tempfile::tempdir()?;
    let pools: Vec<_> = (0..cli.pods)
        .map(|p| {
            serde_json::json!({"name": format!("pod-{p}"),
                "backends": [{"address": format!("10.1.{}.{}:8080", p / 250, p % 250 + 1)}]})
        })
        .collect();
    let config = dir.path().join("edgebox.json");
    std::fs::write(
        &config,
        serde_json::to_vec(&serde_json::json!({
            "listeners": [{"name": "http", "address": "127.0.0.1:0", "protocol": "http"}],
            "pools": pools,
            "routes": [{"action": "welcome"}],
            "admin": {"address": "127.0.0.1:0"},
        }))?,
    )?;
    let entries = dir.path().join("hostmap.ndjson");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&entries)?);
        for i in 0..cli.entries {
            writeln!(
                f,
                "{{\"host\":\"shop{i}.example.com\",\"pool\":\"pod-{}\"}}",
                i % cli.pods
            )?;
        }
    }
    let (eb, _) = Edgebox::start(&bin, dir.path(), Some(&config))?;
    let before = eb.rss_bytes()?;
    let started = Instant::now();
    let out = Command::new(&bin)
        .args(["ctl", "--insecure", "--admin", &eb.admin, "--token", TOKEN])
        .args(["hostmap", "import"])
        .arg(&entries)
        .output()?;
    let import = started.elapsed();
    if !out.status.success() {
        bail!("import failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let after = eb.rss_bytes()?;
    let client = Client::new(&eb.admin, TOKEN.to_owned(), Trust::Insecure)?;
    let mut puts = Vec::new();
    let mut gets = Vec::new();
    for i in 0..200 {
        let body = format!("{{\"pool\":\"pod-{}\"}}", (i * 7) % cli.pods);
        let t = Instant::now();
        client.send(
            http::Method::PUT,
            &format!("/v1/hostmap/shop{}.example.com", i * 4_999 % cli.entries),
            ReqBody::Bytes(body.into()),
            &[("content-type", "application/json")],
        )?;
        puts.push(t.elapsed());
        let t = Instant::now();
        client.send(http::Method::GET, "/v1/status", ReqBody::Empty, &[])?;
        gets.push(t.elapsed());
    }
    eb.stop()?;
    let (eb, restart) = Edgebox::start(&bin, dir.path(), None)?;
    let status = client_for(&eb)?.send(http::Method::GET, "/v1/status", ReqBody::Empty, &[])?;
    let status: serde_json::Value = serde_json::from_slice(&status)?;
    if status["hostmap_entries"] != cli.entries {
        bail!("after the restart: {} entries", status["hostmap_entries"]);
    }
    let (put, get) = (median(puts), median(gets));
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    println!(
        "| host map of {} entries over {} pods | figure |",
        cli.entries, cli.pods
    );
    println!("|---|---|");
    println!("| import (`edgebox ctl hostmap import`, parsed, checked, persisted, published) | {:.2} s |", import.as_secs_f64());
    println!(
        "| resident memory before → after | {:.1} → {:.1} MiB ({:.0} bytes per entry) |",
        mib(before),
        mib(after),
        after.saturating_sub(before) as f64 / cli.entries as f64
    );
    println!(
        "| one entry set (`PUT /v1/hostmap/{{host}}`, new TLS connection), median of 200 | {:.2} ms |",
        put.as_secs_f64() * 1e3
    );
    println!(
        "| `GET /v1/status` with the same client, median of 200 | {:.2} ms |",
        get.as_secs_f64() * 1e3
    );
    println!(
        "| so one change costs the server about | {:.2} ms |",
        put.saturating_sub(get).as_secs_f64() * 1e3
    );
    println!(
        "| restart until serving (the map and its journal of 200 changes loaded) | {:.2} s |",
        restart.as_secs_f64()
    );
    eb.stop()?;
    Ok(())
}

fn client_for(eb: &Edgebox) -> Result<Client> {
    Ok(Client::new(&eb.admin, TOKEN.to_owned(), Trust::Insecure)?)
}
