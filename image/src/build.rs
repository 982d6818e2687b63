//! `edgebox-image build`: kernel + static edgebox → initramfs → unified
//! kernel image → EFI system partition, plus an ext4 data partition, in a
//! GPT disk image. Every step is reproducible: the same inputs (binary,
//! kernel package, options, host tools) give the same bytes.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aws_lc_rs::signature::Ed25519KeyPair;
use edgebox::init::modules::Deps;

use crate::cpio::Archive;
use crate::gpt::{Guid, Layout, Spec, ESP, LINUX_DATA};
use crate::kernel::{self, KernelSource};
use crate::tools::{self, DEPMOD, DPKG_DEB, MCOPY, MKFS_EXT4, MKFS_FAT, MMD, OBJCOPY, QEMU_IMG};
use crate::{fs, uki};

/// The partition names the appliance looks for (GPT `PARTNAME`).
pub const ESP_NAME: &str = "edgebox-esp";
pub const DATA_NAME: &str = edgebox::init::DATA_PARTITION;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub kernel: KernelSource,
    /// The static `edgebox` binary; `None`: build it with cargo.
    pub binary: Option<PathBuf>,
    pub output: PathBuf,
    pub qcow2: bool,
    pub data_bytes: u64,
    /// `edgebox.net=` values (first-boot network), `IFACE,ADDR/PREFIX[,gw=GW]`.
    pub net: Vec<String>,
    /// First-boot admin token; only its hash goes into the image.
    pub admin_token: Option<String>,
    /// More kernel parameters.
    pub kernel_args: Vec<String>,
    /// Kernel cache and scratch space.
    pub work: PathBuf,
    /// The image's version (`IMAGE_VERSION`); default: edgebox's.
    pub image_version: Option<String>,
    /// An Ed25519 private key (PKCS#8 PEM, as `openssl genpkey -algorithm
    /// ed25519` writes): the update file is signed with it, and the image
    /// trusts its public key for updates.
    pub signing_key: Option<PathBuf>,
    /// Let the appliance install unsigned updates.
    pub allow_unsigned_updates: bool,
}

/// What was built, with the figures worth printing.
#[derive(Debug, Clone)]
pub struct Built {
    pub image: PathBuf,
    /// The update file for appliances running an earlier image.
    pub update: PathBuf,
    pub image_version: String,
    pub qcow2: Option<PathBuf>,
    /// For direct `-kernel/-initrd/-append` boots (tests, debugging).
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub kernel_version: String,
    /// The static edgebox binary it carries.
    pub binary: PathBuf,
    pub binary_bytes: u64,
    pub initrd_bytes: u64,
    pub uki_bytes: u64,
    pub image_bytes: u64,
    /// Bytes the sparse raw image takes on disk.
    pub allocated_bytes: u64,
    pub modules: Vec<String>,
    pub absent_modules: Vec<String>,
}

/// Host tools the build runs.
pub fn check_tools() -> Result<()> {
    tools::require(
        &[DPKG_DEB, DEPMOD, OBJCOPY, MKFS_FAT, MMD, MCOPY, MKFS_EXT4],
        &[tools::EFI_STUB, tools::BOOT_LOADER],
    )
}

/// The kernel command line for these options (validated as the appliance
/// will read it).
pub fn cmdline(opts: &BuildOptions) -> Result<String> {
    // panic=10: a system that dies early reboots, and the boot loader's
    // counting falls back from a slot on trial.
    let mut words: Vec<String> = [
        "console=tty0",
        "console=ttyS0,115200",
        "loglevel=4",
        "panic=10",
    ]
    .map(str::to_owned)
    .to_vec();
    words.extend(opts.net.iter().map(|n| format!("edgebox.net={n}")));
    words.extend(opts.kernel_args.iter().cloned());
    let line = words.join(" ");
    edgebox::init::cmdline::parse(&line).context("--net")?;
    Ok(line)
}

