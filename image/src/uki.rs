//! The unified kernel image: systemd's EFI stub with the kernel, the
//! initramfs, the command line and an os-release added as PE sections, so
//! that UEFI firmware boots the appliance from one file, `EFI/BOOT/BOOTX64.EFI`.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::tools::{self, OBJCOPY};

/// Byte offsets in a PE32+ file: the COFF `TimeDateStamp`, the optional
/// header's `CheckSum` and `SizeOfImage`.
struct PeOffsets {
    timestamp: usize,
    checksum: usize,
    size_of_image: usize,
}

fn pe_offsets(pe: &[u8]) -> Result<PeOffsets> {
    let at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(pe.get(at..at + 4)?.try_into().ok()?))
    };
    if pe.get(..2) != Some(b"MZ") {
        bail!("not a PE file (no MZ header)");
    }
    let coff = at(0x3c).context("truncated DOS header")? as usize;
    if pe.get(coff..coff + 4) != Some(b"PE\0\0") {
        bail!("not a PE file (no PE signature)");
    }
    let optional = coff + 4 + 20;
    match pe.get(optional..optional + 2) {
        Some([0x0b, 0x02]) => {}
        other => bail!("not PE32+ (optional header magic {other:x?})"),
    }
    if pe.len() < optional + 68 {
        bail!("truncated optional header");
    }
    Ok(PeOffsets {
        timestamp: coff + 8,
        checksum: optional + 64,
        size_of_image: optional + 56,
    })
}

/// The PE checksum: 16-bit one's-complement-style sum of the file with the
/// checksum field taken as zero, plus the file length.
pub fn pe_checksum(pe: &[u8], checksum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, pair) in pe.chunks(2).enumerate() {
        if i * 2 == checksum_at || i * 2 == checksum_at + 2 {
            continue;
        }
        let word = u16::from_le_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum += u64::from(word);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32 & 0xffff).wrapping_add(pe.len() as u32)
}

/// objcopy stamps the build time into the PE header; the image must not
/// depend on it. Sets the stamp to zero (as the stub ships) and fixes the
/// checksum.
pub fn clear_timestamp(pe: &mut [u8]) -> Result<()> {
    let o = pe_offsets(pe)?;
    pe[o.timestamp..o.timestamp + 4].fill(0);
    let sum = pe_checksum(pe, o.checksum);
    pe[o.checksum..o.checksum + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

/// Where the stub's own image ends in memory: `SizeOfImage` of its PE32+
/// optional header.
pub fn pe_image_end(stub: &[u8]) -> Result<u64> {
    let o = pe_offsets(stub).context("the EFI stub")?;
    let b = &stub[o.size_of_image..o.size_of_image + 4];
    Ok(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
}

/// A section to add, and where it goes in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub name: &'static str,
    pub vma: u64,
}

const PAGE: u64 = 4096;
/// The kernel is placed on a 2 MiB boundary, as it prefers to run.
const KERNEL_ALIGN: u64 = 2 << 20;

/// Places the sections after the stub, in order, without overlap.
pub fn place(image_end: u64, sections: &[(&'static str, u64)]) -> Vec<Placement> {
    let mut next = image_end;
    sections
        .iter()
        .map(|&(name, len)| {
            let align = if name == ".linux" { KERNEL_ALIGN } else { PAGE };
            let vma = next.div_ceil(align) * align;
            next = vma + len;
            Placement { name, vma }
        })
        .collect()
}

/// Writes `out`: the stub with `.osrel`, `.cmdline`, `.linux` and `.initrd`.
pub fn assemble(
    stub: &Path,
    os_release: &Path,
    cmdline: &Path,
    kernel: &Path,
    initrd: &Path,
    out: &Path,
) -> Result<()> {
    let stub_bytes = std::fs::read(stub).with_context(|| format!("reading {}", stub.display()))?;
    let files = [
        (".osrel", os_release),
        (".cmdline", cmdline),
        (".linux", kernel),
        (".initrd", initrd),
    ];
    let mut sizes = Vec::new();
    for (name, path) in files {
        let len = std::fs::metadata(path)
            .with_context(|| format!("{}", path.display()))?
            .len();
        sizes.push((name, len));
    }
    let placed = place(pe_image_end(&stub_bytes)?, &sizes);
    let mut cmd = tools::command(OBJCOPY);
    for (p, (_, path)) in placed.iter().zip(files) {
        cmd.arg("--add-section")
            .arg(format!("{}={}", p.name, path.display()))
            .arg("--change-section-vma")
            .arg(format!("{}={:#x}", p.name, p.vma));
    }
    cmd.arg(stub).arg(out);
    tools::run(&mut cmd)?;
    let mut pe = std::fs::read(out)?;
    clear_timestamp(&mut pe).with_context(|| format!("{}", out.display()))?;
    std::fs::write(out, pe)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_follow_the_stub_without_overlap() {
        let placed = place(
            0x19300,
            &[
                (".osrel", 100),
                (".cmdline", 5000),
                (".linux", 8 << 20),
                (".initrd", 1),
            ],
        );
        let vmas: Vec<u64> = placed.iter().map(|p| p.vma).collect();
        assert_eq!(vmas, [0x1a000, 0x1b000, 0x200000, 0xa00000]);
    }

    #[test]
    fn the_image_end_is_read_from_a_pe32_plus_header() {
        let mut pe = vec![0u8; 0x200];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        let optional = 0x80 + 24;
        pe[optional..optional + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        pe[optional + 56..optional + 60].copy_from_slice(&0x19300u32.to_le_bytes());
        assert_eq!(pe_image_end(&pe).unwrap(), 0x19300);
        pe[0x88..0x8c].copy_from_slice(&0x6b02_7309u32.to_le_bytes());
        clear_timestamp(&mut pe).unwrap();
        assert_eq!(&pe[0x88..0x8c], &[0; 4], "no build time");
        let sum = u32::from_le_bytes(pe[optional + 64..optional + 68].try_into().unwrap());
        assert_eq!(sum, pe_checksum(&pe, optional + 64));
        assert_ne!(sum, 0);
        pe[optional] = 0x0b; // PE32, not PE32+
        pe[optional + 1] = 0x01;
        assert!(pe_image_end(&pe).is_err());
        assert!(pe_image_end(b"ELF").is_err());
    }
}
