//! Peers that misbehave: silent, stalled after OPEN, sending malformed
//! UPDATEs. Scripted over raw TCP on loopback; gobgpd, when installed,
//! is a well-behaved neighbour that must not notice any of it.

mod common;

use common::*;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use switchyard_bgp::fsm::State;
use switchyard_bgp::speaker::{Speaker, SpeakerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const RAW_AS: u32 = 65020;

fn message(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&u16::try_from(19 + body.len()).unwrap().to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

/// OPEN with IPv4 unicast and 4-octet AS capabilities.
fn open(asn: u32, hold: u16, id: Ipv4Addr) -> Vec<u8> {
    let mut b = vec![4];
    b.extend_from_slice(&23456u16.to_be_bytes());
    b.extend_from_slice(&hold.to_be_bytes());
    b.extend_from_slice(&id.octets());
    let mut caps = vec![1, 4, 0, 1, 0, 1, 65, 4];
    caps.extend_from_slice(&asn.to_be_bytes());
    b.push(u8::try_from(caps.len() + 2).unwrap());
    b.push(2);
    b.push(u8::try_from(caps.len()).unwrap());
    b.extend_from_slice(&caps);
    message(1, &b)
}

fn update(withdrawn: &[u8], attrs: &[Vec<u8>], nlri: &[u8]) -> Vec<u8> {
    let a: Vec<u8> = attrs.concat();
    let mut b = Vec::new();
    b.extend_from_slice(&u16::try_from(withdrawn.len()).unwrap().to_be_bytes());
    b.extend_from_slice(withdrawn);
    b.extend_from_slice(&u16::try_from(a.len()).unwrap().to_be_bytes());
    b.extend_from_slice(&a);
    b.extend_from_slice(nlri);
    message(2, &b)
}

fn attr(flags: u8, code: u8, v: &[u8]) -> Vec<u8> {
    let mut a = vec![flags, code, u8::try_from(v.len()).unwrap()];
    a.extend_from_slice(v);
    a
}

fn good_attrs(origin: u8) -> Vec<Vec<u8>> {
    let mut path = vec![2, 1];
    path.extend_from_slice(&RAW_AS.to_be_bytes());
    vec![
        attr(0x40, 1, &[origin]),
        attr(0x40, 2, &path),
        attr(0x40, 3, &[198, 51, 100, 9]),
    ]
}

/// Reads one BGP message: (type, body).
async fn read_msg(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 19];
    timeout(Duration::from_secs(15), s.read_exact(&mut h))
        .await
        .ok()?
        .ok()?;
    let len = usize::from(u16::from_be_bytes([h[16], h[17]]));
    let mut body = vec![0u8; len.checked_sub(19)?];
    timeout(Duration::from_secs(15), s.read_exact(&mut body))
        .await
        .ok()?
        .ok()?;
    Some((h[18], body))
}

/// Reads until a NOTIFICATION arrives: (code, subcode).
async fn read_notification(s: &mut TcpStream) -> Option<(u8, u8)> {
    loop {
        let (ty, body) = read_msg(s).await?;
        if ty == 3 {
            return Some((*body.first()?, *body.get(1)?));
        }
    }
}

/// Accepts our speaker's connection and completes the handshake.
async fn handshake(l: &TcpListener, hold: u16, id: Ipv4Addr) -> TcpStream {
    let (mut s, _) = timeout(Duration::from_secs(15), l.accept())
        .await
        .expect("speaker did not connect")
        .expect("accept");
    let (ty, _) = read_msg(&mut s).await.expect("no OPEN from speaker");
    assert_eq!(ty, 1);
    s.write_all(&open(RAW_AS, hold, id)).await.unwrap();
    s.write_all(&message(4, &[])).await.unwrap();
    let (ty, _) = read_msg(&mut s).await.expect("no KEEPALIVE from speaker");
    assert_eq!(ty, 4);
    s
}

async fn established(h: &SpeakerHandle, a: Ipv4Addr) -> bool {
    neighbor_state(h, a).await == Some(State::Established)
}

/// A peer that accepts and never sends, and one that stalls after OPEN:
/// both end by the Hold timer with NOTIFICATION 4/0; the gobgpd session
/// beside them never flaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_stalled_peers_time_out_others_unaffected() {
    let gobgp = require(&["gobgpd", "gobgp"]);
    let net = 31;
    let our_port = free_port(ip(net, 1));
    let silent = TcpListener::bind((ip(net, 4), 0)).await.unwrap();
    let stalled = TcpListener::bind((ip(net, 5), 0)).await.unwrap();
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    let mut p = peer_config(ip(net, 4), silent.local_addr().unwrap().port(), RAW_AS);
    p.open_hold_time = 3;
    p.connect_retry_time = 30;
    cfg.peers.push(p);
    let mut p = peer_config(ip(net, 5), stalled.local_addr().unwrap().port(), RAW_AS);
    p.connect_retry_time = 30;
    cfg.peers.push(p);
    let g = gobgp.as_ref().map(|bins| {
        let o = GobgpdOpts {
            asn: 65001,
            router_id: "198.51.100.2".parse().unwrap(),
            addr: ip(net, 2),
            port: free_port(ip(net, 2)),
            nh4: "198.51.100.2".parse().unwrap(),
            nh6: "2001:db8::2".parse().unwrap(),
            neighbors: vec![GobgpNeighbor {
                addr: ip(net, 1),
                port: our_port,
                asn: OUR_AS,
                passive: true,
            }],
        };
        cfg.peers.push(peer_config(ip(net, 2), o.port, 65001));
        Gobgpd::start(&bins[0], &o)
    });
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    if g.is_some() {
        wait_established(&h, ip(net, 2), 20).await;
    }

    // Silent: our OPEN, then the OPEN hold timer (3 s here) fires.
    let (mut s1, _) = timeout(Duration::from_secs(10), silent.accept())
        .await
        .unwrap()
        .unwrap();
    let (ty, _) = read_msg(&mut s1).await.unwrap();
    assert_eq!(ty, 1);
    assert_eq!(read_notification(&mut s1).await, Some((4, 0)));

    // Stalled after OPEN: negotiated hold time min(9, 3) = 3 s.
    let (mut s2, _) = timeout(Duration::from_secs(10), stalled.accept())
        .await
        .unwrap()
        .unwrap();
    let (ty, _) = read_msg(&mut s2).await.unwrap();
    assert_eq!(ty, 1);
    s2.write_all(&open(RAW_AS, 3, "198.51.100.5".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(read_notification(&mut s2).await, Some((4, 0)));

    let n = h.neighbors().await.unwrap();
    let by = |a: Ipv4Addr| n.iter().find(|x| x.addr == IpAddr::V4(a)).unwrap();
    assert!(
        by(ip(net, 4))
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("4/0")),
        "{n:?}"
    );
    if g.is_some() {
        let gn = by(ip(net, 2));
        assert_eq!(gn.state, State::Established, "{n:?}");
        assert_eq!(gn.flaps, 0, "{n:?}");
    }
    h.shutdown().await.unwrap();
}

/// Each malformed UPDATE gets its RFC 4271 / RFC 7606 NOTIFICATION, on
/// its own session only; a treat-as-withdraw error keeps the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_updates_get_the_right_notification() {
    let net = 32;
    let mut nlri = vec![32];
    nlri.extend_from_slice(&[203, 0, 113, 77]);
    let cases: Vec<(&str, Vec<u8>, (u8, u8))> = vec![
        (
            "NLRI prefix length 33",
            update(&[], &good_attrs(0), &[33, 1, 2, 3, 4, 5]),
            (3, 10),
        ),
        (
            "withdrawn length beyond the message",
            message(2, &[0, 9, 0, 0]),
            (3, 1),
        ),
        (
            "unrecognised well-known attribute",
            update(
                &[],
                &[good_attrs(0), vec![attr(0x40, 99, &[1])]].concat(),
                &nlri,
            ),
            (3, 2),
        ),
        (
            "bad marker",
            {
                let mut m = message(4, &[]);
                m[3] = 0;
                m
            },
            (1, 1),
        ),
    ];
    let mut listeners = Vec::new();
    let mut cfg = speaker_config(net);
    cfg.listen = None;
    for i in 0..=cases.len() {
        let a = ip(net, 10 + u8::try_from(i).unwrap());
        let l = TcpListener::bind((a, 0)).await.unwrap();
        let mut p = peer_config(a, l.local_addr().unwrap().port(), RAW_AS);
        p.connect_retry_time = 60;
        cfg.peers.push(p);
        listeners.push(l);
    }
    let (h, _ev) = Speaker::start(cfg).await.unwrap();

    // The extra last peer: treat-as-withdraw (bad ORIGIN) keeps the
    // session, and the route does not appear; a good UPDATE then does.
    let good_peer = ip(net, 10 + u8::try_from(cases.len()).unwrap());
    let mut good = handshake(&listeners[cases.len()], 9, "198.51.100.99".parse().unwrap()).await;

    let mut sessions = Vec::new();
    for (i, (_, _, _)) in cases.iter().enumerate() {
        let id = Ipv4Addr::new(198, 51, 100, 10 + u8::try_from(i).unwrap());
        sessions.push(handshake(&listeners[i], 9, id).await);
    }
    for (i, (what, bytes, want)) in cases.iter().enumerate() {
        let s = &mut sessions[i];
        s.write_all(bytes).await.unwrap();
        assert_eq!(read_notification(s).await, Some(*want), "{what}");
    }

    good.write_all(&update(&[], &good_attrs(7), &nlri))
        .await
        .unwrap();
    good.write_all(&message(4, &[])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(established(&h, good_peer).await);
    assert!(our_next_hops(&h, "203.0.113.77/32").await.is_empty());
    good.write_all(&update(&[], &good_attrs(0), &nlri))
        .await
        .unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if our_next_hops(&h, "203.0.113.77/32").await
            == vec!["198.51.100.9".parse::<IpAddr>().unwrap()]
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "route from the healthy peer missing");
    let n = h.neighbors().await.unwrap();
    for (i, (what, _, (c, sc))) in cases.iter().enumerate() {
        let e = n[i].last_error.clone().unwrap_or_default();
        assert!(e.contains(&format!("{c}/{sc}")), "{what}: {e}");
        assert_ne!(n[i].state, State::Established, "{what}");
    }
    assert_eq!(n[cases.len()].state, State::Established);
    h.shutdown().await.unwrap();
}

