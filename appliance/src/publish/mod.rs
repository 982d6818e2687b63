//! `edgebox publish DIR --site NAME`: a directory becomes a site.
//!
//! Walks the directory, hashes every file locally, makes brotli and gzip copies
//! of text files (kept when at least 5 % smaller), asks the appliance which
//! blobs it lacks (`HEAD /v1/blobs/{hash}`), uploads only those on parallel
//! connections (each verified by the appliance against its hash), uploads the
//! manifest, and moves the site's ref. Until that last step the previous
//! generation serves; after it, the new one, whole.

mod compress;
mod content_type;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use bytes::Bytes;
use clap::Args;
use edgebox_storage::manifest::{normalize_path, CachePolicy};
use edgebox_storage::{FileEntry, Hash, Manifest, SiteSettings, Variant};
use http::Method;

use crate::ctl::{AdminArgs, CtlError, ReqBody};

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The directory to publish.
    dir: PathBuf,
    /// The site's name (routes serve it with `{"static": {"site": NAME}}`).
    #[arg(long)]
    site: String,
    /// The page for missing files (default: `404.html` if the directory has it).
    #[arg(long)]
    not_found: Option<String>,
    /// `Cache-Control: max-age` for ordinary files, in seconds.
    #[arg(long, default_value_t = 300)]
    max_age: u64,
    /// Path prefixes of fingerprinted assets, cached for a year as immutable.
    #[arg(long = "immutable")]
    immutable_prefixes: Vec<String>,
    /// Uploads in flight at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    #[command(flatten)]
    conn: AdminArgs,
}

/// A blob to make sure of: where its bytes come from.
enum Source {
    File(PathBuf),
    Bytes(Bytes),
}

pub fn run(args: PublishArgs, data: PathBuf) -> Result<(), CtlError> {
    let usage = |m: String| CtlError::Usage(m);
    edgebox_storage::sites::check_site_name(&args.site).map_err(|e| usage(e.to_string()))?;
    let mut files = BTreeMap::new();
    let mut blobs: BTreeMap<Hash, (Source, u64)> = BTreeMap::new();
    let mut total = 0u64;
    for entry in walkdir::WalkDir::new(&args.dir)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| usage(e.to_string()))?;
        if !entry.file_type().is_file() {
            if entry.file_type().is_symlink() {
                eprintln!("skipping symbolic link {}", entry.path().display());
            }
            continue;
        }
        let rel = entry.path().strip_prefix(&args.dir).unwrap_or(entry.path());
        let rel = rel
            .to_str()
            .ok_or_else(|| usage(format!("{}: not a UTF-8 path", entry.path().display())))?;
        let path = normalize_path(rel).map_err(|e| usage(format!("{rel}: {e}")))?;
        let bytes = std::fs::read(entry.path())
            .map_err(|e| usage(format!("{}: {e}", entry.path().display())))?;
        let hash = Hash::of(&bytes);
        let content_type = content_type::of(&path);
        let mut variants = BTreeMap::new();
        if content_type::compressible(content_type) {
            for (encoding, packed) in compress::variants(&bytes) {
                let v = Variant {
                    hash: Hash::of(&packed),
                    size: packed.len() as u64,
                };
                blobs.insert(v.hash, (Source::Bytes(Bytes::from(packed)), v.size));
                variants.insert(encoding, v);
            }
        }
        total += bytes.len() as u64;
        blobs.insert(
            hash,
            (Source::File(entry.path().to_owned()), bytes.len() as u64),
        );
        files.insert(
            path,
            FileEntry {
                hash,
                size: bytes.len() as u64,
                content_type: content_type.to_owned(),
                variants,
            },
        );
    }
    if files.is_empty() {
        return Err(usage(format!(
            "{}: no files to publish",
            args.dir.display()
        )));
    }
    let not_found = args.not_found.clone().or_else(|| {
        files
            .contains_key("404.html")
            .then(|| "404.html".to_owned())
    });
    let manifest = Manifest::new(
        files,
        SiteSettings {
            not_found,
            cache: CachePolicy {
                max_age_s: args.max_age,
                immutable_prefixes: args.immutable_prefixes.clone(),
            },
            ..SiteSettings::default()
        },
    );
    manifest.validate().map_err(|e| usage(e.to_string()))?;
    let manifest_bytes = Bytes::from(manifest.to_bytes());
    let manifest_hash = Hash::of(&manifest_bytes);

    // Which blobs the appliance lacks, then those uploaded in parallel.
    let client = args.conn.client(&data)?;
    let needed = blobs.len();
    let mut missing = Vec::new();
    for (hash, (source, size)) in blobs {
        if !client.exists(&format!("/v1/blobs/{hash}"))? {
            missing.push((hash, source, size));
        }
    }
    let uploaded_bytes: u64 = missing.iter().map(|(_, _, s)| s).sum();
    let uploaded = missing.len();
    let queue = Mutex::new(missing);
    let failure: Mutex<Option<CtlError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..args.parallel.clamp(1, 16) {
            s.spawn(|| {
                let client = match args.conn.client(&data) {
                    Ok(c) => c,
                    Err(e) => return record(&failure, e),
                };
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    let Some((hash, source, _)) = next else {
                        return;
                    };
                    let body = match source {
                        Source::Bytes(b) => ReqBody::Bytes(b),
                        Source::File(p) => match std::fs::File::open(&p) {
                            Ok(f) => ReqBody::File(f),
                            Err(e) => {
                                return record(
                                    &failure,
                                    CtlError::Usage(format!("{}: {e}", p.display())),
                                )
                            }
                        },
                    };
                    let path = format!("/v1/blobs/{hash}");
                    if let Err(e) = client.send(
                        Method::PUT,
                        &path,
                        body,
                        &[("content-type", "application/octet-stream")],
                    ) {
                        return record(&failure, e);
                    }
                    if failure.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    client.send(
        Method::PUT,
        &format!("/v1/blobs/{manifest_hash}"),
        ReqBody::Bytes(manifest_bytes),
        &[("content-type", "application/octet-stream")],
    )?;
    let body = serde_json::json!({ "manifest": manifest_hash }).to_string();
    let reply = client.send(
        Method::PUT,
        &format!("/v1/sites/{}", args.site),
        ReqBody::Bytes(Bytes::from(body)),
        &[("content-type", "application/json")],
    )?;
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
    println!(
        "published site {} generation {}: {} files ({} bytes); uploaded {} blobs ({} bytes), {} already there; manifest {}",
        args.site,
        reply["generation"],
        manifest.files.len(),
        total,
        uploaded,
        uploaded_bytes,
        needed - uploaded,
        manifest_hash,
    );
    Ok(())
}

fn record(slot: &Mutex<Option<CtlError>>, e: CtlError) {
    slot.lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert(e);
}
