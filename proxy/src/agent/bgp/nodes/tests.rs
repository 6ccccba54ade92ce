//! Annotation parsing and peer-set planning, on Node objects as the API would give them.

use super::*;
use crate::agent::objects::Object;
use proptest::prelude::*;
use serde_json::json;

fn ann(pairs: &[(&str, &str)]) -> Annotations {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn node(name: &str, internal_ips: &[&str], annotations: &[(&str, &str)]) -> Node {
    let addresses: Vec<_> = internal_ips
        .iter()
        .map(|a| json!({"type": "InternalIP", "address": a}))
        .chain([json!({"type": "Hostname", "address": name})])
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": ann(annotations)},
        "status": {"addresses": addresses},
    }))
    .expect("test Node")
}

fn store(nodes: Vec<Node>) -> ObjectStore {
    let mut s = ObjectStore::default();
    for n in nodes {
        s.apply(Object::Node(Box::new(n))).expect("named");
    }
    s
}

fn defaults(static_peers: &[PeerConfig]) -> Defaults {
    Defaults {
        asn: 64512,
        static_peers: static_peers.to_vec(),
        mesh: true,
        mesh_port: 1790,
        cluster_id: None,
        router_id: Ipv4Addr::new(198, 51, 100, 1),
        next_hop_v4: Some(Ipv4Addr::new(198, 51, 100, 1)),
        next_hop_v6: None,
    }
}

/// The plan's peers as (address, AS, source), in plan order.
fn summary(p: &Plan) -> Vec<(String, u32, PeerSource)> {
    p.peers
        .iter()
        .map(|c| (c.address.to_string(), c.remote_as, p.sources[&c.address]))
        .collect()
}

#[test]
fn kube_router_peer_annotations() {
    let a = ann(&[
        ("kube-router.io/peer.ips", "198.51.100.254, 2001:db8::fe"),
        ("kube-router.io/peer.asns", "64500,4200000000"),
        (
            "kube-router.io/peer.passwords",
            &format!("{},", b64("s3cret")),
        ),
        ("kube-router.io/peer.ports", "179,1790"),
        ("kube-router.io/node.asn", "64513"),
    ]);
    let bgp = NodeBgp::from_annotations(&a).unwrap();
    assert_eq!(bgp.member.asn, Some(64513));
    assert_eq!(bgp.member.rr, RrRole::None);
    assert_eq!(
        bgp.peers,
        vec![
            AnnotatedPeer {
                address: ip("198.51.100.254"),
                asn: 64500,
                port: 179,
                password: Some("s3cret".into()),
            },
            AnnotatedPeer {
                address: ip("2001:db8::fe"),
                asn: 4_200_000_000,
                port: 1790,
                password: None,
            },
        ]
    );
    assert!(!format!("{bgp:?}").contains("s3cret"), "{bgp:?}");
    // Ports and passwords are optional; no keys at all is no peers.
    let a = ann(&[
        ("kube-router.io/peer.ips", "198.51.100.254"),
        ("kube-router.io/peer.asns", "64500"),
    ]);
    assert_eq!(annotated_peers(&a).unwrap()[0].port, 179);
    assert_eq!(NodeBgp::from_annotations(&ann(&[])), Ok(NodeBgp::default()));
}

#[test]
fn switchyard_keys_win_group_by_group() {
    let a = ann(&[
        ("kube-router.io/peer.ips", "198.51.100.1,198.51.100.2"),
        ("kube-router.io/peer.asns", "64501,64502"),
        ("switchyard.io/peer.ips", "198.51.100.9"),
        ("switchyard.io/peer.asns", "64509"),
        ("kube-router.io/node.asn", "64513"),
        ("switchyard.io/node.asn", "64519"),
        ("kube-router.io/rr.server", "1"),
        ("switchyard.io/rr.client", "198.51.100.7"),
    ]);
    let bgp = NodeBgp::from_annotations(&a).unwrap();
    let peers: Vec<_> = bgp.peers.iter().map(|p| (p.address, p.asn)).collect();
    assert_eq!(peers, vec![(ip("198.51.100.9"), 64509)]);
    assert_eq!(bgp.member.asn, Some(64519));
    assert_eq!(
        bgp.member.rr,
        RrRole::Client(Ipv4Addr::new(198, 51, 100, 7))
    );
    // The lists of one prefix are never paired with the other's.
    let a = ann(&[
        ("kube-router.io/peer.ips", "198.51.100.1"),
        ("kube-router.io/peer.asns", "64501"),
        ("switchyard.io/peer.ips", "198.51.100.9"),
    ]);
    assert!(matches!(
        annotated_peers(&a),
        Err(AnnotationError::LengthMismatch { ref key, got: 0, want: 1, .. })
            if key == "switchyard.io/peer.asns"
    ));
}

