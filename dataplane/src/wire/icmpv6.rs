//! ICMPv6 (RFC 4443) and Neighbor Discovery (RFC 4861): echo, the error messages a router
//! sends, router and neighbor solicitation/advertisement, and an error builder that quotes the
//! offending packet as RFC 4443 section 2.4(c) asks.

use std::fmt;
use std::net::Ipv6Addr;

use super::bytes::{read_array, read_u16, read_u32, write_u16, write_u32};
use super::checksum;
use super::error::WireError;
use super::ethernet::EthernetAddress;
use super::ip::IpProtocol;
use super::ipv6::Ipv6Packet;

/// The ICMPv6 type field.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Icmpv6Message(pub u8);

impl Icmpv6Message {
    pub const DST_UNREACHABLE: Self = Self(1);
    pub const PACKET_TOO_BIG: Self = Self(2);
    pub const TIME_EXCEEDED: Self = Self(3);
    pub const PARAM_PROBLEM: Self = Self(4);
    pub const ECHO_REQUEST: Self = Self(128);
    pub const ECHO_REPLY: Self = Self(129);
    pub const ROUTER_SOLICIT: Self = Self(133);
    pub const ROUTER_ADVERT: Self = Self(134);
    pub const NEIGHBOR_SOLICIT: Self = Self(135);
    pub const NEIGHBOR_ADVERT: Self = Self(136);
    pub const REDIRECT: Self = Self(137);

    /// Error messages have types 0-127 (RFC 4443 section 2.1).
    #[inline]
    pub fn is_error(self) -> bool {
        self.0 < 128
    }
}

impl fmt::Debug for Icmpv6Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Icmpv6Message({})", self.0)
    }
}

/// Codes of Destination Unreachable (RFC 4443 section 3.1).
pub mod unreachable_code {
    pub const NO_ROUTE: u8 = 0;
    pub const ADMIN_PROHIBITED: u8 = 1;
    pub const BEYOND_SCOPE: u8 = 2;
    pub const ADDRESS: u8 = 3;
    pub const PORT: u8 = 4;
    pub const FAILED_POLICY: u8 = 5;
    pub const REJECT_ROUTE: u8 = 6;
}

/// Codes of Time Exceeded (RFC 4443 section 3.3).
pub mod time_exceeded_code {
    pub const HOP_LIMIT: u8 = 0;
    pub const REASSEMBLY: u8 = 1;
}

/// Codes of Parameter Problem (RFC 4443 section 3.4).
pub mod param_problem_code {
    pub const HEADER_FIELD: u8 = 0;
    pub const UNRECOGNIZED_NEXT_HEADER: u8 = 1;
    pub const UNRECOGNIZED_OPTION: u8 = 2;
    /// The first fragment lacks part of the header chain (RFC 7112).
    pub const INCOMPLETE_HEADER_CHAIN: u8 = 3;
}

/// Neighbor Discovery option types (RFC 4861 section 4.6).
pub mod ndisc_option {
    pub const SOURCE_LINK_ADDR: u8 = 1;
    pub const TARGET_LINK_ADDR: u8 = 2;
    pub const PREFIX_INFO: u8 = 3;
    pub const REDIRECTED_HEADER: u8 = 4;
    pub const MTU: u8 = 5;
}

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const REST: usize = 4;
    pub const DATA: usize = 8;
    // Neighbor solicitation / advertisement.
    pub const NA_FLAGS: usize = 4;
    pub const TARGET: usize = 8;
    pub const NEIGHBOR_OPTIONS: usize = 24;
    // Router advertisement.
    pub const RA_HOP_LIMIT: usize = 4;
    pub const RA_FLAGS: usize = 5;
    pub const RA_LIFETIME: usize = 6;
    pub const RA_REACHABLE: usize = 8;
    pub const RA_RETRANS: usize = 12;
    pub const RA_OPTIONS: usize = 16;
    pub const RS_OPTIONS: usize = 8;
}

const NA_ROUTER: u8 = 0x80;
const NA_SOLICITED: u8 = 0x40;
const NA_OVERRIDE: u8 = 0x20;
const RA_MANAGED: u8 = 0x80;
const RA_OTHER: u8 = 0x40;

