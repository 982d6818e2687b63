//! Every transition of RFC 5798, 6.4, in simulated time: routers joined by a
//! wire that can be cut, adverts delivered at once, time advanced from one
//! deadline to the next.

use super::*;
use crate::failover::packet::GROUP_V4;

const MS: u64 = 1000;

fn params(last_octet: u8, priority: u8) -> Params {
    Params {
        vrid: 51,
        priority,
        advert_cs: 10,
        preempt: true,
        preempt_delay_us: 0,
        addresses: vec!["10.0.2.100".parse().unwrap()],
        primary: IpAddr::from([10, 0, 2, last_octet]),
        auth_key: None,
    }
}

/// Routers on one wire.
struct Sim {
    now: u64,
    nodes: Vec<Machine>,
    up: Vec<bool>,
    linked: bool,
    /// Whether each holds the addresses.
    holds: Vec<bool>,
    log: Vec<(u64, usize, State, Reason)>,
    announced: Vec<Vec<u64>>,
}

impl Sim {
    fn new(nodes: Vec<Params>) -> Self {
        let n = nodes.len();
        Self {
            now: 0,
            nodes: nodes.into_iter().map(Machine::new).collect(),
            up: vec![true; n],
            linked: true,
            holds: vec![false; n],
            log: Vec::new(),
            announced: vec![Vec::new(); n],
        }
    }

    fn start(&mut self, i: usize) {
        let out = self.nodes[i].start(self.now);
        self.apply(i, out);
    }

    fn apply(&mut self, i: usize, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send(advert) => {
                    let src = self.nodes[i].params().primary;
                    let dst = IpAddr::V4(GROUP_V4);
                    let bytes = self.nodes[i].encode(&advert, src, dst, self.now);
                    for j in 0..self.nodes.len() {
                        if j != i && self.up[j] && self.up[i] && self.linked {
                            let out = self.nodes[j].receive(self.now, src, dst, 255, &bytes);
                            self.apply(j, out);
                        }
                    }
                }
                Action::Take => self.holds[i] = true,
                Action::Release => self.holds[i] = false,
                Action::Announce => self.announced[i].push(self.now),
                Action::Changed { to, why, .. } => self.log.push((self.now, i, to, why)),
            }
        }
    }

    /// Runs until `until`, from deadline to deadline.
    fn run_until(&mut self, until: u64) {
        loop {
            let next = (0..self.nodes.len())
                .filter(|&i| self.up[i])
                .filter_map(|i| self.nodes[i].deadline().map(|d| (d, i)))
                .min();
            match next {
                Some((at, i)) if at <= until => {
                    self.now = self.now.max(at);
                    let out = self.nodes[i].tick(self.now);
                    self.apply(i, out);
                }
                _ => break,
            }
        }
        self.now = until;
    }

    /// A hard death: no more adverts, and (for the test) its addresses gone.
    fn kill(&mut self, i: usize) {
        self.up[i] = false;
        self.holds[i] = false;
    }

    fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.up[i] && self.nodes[i].state() == State::Master)
            .collect()
    }

    /// When node `i` last became master.
    fn became_master(&self, i: usize) -> Option<u64> {
        self.log
            .iter()
            .rev()
            .find(|(_, n, s, _)| *n == i && *s == State::Master)
            .map(|(t, ..)| *t)
    }
}

#[test]
fn a_lone_backup_becomes_master_after_the_master_down_interval() {
    let mut s = Sim::new(vec![params(15, 100)]);
    s.start(0);
    assert_eq!(s.nodes[0].state(), State::Backup);
    // 3 × 100 ms + (256 − 100) × 100 ms / 256 = 300 + 60.9 ms.
    s.run_until(360 * MS);
    assert_eq!(s.nodes[0].state(), State::Backup);
    s.run_until(361 * MS);
    assert_eq!(s.nodes[0].state(), State::Master);
    assert!(s.holds[0]);
    assert_eq!(s.log.last().unwrap().3, Reason::MasterDown);
}

