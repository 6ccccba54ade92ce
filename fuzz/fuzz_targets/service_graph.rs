//! The router graph as a service proxy: `Tables.services` (NAT, NodePort, session affinity,
//! traffic policies, a Service without endpoints, GRE, IP-in-IP and DSR forwarding) and
//! `Tables.policy` (per-pod ingress and egress ACLs) are set, so ip4/ip6-nat, ip4/ip6-acl,
//! tunnel encapsulation and termination and conntrack all run. The input is a sequence of
//! frames: raw, or IPv4/IPv6 packets built around the input from a small set of addresses and
//! ports that hit the Services (optionally inside a GRE or IP-in-IP tunnel to the node),
//! interleaved with time passing and table swaps (which flush connections to removed
//! backends).
//!
//! Invariants: no panic, no loop, every transmitted frame is at least an Ethernet header, and
//! no packet vanishes: after each dispatch, sinks (tx, drop, punt) plus held packets account
//! for at least every packet that entered plus those held before.
#![no_main]

use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use switchyard_dataplane::acl::AclRuleSpec;
use switchyard_dataplane::conntrack::{Conntrack, ConntrackConfig};
use switchyard_dataplane::graph::{Graph, Packet};
use switchyard_dataplane::nodes::router_graph;
use switchyard_dataplane::policy::{AclTable, PodAcls, PolicyTables};
use switchyard_dataplane::services::Services;
use switchyard_dataplane::tables::{Interface, RouteTarget, StaticRoute, Tables};
use switchyard_dataplane::worker::{TokenBucket, WorkerState};
use switchyard_dataplane::{HeapBuffer, PacketBuffer};
use switchyard_lb::service::{
    CompileOptions, Endpoint, Forwarding, Protocol, Service, ServiceName, ServicePort,
    ServiceTable, TrafficPolicy,
};

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

/// Addresses packets are built from: pods, backends, service addresses, node addresses and
/// an outside client. Index 15 is left to the input.
const V4: [[u8; 4]; 15] = [
    [198, 18, 1, 2],    // client pod
    [198, 18, 1, 3],    // another pod, not isolated
    [198, 18, 2, 2],    // backend, local, isolated
    [198, 18, 2, 3],    // backend, remote
    [198, 51, 100, 10], // web cluster IP
    [203, 0, 113, 20],  // web external IP
    [203, 0, 113, 21],  // web load-balancer IP
    [203, 0, 113, 30],  // gre load-balancer IP
    [203, 0, 113, 31],  // dsr external IP
    [198, 51, 100, 50], // Service without endpoints
    [203, 0, 113, 60],  // local-only Service
    [198, 18, 1, 1],    // node, port a
    [198, 18, 2, 1],    // node, port b
    [198, 19, 5, 5],    // outside client
    [198, 18, 2, 7],    // backend whose neighbor is unknown
];
const V6: [&str; 15] = [
    "2001:db8:1::2",
    "2001:db8:1::3",
    "2001:db8:2::2",
    "2001:db8:2::3",
    "2001:db8:100::10",
    "2001:db8:100::40",
    "2001:db8:100::50",
    "2001:db8:1::1",
    "2001:db8:2::1",
    "2001:db8:ff::5",
    "2001:db8:2::6",
    "2001:db8:2::7",
    "fe80::1",
    "ff02::1",
    "::1",
];
/// Service ports, NodePorts, backend ports and the health-check port.
const PORTS: [u16; 15] = [
    80, 53, 9000, 443, 30080, 30053, 30443, 8080, 32000, 22, 0, 1, 65535, 4789, 33434,
];

fn v4(i: u8, custom: &[u8]) -> [u8; 4] {
    match V4.get(usize::from(i & 15)) {
        Some(a) => *a,
        None => {
            let mut a = [198, 18, 1, 200];
            a[..custom.len().min(4)].copy_from_slice(&custom[..custom.len().min(4)]);
            a
        }
    }
}

