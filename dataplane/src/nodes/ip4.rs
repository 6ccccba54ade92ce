//! IPv4 forwarding: `ip4-input` (RFC 1812 5.2.2 validation), `ip4-lookup` (FIB), `ip4-local`
//! (packets for this node) and `ip4-rewrite` (TTL, MTU, neighbor, Ethernet header).

use std::net::{IpAddr, Ipv4Addr};

use super::fragment::{fragment_ipv4, FragmentError};
use super::ip4_options::{self, OptionsVerdict};
use super::local_frag::{self, Reassembled};
use super::neighbor::{put_known_header, RecentHeaders};
use super::{redirect, tcp_reset, PortMtu};
use crate::buffer::PacketBuffer;
use crate::fib::{Gateways4, Route};
use crate::graph::{Context, ErrorInfo, Meta, NextIndex, Node, Packet, DROP, PUNT, TX};
use crate::wire::icmpv4::{time_exceeded_code, unreachable_code};
use crate::wire::{
    checksum, Icmpv4Message, IpAddrPair, IpProtocol, Ipv4Packet, TcpPacket, WireError,
};
use crate::{node_errors, node_nexts, per_packet_node};

/// TTL of packets this node originates (echo replies, ICMP errors), as Linux's default.
pub const DEFAULT_TTL: u8 = 64;

/// The ICMP parameter problem pointing at byte `pointer` of the IPv4 header.
fn param_problem(pointer: u8) -> (u8, u8, u32) {
    (Icmpv4Message::PARAM_PROBLEM.0, 0, u32::from(pointer) << 24)
}

/// True for source addresses RFC 1812 5.3.7 says a router must not forward from: "this
/// network" (0/8), loopback, multicast, class E and limited broadcast.
#[inline]
fn is_martian_source(a: Ipv4Addr) -> bool {
    let o = a.octets()[0];
    o == 0 || o == 127 || o >= 224
}

/// True for destinations never valid on the wire: 0/8, loopback, class E (but not the limited
/// broadcast, which is received locally).
#[inline]
fn is_martian_destination(a: Ipv4Addr) -> bool {
    let o = a.octets()[0];
    o == 0 || o == 127 || (o >= 240 && !a.is_broadcast())
}

/// True for IPv4 link-local addresses, 169.254/16 (RFC 3927): valid on their own link only,
/// so a router never forwards a packet from or to one (RFC 3927 2.7).
#[inline]
fn is_link_local(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 169 && o[1] == 254
}

/// First octets that may make an address one no forwarded packet carries, as a table indexed
/// by the octet: bit 0 for a source (0, 127, 169, 224 and up), bit 1 for a destination (0,
/// 127, 169, 240 and up). 169 stands for 169.254/16 (link-local), which [`Ip4Input::martian`]
/// checks in full.
static MAY_BE_MARTIAN: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut o = 0;
    while o < 256 {
        let source = o == 0 || o == 127 || o == 169 || o >= 224;
        let destination = o == 0 || o == 127 || o == 169 || o >= 240;
        t[o] = source as u8 | (destination as u8) << 1;
        o += 1;
    }
    t
};

/// A quick test that every ordinary packet passes: false unless the first octet of the source
/// is 0, 127, 169 or 224 and up, or that of the destination 0, 127, 169 or 240 and up. Only
/// then are the exact checks ([`is_martian_source`], [`is_martian_destination`],
/// [`is_link_local`]) made. Two loads from a table, as [`HAS_PORTS`] does for protocols,
/// instead of a compare per octet value.
#[inline]
fn may_be_martian(src: u8, dst: u8) -> bool {
    (MAY_BE_MARTIAN[usize::from(src)] | MAY_BE_MARTIAN[usize::from(dst)] >> 1) & 1 != 0
}

node_errors! {
    pub enum Ip4InputError {
        TooShort = ("too_short", "shorter than an IPv4 header or than its header length"),
        BadVersion = ("bad_version", "IP version is not 4"),
        BadHeaderLength = ("bad_header_length", "IHL below 5"),
        BadLength = ("bad_length", "total length below the header length or above the frame"),
        BadChecksum = ("bad_checksum", "header checksum is wrong"),
        MartianSource = ("martian_source", "source is 0/8, loopback, multicast or class E"),
        MartianDestination = ("martian_destination", "destination is 0/8, loopback or class E"),
        LinkLocal = ("link_local", "link-local (169.254/16) source or destination, not for this node: not forwarded (RFC 3927 2.7)"),
        BadOption = ("bad_option", "malformed IP option: parameter problem sent"),
        SourceRoute = ("source_route", "source-routed packet (LSRR/SSRR) dropped: the tables say to drop them"),
    }
}

node_nexts! {
    enum InputNext {
        Drop = DROP,
        Lookup = "ip4-lookup",
        Error = "icmp4-error",
        Nat = "ip4-nat",
    }
}

/// The `ip4-input` node.
#[derive(Debug, Default)]
pub struct Ip4Input;

