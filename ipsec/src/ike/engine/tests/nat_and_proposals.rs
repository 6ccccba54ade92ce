//! Findings of a second review against RFC 7296 and RFC 3948: the proposal number of an
//! answer (3.3.1), PFS proposal selection in CREATE_CHILD_SA (1.3.1), NAT-keepalives (RFC 3948
//! section 4) and CHILD_SAs that follow a peer whose NAT changed its mapping (2.23). Each test
//! names the requirement it checks.

use super::rfc7296_negative::{addrs, b_sa, open_with, sealed_by_b, sends, IKE};
use super::*;

// ---------------------------------------------------------------- answers' proposal numbers

/// `payloads` with the proposal number of their SA payload's (first) proposal set to
/// `number`.
fn renumbered(payloads: &mut [Payload], number: u8) {
    for payload in payloads {
        if let Payload::Sa(proposals) = payload {
            proposals[0].number = number;
        }
    }
}

/// RFC 7296 3.3.1: the answer's proposal number "MUST match the number on the proposal sent
/// that was accepted". An IKE_SA_INIT answer is unauthenticated, so one under a number we
/// did not send (7), or under the number of another of our proposals than the one whose
/// transforms it carries (2 for #1's), fails nothing at once (2.21.1): no IKE_AUTH goes out,
/// the real answer still completes the exchange, and without one the attempt ends as a
/// proposal mismatch.
#[test]
fn an_init_answer_must_carry_the_number_of_the_proposal_it_accepts() {
    let two = format!("{IKE},aes256-sha256-x25519");
    let (a_addr, b_addr) = addrs();
    for number in [7, 2, 0] {
        let mut p = Pair::new(
            peer("to-b", A, Some(B), &two, "aes128gcm16", b"k"),
            peer("from-a", B, None, IKE, "aes128gcm16", b"k"),
        );
        let (id, actions) = p.a.connect("to-b", p.now).unwrap();
        let init = sends(&actions).remove(0);
        let answer = sends(&p.b.handle(&init, b_addr, a_addr, p.now, p.wall)).remove(0);
        let mut forged = Message::parse(&answer).unwrap();
        renumbered(&mut forged.payloads, number);
        let forged = Message::emit(forged.header, &forged.payloads);
        let out = p.a.handle(&forged, a_addr, b_addr, p.now, p.wall);
        assert!(sends(&out).is_empty(), "#{number}: no IKE_AUTH");
        assert_eq!(failure(&out), None, "#{number}: nothing fails yet");
        assert_eq!(p.a.state(id), Some(IkeState::InitSent));
        let out = p.a.handle(&answer, a_addr, b_addr, p.now, p.wall);
        assert_eq!(sends(&out).len(), 1, "#{number}: the real answer is taken");
        assert_eq!(p.a.state(id), Some(IkeState::AuthSent));
    }
    // Only the forged answer: the attempt ends with the mismatch once retransmissions end.
    let mut a = Engine::new(EngineConfig {
        peers: vec![peer("to-b", A, Some(B), &two, "aes128gcm16", b"k")],
        ..EngineConfig::default()
    })
    .unwrap();
    let mut b = Engine::new(EngineConfig {
        peers: vec![peer("from-a", B, None, IKE, "aes128gcm16", b"k")],
        ..EngineConfig::default()
    })
    .unwrap();
    let (mut now, wall) = (Instant::now(), SystemTime::now());
    let (id, actions) = a.connect("to-b", now).unwrap();
    let answer = sends(&b.handle(&sends(&actions)[0], b_addr, a_addr, now, wall)).remove(0);
    let mut forged = Message::parse(&answer).unwrap();
    renumbered(&mut forged.payloads, 2);
    let forged = Message::emit(forged.header, &forged.payloads);
    assert!(sends(&a.handle(&forged, a_addr, b_addr, now, wall)).is_empty());
    let mut failed = None;
    for _ in 0..60 {
        now += Duration::from_secs(1);
        failed = failed.or(failure(&a.handle_timeout(now)));
    }
    assert_eq!(failed, Some(Failure::ProposalMismatch));
    assert_eq!(a.state(id), None);
}

