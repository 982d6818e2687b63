//! Updates into A/B boot slots, with a trial boot and a fall back by the
//! boot loader itself (see docs/image.md and docs/operations.md).
//!
//! - [`file`]: the signed update file, checked as it streams in;
//! - [`slots`]: the slots as systemd-boot sees them, boot counting
//!   included;
//! - [`trial`]: when a slot on trial is good;
//! - [`esp`]: the EFI system partition, mounted only while it is read or
//!   written.
#![forbid(unsafe_code)]

pub mod esp;
pub mod file;
pub mod slots;
pub mod trial;

use std::path::Path;

use serde::Serialize;

pub use slots::{Slot, Slots, State};

/// The GPT name of the EFI system partition.
pub const ESP_PARTITION: &str = "edgebox-esp";
/// The image's update key (hex), from `edgebox-image build --signing-key`.
pub const TRUST_KEY: &str = "/etc/edgebox/update-key.pub";
/// Present when the image takes unsigned updates.
pub const ALLOW_UNSIGNED: &str = "/etc/edgebox/allow-unsigned-updates";
/// The image's os-release, with `IMAGE_VERSION`.
pub const OS_RELEASE: &str = "/etc/os-release";
/// Where the server reports its health for PID 1 (the environment variable
/// names the file).
pub const HEALTH_ENV: &str = "EDGEBOX_HEALTH_FILE";
pub const HEALTH_FILE: &str = "/run/edgebox/health";
/// The last failed trial, in the data directory.
pub const TRIAL_RECORD: &str = "update/failed-trial.json";

/// The data partition's format this build writes (config, store, state).
/// A build reads its own format and every older one. An update that writes
/// a newer format than the running build reads cannot be rolled back: the
/// previous slot would not read the data the trial left.
pub const DATA_FORMAT: u32 = 1;

/// Whether an update that writes `format` may be installed: a rollback to
/// this build must be able to read what it writes, unless the operator
/// accepts that it cannot.
pub fn rollback_check(format: u32, accepted: bool) -> Result<(), String> {
    if format <= DATA_FORMAT || accepted {
        return Ok(());
    }
    Err(format!(
        "the update writes data format {format}, which this version (format {DATA_FORMAT}) cannot read: if its trial failed, the fall back to this version would not read the data it left. Install it anyway with --accept-no-rollback (POST /v1/update?accept_no_rollback=true)"
    ))
}

/// What the running image trusts.
pub fn trust() -> file::Trust {
    trust_from(Path::new(TRUST_KEY), Path::new(ALLOW_UNSIGNED))
}

fn trust_from(key: &Path, allow: &Path) -> file::Trust {
    file::Trust {
        key: std::fs::read_to_string(key)
            .ok()
            .and_then(|k| file::unhex::<32>(&k)),
        allow_unsigned: allow.exists(),
    }
}

/// The running image's version: `IMAGE_VERSION` of its os-release, or the
/// binary's own version where edgebox does not run from an image.
pub fn image_version() -> String {
    std::fs::read_to_string(OS_RELEASE)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("IMAGE_VERSION="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned())
}

/// The slot this system booted from (`edgebox.slot=` on its command line).
pub fn running_slot() -> Option<Slot> {
    let line = std::fs::read_to_string("/proc/cmdline").ok()?;
    crate::init::cmdline::words(&line)
        .iter()
        .find_map(|w| w.strip_prefix("edgebox.slot=").and_then(Slot::parse))
}

