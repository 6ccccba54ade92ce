//! The edge load balancer role end to end (`lab/edge-topology.sh`): a Switchyard edge spreads
//! service addresses over two Switchyard nodes with Maglev, in GRE or IP-in-IP tunnels; each
//! node unwraps and proxies to its pod, or (direct server return) delivers the packet to the
//! pod unchanged so the pod answers the client itself. `tshark` dissects the tunnels.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::dissect::{frames, ERROR_FILTER};
use common::{prerequisites, run_bounded, skip_or_fail, text, wait_bounded};

const GRE_VIP: &str = "198.51.100.20";
const IPIP_VIP: &str = "198.51.100.25";
const DSR_VIP: &str = "198.51.100.30";
const AGENT_MAX_SECS: &str = "150";

struct EdgeLab {
    prefix: String,
    dir: PathBuf,
    agents: Vec<(String, Child)>,
    others: Vec<Child>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .join("lab/edge-topology.sh")
}

impl EdgeLab {
    fn new(test: &str) -> Option<EdgeLab> {
        if let Err(reason) = prerequisites(&["socat", "tcpdump", "tshark"]) {
            skip_or_fail(test, &reason);
            return None;
        }
        let prefix = format!("sy{}t90", std::process::id());
        let dir = std::env::temp_dir().join(format!("switchyard-edge-{prefix}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        let lab = EdgeLab {
            prefix,
            dir,
            agents: Vec::new(),
            others: Vec::new(),
        };
        let out = run_bounded(
            Duration::from_secs(60),
            script().to_str().expect("utf-8"),
            &["up", &lab.prefix],
        );
        assert!(
            out.status.success(),
            "edge-topology.sh up failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        Some(lab)
    }

    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn exec(&self, ns: &str, cmd: &str) -> std::process::Output {
        run_bounded(
            Duration::from_secs(10),
            "ip",
            &["netns", "exec", &self.ns(ns), "sh", "-c", cmd],
        )
    }

    fn spawn(&self, ns: &str, name: &str, program: &str, args: &[String]) -> Child {
        Command::new("timeout")
            .args([
                "-k",
                "2",
                AGENT_MAX_SECS,
                "ip",
                "netns",
                "exec",
                &self.ns(ns),
                program,
            ])
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(fs::File::create(self.dir.join(format!("{name}.out"))).expect("out"))
            .stderr(fs::File::create(self.dir.join(format!("{name}.err"))).expect("err"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"))
    }

    /// Starts `switchyard agent` in `ns` with its ports, addresses, routes and manifests.
    fn agent(&mut self, ns: &str, ports: &[(&str, &str)], routes: &[&str], manifests: &str) {
        let dir = self.dir.join(format!("manifests-{ns}"));
        fs::create_dir_all(&dir).expect("manifest dir");
        fs::write(dir.join("services.yaml"), manifests).expect("manifests");
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--manifests".into(),
            dir.display().to_string(),
            "--node-name".into(),
            ns.into(),
            "--dataplane".into(),
            "afpacket".into(),
            "--duration".into(),
            "120".into(),
            "--admin-socket".into(),
            self.dir
                .join(format!("admin-{ns}.sock"))
                .display()
                .to_string(),
        ];
        for (port, addr) in ports {
            args.extend([
                "-i".into(),
                port.to_string(),
                "-a".into(),
                format!("{port}={addr}"),
            ]);
        }
        for r in routes {
            args.extend(["-r".into(), r.to_string()]);
        }
        let child = self.spawn(
            ns,
            &format!("agent-{ns}"),
            env!("CARGO_BIN_EXE_switchyard"),
            &args,
        );
        self.agents.push((ns.to_string(), child));
    }

    fn read(&self, file: &str) -> String {
        fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// Stops every agent with SIGTERM and returns their reports.
    fn stop_agents(&mut self) -> String {
        let mut out = String::new();
        for (ns, mut child) in self.agents.drain(..) {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let status = wait_bounded(&mut child, Duration::from_secs(10));
            out += &format!(
                "---- agent {ns}: {status:?}\n{}\n{}",
                fs::read_to_string(self.dir.join(format!("agent-{ns}.out"))).unwrap_or_default(),
                fs::read_to_string(self.dir.join(format!("agent-{ns}.err"))).unwrap_or_default()
            );
        }
        out
    }
}

impl Drop for EdgeLab {
    fn drop(&mut self) {
        for (_, c) in &mut self.agents {
            let _ = c.kill();
            let _ = c.wait();
        }
        for c in &mut self.others {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = run_bounded(
            Duration::from_secs(60),
            script().to_str().expect("utf-8"),
            &["down", &self.prefix],
        );
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn service(
    name: &str,
    vip: &str,
    cluster_ip: &str,
    forwarding: &str,
    target: u16,
    etp: &str,
) -> String {
    format!(
        "apiVersion: v1\nkind: Service\n\
         metadata: {{name: {name}, namespace: default, annotations: {{switchyard.io/forwarding: {forwarding}}}}}\n\
         spec:\n  clusterIP: {cluster_ip}\n  clusterIPs: [{cluster_ip}]\n  externalIPs: [{vip}]\n  \
         externalTrafficPolicy: {etp}\n  ports:\n  - {{name: http, protocol: TCP, port: 80, targetPort: {target}}}\n"
    )
}

fn slice(service: &str, port: u16, endpoints: &[(&str, &str)]) -> String {
    let mut s = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {service}-1, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\nports: [{{name: http, protocol: TCP, port: {port}}}]\nendpoints:\n"
    );
    for (ip, node) in endpoints {
        s += &format!("- addresses: [{ip}]\n  conditions: {{ready: true}}\n  nodeName: {node}\n");
    }
    s
}

/// The edge's view: the services' endpoints are the nodes.
fn edge_manifests() -> String {
    let nodes = [("198.18.3.2", "node1"), ("198.18.3.6", "node2")];
    [
        service("gre-web", GRE_VIP, "198.51.100.21", "gre", 80, "Cluster"),
        slice("gre-web", 80, &nodes),
        service("ipip-web", IPIP_VIP, "198.51.100.26", "ipip", 80, "Cluster"),
        slice("ipip-web", 80, &nodes),
        service("dsr-web", DSR_VIP, "198.51.100.31", "dsr", 80, "Cluster"),
        slice("dsr-web", 80, &nodes),
    ]
    .join("---\n")
}

/// A node's view: the same services, with its own pod as the endpoint.
fn node_manifests(node: &str, pod: &str) -> String {
    let here = [(pod, node)];
    [
        service("gre-web", GRE_VIP, "198.51.100.21", "gre", 8080, "Local"),
        slice("gre-web", 8080, &here),
        service("ipip-web", IPIP_VIP, "198.51.100.26", "ipip", 8080, "Local"),
        slice("ipip-web", 8080, &here),
        service("dsr-web", DSR_VIP, "198.51.100.31", "dsr", 80, "Cluster"),
        slice("dsr-web", 80, &here),
    ]
    .join("---\n")
}

fn request(lab: &EdgeLab, vip: &str) -> Result<String, String> {
    let out = lab.exec(
        "client",
        &format!("socat -T 2 - TCP4:{vip}:80,connect-timeout=2 </dev/null"),
    );
    if out.status.success() && !out.stdout.is_empty() {
        Ok(text(&out.stdout).trim().to_string())
    } else {
        Err(format!("{} {}", out.status, text(&out.stderr).trim()))
    }
}

#[test]
fn edge_tunnels_to_nodes_and_direct_server_return() {
    let Some(mut lab) = EdgeLab::new("edge_tunnels_to_nodes_and_direct_server_return") else {
        return;
    };
    lab.agent(
        "edge",
        &[
            ("c0", "198.18.1.1/24"),
            ("n1", "198.18.3.1/30"),
            ("n2", "198.18.3.5/30"),
        ],
        &[],
        &edge_manifests(),
    );
    for (node, e0, p0, pod, route) in [
        (
            "node1",
            "198.18.3.2/30",
            "198.18.4.1/24",
            "198.18.4.2",
            "0.0.0.0/0=198.18.3.1",
        ),
        (
            "node2",
            "198.18.3.6/30",
            "198.18.5.1/24",
            "198.18.5.2",
            "0.0.0.0/0=198.18.3.5",
        ),
    ] {
        lab.agent(
            node,
            &[("e0", e0), ("p0", p0)],
            &[route],
            &node_manifests(node, pod),
        );
    }
    for (pod, name) in [("pod1", "pod-1"), ("pod2", "pod-2")] {
        for port in [8080, 80] {
            let listen = vec![
                format!("TCP4-LISTEN:{port},fork,reuseaddr"),
                format!("SYSTEM:echo {name} $SOCAT_PEERADDR $SOCAT_SOCKADDR"),
            ];
            let child = lab.spawn(pod, &format!("{pod}-{port}"), "socat", &listen);
            lab.others.push(child);
        }
    }
    // Capture what node1 receives from the edge, for tshark.
    let pcap = lab.dir.join("node1-e0.pcap");
    let capture = lab.spawn(
        "node1",
        "tcpdump",
        "tcpdump",
        &[
            "-n".into(),
            "-i".into(),
            "e0".into(),
            "-U".into(),
            "-c".into(),
            "2000".into(),
            "-w".into(),
            pcap.display().to_string(),
        ],
    );
    lab.others.push(capture);
    // Ready when the client gets an answer through the whole chain.
    let deadline = Instant::now() + Duration::from_secs(20);
    while request(&lab, GRE_VIP).is_err() {
        if Instant::now() > deadline {
            let report = lab.stop_agents();
            panic!("no answer through the edge after 20 s\n{report}");
        }
        thread::sleep(Duration::from_millis(300));
    }

    for vip in [GRE_VIP, IPIP_VIP, DSR_VIP] {
        let mut pods = BTreeSet::new();
        for _ in 0..16 {
            let answer = request(&lab, vip).unwrap_or_else(|e| panic!("{vip}: {e}"));
            let mut words = answer.split(' ');
            let pod = words.next().unwrap_or_default().to_string();
            let peer = words.next().unwrap_or_default().to_string();
            let local = words.next().unwrap_or_default().to_string();
            if vip == DSR_VIP {
                // The pod saw the client itself, on the service address: nothing translated.
                assert_eq!(
                    (peer.as_str(), local.as_str()),
                    ("198.18.1.2", DSR_VIP),
                    "{answer}"
                );
            } else {
                // externalTrafficPolicy Local on the node: the client's address is kept.
                assert_eq!(peer, "198.18.1.2", "{answer}");
            }
            pods.insert(pod);
        }
        assert_eq!(
            pods.len(),
            2,
            "{vip}: Maglev should use both nodes: {pods:?}"
        );
    }

    thread::sleep(Duration::from_millis(300));
    let report = lab.stop_agents();
    eprintln!("{report}");
    let gre = frames(&pcap, "gre && ip.dst == 198.18.3.2");
    let ipip = frames(&pcap, "ip.proto == 4 && ip.dst == 198.18.3.2");
    assert!(!gre.is_empty(), "no GRE frames seen by node1\n{report}");
    assert!(!ipip.is_empty(), "no IPIP frames seen by node1\n{report}");
    let bad = frames(&pcap, ERROR_FILTER);
    assert!(
        bad.is_empty(),
        "tshark found malformed frames or errors:\n{}",
        bad.join("\n")
    );
    assert!(report.contains("encapsulated"), "{report}");
    assert!(report.contains("decapsulated"), "{report}");
    assert!(report.contains("delivered"), "{report}");
    let _ = lab.read("tcpdump.err");
}
