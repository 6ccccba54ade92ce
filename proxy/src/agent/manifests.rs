//! The `--manifests DIR` cluster source: Kubernetes objects read from YAML and JSON files.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file directly in the directory is read, in file-name
//! order (subdirectories and hidden files are not). A YAML file may hold several documents
//! separated by `---` lines; any document (or JSON file) may be a `List` (or a `ServiceList`
//! and the like, whose items may leave out `apiVersion` and `kind`). Each document is sorted
//! by `apiVersion` and `kind` into the [`ObjectStore`]; kinds the store does not hold
//! (Deployments, custom resources, ...) are skipped with a debug log line.
//!
//! A document that cannot be read is reported ([`ManifestError`], naming the file, the
//! document and, when they can be read, the object's kind, namespace and name) and skipped;
//! everything else is loaded. An object given twice is reported too, and the later one kept,
//! as `kubectl apply` of the files in order would keep it.
//!
//! [`fingerprint`] is a cheap summary of the directory (names, sizes, modification times and
//! inodes of the files [`load`] would read) that changes when any of them does, so the agent
//! can poll for changes without parsing anything. Metadata is taken through symlinks, so a
//! ConfigMap volume (whose files are symlinks into a directory swapped on update) is seen to
//! change.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::Value;

use super::objects::{object_key, Object, ObjectKind, ObjectStore};

/// Where in the manifests a problem was found, and what it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// The file (or the directory, when it could not be listed).
    pub file: PathBuf,
    /// The document's number in the file, from 1; `None` for problems with the whole file.
    pub document: Option<usize>,
    /// The line the document starts on, from 1.
    pub line: Option<usize>,
    /// The item's number in a `List` document, from 1.
    pub item: Option<usize>,
    /// `Kind namespace/name` of the object, as far as it could be read.
    pub object: Option<String>,
    /// What was wrong.
    pub problem: ManifestProblem,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(d) = self.document {
            write!(f, ": document {d}")?;
            if let Some(l) = self.line {
                write!(f, " (line {l})")?;
            }
        }
        if let Some(i) = self.item {
            write!(f, ", item {i}")?;
        }
        if let Some(o) = &self.object {
            write!(f, ": {o}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for ManifestError {}

/// What was wrong with a manifest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestProblem {
    /// The directory could not be listed.
    #[error("cannot list the directory: {0}")]
    ReadDir(String),
    /// The file could not be read (or is not UTF-8).
    #[error("cannot read the file: {0}; file skipped")]
    Read(String),
    /// Not well-formed YAML or JSON.
    #[error("{0}; document skipped")]
    Syntax(String),
    /// The document is not a mapping.
    #[error("not an object (a mapping with apiVersion and kind); document skipped")]
    NotAnObject,
    /// `apiVersion` or `kind` is missing or not a string.
    #[error("no {0}; document skipped")]
    MissingTypeField(&'static str),
    /// A `List` whose `items` is not a sequence.
    #[error("items is not a list; document skipped")]
    BadItems,
    /// The object does not match its kind's schema.
    #[error("{0}; object skipped")]
    Decode(String),
    /// `metadata.name` is missing or empty.
    #[error("no metadata.name; object skipped")]
    MissingName,
    /// The same object was given before; this one replaces it.
    #[error("also defined at {earlier}; this later definition is used")]
    Duplicate {
        /// Where the earlier definition is.
        earlier: String,
    },
}

/// A summary of the manifest directory that changes when a file [`load`] reads does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// One entry per file: name, size, modification time, inode (0 off Unix).
    files: Vec<(PathBuf, u64, Option<SystemTime>, u64)>,
    /// Why the directory could not be listed, if it could not.
    error: Option<String>,
}

/// The fingerprint of `dir` (see the module documentation). Never fails: an unreadable
/// directory or file is part of the fingerprint, so a change to or from it is seen.
pub fn fingerprint(dir: &Path) -> Fingerprint {
    match manifest_files(dir) {
        Ok(paths) => Fingerprint {
            files: paths
                .into_iter()
                .map(|p| match std::fs::metadata(&p) {
                    Ok(m) => {
                        let (len, mtime, ino) = (m.len(), m.modified().ok(), inode(&m));
                        (p, len, mtime, ino)
                    }
                    Err(_) => (p, 0, None, 0),
                })
                .collect(),
            error: None,
        },
        Err(e) => Fingerprint {
            files: Vec::new(),
            error: Some(e.to_string()),
        },
    }
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// The files [`load`] reads from `dir`, sorted by name.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') || format_of(&path).is_none() {
            continue;
        }
        // Through symlinks: a ConfigMap volume's files are symlinks.
        if std::fs::metadata(&path)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The file formats read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// YAML, possibly several `---`-separated documents.
    Yaml,
    /// One JSON value.
    Json,
}