/// A view of an ICMPv6 message. The buffer should be exactly the message: the checksum covers
/// all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    pub const HEADER_LEN: usize = 8;

    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Checks the 8-byte header. Neighbor Discovery messages have longer fixed parts, which
    /// [`Icmpv6Repr::parse`] checks before reading them.
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
    pub fn msg_type(&self) -> Icmpv6Message {
        Icmpv6Message(self.buffer.as_ref()[field::TYPE])
    }

    #[inline]
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    #[inline]
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::REST)
    }

    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::REST + 2)
    }

    /// MTU of a Packet Too Big.
    #[inline]
    pub fn mtu(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::REST)
    }

    /// Pointer of a Parameter Problem.
    #[inline]
    pub fn pointer(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::REST)
    }

    /// Target address of a neighbor solicitation/advertisement (needs 24 bytes).
    #[inline]
    pub fn target_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(read_array::<16>(
            self.buffer.as_ref(),
            field::TARGET..field::NEIGHBOR_OPTIONS,
        ))
    }

    /// Everything after the 8-byte header: echo data, quoted packet, or ND body.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA..]
    }

    fn compute_sum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> u16 {
        let message = self.buffer.as_ref();
        let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
        let pseudo = checksum::pseudo_header_ipv6(src, dst, IpProtocol::ICMPV6, len);
        checksum::combine(pseudo, checksum::sum(message))
    }

    /// True if the checksum over the IPv6 pseudo-header and the message is valid.
    #[inline]
    pub fn verify_checksum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        self.compute_sum(src, dst) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    #[inline]
    pub fn set_msg_type(&mut self, value: Icmpv6Message) {
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

    /// Sets the four type-specific bytes after the checksum.
    #[inline]
    pub fn set_rest_of_header(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::REST, value);
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA..]
    }

    /// Computes the checksum over the pseudo-header and the whole buffer and stores it.
    pub fn fill_checksum(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let csum = checksum::finish(self.compute_sum(src, dst));
        self.set_checksum(csum);
    }
}

/// One Neighbor Discovery option: its type and the bytes after the length octet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdiscOption<'a> {
    pub kind: u8,
    pub data: &'a [u8],
}

/// Iterates over ND options. A zero length (which RFC 4861 section 4.6 says to discard the
/// packet for, since it would loop forever) or an option overrunning the buffer yields one
/// [`WireError::BadOption`] and ends the iteration.
#[derive(Debug, Clone)]
pub struct NdiscOptionIter<'a> {
    rest: &'a [u8],
}

impl<'a> NdiscOptionIter<'a> {
    #[inline]
    pub fn new(options: &'a [u8]) -> Self {
        Self { rest: options }
    }
}

impl<'a> Iterator for NdiscOptionIter<'a> {
    type Item = Result<NdiscOption<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&kind, after) = self.rest.split_first()?;
        let len = after.first().map_or(0, |&units| usize::from(units) * 8);
        if len == 0 || len > self.rest.len() {
            self.rest = &[];
            return Some(Err(WireError::BadOption));
        }
        let option = NdiscOption {
            kind,
            data: &self.rest[2..len],
        };
        self.rest = &self.rest[len..];
        Some(Ok(option))
    }
}

/// What the options of an ND message say, as far as an Ethernet router cares.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct NdiscOptions {
    source_lladdr: Option<EthernetAddress>,
    target_lladdr: Option<EthernetAddress>,
    mtu: Option<u32>,
}

impl NdiscOptions {
    /// Validates every option; link-layer address options of non-Ethernet size are ignored,
    /// unknown options skipped (RFC 4861 section 4.6 says to ignore them).
    fn parse(options: &[u8]) -> Result<Self, WireError> {
        let mut parsed = Self::default();
        for option in NdiscOptionIter::new(options) {
            let option = option?;
            match option.kind {
                ndisc_option::SOURCE_LINK_ADDR => {
                    parsed.source_lladdr = EthernetAddress::from_bytes(option.data);
                }
                ndisc_option::TARGET_LINK_ADDR => {
                    parsed.target_lladdr = EthernetAddress::from_bytes(option.data);
                }
                ndisc_option::MTU if option.data.len() == 6 => {
                    parsed.mtu = Some(read_u32(option.data, 2));
                }
                _ => {}
            }
        }
        Ok(parsed)
    }
}

/// Writes a link-layer address option (8 bytes) and returns the bytes written.
fn emit_lladdr_option(buf: &mut [u8], kind: u8, addr: EthernetAddress) -> usize {
    buf[0] = kind;
    buf[1] = 1;
    buf[2..8].copy_from_slice(&addr.0);
    8
}

