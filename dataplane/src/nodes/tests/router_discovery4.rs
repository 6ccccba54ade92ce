//! IPv4 ICMP router discovery (RFC 1256): what is sent, when, and in answer to what.

use super::*;
use crate::router_adverts::{IrdpConfig, MAX_RESPONSE_DELAY};
use crate::wire::checksum;

const SECOND: u64 = 1_000_000_000;

fn discovering() -> Rig {
    let mut r = Rig::new();
    r.tables.ipv4_router_discovery = Some(IrdpConfig::default());
    r
}

/// Lets the first few unsolicited advertisements (16 s apart) go by; the next one is then at
/// least MinAdvertisementInterval (450 s) away.
fn past_the_initial_advertisements(r: &mut Rig) {
    for _ in 0..60 {
        advertise(r);
        r.now += SECOND;
    }
}

/// A router solicitation (type 10) from `src` to `dst` with ICMP code `code`, in a frame to
/// the matching MAC (all-routers' group MAC, or broadcast).
fn solicitation(src: Ipv4Addr, dst: Ipv4Addr, code: u8) -> Vec<u8> {
    let mut m = vec![10, code, 0, 0, 0, 0, 0, 0];
    let csum = checksum::checksum(&m);
    m[2..4].copy_from_slice(&csum.to_be_bytes());
    let mac = if dst.is_broadcast() {
        [0xff; 6]
    } else {
        [0x01, 0x00, 0x5e, 0, 0, 2]
    };
    eth(
        mac,
        CLIENT_MAC,
        0x0800,
        &ipv4(src, dst, IpProtocol::ICMP, 1, false, &m),
    )
}

/// A parsed advertisement: Ethernet destination, IP source, destination and TTL, lifetime,
/// and the (address, preference) entries.
#[derive(Debug)]
struct Advert {
    eth_dst: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    lifetime: u16,
    entries: Vec<(Ipv4Addr, i32)>,
}

fn parse_advert(frame: &[u8]) -> Advert {
    assert_eq!(&frame[12..14], &[0x08, 0x00]);
    let ip = ip4_of(frame);
    assert!(ip.verify_checksum());
    assert_eq!(ip.protocol(), IpProtocol::ICMP);
    let m = ip.payload();
    assert_eq!((m[0], m[1]), (9, 0), "a router advertisement");
    assert_eq!(checksum::checksum(m), 0, "ICMP checksum");
    assert_eq!(m[5], 2, "address entry size: two words");
    let count = usize::from(m[4]);
    assert_eq!(m.len(), 8 + 8 * count);
    let entries = m[8..]
        .chunks_exact(8)
        .map(|e| {
            (
                Ipv4Addr::new(e[0], e[1], e[2], e[3]),
                i32::from_be_bytes([e[4], e[5], e[6], e[7]]),
            )
        })
        .collect();
    Advert {
        eth_dst: frame[..6].try_into().unwrap(),
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        ttl: ip.ttl(),
        lifetime: u16::from_be_bytes([m[6], m[7]]),
        entries,
    }
}

#[test]
fn nothing_is_advertised_unless_configured() {
    let mut r = Rig::new();
    assert!(advertise(&mut r).is_empty());
    // A solicitation to all-routers is multicast this router does not take.
    let all_routers = v4("224.0.0.2");
    assert!(r
        .send(0, &solicitation(v4("198.18.1.2"), all_routers, 0))
        .is_empty());
    assert_eq!(r.count("ip4-lookup", "multicast"), 1);
    r.now += 10 * SECOND;
    assert!(advertise(&mut r).is_empty());
}

/// RFC 1256 3 and 4.1: every port with an IPv4 address advertises them all, from its own
/// address, to 224.0.0.1 with TTL 1, for AdvertisementLifetime, at PreferenceLevel.
#[test]
fn advertisements_list_the_port_addresses() {
    let mut r = discovering();
    r.tables.interfaces[1]
        .ipv4
        .push("203.0.113.1/28".parse().unwrap());
    let out = advertise(&mut r);
    assert_eq!(out.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![0, 1]);
    for (port, frame) in &out {
        let ifc = &r.tables.interfaces[usize::from(*port)];
        let ad = parse_advert(frame);
        assert_eq!(ad.eth_dst, [0x01, 0x00, 0x5e, 0, 0, 1]);
        assert_eq!(&frame[6..12], &ifc.mac);
        assert_eq!(
            (ad.src, ad.dst, ad.ttl, ad.lifetime),
            (ifc.ipv4[0].addr(), v4("224.0.0.1"), 1, 1800)
        );
        let want: Vec<(Ipv4Addr, i32)> = ifc.ipv4.iter().map(|n| (n.addr(), 0)).collect();
        assert_eq!(ad.entries, want);
    }
    // Nothing more until the next one is due.
    r.now += SECOND;
    assert!(advertise(&mut r).is_empty());
}

