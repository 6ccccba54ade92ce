//! Wire formats: zero-copy views over packet bytes and plain values parsed from them.
//!
//! Every header follows one shape, so that graph nodes read the same way whatever the protocol:
//!
//! * `XxxPacket<T: AsRef<[u8]>>` (or `EthernetFrame<T>`) wraps a buffer without copying it.
//!   `new_unchecked` trusts the caller; `new_checked` validates every length the accessors rely
//!   on (including lengths the header itself declares), so after it succeeds no getter can
//!   index out of bounds. Setters exist when `T: AsMut<[u8]>`, which lets nodes rewrite headers
//!   in place (NAT, TTL, encapsulation) without copying the packet.
//! * `XxxRepr` is a small plain value: `parse` reads it from a checked view (validating semantic
//!   rules and checksums), `emit` writes it back, and `header_len`/`buffer_len` size the buffer.
//!
//! Parsing never panics and never allocates, whatever the input: the property tests in each
//! module and the targets under `fuzz/` hold this code to that.

pub mod arp;
pub mod checksum;
pub mod error;
pub mod esp;
pub mod ethernet;
pub mod gre;
pub mod icmpv4;
pub mod icmpv6;
pub mod ip;
pub mod ipip;
pub mod ipv4;
pub mod ipv6;
pub mod sctp;
pub mod tcp;
pub mod udp;

mod bytes;

#[cfg(test)]
mod test_util;

pub use arp::{ArpOperation, ArpPacket, ArpRepr};
pub use error::WireError;
pub use esp::{EspPacket, EspRepr, EspTrailer, UdpEncapsulated};
pub use ethernet::{EtherType, EthernetAddress, EthernetFrame, EthernetRepr, L2Header, VlanTag};
pub use gre::{GrePacket, GreRepr};
pub use icmpv4::{Icmpv4ErrorHeader, Icmpv4Message, Icmpv4Packet, Icmpv4Repr};
pub use icmpv6::{
    Icmpv6ErrorHeader, Icmpv6Message, Icmpv6Packet, Icmpv6Repr, NdiscRepr, PrefixInformation,
};
pub use ip::{IpAddrPair, IpFamily, IpProtocol};
pub use ipip::IpTunnel;
pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use ipv6::{Ipv6ExtensionHeaders, Ipv6FragmentInfo, Ipv6Packet, Ipv6Repr};
pub use sctp::{SctpPacket, SctpRepr};
pub use tcp::{TcpFlags, TcpPacket, TcpRepr};
pub use udp::{UdpPacket, UdpRepr};
