//! Table tests for the reducers, on objects read from YAML as the manifest source reads them.

use std::net::IpAddr;
use std::path::Path;

use super::*;
use crate::agent::manifests::{Format, Loader};

const NODE: &str = "node-a";

fn ip(s: &str) -> IpAddr {
    match s.parse() {
        Ok(ip) => ip,
        Err(e) => panic!("bad test address {s}: {e}"),
    }
}

/// A store from YAML documents, which must all load.
fn store(yaml: &str) -> ObjectStore {
    let mut loader = Loader::new();
    loader.add_text(Path::new("test.yaml"), yaml, Format::Yaml);
    let (store, errors) = loader.finish();
    assert!(errors.is_empty(), "test manifests do not load: {errors:#?}");
    store
}

fn reduce(yaml: &str) -> (Vec<Service>, Vec<ReduceError>) {
    services(&store(yaml), NODE, None)
}

/// Reduces `yaml`, which must give no errors and exactly one Service.
fn one(yaml: &str) -> Service {
    let (mut services, errors) = reduce(yaml);
    assert!(errors.is_empty(), "unexpected errors: {errors:#?}");
    assert_eq!(services.len(), 1, "expected one service: {services:#?}");
    services.remove(0)
}

fn names(services: &[Service]) -> Vec<String> {
    services.iter().map(|s| s.name.to_string()).collect()
}

/// A Service document: `meta` is extra metadata (YAML flow entries, e.g. `labels: {a: b}`),
/// `spec` extra spec lines (indented two spaces), `ports` the ports in flow style.
fn svc(name: &str, meta: &str, spec: &str, ports: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\n\
         metadata: {{name: {name}, namespace: default, {meta}}}\n\
         spec:\n  clusterIP: 198.19.0.10\n{spec}  ports: {ports}\n"
    )
}

const HTTP: &str = "[{name: http, port: 80, targetPort: 8080}]";

/// An EndpointSlice of `service`: `ports` and `endpoints` in flow style.
fn slice(name: &str, service: &str, family: &str, ports: &str, endpoints: &str) -> String {
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: {family}\nports: {ports}\nendpoints: {endpoints}\n"
    )
}

const HTTP_8080: &str = "[{name: http, port: 8080, protocol: TCP}]";

fn ep(addr: &str, port: u16, is_local: bool) -> Endpoint {
    Endpoint::ready(ip(addr), port, is_local)
}

#[test]
fn a_cluster_ip_service_with_two_endpoints() {
    let yaml = svc(
        "web",
        "",
        "  sessionAffinity: None\n",
        "[{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP}]",
    ) + &slice(
        "web-1",
        "web",
        "IPv4",
        "[{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]",
        "[{addresses: [198.18.2.3], nodeName: node-a, conditions: {ready: true}}, \
          {addresses: [198.18.2.4], nodeName: node-b}]",
    );
    let expected = Service {
        name: ServiceName {
            namespace: "default".into(),
            name: "web".into(),
        },
        cluster_ips: vec![ip("198.19.0.10")],
        external_ips: vec![],
        load_balancer_ips: vec![],
        ports: vec![
            ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                endpoints: vec![ep("198.18.2.3", 8080, true), ep("198.18.2.4", 8080, false)],
            },
            ServicePort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 53,
                node_port: None,
                endpoints: vec![ep("198.18.2.3", 5353, true), ep("198.18.2.4", 5353, false)],
            },
        ],
        affinity_timeout_secs: None,
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        load_balancer_source_ranges: Vec::new(),
        forwarding: Forwarding::Nat,
    };
    assert_eq!(one(&yaml), expected);
}

