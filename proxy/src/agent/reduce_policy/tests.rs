//! Table tests for the policy reducer, on objects read from YAML as the manifest source reads
//! them.

use std::net::IpAddr;
use std::path::Path;

use switchyard_policy::{Direction, PolicyKey};

use super::*;
use crate::agent::manifests::{Format, Loader};

const NODE: &str = "node-a";

fn ip(s: &str) -> IpAddr {
    match s.parse() {
        Ok(ip) => ip,
        Err(e) => panic!("bad test address {s}: {e}"),
    }
}

fn store(yaml: &str) -> ObjectStore {
    let mut loader = Loader::new();
    loader.add_text(Path::new("test.yaml"), yaml, Format::Yaml);
    let (store, errors) = loader.finish();
    assert!(errors.is_empty(), "test manifests do not load: {errors:#?}");
    store
}

fn reduce(yaml: &str) -> (Cluster, Vec<ReduceError>) {
    cluster(&store(yaml), NODE, &[ip("198.18.0.1")])
}

fn policy_of(yaml: &str) -> (NetworkPolicy, Vec<ReduceError>) {
    let (mut c, errors) = reduce(yaml);
    assert_eq!(c.policies.len(), 1, "{c:#?}");
    (c.policies.remove(0), errors)
}

const PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
spec:
  nodeName: node-a
  containers:
  - name: c1
    ports:
    - {name: http, containerPort: 8080}
    - {containerPort: 9000}
    - {name: dns, containerPort: 53, protocol: UDP}
  - name: c2
    ports:
    - {name: bad, containerPort: 70000}
    - {name: odd, containerPort: 1, protocol: ICMP}
status:
  phase: Running
  podIPs: [{ip: 198.18.1.2}, {ip: "2001:db8::2"}, {ip: nope}]
---
apiVersion: v1
kind: Pod
metadata: {name: remote, namespace: prod}
spec: {nodeName: node-b, containers: []}
status: {podIP: 198.18.1.3}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: prod}
spec: {nodeName: node-a, hostNetwork: true, containers: []}
status: {podIP: 198.18.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: prod}
spec: {nodeName: node-a, containers: []}
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: prod}
spec: {nodeName: node-a, containers: []}
status: {phase: Succeeded, podIP: 198.18.1.9}
---
apiVersion: v1
kind: Pod
metadata: {name: broken, namespace: prod}
spec: {nodeName: node-a, containers: []}
status: {podIP: "198.18.1.300"}
"#;

#[test]
fn namespaces_and_pods() {
    let (c, errors) = reduce(PODS);
    assert_eq!(c.node_ips, vec![ip("198.18.0.1")]);
    assert_eq!(c.namespaces.len(), 1);
    assert_eq!(
        c.namespaces[0].labels.get(NAMESPACE_NAME_LABEL),
        Some(&"prod".to_string())
    );
    assert_eq!(c.namespaces[0].labels.get("team"), Some(&"a".to_string()));

    let names: Vec<&str> = c.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["remote", "web"]);
    let web = &c.pods[1];
    assert!(web.node_local);
    assert!(!c.pods[0].node_local);
    assert_eq!(c.pods[0].ips, vec![ip("198.18.1.3")], "podIP fallback");
    assert_eq!(web.ips, vec![ip("198.18.1.2"), ip("2001:db8::2")]);
    assert_eq!(web.labels.get("app"), Some(&"web".to_string()));
    assert_eq!(
        web.named_ports,
        vec![
            NamedPort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 53
            },
            NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080
            },
        ]
    );

    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines
        .iter()
        .any(|l| l.starts_with("Pod prod/web: status.podIPs[2].ip")
            && l.ends_with("address skipped")));
    assert!(lines
        .iter()
        .any(|l| l.contains("spec.containers[1].ports[0].containerPort") && l.contains("70000")));
    assert!(lines.iter().any(|l| l.contains("ICMP")));
    assert!(lines.iter().any(|l| l
        == "Pod prod/broken: status.podIP: \"198.18.1.300\" is not an IP address; Pod skipped"));
}

#[test]
fn policy_fields_one_to_one() {
    let (p, errors) = policy_of(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: prod}
spec:
  podSelector:
    matchLabels: {app: web}
    matchExpressions:
    - {key: tier, operator: In, values: [a, b]}
    - {key: gone, operator: DoesNotExist}
    - {key: x, operator: Matches, values: [y]}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: a}}
      podSelector: {}
    - ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}
    - {}
    ports:
    - {port: 80}
    - {protocol: UDP, port: dns}
    - {protocol: TCP, port: 8000, endPort: 8100}
    - {protocol: SCTP}
    - {protocol: ICMP, port: 1}
  - {}
  egress: []
