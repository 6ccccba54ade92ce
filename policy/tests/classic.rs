//! The classic NetworkPolicy cases, each checked as a whole truth table against both the
//! compiled ACLs and the reference evaluator.

mod common;

use common::*;
use switchyard_policy::*;

const ALL_ALLOWED: &str = "
-   x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a .   .   .   .   .   .   .   .   .
x/b .   .   .   .   .   .   .   .   .
x/c .   .   .   .   .   .   .   .   .
y/a .   .   .   .   .   .   .   .   .
y/b .   .   .   .   .   .   .   .   .
y/c .   .   .   .   .   .   .   .   .
z/a .   .   .   .   .   .   .   .   .
z/b .   .   .   .   .   .   .   .   .
z/c .   .   .   .   .   .   .   .   .
";

const X_INGRESS_DENIED: &str = "
-   x/a x/b x/c y/a y/b y/c z/a z/b z/c
x/a .   X   X   .   .   .   .   .   .
x/b X   .   X   .   .   .   .   .   .
x/c X   X   .   .   .   .   .   .   .
y/a X   X   X   .   .   .   .   .   .
y/b X   X   X   .   .   .   .   .   .
y/c X   X   X   .   .   .   .   .   .
z/a X   X   X   .   .   .   .   .   .
z/b X   X   X   .   .   .   .   .   .
z/c X   X   X   .   .   .   .   .   .
";

fn key(s: &str) -> PodKey {
    let (ns, name) = s.split_once('/').unwrap_or((s, s));
    PodKey::new(ns, name)
}

fn ingress_only(mut p: NetworkPolicy, rules: Option<Vec<Rule>>) -> NetworkPolicy {
    p.policy_types = Some(vec![PolicyType::Ingress]);
    p.ingress = rules;
    p
}

#[test]
fn no_policies_allow_everything() {
    assert_table(&cluster(vec![]), TCP, 80, ALL_ALLOWED);
}

#[test]
fn default_deny_ingress() {
    let c = cluster(vec![ingress_only(
        policy("x", "deny", LabelSelector::everything()),
        None,
    )]);
    assert_table(&c, TCP, 80, X_INGRESS_DENIED);
    assert_table(&c, UDP, 53, X_INGRESS_DENIED);
    // The node's own address always gets in (kubelet probes); others do not.
    assert_eq!(
        external_to_pod(&c, NODE_IP, &key("x/a"), TCP, 8080),
        (true, true)
    );
    assert_eq!(
        external_to_pod(&c, "203.0.113.5", &key("x/a"), TCP, 80),
        (false, false)
    );
    assert_eq!(
        external_to_pod(&c, "203.0.113.5", &key("y/a"), TCP, 80),
        (true, true)
    );
}

#[test]
fn empty_ingress_list_is_deny_but_one_empty_rule_is_allow_all() {
    let deny = cluster(vec![ingress_only(
        policy("x", "p", LabelSelector::everything()),
        Some(vec![]),
    )]);
    assert_table(&deny, TCP, 80, X_INGRESS_DENIED);
    for r in [rule(None, None), rule(Some(vec![]), Some(vec![]))] {
        let allow = cluster(vec![ingress_only(
            policy("x", "p", LabelSelector::everything()),
            Some(vec![r]),
        )]);
        assert_table(&allow, TCP, 80, ALL_ALLOWED);
        assert_table(&allow, 1, 0, ALL_ALLOWED);
    }
}

#[test]
fn allow_from_namespace() {
    let expected = "
        -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a .   .   .   .   .   .   .   .   .
        x/b X   .   .   .   .   .   .   .   .
        x/c X   .   .   .   .   .   .   .   .
        y/a .   .   .   .   .   .   .   .   .
        y/b .   .   .   .   .   .   .   .   .
        y/c .   .   .   .   .   .   .   .   .
        z/a X   .   .   .   .   .   .   .   .
        z/b X   .   .   .   .   .   .   .   .
        z/c X   .   .   .   .   .   .   .   .";
    for selector in [
        LabelSelector::labels([("ns", "y")]),
        // The name label the API server puts on every namespace.
        LabelSelector::labels([("kubernetes.io/metadata.name", "y")]),
        LabelSelector::everything().with_expression("ns", SelectorOperator::NotIn, &["x", "z"]),
    ] {
        let mut p = policy("x", "from-y", LabelSelector::labels([("pod", "a")]));
        p.ingress = Some(vec![rule(Some(vec![Peer::namespaces(selector)]), None)]);
        assert_table(&cluster(vec![p]), TCP, 80, expected);
    }
}

