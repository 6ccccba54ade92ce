//! ESP in the graph: the encrypt node's output against the ipsec crate's own encapsulation,
//! the decrypt node on what the ipsec crate encapsulates, anti-replay, ICV failures, policy
//! checks, and that IKE still reaches the node's local path.

use std::sync::Arc;

use switchyard_ipsec::crypto::{AeadAlgorithm, CbcAlgorithm, MacAlgorithm, SecretBytes};
use switchyard_ipsec::esp::{
    self, Direction, EspKeys, EspSuite, Lifetime, OuterHeader, Sa, SaConfig,
};
use switchyard_ipsec::ike::wire::TrafficSelector;

use super::*;
use crate::async_crypto::{AsyncCrypto, DeferredSoftware};
use crate::buffer::HeapBuffer;
use crate::fib::Route;
use crate::graph::Graph;
use crate::ipsec_tables::{InboundSa, IpsecTables, OutboundPolicy};
use crate::nodes::{ipsec_router_graph, ipsec_router_graph_async};
use switchyard_ipsec::crypto::SoftwareBackend;

thread_local! {
    /// Whether this thread's rigs hand ESP crypto to an asynchronous engine.
    static ASYNC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The IPsec graph, its ESP nodes synchronous or (on an [`ASYNC`] thread) parking their
/// packets with an engine that completes them only when polled.
fn esp_graph() -> Graph<HeapBuffer> {
    if ASYNC.with(|a| a.get()) {
        let engine: Arc<dyn AsyncCrypto<HeapBuffer>> = Arc::new(DeferredSoftware::default());
        ipsec_router_graph_async(2, Arc::new(SoftwareBackend::new()), Some(engine)).unwrap()
    } else {
        ipsec_router_graph(2).unwrap()
    }
}

const LOCAL: &str = "198.18.2.1"; // the router's address on s0: our tunnel end
const PEER: &str = "198.18.2.2"; // the server: the peer's tunnel end
const CLIENT: &str = "198.18.1.2"; // behind us
const REMOTE_HOST: &str = "203.0.113.2"; // behind the peer
const OUT_SPI: u32 = 0xc0ff_ee01;
const IN_SPI: u32 = 0xc0ff_ee02;

fn ts(start: &str, end: &str) -> TrafficSelector {
    TrafficSelector {
        protocol: 0,
        start_port: 0,
        end_port: 65535,
        start: start.parse().unwrap(),
        end: end.parse().unwrap(),
    }
}

/// Fixed keys, so the outputs are reproducible.
fn config(spi: u32, suite: EspSuite, seed: u8) -> SaConfig {
    let (enc_len, int_len) = match suite {
        EspSuite::Gcm(a) => (a.key_len() + AeadAlgorithm::SALT_LEN, 0),
        EspSuite::CbcHmac(c, m) => (c.key_len(), m.key_len()),
    };
    let bytes = |n: usize, k: u8| (0..n).map(|i| (i as u8).wrapping_mul(7) ^ k).collect();
    SaConfig {
        spi,
        suite,
        keys: EspKeys {
            encryption: SecretBytes::new(bytes(enc_len, seed)),
            integrity: SecretBytes::new(bytes(int_len, seed ^ 0x5a)),
        },
        esn: false,
        replay_window: 64,
        lifetime: Lifetime::default(),
    }
}

const GCM: EspSuite = EspSuite::Gcm(AeadAlgorithm::Aes128Gcm16);
const CBC: EspSuite = EspSuite::CbcHmac(CbcAlgorithm::Aes256Cbc, MacAlgorithm::HmacSha256_128);

fn outer(udp: bool, from_peer: bool) -> OuterHeader {
    let (src, dst) = if from_peer {
        (PEER, LOCAL)
    } else {
        (LOCAL, PEER)
    };
    let o = OuterHeader::new(src.parse().unwrap(), dst.parse().unwrap());
    if udp {
        o.with_udp(4500, 4500)
    } else {
        o
    }
}

/// A rig with the IPsec graph, a route to the peer's subnet and one tunnel.
fn rig(suite: EspSuite, udp: bool) -> Rig {
    let mut r = Rig {
        graph: esp_graph(),
        ..Rig::new()
    };
    r.tables.fib.insert(
        "203.0.113.0/24".parse().unwrap(),
        Route::Attached { port: 1 },
    );
    r.learn_client_and_server();
    // Packets that stay in the clear go to the peer's subnet on-link.
    r.state
        .neighbors
        .insert_permanent(1, v4(REMOTE_HOST).into(), SERVER_MAC);
    let local_ts = vec![ts("198.18.1.0", "198.18.1.255")];
    let remote_ts = vec![ts("203.0.113.0", "203.0.113.255")];
    r.tables.ipsec = Some(Arc::new(IpsecTables {
        generation: 1,
        outbound: vec![OutboundPolicy {
            local_ts: local_ts.clone(),
            remote_ts: remote_ts.clone(),
            sa: config(OUT_SPI, suite, 1),
            outer: outer(udp, false),
            stats: Arc::default(),
        }],
        inbound: vec![InboundSa {
            sa: config(IN_SPI, suite, 2),
            local: LOCAL.parse().unwrap(),
            local_ts,
            remote_ts,
            stats: Arc::default(),
        }],
        ..IpsecTables::default()
    }));
    r
}

fn ipsec(r: &Rig) -> &IpsecTables {
    r.tables.ipsec.as_deref().unwrap()
}

fn echo(src: &str, dst: &str, ttl: u8, len: usize) -> Vec<u8> {
    ipv4(
        v4(src),
        v4(dst),
        IpProtocol::ICMP,
        ttl,
        true,
        &icmp_echo(8, len),
    )
}

/// What the peer sends: `inner` encrypted under our inbound SA by the ipsec crate.
fn from_peer(peer_sa: &mut Sa, inner: &[u8], udp: bool) -> Vec<u8> {
    esp::encapsulate(peer_sa, inner, &outer(udp, true), 0).unwrap()
}

fn peer_outbound(suite: EspSuite) -> Sa {
    Sa::new(
        &switchyard_ipsec::crypto::SoftwareBackend::new(),
        &config(IN_SPI, suite, 2),
        Direction::Outbound,
        0,
    )
    .unwrap()
}

fn peer_inbound(suite: EspSuite) -> Sa {
    Sa::new(
        &switchyard_ipsec::crypto::SoftwareBackend::new(),
        &config(OUT_SPI, suite, 1),
        Direction::Inbound,
        0,
    )
    .unwrap()
}

#[test]
fn encrypts_what_the_policy_selects_as_the_ipsec_crate_would() {
    for (suite, udp) in [(GCM, true), (CBC, true), (GCM, false), (CBC, false)] {
        let mut r = rig(suite, udp);
        let inner = echo(CLIENT, REMOTE_HOST, 64, 100);
        let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &inner));
        assert_eq!(out.len(), 1, "{suite:?} udp={udp}: one frame out");
        let (port, frame) = &out[0];
        assert_eq!(*port, 1);
        assert_eq!(&frame[..6], &SERVER_MAC, "to the peer's MAC");
        let outer_ip = &frame[14..];
        // Known answer: the ipsec crate encapsulating the same packet (TTL already taken
        // down by the tunnel hop) with the same SA gives the same bytes.
        let mut hop = inner.clone();
        Ipv4Packet::new_unchecked(&mut hop[..]).decrement_ttl();
        let mut reference = Sa::new(
            &switchyard_ipsec::crypto::SoftwareBackend::new(),
            &config(OUT_SPI, suite, 1),
            Direction::Outbound,
            0,
        )
        .unwrap();
        let expected = esp::encapsulate(&mut reference, &hop, &outer(udp, false), 0).unwrap();
        assert_eq!(outer_ip, &expected[..], "{suite:?} udp={udp}");
        let ip = ip4_of(frame);
        assert_eq!(ip.src_addr(), v4(LOCAL));
        assert_eq!(ip.dst_addr(), v4(PEER));
        assert_eq!(ip.protocol().0, if udp { 17 } else { 50 });
        // And the peer can read it.
        let mut packet = outer_ip.to_vec();
        let d = esp::decapsulate(&mut peer_inbound(suite), &mut packet, 0).unwrap();
        assert_eq!(d.spi, OUT_SPI);
        assert_eq!(d.sequence, 1);
        assert_eq!(&packet[d.inner], &hop[..]);
        assert_eq!(r.count("esp4-encrypt", "encrypted"), 1);
        let stats = ipsec(&r).outbound[0].stats.snapshot();
        assert_eq!((stats.packets, stats.bytes), (1, inner.len() as u64));
        // The next packet takes the next sequence number.
        let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &inner));
        let mut packet = out[0].1[14..].to_vec();
        let d = esp::decapsulate(&mut peer_inbound(suite), &mut packet, 0).unwrap();
        assert_eq!(d.sequence, 2);
    }
}

