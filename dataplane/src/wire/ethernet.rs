//! Ethernet II frames, MAC addresses and 802.1Q / 802.1ad VLAN tags.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::bytes::{read_array, read_u16, write_u16, Field};
use super::error::WireError;

/// A 48-bit IEEE MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    pub const BROADCAST: Self = Self([0xff; 6]);
    pub const ZERO: Self = Self([0; 6]);

    /// Reads an address from exactly six bytes; `None` for any other length.
    #[inline]
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let octets: [u8; 6] = bytes.try_into().ok()?;
        Some(Self(octets))
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    #[inline]
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// The I/G bit: group addresses (multicast, and broadcast) have the lowest bit of the first
    /// octet set.
    #[inline]
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// An individual address: not multicast and not broadcast.
    #[inline]
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// The U/L bit: locally administered addresses (as on veth and tap devices).
    #[inline]
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// The multicast MAC an IPv4 multicast group maps to (RFC 1112 section 6.4:
    /// 01:00:5e + low 23 bits of the group); `None` if `addr` is not multicast.
    pub fn from_ipv4_multicast(addr: Ipv4Addr) -> Option<Self> {
        if !addr.is_multicast() {
            return None;
        }
        let o = addr.octets();
        Some(Self([0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]]))
    }

    /// The multicast MAC an IPv6 multicast group maps to (RFC 2464 section 7: 33:33 + low 32
    /// bits of the group); `None` if `addr` is not multicast.
    pub fn from_ipv6_multicast(addr: &Ipv6Addr) -> Option<Self> {
        if !addr.is_multicast() {
            return None;
        }
        let o = addr.octets();
        Some(Self([0x33, 0x33, o[12], o[13], o[14], o[15]]))
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EthernetAddress({self})")
    }
}

/// An EtherType. A newtype so unknown types pass through unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EtherType(pub u16);

impl EtherType {
    pub const IPV4: Self = Self(0x0800);
    pub const ARP: Self = Self(0x0806);
    /// Transparent Ethernet bridging, the GRE protocol type for L2 payloads.
    pub const TRANSPARENT_ETHERNET: Self = Self(0x6558);
    /// IEEE 802.1Q customer VLAN tag.
    pub const VLAN: Self = Self(0x8100);
    pub const IPV6: Self = Self(0x86dd);
    /// IEEE 802.1ad service VLAN tag (QinQ outer tag).
    pub const QINQ: Self = Self(0x88a8);

    /// True for the tag protocol identifiers that introduce a VLAN tag.
    #[inline]
    pub fn is_vlan_tag(self) -> bool {
        self == Self::VLAN || self == Self::QINQ
    }
}

impl fmt::Debug for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::IPV4 => f.write_str("EtherType(IPv4)"),
            Self::ARP => f.write_str("EtherType(ARP)"),
            Self::IPV6 => f.write_str("EtherType(IPv6)"),
            Self::VLAN => f.write_str("EtherType(VLAN)"),
            Self::QINQ => f.write_str("EtherType(QinQ)"),
            Self(other) => write!(f, "EtherType({other:#06x})"),
        }
    }
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#06x}", self.0)
    }
}

mod field {
    use super::Field;
    pub const DST: Field = 0..6;
    pub const SRC: Field = 6..12;
    pub const ETHERTYPE: usize = 12;
    pub const PAYLOAD: usize = 14;
}

/// A view of an Ethernet II frame (without FCS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Length of the untagged header.
    pub const HEADER_LEN: usize = field::PAYLOAD;

    /// Wraps a buffer without checking it; accessors panic if it is shorter than the header.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer, checking that it holds at least the 14-byte header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    #[inline]
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < Self::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn dst_addr(&self) -> EthernetAddress {
        EthernetAddress(read_array(self.buffer.as_ref(), field::DST))
    }

    #[inline]
    pub fn src_addr(&self) -> EthernetAddress {
        EthernetAddress(read_array(self.buffer.as_ref(), field::SRC))
    }

    /// The EtherType right after the addresses; a VLAN TPID if the frame is tagged.
    #[inline]
    pub fn ethertype(&self) -> EtherType {
        EtherType(read_u16(self.buffer.as_ref(), field::ETHERTYPE))
    }

    /// Everything after the untagged header (tags included, if any).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    #[inline]
    pub fn set_dst_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&addr.0);
    }

    #[inline]
    pub fn set_src_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&addr.0);
    }

    #[inline]
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE, ethertype.0);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// The fields of an untagged Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthernetRepr {
    pub src_addr: EthernetAddress,
    pub dst_addr: EthernetAddress,
    pub ethertype: EtherType,
}

