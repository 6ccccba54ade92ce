//! ICMP for IPv4 (RFC 792): echo, the error messages a router sends, and a builder for those
//! errors that quotes the offending datagram as RFC 1812 section 4.3.2.3 asks.

use std::fmt;
use std::net::Ipv4Addr;

use super::bytes::{read_array, read_u16, write_u16};
use super::checksum;
use super::error::WireError;
use super::ip::IpProtocol;
use super::ipv4::Ipv4Packet;

/// The ICMP type field.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Icmpv4Message(pub u8);

impl Icmpv4Message {
    pub const ECHO_REPLY: Self = Self(0);
    pub const DST_UNREACHABLE: Self = Self(3);
    pub const SOURCE_QUENCH: Self = Self(4);
    pub const REDIRECT: Self = Self(5);
    pub const ECHO_REQUEST: Self = Self(8);
    /// Router advertisement (RFC 1256).
    pub const ROUTER_ADVERT: Self = Self(9);
    /// Router solicitation (RFC 1256).
    pub const ROUTER_SOLICIT: Self = Self(10);
    pub const TIME_EXCEEDED: Self = Self(11);
    pub const PARAM_PROBLEM: Self = Self(12);
    pub const ADDRESS_MASK_REQUEST: Self = Self(17);
    pub const ADDRESS_MASK_REPLY: Self = Self(18);

    /// True for the error messages, to which no ICMP error may be sent in reply.
    #[inline]
    pub fn is_error(self) -> bool {
        matches!(self.0, 3 | 4 | 5 | 11 | 12)
    }
}

impl fmt::Debug for Icmpv4Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Icmpv4Message({})", self.0)
    }
}

/// Codes of Destination Unreachable (RFC 792, RFC 1122, RFC 1812).
pub mod unreachable_code {
    pub const NET: u8 = 0;
    pub const HOST: u8 = 1;
    pub const PROTOCOL: u8 = 2;
    pub const PORT: u8 = 3;
    /// "Fragmentation needed and DF set": carries the next-hop MTU (RFC 1191).
    pub const FRAG_NEEDED: u8 = 4;
    pub const SOURCE_ROUTE_FAILED: u8 = 5;
    pub const NET_UNKNOWN: u8 = 6;
    pub const HOST_UNKNOWN: u8 = 7;
    pub const ADMIN_PROHIBITED: u8 = 13;
}

/// Codes of Time Exceeded.
pub mod time_exceeded_code {
    pub const TTL: u8 = 0;
    pub const REASSEMBLY: u8 = 1;
}

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const REST: usize = 4;
    pub const DATA: usize = 8;
}

/// A view of an ICMPv4 message. The buffer should be exactly the message (the IP payload):
/// the checksum covers all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Type, code, checksum and the four type-specific bytes.
    pub const HEADER_LEN: usize = 8;

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
    pub fn msg_type(&self) -> Icmpv4Message {
        Icmpv4Message(self.buffer.as_ref()[field::TYPE])
    }

    #[inline]
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The four type-specific bytes after the checksum.
    #[inline]
    pub fn rest_of_header(&self) -> [u8; 4] {
        read_array(self.buffer.as_ref(), field::REST..field::DATA)
    }

    #[inline]
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::REST)
    }

    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::REST + 2)
    }

    /// Next-hop MTU of a "fragmentation needed" message (RFC 1191 section 4).
    #[inline]
    pub fn next_hop_mtu(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::REST + 2)
    }

    /// The octet a Parameter Problem points at.
    #[inline]
    pub fn pointer(&self) -> u8 {
        self.buffer.as_ref()[field::REST]
    }

    /// The gateway of a Redirect.
    #[inline]
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.rest_of_header())
    }

    /// Echo data, or the quoted datagram of an error message.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA..]
    }

    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(self.buffer.as_ref())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    #[inline]
    pub fn set_msg_type(&mut self, value: Icmpv4Message) {
        self.buffer.as_mut()[field::TYPE] = value.0;
    }

    #[inline]
    pub fn set_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    #[inline]
    pub fn set_rest_of_header(&mut self, value: [u8; 4]) {
        self.buffer.as_mut()[field::REST..field::DATA].copy_from_slice(&value);
    }

    #[inline]
    pub fn set_echo_ident(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::REST, value);
    }

    #[inline]
    pub fn set_echo_seq_no(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::REST + 2, value);
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA..]
    }

    /// Computes the checksum over the whole buffer and stores it.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let csum = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(csum);
    }
}

