//! The populate loop, fast: how [`crate::maglev`]'s turns are executed. The turns themselves
//! (who claims when, and which slot) are the paper's, so the table is the reference's, slot for
//! slot.
//!
//! A turn claims the first unclaimed slot of the backend's permutation from where its last turn
//! stopped. Which slots are claimed is kept in one of two layouts ([`Claimed`]): a bit per slot
//! (8 KiB for M = 65537, in L1) for the sets that finish by order maps, whose windows and maps
//! probe many slots per claim; a byte per slot (64 KiB) for all others, where a probe is one
//! compare with memory and a claim one store. How the slot is found depends on how full the
//! table is:
//!
//! - **Walks** (most turns): probe `pos, pos + skip, ...` (a subtract, an add and a
//!   conditional move per step, no modulo; see [`add_mod`]). Once a quarter of the slots is
//!   left, two interleaved chains (stride `2·skip`), once an eighth is left, four: a walk is
//!   then tens of probes long, and one chain would wait on its own add/compare/select latency
//!   at every step.
//! - **Branch-free starts** (equal weights, tables of at least [`ORDER_MAPS_MIN_TABLE_SIZE`]
//!   slots, sets not finishing by order maps, from a third claimed until a quarter is left): a
//!   turn probes its first four slots without a branch and selects the first free one by its
//!   bit in a mask; only when none is free does it walk on. A plain walk ends on a branch that
//!   is mispredicted on most turns once a sizeable share is claimed; here the remaining branch
//!   (all probes claimed) is rarely taken, so the CPU runs ahead into the next backends' turns,
//!   which do not depend on this one. While two-thirds is free, plain walks are faster: most
//!   end at their first probe.
//! - **Windows** (equal weights, at most [`WINDOW_MAX_BACKENDS`] backends and at least
//!   [`WINDOW_SLOTS_PER_BACKEND`] slots each, until `M / 16` slots are left): a backend probes
//!   its next 64 slots at once, without branching, into a 64-bit mask of the ones that were
//!   free, keeping the 64 slots, and then takes one candidate per turn, rechecking it (another
//!   backend may have claimed it since). A window replaces the walk's unpredictable final
//!   branch with a check that almost always passes. With many backends per slot the candidates
//!   go stale between a backend's turns (every other backend claims in between), so such sets
//!   walk; late in the fill a window holds few free slots, so from `M / 16` on every set walks.
//! - **The tail** (the last `⌊√M⌋ / 2` free slots, in tables of at least
//!   [`TAIL_MIN_TABLE_SIZE`] slots): walks there average `M / free` probes, a third to a half of
//!   all probes. Instead, the backend's next slot is the free slot `f` with the fewest steps
//!   from `pos`, `(f - pos) · skip⁻¹ mod M` (the inverse exists since `M` is prime): one
//!   multiply, a Barrett reduction and a `min` per free slot, against hundreds of probes. With
//!   equal weights the inverses of all backends with a tail turn are computed together
//!   ([`inverses_mod`]).
//! - **Order maps** (equal weights, up to ~30 backends at M = 65537, none below
//!   [`ORDER_MAPS_MIN_TABLE_SIZE`] slots): from `M / 3N` free slots on, each backend translates
//!   the free slots into its own permutation's order once (the step count above, as a bit in an
//!   `M`-bit map) and then finds each next slot by scanning its map 64 steps per word. `N`
//!   translations of the free list cost less than the walks they replace when `N` is small.
//!
//! Measured at M = 65537 (10 / 100 / 1000 backends, loaded 2-core VM, fastest of 300 builds,
//! alternating with the paper's loop). Setup (sorting and hashing the names, allocating) is
//! under 1% of a build at 10 backends, 2% at 100 and about 10% at 1000 (0.85 ms before the
//! changes below: sorting 33 µs, hashing 14 µs, the bench's copy of the set it hands over and
//! its drop 21 µs). The rest is the fill, with the entries written as slots are claimed (not
//! writing them at all, timed as a test, saved 10% of the first half). At 1000 backends the
//! fill took, phase by phase: the first half 200 µs, to three-quarters 155, to seven-eighths
//! 114, on to the tail (√M) 213, the tail 61. At 1000 backends, [`add_mod`] as a borrow
//! saved 2%, [`walk_until`] by whole rounds 4%, plain walks rather than two branch-free
//! probes until a third is claimed 5-8%, the tail's packed `min` a sixth of the tail, and
//! starting the tail at `√M / 2` rather than `√M` 2% (0.35 to 0.7 `√M` measured alike; 1.5
//! `√M` was 5% slower); 100 backends gained 5-10% from the same. Measured slower at 1000
//! and not kept: the entries doubling as the claimed map (`u32::MAX` free: 7%, the probes
//! then miss L1), eight-chain walks with one branch per eight probes (5-12%) or per four (a
//! third of the late walks), windows until half or a quarter is left (20-30%), bits instead
//! of bytes (4-6%); sorting the names by a cached 16-byte key with `sort_by_cached_key`
//! (slower than comparing names), hashing both seeds in one pass (1.5 µs).
//!
//! The tail search and the multi-chain walks gave most of the gain over one plain walk; windows
//! 5-15% at 10 and 100, stopping them at `M / 16` another 5% at 100 (`M / 4`, `M / 8` and
//! `M / 32` were slower), keeping each window's slots rather than recomputing one per turn 7% at
//! 10 and 4% at 100; order maps another ~10% at 10; branch-free starts 8-10% at 1000 (four
//! probes beat two from half the table on; eight from a quarter left to an eighth measured
//! no better than two chains); bytes instead of bits 2-5% at 100 and 1000 and for weighted
//! sets, but 3% slower at 10, hence the two layouts; batched inverses about a tenth of the tail
//! at 1000. Walking two turns at once (then fixing the rare clash) measured no faster: it keeps
//! every walk's final branch, and late walks are bound by probe instructions, not by latency.
//! The sizes services get (about 100 slots per backend, 251 to 65521 slots) build 10-20% faster
//! than before the byte map up to 2039 slots (plain walks there: the branch-free starts were
//! slower in small tables), about as fast at 8191 and 32749, 8% faster at 65521.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::{offset_and_skip, Backend, BackendIndex};

