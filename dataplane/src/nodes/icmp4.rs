//! `icmp4-error`: turns the packet that caused an error into the ICMP error about it, in place,
//! following RFC 1812 4.3.2 (what to quote, when never to answer, rate limits).

use std::net::{IpAddr, Ipv4Addr};

use super::ip4::DEFAULT_TTL;
use crate::buffer::PacketBuffer;
use crate::fib::Route;
use crate::graph::{Context, Packet, DROP};
use crate::tables::Tables;
use crate::wire::icmpv4::{unreachable_code, MAX_ERROR_DATAGRAM_LEN};
use crate::wire::{checksum, Icmpv4Message, IpProtocol, Ipv4Packet, Ipv4Repr};
use crate::{node_errors, node_nexts, per_packet_node};

const HEADERS_LEN: usize = 20 + 8;

node_errors! {
    pub enum Icmp4ErrorError {
        Sent = ("sent", "ICMP errors sent"),
        AboutIcmpError = ("about_icmp_error", "not sent: the packet was itself an ICMP error"),
        NotFirstFragment = ("not_first_fragment", "not sent: the packet was a non-initial fragment"),
        BroadcastOrMulticast = ("broadcast_or_multicast", "not sent: the packet was link- or IP-broadcast or multicast"),
        BadSource = ("bad_source", "not sent: the source is not a unique host address"),
        RateLimited = ("rate_limited", "not sent: ICMP error rate limit reached"),
        NoSourceAddress = ("no_source_address", "not sent: no IPv4 address to send it from"),
        NoHeadroom = ("no_headroom", "not sent: no room to build it"),
        Missing = ("missing", "no error to send was recorded (internal)"),
    }
}

node_nexts! {
    enum Next {
        Drop = DROP,
        Lookup = "ip4-lookup",
    }
}

/// The `icmp4-error` node.
#[derive(Debug, Default)]
pub struct Icmp4Error;

/// The address to send an ICMP error from: one of the interface it will leave by (RFC 1812
/// 4.3.2.4), found by routing back to `to`; the receiving interface's otherwise.
fn source_for(tables: &Tables, to: Ipv4Addr, rx_port: u16) -> Option<Ipv4Addr> {
    let port = match tables.fib.lookup4(to) {
        Some(r @ (Route::Attached { .. } | Route::Via(_))) => {
            r.next_hop(IpAddr::V4(to), || 0).map(|h| h.port)
        }
        _ => None,
    }
    .unwrap_or(rx_port);
    tables
        .interface(port)
        .and_then(|i| i.primary_ipv4())
        .or_else(|| tables.interface(rx_port).and_then(|i| i.primary_ipv4()))
}

impl Icmp4Error {
    fn build<B: PacketBuffer>(cx: &mut Context<'_, B>, pkt: &mut Packet<B>) -> Next {
        let Some((kind, code, param)) = pkt.meta.icmp_error.take() else {
            cx.error(Icmp4ErrorError::Missing);
            return Next::Drop;
        };
        let (orig_src, orig_dst) = {
            let ip = Ipv4Packet::new_unchecked(pkt.buf.data());
            if ip.protocol() == IpProtocol::ICMP
                && ip
                    .payload()
                    .first()
                    .is_some_and(|&t| Icmpv4Message(t).is_error())
            {
                cx.error(Icmp4ErrorError::AboutIcmpError);
                return Next::Drop;
            }
            if ip.fragment_offset() != 0 {
                cx.error(Icmp4ErrorError::NotFirstFragment);
                return Next::Drop;
            }
            (ip.src_addr(), ip.dst_addr())
        };
        // RFC 1812 4.3.2.7: never about a packet to an IP broadcast address, an attached
        // subnet's (directed broadcast, or its zero address, RFC 1812 4.2.3.1) included.
        let broadcast = orig_dst.is_broadcast()
            || cx.tables.is_directed_broadcast(orig_dst)
            || cx.tables.is_subnet_zero(orig_dst);
        if pkt.meta.l2_multicast || broadcast || orig_dst.is_multicast() {
            cx.error(Icmp4ErrorError::BroadcastOrMulticast);
            return Next::Drop;
        }
        let o = orig_src.octets()[0];
        if orig_src.is_unspecified() || o == 0 || o == 127 || o >= 224 {
            cx.error(Icmp4ErrorError::BadSource);
            return Next::Drop;
        }
        if !cx.state.icmp_errors.allow(cx.now) {
            cx.error(Icmp4ErrorError::RateLimited);
            return Next::Drop;
        }
        let Some(src) = source_for(cx.tables, orig_src, pkt.meta.rx_port) else {
            cx.error(Icmp4ErrorError::NoSourceAddress);
            return Next::Drop;
        };
        // The original packet stays where it is and becomes the quoted part: RFC 1812 4.3.2.3
        // lets a router quote as much as fits in a 576-byte datagram.
        pkt.buf.truncate(MAX_ERROR_DATAGRAM_LEN - HEADERS_LEN);
        if !pkt.buf.push_front(HEADERS_LEN) {
            cx.error(Icmp4ErrorError::NoHeadroom);
            return Next::Drop;
        }
        // Not an atomic datagram (DF clear): an identification of its own (RFC 6864 4.1).
        let ident = cx.state.next_fragment_ident() as u16;
        let data = pkt.buf.data_mut();
        let len = data.len();
        let repr = Ipv4Repr {
            src_addr: src,
            dst_addr: orig_src,
            protocol: IpProtocol::ICMP,
            payload_len: len - 20,
            ttl: DEFAULT_TTL,
            // Internetwork control (CS6), as Linux marks its ICMP errors.
            dscp: 48,
            ecn: 0,
            ident,
            dont_fragment: false,
            more_fragments: false,
            fragment_offset: 0,
        };
        if repr
            .emit(&mut Ipv4Packet::new_unchecked(&mut data[..]))
            .is_err()
        {
            cx.error(Icmp4ErrorError::NoHeadroom);
            return Next::Drop;
        }
        let msg = &mut data[20..];
        msg[0] = kind;
        msg[1] = code;
        msg[2..4].fill(0);
        let rest = if Icmpv4Message(kind) == Icmpv4Message::DST_UNREACHABLE
            && code == unreachable_code::FRAG_NEEDED
        {
            // RFC 1191: the next-hop MTU goes in the low 16 bits.
            param & 0xffff
        } else {
            param
        };
        msg[4..8].copy_from_slice(&rest.to_be_bytes());
        let csum = checksum::checksum(msg);
        msg[2..4].copy_from_slice(&csum.to_be_bytes());
        pkt.meta.local_origin = true;
        pkt.meta.l2_multicast = false;
        cx.error(Icmp4ErrorError::Sent);
        cx.trace(
            &pkt.meta,
            format_args!("type {kind} code {code} from {src} to {orig_src}"),
        );
        Next::Lookup
    }
}