/// An ICMPv4 message as a plain value, borrowing echo data or the quoted datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Icmpv4Repr<'a> {
    EchoRequest {
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
    EchoReply {
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
    /// `next_hop_mtu` is meaningful for [`unreachable_code::FRAG_NEEDED`] and zero otherwise.
    DstUnreachable {
        code: u8,
        next_hop_mtu: u16,
        invoking: &'a [u8],
    },
    TimeExceeded {
        code: u8,
        invoking: &'a [u8],
    },
    ParamProblem {
        code: u8,
        pointer: u8,
        invoking: &'a [u8],
    },
    Redirect {
        code: u8,
        gateway: Ipv4Addr,
        invoking: &'a [u8],
    },
}

impl<'a> Icmpv4Repr<'a> {
    /// Parses a message, verifying its checksum. Other types are [`WireError::Unsupported`].
    pub fn parse<T: AsRef<[u8]>>(packet: &'a Icmpv4Packet<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(WireError::BadChecksum);
        }
        let (code, data) = (packet.code(), packet.data());
        Ok(match packet.msg_type() {
            Icmpv4Message::ECHO_REQUEST => Self::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            },
            Icmpv4Message::ECHO_REPLY => Self::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            },
            Icmpv4Message::DST_UNREACHABLE => Self::DstUnreachable {
                code,
                next_hop_mtu: if code == unreachable_code::FRAG_NEEDED {
                    packet.next_hop_mtu()
                } else {
                    0
                },
                invoking: data,
            },
            Icmpv4Message::TIME_EXCEEDED => Self::TimeExceeded {
                code,
                invoking: data,
            },
            Icmpv4Message::PARAM_PROBLEM => Self::ParamProblem {
                code,
                pointer: packet.pointer(),
                invoking: data,
            },
            Icmpv4Message::REDIRECT => Self::Redirect {
                code,
                gateway: packet.gateway(),
                invoking: data,
            },
            _ => return Err(WireError::Unsupported),
        })
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        Icmpv4Packet::<&[u8]>::HEADER_LEN
    }

    /// Header plus data.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.data().len()
    }

    fn data(&self) -> &'a [u8] {
        match *self {
            Self::EchoRequest { data, .. } | Self::EchoReply { data, .. } => data,
            Self::DstUnreachable { invoking, .. }
            | Self::TimeExceeded { invoking, .. }
            | Self::ParamProblem { invoking, .. }
            | Self::Redirect { invoking, .. } => invoking,
        }
    }

    /// Type, code and the four type-specific bytes.
    fn header(&self) -> (Icmpv4Message, u8, [u8; 4]) {
        let echo = |ident: u16, seq: u16| {
            let (i, s) = (ident.to_be_bytes(), seq.to_be_bytes());
            [i[0], i[1], s[0], s[1]]
        };
        match *self {
            Self::EchoRequest { ident, seq_no, .. } => {
                (Icmpv4Message::ECHO_REQUEST, 0, echo(ident, seq_no))
            }
            Self::EchoReply { ident, seq_no, .. } => {
                (Icmpv4Message::ECHO_REPLY, 0, echo(ident, seq_no))
            }
            Self::DstUnreachable {
                code, next_hop_mtu, ..
            } => {
                let m = next_hop_mtu.to_be_bytes();
                (Icmpv4Message::DST_UNREACHABLE, code, [0, 0, m[0], m[1]])
            }
            Self::TimeExceeded { code, .. } => (Icmpv4Message::TIME_EXCEEDED, code, [0; 4]),
            Self::ParamProblem { code, pointer, .. } => {
                (Icmpv4Message::PARAM_PROBLEM, code, [pointer, 0, 0, 0])
            }
            Self::Redirect { code, gateway, .. } => {
                (Icmpv4Message::REDIRECT, code, gateway.octets())
            }
        }
    }

    /// Writes the message and its checksum. The buffer must be exactly [`Self::buffer_len`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Icmpv4Packet<T>,
    ) -> Result<(), WireError> {
        match packet.buffer.as_ref().len() {
            len if len < self.buffer_len() => return Err(WireError::BufferTooSmall),
            len if len > self.buffer_len() => return Err(WireError::BadLength),
            _ => {}
        }
        let (msg_type, code, rest) = self.header();
        packet.set_msg_type(msg_type);
        packet.set_code(code);
        packet.set_rest_of_header(rest);
        packet.data_mut().copy_from_slice(self.data());
        packet.fill_checksum();
        Ok(())
    }
}

