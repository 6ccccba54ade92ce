//! Conformance probes: each test states the RFC behaviour it checks (RFC 1812, 791, 8200,
//! 4443, 4861, 826, 4291, 8201, 3927, 1122), found by a review of the router against those RFCs; the `control_`
//! tests pin behaviour that was already right.

use super::*;

const OTHER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x33];
const NEW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x44];

/// Runs the time-driven work (expiry of neighbors, reassembly, held packets) at `r.now` and
/// returns what the graph sends because of it.
fn tick(r: &mut Rig) -> Vec<(u16, Vec<u8>)> {
    r.state.expire(r.now);
    r.graph
        .housekeeping(&mut r.state, r.now, || Some(HeapBuffer::new(2048, 128)));
    r.graph.probe_neighbors(&r.tables, &mut r.state, r.now, || {
        Some(HeapBuffer::new(2048, 128))
    });
    r.graph.dispatch(&r.tables, &mut r.state, r.now);
    r.take_tx()
}

/// The ICMPv6 messages among `out`: (port, src, dst, type, code, rest-of-header).
fn icmp6_msgs(out: &[(u16, Vec<u8>)]) -> Vec<(u16, Ipv6Addr, Ipv6Addr, u8, u8, u32)> {
    out.iter()
        .filter(|(_, f)| f[12..14] == [0x86, 0xdd])
        .filter_map(|(p, f)| {
            let ip = Ipv6Packet::new_checked(&f[14..]).ok()?;
            if ip.next_header() != IpProtocol::ICMPV6 {
                return None;
            }
            let m = ip.payload();
            Some((
                *p,
                ip.src_addr(),
                ip.dst_addr(),
                m[0],
                m[1],
                u32::from_be_bytes([m[4], m[5], m[6], m[7]]),
            ))
        })
        .collect()
}

/// The ICMPv4 messages among `out`: (port, src, dst, type, code).
fn icmp4_msgs(out: &[(u16, Vec<u8>)]) -> Vec<(u16, Ipv4Addr, Ipv4Addr, u8, u8)> {
    out.iter()
        .filter(|(_, f)| f[12..14] == [8, 0])
        .filter_map(|(p, f)| {
            let ip = Ipv4Packet::new_checked(&f[14..]).ok()?;
            if ip.protocol() != IpProtocol::ICMP {
                return None;
            }
            let m = ip.payload();
            Some((*p, ip.src_addr(), ip.dst_addr(), m[0], m[1]))
        })
        .collect()
}

fn na(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr, flags: u8, tlla: Option<[u8; 6]>) -> Vec<u8> {
    let mut m = vec![136, 0, 0, 0, flags, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    if let Some(mac) = tlla {
        m.extend_from_slice(&[2, 1]);
        m.extend_from_slice(&mac);
    }
    ipv6(src, dst, IpProtocol::ICMPV6, 255, &icmp6(src, dst, m))
}

/// An IPv6 fragment: fragment header (next header `nh`, offset in bytes, M) then `data`.
fn frag6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    nh: u8,
    offset: u16,
    more: bool,
    id: u32,
    data: &[u8],
) -> Vec<u8> {
    let mut fh = vec![nh, 0];
    fh.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
    fh.extend_from_slice(&id.to_be_bytes());
    fh.extend_from_slice(data);
    ipv6(src, dst, IpProtocol::FRAGMENT, 64, &fh)
}

fn udp_bytes() -> Vec<u8> {
    // Ports 1000 → 33434, length 12, checksum 0 (none: for packets the router forwards, which
    // it does not look into); payload 4 bytes.
    vec![0x03, 0xe8, 0x82, 0x9a, 0, 12, 0, 0, 1, 2, 3, 4]
}

// ---------------------------------------------------------------- RFC 4443 -------------

/// RFC 4443 2.2 (a): an ICMPv6 message sent in response to a packet addressed to one of the
/// node's unicast addresses MUST use that address as its source.
#[test]
fn rfc4443_2_2_error_about_a_packet_to_our_address_comes_from_that_address() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:2::1"));
    let udp = udp_datagram(IpAddrPair::V6 { src: c, dst: me }, &[1, 2, 3, 4]);
    let pkt = ipv6(c, me, IpProtocol::UDP, 64, &udp);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    let msgs = icmp6_msgs(&out);
    assert_eq!(msgs.len(), 1);
    let (_, src, dst, t, code, _) = msgs[0];
    assert_eq!((t, code, dst), (1, 4, c));
    assert_eq!(
        src, me,
        "port unreachable must come from the address probed"
    );
}

/// Same rule, parameter problem (unknown next header) about a packet to our other address.
#[test]
fn rfc4443_2_2_param_problem_about_a_packet_to_our_address_comes_from_that_address() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:2::1"));
    let pkt = ipv6(c, me, IpProtocol(253), 64, &[0; 8]);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    let msgs = icmp6_msgs(&out);
    assert_eq!(msgs.len(), 1);
    assert_eq!((msgs[0].3, msgs[0].4, msgs[0].5), (4, 1, 6));
    assert_eq!(msgs[0].1, me);
}

// ---------------------------------------------------------------- RFC 8200 -------------

/// RFC 8200 4 (and 4.1): a Next Header value of zero (hop-by-hop) in any header other than
/// the IPv6 header draws a Parameter Problem code 1 pointing at that Next Header byte.
#[test]
fn rfc8200_4_hop_by_hop_not_first_gets_param_problem_code_1() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    // Destination options (next header 0 = hop-by-hop), then a hop-by-hop header, then echo.
    let echo = icmp6(c, me, vec![128, 0, 0, 0, 0, 1, 0, 1]);
    let mut payload = vec![0, 0, 1, 4, 0, 0, 0, 0];
    payload.extend_from_slice(&[58, 0, 1, 4, 0, 0, 0, 0]);
    payload.extend_from_slice(&echo);
    let pkt = ipv6(c, me, IpProtocol::DEST_OPTS, 64, &payload);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    let msgs = icmp6_msgs(&out);
    assert_eq!(msgs.len(), 1);
    assert_eq!((msgs[0].3, msgs[0].4, msgs[0].5), (4, 1, 40));
}

/// RFC 8200 4.5: a first fragment that does not include all headers through an upper-layer
/// header should be discarded and draw a Parameter Problem code 3, pointer 0.
#[test]
fn rfc8200_4_5_first_fragment_without_the_header_chain_gets_param_problem_code_3() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    // First fragment: a destination options header whose next header (routing) is not in it.
    let first = frag6(c, me, 60, 0, true, 0x55, &[43, 0, 1, 4, 0, 0, 0, 0]);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &first));
    let msgs = icmp6_msgs(&out);
    assert_eq!(msgs.len(), 1);
    assert_eq!((msgs[0].3, msgs[0].4, msgs[0].5), (4, 3, 0));
}

/// RFC 8200 4.5: a fragment with M set whose length is not a multiple of 8 must be discarded
/// and should draw a Parameter Problem code 0 pointing at the Payload Length field (4).
#[test]
fn rfc8200_4_5_fragment_not_a_multiple_of_8_gets_param_problem_at_payload_length() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    let echo = icmp6(c, me, vec![128, 0, 0, 0, 0, 1, 0, 1, 1, 2, 3, 4]);
    let first = frag6(c, me, 58, 0, true, 0x56, &echo);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &first));
    let msgs = icmp6_msgs(&out);
    assert_eq!(msgs.len(), 1);
    assert_eq!((msgs[0].3, msgs[0].4, msgs[0].5), (4, 0, 4));
}

/// RFC 8200 4.5: a fragment whose offset and length would make the reassembled payload longer
/// than 65,535 bytes must be discarded and should draw a Parameter Problem code 0 pointing at
/// the Fragment Offset field (42).
#[test]
fn rfc8200_4_5_fragment_beyond_65535_gets_param_problem_at_fragment_offset() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    let pkt = frag6(c, me, 58, 65_528, false, 0x57, &[0; 16]);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    let msgs = icmp6_msgs(&out);
    assert_eq!(msgs.len(), 1);
    assert_eq!((msgs[0].3, msgs[0].4, msgs[0].5), (4, 0, 42));
}

