//! Whether a new client connection is served: under `client.max_connections`
//! (one count for the process, an atomic touched once when a connection
//! opens and once when it closes) and under
//! `client.max_connections_per_address` (each core its share, counted in its
//! own map, like the pools' limits: no core waits on another). A slot is
//! held for the connection's life and given back when dropped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A place under the process-wide cap.
#[derive(Debug)]
pub struct Slot<'a>(&'a AtomicUsize);

/// Takes a place among `open` if fewer than `max` are taken.
pub fn enter(open: &AtomicUsize, max: usize) -> Option<Slot<'_>> {
    if open.fetch_add(1, Ordering::Relaxed) >= max {
        open.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    Some(Slot(open))
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One core's connections by client address.
#[derive(Debug, Default)]
pub struct PerAddress(RefCell<HashMap<IpAddr, usize>>);

/// A place under one address's cap on this core.
#[derive(Debug)]
pub struct AddressSlot<'a> {
    table: &'a PerAddress,
    ip: IpAddr,
}

impl PerAddress {
    /// This core's share of a cap of `max` over `cores` cores.
    pub fn share(max: usize, cores: usize) -> usize {
        max.div_ceil(cores.max(1))
    }

    /// Takes a place for `ip` if it has fewer than `max` here.
    pub fn enter(&self, ip: IpAddr, max: usize) -> Option<AddressSlot<'_>> {
        let mut t = self.0.borrow_mut();
        let n = t.entry(ip).or_default();
        if *n >= max {
            if *n == 0 {
                t.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(AddressSlot { table: self, ip })
    }

    /// Addresses with a connection open here.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }
}

impl Drop for AddressSlot<'_> {
    fn drop(&mut self) {
        let mut t = self.table.0.borrow_mut();
        if let Some(n) = t.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_global_cap_refuses_the_excess_and_frees_on_drop() {
        let open = AtomicUsize::new(0);
        let held: Vec<_> = (0..3).map(|_| enter(&open, 3).unwrap()).collect();
        assert!(enter(&open, 3).is_none());
        assert_eq!(open.load(Ordering::Relaxed), 3, "a refusal takes nothing");
        drop(held);
        assert_eq!(open.load(Ordering::Relaxed), 0);
        assert!(enter(&open, 3).is_some());
    }

    #[test]
    fn each_address_has_its_own_count_and_none_is_kept_when_closed() {
        let t = PerAddress::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let a1 = t.enter(a, 2).unwrap();
        let a2 = t.enter(a, 2).unwrap();
        assert!(t.enter(a, 2).is_none());
        let b1 = t.enter(b, 2).unwrap();
        assert_eq!(t.len(), 2);
        drop(a1);
        let a3 = t.enter(a, 2).unwrap();
        drop((a2, a3, b1));
        assert_eq!(t.len(), 0, "no entry left behind");
        assert!(t.enter(a, 0).is_none());
        assert_eq!(t.len(), 0, "a refusal leaves no entry");
        assert_eq!(PerAddress::share(100, 3), 34);
        assert_eq!(PerAddress::share(1, 4), 1);
    }
}