/// RFC 1812 section 4.3.2.3: an ICMP error datagram (IP header included) should not exceed
/// 576 bytes.
pub const MAX_ERROR_DATAGRAM_LEN: usize = 576;

/// The most of the offending datagram an error quotes: 576 minus a 20-byte IPv4 header and the
/// 8-byte ICMP header.
pub const MAX_ERROR_QUOTE_LEN: usize = MAX_ERROR_DATAGRAM_LEN - 20 - 8;

/// The type, code and type-specific word of an ICMP error to build with [`emit_error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Icmpv4ErrorHeader {
    pub msg_type: Icmpv4Message,
    pub code: u8,
    pub rest: [u8; 4],
}

impl Icmpv4ErrorHeader {
    pub fn dst_unreachable(code: u8) -> Self {
        Self {
            msg_type: Icmpv4Message::DST_UNREACHABLE,
            code,
            rest: [0; 4],
        }
    }

    /// "Fragmentation needed and DF set" with the MTU of the next hop (RFC 1191).
    pub fn frag_needed(next_hop_mtu: u16) -> Self {
        let m = next_hop_mtu.to_be_bytes();
        Self {
            msg_type: Icmpv4Message::DST_UNREACHABLE,
            code: unreachable_code::FRAG_NEEDED,
            rest: [0, 0, m[0], m[1]],
        }
    }

    pub fn time_exceeded(code: u8) -> Self {
        Self {
            msg_type: Icmpv4Message::TIME_EXCEEDED,
            code,
            rest: [0; 4],
        }
    }

    /// Parameter problem pointing at octet `pointer` of the offending datagram.
    pub fn param_problem(pointer: u8) -> Self {
        Self {
            msg_type: Icmpv4Message::PARAM_PROBLEM,
            code: 0,
            rest: [pointer, 0, 0, 0],
        }
    }

    pub fn redirect(code: u8, gateway: Ipv4Addr) -> Self {
        Self {
            msg_type: Icmpv4Message::REDIRECT,
            code,
            rest: gateway.octets(),
        }
    }
}

/// Writes an ICMP error about `offending` (a whole IPv4 datagram, header first) into `out` and
/// returns the ICMP message length. The caller wraps it in an IPv4 header (20 bytes, protocol
/// ICMP) addressed to the offending source.
///
/// The quote is as much of the datagram as fits in a 576-byte error (RFC 1812 4.3.2.3), cut
/// further to fit `out`; `out` must at least hold the offending IP header plus 8 bytes of its
/// payload (RFC 792's minimum), else [`WireError::BufferTooSmall`]. Whether an error may be
/// sent at all is [`error_allowed`]'s question.
pub fn emit_error(
    header: &Icmpv4ErrorHeader,
    offending: &[u8],
    out: &mut [u8],
) -> Result<usize, WireError> {
    let ip = Ipv4Packet::new_checked(offending)?;
    let datagram = ip.datagram();
    let room = out
        .len()
        .checked_sub(Icmpv4Packet::<&[u8]>::HEADER_LEN)
        .ok_or(WireError::BufferTooSmall)?;
    let quote_len = datagram.len().min(MAX_ERROR_QUOTE_LEN).min(room);
    let required = datagram.len().min(ip.header_len() + 8);
    if quote_len < required {
        return Err(WireError::BufferTooSmall);
    }
    let total = Icmpv4Packet::<&[u8]>::HEADER_LEN + quote_len;
    let mut packet = Icmpv4Packet::new_unchecked(&mut out[..total]);
    packet.set_msg_type(header.msg_type);
    packet.set_code(header.code);
    packet.set_rest_of_header(header.rest);
    packet.data_mut().copy_from_slice(&datagram[..quote_len]);
    packet.fill_checksum();
    Ok(total)
}

