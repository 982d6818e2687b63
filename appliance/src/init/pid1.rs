//! edgebox as PID 1: set the machine up, run `edgebox serve` as a child, and
//! power off or reboot when it asks. Every failure is printed on the console
//! as `edgebox init: error: …` and the boot goes on as far as it can; PID 1
//! never exits (that would panic the kernel).

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::mount::{MountFlags, UnmountFlags};
use rustix::system::RebootCommand;

use super::cmdline::{self, NetConfig};
use super::modules::{Aliases, Deps};
use super::supervise::Next;
use super::{net, DATA_DIR, DATA_PARTITION, FIRST_BOOT_TOKEN};
use crate::update::esp::Esp;
use crate::update::{Slot, State};

fn say(msg: impl std::fmt::Display) {
    println!("edgebox init: {msg}");
}

fn error(msg: impl std::fmt::Display) {
    println!("edgebox init: error: {msg}");
}

/// Runs the appliance; never returns.
pub fn run() -> ! {
    let started = Instant::now();
    mount_api_filesystems();
    ensure_console();
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    say(format_args!(
        "edgebox {} is PID 1 on Linux {release}",
        env!("CARGO_PKG_VERSION")
    ));
    let params = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("/proc/cmdline: {e}"))
        .and_then(|line| cmdline::parse(&line).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| {
            error(format_args!(
                "{e}; the command line's edgebox settings are ignored"
            ));
            cmdline::BootParams::default()
        });
    load_modules(&release);
    let (data, data_mounted) = mount_data();
    install_first_boot_token(&data);
    let nets = if params.net.is_empty() {
        persisted_network(&data)
    } else {
        params.net
    };
    configure_network(&nets);
    let deadline = params
        .trial_deadline
        .unwrap_or(crate::update::trial::DEADLINE);
    let trial = params.slot.and_then(|s| check_slot(s, deadline));
    say(format_args!(
        "set up in {} ms; starting edgebox serve",
        started.elapsed().as_millis()
    ));
    supervise(&data, trial.map(|t| (t, started, data_mounted)))
}

/// A slot booted on trial.
#[derive(Debug)]
struct Trial {
    slot: Slot,
    generation: u64,
    version: String,
    deadline: Duration,
}

/// Says which slot booted and how it stands; a slot on trial is returned,
/// to be watched.
fn check_slot(slot: Slot, deadline: Duration) -> Option<Trial> {
    let slots = match Esp::mount().and_then(|esp| esp.slots()) {
        Ok(s) => s,
        Err(e) => {
            error(format_args!("boot slots: {e}"));
            return None;
        }
    };
    let version = crate::update::image_version();
    let state = slots.state(slot, Some(slot));
    say(format_args!(
        "boot slot {slot}: edgebox image {version}, {}",
        serde_json::to_value(state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    ));
    if let Some(f) = slots.failed_update(slot) {
        error(format_args!(
            "the update to {} (slot {}) was tried and did not become healthy; slot {slot} runs again",
            f.version, f.slot
        ));
    }
    let entry = slots.entry(slot)?;
    (state == State::Trial).then_some(Trial {
        slot,
        generation: entry.generation,
        version,
        deadline,
    })
}

/// Watches a slot on trial once a second: blesses it once the server
/// reports healthy; past the deadline, records why not and sets `give_up`
/// (the server is stopped and the machine reboots into the previous slot).
fn watch_trial(
    trial: Trial,
    started: Instant,
    data_mounted: bool,
    last: &std::sync::Mutex<Option<String>>,
    give_up: &std::sync::atomic::AtomicBool,
) {
    use crate::update::trial::{judge, Seen, Verdict};
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let health = std::fs::read_to_string(crate::update::HEALTH_FILE).ok();
        let last = last.lock().map(|l| l.clone()).unwrap_or_default();
        let verdict = judge(
            &Seen {
                elapsed: started.elapsed(),
                data_mounted,
                health: health.as_deref(),
                last_exit: last.as_deref(),
            },
            trial.deadline,
        );
        match verdict {
            Verdict::Wait => continue,
            Verdict::Good => {
                let blessed = Esp::mount().and_then(|esp| match esp.slots()?.bless(trial.slot) {
                    Some((from, to)) => esp.bless(&from, &to),
                    None => Ok(()),
                });
                match blessed {
                    Ok(()) => say(format_args!(
                        "boot slot {}: edgebox image {} is healthy; marked good",
                        trial.slot, trial.version
                    )),
                    Err(e) => error(format_args!(
                        "boot slot {}: healthy, but marking it good failed: {e}",
                        trial.slot
                    )),
                }
                return;
            }
            Verdict::Failed(reason) => {
                error(format_args!(
                    "boot slot {} on trial: {reason}; rebooting into the previous slot",
                    trial.slot
                ));
                let record = crate::update::TrialRecord {
                    slot: trial.slot,
                    generation: trial.generation,
                    version: trial.version.clone(),
                    reason,
                    at_unix: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                };
                let path = Path::new(DATA_DIR).join(crate::update::TRIAL_RECORD);
                let written = path
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| {
                        crate::fsutil::write_atomic(
                            &path,
                            &serde_json::to_vec(&record).unwrap_or_default(),
                            0o644,
                        )
                    });
                if let Err(e) = written {
                    error(format_args!("{}: {e}", path.display()));
                }
                give_up.store(true, std::sync::atomic::Ordering::Release);
                return;
            }
        }
    }
}

