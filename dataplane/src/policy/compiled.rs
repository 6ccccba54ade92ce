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
//! Rule lists are [`AclRules`]: the converted rules of each set, shared by every list holding
//! the set and kept between builds, so a new list costs its parts, not a copy of its rules.
//!
//! A new list is compiled by patching where it can ([`Classifier::patched`]): a pod joining or
//! leaving a peer set changes, in every ACL holding the set, the rules of one host prefix. The
//! base is an ACL of the last build with the same origins in the same order (preferably one
//! that is gone, i.e. the ACL the same pods had before; among several, the one sharing the most
//! sets); the delta is worked out part by part, a merge of the two sorted sets for a part whose
//! set changed, once per pair of sets however many ACLs hold them. What a patch declines is
//! built.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use switchyard_policy::{
    Acl, AclId, CompiledPolicies, DefaultAction, RuleOrigin, RuleSetId, RuleSpec,
};

use super::{AclOrigins, AclRules, AclTable, PodAcls, PolicyTables};
use crate::acl::{AclRuleSpec, Classifier, RuleDelta, PATCH_MAX_RULES};

/// A rule list and its classifier, shared by the tables of every ACL with that list.
#[derive(Clone, Debug)]
struct Matcher {
    rules: Arc<AclRules>,
    classifier: Arc<Classifier>,
}

/// What the last [`PolicyTables::from_compiled`] built and reused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// Isolating ACLs whose table was kept as it was.
    pub tables_reused: usize,
    /// Tables made for ACLs new since the last build.
    pub tables_built: usize,
    /// Classifiers made for rule lists no table had (the costly part), built or patched.
    pub classifiers_built: usize,
    /// Of those, how many were patched from the classifier of a previous ACL with the same
    /// origins ([`Classifier::patched`]) rather than built.
    pub classifiers_patched: usize,
}

