//! TCP segment headers (RFC 9293): fields, flags, options (MSS and window scale readable) and
//! the pseudo-header checksum for IPv4 and IPv6.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::{BitOr, BitOrAssign};

use super::bytes::{read_u16, read_u32, write_u16, write_u32};
use super::checksum;
use super::error::WireError;
use super::ip::{IpAddrPair, IpProtocol};

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
    pub const OPTIONS: usize = 20;
}

/// Option kinds this module interprets.
pub mod option_kind {
    pub const END: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WINDOW_SCALE: u8 = 3;
    pub const SACK_PERMITTED: u8 = 4;
    pub const TIMESTAMPS: u8 = 8;
}

/// The eight TCP control bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: Self = Self(0x01);
    pub const SYN: Self = Self(0x02);
    pub const RST: Self = Self(0x04);
    pub const PSH: Self = Self(0x08);
    pub const ACK: Self = Self(0x10);
    pub const URG: Self = Self(0x20);
    pub const ECE: Self = Self(0x40);
    pub const CWR: Self = Self(0x80);

    /// True if every bit of `other` is set.
    #[inline]
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if any bit of `other` is set.
    #[inline]
    pub fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }
}

impl BitOr for TcpFlags {
    type Output = Self;
    #[inline]
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for TcpFlags {
    #[inline]
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
        f.write_str("TcpFlags(")?;
        let mut first = true;
        for (bit, name) in NAMES.iter().enumerate() {
            if self.0 & (1 << bit) != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        f.write_str(")")
    }
}

/// One TCP option other than padding: its kind and the bytes after the length octet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOption<'a> {
    pub kind: u8,
    pub data: &'a [u8],
}

/// Iterates over the options of a header, skipping NOPs and stopping at End of Option List.
/// A malformed option yields one error and ends the iteration.
#[derive(Debug, Clone)]
pub struct TcpOptionIter<'a> {
    rest: &'a [u8],
}

impl<'a> TcpOptionIter<'a> {
    #[inline]
    pub fn new(options: &'a [u8]) -> Self {
        Self { rest: options }
    }
}

impl<'a> Iterator for TcpOptionIter<'a> {
    type Item = Result<TcpOption<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (&kind, after) = self.rest.split_first()?;
            match kind {
                option_kind::END => {
                    self.rest = &[];
                    return None;
                }
                option_kind::NOP => self.rest = after,
                _ => {
                    let len = after.first().map(|&l| usize::from(l));
                    match len {
                        Some(len) if len >= 2 && len <= self.rest.len() => {
                            let option = TcpOption {
                                kind,
                                data: &self.rest[2..len],
                            };
                            self.rest = &self.rest[len..];
                            return Some(Ok(option));
                        }
                        _ => {
                            self.rest = &[];
                            return Some(Err(WireError::BadOption));
                        }
                    }
                }
            }
        }
    }
}

