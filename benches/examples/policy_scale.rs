//! NetworkPolicy compile time at scale (issue 5): a full compile of 1k policies over 10k pods,
//! and the incremental recompiles one change needs (goal: under 10 ms).
//!
//! The synthetic cluster (deterministic, `--seed`):
//! - `--namespaces` namespaces (default 100): `kube-system` (two `k8s-app: kube-dns` pods with
//!   named ports `dns`/UDP 53 and `dns-tcp`/TCP 53), `monitoring` (`purpose: monitoring`, pods
//!   `app: prometheus`), then `ns-NNN` with `team` (12 teams) and `env` (prod/staging/dev).
//! - `--pods` pods (default 10,000) spread evenly over the namespaces, labels `app` (10 apps a
//!   namespace), `tier` (frontend/backend/db/cache by app), `team`, `version`; named ports
//!   `http` (8080 or 8000 by tier), `metrics` (9090), `db` (5432) or `redis` (6379). IPv4 in
//!   198.18.0.0/15 (a /25 per node), every fourth namespace dual-stack (2001:db8::/32).
//! - `--nodes` nodes (default 300); `--local` pods (default 100, picked at random) run on this
//!   node, which is the only place ACLs are compiled for. The node's address is 198.19.255.1.
//! - `--policies` NetworkPolicies (default 1,000), ten kinds dealt round-robin over the
//!   namespaces: default-deny ingress; frontend → backend on named port `http`; allow from
//!   namespaces of one team; namespace and pod selector combined (monitoring's prometheus on
//!   named port `metrics`); ipBlock with `except` (IPv4 and IPv6) on 443 and 8443; default-deny
//!   egress with DNS to kube-dns allowed; egress to the db and cache tiers by named port;
//!   `matchExpressions` with `endPort` ranges (TCP 30000-32767, UDP 5000-5100) from an
//!   ipBlock; `NotIn`/`Exists` selectors with a TCP 8080-8090 range; egress to the internet
//!   (0.0.0.0/0 except the cluster) plus backends in every namespace by named port.
//!
//! What is timed (median of `--runs`, each a fresh process-internal run; release build):
//! - a full compile, as the agent's first sync does it: `PolicyCompiler::from_cluster`,
//!   `snapshot()`, then `PolicyTables::from_compiled` with an empty `AclCache` (one classifier
//!   per distinct rule list), the function `proxy/src/agent/policy_tables.rs` calls.
//! - incremental: what the agent pays per change (`proxy/src/agent/mod.rs`: the view feeds the
//!   kept `PolicyCompiler` one object, then `compile_policy` takes a `snapshot()` and calls
//!   `PolicyTables::from_compiled` with the `AclCache` it keeps). Each update (`set_pod_labels`,
//!   `upsert_policy`, `remove_policy`, `upsert_pod`, `remove_pod`, `upsert_namespace`) is applied
//!   and then undone, both timed, each as: the compiler update; the snapshot; the tables (built
//!   with the kept cache; the previous snapshot and tables are dropped inside this timing).
//!   "sum" is the three together: the end-to-end cost of the change in the agent's control
//!   plane (not counted: the reduce of the API object before, the publish after).
//!
//! Before timing, the compiled ACLs are checked against the crate's reference evaluator on
//! sampled flows (each direction of a local pod); after all the incremental updates, the
//! compiler is checked to hold the same ACL per local pod as a fresh compile, and the tables
//! built incrementally (with the kept cache) to hold the same rules and origins per pod address
//! as tables built from scratch.
//!
//! `policy_scale [--runs R] [--pods N] [--policies P] [--namespaces K] [--nodes M]
//! [--local L] [--seed S] [--samples F] [--updates U] [--only TEXT]` (defaults: 5, 10000,
//! 1000, 100, 300, 100, 5, 2000, U = R; each incremental update is applied and undone U times;
//! `--only` runs just the incremental updates whose name contains TEXT, e.g. for a profile).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard_dataplane::acl::{AclRuleSpec, Classifier};
use switchyard_dataplane::policy::{AclCache, PolicyTables};
use switchyard_policy::reference::{self, Endpoint};
use switchyard_policy::{
    Acl, ChangeSet, Cluster, CompiledPolicies, DefaultAction, Direction, LabelSelector, Labels,
    NamedPort, Namespace, NetworkPolicy, Peer, Pod, PolicyCompiler, PolicyType, PortSpec, Protocol,
    Rule, SelectorOperator,
};