/// A Prefix Information option (RFC 4861 section 4.6.2), as a router advertises an on-link
/// prefix and, with the autonomous flag, lets hosts form addresses in it (RFC 4862).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrefixInformation {
    /// The prefix, host bits zero.
    pub prefix: Ipv6Addr,
    pub prefix_len: u8,
    /// L: the prefix is on-link.
    pub on_link: bool,
    /// A: hosts may configure addresses from it.
    pub autonomous: bool,
    /// Seconds; `u32::MAX` is infinity.
    pub valid_lifetime: u32,
    /// Seconds; `u32::MAX` is infinity.
    pub preferred_lifetime: u32,
}

impl PrefixInformation {
    /// Length of the option on the wire.
    pub const LEN: usize = 32;

    /// Writes the option (type, length and body) into `buf[..LEN]`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), WireError> {
        let buf = buf.get_mut(..Self::LEN).ok_or(WireError::Truncated)?;
        buf[0] = ndisc_option::PREFIX_INFO;
        buf[1] = (Self::LEN / 8) as u8;
        buf[2] = self.prefix_len;
        buf[3] = if self.on_link { 0x80 } else { 0 } | if self.autonomous { 0x40 } else { 0 };
        write_u32(buf, 4, self.valid_lifetime);
        write_u32(buf, 8, self.preferred_lifetime);
        buf[12..16].fill(0);
        buf[16..32].copy_from_slice(&self.prefix.octets());
        Ok(())
    }

    /// Reads the option from its bytes (type, length and body).
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        let buf = buf.get(..Self::LEN).ok_or(WireError::Truncated)?;
        if buf[0] != ndisc_option::PREFIX_INFO || usize::from(buf[1]) * 8 != Self::LEN {
            return Err(WireError::Malformed);
        }
        let mut prefix = [0u8; 16];
        prefix.copy_from_slice(&buf[16..32]);
        Ok(PrefixInformation {
            prefix: Ipv6Addr::from(prefix),
            prefix_len: buf[2],
            on_link: buf[3] & 0x80 != 0,
            autonomous: buf[3] & 0x40 != 0,
            valid_lifetime: read_u32(buf, 4),
            preferred_lifetime: read_u32(buf, 8),
        })
    }
}

/// A Neighbor Discovery message (RFC 4861 section 4). Prefix information and other options
/// are validated but not represented. Checks that need the IP header (hop limit 255, no SLLA
/// from the unspecified address, S clear on multicast NAs) are the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NdiscRepr {
    RouterSolicit {
        lladdr: Option<EthernetAddress>,
    },
    RouterAdvert {
        hop_limit: u8,
        managed: bool,
        other_config: bool,
        router_lifetime: u16,
        reachable_time: u32,
        retrans_time: u32,
        lladdr: Option<EthernetAddress>,
        mtu: Option<u32>,
    },
    NeighborSolicit {
        target_addr: Ipv6Addr,
        /// Source link-layer address option.
        lladdr: Option<EthernetAddress>,
    },
    NeighborAdvert {
        router: bool,
        solicited: bool,
        override_: bool,
        target_addr: Ipv6Addr,
        /// Target link-layer address option.
        lladdr: Option<EthernetAddress>,
    },
}

impl NdiscRepr {
    fn parse<T: AsRef<[u8]>>(packet: &Icmpv6Packet<T>) -> Result<Self, WireError> {
        let buf = packet.buffer.as_ref();
        // RFC 4861 sections 6.1 and 7.1: code 0 and a minimum length per message.
        if packet.code() != 0 {
            return Err(WireError::Malformed);
        }
        let fixed_len = match packet.msg_type() {
            Icmpv6Message::ROUTER_SOLICIT => field::RS_OPTIONS,
            Icmpv6Message::ROUTER_ADVERT => field::RA_OPTIONS,
            _ => field::NEIGHBOR_OPTIONS,
        };
        if buf.len() < fixed_len {
            return Err(WireError::Truncated);
        }
        let options = NdiscOptions::parse(&buf[fixed_len..])?;
        Ok(match packet.msg_type() {
            Icmpv6Message::ROUTER_SOLICIT => Self::RouterSolicit {
                lladdr: options.source_lladdr,
            },
            Icmpv6Message::ROUTER_ADVERT => Self::RouterAdvert {
                hop_limit: buf[field::RA_HOP_LIMIT],
                managed: buf[field::RA_FLAGS] & RA_MANAGED != 0,
                other_config: buf[field::RA_FLAGS] & RA_OTHER != 0,
                router_lifetime: read_u16(buf, field::RA_LIFETIME),
                reachable_time: read_u32(buf, field::RA_REACHABLE),
                retrans_time: read_u32(buf, field::RA_RETRANS),
                lladdr: options.source_lladdr,
                mtu: options.mtu,
            },
            msg_type => {
                let target_addr = packet.target_addr();
                if target_addr.is_multicast() {
                    return Err(WireError::Malformed);
                }
                if msg_type == Icmpv6Message::NEIGHBOR_SOLICIT {
                    Self::NeighborSolicit {
                        target_addr,
                        lladdr: options.source_lladdr,
                    }
                } else {
                    let flags = buf[field::NA_FLAGS];
                    Self::NeighborAdvert {
                        router: flags & NA_ROUTER != 0,
                        solicited: flags & NA_SOLICITED != 0,
                        override_: flags & NA_OVERRIDE != 0,
                        target_addr,
                        lladdr: options.target_lladdr,
                    }
                }
            }
        })
    }

