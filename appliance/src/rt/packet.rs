//! Link-layer frames through an `AF_PACKET` socket, for what only a frame
//! can say (gratuitous ARP). rustix has no `sockaddr_ll`; this module is
//! the one place edgebox describes one.

use std::io;

use rustix::fd::OwnedFd;
use rustix::net::addr::{SocketAddrArg, SocketAddrLen, SocketAddrOpaque};
use rustix::net::{AddressFamily, Protocol, SocketType};

/// `struct sockaddr_ll` (packet(7)).
#[repr(C)]
struct SockaddrLl {
    family: u16,
    /// The EtherType, big-endian.
    protocol: u16,
    ifindex: i32,
    hatype: u16,
    pkttype: u8,
    halen: u8,
    addr: [u8; 8],
}

/// Where a frame goes: an interface, an EtherType and a link address.
#[derive(Debug, Clone, Copy)]
pub struct LinkAddr {
    pub ifindex: u32,
    pub ethertype: u16,
    pub mac: [u8; 6],
}

// SAFETY: `with_sockaddr` calls `f` with a pointer to a `SockaddrLl` on its
// own stack and that struct's size: readable for the whole length, for the
// duration of the call, and laid out as the kernel's `sockaddr_ll`
// (`repr(C)`, the same field types and order).
unsafe impl SocketAddrArg for LinkAddr {
    unsafe fn with_sockaddr<R>(
        &self,
        f: impl FnOnce(*const SocketAddrOpaque, SocketAddrLen) -> R,
    ) -> R {
        let mut addr = [0u8; 8];
        addr[..6].copy_from_slice(&self.mac);
        let sll = SockaddrLl {
            family: AddressFamily::PACKET.as_raw(),
            protocol: self.ethertype.to_be(),
            ifindex: self.ifindex as i32,
            hatype: 0,
            pkttype: 0,
            halen: 6,
            addr,
        };
        f(
            (&sll as *const SockaddrLl).cast(),
            std::mem::size_of::<SockaddrLl>() as SocketAddrLen,
        )
    }
}

/// Sends `payload` to `to` in one frame; the kernel adds the Ethernet
/// header (a `SOCK_DGRAM` packet socket).
pub fn send_frame(to: &LinkAddr, payload: &[u8]) -> io::Result<()> {
    let protocol = Protocol::from_raw(
        std::num::NonZeroU32::new(u32::from(to.ethertype.to_be()))
            .ok_or(io::ErrorKind::InvalidInput)?,
    );
    let fd: OwnedFd =
        rustix::net::socket(AddressFamily::PACKET, SocketType::DGRAM, Some(protocol))?;
    rustix::net::sendto(&fd, payload, rustix::net::SendFlags::empty(), to)?;
    Ok(())
}
