//! Backend sets: building one, sizing its Maglev table, and sharing identical ones.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::{BackendAddr, BackendSet};
use crate::maglev::{Backend, MaglevError, MaglevTable, TableSize};

/// Table slots wanted per backend. The Maglev paper (section 3.4) asks for a table size over
/// 100 times the number of backends to keep every backend's share within about 1% of the
/// others.
pub const SLOTS_PER_BACKEND: u64 = 100;

/// The table sizes [`auto_table_size`] picks from: the largest prime below each power of two
/// from 2^8 to 2^16. Each step doubles the size, so a set only changes size (and so reshuffles
/// its table) when its backend count crosses a doubling, not at every scale-up.
pub const AUTO_TABLE_SIZES: [u32; 9] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521];

/// The table size for a set of `backends` backends: the smallest of [`AUTO_TABLE_SIZES`] with
/// at least [`SLOTS_PER_BACKEND`] slots per backend, or [`TableSize::DEFAULT`] when none is big
/// enough (over 655 backends).
///
/// A table entry is 4 bytes, so 10 backends take 1021 slots, about 4 KiB, where the default
/// 65,537 slots would take 256 KiB: for tens of thousands of Services that is the difference
/// between a hundred megabytes and several gigabytes.
pub fn auto_table_size(backends: usize) -> TableSize {
    let wanted = u64::try_from(backends)
        .unwrap_or(u64::MAX)
        .saturating_mul(SLOTS_PER_BACKEND);
    AUTO_TABLE_SIZES
        .iter()
        .copied()
        .find(|&size| u64::from(size) >= wanted)
        .and_then(|size| TableSize::new(size).ok())
        .unwrap_or(TableSize::DEFAULT)
}

impl BackendSet {
    /// A set over `backends`, each of weight 1 and named [`BackendAddr::name`], with a table of
    /// `size` slots. `backends` come out sorted by name, the order of the table's
    /// [`crate::BackendIndex`]. Fails on a backend given twice and on more backends than slots.
    pub fn new(
        backends: impl IntoIterator<Item = BackendAddr>,
        size: TableSize,
    ) -> Result<Self, MaglevError> {
        let mut named: Vec<(String, BackendAddr)> = backends
            .into_iter()
            .map(|backend| (backend.name(), backend))
            .collect();
        // The order MaglevTable keeps its backends in, so that a BackendIndex names the same
        // backend in both (names are unique once the table accepts them).
        named.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let backends = named.iter().map(|(_, backend)| *backend).collect();
        let maglev = MaglevTable::with_size(
            size,
            named.into_iter().map(|(name, _)| Backend::new(name, 1)),
        )?;
        Ok(BackendSet { backends, maglev })
    }

    /// Bytes this set takes on the heap, counting its own struct (it lives behind an `Arc`,
    /// whose two counters are included too). An estimate from `size_of`, the allocator's
    /// overhead aside.
    pub fn approx_heap_bytes(&self) -> usize {
        let names: usize = self
            .maglev
            .backends()
            .iter()
            .map(|backend| backend.name.capacity())
            .sum();
        2 * size_of::<usize>()
            + size_of::<BackendSet>()
            + self.backends.capacity() * size_of::<BackendAddr>()
            + size_of_val(self.maglev.backends())
            + names
            + size_of_val(self.maglev.entries())
    }
}

/// The backend sets in use, by backend list, so that each distinct list is built once and
/// shared. Held weakly: a set lives as long as some compiled table uses it, and its entry here
/// is swept once it is gone.
pub(super) struct BackendSets {
    /// A fixed table size, or `None` to size each set by [`auto_table_size`].
    size: Option<TableSize>,
    /// Keyed by the backends sorted by address and port.
    sets: HashMap<Vec<BackendAddr>, Weak<BackendSet>>,
    /// Entries added since the last sweep of dead ones.
    added: usize,
}

impl BackendSets {
    pub(super) fn new(size: Option<TableSize>) -> Self {
        BackendSets {
            size,
            sets: HashMap::new(),
            added: 0,
        }
    }

    /// The set over `backends` (sorted by address and port, no duplicates), built unless a
    /// live one exists.
    pub(super) fn get(&mut self, backends: &[BackendAddr]) -> Result<Arc<BackendSet>, MaglevError> {
        if let Some(set) = self.sets.get(backends).and_then(Weak::upgrade) {
            return Ok(set);
        }
        let size = self.size.unwrap_or_else(|| auto_table_size(backends.len()));
        let set = Arc::new(BackendSet::new(backends.iter().copied(), size)?);
        self.sets.insert(backends.to_vec(), Arc::downgrade(&set));
        // Sweep when the additions since the last sweep match what was live then: the map
        // stays within twice its live size, at a constant cost per set built.
        self.added += 1;
        if self.added > self.sets.len() / 2 {
            self.sets.retain(|_, set| set.strong_count() > 0);
            self.added = 0;
        }
        Ok(set)
    }
}