/// RFC 8200 4.5: when reassembly is abandoned after 60 s and the first fragment was received,
/// an ICMPv6 Time Exceeded code 1 (fragment reassembly time exceeded) should be sent to its
/// source.
#[test]
fn rfc8200_4_5_reassembly_timeout_sends_time_exceeded_code_1() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    let mut echo = vec![128, 0, 0, 0, 0, 9, 0, 1];
    echo.extend([7u8; 24]);
    let echo = icmp6(c, me, echo);
    let first = frag6(c, me, 58, 0, true, 0x58, &echo[..16]);
    assert!(r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &first)).is_empty());
    r.now += crate::reassembly::TIMEOUT_V6 + 1;
    let out = tick(&mut r);
    let msgs = icmp6_msgs(&out);
    assert_eq!(msgs.len(), 1, "nothing sent when reassembly timed out");
    assert_eq!((msgs[0].2, msgs[0].3, msgs[0].4), (c, 3, 1));
}

/// RFC 1122 3.3.2 (RFC 792): when IPv4 reassembly times out with fragment zero received, the
/// datagram is discarded and an ICMP Time Exceeded code 1 sent to the source.
#[test]
fn rfc1122_3_3_2_ipv4_reassembly_timeout_sends_time_exceeded_code_1() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v4("198.18.1.2"), v4("198.18.1.1"));
    let echo = icmp_echo(8, 40);
    let frags = ipv4_fragments(c, me, &echo, 24);
    assert!(r
        .send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &frags[0]))
        .is_empty());
    r.now += crate::reassembly::TIMEOUT_V4 + 1;
    let out = tick(&mut r);
    let msgs = icmp4_msgs(&out);
    assert_eq!(msgs.len(), 1, "nothing sent when reassembly timed out");
    assert_eq!((msgs[0].2, msgs[0].3, msgs[0].4), (c, 11, 1));
}

// ---------------------------------------------------------------- RFC 4861 -------------

/// RFC 4861 7.2.5: an advertisement with the Override flag clear and a link-layer address
/// different from the cached one must not update the cached address (the entry only goes
/// STALE if it was REACHABLE).
#[test]
fn rfc4861_7_2_5_na_without_override_does_not_replace_the_cached_address() {
    let mut r = Rig::new();
    let (n, me) = (v6("2001:db8:1::5"), v6("2001:db8:1::1"));
    // The neighbor solicits us: its entry is created with OTHER_MAC.
    let out = r.send(
        0,
        &eth(MAC0, OTHER_MAC, 0x86dd, &ns(n, me, me, Some(OTHER_MAC))),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(r.state.neighbors.get(0, n.into()), Some(OTHER_MAC));
    // Solicited advertisement, O clear, another address: ignored for the address.
    let adv = na(n, me, n, 0x40, Some(NEW_MAC));
    r.send(0, &eth(MAC0, NEW_MAC, 0x86dd, &adv));
    assert_eq!(
        r.state.neighbors.get(0, n.into()),
        Some(OTHER_MAC),
        "O=0 advertisement replaced the cached link-layer address"
    );
    // With O set it is taken (control).
    let adv = na(n, me, n, 0x60, Some(NEW_MAC));
    r.send(0, &eth(MAC0, NEW_MAC, 0x86dd, &adv));
    assert_eq!(r.state.neighbors.get(0, n.into()), Some(NEW_MAC));
}

/// RFC 4861 7.2.2: when address resolution fails, the sender MUST return ICMPv6 Destination
/// Unreachable code 3 (address unreachable) for each packet queued awaiting it.
#[test]
fn rfc4861_7_2_2_failed_resolution_sends_address_unreachable() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let c = v6("2001:db8:1::2");
    let pkt = echo6(c, v6("2001:db8:2::9"), 64);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    assert_eq!(out.len(), 1, "the solicitation");
    assert_eq!(r.graph.held(), 1);
    r.now += crate::graph::HOLD_TIME;
    let out = tick(&mut r);
    let msgs = icmp6_msgs(&out)
        .into_iter()
        .filter(|m| m.3 == 1)
        .collect::<Vec<_>>();
    assert_eq!(
        msgs.len(),
        1,
        "no destination unreachable for the queued packet"
    );
    assert_eq!((msgs[0].2, msgs[0].4), (c, 3));
}

/// RFC 1812 5.2.7.1: Destination Unreachable code 1 (host unreachable) is "generated by a
/// router if a forwarding path to the destination host on a directly connected network is not
/// available (does not respond to ARP)".
#[test]
fn rfc1812_failed_arp_sends_host_unreachable() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let c = v4("198.18.1.2");
    let pkt = ipv4(c, v4("198.18.2.9"), IpProtocol::UDP, 64, false, &[0; 8]);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
    assert_eq!(out.len(), 1, "the ARP request");
    r.now += crate::graph::HOLD_TIME;
    let out = tick(&mut r);
    let msgs = icmp4_msgs(&out);
    assert_eq!(msgs.len(), 1, "no host unreachable for the queued packet");
    assert_eq!((msgs[0].2, msgs[0].3, msgs[0].4), (c, 3, 1));
}

/// RFC 4861 7.3.3: an entry that needs reachability confirmation is probed with unicast
/// solicitations to the cached link-layer address (DELAY → PROBE), not multicast ones.
#[test]
fn rfc4861_7_3_3_stale_neighbor_is_probed_by_unicast() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (n, me) = (v6("2001:db8:2::5"), v6("2001:db8:2::1"));
    r.send(
        1,
        &eth(MAC1, OTHER_MAC, 0x86dd, &ns(n, me, me, Some(OTHER_MAC))),
    );
    assert_eq!(r.state.neighbors.get(1, n.into()), Some(OTHER_MAC));
    // Long after: traffic to it goes out and the entry is checked.
    r.now += 120 * 1_000_000_000;
    let pkt = echo6(v6("2001:db8:1::2"), n, 64);
    let mut out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    // Give the DELAY state its 5 s.
    r.now += 6 * 1_000_000_000;
    out.extend(tick(&mut r));
    out.extend(r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt)));
    let solicitations: Vec<_> = out
        .iter()
        .filter(|(_, f)| {
            f[12..14] == [0x86, 0xdd] && f.len() > 54 && f[14 + 6] == 58 && f[54] == 135
        })
        .collect();
    assert!(!solicitations.is_empty(), "no probe at all");
    for (_, f) in solicitations {
        assert_eq!(&f[0..6], &OTHER_MAC, "probe sent to a multicast MAC");
        let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
        assert_eq!(ip.dst_addr(), n, "probe sent to a multicast group");
    }
}

/// RFC 4861 4.5 / 8.2: the Target of a redirect to a better router MUST be that router's
/// link-local address (only an on-link destination may be its own target).
#[test]
fn rfc4861_4_5_redirect_target_for_a_router_is_link_local() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let ifcs = r.tables.interfaces.clone();
    r.tables = Tables::build(
        2,
        ifcs,
        &[StaticRoute {
            prefix: "2001:db8:99::/48".parse().unwrap(),
            target: RouteTarget::Via(vec![(Some("2001:db8:1::3".parse().unwrap()), None)]),
        }],
    )
    .unwrap();
    r.state
        .neighbors
        .insert_permanent(0, v6("2001:db8:1::3").into(), OTHER_MAC);
    let (c, d) = (v6("2001:db8:1::2"), v6("2001:db8:99::9"));
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &echo6(c, d, 64)));
    for (_, f) in out.iter().filter(|(_, f)| f[0..6] == CLIENT_MAC) {
        let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
        let m = ip.payload();
        if m[0] == 137 {
            let target = Ipv6Addr::from(<[u8; 16]>::try_from(&m[8..24]).unwrap());
            assert!(
                target == d || super::super::ip6::is_link_local(&target),
                "redirect target {target} is neither the destination nor link-local"
            );
        }
    }
}