/// How to schedule turns; `Auto` picks by the weights, the others exist so tests can check
/// every schedule against the reference on the same inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))] // only tests force a schedule
pub(crate) enum Schedule {
    Auto,
    /// Equal weights only: every backend takes a turn every round.
    RoundRobin,
    Scan,
    Heap,
}

/// When the heaviest weight is more than this many times the mean, most backends have no turn
/// in most rounds and the heap schedule wins over scanning every backend every round.
const HEAP_WHEN_MAX_OVER_MEAN: u64 = 8;

/// Equal-weight sets of at most this many backends fill by windows. Between two turns of a
/// backend, the others claim `N - 1` slots; with more backends too many of its candidates have
/// been taken by its next turn (measured at M = 65537: 5-15% faster than walking up to 100
/// backends, even at 200, half again slower at 1000).
const WINDOW_MAX_BACKENDS: usize = 128;

/// Order maps (see [`finish_by_order_maps`]) take `words of the bitmap × backends` words;
/// 256 KiB at most (31 backends at M = 65537), so they stay in L2.
const ORDER_MAPS_MAX_WORDS: usize = 1 << 15;

/// Windows also need at least this many table slots per backend: otherwise the `N - 1` claims
/// between two turns of a backend are too large a share of the table, and its candidates go
/// stale (a 1021-slot table with 10 backends, as services get, was 1.7× slower by windows).
const WINDOW_SLOTS_PER_BACKEND: usize = 512;

/// Windows stop once `M / WINDOW_UNTIL_ONE_IN` slots are left, and four-chain walks take over:
/// by then a 64-slot window holds a few free slots, most of its probes are wasted, and more of
/// its candidates go stale between turns (at 100 backends, M = 65537: 5% faster than windows
/// down to the tail; a quarter or an eighth was slower, as was a thirty-second).
const WINDOW_UNTIL_ONE_IN: u32 = 16;

/// Tables smaller than this have no tail search (see [`Fill::new`]).
const TAIL_MIN_TABLE_SIZE: u32 = 1024;

/// Smaller tables have no order maps: measured no faster there (a few µs per build).
const ORDER_MAPS_MIN_TABLE_SIZE: u32 = 4096;

/// Slots per window: one `u64` mask.
const WINDOW: u32 = 64;

/// Where a backend's walk through its permutation stands.
#[derive(Clone, Copy)]
struct Walk {
    /// The next slot of its permutation to try: every slot from its last claim up to here is
    /// claimed.
    pos: u32,
    skip: u32,
}

/// A backend taking weighted turns.
struct Cursor {
    index: BackendIndex,
    walk: Walk,
    weight: u64,
    /// `(turns taken + 1) * W`: the backend has earned its next turn in round `r` once
    /// `r * weight >= due`.
    due: u64,
    /// `skip⁻¹ mod M` once the tail needs it, else 0 (no inverse is 0).
    inverse: u32,
}

/// `a + b mod m`, for `a, b < m`.
///
/// As `a - (m - b)`, which borrows exactly when `a + b < m`: the subtraction's own flag picks
/// the result, so a step is a subtract, an add and a conditional move (`m - b` is hoisted out
/// of a walk), one instruction fewer than comparing `a + b` with `m` (2% of a build at 1000
/// backends).
#[inline(always)]
fn add_mod(a: u32, b: u32, m: u32) -> u32 {
    let (wrapped, below) = a.overflowing_sub(m - b);
    if below {
        a + b
    } else {
        wrapped
    }
}

/// Which slots are claimed. Two layouts: [`Bits`] keeps the map in L1 cache, [`Bytes`] makes a
/// probe one compare and a claim one store.
trait Claimed {
    fn new(m: u32) -> Self;
    fn is_free(&self, slot: u32) -> bool;
    /// 1 when `slot` is free, else 0.
    fn free_bit(&self, slot: u32) -> u64;
    fn set(&mut self, slot: u32);
    /// Appends the free slots below `m` to `out`, in increasing order.
    fn collect_free(&self, m: u32, out: &mut Vec<u32>);
}

