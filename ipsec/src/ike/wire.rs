//! IKEv2 message and payload codec (RFC 7296 section 3), with RFC 7383's Encrypted Fragment
//! payload.
//!
//! [`Message::parse`] reads the header and the cleartext payload chain; an Encrypted (SK)
//! payload ends the chain and is kept opaque ([`Payload::Encrypted`]) until the SA's keys
//! open it (see `sk.rs`), after which [`parse_payloads`] reads the inner chain. Emitting goes
//! the other way: [`emit_payloads`] writes a chain, [`Header::emit`] the header. Parsing never
//! panics and never trusts a length it has not checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const HEADER_LEN: usize = 28;
pub const VERSION: u8 = 0x20;

pub const FLAG_INITIATOR: u8 = 0x08;
pub const FLAG_VERSION: u8 = 0x10;
pub const FLAG_RESPONSE: u8 = 0x20;

/// Exchange types (RFC 7296 section 3.1).
pub mod exchange {
    pub const IKE_SA_INIT: u8 = 34;
    pub const IKE_AUTH: u8 = 35;
    pub const CREATE_CHILD_SA: u8 = 36;
    pub const INFORMATIONAL: u8 = 37;
}

/// Payload type numbers (RFC 7296 section 3.2).
pub mod payload_type {
    pub const NONE: u8 = 0;
    pub const SA: u8 = 33;
    pub const KE: u8 = 34;
    pub const IDI: u8 = 35;
    pub const IDR: u8 = 36;
    pub const CERT: u8 = 37;
    pub const CERTREQ: u8 = 38;
    pub const AUTH: u8 = 39;
    pub const NONCE: u8 = 40;
    pub const NOTIFY: u8 = 41;
    pub const DELETE: u8 = 42;
    pub const VENDOR_ID: u8 = 43;
    pub const TSI: u8 = 44;
    pub const TSR: u8 = 45;
    pub const SK: u8 = 46;
    pub const CP: u8 = 47;
    pub const EAP: u8 = 48;
    /// The Encrypted Fragment payload (RFC 7383 section 2.5).
    pub const SKF: u8 = 53;
}

/// Notify message types (RFC 7296 section 3.10.1) used here.
pub mod notify {
    pub const UNSUPPORTED_CRITICAL_PAYLOAD: u16 = 1;
    pub const INVALID_IKE_SPI: u16 = 4;
    pub const INVALID_MAJOR_VERSION: u16 = 5;
    pub const INVALID_SYNTAX: u16 = 7;
    pub const INVALID_MESSAGE_ID: u16 = 9;
    pub const INVALID_SPI: u16 = 11;
    pub const NO_PROPOSAL_CHOSEN: u16 = 14;
    pub const INVALID_KE_PAYLOAD: u16 = 17;
    pub const AUTHENTICATION_FAILED: u16 = 24;
    pub const SINGLE_PAIR_REQUIRED: u16 = 34;
    pub const NO_ADDITIONAL_SAS: u16 = 35;
    pub const INTERNAL_ADDRESS_FAILURE: u16 = 36;
    pub const FAILED_CP_REQUIRED: u16 = 37;
    pub const TS_UNACCEPTABLE: u16 = 38;
    pub const INVALID_SELECTORS: u16 = 39;
    pub const TEMPORARY_FAILURE: u16 = 43;
    pub const CHILD_SA_NOT_FOUND: u16 = 44;
    /// Error types are below this value (RFC 7296 section 3.10.1).
    pub const FIRST_STATUS: u16 = 16384;
    pub const INITIAL_CONTACT: u16 = 16384;
    pub const NAT_DETECTION_SOURCE_IP: u16 = 16388;
    pub const NAT_DETECTION_DESTINATION_IP: u16 = 16389;
    pub const COOKIE: u16 = 16390;
    pub const USE_TRANSPORT_MODE: u16 = 16391;
    pub const REKEY_SA: u16 = 16393;
    pub const ESP_TFC_PADDING_NOT_SUPPORTED: u16 = 16394;
    /// RFC 7383 section 2.3: both ends of IKE_SA_INIT send it to use fragmentation.
    pub const IKEV2_FRAGMENTATION_SUPPORTED: u16 = 16430;
    /// RFC 7427 section 4: the hash algorithms a sender verifies signatures with.
    pub const SIGNATURE_HASH_ALGORITHMS: u16 = 16431;
}

