//! RIB, decision process, route reflection, export and UPDATE building.

use crate::attrs::{AsPath, Origin, PathAttrs};
use crate::config::Family;
use crate::policy::{Match, Policy, Rule, Set, Verdict};
use crate::rib::adj_out::AdjRibOut;
use crate::rib::decision::{DecisionConfig, IgpCost, Reach};
use crate::rib::{PeerId, PeerInfo, Rib, RibConfig};
use crate::update_check::UpdateContext;
use crate::update_rx::{self, Nlri};
use crate::update_tx::{self, TxParams};
use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

const LOCAL_AS: u32 = 65000;

fn rib(max_paths: usize, cluster: Option<Ipv4Addr>) -> Rib {
    Rib::new(RibConfig {
        local_as: LOCAL_AS,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        cluster_id: cluster,
        decision: DecisionConfig {
            max_paths,
            ..Default::default()
        },
    })
}

fn peer(last: u8, asn: u32, client: bool) -> PeerInfo {
    PeerInfo {
        address: IpAddr::V4(Ipv4Addr::new(198, 51, 100, last)),
        router_id: Ipv4Addr::new(10, 0, 1, last),
        peer_as: asn,
        local_as: LOCAL_AS,
        rr_client: client,
        multihop: false,
        local_address: Some(Ipv4Addr::new(198, 51, 100, 254)),
        local_address_v6: Some("2001:db8::fe".parse().unwrap()),
        import: Policy::accept_all(),
        export: None,
    }
}

fn attrs(path: &[u32], nh: u8) -> PathAttrs {
    PathAttrs::new(
        Origin::Igp,
        AsPath::from_sequence(path.to_vec()),
        Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, nh))),
    )
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn n(s: &str) -> Nlri<Ipv4Net> {
    Nlri {
        prefix: net(s),
        path_id: 0,
    }
}

#[test]
fn decision_steps_in_order() {
    let mut r = rib(1, None);
    let a = r.add_peer(peer(1, 65001, false));
    let b = r.add_peer(peer(2, 65002, false));
    let p = n("203.0.113.0/24");
    r.announce_v4(a, &attrs(&[65001, 1], 1), &[p]);
    r.announce_v4(b, &attrs(&[65002], 2), &[p]);
    assert_eq!(
        r.best(&r.v4, &p.prefix).map(|x| x.peer),
        Some(b),
        "shorter AS_PATH"
    );
    let mut lp = attrs(&[65001, 1], 1);
    lp.local_pref = Some(200);
    r.announce_v4(a, &lp, &[p]);
    assert_eq!(
        r.best(&r.v4, &p.prefix).map(|x| x.peer),
        Some(a),
        "higher LOCAL_PREF"
    );
    r.withdraw_v4(a, p);
    assert_eq!(r.best(&r.v4, &p.prefix).map(|x| x.peer), Some(b));
    r.withdraw_v4(b, p);
    assert!(r.v4.is_empty());
    assert_eq!(r.v4.take_changes(), vec![p.prefix]);
}

#[test]
fn med_only_within_same_neighbor_as() {
    let mut r = rib(1, None);
    let a = r.add_peer(peer(1, 65001, false));
    let b = r.add_peer(peer(2, 65002, false));
    let p = n("203.0.113.0/24");
    let mut x = attrs(&[65001], 1);
    x.med = Some(50);
    let mut y = attrs(&[65002], 2);
    y.med = Some(10);
    r.announce_v4(a, &x, &[p]);
    r.announce_v4(b, &y, &[p]);
    // Different neighbour AS: MED ignored, lower router id (peer a) wins.
    assert_eq!(r.best(&r.v4, &p.prefix).map(|x| x.peer), Some(a));
}

#[test]
fn ecmp_up_to_max_paths_same_neighbor_as() {
    let mut r = rib(2, None);
    let a = r.add_peer(peer(1, 65001, false));
    let b = r.add_peer(peer(2, 65001, false));
    let c = r.add_peer(peer(3, 65001, false));
    let d = r.add_peer(peer(4, 65009, false));
    let p = n("203.0.113.0/24");
    for (id, nh) in [(a, 1), (b, 2), (c, 3)] {
        r.announce_v4(id, &attrs(&[65001], nh), &[p]);
    }
    r.announce_v4(d, &attrs(&[65009], 4), &[p]);
    let mp: Vec<_> = r
        .multipath(&r.v4, &p.prefix)
        .iter()
        .map(|x| x.peer)
        .collect();
    assert_eq!(mp, vec![a, b]);
}

#[test]
fn ebgp_loop_and_rr_loop_checks() {
    let mut r = rib(1, Some(Ipv4Addr::new(10, 9, 9, 9)));
    let e = r.add_peer(peer(1, 65001, false));
    let i = r.add_peer(peer(2, LOCAL_AS, true));
    r.announce_v4(e, &attrs(&[65001, LOCAL_AS], 1), &[n("203.0.113.0/24")]);
    let mut orig = attrs(&[], 2);
    orig.originator_id = Some(Ipv4Addr::new(10, 0, 0, 1));
    r.announce_v4(i, &orig, &[n("203.0.113.0/25")]);
    let mut cl = attrs(&[], 2);
    cl.cluster_list = vec![Ipv4Addr::new(10, 9, 9, 9)];
    r.announce_v4(i, &cl, &[n("203.0.113.128/25")]);
    assert!(r.v4.is_empty());
    assert_eq!(r.rejected[..3], [1, 1, 1]);
}