#[test]
fn broadcast_preference_and_lifetime_are_configurable() {
    let mut r = Rig::new();
    let mut config = IrdpConfig::new(30, Some(90)).unwrap();
    config.preference = -5;
    config.broadcast = true;
    r.tables.ipv4_router_discovery = Some(config);
    let ad = parse_advert(&advertise(&mut r)[0].1);
    assert_eq!(ad.eth_dst, [0xff; 6]);
    assert_eq!(ad.dst, Ipv4Addr::BROADCAST);
    assert_eq!((ad.lifetime, ad.entries[0].1), (90, -5));
}

/// RFC 1256 4.3: the first three at most 16 s apart, then between MinAdvertisementInterval
/// (three quarters) and MaxAdvertisementInterval.
#[test]
fn unsolicited_advertisements_follow_the_intervals() {
    check_unsolicited_intervals(&mut discovering(), 3000, (450, 600));
}

/// RFC 1256 4.3: a valid solicitation, to all-routers or the limited broadcast, from a
/// neighbor or from 0.0.0.0, is answered on its port within MAX_RESPONSE_DELAY.
#[test]
fn solicitations_are_answered_within_two_seconds() {
    let mut r = discovering();
    past_the_initial_advertisements(&mut r);
    for (i, (src, dst)) in [
        (v4("198.18.1.2"), v4("224.0.0.2")),
        (v4("198.18.1.2"), Ipv4Addr::BROADCAST),
        (Ipv4Addr::UNSPECIFIED, v4("224.0.0.2")),
    ]
    .into_iter()
    .enumerate()
    {
        r.now += 20 * SECOND;
        let asked = r.now;
        assert!(r.send(0, &solicitation(src, dst, 0)).is_empty());
        assert_eq!(
            r.count("ip4-local", "router_solicitations"),
            i as u64 + 1,
            "{src} > {dst}"
        );
        let mut answered = false;
        while r.now <= asked + MAX_RESPONSE_DELAY {
            let out = advertise(&mut r);
            if !out.is_empty() {
                assert_eq!(out.len(), 1);
                assert_eq!(out[0].0, 0, "on the port asked");
                assert_eq!(parse_advert(&out[0].1).dst, v4("224.0.0.1"));
                answered = true;
                break;
            }
            r.now += SECOND / 100;
        }
        assert!(answered, "{src} > {dst} answered within MAX_RESPONSE_DELAY");
    }
}

/// RFC 1256 4.2: a solicitation with a code other than 0, from an address off the arrival
/// port's subnets, or with a bad checksum, is silently discarded.
#[test]
fn invalid_solicitations_are_discarded() {
    let mut r = discovering();
    past_the_initial_advertisements(&mut r);
    let all_routers = v4("224.0.0.2");
    assert!(r
        .send(0, &solicitation(v4("198.18.1.2"), all_routers, 1))
        .is_empty());
    // 198.18.2.9 is on port 1's subnet, not on port 0's where it arrives.
    assert!(r
        .send(0, &solicitation(v4("198.18.2.9"), all_routers, 0))
        .is_empty());
    assert_eq!(r.count("ip4-local", "bad_router_solicitation"), 2);
    let mut bad_sum = solicitation(v4("198.18.1.2"), all_routers, 0);
    let last = bad_sum.len() - 1;
    bad_sum[last] ^= 1;
    assert!(r.send(0, &bad_sum).is_empty());
    assert_eq!(r.count("ip4-local", "bad_icmp"), 1);
    for _ in 0..300 {
        r.now += SECOND / 100;
        assert!(advertise(&mut r).is_empty(), "no answer scheduled");
    }
    assert_eq!(r.count("ip4-local", "router_solicitations"), 0);
}

/// RFC 1256 4.3: a router that stops advertising sends a last advertisement with lifetime
/// zero; IPv6 advertisements, if on, go too.
#[test]
fn a_stopping_router_withdraws_itself() {
    let mut r = discovering();
    advertise(&mut r);
    assert!(r
        .graph
        .withdraw_router_adverts(&r.tables, &r.state, || Some(HeapBuffer::new(2048, 128))));
    let out = r.take_tx();
    assert_eq!(out.len(), 2);
    for (_, frame) in &out {
        assert_eq!(parse_advert(frame).lifetime, 0);
    }
    r.tables.router_adverts = Some(crate::router_adverts::RaConfig::default());
    r.graph
        .withdraw_router_adverts(&r.tables, &r.state, || Some(HeapBuffer::new(2048, 128)));
    assert_eq!(r.take_tx().len(), 4, "both families on both ports");
}