/// After an error the session is in Idle, but a peer that connects again is taken at once
/// (automatic start with passive TCP establishment, RFC 4271 8.1.1) instead of being refused
/// until ConnectRetry (here a minute) fires: a test suite can run its cases back to back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_reconnecting_after_an_error_is_taken_at_once() {
    let net = 33;
    let our_port = free_port(ip(net, 1));
    let peer = ip(net, 7);
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    let mut p = peer_config(peer, 179, RAW_AS);
    p.passive = true;
    p.connect_retry_time = 60;
    cfg.peers.push(p);
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    let connect = || async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind((peer, 0).into()).unwrap();
        timeout(
            Duration::from_secs(5),
            sock.connect((ip(net, 1), our_port).into()),
        )
        .await
        .expect("connect timed out")
        .expect("connect")
    };
    for round in 0..3 {
        let mut s = connect().await;
        let (ty, _) = read_msg(&mut s).await.expect("an OPEN, not a refusal");
        assert_eq!(ty, 1, "round {round}");
        // Hold time 1: Unacceptable Hold Time (2/6), and the session falls to Idle.
        s.write_all(&open(RAW_AS, 1, "198.51.100.7".parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(
            read_notification(&mut s).await,
            Some((2, 6)),
            "round {round}"
        );
    }
    // And a good OPEN after all that is established.
    let mut s = connect().await;
    read_msg(&mut s).await.expect("OPEN");
    s.write_all(&open(RAW_AS, 9, "198.51.100.7".parse().unwrap()))
        .await
        .unwrap();
    s.write_all(&message(4, &[])).await.unwrap();
    let mut up = false;
    for _ in 0..50 {
        if established(&h, peer).await {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up);
    h.shutdown().await.unwrap();
}

/// Reads until a NOTIFICATION arrives: (code, subcode, data).
async fn read_notification_data(s: &mut TcpStream) -> Option<(u8, u8, Vec<u8>)> {
    loop {
        let (ty, body) = read_msg(s).await?;
        if ty == 3 {
            return Some((*body.first()?, *body.get(1)?, body.get(2..)?.to_vec()));
        }
    }
}

/// True if the connection ends with a FIN (EOF) within a few seconds.
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(
        timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(0))
    )
}