/// RFC 7296 3.3.1 for IKE_AUTH's CHILD_SA: an answer under a number we did not send, or
/// under another proposal's number than the one it matches, is not taken. The IKE SA is up
/// (the answer is authenticated), the CHILD_SA fails as a proposal mismatch, and the one
/// the peer set up is deleted.
#[test]
fn an_auth_answer_must_carry_the_number_of_the_esp_proposal_it_accepts() {
    for number in [7, 2] {
        let mut p = Pair::new(
            peer("to-b", A, Some(B), IKE, "aes128gcm16,aes256gcm16", b"k"),
            peer("from-a", B, None, IKE, "aes128gcm16", b"k"),
        );
        let id = with_edited_auth_answer(&mut p, |payloads| renumbered(payloads, number));
        assert_eq!(p.a.state(id), Some(IkeState::Established), "#{number}");
        assert!(installs(&p.events_a).is_empty(), "#{number}");
        assert_eq!(
            child_failure(&p.events_a),
            Some(Failure::ProposalMismatch),
            "#{number}"
        );
        let b_child = installs(&p.events_b)[0].inbound.spi;
        assert_eq!(
            deleted(&p.events_b),
            vec![b_child],
            "#{number}: B's is gone"
        );
        assert!(children(&p.b).is_empty());
    }
    // The answer as sent (number 1) is taken.
    let mut p = Pair::new(
        peer("to-b", A, Some(B), IKE, "aes128gcm16,aes256gcm16", b"k"),
        peer("from-a", B, None, IKE, "aes128gcm16", b"k"),
    );
    with_edited_auth_answer(&mut p, |_| {});
    assert_eq!(installs(&p.events_a).len(), 1);
}

/// Runs our rekey of the CHILD_SA (A's, at its soft lifetime) with B's answer renumbered
/// to `number`; A's actions on reading it, and B's on the request that follows, if any.
fn child_rekey_with_answer_number(p: &mut Pair, number: u8) -> (Vec<Action>, Vec<Action>) {
    let (a_addr, b_addr) = addrs();
    let a_id = *p.a.sas.keys().next().unwrap();
    let b_id = b_sa(p);
    p.now += Duration::from_secs(100);
    let request = sends(&p.a.handle_timeout(p.now)).remove(0);
    let message_id = Message::parse(&request).unwrap().header.message_id;
    let answer = sends(&p.b.handle(&request, b_addr, a_addr, p.now, p.wall)).remove(0);
    let mut payloads = open_with(&p.a, a_id, &answer);
    renumbered(&mut payloads, number);
    let answer = sealed_by_b(
        p,
        b_id,
        exchange::CREATE_CHILD_SA,
        message_id,
        true,
        &payloads,
    );
    let out_a = p.a.handle(&answer, a_addr, b_addr, p.now, p.wall);
    let out_b = sends(&out_a)
        .iter()
        .flat_map(|bytes| p.b.handle(bytes, b_addr, a_addr, p.now, p.wall))
        .collect();
    (out_a, out_b)
}

/// RFC 7296 3.3.1 for CREATE_CHILD_SA: our rekey offered one proposal, numbered 1; an answer
/// numbered otherwise is not taken. The rekey fails (the old CHILD_SA carries on), and the
/// CHILD_SA the peer made for it is deleted there.
#[test]
fn a_child_sa_rekey_answer_must_carry_the_number_we_sent() {
    for number in [2, 7] {
        let mut p = lifetime_pair("aes128gcm16", 100, 110);
        p.connect();
        let old = children(&p.a);
        let (out_a, out_b) = child_rekey_with_answer_number(&mut p, number);
        assert!(installs(&out_a).is_empty(), "#{number}: not installed");
        assert!(out_a
            .iter()
            .any(|a| matches!(a, Action::ChildFailed { .. })));
        assert_eq!(p.a.counters().child_rekey_failures, 1);
        assert_eq!(children(&p.a), old, "#{number}: the old one carries on");
        assert_eq!(
            deleted(&out_b).len(),
            1,
            "#{number}: B's new one is deleted"
        );
        assert_eq!(children(&p.b).len(), 1);
        assert_eq!(children(&p.b)[0], (old[0].1, old[0].0));
    }
    // Numbered 1, the rekey completes.
    let mut p = lifetime_pair("aes128gcm16", 100, 110);
    p.connect();
    let (out_a, _) = child_rekey_with_answer_number(&mut p, 1);
    assert_eq!(installs(&out_a).len(), 1);
}