/// Security protocol identifiers.
pub mod protocol {
    pub const IKE: u8 = 1;
    pub const AH: u8 = 2;
    pub const ESP: u8 = 3;
}

/// Transform types and the attribute used here.
pub mod transform {
    pub const ENCR: u8 = 1;
    pub const PRF: u8 = 2;
    pub const INTEG: u8 = 3;
    pub const DH: u8 = 4;
    pub const ESN: u8 = 5;
    pub const ATTR_KEY_LENGTH: u16 = 14;
}

/// Identification types (RFC 7296 section 3.5).
pub mod id_type {
    pub const IPV4_ADDR: u8 = 1;
    pub const FQDN: u8 = 2;
    pub const RFC822_ADDR: u8 = 3;
    pub const IPV6_ADDR: u8 = 5;
    pub const DER_ASN1_DN: u8 = 9;
    pub const KEY_ID: u8 = 11;
}

pub const AUTH_METHOD_PSK: u8 = 2;

/// Traffic selector types (RFC 7296 section 3.13.1).
pub const TS_IPV4_ADDR_RANGE: u8 = 7;
pub const TS_IPV6_ADDR_RANGE: u8 = 8;

/// Configuration payload types and attributes (RFC 7296 section 3.15).
pub mod cfg {
    pub const REQUEST: u8 = 1;
    pub const REPLY: u8 = 2;
    pub const SET: u8 = 3;
    pub const ACK: u8 = 4;
    pub const INTERNAL_IP4_ADDRESS: u16 = 1;
    pub const INTERNAL_IP4_NETMASK: u16 = 2;
    pub const INTERNAL_IP4_DNS: u16 = 3;
    pub const INTERNAL_IP6_ADDRESS: u16 = 8;
    pub const INTERNAL_IP6_DNS: u16 = 10;
    /// The most attributes one Configuration payload may carry here. A real request asks for
    /// a handful (strongSwan: an address per family and a few servers); a longer list is
    /// refused as malformed rather than walked.
    pub const MAX_ATTRIBUTES: usize = 64;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message truncated")]
    Truncated,
    #[error("bad length field")]
    BadLength,
    #[error("unsupported major version {0}")]
    UnsupportedVersion(u8),
    #[error("unsupported critical payload {0}")]
    UnsupportedCritical(u8),
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
}

/// The fixed IKE header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub spi_i: u64,
    pub spi_r: u64,
    pub next_payload: u8,
    pub version: u8,
    pub exchange: u8,
    pub flags: u8,
    pub message_id: u32,
    pub length: u32,
}

impl Header {
    /// Reads and checks the header of the message `bytes`: IKE version 2 (any minor
    /// version, which RFC 7296 section 3.1 says to ignore), and a length that is the
    /// message's.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let header = Self::read(bytes)?;
        if header.version >> 4 != 2 {
            return Err(ParseError::UnsupportedVersion(header.version >> 4));
        }
        if header.length as usize != bytes.len() {
            return Err(ParseError::BadLength);
        }
        Ok(header)
    }

    /// Reads the fixed header fields without checking them (to answer a message of another
    /// major version).
    pub fn read(bytes: &[u8]) -> Result<Self, ParseError> {
        let h = bytes.get(..HEADER_LEN).ok_or(ParseError::Truncated)?;
        let header = Self {
            spi_i: u64::from_be_bytes(h[0..8].try_into().map_err(|_| ParseError::Truncated)?),
            spi_r: u64::from_be_bytes(h[8..16].try_into().map_err(|_| ParseError::Truncated)?),
            next_payload: h[16],
            version: h[17],
            exchange: h[18],
            flags: h[19],
            message_id: u32::from_be_bytes([h[20], h[21], h[22], h[23]]),
            length: u32::from_be_bytes([h[24], h[25], h[26], h[27]]),
        };
        Ok(header)
    }

    pub fn emit(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.spi_i.to_be_bytes());
        out[8..16].copy_from_slice(&self.spi_r.to_be_bytes());
        out[16] = self.next_payload;
        out[17] = self.version;
        out[18] = self.exchange;
        out[19] = self.flags;
        out[20..24].copy_from_slice(&self.message_id.to_be_bytes());
        out[24..28].copy_from_slice(&self.length.to_be_bytes());
    }

    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    pub fn from_initiator(&self) -> bool {
        self.flags & FLAG_INITIATOR != 0
    }
}

