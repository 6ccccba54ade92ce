//! The compiler: cluster state in, one ingress and one egress ACL per local pod out, equal ACLs
//! shared, recompiling only the pods a change can touch.
//!
//! Work is split by what it depends on:
//! - per policy ([`ResolvedPolicy`]), recomputed when the policy or a pod/namespace its peers
//!   can match changes: the peer prefixes of every rule, and egress rules fully expanded (their
//!   named ports resolve against the *destination* pods, which the peers already name);
//! - per local pod, recomputed when a policy selecting it is re-resolved or the pod itself
//!   changes: the union of the rules of the policies that select it, with ingress named ports
//!   resolved against the pod's own container ports.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::acl::{Acl, AclId, AclRule, AclTable, DefaultAction, PortRange, RuleOrigin};
use crate::check::{CheckedPeer, CheckedPolicy, CheckedPort, CheckedRule, NamespaceScope};
use crate::model::{
    Cluster, Direction, Labels, Namespace, NetworkPolicy, Pod, PodKey, PolicyKey, Protocol,
    NAMESPACE_NAME_LABEL,
};
use crate::validate::{selector_matches, PolicyError};

/// Error from an incremental update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("unknown pod {0}")]
    UnknownPod(PodKey),
}

/// The two ACLs of one local pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAcls {
    pub ingress: AclId,
    pub egress: AclId,
}

/// What an update did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Local pods whose ACLs were rebuilt.
    pub recompiled: Vec<PodKey>,
    /// Local pods whose ACL ids changed, appeared or went away: what the dataplane must reload.
    pub changed: Vec<PodKey>,
}

/// Pods and namespaces, as peers are matched against them.
#[derive(Debug, Default)]
struct World {
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<PodKey, Pod>,
    node_ips: Vec<IpAddr>,
}

impl World {
    fn namespace_labels(&self, name: &str) -> Labels {
        match self.namespaces.get(name) {
            Some(ns) => ns.selector_labels(),
            // A namespace we have not seen yet still has its name label.
            None => Labels::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())]),
        }
    }

    fn peer_matches_pod(&self, policy_ns: &str, peer: &CheckedPeer, pod: &Pod) -> bool {
        match peer {
            CheckedPeer::Pods { namespaces, pods } => {
                let ns_ok = match namespaces {
                    NamespaceScope::Same => pod.namespace == policy_ns,
                    NamespaceScope::Matching(sel) => {
                        selector_matches(sel, &self.namespace_labels(&pod.namespace))
                    }
                };
                ns_ok
                    && pods
                        .as_ref()
                        .is_none_or(|s| selector_matches(s, &pod.labels))
            }
            CheckedPeer::Block(_) | CheckedPeer::Nothing => false,
        }
    }

    /// Prefixes a rule's peer list covers, pods expanded to their addresses.
    fn peer_prefixes(&self, policy_ns: &str, peers: &Option<Vec<CheckedPeer>>) -> Vec<IpNet> {
        let Some(peers) = peers else {
            return vec![IpNet::V4(Default::default()), IpNet::V6(Default::default())];
        };
        let mut out = Vec::new();
        for peer in peers {
            match peer {
                CheckedPeer::Pods { .. } => {
                    for pod in self.pods.values() {
                        if self.peer_matches_pod(policy_ns, peer, pod) {
                            out.extend(pod.ips.iter().map(|ip| IpNet::from(*ip)));
                        }
                    }
                }
                CheckedPeer::Block(parts) => out.extend(parts.iter().copied()),
                CheckedPeer::Nothing => {}
            }
        }
        out
    }

    /// Destination addresses and port numbers an egress named port reaches: every address of a
    /// pod covered by the peers whose container port `name`/`protocol` exists. Addresses that
    /// belong to no pod have no named ports, so an ipBlock reaches only the pods inside it.
    fn named_destinations(
        &self,
        policy_ns: &str,
        peers: &Option<Vec<CheckedPeer>>,
        protocol: &Protocol,
        name: &str,
    ) -> Vec<(IpAddr, u16)> {
        let mut out = Vec::new();
        for pod in self.pods.values() {
            let numbers: Vec<u16> = named_port_numbers(pod, protocol, name).collect();
            if numbers.is_empty() {
                continue;
            }
            for ip in &pod.ips {
                let covered = match peers {
                    None => true,
                    Some(list) => list.iter().any(|peer| match peer {
                        CheckedPeer::Block(parts) => parts.iter().any(|p| p.contains(ip)),
                        _ => self.peer_matches_pod(policy_ns, peer, pod),
                    }),
                };
                if covered {
                    out.extend(numbers.iter().map(|n| (*ip, *n)));
                }
            }
        }
        out
    }
}

