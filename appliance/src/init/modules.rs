//! Which kernel modules the hardware asks for, and the order to load them.
//! Pure functions over the text of `modules.alias` and `modules.dep`.

use std::collections::{HashMap, HashSet};

/// `modules.alias`: device-alias patterns → module names.
#[derive(Debug, Default, Clone)]
pub struct Aliases {
    entries: Vec<(String, String)>,
}

impl Aliases {
    /// Parses `alias <pattern> <module>` lines; anything else is skipped.
    pub fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                (f.next()? == "alias").then_some(())?;
                Some((f.next()?.to_owned(), normalize(f.next()?)))
            })
            .collect();
        Self { entries }
    }

    /// The modules whose patterns match a device's modalias, in file order,
    /// without repeats.
    pub fn modules_for(&self, modalias: &str) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.entries
            .iter()
            .filter(|(p, _)| glob(p.as_bytes(), modalias.as_bytes()))
            .map(|(_, m)| m.as_str())
            .filter(|m| seen.insert(*m))
            .collect()
    }
}

/// Module names use `_`; file names may use `-`.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// fnmatch-style matching as modprobe does it: `*`, `?` and `[...]` classes
/// (with ranges and `!`/`^` negation).
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(&pattern[p..], text[t]) {
                        if matched {
                            p += next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches one character against the class at the start of `pattern`;
/// returns whether it matched and the class's length, or `None` if the class
/// is unterminated.
fn class(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        if pattern[i] == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            if pattern[i] <= c && c <= pattern[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if pattern[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

/// `modules.dep`: each module's file and the files it needs.
#[derive(Debug, Default, Clone)]
pub struct Deps {
    modules: HashMap<String, (String, Vec<String>)>,
}

/// A module that `modules.dep` does not list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("module {0} is not in modules.dep")]
pub struct UnknownModule(pub String);

/// `kernel/net/tls/tls.ko.xz` → `tls`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"]
        .iter()
        .find_map(|s| file.strip_suffix(s))
        .unwrap_or(file);
    normalize(stem)
}

impl Deps {
    /// Parses `path: dep dep …` lines.
    pub fn parse(text: &str) -> Self {
        let modules = text
            .lines()
            .filter_map(|l| {
                let (path, deps) = l.split_once(':')?;
                let path = path.trim();
                let deps = deps.split_whitespace().map(str::to_owned).collect();
                Some((module_name(path), (path.to_owned(), deps)))
            })
            .collect();
        Self { modules }
    }

    /// Whether the kernel has this module (as a loadable file).
    pub fn has(&self, name: &str) -> bool {
        self.modules.contains_key(&normalize(name))
    }

    /// The module files to load, each after everything it needs, each once.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<String>, UnknownModule> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        for name in wanted {
            self.visit(&normalize(name), &mut done, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        done: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), UnknownModule> {
        if !done.insert(name.to_owned()) {
            return Ok(());
        }
        let (path, deps) = self
            .modules
            .get(name)
            .ok_or_else(|| UnknownModule(name.to_owned()))?;
        // modprobe loads the listed dependencies last-first.
        for dep in deps.iter().rev() {
            self.visit(&module_name(dep), done, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias pci:v00001AF4d00001000sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias virtio:d00000002v* virtio_blk
alias virtio:d00000004v* virtio-rng
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias tcp-ulp-tls tls
";

    const DEP: &str = "\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/char/hw_random/virtio-rng.ko.xz:
kernel/net/tls/tls.ko:
";

    #[test]
    fn modaliases_pick_modules() {
        let a = Aliases::parse(ALIAS);
        assert_eq!(
            a.modules_for("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"),
            ["virtio_pci"]
        );
        assert_eq!(a.modules_for("virtio:d00000001v00001AF4"), ["virtio_net"]);
        assert_eq!(a.modules_for("virtio:d00000004v00001AF4"), ["virtio_rng"]);
        assert!(a.modules_for("pci:v00001234d00001111sv*").is_empty());
        assert_eq!(a.modules_for("tcp-ulp-tls"), ["tls"]);
    }

    #[test]
    fn glob_like_fnmatch() {
        assert!(glob(b"a*c", b"abbbc"));
        assert!(glob(b"a?c", b"abc"));
        assert!(!glob(b"a?c", b"ac"));
        assert!(glob(b"*", b""));
        assert!(glob(b"v[0-9]x", b"v7x"));
        assert!(!glob(b"v[!0-9]x", b"v7x"));
        assert!(glob(b"v[^a]x", b"vbx"));
        assert!(glob(b"[]]", b"]"));
        assert!(glob(b"a[", b"a["), "an unterminated class is a literal '['");
        assert!(!glob(b"abc", b"abcd"));
        assert!(glob(b"*d*", b"abcdef"));
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let d = Deps::parse(DEP);
        let order = d
            .load_order(&["virtio_net", "virtio_pci", "net_failover", "virtio-rng"])
            .unwrap();
        assert_eq!(
            order,
            [
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
                "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/drivers/char/hw_random/virtio-rng.ko.xz",
            ]
        );
        assert_eq!(d.load_order(&["nope"]), Err(UnknownModule("nope".into())));
        assert_eq!(module_name("kernel/x/virtio-rng.ko.zst"), "virtio_rng");
    }
}
