//! Blobs arriving from a peer, kept as a verified prefix between attempts.
//!
//! ```text
//! <root>/partial/<64 hex>   the verified first groups of a blob on its way
//! ```
//!
//! A [`Partial`] takes the blob's outboard ([`crate::verified`]), checks it
//! against the blob's name, and then takes bytes, checking each group as it
//! completes and appending only checked groups to the file. A transfer that
//! breaks off leaves the file as it was after its last whole group; the next
//! one asks for the rest ([`Blobs::partial_len`]). When the last group is in,
//! the file is fsynced and renamed into the store under its name. A blob of
//! one group or less is held in memory and checked whole.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use crate::blobs::{sync_dir, Blobs, PutError};
use crate::verified::{check_outboard, group_cv, groups, Cv, GROUP};
use crate::Hash;

/// A blob being received; see the module documentation.
#[derive(Debug)]
pub struct Partial {
    hash: Hash,
    total: u64,
    outboard: Vec<Cv>,
    /// The verified prefix (blobs of more than one group).
    file: Option<(File, PathBuf)>,
    /// Verified bytes so far.
    len: u64,
    /// Bytes of the group being received.
    group: Vec<u8>,
    blobs: Blobs,
}

impl Blobs {
    fn partial_dir(&self) -> PathBuf {
        self.root().join("partial")
    }

    fn partial_path(&self, hash: &Hash) -> PathBuf {
        self.partial_dir().join(hash.to_string())
    }

    /// How many verified bytes of `hash` an earlier transfer left (a whole
    /// number of groups): the offset to ask the rest from.
    pub fn partial_len(&self, hash: &Hash) -> u64 {
        fs::metadata(self.partial_path(hash)).map_or(0, |m| m.len() / GROUP * GROUP)
    }

    /// Starts or resumes receiving the blob `hash` of `total` bytes whose
    /// outboard is `outboard` (empty for a blob of one group or less). An
    /// outboard that does not prove `hash` is [`PutError::Corrupt`].
    /// What an earlier transfer left is checked again (the disk may have
    /// damaged it) and kept up to its first bad group.
    pub fn resume(&self, hash: Hash, total: u64, outboard: Vec<Cv>) -> Result<Partial, PutError> {
        let mut p = Partial {
            hash,
            total,
            outboard,
            file: None,
            len: 0,
            group: Vec::new(),
            blobs: self.clone(),
        };
        if groups(total) == 0 {
            if !p.outboard.is_empty() {
                return Err(p.mismatch());
            }
            return Ok(p);
        }
        if !check_outboard(&hash, total, &p.outboard) {
            return Err(p.mismatch());
        }
        fs::create_dir_all(self.partial_dir())?;
        let path = self.partial_path(&hash);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let on_disk = file.metadata()?.len().min(total);
        let mut buf = vec![0u8; GROUP as usize];
        let mut good = 0u64;
        while good < on_disk {
            let want = GROUP.min(total - good);
            if good + want > on_disk {
                break;
            }
            file.read_exact(&mut buf[..want as usize])?;
            if group_cv(good / GROUP, &buf[..want as usize]) != p.outboard[(good / GROUP) as usize]
            {
                break;
            }
            good += want;
        }
        file.set_len(good)?;
        file.seek(SeekFrom::Start(good))?;
        p.len = good;
        p.file = Some((file, path));
        Ok(p)
    }
}

impl Partial {
    fn mismatch(&self) -> PutError {
        PutError::Corrupt(self.hash)
    }

    /// Verified bytes so far: where the sender must start.
    pub fn offset(&self) -> u64 {
        self.len
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether every byte is in.
    pub fn is_complete(&self) -> bool {
        self.len + self.group.len() as u64 == self.total
    }

    /// Takes the next bytes. A group that does not match its chaining value
    /// is [`PutError::Corrupt`]; the groups before it stay.
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), PutError> {
        if self.len + self.group.len() as u64 + data.len() as u64 > self.total {
            return Err(self.mismatch());
        }
        let Some((file, _)) = &mut self.file else {
            self.group.extend_from_slice(data);
            return Ok(());
        };
        while !data.is_empty() {
            let want = GROUP.min(self.total - self.len) as usize;
            let take = (want - self.group.len()).min(data.len());
            self.group.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.group.len() == want {
                let index = self.len / GROUP;
                if group_cv(index, &self.group) != self.outboard[index as usize] {
                    self.group.clear();
                    return Err(PutError::Corrupt(self.hash));
                }
                file.write_all(&self.group)?;
                self.len += want as u64;
                self.group.clear();
            }
        }
        Ok(())
    }

