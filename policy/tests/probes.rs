//! Conformance probes: single verdicts from the NetworkPolicy API reference and the upstream
//! network-policy e2e suite, each asked of both the compiled ACLs and the reference evaluator
//! (which must agree) and held to the verdict the spec gives.

mod common;

use common::*;
use switchyard_policy::reference::{self, flow_addresses, Endpoint};
use switchyard_policy::*;

fn pod(s: &str) -> Endpoint {
    let (ns, name) = s.split_once('/').unwrap_or((s, s));
    Endpoint::Pod(PodKey::new(ns, name))
}

fn ext(s: &str) -> Endpoint {
    Endpoint::External(ip(s))
}

/// The verdict for a new connection, after checking that the ACLs and the reference agree.
#[track_caller]
fn verdict(c: &Cluster, from: &Endpoint, to: &Endpoint, protocol: u8, port: u16) -> bool {
    let compiled = compile(c);
    let acl = flow_addresses(c, from, to)
        .is_some_and(|(s, d)| compiled.flow_allowed(s, d, protocol, port));
    let reference = reference::allowed(c, from, to, protocol, port);
    assert_eq!(
        acl, reference,
        "ACLs and reference disagree on {from:?} -> {to:?} {protocol}/{port}"
    );
    acl
}

#[track_caller]
fn expect(c: &Cluster, cases: &[(&str, &str, u8, u16, bool)]) {
    for (from, to, protocol, port, want) in cases {
        let parse = |s: &str| {
            if s.contains('/') {
                pod(s)
            } else {
                ext(s)
            }
        };
        let got = verdict(c, &parse(from), &parse(to), *protocol, *port);
        assert_eq!(got, *want, "{from} -> {to} {protocol}/{port}");
    }
}

fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector::labels(pairs.iter().copied())
}

fn with(
    mut p: NetworkPolicy,
    types: Option<Vec<PolicyType>>,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
) -> NetworkPolicy {
    p.policy_types = types;
    p.ingress = ingress;
    p.egress = egress;
    p
}

#[test]
fn empty_egress_list_without_types_does_not_isolate_egress() {
    // policyTypes defaults to Ingress, plus Egress only when there are egress rules.
    let c = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        None,
        Some(vec![]),
        Some(vec![]),
    )]);
    expect(
        &c,
        &[
            ("x/a", "y/a", TCP, 80, true),
            ("y/a", "x/a", TCP, 80, false),
        ],
    );
}

#[test]
fn egress_only_types_ignore_ingress_rules() {
    let c = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        Some(vec![PolicyType::Egress]),
        Some(vec![rule(
            Some(vec![Peer::pods(sel(&[("pod", "zzz")]))]),
            None,
        )]),
        None,
    )]);
    expect(
        &c,
        &[
            ("y/a", "x/a", TCP, 80, true),
            ("x/a", "y/a", TCP, 80, false),
            ("x/a", "x/b", UDP, 53, false),
        ],
    );
}

#[test]
fn pod_selector_alone_is_the_policy_namespace_only() {
    let c = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        None,
        Some(vec![rule(
            Some(vec![Peer::pods(sel(&[("pod", "b")]))]),
            None,
        )]),
        None,
    )]);
    expect(
        &c,
        &[
            ("x/b", "x/a", TCP, 80, true),
            ("y/b", "x/a", TCP, 80, false),
            ("x/c", "x/a", TCP, 80, false),
            ("x/b", "x/a", SCTP, 81, true),
        ],
    );
}

