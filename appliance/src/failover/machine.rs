//! The VRRPv3 state machine of one virtual router (RFC 5798, 6.4), sans-IO:
//! time comes in as microseconds, packets as bytes, and what to do goes out
//! as [`Action`]s. `failover::io` sends, receives and moves addresses.
#![forbid(unsafe_code)]

use std::net::IpAddr;

use super::packet::{Advert, Malformed};

/// What the machine is set up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub vrid: u8,
    /// 1..=255 (255: the owner of the addresses, master at once).
    pub priority: u8,
    /// The advertisement interval, in centiseconds (1..=4095).
    pub advert_cs: u16,
    /// Whether a higher priority takes over from a lower one that is master.
    pub preempt: bool,
    /// After start, how long a backup waits before it preempts.
    pub preempt_delay_us: u64,
    /// The virtual addresses, all of one family.
    pub addresses: Vec<IpAddr>,
    /// This router's own address on the interface: the adverts' source, and
    /// the tie-break between equal priorities (the higher address wins).
    pub primary: IpAddr,
    /// The shared secret that authenticates adverts ([`super::auth`]);
    /// none: plain VRRPv3 (keepalived).
    pub auth_key: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Initialize,
    Backup,
    Master,
}

/// Why the state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Started as the owner of the addresses (priority 255).
    Owner,
    /// Started, and waiting to hear from a master.
    Started,
    /// No advert from a master within the master-down interval.
    MasterDown,
    /// The master said it is stopping (priority 0).
    MasterStopping,
    /// An advert from a router that wins (higher priority, or equal and a
    /// higher address).
    Preempted,
    /// This router is stopping.
    Shutdown,
    /// The master asked this backup to take over (a planned handover over
    /// the replication link; the master gives way when it hears us).
    Asked,
}

/// What the machine asks of its IO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this advertisement (to the group or every peer).
    Send(Advert),
    /// Add the virtual addresses to the interface.
    Take,
    /// Announce them: gratuitous ARP (IPv4) or unsolicited neighbour
    /// advertisements (IPv6), so that switches and neighbours move to us.
    Announce,
    /// Remove the virtual addresses.
    Release,
    /// The state changed.
    Changed { from: State, to: State, why: Reason },
}

/// Counts of what was received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub adverts: u64,
    pub malformed: u64,
    pub wrong_ttl: u64,
    pub wrong_vrid: u64,
    /// With `auth_key`: adverts without a valid MAC, or played again.
    pub unauthenticated: u64,
    pub transitions: u64,
    pub became_master: u64,
    /// Times another master was heard while master (split brain, settled by
    /// the RFC's rules).
    pub other_master: u64,
    /// As backup: the longest time between two adverts of the same master,
    /// in microseconds (a late advert is a near-miss of a false failover).
    pub longest_advert_gap_us: u64,
}

/// After becoming master, the announcements are repeated at these offsets:
/// neighbours that missed the first (a switch port coming up, a lost frame)
/// still move.
const ANNOUNCE_AT_US: [u64; 4] = [0, 100_000, 500_000, 2_000_000];

/// See the module documentation.
#[derive(Debug)]
pub struct Machine {
    p: Params,
    state: State,
    /// The priority advertised: the configured one, or lower while this
    /// appliance cannot serve ([`Machine::set_priority`]).
    priority: u8,
    master_adver_cs: u16,
    /// Master: when the next advert is due; Backup: when the master is
    /// taken as down.
    timer: Option<u64>,
    /// When the announcements of the last takeover are due.
    announce: Vec<u64>,
    started_us: u64,
    /// Who sent the last advert this router accepted as the master's.
    master: Option<IpAddr>,
    /// When this master last drew neighbours back from a losing master.
    reasserted_us: Option<u64>,
    /// As backup: the last advert accepted from the master, and when.
    last_advert: Option<(IpAddr, u64)>,
    auth: Option<aws_lc_rs::hmac::Key>,
    /// The last sequence accepted from each sender (authenticated only, so
    /// as many entries as there are routers with the key).
    seqs: std::collections::HashMap<IpAddr, u64>,
    /// The last sequence this router sent.
    sent_seq: u64,
    counts: Counts,
}