#[test]
fn route_reflector_roles() {
    let role = |pairs: &[(&str, &str)]| rr_role(&ann(pairs));
    assert_eq!(
        role(&[("kube-router.io/rr.server", "42")]),
        Ok(RrRole::Server(Ipv4Addr::new(0, 0, 0, 42)))
    );
    assert_eq!(
        role(&[("kube-router.io/rr.client", "10.0.0.1")]),
        Ok(RrRole::Client(Ipv4Addr::new(10, 0, 0, 1)))
    );
    assert_eq!(
        role(&[
            ("kube-router.io/rr.client", "1"),
            ("kube-router.io/rr.server", "2")
        ]),
        Ok(RrRole::Server(Ipv4Addr::new(0, 0, 0, 2)))
    );
    assert!(role(&[("kube-router.io/rr.server", "cluster-a")]).is_err());
}

#[test]
fn bad_values_are_named_and_never_show_a_password() {
    let secret = "hunter2-secret";
    let long = b64(&"x".repeat(81));
    let peers = |ips: &str, asns: &str, passwords: &str, ports: Option<&str>| {
        let mut a = ann(&[
            ("kube-router.io/peer.ips", ips),
            ("kube-router.io/peer.asns", asns),
            ("kube-router.io/peer.passwords", passwords),
        ]);
        if let Some(p) = ports {
            a.insert("kube-router.io/peer.ports".into(), p.into());
        }
        NodeBgp::from_annotations(&a)
    };
    let good_pw = b64(secret);
    let cases: Vec<(Result<NodeBgp, AnnotationError>, &str)> = vec![
        (
            peers("198.51.100.1,198.51.100.2", "64500", &good_pw, None),
            "kube-router.io/peer.asns has 1 entries but kube-router.io/peer.ips has 2",
        ),
        (
            peers(
                "198.51.100.1",
                "64500",
                &format!("{good_pw},{good_pw}"),
                None,
            ),
            "kube-router.io/peer.passwords has 2 entries",
        ),
        (
            peers("198.51.100.1", "64500", &good_pw, Some("179,180")),
            "kube-router.io/peer.ports has 2 entries",
        ),
        (
            peers("198.51.100.300", "64500", &good_pw, None),
            "\"198.51.100.300\" is not an IP address",
        ),
        (
            peers("0.0.0.0", "64500", &good_pw, None),
            "0.0.0.0 cannot be a BGP peer",
        ),
        (
            peers("198.51.100.1,198.51.100.1", "1,2", ",", None),
            "198.51.100.1 is listed twice",
        ),
        (
            peers("198.51.100.1", "0", &good_pw, None),
            "\"0\" is not an AS number",
        ),
        (
            peers("198.51.100.1", "4294967296", &good_pw, None),
            "\"4294967296\" is not an AS number",
        ),
        (
            peers("198.51.100.1", "AS64500", &good_pw, None),
            "\"AS64500\" is not an AS number",
        ),
        (
            peers("198.51.100.1", "64500", &good_pw, Some("0")),
            "\"0\" is not a port",
        ),
        (
            peers("198.51.100.1", "64500", secret, None),
            "kube-router.io/peer.passwords: entry 0 is not base64",
        ),
        (
            peers("198.51.100.1", "64500", &long, None),
            "entry 0 must decode to 1-80 bytes",
        ),
        (
            NodeBgp::from_annotations(&ann(&[("kube-router.io/node.asn", "0")])),
            "kube-router.io/node.asn: \"0\" is not an AS number",
        ),
    ];
    for (got, want) in cases {
        let e = got.expect_err(want).to_string();
        assert!(e.contains(want), "{e:?} lacks {want:?}");
        assert!(!e.contains(secret) && !e.contains(&good_pw), "{e}");
    }
}

