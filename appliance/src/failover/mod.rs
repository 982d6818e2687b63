//! Active-backup failover of virtual addresses by VRRPv3 (RFC 5798),
//! interoperable with keepalived: [`packet`] (the adverts' bytes) and
//! [`machine`] (the state machine) are pure; the IO that sends, receives
//! and moves addresses drives them.

mod arp;
pub mod auth;
pub mod guard;
pub mod io;
pub mod machine;
mod nd;
mod netlink;
pub mod packet;

pub use io::{Slot, Status};
