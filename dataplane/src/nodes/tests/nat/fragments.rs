//! Fragmented datagrams through the service proxy: every fragment follows its first
//! (`ip{4,6}-vreass`, [`crate::virtual_reassembly`]).

use super::*;
use crate::nodes::vreass::MAX_HELD_PER_DATAGRAM;
use crate::virtual_reassembly::TIMEOUT;

/// A UDP datagram of `len` payload bytes, checksum filled in.
fn udp_segment(addrs: IpAddrPair, sport: u16, dport: u16, len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
    let repr = UdpRepr {
        src_port: sport,
        dst_port: dport,
        payload: &payload,
    };
    let mut seg = vec![0; repr.buffer_len()];
    repr.emit(&mut UdpPacket::new_unchecked(&mut seg[..]), &addrs)
        .unwrap();
    seg
}

/// `seg` (a transport segment of protocol `proto`) as IPv4 fragments of `size` bytes.
fn frags4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    ident: u16,
    seg: &[u8],
    size: usize,
) -> Vec<Vec<u8>> {
    seg.chunks(size)
        .enumerate()
        .map(|(k, chunk)| {
            let mut b = ipv4(src, dst, proto, 64, false, chunk);
            let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
            ip.set_ident(ident);
            ip.set_fragment(false, (k + 1) * size < seg.len(), (k * size) as u16);
            ip.fill_checksum();
            b
        })
        .collect()
}

/// `seg` as IPv6 fragments of `size` bytes, the fragment header naming `nh`.
fn frags6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    nh: u8,
    ident: u32,
    seg: &[u8],
    size: usize,
) -> Vec<Vec<u8>> {
    seg.chunks(size)
        .enumerate()
        .map(|(k, chunk)| {
            let mut fh = vec![nh, 0];
            let word = (k * size) as u16 | u16::from((k + 1) * size < seg.len());
            fh.extend_from_slice(&word.to_be_bytes());
            fh.extend_from_slice(&ident.to_be_bytes());
            fh.extend_from_slice(chunk);
            ipv6(src, dst, IpProtocol::FRAGMENT, 64, &fh)
        })
        .collect()
}

/// The datagram the IPv4 fragments in `out` carry, all sent on one port from one source to
/// one destination (checked): (port, src, dst, sport, dport), its UDP checksum checked.
fn udp_of_fragments4(out: &[(u16, Vec<u8>)]) -> (u16, Ipv4Addr, Ipv4Addr, u16, u16) {
    assert!(!out.is_empty());
    let first = ip4_of(&out[0].1);
    let (port, src, dst) = (out[0].0, first.src_addr(), first.dst_addr());
    let mut seg = vec![0u8; 65_536];
    let (mut got, mut total) = (0, 0);
    for (p, frame) in out {
        let ip = ip4_of(frame);
        assert_eq!((*p, ip.src_addr(), ip.dst_addr()), (port, src, dst));
        let off = usize::from(ip.fragment_offset());
        seg[off..off + ip.payload().len()].copy_from_slice(ip.payload());
        got += ip.payload().len();
        if !ip.more_fragments() {
            total = off + ip.payload().len();
        }
    }
    assert_eq!(got, total, "every byte once");
    let udp = UdpPacket::new_checked(&seg[..total]).unwrap();
    assert!(
        udp.verify_checksum(&IpAddrPair::V4 { src, dst }),
        "UDP checksum"
    );
    (port, src, dst, udp.src_port(), udp.dst_port())
}

/// [`udp_of_fragments4`] for IPv6 fragments.
fn udp_of_fragments6(out: &[(u16, Vec<u8>)]) -> (u16, Ipv6Addr, Ipv6Addr, u16, u16) {
    assert!(!out.is_empty());
    let ip6 = |f: &[u8]| Ipv6Packet::new_checked(f[14..].to_vec()).unwrap();
    let first = ip6(&out[0].1);
    let (port, src, dst) = (out[0].0, first.src_addr(), first.dst_addr());
    let mut seg = vec![0u8; 65_536];
    let (mut got, mut total) = (0, 0);
    for (p, frame) in out {
        let ip = ip6(frame);
        assert_eq!((*p, ip.src_addr(), ip.dst_addr()), (port, src, dst));
        assert_eq!(ip.next_header(), IpProtocol::FRAGMENT);
        let fh = ip.payload();
        let word = u16::from_be_bytes([fh[2], fh[3]]);
        let off = usize::from(word & 0xfff8);
        seg[off..off + fh.len() - 8].copy_from_slice(&fh[8..]);
        got += fh.len() - 8;
        if word & 1 == 0 {
            total = off + fh.len() - 8;
        }
    }
    assert_eq!(got, total, "every byte once");
    let udp = UdpPacket::new_checked(&seg[..total]).unwrap();
    assert!(
        udp.verify_checksum(&IpAddrPair::V6 { src, dst }),
        "UDP checksum"
    );
    (port, src, dst, udp.src_port(), udp.dst_port())
}

