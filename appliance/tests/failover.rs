//! Two edgebox processes as an active-backup pair, each in a network
//! namespace of its own, joined by a bridge in a third namespace where the
//! client runs: the virtual address moves when the master dies, and back
//! when it returns. The client opens a connection to the virtual address
//! every 10 ms; the longest gap between two answers is printed.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::lan::*;
use common::*;
use serde_json::json;

/// What a make-before-break handover may lose: no new connection is
/// refused, but one whose handshake with the old master straddles the
/// moment the client's neighbour cache moves to the new one (its next
/// segment goes to a box that never saw it, which resets it) is lost. The
/// window is a round trip; a client opening a connection every 10 ms hits
/// it about once in four handovers on this machine under the test suite's
/// load. keepalived's priority-0 stop loses 6–61.
const HANDOVER_LOSS: usize = 1;

#[test]
fn the_backup_takes_the_virtual_address_when_the_master_dies_and_gives_it_back() {
    let lan = Lan::new(2);
    let a = lan.start(1, &appliance(1, 150));
    let b = lan.start(2, &appliance(2, 100));
    wait_for("node1 to serve the virtual address", || {
        (ask().as_deref() == Some("node1")).then_some(())
    });
    let status = a.api("GET", "/v1/failover", None, &[]).expect(200).json();
    assert_eq!(status["state"], "master", "{status}");
    // The backup knows the master once it has heard an advert.
    let status = wait_for("node2 to hear node1's adverts", || {
        let s = b.api("GET", "/v1/failover", None, &[]).expect(200).json();
        (s["master"] == "10.9.0.1").then_some(s)
    });
    assert_eq!(status["state"], "backup", "{status}");

    let mut report = Vec::new();
    // 1. The master is killed (SIGKILL): the backup takes over; 2. it
    // comes back with the higher priority and preempts. Five times, each
    // kill 10 ms later after the step starts (the test does not see when
    // an advert goes out, so the phase in the 40 ms cycle is not pinned). The goal at the default 40 ms adverts is
    // 200 ms (3 × 40 + 24 ms skew, plus the client's 10 ms); keepalived at
    // 100 ms adverts: 320 ms. The bound leaves room for a loaded machine.
    let mut a = a;
    let mut gaps = Vec::new();
    for k in 0..5 {
        let mut a_dir = None;
        let (gap, _) = step(&mut report, "master killed", "node2", 500 + 10 * k, || {
            a_dir = Some(a.kill());
        });
        assert!(gap < Duration::from_millis(500), "{report:?}");
        gaps.push(gap.as_millis());
        let mut back = None;
        step(&mut report, "preempted back", "node1", 200, || {
            back = Some(lan.restart(1, a_dir.take().unwrap()));
        });
        a = back.unwrap();
    }
    gaps.sort_unstable();
    report.push(format!(
        "kills across the advert cycle: gaps {} ms (min {}, max {})",
        gaps.iter()
            .map(u128::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        gaps[0],
        gaps[4]
    ));
    let status = b.api("GET", "/v1/failover", None, &[]).expect(200).json();
    assert_eq!(status["state"], "backup", "{status}");
    assert!(
        status["transitions"].as_array().unwrap().len() >= 11,
        "backup, then master and backup five times: {status}"
    );

    // 3. Live through the admin API: node2's priority raised above node1's,
    // it takes the address (its VRRP restarted with the new settings).
    step(
        &mut report,
        "priority raised through the API",
        "node2",
        200,
        || {
            let mut config = b.api("GET", "/v1/config", None, &[]).expect(200).json();
            config["failover"]["priority"] = json!(200);
            b.api("PUT", "/v1/config", Some(&config.to_string()), &[])
                .expect(200);
        },
    );

    // 4. A graceful stop (SIGTERM), make-before-break: the master lowers
    // its priority to 1, keeps the address until node1 (preempting) holds
    // it, and only then stops accepting and drains. No request fails.
    let mut b = b;
    let (_, failed) = step(&mut report, "master stopped", "node1", 300, || {
        b.signal(rustix::process::Signal::TERM);
    });
    assert!(b.wait_exit().success());
    assert!(failed <= HANDOVER_LOSS, "{report:?}");
    let metrics = a.api("GET", "/metrics", None, &[]).expect(200).body;
    assert!(
        metrics.contains("edgebox_failover_state{vrid=\"51\",state=\"master\"} 1"),
        "{metrics}"
    );
    println!("{}", report.join("\n"));
}

/// keepalived (Debian's) doing VRRP in namespace 2, for an edgebox there
/// without failover; killed by PID when dropped.
struct Keepalived {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Keepalived {
    fn start(lan: &Lan, dir: &std::path::Path, priority: u8) -> Self {
        Self::start_with(
            lan,
            dir,
            &format!(
                "virtual_router_id 51\n  priority {priority}\n  advert_int 0.04\n\
                 unicast_src_ip 10.9.0.2\n  unicast_peer {{\n    10.9.0.1\n  }}\n\
                 virtual_ipaddress {{\n    {VIP}/24\n  }}"
            ),
        )
    }

    /// keepalived in namespace 2 with `instance` inside its one
    /// `vrrp_instance` (a backup on eth0, VRRPv3).
    fn start_with(lan: &Lan, dir: &std::path::Path, instance: &str) -> Self {
        let conf = dir.join("keepalived.conf");
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n  router_id edgebox-test\n  vrrp_version 3\n}}\n\
                 vrrp_instance pair {{\n  state BACKUP\n  interface eth0\n  {instance}\n}}\n"
            ),
        )
        .unwrap();
        let log = dir.join("keepalived.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &lan.hosts[1], "/usr/sbin/keepalived"])
            .args(["--dont-fork", "--log-console", "--log-detail", "--vrrp"])
            .arg("--use-file")
            .arg(&conf)
            .arg("--pid")
            .arg(dir.join("keepalived.pid"))
            .arg("--vrrp_pid")
            .arg(dir.join("vrrp.pid"))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("keepalived (the test command installs it)");
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL to keepalived and its VRRP child: a crash. Its address stays
    /// on its interface, as after any keepalived crash.
    fn kill(&mut self) {
        let vrrp = std::fs::read_to_string(self.log.with_file_name("vrrp.pid")).unwrap_or_default();
        if let Ok(pid) = vrrp.trim().parse::<i32>() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn edgebox_and_keepalived_pair_and_take_over_from_each_other() {
    let lan = Lan::new(2);
    let scratch = tempfile::tempdir().unwrap();
    let a = lan.start(1, &appliance(1, 150));
    let _b = lan.start(2, &server(2));
    let mut ka = Keepalived::start(&lan, scratch.path(), 100);
    wait_for("keepalived to hear edgebox and stay backup", || {
        ka.log().contains("Entering BACKUP STATE").then_some(())
    });
    wait_for("edgebox to serve the virtual address", || {
        (ask().as_deref() == Some("node1")).then_some(())
    });
    let mut report = Vec::new();
    // keepalived backs up edgebox: edgebox is killed, keepalived takes
    // over; edgebox comes back with the higher priority and preempts.
    let at = format!("{VIP}:8080").parse().unwrap();
    let a = killed_and_back(&lan, a, &ka, at, "", &mut report);
    // Roles swapped: edgebox's priority lowered below keepalived's, which
    // preempts it; then keepalived is killed and edgebox takes over.
    step(
        &mut report,
        "edgebox priority lowered, keepalived preempts",
        "node2",
        200,
        || {
            let mut config = a.api("GET", "/v1/config", None, &[]).expect(200).json();
            config["failover"]["priority"] = json!(50);
            a.api("PUT", "/v1/config", Some(&config.to_string()), &[])
                .expect(200);
        },
    );
    let status = a.api("GET", "/v1/failover", None, &[]).expect(200).json();
    assert_eq!(status["state"], "backup", "{status}");
    assert_eq!(status["master"], "10.9.0.2", "{status}");
    let (gap, _) = step(
        &mut report,
        "keepalived master killed, edgebox takes over",
        "node1",
        300,
        || {
            ka.kill();
        },
    );
    assert!(gap < Duration::from_millis(500), "{report:?}");
    let status = a.api("GET", "/v1/failover", None, &[]).expect(200).json();
    assert_eq!(
        status["counts"]["malformed"], 0,
        "keepalived's adverts all read: {status}"
    );
    println!("{}", report.join("\n"));
}

#[test]
fn a_master_whose_critical_pool_has_no_healthy_backend_gives_way() {
    let lan = Lan::new(2);
    // Each appliance's own backend, on its own loopback.
    let in_ns = |i: usize| {
        let ns = lan.hosts[i - 1].clone();
        std::thread::spawn(move || {
            enter(&ns);
            Backend::start(&format!("backend{i}"))
        })
        .join()
        .unwrap()
    };
    let (back1, back2) = (in_ns(1), in_ns(2));
    let with_pool = |i: usize, priority: u8, backend: &Backend| {
        let mut c = appliance(i, priority);
        c["pools"] = json!([{
            "name": "app",
            "backends": [{"address": backend.addr.to_string()}],
            "health_check": {"path": "/healthz", "interval_ms": 100, "timeout_ms": 100, "rise": 1, "fall": 1},
        }]);
        c["failover"]["critical_pools"] = json!(["app"]);
        c
    };
    let a = lan.start(1, &with_pool(1, 150, &back1));
    let _b = lan.start(2, &with_pool(2, 100, &back2));
    wait_for("node1 to serve the virtual address", || {
        (ask().as_deref() == Some("node1")).then_some(())
    });
    let mut report = Vec::new();
    // node1's backend fails its checks: node1 advertises priority 1 and
    // node2 (preempting) takes the address.
    step(
        &mut report,
        "critical pool down on the master",
        "node2",
        200,
        || {
            back1
                .healthy
                .store(false, std::sync::atomic::Ordering::SeqCst);
        },
    );
    let status = a.api("GET", "/v1/failover", None, &[]).expect(200).json();
    assert_eq!(status["priority"], 1, "{status}");
    assert_eq!(
        status["priority_reasons"][0], "pool app has no healthy backend",
        "{status}"
    );
    assert_eq!(status["state"], "backup", "{status}");
    // Healthy again: priority 150 back, and it preempts.
    step(&mut report, "critical pool back", "node1", 200, || {
        back1
            .healthy
            .store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let status = a.api("GET", "/v1/failover", None, &[]).expect(200).json();
    assert_eq!(
        (status["priority"].clone(), status["state"].clone()),
        (json!(150), json!("master")),
        "{status}"
    );
    assert_eq!(status["priority_reasons"], json!([]), "{status}");
    println!("{}", report.join("\n"));
}

/// `Lan` members with replication between them (identities made first),
/// so that a handover can ask the peer over the replication link.
fn replicating(lan: &Lan, priority: [u8; 2], preempt: [bool; 2]) -> Vec<Edgebox> {
    replicating_over(lan, "10.9.0", priority, preempt)
}

/// [`replicating`], the replication link on the `/24` network `net`.
fn replicating_over(lan: &Lan, net: &str, priority: [u8; 2], preempt: [bool; 2]) -> Vec<Edgebox> {
    replicating_with(lan, net, priority, preempt, |_| {})
}

/// [`replicating_over`], each config changed by `more` before the start.
fn replicating_with(
    lan: &Lan,
    net: &str,
    priority: [u8; 2],
    preempt: [bool; 2],
    more: impl Fn(&mut serde_json::Value),
) -> Vec<Edgebox> {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let pins: Vec<String> = dirs.iter().map(|d| identity(d.path())).collect();
    dirs.into_iter()
        .enumerate()
        .map(|(k, dir)| {
            let (i, other) = (k + 1, 2 - k);
            let mut c = appliance(i, priority[k]);
            c["failover"]["preempt"] = json!(preempt[k]);
            c["replication"] = json!({
                "listen": format!("{net}.{i}:7443"),
                "peers": [{"address": format!("{net}.{other}:7443"), "fingerprint": pins[1 - k], "name": format!("node{other}")}],
                "timeout_ms": 2000,
            });
            more(&mut c);
            let ns = lan.hosts[k].clone();
            std::thread::spawn(move || {
                enter(&ns);
                Edgebox::start_in(dir, &c, 1)
            })
            .join()
            .unwrap()
        })
        .collect()
}

fn connected(eb: &Edgebox) -> bool {
    let r = eb
        .api("GET", "/v1/replication", None, &[])
        .expect(200)
        .json();
    r["peers"][0]["state"] == "connected"
}

/// With `handover_hold_ms` a release first stops taking new connections
/// (their SYNs dropped), so that none is in its handshake when the address
/// moves: a client that waits for its SYN to be sent again, as every TCP
/// stack does, sees no failure, only a gap of about a second.
#[test]
fn a_handover_with_a_hold_loses_no_connection() {
    let lan = Lan::new(2);
    let nodes = replicating_with(&lan, "10.9.0", [150, 100], [true, false], |c| {
        c["failover"]["handover_hold_ms"] = json!(300);
    });
    let (a, b) = (&nodes[0], &nodes[1]);
    wait_for("node1 to serve the virtual address", || {
        (ask().as_deref() == Some("node1")).then_some(())
    });
    wait_for("replication to connect both ways", || {
        (connected(a) && connected(b)).then_some(())
    });
    // A client opening a connection every 10 ms, each on a thread of its own
    // and waiting up to 5 s for it (a dropped SYN is sent again after 1 s).
    let patient = || {
        ask_waiting(
            format!("{VIP}:8080").parse().unwrap(),
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
    };
    let started = Instant::now();
    let mut clients = Vec::new();
    let mut released = None;
    while started.elapsed() < Duration::from_secs(4) {
        if released.is_none() && started.elapsed() >= Duration::from_millis(500) {
            released = Some(
                a.ctl_command(&["failover", "release"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
        }
        let at = Instant::now();
        clients.push(std::thread::spawn(move || (patient(), at, Instant::now())));
        std::thread::sleep(Duration::from_millis(10).saturating_sub(at.elapsed()));
    }
    let out = ok(released.unwrap().wait_with_output().unwrap());
    assert!(out.contains("handed over: 10.9.0.2 is master now"), "{out}");
    let mut answers: Vec<(Option<String>, Instant, Instant)> =
        clients.into_iter().map(|c| c.join().unwrap()).collect();
    answers.sort_by_key(|(_, _, done)| *done);
    let failed = answers.iter().filter(|(w, _, _)| w.is_none()).count();
    let done: Vec<Instant> = answers
        .iter()
        .filter(|(w, _, _)| w.is_some())
        .map(|(_, _, at)| *at)
        .collect();
    let gap = done
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    // Connections whose SYN the hold dropped: answered after the client sent
    // it again, a second later (without a hold, none takes that long here).
    let held = answers
        .iter()
        .filter(|(_, start, done)| *done - *start >= Duration::from_millis(900))
        .count();
    eprintln!(
        "release with a 300 ms hold: {} connections, {failed} failed, {held} held and sent again, longest gap between answers {} ms",
        answers.len(),
        gap.as_millis()
    );
    let slowest = answers
        .iter()
        .map(|(_, start, done)| *done - *start)
        .max()
        .unwrap_or_default();
    eprintln!("slowest connection: {} ms", slowest.as_millis());
    assert_eq!(failed, 0);
    assert!(held > 0, "no connection was held");
    assert_eq!(answers.last().unwrap().0.as_deref(), Some("node2"));
    let s = a.api("GET", "/v1/failover", None, &[]).expect(200).json();
    assert_eq!(s["state"], "backup", "{s}");
}

/// `edgebox ctl failover release`: the master asks its peer over the
/// replication link and keeps the address until the peer holds it; the
/// peer here does not preempt, so only the request can move the address.
#[test]
fn a_planned_handover_asks_the_peer_first_and_loses_no_request() {
    let lan = Lan::new(2);
    let mut nodes = replicating(&lan, [150, 100], [true, false]);
    let (a, b) = (&nodes[0], &nodes[1]);
    wait_for("node1 to serve the virtual address", || {
        (ask().as_deref() == Some("node1")).then_some(())
    });
    wait_for("replication to connect both ways", || {
        (connected(a) && connected(b)).then_some(())
    });
    let mut report = Vec::new();
    let mut ctl = None;
    let (_, failed) = step(&mut report, "ctl failover release", "node2", 200, || {
        let out = a.ctl(&["failover", "release"]);
        ctl = Some(out);
    });
    let out = ok(ctl.unwrap());
    assert!(out.contains("handed over: 10.9.0.2 is master now"), "{out}");
    assert!(failed <= HANDOVER_LOSS, "{report:?}");
    let s = a.api("GET", "/v1/failover", None, &[]).expect(200).json();
    assert_eq!(
        (s["state"].clone(), s["priority"].clone()),
        (json!("backup"), json!(1)),
        "{s}"
    );
    assert!(
        s["priority_reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("released"),
        "{s}"
    );
    let s = b.api("GET", "/v1/failover", None, &[]).expect(200).json();
    let last = s["transitions"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["to"].clone(), last["why"].clone()),
        (json!("master"), json!("asked")),
        "{s}"
    );
    // Released, node1 does not preempt back on its own.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ask().as_deref(), Some("node2"));
    // Releasing a backup is refused, naming why.
    let r = a.api("POST", "/v1/failover/release", None, &[]);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("not master"), "{}", r.body);

    // Reclaimed: priority 150 again, and node1 preempts (make-before-break).
    let (_, failed) = step(&mut report, "ctl failover reclaim", "node1", 200, || {
        ok(a.ctl(&["failover", "reclaim"]));
    });
    assert!(failed <= HANDOVER_LOSS, "{report:?}");

    // A graceful stop of the master hands over the same way: node2, which
    // does not preempt, is asked, and no request fails.
    let (_, failed) = step(
        &mut report,
        "master stopped (SIGTERM)",
        "node2",
        200,
        || {
            nodes[0].signal(rustix::process::Signal::TERM);
        },
    );
    assert!(nodes[0].wait_exit().success());
    assert!(failed <= HANDOVER_LOSS, "{report:?}");
    let logs = nodes[0].logs().join("\n");
    assert!(
        logs.contains("the peer holds the virtual addresses"),
        "{logs}"
    );
    println!("{}", report.join("\n"));
}

/// The server's child processes, by /proc.
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|st| {
                // pid (comm) state ppid ...: comm may hold spaces.
                st.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_owned))
                    == Some(pid.to_string())
            })
        })
        .collect()
}

/// Under `edgebox supervise` (what PID 1 runs on the appliance), a server
/// that is killed or hangs loses the virtual address at once: the box never
/// goes on answering ARP for an address it cannot serve (keepalived's node
/// does after a SIGKILL).
#[test]
fn a_supervised_server_that_dies_or_hangs_gives_up_the_address_at_once() {
    let lan = Lan::new(2);
    let a = {
        let ns = lan.hosts[0].clone();
        let config = appliance(1, 150);
        std::thread::spawn(move || {
            enter(&ns);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("edgebox.json");
            std::fs::write(&path, config.to_string()).unwrap();
            let args = [
                "supervise",
                "--config",
                path.to_str().unwrap(),
                "--cores",
                "1",
            ]
            .map(str::to_owned);
            Edgebox::spawn(dir, &args)
        })
        .join()
        .unwrap()
    };
    let _b = lan.start(2, &appliance(2, 100));
    let server = |what: &str| {
        wait_for(what, || {
            (ask().as_deref() == Some("node1"))
                .then(|| children_of(a.pid()))
                .and_then(|c| (c.len() == 1).then(|| c[0]))
        })
    };
    let first = server("node1 (supervised) to serve the virtual address");
    assert!(holds(&lan, 1));
    let mut report = Vec::new();
    let gone_after = |sig: rustix::process::Signal, pid: i32| {
        let at = Instant::now();
        rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), sig).unwrap();
        wait_for("node1 to lose the virtual address", || {
            (!holds(&lan, 1)).then(|| at.elapsed())
        })
    };
    // Killed: the supervisor reaps it and removes the address.
    let took = gone_after(rustix::process::Signal::KILL, first);
    report.push(format!(
        "server killed: address removed after {} ms",
        took.as_millis()
    ));
    assert!(took < Duration::from_millis(300), "{report:?}");
    // node2 serves meanwhile; the supervisor starts the server again (after
    // a second), and it preempts.
    wait_for("node2 to serve", || {
        (ask().as_deref() == Some("node2")).then_some(())
    });
    let second = server("the restarted node1 to serve the virtual address");
    assert_ne!(first, second);
    // Hung (stopped): its failover no longer touches failover.held; after
    // its stale time (500 ms at 40 ms adverts) the supervisor removes the
    // address and kills it.
    let took = gone_after(rustix::process::Signal::STOP, second);
    report.push(format!(
        "server hung: address removed after {} ms",
        took.as_millis()
    ));
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "{report:?}"
    );
    wait_for("node2 to serve", || {
        (ask().as_deref() == Some("node2")).then_some(())
    });
    let third = server("node1 to serve again after the hang");
    assert_ne!(second, third);
    let logs = a.logs().join("\n");
    assert!(logs.contains("stopped advertising (hung)"), "{logs}");
    assert!(
        logs.contains("removed the virtual addresses the server held: 10.9.0.100/24"),
        "{logs}"
    );
    // The supervisor itself killed: its server stops too (SIGTERM, by the
    // parent-death signal), instead of running on unsupervised.
    drop(a);
    wait_for("the server to stop with its supervisor", || {
        let state = std::fs::read_to_string(format!("/proc/{third}/stat")).unwrap_or_default();
        let gone = state
            .rsplit_once(')')
            .is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'));
        gone.then_some(())
    });
    println!("{}", report.join("\n"));
}

