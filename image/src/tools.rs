//! The host programs the builder and the booter run, found before any work
//! starts so that a missing one is named with the package that provides it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// A host program and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

pub const APT_GET: Tool = Tool {
    program: "apt-get",
    package: "apt",
};
pub const APT_CACHE: Tool = Tool {
    program: "apt-cache",
    package: "apt",
};
pub const DPKG_DEB: Tool = Tool {
    program: "dpkg-deb",
    package: "dpkg",
};
pub const DEPMOD: Tool = Tool {
    program: "depmod",
    package: "kmod",
};
pub const OBJCOPY: Tool = Tool {
    program: "objcopy",
    package: "binutils",
};
pub const MKFS_FAT: Tool = Tool {
    program: "mkfs.fat",
    package: "dosfstools",
};
pub const MMD: Tool = Tool {
    program: "mmd",
    package: "mtools",
};
pub const MCOPY: Tool = Tool {
    program: "mcopy",
    package: "mtools",
};
pub const MKFS_EXT4: Tool = Tool {
    program: "mkfs.ext4",
    package: "e2fsprogs",
};
pub const QEMU_IMG: Tool = Tool {
    program: "qemu-img",
    package: "qemu-utils",
};
pub const QEMU: Tool = Tool {
    program: "qemu-system-x86_64",
    package: "qemu-system-x86",
};

/// The systemd-boot stub that turns kernel + initramfs into one EFI program.
pub const EFI_STUB: (&str, &str) = (
    "/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
    "systemd-boot-efi",
);
/// The boot loader: systemd-boot, with boot counting (A/B slots).
pub const BOOT_LOADER: (&str, &str) = (
    "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
    "systemd-boot-efi",
);
/// UEFI firmware for QEMU: code (read-only) and the variable store template.
pub const OVMF_CODE: (&str, &str) = ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf");
pub const OVMF_VARS: (&str, &str) = ("/usr/share/OVMF/OVMF_VARS_4M.fd", "ovmf");

/// Finds a program on `PATH`, then in the sbin directories (where mkfs and
/// depmod live, often off a normal user's `PATH`).
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Checks that every tool and file is there; the error lists all that are
/// missing and the one `apt-get install` line that provides them.
pub fn require(tools: &[Tool], files: &[(&str, &str)]) -> Result<()> {
    let mut missing = Vec::new();
    let mut packages: Vec<&str> = Vec::new();
    for t in tools {
        if find(t.program).is_none() {
            missing.push(t.program.to_owned());
            packages.push(t.package);
        }
    }
    for (file, package) in files {
        if !Path::new(file).is_file() {
            missing.push((*file).to_owned());
            packages.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    packages.sort_unstable();
    packages.dedup();
    bail!(
        "missing on this machine: {}\n  install with: apt-get update && apt-get install -y {}",
        missing.join(", "),
        packages.join(" ")
    )
}

/// A command for `tool`, by its full path when found.
pub fn command(tool: Tool) -> Command {
    Command::new(find(tool.program).unwrap_or_else(|| PathBuf::from(tool.program)))
}

/// Runs a command to completion; a failure names the command and shows what
/// it printed on stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let shown = show(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(out)
}

/// A command as a shell line, for messages.
pub fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_missing_is_named_with_its_package() {
        let gone = Tool {
            program: "edgebox-no-such-program",
            package: "pkg-a",
        };
        let err = require(&[gone, gone], &[("/nonexistent/stub.efi", "pkg-b")]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(
                "edgebox-no-such-program, edgebox-no-such-program, /nonexistent/stub.efi"
            ),
            "{text}"
        );
        assert!(text.contains("apt-get install -y pkg-a pkg-b"), "{text}");
        assert!(require(
            &[Tool {
                program: "sh",
                package: "dash"
            }],
            &[]
        )
        .is_ok());
    }

    #[test]
    fn a_failing_command_shows_itself_and_its_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo broken >&2; exit 3"])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("sh -c echo broken >&2; exit 3 failed"),
            "{text}"
        );
        assert!(text.contains("broken"), "{text}");
    }
}
