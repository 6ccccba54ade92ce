//! 802.1Q VLAN subinterfaces: tagged frames in to the subinterface of their VLAN id, and
//! everything sent out of a subinterface tagged, on its port.

use super::*;
use crate::tables::{TablesError, Vlan};

const VID: u16 = 100;
/// The subinterface's index: after the two ports.
const SUB: u16 = 2;

/// [`Rig::new`]'s two ports plus `s0.100`, a subinterface of port 1 (s0) for VLAN 100 with
/// addresses of its own and a route through a gateway on it.
fn vlan_rig() -> Rig {
    let mut r = Rig::new();
    let mut interfaces = r.tables.interfaces.clone();
    let mut sub = Interface::vlan_subinterface("s0.100", &interfaces[1], 1, VID);
    sub.ipv4.push("198.51.100.1/24".parse().unwrap());
    sub.ipv6.push("2001:db8:100::1/64".parse().unwrap());
    interfaces.push(sub);
    r.tables = Tables::build(
        1,
        interfaces,
        &[StaticRoute {
            prefix: "203.0.113.0/24".parse().unwrap(),
            target: RouteTarget::Via(vec![(Some("198.51.100.9".parse().unwrap()), None)]),
        }],
    )
    .unwrap();
    r
}

/// `frame` (untagged) with an 802.1Q tag for `vid` after its addresses.
fn tagged(frame: &[u8], vid: u16) -> Vec<u8> {
    tagged_with(frame, 0x8100, vid)
}

fn tagged_with(frame: &[u8], tpid: u16, vid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// The frame without its tag, after checking the tag is 802.1Q, priority 0, DEI 0, `vid`.
fn untagged(frame: &[u8], vid: u16) -> Vec<u8> {
    assert_eq!(&frame[12..14], &[0x81, 0x00], "not tagged: {frame:02x?}");
    assert_eq!(u16::from_be_bytes([frame[14], frame[15]]), vid, "TCI");
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&frame[16..]);
    f
}

const SUB_CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xd1];

#[test]
fn answers_arp_on_the_subinterface_with_a_tag() {
    let mut r = vlan_rig();
    let req = arp(
        1,
        SUB_CLIENT_MAC,
        v4("198.51.100.2"),
        [0; 6],
        v4("198.51.100.1"),
    );
    let out = r.send(1, &tagged(&eth(BCAST, SUB_CLIENT_MAC, 0x0806, &req), VID));
    assert_eq!(out.len(), 1);
    let (port, f) = &out[0];
    assert_eq!(*port, 1, "leaves by the subinterface's port");
    let f = untagged(f, VID);
    assert_eq!(&f[0..6], &SUB_CLIENT_MAC);
    assert_eq!(&f[6..12], &MAC1, "the port's MAC");
    assert_eq!(
        &f[14..],
        &arp(
            2,
            MAC1,
            v4("198.51.100.1"),
            SUB_CLIENT_MAC,
            v4("198.51.100.2")
        )[..]
    );
    // Learned on the subinterface, not on its port.
    let asker = v4("198.51.100.2").into();
    assert_eq!(r.state.neighbors.get(SUB, asker), Some(SUB_CLIENT_MAC));
    assert_eq!(r.state.neighbors.get(1, asker), None);
    // The port itself does not answer for the subinterface's address, nor the
    // subinterface for the port's.
    assert!(r
        .send(1, &eth(BCAST, SUB_CLIENT_MAC, 0x0806, &req))
        .is_empty());
    let for_port = arp(
        1,
        SUB_CLIENT_MAC,
        v4("198.51.100.2"),
        [0; 6],
        v4("198.18.2.1"),
    );
    assert!(r
        .send(
            1,
            &tagged(&eth(BCAST, SUB_CLIENT_MAC, 0x0806, &for_port), VID)
        )
        .is_empty());
}