fn named_port_numbers<'a>(
    pod: &'a Pod,
    protocol: &'a Protocol,
    name: &'a str,
) -> impl Iterator<Item = u16> + 'a {
    pod.named_ports
        .iter()
        .filter(move |np| np.name == name && &np.protocol == protocol)
        .map(|np| np.port)
}

/// An ingress rule with its peers resolved; ports stay symbolic until the selected pod is known.
#[derive(Debug, Clone)]
struct ResolvedIngressRule {
    origin: RuleOrigin,
    peers: Vec<IpNet>,
    ports: Option<Vec<CheckedPort>>,
}

#[derive(Debug, Clone, Default)]
struct ResolvedPolicy {
    ingress: Vec<ResolvedIngressRule>,
    /// Fully expanded: egress rules do not depend on the selected pod.
    egress: Vec<AclRule>,
}

impl ResolvedPolicy {
    fn new(world: &World, checked: &CheckedPolicy) -> Self {
        let ns = checked.key.namespace.as_str();
        let origin = |direction, i: usize| RuleOrigin::Policy {
            policy: Arc::clone(&checked.key),
            direction,
            rule: u32::try_from(i).unwrap_or(u32::MAX),
        };
        let ingress = checked
            .ingress
            .iter()
            .enumerate()
            .map(|(i, rule)| ResolvedIngressRule {
                origin: origin(Direction::Ingress, i),
                peers: world.peer_prefixes(ns, &rule.peers),
                ports: rule.ports.clone(),
            })
            .collect();
        let mut egress = Vec::new();
        for (i, rule) in checked.egress.iter().enumerate() {
            let origin = origin(Direction::Egress, i);
            let prefixes = world.peer_prefixes(ns, &rule.peers);
            match &rule.ports {
                None => push_cross(&mut egress, &origin, &prefixes, None, PortRange::ALL),
                Some(ports) => {
                    for port in ports {
                        match port {
                            CheckedPort::Numbers { protocol, ports } => {
                                push_cross(&mut egress, &origin, &prefixes, Some(*protocol), *ports)
                            }
                            CheckedPort::Named {
                                protocol,
                                number,
                                name,
                            } => {
                                for (ip, port) in
                                    world.named_destinations(ns, &rule.peers, protocol, name)
                                {
                                    egress.push(AclRule {
                                        origin: origin.clone(),
                                        peer: IpNet::from(ip),
                                        protocol: Some(*number),
                                        ports: PortRange::single(port),
                                    });
                                }
                            }
                            CheckedPort::Nothing => {}
                        }
                    }
                }
            }
        }
        Self { ingress, egress }
    }
}

fn push_cross(
    out: &mut Vec<AclRule>,
    origin: &RuleOrigin,
    prefixes: &[IpNet],
    protocol: Option<u8>,
    ports: PortRange,
) {
    out.extend(prefixes.iter().map(|peer| AclRule {
        origin: origin.clone(),
        peer: *peer,
        protocol,
        ports,
    }));
}

#[derive(Debug)]
struct PolicyEntry {
    checked: CheckedPolicy,
    resolved: ResolvedPolicy,
}

impl PolicyEntry {
    fn selects(&self, pod: &Pod) -> bool {
        pod.namespace == self.checked.key.namespace
            && self
                .checked
                .selector
                .as_ref()
                .is_none_or(|s| selector_matches(s, &pod.labels))
    }