/// The tables and classifiers built so far, kept between builds so that a change builds only
/// what it made new. After a build it holds exactly what the built tables use.
#[derive(Debug, Default)]
pub struct AclCache {
    /// By ACL id, with the ACL the table was built from.
    tables: HashMap<AclId, (Arc<Acl>, Arc<AclTable>)>,
    /// By the rule sets the list was made of, in order.
    matchers: HashMap<Vec<RuleSetId>, Matcher>,
    /// The rules of each set in use, as the dataplane spells them.
    sets: HashMap<RuleSetId, Arc<[AclRuleSpec]>>,
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
    /// rule lists `cache` does not hold. A new rule list is patched, where it can be, from the
    /// classifier of an ACL of the last build with the same origins (the ACL a pod had before a
    /// peer set it holds gained or lost a pod); see the module docs.
    pub fn from_compiled(compiled: &CompiledPolicies, cache: &mut AclCache) -> PolicyTables {
        let mut tables = PolicyTables::default();
        let mut index: BTreeMap<AclId, u32> = BTreeMap::new();
        let mut kept = HashMap::new();
        let mut matchers = HashMap::new();
        let mut sets_in_use: HashMap<RuleSetId, Arc<[AclRuleSpec]>> = HashMap::new();
        let mut stats = BuildStats::default();
        // First the tables kept as they were, so that what is left in `cache.tables` is the
        // ACLs that are gone: the likeliest bases for patching the new ones.
        let mut slots: Vec<Option<Arc<AclTable>>> = Vec::new();
        let mut fresh: Vec<(usize, AclId, &Arc<Acl>, Vec<RuleSetId>)> = Vec::new();
        for (id, acl) in compiled.acls() {
            if acl.default == DefaultAction::Allow {
                continue;
            }
            let Ok(i) = u32::try_from(slots.len()) else {
                break;
            };
            index.insert(id, i);
            let sets: Vec<RuleSetId> = acl.parts().iter().map(|p| p.rules.id()).collect();
            match cache.tables.remove(&id) {
                Some((built_from, table)) if Arc::ptr_eq(&built_from, acl) => {
                    stats.tables_reused += 1;
                    keep_sets(acl, &table.rules, &mut sets_in_use);
                    matchers.entry(sets).or_insert_with(|| Matcher {
                        rules: Arc::clone(&table.rules),
                        classifier: Arc::clone(&table.classifier),
                    });
                    slots.push(Some(Arc::clone(&table)));
                    kept.insert(id, (Arc::clone(acl), table));
                }
                previous => {
                    // A table of an id whose ACL changed is a base like any gone one.
                    if let Some(previous) = previous {
                        cache.tables.insert(id, previous);
                    }
                    slots.push(None);
                    fresh.push((slots.len() - 1, id, acl, sets));
                }
            }
        }
        let mut bases: Option<Bases> = None;
        let mut made = Vec::with_capacity(fresh.len());
        for (slot, id, acl, sets) in fresh {
            stats.tables_built += 1;
            let matcher = match matchers.get(&sets) {
                Some(m) => Matcher::clone(m),
                None => {
                    let m = match cache.matchers.remove(&sets) {
                        Some(m) => {
                            keep_sets(acl, &m.rules, &mut sets_in_use);
                            m
                        }
                        None => {
                            stats.classifiers_built += 1;
                            let rules = Arc::new(rules_of(acl, &mut sets_in_use, &mut cache.sets));
                            let bases =
                                bases.get_or_insert_with(|| Bases::new(&cache.tables, &kept));
                            match patched(acl, &rules, bases) {
                                Some(classifier) => {
                                    stats.classifiers_patched += 1;
                                    Matcher { rules, classifier }
                                }
                                None => {
                                    let flat = rules.to_vec();
                                    let classifier = Arc::new(Classifier::build(&flat, false));
                                    Matcher { rules, classifier }
                                }
                            }
                        }
                    };
                    matchers.insert(sets, m.clone());
                    m
                }
            };
            let table = Arc::new(acl_table(id, acl, matcher));
            made.push((id, (Arc::clone(acl), Arc::clone(&table))));
            if let Some(s) = slots.get_mut(slot) {
                *s = Some(table);
            }
        }
        drop(bases);
        kept.extend(made);
        tables.acls = slots.into_iter().flatten().collect();
        cache.tables = kept;
        cache.matchers = matchers;
        cache.sets = sets_in_use;
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

/// The ACLs of the last build that a new ACL's classifier may be patched from, by their
/// origins in order (an ACL's parts are sorted by origin, so equal lists align part by part).
struct Bases<'a> {
    by_origins: HashMap<Vec<&'a RuleOrigin>, Vec<(&'a Arc<Acl>, &'a AclTable)>>,
    /// Differences between sets, worked out once per build.
    part_deltas: HashMap<(RuleSetId, RuleSetId), PartDelta>,
}

/// Candidates looked at per new ACL (ACLs with the same origins differ in their sets).
const BASES_TRIED: usize = 8;

impl<'a> Bases<'a> {
    /// Gone ACLs first, then the kept ones.
    fn new(
        gone: &'a HashMap<AclId, (Arc<Acl>, Arc<AclTable>)>,
        kept: &'a HashMap<AclId, (Arc<Acl>, Arc<AclTable>)>,
    ) -> Self {
        let mut by_origins: HashMap<Vec<&RuleOrigin>, Vec<_>> = HashMap::new();
        for (acl, table) in gone.values().chain(kept.values()) {
            let origins = acl.parts().iter().map(|p| &p.origin).collect();
            by_origins.entry(origins).or_default().push((acl, &**table));
        }
        Bases {
            by_origins,
            part_deltas: HashMap::new(),
        }
    }

