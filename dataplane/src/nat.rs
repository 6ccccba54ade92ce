//! Address and port translation of IPv4 and IPv6 packets, for the service proxy.
//!
//! A translated connection is two tuples in [`crate::conntrack`]: `original` (what the client
//! sent, e.g. to a service address) and `reply` (what the answers look like, e.g. from the
//! chosen backend to the client, or to this node after masquerade). As in Linux's NAT, the
//! translation needs nothing else: a packet travelling one way is rewritten so that its tuple
//! becomes the reverse of the other way's tuple ([`target_tuple`]).
//!
//! The functions here parse what NAT needs ([`Tuple::parse`]), rewrite addresses and ports
//! with RFC 1624 incremental checksum updates ([`rewrite`]), and translate the packet an ICMP
//! error quotes ([`quoted_tuple`], [`rewrite_icmp_error`]). None of them panics on any input.

use std::net::IpAddr;

use crate::conntrack::{ConnEntry, Direction, FlowKey, FlowKeyV4};
use crate::virtual_reassembly::VirtualReassembly;
use crate::wire::{checksum, sctp, IpProtocol, Ipv4Packet, Ipv6Packet};

/// Protocol numbers NAT translates the ports of.
const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// Where an IP packet's parts are, for translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    /// The flow key (ports are zero for protocols without them).
    pub key: FlowKey,
    /// Offset of the transport header from the start of the IP header.
    pub l4_offset: usize,
    /// End of the IP packet (its total length).
    pub end: usize,
    /// TCP flags, for TCP.
    pub tcp_flags: Option<u8>,
    /// The packet is one of several fragments of a datagram.
    pub fragment: bool,
    /// The packet is a fragment other than the first: it has no transport header, so its
    /// ports are zero unless they were filled in from its first fragment's
    /// ([`crate::virtual_reassembly`]), and only its addresses are rewritten.
    pub later_fragment: bool,
}

impl Tuple {
    /// Reads the tuple of an IPv4 or IPv6 packet that ip-input already validated. `None`
    /// when the transport header is missing or truncated.
    pub fn parse(ip: &[u8]) -> Option<Tuple> {
        match ip.first()? >> 4 {
            4 => Self::parse_v4(ip),
            6 => Self::parse_v6(ip),
            _ => None,
        }
    }

    fn parse_v4(data: &[u8]) -> Option<Tuple> {
        match Plain4::parse(data) {
            Some(plain) => Some(plain.tuple()),
            None => Self::parse_v4_general(data),
        }
    }

    fn parse_v4_general(data: &[u8]) -> Option<Tuple> {
        let ip = Ipv4Packet::new_checked(data).ok()?;
        let l4_offset = ip.header_len();
        let fragment = ip.is_fragment();
        let later = ip.fragment_offset() != 0;
        let key = FlowKey::new(
            IpAddr::V4(ip.src_addr()),
            IpAddr::V4(ip.dst_addr()),
            ip.protocol().0,
            0,
            0,
        );
        let end = usize::from(ip.total_len());
        Self::with_ports(data, key, l4_offset, end, fragment, later)
    }

    fn parse_v6(data: &[u8]) -> Option<Tuple> {
        let ip = Ipv6Packet::new_checked(data).ok()?;
        let ext = ip.extension_headers().ok()?;
        let fragment = ext.fragment.is_some_and(|f| f.is_fragmented());
        let later = ext.fragment.is_some_and(|f| f.offset != 0);
        let key = FlowKey::new(
            IpAddr::V6(ip.src_addr()),
            IpAddr::V6(ip.dst_addr()),
            ext.upper_protocol.0,
            0,
            0,
        );
        let (at, end) = (ext.upper_offset, ip.packet_len());
        Self::with_ports(data, key, at, end, fragment, later)
    }

    fn with_ports(
        data: &[u8],
        mut key: FlowKey,
        l4_offset: usize,
        end: usize,
        fragment: bool,
        later_fragment: bool,
    ) -> Option<Tuple> {
        let l4 = data.get(l4_offset..end)?;
        let mut tcp_flags = None;
        if !later_fragment {
            match key.proto {
                TCP if l4.len() >= 20 => tcp_flags = Some(l4[13]),
                UDP if l4.len() >= 8 => {}
                SCTP if l4.len() >= 12 => {}
                TCP | UDP | SCTP => return None,
                _ => {}
            }
            if matches!(key.proto, TCP | UDP | SCTP) {
                key.src_port = u16::from_be_bytes([l4[0], l4[1]]);
                key.dst_port = u16::from_be_bytes([l4[2], l4[3]]);
            }
        }
        Some(Tuple {
            key,
            l4_offset,
            end,
            tcp_flags,
            fragment,
            later_fragment,
        })
    }

