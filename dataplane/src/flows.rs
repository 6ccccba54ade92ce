//! Which worker owns a tracked connection, when there are several.
//!
//! Each worker keeps its own connection table ([`crate::conntrack`]), so both directions of a
//! connection must be processed by the worker that started it. The ports spread packets
//! over the workers by a hash of their headers, and that puts a connection's two directions
//! on different workers whenever translation changes the tuple (a Service's reply comes from
//! the backend, not the frontend) or the hash is not symmetric. The [`FlowDirectory`] is the
//! shared map from every tracked tuple to its owner: a worker's table claims both tuples of
//! an entry when it inserts it and gives them back when it drops it; a packet that a worker
//! does not track goes to the owner of its tuple, if another worker has one (the `handoff`
//! sink of the graph). The directory is consulted only on a miss in the worker's own table,
//! so established connections on the right worker never touch it.

use std::sync::{Mutex, PoisonError};

use fnv::FnvHashMap;

use crate::conntrack::FlowKey;

/// Shards of the directory, each behind its own lock: workers inserting at once rarely meet.
const SHARDS: usize = 64;

/// Tuple → owning worker, shared by all workers.
#[derive(Debug)]
pub struct FlowDirectory {
    shards: Vec<Mutex<FnvHashMap<FlowKey, u16>>>,
}

impl Default for FlowDirectory {
    fn default() -> Self {
        FlowDirectory {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl FlowDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    fn shard(&self, key: &FlowKey) -> std::sync::MutexGuard<'_, FnvHashMap<FlowKey, u16>> {
        use std::hash::{BuildHasher, Hasher};
        let mut h = fnv::FnvBuildHasher::default().build_hasher();
        std::hash::Hash::hash(key, &mut h);
        let shard = &self.shards[(h.finish() as usize) % SHARDS];
        // A worker that panicked holding the lock left a map that is still consistent
        // (every change is one insert or remove).
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `worker` as the owner of `key`, unless another worker owns it: then
    /// `Err(owner)`.
    pub fn claim(&self, key: &FlowKey, worker: u16) -> Result<(), u16> {
        let mut shard = self.shard(key);
        match shard.get(key) {
            Some(&owner) if owner != worker => Err(owner),
            _ => {
                shard.insert(*key, worker);
                Ok(())
            }
        }
    }

    /// Forgets `key` if `worker` owns it.
    pub fn release(&self, key: &FlowKey, worker: u16) {
        let mut shard = self.shard(key);
        if shard.get(key) == Some(&worker) {
            shard.remove(key);
        }
    }

    /// The worker that owns `key`, if one does.
    pub fn owner(&self, key: &FlowKey) -> Option<u16> {
        self.shard(key).get(key).copied()
    }

    /// Tuples recorded.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// True when no tuple is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_owner_per_tuple() {
        let d = FlowDirectory::new();
        let k = FlowKey::new(
            "198.18.1.2".parse().unwrap(),
            "198.18.2.2".parse().unwrap(),
            6,
            40000,
            80,
        );
        assert_eq!(d.owner(&k), None);
        assert_eq!(d.claim(&k, 1), Ok(()));
        assert_eq!(d.claim(&k, 1), Ok(()), "the owner may claim again");
        assert_eq!(d.claim(&k, 0), Err(1));
        d.release(&k, 0);
        assert_eq!(d.owner(&k), Some(1), "only the owner releases");
        d.release(&k, 1);
        assert!(d.is_empty());
    }
}
