//! The source alone against the in-repo test API server (no network namespaces needed), and
//! its pure parts.

use super::*;

#[test]
fn selectors_follow_kube_proxy() {
    assert_eq!(
        service_label_selector(None),
        "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
    );
    assert_eq!(
        service_label_selector(Some("switchyard")),
        "!service.kubernetes.io/headless"
    );
}

#[test]
fn errors_are_classified() {
    let gone = watcher::Error::WatchError(Box::new(kube::core::Status {
        code: 410,
        reason: "Expired".into(),
        ..Default::default()
    }));
    assert_eq!(classify(&gone), Failure::Expired);
    let forbidden =
        watcher::Error::InitialListFailed(kube::Error::Api(Box::new(kube::core::Status {
            code: 403,
            reason: "Forbidden".into(),
            ..Default::default()
        })));
    assert_eq!(
        classify(&forbidden),
        Failure::Server("403 Forbidden".into())
    );
}

#[test]
fn a_missing_kubeconfig_is_an_error() {
    let err = KubeSource::start(
        ClientConfig::Kubeconfig(Path::new("/nonexistent/kubeconfig")),
        Settings {
            node_name: "node-a".into(),
            proxy_name: None,
            all_nodes: false,
            sdewan: None,
        },
    )
    .err()
    .map(|e| format!("{e:#}"))
    .unwrap_or_default();
    assert!(
        err.contains("--kubeconfig /nonexistent/kubeconfig"),
        "{err}"
    );
}

/// A test API server on this process's loopback, with a runtime of its own (the source runs
/// its own runtime on its own thread, as in the agent).
struct Server {
    runtime: tokio::runtime::Runtime,
    api: switchyard_apiserver::ApiServer,
    _dir: TempDir,
    kubeconfig: std::path::PathBuf,
}

/// A directory removed on drop (no tempfile crate in the agent's dependencies).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Server {
    fn start() -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let api = runtime
            .block_on(switchyard_apiserver::ApiServer::start())
            .expect("API server");
        let dir = std::env::temp_dir().join(format!(
            "switchyard-kube-test-{}-{}",
            std::process::id(),
            api.addr().port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        Server {
            runtime,
            api,
            _dir: TempDir(dir),
            kubeconfig,
        }
    }

    fn source(&self, proxy_name: Option<&str>) -> KubeSource {
        self.source_with(proxy_name, false)
    }

    fn source_with(&self, proxy_name: Option<&str>, all_nodes: bool) -> KubeSource {
        KubeSource::start(
            ClientConfig::Kubeconfig(&self.kubeconfig),
            Settings {
                node_name: "node-a".into(),
                proxy_name: proxy_name.map(Into::into),
                all_nodes,
                sdewan: None,
            },
        )
        .expect("source")
    }
}

fn service(name: &str, labels: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"clusterIP": "198.51.100.10", "ports": [{"port": 80}]}
    })
}

fn node(name: &str) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

/// Waits (up to 10 s) until the source reports a change after which `check` holds of its
/// snapshot.
fn until(source: &mut KubeSource, what: &str, check: impl Fn(&ObjectStore) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let changed = source.wait_change(Duration::from_millis(200));
        let (store, _) = source.snapshot();
        if changed && check(&store) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
    }
}

fn service_names(store: &ObjectStore) -> Vec<&str> {
    store.services.keys().map(|(_, n)| n.as_str()).collect()
}

