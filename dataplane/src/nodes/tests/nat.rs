//! The service proxy in the graph: DNAT, masquerade, un-NAT of replies, refusals, flushes.

use std::net::IpAddr;
use std::sync::Arc;

use switchyard_lb::service::{
    CompileOptions, Endpoint, Protocol, Service, ServiceName, ServicePort, ServiceTable,
    TrafficPolicy,
};

use super::*;
use crate::conntrack::FlowKey;
use crate::services::Services;
use crate::wire::{UdpPacket, UdpRepr};

const VIP: &str = "198.51.100.10";
const CLIENT: &str = "198.18.1.2";
const BACKEND: &str = "198.18.2.2";

pub(super) fn test_service(endpoints: Vec<Endpoint>) -> Service {
    service(endpoints)
}

fn service(endpoints: Vec<Endpoint>) -> Service {
    Service {
        name: ServiceName {
            namespace: "default".into(),
            name: "web".into(),
        },
        cluster_ips: vec![v4(VIP).into()],
        external_ips: vec![],
        load_balancer_ips: vec![],
        ports: [Protocol::Tcp, Protocol::Udp]
            .into_iter()
            .map(|protocol| ServicePort {
                name: format!("{protocol:?}").to_lowercase(),
                protocol,
                port: 80,
                node_port: Some(30080),
                endpoints: endpoints.clone(),
            })
            .collect(),
        affinity_timeout_secs: None,
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        load_balancer_source_ranges: Vec::new(),
        forwarding: Default::default(),
    }
}

fn backend() -> Endpoint {
    Endpoint::ready(v4(BACKEND).into(), 8080, true)
}

impl Rig {
    fn with_services(services: &[Service]) -> Rig {
        let mut r = Rig::new();
        r.set_services(services, 2);
        r.learn_client_and_server();
        r
    }

    fn set_services(&mut self, services: &[Service], version: u64) {
        let (table, errors) = ServiceTable::compile(services, &CompileOptions::default());
        assert!(errors.is_empty(), "{errors:?}");
        self.tables.services = Some(Arc::new(Services {
            table,
            ..Services::default()
        }));
        self.tables.version = version;
        self.state.sync_services(&self.tables);
    }
}

pub(super) fn tcp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: TcpFlags,
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: sport,
        dst_port: dport,
        seq_number: 100,
        ack_number: if flags.contains(TcpFlags::ACK) { 1 } else { 0 },
        flags,
        window_len: 1000,
        urgent_ptr: 0,
        max_seg_size: None,
        payload: &[],
    };
    let mut seg = vec![0; repr.buffer_len()];
    let addrs = IpAddrPair::V4 { src, dst };
    repr.emit(&mut TcpPacket::new_unchecked(&mut seg[..]), &addrs)
        .unwrap();
    ipv4(src, dst, IpProtocol::TCP, 64, true, &seg)
}

/// An IPv6 packet carrying a TCP segment with no payload.
pub(super) fn tcp6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    flags: TcpFlags,
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: sport,
        dst_port: dport,
        seq_number: 7,
        ack_number: if flags.contains(TcpFlags::ACK) { 1 } else { 0 },
        flags,
        window_len: 1000,
        urgent_ptr: 0,
        max_seg_size: None,
        payload: &[],
    };
    let mut b = vec![0; repr.buffer_len()];
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut b[..]),
        &IpAddrPair::V6 { src, dst },
    )
    .unwrap();
    ipv6(src, dst, IpProtocol::TCP, 64, &b)
}

pub(super) fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let repr = UdpRepr {
        src_port: sport,
        dst_port: dport,
        payload: b"hello",
    };
    let mut seg = vec![0; repr.buffer_len()];
    let addrs = IpAddrPair::V4 { src, dst };
    repr.emit(&mut UdpPacket::new_unchecked(&mut seg[..]), &addrs)
        .unwrap();
    ipv4(src, dst, IpProtocol::UDP, 64, true, &seg)
}

/// The single frame sent, as (port, IPv4 src, dst, sport, dport), with its checksums checked.
fn one_tcp(out: &[(u16, Vec<u8>)]) -> (u16, Ipv4Addr, Ipv4Addr, u16, u16, TcpFlags) {
    assert_eq!(out.len(), 1, "{out:?}");
    let (port, frame) = &out[0];
    let ip = ip4_of(frame);
    assert!(ip.verify_checksum());
    let addrs = IpAddrPair::V4 {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
    };
    let seg = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(seg.verify_checksum(&addrs), "TCP checksum");
    let repr = TcpRepr::parse(&seg, &addrs).unwrap();
    (
        *port,
        ip.src_addr(),
        ip.dst_addr(),
        repr.src_port,
        repr.dst_port,
        repr.flags,
    )
}

#[test]
fn cluster_ip_is_dnated_and_the_reply_un_dnated() {
    let mut r = Rig::with_services(&[service(vec![backend()])]);
    let syn = tcp(v4(CLIENT), v4(VIP), 40000, 80, TcpFlags::SYN);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn));
    let (port, src, dst, sport, dport, _) = one_tcp(&out);
    assert_eq!(
        (port, src, dst, sport, dport),
        (1, v4(CLIENT), v4(BACKEND), 40000, 8080)
    );
    let synack = tcp(
        v4(BACKEND),
        v4(CLIENT),
        8080,
        40000,
        TcpFlags::SYN | TcpFlags::ACK,
    );
    let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &synack));
    let (port, src, dst, sport, dport, _) = one_tcp(&out);
    assert_eq!(
        (port, src, dst, sport, dport),
        (0, v4(VIP), v4(CLIENT), 80, 40000)
    );
    assert_eq!(r.count("ip4-nat", "new_connection"), 1);
    assert_eq!(r.count("ip4-nat", "translated"), 1);
    let counted: Vec<_> = r.state.service_counters.iter().collect();
    assert_eq!(counted.len(), 1);
    assert_eq!(counted[0].1.connections, 1);
    assert_eq!(counted[0].1.packets, [1, 1]);
}