    /// For a later fragment: takes the ports its datagram's first fragment carried, as
    /// `table` learned them; false (nothing changed) when they are not known.
    pub fn follow_first(&mut self, ip: &[u8], table: &VirtualReassembly) -> bool {
        let Some((src, dst)) = table.ports(ip) else {
            return false;
        };
        self.key.src_port = src;
        self.key.dst_port = dst;
        true
    }

    /// True for TCP, UDP and SCTP: the protocols services are defined for.
    pub fn has_ports(&self) -> bool {
        matches!(self.key.proto, TCP | UDP | SCTP)
    }
}

/// The tuple of the common packet, read from the fixed headers as arrays: IPv4 without
/// options, not a fragment, TCP or UDP with the whole transport header present, lengths
/// consistent. The NAT node's fast path works on this; anything else goes to [`Tuple::parse`]
/// (which gives the same tuple for these packets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plain4 {
    /// The flow key.
    pub key: FlowKeyV4,
    /// End of the IP packet (its total length).
    pub end: usize,
    /// TCP flags, for TCP.
    pub tcp_flags: Option<u8>,
}

impl Plain4 {
    /// Reads the tuple of a packet that ip-input already validated; `None` for anything but
    /// the common packet.
    #[inline]
    pub fn parse(data: &[u8]) -> Option<Plain4> {
        // The IPv4 header and the ports, which TCP and UDP both start with.
        let h = data.first_chunk::<24>()?;
        let end = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let proto = h[9];
        // The whole transport header must be there: 20 bytes of TCP, 8 of UDP.
        let min_end = match proto {
            TCP => 40,
            UDP => 28,
            _ => return None,
        };
        let unfragmented = u16::from_be_bytes([h[6], h[7]]) & 0x3fff == 0;
        if h[0] != 0x45 || !unfragmented || end < min_end || end > data.len() {
            return None;
        }
        let tcp_flags = if proto == TCP {
            Some(*data.get(33)?)
        } else {
            None
        };
        Some(Plain4 {
            key: FlowKeyV4 {
                src: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
                dst: u32::from_be_bytes([h[16], h[17], h[18], h[19]]),
                proto,
                src_port: u16::from_be_bytes([h[20], h[21]]),
                dst_port: u16::from_be_bytes([h[22], h[23]]),
            },
            end,
            tcp_flags,
        })
    }

    /// The same as a general [`Tuple`].
    pub fn tuple(&self) -> Tuple {
        Tuple {
            key: self.key.to_key(),
            l4_offset: 20,
            end: self.end,
            tcp_flags: self.tcp_flags,
            fragment: false,
            later_fragment: false,
        }
    }
}

/// How packets of one direction of a tracked connection are translated: worked out once from
/// the connection's tuples ([`Translation::between`]) and kept in its conntrack entry, so an
/// established flow's packet needs neither the tuples nor their comparison.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Translation {
    /// Nothing changes.
    #[default]
    None,
    /// IPv4 TCP or UDP: [`Rewrite4::apply`] on a [`Plain4`] packet.
    Ipv4(Rewrite4),
    /// Anything else (IPv6, SCTP): [`rewrite`] to the target tuple.
    General,
}

impl Translation {
    /// The translation of packets with tuple `from` into tuple `to` (see [`target_tuple`]).
    pub fn between(from: &FlowKey, to: &FlowKey) -> Translation {
        if from == to {
            return Translation::None;
        }
        match (FlowKeyV4::from_key(from), FlowKeyV4::from_key(to)) {
            (Some(f), Some(t)) if matches!(from.proto, TCP | UDP) => {
                Translation::Ipv4(Rewrite4::new(&f, &t))
            }
            _ => Translation::General,
        }
    }