impl Ip4Input {
    /// `beyond` is where a good packet goes next: the lookup, or the NAT node when the tables
    /// have services or policy (decided once per vector); `tail_min` is the tables'
    /// [`broadcast_tail_min`](crate::tables::Tables::broadcast_tail_min), read once per vector
    /// too; `TRACE` is [`Context::tracing`].
    ///
    /// The usual packet first: version 4 without options (one byte compare for both), its
    /// total length within the frame. Anything else takes [`Ip4Input::check_general`], which
    /// makes the same checks and the rest.
    #[inline(always)]
    fn check<B: PacketBuffer, const TRACE: bool>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        (beyond, tail_min): (InputNext, u8),
    ) -> InputNext {
        let data = pkt.buf.data();
        let Some(h) = data.first_chunk::<20>() else {
            return Self::malformed(cx, data);
        };
        let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        if h[0] != 0x45 || total_len < 20 || total_len > data.len() {
            return Self::check_general(cx, pkt, beyond);
        }
        if !checksum::ipv4_header_ok(h) {
            cx.error(Ip4InputError::BadChecksum);
            return InputNext::Drop;
        }
        // `screen`'s first test, with the tables' value read once per vector.
        if may_be_martian(h[12], h[16]) || h[15] >= tail_min {
            if let Some(drop) = Self::martian(cx, h) {
                return drop;
            }
        }
        if TRACE && pkt.meta.trace != 0 {
            Self::trace(cx, &pkt.meta, h, total_len);
        }
        // Ethernet pads short frames: the IP total length is the truth.
        pkt.buf.truncate(total_len);
        beyond
    }

    /// Counts and drops a packet with a martian source or destination (RFC 1812 5.3.7);
    /// `None` for one that only looked like it might be.
    /// Drops packets with addresses no packet may carry: one cheap test for the usual
    /// packet (first octets, the source's last one), the real checks out of line.
    #[inline(always)]
    fn screen<B>(cx: &mut Context<'_, B>, h: &[u8; 20]) -> Option<InputNext> {
        if may_be_martian(h[12], h[16]) || cx.tables.may_be_directed_broadcast(h[15]) {
            Self::martian(cx, h)
        } else {
            None
        }
    }

    #[cold]
    #[inline(never)]
    fn martian<B>(cx: &mut Context<'_, B>, h: &[u8; 20]) -> Option<InputNext> {
        let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
        let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
        // A host still learning its address sends from 0.0.0.0 (RFC 1122 3.2.1.3, RFC 1812
        // 4.2.2.11): ICMP to this router (an address mask request, a router solicitation) is
        // taken; nothing from there is ever forwarded.
        let learning = src.is_unspecified()
            && h[9] == IpProtocol::ICMP.0
            && (dst.is_broadcast()
                || dst == super::icmp4::ALL_ROUTERS
                || cx.tables.is_local_ipv4(dst));
        if (is_martian_source(src) && !learning) || cx.tables.is_directed_broadcast(src) {
            cx.error(Ip4InputError::MartianSource);
            return Some(InputNext::Drop);
        }
        if is_martian_destination(dst) {
            cx.error(Ip4InputError::MartianDestination);
            return Some(InputNext::Drop);
        }
        // RFC 3927 2.7: never forwarded, from or to link-local; received when this node is
        // the destination (its own 169.254 address, or a broadcast or group it takes, which
        // are never forwarded either).
        let received = |dst: Ipv4Addr| {
            dst.is_broadcast()
                || dst.is_multicast()
                || cx.tables.is_local_ipv4(dst)
                || cx.tables.is_directed_broadcast(dst)
        };
        if (is_link_local(src) || is_link_local(dst)) && !received(dst) {
            cx.error(Ip4InputError::LinkLocal);
            return Some(InputNext::Drop);
        }
        None
    }

    /// The trace line of a checked packet.
    #[cold]
    #[inline(never)]
    fn trace<B>(cx: &mut Context<'_, B>, meta: &Meta, h: &[u8; 20], total_len: usize) {
        let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
        let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
        cx.trace(meta, format_args!("{src} > {dst} len {total_len}"));
    }

    /// [`Ip4Input::check`] for any packet: options, other versions, bad lengths.
    #[inline(never)]
    fn check_general<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        beyond: InputNext,
    ) -> InputNext {
        let data = pkt.buf.data();
        // The fixed header is read once, as an array (no bounds check per field); the lengths
        // are checked together and any failure is sorted out by the wire parser, off the fast
        // path, so the counters say exactly what they said before.
        let Some(h) = data.first_chunk::<20>() else {
            return Self::malformed(cx, data);
        };
        let header_len = usize::from(h[0] & 0x0f) * 4;
        let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        if h[0] >> 4 != 4 || header_len < 20 || total_len < header_len || total_len > data.len() {
            return Self::malformed(cx, data);
        }
        let checksum_ok = if header_len == 20 {
            checksum::ipv4_header_ok(h)
        } else {
            Ipv4Packet::new_unchecked(data).verify_checksum()
        };
        if !checksum_ok {
            cx.error(Ip4InputError::BadChecksum);
            return InputNext::Drop;
        }
        if let Some(drop) = Self::screen(cx, h) {
            return drop;
        }
        if pkt.meta.trace != 0 {
            Self::trace(cx, &pkt.meta, h, total_len);
        }
        // Ethernet pads short frames: the IP total length is the truth.
        pkt.buf.truncate(total_len);
        if header_len > 20 {
            match ip4_options::check(Ipv4Packet::new_unchecked(pkt.buf.data()).options()) {
                OptionsVerdict::Accept {
                    source_route: true, ..
                } if cx.tables.drop_source_routed => {
                    cx.error(Ip4InputError::SourceRoute);
                    return InputNext::Drop;
                }
                OptionsVerdict::Accept { .. } => {}
                OptionsVerdict::ParamProblem(pointer) => {
                    cx.error(Ip4InputError::BadOption);
                    pkt.meta.icmp_error = Some(param_problem(pointer));
                    return InputNext::Error;
                }
            }
        }
        beyond
    }

    /// Counts why a packet that failed the length checks is malformed.
    #[cold]
    #[inline(never)]
    fn malformed<B: PacketBuffer>(cx: &mut Context<'_, B>, data: &[u8]) -> InputNext {
        cx.error(match Ipv4Packet::new_checked(data).err() {
            Some(WireError::BadVersion) => Ip4InputError::BadVersion,
            Some(WireError::BadHeaderLength) => Ip4InputError::BadHeaderLength,
            Some(WireError::BadTotalLength | WireError::BadLength) => Ip4InputError::BadLength,
            _ => Ip4InputError::TooShort,
        });
        InputNext::Drop
    }
}

impl<B: PacketBuffer> Node<B> for Ip4Input {
    fn name(&self) -> &'static str {
        "ip4-input"
    }
    fn next_nodes(&self) -> &'static [&'static str] {
        InputNext::NAMES
    }
    fn errors(&self) -> &'static [ErrorInfo] {
        Ip4InputError::INFO
    }
    fn process(&mut self, cx: &mut Context<'_, B>, pkts: &mut [Packet<B>], next: &mut [NextIndex]) {
        let beyond = if cx.tables.services.is_some() || cx.tables.policy.is_some() {
            InputNext::Nat
        } else {
            InputNext::Lookup
        };
        let vector = (beyond, cx.tables.broadcast_tail_min);
        if cx.tracing() {
            for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
                *n = Self::check::<B, true>(cx, pkt, vector).into();
            }
        } else {
            for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
                *n = Self::check::<B, false>(cx, pkt, vector).into();
            }
        }
    }
}

node_errors! {
    pub enum Ip4LookupError {
        NoRoute = ("no_route", "no route to the destination"),
        Unreachable = ("unreachable", "route says unreachable"),
        Blackhole = ("blackhole", "route says discard"),
        Multicast = ("multicast", "multicast destination; multicast routing is not enabled"),
        L2Broadcast = ("l2_broadcast", "unicast packet in a link-layer broadcast frame (RFC 1812 5.3.4)"),
        TooShort = ("too_short", "shorter than an IPv4 header (internal: input checks this)"),
    }
}

