//! kube-proxy conformance probes for the service proxy: each test names the kube-proxy rule it
//! checks (`pkg/proxy/nftables/proxier.go` and `iptables/proxier.go` unless said otherwise).
//!
//! The rig's pod network is 198.18.2.0/24 behind port 1 (`--cluster-cidr`); the client on
//! port 0 (198.18.1.2) is outside the cluster.

use switchyard_lb::service::Frontend;

use super::*;

const POD_CIDR: &str = "198.18.2.0/24";
const NODE_ADDR: &str = "198.18.1.1";
const OTHER_POD: &str = "198.18.2.20";
const REMOTE_POD: &str = "198.18.2.30";
const EXTERNAL_IP: &str = "203.0.113.7";

impl Rig {
    /// Like [`Rig::with_services`], with `--cluster-cidr` set to [`POD_CIDR`] and every pod
    /// address of these tests known on port 1.
    fn with_pod_network(services: &[Service]) -> Rig {
        let mut r = Rig::with_services(services);
        let table = r
            .tables
            .services
            .as_ref()
            .map(|s| s.table.clone())
            .unwrap_or_default();
        r.tables.services = Some(Arc::new(Services {
            table,
            cluster_cidrs: vec![POD_CIDR.parse().unwrap()],
            ..Services::default()
        }));
        for pod in [OTHER_POD, REMOTE_POD] {
            r.state
                .neighbors
                .insert_permanent(1, v4(pod).into(), SERVER_MAC);
        }
        r
    }

    /// A SYN from `src` (on the port its network is behind) to `dst:dport`; what comes out.
    fn syn(&mut self, src: &str, dst: &str, sport: u16, dport: u16) -> Vec<(u16, Vec<u8>)> {
        let pkt = tcp(v4(src), v4(dst), sport, dport, TcpFlags::SYN);
        let (port, mac) = if v4(src).octets()[2] == 2 {
            (1, SERVER_MAC)
        } else {
            (0, CLIENT_MAC)
        };
        let mine = if port == 0 { MAC0 } else { MAC1 };
        self.send(port, &eth(mine, mac, 0x0800, &pkt))
    }
}

/// sessionAffinity ClientIP is kept per Service port, not per address: kube-proxy keeps one
/// affinity set per endpoint of the port and checks them in the port's service chain, which
/// the cluster IP, the NodePorts and the external IPs all lead to. A client that reached a
/// backend by the cluster IP keeps it by the NodePort and by an external IP, even once the
/// endpoints have changed so that a fresh choice would be another backend.
#[test]
fn kube_proxy_session_affinity_is_per_service_port_across_its_addresses() {
    let pod = |i: u8| Endpoint::ready(v4(&format!("198.18.2.{i}")).into(), 8080, false);
    let sticky = |endpoints: Vec<Endpoint>| Service {
        affinity_timeout_secs: Some(10_800),
        external_ips: vec![v4(EXTERNAL_IP).into()],
        ..service(endpoints)
    };
    let mut r = Rig::with_services(&[sticky((40..44).map(pod).collect())]);
    for i in 40..120 {
        r.state
            .neighbors
            .insert_permanent(1, v4(&format!("198.18.2.{i}")).into(), SERVER_MAC);
    }
    let first = one_tcp(&r.syn(CLIENT, VIP, 1000, 80)).2;
    // New endpoints beside the chosen one, such that the client's hash picks another.
    let client_hash = u64::from(crate::nodes::flow_hash(
        &[u32::from(v4(CLIENT)), 0, 0, 0],
        0,
        0,
    ));
    let changed = (0..8u8)
        .map(|k| {
            let mut endpoints: Vec<Endpoint> = (50 + 8 * k..58 + 8 * k).map(pod).collect();
            endpoints.push(Endpoint::ready(first.into(), 8080, false));
            sticky(endpoints)
        })
        .find(|svc| {
            let (table, _) = ServiceTable::compile(std::slice::from_ref(svc), &Default::default());
            let node_port = Frontend {
                addr: v4("0.0.0.0").into(),
                proto: 6,
                port: 30080,
            };
            let fresh = match &table.frontends[&node_port].external {
                switchyard_lb::service::Target::Backends(set) => set.pick(client_hash),
                _ => None,
            };
            fresh.is_some_and(|b| b.addr != IpAddr::from(first))
        })
        .expect("some endpoint set sends the client elsewhere");
    r.set_services(&[changed], 3);
    for (i, (dst, port)) in [(NODE_ADDR, 30080), (EXTERNAL_IP, 80), (VIP, 80)]
        .into_iter()
        .enumerate()
    {
        let got = one_tcp(&r.syn(CLIENT, dst, 2000 + i as u16, port)).2;
        assert_eq!(got, first, "{dst}:{port}");
    }
}

