//! Pods and namespaces as peers are matched against them, with the indexes that let a new
//! selector find the pods it selects without a scan of the cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use crate::model::{
    LabelSelector, Labels, Namespace, Pod, PodKey, SelectorOperator, NAMESPACE_NAME_LABEL,
};

/// Pod keys by label value, for one label key.
type ByValue = HashMap<String, BTreeSet<PodKey>>;

#[derive(Debug, Default)]
pub(super) struct World {
    pub(super) namespaces: BTreeMap<String, Namespace>,
    /// The labels namespace selectors see ([`Namespace::selector_labels`]) for every namespace
    /// known: those with an object and those that only have pods so far (which still carry
    /// their name label). A namespace with neither is forgotten.
    selector_labels: HashMap<String, Labels>,
    pub(super) pods: BTreeMap<PodKey, Pod>,
    /// label key → label value → pods.
    by_label: HashMap<String, ByValue>,
    /// Named container port name → pods that declare it.
    by_port_name: HashMap<String, BTreeSet<PodKey>>,
    pub(super) node_ips: Vec<IpAddr>,
}

impl World {
    pub(super) fn new(node_ips: Vec<IpAddr>) -> Self {
        Self {
            node_ips,
            ..Self::default()
        }
    }

    /// The labels namespace selectors see for `name`, if the namespace is known.
    pub(super) fn namespace_labels(&self, name: &str) -> Option<&Labels> {
        self.selector_labels.get(name)
    }

    /// Every known namespace with its selector labels.
    pub(super) fn known_namespaces(&self) -> impl Iterator<Item = (&String, &Labels)> {
        self.selector_labels.iter()
    }

    /// Pods of namespace `name`, in key order.
    pub(super) fn pods_in<'a>(&'a self, name: &str) -> impl Iterator<Item = (&'a PodKey, &'a Pod)> {
        let start = PodKey::new(name, String::new());
        let name = name.to_string();
        self.pods
            .range(start..)
            .take_while(move |(k, _)| k.namespace == name)
    }

    /// Sets (or, with `None`, removes) the namespace object `name`. Returns the selector labels
    /// after (`None`: no longer known).
    pub(super) fn set_namespace(
        &mut self,
        name: &str,
        namespace: Option<Namespace>,
    ) -> Option<&Labels> {
        match namespace {
            Some(ns) => {
                self.selector_labels
                    .insert(name.to_string(), ns.selector_labels());
                self.namespaces.insert(name.to_string(), ns);
            }
            None => {
                self.namespaces.remove(name);
                if self.pods_in(name).next().is_some() {
                    self.selector_labels
                        .insert(name.to_string(), name_only_labels(name));
                } else {
                    self.selector_labels.remove(name);
                }
            }
        }
        self.selector_labels.get(name)
    }

    /// Makes `name` known (with its name label) if it is not, before its first pod comes in;
    /// returns its labels if it was not known.
    pub(super) fn know_namespace(&mut self, name: &str) -> Option<&Labels> {
        if self.selector_labels.contains_key(name) {
            return None;
        }
        self.selector_labels
            .insert(name.to_string(), name_only_labels(name));
        self.selector_labels.get(name)
    }

    /// Forgets `name` if it has neither an object nor pods; returns whether it did.
    pub(super) fn forget_namespace_if_empty(&mut self, name: &str) -> bool {
        let empty = !self.namespaces.contains_key(name) && self.pods_in(name).next().is_none();
        empty && self.selector_labels.remove(name).is_some()
    }

    /// Adds or replaces a pod in the indexes; returns the previous one. Its namespace must be
    /// known ([`Self::know_namespace`]).
    pub(super) fn insert_pod(&mut self, pod: Pod) -> Option<Pod> {
        let key = pod.key();
        let old = self.remove_pod(&key);
        for (k, v) in &pod.labels {
            self.by_label
                .entry(k.clone())
                .or_default()
                .entry(v.clone())
                .or_default()
                .insert(key.clone());
        }
        for port in &pod.named_ports {
            self.by_port_name
                .entry(port.name.clone())
                .or_default()
                .insert(key.clone());
        }
        self.pods.insert(key, pod);
        old
    }

    /// Removes a pod from the indexes; returns it. Its namespace stays known until
    /// [`Self::forget_namespace_if_empty`].
    pub(super) fn remove_pod(&mut self, key: &PodKey) -> Option<Pod> {
        let pod = self.pods.remove(key)?;
        for (k, v) in &pod.labels {
            if let Some(values) = self.by_label.get_mut(k) {
                if let Some(pods) = values.get_mut(v) {
                    pods.remove(key);
                    if pods.is_empty() {
                        values.remove(v);
                    }
                }
                if values.is_empty() {
                    self.by_label.remove(k);
                }
            }
        }
        for port in &pod.named_ports {
            if let Some(pods) = self.by_port_name.get_mut(&port.name) {
                pods.remove(key);
                if pods.is_empty() {
                    self.by_port_name.remove(&port.name);
                }
            }
        }
        Some(pod)
    }

    /// Pods that declare a named port called `name`.
    pub(super) fn pods_with_port_name(&self, name: &str) -> impl Iterator<Item = &PodKey> {
        self.by_port_name.get(name).into_iter().flatten()
    }

    /// Pods in `namespaces` that may match `selector` (`None`: every pod): a superset, found
    /// through the label index when the selector requires a label value, else every pod of
    /// those namespaces. The caller still matches each.
    pub(super) fn candidates(
        &self,
        selector: Option<&LabelSelector>,
        namespaces: &BTreeSet<String>,
    ) -> Vec<(&PodKey, &Pod)> {
        if let Some(indexed) = selector.and_then(|s| self.indexed_candidates(s)) {
            return indexed
                .into_iter()
                .filter(|k| namespaces.contains(&k.namespace))
                .filter_map(|k| self.pods.get_key_value(k))
                .collect();
        }
        namespaces.iter().flat_map(|ns| self.pods_in(ns)).collect()
    }

    /// The smallest candidate list the label index gives for `selector`: the pods with one of
    /// its `matchLabels` pairs, or with one of the values of an `In` expression. `None` when
    /// the selector requires no value (only `NotIn`, `Exists`, `DoesNotExist`, or nothing).
    fn indexed_candidates(&self, selector: &LabelSelector) -> Option<Vec<&PodKey>> {
        let with = |key: &str, value: &str| -> Vec<&PodKey> {
            self.by_label
                .get(key)
                .and_then(|values| values.get(value))
                .into_iter()
                .flatten()
                .collect()
        };
        let from_labels = selector
            .match_labels
            .iter()
            .map(|(k, v)| with(k, v))
            .min_by_key(Vec::len);
        let from_expressions = selector
            .match_expressions
            .iter()
            .filter(|req| req.operator == SelectorOperator::In)
            .map(|req| {
                let mut pods: Vec<&PodKey> =
                    req.values.iter().flat_map(|v| with(&req.key, v)).collect();
                pods.sort();
                pods.dedup();
                pods
            })
            .min_by_key(Vec::len);
        match (from_labels, from_expressions) {
            (Some(a), Some(b)) => Some(if a.len() <= b.len() { a } else { b }),
            (a, b) => a.or(b),
        }
    }
}

/// What namespace selectors see of a namespace without an object: the name label the API
/// server would have set.
fn name_only_labels(name: &str) -> Labels {
    Labels::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())])
}
