//! The resource types the server knows: built-ins, plus custom resources registered by a test or
//! by creating a `CustomResourceDefinition`. Also the discovery documents built from them.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// One served resource: group/version/plural plus what discovery says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, empty for the core group.
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Lower-case plural used in paths, e.g. `services`.
    pub plural: String,
    /// Kind, e.g. `Service`.
    pub kind: String,
    /// Namespaced or cluster scoped.
    pub namespaced: bool,
    /// Extra field paths allowed in `fieldSelector` besides metadata.name/namespace.
    pub selectable_fields: Vec<String>,
}

impl ResourceType {
    /// A resource type with no extra selectable fields.
    pub fn new(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        ResourceType {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
            kind: kind.to_string(),
            namespaced,
            selectable_fields: Vec::new(),
        }
    }

    fn with_fields(mut self, fields: &[&str]) -> Self {
        self.selectable_fields = fields.iter().map(|f| f.to_string()).collect();
        self
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        api_version(&self.group, &self.version)
    }

    /// Field paths accepted by `fieldSelector`.
    pub fn supported_fields(&self) -> Vec<&str> {
        // metadata.namespace is accepted for cluster-scoped objects too (always "").
        let mut fields = vec!["metadata.name", "metadata.namespace"];
        fields.extend(self.selectable_fields.iter().map(String::as_str));
        fields
    }

    /// The key the store files objects of this type under.
    pub fn gvr(&self) -> Gvr {
        Gvr {
            group: self.group.clone(),
            version: self.version.clone(),
            plural: self.plural.clone(),
        }
    }
}

/// Group, version, resource plural.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gvr {
    /// API group, empty for core.
    pub group: String,
    /// API version.
    pub version: String,
    /// Resource plural.
    pub plural: String,
}

/// `v1` for the core group, else `group/version`.
pub fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// Splits `apiVersion` into (group, version).
pub fn split_api_version(api_version: &str) -> (String, String) {
    match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.to_string()),
    }
}

/// Guesses a plural from a kind the way kubectl's fallback does.
pub fn guess_plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if lower.ends_with('s')
        || lower.ends_with("x")
        || lower.ends_with("ch")
        || lower.ends_with("sh")
    {
        format!("{lower}es")
    } else if let Some(stem) = lower.strip_suffix('y') {
        if stem.ends_with(['a', 'e', 'i', 'o', 'u']) {
            format!("{lower}s")
        } else {
            format!("{stem}ies")
        }
    } else {
        format!("{lower}s")
    }
}

/// All known resource types.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    by_gvr: BTreeMap<Gvr, ResourceType>,
}

impl Registry {
    /// The built-in resources Switchyard and its tests use.
    pub fn with_builtins() -> Self {
        let mut r = Registry::default();
        let pod_fields = [
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ];
        for t in [
            ResourceType::new("", "v1", "namespaces", "Namespace", false)
                .with_fields(&["status.phase"]),
            ResourceType::new("", "v1", "nodes", "Node", false)
                .with_fields(&["spec.unschedulable"]),
            ResourceType::new("", "v1", "pods", "Pod", true).with_fields(&pod_fields),
            ResourceType::new("", "v1", "services", "Service", true),
            ResourceType::new("", "v1", "endpoints", "Endpoints", true),
            ResourceType::new("", "v1", "configmaps", "ConfigMap", true),
            ResourceType::new("", "v1", "secrets", "Secret", true).with_fields(&["type"]),
            ResourceType::new("", "v1", "serviceaccounts", "ServiceAccount", true),
            ResourceType::new("", "v1", "events", "Event", true),
            ResourceType::new(
                "discovery.k8s.io",
                "v1",
                "endpointslices",
                "EndpointSlice",
                true,
            ),
            ResourceType::new(
                "networking.k8s.io",
                "v1",
                "networkpolicies",
                "NetworkPolicy",
                true,
            ),
            ResourceType::new("coordination.k8s.io", "v1", "leases", "Lease", true),
            ResourceType::new(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
            ),
        ] {
            r.register(t);
        }
        r
    }

    /// Adds or replaces a resource type.
    pub fn register(&mut self, t: ResourceType) {
        self.by_gvr.insert(t.gvr(), t);
    }