/// externalTrafficPolicy Local with no local endpoint: traffic from outside the cluster is
/// dropped (not rejected: the Service has endpoints elsewhere), while a pod sending to the
/// NodePort or external IP is "short-circuited" to the cluster endpoints (kube-proxy's
/// `short-circuit pod traffic` rule, with its local traffic detector).
#[test]
fn kube_proxy_external_policy_local_drops_outside_traffic_and_short_circuits_pods() {
    let svc = Service {
        external_traffic_policy: TrafficPolicy::Local,
        external_ips: vec![v4(EXTERNAL_IP).into()],
        ..service(vec![Endpoint::ready(v4(REMOTE_POD).into(), 8080, false)])
    };
    let mut r = Rig::with_pod_network(&[svc]);
    for (dst, port) in [(NODE_ADDR, 30080), (EXTERNAL_IP, 80)] {
        assert!(r.syn(CLIENT, dst, 40000, port).is_empty(), "{dst}");
    }
    assert_eq!(r.count("ip4-nat", "no_local_endpoint"), 2);
    assert_eq!(r.count("ip4-nat", "rejected"), 0);
    for (i, (dst, port)) in [(NODE_ADDR, 30080), (EXTERNAL_IP, 80)]
        .into_iter()
        .enumerate()
    {
        let (_, src, to, _, dport, _) = one_tcp(&r.syn(OTHER_POD, dst, 41000 + i as u16, port));
        // Short-circuited to the remote pod; not masqueraded (Local keeps the source).
        assert_eq!(
            (src, to, dport),
            (v4(OTHER_POD), v4(REMOTE_POD), 8080),
            "{dst}"
        );
    }
}

/// externalTrafficPolicy Local with a local endpoint: outside clients keep their source
/// address (no masquerade), the point of Local.
#[test]
fn kube_proxy_external_policy_local_preserves_the_client_address() {
    let svc = Service {
        external_traffic_policy: TrafficPolicy::Local,
        ..service(vec![backend()])
    };
    let mut r = Rig::with_pod_network(&[svc]);
    let (_, src, dst, sport, dport, _) = one_tcp(&r.syn(CLIENT, NODE_ADDR, 40000, 30080));
    assert_eq!(
        (src, dst, sport, dport),
        (v4(CLIENT), v4(BACKEND), 40000, 8080)
    );
    assert_eq!(r.count("ip4-nat", "masqueraded"), 0);
}

/// internalTrafficPolicy Local with no local endpoint: the cluster IP drops (kube-proxy's
/// `drop` verdict for "no local endpoints"), it does not refuse.
#[test]
fn kube_proxy_internal_policy_local_without_local_endpoints_drops_silently() {
    let svc = Service {
        internal_traffic_policy: TrafficPolicy::Local,
        ..service(vec![Endpoint::ready(v4(REMOTE_POD).into(), 8080, false)])
    };
    let mut r = Rig::with_pod_network(&[svc]);
    assert!(r.syn(OTHER_POD, VIP, 40000, 80).is_empty());
    assert_eq!(r.count("ip4-nat", "no_local_endpoint"), 1);
    assert_eq!(r.count("ip4-nat", "rejected"), 0);
}