fn mount_api_filesystems() {
    let nosuid = MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV;
    for (fs, target, flags) in [
        ("proc", "/proc", nosuid),
        ("sysfs", "/sys", nosuid),
        ("devtmpfs", "/dev", MountFlags::NOSUID | MountFlags::NOEXEC),
        ("tmpfs", "/run", MountFlags::NOSUID | MountFlags::NODEV),
    ] {
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = rustix::mount::mount(fs, target, fs, flags, None) {
            if e != rustix::io::Errno::BUSY {
                error(format_args!("mount {fs} on {target}: {e}"));
            }
        }
    }
}

/// The kernel opens `/dev/console` for init from the initramfs; if that
/// failed, reopen it now that devtmpfs is mounted.
fn ensure_console() {
    if rustix::io::fcntl_getfd(std::io::stdout()).is_ok() {
        return;
    }
    if let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        let _ = rustix::stdio::dup2_stdin(&console);
        let _ = rustix::stdio::dup2_stdout(&console);
        let _ = rustix::stdio::dup2_stderr(&console);
    }
}

/// Modules loaded whether or not a device asks: the checksum driver ext4
/// needs (a soft dependency modules.dep does not list), ext4, kernel TLS.
const ALWAYS: &[&str] = &[
    "crc32c_intel",
    "ext4",
    "tls",
    // the EFI system partition (boot slots): vfat, its code page and
    // character set
    "vfat",
    "nls_cp437",
    "nls_ascii",
];

/// Loads what the devices' modaliases ask for (with dependencies), again
/// while loading makes new devices appear (virtio_pci → virtio_net), plus
/// [`ALWAYS`].
fn load_modules(release: &str) {
    let dir = PathBuf::from("/lib/modules").join(release);
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    let (aliases, deps) = match (read("modules.alias"), read("modules.dep")) {
        (Ok(a), Ok(d)) => (Aliases::parse(&a), Deps::parse(&d)),
        (Err(e), _) | (_, Err(e)) => {
            error(format_args!("{}: {e}; no modules loaded", dir.display()));
            return;
        }
    };
    let mut loaded: HashSet<String> = HashSet::new();
    let mut names = Vec::new();
    for _pass in 0..5 {
        let mut wanted: Vec<String> = device_modaliases()
            .iter()
            .flat_map(|alias| aliases.modules_for(alias))
            .filter(|m| deps.has(m))
            .map(str::to_owned)
            .collect();
        // Not asked for by any device: kernel TLS, and the data partition's
        // file system where it is a module (the generic kernel).
        for always in ALWAYS {
            if deps.has(always) {
                wanted.push((*always).to_owned());
            }
        }
        let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let order = match deps.load_order(&wanted) {
            Ok(order) => order,
            Err(e) => {
                error(e);
                return;
            }
        };
        let new: Vec<String> = order.into_iter().filter(|f| !loaded.contains(f)).collect();
        if new.is_empty() {
            break;
        }
        for file in new {
            let name = super::modules::module_name(&file);
            match File::open(dir.join(&file)).and_then(|f| {
                rustix::system::finit_module(&f, c"", 0).map_err(std::io::Error::from)
            }) {
                Ok(()) => names.push(name),
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::EXIST.raw_os_error()) => {}
                Err(e) => error(format_args!("loading module {name}: {e}")),
            }
            loaded.insert(file);
        }
    }
    say(format_args!("loaded modules: {}", names.join(" ")));
}