#[test]
fn empty_namespace_selector_is_every_namespace() {
    let c = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        None,
        Some(vec![rule(
            Some(vec![Peer::pods_in_namespaces(
                sel(&[("pod", "b")]),
                LabelSelector::everything(),
            )]),
            None,
        )]),
        None,
    )]);
    expect(
        &c,
        &[
            ("x/b", "x/a", TCP, 80, true),
            ("y/b", "x/a", TCP, 80, true),
            ("z/b", "x/a", UDP, 81, true),
            ("z/c", "x/a", TCP, 80, false),
        ],
    );
    let all = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        None,
        Some(vec![rule(
            Some(vec![Peer::namespaces(LabelSelector::everything())]),
            None,
        )]),
        None,
    )]);
    expect(
        &all,
        &[
            ("z/c", "x/a", TCP, 80, true),
            // Not a pod: a namespace selector does not match it.
            ("203.0.113.9", "x/a", TCP, 80, false),
        ],
    );
}

#[test]
fn and_versus_or_of_selectors() {
    let and = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        None,
        Some(vec![rule(
            Some(vec![Peer::pods_in_namespaces(
                sel(&[("pod", "b")]),
                sel(&[("ns", "y")]),
            )]),
            None,
        )]),
        None,
    )]);
    expect(
        &and,
        &[
            ("y/b", "x/a", TCP, 80, true),
            ("y/c", "x/a", TCP, 80, false),
            ("x/b", "x/a", TCP, 80, false),
        ],
    );
    let or = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        None,
        Some(vec![rule(
            Some(vec![
                Peer::pods(sel(&[("pod", "b")])),
                Peer::namespaces(sel(&[("ns", "y")])),
            ]),
            None,
        )]),
        None,
    )]);
    expect(
        &or,
        &[
            ("y/b", "x/a", TCP, 80, true),
            ("y/c", "x/a", TCP, 80, true),
            ("x/b", "x/a", TCP, 80, true),
            ("x/c", "x/a", TCP, 80, false),
            ("z/b", "x/a", TCP, 80, false),
        ],
    );
}

#[test]
fn match_expressions_with_absent_labels() {
    let notin = LabelSelector::default().with_expression("pod", SelectorOperator::NotIn, &["a"]);
    let absent =
        LabelSelector::default().with_expression("missing", SelectorOperator::NotIn, &["v"]);
    let dne =
        LabelSelector::default().with_expression("missing", SelectorOperator::DoesNotExist, &[]);
    let exists = LabelSelector::default().with_expression("missing", SelectorOperator::Exists, &[]);
    let in_ns = LabelSelector::default().with_expression(
        "kubernetes.io/metadata.name",
        SelectorOperator::In,
        &["y", "z"],
    );
    let mk = |peer: Peer| {
        cluster(vec![with(
            policy("x", "p", sel(&[("pod", "a")])),
            None,
            Some(vec![rule(Some(vec![peer]), None)]),
            None,
        )])
    };
    expect(
        &mk(Peer::pods(notin)),
        &[
            ("x/b", "x/a", TCP, 80, true),
            ("y/b", "x/a", TCP, 80, false),
        ],
    );
    expect(&mk(Peer::pods(absent)), &[("x/c", "x/a", TCP, 80, true)]);
    expect(&mk(Peer::pods(dne)), &[("x/c", "x/a", TCP, 80, true)]);
    expect(&mk(Peer::pods(exists)), &[("x/c", "x/a", TCP, 80, false)]);
    expect(
        &mk(Peer::namespaces(in_ns)),
        &[
            ("y/c", "x/a", TCP, 80, true),
            ("z/a", "x/a", TCP, 80, true),
            ("x/b", "x/a", TCP, 80, false),
        ],
    );
}

