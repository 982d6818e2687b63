//! `cargo run -p bench --release --bin scrape [-- --rounds N]`: does
//! scraping `/metrics` move the data plane's latency? edgebox on one core,
//! wrk keeping it busy (64 connections, 5 s a run), alternately with no
//! scrape and with `/metrics` fetched every 100 ms (ten times what a
//! Prometheus at 1 s would ask) on the admin listener meanwhile. Prints
//! each run and the medians' ratios, scraped ÷ quiet, from one run of the
//! binary.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use edgebox::ctl::client::{Client, ReqBody, Trust};

#[derive(Debug, Parser)]
struct Cli {
    /// Runs of each kind (quiet, scraped), alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The edgebox binary; default: built with cargo in this profile.
    #[arg(long)]
    edgebox: Option<PathBuf>,
}

const TOKEN: &str = "bench-scrape-token-0123456789abc";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let bin = match cli.edgebox {
        Some(b) => b,
        None => bench::build_edgebox()?,
    };
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("edgebox.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "listeners": [{"name": "web", "address": "127.0.0.1:0", "protocol": "http"}],
            "routes": [{"action": {"respond": {"status": 200, "body": "hello\n"}}}],
            "admin": {"address": "127.0.0.1:0"},
        })
        .to_string(),
    )?;
    let mut child = Command::new(&bin)
        .arg("serve")
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .args(["--cores", "1"])
        .env("EDGEBOX_ADMIN_TOKEN", TOKEN)
        .env("EDGEBOX_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting edgebox")?;
    let banner = bench::read_banner(&mut child)?;
    let admin = banner.admin.context("no admin address")?;
    let web = banner.listeners.first().context("no listener")?.1;
    let url = format!("http://{web}/");
    let mut quiet = (Vec::new(), Vec::new(), Vec::new());
    let mut scraped = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..cli.rounds * 2 {
        let scraping = round % 2 == 1;
        let stop = Arc::new(AtomicBool::new(false));
        let scrapes = Arc::new(AtomicU64::new(0));
        let scraper = scraping.then(|| {
            let (stop, scrapes, admin) = (Arc::clone(&stop), Arc::clone(&scrapes), admin.clone());
            std::thread::spawn(move || -> Result<()> {
                let client = Client::new(&admin, TOKEN.to_owned(), Trust::Insecure)?;
                while !stop.load(Ordering::Relaxed) {
                    client.send(http::Method::GET, "/metrics", ReqBody::Empty, &[])?;
                    scrapes.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(())
            })
        });
        let r = bench::load::wrk(&url, 64, Duration::from_secs(5))?;
        stop.store(true, Ordering::Relaxed);
        if let Some(s) = scraper {
            s.join()
                .map_err(|_| anyhow::anyhow!("the scraper panicked"))??;
        }
        println!(
            "{:8} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  ({} scrapes)",
            if scraping { "scraped" } else { "quiet" },
            r.requests_per_s(),
            r.p50_ms,
            r.p99_ms,
            scrapes.load(Ordering::Relaxed)
        );
        let into = if scraping { &mut scraped } else { &mut quiet };
        into.0.push(r.requests_per_s());
        into.1.push(r.p50_ms);
        into.2.push(r.p99_ms);
    }
    let _ = child.kill();
    let _ = child.wait();
    let ratio = |a: &[f64], b: &[f64]| bench::report::median(a) / bench::report::median(b);
    println!(
        "scraped ÷ quiet (medians): throughput {:.3}×, p50 {:.3}×, p99 {:.3}×",
        ratio(&scraped.0, &quiet.0),
        ratio(&scraped.1, &quiet.1),
        ratio(&scraped.2, &quiet.2)
    );
    Ok(())
}
