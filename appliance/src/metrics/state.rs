//! Gauges of the appliance's state rather than its traffic: certificates'
//! expiry, the data disk, and the generations of config, host map and
//! sites. Bounded: one series each, whatever the number of certificates.
#![forbid(unsafe_code)]

use std::fmt::Write;

use super::prometheus::family;

/// A certificate expiring within this is "expiring soon" (the alert's
/// horizon too).
pub const SOON_S: i64 = 14 * 86_400;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    /// Each configured certificate's `notAfter` (seconds since the epoch);
    /// none for one whose file could not be read.
    pub not_after: Vec<Option<i64>>,
    /// The data directory's file system: bytes available to edgebox, and
    /// its size.
    pub disk: Option<(u64, u64)>,
    pub hostmap_generation: u64,
    pub sites_generation: u64,
}

impl State {
    pub fn render(&self, now_s: i64, o: &mut String) {
        let known: Vec<i64> = self.not_after.iter().flatten().copied().collect();
        family(
            o,
            "edgebox_certificates",
            "gauge",
            "Certificates in the config.",
        );
        let _ = writeln!(o, "edgebox_certificates {}", self.not_after.len());
        family(
            o,
            "edgebox_certificates_unreadable",
            "gauge",
            "Certificates whose file could not be read for its expiry.",
        );
        let _ = writeln!(
            o,
            "edgebox_certificates_unreadable {}",
            self.not_after.len() - known.len()
        );
        if let Some(first) = known.iter().min() {
            family(
                o,
                "edgebox_certificate_earliest_expiry_timestamp_seconds",
                "gauge",
                "When the first of the certificates expires (its notAfter), in seconds since the Unix epoch.",
            );
            let _ = writeln!(
                o,
                "edgebox_certificate_earliest_expiry_timestamp_seconds {first}"
            );
        }
        family(
            o,
            "edgebox_certificates_expiring_soon",
            "gauge",
            "Certificates expiring within 14 days (or expired).",
        );
        let soon = known.iter().filter(|&&t| t - now_s < SOON_S).count();
        let _ = writeln!(o, "edgebox_certificates_expiring_soon {soon}");
        if let Some((avail, size)) = self.disk {
            family(
                o,
                "edgebox_data_disk_available_bytes",
                "gauge",
                "Bytes of the data directory's file system available to edgebox.",
            );
            let _ = writeln!(o, "edgebox_data_disk_available_bytes {avail}");
            family(
                o,
                "edgebox_data_disk_size_bytes",
                "gauge",
                "Size of the data directory's file system.",
            );
            let _ = writeln!(o, "edgebox_data_disk_size_bytes {size}");
        }
        for (name, help, v) in [
            (
                "edgebox_hostmap_generation",
                "Changes applied to the host map since start.",
                self.hostmap_generation,
            ),
            (
                "edgebox_sites_generation",
                "Publishes, rollbacks and deletes of sites since start.",
                self.sites_generation,
            ),
        ] {
            family(o, name, "gauge", help);
            let _ = writeln!(o, "{name} {v}");
        }
    }
}

/// The data directory's file system: (available, size) in bytes.
pub fn disk(data: &std::path::Path) -> Option<(u64, u64)> {
    let s = rustix::fs::statvfs(data).ok()?;
    Some((s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_expiry_and_the_soon_count_are_shown() {
        let now = 1_000_000_000;
        let s = State {
            not_after: vec![
                Some(now + 30 * 86_400),
                Some(now + 86_400),
                None,
                Some(now - 5),
            ],
            disk: Some((10, 100)),
            ..State::default()
        };
        let mut o = String::new();
        s.render(now, &mut o);
        assert!(o.contains("edgebox_certificates 4\n"), "{o}");
        assert!(o.contains("edgebox_certificates_unreadable 1\n"), "{o}");
        assert!(
            o.contains(&format!(
                "edgebox_certificate_earliest_expiry_timestamp_seconds {}\n",
                now - 5
            )),
            "{o}"
        );
        assert!(o.contains("edgebox_certificates_expiring_soon 2\n"), "{o}");
        assert!(o.contains("edgebox_data_disk_available_bytes 10\n"), "{o}");
        assert!(o.contains("# HELP edgebox_data_disk_size_bytes "), "{o}");
    }
}