#[test]
fn allow_by_named_port_resolved_per_destination_pod() {
    let mut p = policy("x", "named", LabelSelector::everything());
    p.ingress = Some(vec![rule(
        None,
        Some(vec![PortSpec::named(Protocol::Tcp, "serve-80")]),
    )]);
    let mut c = cluster(vec![p]);
    // x/b serves `serve-80` on 8080.
    if let Some(pod) = c
        .pods
        .iter_mut()
        .find(|p| p.namespace == "x" && p.name == "b")
    {
        pod.named_ports[0].port = 8080;
    }
    let on_80 = "
        -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a .   X   .   .   .   .   .   .   .
        x/b .   .   .   .   .   .   .   .   .
        x/c .   X   .   .   .   .   .   .   .
        y/a .   X   .   .   .   .   .   .   .
        y/b .   X   .   .   .   .   .   .   .
        y/c .   X   .   .   .   .   .   .   .
        z/a .   X   .   .   .   .   .   .   .
        z/b .   X   .   .   .   .   .   .   .
        z/c .   X   .   .   .   .   .   .   .";
    let on_8080 = "
        -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a .   .   X   .   .   .   .   .   .
        x/b X   .   X   .   .   .   .   .   .
        x/c X   .   .   .   .   .   .   .   .
        y/a X   .   X   .   .   .   .   .   .
        y/b X   .   X   .   .   .   .   .   .
        y/c X   .   X   .   .   .   .   .   .
        z/a X   .   X   .   .   .   .   .   .
        z/b X   .   X   .   .   .   .   .   .
        z/c X   .   X   .   .   .   .   .   .";
    assert_table(&c, TCP, 80, on_80);
    assert_table(&c, TCP, 8080, on_8080);
    // The name is bound to its protocol: UDP 80 is not `serve-80`.
    assert_table(&c, UDP, 80, X_INGRESS_DENIED);
    // x/b's ACL differs from x/a's and x/c's, which share one.
    let compiled = compile(&c);
    let id = |k: &str| compiled.pod_acls(&key(k)).map(|a| a.ingress);
    assert_eq!(id("x/a"), id("x/c"));
    assert_ne!(id("x/a"), id("x/b"));
}

#[test]
fn egress_named_port_resolves_against_the_destination_pod() {
    // "should allow egress access on one named port": no `to`, a named port.
    let mut p = policy("x", "egress-named", LabelSelector::labels([("pod", "a")]));
    p.policy_types = Some(vec![PolicyType::Egress]);
    p.egress = Some(vec![rule(
        None,
        Some(vec![PortSpec::named(Protocol::Tcp, "serve-80")]),
    )]);
    let mut c = cluster(vec![p.clone()]);
    if let Some(pod) = c
        .pods
        .iter_mut()
        .find(|p| p.namespace == "z" && p.name == "c")
    {
        pod.named_ports.clear();
    }
    let expected = "
        -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a .   .   .   .   .   .   .   .   X
        x/b .   .   .   .   .   .   .   .   .
        x/c .   .   .   .   .   .   .   .   .
        y/a .   .   .   .   .   .   .   .   .
        y/b .   .   .   .   .   .   .   .   .
        y/c .   .   .   .   .   .   .   .   .
        z/a .   .   .   .   .   .   .   .   .
        z/b .   .   .   .   .   .   .   .   .
        z/c .   .   .   .   .   .   .   .   .";
    assert_table(&c, TCP, 80, expected);
    // An address that is no pod has no named ports.
    assert_eq!(
        pod_to_external(&c, &key("x/a"), "203.0.113.5", TCP, 80),
        (false, false)
    );
    // Through an ipBlock: only pods inside the block that declare the port.
    p.egress = Some(vec![rule(
        Some(vec![Peer::ip_block("10.0.1.0/24", &[])]),
        Some(vec![PortSpec::named(Protocol::Tcp, "serve-80")]),
    )]);
    let c = cluster(vec![p]);
    let expected = "
        -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a .   X   X   .   .   .   X   X   X
        x/b .   .   .   .   .   .   .   .   .
        x/c .   .   .   .   .   .   .   .   .
        y/a .   .   .   .   .   .   .   .   .
        y/b .   .   .   .   .   .   .   .   .
        y/c .   .   .   .   .   .   .   .   .
        z/a .   .   .   .   .   .   .   .   .
        z/b .   .   .   .   .   .   .   .   .
        z/c .   .   .   .   .   .   .   .   .";
    assert_table(&c, TCP, 80, expected);
    assert_eq!(
        pod_to_external(&c, &key("x/a"), "10.0.1.200", TCP, 80),
        (false, false)
    );
}