/// Connects to `to` from the address `from`.
async fn connect_from(from: Ipv4Addr, to: std::net::SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind((from, 0).into()).unwrap();
    timeout(Duration::from_secs(5), sock.connect(to))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// RFC 4486 §4: a connection we accept but will not run a session on (no
/// peer configured at that address) gets Cease / Connection Rejected,
/// then a FIN; also when the connector has already sent its OPEN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfigured_connector_gets_connection_rejected() {
    let net = 34;
    let mut cfg = speaker_config(net);
    let mut p = peer_config(ip(net, 7), 179, RAW_AS);
    p.passive = true;
    cfg.peers.push(p);
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    let listen = h.local_addr().unwrap();
    for send_open in [false, true] {
        let mut s = connect_from(ip(net, 9), listen).await;
        if send_open {
            s.write_all(&open(RAW_AS, 9, "198.51.100.9".parse().unwrap()))
                .await
                .unwrap();
        }
        assert_eq!(
            read_notification_data(&mut s).await,
            Some((6, 5, Vec::new())),
            "OPEN sent first: {send_open}"
        );
        assert!(closed(&mut s).await, "FIN after the NOTIFICATION");
    }
    h.shutdown().await.unwrap();
}

/// ROUTE-REFRESH (RFC 2918 §4) is answered because we advertised the
/// capability, whether or not the peer did: this peer's OPEN has no
/// capability 2, and after our End-of-RIB its request for IPv4 unicast
/// brings our IPv4 routes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_refresh_answered_without_the_peers_capability() {
    let net = 35;
    let l = TcpListener::bind((ip(net, 7), 0)).await.unwrap();
    let mut cfg = speaker_config(net);
    cfg.listen = None;
    cfg.peers.push(peer_config(
        ip(net, 7),
        l.local_addr().unwrap().port(),
        RAW_AS,
    ));
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    h.advertise(vec!["203.0.113.0/24".parse().unwrap()], None)
        .await
        .unwrap();
    let mut s = handshake(&l, 9, "198.51.100.7".parse().unwrap()).await;
    let ours: &[u8] = &[24, 203, 0, 113];
    let mut announced = false;
    loop {
        let (ty, body) = read_msg(&mut s).await.expect("our UPDATEs");
        if ty != 2 {
            continue;
        }
        if body == [0, 0, 0, 0] {
            break;
        }
        announced |= body.ends_with(ours);
    }
    assert!(announced, "our route before End-of-RIB");
    s.write_all(&message(5, &[0, 1, 0, 1])).await.unwrap();
    // Bounded: KEEPALIVEs alone would keep a plain read loop going.
    let again = timeout(Duration::from_secs(10), async {
        loop {
            let (ty, body) = read_msg(&mut s).await?;
            if ty == 2 {
                return Some(body);
            }
        }
    })
    .await
    .ok()
    .flatten()
    .expect("an UPDATE answering ROUTE-REFRESH");
    assert!(again.ends_with(ours), "{again:?}");
    assert!(established(&h, ip(net, 7)).await);
    h.shutdown().await.unwrap();
}

