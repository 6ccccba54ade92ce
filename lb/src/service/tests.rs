//! Tests of the Service compiler: one table test for kube-proxy's endpoint and policy rules,
//! focused tests for frontends, conflicts, backend sets and sizing, and a property test that
//! input order does not matter.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;
use crate::maglev::{BackendIndex, TableSize};

// Addresses: cluster and external IPs in the documentation ranges, endpoints in the
// benchmarking range, IPv6 in 2001:db8::/32.

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test addresses are valid")
}

fn service_name(name: &str) -> ServiceName {
    ServiceName {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn service(name: &str, cluster_ips: &[&str], ports: Vec<ServicePort>) -> Service {
    Service {
        name: service_name(name),
        cluster_ips: cluster_ips.iter().map(|s| ip(s)).collect(),
        external_ips: Vec::new(),
        load_balancer_ips: Vec::new(),
        ports,
        affinity_timeout_secs: None,
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        load_balancer_source_ranges: Vec::new(),
        forwarding: Forwarding::Nat,
    }
}

fn tcp(name: &str, port: u16, endpoints: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol: Protocol::Tcp,
        port,
        node_port: None,
        endpoints,
    }
}

fn ready(addr: &str, local: bool) -> Endpoint {
    Endpoint::ready(ip(addr), 8080, local)
}

/// Terminating, and still serving or not.
fn terminating(addr: &str, local: bool, serving: bool) -> Endpoint {
    Endpoint {
        ready: false,
        serving,
        terminating: true,
        ..ready(addr, local)
    }
}

/// Neither ready nor terminating: starting up, or failing its readiness probe.
fn unready(addr: &str, local: bool) -> Endpoint {
    Endpoint {
        ready: false,
        serving: false,
        ..ready(addr, local)
    }
}

fn compile(services: &[Service]) -> (ServiceTable, Vec<ServiceError>) {
    ServiceTable::compile(services, &CompileOptions::default())
}

fn compile_ok(services: &[Service]) -> ServiceTable {
    let (table, errors) = compile(services);
    assert_eq!(errors, vec![], "unexpected errors");
    table
}

fn frontend(addr: &str, proto: Protocol, port: u16) -> Frontend {
    Frontend {
        addr: ip(addr),
        proto: proto.number(),
        port,
    }
}

fn entry<'a>(table: &'a ServiceTable, addr: &str, port: u16) -> &'a FrontendEntry {
    let key = frontend(addr, Protocol::Tcp, port);
    table
        .frontends
        .get(&key)
        .unwrap_or_else(|| panic!("no frontend {key:?}"))
}

/// What a target should be, written the short way.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// Load-balance over these endpoint addresses (port 8080).
    To(Vec<String>),
    Reject,
    Drop,
}

fn to(addrs: &[&str]) -> Expect {
    let mut names: Vec<String> = addrs.iter().map(|a| format!("{a}:8080")).collect();
    names.sort();
    Expect::To(names)
}

fn seen(target: &Target) -> Expect {
    match target {
        Target::Backends(set) => Expect::To(set.backends.iter().map(BackendAddr::name).collect()),
        Target::Reject => Expect::Reject,
        Target::Drop => Expect::Drop,
    }
}

fn set(target: &Target) -> &Arc<BackendSet> {
    match target {
        Target::Backends(set) => set,
        other => panic!("expected backends, got {other:?}"),
    }
}

// The endpoints of the table test.
const REMOTE: &str = "198.18.0.1";
const LOCAL: &str = "198.18.0.2";
const REMOTE_TERMINATING: &str = "198.18.0.3";
const LOCAL_TERMINATING: &str = "198.18.0.4";
const LOCAL_NOT_SERVING: &str = "198.18.0.5";
const REMOTE_UNREADY: &str = "198.18.0.6";