/// Two workers sharing a flow directory: the reply to a connection worker 0 started reaches
/// worker 1, which hands it over untouched; worker 0 un-DNATs it. A connection worker 1
/// starts is its own, and a worker's tuples leave the directory with its entries.
#[test]
fn replies_reaching_another_worker_are_handed_to_the_owner() {
    let shared = crate::worker::SharedState::default();
    let mut w0 = Rig::with_services(&[service(vec![backend()])]);
    let mut w1 = Rig::with_services(&[service(vec![backend()])]);
    w0.state.share(0, &shared);
    w1.state.share(1, &shared);

    let syn = tcp(v4(CLIENT), v4(VIP), 40000, 80, TcpFlags::SYN);
    let (_, _, dst, ..) = one_tcp(&w0.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn)));
    assert_eq!(dst, v4(BACKEND));
    assert_eq!(shared.flows.len(), 2, "both tuples claimed");

    let synack = tcp(
        v4(BACKEND),
        v4(CLIENT),
        8080,
        40000,
        TcpFlags::SYN | TcpFlags::ACK,
    );
    assert!(w1
        .send(1, &eth(MAC1, SERVER_MAC, 0x0800, &synack))
        .is_empty());
    assert_eq!(w1.count("ip4-nat", "handed_off"), 1);
    let (node, handed) = w1.graph.handoff.pop().expect("handed over");
    assert_eq!(Some(node), w1.graph.node_index("ip4-nat"));
    assert_eq!(handed.meta.handoff.worker(), Some(0));
    assert_eq!(handed.buf.data(), &synack[..], "untouched");
    let out = w0.inject("ip4-nat", handed);
    let (port, src, dst, sport, dport, _) = one_tcp(&out);
    assert_eq!(
        (port, src, dst, sport, dport),
        (0, v4(VIP), v4(CLIENT), 80, 40000)
    );

    let syn = tcp(v4(CLIENT), v4(VIP), 40001, 80, TcpFlags::SYN);
    let (_, _, dst, ..) = one_tcp(&w1.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn)));
    assert_eq!(dst, v4(BACKEND));
    assert_eq!(w1.count("ip4-nat", "handed_off"), 1, "its own");
    assert_eq!(shared.flows.len(), 4);
    w0.state.conntrack.flush_matching(|_| true);
    assert_eq!(shared.flows.len(), 2);
}

/// sessionAffinity ClientIP holds across workers: a client's second connection, started on
/// the other worker, goes to the backend its first one got.
#[test]
fn affinity_is_shared_by_the_workers() {
    let shared = crate::worker::SharedState::default();
    let backends: Vec<Endpoint> = (2..10)
        .map(|i| Endpoint::ready(v4(&format!("198.18.2.{i}")).into(), 8080, true))
        .collect();
    let svc = Service {
        affinity_timeout_secs: Some(600),
        ..service(backends)
    };
    let mut rigs: Vec<Rig> = (0..2)
        .map(|i| {
            let mut r = Rig::with_services(std::slice::from_ref(&svc));
            r.state.share(i, &shared);
            for j in 2..10 {
                r.state.neighbors.insert_permanent(
                    1,
                    v4(&format!("198.18.2.{j}")).into(),
                    SERVER_MAC,
                );
            }
            r
        })
        .collect();
    let backend_of = |r: &mut Rig, sport: u16| {
        let syn = tcp(v4(CLIENT), v4(VIP), sport, 80, TcpFlags::SYN);
        one_tcp(&r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn))).2
    };
    let first = backend_of(&mut rigs[0], 41000);
    for sport in 41001..41020 {
        assert_eq!(backend_of(&mut rigs[usize::from(sport % 2)], sport), first);
    }
}

/// A traced packet of a tracked connection says what it was translated to, both ways.
#[test]
fn translations_of_tracked_connections_are_traced() {
    let mut r = Rig::with_services(&[service(vec![backend()])]);
    let syn = tcp(v4(CLIENT), v4(VIP), 40000, 80, TcpFlags::SYN);
    r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn));
    let synack = tcp(
        v4(BACKEND),
        v4(CLIENT),
        8080,
        40000,
        TcpFlags::SYN | TcpFlags::ACK,
    );
    let ack = tcp(v4(CLIENT), v4(VIP), 40000, 80, TcpFlags::ACK);
    r.graph.trace.pending = 2;
    r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &synack));
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &ack));
    assert_eq!(one_tcp(&out).2, v4(BACKEND));
    let nat_lines: Vec<String> = r
        .graph
        .trace
        .take()
        .into_iter()
        .flat_map(|t| t.lines)
        .filter(|(node, line)| *node == "ip4-nat" && !line.starts_with("->"))
        .map(|(_, line)| line)
        .collect();
    assert_eq!(
        nat_lines,
        [
            "198.18.2.2:8080 > 198.18.1.2:40000 proto 6 Reply: to 198.51.100.10:80 > 198.18.1.2:40000 proto 6",
            "198.18.1.2:40000 > 198.51.100.10:80 proto 6 Original: to 198.18.1.2:40000 > 198.18.2.2:8080 proto 6",
        ]
    );
}