/// One bit per slot, set once claimed: 8 KiB for M = 65537. Windows and order maps, which probe
/// many slots per claim, run faster on it.
struct Bits(Vec<u64>);

impl Claimed for Bits {
    fn new(m: u32) -> Self {
        Bits(vec![0; (m as usize).div_ceil(64)])
    }

    #[inline(always)]
    fn is_free(&self, slot: u32) -> bool {
        self.0[(slot / 64) as usize] & (1u64 << (slot % 64)) == 0
    }

    #[inline(always)]
    fn free_bit(&self, slot: u32) -> u64 {
        (!self.0[(slot / 64) as usize] >> (slot % 64)) & 1
    }

    #[inline(always)]
    fn set(&mut self, slot: u32) {
        self.0[(slot / 64) as usize] |= 1u64 << (slot % 64);
    }

    fn collect_free(&self, m: u32, out: &mut Vec<u32>) {
        for (word_index, &word) in self.0.iter().enumerate() {
            let mut unclaimed = !word;
            while unclaimed != 0 {
                let slot = word_index as u32 * 64 + unclaimed.trailing_zeros();
                // The last word's bits past m are never claimed.
                if slot < m {
                    out.push(slot);
                }
                unclaimed &= unclaimed - 1;
            }
        }
    }
}

/// One byte per slot, 1 once claimed: 64 KiB for M = 65537, mostly in L2, but a probe is a
/// compare with memory and a claim a store, with no shifts. Walks run faster on it.
struct Bytes(Vec<u8>);

impl Claimed for Bytes {
    fn new(m: u32) -> Self {
        Bytes(vec![0; m as usize])
    }

    #[inline(always)]
    fn is_free(&self, slot: u32) -> bool {
        self.0[slot as usize] == 0
    }

    #[inline(always)]
    fn free_bit(&self, slot: u32) -> u64 {
        u64::from(self.0[slot as usize] == 0)
    }

    #[inline(always)]
    fn set(&mut self, slot: u32) {
        self.0[slot as usize] = 1;
    }

    fn collect_free(&self, m: u32, out: &mut Vec<u32>) {
        // Eight bytes at a time: late in the fill nearly every byte is 1.
        const ALL_CLAIMED: u64 = u64::from_ne_bytes([1; 8]);
        let chunks = self.0.chunks_exact(8);
        let rest = chunks.remainder();
        for (chunk_index, chunk) in chunks.enumerate() {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            if u64::from_ne_bytes(bytes) != ALL_CLAIMED {
                let base = chunk_index as u32 * 8;
                out.extend(
                    (0..8u32)
                        .filter(|&k| bytes[k as usize] == 0)
                        .map(|k| base + k),
                );
            }
        }
        let base = m - rest.len() as u32;
        out.extend(
            (0..rest.len() as u32)
                .filter(|&k| rest[k as usize] == 0)
                .map(|k| base + k),
        );
    }
}

/// Claims the first free slot from `pos` on; returns it and the slot after it.
#[inline(always)]
fn walk1<C: Claimed>(claimed: &mut C, pos: u32, skip: u32, m: u32) -> (u32, u32) {
    let mut slot = pos;
    loop {
        let next = add_mod(slot, skip, m);
        if claimed.is_free(slot) {
            claimed.set(slot);
            return (slot, next);
        }
        slot = next;
    }
}

/// [`walk1`] as two chains, even and odd steps.
#[inline(always)]
fn walk2<C: Claimed>(claimed: &mut C, pos: u32, skip: u32, m: u32) -> (u32, u32) {
    let skip2 = add_mod(skip, skip, m);
    let mut a = pos;
    let mut b = add_mod(a, skip, m);
    loop {
        if claimed.is_free(a) {
            claimed.set(a);
            return (a, b);
        }
        if claimed.is_free(b) {
            claimed.set(b);
            return (b, add_mod(a, skip2, m));
        }
        a = add_mod(a, skip2, m);
        b = add_mod(b, skip2, m);
    }
}

/// [`walk1`] as four chains.
#[inline(always)]
fn walk4<C: Claimed>(claimed: &mut C, pos: u32, skip: u32, m: u32) -> (u32, u32) {
    let skip2 = add_mod(skip, skip, m);
    let skip4 = add_mod(skip2, skip2, m);
    let mut a = pos;
    let mut b = add_mod(a, skip, m);
    let mut c = add_mod(a, skip2, m);
    let mut d = add_mod(b, skip2, m);
    loop {
        if claimed.is_free(a) {
            claimed.set(a);
            return (a, b);
        }
        if claimed.is_free(b) {
            claimed.set(b);
            return (b, c);
        }
        if claimed.is_free(c) {
            claimed.set(c);
            return (c, d);
        }
        if claimed.is_free(d) {
            claimed.set(d);
            return (d, add_mod(a, skip4, m));
        }
        a = add_mod(a, skip4, m);
        b = add_mod(b, skip4, m);
        c = add_mod(c, skip4, m);
        d = add_mod(d, skip4, m);
    }
}

