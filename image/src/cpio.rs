//! A reproducible initramfs: the cpio "newc" format the kernel unpacks.
//!
//! Entries are sorted, every parent directory is present, and nothing from
//! the build host leaks in: owner 0:0, modification time 0, inode numbers
//! assigned in order. So the same inputs give the same bytes.

use std::collections::BTreeMap;

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    /// A regular file with its permission bits (e.g. 0o755).
    File {
        mode: u32,
        data: Vec<u8>,
    },
    /// A character device node, such as `dev/console` (5, 1), which the
    /// kernel opens for `/init`'s standard streams before any mount.
    CharDevice {
        mode: u32,
        major: u32,
        minor: u32,
    },
}

/// An archive being assembled; paths are relative (`init`, `lib/modules/x.ko`).
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Node>,
}

/// A path that cannot be in the archive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path:?}: {reason}")]
pub struct PathError {
    pub path: String,
    pub reason: &'static str,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file, and every directory above it.
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> Result<(), PathError> {
        let mode = mode & 0o7777;
        self.add(path, Node::File { mode, data })
    }

    /// Adds an (empty) directory, and every directory above it.
    pub fn dir(&mut self, path: &str) -> Result<(), PathError> {
        self.add(path, Node::Dir)
    }

    /// Adds a character device node, and every directory above it.
    pub fn char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), PathError> {
        let mode = mode & 0o7777;
        self.add(path, Node::CharDevice { mode, major, minor })
    }

    fn add(&mut self, path: &str, node: Node) -> Result<(), PathError> {
        let path = clean(path)?;
        let mut at = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for dir in &parts[..parts.len() - 1] {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(dir);
            match self.entries.get(&at) {
                Some(Node::Dir) => {}
                Some(_) => {
                    return Err(PathError {
                        path: at,
                        reason: "is a file and a directory",
                    })
                }
                None => {
                    self.entries.insert(at.clone(), Node::Dir);
                }
            }
        }
        match (self.entries.get(&path), &node) {
            (None, _) | (Some(Node::Dir), Node::Dir) => {}
            (Some(Node::Dir), _) => {
                return Err(PathError {
                    path,
                    reason: "is a directory and a file",
                })
            }
            (Some(_), Node::Dir) => {
                return Err(PathError {
                    path,
                    reason: "is a file and a directory",
                })
            }
            (Some(_), _) => {} // the later file wins
        }
        self.entries.insert(path, node);
        Ok(())
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.entries.iter().map(|(p, n)| (p.as_str(), n))
    }

    /// The archive in newc format, ending with the `TRAILER!!!` entry.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, node)) in (1u32..).zip(&self.entries) {
            let (mode, data, rdev): (u32, &[u8], _) = match node {
                Node::Dir => (0o040_755, &[], (0, 0)),
                Node::File { mode, data } => (0o100_000 | mode, data, (0, 0)),
                Node::CharDevice { mode, major, minor } => {
                    (0o020_000 | mode, &[], (*major, *minor))
                }
            };
            let nlink = if matches!(node, Node::Dir) { 2 } else { 1 };
            header(&mut out, ino, mode, nlink, data.len(), rdev, path);
            out.extend_from_slice(data);
            pad4(&mut out);
        }
        header(&mut out, 0, 0, 1, 0, (0, 0), "TRAILER!!!");
        out
    }
}

