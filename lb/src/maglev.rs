//! The Maglev lookup table (Eisenbud et al., NSDI 2016, section 3.4).
//!
//! Every backend gets a permutation of the `M` table slots, `offset + j * skip (mod M)` for
//! `j = 0, 1, ...`, with `offset = h1(name) mod M` and `skip = h2(name) mod (M - 1) + 1`; `M`
//! prime makes every such permutation visit every slot. Backends then take turns, in order of
//! name, each claiming the next slot of its permutation that nobody has claimed yet, until the
//! table is full. Each backend ends up with an (almost) equal share, and adding or removing one
//! backend moves few entries, since every other backend still walks the same permutation.
//!
//! # Weights
//!
//! A backend of weight `w` takes a turn in a round only when it has earned one: in round `r`
//! (1, 2, ...) it has earned `floor(r * w / W)` turns, where `W` is the largest weight of the
//! set. The heaviest backends take a turn every round, one of half their weight every other
//! round, and so on; shares come out proportional to weight to within a couple of slots. This
//! is the weighting Envoy's Maglev uses; it reduces to the paper's loop exactly when all weights
//! are equal, and unlike "w turns per round" it does not depend on the scale of the weights
//! (weights 100 and 200 give the same table as 1 and 2). Weight 0 means no turns, no slots.
//!
//! # Speed
//!
//! The populate loop makes about `M ln M` probes (a backend walks past more and more claimed
//! slots as the table fills), whatever the number of backends, and a third to a half of them go
//! to the last few hundred free slots. The build (module `fill`) keeps each probe to a handful of
//! instructions: offset and skip are computed once per backend, the walk keeps the current slot
//! rather than the index `j` (the next slot is an add and a conditional subtract, no modulo),
//! "already claimed?" is a byte of an `M`-byte map (a bit of an `M`-bit one for the few-backend
//! sets that probe many slots per claim), and late walks run as two or four interleaved chains.
//! Large equal-weight sets take each turn's first four probes without a branch once a third of
//! the table is claimed, and small ones probe 64 slots ahead per backend and then take a
//! candidate per turn, instead of ending every walk on a mispredicted branch. The last `√M / 2`
//! free slots are not walked to at all: a backend's next slot is the free slot `f` that
//! minimises its step count `(f - pos) · skip⁻¹ mod M` (a few dozen backends switch earlier, to
//! those step counts kept as one bitmap per backend). Each turn claims the slot the paper's loop
//! would, so the table is the same slot for slot (tested against [`reference`](crate::reference)).
//!
//! Weighted sets whose heaviest backend dwarfs the others would make the round-by-round scan
//! visit backends with no turn to take for thousands of rounds; those are driven from a
//! min-heap of (round of next turn, backend) instead, which visits each turn once and in the
//! same order.

use crate::hash::{fnv1a64_seeded, OFFSET_SEED, SKIP_SEED};

mod fill;

pub(crate) use fill::{populate, Schedule};

/// The table size the paper uses, and the default: a prime a little over 2^16, so that up to a
/// few hundred backends each get shares within a percent or so of each other.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;
/// The smallest table size accepted. Anything smaller cannot spread even a handful of backends.
pub const MIN_TABLE_SIZE: u32 = 7;
/// The largest table size accepted (2^24, 64 MiB of entries): beyond it a table per service
/// costs more memory than any balance gain is worth, and it keeps build arithmetic in `u64`.
pub const MAX_TABLE_SIZE: u32 = 1 << 24;

/// Why a Maglev table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// The size is not prime, so some backends' permutations would not visit every slot.
    #[error("Maglev table size {0} is not prime")]
    NotPrime(u32),
    /// The size is below [`MIN_TABLE_SIZE`].
    #[error("Maglev table size {size} is below the minimum {min}")]
    TooSmall {
        /// The size asked for.
        size: u32,
        /// [`MIN_TABLE_SIZE`].
        min: u32,
    },
    /// The size is above [`MAX_TABLE_SIZE`].
    #[error("Maglev table size {size} is above the maximum {max}")]
    TooLarge {
        /// The size asked for.
        size: u32,
        /// [`MAX_TABLE_SIZE`].
        max: u32,
    },
    /// Two backends have the same name: they would walk the same permutation, and the table
    /// could not say which one a slot belongs to.
    #[error("backend {0:?} appears more than once")]
    DuplicateBackend(String),
    /// More backends with a non-zero weight than table slots: some would get no slot at all.
    #[error("{backends} weighted backends do not fit a Maglev table of {size} slots")]
    TooManyBackends {
        /// Backends with a non-zero weight.
        backends: usize,
        /// The table size.
        size: u32,
    },
}