/// This node's address (outside every pod range).
const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);
/// Pod addresses: node `n` owns `198.18.0.0 + 128 n` /25.
const POD_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
const PODS_PER_NODE_MAX: u32 = 128;
const TIERS: [&str; 4] = ["frontend", "backend", "db", "cache"];
const TEAMS: u32 = 12;

#[derive(Clone, Copy)]
struct Shape {
    namespaces: u32,
    pods: u32,
    nodes: u32,
    local: u32,
    policies: u32,
    seed: u64,
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (((x >> 32) * u64::from(n)) >> 32) as u32
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn namespace_name(i: u32) -> String {
    match i {
        0 => "kube-system".to_string(),
        1 => "monitoring".to_string(),
        _ => format!("ns-{i:03}"),
    }
}

fn team(i: u32) -> String {
    format!("team-{}", i % TEAMS)
}

fn namespaces(shape: &Shape) -> Vec<Namespace> {
    (0..shape.namespaces)
        .map(|i| {
            let name = namespace_name(i);
            let mut l = labels(&[
                ("team", &team(i)),
                ("env", ["prod", "staging", "dev"][i as usize % 3]),
            ]);
            match i {
                0 => {
                    l.insert("team".into(), "platform".into());
                }
                1 => {
                    l.insert("team".into(), "platform".into());
                    l.insert("purpose".into(), "monitoring".into());
                }
                _ => {}
            }
            Namespace { name, labels: l }
        })
        .collect()
}

fn named(name: &str, protocol: Protocol, port: u16) -> NamedPort {
    NamedPort {
        name: name.to_string(),
        protocol,
        port,
    }
}

/// Pod `j` of namespace `i`: labels and named ports.
fn pod_shape(i: u32, j: u32) -> (Labels, Vec<NamedPort>) {
    if i == 0 && j < 2 {
        let l = labels(&[("k8s-app", "kube-dns"), ("team", "platform")]);
        let ports = vec![
            named("dns", Protocol::Udp, 53),
            named("dns-tcp", Protocol::Tcp, 53),
            named("metrics", Protocol::Tcp, 9153),
        ];
        return (l, ports);
    }
    if i == 1 {
        let l = labels(&[("app", "prometheus"), ("team", "platform")]);
        return (l, vec![named("http", Protocol::Tcp, 9090)]);
    }
    let app = j % 10;
    let tier = TIERS[match app {
        0..=3 => 0,
        4..=6 => 1,
        7 | 8 => 2,
        _ => 3,
    }];
    let app = format!("app-{app}");
    let version = if j % 3 == 1 { "v2" } else { "v1" };
    let t = team(i);
    let l = labels(&[
        ("app", &app),
        ("tier", tier),
        ("team", &t),
        ("version", version),
    ]);
    let mut ports = vec![named("metrics", Protocol::Tcp, 9090)];
    match tier {
        "frontend" => ports.push(named("http", Protocol::Tcp, 8080)),
        "backend" => ports.push(named("http", Protocol::Tcp, 8000)),
        "db" => ports.push(named("db", Protocol::Tcp, 5432)),
        _ => ports.push(named("redis", Protocol::Tcp, 6379)),
    }
    (l, ports)
}

fn pods(shape: &Shape, rng: &mut Rng) -> Vec<Pod> {
    let total = shape.pods;
    let mut local: HashSet<u32> = HashSet::new();
    while local.len() < shape.local.min(total) as usize {
        local.insert(rng.below(total));
    }
    let mut used = vec![0u32; shape.nodes as usize];
    let per_ns = total.div_ceil(shape.namespaces);
    let mut out = Vec::with_capacity(total as usize);
    for g in 0..total {
        let (i, j) = (g / per_ns, g % per_ns);
        let node = if local.contains(&g) {
            0
        } else {
            // Remote pods go to a node that still has room in its /25.
            loop {
                let n = 1 + rng.below(shape.nodes - 1);
                if used[n as usize] < PODS_PER_NODE_MAX {
                    break n;
                }
            }
        };
        let slot = used[node as usize];
        used[node as usize] += 1;
        let v4 = Ipv4Addr::from(u32::from(POD_BASE) + node * PODS_PER_NODE_MAX + slot);
        let mut ips = vec![IpAddr::V4(v4)];
        if i % 4 == 0 {
            let v6 = Ipv6Addr::new(0x2001, 0xdb8, node as u16, 0, 0, 0, 0, slot as u16 + 1);
            ips.push(IpAddr::V6(v6));
        }
        let (labels, named_ports) = pod_shape(i, j);
        out.push(Pod {
            namespace: namespace_name(i),
            name: format!("pod-{j}"),
            labels,
            ips,
            named_ports,
            node_local: node == 0,
        });
    }
    out
}

fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector::labels(pairs.iter().copied())
}

