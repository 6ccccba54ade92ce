//! The way back of the punt path: packets the host stack sends (read from a TUN device, so
//! they start at the IP header) are checked here and given the metadata of packets this node
//! originates, then injected at `ip4-nat` / `ip6-nat`: the host reaches Services as
//! kube-proxy's OUTPUT chain lets it (cluster IPs, external and load-balancer IPs go to a
//! backend); anything else passes on to the lookup. They are routed like the router's own
//! packets: no TTL decrement, neighbor resolution as usual.
//!
//! IPv6 link-local addresses mean something on one link only (RFC 4291 2.5.6), so the host
//! must know which link a packet to or from one is about: such packets go through a device
//! of their link's own (one per interface with IPv6, carrying the interface's link-local
//! address; see [`link_scoped`]), and what the host sends out of that device to a link-local
//! destination leaves by that interface alone ([`from_host_on_link`]).

use super::ip6::is_link_local;
use crate::buffer::PacketBuffer;
use crate::graph::Meta;
use crate::wire::{Ipv4Packet, Ipv6Packet};

/// The node IPv4 packets from the host enter at.
pub const IP4_ENTRY: &str = "ip4-nat";
/// The node IPv6 packets from the host enter at.
pub const IP6_ENTRY: &str = "ip6-nat";

/// Why a packet from the host is not injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostPacketError {
    /// Not a well-formed IPv4 or IPv6 packet (version, lengths, header checksum).
    #[error("not a well-formed IPv4 or IPv6 packet")]
    Malformed,
    /// Multicast or broadcast: the dataplane does not route those.
    #[error("multicast or broadcast destination")]
    Multicast,
    /// A link-local, loopback or unspecified address: it has no meaning beyond the host's
    /// side of the TUN device.
    #[error("link-local, loopback or unspecified address")]
    Scope,
}

/// Which family a packet from the host is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostFamily {
    /// Enters at [`IP4_ENTRY`].
    Ipv4,
    /// Enters at [`IP6_ENTRY`].
    Ipv6,
}

/// Checks a packet from the host stack's main device, trims it to its IP length and returns
/// its family and the metadata to inject it with (`local_origin`). Link-local addresses are
/// refused: the main device stands for no link.
pub fn from_host<B: PacketBuffer>(buf: &mut B) -> Result<(HostFamily, Meta), HostPacketError> {
    host_packet(buf, None)
}

/// [`from_host`] for a packet read from the device of interface `ifc`'s link: an IPv6 packet
/// to a link-local address is taken too, from a link-local source or another, and injected
/// as if received on `ifc` (`rx_port`), so that the lookup sends it out of that interface
/// and no other, as it does the router's own answers to link-local sources. A link-local
/// source with a destination beyond the link is still refused: it would leave its scope.
pub fn from_host_on_link<B: PacketBuffer>(
    buf: &mut B,
    ifc: u16,
) -> Result<(HostFamily, Meta), HostPacketError> {
    host_packet(buf, Some(ifc))
}

/// True when a packet the graph punts to the host (starting at its IP header) belongs on its
/// link's device rather than the main one: IPv6 with a link-local source or destination (the
/// host needs the link, its scope, to take or answer it). The device is that of the
/// interface the packet came in on (its `rx_port`).
#[inline]
pub fn link_scoped(ip: &[u8]) -> bool {
    // Version 6, then the first two bytes of the source (8) and the destination (24):
    // fe80::/10 is 0xfe and 0b10xx_xxxx.
    let link_local =
        |at: usize| ip.get(at) == Some(&0xfe) && ip.get(at + 1).is_some_and(|b| b & 0xc0 == 0x80);
    ip.first().is_some_and(|b| b >> 4 == 6) && (link_local(8) || link_local(24))
}

