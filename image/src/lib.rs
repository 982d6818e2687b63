//! Building and booting the edgebox appliance image.
//!
//! This crate will become the `edgebox-image` command: `build` fetches a Debian
//! kernel package, assembles an initramfs whose only program is the static
//! `edgebox` binary as `/init`, and writes a reproducible GPT disk image (EFI
//! system partition with a unified kernel image, ext4 data partition); `boot`
//! starts an image in QEMU under OVMF. See `DESIGN.md`, "Appliance image"; the
//! work is tracked by the issue "Bootable appliance image".
//!
//! Done so far, as reproducible building blocks with their tests: the
//! initramfs archive ([`cpio`]) and the partition tables ([`gpt`]). The
//! command itself does not exist yet.
#![forbid(unsafe_code)]

pub mod cpio;
pub mod gpt;