    /// The translations of both directions of a connection whose tuples are `original` and
    /// `reply`, indexed by [`Direction::index`]: [`Translation::between`] each direction's
    /// tuple and its [`target_tuple`], with the IPv4 keys converted once.
    pub fn pair(original: &FlowKey, reply: &FlowKey) -> [Translation; 2] {
        match (FlowKeyV4::from_key(original), FlowKeyV4::from_key(reply)) {
            (Some(o), Some(r)) if matches!(o.proto, TCP | UDP) && o.proto == r.proto => {
                let (o_back, r_back) = (o.reversed(), r.reversed());
                if r == o_back {
                    return [Translation::None; 2];
                }
                [
                    Translation::Ipv4(Rewrite4::new(&o, &r_back)),
                    Translation::Ipv4(Rewrite4::new(&r, &o_back)),
                ]
            }
            _ => [
                Translation::between(original, &reply.reversed()),
                Translation::between(reply, &original.reversed()),
            ],
        }
    }
}

/// The rewrite of an IPv4 TCP or UDP tuple into another, precomputed: the new addresses and
/// ports as on the wire, and the changes to the two checksums (RFC 1624) folded to 16 bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewrite4 {
    /// Source and destination address: IPv4 header bytes 12..16 and 16..20, as they are in
    /// memory (kept in integers so that reading a `Rewrite4` is a few register loads; 32-bit
    /// ones so that it packs into conntrack entries with 4-byte alignment).
    addrs: [u32; 2],
    /// Source and destination port: transport header bytes 0..4, as they are in memory.
    ports: u32,
    /// The address changes: what the IPv4 header checksum takes ([`checksum::Delta::folded`]).
    header: u16,
    /// The address and port changes: what the transport checksum (pseudo-header) takes.
    transport: u16,
}

impl Rewrite4 {
    /// The rewrite of tuple `from` into `to` (protocols are not changed).
    pub fn new(from: &FlowKeyV4, to: &FlowKeyV4) -> Self {
        // As `rewrite` does, only the fields that change go into the checksums: adding an
        // unchanged word could turn a checksum of 0x0000 into 0xffff.
        let mut header = checksum::Delta::default();
        if from.src != to.src {
            header.replace32(from.src, to.src);
        }
        if from.dst != to.dst {
            header.replace32(from.dst, to.dst);
        }
        let mut transport = header;
        if from.src_port != to.src_port {
            transport.replace16(from.src_port, to.src_port);
        }
        if from.dst_port != to.dst_port {
            transport.replace16(from.dst_port, to.dst_port);
        }
        let (s, d) = (to.src.to_be_bytes(), to.dst.to_be_bytes());
        let (sp, dp) = (to.src_port.to_be_bytes(), to.dst_port.to_be_bytes());
        Self {
            addrs: [u32::from_ne_bytes(s), u32::from_ne_bytes(d)],
            ports: u32::from_ne_bytes([sp[0], sp[1], dp[0], dp[1]]),
            header: header.folded(),
            transport: transport.folded(),
        }
    }

    /// Rewrites the packet `plain` was read from, whose tuple is the `from` of
    /// [`Rewrite4::new`]: the same bytes [`rewrite`] writes. False (nothing changed) when the
    /// packet is shorter than `plain` says.
    #[inline]
    pub fn apply(&self, ip: &mut [u8], plain: &Plain4) -> bool {
        let Some(ip) = ip.get_mut(..plain.end) else {
            return false;
        };
        // The headers as arrays (20 bytes of IPv4, then TCP's or UDP's), so that no write
        // below needs a check.
        if plain.key.proto == UDP {
            ip.first_chunk_mut::<28>()
                .is_some_and(|h| self.apply_to::<28, 26>(h, true))
        } else {
            ip.first_chunk_mut::<40>()
                .is_some_and(|h| self.apply_to::<40, 36>(h, false))
        }
    }

