//! Multicast listener reports (MLDv2, RFC 3810; see `crate::mld`).

use super::*;

const SECOND: u64 = 1_000_000_000;

/// Runs the listener reports at `r.now`; returns what they sent.
fn report(r: &mut Rig) -> Vec<(u16, Vec<u8>)> {
    r.graph
        .report_listeners(&r.tables, &mut r.state, r.now, || {
            Some(HeapBuffer::new(2048, 128))
        });
    r.take_tx()
}

/// Checks one report frame from `port`'s interface and returns (record type, groups).
fn parse_report(r: &Rig, port: u16, frame: &[u8]) -> (u8, Vec<Ipv6Addr>) {
    let ifc = r.tables.interface(port).unwrap();
    assert_eq!(&frame[..6], &[0x33, 0x33, 0, 0, 0, 0x16]);
    assert_eq!(&frame[6..12], &ifc.mac);
    let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
    assert_eq!(ip.src_addr(), ifc.link_local, "from the link-local address");
    assert_eq!(ip.dst_addr(), v6("ff02::16"));
    assert_eq!(ip.hop_limit(), 1);
    assert_eq!(ip.next_header(), IpProtocol::HOP_BY_HOP);
    let payload = ip.payload();
    // Hop-by-hop: ICMPv6 next, a Router Alert for MLD (RFC 2711).
    assert_eq!(&payload[..6], &[58, 0, 5, 2, 0, 0]);
    let m = &payload[8..];
    assert_eq!(icmpv6_checksum(&ip.src_addr(), &ip.dst_addr(), m), 0);
    assert_eq!((m[0], m[1]), (143, 0));
    let n = usize::from(u16::from_be_bytes([m[6], m[7]]));
    assert_eq!(m.len(), 8 + 20 * n);
    let records: Vec<_> = m[8..].chunks_exact(20).collect();
    assert!(records
        .iter()
        .all(|rec| rec[0] == records[0][0] && rec[1..4] == [0; 3]));
    let groups = records
        .iter()
        .map(|rec| Ipv6Addr::from(<[u8; 16]>::try_from(&rec[4..]).unwrap()))
        .collect();
    (records[0][0], groups)
}

#[test]
fn ports_announce_their_groups_twice_when_they_come_up() {
    let mut r = Rig::new();
    let out = report(&mut r);
    assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), [0, 1]);
    let (kind, groups) = parse_report(&r, 0, &out[0].1);
    assert_eq!(kind, 4, "CHANGE_TO_EXCLUDE_MODE: a state change");
    let link_local = r.tables.interface(0).unwrap().link_local.octets();
    let solicited_ll = Ipv6Addr::from([
        0xff,
        0x02,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        1,
        0xff,
        link_local[13],
        link_local[14],
        link_local[15],
    ]);
    for want in [
        v6("ff02::2"),
        v6("ff05::2"),
        v6("ff02::1:ff00:1"), // 2001:db8:1::1
        v6("ff02::1:ff00:0"), // the Subnet-Router anycast 2001:db8:1::
        solicited_ll,
    ] {
        assert!(groups.contains(&want), "{want} missing: {groups:?}");
    }
    assert!(
        !groups.contains(&v6("ff02::1")),
        "all-nodes is never reported"
    );
    // The second within a second, then no more.
    let mut again = Vec::new();
    for _ in 0..30 {
        r.now += SECOND / 10;
        again.extend(report(&mut r));
    }
    assert_eq!(again.iter().filter(|o| o.0 == 0).count(), 1, "{again:?}");
}

/// A query (MLDv2, general, from a link-local router to all-nodes) is answered with the
/// current state within its maximum response delay; one from a global address is not
/// (RFC 3810 5.1.14).
#[test]
fn queries_are_answered_within_their_delay() {
    let mut r = Rig::new();
    report(&mut r);
    r.now += 10 * SECOND;
    report(&mut r);
    let querier = v6("fe80::99");
    for (src, answered) in [(v6("2001:db8:1::2"), false), (querier, true)] {
        // Maximum Response Code 500 ms, no group (general), QRV 2, QQIC 125, no sources.
        let mut q = vec![130, 0, 0, 0, 0x01, 0xf4, 0, 0];
        q.extend_from_slice(&[0; 16]);
        q.extend_from_slice(&[2, 125, 0, 0]);
        let pkt = ipv6(
            src,
            v6("ff02::1"),
            IpProtocol::ICMPV6,
            1,
            &icmp6(src, v6("ff02::1"), q),
        );
        let out = r.send(0, &eth([0x33, 0x33, 0, 0, 0, 1], CLIENT_MAC, 0x86dd, &pkt));
        assert!(out.is_empty());
        let mut sent = Vec::new();
        for _ in 0..6 {
            r.now += SECOND / 10;
            sent.extend(report(&mut r));
        }
        assert_eq!(sent.len(), usize::from(answered), "from {src}: {sent:?}");
        if answered {
            assert_eq!(sent[0].0, 0, "on the port queried");
            let (kind, groups) = parse_report(&r, 0, &sent[0].1);
            assert_eq!(kind, 2, "MODE_IS_EXCLUDE: the current state");
            assert!(groups.contains(&v6("ff02::2")));
        }
    }
    assert_eq!(r.count("ip6-local", "bad_mld"), 1);
    assert_eq!(r.count("ip6-local", "mld_queries"), 1);
}
