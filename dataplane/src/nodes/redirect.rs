//! ICMP redirects: a packet forwarded back out of the link it came from, to a next hop on that
//! same link as its source, tells the source of the better first hop (RFC 1812 5.2.7.2 and
//! 4.3.3.2, host redirects only; RFC 4861 8.2 for IPv6). The packet itself is forwarded as
//! usual; the redirect is built in a buffer of its own and rationed with the ICMP errors.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::ip4::DEFAULT_TTL;
use super::ip6::is_link_local;
use crate::buffer::PacketBuffer;
use crate::graph::{Context, Meta, Packet};
use crate::tables::Interface;
use crate::wire::icmpv4::MAX_ERROR_DATAGRAM_LEN;
use crate::wire::{
    checksum, Icmpv4Message, Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv4Packet, Ipv4Repr,
    Ipv6Packet, Ipv6Repr,
};

/// ICMP redirect code for a host (RFC 792); routers send no network redirects (RFC 1812).
const REDIRECT_HOST: u8 = 1;
/// The IPv6 minimum MTU, which bounds a redirect with its redirected header (RFC 4861 4.5).
const IPV6_MIN_MTU: usize = 1280;

/// The metadata of a redirect going back out of the port `pkt` came in on, to `to`.
fn back_to(pkt_meta: &Meta, to: IpAddr) -> Meta {
    Meta {
        rx_port: pkt_meta.rx_port,
        tx_port: pkt_meta.rx_port,
        next_hop: Some(to),
        local_origin: true,
        ..Meta::default()
    }
}

/// True if the service proxy rewrote `meta`'s packet. Its sender addressed a Service (or is a
/// backend answering through one), so a redirect would name a next hop for an address the
/// sender never used, and once the source is masqueraded it would be addressed to this node.
fn translated<B>(cx: &Context<'_, B>, meta: &Meta) -> bool {
    meta.conn
        .and_then(|id| cx.state.conntrack.get(id))
        .is_some_and(crate::nat::is_translated)
}

/// The IPv4 redirect owed for `pkt` (still as received), if any.
#[cold]
pub(crate) fn ipv4<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    pkt: &Packet<B>,
    ifc: &Interface,
) -> Option<Packet<B>> {
    let Some(IpAddr::V4(gateway)) = pkt.meta.next_hop else {
        return None;
    };
    if pkt.meta.tx_port != pkt.meta.rx_port
        || pkt.meta.local_origin
        || pkt.meta.l2_multicast
        || translated(cx, &pkt.meta)
    {
        return None;
    }
    let data = pkt.buf.data();
    let ip = Ipv4Packet::new_unchecked(data);
    // RFC 1812 5.2.7.2: never about a source-routed packet (it goes where its route says).
    if ip.header_len() > 20
        && matches!(
            super::ip4_options::check(ip.options()),
            super::ip4_options::OptionsVerdict::Accept {
                source_route: true,
                ..
            }
        )
    {
        return None;
    }
    let src = ip.src_addr();
    // Source and next hop on one of the link's subnets; redirects come from that address.
    let from: Ipv4Addr = ifc
        .ipv4
        .iter()
        .find(|n| n.contains(&src) && n.contains(&gateway))?
        .addr();
    if gateway == src {
        return None;
    }
    if !cx.state.icmp_errors.allow(cx.now) {
        return None;
    }
    let ident = cx.state.next_fragment_ident() as u16;
    let quoted = &data[..data.len().min(MAX_ERROR_DATAGRAM_LEN - 28)];
    let repr = Ipv4Repr {
        src_addr: from,
        dst_addr: src,
        protocol: IpProtocol::ICMP,
        payload_len: 8 + quoted.len(),
        ttl: DEFAULT_TTL,
        dscp: 48,
        ecn: 0,
        ident,
        dont_fragment: false,
        more_fragments: false,
        fragment_offset: 0,
    };
    let mut buf = pkt.buf.alloc_sibling()?;
    let built = super::rebuild(&mut buf, repr.buffer_len(), |out| {
        let (header, msg) = out.split_at_mut(20);
        let _ = repr.emit(&mut Ipv4Packet::new_unchecked(header));
        msg[0] = Icmpv4Message::REDIRECT.0;
        msg[1] = REDIRECT_HOST;
        msg[4..8].copy_from_slice(&gateway.octets());
        msg[8..].copy_from_slice(quoted);
        let c = checksum::checksum(msg);
        msg[2..4].copy_from_slice(&c.to_be_bytes());
    });
    built.then(|| Packet {
        buf,
        meta: back_to(&pkt.meta, IpAddr::V4(src)),
    })
}

