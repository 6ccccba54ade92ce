//! Issue 7's agent benchmarks (ignored: run them with
//! `cargo test --release -p switchyard --test agent_scale -- --ignored --nocapture`):
//!
//! - initial sync of 10,000 Services × 10 endpoints (one EndpointSlice each) from the in-repo
//!   test API server: time from starting `switchyard agent` to ready with every Service
//!   programmed, and the agent's peak RSS (VmHWM);
//! - one endpoint change at that scale, repeated: event → programmed latency, from the
//!   agent's own `switchyard_sync_duration_seconds` histogram and end to end from the test
//!   (the change applied through the API server → the agent's sync count moves on).
//!
//! The agent runs in the lab's node namespace as in `agent_kube.rs`; the API server runs in
//! this process on a thread that moved into that namespace (see `agent_kube.rs` for why).
//! The test talks to the agent over its admin socket (a file, so reachable from here).
//!
//! Addresses: cluster IPs in 198.18.128.0/17, endpoints in 198.19.0.0/16.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use common::{router_command, Driver, Lab, Ns};
use serde_json::{json, Value};
use switchyard_apiserver::ApiServer;

const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;
/// Changes measured (`SWITCHYARD_SCALE_CHANGES` overrides).
const CHANGES: usize = 1_000;

/// The test API server, serving on the loopback of a network namespace until dropped.
struct NsApiServer {
    server: Arc<ApiServer>,
    _keep: tokio::sync::mpsc::UnboundedSender<()>,
}

impl NsApiServer {
    fn start(netns: &str) -> NsApiServer {
        let path = format!("/run/netns/{netns}");
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::Builder::new()
            .name("apiserver".into())
            .spawn(move || {
                // One thread: every task (and so every socket) stays in this namespace.
                let runtime = match common::runtime_in_netns(&path) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let server = match ApiServer::builder().history_limit(100_000).start().await {
                        Ok(s) => Arc::new(s),
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("start: {e}")));
                            return;
                        }
                    };
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
                    let _ = ready_tx.send(Ok((Arc::clone(&server), tx)));
                    while rx.recv().await.is_some() {}
                });
            })
            .expect("spawn the API server thread");
        let (server, keep) = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("API server thread answers")
            .unwrap_or_else(|e| panic!("API server in {netns}: {e}"));
        NsApiServer {
            server,
            _keep: keep,
        }
    }
}

fn cluster_ip(i: usize) -> String {
    let n = i + 1;
    format!("198.18.{}.{}", 128 + n / 256, n % 256)
}

/// Endpoint `j` of Service `i` (addresses repeat across Services past 65,536: fine, a pod
/// may back several Services). `generation` shifts endpoint 0 for the change benchmark.
fn endpoint_ip(i: usize, j: usize, generation: usize) -> String {
    let k = if j == 0 && generation > 0 {
        (i * ENDPOINTS + generation * 7919) % 65_536
    } else {
        (i * ENDPOINTS + j) % 65_536
    };
    format!("198.19.{}.{}", k / 256, k % 256)
}

fn service(i: usize) -> Value {
    let ip = cluster_ip(i);
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "default"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip, "clusterIPs": [ip],
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]
        }
    })
}

