//! Route exchange, MD5 and ECMP with BIRD 2 (and gobgpd for ECMP).

mod common;

use common::*;
use std::time::Duration;
use switchyard_bgp::fsm::State;
use switchyard_bgp::speaker::{Speaker, SpeakerEvent};

fn bird_opts(net: u8, our_port: u16, asn: u32, password: Option<&str>) -> BirdOpts {
    BirdOpts {
        router_id: "198.51.100.3".parse().unwrap(),
        addr: ip(net, 3),
        port: free_port(ip(net, 3)),
        asn,
        neighbor: (ip(net, 1), our_port, OUR_AS),
        nh4: "198.51.100.3".parse().unwrap(),
        nh6: "2001:db8::3".parse().unwrap(),
        password: password.map(str::to_string),
        static4: vec!["198.18.2.0/24".into()],
        static6: vec!["2001:db8:30::/48".into()],
        extra: String::new(),
    }
}

/// MD5-signed session (RFC 2385); IPv4 and IPv6 both ways; withdrawal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_md5_routes_both_ways() {
    let Some(bins) = require(&["bird", "birdc"]) else {
        return;
    };
    let net = 21;
    let our_port = free_port(ip(net, 1));
    let o = bird_opts(net, our_port, 65002, Some("sw1tchyard-md5"));
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    let mut p = peer_config(ip(net, 3), o.port, 65002);
    p.md5_password = Some("sw1tchyard-md5".into());
    cfg.peers.push(p);
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    let b = Bird::start(&bins[0], &o);
    wait_established(&h, ip(net, 3), 30).await;
    assert!(b.protocol().contains("Established"), "{}", b.protocol());

    h.advertise(
        vec![
            "203.0.113.20/32".parse().unwrap(),
            "2001:db8:40::/64".parse().unwrap(),
        ],
        None,
    )
    .await
    .unwrap();
    wait_until(
        "our routes in BIRD",
        15,
        || {
            let r = b.routes();
            r.contains("203.0.113.20/32") && r.contains("2001:db8:40::/64")
        },
        || b.cli(&["show", "route", "all"]).unwrap_or_default(),
    )
    .await;
    let all = b.cli(&["show", "route", "all", "protocol", "sy"]).unwrap();
    assert!(all.contains("BGP.next_hop: 198.51.100.1"), "{all}");
    assert!(all.contains("BGP.next_hop: 2001:db8::1"), "{all}");
    assert!(all.contains("BGP.as_path: 65000"), "{all}");

    wait_next_hops(&h, "198.18.2.0/24", &["198.51.100.3"]).await;
    wait_next_hops(&h, "2001:db8:30::/48", &["2001:db8::3"]).await;

    h.withdraw(vec!["203.0.113.20/32".parse().unwrap()])
        .await
        .unwrap();
    wait_until(
        "withdrawal in BIRD",
        15,
        || !b.routes().contains("203.0.113.20/32"),
        || b.routes(),
    )
    .await;
    assert!(b.routes().contains("2001:db8:40::/64"));
    h.shutdown().await.unwrap();
}

/// A wrong MD5 key: the kernel drops the segments and the session never
/// comes up (and nothing else breaks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_md5_mismatch_never_establishes() {
    let Some(bins) = require(&["bird", "birdc"]) else {
        return;
    };
    let net = 22;
    let our_port = free_port(ip(net, 1));
    let o = bird_opts(net, our_port, 65002, Some("right-key"));
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    let mut p = peer_config(ip(net, 3), o.port, 65002);
    p.md5_password = Some("wrong-key".into());
    cfg.peers.push(p);
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    let b = Bird::start(&bins[0], &o);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_ne!(
        neighbor_state(&h, ip(net, 3)).await,
        Some(State::Established)
    );
    assert!(!b.protocol().contains("Established"), "{}", b.protocol());
    h.shutdown().await.unwrap();
}

/// gobgpd and BIRD, same AS, announce the same prefix with equal
/// attributes: both next hops are installed; a withdrawal shrinks the set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecmp_gobgp_and_bird() {
    let Some(bins) = require(&["bird", "birdc", "gobgpd", "gobgp"]) else {
        return;
    };
    let net = 23;
    let our_port = free_port(ip(net, 1));
    let mut bo = bird_opts(net, our_port, 65010, None);
    bo.static4 = vec!["198.18.5.0/24".into()];
    bo.static6 = vec!["2001:db8:55::/48".into()];
    let go = GobgpdOpts {
        asn: 65010,
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
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    cfg.peers.push(peer_config(ip(net, 2), go.port, 65010));
    cfg.peers.push(peer_config(ip(net, 3), bo.port, 65010));
    let (h, mut ev) = Speaker::start(cfg).await.unwrap();
    let g = Gobgpd::start(&bins[2], &go);
    let b = Bird::start(&bins[0], &bo);
    wait_established(&h, ip(net, 2), 30).await;
    wait_established(&h, ip(net, 3), 30).await;
    g.add("ipv4", "198.18.5.0/24", "198.51.100.2");
    g.add("ipv6", "2001:db8:55::/48", "2001:db8::2");

    wait_event(&mut ev, 20, "two IPv4 next hops", |e| {
        matches!(e, SpeakerEvent::BestPathsChanged(v)
            if v.iter().any(|b| b.prefix.to_string() == "198.18.5.0/24" && b.next_hops.len() == 2))
    })
    .await;
    wait_next_hops(&h, "198.18.5.0/24", &["198.51.100.2", "198.51.100.3"]).await;
    wait_next_hops(&h, "2001:db8:55::/48", &["2001:db8::2", "2001:db8::3"]).await;

    g.del("ipv4", "198.18.5.0/24");
    wait_next_hops(&h, "198.18.5.0/24", &["198.51.100.3"]).await;
    drop(b);
    wait_next_hops(&h, "198.18.5.0/24", &[]).await;
    // gobgpd's session is untouched by BIRD going away.
    assert_eq!(
        neighbor_state(&h, ip(net, 2)).await,
        Some(State::Established)
    );
    h.shutdown().await.unwrap();
}
