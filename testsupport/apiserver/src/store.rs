//! The object store: every object of every resource as JSON, one global resourceVersion, and a
//! bounded event history that watches replay from and that paged lists read snapshots through.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::resources::{guess_plural, split_api_version, Gvr, Registry, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;

/// Where an object lives inside one resource: namespace (empty when cluster scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace, empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    fn of(object: &Value) -> ObjectKey {
        ObjectKey {
            namespace: str_at(object, "/metadata/namespace").to_string(),
            name: str_at(object, "/metadata/name").to_string(),
        }
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Removed.
    Deleted,
}

/// One entry of the history.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// The resourceVersion this change produced.
    pub rv: u64,
    /// Which resource.
    pub gvr: Gvr,
    /// What happened.
    pub kind: EventKind,
    /// The object after the change (for a delete: its last state, stamped with `rv`).
    pub object: Arc<Value>,
    /// The object before the change (none for an add).
    pub prev: Option<Arc<Value>>,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The snapshot the page was read at.
    pub rv: u64,
    /// The matching objects, in key order.
    pub items: Vec<Arc<Value>>,
    /// Token for the next page, if there are more matching objects.
    pub continue_token: Option<String>,
    /// How many matching objects follow this page.
    pub remaining: usize,
}

/// The continue token: which snapshot, and the last key returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContinueToken {
    /// Snapshot resourceVersion.
    pub rv: u64,
    /// Last key served; the next page starts after it.
    pub after: ObjectKey,
}

impl ContinueToken {
    /// Encodes the token as the real server does: URL-safe base64 of a small JSON document.
    pub fn encode(&self) -> String {
        let doc = json!({
            "v": "meta.k8s.io/v1",
            "rv": self.rv,
            "start": format!("{}/{}\u{0}", self.after.namespace, self.after.name),
        });
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(doc.to_string())
    }

    /// Decodes a token; anything malformed is a 400.
    pub fn decode(token: &str) -> Result<ContinueToken, ApiError> {
        let bad = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim_end_matches('='))
            .map_err(|_| bad("illegal base64 data"))?;
        let doc: Value = serde_json::from_slice(&bytes).map_err(|_| bad("not JSON"))?;
        if doc["v"].as_str() != Some("meta.k8s.io/v1") {
            return Err(bad(
                "incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
            ));
        }
        let rv = doc["rv"].as_u64().ok_or_else(|| bad("missing rv"))?;
        let start = doc["start"].as_str().ok_or_else(|| bad("missing start"))?;
        let start = start.strip_suffix('\u{0}').unwrap_or(start);
        let (namespace, name) = start
            .split_once('/')
            .ok_or_else(|| bad("malformed start"))?;
        Ok(ContinueToken {
            rv,
            after: ObjectKey {
                namespace: namespace.to_string(),
                name: name.to_string(),
            },
        })
    }
}

