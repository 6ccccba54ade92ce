//! `neighbor-output`: finds the link-layer address of the next hop and puts the Ethernet header
//! on. An unknown next hop is asked for (ARP for IPv4, a neighbor solicitation for IPv6) and
//! the packet is held until the answer comes, as a host's stack would, so the first packet of
//! a flow is not lost.

use std::net::IpAddr;

use super::{arp, icmp6::nd, push_ethernet};
use crate::buffer::PacketBuffer;
use crate::graph::{Context, Packet, DROP, HOLD, TX};
use crate::tables::Interface;
use crate::wire::{EtherType, EthernetAddress};
use crate::worker::Resolution;
use crate::{node_errors, node_nexts, per_packet_node};

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

impl NeighborOutput {
    #[inline]
    fn output<B: PacketBuffer>(cx: &mut Context<'_, B>, pkt: &mut Packet<B>) -> Next {
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
        let mac = match cx.state.neighbors.resolve(port, next_hop, cx.now) {
            Resolution::Known(mac) => mac,
            Resolution::Refresh(mac) => {
                // Still usable: send it, and ask again so it stays known.
                Self::request(cx, pkt, ifc, next_hop);
                mac
            }
            Resolution::Pending => {
                cx.error(NeighborOutputError::Held);
                return Next::Hold;
            }
            Resolution::Request => {
                Self::request(cx, pkt, ifc, next_hop);
                cx.trace(
                    &pkt.meta,
                    format_args!("who-has {next_hop} on port {port}: held"),
                );
                cx.error(NeighborOutputError::Held);
                return Next::Hold;
            }
        };
        if !push_ethernet(&mut pkt.buf, mac, ifc.mac, ethertype) {
            cx.error(NeighborOutputError::NoHeadroom);
            return Next::Drop;
        }
        if pkt.meta.trace != 0 {
            cx.trace(
                &pkt.meta,
                format_args!("{next_hop} is at {} on port {port}", EthernetAddress(mac)),
            );
        }
        Next::Tx
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
        let (built, sent) = match next_hop {
            IpAddr::V4(a) => (
                arp::make_request(&mut req, ifc, a),
                NeighborOutputError::ArpRequestSent,
            ),
            IpAddr::V6(a) => (
                nd::make_solicitation(&mut req, ifc, a),
                NeighborOutputError::SolicitationSent,
            ),
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

per_packet_node!(
    NeighborOutput,
    "neighbor-output",
    Next,
    NeighborOutputError,
    output
);