#[test]
fn node_port_is_masqueraded_and_answered_from_the_node_address() {
    let mut r = Rig::with_services(&[service(vec![backend()])]);
    let syn = tcp(v4(CLIENT), v4("198.18.1.1"), 40000, 30080, TcpFlags::SYN);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn));
    let (port, src, dst, masq_port, dport, _) = one_tcp(&out);
    assert_eq!(
        (port, src, dst, dport),
        (1, v4("198.18.2.1"), v4(BACKEND), 8080)
    );
    let synack = tcp(
        v4(BACKEND),
        v4("198.18.2.1"),
        8080,
        masq_port,
        TcpFlags::SYN | TcpFlags::ACK,
    );
    let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &synack));
    let (port, src, dst, sport, dport, _) = one_tcp(&out);
    assert_eq!(
        (port, src, dst, sport, dport),
        (0, v4("198.18.1.1"), v4(CLIENT), 30080, 40000)
    );
    assert_eq!(r.count("ip4-nat", "masqueraded"), 1);
}

#[test]
fn load_balancer_source_ranges_admit_only_listed_clients_to_the_lb_ip() {
    const LB_IP: &str = "203.0.113.80";
    let lb = Service {
        load_balancer_ips: vec![v4(LB_IP).into()],
        load_balancer_source_ranges: vec![
            "198.18.1.0/28".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ],
        ..service(vec![backend()])
    };
    let mut r = Rig::with_services(&[lb]);
    // 198.18.1.2 is in range: served.
    let syn = tcp(v4(CLIENT), v4(LB_IP), 40000, 80, TcpFlags::SYN);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn));
    let (_, _, dst, _, dport, _) = one_tcp(&out);
    assert_eq!((dst, dport), (v4(BACKEND), 8080));
    // 198.18.1.20 is not: dropped, counted.
    let syn = tcp(v4("198.18.1.20"), v4(LB_IP), 40001, 80, TcpFlags::SYN);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(r.count("ip4-nat", "source_denied"), 1);
    // The ranges guard the load-balancer IP only: the cluster IP still answers it.
    let syn = tcp(v4("198.18.1.20"), v4(VIP), 40002, 80, TcpFlags::SYN);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn));
    let (_, _, dst, _, _, _) = one_tcp(&out);
    assert_eq!(dst, v4(BACKEND));
    assert_eq!(r.count("ip4-nat", "source_denied"), 1);
}

/// kube-proxy builds the source-range firewall only in front of endpoints: without any, a
/// client outside the ranges is refused like everyone else, not left to time out.
#[test]
fn load_balancer_source_ranges_without_endpoints_reject_everyone() {
    const LB_IP: &str = "203.0.113.80";
    let lb = Service {
        load_balancer_ips: vec![v4(LB_IP).into()],
        // The client, 198.18.1.2, is not in it.
        load_balancer_source_ranges: vec!["198.18.1.128/28".parse().unwrap()],
        ..service(vec![])
    };
    let mut r = Rig::with_services(&[lb]);
    let syn = tcp(v4(CLIENT), v4(LB_IP), 40001, 80, TcpFlags::SYN);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn));
    one_port_unreachable(&out, v4(CLIENT), &syn);
    assert_eq!(r.count("ip4-nat", "rejected"), 1);
    assert_eq!(r.count("ip4-nat", "source_denied"), 0);
}

/// The single frame sent must be an ICMP port unreachable to `client` quoting `refused`
/// (as much of it as the error holds); returns its port and outer source.
pub(super) fn one_port_unreachable(
    out: &[(u16, Vec<u8>)],
    client: Ipv4Addr,
    refused: &[u8],
) -> (u16, Ipv4Addr) {
    assert_eq!(out.len(), 1, "{out:?}");
    let (port, frame) = &out[0];
    let ip = ip4_of(frame);
    assert!(ip.verify_checksum());
    assert_eq!(
        ip.protocol(),
        IpProtocol::ICMP,
        "an ICMP error, not a TCP reset"
    );
    assert_eq!(ip.dst_addr(), client);
    let msg = ip.payload();
    assert_eq!((msg[0], msg[1]), (3, 3), "port unreachable");
    assert_eq!(checksum::checksum(msg), 0, "ICMP checksum");
    assert_eq!(&msg[8..], refused, "the refused packet quoted");
    (*port, ip.src_addr())
}

/// kube-proxy refuses with a bare `reject` (nftables) or `-j REJECT` (iptables): ICMP port
/// unreachable whatever the protocol, TCP included, never a TCP reset.
#[test]
fn a_service_without_endpoints_refuses_tcp_and_udp_with_port_unreachable() {
    let mut r = Rig::with_services(&[service(vec![])]);
    let syn = tcp(v4(CLIENT), v4(VIP), 40000, 80, TcpFlags::SYN);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn));
    assert_eq!(one_port_unreachable(&out, v4(CLIENT), &syn).0, 0);
    let dgram = udp(v4(CLIENT), v4(VIP), 5000, 80);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &dgram));
    assert_eq!(one_port_unreachable(&out, v4(CLIENT), &dgram).0, 0);
    assert_eq!(r.count("ip4-nat", "rejected"), 2);
    assert_eq!(r.count("icmp4-error", "sent"), 2);
    assert_eq!(r.count("ip4-nat", "new_connection"), 0);
}