#[test]
fn traffic_outside_the_policy_and_ike_are_routed_in_the_clear() {
    let mut r = rig(GCM, true);
    // To the server itself: not in the remote selectors.
    let plain = echo(CLIENT, SERVER_V4, 64, 10);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &plain));
    assert_eq!(out.len(), 1);
    assert_eq!(ip4_of(&out[0].1).protocol(), IpProtocol::ICMP);
    // IKE between the selectors' hosts (odd, but IKE always bypasses the SPD).
    let udp = udp4(CLIENT, REMOTE_HOST, 500, 500, b"ike");
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &udp));
    assert_eq!(out.len(), 1);
    assert_eq!(ip4_of(&out[0].1).dst_addr(), v4(REMOTE_HOST));
    assert_eq!(ip4_of(&out[0].1).protocol(), IpProtocol::UDP);
    assert_eq!(r.count("esp4-encrypt", "encrypted"), 0);
}

const SERVER_V4: &str = "198.18.2.2";

fn udp4(src: &str, dst: &str, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    ipv4(v4(src), v4(dst), IpProtocol::UDP, 64, false, &u)
}

#[test]
fn decrypts_esp_for_the_node_and_forwards_the_inner_packet() {
    for (suite, udp) in [(GCM, true), (CBC, true), (GCM, false), (CBC, false)] {
        let mut r = rig(suite, udp);
        let mut peer = peer_outbound(suite);
        let inner = echo(REMOTE_HOST, CLIENT, 64, 60);
        let esp = from_peer(&mut peer, &inner, udp);
        let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &esp));
        assert_eq!(
            out.len(),
            1,
            "{suite:?} udp={udp}: the inner packet comes out"
        );
        let (port, frame) = &out[0];
        assert_eq!(*port, 0);
        assert_eq!(&frame[..6], &CLIENT_MAC);
        let ip = ip4_of(frame);
        assert_eq!(ip.src_addr(), v4(REMOTE_HOST));
        assert_eq!(ip.dst_addr(), v4(CLIENT));
        assert_eq!(ip.ttl(), 63, "forwarded: one hop");
        assert_eq!(&frame[14 + 20..], &inner[20..], "payload unchanged");
        assert_eq!(r.count("esp4-decrypt", "decrypted"), 1);
        let stats = ipsec(&r).inbound[0].stats.snapshot();
        assert_eq!((stats.packets, stats.bytes), (1, inner.len() as u64));
    }
}

/// With two workers each SA is used by one of them: a packet for an SA the other worker
/// keeps, either way, is handed to it untouched, and that worker encrypts or decrypts it.
#[test]
fn each_sa_is_used_by_one_worker() {
    let mut workers = [rig(GCM, true), rig(GCM, true)];
    for (i, w) in workers.iter_mut().enumerate() {
        w.state.set_worker(i as u16, 2);
    }
    for (spi, node) in [(OUT_SPI, "esp4-encrypt"), (IN_SPI, "esp4-decrypt")] {
        let owner = usize::from(workers[0].state.sa_owner(spi).unwrap_or(0));
        let other = 1 - owner;
        assert_eq!(workers[owner].state.sa_owner(spi), None);
        assert_eq!(workers[other].state.sa_owner(spi), Some(owner as u16));
        let frame = if node == "esp4-encrypt" {
            (
                0,
                eth(
                    MAC0,
                    CLIENT_MAC,
                    0x0800,
                    &echo(CLIENT, REMOTE_HOST, 64, 100),
                ),
            )
        } else {
            let esp = from_peer(
                &mut peer_outbound(GCM),
                &echo(REMOTE_HOST, CLIENT, 64, 60),
                true,
            );
            (1, eth(MAC1, SERVER_MAC, 0x0800, &esp))
        };
        assert!(workers[other].send(frame.0, &frame.1).is_empty());
        assert_eq!(workers[other].count(node, "handed_off"), 1);
        let (at, pkt) = workers[other].graph.handoff.pop().expect("handed over");
        assert_eq!(Some(at), workers[other].graph.node_index(node));
        assert_eq!(pkt.meta.handoff.worker(), Some(owner as u16));
        let out = workers[owner].inject(node, pkt);
        assert_eq!(out.len(), 1, "{node}: through on the owner");
    }
    assert_eq!(
        workers
            .iter()
            .map(|w| w.count("esp4-encrypt", "encrypted"))
            .sum::<u64>(),
        1
    );
    assert_eq!(
        workers
            .iter()
            .map(|w| w.count("esp4-decrypt", "decrypted"))
            .sum::<u64>(),
        1
    );
}

/// A virtual IP the peer assigned us (IKEv2 configuration payload) is an address of the
/// node: a ping to it through the tunnel is answered, and the answer goes back through it.
#[test]
fn a_virtual_ip_assigned_to_us_answers_through_the_tunnel() {
    const VIP: &str = "198.19.200.1";
    let mut r = rig(GCM, true);
    let mut t = (*r.tables.ipsec.take().unwrap()).clone();
    t.outbound[0].local_ts = vec![ts(VIP, VIP)];
    t.inbound[0].local_ts = vec![ts(VIP, VIP)];
    t.local_addresses = vec![VIP.parse().unwrap()];
    r.tables.set_ipsec(Some(t));
    let request = echo(REMOTE_HOST, VIP, 64, 40);
    let esp = from_peer(&mut peer_outbound(GCM), &request, true);
    let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &esp));
    assert_eq!(out.len(), 1, "the answer, encrypted");
    assert_eq!(ip4_of(&out[0].1).dst_addr(), v4(PEER));
    let mut packet = out[0].1[14..].to_vec();
    let d = esp::decapsulate(&mut peer_inbound(GCM), &mut packet, 0).unwrap();
    let reply = Ipv4Packet::new_checked(&packet[d.inner]).unwrap();
    assert_eq!(reply.src_addr(), v4(VIP));
    assert_eq!(reply.dst_addr(), v4(REMOTE_HOST));
    assert_eq!(reply.payload()[0], 0, "an echo reply");
    assert_eq!(r.count("ip4-local", "echo_replied"), 1);
    // Without the SA the address is not ours any more (the rig's 198.19.0.0/16 route again).
    r.tables.set_ipsec(None);
    assert!(!r.tables.is_local_ipv4(v4(VIP)));
    assert!(matches!(
        r.tables.fib.lookup(VIP.parse().unwrap()),
        Some(Route::Via(_))
    ));
}

