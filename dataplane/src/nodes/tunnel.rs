//! Encapsulation towards a backend (GRE, RFC 2784; IP-in-IP, RFC 2003 / RFC 2473) and
//! decapsulation of what other Switchyard nodes send, for the edge load balancer role.
//!
//! The outer header is built in the buffer's headroom, so the inner packet is never copied.
//! ECN follows RFC 6040's normal mode: the outer header copies the inner ECN field, and at
//! decapsulation the outer field is combined with the inner one by section 4.2's table
//! ([`ecn_after_decap`], which ESP's tunnels use too): a Congestion Experienced mark on the
//! outer header is carried into an ECN-capable inner packet, and a packet that is not
//! ECN-capable but was marked on the way is dropped.

use std::net::IpAddr;

use crate::buffer::PacketBuffer;
use crate::wire::{checksum, EtherType, Ipv4Packet, Ipv6Packet};

/// IP protocol numbers of the tunnels.
pub const PROTO_IPIP: u8 = 4;
/// IPv6 in IP (RFC 2473 / RFC 4213).
pub const PROTO_IPV6: u8 = 41;
/// GRE.
pub const PROTO_GRE: u8 = 47;

/// Which tunnel to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelKind {
    /// GRE with no optional fields.
    Gre,
    /// Plain IP-in-IP.
    Ipip,
}

/// TTL / hop limit of outer headers.
const OUTER_TTL: u8 = 64;
/// ECN codepoints (RFC 3168 section 5).
const ECN_NOT_ECT: u8 = 0;
const ECN_ECT1: u8 = 1;
const ECN_CE: u8 = 3;

/// Bytes the tunnel adds in front of a packet whose outer destination is `outer_dst`.
pub fn overhead(kind: TunnelKind, outer_dst: IpAddr) -> usize {
    let ip = if outer_dst.is_ipv4() { 20 } else { 40 };
    ip + if kind == TunnelKind::Gre { 4 } else { 0 }
}

/// Puts the inner packet (the whole of `buf`) in a tunnel from `src` to `dst`. `ident` is the
/// IPv4 identification to use. False, changing nothing, without headroom or when the outer
/// addresses are not of one family.
pub fn encapsulate<B: PacketBuffer>(
    buf: &mut B,
    kind: TunnelKind,
    src: IpAddr,
    dst: IpAddr,
    ident: u16,
) -> bool {
    let inner = buf.data();
    let Some(&first) = inner.first() else {
        return false;
    };
    let inner_v6 = first >> 4 == 6;
    let (inner_ecn, inner_df) = if inner_v6 {
        let tc = inner.get(..2).map_or(0, |b| (b[0] << 4) | (b[1] >> 4));
        (tc & 3, true)
    } else {
        let tos = inner.get(1).copied().unwrap_or(0);
        let df = inner.get(6).is_some_and(|b| b & 0x40 != 0);
        (tos & 3, df)
    };
    let inner_len = inner.len();
    let gre_len = if kind == TunnelKind::Gre { 4 } else { 0 };
    let proto = match (kind, inner_v6) {
        (TunnelKind::Gre, _) => PROTO_GRE,
        (TunnelKind::Ipip, false) => PROTO_IPIP,
        (TunnelKind::Ipip, true) => PROTO_IPV6,
    };
    let total = overhead(kind, dst) + inner_len;
    if total > usize::from(u16::MAX) + if dst.is_ipv6() { 40 } else { 0 } {
        return false;
    }
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            if !buf.push_front(20 + gre_len) {
                return false;
            }
            let data = buf.data_mut();
            data[..20].fill(0);
            let mut ip = Ipv4Packet::new_unchecked(&mut data[..]);
            ip.set_version_and_header_len(20);
            ip.set_dscp_ecn(0, inner_ecn);
            ip.set_total_len(total as u16);
            ip.set_ident(ident);
            // RFC 2003 3.1: DF copied from the inner header (always set for IPv6 inner).
            ip.set_fragment(inner_df, false, 0);
            ip.set_ttl(OUTER_TTL);
            ip.set_protocol(crate::wire::IpProtocol(proto));
            ip.set_src_addr(s);
            ip.set_dst_addr(d);
            ip.fill_checksum();
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            if !buf.push_front(40 + gre_len) {
                return false;
            }
            let data = buf.data_mut();
            data[..40].fill(0);
            let mut ip = Ipv6Packet::new_unchecked(&mut data[..]);
            ip.set_version_tc_flow(inner_ecn, 0);
            ip.set_payload_len((gre_len + inner_len) as u16);
            ip.set_next_header(crate::wire::IpProtocol(proto));
            ip.set_hop_limit(OUTER_TTL);
            ip.set_src_addr(s);
            ip.set_dst_addr(d);
        }
        _ => return false,
    }
    if kind == TunnelKind::Gre {
        let at = if dst.is_ipv4() { 20 } else { 40 };
        let ethertype = if inner_v6 {
            EtherType::IPV6
        } else {
            EtherType::IPV4
        };
        let g = &mut buf.data_mut()[at..at + 4];
        g[0] = 0;
        g[1] = 0;
        g[2..4].copy_from_slice(&ethertype.0.to_be_bytes());
    }
    true
}