#[test]
fn answers_ping_on_the_subinterface_with_a_tag() {
    let mut r = vlan_rig();
    r.state
        .neighbors
        .insert_permanent(SUB, v4("198.51.100.2").into(), SUB_CLIENT_MAC);
    let ping = ipv4(
        v4("198.51.100.2"),
        v4("198.51.100.1"),
        IpProtocol::ICMP,
        64,
        false,
        &icmp_echo(8, 32),
    );
    let out = r.send(1, &tagged(&eth(MAC1, SUB_CLIENT_MAC, 0x0800, &ping), VID));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 1);
    let f = untagged(&out[0].1, VID);
    assert_eq!((&f[0..6], &f[6..12]), (&SUB_CLIENT_MAC[..], &MAC1[..]));
    let ip = ip4_of(&f);
    assert_eq!(
        (ip.src_addr(), ip.dst_addr()),
        (v4("198.51.100.1"), v4("198.51.100.2"))
    );
    assert_eq!(ip.payload()[0], 0, "echo reply");
    assert!(checksum::verify(ip.payload()));
}

#[test]
fn answers_neighbor_solicitation_and_ping6_on_the_subinterface_with_a_tag() {
    let mut r = vlan_rig();
    let (me, peer) = (v6("2001:db8:100::1"), v6("2001:db8:100::2"));
    let group = v6("ff02::1:ff00:1");
    // NS for our address, with the asker's link-layer address option.
    let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&me.octets());
    ns.extend_from_slice(&[1, 1]);
    ns.extend_from_slice(&SUB_CLIENT_MAC);
    let ns = icmp6(peer, group, ns);
    let frame = eth(
        [0x33, 0x33, 0xff, 0, 0, 1],
        SUB_CLIENT_MAC,
        0x86dd,
        &ipv6(peer, group, IpProtocol::ICMPV6, 255, &ns),
    );
    let out = r.send(1, &tagged(&frame, VID));
    assert_eq!(out.len(), 1, "one advertisement");
    assert_eq!(out[0].0, 1);
    let f = untagged(&out[0].1, VID);
    assert_eq!((&f[0..6], &f[6..12]), (&SUB_CLIENT_MAC[..], &MAC1[..]));
    let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (me, peer));
    assert_eq!(ip.payload()[0], 136, "neighbor advertisement");
    assert_eq!(&ip.payload()[8..24], &me.octets());
    assert_eq!(
        r.state.neighbors.get(SUB, peer.into()),
        Some(SUB_CLIENT_MAC)
    );
    assert_eq!(r.state.neighbors.get(1, peer.into()), None);

    // Echo to the subinterface's address: answered tagged, from it.
    let ping = tagged(
        &eth(MAC1, SUB_CLIENT_MAC, 0x86dd, &echo6(peer, me, 64)),
        VID,
    );
    let out = r.send(1, &ping);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 1);
    let f = untagged(&out[0].1, VID);
    let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (me, peer));
    assert_eq!(ip.payload()[0], 129, "echo reply");
    assert_eq!(icmpv6_checksum(&me, &peer, ip.payload()), 0);
}

