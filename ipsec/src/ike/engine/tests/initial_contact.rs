//! INITIAL_CONTACT (RFC 7296 sections 2.4 and 3.10.1): sent in the first IKE_AUTH message
//! when no other IKE SA with the peer exists; on receipt, the other IKE SAs with the same
//! authenticated identity go, with their CHILD_SAs and without a Delete.

use super::rfc7296_negative::{addrs, open_with, sends, IKE};
use super::*;

const ESP: &str = "aes128gcm16";

fn initiator_config() -> EngineConfig {
    EngineConfig {
        peers: vec![peer("to-b", A, Some(B), IKE, ESP, b"correct horse")],
        ..EngineConfig::default()
    }
}

fn responder_config() -> EngineConfig {
    EngineConfig {
        peers: vec![peer("from-a", B, None, IKE, ESP, b"correct horse")],
        ..EngineConfig::default()
    }
}

/// The notify types in the first IKE_AUTH request and its answer, for an IKE SA from A to
/// B, stepped by hand so that both can be read.
struct Auth {
    id: IkeSaId,
    request: Vec<u16>,
    response: Vec<u16>,
}

fn kinds(payloads: &[Payload]) -> Vec<u16> {
    notifies(payloads).map(|n| n.kind).collect()
}

/// Sets up an IKE SA from `p.a` to `p.b`, reading the IKE_AUTH messages on the way; the
/// events go to `p.events_a` and `p.events_b` as [`Pair::run`] would put them.
fn connect_reading_auth(p: &mut Pair) -> Auth {
    let (a_addr, b_addr) = addrs();
    let (id, actions) = p.a.connect("to-b", p.now).unwrap();
    let init = sends(&actions);
    assert_eq!(init.len(), 1);
    let init_answer = sends(&p.b.handle(&init[0], b_addr, a_addr, p.now, p.wall));
    assert_eq!(init_answer.len(), 1);
    let auth = sends(&p.a.handle(&init_answer[0], a_addr, b_addr, p.now, p.wall));
    assert_eq!(auth.len(), 1, "one unfragmented IKE_AUTH request");
    let spi_r = Header::parse(&auth[0]).unwrap().spi_r;
    let request = kinds(&open_with(&p.b, spi_r, &auth[0]));
    let mut to_a = Vec::new();
    let mut to_b = Vec::new();
    let out = p.b.handle(&auth[0], b_addr, a_addr, p.now, p.wall);
    p.absorb(out, false, &mut to_b, &mut to_a);
    assert_eq!(to_a.len(), 1, "one unfragmented IKE_AUTH answer");
    let response = kinds(&open_with(&p.a, id.0, &to_a[0].2));
    let out = p.a.handle(&to_a[0].2, a_addr, b_addr, p.now, p.wall);
    p.run(out);
    assert_eq!(p.a.state(id), Some(IkeState::Established));
    Auth {
        id,
        request,
        response,
    }
}

fn closed(events: &[Action]) -> Vec<IkeSaId> {
    events
        .iter()
        .filter_map(|e| match e {
            Action::Closed { ike_sa, .. } => Some(*ike_sa),
            _ => None,
        })
        .collect()
}

/// B's SPI (SPIr) of each of its IKE SAs.
fn b_sas(p: &Pair) -> Vec<u64> {
    p.b.sas().into_iter().map(|(id, _, _)| id.0).collect()
}

/// Our inbound SPIs of the CHILD_SAs of IKE SA `id`.
fn children_of(engine: &Engine, id: u64) -> Vec<u32> {
    engine.sas[&id]
        .children
        .iter()
        .map(|c| c.inbound_spi)
        .collect()
}

