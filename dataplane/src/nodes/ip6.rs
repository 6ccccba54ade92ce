//! IPv6 forwarding: `ip6-input` (RFC 8200 validation), `ip6-lookup` (FIB and scopes),
//! `ip6-local` (echo, neighbor discovery, Packet Too Big about its own packets, what nothing
//! listens to) and `ip6-rewrite` (hop limit, MTU, neighbor, Ethernet header).

use std::net::{IpAddr, Ipv6Addr};

use super::fragment::fragment_ipv6;
use super::icmp6::nd;
use super::ip6_options::{check_hop_by_hop, check_options, OptionsVerdict};
use super::local_frag::{self, Reassembled};
use super::neighbor::{put_known_header, RecentHeaders};
use super::{ipv6_flow_hash, push_ethernet, redirect, tcp_reset, PortMtu};
use crate::buffer::PacketBuffer;
use crate::fib::{pick_path, Route};
use crate::graph::{Context, ErrorInfo, Meta, NextIndex, Node, Packet, DROP, PUNT, TX};
use crate::path_mtu::IPV6_MIN_MTU;
use crate::tables::{Interface, Tables};
use crate::wire::icmpv6::{param_problem_code, unreachable_code};
use crate::wire::{
    checksum, EtherType, Icmpv6Message, Icmpv6Packet, IpAddrPair, IpProtocol, Ipv6Packet, Ipv6Repr,
    TcpPacket, WireError,
};
use crate::{node_errors, node_nexts, per_packet_node};

/// Hop limit of packets this node originates, other than neighbor discovery.
pub const DEFAULT_HOP_LIMIT: u8 = 64;

/// True for `fe80::/10`.
#[inline]
pub(crate) fn is_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// The solicited-node multicast group of `a` (RFC 4291 2.7.1).
pub(crate) fn solicited_node(a: &Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// True if `group` is a multicast group the interface listens to: all-nodes, all-routers
/// (link- and site-local, RFC 4291 2.8), or
/// the solicited-node group of one of its addresses, the Subnet-Router anycast ones included
/// (RFC 4291 2.8).
fn is_our_group(ifc: &Interface, group: &Ipv6Addr) -> bool {
    const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    const SITE_ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff05, 0, 0, 0, 0, 0, 0, 2);
    *group == ALL_NODES
        || *group == ALL_ROUTERS
        || *group == SITE_ALL_ROUTERS
        || solicited_node(&ifc.link_local) == *group
        || ifc.ipv6.iter().any(|n| {
            solicited_node(&n.addr()) == *group
                || (n.prefix_len() < 127 && solicited_node(&n.network()) == *group)
        })
}

node_errors! {
    pub enum Ip6InputError {
        TooShort = ("too_short", "shorter than an IPv6 header or than its payload length"),
        BadVersion = ("bad_version", "IP version is not 6"),
        MulticastSource = ("multicast_source", "multicast source address"),
        UnspecifiedSource = ("unspecified_source", "from the unspecified address to a unicast one (RFC 4291 2.5.2)"),
        LoopbackAddress = ("loopback_address", "loopback or unspecified address where not allowed"),
        BadHopByHop = ("bad_hop_by_hop", "hop-by-hop header malformed or with an option saying discard"),
        UnknownOption = ("unknown_option", "unrecognized hop-by-hop option: parameter problem sent"),
    }
}

node_nexts! {
    enum InputNext {
        Drop = DROP,
        Lookup = "ip6-lookup",
        Error = "icmp6-error",
        Nat = "ip6-nat",
    }
}

/// The `ip6-input` node.
#[derive(Debug, Default)]
pub struct Ip6Input;

impl Ip6Input {
    /// Drops packets with a multicast source, or a loopback or unspecified address where
    /// none may be; `None` for one that only looked like it might have one.
    #[cold]
    #[inline(never)]
    fn screen<B>(cx: &mut Context<'_, B>, h: &[u8; 40]) -> Option<InputNext> {
        let ip = Ipv6Packet::new_unchecked(&h[..]);
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        if src.is_multicast() {
            cx.error(Ip6InputError::MulticastSource);
            return Some(InputNext::Drop);
        }
        if src.is_loopback() || src.is_unspecified() || dst.is_loopback() || dst.is_unspecified() {
            // The unspecified source is for a node learning its address (duplicate address
            // detection, to a group); nothing else may carry it (RFC 4291 2.5.2).
            if src.is_unspecified() && dst.is_multicast() {
                // Taken; never forwarded (multicast is not routed).
            } else if src.is_unspecified() {
                cx.error(Ip6InputError::UnspecifiedSource);
                return Some(InputNext::Drop);
            } else {
                cx.error(Ip6InputError::LoopbackAddress);
                return Some(InputNext::Drop);
            }
        }
        None
    }

    /// `beyond` is where a good packet goes next: the lookup, or the NAT node when the tables
    /// have services or policy (decided once per vector).
    #[inline]
    fn check<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        beyond: InputNext,
    ) -> InputNext {
        let data = pkt.buf.data();
        // The fixed header is read once, as an array (no bounds check per field).
        let Some(h) = data.first_chunk::<40>() else {
            cx.error(Ip6InputError::TooShort);
            return InputNext::Drop;
        };
        if h[0] >> 4 != 6 {
            cx.error(Ip6InputError::BadVersion);
            return InputNext::Drop;
        }
        let len = 40 + usize::from(u16::from_be_bytes([h[4], h[5]]));
        if len > data.len() {
            cx.error(Ip6InputError::TooShort);
            return InputNext::Drop;
        }
        // A multicast source starts with 0xff; the loopback and unspecified addresses have
        // their top 64 bits zero. One cheap test for the usual packet, the exact checks only
        // for a packet that fails it.
        let top = |i: usize| {
            u64::from_ne_bytes([
                h[i],
                h[i + 1],
                h[i + 2],
                h[i + 3],
                h[i + 4],
                h[i + 5],
                h[i + 6],
                h[i + 7],
            ])
        };
        if h[8] == 0xff || top(8) == 0 || top(24) == 0 {
            if let Some(drop) = Self::screen(cx, h) {
                return drop;
            }
        }
        let ip = Ipv6Packet::new_unchecked(&h[..]);
        let hop_by_hop = ip.next_header() == IpProtocol::HOP_BY_HOP;
        if pkt.meta.trace != 0 {
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            cx.trace(&pkt.meta, format_args!("{src} > {dst} len {len}"));
        }
        let dst_multicast = h[24] == 0xff;
        pkt.buf.truncate(len);
        if hop_by_hop {
            match check_hop_by_hop(pkt.buf.data()) {
                OptionsVerdict::Accept => {}
                OptionsVerdict::Discard => {
                    cx.error(Ip6InputError::BadHopByHop);
                    return InputNext::Drop;
                }
                OptionsVerdict::ParamProblem {
                    pointer,
                    unless_multicast,
                } => {
                    if unless_multicast && dst_multicast {
                        cx.error(Ip6InputError::BadHopByHop);
                        return InputNext::Drop;
                    }
                    cx.error(Ip6InputError::UnknownOption);
                    pkt.meta.icmp_error = Some((
                        Icmpv6Message::PARAM_PROBLEM.0,
                        param_problem_code::UNRECOGNIZED_OPTION,
                        pointer,
                    ));
                    return InputNext::Error;
                }
            }
        }
        beyond
    }
}

