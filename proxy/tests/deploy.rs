//! The deployment files in `deploy/` against the agent they deploy.
//!
//! - `deploy_manifests_render_and_validate`: `deploy/check.py check` renders the kustomize base
//!   and every overlay with `kubectl kustomize`, validates each object against the Kubernetes
//!   OpenAPI schemas (`kubernetes-validate`, strict), the example custom resources against the
//!   CRDs, and that `deploy/switchyard.yaml` is the base rendered; then every agent
//!   configuration file held in a ConfigMap must pass `switchyard config check`.
//! - `deploy_rbac_and_metrics_match_the_agent`: the agent, started with the base's
//!   configuration file, watches the in-repo API server (serving `examples/`) from the lab's
//!   node namespace. The (verb, group, resource) of every request it makes must be exactly
//!   what the ClusterRole allows, and every metric name the Grafana dashboard and the alerting
//!   rules use must be in its `/metrics`.
//!
//! Missing tools (kubectl, the Python packages from scripts/install-deps.sh, root for the lab)
//! skip the tests, or fail them when `CI` is set.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use common::{skip_or_fail, text, Driver, Lab, Ns};
use serde_json::Value;
use switchyard_apiserver::ApiServer;

const METRICS: &str = "127.0.0.1:19349";
const HEALTHZ: &str = "127.0.0.1:19356";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("proxy/ has a parent")
        .to_path_buf()
}

/// The report of `deploy/check.py check` (run once per test binary), or why it could not run.
fn deploy_check() -> Result<&'static Value, String> {
    static REPORT: OnceLock<Result<Value, String>> = OnceLock::new();
    let result = REPORT.get_or_init(|| {
        // Under the target directory, overwritten by the next run.
        let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-check");
        let out = Command::new("python3")
            .arg(repo_root().join("deploy/check.py"))
            .args(["check", "--out"])
            .arg(&out_dir)
            .output()
            .map_err(|e| format!("cannot run python3: {e}"))?;
        match out.status.code() {
            Some(0) => serde_json::from_slice(&out.stdout)
                .map_err(|e| format!("deploy/check.py printed no JSON report: {e}")),
            Some(3) => Err(format!("missing tool: {}", text(&out.stderr).trim())),
            _ => panic!(
                "deploy/check.py check found problems:\n{}",
                text(&out.stderr)
            ),
        }
    });
    result.as_ref().map_err(Clone::clone)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn deploy_manifests_render_and_validate() {
    let report = match deploy_check() {
        Ok(r) => r,
        Err(reason) => return skip_or_fail("deploy_manifests_render_and_validate", &reason),
    };
    let renders = report["renders"].as_object().expect("renders");
    for name in [
        "base",
        "overlays/afpacket",
        "overlays/afxdp",
        "overlays/dpdk",
        "overlays/edge-lb",
    ] {
        let objects = strings(&renders[name]);
        for want in [
            "Namespace switchyard",
            "ServiceAccount switchyard/switchyard",
            "ClusterRole switchyard",
            "ClusterRoleBinding switchyard",
            "ConfigMap switchyard/switchyard-config",
            "DaemonSet switchyard/switchyard",
            "CustomResourceDefinition ipsecsites.batch.sdewan.akraino.org",
            "CustomResourceDefinition ipsechosts.batch.sdewan.akraino.org",
            "CustomResourceDefinition ipsecproposals.batch.sdewan.akraino.org",
        ] {
            assert!(
                objects.iter().any(|o| o == want),
                "{name} lacks {want}: {objects:?}"
            );
        }
    }
    assert!(report["customResourcesChecked"].as_u64().unwrap_or(0) >= 3);

    // Every configuration file a ConfigMap carries is one the agent accepts.
    let configs = report["configs"].as_array().expect("configs");
    assert!(configs.len() >= 6, "{configs:?}");
    for c in configs {
        let file = c["file"].as_str().expect("file");
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["config", "check", file])
            .output()
            .expect("run switchyard config check");
        assert!(
            out.status.success(),
            "{} ConfigMap {}: switchyard config check: {}",
            c["render"],
            c["configMap"],
            text(&out.stderr)
        );
    }
}