fn format_of(path: &Path) -> Option<Format> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => Some(Format::Yaml),
        Some("json") => Some(Format::Json),
        _ => None,
    }
}

/// Reads every manifest file in `dir` (see the module documentation).
pub fn load(dir: &Path) -> (ObjectStore, Vec<ManifestError>) {
    let mut loader = Loader::new();
    match manifest_files(dir) {
        Ok(files) => {
            for file in files {
                loader.add_file(&file);
            }
        }
        Err(e) => loader.errors.push(ManifestError {
            file: dir.to_path_buf(),
            document: None,
            line: None,
            item: None,
            object: None,
            problem: ManifestProblem::ReadDir(e.to_string()),
        }),
    }
    loader.finish()
}

/// Builds a store from manifest files or texts, collecting what was wrong with them.
#[derive(Debug, Default)]
pub struct Loader {
    store: ObjectStore,
    errors: Vec<ManifestError>,
    /// Where each stored object was defined, to report duplicates.
    defined_at: HashMap<(ObjectKind, String, String), String>,
}

/// Where a document (or List item) is.
#[derive(Clone, Copy)]
struct Place<'a> {
    file: &'a Path,
    document: usize,
    line: usize,
    item: Option<usize>,
}

impl Place<'_> {
    fn error(&self, object: Option<String>, problem: ManifestProblem) -> ManifestError {
        ManifestError {
            file: self.file.to_path_buf(),
            document: Some(self.document),
            line: Some(self.line),
            item: self.item,
            object,
            problem,
        }
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "{} document {} (line {})",
            self.file.display(),
            self.document,
            self.line
        );
        if let Some(i) = self.item {
            s.push_str(&format!(" item {i}"));
        }
        s
    }
}

impl Loader {
    /// An empty loader.
    pub fn new() -> Self {
        Loader::default()
    }

    /// Reads one file (its format from its extension; YAML when it has none we know).
    pub fn add_file(&mut self, path: &Path) {
        match std::fs::read_to_string(path) {
            Ok(text) => self.add_text(path, &text, format_of(path).unwrap_or(Format::Yaml)),
            Err(e) => self.errors.push(ManifestError {
                file: path.to_path_buf(),
                document: None,
                line: None,
                item: None,
                object: None,
                problem: ManifestProblem::Read(e.to_string()),
            }),
        }
    }

    /// Reads the documents in `text`, as if from the file `file`.
    pub fn add_text(&mut self, file: &Path, text: &str, format: Format) {
        match format {
            Format::Json => {
                let place = Place {
                    file,
                    document: 1,
                    line: 1,
                    item: None,
                };
                match serde_json::from_str::<Value>(text) {
                    Ok(value) => self.add_value(place, value),
                    Err(e) => self
                        .errors
                        .push(place.error(None, ManifestProblem::Syntax(e.to_string()))),
                }
            }
            Format::Yaml => {
                for (index, doc) in yaml_documents(text).into_iter().enumerate() {
                    let place = Place {
                        file,
                        document: index + 1,
                        line: doc.line,
                        item: None,
                    };
                    match yaml_to_json(&doc.text, doc.text_line) {
                        Ok(Some(value)) => self.add_value(place, value),
                        Ok(None) => {}
                        Err(problem) => self.errors.push(place.error(None, problem)),
                    }
                }
            }
        }
    }

    /// The store and everything that was wrong.
    pub fn finish(self) -> (ObjectStore, Vec<ManifestError>) {
        (self.store, self.errors)
    }