node_nexts! {
    enum LookupNext {
        Drop = DROP,
        Rewrite = "ip4-rewrite",
        Local = "ip4-local",
        Error = "icmp4-error",
    }
}

/// The `ip4-lookup` node.
#[derive(Debug, Default)]
pub struct Ip4Lookup;

impl Ip4Lookup {
    /// `fib4` is the FIB's IPv4 lookup and `gateways4` its compact paths of routes through
    /// IPv4 gateways ([`Fib4View::gateways`]), both chosen once for the vector; `TRACE` is
    /// [`Context::tracing`].
    ///
    /// [`Fib4View::gateways`]: crate::fib::Fib4View::gateways
    #[inline(always)]
    fn lookup<'t, B: PacketBuffer, const TRACE: bool>(
        cx: &mut Context<'_, B>,
        (fib4, gateways4): (
            impl Fn(u32) -> Option<&'t Route>,
            impl Fn(u32) -> &'t Gateways4,
        ),
        pkt: &mut Packet<B>,
    ) -> LookupNext {
        let data = pkt.buf.data();
        // Every way into this node checked the header; read it once, as an array.
        let Some(h) = data.first_chunk::<20>() else {
            cx.error(Ip4LookupError::TooShort);
            return LookupNext::Drop;
        };
        // The destination as one word (one load); an `Ipv4Addr` is made only where one is
        // needed.
        let dst = h.last_chunk::<4>().map_or(0, |d| u32::from_be_bytes(*d));
        // The limited broadcast and multicast are both at 224.0.0.0 and above: one compare
        // for the usual unicast destination.
        if dst >= 0xe000_0000 {
            if dst == u32::MAX {
                return LookupNext::Local;
            }
            // Router solicitations come to all-routers (RFC 1256 3), a link-local group this
            // router joins when it does router discovery.
            if dst == u32::from(super::icmp4::ALL_ROUTERS)
                && cx.tables.ipv4_router_discovery.is_some()
                && !pkt.meta.local_origin
            {
                return LookupNext::Local;
            }
            if Ipv4Addr::from(dst).is_multicast() {
                cx.error(Ip4LookupError::Multicast);
                return LookupNext::Drop;
            }
        }
        // The common case first: a route through IPv4 gateways (or on-link paths), for a
        // packet that may be forwarded. The path, from the route's compact form, goes straight
        // into the metadata, without a `NextHop` in between; anything else (other routes, no
        // route, a broadcast frame) takes the general code below.
        if !pkt.meta.l2_multicast || pkt.meta.local_origin {
            if let Some(path) = gateways4(dst).pick(|| header_flow_hash(h, data)) {
                // An IPv4 next hop (the usual one) is stored as the enum's tag and four
                // bytes, not as a copy of the whole 17-byte `Option<IpAddr>`.
                let next_hop = if path.on_link {
                    Ipv4Addr::from(dst)
                } else {
                    path.gateway
                };
                pkt.meta.tx_port = path.port;
                pkt.meta.next_hop = Some(IpAddr::V4(next_hop));
                if TRACE && pkt.meta.trace != 0 {
                    super::trace_next_hop(cx, pkt, IpAddr::V4(Ipv4Addr::from(dst)));
                }
                return LookupNext::Rewrite;
            }
        }
        Self::lookup_general(cx, pkt, fib4(dst))
    }

    /// The rest of [`Ip4Lookup::lookup`], out of line so that the common case keeps its
    /// values in registers: local, blackhole, unreachable and attached routes, no route, a
    /// unicast packet in a broadcast frame.
    #[inline(never)]
    fn lookup_general<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        route: Option<&Route>,
    ) -> LookupNext {
        let data = pkt.buf.data();
        let Some(h) = data.first_chunk::<20>() else {
            cx.error(Ip4LookupError::TooShort);
            return LookupNext::Drop;
        };
        let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
        let hop = match route {
            // RFC 1812 5.3.4: a unicast packet for this router in a link-layer broadcast frame
            // is silently discarded.
            Some(Route::Local)
                if pkt.meta.l2_multicast
                    && !pkt.meta.local_origin
                    && cx.tables.is_local_ipv4(dst) =>
            {
                cx.error(Ip4LookupError::L2Broadcast);
                return LookupNext::Drop;
            }
            Some(Route::Local) => {
                cx.trace(&pkt.meta, format_args!("{dst}: local"));
                return LookupNext::Local;
            }
            Some(Route::Blackhole) => {
                cx.error(Ip4LookupError::Blackhole);
                return LookupNext::Drop;
            }
            // The hash out of line: only wide equal-cost groups need it here, and inlined it
            // would cost every other route registers saved and restored.
            Some(r) => r.next_hop(IpAddr::V4(dst), || header_flow_hash_outlined(h, data)),
            None => None,
        };
        let Some(hop) = hop else {
            let (err, code) = if route.is_some() {
                (Ip4LookupError::Unreachable, unreachable_code::HOST)
            } else {
                (Ip4LookupError::NoRoute, unreachable_code::NET)
            };
            cx.error(err);
            cx.trace(&pkt.meta, format_args!("{dst}: {err:?}"));
            pkt.meta.icmp_error = Some((Icmpv4Message::DST_UNREACHABLE.0, code, 0));
            return LookupNext::Error;
        };
        if pkt.meta.l2_multicast && !pkt.meta.local_origin {
            cx.error(Ip4LookupError::L2Broadcast);
            return LookupNext::Drop;
        }
        super::set_next_hop(cx, pkt, IpAddr::V4(dst), hop);
        LookupNext::Rewrite
    }
}

/// The protocols whose first four bytes are the ports the flow hash takes (TCP, UDP, SCTP), as
/// a table indexed by protocol number: one load instead of three compares.
static HAS_PORTS: [bool; 256] = {
    let mut t = [false; 256];
    t[IpProtocol::TCP.0 as usize] = true;
    t[IpProtocol::UDP.0 as usize] = true;
    t[IpProtocol::SCTP.0 as usize] = true;
    t
};