/// A validated Maglev table size: a prime in `MIN_TABLE_SIZE..=MAX_TABLE_SIZE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableSize(u32);

impl TableSize {
    /// [`DEFAULT_TABLE_SIZE`].
    pub const DEFAULT: TableSize = TableSize(DEFAULT_TABLE_SIZE);

    /// Checks that `size` is a prime within bounds.
    pub fn new(size: u32) -> Result<Self, MaglevError> {
        if size < MIN_TABLE_SIZE {
            return Err(MaglevError::TooSmall {
                size,
                min: MIN_TABLE_SIZE,
            });
        }
        if size > MAX_TABLE_SIZE {
            return Err(MaglevError::TooLarge {
                size,
                max: MAX_TABLE_SIZE,
            });
        }
        if !is_prime(size) {
            return Err(MaglevError::NotPrime(size));
        }
        Ok(TableSize(size))
    }

    /// The number of slots.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl Default for TableSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl TryFrom<u32> for TableSize {
    type Error = MaglevError;

    fn try_from(size: u32) -> Result<Self, MaglevError> {
        Self::new(size)
    }
}

/// Trial division; sizes are at most 2^24, so at most ~2^11 divisions, once per configuration.
fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// One backend of a Maglev table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Backend {
    /// A name that identifies the backend stably, the same on every node and across restarts
    /// (an `address:port`, a pod UID): it alone decides where the backend goes in the table.
    pub name: String,
    /// Relative share of the table; 0 takes no slots (the backend stays listed).
    pub weight: u32,
}

impl Backend {
    /// A backend named `name` with `weight`.
    pub fn new(name: impl Into<String>, weight: u32) -> Self {
        Backend {
            name: name.into(),
            weight,
        }
    }
}

/// Index of a backend in [`MaglevTable::backends`] (the backends sorted by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct BackendIndex(u32);

impl BackendIndex {
    /// The index as a `usize`, for indexing a slice in [`MaglevTable::backends`] order.
    pub const fn get(self) -> usize {
        self.0 as usize
    }
}

impl From<BackendIndex> for usize {
    fn from(index: BackendIndex) -> usize {
        index.get()
    }
}

/// A Maglev lookup table: `M` slots, each naming the backend that flows hashing to it go to.
///
/// Built from a backend set, the table depends only on the set (names and weights) and `M`, not
/// on the order the backends were given in, so every node computes the same table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevTable {
    size: TableSize,
    /// Sorted by name; [`BackendIndex`] indexes this.
    backends: Vec<Backend>,
    /// `size` entries, or none when no backend has a weight.
    entries: Vec<BackendIndex>,
}

impl MaglevTable {
    /// A table of [`DEFAULT_TABLE_SIZE`] slots over `backends`.
    pub fn new(backends: impl IntoIterator<Item = Backend>) -> Result<Self, MaglevError> {
        Self::with_size(TableSize::DEFAULT, backends)
    }

    /// A table of `size` slots over `backends`.
    ///
    /// Backends with weight 0 get no slots; with no weighted backend at all the table is empty
    /// and every lookup misses. Fails on duplicate names and on more weighted backends than
    /// slots.
    pub fn with_size(
        size: TableSize,
        backends: impl IntoIterator<Item = Backend>,
    ) -> Result<Self, MaglevError> {
        // Turn order is part of the algorithm: sorting makes it independent of input order.
        let backends = sorted_by_name(backends.into_iter().collect());
        if let Some(pair) = backends
            .windows(2)
            .find(|pair| pair[0].name == pair[1].name)
        {
            return Err(MaglevError::DuplicateBackend(pair[0].name.clone()));
        }
        let weighted = backends.iter().filter(|b| b.weight > 0).count();
        if weighted > size.get() as usize {
            return Err(MaglevError::TooManyBackends {
                backends: weighted,
                size: size.get(),
            });
        }
        let entries = populate(size.get(), &backends, Schedule::Auto);
        Ok(MaglevTable {
            size,
            backends,
            entries,
        })
    }