fn device_modaliases() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(buses) = std::fs::read_dir("/sys/bus") else {
        return out;
    };
    for bus in buses.flatten() {
        let Ok(devices) = std::fs::read_dir(bus.path().join("devices")) else {
            continue;
        };
        for dev in devices.flatten() {
            if let Ok(alias) = std::fs::read_to_string(dev.path().join("modalias")) {
                out.push(alias.trim().to_owned());
            }
        }
    }
    out
}

/// Mounts the data partition (found by its GPT name) on /data; without it,
/// a tmpfs, so that the admin API still comes up to say what is wrong.
/// Whether the partition itself is mounted.
fn mount_data() -> (PathBuf, bool) {
    let data = PathBuf::from(DATA_DIR);
    let _ = std::fs::create_dir_all(&data);
    let found = wait_for(Duration::from_secs(10), || super::partition(DATA_PARTITION));
    let result = match &found {
        Some(dev) => rustix::mount::mount(dev, &data, "ext4", MountFlags::NOATIME, None)
            .map_err(|e| format!("mount {} on {DATA_DIR}: {e}", dev.display())),
        None => Err(format!(
            "no partition named {DATA_PARTITION} appeared within 10 s"
        )),
    };
    let mounted = result.is_ok();
    match result {
        Ok(()) => say(format_args!(
            "data partition {} mounted on {DATA_DIR}",
            found.as_deref().unwrap_or(Path::new("?")).display()
        )),
        Err(e) => {
            error(format_args!(
                "{e}; using a data directory in memory: nothing will be kept across a reboot"
            ));
            if let Err(e) = rustix::mount::mount("tmpfs", &data, "tmpfs", MountFlags::NOSUID, None)
            {
                error(format_args!("mount tmpfs on {DATA_DIR}: {e}"));
            }
        }
    }
    (data, mounted)
}

/// The interfaces of the persisted config (`network`), used when the kernel
/// command line names none.
fn persisted_network(data: &Path) -> Vec<NetConfig> {
    let config = match crate::store::Store::new(data).load_config() {
        Ok(Some((_, config))) => config,
        Ok(None) => return Vec::new(),
        Err(e) => {
            error(format_args!("network: the persisted config: {e}"));
            return Vec::new();
        }
    };
    config
        .network
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            n.to_net()
                .map_err(|e| error(format_args!("network: config network[{i}]: {e}")))
                .ok()
        })
        .collect()
}

/// The image's first-boot token hash becomes the admin token, unless the
/// appliance already has one (a later rotation wins over the image).
fn install_first_boot_token(data: &Path) {
    let Ok(hash) = std::fs::read(FIRST_BOOT_TOKEN) else {
        return;
    };
    let to = data.join(crate::admin::token::HASH_FILE);
    if to.exists() {
        return;
    }
    match crate::fsutil::write_atomic(&to, &hash, 0o600) {
        Ok(()) => say("admin token: the image's first-boot token"),
        Err(e) => error(format_args!("{}: {e}", to.display())),
    }
}