fn rule(peers: Vec<Peer>, ports: Vec<PortSpec>) -> Rule {
    Rule {
        peers: Some(peers),
        ports: Some(ports),
    }
}

fn policy(ns: &str, name: &str, selector: LabelSelector) -> NetworkPolicy {
    NetworkPolicy {
        namespace: ns.to_string(),
        name: name.to_string(),
        pod_selector: selector,
        policy_types: None,
        ingress: None,
        egress: None,
    }
}

/// Policy number `k` (of kind `k % 10`) in namespace `i`.
fn make_policy(i: u32, k: u32, rng: &mut Rng) -> NetworkPolicy {
    let ns = namespace_name(i);
    let app = |rng: &mut Rng| format!("app-{}", rng.below(10));
    let everything = LabelSelector::everything;
    let mut p = match k % 10 {
        0 => {
            let mut p = policy(&ns, "default-deny-ingress", everything());
            p.policy_types = Some(vec![PolicyType::Ingress]);
            p
        }
        1 => {
            let mut p = policy(&ns, "frontend-to-backend", sel(&[("tier", "backend")]));
            p.ingress = Some(vec![rule(
                vec![Peer::pods(sel(&[("tier", "frontend")]))],
                vec![PortSpec::named(Protocol::Tcp, "http")],
            )]);
            p
        }
        2 => {
            let a = app(rng);
            let t = team(rng.below(TEAMS));
            let mut p = policy(&ns, "from-team", sel(&[("app", &a)]));
            p.ingress = Some(vec![rule(
                vec![Peer::namespaces(sel(&[("team", &t)]))],
                vec![PortSpec::number(Protocol::Tcp, 8080)],
            )]);
            p
        }
        3 => {
            let mut p = policy(&ns, "allow-prometheus", everything());
            p.ingress = Some(vec![rule(
                vec![Peer::pods_in_namespaces(
                    sel(&[("app", "prometheus")]),
                    sel(&[("purpose", "monitoring")]),
                )],
                vec![PortSpec::named(Protocol::Tcp, "metrics")],
            )]);
            p
        }
        4 => {
            let a = rng.below(128) * 4;
            let v6 = rng.below(256);
            let mut p = policy(&ns, "from-blocks", sel(&[("tier", "frontend")]));
            let v4_except = format!("198.{}.{}.0/22", 18 + a / 256, a % 256);
            let v6_except = format!("2001:db8:{v6:x}::/48");
            p.ingress = Some(vec![rule(
                vec![
                    Peer::ip_block("198.18.0.0/15", &[v4_except.as_str(), "198.19.128.0/17"]),
                    Peer::ip_block("2001:db8::/32", &[v6_except.as_str()]),
                ],
                vec![
                    PortSpec::number(Protocol::Tcp, 443),
                    PortSpec::number(Protocol::Tcp, 8443),
                ],
            )]);
            p
        }
        5 => {
            let mut p = policy(&ns, "default-deny-egress-but-dns", everything());
            p.policy_types = Some(vec![PolicyType::Egress]);
            p.egress = Some(vec![rule(
                vec![Peer::pods_in_namespaces(
                    sel(&[("k8s-app", "kube-dns")]),
                    sel(&[("kubernetes.io/metadata.name", "kube-system")]),
                )],
                vec![
                    PortSpec::number(Protocol::Udp, 53),
                    PortSpec::number(Protocol::Tcp, 53),
                ],
            )]);
            p
        }
        6 => {
            let mut p = policy(&ns, "backend-to-data", sel(&[("tier", "backend")]));
            p.policy_types = Some(vec![PolicyType::Egress]);
            p.egress = Some(vec![
                rule(
                    vec![Peer::pods(sel(&[("tier", "db")]))],
                    vec![PortSpec::named(Protocol::Tcp, "db")],
                ),
                rule(
                    vec![Peer::pods(sel(&[("tier", "cache")]))],
                    vec![PortSpec::named(Protocol::Tcp, "redis")],
                ),
            ]);
            p
        }
        7 => {
            let (a, b) = (app(rng), app(rng));
            let selector = everything().with_expression(
                "app",
                SelectorOperator::In,
                &[a.as_str(), b.as_str()],
            );
            let mut p = policy(&ns, "node-ports", selector);
            p.ingress = Some(vec![rule(
                vec![Peer::ip_block("203.0.113.0/24", &["203.0.113.128/25"])],
                vec![
                    PortSpec::range(Protocol::Tcp, 30000, 32767),
                    PortSpec::range(Protocol::Udp, 5000, 5100),
                ],
            )]);
            p
        }
        8 => {
            let selector = everything()
                .with_expression("tier", SelectorOperator::NotIn, &["db"])
                .with_expression("team", SelectorOperator::Exists, &[]);
            let mut p = policy(&ns, "from-prod-tiers", selector);
            p.ingress = Some(vec![rule(
                vec![Peer::pods_in_namespaces(
                    everything().with_expression("tier", SelectorOperator::Exists, &[]),
                    everything().with_expression("env", SelectorOperator::In, &["prod", "staging"]),
                )],
                vec![PortSpec::range(Protocol::Tcp, 8080, 8090)],
            )]);
            p
        }
        _ => {
            let mut p = policy(&ns, "frontend-egress", sel(&[("tier", "frontend")]));
            p.policy_types = Some(vec![PolicyType::Egress]);
            p.egress = Some(vec![
                rule(
                    vec![Peer::ip_block(
                        "0.0.0.0/0",
                        &["198.18.0.0/15", "192.168.0.0/16"],
                    )],
                    vec![PortSpec::number(Protocol::Tcp, 443)],
                ),
                rule(
                    vec![Peer::pods_in_namespaces(
                        sel(&[("tier", "backend")]),
                        everything(),
                    )],
                    vec![PortSpec::named(Protocol::Tcp, "http")],
                ),
            ]);
            p
        }
    };
    if k >= 10 {
        p.name = format!("{}-{}", p.name, k / 10);
    }
    p
}

