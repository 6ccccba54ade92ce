//! The agent's servers end to end: `switchyard agent --manifests DIR` in the lab's node
//! namespace with traffic through it, then `/metrics`, `/readyz`, `/healthz`, a health-check
//! NodePort (all over the node namespace's loopback) and `switchyard show` over the admin
//! socket.

mod common;

use std::fs;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{text, Driver, Lab, Ns};

const POD_A: &str = "198.18.2.3";
const POD_B: &str = "198.18.2.4";
const WEB_VIP: &str = "198.51.100.10";
const METRICS: &str = "127.0.0.1:19249";
const HEALTHZ: &str = "127.0.0.1:19256";
const HEALTH_CHECK_PORT: u16 = 30210;

const MANIFESTS: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 198.51.100.10
  clusterIPs: [198.51.100.10]
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints:
- addresses: [198.18.2.3]
  conditions: {ready: true}
  nodeName: node-a
- addresses: [198.18.2.4]
  conditions: {ready: true}
  nodeName: node-b
---
apiVersion: v1
kind: Service
metadata: {name: edge, namespace: shop}
spec:
  type: LoadBalancer
  clusterIP: 198.51.100.20
  clusterIPs: [198.51.100.20]
  externalTrafficPolicy: Local
  healthCheckNodePort: 30210
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30090}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: edge-1, namespace: shop, labels: {kubernetes.io/service-name: edge}}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints:
- addresses: [198.18.2.3]
  conditions: {ready: true}
  nodeName: node-a
";

/// GET with Python's standard library (no proxy): status line, headers, blank line, body.
const HTTP_GET: &str = r#"
import sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
req = urllib.request.Request(sys.argv[1], headers={"Accept": sys.argv[2] if len(sys.argv) > 2 else "*/*"})
try:
    r = opener.open(req, timeout=5)
    status, headers, body = r.status, r.headers, r.read()
except urllib.error.HTTPError as e:
    status, headers, body = e.code, e.headers, e.read()
print(status)
for k, v in headers.items():
    print(k.lower() + ": " + v)
print()
sys.stdout.write(body.decode())
"#;

struct HttpAnswer {
    status: u16,
    headers: String,
    body: String,
}

fn get(lab: &Lab, url: &str, accept: &str) -> Result<HttpAnswer, String> {
    let script = lab.dir.join("http_get.py");
    if !script.exists() {
        fs::write(&script, HTTP_GET).map_err(|e| e.to_string())?;
    }
    let out = lab.exec_t(
        Ns::Node,
        &format!("python3 {} '{url}' '{accept}'", script.display()),
        Duration::from_secs(10),
    );
    if !out.status.success() {
        return Err(format!("GET {url}: {}", text(&out.stderr)));
    }
    let s = text(&out.stdout);
    let (head, body) = s.split_once("\n\n").ok_or(format!("GET {url}: {s}"))?;
    let (status, headers) = head.split_once('\n').unwrap_or((head, ""));
    Ok(HttpAnswer {
        status: status
            .trim()
            .parse()
            .map_err(|_| format!("GET {url}: {s}"))?,
        headers: headers.to_string(),
        body: body.to_string(),
    })
}

