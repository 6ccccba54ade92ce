//! `neighbor-output`: finds the link-layer address of the next hop and puts the Ethernet header
//! on. An unknown next hop is asked for (ARP for IPv4, a neighbor solicitation for IPv6) and
//! the packet is held until the answer comes, as a host's stack would, so the first packet of
//! a flow is not lost.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{arp, icmp6::nd, tagged_header, ETHERNET_HEADER_LEN, VLAN_HEADER_LEN};
use crate::buffer::PacketBuffer;
use crate::graph::{Context, ErrorInfo, Meta, NextIndex, Node, Packet, DROP, HOLD, TX};
use crate::tables::Interface;
use crate::wire::{EtherType, EthernetAddress};
use crate::worker::Resolution;
use crate::{node_errors, node_nexts};

node_errors! {
    pub enum NeighborOutputError {
        NoInterface = ("no_interface", "route points at a missing port"),
        NoNextHop = ("no_next_hop", "packet reached output without a next hop (internal)"),
        Held = ("held", "next hop unresolved: packet held until it is"),
        ArpRequestSent = ("arp_request_sent", "ARP requests sent"),
        SolicitationSent = ("ns_sent", "neighbor solicitations sent"),
        NoBuffer = ("no_buffer", "no buffer for a neighbor request"),
        NoHeadroom = ("no_headroom", "no room to add the Ethernet header"),
    }
}

node_nexts! {
    enum Next {
        Drop = DROP,
        Tx = TX,
        Hold = HOLD,
    }
}

/// The `neighbor-output` node.
#[derive(Debug, Default)]
pub struct NeighborOutput;

/// Ethernet headers built in this vector for next hops resolved as [`Resolution::Known`], so
/// that further packets to the same next hop (traffic goes to few at a time: one, the members
/// of an ECMP group, a service's backends) reuse them instead of resolving again. Direct-mapped
/// by the address's last byte and the port, as the neighbor table's own cache of answers. Kept
/// for one vector only: within it the tables, the time and the neighbor table's answers for
/// known neighbors do not change, so a reused header is exactly what resolving would build.
///
/// IPv4 next hops are keyed by one integer (port and address, the address as it lies in
/// memory: no byte swap), so that the check is one compare.
///
/// The rewrite nodes keep one too (see [`put_known_header`]), with the 18-byte tagged headers
/// of VLAN subinterfaces' next hops apart from the untagged ones, so that looking up an
/// untagged header costs what it did before subinterfaces had a cache.
pub(super) struct RecentHeaders {
    /// [`RecentHeaders::v4_slot_key`]'s key ([`RecentHeaders::EMPTY`] for an empty slot) and
    /// the header.
    v4: [(u64, [u8; ETHERNET_HEADER_LEN]); RecentHeaders::SLOTS],
    v6: [Option<(u16, Ipv6Addr, [u8; ETHERNET_HEADER_LEN])>; RecentHeaders::SLOTS],
    /// Tagged headers (802.1Q) of next hops on VLAN subinterfaces, both families: the
    /// subinterface, the next hop and the header. Looked at only when the untagged slots
    /// have nothing for a packet, which they never have for a subinterface.
    tagged: [Option<(u16, IpAddr, [u8; VLAN_HEADER_LEN])>; RecentHeaders::TAGGED_SLOTS],
}

impl Default for RecentHeaders {
    fn default() -> Self {
        RecentHeaders {
            v4: [(RecentHeaders::EMPTY, [0; ETHERNET_HEADER_LEN]); RecentHeaders::SLOTS],
            v6: [None; RecentHeaders::SLOTS],
            tagged: [None; RecentHeaders::TAGGED_SLOTS],
        }
    }
}

impl RecentHeaders {
    const SLOTS: usize = 16;

    /// Slots for tagged headers: fewer, as few next hops sit behind subinterfaces, and
    /// emptying them is part of every vector's cost.
    const TAGGED_SLOTS: usize = 8;

    /// The key of no IPv4 next hop: above every real one (at most 48 bits).
    const EMPTY: u64 = u64::MAX;

