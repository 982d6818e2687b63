//! The persisted config and host map, under `<data>/config/`.
//!
//! ```text
//! config.json                 {"generation": N, "config": {...}}   the config being served
//! history/config-<N>.json     the same, for the last KEEP generations
//! hostmap.ndjson              {"generation": N} then one entry a line
//! hostmap.journal             changes since: `CRC32 {"generation": N, "change": ...}` a line
//! ```
//!
//! Every file but the journal is written whole to a temporary file,
//! fsynced, renamed over the old one and the directory fsynced
//! ([`crate::fsutil::write_atomic`]), so a crash or power cut leaves the
//! previous version or the new one, never half of one. The journal makes a
//! change of one host-map entry cost one appended, fsynced line instead of
//! a rewrite of millions: on load the lines newer than the map's file are
//! replayed, and a last line cut short by a crash (no newline, or a CRC
//! that does not match) is a change that was never acknowledged, so it is
//! dropped. When the journal has grown to a quarter of the map, the map is
//! written whole again and the journal emptied (amortised, still a constant
//! cost per change).
#![forbid(unsafe_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::fsutil::write_atomic;
use crate::hostmap::{Change, HostMap, Importer};

/// How many past config generations are kept in `history/`.
pub const KEEP: usize = 10;

/// A persisted file that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but cannot be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not what edgebox writes there.
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Serialize, Deserialize)]
struct ConfigFile<C> {
    generation: u64,
    config: C,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostMapHeader {
    generation: u64,
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(data: &Path) -> Self {
        Self {
            dir: data.join("config"),
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    fn hostmap_path(&self) -> PathBuf {
        self.dir.join("hostmap.ndjson")
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join("hostmap.journal")
    }

    /// The persisted config and its generation, if there is one. It is
    /// parsed but not validated; the caller builds a snapshot from it.
    pub fn load_config(&self) -> Result<Option<(u64, Config)>, StoreError> {
        let path = self.config_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let file: ConfigFile<serde_json::Value> =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let config =
            Config::parse(file.config.to_string().as_bytes()).map_err(|e| StoreError::Corrupt {
                path,
                reason: e.to_string(),
            })?;
        Ok(Some((file.generation, config)))
    }

    /// Writes `config` as generation `generation` and keeps it in the history.
    pub fn save_config(&self, generation: u64, config: &Config) -> std::io::Result<()> {
        let file = ConfigFile { generation, config };
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        let history = self.dir.join("history");
        write_atomic(
            &history.join(format!("config-{generation}.json")),
            &bytes,
            0o600,
        )?;
        write_atomic(&self.config_path(), &bytes, 0o600)?;
        self.prune_history(&history);
        Ok(())
    }

    fn prune_history(&self, history: &Path) {
        let Ok(dir) = fs::read_dir(history) else {
            return;
        };
        let mut generations: Vec<u64> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("config-")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        generations.sort_unstable();
        let excess = generations.len().saturating_sub(KEEP);
        for g in &generations[..excess] {
            let _ = fs::remove_file(history.join(format!("config-{g}.json")));
        }
    }

    /// The persisted host map, its generation and how many changes its
    /// journal holds, if there is one.
    pub fn load_hostmap(&self) -> Result<Option<(u64, HostMap, usize)>, StoreError> {
        let path = self.hostmap_path();
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        let mut reader = BufReader::new(file);
        let mut header = String::new();
        reader
            .read_line(&mut header)
            .map_err(|e| corrupt(e.to_string()))?;
        let header: HostMapHeader =
            serde_json::from_str(&header).map_err(|e| corrupt(format!("header: {e}")))?;
        let mut importer = Importer::new();
        loop {
            let chunk = reader.fill_buf().map_err(|e| corrupt(e.to_string()))?;
            if chunk.is_empty() {
                break;
            }
            let n = chunk.len();
            importer
                .push(chunk)
                .map_err(|e| corrupt(format!("entry {e}")))?;
            reader.consume(n);
        }
        let mut map = importer
            .finish()
            .map_err(|e| corrupt(format!("entry {e}")))?;
        let (generation, changes) = self.replay_journal(header.generation, &mut map)?;
        Ok(Some((generation, map, changes)))
    }

    /// Applies the journal's changes newer than `base` to `map`; the newest
    /// generation and the number of lines the journal holds.
    fn replay_journal(&self, base: u64, map: &mut HostMap) -> Result<(u64, usize), StoreError> {
        let path = self.journal_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((base, 0)),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let corrupt = |line: usize, reason: &str| StoreError::Corrupt {
            path: path.clone(),
            reason: format!("line {line}: {reason}"),
        };
        let mut generation = base;
        let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let last = i + 1 == lines.len();
            let entry = parse_journal_line(line);
            let entry = match entry {
                Some(e) => e,
                // A crash cut the last append short: it was never answered.
                None if last => break,
                None => return Err(corrupt(i + 1, "not a journal line (or its CRC is wrong)")),
            };
            // Lines the map's file holds already. (The lines of one batch
            // share a generation.)
            if entry.generation <= base {
                continue;
            }
            map.apply(&entry.change).map_err(|e| corrupt(i + 1, &e))?;
            generation = entry.generation;
        }
        Ok((generation, lines.len()))
    }

    /// Writes the whole host map as generation `generation`, and empties the
    /// journal (whose changes it now holds).
    pub fn save_hostmap(&self, generation: u64, map: &HostMap) -> std::io::Result<()> {
        let mut bytes =
            serde_json::to_vec(&HostMapHeader { generation }).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        map.write_ndjson(&mut bytes)?;
        write_atomic(&self.hostmap_path(), &bytes, 0o600)?;
        match fs::remove_file(self.journal_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Appends changes as generation `generation` to the journal, durably
    /// (fsynced before this returns), with one write.
    pub fn append_hostmap(&self, generation: u64, changes: &[Change]) -> std::io::Result<()> {
        use std::io::Write;
        if !self.hostmap_path().exists() {
            self.save_hostmap(0, &HostMap::default())?;
        }
        let path = self.journal_path();
        let created = !path.exists();
        let mut line = Vec::new();
        for change in changes {
            let json = serde_json::to_vec(&JournalLine {
                generation,
                change: change.clone(),
            })
            .map_err(std::io::Error::other)?;
            line.extend_from_slice(format!("{:08x} ", crc32fast::hash(&json)).as_bytes());
            line.extend_from_slice(&json);
            line.push(b'\n');
        }
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        f.write_all(&line)?;
        f.sync_data()?;
        if created {
            fs::File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalLine {
    generation: u64,
    change: Change,
}

/// One whole journal line (`CRC32 JSON\n`), if it is one.
fn parse_journal_line(line: &[u8]) -> Option<JournalLine> {
    let line = line.strip_suffix(b"\n")?;
    let (crc, json) = (line.get(..8)?, line.get(9..)?);
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    if line.get(8) != Some(&b' ') || crc32fast::hash(json) != crc {
        return None;
    }
    serde_json::from_slice(json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_history_is_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert!(store.load_config().unwrap().is_none());
        let config = crate::config::embedded_default(Path::new("/c.pem"), Path::new("/k.pem"));
        for g in 1..=KEEP as u64 + 3 {
            store.save_config(g, &config).unwrap();
        }
        let (g, loaded) = store.load_config().unwrap().unwrap();
        assert_eq!((g, &loaded), (KEEP as u64 + 3, &config));
        let history = fs::read_dir(dir.path().join("config/history"))
            .unwrap()
            .count();
        assert_eq!(history, KEEP);
        assert!(dir
            .path()
            .join(format!("config/history/config-{}.json", KEEP + 3))
            .exists());
        assert!(!dir.path().join("config/history/config-3.json").exists());
    }

    #[test]
    fn hostmap_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert!(store.load_hostmap().unwrap().is_none());
        let mut map = HostMap::default();
        for i in 0..1000 {
            map.insert(&format!("shop{i}.example.com"), &format!("pod-{}", i % 7))
                .unwrap();
        }
        store.save_hostmap(42, &map).unwrap();
        assert_eq!(store.load_hostmap().unwrap().unwrap(), (42, map, 0));
    }

    #[test]
    fn journal_changes_replay_and_a_cut_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let set = |h: &str, p: &str| Change::Set {
            host: h.into(),
            pool: p.into(),
        };
        // A journal with no map file yet starts from an empty map.
        store.append_hostmap(1, &[set("a.test", "p1")]).unwrap();
        store.append_hostmap(2, &[set("b.test", "p2")]).unwrap();
        store
            .append_hostmap(
                3,
                &[Change::Delete {
                    host: "a.test".into(),
                }],
            )
            .unwrap();
        let (g, map, journal) = store.load_hostmap().unwrap().unwrap();
        assert_eq!(
            (g, map.len(), map.get("b.test"), journal),
            (3, 1, Some("p2"), 3)
        );
        // A power cut in the middle of the next append.
        let journal_file = dir.path().join("config/hostmap.journal");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&journal_file)
            .unwrap();
        std::io::Write::write_all(&mut f, b"1234abcd {\"generation\": 4, \"chan").unwrap();
        let (g, map, _) = store.load_hostmap().unwrap().unwrap();
        assert_eq!((g, map.len()), (3, 1), "the cut change is dropped");
        // A wrong CRC anywhere but last is damage, not a cut.
        let mut text = fs::read(&journal_file).unwrap();
        text[0] ^= 1;
        fs::write(&journal_file, &text).unwrap();
        assert!(matches!(
            store.load_hostmap(),
            Err(StoreError::Corrupt { .. })
        ));
        // Writing the map whole empties the journal; older lines never replay.
        store.save_hostmap(3, &map).unwrap();
        assert!(!journal_file.exists());
        store.append_hostmap(4, &[set("c.test", "p1")]).unwrap();
        let (g, map, journal) = store.load_hostmap().unwrap().unwrap();
        assert_eq!((g, map.len(), journal), (4, 2, 1));
        // A batch is one generation; every line of it replays.
        store
            .append_hostmap(5, &[set("d.test", "p1"), set("e.test", "p2")])
            .unwrap();
        let (g, map, journal) = store.load_hostmap().unwrap().unwrap();
        assert_eq!((g, map.len(), journal), (5, 4, 3));
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_config() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        fs::create_dir_all(dir.path().join("config")).unwrap();
        fs::write(
            dir.path().join("config/config.json"),
            b"{\"generation\": 1, \"config\": {",
        )
        .unwrap();
        assert!(matches!(
            store.load_config(),
            Err(StoreError::Corrupt { .. })
        ));
        fs::write(
            dir.path().join("config/hostmap.ndjson"),
            b"{\"generation\": 1}\n{\"host\": 1}\n",
        )
        .unwrap();
        assert!(matches!(
            store.load_hostmap(),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// Files written by an earlier edgebox keep loading (format compatibility).
    #[test]
    fn reads_the_files_of_format_1() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("config")).unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        fs::copy(
            fixtures.join("config-v1.json"),
            dir.path().join("config/config.json"),
        )
        .unwrap();
        fs::copy(
            fixtures.join("hostmap-v1.ndjson"),
            dir.path().join("config/hostmap.ndjson"),
        )
        .unwrap();
        let store = Store::new(dir.path());
        let (g, config) = store.load_config().unwrap().unwrap();
        assert_eq!(g, 7);
        assert_eq!(config.pools[0].backends[1].weight, 3);
        let (hg, map, _) = store.load_hostmap().unwrap().unwrap();
        assert_eq!((hg, map.get("shop1.example.com")), (2, Some("app")));
    }
}