#[test]
fn ip_blocks_match_pod_addresses_minus_except() {
    // x/a is 10.0.0.1, x/b 10.0.0.2; y/* 10.0.1.*.
    let c = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        None,
        Some(vec![rule(
            Some(vec![Peer::ip_block(
                "10.0.0.0/16",
                &["10.0.1.0/24", "10.0.0.3/32"],
            )]),
            None,
        )]),
        None,
    )]);
    expect(
        &c,
        &[
            ("x/b", "x/a", TCP, 80, true),
            ("x/c", "x/a", TCP, 80, false),
            ("y/b", "x/a", TCP, 80, false),
            ("z/b", "x/a", TCP, 80, true),
            ("10.0.200.1", "x/a", UDP, 81, true),
            ("10.1.0.1", "x/a", TCP, 80, false),
        ],
    );
    // An address in one peer's except but inside another peer is allowed (upstream e2e:
    // "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed").
    let overlap = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        Some(vec![PolicyType::Egress]),
        None,
        Some(vec![rule(
            Some(vec![
                Peer::ip_block("10.0.0.0/16", &["10.0.1.2/32"]),
                Peer::ip_block("10.0.1.2/32", &[]),
            ]),
            None,
        )]),
    )]);
    expect(
        &overlap,
        &[
            ("x/a", "y/b", TCP, 80, true),
            ("x/a", "y/c", TCP, 80, true),
            ("x/a", "203.0.113.1", TCP, 80, false),
        ],
    );
}

#[test]
fn ipv6_ip_block_except() {
    let mut c = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        None,
        Some(vec![rule(
            Some(vec![Peer::ip_block("2001:db8::/32", &["2001:db8:1::/48"])]),
            None,
        )]),
        None,
    )]);
    for p in &mut c.pods {
        if p.namespace == "x" && p.name == "a" {
            p.ips.push(ip("2001:db8:aa::1"));
        }
    }
    expect(
        &c,
        &[
            ("2001:db8:2::5", "x/a", TCP, 80, true),
            ("2001:db8:1::5", "x/a", TCP, 80, false),
            ("2001:db9::5", "x/a", TCP, 80, false),
            // v4 pods are not in a v6 block.
            ("x/b", "x/a", TCP, 80, false),
        ],
    );
}

#[test]
fn ports_numbers_names_ranges_protocols() {
    let mk = |ports: Vec<PortSpec>| {
        cluster(vec![with(
            policy("x", "p", sel(&[("pod", "a")])),
            None,
            Some(vec![rule(None, Some(ports))]),
            None,
        )])
    };
    // Protocol defaults to TCP; a TCP rule does not open UDP or SCTP on the same port.
    let tcp80 = mk(vec![PortSpec {
        port: Some(PortRef::Number(80)),
        ..PortSpec::default()
    }]);
    expect(
        &tcp80,
        &[
            ("y/b", "x/a", TCP, 80, true),
            ("y/b", "x/a", TCP, 81, false),
            ("y/b", "x/a", UDP, 80, false),
            ("y/b", "x/a", SCTP, 80, false),
            ("203.0.113.1", "x/a", TCP, 80, true),
        ],
    );
    let sctp = mk(vec![PortSpec::number(Protocol::Sctp, 80)]);
    expect(
        &sctp,
        &[
            ("y/b", "x/a", SCTP, 80, true),
            ("y/b", "x/a", TCP, 80, false),
        ],
    );
    let range = mk(vec![PortSpec::range(Protocol::Tcp, 81, 90)]);
    expect(
        &range,
        &[
            ("y/b", "x/a", TCP, 80, false),
            ("y/b", "x/a", TCP, 81, true),
            ("y/b", "x/a", TCP, 90, true),
            ("y/b", "x/a", TCP, 91, false),
        ],
    );
    let proto_only = mk(vec![PortSpec::any(Protocol::Udp)]);
    expect(
        &proto_only,
        &[
            ("y/b", "x/a", UDP, 81, true),
            ("y/b", "x/a", UDP, 5353, true),
            ("y/b", "x/a", TCP, 81, false),
        ],
    );
    // Named: x/a serves serve-80 on TCP 80 and serve-53 on UDP 53.
    let named = mk(vec![PortSpec::named(Protocol::Tcp, "serve-80")]);
    expect(
        &named,
        &[
            ("y/b", "x/a", TCP, 80, true),
            ("y/b", "x/a", TCP, 81, false),
        ],
    );
    let wrong_protocol = mk(vec![PortSpec::named(Protocol::Udp, "serve-80")]);
    expect(
        &wrong_protocol,
        &[
            ("y/b", "x/a", TCP, 80, false),
            ("y/b", "x/a", UDP, 80, false),
        ],
    );
    let unknown_name = mk(vec![PortSpec::named(Protocol::Tcp, "serve-nothing")]);
    expect(
        &unknown_name,
        &[
            ("y/b", "x/a", TCP, 80, false),
            ("y/b", "x/b", TCP, 80, true),
        ],
    );
}