    /// Whether the resolved rules can depend on `pod`: a selector peer matches it, or an egress
    /// rule with named ports might resolve them against it.
    fn depends_on_pod(&self, world: &World, pod: &Pod) -> bool {
        let ns = self.checked.key.namespace.as_str();
        let rules = self.checked.ingress.iter().chain(&self.checked.egress);
        let by_selector = rules.into_iter().any(|rule: &CheckedRule| {
            rule.peers
                .iter()
                .flatten()
                .any(|peer| world.peer_matches_pod(ns, peer, pod))
        });
        by_selector
            || self.checked.egress.iter().any(|rule| {
                rule.has_named_ports()
                    && !pod.named_ports.is_empty()
                    && rule
                        .peers
                        .as_ref()
                        .is_none_or(|ps| ps.iter().any(|p| matches!(p, CheckedPeer::Block(_))))
            })
    }

    /// Whether the resolved rules can depend on namespace labels `labels`.
    fn depends_on_namespace(&self, labels: &Labels) -> bool {
        self.checked
            .ingress
            .iter()
            .chain(&self.checked.egress)
            .flat_map(|rule| rule.peers.iter().flatten())
            .any(|peer| match peer {
                CheckedPeer::Pods {
                    namespaces: NamespaceScope::Matching(sel),
                    ..
                } => selector_matches(sel, labels),
                _ => false,
            })
    }
}

/// Builds the ACLs of one pod from the policies of its namespace.
fn compile_pod(
    world: &World,
    policies: &BTreeMap<PolicyKey, PolicyEntry>,
    pod: &Pod,
) -> (Acl, Acl) {
    let mut ingress = Acl::open(Direction::Ingress);
    let mut egress = Acl::open(Direction::Egress);
    let start = PolicyKey::new(pod.namespace.clone(), String::new());
    let in_namespace = policies
        .range(start..)
        .take_while(|(k, _)| k.namespace == pod.namespace);
    for (_, entry) in in_namespace {
        if !entry.selects(pod) {
            continue;
        }
        if entry.checked.isolates_ingress {
            ingress.default = DefaultAction::Deny;
            for rule in &entry.resolved.ingress {
                expand_ingress(rule, pod, &mut ingress.rules);
            }
        }
        if entry.checked.isolates_egress {
            egress.default = DefaultAction::Deny;
            egress.rules.extend(entry.resolved.egress.iter().cloned());
        }
    }
    for acl in [&mut ingress, &mut egress] {
        if acl.default == DefaultAction::Deny {
            acl.rules.extend(world.node_ips.iter().map(|ip| AclRule {
                origin: RuleOrigin::Node,
                peer: IpNet::from(*ip),
                protocol: None,
                ports: PortRange::ALL,
            }));
            acl.rules.sort();
            acl.rules.dedup();
        }
    }
    (ingress, egress)
}

fn expand_ingress(rule: &ResolvedIngressRule, pod: &Pod, out: &mut Vec<AclRule>) {
    let Some(ports) = &rule.ports else {
        push_cross(out, &rule.origin, &rule.peers, None, PortRange::ALL);
        return;
    };
    for port in ports {
        match port {
            CheckedPort::Numbers { protocol, ports } => {
                push_cross(out, &rule.origin, &rule.peers, Some(*protocol), *ports)
            }
            CheckedPort::Named {
                protocol,
                number,
                name,
            } => {
                for n in named_port_numbers(pod, protocol, name) {
                    push_cross(
                        out,
                        &rule.origin,
                        &rule.peers,
                        Some(*number),
                        PortRange::single(n),
                    );
                }
            }
            CheckedPort::Nothing => {}
        }
    }
}

/// Holds cluster state and the compiled ACLs, and keeps them current change by change.
#[derive(Debug, Default)]
pub struct PolicyCompiler {
    world: World,
    policies: BTreeMap<PolicyKey, PolicyEntry>,
    acls: AclTable,
    assigned: BTreeMap<PodKey, PodAcls>,
}

impl PolicyCompiler {
    /// An empty compiler for a node with addresses `node_ips`.
    pub fn new(node_ips: Vec<IpAddr>) -> Self {
        Self {
            world: World {
                node_ips,
                ..World::default()
            },
            ..Self::default()
        }
    }