/// Why a tunnel packet was not decapsulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapError {
    /// GRE with a version other than 0, the routing bit, an unknown payload type, or a bad
    /// checksum.
    BadGre,
    /// The inner packet is not the IP version the outer header says.
    BadInner,
    /// The outer header says Congestion Experienced and the inner packet is not ECN-capable
    /// (RFC 6040 section 4.2: dropped).
    CongestedNotEct,
}

/// Strips the outer header (IP, and GRE when `proto` is GRE) from a packet whose transport
/// header starts at `l4_offset`, leaving the inner packet. Returns whether the inner packet is
/// IPv6.
pub fn decapsulate<B: PacketBuffer>(
    buf: &mut B,
    proto: u8,
    l4_offset: usize,
    end: usize,
) -> Result<bool, DecapError> {
    let data = buf.data();
    let outer_ecn = match data.first().map(|b| b >> 4) {
        Some(4) => data.get(1).map_or(0, |b| b & 3),
        _ => data.get(..2).map_or(0, |b| ((b[0] << 4) | (b[1] >> 4)) & 3),
    };
    let l4 = data.get(l4_offset..end).ok_or(DecapError::BadInner)?;
    let (strip, inner_v6) = match proto {
        PROTO_IPIP => (l4_offset, false),
        PROTO_IPV6 => (l4_offset, true),
        PROTO_GRE => {
            let g = crate::wire::GrePacket::new_checked(l4).map_err(|_| DecapError::BadGre)?;
            // RFC 2784: version 0; the RFC 1701 routing bit means a reserved bit set.
            if g.version() != 0 || l4[0] & 0x40 != 0 {
                return Err(DecapError::BadGre);
            }
            if g.checksum_present() && !g.verify_checksum() {
                return Err(DecapError::BadGre);
            }
            let v6 = match g.protocol_type() {
                EtherType::IPV4 => false,
                EtherType::IPV6 => true,
                _ => return Err(DecapError::BadGre),
            };
            (l4_offset + g.header_len(), v6)
        }
        _ => return Err(DecapError::BadInner),
    };
    let version = data.get(strip).map(|b| b >> 4);
    if version != Some(if inner_v6 { 6 } else { 4 }) {
        return Err(DecapError::BadInner);
    }
    // Judged before anything changes, so a refused packet is left as it came.
    let inner_ecn = data
        .get(strip..)
        .map_or(ECN_NOT_ECT, |ip| ecn_of(ip, inner_v6));
    if ecn_after_decap(inner_ecn, outer_ecn).is_none() {
        return Err(DecapError::CongestedNotEct);
    }
    buf.truncate(end);
    if !buf.pull_front(strip) {
        return Err(DecapError::BadInner);
    }
    apply_outer_ecn(buf.data_mut(), inner_v6, outer_ecn);
    Ok(inner_v6)
}

/// The ECN field of the IP packet at the start of `ip` (0, Not-ECT, when it is too short).
#[inline]
fn ecn_of(ip: &[u8], v6: bool) -> u8 {
    match (v6, ip) {
        (false, [_, tos, ..]) => tos & 3,
        (true, [_, b1, ..]) => (b1 >> 4) & 3,
        _ => ECN_NOT_ECT,
    }
}

/// RFC 6040 section 4.2 (normal mode): the inner header's ECN field after decapsulation,
/// from the arriving inner and outer fields; `None` where the packet must be dropped, a
/// Congestion Experienced mark on the outer header of a packet whose transport cannot take
/// it (Not-ECT inside).
///
/// ```text
///                 outer:  Not-ECT   ECT(0)   ECT(1)   CE
///   inner Not-ECT         Not-ECT   Not-ECT  Not-ECT  drop
///   inner ECT(0)          ECT(0)    ECT(0)   ECT(1)   CE
///   inner ECT(1)          ECT(1)    ECT(1)   ECT(1)   CE
///   inner CE              CE        CE       CE       CE
/// ```
///
/// That is: an ECN-capable inner packet takes the outer field when it is ECT(1) or CE (the
/// "stronger" marks; CE inside stays CE); a Not-ECT one is left as it is, or dropped under
/// CE. (The table's alarms for combinations that should not happen are not raised: they
/// are forwarded as the table says.)
#[inline]
pub const fn ecn_after_decap(inner: u8, outer: u8) -> Option<u8> {
    match (inner, outer) {
        (ECN_NOT_ECT, ECN_CE) => None,
        (ECN_NOT_ECT, _) | (ECN_CE, _) => Some(inner),
        (_, ECN_ECT1 | ECN_CE) => Some(outer),
        _ => Some(inner),
    }
}

