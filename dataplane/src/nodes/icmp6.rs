//! ICMPv6 for the router: `icmp6-error` (RFC 4443 error generation, in place) and the neighbor
//! discovery messages the router builds and checks (RFC 4861).

use std::net::{IpAddr, Ipv6Addr};

use super::ip6::{is_link_local, DEFAULT_HOP_LIMIT};
use crate::buffer::PacketBuffer;
use crate::fib::Route;
use crate::graph::{Context, ErrorInfo, NextIndex, Node, Packet, DROP};
use crate::tables::Tables;
use crate::wire::{checksum, IpProtocol, Ipv6Packet, Ipv6Repr};
use crate::{node_errors, node_nexts};

/// An ICMPv6 message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageType(pub u8);

#[allow(missing_docs)]
impl MessageType {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAMETER_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: MessageType = MessageType(128);
    pub const ECHO_REPLY: MessageType = MessageType(129);
    pub const ROUTER_SOLICIT: MessageType = MessageType(133);
    pub const ROUTER_ADVERT: MessageType = MessageType(134);
    pub const NEIGHBOR_SOLICIT: MessageType = MessageType(135);
    pub const NEIGHBOR_ADVERT: MessageType = MessageType(136);
}

/// ICMPv6 codes this node sends.
#[allow(missing_docs)]
pub mod code {
    pub const NO_ROUTE: u8 = 0;
    pub const BEYOND_SCOPE: u8 = 2;
    pub const PORT_UNREACHABLE: u8 = 4;
    pub const UNRECOGNIZED_NEXT_HEADER: u8 = 1;
    pub const UNRECOGNIZED_OPTION: u8 = 2;
}

/// The ICMPv6 checksum of `msg` between `src` and `dst`: the value to store when the checksum
/// field is zero, and 0 when the field already holds a correct checksum.
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let pseudo = checksum::pseudo_header_ipv6(src, dst, IpProtocol::ICMPV6, msg.len() as u32);
    checksum::finish(checksum::combine(pseudo, checksum::sum(msg)))
}

/// Neighbor discovery: the two messages address resolution needs.
pub mod nd {
    use super::*;
    use crate::nodes::rebuild;
    use crate::tables::Interface;

    /// The all-nodes link-local group.
    pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    const SOURCE_LLA: u8 = 1;
    const TARGET_LLA: u8 = 2;
    /// Type, code, checksum, flags/reserved and target.
    const FIXED_LEN: usize = 24;
    const LLA_OPTION_LEN: usize = 8;
    const FLAG_ROUTER: u8 = 0x80;
    const FLAG_SOLICITED: u8 = 0x40;
    const FLAG_OVERRIDE: u8 = 0x20;

