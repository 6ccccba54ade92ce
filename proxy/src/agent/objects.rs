//! The object store: the Kubernetes API objects the agent knows about, as the API typed them.
//!
//! Both cluster sources feed it: the manifest directory ([`super::manifests`]) builds a whole
//! store per read, and the API watchers apply and delete objects one event at a time. The
//! reducers ([`super::reduce`]) read it and never look at events, so both sources give the same
//! result for the same set of objects.
//!
//! Every map is keyed by `(namespace, name)`. Cluster-scoped kinds (Node, Namespace) use the
//! empty namespace. A namespaced object without `metadata.namespace` is stored in
//! [`DEFAULT_NAMESPACE`], and its metadata says so, as `kubectl apply` would have made it.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The namespace of a namespaced object that does not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `(namespace, name)`; the namespace is empty for cluster-scoped kinds.
pub type ObjectKey = (String, String);

/// The kinds the store holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// networking.k8s.io/v1 NetworkPolicy.
    NetworkPolicy,
    /// core/v1 Node (cluster-scoped).
    Node,
    /// core/v1 Pod.
    Pod,
    /// core/v1 Namespace (cluster-scoped).
    Namespace,
}

impl ObjectKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ObjectKind; 6] = [
        ObjectKind::Service,
        ObjectKind::EndpointSlice,
        ObjectKind::NetworkPolicy,
        ObjectKind::Node,
        ObjectKind::Pod,
        ObjectKind::Namespace,
    ];

    /// The kind for a document's `apiVersion` and `kind`, if the store holds it.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Self> {
        ObjectKind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.kind() == kind)
    }

    /// The `apiVersion` objects of this kind are read in.
    pub const fn api_version(self) -> &'static str {
        match self {
            ObjectKind::Service | ObjectKind::Node | ObjectKind::Pod | ObjectKind::Namespace => {
                "v1"
            }
            ObjectKind::EndpointSlice => "discovery.k8s.io/v1",
            ObjectKind::NetworkPolicy => "networking.k8s.io/v1",
        }
    }

    /// The `kind` field.
    pub const fn kind(self) -> &'static str {
        match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::NetworkPolicy => "NetworkPolicy",
            ObjectKind::Node => "Node",
            ObjectKind::Pod => "Pod",
            ObjectKind::Namespace => "Namespace",
        }
    }

    /// True if objects of this kind live in a namespace.
    pub const fn is_namespaced(self) -> bool {
        !matches!(self, ObjectKind::Node | ObjectKind::Namespace)
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

/// One object of a kind the store holds.
///
/// Boxed: a Pod is many times the size of a Namespace.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// A Service.
    Service(Box<Service>),
    /// An EndpointSlice.
    EndpointSlice(Box<EndpointSlice>),
    /// A NetworkPolicy.
    NetworkPolicy(Box<NetworkPolicy>),
    /// A Node.
    Node(Box<Node>),
    /// A Pod.
    Pod(Box<Pod>),
    /// A Namespace.
    Namespace(Box<Namespace>),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Service(_) => ObjectKind::Service,
            Object::EndpointSlice(_) => ObjectKind::EndpointSlice,
            Object::NetworkPolicy(_) => ObjectKind::NetworkPolicy,
            Object::Node(_) => ObjectKind::Node,
            Object::Pod(_) => ObjectKind::Pod,
            Object::Namespace(_) => ObjectKind::Namespace,
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
        }
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Namespace(o) => &mut o.metadata,
        }
    }

    /// The key the store files the object under (see [`ObjectStore::apply`] for the namespace
    /// default).
    pub fn key(&self) -> Result<ObjectKey, StoreError> {
        object_key(self.kind(), self.metadata())
    }
}

/// The key of an object of `kind` with metadata `meta`.
pub fn object_key(kind: ObjectKind, meta: &ObjectMeta) -> Result<ObjectKey, StoreError> {
    let name = match meta.name.as_deref() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => return Err(StoreError::MissingName { kind }),
    };
    let namespace = if kind.is_namespaced() {
        match meta.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => ns.to_string(),
            _ => DEFAULT_NAMESPACE.to_string(),
        }
    } else {
        String::new()
    };
    Ok((namespace, name))
}

