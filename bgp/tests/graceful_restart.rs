//! Graceful restart (RFC 4724) with BIRD restarting and us helping: BIRD
//! is killed with SIGKILL (its TCP connection just ends, no
//! NOTIFICATION) and started again with `-R` (graceful restart recovery:
//! Restart State and Forwarding State bits set).

mod common;

use common::*;
use std::net::Ipv4Addr;
use std::time::Duration;
use switchyard_bgp::fsm::State;
use switchyard_bgp::speaker::{BestPaths, Speaker, SpeakerEvent, SpeakerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

const A: &str = "198.18.26.0/24";
const B: &str = "198.18.27.0/24";
const C: &str = "198.18.28.0/24";
const BIRD_NH: &str = "198.51.100.3";

fn opts(net: u8, our_port: u16, bird_port: u16, restart_time: u16, statics: &[&str]) -> BirdOpts {
    BirdOpts {
        router_id: "198.51.100.3".parse().unwrap(),
        addr: ip(net, 3),
        port: bird_port,
        asn: 65002,
        neighbor: (ip(net, 1), our_port, OUR_AS),
        nh4: BIRD_NH.parse().unwrap(),
        nh6: "2001:db8::3".parse().unwrap(),
        password: None,
        static4: statics.iter().map(|s| s.to_string()).collect(),
        static6: vec![],
        extra: format!("  graceful restart on;\n  graceful restart time {restart_time};\n"),
    }
}

/// Our paths for `prefix`: (next hop, stale) of each.
async fn paths(h: &SpeakerHandle, prefix: &str) -> Vec<(String, bool)> {
    h.routes()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.prefix.to_string() == prefix)
        .flat_map(|r| r.paths)
        .map(|p| {
            (
                p.next_hop.map(|n| n.to_string()).unwrap_or_default(),
                p.stale,
            )
        })
        .collect()
}

fn mentions(changes: &[BestPaths], prefix: &str) -> bool {
    changes.iter().any(|b| b.prefix.to_string() == prefix)
}

/// BIRD restarts within its Restart Time: its routes stay installed
/// (stale) while it is away; once back, the one it announces again stays
/// without any FIB change, the one it no longer has goes at its
/// End-of-RIB, the new one comes. Killed again and not restarted, its
/// routes go when its (now short) Restart Time is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_restart_keeps_forwarding_state() {
    let Some(bins) = require(&["bird", "birdc"]) else {
        return;
    };
    let net = 26;
    let our_port = free_port(ip(net, 1));
    let bird_port = free_port(ip(net, 3));
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    cfg.peers.push(peer_config(ip(net, 3), bird_port, 65002));
    let (h, mut ev) = Speaker::start(cfg).await.unwrap();

    let first = opts(net, our_port, bird_port, 120, &[A, B]);
    let b = Bird::start(&bins[0], &first);
    wait_established(&h, ip(net, 3), 30).await;
    wait_next_hops(&h, A, &[BIRD_NH]).await;
    wait_next_hops(&h, B, &[BIRD_NH]).await;
    drain_best_paths(&mut ev);

    // SIGKILL: the session ends by TCP alone.
    drop(b);
    wait_event(&mut ev, 30, "session down", |e| {
        matches!(e, SpeakerEvent::SessionDown { .. })
    })
    .await;
    for p in [A, B] {
        assert_eq!(
            paths(&h, p).await,
            vec![(BIRD_NH.to_string(), true)],
            "{p} kept, stale"
        );
        wait_next_hops(&h, p, &[BIRD_NH]).await;
    }
    let mut seen = drain_best_paths(&mut ev);
    assert!(
        seen.is_empty(),
        "no FIB change while BIRD is away: {seen:?}"
    );

    // Back with -R, A and C this time, a short Restart Time for later.
    let second = opts(net, our_port, bird_port, 3, &[A, C]);
    let b = Bird::start_conf(&bins[0], &second.config(), &["-R"]);
    wait_established(&h, ip(net, 3), 60).await;
    wait_next_hops(&h, C, &[BIRD_NH]).await;
    wait_next_hops(&h, B, &[]).await;
    assert_eq!(paths(&h, A).await, vec![(BIRD_NH.to_string(), false)]);
    seen.extend(drain_best_paths(&mut ev));
    assert!(
        !mentions(&seen, A),
        "A was never withdrawn or changed: {seen:?}"
    );
    assert!(mentions(&seen, B) && mentions(&seen, C), "{seen:?}");
    // BIRD did come back as a restarting speaker (R and F bits set).
    let proto = b.protocol();
    assert!(proto.contains("Restart recovery"), "{proto}");
    assert!(proto.contains("AF preserved: ipv4"), "{proto}");

    // Killed again, not restarted: kept for its Restart Time (3 s), then
    // deleted.
    drop(b);
    wait_event(&mut ev, 30, "session down", |e| {
        matches!(e, SpeakerEvent::SessionDown { .. })
    })
    .await;
    wait_event(&mut ev, 60, "A and C deleted", |e| {
        matches!(e, SpeakerEvent::BestPathsChanged(v)
            if v.iter().any(|b| b.prefix.to_string() == A && b.next_hops.is_empty()))
    })
    .await;
    wait_next_hops(&h, A, &[]).await;
    wait_next_hops(&h, C, &[]).await;
    assert!(h.routes().await.unwrap().is_empty());
    h.shutdown().await.unwrap();
}

