//! The `failover` section: this appliance's part in an active-backup pair
//! (docs/failover.md). Local to each appliance (priorities differ): it is
//! not replicated.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{within, ConfigError};

/// VRRPv3 on one interface for one virtual router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    /// The interface the virtual addresses live on, e.g. `eth0`.
    pub interface: String,
    /// The virtual router's ID, 1–255: the same on both appliances, unique
    /// on the network.
    pub vrid: u8,
    /// 1–254 (255: this appliance owns the addresses); the higher is master.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// How often the master advertises, in milliseconds (a multiple of 10,
    /// 10 to 40 950). The backup takes over after three missed adverts plus
    /// a skew.
    #[serde(default = "default_advert_ms")]
    pub advert_ms: u32,
    /// `ADDRESS/PREFIX`, all of one family.
    pub virtual_addresses: Vec<IpNet>,
    /// Unicast adverts to these (the other appliance); empty: multicast to
    /// 224.0.0.18 or ff02::12.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<IpAddr>,
    /// Whether a higher priority takes the addresses from a lower master.
    #[serde(default = "yes")]
    pub preempt: bool,
    /// After start, how long before this appliance preempts.
    #[serde(default)]
    pub preempt_delay_ms: u64,
    /// Before a planned handover (a release, or a stop), how long the master
    /// takes no new connection (their SYNs are dropped; clients send them
    /// again a second later, to the new master) so that none is in its
    /// handshake when the address moves; 0: accept to the last moment
    /// (about 100 ms of gap, and now and then a connection reset).
    #[serde(default)]
    pub handover_hold_ms: u64,
    /// Pools this appliance cannot serve without: while one of them has no
    /// healthy backend here, the advertised priority drops to 1, so that a
    /// backup that can serve takes over (with `preempt`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub critical_pools: Vec<String>,
    /// A secret shared by the two edgeboxes of the pair (16 to 256
    /// characters): their adverts then carry an HMAC and a sequence, and
    /// adverts without them are dropped. Not for a pair with keepalived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_key: Option<String>,
}

fn default_priority() -> u8 {
    100
}
/// 40 ms: with priority 100, the backup takes over 3 × 40 + 24 = 144 ms
/// after the master's last advert, so a client sees at most about 150 ms
/// of outage wherever in the advert cycle the master dies (the goal is
/// 200 ms); 25 adverts a second are nothing to the network.
fn default_advert_ms() -> u32 {
    40
}
fn yes() -> bool {
    true
}

impl Failover {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ok_name = !self.interface.is_empty()
            && self.interface.len() <= 15
            && !self.interface.contains(['/', ' ']);
        if !ok_name {
            return Err(ConfigError::new(
                "failover.interface",
                "must be an interface name (1 to 15 characters)",
            ));
        }
        within("failover.vrid", u64::from(self.vrid), 1, 255)?;
        within("failover.priority", u64::from(self.priority), 1, 255)?;
        within("failover.advert_ms", u64::from(self.advert_ms), 10, 40_950)?;
        if self.advert_ms % 10 != 0 {
            return Err(ConfigError::new(
                "failover.advert_ms",
                "must be a multiple of 10 (VRRP counts in centiseconds)",
            ));
        }
        within(
            "failover.preempt_delay_ms",
            self.preempt_delay_ms,
            0,
            3_600_000,
        )?;
        within("failover.handover_hold_ms", self.handover_hold_ms, 0, 5_000)?;
        let Some(first) = self.virtual_addresses.first() else {
            return Err(ConfigError::new(
                "failover.virtual_addresses",
                "needs at least one address",
            ));
        };
        let v4 = first.addr().is_ipv4();
        for (i, a) in self.virtual_addresses.iter().enumerate() {
            if a.addr().is_ipv4() != v4 {
                return Err(ConfigError::new(
                    format!("failover.virtual_addresses[{i}]"),
                    "all virtual addresses must be of one family (a second virtual router for the other)",
                ));
            }
        }
        if self.virtual_addresses.len() > 20 {
            return Err(ConfigError::new(
                "failover.virtual_addresses",
                "at most 20 per virtual router",
            ));
        }
        if self
            .auth_key
            .as_ref()
            .is_some_and(|k| !(16..=256).contains(&k.len()))
        {
            return Err(ConfigError::new(
                "failover.auth_key",
                "must be 16 to 256 characters",
            ));
        }
        for (i, p) in self.peers.iter().enumerate() {
            if p.is_ipv4() != v4 {
                return Err(ConfigError::new(
                    format!("failover.peers[{i}]"),
                    "must be of the virtual addresses' family",
                ));
            }
        }
        Ok(())
    }
}