#[test]
fn replayed_esp_is_dropped_and_counted() {
    let mut r = rig(GCM, true);
    let mut peer = peer_outbound(GCM);
    let first = from_peer(&mut peer, &echo(REMOTE_HOST, CLIENT, 64, 10), true);
    let second = from_peer(&mut peer, &echo(REMOTE_HOST, CLIENT, 64, 11), true);
    assert_eq!(r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &second)).len(), 1);
    // Out of order but inside the window: accepted.
    assert_eq!(r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &first)).len(), 1);
    // Either again: replays.
    assert!(r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &first)).is_empty());
    assert!(r
        .send(1, &eth(MAC1, SERVER_MAC, 0x0800, &second))
        .is_empty());
    assert_eq!(r.count("esp4-decrypt", "decrypted"), 2);
    assert_eq!(r.count("esp4-decrypt", "replay"), 2);
    assert_eq!(ipsec(&r).inbound[0].stats.snapshot().replay_drops, 2);
}

#[test]
fn icv_failure_is_dropped_and_counted_and_does_not_move_the_window() {
    for suite in [GCM, CBC] {
        let mut r = rig(suite, true);
        let mut peer = peer_outbound(suite);
        let good = from_peer(&mut peer, &echo(REMOTE_HOST, CLIENT, 64, 30), true);
        let mut bad = good.clone();
        let at = bad.len() - 20; // in the ciphertext or the ICV
        bad[at] ^= 0x01;
        assert!(r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &bad)).is_empty());
        assert_eq!(r.count("esp4-decrypt", "icv_failed"), 1, "{suite:?}");
        assert_eq!(ipsec(&r).inbound[0].stats.snapshot().auth_failures, 1);
        // The genuine packet with the same sequence number still gets through.
        assert_eq!(r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &good)).len(), 1);
    }
}

#[test]
fn unknown_spi_and_foreign_inner_packets_are_dropped() {
    let mut r = rig(GCM, true);
    // An SA we do not have.
    let mut stranger = Sa::new(
        &switchyard_ipsec::crypto::SoftwareBackend::new(),
        &config(0x1234_5678, GCM, 2),
        Direction::Outbound,
        0,
    )
    .unwrap();
    let esp = from_peer(&mut stranger, &echo(REMOTE_HOST, CLIENT, 64, 10), true);
    assert!(r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &esp)).is_empty());
    assert_eq!(r.count("esp4-decrypt", "unknown_spi"), 1);
    // Reported to the IKE daemon (by sender and SPI), at most once per SPI_REPORT_EVERY
    // per node.
    let sender = std::net::IpAddr::from(<[u8; 4]>::try_from(&esp[12..16]).unwrap());
    assert_eq!(ipsec(&r).spi_reports.take(), vec![(sender, 0x1234_5678)]);
    let again = from_peer(&mut stranger, &echo(REMOTE_HOST, CLIENT, 64, 11), true);
    assert!(r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &again)).is_empty());
    assert!(ipsec(&r).spi_reports.take().is_empty(), "rate-limited");
    r.now += crate::nodes::esp::SPI_REPORT_EVERY;
    assert!(r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &again)).is_empty());
    assert_eq!(ipsec(&r).spi_reports.take(), vec![(sender, 0x1234_5678)]);
    assert_eq!(r.count("esp4-decrypt", "unknown_spi"), 3);
    // The right SA, but the inner source is not behind the peer.
    let mut peer = peer_outbound(GCM);
    let esp = from_peer(&mut peer, &echo("198.19.9.9", CLIENT, 64, 10), true);
    assert!(r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &esp)).is_empty());
    assert_eq!(r.count("esp4-decrypt", "policy_mismatch"), 1);
    assert_eq!(ipsec(&r).inbound[0].stats.snapshot().policy_drops, 1);
}

#[test]
fn ike_on_the_nat_t_port_goes_to_the_local_path() {
    let mut r = rig(GCM, true);
    // Non-ESP marker: IKE, the host's (without a punt path the node refuses the port).
    let ike = udp4(
        PEER,
        LOCAL,
        4500,
        4500,
        &[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
    );
    let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &ike));
    assert_eq!(out.len(), 1, "port unreachable back to the peer");
    assert_eq!(r.count("ip4-local", "port_unreachable"), 1);
    assert_eq!(r.count("esp4-decrypt", "decrypted"), 0);
    // With the punt path on, the same packet goes to the host.
    r.tables.punt_to_host = true;
    r.graph.receive(Packet::received(
        HeapBuffer::from_bytes(&eth(MAC1, SERVER_MAC, 0x0800, &ike)),
        1,
    ));
    r.graph.dispatch(&r.tables, &mut r.state, r.now);
    assert_eq!(r.graph.punt.len(), 1);
}

#[test]
fn too_big_for_the_tunnel_with_df_draws_frag_needed() {
    let mut r = rig(GCM, true);
    // s0's MTU is 1400: a 1380-byte inner packet with DF does not fit once encrypted.
    let inner = echo(CLIENT, REMOTE_HOST, 64, 1380 - 28);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &inner));
    assert_eq!(out.len(), 1);
    let (port, frame) = &out[0];
    assert_eq!(*port, 0, "back to the client");
    let ip = ip4_of(frame);
    assert_eq!(ip.protocol(), IpProtocol::ICMP);
    let icmp = ip.payload();
    assert_eq!((icmp[0], icmp[1]), (3, 4));
    let mtu = u16::from_be_bytes([icmp[6], icmp[7]]);
    assert!(mtu < 1400 - 50 && mtu > 1300, "next-hop MTU {mtu}");
    assert_eq!(r.count("esp4-encrypt", "too_big"), 1);
    // A packet of that size fits.
    let fits = echo(CLIENT, REMOTE_HOST, 64, usize::from(mtu) - 28);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &fits));
    assert_eq!(out[0].0, 1, "into the tunnel");
    assert!(out[0].1.len() - 14 <= 1400);
}

/// RFC 4459 post-encryption fragmentation: an inner packet that may be fragmented but does
/// not fit once encrypted leaves in outer fragments, and each outer datagram has an
/// identification of its own (RFC 6864 4.1), so that the peer cannot mix their fragments.
#[test]
fn too_big_without_df_is_fragmented_after_encryption_with_fresh_identifications() {
    let mut r = rig(GCM, true);
    let inner = ipv4(
        v4(CLIENT),
        v4(REMOTE_HOST),
        IpProtocol::ICMP,
        64,
        false,
        &icmp_echo(8, 1380 - 28),
    );
    let mut idents = Vec::new();
    for _ in 0..2 {
        let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &inner));
        assert_eq!(out.len(), 2, "two outer fragments");
        let first = ip4_of(&out[0].1);
        let second = ip4_of(&out[1].1);
        assert!(first.more_fragments() && !second.more_fragments());
        assert_eq!(first.ident(), second.ident());
        idents.push(first.ident());
    }
    assert_ne!(idents[0], idents[1], "a new identification per datagram");
}

