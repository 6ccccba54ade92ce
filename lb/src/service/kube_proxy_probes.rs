//! kube-proxy conformance probes for the Service compiler: each test names the kube-proxy rule
//! it checks (`pkg/proxy/topology.go` `CategorizeEndpoints`, `endpointslicecache.go`, and the
//! nftables proxier's per-Service-port chains and affinity sets).

use std::net::IpAddr;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test addresses are valid")
}

fn endpoint(addr: &str, is_local: bool) -> Endpoint {
    Endpoint::ready(ip(addr), 8080, is_local)
}

fn port(name: &str, number: u16, endpoints: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        name: name.into(),
        protocol: Protocol::Tcp,
        port: number,
        node_port: None,
        endpoints,
    }
}

fn service(ports: Vec<ServicePort>) -> Service {
    Service {
        name: ServiceName {
            namespace: "default".into(),
            name: "probe".into(),
        },
        cluster_ips: vec![ip("198.51.100.10")],
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

fn compile(svc: Service) -> ServiceTable {
    let (table, errors) = ServiceTable::compile(&[svc], &CompileOptions::default());
    assert!(errors.is_empty(), "{errors:?}");
    table
}

fn at<'a>(table: &'a ServiceTable, addr: &str, number: u16) -> &'a FrontendEntry {
    let key = Frontend {
        addr: ip(addr),
        proto: PROTO_TCP,
        port: number,
    };
    table
        .frontends
        .get(&key)
        .unwrap_or_else(|| panic!("no frontend {key:?}"))
}

fn addrs(target: &Target) -> Vec<IpAddr> {
    match target {
        Target::Backends(set) => set.backends.iter().map(|b| b.addr).collect(),
        other => panic!("expected backends, got {other:?}"),
    }
}

/// Session affinity is per Service port: the nftables proxier's affinity sets belong to the
/// port's endpoint chains, which its cluster IP, NodePorts, external and load-balancer IPs all
/// reach. Every frontend of one port (and family) shares one affinity key; other ports and
/// the other family have their own.
#[test]
fn kube_proxy_affinity_is_keyed_per_service_port_and_family() {
    let mut http = port(
        "http",
        80,
        vec![
            endpoint("198.18.0.1", false),
            endpoint("2001:db8:2::1", false),
        ],
    );
    http.node_port = Some(30080);
    let mut svc = service(vec![
        http,
        port("https", 443, vec![endpoint("198.18.0.1", false)]),
    ]);
    svc.cluster_ips.push(ip("2001:db8:ffff::10"));
    svc.external_ips = vec![ip("203.0.113.1")];
    svc.load_balancer_ips = vec![ip("203.0.113.2"), ip("2001:db8:ffff::20")];
    svc.affinity_timeout_secs = Some(10_800);
    let table = compile(svc);

    let http4 = at(&table, "198.51.100.10", 80).affinity_key;
    assert_eq!(http4.addr, ip("198.51.100.10"));
    for (addr, number) in [("0.0.0.0", 30080), ("203.0.113.1", 80), ("203.0.113.2", 80)] {
        assert_eq!(at(&table, addr, number).affinity_key, http4, "{addr}");
    }
    let http6 = at(&table, "2001:db8:ffff::10", 80).affinity_key;
    assert_ne!(http6, http4);
    for (addr, number) in [("::", 30080), ("2001:db8:ffff::20", 80)] {
        assert_eq!(at(&table, addr, number).affinity_key, http6, "{addr}");
    }
    assert_ne!(at(&table, "203.0.113.1", 443).affinity_key, http4);
}

/// `CategorizeEndpoints`, a Service that only uses Local endpoints (internalTrafficPolicy
/// Local, not reachable from outside): with no local endpoint but a remote one still serving
/// while terminating, the Service "has endpoints" (the pre-scan counts serving-terminating
/// ones), so its cluster IP drops instead of refusing.
#[test]
fn kube_proxy_local_only_service_with_remote_terminating_endpoints_drops() {
    let terminating = Endpoint {
        ready: false,
        serving: true,
        terminating: true,
        ..endpoint("198.18.0.1", false)
    };
    let mut svc = service(vec![port("http", 80, vec![terminating])]);
    svc.internal_traffic_policy = TrafficPolicy::Local;
    let table = compile(svc);
    assert_eq!(at(&table, "198.51.100.10", 80).internal, Target::Drop);
}

