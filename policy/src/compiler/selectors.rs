//! Peer selectors and the pods they select, kept by delta.
//!
//! Every distinct pod-selecting peer of the policies in force (a namespace scope and an
//! optional pod selector) is registered once, however many policies name it, with the set of
//! pods it selects. Two indexes make a change cost what it touches: label key → selectors that
//! read it (a pod's label change re-checks only those), and namespace → selectors that cover
//! it (a new pod is checked against those only). A namespace's label change re-checks the
//! selectors with a namespace selector, and moves that namespace's pods in or out of the ones
//! whose verdict for it flipped.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::sources::SourceId;
use super::world::World;
use crate::model::{LabelSelector, Labels, Pod, PodKey};
use crate::validate::selector_matches;

/// Identity of a registered selector; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct SelectorId(u32);

/// Which namespaces a peer's pods may be in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Scope {
    /// One namespace by name: a peer without `namespaceSelector` (the policy's own).
    Namespace(String),
    /// The namespaces whose labels match.
    Matching(LabelSelector),
}

/// What a selector is: the pods matching `pods` (all, when `None`) in the namespaces of
/// `scope`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct SelectorDef {
    pub(super) scope: Scope,
    /// `None` also stands for the empty selector, which matches every pod.
    pub(super) pods: Option<LabelSelector>,
}

impl SelectorDef {
    pub(super) fn new(scope: Scope, pods: Option<LabelSelector>) -> Self {
        let pods = pods.filter(|s| *s != LabelSelector::everything());
        Self { scope, pods }
    }

    fn covers_namespace(&self, name: &str, labels: &Labels) -> bool {
        match &self.scope {
            Scope::Namespace(n) => n == name,
            Scope::Matching(sel) => selector_matches(sel, labels),
        }
    }

    fn matches_labels(&self, labels: &Labels) -> bool {
        self.pods
            .as_ref()
            .is_none_or(|s| selector_matches(s, labels))
    }

    /// Label keys the pod selector reads: only a change to one of these can flip its verdict.
    fn keys(&self) -> BTreeSet<String> {
        let Some(sel) = &self.pods else {
            return BTreeSet::new();
        };
        sel.match_labels
            .keys()
            .cloned()
            .chain(sel.match_expressions.iter().map(|r| r.key.clone()))
            .collect()
    }
}

#[derive(Debug)]
struct Selector {
    def: SelectorDef,
    /// Known namespaces the scope covers.
    namespaces: BTreeSet<String>,
    members: BTreeSet<PodKey>,
    /// Policy peers naming this selector (counted per occurrence).
    holders: usize,
    /// Sources whose peers include it: what a membership change must patch.
    sources: BTreeSet<SourceId>,
}

/// A pod's selector memberships before and after a change.
#[derive(Debug, Default)]
pub(super) struct Memberships {
    pub(super) before: BTreeSet<SelectorId>,
    pub(super) after: BTreeSet<SelectorId>,
}

impl Memberships {
    pub(super) fn changed(&self) -> bool {
        self.before != self.after
    }
}

#[derive(Debug, Default)]
pub(super) struct Selectors {
    by_id: BTreeMap<SelectorId, Selector>,
    by_def: HashMap<SelectorDef, SelectorId>,
    /// Label key → selectors whose pod selector reads it.
    by_key: HashMap<String, BTreeSet<SelectorId>>,
    /// Namespace → selectors that cover it.
    by_namespace: HashMap<String, BTreeSet<SelectorId>>,
    /// Selectors with a namespace selector (re-checked when a namespace's labels change).
    matching: BTreeSet<SelectorId>,
    /// Pod → selectors it is a member of.
    memberships: HashMap<PodKey, BTreeSet<SelectorId>>,
    next: u32,
}

impl Selectors {
    /// Registers one more holder of `def`, computing its members if it is new.
    pub(super) fn acquire(&mut self, def: SelectorDef, world: &World) -> SelectorId {
        if let Some(id) = self.by_def.get(&def).copied() {
            if let Some(s) = self.by_id.get_mut(&id) {
                s.holders += 1;
            }
            return id;
        }
        let id = SelectorId(self.next);
        self.next = self.next.wrapping_add(1);
        let namespaces: BTreeSet<String> = match &def.scope {
            Scope::Namespace(name) => BTreeSet::from([name.clone()]),
            Scope::Matching(_) => world
                .known_namespaces()
                .filter(|(name, labels)| def.covers_namespace(name, labels))
                .map(|(name, _)| name.clone())
                .collect(),
        };
        let members: BTreeSet<PodKey> = world
            .candidates(def.pods.as_ref(), &namespaces)
            .into_iter()
            .filter(|(_, pod)| def.matches_labels(&pod.labels))
            .map(|(key, _)| key.clone())
            .collect();
        for key in def.keys() {
            self.by_key.entry(key).or_default().insert(id);
        }
        for ns in &namespaces {
            self.by_namespace.entry(ns.clone()).or_default().insert(id);
        }
        if matches!(def.scope, Scope::Matching(_)) {
            self.matching.insert(id);
        }
        for pod in &members {
            self.memberships.entry(pod.clone()).or_default().insert(id);
        }
        self.by_def.insert(def.clone(), id);
        self.by_id.insert(
            id,
            Selector {
                def,
                namespaces,
                members,
                holders: 1,
                sources: BTreeSet::new(),
            },
        );
        id
    }