/// The ports of [`header_flow_hash`] for any header length: the first four bytes of the
/// payload, `data[header_len..total_len]`, if the buffer holds the total length and the payload
/// has them (what `l4_ports` reads of `Ipv4Packet::payload`, in two compares). Out of line: the
/// usual header has no options.
#[inline(never)]
fn ports_after_options(h: &[u8; 20], data: &[u8]) -> u32 {
    let header_len = usize::from(h[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    match data
        .get(..total_len)
        .and_then(|datagram| datagram.get(header_len..header_len + 4))
    {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// [`header_flow_hash`], not inlined.
#[inline(never)]
fn header_flow_hash_outlined(h: &[u8; 20], data: &[u8]) -> u32 {
    header_flow_hash(h, data)
}

/// [`super::ipv4_flow_hash`] of a packet whose fixed header `h` was already read: the same hash,
/// without parsing the header again.
#[inline]
pub(super) fn header_flow_hash(h: &[u8; 20], data: &[u8]) -> u32 {
    let protocol = h[9];
    // More fragments or a fragment offset: the 14 low bits of the flags and offset word,
    // tested as the word lies in the header.
    const FRAGMENT_BITS: u16 = u16::from_ne_bytes(0x3fffu16.to_be_bytes());
    let fragment = u16::from_ne_bytes([h[6], h[7]]) & FRAGMENT_BITS != 0;
    let ports = if fragment || !HAS_PORTS[usize::from(protocol)] {
        0
    } else if h[0] == 0x45 {
        // No options, the usual header: the ports are at a fixed place, and the datagram
        // bounds (at least 24 bytes, all in the buffer) say the buffer has them.
        let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        if (24..=data.len()).contains(&total_len) {
            match data.get(20..24) {
                Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
                _ => 0,
            }
        } else {
            0
        }
    } else {
        ports_after_options(h, data)
    };
    let [.., s0, s1, s2, s3, d0, d1, d2, d3] = *h;
    super::ecmp_hash(
        u32::from_be_bytes([s0, s1, s2, s3]),
        u32::from_be_bytes([d0, d1, d2, d3]),
        protocol,
        ports,
    )
}

impl<B: PacketBuffer> Node<B> for Ip4Lookup {
    fn name(&self) -> &'static str {
        "ip4-lookup"
    }
    fn next_nodes(&self) -> &'static [&'static str] {
        LookupNext::NAMES
    }
    fn errors(&self) -> &'static [ErrorInfo] {
        Ip4LookupError::INFO
    }
    fn process(&mut self, cx: &mut Context<'_, B>, pkts: &mut [Packet<B>], next: &mut [NextIndex]) {
        // The tables do not change within a vector: find the compiled trie once.
        let fib = &cx.tables.fib;
        match (fib.view4(), cx.tracing()) {
            (Some(view), false) => {
                let fib4 = (|dst| view.lookup(dst), |dst| view.gateways(dst));
                for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
                    *n = Self::lookup::<B, false>(cx, fib4, pkt).into();
                }
            }
            (Some(view), true) => {
                let fib4 = (|dst| view.lookup(dst), |dst| view.gateways(dst));
                for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
                    *n = Self::lookup::<B, true>(cx, fib4, pkt).into();
                }
            }
            // Not compiled: every route is read whole, by the general code.
            (None, _) => {
                let fib4 = (|dst| fib.lookup4(Ipv4Addr::from(dst)), |_| &Gateways4::NONE);
                for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
                    *n = Self::lookup::<B, true>(cx, fib4, pkt).into();
                }
            }
        }
    }
}

node_errors! {
    pub enum Ip4LocalError {
        Fragment = ("fragment", "fragment to a broadcast or multicast address"),
        FragmentQueued = ("fragment_queued", "fragments held for reassembly"),
        FragmentDropped = ("fragment_dropped", "fragments dropped: overlapping, too big, or too many datagrams in reassembly"),
        Reassembled = ("reassembled", "datagrams reassembled"),
        NoBuffer = ("no_buffer", "no buffer for a fragment of a reply"),
        BadIcmp = ("bad_icmp", "ICMP message too short or with a bad checksum"),
        EchoReplied = ("echo_replied", "echo requests answered"),
        AddressMaskReplied = ("address_mask_replied", "address mask requests answered (RFC 1812 4.3.3.9)"),
        RouterSolicitations = ("router_solicitations", "router solicitations answered: an advertisement scheduled (RFC 1256)"),
        BadRouterSolicitation = ("bad_router_solicitation", "router solicitations ignored: code not 0, from off the link, or on a port without IPv4 (RFC 1256 4.2)"),
        AddressMaskUnknown = ("address_mask_unknown", "address mask requests not answered: no single mask for the interface and the asker"),
        BroadcastEcho = ("broadcast_echo", "echo request to a broadcast address, or from 0.0.0.0, ignored"),
        LocalLoop = ("local_loop", "packet from this node to this node"),
        PortUnreachable = ("port_unreachable", "UDP to this node, no listener: port unreachable sent"),
        BadUdp = ("bad_udp", "UDP to this node too short or with a bad checksum: dropped unanswered (RFC 1122 4.1.3.4)"),
        ProtocolUnreachable = ("protocol_unreachable", "protocol not handled: protocol unreachable sent"),
        TcpReset = ("tcp_reset", "TCP to this node, no listener: reset sent"),
        TcpDropped = ("tcp_dropped", "TCP to this node that was a reset, malformed or had a bad checksum"),
        Punted = ("punted", "handed to the control plane"),
        SourceRouted = ("source_routed", "addressed to this node with a source route to follow: sent to its next hop"),
        SourceRouteFailed = ("source_route_failed", "source route's next hop unreachable, or not on an attached network for a strict route: destination unreachable (source route failed) sent"),
        PuntedToHost = ("punted_to_host", "for this node, handed to the host stack (punt to host on)"),
    }
}

node_nexts! {
    enum LocalNext {
        Drop = DROP,
        Lookup = "ip4-lookup",
        Error = "icmp4-error",
        Punt = PUNT,
        Rewrite = "ip4-rewrite",
    }
}

/// The `ip4-local` node: answers pings, refuses what nothing listens to, punts the rest.
#[derive(Debug, Default)]
pub struct Ip4Local;

