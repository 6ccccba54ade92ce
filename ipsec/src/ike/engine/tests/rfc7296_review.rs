//! RFC 7296 negative cases found by a review of the engine against the RFC: each test names
//! the requirement it checks.

use super::rfc7296_negative::{addrs, sends, IKE};
use super::*;

fn responder(config: EngineConfig) -> Engine {
    Engine::new(EngineConfig {
        peers: vec![peer("from-a", B, None, IKE, "aes128gcm16", b"k")],
        ..config
    })
    .unwrap()
}

fn init_request(spi_i: u64, sa: Payload) -> Vec<u8> {
    let rng = ring::rand::SystemRandom::new();
    let (_, public) = dh::generate(DhGroup::Curve25519, &rng).unwrap();
    let header = Header {
        spi_i,
        spi_r: 0,
        next_payload: 0,
        version: VERSION,
        exchange: exchange::IKE_SA_INIT,
        flags: FLAG_INITIATOR,
        message_id: 0,
        length: 0,
    };
    let payloads = [
        sa,
        Payload::Ke {
            group: DhGroup::Curve25519.id(),
            data: public,
        },
        Payload::Nonce(vec![0x5a; 32]),
    ];
    Message::emit(header, &payloads)
}

/// A transform as it goes on the wire, with TV attributes.
fn transform(last: bool, kind: u8, id: u16, attrs: &[(u16, u16)]) -> Vec<u8> {
    let mut t = vec![if last { 0 } else { 3 }, 0];
    t.extend_from_slice(&((8 + 4 * attrs.len()) as u16).to_be_bytes());
    t.extend_from_slice(&[kind, 0]);
    t.extend_from_slice(&id.to_be_bytes());
    for (a, v) in attrs {
        t.extend_from_slice(&(0x8000 | a).to_be_bytes());
        t.extend_from_slice(&v.to_be_bytes());
    }
    t
}

/// An SA payload of one IKE proposal with `transforms`.
fn raw_sa(transforms: &[Vec<u8>]) -> Payload {
    let mut body = vec![1, 1, 0, transforms.len() as u8];
    body.extend(transforms.concat());
    let mut p = vec![0, 0];
    p.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    p.extend_from_slice(&body);
    Payload::Other {
        kind: crate::ike::wire::payload_type::SA,
        body: p,
    }
}

/// The notify types of the first message in `actions`.
fn notify_kinds(actions: &[Action]) -> Vec<u16> {
    let sent = sends(actions);
    let Some(first) = sent.first() else {
        return Vec::new();
    };
    notifies(&Message::parse(first).unwrap().payloads)
        .map(|n| n.kind)
        .collect()
}

/// RFC 7296 3.3.6: a transform with an attribute the responder does not understand (or a
/// Key Length where none belongs, or two) is unacceptable.
#[test]
fn transforms_with_attributes_we_do_not_understand_are_unacceptable() {
    let (a, b) = addrs();
    for (what, encr, prf) in [
        ("unknown attribute", vec![(14, 128), (99, 7)], vec![]),
        ("key length on the PRF", vec![(14, 128)], vec![(14, 256)]),
        ("two key lengths", vec![(14, 999), (14, 128)], vec![]),
    ] {
        let mut engine = responder(EngineConfig::default());
        let sa = raw_sa(&[
            transform(false, 1, 20, &encr),
            transform(false, 2, 5, &prf),
            transform(true, 4, 31, &[]),
        ]);
        let out = engine.handle(
            &init_request(0x1111, sa),
            b,
            a,
            Instant::now(),
            SystemTime::now(),
        );
        assert_eq!(notify_kinds(&out), [notify::NO_PROPOSAL_CHOSEN], "{what}");
    }
    // The same without the odd attribute is accepted.
    let mut engine = responder(EngineConfig::default());
    let sa = raw_sa(&[
        transform(false, 1, 20, &[(14, 128)]),
        transform(false, 2, 5, &[]),
        transform(true, 4, 31, &[]),
    ]);
    let out = engine.handle(
        &init_request(0x2222, sa),
        b,
        a,
        Instant::now(),
        SystemTime::now(),
    );
    assert!(notify_kinds(&out)
        .iter()
        .all(|&k| k != notify::NO_PROPOSAL_CHOSEN));
}

/// RFC 7296 2.21.3: "all requests having errors MUST result in a response" once the IKE SA
/// is authenticated: an exchange type we do not know, or IKE_AUTH again, gets INVALID_SYNTAX,
/// and the window moves on so that the next request is answered.
#[test]
fn unexpected_authenticated_requests_are_answered_and_the_window_moves_on() {
    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    for exchange_type in [240, exchange::IKE_AUTH] {
        let (_, answer) = exchange_on(&mut p, id, exchange_type, &[]);
        let answer = answer.expect("a protected answer");
        assert!(
            notifies(&answer).any(|n| n.kind == notify::INVALID_SYNTAX),
            "{exchange_type}: {answer:?}"
        );
    }
    let (_, answer) = exchange_on(&mut p, id, exchange::INFORMATIONAL, &[]);
    assert_eq!(answer, Some(Vec::new()), "the liveness check after them");
}

