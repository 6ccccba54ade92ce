//! The server handle a test holds: start, address, kubeconfig, object changes, and the switches
//! that simulate trouble (compaction, expired watches, the server going away).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::resources::{split_api_version, Registry, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::Store;

/// Tunables; the defaults suit tests (short bookmark interval).
#[derive(Debug, Clone)]
pub struct Config {
    /// How often an idle watch with `allowWatchBookmarks=true` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// How many events the history keeps; older resourceVersions get 410 Gone.
    pub history_limit: usize,
    /// Watch length when the client gives no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bookmark_interval: Duration::from_millis(500),
            history_limit: 100_000,
            default_watch_timeout: Duration::from_secs(1800),
            max_body_bytes: 8 << 20,
            port: 0,
        }
    }
}

/// State shared by the handle and every connection.
pub(crate) struct Shared {
    store: Mutex<Store>,
    pub(crate) config: Config,
    pub(crate) open_watches: AtomicUsize,
    requests: Mutex<HashMap<(String, String), u64>>,
    /// Every distinct request as RBAC sees it (see [`ApiServer::request_log`]).
    request_log: Mutex<BTreeSet<RequestRecord>>,
}

impl Shared {
    /// The store; a poisoned lock is still usable because every mutation is all-or-nothing.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn count(&self, verb: &str, plural: &str) {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *r.entry((verb.to_string(), plural.to_string())).or_default() += 1;
    }

    pub(crate) fn log_request(&self, record: RequestRecord) {
        let mut log = self.request_log.lock().unwrap_or_else(|e| e.into_inner());
        log.insert(record);
    }
}

/// One kind of request a client made, in the terms of an RBAC rule: the verb, and either the
/// API group and resource (with `/subresource`) or, for discovery and `/version`, the
/// non-resource URL. Recorded whether or not the server serves the resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete` or `deletecollection`.
    pub verb: String,
    /// The API group (`""` for the core group); empty for non-resource URLs.
    pub group: String,
    /// The resource's plural, `plural/subresource` for a subresource; empty for
    /// non-resource URLs.
    pub resource: String,
    /// The namespace the request was scoped to, if any.
    pub namespace: Option<String>,
    /// The path of a non-resource request (`/version`, `/api`, ...).
    pub non_resource_url: Option<String>,
}

struct Serving {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Builds an [`ApiServer`] with non-default [`Config`].
#[derive(Debug, Clone, Default)]
pub struct Builder {
    config: Config,
    resources: Vec<ResourceType>,
}

impl Builder {
    /// Interval between BOOKMARK events on an idle watch.
    pub fn bookmark_interval(mut self, d: Duration) -> Self {
        self.config.bookmark_interval = d;
        self
    }

    /// How many events the watch history keeps.
    pub fn history_limit(mut self, n: usize) -> Self {
        self.config.history_limit = n;
        self
    }

    /// Watch length when the client sends no `timeoutSeconds`.
    pub fn default_watch_timeout(mut self, d: Duration) -> Self {
        self.config.default_watch_timeout = d;
        self
    }

    /// Fixed port on 127.0.0.1 (0: any free port).
    pub fn port(mut self, port: u16) -> Self {
        self.config.port = port;
        self
    }

    /// Serves an extra resource type (a custom resource) from the start.
    pub fn resource(mut self, t: ResourceType) -> Self {
        self.resources.push(t);
        self
    }

    /// Binds 127.0.0.1 and starts serving on the current tokio runtime.
    pub async fn start(self) -> std::io::Result<ApiServer> {
        let mut registry = Registry::with_builtins();
        for t in self.resources {
            registry.register(t);
        }
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(registry, self.config.history_limit)),
            open_watches: AtomicUsize::new(0),
            requests: Mutex::new(HashMap::new()),
            request_log: Mutex::new(BTreeSet::new()),
            config: self.config.clone(),
        });
        let listener = TcpListener::bind(("127.0.0.1", self.config.port)).await?;
        let addr = listener.local_addr()?;
        let serving = spawn_server(listener, shared.clone());
        Ok(ApiServer {
            shared,
            addr,
            serving: Mutex::new(Some(serving)),
        })
    }
}

