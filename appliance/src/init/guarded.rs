//! `edgebox serve` as a supervised child: started, waited for, started
//! again when it ends unasked, and watched so that a server that died or
//! hung never keeps the failover's virtual addresses
//! ([`crate::failover::guard`]). PID 1 runs this on the appliance; `edgebox
//! supervise` runs the same elsewhere (under systemd, in the tests).
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions};

use super::supervise::{Ended, Next, Supervisor};
use crate::failover::guard;

/// How often the child and the held addresses are looked at.
const POLL: Duration = Duration::from_millis(20);

/// Runs `serve` (a command ready to spawn, made anew each time) until it
/// asks for a power-off or reboot (returned), exits 0, or `stop` is set (it
/// is sent SIGTERM and waited for); `None` for the last two. `say` reports.
pub fn run(
    serve: &dyn Fn() -> Command,
    data: &Path,
    stop: &AtomicBool,
    say: &dyn Fn(String),
) -> Option<Next> {
    let mut supervisor = Supervisor::default();
    loop {
        let started = Instant::now();
        let child = serve().stdin(Stdio::null()).spawn();
        let how = match child {
            Ok(child) => watch(child.id(), data, stop, say),
            Err(e) => {
                say(format!("cannot start edgebox serve: {e}"));
                Ended::Exited(-1)
            }
        };
        // Stopped from outside, or asked to stop (exit 0; on the appliance
        // a stop asks for a power-off or reboot instead).
        if stop.load(Ordering::Acquire) || how == Ended::Exited(0) {
            say(format!("edgebox serve {how}; stopping"));
            return None;
        }
        match supervisor.ended(how, started.elapsed()) {
            Next::Restart { after } => {
                say(format!(
                    "edgebox serve {how}; starting it again in {} s",
                    after.as_secs()
                ));
                let until = Instant::now() + after;
                while Instant::now() < until && !stop.load(Ordering::Acquire) {
                    std::thread::sleep(POLL);
                }
                if stop.load(Ordering::Acquire) {
                    return None;
                }
            }
            next => return Some(next),
        }
    }
}

/// Reaps children (on the appliance orphans come to PID 1) until `pid`
/// ends. Meanwhile: a server whose failover stopped touching the held
/// addresses' file is hung: the addresses are removed and it is killed;
/// once it ended, whatever it held is removed before anything else.
fn watch(pid: u32, data: &Path, stop: &AtomicBool, say: &dyn Fn(String)) -> Ended {
    let mut hang = guard::Watch::default();
    let mut killed = false;
    let mut forwarded = false;
    let ended = loop {
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some((who, status))) if who.as_raw_nonzero().get() as u32 == pid => {
                break match (status.exit_status(), status.terminating_signal()) {
                    (Some(code), _) => Ended::Exited(code),
                    (None, Some(sig)) => Ended::Signaled(sig),
                    (None, None) => Ended::Exited(-1),
                };
            }
            Ok(Some(_)) | Err(rustix::io::Errno::INTR) => continue,
            Ok(None) => {}
            Err(e) => {
                say(format!("wait: {e}"));
                break Ended::Exited(-1);
            }
        }
        let child = Pid::from_raw(pid as i32);
        if stop.load(Ordering::Acquire) && !forwarded {
            forwarded = true;
            if let Some(child) = child {
                let _ = rustix::process::kill_process(child, Signal::TERM);
            }
        }
        if !killed && hang.hung(guard::read(data).as_ref(), Instant::now()) {
            say("edgebox serve stopped advertising (hung); removing its virtual addresses and killing it".to_owned());
            release(data, say);
            if let Some(child) = child {
                let _ = rustix::process::kill_process(child, Signal::KILL);
            }
            killed = true;
        }
        std::thread::sleep(POLL);
    };
    release(data, say);
    ended
}

fn release(data: &Path, say: &dyn Fn(String)) {
    match guard::release(data) {
        Ok(gone) if gone.is_empty() => {}
        Ok(gone) => {
            let gone: Vec<String> = gone.iter().map(ToString::to_string).collect();
            say(format!(
                "removed the virtual addresses the server held: {}",
                gone.join(", ")
            ));
        }
        Err(e) => say(format!("removing the server's virtual addresses: {e}")),
    }
}
