//! Graceful restart with us restarting (RFC 4724 §4.1) and gobgpd
//! helping: our speaker is stopped the way a SIGTERM'd agent stops it
//! (`shutdown_for_restart`: state saved, TCP closed without
//! NOTIFICATION) and started again on the same state directory.
//!
//! ```text
//!   us 127.0.41.1 (AS 65000) ── BGP ── gobgpd 127.0.41.2 (AS 65001, GR helper)
//!   advertise VIP 203.0.113.10/32, VIP2 203.0.113.11/32
//!   learn 198.18.41.0/24 via 198.51.100.2
//! ```

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;
use switchyard_bgp::config::Family;
use switchyard_bgp::speaker::{
    BestPaths, RestartConfig, Speaker, SpeakerConfig, SpeakerEvent, SpeakerHandle,
};
use tokio::sync::mpsc::UnboundedReceiver;

const VIP: &str = "203.0.113.10/32";
const VIP2: &str = "203.0.113.11/32";
const LEARNED: &str = "198.18.41.0/24";
const LEARNED_NH: &str = "198.51.100.2";

/// gobgpd's IPv4 RIB as JSON: prefix → whether its path is stale.
fn gobgp_rib(g: &Gobgpd) -> Vec<(String, bool)> {
    let text = g
        .cli(&["global", "rib", "-a", "ipv4", "-j"])
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let mut out = Vec::new();
    if let Some(m) = v.as_object() {
        for (prefix, paths) in m {
            for p in paths.as_array().into_iter().flatten() {
                let stale = p.get("stale").and_then(|s| s.as_bool()).unwrap_or(false);
                out.push((prefix.clone(), stale));
            }
        }
    }
    out.sort();
    out
}

fn has(rib: &[(String, bool)], prefix: &str) -> Option<bool> {
    rib.iter().find(|(p, _)| p == prefix).map(|(_, s)| *s)
}

/// Our paths for `prefix`: (next hop, stale, restored).
async fn paths(h: &SpeakerHandle, prefix: &str) -> Vec<(String, bool, bool)> {
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
                p.restored,
            )
        })
        .collect()
}

fn config(net: u8, our_port: u16, g_port: u16, dir: &std::path::Path) -> SpeakerConfig {
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    // Both families, as gobgpd is configured: it drops our stale routes
    // only once it has End-of-RIB for every family it has configured.
    let p = peer_config(ip(net, 2), g_port, 65001);
    assert_eq!(p.families, Family::ALL);
    cfg.peers.push(p);
    let mut r = RestartConfig::new(dir.to_path_buf());
    r.restart_time = 60;
    r.selection_deferral = Duration::from_secs(60);
    cfg.restart = Some(r);
    cfg
}

async fn next_best_paths(ev: &mut UnboundedReceiver<SpeakerEvent>, secs: u64) -> Vec<BestPaths> {
    let e = wait_event(ev, secs, "FIB change", |e| {
        matches!(e, SpeakerEvent::BestPathsChanged(_))
    })
    .await;
    match e {
        SpeakerEvent::BestPathsChanged(v) => v,
        _ => unreachable!(),
    }
}