/// Untagged port 0 to the subinterface and back: the tag added on the way out of the
/// subinterface and taken off on the way in, TTL and checksum as for any forwarding.
#[test]
fn forwards_between_a_port_and_a_subinterface() {
    let mut r = vlan_rig();
    r.learn_client_and_server();
    let server = v4("198.51.100.2");
    r.state
        .neighbors
        .insert_permanent(SUB, server.into(), SUB_CLIENT_MAC);
    let udp = [0, 1, 0, 2, 0, 8, 0, 0];
    let there = ipv4(v4("198.18.1.2"), server, IpProtocol::UDP, 64, false, &udp);
    // Twice: the second packet to the next hop finds what the first one left in the caches.
    for _ in 0..2 {
        let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &there));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 1, "out of the subinterface's port");
        let f = untagged(&out[0].1, VID);
        assert_eq!((&f[0..6], &f[6..12]), (&SUB_CLIENT_MAC[..], &MAC1[..]));
        let ip = ip4_of(&f);
        assert_eq!(ip.ttl(), 63);
        assert_eq!(ip.payload(), &udp);
    }

    let back = ipv4(server, v4("198.18.1.2"), IpProtocol::UDP, 64, false, &udp);
    let out = r.send(1, &tagged(&eth(MAC1, SUB_CLIENT_MAC, 0x0800, &back), VID));
    assert_eq!(out.len(), 1);
    let (port, f) = &out[0];
    assert_eq!(*port, 0);
    assert_eq!(&f[12..14], &[8, 0], "untagged on port 0");
    assert_eq!((&f[0..6], &f[6..12]), (&CLIENT_MAC[..], &MAC0[..]));
    let ip = ip4_of(f);
    assert_eq!(ip.ttl(), 63);
    assert_eq!(ip.src_addr(), server);

    // IPv6 too.
    let server6 = v6("2001:db8:100::2");
    r.state
        .neighbors
        .insert_permanent(SUB, server6.into(), SUB_CLIENT_MAC);
    let pkt = ipv6(v6("2001:db8:1::2"), server6, IpProtocol::UDP, 64, &udp);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &pkt));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 1);
    let f = untagged(&out[0].1, VID);
    let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
    assert_eq!(ip.hop_limit(), 63);
    let back = ipv6(server6, v6("2001:db8:1::2"), IpProtocol::UDP, 64, &udp);
    let out = r.send(1, &tagged(&eth(MAC1, SUB_CLIENT_MAC, 0x86dd, &back), VID));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 0);
    assert_eq!(&out[0].1[12..14], &[0x86, 0xdd]);
}

/// The 18-byte header of a frame out of the subinterface to `dst`: the port's MAC, the
/// 802.1Q tag (TPID 0x8100, priority 0, DEI 0, VLAN 100) and `ethertype`.
fn tagged_header_to(dst: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut h = dst.to_vec();
    h.extend_from_slice(&MAC1);
    h.extend_from_slice(&[0x81, 0x00]);
    h.extend_from_slice(&VID.to_be_bytes());
    h.extend_from_slice(&ethertype.to_be_bytes());
    h
}

/// Packets through a node, from its counters.
fn node_packets(r: &Rig, node: &str) -> u64 {
    r.graph
        .counters()
        .iter()
        .find(|c| c.name == node)
        .map_or(0, |c| c.packets)
}

