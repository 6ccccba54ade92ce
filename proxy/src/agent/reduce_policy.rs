//! Reducer for NetworkPolicy: from the API objects in an [`ObjectStore`] to the plain model of
//! [`switchyard_policy`] (namespaces, pods, policies, this node's addresses).
//!
//! # What is taken
//!
//! - **Namespaces**: name and labels, with `kubernetes.io/metadata.name` set to the name as the
//!   API server sets it (a `--manifests` namespace that leaves it out still matches).
//! - **Pods**: namespace, name, labels, addresses (`status.podIPs`, else `status.podIP`), the
//!   named ports of `spec.containers[].ports[]` and of the sidecars (`spec.initContainers[]`
//!   with `restartPolicy: Always`), and whether `spec.nodeName` is this node.
//!   Left out, not errors: host-network pods (policy does not apply to them and their address is
//!   the node's), pods without an address yet, and finished pods (`phase` Succeeded or Failed;
//!   their address may already belong to another pod).
//! - **NetworkPolicies**, field for field, keeping "absent" apart from "empty" where the API
//!   does (`policyTypes`, `ingress`/`egress`, `from`/`to`, `ports`). A missing `spec` or
//!   `podSelector` is the empty one, as the API server decodes it.
//!
//! # Bad input
//!
//! Pods: a bad address is reported ([`ReduceError`]) and left out (the pod too when none is
//! left); a named container port with a bad number or protocol is reported and left out.
//!
//! Policies are never dropped: a dropped policy could open pods it isolates. What the policy
//! crate checks itself (selectors, operators, CIDRs, protocols, port names) is passed through
//! as written, so it reports it and compiles the bad part to "matches nothing". What the plain
//! model cannot hold is reported here and made closed: a port or `endPort` outside 1-65535
//! becomes port 0, which the policy crate rejects (so the entry matches nothing), and an unknown
//! `policyTypes` entry makes the policy isolate both directions.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use switchyard_policy::model::NAMESPACE_NAME_LABEL;
use switchyard_policy::{
    Cluster, IpBlock, LabelSelector, LabelSelectorRequirement, NamedPort, Namespace, NetworkPolicy,
    Peer, Pod, PolicyType, PortRef, PortSpec, Protocol, Rule, SelectorOperator,
};

use super::objects::ObjectStore;
use super::reduce::Problem;

/// A problem with an API object; [`ReduceError::skipped`] says what was done about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {namespace}/{name}: {problem}; {skipped}")]
pub struct ReduceError {
    /// The object's kind (`Pod`, `NetworkPolicy`).
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// What is wrong.
    pub problem: Problem,
    /// What was left out or changed because of it.
    pub skipped: Skipped,
}

/// What was left out (or made closed) because of a [`Problem`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// The whole pod.
    Pod,
    /// One address of a pod.
    PodAddress,
    /// One named container port.
    ContainerPort,
    /// One port entry of a policy rule, which now matches nothing.
    PolicyPort,
    /// The policy's `policyTypes`, now Ingress and Egress.
    PolicyTypes,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Skipped::Pod => "Pod skipped",
            Skipped::PodAddress => "address skipped",
            Skipped::ContainerPort => "container port skipped",
            Skipped::PolicyPort => "the port entry matches nothing (policy still enforced)",
            Skipped::PolicyTypes => "the policy isolates both Ingress and Egress",
        })
    }
}

/// Where errors about one object go.
struct Report<'a> {
    kind: &'static str,
    namespace: &'a str,
    name: &'a str,
    errors: &'a mut Vec<ReduceError>,
}

impl Report<'_> {
    fn push(&mut self, problem: Problem, skipped: Skipped) {
        self.errors.push(ReduceError {
            kind: self.kind,
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            problem,
            skipped,
        });
    }
}

/// The policy model of the objects in `store`, for the node `node_name` whose own addresses
/// are `node_ips`, and what was wrong (see the module documentation). Output is in store
/// order: by namespace, then name.
pub fn cluster(
    store: &ObjectStore,
    node_name: &str,
    node_ips: &[IpAddr],
) -> (Cluster, Vec<ReduceError>) {
    let mut errors = Vec::new();
    let namespaces = store
        .namespaces
        .iter()
        .map(|((_, name), ns)| namespace(name, ns))
        .collect();
    let pods = store
        .pods
        .iter()
        .filter_map(|((namespace, name), p)| one_pod(namespace, name, p, node_name, &mut errors))
        .collect();
    let policies = store
        .network_policies
        .iter()
        .map(|((namespace, name), np)| one_policy(namespace, name, np, &mut errors))
        .collect();
    let mut node_ips = node_ips.to_vec();
    node_ips.sort();
    node_ips.dedup();
    let cluster = Cluster {
        namespaces,
        pods,
        policies,
        node_ips,
    };
    (cluster, errors)
}