// ---------------------------------------------------------------- RFC 1812 -------------

/// RFC 1812 5.2.7.2: a router MUST NOT send a redirect about a packet that carries an IP
/// source route option.
#[test]
fn rfc1812_5_2_7_2_no_redirect_for_a_source_routed_packet() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    r.state
        .neighbors
        .insert_permanent(0, v4("198.18.1.5").into(), OTHER_MAC);
    // LSRR with one hop left: 198.18.1.5 (on the link the packet came from).
    let lsrr = [131, 7, 4, 198, 18, 1, 5, 0];
    let pkt = ipv4_with_options(v4("198.18.1.2"), v4("198.18.1.1"), &lsrr, &icmp_echo(8, 8));
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
    assert!(
        out.iter().any(|(_, f)| f[0..6] == OTHER_MAC),
        "source route not followed"
    );
    let redirects = icmp4_msgs(&out).into_iter().filter(|m| m.3 == 5).count();
    assert_eq!(redirects, 0, "redirect sent about a source-routed packet");
}

/// RFC 1812 5.3.7 / 4.2.2.11: a directed broadcast address is not a valid source; a router
/// should not forward a packet from one (here the broadcast of the receiving subnet).
#[test]
fn rfc1812_5_3_7_directed_broadcast_source_is_not_forwarded() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let pkt = ipv4(
        v4("198.18.1.255"),
        v4("198.18.2.2"),
        IpProtocol::UDP,
        64,
        false,
        &[0; 8],
    );
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
    assert!(
        out.is_empty(),
        "forwarded a packet from a broadcast address"
    );
}

// ------------------------------------------------ controls (expected to pass) -------------

/// RFC 1812 4.2.2.9 / 5.3.1: packets to the router with TTL 0 or 1 are received, not expired.
#[test]
fn control_ttl_0_and_1_to_the_router_are_answered() {
    for ttl in [0u8, 1] {
        let mut r = Rig::new();
        r.learn_client_and_server();
        let ping = ipv4(
            v4("198.18.1.2"),
            v4("198.18.2.1"),
            IpProtocol::ICMP,
            ttl,
            false,
            &icmp_echo(8, 8),
        );
        let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &ping));
        let msgs = icmp4_msgs(&out);
        assert_eq!(msgs.len(), 1, "ttl {ttl}");
        assert_eq!(msgs[0].3, 0, "ttl {ttl}: echo reply");
    }
}

/// RFC 8200 3: hop limit 0 or 1 to the router is delivered.
#[test]
fn control_hop_limit_0_and_1_to_the_router_are_answered() {
    for hop in [0u8, 1] {
        let mut r = Rig::new();
        r.learn_client_and_server();
        let ping = echo6(v6("2001:db8:1::2"), v6("2001:db8:2::1"), hop);
        let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &ping));
        let msgs = icmp6_msgs(&out);
        assert_eq!(msgs.len(), 1, "hop {hop}");
        assert_eq!(msgs[0].3, 129);
    }
}

/// RFC 4443 3.2: a forwarded packet bigger than the link MTU draws Packet Too Big with the MTU
/// and at most 1280 bytes; RFC 4443 2.4(e): not about a multicast-L2 frame (except PTB).
#[test]
fn control_packet_too_big_and_ipv6_error_size() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let c = v6("2001:db8:1::2");
    let mut msg = vec![128, 0, 0, 0, 0, 1, 0, 1];
    msg.extend([0u8; 1400]);
    let d = v6("2001:db8:2::2");
    let msg = icmp6(c, d, msg);
    let pkt = ipv6(c, d, IpProtocol::ICMPV6, 64, &msg);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    let msgs = icmp6_msgs(&out);
    assert_eq!(msgs.len(), 1);
    assert_eq!((msgs[0].3, msgs[0].4, msgs[0].5), (2, 0, 1400));
    assert!(out[0].1.len() - 14 <= 1280);
}

/// RFC 4861 7.1.1: a DAD probe (from ::) to a group other than the target's solicited-node
/// group is invalid; RFC 4861 7.2.4: a valid DAD probe is answered to all-nodes with S clear.
#[test]
fn control_dad_probe_handling() {
    let mut r = Rig::new();
    let me = v6("2001:db8:1::1");
    let unspec = Ipv6Addr::UNSPECIFIED;
    let out = r.send(
        0,
        &eth(
            [0x33, 0x33, 0, 0, 0, 1],
            CLIENT_MAC,
            0x86dd,
            &ns(unspec, v6("ff02::1"), me, None),
        ),
    );
    assert!(out.is_empty());
    let out = r.send(
        0,
        &eth(
            [0x33, 0x33, 0xff, 0, 0, 1],
            CLIENT_MAC,
            0x86dd,
            &ns(unspec, v6("ff02::1:ff00:1"), me, None),
        ),
    );
    assert_eq!(out.len(), 1);
    let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
    assert_eq!(ip.dst_addr(), v6("ff02::1"));
    assert_eq!(ip.payload()[4] & 0x40, 0);
}

/// RFC 826: a request for another host updates an existing entry for the sender (merge) but
/// creates none and is not answered; a broadcast sender hardware address is ignored.
#[test]
fn control_arp_merge_and_bad_sender() {
    let mut r = Rig::new();
    r.state
        .neighbors
        .learn(0, v4("198.18.1.9").into(), OTHER_MAC, r.now, true);
    let other = arp(1, NEW_MAC, v4("198.18.1.9"), [0; 6], v4("198.18.1.7"));
    assert!(r.send(0, &eth(BCAST, NEW_MAC, 0x0806, &other)).is_empty());
    assert_eq!(
        r.state.neighbors.get(0, v4("198.18.1.9").into()),
        Some(NEW_MAC)
    );
    let bad = arp(1, BCAST, v4("198.18.1.8"), [0; 6], v4("198.18.1.1"));
    assert!(r.send(0, &eth(BCAST, NEW_MAC, 0x0806, &bad)).is_empty());
}

/// RFC 8200 4.5 / RFC 6946: an atomic fragment is processed as a whole packet.
#[test]
fn control_atomic_fragment_is_processed() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    let echo = icmp6(c, me, vec![128, 0, 0, 0, 0, 1, 0, 1]);
    let pkt = frag6(c, me, 58, 0, false, 0x99, &echo);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    let msgs = icmp6_msgs(&out);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].3, 129);
}

/// RFC 4443 2.4 (e.2): an ICMPv6 error message MUST NOT be originated as a result of
/// receiving an ICMPv6 Redirect message.
#[test]
fn rfc4443_2_4_e2_no_error_about_a_redirect() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, d) = (v6("2001:db8:1::2"), v6("2001:db8:77::1"));
    // A redirect (type 137) toward a destination with no route.
    let mut m = vec![137, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&v6("2001:db8:1::3").octets());
    m.extend_from_slice(&v6("2001:db8:99::9").octets());
    let pkt = ipv6(c, d, IpProtocol::ICMPV6, 255, &icmp6(c, d, m));
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    assert!(
        icmp6_msgs(&out).is_empty(),
        "ICMPv6 error sent about a redirect: {:?}",
        icmp6_msgs(&out)
    );
}

/// RFC 791 3.2 / RFC 6864 4.1: the identification of a non-atomic datagram (DF clear) must be
/// unique for its source, destination and protocol while it may be alive; two ICMP errors the
/// router originates to one host with DF clear must not share an identification.
#[test]
fn rfc791_icmp_errors_get_distinct_identifications() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let c = v4("198.18.1.2");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let pkt = ipv4(c, v4("203.0.113.9"), IpProtocol::UDP, 64, false, &[0; 8]);
        let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
        let ip = ip4_of(&out[0].1);
        ids.push((ip.ident(), ip.dont_fragment()));
    }
    assert!(
        ids[0].1 || ids[0].0 != ids[1].0,
        "two non-atomic ICMP errors with identification {:?}",
        ids
    );
}

