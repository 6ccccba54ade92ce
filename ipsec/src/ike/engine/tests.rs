use super::*;
use crate::crypto::PrfAlgorithm;
use crate::crypto::SecretBytes;
use crate::esp::{decapsulate, encapsulate, Direction, OuterHeader, Sa};
use crate::ike::config::Identity;
use crate::ike::pool::PoolConfig;
use crate::ike::sk::seal_message;
use proptest::prelude::*;
use std::time::{Duration, SystemTime};

mod bytes;
mod certs;
mod fragments;
mod init_retransmissions;
mod initial_contact;
mod nat_and_proposals;
mod negative;
mod reconfigure;
mod reserved_id_octets;
mod rfc7296_negative;
mod rfc7296_review;

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
        certs: None,
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
        ike_lifetime: None,
        virtual_ips: Vec::new(),
        pool: None,
    }
}

struct Pair {
    a: Engine,
    b: Engine,
    now: Instant,
    /// The calendar time both ends check certificates against.
    wall: SystemTime,
    /// Simulated NAT in front of A: A's private address/port -> public.
    nat: Option<(SocketAddr, SocketAddr)>,
    drop_next_from_b: bool,
    events_a: Vec<Action>,
    events_b: Vec<Action>,
    /// The longest datagram either side sent after IKE_SA_INIT.
    max_sent: usize,
}

impl Pair {
    fn new(a_peer: PeerConfig, b_peer: PeerConfig) -> Self {
        Self::with_config(a_peer, b_peer, EngineConfig::default())
    }

    fn with_config(a_peer: PeerConfig, b_peer: PeerConfig, b_config: EngineConfig) -> Self {
        Self::with_configs(a_peer, b_peer, EngineConfig::default(), b_config)
    }

