//! IPv4 options a router acts on (RFC 791 3.1, RFC 1812 5.2.4): malformed options draw a
//! parameter problem pointing at the bad byte; record route and timestamp get this router's
//! entry when it forwards; loose and strict source routes take their next hop here when the
//! packet is addressed to this router ([`source_route_hop`], [`take_source_route_hop`]), as
//! RFC 1812 5.2.4.1 requires by default (the tables may say to drop them instead, as Linux
//! does by default and RFC 7126 recommends). Other options pass untouched.

use std::net::Ipv4Addr;

const END: u8 = 0;
const NOP: u8 = 1;
const RECORD_ROUTE: u8 = 7;
const TIMESTAMP: u8 = 68;
const LOOSE_SOURCE_ROUTE: u8 = 131;
const STRICT_SOURCE_ROUTE: u8 = 137;

/// Timestamp flags (RFC 791): what each entry holds.
const TS_ONLY: u8 = 0;
const TS_WITH_ADDRESS: u8 = 1;
const TS_PRESPECIFIED: u8 = 3;

/// Offset of the options from the start of the IPv4 header.
const OPTIONS_OFFSET: usize = 20;

/// What the options of a packet ask of the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionsVerdict {
    /// Well formed.
    Accept {
        /// A record-route or timestamp option wants an entry when forwarding.
        record: bool,
        /// A loose or strict source route option is present (completed or not).
        source_route: bool,
    },
    /// Malformed: parameter problem with this pointer (offset from the IPv4 header start).
    ParamProblem(u8),
}

/// The next hop a source route option names, for a packet addressed to this router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceRouteHop {
    /// Where the option starts in the options.
    at: usize,
    /// The address the route goes to next.
    pub next: Ipv4Addr,
    /// Strict: `next` must be on a network attached to this router.
    pub strict: bool,
}

/// Checks the structure of `options` (the bytes after the fixed header).
#[cold]
pub fn check(options: &[u8]) -> OptionsVerdict {
    let mut record = false;
    let mut source_route = false;
    let mut at = 0;
    let pointer = |i: usize| (OPTIONS_OFFSET + i) as u8;
    while at < options.len() {
        let kind = options[at];
        match kind {
            END => break,
            NOP => {
                at += 1;
                continue;
            }
            _ => {}
        }
        let Some(&len) = options.get(at + 1) else {
            return OptionsVerdict::ParamProblem(pointer(at));
        };
        let len = usize::from(len);
        if len < 2 || at + len > options.len() {
            return OptionsVerdict::ParamProblem(pointer(at + 1));
        }
        match kind {
            LOOSE_SOURCE_ROUTE | STRICT_SOURCE_ROUTE => {
                // One source route per packet (RFC 1122 3.2.1.8 forbids sending two).
                if source_route {
                    return OptionsVerdict::ParamProblem(pointer(at));
                }
                // The pointer starts at 4 and, until the route is complete, names a whole
                // address.
                if len < 3 {
                    return OptionsVerdict::ParamProblem(pointer(at + 1));
                }
                let ptr = usize::from(options[at + 2]);
                if ptr < 4 || (ptr <= len && ptr + 3 > len) {
                    return OptionsVerdict::ParamProblem(pointer(at + 2));
                }
                source_route = true;
            }
            RECORD_ROUTE => {
                // The pointer is 1-based within the option and starts at 4.
                if len < 3 {
                    return OptionsVerdict::ParamProblem(pointer(at + 1));
                }
                if options[at + 2] < 4 {
                    return OptionsVerdict::ParamProblem(pointer(at + 2));
                }
                record = true;
            }
            TIMESTAMP => {
                if len < 4 {
                    return OptionsVerdict::ParamProblem(pointer(at + 1));
                }
                if options[at + 2] < 5 {
                    return OptionsVerdict::ParamProblem(pointer(at + 2));
                }
                let flag = options[at + 3] & 0x0f;
                if !matches!(flag, TS_ONLY | TS_WITH_ADDRESS | TS_PRESPECIFIED) {
                    return OptionsVerdict::ParamProblem(pointer(at + 3));
                }
                record = true;
            }
            _ => {}
        }
        at += len;
    }
    OptionsVerdict::Accept {
        record,
        source_route,
    }
}