/// One Pod as policy sees it: `None` when it takes no part (host network, finished, no
/// address yet, or skipped for bad input, which is added to `errors`).
pub fn one_pod(
    namespace: &str,
    name: &str,
    p: &core::Pod,
    node_name: &str,
    errors: &mut Vec<ReduceError>,
) -> Option<Pod> {
    let mut report = Report {
        kind: "Pod",
        namespace,
        name,
        errors,
    };
    pod(namespace, name, p, node_name, &mut report)
}

/// One NetworkPolicy as the compiler takes it; what was wrong is added to `errors`.
pub fn one_policy(
    namespace: &str,
    name: &str,
    np: &networking::NetworkPolicy,
    errors: &mut Vec<ReduceError>,
) -> NetworkPolicy {
    let mut report = Report {
        kind: "NetworkPolicy",
        namespace,
        name,
        errors,
    };
    policy(namespace, name, np, &mut report)
}

/// One Namespace as policy sees it (its labels, with the automatic name label).
pub fn namespace(name: &str, ns: &core::Namespace) -> Namespace {
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
    Namespace {
        name: name.to_string(),
        labels,
    }
}

/// The pod as policy sees it, or `None` when it is left out (reported if that is an error).
fn pod(
    namespace: &str,
    name: &str,
    p: &core::Pod,
    node_name: &str,
    report: &mut Report<'_>,
) -> Option<Pod> {
    let spec = p.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return None;
    }
    let status = p.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut written: Vec<(String, &str)> = match &status.pod_ips {
        Some(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("status.podIPs[{i}].ip"), a.ip.as_str()))
            .collect(),
        _ => status
            .pod_ip
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| vec![("status.podIP".to_string(), s)])
            .unwrap_or_default(),
    };
    let mut ips = Vec::new();
    let mut bad = Vec::new();
    for (field, value) in written.drain(..) {
        match value.trim().parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) => bad.push((field, value)),
        }
    }
    let skipped = if ips.is_empty() {
        Skipped::Pod
    } else {
        Skipped::PodAddress
    };
    for (field, value) in bad {
        report.push(
            Problem::BadIp {
                field,
                value: value.to_string(),
            },
            skipped.clone(),
        );
    }
    if ips.is_empty() {
        return None;
    }
    let mut named_ports = Vec::new();
    // The pod's containers, and its sidecars: init containers with `restartPolicy: Always`
    // run as long as the pod and serve on their ports (a Service's named `targetPort` finds
    // them too). Init containers that run to completion serve nothing.
    let containers = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(c, container)| ("containers", c, container));
    let sidecars = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter(|(_, c)| c.restart_policy.as_deref() == Some("Always"))
        .map(|(c, container)| ("initContainers", c, container));
    for (list, c, container) in containers.chain(sidecars) {
        for (i, port) in container.ports.iter().flatten().enumerate() {
            let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let field = format!("spec.{list}[{c}].ports[{i}]");
            let number = match u16::try_from(port.container_port) {
                Ok(n) if n != 0 => n,
                _ => {
                    report.push(
                        Problem::PortOutOfRange {
                            field: format!("{field}.containerPort"),
                            value: i64::from(port.container_port),
                        },
                        Skipped::ContainerPort,
                    );
                    continue;
                }
            };
            let protocol = match protocol(port.protocol.as_deref()) {
                Protocol::Unknown(value) => {
                    report.push(
                        Problem::UnknownProtocol {
                            field: format!("{field}.protocol"),
                            value,
                        },
                        Skipped::ContainerPort,
                    );
                    continue;
                }
                known => known,
            };
            named_ports.push(NamedPort {
                name: port_name.to_string(),
                protocol,
                port: number,
            });
        }
    }
    named_ports.sort();
    named_ports.dedup();
    Some(Pod {
        namespace: namespace.to_string(),
        name: name.to_string(),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ips,
        named_ports,
        node_local: spec.and_then(|s| s.node_name.as_deref()) == Some(node_name),
    })
}

/// A protocol as the API writes it; absent is TCP. Case matters, as in the API.
fn protocol(value: Option<&str>) -> Protocol {
    match value {
        None | Some("TCP") => Protocol::Tcp,
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        Some(other) => Protocol::Unknown(other.to_string()),
    }
}