    fn with_configs(
        a_peer: PeerConfig,
        b_peer: PeerConfig,
        a_config: EngineConfig,
        b_config: EngineConfig,
    ) -> Self {
        Self {
            a: Engine::new(EngineConfig {
                peers: vec![a_peer],
                ..a_config
            })
            .unwrap(),
            b: Engine::new(EngineConfig {
                peers: vec![b_peer],
                ..b_config
            })
            .unwrap(),
            now: Instant::now(),
            wall: SystemTime::now(),
            nat: None,
            drop_next_from_b: false,
            events_a: Vec::new(),
            events_b: Vec::new(),
            max_sent: 0,
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
        self.run_both(from_a, Vec::new());
    }

    /// Delivers what both sides sent at once (A's first), then until both are quiet.
    fn run_both(&mut self, from_a: Vec<Action>, from_b: Vec<Action>) {
        let mut to_b = Vec::new();
        let mut to_a = Vec::new();
        self.absorb(from_a, true, &mut to_b, &mut to_a);
        self.absorb(from_b, false, &mut to_b, &mut to_a);
        for _ in 0..20 {
            if to_a.is_empty() && to_b.is_empty() {
                return;
            }
            for (local, remote, bytes) in std::mem::take(&mut to_b) {
                // Through the NAT: B sees A's public address.
                let out = self
                    .b
                    .handle(&bytes, remote, self.nat_out(local), self.now, self.wall);
                self.absorb(out, false, &mut to_b, &mut to_a);
            }
            for (local, remote, bytes) in std::mem::take(&mut to_a) {
                if self.drop_next_from_b {
                    self.drop_next_from_b = false;
                    continue;
                }
                let out = self
                    .a
                    .handle(&bytes, self.nat_in(remote), local, self.now, self.wall);
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
                    if Header::parse(&bytes).is_ok_and(|h| h.exchange != exchange::IKE_SA_INIT) {
                        self.max_sent = self.max_sent.max(bytes.len());
                    }
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
        self.wall += by;
        let a = self.a.handle_timeout(self.now);
        self.run(a);
        let b = self.b.handle_timeout(self.now);
        let mut to_b = Vec::new();
        let mut to_a = Vec::new();
        self.absorb(b, false, &mut to_b, &mut to_a);
        for (local, remote, bytes) in to_a {
            let out = self
                .a
                .handle(&bytes, self.nat_in(remote), local, self.now, self.wall);
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
fn initiator_refusing_the_responder_tells_it_and_both_forget_the_sa() {
    // B authenticates A and takes the SA as established; A expects another identity, refuses
    // B's AUTH and says so in an INFORMATIONAL of its own (RFC 7296 section 2.21.2), so B
    // does not keep a CHILD_SA nobody will use.
    let ike = "aes128gcm16-prfsha256-x25519";
    let mut a = peer("to-b", A, Some(B), ike, "aes128gcm16", b"secret");
    a.remote_id = Some(Identity::parse("@c.example"));
    let mut p = Pair::new(a, peer("from-a", B, None, ike, "aes128gcm16", b"secret"));
    let id = p.connect();
    assert_eq!(failure(&p.events_a), Some(Failure::AuthenticationFailed));
    assert!(established(&p.events_b), "B accepted A's AUTH first");
    assert_eq!(failure(&p.events_b), Some(Failure::AuthenticationFailed));
    let b_child = installs(&p.events_b);
    assert_eq!(b_child.len(), 1);
    assert!(p.events_b.iter().any(|e| matches!(e,
        Action::DeleteChildSa { inbound_spi, .. } if *inbound_spi == b_child[0].inbound.spi)));
    assert_eq!(p.a.state(id), None);
    assert!(p.b.sas().is_empty());
    assert_eq!(
        (p.a.counters().auth_failures, p.b.counters().auth_failures),
        (1, 1)
    );
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
    // The refusal is unauthenticated: A reports it once its retransmissions are spent
    // without a better answer (RFC 7296 section 2.21.1).
    assert_eq!(failure(&p.events_a), None);
    assert_eq!(p.b.counters().no_proposal_chosen, 1);
    for _ in 0..40 {
        p.tick(Duration::from_secs(1));
    }
    assert_eq!(
        failure(&p.events_a),
        Some(Failure::PeerError(notify::NO_PROPOSAL_CHOSEN))
    );
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

/// RFC 7296 3.10.1: ESP with an SPI we do not know is reported to its sender, found by its
/// address, in an INFORMATIONAL exchange carrying INVALID_SPI and the SPI; the sender
/// answers it and acts on nothing (the notification is only a hint).
#[test]
fn invalid_spi_is_reported_to_the_sender_of_the_esp() {
    let mut p = pair("aes128gcm16-prfsha256-x25519", "aes128gcm16");
    let id = p.connect();
    let b_addr = B.parse::<SocketAddr>().unwrap().ip();
    assert_eq!(p.a.established_sa_with(b_addr), Some(id));
    assert_eq!(p.a.established_sa_with(ip("198.51.100.77")), None);
    let events_b = p.events_b.len();
    let actions = p.a.report_invalid_spi(id, 0xdead_beef, p.now).unwrap();
    let sent: Vec<&Vec<u8>> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { bytes, .. } => Some(bytes),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 1, "{actions:?}");
    p.run(actions);
    // Answered: nothing outstanding on either side, both SAs and their CHILD_SAs stay.
    assert!(p.a.next_timeout().is_none(), "answered");
    assert_eq!(p.a.state(id), Some(IkeState::Established));
    assert_eq!(p.b.sas().len(), 1);
    assert!(
        !p.events_b[events_b..]
            .iter()
            .any(|e| matches!(e, Action::DeleteChildSa { .. } | Action::Closed { .. })),
        "{:?}",
        &p.events_b[events_b..]
    );
}

/// RFC 7296 section 2.4: with a DPD delay, a quiet peer is asked whether it is alive; an
/// answer keeps the SA, and a peer gone for good makes it fail once the retransmissions run
/// out (strongSwan's `dpd_delay`).
#[test]
fn quiet_peers_are_checked_and_dead_ones_detected() {
    let ike = "aes128gcm16-prfsha256-x25519";
    let config = EngineConfig {
        dpd_delay: Some(Duration::from_secs(30)),
        ..EngineConfig::default()
    };
    let mut p = Pair::with_configs(
        peer("to-b", A, Some(B), ike, "aes128gcm16", b"k"),
        peer("from-a", B, None, ike, "aes128gcm16", b"k"),
        config.clone(),
        EngineConfig::default(),
    );
    let id = p.connect();
    let established = p.now;
    assert!(p
        .a
        .next_timeout()
        .is_some_and(|t| t <= established + Duration::from_secs(30)));
    // Quiet for 29 s: nothing. At 30 s: an empty INFORMATIONAL, which B answers.
    p.now = established + Duration::from_secs(29);
    assert!(p.a.handle_timeout(p.now).is_empty());
    p.now = established + Duration::from_secs(30);
    let check = p.a.handle_timeout(p.now);
    assert_eq!(p.a.counters().dpd_sent, 1);
    p.run(check);
    assert_eq!(p.a.state(id), Some(IkeState::Established));
    assert!(failure(&p.events_a).is_none());
    // Then B is gone: the next check goes unanswered and the SA fails.
    let mut failed = None;
    for second in 31..200 {
        p.now = established + Duration::from_secs(second);
        if let Some(f) = failure(&p.a.handle_timeout(p.now)) {
            failed = Some(f);
            break;
        }
    }
    assert_eq!(failed, Some(Failure::Timeout));
    assert_eq!(p.a.state(id), None);
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
            p.b.handle(&bytes, b, a, p.now, p.wall)
        } else {
            p.a.handle(&bytes, a, b, p.now, p.wall)
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
        let (now, wall) = (Instant::now(), SystemTime::now());
        let _ = b.handle(&data, B.parse().unwrap(), A.parse().unwrap(), now, wall);
        let _ = b.handle(&data, "198.51.100.2:4500".parse().unwrap(), A.parse().unwrap(), now, wall);
        prop_assert!(b.counters().rx_messages == 2);
    }

    #[test]
    fn mutated_exchange_never_panics(which in 0usize..4, flip in any::<(usize, u8)>(), cut in any::<usize>()) {
        let messages = transcript();
        let mut b = Engine::new(EngineConfig {
            peers: vec![peer("from-a", B, None, "aes128-sha256-x25519", "aes128gcm16", b"k")],
            ..EngineConfig::default()
        }).unwrap();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut m = messages[which % messages.len()].clone();
        let at = flip.0 % m.len();
        m[at] ^= flip.1 | 1;
        let _ = b.handle(&m, B.parse().unwrap(), A.parse().unwrap(), now, wall);
        let truncated = &messages[which % messages.len()][..cut % messages[which % messages.len()].len()];
        let _ = b.handle(truncated, B.parse().unwrap(), A.parse().unwrap(), now, wall);
        let _ = b.handle_timeout(now + Duration::from_secs(60));
    }
}

/// A's side of a CREATE_CHILD_SA exchange, crafted here (the engine only answers them): the
/// request to B on A's IKE SA, and the payloads of B's response.
fn create_child(
    p: &mut Pair,
    id: IkeSaId,
    request: &[Payload],
) -> (Vec<Action>, Option<Vec<Payload>>) {
    exchange_on(p, id, exchange::CREATE_CHILD_SA, request)
}

/// Sends a request of `exchange_type` on A's IKE SA `id` to B: B's actions and its protected
/// answer, opened with A's keys (`None` without one).
fn exchange_on(
    p: &mut Pair,
    id: IkeSaId,
    exchange_type: u8,
    request: &[Payload],
) -> (Vec<Action>, Option<Vec<Payload>>) {
    let sa = p.a.sas.get_mut(&id.0).unwrap();
    let message_id = sa.next_request_id;
    sa.next_request_id += 1;
    sa.iv_counter += 1;
    let header = sa.header(exchange_type, message_id, false);
    let bytes = seal_message(header, request, sa.tx.as_ref().unwrap(), sa.iv_counter).unwrap();
    let (local, remote) = (sa.local, sa.remote);
    let actions = p.b.handle(&bytes, remote, local, p.now, p.wall);
    let response = actions.iter().find_map(|a| match a {
        Action::Send { bytes, .. } => Some(bytes.clone()),
        _ => None,
    });
    let payloads = response.and_then(|bytes| {
        let message = Message::parse(&bytes).ok()?;
        assert!(message.header.is_response());
        assert_eq!(message.header.message_id, message_id);
        let Some(&Payload::Encrypted {
            first_payload,
            offset,
        }) = message.payloads.last()
        else {
            return None;
        };
        let sa = p.a.sas.get(&id.0).unwrap();
        open_message(&bytes, offset, first_payload, sa.rx.as_ref().unwrap()).ok()
    });
    (actions, payloads)
}

/// Regression (strongSwan interop): strongSwan rekeys CHILD_SAs with CREATE_CHILD_SA (by
/// default every hour, with PFS when its ESP proposal names a group). The engine used to
/// refuse with NO_ADDITIONAL_SAS, so the tunnel died at the old SA's hard lifetime.
#[test]
fn create_child_sa_rekeys_with_and_without_pfs() {
    for pfs in [None, Some(DhGroup::Curve25519), Some(DhGroup::Modp2048)] {
        let esp = match pfs {
            Some(DhGroup::Modp2048) => "aes128-sha256-modp2048",
            Some(_) => "aes128gcm16-x25519",
            None => "aes128gcm16",
        };
        let mut p = pair("aes128gcm16-prfsha256-x25519", esp);
        let id = p.connect();
        let old = installs(&p.events_b)[0].clone();
        let new_spi = 0x0bad_cafe_u32;
        let nonce_i = vec![0x11u8; 32];
        let proposal = EspProposal::parse(esp).unwrap();
        let mut request = vec![
            Payload::Notify(Notify {
                protocol: protocol::ESP,
                // The SPI A receives on: B's outbound.
                spi: old.outbound.spi.to_be_bytes().to_vec(),
                kind: notify::REKEY_SA,
                data: Vec::new(),
            }),
            Payload::Sa(vec![proposal.to_wire(1, new_spi, pfs.is_some())]),
            Payload::Nonce(nonce_i.clone()),
        ];
        let private = pfs.map(|group| {
            let (private, public) = dh::generate(group, &ring::rand::SystemRandom::new()).unwrap();
            request.push(Payload::Ke {
                group: group.id(),
                data: public,
            });
            private
        });
        request.push(Payload::TsI(vec![ts("198.18.0.0", "198.18.0.255")]));
        request.push(Payload::TsR(vec![ts("198.19.0.0", "198.19.0.255")]));
        let (actions, response) = create_child(&mut p, id, &request);
        let response = response.expect("an encrypted response");
        let install = installs(&actions)
            .first()
            .map(|i| (*i).clone())
            .unwrap_or_else(|| panic!("{esp}: no new CHILD_SA: {response:?}"));
        // B's answer: its new SPI, its nonce, its KE when PFS was asked for.
        let answer_spi = response.iter().find_map(|p| match p {
            Payload::Sa(s) => Some(u32::from_be_bytes(s[0].spi.clone().try_into().unwrap())),
            _ => None,
        });
        assert_eq!(answer_spi, Some(install.inbound.spi));
        assert_ne!(install.inbound.spi, old.inbound.spi, "a new SPI");
        assert_eq!(install.outbound.spi, new_spi);
        let nonce_r = response
            .iter()
            .find_map(|p| match p {
                Payload::Nonce(n) => Some(n.clone()),
                _ => None,
            })
            .unwrap();
        let shared = private.map(|private| {
            let ke = response
                .iter()
                .find_map(|p| match p {
                    Payload::Ke { data, .. } => Some(data.clone()),
                    _ => None,
                })
                .expect("KEr with PFS");
            private.agree(&ke).unwrap()
        });
        // A's keys, by RFC 7296 section 2.17: KEYMAT = prf+(SK_d, [g^ir] | Ni | Nr).
        let sk_d = p.a.sk_d_for_test(id).unwrap();
        let suite = proposal::select_esp(
            &[proposal.to_wire(1, 0x1000, false)],
            std::slice::from_ref(&proposal),
        )
        .unwrap()
        .2;
        let (i2r, r2i) = derive_child_keys(
            PrfAlgorithm::HmacSha256,
            &sk_d,
            shared.as_ref(),
            &nonce_i,
            &nonce_r,
            &suite,
        )
        .unwrap();
        assert_eq!(install.inbound.keys, i2r, "{esp}");
        assert_eq!(install.outbound.keys, r2i, "{esp}");
        // Both SAs live until A deletes the old one.
        let b_sa = p.b.sas.values().next().unwrap();
        assert_eq!(b_sa.children.len(), 2);
    }
}

#[test]
fn create_child_sa_refusals() {
    let mut p = pair("aes128gcm16-prfsha256-x25519", "aes128gcm16");
    let id = p.connect();
    let request = |spi: u32, esp: &str| {
        vec![
            Payload::Notify(Notify {
                protocol: protocol::ESP,
                spi: spi.to_be_bytes().to_vec(),
                kind: notify::REKEY_SA,
                data: Vec::new(),
            }),
            Payload::Sa(vec![EspProposal::parse(esp)
                .unwrap()
                .to_wire(1, 0x1234, false)]),
            Payload::Nonce(vec![1; 32]),
            Payload::TsI(vec![ts("198.18.0.0", "198.18.0.255")]),
            Payload::TsR(vec![ts("198.19.0.0", "198.19.0.255")]),
        ]
    };
    let error = |payloads: Option<Vec<Payload>>| {
        payloads.and_then(|ps| {
            ps.iter().find_map(|p| match p {
                Payload::Notify(n) if n.is_error() => Some(n.kind),
                _ => None,
            })
        })
    };
    let known = installs(&p.events_b)[0].outbound.spi;
    let (actions, response) = create_child(&mut p, id, &request(0xdead_beef, "aes128gcm16"));
    assert!(installs(&actions).is_empty());
    assert_eq!(error(response), Some(notify::CHILD_SA_NOT_FOUND));
    let (actions, response) = create_child(&mut p, id, &request(known, "aes256-sha512"));
    assert!(installs(&actions).is_empty());
    assert_eq!(error(response), Some(notify::NO_PROPOSAL_CHOSEN));
    // An IKE SA rekey without a KE payload: B asks for its group; the SA lives on.
    let ike = IkeProposal::parse("aes128gcm16-prfsha256-x25519").unwrap();
    let (_, response) = create_child(
        &mut p,
        id,
        &[
            Payload::Sa(vec![ike.to_wire(1, &[7; 8])]),
            Payload::Nonce(vec![2; 32]),
        ],
    );
    assert_eq!(error(response), Some(notify::INVALID_KE_PAYLOAD));
    assert_eq!(p.b.sas().len(), 1);
}

/// Regression (strongSwan interop): strongSwan rekeys the IKE SA (by default every 4 hours);
/// the engine refused with NO_ADDITIONAL_SAS and strongSwan deleted the IKE SA, with every
/// tunnel, when its time ran out. Now the new IKE SA takes the CHILD_SAs over, the old one
/// goes without them, and the new keys are the RFC 7296 section 2.18 ones.
#[test]
fn ike_sa_rekey_moves_the_child_sas_to_the_new_sa() {
    let ike = "aes256-sha256-ecp256";
    let mut p = pair(ike, "aes128gcm16");
    let id = p.connect();
    let child = installs(&p.events_b)[0].clone();
    let proposal = IkeProposal::parse(ike).unwrap();
    let new_spi_i = 0x1111_2222_3333_4444u64;
    let nonce_i = vec![0x22u8; 32];
    let (private, public) =
        dh::generate(DhGroup::Ecp256, &ring::rand::SystemRandom::new()).unwrap();
    let request = [
        Payload::Sa(vec![proposal.to_wire(1, &new_spi_i.to_be_bytes())]),
        Payload::Nonce(nonce_i.clone()),
        Payload::Ke {
            group: DhGroup::Ecp256.id(),
            data: public,
        },
    ];
    let (actions, response) = create_child(&mut p, id, &request);
    let response = response.expect("an answer");
    assert!(matches!(
        actions
            .iter()
            .find(|a| matches!(a, Action::Established { .. })),
        Some(Action::Established { .. })
    ));
    let (new_spi_r, nonce_r, ke_r) = {
        let mut spi = None;
        let mut nonce = None;
        let mut ke = None;
        for payload in &response {
            match payload {
                Payload::Sa(s) => {
                    spi = Some(u64::from_be_bytes(s[0].spi.clone().try_into().unwrap()))
                }
                Payload::Nonce(n) => nonce = Some(n.clone()),
                Payload::Ke { data, .. } => ke = Some(data.clone()),
                _ => {}
            }
        }
        (spi.unwrap(), nonce.unwrap(), ke.unwrap())
    };
    assert_eq!(p.b.sas().len(), 2, "old and new until the old is deleted");
    // A's view of the new SA's keys.
    let shared = private.agree(&ke_r).unwrap();
    let old_sk_d = p.a.sk_d_for_test(id).unwrap();
    let suite = proposal::select_ike(&[proposal.to_wire(1, &[])], std::slice::from_ref(&proposal))
        .unwrap()
        .1;
    let keys = derive_rekeyed_ike_keys(
        &suite,
        PrfAlgorithm::HmacSha256,
        &old_sk_d,
        &nonce_i,
        &nonce_r,
        &shared,
        new_spi_i,
        new_spi_r,
    )
    .unwrap();
    let backend = SoftwareBackend::new();
    let tx = SkCipher::new(
        &backend,
        suite.encryption,
        suite.integrity,
        &keys.sk_ei,
        &keys.sk_ai,
    )
    .unwrap();
    let rx = SkCipher::new(
        &backend,
        suite.encryption,
        suite.integrity,
        &keys.sk_er,
        &keys.sk_ar,
    )
    .unwrap();
    // A deletes the old IKE SA: B closes it, and no CHILD_SA goes with it.
    let delete = [Payload::Delete {
        protocol: protocol::IKE,
        spis: Vec::new(),
    }];
    let actions = request_on(&mut p, id, exchange::INFORMATIONAL, &delete);
    assert!(actions.iter().any(|a| matches!(a, Action::Closed { .. })));
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::DeleteChildSa { .. })));
    assert_eq!(p.b.sas().len(), 1);
    // A liveness check on the new SA, with the new keys: answered; then A deletes the
    // CHILD_SA there, and B names its side of it.
    let (a_local, b_local) = {
        let sa = p.a.sas.get(&id.0).unwrap();
        (sa.local, sa.remote)
    };
    let header = |message_id| Header {
        spi_i: new_spi_i,
        spi_r: new_spi_r,
        next_payload: 0,
        version: VERSION,
        exchange: exchange::INFORMATIONAL,
        flags: FLAG_INITIATOR,
        message_id,
        length: 0,
    };
    let bytes = seal_message(header(0), &[], &tx, 1).unwrap();
    let out = p.b.handle(&bytes, b_local, a_local, p.now, p.wall);
    let answer = out.iter().find_map(|a| match a {
        Action::Send { bytes, .. } => Some(bytes.clone()),
        _ => None,
    });
    let answer = answer.expect("DPD answered on the new SA");
    let message = Message::parse(&answer).unwrap();
    let Some(&Payload::Encrypted {
        first_payload,
        offset,
    }) = message.payloads.last()
    else {
        panic!("not encrypted");
    };
    assert!(
        open_message(&answer, offset, first_payload, &rx).is_ok(),
        "new keys agree"
    );
    let delete_child = [Payload::Delete {
        protocol: protocol::ESP,
        spis: vec![child.outbound.spi.to_be_bytes().to_vec()],
    }];
    let bytes = seal_message(header(1), &delete_child, &tx, 2).unwrap();
    let out = p.b.handle(&bytes, b_local, a_local, p.now, p.wall);
    assert!(out.iter().any(|a| matches!(
        a,
        Action::DeleteChildSa { inbound_spi, .. } if *inbound_spi == child.inbound.spi
    )));
    assert_eq!(p.b.counters().ike_sas_rekeyed, 1);
}

/// Sends a request of `exchange_type` on A's IKE SA `id` to B; B's actions.
fn request_on(p: &mut Pair, id: IkeSaId, exchange_type: u8, request: &[Payload]) -> Vec<Action> {
    let sa = p.a.sas.get_mut(&id.0).unwrap();
    let message_id = sa.next_request_id;
    sa.next_request_id += 1;
    sa.iv_counter += 1;
    let header = sa.header(exchange_type, message_id, false);
    let bytes = seal_message(header, request, sa.tx.as_ref().unwrap(), sa.iv_counter).unwrap();
    let (local, remote) = (sa.local, sa.remote);
    p.b.handle(&bytes, remote, local, p.now, p.wall)
}

// ---------------------------------------------------------------- virtual IPs (RFC 7296 2.19)

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A host (A) asking for a virtual IP of each family in `vips` and a hub (B) with `pool` as
/// its pool (none: a hub without Configuration payload support).
fn vip_pair(vips: &[&str], pool: Option<&str>) -> Pair {
    let ike = "aes128gcm16-prfsha256-x25519";
    let mut a = peer("to-b", A, Some(B), ike, "aes128gcm16", b"k");
    a.virtual_ips = vips.iter().map(|v| ip(v)).collect();
    a.local_ts = a
        .virtual_ips
        .iter()
        .map(|v| crate::ike::cp::any_selector(v.is_ipv6()))
        .collect();
    let mut b = peer("from-a", B, None, ike, "aes128gcm16", b"k");
    b.remote_id = None;
    b.pool = pool.map(|_| "hub/pool".to_string());
    b.local_ts.push(ts("2001:db8:19::", "2001:db8:19::ffff"));
    let mut a_config = a;
    a_config
        .remote_ts
        .push(ts("2001:db8:19::", "2001:db8:19::ffff"));
    let pools = pool
        .map(|p| vec![PoolConfig::parse("hub/pool", p, "198.18.0.53,2001:db8::53").unwrap()])
        .unwrap_or_default();
    Pair::with_config(
        a_config,
        b,
        EngineConfig {
            pools,
            ..EngineConfig::default()
        },
    )
}

fn child_failure(events: &[Action]) -> Option<Failure> {
    events.iter().find_map(|e| match e {
        Action::ChildFailed { reason, .. } => Some(*reason),
        _ => None,
    })
}

#[test]
fn a_virtual_ip_from_the_pool_narrows_the_child_sa_and_comes_back_on_reconnect() {
    let mut p = vip_pair(
        &["0.0.0.0", "::"],
        Some("198.18.100.0/30, 2001:db8:100::/126"),
    );
    let id = p.connect();
    assert!(established(&p.events_a) && established(&p.events_b));
    let (a, b) = (installs(&p.events_a)[0], installs(&p.events_b)[0]);
    let vips = vec![ip("198.18.100.1"), ip("2001:db8:100::1")];
    assert_eq!(a.local_vips, vips);
    assert_eq!(b.remote_vips, vips);
    assert!(a.remote_vips.is_empty() && b.local_vips.is_empty());
    // Each side of the CHILD_SA is the host's virtual IP alone.
    let hosts: Vec<TrafficSelector> = vips
        .iter()
        .map(|v| crate::ike::cp::host_selector(*v))
        .collect();
    assert_eq!(a.local_ts, hosts);
    assert_eq!(b.remote_ts, hosts);
    esp_round_trip(a, b);
    let leased = p.b.virtual_ips();
    assert_eq!(leased.len(), 2);
    assert_eq!(leased[0].pool.as_deref(), Some("hub/pool"));
    assert_eq!(leased[0].peer, "from-a");
    let assigned = p.a.virtual_ips();
    assert_eq!(assigned.len(), 2);
    assert_eq!((assigned[0].ike_sa, assigned[0].pool.clone()), (id, None));
    assert_eq!(p.b.counters().virtual_ips_leased, 2);
    let status = &p.b.pools()[0];
    assert_eq!((status.online, status.offline, status.size), (2, 0, 4));

    // The host goes: the lease is remembered for its identity ...
    let actions = p.a.delete_ike_sa(id, p.now).unwrap();
    p.run(actions);
    let status = &p.b.pools()[0];
    assert_eq!((status.online, status.offline), (0, 2));
    assert!(p.b.virtual_ips().is_empty());
    // ... and it gets the same addresses when it comes back.
    p.events_a.clear();
    p.events_b.clear();
    p.connect();
    assert_eq!(installs(&p.events_a)[0].local_vips, vips);
}

#[test]
fn an_exhausted_pool_answers_internal_address_failure_and_the_ike_sa_stays() {
    let mut p = vip_pair(&["0.0.0.0"], Some("198.18.100.9"));
    p.connect();
    assert_eq!(installs(&p.events_a).len(), 1);
    // A second IKE SA of the same host while the first holds the only address.
    p.events_a.clear();
    p.events_b.clear();
    let second = p.connect();
    assert!(established(&p.events_a) && established(&p.events_b));
    assert!(installs(&p.events_a).is_empty() && installs(&p.events_b).is_empty());
    assert_eq!(
        child_failure(&p.events_a),
        Some(Failure::PeerError(notify::INTERNAL_ADDRESS_FAILURE))
    );
    assert_eq!(
        child_failure(&p.events_b),
        Some(Failure::PeerError(notify::INTERNAL_ADDRESS_FAILURE))
    );
    assert_eq!(p.b.counters().internal_address_failures, 1);
    assert_eq!(p.a.state(second), Some(IkeState::Established));
    assert_eq!(p.b.sas().len(), 2, "both IKE SAs stay");
    assert_eq!(p.b.pools()[0].online, 1);

    // A pool without the family asked for fails the same way (RFC 7296 section 3.15.4).
    let mut p = vip_pair(&["::"], Some("198.18.100.0/24"));
    p.connect();
    assert_eq!(
        child_failure(&p.events_a),
        Some(Failure::PeerError(notify::INTERNAL_ADDRESS_FAILURE))
    );
}

#[test]
fn a_hub_without_a_pool_ignores_the_request_and_the_host_fails_the_child_sa_cleanly() {
    let mut p = vip_pair(&["0.0.0.0"], None);
    let id = p.connect();
    assert!(established(&p.events_a) && established(&p.events_b));
    // B made its CHILD_SA as usual (no CP in its answer) ...
    assert_eq!(installs(&p.events_b).len(), 1);
    assert!(p.b.virtual_ips().is_empty());
    // ... A had no address for its side: no CHILD_SA, and it has B delete its one.
    assert!(installs(&p.events_a).is_empty());
    assert_eq!(child_failure(&p.events_a), Some(Failure::NoVirtualIp));
    assert_eq!(p.a.counters().virtual_ip_failures, 1);
    assert!(p
        .events_b
        .iter()
        .any(|e| matches!(e, Action::DeleteChildSa { .. })));
    assert_eq!(p.a.state(id), Some(IkeState::Established));
    assert_eq!(p.b.sas().len(), 1);
    assert!(p.a.next_timeout().is_none(), "the delete was answered");
}

#[test]
fn a_host_lost_to_dead_peer_detection_releases_its_lease() {
    let mut p = vip_pair(&["0.0.0.0"], Some("198.18.100.0/24"));
    p.connect();
    let b_id = p.b.sas()[0].0;
    // B checks on A, which no longer answers: after the retransmissions the SA is dead.
    let _ = p.b.send_dpd(b_id, p.now).unwrap();
    let mut failed = None;
    for _ in 0..40 {
        p.now += Duration::from_secs(1);
        for action in p.b.handle_timeout(p.now) {
            if let Action::Failed { reason, .. } = action {
                failed = Some(reason);
            }
        }
    }
    assert_eq!(failed, Some(Failure::Timeout));
    assert!(p.b.sas().is_empty());
    let status = &p.b.pools()[0];
    assert_eq!((status.online, status.offline), (0, 1));
    assert!(p.b.virtual_ips().is_empty());
}

/// Runs an IKE SA set-up in which B's IKE_AUTH answer is rewritten by `edit` (decrypted with
/// A's keys, sealed again with B's) before A reads it.
fn with_edited_auth_answer(p: &mut Pair, edit: impl Fn(&mut Vec<Payload>)) -> IkeSaId {
    let (id, actions) = p.a.connect("to-b", p.now).unwrap();
    let (a_addr, b_addr): (SocketAddr, SocketAddr) = (A.parse().unwrap(), B.parse().unwrap());
    let mut to_b: Vec<Vec<u8>> = actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Send { bytes, .. } => Some(bytes),
            _ => None,
        })
        .collect();
    for _ in 0..4 {
        let mut to_a = Vec::new();
        for bytes in to_b.drain(..) {
            for action in p.b.handle(&bytes, b_addr, a_addr, p.now, p.wall) {
                match action {
                    Action::Send { bytes, .. } => to_a.push(bytes),
                    other => p.events_b.push(other),
                }
            }
        }
        for mut bytes in to_a {
            let message = Message::parse(&bytes).unwrap();
            if message.header.exchange == exchange::IKE_AUTH {
                let Some(&Payload::Encrypted {
                    first_payload,
                    offset,
                }) = message.payloads.last()
                else {
                    panic!("not encrypted");
                };
                let a_sa = p.a.sas.get(&id.0).unwrap();
                let mut payloads =
                    open_message(&bytes, offset, first_payload, a_sa.rx.as_ref().unwrap()).unwrap();
                edit(&mut payloads);
                let b_sa = p.b.sas.get(&message.header.spi_r).unwrap();
                bytes =
                    seal_message(message.header, &payloads, b_sa.tx.as_ref().unwrap(), 99).unwrap();
            }
            for action in p.a.handle(&bytes, a_addr, b_addr, p.now, p.wall) {
                match action {
                    Action::Send { bytes, .. } => to_b.push(bytes),
                    other => p.events_a.push(other),
                }
            }
        }
    }
    id
}

