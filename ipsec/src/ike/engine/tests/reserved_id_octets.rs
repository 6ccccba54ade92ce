//! ID payloads whose RESERVED octets are not zero, as libreswan sends them with `whack
//! --impair send-nonzero-reserved-id` (found by `proxy/tests/ipsec_libreswan.rs`). RFC 7296
//! section 3.5 has them ignored on receipt, but section 2.15 has AUTH cover the ID payload's
//! body as sent (`RestOfInitIDPayload = IDType | RESERVED | InitIDData`): the receiver must
//! check AUTH over the octets it received. Taking RESERVED as zero failed such a peer with
//! AUTHENTICATION_FAILED, in either role.

use super::rfc7296_negative::{addrs, open_with, sealed_by_b, sends, IKE};
use super::*;

const ESP: &str = "aes128gcm16";
const PSK: &[u8] = b"correct horse";

/// RESERVED as libreswan's impairment sets it: its third octet 0x01.
const RESERVED: [u8; 3] = [0, 0, 1];

/// The octets the sender's AUTH covers for `id`, written out here from section 2.15
/// (`IDType | RESERVED | data`) rather than taken from the code under test.
fn signed_body(id: &Identification) -> Vec<u8> {
    let mut body = vec![id.kind];
    body.extend_from_slice(&id.reserved);
    body.extend_from_slice(&id.data);
    body
}

/// `payloads` of an IKE_AUTH message with the ID payload's RESERVED set to [`RESERVED`] and
/// AUTH computed again over the new body, as the sender would (PSK, `prf`, its SK_p, its
/// IKE_SA_INIT message and the other end's nonce).
fn with_reserved_id(
    payloads: Vec<Payload>,
    prf: PrfAlgorithm,
    sk_p: &SecretBytes,
    real_message: &[u8],
    peer_nonce: &[u8],
) -> Vec<Payload> {
    let mut body = None;
    let mut out = Vec::new();
    for p in payloads {
        out.push(match p {
            Payload::IdI(mut id) => {
                id.reserved = RESERVED;
                body = Some(signed_body(&id));
                Payload::IdI(id)
            }
            Payload::IdR(mut id) if body.is_none() => {
                id.reserved = RESERVED;
                body = Some(signed_body(&id));
                Payload::IdR(id)
            }
            Payload::Auth { method, .. } => {
                let body = body.as_deref().expect("an ID payload before AUTH");
                let auth = psk_auth(prf, PSK, real_message, peer_nonce, sk_p, body);
                Payload::Auth {
                    method,
                    data: auth.expose().to_vec(),
                }
            }
            other => other,
        });
    }
    out
}

/// A (initiator) has sent IKE_AUTH; its request, not yet delivered, and the SA ids.
fn up_to_auth(p: &mut Pair) -> (IkeSaId, u64, Vec<u8>) {
    let (a_addr, b_addr) = addrs();
    let (id, actions) = p.a.connect("to-b", p.now).unwrap();
    let init = sends(&actions);
    assert_eq!(init.len(), 1);
    let answer = sends(&p.b.handle(&init[0], b_addr, a_addr, p.now, p.wall));
    assert_eq!(answer.len(), 1);
    let auth = sends(&p.a.handle(&answer[0], a_addr, b_addr, p.now, p.wall));
    assert_eq!(auth.len(), 1, "one unfragmented IKE_AUTH request");
    let spi_r = Header::parse(&auth[0]).unwrap().spi_r;
    (id, spi_r, auth.into_iter().next().unwrap())
}

#[test]
fn an_initiator_id_with_nonzero_reserved_octets_authenticates() {
    let mut p = pair(IKE, ESP);
    let (a_addr, b_addr) = addrs();
    let (id, spi_r, auth) = up_to_auth(&mut p);
    // A's IKE_AUTH again, as libreswan sends it: IDi RESERVED 00 00 01, AUTH over that.
    let payloads = open_with(&p.b, spi_r, &auth);
    let sa = p.a.sas.get_mut(&id.0).unwrap();
    let (prf, sk_pi) = (
        sa.suite.unwrap().prf,
        sa.keys.as_ref().unwrap().sk_pi.clone(),
    );
    let payloads = with_reserved_id(payloads, prf, &sk_pi, &sa.init_request, &sa.nonce_r);
    sa.iv_counter += 1;
    let header = sa.header(exchange::IKE_AUTH, 1, false);
    let request = seal_message(header, &payloads, sa.tx.as_ref().unwrap(), sa.iv_counter).unwrap();

    let out = p.b.handle(&request, b_addr, a_addr, p.now, p.wall);
    let (mut to_b, mut to_a) = (Vec::new(), Vec::new());
    p.absorb(out, false, &mut to_b, &mut to_a);
    assert!(
        established(&p.events_b) && failure(&p.events_b).is_none(),
        "B refused AUTH over an IDi with RESERVED set: {:?} {:?}",
        failure(&p.events_b),
        p.b.counters()
    );
    assert_eq!(p.b.counters().auth_failures, 0);
    // The identity B authenticated is A's, RESERVED aside.
    let b_sa = p.b.sas.get(&spi_r).unwrap();
    assert_eq!(
        b_sa.peer_id,
        Some(Identity::parse("@a.example").to_wire()),
        "identity"
    );
    assert_eq!(to_a.len(), 1);
    let out = p.a.handle(&to_a[0].2, a_addr, b_addr, p.now, p.wall);
    p.run(out);
    assert_eq!(p.a.state(id), Some(IkeState::Established));
    assert_eq!(installs(&p.events_a).len(), 1);
    assert_eq!(installs(&p.events_b).len(), 1);
}

#[test]
fn a_responder_id_with_nonzero_reserved_octets_authenticates() {
    let mut p = pair(IKE, ESP);
    let (a_addr, b_addr) = addrs();
    let (id, spi_r, auth) = up_to_auth(&mut p);
    let out = p.b.handle(&auth, b_addr, a_addr, p.now, p.wall);
    let (mut to_b, mut to_a) = (Vec::new(), Vec::new());
    p.absorb(out, false, &mut to_b, &mut to_a);
    assert_eq!(to_a.len(), 1, "one unfragmented IKE_AUTH answer");
    // B's answer again, as libreswan sends it: IDr RESERVED 00 00 01, AUTH over that (with
    // B's IKE_SA_INIT answer and A's nonce, taken from A, which has not finished yet).
    let payloads = open_with(&p.a, id.0, &to_a[0].2);
    let sa = p.a.sas.get(&id.0).unwrap();
    let (prf, sk_pr) = (
        sa.suite.unwrap().prf,
        sa.keys.as_ref().unwrap().sk_pr.clone(),
    );
    let payloads = with_reserved_id(payloads, prf, &sk_pr, &sa.init_response, &sa.nonce_i);
    let answer = sealed_by_b(&mut p, spi_r, exchange::IKE_AUTH, 1, true, &payloads);

    let out = p.a.handle(&answer, a_addr, b_addr, p.now, p.wall);
    p.run(out);
    assert_eq!(
        p.a.state(id),
        Some(IkeState::Established),
        "A refused AUTH over an IDr with RESERVED set: {:?} {:?}",
        failure(&p.events_a),
        p.a.counters()
    );
    assert_eq!(p.a.counters().auth_failures, 0);
    assert_eq!(installs(&p.events_a).len(), 1);
}
