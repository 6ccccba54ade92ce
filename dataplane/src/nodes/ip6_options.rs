//! Hop-by-hop and destination options (RFC 8200 4.2/4.3/4.6): every router on the path reads
//! the first, the final destination the second, and an option a node does not know says by
//! its two high bits what to do: skip it, drop the packet, or drop it and send a parameter
//! problem pointing at the option.

use crate::wire::IpProtocol;

/// What to do with a packet after reading its hop-by-hop options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionsVerdict {
    /// Go on.
    Accept,
    /// Drop silently (malformed header or an option of action 01).
    Discard,
    /// Drop and send ICMPv6 parameter problem code 2 pointing at `pointer` (action 10, or 11
    /// when the destination is not multicast).
    ParamProblem {
        /// Offset of the option's type byte from the start of the IPv6 header.
        pointer: u32,
        /// Action 11: send only when the destination is not a multicast address.
        unless_multicast: bool,
    },
}

/// Options every node understands: Pad1, PadN, Router Alert (RFC 2711) and the tunnel
/// encapsulation limit (RFC 2473).
fn is_known(kind: u8) -> bool {
    matches!(kind, 0 | 1 | 4 | 5)
}

/// Reads the hop-by-hop options header of `packet` (a whole IPv6 packet whose next header is
/// hop-by-hop).
pub fn check_hop_by_hop(packet: &[u8]) -> OptionsVerdict {
    if packet.get(6) != Some(&IpProtocol::HOP_BY_HOP.0) {
        return OptionsVerdict::Discard;
    }
    check_options(packet, 40)
}

/// Reads an options header (hop-by-hop or destination options, the same TLV format) that
/// starts at `start` in `packet`.
pub fn check_options(packet: &[u8], start: usize) -> OptionsVerdict {
    let Some(&len) = packet.get(start + 1) else {
        return OptionsVerdict::Discard;
    };
    let end = start + (usize::from(len) + 1) * 8;
    if end > packet.len() {
        return OptionsVerdict::Discard;
    }
    let mut at = start + 2;
    while at < end {
        let kind = packet[at];
        if kind == 0 {
            at += 1;
            continue;
        }
        let Some(&olen) = packet.get(at + 1) else {
            return OptionsVerdict::Discard;
        };
        let next = at + 2 + usize::from(olen);
        if next > end {
            return OptionsVerdict::Discard;
        }
        if !is_known(kind) {
            match kind >> 6 {
                0 => {}
                1 => return OptionsVerdict::Discard,
                action => {
                    return OptionsVerdict::ParamProblem {
                        pointer: at as u32,
                        unless_multicast: action == 3,
                    }
                }
            }
        }
        at = next;
    }
    OptionsVerdict::Accept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(options: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[6] = 0;
        p.push(59);
        p.push(((options.len() + 2) / 8 - 1) as u8);
        p.extend_from_slice(options);
        p
    }

    #[test]
    fn actions_follow_the_high_bits() {
        // PadN filling the header: accepted.
        assert_eq!(
            check_hop_by_hop(&packet(&[1, 4, 0, 0, 0, 0])),
            OptionsVerdict::Accept
        );
        // Router alert then Pad1s.
        assert_eq!(
            check_hop_by_hop(&packet(&[5, 2, 0, 0, 0, 0])),
            OptionsVerdict::Accept
        );
        // Unknown, action 00: skipped.
        assert_eq!(
            check_hop_by_hop(&packet(&[0x1e, 2, 0, 0, 1, 0])),
            OptionsVerdict::Accept
        );
        // Unknown, action 01: discarded.
        assert_eq!(
            check_hop_by_hop(&packet(&[0x5e, 2, 0, 0, 1, 0])),
            OptionsVerdict::Discard
        );
        // Unknown, action 10 after a Pad1: parameter problem pointing at it (40 + 2 + 1).
        assert_eq!(
            check_hop_by_hop(&packet(&[0, 0x9e, 1, 0, 1, 0])),
            OptionsVerdict::ParamProblem {
                pointer: 43,
                unless_multicast: false
            }
        );
        // Jumbo payload is not supported: action 11.
        assert_eq!(
            check_hop_by_hop(&packet(&[0xc2, 4, 0, 1, 0, 0])),
            OptionsVerdict::ParamProblem {
                pointer: 42,
                unless_multicast: true
            }
        );
        // An option running past the header: discarded.
        assert_eq!(
            check_hop_by_hop(&packet(&[1, 9, 0, 0, 0, 0])),
            OptionsVerdict::Discard
        );
        assert_eq!(
            check_hop_by_hop(&packet(&[1, 4, 0, 0, 0, 0])[..41]),
            OptionsVerdict::Discard
        );
    }
}
