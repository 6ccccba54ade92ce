//! IPv6 router advertisements (RFC 4861 6.2): what is sent, when, and in answer to what.

use super::*;
use crate::router_adverts::{RaConfig, MAX_RA_DELAY, MIN_DELAY_BETWEEN_RAS};
use crate::wire::PrefixInformation;

const SECOND: u64 = 1_000_000_000;

fn advertising() -> Rig {
    let mut r = Rig::new();
    r.tables.router_adverts = Some(RaConfig::default());
    r
}

/// A router solicitation from `src` (hop limit `hop`), with a source link-layer option.
fn rs(src: Ipv6Addr, slla: Option<[u8; 6]>, hop: u8) -> Vec<u8> {
    let dst = v6("ff02::2");
    let mut m = vec![133, 0, 0, 0, 0, 0, 0, 0];
    if let Some(mac) = slla {
        m.extend_from_slice(&[1, 1]);
        m.extend_from_slice(&mac);
    }
    let ip = ipv6(src, dst, IpProtocol::ICMPV6, hop, &icmp6(src, dst, m));
    eth([0x33, 0x33, 0, 0, 0, 2], CLIENT_MAC, 0x86dd, &ip)
}

/// A parsed advertisement: the IPv6 header's fields, the message, its prefix options.
struct Ra {
    eth_dst: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    cur_hop_limit: u8,
    flags: u8,
    lifetime: u16,
    slla: Option<[u8; 6]>,
    mtu: Option<u32>,
    prefixes: Vec<PrefixInformation>,
}

fn parse_ra(frame: &[u8]) -> Ra {
    assert_eq!(&frame[12..14], &[0x86, 0xdd]);
    let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
    let m = ip.payload();
    assert_eq!((m[0], m[1]), (134, 0), "a router advertisement");
    assert_eq!(icmpv6_checksum(&ip.src_addr(), &ip.dst_addr(), m), 0);
    let mut ra = Ra {
        eth_dst: frame[..6].try_into().unwrap(),
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        hop_limit: ip.hop_limit(),
        cur_hop_limit: m[4],
        flags: m[5],
        lifetime: u16::from_be_bytes([m[6], m[7]]),
        slla: None,
        mtu: None,
        prefixes: Vec::new(),
    };
    assert_eq!(
        &m[8..16],
        &[0; 8],
        "reachable time and retrans timer unspecified"
    );
    let mut at = 16;
    while at < m.len() {
        let len = usize::from(m[at + 1]) * 8;
        assert!(len > 0 && at + len <= m.len(), "option lengths");
        match m[at] {
            1 => ra.slla = Some(m[at + 2..at + 8].try_into().unwrap()),
            3 => ra
                .prefixes
                .push(PrefixInformation::parse(&m[at..]).unwrap()),
            5 => ra.mtu = Some(u32::from_be_bytes(m[at + 4..at + 8].try_into().unwrap())),
            other => panic!("unexpected option {other}"),
        }
        at += len;
    }
    ra
}

#[test]
fn nothing_is_advertised_unless_configured() {
    let mut r = Rig::new();
    assert!(advertise(&mut r).is_empty());
    // A solicitation is ignored, as a host's would be (AdvSendAdvertisements false).
    assert!(r
        .send(0, &rs(v6("fe80::2"), Some(CLIENT_MAC), 255))
        .is_empty());
    assert_eq!(r.count("ip6-local", "router_discovery"), 1);
    r.now += 10 * SECOND;
    assert!(advertise(&mut r).is_empty());
}