#[test]
fn the_mesh_follows_the_nodes() {
    let nodes = vec![
        node("a", &["198.18.0.1"], &[]),
        node("b", &["198.18.0.2", "2001:db8::2"], &[]),
        node("c", &["2001:db8::3", "198.18.0.3"], &[]),
        // Another AS: not meshed.
        node(
            "d",
            &["198.18.0.4"],
            &[("kube-router.io/node.asn", "64999")],
        ),
        // No address of our family: not meshed.
        node("e", &["2001:db8::5"], &[]),
        // Not an address: left out.
        node("f", &["bogus"], &[]),
    ];
    let mut np = NodePeers::default();
    let (plan, problems) = np.plan(&store(nodes.clone()), "a", &defaults(&[]));
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(plan.local_as, 64512);
    assert_eq!(plan.cluster_id, None);
    assert_eq!(
        summary(&plan),
        [
            ("198.18.0.2".into(), 64512, PeerSource::Mesh),
            ("198.18.0.3".into(), 64512, PeerSource::Mesh)
        ]
    );
    let b = &plan.peers[0];
    assert_eq!(b.port, 1790);
    assert_eq!(b.next_hop_v4, Some(Ipv4Addr::new(198, 51, 100, 1)));
    assert!(!b.route_reflector_client && b.md5_password.is_none());

    // Node b leaves, d joins our AS; mesh off leaves only the annotations' peers.
    let mut changed = nodes.clone();
    changed.remove(1);
    changed[2] = node("d", &["198.18.0.4"], &[]);
    let (plan, _) = np.plan(&store(changed), "a", &defaults(&[]));
    let addrs: Vec<_> = summary(&plan).into_iter().map(|s| s.0).collect();
    assert_eq!(addrs, ["198.18.0.3", "198.18.0.4"]);
    let off = Defaults {
        mesh: false,
        ..defaults(&[])
    };
    assert!(np.plan(&store(nodes.clone()), "a", &off).0.peers.is_empty());

    // An IPv6 node meshes over IPv6.
    let (plan, _) = np.plan(&store(nodes), "e", &defaults(&[]));
    let addrs: Vec<_> = summary(&plan).into_iter().map(|s| s.0).collect();
    assert_eq!(addrs, ["2001:db8::2", "2001:db8::3"]);
}

#[test]
fn a_node_asn_moves_us_and_our_mesh() {
    let nodes = vec![
        node("a", &["198.18.0.1"], &[("switchyard.io/node.asn", "65010")]),
        node("b", &["198.18.0.2"], &[]),
        node(
            "c",
            &["198.18.0.3"],
            &[("kube-router.io/node.asn", "65010")],
        ),
    ];
    let (plan, _) = NodePeers::default().plan(&store(nodes), "a", &defaults(&[]));
    assert_eq!(plan.local_as, 65010);
    assert_eq!(
        summary(&plan),
        [("198.18.0.3".into(), 65010, PeerSource::Mesh)]
    );
}

#[test]
fn route_reflectors_and_clients() {
    let server = ("kube-router.io/rr.server", "42");
    let client = ("kube-router.io/rr.client", "42");
    let nodes = |a: &[(&str, &str)]| {
        store(vec![
            node("a", &["198.18.0.1"], a),
            node("s", &["198.18.0.2"], &[server]),
            node("c", &["198.18.0.3"], &[client]),
            node("p", &["198.18.0.4"], &[]),
        ])
    };
    let peers = |a: &[(&str, &str)]| {
        let (plan, _) = NodePeers::default().plan(&nodes(a), "a", &defaults(&[]));
        let list: Vec<(String, bool)> = plan
            .peers
            .iter()
            .map(|p| (p.address.to_string(), p.route_reflector_client))
            .collect();
        (list, plan.cluster_id)
    };
    // A client peers with the reflector only.
    assert_eq!(peers(&[client]), (vec![("198.18.0.2".into(), false)], None));
    // A reflector peers with everyone, its clients marked, its cluster id from the annotation.
    assert_eq!(
        peers(&[server]),
        (
            vec![
                ("198.18.0.3".into(), true),
                ("198.18.0.4".into(), false),
                ("198.18.0.2".into(), false)
            ],
            Some(Ipv4Addr::new(0, 0, 0, 42))
        )
    );
    // A plain node leaves the clients to the reflectors.
    assert_eq!(
        peers(&[]).0,
        vec![("198.18.0.4".into(), false), ("198.18.0.2".into(), false)]
    );
}

#[test]
fn flags_win_over_annotations_over_the_mesh() {
    let mut flag = PeerConfig::new(ip("198.18.0.2"), 64500);
    flag.port = 1791;
    let statics = [flag];
    let nodes = store(vec![
        node(
            "a",
            &["198.18.0.1"],
            &[
                (
                    "kube-router.io/peer.ips",
                    "198.18.0.2,198.18.0.3,203.0.113.1",
                ),
                ("kube-router.io/peer.asns", "1,2,64501"),
            ],
        ),
        node("b", &["198.18.0.2"], &[]),
        node("c", &["198.18.0.3"], &[]),
    ]);
    let (plan, _) = NodePeers::default().plan(&nodes, "a", &defaults(&statics));
    assert_eq!(
        summary(&plan),
        [
            ("198.18.0.2".into(), 64500, PeerSource::Flag),
            ("198.18.0.3".into(), 2, PeerSource::Annotation),
            ("203.0.113.1".into(), 64501, PeerSource::Annotation),
        ]
    );
}