impl Machine {
    pub fn new(p: Params) -> Self {
        let priority = p.priority;
        let master_adver_cs = p.advert_cs;
        let auth = p.auth_key.as_deref().map(super::auth::key);
        Self {
            auth,
            seqs: Default::default(),
            sent_seq: 0,
            p,
            state: State::Initialize,
            priority,
            master_adver_cs,
            timer: None,
            announce: Vec::new(),
            started_us: 0,
            master: None,
            reasserted_us: None,
            last_advert: None,
            counts: Counts::default(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn priority(&self) -> u8 {
        self.priority
    }

    pub fn params(&self) -> &Params {
        &self.p
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The master as far as this router knows: itself, the sender of the
    /// last accepted advert, or none.
    pub fn master(&self) -> Option<IpAddr> {
        match self.state {
            State::Master => Some(self.p.primary),
            State::Backup => self.master,
            State::Initialize => None,
        }
    }

    /// When [`Machine::tick`] next has something to do.
    pub fn deadline(&self) -> Option<u64> {
        let announce = self.announce.iter().min().copied();
        match (self.timer, announce) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The Startup event.
    pub fn start(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state != State::Initialize {
            return out;
        }
        self.started_us = now;
        if self.priority == 255 {
            self.become_master(now, Reason::Owner, &mut out);
        } else {
            self.master_adver_cs = self.p.advert_cs;
            self.timer = Some(now + self.master_down_us());
            self.change(State::Backup, Reason::Started, &mut out);
        }
        out
    }

    /// The Shutdown event: a master sends priority 0 (so that the backup
    /// takes over after only its skew time) and gives up its addresses.
    pub fn shutdown(&mut self, _now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state == State::Master {
            out.push(Action::Send(self.advert(0)));
            out.push(Action::Release);
        }
        self.timer = None;
        self.announce.clear();
        if self.state != State::Initialize {
            self.change(State::Initialize, Reason::Shutdown, &mut out);
        }
        out
    }

    /// Timers that are due at `now`.
    pub fn tick(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let before = self.announce.len();
        self.announce.retain(|&at| at > now);
        if self.announce.len() < before {
            out.push(Action::Announce);
        }
        match (self.state, self.timer) {
            (State::Master, Some(at)) if at <= now => {
                out.push(Action::Send(self.advert(self.priority)));
                // On the cadence, not from whenever this ran: a thread woken
                // late does not make every later advert late too.
                let next = at + self.advert_us();
                self.timer = Some(if next > now {
                    next
                } else {
                    now + self.advert_us()
                });
            }
            (State::Backup, Some(at)) if at <= now => {
                self.become_master(now, Reason::MasterDown, &mut out);
            }
            _ => {}
        }
        out
    }

    /// A VRRP packet from `src` to `dst` that arrived with `ttl`.
    pub fn receive(
        &mut self,
        now: u64,
        src: IpAddr,
        dst: IpAddr,
        ttl: u8,
        bytes: &[u8],
    ) -> Vec<Action> {
        let mut bytes = bytes;
        let mut seq = None;
        if let Some(key) = &self.auth {
            match super::auth::open(key, src, dst, bytes, self.seqs.get(&src).copied()) {
                Ok((msg, n)) => (bytes, seq) = (msg, Some(n)),
                Err(_) => {
                    self.counts.unauthenticated += 1;
                    return Vec::new();
                }
            }
        }
        let decoded = Advert::decode(bytes, src, dst, ttl);
        if let (Some(n), Ok(_)) = (seq, &decoded) {
            self.seqs.insert(src, n);
        }
        match decoded {
            Ok(a) if a.vrid != self.p.vrid => {
                self.counts.wrong_vrid += 1;
                Vec::new()
            }
            Ok(a) if src == self.p.primary => {
                // Our own, looped back by multicast.
                let _ = a;
                Vec::new()
            }
            Ok(a) => {
                self.counts.adverts += 1;
                self.advert_received(now, src, &a)
            }
            Err(Malformed::Ttl) => {
                self.counts.wrong_ttl += 1;
                Vec::new()
            }
            Err(_) => {
                self.counts.malformed += 1;
                Vec::new()
            }
        }
    }

    fn advert_received(&mut self, now: u64, src: IpAddr, a: &Advert) -> Vec<Action> {
        let mut out = Vec::new();
        match self.state {
            State::Initialize => {}
            State::Backup => {
                if a.priority == 0 {
                    self.timer = Some(now + self.skew_us());
                    return out;
                }
                let may_preempt =
                    self.p.preempt && now >= self.started_us + self.p.preempt_delay_us;
                if !may_preempt || a.priority >= self.priority {
                    self.master_adver_cs = a.interval_cs.max(1);
                    self.timer = Some(now + self.master_down_us());
                    self.master = Some(src);
                    if let Some((_, at)) = self.last_advert.filter(|(from, _)| *from == src) {
                        let gap = now.saturating_sub(at);
                        self.counts.longest_advert_gap_us =
                            self.counts.longest_advert_gap_us.max(gap);
                    }
                    self.last_advert = Some((src, now));
                }
            }
            State::Master => {
                if a.priority == 0 {
                    // A stopping router, or a master that just gave way to
                    // us: assert at once, and draw back the neighbours it
                    // may have drawn to itself.
                    self.reassert(now, &mut out);
                    return out;
                }
                self.counts.other_master += 1;
                let wins = a.priority > self.priority
                    || (a.priority == self.priority && ip_key(src) > ip_key(self.p.primary));
                if !wins {
                    // Split brain settled in our favour (a partition healed):
                    // the loser gives way on our advert, sent now.
                    self.reassert(now, &mut out);
                    return out;
                }
                // We lose: a priority-0 advert tells the winner that we let
                // go, so that it announces itself even if it never heard us
                // (its adverts reached us first after a partition).
                out.push(Action::Send(self.advert(0)));
                self.master_adver_cs = a.interval_cs.max(1);
                self.timer = Some(now + self.master_down_us());
                self.announce.clear();
                self.master = Some(src);
                out.push(Action::Release);
                self.change(State::Backup, Reason::Preempted, &mut out);
            }
        }
        out
    }

    /// A master's answer to another router's advert that it outranks: the
    /// neighbours are drawn back (announced before the advert, as on a
    /// takeover, at most once a second whatever keeps advertising), and an
    /// advert goes out at once.
    fn reassert(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.reasserted_us.is_none_or(|t| now >= t + 1_000_000) {
            self.reasserted_us = Some(now);
            out.push(Action::Announce);
            self.announce = ANNOUNCE_AT_US[1..].iter().map(|d| now + d).collect();
        }
        out.push(Action::Send(self.advert(self.priority)));
        self.timer = Some(now + self.advert_us());
    }

    /// The bytes of `advert` from `src` to `dst`, authenticated when the
    /// router has a key (`clock_us`: a clock that stays ahead across
    /// restarts, the wall clock; the sequence is kept increasing anyway).
    pub fn encode(&mut self, advert: &Advert, src: IpAddr, dst: IpAddr, clock_us: u64) -> Vec<u8> {
        let mut bytes = advert.encode(src, dst);
        if let Some(key) = &self.auth {
            self.sent_seq = clock_us.max(self.sent_seq + 1);
            super::auth::seal(key, src, dst, &mut bytes, self.sent_seq);
        }
        bytes
    }

    /// Lowers (or restores) the advertised priority, for health tracking
    /// and planned handovers: a master that cannot serve gives way to a
    /// preempting backup, and keeps the addresses until that backup's
    /// advert arrives (make-before-break). The owner's 255 is not changed.
    /// A master that changes its priority advertises it at once.
    pub fn set_priority(&mut self, now: u64, priority: u8) -> Vec<Action> {
        let mut out = Vec::new();
        if self.p.priority == 255 || priority.clamp(1, 254) == self.priority {
            return out;
        }
        self.priority = priority.clamp(1, 254);
        if self.state == State::Master {
            out.push(Action::Send(self.advert(self.priority)));
            self.timer = Some(now + self.advert_us());
        }
        out
    }

    /// A planned handover, asked of this backup by the master: it becomes
    /// master at once, whatever its priority and preemption, and the
    /// master (which lowered its priority first) gives way on hearing it.
    pub fn take_over(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state == State::Backup {
            self.become_master(now, Reason::Asked, &mut out);
        }
        out
    }

    fn become_master(&mut self, now: u64, why: Reason, out: &mut Vec<Action>) {
        // The addresses are taken and announced before the first advert: a
        // master that hears it lets them go at once, and the neighbours are
        // to move here first (make-before-break).
        out.push(Action::Take);
        out.push(Action::Announce);
        out.push(Action::Send(self.advert(self.priority)));
        self.announce = ANNOUNCE_AT_US[1..].iter().map(|d| now + d).collect();
        self.timer = Some(now + self.advert_us());
        self.master = None;
        self.counts.became_master += 1;
        self.change(State::Master, why, out);
    }

    fn change(&mut self, to: State, why: Reason, out: &mut Vec<Action>) {
        let from = self.state;
        self.state = to;
        self.counts.transitions += 1;
        if to != State::Backup {
            self.last_advert = None;
        }
        out.push(Action::Changed { from, to, why });
    }

    fn advert(&self, priority: u8) -> Advert {
        Advert {
            vrid: self.p.vrid,
            priority,
            interval_cs: self.p.advert_cs,
            addresses: self.p.addresses.clone(),
        }
    }

    fn advert_us(&self) -> u64 {
        u64::from(self.p.advert_cs) * 10_000
    }

    /// Skew_Time: ((256 - Priority) * Master_Adver_Interval) / 256.
    fn skew_us(&self) -> u64 {
        (256 - u64::from(self.priority)) * u64::from(self.master_adver_cs) * 10_000 / 256
    }

    /// Master_Down_Interval: 3 * Master_Adver_Interval + Skew_Time.
    fn master_down_us(&self) -> u64 {
        3 * u64::from(self.master_adver_cs) * 10_000 + self.skew_us()
    }
}

/// Addresses compared as unsigned numbers (IPv4 before IPv6).
fn ip_key(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