/// RFC 4861 4.2, 6.2.3: from the link-local address to all-nodes, hop limit 255, the
/// configured values, our link-layer address and each port's prefix, on-link and
/// autonomous.
#[test]
fn advertisements_carry_the_port_and_its_prefixes() {
    let mut r = advertising();
    let out = advertise(&mut r);
    assert_eq!(out.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![0, 1]);
    for (port, frame) in &out {
        let ifc = &r.tables.interfaces[usize::from(*port)];
        let ra = parse_ra(frame);
        assert_eq!(ra.eth_dst, [0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(&frame[6..12], &ifc.mac);
        assert_eq!(
            (ra.src, ra.dst, ra.hop_limit),
            (ifc.link_local, v6("ff02::1"), 255)
        );
        assert!(
            ra.src.segments()[0] == 0xfe80,
            "source is link-local (RFC 4861 6.1.2)"
        );
        assert_eq!((ra.cur_hop_limit, ra.flags, ra.lifetime), (64, 0, 1800));
        assert_eq!(ra.slla, Some(ifc.mac));
        assert_eq!(ra.mtu, None, "AdvLinkMTU is 0 by default");
        let net = ifc.ipv6[0];
        assert_eq!(
            ra.prefixes,
            vec![PrefixInformation {
                prefix: net.network(),
                prefix_len: 64,
                on_link: true,
                autonomous: true,
                valid_lifetime: 2_592_000,
                preferred_lifetime: 604_800,
            }]
        );
    }
    // Nothing more until the next one is due.
    r.now += SECOND;
    assert!(advertise(&mut r).is_empty());
}

#[test]
fn the_link_mtu_and_lifetime_are_configurable() {
    let mut r = Rig::new();
    let mut config = RaConfig::new(30, Some(0)).unwrap();
    config.link_mtu = true;
    r.tables.router_adverts = Some(config);
    let out = advertise(&mut r);
    let ra = parse_ra(&out[1].1);
    assert_eq!(ra.mtu, Some(1400));
    assert_eq!(ra.lifetime, 0, "not a default router");
}

/// RFC 4861 6.2.4: the first MAX_INITIAL_RTR_ADVERTISEMENTS at most 16 s apart, then between
/// MinRtrAdvInterval and MaxRtrAdvInterval.
#[test]
fn unsolicited_advertisements_follow_the_intervals() {
    check_unsolicited_intervals(&mut advertising(), 2000, (198, 600));
}

/// RFC 4861 6.2.6: a valid solicitation is answered by a multicast advertisement within
/// MAX_RA_DELAY_TIME, no sooner than MIN_DELAY_BETWEEN_RAS after the previous one; the
/// asker is learned as a neighbor.
#[test]
fn solicitations_are_answered_soon_but_not_too_often() {
    let mut r = advertising();
    advertise(&mut r); // the initial advertisements
    r.now += 5 * SECOND;
    let asked = r.now;
    assert!(r
        .send(0, &rs(v6("fe80::2"), Some(CLIENT_MAC), 255))
        .is_empty());
    assert_eq!(r.count("ip6-local", "router_solicitations"), 1);
    assert_eq!(
        r.state.neighbors.get(0, v6("fe80::2").into()),
        Some(CLIENT_MAC)
    );
    let mut answered = None;
    while r.now <= asked + MAX_RA_DELAY {
        let out = advertise(&mut r);
        if !out.is_empty() {
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].0, 0, "on the port asked");
            parse_ra(&out[0].1);
            answered = Some(r.now);
            break;
        }
        r.now += SECOND / 100;
    }
    let answered = answered.expect("answered within MAX_RA_DELAY_TIME");
    // Asked again at once: the answer waits for MIN_DELAY_BETWEEN_RAS.
    r.send(0, &rs(v6("fe80::2"), Some(CLIENT_MAC), 255));
    while r.now < answered + MIN_DELAY_BETWEEN_RAS {
        assert!(advertise(&mut r).is_empty(), "too soon after the last one");
        r.now += SECOND / 100;
    }
    r.now = answered + MIN_DELAY_BETWEEN_RAS + MAX_RA_DELAY;
    assert_eq!(advertise(&mut r).len(), 1);
}

/// RFC 4861 6.1.1: solicitations with a hop limit other than 255, or from the unspecified
/// address with a source link-layer option, are silently discarded.
#[test]
fn invalid_solicitations_are_discarded() {
    let mut r = advertising();
    advertise(&mut r);
    r.now += 5 * SECOND;
    r.send(0, &rs(v6("fe80::2"), Some(CLIENT_MAC), 64));
    r.send(0, &rs(Ipv6Addr::UNSPECIFIED, Some(CLIENT_MAC), 255));
    assert_eq!(r.count("ip6-local", "bad_nd"), 2);
    r.now += SECOND;
    assert!(advertise(&mut r).is_empty(), "no answer scheduled");
    // From :: without the option: valid, answered, nothing learned.
    r.send(0, &rs(Ipv6Addr::UNSPECIFIED, None, 255));
    assert_eq!(r.count("ip6-local", "router_solicitations"), 1);
    r.now += MAX_RA_DELAY;
    assert_eq!(advertise(&mut r).len(), 1);
}

/// RFC 4861 6.2.5: a router that stops sends a last advertisement with lifetime zero.
#[test]
fn a_stopping_router_withdraws_itself() {
    let mut r = advertising();
    advertise(&mut r);
    assert!(r
        .graph
        .withdraw_router_adverts(&r.tables, &r.state, || Some(HeapBuffer::new(2048, 128))));
    let out = r.take_tx();
    assert_eq!(out.len(), 2);
    for (_, frame) in &out {
        let ra = parse_ra(frame);
        assert_eq!(ra.lifetime, 0);
        assert_eq!(ra.prefixes.len(), 1);
    }
    // Not configured: nothing.
    r.tables.router_adverts = None;
    assert!(!r
        .graph
        .withdraw_router_adverts(&r.tables, &r.state, || Some(HeapBuffer::new(2048, 128))));
}