fn policies(shape: &Shape, rng: &mut Rng) -> Vec<NetworkPolicy> {
    (0..shape.policies)
        .map(|n| {
            let i = n % shape.namespaces;
            let k = n / shape.namespaces;
            make_policy(i, k, rng)
        })
        .collect()
}

fn cluster(shape: &Shape) -> Cluster {
    let mut rng = Rng::new(shape.seed);
    Cluster {
        namespaces: namespaces(shape),
        pods: pods(shape, &mut rng),
        policies: policies(shape, &mut rng),
        node_ips: vec![IpAddr::V4(NODE_IP)],
    }
}

/// Per pod address: the rules and origins of its ingress and egress tables, whatever their
/// index. Two `PolicyTables` that enforce the same thing compare equal.
type Canonical = std::collections::BTreeMap<IpAddr, [Option<(Vec<AclRuleSpec>, Vec<String>)>; 2]>;

fn canonical(tables: &PolicyTables) -> Canonical {
    let acl = |i: Option<u32>| {
        i.and_then(|i| tables.acls.get(i as usize)).map(|a| {
            (
                a.rules.to_vec(),
                a.origins.iter().map(ToString::to_string).collect(),
            )
        })
    };
    tables
        .pods
        .iter()
        .map(|(ip, p)| (*ip, [acl(p.ingress), acl(p.egress)]))
        .collect()
}

/// The distinct classifiers of `tables` (shared ones counted once).
fn distinct_classifiers(tables: &PolicyTables) -> Vec<&Classifier> {
    let mut seen = HashSet::new();
    tables
        .acls
        .iter()
        .filter(|t| seen.insert(Arc::as_ptr(&t.classifier)))
        .map(|t| &*t.classifier)
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn max(v: &[Duration]) -> Duration {
    v.iter().copied().max().unwrap_or_default()
}

/// `VmRSS` or `VmHWM` of this process in bytes (0 if unknown).
fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Checks the compiled ACLs against the reference evaluator on `samples` random flows to and
/// from local pods.
fn check_against_reference(
    cluster: &Cluster,
    compiled: &CompiledPolicies,
    samples: usize,
    rng: &mut Rng,
) -> Result<(usize, usize), String> {
    let local: Vec<&Pod> = cluster.pods.iter().filter(|p| p.node_local).collect();
    let probes: [(u8, u16); 9] = [
        (6, 8080),
        (6, 8000),
        (6, 9090),
        (6, 443),
        (6, 5432),
        (17, 53),
        (6, 31000),
        (17, 5050),
        (6, 8085),
    ];
    let externals = [
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 200)),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        IpAddr::V4(NODE_IP),
    ];
    let (mut allowed, mut checked) = (0, 0);
    for n in 0..samples {
        let pod = local[rng.below(local.len() as u32) as usize];
        let other = if n % 5 == 4 {
            Endpoint::External(externals[rng.below(externals.len() as u32) as usize])
        } else {
            Endpoint::Pod(cluster.pods[rng.below(cluster.pods.len() as u32) as usize].key())
        };
        let (protocol, port) = probes[rng.below(probes.len() as u32) as usize];
        let me = Endpoint::Pod(pod.key());
        for direction in [Direction::Ingress, Direction::Egress] {
            let (from, to) = match direction {
                Direction::Ingress => (&other, &me),
                Direction::Egress => (&me, &other),
            };
            let Some((src, dst)) = reference::flow_addresses(cluster, from, to) else {
                continue;
            };
            if src == dst {
                continue;
            }
            let want = match direction {
                Direction::Ingress => {
                    reference::ingress_allowed(cluster, &pod.key(), from, src, protocol, port)
                }
                Direction::Egress => {
                    reference::egress_allowed(cluster, &pod.key(), to, dst, protocol, port)
                }
            };
            let acl = compiled
                .pod_acl(&pod.key(), direction)
                .ok_or_else(|| format!("no {direction} ACL for local pod {}", pod.key()))?;
            let peer = if direction == Direction::Ingress {
                src
            } else {
                dst
            };
            let got = switchyard_policy::acl_allows(acl, peer, protocol, port);
            if got != want {
                return Err(format!(
                    "{direction} of {}: {from:?} -> {to:?} {protocol}/{port}: compiled {got}, \
                     reference {want}",
                    pod.key()
                ));
            }
            checked += 1;
            allowed += usize::from(got);
        }
    }
    Ok((checked, allowed))
}

