//! ICMPv6 for the router: `icmp6-error` (RFC 4443 error generation, in place) and the neighbor
//! discovery messages the router builds and checks (RFC 4861).

use std::net::{IpAddr, Ipv6Addr};

use super::ip6::{is_link_local, DEFAULT_HOP_LIMIT};
use crate::buffer::PacketBuffer;
use crate::fib::Route;
use crate::graph::{Context, Packet, DROP};
use crate::tables::{Interface, Tables};
use crate::wire::icmpv6::param_problem_code;
use crate::wire::{Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv6Packet, Ipv6Repr};
use crate::{node_errors, node_nexts, per_packet_node};

/// Neighbor discovery: the messages address resolution and router discovery need, with the
/// checks RFC 4861 6.1 and 7.1 put on top of the wire format's own.
pub mod nd {
    use super::*;
    use crate::nodes::ip6::solicited_node;
    use crate::nodes::rebuild;
    use crate::router_adverts::{RaConfig, PREFIX_PREFERRED_LIFETIME, PREFIX_VALID_LIFETIME};
    use crate::tables::Interface;
    use crate::wire::{EthernetAddress, Icmpv6Packet, Icmpv6Repr, NdiscRepr, PrefixInformation};

    /// The all-nodes link-local group.
    pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

    /// Why a neighbor discovery message was refused.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum NdError {
        /// Hop limit not 255: it did not come from the link (RFC 4861 7.1.1).
        HopLimit,
        /// Not the expected message, malformed, or addressed against the rules.
        Malformed,
    }

    fn parse(
        msg: &[u8],
        hop_limit: u8,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
    ) -> Result<NdiscRepr, NdError> {
        if hop_limit != 255 {
            return Err(NdError::HopLimit);
        }
        let pkt = Icmpv6Packet::new_checked(msg).map_err(|_| NdError::Malformed)?;
        match Icmpv6Repr::parse(&pkt, src, dst) {
            Ok(Icmpv6Repr::Ndisc(nd)) => Ok(nd),
            _ => Err(NdError::Malformed),
        }
    }

    /// A validated neighbor solicitation: its target and the sender's link-layer address.
    pub fn parse_solicitation(
        msg: &[u8],
        hop_limit: u8,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
    ) -> Result<(Ipv6Addr, Option<[u8; 6]>), NdError> {
        let NdiscRepr::NeighborSolicit {
            target_addr,
            lladdr,
        } = parse(msg, hop_limit, src, dst)?
        else {
            return Err(NdError::Malformed);
        };
        // Duplicate address detection probes come from :: to the solicited-node group and
        // carry no source link-layer address.
        if src.is_unspecified() && (*dst != solicited_node(&target_addr) || lladdr.is_some()) {
            return Err(NdError::Malformed);
        }
        Ok((target_addr, lladdr.map(|a| a.0)))
    }

    /// A validated neighbor advertisement: its target and link-layer address.
    pub fn parse_advertisement(
        msg: &[u8],
        hop_limit: u8,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
    ) -> Result<Advertisement, NdError> {
        let NdiscRepr::NeighborAdvert {
            solicited,
            override_,
            target_addr,
            lladdr,
            ..
        } = parse(msg, hop_limit, src, dst)?
        else {
            return Err(NdError::Malformed);
        };
        if dst.is_multicast() && solicited {
            return Err(NdError::Malformed);
        }
        Ok(Advertisement {
            target: target_addr,
            mac: lladdr.map(|a| a.0),
            solicited,
            override_,
        })
    }

    /// A validated router solicitation (RFC 4861 6.1.1): the sender's link-layer address,
    /// if it gave one. One from the unspecified address must not carry it.
    pub fn parse_router_solicitation(
        msg: &[u8],
        hop_limit: u8,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
    ) -> Result<Option<[u8; 6]>, NdError> {
        let NdiscRepr::RouterSolicit { lladdr } = parse(msg, hop_limit, src, dst)? else {
            return Err(NdError::Malformed);
        };
        if src.is_unspecified() && lladdr.is_some() {
            return Err(NdError::Malformed);
        }
        Ok(lladdr.map(|a| a.0))
    }

    /// A validated neighbor advertisement.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Advertisement {
        /// The address advertised.
        pub target: Ipv6Addr,
        /// Its link-layer address, if the advertisement carries one.
        pub mac: Option<[u8; 6]>,
        /// S: an answer to a solicitation.
        pub solicited: bool,
        /// O: the address is to replace a cached one.
        pub override_: bool,
    }

    /// The Ethernet address of an IPv6 multicast group (RFC 2464 7).
    pub fn multicast_mac(group: &Ipv6Addr) -> [u8; 6] {
        EthernetAddress::from_ipv6_multicast(group).map_or([0x33, 0x33, 0, 0, 0, 1], |a| a.0)
    }

    /// Writes an IPv6 packet carrying `nd` from `src` to `dst` (hop limit 255) into the buffer.
    fn write<B: PacketBuffer>(buf: &mut B, src: Ipv6Addr, dst: Ipv6Addr, nd: NdiscRepr) -> bool {
        write_with_options(buf, src, dst, nd, 0, |_| true)
    }

    /// [`write`], with `options_len` bytes of further options after those `nd` has, written
    /// by `options` (which says whether it could).
    fn write_with_options<B: PacketBuffer>(
        buf: &mut B,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        nd: NdiscRepr,
        options_len: usize,
        options: impl FnOnce(&mut [u8]) -> bool,
    ) -> bool {
        let msg = Icmpv6Repr::Ndisc(nd);
        let head_len = msg.buffer_len();
        let ip = Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::ICMPV6,
            payload_len: head_len + options_len,
            hop_limit: 255,
            traffic_class: 0,
            flow_label: 0,
        };
        let mut ok = false;
        rebuild(buf, ip.buffer_len(), |data| {
            let (header, body) = data.split_at_mut(ip.header_len());
            ok = ip.emit(&mut Ipv6Packet::new_unchecked(header)).is_ok()
                && msg
                    .emit(
                        &mut Icmpv6Packet::new_unchecked(&mut body[..head_len]),
                        &src,
                        &dst,
                    )
                    .is_ok();
            if options_len > 0 {
                // The checksum again, over the whole message.
                ok &= options(&mut body[head_len..]);
                Icmpv6Packet::new_unchecked(body).fill_checksum(&src, &dst);
            }
        }) && ok
    }

    /// Turns the packet into an advertisement that `target` (ours; `anycast`, a Subnet-Router
    /// anycast address) is at the interface's MAC.
    pub fn make_advertisement<B: PacketBuffer>(
        buf: &mut B,
        ifc: &Interface,
        target: Ipv6Addr,
        to: Ipv6Addr,
        solicited: bool,
        anycast: bool,
    ) -> bool {
        let nd = NdiscRepr::NeighborAdvert {
            router: true,
            solicited,
            // An anycast address may be answered for by others too: no override (RFC 4861
            // 7.2.4), and sent from a unicast address of the interface.
            override_: !anycast,
            target_addr: target,
            lladdr: Some(EthernetAddress(ifc.mac)),
        };
        let src = if anycast { ifc.link_local } else { target };
        write(buf, src, to, nd)
    }

    /// The prefixes `ifc` advertises: its global ones, each once, as many as fit the MTU.
    fn advertised_prefixes(
        ifc: &Interface,
        room: usize,
    ) -> impl Iterator<Item = PrefixInformation> + '_ {
        let fit = room / PrefixInformation::LEN;
        ifc.ipv6
            .iter()
            .enumerate()
            .filter(|(i, net)| {
                !is_link_local(&net.addr())
                    && !ifc.ipv6[..*i].iter().any(|o| o.trunc() == net.trunc())
            })
            .take(fit)
            .map(|(_, net)| PrefixInformation {
                prefix: net.network(),
                prefix_len: net.prefix_len(),
                on_link: true,
                // Stateless autoconfiguration forms 64-bit interface identifiers (RFC 4862
                // 5.5.3, RFC 4291 2.5.1): other lengths are announced on-link only.
                autonomous: net.prefix_len() == 64,
                valid_lifetime: PREFIX_VALID_LIFETIME,
                preferred_lifetime: PREFIX_PREFERRED_LIFETIME,
            })
    }

    /// Turns the buffer into a router advertisement from `ifc` to all-nodes, with its
    /// Ethernet header (RFC 4861 4.2 and 6.2.3): from the link-local address, hop limit
    /// 255, with our link-layer address, the MTU if configured, and the port's prefixes.
    pub fn make_router_advert<B: PacketBuffer>(
        buf: &mut B,
        ifc: &Interface,
        config: &RaConfig,
    ) -> bool {
        let nd = NdiscRepr::RouterAdvert {
            hop_limit: config.cur_hop_limit,
            managed: false,
            other_config: false,
            router_lifetime: config.default_lifetime,
            reachable_time: 0,
            retrans_time: 0,
            lladdr: Some(EthernetAddress(ifc.mac)),
            mtu: config.link_mtu.then_some(u32::from(ifc.mtu)),
        };
        let room = usize::from(ifc.mtu).saturating_sub(40 + Icmpv6Repr::Ndisc(nd).buffer_len());
        let options_len = advertised_prefixes(ifc, room).count() * PrefixInformation::LEN;
        let prefixes = |out: &mut [u8]| {
            out.chunks_exact_mut(PrefixInformation::LEN)
                .zip(advertised_prefixes(ifc, room))
                .all(|(option, prefix)| prefix.emit(option).is_ok())
        };
        write_with_options(buf, ifc.link_local, ALL_NODES, nd, options_len, prefixes)
            && crate::nodes::push_ethernet(
                buf,
                multicast_mac(&ALL_NODES),
                ifc,
                crate::wire::EtherType::IPV6,
            )
    }

    /// Turns the packet into a multicast solicitation for `target`, with its Ethernet header.
    /// A neighbor solicitation for `target` from `ifc`: to its solicited-node group, or, to
    /// confirm an entry it has (`unicast`, the cached address), to the target itself (RFC
    /// 4861 7.3.3's probes).
    pub fn make_solicitation<B: PacketBuffer>(
        buf: &mut B,
        ifc: &Interface,
        target: Ipv6Addr,
        unicast: Option<[u8; 6]>,
    ) -> bool {
        let src = if is_link_local(&target) {
            ifc.link_local
        } else {
            ifc.ipv6
                .iter()
                .find(|n| n.contains(&target))
                .map_or(ifc.primary_ipv6(), |n| n.addr())
        };
        let (to, mac) = match unicast {
            Some(mac) => (target, mac),
            None => {
                let group = solicited_node(&target);
                (group, multicast_mac(&group))
            }
        };
        let nd = NdiscRepr::NeighborSolicit {
            target_addr: target,
            lladdr: Some(EthernetAddress(ifc.mac)),
        };
        write(buf, src, to, nd)
            && crate::nodes::push_ethernet(buf, mac, ifc, crate::wire::EtherType::IPV6)
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

/// The interface an error to `to` leaves by: the route's, or, for a link-local destination
/// or one without a route, the receiving port's.
fn egress_interface(tables: &Tables, to: Ipv6Addr, rx_port: u16) -> Option<&Interface> {
    let port = match tables.fib.lookup6(to) {
        Some(r @ (Route::Attached { .. } | Route::Via(_))) if !is_link_local(&to) => {
            r.next_hop(IpAddr::V6(to), || 0).map(|h| h.port)
        }
        _ => None,
    }
    .unwrap_or(rx_port);
    tables.interface(port)
}

/// The address to send an error to `to` from, by `ifc`: its link-local address for a
/// link-local destination, else an address of it.
fn source_for(ifc: &Interface, to: Ipv6Addr) -> Ipv6Addr {
    if is_link_local(&to) {
        ifc.link_local
    } else {
        ifc.primary_ipv6()
    }
}

impl Icmp6Error {
    fn build<B: PacketBuffer>(cx: &mut Context<'_, B>, pkt: &mut Packet<B>) -> Next {
        let Some((kind, code, param)) = pkt.meta.icmp_error.take() else {
            cx.error(Icmp6ErrorError::Missing);
            return Next::Drop;
        };
        let (orig_src, orig_dst) = {
            let ip = Ipv6Packet::new_unchecked(pkt.buf.data());
            // Only a packet's first bytes after its headers are its ICMPv6 header: a later
            // fragment's are the middle of the message.
            let is_error = ip.extension_headers().is_ok_and(|e| {
                e.upper_protocol == IpProtocol::ICMPV6
                    && e.fragment.is_none_or(|f| f.offset == 0)
                    && ip.payload().len() + 40 > e.upper_offset
                    && {
                        // RFC 4443 2.4(e.1, e.2): never about an error or a redirect.
                        let kind = Icmpv6Message(pkt.buf.data()[e.upper_offset]);
                        kind.is_error() || kind == Icmpv6Message::REDIRECT
                    }
            });
            if is_error {
                cx.error(Icmp6ErrorError::AboutIcmpError);
                return Next::Drop;
            }
            (ip.src_addr(), ip.dst_addr())
        };
        // RFC 4443 2.4(e): never about multicast-addressed packets, except Packet Too Big and
        // the unrecognized-option Parameter Problem.
        let exempt = Icmpv6Message(kind) == Icmpv6Message::PACKET_TOO_BIG
            || (Icmpv6Message(kind) == Icmpv6Message::PARAM_PROBLEM
                && code == param_problem_code::UNRECOGNIZED_OPTION);
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
        let Some(egress) = egress_interface(cx.tables, orig_src, pkt.meta.rx_port) else {
            cx.error(Icmp6ErrorError::NoHeadroom);
            return Next::Drop;
        };
        // RFC 4443 2.2(a): about a packet to one of our unicast addresses, from that address.
        let ours =
            (!orig_dst.is_multicast() && cx.tables.is_local_ipv6(orig_dst)).then_some(orig_dst);
        let src = ours.unwrap_or_else(|| source_for(egress, orig_src));
        // RFC 4443 2.4(c): no bigger than the IPv6 minimum MTU, nor than the link it leaves
        // by (never below 1280 on a port with IPv6 addresses; this guards the others).
        let max_len = MAX_ERROR_LEN.min(usize::from(egress.mtu));
        pkt.buf.truncate(max_len.saturating_sub(HEADERS_LEN));
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
        let mut msg = Icmpv6Packet::new_unchecked(&mut data[40..]);
        msg.set_msg_type(Icmpv6Message(kind));
        msg.set_code(code);
        msg.set_rest_of_header(param);
        msg.fill_checksum(&src, &orig_src);
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

per_packet_node!(Icmp6Error, "icmp6-error", Next, Icmp6ErrorError, build);
