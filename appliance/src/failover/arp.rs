//! Gratuitous ARP: "10.0.2.100 is at this MAC", broadcast, so that switches
//! and neighbours send the virtual address's traffic here at once instead
//! of to the old master until their caches expire.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

/// The ARP request a gratuitous ARP is (RFC 5227, 3): sender and target
/// protocol address both `ip`, sender hardware address `mac`.
pub fn frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut f = [0u8; 28];
    f[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[4] = 6;
    f[5] = 4;
    f[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    f[8..14].copy_from_slice(&mac);
    f[14..18].copy_from_slice(&ip.octets());
    // Target hardware address: zero, as RFC 5227 asks.
    f[24..28].copy_from_slice(&ip.octets());
    f
}

#[cfg(test)]
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Broadcasts a gratuitous ARP for `ip` on interface `ifindex`, whose MAC
/// address is `mac`.
pub fn gratuitous(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> Result<(), String> {
    let to = crate::rt::packet::LinkAddr {
        ifindex,
        ethertype: 0x0806,
        mac: [0xff; 6],
    };
    crate::rt::packet::send_frame(&to, &frame(mac, ip)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gratuitous_arp_names_the_address_as_sender_and_target() {
        let mac = parse_mac("52:54:00:12:34:56").unwrap();
        let f = frame(mac, Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(
            f,
            [
                0, 1, 8, 0, 6, 4, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 10, 0, 2, 100, 0, 0, 0, 0,
                0, 0, 10, 0, 2, 100
            ]
        );
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
    }
}
