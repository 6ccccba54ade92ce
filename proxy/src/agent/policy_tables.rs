//! From the policy compiler's output to the tables the dataplane's ACL nodes read.
//!
//! The work is [`PolicyTables::from_compiled`] (in the dataplane crate, so that
//! `benches/examples/policy_scale.rs` times the very code the agent runs): each shared ACL
//! that isolates becomes one [`AclTable`](switchyard_dataplane::policy::AclTable), its rules
//! compiled into a classifier in the compiler's order, so a rule's index in the classifier is
//! its index in the ACL and in its origins; ACLs that do not isolate get no table; every
//! address of every local pod points at the pod's two ACLs. An [`AclCache`] kept between
//! builds makes a change build only the tables of new ACLs, and a classifier only for a rule
//! list no table has yet.

use switchyard_dataplane::policy::PolicyTables;
use switchyard_policy::CompiledPolicies;

pub use switchyard_dataplane::policy::AclCache;

/// The dataplane's view of `compiled`.
pub fn policy_tables(compiled: &CompiledPolicies) -> PolicyTables {
    policy_tables_reusing(compiled, &mut AclCache::default())
}

/// [`policy_tables`], building only what `cache` does not hold; afterwards the cache holds
/// exactly what the new tables use.
pub fn policy_tables_reusing(compiled: &CompiledPolicies, cache: &mut AclCache) -> PolicyTables {
    PolicyTables::from_compiled(compiled, cache)
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