#[test]
fn endpoint_selection_and_traffic_policies_follow_kube_proxy() {
    use TrafficPolicy::{Cluster, Local};
    let remote = || ready(REMOTE, false);
    let local = || ready(LOCAL, true);
    let remote_terminating = || terminating(REMOTE_TERMINATING, false, true);
    let local_terminating = || terminating(LOCAL_TERMINATING, true, true);
    let local_not_serving = || terminating(LOCAL_NOT_SERVING, true, false);
    let remote_unready = || unready(REMOTE_UNREADY, false);

    struct Case {
        what: &'static str,
        endpoints: Vec<Endpoint>,
        itp: TrafficPolicy,
        etp: TrafficPolicy,
        /// Cluster IP, any sender.
        cluster_ip: Expect,
        /// LB IP and NodePort, from inside the cluster.
        inside: Expect,
        /// LB IP and NodePort, from outside.
        outside: Expect,
    }
    let cases = vec![
        Case {
            what: "ready endpoints, anywhere",
            endpoints: vec![remote(), local(), remote_unready()],
            itp: Cluster,
            etp: Cluster,
            cluster_ip: to(&[REMOTE, LOCAL]),
            inside: to(&[REMOTE, LOCAL]),
            outside: to(&[REMOTE, LOCAL]),
        },
        Case {
            what: "ready endpoints win over terminating ones",
            endpoints: vec![remote(), remote_terminating(), local_terminating()],
            itp: Cluster,
            etp: Cluster,
            cluster_ip: to(&[REMOTE]),
            inside: to(&[REMOTE]),
            outside: to(&[REMOTE]),
        },
        Case {
            what: "none ready: fall back to serving terminating ones",
            endpoints: vec![
                remote_terminating(),
                local_terminating(),
                local_not_serving(),
                remote_unready(),
            ],
            itp: Cluster,
            etp: Cluster,
            cluster_ip: to(&[REMOTE_TERMINATING, LOCAL_TERMINATING]),
            inside: to(&[REMOTE_TERMINATING, LOCAL_TERMINATING]),
            outside: to(&[REMOTE_TERMINATING, LOCAL_TERMINATING]),
        },
        Case {
            what: "no endpoints: reject everything",
            endpoints: vec![],
            itp: Local,
            etp: Local,
            cluster_ip: Expect::Reject,
            inside: Expect::Reject,
            outside: Expect::Reject,
        },
        Case {
            what: "no usable endpoints: reject everything",
            endpoints: vec![local_not_serving(), remote_unready()],
            itp: Cluster,
            etp: Cluster,
            cluster_ip: Expect::Reject,
            inside: Expect::Reject,
            outside: Expect::Reject,
        },
        Case {
            what: "internalTrafficPolicy Local: local endpoints for the cluster IP",
            endpoints: vec![remote(), local()],
            itp: Local,
            etp: Cluster,
            cluster_ip: to(&[LOCAL]),
            inside: to(&[REMOTE, LOCAL]),
            outside: to(&[REMOTE, LOCAL]),
        },
        Case {
            what: "internalTrafficPolicy Local, none here: drop at the cluster IP only",
            endpoints: vec![remote()],
            itp: Local,
            etp: Cluster,
            cluster_ip: Expect::Drop,
            inside: to(&[REMOTE]),
            outside: to(&[REMOTE]),
        },
        Case {
            what: "local fallback is on its own: a local terminating pod beats remote ready ones",
            endpoints: vec![remote(), local_terminating()],
            itp: Local,
            etp: Local,
            cluster_ip: to(&[LOCAL_TERMINATING]),
            inside: to(&[REMOTE]),
            outside: to(&[LOCAL_TERMINATING]),
        },
        Case {
            what: "externalTrafficPolicy Local: local endpoints from outside, all from inside",
            endpoints: vec![remote(), local()],
            itp: Cluster,
            etp: Local,
            cluster_ip: to(&[REMOTE, LOCAL]),
            inside: to(&[REMOTE, LOCAL]),
            outside: to(&[LOCAL]),
        },
        Case {
            what:
                "externalTrafficPolicy Local, none here: drop outside traffic, short-circuit inside",
            endpoints: vec![remote()],
            itp: Cluster,
            etp: Local,
            cluster_ip: to(&[REMOTE]),
            inside: to(&[REMOTE]),
            outside: Expect::Drop,
        },
        Case {
            what: "both Local, none here",
            endpoints: vec![remote(), remote_terminating()],
            itp: Local,
            etp: Local,
            cluster_ip: Expect::Drop,
            inside: to(&[REMOTE]),
            outside: Expect::Drop,
        },
    ];
    for case in cases {
        let mut port = tcp("http", 80, case.endpoints);
        port.node_port = Some(30080);
        let mut svc = service("web", &["198.51.100.10"], vec![port]);
        svc.load_balancer_ips = vec![ip("203.0.113.10")];
        svc.internal_traffic_policy = case.itp;
        svc.external_traffic_policy = case.etp;
        let table = compile_ok(&[svc]);
        assert_eq!(table.frontends.len(), 3, "{}", case.what);

        let cluster_ip = entry(&table, "198.51.100.10", 80);
        assert_eq!(cluster_ip.kind, FrontendKind::ClusterIp);
        assert_eq!(seen(&cluster_ip.internal), case.cluster_ip, "{}", case.what);
        assert_eq!(seen(&cluster_ip.external), case.cluster_ip, "{}", case.what);
        assert!(cluster_ip.masquerade_external, "{}", case.what);
        assert!(!cluster_ip.masquerade_internal, "{}", case.what);

        let masquerade = case.etp == Cluster;
        for (addr, port, kind) in [
            ("203.0.113.10", 80, FrontendKind::LoadBalancer),
            ("0.0.0.0", 30080, FrontendKind::NodePort),
        ] {
            let outside = entry(&table, addr, port);
            assert_eq!(outside.kind, kind);
            assert_eq!(
                seen(&outside.internal),
                case.inside,
                "{}: {addr}",
                case.what
            );
            assert_eq!(
                seen(&outside.external),
                case.outside,
                "{}: {addr}",
                case.what
            );
            assert_eq!(outside.masquerade_external, masquerade, "{}", case.what);
            assert_eq!(outside.masquerade_internal, masquerade, "{}", case.what);
        }
    }
}

#[test]
fn external_ips_follow_the_external_policy() {
    let mut svc = service(
        "web",
        &["198.51.100.10"],
        vec![tcp(
            "http",
            80,
            vec![ready(REMOTE, false), ready(LOCAL, true)],
        )],
    );
    svc.external_ips = vec![ip("203.0.113.20")];
    svc.external_traffic_policy = TrafficPolicy::Local;
    let table = compile_ok(&[svc]);
    let external = entry(&table, "203.0.113.20", 80);
    assert_eq!(external.kind, FrontendKind::ExternalIp);
    assert_eq!(seen(&external.internal), to(&[REMOTE, LOCAL]));
    assert_eq!(seen(&external.external), to(&[LOCAL]));
    assert!(!external.masquerade_external);
}

#[test]
fn node_ports_are_keyed_by_the_unspecified_address_or_by_each_listed_address() {
    let mut port = tcp("http", 80, vec![ready(REMOTE, false)]);
    port.node_port = Some(30080);
    let svc = service("web", &["198.51.100.10"], vec![port]);

    let table = compile_ok(std::slice::from_ref(&svc));
    let node_ports: Vec<Frontend> = table
        .frontends
        .iter()
        .filter(|(_, e)| e.kind == FrontendKind::NodePort)
        .map(|(f, _)| *f)
        .collect();
    assert_eq!(node_ports, vec![frontend("0.0.0.0", Protocol::Tcp, 30080)]);

    // Listed addresses: one frontend per address of the Service's family; the IPv6 address is
    // left out, as this Service has no IPv6 cluster IP.
    let options = CompileOptions {
        node_port_addresses: vec![ip("198.51.100.1"), ip("2001:db8::1"), ip("198.51.100.2")],
        table_size: None,
    };
    let (table, errors) = ServiceTable::compile(&[svc], &options);
    assert_eq!(errors, vec![]);
    let mut node_ports: Vec<Frontend> = table
        .frontends
        .iter()
        .filter(|(_, e)| e.kind == FrontendKind::NodePort)
        .map(|(f, _)| *f)
        .collect();
    node_ports.sort();
    assert_eq!(
        node_ports,
        vec![
            frontend("198.51.100.1", Protocol::Tcp, 30080),
            frontend("198.51.100.2", Protocol::Tcp, 30080),
        ]
    );
}