/// [`walk1`] with its first four probes taken without a branch: the first free one of `pos`,
/// `pos + skip`, ... `pos + 3·skip` is selected by its position in a mask, and only when all
/// four are claimed does the walk go on (by [`walk4`]).
#[inline(always)]
fn ahead4<C: Claimed>(claimed: &mut C, pos: u32, skip: u32, m: u32) -> (u32, u32) {
    let skip2 = add_mod(skip, skip, m);
    let a = pos;
    let b = add_mod(a, skip, m);
    let c = add_mod(a, skip2, m);
    let d = add_mod(b, skip2, m);
    let e = add_mod(c, skip2, m);
    let free = claimed.free_bit(a)
        | claimed.free_bit(b) << 1
        | claimed.free_bit(c) << 2
        | claimed.free_bit(d) << 3;
    if free == 0 {
        return walk4(claimed, e, skip, m);
    }
    let slots = [a, b, c, d, e];
    let k = free.trailing_zeros() as usize;
    let (slot, next) = (slots[k], slots[k + 1]);
    claimed.set(slot);
    (slot, next)
}

/// `a⁻¹ mod m` for `m` prime and `0 < a < m` (extended Euclid).
fn inverse_mod(a: u32, m: u32) -> u32 {
    let (mut t, mut next_t) = (0i64, 1i64);
    let (mut r, mut next_r) = (i64::from(m), i64::from(a));
    while next_r != 0 {
        let q = r / next_r;
        (t, next_t) = (next_t, t - q * next_t);
        (r, next_r) = (next_r, r - q * next_r);
    }
    // t is in (-m, m); the result is below m, so it fits.
    t.rem_euclid(i64::from(m)) as u32
}

/// `a⁻¹ mod m` of every `a` in `values` (each in `1..m`, `m` prime) with one extended Euclid and
/// three multiplications each: the inverse of the product of all, peeled back one value at a
/// time (Montgomery's trick). At 1000 backends this took about a tenth off the tail's time.
fn inverses_mod(values: &[u32], m: u32, reduce: Reduce) -> Vec<u32> {
    // products[i] = values[0] · ... · values[i - 1] mod m.
    let mut products = Vec::with_capacity(values.len());
    let mut product = 1u64;
    for &value in values {
        products.push(product);
        product = reduce.reduce(product * u64::from(value));
    }
    // No value is 0 mod the prime m, so neither is the product; below m, it fits.
    let mut inverse = u64::from(inverse_mod(product as u32, m));
    let mut inverses = vec![0u32; values.len()];
    for ((&value, &before), out) in values.iter().zip(&products).zip(&mut inverses).rev() {
        // `inverse` is (values[0] · ... · values[i])⁻¹; below m, so the result fits.
        *out = reduce.reduce(inverse * before) as u32;
        inverse = reduce.reduce(inverse * u64::from(value));
    }
    inverses
}

/// `x mod m` without a division (Barrett): `x / m` estimated from `x * ⌊2^64 / m⌋ / 2^64`,
/// which is at most one short for `x < 2^52`, then corrected.
#[derive(Clone, Copy)]
struct Reduce {
    m: u64,
    inv: u64,
}

impl Reduce {
    fn new(m: u32) -> Self {
        Reduce {
            m: u64::from(m),
            inv: u64::MAX / u64::from(m),
        }
    }

    /// `x mod m` for `x < 2^52` (products of two values below `m <= 2^24` are below `2^48`).
    #[inline(always)]
    fn reduce(self, x: u64) -> u64 {
        let q = ((u128::from(x) * u128::from(self.inv)) >> 64) as u64;
        let r = x - q * self.m;
        if r >= self.m {
            r - self.m
        } else {
            r
        }
    }
}

/// The table being filled.
struct Fill<C> {
    m: u32,
    claimed: C,
    entries: Vec<BackendIndex>,
    /// Slots not yet claimed.
    free: u32,
    /// Walks use two chains from here (free slots) down, four from `walk4_at` (round-robin
    /// turns start branch-free above `walk2_at`, see [`fill_round_robin`]).
    walk2_at: u32,
    walk4_at: u32,
    /// From here down, turns search [`tail`](Self::tail) instead of walking.
    tail_at: u32,
    /// The free slots, in no order, once `free <= tail_at`.
    tail: Vec<u32>,
    reduce: Reduce,
}

impl<C: Claimed> Fill<C> {
    fn new(m: u32) -> Self {
        // Small tables walk to the end: their last slots are few dozen probes away, and the
        // search's setup (inverses, the free list) costs more than it saves.
        let tail_at = if m >= TAIL_MIN_TABLE_SIZE {
            m.isqrt() / 2
        } else {
            0
        };
        // Phases in order, also for small tables where m / 8 is below √m.
        let walk4_at = (m / 8).max(tail_at);
        let walk2_at = (m / 4).max(walk4_at);
        Fill {
            m,
            claimed: C::new(m),
            // Every slot is overwritten: filling stops only once `m` slots have been claimed.
            entries: vec![BackendIndex(u32::MAX); m as usize],
            free: m,
            walk2_at,
            walk4_at,
            tail_at,
            tail: Vec::with_capacity(tail_at as usize),
            reduce: Reduce::new(m),
        }
    }

    fn is_full(&self) -> bool {
        self.free == 0
    }

