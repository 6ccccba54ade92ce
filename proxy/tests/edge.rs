//! The edge load balancer role end to end (`lab/edge-topology.sh`): a Switchyard edge spreads
//! service addresses over two Switchyard nodes with Maglev, in GRE or IP-in-IP tunnels; each
//! node unwraps and proxies to its pod, or (direct server return) delivers the packet to the
//! pod unchanged so the pod answers the client itself. `tshark` dissects the tunnels.
//!
//! NetworkPolicy on those flows: a default-deny ingress policy in the pods' namespace refuses
//! the client on every forwarding (judged on the node, after DNAT for GRE and IP-in-IP, by the
//! NAT node as to the backend for DSR), and a rule admitting the client's address opens them.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::dissect::{frames, ERROR_FILTER};
use common::edge_lab::EdgeLab;
use common::{eventually, text};

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

const NODES: [(&str, &str); 2] = [("node1", "198.18.4.2"), ("node2", "198.18.5.2")];
const CLIENT: &str = "198.18.1.2";

/// The pods, each on its node, as every node's API view has them (a node's ACLs cover its own).
fn pod_manifests() -> String {
    let mut docs = vec!["apiVersion: v1\nkind: Namespace\n\
         metadata: {name: default, labels: {kubernetes.io/metadata.name: default}}\n"
        .to_string()];
    for (i, (node, ip)) in NODES.iter().enumerate() {
        docs.push(format!(
            "apiVersion: v1\nkind: Pod\n\
             metadata: {{name: pod-{n}, namespace: default, labels: {{app: web}}}}\n\
             spec:\n  nodeName: {node}\n  containers: [{{name: c, image: c:1, ports: \
             [{{name: http, containerPort: 8080}}, {{name: dsr, containerPort: 80}}]}}]\n\
             status:\n  phase: Running\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n",
            n = i + 1
        ));
    }
    docs.join("---\n")
}

/// Default-deny ingress for every pod of the namespace.
const DENY_INGRESS: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
    metadata: {name: deny-ingress, namespace: default}\n\
    spec:\n  podSelector: {}\n  policyTypes: [Ingress]\n";

/// Admits the client's address to the web pods.
fn allow_client() -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: allow-client, namespace: default}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  \
         ingress:\n  - from: [{{ipBlock: {{cidr: {CLIENT}/32}}}}]\n"
    )
}

/// Writes `policies` into both nodes' manifests, whole, then renamed (the agents poll them).
fn write_policies(lab: &EdgeLab, policies: &[&str]) {
    for (node, _) in NODES {
        let dir = lab.dir.join(format!("manifests-{node}"));
        let tmp = dir.join(".policies.tmp");
        fs::write(&tmp, policies.join("---\n")).expect("write policies");
        fs::rename(&tmp, dir.join("50-policies.yaml")).expect("rename policies");
    }
}

/// `switchyard show WHAT --json` from `node`'s agent.
fn show(lab: &EdgeLab, node: &str, what: &str) -> Result<serde_json::Value, String> {
    let socket = lab.dir.join(format!("admin-{node}.sock"));
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["show", what, "--json", "--socket"])
        .arg(&socket)
        .output()
        .map_err(|e| format!("run switchyard show: {e}"))?;
    if !out.status.success() {
        return Err(format!("{node}: show {what}: {}", text(&out.stderr)));
    }
    serde_json::from_str(&text(&out.stdout)).map_err(|e| format!("{node}: show {what}: {e}"))
}

/// `node`'s enforced ACLs, once its dataplane runs the latest tables: the ingress-isolated pods
/// and the policies its rules come from.
fn enforced(lab: &EdgeLab, node: &str) -> Result<(BTreeSet<String>, BTreeSet<String>), String> {
    let sync = show(lab, node, "sync")?;
    if sync["tables_version"] != sync["dataplane_tables_version"] {
        return Err(format!(
            "{node}: dataplane runs tables {} of {}",
            sync["dataplane_tables_version"], sync["tables_version"]
        ));
    }
    let acl = show(lab, node, "acl")?;
    let (mut pods, mut policies) = (BTreeSet::new(), BTreeSet::new());
    for acl in acl["acls"].as_array().into_iter().flatten() {
        for pod in acl["ingress_pods"].as_array().into_iter().flatten() {
            pods.extend(pod.as_str().map(str::to_string));
        }
        for rule in acl["rules"].as_array().into_iter().flatten() {
            if let Some(origin) = rule["origin"].as_str().filter(|o| *o != "node") {
                policies.insert(origin.split(' ').next().unwrap_or(origin).to_string());
            }
        }
    }
    Ok((pods, policies))
}

