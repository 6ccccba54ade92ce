//! Shallow virtual reassembly (VPP's term): what the forwarding path needs to treat every
//! fragment of a datagram as its first, without putting the datagram back together.
//!
//! Only the first fragment of a fragmented datagram (RFC 791 3.2, RFC 8200 4.5) carries the
//! transport header, so NAT, conntrack and the ACLs see no ports in the others. This table,
//! one per worker, learns the ports (or the ICMP echo identifier) from each first fragment,
//! keyed by the datagram's (source, destination, protocol, identification), and gives them to
//! the later fragments: `ip{4,6}-vreass` (see [`crate::nodes::vreass`]) holds fragments that
//! come before their first and lets them go once it has been through, and the NAT and ACL
//! nodes look the ports up here ([`VirtualReassembly::ports`]) for every later fragment.
//!
//! Unlike [`crate::reassembly`] (datagrams addressed to this node) nothing is copied: a
//! datagram costs one small entry, which lives until every byte of the datagram went by or
//! [`TIMEOUT`] passed without a fragment of it. Bounded: at most [`MAX_DATAGRAMS`] per worker.

use std::net::IpAddr;

use fnv::FnvHashMap;

use crate::graph::Nanos;
use crate::reassembly::FragmentKey;
use crate::wire::Ipv6Packet;

/// How long a datagram is followed after its last fragment went by, and how long a fragment
/// waits for its first. A sender emits a datagram's fragments back to back, so a gap of more
/// than milliseconds means the rest was lost; 200 ms is twice VPP's default for its shallow
/// reassembly, room for jittery paths. Linux's 30 s (`ipfrag_time`) is an end host's, whose
/// only cost is memory; here a stale entry can also give a later datagram whose 16-bit IPv4
/// identification wrapped the wrong ports, and a gigabit sender wraps it towards one host in
/// well under a second (RFC 4963 2.2).
pub const TIMEOUT: Nanos = 200_000_000;
/// Most datagrams followed at once by one worker.
pub const MAX_DATAGRAMS: usize = 1024;

/// Protocol numbers whose fragments are followed: those NAT and the ACLs key by ports (TCP,
/// UDP) or echo identifier (ICMP, ICMPv6). SCTP is not: its CRC32c covers the whole packet,
/// which a rewrite of the first fragment alone cannot keep right.
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// What one fragment says about its datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentView {
    /// The datagram: for IPv6 `protocol` is the fragment header's Next Header (the same in
    /// every fragment).
    pub key: FragmentKey,
    /// Offset of the fragment's data in the datagram's payload, in bytes.
    pub offset: u32,
    /// Bytes of the datagram's payload this fragment carries.
    pub len: u32,
    /// More fragments follow.
    pub more: bool,
    /// For a first fragment: where its transport header starts in the packet.
    pub l4_offset: Option<usize>,
}

/// Why a first fragment cannot be followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstError {
    /// Too short to hold the transport header (RFC 1858's tiny fragment).
    Tiny,
    /// Too many datagrams followed already.
    Full,
}

impl FragmentView {
    /// The fragment an IP packet (checked by ip-input) is of; `None` for a packet that is not
    /// a fragment (or an IPv6 atomic fragment, RFC 6946), or whose fragments are not followed
    /// (protocols other than TCP, UDP and ICMP).
    pub fn parse(ip: &[u8]) -> Option<FragmentView> {
        match ip.first()? >> 4 {
            4 => Self::parse_v4(ip),
            6 => Self::parse_v6(ip),
            _ => None,
        }
    }

