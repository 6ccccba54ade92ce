//! IKE_SA_INIT retransmissions at the responder (RFC 7296 section 2.1): a retransmission of
//! a half-open SA's request gets the same answer, one of an SA whose IKE_AUTH arrived is
//! ignored, and a new request with the same SPIi from the same address is a new IKE SA.

use super::rfc7296_negative::{
    addrs, ike_proposal, init_header, init_payloads, responder, sends, IKE,
};
use super::*;

/// An IKE_SA_INIT request with SPIi `spi_i` and nonce `nonce`.
fn init_with_nonce(spi_i: u64, nonce: u8) -> Vec<u8> {
    let mut header = init_header(FLAG_INITIATOR, 0);
    header.spi_i = spi_i;
    let mut payloads = init_payloads(vec![ike_proposal(IKE, 1)], DhGroup::Curve25519);
    for p in &mut payloads {
        if let Payload::Nonce(n) = p {
            *n = vec![nonce; 32];
        }
    }
    Message::emit(header, &payloads)
}

fn spi_r_of(answer: &[u8]) -> u64 {
    Header::parse(answer).unwrap().spi_r
}

/// The first IKE_SA_INIT request A sends, and the SA it is for.
fn captured_init(p: &mut Pair) -> (IkeSaId, Vec<u8>, Vec<Action>) {
    let (id, actions) = p.a.connect("to-b", p.now).unwrap();
    let init = sends(&actions);
    assert_eq!(init.len(), 1);
    (id, init[0].clone(), actions)
}

#[test]
fn a_replayed_init_request_after_ike_auth_is_ignored() {
    let mut p = pair(IKE, "aes128gcm16");
    let (id, init, actions) = captured_init(&mut p);
    p.run(actions);
    assert!(established(&p.events_a) && established(&p.events_b));
    let (a_addr, b_addr) = addrs();
    let resent = p.b.counters().responses_resent;
    let out = p.b.handle(&init, b_addr, a_addr, p.now, p.wall);
    assert!(out.is_empty(), "no answer, no new SA, no event: {out:?}");
    assert_eq!(p.b.sas().len(), 1);
    assert_eq!(p.b.counters().stale_init_requests, 1);
    assert_eq!(p.b.counters().responses_resent, resent);
    assert_eq!(p.a.state(id), Some(IkeState::Established));
}

#[test]
fn ike_sa_init_messages_are_freed_once_ike_auth_is_done() {
    let mut p = pair(IKE, "aes128gcm16");
    let (a_addr, b_addr) = addrs();
    let (id, init, actions) = captured_init(&mut p);
    let answer = sends(&p.b.handle(&init, b_addr, a_addr, p.now, p.wall));
    let spi_r = spi_r_of(&answer[0]);
    // Half-open: both ends still hold them, for AUTH.
    assert!(!p.b.sas[&spi_r].init_request.is_empty());
    assert!(!p.b.sas[&spi_r].init_response.is_empty());
    drop(actions);
    let auth = p.a.handle(&answer[0], a_addr, b_addr, p.now, p.wall);
    assert!(!p.a.sas[&id.0].init_request.is_empty());
    assert!(!p.a.sas[&id.0].init_response.is_empty());
    p.run(auth);
    assert!(established(&p.events_a) && established(&p.events_b));
    for sa in [&p.a.sas[&id.0], &p.b.sas[&spi_r]] {
        assert!(sa.init_request.is_empty() && sa.init_response.is_empty());
    }
    // The responder still recognises the request; the SA still works (DPD, rekey).
    assert!(p.b.handle(&init, b_addr, a_addr, p.now, p.wall).is_empty());
    let actions = p.a.send_dpd(id, p.now).unwrap();
    p.run(actions);
    assert!(p.a.next_timeout().is_none(), "DPD answered");
}

#[test]
fn a_new_init_request_with_the_same_spi_is_a_new_sa() {
    let mut b = responder(IKE);
    let (a, b_addr) = addrs();
    let now = Instant::now();
    let wall = SystemTime::now();
    let first = init_with_nonce(0x1234, 1);
    let second = init_with_nonce(0x1234, 2);
    let answer1 = sends(&b.handle(&first, b_addr, a, now, wall));
    let answer2 = sends(&b.handle(&second, b_addr, a, now, wall));
    assert_eq!(answer1.len(), 1);
    assert_eq!(answer2.len(), 1, "a fresh answer");
    assert_ne!(answer1, answer2);
    let (spi1, spi2) = (spi_r_of(&answer1[0]), spi_r_of(&answer2[0]));
    assert_ne!(spi1, spi2, "a new responder SPI");
    assert_eq!(Header::parse(&answer2[0]).unwrap().spi_i, 0x1234);
    assert_eq!(b.sas().len(), 2);
    assert_eq!(b.counters().responses_resent, 0);
    // Each is still told apart from the other by its content.
    assert_eq!(sends(&b.handle(&first, b_addr, a, now, wall)), answer1);
    assert_eq!(sends(&b.handle(&second, b_addr, a, now, wall)), answer2);
    assert_eq!(b.counters().responses_resent, 2);
    assert_eq!(b.sas().len(), 2);
}

#[test]
fn a_byte_identical_retransmission_while_half_open_gets_the_cached_answer() {
    let mut b = responder(IKE);
    let (a, b_addr) = addrs();
    let now = Instant::now();
    let wall = SystemTime::now();
    let request = init_with_nonce(0x99, 7);
    let first = sends(&b.handle(&request, b_addr, a, now, wall));
    for _ in 0..3 {
        assert_eq!(sends(&b.handle(&request, b_addr, a, now, wall)), first);
    }
    assert_eq!(b.sas().len(), 1);
    assert_eq!(b.counters().responses_resent, 3);
    assert_eq!(b.counters().stale_init_requests, 0);
}

#[test]
fn an_initiator_restarting_with_the_same_spi_after_ike_auth_gets_a_new_sa() {
    // The old SA is established; a new request that happens to reuse SPIi (another
    // initiator behind the same NAT, or a restart) is not mistaken for a retransmission.
    let mut p = pair(IKE, "aes128gcm16");
    let (id, _, actions) = captured_init(&mut p);
    p.run(actions);
    assert!(established(&p.events_b));
    let (a_addr, b_addr) = addrs();
    let request = init_with_nonce(id.0, 3);
    let answer = sends(&p.b.handle(&request, b_addr, a_addr, p.now, p.wall));
    assert_eq!(answer.len(), 1);
    let spi_r = spi_r_of(&answer[0]);
    assert_eq!(p.b.sas().len(), 2);
    assert_eq!(p.b.state(IkeSaId(spi_r)), Some(IkeState::HalfOpen));
    assert_eq!(p.b.counters().stale_init_requests, 0);
}

#[test]
fn a_late_init_retransmission_after_the_move_to_nat_t_is_ignored() {
    // Behind a NAT the SA moves to port 4500 in IKE_AUTH; a late copy of the IKE_SA_INIT
    // request, from port 500, is still recognised.
    let mut p = pair(IKE, "aes128gcm16");
    p.nat = Some((A.parse().unwrap(), "203.0.113.9:33000".parse().unwrap()));
    let (_, init, actions) = captured_init(&mut p);
    p.run(actions);
    assert!(established(&p.events_b));
    let b_addr: SocketAddr = B.parse().unwrap();
    let public: SocketAddr = "203.0.113.9:33000".parse().unwrap();
    assert!(p.b.handle(&init, b_addr, public, p.now, p.wall).is_empty());
    assert_eq!(p.b.sas().len(), 1);
    assert_eq!(p.b.counters().stale_init_requests, 1);
}
