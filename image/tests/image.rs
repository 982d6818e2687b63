//! The image for real: built with `edgebox-image build` (kernel package,
//! static binary, mtools, mkfs), booted under OVMF in QEMU, asked over the
//! network to power off. And built twice, byte for byte the same.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edgebox_image::boot::{self, Accel, BootOptions, Forward, Net, Serial, Vm};

const TOKEN: &str = edgebox_image::testing::TOKEN;

fn work() -> PathBuf {
    edgebox_image::build::target_dir().join("edgebox-image/test")
}

/// The shared test image (built once per test run).
fn image() -> &'static Path {
    &edgebox_image::testing::shared_image().unwrap().image
}

fn free_port() -> u16 {
    edgebox_image::testing::free_port().unwrap()
}

/// Prints the serial console if the test fails.
struct ShowSerialOnFailure(PathBuf);

impl Drop for ShowSerialOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!(
                "--- serial console ({}) ---\n{log}--- end ---",
                self.0.display()
            );
        }
    }
}

fn boot(disk: &Path, serial: &Path, direct: Option<String>) -> (Vm, u16, SocketAddr) {
    let (https, admin) = (free_port(), free_port());
    let built = edgebox_image::testing::shared_image().unwrap();
    let vm = Vm::start(&BootOptions {
        image: disk.to_owned(),
        net: Net::User {
            forwards: vec![
                Forward {
                    host: https,
                    guest: 443,
                },
                Forward {
                    host: admin,
                    guest: 9443,
                },
            ],
        },
        serial: Serial::File(serial.to_owned()),
        accel: Accel::Auto,
        memory_mib: 512,
        cpus: 2,
        snapshot: false,
        direct: direct.map(|cmdline| (built.vmlinuz.clone(), built.initrd.clone(), cmdline)),
        work: work(),
        die_with_parent: false,
        devices: edgebox_image::boot::Devices::Virtio,
    })
    .unwrap();
    (vm, https, ([127, 0, 0, 1], admin).into())
}

fn admin(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> (u16, Vec<u8>) {
    boot::https_request(addr, method, path, Some(TOKEN), body).unwrap()
}

fn power_off(vm: &mut Vm, addr: SocketAddr) {
    let (status, _) = admin(addr, "POST", "/v1/system/poweroff", None);
    assert_eq!(status, 202, "power-off accepted");
    let exit = vm.wait_exit(Duration::from_secs(120)).unwrap();
    assert!(exit.success(), "QEMU: {exit}");
}

fn console(serial: &Path) -> String {
    std::fs::read_to_string(serial).unwrap()
}

/// Boot 1 goes through the firmware and the unified kernel image, takes a
/// network setting through the admin API and powers off when asked. Boot 2
/// (same disk) has a broken `edgebox.net=` on its command line: the console
/// says so, and the persisted setting keeps the appliance reachable.
#[test]
fn boots_under_uefi_serves_https_powers_off_and_survives_a_bad_command_line() {
    let disk = work().join("boot.qcow2");
    boot::overlay(image(), &disk).unwrap();

    let serial = work().join("boot-1.serial.log");
    let _show = ShowSerialOnFailure(serial.clone());
    let (mut vm, https, api) = boot(&disk, &serial, None);
    let (status, after) = vm.wait_https(https, Duration::from_secs(300)).unwrap();
    assert_eq!(status, 200, "the welcome page");
    eprintln!(
        "boot 1 (UEFI): first HTTPS response after {:.1} s ({:?})",
        after.as_secs_f64(),
        vm.accel
    );
    let wrong = boot::https_request(api, "GET", "/v1/status", Some("wrong"), None).unwrap();
    assert_eq!(wrong.0, 401, "a wrong token is refused");
    let (status, body) = admin(api, "GET", "/v1/config", None);
    assert_eq!(status, 200);
    let mut config: serde_json::Value = serde_json::from_slice(&body).unwrap();
    config["network"] = serde_json::json!([
        {"interface": "eth0", "address": "10.0.2.15/24", "gateway": "10.0.2.2"}
    ]);
    let (status, body) = admin(
        api,
        "PUT",
        "/v1/config",
        Some(config.to_string().as_bytes()),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    power_off(&mut vm, api);
    let log = console(&serial);
    for line in [
        "edgebox init: data partition /dev/vda2 mounted on /data",
        "edgebox init: admin token: the image's first-boot token",
        "edgebox init: network: eth0 is 10.0.2.15/24, default route via 10.0.2.2",
        "admin API poweroff",
        "edgebox init: powering off",
    ] {
        assert!(log.contains(line), "serial console lacks {line:?}");
    }
    assert!(
        !log.contains("edgebox init: error"),
        "errors on the console"
    );

    let serial = work().join("boot-2.serial.log");
    let _show = ShowSerialOnFailure(serial.clone());
    let cmdline = "console=ttyS0 edgebox.net=eth0,10.0.2.99".to_owned();
    let (mut vm, https, api) = boot(&disk, &serial, Some(cmdline));
    let (status, after) = vm.wait_https(https, Duration::from_secs(300)).unwrap();
    assert_eq!(status, 200);
    eprintln!(
        "boot 2 (direct kernel): first HTTPS response after {:.1} s",
        after.as_secs_f64()
    );
    power_off(&mut vm, api);
    let log = console(&serial);
    for line in [
        "edgebox init: error: kernel command line: edgebox.net=eth0,10.0.2.99: \"10.0.2.99\" has no /PREFIX",
        "edgebox init: network: eth0 is 10.0.2.15/24, default route via 10.0.2.2",
    ] {
        assert!(log.contains(line), "serial console lacks {line:?}");
    }
}

#[test]
fn the_same_inputs_build_the_same_bytes() {
    let first = image();
    // A second, real build: a fresh directory has nothing up to date.
    let dir = work().join("again");
    let _ = std::fs::remove_dir_all(&dir);
    let second = dir.join("edgebox.img");
    let status = Command::new(env!("CARGO_BIN_EXE_edgebox-image"))
        .args(["build", "--data-size", "256M", "--admin-token", TOKEN])
        .args(["--net", "eth0,10.0.2.15/24,gw=10.0.2.2"])
        .args([
            "--image-version",
            edgebox_image::testing::VERSION,
            "--signing-key",
        ])
        .arg(edgebox_image::testing::signing_key().unwrap())
        .arg("--output")
        .arg(&second)
        .status()
        .unwrap();
    assert!(status.success(), "edgebox-image build: {status}");
    // The signed update file too (Ed25519 signatures are deterministic).
    for ext in ["img", "initrd", "vmlinuz", "cmdline", "update"] {
        let a = std::fs::read(first.with_extension(ext)).unwrap();
        let b = std::fs::read(second.with_extension(ext)).unwrap();
        assert!(a.len() > 10, "{ext} is empty");
        assert!(a == b, "edgebox.{ext} differs between two builds");
    }
}