#[test]
fn without_sas_the_ipsec_graph_routes_like_the_plain_one() {
    let mut r = Rig {
        graph: esp_graph(),
        ..Rig::new()
    };
    r.learn_client_and_server();
    let ping = echo(CLIENT, SERVER_V4, 64, 10);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &ping));
    assert_eq!(out.len(), 1);
    assert_eq!(ip4_of(&out[0].1).ttl(), 63);
    // And the node still answers its own pings.
    let out = r.send(
        0,
        &eth(
            MAC0,
            CLIENT_MAC,
            0x0800,
            &echo(CLIENT, "198.18.1.1", 64, 10),
        ),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(ip4_of(&out[0].1).src_addr(), v4("198.18.1.1"));
}

#[test]
fn sa_state_survives_a_table_swap_and_goes_with_its_sa() {
    let mut r = rig(GCM, true);
    let inner = echo(CLIENT, REMOTE_HOST, 64, 10);
    r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &inner));
    // New tables naming the same SAs (a republish for another reason): sequence goes on.
    let mut t = ipsec(&r).clone();
    t.generation = 2;
    r.tables.ipsec = Some(Arc::new(t));
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &inner));
    let mut packet = out[0].1[14..].to_vec();
    let d = esp::decapsulate(&mut peer_inbound(GCM), &mut packet, 0).unwrap();
    assert_eq!(d.sequence, 2);
    // The SA removed: traffic goes in the clear again (no policy), and the state is gone.
    let mut t = ipsec(&r).clone();
    t.generation = 3;
    t.outbound.clear();
    r.tables.ipsec = Some(Arc::new(t));
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &inner));
    assert_eq!(ip4_of(&out[0].1).protocol(), IpProtocol::ICMP);
}

const LOCAL6: &str = "2001:db8:2::1";
const PEER6: &str = "2001:db8:2::2";
const CLIENT6: &str = "2001:db8:1::2";
const REMOTE_HOST6: &str = "2001:db8:99::2";

/// The IPv6 tunnel's outer header (UDP-encapsulated when `udp`).
fn outer6(udp: bool, from_peer: bool) -> OuterHeader {
    let (s, d) = if from_peer {
        (PEER6, LOCAL6)
    } else {
        (LOCAL6, PEER6)
    };
    let o = OuterHeader::new(s.parse().unwrap(), d.parse().unwrap());
    if udp {
        o.with_udp(4500, 4500)
    } else {
        o
    }
}

/// A rig with an IPv6 tunnel carrying IPv6 between 2001:db8:1::/112 (behind us) and
/// 2001:db8:99::/112 (behind the peer).
fn rig6(udp: bool) -> Rig {
    let mut r = Rig {
        graph: esp_graph(),
        ..Rig::new()
    };
    r.tables.fib.insert(
        "2001:db8:99::/48".parse().unwrap(),
        Route::Attached { port: 1 },
    );
    r.learn_client_and_server();
    let local_ts = vec![ts("2001:db8:1::", "2001:db8:1::ffff")];
    let remote_ts = vec![ts("2001:db8:99::", "2001:db8:99::ffff")];
    r.tables.ipsec = Some(Arc::new(IpsecTables {
        generation: 1,
        outbound: vec![OutboundPolicy {
            local_ts: local_ts.clone(),
            remote_ts: remote_ts.clone(),
            sa: config(OUT_SPI, GCM, 1),
            outer: outer6(udp, false),
            stats: Arc::default(),
        }],
        inbound: vec![InboundSa {
            sa: config(IN_SPI, GCM, 2),
            local: LOCAL6.parse().unwrap(),
            local_ts,
            remote_ts,
            stats: Arc::default(),
        }],
        ..IpsecTables::default()
    }));
    r
}

/// IPv6 both ways: an IPv6 tunnel (outer IPv6, UDP with its checksum) carrying IPv6.
#[test]
fn ipv6_tunnel_carries_ipv6() {
    let (client, remote_host, peer_addr) = (v6(CLIENT6), v6(REMOTE_HOST6), PEER6);
    let mut r = rig6(true);
    // Out: encrypted into an IPv6 packet to the peer.
    let inner = echo6(client, remote_host, 64);
    let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &inner));
    assert_eq!(out.len(), 1);
    let (port, frame) = &out[0];
    assert_eq!(*port, 1);
    assert_eq!(&frame[12..14], &[0x86, 0xdd]);
    let mut packet = frame[14..].to_vec();
    let outer_ip = Ipv6Packet::new_checked(&packet[..]).unwrap();
    assert_eq!(outer_ip.next_header(), IpProtocol::UDP);
    assert_eq!(outer_ip.dst_addr(), v6(peer_addr));
    let d = esp::decapsulate(&mut peer_inbound(GCM), &mut packet, 0).unwrap();
    let got = &packet[d.inner];
    assert_eq!(got[7], 63, "hop limit taken down by the tunnel hop");
    assert_eq!(&got[8..], &inner[8..]);
    assert_eq!(r.count("esp6-encrypt", "encrypted"), 1);
    // In: the peer's ESP over IPv6, forwarded to the client.
    let reply = echo6(remote_host, client, 64);
    let esp = esp::encapsulate(&mut peer_outbound(GCM), &reply, &outer6(true, true), 0).unwrap();
    let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x86dd, &esp));
    assert_eq!(out.len(), 1, "decrypted and forwarded");
    let (port, frame) = &out[0];
    assert_eq!(*port, 0);
    let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
    assert_eq!(ip.src_addr(), remote_host);
    assert_eq!(ip.hop_limit(), 63);
    assert_eq!(r.count("esp6-decrypt", "decrypted"), 1);
}