fn slice(i: usize, generation: usize) -> Value {
    let endpoints: Vec<Value> = (0..ENDPOINTS)
        .map(|j| {
            json!({
                "addresses": [endpoint_ip(i, j, generation)],
                "conditions": {"ready": true},
                "nodeName": if j % 2 == 0 { "node-a" } else { "node-b" }
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("svc-{i}-1"), "namespace": "default",
            "labels": {"kubernetes.io/service-name": format!("svc-{i}")}
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": endpoints
    })
}

/// One JSON-lines connection to the agent's admin socket.
struct Admin {
    write: UnixStream,
    read: BufReader<UnixStream>,
}

impl Admin {
    fn connect(path: &Path, limit: Duration) -> Admin {
        let deadline = Instant::now() + limit;
        loop {
            match UnixStream::connect(path) {
                Ok(s) => {
                    let read = BufReader::new(s.try_clone().expect("clone"));
                    return Admin { write: s, read };
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "admin socket {path:?}: {e}");
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    fn ask(&mut self, request: &str) -> Value {
        self.write
            .write_all(format!("{request}\n").as_bytes())
            .expect("admin write");
        let mut line = String::new();
        self.read.read_line(&mut line).expect("admin read");
        let v: Value = serde_json::from_str(&line).expect("admin answer is JSON");
        assert_eq!(v["ok"], true, "{request}: {v}");
        v["data"].clone()
    }
}

/// Cumulative (upper bound, count) pairs of the agent's sync histogram.
fn buckets(sync: &Value) -> Vec<(String, u64)> {
    sync["sync_latency"]["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| {
            (
                b["le"].as_str().expect("le").to_string(),
                b["count"].as_u64().expect("count"),
            )
        })
        .collect()
}

/// The bucket bound the q-quantile falls under, from cumulative counts `after - before`.
fn bucket_quantile(before: &[(String, u64)], after: &[(String, u64)], q: f64) -> String {
    let diff: Vec<(String, u64)> = after
        .iter()
        .zip(before)
        .map(|((le, a), (_, b))| (le.clone(), a - b))
        .collect();
    let total = diff.last().map_or(0, |d| d.1);
    let rank = (q * total as f64).ceil() as u64;
    diff.iter()
        .find(|(_, c)| *c >= rank.max(1))
        .map_or("?".into(), |(le, _)| format!("≤ {le} s"))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Starts `switchyard agent` in the node namespace with the lab's ports, no `--duration`.
fn start_agent(lab: &Lab, extra: &[&str]) -> Child {
    let mut args = router_command(&lab.prefix, Driver::AfPacket, extra);
    args[0] = "agent".into();
    if let Some(i) = args.iter().position(|a| a == "--duration") {
        args.drain(i..i + 2);
    }
    let bin = env!("CARGO_BIN_EXE_switchyard");
    Command::new("ip")
        .args(["netns", "exec", &lab.ns(Ns::Node), bin])
        .args(&args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(lab.dir.join("agent.stdout")).expect("stdout file"))
        .stderr(std::fs::File::create(lab.dir.join("agent.stderr")).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {bin}: {e}"))
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    if common::wait_bounded(child, Duration::from_secs(20)).is_none() {
        eprintln!("agent ignored SIGTERM; killed");
    }
}

#[test]
#[ignore = "benchmark: 10k Services; run with --ignored --nocapture"]
fn agent_sync_at_scale() {
    let Some(lab) = Lab::new("agent_sync_at_scale", &["curl"]) else {
        return;
    };
    if lab.kernel {
        eprintln!("skipped: needs the switchyard dataplane");
        return;
    }
    let changes: usize = std::env::var("SWITCHYARD_SCALE_CHANGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CHANGES);

    let api = NsApiServer::start(&lab.ns(Ns::Node));
    let kubeconfig = lab.dir.join("kubeconfig");
    api.server
        .write_kubeconfig(&kubeconfig)
        .expect("write kubeconfig");
    let t = Instant::now();
    api.server
        .create(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}))
        .expect("create Node");
    for i in 0..SERVICES {
        api.server.create(&service(i)).expect("create Service");
        api.server
            .create(&slice(i, 0))
            .expect("create EndpointSlice");
    }
    eprintln!(
        "created {SERVICES} Services + {SERVICES} EndpointSlices ({} endpoints) in {:?}",
        SERVICES * ENDPOINTS,
        t.elapsed()
    );

    // ---- initial sync ------------------------------------------------------------------
    let socket = lab.admin_socket();
    let started = Instant::now();
    let mut agent = start_agent(
        &lab,
        &[
            "--kubeconfig",
            kubeconfig.to_str().expect("utf-8"),
            "--node-name",
            "node-a",
            "--admin-socket",
            socket.to_str().expect("utf-8"),
        ],
    );
    let pid = agent.id();
    let mut admin = Admin::connect(&socket, Duration::from_secs(30));
    let socket_up = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut sync;
    loop {
        sync = admin.ask("sync");
        if sync["ready"] == true && sync["services"].as_u64() == Some(SERVICES as u64) {
            break;
        }
        if let Ok(Some(status)) = agent.try_wait() {
            panic!("agent exited ({status}):\n{}", lab.read("agent.stderr"));
        }
        assert!(
            Instant::now() < deadline,
            "not ready with {SERVICES} services: {sync}"
        );
        thread::sleep(Duration::from_millis(2));
    }
    let ready_after = started.elapsed();
    // /readyz agrees (served in the node namespace).
    let readyz = lab.exec_ok(
        Ns::Node,
        "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:10256/readyz",
    );
    assert_eq!(readyz.trim(), "200", "/readyz");
    let rss_ready = vm_hwm_kib(pid);
    eprintln!(
        "initial sync: ready with {} services after {ready_after:?} (admin socket up after \
         {socket_up:?}; {} syncs); /readyz {readyz}; VmHWM {} MiB",
        sync["services"],
        sync["syncs"],
        rss_ready / 1024
    );

    // ---- one endpoint change, repeated ------------------------------------------------------
    let before = buckets(&sync);
    let mut e2e = Vec::with_capacity(changes);
    let mut syncs = sync["syncs"].as_u64().expect("syncs");
    let bench = Instant::now();
    for n in 0..changes {
        let i = (n * 7) % SERVICES;
        let changed = slice(i, n + 1);
        api.server.apply(&changed).expect("apply EndpointSlice");
        let applied = Instant::now();
        let deadline = applied + Duration::from_secs(10);
        loop {
            let s = admin.ask("sync");
            let now = s["syncs"].as_u64().expect("syncs");
            if now > syncs {
                e2e.push(applied.elapsed().as_secs_f64());
                syncs = now;
                sync = s;
                break;
            }
            assert!(Instant::now() < deadline, "change {n} not programmed: {s}");
        }
    }
    let bench_took = bench.elapsed();
    let after = buckets(&sync);
    // The last change is really in the agent's view.
    let last = changes - 1;
    let last_i = (last * 7) % SERVICES;
    let want = format!("{}:8080", endpoint_ip(last_i, 0, last + 1));
    let eps = admin.ask("endpoints");
    let entry = eps
        .as_array()
        .expect("endpoints list")
        .iter()
        .find(|e| e["name"] == format!("svc-{last_i}"))
        .expect("service in endpoints");
    assert!(
        entry["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .any(|e| e["address"] == want.as_str()),
        "last change not visible: want {want} in {entry}"
    );
    let rss_end = vm_hwm_kib(pid);
    stop(&mut agent);
    drop(admin);

    // Per-sync build times from the agent's log ("tables programmed ... ms=X").
    let log = lab.read("agent.stderr");
    let mut build: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("tables programmed") && l.contains("services=10000"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
        })
        .collect();
    let first_build = build.first().copied();
    let mut last_build: Vec<f64> = build.split_off(build.len().saturating_sub(changes));
    last_build.sort_by(f64::total_cmp);
    e2e.sort_by(f64::total_cmp);
    let ms = |s: f64| format!("{:.2} ms", s * 1e3);
    eprintln!("--- results ({SERVICES} Services × {ENDPOINTS} endpoints) ---");
    eprintln!(
        "initial sync: ready after {ready_after:?}; first full build (all Services) {:?} ms; peak RSS at ready \
         {} MiB, at end {} MiB",
        first_build,
        rss_ready / 1024,
        rss_end / 1024
    );
    eprintln!(
        "{changes} endpoint changes in {bench_took:?}; end to end (apply returned → sync count \
         moved): p50 {} p99 {} max {}",
        ms(percentile(&e2e, 0.5)),
        ms(percentile(&e2e, 0.99)),
        ms(*e2e.last().expect("changes"))
    );
    eprintln!(
        "agent histogram (event seen → published) over those syncs: p50 {} p99 {}; buckets \
         {:?}",
        bucket_quantile(&before, &after, 0.5),
        bucket_quantile(&before, &after, 0.99),
        after
            .iter()
            .zip(&before)
            .map(|((le, a), (_, b))| format!("{le}:{}", a - b))
            .collect::<Vec<_>>()
    );
    if !last_build.is_empty() {
        eprintln!(
            "agent build time per sync (log ms=): p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({} \
             syncs)",
            percentile(&last_build, 0.5),
            percentile(&last_build, 0.99),
            last_build.last().copied().unwrap_or_default(),
            last_build.len()
        );
    }
}