/// Applies the outer header's ECN field `outer_ecn` to the inner IP packet at the start of
/// `ip` ([`ecn_after_decap`]), updating an IPv4 header checksum (RFC 1624). False, changing
/// nothing, when the packet must be dropped. A Not-ECT outer field (most tunnel packets)
/// costs one comparison.
#[inline]
pub fn apply_outer_ecn(ip: &mut [u8], v6: bool, outer_ecn: u8) -> bool {
    if outer_ecn == ECN_NOT_ECT {
        return true;
    }
    let inner = ecn_of(ip, v6);
    let Some(ecn) = ecn_after_decap(inner, outer_ecn) else {
        return false;
    };
    if ecn != inner {
        set_ecn(ip, v6, ecn);
    }
    true
}

/// Sets the ECN field of the IP packet at the start of `ip`.
fn set_ecn(ip: &mut [u8], v6: bool, ecn: u8) {
    if v6 {
        if let Some(b1) = ip.get_mut(1) {
            *b1 = (*b1 & !0x30) | (ecn << 4);
        }
    } else if ip.len() >= 20 {
        let old = u16::from_be_bytes([ip[0], ip[1]]);
        ip[1] = (ip[1] & !3) | ecn;
        let new = u16::from_be_bytes([ip[0], ip[1]]);
        let c = checksum::update16(u16::from_be_bytes([ip[10], ip[11]]), old, new);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

/// A tunnel is a hop: decrements the inner packet's TTL (hop limit), or, when it would reach
/// zero, leaves it and returns the ICMP error to send back (time exceeded / hop limit
/// exceeded), as a router's forwarding would.
pub(super) fn inner_hop(data: &mut [u8], inner_v6: bool) -> Option<(u8, u8, u32)> {
    let expired = if inner_v6 {
        let mut ip = crate::wire::Ipv6Packet::new_unchecked(&mut data[..]);
        ip.hop_limit() <= 1 || {
            ip.decrement_hop_limit();
            false
        }
    } else {
        let mut ip = crate::wire::Ipv4Packet::new_unchecked(&mut data[..]);
        ip.ttl() <= 1 || {
            ip.decrement_ttl();
            false
        }
    };
    expired.then_some(if inner_v6 { (3, 0, 0) } else { (11, 0, 0) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::HeapBuffer;

    fn inner_v4() -> Vec<u8> {
        let mut h = vec![0u8; 28];
        h[0] = 0x45;
        h[1] = 0x02; // ECT(0)
        h[2..4].copy_from_slice(&28u16.to_be_bytes());
        h[6] = 0x40; // DF
        h[8] = 63;
        h[9] = 17;
        h[12..16].copy_from_slice(&[198, 18, 1, 2]);
        h[16..20].copy_from_slice(&[198, 51, 100, 10]);
        let c = checksum::checksum(&h[..20]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    #[test]
    fn gre_and_ipip_round_trip_with_ecn() {
        for kind in [TunnelKind::Gre, TunnelKind::Ipip] {
            let inner = inner_v4();
            let mut buf = HeapBuffer::from_bytes(&inner);
            let (s, d) = ("198.18.3.1".parse().unwrap(), "198.18.3.2".parse().unwrap());
            assert!(encapsulate(&mut buf, kind, s, d, 7));
            let outer = Ipv4Packet::new_checked(buf.data()).unwrap();
            assert!(outer.verify_checksum());
            assert!(outer.dont_fragment());
            assert_eq!(usize::from(outer.total_len()), 28 + overhead(kind, d));
            let proto = outer.protocol().0;
            assert_eq!(proto, if kind == TunnelKind::Gre { 47 } else { 4 });
            // Congestion on the way: CE on the outer header reaches the inner one.
            let mut bytes = buf.data().to_vec();
            bytes[1] |= 3;
            let mut buf = HeapBuffer::from_bytes(&bytes);
            let end = bytes.len();
            assert_eq!(decapsulate(&mut buf, proto, 20, end), Ok(false));
            let got = Ipv4Packet::new_checked(buf.data()).unwrap();
            assert!(got.verify_checksum());
            assert_eq!(buf.data()[1] & 3, 3);
            assert_eq!(&buf.data()[2..10], &inner[2..10]);
            assert_eq!(&buf.data()[12..], &inner[12..]);
        }
    }

    /// RFC 6040 section 4.2's table, cell by cell, on IPv4 (checksum kept valid) and IPv6
    /// inner packets.
    #[test]
    fn decapsulation_follows_the_rfc_6040_table() {
        // (inner, outer) -> inner after, or None: dropped. Rows: inner Not-ECT, ECT(0),
        // ECT(1), CE; columns: outer Not-ECT, ECT(0), ECT(1), CE (ECT(0) is 2, ECT(1) 1).
        let table: [[Option<u8>; 4]; 4] = [
            [Some(0), Some(0), Some(0), None],
            [Some(2), Some(2), Some(1), Some(3)],
            [Some(1), Some(1), Some(1), Some(3)],
            [Some(3), Some(3), Some(3), Some(3)],
        ];
        let codepoints = [0u8, 2, 1, 3];
        for (row, &inner) in codepoints.iter().enumerate() {
            for (col, &outer) in codepoints.iter().enumerate() {
                let want = table[row][col];
                assert_eq!(ecn_after_decap(inner, outer), want, "{inner} {outer}");
                let mut v4 = inner_v4();
                v4[1] = 0xb8 | inner;
                let c = checksum::checksum(&{
                    let mut h = v4[..20].to_vec();
                    h[10..12].fill(0);
                    h
                });
                v4[10..12].copy_from_slice(&c.to_be_bytes());
                let before = v4.clone();
                assert_eq!(apply_outer_ecn(&mut v4, false, outer), want.is_some());
                match want {
                    Some(ecn) => {
                        assert_eq!(v4[1], 0xb8 | ecn, "DSCP kept");
                        assert!(Ipv4Packet::new_checked(&v4[..]).unwrap().verify_checksum());
                    }
                    None => assert_eq!(v4, before, "refused: unchanged"),
                }
                let mut v6 = [0u8; 40];
                v6[0] = 0x6a;
                v6[1] = 0x85 | (inner << 4);
                assert_eq!(apply_outer_ecn(&mut v6, true, outer), want.is_some());
                if let Some(ecn) = want {
                    assert_eq!((v6[0], v6[1]), (0x6a, 0x85 | (ecn << 4)));
                }
            }
        }
        // Through `decapsulate`: CE outside, Not-ECT inside is refused, the packet left be.
        let mut inner = inner_v4();
        inner[1] = 0;
        let c = checksum::checksum(&{
            let mut h = inner[..20].to_vec();
            h[10..12].fill(0);
            h
        });
        inner[10..12].copy_from_slice(&c.to_be_bytes());
        let mut buf = HeapBuffer::from_bytes(&inner);
        let (s, d) = ("198.18.3.1".parse().unwrap(), "198.18.3.2".parse().unwrap());
        assert!(encapsulate(&mut buf, TunnelKind::Ipip, s, d, 7));
        let mut bytes = buf.data().to_vec();
        bytes[1] |= 3;
        let mut buf = HeapBuffer::from_bytes(&bytes);
        let end = bytes.len();
        assert_eq!(
            decapsulate(&mut buf, PROTO_IPIP, 20, end),
            Err(DecapError::CongestedNotEct)
        );
        assert_eq!(buf.data(), &bytes[..]);
    }

    #[test]
    fn bad_gre_is_refused() {
        let inner = inner_v4();
        let mut buf = HeapBuffer::from_bytes(&inner);
        let (s, d) = ("198.18.3.1".parse().unwrap(), "198.18.3.2".parse().unwrap());
        assert!(encapsulate(&mut buf, TunnelKind::Gre, s, d, 7));
        let mut bytes = buf.data().to_vec();
        bytes[21] = 1; // version 1 (PPTP)
        let mut b = HeapBuffer::from_bytes(&bytes);
        let end = bytes.len();
        assert_eq!(decapsulate(&mut b, 47, 20, end), Err(DecapError::BadGre));
        bytes[21] = 0;
        bytes[22..24].copy_from_slice(&0x6558u16.to_be_bytes()); // transparent Ethernet
        let mut b = HeapBuffer::from_bytes(&bytes);
        assert_eq!(decapsulate(&mut b, 47, 20, end), Err(DecapError::BadGre));
        // IPIP that says IPv4 but carries something else.
        let mut b = HeapBuffer::from_bytes(&[
            0x45, 0, 0, 21, 0, 0, 0, 0, 64, 4, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 0x60,
        ]);
        assert_eq!(decapsulate(&mut b, 4, 20, 21), Err(DecapError::BadInner));
    }
}