/// A ClusterRole's rules as (verb, group, resource) triples; nonResourceURLs apart.
fn rule_triples(rules: &Value) -> (BTreeSet<(String, String, String)>, BTreeSet<String>) {
    let mut triples = BTreeSet::new();
    let mut urls = BTreeSet::new();
    for rule in rules.as_array().expect("rules") {
        for verb in strings(&rule["verbs"]) {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    triples.insert((verb.clone(), group.clone(), resource));
                }
            }
            urls.extend(strings(&rule["nonResourceURLs"]));
        }
    }
    (triples, urls)
}

/// Non-resource URLs every authenticated client may GET through the default ClusterRoles
/// (system:discovery, system:public-info-viewer): no rule of ours needed.
const DEFAULT_NON_RESOURCE: &[&str] = &[
    "/api",
    "/apis",
    "/version",
    "/healthz",
    "/livez",
    "/readyz",
    "/openapi/v2",
    "/openapi/v3",
];

/// Metric names a scrape in the OpenMetrics format makes queryable in Prometheus: every
/// sample's name, and per family the names its type gives (a counter `X` is `X_total`, a
/// histogram `X_bucket`, `X_sum`, `X_count`, ...), so families with no samples yet count too.
fn queryable_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// GET `url` from inside the lab's node namespace: (status, body).
fn get(lab: &Lab, url: &str, accept: &str) -> Result<(u16, String), String> {
    let script = format!(
        "import sys, urllib.request, urllib.error\n\
         o = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))\n\
         r = urllib.request.Request('{url}', headers={{'Accept': '{accept}'}})\n\
         try:\n    a = o.open(r, timeout=5); s, b = a.status, a.read()\n\
         except urllib.error.HTTPError as e:\n    s, b = e.code, e.read()\n\
         print(s); sys.stdout.write(b.decode())\n"
    );
    let path = lab.dir.join("get.py");
    std::fs::write(&path, script).map_err(|e| e.to_string())?;
    let out = lab.exec_t(
        Ns::Node,
        &format!("python3 {}", path.display()),
        Duration::from_secs(10),
    );
    if !out.status.success() {
        return Err(format!("GET {url}: {}", text(&out.stderr)));
    }
    let s = text(&out.stdout);
    let (status, body) = s.split_once('\n').unwrap_or((&s, ""));
    let status = status
        .trim()
        .parse()
        .map_err(|_| format!("GET {url}: {s}"))?;
    Ok((status, body.to_string()))
}

/// The test API server on the loopback of the lab's node namespace (see agent_kube.rs for
/// why it runs on a thread of its own); stops when the returned sender is dropped.
fn api_server_in(netns: &str) -> (Arc<ApiServer>, mpsc::Sender<()>) {
    let path = format!("/run/netns/{netns}");
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    thread::Builder::new()
        .name("apiserver".into())
        .spawn(move || {
            let runtime = match common::runtime_in_netns(&path) {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let server = match runtime.block_on(ApiServer::start()) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("start: {e}")));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(Arc::clone(&server)));
            // Serve (the runtime drives the server's tasks) until the test is done.
            runtime.block_on(async {
                while stop_rx.try_recv() == Err(mpsc::TryRecvError::Empty) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        })
        .expect("spawn the API server thread");
    let server = ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("API server thread answers")
        .unwrap_or_else(|e| panic!("API server in {netns}: {e}"));
    (server, stop_tx)
}

