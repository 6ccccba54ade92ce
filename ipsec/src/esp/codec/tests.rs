use super::*;
use crate::crypto::{AeadAlgorithm, CbcAlgorithm, MacAlgorithm, SecretBytes, SoftwareBackend};
use crate::esp::{EspKeys, EspSuite, Lifetime, LifetimeState, ReplayError, SaConfig};
use proptest::prelude::*;

const SUITES: [EspSuite; 6] = [
    EspSuite::Gcm(AeadAlgorithm::Aes128Gcm16),
    EspSuite::Gcm(AeadAlgorithm::Aes256Gcm16),
    EspSuite::CbcHmac(CbcAlgorithm::Aes128Cbc, MacAlgorithm::HmacSha256_128),
    EspSuite::CbcHmac(CbcAlgorithm::Aes256Cbc, MacAlgorithm::HmacSha256_128),
    EspSuite::CbcHmac(CbcAlgorithm::Aes128Cbc, MacAlgorithm::HmacSha512_256),
    EspSuite::CbcHmac(CbcAlgorithm::Aes256Cbc, MacAlgorithm::HmacSha512_256),
];

fn config(suite: EspSuite, esn: bool) -> SaConfig {
    SaConfig {
        spi: 0x1234_5678,
        suite,
        keys: EspKeys {
            encryption: SecretBytes::new((0..suite.encryption_key_len() as u8).collect()),
            integrity: SecretBytes::new(
                (0..suite.integrity_key_len() as u8)
                    .map(|b| b ^ 0x5a)
                    .collect(),
            ),
        },
        esn,
        replay_window: 1024,
        lifetime: Lifetime::default(),
    }
}

fn pair(suite: EspSuite, esn: bool) -> (Sa, Sa) {
    let backend = SoftwareBackend::new();
    let c = config(suite, esn);
    (
        Sa::new(&backend, &c, Direction::Outbound, 0).unwrap(),
        Sa::new(&backend, &c, Direction::Inbound, 0).unwrap(),
    )
}

/// A minimal IPv4 packet (198.18.0.1 -> 198.18.0.2, UDP-ish payload) of `len` bytes.
fn inner_v4(len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|i| i as u8).collect();
    p[0] = 0x45;
    p[1] = 0xb8; // DSCP EF
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

fn inner_v6(len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
    p[0] = 0x60;
    p
}

fn v4_outer() -> OuterHeader {
    OuterHeader::new(
        "203.0.113.1".parse().unwrap(),
        "203.0.113.2".parse().unwrap(),
    )
}

fn v6_outer() -> OuterHeader {
    OuterHeader::new(
        "2001:db8::1".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
    )
}

#[test]
fn round_trip_every_suite_family_and_encapsulation() {
    for suite in SUITES {
        for esn in [false, true] {
            for outer in [
                v4_outer(),
                v6_outer(),
                v4_outer().with_udp(4500, 4500),
                v6_outer().with_udp(40000, 4500),
            ] {
                let (mut out, mut inb) = pair(suite, esn);
                for (i, inner) in [inner_v4(20), inner_v4(61), inner_v6(40), inner_v6(1400)]
                    .into_iter()
                    .enumerate()
                {
                    let mut packet = encapsulate(&mut out, &inner, &outer, 0).unwrap();
                    assert_eq!(packet.len() % 4, 0, "ICV alignment");
                    let result = decapsulate(&mut inb, &mut packet, 0).unwrap();
                    assert_eq!(&packet[result.inner.clone()], &inner[..], "{suite:?}");
                    assert_eq!(result.sequence, i as u64 + 1);
                    assert_eq!(result.spi, 0x1234_5678);
                    assert_eq!(result.udp_src_port, outer.udp().map(|(s, _)| s));
                    assert_eq!(result.outer_src, outer.src());
                    let expected_nh = if inner[0] >> 4 == 4 { 4 } else { 41 };
                    assert_eq!(result.next_header, expected_nh);
                }
                assert_eq!(out.counters().packets, 4);
                assert_eq!(inb.counters().packets, 4);
                assert_eq!(inb.counters().bytes, out.counters().bytes);
            }
        }
    }
}

