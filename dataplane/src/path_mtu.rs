//! Path MTUs this node learned for the IPv6 packets it originates itself (RFC 8201): a Packet
//! Too Big about one of its echo replies lowers the estimate for that destination, and its
//! later packets there are fragmented to fit (`ip6-local`). Routers forward without looking
//! at this: it is only the node-as-a-source's view of the paths.
//!
//! A small set-associative table of fixed size, made once: learning is a store into a slot,
//! never an allocation, and a flood of Packet Too Big messages only evicts older entries.
//! Entries age out after [`PATH_MTU_LIFETIME`], after which the first-hop MTU is tried again
//! (RFC 8201 4 and 5.3: an estimate is raised only by letting it expire, and not sooner than
//! five minutes; ten is the recommended interval).

use std::net::Ipv6Addr;

use crate::graph::Nanos;

/// The IPv6 minimum link MTU (RFC 8200 5): no estimate goes below it (RFC 8201 4).
pub const IPV6_MIN_MTU: u16 = 1280;

/// How long a learned estimate holds (RFC 8201 5.3's recommended ten minutes).
pub const PATH_MTU_LIFETIME: Nanos = 600 * 1_000_000_000;

/// Entries per set: a new destination replaces the oldest of its set.
const WAYS: usize = 4;
/// Sets, a power of two: 256 destinations at most.
const SETS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    dst: Ipv6Addr,
    mtu: u16,
    /// When the estimate lapses; the slot is free from then on.
    expires: Nanos,
}

/// Learned path MTUs by destination, per worker ([`crate::worker::WorkerState::path_mtu`]).
#[derive(Clone, Debug)]
pub struct PathMtuCache {
    sets: Box<[[Option<Entry>; WAYS]; SETS]>,
    /// Estimates lowered (a new destination, or a lower MTU for a known one).
    pub lowered: u64,
    /// With several workers, what this worker learned since it last passed it on: a Packet
    /// Too Big reaches whichever worker its flow hashes to, not necessarily the one that
    /// answers the next echo request. `None` (the default): nothing is kept.
    pub shared: Option<Vec<(Ipv6Addr, u16)>>,
}

impl Default for PathMtuCache {
    fn default() -> Self {
        PathMtuCache {
            sets: Box::new([[None; WAYS]; SETS]),
            lowered: 0,
            shared: None,
        }
    }
}

/// The set of `dst`: both halves of the address folded and mixed (multiply-shift).
#[inline]
fn set_of(dst: &Ipv6Addr) -> usize {
    let bits = u128::from(*dst);
    let folded = (bits as u64) ^ ((bits >> 64) as u64);
    (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SETS.trailing_zeros())) as usize
}

impl PathMtuCache {
    /// The estimate for `dst`, if one was learned and has not lapsed.
    pub fn get(&self, dst: Ipv6Addr, now: Nanos) -> Option<u16> {
        self.sets[set_of(&dst)]
            .iter()
            .flatten()
            .find(|e| e.dst == dst && now < e.expires)
            .map(|e| e.mtu)
    }

    /// Takes a Packet Too Big's `mtu` for `dst` (RFC 8201 4): never below the IPv6 minimum,
    /// and never raising an estimate in force (a larger value is ignored; the estimate rises
    /// only when it lapses). True when the estimate was lowered.
    pub fn lower(&mut self, dst: Ipv6Addr, mtu: u32, now: Nanos) -> bool {
        let mtu = mtu.clamp(u32::from(IPV6_MIN_MTU), u32::from(u16::MAX)) as u16;
        let set = &mut self.sets[set_of(&dst)];
        let fresh = Entry {
            dst,
            mtu,
            expires: now.saturating_add(PATH_MTU_LIFETIME),
        };
        let slot = match set
            .iter()
            .position(|e| e.is_some_and(|e| e.dst == dst && now < e.expires))
        {
            Some(i) if set[i].is_some_and(|e| e.mtu <= mtu) => return false,
            Some(i) => i,
            // A free or lapsed slot, else the one that lapses first.
            None => (0..WAYS)
                .min_by_key(|&i| set[i].map_or(0, |e| e.expires))
                .unwrap_or(0),
        };
        set[slot] = Some(fresh);
        self.lowered += 1;
        if let Some(out) = self.shared.as_mut() {
            out.push((dst, mtu));
        }
        true
    }

    /// Takes the estimates another worker learned ([`PathMtuCache::shared`]), without
    /// passing them on again.
    pub fn merge_learned(&mut self, learned: &[(Ipv6Addr, u16)], now: Nanos) {
        let shared = self.shared.take();
        for &(dst, mtu) in learned {
            self.lower(dst, u32::from(mtu), now);
        }
        self.shared = shared;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Nanos = 1_000_000_000;

    fn a(i: u32) -> Ipv6Addr {
        Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0000_0000u128 | u128::from(i))
    }

    #[test]
    fn lowers_never_raises_nor_goes_below_1280_and_lapses() {
        let mut c = PathMtuCache::default();
        assert_eq!(c.get(a(1), 0), None);
        assert!(c.lower(a(1), 1400, SECOND));
        assert_eq!(c.get(a(1), SECOND), Some(1400));
        assert!(!c.lower(a(1), 1450, 2 * SECOND), "never raised");
        assert!(c.lower(a(1), 1000, 3 * SECOND));
        assert_eq!(c.get(a(1), 3 * SECOND), Some(IPV6_MIN_MTU));
        assert!(!c.lower(a(1), 68, 3 * SECOND), "already at the minimum");
        assert_eq!(c.get(a(1), 3 * SECOND + PATH_MTU_LIFETIME), None);
        assert!(c.lower(a(1), 1500, 3 * SECOND + PATH_MTU_LIFETIME));
        assert_eq!(c.get(a(1), 3 * SECOND + PATH_MTU_LIFETIME), Some(1500));
        assert_eq!(c.lowered, 3);
    }

    #[test]
    fn stays_bounded_keeping_the_newest_of_each_set() {
        let mut c = PathMtuCache::default();
        let n = 4 * SETS * WAYS;
        for i in 0..n {
            c.lower(a(i as u32), 1300, i as Nanos);
        }
        let held = (0..n).filter(|&i| c.get(a(i as u32), n as Nanos).is_some());
        assert!(held.count() <= SETS * WAYS);
        // The last one learned is always there.
        assert_eq!(c.get(a(n as u32 - 1), n as Nanos), Some(1300));
    }

    #[test]
    fn learned_estimates_are_shared_once() {
        let mut one = PathMtuCache {
            shared: Some(Vec::new()),
            ..PathMtuCache::default()
        };
        let mut other = PathMtuCache {
            shared: Some(Vec::new()),
            ..PathMtuCache::default()
        };
        one.lower(a(7), 1300, 0);
        let learned = one.shared.as_mut().unwrap().split_off(0);
        assert_eq!(learned, [(a(7), 1300)]);
        other.merge_learned(&learned, 0);
        assert_eq!(other.get(a(7), 0), Some(1300));
        assert_eq!(
            other.shared.as_deref(),
            Some(&[][..]),
            "not passed on again"
        );
    }
}
