//! Interop with FRR's bgpd (8.4): eBGP with both families both ways, iBGP
//! attributes, ECMP with gobgpd, bgpd killed and started again (plainly
//! and with graceful restart), us restarting with bgpd as helper, an
//! administrative shutdown by bgpd, MD5.
//!
//! bgpd runs without zebra ([`Frr`]), so nothing reaches the kernel and
//! every next hop counts as resolved; the assertions still check bgpd's
//! own `valid` and `bestpath` flags, which is what a router with a full
//! RIB would act on.

mod common;

use common::*;
use serde_json::Value;
use std::net::IpAddr;
use switchyard_bgp::fsm::{ErrorCounters, State};
use switchyard_bgp::speaker::{RestartConfig, Speaker, SpeakerEvent, SpeakerHandle};

const FRR_NH4: &str = "198.51.100.3";
const FRR_NH6: &str = "2001:db8::3";

fn frr_opts(net: u8, our_port: u16, asn: u32) -> FrrOpts {
    FrrOpts {
        router_id: FRR_NH4.parse().unwrap(),
        addr: ip(net, 3),
        port: free_port(ip(net, 3)),
        asn,
        neighbor: (ip(net, 1), our_port, OUR_AS),
        nh4: FRR_NH4.parse().unwrap(),
        nh6: FRR_NH6.parse().unwrap(),
        password: None,
        networks4: vec!["198.18.3.0/24".into()],
        networks6: vec!["2001:db8:31::/48".into()],
        extra: String::new(),
    }
}

/// bgpd's best path for `prefix`, if it has a valid one.
fn frr_best(f: &Frr, afi: &str, prefix: &str) -> Option<Value> {
    f.paths(afi, prefix)
        .into_iter()
        .find(|p| p["valid"] == Value::Bool(true) && p["bestpath"]["overall"] == Value::Bool(true))
}

/// Waits until bgpd holds a valid best path for `prefix` and returns it.
async fn wait_frr_best(f: &Frr, afi: &str, prefix: &str) -> Value {
    wait_until(
        &format!("{prefix} valid and best in bgpd"),
        20,
        || frr_best(f, afi, prefix).is_some(),
        || f.table(afi),
    )
    .await;
    frr_best(f, afi, prefix).unwrap()
}

async fn wait_frr_gone(f: &Frr, afi: &str, prefix: &str) {
    wait_until(
        &format!("{prefix} withdrawn from bgpd"),
        20,
        || f.paths(afi, prefix).is_empty(),
        || f.table(afi),
    )
    .await;
}

fn next_hop_of(path: &Value) -> &str {
    path["nexthops"][0]["ip"].as_str().unwrap_or_default()
}

fn as_path_of(path: &Value) -> &str {
    path["aspath"]["string"].as_str().unwrap_or("?")
}

/// Waits until bgpd's session with us is Established too (it gets there
/// on our KEEPALIVE, a moment after we do on its).
async fn wait_frr_established(f: &Frr, us: std::net::Ipv4Addr) {
    wait_until(
        "bgpd's session Established",
        10,
        || f.session_state(us) == "Established",
        || f.session_state(us),
    )
    .await;
}