#[test]
fn the_owner_is_master_at_once_and_announces_repeatedly() {
    let mut s = Sim::new(vec![params(15, 255)]);
    s.start(0);
    assert_eq!(s.nodes[0].state(), State::Master);
    assert_eq!(s.log[0].3, Reason::Owner);
    s.run_until(3000 * MS);
    assert_eq!(
        s.announced[0],
        vec![0, 100 * MS, 500 * MS, 2000 * MS],
        "announced at the takeover, then again"
    );
}

#[test]
fn a_backup_hearing_the_master_stays_backup_and_takes_over_when_it_dies() {
    let mut s = Sim::new(vec![params(15, 150), params(16, 100)]);
    s.start(0);
    s.start(1);
    s.run_until(1000 * MS);
    assert_eq!(s.masters(), vec![0]);
    assert_eq!(s.nodes[1].state(), State::Backup);
    assert_eq!(s.nodes[1].master(), Some(IpAddr::from([10, 0, 2, 15])));
    assert_eq!(
        s.nodes[1].counts().longest_advert_gap_us,
        100 * MS,
        "adverts every 100 ms, none late"
    );
    // Killed just after an advert: the backup waits its whole
    // master-down interval from that advert.
    s.kill(0);
    let died = s.now;
    s.run_until(died + 2000 * MS);
    assert_eq!(s.masters(), vec![1]);
    let gap = s.became_master(1).unwrap() - died;
    assert!(gap <= 361 * MS, "took over after {gap} µs");
    assert!(s.holds[1]);
}

#[test]
fn a_stopping_master_hands_over_after_the_skew_time_only() {
    let mut s = Sim::new(vec![params(15, 150), params(16, 100)]);
    s.start(0);
    s.start(1);
    s.run_until(1005 * MS);
    let out = s.nodes[0].shutdown(s.now);
    assert!(out.contains(&Action::Release));
    let stopped = s.now;
    s.apply(0, out);
    s.up[0] = false;
    s.run_until(stopped + 1000 * MS);
    // Skew: (256 − 100) × 100 ms / 256 = 60.9 ms.
    let gap = s.became_master(1).unwrap() - stopped;
    assert_eq!(gap, 60_937, "{gap} µs");
    let last = s.log.iter().rev().find(|l| l.1 == 0).unwrap();
    assert_eq!((last.2, last.3), (State::Initialize, Reason::Shutdown));
    assert!(!s.holds[0]);
}

#[test]
fn a_higher_priority_preempts_and_without_preemption_waits() {
    for preempt in [true, false] {
        let mut s = Sim::new(vec![params(15, 100), params(16, 200)]);
        s.nodes[1].p.preempt = preempt;
        s.start(0);
        s.run_until(1000 * MS);
        assert_eq!(s.masters(), vec![0]);
        s.start(1);
        s.run_until(3000 * MS);
        if preempt {
            assert_eq!(s.masters(), vec![1], "preempted");
            assert!(!s.holds[0] && s.holds[1]);
            assert!(s.log.iter().any(|l| l.1 == 0 && l.3 == Reason::Preempted));
        } else {
            assert_eq!(s.masters(), vec![0], "no preemption");
            assert_eq!(s.nodes[1].state(), State::Backup);
        }
    }
}

#[test]
fn preemption_waits_its_delay_after_start() {
    let mut s = Sim::new(vec![params(15, 100), params(16, 200)]);
    s.nodes[1].p.preempt_delay_us = 5000 * MS;
    s.start(0);
    s.run_until(1000 * MS);
    s.start(1);
    s.run_until(5000 * MS);
    assert_eq!(s.masters(), vec![0], "still within the delay");
    s.run_until(7000 * MS);
    assert_eq!(s.masters(), vec![1], "after it");
}