/// IPv4 hosts over an IPv6 tunnel: the outer family differs from the inner one.
#[test]
fn ipv4_over_an_ipv6_tunnel() {
    let mut r = rig(GCM, true);
    let mut t = ipsec(&r).clone();
    t.outbound[0].outer = OuterHeader::new(
        "2001:db8:2::1".parse().unwrap(),
        "2001:db8:2::2".parse().unwrap(),
    )
    .with_udp(4500, 4500);
    r.tables.ipsec = Some(Arc::new(t));
    let out = r.send(
        0,
        &eth(MAC0, CLIENT_MAC, 0x0800, &echo(CLIENT, REMOTE_HOST, 64, 20)),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(&out[0].1[12..14], &[0x86, 0xdd], "an IPv6 outer packet");
    let mut packet = out[0].1[14..].to_vec();
    let d = esp::decapsulate(&mut peer_inbound(GCM), &mut packet, 0).unwrap();
    assert_eq!(packet[d.inner.start] >> 4, 4);
}

/// One SA whose selectors name both families: IPv4 and IPv6 inner packets reach it through
/// `esp4-encrypt` and `esp6-encrypt`, and still get one sequence of numbers (the peer's
/// replay window refused the second family's packets when each node counted its own).
#[test]
fn both_inner_families_share_one_sa_sequence() {
    let mut r = rig(GCM, true);
    r.tables.fib.insert(
        "2001:db8:99::/48".parse().unwrap(),
        Route::Attached { port: 1 },
    );
    let mut t = ipsec(&r).clone();
    t.outbound[0]
        .local_ts
        .push(ts("2001:db8:1::", "2001:db8:1::ffff"));
    t.outbound[0]
        .remote_ts
        .push(ts("2001:db8:99::", "2001:db8:99::ffff"));
    r.tables.ipsec = Some(Arc::new(t));
    let v4_frame = eth(MAC0, CLIENT_MAC, 0x0800, &echo(CLIENT, REMOTE_HOST, 64, 20));
    let v6_frame = eth(
        MAC0,
        CLIENT_MAC,
        0x86dd,
        &echo6(v6("2001:db8:1::2"), v6("2001:db8:99::2"), 64),
    );
    let mut peer = peer_inbound(GCM);
    for (round, frame) in [&v4_frame, &v6_frame, &v4_frame, &v6_frame]
        .iter()
        .enumerate()
    {
        let out = r.send(0, frame);
        assert_eq!(out.len(), 1, "round {round}");
        let mut packet = out[0].1[14..].to_vec();
        // The replay window of one receiver takes all four in order: 1, 2, 3, 4.
        let d = esp::decapsulate(&mut peer, &mut packet, 0)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let family = packet[d.inner.start] >> 4;
        assert_eq!(family, if round % 2 == 0 { 4 } else { 6 });
    }
    assert_eq!(r.count("esp4-encrypt", "encrypted"), 2);
    assert_eq!(r.count("esp6-encrypt", "encrypted"), 2);
}

/// Sends all `frames` in on `port` as one vector and returns what comes out.
fn send_vector(r: &mut Rig, port: u16, frames: &[Vec<u8>]) -> Vec<(u16, Vec<u8>)> {
    for f in frames {
        r.graph
            .receive(Packet::received(HeapBuffer::from_bytes(f), port));
    }
    r.graph.dispatch(&r.tables, &mut r.state, r.now);
    let mut out = Vec::new();
    for (p, q) in r.graph.tx.iter_mut().enumerate() {
        for b in q.drain(..) {
            out.push((p as u16, b.data().to_vec()));
        }
    }
    r.graph.dropped.clear();
    out
}

#[test]
fn whole_vectors_go_through_the_crypto_in_batches() {
    for suite in [GCM, CBC] {
        // 70 packets in one vector (three crypto batches): ESP from the peer, with a
        // duplicate of the fifth and a forged one among them, and clear traffic between.
        let mut r = rig(suite, true);
        let mut peer = peer_outbound(suite);
        let mut frames = Vec::new();
        let mut wires = Vec::new();
        for i in 0..66 {
            let esp = from_peer(&mut peer, &echo(REMOTE_HOST, CLIENT, 64, 20 + i), true);
            wires.push(esp.clone());
            frames.push(eth(MAC1, SERVER_MAC, 0x0800, &esp));
        }
        frames.push(eth(MAC1, SERVER_MAC, 0x0800, &wires[4]));
        let mut forged = from_peer(&mut peer, &echo(REMOTE_HOST, CLIENT, 64, 99), true);
        let at = forged.len() - 20;
        forged[at] ^= 1;
        frames.push(eth(MAC1, SERVER_MAC, 0x0800, &forged));
        // Traffic in the clear from outside the policy, in the middle.
        frames.insert(
            10,
            eth(MAC1, SERVER_MAC, 0x0800, &echo(PEER, CLIENT, 64, 8)),
        );
        let out = send_vector(&mut r, 1, &frames[..]);
        assert_eq!(r.count("esp4-decrypt", "decrypted"), 66, "{suite:?}");
        assert_eq!(r.count("esp4-decrypt", "replay"), 1, "{suite:?}");
        assert_eq!(r.count("esp4-decrypt", "icv_failed"), 1, "{suite:?}");
        let to_client = out.iter().filter(|(p, _)| *p == 0).count();
        assert_eq!(to_client, 67, "{suite:?}");
        // The inner packets came out in order, each intact.
        let mut seen = out
            .iter()
            .filter(|(p, f)| *p == 0 && ip4_of(f).src_addr() == v4(REMOTE_HOST))
            .map(|(_, f)| f.len());
        for i in 0..66 {
            assert_eq!(seen.next(), Some(14 + 20 + 8 + 20 + i), "{suite:?} #{i}");
        }
        let stats = ipsec(&r).inbound[0].stats.snapshot();
        assert_eq!(
            (stats.packets, stats.replay_drops, stats.auth_failures),
            (66, 1, 1)
        );
    }
}

/// The tests above again, the ESP nodes parking their packets with an asynchronous engine:
/// every packet's crypto completes at a later poll, and the outcome must not change.
#[test]
fn an_asynchronous_engine_gives_the_same_results() {
    ASYNC.with(|a| a.set(true));
    encrypts_what_the_policy_selects_as_the_ipsec_crate_would();
    traffic_outside_the_policy_and_ike_are_routed_in_the_clear();
    decrypts_esp_for_the_node_and_forwards_the_inner_packet();
    a_virtual_ip_assigned_to_us_answers_through_the_tunnel();
    replayed_esp_is_dropped_and_counted();
    icv_failure_is_dropped_and_counted_and_does_not_move_the_window();
    unknown_spi_and_foreign_inner_packets_are_dropped();
    ike_on_the_nat_t_port_goes_to_the_local_path();
    too_big_for_the_tunnel_with_df_draws_frag_needed();
    without_sas_the_ipsec_graph_routes_like_the_plain_one();
    sa_state_survives_a_table_swap_and_goes_with_its_sa();
    ipv6_tunnel_carries_ipv6();
    ipv4_over_an_ipv6_tunnel();
    both_inner_families_share_one_sa_sequence();
    whole_vectors_go_through_the_crypto_in_batches();
    fragmented_esp_is_reassembled_then_decrypted();
    fragmented_esp_over_ipv6_is_reassembled_then_decrypted();
    cleartext_that_an_inbound_sa_covers_is_dropped();
    outer_congestion_marks_reach_the_inner_packet_or_drop_it();
    encapsulation_copies_the_inner_ecn_field();
}

/// [`DeferredSoftware`] behind a gate: nothing completes until the gate opens, as with a
/// device that takes its time.
#[derive(Default)]
struct Gated {
    inner: DeferredSoftware<HeapBuffer>,
    open: std::sync::atomic::AtomicBool,
}

impl AsyncCrypto<HeapBuffer> for Gated {
    fn submit(
        &self,
        ops: &mut Vec<crate::async_crypto::AsyncOp<HeapBuffer>>,
        ctxs: &[Option<switchyard_ipsec::crypto::SymCtx<'_>>],
    ) -> usize {
        self.inner.submit(ops, ctxs)
    }

    fn poll(&self, done: &mut Vec<crate::async_crypto::AsyncOp<HeapBuffer>>) {
        if self.open.load(std::sync::atomic::Ordering::Relaxed) {
            self.inner.poll(done);
        }
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
}

#[test]
fn parked_packets_wait_for_the_device_and_then_go_on_in_order() {
    let engine = Arc::new(Gated::default());
    let mut r = rig(GCM, true);
    r.graph = ipsec_router_graph_async(
        2,
        Arc::new(SoftwareBackend::new()),
        Some(Arc::clone(&engine) as Arc<dyn AsyncCrypto<HeapBuffer>>),
    )
    .unwrap();
    let inner = echo(CLIENT, REMOTE_HOST, 64, 100);
    let frames: Vec<_> = (0..3)
        .map(|_| eth(MAC0, CLIENT_MAC, 0x0800, &inner))
        .collect();
    // With the device: nothing leaves, the packets wait parked in the encrypt node.
    assert!(send_vector(&mut r, 0, &frames).is_empty());
    assert_eq!(r.graph.parked(), 3);
    assert_eq!(engine.in_flight(), 3);
    assert_eq!(r.count("esp4-encrypt", "encrypted"), 0);
    // The device answers: the next dispatch (no new packets) sends them on, in order.
    engine
        .open
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let out = send_vector(&mut r, 0, &[]);
    assert_eq!(out.len(), 3);
    assert_eq!(r.graph.parked(), 0);
    let mut peer = peer_inbound(GCM);
    for (i, (port, frame)) in out.iter().enumerate() {
        assert_eq!(*port, 1);
        let mut packet = frame[14..].to_vec();
        let d = esp::decapsulate(&mut peer, &mut packet, 0).unwrap();
        assert_eq!(d.sequence, i as u64 + 1, "in submission order");
    }
    assert_eq!(r.count("esp4-encrypt", "encrypted"), 3);
    assert_eq!(r.graph.bad_park, 0);
}

/// `packet` (IPv4, no options) as two fragments, the first carrying `at` bytes (a multiple
/// of 8) of its payload: what a router with a small MTU, or the peer's post-encryption
/// fragmentation, makes of it.
fn fragments4(packet: &[u8], at: usize) -> [Vec<u8>; 2] {
    let payload = &packet[20..];
    [(0, &payload[..at], true), (at, &payload[at..], false)].map(|(offset, chunk, more)| {
        let mut p = packet[..20].to_vec();
        p.extend_from_slice(chunk);
        let len = p.len() as u16;
        let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
        ip.set_total_len(len);
        ip.set_ident(0x4242);
        ip.set_fragment(false, more, offset as u16);
        ip.fill_checksum();
        p
    })
}

/// `packet` (IPv6, no extension headers) as two fragments with fragment headers, the first
/// carrying `at` bytes (a multiple of 8) of its payload: the peer as the source fragments.
fn fragments6(packet: &[u8], at: usize) -> [Vec<u8>; 2] {
    let next = packet[6];
    let payload = &packet[40..];
    [(0, &payload[..at], true), (at, &payload[at..], false)].map(|(offset, chunk, more)| {
        let mut p = packet[..40].to_vec();
        p[4..6].copy_from_slice(&((8 + chunk.len()) as u16).to_be_bytes());
        p[6] = IpProtocol::FRAGMENT.0;
        p.extend_from_slice(&[next, 0]);
        p.extend_from_slice(&(offset as u16 | u16::from(more)).to_be_bytes());
        p.extend_from_slice(&0x0bad_cafe_u32.to_be_bytes());
        p.extend_from_slice(chunk);
        p
    })
}

/// The payload of the IPv4 datagram whose fragments (frames) are `frames`, put together by
/// offset, and the first fragment's header.
fn reassembled4(frames: &[(u16, Vec<u8>)]) -> (Vec<u8>, Vec<u8>) {
    let mut payload = Vec::new();
    let mut header = Vec::new();
    for (_, f) in frames {
        let ip = ip4_of(f);
        let off = usize::from(ip.fragment_offset());
        let data = ip.payload();
        if payload.len() < off + data.len() {
            payload.resize(off + data.len(), 0);
        }
        payload[off..off + data.len()].copy_from_slice(data);
        if off == 0 {
            header = f[14..34].to_vec();
        }
    }
    (header, payload)
}

/// RFC 4303 3.4.1: ESP that comes in fragments (an inner packet that may be fragmented and
/// does not fit the tunnel once encrypted: strongSwan's Linux peers and Switchyard itself
/// fragment after encryption) is reassembled, then decrypted, and the inner packet goes on:
/// raw and UDP-encapsulated, fragments in either order; a datagram too big for a buffer is
/// dropped and counted.
#[test]
fn fragmented_esp_is_reassembled_then_decrypted() {
    for udp in [false, true] {
        for reverse in [false, true] {
            let mut r = rig(GCM, udp);
            // 1600 bytes, DF clear: c0's MTU (1500) fragments it again on the way out.
            let inner = ipv4(
                v4(REMOTE_HOST),
                v4(CLIENT),
                IpProtocol::ICMP,
                64,
                false,
                &icmp_echo(8, 1600 - 28),
            );
            let esp = from_peer(&mut peer_outbound(GCM), &inner, udp);
            let mut frags = fragments4(&esp, 1200);
            if reverse {
                frags.reverse();
            }
            let case = format!("udp={udp} reverse={reverse}");
            assert!(
                r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &frags[0]))
                    .is_empty(),
                "{case}: held"
            );
            assert_eq!(r.count("esp4-decrypt", "fragment_queued"), 1, "{case}");
            let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &frags[1]));
            assert_eq!(r.count("esp4-decrypt", "reassembled"), 1, "{case}");
            assert_eq!(r.count("esp4-decrypt", "decrypted"), 1, "{case}");
            assert_eq!(out.len(), 2, "{case}: the inner packet, in c0's fragments");
            assert!(out.iter().all(|(port, _)| *port == 0));
            let (header, payload) = reassembled4(&out);
            let ip = Ipv4Packet::new_unchecked(&header[..]);
            assert_eq!(
                (ip.src_addr(), ip.dst_addr()),
                (v4(REMOTE_HOST), v4(CLIENT))
            );
            assert_eq!(ip.ttl(), 63, "{case}: forwarded, one hop");
            assert_eq!(payload, inner[20..], "{case}");
            assert_eq!(ipsec(&r).inbound[0].stats.snapshot().packets, 1);
        }
    }
    // Larger than a packet buffer once whole: dropped, counted.
    let mut r = rig(GCM, false);
    let inner = ipv4(
        v4(REMOTE_HOST),
        v4(CLIENT),
        IpProtocol::ICMP,
        64,
        false,
        &icmp_echo(8, 3000),
    );
    let esp = from_peer(&mut peer_outbound(GCM), &inner, false);
    for f in fragments4(&esp, 1376) {
        assert!(r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &f)).is_empty());
    }
    assert_eq!(r.count("esp4-decrypt", "reassembled_too_big"), 1);
    assert_eq!(r.count("esp4-decrypt", "decrypted"), 0);
}

