//! The router graph end to end on in-memory frames: each test sends frames into a two-port
//! router and checks the frames it transmits, byte by byte where it matters.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::router_graph;
use crate::buffer::{HeapBuffer, PacketBuffer};
use crate::graph::{Graph, Packet};
use crate::tables::{Interface, RouteTarget, StaticRoute, Tables};
use crate::wire::{
    checksum, IpAddrPair, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpFlags,
    TcpPacket, TcpRepr,
};
use crate::worker::WorkerState;

const MAC0: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const MAC1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x51];
const BCAST: [u8; 6] = [0xff; 6];

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

struct Rig {
    graph: Graph<HeapBuffer>,
    tables: Tables,
    state: WorkerState,
    now: u64,
}

impl Rig {
    fn new() -> Self {
        let mut a = Interface::new("c0", MAC0, 1500);
        a.ipv4.push("198.18.1.1/24".parse().unwrap());
        a.ipv6.push("2001:db8:1::1/64".parse().unwrap());
        let mut b = Interface::new("s0", MAC1, 1400);
        b.ipv4.push("198.18.2.1/24".parse().unwrap());
        b.ipv6.push("2001:db8:2::1/64".parse().unwrap());
        let tables = Tables::build(
            1,
            vec![a, b],
            &[StaticRoute {
                prefix: "198.19.0.0/16".parse().unwrap(),
                target: RouteTarget::Via(vec![
                    (Some("198.18.2.3".parse().unwrap()), None),
                    (Some("198.18.2.4".parse().unwrap()), None),
                ]),
            }],
        )
        .unwrap();
        Rig {
            graph: router_graph(2).unwrap(),
            tables,
            state: WorkerState::default(),
            now: 1_000_000_000,
        }
    }

    /// Sends one frame in on `port`; returns every frame sent, with its port.
    fn send(&mut self, port: u16, frame: &[u8]) -> Vec<(u16, Vec<u8>)> {
        self.graph
            .receive(Packet::received(HeapBuffer::from_bytes(frame), port));
        self.graph.dispatch(&self.tables, &mut self.state, self.now);
        let out = self.take_tx();
        self.graph.dropped.clear();
        self.graph.punt.clear();
        out
    }

    /// Every frame the graph queued for transmission, with its port, taken out.
    fn take_tx(&mut self) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        for (p, q) in self.graph.tx.iter_mut().enumerate() {
            for b in q.drain(..) {
                out.push((p as u16, b.data().to_vec()));
            }
        }
        out
    }

    /// Runs the graph on `pkt`, queued at `node` (as a packet handed over by another worker
    /// is); returns every frame sent.
    fn inject(&mut self, node: &str, pkt: Packet<HeapBuffer>) -> Vec<(u16, Vec<u8>)> {
        let node = self.graph.node_index(node).expect("node exists");
        self.graph.inject(node, pkt);
        self.graph.dispatch(&self.tables, &mut self.state, self.now);
        self.take_tx()
    }

    fn count(&self, node: &str, key: &str) -> u64 {
        self.graph
            .error_count(node, key)
            .unwrap_or_else(|| panic!("{node}/{key}"))
    }

    fn learn_client_and_server(&mut self) {
        self.state
            .neighbors
            .insert_permanent(0, v4("198.18.1.2").into(), CLIENT_MAC);
        self.state
            .neighbors
            .insert_permanent(1, v4("198.18.2.2").into(), SERVER_MAC);
        self.state
            .neighbors
            .insert_permanent(0, v6("2001:db8:1::2").into(), CLIENT_MAC);
        self.state
            .neighbors
            .insert_permanent(1, v6("2001:db8:2::2").into(), SERVER_MAC);
    }
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The ICMPv6 checksum of `msg`: the value to store when the field is zero, 0 when correct.
fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let pseudo = checksum::pseudo_header_ipv6(src, dst, IpProtocol::ICMPV6, msg.len() as u32);
    checksum::finish(checksum::combine(pseudo, checksum::sum(msg)))
}

fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    ttl: u8,
    df: bool,
    payload: &[u8],
) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: proto,
        payload_len: payload.len(),
        ttl,
        dscp: 0,
        ecn: 0,
        ident: 0x1234,
        dont_fragment: df,
        more_fragments: false,
        fragment_offset: 0,
    };
    let mut b = vec![0; 20 + payload.len()];
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut b[..]))
        .unwrap();
    b[20..].copy_from_slice(payload);
    b
}

fn icmp_echo(kind: u8, len: usize) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0, 0x12, 0x34, 0, 1];
    m.extend((0..len).map(|i| i as u8));
    let c = checksum::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: IpProtocol, hop: u8, payload: &[u8]) -> Vec<u8> {
    let repr = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: next,
        payload_len: payload.len(),
        hop_limit: hop,
        traffic_class: 0,
        flow_label: 0,
    };
    let mut b = vec![0; 40 + payload.len()];
    repr.emit(&mut Ipv6Packet::new_unchecked(&mut b[..]))
        .unwrap();
    b[40..].copy_from_slice(payload);
    b
}

fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, mut msg: Vec<u8>) -> Vec<u8> {
    msg[2..4].fill(0);
    let c = icmpv6_checksum(&src, &dst, &msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    msg
}

fn echo6(src: Ipv6Addr, dst: Ipv6Addr, hop: u8) -> Vec<u8> {
    let msg = icmp6(src, dst, vec![128, 0, 0, 0, 0, 7, 0, 1, 0xaa, 0xbb]);
    ipv6(src, dst, IpProtocol::ICMPV6, hop, &msg)
}

fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    a
}

fn ip4_of(frame: &[u8]) -> Ipv4Packet<&[u8]> {
    let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
    assert!(ip.verify_checksum());
    ip
}

#[test]
fn answers_arp_for_its_address_and_learns_the_asker() {
    let mut r = Rig::new();
    let req = arp(1, CLIENT_MAC, v4("198.18.1.2"), [0; 6], v4("198.18.1.1"));
    let out = r.send(0, &eth(BCAST, CLIENT_MAC, 0x0806, &req));
    assert_eq!(out.len(), 1);
    let (port, f) = &out[0];
    assert_eq!(*port, 0);
    assert_eq!(&f[0..6], &CLIENT_MAC);
    assert_eq!(&f[6..12], &MAC0);
    assert_eq!(&f[12..14], &[8, 6]);
    assert_eq!(
        &f[14..],
        &arp(2, MAC0, v4("198.18.1.1"), CLIENT_MAC, v4("198.18.1.2"))[..]
    );
    assert_eq!(
        r.state.neighbors.get(0, v4("198.18.1.2").into()),
        Some(CLIENT_MAC)
    );
    // For another host: nothing sent, nothing learned.
    let other = arp(
        1,
        [2, 0, 0, 0, 0, 0x99],
        v4("198.18.1.9"),
        [0; 6],
        v4("198.18.1.7"),
    );
    assert!(r
        .send(0, &eth(BCAST, [2, 0, 0, 0, 0, 0x99], 0x0806, &other))
        .is_empty());
    assert_eq!(r.state.neighbors.get(0, v4("198.18.1.9").into()), None);
    assert_eq!(r.count("arp-input", "not_for_us"), 1);
}

#[test]
fn answers_ping_to_its_address() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let ping = ipv4(
        v4("198.18.1.2"),
        v4("198.18.1.1"),
        IpProtocol::ICMP,
        64,
        false,
        &icmp_echo(8, 32),
    );
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &ping));
    assert_eq!(out.len(), 1);
    let f = &out[0].1;
    assert_eq!(&f[0..6], &CLIENT_MAC);
    let ip = ip4_of(f);
    assert_eq!(
        (ip.src_addr(), ip.dst_addr()),
        (v4("198.18.1.1"), v4("198.18.1.2"))
    );
    assert_eq!(ip.payload()[0], 0);
    assert!(checksum::verify(ip.payload()));
    assert_eq!(&ip.payload()[4..], &icmp_echo(8, 32)[4..]);
}

#[test]
fn forwards_with_ttl_decrement_and_new_macs() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let pkt = ipv4(
        v4("198.18.1.2"),
        v4("198.18.2.2"),
        IpProtocol::UDP,
        64,
        false,
        &[0, 1, 0, 2, 0, 8, 0, 0],
    );
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
    assert_eq!(out.len(), 1);
    let (port, f) = &out[0];
    assert_eq!(*port, 1);
    assert_eq!(&f[0..6], &SERVER_MAC);
    assert_eq!(&f[6..12], &MAC1);
    let ip = ip4_of(f);
    assert_eq!(ip.ttl(), 63);
    assert_eq!(ip.payload(), &pkt[20..]);
}