impl<B: PacketBuffer> Node<B> for Ip6Input {
    fn name(&self) -> &'static str {
        "ip6-input"
    }
    fn next_nodes(&self) -> &'static [&'static str] {
        InputNext::NAMES
    }
    fn errors(&self) -> &'static [ErrorInfo] {
        Ip6InputError::INFO
    }
    fn process(&mut self, cx: &mut Context<'_, B>, pkts: &mut [Packet<B>], next: &mut [NextIndex]) {
        let beyond = if cx.tables.services.is_some() || cx.tables.policy.is_some() {
            InputNext::Nat
        } else {
            InputNext::Lookup
        };
        for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
            *n = Self::check(cx, pkt, beyond).into();
        }
    }
}

node_errors! {
    pub enum Ip6LookupError {
        NoRoute = ("no_route", "no route to the destination"),
        Unreachable = ("unreachable", "route says unreachable: reject route sent (RFC 4443 code 6)"),
        Blackhole = ("blackhole", "route says discard"),
        Multicast = ("multicast", "multicast group not joined; multicast routing is not enabled"),
        LinkLocal = ("link_local", "link-local destination that is not ours: not forwarded"),
        BeyondScope = ("beyond_scope", "link-local source cannot be forwarded off its link"),
        L2Multicast = ("l2_multicast", "unicast packet in a link-layer multicast frame"),
        UnspecifiedSource = ("unspecified_source", "from the unspecified address: not forwarded (RFC 4291 2.5.2)"),
        TooShort = ("too_short", "shorter than an IPv6 header (internal: input checks this)"),
    }
}

node_nexts! {
    enum LookupNext {
        Drop = DROP,
        Rewrite = "ip6-rewrite",
        Local = "ip6-local",
        Error = "icmp6-error",
    }
}

/// The `ip6-lookup` node.
#[derive(Debug, Default)]
pub struct Ip6Lookup;

impl Ip6Lookup {
    /// The common packet in few instructions: a global unicast destination (neither
    /// multicast nor link-local: the first byte below 0xfe) with a route through gateways,
    /// forwardable, the path written straight into the metadata. It gives exactly what
    /// [`Ip6Lookup::lookup_general`] would; anything else is left to that. `fib6` is the FIB's
    /// IPv6 lookup and `ports` the number of interfaces, both found once for the vector.
    #[inline]
    fn lookup<'t, B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        fib6: impl Fn(Ipv6Addr) -> Option<&'t Route>,
        ports: usize,
        pkt: &mut Packet<B>,
    ) -> LookupNext {
        let Some(h) = pkt.buf.data().first_chunk::<40>() else {
            return Self::lookup_general(cx, pkt);
        };
        // The general code drops a packet from a port without an interface first of all.
        if h[24] >= 0xfe || usize::from(pkt.meta.rx_port) >= ports {
            return Self::lookup_general(cx, pkt);
        }
        let ip = Ipv6Packet::new_unchecked(&h[..]);
        let dst = ip.dst_addr();
        let Some(Route::Via(paths)) = fib6(dst) else {
            return Self::lookup_general(cx, pkt);
        };
        // Link-local is fe80::/10: the source's first byte 0xfe and second 0b10xx_xxxx.
        let src_link_local = h[8] == 0xfe && h[9] & 0xc0 == 0x80;
        if !(pkt.meta.local_origin || !(pkt.meta.l2_multicast || src_link_local)) {
            return Self::lookup_general(cx, pkt);
        }
        let Some(path) = pick_path(paths, || ipv6_flow_hash(&ip)) else {
            return Self::lookup_general(cx, pkt);
        };
        pkt.meta.tx_port = path.port;
        pkt.meta.next_hop = Some(path.gateway.unwrap_or(IpAddr::V6(dst)));
        if pkt.meta.trace != 0 {
            super::trace_next_hop(cx, pkt, IpAddr::V6(dst));
        }
        LookupNext::Rewrite
    }

    /// Any packet: multicast and link-local destinations, routes other than through gateways,
    /// packets not to be forwarded.
    #[inline(never)]
    fn lookup_general<B: PacketBuffer>(cx: &mut Context<'_, B>, pkt: &mut Packet<B>) -> LookupNext {
        // Every way into this node checked the header; read it once, as an array.
        let Some(h) = pkt.buf.data().first_chunk::<40>() else {
            cx.error(Ip6LookupError::TooShort);
            return LookupNext::Drop;
        };
        let ip = Ipv6Packet::new_unchecked(&h[..]);
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let Some(rx_ifc) = cx.tables.interface(pkt.meta.rx_port) else {
            return LookupNext::Drop;
        };
        if dst.is_multicast() {
            if !pkt.meta.local_origin && is_our_group(rx_ifc, &dst) {
                return LookupNext::Local;
            }
            cx.error(Ip6LookupError::Multicast);
            return LookupNext::Drop;
        }
        if is_link_local(&dst) {
            // Ours: also an ICMPv6 error this node built about a link-local packet of the host
            // stack's, which `ip6-local` hands back to it.
            if rx_ifc.has_ipv6(dst) {
                return LookupNext::Local;
            }
            if pkt.meta.local_origin {
                // Our answer to a link-local source goes back out of the link it came from;
                // the host's link-local packets come "from" the link whose device they were
                // read from (see `host::from_host_on_link`). Never another link (RFC 4291
                // 2.5.6).
                pkt.meta.tx_port = pkt.meta.rx_port;
                pkt.meta.next_hop = Some(IpAddr::V6(dst));
                return LookupNext::Rewrite;
            }
            cx.error(Ip6LookupError::LinkLocal);
            return LookupNext::Drop;
        }
        let route = cx.tables.fib.lookup6(dst);
        // The common case first, as in `ip4-lookup`: a route through gateways, for a packet
        // that may be forwarded (the checks below, in the same order), the path written
        // straight into the metadata. Anything else takes the general code below.
        if let Some(Route::Via(paths)) = route {
            if pkt.meta.local_origin || !(pkt.meta.l2_multicast || is_link_local(&src)) {
                if let Some(path) = pick_path(paths, || ipv6_flow_hash(&ip)) {
                    pkt.meta.tx_port = path.port;
                    pkt.meta.next_hop = Some(path.gateway.unwrap_or(IpAddr::V6(dst)));
                    if pkt.meta.trace != 0 {
                        super::trace_next_hop(cx, pkt, IpAddr::V6(dst));
                    }
                    return LookupNext::Rewrite;
                }
            }
        }
        let hop = match route {
            Some(Route::Local) => {
                cx.trace(&pkt.meta, format_args!("{dst}: local"));
                return LookupNext::Local;
            }
            Some(Route::Blackhole) => {
                cx.error(Ip6LookupError::Blackhole);
                return LookupNext::Drop;
            }
            Some(r) => r.next_hop(IpAddr::V6(dst), || ipv6_flow_hash(&ip)),
            None => None,
        };
        let Some(hop) = hop else {
            // A route that says unreachable is a reject route (RFC 4443 3.1, code 6).
            let (err, code) = if route.is_some() {
                (Ip6LookupError::Unreachable, unreachable_code::REJECT_ROUTE)
            } else {
                (Ip6LookupError::NoRoute, unreachable_code::NO_ROUTE)
            };
            cx.error(err);
            cx.trace(&pkt.meta, format_args!("{dst}: {err:?}"));
            pkt.meta.icmp_error = Some((Icmpv6Message::DST_UNREACHABLE.0, code, 0));
            return LookupNext::Error;
        };
        if !pkt.meta.local_origin {
            if pkt.meta.l2_multicast {
                cx.error(Ip6LookupError::L2Multicast);
                return LookupNext::Drop;
            }
            // RFC 4291 2.5.2: the unspecified address is never the source of a forwarded
            // packet (it is taken only by this node, for duplicate address detection).
            if src.is_unspecified() {
                cx.error(Ip6LookupError::UnspecifiedSource);
                return LookupNext::Drop;
            }
            if is_link_local(&src) {
                cx.error(Ip6LookupError::BeyondScope);
                pkt.meta.icmp_error = Some((
                    Icmpv6Message::DST_UNREACHABLE.0,
                    unreachable_code::BEYOND_SCOPE,
                    0,
                ));
                return LookupNext::Error;
            }
        }
        super::set_next_hop(cx, pkt, IpAddr::V6(dst), hop);
        LookupNext::Rewrite
    }
}