/// Next hops the neighbor table knows on a subinterface get their tagged header in the
/// rewrite nodes, as the port's untagged ones do: built once per vector and next hop, then
/// taken from the vector's cache, never through `neighbor-output`. Untagged next hops in the
/// same vector keep their own headers; the frames leave by the subinterface's port; a
/// neighbor's new MAC is in the next vector's headers.
#[test]
fn known_next_hops_on_the_subinterface_get_cached_tagged_headers_in_rewrite() {
    let mut r = vlan_rig();
    r.learn_client_and_server();
    let (server, server6) = (v4("198.51.100.2"), v6("2001:db8:100::2"));
    let now = r.now;
    r.state
        .neighbors
        .learn(SUB, server.into(), SUB_CLIENT_MAC, now, true);
    r.state
        .neighbors
        .learn(SUB, server6.into(), SUB_CLIENT_MAC, now, true);
    let udp = [0, 1, 0, 2, 0, 8, 0, 0];
    let to_sub4 = eth(
        MAC0,
        CLIENT_MAC,
        0x0800,
        &ipv4(v4("198.18.1.2"), server, IpProtocol::UDP, 64, false, &udp),
    );
    let to_sub6 = eth(
        MAC0,
        CLIENT_MAC,
        0x86dd,
        &ipv6(v6("2001:db8:1::2"), server6, IpProtocol::UDP, 64, &udp),
    );
    // The port's own server, untagged, on the same port as the subinterface.
    let to_port4 = eth(
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
    // One vector: three to each next hop on the subinterface, interleaved with untagged ones.
    let vector = |r: &mut Rig| {
        for f in [&to_sub4, &to_sub6, &to_port4].repeat(3) {
            r.graph
                .receive(Packet::received(HeapBuffer::from_bytes(f), 0));
        }
        r.graph.dispatch(&r.tables, &mut r.state, r.now);
        let out = r.take_tx();
        r.graph.dropped.clear();
        out
    };
    // Each frame by its header: tagged IPv4, tagged IPv6, untagged; three of each.
    let check = |out: &[(u16, Vec<u8>)], sub_mac: [u8; 6]| {
        assert_eq!(out.len(), 9, "{out:02x?}");
        let mut kinds = [0; 3];
        for (port, f) in out {
            assert_eq!(*port, 1, "out of the subinterface's port");
            if f[..18] == tagged_header_to(sub_mac, 0x0800)[..] {
                let ip = Ipv4Packet::new_checked(&f[18..]).unwrap();
                assert!(ip.verify_checksum());
                assert_eq!((ip.dst_addr(), ip.ttl()), (server, 63));
                kinds[0] += 1;
            } else if f[..18] == tagged_header_to(sub_mac, 0x86dd)[..] {
                let ip = Ipv6Packet::new_checked(&f[18..]).unwrap();
                assert_eq!((ip.dst_addr(), ip.hop_limit()), (server6, 63));
                kinds[1] += 1;
            } else {
                assert_eq!(
                    &f[..14],
                    &eth(SERVER_MAC, MAC1, 0x0800, &[])[..],
                    "{f:02x?}"
                );
                assert_eq!(ip4_of(f).dst_addr(), v4("198.18.2.2"));
                kinds[2] += 1;
            }
        }
        assert_eq!(kinds, [3, 3, 3], "{out:02x?}");
    };
    check(&vector(&mut r), SUB_CLIENT_MAC);
    assert_eq!(node_packets(&r, "ip4-rewrite"), 6);
    assert_eq!(node_packets(&r, "ip6-rewrite"), 3);
    assert_eq!(
        node_packets(&r, "neighbor-output"),
        0,
        "all from the rewrite nodes"
    );

    // The server moves to another MAC: its ARP reply on the VLAN (RFC 826's merge) and a
    // new IPv6 entry. The next vector's tagged headers carry it.
    let moved = [0x02, 0, 0, 0, 0, 0xd2];
    let reply = arp(2, moved, server, MAC1, v4("198.51.100.1"));
    assert!(r
        .send(1, &tagged(&eth(MAC1, moved, 0x0806, &reply), VID))
        .is_empty());
    assert_eq!(r.state.neighbors.get(SUB, server.into()), Some(moved));
    r.state
        .neighbors
        .learn(SUB, server6.into(), moved, now, true);
    check(&vector(&mut r), moved);
    assert_eq!(node_packets(&r, "neighbor-output"), 0);
}

/// A next hop on the subinterface not yet known: the ARP request goes out tagged, the
/// packet waits, and leaves tagged once the tagged answer comes. A static route through a
/// gateway on the subinterface resolves to it.
#[test]
fn resolves_next_hops_on_the_subinterface_with_tagged_requests() {
    let mut r = vlan_rig();
    r.learn_client_and_server();
    let gw = v4("198.51.100.9");
    let udp = [0, 1, 0, 2, 0, 8, 0, 0];
    let pkt = ipv4(
        v4("198.18.1.2"),
        v4("203.0.113.5"),
        IpProtocol::UDP,
        64,
        false,
        &udp,
    );
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &pkt));
    assert_eq!(out.len(), 1, "only the request: {out:02x?}");
    assert_eq!(out[0].0, 1);
    let f = untagged(&out[0].1, VID);
    assert_eq!((&f[0..6], &f[6..12]), (&BCAST[..], &MAC1[..]));
    assert_eq!(
        &f[14..],
        &arp(1, MAC1, v4("198.51.100.1"), [0; 6], gw)[..],
        "asked from the subinterface's address"
    );
    assert_eq!(r.graph.held(), 1);

    let gw_mac = [0x02, 0, 0, 0, 0, 0x99];
    let reply = arp(2, gw_mac, gw, MAC1, v4("198.51.100.1"));
    let out = r.send(1, &tagged(&eth(MAC1, gw_mac, 0x0806, &reply), VID));
    assert_eq!(out.len(), 1, "the held packet: {out:02x?}");
    assert_eq!(out[0].0, 1);
    let f = untagged(&out[0].1, VID);
    assert_eq!(&f[0..6], &gw_mac);
    assert_eq!(ip4_of(&f).ttl(), 63);
    assert_eq!(r.state.neighbors.get(SUB, gw.into()), Some(gw_mac));
}