    fn msg_type(&self) -> Icmpv6Message {
        match self {
            Self::RouterSolicit { .. } => Icmpv6Message::ROUTER_SOLICIT,
            Self::RouterAdvert { .. } => Icmpv6Message::ROUTER_ADVERT,
            Self::NeighborSolicit { .. } => Icmpv6Message::NEIGHBOR_SOLICIT,
            Self::NeighborAdvert { .. } => Icmpv6Message::NEIGHBOR_ADVERT,
        }
    }

    fn buffer_len(&self) -> usize {
        let lladdr_len = |l: &Option<EthernetAddress>| if l.is_some() { 8 } else { 0 };
        match self {
            Self::RouterSolicit { lladdr } => field::RS_OPTIONS + lladdr_len(lladdr),
            Self::RouterAdvert { lladdr, mtu, .. } => {
                field::RA_OPTIONS + lladdr_len(lladdr) + if mtu.is_some() { 8 } else { 0 }
            }
            Self::NeighborSolicit { lladdr, .. } | Self::NeighborAdvert { lladdr, .. } => {
                field::NEIGHBOR_OPTIONS + lladdr_len(lladdr)
            }
        }
    }

    /// Writes everything after type/code/checksum into `buf` (exactly `buffer_len` bytes).
    fn emit_body(&self, buf: &mut [u8]) {
        buf[field::REST..].fill(0);
        let end = match *self {
            Self::RouterSolicit { lladdr } => {
                let mut at = field::RS_OPTIONS;
                if let Some(addr) = lladdr {
                    at += emit_lladdr_option(&mut buf[at..], ndisc_option::SOURCE_LINK_ADDR, addr);
                }
                at
            }
            Self::RouterAdvert {
                hop_limit,
                managed,
                other_config,
                router_lifetime,
                reachable_time,
                retrans_time,
                lladdr,
                mtu,
            } => {
                buf[field::RA_HOP_LIMIT] = hop_limit;
                buf[field::RA_FLAGS] =
                    if managed { RA_MANAGED } else { 0 } | if other_config { RA_OTHER } else { 0 };
                write_u16(buf, field::RA_LIFETIME, router_lifetime);
                write_u32(buf, field::RA_REACHABLE, reachable_time);
                write_u32(buf, field::RA_RETRANS, retrans_time);
                let mut at = field::RA_OPTIONS;
                if let Some(addr) = lladdr {
                    at += emit_lladdr_option(&mut buf[at..], ndisc_option::SOURCE_LINK_ADDR, addr);
                }
                if let Some(mtu) = mtu {
                    buf[at] = ndisc_option::MTU;
                    buf[at + 1] = 1;
                    write_u32(buf, at + 4, mtu);
                    at += 8;
                }
                at
            }
            Self::NeighborSolicit {
                target_addr,
                lladdr,
            } => {
                buf[field::TARGET..field::NEIGHBOR_OPTIONS].copy_from_slice(&target_addr.octets());
                let mut at = field::NEIGHBOR_OPTIONS;
                if let Some(addr) = lladdr {
                    at += emit_lladdr_option(&mut buf[at..], ndisc_option::SOURCE_LINK_ADDR, addr);
                }
                at
            }
            Self::NeighborAdvert {
                router,
                solicited,
                override_,
                target_addr,
                lladdr,
            } => {
                buf[field::NA_FLAGS] = if router { NA_ROUTER } else { 0 }
                    | if solicited { NA_SOLICITED } else { 0 }
                    | if override_ { NA_OVERRIDE } else { 0 };
                buf[field::TARGET..field::NEIGHBOR_OPTIONS].copy_from_slice(&target_addr.octets());
                let mut at = field::NEIGHBOR_OPTIONS;
                if let Some(addr) = lladdr {
                    at += emit_lladdr_option(&mut buf[at..], ndisc_option::TARGET_LINK_ADDR, addr);
                }
                at
            }
        };
        debug_assert_eq!(end, buf.len(), "buffer_len and emit_body disagree");
    }
}