#[test]
fn which_services_are_proxied() {
    const PROXY: &str = "service.kubernetes.io/service-proxy-name";
    const HEADLESS: &str = "service.kubernetes.io/headless";
    // (name, extra metadata, extra spec, our proxy name, expected to be proxied)
    let cases: &[(&str, String, &str, Option<&str>, bool)] = &[
        ("plain", String::new(), "", None, true),
        ("plain", String::new(), "", Some("switchyard"), true),
        (
            "other",
            format!("labels: {{{PROXY}: other}}"),
            "",
            None,
            false,
        ),
        (
            "other",
            format!("labels: {{{PROXY}: other}}"),
            "",
            Some("switchyard"),
            false,
        ),
        (
            "ours",
            format!("labels: {{{PROXY}: switchyard}}"),
            "",
            Some("switchyard"),
            true,
        ),
        (
            "ours",
            format!("labels: {{{PROXY}: switchyard}}"),
            "",
            None,
            false,
        ),
        (
            "empty-proxy-name",
            format!("labels: {{{PROXY}: ''}}"),
            "",
            None,
            false,
        ),
        (
            "headless-label",
            format!("labels: {{{HEADLESS}: ''}}"),
            "",
            None,
            false,
        ),
        // The headless label rules out a Service whatever its proxy name, as the watch's
        // selector does with a proxy name (`!service.kubernetes.io/headless`).
        (
            "ours-headless-label",
            format!("labels: {{{PROXY}: switchyard, {HEADLESS}: ''}}"),
            "",
            Some("switchyard"),
            false,
        ),
        (
            "unrelated-label",
            "labels: {app: web}".into(),
            "",
            None,
            true,
        ),
        (
            "external-name",
            String::new(),
            "  type: ExternalName\n  externalName: example.test\n",
            None,
            false,
        ),
    ];
    for (name, meta, spec, proxy_name, proxied) in cases {
        let (services, errors) = services(&store(&svc(name, meta, spec, HTTP)), NODE, *proxy_name);
        assert!(errors.is_empty(), "{name}: {errors:?}");
        assert_eq!(
            services.len() == 1,
            *proxied,
            "{name} with proxy name {proxy_name:?}"
        );
    }
}

#[test]
fn headless_services_are_skipped() {
    for cluster_ip in ["None", "''"] {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: h}}\n\
             spec: {{clusterIP: {cluster_ip}, ports: {HTTP}}}\n"
        );
        let (services, errors) = reduce(&yaml);
        assert!(
            services.is_empty() && errors.is_empty(),
            "clusterIP {cluster_ip}"
        );
    }
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: h}\n\
                spec: {clusterIPs: [None], ports: [{port: 80}]}\n";
    let (services, errors) = reduce(yaml);
    assert!(services.is_empty() && errors.is_empty());
}

#[test]
fn endpoint_slices_of_other_proxies_and_headless_services_are_ignored() {
    let labelled = |label: &str| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web-x, namespace: default, labels: {{kubernetes.io/service-name: web, {label}}}}}\n\
             addressType: IPv4\nports: {HTTP_8080}\nendpoints: [{{addresses: [198.18.2.9]}}]\n"
        )
    };
    for label in [
        "service.kubernetes.io/service-proxy-name: other",
        "service.kubernetes.io/headless: ''",
    ] {
        let s = one(&(svc("web", "", "", HTTP) + &labelled(label)));
        assert!(s.ports[0].endpoints.is_empty(), "{label}");
    }
    // Labelled with our own proxy name as well: the headless label still rules it out.
    let ours_headless = labelled(
        "service.kubernetes.io/service-proxy-name: switchyard, service.kubernetes.io/headless: ''",
    );
    let (services, errors) = services(
        &store(&(svc("web", "", "", HTTP) + &ours_headless)),
        NODE,
        Some("switchyard"),
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert!(services[0].ports[0].endpoints.is_empty());
}

#[test]
fn cluster_ips_of_both_families() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: ds}\n\
                spec:\n  clusterIP: 198.19.0.11\n  clusterIPs: [198.19.0.11, '2001:db8:ffff::11']\n  \
                ipFamilies: [IPv4, IPv6]\n  ports: [{port: 80}]\n";
    assert_eq!(
        one(yaml).cluster_ips,
        vec![ip("198.19.0.11"), ip("2001:db8:ffff::11")]
    );
    // Only clusterIP, as older objects and hand-written manifests have it.
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: old}\n\
                spec: {clusterIP: '2001:db8:ffff::12', ports: [{port: 80}]}\n";
    assert_eq!(one(yaml).cluster_ips, vec![ip("2001:db8:ffff::12")]);
    // Two of one family is not a Service the API would accept.
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: two}\n\
                spec: {clusterIPs: [198.19.0.1, 198.19.0.2], ports: [{port: 80}]}\n";
    let (services, errors) = reduce(yaml);
    assert!(services.is_empty());
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].skipped, Skipped::Service);
}

#[test]
fn external_and_load_balancer_ips() {
    let status = "---\napiVersion: v1\nkind: Service\nmetadata: {name: NAME}\n\
                  spec: {type: TYPE, clusterIP: 198.19.0.12, externalIPs: [203.0.113.20], ports: [{port: 80, nodePort: 30080}]}\n\
                  status:\n  loadBalancer:\n    ingress:\n    - ip: 203.0.113.10\n    \
                  - {ip: 203.0.113.11, ipMode: VIP}\n    - {ip: 203.0.113.12, ipMode: Proxy}\n    \
                  - hostname: lb.example.test\n    - ip: '2001:db8:ffff::10'\n";
    let lb = one(&status.replace("NAME", "lb").replace("TYPE", "LoadBalancer"));
    assert_eq!(lb.external_ips, vec![ip("203.0.113.20")]);
    assert_eq!(
        lb.load_balancer_ips,
        vec![
            ip("203.0.113.10"),
            ip("203.0.113.11"),
            ip("2001:db8:ffff::10")
        ]
    );
    // Status ingress of a Service that is no longer a LoadBalancer is not captured.
    let np = one(&status.replace("NAME", "np").replace("TYPE", "NodePort"));
    assert!(np.load_balancer_ips.is_empty());
    assert_eq!(np.external_ips, vec![ip("203.0.113.20")]);
}

