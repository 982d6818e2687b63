//! `edgebox-image boot`: an image in QEMU under UEFI firmware (OVMF), with
//! user-mode networking that reaches nothing outside (`restrict=on`) and
//! host forwards on loopback only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::tools::{self, OVMF_CODE, OVMF_VARS, QEMU};

/// How QEMU runs the guest's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM if a probe VM boots with it in time, else software emulation.
    Auto,
    /// Software emulation (TCG).
    Tcg,
    Kvm,
}

/// A host port on 127.0.0.1 forwarded to a guest TCP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub host: u16,
    pub guest: u16,
}

impl std::str::FromStr for Forward {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (host, guest) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected HOST_PORT:GUEST_PORT, e.g. 8443:443"))?;
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("{s:?}: {p:?} is not a port number"))
        };
        Ok(Forward {
            host: port(host)?,
            guest: port(guest)?,
        })
    }
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone)]
pub enum Serial {
    Stdout,
    File(PathBuf),
}

/// The VM's network card and what it is plugged into.
#[derive(Debug, Clone)]
pub enum Net {
    /// QEMU's user network, reaching nothing outside (`restrict=on`), with
    /// host ports on 127.0.0.1 forwarded in.
    User { forwards: Vec<Forward> },
    /// A tap device that exists already (in QEMU's network namespace), e.g.
    /// on a test's private bridge; `mac` tells VMs on one bridge apart.
    Tap { ifname: String, mac: String },
}

#[derive(Debug, Clone)]
pub struct BootOptions {
    pub image: PathBuf,
    pub net: Net,
    pub serial: Serial,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Writes go to a temporary overlay, not the image.
    pub snapshot: bool,
    /// Boot these directly instead of through the firmware (faster; for
    /// tests that do not test the firmware path): kernel, initrd, cmdline.
    pub direct: Option<(PathBuf, PathBuf, String)>,
    /// Scratch space (the firmware's variable store copy).
    pub work: PathBuf,
    /// QEMU gets SIGTERM from the kernel when the thread that started it
    /// ends, however it ends (`edgebox-image boot`: even on SIGKILL). Only
    /// for a thread that lives as long as the VM should.
    pub die_with_parent: bool,
    /// The emulated devices.
    pub devices: Devices,
}

/// What the VM's disk and NIC are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Devices {
    /// virtio disk, NIC and entropy source (the cloud kernel's).
    #[default]
    Virtio,
    /// What a dedicated load balancer has: an NVMe disk and an Intel
    /// e1000e NIC, nothing paravirtual (needs `--kernel generic`).
    Hardware,
}

/// A running VM; killed (by its PID) when dropped.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    /// Refers to this QEMU process and no other, even once it is reaped.
    pidfd: Arc<std::os::fd::OwnedFd>,
    pub started: Instant,
    pub accel: Accel,
}

/// Stops a VM's QEMU from another thread (a signal handler's): SIGTERM,
/// then SIGKILL if it is still there after a grace period. It signals
/// through a pidfd, so it never reaches another process that was given the
/// same PID after QEMU was reaped.
#[derive(Debug, Clone)]
pub struct Stopper {
    pidfd: Arc<std::os::fd::OwnedFd>,
}

impl Stopper {
    /// Asks QEMU to exit (it shuts the VM down as on a power cut, leaving
    /// its disk files consistent); kills it if it has not after `grace`.
    pub fn stop(&self, grace: Duration) {
        use rustix::process::{pidfd_send_signal, Signal};
        if pidfd_send_signal(&*self.pidfd, Signal::TERM).is_err() {
            return;
        }
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if !self.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = pidfd_send_signal(&*self.pidfd, Signal::KILL);
    }

    /// Whether QEMU has not exited yet (a pidfd reads ready once it has).
    fn running(&self) -> bool {
        use rustix::event::{poll, PollFd, PollFlags};
        let mut fds = [PollFd::new(&*self.pidfd, PollFlags::IN)];
        matches!(poll(&mut fds, None), Ok(0))
    }
}

