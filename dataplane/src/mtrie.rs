//! A 16-8-8 multibit trie for IPv4 longest-prefix match, the shape of VPP's `ip4_mtrie`: a
//! 65,536-entry root indexed by the top 16 bits, then 256-entry plies for the third and
//! fourth bytes where longer prefixes need them. A lookup is one to three array reads, with
//! no branches on prefix lengths.
//!
//! It is built whole from a prefix list (shortest prefixes first, so each later, longer one
//! overwrites the range it covers). The FIB rebuilds it when it is compiled; the ACL classifier
//! also patches single addresses of a copy ([`Mtrie4::set_address`]), which is why the 256 KiB
//! root is shared between copies (`Arc`, copied on the first write) and the plies are not.

use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

/// A trie slot: 0 for no route, `value + 1` for a route, or a ply reference with the top bit.
type Slot = u32;
const PLY: Slot = 1 << 31;

/// The compiled trie; values are `u32` indexes chosen by the caller.
#[derive(Clone, Debug)]
pub struct Mtrie4 {
    /// Shared by clones until one of them writes to it (a lookup reads it as it would a `Vec`).
    root: Arc<[Slot]>,
    plies: Vec<[Slot; 256]>,
}

impl Default for Mtrie4 {
    fn default() -> Self {
        Mtrie4 {
            root: vec![0; 1 << 16].into(),
            plies: Vec::new(),
        }
    }
}

impl Mtrie4 {
    /// Builds the trie from `(prefix, value)` pairs. Values must be below 2^31 - 1.
    pub fn build(prefixes: impl IntoIterator<Item = (Ipv4Net, u32)>) -> Self {
        let mut sorted: Vec<(Ipv4Net, u32)> = prefixes.into_iter().collect();
        sorted.sort_by_key(|(p, _)| p.prefix_len());
        let mut trie = Mtrie4::default();
        for (prefix, value) in sorted {
            trie.insert(prefix.trunc(), value.min(PLY - 2) + 1);
        }
        trie
    }

    /// Sets every slot the prefix covers, descending into plies on the way.
    fn insert(&mut self, prefix: Ipv4Net, leaf: Slot) {
        let addr = u32::from(prefix.addr());
        let len = u32::from(prefix.prefix_len());
        if len <= 16 {
            let start = (addr >> 16) as usize;
            let count = 1usize << (16 - len);
            let root = Arc::make_mut(&mut self.root);
            for slot in &mut root[start..start + count] {
                *slot = overwrite(&mut self.plies, *slot, leaf);
            }
            return;
        }
        let ply = self.ply_under_root((addr >> 16) as usize);
        if len <= 24 {
            let start = ((addr >> 8) & 0xff) as usize;
            let count = 1usize << (24 - len);
            for i in start..start + count {
                let slot = self.plies[ply][i];
                self.plies[ply][i] = overwrite(&mut self.plies, slot, leaf);
            }
            return;
        }
        let ply = self.ply_under_ply(ply, ((addr >> 8) & 0xff) as usize);
        let start = (addr & 0xff) as usize;
        let count = 1usize << (32 - len);
        for slot in &mut self.plies[ply][start..start + count] {
            *slot = leaf;
        }
    }

    /// Makes the single address `addr` (a /32, the longest prefix there is) map to `value`
    /// (`None`: no route), whatever covered it before; every other address keeps its value.
    /// To remove a /32, pass the value of the longest prefix that still holds `addr`.
    pub fn set_address(&mut self, addr: Ipv4Addr, value: Option<u32>) {
        let a = u32::from(addr);
        let ply = self.ply_under_root((a >> 16) as usize);
        let ply = self.ply_under_ply(ply, ((a >> 8) & 0xff) as usize);
        self.plies[ply][(a & 0xff) as usize] = value.map_or(0, |v| v.min(PLY - 2) + 1);
    }

    fn ply_under_root(&mut self, i: usize) -> usize {
        let slot = self.root[i];
        if slot & PLY != 0 {
            return (slot & !PLY) as usize;
        }
        let ply = self.new_ply(slot);
        Arc::make_mut(&mut self.root)[i] = PLY | ply as u32;
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
    fn new_ply(&mut self, fill: Slot) -> usize {
        self.plies.push([fill; 256]);
        self.plies.len() - 1
    }

    /// The value of the longest prefix holding `dst`.
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<u32> {
        let a = u32::from(dst);
        let mut slot = self.root[(a >> 16) as usize];
        if slot & PLY != 0 {
            slot = self.plies[(slot & !PLY) as usize][((a >> 8) & 0xff) as usize];
            if slot & PLY != 0 {
                slot = self.plies[(slot & !PLY) as usize][(a & 0xff) as usize];
            }
        }
        slot.checked_sub(1)
    }

    /// The trie borrowed for a run of lookups (a vector's): the root as a fixed-size array, so
    /// that its index needs no bounds check, and the plies as a slice, both read once. `None`
    /// never happens in practice: the root always has 2^16 slots.
    #[inline]
    pub fn view(&self) -> Option<Mtrie4View<'_>> {
        Some(Mtrie4View {
            root: (*self.root).try_into().ok()?,
            plies: &self.plies,
        })
    }

    /// Bytes the trie occupies (the root counted in full even when shared with a copy).
    pub fn memory(&self) -> usize {
        self.root.len() * 4 + self.plies.len() * 256 * 4
    }
}

/// An [`Mtrie4`] borrowed for many lookups: [`Mtrie4View::lookup`] is [`Mtrie4::lookup`]
/// without reloading the trie's pointers or bounds-checking the root index.
#[derive(Clone, Copy, Debug)]
pub struct Mtrie4View<'a> {
    root: &'a [Slot; 1 << 16],
    plies: &'a [[Slot; 256]],
}

