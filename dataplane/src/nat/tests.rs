use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;
use crate::conntrack::FlowKey;
use crate::wire::{checksum, IpProtocol};

/// An IPv4 or IPv6 packet with a transport segment whose checksum is right.
fn packet(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = match proto {
        TCP => {
            let mut h = vec![0u8; 20];
            h[12] = 5 << 4;
            h[13] = 0x02;
            h
        }
        SCTP => vec![0u8; 12],
        _ => {
            let mut h = vec![0u8; 8];
            let len = (8 + payload.len()) as u16;
            h[4..6].copy_from_slice(&len.to_be_bytes());
            h
        }
    };
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(payload);
    fill_l4_checksum(src, dst, proto, &mut l4);
    let mut out = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            h[8] = 64;
            h[9] = proto;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = checksum::checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
            h[6] = proto;
            h[7] = 64;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            h
        }
        _ => unreachable!(),
    };
    out.extend_from_slice(&l4);
    out
}

fn fill_l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, l4: &mut [u8]) {
    let at = match proto {
        TCP => 16,
        UDP => 6,
        SCTP => {
            let mut s = sctp::SctpPacket::new_unchecked(l4);
            s.fill_checksum();
            return;
        }
        _ => return,
    };
    l4[at] = 0;
    l4[at + 1] = 0;
    let ph = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            checksum::pseudo_header_ipv4(&s, &d, IpProtocol(proto), l4.len() as u32)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            checksum::pseudo_header_ipv6(&s, &d, IpProtocol(proto), l4.len() as u32)
        }
        _ => unreachable!(),
    };
    let mut c = checksum::finish(checksum::combine(ph, checksum::sum(l4)));
    if proto == UDP && c == 0 {
        c = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// The packet as it would be built from scratch with `to`'s tuple.
fn expected(orig: &[u8], t: &Tuple, to: &FlowKey) -> Vec<u8> {
    let payload_at = t.l4_offset
        + match t.key.proto {
            TCP => 20,
            SCTP => 12,
            _ => 8,
        };
    let mut want = packet(
        to.src,
        to.dst,
        t.key.proto,
        to.src_port,
        to.dst_port,
        &orig[payload_at..],
    );
    // Fields the builder does not know (TTL, flags) are the same by construction.
    want.truncate(orig.len());
    want
}

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())
}
fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

#[test]
fn dnat_of_tcp_udp_sctp_matches_a_packet_built_from_scratch() {
    for (client, vip, backend) in [
        (v4("198.18.0.2"), v4("198.51.100.10"), v4("203.0.113.7")),
        (v6("2001:db8::2"), v6("2001:db8:1::10"), v6("2001:db8:2::7")),
    ] {
        for proto in [TCP, UDP, SCTP] {
            let pkt = packet(client, vip, proto, 40000, 80, b"hello world");
            let t = Tuple::parse(&pkt).unwrap();
            assert_eq!(t.key, FlowKey::new(client, vip, proto, 40000, 80));
            let to = FlowKey::new(client, backend, proto, 40000, 8080);
            let mut out = pkt.clone();
            assert!(rewrite(&mut out, &t, &to));
            assert_eq!(out, expected(&pkt, &t, &to), "proto {proto} {client}");
            // And back (un-DNAT of the reply, with masquerade this time).
            let masq = FlowKey::new(
                v_like(client, "198.18.0.1", "2001:db8::1"),
                backend,
                proto,
                1234,
                8080,
            );
            let mut again = out.clone();
            let t2 = Tuple::parse(&out).unwrap();
            assert!(rewrite(&mut again, &t2, &masq));
            assert_eq!(again, expected(&out, &t2, &masq));
        }
    }
}

fn v_like(like: IpAddr, a4: &str, a6: &str) -> IpAddr {
    if like.is_ipv4() {
        v4(a4)
    } else {
        v6(a6)
    }
}

#[test]
fn udp_over_ipv4_without_checksum_keeps_none() {
    let mut pkt = packet(v4("198.18.0.2"), v4("198.51.100.10"), UDP, 5000, 53, b"q");
    pkt[26] = 0;
    pkt[27] = 0;
    let t = Tuple::parse(&pkt).unwrap();
    let to = FlowKey::new(v4("198.18.0.2"), v4("203.0.113.9"), UDP, 5000, 5353);
    assert!(rewrite(&mut pkt, &t, &to));
    assert_eq!(&pkt[26..28], &[0, 0]);
    assert!(checksum::verify(&pkt[..20]));
}

#[test]
fn truncated_and_odd_packets_are_refused_not_panicked_on() {
    let pkt = packet(v4("198.18.0.2"), v4("198.51.100.10"), TCP, 1, 2, b"");
    for n in 0..pkt.len() {
        let _ = Tuple::parse(&pkt[..n]);
    }
    let t = Tuple::parse(&pkt).unwrap();
    let mut short = pkt[..30].to_vec();
    assert!(!rewrite(&mut short, &t, &t.key));
}