/// RFC 1812 5.3.4 (and RFC 1122 3.3.6): a router SHOULD silently discard a packet received
/// in a link-layer broadcast whose IP destination is neither broadcast nor multicast, here an
/// echo request to its own unicast address.
#[test]
fn rfc1812_5_3_4_unicast_ip_in_link_layer_broadcast_to_the_router_is_discarded() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let ping = ipv4(
        v4("198.18.1.2"),
        v4("198.18.1.1"),
        IpProtocol::ICMP,
        64,
        false,
        &icmp_echo(8, 8),
    );
    let out = r.send(0, &eth(BCAST, CLIENT_MAC, 0x0800, &ping));
    assert!(
        out.is_empty(),
        "answered a unicast echo in a broadcast frame"
    );
}

/// RFC 1812 4.2.3.1: a router SHOULD silently discard on receipt any packet addressed to
/// { <Network-prefix>, 0 } of an attached network (if not, treat it as a broadcast: never
/// resolve it as a host).
#[test]
fn rfc1812_4_2_3_1_packet_to_the_subnet_zero_address_is_discarded() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let pkt = ipv4(
        v4("198.18.1.2"),
        v4("198.18.2.0"),
        IpProtocol::UDP,
        64,
        false,
        &[0; 8],
    );
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
    assert!(
        out.is_empty(),
        "a packet to the subnet's zero address went out: {:?}",
        out.iter().map(|(p, f)| (p, &f[..14])).collect::<Vec<_>>()
    );
}

/// RFC 791 3.2 (reassembly): a fragment duplicated by the network is merged (the algorithm
/// copies each fragment's data into place); the datagram still completes.
#[test]
fn rfc791_duplicate_ipv4_fragment_does_not_kill_reassembly() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v4("198.18.1.2"), v4("198.18.1.1"));
    let echo = icmp_echo(8, 40);
    let frags = ipv4_fragments(c, me, &echo, 24);
    let mut out = Vec::new();
    out.extend(r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &frags[0])));
    out.extend(r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &frags[0])));
    for f in &frags[1..] {
        out.extend(r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, f)));
    }
    let msgs = icmp4_msgs(&out);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].3, 0);
}

/// RFC 4291 2.6.1: routers MUST support the Subnet-Router anycast address of the prefixes on
/// their interfaces (an echo request to it is answered, not resolved as a host).
#[test]
fn rfc4291_subnet_router_anycast_is_ours() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let ping = echo6(v6("2001:db8:1::2"), v6("2001:db8:1::"), 64);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &ping));
    let msgs = icmp6_msgs(&out);
    assert!(msgs.iter().any(|m| m.3 == 129), "no echo reply: {:?}", msgs);
}

/// Control: RFC 8200 4 / RFC 4443 3.4: unknown next header after a destination options
/// header: code 1, pointer at that header's Next Header byte (40).
#[test]
fn control_unknown_next_header_after_dest_opts_points_at_it() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    let pkt = ipv6(
        c,
        me,
        IpProtocol::DEST_OPTS,
        64,
        &[253, 0, 1, 4, 0, 0, 0, 0, 1, 2, 3, 4],
    );
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    let msgs = icmp6_msgs(&out);
    assert_eq!(msgs.len(), 1);
    assert_eq!((msgs[0].3, msgs[0].4, msgs[0].5), (4, 1, 40));
}

/// RFC 4291 2.5.2 (RFC 8200 forwarding): the unspecified address must never be the source of
/// a packet a router forwards.
#[test]
fn rfc4291_2_5_2_unspecified_source_is_not_forwarded() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (s, d) = (Ipv6Addr::UNSPECIFIED, v6("2001:db8:2::2"));
    let pkt = ipv6(s, d, IpProtocol::UDP, 64, &udp_bytes());
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    assert!(out.is_empty(), "forwarded a packet from ::");
}

/// RFC 826 / RFC 1812 (as Linux): an ARP packet whose sender protocol address is a broadcast
/// or multicast address is not answered and teaches nothing.
#[test]
fn rfc826_arp_with_broadcast_or_multicast_sender_ip_is_ignored() {
    for spa in ["255.255.255.255", "224.0.0.5", "198.18.1.255"] {
        let mut r = Rig::new();
        let req = arp(1, NEW_MAC, v4(spa), [0; 6], v4("198.18.1.1"));
        let out = r.send(0, &eth(BCAST, NEW_MAC, 0x0806, &req));
        assert!(out.is_empty(), "answered an ARP request from {spa}");
        assert_eq!(
            r.state.neighbors.get(0, v4(spa).into()),
            None,
            "learned {spa}"
        );
    }
}

/// RFC 4861 7.2.2: while resolution is pending the sender SHOULD retransmit the solicitation
/// every RetransTimer (1 s) until MAX_MULTICAST_SOLICIT (3) have been sent, packet or not.
#[test]
fn rfc4861_7_2_2_solicitation_is_retransmitted_while_a_packet_waits() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let pkt = echo6(v6("2001:db8:1::2"), v6("2001:db8:2::9"), 64);
    let mut out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    for _ in 0..2 {
        r.now += 1_000_000_000;
        out.extend(tick(&mut r));
    }
    let ns_count = icmp6_msgs(&out).iter().filter(|m| m.3 == 135).count();
    assert_eq!(
        ns_count, 3,
        "solicitations sent for one waiting packet over 2 s"
    );
}

/// RFC 8200 4.5: the unfragmentable part may hold a hop-by-hop header before the fragment
/// header; such an echo request in two fragments is reassembled and answered.
#[test]
fn fragments_behind_a_hop_by_hop_header_are_reassembled() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    let mut echo = vec![128, 0, 0, 0, 0, 9, 0, 1];
    echo.extend([7u8; 24]);
    let echo = icmp6(c, me, echo);
    // Hop-by-hop (PadN), then the fragment header naming ICMPv6.
    let with_hbh = |offset: u16, more: bool, data: &[u8]| {
        let mut body = vec![44, 0, 1, 4, 0, 0, 0, 0];
        body.extend_from_slice(&[58, 0]);
        body.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
        body.extend_from_slice(&0x77u32.to_be_bytes());
        body.extend_from_slice(data);
        ipv6(c, me, IpProtocol::HOP_BY_HOP, 64, &body)
    };
    assert!(r
        .send(
            0,
            &eth(MAC0, CLIENT_MAC, 0x86dd, &with_hbh(0, true, &echo[..16]))
        )
        .is_empty());
    let out = r.send(
        0,
        &eth(MAC0, CLIENT_MAC, 0x86dd, &with_hbh(16, false, &echo[16..])),
    );
    let msgs = icmp6_msgs(&out);
    assert!(msgs.iter().any(|m| m.3 == 129), "no echo reply: {msgs:?}");
}

// ------------------------------------------------- second review (RFC 4291, 791, 1812, 8200) -

/// RFC 4291 2.6.1 and 2.8: a router answers for the Subnet-Router anycast address of each
/// subnet, listening to its solicited-node group; RFC 4861 7.2.4: its advertisement has
/// Override clear; RFC 4443 4.1: an echo request to it is answered from a unicast address.
#[test]
fn rfc4291_subnet_router_anycast_is_resolved_and_answered_from_unicast() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, anycast) = (v6("2001:db8:1::2"), v6("2001:db8:1::"));
    let group = v6("ff02::1:ff00:0");
    let solicit = ns(c, group, anycast, Some(CLIENT_MAC));
    let out = r.send(
        0,
        &eth([0x33, 0x33, 0xff, 0, 0, 0], CLIENT_MAC, 0x86dd, &solicit),
    );
    let msgs = icmp6_msgs(&out);
    assert_eq!(msgs.len(), 1, "an advertisement for the anycast address");
    let (_, src, dst, t, _, flags) = msgs[0];
    assert_eq!((t, dst), (136, c));
    assert_ne!(src, anycast, "not from the anycast address");
    assert_eq!(flags >> 29, 0b110, "router and solicited, override clear");
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &echo6(c, anycast, 64)));
    let msgs = icmp6_msgs(&out);
    assert_eq!(msgs.len(), 1);
    assert_eq!((msgs[0].3, msgs[0].2), (129, c));
    assert_eq!(
        msgs[0].1,
        v6("2001:db8:1::1"),
        "from the interface's unicast address"
    );
}

