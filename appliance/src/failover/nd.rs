//! Unsolicited neighbour advertisements (RFC 4861, 7.2.6): IPv6's
//! gratuitous ARP. "fd00::100 is at this MAC, override your cache", sent to
//! all nodes, so that neighbours move the virtual address's traffic here.
#![forbid(unsafe_code)]

use std::net::{Ipv6Addr, SocketAddrV6};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// All nodes on the link.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The ICMPv6 message: type 136, the Override flag (not Solicited, not a
/// router), the target, and the target link-layer address option. The
/// kernel fills in the checksum (a raw ICMPv6 socket always does).
pub fn message(mac: [u8; 6], target: Ipv6Addr) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0] = 136;
    m[4] = 0x20; // O: override
    m[8..24].copy_from_slice(&target.octets());
    m[24] = 2; // target link-layer address
    m[25] = 1; // in units of 8 bytes
    m[26..32].copy_from_slice(&mac);
    m
}

/// Sends one for `target` on interface `ifindex` (MAC `mac`), from its
/// link-local address `source`, with hop limit 255 as neighbours require.
pub fn unsolicited(
    ifindex: u32,
    mac: [u8; 6],
    source: Ipv6Addr,
    target: Ipv6Addr,
) -> Result<(), String> {
    let e = |what: &str, e: std::io::Error| format!("neighbour advertisement: {what}: {e}");
    let s =
        Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).map_err(|x| e("socket", x))?;
    s.set_multicast_hops_v6(255)
        .map_err(|x| e("hop limit", x))?;
    s.set_multicast_if_v6(ifindex)
        .map_err(|x| e("interface", x))?;
    s.bind(&SockAddr::from(SocketAddrV6::new(source, 0, 0, ifindex)))
        .map_err(|x| e("binding the link-local source", x))?;
    let to = SockAddr::from(SocketAddrV6::new(ALL_NODES, 0, 0, ifindex));
    s.send_to(&message(mac, target), &to)
        .map_err(|x| e("sending", x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertisement_names_the_target_and_overrides() {
        let target: Ipv6Addr = "fd00:9::100".parse().unwrap();
        let m = message([2, 0, 0, 0, 0, 1], target);
        assert_eq!((m[0], m[1]), (136, 0), "neighbour advertisement, code 0");
        assert_eq!(m[4], 0x20, "override only: not a router, not solicited");
        assert_eq!(
            Ipv6Addr::from(<[u8; 16]>::try_from(&m[8..24]).unwrap()),
            target
        );
        assert_eq!(&m[24..32], &[2, 1, 2, 0, 0, 0, 0, 1]);
    }
}
