//! What the API watchers have seen, kept apart from any I/O so its rules can be tested alone.
//!
//! The watchers feed [`WatchState`] one event at a time; the control plane reads the
//! [`ObjectStore`] it keeps. The rules:
//!
//! - `Apply` and `Delete` change the store at once.
//! - A (re)list (`Init`, then `InitApply` for every object, then `InitDone`) is buffered and
//!   replaces that kind's objects in one step at `InitDone`: objects missing from the new list
//!   are gone (they were deleted while the watch was down), and until the list is complete the
//!   store keeps the last full view, so the control plane never programs half a list.
//! - Every change that alters the store bumps [`WatchState::generation`]; a relist that finds
//!   exactly what the store already held does not, nor does an `Apply` of an object equal to
//!   the stored one (a trimmed Node's heartbeat).
//! - The keys of the objects changed are remembered until [`WatchState::take_changes`]
//!   collects them, so the control plane can take in only what changed.

use std::collections::{BTreeMap, BTreeSet};

use super::super::objects::{Change, Object, ObjectKey, ObjectKind, ObjectStore};

/// One watch event, with the object already sorted into its kind.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    /// An object was added or changed.
    Apply(Object),
    /// An object was deleted.
    Delete(Object),
    /// A list begins (first start, or a relist after `410 Gone` or a reconnect).
    Init,
    /// An object of the list in progress.
    InitApply(Object),
    /// The list is complete.
    InitDone,
}

/// The store the watchers keep, and how far they got.
#[derive(Debug, Default)]
pub struct WatchState {
    /// The objects, as of the last complete list plus the events after it.
    pub store: ObjectStore,
    /// Bumped on every change to `store` (and when a kind first completes its list).
    pub generation: u64,
    /// Kinds whose first list has completed.
    synced: BTreeSet<ObjectKind>,
    /// Lists in progress, by kind.
    listing: BTreeMap<ObjectKind, ObjectStore>,
    /// Objects changed since the last [`WatchState::take_changes`].
    dirty: BTreeSet<(ObjectKind, ObjectKey)>,
}

impl WatchState {
    /// Applies one event of `kind`'s watcher. Returns what was wrong with it, if anything
    /// (an object the store refuses, such as one without a name, is skipped).
    pub fn apply(&mut self, kind: ObjectKind, event: WatchEvent) -> Option<String> {
        match event {
            WatchEvent::Apply(object) if self.store.holds(&object) => None,
            WatchEvent::Apply(object) => match object
                .key()
                .and_then(|key| self.store.apply(object).map(|_| key))
            {
                Ok(key) => {
                    self.generation += 1;
                    self.dirty.insert((kind, key));
                    None
                }
                Err(e) => Some(format!("{kind} skipped: {e}")),
            },
            WatchEvent::Delete(object) => match self.store.delete_object(&object) {
                Ok(Some(deleted)) => {
                    self.generation += 1;
                    if let Ok(key) = deleted.key() {
                        self.dirty.insert((kind, key));
                    }
                    None
                }
                Ok(None) => None,
                Err(e) => Some(format!("{kind} delete skipped: {e}")),
            },
            WatchEvent::Init => {
                self.listing.insert(kind, ObjectStore::default());
                None
            }
            WatchEvent::InitApply(object) => {
                // An object outside a list (not expected from the watcher) is applied directly.
                let Some(list) = self.listing.get_mut(&kind) else {
                    return self.apply(kind, WatchEvent::Apply(object));
                };
                match list.apply(object) {
                    Ok(_) => None,
                    Err(e) => Some(format!("{kind} skipped: {e}")),
                }
            }
            WatchEvent::InitDone => {
                let listed = self.listing.remove(&kind).unwrap_or_default();
                let changed = self.store.changed_keys(&listed, kind);
                self.dirty
                    .extend(changed.iter().map(|key| (kind, key.clone())));
                replace_kind(&mut self.store, listed, kind);
                let first = self.synced.insert(kind);
                if !changed.is_empty() || first {
                    self.generation += 1;
                }
                None
            }
        }
    }

    /// The objects changed since the last call, each with what it holds now (`None`: deleted).
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|(kind, key)| {
                let object = self.store.get(kind, &key);
                Change { kind, key, object }
            })
            .collect()
    }

    /// True once `kind`'s first list has completed.
    pub fn is_synced(&self, kind: ObjectKind) -> bool {
        self.synced.contains(&kind)
    }

    /// True once every kind's first list has completed.
    pub fn all_synced(&self) -> bool {
        ObjectKind::ALL.iter().all(|k| self.synced.contains(k))
    }
}

