//! Message framing and the non-UPDATE messages (RFC 4271 §4, §6.1).
//!
//! The byte stream from TCP is cut into messages here, with the header
//! checks of §6.1 done before any body is looked at; OPEN is decoded and
//! every message we send is encoded through netgauze. UPDATE bodies go
//! through [`crate::update_check`] first (RFC 7606 needs the raw bytes).

use crate::notification::{self, Notification};
use netgauze_bgp_pkt::open::BgpOpenMessage;
use netgauze_bgp_pkt::route_refresh::BgpRouteRefreshMessage;
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_parse_utils::WritablePdu;

pub const MSG_OPEN: u8 = 1;
pub const MSG_UPDATE: u8 = 2;
pub const MSG_NOTIFICATION: u8 = 3;
pub const MSG_KEEPALIVE: u8 = 4;
pub const MSG_ROUTE_REFRESH: u8 = 5;

pub const HEADER_LEN: usize = 19;
/// RFC 4271 maximum; OPEN and KEEPALIVE stay bound by it even with
/// extended messages (RFC 8654 §4).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// RFC 8654 maximum once extended messages are negotiated.
pub const MAX_EXTENDED_MESSAGE_LEN: usize = 65535;

/// One framed message: its type and the whole message (header included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub msg_type: u8,
    pub bytes: Vec<u8>,
}

impl Frame {
    pub fn body(&self) -> &[u8] {
        self.bytes.get(HEADER_LEN..).unwrap_or(&[])
    }
}

/// Accumulates TCP bytes and cuts them into messages.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    start: usize,
}

impl Framer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        // Compact lazily so a stream of small messages is not quadratic.
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet framed.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// The next complete message, `Ok(None)` when more bytes are needed, or
    /// the Message Header Error to send. After an error the stream is
    /// unusable and the session must close.
    pub fn next_frame(&mut self, max_len: usize) -> Result<Option<Frame>, Notification> {
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = check_header(&avail[..HEADER_LEN], max_len)?;
        if avail.len() < header.len {
            return Ok(None);
        }
        let bytes = avail[..header.len].to_vec();
        self.start += header.len;
        Ok(Some(Frame {
            msg_type: header.msg_type,
            bytes,
        }))
    }
}

struct Header {
    len: usize,
    msg_type: u8,
}

/// RFC 4271 §6.1 checks, in the RFC's order: marker, length, type.
fn check_header(h: &[u8], max_len: usize) -> Result<Header, Notification> {
    if h[..16].iter().any(|b| *b != 0xff) {
        return Err(Notification::header(
            notification::header::CONNECTION_NOT_SYNCHRONIZED,
            Vec::new(),
        ));
    }
    let len_field = [h[16], h[17]];
    let len = usize::from(u16::from_be_bytes(len_field));
    let msg_type = h[18];
    let bad_len =
        || Notification::header(notification::header::BAD_MESSAGE_LENGTH, len_field.to_vec());
    let (min, max) = match msg_type {
        MSG_OPEN => (29, MAX_MESSAGE_LEN),
        MSG_UPDATE => (23, max_len),
        MSG_NOTIFICATION => (21, max_len),
        MSG_KEEPALIVE => (19, 19),
        // A ROUTE-REFRESH of the wrong length is its own error, 7/1 with the message
        // (RFC 7313 §5), which `decode_route_refresh` sends.
        MSG_ROUTE_REFRESH => (HEADER_LEN, max_len),
        other => {
            // Length is checked before type (§6.1 lists it first).
            if !(HEADER_LEN..=max_len).contains(&len) {
                return Err(bad_len());
            }
            return Err(Notification::header(
                notification::header::BAD_MESSAGE_TYPE,
                vec![other],
            ));
        }
    };
    if len < min || len > max {
        return Err(bad_len());
    }
    Ok(Header { len, msg_type })
}

/// A ROUTE-REFRESH request (RFC 2918): AFI, subtype (RFC 7313), SAFI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    pub afi: u16,
    pub subtype: u8,
    pub safi: u8,
}

/// RFC 7313 §5: a ROUTE-REFRESH of the wrong length is answered with
/// NOTIFICATION 7/1 carrying the message.
pub fn decode_route_refresh(frame: &Frame) -> Result<RouteRefresh, Notification> {
    match frame.body() {
        [a0, a1, subtype, safi] => Ok(RouteRefresh {
            afi: u16::from_be_bytes([*a0, *a1]),
            subtype: *subtype,
            safi: *safi,
        }),
        _ => Err(Notification::new(
            notification::code::ROUTE_REFRESH,
            1,
            frame.bytes.clone(),
        )),
    }
}

/// Errors while encoding our own messages: these are bugs or oversize
/// input, never peer behaviour.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("netgauze could not encode the message: {0}")]
    Netgauze(String),
    #[error("message of {0} bytes exceeds the negotiated maximum")]
    TooLong(usize),
}