    fn add_value(&mut self, place: Place<'_>, value: Value) {
        let Value::Object(mut map) = value else {
            self.errors
                .push(place.error(None, ManifestProblem::NotAnObject));
            return;
        };
        let (Some(api_version), Some(kind)) = (
            map.get("apiVersion")
                .and_then(Value::as_str)
                .map(str::to_string),
            map.get("kind").and_then(Value::as_str).map(str::to_string),
        ) else {
            let missing = if map.get("apiVersion").and_then(Value::as_str).is_none() {
                "apiVersion"
            } else {
                "kind"
            };
            let object = describe_raw(None, &map);
            self.errors
                .push(place.error(object, ManifestProblem::MissingTypeField(missing)));
            return;
        };
        if kind.ends_with("List") && map.contains_key("items") {
            let item_kind = kind.strip_suffix("List").unwrap_or("");
            let Some(Value::Array(items)) = map.remove("items") else {
                self.errors
                    .push(place.error(Some(kind), ManifestProblem::BadItems));
                return;
            };
            for (i, mut item) in items.into_iter().enumerate() {
                // A typed list (ServiceList) may leave the items' type fields out.
                if let Value::Object(m) = &mut item {
                    if !item_kind.is_empty() {
                        m.entry("kind")
                            .or_insert_with(|| Value::String(item_kind.to_string()));
                        m.entry("apiVersion")
                            .or_insert_with(|| Value::String(api_version.clone()));
                    }
                }
                let place = Place {
                    item: Some(i + 1),
                    ..place
                };
                // Lists do not nest in the API; an inner List is reported as unknown below.
                self.add_object(place, item);
            }
            return;
        }
        self.add_object(place, Value::Object(map));
    }

    fn add_object(&mut self, place: Place<'_>, value: Value) {
        let Value::Object(map) = &value else {
            self.errors
                .push(place.error(None, ManifestProblem::NotAnObject));
            return;
        };
        let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind_name = map.get("kind").and_then(Value::as_str).unwrap_or("");
        if api_version.is_empty() || kind_name.is_empty() {
            let missing = if api_version.is_empty() {
                "apiVersion"
            } else {
                "kind"
            };
            let object = describe_raw(None, map);
            self.errors
                .push(place.error(object, ManifestProblem::MissingTypeField(missing)));
            return;
        }
        let Some(kind) = ObjectKind::from_type(api_version, kind_name) else {
            tracing::debug!(
                api_version,
                kind = kind_name,
                "{}: kind not used by the agent; skipped",
                place.describe()
            );
            return;
        };
        let described = describe_raw(Some(kind), map);
        let object = match decode(kind, value) {
            Ok(o) => o,
            Err(e) => {
                self.errors
                    .push(place.error(described, ManifestProblem::Decode(e.to_string())));
                return;
            }
        };
        let Ok((namespace, name)) = object_key(kind, object.metadata()) else {
            self.errors
                .push(place.error(described, ManifestProblem::MissingName));
            return;
        };
        let here = place.describe();
        if let Some(earlier) = self
            .defined_at
            .insert((kind, namespace.clone(), name.clone()), here)
        {
            self.errors.push(place.error(
                Some(describe(kind, &namespace, &name)),
                ManifestProblem::Duplicate { earlier },
            ));
        }
        if let Err(e) = self.store.apply(object) {
            // Unreachable after object_key succeeded, but never lose an error.
            self.errors
                .push(place.error(described, ManifestProblem::Decode(e.to_string())));
        }
    }
}

/// Decodes `value` as an object of `kind`.
fn decode(kind: ObjectKind, value: Value) -> Result<Object, serde_json::Error> {
    Ok(match kind {
        ObjectKind::Service => Object::Service(Box::new(serde_json::from_value(value)?)),
        ObjectKind::EndpointSlice => {
            Object::EndpointSlice(Box::new(serde_json::from_value(value)?))
        }
        ObjectKind::NetworkPolicy => {
            Object::NetworkPolicy(Box::new(serde_json::from_value(value)?))
        }
        ObjectKind::Node => Object::Node(Box::new(serde_json::from_value(value)?)),
        ObjectKind::Pod => Object::Pod(Box::new(serde_json::from_value(value)?)),
        ObjectKind::Namespace => Object::Namespace(Box::new(serde_json::from_value(value)?)),
    })
}