impl<B: PacketBuffer> Node<B> for Ip6Lookup {
    fn name(&self) -> &'static str {
        "ip6-lookup"
    }
    fn next_nodes(&self) -> &'static [&'static str] {
        LookupNext::NAMES
    }
    fn errors(&self) -> &'static [ErrorInfo] {
        Ip6LookupError::INFO
    }
    fn process(&mut self, cx: &mut Context<'_, B>, pkts: &mut [Packet<B>], next: &mut [NextIndex]) {
        // The tables do not change within a vector: find the compiled table once.
        let fib = &cx.tables.fib;
        let ports = cx.tables.interfaces.len();
        match fib.view6() {
            Some(view) => {
                for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
                    *n = Self::lookup(cx, |dst| view.lookup(dst), ports, pkt).into();
                }
            }
            None => {
                for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
                    *n = Self::lookup(cx, |dst| fib.lookup6(dst), ports, pkt).into();
                }
            }
        }
    }
}

node_errors! {
    pub enum Ip6LocalError {
        BadExtensionHeaders = ("bad_extension_headers", "extension header chain malformed, too long or truncated, or an option saying discard"),
        RoutingHeader = ("routing_header", "routing header with segments left: parameter problem sent"),
        UnknownOption = ("unknown_option", "unrecognized destination option: parameter problem sent"),
        Fragment = ("fragment", "fragment to a group: not reassembled"),
        FragmentQueued = ("fragment_queued", "fragments held for reassembly"),
        BadFragment = ("bad_fragment", "fragment not a multiple of 8 bytes, reaching past 65,535 bytes, or a first one without the whole header chain: parameter problem sent"),
        FragmentDropped = ("fragment_dropped", "fragments dropped: overlapping, too big, or too many datagrams in reassembly"),
        Reassembled = ("reassembled", "datagrams reassembled (echo requests answered, others dropped)"),
        NoBuffer = ("no_buffer", "no buffer for a fragment of a reply"),
        Fragmented = ("fragmented", "replies of ours bigger than the path MTU: fragmented, as their source (RFC 8200 4.5)"),
        PacketTooBig = ("packet_too_big", "Packet Too Big about a packet of ours: path MTU estimate taken (RFC 8201 4)"),
        ForeignPacketTooBig = ("foreign_packet_too_big", "Packet Too Big quoting a packet not from one of our addresses: ignored"),
        BadIcmp = ("bad_icmp", "ICMPv6 message too short or with a bad checksum"),
        EchoReplied = ("echo_replied", "echo requests answered"),
        MulticastEcho = ("multicast_echo", "echo requests to a multicast group or anycast address answered"),
        EchoFromUnspecified = ("echo_from_unspecified", "echo requests from the unspecified address, ignored (RFC 4291 2.5.2)"),
        NeighborSolicitations = ("ns_answered", "neighbor solicitations for our addresses answered"),
        NeighborAdvertisements = ("na_learned", "neighbor advertisements processed"),
        BadNd = ("bad_nd", "neighbor discovery message failing RFC 4861 validation"),
        NdNotForUs = ("nd_not_for_us", "neighbor solicitation for an address that is not ours"),
        RouterDiscovery = ("router_discovery", "router solicitation or advertisement ignored"),
        RouterSolicitations = ("router_solicitations", "router solicitations answered (an advertisement scheduled)"),
        MldQueries = ("mld_queries", "multicast listener queries: a report of our groups scheduled (RFC 3810 6.2)"),
        BadMld = ("bad_mld", "multicast listener query from a non-link-local source, with a code or too short: ignored (RFC 3810 5.1.14)"),
        MldReports = ("mld_reports", "other listeners' reports and dones: ignored (not a multicast router)"),
        LocalLoop = ("local_loop", "packet from this node to this node"),
        PortUnreachable = ("port_unreachable", "UDP to this node, no listener: port unreachable sent"),
        BadUdp = ("bad_udp", "UDP to this node too short, with a bad checksum or none: dropped unanswered (RFC 8200 8.1)"),
        UnknownHeader = ("unknown_next_header", "unrecognized next header: parameter problem sent"),
        NoNextHeader = ("no_next_header", "no next header"),
        TcpReset = ("tcp_reset", "TCP to this node, no listener: reset sent"),
        TcpDropped = ("tcp_dropped", "TCP to this node that was a reset, malformed or had a bad checksum"),
        Punted = ("punted", "handed to the control plane"),
        PuntedToHost = ("punted_to_host", "for this node, handed to the host stack (punt to host on)"),
        NoHeadroom = ("no_headroom", "no room to build the answer"),
    }
}

node_nexts! {
    enum LocalNext {
        Drop = DROP,
        Lookup = "ip6-lookup",
        Error = "icmp6-error",
        Tx = TX,
        Output = "neighbor-output",
        Punt = PUNT,
    }
}

/// The `ip6-local` node.
#[derive(Debug, Default)]
pub struct Ip6Local;

