//! `edgebox serve`: start-up, the data-plane cores, and shutdown.
//!
//! Order of start-up, each step complete before the next: read and check the
//! config (a bad one stops here, naming the field), raise the locked-memory
//! limit, bind every socket, start the control plane (signals, ticket
//! rotation), start one glommio executor per core. Nothing serves until all of
//! it has succeeded.

pub mod conn;
pub mod core;
pub mod listeners;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError, Protocol};
use crate::hostmap::HostMap;
use crate::snapshot::{Generations, ListenerKey, Shared, Snapshot};
use crate::tls::tickets::{TicketKeyError, TicketKeys};

/// Memory glommio registers with io_uring per executor. The data plane does
/// network IO only, so it needs little.
const IO_MEMORY: usize = 2 << 20;
/// Locked memory each core needs: `IO_MEMORY` plus headroom for the rings.
const MEMLOCK_PER_CORE: u64 = (IO_MEMORY as u64) + (1 << 20);

#[derive(Debug)]
pub struct ServeOptions {
    pub config: Option<PathBuf>,
    pub data: PathBuf,
    pub cores: usize,
}

/// Why `edgebox serve` could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory cannot be created or written.
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file cannot be read.
    #[error("cannot read config {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config is invalid; nothing was started.
    #[error("invalid config {file}: {source}")]
    Config { file: String, source: ConfigError },
    /// The default certificate could not be made.
    #[error(transparent)]
    SelfSigned(#[from] crate::tls::self_signed::SelfSignedError),
    /// Session-ticket keys could not be generated.
    #[error(transparent)]
    Tickets(#[from] TicketKeyError),
    /// The locked-memory limit is too low and cannot be raised.
    #[error(transparent)]
    Memlock(#[from] crate::limits::MemlockError),
    /// A listener address cannot be bound.
    #[error(transparent)]
    Bind(#[from] listeners::BindError),
    /// A core's executor could not start (io_uring unavailable?).
    #[error("cannot start the executor for core {core}: {message}. edgebox needs io_uring (Linux 5.8 or newer, not disabled by sysctl kernel.io_uring_disabled or a seccomp filter)")]
    Executor { core: usize, message: String },
    /// The control-plane thread could not start.
    #[error("cannot start the control plane: {0}")]
    ControlPlane(std::io::Error),
}

/// A config read from its file (or the embedded default), with what is needed
/// to build its snapshot.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// Relative certificate paths are taken from here.
    pub base: PathBuf,
    /// For messages: the file, or "(embedded default)".
    pub source: String,
}

/// Reads and parses the config, or makes the embedded default (creating its
/// self-signed certificate under `data` on first use).
pub fn read_config(config: Option<&Path>, data: &Path) -> Result<Loaded, ServeError> {
    let Some(path) = config else {
        let (cert, key, created) = crate::tls::self_signed::ensure(data)?;
        if created {
            tracing::info!(
                "created a self-signed certificate for localhost: {}",
                cert.display()
            );
        }
        return Ok(Loaded {
            config: crate::config::embedded_default(&cert, &key),
            base: data.to_owned(),
            source: "(embedded default)".to_owned(),
        });
    };
    let bytes = std::fs::read(path).map_err(|source| ServeError::ReadConfig {
        path: path.to_owned(),
        source,
    })?;
    let source = path.display().to_string();
    let config = Config::parse(&bytes).map_err(|e| ServeError::Config {
        file: source.clone(),
        source: e,
    })?;
    Ok(Loaded {
        config,
        base: path.parent().map(Path::to_owned).unwrap_or_default(),
        source,
    })
}

impl Loaded {
    /// Checks everything that needs IO (certificates, backend names) and
    /// compiles the snapshot.
    pub fn build(
        self,
        hostmap: &HostMap,
        tickets: &Arc<TicketKeys>,
        generations: Generations,
    ) -> Result<Snapshot, ServeError> {
        let file = self.source;
        Snapshot::build(self.config, hostmap, &self.base, tickets, generations)
            .map_err(|source| ServeError::Config { file, source })
    }
}

/// Runs until SIGTERM or SIGINT, then drains and returns.
pub fn run(opts: ServeOptions) -> Result<(), ServeError> {
    std::fs::create_dir_all(&opts.data).map_err(|source| ServeError::DataDir {
        path: opts.data.clone(),
        source,
    })?;
    let loaded = read_config(opts.config.as_deref(), &opts.data)?;
    let tickets = TicketKeys::new(loaded.config.tls.ticket_rotation_s)?;
    let generations = Generations {
        config: 1,
        hostmap: 0,
    };
    let mut snapshot = loaded.build(&HostMap::default(), &tickets, generations)?;

    crate::limits::ensure_memlock(MEMLOCK_PER_CORE * opts.cores as u64)?;
    let bound = listeners::bind(&snapshot.config.listeners, opts.cores)?;
    // The config served says which port a listener on port 0 got.
    for (l, addr) in snapshot.config.listeners.iter_mut().zip(&bound.addresses) {
        l.address = *addr;
    }

    let banner = banner(&snapshot, &bound.addresses, &opts);
    let keys: Vec<ListenerKey> = snapshot
        .config
        .listeners
        .iter()
        .map(ListenerKey::of)
        .collect();
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(snapshot),
        tickets,
        shutting_down: AtomicBool::new(false),
        stats: (0..opts.cores).map(|_| Arc::default()).collect(),
        new_sockets: Mutex::default(),
    });
    crate::control::start(Arc::clone(&shared)).map_err(ServeError::ControlPlane)?;

    let cpus = crate::limits::allowed_cpus();
    let mut handles = Vec::with_capacity(opts.cores);
    for (id, sockets) in bound.per_core.into_iter().enumerate() {
        let sockets: Vec<_> = sockets
            .into_iter()
            .map(|(i, fd)| (keys[i].clone(), fd))
            .collect();
        let core_shared = Arc::clone(&shared);
        let placement = match cpus.get(id % cpus.len().max(1)) {
            Some(&cpu) if opts.cores <= cpus.len() => glommio::Placement::Fixed(cpu),
            _ => glommio::Placement::Unbound,
        };
        // The core says it runs; if its executor cannot be made (no io_uring,
        // no locked memory), the closure is dropped unrun and `started` ends.
        let (started_tx, started) = std::sync::mpsc::sync_channel::<()>(1);
        let handle = glommio::LocalExecutorBuilder::new(placement)
            .name(&format!("core{id}"))
            .io_memory(IO_MEMORY)
            .spawn(move || {
                let _ = started_tx.send(());
                core::run(id, sockets, core_shared)
            })
            .map_err(|e| executor_error(id, &e))?;
        if started.recv().is_err() {
            let message = match handle.join() {
                Err(e) => e.to_string(),
                Ok(()) => "stopped during start-up".to_owned(),
            };
            shared
                .shutting_down
                .store(true, std::sync::atomic::Ordering::Release);
            return Err(ServeError::Executor { core: id, message });
        }
        handles.push(handle);
    }
    print!("{banner}");
    let mut failed = None;
    for (id, h) in handles.into_iter().enumerate() {
        if let Err(e) = h.join() {
            tracing::error!(core = id, "core stopped abnormally: {e}");
            failed.get_or_insert(ServeError::Executor {
                core: id,
                message: e.to_string(),
            });
        }
    }
    match failed {
        Some(e) => Err(e),
        None => {
            tracing::info!("all cores stopped; exiting");
            Ok(())
        }
    }
}