#[test]
fn the_first_ike_sa_carries_initial_contact_and_a_second_one_does_not() {
    let mut p = pair(IKE, ESP);
    let first = connect_reading_auth(&mut p);
    assert!(first.request.contains(&notify::INITIAL_CONTACT));
    // B had no other SA with A either.
    assert!(first.response.contains(&notify::INITIAL_CONTACT));
    let second = connect_reading_auth(&mut p);
    assert!(!second.request.contains(&notify::INITIAL_CONTACT));
    assert!(!second.response.contains(&notify::INITIAL_CONTACT));
    // Without it, both stay.
    assert_eq!(p.b.sas().len(), 2);
    assert_eq!(p.a.sas().len(), 2);
    assert_eq!(p.b.counters().initial_contact_removals, 0);
    assert!(closed(&p.events_b).is_empty() && deleted(&p.events_b).is_empty());
    assert_ne!(first.id, second.id);
}

#[test]
fn a_restarted_initiator_s_initial_contact_removes_its_old_sas_at_the_responder() {
    let mut p = pair(IKE, ESP);
    let first = connect_reading_auth(&mut p);
    let second = connect_reading_auth(&mut p);
    assert!(!second.request.contains(&notify::INITIAL_CONTACT));
    let old: Vec<u64> = b_sas(&p);
    assert_eq!(old.len(), 2);
    let old_children: Vec<u32> = old.iter().flat_map(|&id| children_of(&p.b, id)).collect();
    assert_eq!(old_children.len(), 2);

    // A restarts: a new engine, the same configuration and identity.
    let mut old_a = std::mem::replace(&mut p.a, Engine::new(initiator_config()).unwrap());
    p.events_b.clear();
    let fresh = connect_reading_auth(&mut p);
    assert!(fresh.request.contains(&notify::INITIAL_CONTACT));
    assert!(fresh.response.contains(&notify::INITIAL_CONTACT));

    // B dropped both old IKE SAs and their CHILD_SAs, with no Delete sent to A (the only
    // message B sent was the IKE_AUTH answer, read above).
    let now_b = b_sas(&p);
    assert_eq!(now_b.len(), 1);
    assert!(!old.contains(&now_b[0]));
    let mut gone = closed(&p.events_b);
    gone.sort();
    let mut expected: Vec<IkeSaId> = old.iter().map(|&id| IkeSaId(id)).collect();
    expected.sort();
    assert_eq!(gone, expected);
    let mut removed = deleted(&p.events_b);
    removed.sort_unstable();
    let mut old_children = old_children;
    old_children.sort_unstable();
    assert_eq!(removed, old_children);
    assert_eq!(p.b.counters().initial_contact_removals, 2);
    // Old CHILD_SAs leave the dataplane before the new one is installed.
    let first_install = p
        .events_b
        .iter()
        .position(|e| matches!(e, Action::InstallChildSa(_)))
        .unwrap();
    let last_delete = p
        .events_b
        .iter()
        .rposition(|e| matches!(e, Action::DeleteChildSa { .. }))
        .unwrap();
    assert!(last_delete < first_install);

    // A request on an old SA (from the engine before the restart) finds no SA: it is
    // answered with INVALID_IKE_SPI, unprotected, as for any SA that ended.
    let (a_addr, b_addr) = addrs();
    let dpd = sends(&old_a.send_dpd(first.id, p.now).unwrap());
    let answer = sends(&p.b.handle(&dpd[0], b_addr, a_addr, p.now, p.wall));
    assert_eq!(answer.len(), 1);
    let message = Message::parse(&answer[0]).unwrap();
    assert_eq!(kinds(&message.payloads), vec![notify::INVALID_IKE_SPI]);
    assert_eq!(p.b.counters().tx_invalid_ike_spi, 1);
    // ESP on the new CHILD_SA works.
    let a = installs(&p.events_a);
    let b = installs(&p.events_b);
    esp_round_trip(a.last().unwrap(), b.last().unwrap());
}