    /// Gives `cursor`'s backend the next unclaimed slot of its permutation. Ends: the table is
    /// not full when this is called, and the permutation visits every slot.
    #[inline(always)]
    fn claim(&mut self, cursor: &mut Cursor) {
        let walk = &mut cursor.walk;
        let slot = if self.free > self.tail_at {
            let (slot, next) = if self.free > self.walk2_at {
                walk1(&mut self.claimed, walk.pos, walk.skip, self.m)
            } else if self.free > self.walk4_at {
                walk2(&mut self.claimed, walk.pos, walk.skip, self.m)
            } else {
                walk4(&mut self.claimed, walk.pos, walk.skip, self.m)
            };
            walk.pos = next;
            slot
        } else {
            self.nearest_in_tail(walk, &mut cursor.inverse)
        };
        self.record(slot, cursor.index);
    }

    /// Writes the entry of a slot just claimed (its bit already set).
    #[inline(always)]
    fn record(&mut self, slot: u32, index: BackendIndex) {
        self.entries[slot as usize] = index;
        self.free -= 1;
        if self.free == self.tail_at {
            self.collect_tail();
        }
    }

    fn collect_tail(&mut self) {
        self.claimed.collect_free(self.m, &mut self.tail);
    }

    /// The tail's turn: takes the free slot fewest steps of `skip` ahead of `walk.pos`.
    /// `inverse` caches `skip⁻¹ mod M` (0 until computed).
    fn nearest_in_tail(&mut self, walk: &mut Walk, inverse: &mut u32) -> u32 {
        let m = self.m;
        if *inverse == 0 {
            *inverse = inverse_mod(walk.skip, m);
        }
        let (back, inverse, reduce) = (m - walk.pos, u64::from(*inverse), self.reduce);
        // The fewest steps in the high half, where in `tail` in the low: one `min` per slot.
        let mut best = u64::MAX;
        for (at, &slot) in self.tail.iter().enumerate() {
            // `slot - pos mod m` left unreduced, below 2m: the product stays below 2^49.
            let ahead = u64::from(slot + back);
            // Steps are distinct for distinct slots (a permutation), so the minimum is unique
            // and the order of `tail` does not matter.
            let steps = reduce.reduce(ahead * inverse);
            best = best.min(steps << 32 | at as u64);
        }
        // The table is not full, so `tail` holds a slot and the low half of `best` indexes it.
        let slot = self.tail.swap_remove(best as u32 as usize);
        self.claimed.set(slot);
        walk.pos = add_mod(slot, walk.skip, m);
        slot
    }
}

/// Fills a table of `m` slots from `backends` (sorted by name, names unique, `m` prime, at most
/// `m` weighted backends). Returns no entries when no backend has a weight.
pub(crate) fn populate(m: u32, backends: &[Backend], schedule: Schedule) -> Vec<BackendIndex> {
    let max_weight = backends
        .iter()
        .map(|b| u64::from(b.weight))
        .max()
        .unwrap_or(0);
    if max_weight == 0 {
        return Vec::new();
    }
    let mut cursors: Vec<Cursor> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.weight > 0)
        .map(|(index, b)| {
            let (offset, skip) = offset_and_skip(&b.name, m);
            Cursor {
                index: BackendIndex(index as u32),
                walk: Walk { pos: offset, skip },
                weight: u64::from(b.weight),
                due: max_weight,
                inverse: 0,
            }
        })
        .collect();
    let equal = cursors.iter().all(|c| c.weight == max_weight);
    let schedule = match schedule {
        Schedule::Auto if equal => Schedule::RoundRobin,
        Schedule::Auto => {
            let total_weight: u64 = cursors.iter().map(|c| c.weight).sum();
            if max_weight * cursors.len() as u64 > HEAP_WHEN_MAX_OVER_MEAN * total_weight {
                Schedule::Heap
            } else {
                Schedule::Scan
            }
        }
        // Round-robin is the scan schedule when weights are equal, and wrong otherwise.
        Schedule::RoundRobin if !equal => Schedule::Scan,
        forced => forced,
    };
    match schedule {
        Schedule::Heap => {
            let mut fill = Fill::<Bytes>::new(m);
            fill_by_heap(&mut fill, &mut cursors, max_weight);
            fill.entries
        }
        Schedule::Scan => {
            let mut fill = Fill::<Bytes>::new(m);
            fill_by_scan(&mut fill, &mut cursors, max_weight);
            fill.entries
        }
        Schedule::RoundRobin | Schedule::Auto if by_order_maps(m, cursors.len()) => {
            let mut fill = Fill::<Bits>::new(m);
            fill_round_robin(&mut fill, &cursors);
            fill.entries
        }
        Schedule::RoundRobin | Schedule::Auto => {
            let mut fill = Fill::<Bytes>::new(m);
            fill_round_robin(&mut fill, &cursors);
            fill.entries
        }
    }
}

/// Whether `n` equal-weight backends finish by order maps (see [`finish_by_order_maps`]).
fn by_order_maps(m: u32, n: usize) -> bool {
    n * (m as usize).div_ceil(64) <= ORDER_MAPS_MAX_WORDS && m >= ORDER_MAPS_MIN_TABLE_SIZE
}

