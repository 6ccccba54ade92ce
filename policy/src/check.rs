//! A policy checked once, when it is set: selectors validated, CIDRs parsed and `except`
//! subtracted, port entries classified. Invalid parts become variants that match nothing, so
//! they can never widen what a policy allows, while the policy still isolates the pods it
//! selects.

use std::sync::Arc;

use ipnet::IpNet;

use crate::acl::{subtract, PortRange};
use crate::model::{LabelSelector, NetworkPolicy, PolicyKey, PortRef, Protocol, Rule};
use crate::validate::{check_peer, check_port, check_selector, parse_ip_block, PolicyError};

#[derive(Debug, Clone)]
pub(crate) enum NamespaceScope {
    /// No namespaceSelector: the policy's own namespace.
    Same,
    Matching(LabelSelector),
}

#[derive(Debug, Clone)]
pub(crate) enum CheckedPeer {
    Pods {
        namespaces: NamespaceScope,
        /// `None`: every pod in the selected namespaces.
        pods: Option<LabelSelector>,
    },
    /// The block with its exceptions already subtracted.
    Block(Vec<IpNet>),
    /// Invalid: matches nothing.
    Nothing,
}

#[derive(Debug, Clone)]
pub(crate) enum CheckedPort {
    Numbers {
        protocol: u8,
        ports: PortRange,
    },
    Named {
        protocol: Protocol,
        number: u8,
        name: String,
    },
    /// Invalid: matches nothing.
    Nothing,
}

#[derive(Debug, Clone)]
pub(crate) struct CheckedRule {
    /// `None`: every peer.
    pub peers: Option<Vec<CheckedPeer>>,
    /// `None`: every port and protocol.
    pub ports: Option<Vec<CheckedPort>>,
}

#[derive(Debug, Clone)]
pub(crate) struct CheckedPolicy {
    pub key: Arc<PolicyKey>,
    /// `None` when the podSelector is invalid: then the policy is taken to select every pod
    /// of its namespace and to allow nothing (in doubt isolated, never open).
    pub selector: Option<LabelSelector>,
    pub isolates_ingress: bool,
    pub isolates_egress: bool,
    /// Rules of directions the policy does not isolate are dropped: the API ignores them.
    pub ingress: Vec<CheckedRule>,
    pub egress: Vec<CheckedRule>,
    pub errors: Vec<PolicyError>,
}

impl CheckedPolicy {
    pub(crate) fn new(policy: &NetworkPolicy) -> Self {
        let key = Arc::new(policy.key());
        let mut errors = Vec::new();
        let selector = match check_selector(&policy.pod_selector) {
            Ok(()) => Some(policy.pod_selector.clone()),
            Err(reason) => {
                errors.push(PolicyError {
                    policy: (*key).clone(),
                    path: "spec.podSelector".to_string(),
                    reason,
                });
                None
            }
        };
        let (isolates_ingress, isolates_egress) = policy.effective_types();
        let mut rules = |list: &Option<Vec<Rule>>, field: &str, peer_field: &str, keep: bool| {
            let checked: Vec<CheckedRule> = list
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, rule)| {
                    check_rule(
                        rule,
                        &key,
                        &format!("spec.{field}[{i}]"),
                        peer_field,
                        &mut errors,
                    )
                })
                .collect();
            if keep {
                checked
            } else {
                Vec::new()
            }
        };
        // With an invalid podSelector the policy isolates its whole namespace but allows nothing:
        // its rules were meant for other pods, and granting them here could open a pod.
        let valid = selector.is_some();
        let ingress = rules(
            &policy.ingress,
            "ingress",
            "from",
            isolates_ingress && valid,
        );
        let egress = rules(&policy.egress, "egress", "to", isolates_egress && valid);
        Self {
            key,
            selector,
            isolates_ingress,
            isolates_egress,
            ingress,
            egress,
            errors,
        }
    }
}

fn check_rule(
    rule: &Rule,
    key: &PolicyKey,
    path: &str,
    peer_field: &str,
    errors: &mut Vec<PolicyError>,
) -> CheckedRule {
    let mut report = |at: String, reason| {
        errors.push(PolicyError {
            policy: key.clone(),
            path: at,
            reason,
        })
    };
    let peers = match &rule.peers {
        Some(list) if !list.is_empty() => Some(
            list.iter()
                .enumerate()
                .map(|(i, peer)| match check_peer(peer) {
                    Err(reason) => {
                        report(format!("{path}.{peer_field}[{i}]"), reason);
                        CheckedPeer::Nothing
                    }
                    Ok(()) => match &peer.ip_block {
                        Some(block) => match parse_ip_block(&block.cidr, &block.except) {
                            Ok((net, except)) => CheckedPeer::Block(subtract(net, &except)),
                            Err(_) => CheckedPeer::Nothing,
                        },
                        None => CheckedPeer::Pods {
                            namespaces: match &peer.namespace_selector {
                                Some(s) => NamespaceScope::Matching(s.clone()),
                                None => NamespaceScope::Same,
                            },
                            pods: peer.pod_selector.clone(),
                        },
                    },
                })
                .collect(),
        ),
        _ => None,
    };
    let ports = match &rule.ports {
        Some(list) if !list.is_empty() => Some(
            list.iter()
                .enumerate()
                .map(|(i, spec)| {
                    if let Err(reason) = check_port(spec) {
                        report(format!("{path}.ports[{i}]"), reason);
                        return CheckedPort::Nothing;
                    }
                    let Some(number) = spec.protocol.number() else {
                        return CheckedPort::Nothing;
                    };
                    match &spec.port {
                        None => CheckedPort::Numbers {
                            protocol: number,
                            ports: PortRange::ALL,
                        },
                        Some(PortRef::Number(first)) => CheckedPort::Numbers {
                            protocol: number,
                            ports: PortRange {
                                first: *first,
                                last: spec.end_port.unwrap_or(*first),
                            },
                        },
                        Some(PortRef::Name(name)) => CheckedPort::Named {
                            protocol: spec.protocol.clone(),
                            number,
                            name: name.clone(),
                        },
                    }
                })
                .collect(),
        ),
        _ => None,
    };
    CheckedRule { peers, ports }
}