pub fn encode_message(msg: &BgpMessage, max_len: usize) -> Result<Vec<u8>, EncodeError> {
    let len = msg.len();
    if len > max_len {
        return Err(EncodeError::TooLong(len));
    }
    let mut out = Vec::with_capacity(len);
    msg.write(&mut out)
        .map_err(|e| EncodeError::Netgauze(format!("{e:?}")))?;
    Ok(out)
}

pub fn encode_open(open: BgpOpenMessage) -> Result<Vec<u8>, EncodeError> {
    encode_message(&BgpMessage::Open(open), MAX_MESSAGE_LEN)
}

pub fn encode_update(update: BgpUpdateMessage, max_len: usize) -> Result<Vec<u8>, EncodeError> {
    encode_message(&BgpMessage::Update(update), max_len)
}

pub fn encode_route_refresh(rr: BgpRouteRefreshMessage) -> Result<Vec<u8>, EncodeError> {
    encode_message(&BgpMessage::RouteRefresh(rr), MAX_MESSAGE_LEN)
}

pub fn keepalive() -> Vec<u8> {
    let mut out = vec![0xff; 16];
    out.extend_from_slice(&19u16.to_be_bytes());
    out.push(MSG_KEEPALIVE);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::notification::header as h;

    pub(crate) fn msg(len: u16, ty: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![0xff; 16];
        v.extend_from_slice(&len.to_be_bytes());
        v.push(ty);
        v.extend_from_slice(body);
        v
    }

    fn first(bytes: &[u8]) -> Result<Option<Frame>, Notification> {
        let mut f = Framer::new();
        f.push(bytes);
        f.next_frame(MAX_MESSAGE_LEN)
    }

    #[test]
    fn header_error_table() {
        // (bytes, expected code/subcode/data), one row per RFC 4271 §6.1 rule.
        let mut bad_marker = keepalive();
        bad_marker[3] = 0;
        let cases: Vec<(Vec<u8>, u8, Vec<u8>)> = vec![
            (bad_marker, h::CONNECTION_NOT_SYNCHRONIZED, vec![]),
            (
                msg(18, MSG_KEEPALIVE, &[]),
                h::BAD_MESSAGE_LENGTH,
                vec![0, 18],
            ),
            (
                msg(20, MSG_KEEPALIVE, &[0]),
                h::BAD_MESSAGE_LENGTH,
                vec![0, 20],
            ),
            (
                msg(22, MSG_UPDATE, &[0, 0, 0]),
                h::BAD_MESSAGE_LENGTH,
                vec![0, 22],
            ),
            (
                msg(28, MSG_OPEN, &[0; 9]),
                h::BAD_MESSAGE_LENGTH,
                vec![0, 28],
            ),
            (
                msg(20, MSG_NOTIFICATION, &[6]),
                h::BAD_MESSAGE_LENGTH,
                vec![0, 20],
            ),
            (
                msg(5000, MSG_UPDATE, &[]),
                h::BAD_MESSAGE_LENGTH,
                vec![0x13, 0x88],
            ),
            (msg(19, 9, &[]), h::BAD_MESSAGE_TYPE, vec![9]),
        ];
        for (bytes, sub, data) in cases {
            let n = first(&bytes).unwrap_err();
            assert_eq!((n.code, n.subcode, n.data), (1, sub, data), "{bytes:?}");
        }
    }

    #[test]
    fn extended_message_allows_large_update_not_keepalive() {
        let mut f = Framer::new();
        f.push(&msg(5000, MSG_UPDATE, &vec![0; 4981]));
        assert!(f.next_frame(MAX_EXTENDED_MESSAGE_LEN).unwrap().is_some());
    }

    #[test]
    fn frames_split_across_pushes() {
        let ka = keepalive();
        let mut f = Framer::new();
        f.push(&ka[..10]);
        assert_eq!(f.next_frame(MAX_MESSAGE_LEN), Ok(None));
        f.push(&ka[10..]);
        f.push(&ka);
        assert_eq!(f.next_frame(MAX_MESSAGE_LEN).unwrap().unwrap().bytes, ka);
        assert_eq!(f.next_frame(MAX_MESSAGE_LEN).unwrap().unwrap().bytes, ka);
        assert_eq!(f.next_frame(MAX_MESSAGE_LEN), Ok(None));
    }

    #[test]
    fn route_refresh_length_error() {
        let f = Frame {
            msg_type: MSG_ROUTE_REFRESH,
            bytes: msg(24, MSG_ROUTE_REFRESH, &[0, 1, 0, 1, 0]),
        };
        assert_eq!(decode_route_refresh(&f).unwrap_err().code, 7);
        // Shorter than a ROUTE-REFRESH: framed, then 7/1 with the whole message (RFC 7313 §5),
        // not a header error.
        let short = msg(22, MSG_ROUTE_REFRESH, &[0, 1, 0]);
        let f = first(&short).unwrap().unwrap();
        let n = decode_route_refresh(&f).unwrap_err();
        assert_eq!((n.code, n.subcode, n.data), (7, 1, short));
    }
}
