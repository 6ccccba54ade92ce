//! kube-proxy's `cluster-ips-check` (`pkg/proxy/nftables/proxier.go`, "Reject traffic to
//! invalid ports of ClusterIPs"): a new connection to a cluster IP that no Service port
//! takes is refused with a bare `reject`, an ICMP (ICMPv6) port unreachable, whatever the
//! protocol, pings included. Other addresses (external and load-balancer IPs included) are
//! left to routing.
//!
//! The cluster IP here, 198.19.0.10, is in the rig's routed 198.19.0.0/16, so what is not
//! refused would be forwarded towards 198.18.2.3 or 198.18.2.4 on port 1.

use super::*;

const CLUSTER_IP: &str = "198.19.0.10";
const LB_IP: &str = "198.19.0.80";
const CLUSTER_IP6: &str = "2001:db8:ffff::10";
const CLIENT6: &str = "2001:db8:1::2";

/// The web Service (TCP and UDP port 80, NodePort 30080) on [`CLUSTER_IP`] and
/// [`CLUSTER_IP6`], with a load-balancer IP, and a rig whose routed range has its
/// gateways known.
fn rig(endpoints: Vec<Endpoint>) -> Rig {
    let svc = Service {
        cluster_ips: vec![v4(CLUSTER_IP).into(), v6(CLUSTER_IP6).into()],
        load_balancer_ips: vec![v4(LB_IP).into()],
        ..service(endpoints)
    };
    let mut r = Rig::with_services(&[svc]);
    for gateway in ["198.18.2.3", "198.18.2.4"] {
        r.state
            .neighbors
            .insert_permanent(1, v4(gateway).into(), SERVER_MAC);
    }
    r
}

fn from_client(r: &mut Rig, ip: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let ethertype = if ip[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
    r.send(0, &eth(MAC0, CLIENT_MAC, ethertype, ip))
}

/// An SCTP packet (common header and an INIT chunk's first bytes; nothing checks its CRC).
fn sctp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut seg = Vec::new();
    seg.extend_from_slice(&sport.to_be_bytes());
    seg.extend_from_slice(&dport.to_be_bytes());
    seg.extend_from_slice(&[0; 8]);
    seg.extend_from_slice(&[1, 0, 0, 4]);
    ipv4(src, dst, IpProtocol(132), 64, true, &seg)
}

fn ping(dst: Ipv4Addr, kind: u8) -> Vec<u8> {
    ipv4(
        v4(CLIENT),
        dst,
        IpProtocol::ICMP,
        64,
        false,
        &icmp_echo(kind, 8),
    )
}

/// The single frame sent must be an ICMPv6 port unreachable to [`CLIENT6`] quoting `refused`.
fn one_port_unreachable6(out: &[(u16, Vec<u8>)], refused: &[u8]) {
    assert_eq!(out.len(), 1, "{out:?}");
    let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
    assert_eq!(ip.next_header(), IpProtocol::ICMPV6, "an ICMPv6 error");
    assert_eq!(ip.dst_addr(), v6(CLIENT6));
    let msg = ip.payload();
    assert_eq!((msg[0], msg[1]), (1, 4), "port unreachable");
    assert_eq!(icmpv6_checksum(&ip.src_addr(), &v6(CLIENT6), msg), 0);
    assert_eq!(&msg[8..], refused, "the refused packet quoted");
}

/// The single frame sent must be `ip` forwarded out of port 1 with its TTL one less.
fn forwarded_unchanged(out: &[(u16, Vec<u8>)], ip: &[u8]) {
    assert_eq!(out.len(), 1, "{out:?}");
    let (port, frame) = &out[0];
    assert_eq!(*port, 1);
    let sent = ip4_of(frame);
    let sent_bytes = &frame[14..14 + usize::from(sent.total_len())];
    assert_eq!(sent.ttl(), ip[8] - 1);
    assert_eq!(&sent_bytes[12..20], &ip[12..20], "same addresses");
    assert_eq!(&sent_bytes[20..], &ip[20..], "same payload");
}

