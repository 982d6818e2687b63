//! End-to-end tests on booted appliances: fixtures that build on each other.
//!
//! - the **image**: [`edgebox_image::testing::shared_image`], built once per
//!   test run and shared (an up-to-date image is reused);
//! - the **network**: [`net::TestNet`], a namespace of the test's own with a
//!   bridge, tap devices and backend addresses;
//! - the **VM**: [`Appliance::boot`], QEMU on the test's own copy-on-write
//!   disk, through UEFI or with a direct kernel boot, TCG unless a KVM probe
//!   boots;
//! - **booted**: [`Appliance::wait_ready`] waits for an HTTPS answer on the
//!   appliance's address, with a deadline;
//! - **configured**: [`Appliance::api`] with the image's first-boot token.
//!
//! [`run`] runs a test's body on a thread of its own inside its network
//! namespace; VMs and backends are stopped by PID and the namespace removed
//! when it ends, also on a panic. Serial logs are kept in
//! `target/qemu-tests/<test>/` and printed when a test fails.
#![forbid(unsafe_code)]

pub mod net;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edgebox_image::boot::{self, Accel, BootOptions, Devices, Net, Serial, Vm};
use edgebox_image::testing;

pub use net::TestNet;

/// With `EDGEBOX_QT_KEEP` set, a test pauses before stopping each VM, with
/// the VM, the backends and the network still up, until Enter is pressed
/// (see docs/testing.md).
pub fn keep() -> bool {
    std::env::var_os("EDGEBOX_QT_KEEP").is_some_and(|v| !v.is_empty())
}

/// How long a boot may take to answer HTTPS (software emulation is slow).
pub const BOOT_DEADLINE: Duration = Duration::from_secs(300);

/// A test's surroundings: its network and its directory.
#[derive(Debug)]
pub struct Harness {
    pub net: TestNet,
    pub dir: PathBuf,
}