#[test]
fn node_ports_only_for_node_port_and_load_balancer_types() {
    // (type, extra spec, nodePort given, expected)
    let cases: &[(&str, &str, &str, Option<u16>)] = &[
        ("ClusterIP", "", ", nodePort: 30080", None),
        ("NodePort", "", ", nodePort: 30080", Some(30080)),
        ("NodePort", "", "", None),
        ("NodePort", "", ", nodePort: 0", None),
        ("LoadBalancer", "", ", nodePort: 30080", Some(30080)),
        (
            "LoadBalancer",
            "  allocateLoadBalancerNodePorts: false\n",
            "",
            None,
        ),
        // Asked for explicitly: kept whatever allocateLoadBalancerNodePorts says.
        (
            "LoadBalancer",
            "  allocateLoadBalancerNodePorts: false\n",
            ", nodePort: 30081",
            Some(30081),
        ),
    ];
    for (type_, spec, node_port, expected) in cases {
        let yaml = svc(
            "s",
            "",
            &format!("  type: {type_}\n{spec}"),
            &format!("[{{name: http, port: 80{node_port}}}]"),
        );
        assert_eq!(
            one(&yaml).ports[0].node_port,
            *expected,
            "{type_} {spec} {node_port}"
        );
    }
}

#[test]
fn session_affinity() {
    let cases: &[(&str, Option<u32>)] = &[
        ("", None),
        ("  sessionAffinity: None\n", None),
        ("  sessionAffinity: ClientIP\n", Some(10_800)),
        (
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
            Some(60),
        ),
        (
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 86400}}\n",
            Some(86_400),
        ),
    ];
    for (spec, expected) in cases {
        assert_eq!(
            one(&svc("s", "", spec, HTTP)).affinity_timeout_secs,
            *expected,
            "{spec}"
        );
    }
    for spec in [
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}\n",
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}\n",
        "  sessionAffinity: Cookie\n",
    ] {
        let (services, errors) = reduce(&svc("s", "", spec, HTTP));
        assert!(services.is_empty(), "{spec}");
        assert_eq!(errors.len(), 1, "{spec}");
        assert_eq!(errors[0].skipped, Skipped::Service);
    }
}

#[test]
fn traffic_policies() {
    use TrafficPolicy::{Cluster, Local};
    // (extra spec, external, internal, health-check NodePort)
    let cases: &[(&str, TrafficPolicy, TrafficPolicy, Option<u16>)] = &[
        ("", Cluster, Cluster, None),
        // Not reachable from outside: Local means nothing.
        ("  externalTrafficPolicy: Local\n", Cluster, Cluster, None),
        (
            "  externalTrafficPolicy: Local\n  externalIPs: [203.0.113.20]\n",
            Local,
            Cluster,
            None,
        ),
        ("  type: NodePort\n  externalTrafficPolicy: Local\n", Local, Cluster, None),
        (
            "  type: NodePort\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n",
            Local,
            Cluster,
            None,
        ),
        (
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n",
            Local,
            Cluster,
            Some(32000),
        ),
        (
            "  type: LoadBalancer\n  externalTrafficPolicy: Cluster\n  healthCheckNodePort: 32000\n",
            Cluster,
            Cluster,
            None,
        ),
        ("  type: LoadBalancer\n  externalTrafficPolicy: Local\n", Local, Cluster, None),
        ("  internalTrafficPolicy: Local\n", Cluster, Local, None),
        ("  internalTrafficPolicy: Cluster\n", Cluster, Cluster, None),
    ];
    for (spec, external, internal, hc) in cases {
        let s = one(&svc("s", "", spec, HTTP));
        assert_eq!(s.external_traffic_policy, *external, "{spec}");
        assert_eq!(s.internal_traffic_policy, *internal, "{spec}");
        assert_eq!(s.health_check_node_port, *hc, "{spec}");
    }
    for spec in [
        "  externalTrafficPolicy: Nearby\n",
        "  internalTrafficPolicy: PreferLocal\n",
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 70000\n",
    ] {
        let (services, errors) = reduce(&svc("s", "", spec, HTTP));
        assert!(services.is_empty(), "{spec}");
        assert_eq!(errors.len(), 1, "{spec}: {errors:?}");
    }
}