/// RFC 4291 2.5.2: nothing is ever sent to the unspecified address, so an echo request from
/// it (even to all-nodes, which DAD-like probes use) gets no reply.
#[test]
fn rfc4291_2_5_2_echo_from_the_unspecified_address_is_not_answered() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let pkt = echo6(Ipv6Addr::UNSPECIFIED, v6("ff02::1"), 64);
    let out = r.send(0, &eth([0x33, 0x33, 0, 0, 0, 1], CLIENT_MAC, 0x86dd, &pkt));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(r.count("ip6-local", "echo_from_unspecified"), 1);
}

/// RFC 1812 5.3.13.6: a prespecified timestamp is added when the next address "matches any of
/// the router's IP addresses", the receiving interface's included.
#[test]
fn rfc1812_5_3_13_6_prespecified_timestamp_for_the_ingress_address() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let opts = [
        68u8, 20, 5, 3, 198, 18, 1, 1, 0, 0, 0, 0, 198, 18, 2, 1, 0, 0, 0, 0,
    ];
    let pkt = ipv4_with_options(v4("198.18.1.2"), v4("198.18.2.2"), &opts, &[1; 8]);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
    assert_eq!(out.len(), 1);
    let o = &out[0].1[14 + 20..14 + 40];
    // One entry per router and option: the ingress address's slot, not yet the egress one.
    assert_eq!(o[2], 13, "the first slot stamped: {o:?}");
    assert_ne!(&o[8..12], &[0; 4]);
    assert_eq!(&o[16..20], &[0; 4]);
}

/// RFC 791: a record route (or timestamp) with "some room but not enough" for an entry is in
/// error and discarded; the parameter problem points at the option's pointer.
#[test]
fn rfc791_record_route_with_some_room_but_not_enough_is_discarded() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let c = v4("198.18.1.2");
    for opts in [
        [7u8, 9, 8, 10, 0, 0, 1, 0, 0, 0, 0, 0],
        [68, 10, 9, 0, 0, 0, 0, 1, 0, 0, 0, 0],
    ] {
        let pkt = ipv4_with_options(c, v4("198.18.2.2"), &opts, &[1; 8]);
        let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
        let msgs = icmp4_msgs(&out);
        assert_eq!(msgs.len(), 1, "only the parameter problem: {out:?}");
        assert_eq!((msgs[0].2, msgs[0].3, msgs[0].4), (c, 12, 0));
        let ip = Ipv4Packet::new_checked(&out[0].1[14..]).unwrap();
        assert_eq!(ip.payload()[4], 22, "pointer at the option's pointer byte");
    }
    assert_eq!(r.count("ip4-rewrite", "bad_option"), 2);
}

/// RFC 4443 3.1: a reject route ("unreachable") answers with code 6, a missing route with 0.
#[test]
fn rfc4443_3_1_reject_route_is_code_6() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    r.tables = Tables::build(
        2,
        r.tables.interfaces.clone(),
        &[StaticRoute {
            prefix: "2001:db8:77::/48".parse().unwrap(),
            target: RouteTarget::Unreachable,
        }],
    )
    .unwrap();
    let c = v6("2001:db8:1::2");
    for (dst, code) in [("2001:db8:77::9", 6), ("2001:db8:78::9", 0)] {
        let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &echo6(c, v6(dst), 64)));
        let msgs = icmp6_msgs(&out);
        assert_eq!((msgs[0].3, msgs[0].4), (1, code), "{dst}");
    }
}

/// RFC 4443 3.1 and 3.4 for a fragmented datagram to the router: once reassembled, UDP gets
/// port unreachable and an unknown next header a parameter problem, as if it had come whole.
#[test]
fn rfc4443_reassembled_datagrams_get_the_errors_a_whole_one_would() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    let udp = udp_datagram(IpAddrPair::V6 { src: c, dst: me }, &[7u8; 16]);
    for (nh, id, want) in [(17u8, 99, (1u8, 4u8, 0u32)), (253, 100, (4, 1, 6))] {
        let first = frag6(c, me, nh, 0, true, id, &udp[..16]);
        let last = frag6(c, me, nh, 16, false, id, &udp[16..]);
        assert!(r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &first)).is_empty());
        let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &last));
        let msgs = icmp6_msgs(&out);
        assert_eq!(msgs.len(), 1, "{nh}: {out:?}");
        let (_, src, dst, t, code, rest) = msgs[0];
        assert_eq!((src, dst), (me, c));
        assert_eq!((t, code, rest), want, "next header {nh}");
        // The quote is the datagram as it would have come whole: no fragment header.
        let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
        let quoted = &ip.payload()[8..];
        assert_eq!((quoted[6], &quoted[40..48]), (nh, &udp[..8]));
    }
}

/// RFC 8200 4.1: every destination options header is processed, in order: an unknown option
/// whose action says discard-and-answer in the first of two draws the parameter problem.
#[test]
fn rfc8200_4_1_every_destination_options_header_is_processed() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    let echo = icmp6(c, me, vec![128, 0, 0, 0, 0, 7, 0, 1, 0xaa, 0xbb]);
    // Option 0x9e: action 10 (discard, parameter problem even to multicast), four bytes.
    let mut p = vec![60u8, 0, 0x9e, 4, 0, 0, 0, 0];
    p.extend_from_slice(&[58, 0, 1, 4, 0, 0, 0, 0]);
    p.extend_from_slice(&echo);
    let pkt = ipv6(c, me, IpProtocol::DEST_OPTS, 64, &p);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    let msgs = icmp6_msgs(&out);
    assert_eq!(msgs.len(), 1);
    assert_eq!((msgs[0].3, msgs[0].4, msgs[0].5), (4, 2, 42));
}

/// RFC 4861 7.2.3 and 7.3.3: a neighbor heard of only through its solicitation is STALE, so
/// the first packet sent to it starts DELAY and a unicast probe follows 5 s later, then two
/// more a second apart; unanswered, the next packet asks the whole link (multicast).
#[test]
fn rfc4861_7_2_3_solicitation_learned_entry_is_stale_and_probed() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (n, me) = (v6("2001:db8:2::5"), v6("2001:db8:2::1"));
    r.send(
        1,
        &eth(MAC1, OTHER_MAC, 0x86dd, &ns(n, me, me, Some(OTHER_MAC))),
    );
    r.now += 1_000_000_000;
    let pkt = echo6(v6("2001:db8:1::2"), n, 64);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    assert_eq!(out.len(), 1, "forwarded to the cached address");
    let mut probes = Vec::new();
    for second in 1..=10u64 {
        r.now += 1_000_000_000;
        for (_, f) in tick(&mut r) {
            let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
            if ip.payload()[0] == 135 {
                assert_eq!((&f[0..6], ip.dst_addr()), (&OTHER_MAC[..], n), "unicast");
                probes.push(second);
            }
        }
    }
    assert_eq!(
        probes,
        [5, 6, 7],
        "DELAY_FIRST_PROBE_TIME, then RETRANS_TIMER"
    );
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    let ns_out: Vec<_> = out.iter().filter(|(_, f)| f[0] == 0x33).collect();
    assert_eq!(ns_out.len(), 1, "asked by multicast again: {out:?}");
}

// ------------------------------------------ third review (RFC 8201, 3927, 1812, 4443, 1122) -

