//! The `edgebox-image` command: build the appliance disk image, boot it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use edgebox_image::boot::{Accel, BootOptions, Devices, Forward, Net, Serial, Vm};
use edgebox_image::build::{self, BuildOptions};
use edgebox_image::kernel::KernelSource;

#[derive(Debug, Parser)]
#[command(
    name = "edgebox-image",
    version,
    about = "Build and boot the edgebox appliance image"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a bootable GPT disk image (see docs/image.md).
    Build {
        /// `cloud` (VMs), `generic` (hardware NICs and disks), or the path of a
        /// linux-image .deb.
        #[arg(long, default_value = "cloud")]
        kernel: KernelSource,
        /// The static edgebox binary to use; default: build it with cargo.
        #[arg(long)]
        binary: Option<PathBuf>,
        #[arg(long, short, default_value = "edgebox.img")]
        output: PathBuf,
        /// Also write a qcow2 beside the raw image.
        #[arg(long)]
        qcow2: bool,
        /// Size of the data partition (store and config): 256M, 1G, …
        #[arg(long, default_value = "1G", value_parser = parse_size)]
        data_size: u64,
        /// First-boot network, as on the kernel command line:
        /// IFACE,ADDR/PREFIX[,gw=GATEWAY]. Repeatable.
        #[arg(long)]
        net: Vec<String>,
        /// First-boot admin token (stored only as its hash); default: a random
        /// one, printed on the console at first boot.
        #[arg(long, env = "EDGEBOX_ADMIN_TOKEN")]
        admin_token: Option<String>,
        /// Another kernel parameter. Repeatable.
        #[arg(long = "kernel-arg")]
        kernel_args: Vec<String>,
        /// Kernel package cache and scratch space; default: target/edgebox-image.
        #[arg(long)]
        work: Option<PathBuf>,
        /// The image's version, shown by the appliance and in its update
        /// file; default: edgebox's version.
        #[arg(long)]
        image_version: Option<String>,
        /// Ed25519 private key (PKCS#8 PEM: `openssl genpkey -algorithm
        /// ed25519 -out update.key`): signs the update file, and the image
        /// trusts it for later updates.
        #[arg(long)]
        signing_key: Option<PathBuf>,
        /// Let the appliance install unsigned updates.
        #[arg(long)]
        allow_unsigned_updates: bool,
    },
    /// Boot an image in QEMU under UEFI firmware; print the time to the first
    /// HTTPS response when a host port forwards to guest port 443.
    Boot {
        #[arg(default_value = "edgebox.img")]
        image: PathBuf,
        /// HOST_PORT:GUEST_PORT, forwarded from 127.0.0.1. Repeatable.
        #[arg(long)]
        forward: Vec<Forward>,
        /// Write the serial console to this file instead of stdout.
        #[arg(long)]
        serial: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "auto")]
        accel: Accel,
        #[arg(long, default_value_t = 512)]
        memory: u32,
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// Keep the image unchanged: writes go to a temporary overlay.
        #[arg(long)]
        snapshot: bool,
        /// Give up waiting for the first HTTPS response after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[arg(long)]
        work: Option<PathBuf>,
        /// `virtio`, or `hardware`: an NVMe disk and an e1000e NIC (for an
        /// image built with `--kernel generic`).
        #[arg(long, value_enum, default_value = "virtio")]
        devices: Devices,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a size like 256M or 1G"))?;
    let shift = match unit {
        "" => 0,
        "K" | "k" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(format!("{s:?}: the unit is K, M or G")),
    };
    let bytes = n << shift;
    if bytes < 16 << 20 {
        return Err(format!("{s:?}: the data partition needs at least 16M"));
    }
    Ok(bytes)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgebox-image: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn default_work() -> PathBuf {
    build::target_dir().join("edgebox-image")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Build {
            kernel,
            binary,
            output,
            qcow2,
            data_size,
            net,
            admin_token,
            kernel_args,
            work,
            image_version,
            signing_key,
            allow_unsigned_updates,
        } => {
            let built = build::build(&BuildOptions {
                kernel,
                binary,
                output,
                qcow2,
                data_bytes: data_size,
                net,
                admin_token,
                kernel_args,
                work: work.unwrap_or_else(default_work),
                image_version,
                signing_key,
                allow_unsigned_updates,
            })?;
            let mib = |b: u64| b as f64 / f64::from(1 << 20);
            println!(
                "image: {} ({:.1} MiB, {:.1} MiB allocated)",
                built.image.display(),
                mib(built.image_bytes),
                mib(built.allocated_bytes)
            );
            if let Some(q) = &built.qcow2 {
                println!(
                    "qcow2: {} ({:.1} MiB)",
                    q.display(),
                    mib(std::fs::metadata(q)?.len())
                );
            }
            println!(
                "kernel: {}; modules: {}",
                built.kernel_version,
                built.modules.join(" ")
            );
            if !built.absent_modules.is_empty() {
                println!("not in this kernel: {}", built.absent_modules.join(" "));
            }
            println!(
                "edgebox binary {:.1} MiB, initramfs {:.1} MiB (gzip), unified kernel image {:.1} MiB",
                mib(built.binary_bytes),
                mib(built.initrd_bytes),
                mib(built.uki_bytes)
            );
            println!("command line: {}", built.cmdline);
            println!(
                "update: {} (image version {})",
                built.update.display(),
                built.image_version
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Boot {
            image,
            forward,
            serial,
            accel,
            memory,
            cpus,
            snapshot,
            timeout,
            work,
            devices,
        } => {
            let https = forward.iter().find(|f| f.guest == 443).map(|f| f.host);
            let mut vm = Vm::start(&BootOptions {
                image,
                net: Net::User { forwards: forward },
                serial: serial.map_or(Serial::Stdout, Serial::File),
                accel,
                memory_mib: memory,
                cpus,
                snapshot,
                direct: None,
                work: work.unwrap_or_else(default_work),
                // Even if this process is killed, QEMU (and its forwarded
                // ports) go with it.
                die_with_parent: true,
                devices,
            })?;
            let signalled = stop_on_signals(&vm)?;
            eprintln!("edgebox-image: QEMU pid {} ({:?})", vm.pid(), vm.accel);
            let stopped_by = || match signalled.load(Ordering::Acquire) {
                0 => None,
                sig => Some(sig),
            };
            if let Some(port) = https {
                match vm.wait_https(port, Duration::from_secs(timeout)) {
                    Ok((status, after)) => eprintln!(
                        "edgebox-image: first HTTPS response ({status}) on 127.0.0.1:{port} after {:.1} s",
                        after.as_secs_f64()
                    ),
                    Err(e) if stopped_by().is_none() => return Err(e),
                    Err(_) => {}
                }
            }
            let status = vm.wait()?;
            if let Some(sig) = stopped_by() {
                eprintln!("edgebox-image: stopped by signal {sig}; QEMU stopped too ({status})");
                return Ok(ExitCode::from(128u8.saturating_add(sig as u8)));
            }
            eprintln!("edgebox-image: QEMU exited ({status})");
            Ok(if status.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// On SIGTERM, SIGINT or SIGHUP, stops QEMU (it exits, and its forwarded
/// ports are free, before this process does); the value is the signal, or 0.
fn stop_on_signals(vm: &Vm) -> anyhow::Result<Arc<AtomicI32>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let signalled = Arc::new(AtomicI32::new(0));
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let stopper = vm.stopper();
    let flag = Arc::clone(&signalled);
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            flag.store(sig, Ordering::Release);
            stopper.stop(Duration::from_secs(10));
        }
    });
    Ok(signalled)
}
