//! `ethernet-input`: accepts frames addressed to the port, strips the header and sorts them by
//! EtherType.

use crate::buffer::PacketBuffer;
use crate::graph::{Context, Packet};
use crate::wire::{EtherType, EthernetAddress, EthernetFrame};
use crate::{node_errors, node_nexts, per_packet_node};

node_errors! {
    pub enum EthernetInputError {
        TooShort = ("too_short", "frame shorter than an Ethernet header"),
        NoInterface = ("no_interface", "frame received on a port without configuration"),
        NotForUs = ("not_for_us", "unicast frame for another station"),
        BadSource = ("bad_source", "multicast or broadcast source address"),
        Vlan = ("vlan_not_configured", "802.1Q/802.1ad tagged frame; no VLAN subinterfaces configured"),
        UnknownEthertype = ("unknown_ethertype", "EtherType not handled"),
    }
}

node_nexts! {
    enum Next {
        Drop = crate::graph::DROP,
        Arp = "arp-input",
        Ip4 = "ip4-input",
        Ip6 = "ip6-input",
    }
}

/// The `ethernet-input` node.
#[derive(Debug, Default)]
pub struct EthernetInput;

impl EthernetInput {
    #[inline]
    fn classify<B: PacketBuffer>(cx: &mut Context<'_, B>, pkt: &mut Packet<B>) -> Next {
        let data = pkt.buf.data();
        let Ok(frame) = EthernetFrame::new_checked(data) else {
            cx.error(EthernetInputError::TooShort);
            return Next::Drop;
        };
        let Some(ifc) = cx.tables.interface(pkt.meta.rx_port) else {
            cx.error(EthernetInputError::NoInterface);
            return Next::Drop;
        };
        let dst = frame.dst_addr();
        let src = frame.src_addr();
        // The port is promiscuous (the driver sees every frame on the link): keep only ours.
        if dst.is_unicast() && dst != EthernetAddress(ifc.mac) {
            cx.error(EthernetInputError::NotForUs);
            return Next::Drop;
        }
        if src.is_multicast() {
            cx.error(EthernetInputError::BadSource);
            return Next::Drop;
        }
        let next = match frame.ethertype() {
            EtherType::IPV4 => Next::Ip4,
            EtherType::IPV6 => Next::Ip6,
            EtherType::ARP => Next::Arp,
            t if t.is_vlan_tag() => {
                cx.error(EthernetInputError::Vlan);
                return Next::Drop;
            }
            _ => {
                cx.error(EthernetInputError::UnknownEthertype);
                return Next::Drop;
            }
        };
        pkt.meta.l2_multicast = dst.is_multicast();
        if pkt.meta.trace != 0 {
            cx.trace(
                &pkt.meta,
                format_args!(
                    "{src} > {dst} {} on port {}",
                    frame.ethertype(),
                    pkt.meta.rx_port
                ),
            );
        }
        pkt.buf.pull_front(EthernetFrame::<&[u8]>::HEADER_LEN);
        next
    }
}

per_packet_node!(
    EthernetInput,
    "ethernet-input",
    Next,
    EthernetInputError,
    classify
);