#[test]
fn forwarding_annotation() {
    let cases = [
        ("", Some(Forwarding::Nat)),
        (
            "annotations: {switchyard.io/forwarding: nat}",
            Some(Forwarding::Nat),
        ),
        (
            "annotations: {switchyard.io/forwarding: gre}",
            Some(Forwarding::Gre),
        ),
        (
            "annotations: {switchyard.io/forwarding: ipip}",
            Some(Forwarding::Ipip),
        ),
        (
            "annotations: {switchyard.io/forwarding: dsr}",
            Some(Forwarding::DsrIpip),
        ),
        ("annotations: {switchyard.io/forwarding: vxlan}", None),
    ];
    for (meta, expected) in cases {
        let (services, errors) = reduce(&svc("s", meta, "", HTTP));
        assert_eq!(services.first().map(|s| s.forwarding), expected, "{meta}");
        assert_eq!(errors.len(), usize::from(expected.is_none()), "{meta}");
    }
}

#[test]
fn bad_services_are_reported_and_skipped_and_the_rest_is_reduced() {
    // (extra spec, ports, problem)
    let cases: &[(&str, &str, Problem)] = &[
        (
            "  externalIPs: [203.0.113.300]\n",
            HTTP,
            Problem::BadIp {
                field: "spec.externalIPs[0]".into(),
                value: "203.0.113.300".into(),
            },
        ),
        (
            "",
            "[{name: a, port: 80}, {name: a, port: 81}]",
            Problem::DuplicatePortName("a".into()),
        ),
        (
            "",
            "[{port: 80}, {port: 81, protocol: UDP}]",
            Problem::DuplicatePortName(String::new()),
        ),
        (
            "  type: Magic\n",
            HTTP,
            Problem::BadValue {
                field: "spec.type".into(),
                value: "Magic".into(),
                expected: "ClusterIP, NodePort, LoadBalancer or ExternalName",
            },
        ),
    ];
    for (spec, ports, problem) in cases {
        let yaml = svc("bad", "", spec, ports) + &svc("good", "", "", HTTP);
        let (services, errors) = reduce(&yaml);
        assert_eq!(names(&services), ["default/good"], "{problem}");
        assert_eq!(
            errors,
            [ReduceError {
                kind: "Service",
                namespace: "default".into(),
                name: "bad".into(),
                problem: problem.clone(),
                skipped: Skipped::Service,
            }]
        );
    }
    // A bad cluster IP.
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: demo}\n\
                spec: {clusterIP: 198.19.0.x, ports: [{port: 80}]}\n";
    let (services, errors) = reduce(yaml);
    assert!(services.is_empty());
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["Service demo/bad: spec.clusterIP: \"198.19.0.x\" is not an IP address; Service skipped"]
    );
}

#[test]
fn bad_ports_are_reported_and_skipped_and_the_other_ports_kept() {
    // (ports, problem)
    let cases: &[(&str, Problem)] = &[
        (
            "[{name: zero, port: 0}, {name: http, port: 80}]",
            Problem::ZeroPort {
                field: "spec.ports[0].port".into(),
            },
        ),
        (
            "[{name: big, port: 65536}, {name: http, port: 80}]",
            Problem::PortOutOfRange {
                field: "spec.ports[0].port".into(),
                value: 65536,
            },
        ),
        (
            "[{name: icmp, port: 7, protocol: ICMP}, {name: http, port: 80}]",
            Problem::UnknownProtocol {
                field: "spec.ports[0].protocol".into(),
                value: "ICMP".into(),
            },
        ),
        (
            "[{name: np, port: 81, nodePort: -1}, {name: http, port: 80}]",
            Problem::PortOutOfRange {
                field: "spec.ports[0].nodePort".into(),
                value: -1,
            },
        ),
    ];
    for (ports, problem) in cases {
        let s_yaml = svc("s", "", "  type: NodePort\n", ports);
        let (services, errors) = reduce(&s_yaml);
        assert_eq!(services.len(), 1, "{ports}");
        let kept: Vec<&str> = services[0].ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(kept, ["http"], "{ports}");
        assert_eq!(errors.len(), 1, "{ports}");
        assert_eq!(&errors[0].problem, problem);
        assert!(matches!(&errors[0].skipped, Skipped::ServicePort(_)));
    }
}

