//! Shared fixtures: a 3×3 cluster in the shape of the upstream e2e tests (namespaces x, y, z;
//! pods a, b, c in each), and a truth-table comparison that ignores column alignment.

#![allow(dead_code)]

use std::net::IpAddr;

use switchyard_policy::reference::{self, flow_addresses, Endpoint};
use switchyard_policy::*;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;
pub const NODE_IP: &str = "198.18.0.1";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Namespaces x, y, z (label `ns=<name>`), pods a, b, c in each (label `pod=<name>`), addresses
/// 10.0.<ns index>.<pod index + 1>, every pod with `serve-80` (TCP 80) and `serve-53` (UDP 53),
/// all on this node.
pub fn cluster(policies: Vec<NetworkPolicy>) -> Cluster {
    let mut c = Cluster {
        node_ips: vec![ip(NODE_IP)],
        policies,
        ..Cluster::default()
    };
    for (n, ns) in ["x", "y", "z"].iter().enumerate() {
        c.namespaces.push(Namespace {
            name: ns.to_string(),
            labels: labels(&[("ns", ns)]),
        });
        for (p, pod) in ["a", "b", "c"].iter().enumerate() {
            c.pods.push(Pod {
                namespace: ns.to_string(),
                name: pod.to_string(),
                labels: labels(&[("pod", pod)]),
                ips: vec![IpAddr::from([10, 0, n as u8, p as u8 + 1])],
                named_ports: vec![
                    NamedPort {
                        name: "serve-80".into(),
                        protocol: Protocol::Tcp,
                        port: 80,
                    },
                    NamedPort {
                        name: "serve-53".into(),
                        protocol: Protocol::Udp,
                        port: 53,
                    },
                ],
                node_local: true,
            });
        }
    }
    c
}

pub fn policy(ns: &str, name: &str, selector: LabelSelector) -> NetworkPolicy {
    NetworkPolicy {
        namespace: ns.into(),
        name: name.into(),
        pod_selector: selector,
        policy_types: None,
        ingress: None,
        egress: None,
    }
}

pub fn rule(peers: Option<Vec<Peer>>, ports: Option<Vec<PortSpec>>) -> Rule {
    Rule { peers, ports }
}

/// The reference evaluator's table, in the same shape as [`TruthTable`].
pub fn reference_table(cluster: &Cluster, protocol: u8, port: u16) -> TruthTable {
    let mut pods: Vec<PodKey> = cluster.pods.iter().map(|p| p.key()).collect();
    pods.sort();
    let allowed = pods
        .iter()
        .map(|from| {
            pods.iter()
                .map(|to| {
                    reference::allowed(
                        cluster,
                        &Endpoint::Pod(from.clone()),
                        &Endpoint::Pod(to.clone()),
                        protocol,
                        port,
                    )
                })
                .collect()
        })
        .collect();
    TruthTable {
        protocol,
        port,
        pods,
        allowed,
    }
}

fn normalize(table: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

/// Asserts that the compiled ACLs and the reference both give `expected`.
#[track_caller]
pub fn assert_table(cluster: &Cluster, protocol: u8, port: u16, expected: &str) {
    let compiled = TruthTable::from_acls(cluster, protocol, port).to_string();
    let reference = reference_table(cluster, protocol, port).to_string();
    assert_eq!(
        normalize(&compiled),
        normalize(expected),
        "compiled ACLs, {protocol}/{port}:\n{compiled}"
    );
    assert_eq!(
        normalize(&reference),
        normalize(expected),
        "reference, {protocol}/{port}:\n{reference}"
    );
}

/// Compiled verdict and reference verdict for an external address talking to a pod.
pub fn external_to_pod(
    cluster: &Cluster,
    from: &str,
    to: &PodKey,
    protocol: u8,
    port: u16,
) -> (bool, bool) {
    let compiled = compile(cluster);
    let ends = (Endpoint::External(ip(from)), Endpoint::Pod(to.clone()));
    let acl = flow_addresses(cluster, &ends.0, &ends.1)
        .is_some_and(|(s, d)| compiled.flow_allowed(s, d, protocol, port));
    (
        acl,
        reference::allowed(cluster, &ends.0, &ends.1, protocol, port),
    )
}

pub fn pod_to_external(
    cluster: &Cluster,
    from: &PodKey,
    to: &str,
    protocol: u8,
    port: u16,
) -> (bool, bool) {
    let compiled = compile(cluster);
    let ends = (Endpoint::Pod(from.clone()), Endpoint::External(ip(to)));
    let acl = flow_addresses(cluster, &ends.0, &ends.1)
        .is_some_and(|(s, d)| compiled.flow_allowed(s, d, protocol, port));
    (
        acl,
        reference::allowed(cluster, &ends.0, &ends.1, protocol, port),
    )
}