/// One incremental update, applied and undone.
struct Op {
    name: &'static str,
    apply: Box<dyn Fn(&mut PolicyCompiler) -> ChangeSet>,
    undo: Box<dyn Fn(&mut PolicyCompiler) -> ChangeSet>,
}

#[derive(Default)]
struct OpStats {
    compiler: Vec<Duration>,
    snapshot: Vec<Duration>,
    tables: Vec<Duration>,
    recompiled: usize,
    changed: usize,
    tables_built: usize,
    classifiers_built: usize,
    classifiers_patched: usize,
}

/// The agent's policy state between changes: the kept compiler, the last snapshot and tables,
/// and the cache of tables and classifiers.
struct Agent {
    compiler: PolicyCompiler,
    snapshot: CompiledPolicies,
    tables: PolicyTables,
    cache: AclCache,
}

/// Times `f` on the agent's compiler, then what the agent does next: a snapshot, and the
/// dataplane tables built with its kept cache (dropping the previous ones).
fn timed_update(
    agent: &mut Agent,
    f: &dyn Fn(&mut PolicyCompiler) -> ChangeSet,
    stats: &mut OpStats,
) {
    let t0 = Instant::now();
    let changes = f(&mut agent.compiler);
    let t1 = Instant::now();
    let snapshot = agent.compiler.snapshot();
    let t2 = Instant::now();
    agent.tables = PolicyTables::from_compiled(&snapshot, &mut agent.cache);
    agent.snapshot = snapshot;
    let t3 = Instant::now();
    stats.compiler.push(t1 - t0);
    stats.snapshot.push(t2 - t1);
    stats.tables.push(t3 - t2);
    let built = agent.cache.last_build();
    stats.recompiled = stats.recompiled.max(changes.recompiled.len());
    stats.changed = stats.changed.max(changes.changed.len());
    stats.tables_built = stats.tables_built.max(built.tables_built);
    stats.classifiers_built = stats.classifiers_built.max(built.classifiers_built);
    stats.classifiers_patched = stats.classifiers_patched.max(built.classifiers_patched);
}

/// A local frontend pod that a `from-team` policy of its namespace selects by its `app`, and
/// another frontend app to move it to: a label change that changes which policies select the
/// pod and no peer selector's verdict (no peer reads `app` outside `monitoring`).
fn reselected(cluster: &Cluster) -> Option<(&Pod, String)> {
    cluster.pods.iter().find_map(|pod| {
        let app = pod.labels.get("app")?;
        let frontend = pod.labels.get("tier").is_some_and(|t| t == "frontend");
        if !pod.node_local || !frontend || !pod.namespace.starts_with("ns-") {
            return None;
        }
        let selected_by_app = cluster.policies.iter().any(|p| {
            p.namespace == pod.namespace
                && p.name.starts_with("from-team")
                && p.pod_selector.match_labels.get("app") == Some(app)
        });
        let other = (0..4).map(|a| format!("app-{a}")).find(|a| a != app)?;
        selected_by_app.then_some((pod, other))
    })
}