impl Ip4Local {
    /// For a packet addressed to this node whose source route goes on (RFC 791 3.1, RFC 1812
    /// 5.2.4.1): the route's next address becomes the destination, this node's address on
    /// the way out takes its slot, and the packet is forwarded (`ip4-rewrite` decrements the
    /// TTL and adds to record route and timestamp options). Hops naming this node again are
    /// taken here. `None`: the route is complete (or there is none), the packet is for this
    /// node.
    #[cold]
    #[inline(never)]
    fn source_route<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
    ) -> Option<LocalNext> {
        let mut ip = Ipv4Packet::new_unchecked(pkt.buf.data_mut());
        // Forty bytes of options hold at most nine addresses.
        for _ in 0..10 {
            let hop = ip4_options::source_route_hop(ip.options())?;
            let next = hop.next;
            let usable =
                !is_martian_destination(next) && !next.is_multicast() && !next.is_broadcast();
            let port = match cx.tables.fib.lookup(IpAddr::V4(next)).filter(|_| usable) {
                // This node again: its own address is the one recorded.
                Some(Route::Local) => None,
                Some(Route::Attached { port }) => Some(*port),
                // A strict route's next hop must be on an attached network.
                Some(Route::Via(paths))
                    if !hop.strict || paths.iter().all(|p| p.gateway.is_none()) =>
                {
                    paths.first().map(|p| p.port)
                }
                _ => {
                    cx.error(Ip4LocalError::SourceRouteFailed);
                    cx.trace(&pkt.meta, format_args!("source route to {next}: failed"));
                    pkt.meta.icmp_error = Some((
                        Icmpv4Message::DST_UNREACHABLE.0,
                        unreachable_code::SOURCE_ROUTE_FAILED,
                        0,
                    ));
                    return Some(LocalNext::Error);
                }
            };
            let Some(port) = port else {
                ip4_options::take_source_route_hop(ip.options_mut(), &hop, next);
                continue;
            };
            let recorded = cx
                .tables
                .interfaces
                .get(usize::from(port))
                .and_then(|i| i.primary_ipv4())
                .unwrap_or(ip.dst_addr());
            ip4_options::take_source_route_hop(ip.options_mut(), &hop, recorded);
            ip.set_dst_addr(next);
            ip.fill_checksum();
            cx.error(Ip4LocalError::SourceRouted);
            cx.trace(&pkt.meta, format_args!("source route: on to {next}"));
            return Some(LocalNext::Lookup);
        }
        ip.fill_checksum();
        None
    }

    /// Answers an address mask request (RFC 950, RFC 1812 4.3.3.9) with the mask of the
    /// receiving interface's subnet that holds the asker, or its only mask: to the asker, or,
    /// from 0.0.0.0, to the limited broadcast out of that interface. Not answered when the
    /// interface has no IPv4 address, or masks of several lengths and no subnet of the asker.
    #[cold]
    #[inline(never)]
    fn address_mask_reply<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
    ) -> LocalNext {
        let port = pkt.meta.rx_port;
        let mut ip = Ipv4Packet::new_unchecked(pkt.buf.data_mut());
        let asker = ip.src_addr();
        let subnets = cx.tables.interface(port).map_or(&[][..], |i| &i.ipv4[..]);
        let same_masks = subnets
            .windows(2)
            .all(|w| w[0].prefix_len() == w[1].prefix_len());
        let subnet = subnets
            .iter()
            .find(|n| n.contains(&asker))
            .or_else(|| subnets.first().filter(|_| same_masks));
        let icmp_len = ip.payload_mut().len();
        let (Some(subnet), true) = (subnet.copied(), icmp_len >= 12) else {
            cx.error(Ip4LocalError::AddressMaskUnknown);
            return LocalNext::Drop;
        };
        let icmp = ip.payload_mut();
        icmp[0] = Icmpv4Message::ADDRESS_MASK_REPLY.0;
        icmp[8..12].copy_from_slice(&subnet.netmask().octets());
        icmp[2..4].fill(0);
        let csum = checksum::checksum(icmp);
        icmp[2..4].copy_from_slice(&csum.to_be_bytes());
        ip.set_src_addr(subnet.addr());
        let broadcast = asker.is_unspecified();
        ip.set_dst_addr(if broadcast {
            Ipv4Addr::BROADCAST
        } else {
            asker
        });
        ip.set_ttl(DEFAULT_TTL);
        ip.fill_checksum();
        pkt.meta.local_origin = true;
        cx.error(Ip4LocalError::AddressMaskReplied);
        cx.trace(
            &pkt.meta,
            format_args!("address mask {} to {asker}", subnet.netmask()),
        );
        if broadcast {
            pkt.meta.tx_port = port;
            pkt.meta.next_hop = Some(IpAddr::V4(Ipv4Addr::BROADCAST));
            return LocalNext::Rewrite;
        }
        LocalNext::Lookup
    }

    /// RFC 1256 4.2 and 4.3: a valid solicitation (code 0, from 0.0.0.0 or from a neighbor on
    /// one of the arrival port's subnets; length and checksum were checked) has the port's
    /// next advertisement go out within [`MAX_RESPONSE_DELAY`], to the advertisement address
    /// (`Graph::advertise_routers` sends it); any other is silently discarded.
    ///
    /// [`MAX_RESPONSE_DELAY`]: crate::router_adverts::MAX_RESPONSE_DELAY
    fn router_solicitation<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
    ) -> LocalNext {
        let port = pkt.meta.rx_port;
        let ip = Ipv4Packet::new_unchecked(pkt.buf.data());
        let src = ip.src_addr();
        let code = ip.payload().get(1).copied();
        let subnets = cx.tables.interface(port).map_or(&[][..], |i| &i.ipv4[..]);
        let neighbor = src.is_unspecified() || subnets.iter().any(|n| n.contains(&src));
        if code != Some(0) || !neighbor || subnets.is_empty() {
            cx.error(Ip4LocalError::BadRouterSolicitation);
            return LocalNext::Drop;
        }
        cx.state.ipv4_router_adverts.solicited(port, cx.now);
        cx.error(Ip4LocalError::RouterSolicitations);
        cx.trace(
            &pkt.meta,
            format_args!("router solicitation from {src}: advertisement scheduled"),
        );
        LocalNext::Drop
    }

    /// The options of an echo reply built from its request (`from` asked `me`): a source
    /// route is reversed to lead back to `from` (RFC 1122 3.2.2.6), and record-route and
    /// timestamp options get this router's entry, so that they cover the round trip (RFC 1812
    /// 4.3.3.6).
    #[cold]
    #[inline(never)]
    fn echo_reply_options<T: AsRef<[u8]> + AsMut<[u8]>>(
        now: u64,
        ip: &mut Ipv4Packet<T>,
        from: Ipv4Addr,
        me: Ipv4Addr,
        is_ours: impl Fn(Ipv4Addr) -> bool,
    ) {
        if let Some(first_hop) = ip4_options::reverse_for_reply(ip.options_mut(), from) {
            ip.set_dst_addr(first_hop);
        }
        // A timestamp option already full counts the overflow; nothing to answer here.
        let _ = ip4_options::record(
            ip.options_mut(),
            me,
            ip4_options::nonstandard_timestamp(now),
            is_ours,
        );
    }

    fn deliver<B: PacketBuffer>(cx: &mut Context<'_, B>, pkt: &mut Packet<B>) -> LocalNext {
        let punt_to_host = cx.tables.punt_to_host;
        if pkt.meta.local_origin {
            // An ICMP error this node built about a packet from the host stack (no route, too
            // big) goes back to the host, whose sockets and path MTU cache want it.
            // So does the host's connection to a Service whose endpoint is the host itself,
            // both ways, once the service proxy translated it (see `nat::snat`). And the
            // host's TCP, UDP or SCTP to its own address that no Service took: the punt
            // device's policy routing sends the NodePort range here (the proxy's
            // `HostNodePortRules`), and the host delivers the rest to itself as it would have.
            let data = pkt.buf.data();
            if punt_to_host
                && (pkt.meta.conn.is_some()
                    || Self::is_icmp_error(data)
                    || super::is_transport(Ipv4Packet::new_unchecked(data).protocol()))
            {
                cx.error(Ip4LocalError::PuntedToHost);
                return LocalNext::Punt;
            }
            cx.error(Ip4LocalError::LocalLoop);
            return LocalNext::Drop;
        }
        let mut ip = Ipv4Packet::new_unchecked(pkt.buf.data_mut());
        let dst = ip.dst_addr();
        let unicast_to_us = cx.tables.is_local_ipv4(dst);
        // A source route to follow is followed before anything else, fragments included (each
        // carries the option, RFC 1122 3.2.1.8).
        if unicast_to_us && ip.header_len() > 20 {
            if let Some(next) = Self::source_route(cx, pkt) {
                return next;
            }
            ip = Ipv4Packet::new_unchecked(pkt.buf.data_mut());
        }
        if ip.is_fragment() {
            // With a host stack behind the punt path, it reassembles; otherwise this node does.
            if punt_to_host && unicast_to_us {
                cx.error(Ip4LocalError::PuntedToHost);
                return LocalNext::Punt;
            }
            if !unicast_to_us {
                cx.error(Ip4LocalError::Fragment);
                return LocalNext::Drop;
            }
            return Self::fragment(cx, pkt);
        }
        if punt_to_host && unicast_to_us && ip.protocol() != IpProtocol::ICMP {
            cx.error(Ip4LocalError::PuntedToHost);
            cx.trace(&pkt.meta, format_args!("to the host stack"));
            return LocalNext::Punt;
        }
        match ip.protocol() {
            IpProtocol::ICMP => {
                let from_nowhere = ip.src_addr().is_unspecified();
                let icmp = ip.payload_mut();
                if icmp.len() < 8 || !checksum::verify(icmp) {
                    cx.error(Ip4LocalError::BadIcmp);
                    return LocalNext::Drop;
                }
                if icmp[0] == Icmpv4Message::ADDRESS_MASK_REQUEST.0 && icmp[1] == 0 {
                    return Self::address_mask_reply(cx, pkt);
                }
                if icmp[0] == Icmpv4Message::ROUTER_SOLICIT.0
                    && cx.tables.ipv4_router_discovery.is_some()
                {
                    return Self::router_solicitation(cx, pkt);
                }
                if icmp[0] != Icmpv4Message::ECHO_REQUEST.0 || icmp[1] != 0 {
                    cx.error(if punt_to_host && unicast_to_us {
                        Ip4LocalError::PuntedToHost
                    } else {
                        Ip4LocalError::Punted
                    });
                    return LocalNext::Punt;
                }
                if !unicast_to_us || from_nowhere {
                    cx.error(Ip4LocalError::BroadcastEcho);
                    return LocalNext::Drop;
                }
                // Echo reply in place: type 8 → 0 patches the checksum by RFC 1624.
                let csum = u16::from_be_bytes([icmp[2], icmp[3]]);
                let csum = checksum::update16(
                    csum,
                    u16::from(Icmpv4Message::ECHO_REQUEST.0) << 8,
                    u16::from(Icmpv4Message::ECHO_REPLY.0) << 8,
                );
                icmp[0] = Icmpv4Message::ECHO_REPLY.0;
                icmp[2..4].copy_from_slice(&csum.to_be_bytes());
                let src = ip.src_addr();
                ip.set_src_addr(dst);
                ip.set_dst_addr(src);
                if ip.header_len() > 20 {
                    let tables = cx.tables;
                    Self::echo_reply_options(cx.now, &mut ip, src, dst, |a| {
                        tables.is_local_ipv4(a)
                    });
                }
                ip.set_ttl(DEFAULT_TTL);
                // DF clear, as Linux sends its ICMP: a reply as big as the request may meet a
                // smaller link on its way back (ours, whose `ip4-rewrite` then fragments it
                // instead of answering itself with fragmentation needed, or a later router's),
                // and this node keeps no IPv4 path MTUs (RFC 1191 is optional). A datagram
                // that may be fragmented needs an identification of its own (RFC 6864 4.1).
                ip.set_fragment(false, false, 0);
                ip.set_ident(cx.state.next_fragment_ident() as u16);
                ip.fill_checksum();
                pkt.meta.local_origin = true;
                cx.error(Ip4LocalError::EchoReplied);
                cx.trace(&pkt.meta, format_args!("echo reply to {src}"));
                LocalNext::Lookup
            }
            IpProtocol::UDP if unicast_to_us => {
                let addrs = IpAddrPair::V4 {
                    src: ip.src_addr(),
                    dst,
                };
                if !super::udp_ok(ip.payload(), &addrs) {
                    cx.error(Ip4LocalError::BadUdp);
                    return LocalNext::Drop;
                }
                cx.error(Ip4LocalError::PortUnreachable);
                pkt.meta.icmp_error =
                    Some((Icmpv4Message::DST_UNREACHABLE.0, unreachable_code::PORT, 0));
                LocalNext::Error
            }
            IpProtocol::TCP if unicast_to_us => {
                let src = ip.src_addr();
                let addrs = IpAddrPair::V4 { src, dst };
                let Some(rst) = tcp_reset::reset_for(ip.payload(), &addrs) else {
                    cx.error(Ip4LocalError::TcpDropped);
                    return LocalNext::Drop;
                };
                // The reset goes without the segment's IP options: a source route is not
                // followed back (RFC 1122 3.2.1.8 allows, does not ask, a reversed one) nor a
                // record route carried on. Its fixed header moves up over them.
                let hlen = ip.header_len();
                if hlen > 20 {
                    pkt.buf.data_mut().copy_within(..20, hlen - 20);
                    pkt.buf.pull_front(hlen - 20);
                }
                let mut ip = Ipv4Packet::new_unchecked(pkt.buf.data_mut());
                ip.set_version_and_header_len(20);
                ip.set_src_addr(dst);
                ip.set_dst_addr(src);
                ip.set_ttl(DEFAULT_TTL);
                ip.set_total_len((20 + rst.buffer_len()) as u16);
                ip.fill_checksum();
                pkt.buf.truncate(20 + rst.buffer_len());
                let seg = &mut pkt.buf.data_mut()[20..];
                if rst
                    .emit(
                        &mut TcpPacket::new_unchecked(seg),
                        &tcp_reset::reversed(&addrs),
                    )
                    .is_err()
                {
                    cx.error(Ip4LocalError::TcpDropped);
                    return LocalNext::Drop;
                }
                pkt.meta.local_origin = true;
                cx.error(Ip4LocalError::TcpReset);
                LocalNext::Lookup
            }
            IpProtocol::TCP | IpProtocol::UDP => {
                cx.error(Ip4LocalError::Punted);
                LocalNext::Punt
            }
            _ if unicast_to_us => {
                cx.error(Ip4LocalError::ProtocolUnreachable);
                pkt.meta.icmp_error = Some((
                    Icmpv4Message::DST_UNREACHABLE.0,
                    unreachable_code::PROTOCOL,
                    0,
                ));
                LocalNext::Error
            }
            _ => {
                cx.error(Ip4LocalError::Punted);
                LocalNext::Punt
            }
        }
    }
}

