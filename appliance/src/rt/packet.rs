//! Link-layer frames through an `AF_PACKET` socket, for what only a frame
//! can say (gratuitous ARP). rustix has no `sockaddr_ll`; this module is
//! the one place edgebox describes one. Also what a raw IPv6 socket says
//! only in ancillary data (a packet's destination and hop limit), which
//! neither rustix nor socket2 reads.

use std::io;
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

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

/// A packet off a raw IPv6 socket with [`want_v6_info`] set.
#[derive(Debug, Clone, Copy)]
pub struct Received6 {
    pub len: usize,
    pub src: Ipv6Addr,
    /// The IPv6 header's destination (`IPV6_PKTINFO`).
    pub dst: Option<Ipv6Addr>,
    /// The IPv6 header's hop limit (`IPV6_HOPLIMIT`).
    pub hop_limit: Option<u8>,
}

fn setsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` lives for the call; the length given is its size, and
    // the kernel only reads that many bytes from the pointer.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks the kernel to hand over each packet's destination and hop limit.
pub fn want_v6_info(fd: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
    setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)
}

/// One packet (its payload into `buf`), with what the ancillary data says;
/// blocks as the socket does (`SO_RCVTIMEO`).
pub fn recv_v6(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received6> {
    // u64s: the control buffer must be aligned for `cmsghdr`.
    let mut control = [0u64; 32];
    let mut from: libc::sockaddr_in6 = zeroed_sockaddr_in6();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero `msghdr` is a valid value (null pointers, zero
    // lengths); every pointer set below outlives the `recvmsg` call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_in6).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` describes buffers owned by this frame, of the lengths
    // given; the kernel writes at most that much into each.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut got = Received6 {
        len: n as usize,
        src: Ipv6Addr::from(from.sin6_addr.s6_addr),
        dst: None,
        hop_limit: None,
    };
    // SAFETY: the CMSG_* functions walk the control buffer the kernel just
    // filled, within `msg_controllen` (which it set); each message's data
    // is read with `read_unaligned`, at the type the kernel documents for
    // that level and type (ipv6(7)).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info: libc::in6_pktinfo = std::ptr::read_unaligned(data.cast());
                    got.dst = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                    let hops: libc::c_int = std::ptr::read_unaligned(data.cast());
                    got.hop_limit = u8::try_from(hops).ok();
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(got)
}

fn zeroed_sockaddr_in6() -> libc::sockaddr_in6 {
    // SAFETY: `sockaddr_in6` is plain integers and byte arrays; all zero
    // is a valid value of it.
    unsafe { std::mem::zeroed() }
}