pub fn build(opts: &BuildOptions) -> Result<Built> {
    check_tools()?;
    if opts.qcow2 {
        tools::require(&[QEMU_IMG], &[])?;
    }
    let cmdline = cmdline(opts)?;
    let key = opts
        .signing_key
        .as_deref()
        .map(read_signing_key)
        .transpose()?;
    let version = image_version(opts)?;
    let binary = match &opts.binary {
        Some(b) => b.clone(),
        None => build_binary()?,
    };
    let binary_bytes =
        std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    check_static(&binary_bytes).with_context(|| format!("{}", binary.display()))?;

    let cache = opts.work.join("cache");
    let kernel = kernel::fetch(&opts.kernel, &cache)?;
    let deps_text = std::fs::read_to_string(kernel.modules.join("modules.dep"))?;
    let builtin =
        std::fs::read_to_string(kernel.modules.join("modules.builtin")).unwrap_or_default();
    let (modules, absent_modules) = kernel::select(
        &Deps::parse(&deps_text),
        &builtin,
        kernel::REQUIRED,
        kernel::OPTIONAL,
    )?;

    // One build at a time per output; an output built from the same inputs
    // is kept (builds are reproducible, so it is what a new build would be).
    let lock = lock_output(&opts.output)?;
    let inputs = inputs_digest(
        opts,
        &cmdline,
        &binary_bytes,
        &kernel,
        &version,
        key.as_ref(),
    )?;
    let stamp_path = stamp_path(&opts.output);
    let stamp = std::fs::read_to_string(&stamp_path)
        .ok()
        .and_then(|s| Stamp::parse(&s))
        .filter(|s| s.inputs == inputs && opts.output.is_file());
    let stem = opts.output.with_extension("");
    let (initrd_bytes, uki_bytes, vmlinuz, initrd) = match stamp {
        Some(s) => {
            eprintln!("edgebox-image: {} is up to date", opts.output.display());
            let (vmlinuz, initrd) = (
                stem.with_extension("vmlinuz"),
                stem.with_extension("initrd"),
            );
            (s.initrd_bytes, s.uki_bytes, vmlinuz, initrd)
        }
        None => {
            let _ = std::fs::remove_file(&stamp_path);
            let scratch = scratch_dir(&opts.output)?;
            let result = assemble(
                opts,
                &scratch,
                &Parts {
                    cmdline: &cmdline,
                    binary: &binary_bytes,
                    kernel: &kernel,
                    modules: &modules,
                    version: &version,
                    key: key.as_ref(),
                },
            );
            let _ = std::fs::remove_dir_all(&scratch);
            let built = result?;
            let stamp = Stamp {
                inputs,
                initrd_bytes: built.0,
                uki_bytes: built.1,
            };
            std::fs::write(&stamp_path, stamp.to_text())?;
            built
        }
    };
    drop(lock);

    let image_bytes = std::fs::metadata(&opts.output)?.len();
    let allocated_bytes = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&opts.output)?.blocks() * 512
    };
    let qcow2 = if opts.qcow2 {
        let q = opts.output.with_extension("qcow2");
        let _ = std::fs::remove_file(&q);
        tools::run(
            tools::command(QEMU_IMG)
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(&opts.output)
                .arg(&q),
        )?;
        Some(q)
    } else {
        None
    };
    Ok(Built {
        image: opts.output.clone(),
        update: stem.with_extension("update"),
        image_version: version,
        qcow2,
        vmlinuz,
        initrd,
        cmdline,
        kernel_version: kernel.version,
        binary,
        binary_bytes: binary_bytes.len() as u64,
        initrd_bytes,
        uki_bytes,
        image_bytes,
        allocated_bytes,
        modules: modules
            .iter()
            .map(|m| edgebox::init::modules::module_name(m))
            .collect(),
        absent_modules,
    })
}

/// What goes into an image besides the options.
struct Parts<'a> {
    cmdline: &'a str,
    binary: &'a [u8],
    kernel: &'a kernel::Kernel,
    modules: &'a [String],
    version: &'a str,
    key: Option<&'a Ed25519KeyPair>,
}

/// The image version: `--image-version`, or edgebox's; checked as the
/// appliance checks an update file's.
fn image_version(opts: &BuildOptions) -> Result<String> {
    let v = opts
        .image_version
        .clone()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
    edgebox::update::file::check_version(&v)
        .map_err(|e| anyhow::anyhow!("--image-version {v}: {e}"))?;
    Ok(v)
}

/// Reads an Ed25519 private key: PKCS#8, PEM or DER.
pub fn read_signing_key(path: &Path) -> Result<Ed25519KeyPair> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let der = match std::str::from_utf8(&bytes) {
        Ok(text) if text.contains("-----BEGIN PRIVATE KEY-----") => {
            use base64::Engine;
            let b64: String = text
                .lines()
                .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
                .skip(1)
                .take_while(|l| !l.starts_with("-----END"))
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .with_context(|| format!("{}: bad base64", path.display()))?
        }
        _ => bytes,
    };
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| {
        anyhow::anyhow!(
            "{}: not an Ed25519 private key in PKCS#8 ({e}); make one with `openssl genpkey -algorithm ed25519 -out {}`",
            path.display(),
            path.display()
        )
    })
}

