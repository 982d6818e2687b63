//! Appliances in network namespaces of their own, joined by a bridge in a
//! third namespace where the client runs (the failover tests): a client
//! that asks the virtual address every 10 ms and measures the gaps.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
use serde_json::{json, Value};

use super::Edgebox;

pub const VIP: &str = "10.9.0.100";

pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Interfaces made in namespace `ns` from now on skip duplicate address
/// detection.
fn no_dad(ns: &str) {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns);
        for conf in ["all", "default"] {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad"), "0").unwrap();
        }
    })
    .join()
    .unwrap();
}

pub fn enter(ns: &str) {
    let fd = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    move_into_link_name_space(fd.as_fd(), Some(LinkNameSpaceType::Network)).unwrap();
}

/// The namespaces: `lan` (a bridge and the client at 10.9.0.10 and
/// fd00:9::10) and one per appliance (`eth0` at 10.9.0.N and fd00:9::N on
/// the bridge). No duplicate address detection anywhere, so that the
/// IPv6 link-local addresses serve at once. The calling thread is moved
/// into `lan`. Removed on drop.
pub struct Lan {
    prefix: String,
    pub hosts: Vec<String>,
}

impl Lan {
    pub fn new(appliances: usize) -> Self {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("eb-fo-{}-{seq}", std::process::id());
        let lan = format!("{prefix}-lan");
        ip(&["netns", "add", &lan]);
        enter(&lan);
        no_dad(&lan);
        ip(&["link", "set", "lo", "up"]);
        ip(&["link", "add", "br0", "type", "bridge"]);
        ip(&["addr", "add", "10.9.0.10/24", "dev", "br0"]);
        ip(&["addr", "add", "fd00:9::10/64", "dev", "br0", "nodad"]);
        ip(&["link", "set", "br0", "up"]);
        let mut hosts = Vec::new();
        for i in 1..=appliances {
            let ns = format!("{prefix}-{i}");
            ip(&["netns", "add", &ns]);
            no_dad(&ns);
            let port = format!("v{i}");
            ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.9.0.{i}/24"),
                "dev",
                "eth0",
            ]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("fd00:9::{i}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            hosts.push(ns);
        }
        Self { prefix, hosts }
    }

    /// A cable of its own between appliances 1 and 2 (`r0`, 10.8.0.1 and
    /// 10.8.0.2), beside the LAN: a dedicated replication link.
    pub fn cable(&self) {
        let (one, two) = (&self.hosts[0], &self.hosts[1]);
        ip(&[
            "link", "add", "r0", "netns", one, "type", "veth", "peer", "name", "r0", "netns", two,
        ]);
        for (i, ns) in [(1, one), (2, two)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.8.0.{i}/24"),
                "dev",
                "r0",
            ]);
            ip(&["-n", ns, "link", "set", "r0", "up"]);
        }
    }

    /// `edgebox serve` with `config` inside appliance `i`'s namespace.
    pub fn start(&self, i: usize, config: &Value) -> Edgebox {
        let ns = self.hosts[i - 1].clone();
        let config = config.clone();
        std::thread::spawn(move || {
            enter(&ns);
            Edgebox::start(&config, 1)
        })
        .join()
        .unwrap()
    }

    pub fn restart(&self, i: usize, dir: tempfile::TempDir) -> Edgebox {
        let ns = self.hosts[i - 1].clone();
        std::thread::spawn(move || {
            enter(&ns);
            Edgebox::restart(dir, 1)
        })
        .join()
        .unwrap()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &format!("{}-lan", self.prefix)])
            .status();
    }
}

/// Appliance `i` of a pair: answers with its name on the virtual address,
/// VRRP on eth0.
pub fn appliance(i: usize, priority: u8) -> Value {
    let peer = if i == 1 { "10.9.0.2" } else { "10.9.0.1" };
    let mut c = server(i);
    c["failover"] = json!({
        "interface": "eth0",
        "vrid": 51,
        "priority": priority,
        "virtual_addresses": [format!("{VIP}/24")],
        "peers": [peer],
    });
    // Bound to the virtual address itself (IP_FREEBIND): the backup binds
    // it without holding it, and serves once it takes it.
    c["listeners"][0]["address"] = json!(format!("{VIP}:8080"));
    c
}

/// An edgebox in namespace `i` that answers with its name, no failover.
pub fn server(i: usize) -> Value {
    json!({
        "listeners": [{"name": "web", "address": "0.0.0.0:8080", "protocol": "http"}],
        "routes": [{"action": {"respond": {"status": 200, "body": format!("node{i}\n")}}}],
        "admin": {"address": format!("10.9.0.{i}:9443")},
    })
}

/// The IPv6 virtual address the tests use, served on port 8081.
pub const VIP6: &str = "fd00:9::100";