/// `Kind namespace/name` (or `Kind name` for cluster-scoped kinds).
fn describe(kind: ObjectKind, namespace: &str, name: &str) -> String {
    if kind.is_namespaced() {
        format!("{kind} {namespace}/{name}")
    } else {
        format!("{kind} {name}")
    }
}

/// As much of `Kind namespace/name` as can be read from an undecoded object.
fn describe_raw(kind: Option<ObjectKind>, map: &serde_json::Map<String, Value>) -> Option<String> {
    let meta = map.get("metadata").and_then(Value::as_object);
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or(super::objects::DEFAULT_NAMESPACE);
    let kind_name = match kind {
        Some(k) => Some(k.kind()),
        None => map
            .get("kind")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty()),
    };
    match (kind, kind_name, name) {
        (Some(k), _, Some(name)) => Some(describe(k, namespace, name)),
        (None, Some(kind_name), Some(name)) => Some(format!("{kind_name} {name}")),
        (None, None, Some(name)) => Some(format!("object {name}")),
        (_, Some(kind_name), None) => Some(kind_name.to_string()),
        (_, None, None) => None,
    }
}

/// One YAML document of a file and the line its content starts on (from 1).
struct YamlDocument {
    text: String,
    line: usize,
    /// The file line `text` starts on.
    text_line: usize,
}

/// Splits a YAML stream at its document markers (`---` at the start of a line, alone or
/// followed by a space and content; `...` alone). Documents with nothing but blanks and
/// comments are dropped, so numbering counts the documents a reader sees.
fn yaml_documents(text: &str) -> Vec<YamlDocument> {
    let mut docs = Vec::new();
    let mut current = String::new();
    // The line of the current document's first content (`None` while it has none), and the
    // line its text starts on.
    let mut first_content: Option<usize> = None;
    let mut text_start = 1;
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let trimmed = line.trim_end();
        let marker_rest = if trimmed == "---" || trimmed == "..." {
            Some("")
        } else {
            line.strip_prefix("--- ")
        };
        let line = match marker_rest {
            Some(rest) => {
                if let Some(first) = first_content.take() {
                    docs.push(YamlDocument {
                        text: std::mem::take(&mut current),
                        line: first,
                        text_line: text_start,
                    });
                }
                current.clear();
                text_start = number;
                rest
            }
            None => line,
        };
        if first_content.is_none() && is_content(line) {
            first_content = Some(number);
        }
        current.push_str(line);
        current.push('\n');
    }
    if let Some(first) = first_content {
        docs.push(YamlDocument {
            text: current,
            line: first,
            text_line: text_start,
        });
    }
    docs
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

/// Parses one YAML document into JSON form (`None` for an empty document). `text_line` is
/// the file line the document's text starts on, to report the file's line numbers.
fn yaml_to_json(text: &str, text_line: usize) -> Result<Option<Value>, ManifestProblem> {
    let yaml: serde_yaml::Value = serde_yaml::from_str(text)
        .map_err(|e| ManifestProblem::Syntax(yaml_error(&e, text_line)))?;
    if yaml.is_null() {
        return Ok(None);
    }
    serde_json::to_value(&yaml)
        .map(Some)
        .map_err(|e| ManifestProblem::Syntax(format!("not representable as JSON: {e}")))
}

/// A YAML error with its line numbers (`at line N`, there may be several) counted in the
/// file, not in the document.
fn yaml_error(e: &serde_yaml::Error, text_line: usize) -> String {
    const AT_LINE: &str = "at line ";
    let message = e.to_string();
    let mut out = String::with_capacity(message.len());
    let mut rest = message.as_str();
    while let Some(at) = rest.find(AT_LINE) {
        let (before, after) = rest.split_at(at + AT_LINE.len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let (number, tail) = after.split_at(digits);
        match number.parse::<usize>() {
            Ok(n) => out.push_str(&(n + text_line - 1).to_string()),
            Err(_) => out.push_str(number),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