/// A PKCS#8 PEM of `key` (for tests and tools that make keys).
pub fn signing_key_pem(key: &Ed25519KeyPair) -> Result<String> {
    use base64::Engine;
    let der = key
        .to_pkcs8v1()
        .map_err(|_| anyhow::anyhow!("cannot encode the key"))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or(""));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}

/// Writes the image, its update file and its direct-boot files; returns
/// the initramfs and unified kernel image sizes and the direct-boot paths.
fn assemble(
    opts: &BuildOptions,
    scratch: &Path,
    p: &Parts<'_>,
) -> Result<(u64, u64, PathBuf, PathBuf)> {
    let (cmdline, binary, kernel, modules) = (p.cmdline, p.binary, p.kernel, p.modules);
    // Modules, with depmod data for just these.
    let mod_root = scratch.join("modules");
    let mod_dir = mod_root.join("lib/modules").join(&kernel.version);
    for m in modules.iter().map(String::as_str).chain([
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ]) {
        let to = mod_dir.join(m);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(kernel.modules.join(m), &to)
            .with_context(|| format!("copying {m} from the kernel package"))?;
    }
    tools::run(
        tools::command(DEPMOD)
            .arg("-b")
            .arg(&mod_root)
            .arg(&kernel.version),
    )?;

    // The initramfs: /init, the console node, mount points, the modules.
    let mut archive = Archive::new();
    archive.file("init", 0o755, binary.to_vec())?;
    archive.char_device("dev/console", 0o600, 5, 1)?;
    for dir in ["proc", "sys", "run", "data"] {
        archive.dir(dir)?;
    }
    let os_release_text = format!(
        "ID=edgebox\nNAME=edgebox\nVERSION_ID={v}\nIMAGE_ID=edgebox\nIMAGE_VERSION={iv}\nPRETTY_NAME=\"edgebox {iv}\"\n",
        v = env!("CARGO_PKG_VERSION"),
        iv = p.version,
    );
    archive.dir("etc")?;
    archive.file(
        "etc/os-release",
        0o644,
        os_release_text.clone().into_bytes(),
    )?;
    if let Some(key) = p.key {
        archive.file(
            edgebox::update::TRUST_KEY.trim_start_matches('/'),
            0o644,
            format!(
                "{}\n",
                edgebox::update::file::hex(&edgebox::update::file::public_key(key))
            )
            .into_bytes(),
        )?;
    }
    if opts.allow_unsigned_updates {
        archive.file(
            edgebox::update::ALLOW_UNSIGNED.trim_start_matches('/'),
            0o644,
            Vec::new(),
        )?;
    }
    if let Some(token) = &opts.admin_token {
        archive.file(
            edgebox::init::FIRST_BOOT_TOKEN.trim_start_matches('/'),
            0o600,
            format!("{}\n", edgebox::admin::token::hash_hex(token)).into_bytes(),
        )?;
    }
    let lib = format!("lib/modules/{}", kernel.version);
    for m in modules
        .iter()
        .map(String::as_str)
        .chain(["modules.dep", "modules.alias"])
    {
        let data = std::fs::read(mod_dir.join(m)).with_context(|| format!("reading {m}"))?;
        archive.file(&format!("{lib}/{m}"), 0o644, data)?;
    }
    let initrd_bytes = compress(&archive.to_bytes())?;

    let stem = opts.output.with_extension("");
    let vmlinuz = stem.with_extension("vmlinuz");
    let initrd = stem.with_extension("initrd");
    std::fs::copy(&kernel.vmlinuz, &vmlinuz)?;
    std::fs::write(&initrd, &initrd_bytes)?;
    std::fs::write(stem.with_extension("cmdline"), format!("{cmdline}\n"))?;

    // The unified kernel image on a FAT32 EFI system partition.
    let os_release = scratch.join("os-release");
    std::fs::write(&os_release, &os_release_text)?;
    let cmdline_file = scratch.join("cmdline");
    std::fs::write(&cmdline_file, cmdline)?;
    let efi = scratch.join("BOOTX64.EFI");
    uki::assemble(
        Path::new(tools::EFI_STUB.0),
        &os_release,
        &cmdline_file,
        &kernel.vmlinuz,
        &initrd,
        &efi,
    )?;
    let uki = std::fs::read(&efi)?;
    let uki_bytes = uki.len() as u64;

    // The update file: header (signed if a key is given), then the UKI.
    let mut update =
        edgebox::update::file::header(p.version, edgebox::update::DATA_FORMAT, &uki, p.key);
    update.extend_from_slice(&uki);
    std::fs::write(stem.with_extension("update"), &update)?;

    // The ESP: systemd-boot, and the image in slot a (generation 1,
    // blessed). Room for three images: both slots and one being written.
    use edgebox::update::slots::{self, Slot};
    let loader_conf = scratch.join("loader.conf");
    std::fs::write(
        &loader_conf,
        "timeout 0\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n",
    )?;
    let entry = scratch.join("entry.conf");
    std::fs::write(&entry, slots::entry_text(Slot::A, 1, p.version, cmdline))?;
    let esp_bytes = (uki_bytes * 4 + (16 << 20)).div_ceil(1 << 20).max(128) << 20;
    let esp = scratch.join("esp.img");
    let entry_path = format!("{}/{}", slots::ENTRIES_DIR, slots::good_file_name(Slot::A));
    fs::fat32(
        &esp,
        esp_bytes,
        "EDGEBOX",
        &[
            ("EFI/BOOT/BOOTX64.EFI", Path::new(tools::BOOT_LOADER.0)),
            (&Slot::A.image_path(), &efi),
            ("loader/loader.conf", &loader_conf),
            (&entry_path, &entry),
        ],
    )?;

    // The data partition, empty: PID 1 and edgebox fill it at first boot.
    let data = scratch.join("data.img");
    let uuid = Guid::derived(b"edgebox/data-filesystem").to_string();
    fs::ext4(&data, opts.data_bytes, DATA_NAME, &uuid)?;

    let layout = Layout::new(
        &[
            Spec {
                name: ESP_NAME.into(),
                type_guid: ESP,
                bytes: esp_bytes,
            },
            Spec {
                name: DATA_NAME.into(),
                type_guid: LINUX_DATA,
                bytes: opts.data_bytes,
            },
        ],
        "edgebox",
    );
    crate::disk::assemble(&opts.output, &layout, &[&esp, &data])?;
    Ok((initrd_bytes.len() as u64, uki_bytes, vmlinuz, initrd))
}

