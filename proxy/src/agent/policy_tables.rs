//! From the policy compiler's output to the tables the dataplane's ACL nodes read.
//!
//! Each shared ACL of [`CompiledPolicies`] that isolates (default deny) becomes one
//! [`AclTable`], its rules compiled into a classifier in the compiler's order, so a rule's
//! index in the classifier is its index in the ACL and in [`AclTable::origins`]. An ACL that
//! does not isolate (default allow, no rules) gets no table: the pod's direction is `None`,
//! which the ACL nodes pass without a lookup. Every address of every local pod points at the
//! pod's two ACLs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use switchyard_dataplane::acl::AclRuleSpec;
use switchyard_dataplane::policy::{AclTable, PodAcls, PolicyTables};
use switchyard_policy::{Acl, AclId, CompiledPolicies, DefaultAction};

/// The dataplane's view of `compiled`.
pub fn policy_tables(compiled: &CompiledPolicies) -> PolicyTables {
    policy_tables_reusing(compiled, &mut AclCache::default())
}

/// The classifiers built so far, by ACL id, with the ACL each was built from: an ACL the
/// compiler still holds (the same `Arc`) keeps its classifier, so a change builds only the
/// classifiers of the ACLs it made.
#[derive(Debug, Default)]
pub struct AclCache(HashMap<AclId, (Arc<Acl>, Arc<AclTable>)>);

/// [`policy_tables`], building classifiers only for ACLs `cache` does not hold; afterwards the
/// cache holds exactly the isolating ACLs of `compiled`.
pub fn policy_tables_reusing(compiled: &CompiledPolicies, cache: &mut AclCache) -> PolicyTables {
    let mut tables = PolicyTables::default();
    let mut index: BTreeMap<AclId, u32> = BTreeMap::new();
    let mut next = HashMap::new();
    for (id, acl) in compiled.acls() {
        if acl.default == DefaultAction::Allow {
            continue;
        }
        let Ok(i) = u32::try_from(tables.acls.len()) else {
            break;
        };
        index.insert(id, i);
        let table = match cache.0.remove(&id) {
            Some((built_from, table)) if Arc::ptr_eq(&built_from, acl) => table,
            _ => Arc::new(acl_table(id, acl)),
        };
        tables.acls.push(Arc::clone(&table));
        next.insert(id, (Arc::clone(acl), table));
    }
    cache.0 = next;
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

/// One isolating ACL as a classifier with its rule origins.
fn acl_table(id: AclId, acl: &Acl) -> AclTable {
    let specs: Vec<AclRuleSpec> = acl
        .rules
        .iter()
        .map(|r| AclRuleSpec {
            peer: r.peer,
            protocol: r.protocol,
            ports: (r.ports.first, r.ports.last),
        })
        .collect();
    let origins = acl
        .rules
        .iter()
        .map(|r| Arc::from(r.origin.to_string()))
        .collect();
    AclTable::new(
        format!("acl-{}", id.0),
        specs,
        acl.default == DefaultAction::Allow,
        origins,
    )
}

/// The verdict the ACL nodes give the first packet of a flow from `source` to `destination`
/// (both directions' ACLs of local pods, as [`CompiledPolicies::flow_allowed`] defines it),
/// worked out from `tables`. A pod's traffic to itself is allowed (it never reaches the
/// dataplane). For `policy explain` and the tests.
pub fn flow_allowed(
    tables: &PolicyTables,
    source: std::net::IpAddr,
    destination: std::net::IpAddr,
    same_pod: bool,
    protocol: u8,
    port: u16,
) -> bool {
    use switchyard_dataplane::policy::AclDirection;
    if same_pod {
        return true;
    }
    let egress_ok = tables
        .acl_for(source, AclDirection::Egress)
        .is_none_or(|(_, t)| t.classifier.allows(destination, protocol, port));
    let ingress_ok = tables
        .acl_for(destination, AclDirection::Ingress)
        .is_none_or(|(_, t)| t.classifier.allows(source, protocol, port));
    egress_ok && ingress_ok
}

#[cfg(test)]
mod tests;
