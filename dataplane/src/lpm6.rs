//! IPv6 longest-prefix match by prefix length: one hash table per prefix length present, keyed
//! by the masked address, probed from the longest length to the shortest, as VPP's IPv6 FIB
//! does. Tables hold few distinct lengths (/128 hosts, /64 links, a few aggregates), so a lookup
//! is a handful of probes.
//!
//! Each table is a small open-addressing array (linear probing, at most half full, so a probe
//! ends at the key or at an empty slot within a slot or two): one multiply to hash, one 128-bit
//! compare per slot visited, and a miss is usually one read.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

/// The routes of one prefix length.
#[derive(Clone, Debug)]
struct LengthTable {
    /// The prefix length's mask.
    mask: u128,
    /// `64 - log2(slots.len())`: the hash's top bits pick the first slot.
    shift: u32,
    /// A power-of-two number of slots, at most half of them used.
    slots: Box<[Slot]>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    key: u128,
    value: u32,
    used: bool,
}

/// A multiply-mix hash of a masked address (never of attacker-chosen keys: the keys are the
/// FIB's own prefixes; a packet's address only selects where to look).
#[inline]
fn hash(key: u128) -> u64 {
    ((key as u64) ^ ((key >> 64) as u64).rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl LengthTable {
    fn new(len: u8, entries: &[(u128, u32)]) -> Self {
        let size = (entries.len() * 2).next_power_of_two().max(2);
        let mut table = LengthTable {
            mask: mask(u128::MAX, len),
            shift: 64 - size.trailing_zeros(),
            slots: vec![Slot::default(); size].into_boxed_slice(),
        };
        for &(key, value) in entries {
            let m = size - 1;
            let mut i = table.first_slot(key);
            while table.slots[i].used && table.slots[i].key != key {
                i = (i + 1) & m;
            }
            table.slots[i] = Slot {
                key,
                value,
                used: true,
            };
        }
        table
    }

    #[inline]
    fn first_slot(&self, key: u128) -> usize {
        // `shift` ≥ 1, and the result is below the number of slots.
        (hash(key) >> self.shift) as usize
    }

    #[inline]
    fn get(&self, key: u128) -> Option<u32> {
        let m = self.slots.len() - 1;
        let mut i = self.first_slot(key);
        // Bounded by the table's size; an empty slot always comes first (at most half full).
        for _ in 0..self.slots.len() {
            let slot = self.slots.get(i)?;
            if !slot.used {
                return None;
            }
            if slot.key == key {
                return Some(slot.value);
            }
            i = (i + 1) & m;
        }
        None
    }
}

/// The compiled IPv6 table; values are `u32` indexes chosen by the caller.
#[derive(Clone, Debug, Default)]
pub struct Lpm6 {
    /// One table per prefix length present, longest first.
    tables: Vec<LengthTable>,
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
    /// Builds the table from `(prefix, value)` pairs (a later pair for the same prefix wins).
    pub fn build(prefixes: impl IntoIterator<Item = (Ipv6Net, u32)>) -> Self {
        let mut by_len: BTreeMap<u8, HashMap<u128, u32>> = BTreeMap::new();
        for (p, v) in prefixes {
            let len = p.prefix_len().min(128);
            by_len
                .entry(len)
                .or_default()
                .insert(mask(u128::from(p.addr()), len), v);
        }
        Lpm6 {
            tables: by_len
                .iter()
                .rev()
                .map(|(&len, entries)| {
                    let entries: Vec<(u128, u32)> = entries.iter().map(|(&k, &v)| (k, v)).collect();
                    LengthTable::new(len, &entries)
                })
                .collect(),
        }
    }

    /// The value of the longest prefix holding `dst`.
    #[inline]
    pub fn lookup(&self, dst: Ipv6Addr) -> Option<u32> {
        let a = u128::from(dst);
        self.tables.iter().find_map(|t| t.get(a & t.mask))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference: the longest prefix holding `dst`, by a scan.
    fn scan(prefixes: &[(Ipv6Net, u32)], dst: Ipv6Addr) -> Option<u32> {
        prefixes
            .iter()
            .filter(|(p, _)| p.contains(&dst))
            .max_by_key(|(p, _)| p.prefix_len())
            .map(|(_, v)| *v)
    }

    proptest! {
        /// Many prefixes of a few lengths, close together, so tables fill and probe past
        /// occupied slots.
        #[test]
        fn crowded_lengths_agree_with_a_linear_scan(
            raw in prop::collection::vec((0u64..512, prop::sample::select(vec![48u8, 56, 64, 128]), any::<u32>()), 1..300),
            probes in prop::collection::vec((0u64..512, any::<u64>()), 1..64),
        ) {
            let addr = |hi: u64, lo: u64| Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(hi) << 64) | u128::from(lo));
            let mut prefixes: Vec<(Ipv6Net, u32)> = Vec::new();
            for (hi, len, v) in raw {
                let p = Ipv6Net::new(addr(hi << 8, 0), len).unwrap().trunc();
                prefixes.retain(|(q, _)| *q != p);
                prefixes.push((p, v));
            }
            let lpm = Lpm6::build(prefixes.clone());
            let edges = prefixes.iter().flat_map(|(p, _)| [p.network(), p.broadcast()]);
            for dst in probes.into_iter().map(|(hi, lo)| addr(hi << 8, lo)).chain(edges) {
                prop_assert_eq!(lpm.lookup(dst), scan(&prefixes, dst), "{}", dst);
            }
        }

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
