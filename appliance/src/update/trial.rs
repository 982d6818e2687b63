//! Whether a slot booted on trial is good, sans-IO: PID 1 asks once a
//! second with what it sees, and blesses the slot or gives up on it.
#![forbid(unsafe_code)]

use std::time::Duration;

/// How long a trial boot has to become healthy, from PID 1's start.
pub const DEADLINE: Duration = Duration::from_secs(180);

/// What to do with a slot on trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not healthy yet; ask again.
    Wait,
    /// Healthy: bless it.
    Good,
    /// Not healthy by the deadline: record why and reboot into the
    /// previous slot.
    Failed(String),
}

/// What PID 1 sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen<'a> {
    /// Since PID 1 started.
    pub elapsed: Duration,
    /// Whether the data partition is mounted (not the in-memory stand-in).
    pub data_mounted: bool,
    /// The server's health report (`ok`, or `waiting: why`), if it wrote
    /// one.
    pub health: Option<&'a str>,
    /// What the supervisor last said about the server (how it ended), if
    /// anything.
    pub last_exit: Option<&'a str>,
}

pub fn judge(seen: &Seen<'_>, deadline: Duration) -> Verdict {
    let health = seen.health.map(str::trim);
    if seen.data_mounted && health == Some("ok") {
        return Verdict::Good;
    }
    if seen.elapsed < deadline {
        return Verdict::Wait;
    }
    let why = if !seen.data_mounted {
        "the data partition did not mount".to_owned()
    } else {
        match (health, seen.last_exit) {
            (Some(h), _) => format!("edgebox serve reports {h}"),
            (None, Some(last)) => format!("edgebox serve never reported health; last: {last}"),
            (None, None) => "edgebox serve never reported health".to_owned(),
        }
    };
    Verdict::Failed(format!(
        "not healthy {} s after boot: {why}",
        deadline.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(
        s: u64,
        data: bool,
        health: Option<&'static str>,
        exit: Option<&'static str>,
    ) -> Seen<'static> {
        Seen {
            elapsed: Duration::from_secs(s),
            data_mounted: data,
            health,
            last_exit: exit,
        }
    }

    #[test]
    fn healthy_in_time_is_good_and_late_health_still_counts_until_judged() {
        let d = Duration::from_secs(180);
        assert_eq!(judge(&seen(5, true, None, None), d), Verdict::Wait);
        assert_eq!(
            judge(&seen(5, true, Some("waiting: failover is init"), None), d),
            Verdict::Wait
        );
        assert_eq!(judge(&seen(9, true, Some("ok\n"), None), d), Verdict::Good);
        assert_eq!(judge(&seen(500, true, Some("ok"), None), d), Verdict::Good);
    }

    #[test]
    fn the_failure_says_what_was_missing() {
        let d = Duration::from_secs(180);
        let why = |s: Seen<'_>| match judge(&s, d) {
            Verdict::Failed(w) => w,
            v => panic!("{v:?}"),
        };
        assert!(why(seen(180, false, Some("ok"), None)).contains("data partition"));
        assert!(why(seen(
            180,
            true,
            Some("waiting: replication: no peer connected"),
            None
        ))
        .contains("reports waiting: replication"));
        assert!(why(seen(
            181,
            true,
            None,
            Some("edgebox serve exited with status 1")
        ))
        .contains("never reported health; last: edgebox serve exited with status 1"));
        assert!(why(seen(181, true, None, None)).starts_with("not healthy 180 s after boot"));
    }
}
