//! The EFI system partition: found by its GPT name, mounted (vfat) under
//! /run only while it is read or written, and written so that a power cut
//! at any point leaves the loader a slot that boots: the new image goes to a
//! temporary file, is synced and renamed, and only then is its boot entry
//! written (also through a synced temporary file); the entry it replaces is
//! removed first.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

use super::slots::{self, Slot, Slots, ENTRIES_DIR};
use super::ESP_PARTITION;

/// Where the ESP is mounted while in use.
const MOUNT_POINT: &str = "/run/edgebox/esp";

/// The mounted ESP; unmounted when dropped.
#[derive(Debug)]
pub struct Esp {
    root: PathBuf,
    mounted: bool,
}

impl Esp {
    /// Mounts the partition named `edgebox-esp`.
    pub fn mount() -> io::Result<Esp> {
        let dev = crate::init::partition(ESP_PARTITION).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no partition named {ESP_PARTITION}: this system has no boot slots"),
            )
        })?;
        let root = PathBuf::from(MOUNT_POINT);
        std::fs::create_dir_all(&root)?;
        rustix::mount::mount(
            &dev,
            &root,
            "vfat",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            // Named, not left to the kernel's defaults: these two are the
            // modules the image carries.
            Some(c"codepage=437,iocharset=ascii"),
        )
        .map_err(|e| io::Error::other(format!("mount {} (vfat): {e}", dev.display())))?;
        Ok(Esp {
            root,
            mounted: true,
        })
    }

    /// An ESP tree in a plain directory (tests).
    pub fn at(root: &Path) -> Esp {
        Esp {
            root: root.to_owned(),
            mounted: false,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The boot entries' names and texts.
    pub fn entries(&self) -> io::Result<Vec<(String, String)>> {
        let dir = self.root.join(ENTRIES_DIR);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if slots::parse_file_name(&name).is_some() {
                out.push((name, std::fs::read_to_string(e.path())?));
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn slots(&self) -> io::Result<Slots> {
        Ok(Slots::new(&self.entries()?))
    }

    /// Starts writing `slot`: its entry goes first, so the loader never
    /// starts a half-written image.
    pub fn begin(&self, slot: Slot) -> io::Result<Writing> {
        let entries = self.root.join(ENTRIES_DIR);
        for (name, _) in self.entries()? {
            if slots::parse_file_name(&name).is_some_and(|(s, _)| s == slot) {
                std::fs::remove_file(entries.join(&name))?;
            }
        }
        sync_dir(&entries)?;
        let image = self.root.join(slot.image_path());
        let tmp = image.with_extension("efi.new");
        std::fs::create_dir_all(image.parent().unwrap_or(&self.root))?;
        let file = File::create(&tmp)?;
        Ok(Writing {
            slot,
            file,
            tmp,
            image,
            entries,
        })
    }

    /// Renames the running slot's entry to its blessed name.
    pub fn bless(&self, from: &str, to: &str) -> io::Result<()> {
        let dir = self.root.join(ENTRIES_DIR);
        std::fs::rename(dir.join(from), dir.join(to))?;
        sync_dir(&dir)
    }
}

impl Drop for Esp {
    fn drop(&mut self) {
        if self.mounted {
            rustix::fs::sync();
            if let Err(e) = rustix::mount::unmount(&self.root, UnmountFlags::empty()) {
                tracing::warn!("unmount {}: {e}", self.root.display());
            }
        }
    }
}

/// A slot being written.
#[derive(Debug)]
pub struct Writing {
    slot: Slot,
    file: File,
    tmp: PathBuf,
    image: PathBuf,
    entries: PathBuf,
}

impl Writing {
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)
    }

    /// Makes the slot bootable, on trial: the image synced and renamed,
    /// then its entry `edgebox-<slot>+1.conf`.
    pub fn commit(self, entry: &str) -> io::Result<()> {
        self.file.sync_all()?;
        drop(self.file);
        std::fs::rename(&self.tmp, &self.image)?;
        sync_dir(self.image.parent().unwrap_or(&self.entries))?;
        let name = slots::trial_file_name(self.slot, 1);
        let tmp = self.entries.join(format!("{name}.new"));
        let mut f = File::create(&tmp)?;
        f.write_all(entry.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.entries.join(&name))?;
        sync_dir(&self.entries)
    }

    /// Gives up: the temporary image goes.
    pub fn abort(self) {
        drop(self.file);
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_install_replaces_the_slot_entry_first_and_commits_image_then_entry() {
        let dir = tempfile::tempdir().unwrap();
        let esp = Esp::at(dir.path());
        let entries = dir.path().join(ENTRIES_DIR);
        std::fs::create_dir_all(&entries).unwrap();
        std::fs::write(
            entries.join("edgebox-a.conf"),
            slots::entry_text(Slot::A, 1, "1.0", ""),
        )
        .unwrap();
        std::fs::write(
            entries.join("edgebox-b+0-1.conf"),
            slots::entry_text(Slot::B, 2, "2.0", ""),
        )
        .unwrap();
        let (slot, generation) = esp.slots().unwrap().install_target(Slot::A).unwrap();
        assert_eq!((slot, generation), (Slot::B, 3));
        let mut w = esp.begin(slot).unwrap();
        // The old b entry is gone before a byte of the new image is written.
        assert_eq!(esp.slots().unwrap().entry(Slot::B), None);
        w.write(b"new image").unwrap();
        assert!(!dir.path().join("EFI/edgebox/b.efi").exists());
        w.commit(&slots::entry_text(Slot::B, 3, "3.0", "x"))
            .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("EFI/edgebox/b.efi")).unwrap(),
            b"new image"
        );
        let s = esp.slots().unwrap();
        assert_eq!(s.state(Slot::B, Some(Slot::A)), slots::State::Pending);
        assert_eq!(s.next_boot(), Some(Slot::B));
        // Blessing renames a trial entry to its good name.
        let (from, to) = esp.slots().unwrap().bless(Slot::B).unwrap();
        esp.bless(&from, &to).unwrap();
        let s = esp.slots().unwrap();
        assert_eq!(s.entry(Slot::B).unwrap().file, "edgebox-b.conf");
        assert_eq!(s.state(Slot::B, Some(Slot::B)), slots::State::Good);
        // An aborted install leaves no image and no entry.
        let w = esp.begin(Slot::B).unwrap();
        w.abort();
        assert!(!dir.path().join("EFI/edgebox/b.efi.new").exists());
        assert_eq!(esp.slots().unwrap().next_boot(), Some(Slot::A));
    }
}
