//! A DHCPv4 client (RFC 2131), sans-IO: for an appliance whose image and
//! config name no address. [`Client`] is told the time and the packets that
//! arrive, and answers with what to send and which lease to configure;
//! PID 1 does the sockets and the netlink. Time is a [`Duration`] since any
//! fixed start, so the tests run leases of hours in microseconds.
//!
//! DISCOVER → OFFER → REQUEST → ACK, then renewal: at T1 (half the lease)
//! a REQUEST to the server that granted it, at T2 (7/8) to anyone, and at
//! the lease's end the address is removed and it starts over. Messages are
//! retransmitted after 4, 8, 16, 32 and then every 64 s, as RFC 2131 §4.1
//! suggests; replies are asked for by broadcast, since the interface has no
//! address yet to take a unicast.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::time::Duration;

/// The client's port, and the servers'.
pub const PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

/// An address granted by a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub lease: Duration,
    pub t1: Duration,
    pub t2: Duration,
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    Broadcast,
    Server(Ipv4Addr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(To, Vec<u8>),
    /// Configure this lease (a new one, or a changed one).
    Configure(Lease),
    /// The lease ended (expired or refused): remove its address.
    Deconfigure(Lease),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Selecting,
    Requesting(Lease),
    Bound,
    Renewing,
    Rebinding,
}

/// One interface's client.
#[derive(Debug, Clone)]
pub struct Client {
    mac: [u8; 6],
    xid: u32,
    state: State,
    /// The lease held, and when it was granted.
    held: Option<(Lease, Duration)>,
    /// When to (re)send next, and how many times it was sent.
    next: Duration,
    tries: u32,
}

