//! The two boot slots as systemd-boot sees them, sans-IO.
//!
//! Each slot is a unified kernel image, `EFI/edgebox/a.efi` or `b.efi`, and a
//! Boot Loader Specification type #1 entry, `loader/entries/edgebox-a.conf`,
//! that starts it with the appliance's command line. An entry installed for
//! a trial is named `edgebox-b+1.conf`: systemd-boot renames it to
//! `edgebox-b+0-1.conf` as it boots it (one try used, none left), and the
//! booted system renames it to `edgebox-b.conf` once it is healthy
//! ("blessing" it). An entry with no tries left sorts after every other, so
//! a trial that did not bless itself is skipped at the next boot and the
//! previous slot starts again.
//!
//! Among the rest, systemd-boot boots the entry with the highest `version`;
//! edgebox writes there a generation that grows with every update, so the
//! newest slot that has not failed is the one that boots.
#![forbid(unsafe_code)]

use std::fmt;

/// A boot slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The unified kernel image's path on the ESP.
    pub fn image_path(self) -> String {
        format!("EFI/edgebox/{}.efi", self.name())
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the entries live on the ESP.
pub const ENTRIES_DIR: &str = "loader/entries";
/// The kernel parameter that tells the booted system its slot.
pub const SLOT_PARAM: &str = "edgebox.slot";

/// Boot counting, from the entry's file name (`+LEFT[-DONE]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Tries {
    pub left: u32,
    pub done: u32,
}

/// One slot's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub slot: Slot,
    /// The file name in [`ENTRIES_DIR`].
    pub file: String,
    /// `None`: blessed (or never counted).
    pub tries: Option<Tries>,
    /// The update generation (the entry's `version`, the boot order).
    pub generation: u64,
    /// The edgebox image version it boots.
    pub version: String,
}

/// What a slot is, for the API and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No entry: never installed, or an install that did not finish.
    Empty,
    /// Blessed: booted and found healthy.
    Good,
    /// Installed, waiting for its trial boot.
    Pending,
    /// Booted on trial and not (yet) blessed; running now.
    Trial,
    /// Booted on trial and never blessed; the loader skips it.
    Failed,
}

/// `edgebox-b+1-2.conf` → slot b, 1 try left, 2 done.
pub fn parse_file_name(name: &str) -> Option<(Slot, Option<Tries>)> {
    let stem = name.strip_prefix("edgebox-")?.strip_suffix(".conf")?;
    let (slot, counter) = match stem.split_once('+') {
        Some((s, c)) => (s, Some(c)),
        None => (stem, None),
    };
    let slot = Slot::parse(slot)?;
    let tries = match counter {
        None => None,
        Some(c) => {
            let (left, done) = c.split_once('-').unwrap_or((c, "0"));
            Some(Tries {
                left: left.parse().ok()?,
                done: done.parse().ok()?,
            })
        }
    };
    Some((slot, tries))
}

/// The file name of a freshly installed entry, with `tries` boots to
/// prove itself.
pub fn trial_file_name(slot: Slot, tries: u32) -> String {
    format!("edgebox-{slot}+{tries}.conf")
}

/// The file name of a blessed entry.
pub fn good_file_name(slot: Slot) -> String {
    format!("edgebox-{slot}.conf")
}

/// The entry's text. `options` is the kernel command line without
/// `edgebox.slot=`, which is added.
pub fn entry_text(slot: Slot, generation: u64, version: &str, options: &str) -> String {
    let options: Vec<String> = crate::init::cmdline::words(options)
        .into_iter()
        .filter(|w| !w.starts_with(&format!("{SLOT_PARAM}=")))
        .collect();
    format!(
        "# edgebox-version {version}\n\
         title edgebox {version} (slot {slot})\n\
         sort-key edgebox\n\
         version {generation}\n\
         efi /{image}\n\
         options {options} {SLOT_PARAM}={slot}\n",
        image = slot.image_path(),
        options = options.join(" "),
    )
}

/// Reads an entry's generation and image version; `None` if it is not one
/// edgebox wrote.
pub fn parse_entry(name: &str, text: &str) -> Option<Entry> {
    let (slot, tries) = parse_file_name(name)?;
    let mut generation = None;
    let mut version = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("# edgebox-version ") {
            version = Some(v.trim().to_owned());
        } else if let Some(g) = line.strip_prefix("version ") {
            generation = g.trim().parse().ok();
        }
    }
    Some(Entry {
        slot,
        file: name.to_owned(),
        tries,
        generation: generation?,
        version: version?,
    })
}