fn policy(
    namespace: &str,
    name: &str,
    np: &networking::NetworkPolicy,
    report: &mut Report<'_>,
) -> NetworkPolicy {
    let no_spec = networking::NetworkPolicySpec::default();
    let spec = np.spec.as_ref().unwrap_or(&no_spec);
    let policy_types = spec.policy_types.as_ref().map(|types| {
        let mut out = Vec::new();
        let mut unknown = false;
        for (i, t) in types.iter().enumerate() {
            match t.as_str() {
                "Ingress" => out.push(PolicyType::Ingress),
                "Egress" => out.push(PolicyType::Egress),
                other => {
                    unknown = true;
                    report.push(
                        Problem::BadValue {
                            field: format!("spec.policyTypes[{i}]"),
                            value: other.to_string(),
                            expected: "Ingress or Egress",
                        },
                        Skipped::PolicyTypes,
                    );
                }
            }
        }
        if unknown {
            // In doubt isolated: the entry might have meant either direction.
            out = vec![PolicyType::Ingress, PolicyType::Egress];
        }
        out.sort();
        out.dedup();
        out
    });
    let ingress = spec.ingress.as_ref().map(|rules| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                rule(
                    &format!("spec.ingress[{i}]"),
                    r.from.as_deref(),
                    r.ports.as_deref(),
                    report,
                )
            })
            .collect()
    });
    let egress = spec.egress.as_ref().map(|rules| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                rule(
                    &format!("spec.egress[{i}]"),
                    r.to.as_deref(),
                    r.ports.as_deref(),
                    report,
                )
            })
            .collect()
    });
    NetworkPolicy {
        namespace: namespace.to_string(),
        name: name.to_string(),
        pod_selector: spec.pod_selector.as_ref().map(selector).unwrap_or_default(),
        policy_types,
        ingress,
        egress,
    }
}

fn rule(
    field: &str,
    peers: Option<&[networking::NetworkPolicyPeer]>,
    ports: Option<&[networking::NetworkPolicyPort]>,
    report: &mut Report<'_>,
) -> Rule {
    Rule {
        peers: peers.map(|peers| peers.iter().map(peer).collect()),
        ports: ports.map(|ports| {
            ports
                .iter()
                .enumerate()
                .map(|(i, p)| port(&format!("{field}.ports[{i}]"), p, report))
                .collect()
        }),
    }
}

fn peer(p: &networking::NetworkPolicyPeer) -> Peer {
    Peer {
        pod_selector: p.pod_selector.as_ref().map(selector),
        namespace_selector: p.namespace_selector.as_ref().map(selector),
        ip_block: p.ip_block.as_ref().map(|b| IpBlock {
            cidr: b.cidr.clone(),
            except: b.except.clone().unwrap_or_default(),
        }),
    }
}

/// A port entry; numbers the model cannot hold are reported and become port 0 (invalid, so the
/// entry matches nothing).
fn port(field: &str, p: &networking::NetworkPolicyPort, report: &mut Report<'_>) -> PortSpec {
    let mut out_of_range = |what: &str, value: i32| {
        report.push(
            Problem::PortOutOfRange {
                field: format!("{field}.{what}"),
                value: i64::from(value),
            },
            Skipped::PolicyPort,
        );
    };
    let protocol = protocol(p.protocol.as_deref());
    let mut closed = false;
    let port = match &p.port {
        None => None,
        Some(IntOrString::String(name)) => Some(PortRef::Name(name.clone())),
        Some(IntOrString::Int(n)) => match u16::try_from(*n) {
            Ok(n) => Some(PortRef::Number(n)),
            Err(_) => {
                out_of_range("port", *n);
                closed = true;
                None
            }
        },
    };
    let end_port = match p.end_port {
        None => None,
        Some(n) => match u16::try_from(n) {
            Ok(n) if n != 0 => Some(n),
            _ => {
                out_of_range("endPort", n);
                closed = true;
                None
            }
        },
    };
    if closed {
        return PortSpec {
            protocol,
            port: Some(PortRef::Number(0)),
            end_port: None,
        };
    }
    PortSpec {
        protocol,
        port,
        end_port,
    }
}

fn selector(s: &meta::LabelSelector) -> LabelSelector {
    LabelSelector {
        match_labels: s
            .match_labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        match_expressions: s
            .match_expressions
            .iter()
            .flatten()
            .map(|e| LabelSelectorRequirement {
                key: e.key.clone(),
                operator: match e.operator.as_str() {
                    "In" => SelectorOperator::In,
                    "NotIn" => SelectorOperator::NotIn,
                    "Exists" => SelectorOperator::Exists,
                    "DoesNotExist" => SelectorOperator::DoesNotExist,
                    other => SelectorOperator::Unknown(other.to_string()),
                },
                values: e.values.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