impl Ip6Local {
    fn deliver<B: PacketBuffer>(cx: &mut Context<'_, B>, pkt: &mut Packet<B>) -> LocalNext {
        let punt_to_host = cx.tables.punt_to_host;
        let ip = Ipv6Packet::new_unchecked(pkt.buf.data());
        let (src, dst, hop_limit) = (ip.src_addr(), ip.dst_addr(), ip.hop_limit());
        let ext = ip.extension_headers();
        if pkt.meta.local_origin {
            // An ICMPv6 error this node built about a packet from the host stack (no route,
            // too big) goes back to the host, whose sockets and path MTU cache want it.
            let icmp_error = ext.as_ref().is_ok_and(|e| {
                e.upper_protocol == IpProtocol::ICMPV6
                    && pkt
                        .buf
                        .data()
                        .get(e.upper_offset)
                        .is_some_and(|&t| Icmpv6Message(t).is_error())
            });
            // So does the host's connection to a Service whose endpoint is the host itself,
            // both ways, once the service proxy translated it (see `nat::snat`). And the
            // host's TCP, UDP or SCTP to its own address that no Service took (see ip4-local).
            let translated = pkt.meta.conn.is_some();
            let transport = ext
                .as_ref()
                .is_ok_and(|e| super::is_transport(e.upper_protocol));
            if punt_to_host && (icmp_error || translated || transport) && !dst.is_multicast() {
                cx.error(Ip6LocalError::PuntedToHost);
                return LocalNext::Punt;
            }
            cx.error(Ip6LocalError::LocalLoop);
            return LocalNext::Drop;
        }
        let ext = match ext {
            Ok(e) => e,
            Err(e) => {
                // RFC 8200 4: a hop-by-hop header other than first is an unrecognized Next
                // Header value, answered with a parameter problem at it.
                let misplaced = Ipv6Packet::new_unchecked(pkt.buf.data()).misplaced_hop_by_hop();
                if let (WireError::HopByHopNotFirst, Some(at)) = (e, misplaced) {
                    cx.error(Ip6LocalError::UnknownHeader);
                    pkt.meta.icmp_error = Some((
                        Icmpv6Message::PARAM_PROBLEM.0,
                        param_problem_code::UNRECOGNIZED_NEXT_HEADER,
                        at as u32,
                    ));
                    return LocalNext::Error;
                }
                // A first fragment whose chain runs past its end (RFC 7112).
                let data = pkt.buf.data();
                if data.get(6) == Some(&IpProtocol::FRAGMENT.0) && !dst.is_multicast() {
                    if let Some((code, pointer)) = fragment_problem(data, 40) {
                        cx.error(Ip6LocalError::BadFragment);
                        pkt.meta.icmp_error = Some((Icmpv6Message::PARAM_PROBLEM.0, code, pointer));
                        return LocalNext::Error;
                    }
                }
                cx.error(Ip6LocalError::BadExtensionHeaders);
                return LocalNext::Drop;
            }
        };
        let unicast_to_us = !dst.is_multicast();
        // RFC 8200 4.1: the routing and destination options headers, in the order they come.
        for (protocol, at) in ext.for_destination.iter() {
            if let Some(next) = Self::destination_header(cx, pkt, protocol, at, unicast_to_us) {
                return next;
            }
        }
        if let Some(frag) = ext.fragment.filter(|f| f.is_fragmented()) {
            // With a host stack behind the punt path, it reassembles; otherwise this node does,
            // for the usual layout (the fragment header right after the fixed header).
            if punt_to_host && unicast_to_us {
                cx.error(Ip6LocalError::PuntedToHost);
                return LocalNext::Punt;
            }
            if !unicast_to_us {
                cx.error(Ip6LocalError::Fragment);
                return LocalNext::Drop;
            }
            return Self::fragment(cx, pkt, dst, frag.header_offset);
        }
        if punt_to_host
            && unicast_to_us
            && !matches!(ext.upper_protocol, IpProtocol::ICMPV6 | IpProtocol::NO_NEXT)
        {
            cx.error(Ip6LocalError::PuntedToHost);
            cx.trace(&pkt.meta, format_args!("to the host stack"));
            return LocalNext::Punt;
        }
        match ext.upper_protocol {
            IpProtocol::ICMPV6 => {}
            IpProtocol::UDP if unicast_to_us => {
                let datagram = pkt.buf.data().get(ext.upper_offset..).unwrap_or_default();
                if !super::udp_ok(datagram, &IpAddrPair::V6 { src, dst }) {
                    cx.error(Ip6LocalError::BadUdp);
                    return LocalNext::Drop;
                }
                cx.error(Ip6LocalError::PortUnreachable);
                pkt.meta.icmp_error =
                    Some((Icmpv6Message::DST_UNREACHABLE.0, unreachable_code::PORT, 0));
                return LocalNext::Error;
            }
            IpProtocol::TCP if unicast_to_us => {
                return Self::reset(cx, pkt, src, dst, ext.upper_offset);
            }
            IpProtocol::TCP | IpProtocol::UDP => {
                cx.error(Ip6LocalError::Punted);
                return LocalNext::Punt;
            }
            IpProtocol::NO_NEXT => {
                cx.error(Ip6LocalError::NoNextHeader);
                return LocalNext::Drop;
            }
            _ => {
                cx.error(Ip6LocalError::UnknownHeader);
                pkt.meta.icmp_error = Some((
                    Icmpv6Message::PARAM_PROBLEM.0,
                    param_problem_code::UNRECOGNIZED_NEXT_HEADER,
                    ext.next_header_offset as u32,
                ));
                return LocalNext::Error;
            }
        }
        let offset = ext.upper_offset;
        let msg = &pkt.buf.data()[offset..];
        if !Icmpv6Packet::new_checked(msg).is_ok_and(|m| m.verify_checksum(&src, &dst)) {
            cx.error(Ip6LocalError::BadIcmp);
            return LocalNext::Drop;
        }
        match Icmpv6Message(msg[0]) {
            Icmpv6Message::ECHO_REQUEST => {
                // No packet may go to the unspecified address (RFC 4291 2.5.2).
                if src.is_unspecified() {
                    cx.error(Ip6LocalError::EchoFromUnspecified);
                    return LocalNext::Drop;
                }
                let Some(reply_from) =
                    Self::echo_reply_source(cx.tables, pkt.meta.rx_port, src, dst)
                else {
                    return LocalNext::Drop;
                };
                if reply_from != dst {
                    cx.error(Ip6LocalError::MulticastEcho);
                }
                // The reply carries none of the request's extension headers: slide the fixed
                // header up against the message.
                let hlen = Ipv6Packet::<&[u8]>::HEADER_LEN;
                if offset > hlen {
                    pkt.buf.data_mut().copy_within(..hlen, offset - hlen);
                    pkt.buf.pull_front(offset - hlen);
                }
                let offset = hlen;
                let msg_len = pkt.buf.len() - hlen;
                let mut ip = Ipv6Packet::new_unchecked(pkt.buf.data_mut());
                ip.set_next_header(IpProtocol::ICMPV6);
                ip.set_payload_len(msg_len as u16);
                ip.set_src_addr(reply_from);
                ip.set_dst_addr(src);
                ip.set_hop_limit(DEFAULT_HOP_LIMIT);
                let msg = &mut pkt.buf.data_mut()[offset..];
                // Swapping the addresses keeps the pseudo-header sum: only the type word and,
                // for a group, the group giving way to our address change it.
                let mut csum = checksum::update16(
                    u16::from_be_bytes([msg[2], msg[3]]),
                    u16::from(Icmpv6Message::ECHO_REQUEST.0) << 8,
                    u16::from(Icmpv6Message::ECHO_REPLY.0) << 8,
                );
                if reply_from != dst {
                    csum = checksum::update_ipv6_addr(csum, &dst, &reply_from);
                }
                msg[0] = Icmpv6Message::ECHO_REPLY.0;
                msg[2..4].copy_from_slice(&csum.to_be_bytes());
                pkt.meta.local_origin = true;
                cx.error(Ip6LocalError::EchoReplied);
                cx.trace(&pkt.meta, format_args!("echo reply to {src}"));
                // As big as the request, which came over another path: this node, as the
                // reply's source, fragments it to fit its own (RFC 8200 4.5, RFC 8201 4).
                let mtu = Self::own_mtu(cx, src, pkt.meta.rx_port);
                if pkt.buf.len() > mtu {
                    return Self::fragment_own(cx, pkt, mtu);
                }
                LocalNext::Lookup
            }
            Icmpv6Message::PACKET_TOO_BIG => {
                Self::packet_too_big(cx, pkt, offset, punt_to_host && unicast_to_us)
            }
            Icmpv6Message::NEIGHBOR_SOLICIT => {
                Self::solicitation(cx, pkt, src, dst, hop_limit, offset)
            }
            Icmpv6Message::NEIGHBOR_ADVERT => {
                match nd::parse_advertisement(msg, hop_limit, &src, &dst) {
                    Ok(na) => {
                        cx.state.neighbors.advertised(
                            pkt.meta.rx_port,
                            IpAddr::V6(na.target),
                            na.mac,
                            na.solicited,
                            na.override_,
                            cx.now,
                        );
                        cx.error(Ip6LocalError::NeighborAdvertisements);
                    }
                    Err(_) => cx.error(Ip6LocalError::BadNd),
                }
                LocalNext::Drop
            }
            Icmpv6Message::ROUTER_SOLICIT if cx.tables.router_adverts.is_some() => {
                Self::router_solicitation(cx, pkt, src, dst, hop_limit, offset)
            }
            Icmpv6Message::ROUTER_SOLICIT | Icmpv6Message::ROUTER_ADVERT => {
                cx.error(Ip6LocalError::RouterDiscovery);
                LocalNext::Drop
            }
            Icmpv6Message(crate::mld::QUERY) => {
                // RFC 3810 5.1.14: only from a link-local source (RFC 2710 likewise); code 0
                // and at least MLDv1's 24 bytes.
                let port = pkt.meta.rx_port;
                if !is_link_local(&src) || msg[1] != 0 || msg.len() < 24 {
                    cx.error(Ip6LocalError::BadMld);
                    return LocalNext::Drop;
                }
                let delay = crate::mld::max_response_delay(msg);
                cx.state.listener_reports.queried(port, cx.now, delay);
                cx.error(Ip6LocalError::MldQueries);
                LocalNext::Drop
            }
            Icmpv6Message(crate::mld::REPORT_V1 | crate::mld::DONE_V1 | crate::mld::REPORT_V2) => {
                // Other listeners' reports: for multicast routers, which this node is not.
                cx.error(Ip6LocalError::MldReports);
                LocalNext::Drop
            }
            _ => {
                cx.error(if punt_to_host && unicast_to_us {
                    Ip6LocalError::PuntedToHost
                } else {
                    Ip6LocalError::Punted
                });
                LocalNext::Punt
            }
        }
    }

