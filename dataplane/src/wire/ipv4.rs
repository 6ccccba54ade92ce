//! IPv4 headers (RFC 791), with the router's in-place operations: TTL decrement with an
//! incremental checksum update (RFC 1624) and fragment inspection.

use std::net::Ipv4Addr;

use super::bytes::{read_array, read_u16, write_u16, Field};
use super::checksum;
use super::error::WireError;
pub use super::ip::IpProtocol;

mod field {
    use super::Field;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Length of a header without options.
    pub const MIN_HEADER_LEN: usize = 20;

    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after [`Self::check_len`].
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks version 4, IHL ≥ 5, the header within the buffer, and total length between the
    /// header length and the buffer length. A buffer longer than the total length is fine
    /// (Ethernet pads short frames); [`Self::payload`] stops at the total length.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < Self::MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != 4 {
            return Err(WireError::BadVersion);
        }
        let header_len = self.header_len();
        if header_len < Self::MIN_HEADER_LEN {
            return Err(WireError::BadHeaderLength);
        }
        if header_len > len {
            return Err(WireError::Truncated);
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(WireError::BadTotalLength);
        }
        if total_len > len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    #[inline]
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    #[inline]
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    #[inline]
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TOTAL_LEN)
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    #[inline]
    fn flags_frag(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FLAGS_FRAG)
    }

    #[inline]
    pub fn dont_fragment(&self) -> bool {
        self.flags_frag() & FLAG_DF != 0
    }

    #[inline]
    pub fn more_fragments(&self) -> bool {
        self.flags_frag() & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    #[inline]
    pub fn fragment_offset(&self) -> u16 {
        (self.flags_frag() & FRAG_OFFSET_MASK) << 3
    }

    /// True for any fragment of a fragmented datagram, first, middle or last.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.flags_frag() & (FLAG_MF | FRAG_OFFSET_MASK) != 0
    }

    /// True for the first fragment of a fragmented datagram (offset 0 with MF set). Only it
    /// carries the L4 header; an unfragmented packet is not a "first fragment".
    #[inline]
    pub fn is_first_fragment(&self) -> bool {
        self.flags_frag() & (FLAG_MF | FRAG_OFFSET_MASK) == FLAG_MF
    }

    /// True if the payload starts with the L4 header: unfragmented or first fragment.
    #[inline]
    pub fn has_l4_header(&self) -> bool {
        self.flags_frag() & FRAG_OFFSET_MASK == 0
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    #[inline]
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::PROTOCOL])
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(read_array::<4>(self.buffer.as_ref(), field::SRC))
    }

    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(read_array::<4>(self.buffer.as_ref(), field::DST))
    }

    /// The option bytes between the fixed header and the payload (possibly empty).
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::MIN_HEADER_LEN..self.header_len()]
    }

    /// True if the header checksum is correct.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        let header = &self.buffer.as_ref()[..self.header_len()];
        match <&[u8; 20]>::try_from(header) {
            Ok(plain) => checksum::ipv4_header_ok(plain),
            Err(_) => checksum::verify(header),
        }
    }

    /// The bytes from the end of the header to the total length (excluding link padding).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }

    /// The whole datagram, header included, without link-layer padding.
    #[inline]
    pub fn datagram(&self) -> &[u8] {
        &self.buffer.as_ref()[..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    #[inline]
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) as u8 & 0x0f);
    }

    #[inline]
    pub fn set_dscp_ecn(&mut self, dscp: u8, ecn: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = (dscp << 2) | (ecn & 0x03);
    }

    #[inline]
    pub fn set_total_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::TOTAL_LEN, value);
    }

    #[inline]
    pub fn set_ident(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, value);
    }

    /// Sets DF, MF and the fragment offset (in bytes, a multiple of 8).
    #[inline]
    pub fn set_fragment(&mut self, dont_fragment: bool, more_fragments: bool, offset: u16) {
        let mut value = (offset >> 3) & FRAG_OFFSET_MASK;
        if dont_fragment {
            value |= FLAG_DF;
        }
        if more_fragments {
            value |= FLAG_MF;
        }
        write_u16(self.buffer.as_mut(), field::FLAGS_FRAG, value);
    }

    #[inline]
    pub fn set_ttl(&mut self, value: u8) {
        self.buffer.as_mut()[field::TTL] = value;
    }

    #[inline]
    pub fn set_protocol(&mut self, value: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = value.0;
    }

    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Rewrites the source address and patches the header checksum incrementally (SNAT).
    /// L4 checksums covering the address must be patched separately.
    #[inline]
    pub fn set_src_addr(&mut self, value: Ipv4Addr) {
        let csum = checksum::update_ipv4_addr(self.checksum(), self.src_addr(), value);
        self.buffer.as_mut()[field::SRC].copy_from_slice(&value.octets());
        self.set_checksum(csum);
    }

    /// Rewrites the destination address and patches the header checksum incrementally (DNAT).
    #[inline]
    pub fn set_dst_addr(&mut self, value: Ipv4Addr) {
        let csum = checksum::update_ipv4_addr(self.checksum(), self.dst_addr(), value);
        self.buffer.as_mut()[field::DST].copy_from_slice(&value.octets());
        self.set_checksum(csum);
    }

    /// Recomputes the header checksum from scratch.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let csum = checksum::checksum(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(csum);
    }

    /// Decrements the TTL, patching the checksum with RFC 1624 instead of recomputing it, and
    /// returns the new TTL. A TTL already at zero is left alone and 0 is returned; a router
    /// checks for TTL ≤ 1 *before* forwarding and sends Time Exceeded instead.
    #[inline]
    pub fn decrement_ttl(&mut self) -> u8 {
        let ttl = self.ttl();
        if ttl == 0 {
            return 0;
        }
        let csum = checksum::update_ttl_decrement(self.checksum());
        self.set_ttl(ttl - 1);
        self.set_checksum(csum);
        ttl - 1
    }

    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[Self::MIN_HEADER_LEN..end]
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_len(), usize::from(self.total_len()));
        &mut self.buffer.as_mut()[start..end]
    }
}

