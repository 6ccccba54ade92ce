//! GRE (RFC 2784) with the key and sequence number extensions (RFC 2890).
//!
//! Only version 0 is accepted, and packets using the RFC 1701 routing, strict source route or
//! recursion fields are refused, as RFC 2784 section 2.3 tells a non-RFC 1701 receiver to do.

use super::bytes::{read_u16, read_u32, write_u16, write_u32};
use super::checksum;
use super::error::WireError;
use super::ethernet::EtherType;

const FLAG_CHECKSUM: u16 = 0x8000;
const FLAG_ROUTING: u16 = 0x4000;
const FLAG_KEY: u16 = 0x2000;
const FLAG_SEQUENCE: u16 = 0x1000;
const FLAG_STRICT_ROUTE: u16 = 0x0800;
const RECURSION_MASK: u16 = 0x0700;
const VERSION_MASK: u16 = 0x0007;

mod field {
    pub const FLAGS_VERSION: usize = 0;
    pub const PROTOCOL: usize = 2;
    pub const OPTIONAL: usize = 4;
}

/// A view of a GRE packet: header and encapsulated payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrePacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> GrePacket<T> {
    /// Length of the base header (no optional fields).
    pub const MIN_HEADER_LEN: usize = 4;

    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks version 0, no RFC 1701 routing/recursion fields, and that the optional fields
    /// the flags announce fit in the buffer.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < Self::MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let flags = self.flags_version();
        if flags & VERSION_MASK != 0 {
            return Err(WireError::BadVersion);
        }
        if flags & (FLAG_ROUTING | FLAG_STRICT_ROUTE | RECURSION_MASK) != 0 {
            return Err(WireError::Unsupported);
        }
        if self.header_len() > len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn flags_version(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FLAGS_VERSION)
    }

    #[inline]
    pub fn checksum_present(&self) -> bool {
        self.flags_version() & FLAG_CHECKSUM != 0
    }

    #[inline]
    pub fn key_present(&self) -> bool {
        self.flags_version() & FLAG_KEY != 0
    }

    #[inline]
    pub fn sequence_present(&self) -> bool {
        self.flags_version() & FLAG_SEQUENCE != 0
    }

    #[inline]
    pub fn version(&self) -> u8 {
        (self.flags_version() & VERSION_MASK) as u8
    }

    /// The EtherType of the payload (0x0800, 0x86dd, 0x6558 for Ethernet, ...).
    #[inline]
    pub fn protocol_type(&self) -> EtherType {
        EtherType(read_u16(self.buffer.as_ref(), field::PROTOCOL))
    }

    /// Base header plus 4 bytes for each of checksum(+reserved), key and sequence number.
    #[inline]
    pub fn header_len(&self) -> usize {
        Self::MIN_HEADER_LEN
            + 4 * (usize::from(self.checksum_present())
                + usize::from(self.key_present())
                + usize::from(self.sequence_present()))
    }

    #[inline]
    fn key_offset(&self) -> usize {
        field::OPTIONAL + 4 * usize::from(self.checksum_present())
    }

    #[inline]
    fn sequence_offset(&self) -> usize {
        self.key_offset() + 4 * usize::from(self.key_present())
    }

    #[inline]
    pub fn checksum(&self) -> Option<u16> {
        self.checksum_present()
            .then(|| read_u16(self.buffer.as_ref(), field::OPTIONAL))
    }

    #[inline]
    pub fn key(&self) -> Option<u32> {
        self.key_present()
            .then(|| read_u32(self.buffer.as_ref(), self.key_offset()))
    }

    #[inline]
    pub fn sequence_number(&self) -> Option<u32> {
        self.sequence_present()
            .then(|| read_u32(self.buffer.as_ref(), self.sequence_offset()))
    }

    /// True if there is no checksum, or it is correct over header and payload.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        !self.checksum_present() || checksum::verify(self.buffer.as_ref())
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> GrePacket<T> {
    /// Sets the C, K and S flags, clearing everything else (version 0). Set these first: the
    /// offsets of the optional fields follow from them.
    #[inline]
    pub fn set_flags(&mut self, checksum: bool, key: bool, sequence: bool) {
        let mut value = 0;
        if checksum {
            value |= FLAG_CHECKSUM;
        }
        if key {
            value |= FLAG_KEY;
        }
        if sequence {
            value |= FLAG_SEQUENCE;
        }
        write_u16(self.buffer.as_mut(), field::FLAGS_VERSION, value);
    }

    #[inline]
    pub fn set_protocol_type(&mut self, value: EtherType) {
        write_u16(self.buffer.as_mut(), field::PROTOCOL, value.0);
    }

    /// Sets the key; the K flag must be set.
    #[inline]
    pub fn set_key(&mut self, value: u32) {
        let at = self.key_offset();
        write_u32(self.buffer.as_mut(), at, value);
    }

    /// Sets the sequence number; the S flag must be set.
    #[inline]
    pub fn set_sequence_number(&mut self, value: u32) {
        let at = self.sequence_offset();
        write_u32(self.buffer.as_mut(), at, value);
    }

    /// Computes the checksum over header and payload, if the C flag is set.
    pub fn fill_checksum(&mut self) {
        if !self.checksum_present() {
            return;
        }
        let buf = self.buffer.as_mut();
        buf[field::OPTIONAL..field::OPTIONAL + 4].fill(0);
        let csum = checksum::checksum(buf);
        write_u16(buf, field::OPTIONAL, csum);
    }

    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
}