    /// [`Rewrite4::apply`] to the headers `h`, whose transport checksum is at `CSUM`.
    #[inline(always)]
    fn apply_to<const N: usize, const CSUM: usize>(&self, h: &mut [u8; N], udp: bool) -> bool {
        h[12..16].copy_from_slice(&self.addrs[0].to_ne_bytes());
        h[16..20].copy_from_slice(&self.addrs[1].to_ne_bytes());
        let hc = u16::from_be_bytes([h[10], h[11]]);
        h[10..12].copy_from_slice(&checksum::apply_folded(self.header, hc).to_be_bytes());
        h[20..24].copy_from_slice(&self.ports.to_ne_bytes());
        let old = u16::from_be_bytes([h[CSUM], h[CSUM + 1]]);
        // A UDP checksum of zero means "none" and stays so; a computed zero is sent as all ones.
        if !(udp && old == 0) {
            let mut c = checksum::apply_folded(self.transport, old);
            if udp && c == 0 {
                c = 0xffff;
            }
            h[CSUM..CSUM + 2].copy_from_slice(&c.to_be_bytes());
        }
        true
    }
}

/// True for an IPv4 fragment at offset 0 (it carries the transport header).
fn first_fragment(data: &[u8]) -> bool {
    data.first().is_some_and(|b| b >> 4 == 4)
        && data.len() >= 8
        && u16::from_be_bytes([data[6], data[7]]) & 0x1fff == 0
}

/// The tuple a packet travelling in `dir` on `entry` must have after translation: the reverse
/// of the other direction's tuple.
#[inline]
pub fn target_tuple(entry: &ConnEntry, dir: Direction) -> FlowKey {
    match dir {
        Direction::Original => entry.reply.reversed(),
        Direction::Reply => entry.original.reversed(),
    }
}

/// True if the entry translates anything.
#[inline]
pub fn is_translated(entry: &ConnEntry) -> bool {
    entry.reply != entry.original.reversed()
}

/// Rewrites the packet at the start of `ip` (tuple `from`, as parsed) so that its addresses
/// and ports are those of `to`, fixing the IPv4 header checksum and the transport checksum
/// (incrementally for TCP and UDP, recomputed for SCTP's CRC32c when a port changes). False
/// when the packet is too short for what it claims (nothing is changed then).
pub fn rewrite(ip: &mut [u8], from: &Tuple, to: &FlowKey) -> bool {
    match rewrite_v4_plain(ip, from, to) {
        Some(done) => done,
        None => rewrite_general(ip, from, to),
    }
}