/// The one-packet paths call the AEAD straight from their own body; the dataplane's batch
/// path goes through `*_prepare`, [`SymParams`] and `*_finish`. Both must put the same bytes
/// on the wire and take the same packets back out.
#[test]
fn one_packet_and_batch_paths_agree() {
    for suite in SUITES {
        for esn in [false, true] {
            for outer in [
                v4_outer().with_udp(4500, 4500),
                v6_outer().with_udp(40000, 4500),
            ] {
                let (mut out_a, mut inb_a) = pair(suite, esn);
                let (mut out_b, mut inb_b) = pair(suite, esn);
                for inner in [inner_v4(20), inner_v6(77)] {
                    let head = outer.len() + 8 + suite.iv_len();
                    let mut a = vec![0u8; head + inner.len() + out_a.esp_overhead()];
                    a[head..head + inner.len()].copy_from_slice(&inner);
                    let mut b = a.clone();
                    let range_a = encapsulate_in_place(
                        &mut out_a,
                        &mut a,
                        head..head + inner.len(),
                        &outer,
                        0,
                    )
                    .unwrap();
                    let (job, params) = encapsulate_prepare(
                        &mut out_b,
                        &mut b,
                        head..head + inner.len(),
                        &outer,
                        0,
                    )
                    .unwrap();
                    let crypto = out_b.crypto_ctx().run_here(&params, &mut b);
                    let range_b = encapsulate_finish(&mut out_b, &job, &mut b, crypto).unwrap();
                    assert_eq!(&a[range_a.clone()], &b[range_b], "{suite:?} esn {esn}");

                    let mut a = a[range_a].to_vec();
                    let mut b = a.clone();
                    let one = decapsulate(&mut inb_a, &mut a, 0).unwrap();
                    let (job, params) = decapsulate_prepare(&mut inb_b, &mut b, 0).unwrap();
                    let crypto = inb_b.crypto_ctx().run_here(&params, &mut b);
                    let batch = decapsulate_finish(&mut inb_b, &job, &mut b, crypto).unwrap();
                    assert_eq!(one, batch);
                    assert_eq!(&a[one.inner], &inner[..]);
                }
                assert_eq!(out_a.counters(), out_b.counters());
                assert_eq!(inb_a.counters(), inb_b.counters());
            }
        }
    }
}

/// [`decapsulate_prepare_into`] writes into whatever parameters the caller's operation held
/// before (a previous packet's, another suite's): nothing of them may leak into this packet's
/// crypto. AES-GCM's tag is read where it lies, so a forged one fails there.
#[test]
fn prepare_into_overwrites_stale_parameters() {
    let stale = SymParams {
        seal: true,
        iv: [0xa5; 16],
        aad: [0x5a; 12],
        aad_len: 12,
        text: 3..9999,
        auth: 7..9999,
        digest_at: 9999,
        tag_in_place: false,
        icv_len: 32,
        expected: [0xee; 32],
    };
    for suite in SUITES {
        for esn in [false, true] {
            for outer in [v4_outer(), v6_outer().with_udp(40000, 4500)] {
                let (mut out, mut inb_a) = pair(suite, esn);
                let (_, mut inb_b) = pair(suite, esn);
                let packet = encapsulate(&mut out, &inner_v4(45), &outer, 0).unwrap();
                let (mut a, mut b) = (packet.clone(), packet.clone());
                let one = decapsulate(&mut inb_a, &mut a, 0).unwrap();
                let mut params = stale.clone();
                let job = decapsulate_prepare_into(&mut inb_b, &mut b, 0, &mut params).unwrap();
                let crypto = inb_b.crypto_ctx().run_here(&params, &mut b);
                let batch = decapsulate_finish(&mut inb_b, &job, &mut b, crypto).unwrap();
                assert_eq!(one, batch, "{suite:?} esn {esn}");
                assert_eq!(a, b, "{suite:?} esn {esn}");

                // The last byte of the packet is the tag's (or the ICV's).
                let mut forged = encapsulate(&mut out, &inner_v4(45), &outer, 0).unwrap();
                if let Some(last) = forged.last_mut() {
                    *last ^= 1;
                }
                let mut params = stale.clone();
                let job =
                    decapsulate_prepare_into(&mut inb_b, &mut forged, 0, &mut params).unwrap();
                let crypto = inb_b.crypto_ctx().run_here(&params, &mut forged);
                assert_eq!(
                    decapsulate_finish(&mut inb_b, &job, &mut forged, crypto),
                    Err(EspError::Authentication),
                    "{suite:?} esn {esn}"
                );
            }
        }
    }
}

/// On a refusal the caller's parameters are left as they were.
#[test]
fn prepare_into_refusal_leaves_parameters() {
    let (mut out, mut inb) = pair(SUITES[0], false);
    let mut packet = encapsulate(&mut out, &inner_v4(45), &v4_outer(), 0).unwrap();
    let mut params = SymParams {
        iv: [7; 16],
        ..SymParams::default()
    };
    let mut replayed = packet.clone();
    decapsulate(&mut inb, &mut packet, 0).unwrap();
    let before = format!("{params:?}");
    assert_eq!(
        decapsulate_prepare_into(&mut inb, &mut replayed, 0, &mut params).map(|_| ()),
        Err(EspError::Replay(ReplayError::Duplicate))
    );
    assert_eq!(format!("{params:?}"), before);
}