fn executor_error(core: usize, e: &glommio::GlommioError<()>) -> ServeError {
    ServeError::Executor {
        core,
        message: e.to_string(),
    }
}

fn banner(snapshot: &Snapshot, addresses: &[std::net::SocketAddr], opts: &ServeOptions) -> String {
    use std::fmt::Write;
    let mut s = format!(
        "edgebox {} serving on {} core{}\n",
        env!("CARGO_PKG_VERSION"),
        opts.cores,
        if opts.cores == 1 { "" } else { "s" }
    );
    for (l, addr) in snapshot.config.listeners.iter().zip(addresses) {
        let scheme = match l.protocol {
            Protocol::Https => "https",
            Protocol::Http => "http",
        };
        let note = match l.redirect_to_https_port {
            Some(p) => format!(", redirects to HTTPS port {p}"),
            None => String::new(),
        };
        let _ = writeln!(s, "listening: {scheme}://{addr}/ ({}{note})", l.name);
    }
    let _ = writeln!(s, "data: {}", opts.data.display());
    match &opts.config {
        Some(path) => {
            let _ = writeln!(s, "config: {}", path.display());
        }
        None => {
            let https = snapshot
                .config
                .listeners
                .iter()
                .zip(addresses)
                .find(|(l, _)| l.protocol == Protocol::Https);
            if let Some((_, addr)) = https {
                let _ = writeln!(
                    s,
                    "config: embedded default. Open https://localhost:{}/ (the certificate is self-signed: curl -k, or accept it in the browser)",
                    addr.port()
                );
            }
        }
    }
    s
}