#[test]
fn route_reflection_and_split_horizon() {
    let cluster = Ipv4Addr::new(10, 9, 9, 9);
    let mut r = rib(1, Some(cluster));
    let client1 = r.add_peer(peer(1, LOCAL_AS, true));
    let client2 = r.add_peer(peer(2, LOCAL_AS, true));
    let nonclient = r.add_peer(peer(3, LOCAL_AS, false));
    let nonclient2 = r.add_peer(peer(5, LOCAL_AS, false));
    let ebgp = r.add_peer(PeerInfo {
        export: Some(Policy::accept_all()),
        ..peer(4, 65001, false)
    });
    let ebgp_default = r.add_peer(peer(6, 65001, false));
    let p = n("203.0.113.0/24");
    r.announce_v4(client1, &attrs(&[], 1), &[p]);
    let best = r.best(&r.v4, &p.prefix).unwrap();
    let to = |r: &Rib, t: PeerId| r.export_attrs(t, p.prefix.into(), &best);
    let refl = to(&r, client2).unwrap();
    assert_eq!(refl.originator_id, Some(Ipv4Addr::new(10, 0, 1, 1)));
    assert_eq!(refl.cluster_list, vec![cluster]);
    assert!(
        to(&r, nonclient).is_some(),
        "client route reaches non-clients"
    );
    assert!(to(&r, client1).is_none(), "not back to the source");
    let e = to(&r, ebgp).unwrap();
    assert_eq!(e.as_path.first_as(), Some(LOCAL_AS));
    assert_eq!(
        e.next_hop,
        Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 254)))
    );
    assert!(e.local_pref.is_none() && e.originator_id.is_none() && e.cluster_list.is_empty());
    assert!(
        to(&r, ebgp_default).is_none(),
        "without an export policy, eBGP hears only our own routes (RFC 8212)"
    );
    // A non-client route goes to clients only.
    let q = n("198.18.0.0/24");
    r.announce_v4(nonclient, &attrs(&[], 3), &[q]);
    let best = r.best(&r.v4, &q.prefix).unwrap();
    assert!(r.export_attrs(client1, q.prefix.into(), &best).is_some());
    assert!(r.export_attrs(nonclient2, q.prefix.into(), &best).is_none());
    // Without a cluster id there is no reflection at all.
    let mut plain = rib(1, None);
    let i1 = plain.add_peer(peer(1, LOCAL_AS, true));
    let i2 = plain.add_peer(peer(2, LOCAL_AS, true));
    plain.announce_v4(i1, &attrs(&[], 1), &[p]);
    let best = plain.best(&plain.v4, &p.prefix).unwrap();
    assert!(plain.export_attrs(i2, p.prefix.into(), &best).is_none());
}

#[test]
fn import_policy_sets_local_pref_and_rejects() {
    let mut r = rib(1, None);
    let mut info = peer(1, 65001, false);
    info.import = Policy {
        rules: vec![Rule {
            when: Match {
                prefix_list: Some(vec![crate::policy::PrefixEntry {
                    prefix: "198.18.0.0/15".parse().unwrap(),
                    ge: Some(15),
                    le: Some(32),
                }]),
                ..Default::default()
            },
            then: Verdict::Accept(Set {
                local_pref: Some(300),
                ..Default::default()
            }),
        }],
        default_accept: false,
    };
    let a = r.add_peer(info);
    r.announce_v4(
        a,
        &attrs(&[65001], 1),
        &[n("198.18.1.0/24"), n("203.0.113.0/24")],
    );
    assert_eq!(r.v4.len(), 1);
    let best = r.best(&r.v4, &net("198.18.1.0/24")).unwrap();
    assert_eq!(best.attrs.local_pref, Some(300));
}

#[test]
fn adj_rib_out_diffs_and_peer_down() {
    let mut r = rib(1, None);
    let a = r.add_peer(peer(1, 65001, false));
    let b = r.add_peer(PeerInfo {
        export: Some(Policy::accept_all()),
        ..peer(2, 65002, false)
    });
    let ps = [n("203.0.113.0/24"), n("198.51.100.0/24")];
    r.announce_v4(a, &attrs(&[65001], 1), &ps);
    let changed = r.v4.take_changes();
    let mut out = AdjRibOut::default();
    let ch = r.sync_adj_rib_out_v4(b, &mut out, &changed);
    assert_eq!(ch.announce.len(), 2);
    assert!(
        Arc::ptr_eq(&ch.announce[0].1, &ch.announce[1].1),
        "shared attribute set"
    );
    assert_eq!(
        r.sync_adj_rib_out_v4(b, &mut out, &changed).announce.len(),
        0
    );
    r.peer_down(a);
    let changed = r.v4.take_changes();
    let ch = r.sync_adj_rib_out_v4(b, &mut out, &changed);
    assert_eq!(ch.withdraw.len(), 2);
    assert_eq!(r.adj_rib_in_v4(a).count(), 0);
}

fn ctx_for(p: &TxParams) -> UpdateContext {
    UpdateContext {
        ibgp: true,
        peer_as: LOCAL_AS,
        four_octet_as: p.four_octet_as,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        add_path_v4: p.add_path,
        add_path_v6: p.add_path,
    }
}

fn decode_all(msgs: &[Vec<u8>], p: &TxParams) -> Vec<update_rx::ParsedUpdate> {
    msgs.iter()
        .map(|m| {
            assert!(m.len() <= p.max_len);
            update_rx::decode(&m[19..], &ctx_for(p)).unwrap()
        })
        .collect()
}