/// Runs `body` on a new thread inside a new network namespace; a panic in
/// it fails the test after the fixtures have been dropped.
pub fn run(test: &str, body: impl FnOnce(&mut Harness) + Send + 'static) {
    let dir = edgebox_image::build::target_dir()
        .join("qemu-tests")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the test directory");
    let started = Instant::now();
    let result = std::thread::spawn(move || {
        let net = TestNet::enter().expect("the test network");
        let mut h = Harness { net, dir };
        body(&mut h);
    })
    .join();
    eprintln!("{test}: {:.1} s", started.elapsed().as_secs_f64());
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// How to start a VM.
#[derive(Debug, Clone)]
pub enum Boot {
    /// Through OVMF and the unified kernel image, with its built-in
    /// command line (the appliance at 10.0.2.15).
    Uefi,
    /// `-kernel/-initrd` with this command line (4 times faster).
    Direct(String),
}

/// The command line for a direct boot at 10.0.2.15, plus `extra`.
pub fn cmdline(extra: &str) -> String {
    cmdline_at(testing::ADDRESS.into(), extra)
}

/// The command line for a direct boot at `addr` (on the test network's
/// 10.0.2.0/24), plus `extra`.
pub fn cmdline_at(addr: Ipv4Addr, extra: &str) -> String {
    let [a, b, c, d] = addr.octets();
    let [g, h, i, j] = testing::GATEWAY;
    format!(
        "console=ttyS0,115200 loglevel=4 edgebox.net=eth0,{a}.{b}.{c}.{d}/{},gw={g}.{h}.{i}.{j} {extra}",
        testing::PREFIX
    )
}

/// A booted (or booting) appliance on the test network.
#[derive(Debug)]
pub struct Appliance {
    vm: Vm,
    pub addr: Ipv4Addr,
    pub serial: PathBuf,
    netns: String,
}

impl Harness {
    /// A copy-on-write disk over the shared image, for one appliance's
    /// lifetime (it survives the appliance's reboots and power cuts).
    pub fn disk(&self, name: &str) -> PathBuf {
        let image = &testing::shared_image().expect("the test image").image;
        self.disk_of(image, name)
    }

    /// A copy-on-write disk over another image.
    pub fn disk_of(&self, image: &Path, name: &str) -> PathBuf {
        let disk = self.dir.join(format!("{name}.qcow2"));
        boot::overlay(image, &disk).expect("the VM's disk");
        disk
    }
}

impl Appliance {
    /// Starts QEMU on `disk`, plugged into the test's bridge; the serial
    /// console goes to `<test dir>/<name>.serial.log`.
    pub fn boot(h: &mut Harness, name: &str, disk: &Path, how: Boot) -> Appliance {
        Self::boot_at(h, name, disk, how, testing::ADDRESS.into())
    }

    /// [`Appliance::boot`] for an appliance at `addr`: a direct boot whose
    /// command line is [`cmdline_at`] that address.
    pub fn boot_at(
        h: &mut Harness,
        name: &str,
        disk: &Path,
        how: Boot,
        addr: Ipv4Addr,
    ) -> Appliance {
        Self::boot_with(h, name, disk, how, addr, 512, Devices::Virtio)
    }

    /// The most general start: `memory_mib` of memory (512 for the
    /// others), and `devices` says what the disk and NIC are.
    pub fn boot_with(
        h: &mut Harness,
        name: &str,
        disk: &Path,
        how: Boot,
        addr: Ipv4Addr,
        memory_mib: u32,
        devices: Devices,
    ) -> Appliance {
        let built = testing::shared_image().expect("the test image");
        let (ifname, mac) = h.net.tap().expect("a tap device");
        let serial = h.dir.join(format!("{name}.serial.log"));
        let vm = Vm::start(&BootOptions {
            image: disk.to_owned(),
            net: Net::Tap { ifname, mac },
            serial: Serial::File(serial.clone()),
            accel: Accel::Auto,
            memory_mib,
            cpus: 1,
            snapshot: false,
            direct: match how {
                Boot::Uefi => None,
                Boot::Direct(cmdline) => {
                    Some((built.vmlinuz.clone(), built.initrd.clone(), cmdline))
                }
            },
            work: h.dir.clone(),
            die_with_parent: false,
            devices,
        })
        .expect("starting QEMU");
        Appliance {
            vm,
            addr,
            serial,
            netns: h.net.name().to_owned(),
        }
    }

    fn https(&self) -> SocketAddr {
        (self.addr, 443).into()
    }

    /// Waits until the appliance answers HTTPS on its address; the time
    /// since QEMU started.
    pub fn wait_ready(&mut self) -> Duration {
        let addr = self.https();
        let (_, after) = self
            .vm
            .wait_https_at(addr, BOOT_DEADLINE)
            .expect("the appliance to answer HTTPS");
        after
    }

    /// One request to the admin API with the image's token; status and body.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.api_as(testing::TOKEN, method, path, body)
    }

    pub fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let body = body.map(|b| b.to_string().into_bytes());
        let (status, reply) = boot::https_request(
            (self.addr, 9443).into(),
            method,
            path,
            Some(token),
            body.as_deref(),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
        let json = serde_json::from_slice(&reply).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    /// The admin API's `/metrics` text.
    pub fn metrics(&self) -> String {
        let (status, text) = boot::https_request(
            (self.addr, 9443).into(),
            "GET",
            "/metrics",
            Some(testing::TOKEN),
            None,
        )
        .unwrap_or_else(|e| panic!("GET /metrics: {e:#}"));
        assert_eq!(status, 200, "GET /metrics");
        String::from_utf8_lossy(&text).into_owned()
    }

    /// One value of [`Appliance::metrics`]: the sample named `series`.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
    }

    /// An HTTPS GET of the data plane; status and body.
    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        boot::https_request(self.https(), "GET", path, None, None)
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
    }

    /// The config served, changed by `change`, put back; panics if refused.
    pub fn change_config(&self, change: impl FnOnce(&mut serde_json::Value)) {
        let (status, mut config) = self.api("GET", "/v1/config", None);
        assert_eq!(status, 200, "GET /v1/config: {config}");
        change(&mut config);
        let (status, reply) = self.api("PUT", "/v1/config", Some(&config));
        assert_eq!(status, 200, "PUT /v1/config: {reply}");
    }

    /// What the serial console has printed so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits for the console to print `text`.
    pub fn wait_console(&mut self, text: &str, deadline: Duration) -> Result<()> {
        let until = Instant::now() + deadline;
        while !self.console().contains(text) {
            if Instant::now() >= until {
                bail!("the console did not print {text:?} within {deadline:?}");
            }
            if let Ok(status) = self.vm.wait_exit(Duration::from_millis(200)) {
                bail!("QEMU exited ({status}) before the console printed {text:?}");
            }
        }
        Ok(())
    }

    /// Waits for QEMU to exit (after a power-off).
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        self.vm.wait_exit(deadline).expect("QEMU to exit")
    }

    /// Power cut.
    pub fn kill(&mut self) {
        self.vm.kill();
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if keep() {
            eprintln!(
                "paused: the VM (QEMU pid {pid}) runs at {addr} in network namespace {n}: \
                 try `ip netns exec {n} curl -k https://{addr}/`; serial console {serial}. \
                 Press Enter to stop it.",
                pid = self.vm.pid(),
                addr = self.addr,
                serial = self.serial.display(),
                n = self.netns,
            );
            let _ = std::io::stdin().read_line(&mut String::new());
        }
        self.vm.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- serial console ({}) ---\n{}--- end ---",
                self.serial.display(),
                self.console()
            );
        }
    }
}

