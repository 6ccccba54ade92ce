//! The plain input model: what the agent reduces Kubernetes objects into.
//!
//! Field meanings follow `networking.k8s.io/v1` one to one, with `Option` wherever the API
//! distinguishes "absent" from "empty". Strings that the API server would validate (CIDRs,
//! label keys, port names) stay strings here so that a bad one can be reported and handled
//! conservatively by this crate instead of being lost in the reducer.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// The label the API server puts on every namespace, with the namespace's name as value.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Identity of a pod: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Identity of a NetworkPolicy: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub namespace: String,
    pub name: String,
}

impl PolicyKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A namespace and its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

impl Namespace {
    /// The labels namespace selectors see: the namespace's own labels plus
    /// [`NAMESPACE_NAME_LABEL`], which the API server sets (and overrides) on every namespace.
    /// Doing it here means `--manifests` clusters behave like real ones.
    pub fn selector_labels(&self) -> Labels {
        let mut labels = self.labels.clone();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), self.name.clone());
        labels
    }
}

/// A container port with a name, as NetworkPolicy named ports refer to it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A pod as policy sees it. Host-network pods should not be given to the compiler as pods:
/// policy does not apply to them and their addresses are the node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// The pod's addresses (`status.podIPs`), at most one per family in practice.
    pub ips: Vec<IpAddr>,
    /// Named container ports over all containers of the pod.
    pub named_ports: Vec<NamedPort>,
    /// Whether the pod runs on this node, so this node enforces its ACLs.
    pub node_local: bool,
}

impl Pod {
    pub fn key(&self) -> PodKey {
        PodKey::new(self.namespace.clone(), self.name.clone())
    }
}

/// Transport protocol of a NetworkPolicy port (the API's default is TCP).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
    /// Anything else the manifest said; makes the port entry invalid.
    Unknown(String),
}

impl Protocol {
    /// The IP protocol number, or `None` for an unknown protocol.
    pub fn number(&self) -> Option<u8> {
        match self {
            Protocol::Tcp => Some(6),
            Protocol::Udp => Some(17),
            Protocol::Sctp => Some(132),
            Protocol::Unknown(_) => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("TCP"),
            Protocol::Udp => f.write_str("UDP"),
            Protocol::Sctp => f.write_str("SCTP"),
            Protocol::Unknown(s) => write!(f, "{s:?}"),
        }
    }
}

/// `spec.policyTypes` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyType {
    Ingress,
    Egress,
}

/// Traffic direction as seen from the selected (policed) pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Into the pod; ACL rules match the packet's source address.
    Ingress,
    /// Out of the pod; ACL rules match the packet's destination address.
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Direction::Ingress => f.write_str("ingress"),
            Direction::Egress => f.write_str("egress"),
        }
    }
}

/// A NetworkPolicy (`spec` flattened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    /// `None` when the field is absent; an empty list is treated the same, as the API does.
    pub policy_types: Option<Vec<PolicyType>>,
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl NetworkPolicy {
    pub fn key(&self) -> PolicyKey {
        PolicyKey::new(self.namespace.clone(), self.name.clone())
    }

    /// The directions this policy isolates: `policyTypes` if given, else Ingress, plus
    /// Egress when there is at least one egress rule (the API server's defaulting).
    pub fn effective_types(&self) -> (bool, bool) {
        match &self.policy_types {
            Some(types) if !types.is_empty() => (
                types.contains(&PolicyType::Ingress),
                types.contains(&PolicyType::Egress),
            ),
            _ => (true, self.egress.as_ref().is_some_and(|e| !e.is_empty())),
        }
    }
}

/// One ingress (`from`) or egress (`to`) rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    /// `from` / `to`; absent or empty means every peer.
    pub peers: Option<Vec<Peer>>,
    /// Absent or empty means every port and protocol.
    pub ports: Option<Vec<PortSpec>>,
}

/// A `NetworkPolicyPeer`. Valid peers set `ip_block` alone, or one or both selectors.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Peer {
    pub pod_selector: Option<LabelSelector>,
    pub namespace_selector: Option<LabelSelector>,
    pub ip_block: Option<IpBlock>,
}

impl Peer {
    /// Pods matching `selector` in the policy's own namespace.
    pub fn pods(selector: LabelSelector) -> Self {
        Self {
            pod_selector: Some(selector),
            ..Self::default()
        }
    }

    /// All pods in namespaces matching `selector`.
    pub fn namespaces(selector: LabelSelector) -> Self {
        Self {
            namespace_selector: Some(selector),
            ..Self::default()
        }
    }

    /// Pods matching `pods` in namespaces matching `namespaces`.
    pub fn pods_in_namespaces(pods: LabelSelector, namespaces: LabelSelector) -> Self {
        Self {
            pod_selector: Some(pods),
            namespace_selector: Some(namespaces),
            ip_block: None,
        }
    }

    pub fn ip_block(cidr: &str, except: &[&str]) -> Self {
        Self {
            ip_block: Some(IpBlock {
                cidr: cidr.to_string(),
                except: except.iter().map(|s| s.to_string()).collect(),
            }),
            ..Self::default()
        }
    }
}

/// An `IPBlock`: a CIDR minus the `except` CIDRs (each a strict subset of `cidr`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpBlock {
    pub cidr: String,
    pub except: Vec<String>,
}

/// A `NetworkPolicyPort`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortSpec {
    pub protocol: Protocol,
    /// Absent: every port of `protocol`.
    pub port: Option<PortRef>,
    /// With a numeric `port`: the inclusive range `port..=end_port`.
    pub end_port: Option<u16>,
}

impl PortSpec {
    pub fn number(protocol: Protocol, port: u16) -> Self {
        Self {
            protocol,
            port: Some(PortRef::Number(port)),
            end_port: None,
        }
    }

    pub fn named(protocol: Protocol, name: &str) -> Self {
        Self {
            protocol,
            port: Some(PortRef::Name(name.to_string())),
            end_port: None,
        }
    }

    pub fn range(protocol: Protocol, first: u16, last: u16) -> Self {
        Self {
            protocol,
            port: Some(PortRef::Number(first)),
            end_port: Some(last),
        }
    }

    pub fn any(protocol: Protocol) -> Self {
        Self {
            protocol,
            port: None,
            end_port: None,
        }
    }
}

/// A port by number or by container port name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// A `LabelSelector`. The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

impl LabelSelector {
    /// The empty selector (`{}`), which matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            match_labels: pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    pub fn with_expression(
        mut self,
        key: &str,
        operator: SelectorOperator,
        values: &[&str],
    ) -> Self {
        self.match_expressions.push(LabelSelectorRequirement {
            key: key.to_string(),
            operator,
            values: values.iter().map(|s| s.to_string()).collect(),
        });
        self
    }
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    /// Anything else the manifest said; makes the selector invalid.
    Unknown(String),
}

/// Everything the compiler and the reference evaluator read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cluster {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<NetworkPolicy>,
    /// This node's own addresses: traffic between them and local pods is always allowed.
    pub node_ips: Vec<IpAddr>,
}

impl Cluster {
    pub fn pod(&self, key: &PodKey) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.namespace == key.namespace && p.name == key.name)
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.name == name)
    }
}
