//! What the kernel says about a process tree: CPU time and resident memory.

use std::path::Path;

/// One process's CPU time (user + system) in clock ticks, and its parent.
struct Stat {
    ppid: u32,
    ticks: u64,
    children_ticks: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) may hold spaces and
/// parentheses, so the fields are counted from its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        ppid: u32::try_from(field(4)?).ok()?,
        ticks: field(14)? + field(15)?,
        children_ticks: field(16)? + field(17)?,
    })
}

fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `root` and every process below it.
pub fn tree(root: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(s) = stat(pid) {
                all.push((pid, s.ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

fn tick_seconds() -> f64 {
    1.0 / rustix::param::clock_ticks_per_second() as f64
}

/// CPU seconds used so far by `root` and the processes below it.
pub fn cpu_seconds(root: u32) -> f64 {
    let ticks: u64 = tree(root)
        .into_iter()
        .filter_map(stat)
        .map(|s| s.ticks)
        .sum();
    ticks as f64 * tick_seconds()
}

/// CPU seconds used by this process and by the children it has waited for.
pub fn own_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(parse_stat)
        .map_or(0.0, |s| {
            (s.ticks + s.children_ticks) as f64 * tick_seconds()
        })
}

/// Resident memory of `root` and the processes below it, in bytes.
pub fn rss_bytes(root: u32) -> u64 {
    tree(root)
        .into_iter()
        .filter_map(|pid| {
            std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()
        })
        .filter_map(|status| parse_rss_kib(&status))
        .sum::<u64>()
        * 1024
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (nginx: worker) (x)) S 4241 4241 4241 0 -1 4194624 100 0 0 0 \
                    250 75 3 4 20 0 1 0 1234 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.ppid, 4241);
        assert_eq!(s.ticks, 325);
        assert_eq!(s.children_ticks, 7);
    }

    #[test]
    fn rss_is_read_from_status() {
        let status = "Name:\tnginx\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t1\n";
        assert_eq!(parse_rss_kib(status), Some(5120));
    }

    #[test]
    fn the_tree_holds_this_process_and_its_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let tree = tree(std::process::id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(tree[0], std::process::id());
        assert!(tree.contains(&child.id()), "{tree:?}");
        assert!(rss_bytes(std::process::id()) > 0);
    }
}