/// The ESP's entries, and which slot is running.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slots {
    entries: Vec<Entry>,
}

impl Slots {
    /// From the entries directory's files: (name, text). Files that are not
    /// edgebox entries are ignored; of two entries for one slot (an
    /// interrupted rename) the one with the higher generation counts.
    pub fn new(files: &[(String, String)]) -> Slots {
        let mut entries: Vec<Entry> = Vec::new();
        for (name, text) in files {
            let Some(e) = parse_entry(name, text) else {
                continue;
            };
            match entries.iter_mut().find(|x| x.slot == e.slot) {
                Some(x) if x.generation >= e.generation => {}
                Some(x) => *x = e,
                None => entries.push(e),
            }
        }
        Slots { entries }
    }

    pub fn entry(&self, slot: Slot) -> Option<&Entry> {
        self.entries.iter().find(|e| e.slot == slot)
    }

    /// What `slot` is, given the slot that is running.
    pub fn state(&self, slot: Slot, running: Option<Slot>) -> State {
        match self.entry(slot) {
            None => State::Empty,
            Some(e) => match e.tries {
                None => State::Good,
                Some(_) if running == Some(slot) => State::Trial,
                Some(t) if t.left == 0 => State::Failed,
                Some(_) => State::Pending,
            },
        }
    }

    /// The slot systemd-boot will boot: entries with tries left (or
    /// blessed) first, then the highest generation.
    pub fn next_boot(&self) -> Option<Slot> {
        self.entries
            .iter()
            .max_by_key(|e| (e.tries.is_none_or(|t| t.left > 0), e.generation))
            .map(|e| e.slot)
    }

    /// The highest generation installed.
    pub fn generation(&self) -> u64 {
        self.entries.iter().map(|e| e.generation).max().unwrap_or(0)
    }

    /// Where an update goes while `running` runs: the other slot. Refused
    /// while the running slot is itself on trial (bless or roll it back
    /// first), so the appliance always keeps one slot known to be good.
    pub fn install_target(&self, running: Slot) -> Result<(Slot, u64), String> {
        if self.state(running, Some(running)) == State::Trial {
            return Err(format!(
                "slot {running} is running on trial and not yet found healthy; an update now would leave no good slot to fall back to"
            ));
        }
        Ok((running.other(), self.generation() + 1))
    }

    /// The rename that blesses the running slot, if it is on trial.
    pub fn bless(&self, running: Slot) -> Option<(String, String)> {
        let e = self.entry(running)?;
        e.tries?;
        Some((e.file.clone(), good_file_name(running)))
    }

