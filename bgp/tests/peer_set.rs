//! The peer set changed while the speaker runs: peers added and removed
//! against gobgpd, and a new local AS between two of our own speakers.

mod common;

use common::*;
use std::net::IpAddr;
use switchyard_bgp::fsm::State;
use switchyard_bgp::speaker::{PeerChanges, Speaker, SpeakerEvent};

fn gobgpd_opts(net: u8, host: u8, asn: u32, our_port: u16) -> GobgpdOpts {
    GobgpdOpts {
        asn,
        router_id: format!("198.51.100.{host}").parse().unwrap(),
        addr: ip(net, host),
        port: free_port(ip(net, host)),
        nh4: format!("198.51.100.{host}").parse().unwrap(),
        nh6: format!("2001:db8::{host}").parse().unwrap(),
        neighbors: vec![GobgpNeighbor {
            addr: ip(net, 1),
            port: our_port,
            asn: OUR_AS,
            passive: false,
        }],
    }
}

fn next_hops_of<'a>(ev: &'a SpeakerEvent, prefix: &str) -> Option<&'a [IpAddr]> {
    let SpeakerEvent::BestPathsChanged(v) = ev else {
        return None;
    };
    v.iter()
        .find(|b| b.prefix.to_string() == prefix)
        .map(|b| b.next_hops.as_slice())
}

/// A peer added at run time comes up; removing it sends Cease / Peer
/// De-configured, withdraws what it taught us, and the other session
/// never notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_added_and_removed_at_runtime() {
    let Some(bins) = require(&["gobgpd", "gobgp"]) else {
        return;
    };
    let net = 14;
    let our_port = free_port(ip(net, 1));
    let oa = gobgpd_opts(net, 2, 65001, our_port);
    let ob = gobgpd_opts(net, 3, 65002, our_port);
    let a = Gobgpd::start(&bins[0], &oa);
    let b = Gobgpd::start(&bins[0], &ob);

    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    let peer_a = peer_config(ip(net, 2), oa.port, 65001);
    cfg.peers.push(peer_a.clone());
    let (h, mut ev) = Speaker::start(cfg).await.unwrap();
    wait_established(&h, ip(net, 2), 20).await;

    // Added: B comes up and its route reaches our Loc-RIB.
    let peer_b = peer_config(ip(net, 3), ob.port, 65002);
    let changes = h.add_peer(peer_b.clone()).await.unwrap();
    assert_eq!(changes.added, vec![IpAddr::V4(ip(net, 3))]);
    wait_established(&h, ip(net, 3), 20).await;
    b.add("ipv4", "198.18.3.0/24", "198.51.100.3");
    wait_event(&mut ev, 15, "B's route", |e| {
        next_hops_of(e, "198.18.3.0/24").is_some_and(|nh| !nh.is_empty())
    })
    .await;

    // The same settings again: nothing happens.
    let unchanged = h.set_peers(vec![peer_a.clone(), peer_b]).await.unwrap();
    assert!(unchanged.is_empty(), "{unchanged:?}");

    // Removed: B hears why, its route leaves the FIB, A stays up.
    let changes = h.remove_peer(IpAddr::V4(ip(net, 3))).await.unwrap();
    assert_eq!(
        changes,
        PeerChanges {
            removed: vec![IpAddr::V4(ip(net, 3))],
            ..PeerChanges::default()
        }
    );
    wait_event(&mut ev, 15, "B's route withdrawn", |e| {
        next_hops_of(e, "198.18.3.0/24").is_some_and(<[IpAddr]>::is_empty)
    })
    .await;
    wait_until(
        "gobgpd B to see the session go down",
        15,
        || !b.neighbor_state().contains("Establ"),
        || b.neighbor_state(),
    )
    .await;
    let log = b.proc.log();
    assert!(
        log.contains("peer deconfigured") || log.contains("subcode 3"),
        "gobgpd B was not told Peer De-configured:\n{log}"
    );
    let n = h.neighbors().await.unwrap();
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!((n[0].state, n[0].flaps), (State::Established, 0), "{n:?}");
    assert!(a.neighbor_state().contains("Establ"));
    // B keeps knocking; the listener turns it away as an unknown peer.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(h.neighbors().await.unwrap().len(), 1);

    // Changed: A restarts with its new settings, once.
    let mut slower = peer_a;
    slower.hold_time = 15;
    let changes = h.set_peers(vec![slower]).await.unwrap();
    assert_eq!(changes.changed, vec![IpAddr::V4(ip(net, 2))]);
    wait_established(&h, ip(net, 2), 20).await;
    h.shutdown().await.unwrap();
}

/// A new local AS restarts every session: two of our speakers first in
/// iBGP, then in eBGP once one changes its AS and the other its peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_local_as_restarts_sessions() {
    let net = 15;
    let (px, py) = (free_port(ip(net, 1)), free_port(ip(net, 2)));
    let mut cx = speaker_config(net);
    cx.listen = Some((ip(net, 1), px).into());
    cx.peers.push(peer_config(ip(net, 2), py, OUR_AS));
    // Y's own next hop differs from X's: a route whose NEXT_HOP is the receiver's own
    // address is ignored (RFC 4271 6.3).
    let y_peer = |asn: u32| {
        let mut p = peer_config(ip(net, 1), px, asn);
        p.next_hop_v4 = Some(std::net::Ipv4Addr::new(198, 51, 100, 2));
        p
    };
    let mut cy = speaker_config(net);
    cy.router_id = "198.51.100.2".parse().unwrap();
    cy.listen = Some((ip(net, 2), py).into());
    cy.peers.push(y_peer(OUR_AS));
    let (x, _xev) = Speaker::start(cx).await.unwrap();
    let (y, mut yev) = Speaker::start(cy).await.unwrap();
    wait_established(&x, ip(net, 2), 20).await;
    x.advertise(vec!["203.0.113.1/32".parse().unwrap()], None)
        .await
        .unwrap();
    wait_event(&mut yev, 15, "X's route over iBGP", |e| {
        next_hops_of(e, "203.0.113.1/32").is_some_and(|nh| !nh.is_empty())
    })
    .await;

    assert!(x.reconfigure(65010, None).await.unwrap());
    assert!(!x.reconfigure(65010, None).await.unwrap(), "no change");
    y.set_peers(vec![y_peer(65010)]).await.unwrap();
    wait_established(&y, ip(net, 1), 20).await;
    let end = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let routes = y.routes().await.unwrap();
        let path = routes
            .iter()
            .find(|r| r.prefix.to_string() == "203.0.113.1/32")
            .and_then(|r| r.paths.first());
        if path.is_some_and(|p| p.as_path == [65010]) {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "X's route over eBGP: {routes:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    x.shutdown().await.unwrap();
    y.shutdown().await.unwrap();
}