#[test]
fn updates_pack_and_round_trip_v4() {
    let mut a = attrs(&[65001, 4_200_000_000], 1);
    a.communities = vec![1, 2];
    a.large_communities = vec![[1, 2, 3]];
    a.local_pref = Some(100);
    let a = Arc::new(a);
    let b = Arc::new(attrs(&[65002], 2));
    let mut announce = Vec::new();
    for i in 0..3000u32 {
        let p = Ipv4Net::new(Ipv4Addr::from(0xc612_0000 + i), 32).unwrap();
        announce.push((
            Nlri {
                prefix: p,
                path_id: i,
            },
            if i % 2 == 0 {
                Arc::clone(&a)
            } else {
                Arc::clone(&b)
            },
        ));
    }
    let withdraw: Vec<Nlri<Ipv4Net>> = (0..1000u32)
        .map(|i| Nlri {
            prefix: Ipv4Net::new(Ipv4Addr::from(0xcb00_7100 + i), 32).unwrap(),
            path_id: i,
        })
        .collect();
    for params in [
        TxParams {
            four_octet_as: true,
            add_path: false,
            max_len: 4096,
        },
        TxParams {
            four_octet_as: false,
            add_path: true,
            max_len: 4096,
        },
        TxParams {
            four_octet_as: true,
            add_path: false,
            max_len: 65535,
        },
    ] {
        let msgs = update_tx::build_v4(&announce, &withdraw, &params).unwrap();
        let got = decode_all(&msgs, &params);
        let announced: usize = got.iter().map(|u| u.announced_v4.len()).sum();
        let withdrawn: usize = got.iter().map(|u| u.withdrawn_v4.len()).sum();
        assert_eq!((announced, withdrawn), (3000, 1000));
        // 5 bytes a /32 (9 with ADD-PATH): the fewest messages that fit.
        let per: usize = if params.add_path { 9 } else { 5 };
        let min = (1500usize * per).div_ceil(params.max_len - 100) * 2
            + (1000usize * per).div_ceil(params.max_len - 23);
        assert!(
            msgs.len() <= min + 2,
            "{} messages, expected about {min}",
            msgs.len()
        );
        let first = got
            .iter()
            .find(|u| {
                u.attrs_v4
                    .as_ref()
                    .is_some_and(|x| x.communities.len() == 2)
            })
            .unwrap();
        assert_eq!(
            first.attrs_v4.as_ref().unwrap().as_path,
            a.as_path,
            "AS4_PATH restores 4-octet ASNs"
        );
    }
}

#[test]
fn updates_round_trip_v6_with_link_local() {
    let mut a = PathAttrs::new(
        Origin::Igp,
        AsPath::from_sequence(vec![65001]),
        Some(IpAddr::V6("2001:db8::1".parse().unwrap())),
    );
    a.next_hop_local = Some("fe80::1".parse::<Ipv6Addr>().unwrap());
    let a = Arc::new(a);
    let announce: Vec<(Nlri<Ipv6Net>, _)> = (0..1000u128)
        .map(|i| {
            (
                Nlri {
                    prefix: Ipv6Net::new(Ipv6Addr::from((0x2001_0db8u128 << 96) + (i << 64)), 64)
                        .unwrap(),
                    path_id: 0,
                },
                Arc::clone(&a),
            )
        })
        .collect();
    let withdraw = vec![announce[0].0];
    let params = TxParams {
        four_octet_as: true,
        add_path: false,
        max_len: 4096,
    };
    let msgs = update_tx::build_v6(&announce, &withdraw, &params).unwrap();
    let got = decode_all(&msgs, &params);
    assert_eq!(
        got.iter().map(|u| u.announced_v6.len()).sum::<usize>(),
        1000
    );
    assert_eq!(got.iter().map(|u| u.withdrawn_v6.len()).sum::<usize>(), 1);
    let x = got.iter().find_map(|u| u.attrs_v6.clone()).unwrap();
    assert_eq!(x.next_hop_local, a.next_hop_local);
    assert_eq!(x.next_hop, a.next_hop);
    assert!(msgs.len() <= 4, "{}", msgs.len());
    let eor = update_tx::end_of_rib(Family::Ipv6Unicast).unwrap();
    assert_eq!(
        decode_all(&[eor], &params)[0].end_of_rib,
        Some(Family::Ipv6Unicast)
    );
}

/// Release-mode scale check: `cargo test --release -- --ignored scale`.
#[test]
#[ignore]
fn scale_one_million_routes() {
    let params = TxParams {
        four_octet_as: true,
        add_path: false,
        max_len: 4096,
    };
    let a = Arc::new(attrs(&[65001], 1));
    let announce: Vec<(Nlri<Ipv4Net>, _)> = (0..1_000_000u32)
        .map(|i| {
            (
                Nlri {
                    prefix: Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + i), 32).unwrap(),
                    path_id: 0,
                },
                Arc::clone(&a),
            )
        })
        .collect();
    let msgs = update_tx::build_v4(&announce, &[], &params).unwrap();
    drop(announce);
    let mut ctx = ctx_for(&params);
    ctx.ibgp = false;
    ctx.peer_as = 65001;
    let mut r = rib(1, None);
    let p = r.add_peer(peer(1, 65001, false));
    let t = std::time::Instant::now();
    for m in &msgs {
        let u = update_rx::decode(&m[19..], &ctx).unwrap();
        r.apply_update(p, &u);
    }
    let el = t.elapsed();
    eprintln!(
        "{} UPDATEs, {} routes into Loc-RIB in {:?}",
        msgs.len(),
        r.v4.len(),
        el
    );
    assert_eq!(r.v4.len(), 1_000_000);
}