fn eventually<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// `switchyard show ARGS...`: exit code, stdout, stderr.
/// Runs `switchyard SUBCOMMAND ARGS...`: exit code, stdout, stderr.
fn switchyard(subcommand: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg(subcommand)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run switchyard {subcommand}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

fn show(args: &[&str]) -> (i32, String, String) {
    switchyard("show", args)
}

fn show_trace(args: &[&str]) -> (i32, String, String) {
    switchyard("trace", args)
}

#[test]
fn metrics_health_and_admin_socket() {
    let Some(mut lab) = Lab::new("metrics_health_and_admin_socket", &["socat", "python3"]) else {
        return;
    };
    if lab.kernel {
        eprintln!("skipped: the agent has no kernel-mode equivalent in this lab");
        return;
    }
    let dir = lab.dir.join("manifests");
    fs::create_dir_all(&dir).expect("manifest dir");
    fs::write(dir.join("services.yaml"), MANIFESTS).expect("manifests");
    let mut pods = Vec::new();
    for (name, ip) in [("pod-a", POD_A), ("pod-b", POD_B)] {
        lab.exec_ok(Ns::Server, &format!("ip addr add {ip}/24 dev eth0"));
        pods.push(lab.spawn_listener(
            Ns::Server,
            name,
            &format!("TCP4-LISTEN:8080,bind={ip},fork,reuseaddr"),
            &format!("SYSTEM:'echo {name}'"),
            8080,
            false,
        ));
    }
    let socket = lab.admin_socket();
    let socket = socket.to_str().expect("utf-8").to_string();
    lab.start_agent(
        Driver::AfPacket,
        &[
            "--manifests",
            dir.to_str().expect("utf-8"),
            "--node-name",
            "node-a",
            "--metrics-bind-address",
            METRICS,
            "--healthz-bind-address",
            HEALTHZ,
        ],
    );

    // Ready once the first sync is programmed, healthy, kube-proxy's JSON.
    let ready = eventually("/readyz", || {
        let a = get(&lab, &format!("http://{HEALTHZ}/readyz"), "*/*")?;
        (a.status == 200)
            .then_some(a)
            .ok_or("not ready".to_string())
    });
    assert!(ready.body.contains(r#""ready":true"#), "{}", ready.body);
    let healthz = get(&lab, &format!("http://{HEALTHZ}/healthz"), "*/*").expect("/healthz");
    assert_eq!(healthz.status, 200, "{}", healthz.body);
    assert!(
        healthz.body.contains(r#""nodeEligible":true"#),
        "{}",
        healthz.body
    );
    assert!(healthz.headers.contains("content-type: application/json"));

    // The Local LoadBalancer's health-check NodePort: one local endpoint.
    let hc = eventually("health-check NodePort", || {
        get(
            &lab,
            &format!("http://127.0.0.1:{HEALTH_CHECK_PORT}/"),
            "*/*",
        )
    });
    assert_eq!(hc.status, 200, "{}", hc.body);
    assert_eq!(
        hc.body,
        r#"{"service":{"namespace":"shop","name":"edge"},"localEndpoints":1,"serviceProxyHealthy":true}"#
    );
    assert!(
        hc.headers.contains("x-load-balancing-endpoint-weight: 1"),
        "{}",
        hc.headers
    );
    // Over IPv6 as well: the listener is dual-stack, as kube-proxy's `:port`.
    let hc6 = get(&lab, &format!("http://[::1]:{HEALTH_CHECK_PORT}/"), "*/*").unwrap();
    assert_eq!(hc6.status, 200, "{}", hc6.body);
    // And the metrics port names the proxier, as kube-proxy's does.
    let mode = get(&lab, &format!("http://{METRICS}/proxyMode"), "*/*").unwrap();
    assert_eq!((mode.status, mode.body.as_str()), (200, "switchyard"));

    // `switchyard trace`: the next packets, node by node, while one request goes through.
    let tracer = {
        let socket = socket.clone();
        std::thread::spawn(move || show_trace(&["-n", "3", "--wait", "10", "--socket", &socket]))
    };
    thread::sleep(Duration::from_millis(300));
    let out = lab.exec_t(
        Ns::Client,
        &format!("socat -T 2 -t 2 - TCP4:{WEB_VIP}:80,connect-timeout=2 </dev/null"),
        Duration::from_secs(6),
    );
    assert!(out.status.success(), "request: {}", text(&out.stderr));
    let (code, out, err) = tracer.join().expect("trace thread");
    assert_eq!(code, 0, "{err}");
    eprintln!("switchyard trace:\n{out}");
    assert!(out.contains("3 of 3 packets traced"), "{out}");
    assert!(out.contains("packet 1:\n  ethernet-input"), "{out}");
    assert!(out.contains("ip4-nat"), "{out}");
    let (code, _, err) = show_trace(&["-n", "0", "--socket", &socket]);
    assert_eq!(code, 2, "{err}");

    // Traffic through the ClusterIP.
    for _ in 0..8 {
        let out = lab.exec_t(
            Ns::Client,
            &format!("socat -T 2 -t 2 - TCP4:{WEB_VIP}:80,connect-timeout=2 </dev/null"),
            Duration::from_secs(6),
        );
        assert!(out.status.success(), "request: {}", text(&out.stderr));
    }

    // Per-service counters appear once the worker publishes its next snapshot.
    let labels =
        format!(r#"namespace="default",service="web",port="http",frontend="{WEB_VIP}:80/TCP""#);
    let metrics = eventually("per-service metrics", || {
        let a = get(
            &lab,
            &format!("http://{METRICS}/metrics"),
            "application/openmetrics-text;version=1.0.0",
        )?;
        let connections: u64 = a
            .body
            .lines()
            .filter(|l| {
                l.starts_with("switchyard_service_backend_connections_total{")
                    && l.contains(&labels)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        (connections >= 8)
            .then_some(a)
            .ok_or(format!("{connections} connections counted"))
    });
    assert!(
        metrics.headers.contains("application/openmetrics-text"),
        "{}",
        metrics.headers
    );
    eprintln!("/metrics:\n{}", metrics.body);
    for want in [
        "switchyard_build_info{version=",
        "switchyard_ready 1",
        "switchyard_sync_duration_seconds_bucket{le=\"+Inf\"}",
        "switchyard_last_sync_timestamp_seconds ",
        "switchyard_conntrack_entries ",
        "switchyard_node_packets_total{node=\"ip4-nat\"}",
        "switchyard_service_backend_bytes_total{",
        "direction=\"from_backend\"",
        "# EOF",
    ] {
        assert!(
            metrics.body.contains(want),
            "missing {want:?} in\n{}",
            metrics.body
        );
    }
    // Not served on the health address.
    let nf = get(&lab, &format!("http://{HEALTHZ}/metrics"), "*/*").expect("404");
    assert_eq!(nf.status, 404);

    // The admin socket, from the root namespace (it lives in the file system).
    let (code, out, err) = show(&["services", "--socket", &socket]);
    assert_eq!(code, 0, "{err}");
    eprintln!("switchyard show services:\n{out}");
    assert!(out.starts_with("SERVICE"), "{out}");
    assert!(out.contains("default/web"), "{out}");
    assert!(out.contains(&format!("{WEB_VIP}:80/TCP")), "{out}");
    assert!(out.contains("shop/edge"), "{out}");
    let (code, out, err) = show(&["conntrack", "--socket", &socket]);
    assert_eq!(code, 0, "{err}");
    eprintln!("switchyard show conntrack:\n{out}");
    assert!(out.contains(&format!("-> {WEB_VIP}:80")), "{out}");
    let (code, out, err) = show(&["conntrack", "--json", "--socket", &socket]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert!(v["entries"].as_u64().unwrap_or(0) >= 1, "{v}");
    for what in ["endpoints", "fib", "counters", "neighbors", "sync", "acl"] {
        let (code, out, err) = show(&[what, "--socket", &socket]);
        assert_eq!(code, 0, "show {what}: {err}");
        eprintln!("switchyard show {what}:\n{out}");
        assert!(!out.is_empty(), "show {what}");
    }
    let (code, _, err) = show(&["bgp", "--socket", &socket]);
    assert_eq!(code, 1);
    assert!(err.contains("not available yet"), "{err}");
    let missing = lab.dir.join("nope.sock");
    let (code, _, err) = show(&["services", "--socket", missing.to_str().expect("utf-8")]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot reach the agent's admin socket"),
        "{err}"
    );

    lab.finish().expect("agent output");
    assert!(
        !std::path::Path::new(&socket).exists(),
        "the agent removes its socket on exit"
    );
    drop(pods);
}

/// An address in use is one clear error line and a non-zero exit, before any port is opened.
#[test]
fn listen_address_in_use_is_one_error_line() {
    let dir = std::env::temp_dir().join(format!("sy-admin-bind-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("dir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let socket = dir.join("admin.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["agent", "--manifests", dir.to_str().expect("utf-8")])
        .args([
            "--node-name",
            "n",
            "--dataplane",
            "pcap",
            "-i",
            "nothing.pcap:",
        ])
        .args([
            "--metrics-bind-address",
            &addr,
            "--healthz-bind-address",
            "off",
        ])
        .args(["--admin-socket", socket.to_str().expect("utf-8")])
        .env("NO_COLOR", "1")
        .output()
        .expect("run switchyard agent");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("--metrics-bind-address {addr}: cannot listen")),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["agent", "--manifests", dir.to_str().expect("utf-8")])
        .args(["-i", "x", "--metrics-bind-address", "localhost"])
        .output()
        .expect("run switchyard agent");
    assert_ne!(bad.status.code(), Some(0));
    assert!(
        text(&bad.stderr).contains("is not ADDRESS:PORT"),
        "{}",
        text(&bad.stderr)
    );
    drop(taken);
    let _ = fs::remove_dir_all(&dir);
}