#[test]
fn dual_stack_services_balance_each_family_over_its_own_endpoints() {
    let mut port = tcp(
        "http",
        80,
        vec![
            ready("198.18.0.1", false),
            ready("2001:db8:1::1", false),
            ready("2001:db8:1::2", true),
        ],
    );
    port.node_port = Some(30080);
    let mut svc = service("web", &["198.51.100.10", "2001:db8::10"], vec![port]);
    svc.load_balancer_ips = vec![ip("203.0.113.10"), ip("2001:db8::20")];
    let table = compile_ok(&[svc]);
    assert_eq!(table.frontends.len(), 6);

    let v4 = entry(&table, "198.51.100.10", 80);
    assert_eq!(seen(&v4.internal), to(&["198.18.0.1"]));
    let v6 = entry(&table, "2001:db8::10", 80);
    let names = ["[2001:db8:1::1]:8080", "[2001:db8:1::2]:8080"].map(String::from);
    assert_eq!(seen(&v6.internal), Expect::To(names.to_vec()));
    assert_eq!(
        seen(&entry(&table, "2001:db8::20", 80).external),
        seen(&v6.internal)
    );
    assert_eq!(
        seen(&entry(&table, "::", 30080).external),
        seen(&v6.internal)
    );
    assert_eq!(
        seen(&entry(&table, "0.0.0.0", 30080).external),
        seen(&v4.internal)
    );
}

#[test]
fn a_family_without_endpoints_rejects_while_the_other_serves() {
    let svc = service(
        "web",
        &["198.51.100.10", "2001:db8::10"],
        vec![tcp("http", 80, vec![ready("198.18.0.1", false)])],
    );
    let table = compile_ok(&[svc]);
    assert_eq!(
        seen(&entry(&table, "198.51.100.10", 80).internal),
        to(&["198.18.0.1"])
    );
    assert_eq!(
        seen(&entry(&table, "2001:db8::10", 80).internal),
        Expect::Reject
    );
}

#[test]
fn addresses_of_a_family_without_cluster_ip_are_reported_and_skipped() {
    let mut svc = service("web", &["198.51.100.10"], vec![tcp("http", 80, vec![])]);
    svc.external_ips = vec![ip("2001:db8::30")];
    let (table, errors) = compile(&[svc]);
    assert_eq!(table.frontends.len(), 1);
    assert_eq!(
        errors,
        vec![ServiceError::FamilyMismatch {
            service: service_name("web"),
            addr: ip("2001:db8::30"),
        }]
    );
}

#[test]
fn every_port_gets_its_own_frontends_and_endpoints() {
    let mut https = tcp(
        "https",
        443,
        vec![Endpoint::ready(ip("198.18.0.2"), 8443, false)],
    );
    https.node_port = Some(30443);
    let svc = service(
        "web",
        &["198.51.100.10"],
        vec![tcp("http", 80, vec![ready("198.18.0.1", false)]), https],
    );
    let table = compile_ok(&[svc]);
    assert_eq!(table.frontends.len(), 3);
    let http = entry(&table, "198.51.100.10", 80);
    assert_eq!(&*http.port_name, "http");
    assert_eq!(seen(&http.internal), to(&["198.18.0.1"]));
    let https = entry(&table, "198.51.100.10", 443);
    assert_eq!(&*https.port_name, "https");
    assert_eq!(
        seen(&https.internal),
        Expect::To(vec!["198.18.0.2:8443".into()])
    );
    assert_eq!(&*entry(&table, "0.0.0.0", 30443).port_name, "https");
}

#[test]
fn protocols_are_part_of_the_frontend() {
    let port = |protocol| ServicePort {
        protocol,
        ..tcp(
            &format!("{protocol:?}").to_lowercase(),
            5000,
            vec![ready(REMOTE, false)],
        )
    };
    let svc = service(
        "signalling",
        &["198.51.100.10"],
        vec![
            port(Protocol::Tcp),
            port(Protocol::Udp),
            port(Protocol::Sctp),
        ],
    );
    let table = compile_ok(&[svc]);
    assert_eq!(table.frontends.len(), 3);
    let sctp = table
        .frontends
        .get(&frontend("198.51.100.10", Protocol::Sctp, 5000))
        .expect("the SCTP port has a frontend");
    assert_eq!(&*sctp.port_name, "sctp");
    assert_eq!(sctp.kind, FrontendKind::ClusterIp);
}

#[test]
fn overlaps_go_to_the_first_service_by_name_whatever_the_input_order() {
    let a = service(
        "a",
        &["198.51.100.10"],
        vec![tcp("http", 80, vec![ready(REMOTE, false)])],
    );
    let b = service(
        "b",
        &["198.51.100.10"],
        vec![tcp("http", 80, vec![ready(LOCAL, true)])],
    );
    for services in [[a.clone(), b.clone()], [b.clone(), a.clone()]] {
        let (table, errors) = compile(&services);
        assert_eq!(
            *entry(&table, "198.51.100.10", 80).service,
            service_name("a")
        );
        assert_eq!(
            errors,
            vec![ServiceError::Overlap {
                service: service_name("b"),
                frontend: frontend("198.51.100.10", Protocol::Tcp, 80),
                owner: service_name("a"),
            }]
        );
    }
}