fn v6(s: &str) -> Nlri<Ipv6Net> {
    Nlri {
        prefix: s.parse().unwrap(),
        path_id: 0,
    }
}

fn v6_attrs(nh: &str) -> PathAttrs {
    PathAttrs::new(
        Origin::Igp,
        AsPath::from_sequence(vec![65001]),
        Some(IpAddr::V6(nh.parse().unwrap())),
    )
}

/// RFC 4724 §4.2 on the RIB: kept families go stale, the others go; a
/// path announced again with equal attributes replaces its stale self
/// without a Loc-RIB change; End-of-RIB sweeps what was not announced.
#[test]
fn stale_paths_are_kept_replaced_and_swept() {
    let mut r = rib(4, None);
    let a = r.add_peer(peer(1, 65001, false));
    let b = r.add_peer(peer(2, 65001, false));
    let (p, q) = (n("203.0.113.0/24"), n("198.18.0.0/24"));
    r.announce_v4(a, &attrs(&[65001], 1), &[p, q]);
    r.announce_v4(b, &attrs(&[65001], 2), &[p]);
    r.announce_v6(a, &v6_attrs("2001:db8::1"), &[v6("2001:db8:1::/48")]);
    r.v4.take_changes();
    r.v6.take_changes();

    r.mark_stale(a, &[Family::Ipv4Unicast]);
    assert_eq!(r.stale_count(a), 2);
    assert!(r.is_stale(a, p.prefix.into(), 0));
    assert!(!r.is_stale(b, p.prefix.into(), 0), "other peers untouched");
    assert!(r.v6.is_empty(), "a family not kept is deleted");
    assert!(
        r.v4.take_changes().is_empty(),
        "stale paths still forward: nothing changed in the Loc-RIB"
    );
    assert_eq!(r.multipath(&r.v4, &p.prefix).len(), 2);

    // Back: p again with the same attributes, q not.
    r.announce_v4(a, &attrs(&[65001], 1), &[p]);
    assert!(!r.is_stale(a, p.prefix.into(), 0));
    assert!(r.v4.take_changes().is_empty(), "no FIB flap for p");
    assert_eq!(r.sweep_stale(a, Family::Ipv6Unicast), 0);
    assert_eq!(r.sweep_stale(a, Family::Ipv4Unicast), 1);
    assert_eq!(r.v4.take_changes(), vec![q.prefix]);
    assert!(r.v4.paths(&q.prefix).is_empty());
    assert_eq!(r.multipath(&r.v4, &p.prefix).len(), 2);
    assert_eq!(r.stale_count(a), 0);
}

/// RFC 4724 §4.2: on a second restart before End-of-RIB, the paths still
/// stale from the first are deleted; the rest become stale.
#[test]
fn consecutive_restart_deletes_earlier_stale_paths() {
    let mut r = rib(1, None);
    let a = r.add_peer(peer(1, 65001, false));
    let (p, q) = (n("203.0.113.0/24"), n("198.18.0.0/24"));
    r.announce_v4(a, &attrs(&[65001], 1), &[p, q]);
    r.mark_stale(a, &[Family::Ipv4Unicast]);
    r.announce_v4(a, &attrs(&[65001], 1), &[p]);
    r.v4.take_changes();
    r.mark_stale(a, &[Family::Ipv4Unicast]);
    assert_eq!(r.v4.take_changes(), vec![q.prefix]);
    assert!(r.is_stale(a, p.prefix.into(), 0));
    assert_eq!(r.stale_count(a), 1);
    // A withdrawal of a stale path removes it from the stale set too.
    r.withdraw_v4(a, p);
    assert_eq!(r.stale_count(a), 0);
    assert!(r.v4.is_empty());
    // Forgetting the peer forgets its stale set.
    r.announce_v4(a, &attrs(&[65001], 1), &[q]);
    r.mark_stale(a, &[Family::Ipv4Unicast]);
    r.remove_peer(a);
    assert_eq!(r.stale_count(a), 0);
    assert!(r.v4.is_empty());
}

