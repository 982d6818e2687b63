//! The process's own gauges, by the names Prometheus client libraries give
//! them (`process_resident_memory_bytes`, `process_open_fds`,
//! `process_max_fds`), read from `/proc/self`. The parsing is pure.
#![forbid(unsafe_code)]

use std::fmt::Write;

use super::prometheus::family;

/// What `/proc/self` says; `None` where it could not be read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Process {
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

impl Process {
    pub fn read() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        let max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        Self {
            resident_bytes: resident_bytes(&status),
            open_fds,
            max_fds,
        }
    }

    pub fn render(&self, o: &mut String) {
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory of the edgebox process.",
                self.resident_bytes,
            ),
            (
                "process_open_fds",
                "Open file descriptors of the edgebox process (each connection holds one).",
                self.open_fds,
            ),
            (
                "process_max_fds",
                "The open-files limit (soft) of the edgebox process.",
                self.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                family(o, name, "gauge", help);
                let _ = writeln!(o, "{name} {v}");
            }
        }
    }
}

/// `VmRSS` of a `/proc/PID/status` text, in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_the_status_text() {
        let status = "Name:\tedgebox\nVmPeak:\t  123 kB\nVmRSS:\t   28816 kB\nThreads:\t4\n";
        assert_eq!(resident_bytes(status), Some(28816 * 1024));
        assert_eq!(resident_bytes("Name:\tx\n"), None);
        assert_eq!(resident_bytes("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn this_process_is_read_and_rendered() {
        let p = Process::read();
        assert!(p.resident_bytes.unwrap() > 0);
        assert!(p.open_fds.unwrap() >= 3);
        let mut text = String::new();
        p.render(&mut text);
        assert!(text.contains("# TYPE process_open_fds gauge\nprocess_open_fds "));
        assert!(text.contains("\nprocess_max_fds "));
    }
}