    /// The source of the echo reply to a request from `src` to `dst`, received on `port`:
    /// `dst` when it is one of our unicast addresses; for a request to a group or to an
    /// anycast address (the Subnet-Router one), a unicast address of the receiving interface
    /// (RFC 4443 2.2(b), 4.1), link-local for a link-local asker. Whole and reassembled
    /// requests alike.
    fn echo_reply_source(
        tables: &Tables,
        port: u16,
        src: Ipv6Addr,
        dst: Ipv6Addr,
    ) -> Option<Ipv6Addr> {
        if tables.is_local_ipv6(dst) {
            return Some(dst);
        }
        let ifc = tables.interface(port)?;
        Some(if is_link_local(&src) {
            ifc.link_local
        } else {
            ifc.primary_ipv6()
        })
    }

    /// RFC 8201 4: a Packet Too Big about a packet this node sent (the quoted header's source
    /// is one of its addresses) lowers its estimate of the path MTU to the quoted packet's
    /// destination, never below 1280 bytes; its later packets there are fragmented to fit
    /// ([`Ip6Local::own_mtu`]). The message then goes on to the host stack when punt to host
    /// is on (its own packets share our addresses, and its path MTU cache wants it too).
    fn packet_too_big<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        offset: usize,
        to_host: bool,
    ) -> LocalNext {
        // The MTU, then the invoking packet: its fixed header's source and destination.
        let msg = pkt.buf.data().get(offset..).unwrap_or_default();
        let quoted = msg.get(8..48).map(|invoking| {
            let invoking = Ipv6Packet::new_unchecked(invoking);
            let mtu = Icmpv6Packet::new_unchecked(msg).mtu();
            (mtu, invoking.src_addr(), invoking.dst_addr())
        });
        match quoted {
            Some((mtu, from, to)) if cx.tables.is_local_ipv6(from) && !to.is_multicast() => {
                if cx.state.path_mtu.lower(to, mtu, cx.now) {
                    cx.trace(&pkt.meta, format_args!("path MTU to {to}: {mtu}"));
                }
                cx.error(Ip6LocalError::PacketTooBig);
            }
            _ => cx.error(Ip6LocalError::ForeignPacketTooBig),
        }
        if to_host {
            cx.error(Ip6LocalError::PuntedToHost);
            return LocalNext::Punt;
        }
        LocalNext::Drop
    }

    /// The largest packet this node may send `to` as its source: the MTU of the link the
    /// lookup will send it out of (the least of equal-cost paths'; the receiving port's for a
    /// link-local destination or one without a route), lowered to what Packet Too Big
    /// messages taught about the path (RFC 8201 4).
    fn own_mtu<B>(cx: &Context<'_, B>, to: Ipv6Addr, rx_port: u16) -> usize {
        let tables = cx.tables;
        let port_mtu = |port: u16| tables.interface(port).map(|i| i.mtu);
        let routed = if is_link_local(&to) {
            None
        } else {
            match tables.fib.lookup6(to) {
                Some(Route::Attached { port }) => port_mtu(*port),
                Some(Route::Via(paths)) => paths.iter().filter_map(|p| port_mtu(p.port)).min(),
                _ => None,
            }
        };
        let link = routed.or_else(|| port_mtu(rx_port)).unwrap_or(IPV6_MIN_MTU);
        let path = cx.state.path_mtu.get(to, cx.now).unwrap_or(u16::MAX);
        usize::from(link.min(path))
    }

    /// Fragments a packet this node made (an echo reply, no extension headers) to `mtu`,
    /// as its source does (RFC 8200 4.5); the fragments go to the lookup.
    #[cold]
    #[inline(never)]
    fn fragment_own<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        mtu: usize,
    ) -> LocalNext {
        let ident = local_frag::next_ident(cx);
        let meta = Meta {
            trace: 0,
            ..pkt.meta
        };
        let result = fragment_ipv6(&mut pkt.buf, mtu, ident, |buf| {
            cx.spawn(Packet { buf, meta }, LocalNext::Lookup);
        });
        match result {
            Ok(n) => {
                cx.error(Ip6LocalError::Fragmented);
                cx.trace(&pkt.meta, format_args!("fragmented into {n} for MTU {mtu}"));
                LocalNext::Lookup
            }
            Err(_) => {
                cx.error(Ip6LocalError::NoBuffer);
                LocalNext::Drop
            }
        }
    }

    /// Answers a TCP segment with a reset built in place; extension headers are not repeated.
    fn reset<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        offset: usize,
    ) -> LocalNext {
        let addrs = IpAddrPair::V6 { src, dst };
        let Some(rst) = tcp_reset::reset_for(&pkt.buf.data()[offset..], &addrs) else {
            cx.error(Ip6LocalError::TcpDropped);
            return LocalNext::Drop;
        };
        let repr = Ipv6Repr {
            src_addr: dst,
            dst_addr: src,
            next_header: IpProtocol::TCP,
            payload_len: rst.buffer_len(),
            hop_limit: DEFAULT_HOP_LIMIT,
            traffic_class: 0,
            flow_label: 0,
        };
        pkt.buf.truncate(0);
        if !pkt.buf.push_back(repr.buffer_len()) {
            cx.error(Ip6LocalError::NoHeadroom);
            return LocalNext::Drop;
        }
        let (header, seg) = pkt.buf.data_mut().split_at_mut(repr.header_len());
        if repr.emit(&mut Ipv6Packet::new_unchecked(header)).is_err()
            || rst
                .emit(
                    &mut TcpPacket::new_unchecked(seg),
                    &tcp_reset::reversed(&addrs),
                )
                .is_err()
        {
            cx.error(Ip6LocalError::TcpDropped);
            return LocalNext::Drop;
        }
        pkt.meta.local_origin = true;
        cx.error(Ip6LocalError::TcpReset);
        LocalNext::Lookup
    }

    /// Acts on one routing or destination options header (at `at`) of a packet for this
    /// node; `Some` where the packet goes no further. A routing header with segments left is
    /// for a node that routes by it, and this one knows no routing type (RFC 8200 4.4; type
    /// 0 is deprecated by RFC 5095); options are checked as RFC 8200 4.2 says.
    fn destination_header<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        protocol: IpProtocol,
        at: usize,
        unicast_to_us: bool,
    ) -> Option<LocalNext> {
        if protocol == IpProtocol::ROUTING {
            if pkt.buf.data().get(at + 3).is_some_and(|&left| left != 0) {
                cx.error(Ip6LocalError::RoutingHeader);
                pkt.meta.icmp_error = Some((
                    Icmpv6Message::PARAM_PROBLEM.0,
                    param_problem_code::HEADER_FIELD,
                    (at + 2) as u32,
                ));
                return Some(LocalNext::Error);
            }
            return None;
        }
        match check_options(pkt.buf.data(), at) {
            OptionsVerdict::Accept => None,
            OptionsVerdict::ParamProblem {
                pointer,
                unless_multicast,
            } if !unless_multicast || unicast_to_us => {
                cx.error(Ip6LocalError::UnknownOption);
                pkt.meta.icmp_error = Some((
                    Icmpv6Message::PARAM_PROBLEM.0,
                    param_problem_code::UNRECOGNIZED_OPTION,
                    pointer,
                ));
                Some(LocalNext::Error)
            }
            _ => {
                cx.error(Ip6LocalError::BadExtensionHeaders);
                Some(LocalNext::Drop)
            }
        }
    }

    /// RFC 4861 6.2.6: validate, learn the sender, and have the port's next router
    /// advertisement go out soon (`Graph::advertise_routers` sends it).
    fn router_solicitation<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        offset: usize,
    ) -> LocalNext {
        let port = pkt.meta.rx_port;
        let msg = &pkt.buf.data()[offset..];
        let source_mac = match nd::parse_router_solicitation(msg, hop_limit, &src, &dst) {
            Ok(mac) => mac,
            Err(_) => {
                cx.error(Ip6LocalError::BadNd);
                return LocalNext::Drop;
            }
        };
        // Only ports with an IPv6 prefix advertise.
        if cx
            .tables
            .interface(port)
            .is_none_or(|ifc| ifc.ipv6.is_empty())
        {
            cx.error(Ip6LocalError::RouterDiscovery);
            return LocalNext::Drop;
        }
        // RFC 4861 7.2.3, 6.2.6: the sender's address as heard, STALE until confirmed.
        if let Some(mac) = source_mac {
            cx.state
                .neighbors
                .learn_stale(port, IpAddr::V6(src), mac, cx.now);
        }
        cx.state.router_adverts.solicited(port, cx.now);
        cx.error(Ip6LocalError::RouterSolicitations);
        cx.trace(
            &pkt.meta,
            format_args!("RS from {src}: advertisement scheduled"),
        );
        LocalNext::Drop
    }

    /// RFC 4861 7.2.3/7.2.4: validate, learn the sender, answer with an advertisement built in
    /// place and sent straight back out of the receiving port.
    fn solicitation<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        offset: usize,
    ) -> LocalNext {
        let port = pkt.meta.rx_port;
        let (target, source_mac) =
            match nd::parse_solicitation(&pkt.buf.data()[offset..], hop_limit, &src, &dst) {
                Ok(s) => s,
                Err(_) => {
                    cx.error(Ip6LocalError::BadNd);
                    return LocalNext::Drop;
                }
            };
        let Some(ifc) = cx.tables.interface(port) else {
            return LocalNext::Drop;
        };
        // Our unicast addresses, and the Subnet-Router anycast addresses, which an
        // advertisement must not claim outright (RFC 4861 7.2.4: Override clear for anycast).
        let anycast = !ifc.has_ipv6(target);
        if anycast && !ifc.is_subnet_router_anycast(target) {
            cx.error(Ip6LocalError::NdNotForUs);
            return LocalNext::Drop;
        }
        // RFC 4861 7.2.3, 6.2.6: the sender's address as heard, STALE until confirmed.
        if let Some(mac) = source_mac {
            cx.state
                .neighbors
                .learn_stale(port, IpAddr::V6(src), mac, cx.now);
        }
        let (to, solicited) = if src.is_unspecified() {
            (nd::ALL_NODES, false)
        } else {
            (src, true)
        };
        if !nd::make_advertisement(&mut pkt.buf, ifc, target, to, solicited, anycast) {
            cx.error(Ip6LocalError::NoHeadroom);
            return LocalNext::Drop;
        }
        cx.error(Ip6LocalError::NeighborSolicitations);
        cx.trace(
            &pkt.meta,
            format_args!("NS from {src}: {} is at ours", target),
        );
        pkt.meta.tx_port = port;
        pkt.meta.local_origin = true;
        let to_mac = if to.is_multicast() {
            Some(nd::multicast_mac(&to))
        } else {
            source_mac
        };
        match to_mac {
            Some(mac) => {
                if !push_ethernet(&mut pkt.buf, mac, ifc, EtherType::IPV6) {
                    cx.error(Ip6LocalError::NoHeadroom);
                    return LocalNext::Drop;
                }
                LocalNext::Tx
            }
            // No source link-layer option: resolve the asker like any next hop (RFC 4861
            // 7.2.4).
            None => {
                pkt.meta.next_hop = Some(IpAddr::V6(to));
                LocalNext::Output
            }
        }
    }
}

