//! IPv6 longest-prefix match in two parts, split at /64, the boundary nearly every IPv6 route
//! respects (links are /64s; aggregates are shorter; only host routes and the odd point-to-point
//! link are longer):
//!
//! - prefixes of /64 and shorter are expanded into a multibit trie over the address's top 64
//!   bits, shaped as [`crate::mtrie::Mtrie4`] is: a 65,536-slot root for the first 16 bits, then
//!   256-slot plies of 8 bits as deep as the prefixes need (at most six). A forwarded packet's
//!   lookup is a few array reads, whatever lengths the table holds;
//! - longer prefixes go in one hash table per prefix length, keyed by the masked address and
//!   probed from the longest length to the shortest, as VPP's IPv6 FIB does. They are probed
//!   only for addresses in a /64 that holds one: the trie's slot for that /64 carries a flag.
//!
//! Each hash table is a small open-addressing array (linear probing, at most half full, so a
//! probe ends at the key or at an empty slot within a slot or two): one multiply to hash, one
//! 128-bit compare per slot visited, and a miss is usually one read.

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
    /// The prefixes of /64 and shorter.
    short: Trie64,
    /// One table per prefix length above 64 present, longest first.
    long: Vec<LengthTable>,
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
    /// Values must be below 2^30 - 1 (larger ones are clamped).
    pub fn build(prefixes: impl IntoIterator<Item = (Ipv6Net, u32)>) -> Self {
        let mut by_len: BTreeMap<u8, HashMap<u128, u32>> = BTreeMap::new();
        for (p, v) in prefixes {
            let len = p.prefix_len().min(128);
            by_len
                .entry(len)
                .or_default()
                .insert(mask(u128::from(p.addr()), len), v);
        }
        let mut short = Trie64::default();
        // Shortest first, so that each longer prefix overwrites the part it covers.
        for (&len, entries) in by_len.range(..=64) {
            for (&key, &value) in entries {
                short.insert((key >> 64) as u64, len, value);
            }
        }
        // After every short prefix, which would overwrite the flags.
        for entries in by_len.range(65..).map(|(_, entries)| entries) {
            for &key in entries.keys() {
                short.flag_longer((key >> 64) as u64);
            }
        }
        Lpm6 {
            short,
            long: by_len
                .range(65..)
                .rev()
                .map(|(&len, entries)| {
                    let entries: Vec<(u128, u32)> = entries.iter().map(|(&k, &v)| (k, v)).collect();
                    LengthTable::new(len, &entries)
                })
                .collect(),
        }
    }

    /// The value of the longest prefix holding `dst`.
    #[inline(always)]
    pub fn lookup(&self, dst: Ipv6Addr) -> Option<u32> {
        let a = u128::from(dst);
        let slot = self.short.slot((a >> 64) as u64);
        if slot & LONGER != 0 {
            if let Some(v) = self.lookup_long(a) {
                return Some(v);
            }
        }
        (slot & VALUE).checked_sub(1)
    }

    /// The value of the longest prefix above /64 holding `a`, if any.
    #[inline(never)]
    fn lookup_long(&self, a: u128) -> Option<u32> {
        self.long.iter().find_map(|t| t.get(a & t.mask))
    }
}

/// A [`Trie64`] slot: 0 for no route, `value + 1` for a route (possibly with [`LONGER`]), or a
/// ply reference with [`PLY`].
type TrieSlot = u32;
/// The slot refers to a ply (the rest of the slot is its index).
const PLY: TrieSlot = 1 << 31;
/// On a leaf: a prefix longer than /64 lies in this /64, so the hash tables are asked first.
const LONGER: TrieSlot = 1 << 30;
/// The value bits of a leaf.
const VALUE: TrieSlot = LONGER - 1;
/// Bits of the key below the root's 16: the plies take 8 each, from the top.
const PLY_SHIFTS: [u32; 6] = [40, 32, 24, 16, 8, 0];

/// A 16-8-8-8-8-8-8 multibit trie over the top 64 bits of an address (see the module's
/// documentation). Plies are made only where a prefix longer than the level above needs one.
#[derive(Clone, Debug)]
struct Trie64 {
    root: Box<[TrieSlot; 1 << 16]>,
    plies: Vec<[TrieSlot; 256]>,
}

impl Default for Trie64 {
    fn default() -> Self {
        Trie64 {
            root: Box::new([0; 1 << 16]),
            plies: Vec::new(),
        }
    }
}

impl Trie64 {
    /// The leaf for `key` (the top 64 bits of an address).
    #[inline(always)]
    fn slot(&self, key: u64) -> TrieSlot {
        let mut slot = self.root[(key >> 48) as usize];
        for shift in PLY_SHIFTS {
            if slot & PLY == 0 {
                break;
            }
            // A ply index the trie made itself; `get` keeps a bad one from panicking.
            slot = self
                .plies
                .get((slot & !PLY) as usize)
                .map_or(0, |p| p[((key >> shift) & 0xff) as usize]);
        }
        slot
    }