    /// Compiles a whole cluster at once.
    pub fn from_cluster(cluster: &Cluster) -> Self {
        let mut c = Self::new(cluster.node_ips.clone());
        for ns in &cluster.namespaces {
            c.world.namespaces.insert(ns.name.clone(), ns.clone());
        }
        for pod in &cluster.pods {
            c.world.pods.insert(pod.key(), pod.clone());
        }
        for policy in &cluster.policies {
            let checked = CheckedPolicy::new(policy);
            let resolved = ResolvedPolicy::new(&c.world, &checked);
            c.policies
                .insert(policy.key(), PolicyEntry { checked, resolved });
        }
        let all: BTreeSet<PodKey> = c.world.pods.keys().cloned().collect();
        c.recompile(all);
        c
    }

    /// Replaces this node's addresses (every isolated ACL carries them).
    pub fn set_node_ips(&mut self, node_ips: Vec<IpAddr>) -> ChangeSet {
        self.world.node_ips = node_ips;
        let all = self.world.pods.keys().cloned().collect();
        self.recompile(all)
    }

    /// Adds or replaces a namespace.
    pub fn upsert_namespace(&mut self, namespace: Namespace) -> ChangeSet {
        let name = namespace.name.clone();
        let old_labels = self.world.namespace_labels(&name);
        self.world.namespaces.insert(name.clone(), namespace);
        self.namespace_changed(&name, old_labels)
    }

    /// Removes a namespace (its pods stay until they are removed themselves).
    pub fn remove_namespace(&mut self, name: &str) -> ChangeSet {
        let old_labels = self.world.namespace_labels(name);
        self.world.namespaces.remove(name);
        self.namespace_changed(name, old_labels)
    }

