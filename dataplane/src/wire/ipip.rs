//! IP-in-IP tunnels: IPv4-in-IPv4 (RFC 2003), IPv6-in-IPv4 (RFC 4213), IPv4-in-IPv6 and
//! IPv6-in-IPv6 (RFC 2473). The outer protocol number alone names the inner family: 4 for
//! IPv4 and 41 for IPv6, whatever the outer family.

use super::error::WireError;
use super::ip::{IpFamily, IpProtocol};
use super::ipv4::Ipv4Packet;
use super::ipv6::Ipv6Packet;

/// The family of the packet inside an outer header whose protocol / next header is
/// `protocol`, or `None` if that is not IP-in-IP.
#[inline]
pub fn inner_family(protocol: IpProtocol) -> Option<IpFamily> {
    match protocol {
        IpProtocol::IPIP => Some(IpFamily::V4),
        IpProtocol::IPV6 => Some(IpFamily::V6),
        _ => None,
    }
}

/// The outer protocol number to encapsulate a packet of family `inner`.
#[inline]
pub fn outer_protocol(inner: IpFamily) -> IpProtocol {
    match inner {
        IpFamily::V4 => IpProtocol::IPIP,
        IpFamily::V6 => IpProtocol::IPV6,
    }
}

/// An IP-in-IP packet, split at the tunnel boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpTunnel<'a> {
    pub outer: IpFamily,
    pub inner: IpFamily,
    /// Where the inner header starts in the outer packet (after any IPv6 extension headers).
    pub inner_offset: usize,
    /// The inner packet, up to the outer packet's declared end.
    pub inner_packet: &'a [u8],
}