/// Where the (first) loose or strict source route option of `options` starts, and its
/// length, if it has one that fits.
fn find_source_route(options: &[u8]) -> Option<(usize, usize)> {
    let mut at = 0;
    while at < options.len() {
        let kind = options[at];
        match kind {
            END => return None,
            NOP => {
                at += 1;
                continue;
            }
            _ => {}
        }
        let len = usize::from(*options.get(at + 1)?);
        if len < 2 || at + len > options.len() {
            return None;
        }
        if matches!(kind, LOOSE_SOURCE_ROUTE | STRICT_SOURCE_ROUTE) {
            return Some((at, len));
        }
        at += len;
    }
    None
}

/// The source route option of well-formed `options` (see [`check`]), if there is one that is
/// not complete: the hop this router, the packet's destination, sends it to next.
#[cold]
pub fn source_route_hop(options: &[u8]) -> Option<SourceRouteHop> {
    let (at, len) = find_source_route(options)?;
    let opt = &options[at..at + len];
    let ptr = usize::from(*opt.get(2)?);
    // Complete when the pointer is past the last address.
    let next = opt.get(ptr.checked_sub(1)?..ptr + 3)?;
    Some(SourceRouteHop {
        at,
        next: Ipv4Addr::new(next[0], next[1], next[2], next[3]),
        strict: opt[0] == STRICT_SOURCE_ROUTE,
    })
}

/// Takes `hop` (from [`source_route_hop`] on the same options): its slot records `recorded`,
/// this router's address on the way out (RFC 791), and the pointer moves to the next one.
/// The caller makes `hop.next` the packet's destination.
pub fn take_source_route_hop(options: &mut [u8], hop: &SourceRouteHop, recorded: Ipv4Addr) {
    let Some(ptr) = options.get(hop.at + 2).map(|&p| usize::from(p)) else {
        return;
    };
    let slot = hop.at + ptr - 1;
    if let Some(slot) = options.get_mut(slot..slot + 4) {
        slot.copy_from_slice(&recorded.octets());
        options[hop.at + 2] += 4;
    }
}

