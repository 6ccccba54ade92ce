//! OPEN messages: decoding, validation (RFC 4271 §6.2, RFC 6286, RFC 6793,
//! RFC 7607) and building ours.
//!
//! The 10-byte fixed part is read here rather than by netgauze because
//! netgauze rejects multicast/broadcast-looking BGP identifiers, which RFC
//! 6286 §2.1 allows (any non-zero 32-bit value). Capabilities are decoded
//! by netgauze one TLV at a time, so a capability it cannot parse is
//! skipped as RFC 5492 §3 asks, with guaranteed progress.

use crate::capability::{self, AS_TRANS};
use crate::config::SessionConfig;
use crate::notification::{self, Notification};
use crate::wire::{self, EncodeError, Frame};
use netgauze_bgp_pkt::capabilities::BgpCapability;
use netgauze_bgp_pkt::open::{BgpOpenMessage, BgpOpenMessageParameter};
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFrom;
use std::net::Ipv4Addr;

const PARAM_CAPABILITIES: u8 = 2;
/// The Non-Ext OP Type that announces RFC 9072's extended optional parameters.
const EXTENDED_PARAMETERS: u8 = 255;

/// A `size`-byte (1 or 2) big-endian length at the front of `bytes`, and what follows.
fn split_length(bytes: &[u8], size: usize) -> Option<(usize, &[u8])> {
    let (len, rest) = bytes.split_at_checked(size)?;
    Some((len.iter().fold(0, |n, &b| n << 8 | usize::from(b)), rest))
}

/// A decoded OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenMessage {
    pub version: u8,
    /// The 2-octet My Autonomous System field.
    pub my_as: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub capabilities: Vec<BgpCapability>,
}

impl OpenMessage {
    /// The peer's AS: the 4-octet AS capability when present (RFC 6793
    /// §4.1), else the 2-octet field.
    pub fn peer_as(&self) -> u32 {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                BgpCapability::FourOctetAs(a) => Some(a.asn4()),
                _ => None,
            })
            .unwrap_or(u32::from(self.my_as))
    }
}

/// Decodes an OPEN frame; syntax errors come back as NOTIFICATIONs.
pub fn decode(frame: &Frame) -> Result<OpenMessage, Notification> {
    let body = frame.body();
    let (fixed, rest) = match body.split_first_chunk::<10>() {
        Some(v) => v,
        None => return Err(bad_length(frame)),
    };
    let version = fixed[0];
    if version != 4 {
        // Data: the largest version we support (RFC 4271 §6.2).
        return Err(Notification::open(
            notification::open::UNSUPPORTED_VERSION,
            vec![0, 4],
        ));
    }
    let my_as = u16::from_be_bytes([fixed[1], fixed[2]]);
    let hold_time = u16::from_be_bytes([fixed[3], fixed[4]]);
    let bgp_id = Ipv4Addr::new(fixed[5], fixed[6], fixed[7], fixed[8]);
    let opt_len = usize::from(fixed[9]);
    // RFC 9072: a Non-Ext OP Length and Type of 255 say the parameters follow with a 2-byte
    // total length, and each with a 2-byte length.
    let extended = opt_len == 255 && rest.first() == Some(&EXTENDED_PARAMETERS);
    let (params_len, mut params, len_size) = match rest {
        [_, hi, lo, tail @ ..] if extended => {
            (usize::from(u16::from_be_bytes([*hi, *lo])), tail, 2)
        }
        _ => (opt_len, rest, 1),
    };
    if params.len() != params_len {
        // The parameters disagree with the message length.
        return Err(bad_length(frame));
    }
    let mut capabilities = Vec::new();
    while let Some((&ptype, tail)) = params.split_first() {
        let Some((plen, tail)) = split_length(tail, len_size) else {
            return Err(Notification::open(0, Vec::new()));
        };
        let Some((value, tail)) = tail.split_at_checked(plen) else {
            return Err(Notification::open(0, Vec::new()));
        };
        params = tail;
        if ptype != PARAM_CAPABILITIES {
            // Data: the parameter's type and length as it came.
            let mut data = vec![ptype];
            data.extend_from_slice(&(plen as u16).to_be_bytes()[2 - len_size..]);
            return Err(Notification::open(
                notification::open::UNSUPPORTED_OPTIONAL_PARAMETER,
                data,
            ));
        }
        decode_capabilities(value, &mut capabilities)?;
    }
    Ok(OpenMessage {
        version,
        my_as,
        hold_time,
        bgp_id,
        capabilities,
    })
}

fn bad_length(frame: &Frame) -> Notification {
    let len = frame.bytes.get(16..18).unwrap_or(&[]).to_vec();
    Notification::header(notification::header::BAD_MESSAGE_LENGTH, len)
}