/// RFC 7296 3.3.1 for our IKE SA rekey: an answer numbered otherwise than the proposal it
/// matches is a mismatch, and the IKE SA carries on unrekeyed.
#[test]
fn an_ike_sa_rekey_answer_must_carry_the_number_we_sent() {
    let (a_addr, b_addr) = addrs();
    for number in [2, 7, 1] {
        let mut p = pair(IKE, "aes128gcm16");
        let id = p.connect();
        let b_id = b_sa(&p);
        let mut out = Vec::new();
        p.a.start_ike_rekey(id.0, p.now, &mut out);
        let request = sends(&out).remove(0);
        let message_id = Message::parse(&request).unwrap().header.message_id;
        let answer = sends(&p.b.handle(&request, b_addr, a_addr, p.now, p.wall)).remove(0);
        let mut payloads = open_with(&p.a, id.0, &answer);
        renumbered(&mut payloads, number);
        let answer = sealed_by_b(
            &mut p,
            b_id,
            exchange::CREATE_CHILD_SA,
            message_id,
            true,
            &payloads,
        );
        let out = p.a.handle(&answer, a_addr, b_addr, p.now, p.wall);
        let failed = out.iter().find_map(|a| match a {
            Action::IkeRekeyFailed { reason, .. } => Some(*reason),
            _ => None,
        });
        if number == 1 {
            assert_eq!(failed, None);
            assert!(established(&out), "the new IKE SA");
        } else {
            assert_eq!(failed, Some(Failure::ProposalMismatch), "#{number}");
            assert_eq!(p.a.sas().len(), 1, "#{number}: no new IKE SA");
            assert_eq!(p.a.state(id), Some(IkeState::Established));
        }
    }
}

// ---------------------------------------------------------------- PFS proposal selection

/// A CREATE_CHILD_SA request making a new CHILD_SA with `proposals` (SPI 0x1234), a KE
/// payload of `ke` if any.
fn new_child_request(
    proposals: Vec<crate::ike::wire::Proposal>,
    ke: Option<DhGroup>,
) -> Vec<Payload> {
    let mut request = vec![Payload::Sa(proposals), Payload::Nonce(vec![3; 32])];
    if let Some(group) = ke {
        let (_, public) = dh::generate(group, &ring::rand::SystemRandom::new()).unwrap();
        request.push(Payload::Ke {
            group: group.id(),
            data: public,
        });
    }
    request.push(Payload::TsI(vec![ts("198.18.0.0", "198.18.0.255")]));
    request.push(Payload::TsR(vec![ts("198.19.0.0", "198.19.0.255")]));
    request
}

fn esp_wire(text: &str, number: u8) -> crate::ike::wire::Proposal {
    EspProposal::parse(text)
        .unwrap()
        .to_wire(number, 0x1234, true)
}

/// The answer's SA payload's proposal.
fn sa_of(answer: &[Payload]) -> Option<&crate::ike::wire::Proposal> {
    answer.iter().find_map(|p| match p {
        Payload::Sa(s) => s.first(),
        _ => None,
    })
}