#[test]
fn garbage_configuration_replies_fail_the_child_sa_not_the_engine() {
    let garbage: Vec<Vec<crate::ike::wire::ConfigAttribute>> = vec![
        vec![],
        vec![crate::ike::wire::ConfigAttribute {
            kind: cfg::INTERNAL_IP4_ADDRESS,
            value: vec![198, 18, 100],
        }],
        vec![crate::ike::wire::ConfigAttribute {
            kind: cfg::INTERNAL_IP4_ADDRESS,
            value: vec![127, 0, 0, 1],
        }],
        vec![crate::ike::wire::ConfigAttribute {
            kind: cfg::INTERNAL_IP4_ADDRESS,
            value: vec![255, 255, 255, 255],
        }],
        // An address of the family not asked for.
        vec![crate::ike::wire::ConfigAttribute {
            kind: cfg::INTERNAL_IP6_ADDRESS,
            value: [
                &"2001:db8::1"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets()[..],
                &[128],
            ]
            .concat(),
        }],
    ];
    for (n, attributes) in garbage.into_iter().enumerate() {
        let mut p = vip_pair(&["0.0.0.0"], Some("198.18.100.0/24"));
        let id = with_edited_auth_answer(&mut p, |payloads| {
            for payload in payloads.iter_mut() {
                if let Payload::Cp { attributes: a, .. } = payload {
                    *a = attributes.clone();
                }
            }
        });
        assert!(established(&p.events_a), "case {n}");
        assert_eq!(
            child_failure(&p.events_a),
            Some(Failure::NoVirtualIp),
            "case {n}"
        );
        assert!(installs(&p.events_a).is_empty(), "case {n}");
        assert_eq!(p.a.counters().virtual_ip_failures, 1, "case {n}");
        assert_eq!(p.a.state(id), Some(IkeState::Established), "case {n}");
        assert!(p.a.virtual_ips().is_empty(), "case {n}");
        if n == 1 || n == 2 || n == 3 {
            assert_eq!(p.a.counters().cp_malformed, 1, "case {n}");
        }
    }
    // No Configuration payload at all.
    let mut p = vip_pair(&["0.0.0.0"], Some("198.18.100.0/24"));
    with_edited_auth_answer(&mut p, |payloads| {
        payloads.retain(|p| !matches!(p, Payload::Cp { .. }))
    });
    assert_eq!(child_failure(&p.events_a), Some(Failure::NoVirtualIp));
    // A reply that widens the host's side past its address: narrowed back to it.
    let mut p = vip_pair(&["0.0.0.0"], Some("198.18.100.0/24"));
    with_edited_auth_answer(&mut p, |payloads| {
        for payload in payloads.iter_mut() {
            if let Payload::TsI(t) = payload {
                *t = vec![crate::ike::cp::any_selector(false)];
            }
        }
    });
    let a = installs(&p.events_a)[0];
    assert_eq!(
        a.local_ts,
        vec![crate::ike::cp::host_selector(ip("198.18.100.1"))]
    );
}