/// Waits until our session with `peer` has left Established.
async fn wait_session_down(h: &SpeakerHandle, peer: std::net::Ipv4Addr) {
    for _ in 0..75 {
        if neighbor_state(h, peer).await != Some(State::Established) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("session with {peer} still up: {:?}", h.neighbors().await);
}

/// eBGP over IPv4 with IPv6 unicast by MP-BGP: our /32 and /64 reach
/// bgpd with our next hops and AS path, bgpd's `network` routes reach
/// us, and one withdrawal each way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frr_ebgp_routes_both_ways() {
    let Some(bins) = require(&["frr/bgpd", "vtysh"]) else {
        return;
    };
    let net = 51;
    let our_port = free_port(ip(net, 1));
    let o = frr_opts(net, our_port, 65003);
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    cfg.peers.push(peer_config(ip(net, 3), o.port, 65003));
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    let f = Frr::start(&bins[0], &o);
    wait_established(&h, ip(net, 3), 30).await;
    wait_frr_established(&f, ip(net, 1)).await;

    h.advertise(
        vec![
            "203.0.113.30/32".parse().unwrap(),
            "2001:db8:41::/64".parse().unwrap(),
        ],
        None,
    )
    .await
    .unwrap();
    let p4 = wait_frr_best(&f, "ipv4", "203.0.113.30/32").await;
    assert_eq!(next_hop_of(&p4), "198.51.100.1", "{p4:#}");
    assert_eq!(as_path_of(&p4), "65000", "{p4:#}");
    let p6 = wait_frr_best(&f, "ipv6", "2001:db8:41::/64").await;
    assert_eq!(next_hop_of(&p6), "2001:db8::1", "{p6:#}");
    assert_eq!(as_path_of(&p6), "65000", "{p6:#}");

    wait_next_hops(&h, "198.18.3.0/24", &[FRR_NH4]).await;
    wait_next_hops(&h, "2001:db8:31::/48", &[FRR_NH6]).await;
    let from_frr = our_paths(&h, "198.18.3.0/24", IpAddr::V4(ip(net, 3))).await;
    assert_eq!(from_frr[0].as_path, vec![65003], "{from_frr:?}");

    // Ours withdrawn: gone from bgpd, the other family untouched.
    h.withdraw(vec!["203.0.113.30/32".parse().unwrap()])
        .await
        .unwrap();
    wait_frr_gone(&f, "ipv4", "203.0.113.30/32").await;
    assert!(frr_best(&f, "ipv6", "2001:db8:41::/64").is_some());

    // bgpd's withdrawn: `no network` in the running config.
    f.configure(&[
        "router bgp 65003",
        "address-family ipv6 unicast",
        "no network 2001:db8:31::/48",
    ]);
    wait_next_hops(&h, "2001:db8:31::/48", &[]).await;
    assert_eq!(
        our_next_hops(&h, "198.18.3.0/24").await,
        vec![FRR_NH4.parse::<IpAddr>().unwrap()]
    );
    // bgpd's OPEN (ADD-PATH receive, long-lived GR, hostname, extended
    // messages, all by default) and UPDATEs cost us no error handling.
    let n = h.neighbors().await.unwrap();
    assert_eq!(n[0].errors, ErrorCounters::default(), "{n:?}");
    h.shutdown().await.unwrap();
}

