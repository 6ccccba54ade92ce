//! IPv4 options a router acts on (RFC 791 3.1, RFC 1812 5.2.4): malformed options draw a
//! parameter problem pointing at the bad byte; record route and timestamp get this router's
//! entry when it forwards; source-routed packets are dropped, as Linux does by default
//! (`accept_source_route = 0`) and RFC 7126 recommends. Other options pass untouched.

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
    /// Well formed; `record` when a record-route or timestamp option wants an entry.
    Accept {
        /// An option to fill in when forwarding.
        record: bool,
    },
    /// Malformed: parameter problem with this pointer (offset from the IPv4 header start).
    ParamProblem(u8),
    /// Loose or strict source route: dropped.
    SourceRoute,
}

/// Checks the structure of `options` (the bytes after the fixed header).
#[cold]
pub fn check(options: &[u8]) -> OptionsVerdict {
    let mut record = false;
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
            LOOSE_SOURCE_ROUTE | STRICT_SOURCE_ROUTE => return OptionsVerdict::SourceRoute,
            RECORD_ROUTE => {
                // The pointer is 1-based within the option and starts at 4.
                if len < 3 || options[at + 2] < 4 {
                    return OptionsVerdict::ParamProblem(pointer(at + 2));
                }
                record = true;
            }
            TIMESTAMP => {
                if len < 4 || options[at + 2] < 5 {
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
    OptionsVerdict::Accept { record }
}

/// Adds this router's entry to the record-route and timestamp options of a forwarded packet:
/// `addr` is the address of the interface it leaves by, `timestamp` the value to stamp.
/// Returns the parameter-problem pointer if a timestamp overflow count itself overflows.
#[cold]
pub fn record(options: &mut [u8], addr: Ipv4Addr, timestamp: u32) -> Result<(), u8> {
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
        let opt = &mut options[at..at + len];
        match kind {
            RECORD_ROUTE => {
                let ptr = usize::from(opt[2]);
                // A full option is forwarded unchanged (RFC 791).
                if ptr + 3 <= len {
                    opt[ptr - 1..ptr + 3].copy_from_slice(&addr.octets());
                    opt[2] += 4;
                }
            }
            TIMESTAMP => {
                let ptr = usize::from(opt[2]);
                let flag = opt[3] & 0x0f;
                let entry = if flag == TS_ONLY { 4 } else { 8 };
                if ptr + entry - 1 > len {
                    // No room: count the overflow; a full count is a parameter problem.
                    let overflow = opt[3] >> 4;
                    if overflow == 15 {
                        return Err((OPTIONS_OFFSET + at + 3) as u8);
                    }
                    opt[3] = ((overflow + 1) << 4) | flag;
                } else {
                    let slot = &mut opt[ptr - 1..ptr - 1 + entry];
                    match flag {
                        TS_ONLY => slot.copy_from_slice(&timestamp.to_be_bytes()),
                        TS_WITH_ADDRESS => {
                            slot[..4].copy_from_slice(&addr.octets());
                            slot[4..].copy_from_slice(&timestamp.to_be_bytes());
                        }
                        // Prespecified: stamp only when the next address is ours.
                        _ if slot[..4] == addr.octets() => {
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
        assert_eq!(
            check(&[1, 1, 0, 0]),
            OptionsVerdict::Accept { record: false }
        );
        // Length 1 (below 2) at option offset 1 → pointer 21.
        assert_eq!(check(&[0x44, 1, 0, 0]), OptionsVerdict::ParamProblem(21));
        // Length running past the options.
        assert_eq!(check(&[7, 12, 4, 0]), OptionsVerdict::ParamProblem(21));
        // Record route with a pointer below 4.
        assert_eq!(
            check(&[7, 7, 3, 0, 0, 0, 0, 0]),
            OptionsVerdict::ParamProblem(22)
        );
        assert_eq!(check(&[131, 3, 4, 0]), OptionsVerdict::SourceRoute);
        assert_eq!(
            check(&[7, 7, 4, 0, 0, 0, 0, 0]),
            OptionsVerdict::Accept { record: true }
        );
    }

    #[test]
    fn record_route_fills_the_next_slot_until_full() {
        let me: Ipv4Addr = "198.18.2.1".parse().unwrap();
        let mut rr = [7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        record(&mut rr, me, 0).unwrap();
        assert_eq!(rr[..8], [7, 11, 8, 198, 18, 2, 1, 0]);
        record(&mut rr, me, 0).unwrap();
        assert_eq!(rr[2], 12);
        // Full: unchanged.
        let before = rr;
        record(&mut rr, me, 0).unwrap();
        assert_eq!(rr, before);
    }

    #[test]
    fn timestamps_and_overflow() {
        let me: Ipv4Addr = "198.18.2.1".parse().unwrap();
        let mut ts = [68, 12, 5, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        record(&mut ts, me, 0x8000_0001).unwrap();
        assert_eq!(ts[4..12], [198, 18, 2, 1, 0x80, 0, 0, 1]);
        assert_eq!(ts[2], 13);
        // Full now: the overflow count goes up.
        record(&mut ts, me, 1).unwrap();
        assert_eq!(ts[3] >> 4, 1);
        ts[3] = 0xf1;
        assert_eq!(record(&mut ts, me, 1), Err(23));
    }
}
