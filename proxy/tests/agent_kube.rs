//! The Kubernetes API source end to end: `switchyard agent --kubeconfig` in the lab's node
//! namespace, watching the in-repo test API server, with real clients and backends.
//!
//! ```text
//!   client 198.18.1.2 ── [node: switchyard agent ──► API server on the node's 127.0.0.1]
//!                                    │
//!                                    └── server: pod-a 198.18.2.3, pod-b 198.18.2.4
//! ```
//!
//! The API server runs in this test process, listening on the node namespace's loopback
//! ([`common::apiserver`]).

mod common;

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use common::apiserver::NsApiServer;
use common::{text, Driver, Lab, Ns};
use serde_json::{json, Value};

const POD_A: &str = "198.18.2.3";
const POD_B: &str = "198.18.2.4";
const CLUSTER_IP: &str = "198.51.100.10";

fn service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": CLUSTER_IP, "clusterIPs": [CLUSTER_IP],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]
        }
    })
}

fn slice(pods: &[(&str, &str)]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(ip, node)| {
            json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": node})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": "web-1", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"}
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": endpoints
    })
}

/// A Service the agent must not see: its slice is labelled for another proxy.
fn other_proxys_service() -> (Value, Value) {
    let mut svc = service();
    svc["metadata"] = json!({
        "name": "other", "namespace": "default",
        "labels": {"service.kubernetes.io/service-proxy-name": "someone-else"}
    });
    svc["spec"]["clusterIP"] = json!("198.51.100.20");
    svc["spec"]["clusterIPs"] = json!(["198.51.100.20"]);
    let mut s = slice(&[(POD_A, "node-a")]);
    s["metadata"]["name"] = json!("other-1");
    s["metadata"]["labels"]["kubernetes.io/service-name"] = json!("other");
    (svc, s)
}

/// Starts the pods: each answers TCP :8080 with "NAME PEER-ADDRESS".
fn start_pods(lab: &Lab) -> Vec<std::process::Child> {
    let mut children = Vec::new();
    for (name, ip) in [("pod-a", POD_A), ("pod-b", POD_B)] {
        lab.exec_ok(Ns::Server, &format!("ip addr add {ip}/24 dev eth0"));
        children.push(lab.spawn(
            Ns::Server,
            name,
            &format!(
                "socat TCP4-LISTEN:8080,bind={ip},fork,reuseaddr \
                 SYSTEM:'echo {name} $SOCAT_PEERADDR'"
            ),
            Duration::from_secs(110),
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lab
            .exec(Ns::Server, &format!("ss -Hltn src {ip} | grep -q ."))
            .status
            .success()
        {
            assert!(Instant::now() < deadline, "{name} did not start");
            thread::sleep(Duration::from_millis(50));
        }
    }
    children
}

fn tcp_request(lab: &Lab, addr: &str, port: u16) -> Result<String, String> {
    let out = lab.exec_t(
        Ns::Client,
        &format!("socat -T 2 -t 2 - TCP4:{addr}:{port},connect-timeout=2 </dev/null"),
        Duration::from_secs(6),
    );
    if out.status.success() && !out.stdout.is_empty() {
        Ok(text(&out.stdout).trim().to_string())
    } else {
        Err(format!("{} {}", out.status, text(&out.stderr).trim()))
    }
}

/// Which pods answered `n` requests to the ClusterIP, and how often.
fn spread(lab: &Lab, n: usize) -> Result<BTreeMap<String, usize>, String> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let answer = tcp_request(lab, CLUSTER_IP, 80)?;
        let pod = answer.split(' ').next().unwrap_or_default().to_string();
        *seen.entry(pod).or_insert(0) += 1;
    }
    Ok(seen)
}

/// Waits until the ClusterIP is served by exactly `pods` (the last 8 answers all come from
/// them, and from each of them); returns the time from `since` (when the change was made) to
/// the first of those answers.
fn served_by(lab: &Lab, pods: &[&str], since: Instant, limit: Duration) -> Duration {
    const WINDOW: usize = 8;
    let started = Instant::now();
    let mut recent: std::collections::VecDeque<(Duration, Result<String, String>)> =
        Default::default();
    loop {
        let at = since.elapsed();
        let answer = tcp_request(lab, CLUSTER_IP, 80)
            .map(|a| a.split(' ').next().unwrap_or_default().to_string());
        recent.push_back((at, answer));
        if recent.len() > WINDOW {
            recent.pop_front();
        }
        let all_ours = recent.len() == WINDOW
            && recent
                .iter()
                .all(|(_, a)| a.as_ref().is_ok_and(|p| pods.contains(&p.as_str())));
        let covered = pods
            .iter()
            .all(|p| recent.iter().any(|(_, a)| a.as_deref() == Ok(*p)));
        if all_ours && covered {
            return recent.front().map_or(at, |(t, _)| *t);
        }
        if started.elapsed() > limit {
            panic!("ClusterIP not served by {pods:?} after {limit:?}: last answers {recent:?}");
        }
    }
}