fn clean(path: &str) -> Result<String, PathError> {
    let bad = |reason| PathError {
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() || path.starts_with('/') {
        return Err(bad("must be relative and not empty"));
    }
    if path
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
        || path.contains('\0')
    {
        return Err(bad("no empty, '.' or '..' segments or NUL"));
    }
    Ok(path.to_owned())
}

fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    (rdev_major, rdev_minor): (u32, u32),
    name: &str,
) {
    let namesize = name.len() + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
    // rdevmajor, rdevminor, namesize, check
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size as u32,
        0,
        0,
        rdev_major,
        rdev_minor,
        namesize as u32,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.file("init", 0o755, b"#!edgebox".to_vec()).unwrap();
        a.file(
            "lib/modules/6.1.0/kernel/net/tls/tls.ko",
            0o644,
            vec![7; 1001],
        )
        .unwrap();
        a.file(
            "lib/modules/6.1.0/modules.dep",
            0o644,
            b"kernel/net/tls/tls.ko:\n".to_vec(),
        )
        .unwrap();
        a
    }

    #[test]
    fn same_inputs_same_bytes_in_any_order() {
        let mut b = Archive::new();
        b.file(
            "lib/modules/6.1.0/modules.dep",
            0o644,
            b"kernel/net/tls/tls.ko:\n".to_vec(),
        )
        .unwrap();
        b.file(
            "lib/modules/6.1.0/kernel/net/tls/tls.ko",
            0o644,
            vec![7; 1001],
        )
        .unwrap();
        b.file("init", 0o755, b"#!edgebox".to_vec()).unwrap();
        assert_eq!(sample().to_bytes(), b.to_bytes());
    }

    #[test]
    fn layout_is_newc() {
        let mut a = Archive::new();
        a.file("init", 0o755, b"abc".to_vec()).unwrap();
        let bytes = a.to_bytes();
        // Header: magic, then 13 fields of 8 hex digits; name "init\0" pads the
        // 110+5 bytes to 116; the 3 data bytes pad to 120.
        assert_eq!(&bytes[..14], b"07070100000001");
        assert_eq!(&bytes[14..22], b"000081ED", "regular file, 0755");
        assert_eq!(&bytes[54..62], b"00000003", "size");
        assert_eq!(&bytes[110..115], b"init\0");
        assert_eq!(&bytes[116..119], b"abc");
        assert_eq!(&bytes[120..126], b"070701", "the trailer follows, aligned");
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn device_nodes_and_empty_directories() {
        let mut a = Archive::new();
        a.char_device("dev/console", 0o600, 5, 1).unwrap();
        a.dir("proc").unwrap();
        a.dir("dev").unwrap();
        let kinds: Vec<(&str, &Node)> = a.entries().collect();
        assert_eq!(kinds[0], ("dev", &Node::Dir));
        assert_eq!(kinds[2], ("proc", &Node::Dir));
        let bytes = a.to_bytes();
        let console = bytes
            .windows(12)
            .position(|w| w == b"dev/console\0")
            .unwrap()
            - 110;
        let field = |k: usize| &bytes[console + 6 + 8 * k..console + 14 + 8 * k];
        assert_eq!(field(1), b"00002180", "character device, 0600");
        assert_eq!(
            (field(9), field(10)),
            (&b"00000005"[..], &b"00000001"[..]),
            "rdev 5:1"
        );
        assert!(a.file("dev/console/x", 0o644, vec![]).is_err());
    }

    #[test]
    fn parents_are_added_and_conflicts_refused() {
        let a = sample();
        let names: Vec<&str> = a.entries().map(|(p, _)| p).collect();
        assert_eq!(
            names,
            [
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.1.0",
                "lib/modules/6.1.0/kernel",
                "lib/modules/6.1.0/kernel/net",
                "lib/modules/6.1.0/kernel/net/tls",
                "lib/modules/6.1.0/kernel/net/tls/tls.ko",
                "lib/modules/6.1.0/modules.dep"
            ]
        );
        let mut b = sample();
        assert!(b.file("init/x", 0o644, vec![]).is_err());
        assert!(b.file("lib", 0o644, vec![]).is_err());
        for bad in ["", "/init", "a//b", "a/../b", "./a"] {
            assert!(b.file(bad, 0o644, vec![]).is_err(), "{bad:?}");
        }
    }

    /// GNU cpio, the real reader, lists and extracts what we wrote.
    #[test]
    fn gnu_cpio_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("initramfs.cpio");
        std::fs::write(&archive, sample().to_bytes()).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-idv", "--quiet", "-F"])
            .arg(&archive)
            .current_dir(dir.path())
            .output()
            .expect("cpio must be installed (scripts/test installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(dir.path().join("init")).unwrap(),
            b"#!edgebox"
        );
        assert_eq!(
            std::fs::read(dir.path().join("lib/modules/6.1.0/kernel/net/tls/tls.ko")).unwrap(),
            vec![7; 1001]
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("init"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
