//! NetworkPolicy end to end (issue 5): `switchyard agent --manifests DIR` in the lab's node
//! namespace enforces the policies on real kernel TCP and UDP connections between "pods" (extra
//! addresses) in the client and server namespaces, for the classic cases, and a policy change
//! takes effect on new connections while an established one keeps passing data.
//!
//! ```text
//!   client ns (198.18.1.0/24)                       server ns (198.18.2.0/24)
//!   frontend/web       .1.10  {app: web}            backend/api      .2.10 {app: api} http=8080 metrics=9090
//!   frontend/batch     .1.11  {app: batch}          backend/db       .2.11 {app: db}  http=9090
//!   monitoring/prom    .1.20  {app: prometheus}     kube-system/dns  .2.20 {k8s-app: kube-dns} dns=53/UDP
//!   monitoring/grafana .1.21  {app: grafana}        other/srv        .2.30 {app: srv}
//!   other/tool         .1.30  {app: prometheus}
//!   (not a pod: the lab client's own 198.18.1.2)
//! ```
//!
//! Every pod is on node-a, the agent's node, so every pod has ACLs. For each case the test
//! writes the policies, waits until the agent's ACLs (`switchyard show acl --json`) isolate the
//! expected pods with the expected policies' rules, and then checks three things against the
//! case's truth table, written here by hand from the NetworkPolicy spec:
//! 1. `switchyard policy explain` prints that table, every cell (same-side pairs included);
//! 2. every cell whose two pods sit on opposite sides of the node (so the packets cross the
//!    dataplane; same-side traffic never leaves its namespace's kernel) gives the same verdict
//!    with a real connection: TCP connect + answer (`socat`, 2 s connect timeout) or a UDP
//!    request + answer, all cells of a case probed in parallel, in both directions (so the
//!    cells where an isolated pod opens a connection to a pod that is not isolated check that
//!    its replies come back: policy is stateful);
//! 3. the lab client's own address, which is no pod, is treated as an ipBlock-only peer.
//!
//! Node traffic (README, NetworkPolicy): a pod and the node's own addresses may always talk;
//! checked with pings from isolated pods to the router's addresses.
//!
//! Then a live change: an established TCP connection from frontend/web to backend/api keeps
//! passing data while a new policy refuses web's new connections, and after the policies are
//! removed. Every case runs even when an earlier one disagreed; the test fails at the end with
//! the list of disagreeing cells. About 50 s.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{text, Driver, Lab, Ns};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

/// A "pod": an address in the client or server namespace.
#[derive(Clone, Debug)]
struct Pod {
    namespace: &'static str,
    name: &'static str,
    ip: &'static str,
    labels: &'static [(&'static str, &'static str)],
    /// Named container ports: (name, port, protocol).
    ports: &'static [(&'static str, u16, &'static str)],
    side: Ns,
}

