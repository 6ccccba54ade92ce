//! The Maglev populate loop written straight from the paper's pseudocode (Eisenbud et al.,
//! NSDI 2016, Pseudocode 1), with the weighting of [`crate::maglev`] spelled out as plainly.
//!
//! Slow on purpose: every probe recomputes `permutation[i][j] = (offset + j * skip) mod M` with
//! a division and checks `entry[c] >= 0`, as the paper does. It is the oracle the fast build in
//! [`crate::MaglevTable`] must match slot for slot, and the baseline its benchmark is measured
//! against. It does not validate its inputs.

use crate::hash::{fnv1a64_seeded, OFFSET_SEED, SKIP_SEED};
use crate::Backend;

/// The table of `size` slots for `backends`: for each slot, the index of its backend in the
/// backends sorted by name, or all `None` when no backend has a weight.
///
/// `size` must be prime and names unique (not checked).
pub fn populate(size: u32, backends: &[Backend]) -> Vec<Option<usize>> {
    let m = u64::from(size);
    let mut backends: Vec<&Backend> = backends.iter().collect();
    backends.sort_by(|a, b| a.name.cmp(&b.name));
    let n = backends.len();

    // offset = h1(name) mod M, skip = h2(name) mod (M - 1) + 1.
    let offset: Vec<u64> = backends
        .iter()
        .map(|b| fnv1a64_seeded(OFFSET_SEED, b.name.as_bytes()) % m)
        .collect();
    let skip: Vec<u64> = backends
        .iter()
        .map(|b| fnv1a64_seeded(SKIP_SEED, b.name.as_bytes()) % (m - 1) + 1)
        .collect();
    let permutation = |i: usize, j: u64| ((offset[i] + j * skip[i]) % m) as usize;

    // Weights: in round r, backend i has earned floor(r * w_i / W) turns in all.
    let max_weight = backends.iter().map(|b| b.weight).max().unwrap_or(0);
    let mut entry: Vec<i64> = vec![-1; size as usize];
    if max_weight == 0 {
        return vec![None; size as usize];
    }
    let earned = |i: usize, round: u64| {
        (u128::from(round) * u128::from(backends[i].weight) / u128::from(max_weight)) as u64
    };
    let mut taken = vec![0u64; n];

    let mut next = vec![0u64; n];
    let mut filled = 0u64;
    let mut round = 0u64;
    loop {
        round += 1;
        for i in 0..n {
            if taken[i] >= earned(i, round) {
                continue;
            }
            taken[i] += 1;
            let mut c = permutation(i, next[i]);
            while entry[c] >= 0 {
                next[i] += 1;
                c = permutation(i, next[i]);
            }
            entry[c] = i as i64;
            next[i] += 1;
            filled += 1;
            if filled == m {
                return entry.into_iter().map(|e| usize::try_from(e).ok()).collect();
            }
        }
    }
}
