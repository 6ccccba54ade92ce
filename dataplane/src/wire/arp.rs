//! ARP for IPv4 over Ethernet (RFC 826).

use std::fmt;
use std::net::Ipv4Addr;

use super::bytes::{read_u16, write_u16};
use super::error::WireError;
use super::ethernet::{EtherType, EthernetAddress};

/// ARP hardware type for Ethernet.
pub const HTYPE_ETHERNET: u16 = 1;

/// The ARP opcode. A newtype so that unknown opcodes can still be reported and counted.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ArpOperation(pub u16);

impl ArpOperation {
    pub const REQUEST: Self = Self(1);
    pub const REPLY: Self = Self(2);
}

impl fmt::Debug for ArpOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::REQUEST => f.write_str("ArpOperation(Request)"),
            Self::REPLY => f.write_str("ArpOperation(Reply)"),
            Self(other) => write!(f, "ArpOperation({other})"),
        }
    }
}

mod field {
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    /// Start of the variable-length address block.
    pub const SHA: usize = 8;
}

/// A view of an ARP packet of any hardware/protocol type; the address accessors use the
/// lengths the packet declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Length of the fixed part before the addresses.
    pub const FIXED_LEN: usize = field::SHA;

    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the fixed part and that the four addresses of the declared lengths fit.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < field::SHA || len < self.header_len() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Fixed part plus two hardware and two protocol addresses.
    #[inline]
    pub fn header_len(&self) -> usize {
        field::SHA + 2 * (usize::from(self.hardware_len()) + usize::from(self.protocol_len()))
    }

    #[inline]
    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HTYPE)
    }

    #[inline]
    pub fn protocol_type(&self) -> EtherType {
        EtherType(read_u16(self.buffer.as_ref(), field::PTYPE))
    }

    #[inline]
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    #[inline]
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    #[inline]
    pub fn operation(&self) -> ArpOperation {
        ArpOperation(read_u16(self.buffer.as_ref(), field::OPER))
    }

    #[inline]
    fn hlen(&self) -> usize {
        usize::from(self.hardware_len())
    }

    #[inline]
    fn plen(&self) -> usize {
        usize::from(self.protocol_len())
    }

    #[inline]
    pub fn source_hardware_addr(&self) -> &[u8] {
        let start = field::SHA;
        &self.buffer.as_ref()[start..start + self.hlen()]
    }

    #[inline]
    pub fn source_protocol_addr(&self) -> &[u8] {
        let start = field::SHA + self.hlen();
        &self.buffer.as_ref()[start..start + self.plen()]
    }

    #[inline]
    pub fn target_hardware_addr(&self) -> &[u8] {
        let start = field::SHA + self.hlen() + self.plen();
        &self.buffer.as_ref()[start..start + self.hlen()]
    }

    #[inline]
    pub fn target_protocol_addr(&self) -> &[u8] {
        let start = field::SHA + 2 * self.hlen() + self.plen();
        &self.buffer.as_ref()[start..start + self.plen()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    #[inline]
    pub fn set_hardware_type(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::HTYPE, value);
    }

    #[inline]
    pub fn set_protocol_type(&mut self, value: EtherType) {
        write_u16(self.buffer.as_mut(), field::PTYPE, value.0);
    }

    #[inline]
    pub fn set_hardware_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::HLEN] = value;
    }

    #[inline]
    pub fn set_protocol_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::PLEN] = value;
    }

    #[inline]
    pub fn set_operation(&mut self, value: ArpOperation) {
        write_u16(self.buffer.as_mut(), field::OPER, value.0);
    }

    /// Writes an address at `start`; its length must match the declared one.
    #[inline]
    fn set_at(&mut self, start: usize, value: &[u8]) {
        self.buffer.as_mut()[start..start + value.len()].copy_from_slice(value);
    }

    #[inline]
    pub fn set_source_hardware_addr(&mut self, value: &[u8]) {
        self.set_at(field::SHA, value);
    }

    #[inline]
    pub fn set_source_protocol_addr(&mut self, value: &[u8]) {
        let start = field::SHA + self.hlen();
        self.set_at(start, value);
    }

    #[inline]
    pub fn set_target_hardware_addr(&mut self, value: &[u8]) {
        let start = field::SHA + self.hlen() + self.plen();
        self.set_at(start, value);
    }

    #[inline]
    pub fn set_target_protocol_addr(&mut self, value: &[u8]) {
        let start = field::SHA + 2 * self.hlen() + self.plen();
        self.set_at(start, value);
    }
}

/// An Ethernet/IPv4 ARP message, the only kind a node on an Ethernet IPv4 network resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpRepr {
    pub operation: ArpOperation,
    pub source_hardware_addr: EthernetAddress,
    pub source_protocol_addr: Ipv4Addr,
    pub target_hardware_addr: EthernetAddress,
    pub target_protocol_addr: Ipv4Addr,
}

impl ArpRepr {
    /// Length of an Ethernet/IPv4 ARP packet.
    pub const LEN: usize = 28;