/// What an output was built from, kept beside it as `<output>.inputs`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    inputs: String,
    initrd_bytes: u64,
    uki_bytes: u64,
}

impl Stamp {
    fn to_text(&self) -> String {
        format!("{} {} {}\n", self.inputs, self.initrd_bytes, self.uki_bytes)
    }

    fn parse(text: &str) -> Option<Stamp> {
        let mut f = text.split_whitespace();
        Some(Stamp {
            inputs: f.next()?.to_owned(),
            initrd_bytes: f.next()?.parse().ok()?,
            uki_bytes: f.next()?.parse().ok()?,
        })
    }
}

fn stamp_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".inputs");
    PathBuf::from(name)
}

/// The code that decides the image's bytes.
const BUILDER_SOURCES: &[&str] = &[
    include_str!("build.rs"),
    include_str!("cpio.rs"),
    include_str!("disk.rs"),
    include_str!("fs.rs"),
    include_str!("gpt.rs"),
    include_str!("kernel.rs"),
    include_str!("uki.rs"),
    // The update file's header and the slots' boot entries.
    include_str!("../../appliance/src/update/file.rs"),
    include_str!("../../appliance/src/update/slots.rs"),
];

/// Everything the image is made of: this builder, the binary, the kernel
/// package, the EFI stub, and the options that change bytes.
fn inputs_digest(
    opts: &BuildOptions,
    cmdline: &str,
    binary: &[u8],
    kernel: &kernel::Kernel,
    version: &str,
    key: Option<&Ed25519KeyPair>,
) -> Result<String> {
    let mut h = blake3::Hasher::new();
    let mut part = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    // The builder's own code, whichever program it is linked into.
    for source in BUILDER_SOURCES {
        part(source.as_bytes());
    }
    part(binary);
    part(&std::fs::read(&kernel.deb)?);
    part(&std::fs::read(tools::EFI_STUB.0)?);
    part(&std::fs::read(tools::BOOT_LOADER.0)?);
    part(version.as_bytes());
    part(
        &key.map(edgebox::update::file::public_key)
            .unwrap_or_default(),
    );
    part(&[u8::from(opts.allow_unsigned_updates)]);
    part(cmdline.as_bytes());
    part(&opts.data_bytes.to_le_bytes());
    part(opts.admin_token.as_deref().unwrap_or("").as_bytes());
    part(&[u8::from(opts.admin_token.is_some()), u8::from(opts.qcow2)]);
    Ok(h.finalize().to_hex().to_string())
}