"#,
    );
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(p.key(), PolicyKey::new("prod", "np"));
    assert_eq!(
        p.pod_selector,
        LabelSelector::labels([("app", "web")])
            .with_expression("tier", SelectorOperator::In, &["a", "b"])
            .with_expression("gone", SelectorOperator::DoesNotExist, &[])
            .with_expression("x", SelectorOperator::Unknown("Matches".into()), &["y"])
    );
    assert_eq!(
        p.policy_types,
        Some(vec![PolicyType::Ingress, PolicyType::Egress])
    );
    assert_eq!(p.egress, Some(vec![]), "empty stays empty");
    let ingress = p.ingress.unwrap_or_default();
    assert_eq!(ingress.len(), 2);
    assert_eq!(ingress[1], Rule::default(), "absent from/ports stay absent");
    assert_eq!(
        ingress[0].peers,
        Some(vec![
            Peer::pods_in_namespaces(
                LabelSelector::everything(),
                LabelSelector::labels([("team", "a")])
            ),
            Peer::ip_block("198.51.100.0/24", &["198.51.100.128/25"]),
            Peer::default(),
        ])
    );
    assert_eq!(
        ingress[0].ports,
        Some(vec![
            PortSpec::number(Protocol::Tcp, 80),
            PortSpec::named(Protocol::Udp, "dns"),
            PortSpec::range(Protocol::Tcp, 8000, 8100),
            PortSpec::any(Protocol::Sctp),
            PortSpec::number(Protocol::Unknown("ICMP".into()), 1),
        ])
    );
}

#[test]
fn absent_spec_parts() {
    let (p, errors) = policy_of(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny}\n",
    );
    assert!(errors.is_empty());
    assert_eq!(p.namespace, "default");
    assert_eq!(p.pod_selector, LabelSelector::everything());
    assert_eq!(p.policy_types, None);
    assert_eq!(p.ingress, None);
    assert_eq!(p.egress, None);
    assert_eq!(p.effective_types(), (true, false));
}

#[test]
fn unrepresentable_values_are_closed() {
    let (p, errors) = policy_of(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: prod}
spec:
  podSelector: {}
  policyTypes: [ingress]
  egress:
  - ports:
    - {port: 70000}
    - {port: 80, endPort: 99999}
    - {port: -1}
"#,
    );
    assert_eq!(
        p.policy_types,
        Some(vec![PolicyType::Ingress, PolicyType::Egress])
    );
    let closed = PortSpec::number(Protocol::Tcp, 0);
    assert_eq!(
        p.egress.unwrap_or_default()[0].ports,
        Some(vec![closed.clone(), closed.clone(), closed])
    );
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines[0].starts_with("NetworkPolicy prod/np: spec.policyTypes[0]"));
    assert!(lines[2].contains("spec.egress[0].ports[1].endPort"));
    assert!(lines[3].ends_with("the port entry matches nothing (policy still enforced)"));
}

/// The policy crate sees what the reducer passed through and reports it, isolating.
#[test]
fn invalid_parts_reach_the_compiler() {
    let (c, errors) = reduce(&format!(
        "{PODS}---\n{}",
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 198.51.100.0/33}}]
"#
    ));
    assert_eq!(errors.len(), 4, "only the pod errors: {errors:#?}");
    let compiled = switchyard_policy::compile(&c);
    assert_eq!(compiled.errors().len(), 1, "{:#?}", compiled.errors());
    let web = switchyard_policy::PodKey::new("prod", "web");
    let acl = compiled.pod_acl(&web, Direction::Ingress);
    assert_eq!(
        acl.map(|a| a.default),
        Some(switchyard_policy::DefaultAction::Deny)
    );
    assert!(!compiled.flow_allowed(ip("198.51.100.1"), ip("198.18.1.2"), 6, 80));
    assert!(compiled.flow_allowed(ip("198.18.0.1"), ip("198.18.1.2"), 6, 80));
}

/// Named ports are the pod's: a sidecar's (an init container with `restartPolicy: Always`,
/// which runs as long as the pod) count, as they do for a Service's `targetPort`; an init
/// container that runs to completion serves nothing.
#[test]
fn sidecar_named_ports_are_the_pods() {
    let (c, errors) = reduce(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod}
spec:
  nodeName: node-a
  initContainers:
  - name: setup
    ports:
    - {name: setup, containerPort: 7000}
  - name: proxy
    restartPolicy: Always
    ports:
    - {name: metrics, containerPort: 9090}
    - {name: bad, containerPort: 0}
  containers:
  - name: app
    ports:
    - {name: http, containerPort: 8080}
status: {podIP: 198.18.1.2}
"#,
    );
    let ports: Vec<(&str, u16)> = c.pods[0]
        .named_ports
        .iter()
        .map(|p| (p.name.as_str(), p.port))
        .collect();
    assert_eq!(ports, [("http", 8080), ("metrics", 9090)]);
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("spec.initContainers[1].ports[1].containerPort"),
        "{lines:#?}"
    );
}