    /// Why a neighbor discovery message was refused (RFC 4861 7.1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum NdError {
        /// Hop limit not 255: it did not come from the link.
        HopLimit,
        /// Non-zero code, short message, multicast target or bad addressing.
        Malformed,
        /// An option of length zero or running past the end.
        BadOption,
    }

    /// A validated neighbor solicitation.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Solicitation {
        /// Whose address is asked for.
        pub target: Ipv6Addr,
        /// The sender's link-layer address option, if present.
        pub source_mac: Option<[u8; 6]>,
    }

    /// A validated neighbor advertisement.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Advertisement {
        /// Whose address is announced.
        pub target: Ipv6Addr,
        /// The target link-layer address option, if present.
        pub target_mac: Option<[u8; 6]>,
        /// The solicited flag.
        pub solicited: bool,
    }

    fn target(msg: &[u8]) -> Result<Ipv6Addr, NdError> {
        let bytes: [u8; 16] = msg
            .get(8..24)
            .and_then(|b| b.try_into().ok())
            .ok_or(NdError::Malformed)?;
        let t = Ipv6Addr::from(bytes);
        if t.is_multicast() {
            return Err(NdError::Malformed);
        }
        Ok(t)
    }

    /// Finds the link-layer address option of `kind`, checking every option's length.
    fn lla_option(options: &[u8], kind: u8) -> Result<Option<[u8; 6]>, NdError> {
        let mut rest = options;
        let mut found = None;
        while !rest.is_empty() {
            let (&ty, &len) = match rest {
                [ty, len, ..] => (ty, len),
                _ => return Err(NdError::BadOption),
            };
            let len = usize::from(len) * 8;
            if len == 0 || len > rest.len() {
                return Err(NdError::BadOption);
            }
            if ty == kind && len == LLA_OPTION_LEN {
                found = Some([rest[2], rest[3], rest[4], rest[5], rest[6], rest[7]]);
            }
            rest = &rest[len..];
        }
        Ok(found)
    }

    fn common_checks(msg: &[u8], hop_limit: u8) -> Result<(), NdError> {
        if hop_limit != 255 {
            return Err(NdError::HopLimit);
        }
        if msg.len() < FIXED_LEN || msg[1] != 0 {
            return Err(NdError::Malformed);
        }
        Ok(())
    }

    /// Validates a neighbor solicitation (RFC 4861 7.1.1); `msg` is the ICMPv6 message whose
    /// checksum is already verified.
    pub fn parse_solicitation(
        msg: &[u8],
        hop_limit: u8,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
    ) -> Result<Solicitation, NdError> {
        common_checks(msg, hop_limit)?;
        let target = target(msg)?;
        let source_mac = lla_option(&msg[FIXED_LEN..], SOURCE_LLA)?;
        // Duplicate address detection probes come from :: to the solicited-node group and
        // carry no source link-layer address.
        if src.is_unspecified()
            && (*dst != super::super::ip6::solicited_node(&target) || source_mac.is_some())
        {
            return Err(NdError::Malformed);
        }
        Ok(Solicitation { target, source_mac })
    }

    /// Validates a neighbor advertisement (RFC 4861 7.1.2).
    pub fn parse_advertisement(
        msg: &[u8],
        hop_limit: u8,
        dst: &Ipv6Addr,
    ) -> Result<Advertisement, NdError> {
        common_checks(msg, hop_limit)?;
        let solicited = msg[4] & FLAG_SOLICITED != 0;
        if dst.is_multicast() && solicited {
            return Err(NdError::Malformed);
        }
        Ok(Advertisement {
            target: target(msg)?,
            target_mac: lla_option(&msg[FIXED_LEN..], TARGET_LLA)?,
            solicited,
        })
    }

    /// The Ethernet address of an IPv6 multicast group (RFC 2464 7).
    pub fn multicast_mac(group: &Ipv6Addr) -> [u8; 6] {
        let o = group.octets();
        [0x33, 0x33, o[12], o[13], o[14], o[15]]
    }

    /// Writes an IPv6 packet carrying an ND message of `kind` about `target` with a link-layer
    /// address option of `option`, from `src` to `dst`, into the buffer.
    #[allow(clippy::too_many_arguments)]
    fn write<B: PacketBuffer>(
        buf: &mut B,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        kind: MessageType,
        flags: u8,
        target: Ipv6Addr,
        option: u8,
        mac: [u8; 6],
    ) -> bool {
        let msg_len = FIXED_LEN + LLA_OPTION_LEN;
        rebuild(buf, 40 + msg_len, |data| {
            let repr = Ipv6Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: IpProtocol::ICMPV6,
                payload_len: msg_len,
                hop_limit: 255,
                traffic_class: 0,
                flow_label: 0,
            };
            // The buffer is exactly the right size, so emitting cannot fail.
            let _ = repr.emit(&mut Ipv6Packet::new_unchecked(&mut data[..]));
            let msg = &mut data[40..];
            msg[0] = kind.0;
            msg[4] = flags;
            msg[8..24].copy_from_slice(&target.octets());
            msg[24] = option;
            msg[25] = 1;
            msg[26..32].copy_from_slice(&mac);
            let csum = icmpv6_checksum(&src, &dst, msg);
            msg[2..4].copy_from_slice(&csum.to_be_bytes());
        })
    }

    /// Turns the packet into an advertisement that `target` (ours) is at the interface's MAC.
    pub fn make_advertisement<B: PacketBuffer>(
        buf: &mut B,
        ifc: &Interface,
        target: Ipv6Addr,
        to: Ipv6Addr,
        solicited: bool,
    ) -> bool {
        let flags = FLAG_ROUTER | FLAG_OVERRIDE | if solicited { FLAG_SOLICITED } else { 0 };
        write(
            buf,
            target,
            to,
            MessageType::NEIGHBOR_ADVERT,
            flags,
            target,
            TARGET_LLA,
            ifc.mac,
        )
    }

    /// Turns the packet into a multicast solicitation for `target`, with its Ethernet header.
    pub fn make_solicitation<B: PacketBuffer>(
        buf: &mut B,
        ifc: &Interface,
        target: Ipv6Addr,
    ) -> bool {
        let src = if is_link_local(&target) {
            ifc.link_local
        } else {
            ifc.ipv6
                .iter()
                .find(|n| n.contains(&target))
                .map_or(ifc.primary_ipv6(), |n| n.addr())
        };
        let group = super::super::ip6::solicited_node(&target);
        write(
            buf,
            src,
            group,
            MessageType::NEIGHBOR_SOLICIT,
            0,
            target,
            SOURCE_LLA,
            ifc.mac,
        ) && crate::nodes::push_ethernet(
            buf,
            multicast_mac(&group),
            ifc.mac,
            crate::wire::EtherType::IPV6,
        )
    }
}

/// Largest ICMPv6 error packet: the IPv6 minimum MTU (RFC 4443 2.4(c)).
pub const MAX_ERROR_LEN: usize = 1280;
const HEADERS_LEN: usize = 40 + 8;

node_errors! {
    pub enum Icmp6ErrorError {
        Sent = ("sent", "ICMPv6 errors sent"),
        AboutIcmpError = ("about_icmp_error", "not sent: the packet was itself an ICMPv6 error"),
        Multicast = ("multicast", "not sent: the packet was sent to a multicast address"),
        BadSource = ("bad_source", "not sent: the source is not a unique unicast address"),
        RateLimited = ("rate_limited", "not sent: ICMPv6 error rate limit reached"),
        NoHeadroom = ("no_headroom", "not sent: no room to build it"),
        Missing = ("missing", "no error to send was recorded (internal)"),
    }
}