/// Switchyard to Switchyard: what one node's encrypt node fragments after encryption, the
/// other's decrypt node reassembles and decrypts.
#[test]
fn switchyard_reads_its_own_fragmented_esp() {
    let mut sender = rig(GCM, true);
    let inner = ipv4(
        v4(CLIENT),
        v4(REMOTE_HOST),
        IpProtocol::ICMP,
        64,
        false,
        &icmp_echo(8, 1380 - 28),
    );
    let out = sender.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &inner));
    assert_eq!(out.len(), 2, "two outer fragments");
    // The receiving end, the peer (198.18.2.2 on s0): the sender's outbound SA is its
    // inbound one, the selectors the other way round.
    let mut receiver = rig(GCM, true);
    let mut c0 = Interface::new("c0", MAC0, 1500);
    c0.ipv4.push("198.18.1.1/24".parse().unwrap());
    let mut s0 = Interface::new("s0", MAC1, 1400);
    s0.ipv4.push("198.18.2.2/24".parse().unwrap());
    let mut tables = Tables::build(1, vec![c0, s0], &[]).unwrap();
    tables.fib.insert(
        "203.0.113.0/24".parse().unwrap(),
        Route::Attached { port: 1 },
    );
    let mut t = ipsec(&receiver).clone();
    t.outbound.clear();
    let sa = &mut t.inbound[0];
    sa.sa = config(OUT_SPI, GCM, 1);
    sa.local = PEER.parse().unwrap();
    std::mem::swap(&mut sa.local_ts, &mut sa.remote_ts);
    tables.ipsec = Some(Arc::new(t));
    receiver.tables = tables;
    let mut forwarded = Vec::new();
    for (_, frame) in &out {
        let ip = &frame[14..];
        forwarded.extend(receiver.send(1, &eth(MAC1, SERVER_MAC, 0x0800, ip)));
    }
    assert_eq!(receiver.count("esp4-decrypt", "decrypted"), 1);
    assert_eq!(forwarded.len(), 1);
    let ip = ip4_of(&forwarded[0].1);
    assert_eq!(
        (ip.src_addr(), ip.dst_addr()),
        (v4(CLIENT), v4(REMOTE_HOST))
    );
    assert_eq!(ip.payload(), &inner[20..]);
}

