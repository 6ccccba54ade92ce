//! `policy explain` on the repository's examples and on the classic-cases fixture.

use std::path::PathBuf;

use super::*;

fn dir(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn args(rel: &str, ports: &[&str]) -> ExplainArgs {
    ExplainArgs {
        manifests: dir(rel),
        ports: ports
            .iter()
            .map(|p| match p.parse() {
                Ok(p) => p,
                Err(e) => panic!("bad test port {p}: {e}"),
            })
            .collect(),
    }
}

fn run_explain(rel: &str, ports: &[&str]) -> String {
    match explain(&args(rel, ports)) {
        Ok(text) => text,
        Err(e) => panic!("explain {rel}: {e:#}"),
    }
}

/// The cell in the table headed `heading`, row `from`, column `to`.
fn cell(text: &str, heading: &str, from: &str, to: &str) -> String {
    let mut lines = text.lines().skip_while(|l| *l != heading).skip(1);
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let Some(col) = header.iter().position(|h| *h == to) else {
        panic!("no column {to} under {heading}:\n{text}");
    };
    for line in lines.take_while(|l| !l.is_empty()) {
        let cells: Vec<&str> = line.split('\t').collect();
        if cells.first() == Some(&from) {
            return cells.get(col).unwrap_or(&"?").to_string();
        }
    }
    panic!("no row {from} under {heading}:\n{text}");
}

/// The classifier-backed text must be exactly what the policy crate's own evaluator prints.
fn assert_same_as_policy_crate(rel: &str) {
    let Ok((cluster, _)) = load(&dir(rel)) else {
        panic!("{rel} loads");
    };
    let mut probes = default_probes(&cluster);
    probes.extend([(6, 1), (17, 9999), (132, 80), (6, 65535)]);
    assert_eq!(
        tables_text(&cluster, &probes),
        switchyard_policy::explain(&cluster, &probes)
    );
}

#[test]
fn examples() {
    let text = run_explain("../examples", &[]);
    // Default probes: the ports the policy names, and 80/TCP.
    let headings: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("TCP/") || l.starts_with("UDP/"))
        .collect();
    assert_eq!(headings, ["TCP/80", "TCP/8080", "UDP/5353"], "{text}");
    assert_eq!(cell(&text, "TCP/8080", "default/pod-a", "demo/api-0"), ".");
    assert_eq!(cell(&text, "UDP/5353", "default/pod-a", "demo/api-0"), ".");
    assert_eq!(cell(&text, "TCP/80", "default/pod-a", "demo/api-0"), "X");
    assert_eq!(cell(&text, "TCP/8080", "demo/edge-0", "demo/api-0"), "X");
    assert_eq!(cell(&text, "TCP/8080", "demo/api-0", "demo/edge-0"), ".");
    assert_eq!(cell(&text, "TCP/80", "demo/api-0", "demo/api-0"), ".");
    assert!(!text.contains("errors"), "{text}");
    assert_same_as_policy_crate("../examples");
}

#[test]
fn classic_cases() {
    let text = run_explain("tests/fixtures/policy", &[]);
    let headings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains('/') && !l.contains('\t'))
        .collect();
    assert_eq!(headings, ["TCP/80", "TCP/8080", "UDP/53"], "{text}");
    let (web, api, db) = ("frontend/web", "backend/api", "backend/db");
    let (monitor, dns) = ("ops/monitor", "ops/dns");
    let expect = [
        // Allow from a namespace, on the named port only; the ipBlock lets web's egress out.
        ("TCP/8080", web, api, "."),
        ("TCP/80", web, api, "X"),
        // Default deny ingress in backend.
        ("TCP/8080", monitor, api, "X"),
        ("TCP/8080", db, api, "X"),
        // Same-namespace selector, and pod + namespace selector together.
        ("TCP/8080", api, db, "."),
        ("TCP/80", monitor, db, "."),
        ("TCP/80", dns, db, "X"),
        // ipBlock except, and web is not allowed in by db anyway.
        ("TCP/80", web, db, "X"),
        // Egress deny with DNS allowed.
        ("UDP/53", web, dns, "."),
        ("UDP/53", web, monitor, "X"),
        ("TCP/80", web, dns, "X"),
        // Open namespaces and directions.
        ("TCP/80", api, web, "."),
        ("TCP/80", db, monitor, "."),
        ("UDP/53", api, dns, "."),
        // Self traffic.
        ("TCP/80", db, db, "."),
        ("TCP/80", web, web, "."),
    ];
    for (heading, from, to, want) in expect {
        assert_eq!(
            cell(&text, heading, from, to),
            want,
            "{heading} {from} -> {to}\n{text}"
        );
    }
    assert_same_as_policy_crate("tests/fixtures/policy");
}

#[test]
fn requested_ports_and_layout() {
    let text = run_explain("tests/fixtures/policy", &["5432/TCP", "53/udp"]);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("TCP/5432"));
    assert_eq!(
        lines.next(),
        Some("-\tbackend/api\tbackend/db\tfrontend/web\tops/dns\tops/monitor")
    );
    assert_eq!(lines.next(), Some("backend/api\t.\t.\t.\t.\t."));
    assert!(text.contains("\n\nUDP/53\n"), "{text}");
}

#[test]
fn errors_are_listed() {
    let tmp = std::env::temp_dir().join(format!("switchyard-explain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    if let Err(e) = std::fs::create_dir_all(&tmp) {
        panic!("creating {}: {e}", tmp.display());
    }
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: a}}
status: {podIP: 198.18.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b}
status: {podIP: 198.18.1.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from: [{ipBlock: {cidr: 198.18.1.0/33}}]
    ports: [{port: 70000}]
"#;
    let written = std::fs::write(tmp.join("m.yaml"), yaml);
    let result = written.map_err(anyhow::Error::from).and_then(|()| {
        explain(&ExplainArgs {
            manifests: tmp.clone(),
            ports: Vec::new(),
        })
    });
    let _ = std::fs::remove_dir_all(&tmp);
    let text = match result {
        Ok(t) => t,
        Err(e) => panic!("explain: {e:#}"),
    };
    assert_eq!(
        cell(&text, "TCP/80", "default/b", "default/a"),
        "X",
        "{text}"
    );
    assert!(text.contains("\nerrors (the policies stay enforced, closed side):\n"));
    assert!(text.contains("NetworkPolicy default/bad: spec.ingress[0].from[0]: invalid CIDR"));
    assert!(text.contains(
        "\nproblems in the manifests (each part named is left out, or matches nothing):\n"
    ));
    assert!(text.contains("spec.ingress[0].ports[0].port: 70000 is not a port number"));
}

#[test]
fn missing_directory() {
    let Err(e) = explain(&args("tests/fixtures/policy/nope", &[])) else {
        panic!("a missing directory is an error");
    };
    let line = format!("{e:#}");
    assert!(!line.contains('\n'));
    assert!(line.starts_with("--manifests "), "{line}");
    assert!(line.contains("cannot read the directory"), "{line}");
}
