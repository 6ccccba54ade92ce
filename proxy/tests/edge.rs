//! The edge load balancer role end to end (`lab/edge-topology.sh`): a Switchyard edge spreads
//! service addresses over two Switchyard nodes with Maglev, in GRE or IP-in-IP tunnels; each
//! node unwraps and proxies to its pod, or (direct server return) delivers the packet to the
//! pod unchanged so the pod answers the client itself. `tshark` dissects the tunnels.

mod common;

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use common::dissect::{frames, ERROR_FILTER};
use common::edge_lab::EdgeLab;
use common::text;

const GRE_VIP: &str = "198.51.100.20";
const IPIP_VIP: &str = "198.51.100.25";
const DSR_VIP: &str = "198.51.100.30";

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
        &format!("socat -T 2 -t 2 - TCP4:{vip}:80,connect-timeout=2 </dev/null"),
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
