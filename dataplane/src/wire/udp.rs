//! UDP (RFC 768), with the IPv4 "no checksum" rule and the IPv6 mandatory checksum
//! (RFC 8200 section 8.1).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::bytes::{read_u16, write_u16};
use super::checksum;
use super::error::WireError;
use super::ip::{IpAddrPair, IpFamily, IpProtocol};

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// A view of a UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub const HEADER_LEN: usize = 8;

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

    /// Checks the header and that the length field covers the header and fits the buffer.
    pub fn check_len(&self) -> Result<(), WireError> {
        let buf_len = self.buffer.as_ref().len();
        if buf_len < Self::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = usize::from(self.len());
        if len < Self::HEADER_LEN {
            return Err(WireError::BadLength);
        }
        if len > buf_len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: header plus payload.
    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The payload, up to the length field.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[Self::HEADER_LEN..usize::from(self.len())]
    }

    fn compute_sum(&self, addrs: &IpAddrPair) -> u16 {
        let datagram = &self.buffer.as_ref()[..usize::from(self.len())];
        let pseudo = addrs.pseudo_header_sum(IpProtocol::UDP, u32::from(self.len()));
        checksum::combine(pseudo, checksum::sum(datagram))
    }

    /// True if the checksum is valid. A zero checksum means "not computed" and is accepted
    /// over IPv4 only; IPv6 requires one.
    pub fn verify_checksum(&self, addrs: &IpAddrPair) -> bool {
        if self.checksum() == 0 {
            return addrs.family() == IpFamily::V4;
        }
        self.compute_sum(addrs) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    #[inline]
    pub fn set_src_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, value);
    }

    #[inline]
    pub fn set_dst_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, value);
    }

    #[inline]
    pub fn set_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, value);
    }

    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Computes and stores the checksum. A computed zero is sent as 0xffff, since zero on the
    /// wire means "no checksum".
    pub fn fill_checksum(&mut self, addrs: &IpAddrPair) {
        self.set_checksum(0);
        let csum = checksum::finish(self.compute_sum(addrs));
        self.set_checksum(if csum == 0 { 0xffff } else { csum });
    }

    /// Applies an incremental update unless the datagram carries no checksum (IPv4 zero), which
    /// must stay zero; a result of zero is stored as 0xffff.
    #[inline]
    fn patch_checksum(&mut self, update: impl FnOnce(u16) -> u16) {
        let old = self.checksum();
        if old == 0 {
            return;
        }
        let new = update(old);
        self.set_checksum(if new == 0 { 0xffff } else { new });
    }

    /// Rewrites the source port and patches the checksum (NAT).
    #[inline]
    pub fn rewrite_src_port(&mut self, value: u16) {
        let old = self.src_port();
        self.patch_checksum(|c| checksum::update_port(c, old, value));
        self.set_src_port(value);
    }

    /// Rewrites the destination port and patches the checksum (NAT).
    #[inline]
    pub fn rewrite_dst_port(&mut self, value: u16) {
        let old = self.dst_port();
        self.patch_checksum(|c| checksum::update_port(c, old, value));
        self.set_dst_port(value);
    }

    /// Patches the checksum for an IPv4 pseudo-header address change made in the IP header.
    #[inline]
    pub fn update_checksum_ipv4_addr(&mut self, old: Ipv4Addr, new: Ipv4Addr) {
        self.patch_checksum(|c| checksum::update_ipv4_addr(c, old, new));
    }

    /// Patches the checksum for an IPv6 pseudo-header address change made in the IP header.
    #[inline]
    pub fn update_checksum_ipv6_addr(&mut self, old: &Ipv6Addr, new: &Ipv6Addr) {
        self.patch_checksum(|c| checksum::update_ipv6_addr(c, old, new));
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[Self::HEADER_LEN..end]
    }
}

/// A UDP datagram as a plain value, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpRepr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

impl<'a> UdpRepr<'a> {
    /// Parses a datagram, verifying its checksum against the enclosing IP addresses.
    pub fn parse<T: AsRef<[u8]>>(
        packet: &'a UdpPacket<T>,
        addrs: &IpAddrPair,
    ) -> Result<Self, WireError> {
        packet.check_len()?;
        if !packet.verify_checksum(addrs) {
            return Err(WireError::BadChecksum);
        }
        Ok(Self {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload: packet.payload(),
        })
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        UdpPacket::<&[u8]>::HEADER_LEN
    }