    /// The base sharing the most rule sets with `acl`.
    fn for_acl(&self, acl: &Acl) -> Option<(&'a Arc<Acl>, &'a AclTable)> {
        let origins: Vec<&RuleOrigin> = acl.parts().iter().map(|p| &p.origin).collect();
        let shared = |base: &Acl| {
            base.parts()
                .iter()
                .zip(acl.parts())
                .filter(|(a, b)| a.rules.id() == b.rules.id())
                .count()
        };
        self.by_origins
            .get(&origins)?
            .iter()
            .take(BASES_TRIED)
            // The first of the best: gone ACLs come first.
            .rev()
            .max_by_key(|(base, _)| shared(base))
            .copied()
    }
}

/// `acl`'s classifier (over `rules`, its rule list) patched from a base's, when one has the
/// same origins and the rules that differ are few and on host prefixes.
fn patched(acl: &Acl, rules: &AclRules, bases: &mut Bases) -> Option<Arc<Classifier>> {
    let (base, table) = bases.for_acl(acl)?;
    let delta = rule_delta(base, acl, &mut bases.part_deltas)?;
    let classifier = table.classifier.patched(&*table.rules, rules, &delta)?;
    Some(Arc::new(classifier))
}

/// How the rules of one set differ from another's: offsets of the rules removed (in the old
/// set) and added (in the new), ascending; `None` when more differ than a patch takes.
type PartDelta = Option<Arc<(Vec<u32>, Vec<u32>)>>;

/// How `new`'s rules differ from `old`'s, part by part (both have the same origins in the same
/// order): parts with the same set are the same rules; other parts are sorted lists, merged
/// (once per pair of sets: many ACLs hold the same changed set). `None` when more rules differ
/// than a patch takes.
fn rule_delta(
    old: &Acl,
    new: &Acl,
    memo: &mut HashMap<(RuleSetId, RuleSetId), PartDelta>,
) -> Option<RuleDelta> {
    let mut delta = RuleDelta::default();
    let (mut i, mut j) = (0u32, 0u32);
    for (a, b) in old.parts().iter().zip(new.parts()) {
        if a.rules.id() != b.rules.id() {
            let part = memo
                .entry((a.rules.id(), b.rules.id()))
                .or_insert_with(|| part_delta(a.rules.rules(), b.rules.rules()))
                .as_ref()?;
            delta.removed.extend(part.0.iter().map(|&x| i + x));
            delta.added.extend(part.1.iter().map(|&y| j + y));
            if delta.len() > PATCH_MAX_RULES {
                return None;
            }
        }
        i += a.rules.len() as u32;
        j += b.rules.len() as u32;
    }
    Some(delta)
}

/// The difference between two sorted rule lists (a merge; any order would still give a valid,
/// if longer, difference).
fn part_delta(a: &[RuleSpec], b: &[RuleSpec]) -> PartDelta {
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    let (mut x, mut y) = (0, 0);
    while x < a.len() || y < b.len() {
        match (a.get(x), b.get(y)) {
            (Some(p), Some(q)) if p == q => (x, y) = (x + 1, y + 1),
            (Some(p), Some(q)) if p < q => {
                removed.push(x as u32);
                x += 1;
            }
            (Some(_), None) => {
                removed.push(x as u32);
                x += 1;
            }
            _ => {
                added.push(y as u32);
                y += 1;
            }
        }
        if removed.len() + added.len() > PATCH_MAX_RULES {
            return None;
        }
    }
    Some(Arc::new((removed, added)))
}

fn spec(r: &RuleSpec) -> AclRuleSpec {
    AclRuleSpec {
        peer: r.peer,
        protocol: r.protocol,
        ports: (r.ports.first, r.ports.last),
    }
}

/// Keeps the converted rules of `acl`'s sets, which `rules` (its list) holds part by part.
fn keep_sets(acl: &Acl, rules: &AclRules, in_use: &mut HashMap<RuleSetId, Arc<[AclRuleSpec]>>) {
    if rules.parts().count() != acl.parts().len() {
        return;
    }
    for (part, rules) in acl.parts().iter().zip(rules.parts()) {
        in_use
            .entry(part.rules.id())
            .or_insert_with(|| Arc::clone(rules));
    }
}

/// An isolating ACL's rules, in order, from the rules of its sets: those of this build
/// (`in_use`), else the last build's (`kept`), else converted.
fn rules_of(
    acl: &Acl,
    in_use: &mut HashMap<RuleSetId, Arc<[AclRuleSpec]>>,
    kept: &mut HashMap<RuleSetId, Arc<[AclRuleSpec]>>,
) -> AclRules {
    AclRules::from_parts(acl.parts().iter().map(|part| {
        let id = part.rules.id();
        let rules = in_use.entry(id).or_insert_with(|| {
            kept.remove(&id)
                .unwrap_or_else(|| part.rules.rules().iter().map(spec).collect())
        });
        Arc::clone(rules)
    }))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    use proptest::prelude::*;
    use switchyard_policy::{
        Cluster, LabelSelector, Labels, NamedPort, Namespace, NetworkPolicy, Peer, Pod,
        PolicyCompiler, PolicyType, PortSpec, Protocol, Rule,
    };

    use super::*;
    use crate::acl::first_match_linear;

    const NAMESPACES: usize = 4;
    const PODS: usize = 24;
    const TIERS: [&str; 3] = ["web", "api", "db"];

    fn labels(tier: &str) -> Labels {
        [("tier".to_string(), tier.to_string())].into()
    }

    fn pod(i: usize, tier: &str) -> Pod {
        Pod {
            namespace: format!("ns-{}", i % NAMESPACES),
            name: format!("pod-{i}"),
            labels: labels(tier),
            ips: vec![IpAddr::from([198, 18, (i / 8) as u8, (i % 8) as u8 + 2])],
            named_ports: vec![NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8000 + (i % 3) as u16,
            }],
            node_local: i.is_multiple_of(3),
        }
    }