impl Vm {
    pub fn start(opts: &BootOptions) -> Result<Vm> {
        let files: &[(&str, &str)] = if opts.direct.is_some() {
            &[]
        } else {
            &[OVMF_CODE, OVMF_VARS]
        };
        tools::require(&[QEMU], files)?;
        if !opts.image.is_file() {
            bail!(
                "{}: no such image (build one with `edgebox-image build`)",
                opts.image.display()
            );
        }
        let accel = match opts.accel {
            Accel::Auto => {
                static PROBED: std::sync::OnceLock<Accel> = std::sync::OnceLock::new();
                *PROBED.get_or_init(|| probe_kvm(&opts.work))
            }
            a => a,
        };
        let mut cmd = tools::command(QEMU);
        cmd.args([
            "-machine",
            "q35",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .args(["-accel", if accel == Accel::Kvm { "kvm" } else { "tcg" }])
        .args(["-cpu", if accel == Accel::Kvm { "host" } else { "max" }])
        .args([
            "-m",
            &opts.memory_mib.to_string(),
            "-smp",
            &opts.cpus.to_string(),
        ]);
        match &opts.direct {
            Some((kernel, initrd, cmdline)) => {
                cmd.arg("-kernel")
                    .arg(kernel)
                    .arg("-initrd")
                    .arg(initrd)
                    .args(["-append", cmdline]);
            }
            None => {
                std::fs::create_dir_all(&opts.work)?;
                let vars = opts
                    .work
                    .join(format!("OVMF_VARS.{}.fd", std::process::id()));
                std::fs::copy(OVMF_VARS.0, &vars).context("copying the firmware variable store")?;
                cmd.arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=0,readonly=on,file={}",
                        OVMF_CODE.0
                    ))
                    .arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=1,file={}",
                        vars.display()
                    ));
            }
        }
        let format = if opts.image.extension().is_some_and(|e| e == "qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        let (disk_if, nic, rng) = match opts.devices {
            Devices::Virtio => ("virtio", "virtio-net-pci", true),
            Devices::Hardware => ("none,id=disk0", "e1000e", false),
        };
        cmd.arg("-drive").arg(format!(
            "if={disk_if},format={format},file={}{}",
            opts.image.display(),
            if opts.snapshot { ",snapshot=on" } else { "" }
        ));
        if opts.devices == Devices::Hardware {
            cmd.args(["-device", "nvme,drive=disk0,serial=edgebox0"]);
        }
        let device = match &opts.net {
            Net::User { forwards } => {
                let mut netdev = String::from("user,id=net0,restrict=on");
                for f in forwards {
                    netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
                }
                cmd.args(["-netdev", &netdev]);
                format!("{nic},netdev=net0")
            }
            Net::Tap { ifname, mac } => {
                cmd.arg("-netdev").arg(format!(
                    "tap,id=net0,ifname={ifname},script=no,downscript=no"
                ));
                format!("{nic},netdev=net0,mac={mac}")
            }
        };
        cmd.args(["-device", &device]);
        if rng {
            cmd.args(["-device", "virtio-rng-pci"]);
        }
        match &opts.serial {
            Serial::Stdout => {
                cmd.args(["-serial", "stdio"]).stdin(Stdio::null());
            }
            Serial::File(path) => {
                cmd.arg("-serial")
                    .arg(format!("file:{}", path.display()))
                    .stdin(Stdio::null());
            }
        }
        if opts.die_with_parent {
            die_with_parent(&mut cmd);
        }
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", tools::show(&cmd)))?;
        // Not reaped yet, so the PID is still this child's.
        let pidfd = rustix::process::Pid::from_raw(child.id() as i32)
            .context("QEMU's PID")
            .and_then(|pid| {
                rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
                    .context("pidfd_open for QEMU")
            });
        let pidfd = match pidfd {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Vm {
            child,
            pidfd,
            started,
            accel,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops this VM from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            pidfd: Arc::clone(&self.pidfd),
        }
    }

    /// Waits until an HTTPS request to 127.0.0.1:`port` gets a response;
    /// returns its status and the time since the VM started.
    pub fn wait_https(&mut self, port: u16, deadline: Duration) -> Result<(u16, Duration)> {
        self.wait_https_at(([127, 0, 0, 1], port).into(), deadline)
    }

    /// Waits until an HTTPS request to `addr` gets a response; returns its
    /// status and the time since the VM started.
    pub fn wait_https_at(
        &mut self,
        addr: SocketAddr,
        deadline: Duration,
    ) -> Result<(u16, Duration)> {
        let until = self.started + deadline;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("QEMU exited ({status}) before the appliance answered HTTPS");
            }
            if let Ok(code) = https_status(addr, "/") {
                return Ok((code, self.started.elapsed()));
            }
            if Instant::now() >= until {
                bail!("no HTTPS response on {addr} within {deadline:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits for QEMU to exit, up to `deadline` from now.
    pub fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= until {
                bail!("QEMU still running after {deadline:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for QEMU to exit, however long it runs.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        Ok(self.child.wait()?)
    }

    /// Power cut: kills QEMU (by PID) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// Makes the kernel send QEMU SIGTERM when the thread that starts it ends.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // two system calls (prctl, getppid), which are async-signal-safe; it
    // allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
            // The parent may have died before the prctl: then nobody sends it.
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::other(
                    "edgebox-image exited during the start",
                ));
            }
            Ok(())
        });
    }
}

