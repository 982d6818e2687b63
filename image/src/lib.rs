//! Building and booting the edgebox appliance image: the `edgebox-image`
//! command.
//!
//! `build` ([`build`]) fetches a Debian kernel package ([`kernel`]), packs the
//! static `edgebox` binary as `/init` with the modules it needs into an
//! initramfs ([`cpio`]), makes a unified kernel image ([`uki`]) on a FAT32 EFI
//! system partition and an ext4 data partition ([`fs`]), and writes them with
//! GPT tables ([`gpt`], [`disk`]) into one raw disk image: the same inputs give
//! the same bytes. `boot` ([`boot`]) starts an image in QEMU under OVMF.
//! See `docs/image.md`.
//!
//! The crate has one `unsafe` block: the hook that asks the kernel to stop
//! QEMU when `edgebox-image boot` ends (`boot::die_with_parent`, allowed
//! there alone); the crate denies it everywhere else.
#![deny(unsafe_code)]

pub mod boot;
pub mod build;
pub mod cpio;
pub mod disk;
pub mod fs;
pub mod gpt;
pub mod kernel;
pub mod testing;
pub mod tools;
pub mod uki;