    /// The backend for a flow whose hash is `hash`: slot `hash mod M`. `None` only when the
    /// table is empty (no backend with a weight). Constant time, no allocation.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<BackendIndex> {
        let len = self.entries.len() as u64;
        if len == 0 {
            return None;
        }
        self.entries.get((hash % len) as usize).copied()
    }

    /// [`lookup`](Self::lookup), returning the backend itself.
    #[inline]
    pub fn lookup_backend(&self, hash: u64) -> Option<&Backend> {
        self.lookup(hash).and_then(|index| self.backend(index))
    }

    /// The backend at `index`.
    pub fn backend(&self, index: BackendIndex) -> Option<&Backend> {
        self.backends.get(index.get())
    }

    /// All backends, weight 0 included, sorted by name: the order [`BackendIndex`] refers to.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The table size `M`.
    pub fn size(&self) -> TableSize {
        self.size
    }

    /// True when no backend has a weight, so every lookup misses.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The slots: `M` entries, or none when the table is empty.
    pub fn entries(&self) -> &[BackendIndex] {
        &self.entries
    }

    /// How many slots each backend holds, in [`backends`](Self::backends) order.
    pub fn slot_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.backends.len()];
        for entry in &self.entries {
            if let Some(count) = counts.get_mut(entry.get()) {
                *count += 1;
            }
        }
        counts
    }
}

/// `backends` sorted by name, as `sort_unstable_by(|a, b| a.name.cmp(&b.name))` would leave them.
///
/// Comparing two names is a call to `memcmp`. Instead each name's first 16 bytes are read once
/// as a big-endian number, zero-padded (which keeps a name ahead of any longer name it begins,
/// as string order does); those numbers are sorted, and only names that agree on all 16 bytes
/// are compared whole. Endpoint names (`address:port`, at most 21 bytes for IPv4) rarely agree
/// that far. A thousand shuffled names sort in 29 µs rather than 33 (most of what is left is
/// mispredicted compares, as in any comparison sort); names handed over already sorted, as
/// `BackendSet::new` does, take one pass either way.
fn sorted_by_name(backends: Vec<Backend>) -> Vec<Backend> {
    let prefix = |name: &str| {
        let mut bytes = [0u8; 16];
        let len = name.len().min(16);
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        u128::from_be_bytes(bytes)
    };
    let mut order: Vec<(u128, usize)> = backends
        .iter()
        .enumerate()
        .map(|(at, backend)| (prefix(&backend.name), at))
        .collect();
    order.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| backends[a.1].name.cmp(&backends[b.1].name))
    });
    let mut unsorted: Vec<Option<Backend>> = backends.into_iter().map(Some).collect();
    order
        .iter()
        .filter_map(|&(_, at)| unsorted.get_mut(at).and_then(Option::take))
        .collect()
}

/// The start and stride of `name`'s permutation of `m` slots:
/// `offset = h1(name) mod m`, `skip = h2(name) mod (m - 1) + 1`, with `h1` and `h2` FNV-1a 64
/// seeded with [`OFFSET_SEED`] and [`SKIP_SEED`].
pub(crate) fn offset_and_skip(name: &str, m: u32) -> (u32, u32) {
    let m = u64::from(m);
    let offset = fnv1a64_seeded(OFFSET_SEED, name.as_bytes()) % m;
    let skip = fnv1a64_seeded(SKIP_SEED, name.as_bytes()) % (m - 1) + 1;
    // Both are below m <= MAX_TABLE_SIZE, so they fit.
    (offset as u32, skip as u32)
}

#[cfg(test)]
mod tests;