    /// Lets go of one holder.
    pub(super) fn release(&mut self, id: SelectorId) {
        if let Some(s) = self.by_id.get_mut(&id) {
            s.holders = s.holders.saturating_sub(1);
        }
        self.drop_if_unused(id);
    }

    pub(super) fn link_source(&mut self, id: SelectorId, source: SourceId) {
        if let Some(s) = self.by_id.get_mut(&id) {
            s.sources.insert(source);
        }
    }

    pub(super) fn unlink_source(&mut self, id: SelectorId, source: SourceId) {
        if let Some(s) = self.by_id.get_mut(&id) {
            s.sources.remove(&source);
        }
        self.drop_if_unused(id);
    }

    fn drop_if_unused(&mut self, id: SelectorId) {
        let unused = self
            .by_id
            .get(&id)
            .is_some_and(|s| s.holders == 0 && s.sources.is_empty());
        if !unused {
            return;
        }
        let Some(s) = self.by_id.remove(&id) else {
            return;
        };
        self.by_def.remove(&s.def);
        for key in s.def.keys() {
            remove_from(&mut self.by_key, &key, id);
        }
        for ns in &s.namespaces {
            remove_from(&mut self.by_namespace, ns, id);
        }
        self.matching.remove(&id);
        for pod in &s.members {
            remove_from(&mut self.memberships, pod, id);
        }
    }