#[test]
fn endpoint_conditions() {
    // (conditions, ready, serving, terminating)
    let cases = [
        ("{}", true, true, false),
        ("{ready: false}", false, true, false),
        ("{ready: false, serving: false}", false, false, false),
        (
            "{ready: false, serving: true, terminating: true}",
            false,
            true,
            true,
        ),
        ("{ready: false, terminating: true}", false, true, true),
        (
            "{ready: true, serving: true, terminating: false}",
            true,
            true,
            false,
        ),
    ];
    for (conditions, ready, serving, terminating) in cases {
        let yaml = svc("web", "", "", HTTP)
            + &slice(
                "web-1",
                "web",
                "IPv4",
                HTTP_8080,
                &format!("[{{addresses: [198.18.2.3], conditions: {conditions}}}]"),
            );
        let e = &one(&yaml).ports[0].endpoints[0];
        assert_eq!(
            (e.ready, e.serving, e.terminating),
            (ready, serving, terminating),
            "{conditions}"
        );
    }
    // No conditions at all.
    let yaml = svc("web", "", "", HTTP)
        + &slice(
            "web-1",
            "web",
            "IPv4",
            HTTP_8080,
            "[{addresses: [198.18.2.3]}]",
        );
    assert_eq!(
        one(&yaml).ports[0].endpoints,
        [ep("198.18.2.3", 8080, false)]
    );
}

#[test]
fn endpoints_are_local_when_on_this_node() {
    let yaml = svc("web", "", "", HTTP)
        + &slice(
            "web-1",
            "web",
            "IPv4",
            HTTP_8080,
            "[{addresses: [198.18.2.3], nodeName: node-a}, {addresses: [198.18.2.4], nodeName: node-b}, \
              {addresses: [198.18.2.5]}]",
        );
    let store = store(&yaml);
    let locals = |node: &str| -> Vec<bool> {
        let (services, _) = services(&store, node, None);
        services[0].ports[0]
            .endpoints
            .iter()
            .map(|e| e.is_local)
            .collect()
    };
    assert_eq!(locals("node-a"), [true, false, false]);
    assert_eq!(locals("node-b"), [false, true, false]);
    assert_eq!(locals(""), [false, false, false]);
}

#[test]
fn endpoints_merge_over_slices_without_repeats() {
    let yaml = svc("web", "", "", HTTP)
        + &slice(
            "web-a",
            "web",
            "IPv4",
            HTTP_8080,
            "[{addresses: [198.18.2.5]}, {addresses: [198.18.2.3], conditions: {ready: false}}]",
        )
        + &slice(
            "web-b",
            "web",
            "IPv4",
            HTTP_8080,
            // The same endpoint, ready in this slice (it moved between slices mid-update).
            "[{addresses: [198.18.2.3], nodeName: node-a}, {addresses: [198.18.2.4]}]",
        )
        + &slice(
            "web-c",
            "web",
            "IPv4",
            // Same address on another port: a different endpoint.
            "[{name: http, port: 9090}]",
            "[{addresses: [198.18.2.4]}]",
        );
    assert_eq!(
        one(&yaml).ports[0].endpoints,
        [
            ep("198.18.2.3", 8080, true),
            ep("198.18.2.4", 8080, false),
            ep("198.18.2.4", 9090, false),
            ep("198.18.2.5", 8080, false),
        ]
    );
    // The ready copy wins whichever slice comes first.
    let yaml = svc("web", "", "", HTTP)
        + &slice(
            "web-a",
            "web",
            "IPv4",
            HTTP_8080,
            "[{addresses: [198.18.2.3]}]",
        )
        + &slice(
            "web-b",
            "web",
            "IPv4",
            HTTP_8080,
            "[{addresses: [198.18.2.3], conditions: {ready: false}}]",
        );
    assert_eq!(
        one(&yaml).ports[0].endpoints,
        [ep("198.18.2.3", 8080, false)]
    );
}

#[test]
fn slice_ports_match_service_ports_by_name_and_protocol() {
    let service = svc(
        "web",
        "",
        "",
        "[{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53}]",
    );
    let yaml = service
        + &slice(
            "web-1",
            "web",
            "IPv4",
            // http over UDP matches nothing; dns over UDP matches dns; "other" matches nothing.
            "[{name: http, port: 8080, protocol: UDP}, {name: dns, port: 5353, protocol: UDP}, \
              {name: other, port: 9}, {name: dns-tcp, port: 5353}]",
            "[{addresses: [198.18.2.3]}]",
        );
    let s = one(&yaml);
    let counts: Vec<(&str, Vec<u16>)> = s
        .ports
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.endpoints.iter().map(|e| e.port).collect(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("http", vec![]),
            ("dns", vec![5353]),
            ("dns-tcp", vec![5353])
        ]
    );
}

