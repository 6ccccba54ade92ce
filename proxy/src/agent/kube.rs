//! The Kubernetes API cluster source: kube-runtime watchers feeding an [`ObjectStore`].
//!
//! A tokio runtime on a thread of its own runs one [`watcher`] per kind (Services,
//! EndpointSlices, NetworkPolicies, Nodes, Pods, Namespaces), each with kube-runtime's
//! default backoff policy. Events go into one shared [`WatchState`] (see [`state`] for how a relist
//! replaces a kind's objects) and wake the control plane, which reads the store and never
//! looks at events.
//!
//! # What is watched
//!
//! As kube-proxy's informers: Services and EndpointSlices without the
//! `service.kubernetes.io/headless` label and, when no `--service-proxy-name` is given,
//! without the `service.kubernetes.io/service-proxy-name` label. With a proxy name the server
//! cannot be asked for "unlabelled or labelled with our name" in one selector, so the proxy-name
//! label is left to the reducer, which applies the same rule to both sources. Only our own Node
//! (`metadata.name=NODE`), unless BGP's iBGP mesh needs every Node's address and annotations.
//! All NetworkPolicies, Pods and Namespaces (policy needs their labels and addresses).
//!
//! Nodes are stored trimmed to what the agent reads ([`trim_node`]). Every kubelet rewrites its
//! Node's status on each heartbeat; trimmed, such an update equals what the store holds and is
//! dropped there ([`state::WatchState`] ignores an `Apply` that changes nothing), so watching
//! every Node costs one decode per heartbeat, not a sync of the dataplane tables.
//!
//! # When the API server goes away
//!
//! The store is never flushed: the last programmed tables keep forwarding. Watchers retry
//! with kube-runtime's default backoff, resuming from their last resourceVersion; a
//! `410 Gone` makes kube-runtime relist, and the relist replaces the kind's objects only once
//! complete. The outage is logged once when it starts and once when the server answers again
//! (kube-client's own per-request warnings are left out of the agent's log: they would repeat
//! on every retry). Meanwhile a cheap `/version` probe runs every 2 s at most, so the return is
//! noticed even on a quiet cluster, and it cuts short the watchers' backoff (which may have
//! grown to 30 s). An error the server itself returns (403 for a missing RBAC rule, ...) is
//! logged once per kind and kind of error.
//!
//! # Readiness
//!
//! [`Source::synced`] is true once every watcher has completed its first list. Changes are
//! passed on to the control plane once Services and EndpointSlices have been listed (what the
//! Service tables are built from, as kube-proxy waits for them), so the first tables
//! programmed hold every Service with its endpoints, not a partial list.

pub mod state;

use std::fmt::Debug;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::utils::Backoff as _;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client};
use serde::de::DeserializeOwned;

use super::objects::{Change, Object, ObjectKind, ObjectStore};
use super::reduce::{LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME};
use super::Source;
use state::{WatchEvent, WatchState};

/// Where the client configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientConfig<'a> {
    /// A kubeconfig file (`--kubeconfig`), its current context.
    Kubeconfig(&'a Path),
    /// The pod's service account (`KUBERNETES_SERVICE_HOST` and the mounted token).
    InCluster,
}

/// What to watch for whom.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Our node: only its Node object is watched, unless `all_nodes`.
    pub node_name: String,
    /// `--service-proxy-name`.
    pub proxy_name: Option<String>,
    /// Watch every Node (BGP's iBGP mesh peers with them).
    pub all_nodes: bool,
    /// Also watch the SD-EWAN IPsec resources (`--sdewan-purpose`).
    pub sdewan: Option<crate::ipsec::kube::SdewanWatch>,
}

/// The Kubernetes API source (see the module documentation).
pub struct KubeSource {
    shared: Arc<Shared>,
    url: String,
    /// The generation the last snapshot was taken at; `None` before the first.
    seen: Option<u64>,
    /// `wait_change` has not been called yet (the first call returns at once).
    first: bool,
}

/// The state shared by the watchers and the control plane.
struct Shared {
    state: Mutex<Inner>,
    changed: Condvar,
}