#[test]
fn overlaps_within_one_service_keep_the_first_port() {
    let mut svc = service(
        "web",
        &["198.51.100.10"],
        vec![
            tcp("first", 80, vec![ready(REMOTE, false)]),
            tcp("second", 80, vec![ready(LOCAL, true)]),
        ],
    );
    // One address listed twice is not a conflict.
    svc.external_ips = vec![ip("203.0.113.20"), ip("203.0.113.20")];
    let (table, errors) = compile(&[svc]);
    assert_eq!(&*entry(&table, "198.51.100.10", 80).port_name, "first");
    assert_eq!(&*entry(&table, "203.0.113.20", 80).port_name, "first");
    let overlap = |addr| ServiceError::Overlap {
        service: service_name("web"),
        frontend: frontend(addr, Protocol::Tcp, 80),
        owner: service_name("web"),
    };
    assert_eq!(
        errors,
        vec![overlap("198.51.100.10"), overlap("203.0.113.20")]
    );
}

#[test]
fn a_zero_port_is_skipped_and_the_rest_compiled() {
    let mut zero_node_port = tcp("metrics", 9090, vec![ready(REMOTE, false)]);
    zero_node_port.node_port = Some(0);
    let svc = service(
        "web",
        &["198.51.100.10"],
        vec![
            tcp("broken", 0, vec![ready(REMOTE, false)]),
            tcp("http", 80, vec![ready(REMOTE, false)]),
            zero_node_port,
        ],
    );
    let (table, errors) = compile(&[svc]);
    assert_eq!(
        errors,
        vec![
            ServiceError::ZeroPort {
                service: service_name("web"),
                port_name: "broken".into(),
            },
            ServiceError::ZeroNodePort {
                service: service_name("web"),
                port_name: "metrics".into(),
            },
        ]
    );
    let mut frontends: Vec<Frontend> = table.frontends.keys().copied().collect();
    frontends.sort();
    assert_eq!(
        frontends,
        vec![
            frontend("198.51.100.10", Protocol::Tcp, 80),
            frontend("198.51.100.10", Protocol::Tcp, 9090),
        ]
    );
}

#[test]
fn services_given_twice_compile_once_if_identical_and_not_at_all_if_not() {
    let a = service(
        "a",
        &["198.51.100.10"],
        vec![tcp("http", 80, vec![ready(REMOTE, false)])],
    );
    let table = compile_ok(&[a.clone(), a.clone()]);
    assert_eq!(table.frontends.len(), 1);

    let mut changed = a.clone();
    changed.cluster_ips = vec![ip("198.51.100.11")];
    let (table, errors) = compile(&[a, changed]);
    assert!(table.frontends.is_empty());
    assert_eq!(
        errors,
        vec![ServiceError::DuplicateService {
            service: service_name("a")
        }]
    );
}

#[test]
fn duplicate_and_wrong_family_endpoints_are_merged_and_ignored() {
    // The same endpoint from two slices, local in one of them: one backend, and local.
    let svc = Service {
        internal_traffic_policy: TrafficPolicy::Local,
        ..service(
            "web",
            &["198.51.100.10"],
            vec![tcp(
                "http",
                80,
                vec![
                    ready("198.18.0.1", false),
                    ready("198.18.0.1", true),
                    ready("2001:db8:1::1", true),
                ],
            )],
        )
    };
    let table = compile_ok(&[svc]);
    assert_eq!(
        seen(&entry(&table, "198.51.100.10", 80).internal),
        to(&["198.18.0.1"])
    );
}

#[test]
fn affinity_and_forwarding_are_carried_to_every_frontend() {
    let mut port = tcp("http", 80, vec![ready(REMOTE, false)]);
    port.node_port = Some(30080);
    let svc = Service {
        affinity_timeout_secs: Some(10_800),
        forwarding: Forwarding::DsrIpip,
        ..service("web", &["198.51.100.10"], vec![port])
    };
    let table = compile_ok(&[svc]);
    assert_eq!(table.frontends.len(), 2);
    for entry in table.frontends.values() {
        assert_eq!(entry.affinity_timeout_secs, Some(10_800));
        assert_eq!(entry.forwarding, Forwarding::DsrIpip);
    }
}

#[test]
fn identical_backend_lists_share_one_set() {
    let endpoints = || vec![ready(REMOTE, true), ready(LOCAL, true)];
    let mut port = tcp("http", 80, endpoints());
    port.node_port = Some(30080);
    let mut a = service("a", &["198.51.100.10"], vec![port]);
    a.load_balancer_ips = vec![ip("203.0.113.10")];
    // Every endpoint is local, so the local set is the cluster set.
    a.external_traffic_policy = TrafficPolicy::Local;
    let b = service("b", &["198.51.100.11"], vec![tcp("http", 80, endpoints())]);
    let table = compile_ok(&[a, b]);

    let shared = set(&entry(&table, "198.51.100.10", 80).internal);
    for entry in table.frontends.values() {
        assert!(Arc::ptr_eq(set(&entry.internal), shared), "{entry:?}");
        assert!(Arc::ptr_eq(set(&entry.external), shared), "{entry:?}");
    }
    // One set, counted once.
    let bytes = table.approx_heap_bytes();
    assert!(bytes < 2 * shared.approx_heap_bytes() + 4096, "{bytes}");
}

