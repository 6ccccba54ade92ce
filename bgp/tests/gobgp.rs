//! Sessions and route exchange with a real gobgpd.

mod common;

use common::*;
use std::net::IpAddr;
use switchyard_bgp::speaker::{LocalRoute, Speaker, SpeakerEvent};

fn gobgpd_opts(net: u8, our_port: u16, gobgp_passive: bool) -> GobgpdOpts {
    GobgpdOpts {
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
            passive: gobgp_passive,
        }],
    }
}

fn has_changed(ev: &SpeakerEvent, prefix: &str, want_nh: Option<&str>) -> bool {
    let SpeakerEvent::BestPathsChanged(v) = ev else {
        return false;
    };
    v.iter().any(|b| {
        b.prefix.to_string() == prefix
            && match want_nh {
                Some(nh) => b.next_hops.iter().any(|h| h.to_string() == nh),
                None => b.next_hops.is_empty(),
            }
    })
}

/// We connect (gobgpd passive); routes of both families go both ways;
/// withdrawals reach the peer and us.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gobgp_we_active_routes_both_ways() {
    let Some(bins) = require(&["gobgpd", "gobgp"]) else {
        return;
    };
    let net = 11;
    let our_port = free_port(ip(net, 1));
    let o = gobgpd_opts(net, our_port, true);
    let g = Gobgpd::start(&bins[0], &o);

    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    cfg.peers.push(peer_config(ip(net, 2), o.port, 65001));
    let (h, mut ev) = Speaker::start(cfg).await.unwrap();
    wait_event(&mut ev, 20, "SessionUp", |e| {
        matches!(e, SpeakerEvent::SessionUp { .. })
    })
    .await;
    wait_established(&h, ip(net, 2), 5).await;

    // Ours to gobgpd.
    h.advertise(vec!["203.0.113.10/32".parse().unwrap()], None)
        .await
        .unwrap();
    h.advertise(vec!["2001:db8:10::/64".parse().unwrap()], None)
        .await
        .unwrap();
    wait_until(
        "our IPv4 route in gobgpd",
        15,
        || {
            let r = g.rib("ipv4");
            r.contains("203.0.113.10/32") && r.contains("198.51.100.1")
        },
        || g.rib("ipv4"),
    )
    .await;
    wait_until(
        "our IPv6 route in gobgpd",
        15,
        || {
            let r = g.rib("ipv6");
            r.contains("2001:db8:10::/64") && r.contains("2001:db8::1")
        },
        || g.rib("ipv6"),
    )
    .await;

    // gobgpd's to us.
    g.add("ipv4", "198.18.1.0/24", "198.51.100.2");
    g.add("ipv6", "2001:db8:20::/48", "2001:db8::2");
    wait_event(&mut ev, 15, "IPv4 best path", |e| {
        has_changed(e, "198.18.1.0/24", Some("198.51.100.2"))
    })
    .await;
    let nh = our_next_hops(&h, "198.18.1.0/24").await;
    assert_eq!(nh, vec!["198.51.100.2".parse::<IpAddr>().unwrap()]);
    for _ in 0..50 {
        if !our_next_hops(&h, "2001:db8:20::/48").await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        our_next_hops(&h, "2001:db8:20::/48").await,
        vec!["2001:db8::2".parse::<IpAddr>().unwrap()]
    );
    let n = h.neighbors().await.unwrap();
    assert_eq!(n[0].prefixes_in, 2, "{n:?}");
    assert_eq!(n[0].prefixes_out, 2, "{n:?}");

    // Withdrawals, both ways.
    h.withdraw(vec!["203.0.113.10/32".parse().unwrap()])
        .await
        .unwrap();
    wait_until(
        "withdrawal in gobgpd",
        15,
        || !g.rib("ipv4").contains("203.0.113.10/32"),
        || g.rib("ipv4"),
    )
    .await;
    assert!(g.rib("ipv6").contains("2001:db8:10::/64"));
    g.del("ipv4", "198.18.1.0/24");
    wait_event(&mut ev, 15, "IPv4 withdrawal", |e| {
        has_changed(e, "198.18.1.0/24", None)
    })
    .await;
    h.shutdown().await.unwrap();
}

/// gobgpd connects to us (we are passive); `set_local_routes` sends
/// only the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gobgp_we_passive_and_reconcile() {
    let Some(bins) = require(&["gobgpd", "gobgp"]) else {
        return;
    };
    let net = 12;
    let our_port = free_port(ip(net, 1));
    let o = gobgpd_opts(net, our_port, false);
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    let mut p = peer_config(ip(net, 2), o.port, 65001);
    p.passive = true;
    cfg.peers.push(p);
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    let g = Gobgpd::start(&bins[0], &o);
    wait_established(&h, ip(net, 2), 20).await;
    wait_until(
        "gobgpd established",
        10,
        || g.neighbor_state().contains("Establ"),
        || g.neighbor_state(),
    )
    .await;

    let r = |p: &str| LocalRoute {
        prefix: p.parse().unwrap(),
        next_hop: None,
    };
    h.set_local_routes(vec![r("203.0.113.1/32"), r("203.0.113.2/32")])
        .await
        .unwrap();
    wait_until(
        "first set in gobgpd",
        15,
        || {
            let s = g.rib("ipv4");
            s.contains("203.0.113.1/32") && s.contains("203.0.113.2/32")
        },
        || g.rib("ipv4"),
    )
    .await;
    h.set_local_routes(vec![r("203.0.113.2/32"), r("203.0.113.3/32")])
        .await
        .unwrap();
    wait_until(
        "second set in gobgpd",
        15,
        || {
            let s = g.rib("ipv4");
            !s.contains("203.0.113.1/32")
                && s.contains("203.0.113.2/32")
                && s.contains("203.0.113.3/32")
        },
        || g.rib("ipv4"),
    )
    .await;
    h.shutdown().await.unwrap();
}

/// Both ends connect at once: collision resolution leaves exactly one
/// session, which stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gobgp_both_active_collision_settles() {
    let Some(bins) = require(&["gobgpd", "gobgp"]) else {
        return;
    };
    let net = 13;
    let our_port = free_port(ip(net, 1));
    let o = gobgpd_opts(net, our_port, false);
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    cfg.peers.push(peer_config(ip(net, 2), o.port, 65001));
    let g = Gobgpd::start(&bins[0], &o);
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    wait_established(&h, ip(net, 2), 20).await;
    // Stays up through a few keepalive intervals with no further flap.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let n = h.neighbors().await.unwrap();
    assert_eq!(n[0].state, switchyard_bgp::fsm::State::Established, "{n:?}");
    assert_eq!(n[0].flaps, 0, "{n:?}");
    assert!(
        g.neighbor_state().contains("Establ"),
        "{}",
        g.neighbor_state()
    );
    h.shutdown().await.unwrap();
}