/// An application backend on the test network: Python's HTTP server, at an
/// address of its own, serving a page that names it. Killed (by PID) when
/// dropped.
#[derive(Debug)]
pub struct Backend {
    child: Child,
    pub addr: SocketAddr,
    pub name: String,
    root: PathBuf,
}

impl Backend {
    pub fn start(h: &mut Harness, name: &str) -> Result<Backend> {
        let ip = h.net.host()?;
        let root = h.dir.join(format!("backend-{name}"));
        Self::serve(root, SocketAddr::from((ip, 8080)), name)
    }

    /// Starts a stopped backend again, on its address.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let again = Self::serve(self.root.clone(), self.addr, &self.name)?;
        *self = again;
        Ok(())
    }

    fn serve(root: PathBuf, addr: SocketAddr, name: &str) -> Result<Backend> {
        let ip = addr.ip();
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("index.html"), format!("{name}\n"))?;
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "8080",
                "--bind",
                &ip.to_string(),
                "--directory",
            ])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting python3 -m http.server")?;
        let backend = Backend {
            child,
            addr,
            name: name.to_owned(),
            root: root.clone(),
        };
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            if Instant::now() >= until {
                bail!("backend {name} did not listen on {addr} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(backend)
    }

    /// Stops it (by its PID).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// dnsmasq on the test's bridge: DHCP for `range` (`FIRST,LAST`; leases of
/// 2 minutes, the shortest it gives), with fixed addresses for some MACs
/// (`MAC,ADDRESS`), the bridge as router, and IPv6 router advertisements
/// for fd00:2::/64. Stopped by its PID when dropped.
#[derive(Debug)]
pub struct Dnsmasq {
    child: Child,
    log: PathBuf,
}

impl Dnsmasq {
    pub fn start(h: &Harness, range: &str, hosts: &[&str]) -> Dnsmasq {
        net::ip(&["addr", "add", "fd00:2::2/64", "dev", "br0", "nodad"])
            .expect("an IPv6 address on the bridge");
        let log = h.dir.join("dnsmasq.log");
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--port=0",
            "--interface=br0",
            "--bind-interfaces",
            "--user=root",
            "--log-dhcp",
            "--dhcp-option=option:router,10.0.2.2",
            "--dhcp-range=::,constructor:br0,ra-only,64",
            "--enable-ra",
            "--ra-param=br0,5",
        ])
        .arg(format!("--dhcp-range={range},255.255.255.0,2m"))
        .arg(format!(
            "--dhcp-leasefile={}",
            h.dir.join("leases").display()
        ))
        .arg(format!("--log-facility={}", log.display()));
        for host in hosts {
            cmd.arg(format!("--dhcp-host={host}"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .expect("dnsmasq (apt-get install dnsmasq-base)");
        Dnsmasq { child, log }
    }

    /// What it logged (every DHCP exchange).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shared test image built again without `--net` (so the appliance
/// asks DHCP), with `kernel` and the same binary; `name` keeps its output
/// apart.
pub fn image_without_address(kernel: edgebox_image::kernel::KernelSource, name: &str) -> PathBuf {
    let shared = testing::shared_image().expect("the test image");
    let mut opts = testing::options(
        edgebox_image::build::target_dir().join(format!("edgebox-image/test-{name}/edgebox.img")),
    );
    opts.net.clear();
    opts.kernel = kernel;
    opts.binary = Some(shared.binary.clone());
    edgebox_image::build::build(&opts)
        .expect("the image without an address")
        .image
}