/// A next hop the neighbor table knows gets its Ethernet header in `ip{4,6}-rewrite`, as a
/// complete adjacency; a traced packet still goes through `neighbor-output`, whose trace line
/// names the neighbor, and leaves with the same header.
#[test]
fn known_next_hop_gets_its_header_in_rewrite() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let packets = |r: &Rig, node: &str| {
        r.graph
            .counters()
            .iter()
            .find(|c| c.name == node)
            .map_or(0, |c| c.packets)
    };
    let udp = [0, 1, 0, 2, 0, 8, 0, 0];
    let frame4 = eth(
        MAC0,
        CLIENT_MAC,
        0x0800,
        &ipv4(
            v4("198.18.1.2"),
            v4("198.18.2.2"),
            IpProtocol::UDP,
            64,
            false,
            &udp,
        ),
    );
    let frame6 = eth(
        MAC0,
        CLIENT_MAC,
        0x86dd,
        &ipv6(
            v6("2001:db8:1::2"),
            v6("2001:db8:2::2"),
            IpProtocol::UDP,
            64,
            &udp,
        ),
    );
    let untraced: Vec<_> = [&frame4, &frame6]
        .iter()
        .flat_map(|f| r.send(0, f))
        .collect();
    assert_eq!(packets(&r, "ip4-rewrite"), 1);
    assert_eq!(packets(&r, "ip6-rewrite"), 1);
    assert_eq!(packets(&r, "neighbor-output"), 0);

    r.graph.trace.pending = 2;
    let traced: Vec<_> = [&frame4, &frame6]
        .iter()
        .flat_map(|f| r.send(0, f))
        .collect();
    assert_eq!(packets(&r, "neighbor-output"), 2);
    assert_eq!(traced, untraced);
    for (port, f) in &traced {
        assert_eq!(*port, 1);
        assert_eq!(&f[0..6], &SERVER_MAC);
        assert_eq!(&f[6..12], &MAC1);
    }
    let lines: Vec<String> = r
        .graph
        .trace
        .records()
        .iter()
        .flat_map(|t| t.lines.iter().map(|(_, line)| line.clone()))
        .collect();
    assert!(
        lines.iter().filter(|l| l.contains("is at")).count() == 2,
        "{lines:#?}"
    );
}

#[test]
fn pads_are_trimmed_before_forwarding() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let pkt = ipv4(
        v4("198.18.1.2"),
        v4("198.18.2.2"),
        IpProtocol::UDP,
        64,
        false,
        &[0, 1, 0, 2, 0, 8, 0, 0],
    );
    let mut frame = eth(MAC0, CLIENT_MAC, 0x0800, &pkt);
    frame.resize(60, 0);
    let out = r.send(0, &frame);
    assert_eq!(out[0].1.len(), 14 + 28);
}

#[test]
fn unknown_next_hop_is_asked_for_and_the_packet_held_until_answered() {
    let mut r = Rig::new();
    let pkt = ipv4(
        v4("198.18.1.2"),
        v4("198.18.2.9"),
        IpProtocol::UDP,
        64,
        false,
        &[0; 8],
    );
    let frame = eth(MAC0, CLIENT_MAC, 0x0800, &pkt);
    let out = r.send(0, &frame);
    assert_eq!(out.len(), 1);
    let (port, f) = &out[0];
    assert_eq!(*port, 1);
    assert_eq!(&f[0..6], &BCAST);
    assert_eq!(
        &f[14..],
        &arp(1, MAC1, v4("198.18.2.1"), [0; 6], v4("198.18.2.9"))[..]
    );
    // Within a second no second request; both packets wait.
    assert!(r.send(0, &frame).is_empty());
    assert_eq!(r.graph.held(), 2);
    // The reply is learned and the held packets go out, TTL decremented once.
    let reply = arp(2, SERVER_MAC, v4("198.18.2.9"), MAC1, v4("198.18.2.1"));
    let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x0806, &reply));
    assert_eq!(out.len(), 2);
    for (port, f) in &out {
        assert_eq!(*port, 1);
        assert_eq!(&f[0..6], &SERVER_MAC);
        assert_eq!(ip4_of(f).ttl(), 63);
    }
    assert_eq!(r.graph.held(), 0);
    assert_eq!(r.count("neighbor-output", "arp_request_sent"), 1);
}

#[test]
fn held_packets_expire_when_nobody_answers() {
    let mut r = Rig::new();
    let pkt = ipv4(
        v4("198.18.1.2"),
        v4("198.18.2.9"),
        IpProtocol::UDP,
        64,
        false,
        &[0; 8],
    );
    r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
    assert_eq!(r.graph.held(), 1);
    r.now += crate::graph::HOLD_TIME;
    r.graph
        .housekeeping(&mut r.state, r.now, || Some(HeapBuffer::new(2048, 128)));
    assert_eq!(r.graph.held(), 0);
    assert_eq!(r.graph.hold_expired, 1);
}

#[test]
fn ecmp_uses_both_gateways() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    r.state
        .neighbors
        .insert_permanent(1, v4("198.18.2.3").into(), [2, 0, 0, 0, 0, 3]);
    r.state
        .neighbors
        .insert_permanent(1, v4("198.18.2.4").into(), [2, 0, 0, 0, 0, 4]);
    let mut seen = std::collections::HashSet::new();
    for sport in 0..64u16 {
        let mut udp = vec![0; 8];
        udp[0..2].copy_from_slice(&sport.to_be_bytes());
        let pkt = ipv4(
            v4("198.18.1.2"),
            v4("198.19.0.1"),
            IpProtocol::UDP,
            64,
            false,
            &udp,
        );
        for (_, f) in r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt)) {
            seen.insert(f[5]);
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?} {:?}", r.graph.counters());
}

#[test]
fn ttl_expiry_sends_time_exceeded_from_the_receiving_interface() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let pkt = ipv4(
        v4("198.18.1.2"),
        v4("198.18.2.2"),
        IpProtocol::ICMP,
        1,
        false,
        &icmp_echo(8, 16),
    );
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
    assert_eq!(out.len(), 1);
    let (port, f) = &out[0];
    assert_eq!(*port, 0);
    let ip = ip4_of(f);
    assert_eq!(
        (ip.src_addr(), ip.dst_addr()),
        (v4("198.18.1.1"), v4("198.18.1.2"))
    );
    let icmp = ip.payload();
    assert_eq!((icmp[0], icmp[1]), (11, 0));
    assert!(checksum::verify(icmp));
    // The whole original packet is quoted, as received (TTL 1).
    assert_eq!(&icmp[8..], &pkt[..]);
}

#[test]
fn no_route_sends_net_unreachable_and_too_big_sends_frag_needed() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let pkt = ipv4(
        v4("198.18.1.2"),
        v4("203.0.113.9"),
        IpProtocol::UDP,
        64,
        false,
        &[0; 8],
    );
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
    let icmp = ip4_of(&out[0].1).payload().to_vec();
    assert_eq!((icmp[0], icmp[1]), (3, 0));

    let big = ipv4(
        v4("198.18.1.2"),
        v4("198.18.2.2"),
        IpProtocol::UDP,
        64,
        true,
        &[0; 1450],
    );
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &big));
    let ip = ip4_of(&out[0].1);
    let icmp = ip.payload();
    assert_eq!((icmp[0], icmp[1]), (3, 4));
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1400);
    // Quoted up to 576 bytes in all.
    assert_eq!(usize::from(ip.total_len()), 576);
    // Without DF it is fragmented to the 1400-byte MTU, TTL decremented in each fragment.
    let big = ipv4(
        v4("198.18.1.2"),
        v4("198.18.2.2"),
        IpProtocol::UDP,
        64,
        false,
        &[7; 1450],
    );
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &big));
    assert_eq!(out.len(), 2);
    let (a, b) = (ip4_of(&out[0].1), ip4_of(&out[1].1));
    assert_eq!(
        (a.total_len(), a.more_fragments(), a.fragment_offset()),
        (1396, true, 0)
    );
    assert_eq!(
        (b.total_len(), b.more_fragments(), b.fragment_offset()),
        (94, false, 1376)
    );
    assert_eq!((a.ttl(), b.ttl()), (63, 63));
    assert_eq!(r.count("ip4-rewrite", "fragmented"), 1);
}

#[test]
fn never_an_icmp_error_about_an_icmp_error_or_a_broadcast() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let mut err = icmp_echo(11, 28);
    err[0] = 11;
    err[2..4].fill(0);
    let c = checksum::checksum(&err);
    err[2..4].copy_from_slice(&c.to_be_bytes());
    let pkt = ipv4(
        v4("198.18.1.2"),
        v4("198.18.2.2"),
        IpProtocol::ICMP,
        1,
        false,
        &err,
    );
    assert!(r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt)).is_empty());
    assert_eq!(r.count("icmp4-error", "about_icmp_error"), 1);
    let pkt = ipv4(
        v4("198.18.1.2"),
        v4("198.18.2.2"),
        IpProtocol::UDP,
        1,
        false,
        &[0; 8],
    );
    assert!(r.send(0, &eth(BCAST, CLIENT_MAC, 0x0800, &pkt)).is_empty());
}