/// A partition between the two makes two masters; healed, node2 gives way
/// at node1's next advert and node1 draws the client back: one master, the
/// client served by it. The partition: each node's neighbour entry for the
/// other points at a MAC nobody has, so their unicast adverts are dropped
/// (as frames for another host) while the client still reaches both.
#[test]
fn a_partition_heals_into_one_master() {
    let lan = Lan::new(2);
    // Replication over a cable of its own between the two (10.8.0.0/24),
    // which the partition of the LAN leaves up: the second path.
    lan.cable();
    let nodes = replicating_over(&lan, "10.8.0", [150, 100], [true, true]);
    let (a, b) = (&nodes[0], &nodes[1]);
    wait_for("replication to connect over the cable", || {
        (connected(a) && connected(b)).then_some(())
    });
    wait_for("node1 to serve the virtual address", || {
        (ask().as_deref() == Some("node1")).then_some(())
    });
    let neigh = |i: usize, args: &[&str]| {
        let (ns, other) = (&lan.hosts[i - 1], format!("10.9.0.{}", 3 - i));
        let mut all = vec!["-n", ns, "neigh", args[0], &other];
        all.extend_from_slice(&args[1..]);
        all.extend_from_slice(&["dev", "eth0"]);
        ip(&all);
    };
    for i in [1, 2] {
        neigh(
            i,
            &["replace", "lladdr", "02:00:00:00:00:99", "nud", "permanent"],
        );
    }
    let state =
        |eb: &Edgebox| eb.api("GET", "/v1/failover", None, &[]).expect(200).json()["state"].clone();
    wait_for("node2 to become master too (split brain)", || {
        (state(b) == "master").then_some(())
    });
    assert_eq!(state(a), "master");
    // node2 took over for missing adverts, but node1 answers over the
    // cable: a lost VRRP path, not a dead peer.
    let sb = wait_for("node2 to find node1 alive over replication", || {
        let s = b.api("GET", "/v1/failover", None, &[]).expect(200).json();
        (s["vrrp_path_lost"] == 1).then_some(s)
    });
    let logs = b.logs().join("\n");
    assert!(
        logs.contains("the VRRP path between the two is lost, not the peer"),
        "{sb}\n{logs}"
    );
    assert!(holds(&lan, 1) && holds(&lan, 2));
    let mut report = Vec::new();
    step(&mut report, "partition healed", "node1", 200, || {
        for i in [1, 2] {
            neigh(i, &["del"]);
        }
    });
    assert_eq!((state(a), state(b)), (json!("master"), json!("backup")));
    assert!(
        holds(&lan, 1) && !holds(&lan, 2),
        "the loser released its address"
    );
    let sb = b.api("GET", "/v1/failover", None, &[]).expect(200).json();
    assert!(sb["counts"]["other_master"].as_u64().unwrap() >= 1, "{sb}");
    let logs = b.logs().join("\n");
    assert!(logs.contains("another master wins"), "{logs}");
    let metrics = b.api("GET", "/metrics", None, &[]).expect(200).body;
    assert!(
        metrics.contains("edgebox_failover_other_master_total{vrid=\"51\"} "),
        "{metrics}"
    );
    assert!(
        metrics.contains("edgebox_failover_vrrp_path_lost_total{vrid=\"51\"} 1"),
        "{metrics}"
    );
    // A dead master is told apart: node1 killed, node2 takes over and finds
    // it silent over the cable too; the count stays.
    let mut nodes = nodes;
    let a = nodes.remove(0);
    let b = &nodes[0];
    step(&mut report, "master killed", "node2", 200, || {
        drop(a.kill())
    });
    wait_for("node2 to find node1 down", || {
        b.logs()
            .iter()
            .any(|l| l.contains("does not answer over the replication link either"))
            .then_some(())
    });
    let sb = b.api("GET", "/v1/failover", None, &[]).expect(200).json();
    assert_eq!(sb["vrrp_path_lost"], 1, "{sb}");
    println!("{}", report.join("\n"));
}