/// With `--cluster-cidr`, traffic to a cluster IP from outside the cluster is masqueraded
/// ("masquerade off-cluster traffic to a service VIP"); pod traffic is not.
#[test]
fn kube_proxy_cluster_ip_masquerades_off_cluster_sources_only() {
    let mut r = Rig::with_pod_network(&[service(vec![Endpoint::ready(
        v4(REMOTE_POD).into(),
        8080,
        false,
    )])]);
    let (_, src, dst, _, _, _) = one_tcp(&r.syn(CLIENT, VIP, 40000, 80));
    assert_eq!((src, dst), (v4("198.18.2.1"), v4(REMOTE_POD)));
    let (_, src, dst, sport, _, _) = one_tcp(&r.syn(OTHER_POD, VIP, 40001, 80));
    assert_eq!((src, dst, sport), (v4(OTHER_POD), v4(REMOTE_POD), 40001));
    assert_eq!(r.count("ip4-nat", "masqueraded"), 1);
}

/// Hairpin: a pod reaching itself through its Service is masqueraded (the endpoint chain's
/// `saddr <endpoint IP> jump mark-for-masquerade`), so its replies come back through the
/// proxy instead of going straight to itself.
#[test]
fn kube_proxy_hairpin_traffic_is_masqueraded() {
    let mut r = Rig::with_pod_network(&[service(vec![Endpoint::ready(
        v4(REMOTE_POD).into(),
        8080,
        false,
    )])]);
    let (_, src, dst, _, dport, _) = one_tcp(&r.syn(REMOTE_POD, VIP, 40000, 80));
    assert_eq!((dst, dport), (v4(REMOTE_POD), 8080));
    assert_ne!(src, v4(REMOTE_POD));
    assert_eq!(r.count("ip4-nat", "masqueraded"), 1);
}

/// A Service with no usable endpoint refuses at every address kind, NodePorts and external
/// IPs included (kube-proxy's reject chain for "has no endpoints"), with an ICMP port
/// unreachable, TCP included (a bare `reject`, not `reject with tcp reset`).
#[test]
fn kube_proxy_no_endpoints_refuses_at_every_address() {
    let svc = Service {
        external_ips: vec![v4(EXTERNAL_IP).into()],
        external_traffic_policy: TrafficPolicy::Local,
        ..service(vec![Endpoint {
            ready: false,
            serving: false,
            ..backend()
        }])
    };
    let mut r = Rig::with_pod_network(&[svc]);
    for (i, (src, dst, port)) in [
        (CLIENT, VIP, 80),
        (CLIENT, NODE_ADDR, 30080),
        (CLIENT, EXTERNAL_IP, 80),
        (OTHER_POD, NODE_ADDR, 30080),
    ]
    .into_iter()
    .enumerate()
    {
        let sport = 42000 + i as u16;
        let out = r.syn(src, dst, sport, port);
        let refused = tcp(v4(src), v4(dst), sport, port, TcpFlags::SYN);
        one_port_unreachable(&out, v4(src), &refused);
    }
    assert_eq!(r.count("ip4-nat", "rejected"), 4);
}

/// `--nodeport-addresses` takes ranges: NodePorts answer on the node's addresses within them
/// and on no other (kube-proxy's `nodeport-ips` set).
#[test]
fn kube_proxy_node_ports_answer_only_on_addresses_in_nodeport_ranges() {
    let mut r = Rig::with_services(&[service(vec![backend()])]);
    let table = r.tables.services.as_ref().unwrap().table.clone();
    r.tables.services = Some(Arc::new(Services {
        table,
        node_port_ranges: vec!["198.18.2.0/24".parse().unwrap()],
        ..Services::default()
    }));
    // 198.18.1.1 is the node's, but outside the ranges: not a NodePort.
    let _ = r.syn(CLIENT, NODE_ADDR, 40000, 30080);
    assert_eq!(r.count("ip4-nat", "new_connection"), 0);
    // 198.18.2.1 is inside: served.
    let (_, _, dst, _, dport, _) = one_tcp(&r.syn(CLIENT, "198.18.2.1", 40001, 30080));
    assert_eq!((dst, dport), (v4(BACKEND), 8080));
    assert_eq!(r.count("ip4-nat", "new_connection"), 1);
}