/// A transform inside a proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transform {
    pub kind: u8,
    pub id: u16,
    pub key_len: Option<u16>,
    /// It came with an attribute this implementation does not understand (anything but one
    /// Key Length on an encryption transform), which makes it unacceptable (RFC 7296
    /// section 3.3.6).
    pub unknown_attributes: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub number: u8,
    pub protocol: u8,
    pub spi: Vec<u8>,
    pub transforms: Vec<Transform>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub protocol: u8,
    pub spi: Vec<u8>,
    pub kind: u16,
    pub data: Vec<u8>,
}

impl Notify {
    pub fn new(kind: u16, data: Vec<u8>) -> Self {
        Self {
            protocol: 0,
            spi: Vec::new(),
            kind,
            data,
        }
    }

    pub fn is_error(&self) -> bool {
        self.kind < notify::FIRST_STATUS
    }
}

/// An ID payload (RFC 7296 section 3.5).
///
/// Its three RESERVED octets are kept as received: the identity ignores them (two IDs that
/// differ only there are equal, section 3.5: "MUST be ignored on receipt"), but AUTH covers
/// the payload body as the peer sent it, RESERVED included (section 2.15:
/// `RestOfInitIDPayload = IDType | RESERVED | InitIDData`). A peer that sets them (libreswan's
/// `send-nonzero-reserved-id` does) must still authenticate. Ours are zero.
#[derive(Debug, Clone)]
pub struct Identification {
    pub kind: u8,
    pub data: Vec<u8>,
    /// The RESERVED octets after the ID type: zero in what we send.
    pub reserved: [u8; 3],
}

impl PartialEq for Identification {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.data == other.data
    }
}

impl Eq for Identification {}

impl std::hash::Hash for Identification {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
        self.data.hash(state);
    }
}

impl Identification {
    /// An identity of ID type `kind`, RESERVED zero (as we send it).
    pub fn new(kind: u8, data: Vec<u8>) -> Self {
        Self {
            kind,
            data,
            reserved: [0; 3],
        }
    }

    /// The payload body after the generic header, RESERVED as received: what AUTH signs
    /// (RFC 7296 section 2.15) and what goes on the wire.
    pub fn body(&self) -> Vec<u8> {
        let mut out = vec![self.kind];
        out.extend_from_slice(&self.reserved);
        out.extend_from_slice(&self.data);
        out
    }
}

/// One traffic selector: an address range, a protocol (0 = any) and a port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrafficSelector {
    pub protocol: u8,
    pub start_port: u16,
    pub end_port: u16,
    pub start: IpAddr,
    pub end: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigAttribute {
    pub kind: u16,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Sa(Vec<Proposal>),
    Ke {
        group: u16,
        data: Vec<u8>,
    },
    IdI(Identification),
    IdR(Identification),
    Auth {
        method: u8,
        data: Vec<u8>,
    },
    Nonce(Vec<u8>),
    Notify(Notify),
    Delete {
        protocol: u8,
        spis: Vec<Vec<u8>>,
    },
    VendorId(Vec<u8>),
    TsI(Vec<TrafficSelector>),
    TsR(Vec<TrafficSelector>),
    Cp {
        cfg_type: u8,
        attributes: Vec<ConfigAttribute>,
    },
    /// The SK payload, still encrypted: the type of its first inner payload and the byte
    /// offset of its generic header in the message.
    Encrypted {
        first_payload: u8,
        offset: usize,
    },
    /// An Encrypted Fragment payload (RFC 7383 section 2.5), still encrypted: its generic
    /// header's "next payload" (the first inner payload's type in fragment 1, zero in the
    /// others), the byte offset of its generic header, and which fragment of how many it is
    /// (checked: `1 <= number <= total`).
    EncryptedFragment {
        first_payload: u8,
        offset: usize,
        number: u16,
        total: u16,
    },
    /// A payload this implementation does not interpret (CERT, CERTREQ, EAP...), not critical.
    Other {
        kind: u8,
        body: Vec<u8>,
    },
}

