use super::*;
use crate::crypto::SecretBytes;
use crate::esp::{decapsulate, encapsulate, Direction, OuterHeader, Sa};
use crate::ike::config::Identity;
use proptest::prelude::*;
use std::time::Duration;

const A: &str = "198.51.100.1:500";
const B: &str = "198.51.100.2:500";

fn ts(start: &str, end: &str) -> TrafficSelector {
    TrafficSelector {
        protocol: 0,
        start_port: 0,
        end_port: 65535,
        start: start.parse().unwrap(),
        end: end.parse().unwrap(),
    }
}

fn peer(
    name: &str,
    local: &str,
    remote: Option<&str>,
    ike: &str,
    esp: &str,
    psk: &[u8],
) -> PeerConfig {
    let initiator = remote.is_some();
    let (mine, theirs) = (
        ts("198.18.0.0", "198.18.0.255"),
        ts("198.19.0.0", "198.19.0.255"),
    );
    PeerConfig {
        name: name.to_string(),
        local: local.parse().unwrap(),
        remote: remote.map(|r| r.parse().unwrap()),
        local_id: Identity::parse(if initiator {
            "@a.example"
        } else {
            "@b.example"
        }),
        remote_id: Some(Identity::parse(if initiator {
            "@b.example"
        } else {
            "@a.example"
        })),
        psk: SecretBytes::from_slice(psk),
        ike_proposals: ike
            .split(',')
            .map(|p| IkeProposal::parse(p).unwrap())
            .collect(),
        esp_proposals: esp
            .split(',')
            .map(|p| EspProposal::parse(p).unwrap())
            .collect(),
        local_ts: vec![if initiator { mine } else { theirs }],
        remote_ts: vec![if initiator { theirs } else { mine }],
        child_lifetime: Default::default(),
    }
}

struct Pair {
    a: Engine,
    b: Engine,
    now: Instant,
    /// Simulated NAT in front of A: A's private address/port -> public.
    nat: Option<(SocketAddr, SocketAddr)>,
    drop_next_from_b: bool,
    events_a: Vec<Action>,
    events_b: Vec<Action>,
}

impl Pair {
    fn new(a_peer: PeerConfig, b_peer: PeerConfig) -> Self {
        Self::with_config(a_peer, b_peer, EngineConfig::default())
    }

    fn with_config(a_peer: PeerConfig, b_peer: PeerConfig, b_config: EngineConfig) -> Self {
        Self {
            a: Engine::new(EngineConfig {
                peers: vec![a_peer],
                ..EngineConfig::default()
            })
            .unwrap(),
            b: Engine::new(EngineConfig {
                peers: vec![b_peer],
                ..b_config
            })
            .unwrap(),
            now: Instant::now(),
            nat: None,
            drop_next_from_b: false,
            events_a: Vec::new(),
            events_b: Vec::new(),
        }
    }

    fn nat_out(&self, addr: SocketAddr) -> SocketAddr {
        match self.nat {
            Some((private, public)) if private.ip() == addr.ip() => {
                // Port 500 and 4500 map to public and public + 1.
                let port = if addr.port() == 500 {
                    public.port()
                } else {
                    public.port() + 1
                };
                SocketAddr::new(public.ip(), port)
            }
            _ => addr,
        }
    }

    fn nat_in(&self, addr: SocketAddr) -> SocketAddr {
        match self.nat {
            Some((private, public)) if public.ip() == addr.ip() => {
                let port = if addr.port() == public.port() {
                    500
                } else {
                    4500
                };
                SocketAddr::new(private.ip(), port)
            }
            _ => addr,
        }
    }

    /// Delivers datagrams until both sides are quiet.
    fn run(&mut self, from_a: Vec<Action>) {
        let mut to_b = Vec::new();
        let mut to_a = Vec::new();
        self.absorb(from_a, true, &mut to_b, &mut to_a);
        for _ in 0..20 {
            if to_a.is_empty() && to_b.is_empty() {
                return;
            }
            for (local, remote, bytes) in std::mem::take(&mut to_b) {
                // Through the NAT: B sees A's public address.
                let out = self.b.handle(&bytes, remote, self.nat_out(local), self.now);
                self.absorb(out, false, &mut to_b, &mut to_a);
            }
            for (local, remote, bytes) in std::mem::take(&mut to_a) {
                if self.drop_next_from_b {
                    self.drop_next_from_b = false;
                    continue;
                }
                let out = self.a.handle(&bytes, self.nat_in(remote), local, self.now);
                self.absorb(out, true, &mut to_b, &mut to_a);
            }
        }
        panic!("exchange did not settle");
    }