impl Ip6Local {
    /// Reassembles a fragment's datagram and answers a whole echo request, fragmenting the
    /// reply to the path's MTU ([`Ip6Local::own_mtu`]).
    fn fragment<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        dst: Ipv6Addr,
        at: usize,
    ) -> LocalNext {
        if let Some((code, pointer)) = fragment_problem(pkt.buf.data(), at) {
            cx.error(Ip6LocalError::BadFragment);
            pkt.meta.icmp_error = Some((Icmpv6Message::PARAM_PROBLEM.0, code, pointer));
            return LocalNext::Error;
        }
        let whole = match local_frag::add_v6(cx, pkt.buf.data(), at) {
            Reassembled::Queued => {
                cx.error(Ip6LocalError::FragmentQueued);
                return LocalNext::Drop;
            }
            Reassembled::Dropped => {
                cx.error(Ip6LocalError::FragmentDropped);
                return LocalNext::Drop;
            }
            Reassembled::Whole(w) => w,
        };
        cx.error(Ip6LocalError::Reassembled);
        let src = Ipv6Packet::new_unchecked(pkt.buf.data()).src_addr();
        let Some(reply_from) = Self::echo_reply_source(cx.tables, pkt.meta.rx_port, src, dst)
        else {
            return LocalNext::Drop;
        };
        let upper = match reassembled_upper(&whole) {
            Ok(upper) => upper,
            Err(OptionsVerdict::ParamProblem {
                pointer,
                unless_multicast,
            }) if !(unless_multicast && dst.is_multicast()) => {
                let problem = (
                    Icmpv6Message::PARAM_PROBLEM.0,
                    param_problem_code::UNRECOGNIZED_OPTION,
                    pointer,
                );
                return Self::quote_reassembled(
                    cx,
                    pkt,
                    &whole,
                    Ip6LocalError::UnknownOption,
                    problem,
                );
            }
            Err(_) => {
                cx.error(Ip6LocalError::BadExtensionHeaders);
                return LocalNext::Drop;
            }
        };
        let Some((repr, reply)) = local_frag::echo_reply_v6(&whole, (upper.0, upper.1), reply_from)
        else {
            return Self::reassembled_error(cx, pkt, &whole, upper);
        };
        if reply_from != dst {
            cx.error(Ip6LocalError::MulticastEcho);
        }
        let mtu = Self::own_mtu(cx, src, pkt.meta.rx_port);
        let ident = local_frag::next_ident(cx);
        if !local_frag::send_v6(cx, pkt, &repr, &reply, mtu, ident, LocalNext::Lookup.into()) {
            cx.error(Ip6LocalError::NoBuffer);
            return LocalNext::Drop;
        }
        cx.error(Ip6LocalError::EchoReplied);
        LocalNext::Lookup
    }
}

