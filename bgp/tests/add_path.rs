//! ADD-PATH (RFC 7911) with real route reflectors: BIRD reflecting two
//! gobgpd clients' paths to us (we receive both and install ECMP), and
//! we reflecting them to BIRD (it receives every path, not just the best).

mod common;

use common::*;
use std::net::{IpAddr, Ipv4Addr};
use switchyard_bgp::config::{AddPathMode, Family};
use switchyard_bgp::speaker::{Speaker, SpeakerEvent};

/// A gobgpd route source in our AS at 127.0.`net`.`host`, announcing
/// with next hop 198.51.100.`host`, peering with `(addr, port)`.
fn source(net: u8, host: u8, neighbor: (Ipv4Addr, u16)) -> GobgpdOpts {
    GobgpdOpts {
        asn: OUR_AS,
        router_id: format!("198.51.100.{host}").parse().unwrap(),
        addr: ip(net, host),
        port: free_port(ip(net, host)),
        nh4: format!("198.51.100.{host}").parse().unwrap(),
        nh6: format!("2001:db8::{host}").parse().unwrap(),
        neighbors: vec![GobgpNeighbor {
            addr: neighbor.0,
            port: neighbor.1,
            asn: OUR_AS,
            passive: false,
        }],
    }
}

/// One iBGP `protocol bgp` block of a BIRD config.
fn bird_peer(
    name: &str,
    local: (Ipv4Addr, u16),
    peer: (Ipv4Addr, u16),
    extra: &str,
    ipv4: &str,
) -> String {
    format!(
        r#"protocol bgp {name} {{
  local {la} port {lp} as {asn};
  neighbor {pa} port {pp} as {asn};
  hold time 9;
  connect retry time 1;
  error wait time 1, 5;
{extra}  ipv4 {{ import all; export all; {ipv4} }};
}}
"#,
        la = local.0,
        lp = local.1,
        pa = peer.0,
        pp = peer.1,
        asn = OUR_AS,
    )
}

fn with_next_hop(text: &str, nh: &str) -> usize {
    text.matches(&format!("BGP.next_hop: {nh}")).count()
}

/// BIRD is a route reflector for two gobgpd clients that announce one
/// prefix with different next hops, and sends us both paths with ADD-PATH
/// (`add paths tx`). We install both next hops as one ECMP group; a
/// withdrawal at one client leaves the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bird_reflector_add_path_gives_ecmp() {
    let Some(bins) = require(&["bird", "birdc", "gobgpd", "gobgp"]) else {
        return;
    };
    let net = 24;
    let prefix = "198.18.24.0/24";
    let our_port = free_port(ip(net, 1));
    let rr = (ip(net, 3), free_port(ip(net, 3)));
    let c1 = source(net, 2, rr);
    let c2 = source(net, 4, rr);
    let conf = format!(
        "log stderr all;\nrouter id 198.51.100.3;\nprotocol device {{ }}\n{}{}{}",
        bird_peer("c1", rr, (c1.addr, c1.port), "  rr client;\n", ""),
        bird_peer("c2", rr, (c2.addr, c2.port), "  rr client;\n", ""),
        bird_peer("sy", rr, (ip(net, 1), our_port), "", "add paths tx;"),
    );

    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    let mut p = peer_config(rr.0, rr.1, OUR_AS);
    p.families = vec![Family::Ipv4Unicast];
    p.add_path = vec![(
        Family::Ipv4Unicast,
        AddPathMode {
            send: false,
            receive: true,
        },
    )];
    cfg.peers.push(p);
    let (h, mut ev) = Speaker::start(cfg).await.unwrap();
    let b = Bird::start_conf(&bins[0], &conf, &[]);
    let g1 = Gobgpd::start(&bins[2], &c1);
    let g2 = Gobgpd::start(&bins[2], &c2);
    wait_established(&h, rr.0, 30).await;
    for g in [&g1, &g2] {
        wait_until(
            "client established with the reflector",
            30,
            || g.neighbor_state().contains("Establ"),
            || b.cli(&["show", "protocols"]).unwrap_or_default(),
        )
        .await;
    }

    g1.add("ipv4", prefix, "198.51.100.2");
    g2.add("ipv4", prefix, "198.51.100.4");
    wait_event(&mut ev, 30, "two next hops in one FIB change", |e| {
        matches!(e, SpeakerEvent::BestPathsChanged(v)
            if v.iter().any(|b| b.prefix.to_string() == prefix && b.next_hops.len() == 2))
    })
    .await;
    wait_next_hops(&h, prefix, &["198.51.100.2", "198.51.100.4"]).await;
    // Both paths came over the one session with the reflector.
    let routes = h.routes().await.unwrap();
    let entry = routes
        .iter()
        .find(|r| r.prefix.to_string() == prefix)
        .unwrap();
    assert_eq!(entry.paths.len(), 2, "{entry:?}");
    assert!(entry
        .paths
        .iter()
        .all(|p| p.peer == Some(IpAddr::V4(rr.0)) && p.multipath));
    let n = h.neighbors().await.unwrap();
    assert_eq!(n[0].prefixes_in, 2, "{n:?}");

    g1.del("ipv4", prefix);
    wait_next_hops(&h, prefix, &["198.51.100.4"]).await;
    g2.del("ipv4", prefix);
    wait_next_hops(&h, prefix, &[]).await;
    h.shutdown().await.unwrap();
}

