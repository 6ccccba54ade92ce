//! The test API server against the real kube-rs client and runtime.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, VersionMatch, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchyard_apiserver::ApiServer;

const WAIT: Duration = Duration::from_secs(10);

async fn client_for(server: &ApiServer) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn service(ns: &str, name: &str, labels: &[(&str, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("198.18.0.10".into()),
            ports: Some(vec![ServicePort {
                port: 80,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn names<K: ResourceExt>(items: impl IntoIterator<Item = K>) -> Vec<String> {
    let mut v: Vec<String> = items.into_iter().map(|o| o.name_any()).collect();
    v.sort();
    v
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn api_status(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn version_and_discovery() {
    let server = ApiServer::start().await.unwrap();
    let client = client_for(&server).await;
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    let discovery = kube::Discovery::new(client).run().await.unwrap();
    assert!(discovery.has_group("discovery.k8s.io"));
    assert!(discovery.has_group("networking.k8s.io"));
    let core = discovery.get("").unwrap();
    assert!(core
        .resources_by_stability()
        .iter()
        .any(|(r, _)| r.plural == "services"));
}

#[tokio::test]
async fn list_pages_namespaced_and_cluster_wide() {
    let server = ApiServer::start().await.unwrap();
    for i in 0..23 {
        let ns = if i % 2 == 0 { "a" } else { "b" };
        server
            .create(&service(ns, &format!("svc-{i:02}"), &[]))
            .unwrap();
    }
    server
        .create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}))
        .unwrap();
    server
        .create(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}))
        .unwrap();
    let client = client_for(&server).await;

    let all: Api<Service> = Api::all(client.clone());
    let first = all.list(&ListParams::default().limit(10)).await.unwrap();
    assert_eq!(first.items.len(), 10);
    assert_eq!(first.metadata.remaining_item_count, Some(13));
    let snapshot_rv = first.metadata.resource_version.clone().unwrap();
    // A change between pages is not seen by the rest of this list.
    server.create(&service("a", "svc-zz", &[])).unwrap();
    let mut seen = names(first.items);
    let mut token = first.metadata.continue_;
    while let Some(t) = token {
        let page = all
            .list(&ListParams::default().limit(10).continue_token(&t))
            .await
            .unwrap();
        assert_eq!(
            page.metadata.resource_version.as_deref(),
            Some(snapshot_rv.as_str())
        );
        seen.extend(names(page.items));
        token = page.metadata.continue_;
    }
    assert_eq!(seen.len(), 23);
    assert!(!seen.contains(&"svc-zz".to_string()));

    let in_a: Api<Service> = Api::namespaced(client.clone(), "a");
    let listed = in_a.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 13);
    assert!(listed
        .items
        .iter()
        .all(|s| s.namespace().as_deref() == Some("a")));
    let one = in_a.get("svc-00").await.unwrap();
    assert!(one.metadata.uid.is_some());
    assert!(one.metadata.creation_timestamp.is_some());

    // Exact list at the old snapshot, and any-version list.
    let exact = all
        .list(
            &ListParams::default()
                .at(&snapshot_rv)
                .matching(VersionMatch::Exact),
        )
        .await
        .unwrap();
    assert_eq!(exact.items.len(), 23);
    let any = all.list(&ListParams::default().match_any()).await.unwrap();
    assert_eq!(any.items.len(), 24);

    let nodes: Api<Node> = Api::all(client.clone());
    assert_eq!(
        names(nodes.list(&ListParams::default()).await.unwrap()),
        vec!["node-1"]
    );
    assert_eq!(nodes.get("node-1").await.unwrap().name_any(), "node-1");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert_eq!(namespaces.get("a").await.unwrap().name_any(), "a");

    // A continue token older than the retained history is 410 Expired, with a fresh token.
    let page = all.list(&ListParams::default().limit(5)).await.unwrap();
    server.compact();
    let token = page.metadata.continue_.unwrap();
    let err = all
        .list(&ListParams::default().limit(5).continue_token(&token))
        .await
        .unwrap_err();
    assert_eq!(api_status(err), (410, "Expired".to_string()));
}

#[tokio::test]
async fn watcher_sees_added_modified_deleted() {
    let server = ApiServer::start().await.unwrap();
    server.create(&service("a", "before", &[])).unwrap();
    let client = client_for(&server).await;
    let api: Api<Service> = Api::namespaced(client, "a");
    let mut events = watcher(api, watcher::Config::default()).boxed();

    let mut init = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::Init => {}
            watcher::Event::InitApply(s) => init.push(s.name_any()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(init, vec!["before"]);
    // The watch is opened on the next poll, from the list's resourceVersion: these changes are
    // replayed from the history.

    let created = server.create(&service("a", "web", &[])).unwrap();
    server.create(&service("b", "elsewhere", &[])).unwrap();
    let mut changed = created.clone();
    changed["spec"]["ports"][0]["port"] = json!(8080);
    server.update(&changed).unwrap();
    server.delete("v1", "Service", "a", "web").unwrap();

    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(WAIT, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::Apply(s) => {
                let port = s
                    .spec
                    .as_ref()
                    .and_then(|sp| sp.ports.as_ref())
                    .map(|p| p[0].port);
                seen.push(format!("apply {} {:?}", s.name_any(), port));
            }
            watcher::Event::Delete(s) => seen.push(format!("delete {}", s.name_any())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        vec!["apply web Some(80)", "apply web Some(8080)", "delete web"]
    );
}

#[tokio::test]
async fn reflector_relists_after_compaction_and_expiry() {
    let server = ApiServer::start().await.unwrap();
    for i in 0..5 {
        server.create(&service("a", &format!("s{i}"), &[])).unwrap();
    }
    let client = client_for(&server).await;
    let api: Api<Service> = Api::all(client);
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().page_size(2))
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    tokio::time::timeout(WAIT, reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names(reader.state().iter().map(|s| (**s).clone())).len(), 5);
    assert!(server.wait_for_watches(1, WAIT).await);
    let lists_before = server.requests("list", "services");

    // In-stream 410: the open watch is ended with an ERROR event; the watcher relists.
    server.expire_watches();
    server.delete("v1", "Service", "a", "s0").unwrap();
    server.create(&service("a", "s5", &[])).unwrap();
    eventually("relist after expiry", || {
        server.requests("list", "services") > lists_before
    })
    .await;
    let expected: Vec<String> = ["s1", "s2", "s3", "s4", "s5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    eventually("store after expiry", || {
        names(reader.state().iter().map(|s| (**s).clone())) == expected
    })
    .await;

    // Server goes away; changes happen and history is compacted; the resumed watch gets 410.
    assert!(server.wait_for_watches(1, WAIT).await);
    let lists_before = server.requests("list", "services");
    server.pause().await;
    server.delete("v1", "Service", "a", "s1").unwrap();
    server.create(&service("b", "s6", &[])).unwrap();
    server.compact();
    server.resume().await.unwrap();
    eventually("relist after compaction", || {
        server.requests("list", "services") > lists_before
    })
    .await;
    let expected: Vec<String> = ["s2", "s3", "s4", "s5", "s6"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    eventually("store after compaction", || {
        names(reader.state().iter().map(|s| (**s).clone())) == expected
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn raw_watch_bookmarks_timeout_and_in_stream_410() {
    let server = ApiServer::builder()
        .bookmark_interval(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    server.create(&service("a", "x", &[])).unwrap();
    let client = client_for(&server).await;
    let api: Api<Service> = Api::namespaced(client, "a");
    let rv = server.resource_version().to_string();

    // Bookmarks carry the current resourceVersion; timeoutSeconds ends the stream.
    let started = std::time::Instant::now();
    let stream = api
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .unwrap();
    server.create(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "a"}})).unwrap();
    let events: Vec<_> = stream.try_collect().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let last_bookmark = events
        .iter()
        .rev()
        .find_map(|e| match e {
            WatchEvent::Bookmark(b) => Some(b.metadata.resource_version.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(last_bookmark, server.resource_version().to_string());
    assert!(events.iter().all(|e| matches!(e, WatchEvent::Bookmark(_))));

    // Resuming from a compacted resourceVersion: HTTP 200 and an ERROR event with 410 Expired.
    server.compact();
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }
    assert!(stream.try_next().await.unwrap().is_none());

    // Resuming from a current resourceVersion replays what followed it.
    let from = server.resource_version().to_string();
    server.create(&service("a", "y", &[])).unwrap();
    let mut stream = api
        .watch(&WatchParams::default().disable_bookmarks(), &from)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Added(s)) => assert_eq!(s.name_any(), "y"),
        other => panic!("expected ADDED, got {other:?}"),
    }
}

#[tokio::test]
async fn selectors_on_list_and_watch() {
    let server = ApiServer::start().await.unwrap();
    server
        .create(&service("a", "web", &[("app", "web"), ("tier", "front")]))
        .unwrap();
    server
        .create(&service("a", "db", &[("app", "db")]))
        .unwrap();
    server.create(&service("a", "bare", &[])).unwrap();
    let client = client_for(&server).await;
    let api: Api<Service> = Api::namespaced(client.clone(), "a");
    let list = |sel: &str| {
        let api = api.clone();
        let sel = sel.to_string();
        async move { names(api.list(&ListParams::default().labels(&sel)).await.unwrap()) }
    };
    assert_eq!(list("app=web").await, vec!["web"]);
    assert_eq!(list("app==db").await, vec!["db"]);
    assert_eq!(list("app!=web").await, vec!["bare", "db"]);
    assert_eq!(list("app in (web,db)").await, vec!["db", "web"]);
    assert_eq!(list("app notin (web)").await, vec!["bare", "db"]);
    assert_eq!(list("tier").await, vec!["web"]);
    assert_eq!(list("!app").await, vec!["bare"]);
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=db"))
        .await
        .unwrap();
    assert_eq!(names(by_name), vec!["db"]);
    let all: Api<Service> = Api::all(client.clone());
    let by_ns = all
        .list(&ListParams::default().fields("metadata.namespace!=a"))
        .await
        .unwrap();
    assert!(by_ns.items.is_empty());

    let err = api
        .list(&ListParams::default().labels("app in web"))
        .await
        .unwrap_err();
    assert_eq!(api_status(err).0, 400);
    let err = api
        .list(&ListParams::default().fields("spec.nope=1"))
        .await
        .unwrap_err();
    assert_eq!(api_status(err).0, 400);

    // Pods by node, as a node agent watches them.
    let pod = |name: &str, node: &str| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "a"}, "spec": {"nodeName": node, "containers": []}});
    server.create(&pod("p1", "n1")).unwrap();
    server.create(&pod("p2", "n2")).unwrap();
    let pods: Api<Pod> = Api::all(client.clone());
    assert_eq!(
        names(
            pods.list(&ListParams::default().fields("spec.nodeName=n1"))
                .await
                .unwrap()
        ),
        vec!["p1"]
    );

    // A watch with a selector: an object leaving the selection is DELETED, entering is ADDED.
    let rv = server.resource_version().to_string();
    let mut stream = api
        .watch(
            &WatchParams::default().labels("app=web").disable_bookmarks(),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    let mut web = server.get("v1", "Service", "a", "web").unwrap();
    web["metadata"]["labels"]["app"] = json!("old");
    server.update(&web).unwrap();
    let mut db = server.get("v1", "Service", "a", "db").unwrap();
    db["metadata"]["labels"]["app"] = json!("web");
    server.update(&db).unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(WAIT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Deleted(s)) => got.push(format!("deleted {}", s.name_any())),
            Some(WatchEvent::Added(s)) => got.push(format!("added {}", s.name_any())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, vec!["deleted web", "added db"]);
}

#[tokio::test]
async fn writes_through_the_client_and_their_errors() {
    let server = ApiServer::start().await.unwrap();
    let client = client_for(&server).await;
    let api: Api<Service> = Api::namespaced(client.clone(), "a");
    let created = api
        .create(&PostParams::default(), &service("a", "s", &[]))
        .await
        .unwrap();
    let err = api
        .create(&PostParams::default(), &service("a", "s", &[]))
        .await
        .unwrap_err();
    assert_eq!(api_status(err), (409, "AlreadyExists".to_string()));

    let mut stale = created.clone();
    stale.metadata.resource_version = Some("1".into());
    let err = api
        .replace("s", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(api_status(err), (409, "Conflict".to_string()));
    let mut fresh = created.clone();
    fresh.spec.as_mut().unwrap().cluster_ip = Some("198.18.0.11".into());
    let replaced = api
        .replace("s", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(replaced.metadata.uid, created.metadata.uid);

    let patch = json!({"metadata": {"labels": {"patched": "yes"}}});
    let patched = api
        .patch("s", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(
        patched.labels().get("patched").map(String::as_str),
        Some("yes")
    );
    let applied = api
        .patch(
            "t",
            &PatchParams::apply("test"),
            &Patch::Apply(&service("a", "t", &[])),
        )
        .await
        .unwrap();
    assert_eq!(applied.name_any(), "t");

    let err = api.get("missing").await.unwrap_err();
    assert_eq!(api_status(err), (404, "NotFound".to_string()));
    api.delete("s", &DeleteParams::default()).await.unwrap();
    let err = api.delete("s", &DeleteParams::default()).await.unwrap_err();
    assert_eq!(api_status(err).0, 404);
    assert!(server.get("v1", "Service", "a", "s").is_err());
}

#[tokio::test]
async fn custom_resources_endpointslices_and_policies() {
    let server = ApiServer::start().await.unwrap();
    server
        .create(&json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "ipsecsites.batch.sdewan.akraino.org"},
            "spec": {
                "group": "batch.sdewan.akraino.org",
                "scope": "Namespaced",
                "names": {"plural": "ipsecsites", "singular": "ipsecsite", "kind": "IpsecSite"},
                "versions": [{"name": "v1alpha1", "served": true, "storage": true}]
            }
        }))
        .unwrap();
    server
        .create(&json!({
            "apiVersion": "batch.sdewan.akraino.org/v1alpha1",
            "kind": "IpsecSite",
            "metadata": {"name": "site-a", "namespace": "default", "labels": {"sdewanPurpose": "cnf1"}},
            "spec": {"remote": "203.0.113.1", "pskey": "secret"}
        }))
        .unwrap();
    server
        .create(&json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "a", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["198.18.1.1"], "conditions": {"ready": true}}],
            "ports": [{"port": 8080, "protocol": "TCP"}]
        }))
        .unwrap();
    server
        .create(&json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "deny", "namespace": "a"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
        }))
        .unwrap();
    let client = client_for(&server).await;

    let gvk = GroupVersionKind::gvk("batch.sdewan.akraino.org", "v1alpha1", "IpsecSite");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "ipsecsites");
    let sites: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let listed = sites
        .list(&ListParams::default().labels("sdewanPurpose=cnf1"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].data["spec"]["remote"], "203.0.113.1");
    let all_sites: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    assert_eq!(
        all_sites
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    let slices: Api<EndpointSlice> = Api::all(client.clone());
    let listed = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap();
    assert_eq!(listed.items[0].endpoints[0].addresses, vec!["198.18.1.1"]);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), "a");
    assert_eq!(
        names(policies.list(&ListParams::default()).await.unwrap()),
        vec!["deny"]
    );

    // The streaming-list watcher (sendInitialEvents) works too.
    let (reader, writer) = reflector::store();
    let stream = watcher(slices, watcher::Config::default().streaming_lists())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    tokio::time::timeout(WAIT, reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reader.state().len(), 1);
    task.abort();
}

#[tokio::test]
async fn loads_a_manifest_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: one\n  namespace: a\nspec:\n  clusterIP: 198.18.0.1\n---\n\
         apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: a\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("ignored.txt"), "not yaml").unwrap();
    let server = ApiServer::start().await.unwrap();
    assert_eq!(server.load_dir(dir.path()).unwrap(), 2);
    assert_eq!(server.list("v1", "Service").unwrap().len(), 1);
    assert!(server.load_dir(dir.path().join("missing")).is_err());
}
