//! edgebox: a TLS-terminating HTTP load balancer and static-site server that is
//! the whole userland of an appliance.
//!
//! This crate is the `edgebox` binary's code. The data plane is one glommio
//! executor per core ([`server`]), each with its own `SO_REUSEPORT` listeners,
//! backend connection pools and snapshot view; requests go through the phases
//! in [`proxy`]. The control plane ([`control`]) is one tokio thread. Config is
//! parsed and checked in [`config`] and compiled into an immutable
//! [`snapshot::Snapshot`] that cores read without locks.
//!
//! Needs: Linux with io_uring (5.8+), and locked memory of about 3 MiB per core
//! (raised automatically when permitted).
//!
//! ```text
//! edgebox serve                       # embedded default: https://127.0.0.1:8443/
//! edgebox serve --config edgebox.json --cores 4
//! edgebox check-config edgebox.json
//! ```

pub mod acme;
pub mod admin;
pub mod balance;
pub mod clock;
pub mod config;
pub mod control;
pub mod ctl;
pub mod discovery;
pub mod failover;
pub mod fsutil;
pub mod fuzzing;
pub mod hostmap;
pub mod init;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod publish;
pub mod replication;
pub mod response;
pub mod router;
pub mod rt;
pub mod server;
pub mod snapshot;
pub mod static_files;
pub mod store;
pub mod tls;
pub mod update;
pub mod upstream;