/// An ICMPv6 message as a plain value, borrowing echo data or the quoted packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Icmpv6Repr<'a> {
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
    DstUnreachable {
        code: u8,
        invoking: &'a [u8],
    },
    PacketTooBig {
        mtu: u32,
        invoking: &'a [u8],
    },
    TimeExceeded {
        code: u8,
        invoking: &'a [u8],
    },
    ParamProblem {
        code: u8,
        pointer: u32,
        invoking: &'a [u8],
    },
    Ndisc(NdiscRepr),
}

impl<'a> Icmpv6Repr<'a> {
    /// Parses a message, verifying its checksum against the enclosing IPv6 addresses. Other
    /// types (redirect, MLD, ...) are [`WireError::Unsupported`].
    pub fn parse<T: AsRef<[u8]>>(
        packet: &'a Icmpv6Packet<T>,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
    ) -> Result<Self, WireError> {
        packet.check_len()?;
        if !packet.verify_checksum(src, dst) {
            return Err(WireError::BadChecksum);
        }
        let (code, data) = (packet.code(), packet.data());
        Ok(match packet.msg_type() {
            Icmpv6Message::ECHO_REQUEST => Self::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            },
            Icmpv6Message::ECHO_REPLY => Self::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            },
            Icmpv6Message::DST_UNREACHABLE => Self::DstUnreachable {
                code,
                invoking: data,
            },
            Icmpv6Message::PACKET_TOO_BIG => Self::PacketTooBig {
                mtu: packet.mtu(),
                invoking: data,
            },
            Icmpv6Message::TIME_EXCEEDED => Self::TimeExceeded {
                code,
                invoking: data,
            },
            Icmpv6Message::PARAM_PROBLEM => Self::ParamProblem {
                code,
                pointer: packet.pointer(),
                invoking: data,
            },
            Icmpv6Message::ROUTER_SOLICIT
            | Icmpv6Message::ROUTER_ADVERT
            | Icmpv6Message::NEIGHBOR_SOLICIT
            | Icmpv6Message::NEIGHBOR_ADVERT => Self::Ndisc(NdiscRepr::parse(packet)?),
            _ => return Err(WireError::Unsupported),
        })
    }

    #[inline]
    pub fn header_len(&self) -> usize {
        Icmpv6Packet::<&[u8]>::HEADER_LEN
    }

    /// The whole message length.
    pub fn buffer_len(&self) -> usize {
        match self {
            Self::Ndisc(nd) => nd.buffer_len(),
            Self::EchoRequest { data, .. } | Self::EchoReply { data, .. } => 8 + data.len(),
            Self::DstUnreachable { invoking, .. }
            | Self::PacketTooBig { invoking, .. }
            | Self::TimeExceeded { invoking, .. }
            | Self::ParamProblem { invoking, .. } => 8 + invoking.len(),
        }
    }

    /// Writes the message and its checksum. The buffer must be exactly [`Self::buffer_len`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Icmpv6Packet<T>,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
    ) -> Result<(), WireError> {
        match packet.buffer.as_ref().len() {
            len if len < self.buffer_len() => return Err(WireError::BufferTooSmall),
            len if len > self.buffer_len() => return Err(WireError::BadLength),
            _ => {}
        }
        let echo = |ident: u16, seq: u16| (u32::from(ident) << 16) | u32::from(seq);
        let (msg_type, code, rest, data) = match *self {
            Self::Ndisc(nd) => {
                packet.set_msg_type(nd.msg_type());
                packet.set_code(0);
                nd.emit_body(packet.buffer.as_mut());
                packet.fill_checksum(src, dst);
                return Ok(());
            }
            Self::EchoRequest {
                ident,
                seq_no,
                data,
            } => (Icmpv6Message::ECHO_REQUEST, 0, echo(ident, seq_no), data),
            Self::EchoReply {
                ident,
                seq_no,
                data,
            } => (Icmpv6Message::ECHO_REPLY, 0, echo(ident, seq_no), data),
            Self::DstUnreachable { code, invoking } => {
                (Icmpv6Message::DST_UNREACHABLE, code, 0, invoking)
            }
            Self::PacketTooBig { mtu, invoking } => {
                (Icmpv6Message::PACKET_TOO_BIG, 0, mtu, invoking)
            }
            Self::TimeExceeded { code, invoking } => {
                (Icmpv6Message::TIME_EXCEEDED, code, 0, invoking)
            }
            Self::ParamProblem {
                code,
                pointer,
                invoking,
            } => (Icmpv6Message::PARAM_PROBLEM, code, pointer, invoking),
        };
        packet.set_msg_type(msg_type);
        packet.set_code(code);
        packet.set_rest_of_header(rest);
        packet.data_mut().copy_from_slice(data);
        packet.fill_checksum(src, dst);
        Ok(())
    }
}