/// We are the route reflector: two gobgpd clients announce one prefix
/// with different next hops, and BIRD (a non-client with `add paths rx`)
/// hears both paths from us, each under its own path identifier; a
/// withdrawal at one client withdraws that path only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_reflect_every_path_to_bird_with_add_path() {
    let Some(bins) = require(&["bird", "birdc", "gobgpd", "gobgp"]) else {
        return;
    };
    let net = 25;
    let prefix = "198.18.25.0/24";
    let our_port = free_port(ip(net, 1));
    let us = (ip(net, 1), our_port);
    let c1 = source(net, 2, us);
    let c2 = source(net, 4, us);
    let bird_port = free_port(ip(net, 3));
    let conf = format!(
        "log stderr all;\nrouter id 198.51.100.3;\nprotocol device {{ }}\n{}",
        bird_peer("sy", (ip(net, 3), bird_port), us, "", "add paths rx;"),
    );

    let mut cfg = speaker_config(net);
    cfg.listen = Some(us.into());
    cfg.cluster_id = Some(Ipv4Addr::new(198, 51, 100, 1));
    for c in [&c1, &c2] {
        let mut p = peer_config(c.addr, c.port, OUR_AS);
        p.route_reflector_client = true;
        cfg.peers.push(p);
    }
    let mut p = peer_config(ip(net, 3), bird_port, OUR_AS);
    p.add_path = vec![(
        Family::Ipv4Unicast,
        AddPathMode {
            send: true,
            receive: false,
        },
    )];
    cfg.peers.push(p);
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    let b = Bird::start_conf(&bins[0], &conf, &[]);
    let g1 = Gobgpd::start(&bins[2], &c1);
    let g2 = Gobgpd::start(&bins[2], &c2);
    for a in [c1.addr, c2.addr, ip(net, 3)] {
        wait_established(&h, a, 30).await;
    }

    g1.add("ipv4", prefix, "198.51.100.2");
    g2.add("ipv4", prefix, "198.51.100.4");
    wait_until(
        "both paths in BIRD",
        30,
        || {
            let r = b.route_all(prefix);
            with_next_hop(&r, "198.51.100.2") == 1 && with_next_hop(&r, "198.51.100.4") == 1
        },
        || b.route_all(prefix),
    )
    .await;
    let r = b.route_all(prefix);
    // Reflected (RFC 4456): originator and our cluster id on each path.
    assert!(r.contains("BGP.originator_id: 198.51.100.2"), "{r}");
    assert!(r.contains("BGP.originator_id: 198.51.100.4"), "{r}");
    assert_eq!(
        r.matches("BGP.cluster_list: 198.51.100.1").count(),
        2,
        "{r}"
    );
    // A client without ADD-PATH hears the best path only (c1's, lower
    // router id), and c1 hears nothing back of its own.
    wait_until(
        "the best path in the other client",
        30,
        || g2.rib("ipv4").contains("198.51.100.2"),
        || g2.rib("ipv4"),
    )
    .await;
    assert!(
        !g1.rib("ipv4").contains("198.51.100.4"),
        "{}",
        g1.rib("ipv4")
    );

    g1.del("ipv4", prefix);
    wait_until(
        "one path left in BIRD",
        30,
        || {
            let r = b.route_all(prefix);
            with_next_hop(&r, "198.51.100.2") == 0 && with_next_hop(&r, "198.51.100.4") == 1
        },
        || b.route_all(prefix),
    )
    .await;
    g2.del("ipv4", prefix);
    wait_until(
        "no path left in BIRD",
        30,
        || !b.routes().contains(prefix),
        || b.route_all(prefix),
    )
    .await;
    h.shutdown().await.unwrap();
}