#[test]
fn outer_headers_are_well_formed() {
    let (mut out, _) = pair(SUITES[0], false);
    let inner = inner_v4(100);
    let p = encapsulate(&mut out, &inner, &v4_outer(), 0).unwrap();
    assert_eq!(p[0], 0x45);
    assert_eq!(p[1], 0xb8, "inner DSCP copied");
    assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
    assert_eq!(p[9], ESP_PROTOCOL);
    assert_eq!(checksum(&[&p[..20]]), 0, "valid IPv4 header checksum");
    // GCM: 8 ESP + 8 IV + (100 + 2 padded to the AES block: 112) + 16 ICV.
    assert_eq!(p.len(), 20 + 8 + 8 + 112 + 16);
    assert_eq!(&p[20..24], &0x1234_5678u32.to_be_bytes());
    assert_eq!(&p[24..28], &1u32.to_be_bytes());

    let p = encapsulate(&mut out, &inner, &v4_outer().with_udp(4500, 4500), 0).unwrap();
    assert_eq!(p[9], 17);
    assert_eq!(&p[20..24], &[0x11, 0x94, 0x11, 0x94]);
    assert_eq!(
        usize::from(u16::from_be_bytes([p[24], p[25]])),
        p.len() - 20
    );
    assert_eq!(
        &p[26..28],
        &[0, 0],
        "zero UDP checksum over IPv4 (RFC 3948)"
    );

    let p = encapsulate(&mut out, &inner_v6(80), &v6_outer().with_udp(4500, 4500), 0).unwrap();
    assert_eq!(p[6], 17);
    let udp_len = u16::from_be_bytes([p[44], p[45]]);
    let mut pseudo = [0u8; 40];
    pseudo[..32].copy_from_slice(&p[8..40]);
    pseudo[32..36].copy_from_slice(&u32::from(udp_len).to_be_bytes());
    pseudo[39] = 17;
    assert_eq!(
        checksum(&[&pseudo, &p[40..]]),
        0,
        "valid UDP checksum over IPv6"
    );
}

/// The ESP bytes for AES-GCM built independently from the RFC 4106 layout.
#[test]
fn gcm_wire_layout_matches_rfc4106() {
    let suite = EspSuite::Gcm(AeadAlgorithm::Aes128Gcm16);
    let (mut out, _) = pair(suite, false);
    let inner = inner_v4(22);
    let p = encapsulate(&mut out, &inner, &v4_outer(), 0).unwrap();
    let key: Vec<u8> = (0..16).collect();
    let salt: Vec<u8> = (16..20).collect();
    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &key).unwrap(),
    );
    let mut nonce = salt.clone();
    nonce.extend_from_slice(&1u64.to_be_bytes());
    let mut plaintext = inner.clone();
    // 22 + 2 is 4-aligned, as RFC 4106 asks, but is padded on to the 16-byte block.
    plaintext.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 8, 4]);
    let aad = [0x12, 0x34, 0x56, 0x78, 0, 0, 0, 1];
    let tag = ring_key
        .seal_in_place_separate_tag(
            ring::aead::Nonce::try_assume_unique_for_key(&nonce).unwrap(),
            ring::aead::Aad::from(aad),
            &mut plaintext,
        )
        .unwrap();
    let mut expected = aad.to_vec();
    expected.extend_from_slice(&1u64.to_be_bytes());
    expected.extend_from_slice(&plaintext);
    expected.extend_from_slice(tag.as_ref());
    assert_eq!(&p[20..], &expected[..]);
}

/// Peers pad AES-GCM only to 4 bytes, as RFC 4106 asks (strongSwan and Linux do): such packets
/// decapsulate although ours are padded to 16.
#[test]
fn gcm_padded_to_four_bytes_is_accepted() {
    let (_, mut inb) = pair(EspSuite::Gcm(AeadAlgorithm::Aes128Gcm16), false);
    let inner = inner_v4(40);
    let mut plaintext = inner.clone();
    plaintext.extend_from_slice(&[1, 2, 2, 4]); // 40 + 2 + 2 = 44
    let mut packet = sealed_gcm_v4(7, plaintext);
    let d = decapsulate(&mut inb, &mut packet, 0).unwrap();
    assert_eq!(&packet[d.inner], &inner[..]);
    assert_eq!(d.sequence, 7);
}

/// An outer IPv4 packet carrying ESP with sequence number `seq` around `plaintext` (inner
/// packet, padding and trailer), sealed with ring itself under the keys of [`config`].
fn sealed_gcm_v4(seq: u32, mut plaintext: Vec<u8>) -> Vec<u8> {
    let key: Vec<u8> = (0..16).collect();
    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &key).unwrap(),
    );
    let mut nonce: Vec<u8> = (16..20).collect();
    nonce.extend_from_slice(&u64::from(seq).to_be_bytes());
    let mut aad = [0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0];
    aad[4..].copy_from_slice(&seq.to_be_bytes());
    let tag = ring_key
        .seal_in_place_separate_tag(
            ring::aead::Nonce::try_assume_unique_for_key(&nonce).unwrap(),
            ring::aead::Aad::from(aad),
            &mut plaintext,
        )
        .unwrap();
    let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, ESP_PROTOCOL, 0, 0];
    packet.extend_from_slice(&[203, 0, 113, 1, 203, 0, 113, 2]);
    packet.extend_from_slice(&aad);
    packet.extend_from_slice(&u64::from(seq).to_be_bytes());
    packet.extend_from_slice(&plaintext);
    packet.extend_from_slice(tag.as_ref());
    let total = packet.len() as u16;
    packet[2..4].copy_from_slice(&total.to_be_bytes());
    packet
}

