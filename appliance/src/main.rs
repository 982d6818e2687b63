//! The `edgebox` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgebox::init::supervise;
use edgebox::logging::{self, LogFormat};
use edgebox::server::{self, ServeOptions};
use edgebox::snapshot::Exit;

#[derive(Debug, Parser)]
#[command(
    name = "edgebox",
    version,
    about = "TLS termination, HTTP load balancing and static sites, on every core"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "EDGEBOX_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve: with no --config, the embedded default (HTTPS on 127.0.0.1:8443).
    Serve {
        #[command(flatten)]
        args: ServeArgs,
        /// Started by edgebox's PID 1 on the appliance (see docs/image.md).
        #[arg(long, hide = true)]
        init_child: bool,
        /// Started by `edgebox supervise` with this process ID: the server
        /// stops (SIGTERM) when its supervisor dies, however it dies.
        #[arg(long, hide = true)]
        supervisor: Option<u32>,
    },
    /// Run `edgebox serve` supervised, as PID 1 does on the appliance:
    /// started again when it dies, and the failover's virtual addresses of
    /// a server that died or hung removed at once (docs/failover.md).
    Supervise {
        /// Passed on to `edgebox serve`.
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Check a config file completely (certificates included) and exit.
    CheckConfig { config: PathBuf },
    /// Publish a directory as a site (uploads only what the appliance lacks).
    Publish {
        /// Where to look for the admin certificate by default.
        #[arg(long, env = "EDGEBOX_DATA")]
        data: Option<PathBuf>,
        #[command(flatten)]
        args: edgebox::publish::PublishArgs,
    },
    /// Print this appliance's replication fingerprint (making its key pair
    /// first if it has none), for its peers to pin.
    Identity {
        /// The data directory whose identity to print.
        #[arg(long, env = "EDGEBOX_DATA")]
        data: Option<PathBuf>,
    },
    /// Talk to a running edgebox's admin API.
    Ctl {
        /// Where to look for the admin certificate by default.
        #[arg(long, env = "EDGEBOX_DATA")]
        data: Option<PathBuf>,
        #[command(flatten)]
        args: edgebox::ctl::CtlArgs,
    },
}

/// What `edgebox serve` is told (and `edgebox supervise` passes on).
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The config file (JSON, see docs/config.md).
    #[arg(long, env = "EDGEBOX_CONFIG")]
    config: Option<PathBuf>,
    /// Where edgebox keeps its state (default certificate, later the store).
    #[arg(long, env = "EDGEBOX_DATA")]
    data: Option<PathBuf>,
    /// Data-plane cores (one pinned executor each); default: every CPU.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    cores: Option<u16>,
}

fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("edgebox");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/edgebox"),
        None => PathBuf::from("/var/lib/edgebox"),
    }
}

fn main() -> ExitCode {
    // The kernel started us as /init: the appliance's PID 1.
    if edgebox::init::is_pid1() {
        edgebox::init::run();
    }
    let cli = Cli::parse();
    // Clients of a running edgebox: no logging set-up, their own messages.
    let (what, result) = match cli.command {
        Command::Ctl { data, args } => (
            "ctl",
            edgebox::ctl::run(args, data.unwrap_or_else(default_data_dir)),
        ),
        Command::Publish { data, args } => (
            "publish",
            edgebox::publish::run(args, data.unwrap_or_else(default_data_dir)),
        ),
        Command::Identity { data } => (
            "identity",
            edgebox::replication::Identity::load_or_create(&data.unwrap_or_else(default_data_dir))
                .map(|id| println!("{}", id.fingerprint()))
                .map_err(|e| edgebox::ctl::CtlError::Usage(e.to_string())),
        ),
        Command::Supervise {
            args:
                ServeArgs {
                    config,
                    data,
                    cores,
                },
        } => (
            "supervise",
            supervise(
                config,
                data.unwrap_or_else(default_data_dir),
                cores,
                cli.log_format,
            ),
        ),
        command => return serve_or_check(command, cli.log_format),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgebox {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve_or_check(command: Command, log_format: LogFormat) -> ExitCode {
    let (_log_guard, logs) = logging::init(log_format);
    let result = match command {
        Command::Serve {
            args:
                ServeArgs {
                    config,
                    data,
                    cores,
                },
            init_child,
            supervisor,
        } => {
            if let Some(pid) = supervisor {
                // The supervisor may have died before this was set: then
                // this process has already been handed to another parent.
                let set = rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::TERM,
                ));
                let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32);
                if set.is_err() || parent != Some(pid) {
                    eprintln!("edgebox serve: its supervisor ({pid}) is gone; not starting");
                    return ExitCode::FAILURE;
                }
            }
            let cores = cores.map_or_else(
                || std::thread::available_parallelism().map_or(1, usize::from),
                usize::from,
            );
            let exit = server::run(ServeOptions {
                config,
                data: data.unwrap_or_else(default_data_dir),
                cores,
                logs,
                appliance: init_child,
            });
            // PID 1 reads what to do next from the exit status.
            match exit {
                Ok(Exit::PowerOff) => return ExitCode::from(supervise::EXIT_POWEROFF),
                Ok(Exit::Reboot) => return ExitCode::from(supervise::EXIT_REBOOT),
                Ok(Exit::Stopped) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Command::CheckConfig { config } => check_config(config),
        Command::Ctl { .. }
        | Command::Publish { .. }
        | Command::Identity { .. }
        | Command::Supervise { .. } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgebox: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `edgebox supervise`: SIGTERM or SIGINT is passed on to the server, and
/// the supervisor ends with it.
fn supervise(
    config: Option<PathBuf>,
    data: PathBuf,
    cores: Option<u16>,
    log_format: LogFormat,
) -> Result<(), edgebox::ctl::CtlError> {
    use clap::ValueEnum;
    let usage = |e: std::io::Error| edgebox::ctl::CtlError::Usage(e.to_string());
    let exe = std::env::current_exe().map_err(usage)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, std::sync::Arc::clone(&stop)).map_err(usage)?;
    }
    let serve = || {
        let mut c = std::process::Command::new(&exe);
        c.arg("serve")
            .arg("--data")
            .arg(&data)
            .arg("--supervisor")
            .arg(std::process::id().to_string());
        if let Some(format) = log_format.to_possible_value() {
            c.arg("--log-format").arg(format.get_name());
        }
        if let Some(config) = &config {
            c.arg("--config").arg(config);
        }
        if let Some(cores) = cores {
            c.arg("--cores").arg(cores.to_string());
        }
        c
    };
    let say = |m: String| eprintln!("edgebox supervise: {m}");
    edgebox::init::guarded::run(&serve, &data, &stop, &say);
    Ok(())
}

fn check_config(path: PathBuf) -> Result<(), server::ServeError> {
    let loaded = server::read_config_file(&path)?;
    let tls = edgebox::snapshot::TlsState {
        tickets: edgebox::tls::tickets::TicketKeys::new(loaded.config.tls.ticket_rotation_s)?,
        managed: edgebox::tls::managed::Managed::new(),
    };
    let snapshot = loaded.build(
        &edgebox::hostmap::HostMap::default(),
        &edgebox::snapshot::Sites::new(),
        &tls,
        edgebox::snapshot::Generations::default(),
        &mut edgebox::snapshot::Upstreams::default(),
    )?;
    println!(
        "{}: ok ({} listeners, {} pools, {} routes)",
        path.display(),
        snapshot.config.listeners.len(),
        snapshot.pools.len(),
        snapshot.config.routes.len()
    );
    Ok(())
}