#[test]
fn backend_order_is_the_maglev_tables_order() {
    // Address order and name order differ ("198.18.0.10" < "198.18.0.9" as text), and IPv6
    // names start with a bracket.
    let backends = [
        ("198.18.0.9", 80),
        ("198.18.0.10", 80),
        ("198.18.0.10", 8080),
        ("2001:db8:1::1", 443),
        ("198.18.1.1", 80),
    ]
    .map(|(addr, port)| BackendAddr {
        addr: ip(addr),
        port,
    });
    let set = BackendSet::new(backends, auto_table_size(backends.len()))
        .expect("distinct backends fit the table");
    assert_eq!(set.backends.len(), backends.len());
    for (ours, maglevs) in set.backends.iter().zip(set.maglev.backends()) {
        assert_eq!(ours.name(), maglevs.name);
    }
    assert_eq!(set.backends[0].name(), "198.18.0.10:80");
    assert_eq!(set.backends[4].name(), "[2001:db8:1::1]:443");
    for hash in (0..10_000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
        let picked = set.pick(hash).expect("the set is not empty");
        let named = set
            .maglev
            .lookup_backend(hash)
            .expect("the table is not empty");
        assert_eq!(picked.name(), named.name);
    }
}

#[test]
fn a_backend_given_twice_is_an_error_not_a_panic() {
    let backend = BackendAddr {
        addr: ip("198.18.0.1"),
        port: 80,
    };
    assert!(matches!(
        BackendSet::new([backend, backend], TableSize::DEFAULT),
        Err(MaglevError::DuplicateBackend(_))
    ));
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..n)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[test]
fn auto_table_sizes_are_the_largest_primes_below_powers_of_two() {
    for (i, &size) in AUTO_TABLE_SIZES.iter().enumerate() {
        let power = 1u32 << (8 + i);
        assert!(is_prime(size), "{size} is not prime");
        assert!(size < power);
        assert!(
            ((size + 1)..power).all(|n| !is_prime(n)),
            "a prime above {size}"
        );
        assert_eq!(TableSize::new(size).map(TableSize::get), Ok(size));
    }
}

#[test]
fn auto_table_size_gives_a_hundred_slots_per_backend() {
    let sizes = [
        (0, 251),
        (1, 251),
        (2, 251),
        (3, 509),
        (10, 1021),
        (11, 2039),
        (655, 65_521),
        (656, 65_537),
        (100_000, 65_537),
    ];
    for (backends, size) in sizes {
        assert_eq!(auto_table_size(backends).get(), size, "{backends} backends");
    }
}

fn ten_endpoints(service: u32) -> Vec<Endpoint> {
    (0..10u32)
        .map(|i| {
            let n = service * 10 + i;
            let addr = Ipv4Addr::new(198, 18 + (n >> 16) as u8, (n >> 8) as u8, n as u8);
            Endpoint::ready(IpAddr::V4(addr), 8080, false)
        })
        .collect()
}

#[test]
fn table_sizes_are_automatic_unless_fixed() {
    let svc = service(
        "web",
        &["198.51.100.10"],
        vec![tcp("http", 80, ten_endpoints(0))],
    );
    let table = compile_ok(std::slice::from_ref(&svc));
    let size = |table: &ServiceTable| {
        set(&entry(table, "198.51.100.10", 80).internal)
            .maglev
            .size()
    };
    assert_eq!(size(&table).get(), 1021);

    let fixed = |table_size| CompileOptions {
        table_size: Some(table_size),
        ..CompileOptions::default()
    };
    let (table, errors) = ServiceTable::compile(std::slice::from_ref(&svc), &fixed(4093));
    assert_eq!(errors, vec![]);
    assert_eq!(size(&table).get(), 4093);

    // A bad size is reported once and tables are sized automatically.
    let (table, errors) = ServiceTable::compile(std::slice::from_ref(&svc), &fixed(1000));
    assert_eq!(
        errors,
        vec![ServiceError::TableSize(MaglevError::NotPrime(1000))]
    );
    assert_eq!(size(&table).get(), 1021);

    // More backends than a fixed size has slots: that port is skipped and reported.
    let (table, errors) = ServiceTable::compile(&[svc], &fixed(7));
    assert!(table.frontends.is_empty());
    assert_eq!(
        errors,
        vec![ServiceError::Backends {
            service: service_name("web"),
            port_name: "http".into(),
            error: MaglevError::TooManyBackends {
                backends: 10,
                size: 7
            },
        }]
    );
}

#[test]
fn thirty_thousand_services_of_ten_endpoints_fit_in_a_few_hundred_megabytes() {
    // Compile a thirtieth of the benchmark's table and scale: the cost is linear in Services,
    // each having its own endpoints, and a debug-build test should stay quick.
    const SAMPLE: u32 = 1_000;
    const SERVICES: usize = 30_000;
    let services: Vec<Service> = (0..SAMPLE)
        .map(|i| {
            let cluster_ip = Ipv4Addr::new(198, 51, 100, 0).to_bits() + (i << 8);
            let mut port = tcp("http", 80, ten_endpoints(i));
            port.node_port = Some(30_000 + i as u16);
            Service {
                cluster_ips: vec![IpAddr::V4(Ipv4Addr::from_bits(cluster_ip))],
                ..service(&format!("svc-{i}"), &[], vec![port])
            }
        })
        .collect();
    let table = compile_ok(&services);
    assert_eq!(table.frontends.len(), 2 * SAMPLE as usize);

    let per_service = table.approx_heap_bytes() / SAMPLE as usize;
    let total = per_service * SERVICES;
    // Per Service: a 1021-slot table (4 KiB), ten named backends, two frontend entries.
    assert!(per_service < 8 * 1024, "{per_service} bytes per Service");
    assert!(total < 256 << 20, "{total} bytes for {SERVICES} Services");
    // What the default table size would have cost for the tables alone.
    let default_tables = SERVICES * TableSize::DEFAULT.get() as usize * size_of::<BackendIndex>();
    assert!(default_tables > 7_000 << 20);
    println!(
        "{SERVICES} services x 10 endpoints: ~{} MiB ({per_service} B each); \
         ~{} MiB of tables at the default size",
        total >> 20,
        default_tables >> 20
    );
}