#[test]
fn egress_named_port_is_the_peer_pods() {
    let mut c = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        Some(vec![PolicyType::Egress]),
        None,
        Some(vec![rule(
            None,
            Some(vec![PortSpec::named(Protocol::Tcp, "web")]),
        )]),
    )]);
    for p in &mut c.pods {
        if p.name == "b" {
            p.named_ports.push(NamedPort {
                name: "web".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            });
        }
        if p.name == "c" {
            p.named_ports.push(NamedPort {
                name: "web".into(),
                protocol: Protocol::Tcp,
                port: 9090,
            });
        }
    }
    expect(
        &c,
        &[
            ("x/a", "y/b", TCP, 8080, true),
            ("x/a", "y/b", TCP, 9090, false),
            ("x/a", "z/c", TCP, 9090, true),
            ("x/a", "z/c", TCP, 8080, false),
            ("x/a", "y/a", TCP, 8080, false),
            ("x/a", "203.0.113.1", TCP, 8080, false),
        ],
    );
}

#[test]
fn rules_without_peers_or_ports_and_additive_policies() {
    let c = cluster(vec![
        with(
            policy("x", "ports-only", sel(&[("pod", "a")])),
            None,
            Some(vec![rule(
                None,
                Some(vec![PortSpec::number(Protocol::Tcp, 81)]),
            )]),
            None,
        ),
        with(
            policy("x", "peers-only", sel(&[("pod", "a")])),
            None,
            Some(vec![rule(
                Some(vec![Peer::namespaces(sel(&[("ns", "y")]))]),
                None,
            )]),
            None,
        ),
        with(
            policy("x", "deny-all", LabelSelector::everything()),
            Some(vec![PolicyType::Ingress, PolicyType::Egress]),
            None,
            None,
        ),
    ]);
    expect(
        &c,
        &[
            ("z/a", "x/a", TCP, 81, true),
            ("z/a", "x/a", TCP, 80, false),
            ("y/c", "x/a", UDP, 80, true),
            ("y/c", "x/b", UDP, 80, false),
            // x/b's egress is denied, even where x/a's ingress is open.
            ("x/b", "x/a", TCP, 81, false),
            ("x/a", "y/a", TCP, 80, false),
            // The node's address reaches local pods whatever the policy.
            (NODE_IP, "x/b", TCP, 8080, true),
            ("x/b", NODE_IP, TCP, 10250, true),
        ],
    );
}

#[test]
fn allow_all_egress_takes_precedence_over_narrow_egress() {
    let c = cluster(vec![
        with(
            policy("x", "narrow", sel(&[("pod", "a")])),
            Some(vec![PolicyType::Egress]),
            None,
            Some(vec![rule(
                Some(vec![Peer::pods(sel(&[("pod", "b")]))]),
                None,
            )]),
        ),
        with(
            policy("x", "all", sel(&[("pod", "a")])),
            Some(vec![PolicyType::Egress]),
            None,
            Some(vec![Rule::default()]),
        ),
    ]);
    expect(
        &c,
        &[
            ("x/a", "z/c", TCP, 80, true),
            ("x/a", "203.0.113.1", UDP, 53, true),
        ],
    );
}

