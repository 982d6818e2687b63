//! The appliance booted in QEMU on a private network, driven from that
//! network as its users would: HTTPS clients, backends, the admin API,
//! `edgebox publish`, the power switch.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use qemu_tests::{cmdline, run, Appliance, Backend, Boot};
use serde_json::json;

#[test]
fn boots_via_uefi_serves_https_on_its_address_and_refuses_a_wrong_token() {
    run("uefi", |h| {
        let disk = h.disk("vm");
        let mut vm = Appliance::boot(h, "vm", &disk, Boot::Uefi);
        let ready = vm.wait_ready();
        eprintln!(
            "UEFI boot to the first HTTPS response on {}: {:.1} s",
            vm.addr,
            ready.as_secs_f64()
        );
        let (status, body) = vm.get("/");
        assert_eq!(status, 200);
        assert!(
            String::from_utf8_lossy(&body).contains("edgebox"),
            "the welcome page"
        );
        // PID 1 raised the kernel's 1 024 open files for the server.
        assert!(
            vm.console().contains("open files: up to 1048576"),
            "{}",
            vm.console()
        );
        let (status, reply) = vm.api_as("not-the-token", "GET", "/v1/status", None);
        assert_eq!(status, 401, "{reply}");
        let (status, _) = vm.api("GET", "/v1/status", None);
        assert_eq!(status, 200);
    });
}

#[test]
fn twenty_thousand_idle_tls_connections_on_one_appliance() {
    run("idle", |h| {
        const PER_CLIENT: usize = 10_000;
        const CLIENTS: usize = 2;
        let disk = h.disk("vm");
        let addr = edgebox_image::testing::ADDRESS.into();
        let mut vm = Appliance::boot_with(
            h,
            "vm",
            &disk,
            Boot::Direct(cmdline("")),
            addr,
            1024,
            edgebox_image::boot::Devices::Virtio,
        );
        vm.wait_ready();
        // Held idle for as long as the test takes.
        vm.change_config(|c| c["client"]["idle_timeout_ms"] = json!(900_000));
        let before = vm.metric("process_resident_memory_bytes");
        let started = Instant::now();
        // Each client process holds 10 000: the test's own open-files limit
        // is below 20 000 connections.
        let mut clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                std::process::Command::new(env!("CARGO_BIN_EXE_qt-idle"))
                    .args([format!("{}:443", vm.addr), PER_CLIENT.to_string()])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("qt-idle")
            })
            .collect();
        let mut lines: Vec<_> = clients
            .iter_mut()
            .map(|c| {
                use std::io::BufRead;
                std::io::BufReader::new(c.stdout.take().unwrap()).lines()
            })
            .collect();
        for l in &mut lines {
            let line = l.next().expect("qt-idle to report").unwrap();
            assert_eq!(line, format!("open {PER_CLIENT}"));
        }
        let opened = started.elapsed();
        let after = vm.metric("process_resident_memory_bytes");
        let fds = vm.metric("process_open_fds");
        let total = (PER_CLIENT * CLIENTS) as f64;
        assert!(fds >= total, "edgebox holds {fds} descriptors");
        // The appliance still serves a new client at once.
        let t = Instant::now();
        assert_eq!(vm.get("/").0, 200);
        let new_client = t.elapsed();
        for (c, l) in clients.iter_mut().zip(&mut lines) {
            use std::io::Write;
            writeln!(c.stdin.as_mut().unwrap(), "check").unwrap();
            let line = l.next().expect("qt-idle to report").unwrap();
            assert_eq!(
                line,
                format!("still open {PER_CLIENT}"),
                "connections were closed"
            );
        }
        eprintln!(
            "{total} idle TLS connections: opened in {:.1} s; edgebox resident {:.1} -> {:.1} MiB \
             ({:.1} KiB a connection), {fds} open descriptors; a new client answered in {:.0} ms",
            opened.as_secs_f64(),
            before / 1048576.0,
            after / 1048576.0,
            (after - before) / total / 1024.0,
            new_client.as_secs_f64() * 1000.0
        );
        for mut c in clients {
            drop(c.stdin.take());
            assert!(c.wait().unwrap().success());
        }
    });
}

fn proxy_to(vm: &Appliance, backends: &[&Backend]) {
    let list: Vec<_> = backends
        .iter()
        .map(|b| json!({ "address": b.addr.to_string() }))
        .collect();
    vm.change_config(|c| {
        c["pools"] = json!([{ "name": "app", "backends": list }]);
        c["routes"] = json!([{ "path_prefix": "/", "action": { "proxy": { "pool": "app" } } }]);
    });
}

fn body(vm: &Appliance, path: &str) -> String {
    let (status, body) = vm.get(path);
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{path}: {text}");
    text
}