/// ADD-PATH send (RFC 7911) from a route reflector: a client hears every
/// usable path but its own, each under an identifier of ours that stays
/// with its path; a path that leaves is withdrawn by identifier, a
/// changed one replaced in place, and a freed identifier is reused.
#[test]
fn add_path_send_every_path_with_stable_ids() {
    let cluster = Ipv4Addr::new(10, 9, 9, 9);
    let mut r = rib(1, Some(cluster));
    let c1 = r.add_peer(peer(1, LOCAL_AS, true));
    let c2 = r.add_peer(peer(2, LOCAL_AS, true));
    let c3 = r.add_peer(peer(3, LOCAL_AS, true));
    let rx = r.add_peer(peer(4, LOCAL_AS, true));
    let p = n("198.18.7.0/24");
    r.announce_v4(c1, &attrs(&[], 1), &[p]);
    r.announce_v4(c2, &attrs(&[], 2), &[p]);
    let changed = r.v4.take_changes();
    let mut out = AdjRibOut::new(true, true);
    let ch = r.sync_adj_rib_out_v4(rx, &mut out, &changed);
    let ids = |ch: &crate::rib::adj_out::OutChanges<Ipv4Net>| -> Vec<(u32, Option<IpAddr>)> {
        ch.announce
            .iter()
            .map(|(n, a)| (n.path_id, a.next_hop))
            .collect()
    };
    let nh = |x: u8| Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, x)));
    assert_eq!(ids(&ch), vec![(1, nh(1)), (2, nh(2))], "best first");
    assert!(ch
        .announce
        .iter()
        .all(|(_, a)| a.cluster_list == vec![cluster]));
    assert_eq!((out.v4.len(), out.v4.paths()), (1, 2));
    // Split horizon per path: c1 hears only c2's path.
    let mut out1 = AdjRibOut::new(true, false);
    let ch = r.sync_adj_rib_out_v4(c1, &mut out1, &changed);
    assert_eq!(ids(&ch), vec![(1, nh(2))]);
    // Without ADD-PATH, the best only, identifier 0.
    let mut plain = AdjRibOut::default();
    let ch = r.sync_adj_rib_out_v4(c3, &mut plain, &changed);
    assert_eq!(ids(&ch), vec![(0, nh(1))]);

    // c1 withdraws: its identifier is withdrawn, c2's path keeps 2.
    r.withdraw_v4(c1, p);
    let ch = r.sync_adj_rib_out_v4(rx, &mut out, &[p.prefix]);
    assert!(ch.announce.is_empty());
    assert_eq!(
        ch.withdraw,
        vec![Nlri {
            prefix: p.prefix,
            path_id: 1
        }]
    );
    // c3 arrives: it takes the freed 1. c2 changes MED: replaced as 2.
    r.announce_v4(c3, &attrs(&[], 3), &[p]);
    let mut med = attrs(&[], 2);
    med.med = Some(5);
    r.announce_v4(c2, &med, &[p]);
    let ch = r.sync_adj_rib_out_v4(rx, &mut out, &[p.prefix]);
    let mut got = ids(&ch);
    got.sort();
    assert_eq!(got, vec![(1, nh(3)), (2, nh(2))]);
    assert!(ch.withdraw.is_empty());
    // Nothing changed: nothing to send. Refresh resends as sent.
    assert!(r.sync_adj_rib_out_v4(rx, &mut out, &[p.prefix]).is_empty());
    let mut again: Vec<_> = out
        .v4
        .announcements()
        .iter()
        .map(|(n, a)| (n.path_id, a.next_hop))
        .collect();
    again.sort();
    assert_eq!(again, got);
    // Everything gone: each identifier withdrawn.
    r.withdraw_v4(c2, p);
    r.withdraw_v4(c3, p);
    let ch = r.sync_adj_rib_out_v4(rx, &mut out, &[p.prefix]);
    let mut w: Vec<u32> = ch.withdraw.iter().map(|n| n.path_id).collect();
    w.sort();
    assert_eq!(w, vec![1, 2]);
    assert!(out.v4.is_empty());
}

/// The UPDATEs for ADD-PATH changes carry our identifiers, and a peer
/// receiving ADD-PATH reads back both paths of one prefix.
#[test]
fn add_path_updates_round_trip() {
    let a = Arc::new(attrs(&[], 1));
    let b = Arc::new(attrs(&[], 2));
    let p = net("198.18.7.0/24");
    let params = TxParams {
        four_octet_as: true,
        add_path: true,
        max_len: 4096,
    };
    let announce = vec![
        (
            Nlri {
                prefix: p,
                path_id: 1,
            },
            a,
        ),
        (
            Nlri {
                prefix: p,
                path_id: 2,
            },
            b,
        ),
    ];
    let withdraw = vec![Nlri {
        prefix: p,
        path_id: 3,
    }];
    let got = decode_all(
        &update_tx::build_v4(&announce, &withdraw, &params).unwrap(),
        &params,
    );
    let mut ids: Vec<u32> = got
        .iter()
        .flat_map(|u| u.announced_v4.iter().map(|n| n.path_id))
        .collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(got[0].withdrawn_v4, withdraw);
    // Into a RIB with multipath: one prefix, two next hops.
    let mut r = rib(4, None);
    let from = r.add_peer(peer(9, LOCAL_AS, false));
    for u in &got {
        r.apply_update(from, u);
    }
    assert_eq!(r.multipath(&r.v4, &p).len(), 2);
}

/// The attributes of every UPDATE in `msgs` as (flags, code, value),
/// read straight from the bytes.
fn raw_attrs(msgs: &[Vec<u8>]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut out = Vec::new();
    for m in msgs {
        let body = &m[19..];
        let wlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let alen = usize::from(u16::from_be_bytes([body[2 + wlen], body[3 + wlen]]));
        let mut a = &body[4 + wlen..4 + wlen + alen];
        while let [flags, code, rest @ ..] = a {
            let (len, rest) = if flags & 0x10 != 0 {
                (
                    usize::from(u16::from_be_bytes([rest[0], rest[1]])),
                    &rest[2..],
                )
            } else {
                (usize::from(rest[0]), &rest[1..])
            };
            out.push((*flags, *code, rest[..len].to_vec()));
            a = &rest[len..];
        }
    }
    out
}

