//! NetworkPolicy (`networking.k8s.io/v1`) compiled into dataplane ACLs.
//!
//! Plain data in ([`model`]: namespaces, pods with labels, addresses and named ports, policies),
//! ACLs out ([`acl`]): one ingress and one egress ACL per pod on this node, equal ACLs shared by
//! id, every rule tagged with the policy rule it came from. [`PolicyCompiler`] keeps the state
//! indexed (label values to pods, label keys to the selectors that read them) and patches it by
//! delta, so a change costs what it touches (see [`compiler`]); [`reference`] answers the same
//! questions straight from the spec and is what the tests hold the compiler to; [`explain`]
//! prints the truth table.
//! No Kubernetes types and no I/O: the agent reduces API objects into [`model`] first.
//!
//! # Semantics, and the choices made where the spec leaves room
//!
//! - **Isolation is per direction.** A pod is isolated for ingress (egress) when some policy
//!   selects it and names that direction; then only the union of those policies' rules passes.
//!   `policyTypes` absent or empty means Ingress, plus Egress when `egress` has rules. Rules of a
//!   direction the policy does not name are ignored. `ingress: []` and absent both mean "no
//!   rules" (deny, if isolated); an absent or empty `from`/`to` means every peer, and absent or
//!   empty `ports` every port of every protocol.
//! - **Peers.** `podSelector` alone: pods of the policy's namespace; `namespaceSelector` alone:
//!   every pod of the matching namespaces; both: matching pods in matching namespaces. Namespace
//!   selectors also see `kubernetes.io/metadata.name`, as the API server sets it. `ipBlock`
//!   matches addresses (pod addresses included), minus `except`.
//! - **Named ports** resolve against the destination pod: for ingress the selected pod itself
//!   (so one rule compiles differently per pod), for egress the peer pod. An address that is no
//!   pod has no named ports, so an egress rule with a named port reaches, through an `ipBlock`
//!   or "every peer", only pods inside it that declare that port; the protocol must match too.
//! - **Node traffic.** Traffic between a pod on this node and this node's own addresses is always
//!   allowed (the Kubernetes docs' exception; kubelet probes rely on it): every isolated ACL
//!   starts with an allow rule per node address, origin [`RuleOrigin::Node`].
//! - **Self traffic.** A pod talking to its own address never reaches the dataplane (the kernel
//!   loops it back), so it is always allowed; the ACLs carry no rule for it. Through a Service
//!   (hairpin) it does reach the dataplane, whose ACL node allows it for the same reason.
//!   (The upstream e2e suite leaves loopback out of its verdicts; implementations differ.)
//! - **Replies** are not in the ACLs: conntrack in the dataplane passes packets of connections
//!   already allowed in the other direction.
//! - **Bad input: in doubt isolated, never open.** Problems are reported as [`PolicyError`]s and
//!   the policy is still enforced: it isolates the pods it selects in the directions it names,
//!   and each invalid peer or port entry matches nothing (it is *not* dropped from its list,
//!   which could turn a list into "every peer"). A policy with an invalid `podSelector` selects
//!   every pod of its namespace and allows nothing at all: its rules were meant for pods we
//!   cannot identify, and applying them to the whole namespace could open a pod that another
//!   policy isolates.
//! - **Global egress ACL.** See [`CompiledPolicies`]: a node-wide egress table keyed by source
//!   pod address whose values are the shared per-pod ACLs.

pub mod acl;
mod check;
pub mod compiler;
pub mod explain;
pub mod model;
pub mod reference;
pub mod validate;

pub use acl::{
    acl_allows, Acl, AclId, AclPart, AclRule, DefaultAction, PortRange, RuleOrigin, RuleSet,
    RuleSetId, RuleSpec,
};
pub use compiler::{compile, ChangeSet, CompileError, CompiledPolicies, PodAcls, PolicyCompiler};
pub use explain::{explain, TruthTable};
pub use model::{
    Cluster, Direction, IpBlock, LabelSelector, LabelSelectorRequirement, Labels, NamedPort,
    Namespace, NetworkPolicy, Peer, Pod, PodKey, PolicyKey, PolicyType, PortRef, PortSpec,
    Protocol, Rule, SelectorOperator,
};
pub use reference::Endpoint;
pub use validate::{Invalid, PolicyError};