/// iBGP with bgpd, gobgpd as a second iBGP peer: LOCAL_PREF crosses in
/// both directions and nobody prepends an AS; bgpd and gobgpd announce
/// the same prefix with equal attributes and we install both next hops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frr_ibgp_local_pref_and_ecmp_with_gobgp() {
    let Some(bins) = require(&["frr/bgpd", "vtysh", "gobgpd", "gobgp"]) else {
        return;
    };
    let net = 52;
    let our_port = free_port(ip(net, 1));
    let mut fo = frr_opts(net, our_port, OUR_AS);
    fo.networks4 = vec!["198.18.7.0/24".into(), "198.18.8.0/24".into()];
    fo.networks6 = vec!["2001:db8:88::/48".into()];
    // 198.18.7.0/24 leaves bgpd with LOCAL_PREF 250; the rest with the
    // default 100, like gobgpd's.
    fo.extra = format!(
        "ip prefix-list sy-lp seq 5 permit 198.18.7.0/24\n\
         route-map sy-out4 permit 5\n match ip address prefix-list sy-lp\n \
         set ip next-hop {FRR_NH4}\n set local-preference 250\nexit\n"
    );
    let go = GobgpdOpts {
        asn: OUR_AS,
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
    cfg.peers.push(peer_config(ip(net, 2), go.port, OUR_AS));
    let mut to_frr = peer_config(ip(net, 3), fo.port, OUR_AS);
    to_frr.export = Some(set_local_pref("203.0.113.31/32", 150));
    cfg.peers.push(to_frr);
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    let g = Gobgpd::start(&bins[2], &go);
    let f = Frr::start(&bins[0], &fo);
    wait_established(&h, ip(net, 2), 30).await;
    wait_established(&h, ip(net, 3), 30).await;

    // Ours in bgpd: our LOCAL_PREF, an empty AS path, our next hop.
    h.advertise(vec!["203.0.113.31/32".parse().unwrap()], None)
        .await
        .unwrap();
    let p = wait_frr_best(&f, "ipv4", "203.0.113.31/32").await;
    assert_eq!(p["locPrf"], 150, "{p:#}");
    assert_eq!(p["peer"]["type"], "internal", "{p:#}");
    // bgpd shows an empty AS path as "Local"; the length says it.
    assert_eq!(p["aspath"]["length"], 0, "{p:#}");
    assert_eq!(next_hop_of(&p), "198.51.100.1", "{p:#}");

    // bgpd's in our RIB: its LOCAL_PREF, an empty AS path.
    wait_next_hops(&h, "198.18.7.0/24", &[FRR_NH4]).await;
    let lp = our_paths(&h, "198.18.7.0/24", IpAddr::V4(ip(net, 3))).await;
    assert_eq!(lp[0].local_pref, Some(250), "{lp:?}");
    assert!(lp[0].as_path.is_empty(), "{lp:?}");

    // ECMP: the same prefix from gobgpd and bgpd, equal attributes.
    g.add("ipv4", "198.18.8.0/24", "198.51.100.2");
    g.add("ipv6", "2001:db8:88::/48", "2001:db8::2");
    wait_next_hops(&h, "198.18.8.0/24", &["198.51.100.2", FRR_NH4]).await;
    wait_next_hops(&h, "2001:db8:88::/48", &["2001:db8::2", FRR_NH6]).await;
    let paths = our_paths(&h, "198.18.8.0/24", IpAddr::V4(ip(net, 3))).await;
    assert_eq!(paths[0].local_pref, Some(100), "{paths:?}");

    // bgpd stops announcing it: gobgpd's next hop alone.
    f.configure(&[
        "router bgp 65000",
        "address-family ipv4 unicast",
        "no network 198.18.8.0/24",
    ]);
    wait_next_hops(&h, "198.18.8.0/24", &["198.51.100.2"]).await;
    wait_next_hops(&h, "2001:db8:88::/48", &["2001:db8::2", FRR_NH6]).await;
    h.shutdown().await.unwrap();
}

/// bgpd killed (SIGKILL, no NOTIFICATION) and started again: our session
/// goes down, its routes leave our FIB, and once it is back it relearns
/// ours and we relearn its.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frr_killed_and_restarted() {
    let Some(bins) = require(&["frr/bgpd", "vtysh"]) else {
        return;
    };
    let net = 53;
    let our_port = free_port(ip(net, 1));
    let o = frr_opts(net, our_port, 65003);
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    cfg.peers.push(peer_config(ip(net, 3), o.port, 65003));
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    h.advertise(vec!["203.0.113.33/32".parse().unwrap()], None)
        .await
        .unwrap();
    let f = Frr::start(&bins[0], &o);
    wait_established(&h, ip(net, 3), 30).await;
    wait_frr_best(&f, "ipv4", "203.0.113.33/32").await;
    wait_next_hops(&h, "198.18.3.0/24", &[FRR_NH4]).await;

    drop(f);
    wait_session_down(&h, ip(net, 3)).await;
    // bgpd 8.4 is a graceful-restart helper only: its capability lists no
    // families, so there is nothing to keep stale; the routes go at once.
    wait_next_hops(&h, "198.18.3.0/24", &[]).await;
    wait_next_hops(&h, "2001:db8:31::/48", &[]).await;

    let f = Frr::start(&bins[0], &o);
    wait_established(&h, ip(net, 3), 30).await;
    let n = h.neighbors().await.unwrap();
    assert_eq!(n[0].flaps, 1, "{n:?}");
    wait_frr_best(&f, "ipv4", "203.0.113.33/32").await;
    wait_next_hops(&h, "198.18.3.0/24", &[FRR_NH4]).await;
    wait_next_hops(&h, "2001:db8:31::/48", &[FRR_NH6]).await;
    h.shutdown().await.unwrap();
}