/// An ICMP error about a packet that came in on the subinterface goes back out of it, tagged,
/// from the subinterface's address.
#[test]
fn icmp_errors_leave_by_the_subinterface_from_its_address() {
    let mut r = vlan_rig();
    let src = v4("198.51.100.2");
    r.state
        .neighbors
        .insert_permanent(SUB, src.into(), SUB_CLIENT_MAC);
    let pkt = ipv4(src, v4("198.18.1.2"), IpProtocol::UDP, 1, false, &[0; 8]);
    let out = r.send(1, &tagged(&eth(MAC1, SUB_CLIENT_MAC, 0x0800, &pkt), VID));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 1);
    let f = untagged(&out[0].1, VID);
    let ip = ip4_of(&f);
    assert_eq!((ip.src_addr(), ip.dst_addr()), (v4("198.51.100.1"), src));
    assert_eq!((ip.payload()[0], ip.payload()[1]), (11, 0), "time exceeded");
}

#[test]
fn unknown_vlan_ids_and_qinq_are_dropped_and_counted() {
    let mut r = vlan_rig();
    let ping = ipv4(
        v4("198.51.100.2"),
        v4("198.51.100.1"),
        IpProtocol::ICMP,
        64,
        false,
        &icmp_echo(8, 8),
    );
    let frame = eth(MAC1, SUB_CLIENT_MAC, 0x0800, &ping);
    // VLAN 200 is not configured; VLAN 100 exists on port 1, not on port 0.
    assert!(r.send(1, &tagged(&frame, 200)).is_empty());
    assert!(r
        .send(0, &tagged(&eth(MAC0, CLIENT_MAC, 0x0800, &ping), VID))
        .is_empty());
    assert_eq!(r.count("ethernet-input", "vlan_not_configured"), 2);
    // 802.1ad outer tag, and a double 802.1Q tag.
    assert!(r
        .send(1, &tagged_with(&tagged(&frame, VID), 0x88a8, 7))
        .is_empty());
    assert!(r.send(1, &tagged(&tagged(&frame, VID), 7)).is_empty());
    assert_eq!(r.count("ethernet-input", "qinq_not_supported"), 2);
    // A tag cut short.
    assert!(r.send(1, &tagged(&frame, VID)[..16]).is_empty());
    assert_eq!(r.count("ethernet-input", "too_short"), 1);
}

/// A priority-tagged frame (VLAN id 0) belongs to the port itself (IEEE 802.1Q).
#[test]
fn priority_tagged_frames_belong_to_the_port() {
    let mut r = vlan_rig();
    r.learn_client_and_server();
    let ping = ipv4(
        v4("198.18.2.2"),
        v4("198.18.2.1"),
        IpProtocol::ICMP,
        64,
        false,
        &icmp_echo(8, 8),
    );
    let out = r.send(1, &tagged(&eth(MAC1, SERVER_MAC, 0x0800, &ping), 0xa000));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 1);
    assert_eq!(&out[0].1[12..14], &[8, 0], "answered untagged");
}

