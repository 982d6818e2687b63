//! `edgebox-image boot` takes its QEMU down with it, whether it is stopped
//! by SIGTERM, SIGINT or SIGHUP (it stops QEMU and waits for it first) or
//! killed outright (the kernel sends QEMU SIGTERM). Afterwards the forwarded
//! port is free again, so the next boot can take it.
//!
//! The disk is an empty file: the firmware finds nothing to boot and waits,
//! which is all these tests need of a VM (no kernel, no image build).

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

const DEADLINE: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    edgebox_image::testing::free_port().unwrap()
}

/// `edgebox-image boot` of an empty disk with `port` forwarded; returns it
/// once QEMU holds the port, with QEMU's PID.
fn boot(dir: &Path, port: u16) -> (Child, i32) {
    let disk = dir.join("empty.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgebox-image"))
        .arg("boot")
        .arg(&disk)
        .args([
            "--accel",
            "tcg",
            "--memory",
            "128",
            "--cpus",
            "1",
            "--snapshot",
        ])
        // Not guest port 443: boot would wait for HTTPS, which never comes.
        .args(["--forward", &format!("{port}:80")])
        .arg("--serial")
        .arg(dir.join("serial.log"))
        .arg("--work")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let qemu = loop {
        let line = lines
            .next()
            .expect("edgebox-image exited before printing QEMU's PID")
            .unwrap();
        if let Some(rest) = line.strip_prefix("edgebox-image: QEMU pid ") {
            break rest.split(' ').next().unwrap().parse::<i32>().unwrap();
        }
    };
    // Keep draining stderr so edgebox-image never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    let start = Instant::now();
    while TcpListener::bind(("127.0.0.1", port)).is_ok() {
        assert!(start.elapsed() < DEADLINE, "QEMU never took port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, qemu)
}

/// Whether `pid` is a process that has not exited (a zombie has exited).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.as_bytes()[0]);
            state != Some(b'Z') && state != Some(b'X')
        }
        Err(_) => false,
    }
}

/// edgebox-image and its QEMU, killed if they are left over when the test
/// ends (as QEMU would be without the fix).
struct Started {
    child: Child,
    qemu: i32,
}

impl Drop for Started {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if alive(self.qemu) {
            let _ = kill_process(Pid::from_raw(self.qemu).unwrap(), Signal::KILL);
        }
    }
}

fn stops_qemu_on(signal: Signal, expect_code: Option<i32>) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (child, qemu) = boot(dir.path(), port);
    let mut started = Started { child, qemu };
    let child = &mut started.child;
    assert!(alive(qemu));
    kill_process(Pid::from_raw(child.id() as i32).unwrap(), signal).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "edgebox-image still running after {signal:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(code) = expect_code {
        // It stopped QEMU and waited for it: both are gone now.
        assert_eq!(status.code(), Some(code), "{signal:?}: {status}");
        assert!(!alive(qemu), "QEMU {qemu} outlived edgebox-image");
        TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("port {port} still taken after {signal:?}: {e}"));
    } else {
        // Killed: the kernel stops QEMU, a moment later.
        while alive(qemu) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < DEADLINE,
                "QEMU {qemu} or port {port} outlived a killed edgebox-image"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!(
        "{signal:?}: edgebox-image and QEMU gone, port free, after {:.2} s",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn sigterm_stops_qemu_first() {
    stops_qemu_on(Signal::TERM, Some(128 + 15));
}

#[test]
fn sigint_stops_qemu_first() {
    stops_qemu_on(Signal::INT, Some(128 + 2));
}

#[test]
fn sighup_stops_qemu_first() {
    stops_qemu_on(Signal::HUP, Some(128 + 1));
}

#[test]
fn sigkill_still_takes_qemu_down() {
    stops_qemu_on(Signal::KILL, None);
}