/// RFC 4443 section 2.4(c): an error must not make the IPv6 packet carrying it exceed the
/// minimum IPv6 MTU.
pub const MAX_ERROR_PACKET_LEN: usize = 1280;

/// The most of the offending packet an error quotes: 1280 minus the 40-byte IPv6 header and
/// the 8-byte ICMPv6 header.
pub const MAX_ERROR_QUOTE_LEN: usize = MAX_ERROR_PACKET_LEN - 40 - 8;

/// The type, code and type-specific word of an ICMPv6 error to build with [`emit_error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Icmpv6ErrorHeader {
    pub msg_type: Icmpv6Message,
    pub code: u8,
    pub rest: u32,
}

impl Icmpv6ErrorHeader {
    pub fn dst_unreachable(code: u8) -> Self {
        Self {
            msg_type: Icmpv6Message::DST_UNREACHABLE,
            code,
            rest: 0,
        }
    }

    pub fn packet_too_big(mtu: u32) -> Self {
        Self {
            msg_type: Icmpv6Message::PACKET_TOO_BIG,
            code: 0,
            rest: mtu,
        }
    }

    pub fn time_exceeded(code: u8) -> Self {
        Self {
            msg_type: Icmpv6Message::TIME_EXCEEDED,
            code,
            rest: 0,
        }
    }

    /// `pointer` is a byte offset into the offending packet, e.g.
    /// [`crate::wire::ipv6::Ipv6ExtensionHeaders::next_header_offset`].
    pub fn param_problem(code: u8, pointer: u32) -> Self {
        Self {
            msg_type: Icmpv6Message::PARAM_PROBLEM,
            code,
            rest: pointer,
        }
    }
}

/// Writes an ICMPv6 error about `offending` (a whole IPv6 packet) into `out`, with the
/// checksum for an error sent from `src` to `dst`, and returns the message length. The caller
/// prepends the IPv6 header (next header 58).
///
/// The quote is as much of the offending packet as keeps the error packet within 1280 bytes,
/// cut further to fit `out`; `out` must hold at least the offending fixed header plus 8 bytes,
/// else [`WireError::BufferTooSmall`]. Whether an error may be sent at all is
/// [`error_allowed`]'s question.
pub fn emit_error(
    header: &Icmpv6ErrorHeader,
    src: &Ipv6Addr,
    dst: &Ipv6Addr,
    offending: &[u8],
    out: &mut [u8],
) -> Result<usize, WireError> {
    let ip = Ipv6Packet::new_checked(offending)?;
    let packet = &offending[..ip.packet_len()];
    let room = out
        .len()
        .checked_sub(Icmpv6Packet::<&[u8]>::HEADER_LEN)
        .ok_or(WireError::BufferTooSmall)?;
    let quote_len = packet.len().min(MAX_ERROR_QUOTE_LEN).min(room);
    if quote_len < packet.len().min(Ipv6Packet::<&[u8]>::HEADER_LEN + 8) {
        return Err(WireError::BufferTooSmall);
    }
    let total = Icmpv6Packet::<&[u8]>::HEADER_LEN + quote_len;
    let mut icmp = Icmpv6Packet::new_unchecked(&mut out[..total]);
    icmp.set_msg_type(header.msg_type);
    icmp.set_code(header.code);
    icmp.set_rest_of_header(header.rest);
    icmp.data_mut().copy_from_slice(&packet[..quote_len]);
    icmp.fill_checksum(src, dst);
    Ok(total)
}

