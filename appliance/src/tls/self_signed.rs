//! The self-signed `localhost` certificate of the embedded default config.

use std::path::{Path, PathBuf};

use crate::fsutil::write_atomic;

/// Why the default certificate could not be made or kept.
#[derive(Debug, thiserror::Error)]
pub enum SelfSignedError {
    /// rcgen could not make the key or the certificate.
    #[error("could not generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The data directory is not writable.
    #[error("could not write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Returns the certificate and key paths `<data>/tls/<stem>.crt` and `.key`,
/// generating an ECDSA P-256 certificate for `localhost`, `127.0.0.1`, `::1`
/// and `extra` names the first time, and reusing it afterwards. The third
/// value says whether it was made now.
pub fn ensure(
    data_dir: &Path,
    stem: &str,
    extra: &[String],
) -> Result<(PathBuf, PathBuf, bool), SelfSignedError> {
    let dir = data_dir.join("tls");
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    if cert.is_file() && key.is_file() {
        return Ok((cert, key, false));
    }
    let mut names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    names.extend(extra.iter().cloned());
    let generated = rcgen::generate_simple_self_signed(names)?;
    let write = |path: &Path, bytes: &[u8], mode: u32| {
        write_atomic(path, bytes, mode).map_err(|source| SelfSignedError::Write {
            path: path.to_owned(),
            source,
        })
    };
    // Key first: a certificate on disk always has its key beside it.
    write(
        &key,
        generated.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write(&cert, generated.cert.pem().as_bytes(), 0o644)?;
    Ok((cert, key, true))
}