#[test]
fn bad_headers_are_dropped_with_a_reason() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let mut pkt = ipv4(
        v4("198.18.1.2"),
        v4("198.18.2.2"),
        IpProtocol::UDP,
        64,
        false,
        &[0; 8],
    );
    pkt[10] ^= 0xff;
    assert!(r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt)).is_empty());
    assert_eq!(r.count("ip4-input", "bad_checksum"), 1);
    let pkt = ipv4(
        v4("127.0.0.1"),
        v4("198.18.2.2"),
        IpProtocol::UDP,
        64,
        false,
        &[0; 8],
    );
    assert!(r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt)).is_empty());
    assert_eq!(r.count("ip4-input", "martian_source"), 1);
    let mut pkt = ipv4(
        v4("198.18.1.2"),
        v4("198.18.2.2"),
        IpProtocol::UDP,
        64,
        false,
        &[0; 8],
    );
    pkt[0] = 0x65;
    assert!(r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt)).is_empty());
    assert_eq!(r.count("ip4-input", "bad_version"), 1);
    // Not our MAC.
    let pkt = ipv4(
        v4("198.18.1.2"),
        v4("198.18.2.2"),
        IpProtocol::UDP,
        64,
        false,
        &[0; 8],
    );
    assert!(r
        .send(0, &eth(SERVER_MAC, CLIENT_MAC, 0x0800, &pkt))
        .is_empty());
    assert_eq!(r.count("ethernet-input", "not_for_us"), 1);
}

#[test]
fn every_truncation_of_a_good_frame_is_handled() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let frames = [
        eth(
            MAC0,
            CLIENT_MAC,
            0x0800,
            &ipv4(
                v4("198.18.1.2"),
                v4("198.18.1.1"),
                IpProtocol::ICMP,
                64,
                false,
                &icmp_echo(8, 8),
            ),
        ),
        eth(
            MAC0,
            CLIENT_MAC,
            0x86dd,
            &echo6(v6("2001:db8:1::2"), v6("2001:db8:1::1"), 64),
        ),
        eth(
            BCAST,
            CLIENT_MAC,
            0x0806,
            &arp(1, CLIENT_MAC, v4("198.18.1.2"), [0; 6], v4("198.18.1.1")),
        ),
    ];
    for f in &frames {
        for len in 0..f.len() {
            r.send(0, &f[..len]);
        }
    }
}

// ---- IPv6 ----

fn ns(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr, slla: Option<[u8; 6]>) -> Vec<u8> {
    let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    if let Some(mac) = slla {
        m.extend_from_slice(&[1, 1]);
        m.extend_from_slice(&mac);
    }
    ipv6(src, dst, IpProtocol::ICMPV6, 255, &icmp6(src, dst, m))
}

#[test]
fn answers_neighbor_solicitation_with_advertisement() {
    let mut r = Rig::new();
    let client = v6("2001:db8:1::2");
    let group = v6("ff02::1:ff00:1");
    let out = r.send(
        0,
        &eth(
            [0x33, 0x33, 0xff, 0, 0, 1],
            CLIENT_MAC,
            0x86dd,
            &ns(client, group, v6("2001:db8:1::1"), Some(CLIENT_MAC)),
        ),
    );
    assert_eq!(out.len(), 1, "{:?}", r.graph.counters());
    let f = &out[0].1;
    assert_eq!(&f[0..6], &CLIENT_MAC);
    let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
    assert_eq!(
        (ip.src_addr(), ip.dst_addr(), ip.hop_limit()),
        (v6("2001:db8:1::1"), client, 255)
    );
    let msg = ip.payload();
    assert_eq!(msg[0], 136);
    assert_eq!(msg[4], 0xe0, "router, solicited, override");
    assert_eq!(&msg[8..24], &v6("2001:db8:1::1").octets());
    assert_eq!(&msg[24..32], &[2, 1, 2, 0, 0, 0, 0, 0x10]);
    assert_eq!(icmpv6_checksum(&ip.src_addr(), &ip.dst_addr(), msg), 0);
    assert_eq!(r.state.neighbors.get(0, client.into()), Some(CLIENT_MAC));
    // Hop limit not 255: refused.
    let mut bad = ns(client, group, v6("2001:db8:1::1"), Some(CLIENT_MAC));
    bad[7] = 64;
    assert!(r
        .send(
            0,
            &eth([0x33, 0x33, 0xff, 0, 0, 1], CLIENT_MAC, 0x86dd, &bad)
        )
        .is_empty());
    assert_eq!(r.count("ip6-local", "bad_nd"), 1);
}

#[test]
fn answers_ping6_and_forwards_with_hop_limit_decrement() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let out = r.send(
        0,
        &eth(
            MAC0,
            CLIENT_MAC,
            0x86dd,
            &echo6(v6("2001:db8:1::2"), v6("2001:db8:1::1"), 64),
        ),
    );
    let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
    assert_eq!(ip.payload()[0], 129);
    assert_eq!(
        icmpv6_checksum(&ip.src_addr(), &ip.dst_addr(), ip.payload()),
        0
    );

    let out = r.send(
        0,
        &eth(
            MAC0,
            CLIENT_MAC,
            0x86dd,
            &echo6(v6("2001:db8:1::2"), v6("2001:db8:2::2"), 64),
        ),
    );
    assert_eq!(out[0].0, 1);
    assert_eq!(&out[0].1[0..6], &SERVER_MAC);
    assert_eq!(
        Ipv6Packet::new_checked(&out[0].1[14..])
            .unwrap()
            .hop_limit(),
        63
    );
}

#[test]
fn ipv6_errors_hop_limit_no_route_too_big() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let client = v6("2001:db8:1::2");
    let check = |out: &[(u16, Vec<u8>)], kind: u8, code: u8| {
        assert_eq!(out.len(), 1);
        let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
        assert_eq!(ip.dst_addr(), client);
        assert_eq!(ip.src_addr(), v6("2001:db8:1::1"));
        let m = ip.payload();
        assert_eq!((m[0], m[1]), (kind, code));
        assert_eq!(icmpv6_checksum(&ip.src_addr(), &ip.dst_addr(), m), 0);
        m.to_vec()
    };
    let out = r.send(
        0,
        &eth(
            MAC0,
            CLIENT_MAC,
            0x86dd,
            &echo6(client, v6("2001:db8:2::2"), 1),
        ),
    );
    check(&out, 3, 0);
    let out = r.send(
        0,
        &eth(
            MAC0,
            CLIENT_MAC,
            0x86dd,
            &echo6(client, v6("2001:db8:99::2"), 64),
        ),
    );
    check(&out, 1, 0);
    let big = ipv6(client, v6("2001:db8:2::2"), IpProtocol::UDP, 64, &[0; 1400]);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &big));
    let m = check(&out, 2, 0);
    assert_eq!(u32::from_be_bytes([m[4], m[5], m[6], m[7]]), 1400);
    assert_eq!(out[0].1.len(), 14 + 1280);
}

#[test]
fn unknown_ipv6_next_hop_sends_solicitation() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let out = r.send(
        0,
        &eth(
            MAC0,
            CLIENT_MAC,
            0x86dd,
            &echo6(v6("2001:db8:1::2"), v6("2001:db8:2::77"), 64),
        ),
    );
    assert_eq!(out.len(), 1);
    let (port, f) = &out[0];
    assert_eq!(*port, 1);
    assert_eq!(&f[0..6], &[0x33, 0x33, 0xff, 0, 0, 0x77]);
    let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
    assert_eq!(ip.dst_addr(), v6("ff02::1:ff00:77"));
    assert_eq!(ip.src_addr(), v6("2001:db8:2::1"));
    assert_eq!(ip.hop_limit(), 255);
    assert_eq!(ip.payload()[0], 135);
    assert_eq!(
        icmpv6_checksum(&ip.src_addr(), &ip.dst_addr(), ip.payload()),
        0
    );
}

#[test]
fn link_local_source_is_not_forwarded() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let ll = v6("fe80::c1");
    r.state.neighbors.insert_permanent(0, ll.into(), CLIENT_MAC);
    let out = r.send(
        0,
        &eth(
            MAC0,
            CLIENT_MAC,
            0x86dd,
            &echo6(ll, v6("2001:db8:2::2"), 64),
        ),
    );
    assert_eq!(out.len(), 1);
    let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
    assert_eq!(ip.dst_addr(), ll);
    assert_eq!(ip.src_addr(), r.tables.interfaces[0].link_local);
    assert_eq!((ip.payload()[0], ip.payload()[1]), (1, 2));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn arbitrary_frames_never_panic(
        ethertype in prop::sample::select(vec![0x0800u16, 0x86dd, 0x0806, 0x8100, 0x1234]),
        body in prop::collection::vec(any::<u8>(), 0..200),
        to_us in any::<bool>(),
    ) {
        let mut r = Rig::new();
        r.learn_client_and_server();
        let dst = if to_us { MAC0 } else { BCAST };
        r.send(0, &eth(dst, CLIENT_MAC, ethertype, &body));
    }
}