/// A peer that sends more prefixes than its limit (RFC 4271 §6.7) gets
/// Cease / Maximum Number of Prefixes Reached with AFI, SAFI and the
/// limit as data (RFC 4486 §4); its routes go; while the session is held
/// down, the peer's own connections get Cease / Connection Rejected
/// (RFC 4486 §4); after its ConnectRetryTime we connect again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_prefixes_exceeded_stops_the_session_for_a_while() {
    let net = 36;
    let peer = ip(net, 7);
    let l = TcpListener::bind((peer, 0)).await.unwrap();
    let mut cfg = speaker_config(net);
    let mut p = peer_config(peer, l.local_addr().unwrap().port(), RAW_AS);
    p.max_prefixes = Some(2);
    p.connect_retry_time = 4;
    cfg.peers.push(p);
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    let listen = h.local_addr().unwrap();
    let mut s = handshake(&l, 9, "198.51.100.7".parse().unwrap()).await;
    // Two: at the limit, kept.
    let two = [24, 203, 0, 113, 24, 198, 18, 1];
    s.write_all(&update(&[], &good_attrs(0), &two))
        .await
        .unwrap();
    wait_next_hops(&h, "198.18.1.0/24", &["198.51.100.9"]).await;
    // A third: over it.
    s.write_all(&update(&[], &good_attrs(0), &[24, 198, 18, 2]))
        .await
        .unwrap();
    assert_eq!(
        read_notification_data(&mut s).await,
        Some((6, 1, vec![0, 1, 1, 0, 0, 0, 2]))
    );
    assert!(closed(&mut s).await);
    wait_next_hops(&h, "203.0.113.0/24", &[]).await;
    let n = h.neighbors().await.unwrap();
    assert_ne!(n[0].state, State::Established);
    assert_eq!(n[0].prefixes_in, 0);
    // Held down: the peer's own connection is refused.
    let mut refused = connect_from(peer, listen).await;
    assert_eq!(
        read_notification_data(&mut refused).await,
        Some((6, 5, Vec::new()))
    );
    assert!(closed(&mut refused).await);
    // Then the session starts again by itself.
    let again = handshake(&l, 9, "198.51.100.7".parse().unwrap()).await;
    drop(again);
    h.shutdown().await.unwrap();
}