/// [`rewrite`] for any packet.
fn rewrite_general(ip: &mut [u8], from: &Tuple, to: &FlowKey) -> bool {
    let l4_start = from.l4_offset;
    let min_header = if from.key.src.is_ipv4() { 20 } else { 40 };
    if ip.len() < from.end || l4_start > from.end || l4_start < min_header {
        return false;
    }
    // The first fragment carries the transport header and its checksum, which covers the
    // whole datagram: an incremental update there is right for every fragment. Not so
    // SCTP's CRC32c, which only the whole packet could recompute: its fragments keep their
    // ports.
    let sctp_fragment = from.fragment && from.key.proto == SCTP;
    let ports =
        from.has_ports() && !from.later_fragment && !sctp_fragment && l4_start + 4 <= from.end;
    // Transport checksum position, if the protocol has a pseudo-header one.
    let csum_at = match from.key.proto {
        TCP if ports => Some(l4_start + 16),
        UDP if ports => Some(l4_start + 6),
        _ => None,
    }
    .filter(|&at| at + 2 <= from.end);
    // The address changes go into both checksums (IPv4 header, pseudo-header); the port
    // changes into the transport one only.
    let mut addrs = checksum::Delta::default();
    match (from.key.src, from.key.dst, to.src, to.dst) {
        (IpAddr::V4(os), IpAddr::V4(od), IpAddr::V4(ns), IpAddr::V4(nd)) => {
            if os != ns {
                addrs.replace32(os.to_bits(), ns.to_bits());
                ip[12..16].copy_from_slice(&ns.octets());
            }
            if od != nd {
                addrs.replace32(od.to_bits(), nd.to_bits());
                ip[16..20].copy_from_slice(&nd.octets());
            }
            let hc = u16::from_be_bytes([ip[10], ip[11]]);
            ip[10..12].copy_from_slice(&addrs.apply(hc).to_be_bytes());
        }
        (IpAddr::V6(os), IpAddr::V6(od), IpAddr::V6(ns), IpAddr::V6(nd)) => {
            if os != ns {
                addrs.replace_bytes(&os.octets(), &ns.octets());
                ip[8..24].copy_from_slice(&ns.octets());
            }
            if od != nd {
                addrs.replace_bytes(&od.octets(), &nd.octets());
                ip[24..40].copy_from_slice(&nd.octets());
            }
        }
        // Translation never changes the family.
        _ => return false,
    }
    let mut l4_delta = addrs;
    if ports {
        let l4 = &mut ip[l4_start..from.end];
        if from.key.src_port != to.src_port {
            l4_delta.replace16(from.key.src_port, to.src_port);
            l4[0..2].copy_from_slice(&to.src_port.to_be_bytes());
        }
        if from.key.dst_port != to.dst_port {
            l4_delta.replace16(from.key.dst_port, to.dst_port);
            l4[2..4].copy_from_slice(&to.dst_port.to_be_bytes());
        }
        if from.key.proto == SCTP
            && (from.key.src_port != to.src_port || from.key.dst_port != to.dst_port)
        {
            let mut s = sctp::SctpPacket::new_unchecked(l4);
            s.fill_checksum();
        }
    }
    if let Some(at) = csum_at {
        let old = u16::from_be_bytes([ip[at], ip[at + 1]]);
        // A UDP-over-IPv4 checksum of zero means "none" and stays so.
        let none = from.key.proto == UDP && old == 0 && from.key.src.is_ipv4();
        if !none {
            let mut c = l4_delta.apply(old);
            // A computed zero is sent as all ones in UDP.
            if from.key.proto == UDP && c == 0 {
                c = 0xffff;
            }
            ip[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
    }
    true
}

/// [`rewrite`] for the common packet, with the headers read as arrays: IPv4 without options,
/// not a fragment, TCP or UDP with the whole transport header present. `None` sends anything
/// else to the general code, which gives the same result for these.
#[inline]
fn rewrite_v4_plain(ip: &mut [u8], from: &Tuple, to: &FlowKey) -> Option<bool> {
    let (IpAddr::V4(os), IpAddr::V4(od), IpAddr::V4(ns), IpAddr::V4(nd)) =
        (from.key.src, from.key.dst, to.src, to.dst)
    else {
        return None;
    };
    let csum_at = match from.key.proto {
        TCP => 16,
        UDP => 6,
        _ => return None,
    };
    if from.fragment || from.l4_offset != 20 {
        return None;
    }
    // Every slice is taken before anything is written, so `None` leaves the packet as it was.
    let (header, l4) = ip.get_mut(..from.end)?.split_first_chunk_mut::<20>()?;
    let (ports, rest) = l4.split_first_chunk_mut::<4>()?;
    let csum = rest.get_mut(csum_at - 4..csum_at - 2)?;
    // The address changes go into both checksums (IPv4 header, pseudo-header); the port
    // changes into the transport one only.
    let mut addrs = checksum::Delta::default();
    if os != ns {
        addrs.replace32(os.to_bits(), ns.to_bits());
        header[12..16].copy_from_slice(&ns.octets());
    }
    if od != nd {
        addrs.replace32(od.to_bits(), nd.to_bits());
        header[16..20].copy_from_slice(&nd.octets());
    }
    let hc = u16::from_be_bytes([header[10], header[11]]);
    header[10..12].copy_from_slice(&addrs.apply(hc).to_be_bytes());
    let mut l4_delta = addrs;
    if from.key.src_port != to.src_port {
        l4_delta.replace16(from.key.src_port, to.src_port);
        ports[0..2].copy_from_slice(&to.src_port.to_be_bytes());
    }
    if from.key.dst_port != to.dst_port {
        l4_delta.replace16(from.key.dst_port, to.dst_port);
        ports[2..4].copy_from_slice(&to.dst_port.to_be_bytes());
    }
    let old = u16::from_be_bytes([csum[0], csum[1]]);
    // A UDP checksum of zero means "none" and stays so; a computed zero is sent as all ones.
    let udp = from.key.proto == UDP;
    if !(udp && old == 0) {
        let mut c = l4_delta.apply(old);
        if udp && c == 0 {
            c = 0xffff;
        }
        csum.copy_from_slice(&c.to_be_bytes());
    }
    Some(true)
}

/// ICMP types that carry an error about another packet: IPv4 destination unreachable, time
/// exceeded, parameter problem; ICMPv6 destination unreachable, packet too big, time
/// exceeded, parameter problem.
pub fn is_icmp_error(proto: u8, icmp_type: u8) -> bool {
    match proto {
        ICMP => matches!(icmp_type, 3 | 11 | 12),
        ICMPV6 => matches!(icmp_type, 1..=4),
        _ => false,
    }
}

/// ICMP types that ask for an answer, the ones Linux conntrack takes as opening a connection
/// (`ct state new`): IPv4 echo, timestamp, information and address mask requests; ICMPv6
/// echo request and node information query. Other ICMP (errors, answers, neighbor
/// discovery) opens none.
pub fn is_icmp_query(proto: u8, icmp_type: u8) -> bool {
    match proto {
        ICMP => matches!(icmp_type, 8 | 13 | 15 | 17),
        ICMPV6 => matches!(icmp_type, 128 | 139),
        _ => false,
    }
}

/// For an ICMP error packet (tuple `outer`), the tuple of the packet it quotes and that
/// packet's offset in `ip`. `None` when the message is not an error or quotes too little.
pub fn quoted_tuple(ip: &[u8], outer: &Tuple) -> Option<(Tuple, usize)> {
    if outer.fragment {
        return None;
    }
    let icmp = ip.get(outer.l4_offset..outer.end)?;
    if icmp.len() < 8 || !is_icmp_error(outer.key.proto, icmp[0]) {
        return None;
    }
    let at = outer.l4_offset + 8;
    let inner = ip.get(at..outer.end)?;
    let quoted = parse_quoted(inner)?;
    Some((quoted, at))
}

/// Parses a quoted packet: an IP header and at least the first 8 bytes of its payload (the
/// ports), whatever the quoted length fields say (errors quote a prefix of the packet).
fn parse_quoted(inner: &[u8]) -> Option<Tuple> {
    let version = inner.first()? >> 4;
    let (key, l4_offset, fragment) = match version {
        4 => {
            let ihl = usize::from(inner.first()? & 0x0f) * 4;
            if ihl < 20 || inner.len() < ihl + 8 {
                return None;
            }
            let p = Ipv4Packet::new_unchecked(inner);
            let key = FlowKey::new(
                IpAddr::V4(p.src_addr()),
                IpAddr::V4(p.dst_addr()),
                p.protocol().0,
                0,
                0,
            );
            (key, ihl, p.is_fragment() && !first_fragment(inner))
        }
        6 => {
            if inner.len() < 48 {
                return None;
            }
            let p = Ipv6Packet::new_unchecked(inner);
            // Quoted IPv6 packets are walked no further than the fixed header: errors about
            // translated flows quote TCP/UDP/SCTP right after it.
            let proto = p.next_header();
            if proto.is_ipv6_extension_header() && proto != IpProtocol(SCTP) {
                return None;
            }
            let key = FlowKey::new(
                IpAddr::V6(p.src_addr()),
                IpAddr::V6(p.dst_addr()),
                proto.0,
                0,
                0,
            );
            (key, 40, false)
        }
        _ => return None,
    };
    let mut key = key;
    let l4 = &inner[l4_offset..];
    if !fragment && matches!(key.proto, TCP | UDP | SCTP) {
        key.src_port = u16::from_be_bytes([l4[0], l4[1]]);
        key.dst_port = u16::from_be_bytes([l4[2], l4[3]]);
    }
    // An echo is tracked by its identifier in both port places
    // ([`FlowKey::icmp_echo`]): so is its quote, so that errors about a ping find its flow.
    let echo = matches!(
        (version, key.proto, l4[0]),
        (4, ICMP, 0 | 8) | (6, ICMPV6, 128 | 129)
    );
    if !fragment && echo {
        let identifier = u16::from_be_bytes([l4[4], l4[5]]);
        key.src_port = identifier;
        key.dst_port = identifier;
    }
    Some(Tuple {
        key,
        l4_offset,
        end: inner.len(),
        tcp_flags: None,
        fragment,
        later_fragment: fragment,
    })
}

/// Translates an ICMP error about a tracked flow: the quoted packet (tuple `quoted`, at
/// `quoted_at`) becomes `quoted_to`, the outer destination becomes `outer_dst`, and the outer
/// source becomes `outer_src`. The quoted IPv4 header checksum, the quoted transport checksum
/// (when quoted), the ICMP checksum and the outer header checksum are recomputed.
pub fn rewrite_icmp_error(
    ip: &mut [u8],
    outer: &Tuple,
    quoted: &Tuple,
    quoted_at: usize,
    quoted_to: &FlowKey,
    outer_src: IpAddr,
    outer_dst: IpAddr,
) -> bool {
    if ip.len() < outer.end || quoted_at > outer.end {
        return false;
    }
    {
        let inner = &mut ip[quoted_at..outer.end];
        // Only the quoted header's own fields are rewritten in place; the quoted transport
        // checksum is fixed when it is present (the quote may end before it).
        if !rewrite_quoted(inner, quoted, quoted_to) {
            return false;
        }
    }
    let outer_to = FlowKey::new(outer_src, outer_dst, outer.key.proto, 0, 0);
    let outer_ports_free = Tuple {
        key: FlowKey {
            src_port: 0,
            dst_port: 0,
            ..outer.key
        },
        ..*outer
    };
    if !rewrite(ip, &outer_ports_free, &outer_to) {
        return false;
    }
    // The ICMP checksum covers the (changed) quote and, for ICMPv6, the pseudo-header: compute
    // it whole; errors are rare.
    let icmp_at = outer.l4_offset;
    ip[icmp_at + 2] = 0;
    ip[icmp_at + 3] = 0;
    let csum = match (outer_src, outer_dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let len = (outer.end - icmp_at) as u32;
            let ph = checksum::pseudo_header_ipv6(&s, &d, IpProtocol(ICMPV6), len);
            checksum::finish(checksum::combine(
                ph,
                checksum::sum(&ip[icmp_at..outer.end]),
            ))
        }
        _ => checksum::checksum(&ip[icmp_at..outer.end]),
    };
    ip[icmp_at + 2..icmp_at + 4].copy_from_slice(&csum.to_be_bytes());
    true
}

/// Rewrites a quoted packet's addresses and ports (a quote may be cut short, so the transport
/// checksum is only updated when it is inside the quote).
fn rewrite_quoted(inner: &mut [u8], from: &Tuple, to: &FlowKey) -> bool {
    let l4 = from.l4_offset;
    let csum_at = match from.key.proto {
        TCP => Some(l4 + 16),
        UDP => Some(l4 + 6),
        _ => None,
    }
    .filter(|&at| at + 2 <= inner.len());
    let mut c = csum_at.map(|at| u16::from_be_bytes([inner[at], inner[at + 1]]));
    if from.key.proto == UDP && from.key.src.is_ipv4() && c == Some(0) {
        c = None;
    }
    match (from.key.src, from.key.dst, to.src, to.dst) {
        (IpAddr::V4(os), IpAddr::V4(od), IpAddr::V4(ns), IpAddr::V4(nd)) => {
            let mut p = Ipv4Packet::new_unchecked(&mut inner[..]);
            p.set_src_addr(ns);
            p.set_dst_addr(nd);
            // The quoted header is complete (the quote holds at least header + 8 bytes).
            p.fill_checksum();
            c = c.map(|c| checksum::update_ipv4_addr(c, os, ns));
            c = c.map(|c| checksum::update_ipv4_addr(c, od, nd));
        }
        (IpAddr::V6(os), IpAddr::V6(od), IpAddr::V6(ns), IpAddr::V6(nd)) => {
            let mut p = Ipv6Packet::new_unchecked(&mut inner[..]);
            p.set_src_addr(ns);
            p.set_dst_addr(nd);
            c = c.map(|c| checksum::update_ipv6_addr(c, &os, &ns));
            c = c.map(|c| checksum::update_ipv6_addr(c, &od, &nd));
        }
        _ => return false,
    }
    if !from.fragment && matches!(from.key.proto, TCP | UDP | SCTP) && inner.len() >= l4 + 4 {
        c = c.map(|c| checksum::update_port(c, from.key.src_port, to.src_port));
        c = c.map(|c| checksum::update_port(c, from.key.dst_port, to.dst_port));
        inner[l4..l4 + 2].copy_from_slice(&to.src_port.to_be_bytes());
        inner[l4 + 2..l4 + 4].copy_from_slice(&to.dst_port.to_be_bytes());
    }
    if let (Some(at), Some(mut c)) = (csum_at, c) {
        if from.key.proto == UDP && c == 0 {
            c = 0xffff;
        }
        inner[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    true
}

#[cfg(test)]
mod tests;