fn tcp_syn(src: IpAddrPair, sport: u16, dport: u16, seq: u32) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: sport,
        dst_port: dport,
        seq_number: seq,
        ack_number: 0,
        flags: TcpFlags::SYN,
        window_len: 1000,
        urgent_ptr: 0,
        max_seg_size: Some(1460),
        payload: &[],
    };
    let mut b = vec![0; repr.buffer_len()];
    repr.emit(&mut TcpPacket::new_unchecked(&mut b[..]), &src)
        .unwrap();
    b
}

#[test]
fn tcp_to_the_router_is_reset() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v4("198.18.1.2"), v4("198.18.1.1"));
    let syn = tcp_syn(IpAddrPair::V4 { src: c, dst: me }, 40000, 179, 1000);
    let out = r.send(
        0,
        &eth(
            MAC0,
            CLIENT_MAC,
            0x0800,
            &ipv4(c, me, IpProtocol::TCP, 64, true, &syn),
        ),
    );
    assert_eq!(out.len(), 1);
    let ip = ip4_of(&out[0].1);
    assert_eq!((ip.src_addr(), ip.dst_addr()), (me, c));
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    let rst = TcpRepr::parse(&tcp, &IpAddrPair::V4 { src: me, dst: c }).unwrap();
    assert_eq!((rst.src_port, rst.dst_port), (179, 40000));
    assert_eq!(rst.flags, TcpFlags::RST | TcpFlags::ACK);
    assert_eq!((rst.seq_number, rst.ack_number), (0, 1001));

    let (c6, me6) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    let syn = tcp_syn(IpAddrPair::V6 { src: c6, dst: me6 }, 40001, 22, 7);
    let out = r.send(
        0,
        &eth(
            MAC0,
            CLIENT_MAC,
            0x86dd,
            &ipv6(c6, me6, IpProtocol::TCP, 64, &syn),
        ),
    );
    assert_eq!(out.len(), 1);
    let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
    assert_eq!(
        (ip.src_addr(), ip.dst_addr(), ip.next_header()),
        (me6, c6, IpProtocol::TCP)
    );
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    let rst = TcpRepr::parse(&tcp, &IpAddrPair::V6 { src: me6, dst: c6 }).unwrap();
    assert_eq!((rst.seq_number, rst.ack_number), (0, 8));
    // A reset is never answered.
    let mut rst_in = syn.clone();
    rst_in[13] = 0x04;
    rst_in[16..18].fill(0);
    let csum = {
        let pseudo = checksum::pseudo_header_ipv6(&c6, &me6, IpProtocol::TCP, rst_in.len() as u32);
        checksum::finish(checksum::combine(pseudo, checksum::sum(&rst_in)))
    };
    rst_in[16..18].copy_from_slice(&csum.to_be_bytes());
    assert!(r
        .send(
            0,
            &eth(
                MAC0,
                CLIENT_MAC,
                0x86dd,
                &ipv6(c6, me6, IpProtocol::TCP, 64, &rst_in)
            )
        )
        .is_empty());
    assert_eq!(r.count("ip6-local", "tcp_dropped"), 1);
}

#[test]
fn echo_to_all_nodes_is_answered_from_the_link_local_address() {
    let mut r = Rig::new();
    let ll = v6("fe80::c1");
    r.state.neighbors.insert_permanent(0, ll.into(), CLIENT_MAC);
    let all = v6("ff02::1");
    let out = r.send(
        0,
        &eth(
            [0x33, 0x33, 0, 0, 0, 1],
            CLIENT_MAC,
            0x86dd,
            &echo6(ll, all, 1),
        ),
    );
    assert_eq!(out.len(), 1);
    let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
    assert_eq!(
        (ip.src_addr(), ip.dst_addr()),
        (r.tables.interfaces[0].link_local, ll)
    );
    assert_eq!(ip.payload()[0], 129);
    assert_eq!(
        icmpv6_checksum(&ip.src_addr(), &ip.dst_addr(), ip.payload()),
        0
    );
}

#[test]
fn unknown_hop_by_hop_option_gets_parameter_problem() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, s) = (v6("2001:db8:1::2"), v6("2001:db8:2::2"));
    // Hop-by-hop header: next header 59, length 0, option 0x9e (action 10) len 2, Pad1 x2.
    let hbh = [59, 0, 0x9e, 2, 0, 0, 0, 0];
    let mut pkt = ipv6(c, s, IpProtocol::HOP_BY_HOP, 64, &hbh);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    assert_eq!(out.len(), 1);
    let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
    let m = ip.payload();
    assert_eq!((m[0], m[1]), (4, 2));
    assert_eq!(u32::from_be_bytes([m[4], m[5], m[6], m[7]]), 42);
    // Action 00 is skipped: forwarded.
    pkt[42] = 0x1e;
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    assert_eq!(out[0].0, 1);
}

/// Frames sent, with their port.
type Sent = Vec<(u16, Vec<u8>)>;

/// Runs the graph and takes what it punted (as bytes) and what it sent.
fn punted_and_sent(r: &mut Rig) -> (Vec<Vec<u8>>, Sent) {
    r.graph.dispatch(&r.tables, &mut r.state, r.now);
    let punted = r
        .graph
        .punt
        .drain(..)
        .map(|p| p.buf.data().to_vec())
        .collect();
    let mut sent = Vec::new();
    for (p, q) in r.graph.tx.iter_mut().enumerate() {
        for b in q.drain(..) {
            sent.push((p as u16, b.data().to_vec()));
        }
    }
    r.graph.dropped.clear();
    (punted, sent)
}

/// Injects a packet from the host stack the way the proxy does.
fn from_host(r: &mut Rig, ip: &[u8]) {
    let mut buf = HeapBuffer::from_bytes(ip);
    let (family, meta) = super::host::from_host(&mut buf).unwrap();
    let entry = match family {
        super::host::HostFamily::Ipv4 => super::host::IP4_ENTRY,
        super::host::HostFamily::Ipv6 => super::host::IP6_ENTRY,
    };
    let node = r.graph.node_index(entry).unwrap();
    r.graph.inject(node, Packet { buf, meta });
}