    /// Sources that name selector `id`.
    pub(super) fn sources(&self, id: SelectorId) -> impl Iterator<Item = SourceId> + '_ {
        self.by_id
            .get(&id)
            .into_iter()
            .flat_map(|s| s.sources.iter().copied())
    }

    /// The pods selector `id` selects.
    pub(super) fn members(&self, id: SelectorId) -> impl Iterator<Item = &PodKey> {
        self.by_id
            .get(&id)
            .into_iter()
            .flat_map(|s| s.members.iter())
    }

    /// The selectors pod `key` is a member of.
    pub(super) fn of_pod(&self, key: &PodKey) -> Option<&BTreeSet<SelectorId>> {
        self.memberships.get(key)
    }

    /// Whether `pod` is a member of `id` (as of the last [`Self::apply`]).
    pub(super) fn has_member(&self, id: SelectorId, pod: &PodKey) -> bool {
        self.by_id.get(&id).is_some_and(|s| s.members.contains(pod))
    }

    /// The selectors pod `key` is a member of now, and would be as `new` (`None`: gone), given
    /// `old` as the pod was. Only the selectors that can have changed verdict are re-checked:
    /// for a new pod those covering its namespace, for a relabelled pod those reading a label
    /// whose value changed.
    pub(super) fn memberships(
        &self,
        key: &PodKey,
        old: Option<&Pod>,
        new: Option<&Pod>,
    ) -> Memberships {
        let before = self.memberships.get(key).cloned().unwrap_or_default();
        let Some(new) = new else {
            return Memberships {
                before,
                after: BTreeSet::new(),
            };
        };
        let candidates: BTreeSet<SelectorId> = match old {
            None => self
                .by_namespace
                .get(&new.namespace)
                .cloned()
                .unwrap_or_default(),
            Some(old) if old.labels != new.labels => {
                let covering = self.by_namespace.get(&new.namespace);
                changed_keys(&old.labels, &new.labels)
                    .filter_map(|k| self.by_key.get(k))
                    .flatten()
                    .filter(|id| covering.is_some_and(|c| c.contains(id)))
                    .copied()
                    .collect()
            }
            Some(_) => BTreeSet::new(),
        };
        let mut after = before.clone();
        for id in candidates {
            let Some(s) = self.by_id.get(&id) else {
                continue;
            };
            if s.def.matches_labels(&new.labels) {
                after.insert(id);
            } else {
                after.remove(&id);
            }
        }
        Memberships { before, after }
    }

    /// Records `key`'s memberships as `after`.
    pub(super) fn apply(&mut self, key: &PodKey, memberships: &Memberships) {
        for id in memberships.before.difference(&memberships.after) {
            if let Some(s) = self.by_id.get_mut(id) {
                s.members.remove(key);
            }
        }
        for id in memberships.after.difference(&memberships.before) {
            if let Some(s) = self.by_id.get_mut(id) {
                s.members.insert(key.clone());
            }
        }
        if memberships.after.is_empty() {
            self.memberships.remove(key);
        } else {
            self.memberships
                .insert(key.clone(), memberships.after.clone());
        }
    }

    /// Namespace `name` now has selector labels `labels` (`None`: no longer known). Updates
    /// which selectors cover it, and returns the membership changes of its pods, to be applied
    /// with [`Self::apply`] once their sources are patched.
    pub(super) fn namespace_changed(
        &mut self,
        name: &str,
        labels: Option<&Labels>,
        world: &World,
    ) -> BTreeMap<PodKey, Memberships> {
        let mut changes: BTreeMap<PodKey, Memberships> = BTreeMap::new();
        let ids: Vec<SelectorId> = self.matching.iter().copied().collect();
        for id in ids {
            let Some(s) = self.by_id.get_mut(&id) else {
                continue;
            };
            let was = s.namespaces.contains(name);
            let now = labels.is_some_and(|l| s.def.covers_namespace(name, l));
            if was == now {
                continue;
            }
            if now {
                s.namespaces.insert(name.to_string());
                self.by_namespace
                    .entry(name.to_string())
                    .or_default()
                    .insert(id);
            } else {
                s.namespaces.remove(name);
                remove_from(&mut self.by_namespace, name, id);
            }
            for (key, pod) in world.pods_in(name) {
                if !s.def.matches_labels(&pod.labels) {
                    continue;
                }
                let entry = changes.entry(key.clone()).or_insert_with(|| {
                    let before = self.memberships.get(key).cloned().unwrap_or_default();
                    Memberships {
                        after: before.clone(),
                        before,
                    }
                });
                if now {
                    entry.after.insert(id);
                } else {
                    entry.after.remove(&id);
                }
            }
        }
        changes.retain(|_, m| m.changed());
        changes
    }

    /// Checks every index against a recomputation from `world`, for the tests.
    pub(super) fn check(&self, world: &World) -> Result<(), String> {
        for (id, s) in &self.by_id {
            let namespaces: BTreeSet<String> = world
                .known_namespaces()
                .filter(|(n, l)| s.def.covers_namespace(n, l))
                .map(|(n, _)| n.clone())
                .collect();
            let namespaces: BTreeSet<String> = match &s.def.scope {
                Scope::Namespace(n) => BTreeSet::from([n.clone()]),
                Scope::Matching(_) => namespaces,
            };
            if namespaces != s.namespaces {
                return Err(format!(
                    "selector {id:?} namespaces {:?}, want {namespaces:?}",
                    s.namespaces
                ));
            }
            let members: BTreeSet<PodKey> = world
                .pods
                .iter()
                .filter(|(k, p)| {
                    namespaces.contains(&k.namespace) && s.def.matches_labels(&p.labels)
                })
                .map(|(k, _)| k.clone())
                .collect();
            if members != s.members {
                return Err(format!(
                    "selector {id:?} ({:?}) members {:?}, want {members:?}",
                    s.def, s.members
                ));
            }
            for m in &members {
                if !self.memberships.get(m).is_some_and(|set| set.contains(id)) {
                    return Err(format!("{m} missing membership of {id:?}"));
                }
            }
            if s.holders == 0 && s.sources.is_empty() {
                return Err(format!("selector {id:?} kept without users"));
            }
        }
        let count: usize = self.memberships.values().map(BTreeSet::len).sum();
        let want: usize = self.by_id.values().map(|s| s.members.len()).sum();
        if count != want {
            return Err(format!("{count} memberships recorded, {want} members"));
        }
        Ok(())
    }
}

fn remove_from<K, Q>(map: &mut HashMap<K, BTreeSet<SelectorId>>, key: &Q, id: SelectorId)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(set) = map.get_mut(key) {
        set.remove(&id);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

/// Keys whose value differs between `a` and `b` (present in one only, or different values).
fn changed_keys<'a>(a: &'a Labels, b: &'a Labels) -> impl Iterator<Item = &'a String> {
    let gone_or_changed = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k);
    let added = b.keys().filter(|k| !a.contains_key(*k));
    gone_or_changed.chain(added)
}
