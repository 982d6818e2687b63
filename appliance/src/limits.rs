//! Process limits the data plane depends on.
#![forbid(unsafe_code)]

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The locked-memory limit is below what the cores need.
#[derive(Debug, thiserror::Error)]
#[error(
    "not enough locked memory for io_uring: {needed_kib} KiB needed (RLIMIT_MEMLOCK), \
     the limit is {have_kib} KiB and cannot be raised ({reason}). \
     Raise it with `ulimit -l {needed_kib}` in the starting shell, \
     LimitMEMLOCK={needed_kib}K in a systemd unit, or --ulimit memlock={needed_bytes} for docker; \
     or start fewer cores with --cores"
)]
pub struct MemlockError {
    pub needed_kib: u64,
    pub needed_bytes: u64,
    pub have_kib: u64,
    pub reason: String,
}

/// Makes sure at least `needed` bytes may be locked, raising the soft limit
/// (and the hard one, when privileged) if it is lower.
pub fn ensure_memlock(needed: u64) -> Result<(), MemlockError> {
    let limit = getrlimit(Resource::Memlock);
    let enough = |v: Option<u64>| v.is_none_or(|v| v >= needed);
    if enough(limit.current) {
        return Ok(());
    }
    let target = Rlimit {
        current: Some(needed),
        maximum: if enough(limit.maximum) {
            limit.maximum
        } else {
            Some(needed)
        },
    };
    setrlimit(Resource::Memlock, target).map_err(|e| MemlockError {
        needed_kib: needed.div_ceil(1024),
        needed_bytes: needed,
        have_kib: limit.current.unwrap_or(0) / 1024,
        reason: e.to_string(),
    })
}

/// The open-files limit edgebox asks for when it may (as root, or PID 1):
/// the kernel's default of 1 024 would stop it at about a thousand
/// connections.
pub const WANTED_NOFILE: u64 = 1 << 20;

/// Raises the open-files limit: the soft one to the hard one, and the hard
/// one to [`WANTED_NOFILE`] (at most the kernel's `fs.nr_open`) when
/// privileged. Returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    let limit = getrlimit(Resource::Nofile);
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(WANTED_NOFILE);
    let wanted = WANTED_NOFILE.min(nr_open);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < wanted {
        let raised = Rlimit {
            current: Some(wanted),
            maximum: Some(wanted),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return wanted;
        }
    }
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft < hard {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return hard;
        }
    }
    soft
}

/// Client connections an open-files limit of `nofile` leaves room for:
/// a proxied connection holds a backend connection too, and a reserve is
/// kept for listeners, the store, the admin API and replication.
pub fn connections_for(nofile: u64) -> usize {
    let usable = nofile.saturating_sub(256) / 2;
    usize::try_from(usable).unwrap_or(usize::MAX).max(16)
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&i| set.is_set(i))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, usize::from)).collect(),
    }
}