#[test]
fn bad_annotations_keep_the_last_good_peers_and_are_reported_once() {
    let good = [
        ("kube-router.io/peer.ips", "203.0.113.1"),
        ("kube-router.io/peer.asns", "64501"),
    ];
    let bad = [
        ("kube-router.io/peer.ips", "203.0.113.1,203.0.113.2"),
        ("kube-router.io/peer.asns", "64501"),
    ];
    let mut np = NodePeers::default();
    let with = |a: &[(&str, &str)], b: &[(&str, &str)]| {
        store(vec![
            node("a", &["198.18.0.1"], a),
            node("b", &["198.18.0.2"], b),
        ])
    };
    let (first, problems) = np.plan(&with(&good, &[]), "a", &defaults(&[]));
    assert!(problems.is_empty());
    assert_eq!(first.peers.len(), 2);

    let (plan, problems) = np.plan(&with(&bad, &[]), "a", &defaults(&[]));
    assert!(plan == first, "the last good annotations stay in force");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].node, "a");
    assert_eq!(np.problems().len(), 1);
    let (_, again) = np.plan(&with(&bad, &[]), "a", &defaults(&[]));
    assert!(again.is_empty(), "reported once: {again:?}");

    // Another node's bad AS: its last good state stands; it is reported too.
    let other_bad = [("kube-router.io/node.asn", "x")];
    let (plan, problems) = np.plan(&with(&bad, &other_bad), "a", &defaults(&[]));
    assert!(plan == first);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].node, "b");

    // Fixed: the problems go, the new peers come.
    let fixed = [
        ("kube-router.io/peer.ips", "203.0.113.2"),
        ("kube-router.io/peer.asns", "64502"),
    ];
    let (plan, problems) = np.plan(&with(&fixed, &[]), "a", &defaults(&[]));
    assert!(problems.is_empty() && np.problems().is_empty());
    assert_eq!(plan.peers[0].address, ip("203.0.113.2"));
}

proptest! {
    /// Whatever the values, parsing returns (never panics), and a failure never quotes a
    /// password.
    #[test]
    fn parsing_never_panics(
        ips in "[0-9a-f.:, ]{0,40}",
        asns in "[0-9, x]{0,30}",
        passwords in "[A-Za-z0-9+/=,]{0,40}",
        ports in proptest::option::of("[0-9,]{0,12}"),
        rr in "[0-9.a-z]{0,16}",
    ) {
        let mut a = ann(&[
            ("kube-router.io/peer.ips", &ips),
            ("kube-router.io/peer.asns", &asns),
            ("kube-router.io/peer.passwords", &passwords),
            ("kube-router.io/rr.server", &rr),
        ]);
        if let Some(p) = ports {
            a.insert("switchyard.io/peer.ports".into(), p);
        }
        if let Err(e) = NodeBgp::from_annotations(&a) {
            // The password errors carry only the key and the entry's index.
            if let AnnotationError::BadPasswordEncoding { key, index }
            | AnnotationError::BadPassword { key, index } = &e
            {
                let bare = format!("{key}: entry {index} ");
                prop_assert!(e.to_string().starts_with(&bare));
            }
        }
    }

    /// Peers written as annotations read back as they were.
    #[test]
    fn annotations_round_trip(
        peers in proptest::collection::btree_map(
            any::<[u8; 4]>().prop_filter("usable", |o| o[0] != 0 && o[0] < 224),
            (1u32.., 1u16.., proptest::option::of("[ -~]{1,80}")),
            0..6,
        )
    ) {
        let want: Vec<AnnotatedPeer> = peers
            .into_iter()
            .map(|(k, (asn, port, password))| AnnotatedPeer {
                address: IpAddr::from(k),
                asn,
                port,
                password,
            })
            .collect();
        let list = |f: fn(&AnnotatedPeer) -> String| {
            want.iter().map(f).collect::<Vec<_>>().join(",")
        };
        let a = ann(&[
            ("switchyard.io/peer.ips", &list(|p| p.address.to_string())),
            ("switchyard.io/peer.asns", &list(|p| p.asn.to_string())),
            ("switchyard.io/peer.ports", &list(|p| p.port.to_string())),
            (
                "switchyard.io/peer.passwords",
                &list(|p| p.password.as_deref().map(b64).unwrap_or_default()),
            ),
        ]);
        prop_assert_eq!(annotated_peers(&a).unwrap(), want);
    }
}