/// Equal weights: backends take turns in order, one per round. Each phase is its own loop over
/// compact (position, skip) pairs, so a turn decides nothing but its walk.
fn fill_round_robin<C: Claimed>(fill: &mut Fill<C>, cursors: &[Cursor]) {
    let indices: Vec<BackendIndex> = cursors.iter().map(|c| c.index).collect();
    let mut walks: Vec<Walk> = cursors.iter().map(|c| c.walk).collect();
    let n = walks.len();
    // Few backends finish by order maps, from well before the tail: n free-slot lists to
    // translate, each much cheaper than the walks it replaces.
    let by_maps = by_order_maps(fill.m, n);
    let stop = if by_maps {
        (fill.m / (3 * n as u32)).max(fill.tail_at)
    } else {
        fill.tail_at
    };
    let mut turn = if n <= WINDOW_MAX_BACKENDS && n * WINDOW_SLOTS_PER_BACKEND <= fill.m as usize {
        fill_by_windows(
            fill,
            &indices,
            &mut walks,
            stop.max(fill.m / WINDOW_UNTIL_ONE_IN),
        )
    } else {
        0
    };
    // While two-thirds of the table is free, most walks end at their first probe: plain walks
    // (measured at 1000 backends: 5-8% faster than branch-free starts from the first turn; the
    // switch anywhere from three-fifths to three-quarters free measured the same).
    let plain_until = (fill.m / 3 * 2).max(fill.walk2_at).max(stop);
    turn = walk_until(fill, &indices, &mut walks, turn, plain_until, walk1);
    // Branch-free starts pay where a walk's end is mispredicted often and the table is large;
    // in small tables, and on the bit layout, plain walks measured faster.
    let walk2_at = fill.walk2_at.max(stop);
    turn = if by_maps || fill.m < ORDER_MAPS_MIN_TABLE_SIZE {
        walk_until(fill, &indices, &mut walks, turn, walk2_at, walk1)
    } else {
        walk_until(fill, &indices, &mut walks, turn, walk2_at, ahead4)
    };
    turn = walk_until(
        fill,
        &indices,
        &mut walks,
        turn,
        fill.walk4_at.max(stop),
        walk2,
    );
    turn = walk_until(fill, &indices, &mut walks, turn, stop, walk4);
    if fill.is_full() {
        return;
    }
    fill.collect_tail();
    if by_maps {
        finish_by_order_maps(fill, &indices, &walks, turn);
        return;
    }
    // The inverses of the skips of the backends with a turn left, all at once.
    let mut inverses = vec![0u32; n];
    let takers: Vec<usize> = (0..n.min(fill.free as usize))
        .map(|k| (turn + k) % n)
        .collect();
    let skips: Vec<u32> = takers.iter().map(|&at| walks[at].skip).collect();
    for (&at, inverse) in takers.iter().zip(inverses_mod(&skips, fill.m, fill.reduce)) {
        inverses[at] = inverse;
    }
    while !fill.is_full() {
        let (Some(walk), Some(inverse), Some(&index)) = (
            walks.get_mut(turn),
            inverses.get_mut(turn),
            indices.get(turn),
        ) else {
            return;
        };
        let slot = fill.nearest_in_tail(walk, inverse);
        fill.record(slot, index);
        turn += 1;
        if turn == n {
            turn = 0;
        }
    }
}

/// Round-robin turns to the end for few backends. Each backend gets a map of the free slots
/// (`fill.tail`) in its own permutation's order: bit `j` is set when slot `pos + j·skip` was
/// free. A turn takes the next set bit whose slot is still free, so a backend scans its map
/// once, 64 steps of its walk per word, instead of walking slot by slot.
fn finish_by_order_maps<C: Claimed>(
    fill: &mut Fill<C>,
    indices: &[BackendIndex],
    walks: &[Walk],
    mut turn: usize,
) {
    let (m, reduce, words) = (fill.m, fill.reduce, (fill.m as usize).div_ceil(64));
    let mut maps = vec![0u64; walks.len() * words];
    for (walk, map) in walks.iter().zip(maps.chunks_exact_mut(words)) {
        let inverse = u64::from(inverse_mod(walk.skip, m));
        for &slot in &fill.tail {
            let ahead = if slot >= walk.pos {
                slot - walk.pos
            } else {
                slot + m - walk.pos
            };
            // Below m, so within the map.
            let step = reduce.reduce(u64::from(ahead) * inverse);
            map[(step / 64) as usize] |= 1u64 << (step % 64);
        }
    }
    // The next step each backend's scan looks at.
    let mut next = vec![0u32; walks.len()];
    while !fill.is_full() {
        let (Some(walk), Some(map), Some(next), Some(&index)) = (
            walks.get(turn),
            maps.chunks_exact(words).nth(turn),
            next.get_mut(turn),
            indices.get(turn),
        ) else {
            return;
        };
        // Every slot still free is at a step >= `next` (the scan only passed claimed ones) and
        // the table is not full, so a step is found.
        let Some(slot) = (|| loop {
            let step = next_set_bit(map, *next)?;
            *next = step + 1;
            let slot = reduce.reduce(u64::from(walk.pos) + u64::from(step) * u64::from(walk.skip));
            // Below m, so it fits.
            let slot = slot as u32;
            if fill.claimed.is_free(slot) {
                return Some(slot);
            }
        })() else {
            return;
        };
        fill.claimed.set(slot);
        fill.entries[slot as usize] = index;
        fill.free -= 1;
        turn += 1;
        if turn == walks.len() {
            turn = 0;
        }
    }
}