    /// Parses an Ethernet/IPv4 ARP packet: hardware type 1 and protocol type 0x0800, else
    /// [`WireError::Unsupported`]; address lengths 6 and 4, else [`WireError::BadLength`].
    /// Opcodes other than request and reply are returned as-is for the caller to count.
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        if packet.hardware_type() != HTYPE_ETHERNET || packet.protocol_type() != EtherType::IPV4 {
            return Err(WireError::Unsupported);
        }
        if packet.hardware_len() != 6 || packet.protocol_len() != 4 {
            return Err(WireError::BadLength);
        }
        let mac = |b: &[u8]| EthernetAddress::from_bytes(b).ok_or(WireError::BadLength);
        let ip = |b: &[u8]| -> Result<Ipv4Addr, WireError> {
            let octets: [u8; 4] = b.try_into().map_err(|_| WireError::BadLength)?;
            Ok(Ipv4Addr::from(octets))
        };
        Ok(Self {
            operation: packet.operation(),
            source_hardware_addr: mac(packet.source_hardware_addr())?,
            source_protocol_addr: ip(packet.source_protocol_addr())?,
            target_hardware_addr: mac(packet.target_hardware_addr())?,
            target_protocol_addr: ip(packet.target_protocol_addr())?,
        })
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        Self::LEN
    }

    #[inline]
    pub fn buffer_len(&self) -> usize {
        Self::LEN
    }

    /// Writes the message; the packet must be at least [`Self::LEN`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        packet.set_hardware_type(HTYPE_ETHERNET);
        packet.set_protocol_type(EtherType::IPV4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(&self.source_hardware_addr.0);
        packet.set_source_protocol_addr(&self.source_protocol_addr.octets());
        packet.set_target_hardware_addr(&self.target_hardware_addr.0);
        packet.set_target_protocol_addr(&self.target_protocol_addr.octets());
    }

    /// The reply to this request, answering that `target_protocol_addr` is at `our_mac`.
    pub fn reply(&self, our_mac: EthernetAddress) -> Self {
        Self {
            operation: ArpOperation::REPLY,
            source_hardware_addr: our_mac,
            source_protocol_addr: self.target_protocol_addr,
            target_hardware_addr: self.source_hardware_addr,
            target_protocol_addr: self.source_protocol_addr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::EthernetFrame;
    use crate::wire::test_util::{assert_prefixes_rejected, hex};
    use proptest::prelude::*;

    /// A who-has 198.51.100.1 from 198.51.100.2, broadcast, as captured on a veth (frame
    /// padded to 60 bytes by the sender).
    const REQUEST_FRAME: &str = "ffffffffffff 02005e100002 0806
        0001 0800 06 04 0001 02005e100002 c6336402 000000000000 c6336401
        000000000000000000000000000000000000";

    #[test]
    fn parse_request() {
        let bytes = hex(REQUEST_FRAME);
        let frame = EthernetFrame::new_checked(&bytes[..]).unwrap();
        assert_eq!(frame.ethertype(), EtherType::ARP);
        let packet = ArpPacket::new_checked(frame.payload()).unwrap();
        let repr = ArpRepr::parse(&packet).unwrap();
        assert_eq!(repr.operation, ArpOperation::REQUEST);
        assert_eq!(repr.source_protocol_addr, Ipv4Addr::new(198, 51, 100, 2));
        assert_eq!(repr.target_protocol_addr, Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(repr.source_hardware_addr.to_string(), "02:00:5e:10:00:02");
        assert_eq!(repr.target_hardware_addr, EthernetAddress::ZERO);

        let mut out = [0u8; ArpRepr::LEN];
        repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
        assert_eq!(&out[..], &frame.payload()[..ArpRepr::LEN]);

        assert_prefixes_rejected(&frame.payload()[..ArpRepr::LEN], |b| {
            ArpRepr::parse(&ArpPacket::new_checked(b)?).map(|_| ())
        });
    }

    #[test]
    fn reply_roundtrip() {
        let bytes = hex(REQUEST_FRAME);
        let request = ArpRepr::parse(&ArpPacket::new_unchecked(&bytes[14..])).unwrap();
        let mac = EthernetAddress([0x02, 0, 0x5e, 0x10, 0, 1]);
        let reply = request.reply(mac);
        let mut out = [0u8; ArpRepr::LEN];
        reply.emit(&mut ArpPacket::new_unchecked(&mut out[..]));
        let parsed = ArpRepr::parse(&ArpPacket::new_checked(&out[..]).unwrap()).unwrap();
        assert_eq!(parsed, reply);
        assert_eq!(parsed.source_protocol_addr, Ipv4Addr::new(198, 51, 100, 1));
    }

    #[test]
    fn rejects_other_types() {
        let mut bytes = hex(REQUEST_FRAME)[14..42].to_vec();
        bytes[1] = 6; // IEEE 802 hardware type
        assert_eq!(
            ArpRepr::parse(&ArpPacket::new_checked(&bytes[..]).unwrap()),
            Err(WireError::Unsupported)
        );
        bytes[1] = 1;
        bytes[4] = 8; // hlen 8: the declared addresses no longer fit
        assert_eq!(
            ArpPacket::new_checked(&bytes[..]),
            Err(WireError::Truncated)
        );
        bytes[4] = 4;
        assert_eq!(
            ArpRepr::parse(&ArpPacket::new_checked(&bytes[..]).unwrap()),
            Err(WireError::BadLength)
        );
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(packet) = ArpPacket::new_checked(&data[..]) {
                let _ = ArpRepr::parse(&packet);
                let _ = packet.target_protocol_addr();
            }
        }
    }
}
