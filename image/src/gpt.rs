//! GPT partition tables for a raw disk image (UEFI 2.x, 512-byte sectors).
//!
//! Partitions start on 1 MiB boundaries. GUIDs come from a seed, so the same
//! inputs give the same bytes. The primary table is sectors 0–33 (protective
//! MBR, header, 128 entries); the backup is the last 33 sectors.

const SECTOR: u64 = 512;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Sectors taken by the entry array.
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;
const ALIGN: u64 = (1 << 20) / SECTOR;

/// A GUID in its on-disk byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guid([u8; 16]);

impl Guid {
    /// Parses the textual form `C12A7328-F81F-11D2-BA4B-00A0C93EC93B`.
    pub const fn parse(s: &str) -> Guid {
        let b = s.as_bytes();
        let mut raw = [0u8; 16];
        let mut i = 0;
        let mut n = 0;
        while i < b.len() {
            if b[i] != b'-' {
                raw[n / 2] = raw[n / 2] << 4 | hex(b[i]);
                n += 1;
            }
            i += 1;
        }
        // The first three fields are stored little-endian.
        Guid([
            raw[3], raw[2], raw[1], raw[0], raw[5], raw[4], raw[7], raw[6], raw[8], raw[9],
            raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
        ])
    }

    /// A version-4-shaped GUID derived from `seed` (no randomness).
    pub fn derived(seed: &[u8]) -> Guid {
        let h = blake3::hash(seed);
        let mut g = [0u8; 16];
        g.copy_from_slice(&h.as_bytes()[..16]);
        g[7] = (g[7] & 0x0f) | 0x40;
        g[8] = (g[8] & 0x3f) | 0x80;
        Guid(g)
    }

    pub fn bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

/// The textual form, upper case, as [`Guid::parse`] reads it.
impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = &self.0;
        let order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
        for (n, i) in order.into_iter().enumerate() {
            if matches!(n, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{:02X}", g[i])?;
        }
        Ok(())
    }
}

const fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

/// The EFI system partition type.
pub const ESP: Guid = Guid::parse("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
/// Linux filesystem data.
pub const LINUX_DATA: Guid = Guid::parse("0FC63DAF-8483-4772-8E79-3D69D8477DE4");

/// A partition to place.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub type_guid: Guid,
    pub bytes: u64,
}

/// A placed partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub type_guid: Guid,
    pub guid: Guid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
}

impl Partition {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }

    pub fn bytes(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub disk_guid: Guid,
    pub partitions: Vec<Partition>,
    /// Sectors in the disk.
    pub sectors: u64,
}

impl Layout {
    /// Places `specs` in order on 1 MiB boundaries; `seed` names the disk.
    pub fn new(specs: &[Spec], seed: &str) -> Layout {
        let mut next = ALIGN;
        let mut partitions = Vec::new();
        for s in specs {
            let sectors = s.bytes.div_ceil(SECTOR).div_ceil(ALIGN) * ALIGN;
            partitions.push(Partition {
                name: s.name.clone(),
                type_guid: s.type_guid,
                guid: Guid::derived(format!("{seed}/partition/{}", s.name).as_bytes()),
                first_lba: next,
                last_lba: next + sectors - 1,
            });
            next += sectors;
        }
        // Room for the backup table, then round the disk to whole MiB.
        let sectors = (next + 1 + ENTRY_SECTORS).div_ceil(ALIGN) * ALIGN;
        Layout {
            disk_guid: Guid::derived(format!("{seed}/disk").as_bytes()),
            partitions,
            sectors,
        }
    }

    pub fn disk_bytes(&self) -> u64 {
        self.sectors * SECTOR
    }

    fn entries(&self) -> Vec<u8> {
        let mut out = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
        for (i, p) in self.partitions.iter().enumerate() {
            let e = &mut out[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
            e[0..16].copy_from_slice(p.type_guid.bytes());
            e[16..32].copy_from_slice(p.guid.bytes());
            e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            for (j, unit) in p.name.encode_utf16().take(36).enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
            }
        }
        out
    }