/// RFC 7296 1.3.1 and 3.3.6: the responder picks among all offered proposals, their
/// Diffie-Hellman transforms included. Ours is GCM with MODP-2048; the peer offers GCM with
/// ECP-256 (#1) and GCM with MODP-2048 (#2). With a KE payload in ECP-256, #2 is the one
/// we take, so its group is asked for; with one in MODP-2048, #2 is taken at once.
#[test]
fn create_child_sa_takes_the_proposal_whose_group_we_accept() {
    let mut p = pair(IKE, "aes128gcm16-modp2048");
    let id = p.connect();
    let offer = || {
        vec![
            esp_wire("aes128gcm16-ecp256", 1),
            esp_wire("aes128gcm16-modp2048", 2),
        ]
    };
    let (actions, answer) = create_child(
        &mut p,
        id,
        &new_child_request(offer(), Some(DhGroup::Ecp256)),
    );
    assert!(installs(&actions).is_empty());
    let answer = answer.expect("an answer");
    let n = notifies(&answer)
        .find(|n| n.kind == notify::INVALID_KE_PAYLOAD)
        .unwrap_or_else(|| panic!("INVALID_KE_PAYLOAD: {answer:?}"));
    assert_eq!(n.data, [0x00, 0x0e], "MODP-2048 asked for");
    assert_eq!(p.b.counters().invalid_ke, 1);

    let (actions, answer) = create_child(
        &mut p,
        id,
        &new_child_request(offer(), Some(DhGroup::Modp2048)),
    );
    let answer = answer.expect("an answer");
    assert_eq!(installs(&actions).len(), 1, "{answer:?}");
    let chosen = sa_of(&answer).expect("an SA payload");
    assert_eq!(chosen.number, 2);
    let groups: Vec<u16> = chosen
        .transforms
        .iter()
        .filter(|t| t.kind == crate::ike::wire::transform::DH)
        .map(|t| t.id)
        .collect();
    assert_eq!(groups, [DhGroup::Modp2048.id()]);
    assert!(answer
        .iter()
        .any(|p| matches!(p, Payload::Ke { group, .. } if *group == DhGroup::Modp2048.id())));
}

/// RFC 7296 1.3.1: without PFS in our configuration, a proposal that offers NONE (and no
/// KE payload) is taken without PFS, the answer naming NONE; with a group in our
/// configuration, a proposal without Diffie-Hellman is refused: the configuration asks for
/// PFS, and the peer does not get to drop it.
#[test]
fn create_child_sa_without_pfs_only_where_our_configuration_allows() {
    let none = || {
        let mut p = EspProposal::parse("aes128gcm16")
            .unwrap()
            .to_wire(1, 0x1234, false);
        p.transforms.push(crate::ike::wire::Transform {
            kind: crate::ike::wire::transform::DH,
            id: 0,
            key_len: None,
            unknown_attributes: false,
        });
        p
    };
    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    let (actions, answer) = create_child(&mut p, id, &new_child_request(vec![none()], None));
    let answer = answer.expect("an answer");
    assert_eq!(installs(&actions).len(), 1, "{answer:?}");
    let chosen = sa_of(&answer).unwrap();
    assert!(chosen
        .transforms
        .iter()
        .any(|t| t.kind == crate::ike::wire::transform::DH && t.id == 0));
    assert!(!answer.iter().any(|p| matches!(p, Payload::Ke { .. })));

    let mut p = pair(IKE, "aes128gcm16-modp2048");
    let id = p.connect();
    for offer in [none(), esp_wire("aes128gcm16", 1)] {
        let (actions, answer) = create_child(&mut p, id, &new_child_request(vec![offer], None));
        assert!(installs(&actions).is_empty());
        assert!(notifies(&answer.unwrap()).any(|n| n.kind == notify::NO_PROPOSAL_CHOSEN));
    }
}

/// The same for the peer's IKE SA rekey (RFC 7296 1.3.2): a proposal acceptable with the KE
/// payload's group is taken before an earlier one in another group, without an
/// INVALID_KE_PAYLOAD round trip.
#[test]
fn ike_sa_rekey_takes_the_proposal_of_the_ke_payloads_group() {
    let mut p = pair("aes128gcm16-prfsha256-x25519-ecp256", "aes128gcm16");
    let id = p.connect();
    let spi = 0x0101_0202_0303_0404u64.to_be_bytes();
    let (_, public) = dh::generate(DhGroup::Curve25519, &ring::rand::SystemRandom::new()).unwrap();
    let request = [
        Payload::Sa(vec![
            IkeProposal::parse("aes128gcm16-prfsha256-ecp256")
                .unwrap()
                .to_wire(1, &spi),
            IkeProposal::parse("aes128gcm16-prfsha256-x25519")
                .unwrap()
                .to_wire(2, &spi),
        ]),
        Payload::Nonce(vec![4; 32]),
        Payload::Ke {
            group: DhGroup::Curve25519.id(),
            data: public,
        },
    ];
    let (actions, answer) = create_child(&mut p, id, &request);
    let answer = answer.expect("an answer");
    assert!(established(&actions), "{answer:?}");
    assert_eq!(sa_of(&answer).map(|s| s.number), Some(2));
    assert_eq!(p.b.counters().invalid_ke, 0);
}

