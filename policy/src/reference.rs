//! The reference evaluator: the NetworkPolicy spec read directly, one question at a time, with
//! no ACLs, no caches and no prefix arithmetic. It is slow on purpose and is the oracle the
//! compiled ACLs are tested against. Only the validity predicates in [`crate::validate`] are
//! shared with the compiler; matching and rule semantics are written again here.
//!
//! Conventions it encodes (documented in the crate root): a pod's traffic to itself is always
//! allowed; traffic between a node-local pod and this node's own addresses is always allowed;
//! invalid parts of a policy allow nothing, and a policy whose podSelector is invalid is taken
//! to select every pod in its namespace.

use std::net::IpAddr;

use crate::model::{
    Cluster, LabelSelector, Labels, NetworkPolicy, Peer, Pod, PodKey, PortRef, PortSpec,
    SelectorOperator, NAMESPACE_NAME_LABEL,
};
use crate::validate::{check_peer, check_port, check_selector, parse_ip_block};

/// One end of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Pod(PodKey),
    /// An address that belongs to no pod (outside the cluster, or this node).
    External(IpAddr),
}

/// The addresses a connection from `from` to `to` would use: for a pod, its first address of a
/// family the other end also has. `None` when the two ends share no family (or a pod is
/// unknown or has no address).
pub fn flow_addresses(
    cluster: &Cluster,
    from: &Endpoint,
    to: &Endpoint,
) -> Option<(IpAddr, IpAddr)> {
    let addrs = |e: &Endpoint| -> Option<Vec<IpAddr>> {
        match e {
            Endpoint::Pod(k) => cluster.pod(k).map(|p| p.ips.clone()),
            Endpoint::External(ip) => Some(vec![*ip]),
        }
    };
    let (a, b) = (addrs(from)?, addrs(to)?);
    for src in &a {
        for dst in &b {
            if src.is_ipv4() == dst.is_ipv4() {
                return Some((*src, *dst));
            }
        }
    }
    None
}

/// Is a new connection from `from` to `to` on `protocol` (IP protocol number) and destination
/// `port` allowed by the cluster's policies, both ends' policies counted?
pub fn allowed(cluster: &Cluster, from: &Endpoint, to: &Endpoint, protocol: u8, port: u16) -> bool {
    let Some((src_ip, dst_ip)) = flow_addresses(cluster, from, to) else {
        return false;
    };
    if let (Endpoint::Pod(a), Endpoint::Pod(b)) = (from, to) {
        if a == b {
            return true;
        }
    }
    let egress_ok = match from {
        Endpoint::Pod(k) => egress_allowed(cluster, k, to, dst_ip, protocol, port),
        Endpoint::External(_) => true,
    };
    let ingress_ok = match to {
        Endpoint::Pod(k) => ingress_allowed(cluster, k, from, src_ip, protocol, port),
        Endpoint::External(_) => true,
    };
    egress_ok && ingress_ok
}

/// Does the ingress side of `pod` admit a connection from `from` (using address `from_ip`)?
pub fn ingress_allowed(
    cluster: &Cluster,
    pod: &PodKey,
    from: &Endpoint,
    from_ip: IpAddr,
    protocol: u8,
    port: u16,
) -> bool {
    let Some(target) = cluster.pod(pod) else {
        return true;
    };
    if target.node_local && cluster.node_ips.contains(&from_ip) {
        return true;
    }
    let mut isolated = false;
    for policy in &cluster.policies {
        if !policy_selects(policy, target) || !policy.effective_types().0 {
            continue;
        }
        isolated = true;
        if check_selector(&policy.pod_selector).is_err() {
            continue;
        }
        for rule in policy.ingress.iter().flatten() {
            if peers_match(cluster, policy, &rule.peers, from, from_ip)
                && ports_match(&rule.ports, protocol, port, Some(target))
            {
                return true;
            }
        }
    }
    !isolated
}