#[test]
fn equal_priorities_are_settled_by_the_higher_address() {
    let mut s = Sim::new(vec![params(15, 100), params(16, 100)]);
    // Both start cut off from each other, so both become master.
    s.linked = false;
    s.start(0);
    s.start(1);
    s.run_until(1000 * MS);
    assert_eq!(s.masters(), vec![0, 1], "split brain while partitioned");
    // The partition heals: the lower address gives way at the next advert.
    s.linked = true;
    s.run_until(1200 * MS);
    assert_eq!(s.masters(), vec![1]);
    assert!(!s.holds[0], "the loser released its addresses");
    assert!(s.nodes[0].counts().other_master >= 1);
    // The winner draws back the neighbours the loser's announcements drew
    // away, again a little later; not on every advert after.
    let healed: Vec<u64> = s.announced[1]
        .iter()
        .copied()
        .filter(|&t| t >= 1000 * MS)
        .collect();
    assert!(!healed.is_empty() && healed[0] <= 1200 * MS, "{healed:?}");
    s.run_until(10_000 * MS);
    let after: Vec<u64> = s.announced[1]
        .iter()
        .copied()
        .filter(|&t| t >= 1000 * MS)
        .collect();
    assert!(
        after.len() <= 4,
        "a few announcements, not one per advert: {after:?}"
    );
    assert_eq!(s.masters(), vec![1], "and it stays settled");
}

#[test]
fn a_master_whose_health_lowers_its_priority_gives_way() {
    let mut s = Sim::new(vec![params(15, 150), params(16, 100)]);
    s.start(0);
    s.start(1);
    s.run_until(1000 * MS);
    assert_eq!(s.masters(), vec![0]);
    let out = s.nodes[0].set_priority(s.now, 50);
    assert!(
        matches!(&out[..], [Action::Send(a)] if a.priority == 50),
        "a master advertises its new priority at once: {out:?}"
    );
    s.apply(0, out);
    s.run_until(2000 * MS);
    assert_eq!(s.masters(), vec![1]);
    let out = s.nodes[0].set_priority(s.now, 150);
    assert!(out.is_empty(), "a backup sends nothing: {out:?}");
    s.run_until(3000 * MS);
    assert_eq!(s.masters(), vec![0], "back when healthy (preempt)");
}

/// The planned handover: the master lowers its priority to 1 and asks the
/// backup to take over; the backup becomes master at once (even without
/// preemption), and the old master keeps the addresses until it hears the
/// new one, so that someone holds them at every instant.
#[test]
fn a_handover_is_make_before_break_even_without_preemption() {
    for preempt in [true, false] {
        let mut b = params(16, 100);
        b.preempt = preempt;
        let mut s = Sim::new(vec![params(15, 150), b]);
        s.start(0);
        s.start(1);
        s.run_until(1000 * MS);
        assert_eq!(s.masters(), vec![0]);
        let out = s.nodes[0].set_priority(s.now, 1);
        s.apply(0, out);
        assert_eq!(s.masters(), vec![0], "lowering alone moves nothing yet");
        assert!(s.holds[0]);
        // The backup's take-over: while it adds the addresses, the master
        // still holds them; its first advert makes the master give way.
        let asked = s.now;
        let out = s.nodes[1].take_over(s.now);
        assert!(out.contains(&Action::Take), "{out:?}");
        assert!(
            s.holds[0],
            "the old master holds them while the new one takes them"
        );
        s.apply(1, out);
        assert!(s.holds[1] && !s.holds[0], "preempt {preempt}");
        assert_eq!(s.masters(), vec![1]);
        assert_eq!(s.became_master(1), Some(asked), "at once");
        assert!(s.log.iter().any(|l| l.1 == 1 && l.3 == Reason::Asked));
        // At priority 1 the old master does not preempt back.
        s.run_until(5000 * MS);
        assert_eq!(s.masters(), vec![1], "preempt {preempt}");
        // Restored, it preempts (make-before-break again) when it may.
        let out = s.nodes[0].set_priority(s.now, 150);
        s.apply(0, out);
        s.run_until(6000 * MS);
        assert_eq!(s.masters(), vec![0], "taken back");
        // Asking a master or a stopped router to take over does nothing.
        assert!(s.nodes[0].take_over(s.now).is_empty());
        s.nodes[1].shutdown(s.now);
        assert!(s.nodes[1].take_over(s.now).is_empty());
    }
}