    /// The slot and the key of an IPv4 next hop. The key is unique per port and address: the
    /// port above the address's four bytes read in the machine's order. The slot is
    /// [`RecentHeaders::slot`] of the port and the address's last byte, taken from the same
    /// word (on a little-endian machine one load serves both).
    #[inline(always)]
    fn v4_slot_key(port: u16, next_hop: Ipv4Addr) -> (usize, u64) {
        let octets = next_hop.octets();
        let last = (u32::from_le_bytes(octets) >> 24) as u8;
        let key = u64::from(port) << 32 | u64::from(u32::from_ne_bytes(octets));
        (Self::slot(port, last), key)
    }

    #[inline]
    fn slot(port: u16, low: u8) -> usize {
        (usize::from(low) ^ usize::from(port)) % Self::SLOTS
    }

    /// The header kept for IPv4 next hop `next_hop` on `port`.
    #[inline(always)]
    fn get_v4(&self, port: u16, next_hop: Ipv4Addr) -> Option<&[u8; ETHERNET_HEADER_LEN]> {
        let (slot, key) = Self::v4_slot_key(port, next_hop);
        let (kept, header) = &self.v4[slot];
        (*kept == key).then_some(header)
    }

    #[inline]
    fn get(&self, port: u16, next_hop: IpAddr) -> Option<&[u8; ETHERNET_HEADER_LEN]> {
        match next_hop {
            IpAddr::V4(a) => self.get_v4(port, a),
            IpAddr::V6(a) => match &self.v6[Self::slot(port, a.octets()[15])] {
                Some((p, ip, header)) if *p == port && *ip == a => Some(header),
                _ => None,
            },
        }
    }

    #[inline]
    fn put(&mut self, port: u16, next_hop: IpAddr, header: [u8; ETHERNET_HEADER_LEN]) {
        match next_hop {
            IpAddr::V4(a) => {
                let (slot, key) = Self::v4_slot_key(port, a);
                self.v4[slot] = (key, header);
            }
            IpAddr::V6(a) => self.v6[Self::slot(port, a.octets()[15])] = Some((port, a, header)),
        }
    }

    /// The slot of a tagged header: by the port and the address's last byte, as untagged.
    #[inline]
    fn tagged_slot(port: u16, next_hop: IpAddr) -> usize {
        let low = match next_hop {
            IpAddr::V4(a) => a.octets()[3],
            IpAddr::V6(a) => a.octets()[15],
        };
        Self::slot(port, low) % Self::TAGGED_SLOTS
    }

    /// The tagged header kept for `next_hop` on subinterface `port`.
    #[inline]
    fn get_tagged(&self, port: u16, next_hop: IpAddr) -> Option<&[u8; VLAN_HEADER_LEN]> {
        match &self.tagged[Self::tagged_slot(port, next_hop)] {
            Some((p, ip, header)) if *p == port && *ip == next_hop => Some(header),
            _ => None,
        }
    }

    /// Keeps the tagged header of `next_hop` on subinterface `port`.
    #[inline]
    fn put_tagged(&mut self, port: u16, next_hop: IpAddr, header: [u8; VLAN_HEADER_LEN]) {
        self.tagged[Self::tagged_slot(port, next_hop)] = Some((port, next_hop, header));
    }
}

/// An Ethernet header from `src` to `dst`.
#[inline]
fn ethernet_header(dst: [u8; 6], src: [u8; 6], ethertype: EtherType) -> [u8; ETHERNET_HEADER_LEN] {
    let mut header = [0u8; ETHERNET_HEADER_LEN];
    header[..6].copy_from_slice(&dst);
    header[6..12].copy_from_slice(&src);
    header[12..].copy_from_slice(&ethertype.0.to_be_bytes());
    header
}

