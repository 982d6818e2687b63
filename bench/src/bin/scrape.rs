//! `cargo run -p bench --release --bin scrape [-- --rounds N --interval-ms MS]`:
//! does scraping `/metrics` move the data plane's latency?
//!
//! edgebox runs on the server core alone, its control thread included, as
//! on an appliance where every CPU is a data-plane core: a scrape can only
//! take time from the core it measures. wrk (64 connections) and the
//! scraper run on the load core. Runs alternate between no scrape and
//! `/metrics` fetched every `--interval-ms` over one kept-alive HTTPS
//! connection, as Prometheus does. Prints each run, the medians and spread
//! of each kind, the ratios scraped ÷ quiet, and what one scrape cost the
//! control thread (from the kernel's per-thread run time).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bench::report::median;
use bench::runner::{LOAD_CORE, SERVER_CORE};
use clap::Parser;

#[derive(Debug, Parser)]
struct Cli {
    /// Runs of each kind (quiet, scraped), alternating.
    #[arg(long, default_value_t = 8)]
    rounds: usize,
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Milliseconds between scrapes (Prometheus' default is 15 000).
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// The edgebox binary; default: built with cargo in this profile.
    #[arg(long)]
    edgebox: Option<PathBuf>,
}

const TOKEN: &str = "bench-scrape-token-0123456789abc";

/// One kind of run's figures, a value per run.
#[derive(Default)]
struct Runs {
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        bail!("the bench needs two cores: one for edgebox, one for the load");
    }
    let bin = match cli.edgebox.clone() {
        Some(b) => b,
        None => bench::build_edgebox()?,
    };
    let mut load_core = rustix::thread::CpuSet::new();
    load_core.set(LOAD_CORE);
    rustix::thread::sched_setaffinity(None, &load_core).context("pinning to the load core")?;
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
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &SERVER_CORE.to_string()])
        .arg(&bin)
        .arg("serve")
        .arg("--data")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .args(["--cores", "1"]);
    // Killed when dropped, whatever the measurement's outcome.
    let (server, banner) = bench::Server::spawn(cmd, TOKEN).context("under taskset")?;
    measure(&cli, &server, banner)
}