/// `--masquerade-all` masquerades traffic to cluster IPs only (kube-proxy adds its
/// mark-for-masquerade rule for the cluster IP alone): a NodePort of a Service with
/// externalTrafficPolicy Local still keeps the client's address.
#[test]
fn kube_proxy_masquerade_all_leaves_external_policy_local_alone() {
    let svc = Service {
        external_traffic_policy: TrafficPolicy::Local,
        ..service(vec![backend()])
    };
    let mut r = Rig::with_pod_network(&[svc]);
    let services = r.tables.services.as_ref().unwrap();
    r.tables.services = Some(Arc::new(Services {
        masquerade_all: true,
        ..Services::clone(services)
    }));
    let (_, src, dst, _, _, _) = one_tcp(&r.syn(CLIENT, NODE_ADDR, 40000, 30080));
    assert_eq!((src, dst), (v4(CLIENT), v4(BACKEND)));
    // The cluster IP is masqueraded, even for a pod.
    let (_, src, dst, _, _, _) = one_tcp(&r.syn(OTHER_POD, VIP, 40001, 80));
    assert_eq!((src, dst), (v4("198.18.2.1"), v4(BACKEND)));
    assert_eq!(r.count("ip4-nat", "masqueraded"), 1);
}

/// kube-proxy's conntrack cleanup (`pkg/proxy/conntrack/cleanup.go`) removes UDP flows only
/// to endpoints that no longer serve, "not taking traffic policies, topology or terminating
/// status into account": a UDP flow to a pod that starts terminating, but still serves, goes
/// on while new flows go to the ready pods; once the pod stops serving, the flow is forgotten.
#[test]
fn kube_proxy_udp_flows_to_a_terminating_but_serving_pod_are_kept() {
    let ready_other = Endpoint::ready(v4(REMOTE_POD).into(), 8080, false);
    let going = |serving: bool| Endpoint {
        ready: false,
        serving,
        terminating: true,
        ..backend()
    };
    let mut r = Rig::with_pod_network(&[service(vec![backend()])]);
    let datagram = eth(
        MAC0,
        CLIENT_MAC,
        0x0800,
        &udp(v4(CLIENT), v4(VIP), 5000, 80),
    );
    let to = |out: &[(u16, Vec<u8>)]| {
        assert_eq!(out.len(), 1, "{out:?}");
        ip4_of(&out[0].1).dst_addr()
    };
    assert_eq!(to(&r.send(0, &datagram)), v4(BACKEND));
    r.set_services(&[service(vec![going(true), ready_other.clone()])], 3);
    assert_eq!(r.state.conntrack.len(), 1);
    assert_eq!(to(&r.send(0, &datagram)), v4(BACKEND));
    r.set_services(&[service(vec![going(false), ready_other])], 4);
    assert_eq!(r.state.conntrack.len(), 0);
    assert_eq!(to(&r.send(0, &datagram)), v4(REMOTE_POD));
}