    #[allow(clippy::type_complexity)]
    fn absorb(
        &mut self,
        actions: Vec<Action>,
        from_a: bool,
        to_b: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
        to_a: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    ) {
        for action in actions {
            match action {
                Action::Send {
                    local,
                    remote,
                    bytes,
                } => {
                    if from_a {
                        to_b.push((local, remote, bytes));
                    } else {
                        to_a.push((local, remote, bytes));
                    }
                }
                other if from_a => self.events_a.push(other),
                other => self.events_b.push(other),
            }
        }
    }

    fn connect(&mut self) -> IkeSaId {
        let (id, actions) = self.a.connect("to-b", self.now).unwrap();
        self.run(actions);
        id
    }

    fn tick(&mut self, by: Duration) {
        self.now += by;
        let a = self.a.handle_timeout(self.now);
        self.run(a);
        let b = self.b.handle_timeout(self.now);
        let mut to_b = Vec::new();
        let mut to_a = Vec::new();
        self.absorb(b, false, &mut to_b, &mut to_a);
        for (local, remote, bytes) in to_a {
            let out = self.a.handle(&bytes, self.nat_in(remote), local, self.now);
            self.run(out);
        }
    }
}

fn installs(events: &[Action]) -> Vec<&ChildSaInstall> {
    events
        .iter()
        .filter_map(|e| match e {
            Action::InstallChildSa(i) => Some(&**i),
            _ => None,
        })
        .collect()
}

fn established(events: &[Action]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Action::Established { .. }))
}

fn failure(events: &[Action]) -> Option<Failure> {
    events.iter().find_map(|e| match e {
        Action::Failed { reason, .. } => Some(*reason),
        _ => None,
    })
}

fn pair(ike: &str, esp: &str) -> Pair {
    Pair::new(
        peer("to-b", A, Some(B), ike, esp, b"correct horse"),
        peer("from-a", B, None, ike, esp, b"correct horse"),
    )
}

/// ESP both ways between the two installs, through the real ESP code.
fn esp_round_trip(a: &ChildSaInstall, b: &ChildSaInstall) {
    let backend = crate::crypto::SoftwareBackend::new();
    let mut a_out = Sa::new(&backend, &a.outbound, Direction::Outbound, 0).unwrap();
    let mut b_in = Sa::new(&backend, &b.inbound, Direction::Inbound, 0).unwrap();
    let mut b_out = Sa::new(&backend, &b.outbound, Direction::Outbound, 0).unwrap();
    let mut a_in = Sa::new(&backend, &a.inbound, Direction::Inbound, 0).unwrap();
    let mut inner = vec![0x45u8, 0, 0, 28];
    inner.resize(28, 0xab);
    let outer_a = OuterHeader::new(a.local_addr, a.remote_addr);
    let outer_a = match a.udp_encap {
        Some((l, r)) => outer_a.with_udp(l, r),
        None => outer_a,
    };
    let mut p = encapsulate(&mut a_out, &inner, &outer_a, 0).unwrap();
    let d = decapsulate(&mut b_in, &mut p, 0).unwrap();
    assert_eq!(&p[d.inner], &inner[..]);
    let outer_b = OuterHeader::new(b.local_addr, b.remote_addr).with_udp(4500, 4500);
    let mut p = encapsulate(&mut b_out, &inner, &outer_b, 0).unwrap();
    let d = decapsulate(&mut a_in, &mut p, 0).unwrap();
    assert_eq!(&p[d.inner], &inner[..]);
}

