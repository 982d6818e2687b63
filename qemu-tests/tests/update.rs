//! Updates into the A/B boot slots on a booted appliance: a good update
//! boots on trial and is kept; a tampered or unsigned one is refused with
//! nothing written; one whose edgebox dies at start is given up by the boot
//! loader and the appliance is back on the previous slot, saying so; a
//! power cut in the middle of an upload leaves it booting what it ran.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgebox_image::build::{self, BuildOptions};
use edgebox_image::testing;
use qemu_tests::{run, Appliance, Boot};
use serde_json::Value;

/// An update file made from the shared image's options with another
/// version (and, if given, another binary), signed with `key`.
fn update(version: &str, binary: Option<PathBuf>, key: Option<PathBuf>) -> PathBuf {
    let output = build::target_dir().join(format!("edgebox-image/test-{version}/edgebox.img"));
    let base = testing::options(output);
    let shared = testing::shared_image().unwrap();
    let built = build::build(&BuildOptions {
        image_version: Some(version.to_owned()),
        binary: binary.or_else(|| Some(shared.binary.clone())),
        signing_key: key,
        ..base
    })
    .unwrap();
    built.update
}

/// A static program that exits at once with status 1: an edgebox build
/// that cannot even start.
fn dies_at_start(dir: &Path) -> PathBuf {
    let src = dir.join("exit1.c");
    std::fs::write(
        &src,
        "void _start(void) { __asm__ volatile(\"mov $60, %eax\\n mov $1, %edi\\n syscall\"); }\n",
    )
    .unwrap();
    let out = dir.join("exit1");
    let status = Command::new("gcc")
        .args(["-static", "-nostdlib", "-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap();
    assert!(status.success(), "gcc");
    out
}

fn ctl(vm: &Appliance, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qt-ctl"))
        .args(["--insecure", "--token", testing::TOKEN, "--admin"])
        .arg(format!("https://{}:9443", vm.addr))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn slots(vm: &Appliance) -> Value {
    let (status, v) = vm.api("GET", "/v1/update", None);
    assert_eq!(status, 200, "{v}");
    v
}

/// `GET /v1/update`, checked to say that the appliance runs `version` from
/// `slot`.
fn running(vm: &Appliance, version: &str, slot: &str) -> Value {
    let v = slots(vm);
    assert_eq!(
        (v["version"].as_str(), v["running"].as_str()),
        (Some(version), Some(slot)),
        "{v}"
    );
    v
}

fn slot_state(v: &Value, slot: &str) -> String {
    v["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slot"] == slot)
        .map(|s| s["state"].as_str().unwrap().to_owned())
        .unwrap()
}

/// Waits for the `n`th boot's HTTPS answer.
fn wait_boot(vm: &mut Appliance, n: usize) {
    let until = Instant::now() + qemu_tests::BOOT_DEADLINE;
    while vm.console().matches("is PID 1").count() < n {
        assert!(
            Instant::now() < until,
            "no boot number {n}:\n{}",
            vm.console()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    vm.wait_ready();
}

/// Sends the head and the first `part` bytes of `file` to `POST
/// /v1/update`, and leaves the connection open (for a power cut).
fn start_upload(
    vm: &Appliance,
    file: &[u8],
    part: usize,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = edgebox::ctl::client::tls_config(edgebox::ctl::client::Trust::Insecure).unwrap();
    let name = rustls::pki_types::ServerName::try_from("edgebox.invalid").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect((vm.addr, 9443)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "POST /v1/update HTTP/1.1\r\nHost: edgebox\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        testing::TOKEN,
        file.len()
    )
    .unwrap();
    tls.write_all(&file[..part]).unwrap();
    tls.flush().unwrap();
    tls
}

#[test]
fn updates_boot_on_trial_bad_ones_fall_back_and_a_power_cut_changes_nothing() {
    run("update", |h| {
        let key = testing::signing_key().unwrap();
        let good = update("test-2", None, Some(key.clone()));
        let unsigned = update("test-unsigned", None, None);
        let bad = update("test-bad", Some(dies_at_start(&h.dir)), Some(key.clone()));
        let unhealthy = update("test-unhealthy", None, Some(key));
        // The shared image with a shorter trial (45 s instead of 180 s).
        let shared = testing::shared_image().unwrap();
        let mut opts =
            testing::options(build::target_dir().join("edgebox-image/test-trial/edgebox.img"));
        opts.kernel_args.push("edgebox.trial_deadline=45".into());
        opts.binary = Some(shared.binary.clone());
        let image = build::build(&opts).unwrap().image;
        let disk = h.disk_of(&image, "vm");
        let mut vm = Appliance::boot(h, "vm", &disk, Boot::Uefi);
        vm.wait_ready();
        let v = running(&vm, testing::VERSION, "a");
        assert_eq!(slot_state(&v, "a"), "good");
        assert_eq!(slot_state(&v, "b"), "empty");

        // Tampered (one payload byte) and unsigned: refused, nothing kept.
        let mut tampered = std::fs::read(&good).unwrap();
        let last = tampered.len() - 1000;
        tampered[last] ^= 0x40;
        let tampered_path = h.dir.join("tampered.update");
        std::fs::write(&tampered_path, &tampered).unwrap();
        let (ok, out) = ctl(&vm, &["update", tampered_path.to_str().unwrap()]);
        assert!(!ok && out.contains("SHA-256 does not match"), "{out}");
        let (ok, out) = ctl(&vm, &["update", unsigned.to_str().unwrap()]);
        assert!(!ok && out.contains("unsigned"), "{out}");
        let v = slots(&vm);
        assert_eq!(slot_state(&v, "b"), "empty", "{v}");
        assert_eq!(v["next_boot"], "a");

        // A good update: written to b, booted on trial, found healthy, kept.
        let (ok, out) = ctl(&vm, &["update", good.to_str().unwrap(), "--reboot"]);
        assert!(ok, "{out}");
        assert!(
            out.contains("slot b holds edgebox image test-2 (signature checked)"),
            "{out}"
        );
        wait_boot(&mut vm, 2);
        vm.wait_console(
            "boot slot b: edgebox image test-2 is healthy; marked good",
            Duration::from_secs(200),
        )
        .unwrap();
        let v = running(&vm, "test-2", "b");
        assert_eq!(slot_state(&v, "b"), "good", "{v}");
        assert_eq!(slot_state(&v, "a"), "good", "{v}");
        let metrics = vm.metrics();
        assert!(
            metrics.contains("edgebox_update_slot_info{slot=\"b\",state=\"good\",version=\"test-2\",running=\"true\"} 1"),
            "{metrics}"
        );

        // An update that starts but is not healthy in time (replication
        // set up with a peer that is not there): PID 1 records why and
        // reboots, and the loader goes back to b.
        vm.change_config(|c| {
            c["replication"] = serde_json::json!({
                "listen": "10.0.2.15:7443",
                "peers": [{ "address": "10.0.2.99:7443", "fingerprint": "ab".repeat(32), "name": "absent" }],
            });
        });
        let (ok, out) = ctl(&vm, &["update", unhealthy.to_str().unwrap(), "--reboot"]);
        assert!(ok, "{out}");
        wait_boot(&mut vm, 4);
        let console = vm.console();
        assert!(
            console.contains("boot slot a on trial: not healthy 45 s after boot: edgebox serve reports waiting: replication: no peer connected; rebooting into the previous slot"),
            "{console}"
        );
        let v = running(&vm, "test-2", "b");
        assert_eq!(v["failed_update"]["version"], "test-unhealthy", "{v}");
        assert!(
            v["failed_update"]["reason"]
                .as_str()
                .unwrap()
                .contains("replication: no peer connected"),
            "{v}"
        );
        vm.change_config(|c| {
            c.as_object_mut().unwrap().remove("replication");
        });

        // An update whose edgebox dies at start: the kernel panics, reboots,
        // and the loader, the trial's one try used, goes back to b.
        let (ok, out) = ctl(&vm, &["update", bad.to_str().unwrap(), "--reboot"]);
        assert!(ok, "{out}");
        wait_boot(&mut vm, 5);
        let console = vm.console();
        assert!(
            console
                .contains("the update to test-bad (slot a) was tried and did not become healthy"),
            "{console}"
        );
        let v = running(&vm, "test-2", "b");
        assert_eq!(slot_state(&v, "a"), "failed", "{v}");
        assert_eq!(v["failed_update"]["version"], "test-bad", "{v}");
        let (_, out) = ctl(&vm, &["update"]);
        assert!(
            out.contains("the update to test-bad (slot a) did not become healthy"),
            "{out}"
        );
        assert_eq!(vm.metric("edgebox_update_failed_trial"), 1.0);

        // A power cut in the middle of an upload: the next boot runs b.
        let file = std::fs::read(&good).unwrap();
        let _upload = start_upload(&vm, &file, file.len() / 2);
        vm.wait_console(
            "update: writing edgebox image test-2 into slot a",
            Duration::from_secs(60),
        )
        .unwrap();
        vm.kill();
        drop(vm);
        let mut vm = Appliance::boot(h, "vm-after-cut", &disk, Boot::Uefi);
        vm.wait_ready();
        let v = running(&vm, "test-2", "b");
        assert_eq!(slot_state(&v, "a"), "empty", "{v}");
        assert_eq!(v["next_boot"], "b", "{v}");
    });
}

/// What a client asking the virtual address over and over saw.
#[derive(Debug, Default)]
struct Seen {
    ok: u64,
    failed: Vec<String>,
    longest_gap: Duration,
}

/// One `GET /` over a new TLS connection, with timeouts long enough for a
/// SYN dropped during a handover to be sent again (1 s later).
fn ask(addr: std::net::SocketAddr) -> Result<(), String> {
    use std::io::Read;
    let config = edgebox::ctl::client::tls_config(edgebox::ctl::client::Trust::Insecure)
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("edgebox.invalid").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: pair\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("request: {e}"))?;
    let mut reply = Vec::new();
    if let Err(e) = tls.read_to_end(&mut reply) {
        if e.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(format!("response: {e}"));
        }
    }
    let text = String::from_utf8_lossy(&reply);
    if text.starts_with("HTTP/1.1 200") && text.ends_with("served\n") {
        Ok(())
    } else {
        Err(format!("response: {:?}", text.lines().next()))
    }
}

#[test]
fn a_pair_updates_one_side_at_a_time_behind_its_virtual_address_without_a_failed_request() {
    let image =
        qemu_tests::image_without_address(edgebox_image::kernel::KernelSource::Cloud, "pair");
    let update_file = update("test-2", None, Some(testing::signing_key().unwrap()));
    run("rolling-update", move |h| {
        let _dhcp = qemu_tests::Dnsmasq::start(
            h,
            "10.0.2.15,10.0.2.16",
            &["52:54:00:12:34:56,10.0.2.15", "52:54:00:12:34:57,10.0.2.16"],
        );
        let (disk_a, disk_b) = (h.disk_of(&image, "a"), h.disk_of(&image, "b"));
        let mut a = Appliance::boot_at(h, "a", &disk_a, Boot::Uefi, [10, 0, 2, 15].into());
        let mut b = Appliance::boot_at(h, "b", &disk_b, Boot::Uefi, [10, 0, 2, 16].into());
        a.wait_ready();
        b.wait_ready();
        let vip: std::net::Ipv4Addr = [10, 0, 2, 100].into();
        let fingerprint = |vm: &Appliance| {
            let (_, r) = vm.api("GET", "/v1/replication", None);
            r["fingerprint"].as_str().unwrap().to_owned()
        };
        let (fa, fb) = (fingerprint(&a), fingerprint(&b));
        // Neither preempts: an updated appliance comes back as backup, and
        // the operator hands back with a graceful release.
        let pair = |me: &Appliance, peer: &Appliance, pin: String, priority: u8| {
            let (me, peer) = (me.addr, peer.addr);
            move |c: &mut Value| {
                c["replication"] = serde_json::json!({
                    "listen": format!("{me}:7443"),
                    "peers": [{ "address": format!("{peer}:7443"), "fingerprint": pin, "name": "peer" }],
                    "sync_interval_ms": 1000,
                });
                c["failover"] = serde_json::json!({
                    "interface": "eth0", "vrid": 52, "priority": priority, "advert_ms": 100,
                    "preempt": false,
                    // New connections are held (SYNs dropped, sent again by
                    // the client a second later) while the address moves.
                    "handover_hold_ms": 300,
                    "virtual_addresses": [format!("{vip}/24")], "peers": [peer.to_string()],
                });
                c["routes"] = serde_json::json!([{ "action": { "respond": { "status": 200, "body": "served\n" } } }]);
            }
        };
        a.change_config(pair(&a, &b, fb, 150));
        let state = |vm: &Appliance| {
            vm.api("GET", "/v1/failover", None).1["state"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        };
        let until = Instant::now() + Duration::from_secs(60);
        while state(&a) != "master" {
            assert!(Instant::now() < until, "A never became master");
            std::thread::sleep(Duration::from_millis(100));
        }
        b.change_config(pair(&b, &a, fa, 100));
        let until = Instant::now() + Duration::from_secs(60);
        while state(&b) != "backup" || ask((vip, 443).into()).is_err() {
            assert!(Instant::now() < until, "B never became backup");
            std::thread::sleep(Duration::from_millis(100));
        }

        // A client asks the virtual address back to back, for as long as the
        // update takes (bounded: 15 minutes, 200 000 requests).
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut seen = Seen::default();
                let mut last_ok = Instant::now();
                let until = Instant::now() + Duration::from_secs(900);
                for _ in 0..200_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) || Instant::now() > until {
                        break;
                    }
                    match ask((vip, 443).into()) {
                        Ok(()) => {
                            seen.ok += 1;
                            seen.longest_gap = seen.longest_gap.max(last_ok.elapsed());
                            last_ok = Instant::now();
                        }
                        Err(e) => seen.failed.push(e),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                seen
            })
        };
        // Updates one appliance, and waits until it runs the update, healthy
        // (failover and replication talking to the other) and kept.
        let update_one = |vm: &mut Appliance| {
            let (ok, out) = ctl(vm, &["update", update_file.to_str().unwrap(), "--reboot"]);
            assert!(ok, "{out}");
            wait_boot(vm, 2);
            vm.wait_console(
                "edgebox image test-2 is healthy; marked good",
                Duration::from_secs(200),
            )
            .unwrap();
        };
        // 1. The backup first.
        update_one(&mut b);
        assert_eq!(state(&b), "backup");
        // 2. The master hands the address to the updated backup (make before
        //    break; it answers only once B holds it), then updates.
        let (ok, out) = ctl(&a, &["failover", "release"]);
        assert!(ok, "{out}");
        assert_eq!(state(&b), "master");
        update_one(&mut a);
        assert_eq!(
            (state(&a).as_str(), state(&b).as_str()),
            ("backup", "master")
        );
        // 3. Hand back to A.
        let (ok, out) = ctl(&b, &["failover", "release"]);
        assert!(ok, "{out}");
        assert_eq!(state(&a), "master");
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = client.join().unwrap();
        for vm in [&a, &b] {
            running(vm, "test-2", "b");
        }
        eprintln!(
            "rolling update of the pair: {} requests answered, {} failed, longest gap {} ms",
            seen.ok,
            seen.failed.len(),
            seen.longest_gap.as_millis()
        );
        assert!(seen.failed.is_empty(), "failed requests: {:?}", seen.failed);
        assert!(seen.ok > 100, "{seen:?}");
    });
}
