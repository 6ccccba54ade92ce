//! The IKE daemon's configuration from SD-EWAN resources (`IpsecProposal`, `IpsecSite`,
//! `IpsecHost`) found in manifest files: the same `*.yaml`/`*.yml`/`*.json` files (several
//! `---` documents each) that `--manifests DIR` reads, where the agent's loader skips these
//! custom resources. Other kinds are ignored here.
//!
//! Like the other parts of this module it depends only on external crates, so tests can
//! compile it in.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use switchyard_ipsec::ike::{EngineConfig, PeerConfig};
use switchyard_ipsec::sdewan::{IpsecHost, IpsecProposal, IpsecSite};

use super::daemon::DaemonConfig;

/// Half-open IKE SAs beyond which the daemon asks initiators for a cookie (strongSwan's
/// `cookie_threshold` default).
pub const COOKIE_THRESHOLD: usize = 10;
/// Half-open IKE SAs beyond which the daemon takes no new ones.
pub const HALF_OPEN_LIMIT: usize = 1000;
/// How long a peer may be quiet before the daemon checks it is alive.
pub const DPD_DELAY: std::time::Duration = std::time::Duration::from_secs(30);

/// What went wrong reading the resources.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}: {1}")]
    Read(PathBuf, String),
    #[error("{0}: document {1}: {2}")]
    Document(PathBuf, usize, String),
    #[error("{0}")]
    Resource(#[from] switchyard_ipsec::sdewan::SdewanError),
}

/// The SD-EWAN resources of a set of files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub proposals: Vec<IpsecProposal>,
    pub sites: Vec<IpsecSite>,
    pub hosts: Vec<IpsecHost>,
}

/// The files `path` names: itself, or the manifest files directly in it, by name.
fn files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let read =
        std::fs::read_dir(path).map_err(|e| ConfigError::Read(path.into(), e.to_string()))?;
    let mut out: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.')
                && p.is_file()
                && [".yaml", ".yml", ".json"].iter().any(|x| name.ends_with(x))
        })
        .collect();
    out.sort();
    Ok(out)
}

