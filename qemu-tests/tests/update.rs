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
    let built = build::build(&BuildOptions {
        image_version: Some(version.to_owned()),
        binary,
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
        let bad = update("test-bad", Some(dies_at_start(&h.dir)), Some(key));
        let disk = h.disk("vm");
        let mut vm = Appliance::boot(h, "vm", &disk, Boot::Uefi);
        vm.wait_ready();
        let v = slots(&vm);
        assert_eq!(
            (v["version"].as_str(), v["running"].as_str()),
            (Some(testing::VERSION), Some("a")),
            "{v}"
        );
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
        let v = slots(&vm);
        assert_eq!(
            (v["version"].as_str(), v["running"].as_str()),
            (Some("test-2"), Some("b")),
            "{v}"
        );
        assert_eq!(slot_state(&v, "b"), "good", "{v}");
        assert_eq!(slot_state(&v, "a"), "good", "{v}");
        let metrics = vm.metrics();
        assert!(
            metrics.contains("edgebox_update_slot_info{slot=\"b\",state=\"good\",version=\"test-2\",running=\"true\"} 1"),
            "{metrics}"
        );

        // An update whose edgebox dies at start: the kernel panics, reboots,
        // and the loader, the trial's one try used, goes back to b.
        let (ok, out) = ctl(&vm, &["update", bad.to_str().unwrap(), "--reboot"]);
        assert!(ok, "{out}");
        wait_boot(&mut vm, 3);
        let console = vm.console();
        assert!(
            console
                .contains("the update to test-bad (slot a) was tried and did not become healthy"),
            "{console}"
        );
        let v = slots(&vm);
        assert_eq!(
            (v["version"].as_str(), v["running"].as_str()),
            (Some("test-2"), Some("b")),
            "{v}"
        );
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
        let v = slots(&vm);
        assert_eq!(
            (v["version"].as_str(), v["running"].as_str()),
            (Some("test-2"), Some("b")),
            "{v}"
        );
        assert_eq!(slot_state(&v, "a"), "empty", "{v}");
        assert_eq!(v["next_boot"], "b", "{v}");
    });
}