/// The padding check compares up to 16 bytes at once under a mask and walks longer
/// padding: every length is checked byte by byte either way.
#[test]
fn padding_of_every_length_is_checked() {
    let (_, mut inb) = pair(EspSuite::Gcm(AeadAlgorithm::Aes128Gcm16), false);
    let inner = inner_v4(40);
    let mut seq = 0;
    for pad_len in (0..=40).chain([100, 254, 255]) {
        let padding: Vec<u8> = (1..=pad_len).map(|b| b as u8).collect();
        // Each byte of the padding wrong in turn, then all of it right.
        for wrong in (0..pad_len).map(Some).chain([None]) {
            let mut plaintext = inner.clone();
            plaintext.extend_from_slice(&padding);
            if let Some(at) = wrong {
                plaintext[inner.len() + at] ^= 0x80;
            }
            plaintext.extend_from_slice(&[pad_len as u8, IPIP_PROTOCOL]);
            seq += 1;
            let mut packet = sealed_gcm_v4(seq, plaintext);
            let result = decapsulate(&mut inb, &mut packet, 0);
            match wrong {
                Some(at) => assert_eq!(
                    result,
                    Err(EspError::BadTrailer),
                    "padding {pad_len}, byte {at} wrong"
                ),
                None => assert_eq!(
                    &packet[result.unwrap().inner],
                    &inner[..],
                    "padding {pad_len}"
                ),
            }
        }
    }
}

#[test]
fn replayed_packets_are_dropped_and_counted() {
    for suite in [SUITES[0], SUITES[2]] {
        let (mut out, mut inb) = pair(suite, false);
        let first = encapsulate(&mut out, &inner_v4(40), &v4_outer(), 0).unwrap();
        decapsulate(&mut inb, &mut first.clone(), 0).unwrap();
        assert_eq!(
            decapsulate(&mut inb, &mut first.clone(), 0),
            Err(EspError::Replay(ReplayError::Duplicate))
        );
        // Jump far ahead: the first packet is now also too old.
        out.set_sequence(5000);
        let late = encapsulate(&mut out, &inner_v4(40), &v4_outer(), 0).unwrap();
        decapsulate(&mut inb, &mut late.clone(), 0).unwrap();
        assert_eq!(
            decapsulate(&mut inb, &mut first.clone(), 0),
            Err(EspError::Replay(ReplayError::TooOld))
        );
        assert_eq!(inb.counters().replay_drops, 2);
        assert_eq!(inb.counters().packets, 2);
    }
}

#[test]
fn forged_icv_and_ciphertext_fail_without_moving_the_window() {
    for suite in SUITES {
        let (mut out, mut inb) = pair(suite, true);
        let good = encapsulate(&mut out, &inner_v4(64), &v4_outer(), 0).unwrap();
        for flip in [good.len() - 1, good.len() - 20, 20 + 4, 20 + 9] {
            let mut bad = good.clone();
            bad[flip] ^= 0x01;
            let result = decapsulate(&mut inb, &mut bad, 0);
            // Flipping the sequence number can also make it a replay of nothing: either
            // way it must not pass.
            assert!(
                matches!(result, Err(EspError::Authentication)),
                "{suite:?} byte {flip}: {result:?}"
            );
        }
        assert_eq!(inb.counters().auth_failures, 4);
        assert_eq!(inb.sequence(), 0, "window untouched by forgeries");
        let mut good = good;
        decapsulate(&mut inb, &mut good, 0).unwrap();
    }
}

#[test]
fn wrong_key_fails_authentication() {
    let suite = SUITES[3];
    let backend = SoftwareBackend::new();
    let (mut out, _) = pair(suite, false);
    let mut other = config(suite, false);
    other.keys.integrity = SecretBytes::new(vec![9; suite.integrity_key_len()]);
    let mut inb = Sa::new(&backend, &other, Direction::Inbound, 0).unwrap();
    let mut p = encapsulate(&mut out, &inner_v4(30), &v4_outer(), 0).unwrap();
    assert_eq!(
        decapsulate(&mut inb, &mut p, 0),
        Err(EspError::Authentication)
    );
    assert_eq!(
        decapsulate(&mut HashMap::new(), &mut p, 0),
        Err(EspError::UnknownSpi(0x1234_5678))
    );
}

