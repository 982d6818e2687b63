//! Backends found by DNS, against a real name server (dnsmasq, started by
//! the test on loopback): a name's A records become backends, an SRV name's
//! targets and ports too; addresses that appear join, those that vanish are
//! drained, with no request failing; a slow name server holds up neither
//! the admin API nor the data plane.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::load::{self, Load};
use common::*;
use serde_json::json;

/// dnsmasq answering from a hosts file and SRV records, on 127.0.0.1.
struct Dns {
    child: Child,
    pub addr: SocketAddr,
    hosts: PathBuf,
}

impl Dns {
    fn start(dir: &Path, hosts: &str, srv: &[&str]) -> Self {
        let hosts_file = dir.join("hosts");
        std::fs::write(&hosts_file, hosts).unwrap();
        // The port is chosen free for UDP and TCP, but another test may take
        // its TCP side before dnsmasq binds it: dnsmasq then exits, and is
        // started again on another port.
        for _ in 0..10 {
            let port = free_udp_and_tcp_port();
            let mut cmd = Command::new("dnsmasq");
            cmd.args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
            ])
            .args(["--listen-address=127.0.0.1", "--user=root", "--pid-file="])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts_file.display()))
            .arg("--local-ttl=0");
            for s in srv {
                cmd.arg(format!("--srv-host={s}"));
            }
            let mut child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("dnsmasq must be installed (the test command installs dnsmasq-base)");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            // Ready once it answers on TCP too; or it has exited.
            let up = wait_for("dnsmasq to listen or exit", || {
                if std::net::TcpStream::connect(addr).is_ok() {
                    return Some(true);
                }
                child.try_wait().unwrap().map(|_| false)
            });
            if up {
                return Self {
                    child,
                    addr,
                    hosts: hosts_file,
                };
            }
            let mut err = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            eprintln!("dnsmasq exited on port {port}: {}", err.trim());
        }
        panic!("dnsmasq did not start in ten tries");
    }

    /// New hosts; dnsmasq reads them again on SIGHUP.
    fn set_hosts(&self, hosts: &str) {
        std::fs::write(&self.hosts, hosts).unwrap();
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free now for both UDP and TCP on 127.0.0.1.
fn free_udp_and_tcp_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A port free on every one of `ips`, for backends that share a name.
fn port_free_on(ips: &[&str]) -> u16 {
    loop {
        let l = std::net::TcpListener::bind(format!("{}:0", ips[0])).unwrap();
        let port = l.local_addr().unwrap().port();
        if ips[1..]
            .iter()
            .all(|ip| std::net::TcpListener::bind(format!("{ip}:{port}")).is_ok())
        {
            return port;
        }
    }
}

/// The addresses pool `pool` serves now.
fn addresses(eb: &Edgebox, pool: &str) -> Vec<String> {
    let s = eb
        .api("GET", &format!("/v1/pools/{pool}/status"), None, &[])
        .expect(200)
        .json();
    let mut a: Vec<String> = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap().to_owned())
        .collect();
    a.sort();
    a
}