#[test]
fn invalid_policies_are_reported_and_do_not_break_others() {
    let bad = |name: &str, peer: Peer, ports: Option<Vec<PortSpec>>| {
        with(
            policy("x", name, sel(&[("pod", "a")])),
            None,
            Some(vec![rule(Some(vec![peer]), ports)]),
            None,
        )
    };
    let c = cluster(vec![
        bad("bad-cidr", Peer::ip_block("10.0.0.0/33", &[]), None),
        bad(
            "except-outside",
            Peer::ip_block("10.0.0.0/24", &["10.0.1.0/25"]),
            None,
        ),
        bad(
            "end-below",
            Peer::namespaces(LabelSelector::everything()),
            Some(vec![PortSpec::range(Protocol::Tcp, 90, 80)]),
        ),
        bad(
            "named-range",
            Peer::namespaces(LabelSelector::everything()),
            Some(vec![PortSpec {
                protocol: Protocol::Tcp,
                port: Some(PortRef::Name("serve-80".into())),
                end_port: Some(90),
            }]),
        ),
        bad("empty-key", Peer::pods(sel(&[("", "b")])), None),
        bad(
            "empty-key-expr",
            Peer::pods(LabelSelector::default().with_expression("", SelectorOperator::Exists, &[])),
            None,
        ),
        bad("good", Peer::pods(sel(&[("pod", "b")])), None),
    ]);
    expect(
        &c,
        &[
            ("x/b", "x/a", TCP, 80, true),
            ("x/c", "x/a", TCP, 80, false),
            ("10.0.0.9", "x/a", TCP, 80, false),
            ("y/c", "x/a", TCP, 85, false),
            ("y/c", "y/a", TCP, 85, true),
        ],
    );
    let errors = compile(&c).errors().to_vec();
    let names: Vec<&str> = errors.iter().map(|e| e.policy.name.as_str()).collect();
    for name in [
        "bad-cidr",
        "except-outside",
        "end-below",
        "named-range",
        "empty-key",
        "empty-key-expr",
    ] {
        assert!(names.contains(&name), "{name} not reported: {errors:?}");
    }
    assert!(!names.contains(&"good"));
    for e in &errors {
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn runtime_relabels_change_verdicts() {
    let policies = vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        None,
        Some(vec![rule(
            Some(vec![Peer::pods_in_namespaces(
                sel(&[("role", "client")]),
                sel(&[("team", "blue")]),
            )]),
            None,
        )]),
        None,
    )];
    let mut c = cluster(policies);
    let mut compiler = PolicyCompiler::from_cluster(&c);
    let ask = |compiler: &PolicyCompiler, c: &Cluster| {
        let snap = compiler.snapshot();
        let (from, to) = (pod("y/b"), pod("x/a"));
        let (s, d) = flow_addresses(c, &from, &to).expect("addresses");
        let acl = snap.flow_allowed(s, d, TCP, 80);
        assert_eq!(acl, compile(c).flow_allowed(s, d, TCP, 80));
        assert_eq!(acl, reference::allowed(c, &from, &to, TCP, 80));
        acl
    };
    assert!(!ask(&compiler, &c));
    // Label the namespace: not enough, the pod has no role yet.
    let y = c.namespaces.iter_mut().find(|n| n.name == "y").expect("y");
    y.labels.insert("team".into(), "blue".into());
    let y = y.clone();
    compiler.upsert_namespace(y);
    assert!(!ask(&compiler, &c));
    let b = c
        .pods
        .iter_mut()
        .find(|p| p.namespace == "y" && p.name == "b")
        .expect("y/b");
    b.labels.insert("role".into(), "client".into());
    let b = b.clone();
    compiler.upsert_pod(b);
    assert!(ask(&compiler, &c));
    // And back.
    let y = c.namespaces.iter_mut().find(|n| n.name == "y").expect("y");
    y.labels.remove("team");
    let y = y.clone();
    compiler.upsert_namespace(y);
    assert!(!ask(&compiler, &c));
}

// Probes of the second conformance review: the cases of the API reference and the cyclonus
// truth tables not spelled out above.