/// An ICMP error from `from` about `quoted` (an IPv4 packet).
fn icmp4_error(from: Ipv4Addr, to: Ipv4Addr, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted[..quoted.len().min(28)]);
    let c = checksum::checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    h[8] = 64;
    h[9] = ICMP;
    h[12..16].copy_from_slice(&from.octets());
    h[16..20].copy_from_slice(&to.octets());
    let c = checksum::checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(&icmp);
    h
}

#[test]
fn icmp_error_about_a_translated_flow_is_translated_back() {
    let (client, vip, backend) = (v4("198.18.0.2"), v4("198.51.100.10"), v4("203.0.113.7"));
    // What the backend saw, and its port-unreachable about it.
    let seen = packet(client, backend, UDP, 40000, 8080, b"ping");
    let IpAddr::V4(b4) = backend else {
        unreachable!()
    };
    let IpAddr::V4(c4) = client else {
        unreachable!()
    };
    let mut err = icmp4_error(b4, c4, &seen);
    let outer = Tuple::parse(&err).unwrap();
    let (quoted, at) = quoted_tuple(&err, &outer).unwrap();
    assert_eq!(quoted.key, FlowKey::new(client, backend, UDP, 40000, 8080));
    let original = FlowKey::new(client, vip, UDP, 40000, 80);
    assert!(rewrite_icmp_error(
        &mut err, &outer, &quoted, at, &original, vip, client
    ));
    // What the client must see: an error from the service address about its own packet.
    let sent = packet(client, vip, UDP, 40000, 80, b"ping");
    let IpAddr::V4(v4a) = vip else { unreachable!() };
    assert_eq!(err, icmp4_error(v4a, c4, &sent));
}

/// An error about a ping quotes the echo: its key carries the identifier in both port places,
/// as [`FlowKey::icmp_echo`] tracks the ping, so that the error finds the flow it is about.
#[test]
fn a_quoted_echo_is_keyed_by_its_identifier() {
    let (pod, far, router) = (
        Ipv4Addr::new(198, 18, 0, 2),
        Ipv4Addr::new(203, 0, 113, 9),
        Ipv4Addr::new(198, 18, 0, 1),
    );
    // An echo request from the pod, identifier 0x1234, TTL 1.
    let mut echo = vec![0x45, 0, 0, 32, 0, 0, 0, 0, 1, ICMP, 0, 0];
    echo.extend_from_slice(&pod.octets());
    echo.extend_from_slice(&far.octets());
    echo.extend_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd]);
    let mut err = icmp4_error(router, pod, &echo);
    err[20] = 11; // time exceeded in transit (parsing reads no checksum)
    err[21] = 0;
    let outer = Tuple::parse(&err).unwrap();
    let (quoted, _) = quoted_tuple(&err, &outer).unwrap();
    assert_eq!(
        quoted.key,
        FlowKey::icmp_echo(IpAddr::V4(pod), IpAddr::V4(far), 0x1234)
    );
    // An echo reply quoted (the pod answered a ping that then met an error) likewise.
    echo[20] = 0;
    let err = icmp4_error(router, pod, &echo);
    let (quoted, _) = quoted_tuple(&err, &Tuple::parse(&err).unwrap()).unwrap();
    assert_eq!((quoted.key.src_port, quoted.key.dst_port), (0x1234, 0x1234));
    // Other ICMP messages quoted have no identifier: ports stay zero.
    echo[20] = 13; // timestamp request
    let err = icmp4_error(router, pod, &echo);
    let (quoted, _) = quoted_tuple(&err, &Tuple::parse(&err).unwrap()).unwrap();
    assert_eq!((quoted.key.src_port, quoted.key.dst_port), (0, 0));

    // ICMPv6: a time exceeded quoting an echo request (128), identifier 7.
    let (pod6, far6, router6) = (
        "2001:db8:1::2".parse::<Ipv6Addr>().unwrap(),
        "2001:db8:9::9".parse::<Ipv6Addr>().unwrap(),
        "2001:db8:1::1".parse::<Ipv6Addr>().unwrap(),
    );
    let mut quoted6 = vec![0x60, 0, 0, 0, 0, 8, ICMPV6, 1];
    quoted6.extend_from_slice(&pod6.octets());
    quoted6.extend_from_slice(&far6.octets());
    quoted6.extend_from_slice(&[128, 0, 0, 0, 0, 7, 0, 1]);
    let mut err6 = vec![0x60, 0, 0, 0];
    err6.extend_from_slice(&((8 + quoted6.len()) as u16).to_be_bytes());
    err6.extend_from_slice(&[ICMPV6, 64]);
    err6.extend_from_slice(&router6.octets());
    err6.extend_from_slice(&pod6.octets());
    err6.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
    err6.extend_from_slice(&quoted6);
    let outer = Tuple::parse(&err6).unwrap();
    let (quoted, _) = quoted_tuple(&err6, &outer).unwrap();
    assert_eq!(
        quoted.key,
        FlowKey::icmp_echo(IpAddr::V6(pod6), IpAddr::V6(far6), 7)
    );
}