#[test]
fn ip_block_with_except() {
    let mut p = policy("x", "block", LabelSelector::labels([("pod", "a")]));
    p.ingress = Some(vec![rule(
        Some(vec![Peer::ip_block("10.0.0.0/16", &["10.0.1.0/24"])]),
        None,
    )]);
    let c = cluster(vec![p]);
    let expected = "
        -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a .   .   .   .   .   .   .   .   .
        x/b .   .   .   .   .   .   .   .   .
        x/c .   .   .   .   .   .   .   .   .
        y/a X   .   .   .   .   .   .   .   .
        y/b X   .   .   .   .   .   .   .   .
        y/c X   .   .   .   .   .   .   .   .
        z/a .   .   .   .   .   .   .   .   .
        z/b .   .   .   .   .   .   .   .   .
        z/c .   .   .   .   .   .   .   .   .";
    assert_table(&c, TCP, 80, expected);
    assert_eq!(
        external_to_pod(&c, "10.0.7.7", &key("x/a"), TCP, 80),
        (true, true)
    );
    assert_eq!(
        external_to_pod(&c, "10.0.1.77", &key("x/a"), TCP, 80),
        (false, false)
    );
    assert_eq!(
        external_to_pod(&c, "203.0.113.5", &key("x/a"), TCP, 80),
        (false, false)
    );
    assert_eq!(
        external_to_pod(&c, "2001:db8::1", &key("x/a"), TCP, 80),
        (false, false)
    );
}

#[test]
fn egress_deny_with_dns_allowed() {
    let mut p = policy("x", "dns-only", LabelSelector::everything());
    p.policy_types = Some(vec![PolicyType::Egress]);
    p.egress = Some(vec![rule(
        None,
        Some(vec![
            PortSpec::number(Protocol::Udp, 53),
            PortSpec::number(Protocol::Tcp, 53),
        ]),
    )]);
    let c = cluster(vec![p]);
    let denied = "
        -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a .   X   X   X   X   X   X   X   X
        x/b X   .   X   X   X   X   X   X   X
        x/c X   X   .   X   X   X   X   X   X
        y/a .   .   .   .   .   .   .   .   .
        y/b .   .   .   .   .   .   .   .   .
        y/c .   .   .   .   .   .   .   .   .
        z/a .   .   .   .   .   .   .   .   .
        z/b .   .   .   .   .   .   .   .   .
        z/c .   .   .   .   .   .   .   .   .";
    assert_table(&c, TCP, 80, denied);
    assert_table(&c, UDP, 53, ALL_ALLOWED);
    assert_table(&c, TCP, 53, ALL_ALLOWED);
    assert_table(&c, SCTP, 53, denied);
    assert_eq!(
        pod_to_external(&c, &key("x/a"), "203.0.113.53", UDP, 53),
        (true, true)
    );
    assert_eq!(
        pod_to_external(&c, &key("x/a"), "203.0.113.53", TCP, 443),
        (false, false)
    );
    // The node itself stays reachable.
    assert_eq!(
        pod_to_external(&c, &key("x/a"), NODE_IP, TCP, 10250),
        (true, true)
    );
}