#[test]
fn health_check_ports_count_local_ready_pods() {
    let pod = |addr: &str, port| Endpoint::ready(ip(addr), port, true);
    let mut svc = service(
        "web",
        &["198.51.100.10", "2001:db8::10"],
        vec![
            tcp(
                "http",
                80,
                vec![
                    pod("198.18.0.1", 8080),
                    pod("2001:db8:1::1", 8080),
                    pod("198.18.0.2", 8080),
                    ready("198.18.0.3", false),
                    terminating("198.18.0.4", true, true),
                ],
            ),
            // The same pods on another port count once.
            tcp(
                "https",
                443,
                vec![pod("198.18.0.1", 8443), pod("198.18.0.2", 8443)],
            ),
        ],
    );
    svc.load_balancer_ips = vec![ip("203.0.113.10")];
    svc.external_traffic_policy = TrafficPolicy::Local;
    svc.health_check_node_port = Some(32000);
    let mut other = svc.clone();
    other.name = service_name("other");
    other.cluster_ips = vec![ip("198.51.100.11")];
    other.load_balancer_ips = vec![ip("203.0.113.11")];
    let mut cluster_policy = other.clone();
    cluster_policy.name = service_name("cluster-policy");
    cluster_policy.cluster_ips = vec![ip("198.51.100.12")];
    cluster_policy.load_balancer_ips = vec![ip("203.0.113.12")];
    cluster_policy.external_traffic_policy = TrafficPolicy::Cluster;
    cluster_policy.health_check_node_port = Some(32001);

    let (table, errors) = compile(&[svc, other, cluster_policy]);
    assert_eq!(table.health_checks.len(), 1);
    let (name, count) = &table.health_checks[&32000];
    assert_eq!(**name, service_name("other"));
    assert_eq!(*count, 2);
    assert_eq!(
        errors,
        vec![ServiceError::HealthCheckOverlap {
            service: service_name("web"),
            port: 32000,
            owner: service_name("other"),
        }]
    );
}

// Determinism: random Services over small pools of names, addresses and ports (so that they
// collide often), compiled in two orders.

fn pick<T: Clone + std::fmt::Debug + 'static>(values: &[T]) -> impl Strategy<Value = T> {
    prop::sample::select(values.to_vec())
}

fn endpoint_strategy() -> impl Strategy<Value = Endpoint> {
    let addr = prop_oneof![
        (1u8..6).prop_map(|i| IpAddr::V4(Ipv4Addr::new(198, 18, 0, i))),
        (1u16..4).prop_map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, i))),
    ];
    let hint = || pick(&[None, Some(false), Some(true)]);
    (
        addr,
        pick(&[8080u16, 8081]),
        any::<[bool; 4]>(),
        (hint(), hint()),
    )
        .prop_map(
            |(addr, port, [is_local, ready, serving, terminating], (zone, node))| Endpoint {
                addr,
                port,
                is_local,
                ready,
                serving,
                terminating,
                hints: TopologyHints { zone, node },
            },
        )
}

fn port_strategy() -> impl Strategy<Value = ServicePort> {
    (
        pick(&["", "http", "dns"]),
        pick(&[Protocol::Tcp, Protocol::Udp, Protocol::Sctp]),
        pick(&[0u16, 53, 80]),
        pick(&[None, Some(0u16), Some(30_000), Some(30_001)]),
        prop::collection::vec(endpoint_strategy(), 0..6),
    )
        .prop_map(|(name, protocol, port, node_port, endpoints)| ServicePort {
            name: name.into(),
            protocol,
            port,
            node_port,
            endpoints,
        })
}

fn addrs_strategy(pool: &[&str], max: usize) -> impl Strategy<Value = Vec<IpAddr>> {
    let pool: Vec<IpAddr> = pool.iter().map(|s| ip(s)).collect();
    prop::collection::vec(pick(&pool), 0..=max)
}

fn service_strategy() -> impl Strategy<Value = Service> {
    let policy = || pick(&[TrafficPolicy::Cluster, TrafficPolicy::Local]);
    (
        pick(&["a", "b", "c", "d", "e"]),
        addrs_strategy(&["198.51.100.1", "198.51.100.2", "2001:db8::1"], 2),
        addrs_strategy(&["203.0.113.1", "198.51.100.2", "2001:db8::2"], 2),
        addrs_strategy(&["203.0.113.9", "2001:db8::9"], 1),
        prop::collection::vec(port_strategy(), 0..3),
        (policy(), policy()),
        pick(&[None, Some(32_000u16)]),
    )
        .prop_map(
            |(name, cluster_ips, external_ips, load_balancer_ips, ports, policies, hc)| Service {
                cluster_ips,
                external_ips,
                load_balancer_ips,
                external_traffic_policy: policies.0,
                internal_traffic_policy: policies.1,
                health_check_node_port: hc,
                load_balancer_source_ranges: Vec::new(),
                ..service(name, &[], ports)
            },
        )
}

proptest! {
    #[test]
    fn compiling_does_not_depend_on_input_order(
        (services, shuffled) in prop::collection::vec(service_strategy(), 0..6)
            .prop_flat_map(|services| (Just(services.clone()), Just(services).prop_shuffle())),
        listed in any::<bool>(),
    ) {
        let options = CompileOptions {
            node_port_addresses: if listed {
                vec![ip("198.51.100.100"), ip("2001:db8::100")]
            } else {
                Vec::new()
            },
            table_size: None,
        };
        let (table, errors) = ServiceTable::compile(&services, &options);
        let (again, errors_again) = ServiceTable::compile(&shuffled, &options);
        prop_assert_eq!(&table, &again);
        prop_assert_eq!(&errors, &errors_again);

        // Whatever the input, every set a frontend points at can pick a backend, of the
        // frontend's own family.
        for (frontend, entry) in &table.frontends {
            for target in [&entry.internal, &entry.external] {
                if let Target::Backends(set) = target {
                    let picked = set.pick(0x5eed);
                    prop_assert!(picked.is_some());
                    prop_assert!(set.backends.iter().all(|b| b.addr.is_ipv6() == frontend.addr.is_ipv6()));
                }
            }
        }
    }
}