/// RFC 4303 2.1: SPI 0 "MUST NOT be sent on the wire", 1 to 255 are reserved: a CHILD_SA
/// proposal naming one is not taken.
#[test]
fn a_reserved_esp_spi_is_refused() {
    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    for spi in [0, 255] {
        let request = [
            Payload::Sa(vec![EspProposal::parse("aes128gcm16")
                .unwrap()
                .to_wire(1, spi, false)]),
            Payload::Nonce(vec![1; 32]),
            Payload::TsI(vec![ts("198.18.0.0", "198.18.0.255")]),
            Payload::TsR(vec![ts("198.19.0.0", "198.19.0.255")]),
        ];
        let (actions, answer) = create_child(&mut p, id, &request);
        assert!(installs(&actions).is_empty(), "SPI {spi}");
        let answer = answer.expect("an answer");
        assert!(
            notifies(&answer).any(|n| n.kind == notify::NO_PROPOSAL_CHOSEN),
            "SPI {spi}: {answer:?}"
        );
    }
}

/// RFC 7296 3.10: CHILD_SA_NOT_FOUND carries the protocol and the SPI it could not find.
#[test]
fn child_sa_not_found_names_the_sa() {
    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    let request = [
        Payload::Notify(Notify {
            protocol: protocol::ESP,
            spi: 0x0bad_0badu32.to_be_bytes().to_vec(),
            kind: notify::REKEY_SA,
            data: Vec::new(),
        }),
        Payload::Sa(vec![EspProposal::parse("aes128gcm16")
            .unwrap()
            .to_wire(1, 0x1234, false)]),
        Payload::Nonce(vec![1; 32]),
        Payload::TsI(vec![ts("198.18.0.0", "198.18.0.255")]),
        Payload::TsR(vec![ts("198.19.0.0", "198.19.0.255")]),
    ];
    let (_, answer) = create_child(&mut p, id, &request);
    let answer = answer.unwrap();
    let n = notifies(&answer)
        .find(|n| n.kind == notify::CHILD_SA_NOT_FOUND)
        .expect("CHILD_SA_NOT_FOUND");
    assert_eq!(
        (n.protocol, n.spi.as_slice()),
        (protocol::ESP, &0x0bad_0badu32.to_be_bytes()[..])
    );
}

/// RFC 7296 2.1: a retransmitted request gets the same answer, also when that answer ended
/// the IKE SA (a refused authentication), instead of INVALID_IKE_SPI.
#[test]
fn a_retransmitted_request_after_the_sa_ended_gets_the_same_answer() {
    let mut p = Pair::new(
        peer("to-b", A, Some(B), IKE, "aes128gcm16", b"wrong"),
        peer("from-a", B, None, IKE, "aes128gcm16", b"right"),
    );
    let (a_addr, b_addr) = addrs();
    let (_, actions) = p.a.connect("to-b", p.now).unwrap();
    let init = sends(&actions).remove(0);
    let answer = sends(&p.b.handle(&init, b_addr, a_addr, p.now, p.wall)).remove(0);
    let auth = sends(&p.a.handle(&answer, a_addr, b_addr, p.now, p.wall)).remove(0);
    let first = sends(&p.b.handle(&auth, b_addr, a_addr, p.now, p.wall));
    assert!(p.b.sas().is_empty(), "the SA is gone");
    let again = sends(&p.b.handle(&auth, b_addr, a_addr, p.now, p.wall));
    assert_eq!(again, first);
}

/// RFC 7296 2.21.1: an unauthenticated answer to IKE_SA_INIT that cannot be used (here its
/// KE is cut short) must not end the exchange: the real answer still completes it.
#[test]
fn a_forged_init_answer_does_not_end_the_exchange() {
    let mut p = pair(IKE, "aes128gcm16");
    let (a_addr, b_addr) = addrs();
    let (id, actions) = p.a.connect("to-b", p.now).unwrap();
    let init = sends(&actions).remove(0);
    let answer = sends(&p.b.handle(&init, b_addr, a_addr, p.now, p.wall)).remove(0);
    let mut forged = Message::parse(&answer).unwrap();
    for payload in &mut forged.payloads {
        if let Payload::Ke { data, .. } = payload {
            data.truncate(31);
        }
    }
    let forged = Message::emit(forged.header, &forged.payloads);
    let out = p.a.handle(&forged, a_addr, b_addr, p.now, p.wall);
    assert_eq!(failure(&out), None);
    let out = p.a.handle(&answer, a_addr, b_addr, p.now, p.wall);
    assert_eq!(sends(&out).len(), 1, "IKE_AUTH goes out");
    assert_eq!(p.a.state(id), Some(IkeState::AuthSent));
}

/// RFC 7296 2.6: past the cookie threshold new initiators are asked for a cookie; past the
/// half-open limit they are not answered at all.
#[test]
fn half_open_sas_are_bounded() {
    let (a, b) = addrs();
    let mut engine = responder(EngineConfig {
        cookie_threshold: Some(2),
        half_open_limit: Some(3),
        ..EngineConfig::default()
    });
    let sa = || Payload::Sa(vec![IkeProposal::parse(IKE).unwrap().to_wire(1, &[])]);
    let mut answers = Vec::new();
    for i in 0..4u64 {
        let out = engine.handle(
            &init_request(0x100 + i, sa()),
            b,
            a,
            Instant::now(),
            SystemTime::now(),
        );
        answers.push(notify_kinds(&out).contains(&notify::COOKIE));
    }
    assert_eq!(
        answers,
        [false, false, true, true],
        "cookies from the third on"
    );
    let mut limited = responder(EngineConfig {
        half_open_limit: Some(3),
        ..EngineConfig::default()
    });
    for i in 0..5u64 {
        limited.handle(
            &init_request(0x200 + i, sa()),
            b,
            a,
            Instant::now(),
            SystemTime::now(),
        );
    }
    assert_eq!(limited.sas().len(), 3);
    assert_eq!(limited.counters().half_open_refused, 2);
}