#[test]
fn malformed_configuration_requests_are_counted_and_served_by_what_is_left() {
    let mut p = vip_pair(&["0.0.0.0"], Some("198.18.100.0/24"));
    p.connect();
    // The responder's request handling, called on B's SA with a crafted request.
    let b_id = *p.b.sas.keys().next().unwrap();
    let request = [Payload::Cp {
        cfg_type: cfg::REQUEST,
        attributes: vec![
            crate::ike::wire::ConfigAttribute {
                kind: cfg::INTERNAL_IP4_ADDRESS,
                value: vec![1, 2],
            },
            crate::ike::wire::ConfigAttribute {
                kind: cfg::INTERNAL_IP6_DNS,
                value: vec![],
            },
        ],
    }];
    let owner = crate::ike::Identity::parse("@a.example").to_wire();
    let before = p.b.counters().cp_malformed;
    let answer = p.b.serve_cfg_request(b_id, &owner, &request);
    assert_eq!(p.b.counters().cp_malformed, before + 1);
    // No address asked for (the only one was malformed): DNS only, no lease.
    match answer {
        virtual_ip::CfgAnswer::Reply { payload, leased } => {
            assert!(leased.is_empty());
            let Payload::Cp { attributes, .. } = payload else {
                panic!("not a CP payload");
            };
            assert_eq!(attributes.len(), 1);
            assert_eq!(attributes[0].kind, cfg::INTERNAL_IP6_DNS);
        }
        _ => panic!("expected a DNS-only reply"),
    }
}

