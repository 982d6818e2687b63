//! `edgebox serve`: start-up, the data-plane cores, and shutdown.
//!
//! Order of start-up, each step complete before the next: read and check the
//! config (a bad one stops here, naming the field), raise the locked-memory
//! limit, bind every socket, start the control plane (signals, ticket
//! rotation), start one glommio executor per core. Nothing serves until all of
//! it has succeeded.

mod admission;
pub mod conn;
pub mod core;
pub mod frame_budget;
pub mod listeners;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError, Protocol};
use crate::hostmap::HostMap;
use crate::snapshot::{Exit, Generations, ListenerKey, Shared, Snapshot, Upstreams};
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
    /// Where `/v1/logs` reads recent events from.
    pub logs: Arc<crate::logging::LogRing>,
    /// Started by edgebox's PID 1 on the appliance: the appliance's default
    /// config (all addresses, standard ports), and power-off and reboot
    /// requests end the process for PID 1 to carry out.
    pub appliance: bool,
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
    /// The persisted config or host map cannot be read back.
    #[error("persisted state: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The config given could not be persisted.
    #[error("cannot persist the config: {0}")]
    Persist(std::io::Error),
    /// The content store's sites cannot be read.
    #[error("content store: {0}")]
    Content(String),
    /// The admin token cannot be made or read.
    #[error("admin token: {0}")]
    Token(#[from] crate::admin::token::TokenError),
    /// The replication identity or catalog cannot be made or read.
    #[error("replication: {0}")]
    Replication(String),
    /// The admin API's address cannot be bound or its certificate used.
    #[error("admin API on {address}: {message}")]
    Admin {
        address: std::net::SocketAddr,
        message: String,
    },
}

/// A config read from its file (or the persisted one, or the embedded
/// default), with what is needed to build its snapshot.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// Relative certificate paths are taken from here.
    pub base: PathBuf,
    /// For messages: the file, "(persisted)" or "(embedded default)".
    pub source: String,
    /// The generation to serve it as; `None`: new, persist it as the next.
    pub generation: Option<u64>,
}

/// The config to serve: `--config FILE` if given (it wins, and is persisted as
/// the next generation), else the last config accepted and persisted in the
/// data directory, else the embedded default (creating its self-signed
/// certificate under `data` on first use).
pub fn read_config(
    config: Option<&Path>,
    data: &Path,
    appliance: bool,
) -> Result<Loaded, ServeError> {
    if let Some(path) = config {
        return read_config_file(path);
    }
    if let Some((generation, config)) = crate::store::Store::new(data).load_config()? {
        return Ok(Loaded {
            config,
            base: data.to_owned(),
            source: "(persisted)".to_owned(),
            generation: Some(generation),
        });
    }
    let (cert, key, created) = crate::tls::self_signed::ensure(data, "localhost", &[])?;
    if created {
        tracing::info!(
            "created a self-signed certificate for localhost: {}",
            cert.display()
        );
    }
    Ok(Loaded {
        config: if appliance {
            crate::config::appliance_default(&cert, &key)
        } else {
            crate::config::embedded_default(&cert, &key)
        },
        base: data.to_owned(),
        source: "(embedded default)".to_owned(),
        generation: Some(0),
    })
}

/// Reads a config file; its relative certificate paths are made absolute so
/// that the persisted copy means the same.
pub fn read_config_file(path: &Path) -> Result<Loaded, ServeError> {
    let bytes = std::fs::read(path).map_err(|source| ServeError::ReadConfig {
        path: path.to_owned(),
        source,
    })?;
    let source = path.display().to_string();
    let mut config = Config::parse(&bytes).map_err(|e| ServeError::Config {
        file: source.clone(),
        source: e,
    })?;
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let base = std::fs::canonicalize(&base).unwrap_or(base);
    for c in &mut config.certificates {
        c.cert = base.join(&c.cert);
        c.key = base.join(&c.key);
    }
    Ok(Loaded {
        config,
        base,
        source,
        generation: None,
    })
}