/// Adds this router's entry to the record-route and timestamp options of a forwarded packet:
/// `addr` is the address of the interface it leaves by, `timestamp` the value to stamp, and
/// `is_ours` tells this router's addresses (a prespecified timestamp is taken when its next
/// address is any of them, RFC 1812 5.3.13.6). A full option is forwarded as it is (a
/// timestamp's overflow count goes up); one with some room but not enough for an entry, or
/// whose overflow count itself overflows, is in error (RFC 791): `Err` is then the
/// parameter-problem pointer, at the option's pointer or flags byte.
#[cold]
pub fn record(
    options: &mut [u8],
    addr: Ipv4Addr,
    timestamp: u32,
    is_ours: impl Fn(Ipv4Addr) -> bool,
) -> Result<(), u8> {
    let mut at = 0;
    while at < options.len() {
        let kind = options[at];
        if kind == END {
            break;
        }
        if kind == NOP {
            at += 1;
            continue;
        }
        let len = options.get(at + 1).map_or(0, |&l| usize::from(l));
        if len < 2 || at + len > options.len() {
            break;
        }
        let pointer_byte = (OPTIONS_OFFSET + at + 2) as u8;
        let opt = &mut options[at..at + len];
        match kind {
            RECORD_ROUTE if len >= 3 => {
                let ptr = usize::from(opt[2]);
                if ptr + 3 <= len {
                    opt[ptr - 1..ptr + 3].copy_from_slice(&addr.octets());
                    opt[2] += 4;
                } else if ptr <= len {
                    return Err(pointer_byte);
                }
            }
            TIMESTAMP if len >= 4 => {
                let ptr = usize::from(opt[2]);
                let flag = opt[3] & 0x0f;
                let entry = if flag == TS_ONLY { 4 } else { 8 };
                if ptr > len {
                    // Full: count the overflow; a full count is a parameter problem.
                    let overflow = opt[3] >> 4;
                    if overflow == 15 {
                        return Err(pointer_byte + 1);
                    }
                    opt[3] = ((overflow + 1) << 4) | flag;
                } else if ptr + entry - 1 > len {
                    return Err(pointer_byte);
                } else {
                    let slot = &mut opt[ptr - 1..ptr - 1 + entry];
                    match flag {
                        TS_ONLY => slot.copy_from_slice(&timestamp.to_be_bytes()),
                        TS_WITH_ADDRESS => {
                            slot[..4].copy_from_slice(&addr.octets());
                            slot[4..].copy_from_slice(&timestamp.to_be_bytes());
                        }
                        // Prespecified: stamp only when the next address is one of ours.
                        _ if is_ours(Ipv4Addr::new(slot[0], slot[1], slot[2], slot[3])) => {
                            slot[4..].copy_from_slice(&timestamp.to_be_bytes())
                        }
                        _ => {
                            at += len;
                            continue;
                        }
                    }
                    opt[2] += entry as u8;
                }
            }
            _ => {}
        }
        at += len;
    }
    Ok(())
}

/// Turns the completed source route of an echo request to this router into the route back
/// for its reply (RFC 1122 3.2.1.8 and 3.2.2.6): the recorded addresses in reverse order, then
/// the request's source `src`, which the route names only once even if it recorded itself.
/// Returns the reply's destination, the route's first hop; `None` when there is no route
/// to reverse (an empty one becomes NOPs).
pub fn reverse_for_reply(options: &mut [u8], src: Ipv4Addr) -> Option<Ipv4Addr> {
    let (at, len) = find_source_route(options)?;
    let opt = &mut options[at..at + len];
    // Forty bytes of options hold at most nine addresses.
    let mut recorded = [[0u8; 4]; 10];
    let mut n = 0;
    for a in opt.get(3..)?.chunks_exact(4).take(recorded.len()) {
        recorded[n] = [a[0], a[1], a[2], a[3]];
        n += 1;
    }
    let Some((&first_hop, rest)) = recorded[..n].split_last() else {
        opt.fill(NOP);
        return None;
    };
    // The way back: the other recorded hops, last first, then the source (once).
    let mut back = [[0u8; 4]; 10];
    let mut m = 0;
    for a in rest.iter().rev().chain(std::iter::once(&src.octets())) {
        if m == 0 || back[m - 1] != *a {
            back[m] = *a;
            m += 1;
        }
    }
    let new_len = 3 + 4 * m;
    opt[1] = new_len as u8;
    opt[2] = 4;
    for (slot, a) in opt[3..].chunks_exact_mut(4).zip(&back[..m]) {
        slot.copy_from_slice(a);
    }
    opt[new_len..].fill(NOP);
    Some(Ipv4Addr::from(first_hop))
}

