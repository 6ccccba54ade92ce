//! IKE fragmentation (RFC 7383) between two engines.

use super::*;

/// Fragments of at most this IPv4 datagram: IKE messages of 122 bytes, so that IKE_AUTH with
/// a PSK (about 215 bytes whole) takes two or more. (IKE_SA_INIT is never fragmented.)
const SMALL: usize = 150;

fn small() -> EngineConfig {
    EngineConfig {
        fragment_size: Some(SMALL),
        ..EngineConfig::default()
    }
}

fn fragment_pair(ike: &str, esp: &str, a: EngineConfig, b: EngineConfig) -> Pair {
    Pair::with_configs(
        peer("to-b", A, Some(B), ike, esp, b"correct horse"),
        peer("from-a", B, None, ike, esp, b"correct horse"),
        a,
        b,
    )
}

fn sent(actions: Vec<Action>) -> Vec<Vec<u8>> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Send { bytes, .. } => Some(bytes),
            _ => None,
        })
        .collect()
}

fn addrs() -> (SocketAddr, SocketAddr) {
    (A.parse().unwrap(), B.parse().unwrap())
}

/// Runs IKE_SA_INIT by hand and returns A's IKE_AUTH request as sent.
fn auth_request(p: &mut Pair) -> Vec<Vec<u8>> {
    let (a, b) = addrs();
    let (_, actions) = p.a.connect("to-b", p.now).unwrap();
    let init = sent(actions);
    let answer = sent(p.b.handle(&init[0], b, a, p.now, p.wall));
    sent(p.a.handle(&answer[0], a, b, p.now, p.wall))
}

fn fragment_number(message: &[u8]) -> Option<(u16, u16)> {
    match Message::parse(message).unwrap().payloads.last() {
        Some(&Payload::EncryptedFragment { number, total, .. }) => Some((number, total)),
        _ => None,
    }
}

#[test]
fn large_messages_travel_in_fragments_and_establish_with_both_ciphers() {
    for (ike, esp) in [
        ("aes128gcm16-prfsha256-x25519", "aes128gcm16"),
        ("aes256-sha256-x25519", "aes256-sha256"),
    ] {
        let mut p = fragment_pair(ike, esp, small(), small());
        p.connect();
        assert!(
            established(&p.events_a) && established(&p.events_b),
            "{ike}"
        );
        let (a, b) = (p.a.counters(), p.b.counters());
        assert!(
            a.tx_fragments >= 2 && b.tx_fragments >= 2,
            "{ike}: {a:?} {b:?}"
        );
        assert_eq!((a.rx_reassembled, b.rx_reassembled), (1, 1), "{ike}");
        assert_eq!(a.rx_fragments, b.tx_fragments);
        assert_eq!((a.rx_fragments_dropped, b.rx_fragments_dropped), (0, 0));
        assert!(p.max_sent <= SMALL - 28, "{ike}: sent {} bytes", p.max_sent);
        esp_round_trip(installs(&p.events_a)[0], installs(&p.events_b)[0]);
    }
}

#[test]
fn fragments_out_of_order_duplicated_or_forged_are_put_together_once() {
    let mut p = fragment_pair(
        "aes128gcm16-prfsha256-x25519",
        "aes128gcm16",
        small(),
        small(),
    );
    let (a, b) = addrs();
    let request = auth_request(&mut p);
    assert!(
        request.len() >= 2,
        "IKE_AUTH went in {} message(s)",
        request.len()
    );
    assert_eq!(
        fragment_number(&request[0]),
        Some((1, request.len() as u16))
    );
    // A forged copy of the last fragment is refused on its own ICV.
    let mut forged = request.last().unwrap().clone();
    let at = forged.len() - 20;
    forged[at] ^= 1;
    assert!(p.b.handle(&forged, b, a, p.now, p.wall).is_empty());
    assert_eq!(p.b.counters().rx_integrity_failures, 1);
    // Backwards, with the last one twice: nothing until the first arrives.
    let n = request.len();
    for message in request[1..].iter().rev().chain([&request[n - 1]]) {
        assert!(sent(p.b.handle(message, b, a, p.now, p.wall)).is_empty());
    }
    assert_eq!(p.b.counters().rx_fragments_dropped, 1, "the duplicate");
    let answer = sent(p.b.handle(&request[0], b, a, p.now, p.wall));
    assert!(!answer.is_empty());
    assert_eq!(p.b.counters().rx_reassembled, 1);
    for message in &answer {
        p.events_a.extend(p.a.handle(message, a, b, p.now, p.wall));
    }
    assert!(established(&p.events_a));
}