#[test]
fn agent_follows_the_kubernetes_api() {
    let Some(mut lab) = Lab::new("agent_follows_the_kubernetes_api", &["socat"]) else {
        return;
    };
    if lab.kernel {
        eprintln!("skipped: the service proxy has no kernel-mode equivalent in this lab");
        return;
    }
    let api = NsApiServer::start(&lab.ns(Ns::Node));
    let kubeconfig = lab.dir.join("kubeconfig");
    api.server
        .write_kubeconfig(&kubeconfig)
        .expect("write kubeconfig");
    api.server.create(&service()).expect("create Service");
    api.server
        .create(&slice(&[(POD_A, "node-a"), (POD_B, "node-b")]))
        .expect("create EndpointSlice");
    api.server
        .create(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}))
        .expect("create Node");
    let (other_svc, other_slice) = other_proxys_service();
    api.server.create(&other_svc).expect("create Service");
    api.server
        .create(&other_slice)
        .expect("create EndpointSlice");

    let _pods = start_pods(&lab);
    lab.start_agent(
        Driver::AfPacket,
        &[
            "--kubeconfig",
            kubeconfig.to_str().expect("utf-8"),
            "--node-name",
            "node-a",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.server.open_watches() < 6 {
        assert!(
            Instant::now() < deadline,
            "the agent did not open a watch for each of the six kinds: {} open",
            api.server.open_watches()
        );
        thread::sleep(Duration::from_millis(50));
    }

    // The initial list reached the dataplane: both pods serve the ClusterIP.
    let took = served_by(
        &lab,
        &["pod-a", "pod-b"],
        Instant::now(),
        Duration::from_secs(10),
    );
    eprintln!("initial sync: served {took:?} after the agent was up");
    // The Service of another proxy was filtered out (by the label selector).
    assert!(
        tcp_request(&lab, "198.51.100.20", 80).is_err(),
        "a Service labelled for another proxy must not be served"
    );

    // An endpoint change through the API reaches the dataplane quickly.
    let changed = Instant::now();
    api.server
        .apply(&slice(&[(POD_B, "node-b")]))
        .expect("scale down");
    let took = served_by(&lab, &["pod-b"], changed, Duration::from_secs(5));
    eprintln!("endpoint change programmed after {took:?}");

    // Forced relists: the history is compacted and every watch expires (410); the agent
    // lists again and still follows changes.
    let lists_before = api.server.requests("list", "endpointslices");
    api.server.compact();
    api.server.expire_watches();
    let changed = Instant::now();
    api.server
        .apply(&slice(&[(POD_A, "node-a")]))
        .expect("move to pod-a");
    let took = served_by(&lab, &["pod-a"], changed, Duration::from_secs(10));
    eprintln!("change after 410 programmed after {took:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.server.requests("list", "endpointslices") <= lists_before {
        assert!(
            Instant::now() < deadline,
            "the agent did not relist after 410"
        );
        thread::sleep(Duration::from_millis(100));
    }

    // The API server goes away: traffic keeps flowing with the last tables.
    api.pause();
    let paused = Instant::now();
    while paused.elapsed() < Duration::from_secs(3) {
        let seen = spread(&lab, 4).unwrap_or_else(|e| panic!("request during the outage: {e}"));
        assert!(
            seen.keys().eq(["pod-a"].iter()),
            "during the outage: {seen:?}"
        );
    }
    // A change made while the agent cannot see it...
    api.server
        .apply(&slice(&[(POD_A, "node-a"), (POD_B, "node-b")]))
        .expect("scale up while paused");
    thread::sleep(Duration::from_millis(500));
    assert!(
        spread(&lab, 4).is_ok(),
        "traffic stops while the API server is away"
    );
    // ...is picked up once it is back.
    api.resume();
    let resumed = Instant::now();
    let took = served_by(&lab, &["pod-a", "pod-b"], resumed, Duration::from_secs(15));
    eprintln!("change made during the outage programmed {took:?} after the server returned");

    let out = lab.finish().expect("agent output");
    let unreachable = out.stderr.matches("Kubernetes API unreachable").count();
    assert_eq!(
        unreachable, 1,
        "the outage is logged once, not per retry\n{out}"
    );
    assert!(
        out.stderr.contains("reachable again"),
        "the return is logged\n{out}"
    );
}

/// A missing or unreadable kubeconfig is one error line and exit status 1, before any packet
/// I/O is set up (so this needs no privileges).
#[test]
fn a_bad_kubeconfig_is_one_error_line() {
    let dir = std::env::temp_dir().join(format!("switchyard-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let garbage = dir.join("garbage");
    std::fs::write(&garbage, "clusters: [\n").expect("write");
    let missing = dir.join("missing");
    for (path, expected) in [
        (&missing, "cannot read the file"),
        (&garbage, "failed to parse kubeconfig"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["agent", "--interface", "lo", "--kubeconfig"])
            .arg(path)
            .args([
                "--metrics-bind-address",
                "off",
                "--healthz-bind-address",
                "off",
            ])
            .arg("--admin-socket")
            .arg(dir.join("admin.sock"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("run switchyard");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(&format!("--kubeconfig {}", path.display()))
                && stderr.contains(expected),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