/// A TCP MD5 signed session (RFC 2385, `neighbor X password`); routes
/// cross it both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frr_md5_session() {
    let Some(bins) = require(&["frr/bgpd", "vtysh"]) else {
        return;
    };
    let net = 54;
    let our_port = free_port(ip(net, 1));
    let mut o = frr_opts(net, our_port, 65003);
    o.password = Some("sw1tchyard-frr".into());
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    let mut p = peer_config(ip(net, 3), o.port, 65003);
    p.md5_password = Some("sw1tchyard-frr".into());
    cfg.peers.push(p);
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    let f = Frr::start(&bins[0], &o);
    wait_established(&h, ip(net, 3), 30).await;
    wait_frr_established(&f, ip(net, 1)).await;
    h.advertise(vec!["203.0.113.34/32".parse().unwrap()], None)
        .await
        .unwrap();
    wait_frr_best(&f, "ipv4", "203.0.113.34/32").await;
    wait_next_hops(&h, "198.18.3.0/24", &[FRR_NH4]).await;
    h.shutdown().await.unwrap();
}

/// `neighbor X shutdown message ...` in bgpd: we get its Cease with the
/// shutdown communication (RFC 8203), drop its routes, and the session
/// comes back when the shutdown is undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frr_admin_shutdown_and_back() {
    let Some(bins) = require(&["frr/bgpd", "vtysh"]) else {
        return;
    };
    let net = 55;
    let our_port = free_port(ip(net, 1));
    let o = frr_opts(net, our_port, 65003);
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    cfg.peers.push(peer_config(ip(net, 3), o.port, 65003));
    let (h, mut ev) = Speaker::start(cfg).await.unwrap();
    let f = Frr::start(&bins[0], &o);
    wait_established(&h, ip(net, 3), 30).await;
    wait_next_hops(&h, "198.18.3.0/24", &[FRR_NH4]).await;

    let us = ip(net, 1).to_string();
    f.configure(&[
        "router bgp 65003",
        &format!("neighbor {us} shutdown message maintenance window"),
    ]);
    let down = wait_event(&mut ev, 15, "SessionDown", |e| {
        matches!(e, SpeakerEvent::SessionDown { .. })
    })
    .await;
    // Administrative Shutdown, counted as received; the reason carries
    // FRR's shutdown communication (RFC 9003).
    let SpeakerEvent::SessionDown { reason, .. } = down else {
        unreachable!()
    };
    assert!(
        reason.contains("6/2") && reason.contains("maintenance window"),
        "{reason}"
    );
    let n = h.neighbors().await.unwrap();
    assert_eq!(n[0].errors.notifications_received, 1, "{n:?}");
    wait_next_hops(&h, "198.18.3.0/24", &[]).await;

    f.configure(&["router bgp 65003", &format!("no neighbor {us} shutdown")]);
    wait_established(&h, ip(net, 3), 30).await;
    wait_next_hops(&h, "198.18.3.0/24", &[FRR_NH4]).await;
    h.shutdown().await.unwrap();
}

/// Different MD5 keys: the kernel drops every segment, the session never
/// comes up on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frr_md5_mismatch_never_establishes() {
    let Some(bins) = require(&["frr/bgpd", "vtysh"]) else {
        return;
    };
    let net = 56;
    let our_port = free_port(ip(net, 1));
    let mut o = frr_opts(net, our_port, 65003);
    o.password = Some("right-key".into());
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    let mut p = peer_config(ip(net, 3), o.port, 65003);
    p.md5_password = Some("wrong-key".into());
    cfg.peers.push(p);
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    let f = Frr::start(&bins[0], &o);
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_ne!(
        neighbor_state(&h, ip(net, 3)).await,
        Some(State::Established)
    );
    assert_ne!(f.session_state(ip(net, 1)), "Established");
    h.shutdown().await.unwrap();
}