#[test]
fn esn_wraps_and_plain_sequence_exhausts() {
    for suite in [SUITES[1], SUITES[5]] {
        let (mut out, mut inb) = pair(suite, true);
        out.set_sequence(u64::from(u32::MAX) - 2);
        let mut packets: Vec<Vec<u8>> = (0..5)
            .map(|_| encapsulate(&mut out, &inner_v6(48), &v6_outer(), 0).unwrap())
            .collect();
        // Deliver out of order across the wrap.
        packets.swap(1, 3);
        let mut seqs = Vec::new();
        for p in &mut packets {
            seqs.push(decapsulate(&mut inb, p, 0).unwrap().sequence);
        }
        let base = u64::from(u32::MAX);
        assert_eq!(seqs, vec![base - 1, base + 2, base + 1, base, base + 3]);

        let (mut out, _) = pair(suite, false);
        out.set_sequence(u64::from(u32::MAX) - 1);
        encapsulate(&mut out, &inner_v4(20), &v4_outer(), 0).unwrap();
        assert_eq!(
            encapsulate(&mut out, &inner_v4(20), &v4_outer(), 0),
            Err(EspError::SequenceExhausted)
        );
    }
}

#[test]
fn lifetimes_by_bytes_and_time() {
    let backend = SoftwareBackend::new();
    let mut c = config(SUITES[0], false);
    c.lifetime = Lifetime {
        soft_bytes: Some(100),
        hard_bytes: Some(200),
        soft_time: Some(1_000),
        hard_time: Some(2_000),
    };
    let mut out = Sa::new(&backend, &c, Direction::Outbound, 10).unwrap();
    assert_eq!(out.lifetime_state(10), LifetimeState::Fresh);
    assert_eq!(out.lifetime_state(1_010), LifetimeState::Soft);
    assert_eq!(out.lifetime_state(2_010), LifetimeState::Hard);
    assert_eq!(
        encapsulate(&mut out, &inner_v4(60), &v4_outer(), 2_010),
        Err(EspError::Expired)
    );
    encapsulate(&mut out, &inner_v4(120), &v4_outer(), 20).unwrap();
    assert_eq!(out.lifetime_state(20), LifetimeState::Soft);
    encapsulate(&mut out, &inner_v4(120), &v4_outer(), 20).unwrap();
    assert_eq!(
        encapsulate(&mut out, &inner_v4(20), &v4_outer(), 20),
        Err(EspError::Expired)
    );
    assert_eq!(out.counters().lifetime_drops, 2);
}

#[test]
fn in_place_respects_headroom_and_rejects_bad_input() {
    let (mut out, mut inb) = pair(SUITES[2], false);
    let outer = v4_outer().with_udp(4500, 4500);
    let inner = inner_v4(50);
    let headroom = outer.len() + 8 + 16;
    let mut buf = vec![0u8; headroom + inner.len() + out.esp_overhead()];
    buf[headroom..headroom + 50].copy_from_slice(&inner);
    let range =
        encapsulate_in_place(&mut out, &mut buf, headroom..headroom + 50, &outer, 0).unwrap();
    assert_eq!(range.start, 0);
    let decap = decapsulate(&mut inb, &mut buf[range], 0).unwrap();
    assert_eq!(decap.inner.len(), 50);

    let mut small = vec![0u8; 60];
    small[10] = 0x45;
    assert_eq!(
        encapsulate_in_place(&mut out, &mut small, 10..30, &outer, 0),
        Err(EspError::BufferTooSmall)
    );
    assert_eq!(
        encapsulate(&mut out, &[0x12; 20], &outer, 0),
        Err(EspError::InnerNotIp)
    );
    let mixed = OuterHeader::new(
        "203.0.113.1".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
    );
    assert_eq!(
        encapsulate(&mut out, &inner, &mixed, 0),
        Err(EspError::FamilyMismatch)
    );
    assert_eq!(
        encapsulate(&mut inb, &inner, &outer, 0),
        Err(EspError::WrongDirection)
    );
}