/// Router advertisements go out of a subinterface tagged, with its prefixes.
#[test]
fn router_advertisements_on_the_subinterface_are_tagged() {
    let mut r = vlan_rig();
    r.tables.router_adverts = Some(crate::router_adverts::RaConfig::default());
    let queued = r
        .graph
        .advertise_routers(&r.tables, &mut r.state, r.now, || {
            Some(HeapBuffer::new(
                crate::buffer::DEFAULT_BUFFER_SIZE,
                crate::buffer::DEFAULT_HEADROOM,
            ))
        });
    assert!(queued);
    let out = r.take_tx();
    let tagged_ras: Vec<_> = out
        .iter()
        .filter(|(p, f)| *p == 1 && f[12..14] == [0x81, 0x00])
        .collect();
    assert_eq!(tagged_ras.len(), 1, "{out:02x?}");
    let f = untagged(&tagged_ras[0].1, VID);
    let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
    assert_eq!(ip.payload()[0], 134);
    assert!(f
        .windows(8)
        .any(|w| w == &v6("2001:db8:100::").octets()[..8]));
}

#[test]
fn subinterfaces_are_checked_when_tables_are_built() {
    let ports = || {
        vec![
            Interface::new("c0", MAC0, 1500),
            Interface::new("s0", MAC1, 1500),
        ]
    };
    let with = |subs: Vec<Interface>| {
        let mut i = ports();
        i.extend(subs);
        Tables::build(1, i, &[])
    };
    let p = ports();
    let sub = |name: &str, parent: u16, vid: u16| {
        Interface::vlan_subinterface(name, &p[usize::from(parent).min(1)], parent, vid)
    };
    let t = with(vec![sub("s0.100", 1, 100), sub("c0.100", 0, 100)]).unwrap();
    assert_eq!(t.vlan_subinterface(1, 100), Some(2));
    assert_eq!(t.vlan_subinterface(0, 100), Some(3));
    assert_eq!(t.vlan_subinterface(0, 101), None);
    assert_eq!(t.port_of(3), Some(0));
    assert_eq!(t.port_of(1), Some(1));
    assert_eq!(t.interfaces[2].mtu, 1500);
    assert_eq!(t.interfaces[2].mac, MAC1);
    assert!(matches!(
        with(vec![sub("s0.100", 1, 100), sub("x", 1, 100)]),
        Err(TablesError::DuplicateVlan { vid: 100, .. })
    ));
    for vid in [0, 4095, 5000] {
        assert!(matches!(
            with(vec![sub("s0.x", 1, vid)]),
            Err(TablesError::BadVlanId { .. })
        ));
    }
    assert!(matches!(
        with(vec![sub("s9.1", 9, 1)]),
        Err(TablesError::NoSuchVlanParent { parent: 9, .. })
    ));
    // A subinterface of a subinterface.
    let mut nested = sub("s0.1.2", 2, 2);
    nested.vlan = Some(Vlan { parent: 2, vid: 2 });
    assert!(matches!(
        with(vec![sub("s0.1", 1, 1), nested]),
        Err(TablesError::NoSuchVlanParent { parent: 2, .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    /// Tagged frames of any content, tag and inner EtherType go through a router with a
    /// subinterface without a panic.
    #[test]
    fn arbitrary_tagged_frames_never_panic(
        tci in prop::sample::select(vec![0u16, 100, 0x2064, 200, 0x0fff]),
        tpid in prop::sample::select(vec![0x8100u16, 0x88a8]),
        ethertype in prop::sample::select(vec![0x0800u16, 0x86dd, 0x0806, 0x8100, 0x1234]),
        body in prop::collection::vec(any::<u8>(), 0..200),
        port in 0u16..2,
    ) {
        let mut r = vlan_rig();
        r.learn_client_and_server();
        let mac = if port == 0 { MAC0 } else { MAC1 };
        r.send(port, &tagged_with(&eth(mac, SUB_CLIENT_MAC, ethertype, &body), tpid, tci));
    }
}