    /// An update that was tried and failed: the other slot, newer than the
    /// running one and out of tries.
    pub fn failed_update(&self, running: Slot) -> Option<&Entry> {
        let ours = self.entry(running)?.generation;
        self.entry(running.other())
            .filter(|e| e.generation > ours && e.tries.is_some_and(|t| t.left == 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, u64, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(name, gen, ver)| {
                let (slot, _) = parse_file_name(name).unwrap();
                (
                    (*name).to_owned(),
                    entry_text(slot, *gen, ver, "console=ttyS0 edgebox.slot=z"),
                )
            })
            .collect()
    }

    #[test]
    fn file_names_carry_the_slot_and_the_counter() {
        assert_eq!(parse_file_name("edgebox-a.conf"), Some((Slot::A, None)));
        assert_eq!(
            parse_file_name("edgebox-b+1.conf"),
            Some((Slot::B, Some(Tries { left: 1, done: 0 })))
        );
        assert_eq!(
            parse_file_name("edgebox-b+0-1.conf"),
            Some((Slot::B, Some(Tries { left: 0, done: 1 })))
        );
        for bad in [
            "edgebox-c.conf",
            "edgebox-a+x.conf",
            "other.conf",
            "edgebox-a.efi",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
        assert_eq!(trial_file_name(Slot::B, 1), "edgebox-b+1.conf");
    }

    #[test]
    fn the_entry_carries_generation_version_and_exactly_one_slot_parameter() {
        let t = entry_text(Slot::B, 7, "1.2.3", "console=ttyS0 edgebox.slot=a quiet");
        assert!(t.contains("\nversion 7\n"), "{t}");
        assert!(t.contains("efi /EFI/edgebox/b.efi\n"), "{t}");
        assert!(
            t.ends_with("options console=ttyS0 quiet edgebox.slot=b\n"),
            "{t}"
        );
        let e = parse_entry("edgebox-b+1.conf", &t).unwrap();
        assert_eq!((e.generation, e.version.as_str()), (7, "1.2.3"));
        assert_eq!(parse_entry("edgebox-b.conf", "title x\n"), None);
    }

    #[test]
    fn an_update_goes_to_the_other_slot_and_boots_next() {
        let s = Slots::new(&files(&[("edgebox-a.conf", 1, "1.0")]));
        assert_eq!(s.state(Slot::B, Some(Slot::A)), State::Empty);
        assert_eq!(s.install_target(Slot::A), Ok((Slot::B, 2)));
        // Installed for a trial: it boots next.
        let s = Slots::new(&files(&[
            ("edgebox-a.conf", 1, "1.0"),
            ("edgebox-b+1.conf", 2, "2.0"),
        ]));
        assert_eq!(s.state(Slot::B, Some(Slot::A)), State::Pending);
        assert_eq!(s.next_boot(), Some(Slot::B));
        // The loader used its try; it is running on trial and can bless.
        let s = Slots::new(&files(&[
            ("edgebox-a.conf", 1, "1.0"),
            ("edgebox-b+0-1.conf", 2, "2.0"),
        ]));
        assert_eq!(s.state(Slot::B, Some(Slot::B)), State::Trial);
        assert!(s.install_target(Slot::B).unwrap_err().contains("on trial"));
        assert_eq!(
            s.bless(Slot::B),
            Some(("edgebox-b+0-1.conf".into(), "edgebox-b.conf".into()))
        );
        // Blessed: the next update goes back to a, generation 3.
        let s = Slots::new(&files(&[
            ("edgebox-a.conf", 1, "1.0"),
            ("edgebox-b.conf", 2, "2.0"),
        ]));
        assert_eq!(s.bless(Slot::B), None);
        assert_eq!(s.next_boot(), Some(Slot::B));
        assert_eq!(s.install_target(Slot::B), Ok((Slot::A, 3)));
    }

    #[test]
    fn a_trial_that_never_blessed_itself_is_skipped_and_reported() {
        let s = Slots::new(&files(&[
            ("edgebox-a.conf", 1, "1.0"),
            ("edgebox-b+0-1.conf", 2, "2.0"),
        ]));
        // Rebooted without blessing: the loader boots a.
        assert_eq!(s.next_boot(), Some(Slot::A));
        assert_eq!(s.state(Slot::B, Some(Slot::A)), State::Failed);
        let failed = s.failed_update(Slot::A).unwrap();
        assert_eq!((failed.slot, failed.version.as_str()), (Slot::B, "2.0"));
        // Which a later update overwrites.
        assert_eq!(s.install_target(Slot::A), Ok((Slot::B, 3)));
        // An older failed entry is not news.
        let s = Slots::new(&files(&[
            ("edgebox-a.conf", 3, "3.0"),
            ("edgebox-b+0-1.conf", 2, "2.0"),
        ]));
        assert_eq!(s.failed_update(Slot::A), None);
    }

    #[test]
    fn the_first_image_and_odd_directories() {
        // The image as built: slot a, generation 1, blessed.
        let s = Slots::new(&files(&[("edgebox-a.conf", 1, "1.0")]));
        assert_eq!(s.next_boot(), Some(Slot::A));
        assert_eq!(s.state(Slot::A, Some(Slot::A)), State::Good);
        // A stale entry beside a newer one for the same slot (a rename cut
        // short): the newer counts.
        let s = Slots::new(&files(&[
            ("edgebox-b.conf", 2, "2.0"),
            ("edgebox-b+1.conf", 4, "4.0"),
        ]));
        assert_eq!(s.entry(Slot::B).unwrap().generation, 4);
        let mut f = files(&[("edgebox-a.conf", 1, "1.0")]);
        f.push(("README".into(), "hello".into()));
        assert_eq!(Slots::new(&f).entry(Slot::A).unwrap().version, "1.0");
        assert_eq!(Slots::default().next_boot(), None);
    }
}