/// The same over IPv6: ICMPv6 destination unreachable, port unreachable (1, 4).
#[test]
fn an_ipv6_service_without_endpoints_refuses_tcp_with_icmpv6_port_unreachable() {
    let (vip6, client6) = (v6("2001:db8:ffff::10"), v6("2001:db8:1::2"));
    let svc = Service {
        cluster_ips: vec![v4(VIP).into(), vip6.into()],
        ..service(vec![])
    };
    let mut r = Rig::with_services(&[svc]);
    let syn = tcp6(client6, vip6, 40000, 80, TcpFlags::SYN);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &syn));
    assert_eq!(out.len(), 1, "{out:?}");
    let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
    assert_eq!(ip.next_header(), IpProtocol::ICMPV6, "not a TCP reset");
    assert_eq!(ip.dst_addr(), client6);
    let msg = ip.payload();
    assert_eq!((msg[0], msg[1]), (1, 4));
    assert_eq!(icmpv6_checksum(&ip.src_addr(), &client6, msg), 0);
    assert_eq!(&msg[8..], &syn[..], "the SYN quoted");
    assert_eq!(r.count("ip6-nat", "rejected"), 1);
}

#[test]
fn external_traffic_policy_local_without_local_endpoints_drops() {
    let mut svc = service(vec![Endpoint::ready(v4(BACKEND).into(), 8080, false)]);
    svc.external_traffic_policy = TrafficPolicy::Local;
    let mut r = Rig::with_services(&[svc]);
    let syn = tcp(v4(CLIENT), v4("198.18.1.1"), 40000, 30080, TcpFlags::SYN);
    assert!(r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn)).is_empty());
    assert_eq!(r.count("ip4-nat", "no_local_endpoint"), 1);
    // The cluster IP still works (internal traffic, internalTrafficPolicy Cluster).
    let syn = tcp(v4(CLIENT), v4(VIP), 40000, 80, TcpFlags::SYN);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn));
    assert_eq!(one_tcp(&out).2, v4(BACKEND));
}

#[test]
fn udp_flows_to_a_removed_backend_are_forgotten_tcp_ones_kept() {
    let other = Endpoint::ready(v4("198.18.2.9").into(), 8080, true);
    let mut r = Rig::with_services(&[service(vec![backend()])]);
    r.send(
        0,
        &eth(
            MAC0,
            CLIENT_MAC,
            0x0800,
            &udp(v4(CLIENT), v4(VIP), 5000, 80),
        ),
    );
    r.send(
        0,
        &eth(
            MAC0,
            CLIENT_MAC,
            0x0800,
            &tcp(v4(CLIENT), v4(VIP), 40000, 80, TcpFlags::SYN),
        ),
    );
    assert_eq!(r.state.conntrack.len(), 2);
    r.set_services(&[service(vec![other])], 3);
    assert_eq!(r.state.conntrack.len(), 1);
    assert_eq!(r.state.conntrack.iter().next().unwrap().1.original.proto, 6);
}

#[test]
fn icmp_error_from_the_backend_reaches_the_client_as_from_the_service() {
    let mut r = Rig::with_services(&[service(vec![backend()])]);
    let out = r.send(
        0,
        &eth(
            MAC0,
            CLIENT_MAC,
            0x0800,
            &udp(v4(CLIENT), v4(VIP), 5000, 80),
        ),
    );
    assert_eq!(out.len(), 1);
    let seen = ip4_of(&out[0].1);
    let hlen = seen.header_len();
    let quoted = seen.into_inner()[..hlen + 8].to_vec();
    let mut icmp = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted);
    let c = checksum::checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let err = ipv4(v4(BACKEND), v4(CLIENT), IpProtocol::ICMP, 64, false, &icmp);
    let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &err));
    assert_eq!(out.len(), 1);
    let ip = ip4_of(&out[0].1);
    assert_eq!((ip.src_addr(), ip.dst_addr()), (v4(VIP), v4(CLIENT)));
    let icmp = ip.payload();
    assert!(checksum::verify(icmp));
    let inner = Ipv4Packet::new_unchecked(&icmp[8..]);
    assert!(checksum::verify(&icmp[8..28]));
    assert_eq!((inner.src_addr(), inner.dst_addr()), (v4(CLIENT), v4(VIP)));
    assert_eq!(&icmp[8 + 22..8 + 24], &80u16.to_be_bytes());
    assert_eq!(r.count("ip4-nat", "icmp_translated"), 1);
}

/// Opens a TCP connection from the client's port 40000 to `dst:dport`, answered by the
/// backend (the server) from port `sport`, and closes it both ways to TIME_WAIT; every
/// segment must get through.
pub(super) fn open_and_close(r: &mut Rig, dst: Ipv4Addr, dport: u16, sport: u16) {
    use crate::conntrack::ConnState;
    const SYN: TcpFlags = TcpFlags::SYN;
    const ACK: TcpFlags = TcpFlags::ACK;
    const FIN: TcpFlags = TcpFlags::FIN;
    let conversation = [
        (true, SYN),
        (false, SYN | ACK),
        (true, ACK),
        (true, FIN | ACK),
        (false, ACK),
        (false, FIN | ACK),
        (true, ACK),
    ];
    for (from_client, flags) in conversation {
        let (port, frame) = if from_client {
            let seg = tcp(v4(CLIENT), dst, 40000, dport, flags);
            (0, eth(MAC0, CLIENT_MAC, 0x0800, &seg))
        } else {
            let seg = tcp(v4(BACKEND), v4(CLIENT), sport, 40000, flags);
            (1, eth(MAC1, SERVER_MAC, 0x0800, &seg))
        };
        assert_eq!(r.send(port, &frame).len(), 1, "{flags:?}");
    }
    let states: Vec<_> = r.state.conntrack.iter().map(|(_, e)| e.state).collect();
    assert_eq!(states, [ConnState::TimeWait]);
}