/// `IsReady`/`IsServing`/`IsTerminating`: an endpoint that is serving but neither ready nor
/// terminating (not possible from the EndpointSlice controller, possible by hand) is not
/// usable: the fallback takes serving *and* terminating endpoints only.
#[test]
fn kube_proxy_serving_but_not_terminating_unready_endpoint_is_unusable() {
    let odd = Endpoint {
        ready: false,
        serving: true,
        terminating: false,
        ..endpoint("198.18.0.1", true)
    };
    let table = compile(service(vec![port("http", 80, vec![odd])]));
    assert_eq!(at(&table, "198.51.100.10", 80).internal, Target::Reject);
}

/// `topologyModeFromHints`: when every ready endpoint has zone hints but none names this
/// node's zone, hints are ignored and every ready endpoint is used.
#[test]
fn kube_proxy_zone_hints_for_other_zones_only_are_ignored() {
    let hinted = |addr: &str| Endpoint {
        hints: TopologyHints {
            zone: Some(false),
            node: None,
        },
        ..endpoint(addr, false)
    };
    let table = compile(service(vec![port(
        "http",
        80,
        vec![hinted("198.18.0.1"), hinted("198.18.0.2")],
    )]));
    assert_eq!(
        addrs(&at(&table, "198.51.100.10", 80).internal),
        vec![ip("198.18.0.1"), ip("198.18.0.2")]
    );
}

/// `endpointslicecache.go` `addEndpoints`: one address and port listed twice (an endpoint
/// moving between slices, or a pod IP reused by a new pod while the old one terminates) is
/// one endpoint, and the copy that is not terminating wins.
#[test]
fn kube_proxy_duplicate_endpoints_keep_the_non_terminating_copy() {
    let old = Endpoint {
        ready: false,
        serving: true,
        terminating: true,
        ..endpoint("198.18.0.1", false)
    };
    let new = endpoint("198.18.0.1", false);
    for endpoints in [vec![old.clone(), new.clone()], vec![new, old]] {
        let mut svc = service(vec![port("http", 80, endpoints)]);
        svc.internal_traffic_policy = TrafficPolicy::Cluster;
        let table = compile(svc);
        match &at(&table, "198.51.100.10", 80).internal {
            Target::Backends(set) => assert_eq!(set.backends.len(), 1),
            other => panic!("{other:?}"),
        }
    }
}

/// A named targetPort resolves per pod: the EndpointSlice controller puts pods whose named
/// port has different numbers in different slices, and kube-proxy keys each endpoint by
/// address and that slice's port number. One Service port then balances over endpoints on
/// different ports, each reached on its own.
#[test]
fn kube_proxy_a_named_target_port_resolves_per_endpoint() {
    let on = |addr: &str, number: u16| Endpoint::ready(ip(addr), number, false);
    let table = compile(service(vec![port(
        "http",
        80,
        vec![on("198.18.0.1", 8080), on("198.18.0.2", 9090)],
    )]));
    match &at(&table, "198.51.100.10", 80).internal {
        Target::Backends(set) => assert_eq!(
            set.backends
                .iter()
                .map(|b| (b.addr, b.port))
                .collect::<Vec<_>>(),
            vec![(ip("198.18.0.1"), 8080), (ip("198.18.0.2"), 9090)]
        ),
        other => panic!("{other:?}"),
    }
}

/// `CategorizeEndpoints` with externalTrafficPolicy Local: a local endpoint that is
/// terminating but still serving is used for external traffic when no local one is ready,
/// even though ready endpoints exist on other nodes (those stay for internal traffic).
#[test]
fn kube_proxy_local_policy_prefers_a_local_terminating_endpoint_to_dropping() {
    let local_going = Endpoint {
        ready: false,
        serving: true,
        terminating: true,
        ..endpoint("198.18.0.1", true)
    };
    let mut http = port("http", 80, vec![local_going, endpoint("198.18.0.2", false)]);
    http.node_port = Some(30080);
    let mut svc = service(vec![http]);
    svc.external_traffic_policy = TrafficPolicy::Local;
    let table = compile(svc);
    let node_port = at(&table, "0.0.0.0", 30080);
    assert_eq!(addrs(&node_port.external), vec![ip("198.18.0.1")]);
    assert_eq!(addrs(&node_port.internal), vec![ip("198.18.0.2")]);
    assert!(!node_port.masquerade_external);
}