impl Resources {
    /// Reads every SD-EWAN resource in `path` (a file or a directory).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut out = Self::default();
        for file in files(path)? {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| ConfigError::Read(file.clone(), e.to_string()))?;
            out.add_text(&file, &text)?;
        }
        Ok(out)
    }

    /// Adds the resources in one file's text (`file` names it in errors).
    pub fn add_text(&mut self, file: &Path, text: &str) -> Result<(), ConfigError> {
        for (n, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let bad = |e: String| ConfigError::Document(file.to_path_buf(), n + 1, e);
            let value = serde_yaml::Value::deserialize_from(document).map_err(bad)?;
            let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            match kind {
                "IpsecProposal" => self
                    .proposals
                    .push(serde_yaml::from_value(value).map_err(|e| bad(e.to_string()))?),
                "IpsecSite" => self
                    .sites
                    .push(serde_yaml::from_value(value).map_err(|e| bad(e.to_string()))?),
                "IpsecHost" => self
                    .hosts
                    .push(serde_yaml::from_value(value).map_err(|e| bad(e.to_string()))?),
                _ => {}
            }
        }
        Ok(())
    }

    /// The daemon's configuration for a node whose IKE address is `local`: one peer per
    /// connection; connections whose `mode` is `start` are initiated, the others (`add`)
    /// wait for the peer. A connection's `remote_sourceip` becomes an address pool of its own.
    pub fn daemon_config(&self, local: IpAddr) -> Result<DaemonConfig, ConfigError> {
        let (config, mut problems) = self.daemon_config_skipping(local);
        match problems.is_empty() {
            true => Ok(config),
            false => Err(problems.swap_remove(0)),
        }
    }

    /// [`Resources::daemon_config`], leaving out each site or host that cannot be used
    /// (a bad pool, an unknown proposal, ...) and saying why: one broken resource from the
    /// API must not take the others' tunnels down.
    pub fn daemon_config_skipping(&self, local: IpAddr) -> (DaemonConfig, Vec<ConfigError>) {
        let local = SocketAddr::new(local, 500);
        let mut peers: Vec<PeerConfig> = Vec::new();
        let mut pools = Vec::new();
        let mut initiate = Vec::new();
        let mut problems = Vec::new();
        // Per site or host: its pools, its peers (one per connection), each connection's mode.
        let sites = self.sites.iter().map(|r| {
            let modes: Vec<&str> = r.spec.connections.iter().map(|c| c.mode.as_str()).collect();
            (r.pools(), r.to_peers(local, &self.proposals), modes)
        });
        let hosts = self.hosts.iter().map(|r| {
            let modes: Vec<&str> = r.spec.connections.iter().map(|c| c.mode.as_str()).collect();
            (r.pools(), r.to_peers(local, &self.proposals), modes)
        });
        for (resource_pools, made, modes) in sites.chain(hosts) {
            let (resource_pools, made) = match resource_pools.and_then(|p| Ok((p, made?))) {
                Ok(m) => m,
                Err(e) => {
                    problems.push(ConfigError::Resource(e));
                    continue;
                }
            };
            pools.extend(resource_pools);
            for (peer, mode) in made.into_iter().zip(modes) {
                if mode == "start" && peer.remote.is_some() {
                    initiate.push(peer.name.clone());
                }
                peers.push(peer);
            }
        }
        let config = DaemonConfig {
            engine: EngineConfig {
                peers,
                pools,
                // Under load, cookies before any state (RFC 7296 section 2.6; strongSwan's
                // default threshold), and a bound on half-open SAs.
                cookie_threshold: Some(COOKIE_THRESHOLD),
                half_open_limit: Some(HALF_OPEN_LIMIT),
                // Dead peer detection as strongSwan's `dpd_delay = 30s`: a peer that went
                // away is noticed (and a tunnel we start is set up again) without waiting
                // for the next rekey.
                dpd_delay: Some(DPD_DELAY),
                ..EngineConfig::default()
            },
            initiate,
            reconnect: Some(std::time::Duration::from_secs(5)),
            esp_tap: None,
            usage: None,
            spi_reports: None,
        };
        (config, problems)
    }

    /// Adds one resource given as a JSON value (an object from the Kubernetes API); other
    /// kinds are ignored.
    pub fn add_value(&mut self, value: serde_json::Value) -> Result<(), String> {
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        match kind {
            "IpsecProposal" => self.proposals.push(from_json(value)?),
            "IpsecSite" => self.sites.push(from_json(value)?),
            "IpsecHost" => self.hosts.push(from_json(value)?),
            _ => {}
        }
        Ok(())
    }

    /// Only the resources labelled `sdewanPurpose=purpose`.
    pub fn with_purpose(&self, purpose: &str) -> Resources {
        let ours = |labels: &std::collections::BTreeMap<String, String>| {
            labels
                .get(switchyard_ipsec::sdewan::PURPOSE_LABEL)
                .map(String::as_str)
                == Some(purpose)
        };
        Resources {
            proposals: self
                .proposals
                .iter()
                .filter(|r| ours(&r.metadata.labels))
                .cloned()
                .collect(),
            sites: self
                .sites
                .iter()
                .filter(|r| ours(&r.metadata.labels))
                .cloned()
                .collect(),
            hosts: self
                .hosts
                .iter()
                .filter(|r| ours(&r.metadata.labels))
                .cloned()
                .collect(),
        }
    }

    /// These resources and `other`'s.
    pub fn merged(&self, other: &Resources) -> Resources {
        Resources {
            proposals: [&self.proposals[..], &other.proposals[..]].concat(),
            sites: [&self.sites[..], &other.sites[..]].concat(),
            hosts: [&self.hosts[..], &other.hosts[..]].concat(),
        }
    }
}

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// `Value::deserialize_from` without importing serde's trait at every call site.
trait DeserializeFrom: Sized {
    fn deserialize_from(d: serde_yaml::Deserializer<'_>) -> Result<Self, String>;
}

impl DeserializeFrom for serde_yaml::Value {
    fn deserialize_from(d: serde_yaml::Deserializer<'_>) -> Result<Self, String> {
        serde::Deserialize::deserialize(d).map_err(|e: serde_yaml::Error| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deployment's example resources: a site, and a host connection whose
    /// `remote_sourceip` is a pool of its own.
    #[test]
    fn the_example_resources_give_a_pool() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/ipsec.yaml");
        let resources = Resources::load(&path).expect("the example loads");
        let config = resources
            .daemon_config("198.51.100.1".parse().expect("address"))
            .expect("the example converts");
        let pools = &config.engine.pools;
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].name, "roadwarrior/roadwarrior-vip");
        assert_eq!(
            pools[0].ranges[0].to_string(),
            "198.51.100.129-198.51.100.142"
        );
        let host = config
            .engine
            .peers
            .iter()
            .find(|p| p.name == "roadwarrior/roadwarrior-vip")
            .expect("the host connection");
        assert_eq!(host.pool.as_deref(), Some("roadwarrior/roadwarrior-vip"));
        assert_eq!(config.initiate, vec!["branch-1/branch-1-lan".to_string()]);
        // The engine takes it (every pool a peer names exists).
        switchyard_ipsec::ike::Engine::new(config.engine.clone()).expect("engine");
    }
}