/// Moves `kind`'s objects from `from` into `into`, replacing what `into` held of that kind.
fn replace_kind(into: &mut ObjectStore, mut from: ObjectStore, kind: ObjectKind) {
    match kind {
        ObjectKind::Service => std::mem::swap(&mut into.services, &mut from.services),
        ObjectKind::EndpointSlice => {
            std::mem::swap(&mut into.endpoint_slices, &mut from.endpoint_slices)
        }
        ObjectKind::NetworkPolicy => {
            std::mem::swap(&mut into.network_policies, &mut from.network_policies)
        }
        ObjectKind::Node => std::mem::swap(&mut into.nodes, &mut from.nodes),
        ObjectKind::Pod => std::mem::swap(&mut into.pods, &mut from.pods),
        ObjectKind::Namespace => std::mem::swap(&mut into.namespaces, &mut from.namespaces),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Node, Service};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(name: &str, rv: &str) -> Object {
        Object::Service(Box::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }))
    }

    fn names(state: &WatchState) -> Vec<String> {
        state
            .store
            .services
            .keys()
            .map(|(_, n)| n.clone())
            .collect()
    }

    fn list(state: &mut WatchState, objects: &[Object]) {
        state.apply(ObjectKind::Service, WatchEvent::Init);
        for o in objects {
            state.apply(ObjectKind::Service, WatchEvent::InitApply(o.clone()));
        }
        state.apply(ObjectKind::Service, WatchEvent::InitDone);
    }

    #[test]
    fn first_list_syncs_the_kind_and_counts_as_a_change() {
        let mut state = WatchState::default();
        assert!(!state.is_synced(ObjectKind::Service));
        list(&mut state, &[]);
        assert!(state.is_synced(ObjectKind::Service));
        assert!(!state.all_synced());
        assert_eq!(state.generation, 1);
        for kind in ObjectKind::ALL {
            state.apply(kind, WatchEvent::Init);
            state.apply(kind, WatchEvent::InitDone);
        }
        assert!(state.all_synced());
    }

    #[test]
    fn an_apply_that_changes_nothing_is_not_a_change() {
        let mut state = WatchState::default();
        list(&mut state, &[svc("a", "1")]);
        state.take_changes();
        let before = state.generation;
        assert_eq!(
            state.apply(ObjectKind::Service, WatchEvent::Apply(svc("a", "1"))),
            None
        );
        assert_eq!(state.generation, before);
        assert!(state.take_changes().is_empty());
        state.apply(ObjectKind::Service, WatchEvent::Apply(svc("a", "2")));
        assert_eq!(state.generation, before + 1);
        assert_eq!(state.take_changes().len(), 1);
    }

    #[test]
    fn a_relist_replaces_the_kind_at_init_done_only() {
        let mut state = WatchState::default();
        list(&mut state, &[svc("a", "1"), svc("b", "2")]);
        let node = Object::Node(Box::new(Node {
            metadata: ObjectMeta {
                name: Some("node-a".into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }));
        state.apply(ObjectKind::Node, WatchEvent::Apply(node));
        let before = state.generation;

        // A relist in progress leaves the last full view in place.
        state.apply(ObjectKind::Service, WatchEvent::Init);
        state.apply(ObjectKind::Service, WatchEvent::InitApply(svc("b", "3")));
        state.apply(ObjectKind::Service, WatchEvent::InitApply(svc("c", "4")));
        assert_eq!(names(&state), ["a", "b"]);
        assert_eq!(state.generation, before);

        // At InitDone: "a" was deleted meanwhile, "b" changed, "c" is new; other kinds stay.
        state.apply(ObjectKind::Service, WatchEvent::InitDone);
        assert_eq!(names(&state), ["b", "c"]);
        assert_eq!(state.store.nodes.len(), 1);
        assert_eq!(state.generation, before + 1);
    }

    #[test]
    fn an_identical_relist_is_not_a_change() {
        let mut state = WatchState::default();
        list(&mut state, &[svc("a", "1")]);
        let before = state.generation;
        list(&mut state, &[svc("a", "1")]);
        assert_eq!(state.generation, before);
    }

    #[test]
    fn events_apply_and_delete() {
        let mut state = WatchState::default();
        list(&mut state, &[]);
        assert_eq!(
            state.apply(ObjectKind::Service, WatchEvent::Apply(svc("a", "1"))),
            None
        );
        assert_eq!(names(&state), ["a"]);
        let g = state.generation;
        // Deleting what is not there is no change.
        state.apply(ObjectKind::Service, WatchEvent::Delete(svc("zz", "2")));
        assert_eq!(state.generation, g);
        state.apply(ObjectKind::Service, WatchEvent::Delete(svc("a", "3")));
        assert!(names(&state).is_empty());
        assert_eq!(state.generation, g + 1);
        // A nameless object is reported, not stored.
        let problem = state.apply(ObjectKind::Service, WatchEvent::Apply(svc("", "4")));
        assert!(problem.is_some());
        assert!(state.store.is_empty());
    }

    #[test]
    fn changes_are_collected_once_with_what_each_key_holds_now() {
        let mut state = WatchState::default();
        list(&mut state, &[svc("a", "1"), svc("b", "2")]);
        let first: Vec<String> = state
            .take_changes()
            .iter()
            .map(|c| c.key.1.clone())
            .collect();
        assert_eq!(first, ["a", "b"]);
        assert!(state.take_changes().is_empty());

        // Changed twice, then deleted: one change, the deletion.
        state.apply(ObjectKind::Service, WatchEvent::Apply(svc("a", "3")));
        state.apply(ObjectKind::Service, WatchEvent::Apply(svc("a", "4")));
        state.apply(ObjectKind::Service, WatchEvent::Delete(svc("a", "5")));
        // A relist that changes "b" and adds "c".
        list(&mut state, &[svc("b", "6"), svc("c", "7")]);
        let changes = state.take_changes();
        let summary: Vec<(String, bool)> = changes
            .iter()
            .map(|c| (c.key.1.clone(), c.object.is_some()))
            .collect();
        assert_eq!(
            summary,
            [("a".into(), false), ("b".into(), true), ("c".into(), true)]
        );
        // An identical relist changes nothing.
        list(&mut state, &[svc("b", "6"), svc("c", "7")]);
        assert!(state.take_changes().is_empty());
    }
}