#[test]
fn combined_pod_and_namespace_selector_versus_two_peers() {
    let mut p = policy("x", "combined", LabelSelector::labels([("pod", "a")]));
    p.ingress = Some(vec![rule(
        Some(vec![Peer::pods_in_namespaces(
            LabelSelector::labels([("pod", "b")]),
            LabelSelector::labels([("ns", "y")]),
        )]),
        None,
    )]);
    let combined = "
        -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a .   .   .   .   .   .   .   .   .
        x/b X   .   .   .   .   .   .   .   .
        x/c X   .   .   .   .   .   .   .   .
        y/a X   .   .   .   .   .   .   .   .
        y/b .   .   .   .   .   .   .   .   .
        y/c X   .   .   .   .   .   .   .   .
        z/a X   .   .   .   .   .   .   .   .
        z/b X   .   .   .   .   .   .   .   .
        z/c X   .   .   .   .   .   .   .   .";
    assert_table(&cluster(vec![p.clone()]), TCP, 80, combined);
    p.ingress = Some(vec![rule(
        Some(vec![
            Peer::pods(LabelSelector::labels([("pod", "b")])),
            Peer::namespaces(LabelSelector::labels([("ns", "y")])),
        ]),
        None,
    )]);
    let either = "
        -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a .   .   .   .   .   .   .   .   .
        x/b .   .   .   .   .   .   .   .   .
        x/c X   .   .   .   .   .   .   .   .
        y/a .   .   .   .   .   .   .   .   .
        y/b .   .   .   .   .   .   .   .   .
        y/c .   .   .   .   .   .   .   .   .
        z/a X   .   .   .   .   .   .   .   .
        z/b X   .   .   .   .   .   .   .   .
        z/c X   .   .   .   .   .   .   .   .";
    assert_table(&cluster(vec![p]), TCP, 80, either);
}

#[test]
fn policy_without_types_but_with_egress_rules_isolates_both_directions() {
    let mut p = policy("x", "no-types", LabelSelector::labels([("pod", "a")]));
    p.egress = Some(vec![rule(
        Some(vec![Peer::pods(LabelSelector::labels([("pod", "b")]))]),
        None,
    )]);
    let expected = "
        -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a .   .   X   X   X   X   X   X   X
        x/b X   .   .   .   .   .   .   .   .
        x/c X   .   .   .   .   .   .   .   .
        y/a X   .   .   .   .   .   .   .   .
        y/b X   .   .   .   .   .   .   .   .
        y/c X   .   .   .   .   .   .   .   .
        z/a X   .   .   .   .   .   .   .   .
        z/b X   .   .   .   .   .   .   .   .
        z/c X   .   .   .   .   .   .   .   .";
    assert_table(&cluster(vec![p.clone()]), TCP, 80, expected);
    // `egress: []` is no egress rules: Ingress only.
    p.egress = Some(vec![]);
    let ingress_only = "
        -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a .   .   .   .   .   .   .   .   .
        x/b X   .   .   .   .   .   .   .   .
        x/c X   .   .   .   .   .   .   .   .
        y/a X   .   .   .   .   .   .   .   .
        y/b X   .   .   .   .   .   .   .   .
        y/c X   .   .   .   .   .   .   .   .
        z/a X   .   .   .   .   .   .   .   .
        z/b X   .   .   .   .   .   .   .   .
        z/c X   .   .   .   .   .   .   .   .";
    assert_table(&cluster(vec![p.clone()]), TCP, 80, ingress_only);
    // Egress rules of a policy that names only Ingress are ignored.
    p.egress = Some(vec![rule(
        Some(vec![]),
        Some(vec![PortSpec::number(Protocol::Tcp, 1)]),
    )]);
    p.policy_types = Some(vec![PolicyType::Ingress]);
    assert_table(&cluster(vec![p]), TCP, 80, ingress_only);
}

