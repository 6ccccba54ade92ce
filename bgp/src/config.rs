//! Per-session configuration: what we propose in our OPEN and what we
//! expect from the peer.

use netgauze_iana::address_family::AddressType;
use std::net::Ipv4Addr;

/// Address families this speaker knows (RFC 4760 AFI/SAFI pairs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ipv4Unicast,
    Ipv6Unicast,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4Unicast, Family::Ipv6Unicast];

    pub fn address_type(self) -> AddressType {
        match self {
            Family::Ipv4Unicast => AddressType::Ipv4Unicast,
            Family::Ipv6Unicast => AddressType::Ipv6Unicast,
        }
    }

    pub fn from_address_type(at: AddressType) -> Option<Self> {
        match at {
            AddressType::Ipv4Unicast => Some(Family::Ipv4Unicast),
            AddressType::Ipv6Unicast => Some(Family::Ipv6Unicast),
            _ => None,
        }
    }

    /// The RFC 4760 AFI and SAFI.
    pub fn afi_safi(self) -> (u16, u8) {
        match self {
            Family::Ipv4Unicast => (1, 1),
            Family::Ipv6Unicast => (2, 1),
        }
    }

    pub fn from_afi_safi(afi: u16, safi: u8) -> Option<Self> {
        match (afi, safi) {
            (1, 1) => Some(Family::Ipv4Unicast),
            (2, 1) => Some(Family::Ipv6Unicast),
            _ => None,
        }
    }
}

/// ADD-PATH directions for one family (RFC 7911 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddPathMode {
    pub send: bool,
    pub receive: bool,
}

/// Graceful restart as advertised by us (RFC 4724 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestartConfig {
    /// Seconds the peer should keep our routes while we restart (12 bits).
    pub restart_time: u16,
    /// Set the Restart State bit: we are coming back from a restart.
    pub restarting: bool,
    /// Families we can restart for: the peer keeps our routes of these
    /// while we are away. Empty: we only help a restarting peer (the
    /// Receiving Speaker of RFC 4724 §4.2) and promise nothing ourselves.
    pub families: Vec<Family>,
    /// Families whose forwarding state we preserved across the restart.
    pub forwarding_preserved: Vec<Family>,
}

impl GracefulRestartConfig {
    /// The capability of a speaker that helps restarting peers but keeps
    /// no forwarding state of its own across a restart of its own (RFC
    /// 4724 §3: a capability without any family). A node agent whose
    /// dataplane restarts with it is such a speaker: a peer that kept our
    /// routes while we were away would send traffic into nothing.
    pub fn helper_only() -> Self {
        Self {
            restart_time: 0,
            restarting: false,
            families: Vec::new(),
            forwarding_preserved: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// The AS the peer must announce (RFC 4271 §6.2 Bad Peer AS).
    pub peer_as: u32,
    /// Proposed hold time in seconds: 0 (no keepalives) or at least 3.
    pub hold_time: u16,
    pub connect_retry_time: u16,
    /// Hold timer while waiting for the peer's OPEN (RFC 4271 §8: "a
    /// large value", 240 s suggested).
    pub open_hold_time: u16,
    /// Never initiate the TCP connection, only accept (RFC 4271 §8.1.1
    /// PassiveTcpEstablishment).
    pub passive: bool,
    pub families: Vec<Family>,
    pub route_refresh: bool,
    pub graceful_restart: Option<GracefulRestartConfig>,
    pub add_path: Vec<(Family, AddPathMode)>,
    pub extended_message: bool,
}

impl SessionConfig {
    /// Defaults in the spirit of RFC 4271 §10: hold 90 s, ConnectRetry 120 s.
    pub fn new(local_as: u32, router_id: Ipv4Addr, peer_as: u32) -> Self {
        Self {
            local_as,
            router_id,
            peer_as,
            hold_time: 90,
            connect_retry_time: 120,
            open_hold_time: 240,
            passive: false,
            families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            route_refresh: true,
            graceful_restart: None,
            add_path: Vec::new(),
            extended_message: true,
        }
    }

    pub fn is_ibgp(&self) -> bool {
        self.local_as == self.peer_as
    }
}