/// RFC 6793 §4.2.2 (MUST): to a peer without 4-octet AS numbers, an
/// AGGREGATOR whose AS does not fit in two octets goes as AS_TRANS plus
/// an AS4_AGGREGATOR (optional transitive, type 18) with the real AS;
/// read back by such a peer, the two make the original again.
#[test]
fn as4_aggregator_sent_to_two_octet_peer() {
    let mut a = attrs(&[65001], 1);
    a.aggregator = Some((4_200_000_001, Ipv4Addr::new(10, 0, 0, 9)));
    let a = Arc::new(a);
    let params = TxParams {
        four_octet_as: false,
        add_path: false,
        max_len: 4096,
    };
    let msgs = update_tx::build_v4(&[(n("203.0.113.0/24"), Arc::clone(&a))], &[], &params).unwrap();
    let got = raw_attrs(&msgs);
    let find = |code: u8| got.iter().find(|(_, c, _)| *c == code).cloned();
    assert_eq!(
        find(7),
        Some((0xc0, 7, vec![0x5b, 0xa0, 10, 0, 0, 9])),
        "AGGREGATOR 23456/10.0.0.9"
    );
    assert_eq!(
        find(18),
        Some((0xc0, 18, vec![0xfa, 0x56, 0xea, 0x01, 10, 0, 0, 9])),
        "AS4_AGGREGATOR 4200000001/10.0.0.9"
    );
    let codes: Vec<u8> = got.iter().map(|(_, c, _)| *c).collect();
    let mut sorted = codes.clone();
    sorted.sort_unstable();
    assert_eq!(codes, sorted, "attributes in type-code order");
    let back = decode_all(&msgs, &params);
    assert_eq!(back[0].attrs_v4.as_ref().unwrap().aggregator, a.aggregator);

    // A 2-octet aggregator, or a 4-octet peer: no AS4_AGGREGATOR.
    let mut small = attrs(&[65001], 1);
    small.aggregator = Some((65001, Ipv4Addr::new(10, 0, 0, 9)));
    let msgs =
        update_tx::build_v4(&[(n("203.0.113.0/24"), Arc::new(small))], &[], &params).unwrap();
    assert!(raw_attrs(&msgs).iter().all(|(_, c, _)| *c != 18));
    let four = TxParams {
        four_octet_as: true,
        ..params
    };
    let msgs = update_tx::build_v4(&[(n("203.0.113.0/24"), a)], &[], &four).unwrap();
    let got = raw_attrs(&msgs);
    assert!(got.iter().all(|(_, c, _)| *c != 18));
    assert!(got.contains(&(0xc0, 7, vec![0xfa, 0x56, 0xea, 0x01, 10, 0, 0, 9])));
}

/// The routes `to` is told about, as (prefix, next hop).
fn told(r: &mut Rib, to: PeerId, prefixes: &[Ipv4Net]) -> Vec<(Ipv4Net, Option<IpAddr>)> {
    let mut out = AdjRibOut::default();
    r.sync_adj_rib_out_v4(to, &mut out, prefixes)
        .announce
        .iter()
        .map(|(n, a)| (n.prefix, a.next_hop))
        .collect()
}

/// RFC 1997: NO_EXPORT (and NO_EXPORT_SUBCONFED, which outside a
/// confederation means the same) keeps a route from every eBGP peer, an
/// export policy notwithstanding, while iBGP peers still get it;
/// NO_ADVERTISE keeps it from every peer. The route is still used.
#[test]
fn well_known_communities_limit_advertisement() {
    use crate::attrs::well_known::{NO_ADVERTISE, NO_EXPORT, NO_EXPORT_SUBCONFED};
    let mut r = rib(1, None);
    let a = r.add_peer(peer(1, 65001, false));
    // An export policy that would let B hear anything (RFC 8212's
    // default would keep A's route from B on its own).
    let b = r.add_peer(PeerInfo {
        export: Some(Policy::accept_all()),
        ..peer(2, 65002, false)
    });
    let c = r.add_peer(peer(3, LOCAL_AS, false));
    let p = n("203.0.113.0/24");
    for (community, to_ebgp, to_ibgp) in [
        (None, true, true),
        (Some(NO_EXPORT), false, true),
        (Some(NO_EXPORT_SUBCONFED), false, true),
        (Some(NO_ADVERTISE), false, false),
    ] {
        let mut x = attrs(&[65001], 1);
        x.communities = community.into_iter().chain([65001 << 16 | 7]).collect();
        r.announce_v4(a, &x, &[p]);
        assert!(
            r.best(&r.v4, &p.prefix).is_some(),
            "{community:?}: still used"
        );
        assert_eq!(
            !told(&mut r, b, &[p.prefix]).is_empty(),
            to_ebgp,
            "{community:?} to eBGP"
        );
        assert_eq!(
            !told(&mut r, c, &[p.prefix]).is_empty(),
            to_ibgp,
            "{community:?} to iBGP"
        );
    }
}