/// The master's data disk fails (its file system turns read-only, as ext4
/// does on errors): the probe fails, the master advertises priority 1 and
/// the backup takes over; repaired, the master preempts back.
#[test]
fn a_master_whose_data_disk_fails_gives_way() {
    let lan = Lan::new(2);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(_disk) = SmallDisk::mount(&data, "64m") else {
        return;
    };
    let a = {
        let ns = lan.hosts[0].clone();
        std::thread::spawn(move || {
            enter(&ns);
            Edgebox::start_in(dir, &appliance(1, 150), 1)
        })
        .join()
        .unwrap()
    };
    let _b = lan.start(2, &appliance(2, 100));
    wait_for("node1 to serve the virtual address", || {
        (ask().as_deref() == Some("node1")).then_some(())
    });
    let remount = |how: &str| {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -o remount,{how}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut report = Vec::new();
    step(&mut report, "data disk read-only", "node2", 200, || {
        remount("ro")
    });
    let s = a.api("GET", "/v1/failover", None, &[]).expect(200).json();
    assert_eq!(s["priority"], 1, "{s}");
    let reason = s["priority_reasons"][0].as_str().unwrap_or_default();
    assert!(reason.starts_with("data disk failing: "), "{s}");
    assert!(reason.contains("Read-only file system"), "{s}");
    step(&mut report, "data disk repaired", "node1", 200, || {
        remount("rw")
    });
    println!("{}", report.join("\n"));
}

/// With `auth_key` the pair works as before; a node whose key differs hears
/// none of the other's adverts (dropped, counted) and becomes master too.
#[test]
fn adverts_with_the_pairs_key_are_heard_and_others_dropped() {
    let lan = Lan::new(2);
    let keyed = |i: usize, priority: u8| {
        let mut c = appliance(i, priority);
        c["failover"]["auth_key"] = json!("a secret only the pair knows");
        c
    };
    let a = lan.start(1, &keyed(1, 150));
    let b = lan.start(2, &keyed(2, 100));
    wait_for("node1 to serve the virtual address", || {
        (ask().as_deref() == Some("node1")).then_some(())
    });
    let status = |eb: &Edgebox| eb.api("GET", "/v1/failover", None, &[]).expect(200).json();
    let s = wait_for("node2 to hear node1", || {
        let s = status(&b);
        (s["master"] == "10.9.0.1").then_some(s)
    });
    assert_eq!(
        (s["state"].clone(), s["authenticated"].clone()),
        (json!("backup"), json!(true)),
        "{s}"
    );
    assert_eq!(s["counts"]["unauthenticated"], 0, "{s}");
    assert!(s["counts"]["adverts"].as_u64().unwrap() > 0, "{s}");
    // node2 gets another key: node1's adverts no longer count there.
    let mut config = b.api("GET", "/v1/config", None, &[]).expect(200).json();
    config["failover"]["auth_key"] = json!("not the key node1 has at all");
    b.api("PUT", "/v1/config", Some(&config.to_string()), &[])
        .expect(200);
    let s = wait_for("node2 to stop hearing node1", || {
        let s = status(&b);
        (s["state"] == "master" && s["counts"]["unauthenticated"].as_u64() > Some(10)).then_some(s)
    });
    let metrics = b.api("GET", "/metrics", None, &[]).expect(200).body;
    assert!(
        metrics.contains("edgebox_failover_packets_dropped_total{vrid=\"51\",reason=\"auth\"} "),
        "{metrics}"
    );
    assert_eq!(status(&a)["state"], "master");
    println!(
        "node2 with another key: {} adverts dropped, master too",
        s["counts"]["unauthenticated"]
    );
}

/// IPv6: the virtual address fd00:9::100 moves by VRRPv3 over IPv6
/// (unicast to the peer's address from each node's link-local one; the
/// keepalived test below runs multicast to ff02::12), announced
/// by unsolicited neighbour advertisements, when the master is killed and
/// when it comes back.
#[test]
fn an_ipv6_virtual_address_moves_when_the_master_dies_and_comes_back() {
    let lan = Lan::new(2);
    let v6 = |i: usize, priority: u8| {
        let mut c = appliance6(i, priority);
        c["failover"]["peers"] = json!([format!("fd00:9::{}", 3 - i)]);
        c
    };
    let at: std::net::SocketAddr = format!("[{VIP6}]:8081").parse().unwrap();
    let a = lan.start(1, &v6(1, 150));
    let b = lan.start(2, &v6(2, 100));
    wait_for("node1 to serve the IPv6 virtual address", || {
        (ask_at(at).as_deref() == Some("node1")).then_some(())
    });
    let s = wait_for("node2 to hear node1 over IPv6", || {
        let s = b.api("GET", "/v1/failover", None, &[]).expect(200).json();
        (s["state"] == "backup" && s["master"].as_str().is_some_and(|m| m.starts_with("fe80:")))
            .then_some(s)
    });
    assert_eq!(s["counts"]["malformed"], 0, "{s}");
    assert_eq!(s["counts"]["wrong_ttl"], 0, "{s}");
    let mut report = Vec::new();
    let mut a_dir = None;
    let (gap, _) = step_at(at, &mut report, "IPv6 master killed", "node2", 300, || {
        a_dir = Some(a.kill());
    });
    assert!(gap < Duration::from_millis(500), "{report:?}");
    let mut a = None;
    let (_, failed) = step_at(
        at,
        &mut report,
        "IPv6 master back, preempts",
        "node1",
        200,
        || {
            a = Some(lan.restart(1, a_dir.take().unwrap()));
        },
    );
    assert!(failed <= 1, "{report:?}");
    assert!(!holds6(&lan, 2), "node2 released the IPv6 address");
    drop(a);
    println!("{}", report.join("\n"));
}

/// edgebox (node1, master beside keepalived) is killed and keepalived
/// takes over; it is started again and preempts. The new edgebox.
fn killed_and_back(
    lan: &Lan,
    a: Edgebox,
    ka: &Keepalived,
    at: std::net::SocketAddr,
    label: &str,
    report: &mut Vec<String>,
) -> Edgebox {
    let mut a_dir = None;
    let what = format!("{label}edgebox master killed, keepalived takes over");
    step_at(at, report, &what, "node2", 300, || {
        a_dir = Some(a.kill());
    });
    assert!(ka.log().contains("Entering MASTER STATE"), "{}", ka.log());
    let mut a = None;
    let what = format!("{label}edgebox back, preempts keepalived");
    step_at(at, report, &what, "node1", 200, || {
        a = Some(lan.restart(1, a_dir.take().unwrap()));
    });
    wait_for("keepalived to go back to backup", || {
        (ka.log().matches("Entering BACKUP STATE").count() >= 2).then_some(())
    });
    a.unwrap()
}

/// Appliance `i` of an IPv6 pair: VRRP over IPv6 by multicast, the
/// virtual address fd00:9::100 served on port 8081.
fn appliance6(i: usize, priority: u8) -> serde_json::Value {
    let mut c = server6(i);
    c["listeners"][0]["address"] = json!(format!("[{VIP6}]:8081"));
    c["failover"] = json!({
        "interface": "eth0",
        "vrid": 52,
        "priority": priority,
        "virtual_addresses": [format!("{VIP6}/64")],
    });
    c
}

fn server6(i: usize) -> serde_json::Value {
    let mut c = server(i);
    c["listeners"] = json!([{"name": "web6", "address": "[::]:8081", "protocol": "http"}]);
    c
}

/// keepalived over IPv6 (ff02::12 from its link-local address) beside
/// edgebox: each takes over from the other.
#[test]
fn edgebox_and_keepalived_pair_over_ipv6() {
    let lan = Lan::new(2);
    let scratch = tempfile::tempdir().unwrap();
    let at: std::net::SocketAddr = format!("[{VIP6}]:8081").parse().unwrap();
    let a = lan.start(1, &appliance6(1, 150));
    let _b = lan.start(2, &server6(2));
    let ka = Keepalived::start_with(
        &lan,
        scratch.path(),
        &format!(
            "virtual_router_id 52\n  priority 100\n  advert_int 0.04\n\
             virtual_ipaddress {{\n    {VIP6}/64\n  }}"
        ),
    );
    wait_for(
        "keepalived to hear edgebox over IPv6 and stay backup",
        || ka.log().contains("Entering BACKUP STATE").then_some(()),
    );
    wait_for("edgebox to serve the IPv6 virtual address", || {
        (ask_at(at).as_deref() == Some("node1")).then_some(())
    });
    let mut report = Vec::new();
    let a = killed_and_back(&lan, a, &ka, at, "IPv6: ", &mut report);
    let s = a.api("GET", "/v1/failover", None, &[]).expect(200).json();
    assert_eq!(s["state"], "master", "{s}");
    assert_eq!(
        s["counts"]["malformed"], 0,
        "keepalived's IPv6 adverts all read: {s}"
    );
    assert!(
        s["counts"]["adverts"].as_u64().unwrap() > 0,
        "edgebox heard keepalived as master: {s}"
    );
    let log = ka.log();
    for complaint in ["checksum", "TTL", "invalid", "ignoring"] {
        assert!(
            !log.to_lowercase().contains(&complaint.to_lowercase()),
            "keepalived complains ({complaint}): {log}"
        );
    }
    println!("{}", report.join("\n"));
}

/// Whether appliance `i`'s eth0 carries the IPv6 virtual address.
fn holds6(lan: &Lan, i: usize) -> bool {
    holds_address(lan, i, VIP6)
}

/// The threads of `pid` whose names start with `prefix` (glommio names a
/// core's executor and its helper thread `core0-1`).
fn threads_named(pid: i32, prefix: &str) -> Vec<i32> {
    let tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|c| c.starts_with(prefix))
        })
        .collect();
    assert!(!tids.is_empty(), "no thread {prefix}* in {pid}");
    tids
}

