//! Benchmarks of edgebox.
//!
//! Done: the micro-benchmarks (`benches/micro.rs`, criterion): host → pod
//! lookup in a 1 000 000-entry host map, route matching, BLAKE3 hashing and
//! manifest lookup, each on the code the data plane runs.
//!
//! To come (the issue "Benchmarks side by side with nginx, h2o and HAProxy"):
//! the side-by-side runner that starts every server itself with generated
//! configs on the same certificates and backend, drives them with wrk, h2load
//! and a rustls handshake client, and reports ratios as a table, CSV and
//! chart.
#![forbid(unsafe_code)]