#[test]
fn every_proposal_establishes_and_keys_agree() {
    let cases = [
        ("aes128gcm16-prfsha256-modp2048", "aes128gcm16"),
        ("aes256gcm16-prfsha384-ecp256", "aes256gcm16-esn"),
        ("aes128-sha256-x25519", "aes128-sha256"),
        ("aes256-sha512-ecp256", "aes256-sha512-esn"),
        ("aes256-sha384-x25519", "aes128-sha512"),
    ];
    for (ike, esp) in cases {
        let mut p = pair(ike, esp);
        let id = p.connect();
        assert!(
            established(&p.events_a) && established(&p.events_b),
            "{ike} {esp}"
        );
        let (ia, ib) = (installs(&p.events_a), installs(&p.events_b));
        assert_eq!((ia.len(), ib.len()), (1, 1), "{ike} {esp}");
        let (a, b) = (ia[0], ib[0]);
        assert_eq!(a.outbound.spi, b.inbound.spi);
        assert_eq!(a.inbound.spi, b.outbound.spi);
        assert_eq!(a.outbound.keys, b.inbound.keys);
        assert_eq!(a.inbound.keys, b.outbound.keys);
        assert_ne!(a.inbound.keys, a.outbound.keys);
        assert_eq!(a.outbound.esn, esp.ends_with("esn"));
        assert_eq!(a.udp_encap, None, "no NAT, no encapsulation");
        assert_eq!(p.a.state(id), Some(IkeState::Established));
        assert!(p.a.sk_d_for_test(id).is_some());
        esp_round_trip(a, b);
    }
}

#[test]
fn wrong_psk_fails_authentication_without_sas() {
    let ike = "aes128gcm16-prfsha256-x25519";
    let mut p = Pair::new(
        peer("to-b", A, Some(B), ike, "aes128gcm16", b"one secret"),
        peer("from-a", B, None, ike, "aes128gcm16", b"another"),
    );
    let id = p.connect();
    assert_eq!(failure(&p.events_a), Some(Failure::AuthenticationFailed));
    assert_eq!(failure(&p.events_b), Some(Failure::AuthenticationFailed));
    assert!(installs(&p.events_a).is_empty() && installs(&p.events_b).is_empty());
    assert_eq!(p.b.counters().auth_failures, 1);
    assert_eq!(p.a.state(id), None);
    assert!(p.b.sas().is_empty());
}

#[test]
fn unacceptable_proposals() {
    let mut p = Pair::new(
        peer(
            "to-b",
            A,
            Some(B),
            "aes128gcm16-prfsha256-x25519",
            "aes128gcm16",
            b"k",
        ),
        peer(
            "from-a",
            B,
            None,
            "aes256-sha512-modp2048",
            "aes128gcm16",
            b"k",
        ),
    );
    p.connect();
    assert_eq!(
        failure(&p.events_a),
        Some(Failure::PeerError(notify::NO_PROPOSAL_CHOSEN))
    );
    assert_eq!(p.b.counters().no_proposal_chosen, 1);
    assert!(p.b.sas().is_empty(), "no state for a refused IKE_SA_INIT");

    // The IKE SA is fine but the CHILD_SA proposal is not: IKE up, child refused.
    let ike = "aes128gcm16-prfsha256-x25519";
    let mut p = Pair::new(
        peer("to-b", A, Some(B), ike, "aes128gcm16", b"k"),
        peer("from-a", B, None, ike, "aes256-sha512", b"k"),
    );
    p.connect();
    assert!(established(&p.events_a) && established(&p.events_b));
    assert!(p.events_a.iter().any(|e| matches!(
        e,
        Action::ChildFailed {
            reason: Failure::PeerError(notify::NO_PROPOSAL_CHOSEN),
            ..
        }
    )));
    assert!(installs(&p.events_a).is_empty() && installs(&p.events_b).is_empty());
}

#[test]
fn invalid_ke_payload_makes_the_initiator_retry_with_the_requested_group() {
    let mut p = Pair::new(
        peer(
            "to-b",
            A,
            Some(B),
            "aes128gcm16-prfsha256-x25519-ecp256",
            "aes128gcm16",
            b"k",
        ),
        peer(
            "from-a",
            B,
            None,
            "aes128gcm16-prfsha256-ecp256",
            "aes128gcm16",
            b"k",
        ),
    );
    p.connect();
    assert_eq!(p.b.counters().invalid_ke, 1);
    assert!(established(&p.events_a) && established(&p.events_b));
    esp_round_trip(installs(&p.events_a)[0], installs(&p.events_b)[0]);
}