impl Pod {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn label(&self, key: &str) -> Option<&'static str> {
        self.labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

const PODS: &[Pod] = &[
    Pod {
        namespace: "frontend",
        name: "web",
        ip: "198.18.1.10",
        labels: &[("app", "web")],
        ports: &[],
        side: Ns::Client,
    },
    Pod {
        namespace: "frontend",
        name: "batch",
        ip: "198.18.1.11",
        labels: &[("app", "batch")],
        ports: &[],
        side: Ns::Client,
    },
    Pod {
        namespace: "monitoring",
        name: "prom",
        ip: "198.18.1.20",
        labels: &[("app", "prometheus")],
        ports: &[],
        side: Ns::Client,
    },
    Pod {
        namespace: "monitoring",
        name: "grafana",
        ip: "198.18.1.21",
        labels: &[("app", "grafana")],
        ports: &[],
        side: Ns::Client,
    },
    Pod {
        namespace: "other",
        name: "tool",
        ip: "198.18.1.30",
        labels: &[("app", "prometheus")],
        ports: &[],
        side: Ns::Client,
    },
    Pod {
        namespace: "backend",
        name: "api",
        ip: "198.18.2.10",
        labels: &[("app", "api")],
        ports: &[("http", 8080, "TCP"), ("metrics", 9090, "TCP")],
        side: Ns::Server,
    },
    Pod {
        namespace: "backend",
        name: "db",
        ip: "198.18.2.11",
        labels: &[("app", "db")],
        ports: &[("http", 9090, "TCP")],
        side: Ns::Server,
    },
    Pod {
        namespace: "kube-system",
        name: "dns",
        ip: "198.18.2.20",
        labels: &[("k8s-app", "kube-dns")],
        ports: &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")],
        side: Ns::Server,
    },
    Pod {
        namespace: "other",
        name: "srv",
        ip: "198.18.2.30",
        labels: &[("app", "srv")],
        ports: &[("http", 8080, "TCP")],
        side: Ns::Server,
    },
];

const NAMESPACES: &[(&str, &str)] = &[
    ("frontend", "{team: web, env: prod}"),
    ("monitoring", "{team: ops, purpose: monitoring}"),
    ("other", "{team: tools, env: dev}"),
    ("backend", "{team: core, env: prod}"),
    ("kube-system", "{}"),
];

/// The lab client's own address: no pod, so only ipBlocks can name it.
const EXTERNAL: &str = "198.18.1.2";
/// The node's (router's) addresses on each side.
const NODE_CLIENT_SIDE: &str = "198.18.1.1";
const NODE_SERVER_SIDE: &str = "198.18.2.1";
/// TCP ports every pod answers on (with the address it was reached at); UDP 53 on the
/// server-side pods.
const TCP_PORTS: [u16; 2] = [8080, 9090];
const UDP_PORT: u16 = 53;
/// A long-lived line echo on backend/api for the established connection.
const ECHO_PORT: u16 = 7070;

fn pod(key: &str) -> &'static Pod {
    PODS.iter()
        .find(|p| p.key() == key)
        .unwrap_or_else(|| panic!("no pod {key}"))
}

fn cluster_manifest() -> String {
    let mut docs = Vec::new();
    for (name, labels) in NAMESPACES {
        docs.push(format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {labels}}}\n"
        ));
    }
    for p in PODS {
        let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let ports: Vec<String> = p
            .ports
            .iter()
            .map(|(n, port, proto)| {
                format!("{{name: {n}, containerPort: {port}, protocol: {proto}}}")
            })
            .collect();
        docs.push(format!(
            "apiVersion: v1\nkind: Pod\n\
             metadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
             spec:\n  nodeName: node-a\n  containers: [{{name: c, image: c:1, ports: [{ports}]}}]\n\
             status:\n  phase: Running\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n",
            name = p.name,
            ns = p.namespace,
            labels = labels.join(", "),
            ports = ports.join(", "),
            ip = p.ip,
        ));
    }
    docs.join("---\n")
}

/// A NetworkPolicy manifest; `spec` is YAML indented by two spaces.
fn netpol(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
    )
}

fn deny_all_ingress(namespace: &str, name: &str) -> String {
    netpol(
        namespace,
        name,
        "  podSelector: {}\n  policyTypes: [Ingress]\n",
    )
}

/// Source and destination of a probe: a pod, or the lab client's own address.
#[derive(Clone, Copy, Debug)]
enum End {
    Pod(&'static Pod),
    External,
}

impl End {
    fn ip(self) -> &'static str {
        match self {
            End::Pod(p) => p.ip,
            End::External => EXTERNAL,
        }
    }

    fn side(self) -> Ns {
        match self {
            End::Pod(p) => p.side,
            End::External => Ns::Client,
        }
    }

    fn name(self) -> String {
        match self {
            End::Pod(p) => p.key(),
            End::External => format!("external {EXTERNAL}"),
        }
    }
}

type Verdict = fn(End, &Pod, Proto, u16) -> bool;

/// One classic case: its policies, its truth table and what the agent's ACLs must look like.
struct Case {
    name: &'static str,
    policies: Vec<String>,
    /// Whether a new connection from the first end to the pod on proto/port is allowed (pod to
    /// itself is handled by the caller).
    allowed: Verdict,
    /// Ports the case is probed on.
    probes: Vec<(Proto, u16)>,
    /// Pods whose ingress / egress the agent must isolate.
    ingress_isolated: &'static [&'static str],
    egress_isolated: &'static [&'static str],
    /// Policies whose rules the ACLs must carry (`namespace/name`).
    with_rules: &'static [&'static str],
    /// (source pod address, node address) pings that must pass: node traffic is always allowed.
    node_pings: &'static [(&'static str, &'static str)],
}