impl Client {
    /// `seed` varies the transaction IDs between clients and boots.
    pub fn new(mac: [u8; 6], seed: u32) -> Client {
        Client {
            mac,
            xid: seed ^ u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]),
            state: State::Selecting,
            held: None,
            next: Duration::ZERO,
            tries: 0,
        }
    }

    pub fn lease(&self) -> Option<&Lease> {
        self.held.as_ref().map(|(l, _)| l)
    }

    /// When [`Client::poll`] wants to be called next.
    pub fn next_wakeup(&self) -> Duration {
        self.next
    }

    /// Timers: sends, retransmits, renews, and ends a lease that expired.
    pub fn poll(&mut self, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some((lease, since)) = &self.held {
            if now >= *since + lease.lease {
                out.push(Action::Deconfigure(lease.clone()));
                self.held = None;
                self.restart(now);
            } else if self.state == State::Bound && now >= *since + lease.t1 {
                self.state = State::Renewing;
                self.tries = 0;
                self.next = now;
            } else if self.state == State::Renewing && now >= *since + lease.t2 {
                self.state = State::Rebinding;
                self.tries = 0;
                self.next = now;
            }
        }
        if now < self.next {
            return out;
        }
        match self.state.clone() {
            State::Selecting => {
                out.push(Action::Send(
                    To::Broadcast,
                    self.message(DISCOVER, None, None),
                ));
                self.retransmit(now);
            }
            State::Requesting(offer) => {
                if self.tries >= 4 {
                    self.restart(now);
                    return self.poll(now);
                }
                out.push(Action::Send(
                    To::Broadcast,
                    self.message(REQUEST, Some(offer.address), Some(offer.server)),
                ));
                self.retransmit(now);
            }
            State::Bound => {
                if let Some((l, since)) = &self.held {
                    self.next = *since + l.t1;
                }
            }
            State::Renewing | State::Rebinding => {
                let Some((lease, since)) = self.held.clone() else {
                    self.restart(now);
                    return out;
                };
                let (to, until) = if self.state == State::Renewing {
                    (To::Server(lease.server), since + lease.t2)
                } else {
                    (To::Broadcast, since + lease.lease)
                };
                out.push(Action::Send(to, self.renewal(&lease)));
                // Half the time left, at least a minute (RFC 2131 §4.4.5).
                let half = until.saturating_sub(now) / 2;
                self.next = (now + half.max(Duration::from_secs(60))).min(until);
                self.tries += 1;
            }
        }
        out
    }

    /// A packet that arrived on port 68.
    pub fn on_packet(&mut self, now: Duration, packet: &[u8]) -> Vec<Action> {
        let Some(reply) = Reply::parse(packet) else {
            return Vec::new();
        };
        if reply.xid != self.xid || reply.chaddr != self.mac {
            return Vec::new();
        }
        match (&self.state, reply.kind) {
            (State::Selecting, OFFER) => {
                let Some(lease) = reply.lease() else {
                    return Vec::new();
                };
                self.state = State::Requesting(lease);
                self.tries = 0;
                self.next = now;
                self.poll(now)
            }
            (State::Requesting(offer), ACK) if reply.server == Some(offer.server) => {
                self.bind(now, reply)
            }
            (State::Renewing | State::Rebinding, ACK) => self.bind(now, reply),
            (State::Requesting(_) | State::Renewing | State::Rebinding, NAK) => {
                let mut out = Vec::new();
                if let Some((lease, _)) = self.held.take() {
                    out.push(Action::Deconfigure(lease));
                }
                self.restart(now);
                out
            }
            _ => Vec::new(),
        }
    }

    fn bind(&mut self, now: Duration, reply: Reply) -> Vec<Action> {
        let Some(lease) = reply.lease() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match self.held.take() {
            Some((old, _)) if old.address == lease.address && old.prefix == lease.prefix => {
                if old.router != lease.router {
                    out.push(Action::Configure(lease.clone()));
                }
            }
            Some((old, _)) => {
                out.push(Action::Deconfigure(old));
                out.push(Action::Configure(lease.clone()));
            }
            None => out.push(Action::Configure(lease.clone())),
        }
        self.next = now + lease.t1;
        self.held = Some((lease, now));
        self.state = State::Bound;
        self.tries = 0;
        self.xid = self.xid.wrapping_add(1);
        out
    }

    fn restart(&mut self, now: Duration) {
        self.state = State::Selecting;
        self.tries = 0;
        self.next = now;
        self.xid = self.xid.wrapping_add(1);
    }

    fn retransmit(&mut self, now: Duration) {
        self.next = now + Duration::from_secs(4 << self.tries.min(4));
        self.tries += 1;
    }

    fn renewal(&self, lease: &Lease) -> Vec<u8> {
        let mut m = self.message(REQUEST, None, None);
        // ciaddr: the address held, which the server answers to.
        m[12..16].copy_from_slice(&lease.address.octets());
        m
    }

    fn message(&self, kind: u8, requested: Option<Ipv4Addr>, server: Option<Ipv4Addr>) -> Vec<u8> {
        let mut m = vec![0u8; 236];
        m[0] = 1; // BOOTREQUEST
        m[1] = 1; // Ethernet
        m[2] = 6;
        m[4..8].copy_from_slice(&self.xid.to_be_bytes());
        if self.held.is_none() {
            m[10] = 0x80; // replies by broadcast: no address to take them yet
        }
        m[28..34].copy_from_slice(&self.mac);
        m.extend_from_slice(&MAGIC);
        m.extend_from_slice(&[53, 1, kind]);
        let mut id = vec![61, 7, 1];
        id.extend_from_slice(&self.mac);
        m.extend_from_slice(&id);
        if let Some(a) = requested {
            m.extend_from_slice(&[50, 4]);
            m.extend_from_slice(&a.octets());
        }
        if let Some(s) = server {
            m.extend_from_slice(&[54, 4]);
            m.extend_from_slice(&s.octets());
        }
        // Subnet mask, router, lease time, T1, T2.
        m.extend_from_slice(&[55, 5, 1, 3, 51, 58, 59]);
        m.push(255);
        m
    }
}

/// A server's message, as far as the client reads it.
#[derive(Debug, Clone)]
struct Reply {
    xid: u32,
    chaddr: [u8; 6],
    yiaddr: Ipv4Addr,
    kind: u8,
    server: Option<Ipv4Addr>,
    mask: Option<Ipv4Addr>,
    router: Option<Ipv4Addr>,
    lease: Option<u32>,
    t1: Option<u32>,
    t2: Option<u32>,
}

impl Reply {
    fn parse(p: &[u8]) -> Option<Reply> {
        if p.len() < 240 || p[0] != 2 || p[1] != 1 || p[2] != 6 || p[236..240] != MAGIC {
            return None;
        }
        let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        let mut r = Reply {
            xid: u32::from_be_bytes(p[4..8].try_into().ok()?),
            chaddr: p[28..34].try_into().ok()?,
            yiaddr: ip(&p[16..20]),
            kind: 0,
            server: None,
            mask: None,
            router: None,
            lease: None,
            t1: None,
            t2: None,
        };
        let mut opts = &p[240..];
        while let Some((&code, rest)) = opts.split_first() {
            match code {
                0 => {
                    opts = rest;
                    continue;
                }
                255 => break,
                _ => {}
            }
            let (&len, rest) = rest.split_first()?;
            let value = rest.get(..usize::from(len))?;
            opts = &rest[usize::from(len)..];
            let four = (value.len() >= 4).then(|| ip(value));
            let secs = four.map(u32::from);
            match code {
                53 => r.kind = *value.first()?,
                54 => r.server = four,
                1 => r.mask = four,
                3 => r.router = four,
                51 => r.lease = secs,
                58 => r.t1 = secs,
                59 => r.t2 = secs,
                _ => {}
            }
        }
        Some(r)
    }