/// The node's own traffic to a cluster IP (kube-proxy's OUTPUT path; here the punt device)
/// is masqueraded when a local traffic detector is set: kube-proxy's rule is `ip saddr !=
/// <cluster CIDR> ip daddr <cluster IP> jump mark-for-masquerade`, and the node's address is
/// not a pod's. (The interface-name detectors say the same: the host's packets come in on no
/// pod interface.) The backend sees the node's address towards it, as from any other
/// masqueraded client, and the answer still reaches the host from the cluster IP.
#[test]
fn kube_proxy_the_hosts_traffic_to_a_cluster_ip_is_masqueraded_with_a_cluster_cidr() {
    let mut r = Rig::with_pod_network(&[service(vec![Endpoint::ready(
        v4(REMOTE_POD).into(),
        8080,
        false,
    )])]);
    r.tables.punt_to_host = true;
    let node = v4(NODE_ADDR);
    from_host(&mut r, &tcp(node, v4(VIP), 40000, 80, TcpFlags::SYN));
    let (punted, sent) = punted_and_sent(&mut r);
    assert!(punted.is_empty(), "{punted:?}");
    let (port, src, dst, sport, dport, _) = one_tcp(&sent);
    assert_eq!(
        (port, src, dst, dport),
        (1, v4("198.18.2.1"), v4(REMOTE_POD), 8080),
        "masqueraded to the address towards the pod"
    );
    assert_eq!(r.count("ip4-nat", "masqueraded"), 1);
    // The pod's answer goes back to the host, from the cluster IP.
    let synack = tcp(
        v4(REMOTE_POD),
        src,
        8080,
        sport,
        TcpFlags::SYN | TcpFlags::ACK,
    );
    let mac = SERVER_MAC;
    r.graph.receive(Packet::received(
        HeapBuffer::from_bytes(&eth(MAC1, mac, 0x0800, &synack)),
        1,
    ));
    let (punted, sent) = punted_and_sent(&mut r);
    assert!(sent.is_empty(), "{sent:?}");
    assert_eq!(punted.len(), 1, "to the host");
    let ip = Ipv4Packet::new_checked(&punted[0][..]).unwrap();
    let seg = TcpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!(
        (ip.src_addr(), seg.src_port(), ip.dst_addr(), seg.dst_port()),
        (v4(VIP), 80, node, 40000)
    );
}

/// Without a local traffic detector (no `--cluster-cidr`) kube-proxy has no rule to tell pods
/// from anyone else, and masquerades nothing sent to a cluster IP: the host's traffic keeps
/// its address too.
#[test]
fn kube_proxy_the_hosts_traffic_to_a_cluster_ip_keeps_its_address_without_a_cluster_cidr() {
    let mut r = Rig::with_services(&[service(vec![backend()])]);
    r.tables.punt_to_host = true;
    let node = v4(NODE_ADDR);
    from_host(&mut r, &tcp(node, v4(VIP), 40000, 80, TcpFlags::SYN));
    let (_, sent) = punted_and_sent(&mut r);
    let (_, src, dst, sport, _, _) = one_tcp(&sent);
    assert_eq!((src, dst, sport), (node, v4(BACKEND), 40000));
    assert_eq!(r.count("ip4-nat", "masqueraded"), 0);
}