#[test]
fn tcp_udp_and_sctp_to_a_cluster_ip_on_a_port_it_does_not_have_are_refused() {
    let mut r = rig(vec![backend()]);
    let refused = [
        tcp(v4(CLIENT), v4(CLUSTER_IP), 40000, 81, TcpFlags::SYN),
        // Mid-stream, of no connection known here: as new to conntrack (tcp_loose).
        tcp(v4(CLIENT), v4(CLUSTER_IP), 40001, 443, TcpFlags::ACK),
        udp(v4(CLIENT), v4(CLUSTER_IP), 5000, 53),
        // The Service has port 80 for TCP and UDP only.
        sctp(v4(CLIENT), v4(CLUSTER_IP), 5000, 80),
        // The NodePort is not a port of the cluster IP.
        tcp(v4(CLIENT), v4(CLUSTER_IP), 40002, 30080, TcpFlags::SYN),
    ];
    for ip in &refused {
        let out = from_client(&mut r, ip);
        let (port, src) = one_port_unreachable(&out, v4(CLIENT), ip);
        assert_eq!(
            (port, src),
            (0, v4("198.18.1.1")),
            "from the receiving interface"
        );
    }
    assert_eq!(r.count("ip4-nat", "no_service_port"), 5);
    assert_eq!(r.count("icmp4-error", "sent"), 5);
    assert_eq!(r.count("ip4-nat", "rejected"), 0);
    assert_eq!(r.state.conntrack.len(), 0);

    // The Service's own port is served as before, and its connection is not disturbed.
    let syn = tcp(v4(CLIENT), v4(CLUSTER_IP), 40003, 80, TcpFlags::SYN);
    let (_, _, dst, _, dport, _) = one_tcp(&from_client(&mut r, &syn));
    assert_eq!((dst, dport), (v4(BACKEND), 8080));
    let synack = tcp(
        v4(BACKEND),
        v4(CLIENT),
        8080,
        40003,
        TcpFlags::SYN | TcpFlags::ACK,
    );
    let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &synack));
    let (_, src, _, sport, _, _) = one_tcp(&out);
    assert_eq!((src, sport), (v4(CLUSTER_IP), 80));
    assert_eq!(r.count("ip4-nat", "no_service_port"), 5);
}