    fn lease(&self) -> Option<Lease> {
        let mask = u32::from(self.mask.unwrap_or(Ipv4Addr::new(255, 255, 255, 0)));
        if mask.leading_ones() + mask.trailing_zeros() != 32 || self.yiaddr.is_unspecified() {
            return None;
        }
        let lease = Duration::from_secs(u64::from(self.lease?.max(10)));
        let t1 = self
            .t1
            .map_or(lease / 2, |s| Duration::from_secs(u64::from(s)))
            .min(lease);
        let t2 = self
            .t2
            .map_or(lease * 7 / 8, |s| Duration::from_secs(u64::from(s)))
            .clamp(t1, lease);
        Some(Lease {
            address: self.yiaddr,
            prefix: mask.leading_ones() as u8,
            router: self.router,
            server: self.server?,
            lease,
            t1,
            t2,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

    /// A server's reply to `request`.
    fn reply(request: &[u8], kind: u8, yiaddr: [u8; 4], lease_secs: u32) -> Vec<u8> {
        let mut p = vec![0u8; 236];
        p[0] = 2;
        p[1] = 1;
        p[2] = 6;
        p[4..8].copy_from_slice(&request[4..8]);
        p[16..20].copy_from_slice(&yiaddr);
        p[28..34].copy_from_slice(&request[28..34]);
        p.extend_from_slice(&MAGIC);
        p.extend_from_slice(&[53, 1, kind, 54, 4, 10, 0, 2, 2, 1, 4, 255, 255, 255, 0]);
        p.extend_from_slice(&[3, 4, 10, 0, 2, 1, 0, 0]); // router, then padding
        p.extend_from_slice(&[51, 4]);
        p.extend_from_slice(&lease_secs.to_be_bytes());
        p.push(255);
        p
    }

    fn sent(actions: &[Action]) -> Vec<(To, u8, Vec<u8>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(to, m) => {
                    let kind = m[240..]
                        .windows(2)
                        .position(|w| w == [53, 1])
                        .map(|i| m[240 + i + 2]);
                    Some((*to, kind.unwrap(), m.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Discover, offer, request, ack: bound at `t`.
    fn bound(c: &mut Client, t: Duration, lease: u32) -> Lease {
        let s = sent(&c.poll(t));
        assert_eq!(s[0].1, DISCOVER);
        let s = sent(&c.on_packet(t, &reply(&s[0].2, OFFER, [10, 0, 2, 100], lease)));
        assert_eq!((s[0].0, s[0].1), (To::Broadcast, REQUEST));
        // It asks for the offered address from the offering server.
        assert!(s[0].2.windows(6).any(|w| w == [50, 4, 10, 0, 2, 100]));
        assert!(s[0].2.windows(6).any(|w| w == [54, 4, 10, 0, 2, 2]));
        let a = c.on_packet(t, &reply(&s[0].2, ACK, [10, 0, 2, 100], lease));
        match &a[..] {
            [Action::Configure(l)] => l.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_lease_is_taken_and_configured() {
        let mut c = Client::new(MAC, 7);
        let l = bound(&mut c, secs(0), 3600);
        assert_eq!(
            l,
            Lease {
                address: Ipv4Addr::new(10, 0, 2, 100),
                prefix: 24,
                router: Some(Ipv4Addr::new(10, 0, 2, 1)),
                server: SERVER,
                lease: secs(3600),
                t1: secs(1800),
                t2: secs(3150),
            }
        );
        assert_eq!(c.next_wakeup(), secs(1800));
        assert!(c.poll(secs(1000)).is_empty());
    }

    #[test]
    fn discover_is_retransmitted_with_back_off_and_strangers_are_ignored() {
        let mut c = Client::new(MAC, 7);
        let first = sent(&c.poll(secs(0)));
        assert_eq!(first.len(), 1);
        let mut at = Vec::new();
        let mut t = secs(0);
        for _ in 0..7 {
            t = c.next_wakeup();
            assert_eq!(sent(&c.poll(t)).len(), 1);
            at.push(t.as_secs());
        }
        assert_eq!(at, [4, 12, 28, 60, 124, 188, 252]);
        // A reply for another transaction or another machine: nothing.
        let mut other = reply(&first[0].2, OFFER, [10, 0, 2, 9], 60);
        other[4] ^= 1;
        assert!(c.on_packet(t, &other).is_empty());
        assert!(c.on_packet(t, b"garbage").is_empty());
        assert!(c.on_packet(t, &[0u8; 400]).is_empty());
    }

    #[test]
    fn it_renews_with_the_server_then_with_anyone_and_lets_go_when_it_expires() {
        let mut c = Client::new(MAC, 7);
        bound(&mut c, secs(0), 120);
        // T1 = 60 s: a unicast REQUEST carrying the address held.
        let s = sent(&c.poll(secs(60)));
        assert_eq!((s[0].0, s[0].1), (To::Server(SERVER), REQUEST));
        assert_eq!(&s[0].2[12..16], &[10, 0, 2, 100]);
        // The server answers: same address, no reconfiguration, new timers.
        let a = c.on_packet(secs(61), &reply(&s[0].2, ACK, [10, 0, 2, 100], 120));
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(c.next_wakeup(), secs(121));
        // No answer this time: at T2 (105 s after the grant) it broadcasts.
        let s = sent(&c.poll(secs(121)));
        assert_eq!(s[0].0, To::Server(SERVER));
        let s = sent(&c.poll(secs(61 + 105)));
        assert_eq!((s[0].0, s[0].1), (To::Broadcast, REQUEST));
        // Nobody: at the end of the lease the address goes, and it starts over.
        let a = c.poll(secs(61 + 120));
        assert!(
            matches!(&a[0], Action::Deconfigure(l) if l.address == Ipv4Addr::new(10, 0, 2, 100)),
            "{a:?}"
        );
        assert_eq!(sent(&a)[0].1, DISCOVER);
        assert_eq!(c.lease(), None);
    }

    #[test]
    fn a_nak_or_a_new_address_reconfigures() {
        let mut c = Client::new(MAC, 7);
        bound(&mut c, secs(0), 100);
        let s = sent(&c.poll(secs(50)));
        let a = c.on_packet(secs(50), &reply(&s[0].2, ACK, [10, 0, 2, 101], 100));
        assert!(
            matches!(&a[..], [Action::Deconfigure(o), Action::Configure(n)]
            if o.address == Ipv4Addr::new(10, 0, 2, 100) && n.address == Ipv4Addr::new(10, 0, 2, 101)),
            "{a:?}"
        );
        let s = sent(&c.poll(secs(100)));
        let a = c.on_packet(secs(100), &reply(&s[0].2, NAK, [0, 0, 0, 0], 0));
        assert!(matches!(&a[..], [Action::Deconfigure(_)]), "{a:?}");
        assert_eq!(sent(&c.poll(secs(100)))[0].1, DISCOVER);
    }

    #[test]
    fn an_offer_that_is_never_acknowledged_starts_over() {
        let mut c = Client::new(MAC, 7);
        let s = sent(&c.poll(secs(0)));
        let s = sent(&c.on_packet(secs(1), &reply(&s[0].2, OFFER, [10, 0, 2, 100], 60)));
        assert_eq!(s[0].1, REQUEST);
        let mut kinds = Vec::new();
        for _ in 0..4 {
            let t = c.next_wakeup();
            kinds.extend(sent(&c.poll(t)).into_iter().map(|s| s.1));
        }
        assert_eq!(kinds, [REQUEST, REQUEST, REQUEST, DISCOVER]);
    }

    #[test]
    fn bad_offers_are_ignored() {
        let mut c = Client::new(MAC, 7);
        let s = sent(&c.poll(secs(0)));
        let mut no_lease = reply(&s[0].2, OFFER, [10, 0, 2, 100], 60);
        let at = no_lease.windows(2).position(|w| w == [51, 4]).unwrap();
        no_lease[at] = 250; // an unknown option instead of the lease time
        assert!(c.on_packet(secs(0), &no_lease).is_empty());
        let mut bad_mask = reply(&s[0].2, OFFER, [10, 0, 2, 100], 60);
        let at = bad_mask.windows(2).position(|w| w == [1, 4]).unwrap();
        bad_mask[at + 5] = 1; // 255.255.255.1
        assert!(c.on_packet(secs(0), &bad_mask).is_empty());
        // Truncated options do not panic.
        let ok = reply(&s[0].2, OFFER, [10, 0, 2, 100], 60);
        for cut in 240..ok.len() {
            let _ = Client::new(MAC, 7).on_packet(secs(0), &ok[..cut]);
        }
    }
}
