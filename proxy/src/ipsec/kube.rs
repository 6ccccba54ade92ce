//! SD-EWAN resources from the Kubernetes API: the `IpsecProposal`, `IpsecSite` and
//! `IpsecHost` custom resources of `batch.sdewan.akraino.org/v1alpha1` labelled
//! `sdewanPurpose=NAME` (`--sdewan-purpose NAME`), as the SD-EWAN operator labels the
//! resources meant for one CNF deployment.
//!
//! One kube-runtime watcher per kind (the agent's client, on its watcher runtime) keeps a
//! small store of the objects; whenever all three have been listed and something changed, the
//! whole set is parsed again and published on a `watch` channel. The IPsec service takes each
//! new set, turns it into the IKE daemon's configuration and hands that to the running daemon
//! ([`super::daemon::Command::Reconfigure`]): tunnels of unchanged connections stay up.
//!
//! An object that does not parse is left out (logged once per version of it) and the others
//! are used. While the API server is away, the last set stays in force.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt as _;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt as _;
use kube::{Api, Client};
use tokio::sync::watch;

use super::config::Resources;
use switchyard_ipsec::sdewan::PURPOSE_LABEL;

/// The SD-EWAN API group and version.
pub const GROUP: &str = "batch.sdewan.akraino.org";
pub const VERSION: &str = "v1alpha1";

/// The kinds watched, with their resource names (plurals).
pub const KINDS: [(&str, &str); 3] = [
    ("IpsecProposal", "ipsecproposals"),
    ("IpsecSite", "ipsecsites"),
    ("IpsecHost", "ipsechosts"),
];

/// The latest complete set of resources from the API (`None` until every kind is listed).
pub type Feed = watch::Receiver<Option<Arc<Resources>>>;

/// What [`watch_sdewan`] needs: the label value to select, and where to publish.
#[derive(Clone, Debug)]
pub struct SdewanWatch {
    pub purpose: String,
    pub out: Arc<watch::Sender<Option<Arc<Resources>>>>,
}

impl SdewanWatch {
    /// A watch for resources labelled `sdewanPurpose=purpose`, and the feed it publishes on.
    pub fn new(purpose: &str) -> (SdewanWatch, Feed) {
        let (tx, rx) = watch::channel(None);
        let watch = SdewanWatch {
            purpose: purpose.to_string(),
            out: Arc::new(tx),
        };
        (watch, rx)
    }
}

impl SdewanWatch {
    /// Publishes `resources` (read from `source`) when they differ from the last set.
    fn publish(&self, resources: Resources, source: &str) {
        let changed = self
            .out
            .borrow()
            .as_deref()
            .is_none_or(|current| *current != resources);
        if changed {
            tracing::info!(
                proposals = resources.proposals.len(),
                sites = resources.sites.len(),
                hosts = resources.hosts.len(),
                "sdewan: resources from {source}"
            );
            self.out.send_replace(Some(Arc::new(resources)));
        }
    }
}

/// Where one object sits in the store: kind index, namespace, name.
type Key = (usize, String, String);

enum Update {
    Apply(usize, DynamicObject),
    Delete(usize, DynamicObject),
    /// A (re)list of a kind begins: its objects are replaced by what follows.
    Relist(usize),
    Listed(usize),
}

fn key(kind: usize, o: &DynamicObject) -> Key {
    (
        kind,
        o.metadata.namespace.clone().unwrap_or_default(),
        o.metadata.name.clone().unwrap_or_default(),
    )
}