fn v6(i: u8, custom: &[u8]) -> [u8; 16] {
    match V6.get(usize::from(i & 15)) {
        Some(a) => a.parse::<Ipv6Addr>().unwrap().octets(),
        None => {
            let mut a = "2001:db8:1::200".parse::<Ipv6Addr>().unwrap().octets();
            a[..custom.len().min(16)].copy_from_slice(&custom[..custom.len().min(16)]);
            a
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn name(n: &str) -> ServiceName {
    ServiceName {
        namespace: "fuzz".into(),
        name: n.into(),
    }
}

fn port(
    protocol: Protocol,
    port: u16,
    node_port: Option<u16>,
    endpoints: &[Endpoint],
) -> ServicePort {
    ServicePort {
        name: format!("{protocol:?}-{port}").to_lowercase(),
        protocol,
        port,
        node_port,
        endpoints: endpoints.to_vec(),
    }
}

fn service(n: &str, cluster_ips: &[&str], ports: Vec<ServicePort>) -> Service {
    Service {
        name: name(n),
        cluster_ips: cluster_ips.iter().map(|a| ip(a)).collect(),
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

/// The Services; `shrunk` drops one backend of `web` (as a scale-down would).
fn services(shrunk: bool) -> Vec<Service> {
    let mut web_eps = vec![
        Endpoint::ready(ip("198.18.2.2"), 8080, true),
        Endpoint::ready(ip("198.18.2.7"), 8080, false),
        Endpoint::ready(ip("2001:db8:2::2"), 8080, true),
        Endpoint::ready(ip("2001:db8:2::3"), 8080, false),
    ];
    let mut terminating = Endpoint::ready(ip("198.18.2.5"), 8080, false);
    terminating.ready = false;
    terminating.terminating = true;
    web_eps.push(terminating);
    if !shrunk {
        web_eps.push(Endpoint::ready(ip("198.18.2.3"), 8080, false));
    }
    let mut web = service(
        "web",
        &["198.51.100.10", "2001:db8:100::10"],
        vec![
            port(Protocol::Tcp, 80, Some(30080), &web_eps),
            port(Protocol::Udp, 53, Some(30053), &web_eps),
            port(Protocol::Sctp, 9000, None, &web_eps),
        ],
    );
    web.external_ips = vec![ip("203.0.113.20")];
    web.load_balancer_ips = vec![ip("203.0.113.21")];
    web.affinity_timeout_secs = Some(30);
    web.internal_traffic_policy = TrafficPolicy::Local;

    let mut gre = service(
        "gre",
        &["198.51.100.30", "2001:db8:100::30"],
        vec![port(
            Protocol::Tcp,
            443,
            Some(30443),
            &[
                Endpoint::ready(ip("198.18.2.3"), 443, false),
                Endpoint::ready(ip("2001:db8:2::3"), 443, false),
            ],
        )],
    );
    gre.load_balancer_ips = vec![ip("203.0.113.30")];
    gre.forwarding = Forwarding::Gre;

    let mut dsr = service(
        "dsr",
        &["198.51.100.31"],
        vec![port(
            Protocol::Udp,
            53,
            None,
            &[Endpoint::ready(ip("198.18.2.3"), 53, false)],
        )],
    );
    dsr.external_ips = vec![ip("203.0.113.31")];
    dsr.forwarding = Forwarding::DsrIpip;

    let mut ipip = service(
        "ipip",
        &["2001:db8:100::40"],
        vec![port(
            Protocol::Tcp,
            80,
            None,
            &[Endpoint::ready(ip("2001:db8:2::6"), 80, false)],
        )],
    );
    ipip.forwarding = Forwarding::Ipip;

    let empty = service(
        "empty",
        &["198.51.100.50", "2001:db8:100::50"],
        vec![port(Protocol::Tcp, 80, None, &[])],
    );

    let mut local = service(
        "local",
        &["198.51.100.60"],
        vec![port(
            Protocol::Tcp,
            80,
            Some(30081),
            &[Endpoint::ready(ip("198.18.2.3"), 8080, false)],
        )],
    );
    local.load_balancer_ips = vec![ip("203.0.113.60")];
    local.external_traffic_policy = TrafficPolicy::Local;
    local.health_check_node_port = Some(32000);

    vec![web, gre, dsr, ipip, empty, local]
}

fn acl(name: &str, rules: &[(&str, Option<u8>, (u16, u16))]) -> Arc<AclTable> {
    let specs: Vec<AclRuleSpec> = rules
        .iter()
        .map(|(net, protocol, ports)| AclRuleSpec {
            peer: net.parse().unwrap(),
            protocol: *protocol,
            ports: *ports,
        })
        .collect();
    let origins = specs.iter().map(|_| Arc::from("fuzz")).collect();
    Arc::new(AclTable::new(name, specs, false, origins))
}

fn policy() -> PolicyTables {
    let mut p = PolicyTables {
        acls: vec![
            acl(
                "backend-in",
                &[
                    ("198.18.1.0/24", Some(6), (8080, 8080)),
                    ("198.18.0.0/15", Some(17), (0, 65535)),
                    ("2001:db8:1::/64", Some(6), (8080, 8080)),
                    ("0.0.0.0/0", Some(1), (0, 65535)),
                    ("::/0", Some(58), (0, 65535)),
                ],
            ),
            acl(
                "client-out",
                &[
                    ("0.0.0.0/0", Some(6), (1, 65535)),
                    ("198.51.100.0/24", Some(17), (53, 53)),
                    ("::/0", Some(6), (1, 65535)),
                    ("198.18.2.0/24", Some(132), (9000, 9000)),
                ],
            ),
            acl("deny-all", &[]),
        ],
        ..PolicyTables::default()
    };
    let pods: [(&str, Option<u32>, Option<u32>); 6] = [
        ("198.18.2.2", Some(0), None),
        ("198.18.2.3", Some(0), Some(2)),
        ("198.18.1.2", Some(2), Some(1)),
        ("2001:db8:2::2", Some(0), None),
        ("2001:db8:1::2", Some(2), Some(1)),
        ("2001:db8:2::6", Some(2), Some(2)),
    ];
    for (addr, ingress, egress) in pods {
        p.pods.insert(ip(addr), PodAcls { ingress, egress });
    }
    p
}

/// Two versions of the tables (all Services, and one backend fewer), built once.
fn tables() -> &'static [Tables; 2] {
    static TABLES: OnceLock<[Tables; 2]> = OnceLock::new();
    TABLES.get_or_init(|| {
        let policy = Arc::new(policy());
        [false, true].map(|shrunk| {
            let mut a = Interface::new("a", MAC_A, 1500);
            a.ipv4.push("198.18.1.1/24".parse().unwrap());
            a.ipv6.push("2001:db8:1::1/64".parse().unwrap());
            let mut b = Interface::new("b", MAC_B, 1400);
            b.ipv4.push("198.18.2.1/24".parse().unwrap());
            b.ipv6.push("2001:db8:2::1/64".parse().unwrap());
            let routes = [
                StaticRoute {
                    prefix: "0.0.0.0/0".parse().unwrap(),
                    target: RouteTarget::Via(vec![(Some(ip("198.18.2.254")), None)]),
                },
                StaticRoute {
                    prefix: "::/0".parse().unwrap(),
                    target: RouteTarget::Via(vec![(Some(ip("2001:db8:2::fe")), None)]),
                },
            ];
            let mut t = Tables::build(1 + u64::from(shrunk), vec![a, b], &routes).unwrap();
            let (table, errors) =
                ServiceTable::compile(&services(shrunk), &CompileOptions::default());
            assert!(errors.is_empty(), "{errors:?}");
            t.services = Some(Arc::new(Services {
                table,
                cluster_cidrs: vec![
                    "198.18.1.0/24".parse().unwrap(),
                    "2001:db8:1::/64".parse().unwrap(),
                ],
                flush_tcp_on_removal: shrunk,
                ..Services::default()
            }));
            t.policy = Some(Arc::clone(&policy));
            t
        })
    })
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

const PROTOS: [u8; 8] = [6, 17, 132, 1, 58, 47, 4, 41];

/// A transport header for `proto` with the given ports, the rest from the input:
/// [sport][dport][fill..].
fn transport(proto: u8, b: &[u8]) -> Vec<u8> {
    let get = |i: usize| b.get(i).copied().unwrap_or(0);
    let sport = PORTS
        .get(usize::from(get(0) & 15))
        .copied()
        .unwrap_or(40000 + u16::from(get(0)));
    let dport = PORTS
        .get(usize::from(get(1) & 15))
        .copied()
        .unwrap_or(u16::from_be_bytes([get(2), get(3)]));
    let fill = b.get(2..).unwrap_or(&[]);
    let mut l4 = Vec::new();
    match proto {
        6 => {
            l4.extend_from_slice(&sport.to_be_bytes());
            l4.extend_from_slice(&dport.to_be_bytes());
            let mut rest = [0u8; 16];
            for (d, s) in rest.iter_mut().zip(fill) {
                *d = *s;
            }
            rest[8] = 0x50; // data offset 5
            l4.extend_from_slice(&rest);
            l4.extend_from_slice(fill.get(16..).unwrap_or(&[]));
        }
        17 => {
            l4.extend_from_slice(&sport.to_be_bytes());
            l4.extend_from_slice(&dport.to_be_bytes());
            l4.extend_from_slice(&((8 + fill.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
            l4.extend_from_slice(fill);
        }
        132 => {
            l4.extend_from_slice(&sport.to_be_bytes());
            l4.extend_from_slice(&dport.to_be_bytes());
            l4.extend_from_slice(fill);
            l4.resize(l4.len().max(12), 0);
        }
        _ => {
            // ICMP and everything else: the input as it is.
            l4.extend_from_slice(b);
        }
    }
    l4
}

/// [src][dst][proto][ttl/flags][transport input..]
fn ipv4_packet(b: &[u8]) -> Vec<u8> {
    let get = |i: usize| b.get(i).copied().unwrap_or(0);
    let rest = b.get(4..).unwrap_or(&[]);
    let proto = PROTOS[usize::from(get(2) & 7)];
    let custom = rest;
    let mut l4 = if get(2) & 8 != 0 && matches!(proto, 47 | 4 | 41) {
        // A tunnelled packet: GRE carries IPv4, IP-in-IP carries one of ours.
        let inner = if proto == 41 {
            ipv6_packet(rest)
        } else {
            ipv4_packet(rest)
        };
        if proto == 47 {
            let mut g = vec![0, 0, 0x08, 0x00];
            g.extend_from_slice(&inner);
            g
        } else {
            inner
        }
    } else {
        transport(proto, rest)
    };
    l4.truncate(1400);
    let total = 20 + l4.len();
    let mut p = vec![0x45, get(3) & 0xfc];
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34]);
    // Flags: mostly DF or none; the input may ask for a fragment.
    let frag: [u8; 2] = match get(3) & 3 {
        0 => [0x40, 0],
        1 => [0, 0],
        2 => [0x20, 0], // first fragment (MF)
        _ => [0, 0x10], // a later fragment
    };
    p.extend_from_slice(&frag);
    p.push(1 + (get(3) >> 2));
    p.push(proto);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&v4(get(0), custom));
    p.extend_from_slice(&v4(get(1), custom));
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&l4);
    p
}

/// [src][dst][proto][hop limit][transport input..]
fn ipv6_packet(b: &[u8]) -> Vec<u8> {
    let get = |i: usize| b.get(i).copied().unwrap_or(0);
    let rest = b.get(4..).unwrap_or(&[]);
    let proto = PROTOS[usize::from(get(2) & 7)];
    let mut l4 = if get(2) & 8 != 0 && matches!(proto, 4 | 41) {
        if proto == 4 {
            ipv4_packet(rest)
        } else {
            ipv6_packet(rest)
        }
    } else {
        transport(proto, rest)
    };
    l4.truncate(1400);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.push(proto);
    p.push(get(3));
    p.extend_from_slice(&v6(get(0), rest));
    p.extend_from_slice(&v6(get(1), rest));
    p.extend_from_slice(&l4);
    p
}

fn frame(port: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(if port == 0 { &MAC_A } else { &MAC_B });
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn run(
    graph: &mut Graph<HeapBuffer>,
    tables: &Tables,
    state: &mut WorkerState,
    now: u64,
    frame: &[u8],
    port: u16,
) {
    // Packets wait in two places: held for their next hop, and parked by a node (fragments
    // waiting in `ip{4,6}-vreass` for their first).
    let held_before = graph.held() + graph.parked();
    graph.receive(Packet::received(HeapBuffer::from_bytes(frame), port));
    graph.dispatch(tables, state, now);
    let mut sinks = graph.dropped.len() + graph.punt.len();
    for q in &mut graph.tx {
        for buf in q.drain(..) {
            assert!(buf.len() >= 14, "short frame sent");
            sinks += 1;
        }
    }
    let held = graph.held() + graph.parked();
    assert!(
        sinks + held > held_before,
        "a packet vanished: {sinks} sunk, {held} held or parked, {held_before} before"
    );
    graph.dropped.clear();
    graph.punt.clear();
}

thread_local! {
    static STATE: std::cell::RefCell<Option<WorkerState>> = const { std::cell::RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let all = tables();
    let mut current = 0usize;
    let mut graph = router_graph::<HeapBuffer>(2).unwrap();
    // One worker state, reset for every input: building a fresh one allocates the default
    // conntrack table, which costs far more than running an input. The small table also
    // makes running full part of the test; TCP tracking is strict when the length is odd.
    let mut state = STATE.with(|s| s.borrow_mut().take()).unwrap_or_default();
    state.neighbors = Default::default();
    state.icmp_errors = TokenBucket::new(1000, 50);
    state.reassembly = Default::default();
    state.fragment_ident = 0;
    state.conntrack = Conntrack::new(ConntrackConfig {
        capacity: 64,
        tcp_strict: data.len() % 2 == 1,
        ..ConntrackConfig::default()
    });
    state.affinity = Default::default();
    state.service_counters = Default::default();
    // Whatever version the state saw last, both syncs run (and reset the ACL counters).
    state.sync_services(&all[1]);
    state.sync_services(&all[0]);
    for (port, addr) in [
        (0, "198.18.1.2"),
        (0, "198.18.1.3"),
        (1, "198.18.2.2"),
        (1, "198.18.2.3"),
        (1, "198.18.2.5"),
        (1, "198.18.2.6"),
        (1, "198.18.2.254"),
        (0, "2001:db8:1::2"),
        (0, "2001:db8:1::3"),
        (1, "2001:db8:2::2"),
        (1, "2001:db8:2::3"),
        (1, "2001:db8:2::6"),
        (1, "2001:db8:2::fe"),
    ] {
        state.neighbors.insert_permanent(port, ip(addr), PEER_MAC);
    }
    let mut now = 1_000_000_000u64;
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (bytes, after) = tail.split_at(len);
        rest = after;
        let port = u16::from(op >> 7);
        match op % 8 {
            // A raw frame (the port's MAC in front).
            0 => {
                let mut f = (if port == 0 { MAC_A } else { MAC_B }).to_vec();
                f.extend_from_slice(bytes);
                run(&mut graph, &all[current], &mut state, now, &f, port);
            }
            1..=3 => {
                let f = frame(port, 0x0800, &ipv4_packet(bytes));
                run(&mut graph, &all[current], &mut state, now, &f, port);
            }
            4..=5 => {
                let f = frame(port, 0x86dd, &ipv6_packet(bytes));
                run(&mut graph, &all[current], &mut state, now, &f, port);
            }
            // Time passes; idle housekeeping.
            6 => {
                now += u64::from(bytes.first().copied().unwrap_or(1)) * 250_000_000;
                graph.housekeeping(&mut state, now, || None);
                graph.dropped.clear();
            }
            // The other tables come into force.
            _ => {
                current ^= 1;
                state.sync_services(&all[current]);
            }
        }
        assert_eq!(graph.looped, 0, "a packet looped");
        assert_eq!(graph.bad_tx_port, 0);
    }
    STATE.with(|s| *s.borrow_mut() = Some(state));
});