#[test]
fn non_esp_udp_is_not_taken() {
    let (mut out, mut inb) = pair(SUITES[0], false);
    let mut p = encapsulate(&mut out, &inner_v4(40), &v4_outer().with_udp(4500, 4500), 0).unwrap();
    // IKE behind the non-ESP marker.
    p[28..32].copy_from_slice(&[0, 0, 0, 0]);
    assert_eq!(decapsulate(&mut inb, &mut p, 0), Err(EspError::NotEsp));
    // Other destination port.
    let mut p = encapsulate(&mut out, &inner_v4(40), &v4_outer().with_udp(4500, 500), 0).unwrap();
    assert_eq!(decapsulate(&mut inb, &mut p, 0), Err(EspError::NotEsp));
    // A NAT keepalive (RFC 3948 2.3: one byte, 0xff), followed in the buffer by a link's
    // padding that the ESP header must not be read from; and the non-ESP marker alone.
    for payload in [&[0xff][..], &[0, 0, 0, 0][..]] {
        let udp_len = 8 + payload.len();
        let mut p = vec![0u8; 20 + udp_len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[20..22].copy_from_slice(&4500u16.to_be_bytes());
        p[22..24].copy_from_slice(&4500u16.to_be_bytes());
        p[24..26].copy_from_slice(&(udp_len as u16).to_be_bytes());
        p[28..].copy_from_slice(payload);
        p.extend_from_slice(&[0x5a; 17]);
        assert_eq!(decapsulate(&mut inb, &mut p, 0), Err(EspError::NotEsp));
        let mut params = SymParams::default();
        assert_eq!(
            decapsulate_prepare_into(&mut inb, &mut p, 0, &mut params).map(|_| ()),
            Err(EspError::NotEsp)
        );
    }
    // Outer fragment.
    let mut p = encapsulate(&mut out, &inner_v4(40), &v4_outer(), 0).unwrap();
    p[6] = 0x20;
    assert_eq!(decapsulate(&mut inb, &mut p, 0), Err(EspError::Fragment));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn garbage_never_panics(mut data in proptest::collection::vec(any::<u8>(), 0..200), v6 in any::<bool>()) {
        let (_, mut inb) = pair(SUITES[2], true);
        if let Some(first) = data.first_mut() {
            *first = if v6 { 0x60 } else { 0x45 };
        }
        let _ = decapsulate(&mut inb, &mut data, 0);
    }

    #[test]
    fn truncated_or_mutated_packets_never_pass(
        suite_index in 0usize..6,
        len in 20usize..300,
        cut in 0usize..400,
        flip in any::<(usize, u8)>(),
    ) {
        let suite = SUITES[suite_index];
        let (mut out, mut inb) = pair(suite, false);
        let good = encapsulate(&mut out, &inner_v4(len), &v4_outer().with_udp(4500, 4500), 0).unwrap();
        let mut truncated = good[..cut.min(good.len())].to_vec();
        if truncated.len() < good.len() {
            prop_assert!(decapsulate(&mut inb, &mut truncated, 0).is_err());
        }
        let mut mutated = good.clone();
        let at = 28 + flip.0 % (good.len() - 28);
        let mask = flip.1 | 1;
        mutated[at] ^= mask;
        prop_assert!(decapsulate(&mut inb, &mut mutated, 0).is_err());
        let mut good = good;
        prop_assert!(decapsulate(&mut inb, &mut good, 0).is_ok());
    }
}

/// RFC 6040 section 4.1 (normal mode, which RFC 4301 section 5.1.2.1 now follows): the outer
/// header copies the inner ECN field as it is, CE included, beside the DSCP; and
/// decapsulation reports the outer ECN field as it arrived, for the caller to combine with
/// the inner one (section 4.2).
#[test]
fn the_outer_header_copies_the_inner_ecn_field_and_decapsulation_reports_it() {
    for suite in [SUITES[0], SUITES[2]] {
        for ecn in 0..4u8 {
            for outer in [v4_outer(), v6_outer().with_udp(4500, 4500)] {
                let (mut out, mut inb) = pair(suite, false);
                // IPv4 inner: DSCP EF (0xb8) and the ECN field in the type of service.
                let mut v4 = inner_v4(100);
                v4[1] = 0xb8 | ecn;
                // IPv6 inner: traffic class 0x2c (DSCP 11) and the ECN field.
                let mut v6 = inner_v6(100);
                let tclass = 0x2c | ecn;
                v6[0] = 0x60 | (tclass >> 4);
                v6[1] = (tclass << 4) | (v6[1] & 0x0f);
                for (inner, tos) in [(&v4, 0xb8 | ecn), (&v6, tclass)] {
                    let mut p = encapsulate(&mut out, inner, &outer, 0).unwrap();
                    let got = if outer.src().is_ipv4() {
                        assert_eq!(checksum(&[&p[..20]]), 0, "valid IPv4 header checksum");
                        p[1]
                    } else {
                        (p[0] << 4) | (p[1] >> 4)
                    };
                    assert_eq!(got, tos, "{suite:?} {outer:?} ecn {ecn}");
                    let d = decapsulate(&mut inb, &mut p, 0).unwrap();
                    assert_eq!(d.outer_ecn, ecn);
                    assert_eq!(
                        &p[d.inner],
                        &inner[..],
                        "the inner packet is left as it was"
                    );
                }
            }
        }
    }
    // What the network did to the outer field on the way is what decapsulation reports: CE
    // set by a router, through both halves of the batch path too.
    let (mut out, mut inb) = pair(SUITES[0], false);
    let mut v4 = inner_v4(60);
    v4[1] = 0x02; // ECT(0)
    let mut p = encapsulate(&mut out, &v4, &v4_outer(), 0).unwrap();
    p[1] |= 3;
    p[10..12].fill(0);
    let sum = checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    let (job, params) = decapsulate_prepare(&mut inb, &mut p, 0).unwrap();
    let crypto = inb.crypto_ctx().run_here(&params, &mut p);
    let d = decapsulate_finish(&mut inb, &job, &mut p, crypto).unwrap();
    assert_eq!(d.outer_ecn, 3);
    assert_eq!(
        p[d.inner.start + 1],
        0x02,
        "the codec leaves the inner field to the caller"
    );
}

/// The outer header as it was built before the template: field by field, checksum summed
/// over the whole header (the reference [`OuterHeader::write`] must agree with).
fn outer_built_field_by_field(
    src: IpAddr,
    dst: IpAddr,
    udp: Option<(u16, u16)>,
    ttl: u8,
    total: usize,
    tos: u8,
) -> Vec<u8> {
    let protocol = if udp.is_some() { 17 } else { ESP_PROTOCOL };
    let mut h = match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut h = vec![0x45, tos, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0];
            h.extend_from_slice(&[ttl, protocol, 0, 0]);
            h.extend_from_slice(&src.octets());
            h.extend_from_slice(&dst.octets());
            let sum = checksum(&[&h]);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            h
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut h = vec![0x60 | (tos >> 4), tos << 4, 0, 0];
            h.extend_from_slice(&((total - 40) as u16).to_be_bytes());
            h.extend_from_slice(&[protocol, ttl]);
            h.extend_from_slice(&src.octets());
            h.extend_from_slice(&dst.octets());
            h
        }
        _ => panic!("families differ"),
    };
    if let Some((sport, dport)) = udp {
        let udp_len = (total - h.len()) as u16;
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&dport.to_be_bytes());
        h.extend_from_slice(&udp_len.to_be_bytes());
        h.extend_from_slice(&[0, 0]);
    }
    h
}

