//! RFC 7296 error handling that the other tests do not reach: versions, critical payloads.

use super::*;

fn init_request_bytes(version: u8, flags: u8) -> Vec<u8> {
    let header = Header {
        spi_i: 0x1122_3344_5566_7788,
        spi_r: 0,
        next_payload: 0,
        version,
        exchange: exchange::IKE_SA_INIT,
        flags,
        message_id: 0,
        length: 0,
    };
    Message::emit(header, &[Payload::Nonce(vec![1; 32])])
}

fn only_send(actions: Vec<Action>) -> Vec<u8> {
    let sent: Vec<Vec<u8>> = actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Send { bytes, .. } => Some(bytes),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 1, "one answer");
    sent.into_iter().next().unwrap()
}

#[test]
fn a_later_major_version_is_answered_with_invalid_major_version_in_a_2_0_header() {
    let mut p = pair("aes128gcm16-prfsha256-x25519", "aes128gcm16");
    let (a, b): (SocketAddr, SocketAddr) = (A.parse().unwrap(), B.parse().unwrap());
    for version in [0x30, 0x31, 0xf0] {
        let request = init_request_bytes(version, FLAG_INITIATOR);
        let answer = only_send(p.b.handle(&request, b, a, p.now, p.wall));
        let message = Message::parse(&answer).expect("a well-formed IKEv2 answer");
        let h = message.header;
        assert_eq!(h.version, VERSION, "the closest version we speak");
        assert_eq!((h.spi_i, h.spi_r), (0x1122_3344_5566_7788, 0));
        assert_eq!((h.exchange, h.message_id), (exchange::IKE_SA_INIT, 0));
        assert!(h.is_response() && !h.from_initiator());
        assert!(matches!(
            &message.payloads[..],
            [Payload::Notify(n)] if n.kind == notify::INVALID_MAJOR_VERSION
        ));
    }
    assert_eq!(p.b.counters().rx_bad_version, 3);
    assert!(p.b.sas().is_empty(), "no state for it");
    // Never answered: a response of a later version, and IKEv1.
    let response = init_request_bytes(0x30, FLAG_RESPONSE);
    assert!(p.b.handle(&response, b, a, p.now, p.wall).is_empty());
    let ikev1 = init_request_bytes(0x10, 0);
    assert!(p.b.handle(&ikev1, b, a, p.now, p.wall).is_empty());
    assert_eq!(p.b.counters().rx_bad_version, 5);
}

/// RFC 7296 2.21.4: error answers to unprotected messages are rationed, so that forged
/// requests do not turn the responder into a reflector.
#[test]
fn error_answers_to_unprotected_requests_are_rate_limited() {
    let mut p = pair("aes128gcm16-prfsha256-x25519", "aes128gcm16");
    let (a, b): (SocketAddr, SocketAddr) = (A.parse().unwrap(), B.parse().unwrap());
    let request = init_request_bytes(0x30, FLAG_INITIATOR);
    let burst = UNPROTECTED_ERRORS_PER_SECOND as usize;
    let answered = (0..burst + 50)
        .filter(|_| !p.b.handle(&request, b, a, p.now, p.wall).is_empty())
        .count();
    assert_eq!(answered, burst);
    assert_eq!(p.b.counters().unprotected_errors_limited, 50);
    // Tokens come back with time.
    let later = p.now + std::time::Duration::from_millis(100);
    let answered = (0..burst)
        .filter(|_| {
            !p.b.handle(&request, b, a, later, SystemTime::now())
                .is_empty()
        })
        .count();
    assert_eq!(answered, burst / 10);
}

#[test]
fn a_later_minor_version_is_ignored() {
    // RFC 7296 section 3.1: the minor version of received messages is ignored.
    let mut p = pair("aes128gcm16-prfsha256-x25519", "aes128gcm16");
    let (a, b): (SocketAddr, SocketAddr) = (A.parse().unwrap(), B.parse().unwrap());
    let (_, actions) = p.a.connect("to-b", p.now).unwrap();
    let Some(Action::Send { mut bytes, .. }) = actions
        .into_iter()
        .find(|a| matches!(a, Action::Send { .. }))
    else {
        panic!("no IKE_SA_INIT");
    };
    bytes[17] = 0x27;
    let answer = only_send(p.b.handle(&bytes, b, a, p.now, p.wall));
    let message = Message::parse(&answer).unwrap();
    assert!(message.payloads.iter().any(|p| matches!(p, Payload::Sa(_))));
}

#[test]
fn an_unknown_critical_payload_inside_sk_is_named_in_the_answer() {
    let mut p = pair("aes128gcm16-prfsha256-x25519", "aes128gcm16");
    let id = p.connect();
    // An INFORMATIONAL whose only inner payload is type 200, critical.
    let sa = p.a.sas.get_mut(&id.0).unwrap();
    let message_id = sa.next_request_id;
    sa.next_request_id += 1;
    sa.iv_counter += 1;
    let header = sa.header(exchange::INFORMATIONAL, message_id, false);
    let inner = vec![0, 0x80, 0, 8, 1, 2, 3, 4];
    let bytes =
        crate::ike::sk::seal_raw(header, 200, inner, sa.tx.as_ref().unwrap(), sa.iv_counter)
            .unwrap();
    let (local, remote) = (sa.local, sa.remote);
    let answer = only_send(p.b.handle(&bytes, remote, local, p.now, p.wall));
    let parsed = Message::parse(&answer).unwrap();
    assert_eq!(parsed.header.message_id, message_id);
    let Some(&Payload::Encrypted {
        first_payload,
        offset,
    }) = parsed.payloads.last()
    else {
        panic!("the answer is protected");
    };
    let sa = p.a.sas.get(&id.0).unwrap();
    let payloads = open_message(&answer, offset, first_payload, sa.rx.as_ref().unwrap()).unwrap();
    assert!(matches!(
        &payloads[..],
        [Payload::Notify(n)] if n.kind == notify::UNSUPPORTED_CRITICAL_PAYLOAD && n.data == [200]
    ));
    // The same payload not marked critical is skipped: an empty answer.
    let sa = p.a.sas.get_mut(&id.0).unwrap();
    let message_id = sa.next_request_id;
    sa.next_request_id += 1;
    sa.iv_counter += 1;
    let header = sa.header(exchange::INFORMATIONAL, message_id, false);
    let inner = vec![0, 0, 0, 8, 1, 2, 3, 4];
    let bytes =
        crate::ike::sk::seal_raw(header, 200, inner, sa.tx.as_ref().unwrap(), sa.iv_counter)
            .unwrap();
    let answer = only_send(p.b.handle(&bytes, remote, local, p.now, p.wall));
    let parsed = Message::parse(&answer).unwrap();
    let Some(&Payload::Encrypted {
        first_payload,
        offset,
    }) = parsed.payloads.last()
    else {
        panic!("the answer is protected");
    };
    let sa = p.a.sas.get(&id.0).unwrap();
    let payloads = open_message(&answer, offset, first_payload, sa.rx.as_ref().unwrap()).unwrap();
    assert!(payloads.is_empty(), "{payloads:?}");
}