fn ops(cluster: &Cluster) -> Result<Vec<Op>, String> {
    // A local pod outside the two system namespaces that policies select, and a remote pod in
    // a namespace whose pods other namespaces' policies name as peers (by tier).
    let selected = cluster
        .pods
        .iter()
        .find(|p| p.node_local && p.labels.get("tier").is_some_and(|t| t == "frontend"))
        .ok_or("no local frontend pod")?
        .clone();
    let peer = cluster
        .pods
        .iter()
        .find(|p| !p.node_local && p.labels.get("tier").is_some_and(|t| t == "backend"))
        .ok_or("no remote backend pod")?
        .clone();
    let relabel = |pod: &Pod, key: &str, value: &str| {
        let mut l = pod.labels.clone();
        l.insert(key.to_string(), value.to_string());
        l
    };
    let mut out = Vec::new();
    {
        let key = selected.key();
        let (new, old) = (
            relabel(&selected, "tier", "backend"),
            selected.labels.clone(),
        );
        let k2 = key.clone();
        out.push(Op {
            name: "label change, selected local pod (tier frontend→backend)",
            apply: Box::new(move |c| c.set_pod_labels(&key, new.clone()).expect("pod")),
            undo: Box::new(move |c| c.set_pod_labels(&k2, old.clone()).expect("pod")),
        });
    }
    {
        let key = peer.key();
        let (new, old) = (relabel(&peer, "tier", "frontend"), peer.labels.clone());
        let k2 = key.clone();
        out.push(Op {
            name: "label change, remote peer-only pod (tier backend→frontend)",
            apply: Box::new(move |c| c.set_pod_labels(&key, new.clone()).expect("pod")),
            undo: Box::new(move |c| c.set_pod_labels(&k2, old.clone()).expect("pod")),
        });
    }
    if let Some((pod, app)) = reselected(cluster) {
        let key = pod.key();
        let (new, old) = (relabel(pod, "app", &app), pod.labels.clone());
        let k2 = key.clone();
        out.push(Op {
            name: "label change, selected local pod, selection only (app, same tier)",
            apply: Box::new(move |c| c.set_pod_labels(&key, new.clone()).expect("pod")),
            undo: Box::new(move |c| c.set_pod_labels(&k2, old.clone()).expect("pod")),
        });
    }
    {
        let key = peer.key();
        let mut new = peer.labels.clone();
        new.remove("tier");
        let old = peer.labels.clone();
        let k2 = key.clone();
        out.push(Op {
            name: "label change, remote pod drops tier (a peer in many distinct ACLs)",
            apply: Box::new(move |c| c.set_pod_labels(&key, new.clone()).expect("pod")),
            undo: Box::new(move |c| c.set_pod_labels(&k2, old.clone()).expect("pod")),
        });
    }
    {
        let mut moved = peer.clone();
        moved.ips = vec![IpAddr::V4(Ipv4Addr::new(198, 19, 255, 201))];
        let original = peer.clone();
        out.push(Op {
            name: "address change, remote peer pod (a backend)",
            apply: Box::new(move |c| c.upsert_pod(moved.clone())),
            undo: Box::new(move |c| c.upsert_pod(original.clone())),
        });
    }
    {
        let mut added = policy(
            &selected.namespace,
            "bench-added",
            sel(&[("tier", "frontend")]),
        );
        added.ingress = Some(vec![rule(
            vec![Peer::namespaces(sel(&[("env", "prod")]))],
            vec![PortSpec::named(Protocol::Tcp, "http")],
        )]);
        let key = added.key();
        out.push(Op {
            name: "policy added / removed (selects local frontends, peers: prod namespaces)",
            apply: Box::new(move |c| c.upsert_policy(added.clone())),
            undo: Box::new(move |c| c.remove_policy(&key)),
        });
    }
    for (local, name) in [
        (false, "pod added / removed, remote (a backend peer)"),
        (true, "pod added / removed, local (a frontend)"),
    ] {
        let template = if local { &selected } else { &peer };
        let mut pod = template.clone();
        pod.name = "bench-new".into();
        pod.ips = vec![IpAddr::V4(if local {
            Ipv4Addr::new(198, 18, 0, 127)
        } else {
            Ipv4Addr::new(198, 19, 255, 200)
        })];
        let key = pod.key();
        out.push(Op {
            name,
            apply: Box::new(move |c| c.upsert_pod(pod.clone())),
            undo: Box::new(move |c| c.remove_pod(&key)),
        });
    }
    {
        let ns = cluster
            .namespaces
            .iter()
            .find(|n| n.labels.get("env").is_some_and(|e| e == "dev") && n.name.starts_with("ns-"))
            .ok_or("no dev namespace")?
            .clone();
        let mut prod = ns.clone();
        prod.labels.insert("env".into(), "prod".into());
        out.push(Op {
            name: "namespace label change (env dev→prod)",
            apply: Box::new(move |c| c.upsert_namespace(prod.clone())),
            undo: Box::new(move |c| c.upsert_namespace(ns.clone())),
        });
    }
    Ok(out)
}