    fn parse_v4(ip: &[u8]) -> Option<FragmentView> {
        let h = ip.first_chunk::<20>()?;
        let flags_offset = u16::from_be_bytes([h[6], h[7]]);
        let (more, offset) = (
            flags_offset & 0x2000 != 0,
            u32::from(flags_offset & 0x1fff) * 8,
        );
        let protocol = h[9];
        if !(more || offset != 0) || !matches!(protocol, TCP | UDP | ICMP) {
            return None;
        }
        let header_len = usize::from(h[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([h[2], h[3]])).min(ip.len());
        let src = IpAddr::from([h[12], h[13], h[14], h[15]]);
        let dst = IpAddr::from([h[16], h[17], h[18], h[19]]);
        Some(FragmentView {
            key: FragmentKey {
                src,
                dst,
                id: u32::from(u16::from_be_bytes([h[4], h[5]])),
                protocol,
            },
            offset,
            len: total.saturating_sub(header_len) as u32,
            more,
            l4_offset: (offset == 0).then_some(header_len),
        })
    }

    fn parse_v6(ip: &[u8]) -> Option<FragmentView> {
        let packet = Ipv6Packet::new_checked(ip).ok()?;
        let ext = packet.extension_headers().ok()?;
        let frag = ext.fragment.filter(|f| f.is_fragmented())?;
        // The fragment header's Next Header: the first header of the fragmentable part. Only
        // when that is the transport header itself is the datagram followed (a destination
        // options header there would be part of the first fragment only).
        let protocol = *ip.get(frag.header_offset)?;
        if !matches!(protocol, TCP | UDP | ICMPV6) {
            return None;
        }
        let data_at = frag.header_offset + 8;
        let end = packet.packet_len().min(ip.len());
        Some(FragmentView {
            key: FragmentKey {
                src: packet.src_addr().into(),
                dst: packet.dst_addr().into(),
                id: frag.ident,
                protocol,
            },
            offset: u32::from(frag.offset),
            len: end.saturating_sub(data_at) as u32,
            more: frag.more_fragments,
            l4_offset: (frag.offset == 0).then_some(data_at),
        })
    }

    /// True for the first fragment (offset 0): the one with the transport header.
    pub fn is_first(&self) -> bool {
        self.offset == 0
    }

    /// A TCP fragment at offset 8: it would overwrite the first fragment's flags and more in
    /// a host's reassembly, a way past port and flag filters (RFC 1858 4, RFC 3128).
    pub fn is_tcp_offset_one(&self) -> bool {
        self.key.protocol == TCP && self.offset == 8
    }

    /// The ports a first fragment's datagram is tracked by: TCP and UDP ports, the ICMP echo
    /// identifier twice (as [`crate::conntrack::FlowKey::icmp_echo`] has it), zeros for other
    /// ICMP messages. [`FirstError::Tiny`] when the fragment is too short for them: TCP needs
    /// its whole fixed header (flags for conntrack, the checksum for NAT), UDP and ICMP 8 bytes.
    pub fn first_ports(&self, ip: &[u8]) -> Result<(u16, u16), FirstError> {
        let at = self.l4_offset.ok_or(FirstError::Tiny)?;
        let data_end = at + self.len as usize;
        let l4 = ip.get(at..data_end.min(ip.len())).ok_or(FirstError::Tiny)?;
        let need = if self.key.protocol == TCP { 20 } else { 8 };
        let h = l4.first_chunk::<8>().filter(|_| l4.len() >= need);
        let h = h.ok_or(FirstError::Tiny)?;
        let ports = match self.key.protocol {
            TCP | UDP => (
                u16::from_be_bytes([h[0], h[1]]),
                u16::from_be_bytes([h[2], h[3]]),
            ),
            // Echo request and reply: ICMP 8 and 0, ICMPv6 128 and 129.
            ICMP | ICMPV6 if matches!(h[0], 0 | 8 | 128 | 129) => {
                let ident = u16::from_be_bytes([h[4], h[5]]);
                (ident, ident)
            }
            _ => (0, 0),
        };
        Ok(ports)
    }
}

/// One datagram whose first fragment went by.
#[derive(Clone, Copy, Debug)]
struct Datagram {
    ports: (u16, u16),
    /// Payload bytes of the fragments that went by.
    seen: u32,
    /// The payload's length, once its last fragment went by.
    total: Option<u32>,
    last_heard: Nanos,
    /// Every byte went by (at `last_heard`). The entry stays for the NAT and ACL nodes that
    /// still have to see those fragments, and goes at the next sweep after that time.
    done: bool,
}

impl Datagram {
    fn add(&mut self, frag: &FragmentView, now: Nanos) {
        self.seen = self.seen.saturating_add(frag.len);
        if !frag.more {
            self.total = Some(frag.offset + frag.len);
        }
        self.last_heard = now;
        self.done = self.total.is_some_and(|t| self.seen >= t);
    }