/// Whether RFC 1812 section 4.3.2.7 lets a router send an ICMP error about `offending`: not
/// about an ICMP error, a non-initial fragment, a packet to an IP broadcast or multicast
/// address, or one whose source does not name a single host. (A frame received as link-layer
/// broadcast is also excluded by the RFC; only the caller knows that.) Unparseable packets get
/// no error either.
pub fn error_allowed(offending: &[u8]) -> bool {
    let Ok(ip) = Ipv4Packet::new_checked(offending) else {
        return false;
    };
    if !ip.has_l4_header() {
        return false;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if dst.is_broadcast() || dst.is_multicast() {
        return false;
    }
    if src.is_unspecified() || src.is_loopback() || src.is_broadcast() || src.is_multicast() {
        return false;
    }
    if src.octets()[0] >= 240 {
        // Class E, reserved.
        return false;
    }
    if ip.protocol() == IpProtocol::ICMP {
        if let Some(&icmp_type) = ip.payload().first() {
            return !Icmpv4Message(icmp_type).is_error();
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::Ipv4Repr;
    use crate::wire::test_util::{assert_prefixes_rejected, hex};
    use proptest::prelude::*;

    /// ICMP echo request 198.51.100.2 → 203.0.113.1 (same bytes as the IPv4 tests).
    const ECHO_DATAGRAM: &str = "4500 0024 1c46 4000 4001 b85b c6336402 cb007101
        0800 2c15 1234 0001 7377 6974 6368 7961";

    #[test]
    fn parse_echo_and_reply() {
        let bytes = hex(ECHO_DATAGRAM);
        let ip = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        let repr = Icmpv4Repr::parse(&icmp).unwrap();
        assert_eq!(
            repr,
            Icmpv4Repr::EchoRequest {
                ident: 0x1234,
                seq_no: 1,
                data: b"switchya"
            }
        );
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]))
            .unwrap();
        assert_eq!(&out[..], ip.payload());

        let reply = Icmpv4Repr::EchoReply {
            ident: 0x1234,
            seq_no: 1,
            data: b"switchya",
        };
        reply
            .emit(&mut Icmpv4Packet::new_unchecked(&mut out[..]))
            .unwrap();
        let parsed = Icmpv4Packet::new_checked(&out[..]).unwrap();
        assert_eq!(Icmpv4Repr::parse(&parsed).unwrap(), reply);
        // Type 0 instead of 8 changes the checksum by exactly 0x0800.
        assert_eq!(parsed.checksum(), 0x2c15 + 0x0800);

        assert_prefixes_rejected(&bytes[20..], |b| {
            Icmpv4Repr::parse(&Icmpv4Packet::new_checked(b)?).map(|_| ())
        });
    }

    #[test]
    fn rejects_bad_checksum_and_unknown_type() {
        let mut bytes = hex(ECHO_DATAGRAM)[20..].to_vec();
        bytes[9] ^= 0xff;
        let icmp = Icmpv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Icmpv4Repr::parse(&icmp), Err(WireError::BadChecksum));
        let mut icmp = Icmpv4Packet::new_checked(&mut bytes[..]).unwrap();
        icmp.set_msg_type(Icmpv4Message(42));
        icmp.fill_checksum();
        assert_eq!(Icmpv4Repr::parse(&icmp), Err(WireError::Unsupported));
    }

    #[test]
    fn builds_time_exceeded() {
        let offending = hex(ECHO_DATAGRAM);
        let mut out = [0u8; 600];
        let len = emit_error(
            &Icmpv4ErrorHeader::time_exceeded(time_exceeded_code::TTL),
            &offending,
            &mut out,
        )
        .unwrap();
        assert_eq!(len, 8 + offending.len());
        let icmp = Icmpv4Packet::new_checked(&out[..len]).unwrap();
        assert_eq!(
            Icmpv4Repr::parse(&icmp).unwrap(),
            Icmpv4Repr::TimeExceeded {
                code: 0,
                invoking: &offending
            }
        );
    }

    #[test]
    fn error_quote_is_bounded() {
        // A 1500-byte UDP datagram: the quote stops at 548 bytes (576-byte error datagram).
        let repr = Ipv4Repr {
            src_addr: Ipv4Addr::new(198, 51, 100, 2),
            dst_addr: Ipv4Addr::new(203, 0, 113, 1),
            protocol: IpProtocol::UDP,
            payload_len: 1480,
            ttl: 1,
            dscp: 0,
            ecn: 0,
            ident: 7,
            dont_fragment: true,
            more_fragments: false,
            fragment_offset: 0,
        };
        let mut offending = vec![0xa5u8; repr.buffer_len()];
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut offending[..]))
            .unwrap();
        let mut out = [0u8; 1500];
        let len = emit_error(&Icmpv4ErrorHeader::frag_needed(1400), &offending, &mut out).unwrap();
        assert_eq!(len + 20, MAX_ERROR_DATAGRAM_LEN);
        let icmp = Icmpv4Packet::new_checked(&out[..len]).unwrap();
        match Icmpv4Repr::parse(&icmp).unwrap() {
            Icmpv4Repr::DstUnreachable {
                code: 4,
                next_hop_mtu: 1400,
                invoking,
            } => {
                assert_eq!(invoking, &offending[..MAX_ERROR_QUOTE_LEN]);
            }
            other => panic!("unexpected {other:?}"),
        }
        // A small output buffer still gets header + 8 bytes, and no less.
        let len = emit_error(
            &Icmpv4ErrorHeader::dst_unreachable(1),
            &offending,
            &mut out[..36],
        )
        .unwrap();
        assert_eq!(len, 36);
        assert_eq!(
            emit_error(
                &Icmpv4ErrorHeader::dst_unreachable(1),
                &offending,
                &mut out[..35]
            ),
            Err(WireError::BufferTooSmall)
        );
    }

    #[test]
    fn error_policy() {
        let echo = hex(ECHO_DATAGRAM);
        assert!(error_allowed(&echo));
        let mut out = [0u8; 128];
        let len = emit_error(&Icmpv4ErrorHeader::dst_unreachable(3), &echo, &mut out).unwrap();
        // Wrap the error in an IP header: an error about an error is not allowed.
        let repr = Ipv4Repr {
            src_addr: Ipv4Addr::new(203, 0, 113, 1),
            dst_addr: Ipv4Addr::new(198, 51, 100, 2),
            protocol: IpProtocol::ICMP,
            payload_len: len,
            ttl: 64,
            dscp: 0,
            ecn: 0,
            ident: 0,
            dont_fragment: false,
            more_fragments: false,
            fragment_offset: 0,
        };
        let mut error = vec![0u8; repr.buffer_len()];
        let mut ip = Ipv4Packet::new_unchecked(&mut error[..]);
        repr.emit(&mut ip).unwrap();
        ip.payload_mut().copy_from_slice(&out[..len]);
        assert!(!error_allowed(&error));

        let mut multicast = echo.clone();
        Ipv4Packet::new_unchecked(&mut multicast[..]).set_dst_addr(Ipv4Addr::new(224, 0, 0, 5));
        assert!(!error_allowed(&multicast));
        let mut later_fragment = echo.clone();
        Ipv4Packet::new_unchecked(&mut later_fragment[..]).set_fragment(false, false, 8);
        assert!(!error_allowed(&later_fragment));
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(packet) = Icmpv4Packet::new_checked(&data[..]) {
                let _ = Icmpv4Repr::parse(&packet);
            }
            let mut out = [0u8; 128];
            let _ = emit_error(&Icmpv4ErrorHeader::dst_unreachable(1), &data, &mut out);
            let _ = error_allowed(&data);
        }
    }
}