/// The first set bit of `map` at or after `from`.
#[inline(always)]
fn next_set_bit(map: &[u64], from: u32) -> Option<u32> {
    let first = (from / 64) as usize;
    let mut bits = map.get(first)? & (!0u64 << (from % 64));
    let mut word = first;
    while bits == 0 {
        word += 1;
        bits = *map.get(word)?;
    }
    Some(word as u32 * 64 + bits.trailing_zeros())
}

/// Round-robin turns by `walk` from `turn` on, until `until` slots are left; returns whose
/// turn is next. Does not collect the tail.
#[inline(always)]
fn walk_until<C: Claimed>(
    fill: &mut Fill<C>,
    indices: &[BackendIndex],
    walks: &mut [Walk],
    mut turn: usize,
    until: u32,
    walk: impl Fn(&mut C, u32, u32, u32) -> (u32, u32),
) -> usize {
    let m = fill.m;
    // Locals rather than fields, so the loop keeps them in registers.
    let mut free = fill.free;
    let (claimed, entries) = (&mut fill.claimed, &mut fill.entries[..]);
    // Whole rounds (the first from `turn` on), so that a turn has no index to check or wrap
    // (4% of a build at 1000 backends).
    let mut from = turn;
    'rounds: while free > until {
        let (Some(walks), Some(indices)) = (walks.get_mut(from..), indices.get(from..)) else {
            break;
        };
        for (w, &index) in walks.iter_mut().zip(indices) {
            if free == until {
                break 'rounds;
            }
            let (slot, next) = walk(claimed, w.pos, w.skip, m);
            w.pos = next;
            entries[slot as usize] = index;
            free -= 1;
            turn += 1;
        }
        if turn == from {
            // An empty round: no backends to take turns.
            break;
        }
        from = 0;
        turn = 0;
    }
    fill.free = free;
    turn
}

/// A backend's window: the [`WINDOW`] slots of its permutation it probed last, and which of
/// them were free when it looked (bit `k`: `slots[k]`). Keeping the slots costs a store per
/// probe and saves recomputing `base + k·skip mod M` (a multiply and a reduction) per turn.
#[derive(Clone, Copy)]
struct Window {
    slots: [u32; WINDOW as usize],
    candidates: u64,
}

/// Round-robin turns by windows, until `stop` slots are left; returns whose turn is next, with
/// every walk's `pos` set for the rest of the fill. Does not collect the tail.
fn fill_by_windows<C: Claimed>(
    fill: &mut Fill<C>,
    indices: &[BackendIndex],
    walks: &mut [Walk],
    stop: u32,
) -> usize {
    let m = fill.m;
    let empty = Window {
        slots: [0; WINDOW as usize],
        candidates: 0,
    };
    let mut windows = vec![empty; walks.len()];
    // Locals rather than fields, so the loop keeps them in registers.
    let mut free = fill.free;
    let (claimed, entries) = (&mut fill.claimed, &mut fill.entries[..]);
    let mut turn = 0;
    'rounds: while free > stop {
        for ((cursor, window), &index) in walks.iter_mut().zip(&mut windows).zip(indices) {
            if free == stop {
                break 'rounds;
            }
            let slot = loop {
                if window.candidates == 0 {
                    // Probe the next 64 slots as two chains, even and odd, without branches.
                    let skip2 = add_mod(cursor.skip, cursor.skip, m);
                    let mut a = cursor.pos;
                    let mut b = add_mod(a, cursor.skip, m);
                    let mut candidates = 0u64;
                    for (k, pair) in window.slots.chunks_exact_mut(2).enumerate() {
                        pair[0] = a;
                        pair[1] = b;
                        candidates |= claimed.free_bit(a) << (2 * k);
                        candidates |= claimed.free_bit(b) << (2 * k + 1);
                        a = add_mod(a, skip2, m);
                        b = add_mod(b, skip2, m);
                    }
                    window.candidates = candidates;
                    cursor.pos = a;
                    continue;
                }
                let k = window.candidates.trailing_zeros();
                window.candidates &= window.candidates - 1;
                let slot = window.slots[(k % WINDOW) as usize];
                if claimed.is_free(slot) {
                    break slot;
                }
            };
            claimed.set(slot);
            entries[slot as usize] = index;
            free -= 1;
            turn += 1;
        }
        turn = 0;
    }
    fill.free = free;
    // Where each walk resumes: its first candidate still free (all before it are claimed), or
    // past the window when none is.
    for (cursor, window) in walks.iter_mut().zip(&windows) {
        let mut candidates = window.candidates;
        while candidates != 0 {
            let slot = window.slots[(candidates.trailing_zeros() % WINDOW) as usize];
            if fill.claimed.is_free(slot) {
                cursor.pos = slot;
                break;
            }
            candidates &= candidates - 1;
        }
    }
    turn
}

