//! `arp-input`: answers ARP requests for the port's addresses and learns neighbors (RFC 826),
//! and the ARP request the rewrite node sends when a next hop is unknown.

use std::net::{IpAddr, Ipv4Addr};

use super::{push_ethernet, rebuild};
use crate::buffer::PacketBuffer;
use crate::graph::{Context, Packet, DROP, TX};
use crate::tables::Interface;
use crate::wire::{ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress};
use crate::{node_errors, node_nexts, per_packet_node};

node_errors! {
    pub enum ArpInputError {
        Malformed = ("malformed", "ARP packet too short or with bad lengths"),
        Unsupported = ("unsupported", "ARP for a hardware or protocol type other than Ethernet/IPv4"),
        BadOperation = ("bad_operation", "ARP operation neither request nor reply"),
        BadSender = ("bad_sender", "sender hardware address is multicast or broadcast"),
        BadSenderAddress = ("bad_sender_address", "sender IP address is broadcast, multicast, loopback or class E"),
        AddressConflict = ("address_conflict", "another station claims one of our addresses"),
        NotForUs = ("not_for_us", "ARP about an address that is not ours (entries refreshed only)"),
        RepliesLearned = ("replies_learned", "ARP replies consumed after learning the sender"),
        RequestsAnswered = ("requests_answered", "ARP requests for our addresses answered"),
        NoHeadroom = ("no_headroom", "no room to add the Ethernet header"),
    }
}

node_nexts! {
    enum Next {
        Drop = DROP,
        Tx = TX,
    }
}

/// The `arp-input` node.
#[derive(Debug, Default)]
pub struct ArpInput;

impl ArpInput {
    fn handle<B: PacketBuffer>(cx: &mut Context<'_, B>, pkt: &mut Packet<B>) -> Next {
        let repr = match ArpPacket::new_checked(pkt.buf.data()).and_then(|p| ArpRepr::parse(&p)) {
            Ok(r) => r,
            Err(crate::wire::WireError::Unsupported) => {
                cx.error(ArpInputError::Unsupported);
                return Next::Drop;
            }
            Err(_) => {
                cx.error(ArpInputError::Malformed);
                return Next::Drop;
            }
        };
        let port = pkt.meta.rx_port;
        let Some(ifc) = cx.tables.interface(port) else {
            return Next::Drop;
        };
        if repr.operation != ArpOperation::REQUEST && repr.operation != ArpOperation::REPLY {
            cx.error(ArpInputError::BadOperation);
            return Next::Drop;
        }
        if !repr.source_hardware_addr.is_unicast() {
            cx.error(ArpInputError::BadSender);
            return Next::Drop;
        }
        let sender = repr.source_protocol_addr;
        // No station has a broadcast, multicast, loopback or class E address (Linux ignores
        // such ARP too): neither answered nor learned.
        let o = sender.octets()[0];
        let subnet_broadcast = ifc
            .ipv4
            .iter()
            .any(|n| n.prefix_len() < 31 && n.broadcast() == sender);
        if o == 127 || o >= 224 || subnet_broadcast {
            cx.error(ArpInputError::BadSenderAddress);
            return Next::Drop;
        }
        if ifc.has_ipv4(sender) {
            cx.error(ArpInputError::AddressConflict);
            return Next::Drop;
        }
        let for_us = ifc.has_ipv4(repr.target_protocol_addr);
        // RFC 826: update an existing entry for the sender in any case; add one only when the
        // packet is for us. An ARP probe (sender 0.0.0.0) teaches nothing.
        if !sender.is_unspecified() {
            cx.state.neighbors.learn(
                port,
                IpAddr::V4(sender),
                repr.source_hardware_addr.0,
                cx.now,
                for_us,
            );
        }
        if !for_us {
            cx.error(ArpInputError::NotForUs);
            return Next::Drop;
        }
        if repr.operation == ArpOperation::REPLY {
            cx.trace(
                &pkt.meta,
                format_args!("reply: {sender} is at {}", repr.source_hardware_addr),
            );
            cx.error(ArpInputError::RepliesLearned);
            return Next::Drop;
        }
        let reply = repr.reply(EthernetAddress(ifc.mac));
        pkt.buf.truncate(ArpRepr::LEN);
        reply.emit(&mut ArpPacket::new_unchecked(pkt.buf.data_mut()));
        if !push_ethernet(
            &mut pkt.buf,
            repr.source_hardware_addr.0,
            ifc,
            EtherType::ARP,
        ) {
            cx.error(ArpInputError::NoHeadroom);
            return Next::Drop;
        }
        cx.trace(
            &pkt.meta,
            format_args!(
                "request from {sender}: {} is at {}",
                repr.target_protocol_addr, reply.source_hardware_addr
            ),
        );
        cx.error(ArpInputError::RequestsAnswered);
        pkt.meta.tx_port = port;
        Next::Tx
    }
}

per_packet_node!(ArpInput, "arp-input", Next, ArpInputError, handle);

/// Turns the packet into a broadcast ARP request for `target` out of `ifc`. False when the
/// buffer cannot hold it.
/// An ARP request for `target` from `ifc`, broadcast, or sent straight to `unicast` (the
/// cached address, to check an entry is still right, as RFC 1122 2.3.2.1 suggests).
pub(crate) fn make_request<B: PacketBuffer>(
    buf: &mut B,
    ifc: &Interface,
    target: Ipv4Addr,
    unicast: Option<[u8; 6]>,
) -> bool {
    // Ask from the address on the target's subnet, so the answer is usable (RFC 1812 4.3.2.4
    // spirit); any address of ours otherwise.
    let sender = ifc
        .ipv4
        .iter()
        .find(|n| n.contains(&target))
        .or(ifc.ipv4.first())
        .map_or(Ipv4Addr::UNSPECIFIED, |n| n.addr());
    let request = ArpRepr {
        operation: ArpOperation::REQUEST,
        source_hardware_addr: EthernetAddress(ifc.mac),
        source_protocol_addr: sender,
        target_hardware_addr: EthernetAddress::ZERO,
        target_protocol_addr: target,
    };
    rebuild(buf, ArpRepr::LEN, |data| {
        request.emit(&mut ArpPacket::new_unchecked(data));
    }) && push_ethernet(
        buf,
        unicast.unwrap_or(EthernetAddress::BROADCAST.0),
        ifc,
        EtherType::ARP,
    )
}
