//! The failover thread: a raw VRRP socket, the machine's timers, and the
//! virtual addresses moved through netlink and announced by gratuitous ARP.
//!
//! It is a thread of its own (not a data-plane core, not the control
//! plane's runtime), so that neither a saturated data plane nor a slow
//! admin request can delay an advert: a late advert is a spurious failover.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV6};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::machine::{Action, Counts, Machine, Params, Reason, State};
use super::packet::{GROUP_V4, GROUP_V6, PROTOCOL, TTL};
use crate::config::Failover;

/// What the admin API and `/metrics` show; updated by the thread.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub interface: String,
    pub vrid: u8,
    pub state: State,
    /// The master as this appliance knows it.
    pub master: Option<IpAddr>,
    pub priority: u8,
    pub configured_priority: u8,
    /// Why the priority is below the configured one, if it is.
    pub priority_reasons: Vec<String>,
    pub advert_ms: u32,
    /// Whether adverts are authenticated (`auth_key`).
    pub authenticated: bool,
    pub virtual_addresses: Vec<String>,
    pub counts: Counts,
    /// Takeovers after which the old master still answered over the
    /// replication link: the VRRP path was lost, not the peer.
    pub vrrp_path_lost: u64,
    /// The last transitions, newest last.
    pub transitions: Vec<Transition>,
    /// Why the thread stopped, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Transition {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub from: State,
    pub to: State,
    pub why: Reason,
}

/// The status of the running failover, if any; shared with the control plane.
pub type Report = Arc<Mutex<Option<Status>>>;

/// The process's failover: started for the config's `failover` section,
/// replaced when the section changes, stopped (handing over) when the
/// server starts to shut down.
#[derive(Debug, Default)]
pub struct Slot {
    running: Mutex<Option<(Failover, Handle)>>,
    report: Report,
    /// The data directory, where the held addresses are written down for
    /// the supervisor ([`super::guard`]); none in unit tests.
    data: Option<PathBuf>,
    /// A planned handover asked for (`edgebox ctl failover release`, a
    /// shutdown): priority 1 until reclaimed. Outlives a settings change.
    released: AtomicBool,
    /// Why this appliance cannot serve, from the control plane's checks.
    unhealthy: Mutex<Vec<String>>,
}

/// The reason a released appliance gives for its priority.
pub const RELEASED: &str =
    "released: handing over to the peer (edgebox ctl failover reclaim takes it back)";

impl Slot {
    pub fn new(data: PathBuf) -> Self {
        Self {
            data: Some(data),
            ..Self::default()
        }
    }