/// The lease follows the CHILD_SAs when the host rekeys the IKE SA, and a CHILD_SA the host
/// adds on it is narrowed to its address too.
#[test]
fn leases_survive_ike_sa_rekeys_and_bound_new_child_sas() {
    let mut p = vip_pair(&["0.0.0.0"], Some("198.18.100.0/24"));
    let id = p.connect();
    let vip = ip("198.18.100.1");
    // A new CHILD_SA asking for everything: B gives the host its address only.
    let request = vec![
        Payload::Sa(vec![EspProposal::parse("aes128gcm16")
            .unwrap()
            .to_wire(1, 0x4242, false)]),
        Payload::Nonce(vec![3; 32]),
        Payload::TsI(vec![crate::ike::cp::any_selector(false)]),
        Payload::TsR(vec![ts("198.19.0.0", "198.19.0.255")]),
    ];
    let (actions, _) = create_child(&mut p, id, &request);
    let install = installs(&actions)[0].clone();
    assert_eq!(install.remote_ts, vec![crate::ike::cp::host_selector(vip)]);
    assert_eq!(install.remote_vips, vec![vip]);
    // The IKE SA rekey, then the old SA's delete: the lease stays, on the new SA.
    let ike = IkeProposal::parse("aes128gcm16-prfsha256-x25519").unwrap();
    let (_, public) = dh::generate(DhGroup::Curve25519, &ring::rand::SystemRandom::new()).unwrap();
    let rekey = [
        Payload::Sa(vec![ike.to_wire(1, &0x5555_6666_7777_8888u64.to_be_bytes())]),
        Payload::Nonce(vec![4; 32]),
        Payload::Ke {
            group: DhGroup::Curve25519.id(),
            data: public,
        },
    ];
    let (_, response) = create_child(&mut p, id, &rekey);
    assert!(response.is_some());
    let delete = [Payload::Delete {
        protocol: protocol::IKE,
        spis: Vec::new(),
    }];
    let actions = request_on(&mut p, id, exchange::INFORMATIONAL, &delete);
    assert!(actions.iter().any(|a| matches!(a, Action::Closed { .. })));
    assert_eq!(p.b.sas().len(), 1);
    let status = &p.b.pools()[0];
    assert_eq!((status.online, status.offline), (1, 0));
    let leased = p.b.virtual_ips();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].address, vip);
    assert_eq!(leased[0].ike_sa, p.b.sas()[0].0, "held by the new SA");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Whatever attributes a CFG_REPLY carries, the host either gets an address from it or
    /// fails the CHILD_SA; the engine never panics.
    #[test]
    fn any_configuration_reply_is_survived(
        list in proptest::collection::vec((0u16..12, proptest::collection::vec(any::<u8>(), 0..20)), 0..12)
    ) {
        let mut p = vip_pair(&["0.0.0.0", "::"], Some("198.18.100.0/24"));
        let attributes: Vec<crate::ike::wire::ConfigAttribute> = list
            .into_iter()
            .map(|(kind, value)| crate::ike::wire::ConfigAttribute { kind, value })
            .collect();
        with_edited_auth_answer(&mut p, |payloads| {
            for payload in payloads.iter_mut() {
                if let Payload::Cp { attributes: a, .. } = payload {
                    *a = attributes.clone();
                }
            }
        });
        prop_assert!(established(&p.events_a));
        let installed = installs(&p.events_a);
        match installed.first() {
            Some(i) => prop_assert!(!i.local_vips.is_empty()),
            None => prop_assert!(child_failure(&p.events_a).is_some()),
        }
    }
}