#[test]
fn lists_watches_relists_and_outlasts_an_outage() {
    let server = Server::start();
    server
        .api
        .create(&service("web", serde_json::json!({})))
        .expect("create");
    let other = serde_json::json!({LABEL_SERVICE_PROXY_NAME: "other"});
    server
        .api
        .create(&service("others", other))
        .expect("create");
    let headless = serde_json::json!({LABEL_HEADLESS: ""});
    server
        .api
        .create(&service("headless", headless))
        .expect("create");
    server.api.create(&node("node-a")).expect("create");
    server.api.create(&node("node-b")).expect("create");
    let mut source = server.source(None);
    assert!(
        source.wait_change(Duration::ZERO),
        "the first call returns at once"
    );
    assert!(source.describe().starts_with("kube http://127.0.0.1:"));

    // The first list: selectors as kube-proxy's, only our Node.
    until(&mut source, "the first list", |s| {
        service_names(s) == ["web"]
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !source.synced() {
        assert!(Instant::now() < deadline, "never synced");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (store, problems) = source.snapshot();
    assert!(problems.is_empty(), "{problems:?}");
    let nodes: Vec<_> = store.nodes.keys().map(|(_, n)| n.as_str()).collect();
    assert_eq!(nodes, ["node-a"]);
    // Nothing new: no change reported.
    assert!(!source.wait_change(Duration::from_millis(300)));

    // Events.
    server
        .api
        .create(&service("api", serde_json::json!({})))
        .expect("create");
    until(&mut source, "an added Service", |s| {
        service_names(s) == ["api", "web"]
    });
    server
        .api
        .delete("v1", "Service", "default", "web")
        .expect("delete");
    until(&mut source, "a deleted Service", |s| {
        service_names(s) == ["api"]
    });

    // A deletion missed while the watch was expired shows after the relist.
    server.api.compact();
    server.api.expire_watches();
    server
        .api
        .delete("v1", "Service", "default", "api")
        .expect("delete");
    server
        .api
        .create(&service("db", serde_json::json!({})))
        .expect("create");
    until(&mut source, "the relist", |s| service_names(s) == ["db"]);

    // The server goes away: the store is kept; a change made meanwhile arrives after.
    server.runtime.block_on(server.api.pause());
    std::thread::sleep(Duration::from_millis(1500));
    let (store, _) = source.snapshot();
    assert_eq!(
        service_names(&store),
        ["db"],
        "the store is kept during an outage"
    );
    assert!(source.synced());
    server
        .api
        .create(&service("late", serde_json::json!({})))
        .expect("create");
    server
        .runtime
        .block_on(server.api.resume())
        .expect("resume");
    until(&mut source, "the change made during the outage", |s| {
        service_names(s) == ["db", "late"]
    });
}

#[test]
fn a_proxy_name_lets_our_services_through() {
    let server = Server::start();
    let ours = serde_json::json!({LABEL_SERVICE_PROXY_NAME: "switchyard"});
    server.api.create(&service("ours", ours)).expect("create");
    server
        .api
        .create(&service("plain", serde_json::json!({})))
        .expect("create");
    let headless = serde_json::json!({LABEL_HEADLESS: ""});
    server
        .api
        .create(&service("headless", headless))
        .expect("create");
    let mut source = server.source(Some("switchyard"));
    // The watch leaves out headless Services but, with a proxy name, not labelled ones: the
    // reducer keeps ours and unlabelled ones, as with manifests.
    until(&mut source, "the first list", |s| {
        service_names(s) == ["ours", "plain"]
    });
}

/// With BGP's mesh every Node is watched, trimmed: a heartbeat (new conditions, a new
/// resourceVersion) changes nothing the agent reads and wakes nobody; an annotation does.
#[test]
fn every_node_for_the_mesh_and_heartbeats_wake_nobody() {
    let server = Server::start();
    let with_status = |name: &str, heartbeat: &str, annotations: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": annotations},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "198.18.0.2"}],
                "conditions": [{"type": "Ready", "status": "True",
                                "lastHeartbeatTime": heartbeat}]
            }
        })
    };
    let none = serde_json::json!({});
    server.api.create(&node("node-a")).expect("create");
    server
        .api
        .create(&with_status("node-b", "2025-01-01T00:00:00Z", none.clone()))
        .expect("create");
    let mut source = server.source_with(None, true);
    until(&mut source, "both Nodes", |s| s.nodes.len() == 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !source.synced() {
        assert!(Instant::now() < deadline, "never synced");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (store, _) = source.snapshot();
    let b = &store.nodes[&(String::new(), "node-b".to_string())];
    assert!(b.metadata.resource_version.is_none(), "{b:?}");
    let status = b.status.as_ref().expect("status");
    assert!(status.conditions.is_none(), "{status:?}");
    assert_eq!(status.addresses.as_ref().map(Vec::len), Some(1));

    server
        .api
        .apply(&with_status("node-b", "2025-01-01T00:00:10Z", none))
        .expect("heartbeat");
    assert!(
        !source.wait_change(Duration::from_millis(700)),
        "a heartbeat must not wake the control plane"
    );
    let peers = serde_json::json!({"kube-router.io/peer.ips": "203.0.113.1"});
    server
        .api
        .apply(&with_status("node-b", "2025-01-01T00:00:20Z", peers))
        .expect("annotate");
    until(&mut source, "the annotation", |s| {
        s.nodes[&(String::new(), "node-b".to_string())]
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("kube-router.io/peer.ips"))
    });
}

/// kube-proxy's informers watch with the selector `!service.kubernetes.io/service-proxy-name,
/// !service.kubernetes.io/headless`, so an object that takes one of those labels later leaves
/// its store (the watch reports it deleted) and comes back when the label goes: a Service and
/// its EndpointSlice handed to another proxy, then back.
#[test]
fn objects_leave_and_return_as_their_labels_change() {
    let server = Server::start();
    let slice = |labels: serde_json::Value| {
        let mut l = serde_json::json!({crate::agent::reduce::LABEL_SERVICE_NAME: "web"});
        if let (Some(l), Some(extra)) = (l.as_object_mut(), labels.as_object()) {
            l.extend(extra.clone());
        }
        serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "default", "labels": l},
            "addressType": "IPv4",
            "ports": [{"name": "", "protocol": "TCP", "port": 8080}],
            "endpoints": [{"addresses": ["198.18.2.3"]}]
        })
    };
    let none = serde_json::json!({});
    server
        .api
        .create(&service("web", none.clone()))
        .expect("create");
    server.api.create(&slice(none.clone())).expect("create");
    let mut source = server.source(None);
    until(&mut source, "the first list", |s| {
        service_names(s) == ["web"] && s.endpoint_slices.len() == 1
    });
    for label in [
        serde_json::json!({LABEL_SERVICE_PROXY_NAME: "someone-else"}),
        serde_json::json!({LABEL_HEADLESS: ""}),
    ] {
        server
            .api
            .update(&service("web", label.clone()))
            .expect("update");
        server.api.update(&slice(label.clone())).expect("update");
        until(&mut source, &format!("objects labelled {label}"), |s| {
            s.services.is_empty() && s.endpoint_slices.is_empty()
        });
        server
            .api
            .update(&service("web", none.clone()))
            .expect("update");
        server.api.update(&slice(none.clone())).expect("update");
        until(&mut source, "the label gone", |s| {
            service_names(s) == ["web"] && s.endpoint_slices.len() == 1
        });
    }
}