/// One request to the virtual address: who answered, if anyone did.
pub fn ask() -> Option<String> {
    ask_at(format!("{VIP}:8080").parse().unwrap())
}

/// One request to `addr`.
pub fn ask_at(addr: SocketAddr) -> Option<String> {
    ask_waiting(addr, Duration::from_millis(100), Duration::from_millis(300))
}

/// [`ask_at`], waiting up to `connect` for the connection (a client whose
/// SYN is dropped sends it again after a second) and `read` for the answer.
pub fn ask_waiting(addr: SocketAddr, connect: Duration, read: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, connect).ok()?;
    s.set_read_timeout(Some(read)).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: pair\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    reply.starts_with("HTTP/1.1 200").then(|| {
        reply
            .rsplit("\r\n\r\n")
            .next()
            .unwrap_or("")
            .trim()
            .to_owned()
    })
}

/// Asks every 10 ms while `during` runs (after `lead` of asking first),
/// until `want` answers or `limit`; the answers with their times.
pub fn asking(
    lead: Duration,
    limit: Duration,
    want: &str,
    during: impl FnOnce(),
) -> Vec<(Instant, Option<String>)> {
    asking_at(
        format!("{VIP}:8080").parse().unwrap(),
        lead,
        limit,
        want,
        during,
    )
}

/// [`asking`] at `addr`. Each ask runs on a thread of its own, started
/// every 10 ms whatever the ones before are doing (an ask that fails waits
/// out its connect timeout), so the answers sample the service every 10 ms.
pub fn asking_at(
    addr: SocketAddr,
    lead: Duration,
    limit: Duration,
    want: &str,
    during: impl FnOnce(),
) -> Vec<(Instant, Option<String>)> {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut pending = std::collections::VecDeque::new();
    let mut during = Some(during);
    let settled = |seen: &[(Instant, Option<String>)]| {
        seen.len() >= 20
            && seen
                .iter()
                .rev()
                .take(20)
                .all(|(_, w)| w.as_deref() == Some(want))
    };
    while started.elapsed() < limit {
        if started.elapsed() >= lead {
            if let Some(f) = during.take() {
                f();
            }
        }
        let at = Instant::now();
        let after = during.is_none();
        pending.push_back((at, after, std::thread::spawn(move || ask_at(addr))));
        while pending.front().is_some_and(|(_, _, t)| t.is_finished()) {
            let (at, after, t) = pending.pop_front().unwrap();
            seen.push((at, t.join().unwrap(), after));
        }
        let flat: Vec<(Instant, Option<String>)> = seen
            .iter()
            .filter(|(_, _, after)| *after)
            .map(|(t, w, _)| (*t, w.clone()))
            .collect();
        if settled(&flat) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10).saturating_sub(at.elapsed()));
    }
    for (at, after, t) in pending {
        seen.push((at, t.join().unwrap(), after));
    }
    seen.into_iter().map(|(t, w, _)| (t, w)).collect()
}

/// The longest time between two answers, and the requests that failed.
pub fn longest_gap(seen: &[(Instant, Option<String>)]) -> (Duration, usize) {
    let answered: Vec<Instant> = seen
        .iter()
        .filter(|(_, w)| w.is_some())
        .map(|(t, _)| *t)
        .collect();
    let gap = answered
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    (gap, seen.iter().filter(|(_, w)| w.is_none()).count())
}

/// Asks while `during` runs (after `lead_ms`) until `want` answers; the
/// longest gap and the failed requests, also added to `report`.
pub fn step(
    report: &mut Vec<String>,
    what: &str,
    want: &str,
    lead_ms: u64,
    during: impl FnOnce(),
) -> (Duration, usize) {
    step_at(
        format!("{VIP}:8080").parse().unwrap(),
        report,
        what,
        want,
        lead_ms,
        during,
    )
}

/// [`step`] at `addr`.
pub fn step_at(
    addr: SocketAddr,
    report: &mut Vec<String>,
    what: &str,
    want: &str,
    lead_ms: u64,
    during: impl FnOnce(),
) -> (Duration, usize) {
    let seen = asking_at(
        addr,
        Duration::from_millis(lead_ms),
        Duration::from_secs(10),
        want,
        during,
    );
    let (gap, failed) = longest_gap(&seen);
    assert!(
        seen.last().unwrap().1.as_deref() == Some(want),
        "{what}: {want} never answered ({report:?})"
    );
    report.push(format!(
        "{what}: longest gap {} ms, {failed} failed requests",
        gap.as_millis()
    ));
    (gap, failed)
}

/// Whether appliance `i`'s eth0 carries the virtual address.
pub fn holds(lan: &Lan, i: usize) -> bool {
    holds_address(lan, i, VIP)
}

/// Whether appliance `i`'s eth0 carries `address`.
pub fn holds_address(lan: &Lan, i: usize, address: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", &lan.hosts[i - 1], "-o", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!(" {address}/"))
}