impl Payload {
    pub fn kind(&self) -> u8 {
        use payload_type as t;
        match self {
            Self::Sa(_) => t::SA,
            Self::Ke { .. } => t::KE,
            Self::IdI(_) => t::IDI,
            Self::IdR(_) => t::IDR,
            Self::Auth { .. } => t::AUTH,
            Self::Nonce(_) => t::NONCE,
            Self::Notify(_) => t::NOTIFY,
            Self::Delete { .. } => t::DELETE,
            Self::VendorId(_) => t::VENDOR_ID,
            Self::TsI(_) => t::TSI,
            Self::TsR(_) => t::TSR,
            Self::Cp { .. } => t::CP,
            Self::Encrypted { .. } => t::SK,
            Self::EncryptedFragment { .. } => t::SKF,
            Self::Other { kind, .. } => *kind,
        }
    }
}

/// A parsed message: header and cleartext payloads (an SK payload last, still sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub payloads: Vec<Payload>,
}

impl Message {
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let header = Header::parse(bytes)?;
        let payloads = parse_chain(header.next_payload, bytes, HEADER_LEN, true)?;
        Ok(Self { header, payloads })
    }

    /// Emits header and cleartext payloads (for IKE_SA_INIT and unprotected errors).
    pub fn emit(header: Header, payloads: &[Payload]) -> Vec<u8> {
        let body = emit_payloads(payloads, payload_type::NONE);
        let mut out = vec![0u8; HEADER_LEN];
        let header = Header {
            next_payload: payloads.first().map_or(payload_type::NONE, Payload::kind),
            length: (HEADER_LEN + body.len()) as u32,
            ..header
        };
        header.emit(&mut out);
        out.extend_from_slice(&body);
        out
    }
}

/// Parses an inner payload chain (the plaintext of an SK payload).
pub fn parse_payloads(first: u8, bytes: &[u8]) -> Result<Vec<Payload>, ParseError> {
    parse_chain(first, bytes, 0, false)
}

fn parse_chain(
    mut next: u8,
    bytes: &[u8],
    mut at: usize,
    allow_sk: bool,
) -> Result<Vec<Payload>, ParseError> {
    let mut payloads = Vec::new();
    while next != payload_type::NONE {
        let generic = bytes.get(at..at + 4).ok_or(ParseError::Truncated)?;
        let following = generic[0];
        let critical = generic[1] & 0x80 != 0;
        let len = usize::from(u16::from_be_bytes([generic[2], generic[3]]));
        if len < 4 {
            return Err(ParseError::BadLength);
        }
        let body = bytes.get(at + 4..at + len).ok_or(ParseError::Truncated)?;
        if next == payload_type::SK {
            if !allow_sk {
                return Err(ParseError::Malformed("nested SK payload"));
            }
            // SK is always last: its "next payload" names the first inner payload, and its
            // body runs to the end of the message.
            if at + len != bytes.len() {
                return Err(ParseError::BadLength);
            }
            payloads.push(Payload::Encrypted {
                first_payload: following,
                offset: at,
            });
            return Ok(payloads);
        }
        if next == payload_type::SKF {
            // Like SK, and only where SK could be: last, never inside an SK payload.
            if !allow_sk {
                return Err(ParseError::Malformed("nested SKF payload"));
            }
            if at + len != bytes.len() {
                return Err(ParseError::BadLength);
            }
            let &[n0, n1, t0, t1, ..] = body else {
                return Err(ParseError::Truncated);
            };
            let (number, total) = (u16::from_be_bytes([n0, n1]), u16::from_be_bytes([t0, t1]));
            if number == 0 || number > total {
                return Err(ParseError::Malformed("fragment number out of range"));
            }
            payloads.push(Payload::EncryptedFragment {
                first_payload: following,
                offset: at,
                number,
                total,
            });
            return Ok(payloads);
        }
        payloads.push(parse_payload(next, critical, body)?);
        at += len;
        next = following;
        if payloads.len() > 64 {
            return Err(ParseError::Malformed("too many payloads"));
        }
    }
    if at != bytes.len() {
        return Err(ParseError::BadLength);
    }
    Ok(payloads)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let out = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or(ParseError::Truncated)?;
        self.at += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn rest(&mut self) -> &'a [u8] {
        let out = self.bytes.get(self.at..).unwrap_or(&[]);
        self.at = self.bytes.len();
        out
    }

    fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }
}