struct Inner {
    watch: WatchState,
    /// Whether the API server answered last time we heard from it.
    reachable: bool,
    /// Kinds whose watch fails with an error from the server, and that error's summary.
    failing: std::collections::BTreeMap<ObjectKind, String>,
    /// Objects the store refused, by kind (replaced as events come).
    problems: std::collections::BTreeMap<ObjectKind, Vec<String>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is complete before the guard drops, so a poisoned lock is still sound.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl KubeSource {
    /// Reads the client configuration (errors here are the agent's startup errors) and starts
    /// the watchers on a runtime thread of their own.
    pub fn start(config: ClientConfig<'_>, settings: Settings) -> anyhow::Result<KubeSource> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("kube-watch")
            .build()
            .context("starting the Kubernetes client runtime")?;
        let config = match config {
            ClientConfig::Kubeconfig(path) => {
                let flag = || format!("--kubeconfig {}", path.display());
                // Read once here for a plain message; kube reads it again to resolve the
                // certificate paths in it relative to its directory.
                std::fs::File::open(path)
                    .map_err(|e| anyhow::anyhow!("{}: cannot read the file: {e}", flag()))?;
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|e| anyhow::anyhow!("{}: {}", flag(), one_line(&e)))?;
                runtime
                    .block_on(kube::Config::from_custom_kubeconfig(
                        kubeconfig,
                        &KubeConfigOptions::default(),
                    ))
                    .map_err(|e| anyhow::anyhow!("{}: {}", flag(), one_line(&e)))?
            }
            ClientConfig::InCluster => kube::Config::incluster().map_err(|e| {
                anyhow::anyhow!(
                    "in-cluster Kubernetes configuration (or give --kubeconfig or --manifests): {}",
                    one_line(&e)
                )
            })?,
        };
        let url = config.cluster_url.to_string();
        let client = {
            // The client's request buffer is a task: it needs the runtime to spawn on.
            let _entered = runtime.enter();
            Client::try_from(config).context("Kubernetes client")?
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(Inner {
                watch: WatchState::default(),
                reachable: true,
                failing: Default::default(),
                problems: Default::default(),
            }),
            changed: Condvar::new(),
        });
        let for_watchers = Arc::clone(&shared);
        // Detached: the process ends when the dataplane does; nothing here needs draining.
        let quiet = tracing::Dispatch::new(QuietClientLogs(tracing::dispatcher::get_default(
            tracing::Dispatch::clone,
        )));
        std::thread::Builder::new()
            .name("kube-watch".into())
            .spawn(move || {
                // The runtime has this one thread, so every task of the client logs through
                // `quiet`.
                tracing::dispatcher::with_default(&quiet, || {
                    runtime.block_on(watch_all(client, settings, for_watchers))
                })
            })
            .context("starting the Kubernetes watcher thread")?;
        tracing::info!(server = %url, "watching the Kubernetes API");
        Ok(KubeSource {
            shared,
            url,
            seen: None,
            first: true,
        })
    }
}

impl Source for KubeSource {
    fn describe(&self) -> String {
        format!("kube {}", self.url)
    }