impl Ip4Local {
    /// True for a well-formed IPv4 packet carrying an ICMP error message.
    fn is_icmp_error(data: &[u8]) -> bool {
        let ip = Ipv4Packet::new_unchecked(data);
        ip.protocol() == IpProtocol::ICMP
            && ip.fragment_offset() == 0
            && ip
                .payload()
                .first()
                .is_some_and(|&t| Icmpv4Message(t).is_error())
    }
}

impl Ip4Local {
    /// Reassembles a fragment's datagram and, once whole, answers it as its unfragmented kind
    /// would be: echo requests with a (fragmented) echo reply, UDP with port unreachable, an
    /// unknown protocol with protocol unreachable.
    fn fragment<B: PacketBuffer>(cx: &mut Context<'_, B>, pkt: &mut Packet<B>) -> LocalNext {
        let whole = match local_frag::add_v4(cx, pkt.buf.data()) {
            Reassembled::Queued => {
                cx.error(Ip4LocalError::FragmentQueued);
                return LocalNext::Drop;
            }
            Reassembled::Dropped => {
                cx.error(Ip4LocalError::FragmentDropped);
                return LocalNext::Drop;
            }
            Reassembled::Whole(w) => w,
        };
        cx.error(Ip4LocalError::Reassembled);
        let ident = local_frag::next_ident(cx) as u16;
        let mtu = cx
            .tables
            .interface(pkt.meta.rx_port)
            .map_or(576, |i| usize::from(i.mtu));
        if let Some((header, reply)) = local_frag::echo_reply_v4(&whole, ident) {
            if !local_frag::send_v4(cx, pkt, &header, &reply, mtu, LocalNext::Lookup.into()) {
                cx.error(Ip4LocalError::NoBuffer);
                return LocalNext::Drop;
            }
            cx.error(Ip4LocalError::EchoReplied);
            return LocalNext::Lookup;
        }
        if whole.header.len() < 20 {
            cx.error(Ip4LocalError::Punted);
            return LocalNext::Drop;
        }
        // RFC 1122 3.2.2.1, 4.1.3.1: UDP without a listener gets port unreachable, a protocol
        // nothing here speaks protocol unreachable, as when unfragmented; TCP and ICMP other
        // than echo are dropped (the host stack, with punt to host on, reassembles itself).
        let header = Ipv4Packet::new_unchecked(&whole.header[..]);
        let (err, code) = match header.protocol() {
            IpProtocol::UDP => {
                let addrs = IpAddrPair::V4 {
                    src: header.src_addr(),
                    dst: header.dst_addr(),
                };
                if !super::udp_ok(&whole.payload, &addrs) {
                    cx.error(Ip4LocalError::BadUdp);
                    return LocalNext::Drop;
                }
                (Ip4LocalError::PortUnreachable, unreachable_code::PORT)
            }
            IpProtocol::TCP | IpProtocol::ICMP => {
                cx.error(Ip4LocalError::Punted);
                return LocalNext::Drop;
            }
            _ => (
                Ip4LocalError::ProtocolUnreachable,
                unreachable_code::PROTOCOL,
            ),
        };
        // The error quotes the datagram as if it had come whole.
        let hlen = whole.header.len();
        let quoted = whole.payload.len().min(576 - 28 - hlen);
        let total = hlen + whole.payload.len();
        let rebuilt = super::rebuild(&mut pkt.buf, hlen + quoted, |data| {
            data[..hlen].copy_from_slice(&whole.header);
            data[hlen..].copy_from_slice(&whole.payload[..quoted]);
            let mut ip = Ipv4Packet::new_unchecked(data);
            ip.set_total_len(total.min(usize::from(u16::MAX)) as u16);
            ip.set_fragment(false, false, 0);
            ip.fill_checksum();
        });
        if !rebuilt {
            cx.error(Ip4LocalError::NoBuffer);
            return LocalNext::Drop;
        }
        cx.error(err);
        pkt.meta.icmp_error = Some((Icmpv4Message::DST_UNREACHABLE.0, code, 0));
        LocalNext::Error
    }
}

