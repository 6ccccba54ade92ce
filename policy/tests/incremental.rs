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