/// IPv6: the peer (the source: IPv6 routers do not fragment) sends its ESP in fragments,
/// raw and in UDP, in either order.
#[test]
fn fragmented_esp_over_ipv6_is_reassembled_then_decrypted() {
    for udp in [false, true] {
        for reverse in [false, true] {
            let mut r = rig6(udp);
            let (client, remote_host) = (v6(CLIENT6), v6(REMOTE_HOST6));
            // Fits c0 (1500) but not s0 (1400) once encrypted.
            let mut msg = vec![128, 0, 0, 0, 0, 7, 0, 1];
            msg.extend((0..1400).map(|i| i as u8));
            let msg = icmp6(remote_host, client, msg);
            let inner = ipv6(remote_host, client, IpProtocol::ICMPV6, 64, &msg);
            let esp =
                esp::encapsulate(&mut peer_outbound(GCM), &inner, &outer6(udp, true), 0).unwrap();
            assert!(esp.len() > 1400);
            let mut frags = fragments6(&esp, 1232);
            if reverse {
                frags.reverse();
            }
            let case = format!("udp={udp} reverse={reverse}");
            assert!(r
                .send(1, &eth(MAC1, SERVER_MAC, 0x86dd, &frags[0]))
                .is_empty());
            let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x86dd, &frags[1]));
            assert_eq!(r.count("esp6-decrypt", "reassembled"), 1, "{case}");
            assert_eq!(r.count("esp6-decrypt", "decrypted"), 1, "{case}");
            assert_eq!(out.len(), 1, "{case}");
            assert_eq!(out[0].0, 0);
            let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
            assert_eq!((ip.src_addr(), ip.dst_addr()), (remote_host, client));
            assert_eq!(ip.hop_limit(), 63);
            assert_eq!(ip.payload(), &msg[..], "{case}");
        }
    }
}

/// UDP fragments to the tunnel end are reassembled in case they are ESP; what turns out to
/// be IKE (the non-ESP marker) or another port goes on to the local node as it came: without
/// a host stack, fragmented again and answered as `ip4-local` answers UDP; with one, to the
/// host.
#[test]
fn fragmented_ike_to_the_tunnel_end_still_reaches_the_local_path() {
    let mut ike = vec![0, 0, 0, 0];
    ike.extend((0..1800).map(|i| i as u8));
    let datagram = udp4(PEER, LOCAL, 4500, 4500, &ike);
    for punt in [false, true] {
        let mut r = rig(GCM, true);
        r.tables.punt_to_host = punt;
        let mut out = Vec::new();
        let mut punted = Vec::new();
        for f in fragments4(&datagram, 1200) {
            r.graph.receive(Packet::received(
                HeapBuffer::from_bytes(&eth(MAC1, SERVER_MAC, 0x0800, &f)),
                1,
            ));
            r.graph.dispatch(&r.tables, &mut r.state, r.now);
            out.extend(r.take_tx());
            punted.extend(r.graph.punt.drain(..).map(|p| p.buf.data().to_vec()));
            r.graph.dropped.clear();
        }
        assert_eq!(r.count("esp4-decrypt", "reassembled_not_esp"), 1);
        assert_eq!(r.count("esp4-decrypt", "decrypted"), 0);
        if punt {
            // The host gets the datagram, in fragments of at most s0's MTU, with its
            // identification, and reassembles it.
            assert!(out.is_empty());
            assert_eq!(punted.len(), 2);
            let mut payload = vec![0u8; datagram.len() - 20];
            for p in &punted {
                let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
                assert!(ip.verify_checksum());
                assert!(p.len() <= 1400);
                assert_eq!(ip.ident(), 0x4242);
                assert_eq!((ip.src_addr(), ip.dst_addr()), (v4(PEER), v4(LOCAL)));
                let off = usize::from(ip.fragment_offset());
                payload[off..off + ip.payload().len()].copy_from_slice(ip.payload());
            }
            assert_eq!(payload, datagram[20..]);
        } else {
            assert_eq!(r.count("ip4-local", "reassembled"), 1);
            assert_eq!(r.count("ip4-local", "port_unreachable"), 1);
            assert_eq!(out.len(), 1, "port unreachable back to the peer");
        }
    }
}

/// RFC 4301 5.2: cleartext from the peer's protected subnet to ours should have come
/// through the SA; it is dropped and counted, forwarded or to this node (a virtual IP
/// covered by the selectors), while the same packet inside ESP is delivered; traffic outside
/// the selectors goes on in the clear.
#[test]
fn cleartext_that_an_inbound_sa_covers_is_dropped() {
    let mut r = rig(GCM, true);
    let mut peer = peer_outbound(GCM);
    let plain = echo(REMOTE_HOST, CLIENT, 64, 20);
    assert!(r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &plain)).is_empty());
    assert_eq!(r.count("esp4-encrypt", "cleartext_protected"), 1);
    let esp = from_peer(&mut peer, &plain, true);
    let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &esp));
    assert_eq!(out.len(), 1, "inside ESP: delivered");
    assert_eq!(ip4_of(&out[0].1).dst_addr(), v4(CLIENT));
    assert_eq!(r.count("esp4-encrypt", "cleartext_protected"), 1);
    // From outside the peer's selectors: forwarded in the clear.
    let out = r.send(
        1,
        &eth(MAC1, SERVER_MAC, 0x0800, &echo(PEER, CLIENT, 64, 20)),
    );
    assert_eq!(out.len(), 1);
    // To this node: a virtual IP the selectors cover.
    const VIP: &str = "198.19.200.1";
    let mut t = (*r.tables.ipsec.take().unwrap()).clone();
    t.inbound[0].local_ts = vec![ts(VIP, VIP)];
    t.outbound[0].local_ts = vec![ts(VIP, VIP)];
    t.local_addresses = vec![VIP.parse().unwrap()];
    r.tables.set_ipsec(Some(t));
    let ping = echo(REMOTE_HOST, VIP, 64, 20);
    assert!(r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &ping)).is_empty());
    assert_eq!(r.count("esp4-decrypt", "cleartext_protected"), 1);
    assert_eq!(r.count("ip4-local", "echo_replied"), 0);
    let esp = from_peer(&mut peer, &ping, true);
    assert_eq!(r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &esp)).len(), 1);
    assert_eq!(r.count("ip4-local", "echo_replied"), 1);
    // IPv6 the same.
    let mut r = rig6(true);
    let plain = echo6(v6(REMOTE_HOST6), v6(CLIENT6), 64);
    assert!(r.send(1, &eth(MAC1, SERVER_MAC, 0x86dd, &plain)).is_empty());
    assert_eq!(r.count("esp6-encrypt", "cleartext_protected"), 1);
}