    /// Sets every slot the prefix `key/len` (`len` at most 64, `key` masked) covers to `value`,
    /// descending into plies on the way.
    fn insert(&mut self, key: u64, len: u8, value: u32) {
        let leaf = value.min(VALUE - 1) + 1;
        let len = u32::from(len);
        if len <= 16 {
            let start = (key >> 48) as usize;
            let count = 1usize << (16 - len);
            for slot in &mut self.root[start..start + count] {
                *slot = overwrite(&mut self.plies, *slot, leaf);
            }
            return;
        }
        let mut ply = self.ply_under_root((key >> 48) as usize);
        // The ply at `shift` holds bits `shift..shift + 8` and covers lengths up to 64 - shift.
        for shift in PLY_SHIFTS {
            let index = ((key >> shift) & 0xff) as usize;
            if len <= 64 - shift {
                let count = 1usize << (64 - shift - len);
                for i in index..index + count {
                    let slot = self.plies[ply][i];
                    self.plies[ply][i] = overwrite(&mut self.plies, slot, leaf);
                }
                return;
            }
            ply = self.ply_under_ply(ply, index);
        }
    }

    /// Marks the /64 leaf of `key` as holding longer prefixes, making plies down to it.
    fn flag_longer(&mut self, key: u64) {
        let mut ply = self.ply_under_root((key >> 48) as usize);
        for &shift in &PLY_SHIFTS[..PLY_SHIFTS.len() - 1] {
            ply = self.ply_under_ply(ply, ((key >> shift) & 0xff) as usize);
        }
        self.plies[ply][(key & 0xff) as usize] |= LONGER;
    }

    fn ply_under_root(&mut self, i: usize) -> usize {
        let slot = self.root[i];
        if slot & PLY != 0 {
            return (slot & !PLY) as usize;
        }
        let ply = self.new_ply(slot);
        self.root[i] = PLY | ply as u32;
        ply
    }

    fn ply_under_ply(&mut self, parent: usize, i: usize) -> usize {
        let slot = self.plies[parent][i];
        if slot & PLY != 0 {
            return (slot & !PLY) as usize;
        }
        let ply = self.new_ply(slot);
        self.plies[parent][i] = PLY | ply as u32;
        ply
    }

    /// A ply whose every slot inherits `fill`, the leaf it replaces.
    fn new_ply(&mut self, fill: TrieSlot) -> usize {
        self.plies.push([fill; 256]);
        self.plies.len() - 1
    }
}

/// What a slot becomes when a longer prefix covers it: a leaf is replaced, a ply has all its
/// (shorter) contents replaced.
fn overwrite(plies: &mut [[TrieSlot; 256]], slot: TrieSlot, leaf: TrieSlot) -> TrieSlot {
    if slot & PLY == 0 {
        return leaf;
    }
    let ply = (slot & !PLY) as usize;
    for i in 0..256 {
        let inner = plies[ply][i];
        plies[ply][i] = overwrite(plies, inner, leaf);
    }
    slot
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

    #[test]
    fn nested_prefixes_around_the_split() {
        let p = |s: &str, v| (s.parse::<Ipv6Net>().unwrap(), v);
        let routes = [
            p("::/0", 0),
            p("2001:db8::/32", 1),
            p("2001:db8:100::/48", 2),
            p("2001:db8:1::/64", 3),
            p("2001:db8:1::1/128", 4),
            p("2001:db8:1::8:0/112", 5),
            p("2001:db8:1:0:8000::/65", 6),
            p("2001:db8:100:2::/63", 7),
        ];
        let t = Lpm6::build(routes);
        let l = |s: &str| t.lookup(s.parse().unwrap());
        assert_eq!(l("2001:db9::1"), Some(0));
        assert_eq!(l("2001:db8:7::1"), Some(1));
        assert_eq!(l("2001:db8:100::9"), Some(2));
        assert_eq!(l("2001:db8:100:3::9"), Some(7));
        assert_eq!(l("2001:db8:100:1::9"), Some(2));
        assert_eq!(l("2001:db8:1::2"), Some(3));
        assert_eq!(l("2001:db8:1::1"), Some(4));
        assert_eq!(l("2001:db8:1::8:77"), Some(5));
        assert_eq!(l("2001:db8:1:0:8000::1"), Some(6));
        assert_eq!(Lpm6::build([]).lookup("2001:db8::1".parse().unwrap()), None);
    }

    proptest! {
        /// Many prefixes of a few lengths, close together, so tables fill and probe past
        /// occupied slots.
        #[test]
        fn crowded_lengths_agree_with_a_linear_scan(
            raw in prop::collection::vec((0u64..512, prop::sample::select(vec![48u8, 56, 64, 128]), 0u32..1 << 29), 1..300),
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

        /// Prefixes on both sides of /64 sharing /64s (host routes in links, links in
        /// aggregates), probed at random and at their edges.
        #[test]
        fn lengths_around_64_agree_with_a_linear_scan(
            raw in prop::collection::vec((0u64..64, 0u64..4, prop::sample::select(vec![0u8, 16, 24, 33, 47, 48, 56, 63, 64, 65, 96, 127, 128]), any::<u32>()), 1..120),
            probes in prop::collection::vec((0u64..64, 0u64..4, any::<u64>()), 1..64),
        ) {
            let addr = |hi: u64, lo: u64| Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(hi) << 64) | u128::from(lo));
            let mut prefixes: Vec<(Ipv6Net, u32)> = Vec::new();
            for (hi, lo, len, v) in raw {
                let p = Ipv6Net::new(addr(hi << 4, lo << 62 | lo), len).unwrap().trunc();
                prefixes.retain(|(q, _)| *q != p);
                prefixes.push((p, v % 1000));
            }
            let lpm = Lpm6::build(prefixes.clone());
            let edges = prefixes.iter().flat_map(|(p, _)| [p.network(), p.broadcast()]);
            for dst in probes.into_iter().map(|(hi, lo, r)| addr(hi << 4, lo << 62 | (r & 7))).chain(edges) {
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