fn client_side(ns: Ns) -> bool {
    matches!(ns, Ns::Client)
}

fn in_block(ip: &str, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').expect("cidr");
    let net = u32::from(net.parse::<Ipv4Addr>().expect("net"));
    let len: u32 = len.parse().expect("len");
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip.parse::<Ipv4Addr>().expect("ip")) & mask == net & mask
}

fn ns_of(from: End) -> Option<&'static str> {
    match from {
        End::Pod(p) => Some(p.namespace),
        End::External => None,
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "default deny ingress (backend)",
            policies: vec![deny_all_ingress("backend", "c1-deny-ingress")],
            allowed: |_, to, _, _| to.namespace != "backend",
            probes: vec![(Proto::Tcp, 8080), (Proto::Udp, UDP_PORT)],
            ingress_isolated: &["198.18.2.10", "198.18.2.11"],
            egress_isolated: &[],
            with_rules: &[],
            node_pings: &[("198.18.2.10", NODE_SERVER_SIDE)],
        },
        Case {
            name: "allow from namespace (team: web → backend/api)",
            policies: vec![
                deny_all_ingress("backend", "c2-deny-ingress"),
                netpol(
                    "backend",
                    "c2-api-from-team-web",
                    "  podSelector: {matchLabels: {app: api}}\n  ingress:\n  \
                     - from: [{namespaceSelector: {matchLabels: {team: web}}}]\n",
                ),
            ],
            allowed: |from, to, _, _| match to.key().as_str() {
                "backend/api" => ns_of(from) == Some("frontend"),
                "backend/db" => false,
                _ => true,
            },
            probes: vec![(Proto::Tcp, 8080), (Proto::Tcp, 9090)],
            ingress_isolated: &["198.18.2.10", "198.18.2.11"],
            egress_isolated: &[],
            with_rules: &["backend/c2-api-from-team-web"],
            node_pings: &[],
        },
        Case {
            name: "allow by named port (http: 8080 on api, 9090 on db)",
            policies: vec![
                deny_all_ingress("backend", "c3-deny-ingress"),
                netpol(
                    "backend",
                    "c3-http-from-pods",
                    "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {}}]\n    \
                     ports: [{port: http}]\n",
                ),
            ],
            allowed: |from, to, _, port| match to.key().as_str() {
                "backend/api" => matches!(from, End::Pod(_)) && port == 8080,
                "backend/db" => matches!(from, End::Pod(_)) && port == 9090,
                _ => true,
            },
            probes: vec![(Proto::Tcp, 8080), (Proto::Tcp, 9090)],
            ingress_isolated: &["198.18.2.10", "198.18.2.11"],
            egress_isolated: &[],
            with_rules: &["backend/c3-http-from-pods"],
            node_pings: &[],
        },
        Case {
            name: "ipBlock with except (198.18.1.0/24 except 198.18.1.16/28 → api:8080)",
            policies: vec![netpol(
                "backend",
                "c4-api-from-block",
                "  podSelector: {matchLabels: {app: api}}\n  ingress:\n  \
                 - from: [{ipBlock: {cidr: 198.18.1.0/24, except: [198.18.1.16/28]}}]\n    \
                 ports: [{protocol: TCP, port: 8080}]\n",
            )],
            allowed: |from, to, proto, port| {
                if to.key() != "backend/api" {
                    return true;
                }
                proto == Proto::Tcp
                    && port == 8080
                    && in_block(from.ip(), "198.18.1.0/24")
                    && !in_block(from.ip(), "198.18.1.16/28")
            },
            probes: vec![(Proto::Tcp, 8080), (Proto::Tcp, 9090)],
            ingress_isolated: &["198.18.2.10"],
            egress_isolated: &[],
            with_rules: &["backend/c4-api-from-block"],
            node_pings: &[],
        },
        Case {
            name: "egress deny with DNS allowed (frontend)",
            policies: vec![netpol(
                "frontend",
                "c5-egress-dns-only",
                "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  \
                 - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, \
                 podSelector: {matchLabels: {k8s-app: kube-dns}}}]\n    \
                 ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]\n",
            )],
            allowed: |from, to, proto, port| {
                if ns_of(from) != Some("frontend") {
                    return true;
                }
                to.key() == "kube-system/dns"
                    && port == 53
                    && matches!(proto, Proto::Udp | Proto::Tcp)
            },
            probes: vec![(Proto::Tcp, 8080), (Proto::Udp, UDP_PORT)],
            ingress_isolated: &[],
            egress_isolated: &["198.18.1.10", "198.18.1.11"],
            with_rules: &["frontend/c5-egress-dns-only"],
            node_pings: &[("198.18.1.10", NODE_CLIENT_SIDE)],
        },
        Case {
            name: "combined selectors (namespace AND pod) vs two peers (namespace OR pod)",
            policies: vec![
                netpol(
                    "backend",
                    "c6-api-metrics-from-prometheus",
                    "  podSelector: {matchLabels: {app: api}}\n  ingress:\n  \
                     - from: [{namespaceSelector: {matchLabels: {purpose: monitoring}}, \
                     podSelector: {matchLabels: {app: prometheus}}}]\n    \
                     ports: [{port: metrics}]\n",
                ),
                netpol(
                    "backend",
                    "c6-db-from-monitoring-or-prometheus",
                    "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  \
                     - from: [{namespaceSelector: {matchLabels: {purpose: monitoring}}}, \
                     {podSelector: {matchLabels: {app: prometheus}}}]\n",
                ),
            ],
            allowed: |from, to, _, port| {
                let End::Pod(p) = from else {
                    return !to.namespace.eq("backend");
                };
                match to.key().as_str() {
                    "backend/api" => {
                        p.namespace == "monitoring"
                            && p.label("app") == Some("prometheus")
                            && port == 9090
                    }
                    // podSelector alone is the policy's own namespace.
                    "backend/db" => {
                        p.namespace == "monitoring"
                            || (p.namespace == "backend" && p.label("app") == Some("prometheus"))
                    }
                    _ => true,
                }
            },
            probes: vec![(Proto::Tcp, 8080), (Proto::Tcp, 9090)],
            ingress_isolated: &["198.18.2.10", "198.18.2.11"],
            egress_isolated: &[],
            with_rules: &[
                "backend/c6-api-metrics-from-prometheus",
                "backend/c6-db-from-monitoring-or-prometheus",
            ],
            node_pings: &[],
        },
    ]
}