#[test]
fn ingress_only_types_ignore_egress_rules() {
    // policyTypes [Ingress] with egress rules: the egress rules are ignored and egress stays
    // open, even though the rules would have narrowed it.
    let c = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        Some(vec![PolicyType::Ingress]),
        Some(vec![rule(
            Some(vec![Peer::pods(sel(&[("pod", "b")]))]),
            None,
        )]),
        Some(vec![rule(
            Some(vec![Peer::pods(sel(&[("pod", "zzz")]))]),
            None,
        )]),
    )]);
    expect(
        &c,
        &[
            ("x/a", "y/c", TCP, 80, true),
            ("x/a", "203.0.113.1", UDP, 53, true),
            ("x/b", "x/a", TCP, 80, true),
            ("x/c", "x/a", TCP, 80, false),
        ],
    );
}

#[test]
fn explicit_empty_peer_and_port_lists_are_every_peer_and_port() {
    // `from: []` and `ports: []` are "empty or missing": every source, every port and
    // protocol, cluster-external addresses included. `ingress: []` is no rule: deny.
    let c = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        None,
        Some(vec![rule(Some(vec![]), Some(vec![]))]),
        None,
    )]);
    expect(
        &c,
        &[
            ("z/c", "x/a", TCP, 80, true),
            ("z/c", "x/a", SCTP, 9, true),
            ("203.0.113.1", "x/a", UDP, 5353, true),
        ],
    );
    let deny = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        Some(vec![PolicyType::Ingress, PolicyType::Egress]),
        Some(vec![]),
        Some(vec![]),
    )]);
    expect(
        &deny,
        &[
            ("x/b", "x/a", TCP, 80, false),
            ("x/a", "x/b", TCP, 80, false),
            ("x/b", "x/c", TCP, 80, true),
        ],
    );
    // An egress rule with only `to: []` and ports: every destination on those ports.
    let dns = cluster(vec![with(
        policy("x", "p", LabelSelector::everything()),
        Some(vec![PolicyType::Egress]),
        None,
        Some(vec![rule(
            Some(vec![]),
            Some(vec![PortSpec::number(Protocol::Udp, 53)]),
        )]),
    )]);
    expect(
        &dns,
        &[
            ("x/a", "z/c", UDP, 53, true),
            ("x/a", "203.0.113.1", UDP, 53, true),
            ("x/a", "z/c", TCP, 53, false),
        ],
    );
}

#[test]
fn namespace_selector_expressions_read_namespace_labels() {
    // y and z carry `ns`; only z carries `tier`. NotIn matches a namespace without the key.
    let mut c = cluster(vec![]);
    for ns in &mut c.namespaces {
        if ns.name == "z" {
            ns.labels.insert("tier".into(), "gold".into());
        }
    }
    let with_peer = |peer: Peer| {
        let mut c = c.clone();
        c.policies = vec![with(
            policy("x", "p", sel(&[("pod", "a")])),
            None,
            Some(vec![rule(Some(vec![peer]), None)]),
            None,
        )];
        c
    };
    let not_gold =
        LabelSelector::default().with_expression("tier", SelectorOperator::NotIn, &["gold"]);
    expect(
        &with_peer(Peer::namespaces(not_gold)),
        &[
            ("y/b", "x/a", TCP, 80, true),
            ("x/b", "x/a", TCP, 80, true),
            ("z/b", "x/a", TCP, 80, false),
        ],
    );
    let has_tier = LabelSelector::default().with_expression("tier", SelectorOperator::Exists, &[]);
    expect(
        &with_peer(Peer::namespaces(has_tier)),
        &[
            ("z/b", "x/a", TCP, 80, true),
            ("y/b", "x/a", TCP, 80, false),
        ],
    );
    let no_tier =
        LabelSelector::default().with_expression("tier", SelectorOperator::DoesNotExist, &[]);
    // Both selectors in one peer: pods `b` of namespaces without `tier`.
    expect(
        &with_peer(Peer::pods_in_namespaces(sel(&[("pod", "b")]), no_tier)),
        &[
            ("y/b", "x/a", TCP, 80, true),
            ("x/b", "x/a", TCP, 80, true),
            ("y/c", "x/a", TCP, 80, false),
            ("z/b", "x/a", TCP, 80, false),
        ],
    );
}