impl EthernetRepr {
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<Self, WireError> {
        frame.check_len()?;
        Ok(Self {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        EthernetFrame::<&[u8]>::HEADER_LEN
    }

    /// Header plus `payload_len`.
    #[inline]
    pub fn buffer_len(&self, payload_len: usize) -> usize {
        self.header_len() + payload_len
    }

    /// Writes the header; the frame must be at least [`Self::header_len`] long.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_src_addr(self.src_addr);
        frame.set_dst_addr(self.dst_addr);
        frame.set_ethertype(self.ethertype);
    }
}

/// One 802.1Q tag: priority, drop eligibility and VLAN id, as packed into the 16-bit TCI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VlanTag {
    /// Priority code point (3 bits).
    pub pcp: u8,
    /// Drop eligible indicator.
    pub dei: bool,
    /// VLAN identifier (12 bits).
    pub vid: u16,
}

impl VlanTag {
    /// Length of one tag on the wire (TPID + TCI).
    pub const LEN: usize = 4;

    #[inline]
    pub fn from_tci(tci: u16) -> Self {
        Self {
            pcp: (tci >> 13) as u8,
            dei: tci & 0x1000 != 0,
            vid: tci & 0x0fff,
        }
    }

    #[inline]
    pub fn tci(&self) -> u16 {
        (u16::from(self.pcp & 0x7) << 13) | (u16::from(self.dei) << 12) | (self.vid & 0x0fff)
    }

    /// Writes TPID and TCI into the first four bytes of `buf`.
    pub fn emit(&self, tpid: EtherType, buf: &mut [u8]) -> Result<(), WireError> {
        if buf.len() < Self::LEN {
            return Err(WireError::BufferTooSmall);
        }
        write_u16(buf, 0, tpid.0);
        write_u16(buf, 2, self.tci());
        Ok(())
    }
}

/// What lies between the MAC addresses and the L3 header of a (possibly tagged) frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct L2Header {
    /// The EtherType after all tags: the L3 protocol.
    pub ethertype: EtherType,
    /// The first tag (the S-tag of a QinQ frame, or the only tag).
    pub outer_tag: Option<VlanTag>,
    /// The second tag of a double-tagged frame (the C-tag).
    pub inner_tag: Option<VlanTag>,
    /// Bytes from the start of the frame to the L3 header: 14, 18 or 22.
    pub header_len: usize,
}

impl L2Header {
    /// Parses the Ethernet header and up to two VLAN tags from the start of `frame`.
    ///
    /// The outer tag may use either TPID (0x8100 or 0x88a8); an inner tag must be 0x8100, as
    /// 802.1ad prescribes. A third tag is [`WireError::Unsupported`]: stacking that deep is not
    /// something a node-local router is handed, and refusing it keeps the parse bounded.
    pub fn parse(frame: &[u8]) -> Result<Self, WireError> {
        let eth = EthernetFrame::new_checked(frame)?;
        let mut ethertype = eth.ethertype();
        let mut header_len = EthernetFrame::<&[u8]>::HEADER_LEN;
        let mut tags = [None, None];
        for (depth, slot) in tags.iter_mut().enumerate() {
            let allowed = if depth == 0 {
                ethertype.is_vlan_tag()
            } else {
                ethertype == EtherType::VLAN
            };
            if !allowed {
                break;
            }
            // The tag's TCI sits where the EtherType would be; the next EtherType follows it.
            if frame.len() < header_len + VlanTag::LEN {
                return Err(WireError::Truncated);
            }
            *slot = Some(VlanTag::from_tci(read_u16(frame, header_len)));
            ethertype = EtherType(read_u16(frame, header_len + 2));
            header_len += VlanTag::LEN;
        }
        if ethertype.is_vlan_tag() {
            return Err(WireError::Unsupported);
        }
        Ok(Self {
            ethertype,
            outer_tag: tags[0],
            inner_tag: tags[1],
            header_len,
        })
    }