#[test]
fn traffic_selectors_are_narrowed() {
    let ike = "aes128gcm16-prfsha256-x25519";
    let mut b = peer("from-a", B, None, ike, "aes128gcm16", b"k");
    b.local_ts = vec![ts("198.19.0.16", "198.19.0.31")];
    let mut p = Pair::new(peer("to-b", A, Some(B), ike, "aes128gcm16", b"k"), b);
    p.connect();
    let a = installs(&p.events_a)[0];
    assert_eq!(a.remote_ts, vec![ts("198.19.0.16", "198.19.0.31")]);
    assert_eq!(a.local_ts, vec![ts("198.18.0.0", "198.18.0.255")]);

    let mut b = peer("from-a", B, None, ike, "aes128gcm16", b"k");
    b.local_ts = vec![ts("203.0.113.0", "203.0.113.255")];
    let mut p = Pair::new(peer("to-b", A, Some(B), ike, "aes128gcm16", b"k"), b);
    p.connect();
    assert!(established(&p.events_a));
    assert!(p.events_a.iter().any(|e| matches!(
        e,
        Action::ChildFailed {
            reason: Failure::PeerError(notify::TS_UNACCEPTABLE),
            ..
        }
    )));
    assert_eq!(p.b.counters().ts_unacceptable, 1);
}

#[test]
fn cookies_under_load() {
    let ike = "aes256gcm16-prfsha256-ecp256";
    let mut p = Pair::with_config(
        peer("to-b", A, Some(B), ike, "aes128gcm16", b"k"),
        peer("from-a", B, None, ike, "aes128gcm16", b"k"),
        EngineConfig {
            cookie_threshold: Some(0),
            ..EngineConfig::default()
        },
    );
    p.connect();
    assert_eq!(p.b.counters().cookies_sent, 1);
    assert!(established(&p.events_a) && established(&p.events_b));
}

#[test]
fn nat_is_detected_and_ike_and_esp_move_to_4500() {
    let ike = "aes128gcm16-prfsha256-x25519";
    let mut p = pair(ike, "aes128gcm16");
    p.nat = Some((A.parse().unwrap(), "203.0.113.9:33000".parse().unwrap()));
    p.connect();
    assert!(established(&p.events_a) && established(&p.events_b));
    let (a, b) = (installs(&p.events_a)[0], installs(&p.events_b)[0]);
    assert_eq!(a.udp_encap, Some((4500, 4500)));
    assert_eq!(
        b.udp_encap,
        Some((4500, 33001)),
        "B answers the NAT's mapping"
    );
    assert_eq!(b.remote_addr, "203.0.113.9".parse::<IpAddr>().unwrap());
}

#[test]
fn lost_response_is_retransmitted_and_answered_from_cache() {
    let mut p = pair("aes128-sha256-x25519", "aes128-sha256");
    p.drop_next_from_b = true;
    let (id, actions) = p.a.connect("to-b", p.now).unwrap();
    p.run(actions);
    assert!(!established(&p.events_a));
    assert!(p.a.next_timeout().is_some());
    p.tick(Duration::from_secs(1));
    assert_eq!(p.a.counters().retransmits, 1);
    assert_eq!(p.b.counters().responses_resent, 1);
    assert!(established(&p.events_a) && established(&p.events_b));
    assert_eq!(p.a.state(id), Some(IkeState::Established));
}

#[test]
fn silent_peer_times_out() {
    let mut a = Engine::new(EngineConfig {
        peers: vec![peer(
            "to-b",
            A,
            Some(B),
            "aes128gcm16-prfsha256-x25519",
            "aes128gcm16",
            b"k",
        )],
        ..EngineConfig::default()
    })
    .unwrap();
    let mut now = Instant::now();
    let (id, _) = a.connect("to-b", now).unwrap();
    let mut sends = 1;
    let mut failed = None;
    for _ in 0..40 {
        now += Duration::from_secs(1);
        for action in a.handle_timeout(now) {
            match action {
                Action::Send { .. } => sends += 1,
                Action::Failed { reason, .. } => failed = Some(reason),
                _ => {}
            }
        }
    }
    assert_eq!(sends, 5);
    assert_eq!(failed, Some(Failure::Timeout));
    assert_eq!(a.state(id), None);
}