/// Waits until each node isolates its own pod for ingress with rules from exactly `policies`.
fn wait_programmed(lab: &EdgeLab, what: &str, policies: &[&str]) {
    let want: BTreeSet<String> = policies.iter().map(|p| p.to_string()).collect();
    let started = Instant::now();
    eventually(
        what,
        15,
        || {
            for (node, pod) in NODES {
                let got = enforced(lab, node)?;
                if got != (BTreeSet::from([pod.to_string()]), want.clone()) {
                    return Err(format!("{node}: ingress-isolated pods, policies: {got:?}"));
                }
            }
            Ok(())
        },
        || lab.read("agent-node1.err") + &lab.read("agent-node2.err"),
    );
    eprintln!("{what}: programmed after {:?}", started.elapsed());
}

/// The count of `reason` at graph node `graph` (all workers), summed over both nodes.
fn counter(lab: &EdgeLab, graph: &str, reason: &str) -> Result<u64, String> {
    let mut sum = 0;
    for (node, _) in NODES {
        let counters = show(lab, node, "counters")?;
        for n in counters["nodes"].as_array().into_iter().flatten() {
            if n["name"] != graph {
                continue;
            }
            for e in n["errors"].as_array().into_iter().flatten() {
                if e["reason"] == reason {
                    sum += e["count"].as_u64().unwrap_or(0);
                }
            }
        }
    }
    Ok(sum)
}