#[test]
fn proxies_round_robin_to_two_backends_and_skips_a_stopped_one() {
    run("proxy", |h| {
        let a = Backend::start(h, "a").unwrap();
        let mut b = Backend::start(h, "b").unwrap();
        let disk = h.disk("vm");
        let mut vm = Appliance::boot(h, "vm", &disk, Boot::Direct(cmdline("")));
        vm.wait_ready();
        proxy_to(&vm, &[&a, &b]);
        let seen: Vec<String> = (0..6).map(|_| body(&vm, "/")).collect();
        assert_eq!(
            seen,
            ["a\n", "b\n", "a\n", "b\n", "a\n", "b\n"],
            "round robin"
        );
        b.stop();
        let seen: Vec<String> = (0..6).map(|_| body(&vm, "/")).collect();
        assert!(
            seen.iter().all(|s| s == "a\n"),
            "all to the backend left: {seen:?}"
        );
    });
}

/// The pool's health of backend `b`, as the appliance reports it.
fn health_of(vm: &Appliance, b: &Backend) -> String {
    let (status, s) = vm.api("GET", "/v1/pools/app/status", None);
    assert_eq!(status, 200, "{s}");
    s["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["address"] == b.addr.to_string())
        .map(|e| e["health"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

fn wait_health(vm: &Appliance, b: &Backend, want: &str) -> Duration {
    let start = Instant::now();
    while health_of(vm, b) != want {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} never became {want}",
            b.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn takes_out_a_backend_that_dies_and_back_when_it_returns() {
    run("health", |h| {
        let a = Backend::start(h, "a").unwrap();
        let mut b = Backend::start(h, "b").unwrap();
        let disk = h.disk("vm");
        let mut vm = Appliance::boot(h, "vm", &disk, Boot::Direct(cmdline("")));
        vm.wait_ready();
        let list: Vec<_> = [&a, &b]
            .iter()
            .map(|x| json!({ "address": x.addr.to_string() }))
            .collect();
        vm.change_config(|c| {
            c["pools"] = json!([{ "name": "app", "backends": list,
                "health_check": {"path": "/index.html", "interval_ms": 500, "timeout_ms": 500, "rise": 2, "fall": 2} }]);
            c["routes"] = json!([{ "path_prefix": "/", "action": { "proxy": { "pool": "app" } } }]);
        });
        wait_health(&vm, &b, "up");
        b.stop();
        let out = wait_health(&vm, &b, "down");
        eprintln!(
            "backend b taken out {:.1} s after it died (checks every 0.5 s, fall 2)",
            out.as_secs_f64()
        );
        let seen: Vec<String> = (0..6).map(|_| body(&vm, "/")).collect();
        assert!(seen.iter().all(|s| s == "a\n"), "{seen:?}");
        b.restart().unwrap();
        let back = wait_health(&vm, &b, "up");
        eprintln!(
            "backend b taken back {:.1} s after it returned (rise 2)",
            back.as_secs_f64()
        );
        let seen: Vec<String> = (0..6).map(|_| body(&vm, "/")).collect();
        assert!(seen.iter().any(|s| s == "b\n"), "b serves again: {seen:?}");
    });
}

#[test]
fn a_config_changed_through_the_api_survives_a_reboot_asked_through_the_api() {
    run("reboot", |h| {
        let disk = h.disk("vm");
        let mut vm = Appliance::boot(h, "vm", &disk, Boot::Direct(cmdline("")));
        vm.wait_ready();
        vm.change_config(|c| {
            c["routes"] = json!([{ "path_prefix": "/", "action": { "respond": { "status": 200, "body": "changed before the reboot\n" } } }]);
        });
        assert_eq!(body(&vm, "/"), "changed before the reboot\n");
        let (status, _) = vm.api("POST", "/v1/system/reboot", None);
        assert_eq!(status, 202);
        vm.wait_console("reboot: Restarting system", Duration::from_secs(60))
            .unwrap();
        // The same VM comes back (QEMU restarts the kernel) and serves the
        // persisted config.
        let until = Instant::now() + qemu_tests::BOOT_DEADLINE;
        while vm.console().matches("is PID 1").count() < 2 {
            assert!(Instant::now() < until, "no second boot");
            std::thread::sleep(Duration::from_millis(200));
        }
        vm.wait_ready();
        assert_eq!(body(&vm, "/"), "changed before the reboot\n");
    });
}

/// Pseudo-random bytes that do not compress.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn publish(vm: &Appliance, dir: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_qt-publish"))
        .arg(dir)
        .args([
            "--site",
            "www",
            "--insecure",
            "--token",
            edgebox_image::testing::TOKEN,
        ])
        .arg("--admin")
        .arg(format!("https://{}:9443", vm.addr))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_power_cut_in_the_middle_of_a_publish_leaves_the_site_whole() {
    run("power-cut", |h| {
        let disk = h.disk("vm");
        let mut vm = Appliance::boot(h, "vm-1", &disk, Boot::Direct(cmdline("")));
        vm.wait_ready();
        vm.change_config(|c| {
            c["routes"] =
                json!([{ "path_prefix": "/", "action": { "static": { "site": "www" } } }]);
        });
        let site = h.dir.join("site");
        std::fs::create_dir_all(&site).unwrap();
        std::fs::write(site.join("index.html"), "version 1\n").unwrap();
        let status = publish(&vm, &site).wait().unwrap();
        assert!(status.success(), "first publish: {status}");
        assert_eq!(body(&vm, "/"), "version 1\n");

        let big = noise(7, 48 << 20);
        std::fs::write(site.join("index.html"), "version 2\n").unwrap();
        std::fs::write(site.join("big.bin"), &big).unwrap();
        let mut second = publish(&vm, &site);
        std::thread::sleep(Duration::from_millis(1500));
        vm.kill();
        let finished = second.try_wait().unwrap();
        assert!(
            finished.is_none() || !finished.unwrap().success(),
            "the publish finished before the power cut; make it bigger"
        );
        let _ = second.kill();
        let _ = second.wait();
        drop(vm);

        let mut vm = Appliance::boot(h, "vm-2", &disk, Boot::Direct(cmdline("")));
        vm.wait_ready();
        let index = body(&vm, "/");
        let (status, got) = vm.get("/big.bin");
        match index.as_str() {
            "version 1\n" => assert_eq!(status, 404, "generation 1 has no big.bin"),
            "version 2\n" => assert!(status == 200 && got == big, "generation 2 is whole"),
            other => panic!("neither generation: {other:?}"),
        }
        let (status, scrub) = vm.api("POST", "/v1/store/scrub", None);
        assert_eq!(status, 200);
        assert_eq!(scrub["corrupt"], json!([]), "{scrub}");
        assert_eq!(scrub["lost"], json!([]), "{scrub}");
        eprintln!("after the power cut: {}, scrub {scrub}", index.trim());
    });
}

#[test]
fn a_bad_network_setting_on_the_command_line_is_explained_on_the_console() {
    run("bad-net", |h| {
        let disk = h.disk("vm");
        let line = "console=ttyS0,115200 edgebox.net=eth0,10.0.2.300/24";
        let mut vm = Appliance::boot(h, "vm", &disk, Boot::Direct(line.to_owned()));
        vm.wait_console(
            "edgebox init: error: kernel command line: edgebox.net=eth0,10.0.2.300/24: \"10.0.2.300\" is not an IP address",
            qemu_tests::BOOT_DEADLINE,
        )
        .unwrap();
        // It goes on without the static address: it asks DHCP instead (no
        // server answers on this network), and the server starts.
        vm.wait_console("network: no static address", Duration::from_secs(60))
            .unwrap();
        vm.wait_console("starting edgebox serve", Duration::from_secs(60))
            .unwrap();
    });
}

/// Two appliances, A at 10.0.2.15 and B at 10.0.2.16, booted side by side
/// and answering HTTPS.
fn boot_pair(h: &mut qemu_tests::Harness) -> (Appliance, Appliance) {
    let (disk_a, disk_b) = (h.disk("a"), h.disk("b"));
    let addr_b: std::net::Ipv4Addr = [10, 0, 2, 16].into();
    let mut a = Appliance::boot(h, "a", &disk_a, Boot::Direct(cmdline("")));
    let mut b = Appliance::boot_at(
        h,
        "b",
        &disk_b,
        Boot::Direct(qemu_tests::cmdline_at(addr_b, "")),
        addr_b,
    );
    a.wait_ready();
    b.wait_ready();
    (a, b)
}

#[test]
fn two_appliances_replicate_a_site_published_to_one_and_served_by_the_other() {
    run("replication", |h| {
        let (a, b) = boot_pair(h);
        let fingerprint = |vm: &Appliance| {
            let (status, r) = vm.api("GET", "/v1/replication", None);
            assert_eq!(status, 200, "{r}");
            r["fingerprint"].as_str().unwrap().to_owned()
        };
        let (fa, fb) = (fingerprint(&a), fingerprint(&b));
        assert_ne!(fa, fb, "each appliance made its own identity");
        let pair = |me: &Appliance, peer: &Appliance, pin: &str| {
            json!({
                "listen": format!("{}:7443", me.addr),
                "peers": [{ "address": format!("{}:7443", peer.addr), "fingerprint": pin, "name": "peer" }],
                "sync_interval_ms": 1000,
            })
        };
        // B is paired without any other change; A also routes to the site,
        // a shared setting that B must take from it.
        b.change_config(|c| c["replication"] = pair(&b, &a, &fa));
        a.change_config(|c| {
            c["replication"] = pair(&a, &b, &fb);
            c["routes"] =
                json!([{ "path_prefix": "/", "action": { "static": { "site": "www" } } }]);
        });

        let site = h.dir.join("site");
        std::fs::create_dir_all(&site).unwrap();
        std::fs::write(site.join("index.html"), "published to A\n").unwrap();
        let big = noise(11, 3 << 20);
        std::fs::write(site.join("big.bin"), &big).unwrap();
        let status = publish(&a, &site).wait().unwrap();
        assert!(status.success(), "publish to A: {status}");
        let published = Instant::now();
        assert_eq!(body(&a, "/"), "published to A\n");
        loop {
            let (status, got) = b.get("/");
            if status == 200 && got == b"published to A\n" {
                break;
            }
            assert!(
                published.elapsed() < Duration::from_secs(60),
                "B never served the site: {status} {}",
                String::from_utf8_lossy(&got)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let took = published.elapsed();
        let (status, got) = b.get("/big.bin");
        assert!(status == 200 && got == big, "B serves the 3 MiB file whole");
        let (_, r) = b.api("GET", "/v1/replication", None);
        assert_eq!(r["peers"][0]["state"], json!("connected"), "{r}");
        let (_, ra) = a.api("GET", "/v1/replication", None);
        assert_eq!(ra["catalog"]["root"], r["catalog"]["root"], "{ra} {r}");
        eprintln!(
            "a site published to A ({} bytes) served by B {:.2} s later (TCG VMs)",
            big.len() + 15,
            took.as_secs_f64()
        );
    });
}

#[test]
fn two_appliances_share_a_virtual_address_and_the_backup_serves_when_the_master_vm_dies() {
    run("failover", |h| {
        let (mut a, b) = boot_pair(h);
        let vip: std::net::Ipv4Addr = [10, 0, 2, 100].into();
        // 100 ms adverts: the VMs run under emulation, where 50 ms is tight.
        let pair = |peer: &Appliance, priority: u8| {
            let peer = peer.addr;
            move |c: &mut serde_json::Value| {
                c["failover"] = json!({
                    "interface": "eth0", "vrid": 51, "priority": priority, "advert_ms": 100,
                    "virtual_addresses": [format!("{vip}/24")], "peers": [peer.to_string()],
                });
                c["routes"] = json!([{ "action": { "respond": { "status": 200, "body": priority.to_string() } } }]);
            }
        };
        a.change_config(pair(&b, 150));
        b.change_config(pair(&a, 100));
        let ask = || quick_get((vip, 443).into());
        let until = Instant::now() + Duration::from_secs(60);
        while ask().as_deref() != Some("150") {
            assert!(Instant::now() < until, "A never served the virtual address");
            std::thread::sleep(Duration::from_millis(100));
        }
        let (_, s) = b.api("GET", "/v1/failover", None);
        assert_eq!(s["state"], "backup", "{s}");
        // Power cut of A's VM while a client asks every 10 ms (each ask
        // gives up after 100 ms to connect).
        let killed = Instant::now();
        a.kill();
        let until = Instant::now() + Duration::from_secs(30);
        let mut failed = 0;
        loop {
            let at = Instant::now();
            match ask().as_deref() {
                Some("100") => break,
                Some(_) => {}
                None => failed += 1,
            }
            assert!(Instant::now() < until, "B never served the virtual address");
            std::thread::sleep(Duration::from_millis(10).saturating_sub(at.elapsed()));
        }
        let (_, s) = b.api("GET", "/v1/failover", None);
        assert_eq!(s["state"], "master", "{s}");
        eprintln!(
            "master VM killed: B answered on the virtual address {} ms later, {failed} requests failed meanwhile (TCG VMs, 100 ms adverts)",
            killed.elapsed().as_millis(),
        );
    });
}

/// `GET /` over HTTPS (any certificate) with short timeouts: the body of a
/// 200, or nothing.
fn quick_get(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let config = edgebox::ctl::client::tls_config(edgebox::ctl::client::Trust::Insecure).ok()?;
    let name = rustls::pki_types::ServerName::try_from("edgebox.invalid").ok()?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).ok()?;
    let sock = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()?;
    sock.set_read_timeout(Some(Duration::from_millis(1000)))
        .ok()?;
    sock.set_write_timeout(Some(Duration::from_millis(1000)))
        .ok()?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: pair\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}