/// An echo request from `src` to `dst` that is `len` bytes long as an IPv6 packet.
fn echo6_of_len(src: Ipv6Addr, dst: Ipv6Addr, len: usize) -> Vec<u8> {
    let mut msg = vec![128, 0, 0, 0, 0, 5, 0, 1];
    msg.extend((0..len - 48).map(|i| i as u8));
    ipv6(src, dst, IpProtocol::ICMPV6, 64, &icmp6(src, dst, msg))
}

/// A Packet Too Big from `router` to `to`, advertising `mtu`, quoting as much of `invoking`
/// (an IPv6 packet) as fits in 1280 bytes.
fn packet_too_big(router: Ipv6Addr, to: Ipv6Addr, mtu: u32, invoking: &[u8]) -> Vec<u8> {
    let mut msg = vec![2, 0, 0, 0];
    msg.extend_from_slice(&mtu.to_be_bytes());
    msg.extend_from_slice(&invoking[..invoking.len().min(1280 - 48)]);
    ipv6(router, to, IpProtocol::ICMPV6, 255, &icmp6(router, to, msg))
}

/// The IPv6 packets of `out` as fragments of one datagram: checks each is at most `mtu`
/// bytes, carries a fragment header with the datagram's one identification, and returns the
/// reassembled payload with the fixed header of the first.
fn reassemble6(out: &[(u16, Vec<u8>)], mtu: usize) -> Vec<u8> {
    let mut whole = vec![0u8; 40];
    let mut ident = None;
    let mut more = true;
    for (_, f) in out {
        let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
        assert!(f.len() - 14 <= mtu, "{} bytes for MTU {mtu}", f.len() - 14);
        assert_eq!(ip.next_header(), IpProtocol::FRAGMENT);
        let p = ip.payload();
        let word = u16::from_be_bytes([p[2], p[3]]);
        let offset = usize::from(word & 0xfff8);
        assert_eq!(offset, whole.len() - 40, "in order, contiguous");
        let id = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        assert_eq!(*ident.get_or_insert(id), id, "one identification");
        if offset == 0 {
            whole[..40].copy_from_slice(&f[14..54]);
            whole[6] = p[0];
        }
        whole.extend_from_slice(&p[8..]);
        more = word & 1 == 1;
    }
    assert!(!more, "the last fragment ends the datagram");
    let payload_len = (whole.len() - 40) as u16;
    whole[4..6].copy_from_slice(&payload_len.to_be_bytes());
    whole
}

/// RFC 8201 4 (IPv6 Ready v6LC.4.1.x): a node MUST lower its path MTU estimate on a Packet
/// Too Big about a packet it sent, and fragment its later packets to fit: a 1500-byte echo
/// request gets a 1500-byte reply; after a Packet Too Big (MTU 1280) quoting that reply, the
/// same request gets the reply in fragments of at most 1280 bytes.
#[test]
fn rfc8201_4_packet_too_big_about_our_reply_lowers_the_path_mtu() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me, router) = (
        v6("2001:db8:1::2"),
        v6("2001:db8:1::1"),
        v6("2001:db8:1::3"),
    );
    let request = eth(MAC0, CLIENT_MAC, 0x86dd, &echo6_of_len(c, me, 1500));
    let out = r.send(0, &request);
    assert_eq!(out.len(), 1);
    let reply = out[0].1[14..].to_vec();
    assert_eq!(
        (reply.len(), reply[40]),
        (1500, 129),
        "a whole 1500-byte reply"
    );

    let ptb = packet_too_big(router, me, 1280, &reply);
    assert!(r.send(0, &eth(MAC0, OTHER_MAC, 0x86dd, &ptb)).is_empty());
    assert_eq!(r.count("ip6-local", "packet_too_big"), 1);

    let out = r.send(0, &request);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out.iter().all(|(port, _)| *port == 0));
    assert_eq!(reassemble6(&out, 1280), reply, "the same reply, fragmented");
    assert_eq!(r.count("ip6-local", "fragmented"), 1);
}

/// RFC 8201 4: an estimate never goes below the IPv6 minimum MTU: after a Packet Too Big
/// advertising 1000 bytes the replies come in fragments of 1280.
#[test]
fn rfc8201_4_packet_too_big_below_1280_gives_1280_byte_fragments() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    let request = eth(MAC0, CLIENT_MAC, 0x86dd, &echo6_of_len(c, me, 1500));
    let reply = r.send(0, &request)[0].1[14..].to_vec();
    let ptb = packet_too_big(v6("2001:db8:1::3"), me, 1000, &reply);
    r.send(0, &eth(MAC0, OTHER_MAC, 0x86dd, &ptb));
    let out = r.send(0, &request);
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0].1.len() - 14,
        1280,
        "the first fragment as big as 1280 allows"
    );
    assert_eq!(reassemble6(&out, 1280), reply);
}

/// A Packet Too Big quoting a packet another node sent teaches this node nothing.
#[test]
fn packet_too_big_about_someone_elses_packet_is_ignored() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    let request = echo6_of_len(c, me, 1500);
    // The request itself, from the client, quoted as if it were ours.
    let ptb = packet_too_big(v6("2001:db8:1::3"), me, 1280, &request);
    r.send(0, &eth(MAC0, OTHER_MAC, 0x86dd, &ptb));
    assert_eq!(r.count("ip6-local", "foreign_packet_too_big"), 1);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &request));
    assert_eq!((out.len(), out[0].1.len()), (1, 14 + 1500));
}

/// RFC 8200 4.5 / RFC 8201: an echo reply bigger than the link it leaves by (the request came
/// over a link with a larger MTU) is fragmented by this node, its source, rather than
/// refused with a Packet Too Big to itself.
#[test]
fn rfc8200_4_5_our_reply_bigger_than_its_way_out_is_fragmented() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    r.tables = Tables::build(
        2,
        r.tables.interfaces.clone(),
        &[StaticRoute {
            prefix: "2001:db8:77::/48".parse().unwrap(),
            target: RouteTarget::Via(vec![(Some("2001:db8:2::2".parse().unwrap()), None)]),
        }],
    )
    .unwrap();
    let (far, me) = (v6("2001:db8:77::5"), v6("2001:db8:1::1"));
    let request = echo6_of_len(far, me, 1500);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &request));
    assert_eq!(out.len(), 2, "{:?}", r.graph.counters());
    assert!(out
        .iter()
        .all(|(port, f)| *port == 1 && f[..6] == SERVER_MAC));
    let reply = reassemble6(&out, 1400);
    assert_eq!((reply.len(), reply[40]), (1500, 129));
    assert_eq!(icmpv6_checksum(&me, &far, &reply[40..]), 0);
}

/// RFC 1191 / RFC 1812 4.2.2.5 for the router's own IPv4 packets: an echo reply bigger than
/// the link it leaves by is sent with DF clear and fragmented by this node, not refused with
/// a fragmentation needed to itself (the request's DF notwithstanding).
#[test]
fn rfc1191_our_ipv4_reply_bigger_than_its_way_out_is_fragmented() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    r.tables = Tables::build(
        2,
        r.tables.interfaces.clone(),
        &[StaticRoute {
            prefix: "203.0.113.0/24".parse().unwrap(),
            target: RouteTarget::Via(vec![(Some("198.18.2.2".parse().unwrap()), None)]),
        }],
    )
    .unwrap();
    let (far, me) = (v4("203.0.113.5"), v4("198.18.1.1"));
    let request = ipv4(far, me, IpProtocol::ICMP, 64, true, &icmp_echo(8, 1472));
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &request));
    assert_eq!(out.len(), 2, "{:?}", r.graph.counters());
    let mut reply = Vec::new();
    for (port, f) in &out {
        let ip = ip4_of(f);
        assert_eq!(*port, 1);
        assert!(f.len() - 14 <= 1400);
        assert!(!ip.dont_fragment());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (me, far));
        assert_eq!(usize::from(ip.fragment_offset()), reply.len());
        reply.extend_from_slice(ip.payload());
    }
    assert_eq!((reply.len(), reply[0]), (1480, 0));
    assert!(checksum::verify(&reply));
}