/// The paper's round-robin with weights: each round, every backend that has earned a turn
/// takes one.
fn fill_by_scan<C: Claimed>(fill: &mut Fill<C>, cursors: &mut [Cursor], max_weight: u64) {
    let mut round = 0u64;
    loop {
        round += 1;
        for cursor in cursors.iter_mut() {
            if round * cursor.weight < cursor.due {
                continue;
            }
            cursor.due += max_weight;
            fill.claim(cursor);
            if fill.is_full() {
                return;
            }
        }
    }
}

/// The same turns in the same order as [`fill_by_scan`], taken from a min-heap keyed by
/// (round of the backend's next turn, position in name order), so rounds in which a backend has
/// no turn cost nothing for it.
fn fill_by_heap<C: Claimed>(fill: &mut Fill<C>, cursors: &mut [Cursor], max_weight: u64) {
    // The first round in which `r * weight >= due`.
    let next_round = |cursor: &Cursor| cursor.due.div_ceil(cursor.weight);
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = cursors
        .iter()
        .enumerate()
        .map(|(position, cursor)| Reverse((next_round(cursor), position)))
        .collect();
    while let Some(Reverse((_, position))) = heap.pop() {
        let Some(cursor) = cursors.get_mut(position) else {
            continue;
        };
        cursor.due += max_weight;
        fill.claim(cursor);
        if fill.is_full() {
            return;
        }
        heap.push(Reverse((next_round(cursor), position)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverses_and_reductions() {
        for m in [7u32, 61, 65_537, 16_777_213] {
            let reduce = Reduce::new(m);
            for a in [1u32, 2, 3, m / 2, m - 2, m - 1] {
                let inv = inverse_mod(a, m);
                assert!(inv > 0 && inv < m);
                assert_eq!(
                    u64::from(a) * u64::from(inv) % u64::from(m),
                    1,
                    "{a} mod {m}"
                );
                let x = u64::from(a) * u64::from(m - 1);
                assert_eq!(reduce.reduce(x), x % u64::from(m));
            }
        }
    }

    #[test]
    fn batched_inverses_match_one_by_one() {
        for m in [7u32, 61, 65_537, 16_777_213] {
            let values: Vec<u32> = (1..200u32).map(|k| (k * 7919) % (m - 1) + 1).collect();
            let batched = inverses_mod(&values, m, Reduce::new(m));
            let one_by_one: Vec<u32> = values.iter().map(|&v| inverse_mod(v, m)).collect();
            assert_eq!(batched, one_by_one, "mod {m}");
        }
        assert!(inverses_mod(&[], 7, Reduce::new(7)).is_empty());
    }

    /// Both layouts of the claimed map agree on every operation, including the slots past the
    /// last whole word or chunk.
    #[test]
    fn claim_layouts_agree() {
        for m in [7u32, 61, 64, 65, 1021, 4099] {
            let (mut bits, mut bytes) = (Bits::new(m), Bytes::new(m));
            for slot in (0..m).filter(|s| (s * 37) % 5 != 0) {
                bits.set(slot);
                bytes.set(slot);
            }
            for slot in 0..m {
                assert_eq!(bits.is_free(slot), bytes.is_free(slot), "{slot} of {m}");
                assert_eq!(bits.free_bit(slot), bytes.free_bit(slot), "{slot} of {m}");
            }
            let (mut from_bits, mut from_bytes) = (Vec::new(), Vec::new());
            bits.collect_free(m, &mut from_bits);
            bytes.collect_free(m, &mut from_bytes);
            let expected: Vec<u32> = (0..m).filter(|s| (s * 37) % 5 == 0).collect();
            assert_eq!(from_bits, expected, "{m}");
            assert_eq!(from_bytes, expected, "{m}");
        }
    }

    /// Every round-robin path on both layouts, whichever `populate` would pick.
    #[test]
    fn round_robin_on_either_layout_matches_the_reference() {
        fn with<C: Claimed>(m: u32, backends: &[Backend]) -> Vec<Option<usize>> {
            let cursors: Vec<Cursor> = backends
                .iter()
                .enumerate()
                .map(|(index, b)| {
                    let (offset, skip) = offset_and_skip(&b.name, m);
                    Cursor {
                        index: BackendIndex(index as u32),
                        walk: Walk { pos: offset, skip },
                        weight: 1,
                        due: 1,
                        inverse: 0,
                    }
                })
                .collect();
            let mut fill = Fill::<C>::new(m);
            fill_round_robin(&mut fill, &cursors);
            fill.entries.iter().map(|e| Some(e.get())).collect()
        }
        for m in [1021u32, 4099, 65_537] {
            for n in [1usize, 10, 31, 100, 300] {
                let mut backends: Vec<Backend> = (0..n)
                    .map(|i| Backend::new(format!("198.51.100.{i}:{}", 8000 + i), 1))
                    .collect();
                backends.sort_by(|a, b| a.name.cmp(&b.name));
                let expected = crate::reference::populate(m, &backends);
                assert_eq!(with::<Bits>(m, &backends), expected, "bits, {n} of {m}");
                assert_eq!(with::<Bytes>(m, &backends), expected, "bytes, {n} of {m}");
            }
        }
    }
}