/// Watches the three kinds until the process ends, publishing each new complete set.
pub async fn watch_sdewan(client: Client, settings: SdewanWatch) {
    let selector = format!("{PURPOSE_LABEL}={}", settings.purpose);
    let streams = KINDS.iter().enumerate().map(|(index, (kind, plural))| {
        let gvk = GroupVersionKind::gvk(GROUP, VERSION, kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let config = watcher::Config::default().labels(&selector);
        watcher(api, config)
            .default_backoff()
            .map(move |event| (index, event))
            .boxed()
    });
    let mut events = futures_util::stream::select_all(streams);
    let mut store: BTreeMap<Key, serde_json::Value> = BTreeMap::new();
    let mut relisting: BTreeMap<usize, BTreeMap<Key, serde_json::Value>> = BTreeMap::new();
    let mut listed = [false; KINDS.len()];
    let mut failing = [false; KINDS.len()];
    let mut reported: BTreeMap<Key, String> = BTreeMap::new();
    while let Some((index, event)) = events.next().await {
        let update = match event {
            Ok(watcher::Event::Apply(o)) => Update::Apply(index, o),
            Ok(watcher::Event::Delete(o)) => Update::Delete(index, o),
            Ok(watcher::Event::Init) => Update::Relist(index),
            Ok(watcher::Event::InitApply(o)) => {
                let k = key(index, &o);
                relisting.entry(index).or_default().insert(k, to_value(o));
                continue;
            }
            Ok(watcher::Event::InitDone) => Update::Listed(index),
            Err(e) => {
                if !std::mem::replace(&mut failing[index], true) {
                    tracing::warn!(kind = KINDS[index].0, error = %e, "sdewan: watch failing (retrying)");
                }
                continue;
            }
        };
        if std::mem::take(&mut failing[index]) {
            tracing::info!(kind = KINDS[index].0, "sdewan: watch recovered");
        }
        match update {
            Update::Apply(kind, o) => {
                store.insert(key(kind, &o), to_value(o));
            }
            Update::Delete(kind, o) => {
                store.remove(&key(kind, &o));
            }
            Update::Relist(kind) => {
                relisting.insert(kind, BTreeMap::new());
                continue;
            }
            Update::Listed(kind) => {
                store.retain(|k, _| k.0 != kind);
                store.extend(relisting.remove(&kind).unwrap_or_default());
                listed[kind] = true;
            }
        }
        if listed.iter().all(|&l| l) {
            settings.publish(parse(&store, &mut reported), "the API");
        }
    }
}

/// The same feed from a manifest directory (`--manifests DIR`): the resources labelled for
/// `settings.purpose` in its files, read again every `poll` and published when they change.
/// A file that does not parse keeps the last good set in force (logged once per error).
pub fn watch_manifests(dir: std::path::PathBuf, poll: std::time::Duration, settings: SdewanWatch) {
    let mut last_error: Option<String> = None;
    loop {
        match Resources::load(&dir) {
            Ok(all) => {
                last_error = None;
                settings.publish(
                    all.with_purpose(&settings.purpose),
                    "the manifest directory",
                );
            }
            Err(e) => {
                let e = e.to_string();
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "sdewan: manifests not read; the last set stays");
                    last_error = Some(e);
                }
            }
        }
        if settings.out.is_closed() {
            return;
        }
        std::thread::sleep(poll);
    }
}

fn to_value(o: DynamicObject) -> serde_json::Value {
    serde_json::to_value(o).unwrap_or_default()
}

