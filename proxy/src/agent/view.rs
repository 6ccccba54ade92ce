//! The control plane's view of the cluster, kept current one change at a time.
//!
//! A sync used to take the whole object store, reduce every Service and compile them all: the
//! same work for one endpoint change as for the first list, hundreds of milliseconds at ten
//! thousand Services. [`View`] instead takes the changed objects ([`Change`]), works out which
//! Services they touch (a Service object, or an EndpointSlice labelled with its name, before
//! or after the change), reduces only those ([`reduce::service`]) and patches them into a
//! [`ServiceCompiler`]. What it holds is always what a full reduce and compile of its store
//! would give (the tests check that).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use switchyard_lb::service::{CompileOptions, Service, ServiceCompiler, ServiceName};
use switchyard_policy::{PodKey, PolicyCompiler, PolicyKey};

use super::objects::{Change, Object, ObjectKey, ObjectKind, ObjectStore};
use super::reduce::{self, ReduceError};
use super::reduce_policy;

/// The objects, the Services they reduce to, and those compiled.
pub struct View {
    /// The objects as of the changes taken in so far.
    pub store: ObjectStore,
    node_name: String,
    proxy_name: Option<String>,
    /// The names of the EndpointSlices that name each Service (namespace, Service name) as
    /// theirs, whether or not the Service exists.
    slices_of: HashMap<ObjectKey, BTreeSet<String>>,
    /// The Services, reduced and compiled.
    compiler: ServiceCompiler,
    /// What reducing each Service (and its slices) found wrong.
    reduce_errors: BTreeMap<ObjectKey, Vec<ReduceError>>,
    /// This node's zone, which topology hints are read against.
    zone: Option<String>,
    /// NetworkPolicy, compiled incrementally: each Pod, Namespace and NetworkPolicy change
    /// goes in on its own and recompiles only the local pods it can affect.
    policy: PolicyCompiler,
    /// What reducing each Pod and NetworkPolicy found wrong.
    policy_errors: BTreeMap<(ObjectKind, ObjectKey), Vec<reduce_policy::ReduceError>>,
}

/// What a batch of changes touched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Services reduced again (whether or not they came out different).
    pub services: usize,
    /// Some NetworkPolicy, Pod, Namespace or this node's Node changed: policy needs compiling
    /// again.
    pub policy: bool,
    /// Some Node changed (its pod CIDRs, BGP annotations or addresses, for BGP).
    pub nodes: bool,
}

impl View {
    /// An empty view for the node `node_name`, as the proxy named `proxy_name`.
    pub fn new(node_name: &str, proxy_name: Option<&str>, options: CompileOptions) -> View {
        View {
            store: ObjectStore::default(),
            node_name: node_name.to_string(),
            proxy_name: proxy_name.map(str::to_string),
            slices_of: HashMap::new(),
            compiler: ServiceCompiler::new(options),
            reduce_errors: BTreeMap::new(),
            zone: None,
            policy: PolicyCompiler::new(Vec::new()),
            policy_errors: BTreeMap::new(),
        }
    }

    /// Sets this node's own addresses, whose traffic with local pods policy always allows.
    pub fn set_node_ips(&mut self, mut ips: Vec<std::net::IpAddr>) {
        ips.sort();
        ips.dedup();
        self.policy.set_node_ips(ips);
    }

    /// Takes in `changes` and brings the compiled Services up to date with them.
    pub fn apply(&mut self, changes: Vec<Change>) -> Touched {
        let mut touched = Touched::default();
        let mut own_node = false;
        let mut dirty: BTreeSet<ObjectKey> = BTreeSet::new();
        for change in changes {
            let kind = change.kind;
            let key = change.key.clone();
            let new_owner = owner_of(change.object.as_ref());
            let old = self.store.set(change);
            match kind {
                ObjectKind::Service => {
                    dirty.insert(key);
                }
                ObjectKind::EndpointSlice => {
                    let (namespace, slice) = key;
                    if let Some(owner) = owner_of(old.as_ref()) {
                        let service = (namespace.clone(), owner);
                        if let Some(names) = self.slices_of.get_mut(&service) {
                            names.remove(&slice);
                            if names.is_empty() {
                                self.slices_of.remove(&service);
                            }
                        }
                        dirty.insert(service);
                    }
                    if let Some(owner) = new_owner {
                        let service = (namespace, owner);
                        self.slices_of
                            .entry(service.clone())
                            .or_default()
                            .insert(slice);
                        dirty.insert(service);
                    }
                }
                ObjectKind::NetworkPolicy | ObjectKind::Pod | ObjectKind::Namespace => {
                    touched.policy = true;
                    self.policy_change(kind, key);
                }
                ObjectKind::Node => {
                    touched.nodes = true;
                    // With BGP's mesh every Node is watched; the others matter to BGP only.
                    if key.1 == self.node_name {
                        own_node = true;
                        touched.policy = true;
                    }
                }
            }
        }
        if own_node {
            // A new zone changes which endpoints every Service's hints leave in.
            let zone = reduce::node_zone(&self.store, &self.node_name);
            if zone != self.zone {
                self.zone = zone;
                dirty.extend(self.store.services.keys().cloned());
            }
        }
        touched.services = dirty.len();
        for key in dirty {
            self.reduce(key);
        }
        touched
    }

