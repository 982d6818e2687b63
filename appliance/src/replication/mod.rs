//! Replication between appliances (`docs/replication.md`): sites, the
//! shared config, the host map and the session-ticket secret, over mutually
//! authenticated QUIC.
//!
//! - [`identity`]: this appliance's key pair, fingerprints, the pinned
//!   verifiers and the QUIC configs.
//! - [`shared`]: what of the config and host map is shared, as catalog
//!   values (pure).
//! - [`replica`]: the protocol's node and catalog as the control plane
//!   keeps them; every change, local or a peer's, passes there.
//! - [`net`]: the replicator on the control thread (the transport).
//! - [`apply`]: a peer's item applied through the control plane.
//! - [`bucket`]: the bandwidth cap (pure).
//! - [`status`]: what `GET /v1/replication`, `edgebox ctl peers` and the
//!   metrics show.
//!
//! The protocol itself (catalog, digests, pulls, fetching, the wire format)
//! is `edgebox_storage::replication`, without IO.

pub mod apply;
pub mod bucket;
pub mod identity;
pub mod net;
pub mod replica;
pub mod shared;
pub mod status;

pub use identity::Identity;
pub use replica::Replica;

/// Binds `replication.listen` (UDP), ready for the endpoint.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}