/// The IPv6 redirect owed for `pkt` (still as received), if any.
#[cold]
pub(crate) fn ipv6<B: PacketBuffer>(
    cx: &mut Context<'_, B>,
    pkt: &Packet<B>,
    ifc: &Interface,
) -> Option<Packet<B>> {
    let Some(IpAddr::V6(target)) = pkt.meta.next_hop else {
        return None;
    };
    if pkt.meta.tx_port != pkt.meta.rx_port
        || pkt.meta.local_origin
        || pkt.meta.l2_multicast
        || translated(cx, &pkt.meta)
    {
        return None;
    }
    let data = pkt.buf.data();
    let ip = Ipv6Packet::new_unchecked(data);
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    // The source must be a neighbor on this link (RFC 4861 8.2).
    let on_link = is_link_local(&src) || ifc.ipv6.iter().any(|n| n.contains(&src));
    if !on_link || dst.is_multicast() || !cx.state.icmp_errors.allow(cx.now) {
        return None;
    }
    let mut target_mac = cx.state.neighbors.get(pkt.meta.tx_port, IpAddr::V6(target));
    // A better router is named by its link-local address (RFC 4861 4.5, 8.2): the neighbor
    // on this link with the gateway's link-layer address. Without one, no redirect.
    let target = if target == dst || is_link_local(&target) {
        target
    } else {
        let mac = target_mac?;
        let port = pkt.meta.tx_port;
        let link_local = cx
            .state
            .neighbors
            .iter()
            .find_map(|((p, ip), n)| match ip {
                IpAddr::V6(a) if *p == port && is_link_local(a) && n.mac == Some(mac) => Some(*a),
                _ => None,
            })?;
        target_mac = Some(mac);
        link_local
    };
    let from: Ipv6Addr = ifc.link_local;
    // Type, code, checksum, reserved, target, destination; then the options.
    let fixed = 8 + 16 + 16;
    let tlla = if target_mac.is_some() { 8 } else { 0 };
    let room = IPV6_MIN_MTU - 40 - fixed - tlla - 8;
    let quoted = &data[..data.len().min(room) / 8 * 8];
    let msg_len = fixed + tlla + 8 + quoted.len();
    let repr = Ipv6Repr {
        src_addr: from,
        dst_addr: src,
        next_header: IpProtocol::ICMPV6,
        payload_len: msg_len,
        hop_limit: 255,
        traffic_class: 0,
        flow_label: 0,
    };
    let mut buf = pkt.buf.alloc_sibling()?;
    let built = super::rebuild(&mut buf, repr.buffer_len(), |out| {
        let (header, msg) = out.split_at_mut(40);
        let _ = repr.emit(&mut Ipv6Packet::new_unchecked(header));
        msg[0] = Icmpv6Message::REDIRECT.0;
        msg[8..24].copy_from_slice(&target.octets());
        msg[24..40].copy_from_slice(&dst.octets());
        let mut at = fixed;
        if let Some(mac) = target_mac {
            msg[at..at + 2].copy_from_slice(&[2, 1]);
            msg[at + 2..at + 8].copy_from_slice(&mac);
            at += 8;
        }
        // Redirected header option: type 4, length in 8-octet units, six reserved bytes.
        msg[at] = 4;
        msg[at + 1] = ((8 + quoted.len()) / 8) as u8;
        msg[at + 8..].copy_from_slice(quoted);
        Icmpv6Packet::new_unchecked(&mut msg[..]).fill_checksum(&from, &src);
    });
    built.then(|| Packet {
        buf,
        meta: back_to(&pkt.meta, IpAddr::V6(src)),
    })
}
