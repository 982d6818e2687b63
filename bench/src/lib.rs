//! Benchmarks of edgebox.
//!
//! - `cargo run -p bench --release -- [--quick]` (`src/main.rs`): edgebox side
//!   by side with nginx, h2o and HAProxy. Every server is started here with a
//!   generated config on the same certificate, files and backend, pinned to
//!   core 0; wrk, h2load and this crate's rustls client load it from core 1.
//!   The results are a markdown table, CSV files and an SVG chart of ratios.
//! - `cargo bench -p bench --bench micro` (`benches/micro.rs`, criterion):
//!   host → pod lookup in a 1 000 000-entry host map, route matching, BLAKE3
//!   hashing and manifest lookup, each on the code the data plane runs.
//!
//! docs/benchmarks.md has the figures and how they were made.
#![forbid(unsafe_code)]

pub mod load;
pub mod procfs;
pub mod report;
pub mod runner;
pub mod servers;
pub mod tls_client;