/// Why an object could not be stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// `metadata.name` is missing or empty.
    #[error("{kind} has no metadata.name")]
    MissingName {
        /// The object's kind.
        kind: ObjectKind,
    },
}
/// One object's change: what `key` of `kind` holds now, `None` once deleted.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The object's kind.
    pub kind: ObjectKind,
    /// Its key.
    pub key: ObjectKey,
    /// Its content now; `None` when it is gone.
    pub object: Option<Object>,
}

/// The keys whose values differ between two maps, by a merge of their sorted keys.
fn differing<V: PartialEq>(
    a: &BTreeMap<ObjectKey, V>,
    b: &BTreeMap<ObjectKey, V>,
) -> Vec<ObjectKey> {
    let mut out = Vec::new();
    let (mut a, mut b) = (a.iter().peekable(), b.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some((ka, _)), None) => {
                out.push((*ka).clone());
                a.next();
            }
            (None, Some((kb, _))) => {
                out.push((*kb).clone());
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.push((*ka).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push((*kb).clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if va != vb {
                        out.push((*ka).clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

/// All objects the agent knows about, by kind and `(namespace, name)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObjectStore {
    /// Services.
    pub services: BTreeMap<ObjectKey, Service>,
    /// EndpointSlices (discovery.k8s.io/v1).
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    /// NetworkPolicies.
    pub network_policies: BTreeMap<ObjectKey, NetworkPolicy>,
    /// Nodes (namespace "").
    pub nodes: BTreeMap<ObjectKey, Node>,
    /// Pods.
    pub pods: BTreeMap<ObjectKey, Pod>,
    /// Namespaces (namespace "").
    pub namespaces: BTreeMap<ObjectKey, Namespace>,
}

// The sources use `apply` and `delete`; the rest serves tests and tools, hence the allow.
#[allow(dead_code)]
impl ObjectStore {
    /// An empty store.
    pub fn new() -> Self {
        ObjectStore::default()
    }

    /// Adds `object`, or replaces the stored one of the same kind and key; returns the one it
    /// replaced. A namespaced object without a namespace gets [`DEFAULT_NAMESPACE`].
    pub fn apply(&mut self, mut object: Object) -> Result<Option<Object>, StoreError> {
        let key = object.key()?;
        if object.kind().is_namespaced() {
            object.metadata_mut().namespace = Some(key.0.clone());
        }
        Ok(match object {
            Object::Service(o) => self
                .services
                .insert(key, *o)
                .map(|o| Object::Service(Box::new(o))),
            Object::EndpointSlice(o) => self
                .endpoint_slices
                .insert(key, *o)
                .map(|o| Object::EndpointSlice(Box::new(o))),
            Object::NetworkPolicy(o) => self
                .network_policies
                .insert(key, *o)
                .map(|o| Object::NetworkPolicy(Box::new(o))),
            Object::Node(o) => self
                .nodes
                .insert(key, *o)
                .map(|o| Object::Node(Box::new(o))),
            Object::Pod(o) => self.pods.insert(key, *o).map(|o| Object::Pod(Box::new(o))),
            Object::Namespace(o) => self
                .namespaces
                .insert(key, *o)
                .map(|o| Object::Namespace(Box::new(o))),
        })
    }

    /// Removes the object of `kind` named `namespace`/`name` (the namespace is ignored for
    /// cluster-scoped kinds; an empty one means [`DEFAULT_NAMESPACE`] for namespaced kinds)
    /// and returns it.
    pub fn delete(&mut self, kind: ObjectKind, namespace: &str, name: &str) -> Option<Object> {
        let namespace = if !kind.is_namespaced() {
            ""
        } else if namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            namespace
        };
        let key = (namespace.to_string(), name.to_string());
        match kind {
            ObjectKind::Service => self
                .services
                .remove(&key)
                .map(|o| Object::Service(Box::new(o))),
            ObjectKind::EndpointSlice => self
                .endpoint_slices
                .remove(&key)
                .map(|o| Object::EndpointSlice(Box::new(o))),
            ObjectKind::NetworkPolicy => self
                .network_policies
                .remove(&key)
                .map(|o| Object::NetworkPolicy(Box::new(o))),
            ObjectKind::Node => self.nodes.remove(&key).map(|o| Object::Node(Box::new(o))),
            ObjectKind::Pod => self.pods.remove(&key).map(|o| Object::Pod(Box::new(o))),
            ObjectKind::Namespace => self
                .namespaces
                .remove(&key)
                .map(|o| Object::Namespace(Box::new(o))),
        }
    }

    /// Removes the stored object with `object`'s kind and key (what a watch DELETED event
    /// carries) and returns it.
    pub fn delete_object(&mut self, object: &Object) -> Result<Option<Object>, StoreError> {
        let (namespace, name) = object.key()?;
        Ok(self.delete(object.kind(), &namespace, &name))
    }

    /// True if an object of `kind` is stored under `namespace`/`name` (namespace as for
    /// [`ObjectStore::delete`]).
    pub fn contains(&self, kind: ObjectKind, namespace: &str, name: &str) -> bool {
        let namespace = if !kind.is_namespaced() {
            ""
        } else if namespace.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            namespace
        };
        let key = (namespace.to_string(), name.to_string());
        match kind {
            ObjectKind::Service => self.services.contains_key(&key),
            ObjectKind::EndpointSlice => self.endpoint_slices.contains_key(&key),
            ObjectKind::NetworkPolicy => self.network_policies.contains_key(&key),
            ObjectKind::Node => self.nodes.contains_key(&key),
            ObjectKind::Pod => self.pods.contains_key(&key),
            ObjectKind::Namespace => self.namespaces.contains_key(&key),
        }
    }
    /// True if the store holds exactly `object` (same kind, key and content).
    pub fn holds(&self, object: &Object) -> bool {
        let Ok(key) = object.key() else {
            return false;
        };
        match object {
            Object::Service(o) => self.services.get(&key) == Some(&**o),
            Object::EndpointSlice(o) => self.endpoint_slices.get(&key) == Some(&**o),
            Object::NetworkPolicy(o) => self.network_policies.get(&key) == Some(&**o),
            Object::Node(o) => self.nodes.get(&key) == Some(&**o),
            Object::Pod(o) => self.pods.get(&key) == Some(&**o),
            Object::Namespace(o) => self.namespaces.get(&key) == Some(&**o),
        }
    }

    /// A copy of the object of `kind` stored under `key`.
    pub fn get(&self, kind: ObjectKind, key: &ObjectKey) -> Option<Object> {
        match kind {
            ObjectKind::Service => self
                .services
                .get(key)
                .map(|o| Object::Service(Box::new(o.clone()))),
            ObjectKind::EndpointSlice => self
                .endpoint_slices
                .get(key)
                .map(|o| Object::EndpointSlice(Box::new(o.clone()))),
            ObjectKind::NetworkPolicy => self
                .network_policies
                .get(key)
                .map(|o| Object::NetworkPolicy(Box::new(o.clone()))),
            ObjectKind::Node => self
                .nodes
                .get(key)
                .map(|o| Object::Node(Box::new(o.clone()))),
            ObjectKind::Pod => self.pods.get(key).map(|o| Object::Pod(Box::new(o.clone()))),
            ObjectKind::Namespace => self
                .namespaces
                .get(key)
                .map(|o| Object::Namespace(Box::new(o.clone()))),
        }
    }

    /// Makes `change` (stores its object, or deletes the key) and returns the object the key
    /// held before.
    pub fn set(&mut self, change: Change) -> Option<Object> {
        let Change { kind, key, object } = change;
        match object {
            // The key came from a store, so the object has a name.
            Some(object) => self.apply(object).ok().flatten(),
            None => self.delete(kind, &key.0, &key.1),
        }
    }

    /// The keys of `kind` whose objects differ between `self` and `other` (present in one
    /// only, or different), in key order.
    pub fn changed_keys(&self, other: &ObjectStore, kind: ObjectKind) -> Vec<ObjectKey> {
        match kind {
            ObjectKind::Service => differing(&self.services, &other.services),
            ObjectKind::EndpointSlice => differing(&self.endpoint_slices, &other.endpoint_slices),
            ObjectKind::NetworkPolicy => differing(&self.network_policies, &other.network_policies),
            ObjectKind::Node => differing(&self.nodes, &other.nodes),
            ObjectKind::Pod => differing(&self.pods, &other.pods),
            ObjectKind::Namespace => differing(&self.namespaces, &other.namespaces),
        }
    }

    /// What turns `self` into `next`: one [`Change`] per object added, changed or deleted.
    pub fn diff(&self, next: &ObjectStore) -> Vec<Change> {
        let mut changes = Vec::new();
        for kind in ObjectKind::ALL {
            for key in self.changed_keys(next, kind) {
                let object = next.get(kind, &key);
                changes.push(Change { kind, key, object });
            }
        }
        changes
    }

    /// The number of objects of `kind`.
    pub fn count(&self, kind: ObjectKind) -> usize {
        match kind {
            ObjectKind::Service => self.services.len(),
            ObjectKind::EndpointSlice => self.endpoint_slices.len(),
            ObjectKind::NetworkPolicy => self.network_policies.len(),
            ObjectKind::Node => self.nodes.len(),
            ObjectKind::Pod => self.pods.len(),
            ObjectKind::Namespace => self.namespaces.len(),
        }
    }

    /// The number of objects of all kinds.
    pub fn len(&self) -> usize {
        ObjectKind::ALL.into_iter().map(|k| self.count(k)).sum()
    }

    /// True if the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(namespace: Option<&str>, name: &str) -> Object {
        Object::Service(Box::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: namespace.map(Into::into),
                ..ObjectMeta::default()
            },
            ..Service::default()
        }))
    }

    fn node(name: &str) -> Object {
        Object::Node(Box::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ignored".into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }))
    }

    #[test]
    fn apply_defaults_the_namespace_and_replaces() {
        let mut store = ObjectStore::new();
        assert_eq!(store.apply(service(None, "web")), Ok(None));
        let stored = &store.services[&("default".to_string(), "web".to_string())];
        assert_eq!(stored.metadata.namespace.as_deref(), Some("default"));
        let replaced = store.apply(service(Some("default"), "web"));
        assert!(matches!(replaced, Ok(Some(Object::Service(_)))));
        assert_eq!(store.len(), 1);
        assert!(store.contains(ObjectKind::Service, "", "web"));
    }

    #[test]
    fn cluster_scoped_kinds_have_no_namespace_in_their_key() {
        let mut store = ObjectStore::new();
        assert_eq!(store.apply(node("node-a")), Ok(None));
        assert!(store
            .nodes
            .contains_key(&(String::new(), "node-a".to_string())));
        assert!(store
            .delete(ObjectKind::Node, "whatever", "node-a")
            .is_some());
        assert!(store.is_empty());
    }

    #[test]
    fn nameless_objects_are_refused() {
        let mut store = ObjectStore::new();
        assert_eq!(
            store.apply(service(Some("default"), "")),
            Err(StoreError::MissingName {
                kind: ObjectKind::Service
            })
        );
        assert!(store.is_empty());
    }

    #[test]
    fn delete_object_removes_by_key() {
        let mut store = ObjectStore::new();
        assert_eq!(store.apply(service(Some("demo"), "web")), Ok(None));
        assert_eq!(store.delete(ObjectKind::Service, "default", "web"), None);
        let removed = store.delete_object(&service(Some("demo"), "web"));
        assert!(matches!(removed, Ok(Some(Object::Service(_)))));
        assert_eq!(store.count(ObjectKind::Service), 0);
    }

    #[test]
    fn kinds_round_trip_through_their_type_fields() {
        for kind in ObjectKind::ALL {
            assert_eq!(
                ObjectKind::from_type(kind.api_version(), kind.kind()),
                Some(kind)
            );
        }
        assert_eq!(ObjectKind::from_type("apps/v1", "Deployment"), None);
        assert_eq!(ObjectKind::from_type("v1", "EndpointSlice"), None);
    }

    #[test]
    fn a_diff_turns_one_store_into_the_other() {
        let mut old = ObjectStore::new();
        old.apply(service(None, "kept")).unwrap();
        old.apply(service(None, "gone")).unwrap();
        old.apply(service(Some("demo"), "changed")).unwrap();
        let mut new = ObjectStore::new();
        new.apply(service(None, "kept")).unwrap();
        new.apply(service(None, "added")).unwrap();
        let mut changed = service(Some("demo"), "changed");
        if let Object::Service(s) = &mut changed {
            s.metadata.resource_version = Some("2".into());
        }
        new.apply(changed).unwrap();

        let changes = old.diff(&new);
        let keys: Vec<&str> = changes.iter().map(|c| c.key.1.as_str()).collect();
        assert_eq!(keys, ["added", "gone", "changed"]);
        for change in changes {
            old.set(change);
        }
        assert_eq!(old, new);
        assert!(old.diff(&new).is_empty());
    }
}
