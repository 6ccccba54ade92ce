//! Tests for the manifest source.

use std::path::{Path, PathBuf};

use super::*;

fn load_text(text: &str) -> (ObjectStore, Vec<ManifestError>) {
    let mut loader = Loader::new();
    loader.add_text(Path::new("t.yaml"), text, Format::Yaml);
    loader.finish()
}

fn key(namespace: &str, name: &str) -> (String, String) {
    (namespace.to_string(), name.to_string())
}

/// A fresh, empty directory under the system temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("switchyard-manifests-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("creating {}: {e}", dir.display());
        }
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) {
        if let Err(e) = std::fs::write(self.0.join(name), text) {
            panic!("writing {name}: {e}");
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn documents_lists_and_kinds() {
    let text = "\
# a comment before the first document
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
--- # an empty document between markers
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web}
  spec: {clusterIP: 198.19.0.10, ports: [{port: 80}]}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: web}
---
apiVersion: v1
kind: ServiceList
items:
- metadata: {name: api, namespace: demo}
  spec: {clusterIP: 198.19.0.20, ports: [{port: 80}]}
...
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: []
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: demo}
spec: {podSelector: {}}
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
---
apiVersion: v1
kind: Pod
metadata: {name: pod-a}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
";
    let (store, errors) = load_text(text);
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(store.namespaces.contains_key(&key("", "demo")));
    assert!(store.services.contains_key(&key("default", "web")));
    assert!(store.services.contains_key(&key("demo", "api")));
    assert!(store.endpoint_slices.contains_key(&key("default", "web-1")));
    assert!(store.network_policies.contains_key(&key("demo", "deny")));
    assert!(store.nodes.contains_key(&key("", "node-a")));
    assert!(store.pods.contains_key(&key("default", "pod-a")));
    assert_eq!(store.len(), 7);
    let web = &store.services[&key("default", "web")];
    assert_eq!(web.metadata.namespace.as_deref(), Some("default"));
}

#[test]
fn json_files_and_json_lists() {
    let mut loader = Loader::new();
    loader.add_text(
        Path::new("t.json"),
        r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "b"}}]}"#,
        Format::Json,
    );
    let (store, errors) = loader.finish();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(store.namespaces.len(), 2);
}

#[test]
fn bad_documents_are_reported_with_their_place_and_skipped() {
    let text = "\
apiVersion: v1
kind: Namespace
metadata: {name: ok-1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec: {ports: [{port: 80}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: demo}
spec:
  ports:
  - port: eighty
---
apiVersion: v1
kind: Namespace
metadata: {name: ok-2}
";
    let (store, errors) = load_text(text);
    assert_eq!(store.namespaces.len(), 2, "the good documents load");
    assert_eq!(errors.len(), 2, "{errors:#?}");

    let syntax = &errors[0];
    assert_eq!(syntax.file, Path::new("t.yaml"));
    assert_eq!((syntax.document, syntax.line), (Some(2), Some(5)));
    assert!(
        matches!(&syntax.problem, ManifestProblem::Syntax(m)
            if m.contains("at line 9 ") && m.contains("flow sequence at line 8 ")),
        "line numbers are the file's: {syntax}"
    );

    let decode = &errors[1];
    assert_eq!((decode.document, decode.line), (Some(3), Some(10)));
    assert_eq!(decode.object.as_deref(), Some("Service demo/api"));
    assert!(matches!(decode.problem, ManifestProblem::Decode(_)));
    let message = decode.to_string();
    assert!(
        message.starts_with("t.yaml: document 3 (line 10): Service demo/api: "),
        "{message}"
    );
    assert!(message.ends_with("; object skipped"), "{message}");
}

#[test]
fn documents_without_type_or_name_and_non_objects() {
    let text = "\
apiVersion: v1
metadata: {name: x}
---
kind: Service
metadata: {name: y}
---
apiVersion: v1
kind: Pod
metadata: {namespace: demo}
---
[1, 2]
---
apiVersion: v1
kind: List
items: {a: b}
";
    let (store, errors) = load_text(text);
    assert!(store.is_empty());
    let problems: Vec<_> = errors.iter().map(|e| e.problem.clone()).collect();
    assert_eq!(
        problems,
        [
            ManifestProblem::MissingTypeField("kind"),
            ManifestProblem::MissingTypeField("apiVersion"),
            ManifestProblem::MissingName,
            ManifestProblem::NotAnObject,
            ManifestProblem::BadItems,
        ]
    );
    assert_eq!(errors[2].object.as_deref(), Some("Pod"));
}

#[test]
fn duplicates_are_reported_and_the_later_one_kept() {
    let text = "\
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 198.19.0.1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 198.19.0.2}
";
    let (store, errors) = load_text(text);
    assert_eq!(errors.len(), 1);
    assert!(
        matches!(&errors[0].problem, ManifestProblem::Duplicate { earlier } if earlier.contains("document 1")),
        "{}",
        errors[0]
    );
    let web = &store.services[&key("default", "web")];
    let cluster_ip = web.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
    assert_eq!(cluster_ip, Some("198.19.0.2"));
}

#[test]
fn yaml_documents_split_at_markers_only() {
    let text =
        "a: 1\n---\n\n# only a comment\n---   \nb: |\n  --- not a marker\n  text\n--- c: 3\n...\n";
    let docs = yaml_documents(text);
    let lines: Vec<usize> = docs.iter().map(|d| d.line).collect();
    assert_eq!(lines, [1, 6, 9]);
    let values: Vec<Option<Value>> = docs
        .iter()
        .map(|d| yaml_to_json(&d.text, d.text_line).ok().flatten())
        .collect();
    assert_eq!(
        values,
        [
            Some(serde_json::json!({"a": 1})),
            Some(serde_json::json!({"b": "--- not a marker\ntext\n"})),
            Some(serde_json::json!({"c": 3})),
        ]
    );
}

#[test]
fn the_bad_manifests_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad-manifests");
    let (store, errors) = load(&dir);
    let mut names: Vec<&str> = store.services.keys().map(|(_, n)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["good-1", "good-2"]);
    assert!(store.namespaces.contains_key(&key("", "demo")));
    type Summary = (String, Option<usize>, Option<usize>, Option<String>);
    let summary: Vec<Summary> = errors
        .iter()
        .map(|e| {
            let file = e
                .file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            (file, e.document, e.item, e.object.clone())
        })
        .collect();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        summary,
        [
            ("10-mixed.yaml".into(), Some(2), None, None),
            (
                "10-mixed.yaml".into(),
                Some(3),
                None,
                s("Service demo/bad-port")
            ),
            ("10-mixed.yaml".into(), Some(4), None, s("object no-kind")),
            ("10-mixed.yaml".into(), Some(5), None, s("Pod")),
            ("10-mixed.yaml".into(), Some(6), None, None),
            ("20-not-json.json".into(), Some(1), None, None),
            (
                "30-list.json".into(),
                Some(1),
                Some(2),
                s("EndpointSlice demo/bad-address-type")
            ),
        ],
        "{errors:#?}"
    );
}