    /// Gone by `now`: heard of too long ago, or done in an earlier turn of the graph (all
    /// fragments of one dispatch share its time, so they have all been through by then).
    fn stale(&self, now: Nanos) -> bool {
        now.saturating_sub(self.last_heard) >= TIMEOUT || (self.done && self.last_heard < now)
    }
}

/// The datagrams one worker follows.
#[derive(Debug)]
pub struct VirtualReassembly {
    datagrams: FnvHashMap<FragmentKey, Datagram>,
    /// When the table was last swept because it was full: at most once per graph turn.
    swept: Nanos,
}

impl Default for VirtualReassembly {
    fn default() -> Self {
        VirtualReassembly {
            // Room up front, so that following a datagram never allocates: twice the most
            // entries, so the table never holds over half its capacity and the tombstones
            // removals leave are cleared by rehashing in place rather than by growing.
            datagrams: FnvHashMap::with_capacity_and_hasher(2 * MAX_DATAGRAMS, Default::default()),
            swept: Nanos::MAX,
        }
    }
}

impl VirtualReassembly {
    /// Learns the ports of `first`'s datagram (see [`FragmentView::first_ports`]). A first
    /// fragment seen again (the network duplicated it, or the identification was reused)
    /// starts the datagram over.
    pub fn first(
        &mut self,
        first: &FragmentView,
        ip: &[u8],
        now: Nanos,
    ) -> Result<(u16, u16), FirstError> {
        let ports = first.first_ports(ip)?;
        if self.datagrams.len() >= MAX_DATAGRAMS
            && !self.datagrams.contains_key(&first.key)
            && self.swept != now
        {
            self.swept = now;
            self.expire(now);
        }
        if self.datagrams.len() >= MAX_DATAGRAMS && !self.datagrams.contains_key(&first.key) {
            return Err(FirstError::Full);
        }
        let mut datagram = Datagram {
            ports,
            seen: 0,
            total: None,
            last_heard: now,
            done: false,
        };
        datagram.add(first, now);
        self.datagrams.insert(first.key, datagram);
        Ok(ports)
    }

    /// For a later fragment: its datagram's ports, if the first went by and the datagram is
    /// not complete yet (a fragment after that is a duplicate, or of a new datagram that
    /// reuses the identification and whose first is still to come). Counts its bytes.
    pub fn later(&mut self, frag: &FragmentView, now: Nanos) -> Option<(u16, u16)> {
        let datagram = self.datagrams.get_mut(&frag.key).filter(|d| !d.done)?;
        datagram.add(frag, now);
        Some(datagram.ports)
    }

    /// True while a later fragment of `key`'s datagram would be given ports by
    /// [`VirtualReassembly::later`].
    pub fn following(&self, key: &FragmentKey) -> bool {
        self.datagrams.get(key).is_some_and(|d| !d.done)
    }

    /// The ports learned for the datagram of the fragment `ip`, for the NAT and ACL nodes.
    pub fn ports(&self, ip: &[u8]) -> Option<(u16, u16)> {
        if self.datagrams.is_empty() {
            return None;
        }
        let frag = FragmentView::parse(ip)?;
        self.datagrams.get(&frag.key).map(|d| d.ports)
    }

    /// Forgets datagrams heard of [`TIMEOUT`] ago and those completed before `now`; returns
    /// how many were forgotten before they completed.
    pub fn expire(&mut self, now: Nanos) -> usize {
        let mut unfinished = 0;
        self.datagrams.retain(|_, d| {
            let stale = d.stale(now);
            unfinished += usize::from(stale && !d.done);
            !stale
        });
        unfinished
    }

    /// Datagrams followed.
    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    /// True when no datagram is followed.
    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 fragment of a UDP datagram from 198.18.1.2 port 40000 to 198.51.100.10 port 53.
    fn frag4(id: u16, offset: u16, more: bool, data: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, UDP, 0, 0];
        p.extend_from_slice(&[198, 18, 1, 2, 198, 51, 100, 10]);
        p[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[6..8].copy_from_slice(&((offset / 8) | if more { 0x2000 } else { 0 }).to_be_bytes());
        p.extend_from_slice(data);
        p
    }

    fn udp_header() -> Vec<u8> {
        let mut h = vec![0x9c, 0x40, 0, 53, 0x0b, 0xb8, 0, 0];
        h.extend_from_slice(&[0; 8]);
        h
    }