#[test]
fn a_restarted_responder_s_initial_contact_removes_the_initiator_s_stale_sa() {
    let mut p = pair(IKE, ESP);
    let first = connect_reading_auth(&mut p);
    let old_children = children_of(&p.a, first.id.0);
    // B restarts and forgets the SA; A does not know.
    p.b = Engine::new(responder_config()).unwrap();
    p.events_a.clear();
    let second = connect_reading_auth(&mut p);
    // A still had an SA with B: no INITIAL_CONTACT from A. B has no other: it sends one.
    assert!(!second.request.contains(&notify::INITIAL_CONTACT));
    assert!(second.response.contains(&notify::INITIAL_CONTACT));
    assert_eq!(closed(&p.events_a), vec![first.id]);
    assert_eq!(deleted(&p.events_a), old_children);
    assert_eq!(p.a.state(first.id), None);
    assert_eq!(p.a.state(second.id), Some(IkeState::Established));
    assert_eq!(p.a.counters().initial_contact_removals, 1);
}

#[test]
fn initial_contact_removes_only_sas_of_the_same_identity() {
    // A responder that takes any identity proving the key.
    let mut b_peer = peer("from-any", B, None, IKE, ESP, b"correct horse");
    b_peer.remote_id = None;
    let mut p = Pair::new(peer("to-b", A, Some(B), IKE, ESP, b"correct horse"), b_peer);
    let first = connect_reading_auth(&mut p);
    assert!(first.request.contains(&notify::INITIAL_CONTACT));
    let old = b_sas(&p);
    // Another initiator, another identity, the same configuration at B.
    let mut other = peer("to-b", A, Some(B), IKE, ESP, b"correct horse");
    other.local_id = Identity::parse("@c.example");
    p.a = Engine::new(EngineConfig {
        peers: vec![other],
        ..EngineConfig::default()
    })
    .unwrap();
    p.events_b.clear();
    let second = connect_reading_auth(&mut p);
    assert!(second.request.contains(&notify::INITIAL_CONTACT));
    // B's only SA with this identity: B announces it too.
    assert!(second.response.contains(&notify::INITIAL_CONTACT));
    assert!(closed(&p.events_b).is_empty());
    assert_eq!(p.b.sas().len(), 2);
    assert!(b_sas(&p).contains(&old[0]));
    assert_eq!(p.b.counters().initial_contact_removals, 0);
}

#[test]
fn an_exchange_under_way_keeps_initial_contact_out() {
    // A restarted engine with a first attempt still under way (its IKE_SA_INIT lost) does
    // not claim to be the only SA in its second attempt, and B keeps the old one.
    let mut p = pair(IKE, ESP);
    connect_reading_auth(&mut p);
    let old = b_sas(&p);
    p.a = Engine::new(initiator_config()).unwrap();
    let (pending, _lost) = p.a.connect("to-b", p.now).unwrap();
    let second = connect_reading_auth(&mut p);
    assert!(!second.request.contains(&notify::INITIAL_CONTACT));
    assert_eq!(p.a.state(pending), Some(IkeState::InitSent));
    assert!(b_sas(&p).contains(&old[0]));
    assert_eq!(p.b.sas().len(), 2);
}

#[test]
fn initial_contact_in_a_later_message_is_ignored() {
    // Section 2.4: only the first IKE_AUTH message counts; in an INFORMATIONAL it does
    // nothing (and the request is answered as usual).
    let mut p = pair(IKE, ESP);
    connect_reading_auth(&mut p);
    let second = connect_reading_auth(&mut p);
    let (a_addr, b_addr) = addrs();
    let n = Payload::Notify(Notify::new(notify::INITIAL_CONTACT, Vec::new()));
    let sa = p.a.sas.get_mut(&second.id.0).unwrap();
    let message_id = sa.next_request_id;
    sa.next_request_id += 1;
    sa.iv_counter += 1;
    let header = sa.header(exchange::INFORMATIONAL, message_id, false);
    let request = seal_message(header, &[n], sa.tx.as_ref().unwrap(), sa.iv_counter).unwrap();
    let answer = sends(&p.b.handle(&request, b_addr, a_addr, p.now, p.wall));
    assert_eq!(answer.len(), 1);
    assert_eq!(p.b.sas().len(), 2);
    assert_eq!(p.b.counters().initial_contact_removals, 0);
}