#[test]
fn names_and_srv_records_become_backends_and_follow_changes() {
    let dir = tempfile::tempdir().unwrap();
    let port = port_free_on(&["127.0.0.2", "127.0.0.3", "127.0.0.5"]);
    let at = |ip: &str| format!("{ip}:{port}").parse::<SocketAddr>().unwrap();
    let (b2, b3) = (
        Backend::start_on("b2", at("127.0.0.2")),
        Backend::start_on("b3", at("127.0.0.3")),
    );
    let s1 = Backend::start_on("s1", "127.0.0.4:0".parse().unwrap());
    let srv = format!("_app._tcp.svc.test,s1.svc.test,{}", s1.addr.port());
    let dns = Dns::start(
        dir.path(),
        "127.0.0.2 app.svc.test\n127.0.0.3 app.svc.test\n127.0.0.4 s1.svc.test\n",
        &[&srv],
    );
    let shop = Shop::start(&[], 2, |cfg| {
        cfg["dns"] = json!({"servers": [dns.addr.to_string()], "interval_ms": 300});
        cfg["pools"] = json!([
            {"name": "app", "backends": [{"address": format!("app.svc.test:{port}")}],
             "health_check": {"path": "/healthz", "interval_ms": 100}},
            {"name": "srv", "backends": [{"address": "_app._tcp.svc.test"}]}
        ]);
        cfg["routes"] = json!([
            {"host": "shop.test", "action": {"proxy": {"pool": "app"}}},
            {"host": "srv.test", "action": {"proxy": {"pool": "srv"}}}
        ]);
    });
    let eb = &shop.eb;
    assert_eq!(
        addresses(eb, "app"),
        [at("127.0.0.2").to_string(), at("127.0.0.3").to_string()]
    );
    assert_eq!(addresses(eb, "srv"), [s1.addr.to_string()]);
    let mut l = Load::new(eb.addr("http"), "srv.test", "/");
    l.count = 20;
    let r = load::run_blocking(l);
    assert_eq!(r.by_backend().get("s1"), Some(&20), "{}", r.summary());

    // The name moves from .3 to .5 while a load runs.
    let b5 = Backend::start_on("b5", at("127.0.0.5"));
    let mut l = Load::new(eb.addr("http"), "shop.test", "/");
    l.count = 100_000;
    l.pause = Duration::from_millis(1);
    let running = load::start(l);
    wait_for("the load to get going", || {
        (running.sent() > 100).then_some(())
    });
    dns.set_hosts("127.0.0.2 app.svc.test\n127.0.0.5 app.svc.test\n127.0.0.4 s1.svc.test\n");
    let changed = Instant::now();
    let want = [at("127.0.0.2").to_string(), at("127.0.0.5").to_string()];
    wait_for("the new address to replace the old", || {
        (addresses(eb, "app") == want).then_some(())
    });
    let noticed = changed.elapsed();
    wait_for("b5 to serve", || {
        (b5.hits.load(std::sync::atomic::Ordering::SeqCst) > 20).then_some(())
    });
    let report = running.stop();
    println!("name moved from .3 to .5: {}", report.summary());
    println!(
        "the change was served {:.0} ms after dnsmasq had it (dns.interval_ms 300)",
        noticed.as_secs_f64() * 1e3
    );
    assert_eq!(report.failed(), 0, "{:?}", report.errors);
    assert!(b2.hits.load(std::sync::atomic::Ordering::SeqCst) > 0);
    let b3_before = b3.hits.load(std::sync::atomic::Ordering::SeqCst);
    let mut l = Load::new(eb.addr("http"), "shop.test", "/");
    l.count = 50;
    load::run_blocking(l);
    assert_eq!(
        b3.hits.load(std::sync::atomic::Ordering::SeqCst),
        b3_before,
        "the vanished address still got requests"
    );

    // A name that does not resolve is refused, naming the field.
    let r = eb
        .api(
            "PUT",
            "/v1/pools/x",
            Some(&json!({"backends": [{"address": "nowhere.svc.test:80"}]}).to_string()),
            &[],
        )
        .expect(422);
    assert_eq!(
        r.json()["field"],
        "pools[2].backends[0].address",
        "{}",
        r.body
    );
}

/// A name server that never answers makes only the change that needs it
/// wait (and fail); the admin API and the data plane answer meanwhile.
#[test]
fn a_silent_name_server_blocks_neither_the_admin_api_nor_the_data_plane() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let shop = Shop::start(&[], 2, |cfg| {
        cfg["dns"] = json!({"servers": [silent.local_addr().unwrap().to_string()],
                            "timeout_ms": 1500});
        cfg["routes"] = json!([{"action": {"respond": {"body": "ok\n"}}}]);
    });
    let eb = &shop.eb;
    let (admin, token, ca) = (
        eb.admin.unwrap(),
        eb.token.clone(),
        eb.dir().join("data/tls/admin.crt"),
    );
    let started = Instant::now();
    let slow = std::thread::spawn(move || {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["-H", "content-type: application/json"])
            .args([
                "--data",
                r#"{"backends": [{"address": "app.svc.test:80"}]}"#,
            ])
            .arg("--cacert")
            .arg(ca)
            .arg(format!("https://{admin}/v1/pools/app"))
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            started.elapsed(),
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        eb.api("GET", "/v1/status", None, &[]).expect(200);
        assert_eq!(shop.status(&[&shop.url("/")]), "200");
        slowest = slowest.max(t.elapsed());
    }
    let (status, took) = slow.join().unwrap();
    println!(
        "while a lookup hung for {:.1} s: the slowest status call plus request took {:.0} ms",
        took.as_secs_f64(),
        slowest.as_secs_f64() * 1e3
    );
    assert_eq!(status, "422", "an unresolvable name is refused");
    assert!(took >= Duration::from_millis(1400), "it did wait: {took:?}");
    assert!(
        slowest < Duration::from_millis(1000),
        "the admin API or the data plane waited: {slowest:?}"
    );
}