/// `attempts` requests to each of `vips`, all at once: (vip, answer) per request.
fn requests(
    lab: &EdgeLab,
    vips: &[&'static str],
    attempts: usize,
) -> Vec<(&'static str, Result<String, String>)> {
    thread::scope(|s| {
        let all: Vec<_> = vips
            .iter()
            .flat_map(|vip| std::iter::repeat_n(*vip, attempts))
            .map(|vip| s.spawn(move || (vip, request(lab, vip))))
            .collect();
        all.into_iter()
            .map(|h| h.join().expect("request thread"))
            .collect()
    })
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

/// Starts the edge's and the nodes' agents (`node_extra`: more manifests for the nodes) and
/// the pods' listeners, which answer with the pod's name and the connection's addresses.
fn start(lab: &mut EdgeLab, node_extra: &str) {
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
            &[node_manifests(node, pod), node_extra.to_string()]
                .into_iter()
                .filter(|m| !m.is_empty())
                .collect::<Vec<_>>()
                .join("---\n"),
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
}

/// Waits until the client gets an answer through the whole chain.
fn wait_ready(lab: &mut EdgeLab) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while request(lab, GRE_VIP).is_err() {
        if Instant::now() > deadline {
            let report = lab.stop_agents();
            panic!("no answer through the edge after 20 s\n{report}");
        }
        thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn edge_tunnels_to_nodes_and_direct_server_return() {
    let Some(mut lab) = EdgeLab::new("edge_tunnels_to_nodes_and_direct_server_return") else {
        return;
    };
    start(&mut lab, "");
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
    wait_ready(&mut lab);

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

/// NetworkPolicy judges the flows the nodes receive from the edge: with a default-deny ingress
/// policy over the pods, the client's connections to the GRE, IP-in-IP and DSR services fail,
/// dropped on the nodes by the ACL after DNAT (GRE, IP-in-IP: `ip4-acl/ingress_denied`) or by
/// the NAT node judging the packet it would deliver untranslated (DSR:
/// `ip4-nat/policy_ingress_denied`); a rule admitting the client's address opens them again,
/// and the DSR pod still sees the client itself on the service address.
#[test]
fn edge_network_policy_denies_then_admits_tunnelled_and_dsr_flows() {
    let test = "edge_network_policy_denies_then_admits_tunnelled_and_dsr_flows";
    let Some(mut lab) = EdgeLab::new(test) else {
        return;
    };
    start(&mut lab, &pod_manifests());
    wait_ready(&mut lab);
    let vips = [GRE_VIP, IPIP_VIP, DSR_VIP];
    // Open before any policy.
    for (vip, answer) in requests(&lab, &vips, 2) {
        if let Err(e) = answer {
            let report = lab.stop_agents();
            panic!("{vip} before any policy: {e}\n{report}");
        }
    }
    let count = |graph: &str, reason: &str| {
        counter(&lab, graph, reason).unwrap_or_else(|e| panic!("{graph}/{reason}: {e}"))
    };
    // The dataplanes publish their counters once a second.
    let (mut acl_before, mut nat_before) = (0, 0);
    eventually(
        "the nodes' counters",
        10,
        || {
            acl_before = counter(&lab, "ip4-acl", "ingress_denied")?;
            nat_before = counter(&lab, "ip4-nat", "policy_ingress_denied")?;
            Ok(())
        },
        String::new,
    );

    write_policies(&lab, &[DENY_INGRESS]);
    wait_programmed(&lab, "default-deny ingress", &[]);
    const ATTEMPTS: usize = 3;
    let started = Instant::now();
    let answers = requests(&lab, &vips, ATTEMPTS);
    eprintln!(
        "{} requests under default deny in {:?}",
        answers.len(),
        started.elapsed()
    );
    let passed: Vec<_> = answers.iter().filter(|(_, a)| a.is_ok()).collect();
    assert!(
        passed.is_empty(),
        "connections passed a default-deny ingress policy: {passed:?}"
    );
    for (vip, answer) in &answers {
        // Dropped, not refused: no SYN reached a pod.
        let e = answer.as_ref().expect_err("denied");
        assert!(!e.contains("refused"), "{vip}: {e}");
    }
    // Every SYN was dropped on a node and counted for the reason (the first one of each
    // attempt at least; the client retransmits within its 2 s).
    let mut acl_denied = 0;
    let mut nat_denied = 0;
    eventually(
        "the nodes' denial counters",
        10,
        || {
            acl_denied = count("ip4-acl", "ingress_denied") - acl_before;
            nat_denied = count("ip4-nat", "policy_ingress_denied") - nat_before;
            if acl_denied >= 2 * ATTEMPTS as u64 && nat_denied >= ATTEMPTS as u64 {
                Ok(())
            } else {
                Err(format!(
                    "ip4-acl/ingress_denied +{acl_denied} (GRE, IP-in-IP), \
                     ip4-nat/policy_ingress_denied +{nat_denied} (DSR)"
                ))
            }
        },
        String::new,
    );
    eprintln!(
        "denied: ip4-acl/ingress_denied +{acl_denied}, ip4-nat/policy_ingress_denied +{nat_denied}"
    );

    // Admit the client: new connections pass, whichever node Maglev picks, and data comes back.
    write_policies(&lab, &[DENY_INGRESS, &allow_client()]);
    wait_programmed(&lab, "allow the client", &["default/allow-client"]);
    let mut pods = BTreeSet::new();
    for (vip, answer) in requests(&lab, &vips, 6) {
        let answer = answer.unwrap_or_else(|e| panic!("{vip} with the client admitted: {e}"));
        let words: Vec<&str> = answer.split(' ').collect();
        let (pod, peer, local) = (words[0], words.get(1), words.get(2));
        assert_eq!(peer, Some(&CLIENT), "{vip}: {answer}");
        if vip == DSR_VIP {
            assert_eq!(local, Some(&DSR_VIP), "{answer}");
        }
        pods.insert(format!("{vip} {pod}"));
    }
    eprintln!("answered: {pods:?}");

    let report = lab.stop_agents();
    eprintln!("{report}");
}