/// Looks at an outer IPv4 or IPv6 packet (by its version nibble) and, if it carries IP-in-IP,
/// returns where the inner packet is. `Ok(None)` means a valid packet that is not a tunnel.
///
/// Fragmented outer packets are [`WireError::Fragmented`]: decapsulation needs reassembly
/// first. The inner header's version nibble must match the protocol number
/// ([`WireError::BadVersion`] otherwise), so a decapsulating node can hand the slice straight
/// to the right parser.
pub fn decapsulate(outer: &[u8]) -> Result<Option<IpTunnel<'_>>, WireError> {
    let version = outer.first().ok_or(WireError::Truncated)? >> 4;
    let (outer_family, protocol, inner_offset, end) = match version {
        4 => {
            let ip = Ipv4Packet::new_checked(outer)?;
            if inner_family(ip.protocol()).is_some() && ip.is_fragment() {
                return Err(WireError::Fragmented);
            }
            (
                IpFamily::V4,
                ip.protocol(),
                ip.header_len(),
                usize::from(ip.total_len()),
            )
        }
        6 => {
            let ip = Ipv6Packet::new_checked(outer)?;
            let ext = ip.extension_headers()?;
            if inner_family(ext.upper_protocol).is_some()
                && ext.fragment.is_some_and(|f| f.is_fragmented())
            {
                return Err(WireError::Fragmented);
            }
            (
                IpFamily::V6,
                ext.upper_protocol,
                ext.upper_offset,
                ip.packet_len(),
            )
        }
        _ => return Err(WireError::BadVersion),
    };
    let Some(inner) = inner_family(protocol) else {
        return Ok(None);
    };
    let inner_packet = &outer[inner_offset..end];
    let inner_version = inner_packet.first().ok_or(WireError::Truncated)? >> 4;
    let expected = match inner {
        IpFamily::V4 => 4,
        IpFamily::V6 => 6,
    };
    if inner_version != expected {
        return Err(WireError::BadVersion);
    }
    Ok(Some(IpTunnel {
        outer: outer_family,
        inner,
        inner_offset,
        inner_packet,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::Ipv4Repr;
    use crate::wire::ipv6::Ipv6Repr;
    use crate::wire::test_util::hex;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const INNER_V4: &str = "4500 0024 1c46 4000 4001 b85b c6336402 cb007101
        0800 2c15 1234 0001 7377 6974 6368 7961";

    fn v4_outer(protocol: IpProtocol, inner: &[u8]) -> Vec<u8> {
        let repr = Ipv4Repr {
            src_addr: Ipv4Addr::new(198, 18, 0, 1),
            dst_addr: Ipv4Addr::new(198, 18, 0, 2),
            protocol,
            payload_len: inner.len(),
            ttl: 64,
            dscp: 0,
            ecn: 0,
            ident: 0,
            dont_fragment: true,
            more_fragments: false,
            fragment_offset: 0,
        };
        let mut out = vec![0u8; repr.buffer_len()];
        let mut ip = Ipv4Packet::new_unchecked(&mut out[..]);
        repr.emit(&mut ip).unwrap();
        ip.payload_mut().copy_from_slice(inner);
        out
    }

    fn v6_outer(next_header: IpProtocol, inner: &[u8]) -> Vec<u8> {
        let repr = Ipv6Repr {
            src_addr: "2001:db8::1".parse::<Ipv6Addr>().unwrap(),
            dst_addr: "2001:db8::2".parse::<Ipv6Addr>().unwrap(),
            next_header,
            payload_len: inner.len(),
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
        };
        let mut out = vec![0u8; repr.buffer_len()];
        let mut ip = Ipv6Packet::new_unchecked(&mut out[..]);
        repr.emit(&mut ip).unwrap();
        ip.payload_mut().copy_from_slice(inner);
        out
    }

    #[test]
    fn all_four_combinations() {
        let inner4 = hex(INNER_V4);
        let inner6 = v6_outer(IpProtocol::NO_NEXT, &[]);
        let cases = [
            (
                v4_outer(IpProtocol::IPIP, &inner4),
                IpFamily::V4,
                IpFamily::V4,
                20,
                &inner4,
            ),
            (
                v4_outer(IpProtocol::IPV6, &inner6),
                IpFamily::V4,
                IpFamily::V6,
                20,
                &inner6,
            ),
            (
                v6_outer(IpProtocol::IPIP, &inner4),
                IpFamily::V6,
                IpFamily::V4,
                40,
                &inner4,
            ),
            (
                v6_outer(IpProtocol::IPV6, &inner6),
                IpFamily::V6,
                IpFamily::V6,
                40,
                &inner6,
            ),
        ];
        for (outer, outer_family, inner_family, offset, inner) in cases {
            let tunnel = decapsulate(&outer).unwrap().unwrap();
            assert_eq!(tunnel.outer, outer_family);
            assert_eq!(tunnel.inner, inner_family);
            assert_eq!(tunnel.inner_offset, offset);
            assert_eq!(tunnel.inner_packet, &inner[..]);
            assert_eq!(
                outer_protocol(inner_family),
                if inner_family == IpFamily::V4 {
                    IpProtocol::IPIP
                } else {
                    IpProtocol::IPV6
                }
            );
            for len in 0..outer.len() {
                assert!(decapsulate(&outer[..len]).is_err());
            }
        }
    }

    #[test]
    fn not_a_tunnel_and_errors() {
        let plain = hex(INNER_V4);
        assert_eq!(decapsulate(&plain), Ok(None));
        let mismatched = v4_outer(IpProtocol::IPV6, &plain);
        assert_eq!(decapsulate(&mismatched), Err(WireError::BadVersion));
        let mut fragment = v4_outer(IpProtocol::IPIP, &plain);
        let mut ip = Ipv4Packet::new_unchecked(&mut fragment[..]);
        ip.set_fragment(false, true, 0);
        ip.fill_checksum();
        assert_eq!(decapsulate(&fragment), Err(WireError::Fragmented));
        assert_eq!(inner_family(IpProtocol::GRE), None);
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = decapsulate(&data);
        }
    }
}