/// A client reusing its port after a connection to a Service closed opens a new connection,
/// which Linux conntrack gives a new entry and kube-proxy's rules a backend of the Service as
/// it is now: not the old connection's backend, which has left the Service since (its TCP
/// connections were kept to close in peace).
#[test]
fn a_port_reused_after_close_is_balanced_among_the_backends_as_they_are_now() {
    let mut r = Rig::with_services(&[service(vec![backend()])]);
    open_and_close(&mut r, v4(VIP), 80, 8080);
    let moved = Endpoint::ready(v4(BACKEND).into(), 9090, true);
    r.set_services(&[service(vec![moved])], 3);
    assert_eq!(r.state.conntrack.len(), 1, "the closing connection is kept");
    let syn = tcp(v4(CLIENT), v4(VIP), 40000, 80, TcpFlags::SYN);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn));
    let (_, _, dst, sport, dport, _) = one_tcp(&out);
    assert_eq!((dst, sport, dport), (v4(BACKEND), 40000, 9090));
    assert_eq!(r.count("ip4-nat", "reopened"), 1);
    assert_eq!(r.count("ip4-nat", "new_connection"), 2);
    let entries: Vec<_> = r.state.conntrack.iter().map(|(_, e)| e.reply).collect();
    assert_eq!(
        entries,
        [FlowKey::new(
            v4(BACKEND).into(),
            v4(CLIENT).into(),
            6,
            9090,
            40000
        )]
    );
    // Its answer comes back as from the Service.
    let synack = tcp(
        v4(BACKEND),
        v4(CLIENT),
        9090,
        40000,
        TcpFlags::SYN | TcpFlags::ACK,
    );
    let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &synack));
    let (_, src, _, sport, ..) = one_tcp(&out);
    assert_eq!((src, sport), (v4(VIP), 80));
}

#[test]
fn plain_routing_is_untouched_by_the_proxy() {
    let mut r = Rig::with_services(&[service(vec![backend()])]);
    let syn = tcp(v4(CLIENT), v4(BACKEND), 40000, 8080, TcpFlags::SYN);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn));
    let (port, src, dst, ..) = one_tcp(&out);
    assert_eq!((port, src, dst), (1, v4(CLIENT), v4(BACKEND)));
    assert_eq!(r.state.conntrack.len(), 0);
    let _ = IpAddr::from(v4(CLIENT));
}

fn with_forwarding(forwarding: switchyard_lb::service::Forwarding) -> Service {
    Service {
        forwarding,
        ..service(vec![backend()])
    }
}

/// `inner` inside an outer IPv4 header (protocol `proto`, GRE header included by the caller).
fn outer_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, inner: &[u8]) -> Vec<u8> {
    ipv4(src, dst, IpProtocol(proto), 64, true, inner)
}

#[test]
fn edge_role_sends_service_traffic_in_gre_and_ipip() {
    use switchyard_lb::service::Forwarding;
    for (forwarding, proto, hdr) in [
        (Forwarding::Gre, 47u8, 4usize),
        (Forwarding::Ipip, 4, 0),
        (Forwarding::DsrIpip, 4, 0),
    ] {
        let mut r = Rig::with_services(&[with_forwarding(forwarding)]);
        let syn = tcp(v4(CLIENT), v4(VIP), 40000, 80, TcpFlags::SYN);
        let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn));
        assert_eq!(out.len(), 1, "{forwarding:?}");
        assert_eq!(out[0].0, 1);
        let outer = ip4_of(&out[0].1);
        assert!(outer.verify_checksum());
        assert_eq!(outer.protocol().0, proto);
        assert_eq!(
            (outer.src_addr(), outer.dst_addr()),
            (v4("198.18.2.1"), v4(BACKEND))
        );
        let payload = outer.payload();
        if hdr == 4 {
            assert_eq!(payload[..4], [0, 0, 0x08, 0x00]);
        }
        let inner = Ipv4Packet::new_checked(&payload[hdr..]).unwrap();
        assert!(inner.verify_checksum());
        assert_eq!(inner.ttl(), 63);
        assert_eq!((inner.src_addr(), inner.dst_addr()), (v4(CLIENT), v4(VIP)));
        assert_eq!(&inner.payload()[..4], &[0x9c, 0x40, 0, 80]);
        assert_eq!(r.state.conntrack.len(), 0, "tunnelling is stateless");
        assert_eq!(r.count("ip4-nat", "encapsulated"), 1);
    }
}

#[test]
fn node_role_unwraps_and_proxies_or_delivers_for_direct_return() {
    use switchyard_lb::service::Forwarding;
    let client = v4("203.0.113.5");
    let inner = tcp(client, v4(VIP), 40000, 80, TcpFlags::SYN);
    let mut gre = vec![0, 0, 0x08, 0x00];
    gre.extend_from_slice(&inner);
    // GRE: decapsulated, then DNAT to the local pod as a service proxy.
    let mut r = Rig::with_services(&[with_forwarding(Forwarding::Gre)]);
    let frame = eth(
        MAC0,
        CLIENT_MAC,
        0x0800,
        &outer_v4(v4(CLIENT), v4("198.18.1.1"), 47, &gre),
    );
    let out = r.send(0, &frame);
    let (port, src, dst, sport, dport, _) = one_tcp(&out);
    assert_eq!(
        (port, src, dst, sport, dport),
        (1, client, v4(BACKEND), 40000, 8080)
    );
    assert_eq!(r.count("ip4-nat", "decapsulated"), 1);
    // IPIP for direct server return: delivered to the pod still addressed to the service.
    let mut r = Rig::with_services(&[with_forwarding(Forwarding::DsrIpip)]);
    let frame = eth(
        MAC0,
        CLIENT_MAC,
        0x0800,
        &outer_v4(v4(CLIENT), v4("198.18.1.1"), 4, &inner),
    );
    let out = r.send(0, &frame);
    let (port, src, dst, sport, dport, _) = one_tcp(&out);
    assert_eq!(
        (port, src, dst, sport, dport),
        (1, client, v4(VIP), 40000, 80)
    );
    assert_eq!(&out[0].1[..6], &SERVER_MAC, "sent to the pod's MAC");
    assert_eq!(r.count("ip4-nat", "delivered"), 1);
    assert_eq!(r.state.conntrack.len(), 0);
    // A broken GRE header is counted and dropped.
    let mut bad = gre.clone();
    bad[1] = 1;
    let frame = eth(
        MAC0,
        CLIENT_MAC,
        0x0800,
        &outer_v4(v4(CLIENT), v4("198.18.1.1"), 47, &bad),
    );
    assert!(r.send(0, &frame).is_empty());
    assert_eq!(r.count("ip4-nat", "bad_tunnel"), 1);
}

