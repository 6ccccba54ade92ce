//! The IKEv2 codec on arbitrary bytes: header and message parse, the inner payload chain of
//! an SK payload, and the SK payload itself (open under fixed keys). Must never panic; a
//! message that parses re-emits to one that parses to the same payloads, and payloads sealed
//! into an SK payload open back to themselves.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use switchyard_ipsec::crypto::{MacAlgorithm, SecretBytes, SoftwareBackend};
use switchyard_ipsec::ike::proposal::Encryption;
use switchyard_ipsec::ike::sk::{self, SkCipher};
use switchyard_ipsec::ike::wire::{self, Header, Message, Payload};

struct Ciphers {
    gcm: SkCipher,
    cbc: SkCipher,
}

/// One SK cipher per kind (AES-GCM; AES-CBC with HMAC), keys fixed.
fn ciphers() -> &'static Ciphers {
    static C: OnceLock<Ciphers> = OnceLock::new();
    C.get_or_init(|| {
        let backend = SoftwareBackend::new();
        let none = SecretBytes::new(Vec::new());
        Ciphers {
            gcm: SkCipher::new(
                &backend,
                Encryption::AesGcm16_128,
                None,
                &SecretBytes::new((0..20u8).collect()),
                &none,
            )
            .unwrap(),
            cbc: SkCipher::new(
                &backend,
                Encryption::AesCbc256,
                Some(MacAlgorithm::HmacSha256_128),
                &SecretBytes::new((0..32u8).collect()),
                &SecretBytes::new((100..132u8).collect()),
            )
            .unwrap(),
        }
    })
}

/// What `Message::emit` can write back as it came: no SK or SKF payload (an encrypted
/// payload's bytes stay in the message it came in), and no transform with attributes we do
/// not understand (only the fact is kept, to refuse the transform).
fn cleartext(payloads: &[Payload]) -> bool {
    !payloads.iter().any(|p| match p {
        Payload::Encrypted { .. } | Payload::EncryptedFragment { .. } => true,
        Payload::Sa(proposals) => proposals
            .iter()
            .any(|pr| pr.transforms.iter().any(|t| t.unknown_attributes)),
        _ => false,
    })
}

fuzz_target!(|data: &[u8]| {
    let c = ciphers();
    let _ = Header::parse(data);
    match Message::parse(data) {
        Ok(m) => {
            assert_eq!(m.header.length as usize, data.len());
            if cleartext(&m.payloads) {
                let again = Message::emit(m.header, &m.payloads);
                let back = Message::parse(&again)
                    .unwrap_or_else(|e| panic!("re-emitted message does not parse: {e:?}"));
                assert_eq!(back.payloads, m.payloads);
                // Sealed and opened under both ciphers, the payloads come back.
                // (Bounded so the SK payload's 16-bit length cannot overflow.)
                if !m.payloads.is_empty() && data.len() < 60_000 {
                    for (cipher, nonce) in [(&c.gcm, 7u64), (&c.cbc, 9)] {
                        let sealed =
                            sk::seal_message(m.header, &m.payloads, cipher, nonce).unwrap();
                        let parsed = Message::parse(&sealed).unwrap();
                        let Some(Payload::Encrypted {
                            first_payload,
                            offset,
                        }) = parsed.payloads.last().cloned()
                        else {
                            panic!("sealed message has no SK payload");
                        };
                        let opened = sk::open_message(&sealed, offset, first_payload, cipher)
                            .unwrap_or_else(|e| panic!("sealed message does not open: {e:?}"));
                        assert_eq!(opened, m.payloads);
                    }
                }
            } else if let Some(Payload::Encrypted {
                first_payload,
                offset,
            }) = m.payloads.last()
            {
                // Forged SK payloads: integrity fails (or parsing does), never a panic.
                for cipher in [&c.gcm, &c.cbc] {
                    assert!(sk::open_message(data, *offset, *first_payload, cipher).is_err());
                }
            }
        }
        Err(_) => {
            // The same bytes as the plaintext of an SK payload (no header).
            if let [first, rest @ ..] = data {
                let parsed = wire::parse_payloads(*first, rest);
                if let Some(payloads) = parsed.ok().filter(|p| cleartext(p)) {
                    let again = wire::emit_payloads(&payloads, wire::payload_type::NONE);
                    let back =
                        wire::parse_payloads(payloads.first().map_or(0, Payload::kind), &again)
                            .unwrap_or_else(|e| panic!("re-emitted chain does not parse: {e:?}"));
                    assert_eq!(back, payloads);
                }
            }
        }
    }
});
