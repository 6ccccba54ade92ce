//! Connection collision resolution (RFC 4271 §6.8, RFC 6286 §2.3).
//!
//! The shell owns both TCP connections; once it has the peer's BGP
//! identifier on one of them (an OPEN received) while another connection
//! to the same peer is in OpenSent/OpenConfirm, it asks which to keep and
//! closes the other with Cease / Connection Collision Resolution.

use std::net::Ipv4Addr;

/// Who opened a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionOrigin {
    /// We connected to the peer.
    Local,
    /// The peer connected to us.
    Remote,
}

/// Which connection survives. Identifiers compare as 32-bit unsigned
/// integers in host order; equal identifiers (allowed between different
/// ASes by RFC 6286) are broken by the larger AS number.
pub fn connection_to_keep(
    local_id: Ipv4Addr,
    local_as: u32,
    remote_id: Ipv4Addr,
    remote_as: u32,
) -> ConnectionOrigin {
    let (l, r) = (u32::from(local_id), u32::from(remote_id));
    let local_wins = if l == r { local_as > remote_as } else { l > r };
    // The speaker with the higher identifier keeps the connection it
    // initiated.
    if local_wins {
        ConnectionOrigin::Local
    } else {
        ConnectionOrigin::Remote
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_identifier_keeps_its_own_connection() {
        let a = Ipv4Addr::new(10, 0, 0, 2);
        let b = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(connection_to_keep(a, 1, b, 1), ConnectionOrigin::Local);
        assert_eq!(connection_to_keep(b, 1, a, 1), ConnectionOrigin::Remote);
        // Compared as integers, not bytewise-lexically on strings.
        let c = Ipv4Addr::new(9, 255, 255, 255);
        assert_eq!(connection_to_keep(b, 1, c, 1), ConnectionOrigin::Local);
    }

    #[test]
    fn equal_identifiers_use_as_number() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(
            connection_to_keep(a, 65002, a, 65001),
            ConnectionOrigin::Local
        );
        assert_eq!(
            connection_to_keep(a, 65001, a, 65002),
            ConnectionOrigin::Remote
        );
    }
}