/// [`from_host`] and [`from_host_on_link`]: `link` is the interface whose device the packet
/// came from, `None` for the main device.
fn host_packet<B: PacketBuffer>(
    buf: &mut B,
    link: Option<u16>,
) -> Result<(HostFamily, Meta), HostPacketError> {
    let mut meta = Meta {
        local_origin: true,
        ..Meta::default()
    };
    let data = buf.data();
    let (family, len) = match data.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(data).map_err(|_| HostPacketError::Malformed)?;
            if !ip.verify_checksum() {
                return Err(HostPacketError::Malformed);
            }
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            if dst.is_multicast() || dst.is_broadcast() {
                return Err(HostPacketError::Multicast);
            }
            if src.is_unspecified() || src.is_loopback() || dst.is_loopback() {
                return Err(HostPacketError::Scope);
            }
            (HostFamily::Ipv4, usize::from(ip.total_len()))
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(data).map_err(|_| HostPacketError::Malformed)?;
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            if dst.is_multicast() {
                return Err(HostPacketError::Multicast);
            }
            if src.is_unspecified() || src.is_loopback() || dst.is_loopback() {
                return Err(HostPacketError::Scope);
            }
            if is_link_local(&dst) {
                // Only the device of a link says which link.
                let Some(ifc) = link else {
                    return Err(HostPacketError::Scope);
                };
                meta.rx_port = ifc;
            } else if is_link_local(&src) {
                return Err(HostPacketError::Scope);
            }
            (HostFamily::Ipv6, ip.packet_len())
        }
        _ => return Err(HostPacketError::Malformed),
    };
    buf.truncate(len);
    Ok((family, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::HeapBuffer;
    use crate::wire::{IpProtocol, Ipv4Repr, Ipv6Repr};

    fn v4(src: &str, dst: &str) -> Vec<u8> {
        let repr = Ipv4Repr {
            src_addr: src.parse().unwrap(),
            dst_addr: dst.parse().unwrap(),
            protocol: IpProtocol::UDP,
            payload_len: 8,
            ttl: 64,
            dscp: 0,
            ecn: 0,
            ident: 1,
            dont_fragment: true,
            more_fragments: false,
            fragment_offset: 0,
        };
        let mut b = vec![0; 28];
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut b[..]))
            .unwrap();
        b
    }

    fn v6(src: &str, dst: &str) -> Vec<u8> {
        let repr = Ipv6Repr {
            src_addr: src.parse().unwrap(),
            dst_addr: dst.parse().unwrap(),
            next_header: IpProtocol::UDP,
            payload_len: 8,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 7,
        };
        let mut b = vec![0; 48];
        repr.emit(&mut Ipv6Packet::new_unchecked(&mut b[..]))
            .unwrap();
        b
    }

    fn check(bytes: &[u8]) -> Result<(HostFamily, Meta), HostPacketError> {
        from_host(&mut HeapBuffer::from_bytes(bytes))
    }

    #[test]
    fn good_packets_are_local_origin_and_trimmed() {
        let mut padded = v4("198.18.1.1", "198.18.1.2");
        padded.extend_from_slice(&[0; 10]);
        let mut buf = HeapBuffer::from_bytes(&padded);
        let (family, meta) = from_host(&mut buf).unwrap();
        assert_eq!(family, HostFamily::Ipv4);
        assert!(meta.local_origin);
        assert_eq!(buf.len(), 28);
        let (family, meta) = check(&v6("2001:db8:1::1", "2001:db8:1::2")).unwrap();
        assert_eq!(family, HostFamily::Ipv6);
        assert!(meta.local_origin);
    }

    #[test]
    fn bad_and_unroutable_packets_are_refused() {
        assert_eq!(check(&[]).err(), Some(HostPacketError::Malformed));
        assert_eq!(check(&[0x45; 10]).err(), Some(HostPacketError::Malformed));
        let mut bad_sum = v4("198.18.1.1", "198.18.1.2");
        bad_sum[10] ^= 1;
        assert_eq!(check(&bad_sum).err(), Some(HostPacketError::Malformed));
        assert_eq!(
            check(&v4("198.18.1.1", "224.0.0.22")).err(),
            Some(HostPacketError::Multicast)
        );
        assert_eq!(
            check(&v4("0.0.0.0", "198.18.1.2")).err(),
            Some(HostPacketError::Scope)
        );
        assert_eq!(
            check(&v6("fe80::1", "ff02::16")).err(),
            Some(HostPacketError::Multicast)
        );
        assert_eq!(
            check(&v6("2001:db8:1::1", "fe80::2")).err(),
            Some(HostPacketError::Scope)
        );
        let mut short = v6("2001:db8:1::1", "2001:db8:1::2");
        short.truncate(45);
        assert_eq!(check(&short).err(), Some(HostPacketError::Malformed));
    }

    #[test]
    fn link_local_packets_come_from_their_links_device_only() {
        let on_link =
            |bytes: &[u8], ifc: u16| from_host_on_link(&mut HeapBuffer::from_bytes(bytes), ifc);
        // To a neighbor's link-local address, from ours or from a global one: sent out of the
        // device's interface.
        for src in ["fe80::1", "2001:db8:1::1"] {
            let (family, meta) = on_link(&v6(src, "fe80::2"), 3).unwrap();
            assert_eq!(family, HostFamily::Ipv6);
            assert!(meta.local_origin);
            assert_eq!(meta.rx_port, 3);
            // The main device stands for no link.
            assert_eq!(
                check(&v6(src, "fe80::2")).err(),
                Some(HostPacketError::Scope)
            );
        }
        // A link-local source beyond the link, multicast, and the rest as from the main device.
        assert_eq!(
            on_link(&v6("fe80::1", "2001:db8:2::2"), 3).err(),
            Some(HostPacketError::Scope)
        );
        assert_eq!(
            on_link(&v6("fe80::1", "ff02::16"), 3).err(),
            Some(HostPacketError::Multicast)
        );
        let (_, meta) = on_link(&v6("2001:db8:1::1", "2001:db8:2::2"), 3).unwrap();
        assert_eq!(meta.rx_port, 0);
        assert!(on_link(&v4("198.18.1.1", "198.18.1.2"), 3).is_ok());
    }

    #[test]
    fn link_scoped_packets_are_ipv6_with_a_link_local_address() {
        assert!(link_scoped(&v6("fe80::1", "2001:db8:1::2")));
        assert!(link_scoped(&v6("2001:db8:1::2", "febf::1")));
        assert!(!link_scoped(&v6("2001:db8:1::2", "2001:db8:1::1")));
        // fec0::/10 (the old site-local) is not link-local; nor is IPv4 169.254/16 here.
        assert!(!link_scoped(&v6("fec0::1", "fec0::2")));
        assert!(!link_scoped(&v4("169.254.1.1", "169.254.1.2")));
        assert!(!link_scoped(&[]));
        assert!(!link_scoped(&v6("fe80::1", "fe80::2")[..9]));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = check(&bytes);
        }
    }
}