per_packet_node!(Icmp4Error, "icmp4-error", Next, Icmp4ErrorError, build);

/// The most addresses one IPv4 router advertisement lists: the count is one octet.
const MAX_ADVERTISED_ADDRESSES: usize = 255;

/// Builds in `buf` an ICMP router advertisement (RFC 1256 3) of `ifc`'s IPv4 addresses, from
/// its first one to all-systems (224.0.0.1) or the limited broadcast as `config` says, with TTL
/// 1, and its Ethernet header. False when `ifc` has no IPv4 address or `buf` no room.
pub fn make_router_advert<B: PacketBuffer>(
    buf: &mut B,
    ifc: &crate::tables::Interface,
    config: &crate::router_adverts::IrdpConfig,
) -> bool {
    let Some(src) = ifc.primary_ipv4() else {
        return false;
    };
    let (dst, mac) = if config.broadcast {
        (Ipv4Addr::BROADCAST, [0xff; 6])
    } else {
        (ALL_SYSTEMS, [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01])
    };
    // As many addresses as the link and the count take (RFC 1256 3: one advertisement may
    // not fit them all; a second is not sent, a router has few addresses per link).
    let room = usize::from(ifc.mtu).saturating_sub(HEADERS_LEN) / 8;
    let addresses = &ifc.ipv4[..ifc.ipv4.len().min(room).min(MAX_ADVERTISED_ADDRESSES)];
    let icmp_len = 8 + 8 * addresses.len();
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: IpProtocol::ICMP,
        payload_len: icmp_len,
        ttl: 1,
        dscp: 0,
        ecn: 0,
        ident: 0,
        dont_fragment: false,
        more_fragments: false,
        fragment_offset: 0,
    };
    let mut ok = false;
    let written = super::rebuild(buf, 20 + icmp_len, |data| {
        let (header, icmp) = data.split_at_mut(20);
        ok = ip.emit(&mut Ipv4Packet::new_unchecked(header)).is_ok();
        icmp[0] = Icmpv4Message::ROUTER_ADVERT.0;
        icmp[4] = addresses.len() as u8;
        // Address entry size: two 32-bit words, the address and its preference.
        icmp[5] = 2;
        icmp[6..8].copy_from_slice(&config.lifetime.to_be_bytes());
        for (entry, net) in icmp[8..].chunks_exact_mut(8).zip(addresses) {
            entry[..4].copy_from_slice(&net.addr().octets());
            entry[4..].copy_from_slice(&config.preference.to_be_bytes());
        }
        let csum = checksum::checksum(icmp);
        icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    });
    written && ok && super::push_ethernet(buf, mac, ifc, crate::wire::EtherType::IPV4)
}

/// All-systems, the group every IPv4 multicast host listens to (RFC 1112).
pub const ALL_SYSTEMS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);
/// All-routers, where hosts send router solicitations (RFC 1256 3).
pub const ALL_ROUTERS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 2);