    /// Policies whose peers are pods by tier (in their namespace, and everywhere), so a tier
    /// change moves a pod in and out of peer sets that many distinct ACLs hold.
    fn cluster() -> Cluster {
        let mut cluster = Cluster {
            node_ips: vec![IpAddr::from([198, 19, 255, 1])],
            ..Cluster::default()
        };
        for n in 0..NAMESPACES {
            let name = format!("ns-{n}");
            cluster.namespaces.push(Namespace {
                name: name.clone(),
                labels: Labels::new(),
            });
            for (k, tier) in TIERS.iter().enumerate() {
                let peer = TIERS[(k + n) % TIERS.len()];
                cluster.policies.push(NetworkPolicy {
                    namespace: name.clone(),
                    name: format!("to-{tier}"),
                    pod_selector: LabelSelector::labels([("tier", *tier)]),
                    policy_types: Some(vec![PolicyType::Ingress, PolicyType::Egress]),
                    ingress: Some(vec![Rule {
                        peers: Some(vec![Peer::pods(LabelSelector::labels([("tier", peer)]))]),
                        ports: Some(vec![PortSpec::named(Protocol::Tcp, "http")]),
                    }]),
                    egress: Some(vec![Rule {
                        peers: Some(vec![Peer::pods_in_namespaces(
                            LabelSelector::labels([("tier", peer)]),
                            LabelSelector::everything(),
                        )]),
                        ports: Some(vec![PortSpec::number(Protocol::Tcp, 5432)]),
                    }]),
                });
            }
        }
        for i in 0..PODS {
            cluster.pods.push(pod(i, TIERS[i % TIERS.len()]));
        }
        cluster
    }

    type Canonical = BTreeMap<IpAddr, [Option<(Vec<AclRuleSpec>, Vec<String>)>; 2]>;

    fn canonical(tables: &PolicyTables) -> Canonical {
        let acl = |i: Option<u32>| {
            i.and_then(|i| tables.acls.get(i as usize)).map(|a| {
                let names = a.origins.iter().map(ToString::to_string).collect();
                (a.rules.to_vec(), names)
            })
        };
        tables
            .pods
            .iter()
            .map(|(ip, p)| (*ip, [acl(p.ingress), acl(p.egress)]))
            .collect()
    }