/// RFC 3927 2.7 (and RFC 1812's martians): a router MUST NOT forward a packet with an IPv4
/// link-local source or destination address, even with a route that would take it; packets
/// to its own link-local address are received.
#[test]
fn rfc3927_2_7_link_local_is_not_forwarded_but_our_own_is_answered() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let mut interfaces = r.tables.interfaces.clone();
    interfaces[0].ipv4.push("169.254.0.1/16".parse().unwrap());
    r.tables = Tables::build(
        2,
        interfaces,
        &[StaticRoute {
            prefix: "0.0.0.0/0".parse().unwrap(),
            target: RouteTarget::Via(vec![(Some("198.18.2.2".parse().unwrap()), None)]),
        }],
    )
    .unwrap();
    let linklocal_host = v4("169.254.1.1");
    r.state
        .neighbors
        .insert_permanent(0, linklocal_host.into(), CLIENT_MAC);
    for (src, dst) in [
        (linklocal_host, v4("198.51.100.1")),
        (v4("198.18.1.2"), v4("169.254.9.9")),
        (v4("198.18.1.2"), v4("169.254.255.254")),
    ] {
        let pkt = ipv4(src, dst, IpProtocol::UDP, 64, false, &[0; 8]);
        let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
        assert!(out.is_empty(), "{src} > {dst} went out: {out:?}");
    }
    assert_eq!(r.count("ip4-input", "link_local"), 3);
    let ping = ipv4(
        linklocal_host,
        v4("169.254.0.1"),
        IpProtocol::ICMP,
        64,
        false,
        &icmp_echo(8, 8),
    );
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &ping));
    let msgs = icmp4_msgs(&out);
    assert_eq!(msgs.len(), 1, "{:?}", r.graph.counters());
    assert_eq!(msgs[0], (0, v4("169.254.0.1"), linklocal_host, 0, 0));
    assert_eq!(r.count("ip4-input", "link_local"), 3);
}

/// RFC 1812 4.3.2.7: no ICMP error about a packet addressed to an IP broadcast address,
/// which an attached subnet's directed broadcast is, and its zero address too (RFC 1812
/// 4.2.3.1), even in a unicast frame: a malformed option draws no parameter problem.
#[test]
fn rfc1812_4_3_2_7_no_error_about_a_packet_to_a_directed_broadcast() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let bad = [7, 7, 2, 0, 0, 0, 0, 1];
    for (k, dst) in ["198.18.2.255", "198.18.2.0", "198.18.1.255"]
        .into_iter()
        .enumerate()
    {
        let pkt = ipv4_with_options(v4("198.18.1.2"), v4(dst), &bad, &[0; 8]);
        let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
        assert!(out.is_empty(), "an error about a packet to {dst}: {out:?}");
        assert_eq!(
            r.count("icmp4-error", "broadcast_or_multicast"),
            k as u64 + 1
        );
    }
    // The control: the same to a unicast address is answered.
    let pkt = ipv4_with_options(v4("198.18.1.2"), v4("198.18.2.2"), &bad, &[0; 8]);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
    assert_eq!(icmp4_msgs(&out).len(), 1);
}

/// RFC 4443 2.2(b) for a fragmented echo request to the Subnet-Router anycast address: the
/// reassembled request is answered from a unicast address, as a whole one is.
#[test]
fn rfc4443_2_2_fragmented_echo_to_the_subnet_router_anycast_is_answered_from_unicast() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, anycast) = (v6("2001:db8:1::2"), v6("2001:db8:1::"));
    let mut echo = vec![128, 0, 0, 0, 0, 9, 0, 1];
    echo.extend([7u8; 24]);
    let echo = icmp6(c, anycast, echo);
    let first = frag6(c, anycast, 58, 0, true, 0x66, &echo[..16]);
    let last = frag6(c, anycast, 58, 16, false, 0x66, &echo[16..]);
    assert!(r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &first)).is_empty());
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &last));
    let msgs = icmp6_msgs(&out);
    assert_eq!(msgs.len(), 1, "{:?}", r.graph.counters());
    let (_, src, dst, t, ..) = msgs[0];
    assert_eq!((t, dst), (129, c));
    assert_eq!(
        src,
        v6("2001:db8:1::1"),
        "from the interface's unicast address"
    );
    let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
    assert_eq!(icmpv6_checksum(&src, &c, ip.payload()), 0);
}

/// RFC 1122 3.2.2.1 for a fragmented datagram to the router: once reassembled, a protocol it
/// does not speak draws protocol unreachable, as an unfragmented one does, quoting the
/// datagram as it would have come whole.
#[test]
fn rfc1122_3_2_2_1_reassembled_unknown_protocol_gets_protocol_unreachable() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v4("198.18.1.2"), v4("198.18.1.1"));
    let payload: Vec<u8> = (0..40).collect();
    let mut out = Vec::new();
    for (offset, more, chunk) in [(0u16, true, &payload[..24]), (24, false, &payload[24..])] {
        let mut b = ipv4(c, me, IpProtocol(253), 64, false, chunk);
        let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
        ip.set_fragment(false, more, offset);
        ip.fill_checksum();
        out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &b));
    }
    let msgs = icmp4_msgs(&out);
    assert_eq!(msgs, [(0, me, c, 3, 2)], "{:?}", r.graph.counters());
    let error = ip4_of(&out[0].1);
    let quoted = Ipv4Packet::new_checked(&error.payload()[8..]).unwrap();
    assert_eq!(quoted.protocol(), IpProtocol(253));
    assert_eq!((quoted.total_len(), quoted.more_fragments()), (60, false));
    assert_eq!(r.count("ip4-local", "protocol_unreachable"), 1);
}

/// RFC 4443 2.4(c): an ICMPv6 error is at most 1280 bytes, and no bigger than the link it
/// leaves by either (a port below 1280, as the flags refuse for ports with IPv6 addresses,
/// would otherwise never carry a full-sized one).
#[test]
fn rfc4443_2_4_c_icmpv6_error_fits_the_link_it_leaves_by() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let mut interfaces = r.tables.interfaces.clone();
    interfaces[0].mtu = 1000;
    r.tables = Tables::build(2, interfaces, &[]).unwrap();
    let c = v6("2001:db8:1::2");
    let mut udp = udp_bytes();
    udp.resize(1000 - 40, 0);
    let pkt = ipv6(c, v6("2001:db8:77::1"), IpProtocol::UDP, 64, &udp);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    let msgs = icmp6_msgs(&out);
    assert_eq!(msgs.len(), 1, "{:?}", r.graph.counters());
    assert_eq!((msgs[0].3, msgs[0].4), (1, 0), "no route");
    assert_eq!(out[0].1.len() - 14, 1000, "as much as the link carries");
}

/// RFC 1122 4.1.3.4 / RFC 768, RFC 8200 8.1: a UDP datagram with a bad checksum is discarded
/// silently (and over IPv6 one without a checksum too): no port unreachable from the router,
/// whole or reassembled.
#[test]
fn rfc1122_4_1_3_4_udp_with_a_bad_checksum_to_the_router_is_not_answered() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c4, me4) = (v4("198.18.1.2"), v4("198.18.1.1"));
    let (c6, me6) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    let good4 = udp_datagram(IpAddrPair::V4 { src: c4, dst: me4 }, b"abcd");
    let good6 = udp_datagram(IpAddrPair::V6 { src: c6, dst: me6 }, &[9u8; 16]);
    let corrupt = |d: &[u8]| {
        let mut d = d.to_vec();
        d[8] ^= 0x40;
        d
    };
    let mut unsummed6 = good6.clone();
    unsummed6[6..8].fill(0);
    // The good ones are answered: the checks below are about the checksum alone.
    let v4_frame = |udp: &[u8]| {
        let pkt = ipv4(c4, me4, IpProtocol::UDP, 64, false, udp);
        eth(MAC0, CLIENT_MAC, 0x0800, &pkt)
    };
    let v6_frame = |udp: &[u8]| {
        eth(
            MAC0,
            CLIENT_MAC,
            0x86dd,
            &ipv6(c6, me6, IpProtocol::UDP, 64, udp),
        )
    };
    assert_eq!(icmp4_msgs(&r.send(0, &v4_frame(&good4)))[0].3, 3);
    assert_eq!(icmp6_msgs(&r.send(0, &v6_frame(&good6)))[0].3, 1);
    assert!(r.send(0, &v4_frame(&corrupt(&good4))).is_empty());
    assert!(r.send(0, &v6_frame(&corrupt(&good6))).is_empty());
    assert!(r.send(0, &v6_frame(&unsummed6)).is_empty());
    assert_eq!(r.count("ip4-local", "bad_udp"), 1);
    assert_eq!(r.count("ip6-local", "bad_udp"), 2);
    // Reassembled: the same.
    let bad = corrupt(&good6);
    let first = frag6(c6, me6, 17, 0, true, 0x77, &bad[..16]);
    let last = frag6(c6, me6, 17, 16, false, 0x77, &bad[16..]);
    assert!(r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &first)).is_empty());
    assert!(r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &last)).is_empty());
    assert_eq!(r.count("ip6-local", "bad_udp"), 3);
}