/// Whether RFC 4443 section 2.4(e) lets us send the error `header` about `offending`: never
/// about an ICMPv6 error or a redirect, never to a source that is unspecified or multicast, and
/// not about a packet sent to a multicast address unless the error is Packet Too Big or a
/// Parameter Problem about an unrecognised option (code 2). (Link-layer multicast is also
/// excluded by the RFC; only the caller knows that.)
pub fn error_allowed(header: &Icmpv6ErrorHeader, offending: &[u8]) -> bool {
    let Ok(ip) = Ipv6Packet::new_checked(offending) else {
        return false;
    };
    let src = ip.src_addr();
    if src.is_unspecified() || src.is_multicast() {
        return false;
    }
    let multicast_ok = header.msg_type == Icmpv6Message::PACKET_TOO_BIG
        || (header.msg_type == Icmpv6Message::PARAM_PROBLEM
            && header.code == param_problem_code::UNRECOGNIZED_OPTION);
    if ip.dst_addr().is_multicast() && !multicast_ok {
        return false;
    }
    // If the chain cannot be walked we may still report it (that is what Parameter Problem
    // is for); only a readable ICMPv6 error or redirect stops us.
    if let Ok(ext) = ip.extension_headers() {
        let is_first = ext.fragment.is_none_or(|f| f.offset == 0);
        if ext.upper_protocol == IpProtocol::ICMPV6 && is_first {
            if let Some(&icmp_type) = offending.get(ext.upper_offset) {
                let icmp_type = Icmpv6Message(icmp_type);
                if icmp_type.is_error() || icmp_type == Icmpv6Message::REDIRECT {
                    return false;
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv6::Ipv6Repr;
    use crate::wire::test_util::{assert_prefixes_rejected, hex};
    use proptest::prelude::*;

    fn addr(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// A neighbor solicitation from 2001:db8::1 for 2001:db8::2, to the target's
    /// solicited-node group, with a source link-layer address option; hop limit 255.
    const NS_PACKET: &str = "60000000 0020 3a ff
        20010db8000000000000000000000001 ff0200000000000000000001ff000002
        8700 be16 00000000 20010db8000000000000000000000002 0101 02005e100001";

    #[test]
    fn parse_neighbor_solicitation() {
        let bytes = hex(NS_PACKET);
        let ip = Ipv6Packet::new_checked(&bytes[..]).unwrap();
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        let repr = Icmpv6Repr::parse(&icmp, &src, &dst).unwrap();
        let expected = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr: addr("2001:db8::2"),
            lladdr: Some(EthernetAddress([0x02, 0x00, 0x5e, 0x10, 0x00, 0x01])),
        });
        assert_eq!(repr, expected);
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Icmpv6Packet::new_unchecked(&mut out[..]), &src, &dst)
            .unwrap();
        assert_eq!(&out[..], ip.payload());
        assert_prefixes_rejected(ip.payload(), |b| {
            Icmpv6Repr::parse(&Icmpv6Packet::new_checked(b)?, &src, &dst).map(|_| ())
        });
    }

    #[test]
    fn ndisc_validation() {
        let bytes = hex(NS_PACKET);
        let (src, dst) = (addr("2001:db8::1"), addr("ff02::1:ff00:2"));
        let fix = |mut b: Vec<u8>| {
            Icmpv6Packet::new_unchecked(&mut b[..]).fill_checksum(&src, &dst);
            b
        };
        let parse =
            |b: &[u8]| Icmpv6Repr::parse(&Icmpv6Packet::new_checked(b)?, &src, &dst).map(|_| ());
        let mut zero_len = bytes[40..].to_vec();
        zero_len[25] = 0;
        assert_eq!(parse(&fix(zero_len)), Err(WireError::BadOption));
        let mut overrun = bytes[40..].to_vec();
        overrun[25] = 2;
        assert_eq!(parse(&fix(overrun)), Err(WireError::BadOption));
        let mut bad_code = bytes[40..].to_vec();
        bad_code[1] = 1;
        assert_eq!(parse(&fix(bad_code)), Err(WireError::Malformed));
        let mut multicast_target = bytes[40..].to_vec();
        multicast_target[8] = 0xff;
        assert_eq!(parse(&fix(multicast_target)), Err(WireError::Malformed));
        assert_eq!(parse(&bytes[40..]), Ok(()));
    }

    #[test]
    fn ndisc_roundtrips() {
        let (src, dst) = (addr("fe80::1"), addr("ff02::1"));
        let mac = EthernetAddress([0x02, 0, 0, 0, 0, 9]);
        let cases = [
            NdiscRepr::NeighborAdvert {
                router: true,
                solicited: true,
                override_: true,
                target_addr: addr("2001:db8::2"),
                lladdr: Some(mac),
            },
            NdiscRepr::NeighborAdvert {
                router: false,
                solicited: false,
                override_: true,
                target_addr: addr("2001:db8::2"),
                lladdr: None,
            },
            NdiscRepr::NeighborSolicit {
                target_addr: addr("fe80::2"),
                lladdr: None,
            },
            NdiscRepr::RouterSolicit { lladdr: Some(mac) },
            NdiscRepr::RouterAdvert {
                hop_limit: 64,
                managed: false,
                other_config: true,
                router_lifetime: 1800,
                reachable_time: 0,
                retrans_time: 0,
                lladdr: Some(mac),
                mtu: Some(1500),
            },
        ];
        for nd in cases {
            let repr = Icmpv6Repr::Ndisc(nd);
            let mut buf = vec![0xeeu8; repr.buffer_len()];
            repr.emit(&mut Icmpv6Packet::new_unchecked(&mut buf[..]), &src, &dst)
                .unwrap();
            let packet = Icmpv6Packet::new_checked(&buf[..]).unwrap();
            assert_eq!(Icmpv6Repr::parse(&packet, &src, &dst).unwrap(), repr);
        }
    }

    #[test]
    fn builds_errors() {
        let offending = hex(NS_PACKET);
        let (src, dst) = (addr("2001:db8::ff"), addr("2001:db8::1"));
        let mut out = [0u8; 1500];
        let header = Icmpv6ErrorHeader::param_problem(param_problem_code::HEADER_FIELD, 7);
        let len = emit_error(&header, &src, &dst, &offending, &mut out).unwrap();
        let icmp = Icmpv6Packet::new_checked(&out[..len]).unwrap();
        assert_eq!(
            Icmpv6Repr::parse(&icmp, &src, &dst).unwrap(),
            Icmpv6Repr::ParamProblem {
                code: 0,
                pointer: 7,
                invoking: &offending
            }
        );

        // A 1500-byte packet is quoted up to a 1280-byte error packet.
        let big = Ipv6Repr {
            src_addr: addr("2001:db8::1"),
            dst_addr: addr("2001:db8::2"),
            next_header: IpProtocol::UDP,
            payload_len: 1460,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
        };
        let mut offending = vec![0x5au8; big.buffer_len()];
        big.emit(&mut Ipv6Packet::new_unchecked(&mut offending[..]))
            .unwrap();
        let header = Icmpv6ErrorHeader::packet_too_big(1400);
        let len = emit_error(&header, &src, &dst, &offending, &mut out).unwrap();
        assert_eq!(len + 40, MAX_ERROR_PACKET_LEN);
        let icmp = Icmpv6Packet::new_checked(&out[..len]).unwrap();
        assert_eq!(
            Icmpv6Repr::parse(&icmp, &src, &dst).unwrap(),
            Icmpv6Repr::PacketTooBig {
                mtu: 1400,
                invoking: &offending[..MAX_ERROR_QUOTE_LEN]
            }
        );
        assert_eq!(
            emit_error(&header, &src, &dst, &offending, &mut out[..55]),
            Err(WireError::BufferTooSmall)
        );
    }

    #[test]
    fn error_policy() {
        let ns = hex(NS_PACKET);
        // Sent to a multicast group: only Packet Too Big and unrecognised-option problems.
        assert!(!error_allowed(&Icmpv6ErrorHeader::time_exceeded(0), &ns));
        assert!(error_allowed(&Icmpv6ErrorHeader::packet_too_big(1280), &ns));
        let mut unicast = ns.clone();
        Ipv6Packet::new_unchecked(&mut unicast[..]).set_dst_addr(addr("2001:db8::2"));
        assert!(error_allowed(
            &Icmpv6ErrorHeader::time_exceeded(0),
            &unicast
        ));
        // About an ICMPv6 error: never.
        let mut error = unicast.clone();
        error[40] = Icmpv6Message::TIME_EXCEEDED.0;
        assert!(!error_allowed(&Icmpv6ErrorHeader::time_exceeded(0), &error));
        let mut unspecified = unicast.clone();
        Ipv6Packet::new_unchecked(&mut unspecified[..]).set_src_addr(Ipv6Addr::UNSPECIFIED);
        assert!(!error_allowed(
            &Icmpv6ErrorHeader::time_exceeded(0),
            &unspecified
        ));
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..96), ty in 128u8..140) {
            let (src, dst) = (addr("fe80::1"), addr("ff02::1"));
            let mut data = data;
            if let Some(first) = data.first_mut() {
                *first = ty;
            }
            if data.len() >= 8 {
                Icmpv6Packet::new_unchecked(&mut data[..]).fill_checksum(&src, &dst);
            }
            if let Ok(packet) = Icmpv6Packet::new_checked(&data[..]) {
                let _ = Icmpv6Repr::parse(&packet, &src, &dst);
            }
            let mut out = [0u8; 200];
            let header = Icmpv6ErrorHeader::time_exceeded(0);
            let _ = emit_error(&header, &src, &dst, &data, &mut out);
            let _ = error_allowed(&header, &data);
        }
    }
}