impl Ip6Local {
    /// What a reassembled datagram other than an echo request gets, as it would have come
    /// whole: UDP a port unreachable (when its checksum holds), an unknown next header a
    /// parameter problem (RFC 4443 3.1, 3.4), each quoting the datagram rebuilt without its
    /// fragment header; the rest (TCP, ICMPv6, no next header) is dropped. `upper` is what
    /// [`reassembled_upper`] found.
    fn reassembled_error<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        whole: &local_frag::Whole,
        (next, at, next_field): (IpProtocol, usize, u32),
    ) -> LocalNext {
        let (err, error) = match next {
            IpProtocol::UDP => {
                let ip = Ipv6Packet::new_unchecked(&whole.header[..]);
                let addrs = IpAddrPair::V6 {
                    src: ip.src_addr(),
                    dst: ip.dst_addr(),
                };
                if !super::udp_ok(&whole.payload[at..], &addrs) {
                    cx.error(Ip6LocalError::BadUdp);
                    return LocalNext::Drop;
                }
                (
                    Ip6LocalError::PortUnreachable,
                    (Icmpv6Message::DST_UNREACHABLE.0, unreachable_code::PORT, 0),
                )
            }
            IpProtocol::TCP | IpProtocol::ICMPV6 | IpProtocol::NO_NEXT => {
                cx.error(Ip6LocalError::Punted);
                return LocalNext::Drop;
            }
            // The Next Header field that names the unknown protocol.
            _ => (
                Ip6LocalError::UnknownHeader,
                (
                    Icmpv6Message::PARAM_PROBLEM.0,
                    param_problem_code::UNRECOGNIZED_NEXT_HEADER,
                    next_field,
                ),
            ),
        };
        Self::quote_reassembled(cx, pkt, whole, err, error)
    }

    /// Turns `pkt` into the reassembled datagram (as much as an error may quote of it) to be
    /// answered with the ICMPv6 `error`, counted as `err`.
    fn quote_reassembled<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        whole: &local_frag::Whole,
        err: Ip6LocalError,
        error: (u8, u8, u32),
    ) -> LocalNext {
        // As much as an error may quote (the error node trims to the minimum MTU anyway).
        let hlen = whole.header.len();
        let quoted = whole.payload.len().min(1280 - 48 - hlen);
        let payload_len = whole.payload.len().min(usize::from(u16::MAX));
        let rebuilt = super::rebuild(&mut pkt.buf, hlen + quoted, |data| {
            data[..hlen].copy_from_slice(&whole.header);
            data[hlen..].copy_from_slice(&whole.payload[..quoted]);
            Ipv6Packet::new_unchecked(data).set_payload_len(payload_len as u16);
        });
        if !rebuilt {
            cx.error(Ip6LocalError::NoBuffer);
            return LocalNext::Drop;
        }
        cx.error(err);
        pkt.meta.icmp_error = Some(error);
        LocalNext::Error
    }
}

/// The upper-layer header of a reassembled datagram, past the destination options that may
/// follow a fragment header (RFC 8200 4.1), whose options are read as for an unfragmented
/// packet (4.2): (protocol, where its header starts in the payload, the offset in the
/// datagram of the Next Header field that names it); or the options' verdict when they stop
/// the datagram (a parameter problem's pointer counts from the start of the datagram).
fn reassembled_upper(
    whole: &local_frag::Whole,
) -> Result<(IpProtocol, usize, u32), OptionsVerdict> {
    let mut next = IpProtocol(whole.header[6]);
    let (mut at, mut next_field) = (0, 6);
    while next == IpProtocol::DEST_OPTS {
        match check_options(&whole.payload, at) {
            OptionsVerdict::Accept => {}
            OptionsVerdict::ParamProblem {
                pointer,
                unless_multicast,
            } => {
                return Err(OptionsVerdict::ParamProblem {
                    pointer: pointer + 40,
                    unless_multicast,
                })
            }
            verdict => return Err(verdict),
        }
        // check_options saw the whole header in the payload.
        next_field = 40 + at as u32;
        next = IpProtocol(whole.payload[at]);
        at += (usize::from(whole.payload[at + 1]) + 1) * 8;
    }
    Ok((next, at, next_field))
}