/// A view of a TCP segment. The buffer must be exactly the segment (the IP payload), because
/// TCP has no length field of its own and the checksum covers every byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
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

    /// Checks the fixed header, data offset ≥ 5 and the options within the buffer.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < Self::MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = self.header_len();
        if header_len < Self::MIN_HEADER_LEN {
            return Err(WireError::BadHeaderLength);
        }
        if header_len > len {
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

    #[inline]
    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ)
    }

    #[inline]
    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK)
    }

    /// Header length in bytes (data offset × 4).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    #[inline]
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buffer.as_ref()[field::FLAGS])
    }

    #[inline]
    pub fn window_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WINDOW)
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    #[inline]
    pub fn urgent_ptr(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT)
    }

    /// The raw option bytes (possibly empty).
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS..self.header_len()]
    }

    #[inline]
    pub fn option_iter(&self) -> TcpOptionIter<'_> {
        TcpOptionIter::new(self.options())
    }

    /// The MSS option, if present and well formed (MSS clamping reads and rewrites it).
    pub fn mss(&self) -> Option<u16> {
        self.find_option(option_kind::MSS, 2)
            .map(|d| u16::from_be_bytes([d[0], d[1]]))
    }

    /// The window scale shift, if present and well formed.
    pub fn window_scale(&self) -> Option<u8> {
        self.find_option(option_kind::WINDOW_SCALE, 1).map(|d| d[0])
    }

    /// The data of the first option of `kind` whose data is exactly `len` bytes.
    fn find_option(&self, kind: u8, len: usize) -> Option<&[u8]> {
        self.option_iter()
            .map_while(Result::ok)
            .find(|o| o.kind == kind && o.data.len() == len)
            .map(|o| o.data)
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    fn compute_sum(&self, addrs: &IpAddrPair) -> u16 {
        let segment = self.buffer.as_ref();
        let len = u32::try_from(segment.len()).unwrap_or(u32::MAX);
        let pseudo = addrs.pseudo_header_sum(IpProtocol::TCP, len);
        checksum::combine(pseudo, checksum::sum(segment))
    }

    /// True if the checksum over pseudo-header and segment is valid.
    #[inline]
    pub fn verify_checksum(&self, addrs: &IpAddrPair) -> bool {
        self.compute_sum(addrs) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    #[inline]
    pub fn set_src_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, value);
    }

    #[inline]
    pub fn set_dst_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, value);
    }

    #[inline]
    pub fn set_seq_number(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ, value);
    }

    #[inline]
    pub fn set_ack_number(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::ACK, value);
    }

    /// Sets the data offset from a header length in bytes (a multiple of 4, 20..=60); the
    /// reserved bits are cleared.
    #[inline]
    pub fn set_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::DATA_OFFSET] = ((header_len / 4) as u8) << 4;
    }

    #[inline]
    pub fn set_flags(&mut self, value: TcpFlags) {
        self.buffer.as_mut()[field::FLAGS] = value.0;
    }

    #[inline]
    pub fn set_window_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::WINDOW, value);
    }

    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    #[inline]
    pub fn set_urgent_ptr(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT, value);
    }

    /// Computes and stores the checksum.
    pub fn fill_checksum(&mut self, addrs: &IpAddrPair) {
        self.set_checksum(0);
        let csum = checksum::finish(self.compute_sum(addrs));
        self.set_checksum(csum);
    }

    /// Rewrites the source port and patches the checksum (NAT).
    #[inline]
    pub fn rewrite_src_port(&mut self, value: u16) {
        let csum = checksum::update_port(self.checksum(), self.src_port(), value);
        self.set_src_port(value);
        self.set_checksum(csum);
    }

    /// Rewrites the destination port and patches the checksum (NAT).
    #[inline]
    pub fn rewrite_dst_port(&mut self, value: u16) {
        let csum = checksum::update_port(self.checksum(), self.dst_port(), value);
        self.set_dst_port(value);
        self.set_checksum(csum);
    }

    /// Patches the checksum for an IPv4 pseudo-header address change made in the IP header.
    #[inline]
    pub fn update_checksum_ipv4_addr(&mut self, old: Ipv4Addr, new: Ipv4Addr) {
        let csum = checksum::update_ipv4_addr(self.checksum(), old, new);
        self.set_checksum(csum);
    }

    /// Patches the checksum for an IPv6 pseudo-header address change made in the IP header.
    #[inline]
    pub fn update_checksum_ipv6_addr(&mut self, old: &Ipv6Addr, new: &Ipv6Addr) {
        let csum = checksum::update_ipv6_addr(self.checksum(), old, new);
        self.set_checksum(csum);
    }

    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[field::OPTIONS..end]
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
}

/// A TCP segment as a plain value, borrowing its payload. Of the options only MSS is
/// represented: a router generates segments (RSTs, probes), it does not negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpRepr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    pub ack_number: u32,
    pub flags: TcpFlags,
    pub window_len: u16,
    pub urgent_ptr: u16,
    pub max_seg_size: Option<u16>,
    pub payload: &'a [u8],
}

impl<'a> TcpRepr<'a> {
    /// Parses a segment, verifying its checksum and that all options are well formed.
    pub fn parse<T: AsRef<[u8]>>(
        packet: &'a TcpPacket<T>,
        addrs: &IpAddrPair,
    ) -> Result<Self, WireError> {
        packet.check_len()?;
        if !packet.verify_checksum(addrs) {
            return Err(WireError::BadChecksum);
        }
        let mut max_seg_size = None;
        for option in packet.option_iter() {
            let option = option?;
            if option.kind == option_kind::MSS {
                let [hi, lo] =
                    <[u8; 2]>::try_from(option.data).map_err(|_| WireError::BadOption)?;
                max_seg_size = Some(u16::from_be_bytes([hi, lo]));
            }
        }
        Ok(Self {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
            urgent_ptr: packet.urgent_ptr(),
            max_seg_size,
            payload: packet.payload(),
        })
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        TcpPacket::<&[u8]>::MIN_HEADER_LEN + if self.max_seg_size.is_some() { 4 } else { 0 }
    }