/// Without graceful restart on our side, the same SIGKILL withdraws
/// BIRD's routes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_helper_routes_go_with_the_session() {
    let Some(bins) = require(&["bird", "birdc"]) else {
        return;
    };
    let net = 27;
    let our_port = free_port(ip(net, 1));
    let bird_port = free_port(ip(net, 3));
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    let mut p = peer_config(ip(net, 3), bird_port, 65002);
    p.graceful_restart = false;
    cfg.peers.push(p);
    let (h, mut ev) = Speaker::start(cfg).await.unwrap();
    let b = Bird::start(&bins[0], &opts(net, our_port, bird_port, 120, &[A]));
    wait_established(&h, ip(net, 3), 30).await;
    wait_next_hops(&h, A, &[BIRD_NH]).await;
    drain_best_paths(&mut ev);
    drop(b);
    wait_event(&mut ev, 30, "A withdrawn", |e| {
        matches!(e, SpeakerEvent::BestPathsChanged(v)
            if v.iter().any(|b| b.prefix.to_string() == A && b.next_hops.is_empty()))
    })
    .await;
    h.shutdown().await.unwrap();
}

// A scripted peer over raw TCP, for what BIRD cannot be made to do: come
// back while we still think its old session is up.

const RAW_AS: u32 = 65020;
const D: &str = "198.18.29.0/24";