#[test]
fn punt_to_host_hands_tcp_udp_and_icmp_errors_to_the_host_and_routes_its_answers() {
    let mut r = Rig::new();
    r.tables.punt_to_host = true;
    r.learn_client_and_server();
    let (c, me) = (v4("198.18.1.2"), v4("198.18.1.1"));
    let syn = ipv4(
        c,
        me,
        IpProtocol::TCP,
        64,
        true,
        &tcp_syn(IpAddrPair::V4 { src: c, dst: me }, 40000, 179, 1000),
    );
    let udp = ipv4(
        c,
        me,
        IpProtocol::UDP,
        64,
        true,
        &[0x9c, 0x40, 0, 53, 0, 8, 0, 0],
    );
    // Port unreachable about something the host sent: an ICMP error for the host's sockets.
    let mut unreach = vec![3, 3, 0, 0, 0, 0, 0, 0];
    unreach.extend_from_slice(&udp[..28]);
    let c_sum = checksum::checksum(&unreach);
    unreach[2..4].copy_from_slice(&c_sum.to_be_bytes());
    let icmp_err = ipv4(c, me, IpProtocol::ICMP, 64, false, &unreach);
    for ip in [&syn, &udp, &icmp_err] {
        r.graph.receive(Packet::received(
            HeapBuffer::from_bytes(&eth(MAC0, CLIENT_MAC, 0x0800, ip)),
            0,
        ));
    }
    let (punted, sent) = punted_and_sent(&mut r);
    assert!(sent.is_empty(), "no reset, no port unreachable: {sent:?}");
    // The punted packets start at the IP header, unchanged.
    assert_eq!(punted, vec![syn.clone(), udp.clone(), icmp_err.clone()]);
    assert_eq!(r.count("ip4-local", "punted_to_host"), 3);
    assert_eq!(r.count("ip4-local", "tcp_reset"), 0);

    // Ping stays in the dataplane.
    let out = r.send(
        0,
        &eth(
            MAC0,
            CLIENT_MAC,
            0x0800,
            &ipv4(c, me, IpProtocol::ICMP, 64, false, &icmp_echo(8, 8)),
        ),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(r.count("ip4-local", "echo_replied"), 1);

    // The host's answer is routed like the router's own: no TTL decrement, new MACs.
    from_host(
        &mut r,
        &ipv4(
            me,
            c,
            IpProtocol::UDP,
            64,
            true,
            &[0, 53, 0x9c, 0x40, 0, 8, 0, 0],
        ),
    );
    let (punted, sent) = punted_and_sent(&mut r);
    assert!(punted.is_empty());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, 0);
    assert_eq!(&sent[0].1[..12], &[CLIENT_MAC, MAC0].concat()[..]);
    let ip = ip4_of(&sent[0].1);
    assert_eq!((ip.src_addr(), ip.dst_addr(), ip.ttl()), (me, c, 64));

    // A host packet the dataplane cannot deliver draws an ICMP error, and that goes to the
    // host: here, too big for s0 (MTU 1400) with DF set.
    let big = ipv4(me, v4("198.18.2.2"), IpProtocol::UDP, 64, true, &[0; 1420]);
    from_host(&mut r, &big);
    let (punted, sent) = punted_and_sent(&mut r);
    assert!(sent.is_empty());
    assert_eq!(punted.len(), 1);
    let err = Ipv4Packet::new_checked(&punted[0][..]).unwrap();
    assert_eq!(err.dst_addr(), me);
    assert_eq!(err.payload()[..2], [3, 4]);
    assert_eq!(
        u16::from_be_bytes([err.payload()[6], err.payload()[7]]),
        1400
    );

    // IPv6: TCP and UDP to us go to the host; ping6 stays here.
    let (c6, me6) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    let syn6 = ipv6(
        c6,
        me6,
        IpProtocol::TCP,
        64,
        &tcp_syn(IpAddrPair::V6 { src: c6, dst: me6 }, 40001, 179, 7),
    );
    let udp6 = ipv6(
        c6,
        me6,
        IpProtocol::UDP,
        64,
        &[0x9c, 0x41, 0, 53, 0, 8, 0, 0],
    );
    for ip in [&syn6, &udp6] {
        r.graph.receive(Packet::received(
            HeapBuffer::from_bytes(&eth(MAC0, CLIENT_MAC, 0x86dd, ip)),
            0,
        ));
    }
    let (punted, sent) = punted_and_sent(&mut r);
    assert!(sent.is_empty());
    assert_eq!(punted, vec![syn6, udp6]);
    assert_eq!(r.count("ip6-local", "punted_to_host"), 2);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &echo6(c6, me6, 64)));
    assert_eq!(out.len(), 1);

    // A host packet with no route draws an ICMPv6 error that goes to the host.
    from_host(
        &mut r,
        &ipv6(me6, v6("2001:db8:ff::9"), IpProtocol::UDP, 64, &[0; 8]),
    );
    let (punted, sent) = punted_and_sent(&mut r);
    assert!(sent.is_empty());
    assert_eq!(punted.len(), 1);
    let err = Ipv6Packet::new_checked(&punted[0][..]).unwrap();
    assert_eq!((err.dst_addr(), err.payload()[0]), (me6, 1));
    assert_eq!(r.count("ip6-local", "local_loop"), 0);
}

/// IPv6 link-local traffic on the punt path: what comes in for a port's link-local address
/// is punted with the port it came in on (the proxy writes it to that link's device, as
/// `host::link_scoped` says); what the host sends from a link's device to a link-local
/// address leaves by that port alone, its hop limit untouched; from the main device, or to
/// a destination beyond the link from a link-local source, it goes nowhere (RFC 4291 2.5.6).
#[test]
fn link_local_packets_are_punted_with_their_link_and_answered_out_of_it() {
    let mut r = Rig::new();
    r.tables.punt_to_host = true;
    let me = r.tables.interfaces[0].link_local;
    let peer = v6("fe80::c1");
    r.state
        .neighbors
        .insert_permanent(0, peer.into(), CLIENT_MAC);
    // The same neighbor address on the other link, elsewhere.
    r.state
        .neighbors
        .insert_permanent(1, peer.into(), SERVER_MAC);
    let syn = ipv6(
        peer,
        me,
        IpProtocol::TCP,
        255,
        &tcp_syn(IpAddrPair::V6 { src: peer, dst: me }, 40000, 179, 1),
    );
    r.graph.receive(Packet::received(
        HeapBuffer::from_bytes(&eth(MAC0, CLIENT_MAC, 0x86dd, &syn)),
        0,
    ));
    r.graph.dispatch(&r.tables, &mut r.state, r.now);
    let punted: Vec<_> = r
        .graph
        .punt
        .drain(..)
        .map(|p| (p.meta.rx_port, p.buf.data().to_vec()))
        .collect();
    assert_eq!(punted, vec![(0, syn.clone())], "unchanged, with its port");
    assert!(super::host::link_scoped(&punted[0].1));
    assert!(r.take_tx().is_empty(), "no reset from the dataplane");

    // The host's answer from port 0's device: out of port 0 to the neighbor there, hop
    // limit as the host set it (255, as BGP's GTSM wants), never out of port 1.
    let answer = ipv6(
        me,
        peer,
        IpProtocol::TCP,
        255,
        &tcp_syn(IpAddrPair::V6 { src: me, dst: peer }, 179, 40000, 9),
    );
    let inject = |r: &mut Rig, ip: &[u8], link: Option<u16>| {
        let mut buf = HeapBuffer::from_bytes(ip);
        let checked = match link {
            Some(ifc) => super::host::from_host_on_link(&mut buf, ifc),
            None => super::host::from_host(&mut buf),
        };
        let Ok((_, meta)) = checked else {
            return None;
        };
        let node = r.graph.node_index(super::host::IP6_ENTRY).unwrap();
        r.graph.inject(node, Packet { buf, meta });
        let (punted, sent) = punted_and_sent(r);
        assert!(punted.is_empty(), "{punted:02x?}");
        Some(sent)
    };
    let sent = inject(&mut r, &answer, Some(0)).unwrap();
    assert_eq!(sent.len(), 1);
    let (port, f) = &sent[0];
    assert_eq!(*port, 0);
    assert_eq!(&f[..12], &[CLIENT_MAC, MAC0].concat()[..]);
    let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
    assert_eq!(
        (ip.src_addr(), ip.dst_addr(), ip.hop_limit()),
        (me, peer, 255)
    );
    // From port 1's device: to the neighbor of that address on port 1.
    let sent = inject(&mut r, &answer, Some(1)).unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, 1);
    assert_eq!(&sent[0].1[..6], &SERVER_MAC);
    // Not from the main device, and never beyond the link.
    assert!(inject(&mut r, &answer, None).is_none());
    let beyond = ipv6(me, v6("2001:db8:2::2"), IpProtocol::UDP, 64, &[0; 8]);
    assert!(inject(&mut r, &beyond, Some(0)).is_none());

    // An ICMPv6 error about a host packet to a link-local address (from port 1's device, so
    // from port 1's address; too big for its MTU of 1400) goes back to the host, with the
    // port, so to the same device.
    let me1 = r.tables.interfaces[1].link_local;
    let big = ipv6(me1, peer, IpProtocol::UDP, 64, &[0; 1400]);
    let mut buf = HeapBuffer::from_bytes(&big);
    let (_, meta) = super::host::from_host_on_link(&mut buf, 1).unwrap();
    let node = r.graph.node_index(super::host::IP6_ENTRY).unwrap();
    r.graph.inject(node, Packet { buf, meta });
    r.graph.dispatch(&r.tables, &mut r.state, r.now);
    let punted: Vec<_> = r
        .graph
        .punt
        .drain(..)
        .map(|p| (p.meta.rx_port, p.buf.data().to_vec()))
        .collect();
    let sent = r.take_tx();
    assert!(sent.is_empty(), "{sent:02x?} {punted:02x?}");
    assert_eq!(punted.len(), 1, "the error, to the host");
    assert_eq!(punted[0].0, 1);
    let err = Ipv6Packet::new_checked(&punted[0].1[..]).unwrap();
    assert_eq!(
        (err.dst_addr(), err.payload()[0]),
        (me1, 2),
        "Packet Too Big"
    );
    assert!(super::host::link_scoped(&punted[0].1));
}

#[test]
fn without_punt_to_host_icmp_errors_about_our_own_packets_are_not_looped() {
    let mut r = Rig::new();
    let me = v4("198.18.1.1");
    from_host(
        &mut r,
        &ipv4(me, v4("198.18.2.2"), IpProtocol::UDP, 64, true, &[0; 1420]),
    );
    let (punted, sent) = punted_and_sent(&mut r);
    assert!(punted.is_empty() && sent.is_empty());
    assert_eq!(r.count("ip4-local", "local_loop"), 1);
}