fn parse_payload(kind: u8, critical: bool, body: &[u8]) -> Result<Payload, ParseError> {
    use payload_type as t;
    let mut r = Reader::new(body);
    Ok(match kind {
        t::SA => Payload::Sa(parse_proposals(body)?),
        t::KE => {
            let group = r.u16()?;
            r.take(2)?;
            Payload::Ke {
                group,
                data: r.rest().to_vec(),
            }
        }
        t::IDI | t::IDR => {
            let id_kind = r.u8()?;
            let reserved = r.take(3)?;
            let id = Identification {
                kind: id_kind,
                data: r.rest().to_vec(),
                reserved: [reserved[0], reserved[1], reserved[2]],
            };
            if kind == t::IDI {
                Payload::IdI(id)
            } else {
                Payload::IdR(id)
            }
        }
        t::AUTH => {
            let method = r.u8()?;
            r.take(3)?;
            Payload::Auth {
                method,
                data: r.rest().to_vec(),
            }
        }
        t::NONCE => {
            // RFC 7296 section 3.9: 16 to 256 octets.
            if !(16..=256).contains(&body.len()) {
                return Err(ParseError::Malformed("nonce length"));
            }
            Payload::Nonce(body.to_vec())
        }
        t::NOTIFY => {
            let protocol = r.u8()?;
            let spi_len = usize::from(r.u8()?);
            let notify_kind = r.u16()?;
            let spi = r.take(spi_len)?.to_vec();
            Payload::Notify(Notify {
                protocol,
                spi,
                kind: notify_kind,
                data: r.rest().to_vec(),
            })
        }
        t::DELETE => {
            let protocol = r.u8()?;
            let spi_len = usize::from(r.u8()?);
            let count = usize::from(r.u16()?);
            let mut spis = Vec::new();
            for _ in 0..count {
                spis.push(r.take(spi_len)?.to_vec());
            }
            if !r.is_empty() {
                return Err(ParseError::BadLength);
            }
            Payload::Delete { protocol, spis }
        }
        t::VENDOR_ID => Payload::VendorId(body.to_vec()),
        t::TSI | t::TSR => {
            let count = r.u8()?;
            r.take(3)?;
            let mut selectors = Vec::new();
            for _ in 0..count {
                selectors.push(parse_selector(&mut r)?);
            }
            if !r.is_empty() {
                return Err(ParseError::BadLength);
            }
            if kind == t::TSI {
                Payload::TsI(selectors)
            } else {
                Payload::TsR(selectors)
            }
        }
        t::CP => {
            let cfg_type = r.u8()?;
            r.take(3)?;
            let mut attributes = Vec::new();
            while !r.is_empty() {
                if attributes.len() == cfg::MAX_ATTRIBUTES {
                    return Err(ParseError::Malformed("too many configuration attributes"));
                }
                // The top bit is reserved (RFC 7296 section 3.15.1): ignored on receipt.
                let attr_kind = r.u16()? & 0x7fff;
                let len = usize::from(r.u16()?);
                attributes.push(ConfigAttribute {
                    kind: attr_kind,
                    value: r.take(len)?.to_vec(),
                });
            }
            Payload::Cp {
                cfg_type,
                attributes,
            }
        }
        // Payloads of RFC 7296 that are read elsewhere (certificates) or not at all (EAP),
        // whatever their critical bit, which is for types the receiver does not
        // understand (section 3.2).
        t::CERT | t::CERTREQ | t::EAP => Payload::Other {
            kind,
            body: body.to_vec(),
        },
        // Any other type (later extensions: GSPM, group keying, puzzles...) is unknown
        // here: the whole message is refused when it is critical (section 2.5).
        _ if critical => return Err(ParseError::UnsupportedCritical(kind)),
        _ => Payload::Other {
            kind,
            body: body.to_vec(),
        },
    })
}

fn parse_selector(r: &mut Reader<'_>) -> Result<TrafficSelector, ParseError> {
    let ts_type = r.u8()?;
    let protocol = r.u8()?;
    let len = usize::from(r.u16()?);
    let start_port = r.u16()?;
    let end_port = r.u16()?;
    let (start, end) = match (ts_type, len) {
        (TS_IPV4_ADDR_RANGE, 16) => {
            let s = r.take(4)?;
            let e = r.take(4)?;
            (
                IpAddr::V4(Ipv4Addr::new(s[0], s[1], s[2], s[3])),
                IpAddr::V4(Ipv4Addr::new(e[0], e[1], e[2], e[3])),
            )
        }
        (TS_IPV6_ADDR_RANGE, 40) => {
            let mut s = [0u8; 16];
            s.copy_from_slice(r.take(16)?);
            let mut e = [0u8; 16];
            e.copy_from_slice(r.take(16)?);
            (IpAddr::V6(Ipv6Addr::from(s)), IpAddr::V6(Ipv6Addr::from(e)))
        }
        _ => return Err(ParseError::Malformed("traffic selector type or length")),
    };
    Ok(TrafficSelector {
        protocol,
        start_port,
        end_port,
        start,
        end,
    })
}