// Incremental compiling: any sequence of upserts and removals leaves the table a full compile
// of the Services left gives, and the same problems. The reference below is the plain
// algorithm: Services in name order, the first claim on a frontend stands.

fn reference_compile(
    services: &BTreeMap<ServiceName, Service>,
    options: &CompileOptions,
) -> (ServiceTable, Vec<String>) {
    let mut sets = super::backends::BackendSets::new(None);
    let mut table = ServiceTable::default();
    let mut errors = Vec::new();
    for service in services.values() {
        let mut compiler = super::compile::Compiler {
            options,
            sets: &mut sets,
            entries: Vec::new(),
            health_check: None,
            errors: Vec::new(),
        };
        compiler.service(service);
        errors.extend(compiler.errors.iter().map(ToString::to_string));
        if let Some((port, count)) = compiler.health_check {
            match table.health_checks.get(&port) {
                Some((owner, _)) => errors.push(
                    ServiceError::HealthCheckOverlap {
                        service: service.name.clone(),
                        port,
                        owner: (**owner).clone(),
                    }
                    .to_string(),
                ),
                None => {
                    table
                        .health_checks
                        .insert(port, (Arc::new(service.name.clone()), count));
                }
            }
        }
        for (frontend, entry) in compiler.entries {
            match table.frontends.get(&frontend) {
                Some(owner) => errors.push(
                    ServiceError::Overlap {
                        service: service.name.clone(),
                        frontend,
                        owner: (*owner.service).clone(),
                    }
                    .to_string(),
                ),
                None => {
                    table.frontends.insert(frontend, entry);
                }
            }
        }
    }
    // Every cluster IP of a Service with a port, claimed at once.
    let cluster_ips: BTreeSet<IpAddr> = services
        .values()
        .filter(|s| !s.ports.is_empty())
        .flat_map(|s| s.cluster_ips.iter().copied())
        .collect();
    let cluster_ips: Vec<IpAddr> = cluster_ips.into_iter().collect();
    super::cluster_ips::ClusterIpClaims::default().claim(&cluster_ips, &mut table.cluster_ips);
    errors.sort();
    (table, errors)
}

#[derive(Clone, Debug)]
enum Op {
    Upsert(Service),
    Remove(&'static str),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => service_strategy().prop_map(Op::Upsert),
        1 => pick(&["a", "b", "c", "d", "e"]).prop_map(Op::Remove),
    ]
}

proptest! {
    #[test]
    fn incremental_compiling_matches_a_full_compile(
        ops in prop::collection::vec(op_strategy(), 1..24),
        listed in any::<bool>(),
    ) {
        let options = CompileOptions {
            node_port_addresses: if listed { vec![ip("198.51.100.100")] } else { Vec::new() },
            table_size: None,
        };
        let mut compiler = ServiceCompiler::new(options.clone());
        let mut held: BTreeMap<ServiceName, Service> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Upsert(service) => {
                    let changed = held.get(&service.name) != Some(&service);
                    held.insert(service.name.clone(), service.clone());
                    prop_assert_eq!(compiler.upsert(Arc::new(service)), changed);
                }
                Op::Remove(name) => {
                    let name = service_name(name);
                    prop_assert_eq!(compiler.remove(&name), held.remove(&name).is_some());
                }
            }
            let (table, errors) = reference_compile(&held, &options);
            prop_assert_eq!(compiler.table(), &table);
            let mut got: Vec<String> = compiler.errors().iter().map(ToString::to_string).collect();
            got.sort();
            prop_assert_eq!(got, errors);
            prop_assert_eq!(compiler.len(), held.len());
        }
    }
}

// Topology hints (kube-proxy's topologyModeFromHints): the ready cluster endpoints narrow
// to those hinted for this node or its zone only when every ready endpoint has hints.

fn hinted(addr: &str, local: bool, zone: Option<bool>, node: Option<bool>) -> Endpoint {
    Endpoint {
        hints: TopologyHints { zone, node },
        ..ready(addr, local)
    }
}

fn cluster_targets(endpoints: Vec<Endpoint>) -> (Expect, Expect) {
    let service = Service {
        internal_traffic_policy: TrafficPolicy::Cluster,
        ..service("web", &["198.51.100.10"], vec![tcp("http", 80, endpoints)])
    };
    let local = Service {
        name: service_name("local"),
        cluster_ips: vec![ip("198.51.100.11")],
        internal_traffic_policy: TrafficPolicy::Local,
        ..service.clone()
    };
    let table = compile_ok(&[service, local]);
    (
        seen(&entry(&table, "198.51.100.10", 80).internal),
        seen(&entry(&table, "198.51.100.11", 80).internal),
    )
}