fn decode_capabilities(mut buf: &[u8], out: &mut Vec<BgpCapability>) -> Result<(), Notification> {
    while !buf.is_empty() {
        let tlv_len = match buf {
            [_, l, tail @ ..] if tail.len() >= usize::from(*l) => 2 + usize::from(*l),
            _ => return Err(Notification::open(0, Vec::new())),
        };
        let (tlv, tail) = buf.split_at(tlv_len);
        buf = tail;
        let mut reader = SliceReader::new(tlv);
        // A capability netgauze cannot parse is one we do not support.
        if let Ok(cap) = BgpCapability::parse(&mut reader) {
            out.push(cap);
        }
    }
    Ok(())
}

/// Semantic checks that need our configuration. Returns the peer's AS.
pub fn validate(open: &OpenMessage, cfg: &SessionConfig) -> Result<u32, Notification> {
    use notification::open as o;
    let peer_as = open.peer_as();
    // RFC 7607: AS 0 is never valid. RFC 6793 §4.1: a 2-octet AS_TRANS
    // without the capability cannot name the real AS either.
    if peer_as == 0 || peer_as != cfg.peer_as {
        let data = open.my_as.to_be_bytes().to_vec();
        return Err(Notification::open(o::BAD_PEER_AS, data));
    }
    // RFC 4271 §6.2: hold time 1 or 2 MUST be rejected.
    if open.hold_time == 1 || open.hold_time == 2 {
        return Err(Notification::open(o::UNACCEPTABLE_HOLD_TIME, Vec::new()));
    }
    // RFC 6286 §2.2: zero is invalid; equal to ours is invalid only for
    // iBGP (eBGP peers in other ASes may share an identifier).
    let id = u32::from(open.bgp_id);
    if id == 0 || (cfg.is_ibgp() && open.bgp_id == cfg.router_id) {
        return Err(Notification::open(o::BAD_BGP_IDENTIFIER, Vec::new()));
    }
    Ok(peer_as)
}