#[test]
fn client_ip_affinity_keeps_a_client_on_its_backend_across_changes_until_the_timeout() {
    let pods = |n: u8| -> Vec<Endpoint> {
        (0..n)
            .map(|i| Endpoint::ready(v4(&format!("198.18.2.{}", 10 + i)).into(), 8080, true))
            .collect()
    };
    let sticky = |endpoints| Service {
        affinity_timeout_secs: Some(10),
        ..service(endpoints)
    };
    let mut r = Rig::with_services(&[sticky(pods(4))]);
    for i in 0..4 {
        r.state.neighbors.insert_permanent(
            1,
            v4(&format!("198.18.2.{}", 10 + i)).into(),
            SERVER_MAC,
        );
    }
    let connect = |r: &mut Rig, sport: u16| {
        let syn = tcp(v4(CLIENT), v4(VIP), sport, 80, TcpFlags::SYN);
        one_tcp(&r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn))).2
    };
    let first = connect(&mut r, 1000);
    for sport in 1001..1020 {
        assert_eq!(connect(&mut r, sport), first);
    }
    // The set changes; the client keeps its backend while it is still there.
    let others: Vec<Endpoint> = pods(4)
        .into_iter()
        .filter(|e| e.addr != IpAddr::from(first))
        .take(2)
        .chain([Endpoint::ready(first.into(), 8080, true)])
        .collect();
    r.set_services(&[sticky(others)], 3);
    for sport in 2000..2010 {
        assert_eq!(connect(&mut r, sport), first);
    }
    // Past the timeout the choice is made afresh, as for any new connection (kube-proxy
    // picks at random), and kept again: over a few timeouts the client meets other backends.
    let mut seen = std::collections::HashSet::new();
    for round in 0..8u16 {
        r.now += 11_000_000_000;
        let again = connect(&mut r, 3000 + 2 * round);
        assert_eq!(connect(&mut r, 3001 + 2 * round), again);
        seen.insert(again);
    }
    assert!(seen.len() > 1, "always {seen:?}");
}

#[test]
fn ipv6_cluster_ip_is_dnated_and_answered() {
    let vip6 = v6("2001:db8:ffff::10");
    let client6 = v6("2001:db8:1::2");
    let backend6 = v6("2001:db8:2::2");
    let svc = Service {
        cluster_ips: vec![v4(VIP).into(), vip6.into()],
        ..service(vec![
            backend(),
            Endpoint::ready(backend6.into(), 8080, true),
        ])
    };
    let mut r = Rig::with_services(&[svc]);
    let seg = |src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, flags: TcpFlags| {
        eth(
            MAC0,
            CLIENT_MAC,
            0x86dd,
            &tcp6(src, dst, sport, dport, flags),
        )
    };
    let parse = |frame: &[u8]| {
        let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
        let addrs = IpAddrPair::V6 {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
        };
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.verify_checksum(&addrs));
        (ip.src_addr(), ip.dst_addr(), t.src_port(), t.dst_port())
    };
    let out = r.send(0, &seg(client6, vip6, 40000, 80, TcpFlags::SYN));
    assert_eq!(out.len(), 1);
    assert_eq!(parse(&out[0].1), (client6, backend6, 40000, 8080));
    let mut reply = seg(
        backend6,
        client6,
        8080,
        40000,
        TcpFlags::SYN | TcpFlags::ACK,
    );
    reply[..6].copy_from_slice(&MAC1);
    reply[6..12].copy_from_slice(&SERVER_MAC);
    let out = r.send(1, &reply);
    assert_eq!(out.len(), 1);
    assert_eq!(parse(&out[0].1), (vip6, client6, 80, 40000));
    assert_eq!(r.count("ip6-nat", "new_connection"), 1);
}

#[test]
fn a_reply_tuple_clash_between_two_services_gets_another_source_port() {
    // Two services on one backend port: a client reusing its source port for the second
    // would collide with the first connection's reply tuple (lingering in TIME_WAIT).
    let mut other = service(vec![backend()]);
    other.name.name = "other".into();
    other.cluster_ips = vec![v4("198.51.100.20").into()];
    for port in &mut other.ports {
        port.node_port = None;
    }
    let mut r = Rig::with_services(&[service(vec![backend()]), other]);
    let syn = tcp(v4(CLIENT), v4(VIP), 40000, 80, TcpFlags::SYN);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn));
    assert_eq!(one_tcp(&out).3, 40000, "the first keeps the client's port");
    let syn = tcp(v4(CLIENT), v4("198.51.100.20"), 40000, 80, TcpFlags::SYN);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &syn));
    let (port, src, dst, sport, dport, _) = one_tcp(&out);
    assert_eq!((port, src, dst, dport), (1, v4(CLIENT), v4(BACKEND), 8080));
    assert_ne!(sport, 40000, "the second is given another port");
    assert_eq!(r.count("ip4-nat", "port_remapped"), 1);
    assert_eq!(r.count("ip4-nat", "clash"), 0);
    // Its answer goes back to the client's own port, from the second service.
    let synack = tcp(
        v4(BACKEND),
        v4(CLIENT),
        8080,
        sport,
        TcpFlags::SYN | TcpFlags::ACK,
    );
    let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &synack));
    let (port, src, dst, sport, dport, _) = one_tcp(&out);
    assert_eq!(
        (port, src, dst, sport, dport),
        (0, v4("198.51.100.20"), v4(CLIENT), 80, 40000)
    );
}

