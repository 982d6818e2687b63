//! Benchmarks of edgebox.
//!
//! - `cargo run -p bench --release -- [--quick]` (`src/main.rs`): edgebox side
//!   by side with nginx, h2o and HAProxy. Every server is started here with a
//!   generated config on the same certificate, files and backend, pinned to
//!   core 0; wrk, h2load and this crate's rustls client load it from core 1.
//!   The results are a markdown table, CSV files and an SVG chart of ratios.
//! - `cargo run -p bench --release --bin hostmap` (`src/bin/hostmap.rs`):
//!   a 1 000 000-entry host map imported, changed an entry at a time and
//!   loaded again at a restart, with the times and the memory it takes.
//! - `cargo run -p bench --release --bin replication`
//!   (`src/bin/replication.rs`): two edgeboxes replicating on loopback:
//!   propagation of a small publish, 1 GiB of blobs, client latency meanwhile.
//! - `cargo run -p bench --release --bin certs` (`src/bin/certs.rs`):
//!   100 000 ACME certificates: start-up, memory, config changes and
//!   cold and warm handshakes, against an edgebox holding none.
//! - `cargo bench -p bench --bench micro` (`benches/micro.rs`, criterion):
//!   host → pod lookup in a 1 000 000-entry host map, route matching, BLAKE3
//!   hashing and manifest lookup, each on the code the data plane runs.
//!
//! docs/benchmarks.md has the figures and how they were made.
#![forbid(unsafe_code)]

pub mod load;
pub mod procfs;
pub mod report;
pub mod runner;
pub mod servers;
pub mod tls_client;

/// A server process the bench started: [`Server::stop`] ends it with
/// SIGTERM and waits; dropped (a failed run), it is killed.
#[derive(Debug)]
pub struct Server(pub std::process::Child);

impl Server {
    /// Starts `edgebox serve` (`cmd`: the binary with its arguments) with
    /// the admin `token` and quiet logs, and waits for its banner.
    pub fn spawn(mut cmd: std::process::Command, token: &str) -> Result<(Self, Banner)> {
        use std::process::Stdio;
        let child = cmd
            .env("EDGEBOX_ADMIN_TOKEN", token)
            .env("EDGEBOX_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting edgebox")?;
        let mut server = Self(child);
        let banner = read_banner(&mut server.0)?;
        Ok((server, banner))
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    pub fn stop(mut self) -> Result<()> {
        let pid = rustix::process::Pid::from_raw(self.0.id() as i32).context("pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        self.0.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a starting `edgebox serve` printed before `data: …`: its admin URL
/// and its listeners' addresses by scheme.
#[derive(Debug, Default)]
pub struct Banner {
    /// `https://IP:PORT`.
    pub admin: Option<String>,
    /// `(scheme, address)` per listener, in order.
    pub listeners: Vec<(String, std::net::SocketAddr)>,
}

/// Reads `child`'s banner from its piped stdout, up to the `data:` line.
pub fn read_banner(child: &mut std::process::Child) -> Result<Banner> {
    use std::io::BufRead;
    let out = child
        .stdout
        .take()
        .context("edgebox's stdout is not piped")?;
    let mut banner = Banner::default();
    for line in std::io::BufReader::new(out).lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("admin: https://") {
            banner.admin = rest.split('/').next().map(|a| format!("https://{a}"));
        }
        if let Some(rest) = line.strip_prefix("listening: ") {
            if let Some((scheme, rest)) = rest.split_once("://") {
                if let Some(addr) = rest.split('/').next().and_then(|a| a.parse().ok()) {
                    banner.listeners.push((scheme.to_owned(), addr));
                }
            }
        }
        if line.starts_with("data: ") {
            return Ok(banner);
        }
    }
    bail!("edgebox ended before it served")
}

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// `cargo build -p edgebox` in this program's own profile; the binary lands
/// beside this one. The outer cargo's CARGO_* variables are left out so the
/// nested build matches a plain one and reuses its artifacts.
pub fn build_edgebox() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "--locked", "-p", "edgebox", "--bin", "edgebox"]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| {
            k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR"
        }) {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("building edgebox failed ({status})");
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no directory")?;
    // `target/<profile>/bench` or, under `cargo test`, `target/<profile>/deps/…`.
    let dir = if dir.ends_with("deps") {
        dir.parent().context("no directory")?
    } else {
        dir
    };
    Ok(dir.join("edgebox"))
}