node_nexts! {
    enum Next {
        Drop = DROP,
        Lookup = "ip6-lookup",
    }
}

/// The `icmp6-error` node.
#[derive(Debug, Default)]
pub struct Icmp6Error;

/// The address to send an error to `to` from: the link-local address of the port for a
/// link-local destination, else an address of the port the error leaves by.
fn source_for(tables: &Tables, to: Ipv6Addr, rx_port: u16) -> Option<Ipv6Addr> {
    let port = match tables.fib.lookup6(to) {
        Some(r @ (Route::Attached { .. } | Route::Via(_))) if !is_link_local(&to) => {
            r.next_hop(IpAddr::V6(to), 0).map(|h| h.port)
        }
        _ => None,
    }
    .unwrap_or(rx_port);
    let ifc = tables.interface(port)?;
    Some(if is_link_local(&to) {
        ifc.link_local
    } else {
        ifc.primary_ipv6()
    })
}

impl Icmp6Error {
    fn build<B: PacketBuffer>(cx: &mut Context<'_, B>, pkt: &mut Packet<B>) -> Next {
        let Some((kind, code, param)) = pkt.meta.icmp_error.take() else {
            cx.error(Icmp6ErrorError::Missing);
            return Next::Drop;
        };
        let (orig_src, orig_dst) = {
            let ip = Ipv6Packet::new_unchecked(pkt.buf.data());
            let is_error = ip.extension_headers().is_ok_and(|e| {
                e.upper_protocol == IpProtocol::ICMPV6
                    && ip.payload().len() + 40 > e.upper_offset
                    && pkt.buf.data()[e.upper_offset] < 128
            });
            if is_error {
                cx.error(Icmp6ErrorError::AboutIcmpError);
                return Next::Drop;
            }
            (ip.src_addr(), ip.dst_addr())
        };
        // RFC 4443 2.4(e): never about multicast-addressed packets, except Packet Too Big and
        // the unrecognized-option Parameter Problem.
        let exempt = kind == MessageType::PACKET_TOO_BIG
            || (kind == MessageType::PARAMETER_PROBLEM && code == code::UNRECOGNIZED_OPTION);
        if (orig_dst.is_multicast() || pkt.meta.l2_multicast) && !exempt {
            cx.error(Icmp6ErrorError::Multicast);
            return Next::Drop;
        }
        if orig_src.is_unspecified() || orig_src.is_multicast() || orig_src.is_loopback() {
            cx.error(Icmp6ErrorError::BadSource);
            return Next::Drop;
        }
        if !cx.state.icmp_errors.allow(cx.now) {
            cx.error(Icmp6ErrorError::RateLimited);
            return Next::Drop;
        }
        let Some(src) = source_for(cx.tables, orig_src, pkt.meta.rx_port) else {
            cx.error(Icmp6ErrorError::NoHeadroom);
            return Next::Drop;
        };
        pkt.buf.truncate(MAX_ERROR_LEN - HEADERS_LEN);
        if !pkt.buf.push_front(HEADERS_LEN) {
            cx.error(Icmp6ErrorError::NoHeadroom);
            return Next::Drop;
        }
        let data = pkt.buf.data_mut();
        let msg_len = data.len() - 40;
        let repr = Ipv6Repr {
            src_addr: src,
            dst_addr: orig_src,
            next_header: IpProtocol::ICMPV6,
            payload_len: msg_len,
            hop_limit: DEFAULT_HOP_LIMIT,
            traffic_class: 0,
            flow_label: 0,
        };
        if repr
            .emit(&mut Ipv6Packet::new_unchecked(&mut data[..]))
            .is_err()
        {
            cx.error(Icmp6ErrorError::NoHeadroom);
            return Next::Drop;
        }
        let msg = &mut data[40..];
        msg[0] = kind;
        msg[1] = code;
        msg[2..4].fill(0);
        msg[4..8].copy_from_slice(&param.to_be_bytes());
        let csum = icmpv6_checksum(&src, &orig_src, msg);
        msg[2..4].copy_from_slice(&csum.to_be_bytes());
        pkt.meta.local_origin = true;
        pkt.meta.l2_multicast = false;
        cx.error(Icmp6ErrorError::Sent);
        cx.trace(
            &pkt.meta,
            format_args!("type {kind} code {code} from {src} to {orig_src}"),
        );
        Next::Lookup
    }
}

impl<B: PacketBuffer> Node<B> for Icmp6Error {
    fn name(&self) -> &'static str {
        "icmp6-error"
    }
    fn next_nodes(&self) -> &'static [&'static str] {
        Next::NAMES
    }
    fn errors(&self) -> &'static [ErrorInfo] {
        Icmp6ErrorError::INFO
    }
    fn process(&mut self, cx: &mut Context<'_, B>, pkts: &mut [Packet<B>], next: &mut [NextIndex]) {
        for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
            *n = Self::build(cx, pkt).into();
        }
    }
}