#[test]
fn ip_block_host_bits_are_cleared_as_the_api_server_does() {
    // The API server's (legacy) CIDR parsing takes "10.0.1.77/24" as 10.0.1.0/24, for `cidr`
    // and `except` alike, IPv4 and IPv6.
    let mut c = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        None,
        Some(vec![rule(
            Some(vec![
                Peer::ip_block("10.0.1.77/24", &["10.0.1.3/31"]),
                Peer::ip_block("2001:db8:aa::1/48", &["2001:db8:aa:1::9/64"]),
            ]),
            None,
        )]),
        None,
    )]);
    for p in &mut c.pods {
        if p.namespace == "x" && p.name == "a" {
            p.ips.push(ip("2001:db8:ff::1"));
        }
    }
    expect(
        &c,
        &[
            ("y/a", "x/a", TCP, 80, true),
            ("y/b", "x/a", TCP, 80, false),
            ("y/c", "x/a", TCP, 80, false),
            ("10.0.1.200", "x/a", TCP, 80, true),
            ("10.0.2.1", "x/a", TCP, 80, false),
            ("2001:db8:aa:2::5", "x/a", TCP, 80, true),
            ("2001:db8:aa:1::5", "x/a", TCP, 80, false),
        ],
    );
    assert!(
        compile(&c).errors().is_empty(),
        "{:?}",
        compile(&c).errors()
    );
}

#[test]
fn end_port_equal_to_port_and_ranges_of_each_protocol() {
    let c = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        None,
        Some(vec![rule(
            None,
            Some(vec![
                PortSpec::range(Protocol::Tcp, 80, 80),
                PortSpec::range(Protocol::Udp, 5000, 5010),
                PortSpec::range(Protocol::Sctp, 9, 10),
            ]),
        )]),
        None,
    )]);
    expect(
        &c,
        &[
            ("y/b", "x/a", TCP, 80, true),
            ("y/b", "x/a", TCP, 81, false),
            ("y/b", "x/a", UDP, 5010, true),
            ("y/b", "x/a", UDP, 5011, false),
            ("y/b", "x/a", TCP, 5005, false),
            ("y/b", "x/a", SCTP, 10, true),
            ("y/b", "x/a", UDP, 9, false),
        ],
    );
    assert!(compile(&c).errors().is_empty());
}

#[test]
fn isolation_is_per_direction_across_policies() {
    // One policy isolates x/a for ingress, another for egress; each direction is the union of
    // its own policies only, and a policy that isolates egress says nothing about ingress.
    let c = cluster(vec![
        with(
            policy("x", "in", sel(&[("pod", "a")])),
            Some(vec![PolicyType::Ingress]),
            Some(vec![rule(
                Some(vec![Peer::pods(sel(&[("pod", "b")]))]),
                None,
            )]),
            None,
        ),
        with(
            policy("x", "out", sel(&[("pod", "a")])),
            Some(vec![PolicyType::Egress]),
            None,
            Some(vec![rule(
                Some(vec![Peer::namespaces(sel(&[("ns", "y")]))]),
                None,
            )]),
        ),
        with(
            policy("x", "out-too", sel(&[("pod", "c")])),
            Some(vec![PolicyType::Egress]),
            None,
            Some(vec![rule(
                None,
                Some(vec![PortSpec::number(Protocol::Udp, 53)]),
            )]),
        ),
    ]);
    expect(
        &c,
        &[
            ("x/b", "x/a", TCP, 80, true),
            ("y/b", "x/a", TCP, 80, false),
            ("x/a", "y/c", TCP, 80, true),
            ("x/a", "z/c", TCP, 80, false),
            ("x/a", "z/c", UDP, 53, false),
            // x/c is egress-isolated by `out-too` only; x/b not at all.
            ("x/c", "y/c", TCP, 80, false),
            ("x/c", "y/c", UDP, 53, true),
            ("x/b", "z/c", TCP, 80, true),
            // Nothing isolates z/*.
            ("z/a", "z/b", TCP, 80, true),
        ],
    );
}

