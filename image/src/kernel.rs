//! The kernel: a Debian `linux-image-*` package, fetched once with
//! `apt-get download` and unpacked into the cache, and the modules the
//! appliance needs from it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use edgebox::init::modules::Deps;

use crate::tools::{self, APT_CACHE, APT_GET, DEPMOD, DPKG_DEB};

/// Which kernel to put in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// Debian's `cloud` flavour: small, for VMs (virtio devices).
    Cloud,
    /// Debian's generic flavour: every driver, for hardware.
    Generic,
    /// A `linux-image-*.deb` already on disk.
    Deb(PathBuf),
}

impl std::str::FromStr for KernelSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cloud" => Ok(Self::Cloud),
            "generic" => Ok(Self::Generic),
            path if path.ends_with(".deb") => Ok(Self::Deb(PathBuf::from(path))),
            other => Err(format!(
                "{other:?}: expected cloud, generic or the path of a linux-image .deb"
            )),
        }
    }
}

/// Modules every image carries: the virtio devices of a VM, and kernel TLS.
pub const REQUIRED: &[&str] = &["virtio_pci", "virtio_net", "virtio_blk", "tls"];

/// Modules carried when the kernel has them: entropy for VMs, and the disks
/// and NICs of common server hardware (the cloud flavour lacks most).
pub const OPTIONAL: &[&str] = &[
    // the data partition's file system: built in to the cloud kernel, a
    // module (with its checksum driver) in the generic one
    "ext4",
    "crc32c_intel",
    // the EFI system partition, written by updates (boot slots)
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "virtio_rng",
    // disks
    "nvme",
    "ahci",
    "sd_mod",
    // NICs
    "e1000",
    "e1000e",
    "igb",
    "igc",
    "ixgbe",
    "i40e",
    "ice",
    "bnxt_en",
    "tg3",
    "mlx5_core",
    "r8169",
    "vmxnet3",
    "ena",
];

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>` of the unpacked package.
    pub modules: PathBuf,
    /// The package file, an input of the image.
    pub deb: PathBuf,
}

/// The package the source names, downloaded into `cache` when not there yet,
/// and unpacked (once) beside it. Builds running at once take turns (a lock
/// file in the cache), so none sees another's half-unpacked tree.
pub fn fetch(source: &KernelSource, cache: &Path) -> Result<Kernel> {
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let lock = std::fs::File::create(cache.join(".lock"))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
    let deb = match source {
        KernelSource::Deb(path) => path
            .canonicalize()
            .with_context(|| format!("kernel package {}", path.display()))?,
        KernelSource::Cloud => download(&resolve("linux-image-cloud-amd64")?, cache)?,
        KernelSource::Generic => download(&resolve("linux-image-amd64")?, cache)?,
    };
    unpack(&deb, cache)
}

/// The versioned package a meta package (`linux-image-cloud-amd64`) names.
fn resolve(meta: &str) -> Result<String> {
    tools::require(&[APT_CACHE], &[])?;
    let out = tools::run(tools::command(APT_CACHE).args(["depends", meta]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    depends_on_image(&text).with_context(|| {
        format!("apt-cache does not know which kernel {meta} is; run `apt-get update` first")
    })
}

/// The first `Depends: linux-image-…` of `apt-cache depends` output.
fn depends_on_image(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_owned)
}

fn download(package: &str, cache: &Path) -> Result<PathBuf> {
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    if let Some(found) = find_deb(&debs, package)? {
        return Ok(found);
    }
    tools::require(&[APT_GET], &[])?;
    eprintln!("edgebox-image: downloading {package}");
    tools::run(
        tools::command(APT_GET)
            .args(["download", "-q", package])
            .current_dir(&debs),
    )?;
    find_deb(&debs, package)?
        .with_context(|| format!("apt-get download {package} left no {package}_*.deb"))
}

fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            found.push(dir.join(name));
        }
    }
    found.sort();
    Ok(found.pop())
}

fn unpack(deb: &Path, cache: &Path) -> Result<Kernel> {
    let stem = deb
        .file_stem()
        .context("kernel package has no file name")?
        .to_string_lossy()
        .into_owned();
    let root = cache.join("unpacked").join(&stem);
    if !root.is_dir() {
        tools::require(&[DPKG_DEB], &[])?;
        let partial = cache.join("unpacked").join(format!("{stem}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        tools::run(tools::command(DPKG_DEB).arg("-x").arg(deb).arg(&partial))?;
        // The package has no depmod data; make it before the tree is used.
        let version = only_version(&partial.join("lib/modules"), deb)?;
        tools::run(tools::command(DEPMOD).arg("-b").arg(&partial).arg(&version))?;
        std::fs::rename(&partial, &root)?;
    }
    let lib = root.join("lib/modules");
    let version = only_version(&lib, deb)?;
    let vmlinuz = root.join(format!("boot/vmlinuz-{version}"));
    if !vmlinuz.is_file() {
        bail!("{}: has no boot/vmlinuz-{version}", deb.display());
    }
    Ok(Kernel {
        modules: lib.join(&version),
        version,
        vmlinuz,
        deb: deb.to_owned(),
    })
}

/// The one kernel version under an unpacked `lib/modules`.
fn only_version(lib: &Path, deb: &Path) -> Result<String> {
    let mut versions: Vec<String> = std::fs::read_dir(lib)
        .with_context(|| format!("{}: not a kernel package (no lib/modules)", deb.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match versions.len() {
        1 => Ok(versions.remove(0)),
        n => bail!(
            "{}: expected one kernel in lib/modules, found {n}",
            deb.display()
        ),
    }
}

/// The module files to carry (paths relative to `lib/modules/<version>`,
/// dependencies included), and the optional modules this kernel lacks (built
/// in ones, listed in `modules.builtin`, are not lacking).
pub fn select(
    deps: &Deps,
    builtin: &str,
    required: &[&str],
    optional: &[&str],
) -> Result<(Vec<String>, Vec<String>)> {
    let builtin: Vec<String> = builtin
        .lines()
        .map(edgebox::init::modules::module_name)
        .collect();
    let (present, absent): (Vec<&str>, Vec<&str>) = optional
        .iter()
        .copied()
        .filter(|m| !builtin.iter().any(|b| b == m))
        .partition(|m| deps.has(m));
    let wanted: Vec<&str> = required.iter().copied().chain(present).collect();
    let mut files = deps
        .load_order(&wanted)
        .context("the kernel package lacks a module edgebox needs")?;
    files.sort();
    Ok((files, absent.into_iter().map(str::to_owned).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_versioned_package_is_read_from_apt_cache() {
        let text = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            depends_on_image(text).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(depends_on_image("linux-image-amd64\n"), None);
    }

    #[test]
    fn selection_takes_dependencies_and_skips_absent_optional_modules() {
        let deps = Deps::parse(
            "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
             kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
             kernel/net/core/failover.ko:\n\
             kernel/net/tls/tls.ko:\n",
        );
        let builtin = "kernel/fs/ext4/ext4.ko
";
        let (files, absent) = select(
            &deps,
            builtin,
            &["virtio_net", "tls"],
            &["tls", "e1000e", "ext4"],
        )
        .unwrap();
        assert_eq!(
            files,
            [
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko",
                "kernel/net/core/failover.ko",
                "kernel/net/tls/tls.ko"
            ]
        );
        assert_eq!(absent, ["e1000e"]);
        let missing = select(&deps, "", &["virtio_blk"], &[]).unwrap_err();
        assert!(format!("{missing:#}").contains("virtio_blk"), "{missing:#}");
    }

    #[test]
    fn kernel_source_parses() {
        assert_eq!("cloud".parse(), Ok(KernelSource::Cloud));
        assert_eq!(
            "x/linux-image-6.1.deb".parse(),
            Ok(KernelSource::Deb("x/linux-image-6.1.deb".into()))
        );
        assert!("bsd".parse::<KernelSource>().is_err());
    }
}
