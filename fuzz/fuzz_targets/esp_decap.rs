//! ESP decapsulation against a table of inbound SAs (AES-GCM and AES-CBC/HMAC, ESN on and
//! off, anti-replay on and off, one with a hard lifetime), fed arbitrary packets and packets
//! sealed by the matching outbound SAs (at input-chosen sequence numbers, optionally
//! corrupted, optionally replayed), with time advancing.
//!
//! Invariants: no panic; a refused packet that did not authenticate leaves the SA's replay
//! window (its top) and packet counters as they were; an accepted packet lies inside the
//! buffer, moves the top to at least its sequence number and counts once; a sealed,
//! untouched packet newer than the window is accepted and decrypts to the original inner
//! packet; a packet accepted once is refused as a replay the second time.
#![no_main]

use std::collections::HashMap;
use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use switchyard_ipsec::crypto::{
    AeadAlgorithm, CbcAlgorithm, MacAlgorithm, SecretBytes, SoftwareBackend,
};
use switchyard_ipsec::esp::{
    decapsulate, encapsulate, Direction, EspError, EspKeys, EspSuite, Lifetime, LifetimeState,
    OuterHeader, Sa, SaConfig, IPIP_PROTOCOL, IPV6_PROTOCOL,
};

const SECOND: u64 = 1_000_000_000;

/// (spi, suite, esn, replay window, lifetime)
fn configs() -> Vec<SaConfig> {
    let table: [(u32, EspSuite, bool, u32, Lifetime); 4] = [
        (
            0x1001,
            EspSuite::Gcm(AeadAlgorithm::Aes128Gcm16),
            false,
            64,
            Lifetime::default(),
        ),
        (
            0x1002,
            EspSuite::CbcHmac(CbcAlgorithm::Aes256Cbc, MacAlgorithm::HmacSha256_128),
            true,
            128,
            Lifetime::default(),
        ),
        (
            0x1003,
            EspSuite::Gcm(AeadAlgorithm::Aes256Gcm16),
            true,
            0,
            Lifetime::default(),
        ),
        (
            0x1004,
            EspSuite::CbcHmac(CbcAlgorithm::Aes128Cbc, MacAlgorithm::HmacSha512_256),
            false,
            1024,
            Lifetime {
                hard_time: Some(20 * SECOND),
                hard_bytes: Some(4000),
                ..Lifetime::default()
            },
        ),
    ];
    table
        .into_iter()
        .map(|(spi, suite, esn, replay_window, lifetime)| SaConfig {
            spi,
            suite,
            keys: EspKeys {
                encryption: SecretBytes::new(
                    (0..suite.encryption_key_len())
                        .map(|i| (i as u8) ^ spi as u8)
                        .collect(),
                ),
                integrity: SecretBytes::new(
                    (0..suite.integrity_key_len())
                        .map(|i| (i as u8) ^ 0x5a)
                        .collect(),
                ),
            },
            esn,
            replay_window,
            lifetime,
        })
        .collect()
}

fn outer(sel: u8) -> OuterHeader {
    let (src, dst): (IpAddr, IpAddr) = if sel & 1 == 0 {
        (
            "203.0.113.1".parse().unwrap(),
            "203.0.113.2".parse().unwrap(),
        )
    } else {
        (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        )
    };
    let o = OuterHeader::new(src, dst);
    if sel & 2 != 0 {
        o.with_udp(40000, 4500)
    } else {
        o
    }
}

/// An inner IPv4 or IPv6 packet around the input's bytes.
fn inner(v6: bool, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; if v6 { 40 } else { 20 }];
    if v6 {
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
        p[6] = 17;
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + body.len()) as u16).to_be_bytes());
        p[9] = 17;
    }
    p.extend_from_slice(body);
    p
}