/// Our OPEN, encoded.
pub fn encode_local(cfg: &SessionConfig) -> Result<Vec<u8>, EncodeError> {
    let my_as = u16::try_from(cfg.local_as).unwrap_or(AS_TRANS as u16);
    let caps = capability::local_capabilities(cfg);
    let open = BgpOpenMessage::new(
        my_as,
        cfg.hold_time,
        cfg.router_id,
        vec![BgpOpenMessageParameter::Capabilities(caps.into())],
    );
    wire::encode_open(open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MSG_OPEN;

    fn frame(ver: u8, my_as: u16, hold: u16, id: [u8; 4], params: &[u8]) -> Frame {
        let mut b = vec![ver];
        b.extend_from_slice(&my_as.to_be_bytes());
        b.extend_from_slice(&hold.to_be_bytes());
        b.extend_from_slice(&id);
        b.push(params.len() as u8);
        b.extend_from_slice(params);
        let len = (19 + b.len()) as u16;
        Frame {
            msg_type: MSG_OPEN,
            bytes: crate::wire::tests::msg(len, MSG_OPEN, &b),
        }
    }

    fn cfg(peer_as: u32) -> SessionConfig {
        SessionConfig::new(65000, Ipv4Addr::new(10, 0, 0, 1), peer_as)
    }

    /// One row per RFC 4271 §6.2 / RFC 6286 / RFC 6793 rule.
    #[test]
    fn open_error_table() {
        use notification::open as o;
        let cap4 = |asn: u32| {
            let mut v = vec![2, 6, 65, 4];
            v.extend_from_slice(&asn.to_be_bytes());
            v
        };
        let cases: Vec<(&str, Frame, SessionConfig, u8, u8)> = vec![
            (
                "version 3",
                frame(3, 65001, 90, [1, 1, 1, 1], &[]),
                cfg(65001),
                2,
                o::UNSUPPORTED_VERSION,
            ),
            (
                "hold 1",
                frame(4, 65001, 1, [1, 1, 1, 1], &[]),
                cfg(65001),
                2,
                o::UNACCEPTABLE_HOLD_TIME,
            ),
            (
                "hold 2",
                frame(4, 65001, 2, [1, 1, 1, 1], &[]),
                cfg(65001),
                2,
                o::UNACCEPTABLE_HOLD_TIME,
            ),
            (
                "id zero",
                frame(4, 65001, 90, [0, 0, 0, 0], &[]),
                cfg(65001),
                2,
                o::BAD_BGP_IDENTIFIER,
            ),
            (
                "ibgp same id",
                frame(4, 65000, 90, [10, 0, 0, 1], &[]),
                cfg(65000),
                2,
                o::BAD_BGP_IDENTIFIER,
            ),
            (
                "wrong AS",
                frame(4, 65002, 90, [1, 1, 1, 1], &[]),
                cfg(65001),
                2,
                o::BAD_PEER_AS,
            ),
            (
                "AS 0",
                frame(4, 0, 90, [1, 1, 1, 1], &[]),
                cfg(0),
                2,
                o::BAD_PEER_AS,
            ),
            (
                "AS_TRANS without cap",
                frame(4, 23456, 90, [1, 1, 1, 1], &[]),
                cfg(4_200_000_000),
                2,
                o::BAD_PEER_AS,
            ),
            (
                "cap AS wrong",
                frame(4, 23456, 90, [1, 1, 1, 1], &cap4(4_200_000_001)),
                cfg(4_200_000_000),
                2,
                o::BAD_PEER_AS,
            ),
            (
                "unknown param",
                frame(4, 65001, 90, [1, 1, 1, 1], &[7, 0]),
                cfg(65001),
                2,
                o::UNSUPPORTED_OPTIONAL_PARAMETER,
            ),
            (
                "param overrun",
                frame(4, 65001, 90, [1, 1, 1, 1], &[2, 9, 1]),
                cfg(65001),
                2,
                0,
            ),
        ];
        for (name, f, c, code, sub) in cases {
            let r = decode(&f).and_then(|o| validate(&o, &c));
            let n = r.expect_err(name);
            assert_eq!((n.code, n.subcode), (code, sub), "{name}");
        }
    }

    #[test]
    fn accepted_opens() {
        let cap4 = [2, 6, 65, 4, 0xfa, 0x56, 0xea, 0x00];
        let o = decode(&frame(4, 23456, 90, [1, 1, 1, 1], &cap4)).unwrap();
        assert_eq!(validate(&o, &cfg(4_200_000_000)), Ok(4_200_000_000));
        // eBGP peer with our own identifier is allowed (RFC 6286 §2.2).
        let o = decode(&frame(4, 65001, 0, [10, 0, 0, 1], &[])).unwrap();
        assert_eq!(validate(&o, &cfg(65001)), Ok(65001));
        // A multicast-looking identifier is a valid 32-bit id (RFC 6286).
        let o = decode(&frame(4, 65001, 3, [224, 0, 0, 1], &[2, 2, 200, 0])).unwrap();
        assert!(validate(&o, &cfg(65001)).is_ok());
        assert!(o.capabilities.len() == 1); // unknown capability kept as Unrecognized
    }

    /// RFC 9072: optional parameters with 2-byte lengths behind a Non-Ext OP Length and
    /// Type of 255.
    #[test]
    fn extended_optional_parameters() {
        let extended = |params: &[u8]| {
            let mut p = vec![255];
            p.extend_from_slice(&(params.len() as u16).to_be_bytes());
            p.extend_from_slice(params);
            let mut f = frame(4, 23456, 90, [1, 1, 1, 1], &p);
            // The Non-Ext OP Length byte says 255 whatever follows.
            f.bytes[19 + 9] = 255;
            f
        };
        // Capabilities (type 2, length 0x0006): a 4-octet AS.
        let o = decode(&extended(&[2, 0, 6, 65, 4, 0xfa, 0x56, 0xea, 0x00])).unwrap();
        assert_eq!(validate(&o, &cfg(4_200_000_000)), Ok(4_200_000_000));
        // An unknown parameter: 2/4, its type and 2-byte length as data.
        let n = decode(&extended(&[7, 0, 1, 0])).unwrap_err();
        assert_eq!(
            (n.code, n.subcode, n.data),
            (
                2,
                notification::open::UNSUPPORTED_OPTIONAL_PARAMETER,
                vec![7, 0, 1]
            )
        );
        // A length beyond the message: Bad Message Length.
        let mut f = extended(&[2, 0, 6, 65, 4, 0xfa, 0x56, 0xea, 0x00]);
        f.bytes[19 + 11] = 9;
        assert_eq!(decode(&f).unwrap_err().subcode, 2);
    }

    #[test]
    fn local_open_round_trips() {
        let mut c = cfg(65001);
        c.local_as = 4_200_000_000;
        let bytes = encode_local(&c).unwrap();
        let f = Frame {
            msg_type: MSG_OPEN,
            bytes,
        };
        let o = decode(&f).unwrap();
        assert_eq!(o.my_as, 23456);
        assert_eq!(o.peer_as(), 4_200_000_000);
        assert_eq!(o.bgp_id, c.router_id);
    }
}