// ---------------------------------------------------------------- NAT-keepalives

/// The datagrams in `actions` that are NAT-keepalives (RFC 3948 section 2.3: one 0xFF byte).
fn keepalives(actions: &[Action]) -> Vec<(SocketAddr, SocketAddr)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                local,
                remote,
                bytes,
            } if bytes.as_slice() == [0xff] => Some((*local, *remote)),
            _ => None,
        })
        .collect()
}

/// RFC 3948 section 4: behind a NAT, we send a NAT-keepalive (one 0xFF byte from port 4500,
/// without the non-ESP marker) after 20 seconds of silence towards the peer, and the engine
/// asks to be woken for it; the peer, not behind one, sends none.
#[test]
fn behind_a_nat_we_send_keepalives_after_20_seconds_of_silence() {
    let mut p = pair(IKE, "aes128gcm16");
    p.nat = Some((A.parse().unwrap(), "203.0.113.9:33000".parse().unwrap()));
    p.connect();
    let start = p.now;
    assert!(p
        .a
        .next_timeout()
        .is_some_and(|t| t <= start + Duration::from_secs(20)));
    assert!(keepalives(&p.a.handle_timeout(start + Duration::from_secs(19))).is_empty());
    let out = p.a.handle_timeout(start + Duration::from_secs(21));
    let sent: Vec<_> = sends(&out);
    assert_eq!(sent, [vec![0xffu8]], "exactly one datagram, the keepalive");
    let (local, remote) = keepalives(&out)[0];
    assert_eq!(local.port(), 4500);
    let b: SocketAddr = B.parse().unwrap();
    assert_eq!(
        remote,
        SocketAddr::new(b.ip(), 4500),
        "to the peer's NAT-T port"
    );
    assert_eq!(p.a.counters().nat_keepalives, 1);
    // The next one 20 s later, not before.
    assert!(sends(&p.a.handle_timeout(start + Duration::from_secs(40))).is_empty());
    assert_eq!(
        keepalives(&p.a.handle_timeout(start + Duration::from_secs(41))).len(),
        1
    );
    // B is not behind the NAT.
    assert!(sends(&p.b.handle_timeout(start + Duration::from_secs(41))).is_empty());
    assert_eq!(p.b.counters().nat_keepalives, 0);
    // A request of ours keeps the NAT's mapping as well: the keepalive waits 20 s after it.
    let id = IkeSaId(*p.a.sas.keys().next().unwrap());
    let at = start + Duration::from_secs(50);
    let dpd = p.a.send_dpd(id, at).unwrap();
    p.now = at;
    p.run(dpd);
    assert!(keepalives(&p.a.handle_timeout(start + Duration::from_secs(61))).is_empty());
    assert_eq!(
        keepalives(&p.a.handle_timeout(start + Duration::from_secs(70))).len(),
        1
    );
}

/// Without a NAT, no keepalives.
#[test]
fn without_a_nat_no_keepalives() {
    let mut p = pair(IKE, "aes128gcm16");
    p.connect();
    assert_eq!(p.a.next_timeout(), None);
    for engine in [&mut p.a, &mut p.b] {
        assert!(sends(&engine.handle_timeout(p.now + Duration::from_secs(21))).is_empty());
    }
}

// ---------------------------------------------------------------- NAT mapping changes

/// A CHILD_SA address update: the SPI pairs, the peer's new address, the UDP ports.
type Update = (Vec<(u32, u32)>, IpAddr, Option<(u16, u16)>);

/// The CHILD_SA address updates in `actions`.
fn updates(actions: &[Action]) -> Vec<Update> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::UpdateChildSaAddresses {
                spis,
                remote_addr,
                udp_encap,
                ..
            } => Some((spis.clone(), *remote_addr, *udp_encap)),
            _ => None,
        })
        .collect()
}

