//! A dead or hung server never keeps the virtual addresses.
//!
//! The kernel answers ARP for an address on the interface whoever owns the
//! process that put it there, so after a SIGKILL (or a hang) the box would
//! go on drawing traffic it cannot serve: keepalived's known weakness. The
//! failover thread therefore writes down, before it adds them, which
//! addresses it holds (`failover.held` in the data directory), touches the
//! file while it keeps advertising, and removes it once it has let them go.
//! The supervisor (PID 1 on the appliance, `edgebox supervise` elsewhere)
//! reads it: when the server ends, or the file has not been touched for its
//! `stale_ms`, the addresses are removed at once, before anything else.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The file's name in the data directory.
pub const FILE: &str = "failover.held";

/// What the failover thread holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub interface: String,
    pub index: u32,
    pub addresses: Vec<IpNet>,
    /// Untouched for this long, the server counts as hung.
    pub stale_ms: u64,
}

/// How long a holder may go without touching the file: a few adverts, and
/// never less than half a second (a busy machine's scheduling).
pub fn stale_ms(advert_ms: u32) -> u64 {
    (4 * u64::from(advert_ms)).max(500)
}

pub fn path(data: &Path) -> PathBuf {
    data.join(FILE)
}

/// Written (whole or not at all) before the addresses are added.
pub fn hold(data: &Path, held: &Held) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(held).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(&path(data), &bytes, 0o600)
}

/// The holder is alive.
pub fn beat(data: &Path) -> std::io::Result<()> {
    std::fs::File::options()
        .write(true)
        .open(path(data))?
        .set_modified(SystemTime::now())
}

/// The addresses are let go.
pub fn clear(data: &Path) {
    match std::fs::remove_file(path(data)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("failover: removing {}: {e}", path(data).display()),
    }
}

/// What is held, and when the holder last touched the file.
pub fn read(data: &Path) -> Option<(Held, SystemTime)> {
    let p = path(data);
    let bytes = std::fs::read(&p).ok()?;
    let touched = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
    let held = serde_json::from_slice(&bytes).ok()?;
    Some((held, touched))
}

/// Tells a hung holder by the file's modification time not changing for
/// its `stale_ms` of the supervisor's monotonic clock (a step of the wall
/// clock is not a hang). Pure: what was read and when are passed in.
#[derive(Debug, Default)]
pub struct Watch {
    last: Option<(SystemTime, Instant)>,
}

impl Watch {
    /// Whether the holder is hung, given the file as read at `now`.
    pub fn hung(&mut self, read: Option<&(Held, SystemTime)>, now: Instant) -> bool {
        let Some((held, touched)) = read else {
            self.last = None;
            return false;
        };
        match self.last {
            Some((seen, since)) if seen == *touched => {
                now.duration_since(since) > Duration::from_millis(held.stale_ms)
            }
            _ => {
                self.last = Some((*touched, now));
                false
            }
        }
    }
}

/// Removes what the file says is held, then the file; the addresses
/// removed. An unreadable file (a power cut while it was first written
/// cannot leave one: it is written atomically) is removed as well.
pub fn release(data: &Path) -> Result<Vec<IpNet>, String> {
    let Some((held, _)) = read(data) else {
        clear(data);
        return Ok(Vec::new());
    };
    super::netlink::addresses(held.index, &held.interface, &held.addresses, false)?;
    clear(data);
    Ok(held.addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_hung_when_it_stops_touching_the_file() {
        let held = Held {
            interface: "eth0".into(),
            index: 2,
            addresses: vec!["10.0.2.100/24".parse().unwrap()],
            stale_ms: stale_ms(50),
        };
        assert_eq!(held.stale_ms, 500);
        assert_eq!(stale_ms(1000), 4000);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let at = |n| {
            (
                held.clone(),
                SystemTime::UNIX_EPOCH + Duration::from_secs(n),
            )
        };
        let mut w = Watch::default();
        assert!(!w.hung(None, ms(0)), "nothing held");
        assert!(!w.hung(Some(&at(1)), ms(0)));
        assert!(!w.hung(Some(&at(1)), ms(500)), "not yet");
        assert!(
            w.hung(Some(&at(1)), ms(501)),
            "untouched for longer than 500 ms"
        );
        assert!(!w.hung(Some(&at(2)), ms(502)), "touched again");
        // A wall clock stepped far back or forward is just another touch.
        assert!(!w.hung(Some(&at(1_000_000)), ms(900)));
        assert!(!w.hung(Some(&at(1_000_000)), ms(1300)));
        assert!(!w.hung(None, ms(5000)), "let go");
        assert!(
            !w.hung(Some(&at(1_000_000)), ms(5001)),
            "held anew: its time starts now"
        );
    }

    #[test]
    fn the_file_round_trips_and_garbage_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let held = Held {
            interface: "eth0".into(),
            index: 2,
            addresses: vec!["10.0.2.100/24".parse().unwrap()],
            stale_ms: 500,
        };
        assert!(read(dir.path()).is_none());
        hold(dir.path(), &held).unwrap();
        let (got, first) = read(dir.path()).unwrap();
        assert_eq!(got, held);
        std::thread::sleep(Duration::from_millis(20));
        beat(dir.path()).unwrap();
        assert!(read(dir.path()).unwrap().1 > first, "touched");
        clear(dir.path());
        assert!(read(dir.path()).is_none());
        clear(dir.path());
        std::fs::write(path(dir.path()), b"{").unwrap();
        assert_eq!(release(dir.path()).unwrap(), Vec::<IpNet>::new());
        assert!(!path(dir.path()).exists());
    }
}
