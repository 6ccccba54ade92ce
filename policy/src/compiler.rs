//! The compiler: cluster state in, one ingress and one egress ACL per local pod out, equal ACLs
//! shared, and a change costing what it touches rather than what the cluster holds.
//!
//! The state is layered so that each layer is patched by delta:
//! - `world`: pods and namespaces, indexed by label value and named port name;
//! - `selectors`: each distinct peer selector of the policies in force, with the pods it
//!   selects; a pod's label change re-checks only the selectors that read a changed key;
//! - `sources`: each distinct (peers, ports) definition of a policy rule, with the rules it
//!   allows; a pod joining or leaving a selector patches only that pod's contribution, and a
//!   new content gets a new [`RuleSet`];
//! - per local pod, which sources its ACLs are made of (one per selecting policy's rule, ingress
//!   named ports resolved against the pod) and the interned ACLs, which hold the sources' rule
//!   sets by `Arc`. A source's new content re-keys only the ACLs of its users, in O(parts).
//!
//! So one pod's label change costs the selectors it flips, the sources those feed and the local
//! pods using them; no scan of all pods, no copying of rules that stay.

mod selectors;
mod sources;
mod world;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use self::selectors::{Scope, SelectorDef, SelectorId, Selectors};
use self::sources::{NamedPortDef, PeerDef, SourceDef, SourceId, Sources};
use self::world::World;
use crate::acl::{Acl, AclId, AclPart, AclTable, PortRange, RuleOrigin, RuleSet, RuleSpec};
use crate::check::{CheckedPeer, CheckedPolicy, CheckedPort, NamespaceScope};
use crate::model::{
    Cluster, Direction, Namespace, NetworkPolicy, Pod, PodKey, PolicyKey, Protocol,
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

/// A policy as the compiler keeps it: checked, with its peers registered as selectors.
#[derive(Debug)]
struct PolicyEntry {
    checked: CheckedPolicy,
    /// Per ingress rule: its peers (`None`: every peer). Ports wait for the selected pod.
    ingress_peers: Vec<Option<Vec<PeerDef>>>,
    /// Per egress rule: its source, or `None` when it allows nothing.
    egress: Vec<Option<SourceDef>>,
    /// The selectors acquired for the peers, released with the policy.
    held: Vec<SelectorId>,
}

impl PolicyEntry {
    fn new(checked: CheckedPolicy, world: &World, selectors: &mut Selectors) -> Self {
        let mut held = Vec::new();
        let ns = checked.key.namespace.clone();
        let mut register = |peers: &Option<Vec<CheckedPeer>>| {
            register_peers(&ns, peers, world, selectors, &mut held)
        };
        let ingress_peers = checked.ingress.iter().map(|r| register(&r.peers)).collect();
        let egress = checked
            .egress
            .iter()
            .map(|r| egress_source(register(&r.peers), &r.ports))
            .collect();
        Self {
            checked,
            ingress_peers,
            egress,
            held,
        }
    }

    fn selects(&self, pod: &Pod) -> bool {
        pod.namespace == self.checked.key.namespace
            && self
                .checked
                .selector
                .as_ref()
                .is_none_or(|s| selector_matches(s, &pod.labels))
    }

    fn origin(&self, direction: Direction, rule: usize) -> RuleOrigin {
        RuleOrigin::Policy {
            policy: Arc::clone(&self.checked.key),
            direction,
            rule: u32::try_from(rule).unwrap_or(u32::MAX),
        }
    }

    fn release(self, selectors: &mut Selectors) {
        for id in self.held {
            selectors.release(id);
        }
    }
}

/// A rule's peers as registered selectors and blocks; `None` (every peer) stays `None`, and
/// invalid peers, which match nothing, are left out.
fn register_peers(
    policy_namespace: &str,
    peers: &Option<Vec<CheckedPeer>>,
    world: &World,
    selectors: &mut Selectors,
    held: &mut Vec<SelectorId>,
) -> Option<Vec<PeerDef>> {
    let peers = peers.as_ref()?;
    let mut out = Vec::with_capacity(peers.len());
    for peer in peers {
        match peer {
            CheckedPeer::Pods { namespaces, pods } => {
                let scope = match namespaces {
                    NamespaceScope::Same => Scope::Namespace(policy_namespace.to_string()),
                    NamespaceScope::Matching(sel) => Scope::Matching(sel.clone()),
                };
                let id = selectors.acquire(SelectorDef::new(scope, pods.clone()), world);
                held.push(id);
                out.push(PeerDef::Pods(id));
            }
            CheckedPeer::Block(parts) => out.push(PeerDef::Block(parts.clone())),
            CheckedPeer::Nothing => {}
        }
    }
    out.sort();
    out.dedup();
    Some(out)
}

/// An egress rule's source: the ports apply to every selected pod alike (named ones resolve
/// against the destination), so the definition is the policy's. `None` if nothing is allowed.
fn egress_source(
    peers: Option<Vec<PeerDef>>,
    ports: &Option<Vec<CheckedPort>>,
) -> Option<SourceDef> {
    if peers.as_ref().is_some_and(Vec::is_empty) {
        return None;
    }
    let (mut numbers, mut named) = (Vec::new(), Vec::new());
    match ports {
        None => numbers.push((None, PortRange::ALL)),
        Some(list) => {
            for port in list {
                match port {
                    CheckedPort::Numbers { protocol, ports } => {
                        numbers.push((Some(*protocol), *ports))
                    }
                    CheckedPort::Named {
                        protocol,
                        number,
                        name,
                    } => named.push(NamedPortDef {
                        protocol: protocol.clone(),
                        number: *number,
                        name: name.clone(),
                    }),
                    CheckedPort::Nothing => {}
                }
            }
        }
    }
    numbers.sort();
    numbers.dedup();
    named.sort();
    named.dedup();
    (!numbers.is_empty() || !named.is_empty()).then_some(SourceDef {
        peers,
        ports: numbers,
        named,
    })
}

/// An ingress rule's ports for the selected pod `pod`: named ports resolve against its own
/// container ports, so pods with different ones get different sources.
fn ingress_ports(ports: &Option<Vec<CheckedPort>>, pod: &Pod) -> Vec<(Option<u8>, PortRange)> {
    let Some(list) = ports else {
        return vec![(None, PortRange::ALL)];
    };
    let mut out = Vec::new();
    for port in list {
        match port {
            CheckedPort::Numbers { protocol, ports } => out.push((Some(*protocol), *ports)),
            CheckedPort::Named {
                protocol,
                number,
                name,
            } => out.extend(
                named_port_numbers(pod, protocol, name)
                    .map(|n| (Some(*number), PortRange::single(n))),
            ),
            CheckedPort::Nothing => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The always-allowed rules for this node's addresses.
fn node_rules(node_ips: &[IpAddr]) -> Vec<RuleSpec> {
    let mut rules: Vec<RuleSpec> = node_ips
        .iter()
        .map(|ip| RuleSpec {
            peer: IpNet::from(*ip),
            protocol: None,
            ports: PortRange::ALL,
        })
        .collect();
    rules.sort();
    rules.dedup();
    rules
}

/// The sources one local pod's ACLs are made of, per origin; `None`: not isolated.
#[derive(Debug, Default)]
struct LocalPod {
    ingress: Option<Vec<(RuleOrigin, SourceId)>>,
    egress: Option<Vec<(RuleOrigin, SourceId)>>,
}

impl LocalPod {
    fn sources(&self) -> impl Iterator<Item = SourceId> + '_ {
        self.ingress
            .iter()
            .chain(&self.egress)
            .flatten()
            .map(|(_, id)| *id)
    }
}

/// Holds cluster state and the compiled ACLs, and keeps them current change by change.
#[derive(Debug)]
pub struct PolicyCompiler {
    world: World,
    selectors: Selectors,
    sources: Sources,
    policies: BTreeMap<PolicyKey, PolicyEntry>,
    /// This node's addresses as the first part of every isolating ACL.
    node_rules: Arc<RuleSet>,
    local: BTreeMap<PodKey, LocalPod>,
    acls: AclTable,
    assigned: BTreeMap<PodKey, PodAcls>,
}

impl Default for PolicyCompiler {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl PolicyCompiler {
    /// An empty compiler for a node with addresses `node_ips`.
    pub fn new(node_ips: Vec<IpAddr>) -> Self {
        let node_rules = Arc::new(RuleSet::new(node_rules(&node_ips)));
        Self {
            world: World::new(node_ips),
            selectors: Selectors::default(),
            sources: Sources::default(),
            policies: BTreeMap::new(),
            node_rules,
            local: BTreeMap::new(),
            acls: AclTable::default(),
            assigned: BTreeMap::new(),
        }
    }

    /// Compiles a whole cluster at once.
    pub fn from_cluster(cluster: &Cluster) -> Self {
        let mut c = Self::new(cluster.node_ips.clone());
        for ns in &cluster.namespaces {
            c.world.set_namespace(&ns.name, Some(ns.clone()));
        }
        for pod in &cluster.pods {
            c.world.know_namespace(&pod.namespace);
            c.world.insert_pod(pod.clone());
        }
        for policy in &cluster.policies {
            let entry = PolicyEntry::new(CheckedPolicy::new(policy), &c.world, &mut c.selectors);
            if let Some(old) = c.policies.insert(policy.key(), entry) {
                old.release(&mut c.selectors);
            }
        }
        let local: BTreeSet<PodKey> = c
            .world
            .pods
            .iter()
            .filter(|(_, p)| p.node_local)
            .map(|(k, _)| k.clone())
            .collect();
        c.finish(local, Vec::new());
        c
    }

    /// Replaces this node's addresses (every isolated ACL carries them).
    pub fn set_node_ips(&mut self, node_ips: Vec<IpAddr>) -> ChangeSet {
        if node_ips == self.world.node_ips {
            return ChangeSet::default();
        }
        self.node_rules = Arc::new(RuleSet::new(node_rules(&node_ips)));
        self.world.node_ips = node_ips;
        let all: BTreeSet<PodKey> = self.local.keys().cloned().collect();
        self.rekey_all(all)
    }

    /// Adds or replaces a namespace.
    pub fn upsert_namespace(&mut self, namespace: Namespace) -> ChangeSet {
        let name = namespace.name.clone();
        self.set_namespace(&name, Some(namespace))
    }

    /// Removes a namespace (its pods stay until they are removed themselves).
    pub fn remove_namespace(&mut self, name: &str) -> ChangeSet {
        self.set_namespace(name, None)
    }

    fn set_namespace(&mut self, name: &str, namespace: Option<Namespace>) -> ChangeSet {
        let before = self.world.namespace_labels(name).cloned();
        let after = self.world.set_namespace(name, namespace).cloned();
        if before == after {
            return ChangeSet::default();
        }
        let moved = self
            .selectors
            .namespace_changed(name, after.as_ref(), &self.world);
        for (key, m) in &moved {
            if let Some(pod) = self.world.pods.get(key) {
                self.sources.pod_changed(
                    Some(pod),
                    Some(pod),
                    &m.before,
                    &m.after,
                    false,
                    &self.selectors,
                );
            }
        }
        for (key, m) in &moved {
            self.selectors.apply(key, m);
        }
        let changed = self.sources.commit();
        self.finish(BTreeSet::new(), changed)
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
        labels: crate::model::Labels,
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

    /// Takes one pod's change in: the selectors it joins or leaves, the sources they (or its
    /// new addresses and named ports) feed, its own ACLs if it is local and what they depend
    /// on changed, and the ACLs of the local pods whose sources changed.
    fn pod_changed(&mut self, key: PodKey, new: Option<Pod>) -> ChangeSet {
        if self.world.pods.get(&key) == new.as_ref() {
            return ChangeSet::default();
        }
        if let Some(labels) = new
            .as_ref()
            .and_then(|p| self.world.know_namespace(&p.namespace))
            .cloned()
        {
            // A namespace seen for the first time: no pods in it yet, so nothing moves.
            let moved =
                self.selectors
                    .namespace_changed(&key.namespace, Some(&labels), &self.world);
            debug_assert!(moved.is_empty());
        }
        let old = self.world.remove_pod(&key);
        let m = self.selectors.memberships(&key, old.as_ref(), new.as_ref());
        let (refresh, data_changed) = match (&old, &new) {
            (Some(o), Some(n)) => (
                o.node_local != n.node_local
                    || (n.node_local && (o.labels != n.labels || o.named_ports != n.named_ports)),
                o.ips != n.ips || o.named_ports != n.named_ports,
            ),
            (None, Some(p)) | (Some(p), None) => (p.node_local, true),
            (None, None) => (false, false),
        };
        self.sources.pod_changed(
            old.as_ref(),
            new.as_ref(),
            &m.before,
            &m.after,
            data_changed,
            &self.selectors,
        );
        self.selectors.apply(&key, &m);
        match new {
            Some(pod) => {
                self.world.insert_pod(pod);
            }
            None => {
                if self.world.forget_namespace_if_empty(&key.namespace) {
                    let moved = self
                        .selectors
                        .namespace_changed(&key.namespace, None, &self.world);
                    debug_assert!(moved.is_empty());
                }
            }
        }
        let changed = self.sources.commit();
        let refresh = if refresh {
            BTreeSet::from([key])
        } else {
            BTreeSet::new()
        };
        self.finish(refresh, changed)
    }

    /// Adds or replaces a policy.
    pub fn upsert_policy(&mut self, policy: NetworkPolicy) -> ChangeSet {
        let key = policy.key();
        let entry = PolicyEntry::new(
            CheckedPolicy::new(&policy),
            &self.world,
            &mut self.selectors,
        );
        let mut pods = self.selected_local(&key);
        let old = self.policies.insert(key.clone(), entry);
        pods.extend(self.selected_local(&key));
        let changes = self.finish(pods, Vec::new());
        if let Some(old) = old {
            old.release(&mut self.selectors);
        }
        changes
    }

    /// Removes a policy.
    pub fn remove_policy(&mut self, key: &PolicyKey) -> ChangeSet {
        let pods = self.selected_local(key);
        let old = self.policies.remove(key);
        let changes = self.finish(pods, Vec::new());
        if let Some(old) = old {
            old.release(&mut self.selectors);
        }
        changes
    }

    /// Local pods `key` selects now.
    fn selected_local(&self, key: &PolicyKey) -> BTreeSet<PodKey> {
        let Some(entry) = self.policies.get(key) else {
            return BTreeSet::new();
        };
        let start = PodKey::new(key.namespace.clone(), String::new());
        self.local
            .range(start..)
            .take_while(|(k, _)| k.namespace == key.namespace)
            .filter(|(k, _)| self.world.pods.get(*k).is_some_and(|p| entry.selects(p)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Ends an update: works out again which sources the pods in `refresh` use (those still
    /// local; the others lose their ACLs), then re-keys their ACLs and those of every user of
    /// the sources in `changed`.
    fn finish(&mut self, refresh: BTreeSet<PodKey>, changed: Vec<SourceId>) -> ChangeSet {
        for key in &refresh {
            self.refresh(key);
        }
        let mut pods = refresh;
        for id in changed {
            pods.extend(self.sources.users(id).cloned());
        }
        self.rekey_all(pods)
    }

    fn rekey_all(&mut self, pods: BTreeSet<PodKey>) -> ChangeSet {
        let mut changes = ChangeSet::default();
        for key in pods {
            let (old, new) = self.rekey(&key);
            if new.is_some() {
                changes.recompiled.push(key.clone());
            }
            if old != new {
                changes.changed.push(key);
            }
        }
        changes
    }

    /// Works out the sources of local pod `key` from the policies selecting it now.
    fn refresh(&mut self, key: &PodKey) {
        let parts = match self.world.pods.get(key).filter(|p| p.node_local) {
            Some(pod) => Some(local_parts(
                pod,
                &self.policies,
                &self.world,
                &mut self.sources,
                &mut self.selectors,
            )),
            None => None,
        };
        let old = match parts {
            Some(parts) => self.local.insert(key.clone(), parts),
            None => self.local.remove(key),
        };
        if let Some(old) = old {
            for id in old.sources() {
                self.sources.release(id, key, &mut self.selectors);
            }
        }
    }

    /// Builds and interns the ACLs of `key` from its sources' current rule sets; returns the
    /// ids before and after.
    fn rekey(&mut self, key: &PodKey) -> (Option<PodAcls>, Option<PodAcls>) {
        let new = self.local.get(key).map(|local| {
            let ingress = acl_of(
                &local.ingress,
                Direction::Ingress,
                &self.node_rules,
                &self.sources,
            );
            let egress = acl_of(
                &local.egress,
                Direction::Egress,
                &self.node_rules,
                &self.sources,
            );
            PodAcls {
                ingress: self.acls.intern(ingress),
                egress: self.acls.intern(egress),
            }
        });
        let old = match new {
            Some(acls) => self.assigned.insert(key.clone(), acls),
            None => self.assigned.remove(key),
        };
        if let Some(old) = old {
            self.acls.release(old.ingress);
            self.acls.release(old.egress);
        }
        (old, new)
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

    /// Checks every index and everything kept by delta (selector members, source rules and
    /// counts, the local pods and their ACLs) against a recomputation from the pods and
    /// namespaces held. Slow; for the tests, which call it after every change.
    #[doc(hidden)]
    pub fn check_indexes(&self) -> Result<(), String> {
        self.selectors.check(&self.world)?;
        self.sources.check(&self.world, &self.selectors)?;
        let local: BTreeSet<&PodKey> = self
            .world
            .pods
            .iter()
            .filter(|(_, p)| p.node_local)
            .map(|(k, _)| k)
            .collect();
        if local != self.local.keys().collect() || local != self.assigned.keys().collect() {
            return Err("local pods and their ACLs disagree".into());
        }
        for (key, parts) in &self.local {
            let assigned = self.assigned.get(key).copied();
            for (parts, direction, id) in [
                (
                    &parts.ingress,
                    Direction::Ingress,
                    assigned.map(|a| a.ingress),
                ),
                (&parts.egress, Direction::Egress, assigned.map(|a| a.egress)),
            ] {
                let now = acl_of(parts, direction, &self.node_rules, &self.sources);
                let held = id.and_then(|id| self.acls.get(id));
                if held.map(|acl| acl.key()) != Some(now.key()) {
                    return Err(format!(
                        "{key}: {direction} ACL not re-keyed to its sources"
                    ));
                }
            }
        }
        let used: usize = self
            .assigned
            .values()
            .flat_map(|a| [a.ingress, a.egress])
            .collect::<BTreeSet<_>>()
            .len();
        if used != self.acls.len() {
            return Err(format!("{} ACLs held, {used} in use", self.acls.len()));
        }
        Ok(())
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

/// The sources of local pod `pod`'s ACLs: for each policy of its namespace that selects it, in
/// key order, one per rule of each direction the policy isolates (so parts come out sorted by
/// origin). Acquires each source for `pod`.
fn local_parts(
    pod: &Pod,
    policies: &BTreeMap<PolicyKey, PolicyEntry>,
    world: &World,
    sources: &mut Sources,
    selectors: &mut Selectors,
) -> LocalPod {
    let key = pod.key();
    let mut local = LocalPod::default();
    let start = PolicyKey::new(pod.namespace.clone(), String::new());
    let in_namespace = policies
        .range(start..)
        .take_while(|(k, _)| k.namespace == pod.namespace);
    for (_, entry) in in_namespace {
        if !entry.selects(pod) {
            continue;
        }
        if entry.checked.isolates_ingress {
            let parts = local.ingress.get_or_insert_with(Vec::new);
            let rules = entry.checked.ingress.iter().zip(&entry.ingress_peers);
            for (i, (rule, peers)) in rules.enumerate() {
                if peers.as_ref().is_some_and(Vec::is_empty) {
                    continue;
                }
                let ports = ingress_ports(&rule.ports, pod);
                if ports.is_empty() {
                    continue;
                }
                let def = SourceDef {
                    peers: peers.clone(),
                    ports,
                    named: Vec::new(),
                };
                let id = sources.acquire(&def, &key, world, selectors);
                parts.push((entry.origin(Direction::Ingress, i), id));
            }
        }
        if entry.checked.isolates_egress {
            let parts = local.egress.get_or_insert_with(Vec::new);
            for (i, def) in entry.egress.iter().enumerate() {
                if let Some(def) = def {
                    let id = sources.acquire(def, &key, world, selectors);
                    parts.push((entry.origin(Direction::Egress, i), id));
                }
            }
        }
    }
    local
}

/// One direction's ACL from its sources: open when not isolated, else the node's rules and
/// each source's current rules, origins that allow nothing left out.
fn acl_of(
    parts: &Option<Vec<(RuleOrigin, SourceId)>>,
    direction: Direction,
    node_rules: &Arc<RuleSet>,
    sources: &Sources,
) -> Acl {
    let Some(parts) = parts else {
        return Acl::open(direction);
    };
    let node = (!node_rules.is_empty()).then(|| AclPart {
        origin: RuleOrigin::Node,
        rules: Arc::clone(node_rules),
    });
    let policy = parts.iter().filter_map(|(origin, id)| {
        let rules = sources.rules(*id).filter(|r| !r.is_empty())?;
        Some(AclPart {
            origin: origin.clone(),
            rules: Arc::clone(rules),
        })
    });
    Acl::isolated(direction, node.into_iter().chain(policy).collect())
}