    /// Reduces the Service under `key` again and compiles the result in (or takes it out).
    fn reduce(&mut self, key: ObjectKey) {
        let mut errors = Vec::new();
        let service = reduce::service(
            &self.store,
            &key,
            self.slices_of.get(&key).into_iter().flatten(),
            reduce::Here {
                node_name: &self.node_name,
                zone: self.zone.as_deref(),
            },
            self.proxy_name.as_deref(),
            &mut errors,
        );
        for e in &errors {
            tracing::warn!(error = %e, "object skipped");
        }
        let name = ServiceName {
            namespace: key.0.clone(),
            name: key.1.clone(),
        };
        if errors.is_empty() {
            self.reduce_errors.remove(&key);
        } else {
            self.reduce_errors.insert(key, errors);
        }
        match service {
            Some(service) => {
                self.compiler.upsert(Arc::new(service));
            }
            None => {
                self.compiler.remove(&name);
            }
        }
    }

    /// Takes the Pod, Namespace or NetworkPolicy under `key` (as the store now has it) into
    /// the policy compiler.
    fn policy_change(&mut self, kind: ObjectKind, key: ObjectKey) {
        let mut errors = Vec::new();
        let (namespace, name) = (&key.0, &key.1);
        match kind {
            ObjectKind::Pod => {
                let pod = self.store.pods.get(&key).and_then(|p| {
                    reduce_policy::one_pod(namespace, name, p, &self.node_name, &mut errors)
                });
                match pod {
                    Some(pod) => self.policy.upsert_pod(pod),
                    None => self.policy.remove_pod(&PodKey::new(namespace, name)),
                };
            }
            ObjectKind::Namespace => {
                match self.store.namespaces.get(&key) {
                    Some(ns) => self
                        .policy
                        .upsert_namespace(reduce_policy::namespace(name, ns)),
                    None => self.policy.remove_namespace(name),
                };
            }
            ObjectKind::NetworkPolicy => {
                match self.store.network_policies.get(&key) {
                    Some(np) => self.policy.upsert_policy(reduce_policy::one_policy(
                        namespace,
                        name,
                        np,
                        &mut errors,
                    )),
                    None => self.policy.remove_policy(&PolicyKey::new(namespace, name)),
                };
            }
            _ => {}
        }
        for e in &errors {
            tracing::warn!(error = %e, "object skipped for NetworkPolicy");
        }
        if errors.is_empty() {
            self.policy_errors.remove(&(kind, key));
        } else {
            self.policy_errors.insert((kind, key), errors);
        }
    }

    /// The NetworkPolicy compiler, up to date with the objects.
    pub fn policy(&self) -> &PolicyCompiler {
        &self.policy
    }

    /// What reducing Pods and NetworkPolicies found wrong, one line each.
    pub fn policy_problems(&self) -> impl Iterator<Item = &reduce_policy::ReduceError> {
        self.policy_errors.values().flatten()
    }

    /// The Services, in name order.
    pub fn services(&self) -> Arc<[Arc<Service>]> {
        self.compiler.services().cloned().collect()
    }

    /// The compiled Services.
    pub fn compiler(&self) -> &ServiceCompiler {
        &self.compiler
    }

    /// What reducing the objects found wrong, one line each, in Service order.
    pub fn reduce_problems(&self) -> impl Iterator<Item = &ReduceError> {
        self.reduce_errors.values().flatten()
    }
}

/// The Service an EndpointSlice (if `object` is one) names as its own.
fn owner_of(object: Option<&Object>) -> Option<String> {
    match object {
        Some(Object::EndpointSlice(slice)) => reduce::slice_owner(slice).map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
