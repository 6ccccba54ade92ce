//! The dataplane tables against the compiler's own verdicts: for every pair of endpoints and a
//! spread of protocols and ports, the classifiers built here must decide as
//! [`CompiledPolicies::flow_allowed`] does.

use std::net::IpAddr;
use std::sync::Arc;

use switchyard_dataplane::policy::AclDirection;
use switchyard_policy::{
    compile, Cluster, DefaultAction, Direction, LabelSelector, NamedPort, Namespace, NetworkPolicy,
    Peer, Pod, PodKey, PolicyType, PortSpec, Protocol, Rule, SelectorOperator,
};

use super::*;

fn ip(s: &str) -> IpAddr {
    match s.parse() {
        Ok(ip) => ip,
        Err(e) => panic!("bad test address {s}: {e}"),
    }
}

fn ns(name: &str, labels: &[(&str, &str)]) -> Namespace {
    Namespace {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn pod(key: &str, app: &str, ips: &[&str], ports: &[(&str, Protocol, u16)], local: bool) -> Pod {
    let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
    Pod {
        namespace: namespace.into(),
        name: name.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        ips: ips.iter().map(|s| ip(s)).collect(),
        named_ports: ports
            .iter()
            .map(|(n, p, port)| NamedPort {
                name: n.to_string(),
                protocol: p.clone(),
                port: *port,
            })
            .collect(),
        node_local: local,
    }
}

fn policy(
    key: &str,
    selector: LabelSelector,
    types: Option<Vec<PolicyType>>,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
) -> NetworkPolicy {
    let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
    NetworkPolicy {
        namespace: namespace.into(),
        name: name.into(),
        pod_selector: selector,
        policy_types: types,
        ingress,
        egress,
    }
}

fn cluster() -> Cluster {
    Cluster {
        namespaces: vec![ns("a", &[("team", "x")]), ns("b", &[])],
        pods: vec![
            pod(
                "a/web",
                "web",
                &["198.18.1.2", "2001:db8:1::2"],
                &[("http", Protocol::Tcp, 8080)],
                true,
            ),
            pod("a/db", "db", &["198.18.1.3"], &[], true),
            pod("a/open", "open", &["198.18.1.4"], &[], true),
            pod(
                "b/client",
                "client",
                &["198.18.2.2", "2001:db8:2::2"],
                &[("dns", Protocol::Udp, 53)],
                true,
            ),
            pod("b/remote", "client", &["198.18.2.3"], &[], false),
            pod(
                "b/dns",
                "dns",
                &["198.18.2.53"],
                &[("dns", Protocol::Udp, 53)],
                false,
            ),
        ],
        policies: vec![
            policy(
                "a/deny-db",
                LabelSelector::labels([("app", "db")]),
                None,
                Some(vec![]),
                None,
            ),
            policy(
                "a/web",
                LabelSelector::labels([("app", "web")]),
                None,
                Some(vec![
                    Rule {
                        peers: Some(vec![Peer::namespaces(
                            LabelSelector::everything().with_expression(
                                "team",
                                SelectorOperator::DoesNotExist,
                                &[],
                            ),
                        )]),
                        ports: Some(vec![PortSpec::named(Protocol::Tcp, "http")]),
                    },
                    Rule {
                        peers: Some(vec![Peer::ip_block(
                            "198.51.100.0/24",
                            &["198.51.100.128/25"],
                        )]),
                        ports: Some(vec![PortSpec::range(Protocol::Tcp, 8000, 8100)]),
                    },
                ]),
                None,
            ),
            policy(
                "b/client-egress",
                LabelSelector::labels([("app", "client")]),
                Some(vec![PolicyType::Egress]),
                None,
                Some(vec![
                    Rule {
                        peers: None,
                        ports: Some(vec![PortSpec::named(Protocol::Udp, "dns")]),
                    },
                    Rule {
                        peers: Some(vec![Peer::pods_in_namespaces(
                            LabelSelector::labels([("app", "web")]),
                            LabelSelector::labels([("team", "x")]),
                        )]),
                        ports: None,
                    },
                ]),
            ),
        ],
        node_ips: vec![ip("198.18.0.1"), ip("2001:db8::1")],
    }
}

#[test]
fn classifiers_agree_with_the_compiler() {
    let cluster = cluster();
    let compiled = compile(&cluster);
    assert!(compiled.errors().is_empty(), "{:#?}", compiled.errors());
    let tables = policy_tables(&compiled);

    let mut endpoints: Vec<(Option<PodKey>, IpAddr)> = cluster
        .pods
        .iter()
        .flat_map(|p| p.ips.iter().map(move |ip| (Some(p.key()), *ip)))
        .collect();
    for other in [
        "198.18.0.1",
        "2001:db8::1",
        "198.51.100.7",
        "198.51.100.200",
        "203.0.113.9",
        "2001:db8:ffff::9",
    ] {
        endpoints.push((None, ip(other)));
    }
    let probes: &[(u8, u16)] = &[
        (6, 80),
        (6, 8080),
        (6, 8000),
        (6, 8100),
        (6, 8101),
        (17, 53),
        (17, 8080),
        (132, 53),
        (1, 0),
    ];
    let (mut checked, mut denied) = (0, 0);
    for (from_pod, src) in &endpoints {
        for (to_pod, dst) in &endpoints {
            if src.is_ipv4() != dst.is_ipv4() {
                continue;
            }
            let same = from_pod.is_some() && from_pod == to_pod;
            for &(protocol, port) in probes {
                let want = compiled.flow_allowed(*src, *dst, protocol, port);
                let got = flow_allowed(&tables, *src, *dst, same, protocol, port);
                assert_eq!(got, want, "{src} -> {dst} proto {protocol} port {port}");
                checked += 1;
                denied += usize::from(!got);
            }
        }
    }
    assert!(
        checked > 1000 && denied > 100,
        "{checked} checked, {denied} denied"
    );
}

#[test]
fn isolation_names_and_origins() {
    let cluster = cluster();
    let compiled = compile(&cluster);
    let tables = policy_tables(&compiled);

    // Non-local pods have no entry; every address of a local pod has one.
    assert!(!tables.pods.contains_key(&ip("198.18.2.3")));
    assert_eq!(tables.pods.len(), 6);
    assert_eq!(
        tables.pods.get(&ip("198.18.1.2")),
        tables.pods.get(&ip("2001:db8:1::2"))
    );
    // Not isolated: no ACL, in either direction.
    assert_eq!(
        tables.pods.get(&ip("198.18.1.4")),
        Some(&switchyard_dataplane::policy::PodAcls::default())
    );
    // Isolated directions have a default-deny table; the other direction has none.
    let web = tables
        .pods
        .get(&ip("198.18.1.2"))
        .copied()
        .unwrap_or_default();
    assert!(web.ingress.is_some() && web.egress.is_none());
    let client = tables
        .pods
        .get(&ip("198.18.2.2"))
        .copied()
        .unwrap_or_default();
    assert!(client.ingress.is_none() && client.egress.is_some());
    let Some((_, db)) = tables.acl_for(ip("198.18.1.3"), AclDirection::Ingress) else {
        panic!("db is isolated for ingress");
    };
    assert!(!db.classifier.default_allow());
    assert_eq!(
        db.origins.iter().map(|o| &**o).collect::<Vec<_>>(),
        ["node", "node"]
    );

    // Tables are only built for isolating ACLs, one per distinct ACL, named by id.
    let isolating = compiled
        .acls()
        .filter(|(_, a)| a.default == DefaultAction::Deny)
        .count();
    assert_eq!(tables.acls.len(), isolating);
    assert_eq!(tables.acls.len(), 3);
    for (table, (id, acl)) in tables.acls.iter().zip(
        compiled
            .acls()
            .filter(|(_, a)| a.default == DefaultAction::Deny),
    ) {
        assert_eq!(&*table.name, format!("acl-{}", id.0));
        assert_eq!(table.origins.len(), acl.len());
        assert_eq!(table.classifier.rule_count(), acl.len());
    }
    let Some((_, web_in)) = tables.acl_for(ip("198.18.1.2"), AclDirection::Ingress) else {
        panic!("web is isolated for ingress");
    };
    let origins: Vec<&str> = web_in.origins.iter().map(|o| &**o).collect();
    assert!(origins.contains(&"a/web ingress[0]"), "{origins:?}");
    assert!(origins.contains(&"a/web ingress[1]"), "{origins:?}");
    // The hit index is the rule's index in the origins.
    let Some(hit) = web_in.classifier.classify(ip("198.18.2.2"), 6, 8080) else {
        panic!("b/client may reach a/web on http");
    };
    assert_eq!(
        web_in.origins.get(hit as usize).map(|o| &**o),
        Some("a/web ingress[0]")
    );
    let compiled_acl = compiled.pod_acl(&PodKey::new("a", "web"), Direction::Ingress);
    assert_eq!(
        compiled_acl.and_then(|a| a.first_match(ip("198.18.2.2"), 6, 8080)),
        Some(hit as usize)
    );
}

#[test]
fn no_policies_no_tables() {
    let mut cluster = cluster();
    cluster.policies.clear();
    let tables = policy_tables(&compile(&cluster));
    assert!(tables.acls.is_empty());
    assert!(tables
        .pods
        .values()
        .all(|p| p.ingress.is_none() && p.egress.is_none()));
}

#[test]
fn classifiers_of_unchanged_acls_are_reused() {
    let cluster = cluster();
    let mut compiler = switchyard_policy::PolicyCompiler::from_cluster(&cluster);
    let mut cache = AclCache::default();
    let first = policy_tables_reusing(&compiler.snapshot(), &mut cache);
    let again = policy_tables_reusing(&compiler.snapshot(), &mut cache);
    assert!(!first.acls.is_empty());
    assert_eq!(first.acls.len(), again.acls.len());
    for (a, b) in first.acls.iter().zip(&again.acls) {
        assert!(Arc::ptr_eq(a, b), "{} was built again", a.name);
    }
    // Removing every policy leaves nothing to reuse, and the cache lets go of the classifiers.
    for policy in &cluster.policies {
        compiler.remove_policy(&policy.key());
    }
    let none = policy_tables_reusing(&compiler.snapshot(), &mut cache);
    assert!(none.acls.is_empty());
    assert!(first.acls.iter().all(|a| Arc::strong_count(a) <= 2));
}

/// The same policy in two namespaces: ACLs that differ only in their rules' origins.
fn template_in(namespaces: &[&str]) -> Cluster {
    let mut cluster = Cluster {
        node_ips: vec![ip("198.18.0.1")],
        ..Cluster::default()
    };
    for (n, name) in namespaces.iter().enumerate() {
        cluster.namespaces.push(ns(name, &[]));
        let web = format!("198.18.{}.2", 10 + n);
        let db = format!("198.18.{}.3", 10 + n);
        cluster
            .pods
            .push(pod(&format!("{name}/web"), "web", &[&web], &[], true));
        cluster
            .pods
            .push(pod(&format!("{name}/db"), "db", &[&db], &[], false));
        cluster.policies.push(policy(
            &format!("{name}/web-egress"),
            LabelSelector::labels([("app", "web")]),
            Some(vec![PolicyType::Egress]),
            None,
            Some(vec![Rule {
                peers: Some(vec![Peer::pods_in_namespaces(
                    LabelSelector::labels([("app", "db")]),
                    LabelSelector::everything(),
                )]),
                ports: Some(vec![PortSpec::number(Protocol::Tcp, 5432)]),
            }]),
        ));
    }
    cluster
}

#[test]
fn acls_with_the_same_rules_share_a_classifier() {
    let cluster = template_in(&["a", "b"]);
    let mut cache = AclCache::default();
    let tables = policy_tables_reusing(&compile(&cluster), &mut cache);
    let built = cache.last_build();
    assert_eq!((built.tables_built, built.classifiers_built), (2, 1));
    let [a, b] = [&tables.acls[0], &tables.acls[1]];
    assert!(Arc::ptr_eq(&a.classifier, &b.classifier));
    assert!(Arc::ptr_eq(&a.rules, &b.rules));
    // Each table still names its own origins.
    let origins = |t: &switchyard_dataplane::policy::AclTable| {
        t.origins
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        origins(a),
        ["node", "a/web-egress egress[0]", "a/web-egress egress[0]"]
    );
    assert_eq!(
        origins(b),
        ["node", "b/web-egress egress[0]", "b/web-egress egress[0]"]
    );
}

#[test]
fn a_peer_label_change_builds_one_classifier_for_all_the_acls_it_changes() {
    let cluster = template_in(&["a", "b", "c"]);
    let mut compiler = switchyard_policy::PolicyCompiler::from_cluster(&cluster);
    let mut cache = AclCache::default();
    let before = policy_tables_reusing(&compiler.snapshot(), &mut cache);

    // b/db stops being a database: every namespace's web egress ACL loses it.
    let changes = compiler.set_pod_labels(&PodKey::new("b", "db"), [].into());
    assert_eq!(changes.map(|c| c.changed.len()), Ok(3));
    let after = policy_tables_reusing(&compiler.snapshot(), &mut cache);
    let built = cache.last_build();
    assert_eq!((built.tables_built, built.classifiers_built), (3, 1));
    assert!(!after.acls[0].classifier.allows(ip("198.18.11.3"), 6, 5432));
    assert!(after.acls[0].classifier.allows(ip("198.18.12.3"), 6, 5432));
    assert!(before.acls[0].classifier.allows(ip("198.18.11.3"), 6, 5432));

    // Nothing changed: everything is reused.
    let again = policy_tables_reusing(&compiler.snapshot(), &mut cache);
    assert_eq!(cache.last_build().tables_reused, 3);
    for (x, y) in after.acls.iter().zip(&again.acls) {
        assert!(Arc::ptr_eq(x, y));
    }
}