// ---------------------------------------------------------------- our CHILD_SA rekeys

fn lifetime(soft_secs: u64, hard_secs: u64) -> crate::esp::Lifetime {
    crate::esp::Lifetime {
        soft_time: Some(soft_secs * 1_000_000_000),
        hard_time: Some(hard_secs * 1_000_000_000),
        ..Default::default()
    }
}

/// A pair where A's CHILD_SAs live `soft`/`hard` seconds and B's forever (so only A rekeys).
fn lifetime_pair(esp: &str, soft: u64, hard: u64) -> Pair {
    let mut a = peer(
        "to-b",
        A,
        Some(B),
        "aes128gcm16-prfsha256-x25519",
        esp,
        b"pw",
    );
    a.child_lifetime = lifetime(soft, hard);
    let b = peer(
        "from-a",
        B,
        None,
        "aes128gcm16-prfsha256-x25519",
        esp,
        b"pw",
    );
    Pair::new(a, b)
}

fn deleted(events: &[Action]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Action::DeleteChildSa { inbound_spi, .. } => Some(*inbound_spi),
            _ => None,
        })
        .collect()
}

fn children(engine: &Engine) -> Vec<(u32, u32)> {
    let sa = engine.sas.values().next().expect("an IKE SA");
    sa.children
        .iter()
        .map(|c| (c.inbound_spi, c.outbound_spi))
        .collect()
}