/// Next hops on 198.51.100.0/24 only, for the test below.
#[derive(Debug)]
struct OnlyDocNet;

impl switchyard_bgp::rib::decision::IgpCost for OnlyDocNet {
    fn cost(&self, nh: Option<IpAddr>, _: switchyard_bgp::rib::decision::Reach) -> Option<u32> {
        match nh {
            Some(IpAddr::V4(a)) if a.octets()[..3] == [198, 51, 100] => Some(0),
            _ => None,
        }
    }
}

/// RFC 4271 §9.1.2.1 in the speaker: a new next-hop resolver runs route
/// selection again; a route whose next hop no longer resolves leaves the
/// FIB (an empty `BestPathsChanged`), and comes back with one that does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_hop_resolver_runs_selection_again() {
    use std::sync::Arc;
    let net = 37;
    let l = TcpListener::bind((ip(net, 7), 0)).await.unwrap();
    let mut cfg = speaker_config(net);
    cfg.listen = None;
    cfg.peers.push(peer_config(
        ip(net, 7),
        l.local_addr().unwrap().port(),
        RAW_AS,
    ));
    let (h, mut ev) = Speaker::start(cfg).await.unwrap();
    let mut s = handshake(&l, 9, "198.51.100.7".parse().unwrap()).await;
    let mut attrs = good_attrs(0);
    attrs[2] = attr(0x40, 3, &[198, 18, 0, 9]);
    s.write_all(&update(&[], &attrs, &[24, 203, 0, 113]))
        .await
        .unwrap();
    wait_next_hops(&h, "203.0.113.0/24", &["198.18.0.9"]).await;
    let prefix: ipnet::IpNet = "203.0.113.0/24".parse().unwrap();
    let fib = |want_empty: bool| {
        move |e: &switchyard_bgp::speaker::SpeakerEvent| {
            matches!(e, switchyard_bgp::speaker::SpeakerEvent::BestPathsChanged(v)
                if v.iter().any(|b| b.prefix == prefix && b.next_hops.is_empty() == want_empty))
        }
    };
    wait_event(&mut ev, 10, "the route installed", fib(false)).await;

    h.set_next_hop_resolver(Arc::new(OnlyDocNet)).await.unwrap();
    wait_event(&mut ev, 10, "the route removed", fib(true)).await;
    assert!(our_next_hops(&h, "203.0.113.0/24").await.is_empty());
    // Still in the Adj-RIB-In, just not usable.
    let routes = h.routes().await.unwrap();
    assert!(routes
        .iter()
        .any(|r| r.prefix == prefix && !r.paths.is_empty()));

    h.set_next_hop_resolver(Arc::new(switchyard_bgp::rib::decision::FlatIgp))
        .await
        .unwrap();
    wait_event(&mut ev, 10, "the route back", fib(false)).await;
    h.shutdown().await.unwrap();
}