/// bgpd with graceful restart (`bgp graceful-restart`, forwarding state
/// preserved) killed and started again: we keep its routes, stale, in
/// the FIB while it is away, and they are fresh again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frr_graceful_restart_we_help() {
    let Some(bins) = require(&["frr/bgpd", "vtysh"]) else {
        return;
    };
    let net = 57;
    let our_port = free_port(ip(net, 1));
    let mut o = frr_opts(net, our_port, 65003);
    o.extra = "router bgp 65003\n bgp graceful-restart\n bgp graceful-restart preserve-fw-state\n \
               bgp graceful-restart restart-time 30\nexit\n"
        .into();
    let mut cfg = speaker_config(net);
    cfg.listen = Some((ip(net, 1), our_port).into());
    cfg.peers.push(peer_config(ip(net, 3), o.port, 65003));
    let (h, _ev) = Speaker::start(cfg).await.unwrap();
    h.advertise(vec!["203.0.113.37/32".parse().unwrap()], None)
        .await
        .unwrap();
    let frr = IpAddr::V4(ip(net, 3));
    let f = Frr::start(&bins[0], &o);
    wait_established(&h, ip(net, 3), 30).await;
    wait_next_hops(&h, "198.18.3.0/24", &[FRR_NH4]).await;

    drop(f);
    wait_session_down(&h, ip(net, 3)).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let away = our_paths(&h, "198.18.3.0/24", frr).await;
    assert!(away.len() == 1 && away[0].stale, "{away:?}");
    wait_next_hops(&h, "198.18.3.0/24", &[FRR_NH4]).await;

    // Back: its routes announced again replace the stale ones.
    let f = Frr::start(&bins[0], &o);
    wait_established(&h, ip(net, 3), 30).await;
    wait_frr_best(&f, "ipv4", "203.0.113.37/32").await;
    for _ in 0..100 {
        let p = our_paths(&h, "198.18.3.0/24", frr).await;
        if p.len() == 1 && !p[0].stale {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let back = our_paths(&h, "198.18.3.0/24", frr).await;
    assert!(back.len() == 1 && !back[0].stale, "{back:?}");
    wait_next_hops(&h, "198.18.3.0/24", &[FRR_NH4]).await;
    wait_next_hops(&h, "2001:db8:31::/48", &[FRR_NH6]).await;
    h.shutdown().await.unwrap();
}

/// We restart gracefully (`shutdown_for_restart`: TCP closed without
/// NOTIFICATION) and bgpd, a helper by default, keeps our routes stale
/// meanwhile; back, we announce one of the two again and after our
/// End-of-RIB bgpd holds it fresh and has dropped the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frr_helps_us_restart() {
    let Some(bins) = require(&["frr/bgpd", "vtysh"]) else {
        return;
    };
    let net = 58;
    let our_port = free_port(ip(net, 1));
    let o = frr_opts(net, our_port, 65003);
    let state = tempfile::tempdir().unwrap();
    let config = || {
        let mut cfg = speaker_config(net);
        cfg.listen = Some((ip(net, 1), our_port).into());
        cfg.peers.push(peer_config(ip(net, 3), o.port, 65003));
        let mut r = RestartConfig::new(state.path().to_path_buf());
        r.restart_time = 60;
        r.selection_deferral = std::time::Duration::from_secs(30);
        cfg.restart = Some(r);
        cfg
    };
    let (vip, vip2) = ("203.0.113.38/32", "203.0.113.39/32");
    let f = Frr::start(&bins[0], &o);
    let (h, _ev) = Speaker::start(config()).await.unwrap();
    h.advertise(vec![vip.parse().unwrap(), vip2.parse().unwrap()], None)
        .await
        .unwrap();
    wait_established(&h, ip(net, 3), 30).await;
    wait_frr_best(&f, "ipv4", vip).await;
    wait_frr_best(&f, "ipv4", vip2).await;

    h.shutdown_for_restart().await.unwrap();
    wait_until(
        "bgpd's session down",
        15,
        || f.session_state(ip(net, 1)) != "Established",
        || f.session_state(ip(net, 1)),
    )
    .await;
    for prefix in [vip, vip2] {
        let kept = frr_best(&f, "ipv4", prefix);
        assert!(
            kept.as_ref()
                .is_some_and(|p| p["stale"] == Value::Bool(true)),
            "{prefix}: {kept:#?}"
        );
    }

    let (h, _ev) = Speaker::start(config()).await.unwrap();
    h.advertise(vec![vip.parse().unwrap()], None).await.unwrap();
    wait_established(&h, ip(net, 3), 30).await;
    wait_frr_gone(&f, "ipv4", vip2).await;
    let back = frr_best(&f, "ipv4", vip);
    assert!(
        back.as_ref().is_some_and(|p| p.get("stale").is_none()),
        "{back:#?}"
    );
    h.shutdown().await.unwrap();
}