    fn wait_change(&mut self, timeout: Duration) -> bool {
        if std::mem::take(&mut self.first) {
            return true;
        }
        let deadline = Instant::now() + timeout;
        let mut inner = self.shared.lock();
        loop {
            if ready_to_program(&inner.watch) && Some(inner.watch.generation) != self.seen {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            inner = self
                .shared
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn snapshot(&mut self) -> (ObjectStore, Vec<String>) {
        let inner = self.shared.lock();
        self.seen = Some(inner.watch.generation);
        let problems = inner.problems.values().flatten().cloned().collect();
        (inner.watch.store.clone(), problems)
    }

    fn changes(&mut self) -> (Vec<Change>, Vec<String>) {
        let mut inner = self.shared.lock();
        self.seen = Some(inner.watch.generation);
        let problems = inner.problems.values().flatten().cloned().collect();
        (inner.watch.take_changes(), problems)
    }

    fn synced(&self) -> bool {
        self.shared.lock().watch.all_synced()
    }
}

/// The first line of an error's message: kube's errors already include their source's, and
/// some (YAML errors) add a multi-line excerpt.
fn one_line(error: &dyn std::error::Error) -> String {
    error
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The agent's log subscriber less kube-client's own warnings and errors, which come once
/// per failed request (every retry while the API server is away); the watchers log each
/// change of state themselves, with the error. Its debug lines still pass.
struct QuietClientLogs(tracing::Dispatch);

impl QuietClientLogs {
    fn per_request(meta: &tracing::Metadata<'_>) -> bool {
        meta.is_event()
            && meta.target().starts_with("kube_client")
            && *meta.level() <= tracing::Level::WARN
    }
}

impl tracing::Subscriber for QuietClientLogs {
    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if Self::per_request(meta) {
            tracing::subscriber::Interest::never()
        } else {
            self.0.register_callsite(meta)
        }
    }

    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        !Self::per_request(meta) && self.0.enabled(meta)
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        self.0.new_span(span)
    }

    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        self.0.record(span, values)
    }

    fn record_follows_from(&self, span: &tracing::span::Id, follows: &tracing::span::Id) {
        self.0.record_follows_from(span, follows)
    }

    fn event(&self, event: &tracing::Event<'_>) {
        self.0.event(event)
    }

    fn enter(&self, span: &tracing::span::Id) {
        self.0.enter(span)
    }

    fn exit(&self, span: &tracing::span::Id) {
        self.0.exit(span)
    }

    fn clone_span(&self, id: &tracing::span::Id) -> tracing::span::Id {
        self.0.clone_span(id)
    }

    fn try_close(&self, id: tracing::span::Id) -> bool {
        self.0.try_close(id)
    }
}

/// True once the kinds the Service tables are built from have been listed.
fn ready_to_program(watch: &WatchState) -> bool {
    watch.is_synced(ObjectKind::Service) && watch.is_synced(ObjectKind::EndpointSlice)
}

/// The label selector for Services and EndpointSlices (see the module documentation).
pub fn service_label_selector(proxy_name: Option<&str>) -> String {
    match proxy_name {
        None => format!("!{LABEL_SERVICE_PROXY_NAME},!{LABEL_HEADLESS}"),
        Some(_) => format!("!{LABEL_HEADLESS}"),
    }
}

/// Runs every watcher (and the reachability probe) until the process ends.
async fn watch_all(client: Client, settings: Settings, shared: Arc<Shared>) {
    let services =
        watcher::Config::default().labels(&service_label_selector(settings.proxy_name.as_deref()));
    let node = if settings.all_nodes {
        watcher::Config::default()
    } else {
        watcher::Config::default().fields(&format!("metadata.name={}", settings.node_name))
    };
    let all = watcher::Config::default;
    let sdewan = settings
        .sdewan
        .clone()
        .map(|s| tokio::spawn(crate::ipsec::kube::watch_sdewan(client.clone(), s)));
    // Ticks when the API server answers again after an outage.
    let (reconnected, _) = tokio::sync::watch::channel(0u64);
    let link = Link {
        client: client.clone(),
        shared: Arc::clone(&shared),
        reconnected: reconnected.clone(),
    };
    let tasks = vec![
        tokio::spawn(watch_kind(
            Api::<Service>::all(client.clone()),
            services.clone(),
            ObjectKind::Service,
            |o| Object::Service(Box::new(o)),
            link.clone(),
        )),
        tokio::spawn(watch_kind(
            Api::<EndpointSlice>::all(client.clone()),
            services,
            ObjectKind::EndpointSlice,
            |o| Object::EndpointSlice(Box::new(o)),
            link.clone(),
        )),
        tokio::spawn(watch_kind(
            Api::<NetworkPolicy>::all(client.clone()),
            all(),
            ObjectKind::NetworkPolicy,
            |o| Object::NetworkPolicy(Box::new(o)),
            link.clone(),
        )),
        tokio::spawn(watch_kind(
            Api::<Node>::all(client.clone()),
            node,
            ObjectKind::Node,
            |o| Object::Node(Box::new(trim_node(o))),
            link.clone(),
        )),
        tokio::spawn(watch_kind(
            Api::<Pod>::all(client.clone()),
            all(),
            ObjectKind::Pod,
            |o| Object::Pod(Box::new(o)),
            link.clone(),
        )),
        tokio::spawn(watch_kind(
            Api::<Namespace>::all(client),
            all(),
            ObjectKind::Namespace,
            |o| Object::Namespace(Box::new(o)),
            link,
        )),
    ];
    for task in tasks.into_iter().chain(sdewan) {
        // A watcher only ends by panicking, which the agent's code does not do; say so if it
        // ever happens, since that kind then stops updating.
        if let Err(e) = task.await {
            tracing::error!(error = %e, "a Kubernetes watcher stopped");
        }
    }
}

/// What a watcher needs to report on the connection.
#[derive(Clone)]
struct Link {
    client: Client,
    shared: Arc<Shared>,
    reconnected: tokio::sync::watch::Sender<u64>,
}

/// Why a watch failed, as far as what we do about it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Failure {
    /// `410 Gone`: kube-runtime relists; routine.
    Expired,
    /// The server could not be reached (refused, reset, timed out, TLS).
    Unreachable,
    /// The server answered with an error (its code and reason), or the answer was unreadable.
    Server(String),
}