fn wait_for<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + limit;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ifindex(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn configure_network(nets: &[NetConfig]) {
    match ifindex("lo") {
        Some(lo) => {
            if let Err(e) = net::apply(&[net::link_up("lo", lo)]) {
                error(format_args!("network: {e}"));
            }
        }
        None => error("network: there is no loopback interface"),
    }
    if nets.is_empty() {
        say("network: no static address (edgebox.net= on the kernel command line, or `network` in the config); asking DHCP, and IPv6 router advertisements, on every Ethernet interface");
        start_dhcp();
    }
    for n in nets {
        let Some(index) = wait_for(Duration::from_secs(5), || ifindex(&n.iface)) else {
            let have: Vec<String> = std::fs::read_dir("/sys/class/net")
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            error(format_args!(
                "network: {}: no such interface (there are: {})",
                n.iface,
                have.join(", ")
            ));
            continue;
        };
        match net::apply(&net::requests(n, index)) {
            Ok(()) => say(format_args!(
                "network: {} is {}/{}{}",
                n.iface,
                n.address,
                n.prefix,
                n.gateway
                    .map(|g| format!(", default route via {g}"))
                    .unwrap_or_default()
            )),
            Err(e) => error(format_args!("network: {e}")),
        }
    }
}

/// Ethernet interfaces (type 1), by name; waits up to 5 s for the first.
fn ethernet_interfaces() -> Vec<String> {
    wait_for(Duration::from_secs(5), || {
        let mut found: Vec<String> = std::fs::read_dir("/sys/class/net")
            .ok()?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                std::fs::read_to_string(format!("/sys/class/net/{n}/type"))
                    .is_ok_and(|t| t.trim() == "1")
            })
            .collect();
        found.sort();
        (!found.is_empty()).then_some(found)
    })
    .unwrap_or_default()
}

/// A DHCP client thread for each Ethernet interface, brought up first (the
/// kernel then configures IPv6 from router advertisements by itself).
fn start_dhcp() {
    let ifaces = ethernet_interfaces();
    if ifaces.is_empty() {
        error("network: no Ethernet interface appeared within 5 s");
    }
    for iface in ifaces {
        let (Some(index), Some(mac)) = (ifindex(&iface), mac_address(&iface)) else {
            error(format_args!("network: {iface}: no index or MAC address"));
            continue;
        };
        if let Err(e) = net::apply(&[net::link_up(&iface, index)]) {
            error(format_args!("network: {e}"));
            continue;
        }
        let name = iface.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("dhcp-{iface}"))
            .spawn(move || dhcp(&name, index, mac));
        if let Err(e) = spawned {
            error(format_args!("network: {iface}: DHCP thread: {e}"));
        }
    }
}

fn mac_address(iface: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address")).ok()?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    bytes.try_into().ok()
}

/// The interface's global IPv6 addresses (from /proc/net/if_inet6).
fn global_ipv6(iface: &str) -> Vec<std::net::Ipv6Addr> {
    std::fs::read_to_string("/proc/net/if_inet6")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // address, index, prefix length, scope (00: global), flags, name
            if f.len() < 6 || f[5] != iface || f[3] != "00" {
                return None;
            }
            u128::from_str_radix(f[0], 16)
                .ok()
                .map(std::net::Ipv6Addr::from)
        })
        .collect()
}

