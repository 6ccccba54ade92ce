//! NetworkPolicy as the dataplane enforces it: per local pod, an optional ingress and an
//! optional egress ACL (absent: the pod is not isolated in that direction), ACLs shared
//! between pods whose rules are equal. Built from the `policy` crate's output by
//! [`PolicyTables::from_compiled`]; matched by [`crate::acl::Classifier`] in the `ip{4,6}-acl`
//! nodes.

mod compiled;

use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

use fnv::FnvHashMap;

use crate::acl::{AclRuleSpec, Classifier, RuleList};

pub use compiled::{AclCache, BuildStats};

/// One compiled ACL, shared by every pod that has it.
#[derive(Clone, Debug)]
pub struct AclTable {
    /// A stable name for people and metrics (e.g. `acl-3`).
    pub name: Arc<str>,
    /// The rules as given (for people: `switchyard show acl`), in classifier order.
    pub rules: Arc<AclRules>,
    /// The rules, compiled. Allow rules; the default action is deny (the pod is isolated).
    /// Shared with every table whose rules are the same list (ACLs that differ only in where
    /// their rules came from, such as one policy template applied in many namespaces).
    pub classifier: Arc<Classifier>,
    /// Where each rule comes from, by rule index: `namespace/policy ingress[0]`, `node`.
    pub origins: AclOrigins,
}

impl AclTable {
    /// The ACL named `name` over `rules` (allow rules; first match wins), with
    /// `default_allow` for what matches none, and each rule's origin.
    pub fn new(
        name: impl Into<Arc<str>>,
        rules: Vec<AclRuleSpec>,
        default_allow: bool,
        origins: Vec<Arc<str>>,
    ) -> Self {
        AclTable {
            name: name.into(),
            classifier: Arc::new(Classifier::build(&rules, default_allow)),
            rules: Arc::new(AclRules::from_parts([Arc::from(rules)])),
            origins: origins.into_iter().collect(),
        }
    }

    /// The ACL named `name` over `rules` already compiled into `classifier` (which must have
    /// been built from exactly `rules`), with its rules' origins.
    pub fn sharing(
        name: impl Into<Arc<str>>,
        rules: Arc<AclRules>,
        classifier: Arc<Classifier>,
        origins: AclOrigins,
    ) -> Self {
        debug_assert_eq!(classifier.rule_count(), rules.len());
        AclTable {
            name: name.into(),
            rules,
            classifier,
            origins,
        }
    }
}

/// An ACL's rules, in order, kept as the runs they were put together from: the rules of one
/// policy rule's peer set are the same runs in every ACL that holds the set, and in the next
/// tables, so a new ACL costs its list of runs, not a copy of its rules.
#[derive(Clone, Debug, Default)]
pub struct AclRules {
    /// The runs, none empty, with the end (exclusive) of each in the whole list.
    parts: Vec<(usize, Arc<[AclRuleSpec]>)>,
}

impl AclRules {
    /// The list of `parts` in turn.
    pub fn from_parts(parts: impl IntoIterator<Item = Arc<[AclRuleSpec]>>) -> Self {
        let mut end = 0;
        AclRules {
            parts: parts
                .into_iter()
                .filter(|p| !p.is_empty())
                .map(|p| {
                    end += p.len();
                    (end, p)
                })
                .collect(),
        }
    }

    /// How many rules.
    pub fn len(&self) -> usize {
        self.parts.last().map_or(0, |(end, _)| *end)
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Rule `index`.
    pub fn get(&self, index: usize) -> Option<&AclRuleSpec> {
        let i = self.parts.partition_point(|(end, _)| *end <= index);
        let (end, part) = self.parts.get(i)?;
        part.get(index + part.len() - end)
    }

    /// The rules, in order.
    pub fn iter(&self) -> impl Iterator<Item = &AclRuleSpec> {
        self.parts.iter().flat_map(|(_, part)| part.iter())
    }

    /// The rules, copied into one list.
    pub fn to_vec(&self) -> Vec<AclRuleSpec> {
        let mut out = Vec::with_capacity(self.len());
        for (_, part) in &self.parts {
            out.extend_from_slice(part);
        }
        out
    }

    /// The runs, in order.
    pub fn parts(&self) -> impl Iterator<Item = &Arc<[AclRuleSpec]>> {
        self.parts.iter().map(|(_, part)| part)
    }
}

impl RuleList for AclRules {
    fn len(&self) -> usize {
        AclRules::len(self)
    }

