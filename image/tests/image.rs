//! The image for real: built with `edgebox-image build` (kernel package,
//! static binary, mtools, mkfs), booted under OVMF in QEMU, asked over the
//! network to power off. And built twice, byte for byte the same.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use edgebox_image::boot::{self, Accel, BootOptions, Forward, Serial, Vm};

const TOKEN: &str = "image-test-token";

fn work() -> PathBuf {
    edgebox_image::build::target_dir().join("edgebox-image/test")
}

/// Builds an image with the test's first-boot settings into `output`.
fn build(output: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_edgebox-image"))
        .args(["build", "--data-size", "64M", "--admin-token", TOKEN])
        .args(["--net", "eth0,10.0.2.15/24,gw=10.0.2.2", "--output"])
        .arg(output)
        .status()
        .unwrap();
    assert!(status.success(), "edgebox-image build: {status}");
}

/// One image per test run, shared by the tests here.
fn image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let out = work().join("a/edgebox.img");
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        build(&out);
        out
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

#[test]
fn boots_under_uefi_serves_https_and_powers_off_when_asked() {
    let image = image();
    let serial = work().join("boot.serial.log");
    let _show = ShowSerialOnFailure(serial.clone());
    let (https, admin) = (free_port(), free_port());
    let mut vm = Vm::start(&BootOptions {
        image: image.to_owned(),
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
        serial: Serial::File(serial.clone()),
        accel: Accel::Auto,
        memory_mib: 512,
        cpus: 2,
        snapshot: true,
        direct: None,
        work: work(),
    })
    .unwrap();
    let (status, after) = vm.wait_https(https, Duration::from_secs(300)).unwrap();
    assert_eq!(status, 200, "the welcome page");
    eprintln!(
        "first HTTPS response after {:.1} s ({:?})",
        after.as_secs_f64(),
        vm.accel
    );
    let admin = ([127, 0, 0, 1], admin).into();
    let status = boot::https_request(admin, "POST", "/v1/system/poweroff", Some(TOKEN)).unwrap();
    assert_eq!(status, 202, "power-off accepted");
    let exit = vm.wait_exit(Duration::from_secs(120)).unwrap();
    assert!(exit.success(), "QEMU: {exit}");
    let log = std::fs::read_to_string(&serial).unwrap();
    for line in [
        "edgebox init: data partition /dev/vda2 mounted on /data",
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
}

#[test]
fn the_same_inputs_build_the_same_bytes() {
    let first = image();
    let second = work().join("b/edgebox.img");
    std::fs::create_dir_all(second.parent().unwrap()).unwrap();
    build(&second);
    for ext in ["img", "initrd", "vmlinuz", "cmdline"] {
        let a = std::fs::read(first.with_extension(ext)).unwrap();
        let b = std::fs::read(second.with_extension(ext)).unwrap();
        assert!(a.len() > 10, "{ext} is empty");
        assert!(a == b, "edgebox.{ext} differs between two builds");
    }
}
