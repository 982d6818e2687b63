//! `cargo run -p bench --release -- [--quick]`: edgebox against nginx, h2o
//! and HAProxy, side by side (see docs/benchmarks.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bench::report;
use bench::runner::{self, Options, Scenario, SCENARIOS};
use bench::servers::{Server, Workdir, ALL};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "edgebox side by side with nginx, h2o and HAProxy")]
struct Cli {
    /// A smoke test: one short run of everything, 200 idle connections.
    #[arg(long)]
    quick: bool,
    /// Runs of every scenario on every server (the figures are medians).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Only these scenarios (comma-separated).
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Only these servers (comma-separated: nginx, h2o, haproxy, edgebox).
    #[arg(long, value_delimiter = ',')]
    server: Vec<String>,
    /// The edgebox binary; default: built with cargo in this program's profile.
    #[arg(long)]
    edgebox: Option<PathBuf>,
    /// Where the configs, logs and results go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let scenarios = if cli.scenario.is_empty() {
        SCENARIOS.to_vec()
    } else {
        cli.scenario
            .iter()
            .map(|s| Scenario::parse(s).with_context(|| format!("no scenario {s:?}")))
            .collect::<Result<_>>()?
    };
    let servers = if cli.server.is_empty() {
        ALL.to_vec()
    } else {
        cli.server
            .iter()
            .map(|s| {
                ALL.into_iter()
                    .find(|v| v.name() == s)
                    .with_context(|| format!("no server {s:?}"))
            })
            .collect::<Result<Vec<Server>>>()?
    };
    let opts = if cli.quick {
        Options {
            runs: 1,
            duration: Duration::from_secs(1),
            warm_up: None,
            idle_connections: 200,
            handshake_threads: 8,
            scenarios,
            servers,
        }
    } else {
        Options {
            runs: cli.runs.max(1),
            duration: Duration::from_secs(cli.seconds.max(1)),
            warm_up: Some(Duration::from_secs(1)),
            idle_connections: 10_000,
            handshake_threads: 32,
            scenarios,
            servers,
        }
    };
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        bail!("the bench needs two cores: one for the server, one for the load");
    }
    // Everything of ours (client threads, wrk, h2load) runs on the load core.
    let mut load_core = rustix::thread::CpuSet::new();
    load_core.set(runner::LOAD_CORE);
    rustix::thread::sched_setaffinity(None, &load_core).context("pinning to the load core")?;
    let open_files = raise_open_files()?;
    // Each server needs a descriptor per idle connection, HAProxy two.
    let opts = Options {
        idle_connections: opts
            .idle_connections
            .min(usize::try_from(open_files.saturating_sub(200) / 2)?),
        ..opts
    };
    runner::install_tools()?;
    let edgebox = match cli.edgebox {
        Some(path) => path,
        None => bench::build_edgebox()?,
    };
    std::fs::create_dir_all(&cli.out)?;
    let work = Workdir {
        dir: std::path::absolute(&cli.out)?,
        edgebox: std::path::absolute(edgebox)?,
        open_files,
    };
    let cert = work.prepare()?;
    let samples = runner::run_all(&opts, &work, &cert)?;
    let rows = report::summarize(&samples);
    let table = report::markdown(&rows);
    println!("{table}");
    std::fs::write(work.dir.join("results.md"), &table)?;
    std::fs::write(work.dir.join("results.csv"), report::summary_csv(&rows))?;
    std::fs::write(work.dir.join("runs.csv"), report::samples_csv(&samples))?;
    let title = format!(
        "edgebox and its peers, {} run(s) of {} s, medians",
        opts.runs,
        opts.duration.as_secs()
    );
    report::chart(&rows, &work.dir.join("results.svg"), &title)?;
    eprintln!(
        "wrote {0}/results.md, results.csv, runs.csv and results.svg",
        cli.out.display()
    );
    Ok(())
}

/// 10 000 idle connections need more descriptors than the usual 1024:
/// raises the soft limit to the hard one (at most 65 536) and returns it.
fn raise_open_files() -> Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let want = limit.maximum.map_or(65_536, |m| m.min(65_536));
    if limit.current.is_none_or(|c| c < want) {
        let raised = Rlimit {
            current: Some(want),
            maximum: limit.maximum,
        };
        setrlimit(Resource::Nofile, raised).context("raising the open-file limit")?;
    }
    if want < 20_200 {
        eprintln!(
            "bench: the open-file limit is {want}: idle-memory holds fewer than 10 000 connections"
        );
    }
    Ok(want)
}