/// RFC 4360 §6: non-transitive extended communities (type high octet
/// with 0x40 set) do not leave the AS; transitive ones do, and iBGP
/// peers get both. The same for the IPv6-address-specific ones (RFC
/// 5701), which are carried as a raw attribute.
#[test]
fn non_transitive_extended_communities_stay_in_the_as() {
    use crate::attrs::RawAttr;
    let mut r = rib(1, None);
    let a = r.add_peer(peer(1, 65001, false));
    let b = r.add_peer(PeerInfo {
        export: Some(Policy::accept_all()),
        ..peer(2, 65002, false)
    });
    let c = r.add_peer(peer(3, LOCAL_AS, false));
    let transitive = [0x00, 0x02, 0xfd, 0xe9, 0, 0, 0, 1];
    let non_transitive = [0x40, 0x04, 0, 0, 0, 0, 0, 2];
    let mut x = attrs(&[65001], 1);
    x.extended_communities = vec![transitive, non_transitive];
    let mut v6_transitive = vec![0x00, 0x02];
    v6_transitive.extend([0x20, 0x01, 0x0d, 0xb8].iter().chain(&[0; 12]));
    v6_transitive.extend([0, 1]);
    let mut v6_non_transitive = v6_transitive.clone();
    v6_non_transitive[0] = 0x40;
    x.unknown = vec![RawAttr {
        flags: 0xc0,
        code: 25,
        value: [v6_transitive.clone(), v6_non_transitive].concat(),
    }];
    let p = n("203.0.113.0/24");
    r.announce_v4(a, &x, &[p]);
    let best = r.best(&r.v4, &p.prefix).unwrap();
    let to_b = r.export_attrs(b, p.prefix.into(), &best).unwrap();
    assert_eq!(to_b.extended_communities, vec![transitive]);
    assert_eq!(to_b.unknown[0].value, v6_transitive);
    let to_c = r.export_attrs(c, p.prefix.into(), &best).unwrap();
    assert_eq!(to_c.extended_communities, x.extended_communities);
    assert_eq!(to_c.unknown, x.unknown);
    // Only non-transitive IPv6 ones: the attribute goes altogether.
    x.unknown[0].value = x.unknown[0].value[20..].to_vec();
    r.announce_v4(a, &x, &[p]);
    let best = r.best(&r.v4, &p.prefix).unwrap();
    assert!(r
        .export_attrs(b, p.prefix.into(), &best)
        .unwrap()
        .unknown
        .is_empty());
}

/// RFC 8212 §3: an eBGP peer without an export policy of its own hears
/// our own routes only, never one learned from another eBGP peer (no
/// transit through a node) nor from iBGP; iBGP and route reflection are
/// as before; an explicit policy decides for itself.
#[test]
fn ebgp_default_export_is_our_own_routes_only() {
    let cluster = Ipv4Addr::new(10, 9, 9, 9);
    let mut r = rib(1, Some(cluster));
    let a = r.add_peer(peer(1, 65001, false));
    let b = r.add_peer(peer(2, 65002, false));
    let client = r.add_peer(peer(3, LOCAL_AS, true));
    let client2 = r.add_peer(peer(4, LOCAL_AS, true));
    let (p, own, from_client) = (
        n("203.0.113.0/24"),
        n("198.51.100.0/25"),
        n("198.18.7.0/24"),
    );
    r.announce_v4(a, &attrs(&[65001], 1), &[p]);
    r.announce_v4(client, &attrs(&[], 3), &[from_client]);
    r.originate(
        own.prefix.into(),
        PathAttrs::new(Origin::Igp, AsPath::default(), None),
    );
    let all = [from_client.prefix, own.prefix, p.prefix];
    let nh_b = Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 254)));
    assert_eq!(told(&mut r, b, &all), vec![(own.prefix, nh_b)]);
    // iBGP unchanged: the eBGP route, ours, and the reflected client route.
    let to_client2: Vec<Ipv4Net> = told(&mut r, client2, &all).iter().map(|x| x.0).collect();
    assert_eq!(to_client2, all.to_vec());
    // An explicit policy lets the operator make us transit.
    r.set_peer_info(
        b,
        PeerInfo {
            export: Some(Policy::accept_all()),
            ..peer(2, 65002, false)
        },
    );
    assert_eq!(told(&mut r, b, &all).len(), 3);
}

/// A resolver for the RIB tests: `connected` subnets are attached,
/// `routed` ones reached through some gateway.
#[derive(Debug)]
struct TestReach {
    connected: Vec<Ipv4Net>,
    routed: Vec<Ipv4Net>,
}

impl IgpCost for TestReach {
    fn cost(&self, nh: Option<IpAddr>, reach: Reach) -> Option<u32> {
        let Some(IpAddr::V4(a)) = nh else {
            return None;
        };
        if self.connected.iter().any(|n| n.contains(&a)) {
            return Some(0);
        }
        (reach == Reach::Resolved && self.routed.iter().any(|n| n.contains(&a))).then_some(10)
    }
}