/// The store's objects as resources; those that do not parse are left out and logged once
/// (per object and error).
fn parse(
    store: &BTreeMap<Key, serde_json::Value>,
    reported: &mut BTreeMap<Key, String>,
) -> Resources {
    let mut resources = Resources::default();
    reported.retain(|k, _| store.contains_key(k));
    for (k, value) in store {
        let mut value = value.clone();
        // A DynamicObject carries its type beside the object: put it back in.
        if let Some(o) = value.as_object_mut() {
            o.insert("kind".into(), KINDS[k.0].0.into());
            o.insert("apiVersion".into(), format!("{GROUP}/{VERSION}").into());
        }
        match resources.add_value(value) {
            Ok(()) => {
                reported.remove(k);
            }
            Err(e) => {
                if reported.get(k) != Some(&e) {
                    tracing::warn!(kind = KINDS[k.0].0, namespace = %k.1, name = %k.2, error = %e, "sdewan: resource skipped");
                    reported.insert(k.clone(), e);
                }
            }
        }
    }
    resources
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn crds() -> Vec<serde_json::Value> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/crds");
        ["ipsecproposals", "ipsecsites", "ipsechosts"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(dir.join(format!("{name}.yaml"))).expect("CRD");
                serde_yaml::from_str(&text).expect("CRD YAML")
            })
            .collect()
    }

    fn object(kind: &str, name: &str, purpose: &str, spec: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": kind,
            "metadata": {"name": name, "namespace": "default", "labels": {PURPOSE_LABEL: purpose}},
            "spec": spec,
        })
    }

    fn site(name: &str, purpose: &str, remote: &str) -> serde_json::Value {
        object(
            "IpsecSite",
            name,
            purpose,
            serde_json::json!({
                "remote": remote,
                "authentication_method": "psk",
                "pre_shared_key": "k",
                "crypto_proposal": ["p1"],
                "connections": [{
                    "name": "c1", "conn_type": "tunnel", "mode": "start",
                    "local_subnet": "198.18.1.0/24", "remote_subnet": "198.18.2.0/24",
                    "crypto_proposal": ["aes128gcm16"]
                }]
            }),
        )
    }

    /// Waits until the feed holds a set `check` accepts.
    async fn until(
        feed: &mut Feed,
        what: &str,
        check: impl Fn(&Resources) -> bool,
    ) -> Arc<Resources> {
        let wait = async {
            loop {
                if let Some(r) = feed.borrow_and_update().clone().filter(|r| check(r)) {
                    return r;
                }
                feed.changed().await.expect("the watcher runs");
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("feed never showed {what}: {:?}", feed.borrow()))
    }

    /// The same feed from a manifest directory: only our purpose, changes followed, a file
    /// that does not parse keeps the last set.
    #[test]
    fn resources_of_our_purpose_are_read_from_the_manifest_directory() {
        let dir = std::env::temp_dir().join(format!("switchyard-sdewan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let write = |name: &str, values: &[serde_json::Value]| {
            let text: Vec<String> = values
                .iter()
                .map(|v| serde_yaml::to_string(v).expect("YAML"))
                .collect();
            std::fs::write(dir.join(name), text.join("---\n")).expect("write");
        };
        let proposal = object(
            "IpsecProposal",
            "p1",
            "cnf1",
            serde_json::json!({"encryption_algorithm": "aes128gcm16", "hash_algorithm": "", "dh_group": "x25519"}),
        );
        write(
            "ipsec.yaml",
            &[
                proposal.clone(),
                site("ours", "cnf1", "198.51.100.2"),
                site("theirs", "cnf2", "198.51.100.3"),
            ],
        );
        let (watch, mut feed) = SdewanWatch::new("cnf1");
        let poll = Duration::from_millis(50);
        let reader = {
            let dir = dir.clone();
            std::thread::spawn(move || watch_manifests(dir, poll, watch))
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let r = until(&mut feed, "our site", |r| r.sites.len() == 1).await;
            assert_eq!(r.sites[0].spec.remote, "198.51.100.2");
            write(
                "ipsec.yaml",
                &[proposal.clone(), site("ours", "cnf1", "198.51.100.4")],
            );
            until(&mut feed, "the new remote", |r| {
                r.sites.len() == 1 && r.sites[0].spec.remote == "198.51.100.4"
            })
            .await;
            std::fs::write(dir.join("broken.yaml"), "kind: IpsecSite\nspec: [nope\n")
                .expect("write");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let r = feed.borrow().clone().expect("a set");
            assert_eq!(
                r.sites[0].spec.remote, "198.51.100.4",
                "the last good set stays"
            );
        });
        drop(feed);
        reader.join().expect("the reader ends once nobody listens");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The watch against the in-repo API server: only our purpose, updates and deletes
    /// followed, an object that does not parse left out.
    #[test]
    fn resources_of_our_purpose_are_followed() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let api = switchyard_apiserver::ApiServer::start().await.expect("API server");
            for crd in crds() {
                api.create(&crd).expect("create CRD");
            }
            let kubeconfig: kube::config::Kubeconfig =
                serde_yaml::from_str(&api.kubeconfig()).expect("kubeconfig");
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .expect("client config");
            let client = Client::try_from(config).expect("client");
            let (watch, mut feed) = SdewanWatch::new("cnf1");
            tokio::spawn(watch_sdewan(client, watch));

            let proposal = object(
                "IpsecProposal",
                "p1",
                "cnf1",
                serde_json::json!({"encryption_algorithm": "aes128gcm16", "hash_algorithm": "", "dh_group": "x25519"}),
            );
            api.create(&proposal).expect("proposal");
            api.create(&site("ours", "cnf1", "198.51.100.2")).expect("site");
            api.create(&site("theirs", "cnf2", "198.51.100.3")).expect("other site");
            let r = until(&mut feed, "our site", |r| r.sites.len() == 1 && r.proposals.len() == 1).await;
            assert_eq!(r.sites[0].spec.remote, "198.51.100.2");
            assert!(r.hosts.is_empty());

            api.apply(&site("ours", "cnf1", "198.51.100.4")).expect("update site");
            until(&mut feed, "the new remote", |r| {
                r.sites.len() == 1 && r.sites[0].spec.remote == "198.51.100.4"
            })
            .await;

            // Not an IpsecSite the model reads (connections is not a list): left out.
            let mut bad = site("broken", "cnf1", "198.51.100.5");
            bad["spec"]["connections"] = serde_json::json!("nope");
            if api.create(&bad).is_ok() {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let r = feed.borrow().clone().expect("a set");
                assert_eq!(r.sites.len(), 1, "{r:?}");
            }

            api.delete(&format!("{GROUP}/{VERSION}"), "IpsecSite", "default", "ours")
                .expect("delete site");
            until(&mut feed, "no site", |r| r.sites.is_empty() && r.proposals.len() == 1).await;
        });
    }
}
