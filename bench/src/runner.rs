//! The scenarios, and one run of every server through them.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::load::{self, LoadResult};
use crate::procfs;
use crate::servers::{self, Running, Server, Workdir};
use crate::tls_client;

/// The server runs on this core; the load generators and the backend on the
/// other.
pub const SERVER_CORE: usize = 0;
pub const LOAD_CORE: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    IdleMemory,
    Static1k,
    Static1m,
    Proxy,
    Handshake,
    H2Static1k,
}

/// In the order they run: idle memory first, on servers just started.
pub const SCENARIOS: [Scenario; 6] = [
    Scenario::IdleMemory,
    Scenario::Static1k,
    Scenario::Static1m,
    Scenario::Proxy,
    Scenario::Handshake,
    Scenario::H2Static1k,
];

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::IdleMemory => "idle-memory",
            Scenario::Static1k => "static-1k-https",
            Scenario::Static1m => "static-1m-https",
            Scenario::Proxy => "proxy-https",
            Scenario::Handshake => "handshake",
            Scenario::H2Static1k => "h2-static-1k",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        SCENARIOS.into_iter().find(|s| s.name() == name)
    }

    /// What the headline figure counts.
    pub fn unit(self) -> &'static str {
        match self {
            Scenario::IdleMemory => "KiB/conn",
            Scenario::Static1m => "MiB/s",
            Scenario::Handshake => "conn/s",
            _ => "req/s",
        }
    }

    pub fn higher_is_better(self) -> bool {
        self != Scenario::IdleMemory
    }

    pub fn runs_on(self, server: Server) -> bool {
        match self {
            Scenario::Static1k | Scenario::Static1m | Scenario::H2Static1k => server.serves_files(),
            Scenario::IdleMemory | Scenario::Proxy | Scenario::Handshake => true,
        }
    }
}

/// One scenario, one server, one run.
#[derive(Debug, Clone)]
pub struct Sample {
    pub scenario: Scenario,
    pub server: Server,
    pub run: usize,
    /// In `scenario.unit()`.
    pub value: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Server CPU time per request (or handshake), µs.
    pub server_us: Option<f64>,
    /// Cores' worth of CPU the server used (1.0: all of its core).
    pub server_cpu: f64,
    /// Cores' worth the load core's processes used: load generator and backend.
    pub load_cpu: f64,
    /// Anything else worth printing.
    pub note: String,
}

impl Sample {
    pub fn bottleneck(&self) -> &'static str {
        if self.scenario == Scenario::IdleMemory {
            "-"
        } else if self.server_cpu >= 0.9 {
            "server CPU"
        } else if self.load_cpu >= 0.9 {
            "load core"
        } else {
            "neither (latency-bound)"
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub runs: usize,
    pub duration: Duration,
    /// A discarded load run before each measured one.
    pub warm_up: Option<Duration>,
    pub idle_connections: usize,
    pub handshake_threads: usize,
    pub scenarios: Vec<Scenario>,
    pub servers: Vec<Server>,
}

/// Every run: start the servers (fresh, so idle memory is measured on a
/// clean process), go through the scenarios, stop them. The server order
/// rotates from run to run.
pub fn run_all(
    opts: &Options,
    work: &Workdir,
    cert: &rustls::pki_types::CertificateDer<'static>,
) -> Result<Vec<Sample>> {
    let backend = servers::start_backend(work, LOAD_CORE)?;
    let mut samples = Vec::new();
    for run in 0..opts.runs {
        let mut order = opts.servers.clone();
        let len = order.len().max(1);
        order.rotate_left(run % len);
        let mut running = Vec::new();
        for &server in &order {
            running.push((server, servers::start_server(work, server, SERVER_CORE)?));
        }
        for &scenario in &opts.scenarios {
            for (server, proc_) in running.iter().filter(|(s, _)| scenario.runs_on(*s)) {
                let sample = measure(opts, work, cert, scenario, *server, proc_, &backend, run)
                    .with_context(|| {
                        format!("{} on {} (run {})", scenario.name(), server.name(), run + 1)
                    })?;
                eprintln!(
                    "run {}/{} {:16} {:8} {:>10.1} {:9} server {:>3.0}% load {:>3.0}% {}",
                    run + 1,
                    opts.runs,
                    scenario.name(),
                    server.name(),
                    sample.value,
                    scenario.unit(),
                    sample.server_cpu * 100.0,
                    sample.load_cpu * 100.0,
                    sample.note
                );
                samples.push(sample);
            }
        }
        for (_, proc_) in running {
            proc_.stop()?;
        }
    }
    backend.stop()?;
    Ok(samples)
}

/// CPU seconds of the server and the backend over one measurement.
struct Meter {
    server_pid: u32,
    backend_pid: u32,
    server: f64,
    backend: f64,
    started: Instant,
}

impl Meter {
    fn start(server: &Running, backend: &Running) -> Self {
        Self {
            server_pid: server.pid(),
            backend_pid: backend.pid(),
            server: procfs::cpu_seconds(server.pid()),
            backend: procfs::cpu_seconds(backend.pid()),
            started: Instant::now(),
        }
    }

