//! The active health check's state machine: `fall` failed checks in a row
//! take a backend out, `rise` passed checks in a row bring it back (as
//! HAProxy's `rise`/`fall`).

use std::sync::atomic::{AtomicU8, Ordering};

/// What the active health check says of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// No health check is configured: nothing to say.
    Unchecked,
    Up,
    Down,
}

impl Health {
    fn to_u8(self) -> u8 {
        match self {
            Self::Unchecked => 0,
            Self::Up => 1,
            Self::Down => 2,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Up,
            2 => Self::Down,
            _ => Self::Unchecked,
        }
    }

    /// Whether it may get requests as far as the health check is concerned.
    pub fn serves(self) -> bool {
        self != Self::Down
    }
}

/// A health verdict shared between the control plane (the only writer) and
/// every core (readers, on each pick).
#[derive(Debug, Default)]
pub struct SharedHealth(AtomicU8);

impl SharedHealth {
    pub fn get(&self) -> Health {
        Health::from_u8(self.0.load(Ordering::Relaxed))
    }

    pub fn set(&self, h: Health) {
        self.0.store(h.to_u8(), Ordering::Relaxed);
    }
}

/// How a backend starts when checks begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Serving, until `fall` checks fail (the backends a config starts
    /// with, so that a restarted appliance serves at once).
    Up,
    /// Not serving until its first check passes (a backend added while
    /// running, as Envoy does, so that a container still starting gets no
    /// traffic).
    DownUntilFirstPass,
}

/// One backend's check results, counted.
#[derive(Debug, Clone)]
pub struct Checker {
    rise: u32,
    fall: u32,
    up: bool,
    /// Results in a row that disagree with the current state.
    streak: u32,
    /// Still waiting for the first passed check of a new backend.
    first: bool,
}

impl Checker {
    pub fn new(rise: u32, fall: u32, start: Start) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            up: start == Start::Up,
            streak: 0,
            first: start == Start::DownUntilFirstPass,
        }
    }

    pub fn state(&self) -> Health {
        if self.up {
            Health::Up
        } else {
            Health::Down
        }
    }

    /// One check's result; the new state when this result changed it.
    pub fn handle_result(&mut self, passed: bool) -> Option<Health> {
        if passed == self.up {
            // A new backend's failed check ends its one-pass grace.
            self.first = false;
            self.streak = 0;
            return None;
        }
        if passed && self.first {
            self.first = false;
            self.up = true;
            self.streak = 0;
            return Some(Health::Up);
        }
        self.first = false;
        self.streak += 1;
        let needed = if passed { self.rise } else { self.fall };
        if self.streak < needed {
            return None;
        }
        self.up = passed;
        self.streak = 0;
        Some(self.state())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(c: &mut Checker, results: &[bool]) -> Vec<Option<Health>> {
        results.iter().map(|&r| c.handle_result(r)).collect()
    }

    #[test]
    fn fall_failures_in_a_row_take_it_down() {
        let mut c = Checker::new(2, 3, Start::Up);
        assert_eq!(
            run(&mut c, &[false, false, true, false, false, false]),
            [None, None, None, None, None, Some(Health::Down)]
        );
        assert_eq!(c.state(), Health::Down);
    }

    #[test]
    fn rise_passes_in_a_row_bring_it_back() {
        let mut c = Checker::new(2, 1, Start::Up);
        assert_eq!(run(&mut c, &[false]), [Some(Health::Down)]);
        assert_eq!(
            run(&mut c, &[true, false, true, true]),
            [None, None, None, Some(Health::Up)]
        );
    }

    #[test]
    fn a_new_backend_needs_one_pass_then_counts_normally() {
        let mut c = Checker::new(3, 2, Start::DownUntilFirstPass);
        assert_eq!(c.state(), Health::Down);
        assert_eq!(run(&mut c, &[true]), [Some(Health::Up)]);
        assert_eq!(run(&mut c, &[false, false]), [None, Some(Health::Down)]);
        // Back down, the usual rise applies.
        assert_eq!(
            run(&mut c, &[true, true, true]),
            [None, None, Some(Health::Up)]
        );
        let mut failing = Checker::new(3, 2, Start::DownUntilFirstPass);
        assert_eq!(run(&mut failing, &[false, false]), [None, None]);
        assert_eq!(
            run(&mut failing, &[true, true, true]),
            [None, None, Some(Health::Up)],
            "a failure ends the one-pass grace"
        );
    }

    #[test]
    fn shared_health_round_trips() {
        let s = SharedHealth::default();
        assert_eq!(s.get(), Health::Unchecked);
        assert!(s.get().serves());
        s.set(Health::Down);
        assert_eq!(s.get(), Health::Down);
        assert!(!s.get().serves());
        s.set(Health::Up);
        assert_eq!(s.get(), Health::Up);
    }
}