/// The store. Wrapped in a mutex by the server; every method is quick and never blocks.
#[derive(Debug)]
pub struct Store {
    /// Known resource types.
    pub registry: Registry,
    rv: u64,
    objects: HashMap<Gvr, BTreeMap<ObjectKey, Arc<Value>>>,
    history: VecDeque<StoredEvent>,
    history_limit: usize,
    /// New watches and lists must start at or after this resourceVersion.
    compacted: u64,
    /// Open watches positioned before this have missed dropped events.
    max_dropped: u64,
    /// Bumped by `expire_watches`; open watches from an older epoch end with 410.
    epoch: u64,
    notify: watch::Sender<u64>,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

fn metadata_mut(object: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let map = object
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body is not a JSON object"))?;
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if meta.is_null() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

/// Everything but metadata and status: a change here bumps `metadata.generation`.
fn spec_part(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    v
}

impl Store {
    /// An empty store keeping at most `history_limit` events.
    pub fn new(registry: Registry, history_limit: usize) -> Store {
        let (notify, _) = watch::channel(1);
        Store {
            registry,
            rv: 1,
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 1,
            max_dropped: 0,
            epoch: 0,
            notify,
        }
    }

    /// A receiver woken on every change, compaction and expiry.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a new watch or list may start from.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Current expiry epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether an open watch positioned at `cursor` has missed dropped events.
    pub fn missed(&self, cursor: u64) -> bool {
        cursor < self.max_dropped
    }

    /// Resolves the resource type of an object from its `apiVersion` and `kind`.
    pub fn resource_of(&mut self, object: &Value) -> Result<ResourceType, ApiError> {
        let api_version = object["apiVersion"].as_str().unwrap_or("");
        let kind = object["kind"].as_str().unwrap_or("");
        if api_version.is_empty() || kind.is_empty() {
            return Err(ApiError::bad_request(
                "Object 'Kind' or 'apiVersion' is missing",
            ));
        }
        let (group, version) = split_api_version(api_version);
        if let Some(t) = self.registry.by_kind(&group, &version, kind) {
            return Ok(t.clone());
        }
        // An unknown kind from the test API: serve it under a guessed plural, namespaced if the
        // object names a namespace (register the type or create its CRD to be exact).
        let namespaced = !str_at(object, "/metadata/namespace").is_empty();
        let t = ResourceType::new(&group, &version, &guess_plural(kind), kind, namespaced);
        self.registry.register(t.clone());
        Ok(t)
    }

    fn push_event(&mut self, event: StoredEvent) {
        self.history.push_back(event);
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.max_dropped = dropped.rv;
                self.compacted = dropped.rv;
            }
        }
        self.notify.send_replace(self.rv);
    }

    fn map(&self, t: &ResourceType) -> Option<&BTreeMap<ObjectKey, Arc<Value>>> {
        self.objects.get(&t.gvr())
    }