/// Holds `<output>.lock` exclusively until dropped.
fn lock_output(output: &Path) -> Result<std::fs::File> {
    let mut name = output.as_os_str().to_owned();
    name.push(".lock");
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::File::create(PathBuf::from(&name))
        .with_context(|| format!("{}", PathBuf::from(&name).display()))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
    Ok(file)
}

/// gzip: every Debian kernel unpacks it, and it is deterministic.
fn compress(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new().mtime(0).write(
        Vec::with_capacity(bytes.len() / 2),
        flate2::Compression::new(6),
    );
    gz.write_all(bytes)?;
    Ok(gz.finish()?)
}

/// A fresh scratch directory beside the output, so builds of different
/// outputs can run at once.
fn scratch_dir(output: &Path) -> Result<PathBuf> {
    let name = output.file_name().context("--output has no file name")?;
    let dir = output.with_file_name(format!(".{}.build", name.to_string_lossy()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The workspace this tool was built from (for `cargo build` of edgebox).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Builds the static binary: the `appliance` profile, C runtime linked in.
fn build_binary() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "--locked",
        "--profile",
        "appliance",
        "-p",
        "edgebox",
        "--target",
        TRIPLE,
    ])
    .current_dir(workspace_root())
    // Only the environment a shell gives it: run from a test, the test's
    // CARGO_PKG_*, CARGO_MANIFEST_DIR and the like differ between test
    // programs, and some build scripts rebuild when they change.
    .env_clear()
    .envs(std::env::vars_os().filter(|(k, _)| {
        k.to_str().is_some_and(|k| {
            matches!(
                k,
                "PATH"
                    | "HOME"
                    | "USER"
                    | "LANG"
                    | "TMPDIR"
                    | "TERM"
                    | "CARGO_HOME"
                    | "CARGO_TARGET_DIR"
                    | "RUSTUP_HOME"
                    | "RUSTUP_TOOLCHAIN"
            )
        })
    }))
    .env("RUSTFLAGS", "-C target-feature=+crt-static");
    eprintln!("edgebox-image: {}", tools::show(&cmd));
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("building the static edgebox binary failed ({status})");
    }
    Ok(target_dir().join(TRIPLE).join("appliance/edgebox"))
}

/// A static executable has no program interpreter (`PT_INTERP`).
pub fn check_static(elf: &[u8]) -> Result<()> {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        bail!("not a 64-bit ELF executable");
    }
    let phoff = u64_at(0x20).context("truncated ELF header")? as usize;
    let phentsize = usize::from(u16_at(0x36).context("truncated ELF header")?);
    let phnum = usize::from(u16_at(0x38).context("truncated ELF header")?);
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let kind = elf.get(at..at + 4).context("truncated program headers")?;
        if kind == 3u32.to_le_bytes() {
            bail!("dynamically linked (has an interpreter); build it with RUSTFLAGS=\"-C target-feature=+crt-static\" --target {TRIPLE}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(net: &[&str]) -> BuildOptions {
        BuildOptions {
            kernel: KernelSource::Cloud,
            binary: None,
            output: "edgebox.img".into(),
            qcow2: false,
            data_bytes: 1 << 30,
            net: net.iter().map(|s| (*s).to_owned()).collect(),
            admin_token: None,
            kernel_args: vec![],
            work: "w".into(),
            image_version: None,
            signing_key: None,
            allow_unsigned_updates: false,
        }
    }

    #[test]
    fn the_command_line_carries_the_network_and_is_checked() {
        let line = cmdline(&opts(&["eth0,10.0.2.15/24,gw=10.0.2.2"])).unwrap();
        assert!(
            line.ends_with("edgebox.net=eth0,10.0.2.15/24,gw=10.0.2.2"),
            "{line}"
        );
        assert!(line.contains("console=ttyS0"));
        let err = cmdline(&opts(&["eth0,10.0.2.15"])).unwrap_err();
        assert!(
            format!("{err:#}").contains("edgebox.net=eth0,10.0.2.15"),
            "{err:#}"
        );
    }

    #[test]
    fn static_executables_are_told_from_dynamic_ones() {
        let own = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are dynamically linked.
        let err = check_static(&own).unwrap_err();
        assert!(err.to_string().contains("dynamically linked"), "{err}");
        assert!(check_static(b"#!/bin/sh").is_err());
        // An ELF header with no program headers has no interpreter.
        let mut elf = vec![0u8; 64];
        elf[..5].copy_from_slice(b"\x7fELF\x02");
        assert!(check_static(&elf).is_ok());
    }
}