/// Decapsulates and checks the invariants; returns the result.
fn decap(
    table: &mut HashMap<u32, Sa>,
    packet: &mut [u8],
    now: u64,
) -> Result<switchyard_ipsec::esp::Decapsulated, EspError> {
    let spi_guess: Vec<(u32, u64, u64)> = table
        .values()
        .map(|sa| (sa.spi(), sa.sequence(), sa.counters().packets))
        .collect();
    let len = packet.len();
    let result = decapsulate(table, packet, now);
    for (spi, top, packets) in spi_guess {
        let sa = &table[&spi];
        let moved = sa.sequence() != top || sa.counters().packets != packets;
        match &result {
            Ok(d) if d.spi == spi => {
                assert!(d.inner.start < d.inner.end && d.inner.end <= len);
                assert!(matches!(d.next_header, IPIP_PROTOCOL | IPV6_PROTOCOL));
                assert_eq!(sa.sequence(), top.max(d.sequence));
                assert_eq!(sa.counters().packets, packets + 1);
                let version = packet[d.inner.start] >> 4;
                assert_eq!(version, if d.next_header == IPIP_PROTOCOL { 4 } else { 6 });
            }
            // Authenticated but refused afterwards (trailer, inner protocol, dummy): the
            // window moves (RFC 4303 section 3.4.3: it follows integrity), the count does not.
            Err(
                EspError::BadTrailer
                | EspError::InnerNotIp
                | EspError::Dummy
                | EspError::UnsupportedNextHeader(_),
            ) => assert_eq!(sa.counters().packets, packets),
            _ => assert!(
                !moved,
                "SA {spi:#x} changed by a refused packet: {result:?}"
            ),
        }
    }
    result
}

fuzz_target!(|data: &[u8]| {
    let backend = SoftwareBackend::new();
    let configs = configs();
    let mut inbound: HashMap<u32, Sa> = HashMap::new();
    let mut outbound: Vec<Sa> = Vec::new();
    for c in &configs {
        inbound.insert(c.spi, Sa::new(&backend, c, Direction::Inbound, 0).unwrap());
        outbound.push(Sa::new(&backend, c, Direction::Outbound, 0).unwrap());
    }
    let mut now = SECOND;
    let mut last_accepted: Option<Vec<u8>> = None;
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (bytes, after) = tail.split_at(len);
        rest = after;
        match op % 4 {
            // An arbitrary packet.
            0 => {
                let mut p = bytes.to_vec();
                let _ = decap(&mut inbound, &mut p, now);
            }
            // A packet sealed by an outbound SA: [seq: 8][xor at, xor value][inner body..]
            1 => {
                let k = usize::from(op >> 2) % outbound.len();
                let Some((seq, body)) = bytes.split_first_chunk::<8>() else {
                    continue;
                };
                let (corrupt, body) = match body {
                    [at, x, b @ ..] if op & 0x40 != 0 => (Some((*at, *x)), b),
                    _ => (None, body),
                };
                let esn = configs[k].esn;
                let mut seq = u64::from_be_bytes(*seq);
                if !esn {
                    seq &= u64::from(u32::MAX);
                }
                // The packet goes out with sequence number `seq` + 1.
                let sent = seq.wrapping_add(1);
                outbound[k].set_sequence(seq);
                let plain = inner(op & 0x80 != 0, body);
                let Ok(mut packet) = encapsulate(&mut outbound[k], &plain, &outer(*op >> 4), now)
                else {
                    continue;
                };
                if let Some((at, x)) = corrupt {
                    let at = usize::from(at) * packet.len() / 256;
                    packet[at] ^= x;
                }
                let sa = &inbound[&configs[k].spi];
                let top = sa.sequence();
                let fresh = sa.lifetime_state(now) != LifetimeState::Hard
                    && sent > top
                    // ESN inference is only sure within 2^31 of the top.
                    && (!esn || sent - top < 1 << 31);
                let untouched = corrupt.is_none_or(|(_, x)| x == 0);
                let copy = packet.clone();
                match decap(&mut inbound, &mut packet, now) {
                    Ok(d) => {
                        assert_eq!(d.sequence, sent);
                        assert_eq!(&packet[d.inner.clone()], &plain[..]);
                        last_accepted = Some(copy);
                    }
                    Err(e) => assert!(
                        !(fresh && untouched),
                        "a fresh, intact packet (seq {sent}, top {top}) was refused: {e:?}"
                    ),
                }
            }
            // The last accepted packet again: refused by an SA with anti-replay.
            2 => {
                if let Some(mut p) = last_accepted.clone() {
                    let r = decap(&mut inbound, &mut p, now);
                    if let Ok(d) = &r {
                        let k = configs.iter().position(|c| c.spi == d.spi).unwrap();
                        assert_eq!(configs[k].replay_window, 0, "replay accepted: {d:?}");
                    }
                }
            }
            // Time passes.
            _ => now += u64::from(bytes.first().copied().unwrap_or(1)) * SECOND / 4,
        }
    }
});