#[test]
fn egress_named_port_of_a_dual_stack_destination() {
    // Named ports resolve against the destination pod whichever of its addresses is used.
    let mut c = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        Some(vec![PolicyType::Egress]),
        None,
        Some(vec![rule(
            Some(vec![Peer::namespaces(sel(&[("ns", "y")]))]),
            Some(vec![PortSpec::named(Protocol::Udp, "serve-53")]),
        )]),
    )]);
    for p in &mut c.pods {
        match (p.namespace.as_str(), p.name.as_str()) {
            ("x", "a") => p.ips.push(ip("2001:db8::a")),
            ("y", "b") => p.ips = vec![ip("2001:db8:1::b")],
            _ => {}
        }
    }
    expect(
        &c,
        &[
            ("x/a", "y/b", UDP, 53, true),
            ("x/a", "y/b", TCP, 53, false),
            ("x/a", "y/b", UDP, 80, false),
            ("x/a", "y/a", UDP, 53, true),
            ("x/a", "z/a", UDP, 53, false),
        ],
    );
}

#[test]
fn changes_take_effect_for_new_connections() {
    // Through the incremental compiler, as the agent drives it: a pod's new address, a
    // policy's deletion and a pod leaving the policy's selector each change the next verdict.
    let mut c = cluster(vec![with(
        policy("x", "p", sel(&[("pod", "a")])),
        None,
        Some(vec![rule(
            Some(vec![Peer::ip_block("10.0.1.2/32", &[])]),
            None,
        )]),
        None,
    )]);
    let mut compiler = PolicyCompiler::from_cluster(&c);
    let ask = |compiler: &PolicyCompiler, c: &Cluster, from: &str, to: &str| {
        let (from, to) = (pod(from), pod(to));
        let (s, d) = flow_addresses(c, &from, &to).expect("addresses");
        let got = compiler.snapshot().flow_allowed(s, d, TCP, 80);
        assert_eq!(got, compile(c).flow_allowed(s, d, TCP, 80));
        assert_eq!(got, reference::allowed(c, &from, &to, TCP, 80));
        got
    };
    assert!(ask(&compiler, &c, "y/b", "x/a"));
    assert!(!ask(&compiler, &c, "y/c", "x/a"));
    // y/b and y/c swap addresses (a pod replaced, its address reused).
    let (b_ip, c_ip) = (ip("10.0.1.2"), ip("10.0.1.3"));
    for p in &mut c.pods {
        if p.namespace == "y" && p.name == "b" {
            p.ips = vec![c_ip];
            compiler.upsert_pod(p.clone());
        }
    }
    for p in &mut c.pods {
        if p.namespace == "y" && p.name == "c" {
            p.ips = vec![b_ip];
            compiler.upsert_pod(p.clone());
        }
    }
    assert!(!ask(&compiler, &c, "y/b", "x/a"));
    assert!(ask(&compiler, &c, "y/c", "x/a"));
    // x/a relabelled out of the selector: open again.
    for p in &mut c.pods {
        if p.namespace == "x" && p.name == "a" {
            p.labels = labels(&[("pod", "a2")]);
            compiler.upsert_pod(p.clone());
        }
    }
    assert!(ask(&compiler, &c, "y/b", "x/a"));
    for p in &mut c.pods {
        if p.namespace == "x" && p.name == "a" {
            p.labels = labels(&[("pod", "a")]);
            compiler.upsert_pod(p.clone());
        }
    }
    assert!(!ask(&compiler, &c, "y/b", "x/a"));
    // The policy deleted: open again.
    compiler.remove_policy(&PolicyKey::new("x", "p"));
    c.policies.clear();
    assert!(ask(&compiler, &c, "y/b", "x/a"));
    compiler.check_indexes().expect("indexes");
}
