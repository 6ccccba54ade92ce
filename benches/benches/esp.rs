//! ESP per packet on one core (issue 8): tunnel-mode encapsulation and decapsulation with the
//! software backend, at 64, 512 and 1420-byte inner packets, against the limit measured in the
//! same run: the same library's raw AEAD seal/open of the same bytes (`ring` AES-128-GCM, the
//! suite the software backend runs it with).
//!
//! ```sh
//! cargo bench -p switchyard-benches --bench esp
//! ```
//!
//! Each iteration copies the packet into a work buffer first (ESP works in place), in the raw
//! runs as well, so the ratio compares like with like: everything ESP adds to the AEAD (header,
//! padding, trailer, sequence number and anti-replay, the outer IPv4 and UDP headers).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use switchyard_ipsec::crypto::{
    AeadAlgorithm, CbcAlgorithm, MacAlgorithm, SecretBytes, SoftwareBackend,
};
use switchyard_ipsec::esp::{
    decapsulate, encapsulate_in_place, Direction, EspKeys, EspSuite, Lifetime, OuterHeader, Sa,
    SaConfig,
};

const SIZES: [usize; 3] = [64, 512, 1420];
const GCM: EspSuite = EspSuite::Gcm(AeadAlgorithm::Aes128Gcm16);
const CBC: EspSuite = EspSuite::CbcHmac(CbcAlgorithm::Aes256Cbc, MacAlgorithm::HmacSha256_128);

fn config(suite: EspSuite) -> SaConfig {
    let (enc_len, int_len) = match suite {
        EspSuite::Gcm(a) => (a.key_len() + AeadAlgorithm::SALT_LEN, 0),
        EspSuite::CbcHmac(c, m) => (c.key_len(), m.key_len()),
    };
    let bytes = |n: usize, k: u8| (0..n).map(|i| (i as u8).wrapping_mul(13) ^ k).collect();
    SaConfig {
        spi: 0x1000,
        suite,
        keys: EspKeys {
            encryption: SecretBytes::new(bytes(enc_len, 0x11)),
            integrity: SecretBytes::new(bytes(int_len, 0x22)),
        },
        esn: false,
        // No anti-replay on the decapsulation side: the benchmark opens one packet again and
        // again (the window's own cost is a few instructions, measured in the ipsec tests).
        replay_window: 0,
        lifetime: Lifetime::default(),
    }
}

/// An IPv4 packet of `len` bytes (header plus zeroed payload), as a host behind the tunnel sends.
fn inner_packet(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[198, 18, 1, 2]);
    p[16..20].copy_from_slice(&[203, 0, 113, 5]);
    p
}

fn outer() -> OuterHeader {
    OuterHeader::new(
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
    )
    .with_udp(4500, 4500)
}

/// Room around the inner packet for the outer headers and the trailer.
const HEADROOM: usize = 64;
const TAILROOM: usize = 64;

fn esp(c: &mut Criterion) {
    let backend = SoftwareBackend::new();
    for size in SIZES {
        let inner = inner_packet(size);
        let mut group = c.benchmark_group(format!("esp/{size}B"));
        group.throughput(Throughput::Elements(1));

        // The limit: the AEAD alone over the same bytes, with ESP's 8 bytes of AAD.
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[0x11; 16]).expect("key"));
        let mut work = vec![0u8; size];
        let mut counter = 0u64;
        group.bench_function(BenchmarkId::new("raw_aes128gcm_seal", size), |b| {
            b.iter(|| {
                work.copy_from_slice(&inner);
                counter += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&counter.to_be_bytes());
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from([0u8; 8]),
                        &mut work,
                    )
                    .expect("seal");
                black_box(tag.as_ref()[0]);
            })
        });
        let sealed = {
            let mut w = inner.clone();
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key([0; 12]),
                    Aad::from([0u8; 8]),
                    &mut w,
                )
                .expect("seal");
            w.extend_from_slice(tag.as_ref());
            w
        };
        let mut open_work = vec![0u8; sealed.len()];
        group.bench_function(BenchmarkId::new("raw_aes128gcm_open", size), |b| {
            b.iter(|| {
                open_work.copy_from_slice(&sealed);
                let plain = key
                    .open_in_place(
                        Nonce::assume_unique_for_key([0; 12]),
                        Aad::from([0u8; 8]),
                        &mut open_work,
                    )
                    .expect("open");
                black_box(plain.len());
            })
        });

        for (name, suite) in [("gcm128", GCM), ("cbc256_sha256", CBC)] {
            let cfg = config(suite);
            let mut out_sa = Sa::new(&backend, &cfg, Direction::Outbound, 0).expect("SA");
            let mut buf = vec![0u8; HEADROOM + size + TAILROOM];
            group.bench_function(BenchmarkId::new(format!("esp_{name}_encap"), size), |b| {
                b.iter(|| {
                    buf[HEADROOM..HEADROOM + size].copy_from_slice(&inner);
                    let range = encapsulate_in_place(
                        &mut out_sa,
                        &mut buf,
                        HEADROOM..HEADROOM + size,
                        &outer(),
                        0,
                    )
                    .expect("encapsulate");
                    black_box(range);
                })
            });
            // One packet to open again and again.
            let mut packet = vec![0u8; HEADROOM + size + TAILROOM];
            packet[HEADROOM..HEADROOM + size].copy_from_slice(&inner);
            let range = encapsulate_in_place(
                &mut out_sa,
                &mut packet,
                HEADROOM..HEADROOM + size,
                &outer(),
                0,
            )
            .expect("encapsulate");
            let packet = packet[range].to_vec();
            let mut in_sa = Sa::new(&backend, &cfg, Direction::Inbound, 0).expect("SA");
            let mut work = vec![0u8; packet.len()];
            group.bench_function(BenchmarkId::new(format!("esp_{name}_decap"), size), |b| {
                b.iter(|| {
                    work.copy_from_slice(&packet);
                    let d = decapsulate(&mut in_sa, &mut work, 0).expect("decapsulate");
                    black_box(d.inner);
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, esp);
criterion_main!(benches);