/// `ping <cluster IP>`: "Destination Port Unreachable", as with kube-proxy. Conntrack takes
/// only ICMP queries as new: an echo reply or an error about no known flow is routed as before.
#[test]
fn a_ping_to_a_cluster_ip_is_refused_with_port_unreachable() {
    let mut r = rig(vec![backend()]);
    let echo = ping(v4(CLUSTER_IP), 8);
    one_port_unreachable(&from_client(&mut r, &echo), v4(CLIENT), &echo);
    // Timestamp request: a query too.
    let timestamp = ping(v4(CLUSTER_IP), 13);
    one_port_unreachable(&from_client(&mut r, &timestamp), v4(CLIENT), &timestamp);
    assert_eq!(r.count("ip4-nat", "no_service_port"), 2);

    let reply = ping(v4(CLUSTER_IP), 0);
    forwarded_unchanged(&from_client(&mut r, &reply), &reply);
    let quoted = udp(v4(CLUSTER_IP), v4(CLIENT), 53, 5000);
    let mut msg = vec![3, 3, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(&quoted);
    let c = checksum::checksum(&msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    let error = ipv4(
        v4(CLIENT),
        v4(CLUSTER_IP),
        IpProtocol::ICMP,
        64,
        false,
        &msg,
    );
    forwarded_unchanged(&from_client(&mut r, &error), &error);
    assert_eq!(r.count("ip4-nat", "no_service_port"), 2);
}

/// A Service without endpoints: its ports reject (`rejected`), its other ports are refused
/// as any cluster IP's (`no_service_port`); both with a port unreachable.
#[test]
fn a_cluster_ip_without_endpoints_refuses_on_every_port() {
    let mut r = rig(vec![]);
    let on_port = tcp(v4(CLIENT), v4(CLUSTER_IP), 40000, 80, TcpFlags::SYN);
    one_port_unreachable(&from_client(&mut r, &on_port), v4(CLIENT), &on_port);
    let elsewhere = udp(v4(CLIENT), v4(CLUSTER_IP), 5000, 8080);
    one_port_unreachable(&from_client(&mut r, &elsewhere), v4(CLIENT), &elsewhere);
    assert_eq!(r.count("ip4-nat", "rejected"), 1);
    assert_eq!(r.count("ip4-nat", "no_service_port"), 1);
}

/// A stray reset to a cluster IP is no new connection (conntrack: invalid): it draws no
/// error and is routed as before.
#[test]
fn a_stray_reset_to_a_cluster_ip_draws_no_error() {
    let mut r = rig(vec![backend()]);
    let rst = tcp(v4(CLIENT), v4(CLUSTER_IP), 40000, 81, TcpFlags::RST);
    forwarded_unchanged(&from_client(&mut r, &rst), &rst);
    assert_eq!(r.count("ip4-nat", "no_service_port"), 0);
}

/// kube-proxy's set holds cluster IPs only: a load-balancer IP (or any other address) on a
/// port no Service has is routed as before.
#[test]
fn other_addresses_on_ports_no_service_has_are_routed_as_before() {
    let mut r = rig(vec![backend()]);
    for ip in [
        tcp(v4(CLIENT), v4(LB_IP), 40000, 81, TcpFlags::SYN),
        udp(v4(CLIENT), v4(LB_IP), 5000, 53),
        ping(v4(LB_IP), 8),
        // Next to the cluster IP.
        tcp(v4(CLIENT), v4("198.19.0.11"), 40000, 80, TcpFlags::SYN),
        ping(v4("198.19.0.9"), 8),
    ] {
        forwarded_unchanged(&from_client(&mut r, &ip), &ip);
    }
    assert_eq!(r.count("ip4-nat", "no_service_port"), 0);
    assert_eq!(r.state.conntrack.len(), 0);
    // The load-balancer IP's own port is the Service's.
    let syn = tcp(v4(CLIENT), v4(LB_IP), 40001, 80, TcpFlags::SYN);
    let (_, _, dst, _, dport, _) = one_tcp(&from_client(&mut r, &syn));
    assert_eq!((dst, dport), (v4(BACKEND), 8080));
}

#[test]
fn ipv6_tcp_udp_and_ping_to_a_cluster_ip_on_a_port_it_does_not_have_are_refused() {
    let mut r = rig(vec![backend()]);
    let (client, vip) = (v6(CLIENT6), v6(CLUSTER_IP6));
    let udp6 = {
        let repr = UdpRepr {
            src_port: 5000,
            dst_port: 53,
            payload: b"hello",
        };
        let mut seg = vec![0; repr.buffer_len()];
        let addrs = IpAddrPair::V6 {
            src: client,
            dst: vip,
        };
        repr.emit(&mut UdpPacket::new_unchecked(&mut seg[..]), &addrs)
            .unwrap();
        ipv6(client, vip, IpProtocol::UDP, 64, &seg)
    };
    for ip in [
        tcp6(client, vip, 40000, 81, TcpFlags::SYN),
        udp6,
        echo6(client, vip, 64),
    ] {
        one_port_unreachable6(&from_client(&mut r, &ip), &ip);
    }
    assert_eq!(r.count("ip6-nat", "no_service_port"), 3);
    assert_eq!(r.count("ip4-nat", "no_service_port"), 0);
}

/// kube-proxy's check is in the output path too: the node pinging a cluster IP from its own
/// stack (through the punt device) gets the port unreachable.
#[test]
fn the_host_pinging_a_cluster_ip_gets_port_unreachable() {
    let mut r = rig(vec![backend()]);
    r.tables.punt_to_host = true;
    let node = v4("198.18.1.1");
    let echo = ipv4(
        node,
        v4(CLUSTER_IP),
        IpProtocol::ICMP,
        64,
        false,
        &icmp_echo(8, 8),
    );
    from_host(&mut r, &echo);
    let (punted, sent) = punted_and_sent(&mut r);
    assert!(sent.is_empty(), "{sent:?}");
    assert_eq!(punted.len(), 1, "to the host");
    let ip = Ipv4Packet::new_checked(&punted[0][..]).unwrap();
    assert_eq!((ip.protocol(), ip.dst_addr()), (IpProtocol::ICMP, node));
    assert_eq!((ip.payload()[0], ip.payload()[1]), (3, 3));
    assert_eq!(r.count("ip4-nat", "no_service_port"), 1);
}