impl Loaded {
    /// Checks everything that needs IO (certificates, backend names) and
    /// compiles the snapshot.
    /// `upstreams` gets the names of its backends resolved.
    pub fn build(
        self,
        hostmap: &HostMap,
        sites: &crate::snapshot::Sites,
        tls: &crate::snapshot::TlsState,
        generations: Generations,
        upstreams: &mut Upstreams,
    ) -> Result<Snapshot, ServeError> {
        let file = self.source;
        let fail = |source| ServeError::Config {
            file: file.clone(),
            source,
        };
        // A config given now must resolve; the persisted one starts with
        // what resolves, and the rest is looked up again while running.
        let strict = self.generation.is_none();
        let resolved = crate::discovery::resolve_at_start(&self.config, strict).map_err(fail)?;
        upstreams.resolved.extend(resolved);
        Snapshot::build(
            self.config,
            hostmap,
            sites,
            &self.base,
            tls,
            generations,
            &crate::snapshot::Resolving {
                upstreams,
                extra: &Default::default(),
            },
        )
        .map_err(fail)
    }
}

/// Runs until SIGTERM or SIGINT, then drains and returns.
pub fn run(opts: ServeOptions) -> Result<Exit, ServeError> {
    std::fs::create_dir_all(&opts.data).map_err(|source| ServeError::DataDir {
        path: opts.data.clone(),
        source,
    })?;
    let store = crate::store::Store::new(&opts.data);
    let loaded = read_config(opts.config.as_deref(), &opts.data, opts.appliance)?;
    let tls = crate::snapshot::TlsState {
        tickets: TicketKeys::new(loaded.config.tls.ticket_rotation_s)?,
        managed: crate::tls::managed::Managed::new(),
    };
    let (hostmap_generation, hostmap, journal) = store.load_hostmap()?.unwrap_or_default();
    let persist = loaded.generation.is_none();
    let config_generation = match loaded.generation {
        Some(g) => g,
        None => store.load_config().ok().flatten().map_or(0, |(g, _)| g) + 1,
    };
    let generations = Generations {
        config: config_generation,
        hostmap: hostmap_generation,
        sites: 0,
    };
    let content_dir = opts.data.join("store");
    let content =
        edgebox_storage::Store::open(&content_dir).map_err(|source| ServeError::DataDir {
            path: content_dir.clone(),
            source,
        })?;
    let sites = crate::control::state::load_sites(&content)
        .map_err(|e| ServeError::Content(e.to_string()))?;
    let mut upstreams = Upstreams::default();
    let mut snapshot = loaded.build(&hostmap, &sites, &tls, generations, &mut upstreams)?;

    crate::limits::ensure_memlock(MEMLOCK_PER_CORE * opts.cores as u64)?;
    let nofile = crate::limits::raise_nofile();
    tracing::info!(
        open_files = nofile,
        max_connections = snapshot
            .client
            .max_connections
            .unwrap_or_else(|| crate::limits::connections_for(nofile)),
        "limits"
    );
    let bound = listeners::bind(
        &snapshot.config.listeners,
        opts.cores,
        &listeners::virtual_addresses(snapshot.config.failover.as_ref()),
    )?;
    // The config served says which port a listener on port 0 got.
    for (l, addr) in snapshot.config.listeners.iter_mut().zip(&bound.addresses) {
        l.address = *addr;
    }
    let admin = admin_listener(&snapshot.config.admin.address, &opts.data)?;
    snapshot.config.admin.address = admin.address;
    let replication_socket = match snapshot.config.replication.listen {
        Some(addr) => Some(
            crate::replication::bind(addr).map_err(|e| ServeError::Config {
                file: "(replication)".into(),
                source: ConfigError::new("replication.listen", e),
            })?,
        ),
        None => None,
    };
    let identity = crate::replication::Identity::load_or_create(&opts.data)
        .map_err(|e| ServeError::Replication(e.to_string()))?;
    let mut replica = crate::replication::Replica::open(crate::replication::replica::Start {
        data: &opts.data,
        content: &content,
        config: &snapshot.config,
        tickets: &tls.tickets,
        limits: Default::default(),
    })
    .map_err(|e| ServeError::Replication(e.to_string()))?;
    replica.new_socket = replication_socket;
    replica.fingerprint = identity.fingerprint().to_owned();
    if persist {
        store
            .save_config(config_generation, &snapshot.config)
            .map_err(ServeError::Persist)?;
    }
    let preset = std::env::var("EDGEBOX_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let (token, new_token) = crate::admin::token::TokenStore::open(&opts.data, preset.as_deref())?;

    let banner = banner(&snapshot, &bound.addresses, &opts, new_token.as_deref());
    upstreams.commit(&snapshot, crate::clock::now_ms());
    let config = snapshot.config.clone();
    let keys: Vec<ListenerKey> = snapshot
        .config
        .listeners
        .iter()
        .map(ListenerKey::of)
        .collect();
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(snapshot),
        tickets: tls.tickets,
        managed: tls.managed,
        shutting_down: AtomicBool::new(false),
        hold_accepts: AtomicBool::new(false),
        exit: std::sync::atomic::AtomicU8::new(0),
        appliance: opts.appliance,
        stats: (0..opts.cores).map(|_| Arc::default()).collect(),
        blobs: content.blobs().clone(),
        new_sockets: Mutex::default(),
        open_connections: Default::default(),
        auto_max_connections: crate::limits::connections_for(nofile),
        failover: crate::failover::Slot::new(opts.data.clone()),
    });
    let (rebind_tx, rebind_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut control = crate::control::Control {
        shared: Arc::clone(&shared),
        store,
        data: opts.data.clone(),
        config,
        hostmap: Arc::new(hostmap),
        content,
        sites,
        gens: generations,
        cores: opts.cores,
        started: std::time::Instant::now(),
        token,
        logs: opts.logs.clone(),
        admin_rebind: rebind_tx,
        upstreams,
        health: Default::default(),
        resolver: None,
        hostmap_journal: journal,
        replica,
        stopping: false,
        cert_expiry: Default::default(),
        acme: Default::default(),
    };
    control.open_acme_certs();
    crate::control::start(crate::control::Start {
        control,
        identity: std::sync::Arc::new(identity),
        admin_listener: admin.listener,
        admin_tls: admin.tls,
        admin_rebind: rebind_rx,
    })
    .map_err(ServeError::ControlPlane)?;

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
    // Addresses a previous run held when it died (under a supervisor
    // other than edgebox's own) go first; they are taken again only once
    // every core serves.
    match crate::failover::guard::release(&opts.data) {
        Ok(gone) if !gone.is_empty() => {
            tracing::warn!(
                ?gone,
                "failover: removed the virtual addresses a previous run left"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::error!("failover: removing what a previous run held: {e}"),
    }
    shared
        .failover
        .apply(shared.snapshot.load().config.failover.as_ref());
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
    shared.failover.stop();
    match failed {
        Some(e) => Err(e),
        None => {
            tracing::info!("all cores stopped; exiting");
            Ok(Exit::from_u8(
                shared.exit.load(std::sync::atomic::Ordering::Acquire),
            ))
        }
    }
}

fn executor_error(core: usize, e: &glommio::GlommioError<()>) -> ServeError {
    ServeError::Executor {
        core,
        message: e.to_string(),
    }
}

struct AdminListener {
    listener: std::net::TcpListener,
    address: std::net::SocketAddr,
    tls: Arc<rustls::ServerConfig>,
}

/// Binds the admin API and loads (or makes) its self-signed certificate.
fn admin_listener(
    address: &std::net::SocketAddr,
    data: &Path,
) -> Result<AdminListener, ServeError> {
    let fail = |message: String| ServeError::Admin {
        address: *address,
        message,
    };
    let listener = crate::control::state::bind_admin(*address).map_err(|e| fail(e.to_string()))?;
    let bound = listener.local_addr().map_err(|e| fail(e.to_string()))?;
    let extra: Vec<String> = match address.ip() {
        ip if ip.is_unspecified() || ip.is_loopback() => Vec::new(),
        ip => vec![ip.to_string()],
    };
    let (cert, key, _) = crate::tls::self_signed::ensure(data, "admin", &extra)?;
    let tls = crate::tls::admin_server_config(&cert, &key).map_err(fail)?;
    Ok(AdminListener {
        listener,
        address: bound,
        tls,
    })
}

fn banner(
    snapshot: &Snapshot,
    addresses: &[std::net::SocketAddr],
    opts: &ServeOptions,
    new_token: Option<&str>,
) -> String {
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
    let admin = snapshot.config.admin.address;
    let _ = writeln!(
        s,
        "admin: https://{admin}/ (certificate {})",
        opts.data.join("tls/admin.crt").display()
    );
    match new_token {
        Some(t) => {
            let _ = writeln!(
                s,
                "admin token: {t}\n  (shown this once; only its hash is kept, in {}; rotate it with `edgebox ctl token rotate`)",
                opts.data.join("admin/token.sha256").display()
            );
        }
        None => {
            let _ = writeln!(s, "admin token: (set; as shown at first start)");
        }
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