/// For `ip4-rewrite` and `ip6-rewrite`: puts the Ethernet header on a packet whose next hop is
/// known and fresh, as VPP's rewrite nodes apply a complete adjacency, so that the common
/// packet leaves without a pass through `neighbor-output`. The header is the one
/// `neighbor-output` would put on: from this vector's `recent` headers, or built from the
/// neighbor table's [`known`](crate::worker::NeighborTable::known) answer; out of a VLAN
/// subinterface, the 18-byte header with its 802.1Q tag (the `tx` sink then queues the frame
/// on the subinterface's port). False, the packet untouched, for everything else, which
/// `neighbor-output` then handles: a next hop to resolve or a stale one (whose use starts its
/// DELAY), the limited broadcast, a traced packet (its trace names the neighbor there), no
/// headroom.
///
/// `TRACE` is [`Context::tracing`]: without it no packet counts as traced.
#[inline(always)]
pub(super) fn put_known_header<B: PacketBuffer, const TRACE: bool>(
    cx: &Context<'_, B>,
    pkt: &mut Packet<B>,
    recent: &mut RecentHeaders,
) -> bool {
    if TRACE && pkt.meta.trace != 0 {
        return false;
    }
    // An IPv4 next hop is read in place (the tag and four bytes), not copied out whole.
    let header = match &pkt.meta.next_hop {
        Some(IpAddr::V4(a)) => recent.get_v4(pkt.meta.tx_port, *a),
        Some(a @ IpAddr::V6(_)) => recent.get(pkt.meta.tx_port, *a),
        None => return false,
    };
    match header {
        Some(header) => pkt.buf.push_header(header),
        None => put_new_known_header(cx, pkt, recent),
    }
}

/// [`put_known_header`] for the first packet of the vector to its next hop, and for every
/// packet out of a VLAN subinterface.
#[inline(never)]
fn put_new_known_header<B: PacketBuffer>(
    cx: &Context<'_, B>,
    pkt: &mut Packet<B>,
    recent: &mut RecentHeaders,
) -> bool {
    let Some(next_hop) = pkt.meta.next_hop else {
        return false;
    };
    let port = pkt.meta.tx_port;
    let Some(ifc) = cx.tables.interface(port) else {
        return false;
    };
    let ethertype = match next_hop {
        IpAddr::V4(_) => EtherType::IPV4,
        IpAddr::V6(_) => EtherType::IPV6,
    };
    if let Some(vlan) = ifc.vlan {
        let tag = (ifc.mac, vlan.vid);
        return put_known_tagged_header(cx, pkt, recent, (port, next_hop), tag, ethertype);
    }
    let Some(mac) = cx.state.neighbors.known(port, next_hop, cx.now) else {
        return false;
    };
    let header = ethernet_header(mac, ifc.mac, ethertype);
    recent.put(port, next_hop, header);
    pkt.buf.push_header(&header)
}

/// [`put_known_header`] for `next_hop` out of VLAN subinterface `port`, whose frames carry
/// `(mac, vid)`: the subinterface's (its port's) MAC and its VLAN id. The tagged header is the
/// one `neighbor-output` would put on ([`super::push_ethernet`]'s), kept in `recent` for the
/// vector's further packets to the same next hop on the same subinterface.
#[inline(never)]
fn put_known_tagged_header<B: PacketBuffer>(
    cx: &Context<'_, B>,
    pkt: &mut Packet<B>,
    recent: &mut RecentHeaders,
    (port, next_hop): (u16, IpAddr),
    (mac, vid): ([u8; 6], u16),
    ethertype: EtherType,
) -> bool {
    if let Some(header) = recent.get_tagged(port, next_hop) {
        return pkt.buf.push_header(header);
    }
    let Some(neighbor) = cx.state.neighbors.known(port, next_hop, cx.now) else {
        return false;
    };
    let header = tagged_header(neighbor, mac, vid, ethertype);
    recent.put_tagged(port, next_hop, header);
    pkt.buf.push_header(&header)
}