#[test]
fn the_unnamed_port_matches_an_empty_or_absent_slice_port_name() {
    for ports in ["[{name: '', port: 8080}]", "[{port: 8080, protocol: TCP}]"] {
        let yaml = svc("web", "", "", "[{port: 80}]")
            + &slice("web-1", "web", "IPv4", ports, "[{addresses: [198.18.2.3]}]");
        assert_eq!(
            one(&yaml).ports[0].endpoints,
            [ep("198.18.2.3", 8080, false)],
            "{ports}"
        );
    }
    // A slice port without a number ("all ports") is not used.
    let yaml = svc("web", "", "", "[{port: 80}]")
        + &slice(
            "web-1",
            "web",
            "IPv4",
            "[{name: ''}]",
            "[{addresses: [198.18.2.3]}]",
        );
    assert!(one(&yaml).ports[0].endpoints.is_empty());
}

#[test]
fn slices_that_do_not_fit_are_ignored() {
    let base = svc("web", "", "", HTTP);
    let cases = [
        // FQDN slices are for ExternalName-like uses kube-proxy does not proxy.
        slice(
            "web-1",
            "web",
            "FQDN",
            HTTP_8080,
            "[{addresses: [pod.example.test]}]",
        ),
        // An IPv6 slice for a Service with only an IPv4 cluster IP.
        slice(
            "web-1",
            "web",
            "IPv6",
            HTTP_8080,
            "[{addresses: ['2001:db8:2::3']}]",
        ),
        // Another Service's slice.
        slice(
            "web-1",
            "api",
            "IPv4",
            HTTP_8080,
            "[{addresses: [198.18.2.3]}]",
        ),
        // The same Service name in another namespace.
        slice(
            "web-1",
            "web",
            "IPv4",
            HTTP_8080,
            "[{addresses: [198.18.2.3]}]",
        )
        .replace("namespace: default", "namespace: other"),
        // No service-name label.
        slice(
            "web-1",
            "web",
            "IPv4",
            HTTP_8080,
            "[{addresses: [198.18.2.3]}]",
        )
        .replace("kubernetes.io/service-name: web", "app: web"),
    ];
    for case in cases {
        let s = one(&(base.clone() + &case));
        assert!(s.ports[0].endpoints.is_empty(), "{case}");
    }
}

#[test]
fn dual_stack_endpoints() {
    let yaml = "---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
                spec: {clusterIPs: [198.19.0.10, '2001:db8:ffff::10'], ports: [{name: http, port: 80}]}\n"
        .to_string()
        + &slice("web-4", "web", "IPv4", HTTP_8080, "[{addresses: [198.18.2.3]}]")
        + &slice("web-6", "web", "IPv6", HTTP_8080, "[{addresses: ['2001:db8:2::3']}]");
    assert_eq!(
        one(&yaml).ports[0].endpoints,
        [
            ep("198.18.2.3", 8080, false),
            ep("2001:db8:2::3", 8080, false)
        ]
    );
}

#[test]
fn bad_endpoints_are_reported_and_skipped() {
    let yaml = svc("web", "", "", HTTP)
        + &slice(
            "web-1",
            "web",
            "IPv4",
            "[{name: http, port: 0}, {name: http, port: 8080}, {name: http, port: 8081, protocol: ICMP}]",
            "[{addresses: [198.18.2.300]}, {addresses: []}, {addresses: ['2001:db8:2::3']}, \
              {addresses: [198.18.2.3]}]",
        )
        + &slice("web-2", "web", "IPv5", HTTP_8080, "[{addresses: [198.18.2.4]}]");
    let (services, errors) = reduce(&yaml);
    assert_eq!(services.len(), 1);
    assert_eq!(
        services[0].ports[0].endpoints,
        [ep("198.18.2.3", 8080, false)]
    );
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "EndpointSlice default/web-1: endpoints[0].addresses[0]: \"198.18.2.300\" is not an IP address; endpoint 0 skipped",
            "EndpointSlice default/web-1: endpoints[1].addresses: no address; endpoint 1 skipped",
            "EndpointSlice default/web-1: endpoints[2].addresses[0]: 2001:db8:2::3 is not an IPv4 address; endpoint 2 skipped",
            "EndpointSlice default/web-1: ports[0].port: port 0; EndpointSlice port \"http\" skipped",
            "EndpointSlice default/web-1: ports[2].protocol: unknown protocol \"ICMP\" (TCP, UDP or SCTP); EndpointSlice port \"http\" skipped",
            "EndpointSlice default/web-2: addressType: \"IPv5\" is not valid (IPv4, IPv6 or FQDN); EndpointSlice skipped",
        ]
    );
}