/// A timestamp for the option from the caller's monotonic clock: milliseconds with the high
/// bit set, which RFC 791 allows when the time is not milliseconds since midnight UT.
pub fn nonstandard_timestamp(now_nanos: u64) -> u32 {
    ((now_nanos / 1_000_000) as u32) | 0x8000_0000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_options_point_at_the_bad_byte() {
        let accept = |record, source_route| OptionsVerdict::Accept {
            record,
            source_route,
        };
        assert_eq!(check(&[1, 1, 0, 0]), accept(false, false));
        // Length 1 (below 2) at option offset 1 → pointer 21.
        assert_eq!(check(&[0x44, 1, 0, 0]), OptionsVerdict::ParamProblem(21));
        // Length running past the options.
        assert_eq!(check(&[7, 12, 4, 0]), OptionsVerdict::ParamProblem(21));
        // Record route with a pointer below 4.
        assert_eq!(
            check(&[7, 7, 3, 0, 0, 0, 0, 0]),
            OptionsVerdict::ParamProblem(22)
        );
        assert_eq!(check(&[7, 7, 4, 0, 0, 0, 0, 0]), accept(true, false));
        // Source routes: complete (pointer 4 past a length of 3), one address to go, a
        // pointer below 4, a pointer into the middle of the last address, two of them.
        assert_eq!(check(&[131, 3, 4, 0]), accept(false, true));
        assert_eq!(check(&[137, 7, 4, 1, 2, 3, 4, 0]), accept(false, true));
        assert_eq!(
            check(&[131, 7, 3, 1, 2, 3, 4, 0]),
            OptionsVerdict::ParamProblem(22)
        );
        assert_eq!(
            check(&[131, 8, 6, 1, 2, 3, 4, 0]),
            OptionsVerdict::ParamProblem(22)
        );
        assert_eq!(
            check(&[131, 3, 4, 137, 3, 4, 0, 0]),
            OptionsVerdict::ParamProblem(23)
        );
    }

    #[test]
    fn source_route_hops_are_taken_in_turn() {
        let me: Ipv4Addr = "198.18.2.1".parse().unwrap();
        // NOP, then a loose route with two addresses to go.
        let mut opts = [1, 131, 11, 4, 198, 18, 2, 9, 203, 0, 113, 5];
        let hop = source_route_hop(&opts).unwrap();
        assert_eq!(
            (hop.next, hop.strict),
            ("198.18.2.9".parse().unwrap(), false)
        );
        take_source_route_hop(&mut opts, &hop, me);
        assert_eq!(opts[..8], [1, 131, 11, 8, 198, 18, 2, 1]);
        let hop = source_route_hop(&opts).unwrap();
        assert_eq!(hop.next, "203.0.113.5".parse::<Ipv4Addr>().unwrap());
        take_source_route_hop(&mut opts, &hop, me);
        assert_eq!(opts[3], 12);
        assert_eq!(source_route_hop(&opts), None, "complete");
        assert_eq!(source_route_hop(&[7, 7, 4, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn echo_replies_reverse_the_source_route() {
        let s: Ipv4Addr = "198.18.1.2".parse().unwrap();
        // S sent via G1 = 198.18.9.1 and G2 = 198.18.9.2 (recorded, complete): the reply
        // goes to G2 first, then G1, then S.
        let mut opts = [131, 11, 12, 198, 18, 9, 1, 198, 18, 9, 2, 1];
        assert_eq!(
            reverse_for_reply(&mut opts, s),
            Some("198.18.9.2".parse().unwrap())
        );
        assert_eq!(opts, [131, 11, 4, 198, 18, 9, 1, 198, 18, 1, 2, 1]);
        // A route that recorded S itself names it once; the spare slot becomes NOPs.
        let mut opts = [137, 11, 12, 198, 18, 1, 2, 198, 18, 9, 2, 0];
        assert_eq!(
            reverse_for_reply(&mut opts, s),
            Some("198.18.9.2".parse().unwrap())
        );
        assert_eq!(opts, [137, 7, 4, 198, 18, 1, 2, 1, 1, 1, 1, 0]);
        // An empty route: nothing to reverse.
        let mut opts = [131, 3, 4, 0];
        assert_eq!(reverse_for_reply(&mut opts, s), None);
        assert_eq!(opts, [1, 1, 1, 0]);
        assert_eq!(reverse_for_reply(&mut [7, 7, 8, 1, 2, 3, 4, 0], s), None);
    }

    #[test]
    fn record_route_fills_the_next_slot_until_full() {
        let me: Ipv4Addr = "198.18.2.1".parse().unwrap();
        let ours = |a: Ipv4Addr| a == me;
        let mut rr = [7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        record(&mut rr, me, 0, ours).unwrap();
        assert_eq!(rr[..8], [7, 11, 8, 198, 18, 2, 1, 0]);
        record(&mut rr, me, 0, ours).unwrap();
        assert_eq!(rr[2], 12);
        // Full: unchanged.
        let before = rr;
        record(&mut rr, me, 0, ours).unwrap();
        assert_eq!(rr, before);
    }

    /// RFC 791: "If there is some room but not enough room for a full address to be
    /// inserted, the original datagram is considered to be in error", and likewise for a
    /// timestamp; the parameter problem points at the option's pointer.
    #[test]
    fn some_room_but_not_enough_is_an_error() {
        let me: Ipv4Addr = "198.18.2.1".parse().unwrap();
        let ours = |a: Ipv4Addr| a == me;
        // Record route of length 9: one address in, two bytes left.
        let mut rr = [7, 9, 8, 10, 0, 0, 1, 0, 0, 0, 0, 0];
        assert_eq!(record(&mut rr, me, 0, ours), Err(22));
        // Timestamps only, length 10: one stamp in, two bytes left.
        let mut ts = [68, 10, 9, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(record(&mut ts, me, 5, ours), Err(22));
        // After a NOP the pointer byte is one further on.
        let mut opts = [1, 7, 9, 8, 10, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(record(&mut opts, me, 0, ours), Err(23));
    }

    #[test]
    fn timestamps_and_overflow() {
        let me: Ipv4Addr = "198.18.2.1".parse().unwrap();
        let ours = |a: Ipv4Addr| a == me;
        let mut ts = [68, 12, 5, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        record(&mut ts, me, 0x8000_0001, ours).unwrap();
        assert_eq!(ts[4..12], [198, 18, 2, 1, 0x80, 0, 0, 1]);
        assert_eq!(ts[2], 13);
        // Full now: the overflow count goes up.
        record(&mut ts, me, 1, ours).unwrap();
        assert_eq!(ts[3] >> 4, 1);
        ts[3] = 0xf1;
        assert_eq!(record(&mut ts, me, 1, ours), Err(23));
    }

    /// RFC 1812 5.3.13.6: a prespecified address is stamped when it is any of the router's
    /// addresses, not only the outgoing interface's.
    #[test]
    fn prespecified_timestamps_match_any_address_of_ours() {
        let (ingress, egress): (Ipv4Addr, Ipv4Addr) =
            ("198.18.1.1".parse().unwrap(), "198.18.2.1".parse().unwrap());
        let ours = |a: Ipv4Addr| a == ingress || a == egress;
        let mut ts = [
            68, 20, 5, 3, 198, 18, 1, 1, 0, 0, 0, 0, 198, 18, 2, 1, 0, 0, 0, 0,
        ];
        record(&mut ts, egress, 7, ours).unwrap();
        assert_eq!((ts[2], &ts[8..12]), (13, &[0, 0, 0, 7][..]));
        record(&mut ts, egress, 8, ours).unwrap();
        assert_eq!((ts[2], &ts[16..20]), (21, &[0, 0, 0, 8][..]));
        // Someone else's address: left for its owner.
        let mut ts = [68, 12, 5, 3, 203, 0, 113, 9, 0, 0, 0, 0];
        let before = ts;
        record(&mut ts, egress, 9, ours).unwrap();
        assert_eq!(ts, before);
    }

    #[test]
    fn short_record_route_and_timestamp_point_at_their_length() {
        assert_eq!(check(&[7, 2, 1, 0]), OptionsVerdict::ParamProblem(21));
        assert_eq!(check(&[68, 3, 5, 0]), OptionsVerdict::ParamProblem(21));
    }
}