/// With selectors that cover everything (a road warrior's 0.0.0.0/0 and ::/0), what must
/// still come in the clear does: IKE, ICMP errors about the tunnel's own packets (path MTU
/// discovery), neighbor discovery; anything else is dropped.
#[test]
fn with_everything_covered_ike_errors_about_esp_and_nd_still_come_in_the_clear() {
    let all4 = ts("0.0.0.0", "255.255.255.255");
    let all6 = ts("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    let mut r = rig(GCM, true);
    let mut t = ipsec(&r).clone();
    t.inbound[0].local_ts = vec![all4, all6];
    t.inbound[0].remote_ts = vec![all4, all6];
    r.tables.ipsec = Some(Arc::new(t));
    // IKE to the tunnel end: the local node's (no host stack: port unreachable).
    let ike = udp4(PEER, LOCAL, 500, 500, b"ike");
    assert_eq!(r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &ike)).len(), 1);
    assert_eq!(r.count("ip4-local", "port_unreachable"), 1);
    // A router's fragmentation needed about our ESP: let in (the local node punts errors).
    let our_esp = ipv4(
        v4(LOCAL),
        v4(PEER),
        IpProtocol(50),
        64,
        true,
        &[0xc0, 0xff, 0xee, 1, 0, 0, 0, 1],
    );
    let mut error = vec![3, 4, 0, 0, 0, 0, 0x05, 0x00];
    error.extend_from_slice(&our_esp);
    let c = checksum::checksum(&error);
    error[2..4].copy_from_slice(&c.to_be_bytes());
    let error = ipv4(
        v4("198.18.2.3"),
        v4(LOCAL),
        IpProtocol::ICMP,
        64,
        false,
        &error,
    );
    r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &error));
    assert_eq!(r.count("esp4-decrypt", "cleartext_protected"), 0);
    // A neighbor solicitation to our address (unreachability detection): answered.
    let (peer6, me6) = (v6("2001:db8:2::2"), v6("2001:db8:2::1"));
    let ns = super::ns(peer6, me6, me6, Some(SERVER_MAC));
    let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x86dd, &ns));
    assert_eq!(out.len(), 1, "the advertisement");
    assert_eq!(r.count("esp6-decrypt", "cleartext_protected"), 0);
    // But a ping to this node in the clear: the tunnel's.
    let ping = echo(PEER, LOCAL, 64, 8);
    assert!(r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &ping)).is_empty());
    assert_eq!(r.count("esp4-decrypt", "cleartext_protected"), 1);
}

/// `packet` with ECN field `ecn` (the IPv4 header checksum made right again).
fn with_ecn(mut packet: Vec<u8>, ecn: u8) -> Vec<u8> {
    if packet[0] >> 4 == 4 {
        packet[1] = (packet[1] & !3) | ecn;
        Ipv4Packet::new_unchecked(&mut packet[..]).fill_checksum();
    } else {
        packet[1] = (packet[1] & !0x30) | (ecn << 4);
    }
    packet
}

/// RFC 6040 4.2 at the tunnel's end: CE on the outer header reaches an ECN-capable inner
/// packet (its IPv4 checksum kept right), and a packet that is not ECN-capable is dropped
/// rather than lose the mark; IPv4 and IPv6.
#[test]
fn outer_congestion_marks_reach_the_inner_packet_or_drop_it() {
    const CE: u8 = 3;
    for inner_ecn in [2u8, 1, 0] {
        let mut r = rig(GCM, true);
        let inner = with_ecn(echo(REMOTE_HOST, CLIENT, 64, 40), inner_ecn);
        let mut esp = from_peer(&mut peer_outbound(GCM), &inner, true);
        // A router on the way marks the outer header.
        esp = with_ecn(esp, CE);
        let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &esp));
        if inner_ecn == 0 {
            assert!(out.is_empty(), "Not-ECT inside: dropped");
            assert_eq!(r.count("esp4-decrypt", "ecn_drop"), 1);
            assert_eq!(ipsec(&r).inbound[0].stats.snapshot().other_drops, 1);
        } else {
            assert_eq!(out.len(), 1);
            let ip = ip4_of(&out[0].1); // checks the header checksum
            assert_eq!(ip.ecn(), CE, "ECT({}) inside: marked", 2 - inner_ecn);
        }
    }
    // Not marked on the way: the inner field as it was.
    let mut r = rig(GCM, true);
    let inner = with_ecn(echo(REMOTE_HOST, CLIENT, 64, 40), 1);
    let esp = from_peer(&mut peer_outbound(GCM), &inner, true);
    let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x0800, &esp));
    assert_eq!(ip4_of(&out[0].1).ecn(), 1);
    // IPv6 inside IPv6.
    for inner_ecn in [2u8, 0] {
        let mut r = rig6(true);
        let inner = with_ecn(echo6(v6(REMOTE_HOST6), v6(CLIENT6), 64), inner_ecn);
        let esp =
            esp::encapsulate(&mut peer_outbound(GCM), &inner, &outer6(true, true), 0).unwrap();
        let out = r.send(1, &eth(MAC1, SERVER_MAC, 0x86dd, &with_ecn(esp, CE)));
        if inner_ecn == 0 {
            assert!(out.is_empty());
            assert_eq!(r.count("esp6-decrypt", "ecn_drop"), 1);
        } else {
            let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
            assert_eq!(ip.traffic_class() & 3, CE);
        }
    }
}

/// RFC 6040 4.1 (normal mode): the outer header copies the inner ECN field, with the DSCP;
/// IPv4 in IPv4 and IPv6 in IPv6.
#[test]
fn encapsulation_copies_the_inner_ecn_field() {
    for ecn in [1u8, 2, 3] {
        let mut r = rig(GCM, false);
        let inner = with_ecn(echo(CLIENT, REMOTE_HOST, 64, 40), ecn);
        let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x0800, &inner));
        assert_eq!(out.len(), 1);
        let ip = ip4_of(&out[0].1); // checks the header checksum
        assert_eq!(ip.protocol().0, 50);
        assert_eq!(ip.ecn(), ecn);
        let mut r = rig6(false);
        let inner = with_ecn(echo6(v6(CLIENT6), v6(REMOTE_HOST6), 64), ecn);
        let out = r.send(0, &eth(MAC0, CLIENT_MAC, 0x86dd, &inner));
        assert_eq!(out.len(), 1);
        let ip = Ipv6Packet::new_checked(&out[0].1[14..]).unwrap();
        assert_eq!(ip.next_header().0, 50);
        assert_eq!(ip.traffic_class() & 3, ecn);
    }
}