per_packet_node!(Ip4Local, "ip4-local", LocalNext, Ip4LocalError, deliver);

node_errors! {
    pub enum Ip4RewriteError {
        TtlExpired = ("ttl_expired", "TTL expired in transit: time exceeded sent"),
        BadOption = ("bad_option", "record-route or timestamp option with some room but not enough, or a full overflow count: parameter problem sent (RFC 791)"),
        Redirected = ("redirect_sent", "forwarded back out of its own link: redirect sent to the source"),
        TooBig = ("too_big", "larger than the next link's MTU with DF set: fragmentation needed sent"),
        Fragmented = ("fragmented", "larger than the next link's MTU without DF: fragmented"),
        MtuTooSmall = ("mtu_too_small", "next link's MTU too small to fragment into"),
        NoBuffer = ("no_buffer", "no buffer for a fragment"),
        NoInterface = ("no_interface", "route points at a missing port"),
    }
}

node_nexts! {
    enum RewriteNext {
        Drop = DROP,
        Output = "neighbor-output",
        Error = "icmp4-error",
        Tx = TX,
    }
}

/// The `ip4-rewrite` node: the forwarding step (TTL, MTU), and the Ethernet header when the
/// next hop is known ([`put_known_header`]).
#[derive(Debug, Default)]
pub struct Ip4Rewrite;