fn classify(error: &watcher::Error) -> Failure {
    let client_error = match error {
        watcher::Error::WatchError(status) => return status_failure(status.code, &status.reason),
        watcher::Error::NoResourceVersion => return Failure::Server(error.to_string()),
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
    };
    match client_error {
        kube::Error::Api(status) => status_failure(status.code, &status.reason),
        kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::ReadEvents(_)
        | kube::Error::RustlsTls(_) => Failure::Unreachable,
        other => Failure::Server(other.to_string()),
    }
}

fn status_failure(code: u16, reason: &str) -> Failure {
    if code == 410 {
        Failure::Expired
    } else {
        Failure::Server(format!("{code} {reason}"))
    }
}

/// Least time between two relists after `410 Gone` done without waiting for the backoff.
const QUICK_RELIST_EVERY: Duration = Duration::from_secs(30);

/// Watches one kind until the process ends.
///
/// The backoff is kube-runtime's default policy ([`watcher::DefaultBackoff`]: 0.8 s doubling
/// to 30 s, with jitter, reset after two quiet minutes), driven here rather than through
/// `WatchStreamExt::default_backoff` so that the wait can end early when the probe sees the
/// API server back: the watcher then resumes from its last resourceVersion at once (no
/// relist unless the server says 410) instead of sleeping out up to 30 s.
async fn watch_kind<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: ObjectKind,
    wrap: fn(K) -> Object,
    link: Link,
) where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut reconnected = link.reconnected.subscribe();
    let mut backoff = watcher::DefaultBackoff::default();
    let mut last_quick_relist: Option<Instant> = None;
    let mut stream = watcher(api, config).boxed();
    // The watcher stream never ends.
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                let event = convert(event, wrap);
                // `Init` comes before the list request: it proves no contact, and resetting
                // on it would keep the backoff short while every list fails.
                if !matches!(event, WatchEvent::Init) {
                    backoff.reset();
                }
                link.on_event(kind, event);
            }
            Err(e) => {
                let failure = classify(&e);
                let unreachable = failure == Failure::Unreachable;
                // A 410 is routine (the watch fell behind the server's history): relist at
                // once, unless that was done lately (then a server that keeps answering 410
                // gets the backoff).
                let quick = failure == Failure::Expired
                    && last_quick_relist.is_none_or(|t| t.elapsed() > QUICK_RELIST_EVERY);
                link.on_error(kind, &e, failure);
                if quick {
                    last_quick_relist = Some(Instant::now());
                    continue;
                }
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                tracing::debug!(%kind, ?delay, "backing off");
                // Only a return seen from now on ends the wait early.
                reconnected.borrow_and_update();
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    // Never an error: `link` holds the sender.
                    Ok(()) = reconnected.changed(), if unreachable => {
                        tracing::debug!(%kind, "API server back: resuming the watch now");
                    }
                }
            }
        }
    }
}