#[test]
fn an_ageing_neighbor_is_refreshed_while_traffic_flows() {
    let mut r = Rig::new();
    let server = v4("198.18.2.2");
    let reply = arp(2, SERVER_MAC, server, MAC1, v4("198.18.2.1"));
    r.state.neighbors.resolve(1, server.into(), r.now);
    r.send(1, &eth(MAC1, SERVER_MAC, 0x0806, &reply));
    let pkt = ipv4(
        v4("198.18.1.2"),
        server,
        IpProtocol::UDP,
        64,
        false,
        &[0; 8],
    );
    let frame = eth(MAC0, CLIENT_MAC, 0x0800, &pkt);
    assert_eq!(r.send(0, &frame).len(), 1);
    // Stale: the packet still goes; DELAY, then a unicast ARP probe (RFC 4861 7.3.3's
    // states, which Linux applies to ARP too).
    r.now += crate::worker::NEIGHBOR_REACHABLE_TIME;
    let out = r.send(0, &frame);
    assert_eq!(out.len(), 1, "the packet, no request yet");
    assert_eq!(out[0].1[0..6], SERVER_MAC);
    r.now += crate::worker::NEIGHBOR_DELAY_FIRST_PROBE;
    r.graph.probe_neighbors(&r.tables, &mut r.state, r.now, || {
        Some(HeapBuffer::new(2048, 128))
    });
    let out = r.take_tx();
    assert_eq!(out.len(), 1, "one probe");
    assert_eq!(
        (&out[0].1[0..6], &out[0].1[12..14]),
        (&SERVER_MAC[..], &[8, 6][..])
    );
}

#[test]
fn solicitation_without_source_address_option_resolves_the_asker_first() {
    let mut r = Rig::new();
    let client = v6("2001:db8:1::2");
    let me = v6("2001:db8:1::1");
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &ns(client, me, me, None)));
    // Our own solicitation for the asker goes out; the advertisement waits for its answer.
    assert_eq!(out.len(), 1);
    assert_eq!(
        Ipv6Packet::new_checked(&out[0].1[14..]).unwrap().payload()[0],
        135
    );
    let mut na = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    na.extend_from_slice(&client.octets());
    na.extend_from_slice(&[2, 1]);
    na.extend_from_slice(&CLIENT_MAC);
    let na = ipv6(client, me, IpProtocol::ICMPV6, 255, &icmp6(client, me, na));
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &na));
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].1[0..6], &CLIENT_MAC);
    let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
    assert_eq!((ip.payload()[0], ip.hop_limit()), (136, 255));
}

/// An IPv4 packet with `options` (a multiple of 4 bytes) after the fixed header.
/// A UDP datagram, ports 1000 → 33434, with `payload` and its checksum right for `addrs`.
fn udp_datagram(addrs: IpAddrPair, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0x03, 0xe8, 0x82, 0x9a, 0, 0, 0, 0];
    d.extend_from_slice(payload);
    let len = d.len() as u16;
    let mut udp = crate::wire::UdpPacket::new_unchecked(&mut d[..]);
    udp.set_len(len);
    udp.fill_checksum(&addrs);
    d
}

fn ipv4_with_options(src: Ipv4Addr, dst: Ipv4Addr, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut b = ipv4(src, dst, IpProtocol::UDP, 64, false, payload);
    let hlen = 20 + options.len();
    b.splice(20..20, options.iter().copied());
    let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
    ip.set_version_and_header_len(hlen);
    ip.set_total_len((hlen + payload.len()) as u16);
    ip.fill_checksum();
    b
}

#[test]
fn ipv4_options_record_route_param_problem_and_source_route() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, s) = (v4("198.18.1.2"), v4("198.18.2.2"));
    let rr = [7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let out = r.send(
        0,
        &eth(
            MAC0,
            CLIENT_MAC,
            0x0800,
            &ipv4_with_options(c, s, &rr, &[0; 8]),
        ),
    );
    assert_eq!(out.len(), 1);
    let ip = ip4_of(&out[0].1);
    assert_eq!(&ip.options()[..8], &[7, 11, 8, 198, 18, 2, 1, 0]);
    assert_eq!(ip.ttl(), 63);

    // Record route whose pointer is below 4: parameter problem pointing at it (byte 22).
    let bad = [7, 7, 2, 0, 0, 0, 0, 1];
    let out = r.send(
        0,
        &eth(
            MAC0,
            CLIENT_MAC,
            0x0800,
            &ipv4_with_options(c, s, &bad, &[0; 8]),
        ),
    );
    assert_eq!(out.len(), 1);
    let icmp = ip4_of(&out[0].1).payload().to_vec();
    assert_eq!((icmp[0], icmp[1], icmp[4]), (12, 0, 22));

    // A source route naming someone else next, in a packet not addressed to this router:
    // forwarded as it is (the option is for the packet's destination to act on).
    let lsrr = [131, 7, 4, 203, 0, 113, 9, 1];
    let out = r.send(
        0,
        &eth(
            MAC0,
            CLIENT_MAC,
            0x0800,
            &ipv4_with_options(c, s, &lsrr, &[0; 8]),
        ),
    );
    assert_eq!(out.len(), 1);
    let ip = ip4_of(&out[0].1);
    assert_eq!((ip.dst_addr(), ip.options()), (s, &lsrr[..]));
}

/// Source routes (RFC 791 3.1, RFC 1812 5.2.4.1) addressed to this router: the next address
/// becomes the destination and this router's outgoing address takes its slot; a completed
/// route ends here; a next hop that cannot be reached (or, for a strict route, is not on an
/// attached network) draws "source route failed"; `drop_source_routed` drops them all.
#[test]
fn ipv4_source_routes_are_followed() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v4("198.18.1.2"), v4("198.18.1.1"));
    let send = |r: &mut Rig, options: &[u8]| {
        // An empty UDP datagram (checksum 0: none, as IPv4 allows).
        let packet = ipv4_with_options(c, me, options, &[0x03, 0xe8, 0x82, 0x9a, 0, 8, 0, 0]);
        r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &packet))
    };
    let icmp_of = |out: &[(u16, Vec<u8>)]| {
        assert_eq!(out.len(), 1);
        let icmp = ip4_of(&out[0].1).payload().to_vec();
        (icmp[0], icmp[1])
    };

    // Loose and strict, through the router to the server; the router's address on the far
    // side (198.18.2.1) is recorded in the slot.
    for kind in [131, 137] {
        let out = send(&mut r, &[kind, 7, 4, 198, 18, 2, 2, 1]);
        assert_eq!(out.len(), 1, "{:?}", r.graph.counters());
        assert_eq!(out[0].0, 1);
        let ip = ip4_of(&out[0].1);
        assert_eq!((ip.src_addr(), ip.dst_addr()), (c, v4("198.18.2.2")));
        assert_eq!(ip.options(), &[kind, 7, 8, 198, 18, 2, 1, 1]);
        assert_eq!(ip.ttl(), 63);
        assert!(ip.verify_checksum());
    }
    assert_eq!(r.count("ip4-local", "source_routed"), 2);

    // The route names the router twice (both its addresses), then the server.
    let out = send(
        &mut r,
        &[131, 15, 4, 198, 18, 2, 1, 198, 18, 2, 2, 0, 0, 0, 0, 1],
    );
    assert_eq!(out.len(), 1);
    let ip = ip4_of(&out[0].1);
    assert_eq!(ip.dst_addr(), v4("198.18.2.2"));
    assert_eq!(ip.options()[2], 12);

    // Completed: the router is the final destination (UDP to it: port unreachable).
    assert_eq!(
        icmp_of(&send(&mut r, &[131, 7, 8, 198, 18, 2, 9, 1])),
        (3, 3)
    );

    // Next hops beyond a gateway: loose goes on (waiting for the gateway's address), strict
    // fails; no route at all fails either way.
    assert!(send(&mut r, &[131, 7, 4, 198, 19, 0, 5, 1])
        .iter()
        .all(|(_, f)| f[12..14] == [8, 6]));
    assert_eq!(
        icmp_of(&send(&mut r, &[137, 7, 4, 198, 19, 0, 5, 1])),
        (3, 5)
    );
    assert_eq!(
        icmp_of(&send(&mut r, &[131, 7, 4, 203, 0, 113, 9, 1])),
        (3, 5)
    );
    assert_eq!(
        icmp_of(&send(&mut r, &[131, 7, 4, 224, 0, 0, 5, 1])),
        (3, 5)
    );
    assert_eq!(r.count("ip4-local", "source_route_failed"), 3);

    // A pointer into the middle of an address: parameter problem at the pointer (byte 22).
    let out = send(&mut r, &[131, 8, 6, 198, 18, 2, 2, 0]);
    let icmp = ip4_of(&out[0].1).payload().to_vec();
    assert_eq!((icmp[0], icmp[4]), (12, 22));

    // An echo request that came by a (completed) route: the reply takes the route back,
    // first to the last hop recorded, and record route gets this router's entry.
    let mut echo = ipv4_with_options(
        c,
        me,
        &[131, 7, 8, 198, 18, 2, 2, 1, 7, 7, 4, 0, 0, 0, 0, 1],
        &icmp_echo(8, 8),
    );
    echo[9] = IpProtocol::ICMP.0;
    Ipv4Packet::new_unchecked(&mut echo[..]).fill_checksum();
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &echo));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 1);
    let ip = ip4_of(&out[0].1);
    assert_eq!((ip.src_addr(), ip.dst_addr()), (me, v4("198.18.2.2")));
    assert_eq!(
        ip.options(),
        &[131, 7, 4, 198, 18, 1, 2, 1, 7, 7, 8, 198, 18, 1, 1, 1]
    );
    assert_eq!(ip.payload()[0], 0);

    r.tables.drop_source_routed = true;
    assert!(send(&mut r, &[131, 7, 4, 198, 18, 2, 2, 1]).is_empty());
    assert_eq!(r.count("ip4-input", "source_route"), 1);
}