fn measure(cli: &Cli, server: &bench::Server, banner: bench::Banner) -> Result<()> {
    let admin = banner.admin.context("no admin address")?;
    let admin: SocketAddr = admin
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("admin address {admin}"))?;
    let web = banner.listeners.first().context("no listener")?.1;
    let url = format!("http://{web}/");
    let pid = server.id();
    println!(
        "edgebox (pid {pid}) on CPU {SERVER_CORE} with its control thread; wrk and the scraper on CPU {LOAD_CORE}; \
         {} s runs, a scrape every {} ms",
        cli.seconds, cli.interval_ms
    );
    let mut quiet = Runs::default();
    let mut scraped = Runs::default();
    let (mut scrape_ns, mut scrape_count, mut quiet_ns) = (0u64, 0u64, 0u64);
    for round in 0..cli.rounds * 2 {
        let scraping = round % 2 == 1;
        let stop = Arc::new(AtomicBool::new(false));
        let scrapes = Arc::new(AtomicU64::new(0));
        let control_before = thread_run_ns(pid, "control")?;
        let scraper = scraping.then(|| {
            let (stop, scrapes) = (Arc::clone(&stop), Arc::clone(&scrapes));
            let interval = Duration::from_millis(cli.interval_ms);
            std::thread::spawn(move || -> Result<()> {
                let mut scraper = Scraper::connect(admin)?;
                while !stop.load(Ordering::Relaxed) {
                    let body = scraper.get("/metrics")?;
                    if !body.starts_with("# HELP") {
                        bail!("/metrics answered {:?}", &body[..body.len().min(80)]);
                    }
                    scrapes.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(interval);
                }
                Ok(())
            })
        });
        let r = bench::load::wrk(&url, 64, Duration::from_secs(cli.seconds))?;
        stop.store(true, Ordering::Relaxed);
        if let Some(s) = scraper {
            s.join()
                .map_err(|_| anyhow::anyhow!("the scraper panicked"))??;
        }
        let control_ns = thread_run_ns(pid, "control")? - control_before;
        let n = scrapes.load(Ordering::Relaxed);
        println!(
            "{:8} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  ({n} scrapes; control thread ran {:.1} ms)",
            if scraping { "scraped" } else { "quiet" },
            r.requests_per_s(),
            r.p50_ms,
            r.p99_ms,
            control_ns as f64 / 1e6,
        );
        if scraping {
            scrape_ns += control_ns;
            scrape_count += n;
        } else {
            quiet_ns += control_ns;
        }
        let into = if scraping { &mut scraped } else { &mut quiet };
        into.rps.push(r.requests_per_s());
        into.p50.push(r.p50_ms);
        into.p99.push(r.p99_ms);
    }
    let spread = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        format!("{:.3} ({lo:.3}..{hi:.3})", median(v))
    };
    println!("quiet   p99 ms median (min..max): {}", spread(&quiet.p99));
    println!("scraped p99 ms median (min..max): {}", spread(&scraped.p99));
    let ratio = |a: &[f64], b: &[f64]| median(a) / median(b);
    println!(
        "scraped ÷ quiet (medians): throughput {:.3}×, p50 {:.3}×, p99 {:.3}×",
        ratio(&scraped.rps, &quiet.rps),
        ratio(&scraped.p50, &quiet.p50),
        ratio(&scraped.p99, &quiet.p99)
    );
    // Each scraped run against the quiet run just before it: the machine's
    // slower drifts (another guest, the host) cancel out of a pair.
    let pairs: Vec<f64> = quiet
        .p99
        .iter()
        .zip(&scraped.p99)
        .map(|(q, s)| s / q)
        .collect();
    let mut sorted = pairs.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "p99 scraped ÷ quiet, run by run: median {:.3}× ({})",
        median(&pairs),
        sorted
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if scrape_count > 0 {
        // What the scraped runs' control thread ran beyond the quiet runs'
        // (timers, health, stats), per scrape.
        let extra = scrape_ns.saturating_sub(quiet_ns);
        println!(
            "one scrape: {:.0} µs of the control thread, on the data core's CPU ({scrape_count} scrapes)",
            extra as f64 / scrape_count as f64 / 1e3
        );
    }
    Ok(())
}

/// Nanoseconds the threads of `pid` named `name` have run, from
/// `/proc/PID/task/TID/schedstat` (its first field).
fn thread_run_ns(pid: u32, name: &str) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.join("schedstat"))?;
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .context("schedstat")?;
    }
    Ok(total)
}

/// A kept-alive HTTPS connection to the admin listener (what Prometheus
/// holds open between scrapes).
struct Scraper {
    stream: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
    host: String,
}

impl Scraper {
    fn connect(addr: SocketAddr) -> Result<Self> {
        let config = edgebox::ctl::client::tls_config(edgebox::ctl::client::Trust::Insecure)?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
        let tcp = TcpStream::connect(addr)?;
        tcp.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(rustls::StreamOwned::new(conn, tcp)),
            host: addr.to_string(),
        })
    }

    /// `GET path`; the body of a 200 with a Content-Length, else an error.
    fn get(&mut self, path: &str) -> Result<String> {
        write!(
            self.stream.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n",
            self.host
        )?;
        self.stream.get_mut().flush()?;
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        if !line.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {}", line.trim_end());
        }
        let mut length = None;
        loop {
            line.clear();
            if self.stream.read_line(&mut line)? == 0 {
                bail!("GET {path}: the connection closed in the headers");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = Some(v.trim().parse::<usize>()?);
                }
            }
        }
        let length = length.with_context(|| format!("GET {path}: no Content-Length"))?;
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body)?;
        Ok(String::from_utf8(body)?)
    }
}
