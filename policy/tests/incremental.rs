//! The incremental compiler touches only what a change can affect.

mod common;

use common::*;
use switchyard_policy::*;

fn key(ns: &str, name: &str) -> PodKey {
    PodKey::new(ns, name)
}

/// x/a admits pods labelled `app=web` from namespace y; nothing else is isolated.
fn compiler() -> PolicyCompiler {
    let mut p = policy("x", "web-from-y", LabelSelector::labels([("pod", "a")]));
    p.ingress = Some(vec![rule(
        Some(vec![Peer::pods_in_namespaces(
            LabelSelector::labels([("app", "web")]),
            LabelSelector::labels([("ns", "y")]),
        )]),
        Some(vec![PortSpec::named(Protocol::Tcp, "serve-80")]),
    )]);
    PolicyCompiler::from_cluster(&cluster(vec![p]))
}

fn admits(c: &PolicyCompiler, to: &PodKey, from: &str) -> bool {
    c.snapshot()
        .pod_acl(to, Direction::Ingress)
        .is_some_and(|acl| acl_allows(acl, ip(from), TCP, 80))
}

#[test]
fn unrelated_label_change_recompiles_only_that_pod() {
    let mut c = compiler();
    let before = c.acl_count();
    let changes = c.set_pod_labels(&key("z", "c"), labels(&[("app", "web")]));
    assert_eq!(
        changes,
        Ok(ChangeSet {
            recompiled: vec![key("z", "c")],
            changed: vec![],
        })
    );
    assert_eq!(c.acl_count(), before);
}

#[test]
fn peer_label_change_recompiles_the_pods_whose_rules_name_it() {
    let mut c = compiler();
    let x_a = key("x", "a");
    let old = c.pod_acls(&x_a);
    assert!(!admits(&c, &x_a, "10.0.1.2"));

    let changes = c.set_pod_labels(&key("y", "b"), labels(&[("pod", "b"), ("app", "web")]));
    assert_eq!(
        changes,
        Ok(ChangeSet {
            recompiled: vec![x_a.clone(), key("y", "b")],
            changed: vec![x_a.clone()],
        })
    );
    assert_ne!(c.pod_acls(&x_a), old);
    assert!(admits(&c, &x_a, "10.0.1.2"));

    // And back: x/a returns to a rule set equal to the first one.
    let changes = c.set_pod_labels(&key("y", "b"), labels(&[("pod", "b")]));
    assert_eq!(changes.map(|c| c.changed), Ok(vec![x_a.clone()]));
    assert!(!admits(&c, &x_a, "10.0.1.2"));
}

#[test]
fn namespace_label_change_recompiles_through_namespace_selectors() {
    let mut c = compiler();
    c.set_pod_labels(&key("z", "b"), labels(&[("app", "web")]))
        .map(|_| ())
        .unwrap_or_else(|e| panic!("{e}"));
    let changes = c.upsert_namespace(Namespace {
        name: "z".into(),
        labels: labels(&[("ns", "y")]),
    });
    assert_eq!(changes.recompiled, vec![key("x", "a")]);
    assert!(admits(&c, &key("x", "a"), "10.0.2.2"));
    // A label no selector looks at changes nothing.
    let changes = c.upsert_namespace(Namespace {
        name: "x".into(),
        labels: labels(&[("ns", "x"), ("color", "green")]),
    });
    assert_eq!(changes, ChangeSet::default());
}

#[test]
fn selected_pod_label_change_and_policy_removal() {
    let mut c = compiler();
    let x_a = key("x", "a");
    // x/a stops being selected: open again, sharing the open ACL with everyone.
    let changes = c.set_pod_labels(&x_a, labels(&[("pod", "other")]));
    assert_eq!(changes.map(|c| c.changed), Ok(vec![x_a.clone()]));
    assert_eq!(c.pod_acls(&x_a), c.pod_acls(&key("x", "b")));
    assert_eq!(
        c.acl_count(),
        2,
        "one open ACL per direction, the isolated one released"
    );

    let mut c = compiler();
    let changes = c.remove_policy(&PolicyKey::new("x", "web-from-y"));
    assert_eq!(changes.changed, vec![x_a]);
    assert_eq!(c.acl_count(), 2);
    assert_eq!(
        c.set_pod_labels(&key("q", "nope"), Labels::new()),
        Err(CompileError::UnknownPod(key("q", "nope")))
    );
}

/// Every pod of x takes TCP 80 from `app=web` pods of any namespace; z/* are remote.
fn web_peers() -> (PolicyCompiler, Cluster) {
    let mut p = policy("x", "from-web", LabelSelector::everything());
    p.ingress = Some(vec![rule(
        Some(vec![Peer::pods_in_namespaces(
            LabelSelector::labels([("app", "web")]),
            LabelSelector::everything(),
        )]),
        Some(vec![PortSpec::number(Protocol::Tcp, 80)]),
    )]);
    let mut c = cluster(vec![p]);
    for pod in c.pods.iter_mut().filter(|p| p.namespace == "z") {
        pod.node_local = false;
    }
    (PolicyCompiler::from_cluster(&c), c)
}

fn check(c: &PolicyCompiler) {
    assert_eq!(c.check_indexes(), Ok(()));
}