    fn namespace_changed(&mut self, name: &str, old_labels: Labels) -> ChangeSet {
        let new_labels = self.world.namespace_labels(name);
        if old_labels == new_labels {
            return ChangeSet::default();
        }
        let affected: Vec<PolicyKey> = self
            .policies
            .iter()
            .filter(|(_, e)| {
                e.depends_on_namespace(&old_labels) || e.depends_on_namespace(&new_labels)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let pods = self.reresolve(&affected);
        self.recompile(pods)
    }

    /// Adds or replaces a pod.
    pub fn upsert_pod(&mut self, pod: Pod) -> ChangeSet {
        let key = pod.key();
        self.pod_changed(key, Some(pod))
    }

    /// Removes a pod.
    pub fn remove_pod(&mut self, key: &PodKey) -> ChangeSet {
        self.pod_changed(key.clone(), None)
    }

    /// Replaces a pod's labels.
    pub fn set_pod_labels(
        &mut self,
        key: &PodKey,
        labels: Labels,
    ) -> Result<ChangeSet, CompileError> {
        let mut pod = self
            .world
            .pods
            .get(key)
            .cloned()
            .ok_or_else(|| CompileError::UnknownPod(key.clone()))?;
        pod.labels = labels;
        Ok(self.pod_changed(key.clone(), Some(pod)))
    }

    fn pod_changed(&mut self, key: PodKey, new: Option<Pod>) -> ChangeSet {
        let old = self.world.pods.get(&key).cloned();
        if old == new {
            return ChangeSet::default();
        }
        let mut affected: BTreeSet<PolicyKey> = BTreeSet::new();
        if let Some(old) = &old {
            affected.extend(self.policies_depending_on(old));
        }
        match new {
            Some(pod) => {
                self.world.pods.insert(key.clone(), pod);
            }
            None => {
                self.world.pods.remove(&key);
            }
        }
        if let Some(new) = self.world.pods.get(&key) {
            affected.extend(self.policies_depending_on(new));
        }
        let affected: Vec<PolicyKey> = affected.into_iter().collect();
        let mut pods = self.reresolve(&affected);
        pods.insert(key);
        self.recompile(pods)
    }

    fn policies_depending_on(&self, pod: &Pod) -> Vec<PolicyKey> {
        self.policies
            .iter()
            .filter(|(_, e)| e.depends_on_pod(&self.world, pod))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Adds or replaces a policy.
    pub fn upsert_policy(&mut self, policy: NetworkPolicy) -> ChangeSet {
        let key = policy.key();
        let checked = CheckedPolicy::new(&policy);
        let resolved = ResolvedPolicy::new(&self.world, &checked);
        let mut pods = self.selected_pods(&key);
        self.policies
            .insert(key.clone(), PolicyEntry { checked, resolved });
        pods.extend(self.selected_pods(&key));
        self.recompile(pods)
    }

    /// Removes a policy.
    pub fn remove_policy(&mut self, key: &PolicyKey) -> ChangeSet {
        let pods = self.selected_pods(key);
        self.policies.remove(key);
        self.recompile(pods)
    }

    /// Re-resolves policies and returns the local pods they select.
    fn reresolve(&mut self, keys: &[PolicyKey]) -> BTreeSet<PodKey> {
        let mut pods = BTreeSet::new();
        for key in keys {
            if let Some(entry) = self.policies.get_mut(key) {
                entry.resolved = ResolvedPolicy::new(&self.world, &entry.checked);
            }
            pods.extend(self.selected_pods(key));
        }
        pods
    }

    /// Local pods `key` selects now.
    fn selected_pods(&self, key: &PolicyKey) -> BTreeSet<PodKey> {
        let Some(entry) = self.policies.get(key) else {
            return BTreeSet::new();
        };
        let start = PodKey::new(key.namespace.clone(), String::new());
        self.world
            .pods
            .range(start..)
            .take_while(|(k, _)| k.namespace == key.namespace)
            .filter(|(_, pod)| pod.node_local && entry.selects(pod))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Rebuilds the ACLs of `pods` (those that exist and are local; others lose their ACLs).
    fn recompile(&mut self, pods: BTreeSet<PodKey>) -> ChangeSet {
        let mut changes = ChangeSet::default();
        for key in pods {
            let new = match self.world.pods.get(&key) {
                Some(pod) if pod.node_local => {
                    let (ingress, egress) = compile_pod(&self.world, &self.policies, pod);
                    changes.recompiled.push(key.clone());
                    Some(PodAcls {
                        ingress: self.acls.intern(ingress),
                        egress: self.acls.intern(egress),
                    })
                }
                _ => None,
            };
            let old = match new {
                Some(acls) => self.assigned.insert(key.clone(), acls),
                None => self.assigned.remove(&key),
            };
            if let Some(old) = old {
                self.acls.release(old.ingress);
                self.acls.release(old.egress);
            }
            if old != new {
                changes.changed.push(key);
            }
        }
        changes
    }

    /// The ACLs of a local pod.
    pub fn pod_acls(&self, key: &PodKey) -> Option<PodAcls> {
        self.assigned.get(key).copied()
    }

    /// An ACL by id.
    pub fn acl(&self, id: AclId) -> Option<&Arc<Acl>> {
        self.acls.get(id)
    }

    /// How many policies are held.
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// How many distinct ACLs are in use.
    pub fn acl_count(&self) -> usize {
        self.acls.len()
    }

    /// Problems found in the current policies.
    pub fn errors(&self) -> Vec<PolicyError> {
        self.policies
            .values()
            .flat_map(|e| e.checked.errors.iter().cloned())
            .collect()
    }

    /// An immutable copy for the dataplane's next `Tables`.
    pub fn snapshot(&self) -> CompiledPolicies {
        let mut egress_by_source = HashMap::new();
        let mut ingress_by_destination = HashMap::new();
        let mut local_pods_by_ip = HashMap::new();
        for (key, acls) in &self.assigned {
            if let Some(pod) = self.world.pods.get(key) {
                for ip in &pod.ips {
                    egress_by_source.insert(*ip, acls.egress);
                    ingress_by_destination.insert(*ip, acls.ingress);
                    local_pods_by_ip.insert(*ip, key.clone());
                }
            }
        }
        CompiledPolicies {
            acls: self
                .acls
                .iter()
                .map(|(id, acl)| (id, Arc::clone(acl)))
                .collect(),
            pods: self.assigned.clone(),
            egress_by_source,
            ingress_by_destination,
            local_pods_by_ip,
            errors: self.errors(),
        }
    }
}

/// Compiles a cluster in one go.
pub fn compile(cluster: &Cluster) -> CompiledPolicies {
    PolicyCompiler::from_cluster(cluster).snapshot()
}

/// The compiled ACLs of one node, immutable.
///
/// Besides the per-pod view, it offers the two address-keyed views the dataplane uses. The
/// *global egress ACL* (the Contiv/VPP notion: one egress table for the node instead of one
/// per pod interface) is [`Self::egress_acl_for_source`]: the source address of a packet
/// leaving a local pod selects that pod's shared egress ACL. Written out flat it would be every
/// pod's egress rules with `src = pod address` added, each pod's list followed by a deny for
/// that source when it is isolated, and allow for sources that are no local pod; keeping it as
/// a two-level lookup keeps pods sharing ACLs. Ingress is keyed the same way, by destination.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicies {
    acls: BTreeMap<AclId, Arc<Acl>>,
    pods: BTreeMap<PodKey, PodAcls>,
    egress_by_source: HashMap<IpAddr, AclId>,
    ingress_by_destination: HashMap<IpAddr, AclId>,
    local_pods_by_ip: HashMap<IpAddr, PodKey>,
    errors: Vec<PolicyError>,
}

impl CompiledPolicies {
    pub fn acl(&self, id: AclId) -> Option<&Arc<Acl>> {
        self.acls.get(&id)
    }

    /// Every distinct ACL, by id.
    pub fn acls(&self) -> impl Iterator<Item = (AclId, &Arc<Acl>)> {
        self.acls.iter().map(|(id, acl)| (*id, acl))
    }

    /// Every address of every local pod, with the pod.
    pub fn local_pod_ips(&self) -> impl Iterator<Item = (IpAddr, &PodKey)> {
        self.local_pods_by_ip.iter().map(|(ip, key)| (*ip, key))
    }

    /// Every local pod and its ACL ids.
    pub fn pods(&self) -> impl Iterator<Item = (&PodKey, PodAcls)> {
        self.pods.iter().map(|(k, a)| (k, *a))
    }

    pub fn pod_acls(&self, key: &PodKey) -> Option<PodAcls> {
        self.pods.get(key).copied()
    }

    /// A local pod's ACL for one direction.
    pub fn pod_acl(&self, key: &PodKey, direction: Direction) -> Option<&Arc<Acl>> {
        let acls = self.pods.get(key)?;
        self.acl(match direction {
            Direction::Ingress => acls.ingress,
            Direction::Egress => acls.egress,
        })
    }

    /// The global egress ACL: the egress ACL of the local pod that owns `source`.
    pub fn egress_acl_for_source(&self, source: IpAddr) -> Option<&Arc<Acl>> {
        self.egress_by_source
            .get(&source)
            .and_then(|id| self.acl(*id))
    }

    /// The ingress ACL of the local pod that owns `destination`.
    pub fn ingress_acl_for_destination(&self, destination: IpAddr) -> Option<&Arc<Acl>> {
        self.ingress_by_destination
            .get(&destination)
            .and_then(|id| self.acl(*id))
    }

    /// Problems found in the policies (each still enforced, closed side).
    pub fn errors(&self) -> &[PolicyError] {
        &self.errors
    }

    /// The verdict this node's dataplane gives the first packet of a flow: the source pod's
    /// egress ACL if it is local, then the destination pod's ingress ACL if it is local.
    /// A pod's traffic to itself never reaches the dataplane (the kernel loops it back inside
    /// the pod), so it is allowed.
    pub fn flow_allowed(
        &self,
        source: IpAddr,
        destination: IpAddr,
        protocol: u8,
        port: u16,
    ) -> bool {
        if let (Some(a), Some(b)) = (
            self.local_pods_by_ip.get(&source),
            self.local_pods_by_ip.get(&destination),
        ) {
            if a == b {
                return true;
            }
        }
        let egress_ok = self
            .egress_acl_for_source(source)
            .is_none_or(|acl| crate::acl::acl_allows(acl, destination, protocol, port));
        let ingress_ok = self
            .ingress_acl_for_destination(destination)
            .is_none_or(|acl| crate::acl::acl_allows(acl, source, protocol, port));
        egress_ok && ingress_ok
    }
}