/// Writes `policies` as the policy manifest, whole, then renamed (the agent polls the files).
fn write_policies(dir: &Path, policies: &[String]) {
    let path = dir.join("50-policies.yaml");
    if policies.is_empty() {
        let _ = fs::remove_file(&path);
        return;
    }
    let tmp = dir.join(".policies.tmp");
    fs::write(&tmp, policies.join("---\n")).expect("write policies");
    fs::rename(&tmp, &path).expect("rename policies");
}

fn switchyard(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .expect("run switchyard");
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Ingress-isolated pod addresses, egress-isolated ones, policies named in rule origins.
type Enforced = (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>);

/// What the agent enforces now, once its dataplane runs the latest tables.
fn agent_acls(lab: &Lab) -> Result<Enforced, String> {
    let socket = lab.admin_socket();
    let socket = socket.to_str().expect("utf-8");
    let (ok, out, err) = switchyard(&["show", "sync", "--json", "--socket", socket]);
    if !ok {
        return Err(format!("show sync: {err}"));
    }
    let sync: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    if sync["tables_version"] != sync["dataplane_tables_version"] {
        return Err(format!(
            "dataplane runs tables {} of {}",
            sync["dataplane_tables_version"], sync["tables_version"]
        ));
    }
    let (ok, out, err) = switchyard(&["show", "acl", "--json", "--socket", socket]);
    if !ok {
        return Err(format!("show acl: {err}"));
    }
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    let (mut ingress, mut egress, mut policies) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    for acl in v["acls"].as_array().into_iter().flatten() {
        ingress.extend(strings(&acl["ingress_pods"]));
        egress.extend(strings(&acl["egress_pods"]));
        for rule in acl["rules"].as_array().into_iter().flatten() {
            if let Some(origin) = rule["origin"].as_str().filter(|o| *o != "node") {
                let policy = origin.split(' ').next().unwrap_or(origin);
                policies.insert(policy.to_string());
            }
        }
    }
    Ok((ingress, egress, policies))
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Waits until the agent's ACLs isolate exactly `ingress`/`egress` with rules from exactly
/// `policies`.
fn wait_programmed(lab: &Lab, what: &str, ingress: &[&str], egress: &[&str], policies: &[&str]) {
    let want = (set(ingress), set(egress), set(policies));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(15);
    loop {
        let got = agent_acls(lab);
        if got.as_ref() == Ok(&want) {
            eprintln!("{what}: programmed after {:?}", started.elapsed());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the agent's ACLs are {got:?}, want {want:?}\n{}",
            lab.read("router.stderr")
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The tables `switchyard policy explain` prints: (protocol, port) → (from, to) → allowed.
type Explained = BTreeMap<(Proto, u16), BTreeMap<(String, String), bool>>;

fn explain(dir: &Path, probes: &[(Proto, u16)]) -> Explained {
    let mut args = vec![
        "policy".to_string(),
        "explain".into(),
        "--manifests".into(),
        dir.display().to_string(),
    ];
    for (proto, port) in probes {
        args.extend(["--port".into(), format!("{port}/{}", proto.name())]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = switchyard(&args);
    assert!(ok, "policy explain failed: {err}");
    assert!(
        !out.contains("errors") && !out.contains("problems"),
        "policy explain reports problems:\n{out}"
    );
    let mut tables = Explained::new();
    let mut current: Option<(Proto, u16)> = None;
    let mut columns: Vec<String> = Vec::new();
    for line in out.lines() {
        if let Some((proto, port)) = line.split_once('/').filter(|_| !line.contains('\t')) {
            let proto = match proto {
                "TCP" => Proto::Tcp,
                "UDP" => Proto::Udp,
                other => panic!("explain: protocol {other}"),
            };
            current = Some((proto, port.parse().expect("explain: port")));
            continue;
        }
        let cells: Vec<&str> = line.split('\t').collect();
        if cells.len() < 2 {
            continue;
        }
        if cells[0] == "-" {
            columns = cells[1..].iter().map(|s| s.to_string()).collect();
            continue;
        }
        let key = current.expect("explain: a table before its heading");
        let row = tables.entry(key).or_default();
        for (to, cell) in columns.iter().zip(&cells[1..]) {
            let allowed = match *cell {
                "." => true,
                "X" => false,
                other => panic!("explain: cell {other:?} in\n{out}"),
            };
            row.insert((cells[0].to_string(), to.clone()), allowed);
        }
    }
    assert_eq!(
        tables.len(),
        probes.len(),
        "explain printed {} tables for {} ports:\n{out}",
        tables.len(),
        probes.len()
    );
    tables
}

/// One connection attempt.
#[derive(Clone, Debug)]
struct Probe {
    from: End,
    to: &'static Pod,
    proto: Proto,
    port: u16,
    want: bool,
}

/// Runs `probes` (all from the namespace `side`) in parallel; returns whether each got its
/// answer (the destination's address, echoed by the listener).
fn run_probes(lab: &Lab, side: Ns, probes: &[&Probe]) -> Vec<bool> {
    if probes.is_empty() {
        return Vec::new();
    }
    let mut script = String::new();
    for (i, p) in probes.iter().enumerate() {
        let (src, dst, port) = (p.from.ip(), p.to.ip, p.port);
        let cmd = match p.proto {
            Proto::Tcp => {
                format!("socat -T 2 - TCP4:{dst}:{port},bind={src},connect-timeout=2 </dev/null")
            }
            Proto::Udp => format!("echo q | socat -T 2 -t 2 - UDP4:{dst}:{port},bind={src}"),
        };
        script.push_str(&format!("( r=$({cmd} 2>/dev/null); echo \"{i} $r\" ) &\n"));
    }
    script.push_str("wait\n");
    let out = lab.exec_t(side, &script, Duration::from_secs(15));
    let stdout = text(&out.stdout);
    let mut got = vec![false; probes.len()];
    for line in stdout.lines() {
        let mut parts = line.split_whitespace();
        let Some(i) = parts.next().and_then(|i| i.parse::<usize>().ok()) else {
            continue;
        };
        if let (Some(slot), Some(answer)) = (got.get_mut(i), parts.next()) {
            *slot = answer == probes[i].to.ip;
        }
    }
    got
}

/// Probes every cross-side cell in both namespaces at once. Cells that connected when they must
/// not fail at once; cells that did not answer when they should are tried twice more (a
/// datagram may be lost on a loaded machine).
fn check_connections(lab: &Lab, case: &str, probes: &[Probe]) -> Vec<String> {
    let mut pending: Vec<&Probe> = probes.iter().collect();
    let mut failures = Vec::new();
    for attempt in 1..=3 {
        let (client, server): (Vec<&Probe>, Vec<&Probe>) =
            pending.iter().partition(|p| client_side(p.from.side()));
        let (rc, rs) = thread::scope(|s| {
            let c = s.spawn(|| run_probes(lab, Ns::Client, &client));
            let r = run_probes(lab, Ns::Server, &server);
            (c.join().expect("client probes"), r)
        });
        let mut retry = Vec::new();
        for (p, got) in client.iter().zip(rc).chain(server.iter().zip(rs)) {
            match (p.want, got) {
                (true, true) | (false, false) => {}
                (false, true) => failures.push(format!(
                    "{case}: {} → {} {}/{}: connected, the table says denied",
                    p.from.name(),
                    p.to.key(),
                    p.proto.name(),
                    p.port
                )),
                (true, false) if attempt < 3 => retry.push(*p),
                (true, false) => failures.push(format!(
                    "{case}: {} → {} {}/{}: no answer in 3 tries, the table says allowed",
                    p.from.name(),
                    p.to.key(),
                    p.proto.name(),
                    p.port
                )),
            }
        }
        if retry.is_empty() {
            break;
        }
        eprintln!("{case}: retrying {} allowed cells", retry.len());
        pending = retry;
    }
    failures
}

/// Checks one case: the agent's ACLs, `policy explain`'s table, real connections, node pings.
/// Returns what disagreed with the case's truth table.
fn check_case(lab: &Lab, dir: &Path, case: &Case) -> Vec<String> {
    let started = Instant::now();
    write_policies(dir, &case.policies);
    wait_programmed(
        lab,
        case.name,
        case.ingress_isolated,
        case.egress_isolated,
        case.with_rules,
    );
    let verdict = |from: End, to: &Pod, proto: Proto, port: u16| match from {
        End::Pod(p) if p.key() == to.key() => true,
        _ => (case.allowed)(from, to, proto, port),
    };

    // 1. The truth table `policy explain` prints is the case's.
    let tables = explain(dir, &case.probes);
    let mut wrong = Vec::new();
    let mut printed = String::new();
    for &(proto, port) in &case.probes {
        let table = &tables[&(proto, port)];
        printed.push_str(&format!("{}/{port}\n", proto.name()));
        for from in PODS {
            printed.push_str(&format!("  {:<20}", from.key()));
            for to in PODS {
                let want = verdict(End::Pod(from), to, proto, port);
                let got = table.get(&(from.key(), to.key())).copied();
                printed.push_str(if want { " ." } else { " X" });
                if got != Some(want) {
                    wrong.push(format!(
                        "{}: explain: {} → {} {}/{port}: explain says {got:?}, the spec {want}",
                        case.name,
                        from.key(),
                        to.key(),
                        proto.name()
                    ));
                }
            }
            printed.push('\n');
        }
    }
    eprintln!(
        "{}: truth table (rows from, columns to, pod order as listed):\n{printed}",
        case.name
    );

    // 2. and 3. Real connections for every cell that crosses the node, and from the external
    // address to every server-side pod.
    let mut probes = Vec::new();
    for &(proto, port) in &case.probes {
        let sources = PODS.iter().map(End::Pod).chain([End::External]);
        for from in sources {
            for to in PODS {
                if client_side(from.side()) == client_side(to.side) {
                    continue;
                }
                // UDP answers only on the server side (DNS).
                if proto == Proto::Udp && client_side(to.side) {
                    continue;
                }
                probes.push(Probe {
                    from,
                    to,
                    proto,
                    port,
                    want: verdict(from, to, proto, port),
                });
            }
        }
    }
    wrong.extend(check_connections(lab, case.name, &probes));

    // Node traffic is always allowed.
    for (src, node) in case.node_pings {
        let ns = if in_block(src, "198.18.1.0/24") {
            Ns::Client
        } else {
            Ns::Server
        };
        let (ok, out) = lab.ping(ns, &format!("-c 2 -i 0.2 -W 2 -I {src}"), node);
        if !ok {
            wrong.push(format!(
                "{}: ping {src} → node {node} failed:\n{out}",
                case.name
            ));
        }
    }
    eprintln!(
        "{}: {} connections checked ({} allowed) in {:?}",
        case.name,
        probes.len(),
        probes.iter().filter(|p| p.want).count(),
        started.elapsed()
    );
    wrong
}

/// Adds the pods' addresses and starts the listeners: TCP 8080 and 9090 in both namespaces
/// (answering with the address they were reached at), UDP 53 on every server-side pod (the
/// same), and a line echo on backend/api:7070.
fn start_pods(lab: &Lab) -> Vec<std::process::Child> {
    for p in PODS {
        lab.exec_ok(p.side, &format!("ip addr add {}/24 dev eth0", p.ip));
    }
    let mut children = Vec::new();
    for side in [Ns::Client, Ns::Server] {
        for port in TCP_PORTS {
            children.push(lab.spawn(
                side,
                &format!("tcp-{side:?}-{port}"),
                &format!("socat TCP4-LISTEN:{port},fork,reuseaddr SYSTEM:'echo $SOCAT_SOCKADDR'"),
                Duration::from_secs(110),
            ));
        }
    }
    // UDP: one process answers on every server-side pod's address with that address (a
    // forking socat can hand a datagram to the wrong child when several arrive at once).
    let udp_ips: Vec<String> = PODS
        .iter()
        .filter(|p| !client_side(p.side))
        .map(|p| format!("\"{}\"", p.ip))
        .collect();
    let udp_server = format!(
        r#"
import select, socket
socks = []
for ip in [{ips}]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, {UDP_PORT}))
    socks.append(s)
while True:
    for s in select.select(socks, [], [])[0]:
        data, peer = s.recvfrom(2048)
        s.sendto((s.getsockname()[0] + "\n").encode(), peer)
"#,
        ips = udp_ips.join(", ")
    );
    fs::write(lab.dir.join("udp_server.py"), udp_server).expect("udp server script");
    children.push(lab.spawn(
        Ns::Server,
        "udp",
        &format!("python3 {}", lab.dir.join("udp_server.py").display()),
        Duration::from_secs(110),
    ));
    let api = pod("backend/api");
    children.push(lab.spawn(
        Ns::Server,
        "echo",
        &format!(
            "socat TCP4-LISTEN:{ECHO_PORT},bind={},fork,reuseaddr \
             SYSTEM:'while read l; do echo api $l; done'",
            api.ip
        ),
        Duration::from_secs(110),
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    for (side, want) in [(Ns::Client, 2), (Ns::Server, 2 + 4 + 1)] {
        loop {
            let out = lab.exec(side, "ss -Hltun | wc -l");
            let n: usize = text(&out.stdout).trim().parse().unwrap_or(0);
            if n >= want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "listeners in {side:?}: {n} of {want} up"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
    children
}

/// One new TCP connection from `from` to backend/api:8080: answered?
fn connects(lab: &Lab, from: &'static Pod) -> bool {
    let probe = Probe {
        from: End::Pod(from),
        to: pod("backend/api"),
        proto: Proto::Tcp,
        port: 8080,
        want: true,
    };
    run_probes(lab, from.side, &[&probe])[0]
}

fn wait_line(lab: &Lab, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = lab.read("client.out");
        if let Some(line) = out.lines().nth(n) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "established client: no line {n}: {out} {}",
            lab.read("client.err")
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A live change: frontend/web holds an established connection to backend/api when a policy
/// change denies web's new connections; new ones are refused, the established one keeps
/// passing data both ways; removing the policies opens new connections again.
fn live_change(lab: &Lab, dir: &Path) {
    let started = Instant::now();
    let web = pod("frontend/web");
    let prom = pod("monitoring/prom");
    let api = pod("backend/api");
    let allow_web = cases().remove(1);
    write_policies(dir, &allow_web.policies);
    wait_programmed(
        lab,
        "live: allow web",
        allow_web.ingress_isolated,
        &[],
        allow_web.with_rules,
    );
    assert!(
        connects(lab, web),
        "live: web cannot reach api before the change"
    );

    // A client that sends a line whenever a go file appears and prints the answers.
    let script = format!(
        r#"
import os, socket, time
s = socket.create_connection(("{api}", {ECHO_PORT}), timeout=5, source_address=("{web}", 0))
f = s.makefile("rw")
for word in ["one", "two", "three"]:
    deadline = time.time() + 60
    while word != "one" and not os.path.exists("{dir}/go-" + word) and time.time() < deadline:
        time.sleep(0.05)
    f.write(word + "\n"); f.flush()
    print(f.readline().strip(), flush=True)
"#,
        api = api.ip,
        web = web.ip,
        dir = lab.dir.display()
    );
    fs::write(lab.dir.join("client.py"), script).expect("client script");
    let mut client = lab.spawn(
        Ns::Client,
        "client",
        &format!("python3 {}", lab.dir.join("client.py").display()),
        Duration::from_secs(90),
    );
    assert_eq!(wait_line(lab, 0), "api one", "established: first answer");

    // Only monitoring may open connections to api now.
    let only_monitoring = vec![
        deny_all_ingress("backend", "c7-deny-ingress"),
        netpol(
            "backend",
            "c7-api-from-monitoring",
            "  podSelector: {matchLabels: {app: api}}\n  ingress:\n  \
             - from: [{namespaceSelector: {matchLabels: {purpose: monitoring}}}]\n",
        ),
    ];
    write_policies(dir, &only_monitoring);
    wait_programmed(
        lab,
        "live: only monitoring",
        &["198.18.2.10", "198.18.2.11"],
        &[],
        &["backend/c7-api-from-monitoring"],
    );
    assert!(
        !connects(lab, web),
        "live: web still opens new connections to api"
    );
    assert!(
        connects(lab, prom),
        "live: monitoring/prom cannot reach api"
    );
    fs::write(lab.dir.join("go-two"), "").expect("go file");
    assert_eq!(
        wait_line(lab, 1),
        "api two",
        "established connection after the policy change"
    );

    // Removing the policies opens api again.
    write_policies(dir, &[]);
    wait_programmed(lab, "live: no policies", &[], &[], &[]);
    assert!(
        connects(lab, web),
        "live: web cannot reach api after the policies went away"
    );
    fs::write(lab.dir.join("go-three"), "").expect("go file");
    assert_eq!(
        wait_line(lab, 2),
        "api three",
        "established connection after the policies were removed"
    );
    let status = common::wait_bounded(&mut client, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "established client: {} {}",
        lab.read("client.out"),
        lab.read("client.err")
    );
    eprintln!("live change checked in {:?}", started.elapsed());
}

#[test]
fn network_policy_truth_tables_on_real_connections() {
    truth_tables("network_policy_truth_tables_on_real_connections", &[]);
}

/// The same with two workers: a connection's packets may reach either, and the replies
/// policy lets through as replies must find the connection wherever it is tracked.
#[test]
fn network_policy_truth_tables_with_two_workers() {
    truth_tables(
        "network_policy_truth_tables_with_two_workers",
        &["--workers", "2"],
    );
}

fn truth_tables(test: &str, extra: &[&str]) {
    let Some(mut lab) = Lab::new(test, &["socat", "python3"]) else {
        return;
    };
    if lab.kernel {
        eprintln!("skipped: NetworkPolicy has no kernel-mode equivalent in this lab");
        return;
    }
    let started = Instant::now();
    let dir = lab.dir.join("manifests");
    fs::create_dir_all(&dir).expect("manifest dir");
    fs::write(dir.join("00-cluster.yaml"), cluster_manifest()).expect("cluster manifest");
    let _pods = start_pods(&lab);
    let mut args = vec![
        "--manifests",
        dir.to_str().expect("utf-8"),
        "--node-name",
        "node-a",
        "--poll-interval",
        "0.1",
    ];
    args.extend_from_slice(extra);
    lab.start_agent(Driver::AfPacket, &args);
    wait_programmed(&lab, "no policies yet", &[], &[], &[]);
    // Every case runs; what disagreed is reported at the end.
    let mut wrong = Vec::new();
    for case in cases() {
        wrong.extend(check_case(&lab, &dir, &case));
    }
    if !wrong.is_empty() {
        eprintln!("cells that disagree so far:\n{}", wrong.join("\n"));
    }
    live_change(&lab, &dir);
    let out = lab.finish();
    assert!(
        wrong.is_empty(),
        "{} checks disagree with the truth tables:\n{}\n{}",
        wrong.len(),
        wrong.join("\n"),
        out.map(|o| o.stdout).unwrap_or_default()
    );
    eprintln!("policy lab done in {:?}", started.elapsed());
}
