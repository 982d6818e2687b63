//! What PID 1 does when the `edgebox serve` process it started ends: power
//! off or reboot when that was asked for, otherwise start it again after a
//! back-off that grows while it keeps failing. Pure; the clock is passed in.

use std::time::Duration;

/// `edgebox serve` exits with this after a power-off request.
pub const EXIT_POWEROFF: u8 = 100;
/// `edgebox serve` exits with this after a reboot request.
pub const EXIT_REBOOT: u8 = 101;

/// How the server process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signaled(i32),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(code) => write!(f, "exited with status {code}"),
            Ended::Signaled(sig) => write!(f, "was killed by signal {sig}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    PowerOff,
    Reboot,
    Restart { after: Duration },
}

/// A run this long resets the back-off.
const STABLE: Duration = Duration::from_secs(60);
const FIRST: Duration = Duration::from_secs(1);
const LONGEST: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Supervisor {
    failures: u32,
}

impl Supervisor {
    /// Decides what follows a server that ran for `ran` and ended so.
    pub fn ended(&mut self, how: Ended, ran: Duration) -> Next {
        match how {
            Ended::Exited(c) if c == i32::from(EXIT_POWEROFF) => return Next::PowerOff,
            Ended::Exited(c) if c == i32::from(EXIT_REBOOT) => return Next::Reboot,
            _ => {}
        }
        if ran >= STABLE {
            self.failures = 0;
        }
        let after = FIRST.saturating_mul(1 << self.failures.min(5)).min(LONGEST);
        self.failures += 1;
        Next::Restart { after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_obeyed() {
        let mut s = Supervisor::default();
        assert_eq!(s.ended(Ended::Exited(100), Duration::ZERO), Next::PowerOff);
        assert_eq!(s.ended(Ended::Exited(101), Duration::ZERO), Next::Reboot);
    }

    #[test]
    fn failures_back_off_and_a_stable_run_forgives() {
        let mut s = Supervisor::default();
        let quick = Duration::from_millis(300);
        let waits: Vec<u64> = (0..7)
            .map(|_| match s.ended(Ended::Exited(1), quick) {
                Next::Restart { after } => after.as_secs(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(
            s.ended(Ended::Signaled(9), Duration::from_secs(3600)),
            Next::Restart { after: FIRST }
        );
        assert_eq!(
            s.ended(Ended::Exited(0), quick),
            Next::Restart {
                after: Duration::from_secs(2)
            }
        );
    }
}
