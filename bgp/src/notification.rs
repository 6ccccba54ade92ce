//! NOTIFICATION codes (RFC 4271 §4.5, §6) and their wire form.
//!
//! Errors are carried as plain `(code, subcode, data)`: that is all the
//! protocol needs, and it lets us send and receive subcodes newer than any
//! typed enum (netgauze's rejects unknown subcodes, and an unknown subcode
//! must still close the session with the peer's reason intact).

use std::fmt;

/// RFC 4271 §4.5 error codes.
pub mod code {
    pub const MESSAGE_HEADER: u8 = 1;
    pub const OPEN_MESSAGE: u8 = 2;
    pub const UPDATE_MESSAGE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
    /// RFC 7313.
    pub const ROUTE_REFRESH: u8 = 7;
}

/// Message Header Error subcodes (RFC 4271 §6.1).
pub mod header {
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    pub const BAD_MESSAGE_TYPE: u8 = 3;
}

/// OPEN Message Error subcodes (RFC 4271 §6.2, RFC 5492).
pub mod open {
    pub const UNSUPPORTED_VERSION: u8 = 1;
    pub const BAD_PEER_AS: u8 = 2;
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;
}

/// UPDATE Message Error subcodes (RFC 4271 §6.3).
pub mod update {
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    pub const UNRECOGNIZED_WELL_KNOWN: u8 = 2;
    pub const MISSING_WELL_KNOWN: u8 = 3;
    pub const ATTRIBUTE_FLAGS: u8 = 4;
    pub const ATTRIBUTE_LENGTH: u8 = 5;
    pub const INVALID_ORIGIN: u8 = 6;
    pub const INVALID_NEXT_HOP: u8 = 8;
    pub const OPTIONAL_ATTRIBUTE: u8 = 9;
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    pub const MALFORMED_AS_PATH: u8 = 11;
}

/// Finite State Machine Error subcodes (RFC 6608).
pub mod fsm {
    pub const UNSPECIFIED: u8 = 0;
    pub const UNEXPECTED_IN_OPEN_SENT: u8 = 1;
    pub const UNEXPECTED_IN_OPEN_CONFIRM: u8 = 2;
    pub const UNEXPECTED_IN_ESTABLISHED: u8 = 3;
}

/// Cease subcodes (RFC 4486).
pub mod cease {
    pub const MAX_PREFIXES: u8 = 1;
    pub const ADMIN_SHUTDOWN: u8 = 2;
    pub const PEER_DECONFIGURED: u8 = 3;
    pub const ADMIN_RESET: u8 = 4;
    pub const CONNECTION_REJECTED: u8 = 5;
    pub const OTHER_CONFIG_CHANGE: u8 = 6;
    pub const COLLISION_RESOLUTION: u8 = 7;
    pub const OUT_OF_RESOURCES: u8 = 8;
}

/// One NOTIFICATION: what we send on an error, or what a peer told us.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: impl Into<Vec<u8>>) -> Self {
        Self {
            code,
            subcode,
            data: data.into(),
        }
    }

    pub fn header(subcode: u8, data: impl Into<Vec<u8>>) -> Self {
        Self::new(code::MESSAGE_HEADER, subcode, data)
    }

    pub fn open(subcode: u8, data: impl Into<Vec<u8>>) -> Self {
        Self::new(code::OPEN_MESSAGE, subcode, data)
    }

    pub fn update(subcode: u8, data: impl Into<Vec<u8>>) -> Self {
        Self::new(code::UPDATE_MESSAGE, subcode, data)
    }

    pub fn cease(subcode: u8) -> Self {
        Self::new(code::CEASE, subcode, Vec::new())
    }

    /// Cease / Maximum Number of Prefixes Reached with its data (RFC 4486
    /// §4): the family (AFI, SAFI) and the limit.
    pub fn max_prefixes(afi: u16, safi: u8, limit: u32) -> Self {
        let mut data = afi.to_be_bytes().to_vec();
        data.push(safi);
        data.extend_from_slice(&limit.to_be_bytes());
        Self::new(code::CEASE, cease::MAX_PREFIXES, data)
    }

    pub fn hold_timer_expired() -> Self {
        Self::new(code::HOLD_TIMER_EXPIRED, 0, Vec::new())
    }

    /// The wire form of the whole message (header included). NOTIFICATION
    /// data is bounded by the message size; longer data is cut, since the
    /// data is diagnostic only.
    pub fn encode(&self) -> Vec<u8> {
        let data_len = self.data.len().min(4096 - 21);
        let len = 21 + data_len;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&[0xff; 16]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.push(crate::wire::MSG_NOTIFICATION);
        out.push(self.code);
        out.push(self.subcode);
        out.extend_from_slice(&self.data[..data_len]);
        out
    }

    /// Parses a NOTIFICATION body (the bytes after the 19-byte header).
    /// `None` only when the body is shorter than code + subcode.
    pub fn decode_body(body: &[u8]) -> Option<Self> {
        match body {
            [code, subcode, data @ ..] => Some(Self::new(*code, *subcode, data)),
            _ => None,
        }
    }
}

impl Notification {
    /// The operator's message of an Administrative Shutdown or Reset
    /// (RFC 9003: a length octet, then that many octets of UTF-8), when the
    /// data holds one. Malformed text is not an error: the message is
    /// diagnostic only, so it is left out (RFC 9003 §2).
    pub fn shutdown_message(&self) -> Option<&str> {
        let admin = matches!(self.subcode, cease::ADMIN_SHUTDOWN | cease::ADMIN_RESET);
        if self.code != code::CEASE || !admin {
            return None;
        }
        let (&len, text) = self.data.split_first()?;
        let text = text.get(..usize::from(len)).filter(|t| !t.is_empty())?;
        std::str::from_utf8(text).ok()
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NOTIFICATION {}/{}", self.code, self.subcode)?;
        if let Some(text) = self.shutdown_message() {
            // Debug formatting escapes control characters: the peer's
            // text goes into logs and `show bgp`.
            write!(f, ": {text:?}")?;
        } else if !self.data.is_empty() {
            write!(f, " ({} data bytes)", self.data.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_message_is_shown_when_well_formed() {
        let text = |data: &[u8]| {
            Notification::new(code::CEASE, cease::ADMIN_SHUTDOWN, data.to_vec()).to_string()
        };
        assert_eq!(
            text(b"\x12maintenance window"),
            "NOTIFICATION 6/2: \"maintenance window\""
        );
        // Control characters are escaped, not written into the log.
        assert_eq!(text(b"\x03a\nb"), "NOTIFICATION 6/2: \"a\\nb\"");
        // A length past the data, bad UTF-8, or none: the byte count only.
        assert_eq!(text(b"\x09short"), "NOTIFICATION 6/2 (6 data bytes)");
        assert_eq!(text(b"\x02\xff\xfe"), "NOTIFICATION 6/2 (3 data bytes)");
        assert_eq!(text(b""), "NOTIFICATION 6/2");
        // Other codes keep their data opaque.
        let other = Notification::new(code::CEASE, 3, b"\x01x".to_vec());
        assert_eq!(other.shutdown_message(), None);
    }
}