#[test]
fn policies_add_up() {
    let from = |ns: &str| {
        let mut p = policy(
            "x",
            &format!("from-{ns}"),
            LabelSelector::labels([("pod", "a")]),
        );
        p.ingress = Some(vec![rule(
            Some(vec![Peer::namespaces(LabelSelector::labels([("ns", ns)]))]),
            None,
        )]);
        p
    };
    let expected = "
        -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a .   .   .   .   .   .   .   .   .
        x/b X   .   .   .   .   .   .   .   .
        x/c X   .   .   .   .   .   .   .   .
        y/a .   .   .   .   .   .   .   .   .
        y/b .   .   .   .   .   .   .   .   .
        y/c .   .   .   .   .   .   .   .   .
        z/a .   .   .   .   .   .   .   .   .
        z/b .   .   .   .   .   .   .   .   .
        z/c .   .   .   .   .   .   .   .   .";
    assert_table(&cluster(vec![from("y"), from("z")]), TCP, 80, expected);
}

#[test]
fn port_ranges_and_sctp() {
    let mut p = policy("x", "ranges", LabelSelector::labels([("pod", "a")]));
    p.ingress = Some(vec![rule(
        None,
        Some(vec![
            PortSpec::range(Protocol::Tcp, 8000, 8080),
            PortSpec::number(Protocol::Sctp, 9),
            PortSpec::any(Protocol::Udp),
        ]),
    )]);
    let c = cluster(vec![p]);
    let from_y = |proto, port| {
        let ends = (Endpoint::Pod(key("y/a")), Endpoint::Pod(key("x/a")));
        let reference = reference::allowed(&c, &ends.0, &ends.1, proto, port);
        let acl = compile(&c).flow_allowed(ip("10.0.1.1"), ip("10.0.0.1"), proto, port);
        assert_eq!(acl, reference, "{proto}/{port}");
        acl
    };
    assert!(from_y(TCP, 8000));
    assert!(from_y(TCP, 8080));
    assert!(!from_y(TCP, 7999));
    assert!(!from_y(TCP, 8081));
    assert!(from_y(SCTP, 9));
    assert!(!from_y(SCTP, 10));
    assert!(!from_y(TCP, 9));
    assert!(from_y(UDP, 1));
    assert!(from_y(UDP, 65535));
    assert!(!from_y(1, 0), "ICMP is not in the list");
}

#[test]
fn invalid_parts_stay_closed_and_are_reported() {
    // An invalid podSelector isolates the whole namespace and allows nothing, even though its
    // rule would allow everything.
    let mut bad_selector = policy(
        "x",
        "bad-selector",
        LabelSelector::everything().with_expression("pod", SelectorOperator::In, &[]),
    );
    bad_selector.ingress = Some(vec![rule(None, None)]);
    let c = cluster(vec![bad_selector]);
    assert_table(&c, TCP, 80, X_INGRESS_DENIED);
    let errors = compile(&c).errors().to_vec();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "spec.podSelector");
    assert_eq!(errors[0].policy, PolicyKey::new("x", "bad-selector"));

    // An invalid peer matches nothing, but does not turn its list into "everyone"; the valid
    // peer next to it still works. An invalid port entry likewise.
    let mut p = policy("x", "bad-peer", LabelSelector::labels([("pod", "a")]));
    p.ingress = Some(vec![
        rule(
            Some(vec![
                Peer::ip_block("10.0.0.0/16", &["10.1.0.0/24"]),
                Peer::ip_block("10.0.2.0/33", &[]),
                Peer::default(),
                Peer::namespaces(LabelSelector::labels([("ns", "y")])),
            ]),
            None,
        ),
        rule(
            None,
            Some(vec![
                PortSpec::named(Protocol::Tcp, "Not_A_Name"),
                PortSpec::range(Protocol::Tcp, 90, 80),
                PortSpec {
                    protocol: Protocol::Unknown("ICMP".into()),
                    ..PortSpec::default()
                },
            ]),
        ),
    ]);
    let c = cluster(vec![p]);
    let expected = "
        -   x/a x/b x/c y/a y/b y/c z/a z/b z/c
        x/a .   .   .   .   .   .   .   .   .
        x/b X   .   .   .   .   .   .   .   .
        x/c X   .   .   .   .   .   .   .   .
        y/a .   .   .   .   .   .   .   .   .
        y/b .   .   .   .   .   .   .   .   .
        y/c .   .   .   .   .   .   .   .   .
        z/a X   .   .   .   .   .   .   .   .
        z/b X   .   .   .   .   .   .   .   .
        z/c X   .   .   .   .   .   .   .   .";
    assert_table(&c, TCP, 80, expected);
    let paths: Vec<String> = compile(&c)
        .errors()
        .iter()
        .map(|e| e.path.clone())
        .collect();
    assert_eq!(
        paths,
        [
            "spec.ingress[0].from[0]",
            "spec.ingress[0].from[1]",
            "spec.ingress[0].from[2]",
            "spec.ingress[1].ports[0]",
            "spec.ingress[1].ports[1]",
            "spec.ingress[1].ports[2]",
        ]
    );
}

