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

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&i| set.is_set(i))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, usize::from)).collect(),
    }
}
