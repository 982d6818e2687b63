//! The admin API's bearer token.
//!
//! Made on first start (32 random bytes, hex), shown once, and kept only as its
//! SHA-256 hash in `<data>/admin/token.sha256`. A presented token is hashed and
//! the hashes compared in constant time. Rotating replaces the hash atomically.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::fsutil::write_atomic;

/// The token could not be made, read or stored.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token hash file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The token hash file does not hold a SHA-256 hash.
    #[error("{0}: not a token hash (64 hex digits); delete it to make a new token")]
    Corrupt(PathBuf),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// The token's hash as stored: SHA-256, lower-case hex. The image builder
/// uses it for the first-boot token, so the token itself is in no image.
pub fn hash_hex(token: &str) -> String {
    hex(digest(&SHA256, token.as_bytes()).as_ref())
}

/// Where the token hash lives in a data directory.
pub const HASH_FILE: &str = "admin/token.sha256";

#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    hash: [u8; 32],
}

impl TokenStore {
    /// Loads the stored hash, or makes a token (returned, to be shown once)
    /// when there is none. A `preset` token (first-boot setting) is used
    /// instead of a random one when given and no hash is stored yet.
    pub fn open(data: &Path, preset: Option<&str>) -> Result<(Self, Option<String>), TokenError> {
        let path = data.join(HASH_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let hash =
                    parse_hex(text.trim()).ok_or_else(|| TokenError::Corrupt(path.clone()))?;
                Ok((Self { path, hash }, None))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = match preset {
                    Some(t) => t.to_owned(),
                    None => new_token()?,
                };
                let mut store = Self {
                    path,
                    hash: [0; 32],
                };
                store.set(&token)?;
                Ok((store, Some(token)))
            }
            Err(source) => Err(TokenError::Io { path, source }),
        }
    }

    /// Whether `presented` is the token.
    pub fn verify(&self, presented: &str) -> bool {
        let h = digest(&SHA256, presented.as_bytes());
        aws_lc_rs::constant_time::verify_slices_are_equal(h.as_ref(), &self.hash).is_ok()
    }

    /// Replaces the token with a new random one and returns it.
    pub fn rotate(&mut self) -> Result<String, TokenError> {
        let token = new_token()?;
        self.set(&token)?;
        Ok(token)
    }

    fn set(&mut self, token: &str) -> Result<(), TokenError> {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
        write_atomic(
            &self.path,
            format!("{}\n", hash_hex(token)).as_bytes(),
            0o600,
        )
        .map_err(|source| TokenError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.hash = hash;
        Ok(())
    }
}

fn new_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TokenError::Random)?;
    Ok(hex(&bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits as 32 bytes.
pub fn parse_hex(s: &str) -> Option<[u8; 32]> {
    parse_hex_bytes(s)?.try_into().ok()
}

/// Hex digits (an even number of them) as bytes.
pub fn parse_hex_bytes(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_verified_rotated_and_never_stored_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let (store, shown) = TokenStore::open(dir.path(), None).unwrap();
        let token = shown.unwrap();
        assert_eq!(token.len(), 64);
        assert!(store.verify(&token));
        assert!(!store.verify("wrong"));
        assert!(!store.verify(""));
        let on_disk = std::fs::read_to_string(dir.path().join("admin/token.sha256")).unwrap();
        assert!(!on_disk.contains(&token));

        let (mut again, shown) = TokenStore::open(dir.path(), None).unwrap();
        assert!(shown.is_none(), "shown only once");
        assert!(again.verify(&token));
        let new = again.rotate().unwrap();
        assert!(again.verify(&new) && !again.verify(&token));
        let (reopened, _) = TokenStore::open(dir.path(), None).unwrap();
        assert!(reopened.verify(&new));
    }

    #[test]
    fn a_preset_token_is_used_only_the_first_time() {
        let dir = tempfile::tempdir().unwrap();
        let (store, shown) = TokenStore::open(dir.path(), Some("first-boot-token")).unwrap();
        assert_eq!(shown.as_deref(), Some("first-boot-token"));
        assert!(store.verify("first-boot-token"));
        let (store, shown) = TokenStore::open(dir.path(), Some("other")).unwrap();
        assert!(shown.is_none() && store.verify("first-boot-token") && !store.verify("other"));
    }

    #[test]
    fn a_corrupt_hash_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("admin")).unwrap();
        std::fs::write(dir.path().join("admin/token.sha256"), "xyz").unwrap();
        assert!(matches!(
            TokenStore::open(dir.path(), None),
            Err(TokenError::Corrupt(_))
        ));
    }

    #[test]
    fn a_hash_made_elsewhere_is_the_token() {
        // The image builder stores hash_hex(token) for the first boot.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(HASH_FILE);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, format!("{}\n", hash_hex("first-boot"))).unwrap();
        let (store, shown) = TokenStore::open(dir.path(), None).unwrap();
        assert!(shown.is_none(), "an existing token is not shown");
        assert!(store.verify("first-boot"));
        assert!(!store.verify("first-boot "));
    }
}
