//! edgebox as PID 1 on the appliance: what the kernel hands over to `/init`.
//!
//! [`run`] mounts /proc, /sys, /dev and /run, loads the kernel modules the
//! devices ask for ([`modules`]), mounts the data partition, configures the
//! interfaces named on the kernel command line ([`cmdline`], [`net`]), then
//! runs `edgebox serve` as its child and supervises it ([`supervise`]):
//! restarting it if it dies, powering off or rebooting when it asks (admin
//! API). See `docs/image.md`.
#![forbid(unsafe_code)]

pub mod cmdline;
pub mod dhcp;
pub mod guarded;
pub mod modules;
pub mod net;
mod pid1;
pub mod supervise;

pub use pid1::run;

/// The GPT name of the data partition (store and config).
pub const DATA_PARTITION: &str = "edgebox-data";
/// Where PID 1 mounts it; `edgebox serve --data` on the appliance.
pub const DATA_DIR: &str = "/data";
/// The first-boot admin token's hash in the initramfs (`edgebox-image build
/// --admin-token`); installed in the data directory when it has none.
pub const FIRST_BOOT_TOKEN: &str = "/etc/edgebox/admin-token.sha256";

/// `/dev/<name>` of the block device whose GPT partition name is `name`
/// (the kernel puts it in `PARTNAME` of the device's uevent).
pub fn partition(name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir("/sys/class/block").ok()?.flatten() {
        let uevent = std::fs::read_to_string(entry.path().join("uevent")).unwrap_or_default();
        let field = |key: &str| {
            uevent
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        if field("PARTNAME").as_deref() == Some(name) {
            return field("DEVNAME").map(|d| std::path::Path::new("/dev").join(d));
        }
    }
    None
}

/// Whether this process is the system's init.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}
