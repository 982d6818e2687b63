//! The two file systems of the image, made without mounting anything (no
//! root needed) and reproducibly: fixed volume IDs, UUIDs, hash seeds and
//! timestamps.

use std::path::Path;

use anyhow::Result;

use crate::tools::{self, MCOPY, MKFS_EXT4, MKFS_FAT, MMD};

/// Every timestamp in the image: 2024-01-01T00:00:00Z (FAT cannot store
/// dates before 1980).
pub const EPOCH: u64 = 1_704_067_200;

/// A FAT32 EFI system partition of `bytes` holding `files` (destination path
/// inside the partition, source file).
pub fn fat32(out: &Path, bytes: u64, label: &str, files: &[(&str, &Path)]) -> Result<()> {
    let _ = std::fs::remove_file(out);
    tools::run(
        tools::command(MKFS_FAT)
            .args([
                "-F",
                "32",
                "-S",
                "512",
                "-s",
                "1",
                "--invariant",
                "-n",
                label,
                "-C",
            ])
            .arg(out)
            .arg((bytes / 1024).to_string()),
    )?;
    let image = format!("{}", out.display());
    let mut dirs: Vec<String> = Vec::new();
    for (dest, _) in files {
        let mut at = String::new();
        for part in dest
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, d)| d)
        {
            at.push('/');
            at.push_str(part);
            if !dirs.contains(&at) {
                dirs.push(at.clone());
            }
        }
    }
    for dir in &dirs {
        tools::run(
            tools::command(MMD)
                .args(["-i", &image])
                .arg(format!("::{dir}"))
                .env("SOURCE_DATE_EPOCH", EPOCH.to_string()),
        )?;
    }
    for (dest, src) in files {
        tools::run(
            tools::command(MCOPY)
                .args(["-i", &image])
                .arg(src)
                .arg(format!("::/{dest}"))
                .env("SOURCE_DATE_EPOCH", EPOCH.to_string()),
        )?;
    }
    Ok(())
}

/// An empty ext4 file system of `bytes`, whose UUID and directory hash seed
/// are `uuid` and whose every time is [`EPOCH`]. (Empty: mke2fs 1.47.0 stamps
/// the real time on inodes it populates with `-d`.)
pub fn ext4(out: &Path, bytes: u64, label: &str, uuid: &str) -> Result<()> {
    let _ = std::fs::remove_file(out);
    tools::run(
        tools::command(MKFS_EXT4)
            .args([
                "-q", "-F", "-t", "ext4", "-b", "4096", "-L", label, "-U", uuid,
            ])
            .arg("-E")
            .arg(format!(
                "hash_seed={uuid},root_owner=0:0,nodiscard,lazy_itable_init=0"
            ))
            .arg(out)
            .arg(format!("{}k", bytes / 1024))
            .env("E2FSPROGS_FAKE_TIME", EPOCH.to_string()),
    )?;
    Ok(())
}