    /// The VLAN ids of the tags present, outer first.
    #[inline]
    pub fn vlan_ids(&self) -> (Option<u16>, Option<u16>) {
        (self.outer_tag.map(|t| t.vid), self.inner_tag.map(|t| t.vid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::hex;
    use proptest::prelude::*;

    #[test]
    fn address_classes() {
        let unicast = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
        assert!(unicast.is_unicast() && unicast.is_local() && !unicast.is_multicast());
        assert!(EthernetAddress::BROADCAST.is_broadcast());
        assert!(EthernetAddress::BROADCAST.is_multicast());
        assert_eq!(unicast.to_string(), "02:00:00:00:00:01");
        assert_eq!(EthernetAddress::from_bytes(&[1, 2, 3]), None);
    }

    #[test]
    fn multicast_mappings() {
        assert_eq!(
            EthernetAddress::from_ipv4_multicast(Ipv4Addr::new(239, 255, 0, 1)),
            Some(EthernetAddress([0x01, 0x00, 0x5e, 0x7f, 0x00, 0x01]))
        );
        assert_eq!(
            EthernetAddress::from_ipv4_multicast(Ipv4Addr::new(10, 0, 0, 1)),
            None
        );
        let solicited: Ipv6Addr = "ff02::1:ff00:1".parse().unwrap();
        assert_eq!(
            EthernetAddress::from_ipv6_multicast(&solicited),
            Some(EthernetAddress([0x33, 0x33, 0xff, 0x00, 0x00, 0x01]))
        );
        assert_eq!(
            EthernetAddress::from_ipv6_multicast(&Ipv6Addr::LOCALHOST),
            None
        );
    }

    #[test]
    fn frame_roundtrip() {
        let bytes = hex("ffffffffffff 020000000001 0806 aabb");
        let frame = EthernetFrame::new_checked(&bytes[..]).unwrap();
        let repr = EthernetRepr::parse(&frame).unwrap();
        assert_eq!(repr.ethertype, EtherType::ARP);
        assert!(repr.dst_addr.is_broadcast());
        assert_eq!(frame.payload(), &[0xaa, 0xbb]);
        let mut out = vec![0u8; repr.buffer_len(2)];
        let mut emitted = EthernetFrame::new_unchecked(&mut out[..]);
        repr.emit(&mut emitted);
        emitted.payload_mut().copy_from_slice(&[0xaa, 0xbb]);
        assert_eq!(out, bytes);
    }

    #[test]
    fn vlan_tags() {
        let untagged = hex("ffffffffffff 020000000001 0800");
        let l2 = L2Header::parse(&untagged).unwrap();
        assert_eq!(
            (l2.ethertype, l2.header_len, l2.vlan_ids()),
            (EtherType::IPV4, 14, (None, None))
        );

        // One 802.1Q tag: PCP 5, VID 100.
        let single = hex("ffffffffffff 020000000001 8100 a064 86dd");
        let l2 = L2Header::parse(&single).unwrap();
        assert_eq!((l2.ethertype, l2.header_len), (EtherType::IPV6, 18));
        assert_eq!(
            l2.outer_tag,
            Some(VlanTag {
                pcp: 5,
                dei: false,
                vid: 100
            })
        );

        // QinQ: S-tag 0x88a8 VID 10, C-tag 0x8100 VID 200.
        let double = hex("ffffffffffff 020000000001 88a8 000a 8100 00c8 0800");
        let l2 = L2Header::parse(&double).unwrap();
        assert_eq!((l2.ethertype, l2.header_len), (EtherType::IPV4, 22));
        assert_eq!(l2.vlan_ids(), (Some(10), Some(200)));

        let triple = hex("ffffffffffff 020000000001 88a8 000a 8100 00c8 8100 0001 0800");
        assert_eq!(L2Header::parse(&triple), Err(WireError::Unsupported));

        for bytes in [&untagged, &single, &double] {
            for len in 0..bytes.len() {
                assert!(L2Header::parse(&bytes[..len]).is_err());
            }
        }
        let tag = VlanTag {
            pcp: 7,
            dei: true,
            vid: 4094,
        };
        assert_eq!(VlanTag::from_tci(tag.tci()), tag);
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(frame) = EthernetFrame::new_checked(&data[..]) {
                let _ = EthernetRepr::parse(&frame);
                let _ = frame.payload();
            }
            let _ = L2Header::parse(&data);
        }
    }
}