    /// Makes the whole, verified blob durable under its name.
    pub fn finish(mut self) -> Result<(), PutError> {
        if !self.is_complete() {
            return Err(PutError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "blob {} has {} of {} bytes",
                    self.hash,
                    self.len + self.group.len() as u64,
                    self.total
                ),
            )));
        }
        let Some((file, path)) = self.file.take() else {
            // One group or less: checked whole, written like an upload.
            let mut w = self.blobs.writer()?;
            w.write(&self.group)?;
            return w.finish(Some(self.hash)).map(|_| ());
        };
        file.sync_all()?;
        drop(file);
        let target = self.blobs.path(&self.hash);
        let dir = target.parent().unwrap_or(self.blobs.root()).to_owned();
        fs::create_dir_all(&dir)?;
        fs::rename(&path, &target)?;
        sync_dir(&dir)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verified::outboard;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    #[test]
    fn a_broken_transfer_resumes_from_its_last_verified_group() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let bytes = data(5 * GROUP as usize + 123);
        let hash = Hash::of(&bytes);
        let total = bytes.len() as u64;
        let ob = outboard(&bytes[..], total).unwrap();
        // First attempt: two and a half groups, then the link breaks.
        let mut p = blobs.resume(hash, total, ob.clone()).unwrap();
        let cut = 2 * GROUP as usize + GROUP as usize / 2;
        p.write(&bytes[..cut]).unwrap();
        drop(p);
        assert_eq!(blobs.partial_len(&hash), 2 * GROUP, "whole groups only");
        // Second attempt (after a restart, say) from there.
        let mut p = blobs.resume(hash, total, ob).unwrap();
        assert_eq!(p.offset(), 2 * GROUP);
        p.write(&bytes[p.offset() as usize..]).unwrap();
        p.finish().unwrap();
        assert_eq!(blobs.read_verified(&hash).unwrap(), bytes);
        assert_eq!(blobs.partial_len(&hash), 0);
    }

    #[test]
    fn a_bad_group_or_outboard_is_refused_and_the_good_prefix_kept() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let bytes = data(4 * GROUP as usize);
        let hash = Hash::of(&bytes);
        let total = bytes.len() as u64;
        let ob = outboard(&bytes[..], total).unwrap();
        let mut wrong = ob.clone();
        wrong[1][5] ^= 1;
        assert!(matches!(
            blobs.resume(hash, total, wrong),
            Err(PutError::Corrupt(_))
        ));
        let mut p = blobs.resume(hash, total, ob.clone()).unwrap();
        let mut damaged = bytes.clone();
        damaged[2 * GROUP as usize + 9] ^= 0x40;
        assert!(matches!(p.write(&damaged), Err(PutError::Corrupt(_))));
        drop(p);
        assert_eq!(blobs.partial_len(&hash), 2 * GROUP);
        // The disk damages the kept prefix: resuming checks it again.
        let path = blobs.partial_path(&hash);
        let mut kept = fs::read(&path).unwrap();
        kept[GROUP as usize + 1] ^= 1;
        fs::write(&path, kept).unwrap();
        let p = blobs.resume(hash, total, ob).unwrap();
        assert_eq!(p.offset(), GROUP, "kept up to the damaged group");
        assert!(!blobs.contains(&hash));
    }

    #[test]
    fn a_small_blob_is_checked_whole() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let hash = Hash::of(b"small");
        let mut p = blobs.resume(hash, 5, Vec::new()).unwrap();
        p.write(b"smalL").unwrap();
        assert!(matches!(p.finish(), Err(PutError::Mismatch { .. })));
        let mut p = blobs.resume(hash, 5, Vec::new()).unwrap();
        assert!(p.write(b"small!").is_err(), "more than announced");
        let mut p = blobs.resume(hash, 5, Vec::new()).unwrap();
        p.write(b"small").unwrap();
        p.finish().unwrap();
        assert!(blobs.contains(&hash));
    }
}