/// The kernel command line for a new slot: this boot's.
pub fn current_options() -> String {
    std::fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A failed trial as recorded by the slot that failed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TrialRecord {
    pub slot: Slot,
    pub generation: u64,
    pub version: String,
    pub reason: String,
    /// When it was given up on (seconds since the Unix epoch).
    pub at_unix: u64,
}

/// One slot in the API's view.
#[derive(Debug, Clone, Serialize)]
pub struct SlotView {
    pub slot: Slot,
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// `GET /v1/update`.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    /// The running image's version.
    pub version: String,
    /// The edgebox binary's version.
    pub edgebox: String,
    /// Whether this appliance has boot slots to update.
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<Slot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_boot: Option<Slot>,
    pub slots: Vec<SlotView>,
    /// An update that was tried and did not become healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_update: Option<FailedView>,
    /// The update key this image trusts (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_key: Option<String>,
    pub allow_unsigned: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedView {
    pub slot: Slot,
    pub version: String,
    pub generation: u64,
    /// Why, as the failed slot recorded it; absent if it could not (it
    /// did not get as far as the data partition).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_unix: Option<u64>,
}

/// The view from the slots, the running slot and the data directory.
pub fn view(slots: Result<&Slots, &str>, running: Option<Slot>, data: &Path) -> View {
    let trust = trust();
    let mut v = View {
        version: image_version(),
        edgebox: env!("CARGO_PKG_VERSION").to_owned(),
        available: false,
        reason: None,
        running,
        next_boot: None,
        slots: Vec::new(),
        failed_update: None,
        update_key: trust.key.map(|k| file::hex(&k)),
        allow_unsigned: trust.allow_unsigned,
    };
    let slots = match (slots, running) {
        (Ok(s), Some(_)) => s,
        (Err(e), _) => {
            v.reason = Some(e.to_owned());
            return v;
        }
        (Ok(_), None) => {
            v.reason = Some("this system was not started from a boot slot (no edgebox.slot= on its command line)".into());
            return v;
        }
    };
    v.available = true;
    v.next_boot = slots.next_boot();
    v.slots = Slot::ALL
        .iter()
        .map(|&s| {
            let e = slots.entry(s);
            SlotView {
                slot: s,
                state: slots.state(s, running),
                version: e.map(|e| e.version.clone()),
                generation: e.map(|e| e.generation),
            }
        })
        .collect();
    if let Some(f) = running.and_then(|r| slots.failed_update(r)) {
        let record: Option<TrialRecord> = std::fs::read(data.join(TRIAL_RECORD))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|r: &TrialRecord| r.slot == f.slot && r.generation == f.generation);
        v.failed_update = Some(FailedView {
            slot: f.slot,
            version: f.version.clone(),
            generation: f.generation,
            reason: record.as_ref().map(|r| r.reason.clone()),
            at_unix: record.map(|r| r.at_unix),
        });
    }
    v
}

/// The `edgebox_update_slot_info` series.
pub fn render_prometheus(v: &View, out: &mut String) {
    use std::fmt::Write;
    crate::metrics::family(
        out,
        "edgebox_update_failed_trial",
        "gauge",
        "1 while the newest installed update was tried and did not become healthy (the appliance runs the previous slot).",
    );
    let _ = writeln!(
        out,
        "edgebox_update_failed_trial {}",
        u8::from(v.failed_update.is_some())
    );
    if !v.available {
        return;
    }
    crate::metrics::family(
        out,
        "edgebox_update_slot_info",
        "gauge",
        "One series per boot slot: its state (empty, good, pending, trial, failed), the image version in it, and whether it is running.",
    );
    for s in &v.slots {
        let _ = writeln!(
            out,
            "edgebox_update_slot_info{{slot=\"{}\",state=\"{}\",version=\"{}\",running=\"{}\"}} 1",
            s.slot,
            serde_json::to_value(s.state)
                .ok()
                .and_then(|x| x.as_str().map(str::to_owned))
                .unwrap_or_default(),
            crate::metrics::escape(s.version.as_deref().unwrap_or("")),
            v.running == Some(s.slot),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_that_cannot_be_rolled_back_needs_consent() {
        assert_eq!(rollback_check(DATA_FORMAT, false), Ok(()));
        assert_eq!(rollback_check(DATA_FORMAT - 1, false), Ok(()));
        let e = rollback_check(DATA_FORMAT + 1, false).unwrap_err();
        assert!(e.contains("--accept-no-rollback"), "{e}");
        assert_eq!(rollback_check(DATA_FORMAT + 1, true), Ok(()));
    }

    #[test]
    fn trust_comes_from_the_image_files() {
        let dir = tempfile::tempdir().unwrap();
        let (key, allow) = (dir.path().join("k"), dir.path().join("a"));
        assert_eq!(trust_from(&key, &allow), file::Trust::default());
        std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::write(&allow, "").unwrap();
        assert_eq!(
            trust_from(&key, &allow),
            file::Trust {
                key: Some([0xab; 32]),
                allow_unsigned: true
            }
        );
    }

    #[test]
    fn a_failed_update_is_reported_with_the_reason_its_slot_recorded() {
        let data = tempfile::tempdir().unwrap();
        let entries = |list: &[(&str, u64, &str)]| {
            Slots::new(
                &list
                    .iter()
                    .map(|(n, g, v)| {
                        let (s, _) = slots::parse_file_name(n).unwrap();
                        ((*n).to_owned(), slots::entry_text(s, *g, v, ""))
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let s = entries(&[
            ("edgebox-a.conf", 1, "1.0"),
            ("edgebox-b+0-1.conf", 2, "2.0"),
        ]);
        let v = view(Ok(&s), Some(Slot::A), data.path());
        let f = v.failed_update.as_ref().unwrap();
        assert_eq!(
            (f.slot, f.version.as_str(), f.reason.as_deref()),
            (Slot::B, "2.0", None)
        );
        let mut text = String::new();
        render_prometheus(&v, &mut text);
        assert!(
            text.contains("slot=\"b\",state=\"failed\",version=\"2.0\",running=\"false\""),
            "{text}"
        );
        assert!(text.contains("edgebox_update_failed_trial 1"), "{text}");
        // The record of an older trial is not this one's reason.
        std::fs::create_dir_all(data.path().join("update")).unwrap();
        let record = |generation| TrialRecord {
            slot: Slot::B,
            generation,
            version: "2.0".into(),
            reason: "not healthy".into(),
            at_unix: 1,
        };
        std::fs::write(
            data.path().join(TRIAL_RECORD),
            serde_json::to_vec(&record(1)).unwrap(),
        )
        .unwrap();
        let v = view(Ok(&s), Some(Slot::A), data.path());
        assert_eq!(v.failed_update.unwrap().reason, None);
        std::fs::write(
            data.path().join(TRIAL_RECORD),
            serde_json::to_vec(&record(2)).unwrap(),
        )
        .unwrap();
        let v = view(Ok(&s), Some(Slot::A), data.path());
        assert_eq!(
            v.failed_update.unwrap().reason.as_deref(),
            Some("not healthy")
        );
        // Outside an image: nothing to update, and why.
        let v = view(Err("no partition named edgebox-esp"), None, data.path());
        assert!(!v.available && v.reason.unwrap().contains("edgebox-esp"));
    }
}