    /// Every table's classifier decides as a scan of its rules, on every pod address and port
    /// the rules name.
    fn classifiers_agree(tables: &PolicyTables) -> Result<(), TestCaseError> {
        for table in &tables.acls {
            let rules = table.rules.to_vec();
            prop_assert_eq!(table.classifier.rule_count(), rules.len());
            let addresses =
                (0..PODS + 2).map(|i| IpAddr::from([198, 18, (i / 8) as u8, (i % 8) as u8 + 2]));
            for peer in addresses.chain([IpAddr::from([198, 19, 255, 1])]) {
                for port in [0, 5432, 8000, 8001, 8002, 8003] {
                    let want = first_match_linear(&rules, peer, 6, port);
                    prop_assert_eq!(
                        table.classifier.classify(peer, 6, port),
                        want,
                        "{} {}",
                        peer,
                        port
                    );
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Tables built change by change with the kept cache (patching classifiers) equal tables
        /// built afresh, and every classifier agrees with a scan of its rules.
        #[test]
        fn patched_tables_equal_fresh_ones(
            changes in prop::collection::vec((0..PODS + 2, 0..TIERS.len() + 1), 1..12),
        ) {
            let mut cluster = cluster();
            let mut compiler = PolicyCompiler::from_cluster(&cluster);
            let mut cache = AclCache::default();
            let _ = PolicyTables::from_compiled(&compiler.snapshot(), &mut cache);
            for (i, tier) in changes {
                // A tier change, a pod dropping its tier, or a pod coming or going.
                let present = cluster.pods.iter().position(|p| p.name == format!("pod-{i}"));
                match (present, TIERS.get(tier)) {
                    (Some(at), Some(tier)) => {
                        cluster.pods[at].labels = labels(tier);
                        let key = cluster.pods[at].key();
                        prop_assert!(compiler.set_pod_labels(&key, labels(tier)).is_ok());
                    }
                    (Some(at), None) => {
                        let gone = cluster.pods.remove(at);
                        compiler.remove_pod(&gone.key());
                    }
                    (None, tier) => {
                        let added = pod(i, tier.copied().unwrap_or("web"));
                        cluster.pods.push(added.clone());
                        compiler.upsert_pod(added);
                    }
                }
                let tables = PolicyTables::from_compiled(&compiler.snapshot(), &mut cache);
                let fresh = PolicyTables::from_compiled(
                    &switchyard_policy::compile(&cluster),
                    &mut AclCache::default(),
                );
                prop_assert_eq!(canonical(&tables), canonical(&fresh));
                classifiers_agree(&tables)?;
            }
        }
    }

    /// The wide case: a pod that many ACLs name as a peer changes tier, and every classifier
    /// that holds it is patched, none built.
    #[test]
    fn a_peer_change_patches_every_classifier_holding_it() {
        let cluster = cluster();
        let mut compiler = PolicyCompiler::from_cluster(&cluster);
        let mut cache = AclCache::default();
        let _ = PolicyTables::from_compiled(&compiler.snapshot(), &mut cache);
        let remote = cluster.pods.iter().find(|p| !p.node_local).map(Pod::key);
        let Some(key) = remote else {
            panic!("no remote pod");
        };
        for tier in ["db", "api", "web", "db"] {
            assert!(compiler.set_pod_labels(&key, labels(tier)).is_ok());
            let tables = PolicyTables::from_compiled(&compiler.snapshot(), &mut cache);
            let built = cache.last_build();
            assert!(built.classifiers_built > 0, "{tier}: nothing to build");
            assert_eq!(built.classifiers_patched, built.classifiers_built, "{tier}");
            let fresh = PolicyTables::from_compiled(
                &switchyard_policy::compile(&cluster_with(&cluster, &key, tier)),
                &mut AclCache::default(),
            );
            assert_eq!(canonical(&tables), canonical(&fresh), "{tier}");
        }
    }

    fn cluster_with(cluster: &Cluster, key: &switchyard_policy::PodKey, tier: &str) -> Cluster {
        let mut out = cluster.clone();
        for p in &mut out.pods {
            if p.key() == *key {
                p.labels = labels(tier);
            }
        }
        out
    }
}