    /// Looks up by group/version/plural.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.by_gvr.get(&Gvr {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
        })
    }

    /// Looks up by group/version/kind.
    pub fn by_kind(&self, group: &str, version: &str, kind: &str) -> Option<&ResourceType> {
        self.by_gvr
            .values()
            .find(|t| t.group == group && t.version == version && t.kind == kind)
    }

    /// Registers the served versions of a `CustomResourceDefinition` object.
    pub fn register_crd(&mut self, crd: &Value) -> usize {
        let spec = &crd["spec"];
        let (Some(group), Some(plural), Some(kind)) = (
            spec["group"].as_str(),
            spec.pointer("/names/plural").and_then(Value::as_str),
            spec.pointer("/names/kind").and_then(Value::as_str),
        ) else {
            return 0;
        };
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        let mut count = 0;
        for v in spec["versions"].as_array().into_iter().flatten() {
            if v["served"].as_bool() == Some(false) {
                continue;
            }
            let Some(version) = v["name"].as_str() else {
                continue;
            };
            let fields: Vec<String> = v["selectableFields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f["jsonPath"].as_str())
                .map(|p| p.trim_start_matches('.').to_string())
                .collect();
            let mut t = ResourceType::new(group, version, plural, kind, namespaced);
            t.selectable_fields = fields;
            self.register(t);
            count += 1;
        }
        count
    }

    /// Sorted group names (excluding core) with their versions.
    fn groups(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for t in self.by_gvr.values().filter(|t| !t.group.is_empty()) {
            let versions = groups.entry(t.group.as_str()).or_default();
            if !versions.contains(&t.version.as_str()) {
                versions.push(t.version.as_str());
            }
        }
        for versions in groups.values_mut() {
            versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        groups
    }

    /// True if some resource is served under group/version.
    pub fn serves_group_version(&self, group: &str, version: &str) -> bool {
        self.by_gvr
            .keys()
            .any(|g| g.group == group && g.version == version)
    }

    /// `GET /api`.
    pub fn api_versions(&self) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
        })
    }

    /// `GET /apis`.
    pub fn api_group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .into_iter()
            .map(|(name, versions)| {
                let vs: Vec<Value> = versions
                    .iter()
                    .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
                    .collect();
                let preferred = vs.first().cloned().unwrap_or(Value::Null);
                json!({"name": name, "versions": vs, "preferredVersion": preferred})
            })
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `GET /apis/{group}`.
    pub fn api_group(&self, group: &str) -> Option<Value> {
        let groups = self.groups();
        let versions = groups.get(group)?;
        let vs: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
            .collect();
        let preferred = vs.first().cloned().unwrap_or(Value::Null);
        Some(
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": vs, "preferredVersion": preferred}),
        )
    }

    /// `GET /api/v1` or `GET /apis/{group}/{version}`.
    pub fn api_resource_list(&self, group: &str, version: &str) -> Value {
        let resources: Vec<Value> = self
            .by_gvr
            .values()
            .filter(|t| t.group == group && t.version == version)
            .map(|t| {
                json!({
                    "name": t.plural,
                    "singularName": t.kind.to_ascii_lowercase(),
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                })
            })
            .collect();
        json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": api_version(group, version),
            "resources": resources,
        })
    }
}

/// Kubernetes version ordering: GA > beta > alpha, higher numbers first.
fn version_priority(v: &str) -> (u8, u32, u32) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        (3, major, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, major, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, major, n.parse().unwrap_or(0))
    } else {
        (0, major, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals() {
        assert_eq!(guess_plural("IPSecSite"), "ipsecsites");
        assert_eq!(guess_plural("NetworkPolicy"), "networkpolicies");
        assert_eq!(guess_plural("Gateway"), "gateways");
        assert_eq!(guess_plural("Ingress"), "ingresses");
    }

    #[test]
    fn versions_sort() {
        let mut v = vec!["v1alpha1", "v1", "v2beta1", "v1beta2"];
        v.sort_by_key(|x| std::cmp::Reverse(version_priority(x)));
        assert_eq!(v, vec!["v1", "v2beta1", "v1beta2", "v1alpha1"]);
    }
}
