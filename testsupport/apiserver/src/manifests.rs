//! Reading objects from a directory of YAML files.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::status::ApiError;

/// Why loading a manifest directory failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The directory or a file could not be read.
    #[error("reading {path}: {error}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// A file is not valid YAML.
    #[error("parsing {path}: {error}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The error.
        error: serde_yaml::Error,
    },
    /// The server refused an object.
    #[error("{origin}: {error}")]
    Rejected {
        /// File and document index.
        origin: String,
        /// The API error.
        error: Box<ApiError>,
    },
}

/// Every object in the `.yaml`/`.yml`/`.json` files of `dir`, CRDs first, then file order.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, Value)>, LoadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| LoadError::Io { path, error }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        })
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(doc).map_err(|error| LoadError::Yaml {
                path: path.clone(),
                error,
            })?;
            let source = format!("{}#{}", path.display(), i);
            match value {
                Value::Null => {}
                Value::Object(_) if value["kind"].as_str().is_some_and(|k| k.ends_with("List")) => {
                    for item in value["items"].as_array().into_iter().flatten() {
                        objects.push((source.clone(), item.clone()));
                    }
                }
                other => objects.push((source, other)),
            }
        }
    }
    objects.sort_by_key(|(_, o)| o["kind"].as_str() != Some("CustomResourceDefinition"));
    Ok(objects)
}