#[test]
fn pods_with_equal_rules_share_acls_and_rules_name_their_origin() {
    let mut p = policy("x", "from-y", LabelSelector::everything());
    p.ingress = Some(vec![
        rule(Some(vec![Peer::ip_block("203.0.113.0/24", &[])]), None),
        rule(
            Some(vec![Peer::namespaces(LabelSelector::labels([("ns", "y")]))]),
            Some(vec![PortSpec::number(Protocol::Tcp, 80)]),
        ),
    ]);
    let c = cluster(vec![p]);
    let compiled = compile(&c);
    let acls = |k: &str| compiled.pod_acls(&key(k));
    assert_eq!(
        acls("x/a").map(|a| a.ingress),
        acls("x/b").map(|a| a.ingress)
    );
    assert_eq!(
        acls("x/a").map(|a| a.ingress),
        acls("x/c").map(|a| a.ingress)
    );
    assert_eq!(acls("y/a"), acls("z/c"), "open pods share the open ACLs");
    assert_eq!(acls("x/a").map(|a| a.egress), acls("y/a").map(|a| a.egress));
    // ingress x, ingress open, egress open.
    assert_eq!(compiled.acls().count(), 3);

    let acl = compiled.pod_acl(&key("x/a"), Direction::Ingress);
    let hit = acl.and_then(|acl| {
        acl.first_match(ip("10.0.1.3"), TCP, 80)
            .and_then(|i| acl.rule(i))
    });
    assert_eq!(
        hit.map(|r| r.origin.to_string()).as_deref(),
        Some("x/from-y ingress[1]")
    );
    let node_hit = acl.and_then(|acl| {
        acl.first_match(ip(NODE_IP), UDP, 9)
            .and_then(|i| acl.rule(i))
    });
    assert_eq!(node_hit.map(|r| r.origin), Some(RuleOrigin::Node));
}

#[test]
fn truth_table_format() {
    let c = cluster(vec![ingress_only(
        policy("x", "deny", LabelSelector::labels([("pod", "a")])),
        None,
    )]);
    let mut small = c.clone();
    small.pods.retain(|p| p.name == "a" && p.namespace != "z");
    let table = TruthTable::from_acls(&small, TCP, 80).to_string();
    assert_eq!(table, "-\tx/a\ty/a\nx/a\t.\t.\ny/a\tX\t.\n");
}

#[test]
fn explain_prints_one_table_per_port_and_the_errors() {
    let mut c = cluster(vec![policy(
        "x",
        "bad",
        LabelSelector::labels([("Bad Key", "v")]),
    )]);
    c.pods.retain(|p| p.name == "a" && p.namespace != "z");
    let text = explain(&c, &[(TCP, 80), (UDP, 53)]);
    assert_eq!(
        text,
        "TCP/80\n-\tx/a\ty/a\nx/a\t.\t.\ny/a\tX\t.\n\n\
         UDP/53\n-\tx/a\ty/a\nx/a\t.\t.\ny/a\tX\t.\n\n\
         errors (the policies stay enforced, closed side):\n\
         NetworkPolicy x/bad: spec.podSelector: invalid label key \"Bad Key\"\n"
    );
}