    #[test]
    fn later_fragments_get_the_first_ones_ports_until_the_datagram_is_whole() {
        let mut t = VirtualReassembly::default();
        let first = frag4(7, 0, true, &udp_header());
        let view = FragmentView::parse(&first).unwrap();
        assert_eq!(t.first(&view, &first, 1), Ok((40000, 53)));
        let middle = frag4(7, 16, true, &[0; 16]);
        let last = frag4(7, 32, false, &[0; 8]);
        let (m, l) = (
            FragmentView::parse(&middle).unwrap(),
            FragmentView::parse(&last).unwrap(),
        );
        assert_eq!(t.later(&m, 1), Some((40000, 53)));
        assert_eq!(t.ports(&last), Some((40000, 53)));
        assert_eq!(t.later(&l, 2), Some((40000, 53)));
        // Whole: the NAT node still finds the ports in this turn, a duplicate is not followed.
        assert_eq!(t.ports(&last), Some((40000, 53)));
        assert_eq!(t.later(&l, 2), None);
        assert_eq!(t.expire(2), 0);
        assert_eq!(t.len(), 1);
        assert_eq!(t.expire(3), 0);
        assert!(t.is_empty());
    }

    #[test]
    fn unfinished_datagrams_expire_and_a_full_table_refuses_new_ones() {
        let mut t = VirtualReassembly::default();
        for id in 0..MAX_DATAGRAMS as u16 {
            let first = frag4(id, 0, true, &udp_header());
            let view = FragmentView::parse(&first).unwrap();
            assert!(t.first(&view, &first, 0).is_ok());
        }
        let first = frag4(9999, 0, true, &udp_header());
        let view = FragmentView::parse(&first).unwrap();
        assert_eq!(t.first(&view, &first, 1), Err(FirstError::Full));
        assert_eq!(t.expire(TIMEOUT - 1), 0);
        assert_eq!(t.first(&view, &first, TIMEOUT), Ok((40000, 53)));
        assert_eq!(t.len(), 1);
    }

    /// An IPv6 packet from 2001:db8:1::2 to 2001:db8:2::2 carrying `payload`, its first
    /// header named `nh`.
    fn ipv6(nh: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[nh, 64]);
        p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p.extend_from_slice(payload);
        p
    }

    fn fragment_header(nh: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
        let mut h = vec![nh, 0];
        h.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        h
    }

    #[test]
    fn ipv6_fragments_are_found_behind_other_extension_headers() {
        // Hop-by-hop (PadN) in front of the fragment header, then UDP.
        let mut payload = vec![44, 0, 1, 4, 0, 0, 0, 0];
        payload.extend(fragment_header(UDP, 0, true, 99));
        payload.extend(udp_header());
        let first = ipv6(0, &payload);
        let view = FragmentView::parse(&first).unwrap();
        assert_eq!((view.key.id, view.key.protocol, view.offset), (99, UDP, 0));
        assert_eq!(view.l4_offset, Some(56));
        assert_eq!(view.first_ports(&first), Ok((40000, 53)));
        let mut later = fragment_header(UDP, 16, false, 99);
        later.extend_from_slice(&[0; 8]);
        let later = ipv6(44, &later);
        let view = FragmentView::parse(&later).unwrap();
        assert_eq!(
            (view.key.id, view.offset, view.len, view.more),
            (99, 16, 8, false)
        );
        assert!(!view.is_first());
        // An atomic fragment (RFC 6946) is a whole packet; ESP fragments are not followed.
        let mut atomic = fragment_header(UDP, 0, false, 1);
        atomic.extend(udp_header());
        assert_eq!(FragmentView::parse(&ipv6(44, &atomic)), None);
        let mut esp = fragment_header(50, 0, true, 1);
        esp.extend_from_slice(&[0; 16]);
        assert_eq!(FragmentView::parse(&ipv6(44, &esp)), None);
    }

    #[test]
    fn tiny_first_fragments_and_non_fragments_are_told_apart() {
        let tiny = frag4(1, 0, true, &udp_header()[..0]);
        let view = FragmentView::parse(&tiny).unwrap();
        assert_eq!(view.first_ports(&tiny), Err(FirstError::Tiny));
        let whole = frag4(1, 0, false, &udp_header());
        assert_eq!(FragmentView::parse(&whole), None);
        let mut tcp = frag4(1, 8, true, &[0; 8]);
        tcp[9] = TCP;
        assert!(FragmentView::parse(&tcp).unwrap().is_tcp_offset_one());
    }
}