/// Does the egress side of `pod` let it open a connection to `to` (at address `to_ip`)?
pub fn egress_allowed(
    cluster: &Cluster,
    pod: &PodKey,
    to: &Endpoint,
    to_ip: IpAddr,
    protocol: u8,
    port: u16,
) -> bool {
    let Some(source) = cluster.pod(pod) else {
        return true;
    };
    if source.node_local && cluster.node_ips.contains(&to_ip) {
        return true;
    }
    // Named ports are those of the destination, if it is a pod.
    let destination = match to {
        Endpoint::Pod(k) => cluster.pod(k),
        Endpoint::External(_) => None,
    };
    let mut isolated = false;
    for policy in &cluster.policies {
        if !policy_selects(policy, source) || !policy.effective_types().1 {
            continue;
        }
        isolated = true;
        if check_selector(&policy.pod_selector).is_err() {
            continue;
        }
        for rule in policy.egress.iter().flatten() {
            if peers_match(cluster, policy, &rule.peers, to, to_ip)
                && ports_match(&rule.ports, protocol, port, destination)
            {
                return true;
            }
        }
    }
    !isolated
}

fn policy_selects(policy: &NetworkPolicy, pod: &Pod) -> bool {
    if policy.namespace != pod.namespace {
        return false;
    }
    // An invalid podSelector: in doubt, every pod of the namespace is selected (isolated),
    // and the policy's rules allow nothing (see the callers).
    check_selector(&policy.pod_selector).is_err() || matches(&policy.pod_selector, &pod.labels)
}

fn peers_match(
    cluster: &Cluster,
    policy: &NetworkPolicy,
    peers: &Option<Vec<Peer>>,
    other: &Endpoint,
    other_ip: IpAddr,
) -> bool {
    let peers = match peers {
        None => return true,
        Some(p) if p.is_empty() => return true,
        Some(p) => p,
    };
    peers.iter().any(|peer| {
        if check_peer(peer).is_err() {
            return false;
        }
        if let Some(block) = &peer.ip_block {
            let Ok((net, except)) = parse_ip_block(&block.cidr, &block.except) else {
                return false;
            };
            return net.contains(&other_ip) && !except.iter().any(|e| e.contains(&other_ip));
        }
        let Endpoint::Pod(key) = other else {
            return false;
        };
        let Some(pod) = cluster.pod(key) else {
            return false;
        };
        let namespace_ok = match &peer.namespace_selector {
            None => pod.namespace == policy.namespace,
            Some(sel) => {
                let mut labels = cluster
                    .namespace(&pod.namespace)
                    .map(|ns| ns.labels.clone())
                    .unwrap_or_default();
                labels.insert(NAMESPACE_NAME_LABEL.to_string(), pod.namespace.clone());
                matches(sel, &labels)
            }
        };
        let pod_ok = match &peer.pod_selector {
            None => true,
            Some(sel) => matches(sel, &pod.labels),
        };
        namespace_ok && pod_ok
    })
}

fn ports_match(
    ports: &Option<Vec<PortSpec>>,
    protocol: u8,
    port: u16,
    destination: Option<&Pod>,
) -> bool {
    let ports = match ports {
        None => return true,
        Some(p) if p.is_empty() => return true,
        Some(p) => p,
    };
    ports.iter().any(|spec| {
        if check_port(spec).is_err() || spec.protocol.number() != Some(protocol) {
            return false;
        }
        match (&spec.port, spec.end_port) {
            (None, _) => true,
            (Some(PortRef::Number(first)), None) => port == *first,
            (Some(PortRef::Number(first)), Some(last)) => *first <= port && port <= last,
            (Some(PortRef::Name(name)), _) => destination.is_some_and(|pod| {
                pod.named_ports
                    .iter()
                    .any(|np| &np.name == name && np.protocol == spec.protocol && np.port == port)
            }),
        }
    })
}

/// Label selector semantics, spelled out: every matchLabels pair and every expression holds.
fn matches(selector: &LabelSelector, labels: &Labels) -> bool {
    for (key, value) in &selector.match_labels {
        if labels.get(key) != Some(value) {
            return false;
        }
    }
    for req in &selector.match_expressions {
        let ok = match req.operator {
            SelectorOperator::In => match labels.get(&req.key) {
                Some(v) => req.values.contains(v),
                None => false,
            },
            SelectorOperator::NotIn => match labels.get(&req.key) {
                Some(v) => !req.values.contains(v),
                None => true,
            },
            SelectorOperator::Exists => labels.contains_key(&req.key),
            SelectorOperator::DoesNotExist => !labels.contains_key(&req.key),
            SelectorOperator::Unknown(_) => false,
        };
        if !ok {
            return false;
        }
    }
    true
}