    #[inline]
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Writes header, MSS option and payload and fills the checksum. The packet buffer must be
    /// exactly [`Self::buffer_len`] bytes, since the checksum covers all of it.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut TcpPacket<T>,
        addrs: &IpAddrPair,
    ) -> Result<(), WireError> {
        match packet.buffer.as_ref().len() {
            len if len < self.buffer_len() => return Err(WireError::BufferTooSmall),
            len if len > self.buffer_len() => return Err(WireError::BadLength),
            _ => {}
        }
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.set_header_len(self.header_len());
        packet.set_flags(self.flags);
        packet.set_window_len(self.window_len);
        packet.set_urgent_ptr(self.urgent_ptr);
        if let Some(mss) = self.max_seg_size {
            let [hi, lo] = mss.to_be_bytes();
            packet
                .options_mut()
                .copy_from_slice(&[option_kind::MSS, 4, hi, lo]);
        }
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
            dst: Ipv4Addr::new(203, 0, 113, 1),
        }
    }

    fn v6() -> IpAddrPair {
        IpAddrPair::V6 {
            src: "2001:db8::1".parse().unwrap(),
            dst: "2001:db8::2".parse().unwrap(),
        }
    }

    /// A Linux SYN to port 80: MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
    /// Checksum 8d84 is for [`v4`], 9847 the same segment over [`v6`].
    const SYN: &str = "9c40 0050 6c2f1a3b 00000000 a002 faf0 8d84 0000
        020405b4 0402 080a 0a1b2c3d 00000000 01 030307";

    #[test]
    fn parse_syn() {
        let bytes = hex(SYN);
        let packet = TcpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.header_len(), 40);
        assert!(packet.flags().contains(TcpFlags::SYN));
        assert!(!packet.flags().intersects(TcpFlags::ACK | TcpFlags::RST));
        assert_eq!(packet.mss(), Some(1460));
        assert_eq!(packet.window_scale(), Some(7));
        let kinds: Vec<u8> = packet.option_iter().map(|o| o.unwrap().kind).collect();
        assert_eq!(kinds, [2, 4, 8, 3]);
        let repr = TcpRepr::parse(&packet, &v4()).unwrap();
        assert_eq!(
            (repr.src_port, repr.dst_port, repr.seq_number),
            (40000, 80, 0x6c2f1a3b)
        );
        assert_eq!((repr.window_len, repr.max_seg_size), (64240, Some(1460)));
        assert_eq!(TcpRepr::parse(&packet, &v6()), Err(WireError::BadChecksum));

        let mut v6_bytes = bytes.clone();
        v6_bytes[16..18].copy_from_slice(&[0x98, 0x47]);
        assert!(TcpPacket::new_checked(&v6_bytes[..])
            .unwrap()
            .verify_checksum(&v6()));

        assert_prefixes_rejected(&bytes, |b| TcpPacket::new_checked(b).map(|_| ()));
    }

    #[test]
    fn bad_offsets_and_options() {
        let mut bytes = hex(SYN);
        bytes[12] = 0x40;
        assert_eq!(
            TcpPacket::new_checked(&bytes[..]),
            Err(WireError::BadHeaderLength)
        );
        bytes[12] = 0xf0;
        assert_eq!(
            TcpPacket::new_checked(&bytes[..]),
            Err(WireError::Truncated)
        );

        let mut bytes = hex(SYN);
        bytes[21] = 0; // MSS option with length 0
        let mut packet = TcpPacket::new_checked(&mut bytes[..]).unwrap();
        packet.fill_checksum(&v4());
        assert_eq!(packet.mss(), None);
        assert_eq!(TcpRepr::parse(&packet, &v4()), Err(WireError::BadOption));
    }

    #[test]
    fn nat_rewrite_keeps_checksum_valid() {
        let mut bytes = hex(SYN);
        let mut packet = TcpPacket::new_checked(&mut bytes[..]).unwrap();
        packet.rewrite_dst_port(8080);
        let backend = Ipv4Addr::new(198, 18, 1, 10);
        packet.update_checksum_ipv4_addr(Ipv4Addr::new(203, 0, 113, 1), backend);
        let addrs = IpAddrPair::V4 {
            src: Ipv4Addr::new(198, 51, 100, 2),
            dst: backend,
        };
        assert!(packet.verify_checksum(&addrs));
    }

    #[test]
    fn emit_rst() {
        let repr = TcpRepr {
            src_port: 80,
            dst_port: 40000,
            seq_number: 0,
            ack_number: 0x6c2f1a3c,
            flags: TcpFlags::RST | TcpFlags::ACK,
            window_len: 0,
            urgent_ptr: 0,
            max_seg_size: None,
            payload: &[],
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), &v4())
            .unwrap();
        let packet = TcpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(TcpRepr::parse(&packet, &v4()).unwrap(), repr);
        assert_eq!(format!("{:?}", repr.flags), "TcpFlags(RST|ACK)");
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(packet) = TcpPacket::new_checked(&data[..]) {
                let _ = TcpRepr::parse(&packet, &v4());
                let _ = (packet.mss(), packet.window_scale(), packet.option_iter().count());
            }
        }

        #[test]
        fn roundtrip(
            ports in any::<(u16, u16)>(), seq in any::<u32>(), ack in any::<u32>(), flags in any::<u8>(),
            window in any::<u16>(), mss in proptest::option::of(any::<u16>()),
            payload in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let repr = TcpRepr {
                src_port: ports.0, dst_port: ports.1, seq_number: seq, ack_number: ack,
                flags: TcpFlags(flags), window_len: window, urgent_ptr: 0, max_seg_size: mss,
                payload: &payload,
            };
            for addrs in [v4(), v6()] {
                let mut buf = vec![0u8; repr.buffer_len()];
                repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), &addrs).unwrap();
                let packet = TcpPacket::new_checked(&buf[..]).unwrap();
                prop_assert_eq!(TcpRepr::parse(&packet, &addrs).unwrap(), repr);
            }
        }
    }
}