/// Same ACL (by content) for every local pod in both compilers.
fn same_acls(a: &PolicyCompiler, b: &CompiledPolicies) -> Result<(), String> {
    for (key, ids) in b.pods() {
        let got = a.pod_acls(key).ok_or_else(|| format!("{key}: no ACLs"))?;
        for (g, w) in [(got.ingress, ids.ingress), (got.egress, ids.egress)] {
            let (g, w) = (a.acl(g), b.acl(w));
            if g.map(|x| &**x) != w.map(|x| &**x) {
                return Err(format!(
                    "{key}: incremental ACL differs from a fresh compile"
                ));
            }
        }
    }
    Ok(())
}

fn usage() -> ! {
    eprintln!(
        "usage: policy_scale [--runs R] [--pods N] [--policies P] [--namespaces K] [--nodes M] \
         [--local L] [--seed S] [--samples F] [--updates U] [--only TEXT]"
    );
    std::process::exit(2)
}

fn run(
    shape: Shape,
    runs: usize,
    updates: usize,
    samples: usize,
    only: &str,
) -> Result<(), String> {
    let rss0 = status_bytes("VmRSS:");
    let t = Instant::now();
    let cluster = cluster(&shape);
    let generate = t.elapsed();
    let rss_cluster = status_bytes("VmRSS:");
    println!(
        "cluster: {} namespaces, {} pods ({} local, {} with IPv6) on {} nodes, {} policies \
         (generated in {:.0} ms, {:.1} MiB)",
        cluster.namespaces.len(),
        cluster.pods.len(),
        cluster.pods.iter().filter(|p| p.node_local).count(),
        cluster.pods.iter().filter(|p| p.ips.len() > 1).count(),
        shape.nodes,
        cluster.policies.len(),
        ms(generate),
        mib(rss_cluster.saturating_sub(rss0)),
    );

    // Full compile, the agent's path.
    let (mut compile, mut snapshot, mut build, mut total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    let mut peak = 0;
    for _ in 0..runs {
        let t0 = Instant::now();
        let compiler = PolicyCompiler::from_cluster(&cluster);
        let t1 = Instant::now();
        let snap = compiler.snapshot();
        let t2 = Instant::now();
        let mut cache = AclCache::default();
        let tables = PolicyTables::from_compiled(&snap, &mut cache);
        let t3 = Instant::now();
        compile.push(t1 - t0);
        snapshot.push(t2 - t1);
        build.push(t3 - t2);
        total.push(t3 - t0);
        if last.is_none() {
            // One compiled generation alive (later runs overlap two).
            peak = status_bytes("VmHWM:");
        }
        last = Some((compiler, snap, tables, cache));
    }
    let (compiler, snap, tables, cache) = last.ok_or("no runs")?;
    if !snap.errors().is_empty() {
        return Err(format!("policy errors: {:?}", snap.errors()));
    }
    let distinct: Vec<&Arc<Acl>> = snap.acls().map(|(_, a)| a).collect();
    let isolating = distinct
        .iter()
        .filter(|a| a.default == DefaultAction::Deny)
        .count();
    let distinct_rules: usize = distinct.iter().map(|a| a.len()).sum();
    let biggest = distinct.iter().map(|a| a.len()).max().unwrap_or(0);
    let per_pod_rules: usize = snap
        .pods()
        .flat_map(|(_, ids)| [ids.ingress, ids.egress])
        .filter_map(|id| snap.acl(id))
        .map(|a| a.len())
        .sum();
    let classifiers = distinct_classifiers(&tables);
    let classifier_bytes: usize = classifiers.iter().map(|c| c.memory()).sum();
    let (checked, allowed) =
        check_against_reference(&cluster, &snap, samples, &mut Rng::new(shape.seed ^ 0x5eed))?;
    println!(
        "compiled: {} local pods, {} distinct ACLs ({isolating} isolating), {distinct_rules} \
         rules in them (largest {biggest}; {per_pod_rules} if every pod had its own copy), \
         {} classifiers (ACLs with the same rule list share one), {:.1} MiB; {checked} sampled \
         flow directions agree with the reference evaluator ({allowed} allowed)",
        snap.pods().count(),
        distinct.len(),
        classifiers.len(),
        mib(classifier_bytes as u64),
    );
    println!(
        "memory: peak RSS {:.1} MiB (cluster model {:.1} MiB)\n",
        mib(peak),
        mib(rss_cluster.saturating_sub(rss0))
    );
    println!("full compile, median of {runs} (max):");
    for (what, v) in [
        ("PolicyCompiler::from_cluster", &compile),
        ("snapshot()", &snapshot),
        ("PolicyTables::from_compiled (every classifier)", &build),
        ("total = the agent's first compile_policy", &total),
    ] {
        println!(
            "  {what:<50} {:>9.2} ms ({:.2})",
            ms(median(v.clone())),
            ms(max(v))
        );
    }

    // Incremental updates, each applied then undone, through the agent's path.
    println!(
        "\nincremental, the agent's cost per change: median of {} (apply and undo each timed), \
         ms | max local pods recompiled / changed, tables / classifiers built (patched):",
        2 * updates
    );
    println!(
        "  {:<76} {:>9} {:>9} {:>9} {:>9} {:>9}  pods, built",
        "update", "compiler", "snapshot", "tables", "sum", "(max)"
    );
    let mut agent = Agent {
        compiler,
        snapshot: snap,
        tables,
        cache,
    };
    for op in ops(&cluster)?
        .into_iter()
        .filter(|op| op.name.contains(only))
    {
        let mut stats = OpStats::default();
        for _ in 0..updates {
            timed_update(&mut agent, &*op.apply, &mut stats);
            timed_update(&mut agent, &*op.undo, &mut stats);
        }
        let sum: Vec<Duration> = (0..stats.compiler.len())
            .map(|i| stats.compiler[i] + stats.snapshot[i] + stats.tables[i])
            .collect();
        println!(
            "  {:<76} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}  {}/{}, {}/{} ({})",
            op.name,
            ms(median(stats.compiler.clone())),
            ms(median(stats.snapshot.clone())),
            ms(median(stats.tables.clone())),
            ms(median(sum.clone())),
            ms(max(&sum)),
            stats.recompiled,
            stats.changed,
            stats.tables_built,
            stats.classifiers_built,
            stats.classifiers_patched,
        );
    }
    let fresh = switchyard_policy::compile(&cluster);
    same_acls(&agent.compiler, &fresh)?;
    let fresh_tables = PolicyTables::from_compiled(&fresh, &mut AclCache::default());
    if canonical(&agent.tables) != canonical(&fresh_tables) {
        return Err("the incrementally built tables differ from tables built afresh".into());
    }
    println!(
        "\nafter every update was undone, the incremental compiler's ACLs equal a fresh compile's, \
         and the tables built with the kept cache equal tables built from scratch"
    );
    Ok(())
}

fn main() {
    let mut shape = Shape {
        namespaces: 100,
        pods: 10_000,
        nodes: 300,
        local: 100,
        policies: 1_000,
        seed: 5,
    };
    let mut runs = 5usize;
    let mut samples = 2_000usize;
    let mut only = String::new();
    let mut updates = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage())
        };
        match a.as_str() {
            "--runs" => runs = value().max(1) as usize,
            "--samples" => samples = value() as usize,
            "--pods" => shape.pods = value() as u32,
            "--policies" => shape.policies = value() as u32,
            "--namespaces" => shape.namespaces = value() as u32,
            "--nodes" => shape.nodes = value() as u32,
            "--local" => shape.local = value() as u32,
            "--seed" => shape.seed = value(),
            "--updates" => updates = Some(value().max(1) as usize),
            "--only" => only = args.next().unwrap_or_else(|| usage()),
            _ => usage(),
        }
    }
    let capacity = u64::from(shape.nodes.saturating_sub(1)) * u64::from(PODS_PER_NODE_MAX);
    if shape.namespaces < 3
        || shape.nodes < 2
        || shape.nodes > 1000
        || shape.local >= PODS_PER_NODE_MAX
        || shape.local > shape.pods
        || u64::from(shape.pods - shape.local) > capacity
    {
        eprintln!(
            "policy_scale: need ≥3 namespaces, 2..=1000 nodes, local < 128 and room for the pods"
        );
        std::process::exit(2);
    }
    let updates = updates.unwrap_or(runs);
    if let Err(e) = run(shape, runs, updates, samples, &only) {
        eprintln!("policy_scale: {e}");
        std::process::exit(1);
    }
}