impl NeighborOutput {
    /// The common case: a next hop whose header this vector already built.
    #[inline]
    fn output<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        recent: &mut RecentHeaders,
    ) -> Next {
        if let Some(next_hop) = pkt.meta.next_hop {
            if let Some(header) = recent.get(pkt.meta.tx_port, next_hop) {
                return Self::put_header(cx, pkt, header);
            }
        }
        Self::resolve(cx, pkt, recent)
    }

    /// Resolves the next hop and puts the header on, or holds the packet until it is known.
    #[inline(never)]
    fn resolve<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        recent: &mut RecentHeaders,
    ) -> Next {
        let port = pkt.meta.tx_port;
        let Some(ifc) = cx.tables.interface(port) else {
            cx.error(NeighborOutputError::NoInterface);
            return Next::Drop;
        };
        let Some(next_hop) = pkt.meta.next_hop else {
            cx.error(NeighborOutputError::NoNextHop);
            return Next::Drop;
        };
        let ethertype = match next_hop {
            IpAddr::V4(_) => EtherType::IPV4,
            IpAddr::V6(_) => EtherType::IPV6,
        };
        // The limited broadcast reaches every station of the link: nothing to resolve.
        let resolved = if next_hop == IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
            Resolution::Known([0xff; 6])
        } else {
            cx.state.neighbors.resolve(port, next_hop, cx.now)
        };
        match resolved {
            Resolution::Known(mac) if ifc.vlan.is_some() => {
                Self::put_tagged_header(cx, pkt, ifc, mac, ethertype)
            }
            Resolution::Known(mac) => {
                let header = ethernet_header(mac, ifc.mac, ethertype);
                recent.put(port, next_hop, header);
                Self::put_header(cx, pkt, &header)
            }
            Resolution::Pending => {
                cx.error(NeighborOutputError::Held);
                Next::Hold
            }
            Resolution::Request => {
                Self::request(cx, pkt, ifc, next_hop);
                cx.trace(
                    &pkt.meta,
                    format_args!("who-has {next_hop} on port {port}: held"),
                );
                cx.error(NeighborOutputError::Held);
                Next::Hold
            }
        }
    }

    /// Puts a built Ethernet header in front of the packet.
    #[inline]
    fn put_header<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        header: &[u8; ETHERNET_HEADER_LEN],
    ) -> Next {
        if !pkt.buf.push_header(header) {
            cx.error(NeighborOutputError::NoHeadroom);
            return Next::Drop;
        }
        if pkt.meta.trace != 0 {
            Self::trace_header(cx, &pkt.meta, header);
        }
        Next::Tx
    }

    /// Puts the tagged header of a VLAN subinterface in front of the packet. Not kept in
    /// the vector's [`RecentHeaders`]: the rewrite nodes keep tagged headers of known next
    /// hops ([`put_known_header`]), so what comes here is what they left (a next hop just
    /// resolved or stale, a traced packet), and each such packet asks the neighbor table.
    #[cold]
    #[inline(never)]
    fn put_tagged_header<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        ifc: &Interface,
        mac: [u8; 6],
        ethertype: EtherType,
    ) -> Next {
        if !super::push_ethernet(&mut pkt.buf, mac, ifc, ethertype) {
            cx.error(NeighborOutputError::NoHeadroom);
            return Next::Drop;
        }
        if pkt.meta.trace != 0 {
            let mut header = [0u8; ETHERNET_HEADER_LEN];
            header.copy_from_slice(&pkt.buf.data()[..ETHERNET_HEADER_LEN]);
            Self::trace_header(cx, &pkt.meta, &header);
        }
        Next::Tx
    }

    /// The trace line of a packet given a header.
    #[cold]
    #[inline(never)]
    fn trace_header<B>(cx: &mut Context<'_, B>, meta: &Meta, header: &[u8; ETHERNET_HEADER_LEN]) {
        let mac = EthernetAddress::from_bytes(&header[..6]).unwrap_or_default();
        let next_hop = meta
            .next_hop
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        cx.trace(
            meta,
            format_args!("{next_hop} is at {mac} on port {}", meta.tx_port),
        );
    }

    /// Sends an ARP request or neighbor solicitation for `next_hop` out of the packet's port,
    /// in a buffer of its own.
    fn request<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &Packet<B>,
        ifc: &Interface,
        next_hop: IpAddr,
    ) {
        let Some(mut req) = pkt.buf.alloc_sibling() else {
            cx.error(NeighborOutputError::NoBuffer);
            return;
        };
        let built = make_request(&mut req, ifc, next_hop, None);
        let sent = match next_hop {
            IpAddr::V4(_) => NeighborOutputError::ArpRequestSent,
            IpAddr::V6(_) => NeighborOutputError::SolicitationSent,
        };
        if !built {
            cx.error(NeighborOutputError::NoHeadroom);
            return;
        }
        cx.error(sent);
        let mut request = Packet::received(req, pkt.meta.rx_port);
        request.meta.tx_port = pkt.meta.tx_port;
        cx.spawn(request, Next::Tx);
    }
}

