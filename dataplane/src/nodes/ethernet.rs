//! `ethernet-input`: accepts frames addressed to the port, strips the header and sorts them by
//! EtherType. An 802.1Q-tagged frame goes to the VLAN subinterface of its port and VLAN id
//! (its tag stripped too, `rx_port` set to the subinterface), out of line: untagged frames pay
//! nothing for it.

use crate::buffer::PacketBuffer;
use crate::graph::{Context, ErrorInfo, Meta, NextIndex, Node, Packet};
use crate::wire::{EtherType, EthernetFrame, VlanTag};
use crate::{node_errors, node_nexts};

node_errors! {
    pub enum EthernetInputError {
        TooShort = ("too_short", "frame shorter than an Ethernet header"),
        NoInterface = ("no_interface", "frame received on a port without configuration"),
        NotForUs = ("not_for_us", "unicast frame for another station"),
        BadSource = ("bad_source", "multicast or broadcast source address"),
        Vlan = ("vlan_not_configured", "802.1Q tagged frame for a VLAN id without a subinterface on the port"),
        QinQ = ("qinq_not_supported", "802.1ad (QinQ) or double-tagged frame"),
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

/// A MAC address (the first six bytes of `bytes`) as one integer, for comparing.
#[inline]
fn mac_word(bytes: &[u8]) -> u64 {
    match bytes.first_chunk::<6>() {
        Some(&[a, b, c, d, e, f]) => u64::from_le_bytes([a, b, c, d, e, f, 0, 0]),
        None => u64::MAX,
    }
}

/// Length of the header this node strips.
const HEADER_LEN: usize = EthernetFrame::<&[u8]>::HEADER_LEN;

/// The destination address and the I/G bit of the source (bit 48) in [`header_word`]: a
/// frame whose word equals the port's [`mac_word`] under this mask is unicast to the port from
/// a unicast source.
const UNICAST_TO_US_MASK: u64 = 0x0001_ffff_ffff_ffff;

/// The first eight bytes of a header as one little-endian word: the destination address, then
/// the first two bytes of the source.
#[inline(always)]
fn header_word(header: &[u8; HEADER_LEN]) -> u64 {
    header
        .first_chunk::<8>()
        .map_or(0, |w| u64::from_le_bytes(*w))
}

/// The EtherTypes of IPv4 and IPv6 as they lie in the header, read as a native-endian `u16`.
const IPV4_RAW: u16 = u16::from_ne_bytes(EtherType::IPV4.0.to_be_bytes());
const IPV6_RAW: u16 = u16::from_ne_bytes(EtherType::IPV6.0.to_be_bytes());

impl EthernetInput {
    /// `port_mac` is the port the vector's first packet came in on and its MAC (as
    /// [`mac_word`]), looked up once: a vector's packets come from one port.
    ///
    /// The usual frame first: IPv4 or IPv6, unicast to the port from a unicast source (one
    /// masked compare of the first eight bytes, one or two of the EtherType). Anything else takes
    /// [`EthernetInput::classify_general`], which makes every check. `TRACE` is
    /// [`Context::tracing`], fixed for the vector.
    #[inline(always)]
    fn classify<B: PacketBuffer, const TRACE: bool>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        port_mac: (u32, u64),
    ) -> Next {
        // The header is read in place, as an array: no bounds checks field by field.
        let Some(header) = pkt.buf.data().first_chunk::<HEADER_LEN>() else {
            return Self::classify_general(cx, pkt);
        };
        let word = header_word(header);
        let ethertype = u16::from_ne_bytes([header[12], header[13]]);
        let next = match ethertype {
            IPV4_RAW => Next::Ip4,
            IPV6_RAW => Next::Ip6,
            _ => return Self::classify_general(cx, pkt),
        };
        if u32::from(pkt.meta.rx_port) != port_mac.0
            || (word ^ port_mac.1) & UNICAST_TO_US_MASK != 0
            || (TRACE && pkt.meta.trace != 0)
        {
            return Self::classify_general(cx, pkt);
        }
        // The header is stripped before the metadata is written: a store to the metadata
        // could, for all the compiler knows, change a buffer's length fields, which it would
        // then read again for `pull_front`'s check.
        pkt.buf.pull_front(HEADER_LEN);
        // The destination is the port's own address: a link-layer multicast frame only if
        // that is a group address.
        pkt.meta.l2_multicast = word & 1 != 0;
        next
    }

    /// [`EthernetInput::classify`] for any frame: the checks one by one, with their counters.
    #[inline(never)]
    fn classify_general<B: PacketBuffer>(cx: &mut Context<'_, B>, pkt: &mut Packet<B>) -> Next {
        let Some(header) = pkt.buf.data().first_chunk::<HEADER_LEN>() else {
            cx.error(EthernetInputError::TooShort);
            return Next::Drop;
        };
        let port = pkt.meta.rx_port;
        let Some(ifc) = cx.tables.interface(port) else {
            cx.error(EthernetInputError::NoInterface);
            return Next::Drop;
        };
        let mac = mac_word(&ifc.mac);
        // The destination as one 8-byte load with the two bytes past it masked off; the I/G
        // bit is the low bit of the first octet.
        let dst_word = header_word(header) & 0xffff_ffff_ffff;
        let dst_multicast = header[0] & 0x01 != 0;
        // The port is promiscuous (the driver sees every frame on the link): keep only ours.
        if !dst_multicast && dst_word != mac {
            cx.error(EthernetInputError::NotForUs);
            return Next::Drop;
        }
        if header[6] & 0x01 != 0 {
            cx.error(EthernetInputError::BadSource);
            return Next::Drop;
        }
        let ethertype = EtherType(u16::from_be_bytes([header[12], header[13]]));
        let next = match ethertype {
            EtherType::IPV4 => Next::Ip4,
            EtherType::IPV6 => Next::Ip6,
            EtherType::ARP => Next::Arp,
            t if t.is_vlan_tag() => return Self::tagged(cx, pkt, t, dst_multicast),
            _ => {
                cx.error(EthernetInputError::UnknownEthertype);
                return Next::Drop;
            }
        };
        pkt.meta.l2_multicast = dst_multicast;
        if pkt.meta.trace != 0 {
            Self::trace(cx, &pkt.meta, header);
        }
        pkt.buf.pull_front(HEADER_LEN);
        next
    }

    /// A frame with an 802.1Q tag (`tpid` is [`EtherType::VLAN`] or [`EtherType::QINQ`]),
    /// its addresses already accepted: to the subinterface of its VLAN id on the port, or,
    /// priority-tagged (VLAN id 0, IEEE 802.1Q 9.6), to the port itself, the tag stripped
    /// with the header. QinQ and double tags are dropped.
    #[cold]
    #[inline(never)]
    fn tagged<B: PacketBuffer>(
        cx: &mut Context<'_, B>,
        pkt: &mut Packet<B>,
        tpid: EtherType,
        dst_multicast: bool,
    ) -> Next {
        const TAGGED_LEN: usize = HEADER_LEN + VlanTag::LEN;
        if tpid != EtherType::VLAN {
            cx.error(EthernetInputError::QinQ);
            return Next::Drop;
        }
        let Some(header) = pkt.buf.data().first_chunk::<TAGGED_LEN>().copied() else {
            cx.error(EthernetInputError::TooShort);
            return Next::Drop;
        };
        let tag = VlanTag::from_tci(u16::from_be_bytes([header[14], header[15]]));
        let next = match EtherType(u16::from_be_bytes([header[16], header[17]])) {
            EtherType::IPV4 => Next::Ip4,
            EtherType::IPV6 => Next::Ip6,
            EtherType::ARP => Next::Arp,
            t if t.is_vlan_tag() => {
                cx.error(EthernetInputError::QinQ);
                return Next::Drop;
            }
            _ => {
                cx.error(EthernetInputError::UnknownEthertype);
                return Next::Drop;
            }
        };
        let port = pkt.meta.rx_port;
        if tag.vid != 0 {
            let Some(ifc) = cx.tables.vlan_subinterface(port, tag.vid) else {
                cx.error(EthernetInputError::Vlan);
                return Next::Drop;
            };
            pkt.meta.rx_port = ifc;
        }
        pkt.meta.l2_multicast = dst_multicast;
        if pkt.meta.trace != 0 {
            let frame = EthernetFrame::new_unchecked(&header[..]);
            let (src, dst) = (frame.src_addr(), frame.dst_addr());
            let inner = EtherType(u16::from_be_bytes([header[16], header[17]]));
            cx.trace(
                &pkt.meta,
                format_args!(
                    "{src} > {dst} vlan {} {inner} on port {port}: interface {}",
                    tag.vid, pkt.meta.rx_port
                ),
            );
        }
        pkt.buf.pull_front(TAGGED_LEN);
        next
    }

    /// The trace line of an accepted frame.
    #[cold]
    #[inline(never)]
    fn trace<B>(cx: &mut Context<'_, B>, meta: &Meta, header: &[u8; HEADER_LEN]) {
        let frame = EthernetFrame::new_unchecked(&header[..]);
        let (src, dst) = (frame.src_addr(), frame.dst_addr());
        cx.trace(
            meta,
            format_args!(
                "{src} > {dst} {} on port {}",
                frame.ethertype(),
                meta.rx_port
            ),
        );
    }
}

impl<B: PacketBuffer> Node<B> for EthernetInput {
    fn name(&self) -> &'static str {
        "ethernet-input"
    }
    fn next_nodes(&self) -> &'static [&'static str] {
        Next::NAMES
    }
    fn errors(&self) -> &'static [ErrorInfo] {
        EthernetInputError::INFO
    }
    fn process(&mut self, cx: &mut Context<'_, B>, pkts: &mut [Packet<B>], next: &mut [NextIndex]) {
        // The port of the first packet and its MAC; a frame from another port, or from a port
        // without an interface (`u32::MAX`, which no port matches), takes the general checks.
        let Some(first) = pkts.first() else {
            return;
        };
        let port = first.meta.rx_port;
        let port_mac = match cx.tables.interface(port) {
            Some(ifc) => (u32::from(port), mac_word(&ifc.mac)),
            None => (u32::MAX, 0),
        };
        if cx.tracing() {
            for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
                *n = Self::classify::<B, true>(cx, pkt, port_mac).into();
            }
        } else {
            for (pkt, n) in pkts.iter_mut().zip(next.iter_mut()) {
                *n = Self::classify::<B, false>(cx, pkt, port_mac).into();
            }
        }
    }
}