    fn get(&self, index: usize) -> Option<&AclRuleSpec> {
        AclRules::get(self, index)
    }
}

/// Where each rule of an ACL comes from, by rule index.
///
/// The compiler emits the rules of one origin together, so this keeps one entry per run of
/// rules rather than one per rule: the origins of a 10,000-rule ACL cost a handful of entries to
/// build, not 10,000 string handles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AclOrigins {
    /// (end of the run, exclusive; origin), runs in rule order, none empty.
    runs: Vec<(usize, Arc<str>)>,
}

impl AclOrigins {
    /// From (number of rules, origin) runs in rule order.
    pub fn from_runs(runs: impl IntoIterator<Item = (usize, Arc<str>)>) -> Self {
        let mut out = AclOrigins::default();
        for (count, origin) in runs {
            out.push(count, origin);
        }
        out
    }

    fn push(&mut self, count: usize, origin: Arc<str>) {
        if count == 0 {
            return;
        }
        let end = self.len() + count;
        match self.runs.last_mut() {
            Some((last_end, last)) if *last == origin => *last_end = end,
            _ => self.runs.push((end, origin)),
        }
    }

    /// The origin of rule `rule`.
    pub fn get(&self, rule: usize) -> Option<&Arc<str>> {
        let i = self.runs.partition_point(|(end, _)| *end <= rule);
        self.runs.get(i).map(|(_, origin)| origin)
    }

    /// How many rules.
    pub fn len(&self) -> usize {
        self.runs.last().map_or(0, |(end, _)| *end)
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The origin of every rule, in rule order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        self.runs()
            .flat_map(|(rules, origin)| rules.map(move |_| origin))
    }

    /// The runs: rule index ranges and their origin.
    pub fn runs(&self) -> impl Iterator<Item = (Range<usize>, &Arc<str>)> {
        let starts = std::iter::once(0).chain(self.runs.iter().map(|(end, _)| *end));
        starts
            .zip(&self.runs)
            .map(|(start, (end, origin))| (start..*end, origin))
    }
}

impl FromIterator<Arc<str>> for AclOrigins {
    fn from_iter<I: IntoIterator<Item = Arc<str>>>(iter: I) -> Self {
        let mut out = AclOrigins::default();
        for origin in iter {
            out.push(1, origin);
        }
        out
    }
}

/// The ACLs of one local pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodAcls {
    /// Index into [`PolicyTables::acls`] for traffic to the pod; `None`: not isolated.
    pub ingress: Option<u32>,
    /// Index into [`PolicyTables::acls`] for traffic from the pod; `None`: not isolated.
    pub egress: Option<u32>,
}

/// Everything the ACL nodes enforce.
#[derive(Clone, Debug, Default)]
pub struct PolicyTables {
    /// The shared ACLs (behind `Arc`, so the next tables reuse the ones that did not change).
    pub acls: Vec<Arc<AclTable>>,
    /// Local pods by address (every address of a pod points at the same [`PodAcls`]).
    pub pods: FnvHashMap<IpAddr, PodAcls>,
}

/// Which way a packet crosses a pod's boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclDirection {
    /// Into the pod.
    Ingress,
    /// Out of the pod.
    Egress,
}

impl PolicyTables {
    /// The ACL that applies to `pod` in `direction`, if the pod is local and isolated.
    #[inline]
    pub fn acl_for(&self, pod: IpAddr, direction: AclDirection) -> Option<(u32, &AclTable)> {
        let acls = self.pods.get(&pod)?;
        let index = match direction {
            AclDirection::Ingress => acls.ingress?,
            AclDirection::Egress => acls.egress?,
        };
        self.acls.get(index as usize).map(|t| (index, &**t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_kept_as_runs() {
        let names: Vec<Arc<str>> = ["node", "a", "a", "a", "b", "a"]
            .into_iter()
            .map(Arc::from)
            .collect();
        let origins: AclOrigins = names.iter().cloned().collect();
        assert_eq!(origins.len(), 6);
        assert_eq!(origins.runs().count(), 4);
        assert_eq!(origins.iter().cloned().collect::<Vec<_>>(), names);
        for (i, name) in names.iter().enumerate() {
            assert_eq!(origins.get(i), Some(name));
        }
        assert_eq!(origins.get(6), None);
        let runs = AclOrigins::from_runs([
            (1, Arc::from("node")),
            (0, Arc::from("empty")),
            (3, Arc::from("a")),
            (1, Arc::from("b")),
            (1, Arc::from("a")),
        ]);
        assert_eq!(runs, origins);
        assert!(AclOrigins::default().is_empty());
    }
}