fn parse_proposals(body: &[u8]) -> Result<Vec<Proposal>, ParseError> {
    let mut proposals = Vec::new();
    let mut r = Reader::new(body);
    loop {
        let last = r.u8()?;
        r.take(1)?;
        let len = usize::from(r.u16()?);
        let inner = r
            .take(len.checked_sub(4).ok_or(ParseError::BadLength)?)
            .map_err(|_| ParseError::BadLength)?;
        let mut p = Reader::new(inner);
        let number = p.u8()?;
        let protocol = p.u8()?;
        let spi_len = usize::from(p.u8()?);
        let count = p.u8()?;
        let spi = p.take(spi_len)?.to_vec();
        let mut transforms = Vec::new();
        for i in 0..count {
            let t_last = p.u8()?;
            if (t_last == 0) != (i + 1 == count) || (t_last != 0 && t_last != 3) {
                return Err(ParseError::Malformed("transform last flag"));
            }
            p.take(1)?;
            let t_len = usize::from(p.u16()?);
            let t_body = p
                .take(t_len.checked_sub(4).ok_or(ParseError::BadLength)?)
                .map_err(|_| ParseError::BadLength)?;
            let mut t = Reader::new(t_body);
            let kind = t.u8()?;
            t.take(1)?;
            let id = t.u16()?;
            let mut key_len = None;
            let mut unknown_attributes = false;
            while !t.is_empty() {
                let attr = t.u16()?;
                if attr & 0x8000 != 0 {
                    let value = t.u16()?;
                    let key_length = attr & 0x7fff == transform::ATTR_KEY_LENGTH;
                    if key_length && kind == transform::ENCR && key_len.is_none() {
                        key_len = Some(value);
                    } else {
                        unknown_attributes = true;
                    }
                } else {
                    // TLV attributes: none defined for IKEv2.
                    let l = usize::from(t.u16()?);
                    t.take(l)?;
                    unknown_attributes = true;
                }
            }
            transforms.push(Transform {
                kind,
                id,
                key_len,
                unknown_attributes,
            });
        }
        if !p.is_empty() {
            return Err(ParseError::BadLength);
        }
        proposals.push(Proposal {
            number,
            protocol,
            spi,
            transforms,
        });
        match last {
            0 => break,
            2 => continue,
            _ => return Err(ParseError::Malformed("proposal last flag")),
        }
    }
    if !r.is_empty() {
        return Err(ParseError::BadLength);
    }
    Ok(proposals)
}

/// Emits a payload chain; the last payload's "next payload" is `trailing_next`.
pub fn emit_payloads(payloads: &[Payload], trailing_next: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, payload) in payloads.iter().enumerate() {
        let next = payloads.get(i + 1).map_or(trailing_next, Payload::kind);
        let body = emit_body(payload);
        out.push(next);
        out.push(0);
        out.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
        out.extend_from_slice(&body);
    }
    out
}