fn spawn_server(listener: TcpListener, shared: Arc<Shared>) -> Serving {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let shared = shared.clone();
                    conns.spawn(async move {
                        let service = service_fn(move |req| crate::http::handle(shared.clone(), req));
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        // Dropping the listener refuses new connections; aborting the tasks cuts the open ones,
        // watches included, the way a crashed API server would.
        drop(listener);
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    });
    Serving { stop, task }
}

/// A running test API server. Dropping it stops serving.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    serving: Mutex<Option<Serving>>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(s) = self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            s.task.abort();
        }
    }
}

fn meta_str<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

impl ApiServer {
    /// Starts a server with the default configuration.
    pub async fn start() -> std::io::Result<ApiServer> {
        Builder::default().start().await
    }

    /// A builder for a non-default configuration.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig pointing at this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: switchyard-test\n  cluster:\n    server: {}\n\
             users:\n- name: switchyard-test\n  user: {{}}\ncontexts:\n- name: switchyard-test\n  context:\n    \
             cluster: switchyard-test\n    user: switchyard-test\n    namespace: default\n\
             current-context: switchyard-test\n",
            self.url()
        )
    }

    /// Writes [`Self::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    fn to_value<T: Serialize>(obj: &T) -> Result<Value, ApiError> {
        serde_json::to_value(obj)
            .map_err(|e| ApiError::bad_request(format!("object does not serialize: {e}")))
    }

    /// Creates an object (any serializable Kubernetes object with apiVersion and kind).
    /// Returns it as stored, with uid, resourceVersion and timestamps filled in.
    pub fn create<T: Serialize>(&self, obj: &T) -> Result<Value, ApiError> {
        let obj = Self::to_value(obj)?;
        let mut store = self.shared.lock();
        let t = store.resource_of(&obj)?;
        store.create(&t, None, obj).map(|o| (*o).clone())
    }

    /// Replaces an object; a non-empty `metadata.resourceVersion` must match (409 otherwise).
    pub fn update<T: Serialize>(&self, obj: &T) -> Result<Value, ApiError> {
        let obj = Self::to_value(obj)?;
        let mut store = self.shared.lock();
        let t = store.resource_of(&obj)?;
        store
            .update(&t, None, None, obj, true)
            .map(|o| (*o).clone())
    }

    /// Creates the object, or replaces it whatever its resourceVersion.
    pub fn apply<T: Serialize>(&self, obj: &T) -> Result<Value, ApiError> {
        let obj = Self::to_value(obj)?;
        let mut store = self.shared.lock();
        let t = store.resource_of(&obj)?;
        let ns = if t.namespaced {
            Some(meta_str(&obj, "namespace"))
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
        } else {
            ""
        };
        if store.get(&t, ns, meta_str(&obj, "name")).is_ok() {
            store
                .update(&t, None, None, obj, false)
                .map(|o| (*o).clone())
        } else {
            store.create(&t, None, obj).map(|o| (*o).clone())
        }
    }

    fn resource_for(&self, api_version: &str, kind: &str) -> Result<ResourceType, ApiError> {
        let (group, version) = split_api_version(api_version);
        self.shared
            .lock()
            .registry
            .by_kind(&group, &version, kind)
            .cloned()
            .ok_or_else(|| ApiError::bad_request(format!("unknown kind {kind} in {api_version}")))
    }

    /// Deletes an object by apiVersion, kind, namespace ("" when cluster scoped) and name.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let t = self.resource_for(api_version, kind)?;
        self.shared
            .lock()
            .delete(&t, namespace, name)
            .map(|o| (*o).clone())
    }

    /// Deletes the object `obj` names (its apiVersion, kind, namespace and name).
    pub fn delete_object<T: Serialize>(&self, obj: &T) -> Result<Value, ApiError> {
        let obj = Self::to_value(obj)?;
        let api_version = obj["apiVersion"].as_str().unwrap_or("");
        let kind = obj["kind"].as_str().unwrap_or("");
        let ns = meta_str(&obj, "namespace");
        let ns = if ns.is_empty() { "default" } else { ns };
        let t = self.resource_for(api_version, kind)?;
        let ns = if t.namespaced { ns } else { "" };
        self.shared
            .lock()
            .delete(&t, ns, meta_str(&obj, "name"))
            .map(|o| (*o).clone())
    }

    /// Reads one object.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let t = self.resource_for(api_version, kind)?;
        self.shared
            .lock()
            .get(&t, namespace, name)
            .map(|o| (*o).clone())
    }

    /// Every object of a kind, across namespaces.
    pub fn list(&self, api_version: &str, kind: &str) -> Result<Vec<Value>, ApiError> {
        let t = self.resource_for(api_version, kind)?;
        let (_, items) = self.shared.lock().snapshot(
            &t,
            None,
            &LabelSelector::default(),
            &FieldSelector::default(),
        );
        Ok(items.into_iter().map(|o| (*o).clone()).collect())
    }

    /// Serves another resource type (e.g. a custom resource without creating its CRD).
    pub fn register_resource(&self, t: ResourceType) {
        self.shared.lock().registry.register(t);
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().resource_version()
    }

    /// Drops the event history: the next watch resumed from any earlier resourceVersion, and
    /// any outstanding continue token, gets 410 Gone.
    pub fn compact(&self) {
        self.shared.lock().compact();
    }

    /// Sends an in-stream 410 `Expired` ERROR event to every open watch and ends it.
    pub fn expire_watches(&self) {
        self.shared.lock().expire_watches();
    }

    /// How many watches are open right now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// How many requests of `verb` (list, watch, get, create, update, patch, delete,
    /// deletecollection) were served for `plural`.
    pub fn requests(&self, verb: &str, plural: &str) -> u64 {
        let r = self
            .shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        r.get(&(verb.to_string(), plural.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Every distinct request served since start (verb, group, resource, namespace, or the
    /// non-resource URL), sorted: what a ClusterRole must allow for the client to work.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        let log = self
            .shared
            .request_log
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        log.iter().cloned().collect()
    }

    /// Waits until at least `n` watches are open, up to `timeout`; true if they are.
    pub async fn wait_for_watches(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.open_watches() < n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Simulates the API server going away: closes the port and cuts every open connection.
    /// The objects are kept; [`Self::resume`] serves them again on the same port.
    pub async fn pause(&self) {
        let serving = self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(s) = serving {
            let _ = s.stop.send(true);
            let _ = s.task.await;
        }
    }

    /// Serves again on the same address after [`Self::pause`].
    pub async fn resume(&self) -> std::io::Result<()> {
        if self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return Ok(());
        }
        let mut attempt = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if attempt >= 50 => return Err(e),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let serving = spawn_server(listener, self.shared.clone());
        *self.serving.lock().unwrap_or_else(|e| e.into_inner()) = Some(serving);
        Ok(())
    }

    /// Stops serving for good.
    pub async fn shutdown(self) {
        self.pause().await;
    }

    /// Loads every object from the YAML files in `dir` (multi-document files and `kind: List`
    /// allowed); CustomResourceDefinitions first so their resources are served. Returns the count.
    pub fn load_dir(&self, dir: impl AsRef<Path>) -> Result<usize, crate::LoadError> {
        let objects = crate::manifests::read_dir(dir.as_ref())?;
        let mut count = 0;
        for (source, obj) in objects {
            self.apply(&obj).map_err(|e| crate::LoadError::Rejected {
                origin: source,
                error: Box::new(e),
            })?;
            count += 1;
        }
        Ok(count)
    }
}