    /// Runs VRRP as `cfg` says (none: not at all). A failure to start (no
    /// such interface, no raw sockets) is logged and shown in the status;
    /// the appliance serves on its own addresses meanwhile.
    pub fn apply(&self, cfg: Option<&Failover>) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.as_ref().map(|(c, _)| c) == cfg {
            return;
        }
        if let Some((_, old)) = running.take() {
            tracing::info!("failover: settings changed; restarting VRRP");
            old.stop();
        }
        *self.report.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let Some(cfg) = cfg else {
            return;
        };
        match start(cfg, Arc::clone(&self.report), self.data.clone()) {
            Ok(h) => *running = Some((cfg.clone(), h)),
            Err(e) => tracing::error!("failover not started: {e}"),
        }
        drop(running);
        self.refresh();
    }

    /// Health tracking: `unhealthy` names why this appliance cannot serve
    /// (empty: it can). While it cannot, it advertises priority 1.
    pub fn set_health(&self, unhealthy: Vec<String>) {
        *self.unhealthy.lock().unwrap_or_else(|e| e.into_inner()) = unhealthy;
        self.refresh();
    }

    /// A planned handover: this appliance advertises priority 1 (keeping
    /// the addresses until the peer's advert says it holds them). Whoever
    /// calls this asks the peer to take over ([`Slot::take_over`] there).
    pub fn release(&self) -> Result<(), String> {
        if self.status().is_none() {
            return Err("failover is not configured on this appliance".into());
        }
        if !self.released.swap(true, Ordering::AcqRel) {
            tracing::info!("failover: released; handing over to the peer");
        }
        self.refresh();
        Ok(())
    }

    /// Ends a release: the configured priority again (and, with
    /// preemption, the addresses back).
    pub fn reclaim(&self) -> Result<(), String> {
        if self.status().is_none() {
            return Err("failover is not configured on this appliance".into());
        }
        if self.released.swap(false, Ordering::AcqRel) {
            tracing::info!("failover: reclaimed; advertising the configured priority");
        }
        self.refresh();
        Ok(())
    }

    /// The peer asks this appliance to take virtual router `vrid` over
    /// (it is handing over). Whether this appliance runs that router.
    pub fn take_over(&self, vrid: u8) -> bool {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let Some((cfg, handle)) = running.as_ref().filter(|(c, _)| c.vrid == vrid) else {
            return false;
        };
        tracing::info!(
            vrid = cfg.vrid,
            "failover: the peer asks this appliance to take over"
        );
        handle.take_over.store(true, Ordering::Release);
        drop(running);
        // Whoever takes over serves at its own priority.
        self.released.store(false, Ordering::Release);
        self.refresh();
        true
    }

    /// The priority to advertise and why, from health and release.
    fn refresh(&self) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let Some((cfg, handle)) = running.as_ref() else {
            return;
        };
        let mut reasons = self
            .unhealthy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if self.released.load(Ordering::Acquire) {
            reasons.push(RELEASED.to_owned());
        }
        let want = if reasons.is_empty() { cfg.priority } else { 1 };
        handle.wanted.store(want, Ordering::Release);
        if let Some(s) = self
            .report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            s.priority_reasons = reasons;
        }
    }

    /// A takeover found the old master alive over the replication link.
    pub fn vrrp_path_lost(&self) {
        if let Some(s) = self
            .report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            s.vrrp_path_lost += 1;
        }
    }

    /// The critical pools, for the control plane's health check.
    pub fn critical_pools(&self) -> Vec<String> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .as_ref()
            .map(|(c, _)| c.critical_pools.clone())
            .unwrap_or_default()
    }

    /// Stops it: a master sends priority 0 and removes its addresses.
    pub fn stop(&self) {
        let old = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((_, h)) = old {
            h.stop();
        }
    }

    pub fn status(&self) -> Option<Status> {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A running failover thread.
#[derive(Debug)]
pub struct Handle {
    stop: Arc<AtomicBool>,
    /// The priority to advertise (health tracking); read by the thread.
    wanted: Arc<AtomicU8>,
    /// The peer asked to hand over to this appliance; read by the thread.
    take_over: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Handle {
    /// Stops it: a master sends priority 0 and gives up its addresses first.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts VRRP for `cfg`, reporting into `report`.
pub fn start(cfg: &Failover, report: Report, data: Option<PathBuf>) -> Result<Handle, String> {
    let link = Link::open(cfg)?;
    let params = Params {
        vrid: cfg.vrid,
        priority: cfg.priority,
        advert_cs: (cfg.advert_ms / 10) as u16,
        preempt: cfg.preempt,
        preempt_delay_us: cfg.preempt_delay_ms * 1000,
        addresses: cfg.virtual_addresses.iter().map(|n| n.addr()).collect(),
        primary: link.primary,
        auth_key: cfg.auth_key.as_ref().map(|k| k.as_bytes().to_vec()),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let wanted = Arc::new(AtomicU8::new(cfg.priority));
    let take_over = Arc::new(AtomicBool::new(false));
    let status = Status {
        interface: cfg.interface.clone(),
        vrid: cfg.vrid,
        state: State::Initialize,
        master: None,
        priority: cfg.priority,
        configured_priority: cfg.priority,
        priority_reasons: Vec::new(),
        advert_ms: cfg.advert_ms,
        authenticated: cfg.auth_key.is_some(),
        virtual_addresses: cfg
            .virtual_addresses
            .iter()
            .map(|n| n.to_string())
            .collect(),
        counts: Counts::default(),
        vrrp_path_lost: 0,
        transitions: Vec::new(),
        error: None,
    };
    *report.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
    let thread = {
        let stop = Arc::clone(&stop);
        let wanted = Arc::clone(&wanted);
        let take_over = Arc::clone(&take_over);
        let cfg = cfg.clone();
        std::thread::Builder::new()
            .name("failover".into())
            .spawn(move || {
                // Ahead of the data-plane cores when the CPUs are saturated
                // (a nice of -10 weighs ten times a core's thread); without
                // CAP_SYS_NICE it runs at the default.
                if let Err(e) =
                    rustix::process::setpriority_process(Some(rustix::thread::gettid()), -10)
                {
                    tracing::debug!("failover: no higher scheduling priority: {e}");
                }
                let mut run = Run {
                    machine: Machine::new(params),
                    link,
                    cfg,
                    report,
                    data,
                    beaten: None,
                };
                if let Err(e) = run.run(&stop, &wanted, &take_over) {
                    tracing::error!("failover stopped: {e}");
                    run.release();
                    run.update(|s| s.error = Some(e));
                }
            })
            .map_err(|e| format!("starting the failover thread: {e}"))?
    };
    Ok(Handle {
        stop,
        wanted,
        take_over,
        thread: Some(thread),
    })
}

struct Run {
    machine: Machine,
    link: Link,
    cfg: Failover,
    report: Report,
    data: Option<PathBuf>,
    /// While the addresses are held: when `failover.held` was last touched.
    beaten: Option<std::time::Instant>,
}

impl Run {
    fn run(
        &mut self,
        stop: &AtomicBool,
        wanted: &AtomicU8,
        take_over: &AtomicBool,
    ) -> Result<(), String> {
        let now = crate::clock::now_us();
        let actions = self.machine.start(now);
        self.apply(actions)?;
        let mut buf = vec![0u8; 2048];
        loop {
            if stop.load(Ordering::Acquire) {
                let actions = self.machine.shutdown(crate::clock::now_us());
                return self.apply(actions);
            }
            let want = wanted.load(Ordering::Acquire);
            if want != self.machine.priority() {
                tracing::info!(
                    vrid = self.cfg.vrid,
                    "failover: advertising priority {want} (was {})",
                    self.machine.priority()
                );
                let actions = self.machine.set_priority(crate::clock::now_us(), want);
                self.apply(actions)?;
            }
            if take_over.swap(false, Ordering::AcqRel) {
                let actions = self.machine.take_over(crate::clock::now_us());
                self.apply(actions)?;
            }
            self.beat();
            let now = crate::clock::now_us();
            // Wake for the next timer, and at least every 10 ms to see a stop.
            let wait = self
                .machine
                .deadline()
                .map_or(10_000, |d| d.saturating_sub(now))
                .clamp(500, 10_000);
            if let Some(r) = self.link.recv(&mut buf, wait)? {
                let now = crate::clock::now_us();
                let actions = self.machine.receive(now, r.src, r.dst, r.ttl, &buf[r.vrrp]);
                self.apply(actions)?;
            }
            let actions = self.machine.tick(crate::clock::now_us());
            self.apply(actions)?;
        }
    }

    /// Carries out `actions`. The status is brought up to date first, so
    /// that nobody who already reaches the addresses reads an older state.
    fn apply(&mut self, actions: Vec<Action>) -> Result<(), String> {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let changes: Vec<Transition> = actions
            .iter()
            .filter_map(|a| match *a {
                Action::Changed { from, to, why } => Some(Transition {
                    at_ms,
                    from,
                    to,
                    why,
                }),
                _ => None,
            })
            .collect();
        for t in &changes {
            if t.from == State::Master && t.why == Reason::Preempted {
                tracing::warn!(
                    vrid = self.cfg.vrid,
                    "failover: another master wins (higher priority or address); releasing the virtual addresses"
                );
            }
            tracing::info!(
                vrid = self.cfg.vrid,
                "failover: {} -> {} ({})",
                name(t.from),
                name(t.to),
                serde_json::to_value(t.why)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            );
        }
        let (state, master, priority, counts) = (
            self.machine.state(),
            self.machine.master(),
            self.machine.priority(),
            self.machine.counts(),
        );
        self.update(|s| {
            s.state = state;
            s.master = master;
            s.priority = priority;
            s.counts = counts;
            s.transitions.extend(changes);
            let excess = s.transitions.len().saturating_sub(50);
            s.transitions.drain(..excess);
        });
        for a in actions {
            match a {
                Action::Send(advert) => {
                    let clock_us = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros() as u64);
                    for dst in self.link.targets(&self.cfg.peers) {
                        let bytes = self
                            .machine
                            .encode(&advert, self.link.primary, dst, clock_us);
                        self.link.send(&bytes, dst);
                    }
                }
                Action::Take => {
                    self.hold();
                    if let Err(e) = self.link.addresses(&self.cfg, true) {
                        tracing::error!("failover: taking the virtual addresses: {e}");
                    }
                }
                Action::Release => self.release(),
                Action::Announce => self.link.announce(&self.cfg),
                Action::Changed { .. } => {}
            }
        }
        Ok(())
    }

    fn release(&mut self) {
        if let Err(e) = self.link.addresses(&self.cfg, false) {
            tracing::error!("failover: removing the virtual addresses: {e}");
        }
        if let Some(data) = &self.data {
            super::guard::clear(data);
        }
        self.beaten = None;
    }

    /// Writes down what is about to be held, for the supervisor.
    fn hold(&mut self) {
        let Some(data) = &self.data else {
            return;
        };
        let held = super::guard::Held {
            interface: self.cfg.interface.clone(),
            index: self.link.index,
            addresses: self.cfg.virtual_addresses.clone(),
            stale_ms: super::guard::stale_ms(self.cfg.advert_ms),
        };
        if let Err(e) = super::guard::hold(data, &held) {
            tracing::error!("failover: writing down the held addresses: {e}");
        }
        self.beaten = Some(std::time::Instant::now());
    }

    /// Tells the supervisor, while holding, that this thread still runs.
    fn beat(&mut self) {
        let (Some(data), Some(at)) = (&self.data, self.beaten) else {
            return;
        };
        let every = Duration::from_millis(super::guard::stale_ms(self.cfg.advert_ms) / 5);
        if at.elapsed() >= every {
            if let Err(e) = super::guard::beat(data) {
                tracing::warn!("failover: touching {}: {e}", super::guard::FILE);
            }
            self.beaten = Some(std::time::Instant::now());
        }
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        if let Some(s) = self
            .report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            f(s);
        }
    }
}

fn name(s: State) -> &'static str {
    match s {
        State::Initialize => "initialize",
        State::Backup => "backup",
        State::Master => "master",
    }
}

/// A packet off the raw socket: its IP header's source, destination and
/// TTL, and where in the buffer its VRRP message is.
struct Received {
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    vrrp: std::ops::Range<usize>,
}

/// The interface: its raw VRRP socket, index and primary address.
struct Link {
    /// Receives (both families) and sends (IPv4).
    socket: Socket,
    /// IPv6: sends, bound to the link-local source, so that the source the
    /// checksum was computed over is the one the packet carries.
    send6: Option<Socket>,
    index: u32,
    mac: [u8; 6],
    /// IPv4: the interface's first address; IPv6: its link-local one.
    primary: IpAddr,
    multicast: bool,
}

impl Link {
    fn open(cfg: &Failover) -> Result<Self, String> {
        let v6 = cfg
            .virtual_addresses
            .first()
            .is_some_and(|a| a.addr().is_ipv6());
        let iface = &cfg.interface;
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let raw = || {
            Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(PROTOCOL))))
                .map_err(|e| format!("failover: a raw VRRP socket (needs CAP_NET_RAW): {e}"))
        };
        let socket = raw()?;
        let index = rustix::net::netdevice::name_to_index(&socket, iface)
            .map_err(|e| format!("failover.interface {iface}: {e}"))?;
        let ctx = |what: &str, e: std::io::Error| format!("failover: {what} on {iface}: {e}");
        socket
            .bind_device(Some(iface.as_bytes()))
            .map_err(|e| ctx("binding", e))?;
        let multicast = cfg.peers.is_empty();
        let mac = super::netlink::mac_of(index)?;
        if v6 {
            let ll = super::netlink::link_local_v6(index)?.ok_or_else(|| {
                format!("failover.interface {iface}: has no IPv6 link-local address")
            })?;
            crate::rt::packet::want_v6_info(std::os::fd::AsFd::as_fd(&socket))
                .map_err(|e| ctx("asking for destinations and hop limits", e))?;
            if multicast {
                socket
                    .join_multicast_v6(&GROUP_V6, index)
                    .map_err(|e| ctx("joining ff02::12", e))?;
                socket
                    .set_multicast_loop_v6(false)
                    .map_err(|e| ctx("multicast loop", e))?;
            }
            let send = raw()?;
            send.bind_device(Some(iface.as_bytes()))
                .map_err(|e| ctx("binding", e))?;
            send.set_unicast_hops_v6(u32::from(TTL))
                .map_err(|e| ctx("hop limit", e))?;
            send.set_multicast_hops_v6(u32::from(TTL))
                .map_err(|e| ctx("multicast hop limit", e))?;
            send.set_multicast_if_v6(index)
                .map_err(|e| ctx("multicast interface", e))?;
            send.set_multicast_loop_v6(false)
                .map_err(|e| ctx("multicast loop", e))?;
            send.bind(&SockAddr::from(SocketAddrV6::new(ll, 0, 0, index)))
                .map_err(|e| ctx("binding the link-local source", e))?;
            return Ok(Self {
                socket,
                send6: Some(send),
                index,
                mac,
                primary: IpAddr::V6(ll),
                multicast,
            });
        }
        let primary = super::netlink::primary_v4(index)?
            .ok_or_else(|| format!("failover.interface {iface}: has no IPv4 address of its own"))?;
        socket.set_ttl(u32::from(TTL)).map_err(|e| ctx("TTL", e))?;
        if multicast {
            socket
                .set_multicast_ttl_v4(u32::from(TTL))
                .map_err(|e| ctx("multicast TTL", e))?;
            socket
                .set_multicast_loop_v4(false)
                .map_err(|e| ctx("multicast loop", e))?;
            socket
                .set_multicast_if_v4(&v4_of(primary))
                .map_err(|e| ctx("multicast interface", e))?;
            socket
                .join_multicast_v4_n(&GROUP_V4, &socket2::InterfaceIndexOrAddress::Index(index))
                .map_err(|e| ctx("joining 224.0.0.18", e))?;
        }
        Ok(Self {
            socket,
            send6: None,
            index,
            mac,
            primary,
            multicast,
        })
    }

    /// One packet within `wait_us`.
    fn recv(&self, buf: &mut [u8], wait_us: u64) -> Result<Option<Received>, String> {
        self.socket
            .set_read_timeout(Some(Duration::from_micros(wait_us.max(1))))
            .map_err(|e| format!("failover: socket timeout: {e}"))?;
        let quiet = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            )
        };
        if self.send6.is_some() {
            // A raw IPv6 socket hands over the payload only; the header's
            // destination and hop limit come as ancillary data.
            let got = match crate::rt::packet::recv_v6(std::os::fd::AsFd::as_fd(&self.socket), buf)
            {
                Ok(g) => g,
                Err(e) if quiet(&e) => return Ok(None),
                Err(e) => return Err(format!("failover: receiving: {e}")),
            };
            let Some(dst) = got.dst else {
                return Ok(None);
            };
            return Ok(Some(Received {
                src: IpAddr::V6(got.src),
                dst: IpAddr::V6(dst),
                ttl: got.hop_limit.unwrap_or(0),
                vrrp: 0..got.len.min(buf.len()),
            }));
        }
        let n = match std::io::Read::read(&mut &self.socket, buf) {
            Ok(n) => n,
            Err(e) if quiet(&e) => return Ok(None),
            Err(e) => return Err(format!("failover: receiving: {e}")),
        };
        // A raw IPv4 socket hands over the IP header too.
        let ip = &buf[..n];
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return Ok(None);
        }
        let header = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(n);
        if header < 20 || total < header {
            return Ok(None);
        }
        let src = IpAddr::from([ip[12], ip[13], ip[14], ip[15]]);
        let dst = IpAddr::from([ip[16], ip[17], ip[18], ip[19]]);
        Ok(Some(Received {
            src,
            dst,
            ttl: ip[8],
            vrrp: header..total,
        }))
    }

    /// Where adverts go: the group, or every peer.
    fn targets(&self, peers: &[IpAddr]) -> Vec<IpAddr> {
        match (self.multicast, self.primary) {
            (true, IpAddr::V4(_)) => vec![IpAddr::V4(GROUP_V4)],
            (true, IpAddr::V6(_)) => vec![IpAddr::V6(GROUP_V6)],
            (false, _) => peers.to_vec(),
        }
    }

    fn send(&self, bytes: &[u8], dst: IpAddr) {
        let (socket, to) = match (dst, &self.send6) {
            (IpAddr::V6(v6), Some(send)) => {
                // Link-scoped destinations (fe80::/10, ff02::/16) need the
                // interface as their scope.
                let scoped = v6.segments()[0] & 0xffc0 == 0xfe80 || v6.segments()[0] == 0xff02;
                let scope = if scoped { self.index } else { 0 };
                (send, SockAddr::from(SocketAddrV6::new(v6, 0, 0, scope)))
            }
            _ => (&self.socket, SockAddr::from(SocketAddr::new(dst, 0))),
        };
        if let Err(e) = socket.send_to(bytes, &to) {
            tracing::warn!("failover: sending an advert to {dst}: {e}");
        }
    }

    fn addresses(&self, cfg: &Failover, add: bool) -> Result<(), String> {
        super::netlink::addresses(self.index, &cfg.interface, &cfg.virtual_addresses, add)
    }

    fn announce(&self, cfg: &Failover) {
        for a in &cfg.virtual_addresses {
            let sent = match (a.addr(), self.primary) {
                (IpAddr::V4(v4), _) => super::arp::gratuitous(self.index, self.mac, v4),
                (IpAddr::V6(v6), IpAddr::V6(ll)) => {
                    super::nd::unsolicited(self.index, self.mac, ll, v6)
                }
                (IpAddr::V6(_), IpAddr::V4(_)) => Ok(()),
            };
            if let Err(e) = sent {
                tracing::warn!("failover: announcing {}: {e}", a.addr());
            }
        }
    }
}

