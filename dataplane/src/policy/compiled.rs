//! From the policy compiler's output ([`CompiledPolicies`]) to the tables the ACL nodes read.
//!
//! Each shared ACL that isolates (default deny) becomes one [`AclTable`], its rules compiled
//! into a classifier in the compiler's order, so a rule's index in the classifier is its index
//! in the ACL and in [`AclTable::origins`]. An ACL that does not isolate (default allow, no
//! rules) gets no table: the pod's direction is `None`, which the ACL nodes pass without a
//! lookup. Every address of every local pod points at the pod's two ACLs.
//!
//! The work after a change is kept to what the change made new. An ACL the compiler still holds
//! (the same `Arc`) keeps its table. A new ACL whose rules are the same list as one already
//! built (the same [`RuleSetId`]s in the same order: the ACLs differ only in the origins of
//! their rules) gets a new table around the existing classifier; only a new list is compiled.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use switchyard_policy::{Acl, AclId, CompiledPolicies, DefaultAction, RuleSetId};

use super::{AclOrigins, AclTable, PodAcls, PolicyTables};
use crate::acl::{AclRuleSpec, Classifier};

/// A rule list and its classifier, shared by the tables of every ACL with that list.
#[derive(Clone, Debug)]
struct Matcher {
    rules: Arc<[AclRuleSpec]>,
    classifier: Arc<Classifier>,
}

/// What the last [`PolicyTables::from_compiled`] built and reused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// Isolating ACLs whose table was kept as it was.
    pub tables_reused: usize,
    /// Tables made for ACLs new since the last build.
    pub tables_built: usize,
    /// Classifiers compiled for rule lists no table had (the costly part).
    pub classifiers_built: usize,
}

/// The tables and classifiers built so far, kept between builds so that a change builds only
/// what it made new. After a build it holds exactly what the built tables use.
#[derive(Debug, Default)]
pub struct AclCache {
    /// By ACL id, with the ACL the table was built from.
    tables: HashMap<AclId, (Arc<Acl>, Arc<AclTable>)>,
    /// By the rule sets the list was made of, in order.
    matchers: HashMap<Vec<RuleSetId>, Matcher>,
    last: BuildStats,
}

impl AclCache {
    /// What the last build built and reused.
    pub fn last_build(&self) -> BuildStats {
        self.last
    }
}

impl PolicyTables {
    /// The dataplane's view of `compiled`, building tables and classifiers only for ACLs and
    /// rule lists `cache` does not hold.
    pub fn from_compiled(compiled: &CompiledPolicies, cache: &mut AclCache) -> PolicyTables {
        let mut tables = PolicyTables::default();
        let mut index: BTreeMap<AclId, u32> = BTreeMap::new();
        let mut kept = HashMap::new();
        let mut matchers = HashMap::new();
        let mut stats = BuildStats::default();
        for (id, acl) in compiled.acls() {
            if acl.default == DefaultAction::Allow {
                continue;
            }
            let Ok(i) = u32::try_from(tables.acls.len()) else {
                break;
            };
            index.insert(id, i);
            let sets: Vec<RuleSetId> = acl.parts().iter().map(|p| p.rules.id()).collect();
            let table = match cache.tables.remove(&id) {
                Some((built_from, table)) if Arc::ptr_eq(&built_from, acl) => {
                    stats.tables_reused += 1;
                    matchers.entry(sets).or_insert_with(|| Matcher {
                        rules: Arc::clone(&table.rules),
                        classifier: Arc::clone(&table.classifier),
                    });
                    table
                }
                _ => {
                    stats.tables_built += 1;
                    let matcher = matchers
                        .entry(sets)
                        .or_insert_with_key(|sets| {
                            cache.matchers.remove(sets).unwrap_or_else(|| {
                                stats.classifiers_built += 1;
                                matcher(acl)
                            })
                        })
                        .clone();
                    Arc::new(acl_table(id, acl, matcher))
                }
            };
            tables.acls.push(Arc::clone(&table));
            kept.insert(id, (Arc::clone(acl), table));
        }
        cache.tables = kept;
        cache.matchers = matchers;
        cache.last = stats;
        for (ip, key) in compiled.local_pod_ips() {
            let Some(acls) = compiled.pod_acls(key) else {
                continue;
            };
            let entry = PodAcls {
                ingress: index.get(&acls.ingress).copied(),
                egress: index.get(&acls.egress).copied(),
            };
            tables.pods.insert(ip, entry);
        }
        tables
    }
}

/// An isolating ACL's rules, compiled.
fn matcher(acl: &Acl) -> Matcher {
    let rules: Arc<[AclRuleSpec]> = acl
        .parts()
        .iter()
        .flat_map(|part| part.rules.rules())
        .map(|r| AclRuleSpec {
            peer: r.peer,
            protocol: r.protocol,
            ports: (r.ports.first, r.ports.last),
        })
        .collect();
    let classifier = Arc::new(Classifier::build(&rules, false));
    Matcher { rules, classifier }
}

/// The table of one isolating ACL around its (possibly shared) matcher.
fn acl_table(id: AclId, acl: &Acl, matcher: Matcher) -> AclTable {
    let origins = AclOrigins::from_runs(
        acl.parts()
            .iter()
            .map(|p| (p.rules.len(), Arc::from(p.origin.to_string()))),
    );
    AclTable::sharing(
        format!("acl-{}", id.0),
        matcher.rules,
        matcher.classifier,
        origins,
    )
}
