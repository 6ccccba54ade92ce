//! IPv6 longest-prefix match by prefix length: one hash table keyed by (length, masked
//! address), probed from the longest length present to the shortest, as VPP's IPv6 FIB does.
//! Tables hold few distinct lengths (/128 hosts, /64 links, a few aggregates), so a lookup is a
//! handful of probes, each a multiply-mix hash and one table read.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

/// A multiply-mix hasher for integer keys (never for attacker-chosen byte strings: its keys are
/// the FIB's own prefixes).
#[derive(Default, Clone, Copy)]
pub struct WordHasher(u64);

impl WordHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for WordHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.mix(u64::from(n));
    }

    #[inline]
    fn write_u128(&mut self, n: u128) {
        self.mix(n as u64);
        self.mix((n >> 64) as u64);
    }
}

/// The compiled IPv6 table; values are `u32` indexes chosen by the caller.
#[derive(Clone, Debug, Default)]
pub struct Lpm6 {
    /// Prefix lengths present, longest first.
    lengths: Vec<u8>,
    table: HashMap<(u8, u128), u32, BuildHasherDefault<WordHasher>>,
}

#[inline]
fn mask(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - u32::from(len)))
    }
}

impl Lpm6 {
    /// Builds the table from `(prefix, value)` pairs.
    pub fn build(prefixes: impl IntoIterator<Item = (Ipv6Net, u32)>) -> Self {
        let mut lpm = Lpm6::default();
        for (p, v) in prefixes {
            let len = p.prefix_len();
            lpm.table.insert((len, mask(u128::from(p.addr()), len)), v);
            if !lpm.lengths.contains(&len) {
                lpm.lengths.push(len);
            }
        }
        lpm.lengths.sort_unstable_by(|a, b| b.cmp(a));
        lpm
    }

    /// The value of the longest prefix holding `dst`.
    #[inline]
    pub fn lookup(&self, dst: Ipv6Addr) -> Option<u32> {
        let a = u128::from(dst);
        self.lengths
            .iter()
            .find_map(|&len| self.table.get(&(len, mask(a, len))).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn agrees_with_a_linear_scan(
            raw in prop::collection::vec((any::<u128>(), 0u8..=128, 0u32..1000), 0..40),
            probes in prop::collection::vec(any::<u128>(), 1..40),
        ) {
            let mut prefixes: Vec<(Ipv6Net, u32)> = Vec::new();
            for (addr, len, v) in raw {
                let p = Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap().trunc();
                prefixes.retain(|(q, _)| *q != p);
                prefixes.push((p, v));
            }
            let lpm = Lpm6::build(prefixes.clone());
            let edges = prefixes.iter().flat_map(|(p, _)| [p.network(), p.broadcast()]);
            for dst in probes.into_iter().map(Ipv6Addr::from).chain(edges) {
                let want = prefixes
                    .iter()
                    .filter(|(p, _)| p.contains(&dst))
                    .max_by_key(|(p, _)| p.prefix_len())
                    .map(|(_, v)| *v);
                prop_assert_eq!(lpm.lookup(dst), want, "{}", dst);
            }
        }
    }
}