impl Ip4Rewrite {
    /// The common case in a few instructions: an option-less packet that fits the link, going
    /// out of another port than it came in, with TTL to spare (or made here). Anything else
    /// takes [`Ip4Rewrite::rewrite`], which does the same for it and handles the rest.
    #[inline(always)]
    fn rewrite_fast<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        mtus: &mut PortMtu,
    ) -> RewriteNext {
        let meta = &pkt.meta;
        let Some(mtu) = mtus.get(cx.tables, meta.tx_port) else {
            return Self::rewrite(cx, pkt);
        };
        let (local, other_port) = (meta.local_origin, meta.tx_port != meta.rx_port);
        let Some(h) = pkt.buf.data_mut().first_chunk_mut::<20>() else {
            return Self::rewrite(cx, pkt);
        };
        let ttl = h[8];
        let fits = u16::from_be_bytes([h[2], h[3]]) <= mtu;
        if h[0] != 0x45 || !fits || !other_port || (!local && ttl <= 1) {
            return Self::rewrite(cx, pkt);
        }
        if !local {
            // RFC 1624 update for the TTL decrement, as `Ipv4Packet::decrement_ttl` does,
            // on the checksum as it lies in the header (no byte swaps).
            let csum = checksum::ttl_decrement_update_ne(u16::from_ne_bytes([h[10], h[11]]));
            h[8] = ttl - 1;
            h[10..12].copy_from_slice(&csum.to_ne_bytes());
        }
        RewriteNext::Output
    }

    /// The rewrite of a vector, `TRACE` being [`Context::tracing`].
    #[inline(always)]
    fn rewrite_vector<B: PacketBuffer, const TRACE: bool>(
        cx: &mut Context<'_, B>,
        pkts: &mut [Packet<B>],
        next: &mut [NextIndex],
    ) {
        let mut mtus = PortMtu::new();
        let mut headers = RecentHeaders::default();
        for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
            let mut to = Self::rewrite_fast(cx, pkt, &mut mtus);
            if to == RewriteNext::Output && put_known_header::<B, TRACE>(cx, pkt, &mut headers) {
                to = RewriteNext::Tx;
            }
            *n = to.into();
        }
    }

    #[inline(never)]
    fn rewrite<B: PacketBuffer>(cx: &mut Context<'_, B>, pkt: &mut Packet<B>) -> RewriteNext {
        let Some(ifc) = cx.tables.interface(pkt.meta.tx_port) else {
            cx.error(Ip4RewriteError::NoInterface);
            return RewriteNext::Drop;
        };
        {
            let ip = Ipv4Packet::new_unchecked(pkt.buf.data());
            if !pkt.meta.local_origin && ip.ttl() <= 1 {
                cx.error(Ip4RewriteError::TtlExpired);
                pkt.meta.icmp_error =
                    Some((Icmpv4Message::TIME_EXCEEDED.0, time_exceeded_code::TTL, 0));
                return RewriteNext::Error;
            }
            let too_big = ip.total_len() > ifc.mtu;
            // Back out of the link it came in on: the source may be told of a better first hop.
            if pkt.meta.tx_port == pkt.meta.rx_port {
                if let Some(redirect) = redirect::ipv4(cx, pkt, ifc) {
                    cx.error(Ip4RewriteError::Redirected);
                    cx.spawn(redirect, RewriteNext::Output);
                }
            }
            let mut ip = Ipv4Packet::new_unchecked(pkt.buf.data_mut());
            if too_big && ip.dont_fragment() {
                cx.error(Ip4RewriteError::TooBig);
                pkt.meta.icmp_error = Some((
                    Icmpv4Message::DST_UNREACHABLE.0,
                    unreachable_code::FRAG_NEEDED,
                    u32::from(ifc.mtu),
                ));
                return RewriteNext::Error;
            }
            if !pkt.meta.local_origin {
                ip.decrement_ttl();
                if ip.header_len() > 20 {
                    // Record route and timestamp options get this router's entry.
                    let addr = ifc.primary_ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED);
                    let stamp = ip4_options::nonstandard_timestamp(cx.now);
                    let ours = |a| cx.tables.is_local_ipv4(a);
                    if let Err(pointer) = ip4_options::record(ip.options_mut(), addr, stamp, ours) {
                        // The error quotes the header as it came: the TTL put back.
                        ip.set_ttl(ip.ttl() + 1);
                        ip.fill_checksum();
                        cx.error(Ip4RewriteError::BadOption);
                        pkt.meta.icmp_error = Some(param_problem(pointer));
                        return RewriteNext::Error;
                    }
                    ip.fill_checksum();
                }
            }
            if !too_big {
                return RewriteNext::Output;
            }
        }
        let meta = pkt.meta;
        let mut later = 0;
        let result = fragment_ipv4(&mut pkt.buf, usize::from(ifc.mtu), |buf| {
            later += 1;
            cx.spawn(Packet { buf, meta }, RewriteNext::Output);
        });
        match result {
            Ok(n) => {
                cx.error(Ip4RewriteError::Fragmented);
                cx.trace(
                    &pkt.meta,
                    format_args!("fragmented into {n} for MTU {}", ifc.mtu),
                );
            }
            Err(FragmentError::MtuTooSmall) => {
                cx.error(Ip4RewriteError::MtuTooSmall);
                return RewriteNext::Drop;
            }
            Err(FragmentError::NoBuffer) => {
                cx.error(Ip4RewriteError::NoBuffer);
                return RewriteNext::Drop;
            }
        }
        RewriteNext::Output
    }
}

impl<B: PacketBuffer> Node<B> for Ip4Rewrite {
    fn name(&self) -> &'static str {
        "ip4-rewrite"
    }
    fn next_nodes(&self) -> &'static [&'static str] {
        RewriteNext::NAMES
    }
    fn errors(&self) -> &'static [ErrorInfo] {
        Ip4RewriteError::INFO
    }
    fn process(&mut self, cx: &mut Context<'_, B>, pkts: &mut [Packet<B>], next: &mut [NextIndex]) {
        if cx.tracing() {
            Self::rewrite_vector::<B, true>(cx, pkts, next);
        } else {
            Self::rewrite_vector::<B, false>(cx, pkts, next);
        }
    }
}