#[test]
fn output_is_sorted_by_service_name() {
    let yaml = svc("b", "", "", HTTP)
        + &svc("a", "", "", HTTP)
        + &svc("c", "", "", HTTP).replace("namespace: default", "namespace: aaa")
        + &slice(
            "a-1",
            "a",
            "IPv4",
            HTTP_8080,
            "[{addresses: [198.18.2.9]}, {addresses: [198.18.2.10]}, {addresses: [198.18.2.1]}]",
        );
    let (services, errors) = reduce(&yaml);
    assert!(errors.is_empty());
    assert_eq!(names(&services), ["aaa/c", "default/a", "default/b"]);
    let addrs: Vec<IpAddr> = services[1].ports[0]
        .endpoints
        .iter()
        .map(|e| e.addr)
        .collect();
    assert_eq!(
        addrs,
        [ip("198.18.2.1"), ip("198.18.2.9"), ip("198.18.2.10")]
    );
}

#[test]
fn node_addresses_and_pod_cidrs() {
    let yaml = "---\napiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n\
                spec: {podCIDR: 198.18.2.0/24, podCIDRs: [198.18.2.0/24, '2001:db8:2::/64']}\n\
                status:\n  addresses:\n  - {type: Hostname, address: node-a}\n  \
                - {type: InternalIP, address: 198.18.1.1}\n  - {type: InternalIP, address: '2001:db8:1::1'}\n  \
                - {type: ExternalIP, address: 203.0.113.1}\n  - {type: InternalIP, address: 198.18.1.1}\n  \
                - {type: ExternalIP, address: not-an-ip}\n\
                ---\napiVersion: v1\nkind: Node\nmetadata: {name: node-b}\n\
                spec: {podCIDR: 198.18.4.0/24}\n";
    let store = store(yaml);
    assert_eq!(
        node_addresses(&store, "node-a"),
        [ip("198.18.1.1"), ip("2001:db8:1::1"), ip("203.0.113.1")]
    );
    assert!(node_addresses(&store, "node-b").is_empty());
    assert!(node_addresses(&store, "node-z").is_empty());
    let cidrs = |node: &str| -> Vec<String> {
        pod_cidrs(&store, node)
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(cidrs("node-a"), ["198.18.2.0/24", "2001:db8:2::/64"]);
    assert_eq!(cidrs("node-b"), ["198.18.4.0/24"]);
    assert!(cidrs("node-z").is_empty());
}

/// The example manifests load cleanly and reduce to what they describe.
#[test]
fn the_examples() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let (store, errors) = crate::agent::manifests::load(&dir);
    assert!(errors.is_empty(), "examples/ has errors: {errors:#?}");
    let (services, errors) = services(&store, NODE, None);
    assert!(
        errors.is_empty(),
        "examples/ reduce with errors: {errors:#?}"
    );
    assert_eq!(
        names(&services),
        ["default/web", "demo/api", "demo/edge", "demo/local"],
        "headless, ExternalName and other-proxy Services are not proxied"
    );
    let web = &services[0];
    assert_eq!(web.cluster_ips, [ip("198.19.0.10")]);
    assert_eq!(
        web.ports[0].endpoints,
        [ep("198.18.2.3", 8080, true), ep("198.18.2.4", 8080, false)]
    );
    let edge = &services[2];
    assert_eq!(edge.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(edge.load_balancer_ips, [ip("203.0.113.10")]);
    assert!(edge.health_check_node_port.is_some());
    assert!(services[1].ports.iter().all(|p| p.node_port.is_some()));
    assert_eq!(
        node_addresses(&store, NODE),
        [ip("198.18.1.1"), ip("2001:db8:1::1")]
    );
    assert_eq!(pod_cidrs(&store, NODE).len(), 2);
    assert_eq!(store.network_policies.len(), 1);
}

#[test]
fn topology_hints_are_read_against_this_node_and_its_zone() {
    let yaml = |zone: &str| {
        format!(
            "{}{}---\napiVersion: v1\nkind: Node\nmetadata: {{name: {NODE}, labels: {{topology.kubernetes.io/zone: {zone}}}}}\n",
            svc("web", "", "", HTTP),
            slice(
                "web-1",
                "web",
                "IPv4",
                HTTP_8080,
                "[{addresses: [198.18.0.1], hints: {forZones: [{name: zone-a}]}},\
                  {addresses: [198.18.0.2], hints: {forZones: [{name: zone-b}], forNodes: [{name: node-a}]}},\
                  {addresses: [198.18.0.3]}]",
            ),
        )
    };
    let web = one(&yaml("zone-a"));
    let hints: Vec<TopologyHints> = web.ports[0].endpoints.iter().map(|e| e.hints).collect();
    assert_eq!(
        hints,
        [
            TopologyHints {
                zone: Some(true),
                node: None
            },
            TopologyHints {
                zone: Some(false),
                node: Some(true)
            },
            TopologyHints::default(),
        ]
    );
    // Another zone, and no zone label at all.
    let web = one(&yaml("zone-b"));
    assert_eq!(web.ports[0].endpoints[0].hints.zone, Some(false));
    assert_eq!(web.ports[0].endpoints[1].hints.zone, Some(true));
    let web = one(&format!(
        "{}{}",
        svc("web", "", "", HTTP),
        slice(
            "web-1",
            "web",
            "IPv4",
            HTTP_8080,
            "[{addresses: [198.18.0.1], hints: {forZones: [{name: zone-a}]}}]"
        )
    ));
    assert_eq!(web.ports[0].endpoints[0].hints.zone, Some(false));
    // An empty list is no hint (kube-proxy then leaves topology aside).
    let web = one(&format!(
        "{}{}",
        svc("web", "", "", HTTP),
        slice(
            "web-1",
            "web",
            "IPv4",
            HTTP_8080,
            "[{addresses: [198.18.0.1], hints: {forZones: [], forNodes: []}}]"
        )
    ));
    assert_eq!(web.ports[0].endpoints[0].hints, TopologyHints::default());
}

/// kube-proxy since 1.31 (ServiceTrafficDistribution on by default, the gate gone in 1.33)
/// honours the hints an EndpointSlice carries whatever the Service's annotations say; asking
/// for them (`service.kubernetes.io/topology-mode`, `spec.trafficDistribution`) is the
/// EndpointSlice controller's business, which writes hints only then. So the annotations
/// neither add nor remove hints here.
#[test]
fn topology_hints_do_not_depend_on_the_services_annotations() {
    let yaml = |meta: &str| {
        format!(
            "{}{}---\napiVersion: v1\nkind: Node\nmetadata: {{name: {NODE}, labels: {{topology.kubernetes.io/zone: zone-a}}}}\n",
            svc("web", meta, "", HTTP),
            slice(
                "web-1",
                "web",
                "IPv4",
                HTTP_8080,
                "[{addresses: [198.18.0.1], hints: {forZones: [{name: zone-a}]}},\
                  {addresses: [198.18.0.2], hints: {forZones: [{name: zone-b}]}}]",
            ),
        )
    };
    for meta in [
        "",
        "annotations: {service.kubernetes.io/topology-mode: Auto}",
        "annotations: {service.kubernetes.io/topology-mode: Disabled}",
        "annotations: {service.kubernetes.io/topology-aware-hints: disabled}",
    ] {
        let web = one(&yaml(meta));
        let zones: Vec<Option<bool>> = web.ports[0]
            .endpoints
            .iter()
            .map(|e| e.hints.zone)
            .collect();
        assert_eq!(zones, [Some(true), Some(false)], "{meta}");
    }
}

#[test]
fn load_balancer_source_ranges() {
    let yaml = svc(
        "lb",
        "",
        "  type: LoadBalancer\n  loadBalancerSourceRanges: [\"198.18.0.0/15\", \" 203.0.113.7/24 \", bogus]\n",
        HTTP,
    );
    let (services, errors) = reduce(&yaml);
    assert_eq!(
        services[0].load_balancer_source_ranges,
        vec![
            "198.18.0.0/15".parse::<ipnet::IpNet>().unwrap(),
            "203.0.113.0/24".parse().unwrap()
        ]
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].to_string(),
        "Service default/lb: spec.loadBalancerSourceRanges[2]: \"bogus\" is not valid (a CIDR such as 203.0.113.0/24); source range 2 ignored"
    );
    // Only LoadBalancer Services have them.
    let yaml = svc(
        "np",
        "",
        "  type: NodePort\n  loadBalancerSourceRanges: [198.18.0.0/15]\n",
        HTTP,
    );
    assert!(reduce(&yaml).0[0].load_balancer_source_ranges.is_empty());
}

#[test]
fn a_node_is_eligible_unless_being_deleted_or_tainted_for_deletion() {
    let node = |extra: &str| {
        store(&format!(
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {NODE}{extra}}}\n"
        ))
    };
    assert!(node_eligible(&ObjectStore::default(), NODE));
    assert!(node_eligible(&node(""), NODE));
    assert!(!node_eligible(
        &node(", deletionTimestamp: \"2026-11-27T00:00:00Z\"}\nspec: {"),
        NODE
    ));
    let tainted = store(&format!(
        "---\napiVersion: v1\nkind: Node\nmetadata: {{name: {NODE}}}\n\
         spec: {{taints: [{{key: ToBeDeletedByClusterAutoscaler, effect: NoSchedule}}]}}\n"
    ));
    assert!(!node_eligible(&tainted, NODE));
    // Another node's state is not ours.
    assert!(node_eligible(&tainted, "node-b"));
}
