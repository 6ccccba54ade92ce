//! RFC 7296 negative cases, as a conformance suite would throw them at either end: crafted
//! headers, malformed and unknown payloads, Message IDs outside the window, forged
//! unauthenticated errors, unknown error types, and exchanges that collide. Each test names
//! the section whose behaviour it checks.

use super::*;
use crate::ike::wire::{FLAG_VERSION, HEADER_LEN};

pub(super) const IKE: &str = "aes128gcm16-prfsha256-x25519";
const SPI_I: u64 = 0x0102_0304_0506_0708;

pub(super) fn addrs() -> (SocketAddr, SocketAddr) {
    (A.parse().unwrap(), B.parse().unwrap())
}

pub(super) fn sends(actions: &[Action]) -> Vec<Vec<u8>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { bytes, .. } => Some(bytes.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn init_header(flags: u8, spi_r: u64) -> Header {
    Header {
        spi_i: SPI_I,
        spi_r,
        next_payload: 0,
        version: VERSION,
        exchange: exchange::IKE_SA_INIT,
        flags,
        message_id: 0,
        length: 0,
    }
}

/// A well-formed IKE_SA_INIT request body: SA (the given proposals), KE of `group`, Ni.
pub(super) fn init_payloads(
    proposals: Vec<crate::ike::wire::Proposal>,
    group: DhGroup,
) -> Vec<Payload> {
    let rng = ring::rand::SystemRandom::new();
    let (_, public) = dh::generate(group, &rng).unwrap();
    vec![
        Payload::Sa(proposals),
        Payload::Ke {
            group: group.id(),
            data: public,
        },
        Payload::Nonce(vec![0x5a; 32]),
    ]
}

pub(super) fn ike_proposal(text: &str, number: u8) -> crate::ike::wire::Proposal {
    IkeProposal::parse(text).unwrap().to_wire(number, &[])
}

/// B, a responder, alone.
pub(super) fn responder(ike: &str) -> Engine {
    Engine::new(EngineConfig {
        peers: vec![peer("from-a", B, None, ike, "aes128gcm16", b"k")],
        ..EngineConfig::default()
    })
    .unwrap()
}

/// The only datagram in `actions`, parsed, with its single Notify (an unprotected answer).
fn unprotected_notify(actions: &[Action]) -> (Header, Notify) {
    let sent = sends(actions);
    assert_eq!(sent.len(), 1, "one answer");
    let message = Message::parse(&sent[0]).unwrap();
    let notify = message
        .payloads
        .iter()
        .find_map(|p| match p {
            Payload::Notify(n) => Some(n.clone()),
            _ => None,
        })
        .expect("a Notify");
    (message.header, notify)
}

/// Opens a protected message `bytes` with `engine`'s SA `id`.
pub(super) fn open_with(engine: &Engine, id: u64, bytes: &[u8]) -> Vec<Payload> {
    let message = Message::parse(bytes).unwrap();
    let Some(&Payload::Encrypted {
        first_payload,
        offset,
    }) = message.payloads.last()
    else {
        panic!("not protected");
    };
    let sa = engine.sas.get(&id).unwrap();
    open_message(bytes, offset, first_payload, sa.rx.as_ref().unwrap()).unwrap()
}

/// Seals a message on B's SA `id` (B's keys), as B would send it.
pub(super) fn sealed_by_b(
    p: &mut Pair,
    id: u64,
    exchange_type: u8,
    message_id: u32,
    response: bool,
    payloads: &[Payload],
) -> Vec<u8> {
    let sa = p.b.sas.get_mut(&id).unwrap();
    sa.iv_counter += 1;
    let header = sa.header(exchange_type, message_id, response);
    seal_message(header, payloads, sa.tx.as_ref().unwrap(), sa.iv_counter).unwrap()
}

/// Seals a request on A's SA `id` with the next Message ID.
fn request_by_a(p: &mut Pair, id: IkeSaId, exchange_type: u8, payloads: &[Payload]) -> Vec<u8> {
    let sa = p.a.sas.get_mut(&id.0).unwrap();
    let message_id = sa.next_request_id;
    sa.next_request_id += 1;
    sa.iv_counter += 1;
    let header = sa.header(exchange_type, message_id, false);
    seal_message(header, payloads, sa.tx.as_ref().unwrap(), sa.iv_counter).unwrap()
}

pub(super) fn b_sa(p: &Pair) -> u64 {
    let sas = p.b.sas();
    assert_eq!(sas.len(), 1);
    sas[0].0 .0
}

fn error_in(payloads: &[Payload]) -> Option<u16> {
    first_error(payloads)
}

// ---------------------------------------------------------------- header (section 3.1)

#[test]
fn an_init_request_without_the_initiator_flag_is_dropped() {
    // Section 3.1: the I flag is set in every message of the original initiator.
    let mut b = responder(IKE);
    let (a, b_addr) = addrs();
    let request = Message::emit(
        init_header(0, 0),
        &init_payloads(vec![ike_proposal(IKE, 1)], DhGroup::Curve25519),
    );
    assert!(sends(&b.handle(&request, b_addr, a, Instant::now(), SystemTime::now())).is_empty());
    assert!(b.sas().is_empty());
}

#[test]
fn an_init_request_with_a_responder_spi_is_dropped() {
    // Sections 1.2 and 3.1: SPIr is zero in the first message.
    let mut b = responder(IKE);
    let (a, b_addr) = addrs();
    let request = Message::emit(
        init_header(FLAG_INITIATOR, 7),
        &init_payloads(vec![ike_proposal(IKE, 1)], DhGroup::Curve25519),
    );
    assert!(sends(&b.handle(&request, b_addr, a, Instant::now(), SystemTime::now())).is_empty());
    // Section 3.1: SPIi MUST NOT be zero.
    let request = Message::emit(
        Header {
            spi_i: 0,
            ..init_header(FLAG_INITIATOR, 0)
        },
        &init_payloads(vec![ike_proposal(IKE, 1)], DhGroup::Curve25519),
    );
    assert!(sends(&b.handle(&request, b_addr, a, Instant::now(), SystemTime::now())).is_empty());
    assert!(b.sas().is_empty());
}

#[test]
fn the_critical_bit_of_a_known_payload_is_ignored() {
    // Section 3.2: the critical bit MUST be ignored if the payload type is understood.
    let mut b = responder(IKE);
    let (a, b_addr) = addrs();
    let payloads = init_payloads(vec![ike_proposal(IKE, 1)], DhGroup::Curve25519);
    let mut request = Message::emit(init_header(FLAG_INITIATOR, 0), &payloads);
    request[HEADER_LEN + 1] = 0x80;
    let sent = sends(&b.handle(&request, b_addr, a, Instant::now(), SystemTime::now()));
    assert_eq!(sent.len(), 1);
    let answer = Message::parse(&sent[0]).unwrap();
    assert!(answer.payloads.iter().any(|p| matches!(p, Payload::Sa(_))));
}

#[test]
fn reserved_and_version_flags_are_ignored_on_receipt() {
    // Section 3.1: the X bits and the Version bit are ignored on receipt.
    let mut b = responder(IKE);
    let (a, b_addr) = addrs();
    let request = Message::emit(
        init_header(FLAG_INITIATOR | 0xc7 | FLAG_VERSION, 0),
        &init_payloads(vec![ike_proposal(IKE, 1)], DhGroup::Curve25519),
    );
    let sent = sends(&b.handle(&request, b_addr, a, Instant::now(), SystemTime::now()));
    assert_eq!(sent.len(), 1);
    let answer = Message::parse(&sent[0]).unwrap();
    assert!(answer.payloads.iter().any(|p| matches!(p, Payload::Sa(_))));
    assert_eq!(
        answer.header.flags, FLAG_RESPONSE,
        "we send no reserved bits"
    );
}

#[test]
fn a_length_that_is_not_the_datagrams_is_dropped() {
    // Section 3.1: Length is the length of the total message.
    let mut b = responder(IKE);
    let (a, b_addr) = addrs();
    let mut request = Message::emit(
        init_header(FLAG_INITIATOR, 0),
        &init_payloads(vec![ike_proposal(IKE, 1)], DhGroup::Curve25519),
    );
    let longer = request.len() as u32 + 4;
    request[24..28].copy_from_slice(&longer.to_be_bytes());
    assert!(sends(&b.handle(&request, b_addr, a, Instant::now(), SystemTime::now())).is_empty());
    request.extend_from_slice(&[0; 4]);
    request[24..28].copy_from_slice(&(longer - 8).to_be_bytes());
    assert!(sends(&b.handle(&request, b_addr, a, Instant::now(), SystemTime::now())).is_empty());
    assert_eq!(b.counters().rx_malformed, 2);
    assert!(b.sas().is_empty());
}

// ---------------------------------------------------------------- IKE_SA_INIT as responder

#[test]
fn malformed_init_requests_are_dropped_never_answered_with_invalid_syntax() {
    // Section 3.10.1: INVALID_SYNTAX may only be returned in an encrypted packet whose
    // Message ID and checksum were valid; section 2.21.1: no state for garbage.
    let mut b = responder(IKE);
    let (a, b_addr) = addrs();
    let now = Instant::now();
    let good = init_payloads(vec![ike_proposal(IKE, 1)], DhGroup::Curve25519);
    let mut cases: Vec<Vec<u8>> = Vec::new();
    // Missing SA, KE or Nonce.
    for skip in 0..3 {
        let mut payloads = good.clone();
        payloads.remove(skip);
        cases.push(Message::emit(init_header(FLAG_INITIATOR, 0), &payloads));
    }
    // A Nonce outside 16..=256 bytes (section 3.9).
    for len in [15, 257] {
        let mut payloads = good.clone();
        payloads[2] = Payload::Nonce(vec![1; len]);
        cases.push(Message::emit(init_header(FLAG_INITIATOR, 0), &payloads));
    }
    // A KE payload of the wrong length for its group (section 3.4).
    let mut payloads = good.clone();
    payloads[1] = Payload::Ke {
        group: DhGroup::Curve25519.id(),
        data: vec![9; 31],
    };
    cases.push(Message::emit(init_header(FLAG_INITIATOR, 0), &payloads));
    // A payload length below 4, and a chain running past the end.
    let valid = Message::emit(init_header(FLAG_INITIATOR, 0), &good);
    let mut short = valid.clone();
    short[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&3u16.to_be_bytes());
    cases.push(short);
    let mut past = valid.clone();
    let first_len = u16::from_be_bytes([past[HEADER_LEN + 2], past[HEADER_LEN + 3]]);
    past[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&(first_len + 200).to_be_bytes());
    cases.push(past);
    // Trailing bytes after the last payload (Length covers them).
    let mut trailing = valid.clone();
    trailing.extend_from_slice(&[0; 8]);
    let len = trailing.len() as u32;
    trailing[24..28].copy_from_slice(&len.to_be_bytes());
    cases.push(trailing);
    for (i, case) in cases.iter().enumerate() {
        let actions = b.handle(case, b_addr, a, now, SystemTime::now());
        assert!(sends(&actions).is_empty(), "case {i} answered");
    }
    assert!(b.sas().is_empty());
    assert_eq!(b.counters().rx_malformed, cases.len() as u64);
    // The engine is unharmed: a good request is answered.
    assert_eq!(
        sends(&b.handle(&valid, b_addr, a, now, SystemTime::now())).len(),
        1
    );
}

#[test]
fn an_unknown_critical_payload_in_init_is_named_and_an_uncritical_one_skipped() {
    // Sections 2.5 and 3.2: reject with UNSUPPORTED_CRITICAL_PAYLOAD carrying the type;
    // skip it when not critical. Type 50 is a later extension's, unknown here.
    let (a, b_addr) = addrs();
    let now = Instant::now();
    let mut payloads = init_payloads(vec![ike_proposal(IKE, 1)], DhGroup::Curve25519);
    payloads.push(Payload::Other {
        kind: 50,
        body: vec![1, 2, 3, 4],
    });
    let plain = Message::emit(init_header(FLAG_INITIATOR, 0), &payloads);
    // The unknown payload is last: its generic header is 8 bytes before the end.
    let at = plain.len() - 8 + 1;
    let mut critical = plain.clone();
    critical[at] = 0x80;
    let mut b = responder(IKE);
    let (h, n) = unprotected_notify(&b.handle(&critical, b_addr, a, now, SystemTime::now()));
    assert_eq!(n.kind, notify::UNSUPPORTED_CRITICAL_PAYLOAD);
    assert_eq!(n.data, [50]);
    assert!(h.is_response() && !h.from_initiator() && h.spi_r == 0);
    assert!(b.sas().is_empty());
    let sent = sends(&b.handle(&plain, b_addr, a, now, SystemTime::now()));
    let answer = Message::parse(&sent[0]).unwrap();
    assert!(answer.payloads.iter().any(|p| matches!(p, Payload::Sa(_))));
}

#[test]
fn the_ke_guess_is_taken_when_an_offered_proposal_allows_it() {
    // Sections 1.2 and 2.7: INVALID_KE_PAYLOAD is for a KE whose group the selected
    // proposal does not use. Proposal 1 offers X25519 only, proposal 2 ECP-256, and KE is
    // ECP-256: the responder, accepting both, takes proposal 2 rather than costing a round
    // trip.
    let mut b = responder("aes128gcm16-prfsha256-x25519-ecp256");
    let (a, b_addr) = addrs();
    let proposals = vec![
        ike_proposal("aes128gcm16-prfsha256-x25519", 1),
        ike_proposal("aes128gcm16-prfsha256-ecp256", 2),
    ];
    let request = Message::emit(
        init_header(FLAG_INITIATOR, 0),
        &init_payloads(proposals, DhGroup::Ecp256),
    );
    let sent = sends(&b.handle(&request, b_addr, a, Instant::now(), SystemTime::now()));
    let answer = Message::parse(&sent[0]).unwrap();
    assert!(answer.payloads.iter().any(|p| matches!(
        p,
        Payload::Sa(ps) if ps.len() == 1 && ps[0].number == 2
    )));
    assert!(answer.payloads.iter().any(|p| matches!(
        p,
        Payload::Ke { group, .. } if *group == DhGroup::Ecp256.id()
    )));
    assert_eq!(b.counters().invalid_ke, 0);
}

#[test]
fn invalid_ke_payload_names_the_selected_group_in_two_bytes() {
    // Section 3.10.1: INVALID_KE_PAYLOAD's data is the accepted group, two octets.
    let mut b = responder("aes128gcm16-prfsha256-ecp256");
    let (a, b_addr) = addrs();
    let request = Message::emit(
        init_header(FLAG_INITIATOR, 0),
        &init_payloads(
            vec![ike_proposal("aes128gcm16-prfsha256-x25519-ecp256", 1)],
            DhGroup::Curve25519,
        ),
    );
    let (h, n) =
        unprotected_notify(&b.handle(&request, b_addr, a, Instant::now(), SystemTime::now()));
    assert_eq!(n.kind, notify::INVALID_KE_PAYLOAD);
    assert_eq!(n.data, DhGroup::Ecp256.id().to_be_bytes());
    assert_eq!((h.spi_i, h.spi_r, h.message_id), (SPI_I, 0, 0));
    assert!(b.sas().is_empty(), "no state");
}

#[test]
fn no_acceptable_proposal_is_answered_with_no_proposal_chosen() {
    // Section 2.7; a proposal with an SPI is malformed in an initial exchange (3.3.1).
    let (a, b_addr) = addrs();
    let mut with_spi = ike_proposal(IKE, 1);
    with_spi.spi = vec![1; 8];
    for proposals in [
        vec![ike_proposal("aes256-sha512-modp2048", 1)],
        vec![with_spi],
    ] {
        let mut b = responder(IKE);
        let request = Message::emit(
            init_header(FLAG_INITIATOR, 0),
            &init_payloads(proposals, DhGroup::Curve25519),
        );
        let (_, n) =
            unprotected_notify(&b.handle(&request, b_addr, a, Instant::now(), SystemTime::now()));
        assert_eq!(n.kind, notify::NO_PROPOSAL_CHOSEN);
        assert!(b.sas().is_empty());
    }
}

#[test]
fn a_retransmitted_init_request_gets_the_same_answer_and_no_second_sa() {
    // Section 2.1: a retransmitted request is answered with the same response.
    let mut b = responder(IKE);
    let (a, b_addr) = addrs();
    let now = Instant::now();
    let request = Message::emit(
        init_header(FLAG_INITIATOR, 0),
        &init_payloads(vec![ike_proposal(IKE, 1)], DhGroup::Curve25519),
    );
    let first = sends(&b.handle(&request, b_addr, a, now, SystemTime::now()));
    let second = sends(&b.handle(&request, b_addr, a, now, SystemTime::now()));
    assert_eq!(first, second);
    assert_eq!(b.sas().len(), 1);
    assert_eq!(b.counters().responses_resent, 1);
}

#[test]
fn a_cookie_is_required_verified_and_sent_first_by_the_initiator() {
    // Section 2.6: the responder asks for a cookie; the initiator retries with the COOKIE
    // notify first; a wrong cookie is refused with a fresh one.
    let mut b = Engine::new(EngineConfig {
        peers: vec![peer("from-a", B, None, IKE, "aes128gcm16", b"k")],
        cookie_threshold: Some(0),
        ..EngineConfig::default()
    })
    .unwrap();
    let (a_addr, b_addr) = addrs();
    let now = Instant::now();
    let mut a = Engine::new(EngineConfig {
        peers: vec![peer("to-b", A, Some(B), IKE, "aes128gcm16", b"k")],
        ..EngineConfig::default()
    })
    .unwrap();
    let (_, actions) = a.connect("to-b", now).unwrap();
    let first = sends(&actions);
    let (_, cookie) =
        unprotected_notify(&b.handle(&first[0], b_addr, a_addr, now, SystemTime::now()));
    assert_eq!(cookie.kind, notify::COOKIE);
    assert!(b.sas().is_empty(), "no state before the cookie");
    let reply = Message::emit(
        Header {
            flags: FLAG_RESPONSE,
            ..Message::parse(&first[0]).unwrap().header
        },
        &[Payload::Notify(cookie.clone())],
    );
    let retry = sends(&a.handle(&reply, a_addr, b_addr, now, SystemTime::now()));
    let message = Message::parse(&retry[0]).unwrap();
    assert!(matches!(
        message.payloads.first(),
        Some(Payload::Notify(n)) if n.kind == notify::COOKIE && n.data == cookie.data
    ));
    // A tampered cookie: refused, a fresh one sent.
    let mut forged = message.payloads.clone();
    if let Some(Payload::Notify(n)) = forged.first_mut() {
        n.data[5] ^= 1;
    }
    let tampered = Message::emit(message.header, &forged);
    let (_, again) =
        unprotected_notify(&b.handle(&tampered, b_addr, a_addr, now, SystemTime::now()));
    assert_eq!(again.kind, notify::COOKIE);
    assert_eq!(b.counters().cookies_rejected, 1);
    // The right one: served.
    let answer = sends(&b.handle(&retry[0], b_addr, a_addr, now, SystemTime::now()));
    assert!(Message::parse(&answer[0])
        .unwrap()
        .payloads
        .iter()
        .any(|p| matches!(p, Payload::Sa(_))));
    assert_eq!(b.sas().len(), 1);
}

// ---------------------------------------------------------------- IKE_SA_INIT as initiator

#[test]
fn a_forged_error_answer_to_init_does_not_end_the_exchange() {
    // Section 2.21.1: error notifications in IKE_SA_INIT are unauthenticated; the
    // initiator should not act on them at once but keep waiting for a real answer.
    let mut p = pair(IKE, "aes128gcm16");
    let (a_addr, b_addr) = addrs();
    let (id, actions) = p.a.connect("to-b", p.now).unwrap();
    let request = sends(&actions).remove(0);
    let header = Message::parse(&request).unwrap().header;
    for forged in [
        vec![Payload::Notify(Notify::new(
            notify::NO_PROPOSAL_CHOSEN,
            Vec::new(),
        ))],
        vec![Payload::Notify(Notify::new(8000, Vec::new()))],
        vec![Payload::Nonce(vec![1; 32])],
    ] {
        let bytes = Message::emit(
            Header {
                flags: FLAG_RESPONSE,
                spi_r: 0x99,
                ..header
            },
            &forged,
        );
        let out = p.a.handle(&bytes, a_addr, b_addr, p.now, p.wall);
        assert!(failure(&out).is_none(), "{forged:?} ended the exchange");
        assert_eq!(p.a.state(id), Some(IkeState::InitSent));
    }
    // The real answer still completes it.
    let answer = p.b.handle(&request, b_addr, a_addr, p.now, p.wall);
    p.run_both(Vec::new(), answer);
    assert!(established(&p.events_a) && established(&p.events_b));
}

#[test]
fn an_error_answer_to_init_is_reported_when_no_real_answer_comes() {
    // Section 2.21.1: after trying for some time, the error is what failed it.
    let mut p = pair(IKE, "aes128gcm16");
    let (a_addr, b_addr) = addrs();
    let (id, actions) = p.a.connect("to-b", p.now).unwrap();
    let request = sends(&actions).remove(0);
    let header = Message::parse(&request).unwrap().header;
    let bytes = Message::emit(
        Header {
            flags: FLAG_RESPONSE,
            ..header
        },
        &[Payload::Notify(Notify::new(
            notify::NO_PROPOSAL_CHOSEN,
            Vec::new(),
        ))],
    );
    assert!(p.a.handle(&bytes, a_addr, b_addr, p.now, p.wall).is_empty());
    let mut failed = None;
    for _ in 0..60 {
        p.now += Duration::from_secs(1);
        failed = failed.or(failure(&p.a.handle_timeout(p.now)));
    }
    assert_eq!(failed, Some(Failure::PeerError(notify::NO_PROPOSAL_CHOSEN)));
    assert_eq!(p.a.state(id), None);
}

#[test]
fn invalid_ke_payload_makes_the_initiator_retry_with_that_group_and_same_spi() {
    // Sections 1.2 and 2.7: retry with the group asked for; the same SPIi (2.6).
    let mut p = pair("aes128gcm16-prfsha256-x25519-ecp256", "aes128gcm16");
    let (a_addr, b_addr) = addrs();
    let (_, actions) = p.a.connect("to-b", p.now).unwrap();
    let request = Message::parse(&sends(&actions)[0]).unwrap();
    let reply = Message::emit(
        Header {
            flags: FLAG_RESPONSE,
            ..request.header
        },
        &[Payload::Notify(Notify::new(
            notify::INVALID_KE_PAYLOAD,
            DhGroup::Ecp256.id().to_be_bytes().to_vec(),
        ))],
    );
    let retry =
        Message::parse(&sends(&p.a.handle(&reply, a_addr, b_addr, p.now, p.wall))[0]).unwrap();
    assert_eq!(retry.header.spi_i, request.header.spi_i);
    assert!(retry.payloads.iter().any(|p| matches!(
        p,
        Payload::Ke { group, data } if *group == DhGroup::Ecp256.id() && data.len() == 64
    )));
}

// ---------------------------------------------------------------- IKE_AUTH

#[test]
fn an_unknown_error_type_in_the_auth_answer_fails_the_whole_ike_sa() {
    // Section 3.10.1: an unrecognized error type in a response means the request failed
    // entirely: no IKE SA, no CHILD_SA.
    let mut p = pair(IKE, "aes128gcm16");
    let id = with_edited_auth_answer(&mut p, |payloads| {
        payloads.push(Payload::Notify(Notify::new(8000, Vec::new())));
    });
    assert!(!established(&p.events_a));
    assert_eq!(failure(&p.events_a), Some(Failure::PeerError(8000)));
    assert!(installs(&p.events_a).is_empty());
    assert_eq!(p.a.state(id), None);
    // A CHILD_SA error leaves the IKE SA up (section 1.2).
    let mut p = pair(IKE, "aes128gcm16");
    let id = with_edited_auth_answer(&mut p, |payloads| {
        payloads.retain(|p| !matches!(p, Payload::Sa(_) | Payload::TsI(_) | Payload::TsR(_)));
        payloads.push(Payload::Notify(Notify::new(
            notify::TS_UNACCEPTABLE,
            Vec::new(),
        )));
    });
    assert!(established(&p.events_a));
    assert_eq!(p.a.state(id), Some(IkeState::Established));
}

#[test]
fn a_malformed_auth_request_is_refused_and_leaves_no_half_open_sa() {
    // Sections 2.21.2 and 3.2: a critical unknown payload inside IKE_AUTH is answered
    // (protected) with UNSUPPORTED_CRITICAL_PAYLOAD and the IKE SA is not created.
    let mut p = pair(IKE, "aes128gcm16");
    let (a_addr, b_addr) = addrs();
    let (id, actions) = p.a.connect("to-b", p.now).unwrap();
    let init = sends(&actions).remove(0);
    let answer = sends(&p.b.handle(&init, b_addr, a_addr, p.now, p.wall)).remove(0);
    let _ = p.a.handle(&answer, a_addr, b_addr, p.now, p.wall);
    assert_eq!(p.a.state(id), Some(IkeState::AuthSent));
    let sa = p.a.sas.get_mut(&id.0).unwrap();
    sa.iv_counter += 1;
    let header = sa.header(exchange::IKE_AUTH, 1, false);
    let inner = vec![0, 0x80, 0, 8, 1, 2, 3, 4];
    let bytes =
        crate::ike::sk::seal_raw(header, 201, inner, sa.tx.as_ref().unwrap(), sa.iv_counter)
            .unwrap();
    let out = p.b.handle(&bytes, b_addr, a_addr, p.now, p.wall);
    let reply = sends(&out).remove(0);
    let payloads = open_with(&p.a, id.0, &reply);
    assert!(matches!(
        &payloads[..],
        [Payload::Notify(n)] if n.kind == notify::UNSUPPORTED_CRITICAL_PAYLOAD && n.data == [201]
    ));
    assert!(p.b.sas().is_empty(), "no half-open IKE SA left behind");
}

#[test]
fn an_auth_request_without_its_child_sa_payloads_fails_as_a_whole() {
    // Section 1.2: IKE_AUTH carries SAi2, TSi and TSr. Without them it is INVALID_SYNTAX,
    // which the initiator reads as the whole request failing (3.10.1), so the responder
    // sets up no IKE SA either.
    let mut p = pair(IKE, "aes128gcm16");
    let (a_addr, b_addr) = addrs();
    let (id, actions) = p.a.connect("to-b", p.now).unwrap();
    let init = sends(&actions).remove(0);
    let answer = sends(&p.b.handle(&init, b_addr, a_addr, p.now, p.wall)).remove(0);
    let auth = sends(&p.a.handle(&answer, a_addr, b_addr, p.now, p.wall)).remove(0);
    let mut payloads = open_with(&p.b, b_sa(&p), &auth);
    payloads.retain(|p| !matches!(p, Payload::Sa(_) | Payload::TsI(_) | Payload::TsR(_)));
    let header = Message::parse(&auth).unwrap().header;
    let sa = p.a.sas.get_mut(&id.0).unwrap();
    sa.iv_counter += 1;
    let stripped = seal_message(header, &payloads, sa.tx.as_ref().unwrap(), sa.iv_counter).unwrap();
    let out = p.b.handle(&stripped, b_addr, a_addr, p.now, p.wall);
    assert!(!established(&out));
    let reply = open_with(&p.a, id.0, &sends(&out)[0]);
    assert_eq!(error_in(&reply), Some(notify::INVALID_SYNTAX));
    assert!(p.b.sas().is_empty());
    let _ = p.a.handle(&sends(&out)[0], a_addr, b_addr, p.now, p.wall);
    assert_eq!(p.a.state(id), None);
}

#[test]
fn other_exchanges_before_ike_auth_are_dropped() {
    // Section 1.2: the exchange after IKE_SA_INIT is IKE_AUTH, with Message ID 1. A
    // CREATE_CHILD_SA in its place is not answered, and IKE_AUTH then still works.
    let mut p = pair(IKE, "aes128gcm16");
    let (a_addr, b_addr) = addrs();
    let (id, actions) = p.a.connect("to-b", p.now).unwrap();
    let init = sends(&actions).remove(0);
    let answer = sends(&p.b.handle(&init, b_addr, a_addr, p.now, p.wall)).remove(0);
    let auth = p.a.handle(&answer, a_addr, b_addr, p.now, p.wall);
    let sa = p.a.sas.get_mut(&id.0).unwrap();
    sa.iv_counter += 1;
    let header = sa.header(exchange::CREATE_CHILD_SA, 1, false);
    let early = seal_message(
        header,
        &[
            Payload::Sa(vec![EspProposal::parse("aes128gcm16")
                .unwrap()
                .to_wire(1, 0x1234, false)]),
            Payload::Nonce(vec![1; 32]),
            Payload::TsI(vec![ts("198.18.0.0", "198.18.0.255")]),
            Payload::TsR(vec![ts("198.19.0.0", "198.19.0.255")]),
        ],
        sa.tx.as_ref().unwrap(),
        sa.iv_counter,
    )
    .unwrap();
    assert!(sends(&p.b.handle(&early, b_addr, a_addr, p.now, p.wall)).is_empty());
    p.run(auth);
    assert!(established(&p.events_a) && established(&p.events_b));
}

// ---------------------------------------------------------------- Message IDs (section 2.3)

#[test]
fn requests_outside_the_window_are_dropped_and_old_ones_answered_from_cache() {
    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    let (a_addr, b_addr) = addrs();
    let dpd = request_by_a(&mut p, id, exchange::INFORMATIONAL, &[]);
    let first = sends(&p.b.handle(&dpd, b_addr, a_addr, p.now, p.wall));
    assert_eq!(first.len(), 1);
    assert!(open_with(&p.a, id.0, &first[0]).is_empty(), "empty answer");
    // The same request again: the same answer, not processed anew.
    let again = sends(&p.b.handle(&dpd, b_addr, a_addr, p.now, p.wall));
    assert_eq!(first, again);
    assert_eq!(p.b.counters().responses_resent, 1);
    // A request one beyond the next expected Message ID: dropped.
    let sa = p.a.sas.get_mut(&id.0).unwrap();
    sa.next_request_id += 1;
    let ahead = request_by_a(&mut p, id, exchange::INFORMATIONAL, &[]);
    assert!(sends(&p.b.handle(&ahead, b_addr, a_addr, p.now, p.wall)).is_empty());
    assert_eq!(p.b.counters().rx_bad_message_id, 1);
}

#[test]
fn answers_to_nothing_sent_and_of_the_wrong_exchange_are_ignored() {
    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    let (a_addr, b_addr) = addrs();
    let b_id = b_sa(&p);
    // Nothing outstanding at A: a response is ignored.
    let stray = sealed_by_b(&mut p, b_id, exchange::INFORMATIONAL, 2, true, &[]);
    assert!(p.a.handle(&stray, a_addr, b_addr, p.now, p.wall).is_empty());
    assert_eq!(p.a.counters().rx_bad_message_id, 1);
    // A DPD outstanding: a CREATE_CHILD_SA answer with its Message ID is not its answer.
    let dpd = p.a.send_dpd(id, p.now).unwrap();
    let message_id = Message::parse(&sends(&dpd)[0]).unwrap().header.message_id;
    let wrong = sealed_by_b(
        &mut p,
        b_id,
        exchange::CREATE_CHILD_SA,
        message_id,
        true,
        &[Payload::Notify(Notify::new(
            notify::NO_ADDITIONAL_SAS,
            Vec::new(),
        ))],
    );
    assert!(p.a.handle(&wrong, a_addr, b_addr, p.now, p.wall).is_empty());
    assert!(p.a.sas.get(&id.0).unwrap().outstanding.is_some());
    p.run(dpd);
    assert!(p.a.sas.get(&id.0).unwrap().outstanding.is_none());
}

#[test]
fn a_bad_icv_is_dropped_without_a_trace() {
    // Sections 2.21.2 and 3.14: a message whose integrity check fails is discarded.
    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    let (a_addr, b_addr) = addrs();
    let request = request_by_a(&mut p, id, exchange::INFORMATIONAL, &[]);
    let mut tampered = request.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(p
        .b
        .handle(&tampered, b_addr, a_addr, p.now, p.wall)
        .is_empty());
    assert_eq!(p.b.counters().rx_integrity_failures, 1);
    // The real one, with the same Message ID, is still the one expected.
    assert_eq!(
        sends(&p.b.handle(&request, b_addr, a_addr, p.now, p.wall)).len(),
        1
    );
}

// ---------------------------------------------------------------- INFORMATIONAL

#[test]
fn informational_requests_with_unknown_spis_and_errors_are_answered_and_harmless() {
    // Section 1.4.1: deleting an SA we do not have is not an error; 3.10.1: unknown error
    // types in a request are ignored; 2.21.4: INVALID_SPI is information.
    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    let (a_addr, b_addr) = addrs();
    let requests = [
        vec![Payload::Delete {
            protocol: protocol::ESP,
            spis: vec![0xdead_beefu32.to_be_bytes().to_vec()],
        }],
        vec![Payload::Notify(Notify::new(8000, Vec::new()))],
        vec![Payload::Notify(Notify {
            protocol: protocol::ESP,
            spi: 0x1234_5678u32.to_be_bytes().to_vec(),
            kind: notify::INVALID_SPI,
            data: Vec::new(),
        })],
    ];
    for request in requests {
        let bytes = request_by_a(&mut p, id, exchange::INFORMATIONAL, &request);
        let out = p.b.handle(&bytes, b_addr, a_addr, p.now, p.wall);
        assert!(
            out.iter().all(|a| matches!(a, Action::Send { .. })),
            "{out:?}"
        );
        let answer = open_with(&p.a, id.0, &sends(&out)[0]);
        assert!(answer.is_empty(), "{answer:?}");
    }
    assert_eq!(p.b.sas().len(), 1);
    assert_eq!(p.b.sas.get(&b_sa(&p)).unwrap().children.len(), 1);
}

#[test]
fn crossed_child_sa_deletes_are_not_named_again_in_the_answer() {
    // Section 1.4.1: when both ends delete the same CHILD_SA at once, each deletes it and
    // the responses MUST NOT include Delete payloads for it.
    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    let (a_addr, b_addr) = addrs();
    let b_id = b_sa(&p);
    let (b_inbound, b_outbound) = {
        let install = installs(&p.events_b)[0];
        (install.inbound.spi, install.outbound.spi)
    };
    let mut ours = Vec::new();
    p.b.send_child_delete(b_id, Vec::new(), vec![b_inbound], p.now, &mut ours);
    assert!(!sends(&ours).is_empty());
    // A's Delete names its inbound SPI: B's outbound.
    let request = request_by_a(
        &mut p,
        id,
        exchange::INFORMATIONAL,
        &[Payload::Delete {
            protocol: protocol::ESP,
            spis: vec![b_outbound.to_be_bytes().to_vec()],
        }],
    );
    let out = p.b.handle(&request, b_addr, a_addr, p.now, p.wall);
    assert!(deleted(&out).contains(&b_inbound));
    let answer = open_with(&p.a, id.0, &sends(&out)[0]);
    assert!(
        !answer.iter().any(|p| matches!(p, Payload::Delete { .. })),
        "{answer:?}"
    );
}

// ---------------------------------------------------------------- CREATE_CHILD_SA

fn child_rekey_request(spi: Vec<u8>) -> Vec<Payload> {
    vec![
        Payload::Notify(Notify {
            protocol: protocol::ESP,
            spi,
            kind: notify::REKEY_SA,
            data: Vec::new(),
        }),
        Payload::Sa(vec![EspProposal::parse("aes128gcm16")
            .unwrap()
            .to_wire(1, 0x1234, false)]),
        Payload::Nonce(vec![1; 32]),
        Payload::TsI(vec![ts("198.18.0.0", "198.18.0.255")]),
        Payload::TsR(vec![ts("198.19.0.0", "198.19.0.255")]),
    ]
}

#[test]
fn a_rekey_sa_notify_without_a_proper_spi_is_invalid_syntax() {
    // Section 3.10.1: REKEY_SA names the SA by its SPI; a 2-byte SPI names nothing and must
    // not create an extra CHILD_SA.
    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    let (actions, response) = create_child(&mut p, id, &child_rekey_request(vec![1, 2]));
    assert!(installs(&actions).is_empty());
    assert_eq!(error_in(&response.unwrap()), Some(notify::INVALID_SYNTAX));
}

#[test]
fn rekeys_colliding_with_a_rekey_of_the_other_kind_get_temporary_failure() {
    // Section 2.25.2: a CHILD_SA rekey while we rekey the IKE SA, and an IKE SA rekey while
    // we rekey a CHILD_SA, are answered TEMPORARY_FAILURE.
    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    let b_id = b_sa(&p);
    let known = installs(&p.events_b)[0].outbound.spi;
    let mut ours = Vec::new();
    p.b.start_ike_rekey(b_id, p.now, &mut ours);
    assert!(!sends(&ours).is_empty());
    let (actions, response) = create_child(
        &mut p,
        id,
        &child_rekey_request(known.to_be_bytes().to_vec()),
    );
    assert!(installs(&actions).is_empty());
    assert_eq!(
        error_in(&response.unwrap()),
        Some(notify::TEMPORARY_FAILURE)
    );

    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    let b_id = b_sa(&p);
    let inbound = installs(&p.events_b)[0].inbound.spi;
    let mut ours = Vec::new();
    p.b.start_child_rekey(b_id, inbound, p.now, &mut ours);
    assert!(!sends(&ours).is_empty());
    let ike = IkeProposal::parse(IKE).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let (_, public) = dh::generate(DhGroup::Curve25519, &rng).unwrap();
    let (_, response) = create_child(
        &mut p,
        id,
        &[
            Payload::Sa(vec![ike.to_wire(1, &[7; 8])]),
            Payload::Nonce(vec![2; 32]),
            Payload::Ke {
                group: DhGroup::Curve25519.id(),
                data: public,
            },
        ],
    );
    assert_eq!(
        error_in(&response.unwrap()),
        Some(notify::TEMPORARY_FAILURE)
    );
    assert_eq!(p.b.sas().len(), 1, "no new IKE SA");
}

#[test]
fn a_child_sa_proposal_requiring_pfs_without_a_ke_payload_gets_invalid_ke() {
    // Section 1.3.1: a proposal whose DH transforms do not include NONE needs KEi; the
    // responder asks for one with INVALID_KE_PAYLOAD instead of keying without PFS.
    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    let request = [
        Payload::Sa(vec![EspProposal::parse("aes128gcm16-x25519")
            .unwrap()
            .to_wire(1, 0x1234, true)]),
        Payload::Nonce(vec![1; 32]),
        Payload::TsI(vec![ts("198.18.0.0", "198.18.0.255")]),
        Payload::TsR(vec![ts("198.19.0.0", "198.19.0.255")]),
    ];
    let (actions, response) = create_child(&mut p, id, &request);
    assert!(installs(&actions).is_empty());
    let response = response.unwrap();
    assert!(response.iter().any(|p| matches!(
        p,
        Payload::Notify(n) if n.kind == notify::INVALID_KE_PAYLOAD
            && n.data == DhGroup::Curve25519.id().to_be_bytes()
    )));
}

#[test]
fn rekeying_an_unknown_child_sa_is_child_sa_not_found_and_the_ike_sa_stays() {
    // Section 2.25.1 / 3.10.1: CHILD_SA_NOT_FOUND; NO_PROPOSAL_CHOSEN for a CHILD_SA
    // leaves the IKE SA up.
    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    let (_, response) = create_child(
        &mut p,
        id,
        &child_rekey_request(0x0bad_0badu32.to_be_bytes().to_vec()),
    );
    assert_eq!(
        error_in(&response.unwrap()),
        Some(notify::CHILD_SA_NOT_FOUND)
    );
    assert_eq!(p.b.state(IkeSaId(b_sa(&p))), Some(IkeState::Established));
}

// ---------------------------------------------------------------- outside any IKE SA

/// A request of A's on its IKE SA `id` with B's SPI replaced by one B never gave out.
fn request_for_an_unknown_sa(p: &mut Pair, id: IkeSaId) -> Vec<u8> {
    let mut request = request_by_a(p, id, exchange::INFORMATIONAL, &[]);
    request[8..16].copy_from_slice(&0x4242_4242_4242_4242u64.to_be_bytes());
    request
}

#[test]
fn a_request_for_an_unknown_ike_sa_gets_invalid_ike_spi_and_a_response_nothing() {
    // Section 2.21.4: the answer goes to the address and port the request came from, with
    // its IKE SPIs and Message ID, not cryptographically protected, with INVALID_IKE_SPI.
    // A message marked as a response MUST NOT be answered.
    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    let (a_addr, b_addr) = addrs();
    let mut request = request_for_an_unknown_sa(&mut p, id);
    let asked = Message::parse(&request).unwrap().header;
    let out = p.b.handle(&request, b_addr, a_addr, p.now, p.wall);
    let [Action::Send {
        local,
        remote,
        bytes,
    }] = &out[..]
    else {
        panic!("{out:?}");
    };
    assert_eq!((*local, *remote), (b_addr, a_addr));
    let answer = Message::parse(bytes).unwrap();
    let h = answer.header;
    assert_eq!(
        (h.spi_i, h.spi_r, h.message_id, h.exchange),
        (asked.spi_i, asked.spi_r, asked.message_id, asked.exchange)
    );
    assert!(h.is_response() && !h.from_initiator());
    assert!(
        matches!(
            &answer.payloads[..],
            [Payload::Notify(n)] if n.kind == notify::INVALID_IKE_SPI && n.spi.is_empty()
        ),
        "{:?}",
        answer.payloads
    );
    assert_eq!(p.b.counters().tx_invalid_ike_spi, 1);
    request[19] |= FLAG_RESPONSE;
    assert!(p
        .b
        .handle(&request, b_addr, a_addr, p.now, p.wall)
        .is_empty());
    assert_eq!(p.b.counters().rx_unknown_spi, 2);
    assert_eq!(p.b.counters().tx_invalid_ike_spi, 1);
}

#[test]
fn invalid_ike_spi_answers_keep_to_the_nat_t_port_and_the_error_budget() {
    // Section 2.21.4: back to the port the request came from (here the NAT-T port, with
    // its non-ESP marker, to a NAT's port); section 2.21: rate-limited, or the node
    // reflects floods of forged requests.
    let mut b = responder(IKE);
    let natt: SocketAddr = "198.51.100.2:4500".parse().unwrap();
    let nat: SocketAddr = "203.0.113.9:31337".parse().unwrap();
    let request = Message::emit(
        Header {
            spi_r: 0x4242_4242_4242_4242,
            exchange: exchange::IKE_AUTH,
            message_id: 1,
            ..init_header(FLAG_INITIATOR, 0)
        },
        &[],
    );
    let mut datagram = vec![0; 4];
    datagram.extend_from_slice(&request);
    let now = Instant::now();
    let limit = UNPROTECTED_ERRORS_PER_SECOND as usize;
    let mut answered = 0;
    for _ in 0..limit + 50 {
        for action in b.handle(&datagram, natt, nat, now, SystemTime::now()) {
            let Action::Send {
                local,
                remote,
                bytes,
            } = action
            else {
                panic!("{action:?}");
            };
            assert_eq!((local, remote), (natt, nat));
            assert_eq!(bytes[..4], [0; 4], "the non-ESP marker");
            let (h, n) = unprotected_notify(&[Action::Send {
                local,
                remote,
                bytes: bytes[4..].to_vec(),
            }]);
            assert_eq!(n.kind, notify::INVALID_IKE_SPI);
            assert_eq!((h.spi_i, h.message_id), (SPI_I, 1));
            answered += 1;
        }
    }
    assert_eq!(answered, limit);
    assert_eq!(b.counters().tx_invalid_ike_spi, limit as u64);
    assert_eq!(b.counters().unprotected_errors_limited, 50);
    let later = now + Duration::from_secs(1);
    assert_eq!(
        sends(&b.handle(&datagram, natt, nat, later, SystemTime::now())).len(),
        1
    );
    assert!(b.sas().is_empty(), "no state");
}

#[test]
fn an_unprotected_invalid_ike_spi_leaves_an_established_sa_alone() {
    // Section 2.21.4: such a notification may be forged and MUST NOT change the state of
    // an SA; it is a hint for a liveness check. A forged one does not stop the real answer
    // from completing the exchange; when the peer really lost the SA, the request
    // outstanding times out as any would.
    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    let (a_addr, b_addr) = addrs();
    let dpd = p.a.send_dpd(id, p.now).unwrap();
    let asked = Message::parse(&sends(&dpd)[0]).unwrap().header;
    let forged = Message::emit(
        Header {
            flags: FLAG_RESPONSE,
            ..asked
        },
        &[Payload::Notify(Notify::new(
            notify::INVALID_IKE_SPI,
            Vec::new(),
        ))],
    );
    let out = p.a.handle(&forged, a_addr, b_addr, p.now, p.wall);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(p.a.counters().rx_invalid_ike_spi, 1);
    assert_eq!(p.a.state(id), Some(IkeState::Established));
    p.run(dpd);
    assert!(p.a.sas.get(&id.0).unwrap().outstanding.is_none());

    // B restarts: its answers are INVALID_IKE_SPI from now on.
    p.b.sas.clear();
    let dpd = p.a.send_dpd(id, p.now).unwrap();
    p.run(dpd);
    assert_eq!(p.b.counters().tx_invalid_ike_spi, 1);
    assert_eq!(p.a.counters().rx_invalid_ike_spi, 2);
    assert_eq!(p.a.state(id), Some(IkeState::Established));
    let mut failed = None;
    for _ in 0..600 {
        p.tick(Duration::from_secs(1));
        failed = failed.or(failure(&p.events_a));
    }
    assert_eq!(failed, Some(Failure::Timeout));
    assert_eq!(p.a.state(id), None);
    assert!(
        p.a.counters().rx_invalid_ike_spi > 2,
        "every retransmission answered"
    );
}

#[test]
fn an_unprotected_invalid_ike_spi_leaves_a_half_open_sa_alone() {
    // Section 2.21.4: a node receiving an unprotected INVALID_IKE_SPI MUST NOT change the
    // state of any existing SA, half-open ones included (anyone who saw our IKE_AUTH could
    // forge it); the request goes on being retransmitted, and the attempt ends only when
    // that times out.
    let mut p = pair(IKE, "aes128gcm16");
    let (a_addr, b_addr) = addrs();
    let (id, actions) = p.a.connect("to-b", p.now).unwrap();
    let init = sends(&actions).remove(0);
    let answer = sends(&p.b.handle(&init, b_addr, a_addr, p.now, p.wall)).remove(0);
    let auth = sends(&p.a.handle(&answer, a_addr, b_addr, p.now, p.wall)).remove(0);
    assert_eq!(p.a.state(id), Some(IkeState::AuthSent));
    let mut b_state = std::mem::take(&mut p.b.sas);
    let refusal = sends(&p.b.handle(&auth, b_addr, a_addr, p.now, p.wall)).remove(0);
    let out = p.a.handle(&refusal, a_addr, b_addr, p.now, p.wall);
    assert_eq!(failure(&out), None);
    assert_eq!(p.a.state(id), Some(IkeState::AuthSent));
    assert_eq!(p.a.counters().rx_invalid_ike_spi, 1);
    // The refusal was a forgery after all: the responder still has its half, and the
    // retransmitted IKE_AUTH completes the SA.
    std::mem::swap(&mut p.b.sas, &mut b_state);
    let answer = sends(&p.b.handle(&auth, b_addr, a_addr, p.now, p.wall)).remove(0);
    p.a.handle(&answer, a_addr, b_addr, p.now, p.wall);
    assert_eq!(p.a.state(id), Some(IkeState::Established));
}

#[test]
fn our_child_sa_rekey_retries_with_the_group_the_peer_asks_for() {
    // Section 1.3: INVALID_KE_PAYLOAD names the group the responder wants; the initiator
    // retries with it (once, if its configuration allows that group).
    let mut a = peer("to-b", A, Some(B), IKE, "aes128gcm16-x25519-ecp256", b"pw");
    a.child_lifetime = lifetime(100, 110);
    let b = peer("from-a", B, None, IKE, "aes128gcm16-ecp256", b"pw");
    let mut p = Pair::new(a, b);
    p.connect();
    p.tick(Duration::from_secs(100));
    assert_eq!(p.b.counters().invalid_ke, 1);
    assert_eq!(installs(&p.events_a).len(), 1, "not yet");
    p.tick(Duration::from_millis(1));
    let (a_new, b_new) = (installs(&p.events_a), installs(&p.events_b));
    assert_eq!((a_new.len(), b_new.len()), (2, 2));
    esp_round_trip(a_new[1], b_new[1]);
    assert_eq!(p.a.counters().child_rekey_failures, 0);
}

/// The KE payload's group of a CREATE_CHILD_SA request of A's, opened with B's keys.
fn ke_group_of(p: &Pair, request: &[u8]) -> Option<u16> {
    open_with(&p.b, b_sa(p), request)
        .iter()
        .find_map(|payload| match payload {
            Payload::Ke { group, .. } => Some(*group),
            _ => None,
        })
}

/// The IKE SA rekey failures in `actions`.
fn ike_rekey_failures(actions: &[Action]) -> Vec<Failure> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::IkeRekeyFailed { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

#[test]
fn our_ike_sa_rekey_retries_with_the_group_the_peer_asks_for() {
    // Sections 1.3 and 3.10.1: a responder preferring another group of those offered
    // answers INVALID_KE_PAYLOAD naming it; the initiator retries with it. The IKE SA was
    // made with X25519, and B has come to accept ECP-256 only (as a peer choosing by its
    // own order of preference would).
    let ike = "aes128gcm16-prfsha256-x25519-ecp256";
    let mut a = peer("to-b", A, Some(B), ike, "aes128gcm16", b"pw");
    a.ike_lifetime = Some(Duration::from_secs(1000));
    let b = peer("from-a", B, None, ike, "aes128gcm16", b"pw");
    let mut p = Pair::new(a, b);
    let old = p.connect();
    assert_eq!(p.a.sas.get(&old.0).unwrap().dh_group, DhGroup::Curve25519);
    p.b.config.peers[0].ike_proposals =
        vec![IkeProposal::parse("aes128gcm16-prfsha256-ecp256").unwrap()];
    p.tick(Duration::from_secs(1000));
    assert_eq!(p.b.counters().invalid_ke, 1);
    assert_eq!(p.a.counters().invalid_ke, 1);
    assert_eq!(p.a.counters().ike_rekeys_started, 1);
    assert_eq!(p.a.counters().ike_rekey_failures, 0);
    assert!(ike_rekey_failures(&p.events_a).is_empty());
    let (a_spis, a_children) = only_ike_sa(&p.a);
    let (b_spis, _) = only_ike_sa(&p.b);
    assert_eq!(a_spis, b_spis);
    assert_ne!(a_spis.0, old.0, "a new IKE SA");
    assert_eq!(a_children.len(), 1, "which took the CHILD_SA over");
    let new = IkeSaId(a_spis.0);
    assert_eq!(
        p.a.sas.get(&new.0).unwrap().suite.map(|s| s.dh),
        Some(DhGroup::Ecp256)
    );
    let dpd = p.a.send_dpd(new, p.now).unwrap();
    p.run(dpd);
    assert!(p.a.sas.get(&new.0).unwrap().outstanding.is_none());
}

#[test]
fn our_ike_sa_rekey_gives_up_on_a_group_not_offered_or_a_second_refusal() {
    // The retry is for a group we offered, once: INVALID_KE_PAYLOAD naming another, or
    // refusing the retry too, ends the rekey (reported, counted) and the IKE SA carries on.
    let (a_addr, b_addr) = addrs();
    let ecp256 = DhGroup::Ecp256.id().to_be_bytes().to_vec();
    let x25519 = DhGroup::Curve25519.id().to_be_bytes().to_vec();
    let invalid_ke = |group: &[u8]| {
        [Payload::Notify(Notify::new(
            notify::INVALID_KE_PAYLOAD,
            group.to_vec(),
        ))]
    };
    // Offered X25519 only, asked for ECP-256.
    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    let b_id = b_sa(&p);
    let mut out = Vec::new();
    p.a.start_ike_rekey(id.0, p.now, &mut out);
    let request = Message::parse(&sends(&out)[0]).unwrap().header;
    let refusal = sealed_by_b(
        &mut p,
        b_id,
        exchange::CREATE_CHILD_SA,
        request.message_id,
        true,
        &invalid_ke(&ecp256),
    );
    let out = p.a.handle(&refusal, a_addr, b_addr, p.now, p.wall);
    assert!(sends(&out).is_empty(), "no retry");
    assert_eq!(
        ike_rekey_failures(&out),
        [Failure::UnsupportedGroup(DhGroup::Ecp256.id())]
    );
    assert_eq!(p.a.counters().ike_rekey_failures, 1);
    assert_eq!(p.a.state(id), Some(IkeState::Established));
    assert!(p.a.sas.get(&id.0).unwrap().outstanding.is_none());

    // Offered both: one retry with ECP-256, and a second refusal ends it.
    let mut p = pair("aes128gcm16-prfsha256-x25519-ecp256", "aes128gcm16");
    let id = p.connect();
    let b_id = b_sa(&p);
    let mut out = Vec::new();
    p.a.start_ike_rekey(id.0, p.now, &mut out);
    let first = sends(&out).remove(0);
    assert_eq!(ke_group_of(&p, &first), Some(DhGroup::Curve25519.id()));
    let message_id = Message::parse(&first).unwrap().header.message_id;
    let refusal = sealed_by_b(
        &mut p,
        b_id,
        exchange::CREATE_CHILD_SA,
        message_id,
        true,
        &invalid_ke(&ecp256),
    );
    let retry = sends(&p.a.handle(&refusal, a_addr, b_addr, p.now, p.wall)).remove(0);
    assert_eq!(ke_group_of(&p, &retry), Some(DhGroup::Ecp256.id()));
    let message_id = Message::parse(&retry).unwrap().header.message_id;
    let refusal = sealed_by_b(
        &mut p,
        b_id,
        exchange::CREATE_CHILD_SA,
        message_id,
        true,
        &invalid_ke(&x25519),
    );
    let out = p.a.handle(&refusal, a_addr, b_addr, p.now, p.wall);
    assert!(sends(&out).is_empty(), "one retry only");
    assert_eq!(
        ike_rekey_failures(&out),
        [Failure::PeerError(notify::INVALID_KE_PAYLOAD)]
    );
    assert_eq!(p.a.counters().ike_rekeys_started, 1);
    assert_eq!(p.a.counters().ike_rekey_failures, 1);
    assert_eq!(p.a.state(id), Some(IkeState::Established));
    assert_eq!(p.a.sas().len(), 1);
}