/// gobgpd keeps our VIP (stale) while we are down and never withdraws
/// it; we come back with the learned route in the FIB at once (restored,
/// stale), defer selection until gobgpd's End-of-RIB, then hold the
/// learned route as fresh; the VIP we no longer advertise goes from
/// gobgpd's RIB after our End-of-RIB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gobgpd_keeps_our_routes_while_we_restart() {
    let Some(bins) = require(&["gobgpd", "gobgp"]) else {
        return;
    };
    let net = 41;
    let our_port = free_port(ip(net, 1));
    let g_port = free_port(ip(net, 2));
    let g = Gobgpd::start_with(
        &bins[0],
        &GobgpdOpts {
            asn: 65001,
            router_id: "198.51.100.2".parse().unwrap(),
            addr: ip(net, 2),
            port: g_port,
            nh4: LEARNED_NH.parse().unwrap(),
            nh6: "2001:db8::2".parse().unwrap(),
            neighbors: vec![GobgpNeighbor {
                addr: ip(net, 1),
                port: our_port,
                asn: OUR_AS,
                passive: false,
            }],
        },
        Some(120),
    );
    g.add("ipv4", LEARNED, LEARNED_NH);
    // Every change of gobgpd's RIB, withdrawals included, from here on.
    let monitor_log = g.proc.dir.path().join("monitor.log");
    let mut monitor = Command::new("gobgp")
        .args(["-u", &ip(net, 2).to_string(), "-p", &g.api_port.to_string()])
        .args(["monitor", "global", "rib", "-a", "ipv4", "-j"])
        .stdout(std::fs::File::create(&monitor_log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("gobgp monitor");
    let state = tempfile::tempdir().unwrap();
    let ctx = || format!("gobgpd:\n{}\n{}", g.neighbor_state(), g.proc.log());

    // First life: a normal start (no state yet).
    let (h, ev) = Speaker::start(config(net, our_port, g_port, state.path()))
        .await
        .unwrap();
    let st = h.restart_status().await.unwrap();
    assert!(st.enabled && !st.restarted, "{st:?}");
    assert!(st.start_note.contains("no saved state"), "{st:?}");
    h.advertise(vec![VIP.parse().unwrap(), VIP2.parse().unwrap()], None)
        .await
        .unwrap();
    wait_established(&h, ip(net, 2), 30).await;
    wait_next_hops(&h, LEARNED, &[LEARNED_NH]).await;
    wait_until(
        "gobgpd has our VIPs",
        30,
        || {
            let r = gobgp_rib(&g);
            has(&r, VIP) == Some(false) && has(&r, VIP2) == Some(false)
        },
        ctx,
    )
    .await;
    let proto = g.cli(&["neighbor", &ip(net, 1).to_string()]).unwrap();
    assert!(
        proto.contains("graceful-restart:\tadvertised and received"),
        "{proto}"
    );

    // "SIGTERM": state saved, TCP closed without NOTIFICATION.
    h.shutdown_for_restart().await.unwrap();
    drop(ev);
    let saved = std::fs::read_to_string(state.path().join("bgp-restart-state")).unwrap();
    assert!(
        saved.contains(&format!("route {LEARNED} {LEARNED_NH}")),
        "{saved}"
    );
    wait_until(
        "gobgpd sees the session down",
        30,
        || !g.neighbor_state().contains("Establ"),
        ctx,
    )
    .await;
    // gobgpd keeps our routes, stale, while we are away.
    wait_until(
        "our VIPs stale in gobgpd",
        10,
        || {
            let r = gobgp_rib(&g);
            has(&r, VIP) == Some(true) && has(&r, VIP2) == Some(true)
        },
        || format!("{:?}\n{}", gobgp_rib(&g), ctx()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(has(&gobgp_rib(&g), VIP), Some(true), "still there, stale");

    // Second life, same state directory: a graceful restart.
    let (h, mut ev) = Speaker::start(config(net, our_port, g_port, state.path()))
        .await
        .unwrap();
    // The restored learned route is in the FIB at once.
    let first = next_best_paths(&mut ev, 5).await;
    assert_eq!(
        first,
        vec![BestPaths {
            prefix: LEARNED.parse().unwrap(),
            next_hops: vec![LEARNED_NH.parse().unwrap()],
        }]
    );
    assert_eq!(
        paths(&h, LEARNED).await,
        vec![(LEARNED_NH.to_string(), true, true)],
        "restored, stale"
    );
    let st = h.restart_status().await.unwrap();
    assert!(st.restarted && !st.deferred.is_empty(), "{st:?}");
    assert_eq!(st.restored_routes, 1, "{st:?}");
    // VIP2 was removed while we were down.
    h.advertise(vec![VIP.parse().unwrap()], None).await.unwrap();
    wait_established(&h, ip(net, 2), 30).await;

    // gobgpd's End-of-RIB ends the deferral long before the timer (60 s).
    for _ in 0..100 {
        if h.restart_status().await.unwrap().deferred.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let st = h.restart_status().await.unwrap();
    assert!(st.deferred.is_empty() && st.restored_routes == 0, "{st:?}");
    assert!(
        st.deferral_left.is_none(),
        "timer cancelled by End-of-RIB: {st:?}"
    );
    // Selection replaced the restored route with the learned one: same
    // next hop, so the FIB never lost it.
    let refreshed = next_best_paths(&mut ev, 10).await;
    assert!(
        refreshed.iter().any(|b| b.prefix.to_string() == LEARNED
            && b.next_hops == [LEARNED_NH.parse::<std::net::IpAddr>().unwrap()]),
        "{refreshed:?}"
    );
    assert!(
        refreshed.iter().all(|b| !b.next_hops.is_empty()),
        "nothing deleted: {refreshed:?}"
    );
    assert_eq!(
        paths(&h, LEARNED).await,
        vec![(LEARNED_NH.to_string(), false, false)],
        "learned again, fresh"
    );

    // gobgpd: VIP fresh again, VIP2 gone after our End-of-RIB.
    wait_until(
        "VIP fresh and VIP2 withdrawn in gobgpd",
        30,
        || {
            let r = gobgp_rib(&g);
            has(&r, VIP) == Some(false) && has(&r, VIP2).is_none()
        },
        || format!("{:?}\n{}", gobgp_rib(&g), ctx()),
    )
    .await;
    let _ = monitor.kill();
    let _ = monitor.wait();
    let log = std::fs::read_to_string(&monitor_log).unwrap_or_default();
    let withdrawn: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"withdrawal\":true") || l.contains("\"withdrawal\": true"))
        .collect();
    assert!(
        withdrawn.iter().all(|l| !l.contains("203.0.113.10")),
        "gobgpd withdrew our VIP at some point:\n{log}"
    );
    assert!(
        withdrawn.iter().any(|l| l.contains("203.0.113.11")),
        "VIP2's withdrawal in the monitor:\n{log}"
    );
    h.shutdown().await.unwrap();
}

/// BIRD's IPv4 routes from us: whether `prefix` is there.
fn bird_has(b: &Bird, prefix: &str) -> bool {
    b.routes().lines().any(|l| l.starts_with(prefix))
}

/// The same restart against BIRD 2 (`graceful restart on`): our VIP
/// stays in BIRD while we are down, the learned route is restored at
/// once, and the VIP we dropped meanwhile goes after our End-of-RIB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_keeps_our_routes_while_we_restart() {
    let Some(bins) = require(&["bird", "birdc"]) else {
        return;
    };
    let net = 42;
    let our_port = free_port(ip(net, 1));
    let bird_port = free_port(ip(net, 3));
    let learned = "198.18.42.0/24";
    let bird_nh = "198.51.100.3";
    let b = Bird::start(
        &bins[0],
        &BirdOpts {
            router_id: "198.51.100.3".parse().unwrap(),
            addr: ip(net, 3),
            port: bird_port,
            asn: 65002,
            neighbor: (ip(net, 1), our_port, OUR_AS),
            nh4: bird_nh.parse().unwrap(),
            nh6: "2001:db8::3".parse().unwrap(),
            password: None,
            static4: vec![learned.to_string()],
            static6: vec![],
            extra: "  graceful restart on;\n".to_string(),
        },
    );
    let state = tempfile::tempdir().unwrap();
    let config = || {
        let mut cfg = speaker_config(net);
        cfg.listen = Some((ip(net, 1), our_port).into());
        cfg.peers.push(peer_config(ip(net, 3), bird_port, 65002));
        let mut r = RestartConfig::new(state.path().to_path_buf());
        r.restart_time = 60;
        r.selection_deferral = Duration::from_secs(60);
        cfg.restart = Some(r);
        cfg
    };
    let ctx = || format!("{}\n{}\n{}", b.protocol(), b.routes(), b.proc.log());

    let (h, _ev) = Speaker::start(config()).await.unwrap();
    h.advertise(vec![VIP.parse().unwrap(), VIP2.parse().unwrap()], None)
        .await
        .unwrap();
    wait_established(&h, ip(net, 3), 30).await;
    wait_next_hops(&h, learned, &[bird_nh]).await;
    wait_until(
        "BIRD has our VIPs",
        30,
        || bird_has(&b, VIP) && bird_has(&b, VIP2),
        ctx,
    )
    .await;

    h.shutdown_for_restart().await.unwrap();
    wait_until(
        "BIRD sees the session down",
        30,
        || !b.protocol().contains("Established"),
        ctx,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(bird_has(&b, VIP) && bird_has(&b, VIP2), "{}", ctx());
    // BIRD is helping: it waits for us within our Restart Time (60 s).
    let proto = b.protocol();
    assert!(
        proto.contains("Neighbor graceful restart active"),
        "{proto}"
    );

    let (h, mut ev) = Speaker::start(config()).await.unwrap();
    let first = next_best_paths(&mut ev, 5).await;
    assert_eq!(first[0].prefix.to_string(), learned, "{first:?}");
    assert_eq!(
        paths(&h, learned).await,
        vec![(bird_nh.to_string(), true, true)]
    );
    h.advertise(vec![VIP.parse().unwrap()], None).await.unwrap();
    wait_established(&h, ip(net, 3), 30).await;
    for _ in 0..100 {
        if h.restart_status().await.unwrap().deferred.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let st = h.restart_status().await.unwrap();
    assert!(st.deferred.is_empty(), "BIRD's End-of-RIB ends it: {st:?}");
    assert_eq!(
        paths(&h, learned).await,
        vec![(bird_nh.to_string(), false, false)]
    );
    wait_until(
        "VIP2 withdrawn by BIRD after our End-of-RIB",
        30,
        || bird_has(&b, VIP) && !bird_has(&b, VIP2),
        ctx,
    )
    .await;
    h.shutdown().await.unwrap();
}

// A scripted peer over raw TCP, for what real peers do not do on demand:
// never send End-of-RIB, so that only the Selection_Deferral_Timer ends
// our deferral.

mod raw {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};
    use tokio::time::timeout;

    pub const AS: u32 = 65030;

    pub fn message(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![0xff; 16];
        m.extend_from_slice(&u16::try_from(19 + body.len()).unwrap().to_be_bytes());
        m.push(ty);
        m.extend_from_slice(body);
        m
    }

    /// OPEN: IPv4 unicast, 4-octet AS, graceful restart (helper: IPv4
    /// listed, Restart Time 120 s, no bits).
    pub fn open() -> Vec<u8> {
        let mut b = vec![4];
        b.extend_from_slice(&23456u16.to_be_bytes());
        b.extend_from_slice(&90u16.to_be_bytes());
        b.extend_from_slice(&[198, 51, 100, 5]);
        let mut caps = vec![1, 4, 0, 1, 0, 1, 65, 4];
        caps.extend_from_slice(&AS.to_be_bytes());
        caps.extend_from_slice(&[64, 6]);
        caps.extend_from_slice(&120u16.to_be_bytes());
        caps.extend_from_slice(&[0, 1, 1, 0]);
        b.push(u8::try_from(caps.len() + 2).unwrap());
        b.push(2);
        b.push(u8::try_from(caps.len()).unwrap());
        b.extend_from_slice(&caps);
        message(1, &b)
    }

    /// One message: (type, body), or `None` on timeout or EOF.
    pub async fn read(s: &mut TcpStream, secs: u64) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 19];
        timeout(Duration::from_secs(secs), s.read_exact(&mut h))
            .await
            .ok()?
            .ok()?;
        let len = usize::from(u16::from_be_bytes([h[16], h[17]]));
        let mut body = vec![0u8; len.checked_sub(19)?];
        timeout(Duration::from_secs(secs), s.read_exact(&mut body))
            .await
            .ok()?
            .ok()?;
        Some((h[18], body))
    }

    /// One family of a graceful-restart capability: (AFI, SAFI, flags).
    pub type GrFamily = (u16, u8, u8);

    /// The graceful-restart capability of an OPEN body: (flags and
    /// time, families).
    pub fn gr_capability(open: &[u8]) -> Option<(u16, Vec<GrFamily>)> {
        let opt_len = usize::from(*open.get(9)?);
        let mut params = open.get(10..10 + opt_len)?;
        while params.len() >= 2 {
            let (ty, len) = (params[0], usize::from(params[1]));
            let value = params.get(2..2 + len)?;
            if ty == 2 {
                let mut caps = value;
                while caps.len() >= 2 {
                    let (code, clen) = (caps[0], usize::from(caps[1]));
                    let v = caps.get(2..2 + clen)?;
                    if code == 64 {
                        let flags_time = u16::from_be_bytes([*v.first()?, *v.get(1)?]);
                        let fams = v[2..]
                            .chunks_exact(4)
                            .map(|c| (u16::from_be_bytes([c[0], c[1]]), c[2], c[3]))
                            .collect();
                        return Some((flags_time, fams));
                    }
                    caps = &caps[2 + clen..];
                }
            }
            params = &params[2 + len..];
        }
        None
    }

    pub async fn connect(from: std::net::Ipv4Addr, to: std::net::SocketAddr) -> TcpStream {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind((from, 0).into()).unwrap();
        let mut s = timeout(Duration::from_secs(20), sock.connect(to))
            .await
            .expect("connect timed out")
            .expect("connect");
        s.write_all(&open()).await.unwrap();
        s.write_all(&message(4, &[])).await.unwrap();
        s
    }
}