fn emit_body(payload: &Payload) -> Vec<u8> {
    let mut b = Vec::new();
    match payload {
        Payload::Sa(proposals) => {
            for (i, p) in proposals.iter().enumerate() {
                let mut body = vec![p.number, p.protocol, p.spi.len() as u8];
                body.push(p.transforms.len() as u8);
                body.extend_from_slice(&p.spi);
                for (j, t) in p.transforms.iter().enumerate() {
                    let t_len: u16 = if t.key_len.is_some() { 12 } else { 8 };
                    body.push(if j + 1 == p.transforms.len() { 0 } else { 3 });
                    body.push(0);
                    body.extend_from_slice(&t_len.to_be_bytes());
                    body.push(t.kind);
                    body.push(0);
                    body.extend_from_slice(&t.id.to_be_bytes());
                    if let Some(k) = t.key_len {
                        body.extend_from_slice(
                            &(0x8000 | transform::ATTR_KEY_LENGTH).to_be_bytes(),
                        );
                        body.extend_from_slice(&k.to_be_bytes());
                    }
                }
                b.push(if i + 1 == proposals.len() { 0 } else { 2 });
                b.push(0);
                b.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
                b.extend_from_slice(&body);
            }
        }
        Payload::Ke { group, data } => {
            b.extend_from_slice(&group.to_be_bytes());
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(data);
        }
        Payload::IdI(id) | Payload::IdR(id) => b = id.body(),
        Payload::Auth { method, data } => {
            b.extend_from_slice(&[*method, 0, 0, 0]);
            b.extend_from_slice(data);
        }
        Payload::Nonce(n) | Payload::VendorId(n) => b.extend_from_slice(n),
        Payload::Notify(n) => {
            b.push(n.protocol);
            b.push(n.spi.len() as u8);
            b.extend_from_slice(&n.kind.to_be_bytes());
            b.extend_from_slice(&n.spi);
            b.extend_from_slice(&n.data);
        }
        Payload::Delete { protocol, spis } => {
            b.push(*protocol);
            b.push(spis.first().map_or(0, |s| s.len() as u8));
            b.extend_from_slice(&(spis.len() as u16).to_be_bytes());
            for spi in spis {
                b.extend_from_slice(spi);
            }
        }
        Payload::TsI(selectors) | Payload::TsR(selectors) => {
            b.extend_from_slice(&[selectors.len() as u8, 0, 0, 0]);
            for ts in selectors {
                let (ts_type, len) = match ts.start {
                    IpAddr::V4(_) => (TS_IPV4_ADDR_RANGE, 16u16),
                    IpAddr::V6(_) => (TS_IPV6_ADDR_RANGE, 40u16),
                };
                b.push(ts_type);
                b.push(ts.protocol);
                b.extend_from_slice(&len.to_be_bytes());
                b.extend_from_slice(&ts.start_port.to_be_bytes());
                b.extend_from_slice(&ts.end_port.to_be_bytes());
                for addr in [ts.start, ts.end] {
                    match addr {
                        IpAddr::V4(a) => b.extend_from_slice(&a.octets()),
                        IpAddr::V6(a) => b.extend_from_slice(&a.octets()),
                    }
                }
            }
        }
        Payload::Cp {
            cfg_type,
            attributes,
        } => {
            b.extend_from_slice(&[*cfg_type, 0, 0, 0]);
            for a in attributes {
                b.extend_from_slice(&a.kind.to_be_bytes());
                b.extend_from_slice(&(a.value.len() as u16).to_be_bytes());
                b.extend_from_slice(&a.value);
            }
        }
        Payload::Encrypted { .. } | Payload::EncryptedFragment { .. } => {}
        Payload::Other { body, .. } => b.extend_from_slice(body),
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<Payload> {
        vec![
            Payload::Sa(vec![
                Proposal {
                    number: 1,
                    protocol: protocol::IKE,
                    spi: vec![],
                    transforms: vec![
                        Transform {
                            kind: transform::ENCR,
                            id: 20,
                            key_len: Some(128),
                            unknown_attributes: false,
                        },
                        Transform {
                            kind: transform::PRF,
                            id: 5,
                            key_len: None,
                            unknown_attributes: false,
                        },
                        Transform {
                            kind: transform::DH,
                            id: 31,
                            key_len: None,
                            unknown_attributes: false,
                        },
                    ],
                },
                Proposal {
                    number: 2,
                    protocol: protocol::ESP,
                    spi: vec![1, 2, 3, 4],
                    transforms: vec![Transform {
                        kind: transform::ESN,
                        id: 0,
                        key_len: None,
                        unknown_attributes: false,
                    }],
                },
            ]),
            Payload::Ke {
                group: 31,
                data: vec![9; 32],
            },
            Payload::Nonce(vec![7; 32]),
            Payload::Notify(Notify::new(notify::NAT_DETECTION_SOURCE_IP, vec![1; 20])),
            Payload::IdI(Identification::new(id_type::FQDN, b"a.example".to_vec())),
            Payload::Auth {
                method: AUTH_METHOD_PSK,
                data: vec![3; 32],
            },
            Payload::TsI(vec![TrafficSelector {
                protocol: 0,
                start_port: 0,
                end_port: 65535,
                start: "198.18.0.0".parse().unwrap(),
                end: "198.18.255.255".parse().unwrap(),
            }]),
            Payload::TsR(vec![TrafficSelector {
                protocol: 6,
                start_port: 80,
                end_port: 80,
                start: "2001:db8::".parse().unwrap(),
                end: "2001:db8::ffff".parse().unwrap(),
            }]),
            Payload::Delete {
                protocol: protocol::ESP,
                spis: vec![vec![0, 0, 1, 0], vec![0, 0, 2, 0]],
            },
            Payload::Cp {
                cfg_type: cfg::REQUEST,
                attributes: vec![ConfigAttribute {
                    kind: cfg::INTERNAL_IP4_ADDRESS,
                    value: vec![],
                }],
            },
            Payload::VendorId(b"switchyard".to_vec()),
        ]
    }

    fn header() -> Header {
        Header {
            spi_i: 0x0102030405060708,
            spi_r: 0,
            next_payload: 0,
            version: VERSION,
            exchange: exchange::IKE_SA_INIT,
            flags: FLAG_INITIATOR,
            message_id: 0,
            length: 0,
        }
    }

    #[test]
    fn round_trip() {
        let bytes = Message::emit(header(), &sample());
        let parsed = Message::parse(&bytes).unwrap();
        assert_eq!(parsed.payloads, sample());
        assert_eq!(parsed.header.next_payload, payload_type::SA);
        assert_eq!(parsed.header.length as usize, bytes.len());
        // Every strict prefix is refused.
        for cut in 0..bytes.len() {
            assert!(Message::parse(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn version_and_critical_bits() {
        let mut bytes = Message::emit(header(), &[Payload::Nonce(vec![1; 16])]);
        bytes[17] = 0x30;
        assert_eq!(
            Message::parse(&bytes),
            Err(ParseError::UnsupportedVersion(3))
        );
        // An unknown payload type (99) with the critical bit set.
        let mut unknown = Message::emit(
            header(),
            &[Payload::Other {
                kind: 99,
                body: vec![1, 2],
            }],
        );
        assert!(matches!(
            Message::parse(&unknown).unwrap().payloads[0],
            Payload::Other { kind: 99, .. }
        ));
        unknown[HEADER_LEN + 1] = 0x80;
        assert_eq!(
            Message::parse(&unknown),
            Err(ParseError::UnsupportedCritical(99))
        );
        // Nonce too short.
        let short = Message::emit(header(), &[Payload::Nonce(vec![1; 15])]);
        assert!(Message::parse(&short).is_err());
    }

    #[test]
    fn id_reserved_octets_are_kept_for_auth_and_ignored_for_the_identity() {
        // An IDi as libreswan sends it with `--impair send-nonzero-reserved-id`: ID_FQDN,
        // RESERVED 00 00 01 (RFC 7296 section 3.5: sent as zero, ignored on receipt).
        let mut body = vec![id_type::FQDN, 0, 0, 1];
        body.extend_from_slice(b"ls.example");
        let mut bytes = Message::emit(header(), &[]);
        bytes[16] = payload_type::IDI;
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
        bytes.extend_from_slice(&body);
        let total = bytes.len() as u32;
        bytes[24..28].copy_from_slice(&total.to_be_bytes());
        let parsed = Message::parse(&bytes).unwrap();
        let Payload::IdI(id) = &parsed.payloads[0] else {
            panic!("{:?}", parsed.payloads);
        };
        // AUTH covers IDType | RESERVED | data as received (section 2.15).
        assert_eq!(id.body(), body);
        assert_eq!(id.reserved, [0, 0, 1]);
        // The identity is the same as with RESERVED zero.
        let plain = Identification::new(id_type::FQDN, b"ls.example".to_vec());
        assert_eq!(*id, plain);
        assert_eq!(plain.body()[1..4], [0, 0, 0]);
        // What we send has RESERVED zero.
        let ours = Message::emit(header(), &[Payload::IdI(plain)]);
        assert_eq!(ours[HEADER_LEN + 5..HEADER_LEN + 8], [0, 0, 0]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), first in 33u8..48) {
            let _ = Message::parse(&data);
            let _ = parse_payloads(first, &data);
        }

        #[test]
        fn mutated_messages_never_panic(flip in any::<(usize, u8)>(), cut in 0usize..2000) {
            let mut bytes = Message::emit(header(), &sample());
            let at = flip.0 % bytes.len();
            bytes[at] ^= flip.1;
            let _ = Message::parse(&bytes);
            let _ = parse_payloads(payload_type::SA, &bytes[HEADER_LEN.min(cut)..]);
        }
    }
}
