//! Interface set-up over rtnetlink: link up, a static address, a default
//! route. The messages are built by pure functions ([`requests`]) and sent by
//! [`apply`], which reads the kernel's answer to each.

use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::cmdline::NetConfig;

/// A request and how it reads in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub what: String,
    pub message: RouteNetlinkMessage,
    /// Netlink flags beside `NLM_F_REQUEST | NLM_F_ACK`.
    pub flags: u16,
}

/// Brings the link with `index` up.
pub fn link_up(name: &str, index: u32) -> Request {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    Request {
        what: format!("{name}: set link up"),
        message: RouteNetlinkMessage::SetLink(msg),
        flags: 0,
    }
}

/// Link up, the address, and the default route when there is a gateway.
pub fn requests(net: &NetConfig, index: u32) -> Vec<Request> {
    let family = family(net.address);
    let mut addr = AddressMessage::default();
    addr.header.family = family;
    addr.header.prefix_len = net.prefix;
    addr.header.index = index;
    addr.attributes.push(AddressAttribute::Local(net.address));
    addr.attributes.push(AddressAttribute::Address(net.address));
    let mut out = vec![
        link_up(&net.iface, index),
        Request {
            what: format!("{}: add address {}/{}", net.iface, net.address, net.prefix),
            message: RouteNetlinkMessage::NewAddress(addr),
            flags: NLM_F_CREATE | NLM_F_REPLACE,
        },
    ];
    if let Some(gw) = net.gateway {
        let mut route = RouteMessage::default();
        route.header = RouteHeader {
            address_family: family,
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Static,
            scope: RouteScope::Universe,
            kind: RouteType::Unicast,
            ..RouteHeader::default()
        };
        route
            .attributes
            .push(RouteAttribute::Gateway(route_address(gw)));
        route.attributes.push(RouteAttribute::Oif(index));
        out.push(Request {
            what: format!("{}: add default route via {gw}", net.iface),
            message: RouteNetlinkMessage::NewRoute(route),
            flags: NLM_F_CREATE | NLM_F_EXCL,
        });
    }
    out
}

/// Removes an address (a DHCP lease that ended).
pub fn del_address(iface: &str, index: u32, address: IpAddr, prefix: u8) -> Request {
    let mut addr = AddressMessage::default();
    addr.header.family = family(address);
    addr.header.prefix_len = prefix;
    addr.header.index = index;
    addr.attributes.push(AddressAttribute::Local(address));
    addr.attributes.push(AddressAttribute::Address(address));
    Request {
        what: format!("{iface}: remove address {address}/{prefix}"),
        message: RouteNetlinkMessage::DelAddress(addr),
        flags: 0,
    }
}

/// [`requests`] for an address that may be there already (a renewed or
/// changed DHCP lease): the default route replaces any other.
pub fn replace_requests(net: &NetConfig, index: u32) -> Vec<Request> {
    let mut out = requests(net, index);
    for r in &mut out {
        if matches!(r.message, RouteNetlinkMessage::NewRoute(_)) {
            r.flags = NLM_F_CREATE | NLM_F_REPLACE;
        }
    }
    out
}

fn family(a: IpAddr) -> AddressFamily {
    if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_address(a: IpAddr) -> RouteAddress {
    match a {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

/// The bytes of a request with sequence number `seq`.
pub fn encode(req: &Request, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | req.flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(req.message.clone()));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// Sends the requests in order; the first the kernel refuses stops it.
pub fn apply(requests: &[Request]) -> Result<(), String> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| format!("netlink socket: {e}"))?;
    socket
        .bind_auto()
        .and_then(|_| socket.connect(&SocketAddr::new(0, 0)))
        .map_err(|e| format!("netlink socket: {e}"))?;
    let mut buf = vec![0u8; 8192];
    for (seq, req) in (1u32..).zip(requests) {
        socket
            .send(&encode(req, seq), 0)
            .map_err(|e| format!("{}: {e}", req.what))?;
        let n = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(|e| format!("{}: {e}", req.what))?;
        let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..n])
            .map_err(|e| format!("{}: unreadable answer: {e}", req.what))?;
        if let NetlinkPayload::Error(e) = answer.payload {
            if let Some(code) = e.code {
                let err = std::io::Error::from_raw_os_error(-code.get());
                return Err(format!("{}: {err}", req.what));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(gw: Option<&str>) -> NetConfig {
        NetConfig {
            iface: "eth0".into(),
            address: "10.0.2.15".parse().unwrap(),
            prefix: 24,
            gateway: gw.map(|g| g.parse().unwrap()),
        }
    }

    #[test]
    fn an_address_with_a_gateway_is_three_requests() {
        let reqs = requests(&net(Some("10.0.2.2")), 2);
        let what: Vec<&str> = reqs.iter().map(|r| r.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "eth0: set link up",
                "eth0: add address 10.0.2.15/24",
                "eth0: add default route via 10.0.2.2"
            ]
        );
        let RouteNetlinkMessage::NewRoute(route) = &reqs[2].message else {
            panic!("{:?}", reqs[2]);
        };
        assert_eq!(route.header.destination_prefix_length, 0, "default route");
        assert!(route.attributes.contains(&RouteAttribute::Oif(2)));
        assert_eq!(requests(&net(None), 2).len(), 2);
    }

    #[test]
    fn encoded_requests_decode_to_themselves() {
        for (seq, req) in (7u32..).zip(requests(&net(Some("10.0.2.2")), 3)) {
            let bytes = encode(&req, seq);
            let back = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap();
            assert_eq!(back.header.sequence_number, seq);
            assert_eq!(back.header.flags, NLM_F_REQUEST | NLM_F_ACK | req.flags);
            assert_eq!(back.payload, NetlinkPayload::InnerMessage(req.message));
        }
    }
}