    /// (wall seconds, server CPU seconds, backend CPU seconds)
    fn stop(&self) -> (f64, f64, f64) {
        (
            self.started.elapsed().as_secs_f64(),
            procfs::cpu_seconds(self.server_pid) - self.server,
            procfs::cpu_seconds(self.backend_pid) - self.backend,
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn measure(
    opts: &Options,
    work: &Workdir,
    cert: &rustls::pki_types::CertificateDer<'static>,
    scenario: Scenario,
    server: Server,
    proc_: &Running,
    backend: &Running,
    run: usize,
) -> Result<Sample> {
    let base = format!("https://127.0.0.1:{}", server.port());
    let sample = |value, p50, p99, server_us, server_cpu, load_cpu, note| Sample {
        scenario,
        server,
        run,
        value,
        p50_ms: p50,
        p99_ms: p99,
        server_us,
        server_cpu,
        load_cpu,
        note,
    };
    // The wrk and h2load scenarios share their accounting.
    let from_load = |load: &dyn Fn(Duration) -> Result<LoadResult>,
                     value: &dyn Fn(&LoadResult) -> f64|
     -> Result<Sample> {
        if let Some(warm_up) = opts.warm_up {
            load(warm_up)?;
        }
        let meter = Meter::start(proc_, backend);
        let r = load(opts.duration)?;
        let (wall, server_s, backend_s) = meter.stop();
        Ok(sample(
            value(&r),
            Some(r.p50_ms),
            Some(r.p99_ms),
            Some(server_s / r.requests as f64 * 1e6),
            server_s / wall,
            (r.cpu_s + backend_s) / wall,
            format!("{} requests", r.requests),
        ))
    };
    let wrk = |path: &'static str, conns: u32| {
        let url = format!("{base}{path}");
        move |d: Duration| load::wrk(&url, conns, d)
    };
    match scenario {
        Scenario::Static1k => from_load(&wrk("/1k.bin", 64), &LoadResult::requests_per_s),
        Scenario::Static1m => {
            from_load(&wrk("/1m.bin", 16), &|r| r.bytes_per_s / (1024.0 * 1024.0))
        }
        Scenario::Proxy => from_load(&wrk("/proxy/1k.bin", 64), &LoadResult::requests_per_s),
        Scenario::H2Static1k => {
            let log = work.dir.join(format!("h2load-{}.log", server.name()));
            let url = format!("{base}/1k.bin");
            from_load(
                &|d| load::h2load(&url, 32, 10, d, &log),
                &LoadResult::requests_per_s,
            )
        }
        Scenario::Handshake => {
            let client = tls_client::Client::new(server.addr(), cert.clone(), "/proxy/1k.bin")?;
            let own = procfs::own_cpu_seconds();
            let meter = Meter::start(proc_, backend);
            let h = tls_client::handshake_load(&client, opts.handshake_threads, opts.duration)?;
            let (wall, server_s, backend_s) = meter.stop();
            let client_s = procfs::own_cpu_seconds() - own;
            if h.resumed > 0 {
                bail!(
                    "{} of {} handshakes were resumed: the server allowed resumption",
                    h.resumed,
                    h.full + h.resumed
                );
            }
            if h.verified == 0 {
                bail!("no server signature was verified");
            }
            Ok(sample(
                h.full as f64 / h.seconds,
                Some(h.p50_ms),
                Some(h.p99_ms),
                Some(server_s / h.full as f64 * 1e6),
                server_s / wall,
                (client_s + backend_s) / wall,
                format!(
                    "{} full handshakes, 0 resumed, {} signatures verified",
                    h.full, h.verified
                ),
            ))
        }
        Scenario::IdleMemory => {
            let client = tls_client::Client::new(server.addr(), cert.clone(), idle_path(server))?;
            let before = procfs::rss_bytes(proc_.pid());
            let mut idle = tls_client::open_idle(&client, opts.idle_connections, 8)?;
            std::thread::sleep(Duration::from_secs(1));
            let after = procfs::rss_bytes(proc_.pid());
            let open = idle.still_open();
            if open < idle.len() {
                bail!(
                    "the server closed {} of {} idle connections",
                    idle.len() - open,
                    idle.len()
                );
            }
            let per_conn = after.saturating_sub(before) as f64 / idle.len() as f64 / 1024.0;
            let note = format!(
                "{} connections open, RSS {:.1} → {:.1} MiB",
                idle.len(),
                before as f64 / 1048576.0,
                after as f64 / 1048576.0
            );
            drop(idle);
            Ok(sample(per_conn, None, None, None, 0.0, 0.0, note))
        }
    }
}

/// Every server's idle connection has served one request: a file where it
/// serves files, else the proxied one.
fn idle_path(server: Server) -> &'static str {
    if server.serves_files() {
        "/1k.bin"
    } else {
        "/proxy/1k.bin"
    }
}

/// Installs what is missing of the peers and load generators (Debian's
/// packages).
pub fn install_tools() -> Result<()> {
    let wanted = [
        ("nginx", "nginx"),
        ("h2o", "h2o"),
        ("haproxy", "haproxy"),
        ("wrk", "wrk"),
        ("h2load", "nghttp2-client"),
        ("taskset", "util-linux"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing: {}", missing.join(" "));
    let apt = |args: &[&str]| -> Result<()> {
        let status = std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!(
                "apt-get {} failed ({status}); run it as root",
                args.join(" ")
            );
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| Path::new(&d).join(cmd).is_file())
    }) || ["/usr/sbin", "/sbin"]
        .iter()
        .any(|d| Path::new(d).join(cmd).is_file())
}