fn state_file(dir: &std::path::Path, text: &str) {
    std::fs::write(dir.join("bgp-restart-state"), text).unwrap();
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// RFC 4724 §4.1 on the wire and the Selection_Deferral_Timer: restarting,
/// our OPEN has the Restart State bit and the Forwarding State bit of
/// each family; a peer that never sends End-of-RIB gets neither UPDATE
/// nor End-of-RIB from us until the timer expires, and then the restored
/// route nobody announced again leaves the FIB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_deferral_timer_ends_the_wait() {
    let net = 43;
    let restored = "198.18.43.0/24";
    let state = tempfile::tempdir().unwrap();
    state_file(
        state.path(),
        &format!(
            "switchyard-bgp-restart-state 1\nsaved-at {}\nroute {restored} 198.51.100.5\n",
            now_secs()
        ),
    );
    let mut cfg = speaker_config(net);
    let mut p = peer_config(ip(net, 5), 179, raw::AS);
    p.passive = true;
    p.families = vec![Family::Ipv4Unicast];
    cfg.peers.push(p);
    let mut r = RestartConfig::new(state.path().to_path_buf());
    r.restart_time = 100;
    r.selection_deferral = Duration::from_secs(3);
    cfg.restart = Some(r);
    let (h, mut ev) = Speaker::start(cfg).await.unwrap();
    h.advertise(vec![VIP.parse().unwrap()], None).await.unwrap();
    let first = next_best_paths(&mut ev, 5).await;
    assert_eq!(first[0].prefix.to_string(), restored);

    let mut s = raw::connect(ip(net, 5), h.local_addr().unwrap()).await;
    let (ty, open) = raw::read(&mut s, 20).await.expect("our OPEN");
    assert_eq!(ty, 1);
    let (flags_time, fams) = raw::gr_capability(&open).expect("graceful restart capability");
    assert_eq!(
        flags_time,
        0x8000 | 100,
        "Restart State bit, Restart Time 100"
    );
    assert_eq!(
        fams,
        vec![(1, 1, 0x80)],
        "IPv4 unicast, Forwarding State bit"
    );
    assert_eq!(raw::read(&mut s, 20).await.map(|m| m.0), Some(4));
    wait_established(&h, ip(net, 5), 10).await;
    let st = h.restart_status().await.unwrap();
    assert_eq!(st.waiting_for, vec![std::net::IpAddr::V4(ip(net, 5))]);

    // Deferred: nothing but KEEPALIVEs (none within 1 s at hold 90) for now.
    let early = raw::read(&mut s, 1).await;
    assert!(early.is_none(), "sent during the deferral: {early:?}");
    // The timer (3 s): our VIP, then End-of-RIB.
    let (ty, update) = raw::read(&mut s, 10).await.expect("UPDATE after the timer");
    assert_eq!(ty, 2);
    assert!(update.ends_with(&[32, 203, 0, 113, 10]), "{update:?}");
    assert_eq!(raw::read(&mut s, 5).await, Some((2, vec![0, 0, 0, 0])));
    let st = h.restart_status().await.unwrap();
    assert!(st.deferred.is_empty() && st.restored_routes == 0, "{st:?}");
    // Never announced again: the restored route is deleted.
    let gone = next_best_paths(&mut ev, 5).await;
    assert_eq!(
        gone,
        vec![BestPaths {
            prefix: restored.parse().unwrap(),
            next_hops: vec![],
        }]
    );
    h.shutdown().await.unwrap();
}