    fn header(&self, current: u64, backup: u64, entries_lba: u64, entries_crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + ENTRY_SECTORS).to_le_bytes());
        h[48..56].copy_from_slice(&(self.sectors - 2 - ENTRY_SECTORS).to_le_bytes());
        h[56..72].copy_from_slice(self.disk_guid.bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Sectors 0 to 33: protective MBR, primary header, entries.
    pub fn primary(&self) -> Vec<u8> {
        let entries = self.entries();
        let crc = crc32fast::hash(&entries);
        let mut out = protective_mbr(self.sectors);
        out.extend(self.header(1, self.sectors - 1, 2, crc));
        out.extend(entries);
        out
    }

    /// The last 33 sectors: entries, then the backup header.
    pub fn backup(&self) -> Vec<u8> {
        let entries = self.entries();
        let crc = crc32fast::hash(&entries);
        let last = self.sectors - 1;
        let mut out = entries;
        out.extend(self.header(last, 1, last - ENTRY_SECTORS, crc));
        out
    }

    /// Byte offset of [`Layout::backup`].
    pub fn backup_offset(&self) -> u64 {
        (self.sectors - 1 - ENTRY_SECTORS) * SECTOR
    }
}

fn protective_mbr(sectors: u64) -> Vec<u8> {
    let mut mbr = vec![0u8; SECTOR as usize];
    let p = &mut mbr[446..462];
    p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    p[4] = 0xEE;
    p[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    p[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
    p[12..16].copy_from_slice(&size.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::*;

    fn layout() -> Layout {
        Layout::new(
            &[
                Spec {
                    name: "EFI system".into(),
                    type_guid: ESP,
                    bytes: 64 << 20,
                },
                Spec {
                    name: "edgebox-data".into(),
                    type_guid: LINUX_DATA,
                    bytes: (100 << 20) + 1,
                },
            ],
            "test",
        )
    }

    #[test]
    fn partitions_are_aligned_and_fit() {
        let l = layout();
        assert_eq!(l.partitions[0].first_lba, 2048);
        assert_eq!(l.partitions[0].bytes(), 64 << 20);
        assert_eq!(l.partitions[1].first_lba, 2048 + (64 << 20) / 512);
        assert_eq!(
            l.partitions[1].bytes(),
            101 << 20,
            "rounded up to whole MiB"
        );
        assert!(l.partitions[1].last_lba < l.sectors - 1 - ENTRY_SECTORS);
        assert_eq!(l.disk_bytes() % (1 << 20), 0);
    }

    #[test]
    fn guids_are_stable_and_encoded_mixed_endian() {
        assert_eq!(&ESP.bytes()[..4], &[0x28, 0x73, 0x2A, 0xC1]);
        assert_eq!(
            &ESP.bytes()[8..],
            &[0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B]
        );
        assert_eq!(layout().primary(), layout().primary());
        assert_ne!(Guid::derived(b"a"), Guid::derived(b"b"));
    }

    #[test]
    fn header_crcs_check() {
        let l = layout();
        let p = l.primary();
        let h = &p[512..1024];
        let mut zeroed = h[..92].to_vec();
        zeroed[16..20].fill(0);
        assert_eq!(crc32fast::hash(&zeroed).to_le_bytes(), h[16..20]);
        assert_eq!(
            crc32fast::hash(&p[1024..1024 + 16384]).to_le_bytes(),
            h[88..92]
        );
        assert_eq!(&p[510..512], &[0x55, 0xAA]);
    }

    /// util-linux's sfdisk reads the tables we write as we meant them.
    #[test]
    fn sfdisk_agrees() {
        let l = layout();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let mut f = std::fs::File::create(&path).unwrap();
        f.set_len(l.disk_bytes()).unwrap();
        f.write_all(&l.primary()).unwrap();
        f.seek(SeekFrom::Start(l.backup_offset())).unwrap();
        f.write_all(&l.backup()).unwrap();
        drop(f);
        let run = |args: &[&str]| {
            let out = std::process::Command::new("sfdisk")
                .args(args)
                .arg(&path)
                .output()
                .expect("sfdisk must be installed (scripts/test installs fdisk)");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        };
        let (ok, verify) = run(&["--verify"]);
        assert!(ok && verify.contains("No errors detected"), "{verify}");
        let (ok, dump) = run(&["--dump"]);
        assert!(ok, "{dump}");
        assert!(dump.contains("label: gpt"), "{dump}");
        assert!(
            dump.contains(
                "start=        2048, size=      131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
            ),
            "{dump}"
        );
        assert!(
            dump.contains(
                "start=      133120, size=      206848, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4"
            ),
            "{dump}"
        );
        assert!(dump.contains("name=\"edgebox-data\""), "{dump}");
    }
}