/// Stops some threads of another process (and only those) until dropped:
/// ptrace's seize and interrupt, then detach. All from the thread that
/// made it, as ptrace requires.
struct Stalled(Vec<i32>);

// The one unsafe in the tests: ptrace has no safe wrapper in rustix.
#[allow(unsafe_code)]
impl Stalled {
    fn threads(tids: Vec<i32>) -> Self {
        for &tid in &tids {
            Self::stop(tid);
        }
        Self(tids)
    }

    fn stop(tid: i32) {
        // SAFETY: plain syscalls on a thread id; no memory is passed but
        // the status integer, which outlives the call.
        unsafe {
            assert_eq!(
                libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0),
                0,
                "seize: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(
                libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0),
                0,
                "interrupt"
            );
            let mut status = 0;
            assert_eq!(
                libc::waitpid(tid, &mut status, libc::__WALL),
                tid,
                "wait for the stop"
            );
        }
    }
}

#[allow(unsafe_code)]
impl Drop for Stalled {
    fn drop(&mut self) {
        // SAFETY: as above.
        for &tid in &self.0 {
            unsafe {
                libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0);
            }
        }
    }
}

/// The master's one data-plane core stalls (stopped by ptrace, the rest of
/// the process running: its failover thread goes on advertising): after
/// the 1 s stall limit it advertises priority 1 and the backup takes over;
/// the core resumes and the master preempts back.
#[test]
fn a_master_whose_data_plane_stalls_gives_way() {
    let lan = Lan::new(2);
    let a = lan.start(1, &appliance(1, 150));
    let _b = lan.start(2, &appliance(2, 100));
    wait_for("node1 to serve the virtual address", || {
        (ask().as_deref() == Some("node1")).then_some(())
    });
    let core = threads_named(a.pid(), "core0");
    let mut report = Vec::new();
    // The ptrace calls must come from one thread: this one, which also asks.
    let mut stalled = None;
    let (gap, _) = step(&mut report, "master's core stalled", "node2", 200, || {
        stalled = Some(Stalled::threads(core));
    });
    // The stall limit (1 s) plus the 100 ms health check and a takeover.
    assert!(
        gap >= Duration::from_millis(900) && gap < Duration::from_millis(2500),
        "{report:?}"
    );
    let s = a.api("GET", "/v1/failover", None, &[]).expect(200).json();
    assert_eq!(s["state"], "backup", "{s}");
    let reason = s["priority_reasons"][0].as_str().unwrap_or_default();
    assert!(reason.starts_with("core 0 stalled for "), "{s}");
    step(&mut report, "core resumed", "node1", 200, || {
        drop(stalled.take())
    });
    println!("{}", report.join("\n"));
}
