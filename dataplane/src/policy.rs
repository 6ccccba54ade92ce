//! NetworkPolicy as the dataplane enforces it: per local pod, an optional ingress and an
//! optional egress ACL (absent: the pod is not isolated in that direction), ACLs shared
//! between pods whose rules are equal. Compiled by the agent from the `policy` crate's
//! output; matched by [`crate::acl::Classifier`] in the `ip{4,6}-acl` nodes.

use std::net::IpAddr;
use std::sync::Arc;

use fnv::FnvHashMap;

use crate::acl::{AclRuleSpec, Classifier};

/// One compiled ACL, shared by every pod that has it.
#[derive(Clone, Debug)]
pub struct AclTable {
    /// A stable name for people and metrics (e.g. `acl-3`).
    pub name: Arc<str>,
    /// The rules as given (for people: `switchyard show acl`), in classifier order.
    pub rules: Vec<AclRuleSpec>,
    /// The rules, compiled. Allow rules; the default action is deny (the pod is isolated).
    pub classifier: Classifier,
    /// Where each rule comes from, by rule index: `namespace/policy ingress[0]`, `node`.
    pub origins: Vec<Arc<str>>,
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
            classifier: Classifier::build(&rules, default_allow),
            rules,
            origins,
        }
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