/// RFC 8200 4.5's checks of a fragment for this node (its fragment header at `at`): the
/// parameter problem (code, pointer) owed, if any. Every fragment but the last carries a
/// multiple of 8 bytes (else: the Payload Length field); no fragment reaches past 65,535
/// bytes (the Fragment Offset field); the first holds the whole header chain through the
/// upper-layer header (RFC 7112: code 3, pointer 0).
pub(super) fn fragment_problem(data: &[u8], at: usize) -> Option<(u8, u32)> {
    let fh = data.get(at..at + 8)?;
    let word = u16::from_be_bytes([fh[2], fh[3]]);
    let (offset, more) = (usize::from(word & 0xfff8), word & 1 != 0);
    let end = Ipv6Packet::new_unchecked(data).packet_len().min(data.len());
    let carried = data.get(at + 8..end)?;
    if more && !carried.len().is_multiple_of(8) {
        return Some((param_problem_code::HEADER_FIELD, 4));
    }
    // The reassembled payload: the headers before the fragment header, then the fragmentable
    // part, whose offsets count from after it.
    if (at - 40) + offset + carried.len() > usize::from(u16::MAX) {
        return Some((param_problem_code::HEADER_FIELD, (at + 2) as u32));
    }
    if offset == 0 && !holds_header_chain(IpProtocol(fh[0]), carried) {
        return Some((param_problem_code::INCOMPLETE_HEADER_CHAIN, 0));
    }
    None
}

/// True when `bytes` (a first fragment's data) hold every extension header from `next` on and
/// the fixed part of the upper-layer header they lead to.
fn holds_header_chain(mut next: IpProtocol, mut bytes: &[u8]) -> bool {
    loop {
        let len = match next {
            IpProtocol::HOP_BY_HOP | IpProtocol::ROUTING | IpProtocol::DEST_OPTS => {
                bytes.get(1).map(|&l| (usize::from(l) + 1) * 8)
            }
            IpProtocol::AH => bytes.get(1).map(|&l| (usize::from(l) + 2) * 4),
            IpProtocol::FRAGMENT => Some(8),
            IpProtocol::TCP => return bytes.len() >= 20,
            IpProtocol::UDP => return bytes.len() >= 8,
            IpProtocol::ICMPV6 => return bytes.len() >= 4,
            _ => return true,
        };
        match len.and_then(|l| Some((bytes.first()?, bytes.get(l..)?))) {
            Some((&following, rest)) => (next, bytes) = (IpProtocol(following), rest),
            None => return false,
        }
    }
}

per_packet_node!(Ip6Local, "ip6-local", LocalNext, Ip6LocalError, deliver);

node_errors! {
    pub enum Ip6RewriteError {
        HopLimitExpired = ("hop_limit_expired", "hop limit expired in transit: time exceeded sent"),
        Redirected = ("redirect_sent", "forwarded back out of its own link: redirect sent to the source"),
        TooBig = ("too_big", "larger than the next link's MTU: packet too big sent"),
        NoInterface = ("no_interface", "route points at a missing port"),
    }
}

node_nexts! {
    enum RewriteNext {
        Drop = DROP,
        Output = "neighbor-output",
        Error = "icmp6-error",
        Tx = TX,
    }
}

/// The `ip6-rewrite` node: the forwarding step (hop limit, MTU), and the Ethernet header when
/// the next hop is known ([`put_known_header`]).
#[derive(Debug, Default)]
pub struct Ip6Rewrite;

impl Ip6Rewrite {
    /// The common case in a few instructions: a packet that fits the link, going out of
    /// another port than it came in, with hop limit to spare (or made here). Anything else
    /// takes [`Ip6Rewrite::rewrite`], which does the same for it and handles the rest.
    #[inline]
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
        let Some(h) = pkt.buf.data_mut().first_chunk_mut::<40>() else {
            return Self::rewrite(cx, pkt);
        };
        let hop_limit = h[7];
        let fits = 40 + usize::from(u16::from_be_bytes([h[4], h[5]])) <= usize::from(mtu);
        if !fits || !other_port || (!local && hop_limit <= 1) {
            return Self::rewrite(cx, pkt);
        }
        if !local {
            h[7] = hop_limit - 1;
        }
        RewriteNext::Output
    }

    #[inline(never)]
    fn rewrite<B: PacketBuffer>(cx: &mut Context<'_, B>, pkt: &mut Packet<B>) -> RewriteNext {
        let Some(ifc) = cx.tables.interface(pkt.meta.tx_port) else {
            cx.error(Ip6RewriteError::NoInterface);
            return RewriteNext::Drop;
        };
        {
            if !pkt.meta.local_origin && Ipv6Packet::new_unchecked(pkt.buf.data()).hop_limit() <= 1
            {
                cx.error(Ip6RewriteError::HopLimitExpired);
                pkt.meta.icmp_error = Some((Icmpv6Message::TIME_EXCEEDED.0, 0, 0));
                return RewriteNext::Error;
            }
            // Back out of the link it came in on: the source may be told of a better first hop.
            if pkt.meta.tx_port == pkt.meta.rx_port {
                if let Some(redirect) = redirect::ipv6(cx, pkt, ifc) {
                    cx.error(Ip6RewriteError::Redirected);
                    cx.spawn(redirect, RewriteNext::Output);
                }
            }
            let mut ip = Ipv6Packet::new_unchecked(pkt.buf.data_mut());
            // Routers never fragment IPv6. The node's own echo replies are fragmented to the
            // egress link and the path before they get here (`Ip6Local::own_mtu`); a packet
            // of the host stack's that is too big gets a Packet Too Big, punted back to the
            // host, whose path MTU discovery wants it.
            if ip.packet_len() > usize::from(ifc.mtu) {
                cx.error(Ip6RewriteError::TooBig);
                pkt.meta.icmp_error =
                    Some((Icmpv6Message::PACKET_TOO_BIG.0, 0, u32::from(ifc.mtu)));
                return RewriteNext::Error;
            }
            if !pkt.meta.local_origin {
                ip.decrement_hop_limit();
            }
        }
        RewriteNext::Output
    }
}

impl<B: PacketBuffer> Node<B> for Ip6Rewrite {
    fn name(&self) -> &'static str {
        "ip6-rewrite"
    }
    fn next_nodes(&self) -> &'static [&'static str] {
        RewriteNext::NAMES
    }
    fn errors(&self) -> &'static [ErrorInfo] {
        Ip6RewriteError::INFO
    }
    fn process(&mut self, cx: &mut Context<'_, B>, pkts: &mut [Packet<B>], next: &mut [NextIndex]) {
        let mut mtus = PortMtu::new();
        let mut headers = RecentHeaders::default();
        for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
            let mut to = Self::rewrite_fast(cx, pkt, &mut mtus);
            if to == RewriteNext::Output && put_known_header::<B, true>(cx, pkt, &mut headers) {
                to = RewriteNext::Tx;
            }
            *n = to.into();
        }
    }
}