impl Mtrie4View<'_> {
    /// The value of the longest prefix holding `dst` (as a host-order word).
    #[inline(always)]
    pub fn lookup(&self, dst: u32) -> Option<u32> {
        self.lookup_raw(dst).checked_sub(1)
    }

    /// [`Mtrie4View::lookup`] as the trie stores it: 0 for no prefix, `value + 1` for one.
    /// For tables indexed by it, whose entry 0 stands for "no route".
    #[inline(always)]
    pub fn lookup_raw(&self, dst: u32) -> u32 {
        let mut slot = self.root[(dst >> 16) as usize];
        if slot & PLY != 0 {
            // A ply index the trie made itself; `get` keeps a bad one from panicking.
            slot = self
                .plies
                .get((slot & !PLY) as usize)
                .map_or(0, |p| p[((dst >> 8) & 0xff) as usize]);
            if slot & PLY != 0 {
                slot = self
                    .plies
                    .get((slot & !PLY) as usize)
                    .map_or(0, |p| p[(dst & 0xff) as usize]);
            }
        }
        slot
    }
}

/// What a slot becomes when a longer prefix covers it: a leaf is replaced, a ply has all its
/// (shorter) contents replaced.
fn overwrite(plies: &mut [[Slot; 256]], slot: Slot, leaf: Slot) -> Slot {
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

    fn reference(prefixes: &[(Ipv4Net, u32)], dst: Ipv4Addr) -> Option<u32> {
        prefixes
            .iter()
            .filter(|(p, _)| p.contains(&dst))
            .max_by_key(|(p, _)| p.prefix_len())
            .map(|(_, v)| *v)
    }

    #[test]
    fn nested_prefixes_at_every_stride() {
        let p = |s: &str, v| (s.parse::<Ipv4Net>().unwrap(), v);
        let routes = [
            p("0.0.0.0/0", 0),
            p("198.18.0.0/15", 1),
            p("198.18.1.0/24", 2),
            p("198.18.1.128/25", 3),
            p("198.18.1.130/32", 4),
            p("203.0.113.0/24", 5),
        ];
        let t = Mtrie4::build(routes);
        let l = |s: &str| t.lookup(s.parse().unwrap());
        assert_eq!(l("198.51.100.77"), Some(0));
        assert_eq!(l("198.19.7.7"), Some(1));
        assert_eq!(l("198.18.1.7"), Some(2));
        assert_eq!(l("198.18.1.129"), Some(3));
        assert_eq!(l("198.18.1.130"), Some(4));
        assert_eq!(l("203.0.113.255"), Some(5));
        assert_eq!(
            Mtrie4::build([]).lookup("198.51.100.9".parse().unwrap()),
            None
        );
    }

    proptest! {
        #[test]
        fn agrees_with_a_linear_scan(
            raw in prop::collection::vec((any::<u32>(), 0u8..=32, 0u32..1000), 0..48),
            probes in prop::collection::vec(any::<u32>(), 1..64),
        ) {
            let mut prefixes: Vec<(Ipv4Net, u32)> = Vec::new();
            for (addr, len, v) in raw {
                let p = Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap().trunc();
                prefixes.retain(|(q, _)| *q != p);
                prefixes.push((p, v));
            }
            let t = Mtrie4::build(prefixes.clone());
            // Probe the prefixes' own edges as well as random addresses.
            let edges = prefixes.iter().flat_map(|(p, _)| [p.network(), p.broadcast()]);
            for dst in probes.into_iter().map(Ipv4Addr::from).chain(edges) {
                prop_assert_eq!(t.lookup(dst), reference(&prefixes, dst), "{}", dst);
                prop_assert_eq!(t.view().unwrap().lookup(u32::from(dst)), t.lookup(dst), "{}", dst);
            }
        }

        /// Setting single addresses on a built trie (and on a copy, the original unchanged)
        /// gives the trie built with those /32s; setting one back to its covering prefix's
        /// value removes it.
        #[test]
        fn set_address_is_a_host_route(
            raw in prop::collection::vec((any::<u32>(), 0u8..=31, 0u32..1000), 0..32),
            hosts in prop::collection::vec((any::<u32>(), 0u32..1000, any::<bool>()), 1..16),
            probes in prop::collection::vec(any::<u32>(), 1..32),
        ) {
            let mut prefixes: Vec<(Ipv4Net, u32)> = Vec::new();
            for (addr, len, v) in raw {
                let p = Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap().trunc();
                prefixes.retain(|(q, _)| *q != p);
                prefixes.push((p, v));
            }
            let original = Mtrie4::build(prefixes.clone());
            let mut t = original.clone();
            let mut all = prefixes.clone();
            for (addr, v, remove) in hosts {
                // Near the prefixes, so hosts land inside them.
                let addr = match prefixes.first() {
                    Some((p, _)) => u32::from(p.network()) | (addr & 0x1ff),
                    None => addr,
                };
                let p = Ipv4Net::new(Ipv4Addr::from(addr), 32).unwrap();
                all.retain(|(q, _)| *q != p);
                if remove {
                    t.set_address(p.addr(), reference(&all, p.addr()));
                } else {
                    all.push((p, v));
                    t.set_address(p.addr(), Some(v));
                }
            }
            let edges = all.iter().flat_map(|(p, _)| [p.network(), p.broadcast()]);
            for dst in probes.iter().copied().map(Ipv4Addr::from).chain(edges) {
                prop_assert_eq!(t.lookup(dst), reference(&all, dst), "{}", dst);
                prop_assert_eq!(original.lookup(dst), reference(&prefixes, dst), "{}", dst);
            }
        }
    }
}