/// The template, copied and patched (lengths, traffic class, the IPv4 checksum by incremental
/// update), gives the same bytes as the header built field by field: for both families,
/// with and without UDP, for any TTL, DSCP, ECN and length, and for addresses whose sums
/// carry.
#[test]
fn outer_template_matches_the_header_built_field_by_field() {
    let v4: [(&str, &str); 4] = [
        ("203.0.113.1", "203.0.113.2"),
        ("0.0.0.0", "0.0.0.1"),
        ("255.255.255.255", "255.255.255.254"),
        ("10.255.0.255", "192.168.255.1"),
    ];
    let v6: [(&str, &str); 3] = [
        ("2001:db8::1", "2001:db8::2"),
        ("::", "::1"),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fe80::1"),
    ];
    let pairs: Vec<(IpAddr, IpAddr)> = v4
        .iter()
        .chain(v6.iter())
        .map(|(s, d)| (s.parse().unwrap(), d.parse().unwrap()))
        .collect();
    let mut checked = 0;
    for (src, dst) in pairs {
        for udp in [
            None,
            Some((4500, 4500)),
            Some((0xffff, 1)),
            Some((40000, 4500)),
        ] {
            for ttl in [64, 1, 255] {
                let mut outer = OuterHeader::new(src, dst).with_ttl(ttl);
                if let Some((s, d)) = udp {
                    outer = outer.with_udp(s, d);
                }
                assert_eq!(
                    (outer.src(), outer.dst(), outer.udp(), outer.ttl()),
                    (src, dst, udp, ttl)
                );
                for tos in [0, 0x04, 0xb8, 0xfc, 0x01, 0xba, 0xff] {
                    for total in [outer.len() + 34, 100, 1500, 0x7fff, 0xfff0, 0xffff] {
                        let expected = outer_built_field_by_field(src, dst, udp, ttl, total, tos);
                        assert_eq!(expected.len(), outer.len());
                        let mut header = vec![0xaa; outer.len()];
                        assert!(outer.write(&mut header, total, tos));
                        assert_eq!(header, expected, "{outer:?} total {total} tos {tos:#x}");
                        if src.is_ipv4() {
                            assert_eq!(checksum(&[&header[..20]]), 0);
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 7 * 4 * 3 * 7 * 6);
    // Too short a buffer, or addresses of two families, write nothing.
    let mut short = [0u8; 27];
    assert!(!v4_outer().with_udp(4500, 4500).write(&mut short, 100, 0));
    let mixed = OuterHeader::new(
        "203.0.113.1".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
    );
    assert!(!mixed.families_match());
    assert!(!mixed.write(&mut [0u8; 64], 100, 0));
}

/// Headers are written from the template on both paths, and an outer header of two
/// families is refused on both.
#[test]
fn encapsulation_refuses_mixed_families() {
    let mixed = OuterHeader::new(
        "203.0.113.1".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
    );
    for suite in [SUITES[0], SUITES[2]] {
        let (mut out, _) = pair(suite, false);
        let inner = inner_v4(40);
        let mut buf = vec![0u8; 64 + inner.len() + out.esp_overhead()];
        buf[64..104].copy_from_slice(&inner);
        assert_eq!(
            encapsulate_in_place(&mut out, &mut buf, 64..104, &mixed, 0),
            Err(EspError::FamilyMismatch)
        );
        assert!(matches!(
            encapsulate_prepare(&mut out, &mut buf, 64..104, &mixed, 0),
            Err(EspError::FamilyMismatch)
        ));
        assert_eq!(out.sequence(), 0, "no sequence number used");
    }
}

/// The trailer comes from a table: for every padding length and both next headers it is
/// the monotonic padding, the pad length and the next header, byte for byte.
#[test]
fn trailer_table_is_the_padding_the_pad_length_and_the_next_header() {
    for next_header in [IPIP_PROTOCOL, IPV6_PROTOCOL] {
        for pad_len in 0..16usize {
            let mut expected: Vec<u8> = (1..=pad_len as u8).collect();
            expected.push(pad_len as u8);
            expected.push(next_header);
            let t = trailer(pad_len, next_header);
            let n = expected.len().min(16);
            assert_eq!(&t[..n], &expected[..n], "pad {pad_len}");
            assert_eq!(&t[n..], &PADDING[n..], "pad {pad_len}: the rest as PADDING");
        }
    }
}

/// Every padding length (inner packets of 20 to 35 bytes, and longer ones of each residue)
/// through both suites and both paths: what goes on the wire decapsulates, and the one-packet
/// and batch paths write the same bytes.
#[test]
fn every_padding_length_round_trips_on_both_paths() {
    for suite in [SUITES[0], SUITES[1], SUITES[2]] {
        for outer in [
            v4_outer(),
            v4_outer().with_udp(4500, 4500),
            v6_outer(),
            v6_outer().with_udp(40000, 4500),
        ] {
            let (mut out_a, mut inb) = pair(suite, false);
            let (mut out_b, _) = pair(suite, false);
            for len in (20..36).chain(1400..1416) {
                let inner = if len < 1400 {
                    inner_v4(len)
                } else {
                    inner_v6(len)
                };
                let head = outer.len() + 8 + suite.iv_len();
                let mut a = vec![0u8; head + inner.len() + out_a.esp_overhead()];
                a[head..head + inner.len()].copy_from_slice(&inner);
                let mut b = a.clone();
                let range_a =
                    encapsulate_in_place(&mut out_a, &mut a, head..head + inner.len(), &outer, 0)
                        .unwrap();
                let (job, params) =
                    encapsulate_prepare(&mut out_b, &mut b, head..head + inner.len(), &outer, 0)
                        .unwrap();
                let crypto = out_b.crypto_ctx().run_here(&params, &mut b);
                let range_b = encapsulate_finish(&mut out_b, &job, &mut b, crypto).unwrap();
                assert_eq!(range_a, range_b);
                assert_eq!(
                    &a[range_a.clone()],
                    &b[range_b],
                    "{suite:?} {outer:?} {len}"
                );
                let mut packet = a[range_a].to_vec();
                let d = decapsulate(&mut inb, &mut packet, 0).unwrap();
                assert_eq!(&packet[d.inner], &inner[..], "{suite:?} {outer:?} {len}");
            }
        }
    }
}

/// The per-packet hard-limit check (precomputed limits) says what the lifetime state says,
/// including a zero time limit, a clock before the SA's creation, and limits that would
/// overflow.
#[test]
fn hard_limit_check_agrees_with_the_lifetime_state() {
    let backend = SoftwareBackend::new();
    let limits = [
        None,
        Some(0),
        Some(1),
        Some(1_000),
        Some(u64::MAX - 5),
        Some(u64::MAX),
    ];
    let times = [0, 1, 999, 1_000, 1_001, 5_000, u64::MAX - 10, u64::MAX - 1];
    for hard_time in limits {
        for hard_bytes in limits {
            for created in [0, 1_000, u64::MAX - 7] {
                let mut c = config(SUITES[0], false);
                c.lifetime = Lifetime {
                    hard_bytes,
                    hard_time,
                    ..Lifetime::default()
                };
                let mut sa = Sa::new(&backend, &c, Direction::Outbound, created).unwrap();
                for bytes in [0, 1, 999, 1_000, u64::MAX - 6] {
                    sa.counters.bytes = bytes;
                    for now in times {
                        assert_eq!(
                            sa.past_hard_limit(now),
                            sa.lifetime_state(now) == LifetimeState::Hard,
                            "{hard_time:?} {hard_bytes:?} created {created} bytes {bytes} now {now}"
                        );
                    }
                }
            }
        }
    }
}