/// RFC 4271 §9.1.2.1: a path whose next hop does not resolve is not
/// usable: eBGP A's path with a next hop off every attached subnet
/// loses to B's, which is the one installed and advertised to iBGP C,
/// although A's would win on the router id. Changing the resolver runs
/// the decision again.
#[test]
fn unresolvable_next_hop_is_not_usable() {
    let mut r = rib(4, None);
    let a = r.add_peer(peer(1, 65001, false));
    let b = r.add_peer(peer(2, 65002, false));
    let c = r.add_peer(peer(3, LOCAL_AS, false));
    let p = n("203.0.113.0/24");
    let unattached = IpAddr::V4(Ipv4Addr::new(198, 18, 9, 9));
    let b_self = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
    let mut from_a = attrs(&[65001], 1);
    from_a.next_hop = Some(unattached);
    r.announce_v4(a, &from_a, &[p]);
    r.announce_v4(b, &attrs(&[65002], 2), &[p]);
    // Without a resolver every next hop is reachable: A wins on router id.
    assert_eq!(r.best(&r.v4, &p.prefix).map(|x| x.peer), Some(a));
    r.v4.take_changes();

    r.set_igp(Box::new(TestReach {
        connected: vec![net("198.51.100.0/24")],
        routed: vec![net("198.18.0.0/16")],
    }));
    assert_eq!(r.v4.take_changes(), vec![p.prefix], "decided again");
    let mp = r.multipath(&r.v4, &p.prefix);
    assert_eq!(mp.len(), 1, "A's path is in no ECMP set either");
    assert_eq!(mp[0].peer, b);
    assert_eq!(r.usable_paths(&r.v4, &p.prefix).len(), 1);
    assert_eq!(told(&mut r, c, &[p.prefix]), vec![(p.prefix, Some(b_self))]);

    // B withdraws: nothing usable is left, nothing is advertised.
    r.withdraw_v4(b, p);
    assert!(r.best(&r.v4, &p.prefix).is_none());
    assert!(told(&mut r, c, &[p.prefix]).is_empty());

    // The same next hop, reached through a route rather than a subnet of
    // ours, is fine from iBGP and from a multihop eBGP peer, not from a
    // single-hop eBGP peer.
    let i = r.add_peer(peer(4, LOCAL_AS, false));
    let m = r.add_peer(PeerInfo {
        multihop: true,
        ..peer(5, 65005, false)
    });
    let (q1, q2) = (n("198.19.1.0/24"), n("198.19.2.0/24"));
    let mut via_route = attrs(&[], 1);
    via_route.next_hop = Some(unattached);
    r.announce_v4(i, &via_route, &[q1]);
    via_route.as_path = AsPath::from_sequence(vec![65005]);
    r.announce_v4(m, &via_route, &[q2]);
    assert_eq!(r.best(&r.v4, &q1.prefix).map(|x| x.peer), Some(i));
    assert_eq!(r.best(&r.v4, &q2.prefix).map(|x| x.peer), Some(m));
    assert!(r.best(&r.v4, &p.prefix).is_none(), "A's still is not");
    // Our own routes never depend on the resolver.
    r.originate(
        "198.51.100.128/25".parse().unwrap(),
        PathAttrs::new(Origin::Igp, AsPath::default(), Some(unattached)),
    );
    assert!(r.best(&r.v4, &net("198.51.100.128/25")).is_some());
}

/// The per-peer, per-family path counts a maximum-prefix limit is
/// checked against follow announcements (a replacement is no new path,
/// each ADD-PATH path is one), policy rejections, withdrawals, stale
/// sweeps and the peer going down.
#[test]
fn received_counts_follow_the_adj_rib_in() {
    let mut r = rib(1, None);
    let mut info = peer(1, 65001, false);
    info.import = Policy {
        rules: vec![Rule {
            when: Match {
                prefix_list: Some(vec![crate::policy::PrefixEntry {
                    prefix: "198.19.0.0/16".parse().unwrap(),
                    ge: Some(16),
                    le: Some(32),
                }]),
                ..Default::default()
            },
            then: Verdict::Reject,
        }],
        default_accept: true,
    };
    let a = r.add_peer(info);
    let b = r.add_peer(peer(2, 65002, false));
    let count = |r: &Rib, p| {
        (
            r.received(p, Family::Ipv4Unicast),
            r.received(p, Family::Ipv6Unicast),
        )
    };
    let (p, q) = (n("203.0.113.0/24"), n("198.18.0.0/24"));
    r.announce_v4(a, &attrs(&[65001], 1), &[p, q, n("198.19.1.0/24")]);
    r.announce_v4(a, &attrs(&[65001, 7], 1), &[p]);
    r.announce_v4(b, &attrs(&[65002], 2), &[p]);
    r.announce_v4(
        a,
        &attrs(&[65001], 1),
        &[Nlri {
            prefix: q.prefix,
            path_id: 9,
        }],
    );
    r.announce_v6(a, &v6_attrs("2001:db8::1"), &[v6("2001:db8:1::/48")]);
    assert_eq!(count(&r, a), (3, 1), "p, q and q's second path; not 198.19");
    assert_eq!(count(&r, b), (1, 0));
    r.withdraw_v4(a, q);
    r.withdraw_v4(a, q);
    assert_eq!(count(&r, a), (2, 1));
    r.mark_stale(a, &[Family::Ipv4Unicast]);
    assert_eq!(count(&r, a), (2, 0), "a family not kept is dropped");
    assert_eq!(r.sweep_stale(a, Family::Ipv4Unicast), 2);
    assert_eq!(count(&r, a), (0, 0));
    r.peer_down(b);
    assert_eq!(count(&r, b), (0, 0));
}

/// RFC 4271 §9.1.2: a path that already went through our AS is a loop, from an iBGP peer as
/// much as from an eBGP one (an iBGP peer adds no AS, so ours in its path came back round).
#[test]
fn our_as_in_the_path_is_a_loop_on_ibgp_and_ebgp() {
    let mut r = rib(1, None);
    let ibgp = r.add_peer(peer(1, LOCAL_AS, false));
    let ebgp = r.add_peer(peer(2, 65001, false));
    let p = n("203.0.113.0/24");
    r.announce_v4(ibgp, &attrs(&[65001, LOCAL_AS, 65002], 1), &[p]);
    r.announce_v4(ebgp, &attrs(&[65001, LOCAL_AS], 2), &[p]);
    assert!(
        r.best(&r.v4, &p.prefix).is_none(),
        "both looped paths rejected"
    );
    r.announce_v4(ibgp, &attrs(&[65001, 65002], 1), &[p]);
    assert_eq!(r.best(&r.v4, &p.prefix).map(|x| x.peer), Some(ibgp));
}