/// The parts of a Node the agent reads: name, labels (zone), annotations (BGP), deletion
/// timestamp and taints (load-balancer eligibility), pod CIDRs and addresses. The rest
/// (conditions with their heartbeat times, images, resourceVersion, managedFields) changes on
/// every heartbeat and is read by nobody.
pub fn trim_node(node: Node) -> Node {
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let meta = node.metadata;
    Node {
        metadata: ObjectMeta {
            name: meta.name,
            labels: meta.labels,
            annotations: meta.annotations,
            deletion_timestamp: meta.deletion_timestamp,
            ..ObjectMeta::default()
        },
        spec: node.spec.map(|s| NodeSpec {
            pod_cidr: s.pod_cidr,
            pod_cidrs: s.pod_cidrs,
            taints: s.taints,
            ..NodeSpec::default()
        }),
        status: node.status.map(|s| NodeStatus {
            addresses: s.addresses,
            ..NodeStatus::default()
        }),
    }
}

fn convert<K>(event: watcher::Event<K>, wrap: fn(K) -> Object) -> WatchEvent {
    match event {
        watcher::Event::Apply(o) => WatchEvent::Apply(wrap(o)),
        watcher::Event::Delete(o) => WatchEvent::Delete(wrap(o)),
        watcher::Event::Init => WatchEvent::Init,
        watcher::Event::InitApply(o) => WatchEvent::InitApply(wrap(o)),
        watcher::Event::InitDone => WatchEvent::InitDone,
    }
}

impl Link {
    fn on_event(&self, kind: ObjectKind, event: WatchEvent) {
        let starts_list = matches!(event, WatchEvent::Init);
        let mut inner = self.shared.lock();
        let before = inner.watch.generation;
        let problem = inner.watch.apply(kind, event);
        if starts_list {
            inner.problems.remove(&kind);
        }
        if let Some(p) = problem {
            tracing::warn!(%kind, problem = %p, "object from the API skipped");
            inner.problems.entry(kind).or_default().push(p);
        }
        // Every event but `Init` (sent before the list request) came from the server.
        if !starts_list {
            if !inner.reachable {
                inner.reachable = true;
                tracing::info!("Kubernetes API reachable again; resyncing");
            }
            if inner.failing.remove(&kind).is_some() {
                tracing::info!(%kind, "watch recovered");
            }
        }
        if inner.watch.generation != before {
            self.shared.changed.notify_all();
        }
    }

    fn on_error(&self, kind: ObjectKind, error: &watcher::Error, failure: Failure) {
        let mut inner = self.shared.lock();
        match failure {
            Failure::Expired => {
                tracing::debug!(%kind, "watch expired (410 Gone); relisting");
            }
            Failure::Unreachable => {
                if inner.reachable {
                    inner.reachable = false;
                    tracing::warn!(
                        %kind,
                        error = %error,
                        "Kubernetes API unreachable; keeping the last objects and tables, \
                         retrying with backoff"
                    );
                    tokio::spawn(self.clone().probe());
                } else {
                    tracing::debug!(%kind, error = %error, "Kubernetes API still unreachable");
                }
            }
            Failure::Server(summary) => {
                if inner.failing.get(&kind) != Some(&summary) {
                    tracing::warn!(
                        %kind,
                        error = %error,
                        "watch failing; keeping the last objects, retrying with backoff"
                    );
                    inner.failing.insert(kind, summary);
                } else {
                    tracing::debug!(%kind, error = %error, "watch still failing");
                }
            }
        }
    }

    /// Asks the server for its version until it answers, then marks it reachable and tells the
    /// watchers that lost it to start again.
    async fn probe(self) {
        let mut delay = Duration::from_millis(250);
        loop {
            tokio::time::sleep(delay).await;
            if self.shared.lock().reachable {
                // A watcher got through first.
                break;
            }
            if self.client.apiserver_version().await.is_ok() {
                let mut inner = self.shared.lock();
                if !inner.reachable {
                    inner.reachable = true;
                    tracing::info!("Kubernetes API reachable again; resyncing");
                }
                break;
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        self.reconnected.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests;