#[test]
fn deploy_rbac_and_metrics_match_the_agent() {
    const TEST: &str = "deploy_rbac_and_metrics_match_the_agent";
    let report = match deploy_check() {
        Ok(r) => r,
        Err(reason) => return skip_or_fail(TEST, &reason),
    };
    let Some(mut lab) = Lab::new(TEST, &["python3"]) else {
        return;
    };
    if lab.kernel {
        eprintln!("skipped: the agent has no kernel-mode equivalent in this lab");
        return;
    }
    let base_config = report["configs"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["render"] == "base" && c["configMap"] == "switchyard-config")
        })
        .and_then(|c| c["file"].as_str())
        .expect("the base's switchyard-config")
        .to_string();

    let (server, _stop) = api_server_in(&lab.ns(Ns::Node));
    let loaded = server
        .load_dir(repo_root().join("examples"))
        .expect("load examples/ into the API server");
    assert!(loaded > 0);
    // The SD-EWAN CRDs, as the base installs them, so their resources are served.
    server
        .load_dir(repo_root().join("deploy/base/crds"))
        .expect("load the CRDs into the API server");
    let kubeconfig = lab.dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).expect("kubeconfig");

    // The deployed configuration file, with the listeners moved to loopback ports of the test
    // (flags win over the file) and BGP on, towards a peer on the node namespace's loopback
    // that refuses, so the BGP metrics are there too.
    lab.start_agent(
        Driver::AfPacket,
        &[
            "--config",
            &base_config,
            "--kubeconfig",
            kubeconfig.to_str().expect("utf-8"),
            "--node-name",
            "node-a",
            "--metrics-bind-address",
            METRICS,
            "--healthz-bind-address",
            HEALTHZ,
            "--bgp-asn",
            "64512",
            "--bgp-listen",
            "off",
            "--bgp-peer",
            "127.0.0.1=64513,port=1",
            // The SD-EWAN IPsec resources too (none are there: the daemon idles).
            "--sdewan-purpose",
            "cnf1",
            "--punt-tun",
            "sy0",
        ],
    );

    // Ready: every watcher has listed; then wait for their watches to be open.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match get(&lab, &format!("http://{HEALTHZ}/readyz"), "*/*") {
            Ok((200, _)) => break,
            other if Instant::now() > deadline => panic!("agent never ready: {other:?}"),
            _ => thread::sleep(Duration::from_millis(250)),
        }
    }
    let (rules, urls) = rule_triples(&report["clusterRoles"]["switchyard"]);
    let watches = rules.iter().filter(|(v, _, _)| v == "watch").count();
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.open_watches() < watches && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }

    // RBAC: exactly the requests made.
    let log = server.request_log();
    let made: BTreeSet<(String, String, String)> = log
        .iter()
        .filter(|r| r.non_resource_url.is_none())
        .map(|r| (r.verb.clone(), r.group.clone(), r.resource.clone()))
        .collect();
    let missing: Vec<_> = made.difference(&rules).collect();
    let unused: Vec<_> = rules.difference(&made).collect();
    assert!(
        missing.is_empty(),
        "the agent makes requests the ClusterRole does not allow: {missing:?}"
    );
    assert!(
        unused.is_empty(),
        "the ClusterRole allows what the agent never requests: {unused:?}"
    );
    for r in log.iter().filter_map(|r| r.non_resource_url.as_deref()) {
        assert!(
            DEFAULT_NON_RESOURCE.contains(&r) || urls.contains(r),
            "the agent requests {r}, which neither the default roles nor ours allow"
        );
    }

    // Metrics: every name the dashboard and the alerts query is in a live scrape.
    let (status, scrape) = get(
        &lab,
        &format!("http://{METRICS}/metrics"),
        "application/openmetrics-text; version=1.0.0",
    )
    .expect("scrape /metrics");
    assert_eq!(status, 200, "{scrape}");
    let have = queryable_names(&scrape);
    assert!(have.contains("switchyard_bgp_session_up"), "{scrape}");
    for source in ["dashboard", "alerts"] {
        let used = strings(&report["metrics"][source]);
        assert!(!used.is_empty(), "no metric names found in the {source}");
        let absent: Vec<_> = used.iter().filter(|n| !have.contains(*n)).collect();
        assert!(
            absent.is_empty(),
            "metric names in the {source} that the agent does not export: {absent:?}\n{scrape}"
        );
    }
    lab.finish();
}

#[test]
fn queryable_names_follow_the_family_types() {
    let scrape = "\
# TYPE switchyard_syncs counter
switchyard_syncs_total 3
# TYPE switchyard_node_errors counter
# TYPE switchyard_sync_duration_seconds histogram
switchyard_sync_duration_seconds_bucket{le=\"+Inf\"} 2
# TYPE switchyard_build info
switchyard_build_info{version=\"0.1.0\"} 1
# TYPE switchyard_ready gauge
switchyard_ready 1
# EOF
";
    let names = queryable_names(scrape);
    for want in [
        "switchyard_syncs_total",
        "switchyard_node_errors_total",
        "switchyard_sync_duration_seconds_bucket",
        "switchyard_sync_duration_seconds_count",
        "switchyard_build_info",
        "switchyard_ready",
    ] {
        assert!(names.contains(want), "{want}: {names:?}");
    }
    assert!(!names.contains("switchyard_syncs"));
    assert!(!names.contains("switchyard_node_errors"));
}