#[test]
fn a_retransmitted_request_is_answered_again_only_on_its_first_fragment() {
    let mut p = fragment_pair(
        "aes128gcm16-prfsha256-x25519",
        "aes128gcm16",
        small(),
        small(),
    );
    let (a, b) = addrs();
    let request = auth_request(&mut p);
    let mut answer = Vec::new();
    for message in &request {
        answer.extend(sent(p.b.handle(message, b, a, p.now, p.wall)));
    }
    assert!(answer.len() >= 2, "the answer is fragmented too");
    // The answer is lost; A retransmits every fragment. Only the first brings it back.
    assert!(sent(p.b.handle(&request[1], b, a, p.now, p.wall)).is_empty());
    let again = sent(p.b.handle(&request[0], b, a, p.now, p.wall));
    assert_eq!(again, answer);
    assert_eq!(p.b.counters().responses_resent, 1);
}

#[test]
fn without_support_on_one_side_nothing_is_fragmented() {
    for (a_config, b_config) in [
        (
            small(),
            EngineConfig {
                fragmentation: false,
                ..small()
            },
        ),
        (
            EngineConfig {
                fragmentation: false,
                ..small()
            },
            small(),
        ),
    ] {
        let mut p = fragment_pair(
            "aes128gcm16-prfsha256-x25519",
            "aes128gcm16",
            a_config,
            b_config,
        );
        p.connect();
        assert!(established(&p.events_a) && established(&p.events_b));
        assert_eq!(p.a.counters().tx_fragments + p.b.counters().tx_fragments, 0);
        assert!(p.max_sent > SMALL - 28, "IKE_AUTH went whole");
    }
}

/// A's request on its IKE SA `id`, sealed into fragments of at most `max_len` bytes with
/// message ID `message_id`.
fn fragments_on(
    p: &mut Pair,
    id: IkeSaId,
    message_id: u32,
    request: &[Payload],
    max_len: usize,
) -> Vec<Vec<u8>> {
    let sa = p.a.sas.get_mut(&id.0).unwrap();
    let header = sa.header(exchange::INFORMATIONAL, message_id, false);
    crate::ike::sk::seal_fragments(
        header,
        request,
        sa.tx.as_ref().unwrap(),
        &mut sa.iv_counter,
        max_len,
    )
    .unwrap()
}

#[test]
fn more_fragments_restart_reassembly_and_fewer_are_dropped() {
    let mut p = fragment_pair(
        "aes128gcm16-prfsha256-x25519",
        "aes128gcm16",
        small(),
        small(),
    );
    let id = p.connect();
    let (a, b) = addrs();
    let message_id = p.a.sas.get(&id.0).unwrap().next_request_id;
    let request = [Payload::VendorId(vec![0x5a; 700])];
    let coarse = fragments_on(&mut p, id, message_id, &request, 400);
    let fine = fragments_on(&mut p, id, message_id, &request, 200);
    assert!(fine.len() > coarse.len() && coarse.len() >= 2);
    let before = p.b.counters().rx_fragments_dropped;
    assert!(sent(p.b.handle(&coarse[0], b, a, p.now, p.wall)).is_empty());
    // The sender lowered its fragment size: start over with the finer set ...
    for message in &fine[..fine.len() - 1] {
        assert!(sent(p.b.handle(message, b, a, p.now, p.wall)).is_empty());
    }
    // ... where a coarse fragment no longer fits.
    assert!(sent(p.b.handle(&coarse[1], b, a, p.now, p.wall)).is_empty());
    assert_eq!(p.b.counters().rx_fragments_dropped, before + 1);
    let answer = sent(p.b.handle(fine.last().unwrap(), b, a, p.now, p.wall));
    assert_eq!(answer.len(), 1, "an empty INFORMATIONAL answer");
    assert_eq!(p.b.counters().rx_reassembled, 2);
}

#[test]
fn fragments_where_none_were_negotiated_are_dropped() {
    let no = EngineConfig {
        fragmentation: false,
        ..EngineConfig::default()
    };
    let mut p = fragment_pair(
        "aes128gcm16-prfsha256-x25519",
        "aes128gcm16",
        no.clone(),
        no,
    );
    let id = p.connect();
    let (a, b) = addrs();
    let message_id = p.a.sas.get(&id.0).unwrap().next_request_id;
    let request = [Payload::VendorId(vec![0x5a; 700])];
    for message in fragments_on(&mut p, id, message_id, &request, 300) {
        assert!(p.b.handle(&message, b, a, p.now, p.wall).is_empty());
    }
    assert!(p.b.counters().rx_fragments_dropped >= 2);
    assert_eq!(p.b.counters().rx_reassembled, 0);
}

#[test]
fn a_fragment_size_without_room_fails_the_send_not_the_engine() {
    let tiny = EngineConfig {
        fragment_size: Some(80),
        ..EngineConfig::default()
    };
    let mut p = fragment_pair(
        "aes128gcm16-prfsha256-x25519",
        "aes128gcm16",
        tiny.clone(),
        tiny,
    );
    let (_, actions) = p.a.connect("to-b", p.now).unwrap();
    p.run(actions);
    assert!(p.a.counters().tx_seal_failures >= 1);
    assert!(!established(&p.events_a));
}