    #[inline]
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Writes header and payload and fills the checksum.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut UdpPacket<T>,
        addrs: &IpAddrPair,
    ) -> Result<(), WireError> {
        let len = u16::try_from(self.buffer_len()).map_err(|_| WireError::BadLength)?;
        if packet.buffer.as_ref().len() < self.buffer_len() {
            return Err(WireError::BufferTooSmall);
        }
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(len);
        packet.payload_mut().copy_from_slice(self.payload);
        packet.fill_checksum(addrs);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_util::{assert_prefixes_rejected, hex};
    use proptest::prelude::*;

    fn v4() -> IpAddrPair {
        IpAddrPair::V4 {
            src: Ipv4Addr::new(198, 51, 100, 2),
            dst: Ipv4Addr::new(203, 0, 113, 53),
        }
    }

    fn v6() -> IpAddrPair {
        IpAddrPair::V6 {
            src: "2001:db8::1".parse().unwrap(),
            dst: "2001:db8::35".parse().unwrap(),
        }
    }

    /// A DNS query header (id 0xabcd, RD) from port 50000 to 53, checksum for [`v4`].
    const DNS: &str = "c350 0035 0014 2906 abcd 0100 0001 0000 0000 0000";

    #[test]
    fn parse_and_roundtrip() {
        let bytes = hex(DNS);
        let packet = UdpPacket::new_checked(&bytes[..]).unwrap();
        let repr = UdpRepr::parse(&packet, &v4()).unwrap();
        assert_eq!(
            (repr.src_port, repr.dst_port, repr.payload.len()),
            (50000, 53, 12)
        );
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut UdpPacket::new_unchecked(&mut out[..]), &v4())
            .unwrap();
        assert_eq!(out, bytes);
        assert_prefixes_rejected(&bytes, |b| UdpPacket::new_checked(b).map(|_| ()));
        assert_eq!(UdpRepr::parse(&packet, &v6()), Err(WireError::BadChecksum));
    }

    #[test]
    fn zero_checksum_rules() {
        let mut bytes = hex(DNS);
        bytes[6..8].fill(0);
        let packet = UdpPacket::new_checked(&bytes[..]).unwrap();
        assert!(packet.verify_checksum(&v4()));
        assert!(!packet.verify_checksum(&v6()));
        let mut packet = UdpPacket::new_checked(&mut bytes[..]).unwrap();
        packet.rewrite_dst_port(5353);
        assert_eq!(
            packet.checksum(),
            0,
            "no-checksum datagrams stay unchecksummed"
        );
    }

    #[test]
    fn length_checks() {
        let mut bytes = hex(DNS);
        bytes[5] = 4;
        assert_eq!(
            UdpPacket::new_checked(&bytes[..]),
            Err(WireError::BadLength)
        );
        bytes[5] = 0x40;
        assert_eq!(
            UdpPacket::new_checked(&bytes[..]),
            Err(WireError::Truncated)
        );
        // Trailing bytes past the length field are not payload.
        let mut long = hex(DNS);
        long.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            UdpPacket::new_checked(&long[..]).unwrap().payload().len(),
            12
        );
    }

    #[test]
    fn nat_rewrites_match_recompute() {
        let mut bytes = hex(DNS);
        let mut packet = UdpPacket::new_checked(&mut bytes[..]).unwrap();
        packet.rewrite_src_port(40000);
        let new_src = Ipv4Addr::new(198, 18, 0, 1);
        packet.update_checksum_ipv4_addr(Ipv4Addr::new(198, 51, 100, 2), new_src);
        let addrs = IpAddrPair::V4 {
            src: new_src,
            dst: Ipv4Addr::new(203, 0, 113, 53),
        };
        assert!(packet.verify_checksum(&addrs));
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(packet) = UdpPacket::new_checked(&data[..]) {
                let _ = UdpRepr::parse(&packet, &v4());
                let _ = UdpRepr::parse(&packet, &v6());
            }
        }

        #[test]
        fn roundtrip(src in any::<u16>(), dst in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..40)) {
            for addrs in [v4(), v6()] {
                let repr = UdpRepr { src_port: src, dst_port: dst, payload: &payload };
                let mut buf = vec![0u8; repr.buffer_len()];
                repr.emit(&mut UdpPacket::new_unchecked(&mut buf[..]), &addrs).unwrap();
                let packet = UdpPacket::new_checked(&buf[..]).unwrap();
                prop_assert_eq!(UdpRepr::parse(&packet, &addrs).unwrap(), repr);
            }
        }
    }
}
