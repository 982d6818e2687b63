//! Puts the partition images and the GPT tables together into one raw disk
//! image, sparse where the partitions hold zeros.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::gpt::Layout;

const BLOCK: usize = 64 * 1024;

/// Writes `out` with `layout`'s tables and `contents[i]` in partition `i`.
pub fn assemble(out: &Path, layout: &Layout, contents: &[&Path]) -> Result<()> {
    if contents.len() != layout.partitions.len() {
        bail!(
            "{} partition images for {} partitions",
            contents.len(),
            layout.partitions.len()
        );
    }
    let _ = std::fs::remove_file(out);
    let mut disk = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    disk.set_len(layout.disk_bytes())?;
    disk.write_all(&layout.primary())?;
    for (part, path) in layout.partitions.iter().zip(contents) {
        let mut src = File::open(path).with_context(|| format!("{}", path.display()))?;
        let len = src.metadata()?.len();
        if len > part.bytes() {
            bail!(
                "{}: {len} bytes do not fit partition {} ({} bytes)",
                path.display(),
                part.name,
                part.bytes()
            );
        }
        copy_sparse(&mut src, &mut disk, part.offset())
            .with_context(|| format!("copying {} into {}", path.display(), out.display()))?;
    }
    disk.seek(SeekFrom::Start(layout.backup_offset()))?;
    disk.write_all(&layout.backup())?;
    disk.sync_all()?;
    Ok(())
}

/// Copies `src` to `dst` at `offset`, leaving all-zero blocks as holes (the
/// destination was extended with `set_len`, so they read as zeros).
fn copy_sparse(src: &mut File, dst: &mut File, offset: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; BLOCK];
    let mut at = offset;
    loop {
        let n = read_full(src, &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(at))?;
            dst.write_all(&buf[..n])?;
        }
        at += n as u64;
    }
}

fn read_full(src: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt::{Spec, LINUX_DATA};

    #[test]
    fn partitions_land_at_their_offsets_and_zeros_stay_holes() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("p");
        let mut content = vec![0u8; 3 * BLOCK];
        content[10] = 1;
        content[3 * BLOCK - 1] = 2;
        std::fs::write(&part, &content).unwrap();
        let layout = Layout::new(
            &[Spec {
                name: "data".into(),
                type_guid: LINUX_DATA,
                bytes: 1 << 20,
            }],
            "t",
        );
        let out = dir.path().join("disk.img");
        assemble(&out, &layout, &[&part]).unwrap();
        let disk = std::fs::read(&out).unwrap();
        assert_eq!(disk.len() as u64, layout.disk_bytes());
        let at = layout.partitions[0].offset() as usize;
        assert_eq!(&disk[at..at + content.len()], &content[..]);
        assert_eq!(&disk[..layout.primary().len()], &layout.primary()[..]);
        let backup = layout.backup_offset() as usize;
        assert_eq!(
            &disk[backup..backup + layout.backup().len()],
            &layout.backup()[..]
        );
        // The middle, all-zero block was not written: the file has holes.
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
        assert!(
            allocated < layout.disk_bytes(),
            "{allocated} bytes allocated"
        );

        let too_big = dir.path().join("big");
        std::fs::write(&too_big, vec![1u8; 2 << 20]).unwrap();
        let err = assemble(&out, &layout, &[&too_big]).unwrap_err();
        assert!(
            err.to_string().contains("do not fit partition data"),
            "{err}"
        );
    }
}
