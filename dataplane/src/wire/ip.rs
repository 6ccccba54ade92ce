//! Things shared by IPv4 and IPv6: protocol numbers, address families, pseudo-header addresses.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::checksum;

/// An IP protocol / IPv6 next-header number (IANA "Assigned Internet Protocol Numbers").
///
/// A newtype rather than an enum: unknown values must survive a parse/emit round trip untouched,
/// and a router forwards protocols it has never heard of.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    pub const HOP_BY_HOP: Self = Self(0);
    pub const ICMP: Self = Self(1);
    pub const IGMP: Self = Self(2);
    /// IPv4 encapsulation (IP-in-IP, RFC 2003).
    pub const IPIP: Self = Self(4);
    pub const TCP: Self = Self(6);
    pub const UDP: Self = Self(17);
    /// IPv6 encapsulation (RFC 2473 / RFC 4213).
    pub const IPV6: Self = Self(41);
    pub const ROUTING: Self = Self(43);
    pub const FRAGMENT: Self = Self(44);
    pub const GRE: Self = Self(47);
    pub const ESP: Self = Self(50);
    pub const AH: Self = Self(51);
    pub const ICMPV6: Self = Self(58);
    pub const NO_NEXT: Self = Self(59);
    pub const DEST_OPTS: Self = Self(60);
    pub const SCTP: Self = Self(132);
    pub const MOBILITY: Self = Self(135);
    pub const HIP: Self = Self(139);
    pub const SHIM6: Self = Self(140);

    /// True for the numbers IANA lists as IPv6 extension headers (RFC 7045 section 2), including
    /// ones [`crate::wire::ipv6`] does not walk (ESP, Mobility, HIP, Shim6, experimental).
    #[inline]
    pub fn is_ipv6_extension_header(self) -> bool {
        matches!(
            self.0,
            0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
        )
    }

    fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "HopByHop",
            1 => "ICMP",
            2 => "IGMP",
            4 => "IPIP",
            6 => "TCP",
            17 => "UDP",
            41 => "IPv6",
            43 => "Routing",
            44 => "Fragment",
            47 => "GRE",
            50 => "ESP",
            51 => "AH",
            58 => "ICMPv6",
            59 => "NoNext",
            60 => "DestOpts",
            132 => "SCTP",
            135 => "Mobility",
            139 => "HIP",
            140 => "Shim6",
            _ => return None,
        })
    }
}

impl From<u8> for IpProtocol {
    #[inline]
    fn from(value: u8) -> Self {
        Self(value)
    }
}

impl From<IpProtocol> for u8 {
    #[inline]
    fn from(value: IpProtocol) -> Self {
        value.0
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Debug for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IpProtocol({self})")
    }
}

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

/// The source and destination of the enclosing IP header, which TCP, UDP and ICMPv6 checksums
/// cover through the pseudo-header. One value instead of two addresses keeps the families from
/// being mixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpAddrPair {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

impl IpAddrPair {
    /// The family of both addresses.
    #[inline]
    pub fn family(&self) -> IpFamily {
        match self {
            Self::V4 { .. } => IpFamily::V4,
            Self::V6 { .. } => IpFamily::V6,
        }
    }

    /// The folded ones'-complement sum of the pseudo-header for an upper-layer packet of
    /// `length` bytes (RFC 793 / RFC 768 for IPv4, RFC 8200 section 8.1 for IPv6).
    #[inline]
    pub fn pseudo_header_sum(&self, protocol: IpProtocol, length: u32) -> u16 {
        match self {
            Self::V4 { src, dst } => checksum::pseudo_header_ipv4(src, dst, protocol, length),
            Self::V6 { src, dst } => checksum::pseudo_header_ipv6(src, dst, protocol, length),
        }
    }
}
