//! End-to-end tests that boot the real appliance image in QEMU (not yet
//! implemented).
//!
//! This crate will hold the fixtures that build on each other (image, VM,
//! configured, booted), the private test network (a network namespace with a
//! bridge and tap devices, never bridged to the host's interfaces), and the
//! tests that run against booted appliances. See `DESIGN.md`, "Tests"; the work
//! is tracked by the issue "End-to-end tests on booted appliances".
#![forbid(unsafe_code)]
