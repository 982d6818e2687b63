//! Binding every listening socket before any core starts.
//!
//! Each core gets its own `SO_REUSEPORT` socket per listener address, so the
//! kernel spreads connections across cores and no accept crosses cores. All of
//! them are bound here, on the main thread, so that an address in use is an
//! error before anything serves, and so that port 0 is resolved once: the first
//! socket takes a free port and the others join it.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Listener;

/// A listener address that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("listeners[{index}] ({name}): cannot listen on {address}: {source}")]
pub struct BindError {
    pub index: usize,
    pub name: String,
    pub address: SocketAddr,
    pub source: std::io::Error,
}

/// The bound sockets: for each core, `(listener index, socket)`.
#[derive(Debug)]
pub struct Bound {
    pub per_core: Vec<Vec<(usize, OwnedFd)>>,
    /// The actual address of each listener (port 0 resolved).
    pub addresses: Vec<SocketAddr>,
}

/// Binds `listeners` for `cores`. A listener on one of the failover's
/// `virtual` addresses is bound with `IP_FREEBIND`: the backup, which does
/// not hold the address, binds it too, and serves as soon as it takes it.
/// Any other address must be this host's, or binding fails.
pub fn bind(
    listeners: &[Listener],
    cores: usize,
    virtual_addresses: &[std::net::IpAddr],
) -> Result<Bound, BindError> {
    let mut per_core: Vec<Vec<(usize, OwnedFd)>> = (0..cores).map(|_| Vec::new()).collect();
    let mut addresses = Vec::with_capacity(listeners.len());
    for (index, l) in listeners.iter().enumerate() {
        let mut address = l.address;
        for sockets in per_core.iter_mut() {
            let free = virtual_addresses.contains(&address.ip());
            let socket = listen(address, free).map_err(|source| BindError {
                index,
                name: l.name.clone(),
                address,
                source,
            })?;
            if address.port() == 0 {
                if let Some(actual) = socket.local_addr().ok().and_then(|a| a.as_socket()) {
                    address = actual;
                }
            }
            sockets.push((index, socket.into()));
        }
        addresses.push(address);
    }
    Ok(Bound {
        per_core,
        addresses,
    })
}

fn listen(address: SocketAddr, freebind: bool) -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
        if freebind {
            socket.set_freebind_ipv6(true)?;
        }
    } else if freebind {
        socket.set_freebind(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

/// The virtual addresses of `failover`, for [`bind`].
pub fn virtual_addresses(failover: Option<&crate::config::Failover>) -> Vec<std::net::IpAddr> {
    failover
        .map(|f| f.virtual_addresses.iter().map(|n| n.addr()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol as P;

    fn listener(addr: &str) -> Listener {
        Listener {
            name: "l".into(),
            address: addr.parse().unwrap(),
            protocol: P::Http,
            redirect_to_https_port: None,
            proxy_protocol: None,
            trusted_proxies: Vec::new(),
        }
    }

    #[test]
    fn port_zero_is_shared_by_all_cores() {
        let bound = bind(&[listener("127.0.0.1:0"), listener("127.0.0.1:0")], 3, &[]).unwrap();
        assert_eq!(bound.per_core.len(), 3);
        let [a, b] = bound.addresses[..] else {
            panic!()
        };
        assert_ne!(a.port(), 0);
        assert_ne!(a.port(), b.port());
        for core in &bound.per_core {
            let ports: Vec<u16> = core
                .iter()
                .map(|(_, fd)| {
                    let s = Socket::from(fd.try_clone().unwrap());
                    s.local_addr().unwrap().as_socket().unwrap().port()
                })
                .collect();
            assert_eq!(ports, [a.port(), b.port()]);
        }
    }

    #[test]
    fn an_address_in_use_names_the_listener() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let err = bind(&[listener("127.0.0.1:0"), listener(&addr)], 1, &[]).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(err.to_string().contains(&addr), "{err}");
    }

    #[test]
    fn a_virtual_address_binds_before_this_host_holds_it_and_no_other_does() {
        // 192.0.2.0/24 (TEST-NET-1) is on no interface here.
        let absent = listener("192.0.2.77:0");
        let err = bind(std::slice::from_ref(&absent), 1, &[]).unwrap_err();
        assert_eq!(
            err.source.kind(),
            std::io::ErrorKind::AddrNotAvailable,
            "{err}"
        );
        let vip = "192.0.2.77".parse().unwrap();
        let bound = bind(&[absent], 2, &[vip]).unwrap();
        assert_eq!(bound.per_core.len(), 2);
    }
}