/// Address mask requests (RFC 950, RFC 1812 4.3.3.9): answered with the mask of the
/// receiving interface's subnet, to the asker, or to the limited broadcast for an asker
/// without an address.
#[test]
fn address_mask_requests_are_answered() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let mut request = vec![17, 0, 0, 0, 0x12, 0x34, 0, 1, 0, 0, 0, 0];
    let c = checksum::checksum(&request);
    request[2..4].copy_from_slice(&c.to_be_bytes());
    let reply_of = |out: &[(u16, Vec<u8>)]| {
        assert_eq!(out.len(), 1, "{out:?}");
        let ip = ip4_of(&out[0].1);
        assert!(ip.verify_checksum());
        assert!(checksum::verify(ip.payload()));
        let m = ip.payload().to_vec();
        (
            out[0].0,
            ip.src_addr(),
            ip.dst_addr(),
            m[0],
            m[4..12].to_vec(),
        )
    };
    let unicast = ipv4(
        v4("198.18.1.2"),
        v4("198.18.1.1"),
        IpProtocol::ICMP,
        64,
        false,
        &request,
    );
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &unicast));
    assert_eq!(
        reply_of(&out),
        (
            0,
            v4("198.18.1.1"),
            v4("198.18.1.2"),
            18,
            vec![0x12, 0x34, 0, 1, 255, 255, 255, 0]
        )
    );
    // Broadcast, from an asker on the far side without an address yet.
    let anon = ipv4(
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        IpProtocol::ICMP,
        64,
        false,
        &request,
    );
    let out = r.send(1, &eth(BCAST, SERVER_MAC, 0x0800, &anon));
    assert_eq!(&out[0].1[..6], &BCAST);
    assert_eq!(
        reply_of(&out),
        (
            1,
            v4("198.18.2.1"),
            Ipv4Addr::BROADCAST,
            18,
            vec![0x12, 0x34, 0, 1, 255, 255, 255, 0]
        )
    );
    assert_eq!(r.count("ip4-local", "address_mask_replied"), 2);
}

/// Splits an IPv4 datagram's payload into fragments of `size` bytes (a multiple of 8).
fn ipv4_fragments(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8], size: usize) -> Vec<Vec<u8>> {
    payload
        .chunks(size)
        .enumerate()
        .map(|(k, chunk)| {
            let mut b = ipv4(src, dst, IpProtocol::ICMP, 64, false, chunk);
            let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
            ip.set_fragment(false, (k + 1) * size < payload.len(), (k * size) as u16);
            ip.fill_checksum();
            b
        })
        .collect()
}

#[test]
fn fragmented_ping_to_the_router_gets_a_fragmented_reply() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v4("198.18.1.2"), v4("198.18.1.1"));
    let echo = icmp_echo(8, 2992);
    let frags = ipv4_fragments(c, me, &echo, 1480);
    let mut out = Vec::new();
    for f in frags.iter().rev() {
        out.extend(r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, f)));
    }
    assert_eq!(out.len(), 3, "{:?}", r.graph.counters());
    let mut reply = vec![0u8; 3000];
    let mut got = 0;
    for (port, f) in &out {
        assert_eq!(*port, 0);
        assert!(f.len() <= 14 + 1500);
        let ip = ip4_of(f);
        assert_eq!((ip.src_addr(), ip.dst_addr()), (me, c));
        let off = usize::from(ip.fragment_offset());
        reply[off..off + ip.payload().len()].copy_from_slice(ip.payload());
        got += ip.payload().len();
    }
    assert_eq!(got, 3000);
    assert_eq!(reply[0], 0);
    assert!(checksum::verify(&reply));
    assert_eq!(&reply[4..], &echo[4..]);
    assert_eq!(r.count("ip4-local", "reassembled"), 1);
}

#[test]
fn fragmented_ping6_to_the_router_gets_a_fragmented_reply() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    let mut echo = vec![128, 0, 0, 0, 0, 9, 0, 1];
    echo.extend((0..2992).map(|i| i as u8));
    let echo = icmp6(c, me, echo);
    let mut out = Vec::new();
    for (k, chunk) in echo.chunks(1232).enumerate() {
        let mut fh = vec![58, 0];
        let word = (k * 1232) as u16 | u16::from((k + 1) * 1232 < echo.len());
        fh.extend_from_slice(&word.to_be_bytes());
        fh.extend_from_slice(&77u32.to_be_bytes());
        fh.extend_from_slice(chunk);
        let pkt = ipv6(c, me, IpProtocol::FRAGMENT, 64, &fh);
        out.extend(r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt)));
    }
    assert!(out.len() >= 3, "{:?}", r.graph.counters());
    let mut reply = vec![0u8; echo.len()];
    let mut got = 0;
    for (_, f) in &out {
        let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
        assert_eq!(
            (ip.src_addr(), ip.dst_addr(), ip.next_header()),
            (me, c, IpProtocol::FRAGMENT)
        );
        let p = ip.payload();
        let off = usize::from(u16::from_be_bytes([p[2], p[3]]) & 0xfff8);
        reply[off..off + p.len() - 8].copy_from_slice(&p[8..]);
        got += p.len() - 8;
    }
    assert_eq!(got, echo.len());
    assert_eq!(reply[0], 129);
    assert_eq!(icmpv6_checksum(&me, &c, &reply), 0);
}

#[test]
fn routing_headers_and_destination_options_to_the_router() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    let echo = icmp6(c, me, vec![128, 0, 0, 0, 0, 1, 0, 1]);
    let send = |r: &mut Rig, next: IpProtocol, ext: &[u8]| {
        let mut payload = ext.to_vec();
        payload.extend_from_slice(&echo);
        r.send(
            0,
            &eth(MAC0, CLIENT_MAC, 0x86dd, &ipv6(c, me, next, 64, &payload)),
        )
    };
    let problem = |out: &[(u16, Vec<u8>)]| {
        let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
        let m = ip.payload();
        (m[0], m[1], u32::from_be_bytes([m[4], m[5], m[6], m[7]]))
    };
    // Routing header type 0 with one segment left: parameter problem at its type field.
    let rh0 = [
        58, 2, 0, 1, 0, 0, 0, 0, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9,
    ];
    let out = send(&mut r, IpProtocol::ROUTING, &rh0);
    assert_eq!(problem(&out), (4, 0, 42));
    // No segments left: the header is skipped and the echo answered.
    let mut done = rh0;
    done[3] = 0;
    let out = send(&mut r, IpProtocol::ROUTING, &done);
    assert_eq!(
        Ipv6Packet::new_checked(&out[0].1[14..]).unwrap().payload()[0],
        129
    );
    // A destination option the router does not know, action 10: parameter problem code 2.
    let dopt = [58, 0, 0x8a, 2, 0, 0, 1, 0];
    let out = send(&mut r, IpProtocol::DEST_OPTS, &dopt);
    assert_eq!(problem(&out), (4, 2, 42));
}