/// RFC 8200 4.5 / RFC 4443 3.3: the time exceeded (reassembly) is about the first fragment:
/// it quotes that fragment as it came, fragment header and all; and for IPv4 (RFC 792) the
/// first fragment alone, though the next one had come as well.
#[test]
fn rfc8200_4_5_reassembly_time_exceeded_quotes_the_first_fragment_as_it_came() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    let mut echo = vec![128, 0, 0, 0, 0, 9, 0, 1];
    echo.extend([7u8; 40]);
    let echo = icmp6(c, me, echo);
    let first = frag6(c, me, 58, 0, true, 0x59, &echo[..16]);
    let second = frag6(c, me, 58, 16, true, 0x59, &echo[16..32]);
    for f in [&first, &second] {
        assert!(r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, f)).is_empty());
    }
    r.now += crate::reassembly::TIMEOUT_V6 + 1;
    let out = tick(&mut r);
    assert_eq!(out.len(), 1);
    let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
    assert_eq!(&ip.payload()[..2], &[3, 1]);
    assert_eq!(
        &ip.payload()[8..],
        &first[..],
        "the first fragment, byte for byte"
    );

    let (c, me) = (v4("198.18.1.2"), v4("198.18.1.1"));
    let frags = ipv4_fragments(c, me, &icmp_echo(8, 64), 24);
    assert!(frags.len() >= 3);
    for f in &frags[..2] {
        assert!(r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, f)).is_empty());
    }
    r.now += crate::reassembly::TIMEOUT_V4 + 1;
    let out = tick(&mut r);
    assert_eq!(out.len(), 1);
    let ip = ip4_of(&out[0].1);
    assert_eq!(
        &ip.payload()[8..],
        &frags[0][..],
        "the first fragment, byte for byte"
    );
}

/// RFC 8200 4.1/4.2: destination options may follow the fragment header. Known ones
/// (padding) let a fragmented echo request be answered once reassembled; an unknown one of
/// action 10 draws a parameter problem code 2 about the first fragment, pointing at the
/// option where it sits in that fragment.
#[test]
fn rfc8200_4_1_destination_options_after_a_fragment_header_are_processed() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v6("2001:db8:1::2"), v6("2001:db8:1::1"));
    let mut echo = vec![128, 0, 0, 0, 0, 9, 0, 1];
    echo.extend([5u8; 32]);
    let echo = icmp6(c, me, echo);
    let send = |r: &mut Rig, id: u32, option: [u8; 6]| {
        let mut datagram = vec![58, 0];
        datagram.extend_from_slice(&option);
        datagram.extend_from_slice(&echo);
        let first = frag6(c, me, 60, 0, true, id, &datagram[..24]);
        let last = frag6(c, me, 60, 24, false, id, &datagram[24..]);
        let after_first = icmp6_msgs(&r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &first)));
        let after_last = icmp6_msgs(&r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &last)));
        (after_first, after_last)
    };
    let (first, last) = send(&mut r, 0x61, [1, 4, 0, 0, 0, 0]);
    assert!(first.is_empty());
    assert_eq!(last.len(), 1);
    assert_eq!((last[0].2, last[0].3), (c, 129), "echo reply");
    let (first, last) = send(&mut r, 0x62, [0x9e, 4, 0, 0, 0, 0]);
    assert_eq!(first.len(), 1);
    // Fixed header, fragment header, then the option's type byte after two header bytes.
    assert_eq!(
        (first[0].2, first[0].3, first[0].4, first[0].5),
        (c, 4, 2, 40 + 8 + 2)
    );
    assert!(last.is_empty(), "the datagram was dropped: {last:?}");
}

/// RFC 4291 2.8: a router recognises the All-Routers addresses, the site-local one
/// (ff05::2) as well as the link-local one.
#[test]
fn rfc4291_2_8_site_local_all_routers_is_ours() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    for group in ["ff02::2", "ff05::2"] {
        let ping = echo6(v6("2001:db8:1::2"), v6(group), 64);
        let dst_mac = [0x33, 0x33, 0, 0, 0, 2];
        let out = r.send(0, &eth(dst_mac, CLIENT_MAC, 0x86dd, &ping));
        let msgs = icmp6_msgs(&out);
        assert!(msgs.iter().any(|m| m.3 == 129), "{group}: {msgs:?}");
    }
}

/// RFC 1122 3.2.1.8 / 4.2.3.8 (as Linux): the reset the router answers a segment with is a
/// packet of its own: it does not carry the segment's IP options (a record route here).
#[test]
fn control_tcp_reset_carries_no_ip_options() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, me) = (v4("198.18.1.2"), v4("198.18.1.1"));
    let syn = tcp_syn(IpAddrPair::V4 { src: c, dst: me }, 40000, 179, 1000);
    // Record route with room for two addresses, then end of options.
    let rr = [7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut pkt = ipv4_with_options(c, me, &rr, &syn);
    let mut ip = Ipv4Packet::new_unchecked(&mut pkt[..]);
    ip.set_protocol(IpProtocol::TCP);
    ip.fill_checksum();
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
    assert_eq!(out.len(), 1);
    let ip = Ipv4Packet::new_checked(&out[0].1[14..]).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!((ip.header_len(), ip.src_addr(), ip.dst_addr()), (20, me, c));
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    let rst = TcpRepr::parse(&tcp, &IpAddrPair::V4 { src: me, dst: c }).unwrap();
    assert_eq!(
        (rst.src_port, rst.dst_port, rst.flags),
        (179, 40000, TcpFlags::RST | TcpFlags::ACK)
    );
}

/// RFC 1812 4.3.2.3 / RFC 792: a parameter problem quotes the packet as it came; when the
/// router finds the record route option has no room it cannot use at the time it records,
/// the TTL it had decremented is put back in the quote.
#[test]
fn rfc792_parameter_problem_from_rewrite_quotes_the_ttl_as_it_came() {
    let mut r = Rig::new();
    r.learn_client_and_server();
    let (c, s) = (v4("198.18.1.2"), v4("198.18.2.2"));
    // Record route, length 7, pointer 5: three bytes left, less than an address.
    let bad = [7, 7, 5, 0, 0, 0, 0, 1];
    let pkt = ipv4_with_options(c, s, &bad, &[0x03, 0xe8, 0x82, 0x9a, 0, 8, 0, 0]);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
    let msgs = icmp4_msgs(&out);
    assert_eq!(msgs.len(), 1, "{out:?}");
    assert_eq!((msgs[0].3, msgs[0].4), (12, 0));
    let ip = ip4_of(&out[0].1);
    let quoted = &ip.payload()[8..];
    assert_eq!(&quoted[..28], &pkt[..28], "the header as it came");
    assert_eq!(
        r.count("ip4-rewrite", "bad_option"),
        1,
        "found when recording"
    );
}