fn set_rekey_at(engine: &mut Engine, at: Option<Instant>) {
    for sa in engine.sas.values_mut() {
        for child in &mut sa.children {
            child.rekey_at = at;
        }
    }
}

/// Issue 8: a CHILD_SA is rekeyed by us at its soft lifetime (less up to a tenth), with
/// PFS when the proposal names a group; the new pair carries ESP and the old one is deleted
/// on both sides.
#[test]
fn our_child_sa_is_rekeyed_at_its_soft_lifetime_and_the_old_one_deleted() {
    for esp in [
        "aes128gcm16",
        "aes128gcm16-x25519",
        "aes128-sha256-modp2048",
    ] {
        let mut p = lifetime_pair(esp, 100, 110);
        let id = p.connect();
        let start = p.now;
        let old = installs(&p.events_a)[0].clone();
        let due = p.a.next_timeout().expect("a rekey timer");
        assert!(due > start + Duration::from_secs(89) && due <= start + Duration::from_secs(100));
        assert_eq!(p.b.next_timeout(), None, "B has no lifetime");
        p.tick(Duration::from_secs(100));
        let (a_new, b_new) = (installs(&p.events_a), installs(&p.events_b));
        assert_eq!((a_new.len(), b_new.len()), (2, 2), "{esp}");
        let (a_new, b_new) = (a_new[1].clone(), b_new[1].clone());
        assert_ne!(a_new.inbound.spi, old.inbound.spi);
        assert_eq!(a_new.outbound.spi, b_new.inbound.spi);
        assert_eq!(a_new.local_ts, old.local_ts);
        esp_round_trip(&a_new, &b_new);
        assert_eq!(deleted(&p.events_a), vec![old.inbound.spi], "{esp}");
        assert_eq!(deleted(&p.events_b), vec![old.outbound.spi], "{esp}");
        assert_eq!(
            children(&p.a),
            vec![(a_new.inbound.spi, a_new.outbound.spi)]
        );
        assert_eq!(
            children(&p.b),
            vec![(b_new.inbound.spi, b_new.outbound.spi)]
        );
        assert_eq!(p.a.counters().child_rekeys_started, 1);
        assert_eq!(p.b.counters().child_sas_rekeyed, 1);
        assert_eq!(p.a.state(id), Some(IkeState::Established));
        // The successor has timers of its own.
        assert!(p.a.next_timeout().is_some_and(|t| t > p.now));
    }
}

/// RFC 7296 section 2.8.1: both ends rekey the same CHILD_SA at once. Each answers the
/// other; the SA whose exchange has the lowest of the four nonces is deleted by the end
/// that started that exchange, the old one by the other, and one working pair is left.
#[test]
fn simultaneous_child_sa_rekeys_leave_one_pair() {
    for _ in 0..8 {
        let mut a = peer(
            "to-b",
            A,
            Some(B),
            "aes128gcm16-prfsha256-x25519",
            "aes128gcm16-x25519",
            b"pw",
        );
        a.child_lifetime = lifetime(100, 110);
        let mut b = peer(
            "from-a",
            B,
            None,
            "aes128gcm16-prfsha256-x25519",
            "aes128gcm16-x25519",
            b"pw",
        );
        b.child_lifetime = lifetime(100, 110);
        let mut p = Pair::new(a, b);
        p.connect();
        let old = installs(&p.events_a)[0].clone();
        p.now += Duration::from_secs(95);
        let now = p.now;
        set_rekey_at(&mut p.a, Some(now));
        set_rekey_at(&mut p.b, Some(now));
        let from_a = p.a.handle_timeout(now);
        let from_b = p.b.handle_timeout(now);
        p.run_both(from_a, from_b);
        assert_eq!(p.a.counters().child_rekey_collisions, 1);
        assert_eq!(p.b.counters().child_rekey_collisions, 1);
        let (a_children, b_children) = (children(&p.a), children(&p.b));
        assert_eq!(a_children.len(), 1, "{a_children:?}");
        assert_eq!(b_children.len(), 1, "{b_children:?}");
        assert_eq!(a_children[0], (b_children[0].1, b_children[0].0));
        assert_ne!(a_children[0].0, old.inbound.spi);
        let a_kept = installs(&p.events_a)
            .into_iter()
            .find(|i| i.inbound.spi == a_children[0].0)
            .unwrap()
            .clone();
        let b_kept = installs(&p.events_b)
            .into_iter()
            .find(|i| i.inbound.spi == b_children[0].0)
            .unwrap()
            .clone();
        esp_round_trip(&a_kept, &b_kept);
        // Three pairs were made or existed; two are gone on each side.
        assert_eq!(deleted(&p.events_a).len(), 2);
        assert_eq!(deleted(&p.events_b).len(), 2);
    }
}