/// The fields of an IPv4 header a router reasons about. Options are not represented: `parse`
/// skips them and `emit` writes a 20-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub protocol: IpProtocol,
    pub payload_len: usize,
    pub ttl: u8,
    pub dscp: u8,
    pub ecn: u8,
    pub ident: u16,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// In bytes.
    pub fragment_offset: u16,
}

impl Ipv4Repr {
    /// Parses a checked packet, verifying the header checksum.
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(WireError::BadChecksum);
        }
        Ok(Self {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: packet.payload().len(),
            ttl: packet.ttl(),
            dscp: packet.dscp(),
            ecn: packet.ecn(),
            ident: packet.ident(),
            dont_fragment: packet.dont_fragment(),
            more_fragments: packet.more_fragments(),
            fragment_offset: packet.fragment_offset(),
        })
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        Ipv4Packet::<&[u8]>::MIN_HEADER_LEN
    }

    #[inline]
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len
    }

    /// Writes a 20-byte header with a correct checksum. Fails if the packet is shorter than the
    /// header or the total length does not fit in 16 bits.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Ipv4Packet<T>,
    ) -> Result<(), WireError> {
        let total_len = u16::try_from(self.buffer_len()).map_err(|_| WireError::BadTotalLength)?;
        if packet.buffer.as_ref().len() < self.header_len() {
            return Err(WireError::BufferTooSmall);
        }
        packet.set_version_and_header_len(self.header_len());
        packet.set_dscp_ecn(self.dscp, self.ecn);
        packet.set_total_len(total_len);
        packet.set_ident(self.ident);
        packet.set_fragment(
            self.dont_fragment,
            self.more_fragments,
            self.fragment_offset,
        );
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        let buf = packet.buffer.as_mut();
        buf[field::SRC].copy_from_slice(&self.src_addr.octets());
        buf[field::DST].copy_from_slice(&self.dst_addr.octets());
        packet.fill_checksum();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{assert_prefixes_rejected, hex};
    use proptest::prelude::*;

    /// ICMP echo request 198.51.100.2 → 203.0.113.1, TTL 64, DF, 8 bytes of data.
    pub(crate) const ICMP_ECHO: &str = "4500 0024 1c46 4000 4001 b85b c6336402 cb007101
        0800 2c15 1234 0001 7377 6974 6368 7961";

    #[test]
    fn parse_echo_request() {
        let bytes = hex(ICMP_ECHO);
        let packet = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert!(packet.verify_checksum());
        let repr = Ipv4Repr::parse(&packet).unwrap();
        assert_eq!(repr.src_addr, Ipv4Addr::new(198, 51, 100, 2));
        assert_eq!(repr.dst_addr, Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!(repr.protocol, IpProtocol::ICMP);
        assert_eq!((repr.ttl, repr.payload_len, repr.ident), (64, 16, 0x1c46));
        assert!(repr.dont_fragment && !packet.is_fragment() && packet.has_l4_header());
        assert!(packet.options().is_empty());

        let mut out = vec![0u8; repr.buffer_len()];
        let mut emitted = Ipv4Packet::new_unchecked(&mut out[..]);
        repr.emit(&mut emitted).unwrap();
        emitted.payload_mut().copy_from_slice(packet.payload());
        assert_eq!(out, bytes);

        assert_prefixes_rejected(&bytes, |b| Ipv4Packet::new_checked(b).map(|_| ()));
    }

    #[test]
    fn header_checks() {
        let good = hex(ICMP_ECHO);
        let mut b = good.clone();
        b[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&b[..]), Err(WireError::BadVersion));
        b[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]),
            Err(WireError::BadHeaderLength)
        );
        b[0] = 0x4f; // 60-byte header in a 36-byte buffer
        assert_eq!(Ipv4Packet::new_checked(&b[..]), Err(WireError::Truncated));
        let mut b = good.clone();
        b[3] = 0x10;
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]),
            Err(WireError::BadTotalLength)
        );
        let mut b = good.clone();
        b[12] ^= 1;
        let packet = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&packet), Err(WireError::BadChecksum));
        // Ethernet padding after the datagram is excluded from the payload.
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 10]);
        let packet = Ipv4Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(packet.payload().len(), 16);
        assert_eq!(packet.datagram(), &good[..]);
    }

    #[test]
    fn options_are_skipped() {
        // IHL 6 with a router-alert option (RFC 2113), protocol IGMP.
        let mut bytes =
            hex("4600 0020 0000 0000 0102 0000 c6336402 e0000016 94040000 1122 3344 5566 7788");
        let mut packet = Ipv4Packet::new_checked(&mut bytes[..]).unwrap();
        packet.fill_checksum();
        assert_eq!(packet.options(), &[0x94, 0x04, 0x00, 0x00]);
        assert_eq!(packet.payload().len(), 8);
        let repr = Ipv4Repr::parse(&packet).unwrap();
        assert_eq!((repr.protocol, repr.payload_len), (IpProtocol::IGMP, 8));
    }

    #[test]
    fn ttl_and_nat_rewrites_keep_checksum() {
        let mut bytes = hex(ICMP_ECHO);
        let mut packet = Ipv4Packet::new_checked(&mut bytes[..]).unwrap();
        assert_eq!(packet.decrement_ttl(), 63);
        assert!(packet.verify_checksum());
        packet.set_src_addr(Ipv4Addr::new(198, 18, 0, 9));
        packet.set_dst_addr(Ipv4Addr::new(198, 19, 255, 254));
        assert!(packet.verify_checksum());
        let patched = packet.checksum();
        packet.fill_checksum();
        assert_eq!(packet.checksum(), patched);
        packet.set_ttl(1);
        packet.fill_checksum();
        assert_eq!(packet.decrement_ttl(), 0);
        assert_eq!(packet.decrement_ttl(), 0);
        assert!(packet.verify_checksum());
    }

    #[test]
    fn fragments() {
        let mut bytes = hex(ICMP_ECHO);
        let mut packet = Ipv4Packet::new_checked(&mut bytes[..]).unwrap();
        packet.set_fragment(false, true, 0);
        assert!(packet.is_fragment() && packet.is_first_fragment() && packet.has_l4_header());
        packet.set_fragment(false, true, 1480);
        assert!(packet.is_fragment() && !packet.is_first_fragment() && !packet.has_l4_header());
        assert_eq!(packet.fragment_offset(), 1480);
        packet.set_fragment(false, false, 2960);
        assert!(packet.is_fragment() && !packet.more_fragments());
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(packet) = Ipv4Packet::new_checked(&data[..]) {
                let _ = Ipv4Repr::parse(&packet);
                let _ = (packet.payload(), packet.options(), packet.verify_checksum());
            }
        }

        #[test]
        fn repr_roundtrip(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), proto in any::<u8>(),
            payload_len in 0usize..64, ttl in any::<u8>(), dscp in 0u8..64, ecn in 0u8..4,
            ident in any::<u16>(), df in any::<bool>(), mf in any::<bool>(), off in 0u16..8192,
        ) {
            let repr = Ipv4Repr {
                src_addr: src.into(), dst_addr: dst.into(), protocol: IpProtocol(proto),
                payload_len, ttl, dscp, ecn, ident, dont_fragment: df, more_fragments: mf,
                fragment_offset: off << 3,
            };
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..])).unwrap();
            let parsed = Ipv4Repr::parse(&Ipv4Packet::new_checked(&buf[..]).unwrap()).unwrap();
            prop_assert_eq!(parsed, repr);
        }
    }
}
