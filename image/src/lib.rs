//! Building and booting the edgebox appliance image (not yet implemented).
//!
//! This crate will become the `edgebox-image` command: `build` fetches a Debian
//! kernel package, assembles an initramfs whose only program is the static
//! `edgebox` binary as `/init`, and writes a reproducible GPT disk image (EFI
//! system partition with a unified kernel image, ext4 data partition); `boot`
//! starts an image in QEMU under OVMF. See `DESIGN.md`, "Appliance image"; the
//! work is tracked by the issue "Bootable appliance image".
#![forbid(unsafe_code)]