fn message(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&u16::try_from(19 + body.len()).unwrap().to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

/// OPEN with IPv4 unicast, 4-octet AS and graceful restart for IPv4
/// (Restart Time 120 s); `restarted` sets the Restart State and
/// Forwarding State bits.
fn gr_open(restarted: bool) -> Vec<u8> {
    let mut b = vec![4];
    b.extend_from_slice(&23456u16.to_be_bytes());
    b.extend_from_slice(&90u16.to_be_bytes());
    b.extend_from_slice(&[198, 51, 100, 4]);
    let mut caps = vec![1, 4, 0, 1, 0, 1, 65, 4];
    caps.extend_from_slice(&RAW_AS.to_be_bytes());
    let flags_time: u16 = if restarted { 0x8000 | 120 } else { 120 };
    caps.extend_from_slice(&[64, 6]);
    caps.extend_from_slice(&flags_time.to_be_bytes());
    caps.extend_from_slice(&[0, 1, 1, if restarted { 0x80 } else { 0 }]);
    b.push(u8::try_from(caps.len() + 2).unwrap());
    b.push(2);
    b.push(u8::try_from(caps.len()).unwrap());
    b.extend_from_slice(&caps);
    message(1, &b)
}

/// ORIGIN IGP, AS_PATH [RAW_AS], NEXT_HOP 198.51.100.4, NLRI `D`; or the
/// IPv4 End-of-RIB.
fn update_d() -> Vec<u8> {
    let mut attrs = vec![0x40, 1, 1, 0, 0x40, 2, 6, 2, 1];
    attrs.extend_from_slice(&RAW_AS.to_be_bytes());
    attrs.extend_from_slice(&[0x40, 3, 4, 198, 51, 100, 4]);
    let mut b = vec![0, 0];
    b.extend_from_slice(&u16::try_from(attrs.len()).unwrap().to_be_bytes());
    b.extend_from_slice(&attrs);
    b.extend_from_slice(&[24, 198, 18, 29]);
    message(2, &b)
}

fn end_of_rib() -> Vec<u8> {
    message(2, &[0, 0, 0, 0])
}

async fn read_type(s: &mut TcpStream) -> Option<u8> {
    let mut h = [0u8; 19];
    timeout(Duration::from_secs(20), s.read_exact(&mut h))
        .await
        .ok()?
        .ok()?;
    let len = usize::from(u16::from_be_bytes([h[16], h[17]]));
    let mut body = vec![0u8; len.checked_sub(19)?];
    timeout(Duration::from_secs(20), s.read_exact(&mut body))
        .await
        .ok()?
        .ok()?;
    Some(h[18])
}

/// Connects from `from` to us, sends our OPEN and KEEPALIVE, and reads
/// the speaker's OPEN and KEEPALIVE.
async fn raw_session(from: Ipv4Addr, to: std::net::SocketAddr, restarted: bool) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind((from, 0).into()).unwrap();
    let mut s = timeout(Duration::from_secs(20), sock.connect(to))
        .await
        .expect("connect timed out")
        .expect("connect");
    s.write_all(&gr_open(restarted)).await.unwrap();
    s.write_all(&message(4, &[])).await.unwrap();
    assert_eq!(read_type(&mut s).await, Some(1), "OPEN from the speaker");
    assert_eq!(
        read_type(&mut s).await,
        Some(4),
        "KEEPALIVE from the speaker"
    );
    s
}

/// RFC 4724 §4.2: a peer with graceful restart connects again while its
/// old session still looks established to us: the old connection is
/// closed, the new one taken, and the peer's routes are kept (stale)
/// until it announces them again, with no FIB change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_while_established_is_a_restart() {
    let net = 28;
    let mut cfg = speaker_config(net);
    let mut p = peer_config(ip(net, 4), 179, RAW_AS);
    p.passive = true;
    p.families = vec![switchyard_bgp::config::Family::Ipv4Unicast];
    p.hold_time = 90;
    cfg.peers.push(p);
    let (h, mut ev) = Speaker::start(cfg).await.unwrap();
    let to = h.local_addr().unwrap();

    let mut old = raw_session(ip(net, 4), to, false).await;
    old.write_all(&update_d()).await.unwrap();
    old.write_all(&end_of_rib()).await.unwrap();
    wait_next_hops(&h, D, &["198.51.100.4"]).await;
    drain_best_paths(&mut ev);

    // The peer restarted without our noticing: a new connection comes.
    let mut new = raw_session(ip(net, 4), to, true).await;
    // The old one is closed by us (EOF, after anything queued).
    let closed = timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            match old.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "old connection still open");
    wait_established(&h, ip(net, 4), 20).await;
    assert_eq!(
        paths(&h, D).await,
        vec![("198.51.100.4".to_string(), true)],
        "kept, stale"
    );
    new.write_all(&update_d()).await.unwrap();
    new.write_all(&end_of_rib()).await.unwrap();
    wait_until_async(|| async { paths(&h, D).await == vec![("198.51.100.4".to_string(), false)] })
        .await;
    let seen = drain_best_paths(&mut ev);
    assert!(!mentions(&seen, D), "no FIB change: {seen:?}");
    let n = h.neighbors().await.unwrap();
    assert_eq!(n[0].state, State::Established, "{n:?}");
    assert_eq!(n[0].flaps, 1, "{n:?}");
    h.shutdown().await.unwrap();
}

async fn wait_until_async<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("condition not met in 20 s");
}