fn v4_of(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    }
}

/// The failover's series for `/metrics`.
pub fn render_prometheus(s: &Status, o: &mut String) {
    use crate::metrics::family;
    use std::fmt::Write;
    let vrid = s.vrid;
    family(
        o,
        "edgebox_failover_state",
        "gauge",
        "1 for the state this appliance's virtual router is in (initialize, backup, master).",
    );
    for state in [State::Initialize, State::Backup, State::Master] {
        let _ = writeln!(
            o,
            "edgebox_failover_state{{vrid=\"{vrid}\",state=\"{}\"}} {}",
            name(state),
            u8::from(s.state == state)
        );
    }
    family(
        o,
        "edgebox_failover_priority",
        "gauge",
        "The priority this appliance advertises (lower than configured while it cannot serve).",
    );
    let _ = writeln!(
        o,
        "edgebox_failover_priority{{vrid=\"{vrid}\"}} {}",
        s.priority
    );
    family(
        o,
        "edgebox_failover_transitions_total",
        "counter",
        "State changes of the virtual router.",
    );
    let _ = writeln!(
        o,
        "edgebox_failover_transitions_total{{vrid=\"{vrid}\"}} {}",
        s.counts.transitions
    );
    family(
        o,
        "edgebox_failover_became_master_total",
        "counter",
        "Times this appliance took the virtual addresses.",
    );
    let _ = writeln!(
        o,
        "edgebox_failover_became_master_total{{vrid=\"{vrid}\"}} {}",
        s.counts.became_master
    );
    family(
        o,
        "edgebox_failover_adverts_received_total",
        "counter",
        "VRRP adverts received and accepted for reading.",
    );
    let _ = writeln!(
        o,
        "edgebox_failover_adverts_received_total{{vrid=\"{vrid}\"}} {}",
        s.counts.adverts
    );
    family(
        o,
        "edgebox_failover_packets_dropped_total",
        "counter",
        "VRRP packets dropped, by reason.",
    );
    for (reason, n) in [
        ("malformed", s.counts.malformed),
        ("ttl", s.counts.wrong_ttl),
        ("vrid", s.counts.wrong_vrid),
        ("auth", s.counts.unauthenticated),
    ] {
        let _ = writeln!(
            o,
            "edgebox_failover_packets_dropped_total{{vrid=\"{vrid}\",reason=\"{reason}\"}} {n}"
        );
    }
    family(
        o,
        "edgebox_failover_vrrp_path_lost_total",
        "counter",
        "Takeovers after which the old master still answered over the replication link (the VRRP path was lost, not the peer).",
    );
    let _ = writeln!(
        o,
        "edgebox_failover_vrrp_path_lost_total{{vrid=\"{vrid}\"}} {}",
        s.vrrp_path_lost
    );
    family(o, "edgebox_failover_other_master_total", "counter", "Adverts from another master heard while master (split brain, settled by priority and address).");
    let _ = writeln!(
        o,
        "edgebox_failover_other_master_total{{vrid=\"{vrid}\"}} {}",
        s.counts.other_master
    );
}