/// One interface's DHCP client, for as long as the machine runs: leases are
/// configured and renewed, and IPv6 addresses from router advertisements
/// are reported as they appear.
fn dhcp(iface: &str, index: u32, mac: [u8; 6]) {
    use super::dhcp::{Action, Client, To, PORT, SERVER_PORT};
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = (|| -> std::io::Result<Socket> {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_broadcast(true)?;
        s.bind_device(Some(iface.as_bytes()))?;
        s.bind(&std::net::SocketAddr::from(([0, 0, 0, 0], PORT)).into())?;
        Ok(s)
    })();
    let socket = match socket {
        Ok(s) => s,
        Err(e) => {
            error(format_args!("network: {iface}: DHCP socket: {e}"));
            return;
        }
    };
    let start = Instant::now();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut client = Client::new(mac, seed);
    let mut v6_seen: Vec<std::net::Ipv6Addr> = Vec::new();
    let mut buf = [0u8; 1500];
    let act = |actions: Vec<Action>| {
        for a in actions {
            match a {
                Action::Send(to, bytes) => {
                    let dest = match to {
                        To::Broadcast => std::net::Ipv4Addr::BROADCAST,
                        To::Server(ip) => ip,
                    };
                    let addr = std::net::SocketAddr::from((dest, SERVER_PORT));
                    if let Err(e) = socket.send_to(&bytes, &addr.into()) {
                        error(format_args!("network: {iface}: DHCP send to {dest}: {e}"));
                    }
                }
                Action::Configure(l) => {
                    let n = NetConfig {
                        iface: iface.to_owned(),
                        address: l.address.into(),
                        prefix: l.prefix,
                        gateway: l.router.map(Into::into),
                    };
                    match net::apply(&net::replace_requests(&n, index)) {
                        Ok(()) => say(format_args!(
                            "network: {iface} is {}/{} by DHCP from {} (lease {} s){}",
                            l.address,
                            l.prefix,
                            l.server,
                            l.lease.as_secs(),
                            l.router
                                .map(|g| format!(", default route via {g}"))
                                .unwrap_or_default()
                        )),
                        Err(e) => error(format_args!("network: {e}")),
                    }
                }
                Action::Deconfigure(l) => {
                    say(format_args!(
                        "network: {iface}: the DHCP lease of {} ended",
                        l.address
                    ));
                    let del = net::del_address(iface, index, l.address.into(), l.prefix);
                    if let Err(e) = net::apply(&[del]) {
                        error(format_args!("network: {e}"));
                    }
                }
            }
        }
    };
    loop {
        act(client.poll(start.elapsed()));
        let wait = client
            .next_wakeup()
            .saturating_sub(start.elapsed())
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let _ = socket.set_read_timeout(Some(wait));
        match std::io::Read::read(&mut &socket, &mut buf) {
            Ok(n) => act(client.on_packet(start.elapsed(), &buf[..n])),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                error(format_args!("network: {iface}: DHCP receive: {e}"));
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        let v6 = global_ipv6(iface);
        for a in v6.iter().filter(|a| !v6_seen.contains(a)) {
            say(format_args!(
                "network: {iface} is {a} by IPv6 router advertisement"
            ));
        }
        v6_seen = v6;
    }
}

/// Runs `edgebox serve` and reaps every child; restarts the server when it
/// ends unasked, powers off or reboots when it asks ([`super::guarded`]).
fn supervise(data: &Path, trial: Option<(Trial, Instant, bool)>) -> ! {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/init"));
    // The kernel gives PID 1 1 024 open files; the server inherits what is
    // set here, and raises its soft limit to it.
    let nofile = crate::limits::raise_nofile();
    say(format_args!("open files: up to {nofile}"));
    let serve = || {
        let mut c = Command::new(&exe);
        c.arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--init-child")
            .env("NO_COLOR", "1")
            .env(crate::update::HEALTH_ENV, crate::update::HEALTH_FILE);
        c
    };
    let _ = std::fs::create_dir_all("/run/edgebox");
    let give_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let last = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    if let Some((trial, started, data_mounted)) = trial {
        let (give_up, last) = (give_up.clone(), last.clone());
        let spawned = std::thread::Builder::new()
            .name("trial".into())
            .spawn(move || watch_trial(trial, started, data_mounted, &last, &give_up));
        if let Err(e) = spawned {
            error(format_args!("cannot watch the trial boot: {e}"));
        }
    }
    let said = |m: String| {
        if let Ok(mut l) = last.lock() {
            *l = Some(m.clone());
        }
        error(m);
    };
    match super::guarded::run(&serve, data, &give_up, &said) {
        Some(Next::Reboot) => shut_down(RebootCommand::Restart),
        _ if give_up.load(std::sync::atomic::Ordering::Acquire) => {
            shut_down(RebootCommand::Restart)
        }
        _ => shut_down(RebootCommand::PowerOff),
    }
}

/// Syncs, unmounts the data partition (read-only if it is still busy), and
/// powers off or reboots.
fn shut_down(how: RebootCommand) -> ! {
    let verb = if how == RebootCommand::PowerOff {
        "powering off"
    } else {
        "rebooting"
    };
    say(format_args!("{verb}"));
    rustix::fs::sync();
    if let Err(e) = rustix::mount::unmount(DATA_DIR, UnmountFlags::empty()) {
        error(format_args!(
            "unmount {DATA_DIR}: {e}; remounting it read-only"
        ));
        let _ = rustix::mount::mount_remount(DATA_DIR, MountFlags::RDONLY, "");
    }
    rustix::fs::sync();
    if let Err(e) = rustix::system::reboot(how) {
        error(format_args!("{verb}: {e}"));
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