#[test]
fn a_backup_follows_the_masters_interval() {
    // A keepalived master at 1 s: the backup's master-down interval is
    // 3 s + skew, not 300 ms + skew.
    let mut b = Machine::new(params(16, 100));
    b.start(0);
    let src = IpAddr::from([10, 0, 2, 15]);
    let dst = IpAddr::V4(GROUP_V4);
    let slow = Advert {
        vrid: 51,
        priority: 200,
        interval_cs: 100,
        addresses: vec!["10.0.2.100".parse().unwrap()],
    };
    b.receive(10 * MS, src, dst, 255, &slow.encode(src, dst));
    assert_eq!(b.deadline(), Some(10 * MS + 3_000 * MS + 609_375));
}

#[test]
fn a_flood_of_bad_packets_changes_nothing_and_is_counted() {
    let mut s = Sim::new(vec![params(15, 150), params(16, 100)]);
    s.start(0);
    s.start(1);
    s.run_until(1000 * MS);
    let src = IpAddr::from([10, 0, 2, 99]);
    let dst = IpAddr::V4(GROUP_V4);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let winner = Advert {
        vrid: 51,
        priority: 254,
        interval_cs: 10,
        addresses: vec![],
    };
    let mut wrong_vrid = winner.clone();
    wrong_vrid.vrid = 52;
    for i in 0..100_000u64 {
        let n = (next() % 40) as usize;
        let mut junk: Vec<u8> = (0..n).map(|_| next() as u8).collect();
        let ttl = match i % 3 {
            0 => 255,
            _ => next() as u8,
        };
        if i % 5 == 0 {
            // Well-formed but for another VRID, or routed (TTL 254).
            junk = wrong_vrid.encode(src, dst);
        } else if i % 7 == 0 {
            junk = winner.encode(src, dst);
            let out = s.nodes[1].receive(s.now, src, dst, 254, &junk);
            assert!(out.is_empty());
            continue;
        }
        for node in 0..2 {
            let out = s.nodes[node].receive(s.now, src, dst, ttl, &junk);
            assert!(out.is_empty(), "a bad packet made {node} act: {out:?}");
        }
    }
    let c = s.nodes[1].counts();
    assert!(
        c.malformed > 10_000 && c.wrong_ttl > 10_000 && c.wrong_vrid > 1_000,
        "{c:?}"
    );
    s.run_until(3000 * MS);
    assert_eq!(s.masters(), vec![0], "the pair is as it was");
}

#[test]
fn a_master_hearing_a_stopping_router_asserts_itself_at_once() {
    let mut m = Machine::new(params(15, 255));
    m.start(0);
    let src = IpAddr::from([10, 0, 2, 16]);
    let dst = IpAddr::V4(GROUP_V4);
    let stop = Advert {
        vrid: 51,
        priority: 0,
        interval_cs: 10,
        addresses: vec![],
    };
    // The owner announced itself at start; 1.05 s later it announces again
    // (the stopping router may have drawn neighbours) and asserts.
    let out = m.receive(1050 * MS, src, dst, 255, &stop.encode(src, dst));
    assert!(
        matches!(&out[..], [Action::Announce, Action::Send(a)] if a.priority == 255),
        "{out:?}"
    );
    assert_eq!(m.state(), State::Master);
    // Again at once: an advert, no second announcement within a second.
    let out = m.receive(1060 * MS, src, dst, 255, &stop.encode(src, dst));
    assert!(
        matches!(&out[..], [Action::Send(a)] if a.priority == 255),
        "{out:?}"
    );
}