/// RFC 7296 2.23: the end not behind a NAT sends to where the peer's last authenticated
/// message came from. A's NAT changes its mapping (another public port): B follows with
/// IKE, and its CHILD_SA's outbound tunnel follows too (an update action with the new UDP
/// port); the answer already goes to the new port.
#[test]
fn the_end_not_behind_the_nat_follows_a_new_mapping_child_sas_and_all() {
    let mut p = pair(IKE, "aes128gcm16");
    p.nat = Some((A.parse().unwrap(), "203.0.113.9:33000".parse().unwrap()));
    let id = p.connect();
    let b_child = installs(&p.events_b)[0].clone();
    assert_eq!(b_child.udp_encap, Some((4500, 33001)));
    p.events_b.clear();
    p.nat = Some((A.parse().unwrap(), "203.0.113.9:40000".parse().unwrap()));
    let dpd = p.a.send_dpd(id, p.now).unwrap();
    p.run(dpd);
    assert_eq!(
        updates(&p.events_b),
        [(
            vec![(b_child.inbound.spi, b_child.outbound.spi)],
            "203.0.113.9".parse().unwrap(),
            Some((4500, 40001))
        )]
    );
    assert_eq!(p.b.counters().peer_moves, 1);
    assert_eq!(
        p.a.state(id),
        Some(IkeState::Established),
        "B's answer got through"
    );
    assert!(p.a.sas.get(&id.0).unwrap().outstanding.is_none());
    // IKE goes there too, and so will CHILD_SAs made from now on.
    let b = b_sa(&p);
    assert_eq!(p.b.sas.get(&b).unwrap().remote.port(), 40001);
    // The same mapping again: nothing to update.
    p.events_b.clear();
    let dpd = p.a.send_dpd(id, p.now).unwrap();
    p.run(dpd);
    assert!(updates(&p.events_b).is_empty());
}

/// RFC 7296 2.23: the end behind a NAT SHOULD NOT follow the peer to another address or
/// port: an authenticated message from elsewhere (here, B's request arriving from another
/// port) is answered, but changes neither the IKE SA's addresses nor the CHILD_SAs.
#[test]
fn the_end_behind_the_nat_does_not_follow() {
    let mut p = pair(IKE, "aes128gcm16");
    p.nat = Some((A.parse().unwrap(), "203.0.113.9:33000".parse().unwrap()));
    let id = p.connect();
    let (a_local, b_remote) = {
        let sa = p.a.sas.get(&id.0).unwrap();
        (sa.local, sa.remote)
    };
    let b = b_sa(&p);
    let request = {
        let sa = p.b.sas.get_mut(&b).unwrap();
        let message_id = sa.next_request_id;
        sa.next_request_id += 1;
        sa.iv_counter += 1;
        let header = sa.header(exchange::INFORMATIONAL, message_id, false);
        let message = seal_message(header, &[], sa.tx.as_ref().unwrap(), sa.iv_counter).unwrap();
        // On the NAT-T port, behind the non-ESP marker.
        [vec![0; 4], message].concat()
    };
    let elsewhere = SocketAddr::new(b_remote.ip(), 4501);
    let out = p.a.handle(&request, a_local, elsewhere, p.now, p.wall);
    assert_eq!(sends(&out).len(), 1, "answered");
    assert!(updates(&out).is_empty());
    assert_eq!(p.a.sas.get(&id.0).unwrap().remote, b_remote, "not followed");
    assert_eq!(p.a.counters().peer_moves, 0);

    // Without any NAT, neither end follows either.
    let mut p = pair(IKE, "aes128gcm16");
    let id = p.connect();
    let (a_addr, _) = addrs();
    let b = b_sa(&p);
    let dpd = p.a.send_dpd(id, p.now).unwrap();
    let out: Vec<Action> = sends(&dpd)
        .iter()
        .flat_map(|bytes| {
            let moved = SocketAddr::new(a_addr.ip(), 5500);
            p.b.handle(bytes, B.parse().unwrap(), moved, p.now, p.wall)
        })
        .collect();
    assert!(updates(&out).is_empty());
    assert_eq!(p.b.sas.get(&b).unwrap().remote, a_addr);
}