fn from_client(ip: &[u8]) -> Vec<u8> {
    let ethertype = if ip[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
    eth(MAC0, CLIENT_MAC, ethertype, ip)
}

fn from_backend(ip: &[u8]) -> Vec<u8> {
    let ethertype = if ip[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
    eth(MAC1, SERVER_MAC, ethertype, ip)
}

impl Rig {
    /// Receives every frame on `port`, then runs the graph once; returns what it sent.
    fn send_together(&mut self, port: u16, frames: &[Vec<u8>]) -> Vec<(u16, Vec<u8>)> {
        for f in frames {
            self.graph
                .receive(Packet::received(HeapBuffer::from_bytes(f), port));
        }
        self.graph.dispatch(&self.tables, &mut self.state, self.now);
        self.graph.dropped.clear();
        self.take_tx()
    }
}

/// A 1200-byte DNS-with-EDNS-sized answer's worth of UDP to the ClusterIP, in three
/// fragments, in order: each is DNATed to the one backend, the datagram's checksum right
/// after the rewrite of the first; the backend's answer, fragmented too, is un-DNATed.
#[test]
fn udp_fragments_to_a_cluster_ip_all_reach_one_backend_and_the_answer_comes_back() {
    let mut r = Rig::with_services(&[service(vec![backend()])]);
    let (client, vip, server) = (v4(CLIENT), v4(VIP), v4(BACKEND));
    let seg = udp_segment(
        IpAddrPair::V4 {
            src: client,
            dst: vip,
        },
        40000,
        80,
        1200,
    );
    let frags = frags4(client, vip, IpProtocol::UDP, 0x4242, &seg, 512);
    assert_eq!(frags.len(), 3);
    let mut out = Vec::new();
    for f in &frags {
        out.extend(r.send(0, &from_client(f)));
    }
    assert_eq!(out.len(), 3, "{:?}", r.graph.counters());
    assert_eq!(udp_of_fragments4(&out), (1, client, server, 40000, 8080));
    assert_eq!(r.count("ip4-vreass", "learned"), 1);
    assert_eq!(r.count("ip4-vreass", "followed"), 2);
    assert_eq!(r.count("ip4-nat", "new_connection"), 1);
    assert_eq!(r.count("ip4-nat", "fragment_followed"), 2);
    assert_eq!(r.count("ip4-nat", "fragment"), 0);

    let seg = udp_segment(
        IpAddrPair::V4 {
            src: server,
            dst: client,
        },
        8080,
        40000,
        1000,
    );
    let frags = frags4(server, client, IpProtocol::UDP, 0x0101, &seg, 400);
    let mut out = Vec::new();
    for f in &frags {
        out.extend(r.send(1, &from_backend(f)));
    }
    assert_eq!(out.len(), 3);
    assert_eq!(udp_of_fragments4(&out), (0, vip, client, 80, 40000));
    assert_eq!(r.count("ip4-nat", "fragment_followed"), 4);
    // A router with nothing to translate never sends fragments there.
    r.tables.services = None;
    let frags = frags4(client, server, IpProtocol::UDP, 0x4343, &seg, 400);
    let out = r.send_together(0, &frags.iter().map(|f| from_client(f)).collect::<Vec<_>>());
    assert_eq!(out.len(), 3);
    assert_eq!(r.count("ip4-vreass", "learned"), 2);
}

/// Fragments that come before their first are held and follow it, in the order they came:
/// one by one over several turns of the graph, and all in one vector.
#[test]
fn fragments_before_their_first_are_held_until_it_comes() {
    let mut r = Rig::with_services(&[service(vec![backend()])]);
    let (client, vip, server) = (v4(CLIENT), v4(VIP), v4(BACKEND));
    let seg = udp_segment(
        IpAddrPair::V4 {
            src: client,
            dst: vip,
        },
        40000,
        80,
        1200,
    );
    let frags = frags4(client, vip, IpProtocol::UDP, 7, &seg, 512);
    assert!(r.send(0, &from_client(&frags[2])).is_empty());
    assert!(r.send(0, &from_client(&frags[1])).is_empty());
    assert_eq!(r.graph.parked(), 2);
    let out = r.send(0, &from_client(&frags[0]));
    assert_eq!(out.len(), 3);
    assert_eq!(r.graph.parked(), 0);
    // The first, then the held ones as they came.
    let offsets: Vec<u16> = out
        .iter()
        .map(|(_, f)| ip4_of(f).fragment_offset())
        .collect();
    assert_eq!(offsets, [0, 1024, 512]);
    assert_eq!(udp_of_fragments4(&out), (1, client, server, 40000, 8080));
    assert_eq!(r.count("ip4-vreass", "held"), 2);
    assert_eq!(r.count("ip4-vreass", "released"), 2);

    // Another datagram of the same flow, its fragments in one vector, last first.
    let frags = frags4(client, vip, IpProtocol::UDP, 8, &seg, 512);
    let vector: Vec<Vec<u8>> = [2, 0, 1].iter().map(|&k| from_client(&frags[k])).collect();
    let out = r.send_together(0, &vector);
    assert_eq!(out.len(), 3, "{:?}", r.graph.counters());
    assert_eq!(udp_of_fragments4(&out), (1, client, server, 40000, 8080));
    assert_eq!(r.graph.parked(), 0);
    assert_eq!(r.count("ip4-nat", "new_connection"), 1);
}

/// The same over IPv6 (RFC 8200 fragment headers), both ways.
#[test]
fn ipv6_udp_fragments_to_a_cluster_ip_and_back() {
    let vip6 = v6("2001:db8:ffff::10");
    let client6 = v6("2001:db8:1::2");
    let backend6 = v6("2001:db8:2::2");
    let svc = Service {
        cluster_ips: vec![vip6.into()],
        ..service(vec![Endpoint::ready(backend6.into(), 8080, true)])
    };
    let mut r = Rig::with_services(&[svc]);
    let seg = udp_segment(
        IpAddrPair::V6 {
            src: client6,
            dst: vip6,
        },
        40000,
        80,
        1200,
    );
    let frags = frags6(client6, vip6, 17, 0xdead_beef, &seg, 512);
    let mut out = r.send(0, &from_client(&frags[1]));
    assert!(out.is_empty());
    out.extend(r.send(0, &from_client(&frags[0])));
    out.extend(r.send(0, &from_client(&frags[2])));
    assert_eq!(out.len(), 3, "{:?}", r.graph.counters());
    assert_eq!(udp_of_fragments6(&out), (1, client6, backend6, 40000, 8080));
    assert_eq!(r.count("ip6-vreass", "held"), 1);

    let seg = udp_segment(
        IpAddrPair::V6 {
            src: backend6,
            dst: client6,
        },
        8080,
        40000,
        1000,
    );
    let frags = frags6(backend6, client6, 17, 5, &seg, 512);
    let out = r.send_together(
        1,
        &frags.iter().map(|f| from_backend(f)).collect::<Vec<_>>(),
    );
    assert_eq!(out.len(), 2);
    assert_eq!(udp_of_fragments6(&out), (0, vip6, client6, 80, 40000));
    assert_eq!(r.count("ip6-nat", "fragment_followed"), 3);
}

/// Held fragments whose first never comes are dropped after the timeout; more than a
/// datagram may hold are dropped at once. Both counted.
#[test]
fn held_fragments_expire_and_overflow() {
    let mut r = Rig::with_services(&[service(vec![backend()])]);
    let (client, vip) = (v4(CLIENT), v4(VIP));
    let seg = udp_segment(
        IpAddrPair::V4 {
            src: client,
            dst: vip,
        },
        40000,
        80,
        16 * 64,
    );
    let frags = frags4(client, vip, IpProtocol::UDP, 9, &seg, 64);
    let later: Vec<Vec<u8>> = frags[1..=MAX_HELD_PER_DATAGRAM + 1]
        .iter()
        .map(|f| from_client(f))
        .collect();
    assert!(r.send_together(0, &later).is_empty());
    assert_eq!(r.count("ip4-vreass", "held"), MAX_HELD_PER_DATAGRAM as u64);
    assert_eq!(r.count("ip4-vreass", "held_overflow"), 1);
    r.now += TIMEOUT - 1;
    r.graph.dispatch(&r.tables, &mut r.state, r.now);
    assert_eq!(r.graph.parked(), MAX_HELD_PER_DATAGRAM);
    r.now += 1;
    r.graph.dispatch(&r.tables, &mut r.state, r.now);
    assert_eq!(r.graph.parked(), 0);
    assert_eq!(
        r.count("ip4-vreass", "held_expired"),
        MAX_HELD_PER_DATAGRAM as u64
    );
    assert!(r.take_tx().is_empty());
}

/// RFC 1858 / RFC 3128: a TCP first fragment too short for the TCP header, and a TCP
/// fragment at offset 8, are dropped.
#[test]
fn tiny_first_fragments_and_tcp_offset_one_are_dropped() {
    let mut r = Rig::with_services(&[service(vec![backend()])]);
    let (client, vip) = (v4(CLIENT), v4(VIP));
    let syn = tcp(client, vip, 40000, 80, TcpFlags::SYN);
    let seg = &syn[20..];
    let frags = frags4(client, vip, IpProtocol::TCP, 11, seg, 8);
    assert!(r.send(0, &from_client(&frags[0])).is_empty());
    assert_eq!(r.count("ip4-vreass", "tiny_first_fragment"), 1);
    assert!(r.send(0, &from_client(&frags[1])).is_empty());
    assert_eq!(r.count("ip4-vreass", "tcp_offset_one"), 1);
    assert_eq!(r.count("ip4-nat", "new_connection"), 0);
}

/// A NetworkPolicy port rule judges every fragment as it judges the first: the server pod
/// admits UDP to port 53 from the client subnet, so a fragmented datagram to 53 passes whole
/// (and its fragmented answer comes back as a reply) and one to port 54 is dropped whole,
/// whatever order its fragments come in.
#[test]
fn a_policy_port_rule_judges_every_fragment_as_the_first() {
    use crate::acl::AclRuleSpec;
    use crate::policy::{AclTable, PodAcls, PolicyTables};

    let (client, server) = (v4(CLIENT), v4(BACKEND));
    let rule = AclRuleSpec {
        peer: "198.18.1.0/24".parse().unwrap(),
        protocol: Some(17),
        ports: (53, 53),
    };
    let acl = AclTable::new("server-in", vec![rule], false, vec![Arc::from("test")]);
    let policy = PolicyTables {
        acls: vec![Arc::new(acl)],
        pods: [(
            server.into(),
            PodAcls {
                ingress: Some(0),
                egress: None,
            },
        )]
        .into_iter()
        .collect(),
    };
    let mut r = Rig::new();
    r.tables.policy = Some(Arc::new(policy));
    r.tables.version = 2;
    r.state.sync_services(&r.tables);
    r.learn_client_and_server();

    let datagram = |dport: u16, ident: u16| {
        let seg = udp_segment(
            IpAddrPair::V4 {
                src: client,
                dst: server,
            },
            40000,
            dport,
            1200,
        );
        frags4(client, server, IpProtocol::UDP, ident, &seg, 512)
    };
    let allowed = datagram(53, 1);
    let out = r.send_together(
        0,
        &allowed.iter().map(|f| from_client(f)).collect::<Vec<_>>(),
    );
    assert_eq!(out.len(), 3, "{:?}", r.graph.counters());
    assert_eq!(udp_of_fragments4(&out), (1, client, server, 40000, 53));
    assert_eq!(r.count("ip4-acl", "allowed_new"), 1);
    assert_eq!(r.count("ip4-acl", "established"), 2);

    let seg = udp_segment(
        IpAddrPair::V4 {
            src: server,
            dst: client,
        },
        53,
        40000,
        1000,
    );
    let answer = frags4(server, client, IpProtocol::UDP, 2, &seg, 400);
    let out = r.send_together(
        1,
        &answer.iter().map(|f| from_backend(f)).collect::<Vec<_>>(),
    );
    assert_eq!(out.len(), 3);
    assert_eq!(udp_of_fragments4(&out), (0, server, client, 53, 40000));

    for order in [[0, 1, 2], [2, 1, 0]] {
        let denied = datagram(54, 3 + order[0] as u16);
        let mut out = Vec::new();
        for k in order {
            out.extend(r.send(0, &from_client(&denied[k])));
        }
        assert!(out.is_empty(), "{order:?}: {out:?}");
        assert_eq!(r.graph.parked(), 0);
    }
    assert_eq!(r.count("ip4-acl", "ingress_denied"), 6);
    assert_eq!(r.count("ip4-acl", "fragment_followed"), 2 + 2 + 4);
}

/// Two workers: the connection is worker 0's, the backend's fragmented answer reaches worker
/// 1, which learns its ports and hands every fragment over in order; worker 0 takes the
/// first's ports up and un-DNATs them all.
#[test]
fn fragments_another_worker_tracks_are_handed_over_and_followed_there() {
    let shared = crate::worker::SharedState::default();
    let mut w0 = Rig::with_services(&[service(vec![backend()])]);
    let mut w1 = Rig::with_services(&[service(vec![backend()])]);
    w0.state.share(0, &shared);
    w1.state.share(1, &shared);
    let (client, vip, server) = (v4(CLIENT), v4(VIP), v4(BACKEND));
    let query = udp(client, vip, 40000, 80);
    assert_eq!(w0.send(0, &from_client(&query)).len(), 1);

    let seg = udp_segment(
        IpAddrPair::V4 {
            src: server,
            dst: client,
        },
        8080,
        40000,
        1000,
    );
    let answer = frags4(server, client, IpProtocol::UDP, 77, &seg, 400);
    let sent = w1.send_together(
        1,
        &answer.iter().map(|f| from_backend(f)).collect::<Vec<_>>(),
    );
    assert!(sent.is_empty());
    assert_eq!(w1.count("ip4-nat", "handed_off"), 3);
    let mut out = Vec::new();
    for (node, handed) in std::mem::take(&mut w1.graph.handoff) {
        assert_eq!(Some(node), w0.graph.node_index("ip4-nat"));
        out.extend(w0.inject("ip4-nat", handed));
    }
    assert_eq!(out.len(), 3, "{:?}", w0.graph.counters());
    assert_eq!(udp_of_fragments4(&out), (0, vip, client, 80, 40000));
    assert_eq!(w0.count("ip4-nat", "fragment_followed"), 2);
}

/// The edge role tunnels without connections: every fragment of a datagram to a GRE Service
/// goes in the tunnel to the backend its first went to, unchanged inside.
#[test]
fn fragments_to_a_tunnelled_service_follow_their_first_into_the_tunnel() {
    let svc = Service {
        forwarding: switchyard_lb::service::Forwarding::Gre,
        ..service(vec![backend()])
    };
    let mut r = Rig::with_services(&[svc]);
    let (client, vip) = (v4(CLIENT), v4(VIP));
    let seg = udp_segment(
        IpAddrPair::V4 {
            src: client,
            dst: vip,
        },
        40000,
        80,
        1200,
    );
    let frags = frags4(client, vip, IpProtocol::UDP, 21, &seg, 512);
    let out = r.send_together(0, &frags.iter().map(|f| from_client(f)).collect::<Vec<_>>());
    assert_eq!(out.len(), 3, "{:?}", r.graph.counters());
    for ((port, frame), sent) in out.iter().zip(&frags) {
        let outer = ip4_of(frame);
        assert_eq!((*port, outer.protocol().0), (1, 47));
        assert_eq!(outer.dst_addr(), v4(BACKEND));
        let inner = Ipv4Packet::new_checked(&outer.payload()[4..]).unwrap();
        assert_eq!(inner.payload(), &sent[20..], "unchanged inside");
        assert_eq!((inner.src_addr(), inner.dst_addr()), (client, vip));
    }
    assert_eq!(r.count("ip4-nat", "encapsulated"), 3);
    assert_eq!(r.state.conntrack.len(), 0);
}

/// A first fragment to a Service without endpoints is refused (port unreachable); the later
/// fragments, with no connection to follow, are dropped rather than sent on to the VIP.
#[test]
fn later_fragments_of_a_refused_datagram_are_dropped() {
    let mut r = Rig::with_services(&[service(vec![])]);
    let (client, vip) = (v4(CLIENT), v4(VIP));
    let seg = udp_segment(
        IpAddrPair::V4 {
            src: client,
            dst: vip,
        },
        40000,
        80,
        1200,
    );
    let frags = frags4(client, vip, IpProtocol::UDP, 31, &seg, 512);
    let out = r.send_together(0, &frags.iter().map(|f| from_client(f)).collect::<Vec<_>>());
    assert_eq!(out.len(), 1, "only the port unreachable");
    assert_eq!(ip4_of(&out[0].1).protocol(), IpProtocol::ICMP);
    assert_eq!(r.count("ip4-nat", "rejected"), 1);
    assert_eq!(r.count("ip4-nat", "fragment_without_connection"), 2);
}