#[test]
fn topology_hints_follow_kube_proxy() {
    let (a, b, c) = ("198.18.0.1", "198.18.0.2", "198.18.0.3");
    // Every ready endpoint has zone hints and some are for our zone: only those.
    let (cluster, local) = cluster_targets(vec![
        hinted(a, false, Some(true), None),
        hinted(b, true, Some(false), None),
        hinted(c, false, Some(true), None),
    ]);
    assert_eq!(cluster, to(&[a, c]));
    // Local traffic policy is not narrowed by hints.
    assert_eq!(local, to(&[b]));

    // One ready endpoint without hints: hints are ignored.
    let (cluster, _) = cluster_targets(vec![
        hinted(a, false, Some(true), None),
        hinted(b, false, None, None),
    ]);
    assert_eq!(cluster, to(&[a, b]));
    // An unready endpoint without hints does not count.
    let (cluster, _) = cluster_targets(vec![
        hinted(a, false, Some(true), None),
        Endpoint {
            ready: false,
            serving: false,
            ..hinted(b, false, None, None)
        },
        hinted(c, false, Some(false), None),
    ]);
    assert_eq!(cluster, to(&[a]));
    // Hints that name only other zones: ignored.
    let (cluster, _) = cluster_targets(vec![
        hinted(a, false, Some(false), None),
        hinted(b, false, Some(false), None),
    ]);
    assert_eq!(cluster, to(&[a, b]));
    // Node hints come first (PreferSameNode), then zone hints.
    let (cluster, _) = cluster_targets(vec![
        hinted(a, false, Some(true), Some(false)),
        hinted(b, true, Some(false), Some(true)),
    ]);
    assert_eq!(cluster, to(&[b]));
    let (cluster, _) = cluster_targets(vec![
        hinted(a, false, Some(true), Some(false)),
        hinted(b, true, Some(false), Some(false)),
    ]);
    assert_eq!(cluster, to(&[a]));
    // No ready endpoint: the serving-terminating fallback ignores hints.
    let (cluster, _) = cluster_targets(vec![
        Endpoint {
            hints: TopologyHints {
                zone: Some(false),
                node: None,
            },
            ..terminating(a, false, true)
        },
        Endpoint {
            hints: TopologyHints {
                zone: Some(true),
                node: None,
            },
            ..terminating(b, false, true)
        },
    ]);
    assert_eq!(cluster, to(&[a, b]));
}

#[test]
fn source_ranges_guard_load_balancer_ips_of_their_own_family() {
    let lb = Service {
        load_balancer_ips: vec![ip("203.0.113.80"), ip("2001:db8::80")],
        external_ips: vec![ip("203.0.113.81")],
        cluster_ips: vec![ip("198.51.100.10"), ip("2001:db8::10")],
        load_balancer_source_ranges: vec!["198.18.0.0/15".parse().unwrap()],
        ..service("lb", &[], vec![tcp("http", 80, vec![ready(REMOTE, false)])])
    };
    let table = compile_ok(&[lb]);
    let ranges = |addr: &str| {
        table.frontends[&frontend(addr, Protocol::Tcp, 80)]
            .source_ranges
            .as_deref()
            .map(<[ipnet::IpNet]>::to_vec)
    };
    assert_eq!(
        ranges("203.0.113.80"),
        Some(vec!["198.18.0.0/15".parse().unwrap()])
    );
    // No IPv6 range: the IPv6 LB IP is open to all, as kube-proxy's IPv6 proxier sees none.
    assert_eq!(ranges("2001:db8::80"), None);
    assert_eq!(ranges("203.0.113.81"), None);
    assert_eq!(ranges("198.51.100.10"), None);
}

// The cluster IPs (kube-proxy's `cluster-ips` set): every cluster IP of a Service with a
// port, endpoints or not, in both families.

#[test]
fn cluster_ips_are_those_of_services_with_ports_endpoints_or_not() {
    let table = compile_ok(&[
        service(
            "web",
            &["198.51.100.10", "2001:db8::10"],
            vec![tcp("http", 80, vec![ready("198.18.0.1", false)])],
        ),
        service("empty", &["198.51.100.20"], vec![tcp("http", 80, vec![])]),
        service("portless", &["198.51.100.30"], vec![]),
    ]);
    let mut got: Vec<IpAddr> = table.cluster_ips.iter().collect();
    got.sort();
    assert_eq!(
        got,
        vec![ip("198.51.100.10"), ip("198.51.100.20"), ip("2001:db8::10")]
    );
    for addr in ["198.51.100.10", "198.51.100.20", "2001:db8::10"] {
        assert!(table.cluster_ips.contains(ip(addr)), "{addr}");
    }
    // Neighbours, within the bounds and outside them, and the other family's zero.
    for addr in [
        "198.51.100.15",
        "198.51.100.30",
        "198.51.100.9",
        "198.51.100.21",
        "2001:db8::11",
        "2001:db8::f",
        "::",
        "0.0.0.0",
    ] {
        assert!(!table.cluster_ips.contains(ip(addr)), "{addr}");
    }
    assert_eq!(compile_ok(&[]).cluster_ips, ClusterIps::default());
}

#[test]
fn cluster_ips_follow_services_one_at_a_time() {
    let mut compiler = ServiceCompiler::new(CompileOptions::default());
    let one = |addrs: &[&str]| {
        Arc::new(service(
            "a",
            addrs,
            vec![tcp("http", 80, vec![ready("198.18.0.1", false)])],
        ))
    };
    compiler.upsert(one(&["198.51.100.10"]));
    // A second Service claiming the same address (invalid, but the API may say so for a
    // while): the address stays until neither claims it.
    compiler.upsert(Arc::new(service(
        "b",
        &["198.51.100.10", "198.51.100.11"],
        vec![tcp("dns", 53, vec![])],
    )));
    let contains = |c: &ServiceCompiler, a: &str| c.table().cluster_ips.contains(ip(a));
    assert!(contains(&compiler, "198.51.100.10") && contains(&compiler, "198.51.100.11"));
    compiler.upsert(one(&["198.51.100.12", "2001:db8::12"]));
    assert!(contains(&compiler, "198.51.100.10"), "still b's");
    assert!(contains(&compiler, "198.51.100.12") && contains(&compiler, "2001:db8::12"));
    compiler.remove(&service_name("b"));
    assert!(!contains(&compiler, "198.51.100.10") && !contains(&compiler, "198.51.100.11"));
    assert_eq!(compiler.table().cluster_ips.len(), 2);
    compiler.remove(&service_name("a"));
    assert_eq!(compiler.table().cluster_ips, ClusterIps::default());
}