#[test]
fn a_missing_directory_is_one_error() {
    let (store, errors) = load(Path::new("/nonexistent/switchyard/manifests"));
    assert!(store.is_empty());
    assert_eq!(errors.len(), 1);
    assert!(matches!(errors[0].problem, ManifestProblem::ReadDir(_)));
}

#[test]
fn which_files_are_read_and_the_fingerprint() {
    let dir = TempDir::new("fingerprint");
    dir.write(
        "b.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n",
    );
    dir.write(
        "a.yml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n",
    );
    dir.write(
        "c.json",
        r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "c"}}"#,
    );
    dir.write("notes.txt", "not read");
    dir.write(".hidden.yaml", "not: [read");
    if let Err(e) = std::fs::create_dir(dir.0.join("sub.yaml")) {
        panic!("mkdir: {e}");
    }
    let files: Vec<String> = match manifest_files(&dir.0) {
        Ok(f) => f
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect(),
        Err(e) => panic!("listing: {e}"),
    };
    assert_eq!(files, ["a.yml", "b.yaml", "c.json"]);
    let (store, errors) = load(&dir.0);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(store.namespaces.len(), 3);

    let before = fingerprint(&dir.0);
    assert_eq!(before, fingerprint(&dir.0), "stable while nothing changes");
    dir.write(
        "notes.txt",
        "still not read, and not part of the fingerprint",
    );
    assert_eq!(before, fingerprint(&dir.0));
    dir.write(
        "b.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: b2}\n",
    );
    let after = fingerprint(&dir.0);
    assert_ne!(before, after, "a changed file changes the fingerprint");
    dir.write("d.yaml", "");
    assert_ne!(after, fingerprint(&dir.0), "a new file changes it");
    let gone = fingerprint(Path::new("/nonexistent/switchyard/manifests"));
    assert_ne!(gone, fingerprint(&dir.0));
}

#[test]
fn the_examples_load_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let (store, errors) = load(&dir);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(store.namespaces.len(), 2);
    assert_eq!(store.nodes.len(), 2);
    assert!(store.pods.len() >= 3);
    assert!(store.services.len() >= 7);
    assert!(store.endpoint_slices.len() >= 5);
    assert_eq!(store.network_policies.len(), 1);
}