/// Builds in `buf` an ARP request or neighbor solicitation for `next_hop` from `ifc`: to the
/// whole link, or to `unicast` (a probe of an address already cached, RFC 4861 7.3.3).
pub(crate) fn make_request<B: PacketBuffer>(
    buf: &mut B,
    ifc: &Interface,
    next_hop: IpAddr,
    unicast: Option<[u8; 6]>,
) -> bool {
    match next_hop {
        IpAddr::V4(a) => arp::make_request(buf, ifc, a, unicast),
        IpAddr::V6(a) => nd::make_solicitation(buf, ifc, a, unicast),
    }
}

impl<B: PacketBuffer> Node<B> for NeighborOutput {
    fn name(&self) -> &'static str {
        "neighbor-output"
    }
    fn next_nodes(&self) -> &'static [&'static str] {
        Next::NAMES
    }
    fn errors(&self) -> &'static [ErrorInfo] {
        NeighborOutputError::INFO
    }
    fn process(&mut self, cx: &mut Context<'_, B>, pkts: &mut [Packet<B>], next: &mut [NextIndex]) {
        let mut recent = RecentHeaders::default();
        for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
            *n = Self::output(cx, pkt, &mut recent).into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header is found again for its own port and next hop only, including port 0 and
    /// 0.0.0.0 (whose key is 0), and a later one in the same slot replaces it.
    #[test]
    fn recent_headers_key_by_port_and_address() {
        let mut recent = RecentHeaders::default();
        let zero = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        assert_eq!(recent.get(0, zero), None);
        let a = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 3));
        let b = IpAddr::V4(Ipv4Addr::new(3, 2, 18, 198));
        recent.put(1, a, [1; ETHERNET_HEADER_LEN]);
        recent.put(0, zero, [2; ETHERNET_HEADER_LEN]);
        assert_eq!(recent.get(1, a), Some(&[1; ETHERNET_HEADER_LEN]));
        assert_eq!(recent.get(0, zero), Some(&[2; ETHERNET_HEADER_LEN]));
        assert_eq!(recent.get(2, a), None);
        assert_eq!(recent.get(1, b), None);
        // Same slot (last byte 3 on port 1, last byte 2 on port 0): the newer one stays.
        let c = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        recent.put(0, c, [3; ETHERNET_HEADER_LEN]);
        assert_eq!(recent.get(0, c), Some(&[3; ETHERNET_HEADER_LEN]));
        assert_eq!(recent.get(1, a), None);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(recent.get(1, v6), None);
        recent.put(1, v6, [4; ETHERNET_HEADER_LEN]);
        assert_eq!(recent.get(1, v6), Some(&[4; ETHERNET_HEADER_LEN]));
    }

    /// Tagged headers are kept apart from untagged ones: found again for their own
    /// subinterface and next hop only, both families, never by the untagged lookups (a
    /// port and its subinterface may have next hops of the same address).
    #[test]
    fn tagged_headers_key_by_subinterface_and_address() {
        let mut recent = RecentHeaders::default();
        let a = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
        let b = IpAddr::V6("2001:db8:100::3".parse().unwrap());
        assert_eq!(recent.get_tagged(2, a), None);
        recent.put_tagged(2, a, [1; VLAN_HEADER_LEN]);
        recent.put_tagged(2, b, [2; VLAN_HEADER_LEN]);
        recent.put(1, a, [3; ETHERNET_HEADER_LEN]);
        assert_eq!(recent.get_tagged(2, a), Some(&[1; VLAN_HEADER_LEN]));
        assert_eq!(recent.get_tagged(2, b), Some(&[2; VLAN_HEADER_LEN]));
        assert_eq!(recent.get_tagged(3, a), None);
        assert_eq!(recent.get_tagged(1, a), None);
        assert_eq!(recent.get(2, a), None, "not an untagged header");
        assert_eq!(recent.get(1, a), Some(&[3; ETHERNET_HEADER_LEN]));
        // A later next hop in the same slot replaces the earlier.
        let c = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
        assert_eq!(
            RecentHeaders::tagged_slot(2, a),
            RecentHeaders::tagged_slot(2, c)
        );
        recent.put_tagged(2, c, [4; VLAN_HEADER_LEN]);
        assert_eq!(recent.get_tagged(2, c), Some(&[4; VLAN_HEADER_LEN]));
        assert_eq!(recent.get_tagged(2, a), None);
    }
}