/// A GRE header as a plain value. The payload is not part of it: tunnel payloads are written
/// in place by the encapsulating node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GreRepr {
    pub protocol_type: EtherType,
    pub checksum: bool,
    pub key: Option<u32>,
    pub sequence_number: Option<u32>,
}

impl GreRepr {
    /// Parses the header, verifying the checksum when present.
    pub fn parse<T: AsRef<[u8]>>(packet: &GrePacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(WireError::BadChecksum);
        }
        Ok(Self {
            protocol_type: packet.protocol_type(),
            checksum: packet.checksum_present(),
            key: packet.key(),
            sequence_number: packet.sequence_number(),
        })
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        GrePacket::<&[u8]>::MIN_HEADER_LEN
            + 4 * (usize::from(self.checksum)
                + usize::from(self.key.is_some())
                + usize::from(self.sequence_number.is_some()))
    }

    #[inline]
    pub fn buffer_len(&self, payload_len: usize) -> usize {
        self.header_len() + payload_len
    }

    /// Writes the header. With `checksum` set, write the payload next and then call
    /// [`GrePacket::fill_checksum`], since the checksum covers it.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut GrePacket<T>,
    ) -> Result<(), WireError> {
        if packet.buffer.as_ref().len() < self.header_len() {
            return Err(WireError::BufferTooSmall);
        }
        packet.set_flags(
            self.checksum,
            self.key.is_some(),
            self.sequence_number.is_some(),
        );
        packet.set_protocol_type(self.protocol_type);
        if self.checksum {
            packet.buffer.as_mut()[field::OPTIONAL..field::OPTIONAL + 4].fill(0);
        }
        if let Some(key) = self.key {
            packet.set_key(key);
        }
        if let Some(seq) = self.sequence_number {
            packet.set_sequence_number(seq);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::Ipv4Packet;
    use crate::wire::test_util::{assert_prefixes_rejected, hex};
    use proptest::prelude::*;

    /// GRE with key 100 and sequence number 1 carrying the ICMP echo used in the IPv4 tests.
    const GRE_KEY_SEQ: &str = "3000 0800 00000064 00000001
        4500 0024 1c46 4000 4001 b85b c6336402 cb007101
        0800 2c15 1234 0001 7377 6974 6368 7961";

    #[test]
    fn parse_key_and_sequence() {
        let bytes = hex(GRE_KEY_SEQ);
        let packet = GrePacket::new_checked(&bytes[..]).unwrap();
        let repr = GreRepr::parse(&packet).unwrap();
        assert_eq!(
            repr,
            GreRepr {
                protocol_type: EtherType::IPV4,
                checksum: false,
                key: Some(100),
                sequence_number: Some(1),
            }
        );
        assert_eq!(packet.header_len(), 12);
        assert!(Ipv4Packet::new_checked(packet.payload())
            .unwrap()
            .verify_checksum());

        let mut out = vec![0u8; repr.buffer_len(packet.payload().len())];
        let mut emitted = GrePacket::new_unchecked(&mut out[..]);
        repr.emit(&mut emitted).unwrap();
        emitted.payload_mut().copy_from_slice(packet.payload());
        assert_eq!(out, bytes);
        assert_prefixes_rejected(&bytes[..12], |b| GrePacket::new_checked(b).map(|_| ()));
    }

    #[test]
    fn checksum_roundtrip() {
        let inner = hex(GRE_KEY_SEQ)[12..].to_vec();
        let repr = GreRepr {
            protocol_type: EtherType::IPV4,
            checksum: true,
            key: Some(0xdead_beef),
            sequence_number: None,
        };
        let mut out = vec![0u8; repr.buffer_len(inner.len())];
        let mut packet = GrePacket::new_unchecked(&mut out[..]);
        repr.emit(&mut packet).unwrap();
        packet.payload_mut().copy_from_slice(&inner);
        packet.fill_checksum();
        assert_eq!(&out[..2], &[0xa0, 0x00]);
        let packet = GrePacket::new_checked(&out[..]).unwrap();
        assert_eq!(GreRepr::parse(&packet).unwrap(), repr);
        let mut corrupt = out.clone();
        corrupt[20] ^= 1;
        let packet = GrePacket::new_checked(&corrupt[..]).unwrap();
        assert_eq!(GreRepr::parse(&packet), Err(WireError::BadChecksum));
    }

    #[test]
    fn rejects_versions_and_routing() {
        assert_eq!(
            GrePacket::new_checked(&hex("0001 880b")[..]),
            Err(WireError::BadVersion)
        );
        assert_eq!(
            GrePacket::new_checked(&hex("4000 0800 0000 0000")[..]),
            Err(WireError::Unsupported)
        );
        assert_eq!(
            GrePacket::new_checked(&hex("0100 0800")[..]),
            Err(WireError::Unsupported)
        );
        assert!(GrePacket::new_checked(&hex("0000 86dd")[..]).is_ok());
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(packet) = GrePacket::new_checked(&data[..]) {
                let _ = GreRepr::parse(&packet);
                let _ = (packet.key(), packet.sequence_number(), packet.payload());
            }
        }
    }
}