/// A copy-on-write qcow2 disk over `image` (which stays unchanged), so a VM
/// keeps its own state: its writes survive its reboots, not the test.
pub fn overlay(image: &Path, path: &Path) -> Result<()> {
    tools::require(&[tools::QEMU_IMG], &[])?;
    let image = image
        .canonicalize()
        .with_context(|| format!("{}", image.display()))?;
    let _ = std::fs::remove_file(path);
    tools::run(
        tools::command(tools::QEMU_IMG)
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&image)
            .arg(path),
    )?;
    Ok(())
}

/// One HTTPS/1.1 GET (any certificate accepted: this only asks whether the
/// appliance answers); the response status.
pub fn https_status(addr: SocketAddr, path: &str) -> Result<u16> {
    Ok(https_request(addr, "GET", path, None, None)?.0)
}

/// One HTTPS/1.1 request, with a bearer token and a JSON body if given (any
/// certificate accepted); the response status and body.
pub fn https_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Result<(u16, Vec<u8>)> {
    let config = edgebox::ctl::client::tls_config(edgebox::ctl::client::Trust::Insecure)?;
    let name = rustls::pki_types::ServerName::try_from("edgebox.invalid")?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    sock.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = body.unwrap_or_default();
    write!(
        tls,
        "{method} {path} HTTP/1.1\r\nHost: edgebox\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    tls.write_all(body)?;
    tls.flush()?;
    let mut response = Vec::new();
    if let Err(e) = tls.read_to_end(&mut response) {
        // A peer that closes without close_notify still sent its response.
        if e.kind() != std::io::ErrorKind::UnexpectedEof || response.is_empty() {
            return Err(e.into());
        }
    }
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no complete response head")?;
    let status_line = String::from_utf8_lossy(&response[..head_end.min(64)]).into_owned();
    let code = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP response: {status_line:?}"))?;
    Ok((code, response[head_end + 4..].to_vec()))
}

/// KVM only if a VM runs with it: nested KVM on some hosts hangs or aborts.
/// The probe starts the UEFI firmware alone under KVM and waits up to 5 s
/// for its boot manager (`BdsDxe`) to print on the serial port.
fn probe_kvm(work: &Path) -> Accel {
    if !Path::new("/dev/kvm").exists() || !Path::new(OVMF_CODE.0).is_file() {
        return Accel::Tcg;
    }
    let log = work.join(format!("kvm-probe.{}.log", std::process::id()));
    let _ = std::fs::create_dir_all(work);
    let _ = std::fs::remove_file(&log);
    let child = tools::command(QEMU)
        .args(["-machine", "q35", "-accel", "kvm", "-nodefaults"])
        .args(["-display", "none", "-m", "128", "-drive"])
        .arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            OVMF_CODE.0
        ))
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return Accel::Tcg;
    };
    let until = Instant::now() + Duration::from_secs(5);
    let mut works = false;
    while Instant::now() < until {
        let printed = std::fs::read(&log).unwrap_or_default();
        if printed.windows(6).any(|w| w == b"BdsDxe") {
            works = true;
            break;
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&log);
    if works {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse() {
        assert_eq!(
            "8443:443".parse(),
            Ok(Forward {
                host: 8443,
                guest: 443
            })
        );
        assert!("8443"
            .parse::<Forward>()
            .unwrap_err()
            .contains("HOST_PORT:GUEST_PORT"));
        assert!("8443:https"
            .parse::<Forward>()
            .unwrap_err()
            .contains("\"https\" is not a port"));
    }
}