/// After a partition the loser may hear the winner before the winner hears
/// it: the loser's priority-0 advert as it gives way makes the winner
/// announce itself anyway.
#[test]
fn a_master_that_gives_way_says_so_and_the_winner_announces() {
    let mut s = Sim::new(vec![params(15, 150), params(16, 100)]);
    s.linked = false;
    s.start(0);
    s.start(1);
    s.run_until(1000 * MS);
    assert_eq!(s.masters(), vec![0, 1]);
    let before = s.announced[0].len();
    // Only node 0's next advert crosses (node 1's are still lost): node 1
    // gives way, saying so with priority 0, which node 0 hears.
    let src = s.nodes[0].params().primary;
    let dst = IpAddr::V4(GROUP_V4);
    let advert = Advert {
        vrid: 51,
        priority: 150,
        interval_cs: 10,
        addresses: vec!["10.0.2.100".parse().unwrap()],
    };
    let out = s.nodes[1].receive(s.now, src, dst, 255, &advert.encode(src, dst));
    assert!(
        matches!(out.first(), Some(Action::Send(a)) if a.priority == 0),
        "{out:?}"
    );
    s.linked = true;
    s.apply(1, out);
    assert_eq!(s.masters(), vec![0]);
    assert!(s.announced[0].len() > before, "the winner announced itself");
}

#[test]
fn a_master_woken_late_keeps_its_cadence() {
    let mut m = Machine::new(params(15, 255));
    m.start(0);
    assert_eq!(
        m.deadline(),
        Some(100 * MS),
        "first announcement repeat or advert"
    );
    // Woken 7 ms late for the advert due at 100 ms: the next is still due
    // at 200 ms, not 207.
    let out = m.tick(107 * MS);
    assert!(out.iter().any(|a| matches!(a, Action::Send(_))), "{out:?}");
    let out = m.tick(199 * MS);
    assert!(!out.iter().any(|a| matches!(a, Action::Send(_))), "{out:?}");
    assert!(m
        .tick(200 * MS)
        .iter()
        .any(|a| matches!(a, Action::Send(_))));
    // Woken more than a whole interval late, it does not send a burst.
    assert!(m
        .tick(550 * MS)
        .iter()
        .any(|a| matches!(a, Action::Send(_))));
    assert!(!m
        .tick(551 * MS)
        .iter()
        .any(|a| matches!(a, Action::Send(_))));
}

#[test]
fn with_a_key_only_authenticated_fresh_adverts_count() {
    let keyed = |octet, priority| Params {
        auth_key: Some(b"the pair's shared secret".to_vec()),
        ..params(octet, priority)
    };
    let mut s = Sim::new(vec![keyed(15, 150), keyed(16, 100)]);
    s.start(0);
    s.start(1);
    s.run_until(1000 * MS);
    assert_eq!(s.masters(), vec![0], "the pair works with the key");
    assert_eq!(s.nodes[1].counts().unauthenticated, 0);
    let (src, dst) = (IpAddr::from([10, 0, 2, 15]), IpAddr::V4(GROUP_V4));
    let advert = Advert {
        vrid: 51,
        priority: 0,
        interval_cs: 10,
        addresses: vec!["10.0.2.100".parse().unwrap()],
    };
    // Plain VRRPv3 (a keepalived or an attacker without the key), another
    // key, and a recorded authenticated advert played again: all dropped,
    // counted, and the backup stays backup.
    let plain = advert.encode(src, dst);
    let mut stranger = Machine::new(Params {
        auth_key: Some(b"some other secret!!".to_vec()),
        ..params(15, 150)
    });
    let foreign = stranger.encode(&advert, src, dst, u64::MAX / 2);
    let mut master = Machine::new(keyed(15, 150));
    let recorded = master.encode(&advert, src, dst, 1);
    for bytes in [&plain, &foreign, &recorded] {
        let out = s.nodes[1].receive(s.now, src, dst, 255, bytes);
        assert!(out.is_empty(), "{out:?}");
    }
    assert_eq!(s.nodes[1].counts().unauthenticated, 3);
    assert_eq!(s.nodes[1].state(), State::Backup);
    // A router without the key counts the keyed adverts as malformed.
    let mut plain_router = Machine::new(params(16, 100));
    plain_router.start(s.now);
    let mut keyed_master = Machine::new(keyed(15, 150));
    let sealed = keyed_master.encode(
        &Advert {
            priority: 150,
            ..advert
        },
        src,
        dst,
        5,
    );
    assert!(plain_router
        .receive(s.now, src, dst, 255, &sealed)
        .is_empty());
    assert_eq!(plain_router.counts().malformed, 1);
}