/// A Service deleted and created again with the same cluster IP (kube-proxy's conntrack
/// cleanup, `DeletedUDPClusterIPs` and stale endpoints): its UDP flows are forgotten with
/// the Service, so a client that keeps sending reaches the new Service's endpoint once it is
/// there; its TCP connections are left to conntrack, as kube-proxy leaves them, and keep
/// their backend.
#[test]
fn kube_proxy_a_service_deleted_and_recreated_with_its_ip() {
    let old = Endpoint::ready(v4(REMOTE_POD).into(), 8080, false);
    let new = Endpoint::ready(v4(OTHER_POD).into(), 8080, false);
    let mut r = Rig::with_pod_network(&[service(vec![old])]);
    let datagram = eth(
        MAC0,
        CLIENT_MAC,
        0x0800,
        &udp(v4(CLIENT), v4(VIP), 5000, 80),
    );
    let to = |out: &[(u16, Vec<u8>)]| {
        assert_eq!(out.len(), 1, "{out:?}");
        ip4_of(&out[0].1).dst_addr()
    };
    assert_eq!(to(&r.send(0, &datagram)), v4(REMOTE_POD));
    let (_, src, dst, sport, _, _) = one_tcp(&r.syn(CLIENT, VIP, 40000, 80));
    assert_eq!(dst, v4(REMOTE_POD));
    let synack = tcp(
        v4(REMOTE_POD),
        src,
        8080,
        sport,
        TcpFlags::SYN | TcpFlags::ACK,
    );
    assert_eq!(
        one_tcp(&r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &synack))).2,
        v4(CLIENT)
    );
    assert_eq!(r.state.conntrack.len(), 2);

    // Deleted (another Service stays): the UDP flow goes, the TCP connection stays.
    let other = Service {
        name: ServiceName {
            namespace: "default".into(),
            name: "other".into(),
        },
        cluster_ips: vec![v4("198.51.100.99").into()],
        ..service(vec![backend()])
    };
    let mut other = other;
    for port in &mut other.ports {
        port.node_port = None;
    }
    r.set_services(std::slice::from_ref(&other), 3);
    assert_eq!(r.state.conntrack.len(), 1);

    // Created again with the same cluster IP and another endpoint.
    r.set_services(&[other, service(vec![new])], 4);
    assert_eq!(to(&r.send(0, &datagram)), v4(OTHER_POD));
    let ack = tcp(v4(CLIENT), v4(VIP), 40000, 80, TcpFlags::ACK);
    let (_, _, dst, _, _, _) = one_tcp(&r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &ack)));
    assert_eq!(dst, v4(REMOTE_POD), "the TCP connection keeps its backend");
}

/// A client reusing the tuple of an established connection whose backend has left the
/// Service (its pod deleted): the new SYN starts a new connection to a backend that serves,
/// rather than going to the dead one until the old entry's established timeout runs out
/// (Linux conntrack lets such a flow die within minutes, its retransmissions unanswered, and
/// a SYN after that starts anew). The old connection's other packets still go where they
/// went, as kube-proxy leaves TCP connections alone; and while the backend serves, a SYN on
/// the established tuple stays with it.
#[test]
fn kube_proxy_a_syn_reusing_the_tuple_of_a_connection_to_a_departed_backend_starts_anew() {
    let old = Endpoint::ready(v4(REMOTE_POD).into(), 8080, false);
    let new = Endpoint::ready(v4(OTHER_POD).into(), 8080, false);
    let mut r = Rig::with_pod_network(&[service(vec![old])]);
    let (_, src, dst, sport, _, _) = one_tcp(&r.syn(CLIENT, VIP, 40000, 80));
    assert_eq!(dst, v4(REMOTE_POD));
    let synack = tcp(
        v4(REMOTE_POD),
        src,
        8080,
        sport,
        TcpFlags::SYN | TcpFlags::ACK,
    );
    let answer = r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &synack));
    assert_eq!(one_tcp(&answer).2, v4(CLIENT));
    let ack = tcp(v4(CLIENT), v4(VIP), 40000, 80, TcpFlags::ACK);
    let (_, _, dst, _, _, _) = one_tcp(&r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &ack)));
    assert_eq!(dst, v4(REMOTE_POD));
    // A late SYN while the backend serves: the same connection.
    let (_, _, dst, _, _, _) = one_tcp(&r.syn(CLIENT, VIP, 40000, 80));
    assert_eq!(dst, v4(REMOTE_POD));
    assert_eq!(r.count("ip4-nat", "reopened"), 0);

    // The old backend leaves, another comes.
    r.set_services(&[service(vec![new])], 3);
    let (_, _, dst, _, _, _) = one_tcp(&r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &ack)));
    assert_eq!(
        dst,
        v4(REMOTE_POD),
        "the old connection's packets keep their backend"
    );
    let (_, _, dst, _, _, _) = one_tcp(&r.syn(CLIENT, VIP, 40000, 80));
    assert_eq!(
        dst,
        v4(OTHER_POD),
        "a new SYN on the tuple goes to a serving backend"
    );
    assert_eq!(r.count("ip4-nat", "reopened"), 1);
    assert_eq!(r.count("ip4-nat", "new_connection"), 2);
}
