//! The virtual addresses on the interface, over rtnetlink (the requests
//! are built as `init::net` builds PID 1's).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::init::net::{apply, Request};

/// Adding (or removing) `net` on the interface with `index`.
pub fn request(index: u32, iface: &str, net: IpNet, add: bool) -> Request {
    let mut msg = AddressMessage::default();
    msg.header.family = match net.addr() {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.prefix_len = net.prefix_len();
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(net.addr()));
    msg.attributes.push(AddressAttribute::Address(net.addr()));
    if net.addr().is_ipv6() {
        // No duplicate address detection: a tentative address would not
        // serve for a second or more after the takeover.
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    if add {
        Request {
            what: format!("{iface}: add virtual address {net}"),
            message: RouteNetlinkMessage::NewAddress(msg),
            flags: NLM_F_CREATE | NLM_F_REPLACE,
        }
    } else {
        Request {
            what: format!("{iface}: remove virtual address {net}"),
            message: RouteNetlinkMessage::DelAddress(msg),
            flags: 0,
        }
    }
}

/// Adds or removes every one of `nets`; removing one that is not there is
/// not an error.
pub fn addresses(index: u32, iface: &str, nets: &[IpNet], add: bool) -> Result<(), String> {
    let mut first_error = None;
    for net in nets {
        if let Err(e) = apply(&[request(index, iface, *net, add)]) {
            let absent = e.contains("Cannot assign requested address");
            if add || !absent {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The first IPv4 address of the interface with `index`.
pub fn primary_v4(index: u32) -> Result<Option<IpAddr>, String> {
    let mut dump = AddressMessage::default();
    dump.header.family = AddressFamily::Inet;
    let mut found: Option<Ipv4Addr> = None;
    for m in ask(RouteNetlinkMessage::GetAddress(dump), true)? {
        if let RouteNetlinkMessage::NewAddress(a) = m {
            if a.header.index == index && found.is_none() {
                found = a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Local(IpAddr::V4(v4)) => Some(*v4),
                    _ => None,
                });
            }
        }
    }
    Ok(found.map(IpAddr::V4))
}

/// The link-local IPv6 address (fe80::/10) of the interface with `index`:
/// the source of IPv6 adverts (RFC 5798, 5.1.2.1).
pub fn link_local_v6(index: u32) -> Result<Option<Ipv6Addr>, String> {
    let mut dump = AddressMessage::default();
    dump.header.family = AddressFamily::Inet6;
    for m in ask(RouteNetlinkMessage::GetAddress(dump), true)? {
        if let RouteNetlinkMessage::NewAddress(a) = m {
            if a.header.index != index {
                continue;
            }
            let found = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(IpAddr::V6(v6))
                    if v6.segments()[0] & 0xffc0 == 0xfe80 =>
                {
                    Some(*v6)
                }
                _ => None,
            });
            if found.is_some() {
                return Ok(found);
            }
        }
    }
    Ok(None)
}

/// The link-layer (MAC) address of the interface with `index`. Asked of
/// the kernel, not read from sysfs: /sys shows the interfaces of the
/// network namespace it was mounted in, which need not be this process's.
pub fn mac_of(index: u32) -> Result<[u8; 6], String> {
    let mut get = LinkMessage::default();
    get.header.index = index;
    for m in ask(RouteNetlinkMessage::GetLink(get), false)? {
        if let RouteNetlinkMessage::NewLink(l) = m {
            for attr in &l.attributes {
                if let LinkAttribute::Address(a) = attr {
                    if let Ok(mac) = <[u8; 6]>::try_from(&a[..]) {
                        return Ok(mac);
                    }
                }
            }
        }
    }
    Err(format!("interface {index} has no MAC address"))
}

/// Sends one request (a dump if `dump`) and collects the kernel's answers.
fn ask(request: RouteNetlinkMessage, dump: bool) -> Result<Vec<RouteNetlinkMessage>, String> {
    let err = |e: std::io::Error| format!("asking the kernel about the interface: {e}");
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(err)?;
    socket
        .bind_auto()
        .and_then(|_| socket.connect(&SocketAddr::new(0, 0)))
        .map_err(err)?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(request));
    msg.finalize();
    let mut out = vec![0; msg.buffer_len()];
    msg.serialize(&mut out);
    socket.send(&out, 0).map_err(err)?;
    let mut answers = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0).map_err(err)?;
        let mut at = 0;
        while at < n {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[at..n])
                .map_err(|e| format!("asking the kernel about the interface: {e}"))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(answers),
                NetlinkPayload::Error(e) => {
                    return Err(format!("asking the kernel about the interface: {e:?}"))
                }
                NetlinkPayload::InnerMessage(inner) => {
                    answers.push(inner);
                    if !dump {
                        return Ok(answers);
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_and_removing_a_virtual_address_are_one_request_each() {
        let net: IpNet = "10.0.2.100/24".parse().unwrap();
        let add = request(3, "eth0", net, true);
        assert_eq!(add.what, "eth0: add virtual address 10.0.2.100/24");
        let RouteNetlinkMessage::NewAddress(m) = &add.message else {
            panic!("{add:?}");
        };
        assert_eq!((m.header.index, m.header.prefix_len), (3, 24));
        let del = request(3, "eth0", net, false);
        assert!(matches!(del.message, RouteNetlinkMessage::DelAddress(_)));
    }
}