mod cluster_ips;
mod fragments;
mod kube_proxy;

/// kube-proxy's OUTPUT chain: the node's own processes reach Services. A packet from the host
/// (through the punt path) to the cluster IP goes to a backend, and the backend's answer
/// comes back to the host as from the cluster IP.
#[test]
fn the_host_reaches_a_cluster_ip_through_the_punt_path() {
    let mut r = Rig::with_services(&[service(vec![backend()])]);
    r.tables.punt_to_host = true;
    let node = v4("198.18.1.1");
    let syn = tcp(node, v4(VIP), 40000, 80, TcpFlags::SYN);
    from_host(&mut r, &syn);
    let (punted, sent) = punted_and_sent(&mut r);
    assert!(punted.is_empty());
    let (port, src, dst, sport, dport, _) = one_tcp(&sent);
    assert_eq!((port, dst, dport), (1, v4(BACKEND), 8080));
    // The answer, to whatever source the node's packet left with.
    let synack = tcp(v4(BACKEND), src, 8080, sport, TcpFlags::SYN | TcpFlags::ACK);
    r.graph.receive(Packet::received(
        HeapBuffer::from_bytes(&eth(MAC1, SERVER_MAC, 0x0800, &synack)),
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

/// A NodePort (externalTrafficPolicy Cluster) whose endpoint is this node's own address (a
/// host-network pod here): kube-proxy's DNAT makes the packet local, so it is delivered
/// without masquerade and the host sees the client's address. The host's answer, back
/// through the punt path, leaves as from the NodePort.
/// The source and destination (address, port) of an IPv4 TCP segment whose IP and TCP
/// checksums are checked.
fn checked_tcp4_ends(packet: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let ip = Ipv4Packet::new_checked(packet).unwrap();
    assert!(ip.verify_checksum(), "IP checksum");
    let seg = TcpPacket::new_checked(ip.payload()).unwrap();
    let addrs = IpAddrPair::V4 {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
    };
    assert!(seg.verify_checksum(&addrs), "TCP checksum");
    (ip.src_addr(), seg.src_port(), ip.dst_addr(), seg.dst_port())
}

#[test]
fn a_node_port_backend_on_this_node_is_reached_unmasqueraded_through_the_punt_path() {
    let node = v4("198.18.1.1");
    let mut r = Rig::with_services(&[service(vec![Endpoint::ready(node.into(), 8080, true)])]);
    r.tables.punt_to_host = true;
    let syn = tcp(v4(CLIENT), node, 40000, 30080, TcpFlags::SYN);
    r.graph.receive(Packet::received(
        HeapBuffer::from_bytes(&eth(MAC0, CLIENT_MAC, 0x0800, &syn)),
        0,
    ));
    let (punted, sent) = punted_and_sent(&mut r);
    assert!(sent.is_empty(), "{sent:?}");
    assert_eq!(punted.len(), 1, "to the host");
    assert_eq!(
        checked_tcp4_ends(&punted[0]),
        (v4(CLIENT), 40000, node, 8080),
        "the client's own address and port"
    );
    assert_eq!(r.count("ip4-nat", "new_connection"), 1);
    assert_eq!(r.count("ip4-nat", "masqueraded"), 0);
    assert_eq!(r.count("ip4-nat", "no_snat_port"), 0);

    // The host's answer comes back through the punt device and leaves as from the NodePort.
    let synack = tcp(node, v4(CLIENT), 8080, 40000, TcpFlags::SYN | TcpFlags::ACK);
    from_host(&mut r, &synack);
    let (punted, sent) = punted_and_sent(&mut r);
    assert!(punted.is_empty(), "{punted:?}");
    let (port, src, dst, sport, dport, flags) = one_tcp(&sent);
    assert_eq!(
        (port, src, dst, sport, dport),
        (0, node, v4(CLIENT), 30080, 40000)
    );
    assert!(flags.contains(TcpFlags::SYN | TcpFlags::ACK));
    assert_eq!(r.count("ip4-nat", "translated"), 1);
}

/// With several workers the host's packets all come in at the first, but the connection of
/// a client's packet to a backend on this node's address belongs to the worker that took
/// the client's packet: the host's answer is handed over to it and translated there.
#[test]
fn the_hosts_answer_is_handed_to_the_worker_tracking_its_connection() {
    let node = v4("198.18.1.1");
    let svc = service(vec![Endpoint::ready(node.into(), 8080, true)]);
    let shared = crate::worker::SharedState::default();
    let mut w0 = Rig::with_services(std::slice::from_ref(&svc));
    let mut w1 = Rig::with_services(std::slice::from_ref(&svc));
    w0.state.share(0, &shared);
    w1.state.share(1, &shared);
    w1.tables.punt_to_host = true;

    let syn = tcp(v4(CLIENT), node, 40000, 30080, TcpFlags::SYN);
    w1.graph.receive(Packet::received(
        HeapBuffer::from_bytes(&eth(MAC0, CLIENT_MAC, 0x0800, &syn)),
        0,
    ));
    let (punted, _) = punted_and_sent(&mut w1);
    assert_eq!(punted.len(), 1, "to the host");

    let synack = tcp(node, v4(CLIENT), 8080, 40000, TcpFlags::SYN | TcpFlags::ACK);
    from_host(&mut w0, &synack);
    let (punted, sent) = punted_and_sent(&mut w0);
    assert!(punted.is_empty() && sent.is_empty(), "{punted:?} {sent:?}");
    assert_eq!(w0.count("ip4-nat", "handed_off"), 1);
    let (from, handed) = w0.graph.handoff.pop().expect("handed over");
    assert_eq!(Some(from), w0.graph.node_index("ip4-nat"));
    assert_eq!(handed.meta.handoff.worker(), Some(1));
    let (port, src, dst, sport, dport, _) = one_tcp(&w1.inject("ip4-nat", handed));
    assert_eq!(
        (port, src, dst, sport, dport),
        (0, node, v4(CLIENT), 30080, 40000)
    );
}

/// kube-proxy's OUTPUT chain again, for a NodePort on the node's own address (the punt
/// device's policy routing brings the host's own connections to NodePorts here): the
/// connection is masqueraded towards the pod, and the pod's answer, translated back to come
/// from the NodePort, goes to the host.
#[test]
fn the_host_reaches_a_node_port_on_its_own_address_through_the_punt_path() {
    let mut r = Rig::with_services(&[service(vec![backend()])]);
    r.tables.punt_to_host = true;
    let node = v4("198.18.1.1");
    let syn = tcp(node, node, 40000, 30080, TcpFlags::SYN);
    from_host(&mut r, &syn);
    let (punted, sent) = punted_and_sent(&mut r);
    assert!(punted.is_empty(), "{punted:?}");
    let (port, src, dst, sport, dport, _) = one_tcp(&sent);
    assert_eq!(
        (port, src, dst, dport),
        (1, v4("198.18.2.1"), v4(BACKEND), 8080),
        "masqueraded to the address towards the pod"
    );
    assert_eq!(r.count("ip4-nat", "masqueraded"), 1);
    let synack = tcp(v4(BACKEND), src, 8080, sport, TcpFlags::SYN | TcpFlags::ACK);
    r.graph.receive(Packet::received(
        HeapBuffer::from_bytes(&eth(MAC1, SERVER_MAC, 0x0800, &synack)),
        1,
    ));
    let (punted, sent) = punted_and_sent(&mut r);
    assert!(sent.is_empty(), "{sent:?}");
    assert_eq!(punted.len(), 1, "to the host");
    assert_eq!(checked_tcp4_ends(&punted[0]), (node, 30080, node, 40000));
    // The host's next segment follows the connection.
    let ack = tcp(node, node, 40000, 30080, TcpFlags::ACK);
    from_host(&mut r, &ack);
    let (_, sent) = punted_and_sent(&mut r);
    let (_, _, dst, _, dport, _) = one_tcp(&sent);
    assert_eq!((dst, dport), (v4(BACKEND), 8080));
}

/// The same NodePort whose endpoint is the host itself (a host-network pod): the Service's
/// cluster IP stands in for the host as the client, so that the host's answer (to the
/// cluster IP) comes back through the punt device, where it is translated back to come from
/// the NodePort. The host's own traffic to ports of its own that no Service has goes back to
/// the host, which delivers it to itself as it would have.
#[test]
fn the_host_reaches_its_own_node_port_served_by_itself_and_other_ports_go_back() {
    let node = v4("198.18.1.1");
    let mut r = Rig::with_services(&[service(vec![Endpoint::ready(node.into(), 8080, true)])]);
    r.tables.punt_to_host = true;
    from_host(&mut r, &tcp(node, node, 40000, 30080, TcpFlags::SYN));
    let (punted, sent) = punted_and_sent(&mut r);
    assert!(sent.is_empty(), "{sent:?}");
    assert_eq!(punted.len(), 1, "to the host's endpoint");
    let (src, sport, dst, dport) = checked_tcp4_ends(&punted[0]);
    assert_eq!(
        (src, dst, dport),
        (v4(VIP), node, 8080),
        "from the cluster IP"
    );
    assert_eq!(r.count("ip4-nat", "host_to_itself"), 0);
    assert_eq!(r.count("ip4-nat", "no_snat_port"), 0);
    // The host answers the cluster IP through the punt device; the answer goes back to the
    // host as from the NodePort.
    from_host(
        &mut r,
        &tcp(node, v4(VIP), 8080, sport, TcpFlags::SYN | TcpFlags::ACK),
    );
    let (punted, sent) = punted_and_sent(&mut r);
    assert!(sent.is_empty(), "{sent:?}");
    assert_eq!(punted.len(), 1, "{punted:?}");
    assert_eq!(checked_tcp4_ends(&punted[0]), (node, 30080, node, 40000));
    // And the host's next segment follows the connection.
    from_host(&mut r, &tcp(node, node, 40000, 30080, TcpFlags::ACK));
    let (punted, _) = punted_and_sent(&mut r);
    assert_eq!(punted.len(), 1, "{punted:?}");
    assert_eq!(checked_tcp4_ends(&punted[0]), (v4(VIP), sport, node, 8080));

    let other = udp(node, node, 5000, 30999);
    from_host(&mut r, &other);
    let (punted, sent) = punted_and_sent(&mut r);
    assert!(sent.is_empty(), "{sent:?}");
    assert_eq!(punted, vec![other], "back to the host unchanged");
    assert_eq!(r.count("ip4-local", "local_loop"), 0);
}
