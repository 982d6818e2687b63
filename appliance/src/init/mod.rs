//! edgebox as PID 1 on the appliance: what the kernel hands over to `/init`.
//!
//! The pure parts are here and tested: which modules the devices' modaliases
//! ask for and in what order to load them ([`modules`]), and the appliance's
//! settings on the kernel command line ([`cmdline`]). The PID 1 duties that use
//! them (mounting /proc, /sys, /dev and /run, loading modules, bringing up
//! interfaces, mounting the data partition, reaping, powering off) are not
//! written yet; the issue "Bootable appliance image" tracks them.
#![forbid(unsafe_code)]

pub mod cmdline;
pub mod modules;