/// The peer answers TEMPORARY_FAILURE (it is deleting the SA, or busy): we try again a
/// little later. CHILD_SA_NOT_FOUND: the SA is gone there, so it goes here too, and the
/// IKE SA stays.
#[test]
fn refused_child_sa_rekeys_are_retried_or_given_up() {
    let mut p = lifetime_pair("aes128gcm16", 100, 110);
    let id = p.connect();
    let (b_in, _) = children(&p.b)[0];
    p.b.sas.values_mut().next().unwrap().pending = Some(Pending::ChildDelete(vec![b_in]));
    p.tick(Duration::from_secs(100));
    assert_eq!(p.a.counters().child_rekey_failures, 1);
    assert_eq!(children(&p.a).len(), 1);
    let retry = p.a.next_timeout().expect("a retry");
    assert!(retry > p.now && retry <= p.now + Duration::from_secs(4));
    p.b.sas.values_mut().next().unwrap().pending = None;
    p.tick(Duration::from_secs(4));
    assert_eq!(installs(&p.events_a).len(), 2, "retried and rekeyed");
    assert_eq!(children(&p.a).len(), 1);

    let mut p = lifetime_pair("aes128gcm16", 100, 110);
    p.connect();
    p.b.sas.values_mut().next().unwrap().children.clear();
    let (a_in, _) = children(&p.a)[0];
    p.tick(Duration::from_secs(100));
    assert_eq!(deleted(&p.events_a), vec![a_in]);
    assert!(children(&p.a).is_empty());
    assert!(p
        .a
        .sas()
        .iter()
        .all(|(_, _, s)| *s == IkeState::Established));
    let _ = id;
}

/// A CHILD_SA that reaches its hard lifetime unreplaced is deleted, and the peer told.
#[test]
fn a_child_sa_past_its_hard_lifetime_is_deleted() {
    let mut p = lifetime_pair("aes128gcm16", 100, 110);
    p.connect();
    let (a_in, a_out) = children(&p.a)[0];
    set_rekey_at(&mut p.a, None);
    p.tick(Duration::from_secs(109));
    assert!(deleted(&p.events_a).is_empty());
    p.tick(Duration::from_secs(1));
    assert_eq!(deleted(&p.events_a), vec![a_in]);
    assert_eq!(deleted(&p.events_b), vec![a_out]);
    assert!(children(&p.a).is_empty() && children(&p.b).is_empty());
    assert_eq!(p.a.counters().child_sas_expired, 1);
    assert_eq!(p.a.next_timeout(), None);
}

// ---------------------------------------------------------------- our IKE SA rekeys

fn ike_lifetime_pair(a_secs: Option<u64>, b_secs: Option<u64>) -> Pair {
    let (ike, esp) = ("aes128gcm16-prfsha256-x25519", "aes128gcm16");
    let mut a = peer("to-b", A, Some(B), ike, esp, b"pw");
    a.ike_lifetime = a_secs.map(Duration::from_secs);
    let mut b = peer("from-a", B, None, ike, esp, b"pw");
    b.ike_lifetime = b_secs.map(Duration::from_secs);
    Pair::new(a, b)
}

/// The one IKE SA each side has, as (SPIi, SPIr), with its CHILD_SAs.
fn only_ike_sa(engine: &Engine) -> ((u64, u64), Vec<(u32, u32)>) {
    assert_eq!(engine.sas.len(), 1, "{:?}", engine.sas());
    let sa = engine.sas.values().next().unwrap();
    ((sa.spi_i, sa.spi_r), children(engine))
}

/// Issue 8: we rekey the IKE SA at its lifetime (RFC 7296 section 1.3.2). The new IKE SA
/// takes over the CHILD_SA (same SPIs, nothing reinstalled), the old one is deleted on
/// both sides, and the new one carries requests.
#[test]
fn our_ike_sa_rekey_moves_the_child_sas_to_the_new_sa() {
    let mut p = ike_lifetime_pair(Some(1000), None);
    let old = p.connect();
    let (_, child) = only_ike_sa(&p.a);
    let due = p.a.next_timeout().unwrap();
    assert!(due > p.now + Duration::from_secs(899) && due <= p.now + Duration::from_secs(1000));
    p.tick(Duration::from_secs(1000));
    assert_eq!(p.a.counters().ike_rekeys_started, 1);
    assert_eq!(p.b.counters().ike_sas_rekeyed, 1);
    let (a_spis, a_children) = only_ike_sa(&p.a);
    let (b_spis, b_children) = only_ike_sa(&p.b);
    assert_eq!(a_spis, b_spis);
    assert_ne!(a_spis.0, old.0, "a new IKE SA");
    assert_eq!((a_children, b_children.len()), (child, 1));
    assert_eq!(
        installs(&p.events_a).len(),
        1,
        "the CHILD_SA was not reinstalled"
    );
    assert!(deleted(&p.events_a).is_empty() && deleted(&p.events_b).is_empty());
    assert!(p
        .events_a
        .iter()
        .any(|e| matches!(e, Action::Closed { ike_sa, .. } if *ike_sa == old)));
    // The new SA works, and will be rekeyed in its turn.
    let new = IkeSaId(a_spis.0);
    let dpd = p.a.send_dpd(new, p.now).unwrap();
    p.run(dpd);
    assert_eq!(p.a.state(new), Some(IkeState::Established));
    assert!(p.a.sas.get(&new.0).unwrap().rekey_at.is_some());
    // And the CHILD_SAs on it are rekeyed as usual.
    p.tick(Duration::from_secs(1));
    assert!(p.a.sas.get(&new.0).unwrap().outstanding.is_none());
}

/// RFC 7296 section 2.8.1 for IKE SAs: both ends rekey at once; the new IKE SA with the
/// lowest nonce is deleted by its initiator, the old one by the other end, and one IKE SA
/// with the CHILD_SA is left on each side.
#[test]
fn simultaneous_ike_sa_rekeys_leave_one_ike_sa() {
    for _ in 0..8 {
        let mut p = ike_lifetime_pair(Some(1000), Some(1000));
        p.connect();
        let (_, child) = only_ike_sa(&p.a);
        p.now += Duration::from_secs(950);
        let now = p.now;
        for engine in [&mut p.a, &mut p.b] {
            for sa in engine.sas.values_mut() {
                sa.rekey_at = Some(now);
            }
        }
        let from_a = p.a.handle_timeout(now);
        let from_b = p.b.handle_timeout(now);
        p.run_both(from_a, from_b);
        assert_eq!(p.a.counters().ike_rekey_collisions, 1);
        assert_eq!(p.b.counters().ike_rekey_collisions, 1);
        let (a_spis, a_children) = only_ike_sa(&p.a);
        let (b_spis, b_children) = only_ike_sa(&p.b);
        assert_eq!(a_spis, b_spis);
        assert_eq!(a_children, child);
        assert_eq!(b_children.len(), 1);
        assert!(deleted(&p.events_a).is_empty() && deleted(&p.events_b).is_empty());
        let id = IkeSaId(*p.a.sas.keys().next().unwrap());
        let dpd = p.a.send_dpd(id, p.now).unwrap();
        p.run(dpd);
        assert_eq!(p.a.state(id), Some(IkeState::Established));
    }
}