#[test]
fn delete_and_dpd() {
    let mut p = pair("aes128gcm16-prfsha256-x25519", "aes128gcm16");
    let id = p.connect();
    let actions = p.a.send_dpd(id, p.now).unwrap();
    p.run(actions);
    assert_eq!(p.a.state(id), Some(IkeState::Established));
    assert!(
        p.a.next_timeout().is_none(),
        "DPD answered, nothing outstanding"
    );

    let actions = p.a.delete_ike_sa(id, p.now).unwrap();
    p.run(actions);
    for events in [&p.events_a, &p.events_b] {
        assert!(events
            .iter()
            .any(|e| matches!(e, Action::DeleteChildSa { .. })));
        assert!(events.iter().any(|e| matches!(e, Action::Closed { .. })));
    }
    assert!(p.a.sas().is_empty() && p.b.sas().is_empty());
}

#[test]
fn half_open_sas_expire() {
    let mut p = pair("aes128gcm16-prfsha256-x25519", "aes128gcm16");
    p.drop_next_from_b = true;
    let (_, actions) = p.a.connect("to-b", p.now).unwrap();
    p.run(actions);
    assert_eq!(p.b.sas().len(), 1);
    let later = p.now + Duration::from_secs(31);
    p.b.handle_timeout(later);
    assert!(p.b.sas().is_empty());
    assert_eq!(p.b.counters().half_open_expired, 1);
}

/// Captures every datagram of a full exchange, for the fuzz-style tests.
fn transcript() -> Vec<Vec<u8>> {
    let mut p = pair("aes128-sha256-x25519", "aes128gcm16");
    let (_, actions) = p.a.connect("to-b", p.now).unwrap();
    let mut out = Vec::new();
    let mut pending: Vec<(bool, Vec<u8>)> = actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Send { bytes, .. } => Some((true, bytes)),
            _ => None,
        })
        .collect();
    while let Some((to_b, bytes)) = pending.pop() {
        out.push(bytes.clone());
        let (a, b) = (A.parse().unwrap(), B.parse().unwrap());
        let actions = if to_b {
            p.b.handle(&bytes, b, a, p.now)
        } else {
            p.a.handle(&bytes, a, b, p.now)
        };
        for action in actions {
            if let Action::Send { bytes, .. } = action {
                pending.push((!to_b, bytes));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn garbage_is_dropped_and_counted(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut b = Engine::new(EngineConfig {
            peers: vec![peer("from-a", B, None, "aes128gcm16-prfsha256-x25519", "aes128gcm16", b"k")],
            ..EngineConfig::default()
        }).unwrap();
        let now = Instant::now();
        let _ = b.handle(&data, B.parse().unwrap(), A.parse().unwrap(), now);
        let _ = b.handle(&data, "198.51.100.2:4500".parse().unwrap(), A.parse().unwrap(), now);
        prop_assert!(b.counters().rx_messages == 2);
    }

    #[test]
    fn mutated_exchange_never_panics(which in 0usize..4, flip in any::<(usize, u8)>(), cut in any::<usize>()) {
        let messages = transcript();
        let mut b = Engine::new(EngineConfig {
            peers: vec![peer("from-a", B, None, "aes128-sha256-x25519", "aes128gcm16", b"k")],
            ..EngineConfig::default()
        }).unwrap();
        let now = Instant::now();
        let mut m = messages[which % messages.len()].clone();
        let at = flip.0 % m.len();
        m[at] ^= flip.1 | 1;
        let _ = b.handle(&m, B.parse().unwrap(), A.parse().unwrap(), now);
        let truncated = &messages[which % messages.len()][..cut % messages[which % messages.len()].len()];
        let _ = b.handle(truncated, B.parse().unwrap(), A.parse().unwrap(), now);
        let _ = b.handle_timeout(now + Duration::from_secs(60));
    }
}