proptest! {
    #[test]
    fn rewrite_equals_rebuild(
        a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), c in any::<[u8; 4]>(), d in any::<[u8; 4]>(),
        ports in any::<[u16; 4]>(),
        proto in prop_oneof![Just(TCP), Just(UDP), Just(SCTP)],
        payload in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let (s, dd) = (IpAddr::from(a), IpAddr::from(b));
        let pkt = packet(s, dd, proto, ports[0], ports[1], &payload);
        let t = Tuple::parse(&pkt).unwrap();
        let to = FlowKey::new(IpAddr::from(c), IpAddr::from(d), proto, ports[2], ports[3]);
        let mut out = pkt.clone();
        prop_assert!(rewrite(&mut out, &t, &to));
        prop_assert_eq!(out, expected(&pkt, &t, &to));
    }

    /// The fast IPv4 paths of `Tuple::parse` and `rewrite` agree with the general code on
    /// well-formed packets and on packets with any header byte changed (options, fragments,
    /// bad lengths, UDP without checksum, truncation).
    #[test]
    fn fast_paths_agree_with_the_general_code(
        a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), c in any::<[u8; 4]>(), d in any::<[u8; 4]>(),
        ports in any::<[u16; 4]>(),
        proto in prop_oneof![Just(TCP), Just(UDP), Just(SCTP), Just(1u8)],
        payload in proptest::collection::vec(any::<u8>(), 0..40),
        poke in proptest::option::of((0usize..48, any::<u8>())),
        cut in proptest::option::of(0usize..64),
        zero_udp_checksum in any::<bool>(),
    ) {
        let (s, dd) = (IpAddr::from(a), IpAddr::from(b));
        let mut pkt = packet(s, dd, proto, ports[0], ports[1], &payload);
        if zero_udp_checksum && proto == UDP {
            pkt[26..28].fill(0);
        }
        if let Some((at, v)) = poke {
            if at < pkt.len() {
                pkt[at] = v;
            }
        }
        if let Some(cut) = cut {
            pkt.truncate(cut);
        }
        let general = Tuple::parse_v4_general(&pkt);
        prop_assert_eq!(Tuple::parse_v4(&pkt), general);
        if let Some(t) = general {
            let to = FlowKey::new(IpAddr::from(c), IpAddr::from(d), t.key.proto, ports[2], ports[3]);
            let (mut fast, mut slow) = (pkt.clone(), pkt.clone());
            prop_assert_eq!(rewrite(&mut fast, &t, &to), rewrite_general(&mut slow, &t, &to));
            prop_assert_eq!(fast, slow);
        }
    }

    /// The rewrite a connection keeps for its IPv4 TCP and UDP packets writes exactly what
    /// the general rewrite writes, checksums included (UDP without checksum, zero results).
    #[test]
    fn kept_rewrite_equals_the_general_rewrite(
        a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), c in any::<[u8; 4]>(), d in any::<[u8; 4]>(),
        ports in any::<[u16; 4]>(),
        keep in any::<[bool; 4]>(),
        proto in prop_oneof![Just(TCP), Just(UDP)],
        payload in proptest::collection::vec(any::<u8>(), 0..40),
        csum in proptest::option::of(any::<u16>()),
    ) {
        let (s, dd) = (IpAddr::from(a), IpAddr::from(b));
        let mut pkt = packet(s, dd, proto, ports[0], ports[1], &payload);
        if let Some(csum) = csum {
            // Any transport checksum, zero and 0xffff among them.
            let at = 20 + if proto == TCP { 16 } else { 6 };
            pkt[at..at + 2].copy_from_slice(&csum.to_be_bytes());
        }
        let plain = Plain4::parse(&pkt).unwrap();
        let t = Tuple::parse(&pkt).unwrap();
        prop_assert_eq!(plain.tuple(), t);
        // Some fields kept as they are, as DNAT keeps the source and SNAT the destination.
        let pick = |k: bool, old: IpAddr, new: [u8; 4]| if k { old } else { IpAddr::from(new) };
        let to = FlowKey::new(
            pick(keep[0], s, c),
            pick(keep[1], dd, d),
            proto,
            if keep[2] { ports[0] } else { ports[2] },
            if keep[3] { ports[1] } else { ports[3] },
        );
        let (mut kept, mut general) = (pkt.clone(), pkt.clone());
        prop_assert!(rewrite(&mut general, &t, &to));
        match Translation::between(&t.key, &to) {
            Translation::None => prop_assert_eq!(&general, &pkt),
            Translation::Ipv4(r) => prop_assert!(r.apply(&mut kept, &plain)),
            Translation::General => prop_assert!(false, "IPv4 TCP/UDP takes the kept rewrite"),
        }
        prop_assert_eq!(kept, general);
    }

    #[test]
    fn parsing_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..80)) {
        if let Some(t) = Tuple::parse(&data) {
            let _ = quoted_tuple(&data, &t);
            let mut copy = data.clone();
            let _ = rewrite(&mut copy, &t, &t.key.reversed());
        }
    }
}
