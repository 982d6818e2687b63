//! Side-by-side benchmarks of edgebox against nginx, h2o and HAProxy, and
//! micro-benchmarks (not yet implemented).
//!
//! This crate will start every server itself with generated configs on the
//! same certificates and backend, drive them with wrk, h2load and a rustls
//! handshake client, and report ratios as a table, CSV and chart. See
//! `DESIGN.md`, "Tests"; the work is tracked by the issue "Benchmarks side by
//! side with nginx, h2o and HAProxy".
#![forbid(unsafe_code)]