#[test]
fn forwarding_back_out_of_the_same_link_sends_a_redirect() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let mut ifcs = r.tables.interfaces.clone();
    ifcs[0].mtu = 1500;
    r.tables = Tables::build(
        2,
        ifcs,
        &[
            StaticRoute {
                prefix: "198.19.9.0/24".parse().unwrap(),
                target: RouteTarget::Via(vec![(Some("198.18.1.3".parse().unwrap()), None)]),
            },
            StaticRoute {
                prefix: "2001:db8:99::/48".parse().unwrap(),
                target: RouteTarget::Via(vec![(Some("2001:db8:1::3".parse().unwrap()), None)]),
            },
        ],
    )
    .unwrap();
    let other: [u8; 6] = [2, 0, 0, 0, 0, 0x33];
    r.state
        .neighbors
        .insert_permanent(0, v4("198.18.1.3").into(), other);
    r.state
        .neighbors
        .insert_permanent(0, v6("2001:db8:1::3").into(), other);
    // The better router's link-local address, which redirects name (RFC 4861 4.5).
    r.state
        .neighbors
        .insert_permanent(0, v6("fe80::3").into(), other);

    let pkt = ipv4(
        v4("198.18.1.2"),
        v4("198.19.9.9"),
        IpProtocol::UDP,
        64,
        false,
        &[0; 8],
    );
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
    assert_eq!(out.len(), 2, "the packet and the redirect");
    let fwd = out
        .iter()
        .find(|(_, f)| f[0..6] == other)
        .expect("forwarded");
    assert_eq!(ip4_of(&fwd.1).ttl(), 63);
    let redirect = out
        .iter()
        .find(|(_, f)| f[0..6] == CLIENT_MAC)
        .expect("redirect");
    let ip = ip4_of(&redirect.1);
    assert_eq!(
        (ip.src_addr(), ip.dst_addr()),
        (v4("198.18.1.1"), v4("198.18.1.2"))
    );
    let m = ip.payload();
    assert_eq!((m[0], m[1]), (5, 1));
    assert_eq!(&m[4..8], &[198, 18, 1, 3]);
    assert!(checksum::verify(m));
    assert_eq!(&m[8..], &pkt[..]);

    let (c, d) = (v6("2001:db8:1::2"), v6("2001:db8:99::9"));
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &echo6(c, d, 64)));
    assert_eq!(out.len(), 2);
    let redirect = out
        .iter()
        .find(|(_, f)| f[0..6] == CLIENT_MAC)
        .expect("redirect");
    let ip = Ipv6Packet::new_checked(&redirect.1[14..]).unwrap();
    assert_eq!(
        (ip.src_addr(), ip.dst_addr(), ip.hop_limit()),
        (r.tables.interfaces[0].link_local, c, 255)
    );
    let m = ip.payload();
    assert_eq!(m[0], 137);
    assert_eq!(&m[8..24], &v6("fe80::3").octets());
    assert_eq!(&m[24..40], &d.octets());
    assert_eq!(&m[40..48], &[2, 1, 2, 0, 0, 0, 0, 0x33]);
    assert_eq!(m[48], 4);
    assert_eq!(icmpv6_checksum(&ip.src_addr(), &ip.dst_addr(), m), 0);
}

/// Runs the router advertisers at `r.now`; returns what they sent.
fn advertise(r: &mut Rig) -> Vec<(u16, Vec<u8>)> {
    r.graph
        .advertise_routers(&r.tables, &mut r.state, r.now, || {
            Some(HeapBuffer::new(2048, 128))
        });
    r.take_tx()
}

/// Runs the advertisers every tenth of a second for `seconds` and checks the gaps between
/// port 0's unsolicited advertisements: the first three at most 16 s (both RFC 4861 6.2.4 and
/// RFC 1256 4.3), the rest within `min..=max` seconds.
fn check_unsolicited_intervals(r: &mut Rig, seconds: u64, (min, max): (u64, u64)) {
    const SECOND: u64 = 1_000_000_000;
    let mut sent_at = Vec::new();
    let end = r.now + seconds * SECOND;
    while r.now < end {
        if advertise(r).iter().any(|(p, _)| *p == 0) {
            sent_at.push(r.now);
        }
        r.now += SECOND / 10;
    }
    let gaps: Vec<u64> = sent_at.windows(2).map(|w| (w[1] - w[0]) / SECOND).collect();
    assert!(gaps.len() >= 5, "{gaps:?}");
    assert!(gaps[..3].iter().all(|&g| g <= 16), "{gaps:?}");
    assert!(
        gaps[3..].iter().all(|&g| (min..=max).contains(&g)),
        "{gaps:?}"
    );
}

mod acl;
mod conformance;
mod esp;
mod mld;
mod nat;
mod router_adverts;
mod router_discovery4;
mod vlan;

proptest! {
    /// `ip4-lookup` hashes from the header it already read; the result is the packet's flow
    /// hash (`ipv4_flow_hash`) for every header the input checks let through.
    #[test]
    fn lookup_flow_hash_is_the_packet_flow_hash(
        header in any::<[u8; 20]>(),
        proto in prop::sample::select(vec![6u8, 17, 132, 1, 47]),
        payload in prop::collection::vec(any::<u8>(), 0..24),
    ) {
        let mut data = header.to_vec();
        data[0] = 0x45;
        data[9] = proto;
        data.extend_from_slice(&payload);
        let total = data.len() as u16;
        data[2..4].copy_from_slice(&total.to_be_bytes());
        let h: [u8; 20] = data[..20].try_into().unwrap();
        let ip = Ipv4Packet::new_checked(&data[..]).unwrap();
        prop_assert_eq!(super::ip4::header_flow_hash(&h, &data), super::ipv4_flow_hash(&ip));
    }

    /// The same hash for any header length and any total length against the buffer's (the
    /// lookup's short path for option-less headers included): the ports are the payload's
    /// first four bytes when the buffer holds the whole datagram and the payload has them.
    #[test]
    fn lookup_flow_hash_reads_ports_only_inside_the_datagram(
        header in any::<[u8; 20]>(),
        ihl in prop::sample::select(vec![5u8, 5, 5, 6, 7, 15, 0, 4]),
        proto in prop::sample::select(vec![6u8, 17, 132, 1]),
        fragment in prop::sample::select(vec![[0u8, 0], [0x40, 0], [0x20, 0], [0, 1]]),
        rest in prop::collection::vec(any::<u8>(), 0..72),
        total in 0u16..96,
    ) {
        let mut data = header.to_vec();
        data[0] = 0x40 | ihl;
        data[9] = proto;
        data[6..8].copy_from_slice(&fragment);
        data[2..4].copy_from_slice(&total.to_be_bytes());
        data.extend_from_slice(&rest);
        let h: [u8; 20] = data[..20].try_into().unwrap();
        let header_len = usize::from(ihl) * 4;
        let ports = match data
            .get(..usize::from(total))
            .and_then(|d| d.get(header_len..header_len + 4))
        {
            Some(&[a, b, c, d]) if fragment[0] & 0x3f == 0 && fragment[1] == 0 && proto != 1 => {
                u32::from_be_bytes([a, b, c, d])
            }
            _ => 0,
        };
        let expected = super::ecmp_hash(
            u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
            u32::from_be_bytes([h[16], h[17], h[18], h[19]]),
            proto,
            ports,
        );
        prop_assert_eq!(super::ip4::header_flow_hash(&h, &data), expected);
    }
}

/// The ECMP hash spreads flows evenly over 2 to 8 paths whichever field varies: ports, the
/// source address's low bits, or its high bits (path chosen as `fib::pick_path` does); and
/// neighbouring flows do not share a path in long runs (a hash linear in a field would pass
/// the first test and fail this one).
#[test]
fn ecmp_hash_spreads_flows_evenly() {
    let base = u32::from(v4("198.18.1.2"));
    let dst = u32::from(v4("198.19.0.1"));
    let flows: [Box<dyn Fn(u32) -> u32>; 3] = [
        Box::new(|i| super::ecmp_hash(base, dst, 17, i << 16 | 53)),
        Box::new(|i| super::ecmp_hash(base + i, dst, 6, 0x1f90_0050)),
        Box::new(|i| super::ecmp_hash(base ^ (i << 20), dst, 6, 0x1f90_0050)),
    ];
    for (f, flow) in flows.iter().enumerate() {
        for paths in 2..=8u64 {
            let mut count = vec![0u32; paths as usize];
            for i in 0..4096 {
                count[((u64::from(flow(i)) * paths) >> 32) as usize] += 1;
            }
            let fair = 4096 / paths as u32;
            for c in &count {
                assert!(
                    c.abs_diff(fair) * 5 < fair,
                    "flows {f}, {paths} paths: {count:?}"
                );
            }
        }
        let path = |i| (u64::from(flow(i)) * 2) >> 32;
        let changes = (1..4096).filter(|&i| path(i) != path(i - 1)).count();
        // About half the neighbours differ for a random function (2,047 of 4,095).
        assert!(changes > 1_400, "flows {f}: path changes {changes} times");
    }
}

/// The rewrite nodes' per-vector MTU memo follows the port it is asked about, and a port
/// without an interface neither answers nor disturbs it.
#[test]
fn port_mtu_follows_the_port() {
    let tables = Tables::build(
        1,
        vec![
            Interface::new("a", [2, 0, 0, 0, 0, 1], 1500),
            Interface::new("b", [2, 0, 0, 0, 0, 2], 9000),
        ],
        &[],
    )
    .unwrap();
    let mut mtus = super::PortMtu::new();
    assert_eq!(mtus.get(&tables, 0), Some(1500));
    assert_eq!(mtus.get(&tables, 1), Some(9000));
    assert_eq!(mtus.get(&tables, 7), None);
    assert_eq!(mtus.get(&tables, 1), Some(9000));
    assert_eq!(mtus.get(&tables, 0), Some(1500));
}