#[test]
fn remote_peer_joining_a_selector_recompiles_only_the_pods_whose_rules_name_it() {
    let (mut c, _) = web_peers();
    let x = |n: &str| key("x", n);
    let shared = c.pod_acls(&x("a"));
    assert!(!admits(&c, &x("a"), "10.0.2.3"));

    let changes = c.set_pod_labels(&key("z", "c"), labels(&[("app", "web")]));
    assert_eq!(
        changes,
        Ok(ChangeSet {
            recompiled: vec![x("a"), x("b"), x("c")],
            changed: vec![x("a"), x("b"), x("c")],
        })
    );
    check(&c);
    assert!(admits(&c, &x("a"), "10.0.2.3"));
    // The three pods of x still share one ingress ACL; y's pods were not touched.
    assert_eq!(c.pod_acls(&x("a")), c.pod_acls(&x("c")));
    assert_ne!(c.pod_acls(&x("a")), shared);

    // A label no selector reads changes nothing (z/c is not on this node).
    let changes = c.set_pod_labels(&key("z", "c"), labels(&[("app", "web"), ("v", "2")]));
    assert_eq!(changes, Ok(ChangeSet::default()));
    check(&c);
}

#[test]
fn peer_address_change_and_deletion_patch_the_rules() {
    let (mut c, cluster) = web_peers();
    let mut web = cluster.pod(&key("y", "b")).cloned().expect("y/b");
    web.labels = labels(&[("app", "web")]);
    c.upsert_pod(web.clone());
    assert!(admits(&c, &key("x", "a"), "10.0.1.2"));

    web.ips = vec![ip("10.0.1.200")];
    let changes = c.upsert_pod(web.clone());
    assert_eq!(
        changes.changed,
        vec![key("x", "a"), key("x", "b"), key("x", "c")]
    );
    assert!(!admits(&c, &key("x", "a"), "10.0.1.2"));
    assert!(admits(&c, &key("x", "a"), "10.0.1.200"));
    check(&c);

    c.remove_pod(&web.key());
    assert!(!admits(&c, &key("x", "a"), "10.0.1.200"));
    check(&c);
}

#[test]
fn namespace_object_deleted_leaves_only_the_name_label() {
    let mut p = policy("x", "from-ns", LabelSelector::everything());
    p.ingress = Some(vec![
        rule(
            Some(vec![Peer::namespaces(LabelSelector::labels([("ns", "y")]))]),
            None,
        ),
        rule(
            Some(vec![Peer::namespaces(LabelSelector::labels([(
                "kubernetes.io/metadata.name",
                "z",
            )]))]),
            None,
        ),
    ]);
    let mut c = PolicyCompiler::from_cluster(&cluster(vec![p]));
    let x_a = key("x", "a");
    assert!(admits(&c, &x_a, "10.0.1.2") && admits(&c, &x_a, "10.0.2.2"));

    // y's pods matched through the `ns` label: gone with the object. z's through its name
    // label: still there without an object.
    c.remove_namespace("y");
    c.remove_namespace("z");
    check(&c);
    assert!(!admits(&c, &x_a, "10.0.1.2"));
    assert!(admits(&c, &x_a, "10.0.2.2"));

    // The pods of a namespace without an object come and go; the namespace with them.
    for name in ["a", "b", "c"] {
        c.remove_pod(&key("z", name));
        check(&c);
    }
    assert!(!admits(&c, &x_a, "10.0.2.2"));
    let mut back = cluster(vec![]).pod(&key("z", "a")).cloned().expect("z/a");
    back.labels = labels(&[("app", "web")]);
    c.upsert_pod(back);
    check(&c);
    assert!(admits(&c, &x_a, "10.0.2.1"));
    let changes = c.upsert_namespace(Namespace {
        name: "y".into(),
        labels: labels(&[("ns", "y")]),
    });
    assert_eq!(
        changes.changed,
        vec![x_a.clone(), key("x", "b"), key("x", "c")]
    );
    assert!(admits(&c, &x_a, "10.0.1.2"));
    check(&c);
}

#[test]
fn label_change_of_a_selected_pod_changes_only_its_own_acls() {
    // x/a alone is selected by pod=a; relabelled it is selected by the catch-all instead.
    let mut a = policy("x", "only-a", LabelSelector::labels([("pod", "a")]));
    a.policy_types = Some(vec![PolicyType::Ingress]);
    let mut rest = policy(
        "x",
        "not-a",
        LabelSelector::everything().with_expression("pod", SelectorOperator::NotIn, &["a"]),
    );
    rest.ingress = Some(vec![rule(
        None,
        Some(vec![PortSpec::number(Protocol::Tcp, 80)]),
    )]);
    let mut c = PolicyCompiler::from_cluster(&cluster(vec![a, rest]));
    let x_a = key("x", "a");
    assert!(!admits(&c, &x_a, "10.0.1.1"));
    let changes = c.set_pod_labels(&x_a, labels(&[("pod", "d")]));
    assert_eq!(
        changes,
        Ok(ChangeSet {
            recompiled: vec![x_a.clone()],
            changed: vec![x_a.clone()],
        })
    );
    assert!(admits(&c, &x_a, "10.0.1.1"));
    assert_eq!(
        c.pod_acls(&x_a),
        c.pod_acls(&key("x", "b")),
        "shares the others' ACLs"
    );
    check(&c);
}