/// A corrupt state file is a normal start: no Restart State bit, no
/// restored route, the reason in the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_state_is_a_normal_start() {
    let net = 44;
    let state = tempfile::tempdir().unwrap();
    state_file(
        state.path(),
        "switchyard-bgp-restart-state 1\nsaved-at 12\nroute 198.18.44.0/24\n",
    );
    let mut cfg = speaker_config(net);
    let mut p = peer_config(ip(net, 5), 179, raw::AS);
    p.passive = true;
    p.families = vec![Family::Ipv4Unicast];
    cfg.peers.push(p);
    cfg.restart = Some(RestartConfig::new(state.path().to_path_buf()));
    let (h, mut ev) = Speaker::start(cfg).await.unwrap();
    let st = h.restart_status().await.unwrap();
    assert!(st.enabled && !st.restarted, "{st:?}");
    assert!(st.start_note.contains("corrupt"), "{st:?}");
    let mut s = raw::connect(ip(net, 5), h.local_addr().unwrap()).await;
    let (_, open) = raw::read(&mut s, 20).await.expect("our OPEN");
    let (flags_time, fams) = raw::gr_capability(&open).expect("graceful restart capability");
    assert_eq!(flags_time, 120, "no Restart State bit, Restart Time 120");
    assert_eq!(
        fams,
        vec![(1, 1, 0)],
        "IPv4 unicast, no Forwarding State bit"
    );
    assert_eq!(raw::read(&mut s, 20).await.map(|m| m.0), Some(4));
    // Not deferring: our End-of-RIB comes at once.
    assert_eq!(raw::read(&mut s, 5).await, Some((2, vec![0, 0, 0, 0])));
    while let Ok(e) = ev.try_recv() {
        assert!(
            !matches!(e, SpeakerEvent::BestPathsChanged(_)),
            "no restored route: {e:?}"
        );
    }
    // The state file is rewritten for this life within a few seconds.
    wait_until(
        "a valid state file",
        10,
        || {
            std::fs::read_to_string(state.path().join("bgp-restart-state"))
                .is_ok_and(|t| t.lines().nth(1).is_some_and(|l| l != "saved-at 12"))
        },
        String::new,
    )
    .await;
    h.shutdown().await.unwrap();
}