    /// GET one object.
    pub fn get(
        &self,
        t: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        let key = ObjectKey {
            namespace: if t.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        };
        self.map(t)
            .and_then(|m| m.get(&key))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&t.group, &t.plural, name))
    }

    /// Fills and checks `apiVersion`, `kind` and `metadata.namespace` for `t`.
    fn normalize(
        &self,
        t: &ResourceType,
        path_namespace: Option<&str>,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        let expected = t.api_version();
        let map = object
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("the request body is not a JSON object"))?;
        match map.get("apiVersion").and_then(Value::as_str) {
            Some(v) if !v.is_empty() && v != expected => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({expected})"
                )))
            }
            _ => {}
        }
        match map.get("kind").and_then(Value::as_str) {
            Some(k) if !k.is_empty() && k != t.kind => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    t.kind
                )))
            }
            _ => {}
        }
        map.insert("apiVersion".into(), Value::String(expected));
        map.insert("kind".into(), Value::String(t.kind.clone()));
        let meta = metadata_mut(object)?;
        if t.namespaced {
            let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
            let ns = match (path_namespace, body_ns) {
                (Some(p), b) if !b.is_empty() && b != p => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                (Some(p), _) => p.to_string(),
                (None, "") => "default".to_string(),
                (None, b) => b.to_string(),
            };
            meta.insert("namespace".into(), Value::String(ns));
        } else {
            meta.remove("namespace");
        }
        Ok(())
    }

    /// Creates an object; returns it as stored.
    pub fn create(
        &mut self,
        t: &ResourceType,
        path_namespace: Option<&str>,
        mut object: Value,
    ) -> Result<Arc<Value>, ApiError> {
        self.normalize(t, path_namespace, &mut object)?;
        let meta = metadata_mut(&mut object)?;
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(g) if !g.is_empty() => format!("{g}{}", random_suffix()),
                _ => {
                    return Err(ApiError::invalid(
                        &t.kind,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ))
                }
            },
        };
        if name.contains('/') || name == "." || name == ".." {
            return Err(ApiError::invalid(
                &t.kind,
                &name,
                "metadata.name: Invalid value: may not contain '/'",
            ));
        }
        meta.insert("name".into(), Value::String(name.clone()));
        let key = ObjectKey::of(&object);
        if self.map(t).is_some_and(|m| m.contains_key(&key)) {
            return Err(ApiError::already_exists(&t.group, &t.plural, &name));
        }
        self.rv += 1;
        let rv = self.rv;
        let meta = metadata_mut(&mut object)?;
        meta.insert(
            "uid".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
        meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        if t.group == "apiextensions.k8s.io" && t.plural == "customresourcedefinitions" {
            self.registry.register_crd(&object);
        }
        let object = Arc::new(object);
        self.objects
            .entry(t.gvr())
            .or_default()
            .insert(key, object.clone());
        self.push_event(StoredEvent {
            rv,
            gvr: t.gvr(),
            kind: EventKind::Added,
            object: object.clone(),
            prev: None,
        });
        Ok(object)
    }

    /// Replaces an object. With `check_rv`, a non-empty `metadata.resourceVersion` in the body
    /// must equal the stored one (optimistic concurrency), as for a PUT.
    pub fn update(
        &mut self,
        t: &ResourceType,
        path_namespace: Option<&str>,
        path_name: Option<&str>,
        mut object: Value,
        check_rv: bool,
    ) -> Result<Arc<Value>, ApiError> {
        self.normalize(t, path_namespace, &mut object)?;
        let meta = metadata_mut(&mut object)?;
        let body_name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = match path_name {
            Some(p) if !body_name.is_empty() && body_name != p => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({p})"
                )))
            }
            Some(p) => p.to_string(),
            None if body_name.is_empty() => {
                return Err(ApiError::invalid(
                    &t.kind,
                    "",
                    "metadata.name: Required value: name is required",
                ))
            }
            None => body_name,
        };
        meta.insert("name".into(), Value::String(name.clone()));
        let key = ObjectKey::of(&object);
        let current = self
            .map(t)
            .and_then(|m| m.get(&key))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&t.group, &t.plural, &name))?;
        let current_rv = str_at(&current, "/metadata/resourceVersion").to_string();
        let meta = metadata_mut(&mut object)?;
        let body_rv = meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if check_rv && !body_rv.is_empty() && body_rv != current_rv {
            return Err(ApiError::conflict(&t.group, &t.plural, &name));
        }
        // Fields the server owns are carried over from the stored object.
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match current.pointer(&format!("/metadata/{field}")) {
                Some(v) => {
                    meta.insert(field.into(), v.clone());
                }
                None => {
                    meta.remove(field);
                }
            }
        }
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let bumped = spec_part(&current) != spec_part(&object);
        let meta = metadata_mut(&mut object)?;
        meta.insert(
            "generation".into(),
            json!(if bumped { generation + 1 } else { generation }),
        );
        meta.insert("resourceVersion".into(), Value::String(current_rv));
        // A terminating object whose last finalizer was removed goes away now.
        let terminating = current.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers_left = object
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if terminating && !finalizers_left {
            return self.remove(t, key, current);
        }
        if object == *current {
            return Ok(current);
        }
        self.rv += 1;
        let rv = self.rv;
        metadata_mut(&mut object)?.insert("resourceVersion".into(), Value::String(rv.to_string()));
        if t.group == "apiextensions.k8s.io" && t.plural == "customresourcedefinitions" {
            self.registry.register_crd(&object);
        }
        let object = Arc::new(object);
        self.objects
            .entry(t.gvr())
            .or_default()
            .insert(key, object.clone());
        self.push_event(StoredEvent {
            rv,
            gvr: t.gvr(),
            kind: EventKind::Modified,
            object: object.clone(),
            prev: Some(current),
        });
        Ok(object)
    }

    /// Deletes an object; one with finalizers is only marked with `deletionTimestamp`.
    pub fn delete(
        &mut self,
        t: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        let current = self.get(t, namespace, name)?;
        let key = ObjectKey::of(&current);
        let has_finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if current.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(current);
            }
            let mut object = (*current).clone();
            self.rv += 1;
            let rv = self.rv;
            let meta = metadata_mut(&mut object)?;
            meta.insert("deletionTimestamp".into(), Value::String(now_rfc3339()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
            let object = Arc::new(object);
            self.objects
                .entry(t.gvr())
                .or_default()
                .insert(key, object.clone());
            self.push_event(StoredEvent {
                rv,
                gvr: t.gvr(),
                kind: EventKind::Modified,
                object: object.clone(),
                prev: Some(current),
            });
            return Ok(object);
        }
        self.remove(t, key, current)
    }

    fn remove(
        &mut self,
        t: &ResourceType,
        key: ObjectKey,
        current: Arc<Value>,
    ) -> Result<Arc<Value>, ApiError> {
        if let Some(m) = self.objects.get_mut(&t.gvr()) {
            m.remove(&key);
        }
        self.rv += 1;
        let rv = self.rv;
        let mut object = (*current).clone();
        metadata_mut(&mut object)?.insert("resourceVersion".into(), Value::String(rv.to_string()));
        let object = Arc::new(object);
        self.push_event(StoredEvent {
            rv,
            gvr: t.gvr(),
            kind: EventKind::Deleted,
            object: object.clone(),
            prev: Some(current),
        });
        Ok(object)
    }

    /// Drops the whole history and moves the resourceVersion on, as if other writes had
    /// happened and etcd had been compacted: any older resourceVersion or continue token now
    /// gets 410 Gone. Open watches are unaffected (they missed nothing).
    pub fn compact(&mut self) {
        if let Some(last) = self.history.back() {
            self.max_dropped = last.rv;
        }
        self.history.clear();
        self.rv += 1;
        self.compacted = self.rv;
        self.notify.send_replace(self.rv);
    }

    /// Ends every open watch with an in-stream 410 `Expired` ERROR event.
    pub fn expire_watches(&mut self) {
        self.epoch += 1;
        self.notify.send_replace(self.rv);
    }

    /// Events for `gvr` after `cursor`, oldest first.
    pub fn events_after(&self, gvr: &Gvr, cursor: u64) -> Vec<StoredEvent> {
        let start = self.history.partition_point(|e| e.rv <= cursor);
        self.history
            .range(start..)
            .filter(|e| &e.gvr == gvr)
            .cloned()
            .collect()
    }

    /// The objects of `t` as they were at resourceVersion `at`.
    fn objects_at(
        &self,
        t: &ResourceType,
        at: u64,
    ) -> Result<Cow<'_, BTreeMap<ObjectKey, Arc<Value>>>, ApiError> {
        static EMPTY: BTreeMap<ObjectKey, Arc<Value>> = BTreeMap::new();
        let current = self.map(t).unwrap_or(&EMPTY);
        if at >= self.rv {
            return Ok(Cow::Borrowed(current));
        }
        if at < self.compacted {
            return Err(ApiError::expired(format!(
                "too old resource version: {at} ({})",
                self.compacted
            )));
        }
        // Undo, newest first, every change made after `at`.
        let gvr = t.gvr();
        let mut overlay: HashMap<ObjectKey, Option<Arc<Value>>> = HashMap::new();
        let start = self.history.partition_point(|e| e.rv <= at);
        for e in self.history.range(start..).rev().filter(|e| e.gvr == gvr) {
            overlay.insert(ObjectKey::of(&e.object), e.prev.clone());
        }
        if overlay.is_empty() {
            return Ok(Cow::Borrowed(current));
        }
        let mut snapshot = current.clone();
        for (key, value) in overlay {
            match value {
                Some(v) => snapshot.insert(key, v),
                None => snapshot.remove(&key),
            };
        }
        Ok(Cow::Owned(snapshot))
    }

    /// One page of a list at snapshot `at`, optionally after a key and limited in size.
    #[allow(clippy::too_many_arguments)]
    pub fn list(
        &self,
        t: &ResourceType,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        at: u64,
        after: Option<&ObjectKey>,
        limit: Option<usize>,
    ) -> Result<ListPage, ApiError> {
        let at = at.min(self.rv);
        let objects = self.objects_at(t, at)?;
        let lower = match (after, namespace) {
            (Some(k), _) => Bound::Excluded(k.clone()),
            (None, Some(ns)) => Bound::Included(ObjectKey {
                namespace: ns.to_string(),
                name: String::new(),
            }),
            (None, None) => Bound::Unbounded,
        };
        let mut matching = objects
            .range((lower, Bound::Unbounded))
            .take_while(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .filter(|(_, v)| labels.matches(v) && fields.matches(v));
        let mut items = Vec::new();
        let mut last = None;
        for (k, v) in matching.by_ref() {
            items.push(v.clone());
            last = Some(k.clone());
            if limit.is_some_and(|l| items.len() >= l) {
                break;
            }
        }
        let remaining = matching.count();
        let continue_token = match (remaining, last) {
            (n, Some(after)) if n > 0 => Some(ContinueToken { rv: at, after }.encode()),
            _ => None,
        };
        Ok(ListPage {
            rv: at,
            items,
            continue_token,
            remaining,
        })
    }

    /// Every object of `t` in `namespace` (or all) matching the selectors, at the current version.
    pub fn snapshot(
        &self,
        t: &ResourceType,
        namespace: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> (u64, Vec<Arc<Value>>) {
        let items = self
            .map(t)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|v| namespace.is_none_or(|ns| str_at(v, "/metadata/namespace") == ns))
            .filter(|v| labels.matches(v) && fields.matches(v))
            .cloned()
            .collect();
        (self.rv, items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": {"ports": []}})
    }

    fn services(store: &Store) -> ResourceType {
        store
            .registry
            .get("", "v1", "services")
            .cloned()
            .unwrap_or_else(|| ResourceType::new("", "v1", "services", "Service", true))
    }

    #[test]
    fn paging_reads_a_consistent_snapshot() {
        let mut s = Store::new(Registry::with_builtins(), 100);
        let t = services(&s);
        for i in 0..5 {
            assert!(s.create(&t, None, svc("a", &format!("s{i}"))).is_ok());
        }
        let all = LabelSelector::default();
        let none = FieldSelector::default();
        let page = s.list(&t, None, &all, &none, u64::MAX, None, Some(2));
        let Ok(page) = page else {
            panic!("list failed")
        };
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.remaining, 3);
        let Some(token) = page.continue_token else {
            panic!("no token")
        };
        let Ok(token) = ContinueToken::decode(&token) else {
            panic!("bad token")
        };
        // Changes after the first page are invisible to later pages of the same list.
        assert!(s.delete(&t, "a", "s3").is_ok());
        assert!(s.create(&t, None, svc("a", "s21")).is_ok());
        let Ok(page2) = s.list(&t, None, &all, &none, token.rv, Some(&token.after), None) else {
            panic!("second page failed")
        };
        let names: Vec<&str> = page2
            .items
            .iter()
            .map(|o| str_at(o, "/metadata/name"))
            .collect();
        assert_eq!(names, vec!["s2", "s3", "s4"]);
        s.compact();
        let expired = s.list(&t, None, &all, &none, token.rv, Some(&token.after), None);
        assert!(matches!(expired, Err(e) if e.code == 410));
    }

    #[test]
    fn update_checks_resource_version_and_skips_no_ops() {
        let mut s = Store::new(Registry::with_builtins(), 100);
        let t = services(&s);
        let Ok(created) = s.create(&t, None, svc("a", "x")) else {
            panic!()
        };
        let rv = s.resource_version();
        let Ok(same) = s.update(&t, None, None, (*created).clone(), true) else {
            panic!()
        };
        assert_eq!(s.resource_version(), rv);
        assert_eq!(same, created);
        let mut stale = (*created).clone();
        stale["metadata"]["resourceVersion"] = json!("1");
        stale["spec"]["type"] = json!("NodePort");
        assert!(matches!(s.update(&t, None, None, stale, true), Err(e) if e.code == 409));
        let mut changed = (*created).clone();
        changed["spec"]["type"] = json!("NodePort");
        let Ok(updated) = s.update(&t, None, None, changed, true) else {
            panic!()
        };
        assert_eq!(updated["metadata"]["generation"], json!(2));
        assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
    }
}
