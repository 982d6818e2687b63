//! The image the test suites boot: built once per test run (the first test
//! to ask builds it; the others, in this process or a later test binary, find
//! it up to date) with fixed first-boot settings.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use anyhow::Result;

use crate::build::{self, BuildOptions, Built};
use crate::kernel::KernelSource;

/// The test image's first-boot admin token.
pub const TOKEN: &str = "edgebox-test-token";
/// The test image's address on `eth0` and its gateway: QEMU's user network
/// (10.0.2.0/24, gateway 10.0.2.2), which the qemu-tests' private network
/// copies.
pub const ADDRESS: [u8; 4] = [10, 0, 2, 15];
pub const GATEWAY: [u8; 4] = [10, 0, 2, 2];
pub const PREFIX: u8 = 24;

/// The options of the shared test image, written to `output`.
pub fn options(output: PathBuf) -> BuildOptions {
    let [a, b, c, d] = ADDRESS;
    let [g, h, i, j] = GATEWAY;
    BuildOptions {
        kernel: KernelSource::Cloud,
        binary: None,
        output,
        qcow2: false,
        data_bytes: 256 << 20,
        net: vec![format!("eth0,{a}.{b}.{c}.{d}/{PREFIX},gw={g}.{h}.{i}.{j}")],
        admin_token: Some(TOKEN.to_owned()),
        kernel_args: Vec::new(),
        work: build::target_dir().join("edgebox-image"),
        image_version: Some(VERSION.to_owned()),
        signing_key: Some(signing_key().expect("the test signing key")),
        allow_unsigned_updates: false,
    }
}

/// The shared test image's version.
pub const VERSION: &str = "test-1";

/// The test images' update key, made from a fixed seed (a test key,
/// nothing else trusts it), written under the target directory.
pub fn signing_key() -> Result<PathBuf> {
    let path = build::target_dir().join("edgebox-image/test/update.key");
    let key = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(
        blake3::hash(b"edgebox test update key").as_bytes(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pem = build::signing_key_pem(&key)?;
    if std::fs::read_to_string(&path).ok().as_deref() != Some(pem.as_str()) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        edgebox::fsutil::write_atomic(&path, pem.as_bytes(), 0o600)?;
    }
    Ok(path)
}

/// Builds (or finds up to date) the shared test image. Tests asking at
/// once wait for the first one's build.
pub fn shared_image() -> Result<&'static Built> {
    static IMAGE: OnceLock<Built> = OnceLock::new();
    static BUILDING: Mutex<()> = Mutex::new(());
    let _turn = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(built) = IMAGE.get() {
        return Ok(built);
    }
    let output = build::target_dir().join("edgebox-image/test/edgebox.img");
    let built = build::build(&options(output))?;
    Ok(IMAGE.get_or_init(|| built))
}

/// A loopback port that was free a moment ago, for QEMU to forward from.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
